//! Supervision of the controller loops against a real in-process API server: a loop that
//! panics is restarted while the others keep running, then does its work; the restart is
//! counted in `berth_controller_restarts_total{loop=...}` and reported as a
//! `ControllerRestarted` Warning Event naming the loop and the cause.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use berth_apiserver::testing::{wait_until, TestCluster};
use berth_client::runtime::events::Recorder;
use berth_client::runtime::supervise::{restarts_counter, RestartBackoff, Supervisor};
use berth_client::{Client, ClientConfig};
use berth_proto::types::*;
use berth_testkit::DeploymentBuilder;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(40);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_deployment_loop_is_restarted_counted_reported_and_does_its_work() -> Result<()>
{
    let cluster = TestCluster::start(1)
        .await
        .context("starting the API server")?;
    let client = Client::new(
        &[cluster.addr(0).to_string()],
        ClientConfig::with_tls(cluster.admin_tls()),
    )?;
    let before = restarts_counter("deployment").get();
    let injected = Arc::new(AtomicU32::new(0));
    let hook_count = injected.clone();
    let supervisor = Supervisor::new()
        .with_backoff(RestartBackoff {
            initial: Duration::from_millis(50),
            ..RestartBackoff::default()
        })
        .with_events(
            client.clone(),
            Recorder::new("berth-server"),
            ObjectReference {
                kind: "Server".into(),
                namespace: String::new(),
                name: "server-1".into(),
                uid: String::new(),
            },
        )
        // The Deployment loop's first two starts panic; every other loop runs normally.
        .with_fault_injection(Arc::new(move |name, attempt| {
            let fail = name == "deployment" && attempt < 2;
            if fail {
                hook_count.fetch_add(1, Ordering::SeqCst);
            }
            fail
        }));
    let shutdown = CancellationToken::new();
    let loops = tokio::spawn(berth_controllers::run_controllers(
        client.clone(),
        berth_controllers::Config {
            supervisor,
            ..Default::default()
        },
        shutdown.clone(),
    ));

    client
        .create(&DeploymentBuilder::new("web").replicas(2).build())
        .await?;
    // The restarted Deployment loop makes the ReplicaSet; the ReplicaSet loop (never
    // stopped) makes its pods.
    wait_until(DEADLINE, "a ReplicaSet of web with 2 pods", || async {
        let (rs, _) = client.list::<ReplicaSet>(Some("default"), "").await.ok()?;
        let (pods, _) = client.list::<Pod>(Some("default"), "").await.ok()?;
        (rs.iter().any(|r| r.metadata.name.starts_with("web-")) && pods.len() == 2).then_some(())
    })
    .await
    .map_err(|e| anyhow!(e))?;
    assert_eq!(injected.load(Ordering::SeqCst), 2, "two injected panics");
    assert_eq!(
        restarts_counter("deployment").get() - before,
        2,
        "each panic counted once"
    );
    assert_eq!(restarts_counter("replicaset").get(), 0);

    let events = wait_until(DEADLINE, "ControllerRestarted events", || async {
        let (evs, _) = client.list::<Event>(Some("default"), "").await.ok()?;
        let restarted: Vec<Event> = evs
            .into_iter()
            .filter(|e| e.reason == "ControllerRestarted")
            .collect();
        (restarted.len() == 2).then_some(restarted)
    })
    .await
    .map_err(|e| anyhow!(e))?;
    for e in &events {
        assert_eq!(e.type_, "Warning");
        assert_eq!(e.involved_object.kind, "Server");
        assert_eq!(e.involved_object.name, "server-1");
        assert_eq!(e.source.component, "berth-server");
        assert!(
            e.message
                .starts_with("control loop deployment panicked: injected fault; restarting in "),
            "{}",
            e.message
        );
    }

    shutdown.cancel();
    tokio::time::timeout(DEADLINE, loops)
        .await
        .context("controllers stop on shutdown")??;
    cluster.shutdown().await?;
    Ok(())
}
