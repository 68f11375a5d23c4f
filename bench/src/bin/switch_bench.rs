//! switch-bench: blue-green switch latency on a 3-node Berth cluster (issue 6): from the
//! promote request committed to every node's Service proxy sending new connections to the new
//! version.
//!
//! Cluster (child processes of the release `berth` binary, HOME in a temp dir): `--servers`
//! API servers on 127.0.0.1 (the first `--init`, the others `--join`) and three agents
//! `berth agent --name nK --address 127.0.0.(K+1) --runtime process` with distinct
//! `--host-port-range` and `--listen`, so each node's proxy listens on its own loopback address.
//! (127.0.0.1 is left out on purpose: every agent also tries to bind the nodePort on 127.0.0.1.)
//!
//! Workload: a BlueGreen Deployment `swb` (2 replicas of `berth demo-server`, readiness probe
//! on /healthz, like manifests/blue-green.yaml) with active Service `swb` and preview Service
//! `swb-preview` on fixed free nodePorts. Each cycle applies version vK (env VERSION), waits for
//! `status.blueGreen.phase == Paused`, starts one poller per node (a fresh TCP connection to
//! 127.0.0.(K+1):NODEPORT, `GET /`, every `--poll-ms`), then writes the `berth.io/promote`
//! annotation with berth_client (what `berth rollout promote` writes; get + CAS update) and
//! records when the update returned (committed). Per cycle: the time until the slowest node
//! first answers with vK, plus where the time goes as seen by a watch in this process: the
//! active Service's selector write (controller reaction), the Endpoints write (endpoints
//! controller), and the rest (watch delivery to the agents, proxy `set_services`, the
//! poller's ~poll interval).
//!
//! Command (from a worktree; see pod-start-bench for the build):
//! ```sh
//! CARGO_TARGET_DIR=/work/target-bench cargo build --release -p berth -p berth-bench
//! /work/target-bench/release/switch-bench --servers 1 --cycles 10
//! /work/target-bench/release/switch-bench --servers 3 --cycles 10
//! ```

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use berth_bench::cluster::{load_average, ms, percentile, LocalCluster};
use berth_client::client::Change;
use berth_client::{Client, ClientError, Kind};
use berth_proto::enums::PROMOTE_ANNOTATION;
use berth_proto::types::{Deployment, Service};
use berth_proto::{BlueGreenPhase, StrategyType};
use clap::Parser;
use futures::StreamExt;
use tokio::sync::mpsc;

#[derive(Parser, Debug)]
#[command(
    name = "switch-bench",
    about = "Blue-green promote -> every node's proxy on the new version (3 agents, loopback)"
)]
struct Args {
    /// API servers (1..3).
    #[arg(long, default_value_t = 1)]
    servers: usize,
    /// Promote cycles measured.
    #[arg(long, default_value_t = 10)]
    cycles: usize,
    /// Milliseconds between a poller's requests (each on a new connection).
    #[arg(long, default_value_t = 2)]
    poll_ms: u64,
    /// Print every cycle.
    #[arg(long)]
    verbose: bool,
}

const NODES: [(&str, [u8; 4], &str); 3] = [
    ("n1", [127, 0, 0, 2], "21000-21999"),
    ("n2", [127, 0, 0, 3], "22000-22999"),
    ("n3", [127, 0, 0, 4], "23000-23999"),
];
const NAME: &str = "swb";

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switch-bench: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switch-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn node_ip(a: [u8; 4]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
}

/// A port in the nodePort range that is free on every node address and on 127.0.0.1.
fn free_node_port(avoid: &[u16]) -> Result<u16> {
    let seed = std::process::id() as u64 ^ Instant::now().elapsed().as_nanos() as u64;
    for i in 0..2000u64 {
        let port = 30000 + ((seed.wrapping_mul(7919) + i * 131) % 2767) as u16;
        if avoid.contains(&port) {
            continue;
        }
        let ok = NODES
            .iter()
            .map(|n| node_ip(n.1))
            .chain([IpAddr::V4(Ipv4Addr::LOCALHOST)])
            .all(|ip| std::net::TcpListener::bind(SocketAddr::new(ip, port)).is_ok());
        if ok {
            return Ok(port);
        }
    }
    bail!("no free port in 30000-32767 on 127.0.0.1-4")
}

