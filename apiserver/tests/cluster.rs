//! In-process 3-member clusters: failover, restart + catch-up (log and snapshot), and watches
//! that survive the loss of the member they were opened on.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use berth_apiserver::testing::{wait_until, TestCluster};
use berth_proto::pb::{self, api_client::ApiClient};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::Code;

const T: Duration = Duration::from_secs(30);

fn pod(name: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "kind": "Pod",
        "metadata": { "name": name },
        "spec": { "containers": [{ "name": "c", "image": "nginx" }] }
    }))
    .unwrap()
}

fn rv(b: &[u8]) -> u64 {
    let v: Value = serde_json::from_slice(b).unwrap();
    v["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Create a pod through any running member, retrying across members (and treating an
/// AlreadyExists after a retry as success: the first attempt committed). Returns its revision.
async fn create_anywhere(cluster: &TestCluster, name: &str) -> u64 {
    let deadline = tokio::time::Instant::now() + T;
    let mut retried = false;
    loop {
        for i in 0..cluster.len() {
            if !cluster.is_running(i) {
                continue;
            }
            let Ok(mut c) = cluster.client(i).await else {
                continue;
            };
            let req = pb::CreateRequest {
                object: pod(name),
                dry_run: false,
            };
            match tokio::time::timeout(Duration::from_secs(12), c.create(req)).await {
                Ok(Ok(r)) => return rv(&r.into_inner().object),
                Ok(Err(s)) if s.code() == Code::AlreadyExists && retried => {
                    return rv(&get_on(&mut c, name).await.unwrap());
                }
                Ok(Err(s)) => {
                    assert!(
                        matches!(
                            s.code(),
                            Code::Unavailable
                                | Code::DeadlineExceeded
                                | Code::Unknown
                                | Code::Cancelled
                        ),
                        "unexpected error creating {name}: {s:?}"
                    );
                }
                Err(_) => {}
            }
            retried = true;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "could not create {name} on any member"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Like [`create_anywhere`] over plain addresses (usable from a spawned task).
async fn create_via(addrs: &[SocketAddr], tls: &berth_tls::ClientTls, name: &str) -> u64 {
    let deadline = tokio::time::Instant::now() + T;
    let mut retried = false;
    loop {
        for addr in addrs {
            let Ok(mut c) = berth_apiserver::testing::client(*addr, tls).await else {
                continue;
            };
            let req = pb::CreateRequest {
                object: pod(name),
                dry_run: false,
            };
            match tokio::time::timeout(Duration::from_secs(12), c.create(req)).await {
                Ok(Ok(r)) => return rv(&r.into_inner().object),
                Ok(Err(s)) if s.code() == Code::AlreadyExists && retried => {
                    if let Ok(b) = get_on(&mut c, name).await {
                        return rv(&b);
                    }
                }
                _ => {}
            }
            retried = true;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "could not create {name} on any member"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn get_on(c: &mut ApiClient<Channel>, name: &str) -> Result<Vec<u8>, tonic::Status> {
    c.get(pb::GetRequest {
        key: Some(pb::ObjectKey {
            kind: "Pod".into(),
            namespace: String::new(),
            name: name.into(),
        }),
    })
    .await
    .map(|r| r.into_inner().object)
}

async fn revision_of(cluster: &TestCluster, i: usize) -> u64 {
    cluster.server(i).unwrap().store().revision()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_continue_on_survivors_after_the_leader_is_stopped() {
    let mut cluster = TestCluster::start(3).await.unwrap();
    let leader = cluster.wait_for_leader(T).await.unwrap();
    let follower = (leader + 1) % 3;
    // A write through a follower is forwarded to the leader.
    let mut fc = cluster.client(follower).await.unwrap();
    let r = fc
        .create(pb::CreateRequest {
            object: pod("before"),
            dry_run: false,
        })
        .await
        .unwrap();
    let before_rv = rv(&r.into_inner().object);
    let status = fc
        .cluster_status(pb::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.members.len(), 3);

    cluster.stop(leader).await.unwrap();
    let new_leader = cluster.wait_for_leader(T).await.unwrap();
    assert_ne!(new_leader, leader);
    let after_rv = create_anywhere(&cluster, "after").await;
    assert!(after_rv > before_rv);
    // Both survivors serve both objects (linearizable reads via read_index).
    for i in (0..3).filter(|i| *i != leader) {
        let mut c = cluster.client(i).await.unwrap();
        get_on(&mut c, "before").await.unwrap();
        get_on(&mut c, "after").await.unwrap();
    }
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_member_restarts_from_its_data_dir_and_catches_up() {
    let mut cluster = TestCluster::start(3).await.unwrap();
    let leader = cluster.wait_for_leader(T).await.unwrap();
    let victim = (leader + 1) % 3;
    create_anywhere(&cluster, "p0").await;
    cluster.stop(victim).await.unwrap();
    let mut last = 0;
    for i in 1..=10 {
        last = create_anywhere(&cluster, &format!("p{i}")).await;
    }
    cluster.restart(victim).await.unwrap();
    wait_until(T, "the restarted member to catch up", || async {
        (revision_of(&cluster, victim).await >= last).then_some(())
    })
    .await
    .unwrap();
    let mut c = cluster.client(victim).await.unwrap();
    get_on(&mut c, "p10").await.unwrap();
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_far_behind_catches_up_through_a_snapshot() {
    let mut cluster = TestCluster::start_with(3, |a| a.snapshot_threshold = 8)
        .await
        .unwrap();
    let leader = cluster.wait_for_leader(T).await.unwrap();
    let victim = (leader + 1) % 3;
    let p0 = create_anywhere(&cluster, "p0").await;
    wait_until(T, "the victim to apply p0", || async {
        (revision_of(&cluster, victim).await >= p0).then_some(())
    })
    .await
    .unwrap();
    let at_stop = revision_of(&cluster, victim).await;
    cluster.stop(victim).await.unwrap();
    let mut last = 0;
    for i in 1..=40 {
        last = create_anywhere(&cluster, &format!("p{i}")).await;
    }
    // Delete one while the member is away: the snapshot must not resurrect it.
    let mut c = cluster
        .client(cluster.wait_for_leader(T).await.unwrap())
        .await
        .unwrap();
    let deleted = c
        .delete(pb::DeleteRequest {
            grace_period_seconds: None,
            key: Some(pb::ObjectKey {
                kind: "Pod".into(),
                namespace: String::new(),
                name: "p0".into(),
            }),
            resource_version: 0,
        })
        .await
        .unwrap();
    last = last.max(rv(&deleted.into_inner().object));
    cluster.restart(victim).await.unwrap();
    wait_until(T, "the restarted member to catch up", || async {
        (revision_of(&cluster, victim).await >= last).then_some(())
    })
    .await
    .unwrap();
    let store = cluster.server(victim).unwrap().store().clone();
    // A snapshot restore restarts the watch history at the snapshot's revision; replaying the
    // log would have kept it at the revision the member stopped at.
    assert!(
        store.oldest_watchable_revision() > at_stop,
        "expected catch-up through a snapshot (history starts at {}, stopped at {at_stop})",
        store.oldest_watchable_revision()
    );
    let (pods, _) = store
        .list(
            berth_proto::Kind::Pod,
            None,
            &berth_proto::selector::Selector::everything(),
        )
        .unwrap();
    assert_eq!(pods.len(), 40);
    let mut c = cluster.client(victim).await.unwrap();
    assert_eq!(
        get_on(&mut c, "p0").await.unwrap_err().code(),
        Code::NotFound
    );
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumed_on_another_member_sees_every_revision_exactly_once() {
    let mut cluster = TestCluster::start(3).await.unwrap();
    let leader = cluster.wait_for_leader(T).await.unwrap();
    let first = create_anywhere(&cluster, "w0").await;
    let addrs: Vec<SocketAddr> = (0..3).map(|i| cluster.addr(i)).collect();

    // Watch on the leader, which is stopped while a writer keeps writing.
    let mut c = cluster.client(leader).await.unwrap();
    let mut stream = c
        .watch(pb::WatchRequest {
            kind: "Pod".into(),
            namespace: String::new(),
            label_selector: String::new(),
            from_revision: first,
        })
        .await
        .unwrap()
        .into_inner();
    let stop_writer = CancellationToken::new();
    let writer = tokio::spawn({
        let stop = stop_writer.clone();
        let tls = cluster.admin_tls();
        async move {
            let mut last = 0;
            let mut i = 1;
            while !stop.is_cancelled() {
                last = create_via(&addrs, &tls, &format!("w{i}")).await;
                i += 1;
            }
            last
        }
    });

    let mut seen: Vec<u64> = Vec::new();
    let mut last_seen = first;
    let mut record = |ev: pb::WatchEvent, seen: &mut Vec<u64>| {
        if ev.r#type() != pb::EventType::Bookmark {
            seen.push(ev.revision);
        }
        last_seen = last_seen.max(ev.revision);
        last_seen
    };
    while seen.len() < 5 {
        let ev = tokio::time::timeout(T, stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        record(ev, &mut seen);
    }
    cluster.stop(leader).await.unwrap();
    // The stream ends (error or close) rather than hanging.
    let drained = tokio::time::timeout(T, async {
        let mut resume_from = 0;
        while let Ok(Some(ev)) = stream.message().await {
            resume_from = record(ev, &mut seen);
        }
        resume_from
    })
    .await
    .expect("the watch stream ended after its server stopped");
    let resume_from = drained.max(*seen.last().unwrap());

    // Resume on a survivor from the last revision seen, while writes continue.
    let survivor = (0..3).find(|i| cluster.is_running(*i)).unwrap();
    let mut c = cluster.client(survivor).await.unwrap();
    let mut stream = c
        .watch(pb::WatchRequest {
            kind: "Pod".into(),
            namespace: String::new(),
            label_selector: String::new(),
            from_revision: resume_from,
        })
        .await
        .unwrap()
        .into_inner();
    let target = seen.len() + 10;
    while seen.len() < target {
        let ev = tokio::time::timeout(T, stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        record(ev, &mut seen);
    }
    stop_writer.cancel();
    let last = writer.await.unwrap();
    while seen.last().copied().unwrap_or(0) < last {
        let ev = tokio::time::timeout(T, stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        record(ev, &mut seen);
    }
    let unique: BTreeSet<u64> = seen.iter().copied().collect();
    assert_eq!(
        unique.len(),
        seen.len(),
        "a revision was delivered twice: {seen:?}"
    );
    let expected: Vec<u64> = (first + 1..=last).collect();
    assert_eq!(seen, expected, "every revision exactly once, in order");
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_joins_through_a_follower_and_can_be_removed() {
    let mut cluster = TestCluster::start(2).await.unwrap();
    let leader = cluster.wait_for_leader(T).await.unwrap();
    let follower = 1 - leader;
    let rev = create_anywhere(&cluster, "x").await;
    let new = cluster.add_member(follower).await.unwrap();
    wait_until(T, "the new member to catch up", || async {
        (revision_of(&cluster, new).await >= rev).then_some(())
    })
    .await
    .unwrap();
    let mut c = cluster.client(new).await.unwrap();
    let status = c
        .cluster_status(pb::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.members.len(), 3);
    let new_id = status.id;
    get_on(&mut c, "x").await.unwrap();
    // The same address cannot join twice.
    let again = fc_join(&cluster, follower, cluster.addr(new))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists, "{again:?}");

    // Remove it again, asking a follower (forwarded to the leader).
    let mut fc = cluster.client(follower).await.unwrap();
    fc.remove_member(pb::RemoveMemberRequest { id: new_id })
        .await
        .unwrap();
    wait_until(T, "the member list to shrink", || {
        let mut fc = fc.clone();
        async move {
            let s = fc
                .cluster_status(pb::ClusterStatusRequest {})
                .await
                .ok()?
                .into_inner();
            (s.members.len() == 2 && s.members.iter().all(|m| m.id != new_id)).then_some(())
        }
    })
    .await
    .unwrap();
    let err = fc
        .remove_member(pb::RemoveMemberRequest { id: 999 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    cluster.shutdown().await.unwrap();
}

async fn fc_join(
    cluster: &TestCluster,
    via: usize,
    addr: std::net::SocketAddr,
) -> Result<pb::JoinResponse, tonic::Status> {
    let mut c = cluster.client(via).await.unwrap();
    c.join(pb::JoinRequest {
        address: addr.to_string(),
    })
    .await
    .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_through_every_member_get_distinct_revisions() {
    let cluster = TestCluster::start(3).await.unwrap();
    cluster.wait_for_leader(T).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for m in 0..3 {
        for w in 0..2 {
            let mut c = cluster.client(m).await.unwrap();
            tasks.spawn(async move {
                let mut revs = Vec::new();
                for i in 0..25 {
                    let r = c
                        .create(pb::CreateRequest {
                            object: pod(&format!("m{m}-w{w}-{i}")),
                            dry_run: false,
                        })
                        .await
                        .unwrap();
                    revs.push(rv(&r.into_inner().object));
                }
                revs
            });
        }
    }
    let mut all = BTreeSet::new();
    while let Some(r) = tasks.join_next().await {
        for rev in r.unwrap() {
            assert!(all.insert(rev), "revision {rev} given twice");
        }
    }
    assert_eq!(all.len(), 150);
    assert_eq!(*all.iter().next().unwrap(), 1);
    assert_eq!(*all.iter().last().unwrap(), 150, "revisions are contiguous");
    for m in 0..3 {
        wait_until(T, "every member to apply every write", || async {
            (revision_of(&cluster, m).await == 150).then_some(())
        })
        .await
        .unwrap();
    }
    cluster.shutdown().await.unwrap();
}

/// `berth cluster move-leader` then `remove-member` while a writer keeps creating pods
/// through every member: every write acknowledged is on the members that stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_member_under_load_loses_no_acknowledged_write() {
    let cluster = TestCluster::start(3).await.unwrap();
    let leader = cluster.wait_for_leader(T).await.unwrap();
    let addrs: Vec<SocketAddr> = (0..3).map(|i| cluster.addr(i)).collect();
    let tls = cluster.admin_tls();
    let stop = CancellationToken::new();
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let count = || acked.lock().unwrap().len();
    let writer = {
        let (stop, addrs, tls, acked) = (stop.clone(), addrs.clone(), tls.clone(), acked.clone());
        tokio::spawn(async move {
            for n in 0.. {
                if stop.is_cancelled() {
                    break;
                }
                let name = format!("load-{n}");
                create_via(&addrs, &tls, &name).await;
                acked.lock().unwrap().push(name);
            }
        })
    };
    let ids: Vec<u64> = (0..3).map(|i| cluster.server(i).unwrap().id()).collect();
    // Move leadership to a follower, then remove the old leader (now a follower).
    let target = (leader + 1) % 3;
    let mut c = cluster.client(leader).await.unwrap();
    wait_until(T, "some writes before the change", || async {
        (count() > 10).then_some(())
    })
    .await
    .unwrap();
    let moved = c
        .move_leader(pb::MoveLeaderRequest { id: ids[target] })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(moved.leader_id, ids[target]);
    let mut nc = cluster.client(target).await.unwrap();
    nc.remove_member(pb::RemoveMemberRequest { id: ids[leader] })
        .await
        .unwrap();
    let stays: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    wait_until(T, "the member list to shrink", || {
        let mut nc = nc.clone();
        async move {
            let s = nc
                .cluster_status(pb::ClusterStatusRequest {})
                .await
                .ok()?
                .into_inner();
            (s.members.len() == 2).then_some(())
        }
    })
    .await
    .unwrap();
    let after = count();
    wait_until(T, "more writes after the removal", || async {
        (count() > after + 10).then_some(())
    })
    .await
    .unwrap();
    stop.cancel();
    writer.await.unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 20, "{} writes", acked.len());
    let last = revision_of(&cluster, target).await;
    for i in &stays {
        wait_until(T, "the survivors to apply everything", || async {
            (revision_of(&cluster, *i).await >= last).then_some(())
        })
        .await
        .unwrap();
        let mut c = cluster.client(*i).await.unwrap();
        for name in &acked {
            get_on(&mut c, name)
                .await
                .unwrap_or_else(|s| panic!("{name} acknowledged but missing on member {i}: {s:?}"));
        }
    }
    // The last member is never removed.
    let one = TestCluster::start(1).await.unwrap();
    let mut c = one.client(0).await.unwrap();
    let id = one.server(0).unwrap().id();
    let err = c
        .remove_member(pb::RemoveMemberRequest { id })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("last member"), "{}", err.message());
    one.shutdown().await.unwrap();
    cluster.shutdown().await.unwrap();
}

/// `berth snapshot save` on a loaded 3-member cluster, `berth server --restore FILE --init`
/// into a new cluster: every object is there with its uid and content (Secrets readable with
/// the old cluster's key), a member joining later replicates them, and a truncated file or
/// a missing key is refused before anything is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_restores_into_a_new_cluster_with_every_object() {
    use berth_apiserver::ServerArgs;
    let cluster = TestCluster::start(3).await.unwrap();
    cluster.wait_for_leader(T).await.unwrap();
    for n in 0..30 {
        create_anywhere(&cluster, &format!("snap-{n}")).await;
    }
    let mut admin = cluster.client(1).await.unwrap();
    admin
        .create(pb::CreateRequest {
            object: serde_json::to_vec(&json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "db", "namespace": "default"},
                "stringData": {"password": "hunter2"}
            }))
            .unwrap(),
            dry_run: false,
        })
        .await
        .unwrap();
    let mut stream = admin
        .snapshot(pb::SnapshotRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut body = Vec::new();
    while let Some(c) = stream.message().await.unwrap() {
        body.extend_from_slice(&c.data);
    }
    let file = berth_proto::snapshotfile::encode(&body).unwrap();
    let (header, _) = berth_proto::snapshotfile::decode(&file).unwrap();
    assert!(header.revision >= 31, "{header:?}");
    // A node may not take one.
    let node_tls = cluster
        .credential_for(&berth_tls::Identity::Node("n1".into()))
        .unwrap();
    let mut node = berth_apiserver::testing::client(cluster.addr(0), &node_tls)
        .await
        .unwrap();
    let err = node.snapshot(pb::SnapshotRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("backup.snap");
    let old_key = cluster
        .server(0)
        .unwrap()
        .data_dir()
        .join("pki/secrets-encryption.key");
    let args = |name: &str, file: &std::path::Path, key: bool| {
        let mut a = ServerArgs::new(dir.path().join(name));
        a.listen = "127.0.0.1:0".into();
        a.init = true;
        a.restore = Some(file.to_path_buf());
        a.restore_kek = key.then(|| old_key.clone());
        a
    };
    // Truncated: refused, nothing made.
    std::fs::write(&path, &file[..file.len() - 10]).unwrap();
    let err = berth_apiserver::start(args("cut", &path, true))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("truncated"), "{err}");
    std::fs::write(&path, &file).unwrap();
    let err = berth_apiserver::start(args("nokey", &path, false))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("--restore-secrets-key"), "{err}");

    let restored = berth_apiserver::start(args("new", &path, true))
        .await
        .unwrap();
    let conf = berth_tls::AdminConfig::read(&restored.admin_config_path()).unwrap();
    let new_admin =
        berth_tls::ClientTls::new(conf.certificate_authority.clone(), conf.credential());
    let mut nc = berth_apiserver::testing::client(restored.addr(), &new_admin)
        .await
        .unwrap();
    let mut old = cluster.client(0).await.unwrap();
    for n in 0..30 {
        let name = format!("snap-{n}");
        let a: Value = serde_json::from_slice(&get_on(&mut old, &name).await.unwrap()).unwrap();
        let b: Value = serde_json::from_slice(&get_on(&mut nc, &name).await.unwrap()).unwrap();
        assert_eq!(a["metadata"]["uid"], b["metadata"]["uid"], "{name}");
        assert_eq!(a["spec"], b["spec"], "{name}");
    }
    let secret: Value = serde_json::from_slice(
        &nc.get(pb::GetRequest {
            key: Some(pb::ObjectKey {
                kind: "Secret".into(),
                namespace: "default".into(),
                name: "db".into(),
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .object,
    )
    .unwrap();
    assert_eq!(
        secret["data"]["password"], "aHVudGVyMg==",
        "readable with the old key"
    );
    // A member joining the restored cluster replicates the restored objects.
    let mut join = ServerArgs::new(dir.path().join("second"));
    join.listen = "127.0.0.1:0".into();
    join.join = Some(restored.addr().to_string());
    join.token = Some(berth_tls::Secret::new(restored.join_token()));
    let second = berth_apiserver::start(join).await.unwrap();
    let mut sc = berth_apiserver::testing::client(second.addr(), &new_admin)
        .await
        .unwrap();
    wait_until(T, "the joiner to replicate the restored objects", || {
        let mut sc = sc.clone();
        async move { get_on(&mut sc, "snap-29").await.ok() }
    })
    .await
    .unwrap();
    get_on(&mut sc, "snap-0").await.unwrap();
    second.shutdown().await.unwrap();
    restored.shutdown().await.unwrap();
    cluster.shutdown().await.unwrap();
}
