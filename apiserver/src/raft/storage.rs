//! `raft::Storage`: the log and hard state in the segmented write-ahead log of [`super::wal`]
//! (one fsync per Ready), snapshots as files next to it, and the slow-changing raft metadata
//! in the server's shared `sled::Db` (tree `raft_meta`).
//!
//! `raft_meta`: `node_id`, `conf_state`, `applied`, `members` (JSON). They change only when
//! entries are applied and are not fsynced per Ready: after a crash they may be behind the
//! log, and the entries after them are applied again (the log is the durability). The log is
//! compacted only behind a snapshot whose state was flushed to sled first.
//!
//! Data dirs of Berth versions that kept the log in sled (`raft_log`, `hard_state` in
//! `raft_meta`) are refused with an error saying so (see [`SledStorage::open`]).
//!
//! Only the raft task mutates this storage (through `RawNode::mut_store`), except the
//! snapshot job, which writes its own not-yet-named snapshot file.

// rust-protobuf messages are built by assigning fields of a default value.
#![allow(clippy::field_reassign_with_default)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::wal::{SnapshotFiles, SyncDone, SyncJob, Wal};
use super::{RaftError, StateMachine};
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};

const META_TREE: &str = "raft_meta";
const OLD_LOG_TREE: &str = "raft_log";

const K_NODE_ID: &[u8] = b"node_id";
/// Only in data dirs of the old format (the hard state is in the log now).
const K_OLD_HARD_STATE: &[u8] = b"hard_state";
const K_CONF_STATE: &[u8] = b"conf_state";
const K_APPLIED: &[u8] = b"applied";
const K_MEMBERS: &[u8] = b"members";

/// The replicated member list (applied from ConfChange entries; carried in snapshots).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Members {
    /// id -> raft/gRPC address.
    pub addrs: BTreeMap<u64, String>,
    /// Highest id ever added: ids are never reused.
    pub max_id: u64,
}

/// What a raft snapshot's `data` holds: the member list plus the state machine's own bytes
/// (`None` for the bootstrap snapshot, which stands for the empty initial state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SnapshotPayload {
    pub members: Members,
    pub state: Option<Vec<u8>>,
}

const PAYLOAD_VERSION: u8 = 1;

impl SnapshotPayload {
    pub fn encode(&self) -> Result<Vec<u8>, RaftError> {
        let members =
            serde_json::to_vec(&self.members).map_err(|e| RaftError::Corrupt(e.to_string()))?;
        let len = u32::try_from(members.len())
            .map_err(|_| RaftError::Corrupt("member list too large".to_string()))?;
        let mut out =
            Vec::with_capacity(6 + members.len() + self.state.as_ref().map_or(0, |s| s.len()));
        out.push(PAYLOAD_VERSION);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&members);
        match &self.state {
            Some(state) => {
                out.push(1);
                out.extend_from_slice(state);
            }
            None => out.push(0),
        }
        Ok(out)
    }

    pub fn decode(data: &[u8]) -> Result<Self, RaftError> {
        let bad = |what: &str| RaftError::Corrupt(format!("snapshot payload: {what}"));
        let (&version, rest) = data.split_first().ok_or_else(|| bad("empty"))?;
        if version != PAYLOAD_VERSION {
            return Err(bad(&format!("unknown version {version}")));
        }
        if rest.len() < 4 {
            return Err(bad("truncated header"));
        }
        let (len, rest) = rest.split_at(4);
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if rest.len() < len + 1 {
            return Err(bad("truncated member list"));
        }
        let (members, rest) = rest.split_at(len);
        let members: Members =
            serde_json::from_slice(members).map_err(|e| bad(&format!("member list: {e}")))?;
        let state = match rest.split_first() {
            Some((1, state)) => Some(state.to_vec()),
            Some((0, _)) => None,
            _ => return Err(bad("bad state marker")),
        };
        Ok(Self { members, state })
    }
}

/// `raft::Storage` over the write-ahead log, snapshot files and sled metadata. See the
/// module docs.
pub struct SledStorage {
    db: sled::Db,
    meta: sled::Tree,
    wal: Wal,
    snaps: Arc<SnapshotFiles>,
    sm: Arc<dyn StateMachine>,
    node_id: Option<u64>,
    conf_state: ConfState,
    applied: u64,
    members: Members,
    snapshot_meta: SnapshotMetadata,
}

