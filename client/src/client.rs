//! [`Client`]: the typed gRPC client with failover across API servers.
//!
//! Every request goes through [`Client::call`]: pick the preferred server, send, and on a
//! retryable failure (not leader, connection refused, per-attempt timeout) move to the next
//! server, or straight to the leader a follower named in `berth-leader` metadata (a follower
//! also names it on a write it forwarded, so later writes skip that hop). After a full
//! round of failures it backs off exponentially, until the overall deadline; then it answers
//! [`ClientError::Unavailable`] naming each server tried and why it failed.
//!
//! Objects travel as the JSON of the serde types in `berth_proto::types`; the typed methods
//! (`get::<Deployment>`) and the dynamic ones (`get_dyn(Kind::Deployment, ..)`, for the CLI)
//! share the same byte-level calls.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_proto::pb::{self, api_client::ApiClient};
use berth_proto::{DynObject, Kind, Resource};
use futures::stream::{BoxStream, StreamExt};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

use crate::error::{
    from_status, is_timeout, leader_hint, retry_class, success_leader_hint, ClientError, Retry,
};

/// The default API address, used when nothing else is configured.
pub const DEFAULT_SERVER: &str = "127.0.0.1:7440";

/// The largest response the client decodes (a list of every object of a kind is one
/// message; the API server encodes without a limit).
const MAX_RESPONSE_BYTES: usize = 1 << 30;

/// Timeouts and backoff for [`Client`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// TCP connect timeout per server.
    pub connect_timeout: Duration,
    /// Per-attempt timeout for unary calls (and for a watch to start streaming).
    pub request_timeout: Duration,
    /// Overall time budget of one call across all servers and retries.
    pub deadline: Duration,
    /// First backoff after a full round of failures; doubles up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Give up before the deadline once this many consecutive rounds found every server
    /// refusing connections (nothing listening: a CLI should say so at once). None = keep
    /// retrying until the deadline (long-running components).
    pub max_refused_rounds: Option<u32>,
    /// Mutual TLS: the cluster CA to trust and the credential to present. Every Berth server
    /// requires it; None (plain text) reaches nothing but test servers without TLS.
    pub tls: Option<berth_tls::ClientTls>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout: Duration::from_secs(2),
            // Longer than the server's own wait for a leader (10 s), so that during an
            // election the server answers "unavailable, retry" before this fires.
            request_timeout: Duration::from_secs(12),
            deadline: Duration::from_secs(30),
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            max_refused_rounds: None,
            tls: None,
        }
    }
}

impl ClientConfig {
    /// The defaults, with mutual TLS.
    pub fn with_tls(tls: berth_tls::ClientTls) -> ClientConfig {
        ClientConfig {
            tls: Some(tls),
            ..ClientConfig::default()
        }
    }
}

/// Whether retrying a request that got no answer is safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Read,
    Write,
}

/// How an apply changed the stored object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Configured,
    Unchanged,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Outcome::Created => "created",
            Outcome::Configured => "configured",
            Outcome::Unchanged => "unchanged",
        })
    }
}

/// One change seen by a watch. `revision` is the store revision of the change (for a
/// bookmark: the revision the watch is caught up to); watch again from it after a disconnect.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchEvent<T> {
    pub revision: u64,
    pub change: Change<T>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Change<T> {
    Added(T),
    Modified(T),
    /// The object as it was just before deletion.
    Deleted(T),
    /// No change: the watch is caught up to `revision`.
    Bookmark,
}

/// One write in a [`Client::batch`].
#[derive(Debug, Clone)]
pub enum BatchOp {
    Create(DynObject),
    /// CAS on the object's resourceVersion (0 = unconditional).
    Update(DynObject),
    UpdateStatus(DynObject),
    Apply(DynObject),
    Delete {
        kind: Kind,
        namespace: String,
        name: String,
        /// Delete only if the object is still at this resourceVersion.
        precondition: Option<u64>,
    },
}

/// A stream of watch events; it ends after the first error (the caller re-watches from the
/// last revision it saw, which [`crate::watcher`] does).
pub type WatchStream<T> = BoxStream<'static, Result<WatchEvent<T>, ClientError>>;

struct Server {
    addr: String,
    endpoint: Endpoint,
    channel: Option<Channel>,
}

