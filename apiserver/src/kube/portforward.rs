//! `pods/{name}/portforward`: kubectl port-forward and the client libraries' port forwarding.
//!
//! Three ways in, as the Kubernetes API server and kubelet serve them:
//!
//! * **SPDY over WebSocket** (kubectl 1.31+ tries this first): a WebSocket upgrade with the
//!   subprotocol `SPDY/3.1+portforward.k8s.io`; its binary messages carry a SPDY/3.1 byte stream
//!   (message boundaries mean nothing).
//! * **SPDY/3.1** (kubectl's fallback, older clients): `Upgrade: SPDY/3.1`,
//!   `X-Stream-Protocol-Version: portforward.k8s.io`, then SPDY frames on the connection.
//!
//!   In both, each forwarded connection is a pair of client-opened streams with the headers
//!   `streamType` (`error` or `data`), `port` and `requestID`. The data stream carries the
//!   connection's bytes both ways; when forwarding fails the error stream gets the kubelet's
//!   message (`error forwarding port 8080 to pod …: … connection refused`); both end with FIN.
//! * **WebSocket channels** (`v4.channel.k8s.io` / `v4.base64.channel.k8s.io`, the Python
//!   client, `berth port-forward`): `?ports=8080[,9090]`; per port a data channel (2i) and an
//!   error channel (2i+1), the first message on each being the port as 2 bytes little-endian;
//!   every message is the channel byte then data. One connection per port per WebSocket.
//!
//! Each forwarded connection becomes one mutual-TLS connection from this server to the agent of
//! the pod's node (`status.agentEndpoint`, as `system:server`), upgraded to a raw byte stream
//! after the agent has connected to the pod's port on its node (`agent/src/portforward.rs`).
//! That works from any server to any node: a server is not on the nodes' pod networks (Docker
//! pods' 10.42.N.x addresses route only on their node and its peers), and process pods listen on
//! their node's loopback or host ports, which only that node can reach.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use berth_tls::Identity;
use bytes::{Bytes, BytesMut};
use futures::{SinkExt as _, StreamExt as _};
use http::{header, HeaderValue, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tokio_rustls::rustls;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use super::spdy::{self, Frame};
use super::status::KubeError;
use super::{Ctx, KubeApi, ResPath, Resp};

/// The port-forward protocol (SPDY stream headers, WebSocket tunnel suffix).
pub const PROTOCOL_V1: &str = "portforward.k8s.io";
/// kubectl's WebSocket subprotocol for SPDY tunneled in WebSocket messages.
pub const SPDY_TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
pub const V4_BINARY_PROTOCOL: &str = "v4.channel.k8s.io";
pub const V4_BASE64_PROTOCOL: &str = "v4.base64.channel.k8s.io";
/// The upgrade token of the agent's raw port-forward connections.
pub const AGENT_UPGRADE: &str = "berth-portforward";

/// Bytes read from a pod per DATA frame / WebSocket message.
const CHUNK: usize = 32 * 1024;
const AGENT_TIMEOUT: Duration = Duration::from_secs(10);

/// `berth_portforward_sessions_total{protocol}` and `berth_portforward_connections_total{result}`
/// in the process-wide registry (served at the server's /metrics).
fn sessions_metric() -> berth_metrics::CounterVec {
    berth_metrics::global().counter_vec(
        "berth_portforward_sessions_total",
        "pods/portforward upgrades served, by protocol (spdy, spdy-websocket, websocket-channels).",
        &["protocol"],
    )
}

fn connections_metric() -> berth_metrics::CounterVec {
    berth_metrics::global().counter_vec(
        "berth_portforward_connections_total",
        "Connections forwarded to pods, by result (ok, error).",
        &["result"],
    )
}

/// Port-forward sessions this process has served with `protocol` (`spdy`, `spdy-websocket`,
/// `websocket-channels`).
pub fn sessions_served(protocol: &str) -> u64 {
    sessions_metric().with(&[protocol]).get()
}

/// Where a pod's forwarded connections go: its agent, and what to ask it for.
#[derive(Clone)]
pub(crate) struct PodTarget {
    agent: String,
    tls: Arc<rustls::ClientConfig>,
    namespace: String,
    pod: String,
    uid: String,
}

impl PodTarget {
    /// One upgraded connection to `port` of the pod, through its agent; the error is the text
    /// for the client's error stream.
    async fn dial(&self, port: u16) -> Result<TokioIo<hyper::upgrade::Upgraded>, String> {
        let fail = |why: String| {
            format!(
                "error forwarding port {port} to pod {}/{}, uid {}: {why}",
                self.namespace, self.pod, self.uid
            )
        };
        let r = tokio::time::timeout(AGENT_TIMEOUT, self.dial_agent(port)).await;
        match r {
            Ok(Ok(io)) => Ok(io),
            Ok(Err(AgentError::Refused(msg))) => Err(msg),
            Ok(Err(AgentError::Unreachable(why))) => Err(fail(format!(
                "cannot reach the agent of the pod's node at {}: {why}",
                self.agent
            ))),
            Err(_) => Err(fail(format!(
                "the agent of the pod's node at {} did not answer within {}s",
                self.agent,
                AGENT_TIMEOUT.as_secs()
            ))),
        }
    }

    async fn dial_agent(&self, port: u16) -> Result<TokioIo<hyper::upgrade::Upgraded>, AgentError> {
        let unreachable = |e: &dyn std::fmt::Display| AgentError::Unreachable(e.to_string());
        let mut send = super::podlog::agent_http1(&self.agent, self.tls.clone())
            .await
            .map_err(AgentError::Unreachable)?;
        let path = format!(
            "/portForward/{}/{}?port={port}&uid={}",
            self.namespace, self.pod, self.uid
        );
        let req = http::Request::builder()
            .method(http::Method::GET)
            .uri(path)
            .header(header::HOST, &self.agent)
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, AGENT_UPGRADE)
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|e| unreachable(&e))?;
        let mut resp = send.send_request(req).await.map_err(|e| unreachable(&e))?;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            use http_body_util::BodyExt as _;
            let status = resp.status();
            let body = http_body_util::Limited::new(resp.into_body(), 64 * 1024)
                .collect()
                .await
                .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_string())
                .unwrap_or_default();
            return Err(AgentError::Refused(if body.is_empty() {
                format!("the agent answered {status}")
            } else {
                body
            }));
        }
        let upgraded = hyper::upgrade::on(&mut resp)
            .await
            .map_err(|e| unreachable(&e))?;
        Ok(TokioIo::new(upgraded))
    }
}

