//! The revisioned object store: the raft state machine of the API server.
//!
//! Main types: [`Store`] (implements [`StateMachine`]), [`Command`]/[`Op`] (what a raft entry
//! holds), [`Reply`] (what apply returns to the proposer), [`StoreError`], [`Watcher`].
//!
//! Data flow: the API service builds a [`Command`] (choosing uids and timestamps), proposes
//! its encoding through raft; once committed, raft calls [`Store::apply`] on every member in
//! log order. Apply runs the ops in a [`apply::Txn`] over the current objects, then commits
//! the changes, the new revision and the applied index in ONE sled transaction, updates the
//! in-memory view that serves reads, and publishes one watch event per mutation to the
//! [`watch::Hub`]. Reads (`get`, `list`) and watches are served from memory; sled makes it
//! durable and is reloaded at start.
//!
//! Storage layout (same `sled::Db` as raft, trees prefixed `store_`):
//! - `store_objects`: `kind \0 namespace \0 name` -> object JSON
//! - `store_meta`: `revision`, `applied_index` -> u64 big-endian
//!
//! Revisions: one global counter, +1 per committed mutation (an Apply that changes nothing, an
//! Update with identical content, or a failed op does not bump it). An object's
//! `metadata.resourceVersion` is the revision of its last change.

mod apply;
pub mod command;
pub mod error;
pub mod networks;
pub mod watch;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use berth_proto::Kind;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sled::Transactional;

pub(crate) use apply::resource_version_of;
pub use berth_proto::selector::{Selector, SelectorError};
pub use command::{ApplyOutcome, Command, Op, OpOutput, OpResult, Reply};
pub use error::{normalize_namespace, ObjectKey, StoreError};
pub use watch::{WatchEvent, WatchEventType, WatchFilter, Watcher};

use crate::raft::StateMachine;

/// Kubernetes' request-size-derived object limit.
pub const DEFAULT_MAX_OBJECT_BYTES: usize = 1536 * 1024;
/// Events kept for watch resumption.
pub const DEFAULT_HISTORY_LEN: usize = 100_000;
/// Encoded bytes of objects kept for watch resumption (in memory they take a few times more).
pub const DEFAULT_HISTORY_BYTES: usize = 64 * 1024 * 1024;

/// An inclusive range of node ports, written `30000-32767`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePortRange {
    pub start: u16,
    pub end: u16,
}

impl Default for NodePortRange {
    fn default() -> Self {
        NodePortRange {
            start: 30000,
            end: 32767,
        }
    }
}

impl NodePortRange {
    pub fn contains(&self, port: i32) -> bool {
        port >= i32::from(self.start) && port <= i32::from(self.end)
    }
}

impl fmt::Display for NodePortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

impl FromStr for NodePortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid node-port range {s:?}: expected LOW-HIGH, e.g. 30000-32767");
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let start: u16 = a.trim().parse().map_err(|_| bad())?;
        let end: u16 = b.trim().parse().map_err(|_| bad())?;
        if start == 0 || start > end {
            return Err(format!(
                "invalid node-port range {s:?}: LOW must be at least 1 and not above HIGH"
            ));
        }
        Ok(NodePortRange { start, end })
    }
}

/// Store tuning.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub max_object_bytes: usize,
    pub history_len: usize,
    pub history_bytes: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            max_object_bytes: DEFAULT_MAX_OBJECT_BYTES,
            history_len: DEFAULT_HISTORY_LEN,
            history_bytes: DEFAULT_HISTORY_BYTES,
        }
    }
}

/// The committed state, as readers see it.
#[derive(Default)]
struct State {
    objects: BTreeMap<ObjectKey, Arc<Value>>,
    revision: u64,
    applied: u64,
}

/// Snapshot encoding (JSON).
#[derive(Serialize, Deserialize)]
struct SnapshotData {
    revision: u64,
    applied: u64,
    objects: Vec<Value>,
}

/// One consistent read of the store ([`Store::read_view`]).
pub struct StoreView<'a> {
    objects: &'a BTreeMap<ObjectKey, Arc<Value>>,
    revision: u64,
}

impl StoreView<'_> {
    /// The revision this view is consistent at.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn get(&self, key: &ObjectKey) -> Option<&Value> {
        let key = ObjectKey::new(key.kind, &key.namespace, &key.name);
        self.objects.get(&key).map(|v| v.as_ref())
    }

    /// Every object of `kind`, in all namespaces.
    pub fn list(&self, kind: Kind) -> impl Iterator<Item = &Value> {
        let from = ObjectKey {
            kind,
            namespace: String::new(),
            name: String::new(),
        };
        self.objects
            .range(from..)
            .take_while(move |(k, _)| k.kind == kind)
            .map(|(_, v)| v.as_ref())
    }
}

