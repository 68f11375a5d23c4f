//! Release guarantees under load through every node's proxy: the traffic-switch barrier
//! (blue-green promote, undo and abort complete only once every proxy has the switch) and
//! drain before stop (a deleted pod leaves every proxy before it gets SIGTERM), so a rolling
//! update with maxUnavailable 0 and a scale-down fail no request and reset no connection.
//! The switch barrier's latency over the three nodes is printed (`BARRIER p50=.. p99=..`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use berth_proto::types::{Deployment, Pod};

use crate::harness::load::{Load, Sample};
use crate::harness::{wait_until, Cluster, Opts};

const SHOP_PORT: u16 = 30190;
const WEB_PORT: u16 = 30191;

fn shop(version: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: shop\nspec:\n  replicas: 2\n  selector:\n    matchLabels:\n      app: shop\n  strategy:\n    type: BlueGreen\n    blueGreen:\n      activeService: shop\n      previewService: shop-preview\n      autoPromotionEnabled: false\n      scaleDownDelaySeconds: 60\n  template:\n    metadata:\n      labels:\n        app: shop\n    spec:\n      runtimeClassName: process\n      terminationGracePeriodSeconds: 5\n      containers:\n      - name: web\n        image: berth-demo:latest\n        command: [\"berth\", \"demo-server\"]\n        env:\n        - name: VERSION\n          value: {version}\n        ports:\n        - name: http\n          containerPort: 8080\n        readinessProbe:\n          httpGet:\n            path: /healthz\n            port: http\n          periodSeconds: 1\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: shop\nspec:\n  selector:\n    app: shop\n  ports:\n  - name: http\n    port: 80\n    targetPort: http\n    nodePort: {SHOP_PORT}\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: shop-preview\nspec:\n  selector:\n    app: shop\n  ports:\n  - name: http\n    port: 80\n    targetPort: http\n    nodePort: 30192\n"
    )
}

fn web(version: &str, replicas: u32) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: {replicas}\n  selector:\n    matchLabels:\n      app: web\n  strategy:\n    type: RollingUpdate\n    rollingUpdate:\n      maxSurge: 1\n      maxUnavailable: 0\n  template:\n    metadata:\n      labels:\n        app: web\n    spec:\n      runtimeClassName: process\n      terminationGracePeriodSeconds: 5\n      containers:\n      - name: web\n        image: berth-demo:latest\n        command: [\"berth\", \"demo-server\"]\n        env:\n        - name: VERSION\n          value: {version}\n        ports:\n        - name: http\n          containerPort: 8080\n        readinessProbe:\n          httpGet:\n            path: /healthz\n            port: http\n          periodSeconds: 1\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector:\n    app: web\n  ports:\n  - name: http\n    port: 80\n    targetPort: http\n    nodePort: {WEB_PORT}\n"
    )
}

fn apply_text(c: &Cluster, name: &str, text: &str) {
    let path = c.write_file(name, text);
    c.cli_ok(&["apply", "-f", &path]);
}

/// Exactly `n` Ready pods of `app` that are not being deleted, with `version`.
fn ready(c: &Cluster, app: &str, n: usize, version: &str) -> Result<(), String> {
    let pods: Vec<Pod> = c.get_list("pods")?;
    let live: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.metadata.labels.get("app").map(String::as_str) == Some(app))
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    let good = live
        .iter()
        .filter(|p| {
            p.is_ready()
                && p.spec.containers[0]
                    .env
                    .iter()
                    .any(|e| e.name == "VERSION" && e.value == version)
        })
        .count();
    if good >= n {
        Ok(())
    } else {
        Err(format!(
            "{good} of {} {app} pods Ready with {version}",
            live.len()
        ))
    }
}

/// Wait until every node's proxy on `port` answers with `version`.
fn answers(c: &Cluster, port: u16, version: &str) {
    for i in 0..3 {
        wait_until(
            &format!("node{}:{port} to answer {version}", i + 1),
            Duration::from_secs(20),
            || {
                let (status, body) = c.http_get(c.ip(i), port, "/")?;
                if status == 200 && body.contains(&format!("version {version}")) {
                    Ok(())
                } else {
                    Err(format!("HTTP {status}: {body:?}"))
                }
            },
        );
    }
}

