//! The proof (issue 19): linearizability, watch guarantees and crash safety of the replicated
//! store under injected faults, tested the way etcd tests itself.
//!
//! Every scenario starts three `berth server`s with randomized raft timings and snapshot
//! threshold (seeded; the seed is printed and `BERTH_PROOF_SEED` repeats a run), runs the
//! recorded load of `harness/history.rs` (16 clients: 9 pinned, 7 cluster-wide, paced to at most
//! 200 ops/s of create, CAS update, delete, get and list over 8 keys) and three watch followers
//! (`harness/watchcheck.rs`), injects its faults, heals, and then requires:
//! - a write acknowledged after the last fault (the cluster works again);
//! - every member's final list is the same and is part of the history;
//! - the history is linearizable (`berth_testkit::linearizability`, todc-utils' WGL checker,
//!   per key and as a whole), which includes: no acknowledged write lost, no stale read;
//! - list revisions never go backwards in real time;
//! - watch: ordered, unique, atomic, no gap, resumed across members after every break, a
//!   resume from random recent revisions on a member that was never restarted delivers
//!   exactly the recorded changes, and a watch from a compacted revision answers Expired;
//! - every list is one consistent cut: the changes the followers recorded, replayed up to the
//!   list's revision, give exactly what it returned.
//!
//! Each scenario prints one summary line (`PROOF ...`).
//!
//! Short form (CI, part of `cargo nextest run --workspace`): a few faults of each kind.
//! Long form: `BERTH_PROOF_LONG=1` (20 leader kills, every fault kind repeated, every crash
//! point several times; `BERTH_PROOF_MINUTES`, default 30, split over the three scenarios).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use berth_proto::pb::{batch_op, BatchOp, BatchRequest, CreateRequest, EventType, WatchRequest};
use berth_testkit::linearizability::{self, Op};
use rand::seq::SliceRandom;
use rand::Rng;

use crate::harness::cluster::api_client;
use crate::harness::history::{self, Load, NAMESPACE};
use crate::harness::net::sh;
use crate::harness::watchcheck::{self, Follower};
use crate::harness::{wait_until, Cluster, Opts};

const CLIENTS: usize = 16;
const PINNED: usize = 9;
const RATE: u32 = 200;
const KEYS: u32 = 8;
/// Changes each member keeps for watch resumption (`--watch-history`).
const WATCH_HISTORY: u64 = 600;

fn long() -> bool {
    std::env::var("BERTH_PROOF_LONG").is_ok_and(|v| v == "1")
}

