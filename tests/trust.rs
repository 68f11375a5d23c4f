//! `berth trust` and `berth sign` against a real API server started in-process: generate a
//! key, turn require-signed-images on, see `berth apply` refuse an unsigned image, sign it,
//! apply again; key files and errors as a user sees them.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use berth_apiserver::testing::TestCluster;

mod common;
use common::{berth, Target};

const APP: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
        - name: app
          image: shop:v1
"#;

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_a_key_require_signed_images_apply_is_refused_until_the_image_is_signed() {
    let cluster = TestCluster::start(1).await.unwrap();
    let server = cluster.addr(0).to_string();
    let s = &Target::new(&cluster, &server);
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let keys_s = keys.display().to_string();
    // The image as the cluster registry records a push of shop:v1.
    let digest = berth_proto::image::sha256_digest(b"shop v1 manifest");
    let tag = format!(
        "apiVersion: registry.berth.dev/v1\nkind: ImageTag\nmetadata:\n  name: {}\nspec:\n  repository: shop\n  tag: v1\n  digest: {digest}\n",
        berth_proto::image::tag_object_name("shop", "v1")
    );
    let r = berth(s, &["apply", "-f", &write(dir.path(), "tag.yaml", &tag)]).await;
    assert!(r.ok, "{r:?}");

    let r = berth(
        s,
        &["trust", "key", "generate", "ci-2026", "--output", &keys_s],
    )
    .await;
    assert!(r.ok, "{r:?}");
    assert!(
        r.out.starts_with("trust key ci-2026 created (sha256:"),
        "{r:?}"
    );
    let key_file = keys.join("ci-2026.key");
    assert!(std::fs::read_to_string(&key_file)
        .unwrap()
        .starts_with("-----BEGIN PRIVATE KEY-----"));
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert!(
        !r.out.contains("BEGIN PRIVATE KEY"),
        "the key is never printed"
    );
    let r = berth(
        s,
        &["trust", "key", "generate", "ci-2026", "--output", &keys_s],
    )
    .await;
    assert!(!r.ok && r.err.contains("already exists"), "{r:?}");
    let r = berth(s, &["trust", "key", "list"]).await;
    assert!(
        r.ok && r.out.contains("ci-2026") && r.out.contains("FINGERPRINT"),
        "{r:?}"
    );
    // A private key given as a public key: the error says so and shows no key material.
    let key_s = key_file.display().to_string();
    let r = berth(s, &["trust", "key", "add", "bad", "--public-key", &key_s]).await;
    assert!(!r.ok && r.err.contains("this is a private key"), "{r:?}");

    let r = berth(s, &["trust", "policy", "require-signed-images", "on"]).await;
    assert!(r.ok, "{r:?}");
    let app = write(dir.path(), "app.yaml", APP);
    let r = berth(s, &["apply", "-f", &app]).await;
    assert!(!r.ok, "{r:?}");
    assert!(
        r.err.contains(&format!(
            "Deployment default/web: spec.template.spec.containers[0].image \"shop:v1\": image \
             shop@{digest} is not signed by a trusted key (trusted: ci-2026)"
        )),
        "{r:?}"
    );

    let r = berth(s, &["sign", "shop:v1", "--key", &key_s]).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(
        r.out,
        format!("signed shop@{digest} with trust key ci-2026\n")
    );
    let r = berth(s, &["apply", "-f", &app]).await;
    assert!(r.ok, "{r:?}");
    let r = berth(s, &["get", "imagesignatures"]).await;
    assert!(
        r.ok && r.out.contains("shop") && r.out.contains("ci-2026"),
        "{r:?}"
    );
    let r = berth(s, &["get", "clusterimagepolicies"]).await;
    assert!(
        r.ok && r.out.contains("cluster") && r.out.contains("on"),
        "{r:?}"
    );
    let r = berth(s, &["trust", "policy", "show"]).await;
    assert!(
        r.ok && r.out.contains("cluster") && r.out.contains("on"),
        "{r:?}"
    );
    assert!(r.out.contains("trusted keys: ci-2026"), "{r:?}");

    // Signing needs a trusted key and an image the cluster registry has.
    let r = berth(s, &["sign", "shop:v9", "--key", &key_s]).await;
    assert!(!r.ok && r.err.contains("no tag shop:v9"), "{r:?}");
    let r = berth(s, &["trust", "key", "remove", "ci-2026"]).await;
    assert!(r.ok, "{r:?}");
    let r = berth(s, &["sign", "shop:v1", "--key", &key_s]).await;
    assert!(
        !r.ok && r.err.contains("is not trusted by this cluster"),
        "{r:?}"
    );
    cluster.shutdown().await.unwrap();
}
