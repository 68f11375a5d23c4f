//! The exit-status table of `rollout status`, `apply --wait` and `diff` against a real API
//! server in-process with no controllers: each Deployment status a controller can write is
//! written here directly, and each must end the wait with its own documented status.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use berth::cli::exit;
use berth_apiserver::testing::TestCluster;

mod common;
use common::{berth, Target};

fn app(extra_spec: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
{extra_spec}  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      containers:
        - name: app
          image: demo:v1
"#
    )
}

const BLUE_GREEN: &str = "  strategy:\n    type: BlueGreen\n    blueGreen:\n      activeService: web\n      autoPromotionEnabled: false\n";

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// Write a Deployment's status as the controller would (observing its generation).
async fn set_status(cluster: &TestCluster, name: &str, status: serde_json::Value) {
    let client = berth_client::Client::new(
        &[cluster.addr(0).to_string()],
        berth_client::ClientConfig::with_tls(cluster.admin_tls()),
    )
    .unwrap();
    let mut d = client
        .get_dyn(berth_client::Kind::Deployment, "default", name)
        .await
        .unwrap();
    let mut status = status;
    status["observedGeneration"] = d.value["metadata"]["generation"].clone();
    d.value["status"] = status;
    client.update_status_dyn(&d).await.unwrap();
}

