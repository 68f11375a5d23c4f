//! Scheduling at scale, end to end through Raft (issue 5's benchmark), plus the pure rate.
//!
//! One in-process API server (a real single-member Raft cluster on 127.0.0.1:0), the
//! scheduler and the controllers, and hollow nodes registered in bulk (no runtime, no agents:
//! the node lifecycle grace is raised so silent hollow nodes stay Ready). Deployments ask for
//! the pods; the clock runs from the first Deployment write until every pod is bound.
//! Every connection is mutual TLS, as in `berth server`: the scheduler and the controllers
//! present the server's own `system:server` credential, the bench's writes and its watch the
//! admin credential the server's `--init` created.
//!
//! ```text
//! cargo run --release -p berth-controllers --example scale_bench -- --nodes 5000 --pods 100000
//! ```
//! Defaults are smaller (1000 nodes, 20000 pods) so a laptop run takes seconds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use berth_client::runtime::reflector;
use berth_client::runtime::watcher::{self, Backoff};
use berth_client::{BatchOp, Client, ClientConfig, DynObject};
use berth_proto::types::*;
use berth_scheduler::{schedule_batch, Snapshot};
use berth_testkit::{DeploymentBuilder, NodeBuilder, PodBuilder};
use chrono::Utc;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy)]
struct Args {
    nodes: usize,
    pods: usize,
    per_deployment: usize,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        nodes: 1000,
        pods: 20_000,
        per_deployment: 1000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || -> Result<usize> {
            it.next()
                .with_context(|| format!("{flag} needs a number"))?
                .parse()
                .with_context(|| format!("{flag} needs a number"))
        };
        match flag.as_str() {
            "--nodes" => a.nodes = value()?,
            "--pods" => a.pods = value()?,
            "--per-deployment" => a.per_deployment = value()?.max(1),
            other => bail!("unknown flag {other} (use --nodes N --pods N --per-deployment N)"),
        }
    }
    Ok(a)
}

fn peak_rss_mib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024)
}

fn node(i: usize) -> Node {
    NodeBuilder::new(&format!("hollow-{i:05}"))
        .cpu("32")
        .memory("64Gi")
        .pods("110")
        .address("127.0.0.1")
        .build()
}

/// The pure scheduling rate: batches of 2,000 pods against the full snapshot.
fn pure_rate(args: &Args) -> f64 {
    let nodes: Vec<Arc<Node>> = (0..args.nodes)
        .map(|i| {
            let mut n = node(i);
            let st = n.status.get_or_insert_with(Default::default);
            set_condition(
                &mut st.conditions,
                Condition::new("Ready", true, "", "", Utc::now()),
            );
            Arc::new(n)
        })
        .collect();
    let mut bound: Vec<Pod> = Vec::with_capacity(args.pods);
    let t = Instant::now();
    let mut scheduled = 0usize;
    for chunk in (0..args.pods).collect::<Vec<_>>().chunks(2000) {
        let snap = Snapshot::new(nodes.iter().cloned(), bound.iter());
        let pods: Vec<Pod> = chunk
            .iter()
            .map(|i| {
                PodBuilder::new(&format!("p{i}"))
                    .cpu("10m")
                    .memory("16Mi")
                    .owner(
                        "ReplicaSet",
                        "rs",
                        &format!("rs{}", i / args.per_deployment),
                    )
                    .build()
            })
            .collect();
        for (d, mut p) in schedule_batch(&snap, &pods).into_iter().zip(pods) {
            if let berth_scheduler::Outcome::Bind { node } = d.outcome {
                p.spec.node_name = node;
                bound.push(p);
                scheduled += 1;
            }
        }
    }
    scheduled as f64 / t.elapsed().as_secs_f64()
}