/// Wall time each long scenario runs its faults for.
fn long_budget() -> Duration {
    let minutes: u64 = std::env::var("BERTH_PROOF_MINUTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    Duration::from_secs(minutes * 60 / 3)
}

fn seed() -> u64 {
    std::env::var("BERTH_PROOF_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen())
}

/// Randomized per run: election timeout, heartbeat, snapshot threshold.
struct Timings {
    election_ticks: usize,
    heartbeat_ticks: usize,
    snapshot_threshold: u64,
}

impl Timings {
    fn random(rng: &mut impl Rng) -> Timings {
        let election_ticks = rng.gen_range(5..=15);
        Timings {
            election_ticks,
            heartbeat_ticks: rng.gen_range(1..=(election_ticks / 4).max(1)),
            snapshot_threshold: rng.gen_range(50..=200),
        }
    }

    fn args(&self, fault_file: &std::path::Path) -> Vec<String> {
        [
            "--raft-election-ticks".to_string(),
            self.election_ticks.to_string(),
            "--raft-heartbeat-ticks".to_string(),
            self.heartbeat_ticks.to_string(),
            "--snapshot-threshold".to_string(),
            self.snapshot_threshold.to_string(),
            "--watch-history".to_string(),
            WATCH_HISTORY.to_string(),
            "--watch-bookmark-ms".to_string(),
            "200".to_string(),
            "--test-fault-file".to_string(),
            fault_file.display().to_string(),
        ]
        .to_vec()
    }
}

/// One scenario's run: the cluster, the load, the followers and the faults injected.
struct Run {
    name: &'static str,
    seed: u64,
    rng: rand::rngs::StdRng,
    timings: Timings,
    c: Cluster,
    load: Option<Load>,
    followers: Vec<Follower>,
    faults: BTreeMap<&'static str, usize>,
    /// Members restarted or restored from a snapshot during the run (their watch history
    /// starts anew, so older revisions rightly answer Expired there).
    restarted: Vec<bool>,
    fault_file: std::path::PathBuf,
    started: Instant,
    /// The revision the load and the followers start from.
    from: u64,
}

impl Run {
    fn start(name: &'static str, id: u8) -> Option<Run> {
        let seed = seed();
        let mut rng = history::rng(seed);
        let timings = Timings::random(&mut rng);
        let fault_file = std::env::temp_dir().join(format!("berth-proof-{id}-faults"));
        let _ = std::fs::remove_file(&fault_file);
        let c =
            Cluster::start_with_server_args(name, id, Opts::default(), timings.args(&fault_file))?;
        println!(
            "PROOF {name}: seed {seed} (BERTH_PROOF_SEED repeats it); election {} ticks, heartbeat {} ticks, snapshot every {} entries",
            timings.election_ticks, timings.heartbeat_ticks, timings.snapshot_threshold
        );
        let ns = c.write_file(
            "proof-ns.yaml",
            &format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NAMESPACE}\n"),
        );
        c.cli_ok(&["apply", "-f", &ns]);
        let mut run = Run {
            name,
            seed,
            rng,
            timings,
            c,
            load: None,
            followers: Vec::new(),
            faults: BTreeMap::new(),
            restarted: vec![false; 3],
            fault_file,
            started: Instant::now(),
            from: 0,
        };
        let addrs = run.addrs();
        let tls = run.c.admin_tls().clone();
        let from = run
            .c
            .rt
            .block_on(watchcheck::list_revision(&addrs[0], &tls))
            .unwrap_or_else(|e| panic!("list before the load: {e}"));
        run.from = from;
        run.followers = (0..3)
            .map(|i| Follower::start(&run.c.rt, addrs.clone(), i, tls.clone(), from))
            .collect();
        let epoch = long().then_some(Duration::from_secs(30));
        let load_seed = run.rng.gen();
        run.load = Some(Load::start(
            &run.c.rt, addrs, tls, CLIENTS, PINNED, RATE, KEYS, epoch, load_seed,
        ));
        run.settle(Duration::from_secs(2));
        Some(run)
    }

    fn addrs(&self) -> Vec<String> {
        (0..3).map(|i| self.c.api_addr(i)).collect()
    }

    fn note(&mut self, fault: &'static str) {
        *self.faults.entry(fault).or_default() += 1;
    }

    /// Let the load run for `d` (a bare wait is the point here: load under no fault).
    fn settle(&self, d: Duration) {
        std::thread::sleep(d);
    }

    fn load(&self) -> &Load {
        self.load.as_ref().expect("the load runs")
    }

    /// The revision of the leader (the latest committed).
    fn leader_revision(&mut self) -> u64 {
        let l = self.c.leader();
        self.c.status(l).map(|s| s.revision).unwrap_or(0)
    }

    /// Wait until server `i` answers with a leader and has applied at least `revision`.
    fn wait_caught_up(&self, i: usize, revision: u64, limit: Duration) {
        wait_until(
            &format!("server{} to catch up to revision {revision}", i + 1),
            limit,
            || {
                let st = self.c.status(i)?;
                if st.leader_id == 0 {
                    return Err("no leader".into());
                }
                if st.revision < revision {
                    return Err(format!("at revision {}", st.revision));
                }
                Ok(())
            },
        );
    }

    /// Start server `i` again (after a kill or a crash) and wait until it is caught up.
    fn restart(&mut self, i: usize) {
        self.c.restart_server(i);
        self.restarted[i] = true;
        let running: Vec<usize> = (0..3).filter(|&j| self.c.servers[j].is_running()).collect();
        let target = wait_until(
            "a leader among the running servers",
            Duration::from_secs(30),
            || {
                let l = self.c.agreed_leader(&running)?;
                Ok(self.c.status(l)?.revision)
            },
        )
        .0;
        self.wait_caught_up(i, target, Duration::from_secs(30));
    }

    fn kill_leader(&mut self) {
        let l = self.c.leader();
        self.c.kill9_server(l);
        self.note("leader kill -9");
        let survivors: Vec<usize> = (0..3).filter(|&j| j != l).collect();
        wait_until(
            "a new leader among the survivors",
            Duration::from_secs(20),
            || self.c.agreed_leader(&survivors),
        );
        let down = Duration::from_millis(self.rng.gen_range(200..1500));
        self.settle(down);
        self.restart(l);
    }

    fn kill_random(&mut self) {
        let i = self.rng.gen_range(0..3);
        self.c.kill9_server(i);
        self.note("random member kill -9");
        let down = Duration::from_millis(self.rng.gen_range(200..1500));
        self.settle(down);
        self.restart(i);
    }

    fn random_follower(&mut self) -> usize {
        let l = self.c.leader();
        let f: Vec<usize> = (0..3).filter(|&j| j != l).collect();
        *f.choose(&mut self.rng).expect("two followers")
    }

    /// Cut a member off for `d`, then heal and wait until it caught up.
    fn cut(&mut self, i: usize, d: Duration) {
        self.c.partition(i);
        self.settle(d);
        self.c.heal(i);
        let rev = self.leader_revision();
        self.wait_caught_up(i, rev, Duration::from_secs(30));
    }

    /// Cut a follower off until the leader has compacted past it, so that it must catch up
    /// by snapshot; checks its log says it installed one.
    fn cut_for_snapshot(&mut self) {
        let i = self.random_follower();
        let before = self.c.status(i).map(|s| s.applied_index).unwrap_or(0);
        let installs = |c: &Cluster| {
            std::fs::read_to_string(&c.servers[i].log)
                .unwrap_or_default()
                .matches("installing snapshot from the leader")
                .count()
        };
        let installed_before = installs(&self.c);
        self.c.partition(i);
        // A snapshot past the cut member's log, plus the entries kept behind it.
        let need = before + 5 * self.timings.snapshot_threshold / 2 + 30;
        let others: Vec<usize> = (0..3).filter(|&j| j != i).collect();
        wait_until(
            "the leader to apply enough entries past the cut member",
            Duration::from_secs(90),
            || {
                let l = self.c.agreed_leader(&others)?;
                let st = self.c.status(l)?;
                if st.applied_index < need {
                    return Err(format!("leader applied {} of {need}", st.applied_index));
                }
                Ok(())
            },
        );
        self.c.heal(i);
        // Installing the snapshot resets its watch history (older revisions answer Expired).
        self.restarted[i] = true;
        self.note("member cut off until it needs a snapshot");
        let rev = self.leader_revision();
        self.wait_caught_up(i, rev, Duration::from_secs(30));
        assert!(
            installs(&self.c) > installed_before,
            "server{} caught up after a long cut without installing a snapshot (log: {})",
            i + 1,
            self.c.servers[i].log.display()
        );
    }

    /// 50% packet loss on every member's eth0 (both directions) for `d`.
    fn drop_packets(&mut self, d: Duration) {
        for h in &self.c.net.hosts {
            for (chain, dir) in [("INPUT", "-i"), ("OUTPUT", "-o")] {
                sh(&[
                    "ip",
                    "netns",
                    "exec",
                    &h.ns,
                    "iptables",
                    "-A",
                    chain,
                    dir,
                    "eth0",
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    "0.5",
                    "-j",
                    "DROP",
                ])
                .unwrap_or_else(|e| panic!("packet loss: {e}"));
            }
        }
        self.note("50% packet loss 1 s");
        self.settle(d);
        for i in 0..3 {
            self.c.heal(i);
        }
    }

    /// 75 +/- 50 ms on every raft message batch between members for `d`.
    fn delay(&mut self, d: Duration) {
        std::fs::write(&self.fault_file, "delay 75 50").expect("fault file");
        self.note("75 +/- 50 ms raft delay 1 s");
        self.settle(d);
        std::fs::write(&self.fault_file, "").expect("fault file");
    }

    /// Heal everything, wait for a write acknowledged after that, stop the load, read the
    /// final state from every member and check everything. Panics on any violation; prints
    /// the summary line.
    fn finish(mut self) {
        for i in 0..3 {
            if !self.c.servers[i].is_running() {
                self.restart(i);
            }
        }
        let _ = std::fs::write(&self.fault_file, "");
        let rev = self.leader_revision();
        for i in 0..3 {
            self.wait_caught_up(i, rev, Duration::from_secs(30));
        }
        // The final write after the faults: an acknowledged write invoked from now on.
        let acked = self.load().acked_writes();
        let (_, took) = wait_until(
            "a write acknowledged after the last fault",
            Duration::from_secs(20),
            || {
                let n = self.load().acked_writes();
                if n > acked + 5 {
                    Ok(())
                } else {
                    Err(format!("{} writes acknowledged since", n - acked))
                }
            },
        );
        let mut fin = self.load.take().expect("the load").finish();
        // Final reads: a linearizable list on every member, all equal.
        let addrs = self.addrs();
        let tls = self.c.admin_tls().clone();
        let finals: Vec<BTreeMap<u32, u64>> = addrs
            .iter()
            .map(|a| {
                self.c
                    .rt
                    .block_on(final_list(a, &tls))
                    .unwrap_or_else(|e| panic!("final list on {a}: {e}"))
            })
            .collect();
        assert!(
            finals.iter().all(|f| *f == finals[0]),
            "members disagree on the final state: {finals:?}"
        );
        let last_epoch = fin.history.iter().map(|(e, _)| *e).max().unwrap_or(0);
        fin.append(
            last_epoch,
            Op::List {
                out: finals[0].clone(),
            },
        );
        let end_rev = self
            .c
            .rt
            .block_on(watchcheck::list_revision(&addrs[0], &tls))
            .unwrap_or(0);

        // Watch followers: let them reach the end, then check.
        wait_until(
            "every watch follower to reach the final revision",
            Duration::from_secs(30),
            || {
                for (w, f) in self.followers.iter().enumerate() {
                    let r = f.record.lock().unwrap_or_else(|e| e.into_inner());
                    let to = r.segments.last().map(|s| s.to).unwrap_or(0);
                    if to < end_rev {
                        return Err(format!("follower {w} at {to} of {end_rev}"));
                    }
                }
                Ok(())
            },
        );
        let records: Vec<_> = self.followers.iter().map(|f| f.take()).collect();
        // Lists as consistent cuts, against the changes the followers recorded from the start.
        let mut changes = BTreeMap::new();
        let mut covered = self.from;
        for r in &records {
            if let Some(first) = r.segments.first() {
                changes.extend(first.events.iter().copied());
                covered = covered.max(first.to);
            }
        }
        let torn = history::torn_lists(&fin.list_revisions, &changes, self.from, covered);
        let mut wv = watchcheck::check(&records, &fin.rvs);
        self.check_resume_and_expired(&records, end_rev, &mut wv.violations);

        // Linearizability, epoch by epoch.
        // The whole-history search cannot be stopped once started; an abandoned one spins on
        // until the process ends. So it runs in the short form only (one per test process);
        // the long form relies on the per-key check plus the list-cut check below.
        let whole_limit = if long() {
            Duration::ZERO
        } else {
            Duration::from_secs(10)
        };
        let mut lin_ok = true;
        let mut details = Vec::new();
        let (mut checked_ops, mut unknown, mut lin_time) = (0, 0, Duration::ZERO);
        let mut whole = true;
        for (e, h) in fin.epochs().iter().enumerate() {
            let v = linearizability::check(h, whole_limit);
            checked_ops += v.ops;
            unknown += v.unknown_writes;
            lin_time += v.took;
            whole &= v.whole_checked;
            if !v.linearizable {
                lin_ok = false;
                details.push(format!("epoch {e}: {}", v.detail));
            } else if !v.whole_checked {
                details.push(format!("epoch {e}: {}", v.detail));
            }
        }
        let regressions = fin.revision_regressions();
        let (ops, acked_w, failed_w, unknown_w, reads) = fin.counts();
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, n)| format!("{k} x{n}"))
            .collect();
        let verdict =
            lin_ok && regressions.is_empty() && wv.violations.is_empty() && torn.is_empty();
        println!(
            "PROOF {} | {:.0} s | ops {ops} ({:.0}/s achieved, {RATE}/s offered by {CLIENTS} clients): {acked_w} writes acknowledged, {failed_w} refused (exists/conflict/not found), {unknown_w} unknown, {reads} reads | faults: {} | linearizable: {} ({checked_ops} ops, {unknown} unknown writes, {}, {:.1} s) | lists: {} revision regressions, {} not one cut of {} | watch: {} events, {} resumes, {} expired answers, {} relists, {} violations | final write acknowledged {:.1} s after healing | verdict: {} | seed {}",
            self.name,
            self.started.elapsed().as_secs_f64(),
            ops as f64 / fin.elapsed.as_secs_f64(),
            if faults.is_empty() { "none".into() } else { faults.join(", ") },
            if lin_ok { "yes" } else { "NO" },
            if whole { "per key and whole" } else { "per key" },
            lin_time.as_secs_f64(),
            regressions.len(),
            torn.len(),
            fin.list_revisions.len(),
            wv.events,
            wv.resumes,
            wv.expired_answers,
            wv.relists,
            wv.violations.len(),
            took.as_secs_f64(),
            if verdict { "PASS" } else { "FAIL" },
            self.seed,
        );
        assert!(
            lin_ok,
            "{}: history not linearizable: {details:?}",
            self.name
        );
        assert!(regressions.is_empty(), "{}: {regressions:?}", self.name);
        assert!(
            torn.is_empty(),
            "{}: lists that are not one consistent cut: {:?}",
            self.name,
            &torn[..torn.len().min(5)]
        );
        assert!(
            wv.violations.is_empty(),
            "{}: watch violations: {:#?}",
            self.name,
            &wv.violations[..wv.violations.len().min(20)]
        );
        // Watch history lives in memory: after every member restarted at once, nobody keeps
        // the followers' revisions and each must relist once (etcd keeps it on disk).
        let excused = 3 * self
            .faults
            .get("whole cluster kill -9")
            .copied()
            .unwrap_or(0);
        assert!(
            wv.relists <= excused,
            "{}: followers relisted {} times ({excused} excused by whole-cluster restarts): a resume from a recent revision expired on every member",
            self.name,
            wv.relists
        );
        let _ = std::fs::remove_file(&self.fault_file);
        if !details.is_empty() {
            println!(
                "PROOF {} notes ({} epochs): {}",
                self.name,
                details.len(),
                details[0]
            );
        }
    }

    /// Resume from random recent revisions on a member that was never restarted or restored
    /// from a snapshot (it must
    /// deliver exactly what the followers recorded), and a watch from revision 1 (compacted:
    /// more than the watch history has been written since) must answer Expired everywhere.
    fn check_resume_and_expired(
        &mut self,
        records: &[watchcheck::Record],
        end_rev: u64,
        violations: &mut Vec<String>,
    ) {
        let mut truth: BTreeMap<u64, (i32, u32, u64)> = BTreeMap::new();
        for r in records {
            for s in &r.segments {
                truth.extend(s.events.iter().copied());
            }
        }
        let tls = self.c.admin_tls().clone();
        let start = end_rev.saturating_sub(WATCH_HISTORY / 2);
        for i in (0..3).filter(|&i| !self.restarted[i]) {
            let addr = self.c.api_addr(i);
            for _ in 0..3 {
                let from = self.rng.gen_range(start..end_rev.max(start + 1));
                let want: Vec<(u64, (i32, u32, u64))> = truth
                    .range(from + 1..=end_rev)
                    .map(|(r, c)| (*r, *c))
                    .collect();
                match self.c.rt.block_on(watch_until(&addr, &tls, from, end_rev)) {
                    Ok(got) if got == want => {}
                    Ok(got) => violations.push(format!(
                        "a watch from revision {from} on server{} delivered {} changes, the followers recorded {} (first difference near {:?})",
                        i + 1,
                        got.len(),
                        want.len(),
                        got.iter().zip(&want).find(|(a, b)| a != b)
                    )),
                    Err(e) => violations.push(format!(
                        "a watch from revision {from} on server{} (never restarted) failed: {e}",
                        i + 1
                    )),
                }
            }
        }
        // Push revision 1 out of every member's watch history: one batch of small writes in
        // another namespace (one raft entry, one revision each).
        let fill = self.c.write_file(
            "proof-fill-ns.yaml",
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: proof-fill\n",
        );
        wait_until("the filler namespace", Duration::from_secs(60), || {
            let out = self.c.cli(&["apply", "-f", &fill]);
            if out.ok() {
                Ok(())
            } else {
                Err(out.to_string())
            }
        });
        let ops: Vec<BatchOp> = (0..WATCH_HISTORY + 50)
            .map(|n| BatchOp {
                op: Some(batch_op::Op::Create(CreateRequest {
                    object: serde_json::json!({
                        "apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": format!("fill-{n}"), "namespace": "proof-fill"},
                    })
                    .to_string()
                    .into_bytes(),
                    dry_run: false,
                })),
            })
            .collect();
        // Retried on another server if it fails (a retry's creates of existing objects fail
        // alone: the batch is not atomic).
        let mut n = 0;
        let (end_rev, _) = wait_until("the filler batch", Duration::from_secs(60), || {
            n += 1;
            let addr = self.c.api_addr(n % 3);
            let ops = ops.clone();
            self.c.rt.block_on(async {
                let mut c = api_client(&addr, &tls).await?;
                c.batch(BatchRequest {
                    ops,
                    atomic: false,
                    dry_run: false,
                })
                .await
                .map_err(|e| format!("{addr}: {e}"))?;
                watchcheck::list_revision(&addr, &tls).await
            })
        });
        let rev = self.leader_revision();
        for i in 0..3 {
            self.wait_caught_up(i, rev, Duration::from_secs(30));
        }
        if end_rev > WATCH_HISTORY + 10 {
            for i in 0..3 {
                let addr = self.c.api_addr(i);
                match self.c.rt.block_on(watch_until(&addr, &tls, 1, end_rev)) {
                    Err(e) if e.contains("OutOfRange") && e.contains("Expired") => {}
                    other => violations.push(format!(
                        "a watch from compacted revision 1 on server{} did not answer Expired: {other:?}",
                        i + 1
                    )),
                }
            }
        } else {
            violations.push(format!(
                "only {end_rev} revisions written; the compacted-revision check needs more than {}",
                WATCH_HISTORY + 10
            ));
        }
    }
}