/// Let `load` run until `n` requests started after now have completed.
fn load_for(load: &Load, n: usize, what: &str) {
    let from = Instant::now();
    wait_until(what, Duration::from_secs(20), || {
        let done = load.completed_since(from);
        if done >= n {
            Ok(())
        } else {
            Err(format!("{done} requests"))
        }
    });
}

/// The last switch's barrier: from the switch to every proxy's confirmation.
fn barrier(c: &Cluster) -> Result<Duration, String> {
    let d: Deployment = c
        .get_one("deployment", "shop")?
        .ok_or("no deployment shop")?;
    let bg = d
        .status
        .and_then(|s| s.blue_green)
        .ok_or("no blue-green status")?;
    let confirmed = bg.switch_confirmed_at.ok_or("switch not confirmed yet")?;
    let from = match bg.phase.as_str() {
        "Promoting" => bg.promoted_at,
        _ => bg.phase_since,
    }
    .ok_or("no switch time")?;
    (confirmed - from)
        .to_std()
        .map_err(|e| format!("confirmation before the switch: {e}"))
}

/// Fail with the failed (and reset) requests of `samples`, if any.
fn assert_no_failures(what: &str, samples: &[Sample]) {
    let failed: Vec<&Sample> = samples.iter().filter(|s| !s.ok).collect();
    let resets = failed
        .iter()
        .filter(|s| s.text.to_ascii_lowercase().contains("reset"))
        .count();
    eprintln!(
        "{what}: {} requests through 3 proxies, {} failed, {resets} reset",
        samples.len(),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{what}: {} failed ({resets} reset): {:?}",
        failed.len(),
        failed
            .iter()
            .take(5)
            .map(|s| s.describe())
            .collect::<Vec<_>>()
    );
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[test]
fn blue_green_promote_undo_and_abort_wait_for_every_proxy_and_fail_no_request() {
    let Some(c) = Cluster::start(
        "release-bg",
        16,
        Opts {
            agents: true,
            ..Opts::default()
        },
    ) else {
        return;
    };
    apply_text(&c, "shop-v1.yaml", &shop("v1"));
    wait_until("2 v1 pods", Duration::from_secs(45), || {
        ready(&c, "shop", 2, "v1")
    });
    answers(&c, SHOP_PORT, "v1");
    apply_text(&c, "shop-v2.yaml", &shop("v2"));
    wait_until("2 v2 pods", Duration::from_secs(45), || {
        ready(&c, "shop", 2, "v2")
    });
    answers(&c, 30192, "v2");

    let targets: Vec<SocketAddr> = (0..3)
        .map(|i| SocketAddr::from((c.ip(i), SHOP_PORT)))
        .collect();
    let load = Load::start(&c.rt, targets, 100, Duration::from_secs(60));
    load_for(&load, 100, "load before the promotion");
    let mut barriers = Vec::new();
    c.cli_ok(&["rollout", "promote", "deploy/shop"]);
    barriers.push(wait_until("promotion barrier", Duration::from_secs(20), || barrier(&c)).0);
    answers(&c, SHOP_PORT, "v2");
    load_for(&load, 100, "load after the promotion");
    // Undo inside the scale-down delay, back and forth: each is a switch with its barrier and
    // creates no pod.
    let pods_before: Vec<Pod> = c.get_list("pods").expect("pods");
    for (k, version) in ["v1", "v2", "v1", "v2", "v1"].iter().enumerate() {
        let path = c.write_file(&format!("undo-{k}.yaml"), &shop(version));
        c.cli_ok(&["apply", "-f", &path]);
        let took = wait_until(
            &format!("barrier of switch {k} to {version}"),
            Duration::from_secs(20),
            || {
                let b = barrier(&c)?;
                let d: Deployment = c.get_one("deployment", "shop")?.ok_or("gone")?;
                let active = d
                    .status
                    .and_then(|s| s.blue_green)
                    .map(|b| b.active_selector);
                let want = berth_controllers::deployment::template_hash(&d.spec.template);
                if active.as_deref() == Some(want.as_str()) {
                    Ok(b)
                } else {
                    Err("not switched yet".to_string())
                }
            },
        );
        barriers.push(took.0);
        answers(&c, SHOP_PORT, version);
        load_for(&load, 60, "load after an undo");
    }
    let pods_after: Vec<Pod> = c.get_list("pods").expect("pods");
    let uids = |p: &[Pod]| {
        let mut v: Vec<String> = p.iter().map(|p| p.metadata.uid.clone()).collect();
        v.sort();
        v
    };
    assert_eq!(
        uids(&pods_before),
        uids(&pods_after),
        "an undo inside the delay created pods"
    );

    // Abort a new green: the preview switches back, then green goes (drained first).
    apply_text(&c, "shop-v3.yaml", &shop("v3"));
    wait_until("2 v3 pods", Duration::from_secs(45), || {
        ready(&c, "shop", 2, "v3")
    });
    c.cli_ok(&["rollout", "abort", "deploy/shop"]);
    barriers.push(wait_until("abort barrier", Duration::from_secs(20), || barrier(&c)).0);
    wait_until("v3 pods gone", Duration::from_secs(30), || {
        let pods: Vec<Pod> = c.get_list("pods")?;
        let left = pods
            .iter()
            .filter(|p| p.spec.containers[0].env.iter().any(|e| e.value == "v3"))
            .count();
        if left == 0 {
            Ok(())
        } else {
            Err(format!("{left} v3 pods left"))
        }
    });
    load_for(&load, 100, "load after the abort");
    let samples = load.finish();
    assert_no_failures("blue-green promote, 5 undos, abort", &samples);

    barriers.sort();
    eprintln!(
        "BARRIER over 3 nodes, {} switches: p50={:?} p99={:?} max={:?}",
        barriers.len(),
        percentile(&barriers, 0.5),
        percentile(&barriers, 0.99),
        barriers.last().copied().unwrap_or_default()
    );
    assert!(
        barriers.iter().all(|b| *b < Duration::from_secs(10)),
        "a barrier took the timeout path: {barriers:?}"
    );
}

#[test]
fn rolling_update_with_max_unavailable_0_and_a_scale_down_fail_no_request() {
    let Some(c) = Cluster::start(
        "release-rolling",
        17,
        Opts {
            agents: true,
            ..Opts::default()
        },
    ) else {
        return;
    };
    apply_text(&c, "web-v1.yaml", &web("v1", 3));
    wait_until("3 v1 pods", Duration::from_secs(45), || {
        ready(&c, "web", 3, "v1")
    });
    answers(&c, WEB_PORT, "v1");
    let targets: Vec<SocketAddr> = (0..3)
        .map(|i| SocketAddr::from((c.ip(i), WEB_PORT)))
        .collect();

    let load = Load::start(&c.rt, targets.clone(), 100, Duration::from_secs(60));
    load_for(&load, 100, "load before the rollout");
    apply_text(&c, "web-v2.yaml", &web("v2", 3));
    wait_until("rollout to v2", Duration::from_secs(60), || {
        ready(&c, "web", 3, "v2")?;
        let pods: Vec<Pod> = c.get_list("pods")?;
        let left = pods
            .iter()
            .filter(|p| p.metadata.labels.get("app").map(String::as_str) == Some("web"))
            .count();
        if left == 3 {
            Ok(())
        } else {
            Err(format!("{left} web pods (old ones still terminating)"))
        }
    });
    answers(&c, WEB_PORT, "v2");
    load_for(&load, 100, "load after the rollout");
    assert_no_failures("rolling update (maxUnavailable 0)", &load.finish());

    let load = Load::start(&c.rt, targets, 100, Duration::from_secs(60));
    load_for(&load, 100, "load before the scale-down");
    c.cli_ok(&["scale", "deploy/web", "--replicas", "1"]);
    wait_until("1 web pod left", Duration::from_secs(30), || {
        let pods: Vec<Pod> = c.get_list("pods")?;
        let left = pods
            .iter()
            .filter(|p| p.metadata.labels.get("app").map(String::as_str) == Some("web"))
            .count();
        if left == 1 {
            Ok(())
        } else {
            Err(format!("{left} web pods"))
        }
    });
    load_for(&load, 100, "load after the scale-down");
    assert_no_failures("scale down 3 -> 1", &load.finish());
}