fn manifests(version: &str, active_np: u16, preview_np: u16) -> Result<(Deployment, [Service; 2])> {
    let d = serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": NAME, "namespace": "default"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": NAME}},
            "strategy": {
                "type": StrategyType::BlueGreen.as_str(),
                "blueGreen": {
                    "activeService": NAME,
                    "previewService": format!("{NAME}-preview"),
                    "autoPromotionEnabled": false,
                    "scaleDownDelaySeconds": 3
                }
            },
            "template": {
                "metadata": {"labels": {"app": NAME}},
                "spec": {"containers": [{
                    "name": "web",
                    "image": "berth-demo:latest",
                    "command": ["berth", "demo-server"],
                    "env": [{"name": "VERSION", "value": version}],
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {
                        "httpGet": {"path": "/healthz", "port": "http"},
                        "periodSeconds": 1
                    }
                }]}
            }
        }
    });
    let svc = |name: String, np: u16| {
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "selector": {"app": NAME},
                "ports": [{"name": "http", "port": 80, "targetPort": "http", "nodePort": np}]
            }
        })
    };
    Ok((
        serde_json::from_value(d)?,
        [
            serde_json::from_value(svc(NAME.to_string(), active_np))?,
            serde_json::from_value(svc(format!("{NAME}-preview"), preview_np))?,
        ],
    ))
}

/// One `GET /` on a new connection; the body (or None on any failure).
fn fetch(addr: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(1000))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n").ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf).into_owned())
}

fn answers(body: &str, version: &str) -> bool {
    body.contains(&format!("version {version}\n"))
}

