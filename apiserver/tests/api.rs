//! Component tests: one real server on 127.0.0.1:0 driven through the generated gRPC client.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use berth_apiserver::status::ACTUAL_RV_METADATA;
use berth_apiserver::testing::TestCluster;
use berth_proto::pb::{self, api_client::ApiClient};
use serde_json::{json, Value};
use tonic::transport::Channel;
use tonic::Code;

const T: Duration = Duration::from_secs(20);

fn pod(name: &str, labels: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "labels": labels },
        "spec": { "containers": [{ "name": "c", "image": "nginx" }] }
    }))
    .unwrap()
}

fn parse(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap()
}

fn rv(v: &Value) -> u64 {
    v["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn key(kind: &str, name: &str) -> Option<pb::ObjectKey> {
    Some(pb::ObjectKey {
        kind: kind.into(),
        namespace: String::new(),
        name: name.into(),
    })
}

async fn one_server() -> (TestCluster, ApiClient<Channel>) {
    let c = TestCluster::start(1).await.unwrap();
    let client = c.client(0).await.unwrap();
    (c, client)
}

async fn create(c: &mut ApiClient<Channel>, obj: Vec<u8>) -> Result<Value, tonic::Status> {
    c.create(pb::CreateRequest {
        object: obj,
        dry_run: false,
    })
    .await
    .map(|r| parse(&r.into_inner().object))
}

#[tokio::test]
async fn create_then_get_returns_the_stored_object_and_duplicates_are_rejected() {
    let (cluster, mut c) = one_server().await;
    let created = create(&mut c, pod("a", json!({}))).await.unwrap();
    assert_eq!(created["metadata"]["namespace"], "default");
    assert!(!created["metadata"]["uid"].as_str().unwrap().is_empty());
    assert!(created["metadata"]["creationTimestamp"].is_string());
    let got = c
        .get(pb::GetRequest {
            key: key("pod", "a"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(parse(&got.object), created);
    let err = create(&mut c, pod("a", json!({}))).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    let err = c
        .get(pb::GetRequest {
            key: key("Pod", "missing"),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("\"missing\""), "{}", err.message());
    cluster.shutdown().await.unwrap();
}

#[tokio::test]
async fn update_with_stale_resource_version_is_aborted_naming_both_versions() {
    let (cluster, mut c) = one_server().await;
    let created = create(&mut c, pod("a", json!({}))).await.unwrap();
    let mut u = created.clone();
    u["metadata"]["labels"] = json!({"v": "1"});
    let updated = c
        .update(pb::UpdateRequest {
            object: serde_json::to_vec(&u).unwrap(),
            dry_run: false,
        })
        .await
        .unwrap()
        .into_inner();
    let updated = parse(&updated.object);
    assert!(rv(&updated) > rv(&created));
    // `u` still carries the old resourceVersion.
    let err = c
        .update(pb::UpdateRequest {
            object: serde_json::to_vec(&u).unwrap(),
            dry_run: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    let expected = format!(
        "expected resourceVersion {}, actual {}",
        rv(&created),
        rv(&updated)
    );
    assert!(err.message().contains(&expected), "{}", err.message());
    assert_eq!(
        err.metadata().get(ACTUAL_RV_METADATA).unwrap(),
        rv(&updated).to_string().as_str()
    );
    cluster.shutdown().await.unwrap();
}

#[tokio::test]
async fn apply_reports_created_then_unchanged_then_configured() {
    let (cluster, mut c) = one_server().await;
    let apply = |obj: Vec<u8>| {
        let mut c = c.clone();
        async move {
            let r = c
                .apply(pb::ApplyRequest {
                    object: obj,
                    dry_run: false,
                })
                .await
                .unwrap()
                .into_inner();
            (r.outcome(), parse(&r.object))
        }
    };
    let (o, first) = apply(pod("a", json!({"app": "web"}))).await;
    assert_eq!(o, pb::ApplyOutcome::Created);
    let (o, same) = apply(pod("a", json!({"app": "web"}))).await;
    assert_eq!(o, pb::ApplyOutcome::Unchanged);
    assert_eq!(rv(&same), rv(&first));
    let (o, changed) = apply(pod("a", json!({"app": "api"}))).await;
    assert_eq!(o, pb::ApplyOutcome::Configured);
    assert!(rv(&changed) > rv(&first));
    let status = c
        .cluster_status(pb::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.revision, rv(&changed));
    assert_eq!(status.members.len(), 1);
    assert!(status.members[0].is_leader);
    cluster.shutdown().await.unwrap();
}

#[tokio::test]
async fn list_filters_by_label_selector_and_reports_the_revision() {
    let (cluster, mut c) = one_server().await;
    create(&mut c, pod("a", json!({"app": "web", "tier": "front"})))
        .await
        .unwrap();
    create(&mut c, pod("b", json!({"app": "db"})))
        .await
        .unwrap();
    let last = create(&mut c, pod("c", json!({"app": "web"})))
        .await
        .unwrap();
    let list = |sel: &str| {
        let mut c = c.clone();
        let sel = sel.to_string();
        async move {
            let r = c
                .list(pb::ListRequest {
                    kind: "pods".into(),
                    namespace: String::new(),
                    label_selector: sel,
                })
                .await?
                .into_inner();
            let names: Vec<String> = r
                .objects
                .iter()
                .map(|o| parse(o)["metadata"]["name"].as_str().unwrap().to_string())
                .collect();
            Ok::<_, tonic::Status>((names, r.revision))
        }
    };
    let (names, revision) = list("app=web").await.unwrap();
    assert_eq!(names, vec!["a", "c"]);
    assert_eq!(revision, rv(&last));
    assert_eq!(list("app!=web").await.unwrap().0, vec!["b"]);
    assert_eq!(
        list("app in (web,db),!tier").await.unwrap().0,
        vec!["b", "c"]
    );
    let err = list("app in (web").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    cluster.shutdown().await.unwrap();
}

#[tokio::test]
async fn delete_returns_the_object_and_checks_the_precondition() {
    let (cluster, mut c) = one_server().await;
    let created = create(&mut c, pod("a", json!({}))).await.unwrap();
    let err = c
        .delete(pb::DeleteRequest {
            grace_period_seconds: None,
            key: key("Pod", "a"),
            resource_version: rv(&created) + 10,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    let deleted = c
        .delete(pb::DeleteRequest {
            grace_period_seconds: None,
            key: key("Pod", "a"),
            resource_version: rv(&created),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(parse(&deleted.object)["metadata"]["name"], "a");
    let err = c
        .delete(pb::DeleteRequest {
            grace_period_seconds: None,
            key: key("Pod", "a"),
            resource_version: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    cluster.shutdown().await.unwrap();
}

#[tokio::test]
async fn invalid_and_oversized_objects_never_reach_the_store() {
    let (cluster, mut c) = one_server().await;
    // Schema error (unknown field).
    let mut bad: Value = parse(&pod("a", json!({})));
    bad["spec"]["containerz"] = json!([]);
    let err = create(&mut c, serde_json::to_vec(&bad).unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("containerz"), "{}", err.message());
    // Semantic validation (invalid name).
    let err = create(&mut c, pod("Not_A_Name", json!({})))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("metadata.name"), "{}", err.message());
    // Over the 1.5 MiB object limit but under the 4 MiB request limit.
    let mut big: Value = parse(&pod("big", json!({})));
    big["metadata"]["annotations"] = json!({"blob": "x".repeat(2 * 1024 * 1024)});
    let err = create(&mut c, serde_json::to_vec(&big).unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("over the limit of 1572864 bytes"),
        "{}",
        err.message()
    );
    // Over the request limit: refused by the transport.
    big["metadata"]["annotations"] = json!({"blob": "x".repeat(5 * 1024 * 1024)});
    let err = create(&mut c, serde_json::to_vec(&big).unwrap())
        .await
        .unwrap_err();
    assert_ne!(err.code(), Code::Ok);
    let status = c
        .cluster_status(pb::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.revision, 0, "nothing was stored");
    cluster.shutdown().await.unwrap();
}

#[tokio::test]
async fn batch_results_are_per_op() {
    let (cluster, mut c) = one_server().await;
    use pb::batch_op::Op;
    let op = |o: Op| pb::BatchOp { op: Some(o) };
    let create_op = |name: &str| {
        op(Op::Create(pb::CreateRequest {
            object: pod(name, json!({})),
            dry_run: false,
        }))
    };
    let r = c
        .batch(pb::BatchRequest {
            ops: vec![
                create_op("a"),
                create_op("a"),
                create_op("Bad_Name"),
                create_op("b"),
            ],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let codes: Vec<Code> = r.results.iter().map(|r| Code::from(r.code)).collect();
    assert_eq!(
        codes,
        vec![
            Code::Ok,
            Code::AlreadyExists,
            Code::InvalidArgument,
            Code::Ok
        ]
    );
    assert_eq!(parse(&r.results[3].object)["metadata"]["name"], "b");
    cluster.shutdown().await.unwrap();
}

fn apply_op(object: Vec<u8>) -> pb::BatchOp {
    pb::BatchOp {
        op: Some(pb::batch_op::Op::Apply(pb::ApplyRequest {
            object,
            dry_run: false,
        })),
    }
}

async fn revision(c: &mut ApiClient<Channel>) -> u64 {
    c.cluster_status(pb::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .revision
}

async fn exists(c: &mut ApiClient<Channel>, name: &str) -> bool {
    match c
        .get(pb::GetRequest {
            key: key("Pod", name),
        })
        .await
    {
        Ok(_) => true,
        Err(s) if s.code() == Code::NotFound => false,
        Err(s) => panic!("get {name}: {s:?}"),
    }
}

#[tokio::test]
async fn atomic_batch_whose_third_object_conflicts_changes_nothing() {
    let (cluster, mut c) = one_server().await;
    let existing = create(&mut c, pod("c", json!({}))).await.unwrap();
    let before = revision(&mut c).await;
    let mut stale: Value = parse(&pod("c", json!({"v": "2"})));
    stale["metadata"]["resourceVersion"] = json!((rv(&existing) + 7).to_string());
    let r = c
        .batch(pb::BatchRequest {
            ops: vec![
                apply_op(pod("a", json!({}))),
                apply_op(pod("b", json!({}))),
                apply_op(serde_json::to_vec(&stale).unwrap()),
            ],
            atomic: true,
            dry_run: false,
        })
        .await
        .unwrap()
        .into_inner();
    let codes: Vec<Code> = r.results.iter().map(|r| Code::from(r.code)).collect();
    assert_eq!(
        codes,
        vec![
            Code::FailedPrecondition,
            Code::FailedPrecondition,
            Code::Aborted
        ]
    );
    let rolled: Vec<bool> = r.results.iter().map(|r| r.rolled_back).collect();
    assert_eq!(rolled, vec![true, true, false]);
    assert!(
        r.results[0].message.contains("object 3"),
        "{}",
        r.results[0].message
    );
    assert_eq!(revision(&mut c).await, before, "the revision must not move");
    assert!(!exists(&mut c, "a").await);
    assert!(!exists(&mut c, "b").await);
    cluster.shutdown().await.unwrap();
}

#[tokio::test]
async fn atomic_batch_with_an_invalid_object_is_not_proposed_at_all() {
    let (cluster, mut c) = one_server().await;
    let before = revision(&mut c).await;
    let r = c
        .batch(pb::BatchRequest {
            ops: vec![
                apply_op(pod("a", json!({}))),
                apply_op(pod("b", json!({}))),
                apply_op(pod("Bad_Name", json!({}))),
            ],
            atomic: true,
            dry_run: false,
        })
        .await
        .unwrap()
        .into_inner();
    let codes: Vec<Code> = r.results.iter().map(|r| Code::from(r.code)).collect();
    assert_eq!(
        codes,
        vec![
            Code::FailedPrecondition,
            Code::FailedPrecondition,
            Code::InvalidArgument
        ]
    );
    assert!(r.results[0].rolled_back && !r.results[2].rolled_back);
    assert_eq!(revision(&mut c).await, before);
    assert!(!exists(&mut c, "a").await);
    cluster.shutdown().await.unwrap();
}

#[tokio::test]
async fn atomic_batch_applies_every_object_and_reports_each_outcome() {
    let (cluster, mut c) = one_server().await;
    create(&mut c, pod("b", json!({}))).await.unwrap();
    let before = revision(&mut c).await;
    let r = c
        .batch(pb::BatchRequest {
            ops: vec![apply_op(pod("a", json!({}))), apply_op(pod("b", json!({})))],
            atomic: true,
            dry_run: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.results.iter().all(|r| r.code == 0), "{:?}", r.results);
    assert_eq!(r.results[0].outcome, Some(pb::ApplyOutcome::Created as i32));
    assert_eq!(
        r.results[1].outcome,
        Some(pb::ApplyOutcome::Unchanged as i32)
    );
    assert_eq!(revision(&mut c).await, before + 1);
    assert!(exists(&mut c, "a").await);
    // A dry run of the same batch stores nothing.
    let r = c
        .batch(pb::BatchRequest {
            ops: vec![apply_op(pod("d", json!({})))],
            atomic: true,
            dry_run: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.results[0].code, 0);
    assert!(!exists(&mut c, "d").await);
    cluster.shutdown().await.unwrap();
}

#[tokio::test]
async fn services_get_unique_node_ports_and_taken_ports_are_refused() {
    let (cluster, mut c) = one_server().await;
    let svc = |name: &str, node_port: Option<i32>| {
        let mut port = json!({"port": 80});
        if let Some(p) = node_port {
            port["nodePort"] = json!(p);
        }
        serde_json::to_vec(&json!({
            "kind": "Service",
            "metadata": {"name": name},
            "spec": {"selector": {"app": name}, "ports": [port]}
        }))
        .unwrap()
    };
    let a = create(&mut c, svc("a", None)).await.unwrap();
    let b = create(&mut c, svc("b", None)).await.unwrap();
    let pa = a["spec"]["ports"][0]["nodePort"].as_i64().unwrap();
    let pb_ = b["spec"]["ports"][0]["nodePort"].as_i64().unwrap();
    assert!((30000..=32767).contains(&pa));
    assert_ne!(pa, pb_);
    let err = create(&mut c, svc("c", Some(pa as i32))).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("already allocated"),
        "{}",
        err.message()
    );
    cluster.shutdown().await.unwrap();
}

/// Open a watch on Pods in `namespace` ("" = all) matching `selector` from `from_revision`.
async fn watch_pods(
    c: &mut ApiClient<Channel>,
    namespace: &str,
    selector: &str,
    from_revision: u64,
) -> Result<tonic::Streaming<pb::WatchEvent>, tonic::Status> {
    c.watch(pb::WatchRequest {
        kind: "Pod".into(),
        namespace: namespace.into(),
        label_selector: selector.into(),
        from_revision,
    })
    .await
    .map(|r| r.into_inner())
}

async fn next_event(
    s: &mut tonic::Streaming<pb::WatchEvent>,
) -> Result<Option<pb::WatchEvent>, tonic::Status> {
    tokio::time::timeout(T, s.message())
        .await
        .expect("watch event in time")
}

/// Next non-bookmark event.
async fn next_change(s: &mut tonic::Streaming<pb::WatchEvent>) -> pb::WatchEvent {
    loop {
        let ev = next_event(s).await.unwrap().unwrap();
        if ev.r#type() != pb::EventType::Bookmark {
            return ev;
        }
    }
}

#[tokio::test]
async fn watch_replays_history_then_streams_live_changes_with_bookmarks() {
    let (cluster, mut c) = one_server().await;
    let a = create(&mut c, pod("a", json!({"app": "web"})))
        .await
        .unwrap();
    create(&mut c, pod("b", json!({"app": "db"})))
        .await
        .unwrap();
    let mut s = watch_pods(&mut c, "", "app=web", 0).await.unwrap();
    let ev = next_change(&mut s).await;
    assert_eq!(ev.r#type(), pb::EventType::Added);
    assert_eq!(ev.revision, rv(&a));
    // Live: a label change moves `a` out of the selector (DELETED), a new pod enters.
    let mut a2 = a.clone();
    a2["metadata"]["labels"] = json!({"app": "other"});
    c.update(pb::UpdateRequest {
        object: serde_json::to_vec(&a2).unwrap(),
        dry_run: false,
    })
    .await
    .unwrap();
    let ev = next_change(&mut s).await;
    assert_eq!(ev.r#type(), pb::EventType::Deleted);
    let c3 = create(&mut c, pod("c", json!({"app": "web"})))
        .await
        .unwrap();
    let ev = next_change(&mut s).await;
    assert_eq!(ev.r#type(), pb::EventType::Added);
    assert_eq!(parse(&ev.object)["metadata"]["name"], "c");
    assert_eq!(ev.revision, rv(&c3));
    // Non-matching changes still advance the bookmark revision.
    let d = create(&mut c, pod("d", json!({"app": "db"})))
        .await
        .unwrap();
    let want = rv(&d);
    let bookmark = loop {
        // next_event has its own deadline; bookmarks come every 500 ms in test clusters.
        let ev = next_event(&mut s).await.unwrap().unwrap();
        if ev.r#type() == pb::EventType::Bookmark && ev.revision == want {
            break ev;
        }
        assert_eq!(
            ev.r#type(),
            pb::EventType::Bookmark,
            "no other change matches"
        );
    };
    assert!(bookmark.object.is_empty());
    cluster.shutdown().await.unwrap();
}

#[tokio::test]
async fn watch_resumes_from_a_revision_and_expires_after_restart() {
    let mut cluster = TestCluster::start(1).await.unwrap();
    let mut c = cluster.client(0).await.unwrap();
    let a = create(&mut c, pod("a", json!({}))).await.unwrap();
    let b = create(&mut c, pod("b", json!({}))).await.unwrap();
    let mut s = watch_pods(&mut c, "default", "", rv(&a)).await.unwrap();
    let ev = next_change(&mut s).await;
    assert_eq!(ev.revision, rv(&b), "replay starts after from_revision");
    drop(s);

    cluster.restart(0).await.unwrap();
    cluster.wait_for_leader(T).await.unwrap();
    let mut c = cluster.client(0).await.unwrap();
    let err = watch_pods(&mut c, "", "", rv(&a)).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
    assert!(err.message().starts_with("Expired"), "{}", err.message());
    assert!(err.message().contains("relist"), "{}", err.message());
    // From revision 0 the current objects arrive as ADDED, then a bookmark at the revision
    // they are consistent at.
    let mut s = watch_pods(&mut c, "", "", 0).await.unwrap();
    let mut added = Vec::new();
    let bookmark = loop {
        let ev = next_event(&mut s).await.unwrap().unwrap();
        match ev.r#type() {
            pb::EventType::Added => added.push(parse(&ev.object)["metadata"]["name"].clone()),
            pb::EventType::Bookmark => break ev.revision,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(added, vec![json!("a"), json!("b")]);
    assert_eq!(bookmark, rv(&b));
    // The state itself survived the restart.
    let got = c
        .get(pb::GetRequest {
            key: key("Pod", "b"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(parse(&got.object), b);
    cluster.shutdown().await.unwrap();
}

#[tokio::test]
async fn server_refuses_an_empty_data_dir_without_init_or_join() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = berth_apiserver::ServerArgs::new(dir.path().join("s"));
    args.listen = "127.0.0.1:0".into();
    let err = berth_apiserver::start(args).await.err().unwrap();
    assert!(err.to_string().contains("--init"), "{err}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("s"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
}

#[tokio::test]
async fn dry_run_validates_and_answers_without_storing() {
    let (cluster, mut c) = one_server().await;
    let r = c
        .create(pb::CreateRequest {
            object: pod("a", json!({})),
            dry_run: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(parse(&r.object)["metadata"]["name"], "a");
    let err = c
        .get(pb::GetRequest {
            key: key("Pod", "a"),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    cluster.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_watcher_that_stops_reading_never_blocks_writes_and_is_expired() {
    let cluster = TestCluster::start_with(1, |a| a.watch_history = 20)
        .await
        .unwrap();
    let mut c = cluster.client(0).await.unwrap();
    let mut s = watch_pods(&mut c, "", "", 0).await.unwrap();
    // Big objects so the stream's buffers fill long before the writes are done.
    let blob = "x".repeat(64 * 1024);
    let writes = async {
        for i in 0..120 {
            let mut p: Value = parse(&pod(&format!("p{i}"), json!({})));
            p["metadata"]["annotations"] = json!({ "blob": blob });
            create(&mut c, serde_json::to_vec(&p).unwrap())
                .await
                .unwrap();
        }
    };
    tokio::time::timeout(T, writes)
        .await
        .expect("writes completed while the watcher was not reading");
    // Reading now: whatever was buffered, then the stream says Expired.
    let err = loop {
        match next_event(&mut s).await {
            Ok(Some(ev)) => {
                assert!(
                    ev.revision < 120,
                    "the watcher kept up with every change; it should have been expired"
                );
            }
            Ok(None) => panic!("stream closed without an error"),
            Err(e) => break e,
        }
    };
    assert_eq!(err.code(), Code::OutOfRange);
    assert!(err.message().contains("relist"), "{}", err.message());
    cluster.shutdown().await.unwrap();
}
