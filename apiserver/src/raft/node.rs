//! [`RaftNode`]: the single task that owns raft-rs's `RawNode` and drives it.
//!
//! Loop: wait for a tick or a command -> drain every command already queued (so proposals from
//! many callers land in one Ready) -> handle the Ready: send (leader) -> install snapshot ->
//! append entries + hard state -> start ONE write + fsync of the log (group commit) on the
//! blocking pool -> apply committed while it runs -> wait for the fsync -> send persisted
//! messages -> advance -> apply what the LightReady committed -> maybe compact.
//! The state machine's sled writes are not fsynced here: the log is the durability.
//!
//! Proposals are tracked by the (index, term) their entry got when proposed: when that index
//! is applied with the same term the proposer gets the state machine's reply; any other entry
//! at that index (a new leader overwrote it) answers `Dropped` (not applied, safe to retry);
//! a snapshot installed past it answers `OutcomeUnknown`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeType, ConfChangeV2, Entry, EntryType, Message, Snapshot,
};
use raft::{RawNode, SnapshotStatus, StateRole, Storage as _};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::handle::{Command, Reply, Shared};
use super::logger::raft_logger;
use super::storage::{Members, SledStorage, SnapshotPayload};
use super::transport::{GrpcTransport, PeerReporter, Transport};
use super::wal::SyncDone;
use super::{
    Bootstrap, MemberInfo, RaftConfig, RaftError, RaftHandle, RaftStatus, Role, StateMachine,
};

/// Commands queued towards the raft task before senders wait.
const INBOX: usize = 4096;
/// Most commands handled between two Readies.
const MAX_DRAIN: usize = 4096;
/// A ReadIndex request without an answer is re-issued after this many ticks (raft-rs drops
/// them silently when there is no leader or the leader has not committed in its term yet).
const READ_RETRY_TICKS: u64 = 3;

enum Pending {
    Propose {
        term: u64,
        reply: Reply<Vec<u8>>,
    },
    AddMember {
        term: u64,
        id: u64,
        reply: Reply<(u64, Vec<MemberInfo>)>,
    },
    RemoveMember {
        term: u64,
        reply: Reply<Vec<MemberInfo>>,
    },
}

impl Pending {
    fn term(&self) -> u64 {
        match self {
            Pending::Propose { term, .. }
            | Pending::AddMember { term, .. }
            | Pending::RemoveMember { term, .. } => *term,
        }
    }

    fn fail(self, err: impl FnOnce() -> RaftError) {
        match self {
            Pending::Propose { reply, .. } => drop(reply.send(Err(err()))),
            Pending::AddMember { reply, .. } => drop(reply.send(Err(err()))),
            Pending::RemoveMember { reply, .. } => drop(reply.send(Err(err()))),
        }
    }
}

struct PendingRead {
    reply: Reply<()>,
    issued_tick: u64,
}

/// Outcome of applying one committed entry, used to answer its proposer.
enum Applied {
    Normal(Vec<u8>),
    NoOp,
    ConfChange,
    ConfChangeRefused(String),
}

type SyncTask = (
    tokio::task::JoinHandle<Result<SyncDone, RaftError>>,
    Vec<std::path::PathBuf>,
);

/// Start writing (and fsyncing) the log's pending records on the blocking pool at once.
fn start_sync(store: &mut SledStorage, fsync: bool) -> Result<Option<SyncTask>, RaftError> {
    Ok(store.start_sync(fsync)?.map(|job| {
        let removes = job.removes();
        (tokio::task::spawn_blocking(move || job.run()), removes)
    }))
}

async fn finish_sync(store: &mut SledStorage, (task, removes): SyncTask) -> Result<(), RaftError> {
    match task.await {
        Ok(res) => {
            store.finish_sync(res?, &removes);
            Ok(())
        }
        Err(e) => Err(RaftError::Corrupt(format!(
            "raft log write task failed: {e}"
        ))),
    }
}