async fn register_nodes(client: &Client, n: usize) -> Result<()> {
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let ops = chunk
            .iter()
            .map(|i| BatchOp::Create(DynObject::from_typed(&node(*i))))
            .collect();
        let created = client.batch(ops).await?;
        let now = Utc::now();
        let mut ops = Vec::new();
        for r in created {
            let obj = r?.context("create returned no object")?;
            let mut n: Node = obj.to_typed()?;
            let st = n.status.get_or_insert_with(Default::default);
            set_condition(
                &mut st.conditions,
                Condition::new("Ready", true, "AgentReady", "hollow node", now),
            );
            st.last_heartbeat_time = Some(now);
            ops.push(BatchOp::UpdateStatus(DynObject::from_typed(&n)));
        }
        for r in client.batch(ops).await? {
            r?;
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    println!(
        "scale bench: {} hollow nodes, {} pods in Deployments of {}",
        args.nodes, args.pods, args.per_deployment
    );
    let pure = tokio::task::spawn_blocking(move || pure_rate(&args)).await?;
    println!("pure scheduling rate: {pure:.0} pods/s");

    let dir = tempfile::tempdir()?;
    let mut server_args = berth_apiserver::ServerArgs::new(dir.path().join("server"));
    server_args.listen = "127.0.0.1:0".into();
    server_args.init = true;
    let server = berth_apiserver::start(server_args).await?;
    let addr = server.addr().to_string();
    let config = |tls| ClientConfig {
        deadline: Duration::from_secs(60),
        request_timeout: Duration::from_secs(60),
        tls: Some(tls),
        ..Default::default()
    };
    // The admin credential (what --init wrote to DATA/admin.yaml), with the cluster CA.
    let mut admin_tls = server.client_tls();
    admin_tls.credential = server.pki().admin_config(vec![addr.clone()])?.credential();
    let client = Client::new(&[&addr], config(admin_tls))?;
    // What `berth server` gives its control loops.
    let loops_client = Client::new(&[&addr], config(server.client_tls()))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !server.is_leader() {
        if Instant::now() > deadline {
            bail!("the server did not become leader");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t = Instant::now();
    register_nodes(&client, args.nodes).await?;
    println!("registered {} nodes in {:.1?}", args.nodes, t.elapsed());

    let shutdown = CancellationToken::new();
    let mut loops = tokio::task::JoinSet::new();
    let config = berth_controllers::Config {
        // Hollow nodes do not heartbeat: keep them Ready for the whole run.
        node_lifecycle: berth_controllers::run::NodeLifecycleConfig {
            grace_period: Duration::from_secs(3600),
            eviction_timeout: Duration::from_secs(3600),
        },
        ..Default::default()
    };
    loops.spawn(berth_controllers::run_controllers(
        loops_client.clone(),
        config,
        shutdown.clone(),
    ));
    loops.spawn(berth_scheduler::run(
        loops_client.clone(),
        berth_scheduler::Config::default(),
        shutdown.clone(),
    ));

    // Count bound pods from a watch cache.
    let (pods, writer) = reflector::store::<Pod>();
    let mut pod_events = reflector::reflector(
        writer,
        watcher::watcher_with(
            watcher::ApiSource::<Pod>::new(client.clone(), watcher::Config::default()),
            Backoff::default(),
        ),
    )
    .boxed();
    let drain = tokio::spawn(async move { while pod_events.next().await.is_some() {} });

    let t = Instant::now();
    let deployments = args.pods.div_ceil(args.per_deployment);
    for i in 0..deployments {
        let replicas = args.per_deployment.min(args.pods - i * args.per_deployment);
        let d = DeploymentBuilder::new(&format!("app-{i:04}"))
            .replicas(i32::try_from(replicas)?)
            .cpu("10m")
            .build();
        client.create(&d).await?;
    }
    let mut last = Instant::now();
    let timeout = Duration::from_secs(600);
    loop {
        let all = pods.state();
        let bound = all.iter().filter(|p| !p.spec.node_name.is_empty()).count();
        if last.elapsed() > Duration::from_secs(2) {
            println!(
                "  {:>6.1}s: {} pods, {} bound",
                t.elapsed().as_secs_f64(),
                all.len(),
                bound
            );
            last = Instant::now();
        }
        if bound >= args.pods {
            break;
        }
        if t.elapsed() > timeout {
            bail!("only {bound} of {} pods bound after {timeout:?}", args.pods);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = t.elapsed();
    println!(
        "end to end: {} pods created, scheduled and bound through Raft in {:.1?} = {:.0} pods/s",
        args.pods,
        took,
        args.pods as f64 / took.as_secs_f64()
    );
    if let Some(mib) = peak_rss_mib() {
        println!("peak memory of the process (server + loops + bench): {mib} MiB");
    }
    shutdown.cancel();
    while loops.join_next().await.is_some() {}
    drain.abort();
    server.shutdown().await?;
    Ok(())
}
