//! The rollout commands against the whole stack in one process: an API server with the
//! scheduler and controllers (`roles::spawn_leader_loops`), and a process-runtime agent
//! running the built `berth demo-server` as the workload.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use berth::cli::{self, Cli, Io};
use berth_apiserver::testing::TestCluster;
use clap::Parser;
use tokio_util::sync::CancellationToken;

struct Out {
    ok: bool,
    out: String,
    err: String,
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ok={} stdout:\n{}\nstderr:\n{}",
            self.ok, self.out, self.err
        )
    }
}

async fn berth(server: &str, args: &[&str]) -> Out {
    let argv = ["berth", "--server", server]
        .into_iter()
        .chain(args.iter().copied());
    let cli = Cli::try_parse_from(argv).unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let r = {
        let mut io = Io {
            out: &mut out,
            err: &mut err,
        };
        cli::run(cli, &mut io, CancellationToken::new()).await
    };
    let mut err = String::from_utf8(err).unwrap();
    if let Err(e) = &r {
        err.push_str(&format!("error: {}\n", cli::error_message(e)));
    }
    Out {
        ok: r.is_ok(),
        out: String::from_utf8(out).unwrap(),
        err,
    }
}

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
    let s = server.as_str();
    let loops_token = CancellationToken::new();
    let loops =
        berth::roles::spawn_leader_loops(cluster.server(0).unwrap(), loops_token.clone()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let agent_token = CancellationToken::new();
    let agent = berth_agent::start(
        berth_agent::AgentArgs {
            server: vec![server.clone()],
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