struct Servers {
    list: Vec<Server>,
    /// Index of the server to try first (the last one that answered, or the hinted leader).
    preferred: usize,
}

struct Inner {
    config: ClientConfig,
    servers: Mutex<Servers>,
}

/// A cheap-to-clone handle to the Berth API (all clones share connections and the
/// preferred-server state).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("servers", &self.servers())
            .finish()
    }
}

fn normalize_addr(addr: &str) -> String {
    let a = addr.trim();
    let a = a
        .strip_prefix("http://")
        .or_else(|| a.strip_prefix("https://"))
        .unwrap_or(a);
    a.trim_end_matches('/').to_string()
}

fn make_server(addr: &str, config: &ClientConfig) -> Result<Server, ClientError> {
    let addr = normalize_addr(addr);
    if addr.is_empty() || !addr.contains(':') {
        return Err(ClientError::Config(format!(
            "{addr:?}: expected HOST:PORT, e.g. {DEFAULT_SERVER}"
        )));
    }
    let endpoint = berth_tls::endpoint(&addr, config.tls.as_ref())
        .map_err(|e| ClientError::Config(format!("{addr:?}: {e}")))?
        .connect_timeout(config.connect_timeout)
        .timeout(config.request_timeout)
        .tcp_nodelay(true)
        // Detect a dead or partitioned server under an idle watch stream.
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    Ok(Server {
        addr,
        endpoint,
        channel: None,
    })
}

/// Did the attempt fail to connect at all (as opposed to a server answering "not leader")?
fn is_connect_error(status: &Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(err) = source {
        if err.downcast_ref::<tonic::ConnectError>().is_some() {
            return true;
        }
        source = err.source();
    }
    false
}

/// The innermost cause of a failed attempt, short enough for a one-line error message.
fn failure_reason(status: &Status) -> String {
    let mut last: Option<String> = None;
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(err) = source {
        last = Some(err.to_string());
        source = err.source();
    }
    let reason = last.unwrap_or_else(|| status.message().to_string());
    // "Connection refused (os error 111)" -> "connection refused"
    let reason = match reason.find(" (os error") {
        Some(i) => reason[..i].to_string(),
        None => reason,
    };
    let mut chars = reason.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => status.message().to_string(),
    }
}

impl Client {
    /// A client for these servers (HOST:PORT, optionally with an http:// prefix). No
    /// connection is made until the first request.
    pub fn new<S: AsRef<str>>(servers: &[S], config: ClientConfig) -> Result<Client, ClientError> {
        let list = servers
            .iter()
            .map(|s| make_server(s.as_ref(), &config))
            .collect::<Result<Vec<_>, _>>()?;
        if list.is_empty() {
            return Err(ClientError::Config("no servers given".to_string()));
        }
        Ok(Client {
            inner: Arc::new(Inner {
                config,
                servers: Mutex::new(Servers { list, preferred: 0 }),
            }),
        })
    }

