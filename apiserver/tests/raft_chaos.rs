//! Randomized fault schedule over the simulated network (seeded, reproducible schedule):
//! partitions, isolated members, message loss and member restarts while several clients
//! write. Checks at the end: every acknowledged write is applied exactly once on every member,
//! all members applied the same log, and writes respect real-time order (a write acknowledged
//! before another one started comes first in the log).
#![allow(clippy::unwrap_used)]

mod raft_common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_apiserver::raft::{Bootstrap, RaftHandle};
use raft_common::{Opts, SimCluster};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

type Directory = Arc<Mutex<BTreeMap<u64, RaftHandle>>>;

struct Acked {
    data: String,
    started: Instant,
    acked: Instant,
}

async fn writer(w: u64, dir: Directory, stop: Arc<AtomicBool>) -> (Vec<Acked>, u64) {
    let mut acked = Vec::new();
    let mut failed = 0;
    let mut attempt = 0u64;
    while !stop.load(Ordering::SeqCst) {
        attempt += 1;
        let leader = dir
            .lock()
            .unwrap()
            .values()
            .find(|h| h.is_leader())
            .cloned();
        let Some(h) = leader else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        // Unique per attempt: a failed attempt may still be applied (outcome unknown), but
        // never twice, and never confused with a retry.
        let data = format!("w{w}-{attempt}");
        let started = Instant::now();
        match h.propose(data.clone().into_bytes()).await {
            Ok(reply) => {
                assert!(String::from_utf8(reply)
                    .unwrap()
                    .ends_with(&format!(":{data}")));
                acked.push(Acked {
                    data,
                    started,
                    acked: Instant::now(),
                });
            }
            Err(_) => {
                failed += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    (acked, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_faults_never_lose_duplicate_or_reorder_acknowledged_writes() {
    let seed: u64 = std::env::var("RAFT_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut c = SimCluster::start(5, Opts::default()).await;
    let ids = [1u64, 2, 3, 4, 5];
    let dir: Directory = Arc::new(Mutex::new(
        ids.iter().map(|id| (*id, c.handle(*id).clone())).collect(),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..3)
        .map(|w| tokio::spawn(writer(w, dir.clone(), stop.clone())))
        .collect();

    let mut stopped: Option<u64> = None;
    let chaos_until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < chaos_until {
        c.faults().heal();
        let leader = dir
            .lock()
            .unwrap()
            .values()
            .find(|h| h.is_leader())
            .map(|h| h.id());
        match rng.gen_range(0..6) {
            0 => c.faults().isolate(ids[rng.gen_range(0..5)]),
            // The interesting case: the leader loses its quorum.
            4 => {
                if let Some(l) = leader {
                    let others: Vec<u64> = ids.iter().copied().filter(|i| *i != l).collect();
                    let buddy = others[rng.gen_range(0..others.len())];
                    let minority = [l, buddy];
                    let majority: Vec<u64> = ids
                        .iter()
                        .copied()
                        .filter(|i| !minority.contains(i))
                        .collect();
                    c.faults().partition(&minority, &majority);
                }
            }
            1 => {
                let k = rng.gen_range(1..=2);
                let mut shuffled = ids.to_vec();
                for i in (1..shuffled.len()).rev() {
                    shuffled.swap(i, rng.gen_range(0..=i));
                }
                c.faults().partition(&shuffled[..k], &shuffled[k..]);
            }
            2 => c.faults().set_drop_rate(rng.gen_range(0.05..0.3)),
            3 => match stopped.take() {
                Some(id) => {
                    c.spawn(id, Bootstrap::Join { peers: vec![] });
                    dir.lock().unwrap().insert(id, c.handle(id).clone());
                }
                None => {
                    let id = ids[rng.gen_range(0..5)];
                    dir.lock().unwrap().remove(&id);
                    c.stop(id).await;
                    stopped = Some(id);
                }
            },
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(200..700))).await;
    }
    c.faults().heal();
    if let Some(id) = stopped.take() {
        c.spawn(id, Bootstrap::Join { peers: vec![] });
    }
    stop.store(true, Ordering::SeqCst);
    let mut acked = Vec::new();
    let mut failed = 0;
    for w in writers {
        let (a, f) = w.await.unwrap();
        acked.extend(a);
        failed += f;
    }
    let log = c.wait_converged(&ids).await;
    assert!(
        acked.len() >= 10,
        "seed {seed}: too few writes succeeded ({}) to prove anything",
        acked.len()
    );
    let mut pos: HashMap<&str, usize> = HashMap::new();
    for (i, e) in log.iter().enumerate() {
        assert!(
            pos.insert(e.as_str(), i).is_none(),
            "seed {seed}: {e} applied twice"
        );
    }
    for a in &acked {
        assert!(
            pos.contains_key(a.data.as_str()),
            "seed {seed}: acknowledged {} lost",
            a.data
        );
    }
    // Real-time order: walking the log backwards, the earliest acknowledgement among later
    // entries must not precede the start of an earlier entry.
    acked.sort_by_key(|a| pos[a.data.as_str()]);
    let mut earliest_ack_after: Option<(Instant, &str)> = None;
    for b in acked.iter().rev() {
        if let Some((t, later)) = earliest_ack_after {
            assert!(
                t >= b.started,
                "seed {seed}: {later} was acknowledged before {} started but comes later",
                b.data
            );
        }
        if earliest_ack_after.is_none_or(|(t, _)| b.acked < t) {
            earliest_ack_after = Some((b.acked, b.data.as_str()));
        }
    }
    println!(
        "raft chaos seed {seed}: {} acknowledged writes, {failed} failed attempts, {} applied entries, final term {}",
        acked.len(),
        log.len(),
        c.handle(1).status().term
    );
    c.shutdown().await;
}