/// Polls `addr` until it answers with `version`; returns when it first did (None if stopped).
fn poll_until(
    addr: SocketAddr,
    version: String,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> Option<Instant> {
    while !stop.load(Ordering::Relaxed) {
        if let Some(body) = fetch(addr) {
            if answers(&body, &version) {
                return Some(Instant::now());
            }
        }
        std::thread::sleep(every);
    }
    None
}

type NodeDef = (&'static str, [u8; 4], &'static str);

/// Nodes whose proxy answers with `version` on `port` within `wait` (the others are reported).
async fn serving_nodes(port: u16, version: &str, wait: Duration) -> Vec<NodeDef> {
    let end = Instant::now() + wait;
    let mut out = Vec::new();
    for n in NODES {
        let addr = SocketAddr::new(node_ip(n.1), port);
        loop {
            let v = version.to_string();
            let ok =
                tokio::task::spawn_blocking(move || fetch(addr).is_some_and(|b| answers(&b, &v)))
                    .await
                    .unwrap_or(false);
            if ok {
                out.push(n);
                break;
            }
            if Instant::now() > end {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    out
}

/// Waits until every node answers with `version` on `port` (deadline 120 s).
async fn wait_all_answer(nodes: &[NodeDef], port: u16, version: &str) -> Result<()> {
    let end = Instant::now() + Duration::from_secs(120);
    for n in nodes.iter().copied() {
        let addr = SocketAddr::new(node_ip(n.1), port);
        loop {
            let v = version.to_string();
            let ok =
                tokio::task::spawn_blocking(move || fetch(addr).is_some_and(|b| answers(&b, &v)))
                    .await?;
            if ok {
                break;
            }
            if Instant::now() > end {
                bail!("{addr} did not answer with {version} within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

async fn wait_paused(client: &Client) -> Result<()> {
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        let d: Deployment = client.get("default", NAME).await?;
        let st = d.status.clone().unwrap_or_default();
        if st.observed_generation >= d.metadata.generation {
            if let Some(bg) = &st.blue_green {
                if bg.phase == BlueGreenPhase::Paused && bg.preview_selector != bg.active_selector {
                    return Ok(());
                }
            }
        }
        if Instant::now() > end {
            bail!(
                "deployment {NAME} not Paused within 120 s: {:?}",
                st.blue_green
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the promotion finished (phase Healthy: blue scaled down), so the next version
/// starts a fresh rollout instead of changing the template mid-promotion.
async fn wait_healthy(client: &Client) -> Result<()> {
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        let d: Deployment = client.get("default", NAME).await?;
        let st = d.status.clone().unwrap_or_default();
        if st
            .blue_green
            .as_ref()
            .is_some_and(|b| b.phase == BlueGreenPhase::Healthy)
        {
            return Ok(());
        }
        if Instant::now() > end {
            bail!(
                "deployment {NAME} not Healthy within 120 s: {:?}",
                st.blue_green
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn promote(client: &Client) -> Result<()> {
    loop {
        let mut d: Deployment = client.get("default", NAME).await?;
        d.metadata
            .annotations
            .insert(PROMOTE_ANNOTATION.to_string(), "true".into());
        match client.update(&d).await {
            Ok(_) => return Ok(()),
            Err(ClientError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Watches Services and Endpoints named NAME; sends (kind, when seen) for every change.
fn spawn_watcher(client: Client, tx: mpsc::UnboundedSender<(Kind, Instant)>) {
    for kind in [Kind::Service, Kind::Endpoints] {
        let client = client.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut rev = 0;
            loop {
                if rev == 0 {
                    match client.list_dyn(kind, Some("default"), "").await {
                        Ok((_, r)) => rev = r,
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            continue;
                        }
                    }
                }
                let Ok(mut w) = client.watch_dyn(kind, Some("default"), "", rev).await else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                while let Some(Ok(ev)) = w.next().await {
                    let now = Instant::now();
                    rev = ev.revision.max(rev);
                    if let Change::Modified(o) | Change::Added(o) = &ev.change {
                        if o.name() == NAME && tx.send((kind, now)).is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
}

struct Cycle {
    /// Promote request sent -> update returned (the write committed).
    commit: Duration,
    /// Committed -> the slowest node answers with the new version.
    all_nodes: Duration,
    /// Committed -> each node (n1..n3).
    per_node: Vec<Duration>,
    /// Committed -> Service `swb` change seen by this process's watch.
    service: Option<Duration>,
    /// Committed -> Endpoints `swb` change seen.
    endpoints: Option<Duration>,
}

async fn run(args: Args) -> Result<()> {
    if !(1..=3).contains(&args.servers) {
        bail!("--servers must be 1, 2 or 3");
    }
    for n in NODES {
        std::net::TcpListener::bind(SocketAddr::new(node_ip(n.1), 0)).with_context(|| {
            format!(
                "cannot bind {}: this bench needs 127.0.0.2-4 on loopback",
                node_ip(n.1)
            )
        })?;
    }
    let load_before = load_average();
    let mut cluster = LocalCluster::new()?;
    for _ in 0..args.servers {
        cluster.start_server().await?;
    }
    for (name, ip, ports) in NODES {
        cluster
            .start_agent(name, &node_ip(ip).to_string(), "process", ports)
            .await?;
    }
    let client = cluster.client()?;
    let active_np = free_node_port(&[])?;
    let preview_np = free_node_port(&[active_np])?;

    let (d, svcs) = manifests("v1", active_np, preview_np)?;
    for s in &svcs {
        client.apply(s).await?;
    }
    client.apply(&d).await?;
    let nodes = serving_nodes(active_np, "v1", Duration::from_secs(90)).await;
    let missing: Vec<&str> = NODES
        .iter()
        .filter(|n| !nodes.contains(n))
        .map(|n| n.0)
        .collect();
    if nodes.is_empty() {
        bail!("no node's proxy answered v1 on nodePort {active_np} within 90 s");
    }
    if !missing.is_empty() {
        eprintln!(
            "switch-bench: nodes {missing:?} do not serve nodePort {active_np} (see their logs: \
             every agent also binds 127.0.0.1:NODEPORT, all-or-nothing, so on one host only \
             the first agent's proxy can listen); measuring {:?}",
            nodes.iter().map(|n| n.0).collect::<Vec<_>>()
        );
    }
    eprintln!(
        "switch-bench: v1 serving on nodePort {active_np} of 127.0.0.2-4; {} cycles",
        args.cycles
    );

    let (tx, mut rx) = mpsc::unbounded_channel();
    spawn_watcher(client.clone(), tx);

    let mut cycles = Vec::new();
    for k in 0..args.cycles {
        let version = format!("v{}", k + 2);
        let (d, _) = manifests(&version, active_np, preview_np)?;
        client.apply(&d).await?;
        wait_paused(&client).await?;
        // Paused means green is fully ready (the preview Service is not polled: on one host
        // its nodePort may be served by another agent than the measured ones).
        // Pollers start before the promote and must first see the old version (checked by
        // wait_all_answer for the previous cycle), then record when the new one appears.
        let stop = Arc::new(AtomicBool::new(false));
        let pollers: Vec<_> = nodes
            .iter()
            .map(|n| {
                let addr = SocketAddr::new(node_ip(n.1), active_np);
                let (v, stop) = (version.clone(), stop.clone());
                let every = Duration::from_millis(args.poll_ms);
                std::thread::spawn(move || poll_until(addr, v, every, stop))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        while rx.try_recv().is_ok() {}
        let t_req = Instant::now();
        promote(&client).await?;
        let t_commit = Instant::now();
        let watchdog = {
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(30)).await;
                stop.store(true, Ordering::Relaxed);
            })
        };
        let mut per_node = Vec::new();
        for (p, n) in pollers.into_iter().zip(nodes.iter()) {
            let seen = tokio::task::spawn_blocking(move || p.join())
                .await?
                .map_err(|_| anyhow::anyhow!("poller thread panicked"))?;
            match seen {
                Some(t) => per_node.push(t.saturating_duration_since(t_commit)),
                None => bail!("node {} did not switch to {version} within 30 s", n.0),
            }
        }
        watchdog.abort();
        // Still on the new version with a fresh connection (no flapping back).
        wait_all_answer(&nodes, active_np, &version).await?;
        wait_healthy(&client).await?;
        let (mut service, mut endpoints) = (None, None);
        while let Ok((kind, at)) = rx.try_recv() {
            if at < t_req {
                continue;
            }
            let d = at.saturating_duration_since(t_commit);
            match kind {
                Kind::Service if service.is_none() => service = Some(d),
                Kind::Endpoints if endpoints.is_none() => endpoints = Some(d),
                _ => {}
            }
        }
        let c = Cycle {
            commit: t_commit - t_req,
            all_nodes: per_node.iter().copied().max().unwrap_or_default(),
            per_node,
            service,
            endpoints,
        };
        if args.verbose {
            let nodes_ms: Vec<String> = c.per_node.iter().map(|d| ms(*d)).collect();
            eprintln!(
                "cycle {k} {version}: request->commit {} ms, commit->all nodes {} ms (per node \
                 {nodes_ms:?}), service {:?} endpoints {:?}",
                ms(c.commit),
                ms(c.all_nodes),
                c.service.map(ms),
                c.endpoints.map(ms)
            );
        }
        cycles.push(c);
    }
    let load_after = load_average();

    let stats = |mut v: Vec<Duration>| {
        v.sort();
        (
            percentile(&v, 50.0),
            percentile(&v, 99.0),
            v.last().copied().unwrap_or_default(),
        )
    };
    println!();
    println!(
        "switch-bench  servers={}  agents=3 (127.0.0.2-4, process runtime)  cycles={}  poll every {} ms \
         with a new connection per request",
        args.servers, args.cycles, args.poll_ms
    );
    println!("load average (1/5/15 min): before {load_before} | after {load_after}");
    if !missing.is_empty() {
        println!(
            "NOTE: nodes {missing:?} could not serve the nodePort (all agents bind \
             127.0.0.1:NODEPORT besides their own address; only one can on one host): measured \
             nodes {:?} only",
            nodes.iter().map(|n| n.0).collect::<Vec<_>>()
        );
    }
    println!(
        "{:<58} {:>8} {:>8} {:>8}",
        "phase (ms)", "p50", "p99", "max"
    );
    let row = |label: &str, v: Vec<Duration>| {
        let (p50, p99, max) = stats(v);
        println!("{label:<58} {:>8} {:>8} {:>8}", ms(p50), ms(p99), ms(max));
    };
    row(
        "promote request -> committed (get + CAS update)",
        cycles.iter().map(|c| c.commit).collect(),
    );
    row(
        "committed -> Service selector change seen (controller)",
        cycles.iter().filter_map(|c| c.service).collect(),
    );
    row(
        "committed -> Endpoints change seen (endpoints ctrl)",
        cycles.iter().filter_map(|c| c.endpoints).collect(),
    );
    row(
        "Endpoints seen -> slowest node on new version (proxy)",
        cycles
            .iter()
            .filter_map(|c| c.endpoints.map(|e| c.all_nodes.saturating_sub(e)))
            .collect(),
    );
    for (i, n) in nodes.iter().enumerate() {
        row(
            &format!("committed -> node {} on new version", n.0),
            cycles.iter().map(|c| c.per_node[i]).collect(),
        );
    }
    row(
        "committed -> EVERY node on new version",
        cycles.iter().map(|c| c.all_nodes).collect(),
    );
    let (_, p99, _) = stats(cycles.iter().map(|c| c.all_nodes).collect());
    println!(
        "goal p99 < 100 ms: {} ({} ms over {} cycles; polling adds up to {} ms)",
        if p99 < Duration::from_millis(100) {
            "met"
        } else {
            "NOT met"
        },
        ms(p99),
        cycles.len(),
        args.poll_ms
    );

    client
        .delete(Kind::Deployment, "default", NAME, None)
        .await
        .ok();
    Ok(())
}
