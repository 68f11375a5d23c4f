//! pod-start-bench: pod startup latency (created -> Ready) on a one-node Berth cluster, and the
//! Docker pod start rate against Docker Swarm in the same run (issue 4).
//!
//! The cluster is made of child processes of the release `berth` binary (HOME in a temp dir):
//! by default `berth server --init` and `berth agent` as separate processes, so the agent's
//! resident memory is measured alone (`--mode dev` runs one `berth dev` instead; its RSS then
//! includes the API server and controllers). N Pods are created directly with
//! `spec.nodeName` set (the scheduler is not measured), `--concurrency` creates in flight.
//! A watch started before the first create records when each pod is first seen Ready.
//! Per pod: latency = watch-observed Ready time - creationTimestamp (same host clock), and
//! also the Ready condition's lastTransitionTime - creationTimestamp (the agent's view, without
//! watch delivery). Pods/s = N / (first create request -> last pod Ready).
//!
//! The anchor (Docker runtime only, `--swarm`, on by default there) is
//! shared/anchors/swarm-start.sh: time from `docker service create --replicas N IMAGE
//! /bin/sh -c 'exec sleep 3600'` to N tasks Running on a one-node swarm (initialised with
//! `docker swarm init --advertise-addr 127.0.0.1` if this host is not in a swarm, and left
//! again at the end; the service is removed).
//!
//! Commands (from a worktree, so others' uncommitted edits cannot break the build):
//! ```sh
//! CARGO_TARGET_DIR=/work/target-bench cargo build --release -p berth -p berth-bench
//! /work/target-bench/release/pod-start-bench --runtime process --pods 100 --workload sleep
//! /work/target-bench/release/pod-start-bench --runtime process --pods 100 --workload demo
//! /work/target-bench/release/pod-start-bench --runtime process --pods 50  # agent RSS at 50
//! images/build-busybox.sh   # berth-busybox:1
//! /work/target-bench/release/pod-start-bench --runtime docker --pods 20
//! ```
//! `--workload demo` runs `berth demo-server` with an HTTP readiness probe on /healthz
//! (periodSeconds 1); `sleep` runs `sleep 3600` without probes (Ready once running).

use std::collections::HashMap;
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use berth_bench::cluster::{load_average, ms, percentile, vm_rss_kib, LocalCluster};
use berth_client::client::Change;
use berth_client::Client;
use berth_proto::types::{condition, Pod, Time};
use clap::{Parser, ValueEnum};
use futures::StreamExt;