enum AgentError {
    /// The agent answered with an error (its text is the kubelet-style message).
    Refused(String),
    Unreachable(String),
}

/// May this caller forward ports? Kubernetes checks `create` on `pods/portforward`: the admin,
/// servers and read-write tokens may; nodes and read-only tokens may not.
fn authorize(who: Option<&Identity>, namespace: &str, name: &str) -> Result<(), KubeError> {
    let rule = match who {
        Some(Identity::Admin | Identity::Server) => return Ok(()),
        Some(Identity::Token {
            read_only: false, ..
        }) => return Ok(()),
        Some(Identity::Token { .. }) => {
            "a read-only token may get, list and watch, not forward ports"
        }
        Some(Identity::Node(_)) => "nodes may not forward ports to pods",
        None => "no credential",
    };
    let user = who.map(|w| w.to_string()).unwrap_or_default();
    Err(KubeError::new(
        403,
        "Forbidden",
        format!(
            "pods \"{name}\" is forbidden: User \"{user}\" cannot create resource \
             \"pods/portforward\" in API group \"\" in the namespace \"{namespace}\": {rule}"
        ),
    ))
}

/// Which protocol the request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Wanted {
    Spdy,
    SpdyOverWebSocket,
    /// The channel protocol with the subprotocol to answer (empty: none was asked for).
    Channels {
        protocol: String,
        base64: bool,
    },
}