fn u64_key(i: u64) -> [u8; 8] {
    i.to_be_bytes()
}

fn read_u64(bytes: &[u8]) -> Result<u64, RaftError> {
    let arr: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| RaftError::Corrupt("short integer".to_string()))?;
    Ok(u64::from_be_bytes(arr))
}

fn decode_pb<M: protobuf::Message>(bytes: &[u8], what: &str) -> Result<M, RaftError> {
    M::parse_from_bytes(bytes).map_err(|e| RaftError::Corrupt(format!("{what}: {e}")))
}

fn encode_pb<M: protobuf::Message>(m: &M) -> Result<Vec<u8>, RaftError> {
    m.write_to_bytes()
        .map_err(|e| RaftError::Corrupt(format!("encode: {e}")))
}

fn store_err(e: impl std::fmt::Display) -> raft::Error {
    raft::Error::Store(StorageError::Other(e.to_string().into()))
}

impl SledStorage {
    /// Open (or create empty) raft storage: metadata in `db`, the log and snapshots in
    /// `log_dir` (None: in memory, for tests). `sm` is used to build snapshots on demand for
    /// followers that need one.
    pub fn open(
        db: sled::Db,
        log_dir: Option<&Path>,
        sm: Arc<dyn StateMachine>,
    ) -> Result<Self, RaftError> {
        let meta = db.open_tree(META_TREE)?;
        let old_log = db
            .tree_names()
            .iter()
            .any(|n| n.as_ref() == OLD_LOG_TREE.as_bytes())
            && !db.open_tree(OLD_LOG_TREE)?.is_empty();
        if old_log || meta.contains_key(K_OLD_HARD_STATE)? {
            return Err(RaftError::Config(format!(
                "this data directory holds a raft log in the old format (inside the sled \
                 database); this version of Berth keeps the log in {} and cannot read the old \
                 one. Run the Berth version that wrote it, or move the data directory aside \
                 and join this server again as a new member (berth server --join): it catches \
                 up from the leader's snapshot",
                log_dir.map_or("memory".to_string(), |d| d.display().to_string())
            )));
        }
        let node_id = meta.get(K_NODE_ID)?.map(|v| read_u64(&v)).transpose()?;
        let wal = match log_dir {
            Some(dir) => {
                if node_id.is_some() && !Wal::exists(dir) {
                    return Err(RaftError::Config(format!(
                        "the raft log directory {} is missing although this data directory \
                         belongs to raft member {}; restore it, or move the data directory \
                         aside and join this server again as a new member (berth server --join)",
                        dir.display(),
                        node_id.unwrap_or_default()
                    )));
                }
                Wal::open(dir)?
            }
            None => Wal::in_memory(),
        };
        let snaps = SnapshotFiles::new(log_dir.map(Path::to_path_buf));
        let conf_state = match meta.get(K_CONF_STATE)? {
            Some(b) => decode_pb(&b, "conf state")?,
            None => ConfState::default(),
        };
        let snapshot_meta = snaps.latest_meta()?.unwrap_or_default();
        let applied = meta.get(K_APPLIED)?.map(|v| read_u64(&v)).transpose()?;
        let members = match meta.get(K_MEMBERS)? {
            Some(v) => serde_json::from_slice(&v)
                .map_err(|e| RaftError::Corrupt(format!("member list: {e}")))?,
            None => Members::default(),
        };
        Ok(Self {
            db,
            meta,
            wal,
            snaps,
            sm,
            node_id,
            conf_state,
            applied: applied.unwrap_or(0),
            members,
            snapshot_meta,
        })
    }

    /// The member id this data dir belongs to, if it was ever initialized.
    pub fn node_id(&self) -> Option<u64> {
        self.node_id
    }

    /// Initialize a brand-new single-member cluster: a bootstrap snapshot at index 1, term 1
    /// whose only voter is `id`. Entries start at index 2, so every member added later catches
    /// up by snapshot first (and so starts from the same state). Durable once
    /// [`SledStorage::sync_now`] returned and the `Db` was flushed.
    pub(crate) fn bootstrap(&mut self, id: u64, address: &str) -> Result<(), RaftError> {
        let mut members = Members::default();
        members.addrs.insert(id, address.to_string());
        members.max_id = id;
        let mut cs = ConfState::default();
        cs.voters = vec![id];
        let mut meta = SnapshotMetadata::default();
        meta.index = 1;
        meta.term = 1;
        meta.set_conf_state(cs.clone());
        let payload = SnapshotPayload {
            members: members.clone(),
            state: None,
        };
        self.put_node_id(id)?;
        self.save_snapshot(meta, payload.encode()?)?;
        self.wal.reset(1, 1);
        let mut hs = HardState::default();
        hs.term = 1;
        hs.commit = 1;
        self.set_hard_state(&hs)?;
        self.set_conf_state(cs)?;
        self.set_members(members)?;
        self.set_applied(1)?;
        Ok(())
    }

