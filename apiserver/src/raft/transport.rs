//! How raft messages leave a node, and fault injection.
//!
//! The raft task hands each Ready's messages, grouped per destination, to a [`Transport`],
//! which must never block it. Delivery failures come back through a [`PeerReporter`] as
//! `report_unreachable` / `report_snapshot` so raft-rs backs off and retries.
//!
//! - [`GrpcTransport`]: one task per peer with a bounded queue; it connects lazily (with
//!   exponential backoff after failures), drains its queue into one `RaftBatch` per RPC and
//!   reports failures. A full queue or a peer in backoff drops messages (raft retransmits).
//! - [`MemNetwork`]: an in-memory network between nodes of one process for simulation tests.
//! - [`Faults`]: shared switches that drop traffic (isolate a node, cut links, random loss);
//!   both transports and the gRPC service consult it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_proto::pb::raft_client::RaftClient;
use berth_proto::pb::RaftBatch;
use futures::future::BoxFuture;
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use rand::Rng;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::handle::{Command, MAX_GRPC_MESSAGE};
use super::RaftHandle;

/// Outbound message delivery for one node. Implementations must not block or await in
/// `send`: the raft task calls it between persisting and applying.
pub trait Transport: Send + Sync + 'static {
    /// Queue `msgs`, all addressed to member `to` at `addr`. Messages that cannot be queued are
    /// dropped and reported through the node's [`PeerReporter`].
    fn send(&self, to: u64, addr: &str, msgs: Vec<Message>);
    /// Member `id` left the cluster: release what is held for it.
    fn remove_peer(&self, id: u64);
    /// Stop all delivery work; resolves when it has stopped.
    fn close(&self) -> BoxFuture<'static, ()>;
}

/// Lets a transport tell the raft task about failed deliveries.
#[derive(Clone)]
pub struct PeerReporter {
    tx: mpsc::Sender<Command>,
}

impl PeerReporter {
    pub(crate) fn new(tx: mpsc::Sender<Command>) -> Self {
        Self { tx }
    }

    /// Messages to `id` were lost (raft-rs slows down replication to it).
    pub fn unreachable(&self, id: u64) {
        let _ = self.tx.try_send(Command::Unreachable(id));
    }

    /// A snapshot to `id` was delivered (`ok`) or lost.
    pub fn snapshot_status(&self, id: u64, ok: bool) {
        let _ = self.tx.try_send(Command::SnapshotStatus { to: id, ok });
    }

    fn failed(&self, to: u64, msgs: &[Message]) {
        self.unreachable(to);
        if msgs
            .iter()
            .any(|m| m.get_msg_type() == MessageType::MsgSnapshot)
        {
            self.snapshot_status(to, false);
        }
    }
}

#[derive(Default)]
struct FaultState {
    isolated: HashSet<u64>,
    /// Directed links that drop everything.
    cut: HashSet<(u64, u64)>,
    drop_rate: f64,
    /// Every batch a peer sender sends waits `base` +/- `jitter` first.
    delay: Option<(Duration, Duration)>,
}

/// Shared fault switches for tests; cheap to clone (all clones share state). The default has
/// no faults.
#[derive(Clone, Default)]
pub struct Faults {
    inner: Arc<Mutex<FaultState>>,
}

impl std::fmt::Debug for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Faults")
    }
}

impl Faults {
    fn state(&self) -> std::sync::MutexGuard<'_, FaultState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drop all traffic to and from `id`.
    pub fn isolate(&self, id: u64) {
        self.state().isolated.insert(id);
    }

    /// Undo [`Faults::isolate`].
    pub fn reconnect(&self, id: u64) {
        self.state().isolated.remove(&id);
    }

    /// Cut every link between a member of `a` and a member of `b`, both directions.
    pub fn partition(&self, a: &[u64], b: &[u64]) {
        let mut s = self.state();
        for &x in a {
            for &y in b {
                s.cut.insert((x, y));
                s.cut.insert((y, x));
            }
        }
    }

