//! State-machine tests: commands applied directly, as raft would after commit.

use super::*;
use crate::raft::StateMachine;
use serde_json::json;

struct Fixture {
    _dir: tempfile::TempDir,
    db: sled::Db,
    store: Store,
    index: u64,
    /// Commands carry `check_namespaces` (as the API service's do).
    check_namespaces: bool,
}

fn fixture() -> Fixture {
    fixture_with(StoreConfig::default())
}

fn fixture_with(config: StoreConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let store = Store::open(&db, config).unwrap();
    Fixture {
        _dir: dir,
        db,
        store,
        index: 0,
        check_namespaces: false,
    }
}

fn now() -> berth_proto::types::Time {
    chrono::DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
        .unwrap()
        .with_timezone(&chrono::Utc)
}

impl Fixture {
    fn run_with(&mut self, ops: Vec<Op>, node_ports: NodePortRange) -> Vec<OpResult> {
        self.index += 1;
        let cmd = Command {
            ops,
            now: now(),
            node_ports,
            networks: Default::default(),
            atomic: false,
            check_namespaces: self.check_namespaces,
        };
        let reply = self.store.apply(self.index, &cmd.encode());
        Reply::decode(&reply).unwrap().results
    }
    fn run(&mut self, op: Op) -> OpResult {
        self.run_with(vec![op], NodePortRange::default()).remove(0)
    }
    fn create(&mut self, v: Value) -> OpResult {
        self.run(Op::Create {
            object: v,
            uid: format!("uid-{}", self.index + 1),
        })
    }
    fn apply_obj(&mut self, v: Value) -> OpResult {
        self.run(Op::Apply {
            object: v,
            uid: format!("uid-{}", self.index + 1),
        })
    }
}

fn pod(name: &str, labels: Value) -> Value {
    json!({
        "kind": "Pod",
        "metadata": { "name": name, "labels": labels },
        "spec": { "containers": [{ "name": "c", "image": "nginx" }] }
    })
}

fn service(name: &str, ports: Value) -> Value {
    json!({
        "kind": "Service",
        "metadata": { "name": name },
        "spec": { "selector": { "app": name }, "ports": ports }
    })
}

fn rv(v: &Value) -> u64 {
    apply::resource_version_of(v)
}

fn key(kind: Kind, ns: &str, name: &str) -> ObjectKey {
    ObjectKey::new(kind, ns, name)
}

#[test]
fn create_assigns_identity_revision_and_default_namespace() {
    let mut f = fixture();
    let out = f.create(pod("a", json!({}))).unwrap().object;
    assert_eq!(out["metadata"]["namespace"], "default");
    assert_eq!(out["metadata"]["uid"], "uid-1");
    assert_eq!(out["metadata"]["generation"], 1);
    assert_eq!(out["metadata"]["creationTimestamp"], "2026-01-02T03:04:05Z");
    assert_eq!(out["apiVersion"], "v1");
    assert_eq!(rv(&out), 1);
    assert_eq!(f.store.revision(), 1);
    assert_eq!(f.store.applied_index(), 1);
    let node = f
        .create(json!({"kind": "Node", "metadata": {"name": "n1", "namespace": "x"}}))
        .unwrap()
        .object;
    assert!(node["metadata"].get("namespace").is_none());
    assert_eq!(rv(&node), 2);
    assert_eq!(*f.store.get(&key(Kind::Node, "", "n1")).unwrap(), node);
}

#[test]
fn create_of_existing_object_is_already_exists_and_does_not_bump_revision() {
    let mut f = fixture();
    f.create(pod("a", json!({}))).unwrap();
    let err = f.create(pod("a", json!({}))).unwrap_err();
    assert_eq!(
        err,
        StoreError::AlreadyExists {
            key: key(Kind::Pod, "default", "a")
        }
    );
    assert_eq!(f.store.revision(), 1);
    assert_eq!(
        f.store.applied_index(),
        2,
        "failed ops still advance the applied index"
    );
}

#[test]
fn invalid_objects_are_rejected_with_the_schema_error() {
    let mut f = fixture();
    let mut bad = pod("a", json!({}));
    bad["spec"]["containerz"] = json!([]);
    let err = f.create(bad).unwrap_err();
    assert!(
        matches!(&err, StoreError::Invalid(m) if m.contains("containerz")),
        "{err}"
    );
    let err = f.create(pod("", json!({}))).unwrap_err();
    assert!(
        matches!(&err, StoreError::Invalid(m) if m.contains("metadata.name")),
        "{err}"
    );
    assert_eq!(f.store.revision(), 0);
}

#[test]
fn update_with_stale_resource_version_conflicts() {
    let mut f = fixture();
    let created = f.create(pod("a", json!({}))).unwrap().object;
    let mut u = created.clone();
    u["metadata"]["labels"] = json!({"x": "1"});
    let updated = f.run(Op::Update { object: u.clone() }).unwrap().object;
    assert_eq!(rv(&updated), 2);
    // `u` still carries resourceVersion 1.
    u["metadata"]["labels"] = json!({"x": "2"});
    let err = f.run(Op::Update { object: u.clone() }).unwrap_err();
    assert_eq!(
        err,
        StoreError::Conflict {
            key: key(Kind::Pod, "default", "a"),
            expected: 1,
            actual: 2
        }
    );
    assert!(err
        .to_string()
        .contains("expected resourceVersion 1, actual 2"));
    // 0 = unconditional.
    u["metadata"]["resourceVersion"] = json!("0");
    let forced = f.run(Op::Update { object: u }).unwrap().object;
    assert_eq!(forced["metadata"]["labels"]["x"], "2");
}

#[test]
fn update_keeps_status_and_identity_and_bumps_generation_only_on_spec_change() {
    let mut f = fixture();
    let mut p = pod("a", json!({}));
    p["status"] = json!({"phase": "Running"});
    let created = f.create(p).unwrap().object;

    let mut u = created.clone();
    u["status"] = json!({"phase": "Failed"});
    u["metadata"]["uid"] = json!("forged");
    u["metadata"]["labels"] = json!({"a": "b"});
    let out = f.run(Op::Update { object: u }).unwrap().object;
    assert_eq!(out["status"]["phase"], "Running");
    assert_eq!(out["metadata"]["uid"], created["metadata"]["uid"]);
    assert_eq!(
        out["metadata"]["generation"], 1,
        "label change is not a spec change"
    );

    let mut u = out.clone();
    u["spec"]["containers"][0]["image"] = json!("nginx:2");
    let out = f.run(Op::Update { object: u }).unwrap().object;
    assert_eq!(out["metadata"]["generation"], 2);
    assert_eq!(rv(&out), 3);
}

