//! The Kubernetes docs' storage examples, unchanged from manifests/k8s-docs, through a real
//! API server (server-side validation) with the controllers: the single-instance MySQL
//! tutorial's hostPath PersistentVolume (class `manual`) binds its claim statically, and the
//! WordPress tutorial's claims get the default class `local-path` and wait for their first
//! consumer (no node here, so they stay Pending and no volume is made).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use berth_apiserver::testing::{wait_until, TestCluster};
use berth_client::{Client, ClientConfig};
use berth_proto::storage::{PersistentVolume, PersistentVolumeClaim};
use berth_proto::types::Deployment;
use tokio_util::sync::CancellationToken;

fn docs(path: &str) -> Vec<berth_proto::DynObject> {
    let file = format!(
        "{}/../manifests/k8s-docs/{path}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&file).unwrap();
    berth_proto::manifest::parse_manifest(&file, &text).unwrap()
}

/// `kubectl apply -n NS -f FILE`: the objects as written, in namespace `ns`.
async fn apply(client: &Client, path: &str, ns: &str) {
    // `kubectl create namespace NS` first (a second file in the same one finds it there).
    let mut n = berth_proto::types::Namespace::default();
    n.metadata.name = ns.to_string();
    match client.create(&n).await {
        Ok(_) | Err(berth_client::ClientError::AlreadyExists(_)) => {}
        Err(e) => panic!("creating namespace {ns}: {e}"),
    }
    for mut obj in docs(path) {
        if obj.kind.namespaced() {
            obj.value["metadata"]["namespace"] = ns.into();
        }
        client
            .create_dyn(&obj, false)
            .await
            .unwrap_or_else(|e| panic!("{path}: {} {}: {e}", obj.kind, obj.name()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docs_mysql_and_wordpress_storage_manifests_apply_and_bind() {
    let cluster = TestCluster::start(1).await.unwrap();
    let client = Client::new(
        &[cluster.addr(0).to_string()],
        ClientConfig::with_tls(cluster.admin_tls()),
    )
    .unwrap();
    let shutdown = CancellationToken::new();
    let loops = tokio::spawn(berth_controllers::run_controllers(
        client.clone(),
        berth_controllers::Config::default(),
        shutdown.clone(),
    ));
    apply(&client, "mysql/mysql-pv.yaml", "mysql").await;
    apply(&client, "mysql/mysql-deployment.yaml", "mysql").await;
    apply(&client, "wordpress/mysql-deployment.yaml", "wordpress").await;
    apply(&client, "wordpress/wordpress-deployment.yaml", "wordpress").await;

    let c = client.clone();
    wait_until(Duration::from_secs(20), "mysql-pv-claim Bound", || {
        let c = c.clone();
        async move {
            let claim = c
                .get::<PersistentVolumeClaim>("mysql", "mysql-pv-claim")
                .await
                .ok()?;
            let pv = c
                .get::<PersistentVolume>("", "mysql-pv-volume")
                .await
                .ok()?;
            (claim.phase() == "Bound" && pv.phase() == "Bound").then_some(())
        }
    })
    .await
    .unwrap();
    let claim: PersistentVolumeClaim = client.get("mysql", "mysql-pv-claim").await.unwrap();
    assert_eq!(claim.spec.volume_name, "mysql-pv-volume");
    let st = claim.status.unwrap();
    assert_eq!(st.capacity["storage"].0, "20Gi");
    assert_eq!(st.access_modes, ["ReadWriteOnce"]);
    let pv: PersistentVolume = client.get("", "mysql-pv-volume").await.unwrap();
    let r = pv.spec.claim_ref.clone().unwrap();
    assert_eq!(
        (r.namespace.as_str(), r.name.as_str()),
        ("mysql", "mysql-pv-claim")
    );
    assert_eq!(pv.reclaim_policy(), "Retain");

    for name in ["mysql-pv-claim", "wp-pv-claim"] {
        let claim: PersistentVolumeClaim = client.get("wordpress", name).await.unwrap();
        assert_eq!(claim.storage_class(), "local-path", "{name}");
        assert_eq!(
            claim.phase(),
            "Pending",
            "{name}: waits for its first consumer"
        );
        assert!(claim.spec.volume_name.is_empty());
    }
    let (pvs, _) = client.list::<PersistentVolume>(None, "").await.unwrap();
    assert_eq!(
        pvs.len(),
        1,
        "nothing provisioned before a pod is scheduled"
    );
    for (ns, name) in [
        ("mysql", "mysql"),
        ("wordpress", "wordpress-mysql"),
        ("wordpress", "wordpress"),
    ] {
        client.get::<Deployment>(ns, name).await.unwrap();
    }
    shutdown.cancel();
    loops.await.unwrap();
    cluster.shutdown().await.unwrap();
}
