//! The agent's logs API: an HTTP/1.1 server on hyper (`--listen`) and its client, [`fetch`].
//!
//! `GET /containerLogs/{namespace}/{pod}[/{container}]?tail=N&follow=true&previous=true`
//! answers `200` with the raw log bytes (streamed, chunked, until the container exits when
//! following or the agent shuts down), or an error status with a one-line explanation.
//! The container is found by its labels in the runtime (pod uid from the pod cache when the
//! pod still exists); `previous` is the attempt before the newest. The CLI's `berth logs POD`
//! looks up the pod's node, reads `status.agentEndpoint`, and calls [`fetch`].
//!
//! `GET /metrics` on the same server answers the agent's Prometheus metrics
//! ([`crate::metrics::AgentMetrics`]) when the server was given them
//! ([`LogServer::with_metrics`]).
//!
//! `GET /exec/{namespace}/{pod}/{container}?command=...` (a WebSocket upgrade) runs a command
//! in the container: see [`crate::exec`].
//!
//! Security ([`LogServer::with_tls`], which `berth agent` always sets): a connection whose
//! first byte is a TLS handshake is served over mutual TLS with the node's certificate, and
//! logs are given only to `admin` and `system:server` client certificates of the cluster CA
//! (403 for others, such as other nodes). Plain-text connections get `/metrics` only, like
//! the servers' `--metrics-listen`; a plain-text logs request is refused with 403.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use berth_metrics::http::{
    is_metrics_path, metrics_response, serve_connections, serve_http1, text_response, Body,
};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls as rustls_config;
use tokio_util::sync::CancellationToken;

use crate::api::PodCache;
use crate::runtime::{ContainerInfo, LogOptions, Runtime, RuntimeError};

#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    #[error("cannot reach the agent's logs API at {endpoint}: {source}")]
    Connect {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("reading logs from {endpoint}: {source}")]
    Io {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{message}")]
    Server { status: u16, message: String },
    #[error("malformed reply from the agent at {endpoint}: {reason}")]
    Protocol { endpoint: String, reason: String },
    #[error("cannot listen for the logs API on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// What a logs request asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogRequest {
    pub namespace: String,
    pub pod: String,
    /// Empty: the pod's only container.
    pub container: String,
    pub follow: bool,
    pub tail: Option<usize>,
    pub previous: bool,
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
}

/// Parse a request target like `/containerLogs/default/web-1/app?tail=10&follow=true`.
pub fn parse_target(target: &str) -> Result<LogRequest, String> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (ns, pod, container) = match parts.as_slice() {
        ["containerLogs", ns, pod] => (*ns, *pod, ""),
        ["containerLogs", ns, pod, c] => (*ns, *pod, *c),
        _ => {
            return Err(format!(
                "unknown path {path:?}: use /containerLogs/NAMESPACE/POD[/CONTAINER]"
            ))
        }
    };
    if !valid_name(ns) || !valid_name(pod) || !(container.is_empty() || valid_name(container)) {
        return Err(format!("invalid names in {path:?}"));
    }
    let mut req = LogRequest {
        namespace: ns.to_string(),
        pod: pod.to_string(),
        container: container.to_string(),
        ..Default::default()
    };
    for kv in query.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, "true"));
        match k {
            "follow" => req.follow = v == "true" || v == "1",
            "previous" => req.previous = v == "true" || v == "1",
            "tail" => {
                req.tail = Some(
                    v.parse()
                        .map_err(|_| format!("tail={v:?} is not a number of lines"))?,
                )
            }
            _ => {
                return Err(format!(
                    "unknown parameter {k:?}: use tail, follow, previous"
                ))
            }
        }
    }
    Ok(req)
}