#[test]
fn update_with_identical_content_changes_nothing() {
    let mut f = fixture();
    let created = f.create(pod("a", json!({}))).unwrap().object;
    let out = f
        .run(Op::Update {
            object: created.clone(),
        })
        .unwrap()
        .object;
    assert_eq!(out, created);
    assert_eq!(f.store.revision(), 1);
}

#[test]
fn update_status_changes_only_status() {
    let mut f = fixture();
    let created = f.create(pod("a", json!({"app": "x"}))).unwrap().object;
    let mut u = created.clone();
    u["status"] = json!({"phase": "Running"});
    u["metadata"]["labels"] = json!({"app": "changed"});
    u["spec"]["containers"][0]["image"] = json!("other");
    let out = f
        .run(Op::UpdateStatus {
            object: u.clone(),
            bound_node: None,
        })
        .unwrap()
        .object;
    assert_eq!(out["status"]["phase"], "Running");
    assert_eq!(out["metadata"]["labels"]["app"], "x");
    assert_eq!(out["spec"]["containers"][0]["image"], "nginx");
    assert_eq!(out["metadata"]["generation"], 1);
    // Same precondition as Update.
    let err = f
        .run(Op::UpdateStatus {
            object: u,
            bound_node: None,
        })
        .unwrap_err();
    assert!(matches!(
        err,
        StoreError::Conflict {
            expected: 1,
            actual: 2,
            ..
        }
    ));
    let ep = json!({"kind": "Endpoints", "metadata": {"name": "e"}});
    f.create(ep.clone()).unwrap();
    assert!(matches!(
        f.run(Op::UpdateStatus {
            object: ep,
            bound_node: None
        }),
        Err(StoreError::Invalid(_))
    ));
}

#[test]
fn apply_reports_created_configured_and_unchanged() {
    let mut f = fixture();
    let p = pod("a", json!({"app": "web"}));
    let out = f.apply_obj(p.clone()).unwrap();
    assert_eq!(out.outcome, Some(ApplyOutcome::Created));
    assert_eq!(rv(&out.object), 1);

    let out = f.apply_obj(p.clone()).unwrap();
    assert_eq!(out.outcome, Some(ApplyOutcome::Unchanged));
    assert_eq!(rv(&out.object), 1);
    assert_eq!(
        f.store.revision(),
        1,
        "unchanged apply must not bump the revision"
    );

    let mut p2 = p.clone();
    p2["spec"]["containers"][0]["image"] = json!("nginx:2");
    let out = f.apply_obj(p2).unwrap();
    assert_eq!(out.outcome, Some(ApplyOutcome::Configured));
    assert_eq!(out.object["metadata"]["generation"], 2);
    assert_eq!(rv(&out.object), 2);
}

#[test]
fn apply_keeps_status_and_merges_labels() {
    let mut f = fixture();
    let created = f
        .create(pod("a", json!({"app": "web", "hash": "123"})))
        .unwrap()
        .object;
    let mut s = created.clone();
    s["status"] = json!({"phase": "Running"});
    f.run(Op::UpdateStatus {
        object: s,
        bound_node: None,
    })
    .unwrap();

    let mut p = pod("a", json!({"app": "web2"}));
    p["status"] = json!({"phase": "Failed"});
    let out = f.apply_obj(p).unwrap();
    assert_eq!(out.outcome, Some(ApplyOutcome::Configured));
    assert_eq!(out.object["status"]["phase"], "Running");
    assert_eq!(
        out.object["metadata"]["labels"],
        json!({"app": "web2", "hash": "123"})
    );
    assert_eq!(out.object["metadata"]["uid"], created["metadata"]["uid"]);
    assert_eq!(out.object["metadata"]["generation"], 1);
}

#[test]
fn reapplying_a_pod_manifest_keeps_the_schedulers_binding() {
    let mut f = fixture();
    let created = f.create(pod("a", json!({}))).unwrap().object;
    let mut bound = created.clone();
    bound["spec"]["nodeName"] = json!("n1");
    f.run(Op::Update { object: bound }).unwrap();
    let out = f.apply_obj(pod("a", json!({}))).unwrap();
    assert_eq!(out.outcome, Some(ApplyOutcome::Unchanged));
    assert_eq!(out.object["spec"]["nodeName"], "n1");
    let mut moved = pod("a", json!({}));
    moved["spec"]["nodeName"] = json!("n2");
    let out = f.apply_obj(moved).unwrap();
    assert_eq!(
        out.object["spec"]["nodeName"], "n2",
        "an explicit nodeName is applied"
    );
}

#[test]
fn delete_returns_the_object_and_honours_the_precondition() {
    let mut f = fixture();
    f.create(pod("a", json!({}))).unwrap();
    let k = key(Kind::Pod, "", "a");
    let err = f
        .run(Op::Delete {
            grace_period_seconds: None,
            key: k.clone(),
            resource_version: 7,
        })
        .unwrap_err();
    assert!(matches!(
        err,
        StoreError::Conflict {
            expected: 7,
            actual: 1,
            ..
        }
    ));
    let out = f
        .run(Op::Delete {
            grace_period_seconds: None,
            key: k.clone(),
            resource_version: 1,
        })
        .unwrap()
        .object;
    assert_eq!(out["metadata"]["name"], "a");
    assert_eq!(rv(&out), 2, "deleted object carries the deletion revision");
    assert!(matches!(f.store.get(&k), Err(StoreError::NotFound { .. })));
    assert!(matches!(
        f.run(Op::Delete {
            grace_period_seconds: None,
            key: k,
            resource_version: 0
        }),
        Err(StoreError::NotFound { .. })
    ));
}

#[test]
fn batch_ops_succeed_or_fail_independently_with_one_revision_each() {
    let mut f = fixture();
    let results = f.run_with(
        vec![
            Op::Create {
                object: pod("a", json!({})),
                uid: "1".into(),
            },
            Op::Create {
                object: pod("a", json!({})),
                uid: "2".into(),
            },
            Op::Create {
                object: pod("b", json!({})),
                uid: "3".into(),
            },
        ],
        NodePortRange::default(),
    );
    assert_eq!(rv(&results[0].as_ref().unwrap().object), 1);
    assert!(matches!(results[1], Err(StoreError::AlreadyExists { .. })));
    assert_eq!(rv(&results[2].as_ref().unwrap().object), 2);
    assert_eq!(f.store.revision(), 2);
}