    /// Mark this empty data dir as belonging to member `id` (a joining node).
    pub(crate) fn init_join(&mut self, id: u64) -> Result<(), RaftError> {
        self.put_node_id(id)
    }

    fn put_node_id(&mut self, id: u64) -> Result<(), RaftError> {
        self.meta.insert(K_NODE_ID, &u64_key(id))?;
        self.node_id = Some(id);
        Ok(())
    }

    /// Persist new log entries, replacing any conflicting suffix (durable at the next sync).
    pub(crate) fn append(&mut self, entries: &[Entry]) -> Result<(), RaftError> {
        self.wal.append(entries)
    }

    /// Durable at the next sync.
    pub(crate) fn set_hard_state(&mut self, hs: &HardState) -> Result<(), RaftError> {
        if self.wal.hard_state() != hs {
            self.wal.set_hard_state(hs)?;
        }
        Ok(())
    }

    pub(crate) fn set_commit(&mut self, commit: u64) -> Result<(), RaftError> {
        let mut hs = self.wal.hard_state().clone();
        hs.commit = commit;
        self.set_hard_state(&hs)
    }

    /// Hand what was appended since the last sync to a job (run it off the raft task, then
    /// give its outcome to [`SledStorage::finish_sync`]).
    pub(crate) fn start_sync(&mut self, fsync: bool) -> Result<Option<SyncJob>, RaftError> {
        self.wal.start_sync(fsync)
    }

    pub(crate) fn finish_sync(&mut self, done: SyncDone, removed: &[std::path::PathBuf]) {
        self.wal.finish_sync(done, removed)
    }

    /// Write and fsync the log now (blocking; bootstrap, snapshot install and shutdown).
    pub(crate) fn sync_now(&mut self) -> Result<(), RaftError> {
        self.wal.sync_now()
    }

    pub(crate) fn set_conf_state(&mut self, cs: ConfState) -> Result<(), RaftError> {
        self.meta.insert(K_CONF_STATE, encode_pb(&cs)?)?;
        self.conf_state = cs;
        Ok(())
    }

    pub(crate) fn set_members(&mut self, members: Members) -> Result<(), RaftError> {
        let bytes = serde_json::to_vec(&members).map_err(|e| RaftError::Corrupt(e.to_string()))?;
        self.meta.insert(K_MEMBERS, bytes)?;
        self.members = members;
        Ok(())
    }

    /// Record that everything up to `index` has been applied (conf changes, no-ops and the
    /// state machine's entries alike).
    pub(crate) fn set_applied(&mut self, index: u64) -> Result<(), RaftError> {
        self.meta.insert(K_APPLIED, &u64_key(index))?;
        self.applied = index;
        Ok(())
    }

    /// A conf change was applied: conf state, members and applied index in one atomic batch.
    pub(crate) fn apply_conf_change(
        &mut self,
        cs: ConfState,
        members: Members,
        index: u64,
    ) -> Result<(), RaftError> {
        let mut batch = sled::Batch::default();
        batch.insert(K_CONF_STATE, encode_pb(&cs)?);
        batch.insert(
            K_MEMBERS,
            serde_json::to_vec(&members).map_err(|e| RaftError::Corrupt(e.to_string()))?,
        );
        batch.insert(K_APPLIED, &u64_key(index));
        self.meta.apply_batch(batch)?;
        self.conf_state = cs;
        self.members = members;
        self.applied = index;
        Ok(())
    }

    /// Store `meta`/`data` durably as the latest snapshot (does not touch the log).
    pub(crate) fn save_snapshot(
        &mut self,
        meta: SnapshotMetadata,
        data: Vec<u8>,
    ) -> Result<(), RaftError> {
        self.snaps.write(&meta, &data)?;
        self.snapshot_meta = meta;
        self.prune_snapshots()
    }

