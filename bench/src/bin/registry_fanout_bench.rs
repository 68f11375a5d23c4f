//! registry-fanout-bench: one new image pulled by one node, then by three nodes at once, from
//! Berth's cluster registry (3 `berth server --registry-listen`, each node's engine pulling
//! through its agent's loopback mirror, as in a real cluster) and from Debian's
//! `docker-registry` (distribution 2.8, each engine pulling from it directly), in the same run.
//!
//! Each "node" is its own Docker engine (a `dockerd` with its own socket, data and exec root,
//! vfs storage, its own bridge), started by the bench and empty before every pull. Reported: the
//! time of one pull alone, the time until all three concurrent pulls are done, their ratio
//! (goal: within 1.5x), and the blob bytes each Berth server sent during the three-node pull
//! (`berth_registry_blob_bytes_sent_total`, scraped from each server's /metrics; goal: at most
//! one image's worth per server).
//!
//! ```text
//! cargo build --release -p berth -p berth-bench
//! target/release/registry-fanout-bench --layers 2 --layer-mib 50 --runs 3
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use berth_bench::cluster::LocalCluster;
use berth_bench::images::{build_random_image, docker, docker_on};
use berth_bench::procs::{find_tool, free_port, spawn_logged, ChildGuard};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Layers in the image.
    #[arg(long, default_value_t = 2)]
    layers: usize,
    /// Size of each layer, MiB of random data.
    #[arg(long, default_value_t = 50)]
    layer_mib: usize,
    /// Runs (the table shows the median).
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

/// A bench-owned Docker engine.
struct Engine {
    host: String,
    guard: ChildGuard,
    bridge: String,
}