/// The object store. Cheap to share behind an `Arc`.
pub struct Store {
    objects_tree: sled::Tree,
    meta_tree: sled::Tree,
    state: RwLock<State>,
    hub: Arc<watch::Hub>,
    config: StoreConfig,
    /// Serializes writers (apply, restore); readers only take `state`.
    write_lock: Mutex<()>,
    /// Set when sled failed mid-apply: the in-memory view may be behind the log, so the member
    /// refuses to serve until restarted.
    failed: AtomicBool,
}

const OBJECTS_TREE: &str = "store_objects";
const META_TREE: &str = "store_meta";
const REVISION_KEY: &[u8] = b"revision";
const APPLIED_KEY: &[u8] = b"applied_index";

fn encode_key(k: &ObjectKey) -> Vec<u8> {
    let mut b = Vec::with_capacity(k.namespace.len() + k.name.len() + 16);
    b.extend_from_slice(k.kind.as_str().as_bytes());
    b.push(0);
    b.extend_from_slice(k.namespace.as_bytes());
    b.push(0);
    b.extend_from_slice(k.name.as_bytes());
    b
}

fn key_of_value(v: &Value) -> Option<ObjectKey> {
    let kind_s = v.get("kind")?.as_str()?;
    let kind = Kind::ALL.iter().copied().find(|k| k.as_str() == kind_s)?;
    let meta = v.get("metadata")?;
    let name = meta.get("name")?.as_str()?;
    let ns = meta.get("namespace").and_then(|n| n.as_str()).unwrap_or("");
    Some(ObjectKey::new(kind, ns, name))
}

fn read_u64(tree: &sled::Tree, key: &[u8]) -> Result<u64, StoreError> {
    match tree.get(key).map_err(storage)? {
        Some(v) => {
            let b: [u8; 8] = v.as_ref().try_into().map_err(|_| {
                StoreError::Storage(format!(
                    "{META_TREE}/{} is not a u64",
                    String::from_utf8_lossy(key)
                ))
            })?;
            Ok(u64::from_be_bytes(b))
        }
        None => Ok(0),
    }
}