/// The raft member. Create with [`RaftNode::new`], then spawn [`RaftNode::run`].
pub struct RaftNode {
    id: u64,
    raw: RawNode<SledStorage>,
    db: sled::Db,
    sm: Arc<dyn StateMachine>,
    rx: mpsc::Receiver<Command>,
    shared: Arc<Shared>,
    transport: Arc<dyn Transport>,
    tick: Duration,
    ticks: u64,
    compaction_threshold: u64,
    snapshot_catchup_entries: u64,
    /// Address hints for ids not (yet) in the replicated member list.
    addr_hints: HashMap<u64, String>,
    pending: BTreeMap<u64, Pending>,
    reads: HashMap<u64, PendingRead>,
    reads_waiting_apply: Vec<(u64, Reply<()>)>,
    next_read_id: u64,
    /// Failures noticed inside a Ready, reported to raft after `advance`.
    deferred_unreachable: Vec<(u64, bool)>,
    /// A snapshot being encoded on the blocking pool (see `maybe_compact`).
    snapshotting: Option<tokio::task::JoinHandle<Result<SnapshotBuilt, RaftError>>>,
}

/// Metadata of a snapshot encoded and written off the raft task.
type SnapshotBuilt = raft::eraftpb::SnapshotMetadata;

impl RaftNode {
    /// Open (or bootstrap) the member described by `config` with the gRPC transport.
    pub fn new(
        config: RaftConfig,
        sm: Arc<dyn StateMachine>,
    ) -> Result<(RaftNode, RaftHandle), RaftError> {
        let id = config.id;
        let addr = config.listen_addr.clone();
        let faults = config.faults.clone();
        let tls = config.tls.clone();
        Self::with_transport(config, sm, move |reporter| {
            Arc::new(GrpcTransport::new(id, addr, reporter, faults).with_tls(tls))
        })
    }

    /// Like [`RaftNode::new`] with a custom transport (e.g. [`super::MemNetwork`]).
    pub fn with_transport(
        config: RaftConfig,
        sm: Arc<dyn StateMachine>,
        make_transport: impl FnOnce(PeerReporter) -> Arc<dyn Transport>,
    ) -> Result<(RaftNode, RaftHandle), RaftError> {
        if config.id == 0 {
            return Err(RaftError::Config("the raft id must be non-zero".into()));
        }
        if config.election_tick <= config.heartbeat_tick {
            return Err(RaftError::Config(format!(
                "election_tick ({}) must be greater than heartbeat_tick ({})",
                config.election_tick, config.heartbeat_tick
            )));
        }
        let mut storage =
            SledStorage::open(config.data.clone(), config.log_dir.as_deref(), sm.clone())?;
        let mut addr_hints = HashMap::new();
        match storage.node_id() {
            Some(stored) if stored != config.id => {
                return Err(RaftError::Config(format!(
                    "the data directory belongs to raft member {stored}, not {}; use --id {stored} or an empty data directory",
                    config.id
                )));
            }
            Some(_) => {
                tracing::info!(
                    id = config.id,
                    "raft: recovering member from its data directory"
                );
            }
            None => match &config.bootstrap {
                Bootstrap::NewCluster => {
                    tracing::info!(id = config.id, addr = %config.listen_addr, "raft: bootstrapping a new single-member cluster");
                    storage.bootstrap(config.id, &config.listen_addr)?;
                }
                Bootstrap::Join { peers } => {
                    tracing::info!(
                        id = config.id,
                        "raft: joining; waiting for the leader's snapshot"
                    );
                    storage.init_join(config.id)?;
                    addr_hints.extend(peers.iter().cloned());
                }
            },
        }
        storage.sync_now()?;
        config.data.flush()?;

        // Recover the applied index: the larger of what the raft layer recorded (conf changes,
        // no-ops) and what the state machine persisted atomically with its effects.
        let mut applied = storage.applied().max(sm.applied_index());
        let snap_index = storage.snapshot_index();
        if applied < snap_index {
            // Crashed between storing a received snapshot and restoring the state machine.
            let snap = storage.stored_snapshot()?;
            let payload = SnapshotPayload::decode(&snap.data)?;
            if let Some(state) = &payload.state {
                sm.restore(snap_index, state)
                    .map_err(RaftError::StateMachine)?;
            }
            applied = snap_index;
        }
        applied = applied.min(storage.last());
        if storage.applied() != applied {
            storage.set_applied(applied)?;
        }
        if storage.hard_state().commit < applied {
            storage.set_commit(applied)?;
        }
        storage.sync_now()?;

        let raft_config = raft::Config {
            id: config.id,
            election_tick: config.election_tick,
            min_election_tick: config.election_tick,
            max_election_tick: if config.max_election_tick > config.election_tick {
                config.max_election_tick
            } else {
                2 * config.election_tick
            },
            heartbeat_tick: config.heartbeat_tick,
            applied,
            check_quorum: true,
            pre_vote: true,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            // Bounds the log a leader cut off from its quorum keeps accepting.
            max_uncommitted_size: 64 << 20,
            ..Default::default()
        };
        raft_config.validate()?;
        let raw = RawNode::new(&raft_config, storage, &raft_logger(config.id))?;

        let (tx, rx) = mpsc::channel(INBOX);
        let mut shared = Shared::new(config.id, config.request_timeout, config.faults.clone());
        shared.peers_need_tls = config.tls.is_some();
        let shared = Arc::new(shared);
        let transport = make_transport(PeerReporter::new(tx.clone()));
        let handle = RaftHandle {
            shared: shared.clone(),
            tx,
        };
        let node = RaftNode {
            id: config.id,
            raw,
            db: config.data,
            sm,
            rx,
            shared,
            transport,
            tick: config.tick,
            ticks: 0,
            compaction_threshold: config.compaction_threshold.max(1),
            snapshot_catchup_entries: config.snapshot_catchup_entries,
            addr_hints,
            pending: BTreeMap::new(),
            reads: HashMap::new(),
            reads_waiting_apply: Vec::new(),
            next_read_id: 1,
            deferred_unreachable: Vec::new(),
            snapshotting: None,
        };
        node.publish_status();
        Ok((node, handle))
    }

