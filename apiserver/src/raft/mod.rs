//! Raft consensus for the API server (tikv raft-rs driven by one task through the Ready loop).
//!
//! # Role
//! Replicates the object store's write log across the API servers. Every write becomes one
//! raft entry; once a majority has it durably, every member applies it, in log order, to its
//! [`StateMachine`] (the object store). Linearizable reads use ReadIndex ([`RaftHandle::read_index`]).
//!
//! # Main types
//! - [`RaftNode`]: owns the raft-rs `RawNode`, the [`SledStorage`] and the inbox. Its
//!   `run(shutdown)` is the ONE task that ticks, steps peer messages, proposes, and handles each
//!   `Ready`: persist entries + hard state (one WAL fsync per Ready = group commit) -> send
//!   messages -> apply committed entries with [`StateMachine::apply_batch`] -> `advance`.
//! - [`RaftHandle`]: cheap `Clone`; `propose`, `read_index`, `add_member`/`remove_member`,
//!   `transfer_leadership`, `status`, `leader_watch`, `is_leader`, `member_address`,
//!   `not_leader_error`, `raft_service` (the gRPC server).
//! - [`SledStorage`]: `raft::Storage`: the log and hard state in an append-only segmented
//!   write-ahead log of its own (`wal.rs`, in `RaftConfig::log_dir`; one fsync per Ready),
//!   snapshots as files beside it, conf state/members/applied in tree `raft_meta` of the
//!   SAME `sled::Db` as the object store (not fsynced per Ready: the log is the durability).
//! - [`Transport`]: how messages leave the node. [`GrpcTransport`] (the default: one task per
//!   peer, bounded queue, lazy connect with backoff, batching) or [`MemNetwork`] (in-memory
//!   simulation for tests). [`Faults`] drops/partitions traffic in both.
//!
//! # Wiring (for `apiserver::run`)
//! ```ignore
//! let db = sled::open(data_dir)?;
//! let store = Arc::new(Store::open(&db)?);              // implements StateMachine
//! let mut cfg = RaftConfig::new(id, advertise_addr, db.clone());
//! cfg.log_dir = Some(data_dir.join("raft-wal"));
//! cfg.bootstrap = if init { Bootstrap::NewCluster } else { Bootstrap::Join { peers: vec![] } };
//! let (node, raft) = RaftNode::new(cfg, store.clone())?;  // recovers from the data dir if any
//! tasks.spawn(node.run(shutdown.clone()));                // Result<(), RaftError>
//! Server::builder()
//!     .add_service(raft.raft_service())                   // peer traffic, same port as Api
//!     .add_service(ApiServer::new(api))
//!     .serve_with_shutdown(listen, shutdown.cancelled()).await?;
//! // writes:  raft.propose(bytes).await -> Ok(reply) | Err(NotLeader { leader_addr, .. })
//! // reads:   raft.read_index().await?; then read the store
//! // graceful leader shutdown: raft.transfer_leadership(None).await, then cancel
//! ```
//! sled note: never call `Db::flush_async` (sled 0.34 can lose the wake-up when several
//! flushes race, spacejam/sled#1241). The state machine's writes are made durable by sled's
//! own periodic flush, by the snapshot job before the log is compacted, and at shutdown;
//! after a crash the entries past what sled kept are applied again from the log.
//! Bootstrapping: `--init` = [`Bootstrap::NewCluster`] (single member, its own address).
//! `--join` = [`Bootstrap::Join`]: the node starts with an empty log and its given id (the one
//! `add_member` returned on the leader) and waits for the leader's snapshot + appends; peer
//! addresses are learned from the `from_addr` of incoming batches and then from the replicated
//! member list. A data dir that already holds raft state is always recovered as is (id, hard
//! state, log, members) and `bootstrap` is ignored.
//!
//! # What a failed call means
//! - `NotLeader { leader_id, leader_addr }`: nothing was proposed; forward to the leader.
//! - `Dropped`: the entry was certainly NOT applied (leadership changed first); retry.
//! - `Timeout` / `OutcomeUnknown`: the entry may or may not be applied; re-read before retry.
//! - `ConfChangeInProgress`: one membership change at a time; retry after it completes.
//! - `LeaderRemovingItself`: the leader hands over first; retry `remove_member` on the new one.
//!
//! `RaftStatus::members[].reachable` comes from raft's check-quorum activity, reset once per
//! election timeout, so a dead member shows `Some(false)` within about a second.
//!
//! # Interface contract with the object store (do not change signatures without telling the
//! other side)
//! - The store implements [`StateMachine`]; the raft task calls it for every committed normal
//!   entry, in log order, exactly once per index (idempotent on replay: `apply` of an index
//!   <= `applied_index()` is skipped by the raft layer).
//! - Callers submit writes with `RaftHandle::propose(bytes) -> Result<response bytes>` where the
//!   response is what `StateMachine::apply` returned for that entry on the leader.
//! - Linearizable reads call `RaftHandle::read_index().await` and then read the store.
//! - Snapshots: the raft layer wraps `StateMachine::snapshot()` bytes together with the member
//!   list; a follower that is too far behind gets `StateMachine::restore(index, bytes)`.