fn start_engine(dir: &Path, k: usize) -> Result<Engine> {
    let dockerd = find_tool("dockerd").context("dockerd not found")?;
    let root = dir.join(format!("engine{k}"));
    std::fs::create_dir_all(&root)?;
    let cfg = root.join("daemon.json");
    std::fs::write(&cfg, "{}")?;
    let sock = root.join("docker.sock");
    let host = format!("unix://{}", sock.display());
    // Its own bridge: `--bridge none` would make dockerd delete the host engine's docker0.
    let bridge = format!("bfanout{k}");
    let _ = std::process::Command::new("ip")
        .args(["link", "del", &bridge])
        .status();
    for cmd in [
        vec!["link", "add", &bridge, "type", "bridge"],
        vec!["link", "set", &bridge, "up"],
    ] {
        let ok = std::process::Command::new("ip")
            .args(&cmd)
            .status()?
            .success();
        if !ok {
            bail!("ip {} failed (the bench needs root)", cmd.join(" "));
        }
    }
    let s = |p: PathBuf| p.display().to_string();
    let guard = spawn_logged(
        &format!("dockerd{k}"),
        &dockerd,
        &[
            "--config-file",
            &s(cfg.clone()),
            "--data-root",
            &s(root.join("data")),
            "--exec-root",
            &s(root.join("exec")),
            "--pidfile",
            &s(root.join("docker.pid")),
            "-H",
            &host,
            "--storage-driver",
            "vfs",
            "--bridge",
            &bridge,
            "--iptables=false",
            "--ip-masq=false",
        ],
        root.join("log"),
    )?;
    let end = Instant::now() + Duration::from_secs(30);
    while docker_on(Some(&host), &["version"]).is_err() {
        if Instant::now() > end {
            bail!(
                "dockerd{k} did not answer: {}",
                std::fs::read_to_string(root.join("log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(Engine {
        host,
        guard,
        bridge,
    })
}

impl Engine {
    fn pull(&self, image: &str) -> Result<Duration> {
        let t = Instant::now();
        docker_on(Some(&self.host), &["pull", "-q", image])?;
        Ok(t.elapsed())
    }

    fn forget(&self, image: &str) {
        let _ = docker_on(Some(&self.host), &["rmi", "-f", image]);
        let _ = docker_on(Some(&self.host), &["image", "prune", "-af"]);
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // SIGTERM, so dockerd stops its containerd.
        let _ = std::process::Command::new("kill")
            .arg(self.guard.pid().to_string())
            .status();
        std::thread::sleep(Duration::from_millis(500));
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}

/// Pull `images[i]` on engine i, all at once; the time until the last is done.
fn pull_all(engines: &[Engine], images: &[String]) -> Result<Duration> {
    let t = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let hs: Vec<_> = engines
            .iter()
            .zip(images)
            .map(|(e, img)| s.spawn(move || e.pull(img)))
            .collect();
        for h in hs {
            h.join()
                .map_err(|_| anyhow::anyhow!("a pull thread panicked"))??;
        }
        Ok(())
    })?;
    Ok(t.elapsed())
}

/// `berth_registry_blob_bytes_sent_total{to="clients"}` of the server whose metrics are at
/// `addr`.
fn bytes_sent(addr: SocketAddr) -> Result<u64> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body
        .lines()
        .find(|l| l.starts_with("berth_registry_blob_bytes_sent_total{to=\"clients\"}"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0) as u64)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn start_docker_registry(dir: &Path) -> Result<(ChildGuard, SocketAddr)> {
    let tool = find_tool("docker-registry")
        .context("docker-registry not found: apt-get install docker-registry")?;
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    std::fs::create_dir_all(dir)?;
    let cfg = dir.join("config.yml");
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
            dir.join("data").display()
        ),
    )?;
    let mut g = spawn_logged(
        "docker-registry",
        &tool,
        &["serve", &cfg.display().to_string()],
        dir.join("log"),
    )?;
    g.wait_ready(addr, Duration::from_secs(30))?;
    Ok((g, addr))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    docker(&["version"]).context("the Docker engine must answer")?;
    let mut cluster = LocalCluster::new()?;
    let dir = cluster.dir().to_path_buf();
    let source = format!("fanout-bench/image:{}", std::process::id());
    let mib = (args.layers * args.layer_mib) as u64;
    eprintln!(
        "building {source}: {} layers x {} MiB random",
        args.layers, args.layer_mib
    );
    build_random_image(&dir, &source, args.layers, args.layer_mib)?;

    // Three servers with registries (and metrics), three agents with mirrors.
    let mut metrics = Vec::new();
    for _ in 0..3 {
        let m: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let r = format!("127.0.0.1:{}", free_port()?);
        cluster
            .start_server_with(&[
                "--registry-listen".into(),
                r,
                "--metrics-listen".into(),
                m.to_string(),
            ])
            .await?;
        metrics.push(m);
    }
    let mut mirrors = Vec::new();
    for k in 0..3 {
        let m = format!("127.0.0.1:{}", free_port()?);
        let ports = format!("{}-{}", 21000 + k * 100, 21099 + k * 100);
        cluster
            .start_agent_with(
                &format!("node-{}", k + 1),
                "127.0.0.1",
                "process",
                &ports,
                &["--registry-mirror".into(), m.clone()],
            )
            .await?;
        mirrors.push(m);
    }
    let engines: Vec<Engine> = (0..3)
        .map(|k| start_engine(&dir, k))
        .collect::<Result<_>>()?;

    // Ship the image to both registries (push time is registry-bench's subject).
    let pushed = cluster.cli(&["push", &source])?;
    eprintln!("{}", pushed.trim());
    let (_reg, reg_addr) = start_docker_registry(&dir.join("docker-registry"))?;
    let anchor = format!("{reg_addr}/{source}");
    docker(&["tag", &source, &anchor])?;
    docker(&["push", &anchor])?;
    docker(&["rmi", &anchor, &source])?;

    let berth_images: Vec<String> = mirrors.iter().map(|m| format!("{m}/{source}")).collect();
    let anchor_images = vec![anchor.clone(); 3];
    let mut one = [Vec::new(), Vec::new()];
    let mut three = [Vec::new(), Vec::new()];
    let mut per_server: Vec<Vec<u64>> = Vec::new();
    for run in 0..args.runs {
        // One node alone.
        for (k, img) in [&berth_images[0], &anchor].iter().enumerate() {
            one[k].push(engines[0].pull(img)?);
            engines[0].forget(img);
        }
        // Three nodes at once.
        let before: Vec<u64> = metrics
            .iter()
            .map(|m| bytes_sent(*m))
            .collect::<Result<_>>()?;
        three[0].push(pull_all(&engines, &berth_images)?);
        let after: Vec<u64> = metrics
            .iter()
            .map(|m| bytes_sent(*m))
            .collect::<Result<_>>()?;
        per_server.push(after.iter().zip(&before).map(|(a, b)| a - b).collect());
        for (e, img) in engines.iter().zip(&berth_images) {
            e.forget(img);
        }
        three[1].push(pull_all(&engines, &anchor_images)?);
        for e in &engines {
            e.forget(&anchor);
        }
        eprintln!(
            "run {run}: berth 1 node {:.2}s, 3 nodes {:.2}s (bytes per server {:?}); docker-registry 1 node {:.2}s, 3 nodes {:.2}s",
            one[0][run].as_secs_f64(),
            three[0][run].as_secs_f64(),
            per_server[run],
            one[1][run].as_secs_f64(),
            three[1][run].as_secs_f64()
        );
    }
    println!(
        "\nregistry-fanout-bench: pull of one new {mib} MiB image ({} layers, random) by 1 node, then by 3 nodes at once; median of {} runs\n",
        args.layers, args.runs
    );
    println!(
        "{:<16} {:>10} {:>11} {:>12}",
        "registry", "1 node", "3 nodes", "3 / 1 node"
    );
    let mut ratios = Vec::new();
    for (k, name) in ["docker-registry", "berth"].iter().enumerate() {
        let idx = 1 - k;
        let (a, b) = (median(one[idx].clone()), median(three[idx].clone()));
        let r = b.as_secs_f64() / a.as_secs_f64();
        ratios.push(r);
        println!(
            "{:<16} {:>9.2}s {:>10.2}s {:>11.2}x",
            name,
            a.as_secs_f64(),
            b.as_secs_f64(),
            r
        );
    }
    let image_bytes = mib << 20;
    let worst = per_server
        .iter()
        .flat_map(|v| v.iter().copied())
        .max()
        .unwrap_or(0);
    println!(
        "\nberth: blob bytes sent per server during the 3-node pull (image = {:.1} MiB): {}",
        image_bytes as f64 / 1048576.0,
        per_server
            .iter()
            .map(|v| format!(
                "[{}]",
                v.iter()
                    .map(|b| format!("{:.1}", *b as f64 / 1048576.0))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "goal: 3 nodes within 1.5x of 1 node (berth {:.2}x, docker-registry {:.2}x); each server sends the image at most once (worst server: {:.2} images)",
        ratios[1],
        ratios[0],
        worst as f64 / image_bytes as f64
    );
    drop(engines);
    Ok(())
}