fn storage(e: impl fmt::Display) -> StoreError {
    StoreError::Storage(e.to_string())
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

impl Store {
    /// Open (or create) the store's trees in `db` and load the committed state.
    pub fn open(db: &sled::Db, config: StoreConfig) -> Result<Store, StoreError> {
        let objects_tree = db.open_tree(OBJECTS_TREE).map_err(storage)?;
        let meta_tree = db.open_tree(META_TREE).map_err(storage)?;
        let mut state = State {
            revision: read_u64(&meta_tree, REVISION_KEY)?,
            applied: read_u64(&meta_tree, APPLIED_KEY)?,
            ..State::default()
        };
        for item in objects_tree.iter() {
            let (k, v) = item.map_err(storage)?;
            let value: Value = serde_json::from_slice(&v).map_err(|e| {
                StoreError::Storage(format!(
                    "stored object {:?} is not JSON: {e}",
                    String::from_utf8_lossy(&k)
                ))
            })?;
            let key = key_of_value(&value).ok_or_else(|| {
                StoreError::Storage(format!(
                    "stored object {:?} has no kind/name",
                    String::from_utf8_lossy(&k)
                ))
            })?;
            state.objects.insert(key, Arc::new(value));
        }
        let hub = Arc::new(watch::Hub::new(
            config.history_len,
            config.history_bytes,
            state.revision,
        ));
        Ok(Store {
            objects_tree,
            meta_tree,
            state: RwLock::new(state),
            hub,
            config,
            write_lock: Mutex::new(()),
            failed: AtomicBool::new(false),
        })
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    fn check_healthy(&self) -> Result<(), StoreError> {
        if self.failed.load(Ordering::Relaxed) {
            return Err(StoreError::Storage(
                "this member's storage failed during apply; restart it".to_string(),
            ));
        }
        Ok(())
    }

    /// The revision of the last committed mutation.
    pub fn revision(&self) -> u64 {
        read(&self.state).revision
    }

    /// One object.
    pub fn get(&self, key: &ObjectKey) -> Result<Arc<Value>, StoreError> {
        self.check_healthy()?;
        let key = ObjectKey::new(key.kind, &key.namespace, &key.name);
        read(&self.state)
            .objects
            .get(&key)
            .cloned()
            .ok_or(StoreError::NotFound { key })
    }

    /// Run `f` over one consistent read of the committed objects (no entry is applied while
    /// it runs), e.g. admission checks that read several objects.
    pub fn read_view<R>(&self, f: impl FnOnce(&StoreView<'_>) -> R) -> Result<R, StoreError> {
        self.check_healthy()?;
        let st = read(&self.state);
        Ok(f(&StoreView {
            objects: &st.objects,
            revision: st.revision,
        }))
    }

    /// Objects of `kind` (in `namespace`, or all namespaces when None) whose labels match,
    /// with the revision the list is consistent at.
    pub fn list(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        selector: &Selector,
    ) -> Result<(Vec<Arc<Value>>, u64), StoreError> {
        self.check_healthy()?;
        let st = read(&self.state);
        let ns = namespace.map(|n| normalize_namespace(kind, n));
        let from = ObjectKey {
            kind,
            namespace: ns.clone().unwrap_or_default(),
            name: String::new(),
        };
        let items = st
            .objects
            .range(from..)
            .take_while(|(k, _)| k.kind == kind && ns.as_ref().is_none_or(|n| *n == k.namespace))
            .filter(|(_, v)| selector.is_empty() || selector.matches(&apply::labels_of(v)))
            .map(|(_, v)| v.clone())
            .collect();
        Ok((items, st.revision))
    }

    /// Watch changes after `from_revision`. `from_revision == 0` on a store whose history no
    /// longer starts at 0 means "from now": the current matching objects are returned as
    /// ADDED events first (at the current revision), followed by live changes.
    pub fn watch(
        &self,
        from_revision: u64,
        filter: WatchFilter,
    ) -> Result<(Vec<WatchEvent>, Watcher), StoreError> {
        self.check_healthy()?;
        match self.hub.watch(from_revision, filter.clone()) {
            Err(StoreError::Expired { .. }) if from_revision == 0 => {}
            other => return other.map(|w| (Vec::new(), w)),
        }
        // Hold the state lock while subscribing: apply updates memory before publishing, so
        // every event after `revision` is still to come through the watcher.
        let st = read(&self.state);
        let watcher = self.hub.watch(st.revision, filter.clone())?;
        let initial = st
            .objects
            .iter()
            .filter(|(k, v)| {
                filter.matches_key(k.kind, &k.namespace)
                    && filter.selector.matches(&apply::labels_of(v))
            })
            .map(|(_, v)| WatchEvent {
                event_type: WatchEventType::Added,
                revision: apply::resource_version_of(v),
                object: Some(v.clone()),
            })
            .collect();
        Ok((initial, watcher))
    }

    /// The oldest revision a watch can resume from.
    pub fn oldest_watchable_revision(&self) -> u64 {
        self.hub.oldest()
    }

    /// Run a command against the current state without committing anything.
    pub fn dry_run(&self, cmd: Command) -> Reply {
        if let Err(e) = self.check_healthy() {
            return Reply::failed(e, cmd.ops.len());
        }
        let st = read(&self.state);
        let mut txn = apply::Txn::new(
            &st.objects,
            st.revision,
            cmd.now,
            cmd.node_ports,
            self.config.max_object_bytes,
        );
        txn.networks = cmd.networks;
        txn.check_namespaces = cmd.check_namespaces;
        Reply {
            results: txn.run_all(cmd.ops, cmd.atomic),
        }
    }

    /// Apply committed entries in order (one sled transaction for the group). Entries at or
    /// below the applied index are skipped (replay after restart) and get an empty reply.
    pub fn apply_entries(&self, entries: &[(u64, &[u8])]) -> Vec<Vec<u8>> {
        let _w = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        let st = read(&self.state);
        let start_applied = st.applied;
        let mut applied = st.applied;
        let mut replies = Vec::with_capacity(entries.len());
        let mut txn = apply::Txn::new(
            &st.objects,
            st.revision,
            chrono::DateTime::<chrono::Utc>::UNIX_EPOCH,
            NodePortRange::default(),
            self.config.max_object_bytes,
        );
        for (index, data) in entries {
            if *index <= applied {
                replies.push(Vec::new());
                continue;
            }
            applied = *index;
            let reply = match Command::decode(data) {
                Ok(cmd) => {
                    txn.now = cmd.now;
                    txn.node_ports = cmd.node_ports;
                    txn.networks = cmd.networks;
                    txn.check_namespaces = cmd.check_namespaces;
                    Reply {
                        results: txn.run_all(cmd.ops, cmd.atomic),
                    }
                }
                Err(e) => {
                    tracing::warn!(index, error = %e, "undecodable store command; skipped");
                    Reply::failed(e, 1)
                }
            };
            replies.push(reply.encode());
        }
        if applied == start_applied {
            return replies;
        }
        let apply::Txn {
            changes,
            revision,
            events,
            ..
        } = txn;
        drop(st);
        if let Err(e) = self.persist(&changes, revision, applied) {
            tracing::error!(error = %e, applied, "store: persisting applied entries failed");
            self.failed.store(true, Ordering::Relaxed);
            let fail = Reply::failed(e, 1).encode();
            return entries.iter().map(|_| fail.clone()).collect();
        }
        {
            let mut st = write(&self.state);
            for (k, v) in changes {
                match v {
                    Some(v) => st.objects.insert(k, v),
                    None => st.objects.remove(&k),
                };
            }
            st.revision = revision;
            st.applied = applied;
        }
        self.hub.publish(events);
        replies
    }

    fn persist(
        &self,
        changes: &BTreeMap<ObjectKey, Option<Arc<Value>>>,
        revision: u64,
        applied: u64,
    ) -> Result<(), StoreError> {
        let encoded: Vec<(Vec<u8>, Option<Vec<u8>>)> = changes
            .iter()
            .map(|(k, v)| {
                let bytes = v.as_ref().map(|v| serde_json::to_vec(&**v)).transpose();
                bytes.map(|b| (encode_key(k), b))
            })
            .collect::<Result<_, _>>()
            .map_err(storage)?;
        (&self.objects_tree, &self.meta_tree)
            .transaction(|(o, m)| {
                for (k, v) in &encoded {
                    match v {
                        Some(v) => o.insert(k.as_slice(), v.as_slice())?,
                        None => o.remove(k.as_slice())?,
                    };
                }
                m.insert(REVISION_KEY, &revision.to_be_bytes())?;
                m.insert(APPLIED_KEY, &applied.to_be_bytes())?;
                Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| StoreError::Storage(format!("{e:?}")))
    }

    /// Flush sled to disk (called before raft reports a snapshot or on shutdown).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.objects_tree.flush().map_err(storage)?;
        self.meta_tree.flush().map_err(storage)?;
        Ok(())
    }

    fn snapshot_bytes(&self) -> Result<Vec<u8>, StoreError> {
        let st = read(&self.state);
        let data = SnapshotData {
            revision: st.revision,
            applied: st.applied,
            objects: st.objects.values().map(|v| (**v).clone()).collect(),
        };
        serde_json::to_vec(&data).map_err(storage)
    }

    fn restore_bytes(&self, index: u64, data: &[u8]) -> Result<(), StoreError> {
        let snap: SnapshotData = serde_json::from_slice(data)
            .map_err(|e| StoreError::BadCommand(format!("bad snapshot: {e}")))?;
        let _w = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut objects = BTreeMap::new();
        for v in snap.objects {
            let key = key_of_value(&v).ok_or_else(|| {
                StoreError::BadCommand("snapshot object without kind/name".to_string())
            })?;
            objects.insert(key, Arc::new(v));
        }
        let mut changes: BTreeMap<ObjectKey, Option<Arc<Value>>> = read(&self.state)
            .objects
            .keys()
            .map(|k| (k.clone(), None))
            .collect();
        for (k, v) in &objects {
            changes.insert(k.clone(), Some(v.clone()));
        }
        self.persist(&changes, snap.revision, index)?;
        {
            let mut st = write(&self.state);
            st.objects = objects;
            st.revision = snap.revision;
            st.applied = index;
        }
        self.hub.reset(snap.revision);
        self.failed.store(false, Ordering::Relaxed);
        Ok(())
    }
}

impl StateMachine for Store {
    fn apply(&self, index: u64, data: &[u8]) -> Vec<u8> {
        self.apply_entries(&[(index, data)])
            .pop()
            .unwrap_or_default()
    }

    fn apply_batch(&self, entries: &[(u64, &[u8])]) -> Vec<Vec<u8>> {
        self.apply_entries(entries)
    }

    fn applied_index(&self) -> u64 {
        read(&self.state).applied
    }

    fn snapshot_job(&self) -> crate::raft::SnapshotJob {
        let (revision, applied, objects) = {
            let st = read(&self.state);
            let objects: Vec<Arc<Value>> = st.objects.values().cloned().collect();
            (st.revision, st.applied, objects)
        };
        let (objects_tree, meta_tree) = (self.objects_tree.clone(), self.meta_tree.clone());
        Box::new(move || {
            #[derive(Serialize)]
            struct SnapshotRef<'a> {
                revision: u64,
                applied: u64,
                objects: Vec<&'a Value>,
            }
            let data = serde_json::to_vec(&SnapshotRef {
                revision,
                applied,
                objects: objects.iter().map(|v| &**v).collect(),
            })
            .map_err(|e| e.to_string())?;
            // Durable before the raft layer compacts the log behind it (see `snapshot`).
            objects_tree.flush().map_err(|e| e.to_string())?;
            meta_tree.flush().map_err(|e| e.to_string())?;
            Ok(data)
        })
    }

    fn snapshot(&self) -> Result<Vec<u8>, String> {
        let data = self.snapshot_bytes().map_err(|e| e.to_string())?;
        // The raft layer compacts its log after a snapshot: the state it stands for must be
        // durable first, or a crash could lose entries that no longer exist in the log.
        self.flush().map_err(|e| e.to_string())?;
        Ok(data)
    }

    fn restore(&self, index: u64, data: &[u8]) -> Result<(), String> {
        self.restore_bytes(index, data).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
