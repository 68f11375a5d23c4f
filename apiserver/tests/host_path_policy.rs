//! The hostPath policy at admission, over gRPC: by default a Pod mounting /etc, the Docker
//! socket, a parent of a forbidden path or the server's own data dir is refused
//! (PERMISSION_DENIED, naming the object, `spec.volumes[N].hostPath.path` and the policy) and
//! nothing is stored, while /srv paths are admitted; `--allowed-host-paths` narrows it and
//! `none` forbids hostPath volumes as Pod Security's baseline level does.
#![allow(clippy::unwrap_used)]

use berth_apiserver::testing::TestCluster;
use berth_proto::pb::{self, api_client::ApiClient};
use serde_json::{json, Value};
use tonic::transport::Channel;
use tonic::Code;

fn pod(name: &str, paths: &[&str]) -> Vec<u8> {
    let vols: Vec<Value> = paths
        .iter()
        .enumerate()
        .map(|(i, p)| json!({"name": format!("v{i}"), "hostPath": {"path": p}}))
        .collect();
    serde_json::to_vec(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}], "volumes": vols}
    }))
    .unwrap()
}

async fn create(c: &mut ApiClient<Channel>, obj: Vec<u8>) -> Result<(), tonic::Status> {
    c.create(pb::CreateRequest {
        object: obj,
        dry_run: false,
    })
    .await
    .map(|_| ())
}

async fn exists(c: &mut ApiClient<Channel>, name: &str) -> bool {
    c.get(pb::GetRequest {
        key: Some(pb::ObjectKey {
            kind: "Pod".into(),
            namespace: "default".into(),
            name: name.into(),
        }),
    })
    .await
    .is_ok()
}

async fn refused(c: &mut ApiClient<Channel>, name: &str, paths: &[&str]) -> String {
    let s = create(c, pod(name, paths))
        .await
        .expect_err("must be refused");
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    assert!(!exists(c, name).await, "a refused pod is not stored");
    s.message().to_string()
}

#[tokio::test]
async fn host_paths_are_refused_by_the_default_policy_with_the_field_and_nothing_stored() {
    let cluster = TestCluster::start(1).await.unwrap();
    let mut c = cluster.client(0).await.unwrap();
    let m = refused(&mut c, "etc", &["/srv/ok", "/etc/ssl"]).await;
    assert!(
        m.contains("Pod default/etc violates the hostPath policy")
            && m.contains("spec.volumes[1].hostPath.path: Forbidden: /etc/ssl is under /etc")
            && m.contains("--forbidden-host-paths"),
        "{m}"
    );
    let m = refused(&mut c, "sock", &["/var/run/docker.sock"]).await;
    assert!(m.contains("spec.volumes[0].hostPath.path"), "{m}");
    let m = refused(&mut c, "root", &["/"]).await;
    assert!(m.contains("/ contains /boot"), "{m}");
    // The server's own data dir (the raft log, the CA key).
    let data = cluster
        .server(0)
        .unwrap()
        .data_dir()
        .canonicalize()
        .unwrap();
    let m = refused(&mut c, "data", &[&format!("{}/pki", data.display())]).await;
    assert!(m.contains(&format!("is under {}", data.display())), "{m}");

    create(&mut c, pod("fine", &["/srv/www", "/tmp/cache"]))
        .await
        .unwrap();
    assert!(exists(&mut c, "fine").await);
}

#[tokio::test]
async fn allowed_host_paths_narrow_the_policy_and_none_forbids_host_paths() {
    let cluster = TestCluster::start_with(1, |a| {
        a.allowed_host_paths = vec!["/srv/data".into()];
    })
    .await
    .unwrap();
    let mut c = cluster.client(0).await.unwrap();
    create(&mut c, pod("in", &["/srv/data/app"])).await.unwrap();
    let m = refused(&mut c, "out", &["/srv/other"]).await;
    assert!(
        m.contains("/srv/other is not under a path this cluster allows")
            && m.contains("--allowed-host-paths /srv/data"),
        "{m}"
    );

    let baseline = TestCluster::start_with(1, |a| {
        a.allowed_host_paths = vec!["none".into()];
    })
    .await
    .unwrap();
    let mut c = baseline.client(0).await.unwrap();
    let m = refused(&mut c, "any", &["/srv/data"]).await;
    assert!(m.contains("hostPath volumes are forbidden"), "{m}");
    create(
        &mut c,
        serde_json::to_vec(&json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "no-host-path", "namespace": "default"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}],
                     "volumes": [{"name": "tmp", "emptyDir": {}}]}
        }))
        .unwrap(),
    )
    .await
    .unwrap();
}
