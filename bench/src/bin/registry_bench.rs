//! registry-bench: `docker push` and `docker pull` of one image set through Berth's cluster
//! registry (`berth dev`'s, on loopback) and through Debian's `docker-registry` (distribution
//! 2.8, the reference implementation) in the same run, with the same client, each registry
//! fresh (empty) for every run so no blob is skipped as already present.
//!
//! The image: `--layers` layers of `--layer-mib` MiB of random bytes each (FROM scratch, one
//! COPY per layer), built once. Before each pull every name of the image is removed from the
//! engine, so the pull downloads every layer.
//!
//! ```text
//! cargo build --release -p berth -p berth-bench
//! target/release/registry-bench --layers 10 --layer-mib 20 --runs 3
//! ```

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use berth_bench::cluster::berth_binary;
use berth_bench::images::{build_random_image, docker};
use berth_bench::procs::{find_tool, free_port, spawn_logged, spawn_logged_env, ChildGuard};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Layers in the image.
    #[arg(long, default_value_t = 10)]
    layers: usize,
    /// Size of each layer, MiB of random data.
    #[arg(long, default_value_t = 20)]
    layer_mib: usize,
    /// Runs per registry (the table shows the median).
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

/// A fresh, empty registry of each kind on a free loopback port.
fn start(kind: &str, dir: &Path) -> Result<(ChildGuard, SocketAddr)> {
    let port = free_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    std::fs::create_dir_all(dir)?;
    let mut guard = match kind {
        "docker-registry" => {
            let tool = find_tool("docker-registry")
                .context("docker-registry not found: apt-get install docker-registry")?;
            let cfg = dir.join("config.yml");
            std::fs::write(
                &cfg,
                format!(
                    "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
                    dir.join("data").display()
                ),
            )?;
            spawn_logged(
                kind,
                &tool,
                &["serve", &cfg.display().to_string()],
                dir.join("log"),
            )?
        }
        _ => {
            let berth = berth_binary()?;
            let api = format!("127.0.0.1:{}", free_port()?);
            let home = dir.join("home");
            std::fs::create_dir_all(&home)?;
            spawn_logged_env(
                kind,
                &berth,
                &[
                    "dev",
                    "--runtime",
                    "process",
                    "--data-dir",
                    &dir.join("dev").display().to_string(),
                    "--listen",
                    &api,
                    "--registry-listen",
                    &addr.to_string(),
                    "--name",
                    "registry-bench",
                    "--no-config",
                ],
                &[("HOME", &home.display().to_string())],
                dir.join("log"),
            )?
        }
    };
    guard.wait_ready(addr, Duration::from_secs(60))?;
    Ok((guard, addr))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let args = Args::parse();
    docker(&["version"]).context("the Docker engine must answer")?;
    let tmp = tempfile::Builder::new()
        .prefix("registry-bench-")
        .tempdir()?;
    let source = format!("registry-bench-image:{}", std::process::id());
    let mib_total = (args.layers * args.layer_mib) as f64;
    eprintln!(
        "building {source}: {} layers x {} MiB random",
        args.layers, args.layer_mib
    );
    build_random_image(tmp.path(), &source, args.layers, args.layer_mib)?;
    let kinds = ["docker-registry", "berth"];
    let mut push: Vec<Vec<Duration>> = vec![Vec::new(); 2];
    let mut pull: Vec<Vec<Duration>> = vec![Vec::new(); 2];
    for run in 0..args.runs {
        for (k, kind) in kinds.iter().enumerate() {
            let (guard, addr) = start(kind, &tmp.path().join(format!("{kind}-{run}")))?;
            let name = format!("{addr}/bench/image:r{run}");
            docker(&["tag", &source, &name])?;
            let t = Instant::now();
            docker(&["push", &name])?;
            push[k].push(t.elapsed());
            // Every name gone, so the pull must fetch every layer.
            docker(&["rmi", &name, &source])?;
            let t = Instant::now();
            docker(&["pull", &name])?;
            pull[k].push(t.elapsed());
            docker(&["tag", &name, &source])?;
            docker(&["rmi", &name])?;
            eprintln!(
                "run {run} {kind}: push {:.2}s pull {:.2}s",
                push[k][run].as_secs_f64(),
                pull[k][run].as_secs_f64()
            );
            drop(guard);
        }
    }
    let _ = docker(&["rmi", &source]);
    let rate = |d: Duration| mib_total / d.as_secs_f64();
    println!(
        "\nregistry-bench: docker push/pull of {} MiB in {} layers (random), median of {} runs, fresh registry each run\n",
        mib_total, args.layers, args.runs
    );
    println!(
        "{:<10} {:>16} {:>16} {:>9}",
        "op", "docker-registry", "berth", "ratio"
    );
    for (op, v) in [("push", &push), ("pull", &pull)] {
        let (a, b) = (median(v[0].clone()), median(v[1].clone()));
        println!(
            "{:<10} {:>10.1} MiB/s {:>10.1} MiB/s {:>8.2}x",
            op,
            rate(a),
            rate(b),
            rate(b) / rate(a)
        );
    }
    println!("\nratio = berth throughput / docker-registry throughput (>= 1.0 is the goal)");
    Ok(())
}
