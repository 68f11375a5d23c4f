//! `StoreMetadata` against real in-process API servers: a manifest pushed through one server
//! is answered by every other, tag + manifest are one atomic write, delete removes the tags
//! pointing at the manifest, and a minority loss keeps every tag.

use std::time::Duration;

use berth_apiserver::testing::TestCluster;
use berth_client::{Client, ClientConfig};
use berth_proto::image::sha256_digest;
use berth_registry::{ManifestRecord, Metadata, StoreMetadata};

fn record(repo: &str, body: &str) -> ManifestRecord {
    ManifestRecord {
        repository: repo.to_string(),
        digest: sha256_digest(body.as_bytes()),
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        content: body.as_bytes().to_vec(),
        blobs: vec![sha256_digest(b"layer")],
        manifests: vec![],
        subject: None,
        total_size: 1234,
    }
}

fn metadata_via(cluster: &TestCluster, i: usize) -> StoreMetadata {
    let client = Client::new(
        &[cluster.addr(i).to_string()],
        ClientConfig::with_tls(cluster.admin_tls()),
    )
    .expect("client");
    StoreMetadata::new(client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_pushed_through_one_server_is_answered_by_the_others_and_survives_a_minority_loss() {
    let mut cluster = TestCluster::start(3).await.expect("cluster");
    cluster
        .wait_for_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    let a = metadata_via(&cluster, 0);
    let m1 = record("shop/web", r#"{"schemaVersion":2,"v":1}"#);
    a.put_manifest(m1.clone(), Some("v1"))
        .await
        .expect("push v1");
    let m2 = record("shop/web", r#"{"schemaVersion":2,"v":2}"#);
    a.put_manifest(m2.clone(), Some("v2"))
        .await
        .expect("push v2");
    a.put_manifest(record("library/nginx", r#"{"n":1}"#), Some("1.14.2"))
        .await
        .expect("push nginx");

    for i in 1..3 {
        let b = metadata_via(&cluster, i);
        assert_eq!(
            b.resolve_tag("shop/web", "v1").await.expect("resolve"),
            Some(m1.digest.clone())
        );
        assert_eq!(
            b.get_manifest("shop/web", &m2.digest).await.expect("get"),
            Some(m2.clone())
        );
        assert_eq!(
            b.list_tags("shop/web").await.expect("tags"),
            vec!["v1", "v2"]
        );
        assert_eq!(
            b.catalog().await.expect("catalog"),
            vec!["library/nginx", "shop/web"]
        );
        // A manifest is per repository: the same digest under another name is unknown.
        assert_eq!(
            b.get_manifest("shop/api", &m1.digest).await.expect("get"),
            None
        );
        assert_eq!(
            b.resolve_tag("shop/web", "v3").await.expect("resolve"),
            None
        );
    }

    // Re-tagging moves the tag; deleting a manifest removes the tags pointing at it only.
    a.put_manifest(m2.clone(), Some("latest"))
        .await
        .expect("tag latest");
    assert!(a
        .delete_manifest("shop/web", &m2.digest)
        .await
        .expect("delete"));
    assert!(!a
        .delete_manifest("shop/web", &m2.digest)
        .await
        .expect("delete again"));
    assert_eq!(a.list_tags("shop/web").await.expect("tags"), vec!["v1"]);

    // Lose one server of three: every tag is still answered by the others.
    cluster.stop(0).await.expect("stop server 0");
    let c = metadata_via(&cluster, 2);
    let digest = berth_apiserver::testing::wait_until(
        Duration::from_secs(15),
        "tag v1 answered after losing a server",
        || {
            let c = c.clone();
            async move { c.resolve_tag("shop/web", "v1").await.ok().flatten() }
        },
    )
    .await
    .expect("tag survives");
    assert_eq!(digest, m1.digest);
    cluster.shutdown().await.expect("shutdown");
}