fn header_tokens(headers: &http::HeaderMap, name: header::HeaderName) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn wanted(headers: &http::HeaderMap) -> Result<Wanted, KubeError> {
    let upgrade = header_tokens(headers, header::UPGRADE);
    if upgrade.iter().any(|u| u.eq_ignore_ascii_case("websocket")) {
        let protocols = header_tokens(headers, header::SEC_WEBSOCKET_PROTOCOL);
        if protocols.iter().any(|p| p == SPDY_TUNNEL_PROTOCOL) {
            return Ok(Wanted::SpdyOverWebSocket);
        }
        for p in &protocols {
            if p == V4_BINARY_PROTOCOL || p == V4_BASE64_PROTOCOL {
                return Ok(Wanted::Channels {
                    protocol: p.clone(),
                    base64: p == V4_BASE64_PROTOCOL,
                });
            }
        }
        if protocols.is_empty() {
            return Ok(Wanted::Channels {
                protocol: String::new(),
                base64: false,
            });
        }
        return Err(KubeError::bad_request(format!(
            "unable to upgrade: none of the WebSocket subprotocols {protocols:?} is supported: \
             use {SPDY_TUNNEL_PROTOCOL}, {V4_BINARY_PROTOCOL} or {V4_BASE64_PROTOCOL}"
        )));
    }
    if upgrade.iter().any(|u| u.eq_ignore_ascii_case("SPDY/3.1")) {
        let versions = header_tokens(
            headers,
            http::HeaderName::from_static("x-stream-protocol-version"),
        );
        if !versions.is_empty() && !versions.iter().any(|v| v == PROTOCOL_V1) {
            return Err(KubeError::new(
                403,
                "Forbidden",
                format!(
                    "unable to upgrade: unable to negotiate protocol: client supports {versions:?}, \
                     server supports [\"{PROTOCOL_V1}\"]"
                ),
            ));
        }
        return Ok(Wanted::Spdy);
    }
    Err(KubeError::bad_request(
        "Upgrade request required: pods/portforward is a streaming endpoint (SPDY/3.1 or \
         WebSocket); use `kubectl port-forward` or `berth port-forward`",
    ))
}

/// `ports=8080,9090` (repeated or comma-separated) for the channel protocol.
fn parse_ports(query: Option<&str>) -> Result<Vec<u16>, KubeError> {
    let mut ports = Vec::new();
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if k != "ports" {
            continue;
        }
        for p in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match p.parse::<u16>() {
                Ok(n) if n > 0 => ports.push(n),
                _ => {
                    return Err(KubeError::bad_request(format!(
                        "unable to parse \"{p}\" as a port: ports must be 1-65535"
                    )))
                }
            }
        }
    }
    if ports.is_empty() {
        return Err(KubeError::bad_request(
            "at least one port must be given: ?ports=8080[,9090]",
        ));
    }
    Ok(ports)
}

impl KubeApi {
    pub(super) async fn portforward(
        &self,
        mut req: http::Request<Body>,
        ctx: &Ctx,
        rp: &ResPath,
    ) -> Result<Resp, KubeError> {
        let namespace = rp.namespace.clone().unwrap_or_default();
        let name = rp.name.clone().unwrap_or_default();
        authorize(ctx.who.as_ref(), &namespace, &name)?;
        let wanted = wanted(req.headers())?;
        let ports = match wanted {
            Wanted::Channels { .. } => parse_ports(req.uri().query())?,
            _ => Vec::new(),
        };
        let target = self.pod_target(ctx, rp, &namespace, &name).await?;
        let shutdown = self.api.shutdown_token();
        let on_upgrade = hyper::upgrade::on(&mut req);
        let mut resp = http::Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .body(Body::empty())
            .unwrap_or_default();
        let h = resp.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        match &wanted {
            Wanted::Spdy => {
                h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
                h.insert(
                    "x-stream-protocol-version",
                    HeaderValue::from_static(PROTOCOL_V1),
                );
            }
            Wanted::SpdyOverWebSocket | Wanted::Channels { .. } => {
                let key = req
                    .headers()
                    .get(header::SEC_WEBSOCKET_KEY)
                    .ok_or_else(|| {
                        KubeError::bad_request("WebSocket upgrade without Sec-WebSocket-Key")
                    })?;
                let accept =
                    tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
                h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
                if let Ok(v) = HeaderValue::from_str(&accept) {
                    h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
                }
                let protocol = match &wanted {
                    Wanted::SpdyOverWebSocket => SPDY_TUNNEL_PROTOCOL,
                    Wanted::Channels { protocol, .. } => protocol.as_str(),
                    Wanted::Spdy => "",
                };
                if !protocol.is_empty() {
                    if let Ok(v) = HeaderValue::from_str(protocol) {
                        h.insert(header::SEC_WEBSOCKET_PROTOCOL, v);
                    }
                }
            }
        }
        let label = match &wanted {
            Wanted::Spdy => "spdy",
            Wanted::SpdyOverWebSocket => "spdy-websocket",
            Wanted::Channels { .. } => "websocket-channels",
        };
        sessions_metric().with(&[label]).inc();
        tracing::debug!(pod = %format!("{namespace}/{name}"), protocol = label, "portforward: upgrading");
        tokio::spawn(async move {
            let io = match on_upgrade.await {
                Ok(u) => TokioIo::new(u),
                Err(e) => {
                    tracing::debug!(error = %e, "portforward: upgrade failed");
                    return;
                }
            };
            match wanted {
                Wanted::Spdy => serve_spdy(io, target, shutdown).await,
                Wanted::SpdyOverWebSocket => {
                    let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
                    let (a, b) = tokio::io::duplex(256 * 1024);
                    tokio::join!(
                        serve_spdy(a, target, shutdown.clone()),
                        tunnel(ws, b, shutdown)
                    );
                }
                Wanted::Channels { base64, .. } => {
                    let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
                    serve_channels(ws, base64, ports, target, shutdown).await
                }
            }
        });
        Ok(resp)
    }

