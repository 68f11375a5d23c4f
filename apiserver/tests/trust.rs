//! Image trust admission over gRPC: with require-signed-images on, a Pod or Deployment whose
//! image is not signed by a trusted key is refused with a message naming the object, the
//! field and the image; signed, it is admitted; the key removed, refused again; a namespace's
//! ImagePolicy overrides the cluster's.
#![allow(clippy::unwrap_used)]

use berth_apiserver::testing::TestCluster;
use berth_proto::image::{sha256_digest, tag_object_name};
use berth_proto::pb::{self, api_client::ApiClient};
use berth_proto::trust::{sign_image, PrivateKey, CLUSTER_POLICY_NAME, NAMESPACE_POLICY_NAME};
use berth_proto::types::{ClusterImagePolicy, ImagePolicy, ImageTag, TrustKey};
use berth_proto::Resource;
use serde_json::{json, Value};
use tonic::transport::Channel;
use tonic::Code;

async fn create(c: &mut ApiClient<Channel>, obj: Vec<u8>) -> Result<Value, tonic::Status> {
    c.create(pb::CreateRequest {
        object: obj,
        dry_run: false,
    })
    .await
    .map(|r| serde_json::from_slice(&r.into_inner().object).unwrap())
}

async fn apply(c: &mut ApiClient<Channel>, obj: Vec<u8>) -> Result<Value, tonic::Status> {
    c.apply(pb::ApplyRequest {
        object: obj,
        dry_run: false,
    })
    .await
    .map(|r| serde_json::from_slice(&r.into_inner().object).unwrap())
}

async fn delete(c: &mut ApiClient<Channel>, kind: &str, ns: &str, name: &str) {
    c.delete(pb::DeleteRequest {
        grace_period_seconds: None,
        key: Some(pb::ObjectKey {
            kind: kind.into(),
            namespace: ns.into(),
            name: name.into(),
        }),
        resource_version: 0,
    })
    .await
    .unwrap();
}

fn deployment(name: &str, ns: &str, image: &str, labels: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "c", "image": image}]}}}
    }))
    .unwrap()
}

fn pod(name: &str, ns: &str, image: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"containers": [{"name": "c", "image": image}]}
    }))
    .unwrap()
}

fn trust_key(name: &str, k: &PrivateKey) -> Vec<u8> {
    let mut t = TrustKey::default();
    t.metadata.name = name.into();
    t.spec.public_key = k.public_key().to_pem();
    t.spec.fingerprint = k.public_key().fingerprint();
    t.to_json()
}

fn image_tag(repo: &str, tag: &str, digest: &str) -> Vec<u8> {
    let mut t = ImageTag::default();
    t.metadata.name = tag_object_name(repo, tag);
    t.spec.repository = repo.into();
    t.spec.tag = tag.into();
    t.spec.digest = digest.into();
    t.to_json()
}

fn cluster_policy(on: bool) -> Vec<u8> {
    let mut p = ClusterImagePolicy::default();
    p.metadata.name = CLUSTER_POLICY_NAME.into();
    p.spec.require_signed_images = on;
    p.to_json()
}

fn namespace_policy(ns: &str, on: bool) -> Vec<u8> {
    let mut p = ImagePolicy::default();
    p.metadata.name = NAMESPACE_POLICY_NAME.into();
    p.metadata.namespace = ns.into();
    p.spec.require_signed_images = on;
    p.to_json()
}

fn refused(r: Result<Value, tonic::Status>) -> String {
    let s = r.expect_err("must be refused");
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    s.message().to_string()
}