    /// Install a snapshot received from the leader: it replaces the whole log. The reset is
    /// durable after the next sync (the caller syncs before restoring the state machine).
    pub(crate) fn apply_snapshot(
        &mut self,
        snap: &Snapshot,
        payload: &SnapshotPayload,
    ) -> Result<(), RaftError> {
        let meta = snap.get_metadata().clone();
        let (index, term) = (meta.index, meta.term);
        self.save_snapshot(meta.clone(), snap.data.to_vec())?;
        self.wal.reset(index, term);
        let mut hs = self.wal.hard_state().clone();
        hs.term = hs.term.max(term);
        hs.commit = hs.commit.max(index);
        self.set_hard_state(&hs)?;
        self.set_conf_state(meta.get_conf_state().clone())?;
        self.set_members(payload.members.clone())?;
        Ok(())
    }

    /// Drop log entries up to and including `index` (at most the applied index): whole
    /// segments go once the compaction record is durable.
    pub(crate) fn compact(&mut self, index: u64) -> Result<(), RaftError> {
        if index <= self.wal.truncated().0 {
            return Ok(());
        }
        let index = index.min(self.applied).min(self.wal.last_index());
        let term = self.term_of(index)?;
        self.wal.compact(index, term);
        Ok(())
    }

    /// Make every write to `db` so far durable (fsync). Runs `Db::flush` on the blocking pool:
    /// sled 0.34's `flush_async` can lose its wake-up when several databases flush at once
    /// (spacejam/sled#1241, #1308) and would hang the raft task.
    pub(crate) async fn flush(db: &sled::Db) -> Result<(), RaftError> {
        let db = db.clone();
        match tokio::task::spawn_blocking(move || db.flush()).await {
            Ok(res) => {
                res?;
                Ok(())
            }
            Err(e) => Err(RaftError::Corrupt(format!("sled flush task failed: {e}"))),
        }
    }

    pub(crate) fn hard_state(&self) -> &HardState {
        self.wal.hard_state()
    }

    pub(crate) fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    pub(crate) fn members(&self) -> &Members {
        &self.members
    }

    pub(crate) fn applied(&self) -> u64 {
        self.applied
    }

    pub(crate) fn snapshot_index(&self) -> u64 {
        self.snapshot_meta.index
    }

    pub(crate) fn last(&self) -> u64 {
        self.wal.last_index()
    }

    /// The stored snapshot (metadata and payload bytes).
    pub(crate) fn stored_snapshot(&self) -> Result<Snapshot, RaftError> {
        if self.snapshot_meta.index == 0 {
            let mut snap = Snapshot::default();
            snap.set_metadata(self.snapshot_meta.clone());
            return Ok(snap);
        }
        self.snaps.read(self.snapshot_meta.index)?.ok_or_else(|| {
            RaftError::Corrupt(format!(
                "the snapshot at index {} is missing",
                self.snapshot_meta.index
            ))
        })
    }

    fn term_of(&self, idx: u64) -> Result<u64, RaftError> {
        let truncated = self.wal.truncated();
        if idx == truncated.0 {
            return Ok(truncated.1);
        }
        match self.wal.entry(idx) {
            Some(e) => Ok(e.term),
            None => Err(RaftError::Corrupt(format!("log entry {idx} missing"))),
        }
    }

    /// Like [`SledStorage::build_snapshot`], but only captures here: the returned job encodes
    /// the payload, makes the state machine's `Db` durable and writes the snapshot file (run
    /// it off the raft task) for the returned metadata.
    pub(crate) fn snapshot_job(&self) -> Result<(SnapshotMetadata, PayloadJob), RaftError> {
        let mut meta = SnapshotMetadata::default();
        meta.index = self.applied;
        meta.term = self.term_of(self.applied)?;
        meta.set_conf_state(self.conf_state.clone());
        let members = self.members.clone();
        let state = self.sm.snapshot_job();
        let (snaps, db, job_meta) = (self.snaps.clone(), self.db.clone(), meta.clone());
        Ok((
            meta,
            Box::new(move || {
                let state = state().map_err(RaftError::StateMachine)?;
                let data = SnapshotPayload {
                    members,
                    state: Some(state),
                }
                .encode()?;
                // The log behind the snapshot is dropped after this: everything applied up
                // to it (state machine and raft metadata) must be durable first.
                db.flush()?;
                // It becomes THE stored snapshot only when `commit_snapshot` takes it.
                snaps.write(&job_meta, &data)
            }),
        ))
    }