#[test]
fn list_filters_by_kind_namespace_and_selector() {
    let mut f = fixture();
    f.create(pod("a", json!({"app": "web", "tier": "front"})))
        .unwrap();
    f.create(pod("b", json!({"app": "db"}))).unwrap();
    let mut c = pod("c", json!({"app": "web"}));
    c["metadata"]["namespace"] = json!("other");
    f.create(c).unwrap();
    f.create(service("web", json!([{"port": 80}]))).unwrap();

    let names = |sel: &str, ns: Option<&str>| -> Vec<String> {
        let (items, rev) = f
            .store
            .list(Kind::Pod, ns, &Selector::parse(sel).unwrap())
            .unwrap();
        assert_eq!(rev, 4);
        items
            .iter()
            .map(|v| v["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names("", None), vec!["a", "b", "c"]);
    assert_eq!(names("", Some("default")), vec!["a", "b"]);
    assert_eq!(names("app=web", None), vec!["a", "c"]);
    assert_eq!(names("app in (web,db),!tier", Some("")), vec!["b"]);
}

#[test]
fn node_ports_are_allocated_uniquely_and_kept_across_updates() {
    let mut f = fixture();
    let range = NodePortRange {
        start: 31000,
        end: 31002,
    };
    let a = f
        .run_with(
            vec![Op::Create {
                object: service(
                    "a",
                    json!([{"name": "http", "port": 80}, {"name": "m", "port": 9090}]),
                ),
                uid: "1".into(),
            }],
            range,
        )
        .remove(0)
        .unwrap()
        .object;
    assert_eq!(a["spec"]["ports"][0]["nodePort"], 31000);
    assert_eq!(a["spec"]["ports"][1]["nodePort"], 31001);

    // Re-applying the manifest (no nodePort) keeps the allocation: unchanged.
    let out = f
        .run_with(
            vec![Op::Apply {
                object: service(
                    "a",
                    json!([{"name": "http", "port": 80}, {"name": "m", "port": 9090}]),
                ),
                uid: "x".into(),
            }],
            range,
        )
        .remove(0)
        .unwrap();
    assert_eq!(out.outcome, Some(ApplyOutcome::Unchanged));

    // A taken port is refused with the owner named.
    let err = f
        .run_with(
            vec![Op::Create {
                object: service("b", json!([{"port": 80, "nodePort": 31001}])),
                uid: "2".into(),
            }],
            range,
        )
        .remove(0)
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::NodePort(m) if m.contains("already allocated to Service \"a\"")),
        "{err}"
    );
    // Out of range.
    let err = f
        .run_with(
            vec![Op::Create {
                object: service("b", json!([{"port": 80, "nodePort": 80}])),
                uid: "2".into(),
            }],
            range,
        )
        .remove(0)
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::NodePort(m) if m.contains("outside the node-port range 31000-31002")),
        "{err}"
    );
    // The last free port, then exhaustion.
    let b = f
        .run_with(
            vec![Op::Create {
                object: service("b", json!([{"port": 80}])),
                uid: "2".into(),
            }],
            range,
        )
        .remove(0)
        .unwrap()
        .object;
    assert_eq!(b["spec"]["ports"][0]["nodePort"], 31002);
    let err = f
        .run_with(
            vec![Op::Create {
                object: service("c", json!([{"port": 80}])),
                uid: "3".into(),
            }],
            range,
        )
        .remove(0)
        .unwrap_err();
    assert!(matches!(err, StoreError::NodePortsExhausted { .. }));
    // Deleting a frees its ports.
    f.run(Op::Delete {
        grace_period_seconds: None,
        key: key(Kind::Service, "", "a"),
        resource_version: 0,
    })
    .unwrap();
    let c = f
        .run_with(
            vec![Op::Create {
                object: service("c", json!([{"port": 80}])),
                uid: "3".into(),
            }],
            range,
        )
        .remove(0)
        .unwrap()
        .object;
    assert_eq!(c["spec"]["ports"][0]["nodePort"], 31000);
}

#[test]
fn objects_over_the_size_limit_are_rejected() {
    let mut f = fixture_with(StoreConfig {
        max_object_bytes: 1000,
        ..StoreConfig::default()
    });
    let mut p = pod("big", json!({}));
    p["metadata"]["annotations"] = json!({"blob": "x".repeat(2000)});
    let err = f.create(p).unwrap_err();
    assert!(
        matches!(err, StoreError::TooLarge { limit: 1000, .. }),
        "{err}"
    );
    assert_eq!(f.store.revision(), 0);
}

#[test]
fn already_applied_entries_are_skipped_on_replay() {
    let mut f = fixture();
    f.create(pod("a", json!({}))).unwrap();
    let cmd = Command {
        ops: vec![Op::Create {
            object: pod("b", json!({})),
            uid: "u".into(),
        }],
        now: now(),
        node_ports: NodePortRange::default(),
        networks: Default::default(),
        check_namespaces: false,
        atomic: false,
    };
    assert!(f.store.apply(1, &cmd.encode()).is_empty());
    assert!(f.store.get(&key(Kind::Pod, "", "b")).is_err());
    assert_eq!(f.store.revision(), 1);
}

#[test]
fn undecodable_entry_advances_applied_index_with_an_error_reply() {
    let f = fixture();
    let reply = Reply::decode(&f.store.apply(1, b"not json")).unwrap();
    assert!(matches!(reply.results[0], Err(StoreError::BadCommand(_))));
    assert_eq!(f.store.applied_index(), 1);
    assert_eq!(f.store.revision(), 0);
}

#[test]
fn state_survives_reopen_from_sled() {
    let mut f = fixture();
    f.create(pod("a", json!({"app": "web"}))).unwrap();
    f.create(pod("b", json!({}))).unwrap();
    f.run(Op::Delete {
        grace_period_seconds: None,
        key: key(Kind::Pod, "", "b"),
        resource_version: 0,
    })
    .unwrap();
    let reopened = Store::open(&f.db, StoreConfig::default()).unwrap();
    assert_eq!(reopened.revision(), 3);
    assert_eq!(reopened.applied_index(), 3);
    assert_eq!(
        reopened.get(&key(Kind::Pod, "", "a")).unwrap(),
        f.store.get(&key(Kind::Pod, "", "a")).unwrap()
    );
    assert!(reopened.get(&key(Kind::Pod, "", "b")).is_err());
    // History is not persisted: older revisions are expired after a restart.
    assert_eq!(reopened.oldest_watchable_revision(), 3);
    assert!(matches!(
        reopened.watch(1, WatchFilter::default()),
        Err(StoreError::Expired {
            requested: 1,
            oldest: 3
        })
    ));
}

