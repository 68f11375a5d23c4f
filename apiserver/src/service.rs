//! The gRPC `Api` service (berth.v1.Api): requests in, raft proposals and store reads out.
//!
//! Writes: decode + validate the object (an invalid object never reaches raft), build a
//! [`Command`] (uid and timestamp chosen here), `propose` it. A follower forwards the original
//! request to the leader over a cached client, marked with `berth-forwarded` so it is never
//! forwarded twice (a forwarded request that meets a non-leader answers UNAVAILABLE with the
//! leader's address in `berth-leader`, and the client retries; a forwarded write that succeeds
//! also names the leader in `berth-leader`, so clients move their writes there). While no leader is known
//! (election), writes wait up to [`LEADER_WAIT`].
//!
//! Reads: `read_index` (linearizable, also on followers) then the local store. Watches are
//! served from the local store's history; each stream is one task in a `TaskTracker` that ends
//! on client disconnect, error or server shutdown, and sends a BOOKMARK every
//! `bookmark_interval`. Error codes: see [`crate::status`].
//!
//! Security: every RPC first authenticates the caller by its client certificate and asks
//! [`crate::authz`] whether it may do this (before anything is proposed or read);
//! `Bootstrap` alone is authenticated by the join token instead ([`crate::pki`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_proto::pb::{self, api_client::ApiClient, api_server::Api};
use berth_proto::selector::Selector;
use berth_proto::{DynObject, Kind};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::authz::{authenticate, Caller, Verb, ON_BEHALF_OF_METADATA};
use crate::encryption::{is_keyring, SecretCodec};
use crate::pki::ServerPki;
use crate::raft::{MemberInfo, RaftError, RaftHandle};
use crate::status::{from_raft, from_store, invalid, outcome_unknown, LEADER_METADATA};
use crate::store::{
    ApplyOutcome, Command, NodePortRange, ObjectKey, Op, OpResult, Reply, Store, StoreError,
    WatchEvent, WatchEventType, WatchFilter,
};

/// gRPC request size limit (objects are limited further by the store).
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;
/// How long a write waits for a leader to be elected before answering UNAVAILABLE.
pub const LEADER_WAIT: Duration = Duration::from_secs(10);
/// Marks a request a follower forwarded to the leader.
pub const FORWARDED_METADATA: &str = "berth-forwarded";
/// Events sent per wake-up of a watch stream.
const WATCH_BATCH: usize = 256;
/// Events buffered per watch stream between the watcher and the transport.
const WATCH_BUFFER: usize = 16;

/// Settings of the Api service.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub node_ports: NodePortRange,
    /// Where cluster IPs and node pod CIDRs are allocated from.
    pub networks: crate::store::networks::Networks,
    pub bookmark_interval: Duration,
    /// Which node paths pods may mount as hostPath volumes (admission).
    pub host_paths: crate::hostpaths::HostPathPolicy,
}

/// The `Api` implementation. Construct with [`ApiService::new`], mount with
/// `pb::api_server::ApiServer::new(svc)`.
pub struct ApiService {
    store: Arc<Store>,
    raft: RaftHandle,
    config: ApiConfig,
    shutdown: CancellationToken,
    watches: TaskTracker,
    leaders: Mutex<HashMap<String, ApiClient<Channel>>>,
    pki: ServerPki,
    /// Seals Secrets before they are proposed, opens them on the way out.
    secrets: Arc<SecretCodec>,
}

/// Where a write goes when this member cannot propose it.
enum Route {
    /// Forward to the leader through this client; the address is echoed to the caller.
    Leader(ApiClient<Channel>, String),
    Fail(Status),
}

impl From<Status> for Route {
    fn from(s: Status) -> Route {
        Route::Fail(s)
    }
}

fn forwarded<T>(req: &Request<T>) -> bool {
    req.metadata().contains_key(FORWARDED_METADATA)
}

/// A write this follower forwarded succeeded: name the leader in the reply's `berth-leader`
/// metadata so the client can send its next writes there directly (one hop and one decode
/// fewer per write).
///
/// A forwarded write whose connection to the leader broke after it was sent (the leader
/// died or stepped down and dropped it) may or may not have been applied: say so, with
/// `berth-outcome: unknown`, instead of passing on a bare h2 "Unknown" error.
fn with_leader_hint<T>(
    res: Result<Response<T>, Status>,
    addr: &str,
) -> Result<Response<T>, Status> {
    let res = res.map_err(|s| {
        if broke_in_flight(&s) {
            outcome_unknown(Status::unknown(format!(
                "the connection to the leader {addr} broke while it had this write: {}",
                berth_tls::innermost_cause(&s)
            )))
        } else {
            s
        }
    });
    res.map(|mut resp| {
        if let Ok(v) = addr.parse() {
            resp.metadata_mut().insert(LEADER_METADATA, v);
        }
        resp
    })
}

