//! `raft::Storage` over sled: the log, hard state, conf state, member list, applied index and
//! the latest snapshot, all in trees prefixed `raft_` of the server's shared `sled::Db`.
//!
//! Layout:
//! - `raft_log`: key = index (u64 big-endian), value = term (u64 BE) ++ `eraftpb::Entry`
//!   (the term prefix lets `term()` answer without decoding the entry).
//! - `raft_meta`: `node_id`, `hard_state`, `conf_state`, `truncated` (index and term of the
//!   last entry removed from the log, i.e. `first_index - 1`), `applied`, `members` (JSON),
//!   `snapshot_meta`.
//! - `raft_snapshot`: key = index (u64 BE), value = the snapshot payload ([`SnapshotPayload`]);
//!   the one `snapshot_meta` names is the stored snapshot (others are pruned). A snapshot the
//!   node takes itself is encoded and written here off the raft task, then named. It has a
//!   tree of its own because sled rewrites a whole leaf node every few updates: kept next to
//!   `hard_state`/`applied` (updated every Ready) a multi-MB snapshot was rewritten several
//!   times per second (hundreds of MB/s of disk writes). Data dirs from before keep it as
//!   `snapshot_data` in `raft_meta`, read as a fallback and removed by the next snapshot.
//!
//! Writes are not flushed here: the raft task flushes the `Db` once per Ready (group commit).
//! Only the raft task mutates this storage (through `RawNode::mut_store`), except the
//! snapshot job, which writes its own not-yet-named payload key in `raft_snapshot`.

// rust-protobuf messages are built by assigning fields of a default value.
#![allow(clippy::field_reassign_with_default)]

use std::collections::BTreeMap;
use std::sync::Arc;

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};
use sled::transaction::Transactional as _;

use super::{RaftError, StateMachine};

const LOG_TREE: &str = "raft_log";
const META_TREE: &str = "raft_meta";
const SNAP_TREE: &str = "raft_snapshot";

const K_NODE_ID: &[u8] = b"node_id";
const K_HARD_STATE: &[u8] = b"hard_state";
const K_CONF_STATE: &[u8] = b"conf_state";
const K_TRUNCATED: &[u8] = b"truncated";
const K_APPLIED: &[u8] = b"applied";
const K_MEMBERS: &[u8] = b"members";
const K_SNAP_META: &[u8] = b"snapshot_meta";
const K_SNAP_DATA: &[u8] = b"snapshot_data";

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

