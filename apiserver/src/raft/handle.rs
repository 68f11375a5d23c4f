//! [`RaftHandle`]: the cheap, cloneable front of a [`super::RaftNode`]. Requests travel to the
//! raft task over one bounded channel with a oneshot reply; status is read from shared state
//! the task publishes after every step.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_proto::pb::raft_server::{Raft, RaftServer};
use berth_proto::pb::{Empty, RaftBatch};
use protobuf::Message as _;
use raft::eraftpb::Message;
use tokio::sync::{mpsc, oneshot, watch};

use super::{Faults, MemberInfo, RaftError, RaftStatus, Role};

/// Largest raft gRPC message accepted or sent (snapshots travel in one message).
pub(crate) const MAX_GRPC_MESSAGE: usize = 1 << 30;

pub(crate) type Reply<T> = oneshot::Sender<Result<T, RaftError>>;

/// Everything the raft task can be asked to do.
pub(crate) enum Command {
    Propose {
        data: Vec<u8>,
        reply: Reply<Vec<u8>>,
    },
    ReadIndex {
        reply: Reply<()>,
    },
    AddMember {
        address: String,
        reply: Reply<(u64, Vec<MemberInfo>)>,
    },
    RemoveMember {
        id: u64,
        reply: Reply<Vec<MemberInfo>>,
    },
    TransferLeader {
        to: Option<u64>,
        reply: Reply<u64>,
    },
    /// Messages from peer `from` (whose address is `from_addr` if it told us).
    Step {
        from: u64,
        from_addr: Option<String>,
        msgs: Vec<Message>,
    },
    Unreachable(u64),
    SnapshotStatus {
        to: u64,
        ok: bool,
    },
}

/// State the raft task publishes for handles.
pub(crate) struct Shared {
    pub id: u64,
    pub status: Mutex<RaftStatus>,
    pub leader: watch::Sender<Option<u64>>,
    pub request_timeout: Duration,
    pub faults: Faults,
    /// Proposals made through this handle, and those that failed (metrics).
    pub proposals: AtomicU64,
    pub proposals_failed: AtomicU64,
    /// Accept raft traffic only from `system:server` client certificates.
    pub peers_need_tls: bool,
}

impl Shared {
    pub fn new(id: u64, request_timeout: Duration, faults: Faults) -> Self {
        Self {
            id,
            status: Mutex::new(RaftStatus {
                id,
                leader_id: None,
                term: 0,
                commit: 0,
                applied: 0,
                role: Role::Follower,
                members: vec![],
            }),
            leader: watch::channel(None).0,
            request_timeout,
            faults,
            proposals: AtomicU64::new(0),
            proposals_failed: AtomicU64::new(0),
            peers_need_tls: false,
        }
    }

    pub fn status(&self) -> RaftStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_status(&self, status: RaftStatus) {
        let leader = status.leader_id;
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = status;
        self.leader.send_if_modified(|cur| {
            if *cur != leader {
                *cur = leader;
                true
            } else {
                false
            }
        });
    }
}

/// A cheap cloneable handle to a running [`super::RaftNode`].
#[derive(Clone)]
pub struct RaftHandle {
    pub(crate) shared: Arc<Shared>,
    pub(crate) tx: mpsc::Sender<Command>,
}

impl std::fmt::Debug for RaftHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftHandle")
            .field("id", &self.shared.id)
            .finish()
    }
}

impl RaftHandle {
    /// This member's raft id.
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// Replicate `data` as one log entry; resolves with what [`super::StateMachine::apply`]
    /// returned for it once it is committed and applied here. Fails fast with `NotLeader` on
    /// a follower, with `Dropped` if a leadership change lost the entry, and with `Timeout`
    /// after `RaftConfig::request_timeout`.
    pub async fn propose(&self, data: Vec<u8>) -> Result<Vec<u8>, RaftError> {
        if data.is_empty() {
            return Err(RaftError::EmptyProposal);
        }
        self.ensure_leader()?;
        // Counted once it reaches the raft task as leader (a follower's fast NotLeader, which
        // only routes the write to the leader, is not a proposal).
        self.shared.proposals.fetch_add(1, Ordering::Relaxed);
        let res = self.call(|reply| Command::Propose { data, reply }).await;
        if res.is_err() {
            self.shared.proposals_failed.fetch_add(1, Ordering::Relaxed);
        }
        res
    }

    /// (proposals this member made as leader, those that failed: dropped by a leadership
    /// change, timed out, ...) since start.
    pub fn proposal_counts(&self) -> (u64, u64) {
        (
            self.shared.proposals.load(Ordering::Relaxed),
            self.shared.proposals_failed.load(Ordering::Relaxed),
        )
    }

    /// Linearizable read barrier: returns once this node has applied everything that was
    /// committed when the call was made (raft ReadIndex; followers ask the leader).
    pub async fn read_index(&self) -> Result<(), RaftError> {
        self.call(|reply| Command::ReadIndex { reply }).await
    }

    /// Add a member reachable at `address` (leader only). Returns its new id (one above the
    /// highest id ever used) and the member list including it. Start the new server with
    /// `Bootstrap::Join` and that id.
    pub async fn add_member(&self, address: String) -> Result<(u64, Vec<MemberInfo>), RaftError> {
        self.ensure_leader()?;
        self.call(|reply| Command::AddMember { address, reply })
            .await
    }

