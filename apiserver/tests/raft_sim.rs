//! Raft simulation tests: real nodes (raft task + sled storage) over an in-memory network
//! with injected faults. Invariants checked everywhere: no acknowledged write is lost,
//! duplicated or reordered, and every member applies the same log.
#![allow(clippy::unwrap_used)]

mod raft_common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use berth_apiserver::raft::{Bootstrap, RaftError, Role};
use raft_common::{
    assert_exactly_once, propose_concurrently, propose_retry, Opts, SimCluster, DEADLINE,
};
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_apply_concurrent_writes_in_one_order() {
    let c = SimCluster::start(3, Opts::default()).await;
    let handles: Vec<_> = [1, 2, 3].map(|id| c.handle(id).clone()).to_vec();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let handles = handles.clone();
        tasks.spawn(async move {
            let data = format!("w{i}");
            let reply = propose_retry(&handles, &data).await;
            (data, String::from_utf8(reply).unwrap())
        });
    }
    let mut acked = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let (data, reply) = r.unwrap();
        // The reply is what the state machine returned for exactly this entry.
        assert!(reply.ends_with(&format!(":{data}")), "{reply} vs {data}");
        acked.push(data);
    }
    let log = c.wait_converged(&[1, 2, 3]).await;
    assert_eq!(log.len(), 200);
    assert_exactly_once(&log, &acked);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_refuses_writes_and_names_the_leader() {
    let c = SimCluster::start(3, Opts::default()).await;
    let leader = c.wait_leader(&[1, 2, 3]).await;
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    match c.handle(follower).propose(b"x".to_vec()).await {
        Err(RaftError::NotLeader {
            leader_id,
            leader_addr,
        }) => {
            assert_eq!(leader_id, Some(leader));
            assert_eq!(leader_addr, Some(raft_common::addr(leader)));
        }
        other => panic!("expected NotLeader, got {other:?}"),
    }
    let st = c.handle(follower).status();
    assert_eq!(st.role, Role::Follower);
    assert_eq!(st.members.len(), 3);
    let lst = c.handle(leader).status();
    assert_eq!(lst.role, Role::Leader);
    assert!(lst
        .members
        .iter()
        .all(|m| m.matched.is_some() && m.reachable == Some(true)));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_index_on_a_follower_observes_every_acknowledged_write() {
    let c = SimCluster::start(3, Opts::default()).await;
    let leader = c.wait_leader(&[1, 2, 3]).await;
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    for i in 0..20 {
        let data = format!("r{i}");
        c.write(&[1, 2, 3], &data).await;
        // Linearizability: after the barrier the follower's state includes the acked write.
        c.handle(follower).read_index().await.unwrap();
        let log = c.members[&follower].sm.log_strings();
        assert_eq!(log.last(), Some(&data));
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_leader_is_replaced_and_no_committed_write_is_lost() {
    let c = SimCluster::start(5, Opts::default()).await;
    let all = [1, 2, 3, 4, 5];
    let mut acked = Vec::new();
    for i in 0..20 {
        let d = format!("a{i}");
        c.write(&all, &d).await;
        acked.push(d);
    }
    let old = c.wait_leader(&all).await;
    c.faults().isolate(old);
    // A proposal on the cut-off leader can never commit: it must fail, not hang.
    let stranded = c.handle(old).clone();
    let stranded_write = tokio::spawn(async move { stranded.propose(b"lost".to_vec()).await });
    let rest: Vec<u64> = all.iter().copied().filter(|id| *id != old).collect();
    let new = c.wait_leader(&rest).await;
    assert_ne!(new, old);
    for i in 0..20 {
        let d = format!("b{i}");
        c.write(&rest, &d).await;
        acked.push(d);
    }
    // check_quorum: the isolated leader steps down on its own.
    let deadline = Instant::now() + DEADLINE;
    while c.handle(old).status().role == Role::Leader {
        assert!(
            Instant::now() < deadline,
            "isolated leader never stepped down"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let res = stranded_write.await.unwrap();
    assert!(
        matches!(res, Err(RaftError::Dropped | RaftError::Timeout(_))),
        "{res:?}"
    );
    c.faults().reconnect(old);
    let log = c.wait_converged(&all).await;
    assert_exactly_once(&log, &acked);
    assert!(!log.contains(&"lost".to_string()));
    // Order: the writes were sequential, so the log must list them in that order.
    let ours: Vec<&String> = log.iter().filter(|e| acked.contains(e)).collect();
    assert_eq!(ours, acked.iter().collect::<Vec<_>>());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_message_loss_neither_loses_nor_reorders_writes() {
    let c = SimCluster::start(3, Opts::default()).await;
    let all = [1, 2, 3];
    c.faults().set_drop_rate(0.2);
    let mut acked = Vec::new();
    for i in 0..60 {
        let d = format!("d{i}");
        c.write(&all, &d).await;
        acked.push(d);
        if i % 10 == 0 {
            c.assert_logs_are_prefixes();
        }
    }
    c.faults().heal();
    let log = c.wait_converged(&all).await;
    assert_exactly_once(&log, &acked);
    let ours: Vec<&String> = log.iter().filter(|e| acked.contains(e)).collect();
    assert_eq!(ours, acked.iter().collect::<Vec<_>>());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_follower_catches_up_after_reconnecting() {
    let c = SimCluster::start(5, Opts::default()).await;
    let all = [1, 2, 3, 4, 5];
    let leader = c.wait_leader(&all).await;
    let lagger = all.into_iter().find(|id| *id != leader).unwrap();
    c.faults().isolate(lagger);
    let rest: Vec<u64> = all.iter().copied().filter(|id| *id != lagger).collect();
    let mut acked = Vec::new();
    for i in 0..30 {
        let d = format!("i{i}");
        c.write(&rest, &d).await;
        acked.push(d);
    }
    // Pre-vote: the isolated follower did not disturb the cluster with higher terms.
    assert!(c.members[&lagger].sm.log_strings().len() < 30);
    c.faults().reconnect(lagger);
    let log = c.wait_converged(&all).await;
    assert_exactly_once(&log, &acked);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_member_recovers_from_its_sled_dir() {
    let mut c = SimCluster::start(3, Opts::default()).await;
    let all = [1, 2, 3];
    let mut acked = Vec::new();
    for i in 0..10 {
        let d = format!("s{i}");
        c.write(&all, &d).await;
        acked.push(d);
    }
    c.wait_converged(&all).await;
    let leader = c.wait_leader(&all).await;
    let victim = all.into_iter().find(|id| *id != leader).unwrap();
    c.settle(victim).await;
    let before = c.handle(victim).status();
    c.stop(victim).await;
    let rest: Vec<u64> = all.iter().copied().filter(|id| *id != victim).collect();
    for i in 10..20 {
        let d = format!("s{i}");
        c.write(&rest, &d).await;
        acked.push(d);
    }
    // The restart ignores the bootstrap mode: the data dir has id, hard state, log, members.
    c.spawn(victim, Bootstrap::NewCluster);
    let after = c.handle(victim).status();
    assert_eq!(after.applied, before.applied, "applied index recovered");
    assert_eq!(after.members.len(), 3, "members recovered");
    assert!(after.term >= before.term);
    let log = c.wait_converged(&all).await;
    assert_exactly_once(&log, &acked);
    // Now restart the leader: the others elect a new one, and it rejoins.
    let leader = c.wait_leader(&all).await;
    c.stop(leader).await;
    let rest: Vec<u64> = all.iter().copied().filter(|id| *id != leader).collect();
    c.write(&rest, "after-leader-restart").await;
    acked.push("after-leader-restart".into());
    c.spawn(leader, Bootstrap::NewCluster);
    let log = c.wait_converged(&all).await;
    assert_exactly_once(&log, &acked);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_behind_past_compaction_catches_up_by_snapshot() {
    let opts = Opts {
        compaction_threshold: 20,
        snapshot_catchup_entries: 0,
        ..Opts::default()
    };
    let mut c = SimCluster::start(3, opts).await;
    let all = [1, 2, 3];
    let leader = c.wait_leader(&all).await;
    let lagger = all.into_iter().find(|id| *id != leader).unwrap();
    // Joiners already caught up by snapshot once; count only the restores from now on.
    c.stop(lagger).await;
    let rest: Vec<u64> = all.iter().copied().filter(|id| *id != lagger).collect();
    let mut acked = Vec::new();
    for i in 0..100 {
        let d = format!("c{i}");
        c.write(&rest, &d).await;
        acked.push(d);
    }
    c.spawn(lagger, Bootstrap::Join { peers: vec![] });
    let log = c.wait_converged(&all).await;
    assert_exactly_once(&log, &acked);
    assert!(
        c.members[&lagger].sm.restores.load(Ordering::SeqCst) >= 1,
        "the lagging member must have been restored from a snapshot"
    );
    // And it keeps working normally afterwards.
    c.write(&all, "post-snapshot").await;
    let log = c.wait_converged(&all).await;
    assert_eq!(log.last().map(String::as_str), Some("post-snapshot"));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_and_remove_members_replicate_the_member_list() {
    let mut c = SimCluster::start(2, Opts::default()).await;
    c.write(&[1, 2], "before-join").await;
    let id = c.grow().await;
    assert_eq!(id, 3);
    for m in [1, 2, 3] {
        let st = c.handle(m).status();
        let ids: Vec<u64> = st.members.iter().map(|m| m.id).collect();
        assert_eq!(ids, vec![1, 2, 3], "member {m}");
        assert_eq!(c.handle(m).member_address(3), Some(raft_common::addr(3)));
    }
    let leader = c.wait_leader(&[1, 2, 3]).await;
    let victim = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    let left = c.handle(leader).remove_member(victim).await.unwrap();
    assert!(left.iter().all(|m| m.id != victim));
    assert!(matches!(
        c.handle(leader).remove_member(99).await,
        Err(RaftError::UnknownMember(99))
    ));
    c.stop(victim).await;
    let rest: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != victim).collect();
    // Two members left, both needed for quorum: writes still commit.
    c.write(&rest, "after-remove").await;
    // Ids are never reused.
    let next = c.grow().await;
    assert_eq!(next, 4);
    c.shutdown().await;
}

/// Not a benchmark gate: prints proposals/s of the simulated 3-member cluster (sled fsync per
/// Ready, 64 concurrent proposers) so regressions in batching are visible in test output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_serves_concurrent_proposers() {
    let c = SimCluster::start(3, Opts::default()).await;
    let handles: Vec<_> = [1, 2, 3].map(|id| c.handle(id).clone()).to_vec();
    let n = 2000u64;
    let secs = propose_concurrently(&handles, n, 64).await;
    println!(
        "raft sim: {n} proposals in {secs:.2}s = {:.0} proposals/s",
        n as f64 / secs
    );
    let log = c.wait_converged(&[1, 2, 3]).await;
    assert_eq!(log.len() as u64, n);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_hands_over_before_removing_itself() {
    let mut c = SimCluster::start(3, Opts::default()).await;
    let all = [1, 2, 3];
    let old = c.wait_leader(&all).await;
    let to = match c.handle(old).remove_member(old).await {
        Err(RaftError::LeaderRemovingItself { id, to }) => {
            assert_eq!(id, old);
            to
        }
        other => panic!("expected LeaderRemovingItself, got {other:?}"),
    };
    let mut watch = c.handle(to).leader_watch();
    tokio::time::timeout(DEADLINE, watch.wait_for(|l| *l == Some(to)))
        .await
        .unwrap()
        .unwrap();
    let new = c.wait_leader(&all).await;
    assert_eq!(new, to);
    let left = c.handle(new).remove_member(old).await.unwrap();
    assert_eq!(left.len(), 2);
    c.stop(old).await;
    let rest: Vec<u64> = all.into_iter().filter(|id| *id != old).collect();
    c.write(&rest, "after-leader-left").await;
    c.wait_converged(&rest).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_leadership_moves_the_leader() {
    let c = SimCluster::start(3, Opts::default()).await;
    let all = [1, 2, 3];
    let old = c.wait_leader(&all).await;
    let target = all.into_iter().find(|id| *id != old).unwrap();
    let mut watch = c.handle(target).leader_watch();
    assert_eq!(
        c.handle(old)
            .transfer_leadership(Some(target))
            .await
            .unwrap(),
        target
    );
    tokio::time::timeout(DEADLINE, watch.wait_for(|l| *l == Some(target)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.wait_leader(&all).await, target);
    c.write(&all, "after-transfer").await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_member_restarts_after_compaction_with_its_state() {
    let opts = Opts {
        compaction_threshold: 10,
        snapshot_catchup_entries: 3,
        ..Opts::default()
    };
    let mut c = SimCluster::start(1, opts).await;
    let mut acked = Vec::new();
    for i in 0..45 {
        let d = format!("k{i}");
        c.write(&[1], &d).await;
        acked.push(d);
    }
    c.settle(1).await;
    let before = c.handle(1).status();
    c.stop(1).await;
    c.spawn(1, Bootstrap::NewCluster);
    let after = c.handle(1).status();
    assert_eq!(after.applied, before.applied, "applied index recovered");
    // A sole voter campaigns at once and keeps serving.
    c.wait_leader(&[1]).await;
    c.write(&[1], "after-restart").await;
    acked.push("after-restart".into());
    let log = c.members[&1].sm.log_strings();
    assert_eq!(
        log, acked,
        "state survived the restart in order, nothing replayed twice"
    );
    c.shutdown().await;
}

/// With the election timeout randomized in [10, 15) ticks (30 ms ticks here), survivors
/// elect a new leader and commit within a few timeouts of the leader crashing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_leader_is_replaced_within_a_few_election_timeouts() {
    let mut c = SimCluster::start(3, Opts::default()).await;
    let all = [1, 2, 3];
    c.write(&all, "before-crash").await;
    let old = c.wait_leader(&all).await;
    c.stop(old).await;
    let crashed = Instant::now();
    let rest: Vec<u64> = all.into_iter().filter(|id| *id != old).collect();
    c.write(&rest, "after-crash").await;
    let failover = crashed.elapsed();
    println!("raft sim: writes accepted again {failover:?} after the leader crashed");
    // 15 ticks = 450 ms is the longest election timeout; allow generous slack for load.
    assert!(
        failover < Duration::from_secs(5),
        "failover took {failover:?}"
    );
    c.shutdown().await;
}

/// kill -9 of every member in turn, each time with a torn, never-fsynced record at the tail
/// of its raft log, while the others keep writing: nothing acknowledged is lost or applied
/// twice, and the restarted member converges (the torn tail is cut off, not read as data).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_members_with_torn_log_tails_lose_no_acknowledged_write() {
    let opts = Opts {
        compaction_threshold: 25,
        snapshot_catchup_entries: 5,
        ..Opts::default()
    };
    let mut c = SimCluster::start(3, opts).await;
    let all = [1, 2, 3];
    let mut acked = Vec::new();
    let mut n = 0;
    for victim in all {
        for _ in 0..30 {
            let d = format!("t{n}");
            n += 1;
            c.write(&all, &d).await;
            acked.push(d);
        }
        c.crash(victim).await;
        // A header cut short, then (next round) a whole record with a bad checksum.
        c.tear_log_tail(victim, if victim == 2 { 5 } else { 53 });
        let rest: Vec<u64> = all.iter().copied().filter(|id| *id != victim).collect();
        for _ in 0..10 {
            let d = format!("t{n}");
            n += 1;
            c.write(&rest, &d).await;
            acked.push(d);
        }
        c.spawn(victim, Bootstrap::NewCluster);
        let log = c.wait_converged(&all).await;
        assert_exactly_once(&log, &acked);
    }
    // A whole-cluster crash (every member at once), then restart: the state is all there.
    for id in all {
        c.crash(id).await;
        c.tear_log_tail(id, 20);
    }
    for id in all {
        c.spawn(id, Bootstrap::NewCluster);
    }
    c.write(&all, "after-full-crash").await;
    acked.push("after-full-crash".into());
    let log = c.wait_converged(&all).await;
    assert_exactly_once(&log, &acked);
    c.shutdown().await;
}