#[test]
fn snapshot_restore_replaces_state_and_expires_watchers() {
    let mut src = fixture();
    src.create(pod("a", json!({}))).unwrap();
    src.create(pod("b", json!({}))).unwrap();
    let snap = src.store.snapshot().unwrap();

    let mut dst = fixture();
    dst.create(pod("stale", json!({}))).unwrap();
    let (_, mut w) = dst.store.watch(1, WatchFilter::default()).unwrap();
    dst.store.restore(10, &snap).unwrap();
    assert_eq!(dst.store.applied_index(), 10);
    assert_eq!(dst.store.revision(), 2);
    assert!(dst.store.get(&key(Kind::Pod, "", "stale")).is_err());
    assert_eq!(
        dst.store.get(&key(Kind::Pod, "", "b")).unwrap(),
        src.store.get(&key(Kind::Pod, "", "b")).unwrap()
    );
    assert!(matches!(w.poll(10), Err(StoreError::Expired { .. })));
    // Durable too.
    let reopened = Store::open(&dst.db, StoreConfig::default()).unwrap();
    assert_eq!(reopened.applied_index(), 10);
    assert!(reopened.get(&key(Kind::Pod, "", "stale")).is_err());
    assert!(reopened.get(&key(Kind::Pod, "", "a")).is_ok());
}

#[test]
fn snapshot_job_encodes_the_state_captured_when_it_was_made() {
    let mut f = fixture();
    f.create(pod("a", json!({}))).unwrap();
    f.create(pod("b", json!({}))).unwrap();
    let expected = f.store.snapshot().unwrap();
    let job = f.store.snapshot_job();
    // Changes after the capture are not in the snapshot.
    f.create(pod("c", json!({}))).unwrap();
    assert_eq!(job().unwrap(), expected);
}

#[test]
fn watch_sees_every_change_once_with_selector_transitions() {
    let mut f = fixture();
    let filter = WatchFilter {
        kind: Some(Kind::Pod),
        namespace: None,
        selector: Selector::parse("app=web").unwrap(),
    };
    let (initial, mut w) = f.store.watch(0, filter).unwrap();
    assert!(initial.is_empty());
    let a = f.create(pod("a", json!({"app": "web"}))).unwrap().object;
    f.create(pod("b", json!({"app": "db"}))).unwrap();
    let mut a2 = a.clone();
    a2["metadata"]["labels"] = json!({"app": "db"});
    let a2 = f.run(Op::Update { object: a2 }).unwrap().object;
    let mut a3 = a2.clone();
    a3["metadata"]["labels"] = json!({"app": "web"});
    f.run(Op::Update { object: a3 }).unwrap();
    f.run(Op::Delete {
        grace_period_seconds: None,
        key: key(Kind::Pod, "", "a"),
        resource_version: 0,
    })
    .unwrap();
    let got: Vec<(WatchEventType, u64)> = w
        .poll(100)
        .unwrap()
        .iter()
        .map(|e| (e.event_type, e.revision))
        .collect();
    use WatchEventType::*;
    assert_eq!(
        got,
        vec![(Added, 1), (Deleted, 3), (Added, 4), (Deleted, 5)]
    );
    assert_eq!(w.revision(), 5);
}

