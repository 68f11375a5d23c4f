//! The leader loops' metrics: the scheduler and the controllers record into the process-wide
//! registry while a Deployment rolls out on an in-process cluster (one API server, hollow
//! nodes). Its own test binary, so the global registry holds only this test's loops.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use berth_apiserver::testing::{wait_until, TestCluster};
use berth_client::{Client, ClientConfig};
use berth_metrics::text::{find, parse};
use berth_testkit::{DeploymentBuilder, HollowConfig, HollowNode};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_and_controller_metrics_count_a_rollout() {
    let cluster = TestCluster::start(1).await.unwrap();
    let client = Client::new(
        &[cluster.addr(0).to_string()],
        ClientConfig::with_tls(cluster.admin_tls()),
    )
    .unwrap();
    let shutdown = CancellationToken::new();
    let mut loops = tokio::task::JoinSet::new();
    loops.spawn(berth_controllers::run_controllers(
        client.clone(),
        berth_controllers::Config::default(),
        shutdown.clone(),
    ));
    loops.spawn(berth_scheduler::run(
        client.clone(),
        berth_scheduler::Config::default(),
        shutdown.clone(),
    ));
    let cfg = HollowConfig {
        cpu: "1".into(),
        heartbeat: Duration::from_millis(300),
        ..Default::default()
    };
    let mut node = HollowNode::start(client.clone(), "node-0", cfg)
        .await
        .unwrap();

    // Three fit on the 1-cpu node, the fourth cannot.
    let d = DeploymentBuilder::new("web")
        .replicas(4)
        .port("http", 8080)
        .cpu("300m")
        .build();
    client.create(&d).await.unwrap();

    let samples = wait_until(
        Duration::from_secs(40),
        "3 pods scheduled, 1 unschedulable, deployment reconciled",
        || async {
            let s = parse(&berth_metrics::global().render()).unwrap();
            let done = find(&s, "berth_scheduler_pods_scheduled_total", &[]) == Some(3.0)
                && find(&s, "berth_scheduler_unschedulable_pods", &[]) == Some(1.0)
                && find(&s, "berth_scheduler_pending_pods", &[]) == Some(1.0);
            done.then_some(s)
        },
    )
    .await
    .unwrap();
    for controller in ["Deployment", "ReplicaSet"] {
        let ok = find(
            &samples,
            "berth_controller_reconciles_total",
            &[("controller", controller), ("result", "ok")],
        );
        assert!(ok.unwrap_or(0.0) >= 1.0, "{controller} reconciles: {ok:?}");
        let count = find(
            &samples,
            "berth_controller_reconcile_duration_seconds_count",
            &[("controller", controller)],
        );
        assert!(
            count.unwrap_or(0.0) >= 1.0,
            "{controller} durations: {count:?}"
        );
    }
    assert!(find(&samples, "berth_scheduler_pass_duration_seconds_count", &[]).unwrap() >= 1.0);

    node.stop().await;
    shutdown.cancel();
    while loops.join_next().await.is_some() {}
    cluster.shutdown().await.unwrap();
}
