//! The rollout commands against the whole stack in one process: an API server with the
//! scheduler and controllers (`roles::spawn_leader_loops`), and a process-runtime agent
//! running the built `berth demo-server` as the workload.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use berth_apiserver::testing::TestCluster;
use tokio_util::sync::CancellationToken;

mod common;
use common::{berth, Target};

fn app(version: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: hello
spec:
  replicas: 2
  selector:
    matchLabels: {{app: hello}}
  template:
    metadata:
      labels: {{app: hello}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
        - name: web
          image: berth-demo
          command: ["{bin}", "demo-server", "--bind", "127.0.0.1"]
          env:
            - name: VERSION
              value: {version}
          ports:
            - name: http
              containerPort: 8080
          readinessProbe:
            httpGet: {{path: /healthz, port: http}}
            periodSeconds: 1
"#,
        bin = env!("CARGO_BIN_EXE_berth"),
    )
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_status_history_and_undo_follow_the_real_controllers() {
    let cluster = TestCluster::start(1).await.unwrap();
    let server = cluster.addr(0).to_string();
    let target = Target::new(&cluster, &server);
    let s = &target;
    let loops_token = CancellationToken::new();
    let loops =
        berth::roles::spawn_leader_loops(cluster.server(0).unwrap(), loops_token.clone()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let agent_token = CancellationToken::new();
    let agent = berth_agent::start(
        berth_agent::AgentArgs {
            server: vec![server.clone()],
            token: Some(berth_tls::Secret::new(cluster.token())),
            name: Some("stack-node".into()),
            data_dir: Some(dir.path().join("agent")),
            runtime: Some(berth_agent::RuntimeKind::Process),
            capacity: Some("cpu=4,memory=4Gi".into()),
            host_port_range: "47800-47899".into(),
            listen: Some("127.0.0.1:0".into()),
            no_proxy: true,
            heartbeat_ms: 500,
            ..Default::default()
        },
        agent_token.clone(),
    )
    .await
    .unwrap();

    let r = berth(
        s,
        &["apply", "-f", &write(dir.path(), "v1.yaml", &app("v1"))],
    )
    .await;
    assert!(r.ok, "{r:?}");
    let r = berth(
        s,
        &["rollout", "status", "deploy/hello", "--timeout", "50s"],
    )
    .await;
    assert!(r.ok, "{r:?}");
    assert!(
        r.out
            .ends_with("deployment \"hello\" successfully rolled out\n"),
        "{r:?}"
    );
    let r = berth(s, &["get", "deploy", "hello"]).await;
    assert!(r.out.contains("hello   2/2     2            2"), "{r:?}");

    let r = berth(
        s,
        &["apply", "-f", &write(dir.path(), "v2.yaml", &app("v2"))],
    )
    .await;
    assert_eq!(r.out, "deployment.apps/hello configured\n", "{r:?}");
    let r = berth(
        s,
        &["rollout", "status", "deploy/hello", "--timeout", "50s"],
    )
    .await;
    assert!(r.ok, "{r:?}");
    let r = berth(s, &["rollout", "history", "deploy/hello"]).await;
    let revisions: Vec<&str> = r
        .out
        .lines()
        .skip(2)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(revisions, vec!["1", "2"], "{r:?}");

    let r = berth(s, &["rollout", "undo", "deploy/hello"]).await;
    assert_eq!(r.out, "deployment.apps/hello rolled back\n", "{r:?}");
    let r = berth(
        s,
        &["rollout", "status", "deploy/hello", "--timeout", "50s"],
    )
    .await;
    assert!(r.ok, "{r:?}");
    let r = berth(s, &["get", "deploy", "hello", "-o", "json"]).await;
    let v: serde_json::Value = serde_json::from_str(&r.out).unwrap();
    assert_eq!(
        v["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"],
        "v1"
    );
    let r = berth(s, &["describe", "deploy", "hello"]).await;
    assert!(r.out.contains("ReplicaSets:"), "{r:?}");

    // A stopped agent leaves workloads running by design: stop them explicitly.
    agent.stop_workloads().await;
    loops_token.cancel();
    let _ = loops.await;
    cluster.shutdown().await.unwrap();
}