#[test]
fn watch_from_zero_after_restart_lists_current_objects_as_added() {
    let mut f = fixture();
    f.create(pod("a", json!({}))).unwrap();
    f.create(pod("b", json!({}))).unwrap();
    let reopened = Store::open(&f.db, StoreConfig::default()).unwrap();
    let (initial, w) = reopened.watch(0, WatchFilter::default()).unwrap();
    let names: Vec<&str> = initial
        .iter()
        .map(|e| {
            e.object.as_ref().unwrap()["metadata"]["name"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(names, vec!["a", "b"]);
    assert_eq!(w.revision(), 2);
}

#[test]
fn dry_run_reports_the_result_without_committing() {
    let f = fixture();
    let reply = f.store.dry_run(Command {
        ops: vec![Op::Create {
            object: pod("a", json!({})),
            uid: "u".into(),
        }],
        now: now(),
        node_ports: NodePortRange::default(),
        networks: Default::default(),
        check_namespaces: false,
        atomic: false,
    });
    assert_eq!(
        reply.results[0].as_ref().unwrap().object["metadata"]["name"],
        "a"
    );
    assert_eq!(f.store.revision(), 0);
    assert!(f.store.get(&key(Kind::Pod, "", "a")).is_err());
}

#[test]
fn node_port_range_parses_and_rejects_nonsense() {
    assert_eq!(
        "30000-32767".parse::<NodePortRange>().unwrap(),
        NodePortRange::default()
    );
    for bad in ["", "30000", "b-c", "5-4", "0-10", "1-70000"] {
        assert!(bad.parse::<NodePortRange>().is_err(), "{bad}");
    }
}

mod properties {
    //! A watcher's events, replayed into a cache, always equal a fresh list with the same
    //! selector; revisions arrive strictly increasing.
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[derive(Debug, Clone)]
    enum Step {
        Apply { name: u8, app: u8 },
        Relabel { name: u8, app: u8 },
        Delete { name: u8 },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u8..6, 0u8..3).prop_map(|(name, app)| Step::Apply { name, app }),
            (0u8..6, 0u8..3).prop_map(|(name, app)| Step::Relabel { name, app }),
            (0u8..6).prop_map(|name| Step::Delete { name }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn watch_events_replayed_into_a_cache_equal_the_list(
            steps in proptest::collection::vec(step(), 1..40),
            start_at in 0usize..10,
            sel in prop_oneof![Just("app=a0"), Just("app!=a1"), Just(""), Just("app in (a0,a2)")],
        ) {
            let mut f = fixture();
            let selector = Selector::parse(sel).unwrap();
            let mut watcher = None;
            let mut cache: BTreeMap<String, Value> = BTreeMap::new();
            let mut last_rev = 0;
            for (i, s) in steps.iter().enumerate() {
                if i == start_at.min(steps.len() - 1) {
                    // Start from a consistent list, like a reflector.
                    let (items, rev) = f.store.list(Kind::Pod, None, &selector).unwrap();
                    for it in items {
                        cache.insert(it["metadata"]["name"].as_str().unwrap().to_string(), (*it).clone());
                    }
                    last_rev = rev;
                    let filter = WatchFilter { kind: Some(Kind::Pod), namespace: None, selector: selector.clone() };
                    watcher = Some(f.store.watch(rev, filter).unwrap().1);
                }
                let name = |n: u8| format!("p{n}");
                match s {
                    Step::Apply { name: n, app } => {
                        let _ = f.apply_obj(pod(&name(*n), json!({"app": format!("a{app}")})));
                    }
                    Step::Relabel { name: n, app } => {
                        if let Ok(cur) = f.store.get(&key(Kind::Pod, "", &name(*n))) {
                            let mut u = (*cur).clone();
                            u["metadata"]["labels"] = json!({"app": format!("a{app}")});
                            f.run(Op::Update { object: u }).unwrap();
                        }
                    }
                    Step::Delete { name: n } => {
                        let _ = f.run(Op::Delete { grace_period_seconds: None, key: key(Kind::Pod, "", &name(*n)), resource_version: 0 });
                    }
                }
            }
            let mut w = watcher.unwrap();
            for ev in w.poll(usize::MAX).unwrap() {
                prop_assert!(ev.revision > last_rev, "revisions strictly increase");
                last_rev = ev.revision;
                let obj = ev.object.unwrap();
                let n = obj["metadata"]["name"].as_str().unwrap().to_string();
                match ev.event_type {
                    WatchEventType::Added => {
                        prop_assert!(cache.insert(n, (*obj).clone()).is_none(), "ADDED for a cached object");
                    }
                    WatchEventType::Modified => {
                        prop_assert!(cache.insert(n, (*obj).clone()).is_some(), "MODIFIED for an unknown object");
                    }
                    WatchEventType::Deleted => {
                        prop_assert!(cache.remove(&n).is_some(), "DELETED for an unknown object");
                    }
                    WatchEventType::Bookmark => {}
                }
            }
            let (items, _) = f.store.list(Kind::Pod, None, &selector).unwrap();
            let listed: BTreeMap<String, Value> = items
                .iter()
                .map(|v| (v["metadata"]["name"].as_str().unwrap().to_string(), (**v).clone()))
                .collect();
            prop_assert_eq!(cache, listed);
        }
    }
}

#[test]
fn a_nodes_status_update_applies_only_to_a_pod_bound_to_that_node_when_applied() {
    let mut f = fixture();
    let mut p = pod("a", json!({}));
    p["spec"]["nodeName"] = json!("n1");
    let created = f.create(p).unwrap().object;
    let rev = f.store.revision();
    let mut s = created.clone();
    s["status"] = json!({"phase": "Running"});
    let err = f
        .run(Op::UpdateStatus {
            object: s.clone(),
            bound_node: Some("n2".into()),
        })
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Forbidden(m) if m.contains("system:node:n2") && m.contains("bound to node n1")),
        "{err}"
    );
    assert_eq!(f.store.revision(), rev, "refused: nothing changed");
    let out = f
        .run(Op::UpdateStatus {
            object: s,
            bound_node: Some("n1".into()),
        })
        .unwrap()
        .object;
    assert_eq!(out["status"]["phase"], "Running");
    // A Node is never "a pod bound to" anyone.
    let node = json!({"kind": "Node", "metadata": {"name": "n1"}});
    f.create(node.clone()).unwrap();
    assert!(matches!(
        f.run(Op::UpdateStatus {
            object: node,
            bound_node: Some("n1".into()),
        }),
        Err(StoreError::Forbidden(_))
    ));
}

fn atomic_apply(f: &mut Fixture, objects: Vec<Value>) -> Vec<OpResult> {
    f.index += 1;
    let cmd = Command {
        ops: objects
            .into_iter()
            .enumerate()
            .map(|(i, object)| Op::Apply {
                object,
                uid: format!("uid-{}-{i}", f.index),
            })
            .collect(),
        now: now(),
        node_ports: NodePortRange::default(),
        networks: Default::default(),
        check_namespaces: false,
        atomic: true,
    };
    Reply::decode(&f.store.apply(f.index, &cmd.encode()))
        .unwrap()
        .results
}

#[test]
fn atomic_command_whose_third_op_conflicts_applies_nothing() {
    let mut f = fixture();
    f.create(pod("c", json!({}))).unwrap();
    let before = f.store.revision();
    let mut stale = pod("c", json!({"v": "2"}));
    stale["metadata"]["resourceVersion"] = json!("999");
    let results = atomic_apply(
        &mut f,
        vec![pod("a", json!({})), pod("b", json!({})), stale],
    );
    assert!(
        matches!(&results[2], Err(StoreError::Conflict { .. })),
        "{:?}",
        results[2]
    );
    for r in &results[..2] {
        match r {
            Err(e @ StoreError::NotApplied { failed }) => {
                assert_eq!(failed, &vec![2]);
                assert!(e.to_string().contains("object 3"), "{e}");
            }
            other => panic!("expected NotApplied, got {other:?}"),
        }
    }
    assert_eq!(f.store.revision(), before, "revision must not move");
    assert!(f.store.get(&key(Kind::Pod, "", "a")).is_err());
    assert!(f.store.get(&key(Kind::Pod, "", "b")).is_err());
    // The entry still counts as applied, and the store keeps working.
    assert_eq!(f.store.applied_index(), f.index);
    f.create(pod("d", json!({}))).unwrap();
    assert_eq!(f.store.revision(), before + 1);
}

#[test]
fn atomic_command_rolls_back_only_itself_within_a_batch_of_entries() {
    let f = fixture();
    let entry = |ops: Vec<Op>, atomic: bool| {
        Command {
            ops,
            now: now(),
            node_ports: NodePortRange::default(),
            networks: Default::default(),
            check_namespaces: false,
            atomic,
        }
        .encode()
    };
    let create = |name: &str| Op::Create {
        object: pod(name, json!({})),
        uid: format!("u-{name}"),
    };
    let first = entry(vec![create("x")], false);
    // "x" exists by then: the second entry fails as a whole, "y" included.
    let second = entry(vec![create("y"), create("x")], true);
    let third = entry(vec![create("z")], false);
    let replies = f
        .store
        .apply_batch(&[(1, &first), (2, &second), (3, &third)]);
    let second = Reply::decode(&replies[1]).unwrap();
    assert!(matches!(
        second.results[0],
        Err(StoreError::NotApplied { .. })
    ));
    assert!(matches!(
        second.results[1],
        Err(StoreError::AlreadyExists { .. })
    ));
    assert!(f.store.get(&key(Kind::Pod, "", "x")).is_ok());
    assert!(f.store.get(&key(Kind::Pod, "", "y")).is_err());
    let z = f.store.get(&key(Kind::Pod, "", "z")).unwrap();
    assert_eq!(f.store.revision(), 2);
    assert_eq!(z["metadata"]["resourceVersion"], "2");
}

#[test]
fn atomic_command_that_succeeds_applies_every_op() {
    let mut f = fixture();
    let results = atomic_apply(&mut f, vec![pod("a", json!({})), pod("b", json!({}))]);
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    assert_eq!(f.store.revision(), 2);
    assert!(f.store.get(&key(Kind::Pod, "", "b")).is_ok());
}

#[test]
fn atomic_dry_run_reports_every_error_and_commits_nothing() {
    let f = fixture();
    let reply = f.store.dry_run(Command {
        ops: vec![
            Op::Create {
                object: pod("a", json!({})),
                uid: "u1".into(),
            },
            Op::Create {
                object: pod("a", json!({})),
                uid: "u2".into(),
            },
        ],
        now: now(),
        node_ports: NodePortRange::default(),
        networks: Default::default(),
        check_namespaces: false,
        atomic: true,
    });
    assert!(matches!(
        reply.results[0],
        Err(StoreError::NotApplied { .. })
    ));
    assert!(matches!(
        reply.results[1],
        Err(StoreError::AlreadyExists { .. })
    ));
    assert_eq!(f.store.revision(), 0);
}

fn service_with(name: &str, spec_extra: Value) -> Value {
    let mut s = service(name, json!([{"port": 80}]));
    if let (Some(spec), Some(extra)) = (s["spec"].as_object_mut(), spec_extra.as_object()) {
        for (k, v) in extra {
            spec.insert(k.clone(), v.clone());
        }
    }
    s
}

#[test]
fn cluster_ips_are_allocated_once_kept_immutable_and_freed_on_delete() {
    let mut f = fixture();
    let a = f
        .create(service("a", json!([{"port": 80}])))
        .unwrap()
        .object;
    assert_eq!(a["spec"]["clusterIP"], "10.43.0.1");
    assert_eq!(a["spec"]["clusterIPs"], json!(["10.43.0.1"]));
    let b = f
        .create(service("b", json!([{"port": 80}])))
        .unwrap()
        .object;
    assert_eq!(b["spec"]["clusterIP"], "10.43.0.2");

    // Re-applying the manifest (no clusterIP) keeps it: unchanged.
    let out = f.apply_obj(service("a", json!([{"port": 80}]))).unwrap();
    assert_eq!(out.outcome, Some(ApplyOutcome::Unchanged));
    // Changing it is refused, as Kubernetes does.
    let err = f
        .apply_obj(service_with("a", json!({"clusterIP": "10.43.0.9"})))
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Address(m) if m.contains("spec.clusterIP: field is immutable (it is 10.43.0.1")),
        "{err}"
    );
    // A given IP: in range and free, else refused naming the owner or the range.
    let err = f
        .create(service_with("c", json!({"clusterIP": "10.43.0.2"})))
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Address(m) if m.contains("already allocated to Service \"b\"")),
        "{err}"
    );
    let err = f
        .create(service_with("c", json!({"clusterIP": "10.99.0.2"})))
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Address(m) if m.contains("not in the service range 10.43.0.0/16 (--service-cidr)")),
        "{err}"
    );
    let c = f
        .create(service_with("c", json!({"clusterIP": "10.43.7.7"})))
        .unwrap()
        .object;
    assert_eq!(c["spec"]["clusterIP"], "10.43.7.7");
    // Headless: no virtual IP, no node ports.
    let h = f
        .create(service_with("h", json!({"clusterIP": "None"})))
        .unwrap()
        .object;
    assert_eq!(h["spec"]["clusterIP"], "None");
    assert!(h["spec"]["ports"][0].get("nodePort").is_none(), "{h}");
    // Deleting a frees its address for the next Service.
    f.run(Op::Delete {
        grace_period_seconds: None,
        key: key(Kind::Service, "default", "a"),
        resource_version: 0,
    })
    .unwrap();
    let d = f
        .create(service("d", json!([{"port": 80}])))
        .unwrap()
        .object;
    assert_eq!(d["spec"]["clusterIP"], "10.43.0.1");
}