    /// Cut the directed link `from -> to`.
    pub fn cut(&self, from: u64, to: u64) {
        self.state().cut.insert((from, to));
    }

    /// Drop each message independently with probability `p` (0.0..=1.0).
    pub fn set_drop_rate(&self, p: f64) {
        self.state().drop_rate = p.clamp(0.0, 1.0);
    }

    /// Delay every batch of messages by `base` +/- `jitter` (uniform), in the gRPC
    /// transport's per-peer senders (order is kept, as on a slow TCP link); `None` removes it.
    pub fn set_delay(&self, delay: Option<(Duration, Duration)>) {
        self.state().delay = delay;
    }

    /// The delay the next batch waits, if a delay is set.
    pub fn next_delay(&self) -> Option<Duration> {
        let (base, jitter) = self.state().delay?;
        let j = jitter.as_secs_f64();
        let off = if j > 0.0 {
            rand::thread_rng().gen_range(-j..=j)
        } else {
            0.0
        };
        Some(Duration::from_secs_f64((base.as_secs_f64() + off).max(0.0)))
    }

    /// Remove every fault.
    pub fn heal(&self) {
        *self.state() = FaultState::default();
    }

    /// Whether the link `from -> to` is up (isolation and cuts; no random loss).
    pub fn link_up(&self, from: u64, to: u64) -> bool {
        let s = self.state();
        !(s.isolated.contains(&from) || s.isolated.contains(&to) || s.cut.contains(&(from, to)))
    }

    /// Whether one message on `from -> to` gets through (link up and not randomly lost).
    pub fn deliver(&self, from: u64, to: u64) -> bool {
        if !self.link_up(from, to) {
            return false;
        }
        let p = self.state().drop_rate;
        p <= 0.0 || rand::thread_rng().gen::<f64>() >= p
    }
}

/// Per-peer queue depth; past it messages are dropped (raft retransmits).
const PEER_QUEUE: usize = 4096;
/// Most messages in one RPC.
const MAX_BATCH: usize = 256;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
const SNAPSHOT_SEND_TIMEOUT: Duration = Duration::from_secs(60);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

struct PeerQueue {
    addr: String,
    tx: mpsc::Sender<Message>,
    stop: CancellationToken,
}

/// The gRPC transport: one sender task per peer (see the module docs).
pub struct GrpcTransport {
    id: u64,
    my_addr: String,
    reporter: PeerReporter,
    faults: Faults,
    peers: Mutex<HashMap<u64, PeerQueue>>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    tls: Option<berth_tls::ClientTls>,
}

impl GrpcTransport {
    /// `my_addr` is sent along so that peers (a joining member) can answer us.
    pub fn new(id: u64, my_addr: String, reporter: PeerReporter, faults: Faults) -> Self {
        Self {
            id,
            my_addr,
            reporter,
            faults,
            peers: Mutex::new(HashMap::new()),
            tracker: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            tls: None,
        }
    }

    /// Dial peers with mutual TLS (https) instead of plain text.
    pub fn with_tls(mut self, tls: Option<berth_tls::ClientTls>) -> Self {
        self.tls = tls;
        self
    }

    fn spawn_peer(&self, to: u64, addr: &str) -> PeerQueue {
        let (tx, rx) = mpsc::channel(PEER_QUEUE);
        let stop = self.shutdown.child_token();
        let worker = PeerWorker {
            from: self.id,
            from_addr: self.my_addr.clone(),
            to,
            addr: addr.to_string(),
            reporter: self.reporter.clone(),
            faults: self.faults.clone(),
            tls: self.tls.clone(),
        };
        self.tracker.spawn(worker.run(rx, stop.clone()));
        PeerQueue {
            addr: addr.to_string(),
            tx,
            stop,
        }
    }
}

