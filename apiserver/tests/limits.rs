//! Hostile input against a real server on 127.0.0.1:0: every limit (object size on every
//! write path, request size, names, labels, malformed and deeply nested JSON, bad keys and
//! selectors) returns a clear error, the server keeps serving, and the store is unchanged.

#![allow(clippy::unwrap_used)]

use berth_apiserver::testing::TestCluster;
use berth_proto::pb::{self, api_client::ApiClient};
use serde_json::{json, Value};
use tonic::transport::Channel;
use tonic::Code;

fn pod_value(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name },
        "spec": { "containers": [{ "name": "c", "image": "nginx" }] }
    })
}

fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

/// A pod whose annotations make it about `size` bytes of JSON.
fn pod_of_size(name: &str, size: usize) -> Vec<u8> {
    let mut v = pod_value(name);
    v["metadata"]["annotations"] = json!({ "blob": "x".repeat(size) });
    bytes(&v)
}

async fn one_server() -> (TestCluster, ApiClient<Channel>) {
    let c = TestCluster::start(1).await.unwrap();
    let client = c
        .client(0)
        .await
        .unwrap()
        .max_encoding_message_size(usize::MAX);
    (c, client)
}

/// The store's revision and every pod in it: what "the store is unchanged" compares.
async fn snapshot(c: &mut ApiClient<Channel>) -> (u64, Vec<Vec<u8>>) {
    let list = c
        .list(pb::ListRequest {
            kind: "Pod".into(),
            namespace: String::new(),
            label_selector: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let status = c
        .cluster_status(pb::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    (status.revision, list.objects)
}

/// A store holding one valid pod, to show that refused writes leave it exactly as it was.
async fn seeded() -> (TestCluster, ApiClient<Channel>, (u64, Vec<Vec<u8>>)) {
    let (cluster, mut c) = one_server().await;
    c.create(pb::CreateRequest {
        object: bytes(&pod_value("existing")),
        dry_run: false,
    })
    .await
    .unwrap();
    let before = snapshot(&mut c).await;
    assert_eq!(before.0, 1);
    (cluster, c, before)
}

fn assert_invalid(r: Result<impl std::fmt::Debug, tonic::Status>, want: &str) {
    let err = r.expect_err("the request must be refused");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains(want),
        "wanted {want:?} in {:?}",
        err.message()
    );
}

#[tokio::test]
async fn oversized_objects_are_refused_on_every_write_path_and_nothing_changes() {
    let (cluster, mut c, before) = seeded().await;
    // Over the 1.5 MiB object limit, under the 4 MiB request limit.
    let big_new = pod_of_size("big", 1600 * 1024);
    let big_existing = pod_of_size("existing", 1600 * 1024);
    let want = "over the limit of 1572864 bytes";
    let create = |object| pb::CreateRequest {
        object,
        dry_run: false,
    };
    let update = |object| pb::UpdateRequest {
        object,
        dry_run: false,
    };
    assert_invalid(c.create(create(big_new.clone())).await, want);
    assert_invalid(c.update(update(big_existing.clone())).await, want);
    assert_invalid(c.update_status(update(big_existing.clone())).await, want);
    assert_invalid(
        c.apply(pb::ApplyRequest {
            object: big_existing.clone(),
            dry_run: false,
        })
        .await,
        want,
    );
    // A batch answers per op; the oversized ops fail and the rest of the store is untouched.
    use pb::batch_op::Op;
    let r = c
        .batch(pb::BatchRequest {
            ops: vec![
                pb::BatchOp {
                    op: Some(Op::Create(create(big_new.clone()))),
                },
                pb::BatchOp {
                    op: Some(Op::Apply(pb::ApplyRequest {
                        object: big_existing.clone(),
                        dry_run: false,
                    })),
                },
            ],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.results.len(), 2);
    for res in &r.results {
        assert_eq!(res.code, Code::InvalidArgument as i32, "{}", res.message);
        assert!(res.message.contains(want), "{}", res.message);
    }
    // Just under the limit is accepted (the limit is the object's JSON size).
    c.create(create(pod_of_size("fits", 1400 * 1024)))
        .await
        .unwrap();
    let after = snapshot(&mut c).await;
    assert_eq!(
        after.0,
        before.0 + 1,
        "only the object that fits was stored"
    );
    cluster.shutdown().await.unwrap();
}

#[tokio::test]
async fn requests_over_the_request_limit_are_refused_by_the_transport() {
    let (cluster, mut c, before) = seeded().await;
    let err = c
        .create(pb::CreateRequest {
            object: pod_of_size("huge", 5 * 1024 * 1024),
            dry_run: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(
        err.message().contains("message length too large"),
        "{}",
        err.message()
    );
    // Many small ops adding up to more than the request limit: refused as a whole.
    use pb::batch_op::Op;
    let ops = (0..6)
        .map(|i| pb::BatchOp {
            op: Some(Op::Create(pb::CreateRequest {
                object: pod_of_size(&format!("p{i}"), 1024 * 1024),
                dry_run: false,
            })),
        })
        .collect();
    let err = c
        .batch(pb::BatchRequest {
            ops,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert_eq!(snapshot(&mut c).await, before);
    cluster.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_names_and_labels_are_refused_and_nothing_changes() {
    let (cluster, mut c, before) = seeded().await;
    let with_meta = |name: &str, labels: Value| {
        let mut v = pod_value(name);
        v["metadata"]["labels"] = labels;
        bytes(&v)
    };
    let cases = [
        (with_meta(&"a".repeat(254), json!({})), "metadata.name"),
        // Echoed names are cut so the error still fits in a response header.
        (with_meta(&"a".repeat(1 << 20), json!({})), "more bytes cut"),
        (with_meta("Upper_Case", json!({})), "metadata.name"),
        (with_meta("", json!({})), "metadata.name"),
        (
            with_meta("ok", json!({ "k".repeat(64): "v" })),
            "metadata.labels",
        ),
        (
            with_meta("ok", json!({ "k": "v".repeat(64) })),
            "metadata.labels",
        ),
        (
            with_meta("ok", json!({ "k": "no spaces" })),
            "metadata.labels",
        ),
        (with_meta("ok", json!({ "a/b/c": "v" })), "metadata.labels"),
    ];
    for (object, want) in cases {
        assert_invalid(
            c.create(pb::CreateRequest {
                object: object.clone(),
                dry_run: false,
            })
            .await,
            want,
        );
        assert_invalid(
            c.apply(pb::ApplyRequest {
                object,
                dry_run: false,
            })
            .await,
            want,
        );
    }
    assert_eq!(snapshot(&mut c).await, before);
    cluster.shutdown().await.unwrap();
}

#[tokio::test]
async fn malformed_and_deeply_nested_json_is_refused_and_the_server_keeps_serving() {
    let (cluster, mut c, before) = seeded().await;
    let deep_array = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let mut deep_in_pod = bytes(&pod_value("deep"));
    // Replace the closing brace with a deeply nested extra field.
    deep_in_pod.pop();
    deep_in_pod.extend_from_slice(b",\"x\":");
    deep_in_pod.extend_from_slice(deep_array.as_bytes());
    deep_in_pod.push(b'}');
    let bodies: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"not json".to_vec(),
        vec![0xff, 0xfe, 0x00, 0x80],
        b"{\"kind\":\"Pod\"".to_vec(),
        b"[]".to_vec(),
        b"{\"apiVersion\":\"v1\",\"kind\":\"NoSuchKind\",\"metadata\":{\"name\":\"x\"}}".to_vec(),
        deep_array.into_bytes(),
        deep_in_pod,
    ];
    for object in bodies {
        let err = c
            .create(pb::CreateRequest {
                object: object.clone(),
                dry_run: false,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        let err = c
            .apply(pb::ApplyRequest {
                object,
                dry_run: false,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    }
    assert_eq!(snapshot(&mut c).await, before);
    cluster.shutdown().await.unwrap();
}

#[tokio::test]
async fn hostile_keys_and_selectors_get_errors_not_crashes() {
    let (cluster, mut c, before) = seeded().await;
    let long = "n".repeat(100_000);
    let keys = [
        ("Pod", long.as_str()),
        ("Pod", "../../etc/passwd"),
        ("Pod", "\0\u{1}\u{7f}"),
        ("NoSuchKind", "x"),
        ("", ""),
    ];
    for (kind, name) in keys {
        let key = Some(pb::ObjectKey {
            kind: kind.into(),
            namespace: name.into(),
            name: name.into(),
        });
        let err = c
            .get(pb::GetRequest { key: key.clone() })
            .await
            .unwrap_err();
        assert!(
            matches!(err.code(), Code::NotFound | Code::InvalidArgument),
            "get {kind} {name:.20}: {err:?}"
        );
        let err = c
            .delete(pb::DeleteRequest {
                grace_period_seconds: None,
                key,
                resource_version: 0,
            })
            .await
            .unwrap_err();
        assert!(
            matches!(err.code(), Code::NotFound | Code::InvalidArgument),
            "delete {kind} {name:.20}: {err:?}"
        );
    }
    let err = c.get(pb::GetRequest { key: None }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    for selector in ["a in (", "!!", "a=b,=", &"x".repeat(100_000)] {
        let err = c
            .list(pb::ListRequest {
                kind: "Pod".into(),
                namespace: String::new(),
                label_selector: selector.to_string(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{selector:.20}: {err:?}");
    }
    assert_eq!(snapshot(&mut c).await, before);
    cluster.shutdown().await.unwrap();
}