#[test]
fn nodes_get_a_pod_cidr_each_kept_across_re_registration_and_released_on_delete() {
    let mut f = fixture();
    let node = |name: &str| json!({"kind": "Node", "metadata": {"name": name}, "spec": {}});
    let n1 = f.apply_obj(node("n1")).unwrap().object;
    assert_eq!(n1["spec"]["podCIDR"], "10.42.0.0/24");
    assert_eq!(n1["spec"]["podCIDRs"], json!(["10.42.0.0/24"]));
    let n2 = f.apply_obj(node("n2")).unwrap().object;
    assert_eq!(n2["spec"]["podCIDR"], "10.42.1.0/24");
    // The agent re-applies its Node without podCIDR: it keeps its block.
    let again = f.apply_obj(node("n1")).unwrap();
    assert_eq!(again.outcome, Some(ApplyOutcome::Unchanged));
    assert_eq!(again.object["spec"]["podCIDR"], "10.42.0.0/24");
    // A given block overlapping another node's is refused.
    let err = f
        .apply_obj(json!({"kind": "Node", "metadata": {"name": "n3"}, "spec": {"podCIDR": "10.42.1.0/25"}}))
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Address(m) if m.contains("overlaps the pod CIDR of Node \"n2\"")),
        "{err}"
    );
    f.run(Op::Delete {
        grace_period_seconds: None,
        key: key(Kind::Node, "", "n1"),
        resource_version: 0,
    })
    .unwrap();
    let n3 = f.apply_obj(node("n3")).unwrap().object;
    assert_eq!(
        n3["spec"]["podCIDR"], "10.42.0.0/24",
        "n1's block is free again"
    );
}

mod address_props {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum AddrStep {
        Service { name: u8, given: Option<u8> },
        Node { name: u8 },
        DeleteService { name: u8 },
        DeleteNode { name: u8 },
        Reopen,
    }

    fn addr_step() -> impl Strategy<Value = AddrStep> {
        prop_oneof![
            (0u8..8, proptest::option::of(1u8..6))
                .prop_map(|(name, given)| AddrStep::Service { name, given }),
            (0u8..6).prop_map(|name| AddrStep::Node { name }),
            (0u8..8).prop_map(|name| AddrStep::DeleteService { name }),
            (0u8..6).prop_map(|name| AddrStep::DeleteNode { name }),
            Just(AddrStep::Reopen),
        ]
    }