/// Every load ConfigMap on `addr`, by a linearizable list.
async fn final_list(addr: &str, tls: &berth_tls::ClientTls) -> Result<BTreeMap<u32, u64>, String> {
    let mut c = api_client(addr, tls).await?;
    let r = c
        .list(berth_proto::pb::ListRequest {
            kind: "ConfigMap".into(),
            namespace: NAMESPACE.into(),
            label_selector: String::new(),
        })
        .await
        .map_err(|e| e.to_string())?;
    Ok(r.into_inner()
        .objects
        .iter()
        .filter_map(|o| history::decode(o))
        .map(|(k, v, _)| (k, v))
        .collect())
}

/// Watch from `from` on `addr` until revision `until` is reached (5 s at most); the changes.
async fn watch_until(
    addr: &str,
    tls: &berth_tls::ClientTls,
    from: u64,
    until: u64,
) -> Result<Vec<(u64, (i32, u32, u64))>, String> {
    let mut c = api_client(addr, tls).await?;
    let mut out = Vec::new();
    let run = async {
        let mut s = c
            .watch(WatchRequest {
                kind: "ConfigMap".into(),
                namespace: NAMESPACE.into(),
                label_selector: String::new(),
                from_revision: from,
            })
            .await
            .map_err(|e| format!("{:?}: {}", e.code(), e.message()))?
            .into_inner();
        loop {
            match s.message().await {
                Ok(Some(ev)) => {
                    if ev.r#type != EventType::Bookmark as i32 {
                        let (k, v) = history::decode(&ev.object)
                            .map(|(k, v, _)| (k, v))
                            .unwrap_or((u32::MAX, 0));
                        out.push((ev.revision, (ev.r#type, k, v)));
                    }
                    if ev.revision >= until {
                        return Ok(());
                    }
                }
                Ok(None) => return Err("the stream ended".to_string()),
                Err(e) => return Err(format!("{:?}: {}", e.code(), e.message())),
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(8), run).await {
        Ok(Ok(())) => Ok(out),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!(
            "no event up to revision {until} within 8 s ({} changes)",
            out.len()
        )),
    }
}

#[test]
fn the_store_stays_linearizable_and_watches_stay_exact_across_leader_and_member_kills() {
    let Some(mut run) = Run::start("proof-kills", 40) else {
        return;
    };
    if long() {
        let deadline = Instant::now() + long_budget();
        let mut leader_kills = 0;
        while leader_kills < 20 || Instant::now() < deadline {
            run.kill_leader();
            leader_kills += 1;
            if leader_kills % 2 == 0 {
                run.kill_random();
            }
            let pause = Duration::from_millis(run.rng.gen_range(500..3000));
            run.settle(pause);
        }
    } else {
        run.kill_leader();
        run.settle(Duration::from_secs(1));
        run.kill_leader();
        run.settle(Duration::from_secs(1));
        run.kill_random();
        run.settle(Duration::from_secs(1));
    }
    run.finish();
}

#[test]
fn the_store_stays_linearizable_and_watches_stay_exact_across_cuts_packet_loss_and_delay() {
    let Some(mut run) = Run::start("proof-network", 41) else {
        return;
    };
    let rounds = if long() { usize::MAX } else { 1 };
    let deadline = Instant::now()
        + if long() {
            long_budget()
        } else {
            Duration::ZERO
        };
    let mut round = 0;
    while round < rounds {
        let i = run.random_follower();
        run.cut(i, Duration::from_secs(1));
        run.note("member cut off 1 s");
        let l = run.c.leader();
        if long() && round % 2 == 1 {
            // The leader cut off: the majority elects another.
            run.cut(l, Duration::from_secs(1));
            run.note("leader cut off 1 s");
        }
        run.settle(Duration::from_millis(500));
        run.cut_for_snapshot();
        run.settle(Duration::from_millis(500));
        run.drop_packets(Duration::from_secs(1));
        run.settle(Duration::from_millis(500));
        run.delay(Duration::from_secs(1));
        run.settle(Duration::from_millis(500));
        round += 1;
        if Instant::now() >= deadline {
            break;
        }
    }
    run.finish();
}

/// What makes a crash point fire.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Trigger {
    /// Hit by the load's writes on any member.
    Load,
    /// Hit when the member takes its next snapshot and compacts.
    Compaction,
    /// Hit by a member receiving a snapshot (the armed member is cut off until it needs one).
    SnapshotReceived,
    /// Hit by the leader sending a snapshot (every member armed; a follower is cut off).
    SnapshotSent,
}

const POINTS: [(&str, Trigger); 7] = [
    ("raft::append", Trigger::Load),
    ("raft::append::fsync", Trigger::Load),
    ("raft::apply", Trigger::Load),
    ("raft::apply::done", Trigger::Load),
    ("raft::compact", Trigger::Compaction),
    ("raft::snapshot::apply", Trigger::SnapshotReceived),
    ("raft::snapshot::send", Trigger::SnapshotSent),
];

impl Run {
    /// Kill server `i` and start it again armed with `BERTH_FAILPOINTS=spec` (not waited on:
    /// it may crash while catching up).
    fn arm(&mut self, i: usize, spec: &str) {
        self.c.kill9_server(i);
        self.c.servers[i].set_env("BERTH_FAILPOINTS", spec);
        self.c.restart_server(i);
        self.restarted[i] = true;
    }

    /// Restart crashed members (disarmed) until `point` crashed at least once or `limit`
    /// passed; returns how many crashes at `point` were seen. A crash at
    /// `raft::append::fsync` first gets a torn write: random bytes appended to the newest file
    /// of the member's storage, where an append-only log's half-written record would be.
    fn reap_crashes(&mut self, point: &str, limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        let mut crashes = 0;
        loop {
            for i in 0..3 {
                if self.c.servers[i].is_running() {
                    continue;
                }
                let tail = self.c.servers[i].tail(20);
                assert!(
                    tail.contains(&format!("crash point {point} hit")),
                    "server{} stopped, but not at crash point {point}:\n{tail}",
                    i + 1
                );
                crashes += 1;
                self.note_crash(point);
                if point == "raft::append::fsync" {
                    let file = tear_tail(&self.c.server_data(i).join("db"), &mut self.rng);
                    self.note("torn write at the storage tail");
                    println!("PROOF torn write: {file}");
                }
                self.c.servers[i].remove_env("BERTH_FAILPOINTS");
                self.c.restart_server(i);
            }
            if crashes > 0 || Instant::now() >= deadline {
                return crashes;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn note_crash(&mut self, point: &str) {
        let key: &'static str = POINTS
            .iter()
            .find(|(p, _)| *p == point)
            .map(|(p, _)| *p)
            .unwrap_or("crash");
        self.note(key);
    }

    /// Disarm every member still armed (restart it without the crash point) and wait until
    /// all are caught up.
    fn disarm(&mut self) {
        for i in 0..3 {
            let armed = self.c.servers[i]
                .env
                .iter()
                .any(|(k, _)| k == "BERTH_FAILPOINTS");
            if armed {
                self.c.kill9_server(i);
                self.c.servers[i].remove_env("BERTH_FAILPOINTS");
                self.c.restart_server(i);
            }
        }
        let rev = self.leader_revision();
        for i in 0..3 {
            self.wait_caught_up(i, rev, Duration::from_secs(30));
        }
    }

    fn crash_at(&mut self, point: &'static str, trigger: Trigger) {
        match trigger {
            Trigger::Load => {
                let i = self.rng.gen_range(0..3);
                let n = self.rng.gen_range(1..80);
                self.arm(i, &format!("{point}=crash({n})"));
            }
            Trigger::Compaction => {
                let i = self.rng.gen_range(0..3);
                self.arm(i, &format!("{point}=crash(1)"));
            }
            Trigger::SnapshotReceived => {
                let i = self.random_follower();
                self.arm(i, &format!("{point}=crash(1)"));
                self.wait_caught_up(i, 0, Duration::from_secs(30));
                self.cut_until_behind(i);
            }
            Trigger::SnapshotSent => {
                // Every member armed at once (the whole cluster restarts), then a follower is
                // cut off until it needs a snapshot: whoever leads crashes sending it.
                for i in 0..3 {
                    self.c.kill9_server(i);
                }
                for i in 0..3 {
                    self.c.servers[i].set_env("BERTH_FAILPOINTS", &format!("{point}=crash(1)"));
                    self.c.restart_server(i);
                    self.restarted[i] = true;
                }
                self.note("whole cluster kill -9");
                self.c.leader();
                let i = self.random_follower();
                self.cut_until_behind(i);
            }
        }
        let crashes = self.reap_crashes(point, Duration::from_secs(if long() { 20 } else { 10 }));
        assert!(
            crashes > 0,
            "crash point {point} was never hit (trigger {trigger:?})"
        );
        self.disarm();
    }

    /// Cut member `i` off until the leader compacted past it, then heal (it needs a snapshot).
    fn cut_until_behind(&mut self, i: usize) {
        let before = self.c.status(i).map(|s| s.applied_index).unwrap_or(0);
        self.c.partition(i);
        let need = before + 5 * self.timings.snapshot_threshold / 2 + 30;
        wait_until(
            "the leader to move past the cut member",
            Duration::from_secs(90),
            || {
                let l = self
                    .c
                    .agreed_leader(&(0..3).filter(|&j| j != i).collect::<Vec<_>>())?;
                let st = self.c.status(l)?;
                if st.applied_index < need {
                    return Err(format!("leader applied {} of {need}", st.applied_index));
                }
                Ok(())
            },
        );
        self.c.heal(i);
        self.restarted[i] = true;
    }
}

/// Append 1..4096 random bytes to the most recently written file under `dir`; its path.
fn tear_tail(dir: &std::path::Path, rng: &mut impl Rng) -> String {
    fn newest(
        dir: &std::path::Path,
        best: &mut Option<(std::time::SystemTime, std::path::PathBuf)>,
    ) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(md) = e.metadata() else { continue };
            if md.is_dir() {
                newest(&p, best);
            } else if let Ok(m) = md.modified() {
                if best.as_ref().is_none_or(|(t, _)| m > *t) {
                    *best = Some((m, p));
                }
            }
        }
    }
    let mut best = None;
    newest(dir, &mut best);
    let Some((_, path)) = best else {
        panic!("no storage file under {}", dir.display());
    };
    let n = rng.gen_range(1..4096);
    let junk: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.write_all(&junk).expect("torn write");
    format!("{} random bytes appended to {}", n, path.display())
}

#[test]
fn crash_points_in_append_apply_snapshot_and_compaction_lose_nothing_acknowledged() {
    let Some(mut run) = Run::start("proof-crash", 42) else {
        return;
    };
    let deadline = Instant::now()
        + if long() {
            long_budget()
        } else {
            Duration::ZERO
        };
    loop {
        for (point, trigger) in POINTS {
            run.crash_at(point, trigger);
            run.settle(Duration::from_millis(500));
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    run.finish();
}

/// An agent killed -9 and restarted 10 times while HTTP load crosses the other nodes'
/// proxies to every hello pod: its workloads keep running (same pods, uids, restartCounts and
/// processes), no pod's Ready status regresses at any sample, and no request fails.
#[test]
fn an_agent_killed_ten_times_under_load_restarts_no_workload_and_regresses_no_status() {
    use super::workloads::{
        apply, heartbeat, host_of_node, ready_pods, restart_counts, wait_answer, workload_pids,
        HELLO_PORT,
    };
    let kills = if long() { 50 } else { 10 };
    let Some(mut c) = Cluster::start(
        "proof-agent",
        43,
        Opts {
            agents: true,
            ..Opts::default()
        },
    ) else {
        return;
    };
    apply(&c, "hello.yaml");
    let (pods, _) = wait_until("3 hello pods Ready", Duration::from_secs(45), || {
        ready_pods(&c, "hello", 3)
    });
    let mut per_host: BTreeMap<usize, usize> = BTreeMap::new();
    for p in &pods {
        if let Some(h) = host_of_node(&p.spec.node_name) {
            *per_host.entry(h).or_default() += 1;
        }
    }
    let host = per_host
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(h, _)| *h)
        .expect("a node with pods");
    let node = format!("node{}", host + 1);
    let before = restart_counts(&pods);
    let pids_before = workload_pids(&mut c, host);
    assert!(!pids_before.is_empty(), "no workload processes on {node}");
    for i in 0..3 {
        wait_answer(&c, i, HELLO_PORT, "v1", Duration::from_secs(20));
    }
    // Traffic through the nodes whose agent (and so proxy) stays up, to every pod.
    let targets: Vec<std::net::SocketAddr> = (0..3)
        .filter(|&i| i != host)
        .map(|i| std::net::SocketAddr::from((c.ip(i), HELLO_PORT)))
        .collect();
    let load = crate::harness::load::Load::start(&c.rt, targets, 40, Duration::from_secs(600));
    let started = Instant::now();
    let mut regressions = Vec::new();
    for k in 0..kills {
        let hb0 = heartbeat(&c, &node).unwrap_or_default();
        c.kill9_agent(host);
        c.restart_agent(host);
        let mut seen = vec![hb0];
        wait_until(
            &format!("two heartbeats from the agent restarted {} times", k + 1),
            Duration::from_secs(30),
            || {
                // Sample the pods while waiting: any not Ready or changed is a regression.
                match ready_pods(&c, "hello", 3) {
                    Ok(p) if restart_counts(&p) == before => {}
                    Ok(p) => {
                        regressions.push(format!("after kill {}: {:?}", k + 1, restart_counts(&p)))
                    }
                    Err(e) => regressions.push(format!("after kill {}: {e}", k + 1)),
                }
                let hb = heartbeat(&c, &node)?;
                if seen.last() != Some(&hb) {
                    seen.push(hb);
                }
                if seen.len() >= 3 {
                    Ok(())
                } else {
                    Err(format!("heartbeats seen: {seen:?}"))
                }
            },
        );
        let pids = workload_pids(&mut c, host);
        assert_eq!(
            pids,
            pids_before,
            "workload processes on {node} changed after kill {}",
            k + 1
        );
    }
    let samples = load.finish();
    let failed: Vec<String> = samples
        .iter()
        .filter(|s| !s.ok)
        .map(|s| s.describe())
        .collect();
    println!(
        "PROOF proof-agent | {:.0} s | agent of {node} killed -9 and restarted {kills} times | {} requests through the other nodes' proxies, {} failed | status regressions: {} | workload restarts: 0 (pids and restartCounts unchanged) | verdict: {}",
        started.elapsed().as_secs_f64(),
        samples.len(),
        failed.len(),
        regressions.len(),
        if failed.is_empty() && regressions.is_empty() { "PASS" } else { "FAIL" },
    );
    assert!(
        regressions.is_empty(),
        "pod status regressions: {regressions:?}"
    );
    assert!(
        failed.is_empty(),
        "{} requests failed, first: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    let after = ready_pods(&c, "hello", 3).expect("hello pods Ready");
    assert_eq!(
        restart_counts(&after),
        before,
        "pods changed across {kills} agent restarts"
    );
}