#[derive(Parser, Debug)]
#[command(
    name = "pod-start-bench",
    about = "Pod created -> Ready latency on one Berth node; Docker runtime vs Docker Swarm"
)]
struct Args {
    /// Container runtime of the node.
    #[arg(long, value_enum, default_value_t = Runtime::Process)]
    runtime: Runtime,
    /// Pods to create.
    #[arg(long, default_value_t = 100)]
    pods: usize,
    /// What each pod runs.
    #[arg(long, value_enum, default_value_t = Workload::Sleep)]
    workload: Workload,
    /// split: `berth server` + `berth agent` (agent RSS alone); dev: one `berth dev` process.
    #[arg(long, value_enum, default_value_t = Mode::Split)]
    mode: Mode,
    /// Pod creations in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Image (Docker runtime; recorded but unused by the process runtime).
    #[arg(long, default_value = "berth-busybox:1")]
    image: String,
    /// Run the Docker Swarm anchor (default: on for --runtime docker).
    #[arg(long)]
    swarm: Option<bool>,
    /// Seconds to wait for all pods to be Ready.
    #[arg(long, default_value_t = 180)]
    timeout: u64,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum Runtime {
    Process,
    Docker,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum Workload {
    Sleep,
    Demo,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum Mode {
    Split,
    Dev,
}

const NODE: &str = "bench-node";
const LABEL: &str = "bench=podstart";

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pod-start-bench: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pod-start-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

struct BerthResult {
    watch: Vec<Duration>,
    condition: Vec<Duration>,
    all_ready: Duration,
    agent_rss_kib: Option<u64>,
    server_rss_kib: Option<u64>,
}

async fn run(args: Args) -> Result<()> {
    let runtime = match args.runtime {
        Runtime::Process => "process",
        Runtime::Docker => "docker",
    };
    let load_before = load_average();
    let berth = run_berth(&args, runtime).await?;
    let load_mid = load_average();
    let swarm = if args.swarm.unwrap_or(args.runtime == Runtime::Docker) {
        match run_swarm(args.pods, &args.image) {
            Ok(d) => Some(d),
            Err(e) => {
                eprintln!("swarm anchor failed: {e:#}");
                None
            }
        }
    } else {
        None
    };
    let load_after = load_average();

    let mode = match args.mode {
        Mode::Split => "split: berth server + berth agent processes",
        Mode::Dev => "dev: one berth dev process",
    };
    let workload = match args.workload {
        Workload::Sleep => "sleep 3600, no probe".to_string(),
        Workload::Demo => "berth demo-server, readiness probe httpGet /healthz every 1 s".into(),
    };
    println!();
    println!(
        "pod-start-bench  runtime={runtime}  pods={}  workload: {workload}  ({mode}; pods created \
         with spec.nodeName, scheduler not measured; {} creates in flight)",
        args.pods, args.concurrency
    );
    println!("load average (1/5/15 min): before {load_before} | after berth {load_mid} | end {load_after}");
    println!(
        "{:<44} {:>9} {:>9} {:>9} {:>14} {:>8}",
        "created -> Ready", "p50 ms", "p99 ms", "max ms", "all Ready (s)", "pods/s"
    );
    let rate = args.pods as f64 / berth.all_ready.as_secs_f64();
    for (label, v) in [
        ("berth: Ready seen by a watch", &berth.watch),
        (
            "berth: Ready condition lastTransitionTime",
            &berth.condition,
        ),
    ] {
        println!(
            "{:<44} {:>9} {:>9} {:>9} {:>14.2} {:>8.1}",
            label,
            ms(percentile(v, 50.0)),
            ms(percentile(v, 99.0)),
            ms(v.last().copied().unwrap_or_default()),
            berth.all_ready.as_secs_f64(),
            rate
        );
    }
    if let Some(d) = swarm {
        println!(
            "{:<44} {:>9} {:>9} {:>9} {:>14.2} {:>8.1}",
            "docker swarm: service create -> N Running",
            "-",
            "-",
            "-",
            d.as_secs_f64(),
            args.pods as f64 / d.as_secs_f64()
        );
        println!(
            "berth / swarm pods/s: {:.2}x",
            rate / (args.pods as f64 / d.as_secs_f64())
        );
    }
    let goal = match args.runtime {
        Runtime::Process => 1000.0,
        Runtime::Docker => 2000.0,
    };
    let p99 = percentile(&berth.watch, 99.0).as_secs_f64() * 1000.0;
    println!(
        "goal p99 <= {goal:.0} ms: {} ({p99:.1} ms)",
        if p99 <= goal { "met" } else { "NOT met" }
    );
    let mib = |k: Option<u64>| k.map_or("?".to_string(), |k| format!("{:.1}", k as f64 / 1024.0));
    match args.mode {
        Mode::Split => println!(
            "RSS with {} running pods: agent {} MiB (goal <= 20 MiB), server {} MiB",
            args.pods,
            mib(berth.agent_rss_kib),
            mib(berth.server_rss_kib)
        ),
        Mode::Dev => println!(
            "RSS with {} running pods: berth dev {} MiB (server + controllers + agent in one \
             process; use --mode split for the agent alone)",
            args.pods,
            mib(berth.agent_rss_kib)
        ),
    }
    Ok(())
}

fn pod(i: usize, args: &Args) -> Result<Pod> {
    let mut container = serde_json::json!({
        "name": "c",
        "image": args.image,
    });
    match args.workload {
        // The busybox image has no applet links: its entrypoint is /bin/busybox, which a
        // container command replaces (Kubernetes semantics), so name busybox explicitly.
        Workload::Sleep if args.runtime == Runtime::Docker => {
            container["command"] = serde_json::json!(["/bin/busybox", "sleep", "3600"])
        }
        Workload::Sleep => container["command"] = serde_json::json!(["sleep", "3600"]),
        Workload::Demo => {
            container["command"] = serde_json::json!(["berth", "demo-server"]);
            container["ports"] = serde_json::json!([{"name": "http", "containerPort": 8080}]);
            container["readinessProbe"] = serde_json::json!({
                "httpGet": {"path": "/healthz", "port": "http"},
                "periodSeconds": 1
            });
        }
    }
    let v = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": format!("bench-{i}"),
            "namespace": "default",
            "labels": {"bench": "podstart"},
        },
        "spec": {"nodeName": NODE, "containers": [container]},
    });
    Ok(serde_json::from_value(v)?)
}