impl Transport for GrpcTransport {
    fn send(&self, to: u64, addr: &str, msgs: Vec<Message>) {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if self.shutdown.is_cancelled() {
            return;
        }
        let stale = peers.get(&to).is_some_and(|p| p.addr != addr);
        if stale {
            if let Some(old) = peers.remove(&to) {
                old.stop.cancel();
            }
        }
        let queue = match peers.get(&to) {
            Some(q) => q,
            None => {
                let q = self.spawn_peer(to, addr);
                peers.entry(to).or_insert(q)
            }
        };
        let mut failed = Vec::new();
        for m in msgs {
            if let Err(e) = queue.tx.try_send(m) {
                failed.push(match e {
                    mpsc::error::TrySendError::Full(m) | mpsc::error::TrySendError::Closed(m) => m,
                });
            }
        }
        if !failed.is_empty() {
            self.reporter.failed(to, &failed);
        }
    }

    fn remove_peer(&self, id: u64) {
        if let Some(q) = self
            .peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id)
        {
            q.stop.cancel();
        }
    }

    fn close(&self) -> BoxFuture<'static, ()> {
        self.shutdown.cancel();
        self.peers.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.tracker.close();
        let tracker = self.tracker.clone();
        Box::pin(async move { tracker.wait().await })
    }
}

struct PeerWorker {
    from: u64,
    from_addr: String,
    to: u64,
    addr: String,
    reporter: PeerReporter,
    faults: Faults,
    tls: Option<berth_tls::ClientTls>,
}

impl PeerWorker {
    async fn run(self, mut rx: mpsc::Receiver<Message>, stop: CancellationToken) {
        // Connect at once (best effort): the first vote request of an election should not
        // wait for a TCP and TLS handshake.
        let mut client: Option<RaftClient<tonic::transport::Channel>> = tokio::select! {
            _ = stop.cancelled() => return,
            c = self.connect() => c.ok(),
        };
        let mut backoff = BACKOFF_MIN;
        let mut retry_at: Option<Instant> = None;
        loop {
            let first = tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                m = rx.recv() => match m { Some(m) => m, None => return },
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            let (kept, lost): (Vec<_>, Vec<_>) = batch
                .into_iter()
                .partition(|_| self.faults.deliver(self.from, self.to));
            if !lost.is_empty() {
                self.reporter.failed(self.to, &lost);
            }
            if kept.is_empty() {
                continue;
            }
            if let Some(d) = self.faults.next_delay() {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(d) => {}
                }
            }
            if retry_at.is_some_and(|t| Instant::now() < t) {
                // Still backing off: drop rather than queue stale traffic.
                self.reporter.failed(self.to, &kept);
                continue;
            }
            if client.is_none() {
                match self.connect().await {
                    Ok(c) => client = Some(c),
                    Err(e) => {
                        tracing::debug!(to = self.to, addr = %self.addr, error = %e, "raft peer connect failed");
                        retry_at = Some(Instant::now() + backoff);
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        self.reporter.failed(self.to, &kept);
                        continue;
                    }
                }
            }
            let Some(c) = client.as_mut() else { continue };
            match self.send(c, &kept, &stop).await {
                Ok(()) => {
                    backoff = BACKOFF_MIN;
                    retry_at = None;
                    for m in &kept {
                        if m.get_msg_type() == MessageType::MsgSnapshot {
                            self.reporter.snapshot_status(self.to, true);
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(to = self.to, addr = %self.addr, error = %e, "raft send failed");
                    client = None;
                    retry_at = Some(Instant::now() + backoff);
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    self.reporter.failed(self.to, &kept);
                }
            }
        }
    }

    async fn connect(&self) -> Result<RaftClient<tonic::transport::Channel>, String> {
        let endpoint = berth_tls::endpoint(&self.addr, self.tls.as_ref())
            .map_err(|e| format!("bad address {:?}: {e}", self.addr))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        let channel = endpoint.connect().await.map_err(|e| e.to_string())?;
        Ok(RaftClient::new(channel)
            .max_decoding_message_size(MAX_GRPC_MESSAGE)
            .max_encoding_message_size(MAX_GRPC_MESSAGE))
    }

    async fn send(
        &self,
        client: &mut RaftClient<tonic::transport::Channel>,
        msgs: &[Message],
        stop: &CancellationToken,
    ) -> Result<(), String> {
        let mut encoded = Vec::with_capacity(msgs.len());
        let mut has_snapshot = false;
        for m in msgs {
            has_snapshot |= m.get_msg_type() == MessageType::MsgSnapshot;
            encoded.push(m.write_to_bytes().map_err(|e| e.to_string())?);
        }
        let req = RaftBatch {
            from: self.from,
            messages: encoded,
            from_addr: self.from_addr.clone(),
        };
        if has_snapshot {
            fail::fail_point!("raft::snapshot::send");
        }
        let limit = if has_snapshot {
            SNAPSHOT_SEND_TIMEOUT
        } else {
            SEND_TIMEOUT
        };
        tokio::select! {
            _ = stop.cancelled() => Err("stopped".to_string()),
            r = tokio::time::timeout(limit, client.send(req)) => match r {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(status)) => Err(status.to_string()),
                Err(_) => Err(format!("no answer within {limit:?}")),
            },
        }
    }
}