    /// A client for one server with default timeouts.
    pub fn connect_to(server: &str) -> Result<Client, ClientError> {
        Client::new(&[server], ClientConfig::default())
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The known servers (configured ones plus leaders learned from hints).
    pub fn servers(&self) -> Vec<String> {
        self.lock().list.iter().map(|s| s.addr.clone()).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Servers> {
        // A poisoned lock only means another thread panicked mid-update of plain data.
        self.inner
            .servers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn pick(&self) -> (usize, String, Channel) {
        let mut s = self.lock();
        let i = s.preferred % s.list.len();
        let server = &mut s.list[i];
        let channel = server
            .channel
            .get_or_insert_with(|| server.endpoint.connect_lazy())
            .clone();
        (i, server.addr.clone(), channel)
    }

    /// Stop preferring server `i` (it failed); the next call tries the one after it.
    fn mark_failed(&self, i: usize) {
        let mut s = self.lock();
        if s.preferred == i {
            s.preferred = (i + 1) % s.list.len();
        }
    }

    /// Prefer the hinted leader, adding it if it is not a known server. Returns false if the
    /// hint is unusable or already the server that just failed.
    fn prefer_hint(&self, hint: &str, failed: usize) -> bool {
        let addr = normalize_addr(hint);
        let mut s = self.lock();
        if let Some(i) = s.list.iter().position(|x| x.addr == addr) {
            if i == failed {
                return false;
            }
            s.preferred = i;
            return true;
        }
        match make_server(&addr, &self.inner.config) {
            Ok(server) => {
                s.list.push(server);
                s.preferred = s.list.len() - 1;
                true
            }
            Err(_) => false,
        }
    }

    fn server_count(&self) -> usize {
        self.lock().list.len()
    }

    /// Run one RPC with failover; returns the reply and the index of the server that gave it.
    /// A write whose outcome is unknown (no answer in time) is not retried: it answers
    /// [`ClientError::Timeout`].
    async fn call_on<R, F, Fut>(&self, op: Op, f: F) -> Result<(R, usize), ClientError>
    where
        F: Fn(ApiClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, Status>>,
    {
        let config = &self.inner.config;
        let deadline = Instant::now() + config.deadline;
        let mut backoff = config.initial_backoff;
        // Last failure per server, in the order first tried, for the final error message.
        let mut failures: Vec<(String, String)> = Vec::new();
        let unavailable = |failures: &[(String, String)]| ClientError::Unavailable {
            tried: failures
                .iter()
                .map(|(a, r)| format!("{a}: {r}"))
                .collect::<Vec<_>>()
                .join("; "),
        };
        let mut refused_rounds = 0u32;
        loop {
            let round = self.server_count();
            let mut all_refused = true;
            for _ in 0..round {
                let (i, addr, channel) = self.pick();
                // A list of every pod of a large cluster is one response (10,000 pods are ~4.3
                // MB, past tonic's 4 MiB default): the answer of our own server is trusted.
                let api = ApiClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES);
                let result = tokio::time::timeout_at(deadline, f(api)).await;
                let status = match result {
                    Err(_elapsed) if op == Op::Write => {
                        return Err(ClientError::Timeout(format!(
                            "{addr} did not answer within {:?}; the write may or may not have \
                             been applied",
                            config.deadline
                        )));
                    }
                    Err(_elapsed) => {
                        record(&mut failures, &addr, "no answer before the deadline".into());
                        return Err(unavailable(&failures));
                    }
                    Ok(Ok(resp)) => {
                        // A follower forwarded this write and named the leader: send the
                        // next ones there directly (one hop fewer).
                        if op == Op::Write {
                            if let Some(hint) = success_leader_hint(resp.metadata()) {
                                self.prefer_hint(&hint, i);
                            }
                        }
                        return Ok((resp.into_inner(), i));
                    }
                    Ok(Err(status)) => status,
                };
                match (retry_class(&status), op) {
                    (Retry::Always, _)
                    | (Retry::IfIdempotent, Op::Read)
                    | (Retry::BrokenInFlight, Op::Read) => {}
                    (Retry::BrokenInFlight, Op::Write) => {
                        return Err(match from_status(&status) {
                            e @ ClientError::OutcomeUnknown(_) => e,
                            _ => ClientError::OutcomeUnknown(format!(
                                "{addr}: {}",
                                failure_reason(&status)
                            )),
                        });
                    }
                    (Retry::IfIdempotent, Op::Write) if is_timeout(&status) => {
                        return Err(ClientError::Timeout(format!(
                            "{addr} did not answer within {:?}; the write may or may not have \
                             been applied",
                            config.request_timeout
                        )));
                    }
                    _ => return Err(from_status(&status)),
                }
                tracing::debug!(server = %addr, error = %status, "request failed; trying another server");
                all_refused &= is_connect_error(&status);
                record(&mut failures, &addr, failure_reason(&status));
                match leader_hint(&status) {
                    Some(hint) if self.prefer_hint(&hint, i) => {}
                    _ => self.mark_failed(i),
                }
            }
            refused_rounds = if all_refused { refused_rounds + 1 } else { 0 };
            let gave_up = config
                .max_refused_rounds
                .is_some_and(|max| refused_rounds >= max);
            if gave_up || Instant::now() + backoff >= deadline {
                return Err(unavailable(&failures));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(config.max_backoff);
        }
    }

    async fn call<R, F, Fut>(&self, op: Op, f: F) -> Result<R, ClientError>
    where
        F: Fn(ApiClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, Status>>,
    {
        Ok(self.call_on(op, f).await?.0)
    }

    // ------------------------------------------------------------------------------------
    // Dynamic (any kind) API, used by the CLI and built on by the typed API.

    pub async fn get_dyn(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> Result<DynObject, ClientError> {
        let req = pb::GetRequest {
            key: Some(key(kind, namespace, name)),
        };
        let resp = self
            .call(Op::Read, |mut api| {
                let req = req.clone();
                async move { api.get(req).await }
            })
            .await?;
        decode_dyn(&resp.object)
    }

    /// List objects of `kind` in `namespace` (None = all namespaces) matching a label
    /// selector ("" = everything). Returns the objects and the revision to watch from.
    pub async fn list_dyn(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        label_selector: &str,
    ) -> Result<(Vec<DynObject>, u64), ClientError> {
        let req = pb::ListRequest {
            kind: kind.as_str().to_string(),
            namespace: namespace.unwrap_or("").to_string(),
            label_selector: label_selector.to_string(),
        };
        let resp = self
            .call(Op::Read, |mut api| {
                let req = req.clone();
                async move { api.list(req).await }
            })
            .await?;
        let objects = resp
            .objects
            .iter()
            .map(|b| decode_dyn(b))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((objects, resp.revision))
    }

    pub async fn create_dyn(
        &self,
        obj: &DynObject,
        dry_run: bool,
    ) -> Result<DynObject, ClientError> {
        let req = pb::CreateRequest {
            object: obj.to_json(),
            dry_run,
        };
        let resp = self
            .call(Op::Write, |mut api| {
                let req = req.clone();
                async move { api.create(req).await }
            })
            .await?;
        decode_dyn(&resp.object)
    }

    /// Replace the object; compare-and-swap on its metadata.resourceVersion (0 = blind).
    pub async fn update_dyn(
        &self,
        obj: &DynObject,
        dry_run: bool,
    ) -> Result<DynObject, ClientError> {
        let req = pb::UpdateRequest {
            object: obj.to_json(),
            dry_run,
        };
        let resp = self
            .call(Op::Write, |mut api| {
                let req = req.clone();
                async move { api.update(req).await }
            })
            .await?;
        decode_dyn(&resp.object)
    }

    /// Replace only the status; CAS on resourceVersion like [`Client::update_dyn`].
    pub async fn update_status_dyn(&self, obj: &DynObject) -> Result<DynObject, ClientError> {
        let req = pb::UpdateRequest {
            object: obj.to_json(),
            dry_run: false,
        };
        let resp = self
            .call(Op::Write, |mut api| {
                let req = req.clone();
                async move { api.update_status(req).await }
            })
            .await?;
        decode_dyn(&resp.object)
    }

    /// Create or update the user-owned part of an object (kubectl apply).
    pub async fn apply_dyn(
        &self,
        obj: &DynObject,
        dry_run: bool,
    ) -> Result<(DynObject, Outcome), ClientError> {
        let req = pb::ApplyRequest {
            object: obj.to_json(),
            dry_run,
        };
        let resp = self
            .call(Op::Write, |mut api| {
                let req = req.clone();
                async move { api.apply(req).await }
            })
            .await?;
        let outcome = match resp.outcome() {
            pb::ApplyOutcome::Created => Outcome::Created,
            pb::ApplyOutcome::Configured => Outcome::Configured,
            pb::ApplyOutcome::Unchanged => Outcome::Unchanged,
        };
        Ok((decode_dyn(&resp.object)?, outcome))
    }

    /// Delete an object, only if still at resourceVersion `precondition` when given.
    /// Returns the object as it was deleted.
    pub async fn delete(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        precondition: Option<u64>,
    ) -> Result<DynObject, ClientError> {
        self.delete_with_grace(kind, namespace, name, precondition, None)
            .await
    }

    /// [`Client::delete`] with a grace period for pods (Kubernetes' gracePeriodSeconds):
    /// None: the pod's own; 0: removed at once (a force delete) instead of marked terminating.
    pub async fn delete_with_grace(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        precondition: Option<u64>,
        grace_period_seconds: Option<i64>,
    ) -> Result<DynObject, ClientError> {
        let req = pb::DeleteRequest {
            key: Some(key(kind, namespace, name)),
            resource_version: precondition.unwrap_or(0),
            grace_period_seconds,
        };
        let resp = self
            .call(Op::Write, |mut api| {
                let req = req.clone();
                async move { api.delete(req).await }
            })
            .await?;
        decode_dyn(&resp.object)
    }

    /// Several writes in one raft entry, each applied independently: one result per op, in
    /// order (`Ok(None)` when the server returned no object).
    pub async fn batch(
        &self,
        ops: Vec<BatchOp>,
    ) -> Result<Vec<Result<Option<DynObject>, ClientError>>, ClientError> {
        let resp = self.send_batch(batch_request(ops, false, false)).await?;
        Ok(resp
            .results
            .into_iter()
            .map(|r| batch_result(r).map(|(o, _)| o))
            .collect())
    }

    /// Apply `objects` all or nothing, in ONE raft entry (`berth apply`): if the server rejects
    /// any of them (validation, authorization, conflict, node port taken...), none is stored
    /// and every object answers an error: its own, or [`ClientError::NotApplied`] for the
    /// ones that were fine. `Err` only when the request itself failed.
    pub async fn apply_all(
        &self,
        objects: &[DynObject],
        dry_run: bool,
    ) -> Result<Vec<Result<(DynObject, Outcome), ClientError>>, ClientError> {
        let ops = objects.iter().cloned().map(BatchOp::Apply).collect();
        let resp = self.send_batch(batch_request(ops, true, dry_run)).await?;
        if resp.results.len() != objects.len() {
            return Err(ClientError::Decode(format!(
                "the server answered {} results for {} objects",
                resp.results.len(),
                objects.len()
            )));
        }
        Ok(resp
            .results
            .into_iter()
            .map(|r| match batch_result(r)? {
                (Some(obj), Some(outcome)) => Ok((obj, outcome)),
                _ => Err(ClientError::Decode(
                    "the server answered an apply without the object or its outcome".into(),
                )),
            })
            .collect())
    }

    async fn send_batch(&self, req: pb::BatchRequest) -> Result<pb::BatchResponse, ClientError> {
        self.call(Op::Write, |mut api| {
            let req = req.clone();
            async move { api.batch(req).await }
        })
        .await
    }

    /// The cluster's server join token (admin only: other identities get PermissionDenied).
    pub async fn join_token(&self) -> Result<berth_tls::Secret, ClientError> {
        self.join_token_for("server").await
    }

    /// The cluster's `server` or `agent` join token, as the answering server keeps it (admin
    /// only; FailedPrecondition once it was rotated, NotFound where it has no agent token).
    pub async fn join_token_for(&self, role: &str) -> Result<berth_tls::Secret, ClientError> {
        let role = role.to_string();
        let resp = self
            .call(Op::Read, |mut api| {
                let role = role.clone();
                async move { api.join_token(pb::JoinTokenRequest { role }).await }
            })
            .await?;
        Ok(berth_tls::Secret::new(resp.token))
    }

    /// Watch changes of `kind` with revision > `from_revision`.
    pub async fn watch_dyn(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        label_selector: &str,
        from_revision: u64,
    ) -> Result<WatchStream<DynObject>, ClientError> {
        self.watch_with(kind, namespace, label_selector, from_revision, decode_dyn)
            .await
    }

    async fn watch_with<T: Send + 'static>(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        label_selector: &str,
        from_revision: u64,
        decode: fn(&[u8]) -> Result<T, ClientError>,
    ) -> Result<WatchStream<T>, ClientError> {
        let req = pb::WatchRequest {
            kind: kind.as_str().to_string(),
            namespace: namespace.unwrap_or("").to_string(),
            label_selector: label_selector.to_string(),
            from_revision,
        };
        let (streaming, server) = self
            .call_on(Op::Read, |mut api| {
                let req = req.clone();
                async move { api.watch(req).await }
            })
            .await?;
        let client = self.clone();
        let stream = streaming
            .map(move |item| match item {
                Ok(ev) => decode_event(&ev, decode),
                Err(status) => {
                    if retry_class(&status) == Retry::Always {
                        // The server went away under the stream: start elsewhere next time.
                        client.mark_failed(server);
                    }
                    Err(from_status(&status))
                }
            })
            // One error ends the stream; the caller resumes from its last revision.
            .scan(false, |failed, item| {
                let out = if *failed { None } else { Some(item) };
                if let Some(Err(_)) = &out {
                    *failed = true;
                }
                futures::future::ready(out)
            });
        Ok(stream.boxed())
    }

    /// The cluster as one (any) server sees it, with failover.
    pub async fn cluster_status(&self) -> Result<pb::ClusterStatusResponse, ClientError> {
        self.call(Op::Read, |mut api| async move {
            api.cluster_status(pb::ClusterStatusRequest {}).await
        })
        .await
    }

    /// A consistent snapshot of the store (admin only), as the server encodes it.
    pub async fn snapshot(&self) -> Result<Vec<u8>, ClientError> {
        let chunks = self
            .call(Op::Read, |mut api| async move {
                let mut s = api.snapshot(pb::SnapshotRequest {}).await?.into_inner();
                let mut out = Vec::new();
                while let Some(c) = s.message().await? {
                    out.extend_from_slice(&c.data);
                }
                Ok(tonic::Response::new(out))
            })
            .await?;
        Ok(chunks)
    }

    /// Remove raft member `id` (admin; the server refuses the last member).
    pub async fn remove_member(&self, id: u64) -> Result<(), ClientError> {
        self.call(Op::Write, |mut api| async move {
            api.remove_member(pb::RemoveMemberRequest { id }).await
        })
        .await
        .map(|_| ())
    }

    /// Hand raft leadership to member `id`; returns once it leads.
    pub async fn move_leader(&self, id: u64) -> Result<u64, ClientError> {
        self.call(Op::Write, |mut api| async move {
            api.move_leader(pb::MoveLeaderRequest { id }).await
        })
        .await
        .map(|r| r.leader_id)
    }

    /// Ask one specific server for its view (no failover), e.g. for per-member health.
    pub async fn cluster_status_of(
        &self,
        server: &str,
    ) -> Result<pb::ClusterStatusResponse, ClientError> {
        let single = Client::new(
            &[server],
            ClientConfig {
                deadline: self.inner.config.connect_timeout + Duration::from_secs(1),
                ..self.inner.config.clone()
            },
        )?;
        single.cluster_status().await
    }

    // ------------------------------------------------------------------------------------
    // Typed API.

    pub async fn get<T: Resource>(&self, namespace: &str, name: &str) -> Result<T, ClientError> {
        to_typed(&self.get_dyn(T::KIND, namespace, name).await?)
    }

    /// List `T` in `namespace` (None = all) matching `label_selector` ("" = all); returns
    /// the objects and the revision to watch from.
    pub async fn list<T: Resource>(
        &self,
        namespace: Option<&str>,
        label_selector: &str,
    ) -> Result<(Vec<T>, u64), ClientError> {
        let (objs, rev) = self.list_dyn(T::KIND, namespace, label_selector).await?;
        let typed = objs.iter().map(to_typed).collect::<Result<Vec<T>, _>>()?;
        Ok((typed, rev))
    }

    pub async fn create<T: Resource>(&self, obj: &T) -> Result<T, ClientError> {
        to_typed(&self.create_dyn(&DynObject::from_typed(obj), false).await?)
    }

    /// Replace `obj`; CAS on its metadata.resourceVersion (0 = unconditional).
    pub async fn update<T: Resource>(&self, obj: &T) -> Result<T, ClientError> {
        to_typed(&self.update_dyn(&DynObject::from_typed(obj), false).await?)
    }

    /// Replace `obj`'s status; CAS on its metadata.resourceVersion.
    pub async fn update_status<T: Resource>(&self, obj: &T) -> Result<T, ClientError> {
        to_typed(&self.update_status_dyn(&DynObject::from_typed(obj)).await?)
    }

    pub async fn apply<T: Resource>(&self, obj: &T) -> Result<(T, Outcome), ClientError> {
        let (o, outcome) = self.apply_dyn(&DynObject::from_typed(obj), false).await?;
        Ok((to_typed(&o)?, outcome))
    }

    /// Watch `T` from `from_revision` (exclusive).
    pub async fn watch<T: Resource>(
        &self,
        namespace: Option<&str>,
        label_selector: &str,
        from_revision: u64,
    ) -> Result<WatchStream<T>, ClientError> {
        self.watch_with(
            T::KIND,
            namespace,
            label_selector,
            from_revision,
            decode_typed::<T>,
        )
        .await
    }
}

fn record(failures: &mut Vec<(String, String)>, addr: &str, reason: String) {
    match failures.iter_mut().find(|(a, _)| a == addr) {
        Some(f) => f.1 = reason,
        None => failures.push((addr.to_string(), reason)),
    }
}

fn key(kind: Kind, namespace: &str, name: &str) -> pb::ObjectKey {
    pb::ObjectKey {
        kind: kind.as_str().to_string(),
        namespace: if kind.namespaced() {
            namespace.to_string()
        } else {
            String::new()
        },
        name: name.to_string(),
    }
}

/// The request for a [`Client::batch`] or [`Client::apply_all`].
fn batch_request(ops: Vec<BatchOp>, atomic: bool, dry_run: bool) -> pb::BatchRequest {
    use pb::batch_op::Op as PbOp;
    let ops = ops
        .into_iter()
        .map(|op| pb::BatchOp {
            op: Some(match op {
                BatchOp::Create(o) => PbOp::Create(pb::CreateRequest {
                    object: o.to_json(),
                    dry_run: false,
                }),
                BatchOp::Update(o) => PbOp::Update(pb::UpdateRequest {
                    object: o.to_json(),
                    dry_run: false,
                }),
                BatchOp::UpdateStatus(o) => PbOp::UpdateStatus(pb::UpdateRequest {
                    object: o.to_json(),
                    dry_run: false,
                }),
                BatchOp::Apply(o) => PbOp::Apply(pb::ApplyRequest {
                    object: o.to_json(),
                    dry_run: false,
                }),
                BatchOp::Delete {
                    kind,
                    namespace,
                    name,
                    precondition,
                } => PbOp::Delete(pb::DeleteRequest {
                    key: Some(key(kind, &namespace, &name)),
                    resource_version: precondition.unwrap_or(0),
                    grace_period_seconds: None,
                }),
            }),
        })
        .collect();
    pb::BatchRequest {
        ops,
        atomic,
        dry_run,
    }
}

/// One op's answer in a batch: the object (None when the server returned none) and, for
/// an apply, what it did.
fn batch_result(r: pb::BatchResult) -> Result<(Option<DynObject>, Option<Outcome>), ClientError> {
    if r.code != 0 {
        if r.rolled_back {
            return Err(ClientError::NotApplied(r.message));
        }
        let status = Status::new(tonic::Code::from_i32(r.code), r.message);
        return Err(from_status(&status));
    }
    let outcome = r.outcome.map(|o| match pb::ApplyOutcome::try_from(o) {
        Ok(pb::ApplyOutcome::Configured) => Outcome::Configured,
        Ok(pb::ApplyOutcome::Unchanged) => Outcome::Unchanged,
        _ => Outcome::Created,
    });
    let object = if r.object.is_empty() {
        None
    } else {
        Some(decode_dyn(&r.object)?)
    };
    Ok((object, outcome))
}

fn decode_dyn(bytes: &[u8]) -> Result<DynObject, ClientError> {
    DynObject::from_json(bytes).map_err(|e| ClientError::Decode(e.to_string()))
}

fn decode_typed<T: Resource>(bytes: &[u8]) -> Result<T, ClientError> {
    T::from_json(bytes).map_err(|e| ClientError::Decode(format!("{}: {e}", T::KIND)))
}

fn to_typed<T: Resource>(obj: &DynObject) -> Result<T, ClientError> {
    obj.to_typed()
        .map_err(|e| ClientError::Decode(format!("{}: {e}", T::KIND)))
}

fn decode_event<T>(
    ev: &pb::WatchEvent,
    decode: fn(&[u8]) -> Result<T, ClientError>,
) -> Result<WatchEvent<T>, ClientError> {
    let change = match ev.r#type() {
        pb::EventType::Bookmark => Change::Bookmark,
        pb::EventType::Added => Change::Added(decode(&ev.object)?),
        pb::EventType::Modified => Change::Modified(decode(&ev.object)?),
        pb::EventType::Deleted => Change::Deleted(decode(&ev.object)?),
    };
    Ok(WatchEvent {
        revision: ev.revision,
        change,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_normalized_and_validated() {
        let c = Client::new(
            &["http://127.0.0.1:7440/", " 10.0.0.2:7440"],
            ClientConfig::default(),
        )
        .expect("valid");
        assert_eq!(c.servers(), vec!["127.0.0.1:7440", "10.0.0.2:7440"]);
        assert!(matches!(
            Client::new(&["localhost"], ClientConfig::default()),
            Err(ClientError::Config(_))
        ));
        assert!(matches!(
            Client::new::<&str>(&[], ClientConfig::default()),
            Err(ClientError::Config(_))
        ));
    }

    #[tokio::test]
    async fn unreachable_servers_give_unavailable_naming_each_server() {
        // Bind then drop listeners so the ports are (almost certainly) closed.
        let mut addrs = Vec::new();
        for _ in 0..2 {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            addrs.push(l.local_addr().expect("addr").to_string());
        }
        let c = Client::new(
            &addrs,
            ClientConfig {
                deadline: Duration::from_millis(500),
                ..ClientConfig::default()
            },
        )
        .expect("client");
        let err = c
            .get_dyn(Kind::Pod, "default", "x")
            .await
            .expect_err("nothing listens");
        match &err {
            ClientError::Unavailable { tried } => {
                for a in &addrs {
                    assert!(tried.contains(a.as_str()), "{tried}");
                }
                assert!(tried.contains("refused"), "{tried}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Listeners that accept connections and never answer.
    async fn black_holes(n: usize) -> (Vec<String>, Vec<tokio::task::JoinHandle<()>>) {
        let mut addrs = Vec::new();
        let mut tasks = Vec::new();
        for _ in 0..n {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            addrs.push(l.local_addr().expect("addr").to_string());
            tasks.push(tokio::spawn(async move {
                let mut held = Vec::new();
                while let Ok((sock, _)) = l.accept().await {
                    held.push(sock);
                }
            }));
        }
        (addrs, tasks)
    }

    #[tokio::test]
    async fn an_unanswered_write_is_not_retried_but_a_read_fails_over() {
        let (addrs, tasks) = black_holes(2).await;
        let c = Client::new(
            &addrs,
            ClientConfig {
                request_timeout: Duration::from_millis(300),
                deadline: Duration::from_secs(2),
                ..ClientConfig::default()
            },
        )
        .expect("client");
        let start = std::time::Instant::now();
        let obj = DynObject::from_typed(&berth_proto::types::Pod::default());
        let err = c.create_dyn(&obj, false).await.expect_err("no answer");
        assert!(matches!(err, ClientError::Timeout(_)), "{err:?}");
        assert!(
            err.to_string().contains("may or may not have been applied"),
            "{err}"
        );
        // Only the first server was tried.
        assert!(
            start.elapsed() < Duration::from_millis(1500),
            "{:?}",
            start.elapsed()
        );
        let err = c
            .get_dyn(Kind::Pod, "default", "x")
            .await
            .expect_err("no answer");
        match err {
            ClientError::Unavailable { tried } => {
                for a in &addrs {
                    assert!(tried.contains(a.as_str()), "{tried}");
                }
            }
            other => panic!("unexpected {other:?}"),
        }
        for t in tasks {
            t.abort();
        }
    }

    #[tokio::test]
    async fn refused_connections_fail_fast_when_configured() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        drop(l);
        let c = Client::new(
            &[addr],
            ClientConfig {
                deadline: Duration::from_secs(30),
                max_refused_rounds: Some(3),
                ..ClientConfig::default()
            },
        )
        .expect("client");
        let start = std::time::Instant::now();
        let err = c.list_dyn(Kind::Pod, None, "").await.expect_err("refused");
        assert!(matches!(err, ClientError::Unavailable { .. }), "{err:?}");
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn leader_hint_adds_unknown_server_and_prefers_it() {
        let c = Client::connect_to("127.0.0.1:1").expect("client");
        assert!(c.prefer_hint("127.0.0.1:2", 0));
        assert_eq!(c.servers(), vec!["127.0.0.1:1", "127.0.0.1:2"]);
        assert_eq!(c.lock().preferred, 1);
        // A hint naming the server that just failed is ignored.
        assert!(!c.prefer_hint("127.0.0.1:2", 1));
    }
}