    /// Make the snapshot a [`SledStorage::snapshot_job`] wrote the stored one, unless a newer
    /// one was installed meanwhile. Returns whether it was taken.
    pub(crate) fn commit_snapshot(&mut self, meta: SnapshotMetadata) -> Result<bool, RaftError> {
        if meta.index <= self.snapshot_meta.index {
            if meta.index < self.snapshot_meta.index {
                self.snaps.remove(meta.index)?;
            }
            return Ok(false);
        }
        self.snapshot_meta = meta;
        self.prune_snapshots()?;
        Ok(true)
    }

    /// Drop snapshot files other than the stored one's.
    fn prune_snapshots(&self) -> Result<(), RaftError> {
        self.snaps.prune(self.snapshot_meta.index)
    }

    /// Build a snapshot of the current applied state (conf state and members as applied).
    pub(crate) fn build_snapshot(&self) -> Result<Snapshot, RaftError> {
        let index = self.applied;
        let term = self.term_of(index)?;
        let state = self.sm.snapshot().map_err(RaftError::StateMachine)?;
        let payload = SnapshotPayload {
            members: self.members.clone(),
            state: Some(state),
        };
        let mut snap = Snapshot::default();
        let meta = snap.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(self.conf_state.clone());
        snap.data = payload.encode()?.into();
        Ok(snap)
    }
}

/// Encodes a captured snapshot payload (see [`SledStorage::snapshot_job`]).
pub(crate) type PayloadJob = Box<dyn FnOnce() -> Result<(), RaftError> + Send>;

fn conf_contains(cs: &ConfState, id: u64) -> bool {
    cs.voters
        .iter()
        .chain(cs.learners.iter())
        .chain(cs.voters_outgoing.iter())
        .any(|v| *v == id)
}

