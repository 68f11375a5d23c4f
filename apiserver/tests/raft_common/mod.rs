//! Shared harness for the raft tests: a persistent "log" state machine and an in-process
//! cluster over [`MemNetwork`] (simulation) with stop/restart from the members' sled dirs.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use berth_apiserver::raft::{
    Bootstrap, Faults, MemNetwork, RaftConfig, RaftError, RaftHandle, RaftNode, StateMachine,
};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A state machine that appends every entry to a log kept in its own sled tree (same Db as
/// raft, like the real store). `apply` replies with `"<index>:<data>"`.
pub struct LogSm {
    tree: sled::Tree,
    pub restores: AtomicU64,
}

impl LogSm {
    pub fn open(db: &sled::Db) -> Arc<Self> {
        Arc::new(Self {
            tree: db.open_tree("test_sm").unwrap(),
            restores: AtomicU64::new(0),
        })
    }

    /// The applied entries' data, in log order.
    pub fn log(&self) -> Vec<Vec<u8>> {
        self.tree
            .scan_prefix(b"e")
            .map(|kv| kv.unwrap().1.to_vec())
            .collect()
    }

    pub fn log_strings(&self) -> Vec<String> {
        self.log()
            .into_iter()
            .map(|v| String::from_utf8(v).unwrap())
            .collect()
    }
}

fn entry_key(seq: u64) -> Vec<u8> {
    let mut k = b"e".to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

impl StateMachine for LogSm {
    fn apply(&self, index: u64, data: &[u8]) -> Vec<u8> {
        assert!(index > self.applied_index(), "apply of {index} replayed");
        let seq = self
            .tree
            .get(b"len")
            .unwrap()
            .map(|v| u64::from_be_bytes(v.as_ref().try_into().unwrap()))
            .unwrap_or(0);
        let mut batch = sled::Batch::default();
        batch.insert(entry_key(seq), data);
        batch.insert(b"len".to_vec(), &(seq + 1).to_be_bytes());
        batch.insert(b"applied".to_vec(), &index.to_be_bytes());
        self.tree.apply_batch(batch).unwrap();
        format!("{index}:{}", String::from_utf8_lossy(data)).into_bytes()
    }

    fn applied_index(&self) -> u64 {
        self.tree
            .get(b"applied")
            .unwrap()
            .map(|v| u64::from_be_bytes(v.as_ref().try_into().unwrap()))
            .unwrap_or(0)
    }

    fn snapshot(&self) -> Result<Vec<u8>, String> {
        serde_json::to_vec(&self.log()).map_err(|e| e.to_string())
    }

    fn restore(&self, index: u64, data: &[u8]) -> Result<(), String> {
        let log: Vec<Vec<u8>> = serde_json::from_slice(data).map_err(|e| e.to_string())?;
        self.tree.clear().unwrap();
        let mut batch = sled::Batch::default();
        for (i, d) in log.iter().enumerate() {
            batch.insert(entry_key(i as u64), d.as_slice());
        }
        batch.insert(b"len".to_vec(), &(log.len() as u64).to_be_bytes());
        batch.insert(b"applied".to_vec(), &index.to_be_bytes());
        self.tree.apply_batch(batch).unwrap();
        self.restores.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

pub struct Member {
    pub handle: RaftHandle,
    pub sm: Arc<LogSm>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), RaftError>>,
}

/// Tunables of a test cluster.
#[derive(Clone)]
pub struct Opts {
    pub tick: Duration,
    pub compaction_threshold: u64,
    pub snapshot_catchup_entries: u64,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            tick: Duration::from_millis(30),
            compaction_threshold: 10_000,
            snapshot_catchup_entries: 0,
        }
    }
}

/// In-process raft cluster over an in-memory network.
pub struct SimCluster {
    pub net: MemNetwork,
    pub opts: Opts,
    pub members: BTreeMap<u64, Member>,
    dirs: BTreeMap<u64, tempfile::TempDir>,
}

pub const DEADLINE: Duration = Duration::from_secs(20);

pub fn addr(id: u64) -> String {
    format!("mem://{id}")
}

impl SimCluster {
    /// Bootstrap member 1, then grow to `n` members through `add_member` + join.
    pub async fn start(n: u64, opts: Opts) -> Self {
        let mut c = SimCluster {
            net: MemNetwork::new(Faults::default()),
            opts,
            members: BTreeMap::new(),
            dirs: BTreeMap::new(),
        };
        c.spawn(1, Bootstrap::NewCluster);
        c.wait_leader(&[1]).await;
        for _ in 2..=n {
            c.grow().await;
        }
        c
    }

    pub fn faults(&self) -> &Faults {
        self.net.faults()
    }

    /// Add one member through the leader and start it as a joiner; wait until it caught up.
    pub async fn grow(&mut self) -> u64 {
        let ids: Vec<u64> = self.members.keys().copied().collect();
        let leader = self.wait_leader(&ids).await;
        let next = self.members.keys().max().unwrap() + 1;
        let (id, members) = self.members[&leader]
            .handle
            .add_member(addr(next))
            .await
            .unwrap();
        assert_eq!(id, next, "new ids are one above the highest");
        assert!(members.iter().any(|m| m.id == id && m.address == addr(id)));
        self.spawn(id, Bootstrap::Join { peers: vec![] });
        let all: Vec<u64> = self.members.keys().copied().collect();
        self.wait_converged(&all).await;
        id
    }

    pub fn config(&self, id: u64, db: sled::Db, bootstrap: Bootstrap) -> RaftConfig {
        let mut cfg = RaftConfig::new(id, addr(id), db);
        cfg.bootstrap = bootstrap;
        cfg.tick = self.opts.tick;
        cfg.compaction_threshold = self.opts.compaction_threshold;
        cfg.snapshot_catchup_entries = self.opts.snapshot_catchup_entries;
        cfg.request_timeout = Duration::from_secs(5);
        cfg
    }

    /// Start (or restart from its data dir) member `id`.
    pub fn spawn(&mut self, id: u64, bootstrap: Bootstrap) {
        let dir = self
            .dirs
            .entry(id)
            .or_insert_with(|| tempfile::tempdir().unwrap());
        let log_dir = dir.path().join("raft-wal");
        let db = sled::open(dir.path().join("db")).unwrap();
        let sm = LogSm::open(&db);
        let mut cfg = self.config(id, db, bootstrap);
        cfg.log_dir = Some(log_dir);
        let net = self.net.clone();
        let (node, handle) =
            RaftNode::with_transport(cfg, sm.clone(), |r| net.transport(id, r)).unwrap();
        self.net.register(&handle);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(node.run(shutdown.clone()));
        self.members.insert(
            id,
            Member {
                handle,
                sm,
                shutdown,
                task,
            },
        );
    }

    /// Stop member `id` (its data dir is kept for a restart).
    pub async fn stop(&mut self, id: u64) {
        let m = self.members.remove(&id).unwrap();
        self.net.unregister(id);
        m.shutdown.cancel();
        m.task.await.unwrap().unwrap();
        drop(m.sm);
    }

    /// Crash member `id` like `kill -9`: its task is aborted mid-flight (no final log sync,
    /// no sled flush on the raft side); its data dir is kept for a restart.
    pub async fn crash(&mut self, id: u64) {
        let m = self.members.remove(&id).unwrap();
        self.net.unregister(id);
        m.task.abort();
        let _ = m.task.await;
        drop(m.sm);
    }

    /// Append the first `keep` bytes of a well-formed record holding an entry to the tail
    /// of member `id`'s last log segment: a write torn by a crash before its fsync returned.
    pub fn tear_log_tail(&self, id: u64, keep: usize) {
        let dir = self.dirs[&id].path().join("raft-wal");
        let mut segs: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "wal"))
            .collect();
        segs.sort();
        let last = segs.pop().expect("a log segment");
        // len | crc | kind=entries | u32 len | garbage entry bytes.
        let payload: Vec<u8> = [1u8, 40, 0, 0, 0]
            .into_iter()
            .chain(std::iter::repeat_n(0xAB, 40))
            .collect();
        let mut rec = (payload.len() as u32).to_le_bytes().to_vec();
        rec.extend_from_slice(&0xDEAD_BEEFu32.to_le_bytes());
        rec.extend_from_slice(&payload);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&last)
            .unwrap();
        std::io::Write::write_all(&mut f, &rec[..keep.min(rec.len())]).unwrap();
    }

    pub fn handle(&self, id: u64) -> &RaftHandle {
        &self.members[&id].handle
    }

    /// Wait until exactly one of `ids` leads and the others among `ids` agree.
    pub async fn wait_leader(&self, ids: &[u64]) -> u64 {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let leaders: Vec<u64> = ids
                .iter()
                .filter(|id| self.members[id].handle.is_leader())
                .copied()
                .collect();
            if let [leader] = leaders[..] {
                if ids
                    .iter()
                    .all(|id| self.members[id].handle.leader_id() == Some(leader))
                {
                    return leader;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader among {ids:?}: {:?}",
                ids.iter()
                    .map(|id| self.members[id].handle.status())
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Propose through whoever leads among `ids`, retrying on leader changes.
    pub async fn write(&self, ids: &[u64], data: &str) -> Vec<u8> {
        let handles: Vec<RaftHandle> = ids.iter().map(|id| self.handle(*id).clone()).collect();
        propose_retry(&handles, data).await
    }

    /// Wait until all of `ids` applied the same log.
    pub async fn wait_converged(&self, ids: &[u64]) -> Vec<String> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let logs: Vec<Vec<String>> = ids
                .iter()
                .map(|id| self.members[id].sm.log_strings())
                .collect();
            let applied: Vec<u64> = ids
                .iter()
                .map(|id| self.members[id].handle.status().applied)
                .collect();
            let commits: Vec<u64> = ids
                .iter()
                .map(|id| self.members[id].handle.status().commit)
                .collect();
            if logs.windows(2).all(|w| w[0] == w[1])
                && applied.windows(2).all(|w| w[0] == w[1])
                && commits.iter().zip(&applied).all(|(c, a)| c == a)
            {
                return logs.into_iter().next().unwrap_or_default();
            }
            assert!(
                Instant::now() < deadline,
                "members {ids:?} did not converge: applied {applied:?}, commit {commits:?}, log lengths {:?}",
                logs.iter().map(Vec::len).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait until member `id`'s published status shows what its state machine applied (the
    /// status trails replies by one loop iteration; the last entry must be a write).
    pub async fn settle(&self, id: u64) {
        let deadline = Instant::now() + DEADLINE;
        let m = &self.members[&id];
        while m.handle.status().applied != m.sm.applied_index() {
            assert!(Instant::now() < deadline, "status of {id} never caught up");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Every member's applied log must be a prefix of the longest one (no divergence).
    pub fn assert_logs_are_prefixes(&self) {
        let logs: Vec<(u64, Vec<String>)> = self
            .members
            .iter()
            .map(|(id, m)| (*id, m.sm.log_strings()))
            .collect();
        let longest = logs.iter().map(|(_, l)| l).max_by_key(|l| l.len()).unwrap();
        for (id, l) in &logs {
            assert_eq!(
                &longest[..l.len()],
                &l[..],
                "member {id}'s applied log diverges"
            );
        }
    }

    pub async fn shutdown(mut self) {
        let ids: Vec<u64> = self.members.keys().copied().collect();
        for id in ids {
            self.stop(id).await;
        }
    }
}

/// Each acknowledged write must appear exactly once; the log must hold no duplicates.
pub fn assert_exactly_once(log: &[String], acked: &[String]) {
    let mut seen = std::collections::HashSet::new();
    for e in log {
        assert!(seen.insert(e.clone()), "entry {e} applied twice");
    }
    for a in acked {
        assert!(seen.contains(a), "acknowledged write {a} is missing");
    }
}

/// Propose `data` through whichever of `handles` leads, retrying only when the write was
/// certainly not applied (`NotLeader`, `Dropped`), so exactly-once checks stay valid.
pub async fn propose_retry(handles: &[RaftHandle], data: &str) -> Vec<u8> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let leader = handles.iter().find(|h| h.is_leader());
        if let Some(h) = leader {
            match h.propose(data.as_bytes().to_vec()).await {
                Ok(r) => return r,
                Err(RaftError::NotLeader { .. } | RaftError::Dropped) => {}
                Err(e) => panic!("write {data}: outcome unknown: {e}"),
            }
        }
        assert!(Instant::now() < deadline, "write {data}: no leader took it");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Proposes `p0`..`p{n-1}` through `handles` from `workers` concurrent tasks (worker `w` takes
/// every `workers`-th index from `w`), each with [`propose_retry`]; returns the seconds taken.
pub async fn propose_concurrently(handles: &[RaftHandle], n: u64, workers: u64) -> f64 {
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let handles = handles.to_vec();
        tasks.spawn(async move {
            for i in (w..n).step_by(workers as usize) {
                propose_retry(&handles, &format!("p{i}")).await;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    start.elapsed().as_secs_f64()
}