async fn run_berth(args: &Args, runtime: &str) -> Result<BerthResult> {
    let mut cluster = LocalCluster::new()?;
    let (agent_idx, server_idx) = match args.mode {
        Mode::Dev => (cluster.start_dev(runtime, NODE).await?, None),
        Mode::Split => {
            let s = cluster.start_server().await?;
            let a = cluster
                .start_agent(NODE, "127.0.0.1", runtime, "20000-29999")
                .await?;
            (a, Some(s))
        }
    };
    if args.mode == Mode::Dev {
        let i = agent_idx;
        cluster.wait_node_ready(i, NODE).await?;
    }
    let client = cluster.client()?;
    let (existing, rev) = client.list::<Pod>(Some("default"), LABEL).await?;
    if !existing.is_empty() {
        bail!("fresh cluster already has {} bench pods", existing.len());
    }
    let mut watch = client.watch::<Pod>(Some("default"), LABEL, rev).await?;

    let pods: Vec<Pod> = (0..args.pods)
        .map(|i| pod(i, args))
        .collect::<Result<_>>()?;
    let start = Instant::now();
    let creator = {
        let client = client.clone();
        let sem = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
        tokio::spawn(async move {
            let mut tasks = Vec::new();
            for p in pods {
                let permit = sem.clone().acquire_owned().await;
                let client = client.clone();
                tasks.push(tokio::spawn(async move {
                    let _permit = permit;
                    client.create(&p).await
                }));
            }
            for t in tasks {
                t.await??;
            }
            anyhow::Ok(())
        })
    };

    // pod name -> (creationTimestamp, seen Ready at, condition lastTransitionTime)
    let mut ready: HashMap<String, (Time, Time, Time)> = HashMap::new();
    let mut last_ready = start;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout);
    while ready.len() < args.pods {
        let ev = match tokio::time::timeout_at(deadline, watch.next()).await {
            Err(_) => bail!(
                "only {}/{} pods Ready within {} s (logs in {})",
                ready.len(),
                args.pods,
                args.timeout,
                cluster.dir().display()
            ),
            Ok(None) => bail!("the pod watch ended"),
            Ok(Some(ev)) => ev?,
        };
        let seen = chrono::Utc::now();
        let p = match ev.change {
            Change::Added(p) | Change::Modified(p) => p,
            _ => continue,
        };
        if !p.is_ready() || ready.contains_key(&p.metadata.name) {
            continue;
        }
        let created = p
            .metadata
            .creation_timestamp
            .context("pod without creationTimestamp")?;
        let transition = p
            .status
            .as_ref()
            .and_then(|s| condition(&s.conditions, "Ready"))
            .and_then(|c| c.last_transition_time)
            .unwrap_or(seen);
        ready.insert(p.metadata.name.clone(), (created, seen, transition));
        last_ready = Instant::now();
    }
    creator.await??;
    let all_ready = last_ready - start;

    // Let the agent settle (probes, status writes) before reading its memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let agent_rss_kib = vm_rss_kib(cluster.members[agent_idx].pid());
    let server_rss_kib = server_idx.and_then(|i| vm_rss_kib(cluster.members[i].pid()));

    let to_dur = |a: Time, b: Time| (b - a).to_std().unwrap_or(Duration::ZERO);
    let mut w: Vec<Duration> = ready.values().map(|(c, s, _)| to_dur(*c, *s)).collect();
    let mut c: Vec<Duration> = ready.values().map(|(c, _, t)| to_dur(*c, *t)).collect();
    w.sort();
    c.sort();

    cleanup(&cluster, &client).await;
    Ok(BerthResult {
        watch: w,
        condition: c,
        all_ready,
        agent_rss_kib,
        server_rss_kib,
    })
}