#[tokio::test]
async fn unsigned_images_are_refused_signed_admitted_and_refused_again_once_the_key_is_removed() {
    let cluster = TestCluster::start(1).await.unwrap();
    let mut c = cluster.client(0).await.unwrap();
    let key = PrivateKey::generate().unwrap();
    let d = sha256_digest(b"manifest of shop:v1");
    create(&mut c, image_tag("shop", "v1", &d)).await.unwrap();
    create(&mut c, trust_key("ci-2026", &key)).await.unwrap();
    // Without the policy anything goes.
    create(&mut c, pod("before", "default", "shop:v1"))
        .await
        .unwrap();
    apply(&mut c, cluster_policy(true)).await.unwrap();

    let m = refused(apply(&mut c, deployment("web", "default", "shop:v1", json!({}))).await);
    assert!(
        m.contains(&format!(
            "Deployment default/web: spec.template.spec.containers[0].image \"shop:v1\": \
             image shop@{d} is not signed by a trusted key (trusted: ci-2026)"
        )),
        "{m}"
    );
    assert!(m.contains("berth sign"), "{m}");
    let m = refused(create(&mut c, pod("p", "default", "shop:v1")).await);
    assert!(
        m.contains("Pod default/p: spec.containers[0].image \"shop:v1\""),
        "{m}"
    );
    // Not in the cluster registry: cannot be verified.
    let m = refused(create(&mut c, pod("p", "default", "nginx:1.25")).await);
    assert!(
        m.contains("the cluster registry has no tag nginx:1.25"),
        "{m}"
    );

    // Signed by the trusted key: admitted, by tag and by digest.
    create(
        &mut c,
        sign_image(&key, "ci-2026", "shop", &d).unwrap().to_json(),
    )
    .await
    .unwrap();
    apply(&mut c, deployment("web", "default", "shop:v1", json!({})))
        .await
        .unwrap();
    create(&mut c, pod("by-digest", "default", &format!("shop@{d}")))
        .await
        .unwrap();

    // The key removed: new pods are refused; the admitted Deployment may still be edited
    // without changing its images, but not pointed at another unsigned image.
    delete(&mut c, "TrustKey", "", "ci-2026").await;
    let m = refused(create(&mut c, pod("p", "default", "shop:v1")).await);
    assert!(
        m.contains(&format!(
            "image shop@{d} is not signed by a trusted key (trusted: none)"
        )),
        "{m}"
    );
    apply(
        &mut c,
        deployment("web", "default", "shop:v1", json!({"tier": "front"})),
    )
    .await
    .unwrap();
    let m = refused(apply(&mut c, deployment("web", "default", "shop:v2", json!({}))).await);
    assert!(m.contains("no tag shop:v2"), "{m}");

    // A signature by a key that is not (or no longer) trusted does not count, even when a
    // key with another name is trusted.
    let other = PrivateKey::generate().unwrap();
    create(&mut c, trust_key("ops", &other)).await.unwrap();
    let m = refused(create(&mut c, pod("p", "default", "shop:v1")).await);
    assert!(m.contains("(trusted: ops)"), "{m}");
    cluster.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_namespace_policy_overrides_the_cluster_policy_both_ways() {
    let cluster = TestCluster::start(1).await.unwrap();
    let mut c = cluster.client(0).await.unwrap();
    for ns in ["dev", "prod"] {
        let obj = json!({"kind": "Namespace", "metadata": {"name": ns}});
        create(&mut c, serde_json::to_vec(&obj).unwrap())
            .await
            .unwrap();
    }
    // Cluster on, namespace dev off.
    apply(&mut c, cluster_policy(true)).await.unwrap();
    apply(&mut c, namespace_policy("dev", false)).await.unwrap();
    create(&mut c, pod("a", "dev", "nginx")).await.unwrap();
    refused(create(&mut c, pod("a", "default", "nginx")).await);
    // Cluster off, namespace prod on.
    apply(&mut c, cluster_policy(false)).await.unwrap();
    apply(&mut c, namespace_policy("prod", true)).await.unwrap();
    create(&mut c, pod("a", "default", "nginx")).await.unwrap();
    let m = refused(create(&mut c, pod("a", "prod", "nginx")).await);
    assert!(
        m.contains("require-signed-images is on for namespace prod"),
        "{m}"
    );
    // The policy objects have fixed names.
    let mut bad = ImagePolicy::default();
    bad.metadata.name = "strict".into();
    let s = create(&mut c, bad.to_json()).await.unwrap_err();
    assert!(
        s.message().contains("must be \"default\""),
        "{}",
        s.message()
    );
    cluster.shutdown().await.unwrap();
}