/// An in-memory network connecting the [`super::RaftNode`]s of one process (simulation
/// tests): delivery is a `try_send` into the destination's inbox, filtered by [`Faults`].
#[derive(Clone, Default)]
pub struct MemNetwork {
    nodes: Arc<Mutex<HashMap<u64, RaftHandle>>>,
    faults: Faults,
}

impl MemNetwork {
    /// A network whose links obey `faults`.
    pub fn new(faults: Faults) -> Self {
        Self {
            nodes: Arc::default(),
            faults,
        }
    }

    /// The fault switches of this network.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Make `handle`'s node reachable (replaces an earlier node with the same id).
    pub fn register(&self, handle: &RaftHandle) {
        self.nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(handle.id(), handle.clone());
    }

    /// Make node `id` unreachable (stopped).
    pub fn unregister(&self, id: u64) {
        self.nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    /// The transport for node `id`; pass to `RaftNode::with_transport`.
    pub fn transport(&self, id: u64, reporter: PeerReporter) -> Arc<dyn Transport> {
        Arc::new(MemTransport {
            id,
            net: self.clone(),
            reporter,
        })
    }
}

struct MemTransport {
    id: u64,
    net: MemNetwork,
    reporter: PeerReporter,
}

impl Transport for MemTransport {
    fn send(&self, to: u64, _addr: &str, msgs: Vec<Message>) {
        let (kept, lost): (Vec<_>, Vec<_>) = msgs
            .into_iter()
            .partition(|_| self.net.faults.deliver(self.id, to));
        if !lost.is_empty() {
            self.reporter.failed(to, &lost);
        }
        if kept.is_empty() {
            return;
        }
        let target = self
            .net
            .nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&to)
            .cloned();
        let snapshots = kept
            .iter()
            .filter(|m| m.get_msg_type() == MessageType::MsgSnapshot)
            .count();
        match target {
            Some(h) => {
                let delivered = h.try_step(self.id, Some(format!("mem://{}", self.id)), kept);
                if !delivered {
                    self.reporter.unreachable(to);
                }
                for _ in 0..snapshots {
                    self.reporter.snapshot_status(to, delivered);
                }
            }
            None => {
                self.reporter.unreachable(to);
                for _ in 0..snapshots {
                    self.reporter.snapshot_status(to, false);
                }
            }
        }
    }

    fn remove_peer(&self, _id: u64) {}

    fn close(&self) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delay_stays_within_base_plus_minus_jitter_and_can_be_removed() {
        let f = Faults::default();
        assert_eq!(f.next_delay(), None);
        f.set_delay(Some((Duration::from_millis(75), Duration::from_millis(50))));
        for _ in 0..200 {
            let d = f.next_delay().expect("a delay is set");
            assert!(
                d >= Duration::from_millis(25) && d <= Duration::from_millis(125),
                "{d:?}"
            );
        }
        f.set_delay(None);
        assert_eq!(f.next_delay(), None);
    }
}