    /// The pod's agent and identity, or the error Kubernetes gives for a pod that cannot be
    /// forwarded to.
    async fn pod_target(
        &self,
        ctx: &Ctx,
        rp: &ResPath,
        namespace: &str,
        name: &str,
    ) -> Result<PodTarget, KubeError> {
        let pod = self.pod_value(ctx, rp).await?;
        let s = |p: &str| {
            pod.pointer(p)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        super::podlog::node_of(&pod)?;
        let phase = s("/status/phase");
        if phase != "Running" {
            return Err(KubeError::bad_request(format!(
                "unable to forward port because pod is not running. Current status={}",
                if phase.is_empty() { "Pending" } else { &phase }
            )));
        }
        let agent = self.agent_endpoint(&pod).await?;
        let tls = berth_tls::mtls_client_config(&self.api.client_tls())
            .map_err(|e| KubeError::new(500, "InternalError", e.to_string()))?;
        Ok(PodTarget {
            agent,
            tls,
            namespace: namespace.to_string(),
            pod: name.to_string(),
            uid: s("/metadata/uid"),
        })
    }
}

/// What a forwarded connection sends back to the client.
#[derive(Debug)]
enum Down {
    Data(Bytes),
    /// The pod closed its side.
    DataFin,
    /// The forwarding failed: the kubelet-style message.
    Error(String),
    /// Forwarding of this connection is over.
    ErrorFin,
}

/// Forward one connection: dial the pod through its agent, copy `up` (the client's bytes; the
/// channel closing is the client's FIN) to it and its bytes to `down`, until the pod closes
/// or `cancel`.
async fn forward<K: Copy + Send + 'static>(
    target: PodTarget,
    port: u16,
    key: K,
    mut up: mpsc::Receiver<Bytes>,
    down: mpsc::Sender<(K, Down)>,
    cancel: CancellationToken,
) {
    let conn = tokio::select! {
        c = target.dial(port) => c,
        _ = cancel.cancelled() => return,
    };
    let conn = match conn {
        Ok(c) => {
            connections_metric().with(&["ok"]).inc();
            c
        }
        Err(msg) => {
            connections_metric().with(&["error"]).inc();
            tracing::debug!(%msg, "portforward");
            let _ = down.send((key, Down::Error(msg))).await;
            let _ = down.send((key, Down::ErrorFin)).await;
            let _ = down.send((key, Down::DataFin)).await;
            return;
        }
    };
    let (mut rd, mut wr) = tokio::io::split(conn);
    let to_pod = async {
        while let Some(b) = up.recv().await {
            if wr.write_all(&b).await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    };
    let from_pod = async {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(n) => {
                    if down
                        .send((key, Down::Data(Bytes::copy_from_slice(&buf[..n]))))
                        .await
                        .is_err()
                    {
                        return false;
                    }
                }
            }
        }
    };
    tokio::pin!(to_pod, from_pod);
    let mut to_pod_done = false;
    let pod_closed = loop {
        tokio::select! {
            closed = &mut from_pod => break closed,
            _ = &mut to_pod, if !to_pod_done => to_pod_done = true,
            _ = cancel.cancelled() => break false,
        }
    };
    if pod_closed {
        let _ = down.send((key, Down::DataFin)).await;
    }
    let _ = down.send((key, Down::ErrorFin)).await;
}