/// Pick the runtime container a request means (pure).
pub fn select_container<'a>(
    all: &'a [ContainerInfo],
    req: &LogRequest,
    pod_uid: Option<&str>,
) -> Result<&'a ContainerInfo, (u16, String)> {
    let mut mine: Vec<&ContainerInfo> = all
        .iter()
        .filter(|c| match pod_uid {
            Some(uid) => c.pod_uid == uid,
            None => c.pod_namespace == req.namespace && c.pod_name == req.pod,
        })
        .collect();
    if mine.is_empty() {
        return Err((
            404,
            format!(
                "pod {}/{} has no containers on this node",
                req.namespace, req.pod
            ),
        ));
    }
    let container = if req.container.is_empty() {
        let mut names: Vec<&str> = mine.iter().map(|c| c.container_name.as_str()).collect();
        names.sort();
        names.dedup();
        if names.len() > 1 {
            return Err((
                400,
                format!(
                    "pod {}/{} has several containers ({}): choose one with -c",
                    req.namespace,
                    req.pod,
                    names.join(", ")
                ),
            ));
        }
        names[0].to_string()
    } else {
        req.container.clone()
    };
    mine.retain(|c| c.container_name == container);
    mine.sort_by_key(|c| std::cmp::Reverse(c.attempt));
    let pick = if req.previous {
        mine.get(1)
    } else {
        mine.first()
    };
    pick.copied().ok_or_else(|| {
        if req.previous {
            (
                404,
                format!(
                    "previous terminated container {container:?} in pod {}/{} not found",
                    req.namespace, req.pod
                ),
            )
        } else {
            (
                404,
                format!(
                    "container {container:?} not found in pod {}/{}",
                    req.namespace, req.pod
                ),
            )
        }
    })
}

/// The logs server.
pub struct LogServer {
    listener: TcpListener,
    runtime: Arc<dyn Runtime>,
    pods: PodCache,
    metrics: Option<crate::metrics::AgentMetrics>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// A connection the logs API serves: plain TCP or TLS.
trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}

/// What a connection may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Logs and metrics (an admin certificate, or no TLS configured at all).
    Full,
    /// Logs, metrics and port forwarding (an API server's certificate).
    Server,
    /// Metrics only; logs answer 403 with this reason.
    MetricsOnly(&'static str),
}

impl LogServer {
    pub async fn bind(
        addr: &str,
        runtime: Arc<dyn Runtime>,
        pods: PodCache,
    ) -> Result<LogServer, LogsError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| LogsError::Listen {
                addr: addr.to_string(),
                source,
            })?;
        Ok(LogServer {
            listener,
            runtime,
            pods,
            metrics: None,
            tls: None,
        })
    }

    /// Serve logs over mutual TLS only (see the module docs).
    pub fn with_tls(mut self, config: Arc<rustls_config::ServerConfig>) -> LogServer {
        self.tls = Some(tokio_rustls::TlsAcceptor::from(config));
        self
    }

    /// Also serve `GET /metrics`.
    pub fn with_metrics(mut self, metrics: crate::metrics::AgentMetrics) -> LogServer {
        self.metrics = Some(metrics);
        self
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    pub async fn run(self, shutdown: CancellationToken) {
        serve_connections(&self.listener, &shutdown, "logs API", |sock| {
            let (runtime, pods, metrics, tls, shutdown) = (
                self.runtime.clone(),
                self.pods.clone(),
                self.metrics.clone(),
                self.tls.clone(),
                shutdown.clone(),
            );
            // Port-forward streams are interactive: no Nagle delay on small writes.
            let _ = sock.set_nodelay(true);
            async move {
                let Some(acceptor) = tls else {
                    return serve(sock, Access::Full, runtime, pods, metrics, shutdown).await;
                };
                let mut first = [0u8; 1];
                let n = match tokio::time::timeout(Duration::from_secs(10), sock.peek(&mut first))
                    .await
                {
                    Ok(r) => r?,
                    Err(_) => return Ok(()),
                };
                // 0x16: a TLS handshake record.
                if n == 0 || first[0] != 0x16 {
                    let access = Access::MetricsOnly(
                        "the logs API requires mutual TLS with an admin certificate of the \
                         cluster CA: use `berth logs`",
                    );
                    return serve(sock, access, runtime, pods, metrics, shutdown).await;
                }
                let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(sock))
                    .await
                {
                    Ok(r) => r?,
                    Err(_) => return Ok(()),
                };
                let who = berth_tls::identity_of_peer(tls.get_ref().1.peer_certificates());
                let access = match who {
                    Some(berth_tls::Identity::Server) => Access::Server,
                    Some(berth_tls::Identity::Admin) => Access::Full,
                    _ => Access::MetricsOnly(
                        "only admin and server certificates may read logs from this node",
                    ),
                };
                serve(tls, access, runtime, pods, metrics, shutdown).await
            }
        })
        .await;
    }
}