    /// Remove member `id` (leader only). Returns the remaining member list. The leader does
    /// not remove itself: it hands leadership to the most up-to-date member and answers
    /// `LeaderRemovingItself`; retry on the new leader.
    pub async fn remove_member(&self, id: u64) -> Result<Vec<MemberInfo>, RaftError> {
        self.ensure_leader()?;
        self.call(|reply| Command::RemoveMember { id, reply }).await
    }

    /// Ask the leader (this node) to hand leadership to `to`, or to the most up-to-date
    /// reachable member if `None` (e.g. before a graceful shutdown). Returns the target; the
    /// change shows on [`RaftHandle::leader_watch`] within about an election timeout.
    pub async fn transfer_leadership(&self, to: Option<u64>) -> Result<u64, RaftError> {
        self.ensure_leader()?;
        self.call(|reply| Command::TransferLeader { to, reply })
            .await
    }

    /// A snapshot of this node's raft state.
    pub fn status(&self) -> RaftStatus {
        self.shared.status()
    }

    /// The current leader id (`None` during elections). Leader-only loops watch this.
    pub fn leader_watch(&self) -> watch::Receiver<Option<u64>> {
        self.shared.leader.subscribe()
    }

    /// The current leader id, if known.
    pub fn leader_id(&self) -> Option<u64> {
        *self.shared.leader.borrow()
    }

    /// Whether this node currently believes it is the leader.
    pub fn is_leader(&self) -> bool {
        self.leader_id() == Some(self.shared.id)
    }

    /// The address of member `id`, if it is a member.
    pub fn member_address(&self, id: u64) -> Option<String> {
        self.shared
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .members
            .iter()
            .find(|m| m.id == id)
            .map(|m| m.address.clone())
    }

    /// The `NotLeader` error this node would answer now (with the leader's address).
    pub fn not_leader_error(&self) -> RaftError {
        let leader_id = self.leader_id();
        RaftError::NotLeader {
            leader_id,
            leader_addr: leader_id.and_then(|id| self.member_address(id)),
        }
    }

    /// The gRPC `Raft` service that receives peer traffic for this node; mount it on the
    /// server's tonic port next to the Api service.
    pub fn raft_service(&self) -> RaftServer<RaftService> {
        RaftServer::new(RaftService {
            handle: self.clone(),
        })
        .max_decoding_message_size(MAX_GRPC_MESSAGE)
        .max_encoding_message_size(MAX_GRPC_MESSAGE)
    }

    /// Deliver peer messages without waiting (in-memory transports). False if the inbox is
    /// full or the node is stopped; the messages are then dropped.
    pub(crate) fn try_step(
        &self,
        from: u64,
        from_addr: Option<String>,
        msgs: Vec<Message>,
    ) -> bool {
        self.tx
            .try_send(Command::Step {
                from,
                from_addr,
                msgs,
            })
            .is_ok()
    }

    fn ensure_leader(&self) -> Result<(), RaftError> {
        if self.is_leader() {
            Ok(())
        } else {
            Err(self.not_leader_error())
        }
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, RaftError> {
        let timeout = self.shared.request_timeout;
        let (tx, rx) = oneshot::channel();
        let fut = async {
            self.tx
                .send(make(tx))
                .await
                .map_err(|_| RaftError::Stopped)?;
            rx.await.map_err(|_| RaftError::Stopped)?
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(res) => res,
            Err(_) => Err(RaftError::Timeout(timeout)),
        }
    }
}

/// The gRPC `Raft` service (peer traffic into this node). Built by [`RaftHandle::raft_service`].
pub struct RaftService {
    handle: RaftHandle,
}

#[tonic::async_trait]
impl Raft for RaftService {
    async fn send(
        &self,
        request: tonic::Request<RaftBatch>,
    ) -> Result<tonic::Response<Empty>, tonic::Status> {
        if self.handle.shared.peers_need_tls {
            crate::authz::authorize_raft_peer(&request)?;
        }
        let batch = request.into_inner();
        let me = self.handle.shared.id;
        if !self.handle.shared.faults.link_up(batch.from, me) {
            return Err(tonic::Status::unavailable(format!(
                "fault injection: traffic from {} to {me} is blocked",
                batch.from
            )));
        }
        let mut msgs = Vec::with_capacity(batch.messages.len());
        for bytes in &batch.messages {
            let m = Message::parse_from_bytes(bytes).map_err(|e| {
                tonic::Status::invalid_argument(format!(
                    "raft message from member {} is not a valid eraftpb.Message: {e}",
                    batch.from
                ))
            })?;
            if m.to != me {
                return Err(tonic::Status::invalid_argument(format!(
                    "raft message for member {} reached member {me}; check the member addresses",
                    m.to
                )));
            }
            msgs.push(m);
        }
        let from_addr = (!batch.from_addr.is_empty()).then_some(batch.from_addr);
        self.handle
            .tx
            .send(Command::Step {
                from: batch.from,
                from_addr,
                msgs,
            })
            .await
            .map_err(|_| tonic::Status::unavailable("raft node is stopped"))?;
        Ok(tonic::Response::new(Empty {}))
    }
}
