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

/// `app(version)` whose container exits at once with `code` (a crash loop), optionally with
/// `autoRevert` after one pod failing for a second.
fn crashing(code: u8, auto_revert: bool) -> String {
    let strategy = if auto_revert {
        "  strategy:\n    rollingUpdate:\n      maxSurge: 1\n      maxUnavailable: 0\n      autoRevert: true\n      autoRevertFailedPods: 1\n      autoRevertFailedSeconds: 1\n"
    } else {
        ""
    };
    app("v1")
        .replace(
            &format!(
                r#"["{}", "demo-server", "--bind", "127.0.0.1"]"#,
                env!("CARGO_BIN_EXE_berth")
            ),
            &format!(r#"["sh", "-c", "echo broken >&2; exit {code}"]"#),
        )
        .replace("  replicas: 2\n", &format!("  replicas: 2\n{strategy}"))
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

/// `apply --wait`, `diff` and `rollout status` exit statuses against the real controllers and
/// a process agent: 0 rolled out, 5 a crash-looping revision (failed fast, pod and reason
/// printed), 7 reverted by autoRevert; `diff` 0 no changes, 1 changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_wait_and_diff_exit_statuses_follow_the_real_controllers() {
    use berth::cli::exit;
    let cluster = TestCluster::start(1).await.unwrap();
    let server = cluster.addr(0).to_string();
    let target = Target::new(&cluster, &server);
    let s = &target;
    let loops_token = CancellationToken::new();
    let loops =
        berth::roles::spawn_leader_loops(cluster.server(0).unwrap(), loops_token.clone()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let agent = berth_agent::start(
        berth_agent::AgentArgs {
            server: vec![server.clone()],
            token: Some(berth_tls::Secret::new(cluster.token())),
            name: Some("wait-node".into()),
            data_dir: Some(dir.path().join("agent")),
            runtime: Some(berth_agent::RuntimeKind::Process),
            capacity: Some("cpu=4,memory=4Gi".into()),
            host_port_range: "47900-47999".into(),
            listen: Some("127.0.0.1:0".into()),
            no_proxy: true,
            heartbeat_ms: 500,
            ..Default::default()
        },
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let v1 = write(dir.path(), "v1.yaml", &app("v1"));
    let v2 = write(dir.path(), "v2.yaml", &app("v2"));

    // diff before anything exists: everything would be created.
    let r = berth(s, &["diff", "-f", &v1]).await;
    assert_eq!(r.code, exit::CHANGES, "{r:?}");
    assert!(
        r.out
            .contains("deployment.apps/hello -n default: would be created"),
        "{r:?}"
    );

    let r = berth(s, &["apply", "-f", &v1, "--wait", "--timeout", "50s"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.out
            .ends_with("deployment \"hello\" successfully rolled out\n"),
        "{r:?}"
    );
    let r = berth(s, &["diff", "-f", &v1]).await;
    assert_eq!((r.code, r.out.as_str()), (0, ""), "{r:?}");
    let r = berth(s, &["diff", "-f", &v2]).await;
    assert_eq!(r.code, exit::CHANGES, "{r:?}");
    assert!(
        r.out
            .contains("~ spec.template.spec.containers[0].env[0].value: \"v1\" -> \"v2\""),
        "{r:?}"
    );
    // diff stored nothing.
    let r = berth(s, &["diff", "-f", &v2]).await;
    assert_eq!(r.code, exit::CHANGES, "{r:?}");

    // A crash-looping revision without autoRevert: apply --wait fails at once, naming the pod.
    let bad = write(dir.path(), "bad.yaml", &crashing(3, false));
    let started = std::time::Instant::now();
    let r = berth(s, &["apply", "-f", &bad, "--wait", "--timeout", "50s"]).await;
    assert_eq!(r.code, exit::ROLLOUT_FAILED, "{r:?}");
    assert!(
        r.err.contains("rollout failed: pod hello-") && r.err.contains("CrashLoopBackOff"),
        "{r:?}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(45));
    let r = berth(s, &["rollout", "undo", "deploy/hello"]).await;
    assert!(r.ok, "{r:?}");
    let r = berth(
        s,
        &["rollout", "status", "deploy/hello", "--timeout", "50s"],
    )
    .await;
    assert_eq!(r.code, 0, "{r:?}");

    // With autoRevert: the controller puts v1 back; apply --wait and rollout status exit 7.
    let reverting = write(dir.path(), "reverting.yaml", &crashing(4, true));
    let r = berth(
        s,
        &["apply", "-f", &reverting, "--wait", "--timeout", "50s"],
    )
    .await;
    assert_eq!(r.code, exit::REVERTED, "{r:?}");
    assert!(r.err.contains("reverted (CrashLoopBackOff)"), "{r:?}");
    let r = berth(
        s,
        &["rollout", "status", "deploy/hello", "--timeout", "10s"],
    )
    .await;
    assert_eq!(r.code, exit::REVERTED, "{r:?}");
    let r = berth(s, &["rollout", "history", "deploy/hello"]).await;
    assert!(r.out.contains("failed (CrashLoopBackOff)"), "{r:?}");
    // The same template again is not retried.
    let r = berth(
        s,
        &["apply", "-f", &reverting, "--wait", "--timeout", "10s"],
    )
    .await;
    assert_eq!(r.code, exit::REVERTED, "{r:?}");
    let r = berth(s, &["get", "deploy", "hello", "-o", "json"]).await;
    let v: serde_json::Value = serde_json::from_str(&r.out).unwrap();
    assert_eq!(v["status"]["availableReplicas"], 2, "{v}");

    agent.stop_workloads().await;
    loops_token.cancel();
    let _ = loops.await;
    cluster.shutdown().await.unwrap();
}