mod handle;
mod logger;
mod node;
mod storage;
mod transport;
mod wal;

use std::time::Duration;

pub use handle::{RaftHandle, RaftService};
pub use node::RaftNode;
pub use storage::SledStorage;
pub use transport::{Faults, GrpcTransport, MemNetwork, PeerReporter, Transport};

/// The raft-rs message type carried by [`Transport`]s (rust-protobuf 2 `eraftpb::Message`).
pub use raft::eraftpb::Message as RaftMessage;

/// The replicated state machine (the object store).
pub trait StateMachine: Send + Sync + 'static {
    /// Apply the committed entry `data` at log `index`; return the reply for the proposer.
    /// Must persist `index` as the applied index atomically with the effects.
    fn apply(&self, index: u64, data: &[u8]) -> Vec<u8>;
    /// Several committed entries at once (group commit); default applies one by one.
    fn apply_batch(&self, entries: &[(u64, &[u8])]) -> Vec<Vec<u8>> {
        entries.iter().map(|(i, d)| self.apply(*i, d)).collect()
    }
    /// The last applied index (durable).
    fn applied_index(&self) -> u64;
    /// A full snapshot of the state at `applied_index()`.
    fn snapshot(&self) -> Result<Vec<u8>, String>;
    /// Capture the current state now (cheaply) and return a job that encodes it like
    /// [`StateMachine::snapshot`] (and makes the state durable), run off the raft task so a
    /// large state does not stall it. Default: encode now.
    fn snapshot_job(&self) -> SnapshotJob {
        let data = self.snapshot();
        Box::new(move || data)
    }
    /// Replace all state with a snapshot taken at `index`.
    fn restore(&self, index: u64, data: &[u8]) -> Result<(), String>;
}

/// Encodes a state captured by [`StateMachine::snapshot_job`]; runs on the blocking pool.
pub type SnapshotJob = Box<dyn FnOnce() -> Result<Vec<u8>, String> + Send>;

/// Errors of the raft layer.
#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    /// Writes and membership changes go to the leader; the caller forwards there.
    #[error("this server is not the raft leader (leader: {}); send the request to the leader", leader_display(.leader_id, .leader_addr))]
    NotLeader {
        leader_id: Option<u64>,
        leader_addr: Option<String>,
    },
    /// The proposal was lost: leadership changed and its log slot went to another entry, or
    /// raft-rs refused it. It was NOT applied; the caller may retry.
    #[error("the proposal was dropped by a raft leadership change; retry the request")]
    Dropped,
    /// This member jumped past the proposal by installing a leader's snapshot: the entry
    /// may or may not be part of it. Like `Timeout`, the outcome of the write is unknown.
    #[error("this member installed a snapshot past the proposal; whether it was applied is unknown, check before retrying")]
    OutcomeUnknown,
    /// No answer within the configured request timeout (e.g. no quorum). The outcome of a
    /// write is unknown.
    #[error("raft did not answer within {0:?} (no leader or no quorum?); the outcome is unknown, retry later")]
    Timeout(Duration),
    /// The raft task has stopped (shutdown or fatal storage error).
    #[error("the raft node is stopped")]
    Stopped,
    /// raft-rs allows one membership change at a time.
    #[error("another membership change is still in progress; retry when it has completed")]
    ConfChangeInProgress,
    /// The leader was asked to remove itself; it started handing leadership to member `to`.
    #[error("member {id} is the leader and cannot remove itself; leadership is moving to member {to}, retry the removal there")]
    LeaderRemovingItself { id: u64, to: u64 },
    /// No member can take over leadership (single member, or none reachable and caught up).
    #[error("no other member can take over leadership now")]
    NoTransferTarget,
    /// `remove_member` of an id that is not a member.
    #[error("raft member {0} is not part of the cluster")]
    UnknownMember(u64),
    /// Empty proposals are reserved for raft's own no-op entries.
    #[error("refusing to propose an empty raft entry")]
    EmptyProposal,
    /// The data directory or the configuration does not fit.
    #[error("invalid raft configuration: {0}")]
    Config(String),
    /// sled failed (disk full, I/O error, corruption).
    #[error("raft storage (sled) failed: {0}")]
    Storage(#[from] sled::Error),
    /// Stored raft data could not be decoded.
    #[error("raft storage is corrupt: {0}")]
    Corrupt(String),
    /// raft-rs refused an operation.
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    /// The state machine failed to snapshot or restore.
    #[error("state machine failed: {0}")]
    StateMachine(String),
}