    /// Drive the node until `shutdown` fires. Returns an error only if storage failed (the
    /// node cannot continue safely then).
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), RaftError> {
        let mut ticker = tokio::time::interval(self.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A sole voter need not wait an election timeout to lead.
        if self.raw.store().conf_state().voters == [self.id]
            && self.raw.raft.state != StateRole::Leader
        {
            let _ = self.raw.campaign();
        }
        self.warm_peers();
        let result = loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break Ok(()),
                _ = ticker.tick() => self.on_tick(),
                built = async {
                    match self.snapshotting.as_mut() {
                        Some(job) => job.await,
                        None => std::future::pending().await,
                    }
                }, if self.snapshotting.is_some() => {
                    self.snapshotting = None;
                    if let Err(e) = self.finish_snapshot(built) {
                        tracing::error!(id = self.id, error = %e, "raft: stopping after a storage failure");
                        break Err(e);
                    }
                }
                cmd = self.rx.recv() => match cmd {
                    Some(cmd) => self.handle(cmd),
                    None => break Ok(()),
                },
            }
            for _ in 0..MAX_DRAIN {
                match self.rx.try_recv() {
                    Ok(cmd) => self.handle(cmd),
                    Err(_) => break,
                }
            }
            if let Err(e) = self.on_ready().await {
                tracing::error!(id = self.id, error = %e, "raft: stopping after a storage failure");
                break Err(e);
            }
            self.report_deferred();
            self.publish_status();
        };
        self.transport.close().await;
        if let Err(e) = self.raw.mut_store().sync_now() {
            tracing::warn!(id = self.id, error = %e, "raft: final log sync failed");
        }
        // Make the last applied entries durable too (the Ready syncs cover the log).
        if let Err(e) = SledStorage::flush(&self.db).await {
            tracing::warn!(id = self.id, error = %e, "raft: final flush failed");
        }
        for (_, p) in std::mem::take(&mut self.pending) {
            p.fail(|| RaftError::Stopped);
        }
        result
    }

    fn on_tick(&mut self) {
        self.raw.tick();
        self.ticks += 1;
        let ticks = self.ticks;
        self.reads.retain(|_, r| !r.reply.is_closed());
        self.reads_waiting_apply.retain(|(_, r)| !r.is_closed());
        let mut retry = Vec::new();
        for (id, r) in self.reads.iter_mut() {
            if ticks >= r.issued_tick + READ_RETRY_TICKS {
                r.issued_tick = ticks;
                retry.push(*id);
            }
        }
        for id in retry {
            self.raw.read_index(id.to_be_bytes().to_vec());
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Step {
                from,
                from_addr,
                msgs,
            } => {
                if let Some(addr) = from_addr {
                    if !self.raw.store().members().addrs.contains_key(&from) {
                        self.addr_hints.insert(from, addr);
                    }
                }
                for m in msgs {
                    if let Err(e) = self.raw.step(m) {
                        tracing::debug!(id = self.id, from, error = %e, "raft: ignored message");
                    }
                }
            }
            Command::Propose { data, reply } => {
                if let Err(e) = self.check_leader() {
                    let _ = reply.send(Err(e));
                    return;
                }
                let term = self.raw.raft.term;
                match self.raw.propose(vec![], data) {
                    Ok(()) => {
                        let index = self.raw.raft.raft_log.last_index();
                        self.track(index, Pending::Propose { term, reply });
                    }
                    Err(e) => {
                        let _ = reply.send(Err(self.propose_error(e)));
                    }
                }
            }
            Command::ReadIndex { reply } => {
                let id = self.next_read_id;
                self.next_read_id += 1;
                self.raw.read_index(id.to_be_bytes().to_vec());
                self.reads.insert(
                    id,
                    PendingRead {
                        reply,
                        issued_tick: self.ticks,
                    },
                );
            }
            Command::AddMember { address, reply } => {
                if let Err(e) = self.check_conf_change() {
                    let _ = reply.send(Err(e));
                    return;
                }
                let members = self.raw.store().members();
                let id = members
                    .max_id
                    .max(members.addrs.keys().copied().max().unwrap_or(0))
                    + 1;
                let mut cc = ConfChange::default();
                cc.set_change_type(ConfChangeType::AddNode);
                cc.node_id = id;
                cc.context = address.into_bytes().into();
                let term = self.raw.raft.term;
                match self.raw.propose_conf_change(vec![], cc) {
                    Ok(()) => {
                        let index = self.raw.raft.raft_log.last_index();
                        self.track(index, Pending::AddMember { term, id, reply });
                    }
                    Err(e) => {
                        let _ = reply.send(Err(self.propose_error(e)));
                    }
                }
            }
            Command::RemoveMember { id, reply } => {
                if let Err(e) = self.check_conf_change() {
                    let _ = reply.send(Err(e));
                    return;
                }
                if !self.raw.store().members().addrs.contains_key(&id) {
                    let _ = reply.send(Err(RaftError::UnknownMember(id)));
                    return;
                }
                if id == self.id {
                    // raft-rs leaves a removed leader in charge (untested upstream path);
                    // hand over first and let the caller retry on the new leader.
                    let res = match self.transfer_target(None) {
                        Ok(to) => {
                            self.raw.transfer_leader(to);
                            Err(RaftError::LeaderRemovingItself { id, to })
                        }
                        Err(e) => Err(e),
                    };
                    let _ = reply.send(res);
                    return;
                }
                let mut cc = ConfChange::default();
                cc.set_change_type(ConfChangeType::RemoveNode);
                cc.node_id = id;
                let term = self.raw.raft.term;
                match self.raw.propose_conf_change(vec![], cc) {
                    Ok(()) => {
                        let index = self.raw.raft.raft_log.last_index();
                        self.track(index, Pending::RemoveMember { term, reply });
                    }
                    Err(e) => {
                        let _ = reply.send(Err(self.propose_error(e)));
                    }
                }
            }
            Command::TransferLeader { to, reply } => {
                let res = self.check_leader().and_then(|()| self.transfer_target(to));
                if let Ok(to) = res {
                    tracing::info!(id = self.id, to, "raft: transferring leadership");
                    self.raw.transfer_leader(to);
                }
                let _ = reply.send(res);
            }
            Command::Unreachable(id) => self.raw.report_unreachable(id),
            Command::SnapshotStatus { to, ok } => self.raw.report_snapshot(
                to,
                if ok {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                },
            ),
        }
    }

    fn track(&mut self, index: u64, pending: Pending) {
        if let Some(old) = self.pending.insert(index, pending) {
            // We lead again and reuse a slot our earlier term's entry had: that entry left our
            // log, but another member may still hold it and commit it as a later leader.
            old.fail(|| RaftError::OutcomeUnknown);
        }
    }

    fn check_leader(&self) -> Result<(), RaftError> {
        if self.raw.raft.state == StateRole::Leader {
            return Ok(());
        }
        let leader = self.raw.raft.leader_id;
        let leader_id = (leader != 0).then_some(leader);
        Err(RaftError::NotLeader {
            leader_id,
            leader_addr: leader_id.and_then(|id| self.address_of(id)),
        })
    }

    /// `to` if it is another voter, else the reachable voter with the highest match.
    fn transfer_target(&self, to: Option<u64>) -> Result<u64, RaftError> {
        let voters = &self.raw.store().conf_state().voters;
        if let Some(to) = to {
            return if to != self.id && voters.contains(&to) {
                Ok(to)
            } else {
                Err(RaftError::UnknownMember(to))
            };
        }
        let prs = self.raw.raft.prs();
        voters
            .iter()
            .filter(|id| **id != self.id)
            .filter_map(|id| prs.get(*id).map(|p| (*id, p)))
            .filter(|(_, p)| p.recent_active)
            .max_by_key(|(id, p)| (p.matched, std::cmp::Reverse(*id)))
            .map(|(id, _)| id)
            .ok_or(RaftError::NoTransferTarget)
    }

    fn check_conf_change(&self) -> Result<(), RaftError> {
        self.check_leader()?;
        if self.raw.raft.has_pending_conf()
            || self
                .pending
                .values()
                .any(|p| !matches!(p, Pending::Propose { .. }))
        {
            return Err(RaftError::ConfChangeInProgress);
        }
        Ok(())
    }

    fn propose_error(&self, e: raft::Error) -> RaftError {
        match (e, self.check_leader()) {
            (_, Err(not_leader)) => not_leader,
            (raft::Error::ProposalDropped, Ok(())) => RaftError::Dropped,
            (e, Ok(())) => RaftError::Raft(e),
        }
    }

    fn address_of(&self, id: u64) -> Option<String> {
        self.raw
            .store()
            .members()
            .addrs
            .get(&id)
            .or_else(|| self.addr_hints.get(&id))
            .cloned()
    }

    fn send(&mut self, msgs: Vec<Message>) {
        let mut by_peer: BTreeMap<u64, Vec<Message>> = BTreeMap::new();
        for m in msgs {
            by_peer.entry(m.to).or_default().push(m);
        }
        for (to, batch) in by_peer {
            match self.address_of(to) {
                Some(addr) => self.transport.send(to, &addr, batch),
                None => {
                    tracing::debug!(id = self.id, to, "raft: no address for peer; dropping");
                    let snapshot = batch
                        .iter()
                        .any(|m| m.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot);
                    self.deferred_unreachable.push((to, snapshot));
                }
            }
        }
    }

    fn report_deferred(&mut self) {
        for (to, snapshot) in std::mem::take(&mut self.deferred_unreachable) {
            self.raw.report_unreachable(to);
            if snapshot {
                self.raw.report_snapshot(to, SnapshotStatus::Failure);
            }
        }
    }

    async fn on_ready(&mut self) -> Result<(), RaftError> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut rd = self.raw.ready();
        if !rd.messages().is_empty() {
            self.send(rd.take_messages());
        }
        let mut must_flush = rd.must_sync();
        if !rd.snapshot().is_empty() {
            self.install_snapshot(rd.snapshot().clone()).await?;
            must_flush = true;
        }
        let committed = rd.take_committed_entries();
        if !rd.entries().is_empty() {
            fail::fail_point!("raft::append");
            self.raw.mut_store().append(rd.entries())?;
            must_flush = true;
        }
        if let Some(hs) = rd.hs() {
            self.raw.mut_store().set_hard_state(hs)?;
        }
        // Start the write + fsync now and apply the already committed entries while it runs
        // (they were persisted by earlier Readies and do not depend on this one's entries).
        // Records that need no fsync (a commit index) are written along without one.
        let sync = start_sync(self.raw.mut_store(), must_flush)?;
        self.apply_entries(committed)?;
        if let Some(sync) = sync {
            fail::fail_point!("raft::append::fsync");
            finish_sync(self.raw.mut_store(), sync).await?;
        }
        if !rd.persisted_messages().is_empty() {
            self.send(rd.take_persisted_messages());
        }
        let read_states = rd.take_read_states();
        let mut light = self.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit)?;
        }
        self.send(light.take_messages());
        self.apply_entries(light.take_committed_entries())?;
        self.raw.advance_apply();
        for rs in read_states {
            let Some(id) = rs
                .request_ctx
                .get(..8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
            else {
                continue;
            };
            if let Some(r) = self.reads.remove(&id) {
                self.reads_waiting_apply.push((rs.index, r.reply));
            }
        }
        self.answer_reads();
        self.maybe_compact()?;
        Ok(())
    }

    fn answer_reads(&mut self) {
        let applied = self.raw.store().applied();
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.reads_waiting_apply)
            .into_iter()
            .partition(|(index, _)| *index <= applied);
        self.reads_waiting_apply = waiting;
        for (_, reply) in ready {
            let _ = reply.send(Ok(()));
        }
    }

    async fn install_snapshot(&mut self, snap: Snapshot) -> Result<(), RaftError> {
        let payload = SnapshotPayload::decode(&snap.data)?;
        let index = snap.get_metadata().index;
        tracing::info!(
            id = self.id,
            index,
            "raft: installing snapshot from the leader"
        );
        self.raw.mut_store().apply_snapshot(&snap, &payload)?;
        // The raft log must durably say "snapshot at index" before the state machine moves
        // there; recovery restores from the stored snapshot if we crash in between.
        if let Some(sync) = start_sync(self.raw.mut_store(), true)? {
            finish_sync(self.raw.mut_store(), sync).await?;
        }
        fail::fail_point!("raft::snapshot::apply");
        if let Some(state) = &payload.state {
            self.sm
                .restore(index, state)
                .map_err(RaftError::StateMachine)?;
        }
        self.raw.mut_store().set_applied(index)?;
        let done: Vec<u64> = self.pending.range(..=index).map(|(i, _)| *i).collect();
        for i in done {
            if let Some(p) = self.pending.remove(&i) {
                p.fail(|| RaftError::OutcomeUnknown);
            }
        }
        Ok(())
    }

    fn apply_entries(&mut self, entries: Vec<Entry>) -> Result<(), RaftError> {
        let mut run: Vec<Entry> = Vec::new();
        for e in entries {
            if e.index <= self.raw.store().applied() {
                // Replay after restart: already applied.
                continue;
            }
            match e.get_entry_type() {
                EntryType::EntryNormal if !e.data.is_empty() => run.push(e),
                EntryType::EntryNormal => {
                    self.apply_run(&mut run)?;
                    self.raw.mut_store().set_applied(e.index)?;
                    self.resolve(e.index, e.term, Applied::NoOp);
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    self.apply_run(&mut run)?;
                    let outcome = self.apply_conf_change(&e)?;
                    self.resolve(e.index, e.term, outcome);
                }
            }
        }
        self.apply_run(&mut run)
    }

    fn apply_run(&mut self, run: &mut Vec<Entry>) -> Result<(), RaftError> {
        let Some(last) = run.last().map(|e| e.index) else {
            return Ok(());
        };
        let batch: Vec<(u64, &[u8])> = run.iter().map(|e| (e.index, &e.data[..])).collect();
        fail::fail_point!("raft::apply");
        let replies = self.sm.apply_batch(&batch);
        fail::fail_point!("raft::apply::done");
        let mut replies = replies.into_iter();
        let done: Vec<(u64, u64)> = run.iter().map(|e| (e.index, e.term)).collect();
        run.clear();
        self.raw.mut_store().set_applied(last)?;
        for (index, term) in done {
            let reply = replies.next().unwrap_or_default();
            self.resolve(index, term, Applied::Normal(reply));
        }
        Ok(())
    }

    /// Apply a committed membership change. A change raft-rs refuses (it would leave the
    /// cluster without voters) is recorded as applied and reported to its proposer; it must
    /// not stop the node, because every member would hit the same entry.
    fn apply_conf_change(&mut self, e: &Entry) -> Result<Applied, RaftError> {
        let mut members: Members = self.raw.store().members().clone();
        let corrupt = |err: protobuf::ProtobufError| {
            RaftError::Corrupt(format!("conf change at {}: {err}", e.index))
        };
        let (result, change) = if e.get_entry_type() == EntryType::EntryConfChange {
            let cc = ConfChange::parse_from_bytes(&e.data).map_err(corrupt)?;
            (self.raw.apply_conf_change(&cc), Some(cc))
        } else {
            let cc = ConfChangeV2::parse_from_bytes(&e.data).map_err(corrupt)?;
            (self.raw.apply_conf_change(&cc), None)
        };
        let cs = match result {
            Ok(cs) => cs,
            Err(err) => {
                tracing::error!(id = self.id, index = e.index, error = %err, "raft: refused a committed membership change");
                self.raw.mut_store().set_applied(e.index)?;
                return Ok(Applied::ConfChangeRefused(err.to_string()));
            }
        };
        if let Some(cc) = change {
            match cc.get_change_type() {
                ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                    let addr = String::from_utf8_lossy(&cc.context).into_owned();
                    members.addrs.insert(cc.node_id, addr);
                    members.max_id = members.max_id.max(cc.node_id);
                    self.addr_hints.remove(&cc.node_id);
                }
                ConfChangeType::RemoveNode => {
                    members.addrs.remove(&cc.node_id);
                    self.transport.remove_peer(cc.node_id);
                }
            }
            tracing::info!(id = self.id, index = e.index, change = ?cc.get_change_type(), node = cc.node_id, "raft: membership change applied");
        }
        self.raw
            .mut_store()
            .apply_conf_change(cs, members, e.index)?;
        self.warm_peers();
        Ok(Applied::ConfChange)
    }

    /// Open a connection to every peer now, not at the first message: followers never talk
    /// to each other until an election, and a (TLS) connection made then would slow the vote
    /// and make split votes likelier.
    fn warm_peers(&self) {
        let peers: Vec<(u64, String)> = self
            .raw
            .store()
            .members()
            .addrs
            .iter()
            .filter(|(id, _)| **id != self.id)
            .map(|(id, a)| (*id, a.clone()))
            .collect();
        for (id, addr) in peers {
            self.transport.send(id, &addr, Vec::new());
        }
    }

    fn resolve(&mut self, index: u64, term: u64, outcome: Applied) {
        let Some(p) = self.pending.remove(&index) else {
            return;
        };
        if p.term() != term {
            p.fail(|| RaftError::Dropped);
            return;
        }
        match (p, outcome) {
            (Pending::Propose { reply, .. }, Applied::Normal(r)) => {
                let _ = reply.send(Ok(r));
            }
            (Pending::AddMember { id, reply, .. }, Applied::ConfChange) => {
                let _ = reply.send(Ok((id, self.member_infos())));
            }
            (Pending::RemoveMember { reply, .. }, Applied::ConfChange) => {
                let _ = reply.send(Ok(self.member_infos()));
            }
            (Pending::AddMember { reply, .. }, Applied::ConfChangeRefused(why)) => {
                let _ = reply.send(Err(RaftError::Config(why)));
            }
            (Pending::RemoveMember { reply, .. }, Applied::ConfChangeRefused(why)) => {
                let _ = reply.send(Err(RaftError::Config(why)));
            }
            // raft-rs turns a conf change proposed while another is pending into an empty
            // entry: the change did not happen.
            (Pending::AddMember { reply, .. }, _) => {
                let _ = reply.send(Err(RaftError::ConfChangeInProgress));
            }
            (Pending::RemoveMember { reply, .. }, _) => {
                let _ = reply.send(Err(RaftError::ConfChangeInProgress));
            }
            (p @ Pending::Propose { .. }, _) => p.fail(|| RaftError::Dropped),
        }
    }

    fn maybe_compact(&mut self) -> Result<(), RaftError> {
        let store = self.raw.store();
        let applied = store.applied();
        if applied <= store.snapshot_index() + self.compaction_threshold {
            return Ok(());
        }
        if self.snapshotting.is_some() {
            return Ok(());
        }
        // Capture now (cheap), encode on the blocking pool: encoding a large state here
        // stalled every proposal for hundreds of ms.
        let (meta, job) = store.snapshot_job()?;
        self.snapshotting = Some(tokio::task::spawn_blocking(move || job().map(|()| meta)));
        Ok(())
    }

    /// Store a snapshot encoded off the task and compact the log behind it.
    fn finish_snapshot(
        &mut self,
        built: Result<Result<SnapshotBuilt, RaftError>, tokio::task::JoinError>,
    ) -> Result<(), RaftError> {
        let meta =
            built.map_err(|e| RaftError::Corrupt(format!("snapshot task failed: {e}")))??;
        let index = meta.index;
        let store = self.raw.mut_store();
        if !store.commit_snapshot(meta)? {
            // A leader's snapshot was installed meanwhile: ours is older, dropped.
            return Ok(());
        }
        let upto = index.saturating_sub(self.snapshot_catchup_entries);
        fail::fail_point!("raft::compact");
        store.compact(upto)?;
        tracing::info!(
            id = self.id,
            snapshot_index = index,
            first_index = store.first_index().unwrap_or(0),
            "raft: snapshot taken, log compacted"
        );
        Ok(())
    }

    fn member_infos(&self) -> Vec<MemberInfo> {
        let leader = self.raw.raft.state == StateRole::Leader;
        let prs = self.raw.raft.prs();
        self.raw
            .store()
            .members()
            .addrs
            .iter()
            .map(|(id, addr)| {
                let pr = if leader { prs.get(*id) } else { None };
                MemberInfo {
                    id: *id,
                    address: addr.clone(),
                    matched: pr.map(|p| p.matched),
                    reachable: pr.map(|p| *id == self.id || p.recent_active),
                }
            })
            .collect()
    }

    fn publish_status(&self) {
        let raft = &self.raw.raft;
        let leader = raft.leader_id;
        self.shared.set_status(RaftStatus {
            id: self.id,
            leader_id: (leader != 0).then_some(leader),
            term: raft.term,
            commit: raft.raft_log.committed,
            applied: self.raw.store().applied(),
            role: match raft.state {
                StateRole::Follower => Role::Follower,
                StateRole::PreCandidate => Role::PreCandidate,
                StateRole::Candidate => Role::Candidate,
                StateRole::Leader => Role::Leader,
            },
            members: self.member_infos(),
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::field_reassign_with_default)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::raft::MemNetwork;

    #[derive(Default)]
    struct RecordingSm {
        applied: Mutex<u64>,
        restored: Mutex<Vec<(u64, Vec<u8>)>>,
    }

    impl StateMachine for RecordingSm {
        fn apply(&self, index: u64, _data: &[u8]) -> Vec<u8> {
            *self.applied.lock().unwrap() = index;
            vec![]
        }
        fn applied_index(&self) -> u64 {
            *self.applied.lock().unwrap()
        }
        fn snapshot(&self) -> Result<Vec<u8>, String> {
            Ok(vec![])
        }
        fn restore(&self, index: u64, data: &[u8]) -> Result<(), String> {
            *self.applied.lock().unwrap() = index;
            self.restored.lock().unwrap().push((index, data.to_vec()));
            Ok(())
        }
    }

    /// Crash between "snapshot stored in the raft log" and "state machine restored": the
    /// restart must finish the restore before raft starts (raft would refuse an applied index
    /// behind its log start).
    #[tokio::test]
    async fn restart_finishes_a_snapshot_install_interrupted_by_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path().join("db")).unwrap();
        let wal = dir.path().join("raft-wal");
        let sm = Arc::new(RecordingSm::default());
        {
            let mut st = SledStorage::open(db.clone(), Some(&wal), sm.clone()).unwrap();
            st.init_join(2).unwrap();
            let mut members = Members::default();
            members.addrs.insert(1, "a".into());
            members.addrs.insert(2, "b".into());
            members.max_id = 2;
            let payload = SnapshotPayload {
                members,
                state: Some(b"S".to_vec()),
            };
            let mut snap = Snapshot::default();
            snap.mut_metadata().index = 10;
            snap.mut_metadata().term = 3;
            snap.mut_metadata().mut_conf_state().voters = vec![1, 2];
            snap.data = payload.encode().unwrap().into();
            st.apply_snapshot(&snap, &payload).unwrap();
            st.sync_now().unwrap();
            db.flush().unwrap();
        }
        let mut cfg = RaftConfig::new(2, "b", db.clone());
        cfg.log_dir = Some(wal);
        cfg.bootstrap = Bootstrap::Join { peers: vec![] };
        let net = MemNetwork::default();
        let (_node, handle) =
            RaftNode::with_transport(cfg, sm.clone(), |r| net.transport(2, r)).unwrap();
        assert_eq!(*sm.restored.lock().unwrap(), vec![(10, b"S".to_vec())]);
        let st = handle.status();
        assert_eq!(st.applied, 10);
        assert_eq!(st.commit, 10);
        assert_eq!(st.members.len(), 2);
        assert_eq!(handle.member_address(1).as_deref(), Some("a"));
    }

    #[tokio::test]
    async fn data_dir_of_another_member_is_refused() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let sm: Arc<dyn StateMachine> = Arc::new(RecordingSm::default());
        let net = MemNetwork::default();
        let cfg = RaftConfig::new(1, "a", db.clone());
        drop(RaftNode::with_transport(cfg, sm.clone(), |r| net.transport(1, r)).unwrap());
        let cfg = RaftConfig::new(3, "a", db);
        let err = RaftNode::with_transport(cfg, sm, |r| net.transport(3, r))
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("belongs to raft member 1"),
            "{err}"
        );
    }
}
