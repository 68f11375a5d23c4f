//! Release pipelines: a RollingUpdate with `autoRevert` to a revision that crash-loops, under a
//! bounded load through every node's proxy: `berth apply --wait` exits 7 (reverted) naming the
//! reason, `rollout status` says the same, `rollout history` marks the revision failed, and no
//! request fails while the bad revision comes and goes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use berth_proto::types::Pod;

use crate::harness::load::Load;
use crate::harness::{wait_until, Cluster, Opts};

const PORT: u16 = 30085;

/// The demo server as host processes; `command` is the container's command.
fn manifest(version: &str, command: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: rev
  labels: {{app: rev}}
spec:
  replicas: 3
  progressDeadlineSeconds: 60
  selector:
    matchLabels: {{app: rev}}
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 1
      maxUnavailable: 0
      autoRevert: true
      autoRevertFailedPods: 1
      autoRevertFailedSeconds: 2
  template:
    metadata:
      labels: {{app: rev}}
    spec:
      runtimeClassName: process
      containers:
        - name: web
          image: berth-demo:latest
          command: {command}
          env:
            - name: VERSION
              value: {version}
          ports:
            - name: http
              containerPort: 8080
          readinessProbe:
            httpGet:
              path: /healthz
              port: http
            periodSeconds: 1
          resources:
            requests:
              cpu: 50m
              memory: 16Mi
---
apiVersion: v1
kind: Service
metadata:
  name: rev
spec:
  selector: {{app: rev}}
  ports:
    - name: http
      port: 80
      targetPort: http
      nodePort: {PORT}
"#
    )
}

fn ready_rev_pods(c: &Cluster, n: usize) -> Result<Vec<Pod>, String> {
    let pods: Vec<Pod> = c.get_list("pods")?;
    let live: Vec<Pod> = pods
        .into_iter()
        .filter(|p| p.metadata.labels.get("app").map(String::as_str) == Some("rev"))
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    let ready = live.iter().filter(|p| p.is_ready()).count();
    if live.len() == n && ready == n {
        Ok(live)
    } else {
        Err(format!(
            "{ready} of {} rev pods Ready (want {n})",
            live.len()
        ))
    }
}

#[test]
fn a_crash_looping_rollout_is_reverted_under_load_without_a_failed_request() {
    let Some(c) = Cluster::start(
        "auto-revert",
        22,
        Opts {
            agents: true,
            ..Opts::default()
        },
    ) else {
        return;
    };
    let good = c.write_file(
        "rev-v1.yaml",
        &manifest("v1", r#"["berth", "demo-server"]"#),
    );
    // Exits at once, every time: CrashLoopBackOff, never Ready.
    let bad = c.write_file(
        "rev-v2.yaml",
        &manifest("v2", r#"["sh", "-c", "echo bad release >&2; exit 3"]"#),
    );
    let out = c.cli(&["apply", "-f", &good, "--wait", "--timeout", "25s"]);
    assert!(out.ok(), "first rollout: {out}");
    wait_until("3 rev pods Ready", Duration::from_secs(30), || {
        ready_rev_pods(&c, 3)
    });
    for i in 0..3 {
        wait_until(
            &format!("node{}:{PORT} answers v1", i + 1),
            Duration::from_secs(20),
            || {
                let (status, body) = c.http_get(c.ip(i), PORT, "/")?;
                if status == 200 && body.contains("version v1") {
                    Ok(())
                } else {
                    Err(format!("HTTP {status}: {body:?}"))
                }
            },
        );
    }

    let targets: Vec<SocketAddr> = (0..3).map(|i| SocketAddr::from((c.ip(i), PORT))).collect();
    let load = Load::start(&c.rt, targets, 100, Duration::from_secs(45));
    let began = Instant::now();
    wait_until("1 s of load", Duration::from_secs(10), || {
        let n = load.completed_since(began);
        if n >= 100 {
            Ok(())
        } else {
            Err(format!("{n} requests"))
        }
    });

    let applied = Instant::now();
    let out = c.cli(&["apply", "-f", &bad, "--wait", "--timeout", "25s"]);
    let apply_wait = applied.elapsed();
    assert_eq!(
        out.code,
        Some(7),
        "apply --wait of the crash-looping revision: {out}"
    );
    assert!(
        out.stderr.contains("reverted (CrashLoopBackOff)"),
        "the reason is printed: {out}"
    );
    let reverted = Instant::now();
    wait_until(
        "2 s of load after the revert",
        Duration::from_secs(10),
        || {
            let n = load.completed_since(reverted);
            if n >= 200 {
                Ok(())
            } else {
                Err(format!("{n} requests"))
            }
        },
    );
    let samples = load.finish();

    let status = c.cli(&["rollout", "status", "deploy/rev", "--timeout", "10s"]);
    assert_eq!(status.code, Some(7), "rollout status: {status}");
    let history = c.cli_ok(&["rollout", "history", "deploy/rev"]);
    assert!(history.contains("failed (CrashLoopBackOff)"), "{history}");
    // Applying the same template again does not retry it.
    let again = c.cli(&["apply", "-f", &bad, "--wait", "--timeout", "10s"]);
    assert_eq!(
        again.code,
        Some(7),
        "re-apply of the failed template: {again}"
    );
    ready_rev_pods(&c, 3).expect("v1 still serves at full size");

    let failed: Vec<_> = samples.iter().filter(|s| !s.ok).collect();
    let not_v1: Vec<_> = samples
        .iter()
        .filter(|s| s.ok && s.version() != Some("v1"))
        .collect();
    eprintln!(
        "auto-revert: {} requests through 3 node proxies, {} failed, {} not from v1; \
         apply --wait exited 7 (reverted) after {apply_wait:?} (autoRevertFailedSeconds 2)",
        samples.len(),
        failed.len(),
        not_v1.len()
    );
    assert!(
        failed.is_empty(),
        "failed requests: {:?}",
        failed
            .iter()
            .take(5)
            .map(|s| s.describe())
            .collect::<Vec<_>>()
    );
    assert!(not_v1.is_empty(), "answers from the bad revision");
}