fn leader_display(id: &Option<u64>, addr: &Option<String>) -> String {
    match (id, addr) {
        (Some(id), Some(addr)) => format!("member {id} at {addr}"),
        (Some(id), None) => format!("member {id}, address unknown"),
        _ => "unknown, an election may be in progress".to_string(),
    }
}

/// How a node with an empty data directory starts. Ignored when the data dir holds raft state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// `--init`: create a new cluster whose only member is this node (its `listen_addr`).
    NewCluster,
    /// `--join`: start empty with `RaftConfig::id` (returned by `add_member` on the leader) and
    /// wait for the leader to send a snapshot. `peers` are optional address hints
    /// `(id, address)` used until the member list arrives.
    Join { peers: Vec<(u64, String)> },
}

/// Configuration of one raft member.
#[derive(Debug, Clone)]
pub struct RaftConfig {
    /// This member's raft id (non-zero). `--init` uses 1.
    pub id: u64,
    /// The address other members dial to reach this node's `Raft` gRPC service (host:port).
    pub listen_addr: String,
    /// The server's sled database; raft keeps its metadata in tree `raft_meta`.
    pub data: sled::Db,
    /// The directory of the raft log (segments) and snapshots, e.g. `<data dir>/raft-wal`.
    /// None keeps them in memory: nothing survives the process (tests only).
    pub log_dir: Option<std::path::PathBuf>,
    /// What to do if `data` holds no raft state yet.
    pub bootstrap: Bootstrap,
    /// Take a state-machine snapshot and compact the log after this many entries have been
    /// applied past the last snapshot.
    pub compaction_threshold: u64,
    /// Entries kept in the log behind a new snapshot, so slightly lagging followers catch up
    /// by appends instead of a full snapshot.
    pub snapshot_catchup_entries: u64,
    /// Raft logical clock period.
    pub tick: Duration,
    /// Ticks without a leader before an election (the minimum of the randomized timeout).
    pub election_tick: usize,
    /// Upper bound (exclusive) of the randomized election timeout, in ticks. The default
    /// 1.5x `election_tick` (etcd uses 2x) bounds failover after a leader crash to about
    /// 1.5 s at 100 ms ticks; split votes stay rare because members tick out of phase.
    /// 0 means raft-rs's 2x.
    pub max_election_tick: usize,
    /// Ticks between leader heartbeats.
    pub heartbeat_tick: usize,
    /// Upper bound on how long `propose`, `read_index` and membership calls wait.
    pub request_timeout: Duration,
    /// Fault injection for tests (no faults by default).
    pub faults: Faults,
    /// Mutual TLS for peer traffic: what this member presents and trusts when it dials peers;
    /// when set, its `Raft` service also accepts only `system:server` certificates. `berth
    /// server` always sets it; None (plain text) is for raft-level tests.
    pub tls: Option<berth_tls::ClientTls>,
}

impl RaftConfig {
    /// Defaults: 100 ms tick, election timeout randomized in [1 s, 1.5 s), 100 ms heartbeats,
    /// compaction every 10 000 entries.
    pub fn new(id: u64, listen_addr: impl Into<String>, data: sled::Db) -> Self {
        Self {
            id,
            listen_addr: listen_addr.into(),
            data,
            log_dir: None,
            bootstrap: Bootstrap::NewCluster,
            compaction_threshold: 10_000,
            snapshot_catchup_entries: 1_000,
            tick: Duration::from_millis(100),
            election_tick: 10,
            max_election_tick: 15,
            heartbeat_tick: 1,
            request_timeout: Duration::from_secs(10),
            faults: Faults::default(),
            tls: None,
        }
    }
}

/// The raft role of a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

/// One member of the cluster as seen by this node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemberInfo {
    pub id: u64,
    /// The member's raft/gRPC address.
    pub address: String,
    /// Highest log index known to be replicated on it (only known on the leader).
    pub matched: Option<u64>,
    /// Whether it answered recently (only known on the leader).
    pub reachable: Option<bool>,
}

/// A point-in-time view of this node's raft state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RaftStatus {
    pub id: u64,
    pub leader_id: Option<u64>,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    pub role: Role,
    pub members: Vec<MemberInfo>,
}