/// What one connection serves: its access, and what requests are answered from.
#[derive(Clone)]
struct Handler {
    access: Access,
    runtime: Arc<dyn Runtime>,
    pods: PodCache,
    metrics: Option<crate::metrics::AgentMetrics>,
    shutdown: CancellationToken,
}

/// Serve HTTP/1.1 on one (plain or TLS) connection.
async fn serve<S: Conn + 'static>(
    sock: S,
    access: Access,
    runtime: Arc<dyn Runtime>,
    pods: PodCache,
    metrics: Option<crate::metrics::AgentMetrics>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let handler = Handler {
        access,
        runtime,
        pods,
        metrics,
        shutdown: shutdown.clone(),
    };
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let handler = handler.clone();
        async move { Ok::<_, Infallible>(handler.respond(req).await) }
    });
    serve_http1(sock, service, shutdown)
        .await
        .map_err(std::io::Error::other)
}

impl Handler {
    async fn respond(&self, req: Request<Incoming>) -> Response<Body> {
        if let Some(m) = &self.metrics {
            if is_metrics_path(&req) {
                let text = match *req.method() {
                    Method::GET | Method::HEAD => m.render().await,
                    _ => String::new(),
                };
                return metrics_response(req.method(), move || text);
            }
        }
        if let Access::MetricsOnly(why) = self.access {
            return text_response(StatusCode::FORBIDDEN, why);
        }
        if crate::portforward::is_portforward_path(&req) {
            if self.access != Access::Server {
                return text_response(
                    StatusCode::FORBIDDEN,
                    "port forwarding is relayed by the API servers only: use `kubectl \
                     port-forward` or `berth port-forward`",
                );
            }
            return crate::portforward::respond(req, &self.pods, self.shutdown.clone()).await;
        }
        if req.method() != Method::GET {
            return text_response(StatusCode::METHOD_NOT_ALLOWED, "only GET is supported");
        }
        if req.uri().path().starts_with("/exec/") {
            let (runtime, pods) = (self.runtime.clone(), self.pods.clone());
            return crate::exec::respond(req, runtime, pods, self.shutdown.clone()).await;
        }
        let target = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let lreq = match parse_target(target) {
            Ok(r) => r,
            Err(msg) => return text_response(StatusCode::BAD_REQUEST, &msg),
        };
        let all = match self.runtime.list().await {
            Ok(a) => a,
            Err(e) => return text_response(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        };
        let uid = self
            .pods
            .find(&lreq.namespace, &lreq.pod)
            .map(|p| p.metadata.uid);
        let c = match select_container(&all, &lreq, uid.as_deref()) {
            Ok(c) => c.clone(),
            Err((status, msg)) => {
                let status =
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                return text_response(status, &msg);
            }
        };
        let opts = LogOptions {
            tail: lreq.tail,
            follow: lreq.follow && !lreq.previous,
        };
        let stream = match self.runtime.logs(&c.id, opts).await {
            Ok(s) => s,
            Err(RuntimeError::NotFound { .. }) => {
                return text_response(StatusCode::NOT_FOUND, "container was removed")
            }
            Err(e) => return text_response(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        };
        // The body ends with the log, at shutdown, or at the first read error (logged: the
        // status line is already sent).
        let frames = stream
            .take_until(self.shutdown.clone().cancelled_owned())
            .scan((), |_, next| {
                futures::future::ready(match next {
                    Ok(b) => Some(Ok::<_, Infallible>(Frame::data(b))),
                    Err(e) => {
                        tracing::debug!(error = %e, "log stream");
                        None
                    }
                })
            });
        let mut resp = Response::new(StreamBody::new(frames).boxed_unsync());
        resp.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp
    }
}

pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, LogsError>> + Send>>;

/// Read logs from an agent (`endpoint` = its Node's `status.agentEndpoint`, host:port). An
/// empty `req.container` means the pod's only container. The stream ends when the log ends
/// (or, with `follow`, when the container exits). With `tls` (what `berth agent` serves) the
/// connection is mutual TLS and the agent's certificate must name the endpoint's host.
pub async fn fetch(
    endpoint: &str,
    req: &LogRequest,
    tls: Option<&berth_tls::ClientTls>,
) -> Result<ByteStream, LogsError> {
    let ep = endpoint.to_string();
    let connect_err = |source| LogsError::Connect {
        endpoint: ep.clone(),
        source,
    };
    let tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(endpoint))
        .await
        .map_err(|_| {
            connect_err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connect timed out after 5s",
            ))
        })?
        .map_err(connect_err)?;
    let sock: Box<dyn Conn> = match tls {
        None => Box::new(tcp),
        Some(tls) => {
            let invalid =
                |m: String| connect_err(std::io::Error::new(std::io::ErrorKind::InvalidInput, m));
            let config = berth_tls::mtls_client_config(tls).map_err(|e| invalid(e.to_string()))?;
            let name = berth_tls::server_name(endpoint).map_err(|e| invalid(e.to_string()))?;
            let stream = tokio::time::timeout(
                Duration::from_secs(5),
                tokio_rustls::TlsConnector::from(config).connect(name, tcp),
            )
            .await
            .map_err(|_| {
                connect_err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "TLS handshake timed out after 5s",
                ))
            })?
            .map_err(connect_err)?;
            Box::new(stream)
        }
    };
    let mut path = format!("/containerLogs/{}/{}", req.namespace, req.pod);
    if !req.container.is_empty() {
        path.push('/');
        path.push_str(&req.container);
    }
    let mut q = Vec::new();
    if req.follow {
        q.push("follow=true".to_string());
    }
    if req.previous {
        q.push("previous=true".to_string());
    }
    if let Some(t) = req.tail {
        q.push(format!("tail={t}"));
    }
    if !q.is_empty() {
        path.push('?');
        path.push_str(&q.join("&"));
    }
    let protocol = |reason: String| LogsError::Protocol {
        endpoint: ep.clone(),
        reason,
    };
    let resp = berth_metrics::http::get(sock, endpoint, &path)
        .await
        .map_err(protocol)?;
    let status = resp.status();
    if status != StatusCode::OK {
        // The explanation is one line; cap what an odd server could send.
        let body = http_body_util::Limited::new(resp.into_body(), 64 * 1024).collect();
        let message = match tokio::time::timeout(Duration::from_secs(5), body).await {
            Ok(Ok(b)) => String::from_utf8_lossy(&b.to_bytes()).trim().to_string(),
            _ => status.to_string(),
        };
        return Err(LogsError::Server {
            status: status.as_u16(),
            message,
        });
    }
    let body = resp.into_body().into_data_stream().map(move |chunk| {
        chunk.map_err(|e| LogsError::Io {
            endpoint: ep.clone(),
            source: std::io::Error::other(e),
        })
    });
    Ok(Box::pin(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::RunState;

    fn info(pod: &str, c: &str, attempt: u32) -> ContainerInfo {
        ContainerInfo {
            id: format!("{pod}-{c}-{attempt}"),
            pod_uid: format!("uid-{pod}"),
            pod_namespace: "default".into(),
            pod_name: pod.into(),
            container_name: c.into(),
            attempt,
            image: String::new(),
            ports: vec![],
            grace_seconds: None,
            state: RunState::Created,
            runtime: "fake",
        }
    }

    #[test]
    fn targets_parse_with_options_and_reject_junk() {
        let r = parse_target("/containerLogs/default/web/app?tail=5&follow=true&previous=1")
            .expect("ok");
        assert_eq!(
            r,
            LogRequest {
                namespace: "default".into(),
                pod: "web".into(),
                container: "app".into(),
                follow: true,
                tail: Some(5),
                previous: true
            }
        );
        assert_eq!(
            parse_target("/containerLogs/ns/p").expect("ok").container,
            ""
        );
        assert!(parse_target("/other").is_err());
        assert!(parse_target("/containerLogs/ns/p?tail=x").is_err());
        assert!(parse_target("/containerLogs/ns/p%20x").is_err());
    }

    #[test]
    fn selection_picks_newest_or_previous_attempt_and_explains_ambiguity() {
        let all = vec![
            info("web", "app", 0),
            info("web", "app", 1),
            info("web", "side", 0),
            info("db", "db", 0),
        ];
        let mut req = LogRequest {
            namespace: "default".into(),
            pod: "web".into(),
            container: "app".into(),
            ..Default::default()
        };
        assert_eq!(select_container(&all, &req, None).expect("ok").attempt, 1);
        req.previous = true;
        assert_eq!(
            select_container(&all, &req, Some("uid-web"))
                .expect("ok")
                .attempt,
            0
        );
        req.container = "side".into();
        assert_eq!(select_container(&all, &req, None).expect_err("none").0, 404);
        req.container.clear();
        req.previous = false;
        let (code, msg) = select_container(&all, &req, None).expect_err("ambiguous");
        assert_eq!(code, 400);
        assert!(msg.contains("app, side"), "{msg}");
        let db = LogRequest {
            namespace: "default".into(),
            pod: "db".into(),
            ..Default::default()
        };
        assert_eq!(
            select_container(&all, &db, None)
                .expect("only one")
                .container_name,
            "db"
        );
        let ghost = LogRequest {
            namespace: "default".into(),
            pod: "ghost".into(),
            ..Default::default()
        };
        assert_eq!(
            select_container(&all, &ghost, None).expect_err("no pod").0,
            404
        );
    }

    /// Serves `rt`'s logs like `berth agent` does: mutual TLS with a certificate for
    /// 127.0.0.1 from a fresh CA. Returns the CA, the address, the stop token and the task.
    async fn serve_over_mtls(
        rt: crate::runtime::fake::FakeRuntime,
    ) -> (
        berth_tls::ClusterCa,
        String,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    ) {
        let ca = berth_tls::ClusterCa::generate().expect("ca");
        let serving = ca.issue_server(&["127.0.0.1".into()]).expect("cert");
        let server = LogServer::bind("127.0.0.1:0", Arc::new(rt), PodCache::new())
            .await
            .expect("bind")
            .with_tls(berth_tls::mtls_server_config(ca.cert_pem(), &serving).expect("tls"));
        let addr = server.local_addr().expect("addr").to_string();
        let stop = CancellationToken::new();
        let task = tokio::spawn(server.run(stop.clone()));
        (ca, addr, stop, task)
    }

    #[tokio::test]
    async fn following_streams_chunks_as_they_come_and_agent_shutdown_ends_the_stream() {
        use crate::runtime::fake::FakeRuntime;
        use crate::runtime::{ContainerSpec, Runtime};
        let rt = FakeRuntime::new();
        rt.create(&ContainerSpec {
            pod_uid: "u1".into(),
            pod_namespace: "default".into(),
            pod_name: "web".into(),
            container_name: "app".into(),
            ..Default::default()
        })
        .await
        .expect("create");
        let (ca, addr, stop, task) = serve_over_mtls(rt).await;
        let admin = berth_tls::ClientTls::new(
            ca.cert_pem(),
            ca.issue_client(&berth_tls::Identity::Admin)
                .expect("client"),
        );
        let req = LogRequest {
            namespace: "default".into(),
            pod: "web".into(),
            follow: true,
            ..Default::default()
        };
        let mut logs = fetch(&addr, &req, Some(&admin)).await.expect("fetch");
        // The container's log never ends on its own: the first chunk arriving proves the
        // body is streamed, not buffered until the end.
        let first = tokio::time::timeout(Duration::from_secs(10), logs.next())
            .await
            .expect("first chunk within 10 s")
            .expect("a chunk")
            .expect("not an error");
        assert_eq!(first, Bytes::from_static(b"log of app attempt 0\n"));
        // Shutting the agent down ends the follow cleanly, and the server drains.
        stop.cancel();
        let end = tokio::time::timeout(Duration::from_secs(10), logs.next())
            .await
            .expect("the stream ends within 10 s of shutdown");
        assert!(end.is_none(), "a clean end, got {end:?}");
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("server drained")
            .expect("join");
    }

    #[tokio::test]
    async fn fetch_streams_logs_from_the_server_and_reports_errors() {
        use crate::runtime::fake::FakeRuntime;
        use crate::runtime::{ContainerSpec, Runtime};
        let rt = FakeRuntime::new();
        let spec = ContainerSpec {
            pod_uid: "u1".into(),
            pod_namespace: "default".into(),
            pod_name: "web".into(),
            container_name: "app".into(),
            ..Default::default()
        };
        rt.create(&spec).await.expect("create");
        rt.create(&ContainerSpec {
            attempt: 1,
            ..spec.clone()
        })
        .await
        .expect("create");
        let (ca, addr, stop, task) = serve_over_mtls(rt).await;
        let collect = |s: ByteStream| async move {
            let parts: Vec<_> = s.collect().await;
            let mut out = Vec::new();
            for p in parts {
                out.extend_from_slice(&p.expect("chunk"));
            }
            String::from_utf8_lossy(&out).to_string()
        };
        let as_id = |id: berth_tls::Identity| {
            berth_tls::ClientTls::new(ca.cert_pem(), ca.issue_client(&id).expect("client"))
        };
        let admin = as_id(berth_tls::Identity::Admin);
        let req = |pod: &str, container: &str, tail: Option<usize>, previous: bool| LogRequest {
            namespace: "default".into(),
            pod: pod.into(),
            container: container.into(),
            follow: false,
            tail,
            previous,
        };
        let cur = fetch(&addr, &req("web", "", None, false), Some(&admin))
            .await
            .expect("fetch");
        assert_eq!(collect(cur).await, "log of app attempt 1\n");
        let prev = fetch(&addr, &req("web", "app", Some(10), true), Some(&admin))
            .await
            .expect("fetch");
        assert_eq!(collect(prev).await, "log of app attempt 0\n");
        match fetch(&addr, &req("nope", "", None, false), Some(&admin)).await {
            Err(LogsError::Server {
                status: 404,
                message,
            }) => assert!(message.contains("default/nope"), "{message}"),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("expected an error"),
        }
        // Another node's certificate, and plain text: refused with the reason.
        let other = as_id(berth_tls::Identity::Node("n2".into()));
        for tls in [Some(&other), None] {
            match fetch(&addr, &req("web", "", None, false), tls).await {
                Err(LogsError::Server {
                    status: 403,
                    message,
                }) => {
                    assert!(message.contains("logs"), "{message}")
                }
                Err(e) => panic!("unexpected error {e}"),
                Ok(_) => panic!("logs were served to {tls:?}"),
            }
        }
        // A client of another CA does not get through the handshake.
        let foreign = berth_tls::ClusterCa::generate().expect("ca");
        let intruder = berth_tls::ClientTls::new(
            ca.cert_pem(),
            foreign
                .issue_client(&berth_tls::Identity::Admin)
                .expect("client"),
        );
        assert!(
            fetch(&addr, &req("web", "", None, false), Some(&intruder))
                .await
                .is_err(),
            "a foreign CA's client read logs"
        );
        stop.cancel();
        task.await.expect("join");
        assert!(matches!(
            fetch(&addr, &req("web", "", None, false), Some(&admin)).await,
            Err(LogsError::Connect { .. })
        ));
    }
}