fn cond(type_: &str, status: &str, reason: &str, message: &str) -> serde_json::Value {
    serde_json::json!({"type": type_, "status": status, "reason": reason, "message": message})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_status_and_apply_wait_end_with_the_documented_exit_statuses() {
    let cluster = TestCluster::start(1).await.unwrap();
    let server = cluster.addr(0).to_string();
    let s = &Target::new(&cluster, &server);
    let dir = tempfile::tempdir().unwrap();
    let rolling = write(dir.path(), "rolling.yaml", &app(""));
    let r = berth(s, &["apply", "-f", &rolling]).await;
    assert!(r.ok, "{r:?}");
    let status = |until: &'static str| {
        let mut args = vec!["rollout", "status", "deploy/web", "--timeout", "2s"];
        if !until.is_empty() {
            args.extend(["--until", until]);
        }
        args
    };
    let complete = serde_json::json!({"replicas": 2, "updatedReplicas": 2,
        "availableReplicas": 2, "readyReplicas": 2});
    let deadline = serde_json::json!({"replicas": 3, "updatedReplicas": 1,
        "availableReplicas": 2, "conditions": [cond("Progressing", "False",
        "ProgressDeadlineExceeded", "ReplicaSet \"web-x\" has timed out progressing.")]});
    let reverted = serde_json::json!({"replicas": 2, "updatedReplicas": 0,
        "availableReplicas": 2, "conditions": [cond("Reverted", "True", "CrashLoopBackOff",
        "Rollout of revision 2 failed (CrashLoopBackOff: pods web-x-1)")]});
    let reverting = serde_json::json!({"replicas": 3, "updatedReplicas": 1,
        "availableReplicas": 1, "conditions": [cond("Reverted", "True", "CrashLoopBackOff",
        "Rollout of revision 2 failed")]});
    let going = serde_json::json!({"replicas": 2, "updatedReplicas": 1, "availableReplicas": 2});

    // (status written, --until, exit status, text on stdout or stderr)
    let table: Vec<(&serde_json::Value, &str, u8, &str)> = vec![
        (&complete, "", 0, "successfully rolled out"),
        (&complete, "complete", 0, "successfully rolled out"),
        (&complete, "paused", 0, "successfully rolled out"),
        (&going, "", exit::TIMED_OUT, "timed out after 2s"),
        (
            &deadline,
            "",
            exit::ROLLOUT_FAILED,
            "exceeded its progress deadline",
        ),
        (&reverted, "", exit::REVERTED, "reverted (CrashLoopBackOff)"),
        (
            &reverted,
            "complete",
            exit::REVERTED,
            "reverted (CrashLoopBackOff)",
        ),
        // Reverting, not yet back at full size: still waiting.
        (&reverting, "", exit::TIMED_OUT, "revert to finish"),
    ];
    for (st, until, code, text) in &table {
        set_status(&cluster, "web", (*st).clone()).await;
        let r = berth(s, &status(until)).await;
        assert_eq!(r.code, *code, "{st} --until {until:?}: {r:?}");
        assert!(
            r.out.contains(text) || r.err.contains(text),
            "{st} --until {until:?}: {text:?} not printed: {r:?}"
        );
    }

    // apply --wait: the same statuses, after applying (here: unchanged).
    set_status(&cluster, "web", deadline.clone()).await;
    let r = berth(s, &["apply", "-f", &rolling, "--wait", "--timeout", "5s"]).await;
    assert_eq!(r.code, exit::ROLLOUT_FAILED, "{r:?}");
    set_status(&cluster, "web", reverted.clone()).await;
    let r = berth(s, &["apply", "-f", &rolling, "--wait", "--timeout", "5s"]).await;
    assert_eq!(r.code, exit::REVERTED, "{r:?}");
    set_status(&cluster, "web", going.clone()).await;
    let r = berth(s, &["apply", "-f", &rolling, "--wait", "--timeout", "1s"]).await;
    assert_eq!(r.code, exit::TIMED_OUT, "{r:?}");
    set_status(&cluster, "web", complete.clone()).await;
    let r = berth(s, &["apply", "-f", &rolling, "--wait", "--timeout", "5s"]).await;
    assert_eq!(r.code, 0, "{r:?}");

    // Blue-green paused for a manual promotion: 0 by default and with --until paused, 6 when
    // waiting for complete (apply --wait waits for complete).
    let bg = write(dir.path(), "bg.yaml", &app(BLUE_GREEN));
    let r = berth(s, &["apply", "-f", &bg]).await;
    assert!(r.ok, "{r:?}");
    let paused = serde_json::json!({"replicas": 4, "updatedReplicas": 2,
        "availableReplicas": 4, "blueGreen": {"phase": "Paused", "activeSelector": "a",
        "previewSelector": "b"}});
    let aborted = serde_json::json!({"replicas": 2, "updatedReplicas": 0,
        "availableReplicas": 2, "blueGreen": {"phase": "Degraded", "activeSelector": "a"}});
    for (st, until, code) in [
        (&paused, "", 0),
        (&paused, "paused", 0),
        (&paused, "complete", exit::PAUSED),
        (&aborted, "", exit::REVERTED),
    ] {
        set_status(&cluster, "web", st.clone()).await;
        let r = berth(s, &status(until)).await;
        assert_eq!(r.code, code, "{st} --until {until:?}: {r:?}");
    }
    set_status(&cluster, "web", paused.clone()).await;
    let r = berth(s, &["apply", "-f", &bg, "--wait", "--timeout", "5s"]).await;
    assert_eq!(r.code, exit::PAUSED, "{r:?}");
    assert!(r.err.contains("rollout promote deploy/web"), "{r:?}");

    // Bad command lines exit 2.
    let parse = |args: &[&str]| {
        <berth::cli::Cli as clap::Parser>::try_parse_from(args)
            .err()
            .map(|e| e.exit_code())
    };
    assert_eq!(
        parse(&[
            "berth",
            "rollout",
            "status",
            "deploy/web",
            "--until",
            "never"
        ]),
        Some(i32::from(exit::USAGE))
    );
    assert_eq!(
        parse(&["berth", "apply", "-f", "x.yaml", "--timeout", "5s"]),
        Some(i32::from(exit::USAGE)),
        "--timeout needs --wait"
    );
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_exits_0_without_changes_1_with_changes_and_2_when_it_fails() {
    let cluster = TestCluster::start(1).await.unwrap();
    let server = cluster.addr(0).to_string();
    let s = &Target::new(&cluster, &server);
    let dir = tempfile::tempdir().unwrap();
    let v1 = write(dir.path(), "v1.yaml", &app(""));
    let r = berth(s, &["apply", "-f", &v1]).await;
    assert!(r.ok, "{r:?}");
    let r = berth(s, &["diff", "-f", &v1]).await;
    assert_eq!((r.code, r.out.as_str()), (0, ""), "{r:?}");
    let scaled = write(
        dir.path(),
        "scaled.yaml",
        &app("").replace("replicas: 2", "replicas: 3"),
    );
    let r = berth(s, &["diff", "-f", &scaled]).await;
    assert_eq!(r.code, exit::CHANGES, "{r:?}");
    assert_eq!(
        r.out, "deployment.apps/web -n default: would be configured\n  ~ spec.replicas: 2 -> 3\n",
        "{r:?}"
    );
    // A manifest the server would refuse, an unreadable one, an unreachable server: >= 2.
    let refused = write(
        dir.path(),
        "refused.yaml",
        &app("").replace("replicas: 2", "replicas: -1"),
    );
    let r = berth(s, &["diff", "-f", &refused]).await;
    assert!(r.code >= 2, "{r:?}");
    let typo = write(
        dir.path(),
        "typo.yaml",
        &app("").replace("replicas: 2", "replicaz: 2"),
    );
    let r = berth(s, &["diff", "-f", &typo]).await;
    assert!(r.code >= 2 && r.err.contains("replicaz"), "{r:?}");
    let nowhere = Target::nowhere("127.0.0.1:1", dir.path());
    let r = berth(&nowhere, &["diff", "-f", &v1]).await;
    assert!(r.code >= 2, "{r:?}");
    cluster.shutdown().await.unwrap();
}