/// Deletes the bench pods and waits (up to 60 s) until they are gone, so their containers are
/// stopped by the agent before it is killed; then removes any Docker container left behind.
async fn cleanup(cluster: &LocalCluster, client: &Client) {
    if let Err(e) = cluster.cli(&["delete", "pods", "-l", LABEL]) {
        eprintln!("cleanup: {e:#}");
    }
    let end = Instant::now() + Duration::from_secs(60);
    while Instant::now() < end {
        match client.list::<Pod>(Some("default"), LABEL).await {
            Ok((pods, _)) if pods.is_empty() => break,
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    let out = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            "label=berth.managed=true",
            "--filter",
            &format!("label=berth.node={NODE}"),
        ])
        .output();
    if let Ok(out) = out {
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f"])
                .args(&ids)
                .output();
        }
    }
}

fn docker(args: &[&str]) -> Result<String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .with_context(|| format!("running docker {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "docker {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// shared/anchors/swarm-start.sh in Rust (polling every 100 ms instead of 200 ms).
fn run_swarm(n: usize, image: &str) -> Result<Duration> {
    let state = docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"])?;
    let initialised = state.trim() == "inactive";
    if initialised {
        docker(&["swarm", "init", "--advertise-addr", "127.0.0.1"])?;
    } else if state.trim() != "active" {
        bail!(
            "docker swarm state is {:?}; expected inactive or active",
            state.trim()
        );
    }
    let name = format!("berth-bench-anchor{n}");
    let replicas = n.to_string();
    let result = (|| {
        let t0 = Instant::now();
        docker(&[
            "service",
            "create",
            "-q",
            "--detach",
            "--name",
            &name,
            "--replicas",
            &replicas,
            image,
            "/bin/sh",
            "-c",
            "exec sleep 3600",
        ])?;
        let end = t0 + Duration::from_secs(300);
        loop {
            let ps = docker(&[
                "service",
                "ps",
                &name,
                "--filter",
                "desired-state=running",
                "--format",
                "{{.CurrentState}}",
            ])?;
            if ps.lines().filter(|l| l.starts_with("Running")).count() >= n {
                return Ok(t0.elapsed());
            }
            if Instant::now() > end {
                bail!("swarm service {name}: not {n} tasks Running within 300 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })();
    if let Err(e) = docker(&["service", "rm", &name]) {
        eprintln!("swarm cleanup: {e:#}");
    }
    // Wait for the service's containers to go before leaving the swarm.
    let end = Instant::now() + Duration::from_secs(60);
    let filter = format!("label=com.docker.swarm.service.name={name}");
    while Instant::now() < end {
        match docker(&["ps", "-aq", "--filter", &filter]) {
            Ok(s) if s.trim().is_empty() => break,
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
    if initialised {
        if let Err(e) = docker(&["swarm", "leave", "--force"]) {
            eprintln!("leaving the swarm: {e:#}");
        }
    }
    result
}
