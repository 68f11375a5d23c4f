//! Secrets encrypted at rest on a three-member cluster: what is on disk (store, Raft log,
//! snapshot) holds no value, every member reads the Secret back, rotation re-encrypts.

use std::time::Duration;

use base64::Engine as _;
use berth_apiserver::encryption::{key_names_in, Kek, Keyring, KEYRING_NAME, KEYRING_NAMESPACE};
use berth_apiserver::raft::StateMachine;
use berth_apiserver::store::ObjectKey;
use berth_apiserver::testing::{wait_until, TestCluster};
use berth_proto::pb;
use berth_proto::Kind;
use serde_json::{json, Value};

const PLAIN: &str = "hunter2-correct-horse-battery";

fn files_contain(dir: &std::path::Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(b) = std::fs::read(&p) {
                if b.windows(needle.len()).any(|w| w == needle) {
                    hits.push(p.display().to_string());
                }
            }
        }
    }
    hits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secrets_are_ciphertext_on_disk_and_in_snapshots_and_every_member_reads_them() {
    let cluster = TestCluster::start(3).await.expect("cluster");
    let leader = cluster
        .wait_for_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    let follower = (leader + 1) % 3;
    let b64 = base64::engine::general_purpose::STANDARD.encode(PLAIN);
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "db", "namespace": "default"},
        "data": {"password": b64},
    });
    // Written through a follower (forwarded; sealed on the leader).
    let mut c = cluster.client(follower).await.expect("client");
    let out: Value = serde_json::from_slice(
        &c.create(pb::CreateRequest {
            object: serde_json::to_vec(&secret).expect("json"),
            dry_run: false,
        })
        .await
        .expect("create")
        .into_inner()
        .object,
    )
    .expect("reply");
    assert_eq!(out["data"]["password"], b64, "the reply is opened again");
    for i in 0..3 {
        let mut c = cluster.client(i).await.expect("client");
        let got = wait_until(
            Duration::from_secs(10),
            "the Secret on every member",
            || {
                let mut c = c.clone();
                async move {
                    let r = c
                        .get(pb::GetRequest {
                            key: Some(pb::ObjectKey {
                                kind: "Secret".into(),
                                namespace: "default".into(),
                                name: "db".into(),
                            }),
                        })
                        .await
                        .ok()?;
                    serde_json::from_slice::<Value>(&r.into_inner().object).ok()
                }
            },
        )
        .await
        .expect("read");
        assert_eq!(got["data"]["password"], b64, "member {i}");
        let _ = &mut c;
        let server = cluster.server(i).expect("member");
        let stored = server
            .store()
            .get(&ObjectKey::new(Kind::Secret, "default", "db"))
            .expect("stored");
        let v = stored["data"]["password"].as_str().expect("string");
        assert!(v.starts_with("k8s:enc:aesgcm:v1:key1:"), "{v}");
        let snap = server.store().snapshot().expect("snapshot");
        for needle in [PLAIN.as_bytes(), b64.as_bytes()] {
            assert!(!snap.windows(needle.len()).any(|w| w == needle));
        }
        server.store().flush().expect("flush");
        for needle in [PLAIN.as_bytes(), b64.as_bytes()] {
            let hits = files_contain(server.data_dir(), needle);
            assert!(hits.is_empty(), "member {i}: plaintext in {hits:?}");
        }
        // The keyring unwraps with this member's own key file (handed over at join).
        let kek = Kek::load_or_derive(
            &berth_apiserver::pki::pki_dir(server.data_dir()),
            "unused: the file exists",
        )
        .expect("kek");
        let ring = server
            .store()
            .get(&ObjectKey::new(
                Kind::Secret,
                KEYRING_NAMESPACE,
                KEYRING_NAME,
            ))
            .expect("keyring");
        assert_eq!(
            Keyring::from_secret(&kek, &ring).expect("unwrap").names(),
            vec!["key1"]
        );
        assert_eq!(key_names_in(&stored), vec![Some("key1".to_string())]);
    }
    // A watch on a follower carries the opened values to its (authorized) reader.
    let mut c = cluster.client(follower).await.expect("client");
    let mut stream = c
        .watch(pb::WatchRequest {
            kind: "Secret".into(),
            namespace: "default".into(),
            label_selector: String::new(),
            from_revision: 0,
        })
        .await
        .expect("watch")
        .into_inner();
    let ev = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("an event in time")
        .expect("stream")
        .expect("event");
    let obj: Value = serde_json::from_slice(&ev.object).expect("object");
    assert_eq!(obj["data"]["password"], b64);
    cluster.shutdown().await.expect("shutdown");
}