// ---------------------------------------------------------------------------------------------
// SPDY

/// The two streams of one forwarded connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Pair {
    error: u32,
    data: u32,
}

#[derive(Default)]
struct Pending {
    port: u16,
    error: Option<u32>,
    data: Option<u32>,
}

/// Serve one SPDY connection (direct, or the inner end of a WebSocket tunnel).
async fn serve_spdy<IO>(io: IO, target: PodTarget, shutdown: CancellationToken)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let conn_done = CancellationToken::new();
    let (frames_tx, mut frames_rx) = mpsc::channel::<Frame>(64);
    // The writer: the one owner of the compression context and the write half.
    let writer = {
        let conn_done = conn_done.clone();
        tokio::spawn(async move {
            let mut enc = spdy::Encoder::new();
            let mut buf = BytesMut::new();
            while let Some(f) = frames_rx.recv().await {
                buf.clear();
                if let Err(e) = enc.encode(&f, &mut buf) {
                    tracing::debug!(error = %e, "portforward: encoding a SPDY frame");
                    break;
                }
                // Coalesce what is already queued into one write.
                while let Ok(f) = frames_rx.try_recv() {
                    if enc.encode(&f, &mut buf).is_err() {
                        break;
                    }
                }
                if wr.write_all(&buf).await.is_err() || wr.flush().await.is_err() {
                    break;
                }
            }
            let _ = wr.shutdown().await;
            conn_done.cancel();
        })
    };
    // Results of forwarded connections, mapped to frames.
    let (down_tx, mut down_rx) = mpsc::channel::<(Pair, Down)>(64);
    let down_writer = {
        let frames = frames_tx.clone();
        tokio::spawn(async move {
            while let Some((pair, d)) = down_rx.recv().await {
                let f = match d {
                    Down::Data(data) => Frame::Data {
                        stream_id: pair.data,
                        flags: 0,
                        data,
                    },
                    Down::DataFin => Frame::Data {
                        stream_id: pair.data,
                        flags: spdy::FLAG_FIN,
                        data: Bytes::new(),
                    },
                    Down::Error(msg) => Frame::Data {
                        stream_id: pair.error,
                        flags: 0,
                        data: Bytes::from(msg),
                    },
                    Down::ErrorFin => Frame::Data {
                        stream_id: pair.error,
                        flags: spdy::FLAG_FIN,
                        data: Bytes::new(),
                    },
                };
                if frames.send(f).await.is_err() {
                    break;
                }
            }
        })
    };

    let mut dec = spdy::Decoder::new();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    // requestID -> the streams seen so far.
    let mut pending: HashMap<String, Pending> = HashMap::new();
    // data stream id -> the sender of its bytes (None once the client sent FIN).
    let mut data_streams: HashMap<u32, Option<mpsc::Sender<Bytes>>> = HashMap::new();
    // any stream id of a pair -> the pair's cancellation.
    let mut cancels: HashMap<u32, (Pair, CancellationToken)> = HashMap::new();
    let tasks = tokio_util::task::TaskTracker::new();
    'conn: loop {
        let frame = loop {
            match dec.decode(&mut buf) {
                Ok(Some(f)) => break f,
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "portforward: bad SPDY frame");
                    let _ = frames_tx
                        .send(Frame::GoAway {
                            last_good_stream_id: 0,
                            status: 1,
                        })
                        .await;
                    break 'conn;
                }
            }
            if buf.len() > spdy::MAX_FRAME_PAYLOAD + 8 {
                break 'conn;
            }
            let n = tokio::select! {
                r = rd.read_buf(&mut buf) => r,
                _ = shutdown.cancelled() => break 'conn,
                _ = conn_done.cancelled() => break 'conn,
            };
            match n {
                Ok(0) | Err(_) => break 'conn,
                Ok(_) => {}
            }
        };
        match frame {
            Frame::SynStream { stream_id, .. } => {
                let stream_type = frame.header("streamtype").unwrap_or("").to_string();
                let port = frame.header("port").unwrap_or("").to_string();
                let request_id = frame.header("requestid").unwrap_or("").to_string();
                let port: u16 = match port.parse() {
                    Ok(p) if p > 0 => p,
                    _ => {
                        tracing::debug!(%port, "portforward: stream with an invalid port");
                        let _ = frames_tx
                            .send(Frame::RstStream {
                                stream_id,
                                status: spdy::RST_PROTOCOL_ERROR,
                            })
                            .await;
                        continue;
                    }
                };
                if !matches!(stream_type.as_str(), "error" | "data") || request_id.is_empty() {
                    let _ = frames_tx
                        .send(Frame::RstStream {
                            stream_id,
                            status: spdy::RST_PROTOCOL_ERROR,
                        })
                        .await;
                    continue;
                }
                let _ = frames_tx
                    .send(Frame::SynReply {
                        stream_id,
                        flags: 0,
                        headers: Vec::new(),
                    })
                    .await;
                let p = pending.entry(request_id.clone()).or_default();
                p.port = port;
                if stream_type == "error" {
                    p.error = Some(stream_id);
                } else {
                    p.data = Some(stream_id);
                }
                if let (Some(error), Some(data)) = (p.error, p.data) {
                    let port = p.port;
                    pending.remove(&request_id);
                    let (up_tx, up_rx) = mpsc::channel::<Bytes>(16);
                    data_streams.insert(data, Some(up_tx));
                    let cancel = CancellationToken::new();
                    let pair = Pair { error, data };
                    cancels.insert(error, (pair, cancel.clone()));
                    cancels.insert(data, (pair, cancel.clone()));
                    tasks.spawn(forward(
                        target.clone(),
                        port,
                        pair,
                        up_rx,
                        down_tx.clone(),
                        cancel,
                    ));
                }
            }
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                if let Some(slot) = data_streams.get_mut(&stream_id) {
                    if !data.is_empty() {
                        if let Some(tx) = slot {
                            if tx.send(data).await.is_err() {
                                *slot = None;
                            }
                        }
                    }
                    if flags & spdy::FLAG_FIN != 0 {
                        *slot = None;
                    }
                }
                // Bytes on an error stream (the client only half-closes it) are ignored.
            }
            Frame::RstStream { stream_id, .. } => {
                data_streams.remove(&stream_id);
                // kubectl resets the data stream when a connection is done: forget the pair.
                if let Some((pair, c)) = cancels.remove(&stream_id) {
                    cancels.remove(&pair.error);
                    cancels.remove(&pair.data);
                    data_streams.remove(&pair.data);
                    c.cancel();
                }
            }
            Frame::Ping { id } => {
                let _ = frames_tx.send(Frame::Ping { id }).await;
            }
            Frame::GoAway { .. } => break 'conn,
            Frame::SynReply { .. }
            | Frame::Headers { .. }
            | Frame::Settings
            | Frame::WindowUpdate { .. }
            | Frame::Unknown { .. } => {}
        }
    }
    for (_, c) in cancels.values() {
        c.cancel();
    }
    data_streams.clear();
    tasks.close();
    tasks.wait().await;
    drop(down_tx);
    let _ = down_writer.await;
    drop(frames_tx);
    let _ = writer.await;
}

