//! Security against real servers on 127.0.0.1:0 (mutual TLS, join tokens, the node
//! authorizer): who gets in, what each identity may do, and that every refusal leaves the
//! store unchanged.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use berth_apiserver::testing::{client, TestCluster};
use berth_apiserver::ServerArgs;
use berth_proto::pb::{self, api_client::ApiClient};
use berth_tls::{ClientTls, ClusterCa, Identity, JoinToken, Secret, Validity};
use serde_json::{json, Value};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::Code;

fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

fn pod(name: &str, node: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "namespace": "default" },
        "spec": { "nodeName": node, "containers": [{ "name": "c", "image": "nginx" }] }
    })
}

fn node(name: &str) -> Value {
    json!({ "apiVersion": "v1", "kind": "Node", "metadata": { "name": name } })
}

fn deployment(name: &str) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name, "namespace": "default" },
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": { "containers": [{ "name": "c", "image": "nginx" }] }
            }
        }
    })
}

fn key(kind: &str, ns: &str, name: &str) -> Option<pb::ObjectKey> {
    Some(pb::ObjectKey {
        kind: kind.into(),
        namespace: ns.into(),
        name: name.into(),
    })
}

async fn revision(c: &mut ApiClient<Channel>) -> u64 {
    c.cluster_status(pb::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .revision
}

async fn create(c: &mut ApiClient<Channel>, v: &Value) -> Result<Value, tonic::Status> {
    c.create(pb::CreateRequest {
        object: bytes(v),
        dry_run: false,
    })
    .await
    .map(|r| serde_json::from_slice(&r.into_inner().object).unwrap())
}

async fn update_status(c: &mut ApiClient<Channel>, v: &Value) -> Result<Value, tonic::Status> {
    c.update_status(pb::UpdateRequest {
        object: bytes(v),
        dry_run: false,
    })
    .await
    .map(|r| serde_json::from_slice(&r.into_inner().object).unwrap())
}

fn assert_denied<T: std::fmt::Debug>(r: Result<T, tonic::Status>, who: &str, what: &str) {
    let s = r.unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    assert!(
        s.message().starts_with(&format!("{who} may not")) && s.message().contains(what),
        "the refusal names {who} and {what:?}: {}",
        s.message()
    );
}

async fn as_identity(cluster: &TestCluster, i: usize, id: &Identity) -> ApiClient<Channel> {
    let tls = cluster.credential_for(id).unwrap();
    client(cluster.addr(i), &tls).await.unwrap()
}

/// Pods p1 (bound to n1), p2 (bound to n2) and p0 (unbound), created by the admin.
async fn seeded() -> (TestCluster, ApiClient<Channel>) {
    let cluster = TestCluster::start(1).await.unwrap();
    let mut admin = cluster.client(0).await.unwrap();
    create(&mut admin, &pod("p1", "n1")).await.unwrap();
    create(&mut admin, &pod("p2", "n2")).await.unwrap();
    create(&mut admin, &pod("p0", "")).await.unwrap();
    (cluster, admin)
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused_everything_but_bootstrap() {
    let (cluster, mut admin) = seeded().await;
    let before = revision(&mut admin).await;
    let ca = cluster.admin_tls().ca_cert_pem;
    let channel = Endpoint::from_shared(format!("https://{}", cluster.addr(0)))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(&ca)),
        )
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut anon = ApiClient::new(channel);
    let s = anon
        .get(pb::GetRequest {
            key: key("Pod", "default", "p1"),
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
    assert!(
        s.message().contains("no client certificate"),
        "{}",
        s.message()
    );
    assert!(
        s.message().contains("admin.yaml"),
        "says what to use: {}",
        s.message()
    );
    assert_eq!(
        create(&mut anon, &pod("x", "")).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let s = anon
        .watch(pb::WatchRequest {
            kind: "Pod".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated);
    let s = anon
        .cluster_status(pb::ClusterStatusRequest {})
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated);
    let s = anon
        .join(pb::JoinRequest {
            address: "127.0.0.1:1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated);
    // Raft traffic without a server certificate is refused too.
    let mut raft = pb::raft_client::RaftClient::new(
        Endpoint::from_shared(format!("https://{}", cluster.addr(0)))
            .unwrap()
            .tls_config(
                ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(&ca)),
            )
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let s = raft.send(pb::RaftBatch::default()).await.unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
    // Plain text does not even reach the service.
    let plain = ApiClient::connect(format!("http://{}", cluster.addr(0))).await;
    if let Ok(mut plain) = plain {
        assert!(plain
            .cluster_status(pb::ClusterStatusRequest {})
            .await
            .is_err());
    }
    assert_eq!(revision(&mut admin).await, before, "nothing was written");
    cluster.shutdown().await.unwrap();
}

#[tokio::test]
async fn foreign_ca_and_expired_client_certificates_fail_the_handshake() {
    let (cluster, mut admin) = seeded().await;
    let before = revision(&mut admin).await;
    let ca_pem = cluster.admin_tls().ca_cert_pem;
    let foreign = ClusterCa::generate().unwrap();
    let intruder = ClientTls::new(
        ca_pem.clone(),
        foreign.issue_client(&Identity::Admin).unwrap(),
    );
    let r = async {
        client(cluster.addr(0), &intruder)
            .await
            .map_err(|e| e.to_string())?
            .get(pb::GetRequest {
                key: key("Pod", "default", "p1"),
            })
            .await
            .map_err(|e| e.to_string())
    }
    .await;
    assert!(r.is_err(), "a foreign CA's admin is refused: {r:?}");

    // Reissue an expired admin certificate from the cluster's own CA (the test has the key).
    let pki = cluster.server(0).unwrap().pki().clone();
    let now = time::OffsetDateTime::now_utc();
    let expired = pki
        .ca
        .issue_client_with(
            &Identity::Admin,
            Validity {
                not_before: now - time::Duration::days(10),
                not_after: now - time::Duration::days(1),
            },
        )
        .unwrap();
    let stale = ClientTls::new(ca_pem, expired);
    let r = async {
        client(cluster.addr(0), &stale)
            .await
            .map_err(|e| e.to_string())?
            .create(pb::CreateRequest {
                object: bytes(&pod("late", "")),
                dry_run: false,
            })
            .await
            .map_err(|e| e.to_string())
    }
    .await;
    assert!(r.is_err(), "an expired certificate is refused: {r:?}");
    assert_eq!(revision(&mut admin).await, before);
    cluster.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_node_reads_pods_and_updates_only_its_own_node_and_pods() {
    let (cluster, mut admin) = seeded().await;
    let n1 = Identity::Node("n1".into());
    let mut c = as_identity(&cluster, 0, &n1).await;

    // Reads it needs.
    let pods = c
        .list(pb::ListRequest {
            kind: "Pod".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pods.objects.len(), 3);
    c.watch(pb::WatchRequest {
        kind: "Service".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    // Its own Node: create, then update its status.
    let mine = create(&mut c, &node("n1")).await.unwrap();
    let mut ready = mine.clone();
    ready["status"] = json!({ "conditions": [{ "type": "Ready", "status": "True" }] });
    update_status(&mut c, &ready).await.unwrap();
    // The status of a pod bound to it.
    let mut p1 = pod("p1", "n1");
    p1["status"] = json!({ "phase": "Running" });
    let got = update_status(&mut c, &p1).await.unwrap();
    assert_eq!(got["status"]["phase"], "Running");
    // Events.
    create(
        &mut c,
        &json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": { "name": "e1", "namespace": "default" },
            "involvedObject": { "kind": "Pod", "name": "p1", "namespace": "default" },
            "reason": "Started", "message": "ok", "type": "Normal"
        }),
    )
    .await
    .unwrap();

    let before = revision(&mut admin).await;
    let who = "system:node:n1";
    assert_denied(
        create(&mut c, &deployment("web")).await,
        who,
        "create Deployment default/web",
    );
    let mut p2 = pod("p2", "n2");
    p2["status"] = json!({ "phase": "Failed" });
    let s = update_status(&mut c, &p2).await.unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    assert!(
        s.message().contains("system:node:n1") && s.message().contains("bound to node n2"),
        "{}",
        s.message()
    );
    // Claiming the pod is bound to n1 does not help: the stored binding decides.
    let mut lie = pod("p2", "n1");
    lie["status"] = json!({ "phase": "Failed" });
    assert_eq!(
        update_status(&mut c, &lie).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    let mut p0 = pod("p0", "");
    p0["status"] = json!({ "phase": "Running" });
    let s = update_status(&mut c, &p0).await.unwrap_err();
    assert!(
        s.message().contains("not bound to a node"),
        "{}",
        s.message()
    );
    assert_denied(create(&mut c, &node("n2")).await, who, "create Node n2");
    assert_denied(
        c.update(pb::UpdateRequest {
            object: bytes(&pod("p1", "n1")),
            dry_run: false,
        })
        .await,
        who,
        "update Pod default/p1",
    );
    assert_denied(
        c.delete(pb::DeleteRequest {
            grace_period_seconds: None,
            key: key("Pod", "default", "p1"),
            resource_version: 0,
        })
        .await,
        who,
        "delete Pod default/p1",
    );
    assert_denied(
        c.get(pb::GetRequest {
            key: key("Deployment", "default", "web"),
        })
        .await,
        who,
        "get Deployment default/web",
    );
    assert_denied(
        c.watch(pb::WatchRequest::default()).await,
        who,
        "watch objects of every kind",
    );
    assert_denied(
        c.join(pb::JoinRequest {
            address: "127.0.0.1:1".into(),
        })
        .await,
        who,
        "add a cluster member",
    );
    // A batch: the allowed op goes through, the forbidden one is refused on its own.
    let r = c
        .batch(pb::BatchRequest {
            ops: vec![pb::BatchOp {
                op: Some(pb::batch_op::Op::Create(pb::CreateRequest {
                    object: bytes(&deployment("sneaky")),
                    dry_run: false,
                })),
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.results[0].code, Code::PermissionDenied as i32);
    let mut raft = pb::raft_client::RaftClient::new(
        Endpoint::from_shared(format!("https://{}", cluster.addr(0)))
            .unwrap()
            .tls_config(cluster.credential_for(&n1).unwrap().tonic())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let s = raft.send(pb::RaftBatch::default()).await.unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    assert!(s.message().contains("system:node:n1"), "{}", s.message());

    assert_eq!(
        revision(&mut admin).await,
        before,
        "no refused request changed the store"
    );
    let p2 = admin
        .get(pb::GetRequest {
            key: key("Pod", "default", "p2"),
        })
        .await
        .unwrap()
        .into_inner();
    let p2: Value = serde_json::from_slice(&p2.object).unwrap();
    assert!(p2["status"]["phase"] != "Failed");
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_write_forwarded_by_a_follower_is_authorized_as_the_node() {
    let cluster = TestCluster::start(3).await.unwrap();
    let leader = cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .unwrap();
    let follower = (leader + 1) % 3;
    let mut admin = cluster.client(leader).await.unwrap();
    create(&mut admin, &pod("p1", "n1")).await.unwrap();
    create(&mut admin, &pod("p2", "n2")).await.unwrap();
    let mut c = as_identity(&cluster, follower, &Identity::Node("n1".into())).await;
    let mut p1 = pod("p1", "n1");
    p1["status"] = json!({ "phase": "Running" });
    update_status(&mut c, &p1).await.unwrap();
    let before = revision(&mut admin).await;
    let mut p2 = pod("p2", "n2");
    p2["status"] = json!({ "phase": "Failed" });
    let s = update_status(&mut c, &p2).await.unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    assert!(s.message().contains("bound to node n2"), "{}", s.message());
    assert_denied(
        create(&mut c, &deployment("web")).await,
        "system:node:n1",
        "create Deployment",
    );
    assert_eq!(revision(&mut admin).await, before);
    cluster.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_server_with_a_wrong_token_cannot_join() {
    let cluster = TestCluster::start(1).await.unwrap();
    let members = || async {
        cluster
            .client(0)
            .await
            .unwrap()
            .cluster_status(pb::ClusterStatusRequest {})
            .await
            .unwrap()
            .into_inner()
            .members
            .len()
    };
    assert_eq!(members().await, 1);
    let real = JoinToken::parse(cluster.token()).unwrap();
    let dir = tempfile::tempdir().unwrap();

    // The right CA, a wrong secret: refused by the server.
    let (fp, _) = cluster.token().split_once("::").unwrap();
    let wrong_secret = format!("{fp}::not-the-secret");
    let mut args = ServerArgs::new(dir.path().join("a"));
    args.listen = "127.0.0.1:0".into();
    args.join = Some(cluster.addr(0).to_string());
    args.token = Some(Secret::new(wrong_secret.clone()));
    let err = berth_apiserver::start(args)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("join token refused") && err.contains("neither this cluster's server token"),
        "{err}"
    );
    assert!(
        !err.contains("not-the-secret"),
        "the secret is not echoed: {err}"
    );

    // Another cluster's token: the joiner refuses the server before sending the secret.
    let other = ClusterCa::generate().unwrap();
    let foreign = JoinToken::generate(&other).unwrap();
    assert_ne!(foreign.ca_fingerprint(), real.ca_fingerprint());
    let mut args = ServerArgs::new(dir.path().join("b"));
    args.listen = "127.0.0.1:0".into();
    args.join = Some(cluster.addr(0).to_string());
    args.token = Some(Secret::new(foreign.reveal()));
    let err = berth_apiserver::start(args)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("does not contain the cluster CA"), "{err}");

    // Garbage: a clear parse error, nothing dialed.
    let mut args = ServerArgs::new(dir.path().join("c"));
    args.listen = "127.0.0.1:0".into();
    args.join = Some(cluster.addr(0).to_string());
    args.token = Some(Secret::new("hunter2"));
    let err = berth_apiserver::start(args)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("join token is not valid"), "{err}");

    assert_eq!(members().await, 1, "membership unchanged");
    cluster.shutdown().await.unwrap();
}

#[tokio::test]
async fn bootstrap_signs_a_node_certificate_for_the_name_asked_and_never_hands_out_the_ca_key() {
    let cluster = TestCluster::start(1).await.unwrap();
    let token = JoinToken::parse(cluster.token()).unwrap();
    let csr = berth_tls::CertRequest::generate().unwrap();
    let resp = berth_tls::pinned::bootstrap(
        &[cluster.addr(0).to_string()],
        &token,
        pb::BootstrapRequest {
            role: pb::BootstrapRole::Node as i32,
            name: "worker-7".into(),
            addresses: vec!["127.0.0.1".into()],
            csr_pem: csr.csr_pem.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(resp.ca_key_pem.is_empty(), "agents never get the CA key");
    let tls = ClientTls::new(
        resp.ca_certificate_pem,
        csr.into_credential(resp.certificate_pem),
    );
    assert_eq!(tls.identity().unwrap(), Identity::Node("worker-7".into()));
    // The new certificate works as that node.
    let mut c = client(cluster.addr(0), &tls).await.unwrap();
    create(&mut c, &node("worker-7")).await.unwrap();
    assert_denied(
        create(&mut c, &node("worker-8")).await,
        "system:node:worker-7",
        "create Node worker-8",
    );
    // A bad node name is refused with the reason.
    let s = berth_tls::pinned::bootstrap(
        &[cluster.addr(0).to_string()],
        &token,
        pb::BootstrapRequest {
            role: pb::BootstrapRole::Node as i32,
            name: "Bad_Name".into(),
            csr_pem: berth_tls::CertRequest::generate().unwrap().csr_pem,
            ..Default::default()
        },
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(s.contains("node name \"Bad_Name\" is invalid"), "{s}");
    cluster.shutdown().await.unwrap();
}

#[tokio::test]
async fn keys_token_and_admin_config_are_private_to_the_owner() {
    use std::os::unix::fs::PermissionsExt;
    let cluster = TestCluster::start(1).await.unwrap();
    let dir = cluster.server(0).unwrap().data_dir().to_path_buf();
    let mode = |p: std::path::PathBuf| std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(dir.clone()), 0o700);
    assert_eq!(mode(dir.join("pki")), 0o700);
    for f in ["pki/ca.key", "pki/server.key", "pki/token", "admin.yaml"] {
        assert_eq!(mode(dir.join(f)), 0o600, "{f}");
    }
    cluster.shutdown().await.unwrap();
}

#[tokio::test]
async fn only_the_admin_may_read_the_join_token() {
    let (cluster, mut admin) = seeded().await;
    let token = admin
        .join_token(pb::JoinTokenRequest::default())
        .await
        .unwrap()
        .into_inner()
        .token;
    assert_eq!(token, cluster.token());
    for id in [Identity::Node("node-a".into()), Identity::Server] {
        let mut c = as_identity(&cluster, 0, &id).await;
        let err = c
            .join_token(pb::JoinTokenRequest::default())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{id:?}: {err:?}");
        assert!(
            err.message().contains("only the cluster admin") && !err.message().contains(&token),
            "{}",
            err.message()
        );
    }
    cluster.shutdown().await.unwrap();
}

/// Kubernetes' node authorizer for configuration: a node gets a Secret or ConfigMap by name
/// only while a pod bound to it references it, and never lists or watches Secrets; the admin
/// reads them all.
#[tokio::test]
async fn a_node_reads_only_the_secrets_and_config_maps_its_pods_reference() {
    let (cluster, mut admin) = seeded().await;
    for (kind, name, body) in [
        (
            "Secret",
            "mysql-pass",
            json!({ "stringData": { "password": "hunter2" } }),
        ),
        (
            "Secret",
            "other",
            json!({ "stringData": { "password": "x" } }),
        ),
        ("ConfigMap", "game", json!({ "data": { "mode": "fast" } })),
    ] {
        let mut v = json!({ "apiVersion": "v1", "kind": kind, "metadata": { "name": name, "namespace": "default" } });
        for (k, x) in body.as_object().unwrap() {
            v[k] = x.clone();
        }
        create(&mut admin, &v).await.unwrap();
    }
    let mut web = pod("web", "n1");
    web["spec"]["containers"][0]["env"] = json!([
        { "name": "PASS", "valueFrom": { "secretKeyRef": { "name": "mysql-pass", "key": "password" } } }
    ]);
    web["spec"]["containers"][0]["envFrom"] = json!([{ "configMapRef": { "name": "game" } }]);
    create(&mut admin, &web).await.unwrap();

    let get = |kind: &str, name: &str| pb::GetRequest {
        key: Some(pb::ObjectKey {
            kind: kind.into(),
            namespace: "default".into(),
            name: name.into(),
        }),
    };
    let mut n1 = as_identity(&cluster, 0, &Identity::Node("n1".into())).await;
    let mut n2 = as_identity(&cluster, 0, &Identity::Node("n2".into())).await;
    let s = n1
        .get(get("Secret", "mysql-pass"))
        .await
        .unwrap()
        .into_inner();
    let s: Value = serde_json::from_slice(&s.object).unwrap();
    assert_eq!(
        s["data"]["password"], "aHVudGVyMg==",
        "stored as base64 data"
    );
    n1.get(get("ConfigMap", "game")).await.unwrap();
    for (who, kind, name) in [
        (1, "Secret", "other"),
        (2, "Secret", "mysql-pass"),
        (2, "ConfigMap", "game"),
    ] {
        let c = if who == 1 { &mut n1 } else { &mut n2 };
        let e = c.get(get(kind, name)).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{kind} {name}: {e:?}");
        assert!(
            e.message().contains("pods bound to it reference"),
            "{}",
            e.message()
        );
        assert!(!e.message().contains("hunter2"));
    }
    let e = n1
        .list(pb::ListRequest {
            kind: "Secret".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    admin.get(get("Secret", "other")).await.unwrap();
    cluster.shutdown().await.unwrap();
}

/// The node authorizer for storage: a node gets a PersistentVolumeClaim only while a pod bound
/// to it uses the claim, and a PersistentVolume only while such a claim is bound to it; a
/// volume that does not exist answers NotFound (the agent's signal to remove a provisioned
/// directory); nodes never list claims or volumes.
#[tokio::test]
async fn a_node_reads_only_the_claims_its_pods_use_and_their_volumes() {
    let (cluster, mut admin) = seeded().await;
    for v in [
        json!({ "apiVersion": "v1", "kind": "PersistentVolume", "metadata": { "name": "pv-web" },
                "spec": { "capacity": { "storage": "1Gi" }, "accessModes": ["ReadWriteOnce"],
                          "hostPath": { "path": "/srv/web" } } }),
        json!({ "apiVersion": "v1", "kind": "PersistentVolume", "metadata": { "name": "pv-other" },
                "spec": { "capacity": { "storage": "1Gi" }, "accessModes": ["ReadWriteOnce"],
                          "hostPath": { "path": "/srv/other" } } }),
        json!({ "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": { "name": "web-data", "namespace": "default" },
                "spec": { "accessModes": ["ReadWriteOnce"], "volumeName": "pv-web",
                          "resources": { "requests": { "storage": "1Gi" } } } }),
        json!({ "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": { "name": "other", "namespace": "default" },
                "spec": { "accessModes": ["ReadWriteOnce"], "volumeName": "pv-other",
                          "resources": { "requests": { "storage": "1Gi" } } } }),
    ] {
        create(&mut admin, &v).await.unwrap();
    }
    let mut web = pod("web", "n1");
    web["spec"]["volumes"] =
        json!([{ "name": "data", "persistentVolumeClaim": { "claimName": "web-data" } }]);
    create(&mut admin, &web).await.unwrap();

    let get = |kind: &str, ns: &str, name: &str| pb::GetRequest {
        key: key(kind, ns, name),
    };
    let mut n1 = as_identity(&cluster, 0, &Identity::Node("n1".into())).await;
    let mut n2 = as_identity(&cluster, 0, &Identity::Node("n2".into())).await;
    n1.get(get("PersistentVolumeClaim", "default", "web-data"))
        .await
        .unwrap();
    n1.get(get("PersistentVolume", "", "pv-web")).await.unwrap();
    for (who, kind, ns, name) in [
        (1, "PersistentVolumeClaim", "default", "other"),
        (1, "PersistentVolume", "", "pv-other"),
        (2, "PersistentVolumeClaim", "default", "web-data"),
        (2, "PersistentVolume", "", "pv-web"),
    ] {
        let c = if who == 1 { &mut n1 } else { &mut n2 };
        let e = c.get(get(kind, ns, name)).await.unwrap_err();
        assert_eq!(
            e.code(),
            Code::PermissionDenied,
            "n{who} {kind} {name}: {e:?}"
        );
    }
    let e = n2
        .get(get("PersistentVolume", "", "pvc-gone"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    for kind in ["PersistentVolumeClaim", "PersistentVolume"] {
        let e = n1
            .list(pb::ListRequest {
                kind: kind.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "list {kind}");
    }
    cluster.shutdown().await.unwrap();
}

// ---- Day two: two join tokens, rotation, NodeRestriction, revocation -------------------

async fn bootstrap_as(
    cluster: &TestCluster,
    i: usize,
    token: &str,
    role: pb::BootstrapRole,
    name: &str,
    csr: &berth_tls::CertRequest,
) -> Result<pb::BootstrapResponse, String> {
    let token = JoinToken::parse(token).map_err(|e| e.to_string())?;
    berth_tls::pinned::bootstrap(
        &[cluster.addr(i).to_string()],
        &token,
        pb::BootstrapRequest {
            role: role as i32,
            name: name.into(),
            addresses: vec!["127.0.0.1".into()],
            csr_pem: csr.csr_pem.clone(),
            ..Default::default()
        },
    )
    .await
    .map_err(|e| e.to_string())
}

/// A node's credential got through bootstrap with `token` at member `i`.
async fn join_node(
    cluster: &TestCluster,
    i: usize,
    token: &str,
    name: &str,
) -> Result<ClientTls, String> {
    let csr = berth_tls::CertRequest::generate().unwrap();
    let resp = bootstrap_as(cluster, i, token, pb::BootstrapRole::Node, name, &csr).await?;
    Ok(ClientTls::new(
        resp.ca_certificate_pem,
        csr.into_credential(resp.certificate_pem),
    ))
}

async fn get_object(
    c: &mut ApiClient<Channel>,
    kind: &str,
    ns: &str,
    name: &str,
) -> Result<Value, tonic::Status> {
    c.get(pb::GetRequest {
        key: key(kind, ns, name),
    })
    .await
    .map(|r| serde_json::from_slice(&r.into_inner().object).unwrap())
}

async fn update(c: &mut ApiClient<Channel>, v: &Value) -> Result<Value, tonic::Status> {
    c.update(pb::UpdateRequest {
        object: bytes(v),
        dry_run: false,
    })
    .await
    .map(|r| serde_json::from_slice(&r.into_inner().object).unwrap())
}

/// What `berth token rotate ROLE` does: a new token for the cluster CA, its hash stored.
async fn rotate(
    cluster: &TestCluster,
    admin: &mut ApiClient<Channel>,
    role: berth_proto::jointoken::TokenRole,
) -> String {
    let fp = berth_tls::fingerprint_of_pem(&cluster.admin_tls().ca_cert_pem).unwrap();
    let token = JoinToken::generate_for(fp, role.secret_prefix())
        .unwrap()
        .reveal();
    let secret = berth_proto::jointoken::secret(role, &token, chrono::Utc::now());
    match create(admin, &secret).await {
        Ok(_) => {}
        Err(s) if s.code() == Code::AlreadyExists => {
            update(admin, &secret).await.unwrap();
        }
        Err(s) => panic!("{s:?}"),
    }
    token
}

#[tokio::test]
async fn the_agent_token_joins_agents_and_is_refused_for_a_server() {
    let cluster = TestCluster::start(1).await.unwrap();
    let server_token = cluster.token().to_string();
    let agent_token = cluster.server(0).unwrap().agent_join_token().unwrap();
    assert!(server_token.contains("::server:"), "k3s shape");
    assert!(agent_token.contains("::node:"), "k3s shape");
    assert_ne!(server_token, agent_token);

    // An agent joins with either token and never gets the CA key.
    for t in [&agent_token, &server_token] {
        let csr = berth_tls::CertRequest::generate().unwrap();
        let resp = bootstrap_as(&cluster, 0, t, pb::BootstrapRole::Node, "w1", &csr)
            .await
            .unwrap();
        assert!(resp.ca_key_pem.is_empty() && resp.secrets_encryption_key.is_empty());
    }
    // A server bootstrap with the agent token is refused with the reason, also once the
    // store holds the hashes.
    let mut admin = cluster.client(0).await.unwrap();
    for _ in 0..2 {
        let csr = berth_tls::CertRequest::generate().unwrap();
        let err = bootstrap_as(
            &cluster,
            0,
            &agent_token,
            pb::BootstrapRole::Server,
            "",
            &csr,
        )
        .await
        .unwrap_err();
        assert!(
            err.contains("this is the agent token, which joins agents only"),
            "{err}"
        );
        assert!(
            !err.contains(agent_token.split("::").nth(1).unwrap()),
            "{err}"
        );
        // Once rotated, the store's hash decides: the same refusal.
        create(
            &mut admin,
            &berth_proto::jointoken::secret(
                berth_proto::jointoken::TokenRole::Agent,
                &agent_token,
                chrono::Utc::now(),
            ),
        )
        .await
        .ok();
    }
    let dir = tempfile::tempdir().unwrap();
    let mut args = ServerArgs::new(dir.path().join("s"));
    args.listen = "127.0.0.1:0".into();
    args.join = Some(cluster.addr(0).to_string());
    args.token = Some(Secret::new(agent_token.clone()));
    let err = berth_apiserver::start(args)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("agent token"), "{err}");
    let members = admin
        .cluster_status(pb::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .members
        .len();
    assert_eq!(members, 1, "the agent token made no member");
    // `berth token show agent` (admin only) prints it.
    let shown = admin
        .join_token(pb::JoinTokenRequest {
            role: "agent".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    assert_eq!(shown, agent_token);
    cluster.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_rotated_token_is_refused_on_every_server_and_members_keep_their_certificates() {
    let cluster = TestCluster::start(3).await.unwrap();
    let mut admin = cluster.client(0).await.unwrap();
    let old_server = cluster.token().to_string();
    let old_agent = cluster.server(0).unwrap().agent_join_token().unwrap();
    // Every server admits agents with the agent token (joiners got it at bootstrap).
    let node_a = join_node(&cluster, 1, &old_agent, "node-a").await.unwrap();
    join_node(&cluster, 2, &old_agent, "node-c").await.unwrap();

    // Only the admin writes the token Secrets.
    let mut server = as_identity(&cluster, 0, &Identity::Server).await;
    let fake = berth_proto::jointoken::secret(
        berth_proto::jointoken::TokenRole::Server,
        "K10x::server:mine",
        chrono::Utc::now(),
    );
    assert_denied(
        update(&mut server, &fake).await,
        "system:server",
        "join token Secrets",
    );

    use berth_proto::jointoken::TokenRole;
    let new_server = rotate(&cluster, &mut admin, TokenRole::Server).await;
    let new_agent = rotate(&cluster, &mut admin, TokenRole::Agent).await;
    // Every server refuses the old tokens once it applied the rotation, and takes the new.
    for i in 0..3 {
        for old in [&old_server, &old_agent] {
            berth_apiserver::testing::wait_until(
                Duration::from_secs(10),
                "the old token refused",
                || async { join_node(&cluster, i, old, "node-b").await.err() },
            )
            .await
            .unwrap();
        }
        let err = join_node(&cluster, i, &old_server, "node-b")
            .await
            .unwrap_err();
        assert!(err.contains("join token refused"), "{err}");
        join_node(&cluster, i, &new_agent, "node-b").await.unwrap();
        let csr = berth_tls::CertRequest::generate().unwrap();
        let resp = bootstrap_as(
            &cluster,
            i,
            &new_server,
            pb::BootstrapRole::Server,
            "",
            &csr,
        )
        .await
        .unwrap();
        assert!(
            !resp.ca_key_pem.is_empty(),
            "the server token still gets the CA key"
        );
    }
    // A member's certificate from before the rotation still works.
    let mut a = client(cluster.addr(2), &node_a).await.unwrap();
    create(&mut a, &node("node-a")).await.unwrap();
    // The servers' token files are the old token now: `token show` says so.
    let err = admin
        .join_token(pb::JoinTokenRequest {
            role: "server".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("rotated"), "{}", err.message());
    cluster.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_node_may_not_change_its_own_labels_taints_or_unschedulable() {
    let cluster = TestCluster::start(1).await.unwrap();
    let mut admin = cluster.client(0).await.unwrap();
    let mut n1 = as_identity(&cluster, 0, &Identity::Node("n1".into())).await;
    let mut v = node("n1");
    v["metadata"]["labels"] = json!({"kubernetes.io/hostname": "n1", "zone": "a"});
    let registered = create(&mut n1, &v).await.unwrap();
    // Registering with a label reserved for the admin is refused.
    let mut n2 = as_identity(&cluster, 0, &Identity::Node("n2".into())).await;
    let mut v2 = node("n2");
    v2["metadata"]["labels"] = json!({"node-restriction.kubernetes.io/secure": "true"});
    assert_denied(
        create(&mut n2, &v2).await,
        "system:node:n2",
        "node-restriction",
    );

    let before = revision(&mut admin).await;
    for (what, change) in [
        (
            "label \"zone\"",
            json!({"metadata": {"labels": {"kubernetes.io/hostname": "n1", "zone": "b"}}}),
        ),
        (
            "label \"trusted\"",
            json!({"metadata": {"labels": {"kubernetes.io/hostname": "n1", "zone": "a", "trusted": "yes"}}}),
        ),
        (
            "taints",
            json!({"spec": {"taints": [{"key": "x", "effect": "NoSchedule"}]}}),
        ),
        (
            "spec.unschedulable",
            json!({"spec": {"unschedulable": true}}),
        ),
    ] {
        let mut u = registered.clone();
        for (k, x) in change.as_object().unwrap() {
            for (k2, x2) in x.as_object().unwrap() {
                u[k][k2] = x2.clone();
            }
        }
        assert_denied(update(&mut n1, &u).await, "system:node:n1", what);
    }
    assert_eq!(revision(&mut admin).await, before, "nothing was written");
    // Its own kubelet-owned labels it keeps current.
    let mut u = registered.clone();
    u["metadata"]["labels"]["kubernetes.io/os"] = json!("linux");
    update(&mut n1, &u).await.unwrap();
    // The admin may change anything.
    let mut u = get_object(&mut admin, "Node", "", "n1").await.unwrap();
    u["metadata"]["labels"]["zone"] = json!("b");
    u["spec"]["unschedulable"] = json!(true);
    update(&mut admin, &u).await.unwrap();
    cluster.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_second_machine_may_not_claim_a_registered_node_name() {
    let cluster = TestCluster::start(1).await.unwrap();
    let token = cluster.token().to_string();
    let csr = berth_tls::CertRequest::generate().unwrap();
    let own_key = csr.key_pem.clone();
    let resp = bootstrap_as(&cluster, 0, &token, pb::BootstrapRole::Node, "n1", &csr)
        .await
        .unwrap();
    let tls = ClientTls::new(
        resp.ca_certificate_pem,
        csr.into_credential(resp.certificate_pem),
    );
    let mut n1 = client(cluster.addr(0), &tls).await.unwrap();
    create(&mut n1, &node("n1")).await.unwrap();

    // Another key asking for n1 while its Node exists: refused.
    let other = berth_tls::CertRequest::generate().unwrap();
    let err = bootstrap_as(&cluster, 0, &token, pb::BootstrapRole::Node, "n1", &other)
        .await
        .unwrap_err();
    assert!(err.contains("registered with another certificate"), "{err}");
    // The same machine renewing (its key) is not.
    let renew = berth_tls::CertRequest::for_key(&own_key).unwrap();
    bootstrap_as(&cluster, 0, &token, pb::BootstrapRole::Node, "n1", &renew)
        .await
        .unwrap();
    // Once the admin deletes the Node, the name is free.
    let mut admin = cluster.client(0).await.unwrap();
    admin
        .delete(pb::DeleteRequest {
            key: key("Node", "", "n1"),
            ..Default::default()
        })
        .await
        .unwrap();
    bootstrap_as(&cluster, 0, &token, pb::BootstrapRole::Node, "n1", &other)
        .await
        .unwrap();
    cluster.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_revoked_node_is_refused_on_every_server_and_may_rejoin_only_with_a_token() {
    use berth_proto::certificates as certs;
    let cluster = TestCluster::start(3).await.unwrap();
    let token = cluster.token().to_string();
    let tls = join_node(&cluster, 0, &token, "n1").await.unwrap();
    let mut n1 = client(cluster.addr(1), &tls).await.unwrap();
    create(&mut n1, &node("n1")).await.unwrap();
    let mut admin = cluster.client(0).await.unwrap();
    // The certificate is on record, with its expiry.
    let rec = get_object(&mut admin, "ConfigMap", certs::NAMESPACE, "cert-node-n1")
        .await
        .unwrap();
    assert_eq!(
        certs::data(&rec, certs::IDENTITY_KEY),
        Some("system:node:n1")
    );
    assert!(certs::data(&rec, certs::EXPIRES_KEY).is_some());
    // A node may not touch the revocation list.
    let list = certs::revoke(None, "n2", chrono::Utc::now());
    let mut n2 = as_identity(&cluster, 0, &Identity::Node("n2".into())).await;
    assert!(create(&mut n2, &list).await.is_err());

    // What `berth node revoke n1` does: the revocation, then the Node and its record.
    let list = certs::revoke(None, "n1", chrono::Utc::now());
    create(&mut admin, &list).await.unwrap();
    for (kind, ns, name) in [
        ("Node", "", "n1"),
        ("ConfigMap", certs::NAMESPACE, "cert-node-n1"),
    ] {
        admin
            .delete(pb::DeleteRequest {
                key: key(kind, ns, name),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    // Every server refuses it, on its open connection too.
    for i in 0..3 {
        let mut c = client(cluster.addr(i), &tls).await.unwrap();
        let s = berth_apiserver::testing::wait_until(
            Duration::from_secs(10),
            "the revoked node refused",
            || {
                let mut c = c.clone();
                async move {
                    c.list(pb::ListRequest {
                        kind: "Pod".into(),
                        ..Default::default()
                    })
                    .await
                    .err()
                }
            },
        )
        .await
        .unwrap();
        assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
        assert!(s.message().contains("revoked"), "{}", s.message());
        assert!(create(&mut c, &node("n1")).await.is_err());
    }
    let err = n1
        .list(pb::ListRequest {
            kind: "Pod".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    // Joining again with a token gives a certificate issued after the revocation.
    let again = berth_apiserver::testing::wait_until(
        Duration::from_secs(5),
        "a new certificate after the revocation",
        || async {
            let tls = join_node(&cluster, 0, &token, "n1").await.ok()?;
            let mut c = client(cluster.addr(0), &tls).await.ok()?;
            c.list(pb::ListRequest {
                kind: "Pod".into(),
                ..Default::default()
            })
            .await
            .ok()
        },
    )
    .await;
    again.unwrap();
    cluster.shutdown().await.unwrap();
}