/// `raft::Storage` persisted in sled. See the module docs for the layout.
pub struct SledStorage {
    log: sled::Tree,
    meta: sled::Tree,
    snap: sled::Tree,
    sm: Arc<dyn StateMachine>,
    node_id: Option<u64>,
    hard_state: HardState,
    conf_state: ConfState,
    truncated: (u64, u64),
    last_index: u64,
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
    /// Open (or create empty) raft storage in `db`. `sm` is used to build snapshots on demand
    /// for followers that need one.
    pub fn open(db: sled::Db, sm: Arc<dyn StateMachine>) -> Result<Self, RaftError> {
        let log = db.open_tree(LOG_TREE)?;
        let meta = db.open_tree(META_TREE)?;
        let snap = db.open_tree(SNAP_TREE)?;
        let get_pb = |key: &[u8], what: &str| -> Result<Option<Vec<u8>>, RaftError> {
            let _ = what;
            Ok(meta.get(key)?.map(|v| v.to_vec()))
        };
        let node_id = meta.get(K_NODE_ID)?.map(|v| read_u64(&v)).transpose()?;
        let hard_state = match get_pb(K_HARD_STATE, "hard state")? {
            Some(b) => decode_pb(&b, "hard state")?,
            None => HardState::default(),
        };
        let conf_state = match get_pb(K_CONF_STATE, "conf state")? {
            Some(b) => decode_pb(&b, "conf state")?,
            None => ConfState::default(),
        };
        let snapshot_meta = match get_pb(K_SNAP_META, "snapshot meta")? {
            Some(b) => decode_pb(&b, "snapshot metadata")?,
            None => SnapshotMetadata::default(),
        };
        let truncated = match meta.get(K_TRUNCATED)? {
            Some(v) if v.len() == 16 => (read_u64(&v[..8])?, read_u64(&v[8..])?),
            Some(_) => return Err(RaftError::Corrupt("truncated marker".to_string())),
            None => (0, 0),
        };
        let applied = meta.get(K_APPLIED)?.map(|v| read_u64(&v)).transpose()?;
        let members = match meta.get(K_MEMBERS)? {
            Some(v) => serde_json::from_slice(&v)
                .map_err(|e| RaftError::Corrupt(format!("member list: {e}")))?,
            None => Members::default(),
        };
        let last_index = match log.last()? {
            Some((k, _)) => read_u64(&k)?,
            None => truncated.0,
        };
        Ok(Self {
            log,
            meta,
            snap,
            sm,
            node_id,
            hard_state,
            conf_state,
            truncated,
            last_index,
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
    /// up by snapshot first (and so starts from the same state).
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
        self.truncated = (1, 1);
        self.last_index = 1;
        self.meta
            .insert(K_TRUNCATED, truncated_bytes(self.truncated))?;
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

    /// Persist new log entries, replacing any conflicting suffix.
    pub(crate) fn append(&mut self, entries: &[Entry]) -> Result<(), RaftError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        if first.index <= self.truncated.0 {
            return Err(RaftError::Corrupt(format!(
                "append at index {} overlaps the compacted log (up to {})",
                first.index, self.truncated.0
            )));
        }
        if first.index > self.last_index + 1 {
            return Err(RaftError::Corrupt(format!(
                "append at index {} leaves a gap after last index {}",
                first.index, self.last_index
            )));
        }
        let mut batch = sled::Batch::default();
        for idx in first.index..=self.last_index {
            batch.remove(&u64_key(idx));
        }
        for e in entries {
            let mut v = Vec::with_capacity(8 + e.compute_size() as usize);
            v.extend_from_slice(&u64_key(e.term));
            e.write_to_vec(&mut v)
                .map_err(|err| RaftError::Corrupt(format!("encode entry: {err}")))?;
            batch.insert(&u64_key(e.index), v);
        }
        self.log.apply_batch(batch)?;
        self.last_index = entries.last().map_or(self.last_index, |e| e.index);
        Ok(())
    }

    pub(crate) fn set_hard_state(&mut self, hs: &HardState) -> Result<(), RaftError> {
        self.meta.insert(K_HARD_STATE, encode_pb(hs)?)?;
        self.hard_state = hs.clone();
        Ok(())
    }

    pub(crate) fn set_commit(&mut self, commit: u64) -> Result<(), RaftError> {
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        self.set_hard_state(&hs)
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

    /// Store `meta`/`data` as the latest snapshot (does not touch the log).
    pub(crate) fn save_snapshot(
        &mut self,
        meta: SnapshotMetadata,
        data: Vec<u8>,
    ) -> Result<(), RaftError> {
        let meta_bytes = encode_pb(&meta)?;
        (&self.meta, &self.snap)
            .transaction(|(m, s)| {
                m.insert(K_SNAP_META, meta_bytes.as_slice())?;
                // Where data dirs from before the `raft_snapshot` tree kept it.
                m.remove(K_SNAP_DATA)?;
                s.insert(&u64_key(meta.index), data.as_slice())?;
                Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                sled::transaction::TransactionError::Storage(e) => RaftError::from(e),
                sled::transaction::TransactionError::Abort(()) => {
                    RaftError::Corrupt("snapshot write aborted".to_string())
                }
            })?;
        self.snapshot_meta = meta;
        self.prune_snapshots()
    }

    /// Install a snapshot received from the leader: it replaces the whole log.
    pub(crate) fn apply_snapshot(
        &mut self,
        snap: &Snapshot,
        payload: &SnapshotPayload,
    ) -> Result<(), RaftError> {
        let meta = snap.get_metadata().clone();
        let (index, term) = (meta.index, meta.term);
        self.save_snapshot(meta.clone(), snap.data.to_vec())?;
        self.log.clear()?;
        self.truncated = (index, term);
        self.last_index = index;
        self.meta
            .insert(K_TRUNCATED, truncated_bytes(self.truncated))?;
        let mut hs = self.hard_state.clone();
        hs.term = hs.term.max(term);
        hs.commit = hs.commit.max(index);
        self.set_hard_state(&hs)?;
        self.set_conf_state(meta.get_conf_state().clone())?;
        self.set_members(payload.members.clone())?;
        Ok(())
    }

    /// Drop log entries up to and including `index` (must be <= applied).
    pub(crate) fn compact(&mut self, index: u64) -> Result<(), RaftError> {
        if index <= self.truncated.0 {
            return Ok(());
        }
        let index = index.min(self.applied).min(self.last_index);
        let term = self.term_of(index)?;
        let mut batch = sled::Batch::default();
        for k in self.log.range(..=u64_key(index)).keys() {
            batch.remove(k?);
        }
        self.log.apply_batch(batch)?;
        self.truncated = (index, term);
        self.meta
            .insert(K_TRUNCATED, truncated_bytes(self.truncated))?;
        Ok(())
    }

    /// Make every write so far durable (fsync). Runs `Db::flush` on the blocking pool:
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
        &self.hard_state
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
        self.last_index
    }

    /// The stored snapshot (metadata and payload bytes).
    pub(crate) fn stored_snapshot(&self) -> Result<Snapshot, RaftError> {
        let mut snap = Snapshot::default();
        snap.set_metadata(self.snapshot_meta.clone());
        let index = u64_key(self.snapshot_meta.index);
        if let Some(data) = match self.snap.get(index)? {
            Some(data) => Some(data),
            None => match self.snap.get(K_SNAP_DATA)? {
                Some(data) => Some(data),
                None => self.meta.get(K_SNAP_DATA)?,
            },
        } {
            snap.data = data.to_vec().into();
        }
        Ok(snap)
    }

    fn term_of(&self, idx: u64) -> Result<u64, RaftError> {
        if idx == self.truncated.0 {
            return Ok(self.truncated.1);
        }
        match self.log.get(u64_key(idx))? {
            Some(v) => read_u64(&v),
            None => Err(RaftError::Corrupt(format!("log entry {idx} missing"))),
        }
    }

    /// Like [`SledStorage::build_snapshot`], but only captures here: the returned job encodes
    /// the payload (run it off the raft task) for the returned metadata.
    pub(crate) fn snapshot_job(&self) -> Result<(SnapshotMetadata, PayloadJob), RaftError> {
        let mut meta = SnapshotMetadata::default();
        meta.index = self.applied;
        meta.term = self.term_of(self.applied)?;
        meta.set_conf_state(self.conf_state.clone());
        let members = self.members.clone();
        let state = self.sm.snapshot_job();
        let (snap, key) = (self.snap.clone(), u64_key(meta.index));
        Ok((
            meta,
            Box::new(move || {
                let state = state().map_err(RaftError::StateMachine)?;
                let data = SnapshotPayload {
                    members,
                    state: Some(state),
                }
                .encode()?;
                // Written and made durable here, off the raft task; it becomes THE stored
                // snapshot only when `commit_snapshot` points `snapshot_meta` at it.
                snap.insert(key, data)?;
                snap.flush()?;
                Ok(())
            }),
        ))
    }

    /// Make the snapshot a [`SledStorage::snapshot_job`] wrote the stored one, unless a newer
    /// one was installed meanwhile. Returns whether it was taken.
    pub(crate) fn commit_snapshot(&mut self, meta: SnapshotMetadata) -> Result<bool, RaftError> {
        if meta.index <= self.snapshot_meta.index {
            self.prune_snapshots()?;
            return Ok(false);
        }
        let mut batch = sled::Batch::default();
        batch.insert(K_SNAP_META, encode_pb(&meta)?);
        batch.remove(K_SNAP_DATA);
        self.meta.apply_batch(batch)?;
        self.snapshot_meta = meta;
        self.prune_snapshots()?;
        Ok(true)
    }

    /// Drop snapshot payloads other than the stored one's (written after `snapshot_meta`,
    /// so a recovered state never points at a removed payload).
    fn prune_snapshots(&self) -> Result<(), RaftError> {
        let keep = u64_key(self.snapshot_meta.index);
        for k in self.snap.iter().keys() {
            let k = k?;
            if k.as_ref() != keep {
                self.snap.remove(k)?;
            }
        }
        Ok(())
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

fn truncated_bytes((index, term): (u64, u64)) -> Vec<u8> {
    let mut v = Vec::with_capacity(16);
    v.extend_from_slice(&u64_key(index));
    v.extend_from_slice(&u64_key(term));
    v
}

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
            self.hard_state.clone(),
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
        if low <= self.truncated.0 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last_index + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let max_size = max_size.into().unwrap_or(u64::MAX);
        let mut out = Vec::with_capacity((high - low) as usize);
        let mut size = 0u64;
        for kv in self.log.range(u64_key(low)..u64_key(high)) {
            let (_, v) = kv.map_err(store_err)?;
            let body = v.get(8..).ok_or_else(|| store_err("short log record"))?;
            let e = Entry::parse_from_bytes(body).map_err(store_err)?;
            size += u64::from(e.compute_size());
            if !out.is_empty() && size > max_size {
                break;
            }
            out.push(e);
        }
        if out.is_empty() && low < high {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.truncated.0 {
            return Ok(self.truncated.1);
        }
        if idx < self.truncated.0 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last_index {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        match self.log.get(u64_key(idx)).map_err(store_err)? {
            Some(v) => read_u64(&v).map_err(store_err),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.truncated.0 + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index)
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        // The stored snapshot is usable if it is recent enough and already knows the peer
        // (a follower rejects a snapshot whose conf state does not contain itself). Otherwise
        // build a fresh one from the applied state: it always includes every applied AddNode.
        let stored = &self.snapshot_meta;
        if stored.index >= request_index
            && stored.index >= self.truncated.0
            && conf_contains(stored.get_conf_state(), to)
        {
            return self.stored_snapshot().map_err(store_err);
        }
        if self.applied < request_index || self.applied < self.truncated.0 {
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
        SledStorage::open(db.clone(), Arc::new(NullSm::default())).unwrap()
    }

    #[test]
    fn bootstrap_then_append_truncates_conflicting_suffix_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let mut s = open(&db);
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
        drop(s);
        let s = open(&db);
        assert_eq!(s.node_id(), Some(1));
        assert_eq!(s.last_index().unwrap(), 3);
        assert_eq!(s.initial_state().unwrap().conf_state.voters, vec![1]);
        assert_eq!(s.members().addrs.get(&1).map(String::as_str), Some("a:1"));
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
