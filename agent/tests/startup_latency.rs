//! Pod startup latency: pod created -> status Ready, through a real in-process API server and
//! one agent, p50/p99 over many pods (issue 4's benchmark: 100 process pods, goal p99 <= 1 s;
//! 20 Docker pods, goal p99 <= 2 s). Also prints the agent's RSS growth is not measurable
//! in-process, so only latency is measured here.
//!
//! Ignored by default (it is a measurement, not a check):
//!   cargo nextest run -p berth-agent --test startup_latency --run-ignored ignored-only --no-capture
//!   BERTH_BENCH_PODS=100 BERTH_BENCH_RUNTIME=docker ... to change size or runtime.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use berth_agent::{AgentArgs, RuntimeKind};
use berth_apiserver::testing::TestCluster;
use berth_client::runtime::watcher::{self, Event as WatchEvent};
use berth_client::{Client, ClientConfig};
use berth_proto::types::{Container, ObjectMeta, Pod, PodSpec};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run explicitly"]
async fn pod_created_to_ready_latency() {
    let docker = std::env::var("BERTH_BENCH_RUNTIME").as_deref() == Ok("docker");
    let n: usize = std::env::var("BERTH_BENCH_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if docker { 20 } else { 100 });
    if docker {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../images/build-busybox.sh");
        assert!(std::process::Command::new("bash")
            .arg(script)
            .status()
            .unwrap()
            .success());
    }
    let cluster = TestCluster::start(1).await.unwrap();
    let server = cluster.addr(0).to_string();
    let client = Client::new(
        &[server.as_str()],
        ClientConfig::with_tls(cluster.admin_tls()),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let node = "bench-node";
    let agent = berth_agent::start(
        AgentArgs {
            server: vec![server.clone()],
            token: Some(berth_tls::Secret::new(cluster.token())),
            name: Some(node.into()),
            data_dir: Some(dir.path().to_path_buf()),
            runtime: Some(if docker {
                RuntimeKind::Docker
            } else {
                RuntimeKind::Process
            }),
            capacity: Some("cpu=64,memory=64Gi".into()),
            host_port_range: "42000-42999".into(),
            listen: Some("127.0.0.1:0".into()),
            no_proxy: true,
            ..AgentArgs::default()
        },
        CancellationToken::new(),
    )
    .await
    .unwrap();

    let mut w = watcher::watcher::<Pod>(client.clone(), watcher::Config::default());
    let mut created: HashMap<String, Instant> = HashMap::new();
    let mut ready: HashMap<String, Duration> = HashMap::new();
    // Prime the watch.
    while !matches!(w.next().await, Some(Ok(WatchEvent::Restarted(_)))) {}
    for i in 0..n {
        let name = format!("bench-{i}");
        let (image, command) = if docker {
            (
                "berth-busybox:latest",
                vec!["/bin/busybox".to_string(), "sleep".into(), "600".into()],
            )
        } else {
            ("none", vec!["sleep".to_string(), "600".into()])
        };
        let pod = Pod {
            metadata: ObjectMeta {
                name: name.clone(),
                namespace: "bench".into(),
                ..Default::default()
            },
            spec: PodSpec {
                node_name: node.into(),
                termination_grace_period_seconds: Some(1),
                containers: vec![Container {
                    name: "c".into(),
                    image: image.into(),
                    command,
                    ..Default::default()
                }],
                ..Default::default()
            },
            ..Default::default()
        };
        created.insert(name, Instant::now());
        client.create(&pod).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while ready.len() < n && Instant::now() < deadline {
        let ev = tokio::time::timeout(Duration::from_secs(5), w.next()).await;
        let Ok(Some(Ok(WatchEvent::Applied(p)))) = ev else {
            continue;
        };
        if p.is_ready() && !ready.contains_key(&p.metadata.name) {
            if let Some(t0) = created.get(&p.metadata.name) {
                ready.insert(p.metadata.name.clone(), t0.elapsed());
            }
        }
    }
    let mut lat: Vec<Duration> = ready.values().copied().collect();
    lat.sort();
    assert_eq!(lat.len(), n, "only {} of {n} pods became Ready", lat.len());
    println!(
        "BENCH pod created->Ready runtime={} pods={n}: p50={:?} p99={:?} max={:?}",
        if docker { "docker" } else { "process" },
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        lat[lat.len() - 1]
    );
    for i in 0..n {
        let _ = client
            .delete(berth_proto::Kind::Pod, "bench", &format!("bench-{i}"), None)
            .await;
    }
    let containers = dir.path().join("containers");
    let gone = Instant::now() + Duration::from_secs(60);
    loop {
        let left = if docker {
            let out = std::process::Command::new("docker")
                .args(["ps", "-aq", "--filter", &format!("label=berth.node={node}")])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .count()
        } else {
            std::fs::read_dir(&containers)
                .map(|d| d.count())
                .unwrap_or(0)
        };
        if left == 0 || Instant::now() > gone {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    agent.stop().await;
}