/// Pump a WebSocket's binary messages into `inner` (the SPDY side) and `inner`'s bytes out as
/// binary messages, until either side ends.
async fn tunnel<S>(
    ws: WebSocketStream<S>,
    inner: tokio::io::DuplexStream,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut ws_tx, mut ws_rx) = ws.split();
    let (mut rd, mut wr) = tokio::io::split(inner);
    let inbound = async {
        while let Some(Ok(m)) = ws_rx.next().await {
            let ok = match m {
                Message::Binary(b) => wr.write_all(&b).await.is_ok(),
                Message::Close(_) => false,
                // Text is not part of the tunnel protocol; pings are answered by tungstenite.
                _ => true,
            };
            if !ok {
                break;
            }
        }
        let _ = wr.shutdown().await;
    };
    let outbound = async {
        let mut buf = vec![0u8; CHUNK + 64];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if ws_tx
                        .send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        let _ = ws_tx
            .send(Message::Close(Some(CloseFrame {
                code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
                reason: "".into(),
            })))
            .await;
        let _ = ws_tx.close().await;
    };
    tokio::select! {
        _ = async { tokio::join!(inbound, outbound) } => {}
        _ = shutdown.cancelled() => {}
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket channels (v4.channel.k8s.io)

fn channel_message(channel: u8, data: &[u8], base64: bool) -> Message {
    if base64 {
        use base64::Engine as _;
        let mut s = String::with_capacity(1 + data.len() * 4 / 3 + 4);
        s.push(char::from(b'0' + channel));
        s.push_str(&base64::engine::general_purpose::STANDARD.encode(data));
        Message::Text(s.into())
    } else {
        let mut b = Vec::with_capacity(1 + data.len());
        b.push(channel);
        b.extend_from_slice(data);
        Message::Binary(b.into())
    }
}

/// The channel and payload of a client message (None: not a channel message).
fn parse_channel_message(m: Message, base64: bool) -> Option<(u8, Bytes)> {
    match m {
        Message::Binary(b) if !b.is_empty() && !base64 => Some((b[0], b.slice(1..))),
        Message::Text(t) if base64 && !t.is_empty() => {
            use base64::Engine as _;
            let s = t.as_str();
            let ch = s.as_bytes()[0].checked_sub(b'0')?;
            let data = base64::engine::general_purpose::STANDARD
                .decode(&s[1..])
                .ok()?;
            Some((ch, Bytes::from(data)))
        }
        _ => None,
    }
}

async fn serve_channels<S>(
    ws: WebSocketStream<S>,
    base64: bool,
    ports: Vec<u16>,
    target: PodTarget,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut ws_tx, mut ws_rx) = ws.split();
    // The first message of every channel is its port.
    for (i, port) in ports.iter().enumerate() {
        let le = port.to_le_bytes();
        for ch in [2 * i as u8, 2 * i as u8 + 1] {
            if ws_tx.send(channel_message(ch, &le, base64)).await.is_err() {
                return;
            }
        }
    }
    let cancel = CancellationToken::new();
    let (down_tx, mut down_rx) = mpsc::channel::<(usize, Down)>(64);
    let mut ups = Vec::new();
    let tasks = tokio_util::task::TaskTracker::new();
    for (i, port) in ports.iter().enumerate() {
        let (up_tx, up_rx) = mpsc::channel::<Bytes>(16);
        ups.push(Some(up_tx));
        tasks.spawn(forward(
            target.clone(),
            *port,
            i,
            up_rx,
            down_tx.clone(),
            cancel.clone(),
        ));
    }
    drop(down_tx);
    tasks.close();
    let mut open = ports.len();
    let outbound = async {
        while let Some((i, d)) = down_rx.recv().await {
            let m = match d {
                Down::Data(b) => channel_message(2 * i as u8, &b, base64),
                Down::Error(msg) => channel_message(2 * i as u8 + 1, msg.as_bytes(), base64),
                Down::DataFin => continue,
                Down::ErrorFin => {
                    open -= 1;
                    if open == 0 {
                        break;
                    }
                    continue;
                }
            };
            if ws_tx.send(m).await.is_err() {
                return;
            }
        }
        let _ = ws_tx
            .send(Message::Close(Some(CloseFrame {
                code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
                reason: "".into(),
            })))
            .await;
        let _ = ws_tx.close().await;
    };
    let inbound = async {
        while let Some(Ok(m)) = ws_rx.next().await {
            if let Message::Close(_) = m {
                break;
            }
            let Some((ch, data)) = parse_channel_message(m, base64) else {
                continue;
            };
            let i = usize::from(ch / 2);
            if ch % 2 != 0 || data.is_empty() {
                continue;
            }
            if let Some(Some(tx)) = ups.get(i) {
                if tx.send(data).await.is_err() {
                    ups[i] = None;
                }
            }
        }
        // The client is gone: no more bytes for any pod connection.
        ups.clear();
    };
    tokio::pin!(outbound, inbound);
    let mut inbound_done = false;
    loop {
        tokio::select! {
            _ = &mut outbound => break,
            _ = &mut inbound, if !inbound_done => {
                inbound_done = true;
                // The WebSocket has no half-close: the client closing it ends every forward.
                cancel.cancel();
            }
            _ = shutdown.cancelled() => break,
        }
    }
    cancel.cancel();
    tasks.wait().await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn the_protocol_follows_kubectls_and_the_python_clients_upgrade_headers() {
        // kubectl 1.31+: WebSocket carrying SPDY.
        let h = headers(&[
            ("upgrade", "websocket"),
            ("sec-websocket-protocol", "SPDY/3.1+portforward.k8s.io"),
        ]);
        assert_eq!(wanted(&h).unwrap(), Wanted::SpdyOverWebSocket);
        // kubectl's fallback.
        let h = headers(&[
            ("upgrade", "SPDY/3.1"),
            ("x-stream-protocol-version", "portforward.k8s.io"),
        ]);
        assert_eq!(wanted(&h).unwrap(), Wanted::Spdy);
        // The Python client.
        let h = headers(&[
            ("upgrade", "websocket"),
            ("sec-websocket-protocol", "v4.channel.k8s.io"),
        ]);
        assert_eq!(
            wanted(&h).unwrap(),
            Wanted::Channels {
                protocol: "v4.channel.k8s.io".into(),
                base64: false
            }
        );
        let h = headers(&[
            ("upgrade", "websocket"),
            (
                "sec-websocket-protocol",
                "v4.base64.channel.k8s.io, v4.channel.k8s.io",
            ),
        ]);
        assert!(matches!(
            wanted(&h).unwrap(),
            Wanted::Channels { base64: true, .. }
        ));
        // A plain GET is told what to do.
        let e = wanted(&headers(&[])).unwrap_err();
        assert_eq!(e.code, 400);
        assert!(
            e.message.contains("Upgrade request required"),
            "{}",
            e.message
        );
        let e = wanted(&headers(&[
            ("upgrade", "SPDY/3.1"),
            ("x-stream-protocol-version", "v4.channel.k8s.io"),
        ]))
        .unwrap_err();
        assert!(
            e.message.contains("unable to negotiate protocol"),
            "{}",
            e.message
        );
    }

    #[test]
    fn ports_are_listed_comma_separated_or_repeated_and_validated() {
        assert_eq!(
            parse_ports(Some("ports=8080,9090&ports=22")).unwrap(),
            vec![8080, 9090, 22]
        );
        assert!(parse_ports(Some("ports=0")).is_err());
        assert!(parse_ports(Some("ports=http")).is_err());
        assert!(parse_ports(None).unwrap_err().message.contains("?ports="));
    }

    #[test]
    fn nodes_and_read_only_tokens_may_not_forward_ports() {
        assert!(authorize(Some(&Identity::Admin), "default", "web").is_ok());
        let rw = Identity::Token {
            name: "ci".into(),
            read_only: false,
        };
        assert!(authorize(Some(&rw), "default", "web").is_ok());
        let ro = Identity::Token {
            name: "ci".into(),
            read_only: true,
        };
        let e = authorize(Some(&ro), "default", "web").unwrap_err();
        assert_eq!((e.code, e.reason), (403, "Forbidden"));
        assert!(
            e.message.starts_with(
                "pods \"web\" is forbidden: User \"token:ci:read-only\" cannot create resource \
                 \"pods/portforward\""
            ),
            "{}",
            e.message
        );
        let e = authorize(Some(&Identity::Node("n1".into())), "default", "web").unwrap_err();
        assert_eq!(e.code, 403);
    }

    #[test]
    fn channel_messages_carry_the_channel_byte_or_digit() {
        let m = channel_message(3, b"hi", false);
        assert_eq!(m, Message::Binary(Bytes::from_static(&[3, b'h', b'i'])));
        assert_eq!(
            parse_channel_message(m, false),
            Some((3, Bytes::from_static(b"hi")))
        );
        let m = channel_message(2, b"hi", true);
        assert_eq!(m, Message::Text("2aGk=".into()));
        assert_eq!(
            parse_channel_message(m, true),
            Some((2, Bytes::from_static(b"hi")))
        );
    }
}