/// Did the forwarded call fail on the wire after it was sent (not an answer, not a refused
/// connection, which tonic reports as UNAVAILABLE)?
fn broke_in_flight(s: &Status) -> bool {
    if !matches!(s.code(), tonic::Code::Unknown | tonic::Code::Internal) {
        return false;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(s);
    while let Some(err) = source {
        if err.downcast_ref::<tonic::transport::Error>().is_some()
            || err.downcast_ref::<std::io::Error>().is_some()
        {
            return true;
        }
        source = err.source();
    }
    s.message().starts_with("h2 protocol error") || s.message().contains("transport error")
}

/// The request to forward to the leader: marked as forwarded, naming the original caller
/// (the leader authorizes it as that identity; see [`crate::authz`]).
fn mark_forwarded<T>(msg: T, caller: &Caller) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert(
        FORWARDED_METADATA,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    if let Ok(v) = caller.identity.to_string().parse() {
        r.metadata_mut().insert(ON_BEHALF_OF_METADATA, v);
    }
    r
}

fn to_json(v: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

fn parse_kind(s: &str) -> Result<Kind, Status> {
    Kind::parse(s).ok_or_else(|| {
        invalid(format!(
            "unknown kind {s:?} (supported: Deployment, ReplicaSet, Service, Pod, Endpoints, \
             Node, Event)"
        ))
    })
}

fn parse_key(key: Option<pb::ObjectKey>) -> Result<ObjectKey, Status> {
    let key = key.ok_or_else(|| invalid("request has no key"))?;
    let kind = parse_kind(&key.kind)?;
    if key.name.is_empty() {
        return Err(invalid(format!("{kind}: a name is required")));
    }
    Ok(ObjectKey::new(kind, &key.namespace, &key.name))
}

fn parse_selector(s: &str) -> Result<Selector, Status> {
    Selector::parse(s).map_err(|e| invalid(e.to_string()))
}

fn pb_members(members: &[MemberInfo], leader: Option<u64>) -> Vec<pb::Member> {
    members
        .iter()
        .map(|m| pb::Member {
            id: m.id,
            address: m.address.clone(),
            is_leader: leader == Some(m.id),
            matched: m.matched.unwrap_or(0),
            reachable: m.reachable.unwrap_or(false),
        })
        .collect()
}

/// `v` as the client gets it: a Secret's values opened ([`crate::encryption`]).
fn revealed(codec: &SecretCodec, store: &Store, v: &serde_json::Value) -> Result<Vec<u8>, Status> {
    if v["kind"] != "Secret" {
        return Ok(to_json(v));
    }
    codec.reveal(store, v).map(|v| to_json(&v)).map_err(|e| {
        tracing::warn!(error = %e, "a stored Secret could not be decrypted");
        Status::internal(crate::status::bounded(e.to_string()))
    })
}

fn pb_event_revealed(
    ev: &WatchEvent,
    codec: &SecretCodec,
    store: &Store,
) -> Result<pb::WatchEvent, Status> {
    let mut out = pb_event(ev);
    if let Some(o) = ev.object.as_deref() {
        if o["kind"] == "Secret" {
            out.object = revealed(codec, store, o)?;
        }
    }
    Ok(out)
}

fn pb_event(ev: &WatchEvent) -> pb::WatchEvent {
    let t = match ev.event_type {
        WatchEventType::Added => pb::EventType::Added,
        WatchEventType::Modified => pb::EventType::Modified,
        WatchEventType::Deleted => pb::EventType::Deleted,
        WatchEventType::Bookmark => pb::EventType::Bookmark,
    };
    pb::WatchEvent {
        r#type: t as i32,
        object: ev.object.as_deref().map(to_json).unwrap_or_default(),
        revision: ev.revision,
    }
}

fn pb_outcome(o: ApplyOutcome) -> pb::ApplyOutcome {
    match o {
        ApplyOutcome::Created => pb::ApplyOutcome::Created,
        ApplyOutcome::Configured => pb::ApplyOutcome::Configured,
        ApplyOutcome::Unchanged => pb::ApplyOutcome::Unchanged,
    }
}

fn one(results: Vec<OpResult>) -> Result<crate::store::OpOutput, Status> {
    match results.into_iter().next() {
        Some(Ok(out)) => Ok(out),
        Some(Err(e)) => Err(from_store(&e)),
        None => Err(Status::internal("the store returned no result")),
    }
}

impl ApiService {
    pub fn new(
        store: Arc<Store>,
        raft: RaftHandle,
        config: ApiConfig,
        pki: ServerPki,
        shutdown: CancellationToken,
    ) -> ApiService {
        ApiService {
            store,
            raft,
            config,
            shutdown,
            watches: TaskTracker::new(),
            leaders: Mutex::new(HashMap::new()),
            secrets: Arc::new(SecretCodec::new(pki.secrets_kek.clone())),
            pki,
        }
    }

    /// The tracker of watch-stream tasks (closed and awaited on shutdown).
    pub fn watch_tasks(&self) -> TaskTracker {
        self.watches.clone()
    }

    /// Decode, schema-check, validate and size-check an object from a request.
    fn decode_object(&self, bytes: &[u8]) -> Result<DynObject, Status> {
        let limit = self.store.config().max_object_bytes;
        if bytes.len() > limit {
            return Err(from_store(&StoreError::TooLarge {
                what: "the object".to_string(),
                size: bytes.len(),
                limit,
            }));
        }
        let obj = DynObject::from_json(bytes).map_err(|e| invalid(e.to_string()))?;
        let errors = berth_proto::validate::validate(&obj);
        if !errors.is_empty() {
            let list: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
            return Err(invalid(format!(
                "invalid {} {:?}: {}",
                obj.kind,
                obj.name(),
                list.join("; ")
            )));
        }
        Ok(obj)
    }

    fn client_for(&self, addr: &str) -> Result<ApiClient<Channel>, Status> {
        let mut cache = self.leaders.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cache.get(addr) {
            return Ok(c.clone());
        }
        let endpoint = self
            .pki
            .client_tls()
            .endpoint(addr)
            .map_err(|e| Status::internal(format!("bad leader address {addr:?}: {e}")))?
            .connect_timeout(Duration::from_secs(3));
        let client = ApiClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(MAX_REQUEST_BYTES);
        cache.insert(addr.to_string(), client.clone());
        Ok(client)
    }

    /// Wait (bounded by `deadline`) until some leader is known.
    async fn wait_for_leader(&self, deadline: Instant) -> bool {
        let mut w = self.raft.leader_watch();
        loop {
            if w.borrow_and_update().is_some() {
                return true;
            }
            match tokio::time::timeout_at(deadline, w.changed()).await {
                Ok(Ok(())) => {}
                _ => return false,
            }
        }
    }

    /// What to do on NotLeader: forward (if the leader is known and we may), wait, or fail.
    async fn on_not_leader(
        &self,
        err: RaftError,
        is_forwarded: bool,
        deadline: Instant,
    ) -> Result<(), Route> {
        if let RaftError::NotLeader {
            leader_id,
            leader_addr: Some(addr),
        } = &err
        {
            if *leader_id != Some(self.raft.id()) {
                if is_forwarded {
                    return Err(Route::Fail(from_raft(&err)));
                }
                return Err(Route::Leader(self.client_for(addr)?, addr.clone()));
            }
        }
        if Instant::now() >= deadline || !self.wait_for_leader(deadline).await {
            return Err(Route::Fail(from_raft(&err)));
        }
        // A leader appeared (maybe us): short pause so its address is in the member list.
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(())
    }

    /// Propose `ops` as one raft entry of independent ops (or dry-run them locally).
    async fn write(
        &self,
        ops: Vec<Op>,
        dry_run: bool,
        is_forwarded: bool,
    ) -> Result<Vec<OpResult>, Route> {
        self.write_cmd(ops, false, dry_run, is_forwarded).await
    }

    /// Propose `ops` as one raft entry, all-or-nothing when `atomic` (or dry-run them).
    async fn write_cmd(
        &self,
        ops: Vec<Op>,
        atomic: bool,
        dry_run: bool,
        is_forwarded: bool,
    ) -> Result<Vec<OpResult>, Route> {
        let ops = self.seal_ops(ops, is_forwarded).await?;
        let cmd = Command {
            ops,
            atomic,
            now: chrono::Utc::now(),
            node_ports: self.config.node_ports,
            networks: self.config.networks,
            check_namespaces: true,
        };
        if dry_run {
            return Ok(self.store.dry_run(cmd).results);
        }
        self.propose_cmd(cmd, is_forwarded).await
    }

    /// Propose one command, waiting out elections (NotLeader: forward, see [`Route`]).
    async fn propose_cmd(&self, cmd: Command, is_forwarded: bool) -> Result<Vec<OpResult>, Route> {
        let data = cmd.encode();
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            match self.raft.propose(data.clone()).await {
                Ok(bytes) => {
                    return Reply::decode(&bytes)
                        .map(|r| r.results)
                        .map_err(|e| Route::Fail(from_store(&e)));
                }
                Err(e @ RaftError::NotLeader { .. }) => {
                    self.on_not_leader(e, is_forwarded, deadline).await?;
                }
                // Lost to a leadership change before it was committed: safe to retry.
                Err(RaftError::Dropped) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(Route::Fail(from_raft(&e))),
            }
        }
    }

    /// `v` as its reader gets it: a Secret's values opened.
    fn reveal(&self, v: &serde_json::Value) -> Result<Vec<u8>, Status> {
        revealed(&self.secrets, &self.store, v)
    }

    /// Seal the values of every Secret in `ops` with the keyring's write key, so the Raft
    /// log, the store and snapshots hold ciphertext only. Creates the keyring (on the leader)
    /// the first time a Secret is written.
    async fn seal_ops(&self, mut ops: Vec<Op>, is_forwarded: bool) -> Result<Vec<Op>, Route> {
        fn secret_of(op: &mut Op) -> Option<&mut serde_json::Value> {
            match op {
                Op::Create { object, .. } | Op::Update { object } | Op::Apply { object, .. } => {
                    (object["kind"] == "Secret" && !is_keyring(object)).then_some(object)
                }
                _ => None,
            }
        }
        if !ops.iter_mut().any(|op| secret_of(op).is_some()) {
            return Ok(ops);
        }
        let internal = |e: crate::encryption::EncryptionError| {
            Route::Fail(Status::internal(crate::status::bounded(e.to_string())))
        };
        let ring = match self.secrets.keyring(&self.store).map_err(internal)? {
            Some(r) => r,
            None => self.create_keyring(is_forwarded).await?,
        };
        for op in &mut ops {
            if let Some(obj) = secret_of(op) {
                let key = ObjectKey::new(
                    Kind::Secret,
                    obj["metadata"]["namespace"].as_str().unwrap_or(""),
                    obj["metadata"]["name"].as_str().unwrap_or(""),
                );
                let prev = self.store.get(&key).ok();
                crate::encryption::seal_secret(&ring, obj, prev.as_deref()).map_err(internal)?;
            }
        }
        Ok(ops)
    }

    /// Write the first keyring (`key1`). Only the leader does; a follower forwards the
    /// whole request to it (the plaintext never reaches Raft unsealed).
    async fn create_keyring(
        &self,
        is_forwarded: bool,
    ) -> Result<Arc<crate::encryption::Keyring>, Route> {
        let deadline = Instant::now() + LEADER_WAIT;
        let internal = |e: crate::encryption::EncryptionError| {
            Route::Fail(Status::internal(crate::status::bounded(e.to_string())))
        };
        loop {
            if let Some(r) = self.secrets.keyring(&self.store).map_err(internal)? {
                return Ok(r);
            }
            if !self.raft.is_leader() {
                self.on_not_leader(self.raft.not_leader_error(), is_forwarded, deadline)
                    .await?;
                continue;
            }
            let ring = crate::encryption::Keyring::new().map_err(internal)?;
            let object = ring.to_secret(self.secrets.kek()).map_err(internal)?;
            let cmd = Command {
                ops: vec![Op::Create {
                    object,
                    uid: Self::new_uid(),
                }],
                atomic: false,
                now: chrono::Utc::now(),
                node_ports: self.config.node_ports,
                networks: self.config.networks,
                check_namespaces: true,
            };
            match self.propose_cmd(cmd, true).await?.into_iter().next() {
                Some(Ok(_)) => {
                    tracing::info!("created the secrets encryption keyring (key1)");
                }
                Some(Err(StoreError::AlreadyExists { .. })) => {}
                Some(Err(e)) => return Err(Route::Fail(from_store(&e))),
                None => {
                    return Err(Route::Fail(Status::internal(
                        "the store returned no result",
                    )))
                }
            }
        }
    }

    /// Membership changes: run on the leader, waiting out elections like writes.
    async fn on_leader<T, F, Fut>(&self, is_forwarded: bool, f: F) -> Result<T, Route>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, RaftError>>,
    {
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(e @ RaftError::NotLeader { .. }) => {
                    self.on_not_leader(e, is_forwarded, deadline).await?;
                }
                Err(RaftError::ConfChangeInProgress) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(Route::Fail(from_raft(&e))),
            }
        }
    }

    /// The node authorizer's graph check: node `node` may read ConfigMap/Secret `key` only
    /// while a pod bound to it references it.
    fn node_may_read(&self, who: &Caller, node: &str, key: &ObjectKey) -> Result<(), Status> {
        if key.kind == Kind::PersistentVolume {
            return self.node_may_read_volume(who, node, &key.name);
        }
        let (pods, _) = self
            .store
            .list(Kind::Pod, Some(&key.namespace), &Selector::everything())
            .map_err(|e| from_store(&e))?;
        let referenced = pods.iter().any(|v| {
            let Ok(p) = serde_json::from_value::<berth_proto::types::Pod>((**v).clone()) else {
                return false;
            };
            if p.spec.node_name != node {
                return false;
            }
            let (cms, secrets) = p.spec.referenced_config();
            match key.kind {
                Kind::ConfigMap => cms.contains(&key.name),
                Kind::Secret => secrets.contains(&key.name),
                Kind::PersistentVolumeClaim => {
                    berth_proto::storage::pod_claims(&p.spec).any(|c| c == key.name)
                }
                _ => false,
            }
        });
        if referenced {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "{} may not get {} {}/{}: a node reads only the ConfigMaps and Secrets that pods bound to it reference",
                who.identity, key.kind, key.namespace, key.name
            )))
        }
    }

    /// Node authorizer for a PersistentVolume: readable by a node while a pod bound to it uses
    /// a claim bound to the volume. A volume that does not exist answers NotFound (the agent
    /// removes a provisioned volume's directory once its volume is gone), which reveals only
    /// that the name is unused.
    fn node_may_read_volume(&self, who: &Caller, node: &str, name: &str) -> Result<(), Status> {
        let pv_key = ObjectKey::new(Kind::PersistentVolume, "", name);
        if let Err(crate::store::StoreError::NotFound { .. }) = self.store.get(&pv_key) {
            return Ok(());
        }
        let (pods, _) = self
            .store
            .list(Kind::Pod, None, &Selector::everything())
            .map_err(|e| from_store(&e))?;
        for v in &pods {
            let Ok(p) = serde_json::from_value::<berth_proto::types::Pod>((**v).clone()) else {
                continue;
            };
            if p.spec.node_name != node {
                continue;
            }
            for claim in berth_proto::storage::pod_claims(&p.spec) {
                let ck = ObjectKey::new(Kind::PersistentVolumeClaim, &p.metadata.namespace, claim);
                let Ok(c) = self.store.get(&ck) else {
                    continue;
                };
                if c.pointer("/spec/volumeName").and_then(|v| v.as_str()) == Some(name) {
                    return Ok(());
                }
            }
        }
        Err(Status::permission_denied(format!(
            "{} may not get PersistentVolume {name}: a node reads only the volumes of the claims that pods bound to it use",
            who.identity
        )))
    }

    /// NodeRestriction for names: a certificate for node `name` goes only to the key recorded
    /// for it while its Node exists (the node renewing), never to another machine claiming
    /// the name; after `berth delete node` / `berth node revoke` the name is free again.
    fn check_node_name_claim(&self, name: &str, csr_pem: &str) -> Result<(), Status> {
        use berth_proto::certificates as certs;
        if self
            .store
            .get(&ObjectKey::new(Kind::Node, "", name))
            .is_err()
        {
            return Ok(());
        }
        let Ok(rec) = self.store.get(&ObjectKey::new(
            Kind::ConfigMap,
            certs::NAMESPACE,
            &certs::node_record_name(name),
        )) else {
            return Ok(());
        };
        let Some(known) = certs::data(&rec, certs::KEY_SHA256_KEY) else {
            return Ok(());
        };
        let presented =
            berth_tls::csr_key_sha256(csr_pem).map_err(|e| invalid(format!("bootstrap: {e}")))?;
        if presented != known {
            return Err(Status::permission_denied(format!(
                "node name {name:?} is registered with another certificate: a second machine may \
                 not take it (NodeRestriction); pick another --name, or if the machine was \
                 rebuilt, remove the old one first (`berth node revoke {name}` or `berth delete \
                 node {name}`)"
            )));
        }
        Ok(())
    }

    /// Record the certificate `cert_pem` (issued by this cluster) as `record_name` for `berth
    /// certificate list` and name claims.
    pub(crate) async fn record_certificate(
        &self,
        record_name: &str,
        cert_pem: &str,
    ) -> Result<(), Status> {
        let info = berth_tls::CertInfo::of_pem(cert_pem)
            .map_err(|e| Status::internal(format!("reading an issued certificate: {e}")))?;
        let obj = berth_proto::certificates::record(
            record_name,
            &info.identity.to_string(),
            info.issued.into(),
            info.not_after.into(),
            &info.key_sha256,
        );
        self.put_internal(obj).await
    }

    /// Create or replace `object` as this server (on the leader, or forwarded to it).
    async fn put_internal(&self, object: serde_json::Value) -> Result<(), Status> {
        let op = Op::Update {
            object: object.clone(),
        };
        let first = match self.write(vec![op], false, false).await {
            Ok(r) => one(r).map(|_| ()),
            Err(Route::Fail(s)) => Err(s),
            Err(Route::Leader(mut client, addr)) => with_leader_hint(
                client
                    .update(pb::UpdateRequest {
                        object: to_json(&object),
                        dry_run: false,
                    })
                    .await,
                &addr,
            )
            .map(|_| ()),
        };
        match first {
            Err(s) if s.code() == tonic::Code::NotFound => {}
            other => return other,
        }
        let op = Op::Create {
            object: object.clone(),
            uid: Self::new_uid(),
        };
        match self.write(vec![op], false, false).await {
            Ok(r) => one(r).map(|_| ()),
            Err(Route::Fail(s)) => Err(s),
            Err(Route::Leader(mut client, addr)) => with_leader_hint(
                client
                    .create(pb::CreateRequest {
                        object: to_json(&object),
                        dry_run: false,
                    })
                    .await,
                &addr,
            )
            .map(|_| ()),
        }
    }

    /// Why a request from `who` with a certificate issued at `issued` is refused, if node
    /// `who` was revoked (`berth node revoke`) after that certificate was issued.
    pub(crate) fn revoked(
        &self,
        who: &berth_tls::Identity,
        issued: std::time::SystemTime,
    ) -> Option<String> {
        use berth_proto::certificates as certs;
        let berth_tls::Identity::Node(name) = who else {
            return None;
        };
        let list = self
            .store
            .get(&ObjectKey::new(
                Kind::ConfigMap,
                certs::NAMESPACE,
                certs::REVOKED,
            ))
            .ok()?;
        certs::is_revoked(&list, name, issued.into()).then(|| {
            format!(
                "the certificate of {who} was revoked (`berth node revoke {name}`): it is refused \
                 on every server; join again with a token for a new one if the admin allows"
            )
        })
    }

    /// `berth server --restore`: write the objects of a store snapshot into this new
    /// one-member cluster through raft (so members that join later replicate them), keeping
    /// each object's uid, labels, spec and status; revisions, creation times and generations
    /// are this cluster's. The old cluster's join token hashes, certificate records and
    /// revocations are left out (this cluster has its own CA and tokens); objects that exist
    /// already (the built-in namespaces) are kept. Returns how many objects were written.
    pub async fn restore_objects(&self, body: &[u8]) -> Result<usize, String> {
        #[derive(serde::Deserialize)]
        struct Snapshot {
            objects: Vec<serde_json::Value>,
        }
        let snap: Snapshot = serde_json::from_slice(body)
            .map_err(|e| format!("the snapshot's body is not a store snapshot: {e}"))?;
        let ours = |v: &serde_json::Value| {
            let kind = v["kind"].as_str().unwrap_or("");
            let ns = v["metadata"]["namespace"].as_str().unwrap_or("");
            let name = v["metadata"]["name"].as_str().unwrap_or("");
            (kind == "Secret" && berth_proto::jointoken::is_token_secret(ns, name))
                || (kind == "ConfigMap" && berth_proto::certificates::is_protected(ns, name))
        };
        // Namespaces first, the keyring before the Secrets it opens.
        let mut objects: Vec<serde_json::Value> =
            snap.objects.into_iter().filter(|v| !ours(v)).collect();
        objects.sort_by_key(|v| match v["kind"].as_str() {
            Some("Namespace") => 0,
            _ if is_keyring(v) => 1,
            _ => 2,
        });
        let deadline = Instant::now() + LEADER_WAIT * 3;
        while !self.raft.is_leader() {
            if Instant::now() >= deadline {
                return Err("this server did not become the leader of its new cluster".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut written = 0;
        for chunk in objects.chunks(500) {
            let ops = chunk
                .iter()
                .map(|v| Op::Create {
                    object: v.clone(),
                    uid: v["metadata"]["uid"]
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(Self::new_uid),
                })
                .collect();
            let cmd = Command {
                ops,
                atomic: false,
                now: chrono::Utc::now(),
                node_ports: self.config.node_ports,
                networks: self.config.networks,
                check_namespaces: false,
            };
            let results = match self.propose_cmd(cmd, true).await {
                Ok(r) => r,
                Err(Route::Fail(s)) => return Err(s.message().to_string()),
                Err(Route::Leader(..)) => return Err("leadership moved during the restore".into()),
            };
            for (r, v) in results.into_iter().zip(chunk) {
                match r {
                    Ok(_) => written += 1,
                    Err(StoreError::AlreadyExists { .. }) => {}
                    Err(e) => {
                        return Err(format!(
                            "restoring {} {}/{}: {e}",
                            v["kind"].as_str().unwrap_or("?"),
                            v["metadata"]["namespace"].as_str().unwrap_or(""),
                            v["metadata"]["name"].as_str().unwrap_or("?")
                        ))
                    }
                }
            }
        }
        Ok(written)
    }

    /// The join token hashes in this server's store (see [`berth_proto::jointoken`]).
    pub(crate) fn stored_join_tokens(&self) -> crate::pki::StoredTokens {
        use berth_proto::jointoken::{self, TokenRole};
        let hash = |role: TokenRole| {
            let key = ObjectKey::new(Kind::Secret, jointoken::NAMESPACE, role.secret_name());
            let v = self.store.get(&key).ok()?;
            match self.secrets.reveal(&self.store, &v) {
                Ok(v) => jointoken::stored_hash(&v),
                Err(e) => {
                    tracing::warn!(error = %e, secret = role.secret_name(), "cannot read a join token Secret");
                    None
                }
            }
        };
        crate::pki::StoredTokens {
            server: hash(TokenRole::Server),
            agent: hash(TokenRole::Agent),
        }
    }

    /// What this server presents to other servers and to agents (`system:server`).
    pub(crate) fn client_tls(&self) -> berth_tls::ClientTls {
        self.pki.client_tls()
    }

    /// Cancelled when this server stops (long streams end then).
    pub(crate) fn shutdown_token(&self) -> tokio_util::sync::CancellationToken {
        self.shutdown.clone()
    }

    /// The identity an API bearer token (`berth token create`) grants, checked against its
    /// Secret in this server's store (see [`berth_proto::apitoken`]). The error is for the
    /// server's log: it names the token but never holds its secret.
    pub(crate) fn bearer_identity(&self, token: &str) -> Result<berth_tls::Identity, String> {
        use berth_proto::apitoken;
        let name = apitoken::name_of(token).ok_or("not a Berth API token")?;
        let key = crate::store::ObjectKey::new(
            berth_proto::Kind::Secret,
            apitoken::NAMESPACE,
            &apitoken::secret_name(name),
        );
        let secret = self
            .store
            .get(&key)
            .map_err(|_| format!("token {name}: unknown or revoked"))?;
        let secret = self
            .secrets
            .reveal(&self.store, &secret)
            .map_err(|e| format!("token {name}: {e}"))?;
        let grant = apitoken::verify(token, &secret, chrono::Utc::now())?;
        Ok(berth_tls::Identity::Token {
            name: grant.name,
            read_only: grant.read_only,
        })
    }

    async fn read_barrier(&self) -> Result<(), Status> {
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            match self.raft.read_index().await {
                Ok(()) => return Ok(()),
                // No leader to confirm the read with yet: wait for an election.
                Err(e @ (RaftError::NotLeader { .. } | RaftError::Dropped)) => {
                    if Instant::now() >= deadline || !self.wait_for_leader(deadline).await {
                        return Err(from_raft(&e));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(from_raft(&e)),
            }
        }
    }

    fn new_uid() -> String {
        uuid::Uuid::new_v4().to_string()
    }

    /// Decode an object and check that `who` may `verb` it; `Ok((object, bound_node))`.
    fn authorized_object(
        &self,
        who: &Caller,
        verb: Verb,
        bytes: &[u8],
    ) -> Result<(serde_json::Value, Option<String>), Status> {
        let obj = self.decode_object(bytes)?;
        let meta = obj.meta();
        let bound = who.authorize(verb, Some(obj.kind), &meta.namespace, &meta.name)?;
        if let (
            berth_tls::Identity::Node(_),
            Kind::Node,
            Verb::Create | Verb::Update | Verb::Apply,
        ) = (&who.identity, obj.kind, verb)
        {
            let old = match verb {
                Verb::Create => None,
                _ => self
                    .store
                    .get(&ObjectKey::new(Kind::Node, "", &meta.name))
                    .ok(),
            };
            crate::noderestriction::admit(old.as_deref(), &obj.value, verb == Verb::Apply)
                .map_err(|m| Status::permission_denied(format!("{} {m}", who.identity)))?;
        }
        if obj.kind == Kind::Secret
            && berth_proto::jointoken::is_token_secret(&meta.namespace, &meta.name)
            && who.identity != berth_tls::Identity::Admin
        {
            return Err(join_token_denied(&who.identity));
        }
        if obj.kind == Kind::ConfigMap
            && berth_proto::certificates::is_protected(&meta.namespace, &meta.name)
        {
            certificates_write_allowed(&who.identity)?;
        }
        if is_keyring(&obj.value) && who.identity != berth_tls::Identity::Admin {
            return Err(Status::permission_denied(format!(
                "{} may not write the secrets encryption keyring: only the cluster admin may, \
                 with `berth secrets-encryption rotate`",
                who.identity
            )));
        }
        // Image trust admission (see crate::trust): after authorization, before raft.
        if matches!(verb, Verb::Create | Verb::Update | Verb::Apply) {
            crate::trust::admission(&self.store, &obj, verb != Verb::Create)
                .map_err(|m| Status::failed_precondition(crate::status::bounded(m)))?;
            let old = || {
                if verb == Verb::Create {
                    return None;
                }
                let key = ObjectKey::new(obj.kind, obj.namespace(), obj.name());
                let v = self.store.get(&key).ok()?;
                DynObject::from_value((*v).clone()).ok()
            };
            self.config
                .host_paths
                .admit(&obj, old)
                .map_err(|m| Status::permission_denied(crate::status::bounded(m)))?;
        }
        Ok((obj.value, bound))
    }

    fn op_create(&self, who: &Caller, bytes: &[u8]) -> Result<Op, Status> {
        let (object, _) = self.authorized_object(who, Verb::Create, bytes)?;
        Ok(Op::Create {
            object,
            uid: Self::new_uid(),
        })
    }
    fn op_update(&self, who: &Caller, bytes: &[u8]) -> Result<Op, Status> {
        let (object, _) = self.authorized_object(who, Verb::Update, bytes)?;
        Ok(Op::Update { object })
    }
    fn op_update_status(&self, who: &Caller, bytes: &[u8]) -> Result<Op, Status> {
        let (object, bound_node) = self.authorized_object(who, Verb::UpdateStatus, bytes)?;
        Ok(Op::UpdateStatus { object, bound_node })
    }
    fn op_apply(&self, who: &Caller, bytes: &[u8]) -> Result<Op, Status> {
        let (object, _) = self.authorized_object(who, Verb::Apply, bytes)?;
        Ok(Op::Apply {
            object,
            uid: Self::new_uid(),
        })
    }
    fn op_delete(&self, who: &Caller, r: &pb::DeleteRequest) -> Result<Op, Status> {
        let key = parse_key(r.key.clone())?;
        if let Some(node) =
            who.authorize(Verb::Delete, Some(key.kind), &key.namespace, &key.name)?
        {
            self.node_may_delete(who, &node, &key, r.resource_version)?;
        }
        if key.kind == Kind::Secret
            && berth_proto::jointoken::is_token_secret(&key.namespace, &key.name)
            && who.identity != berth_tls::Identity::Admin
        {
            return Err(join_token_denied(&who.identity));
        }
        if key.kind == Kind::ConfigMap
            && berth_proto::certificates::is_protected(&key.namespace, &key.name)
        {
            certificates_write_allowed(&who.identity)?;
        }
        if key.kind == Kind::Secret
            && key.namespace == crate::encryption::KEYRING_NAMESPACE
            && key.name == crate::encryption::KEYRING_NAME
        {
            return Err(Status::permission_denied(
                "the secrets encryption keyring may not be deleted: no Secret could be read \
                 without it",
            ));
        }
        Ok(Op::Delete {
            key,
            resource_version: r.resource_version,
            grace_period_seconds: r.grace_period_seconds,
        })
    }

    /// A node deletes only pods bound to it, at the resourceVersion it saw (a pod's binding
    /// never changes, and the precondition makes the check hold when the write is applied).
    fn node_may_delete(
        &self,
        who: &Caller,
        node: &str,
        key: &ObjectKey,
        resource_version: u64,
    ) -> Result<(), Status> {
        let bound = self
            .store
            .get(key)
            .ok()
            .and_then(|v| v["spec"]["nodeName"].as_str().map(str::to_string));
        if resource_version == 0 || bound.as_deref() != Some(node) {
            return Err(Status::permission_denied(format!(
                "{} may not delete {} {}/{}: a node deletes only pods bound to it, with a \
                 resourceVersion precondition",
                who.identity, key.kind, key.namespace, key.name
            )));
        }
        Ok(())
    }

    fn op_of_batch(&self, who: &Caller, op: &pb::BatchOp) -> Result<Op, Status> {
        use pb::batch_op::Op as B;
        match &op.op {
            Some(B::Create(r)) => self.op_create(who, &r.object),
            Some(B::Update(r)) => self.op_update(who, &r.object),
            Some(B::UpdateStatus(r)) => self.op_update_status(who, &r.object),
            Some(B::Delete(r)) => self.op_delete(who, r),
            Some(B::Apply(r)) => self.op_apply(who, &r.object),
            None => Err(invalid("batch op has no operation")),
        }
    }
}

fn certificates_write_allowed(who: &berth_tls::Identity) -> Result<(), Status> {
    match who {
        berth_tls::Identity::Admin | berth_tls::Identity::Server => Ok(()),
        _ => Err(Status::permission_denied(format!(
            "{who} may not write the certificate records or the revocation list: servers keep \
             them, the admin revokes with `berth node revoke NAME`"
        ))),
    }
}

fn join_token_denied(who: &berth_tls::Identity) -> Status {
    Status::permission_denied(format!(
        "{who} may not write the join token Secrets: only the cluster admin may, with `berth \
         token rotate server|agent`"
    ))
}

/// Run one write rpc: build the op, propose, or forward the original request to the leader.
macro_rules! write_rpc {
    ($self:ident, $req:ident, $method:ident, |$who:ident, $r:ident| $op:expr, $dry:expr, |$out:ident| $resp:expr) => {{
        let $who = authenticate(&$req)?;
        let is_fwd = forwarded(&$req);
        let $r = $req.into_inner();
        let op = $op?;
        match $self.write(vec![op], $dry, is_fwd).await {
            Ok(results) => {
                let $out = one(results)?;
                Ok(Response::new($resp))
            }
            Err(Route::Fail(s)) => Err(s),
            Err(Route::Leader(mut client, addr)) => {
                with_leader_hint(client.$method(mark_forwarded($r, &$who)).await, &addr)
            }
        }
    }};
}

#[tonic::async_trait]
impl Api for ApiService {
    async fn create(
        &self,
        req: Request<pb::CreateRequest>,
    ) -> Result<Response<pb::ObjectResponse>, Status> {
        write_rpc!(
            self,
            req,
            create,
            |who, r| self.op_create(&who, &r.object),
            r.dry_run,
            |out| {
                pb::ObjectResponse {
                    object: self.reveal(&out.object)?,
                }
            }
        )
    }

    async fn update(
        &self,
        req: Request<pb::UpdateRequest>,
    ) -> Result<Response<pb::ObjectResponse>, Status> {
        write_rpc!(
            self,
            req,
            update,
            |who, r| self.op_update(&who, &r.object),
            r.dry_run,
            |out| {
                pb::ObjectResponse {
                    object: self.reveal(&out.object)?,
                }
            }
        )
    }

    async fn update_status(
        &self,
        req: Request<pb::UpdateRequest>,
    ) -> Result<Response<pb::ObjectResponse>, Status> {
        write_rpc!(
            self,
            req,
            update_status,
            |who, r| self.op_update_status(&who, &r.object),
            r.dry_run,
            |out| pb::ObjectResponse {
                object: self.reveal(&out.object)?,
            }
        )
    }

    async fn apply(
        &self,
        req: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        write_rpc!(
            self,
            req,
            apply,
            |who, r| self.op_apply(&who, &r.object),
            r.dry_run,
            |out| {
                let outcome = pb_outcome(out.outcome.unwrap_or(ApplyOutcome::Created));
                pb::ApplyResponse {
                    object: self.reveal(&out.object)?,
                    outcome: outcome as i32,
                }
            }
        )
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::ObjectResponse>, Status> {
        write_rpc!(
            self,
            req,
            delete,
            |who, r| self.op_delete(&who, &r),
            false,
            |out| {
                pb::ObjectResponse {
                    object: self.reveal(&out.object)?,
                }
            }
        )
    }

    async fn batch(
        &self,
        req: Request<pb::BatchRequest>,
    ) -> Result<Response<pb::BatchResponse>, Status> {
        let who = authenticate(&req)?;
        let is_fwd = forwarded(&req);
        let r = req.into_inner();
        // Ops that fail validation or authorization get their error without reaching raft;
        // the rest are proposed together as one entry (none of them if the batch is atomic).
        let prepared: Vec<Result<Op, Status>> =
            r.ops.iter().map(|o| self.op_of_batch(&who, o)).collect();
        let rejected: Vec<usize> = prepared
            .iter()
            .enumerate()
            .filter(|(_, p)| p.is_err())
            .map(|(i, _)| i)
            .collect();
        let valid: Vec<Op> = prepared
            .iter()
            .filter_map(|p| p.as_ref().ok().cloned())
            .collect();
        // An atomic batch with a rejected op stores nothing: do not propose it at all.
        let all_or_nothing_failed = r.atomic && !rejected.is_empty();
        let propose = !valid.is_empty() && !all_or_nothing_failed;
        let mut committed = if propose {
            match self.write_cmd(valid, r.atomic, r.dry_run, is_fwd).await {
                Ok(results) => results.into_iter(),
                Err(Route::Fail(s)) => return Err(s),
                Err(Route::Leader(mut client, addr)) => {
                    return with_leader_hint(client.batch(mark_forwarded(r, &who)).await, &addr)
                }
            }
        } else {
            Vec::new().into_iter()
        };
        let not_applied = StoreError::NotApplied { failed: rejected };
        let results = prepared
            .into_iter()
            .map(|p| {
                // Err((status, rolled back because another op failed)).
                let res = match p {
                    Err(s) => Err((s, false)),
                    Ok(_) if !propose => Err((from_store(&not_applied), true)),
                    Ok(_) => match committed.next() {
                        Some(Ok(out)) => Ok(out),
                        Some(Err(e)) => {
                            let rolled_back = matches!(e, StoreError::NotApplied { .. });
                            Err((from_store(&e), rolled_back))
                        }
                        None => Err((
                            Status::internal("the store returned too few results"),
                            false,
                        )),
                    },
                };
                let res = res.and_then(|out| {
                    self.reveal(&out.object)
                        .map(|b| (out, b))
                        .map_err(|s| (s, false))
                });
                match res {
                    Ok((out, object)) => pb::BatchResult {
                        code: 0,
                        message: String::new(),
                        object,
                        outcome: out.outcome.map(|o| pb_outcome(o) as i32),
                        rolled_back: false,
                    },
                    Err((s, rolled_back)) => pb::BatchResult {
                        code: s.code() as i32,
                        message: s.message().to_string(),
                        object: Vec::new(),
                        outcome: None,
                        rolled_back,
                    },
                }
            })
            .collect();
        Ok(Response::new(pb::BatchResponse { results }))
    }

    async fn get(
        &self,
        req: Request<pb::GetRequest>,
    ) -> Result<Response<pb::ObjectResponse>, Status> {
        let who = authenticate(&req)?;
        let key = parse_key(req.into_inner().key)?;
        let bound = who.authorize(Verb::Get, Some(key.kind), &key.namespace, &key.name)?;
        self.read_barrier().await?;
        if let Some(node) = bound {
            self.node_may_read(&who, &node, &key)?;
        }
        let obj = self.store.get(&key).map_err(|e| from_store(&e))?;
        Ok(Response::new(pb::ObjectResponse {
            object: self.reveal(&obj)?,
        }))
    }

    async fn list(
        &self,
        req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let who = authenticate(&req)?;
        let r = req.into_inner();
        let kind = parse_kind(&r.kind)?;
        who.authorize(Verb::List, Some(kind), &r.namespace, "")?;
        let selector = parse_selector(&r.label_selector)?;
        self.read_barrier().await?;
        let ns = (!r.namespace.is_empty()).then_some(r.namespace.as_str());
        let (items, revision) = self
            .store
            .list(kind, ns, &selector)
            .map_err(|e| from_store(&e))?;
        Ok(Response::new(pb::ListResponse {
            objects: items
                .iter()
                .map(|v| self.reveal(v))
                .collect::<Result<_, _>>()?,
            revision,
        }))
    }

    type WatchStream = ReceiverStream<Result<pb::WatchEvent, Status>>;

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let who = authenticate(&req)?;
        let r = req.into_inner();
        let kind = if r.kind.is_empty() {
            None
        } else {
            Some(parse_kind(&r.kind)?)
        };
        who.authorize(Verb::Watch, kind, &r.namespace, "")?;
        let filter = WatchFilter {
            kind,
            namespace: (!r.namespace.is_empty()).then(|| match kind {
                Some(k) => crate::store::normalize_namespace(k, &r.namespace),
                None => r.namespace.clone(),
            }),
            selector: parse_selector(&r.label_selector)?,
        };
        let (initial, mut watcher) = self
            .store
            .watch(r.from_revision, filter)
            .map_err(|e| from_store(&e))?;
        // Small: a slow client holds at most this many events (<= 1.5 MiB each) in memory
        // here; beyond that its cursor falls behind and it is expired from the history.
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let shutdown = self.shutdown.clone();
        let interval = self.config.bookmark_interval;
        let (codec, store) = (self.secrets.clone(), self.store.clone());
        self.watches.spawn(async move {
            // Send one item unless the client is gone or the server is stopping.
            let send = |item: Result<pb::WatchEvent, Status>| {
                let tx = tx.clone();
                let shutdown = shutdown.clone();
                async move {
                    tokio::select! {
                        r = tx.send(item) => r.is_ok(),
                        _ = shutdown.cancelled() => false,
                    }
                }
            };
            for ev in &initial {
                let item = pb_event_revealed(ev, &codec, &store);
                let failed = item.is_err();
                if !send(item).await || failed {
                    return;
                }
            }
            // After a synthesized initial list, say which revision it is consistent at so the
            // client resumes from there (the objects' own revisions may be older).
            if !initial.is_empty() && !send(Ok(pb_event(&watcher.bookmark()))).await {
                return;
            }
            let mut tick = tokio::time::interval_at(Instant::now() + interval, interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => {
                        let _ = tx.try_send(Err(Status::unavailable(
                            "server shutting down; resume the watch from the last revision on \
                             another server",
                        )));
                        return;
                    }
                    _ = tx.closed() => return,
                    r = watcher.next(WATCH_BATCH) => match r {
                        Ok(evs) => {
                            for ev in &evs {
                                let item = pb_event_revealed(ev, &codec, &store);
                                let failed = item.is_err();
                                if !send(item).await || failed {
                                    return;
                                }
                            }
                        }
                        Err(e) => {
                            let _ = send(Err(from_store(&e))).await;
                            return;
                        }
                    },
                    _ = tick.tick() => {
                        if !send(Ok(pb_event(&watcher.bookmark()))).await {
                            return;
                        }
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn cluster_status(
        &self,
        req: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        authenticate(&req)?;
        let s = self.raft.status();
        Ok(Response::new(pb::ClusterStatusResponse {
            id: s.id,
            leader_id: s.leader_id.unwrap_or(0),
            term: s.term,
            commit_index: s.commit,
            applied_index: s.applied,
            revision: self.store.revision(),
            members: pb_members(&s.members, s.leader_id),
            certificate_expires: berth_tls::CertInfo::of_pem(&self.pki.server.cert_pem)
                .map(|i| {
                    chrono::DateTime::<chrono::Utc>::from(i.not_after)
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                })
                .unwrap_or_default(),
        }))
    }

    async fn join(
        &self,
        req: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        let who = authenticate(&req)?;
        who.authorize_membership("add a cluster member")?;
        let is_fwd = forwarded(&req);
        let r = req.into_inner();
        if r.address.parse::<std::net::SocketAddr>().is_err()
            && r.address
                .rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            return Err(invalid(format!(
                "join address {:?} is not HOST:PORT",
                r.address
            )));
        }
        if let Some(m) = self
            .raft
            .status()
            .members
            .iter()
            .find(|m| m.address == r.address)
        {
            return Err(Status::already_exists(format!(
                "{} is already cluster member {}: restart that member from its data dir, or \
                 remove member {} first to join with an empty one",
                r.address, m.id, m.id
            )));
        }
        let address = r.address.clone();
        match self
            .on_leader(is_fwd, || self.raft.add_member(address.clone()))
            .await
        {
            Ok((id, members)) => Ok(Response::new(pb::JoinResponse {
                id,
                members: pb_members(&members, self.raft.leader_id()),
            })),
            Err(Route::Fail(s)) => Err(s),
            Err(Route::Leader(mut client, _)) => client.join(mark_forwarded(r, &who)).await,
        }
    }

    async fn remove_member(
        &self,
        req: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let who = authenticate(&req)?;
        who.authorize_membership("remove a cluster member")?;
        let is_fwd = forwarded(&req);
        let r = req.into_inner();
        let id = r.id;
        let members = self.raft.status().members;
        if members.len() == 1 && members[0].id == id {
            return Err(Status::failed_precondition(format!(
                "refusing to remove member {id}: it is the last member and the cluster would \
                 have none; stop its server instead"
            )));
        }
        match self.on_leader(is_fwd, || self.raft.remove_member(id)).await {
            Ok(_) => Ok(Response::new(pb::Empty {})),
            Err(Route::Fail(s)) => Err(s),
            Err(Route::Leader(mut client, _)) => {
                client.remove_member(mark_forwarded(r, &who)).await
            }
        }
    }

    type SnapshotStream = ReceiverStream<Result<pb::SnapshotChunk, Status>>;

    async fn snapshot(
        &self,
        req: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        use crate::raft::StateMachine as _;
        let who = authenticate(&req)?;
        if who.identity != berth_tls::Identity::Admin {
            return Err(Status::permission_denied(format!(
                "{} may not take a snapshot of the store: only the cluster admin may (`berth \
                 snapshot save`)",
                who.identity
            )));
        }
        // Everything committed before the request is in it.
        self.read_barrier().await?;
        let job = self.store.snapshot_job();
        let body = tokio::task::spawn_blocking(job)
            .await
            .map_err(|e| Status::internal(format!("snapshot: {e}")))?
            .map_err(|e| Status::internal(format!("snapshot: {e}")))?;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            for chunk in body.chunks(1 << 20) {
                let c = pb::SnapshotChunk {
                    data: chunk.to_vec(),
                };
                if tx.send(Ok(c)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn move_leader(
        &self,
        req: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        let who = authenticate(&req)?;
        who.authorize_membership("move the raft leader")?;
        let is_fwd = forwarded(&req);
        let r = req.into_inner();
        let id = r.id;
        if !self.raft.status().members.iter().any(|m| m.id == id) {
            return Err(Status::not_found(format!(
                "no cluster member {id} (`berth cluster status` lists them)"
            )));
        }
        if self.raft.leader_id() == Some(id) {
            return Ok(Response::new(pb::MoveLeaderResponse { leader_id: id }));
        }
        match self
            .on_leader(is_fwd, || self.raft.transfer_leadership(Some(id)))
            .await
        {
            Ok(_) => {}
            Err(Route::Fail(s)) => return Err(s),
            Err(Route::Leader(mut client, _)) => {
                return client.move_leader(mark_forwarded(r, &who)).await
            }
        }
        // The transfer takes about an election; answer once it shows here.
        let mut leader = self.raft.leader_watch();
        let moved = tokio::time::timeout(LEADER_WAIT, async {
            loop {
                if *leader.borrow_and_update() == Some(id) {
                    return true;
                }
                if leader.changed().await.is_err() {
                    return false;
                }
            }
        })
        .await;
        match moved {
            Ok(true) => Ok(Response::new(pb::MoveLeaderResponse { leader_id: id })),
            _ => Err(Status::unavailable(format!(
                "leadership did not move to member {id} in time (it may be behind or \
                 unreachable: see `berth cluster status`); try again"
            ))),
        }
    }

    async fn bootstrap(
        &self,
        req: Request<pb::BootstrapRequest>,
    ) -> Result<Response<pb::BootstrapResponse>, Status> {
        let stored = self.stored_join_tokens();
        let r = req.get_ref();
        let resp = crate::pki::answer_bootstrap(&self.pki, &stored, r)?;
        if r.role == pb::BootstrapRole::Node as i32 {
            self.check_node_name_claim(&r.name, &r.csr_pem)?;
            // Best effort: a join must not fail on bookkeeping during an election.
            if let Err(s) = self
                .record_certificate(
                    &berth_proto::certificates::node_record_name(&r.name),
                    &resp.certificate_pem,
                )
                .await
            {
                tracing::warn!(node = %r.name, error = %s.message(), "cannot record the node's certificate");
            }
        }
        Ok(Response::new(resp))
    }

    async fn join_token(
        &self,
        req: Request<pb::JoinTokenRequest>,
    ) -> Result<Response<pb::JoinTokenResponse>, Status> {
        let who = authenticate(&req)?;
        if who.identity != berth_tls::Identity::Admin {
            return Err(Status::permission_denied(format!(
                "{} may not read the join token: only the cluster admin may; run `berth token \
                 show` with the admin config `berth server --init` wrote (DATA/admin.yaml)",
                who.identity
            )));
        }
        use berth_proto::jointoken::TokenRole;
        let r = req.into_inner();
        let role = match r.role.as_str() {
            "" => TokenRole::Server,
            other => other.parse::<TokenRole>().map_err(invalid)?,
        };
        let local = match role {
            TokenRole::Server => Some(&self.pki.token),
            TokenRole::Agent => self.pki.agent_token.as_ref(),
        };
        let Some(local) = local else {
            return Err(Status::not_found(
                "this server has no agent token (DATA/pki/agent-token): the cluster was made \
                 before agent tokens, or this server joined before it had one; make one with \
                 `berth token rotate agent`",
            ));
        };
        let text = local.reveal();
        if let Some(h) = self.stored_join_tokens().get(role) {
            if !berth_proto::jointoken::matches(&text, h) {
                return Err(Status::failed_precondition(format!(
                    "the {0} token was rotated: the cluster keeps only its hash and this server's \
                     copy is the old one; the new token was printed once by `berth token rotate \
                     {0}`; run that again for a new one",
                    role.as_str()
                )));
            }
        }
        Ok(Response::new(pb::JoinTokenResponse { token: text }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forwarded_write_cut_on_the_wire_is_marked_outcome_unknown() {
        let cut: Result<Response<()>, Status> = Err(Status::unknown(
            "h2 protocol error: error reading a body from connection",
        ));
        let s = with_leader_hint(cut, "10.0.0.1:7440").expect_err("a broken forward is an error");
        assert_eq!(
            s.metadata()
                .get(crate::status::OUTCOME_METADATA)
                .and_then(|v| v.to_str().ok()),
            Some("unknown")
        );
        assert!(s.message().contains("10.0.0.1:7440"), "{}", s.message());
        // Answers and refused connections pass through unchanged.
        for s in [
            Status::unavailable("tcp connect error"),
            Status::not_found("pod \"a\" not found"),
            Status::unknown("some handler error"),
        ] {
            let code = s.code();
            let out =
                with_leader_hint::<()>(Err(s), "10.0.0.1:7440").expect_err("errors pass through");
            assert_eq!(out.code(), code);
            assert!(out
                .metadata()
                .get(crate::status::OUTCOME_METADATA)
                .is_none());
        }
    }
}