    /// Live addresses: (service cluster IPs, node pod CIDRs).
    fn addresses(s: &Store) -> (Vec<String>, Vec<String>) {
        let all = Selector::parse("").unwrap();
        let ips = s.list(Kind::Service, None, &all).unwrap().0;
        let cidrs = s.list(Kind::Node, None, &all).unwrap().0;
        (
            ips.iter()
                .filter_map(|v| v["spec"]["clusterIP"].as_str().map(str::to_string))
                .collect(),
            cidrs
                .iter()
                .filter_map(|v| v["spec"]["podCIDR"].as_str().map(str::to_string))
                .collect(),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Whatever the order of creates, re-applies, deletes and restarts, no two live objects
        /// hold one address, every live object holds one, and a second member applying the
        /// same entries (another server; a new leader) ends with exactly the same allocation.
        #[test]
        fn addresses_are_never_shared_and_every_member_allocates_the_same(
            steps in proptest::collection::vec(addr_step(), 1..40),
        ) {
            let mut a = fixture();
            let b = fixture();
            let mut entries: Vec<Vec<u8>> = Vec::new();
            for s in &steps {
                let op = match s {
                    AddrStep::Service { name, given } => {
                        let mut v = service(&format!("s{name}"), json!([{"port": 80}]));
                        if let Some(g) = given {
                            v["spec"]["clusterIP"] = json!(format!("10.43.0.{g}"));
                        }
                        Op::Apply { object: v, uid: format!("u{}", entries.len()) }
                    }
                    AddrStep::Node { name } => Op::Apply {
                        object: json!({"kind": "Node", "metadata": {"name": format!("n{name}")}, "spec": {}}),
                        uid: format!("u{}", entries.len()),
                    },
                    AddrStep::DeleteService { name } => Op::Delete { grace_period_seconds: None, key: key(Kind::Service, "default", &format!("s{name}")), resource_version: 0 },
                    AddrStep::DeleteNode { name } => Op::Delete { grace_period_seconds: None, key: key(Kind::Node, "", &format!("n{name}")), resource_version: 0 },
                    AddrStep::Reopen => {
                        // A restart: the store reloads from sled and goes on.
                        a.store = Store::open(&a.db, StoreConfig::default()).unwrap();
                        continue;
                    }
                };
                let cmd = Command { ops: vec![op], atomic: false, now: now(), node_ports: NodePortRange::default(), networks: Default::default(), check_namespaces: false };
                a.index += 1;
                let _ = a.store.apply(a.index, &cmd.encode());
                entries.push(cmd.encode());
                let (ips, cidrs) = addresses(&a.store);
                let live_services = a.store.list(Kind::Service, None, &Selector::parse("").unwrap()).unwrap().0.len();
                let live_nodes = a.store.list(Kind::Node, None, &Selector::parse("").unwrap()).unwrap().0.len();
                prop_assert_eq!(ips.len(), live_services);
                prop_assert_eq!(cidrs.len(), live_nodes);
                let uniq: std::collections::BTreeSet<_> = ips.iter().collect();
                prop_assert_eq!(uniq.len(), ips.len(), "duplicate cluster IP: {:?}", ips);
                let uniq: std::collections::BTreeSet<_> = cidrs.iter().collect();
                prop_assert_eq!(uniq.len(), cidrs.len(), "duplicate pod CIDR: {:?}", cidrs);
            }
            for (i, e) in entries.iter().enumerate() {
                b.store.apply(i as u64 + 1, e);
            }
            prop_assert_eq!(addresses(&a.store), addresses(&b.store));
        }
    }
}

fn namespace(name: &str) -> Value {
    json!({ "kind": "Namespace", "metadata": { "name": name } })
}

fn in_ns(mut v: Value, ns: &str) -> Value {
    v["metadata"]["namespace"] = json!(ns);
    v
}

#[test]
fn creating_in_a_missing_namespace_is_refused_and_system_namespaces_always_accept() {
    let mut f = fixture();
    f.check_namespaces = true;
    let err = f.create(in_ns(pod("a", json!({})), "team-a")).unwrap_err();
    assert_eq!(
        err,
        StoreError::NamespaceNotFound {
            namespace: "team-a".into()
        }
    );
    assert!(
        err.to_string()
            .starts_with("namespaces \"team-a\" not found"),
        "{err}"
    );
    // Server-side apply that would create is refused the same way.
    assert!(matches!(
        f.apply_obj(in_ns(pod("a", json!({})), "team-a")),
        Err(StoreError::NamespaceNotFound { .. })
    ));
    // default and berth-system exist from init, even before their objects are written.
    f.create(pod("a", json!({}))).unwrap();
    f.create(in_ns(pod("a", json!({})), "berth-system"))
        .unwrap();
    let ns = f.create(namespace("team-a")).unwrap().object;
    assert_eq!(ns["status"]["phase"], "Active");
    assert_eq!(ns["spec"]["finalizers"], json!(["kubernetes"]));
    f.create(in_ns(pod("a", json!({})), "team-a")).unwrap();
    // Entries written before Namespaces existed do not check (same result on every member).
    f.check_namespaces = false;
    f.create(in_ns(pod("a", json!({})), "legacy")).unwrap();
}

#[test]
fn deleting_a_namespace_terminates_it_refuses_new_content_and_removes_it_once_empty() {
    let mut f = fixture();
    f.check_namespaces = true;
    f.create(namespace("team-a")).unwrap();
    f.create(in_ns(pod("a", json!({})), "team-a")).unwrap();
    let del = |f: &mut Fixture, kind, ns: &str, name: &str| {
        f.run(Op::Delete {
            grace_period_seconds: None,
            key: ObjectKey::new(kind, ns, name),
            resource_version: 0,
        })
    };
    let out = del(&mut f, Kind::Namespace, "", "team-a").unwrap().object;
    assert_eq!(out["status"]["phase"], "Terminating");
    assert!(out["metadata"]["deletionTimestamp"].is_string());
    let stored = f
        .store
        .get(&ObjectKey::new(Kind::Namespace, "", "team-a"))
        .unwrap();
    assert_eq!(stored["status"]["phase"], "Terminating");
    let err = f.create(in_ns(pod("b", json!({})), "team-a")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "unable to create new content in namespace team-a because it is being terminated"
    );
    // Updating what is already there still works (status writes while it drains).
    let mut p = (*f
        .store
        .get(&ObjectKey::new(Kind::Pod, "team-a", "a"))
        .unwrap())
    .clone();
    p["metadata"]["labels"] = json!({"x": "y"});
    f.run(Op::Update { object: p }).unwrap();
    // Content left: deleting again keeps it.
    del(&mut f, Kind::Namespace, "", "team-a").unwrap();
    assert!(f
        .store
        .get(&ObjectKey::new(Kind::Namespace, "", "team-a"))
        .is_ok());
    del(&mut f, Kind::Pod, "team-a", "a").unwrap();
    del(&mut f, Kind::Namespace, "", "team-a").unwrap();
    assert!(matches!(
        f.store.get(&ObjectKey::new(Kind::Namespace, "", "team-a")),
        Err(StoreError::NotFound { .. })
    ));
}

#[test]
fn system_namespaces_cannot_be_deleted_and_writes_keep_a_namespace_spec() {
    let mut f = fixture();
    f.check_namespaces = true;
    for name in ["default", "berth-system", "kube-system"] {
        f.create(namespace(name)).unwrap();
        let err = f
            .run(Op::Delete {
                grace_period_seconds: None,
                key: ObjectKey::new(Kind::Namespace, "", name),
                resource_version: 0,
            })
            .unwrap_err();
        assert_eq!(
            err,
            StoreError::Forbidden("this namespace may not be deleted".into())
        );
    }
    // A re-applied manifest without spec keeps the finalizer.
    let out = f
        .apply_obj(
            json!({ "kind": "Namespace", "metadata": { "name": "default", "labels": {"a": "b"} } }),
        )
        .unwrap()
        .object;
    assert_eq!(out["spec"]["finalizers"], json!(["kubernetes"]));
    assert_eq!(out["metadata"]["labels"]["a"], "b");
}

#[test]
fn sealed_secrets_use_only_keyring_keys_and_the_keyring_keeps_keys_in_use() {
    let mut f = fixture();
    let ring = |keys: Value| {
        json!({"kind": "Secret", "metadata": {"name": "secrets-encryption-keys",
            "namespace": "berth-system", "annotations": {
                "secrets-encryption.berth.dev/write-key": "key1"}}, "data": keys})
    };
    let sealed = |name: &str, key: &str| {
        json!({"kind": "Secret", "metadata": {"name": name},
            "data": {"a": format!("k8s:enc:aesgcm:v1:{key}:AAAA")}})
    };
    // No keyring yet: a sealed value cannot be stored.
    assert!(matches!(
        f.create(sealed("s0", "key1")),
        Err(StoreError::Invalid(_))
    ));
    f.create(ring(json!({"key1": "eA=="}))).unwrap();
    f.create(sealed("s1", "key1")).unwrap();
    let e = f.create(sealed("s2", "key9")).unwrap_err();
    assert!(
        e.to_string()
            .contains("key \"key9\", which is no longer in the"),
        "{e}"
    );
    // Dropping key1 while s1 uses it is refused; after s1 moves to key2 it is allowed.
    let e = f.apply_obj(ring(json!({"key2": "eA=="}))).unwrap_err();
    assert!(e.to_string().contains("may not drop key \"key1\""), "{e}");
    f.apply_obj(ring(json!({"key1": "eA==", "key2": "eA=="})))
        .unwrap();
    f.apply_obj(sealed("s1", "key2")).unwrap();
    f.apply_obj(ring(json!({"key2": "eA=="}))).unwrap();
}

fn bound_pod(name: &str, node: &str, grace: Option<i64>) -> Value {
    let mut p = pod(name, json!({}));
    p["metadata"]["namespace"] = json!("default");
    p["spec"]["nodeName"] = json!(node);
    if let Some(g) = grace {
        p["spec"]["terminationGracePeriodSeconds"] = json!(g);
    }
    p
}

fn delete_pod(f: &mut Fixture, name: &str, grace: Option<i64>) -> OpResult {
    f.run(Op::Delete {
        key: key(Kind::Pod, "default", name),
        resource_version: 0,
        grace_period_seconds: grace,
    })
}

#[test]
fn deleting_a_bound_pod_marks_it_terminating_with_its_grace_period() {
    let mut f = fixture();
    f.create(json!({"kind": "Node", "metadata": {"name": "n1"}}))
        .unwrap();
    f.create(bound_pod("web", "n1", Some(20))).unwrap();
    let out = delete_pod(&mut f, "web", None).unwrap().object;
    let want = (now() + chrono::Duration::seconds(20))
        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
    let got: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(out["metadata"]["deletionTimestamp"].clone()).unwrap();
    assert_eq!(
        got.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        want
    );
    assert_eq!(out["metadata"]["deletionGracePeriodSeconds"], 20);
    let k = key(Kind::Pod, "default", "web");
    assert!(
        f.store.get(&k).is_ok(),
        "still stored until its node finishes it"
    );
    // A second delete with the same or a longer grace period changes nothing.
    let before = rv(&f.store.get(&k).unwrap());
    delete_pod(&mut f, "web", Some(60)).unwrap();
    assert_eq!(rv(&f.store.get(&k).unwrap()), before);
    // A shorter one shortens it; grace 0 removes it (the node's final delete, or --force).
    let out = delete_pod(&mut f, "web", Some(5)).unwrap().object;
    assert_eq!(out["metadata"]["deletionGracePeriodSeconds"], 5);
    delete_pod(&mut f, "web", Some(0)).unwrap();
    assert!(matches!(f.store.get(&k), Err(StoreError::NotFound { .. })));
}

#[test]
fn unbound_finished_and_orphaned_pods_are_deleted_at_once() {
    let mut f = fixture();
    f.create(json!({"kind": "Node", "metadata": {"name": "n1"}}))
        .unwrap();
    let mut unbound = bound_pod("unbound", "", None);
    unbound["spec"].as_object_mut().unwrap().remove("nodeName");
    f.create(unbound).unwrap();
    f.create(bound_pod("lost", "gone-node", None)).unwrap();
    f.create(bound_pod("done", "n1", None)).unwrap();
    let mut done = f
        .store
        .get(&key(Kind::Pod, "default", "done"))
        .unwrap()
        .as_ref()
        .clone();
    done["status"] = json!({"phase": "Succeeded"});
    f.run(Op::UpdateStatus {
        object: done,
        bound_node: None,
    })
    .unwrap();
    for name in ["unbound", "lost", "done"] {
        delete_pod(&mut f, name, None).unwrap();
        assert!(
            matches!(
                f.store.get(&key(Kind::Pod, "default", name)),
                Err(StoreError::NotFound { .. })
            ),
            "{name} is removed at once"
        );
    }
}