impl raft::Storage for SledStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.wal.hard_state().clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.wal.truncated().0 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.wal.last_index() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let out = self
            .wal
            .range(low, high, max_size.into().unwrap_or(u64::MAX));
        if out.is_empty() && low < high {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let truncated = self.wal.truncated();
        if idx == truncated.0 {
            return Ok(truncated.1);
        }
        if idx < truncated.0 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        match self.wal.entry(idx) {
            Some(e) => Ok(e.term),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.wal.truncated().0 + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.wal.last_index())
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        // The stored snapshot is usable if it is recent enough and already knows the peer
        // (a follower rejects a snapshot whose conf state does not contain itself). Otherwise
        // build a fresh one from the applied state: it always includes every applied AddNode.
        let stored = &self.snapshot_meta;
        if stored.index >= request_index
            && stored.index >= self.wal.truncated().0
            && conf_contains(stored.get_conf_state(), to)
        {
            return self.stored_snapshot().map_err(store_err);
        }
        if self.applied < request_index || self.applied < self.wal.truncated().0 {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        self.build_snapshot().map_err(store_err)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use raft::Storage;
    use std::sync::Mutex;

    #[derive(Default)]
    struct NullSm {
        applied: Mutex<u64>,
    }
    impl StateMachine for NullSm {
        fn apply(&self, index: u64, _data: &[u8]) -> Vec<u8> {
            *self.applied.lock().unwrap() = index;
            vec![]
        }
        fn applied_index(&self) -> u64 {
            *self.applied.lock().unwrap()
        }
        fn snapshot(&self) -> Result<Vec<u8>, String> {
            Ok(b"state".to_vec())
        }
        fn restore(&self, index: u64, _data: &[u8]) -> Result<(), String> {
            *self.applied.lock().unwrap() = index;
            Ok(())
        }
    }

    fn entry(index: u64, term: u64) -> Entry {
        let mut e = Entry::default();
        e.index = index;
        e.term = term;
        e.data = format!("e{index}").into_bytes().into();
        e
    }

    fn open(db: &sled::Db) -> SledStorage {
        SledStorage::open(db.clone(), None, Arc::new(NullSm::default())).unwrap()
    }

    fn open_at(db: &sled::Db, dir: &Path) -> SledStorage {
        SledStorage::open(
            db.clone(),
            Some(&dir.join("wal")),
            Arc::new(NullSm::default()),
        )
        .unwrap()
    }

    #[test]
    fn bootstrap_then_append_truncates_conflicting_suffix_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path().join("db")).unwrap();
        let mut s = open_at(&db, dir.path());
        s.bootstrap(1, "a:1").unwrap();
        assert_eq!(s.first_index().unwrap(), 2);
        assert_eq!(s.last_index().unwrap(), 1);
        assert_eq!(s.term(1).unwrap(), 1);
        s.append(&[entry(2, 1), entry(3, 1), entry(4, 1)]).unwrap();
        // A new leader overwrites 3..: 4 must disappear.
        s.append(&[entry(3, 2)]).unwrap();
        assert_eq!(s.last_index().unwrap(), 3);
        assert_eq!(s.term(3).unwrap(), 2);
        let got = s
            .entries(2, 4, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(got.iter().map(|e| e.term).collect::<Vec<_>>(), vec![1, 2]);
        s.sync_now().unwrap();
        drop(s);
        let s = open_at(&db, dir.path());
        assert_eq!(s.node_id(), Some(1));
        assert_eq!(s.last_index().unwrap(), 3);
        assert_eq!(s.initial_state().unwrap().conf_state.voters, vec![1]);
        assert_eq!(s.members().addrs.get(&1).map(String::as_str), Some("a:1"));
    }

    #[test]
    fn data_dir_of_the_old_sled_log_format_is_refused_with_a_clear_error() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        db.open_tree("raft_meta")
            .unwrap()
            .insert(K_OLD_HARD_STATE, vec![0u8])
            .unwrap();
        let err = SledStorage::open(db, None, Arc::new(NullSm::default()))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("old format"), "{err}");
        assert!(err.contains("berth server --join"), "{err}");
    }

    #[test]
    fn entries_respect_max_size_but_return_at_least_one() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let mut s = open(&db);
        s.bootstrap(1, "a").unwrap();
        s.append(&[entry(2, 1), entry(3, 1), entry(4, 1)]).unwrap();
        let one = s
            .entries(2, 5, Some(1), GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(one.len(), 1);
        let all = s
            .entries(2, 5, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(all.len(), 3);
    }

    #[test]
    fn compaction_drops_prefix_and_reports_compacted() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let mut s = open(&db);
        s.bootstrap(1, "a").unwrap();
        s.append(&[entry(2, 1), entry(3, 2), entry(4, 2)]).unwrap();
        s.set_applied(4).unwrap();
        s.compact(3).unwrap();
        assert_eq!(s.first_index().unwrap(), 4);
        assert_eq!(s.term(3).unwrap(), 2);
        assert!(matches!(
            s.term(2),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        assert!(matches!(
            s.entries(3, 5, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
    }

    #[test]
    fn snapshot_for_unknown_peer_is_built_fresh_from_applied_state() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let mut s = open(&db);
        s.bootstrap(1, "a").unwrap();
        s.append(&[entry(2, 1), entry(3, 1)]).unwrap();
        let mut cs = ConfState::default();
        cs.voters = vec![1, 2];
        let mut members = s.members().clone();
        members.addrs.insert(2, "b".to_string());
        members.max_id = 2;
        s.apply_conf_change(cs, members, 3).unwrap();
        // The stored bootstrap snapshot does not contain 2: a fresh one is built at applied.
        let snap = s.snapshot(0, 2).unwrap();
        assert_eq!(snap.get_metadata().index, 3);
        assert_eq!(snap.get_metadata().get_conf_state().voters, vec![1, 2]);
        let payload = SnapshotPayload::decode(&snap.data).unwrap();
        assert_eq!(payload.state.as_deref(), Some(&b"state"[..]));
        assert_eq!(payload.members.addrs.len(), 2);
    }

    #[test]
    fn snapshot_payload_roundtrip_and_rejects_garbage() {
        let mut members = Members::default();
        members.addrs.insert(7, "x:1".into());
        members.max_id = 7;
        for state in [None, Some(vec![]), Some(b"abc".to_vec())] {
            let p = SnapshotPayload {
                members: members.clone(),
                state,
            };
            assert_eq!(SnapshotPayload::decode(&p.encode().unwrap()).unwrap(), p);
        }
        assert!(SnapshotPayload::decode(b"").is_err());
        assert!(SnapshotPayload::decode(&[1, 0, 0, 0, 9, b'{']).is_err());
    }
}
