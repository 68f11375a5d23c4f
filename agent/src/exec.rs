//! Running a command in a pod's container, streamed: the agent's exec endpoint and its client.
//!
//! `GET /exec/{namespace}/{pod}/{container}?command=sh&command=-c&command=...&stdin=1&stdout=1
//! &stderr=1&tty=0` (the kubelet's path and parameters) with a WebSocket upgrade, on the same
//! server and under the same rule as the logs API ([`crate::logs`]): mutual TLS, `admin` and
//! `system:server` certificates only. The API server proxies `pods/exec` here byte for byte
//! (as kube-apiserver proxies to the kubelet), so this speaks the Kubernetes remote-command
//! protocol itself — `v5.channel.k8s.io` (kubectl 1.30+) and `v4.channel.k8s.io` (the Python
//! client), read from client-go's tools/remotecommand and apimachinery's wsstream:
//!
//! - every message is binary: one channel byte, then data. 0 stdin (client to server), 1
//!   stdout, 2 stderr, 3 the final status, 4 terminal resize (`{"Width":W,"Height":H}`);
//! - v5: `[255, 0]` from the client closes the command's stdin (kubectl sends it at the end of
//!   piped input);
//! - at the end the server sends a `metav1.Status` on channel 3 — `Success`, or `Failure` with
//!   reason `NonZeroExitCode` and a `details.causes` entry `{reason: ExitCode, message: "N"}`
//!   (kubectl exits N), or `InternalError` when the command could not run — then a normal close.
//!
//! The runtime runs the command ([`crate::runtime::Runtime::exec_stream`]): Docker through its
//! exec API (attach, TTY, resize, exit code from inspect); the process runtime as a host
//! process with the container's environment and working directory (not isolated from the
//! node, like the container itself; no TTY).
//!
//! [`run_client`] is the other end (used by `berth exec` through the API server, and tests).

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::{SinkExt, Stream, StreamExt};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use berth_metrics::http::{text_response, Body};

use crate::api::PodCache;
use crate::logs::{select_container, LogRequest};
use crate::runtime::{Runtime, RuntimeError};

/// The remote-command protocols served, in no particular order (the client's order wins).
pub const PROTOCOL_V5: &str = "v5.channel.k8s.io";
pub const PROTOCOL_V4: &str = "v4.channel.k8s.io";
pub const PROTOCOLS: [&str; 2] = [PROTOCOL_V5, PROTOCOL_V4];

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;
/// v5: `[CLOSE, channel]` half-closes a channel.
pub const CLOSE: u8 = 255;

/// What to run and which streams to attach.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecSpec {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// Output of a running command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecFrame {
    Stdout(Bytes),
    Stderr(Bytes),
}

/// Resizing the terminal and reading the exit code of a running command.
#[async_trait::async_trait]
pub trait ExecControl: Send + Sync {
    async fn resize(&self, width: u16, height: u16) -> Result<(), RuntimeError>;
    /// The exit code, once the output has ended (128 + N for a command killed by signal N).
    async fn wait(&self) -> Result<i32, RuntimeError>;
}

/// A command started in a container.
pub struct ExecSession {
    /// Its standard input (when asked for); shutting it down closes the command's stdin.
    pub stdin: Option<Pin<Box<dyn AsyncWrite + Send>>>,
    /// Its output; ends when the command closes its stdout and stderr (usually: exits).
    pub output: Pin<Box<dyn Stream<Item = ExecFrame> + Send>>,
    pub control: Box<dyn ExecControl>,
}

/// An exec request: the container (empty: the pod's only one) and the command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecRequest {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub spec: ExecSpec,
}

fn truthy(v: &str) -> bool {
    matches!(v, "1" | "true" | "True")
}

/// Parse `/exec/{ns}/{pod}/{container}?command=...` (the query as the kubelet reads it).
pub fn parse_target(target: &str) -> Result<ExecRequest, String> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (ns, pod, container) = match parts.as_slice() {
        ["exec", ns, pod, c] => (*ns, *pod, *c),
        ["exec", ns, pod] => (*ns, *pod, ""),
        _ => {
            return Err(format!(
                "unknown path {path:?}: use /exec/NAMESPACE/POD/CONTAINER?command=..."
            ))
        }
    };
    let mut req = ExecRequest {
        namespace: ns.to_string(),
        pod: pod.to_string(),
        container: container.to_string(),
        spec: ExecSpec::default(),
    };
    for (k, v) in form_pairs(query) {
        match k.as_str() {
            "command" => req.spec.command.push(v),
            "stdin" | "input" => req.spec.stdin = truthy(&v),
            "stdout" | "output" => req.spec.stdout = truthy(&v),
            "stderr" | "error" => req.spec.stderr = truthy(&v),
            "tty" => req.spec.tty = truthy(&v),
            "container" if req.container.is_empty() => req.container = v,
            _ => {}
        }
    }
    validate(&req.spec)?;
    Ok(req)
}

/// The checks kube-apiserver makes on PodExecOptions, with its words.
pub fn validate(spec: &ExecSpec) -> Result<(), String> {
    if spec.command.is_empty() || spec.command[0].is_empty() {
        return Err("you must specify at least 1 command (command=...)".into());
    }
    if !(spec.stdin || spec.stdout || spec.stderr) {
        return Err("you must specify at least one of stdin, stdout, stderr".into());
    }
    Ok(())
}

/// `application/x-www-form-urlencoded` pairs, decoded (`+` is a space, `%XX` a byte).
fn form_pairs(query: &str) -> Vec<(String, String)> {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let decode = |s: &str| -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push(h * 16 + l);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                },
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    query
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// The `Sec-WebSocket-Protocol` the server picks: the client's first supported one.
pub fn choose_protocol(headers: &http::HeaderMap) -> Option<&'static str> {
    headers
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find_map(|p| PROTOCOLS.iter().find(|s| **s == p).copied())
}

/// Is this a WebSocket upgrade request (RFC 6455 headers)?
pub fn is_websocket(headers: &http::HeaderMap) -> bool {
    let has = |name: http::header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    has(http::header::UPGRADE, "websocket") && has(http::header::CONNECTION, "upgrade")
}

/// The final status: Success, or the exit code as kubectl reads it.
pub fn exit_status(code: i32, command: &[String]) -> Value {
    if code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!(
            "command terminated with non-zero exit code: error executing command {command:?}, \
             exit code {code}"
        ),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

/// The final status of a command that could not run.
pub fn error_status(message: &str) -> Value {
    json!({
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": "InternalError",
        "code": 500,
        "details": {"causes": [{"message": message}]},
    })
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    Message::Binary(v.into())
}

/// Answer an exec request on the agent's API server (access already checked).
pub async fn respond(
    mut req: Request<Incoming>,
    runtime: Arc<dyn Runtime>,
    pods: PodCache,
    shutdown: CancellationToken,
) -> Response<Body> {
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_string();
    let ereq = match parse_target(&target) {
        Ok(r) => r,
        Err(msg) => return text_response(StatusCode::BAD_REQUEST, &msg),
    };
    if !is_websocket(req.headers()) {
        return text_response(
            StatusCode::BAD_REQUEST,
            "exec needs a WebSocket upgrade (Upgrade: websocket) with subprotocol \
             v5.channel.k8s.io or v4.channel.k8s.io",
        );
    }
    let Some(protocol) = choose_protocol(req.headers()) else {
        return text_response(
            StatusCode::BAD_REQUEST,
            "none of the requested WebSocket subprotocols is supported: use v5.channel.k8s.io \
             or v4.channel.k8s.io",
        );
    };
    let Some(key) = req.headers().get(http::header::SEC_WEBSOCKET_KEY).cloned() else {
        return text_response(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
    };
    let all = match runtime.list().await {
        Ok(a) => a,
        Err(e) => return text_response(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let lreq = LogRequest {
        namespace: ereq.namespace.clone(),
        pod: ereq.pod.clone(),
        container: ereq.container.clone(),
        ..Default::default()
    };
    let uid = pods
        .find(&ereq.namespace, &ereq.pod)
        .map(|p| p.metadata.uid);
    let c = match select_container(&all, &lreq, uid.as_deref()) {
        Ok(c) => c.clone(),
        Err((status, msg)) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return text_response(status, &msg);
        }
    };
    if !c.state.is_running() {
        return text_response(
            StatusCode::BAD_REQUEST,
            &format!(
                "container {:?} in pod {}/{} is not running",
                c.container_name, ereq.namespace, ereq.pod
            ),
        );
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let spec = ereq.spec.clone();
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "exec: upgrade failed");
                return;
            }
        };
        let ws = WebSocketStream::from_raw_socket(
            hyper_util::rt::TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        serve_session(ws, runtime, c.id, spec, shutdown).await;
    });
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut resp = Response::new(http_body_util::BodyExt::boxed_unsync(
        http_body_util::Full::new(Bytes::new()),
    ));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(
        http::header::UPGRADE,
        http::HeaderValue::from_static("websocket"),
    );
    h.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("Upgrade"),
    );
    h.insert(
        http::header::SEC_WEBSOCKET_PROTOCOL,
        http::HeaderValue::from_static(protocol),
    );
    if let Ok(v) = http::HeaderValue::from_str(&accept) {
        h.insert(http::header::SEC_WEBSOCKET_ACCEPT, v);
    }
    resp
}

/// Run the command and relay its streams until it ends, the client goes away or the agent
/// stops; then send the final status and close.
async fn serve_session<S>(
    ws: WebSocketStream<S>,
    runtime: Arc<dyn Runtime>,
    id: String,
    spec: ExecSpec,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (mut sink, mut incoming) = ws.split();
    let finish = |status: Value| {
        vec![
            frame(ERROR, status.to_string().as_bytes()),
            Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            })),
        ]
    };
    let session = match runtime.exec_stream(&id, &spec).await {
        Ok(s) => s,
        Err(e) => {
            for m in finish(error_status(&format!(
                "cannot run {:?} in the container: {e}",
                spec.command
            ))) {
                let _ = sink.send(m).await;
            }
            return;
        }
    };
    let ExecSession {
        stdin,
        mut output,
        control,
    } = session;
    // Stdin is written by its own task so a command that does not read it cannot stall its
    // output; dropping the sender closes the command's stdin.
    let (stdin_tx, mut stdin_rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let mut stdin_tx = Some(stdin_tx);
    if let Some(mut w) = stdin {
        tokio::spawn(async move {
            while let Some(b) = stdin_rx.recv().await {
                if w.write_all(&b).await.is_err() || w.flush().await.is_err() {
                    return;
                }
            }
            let _ = w.shutdown().await;
        });
    } else {
        stdin_tx = None;
    }
    let mut client_gone = false;
    loop {
        tokio::select! {
            f = output.next() => match f {
                Some(ExecFrame::Stdout(b)) => {
                    if sink.send(frame(STDOUT, &b)).await.is_err() { client_gone = true; break; }
                }
                Some(ExecFrame::Stderr(b)) => {
                    let ch = if spec.tty { STDOUT } else { STDERR };
                    if sink.send(frame(ch, &b)).await.is_err() { client_gone = true; break; }
                }
                None => break,
            },
            m = incoming.next() => match m {
                Some(Ok(Message::Binary(data))) => match data.first().copied() {
                    Some(STDIN) => {
                        if let Some(tx) = &stdin_tx {
                            if data.len() > 1 && tx.send(data.slice(1..)).await.is_err() {
                                stdin_tx = None;
                            }
                        }
                    }
                    Some(RESIZE) => {
                        if let Ok(size) = serde_json::from_slice::<Value>(&data[1..]) {
                            let dim = |k: &str| size.get(k).and_then(Value::as_u64).unwrap_or(0) as u16;
                            let (w, h) = (dim("Width"), dim("Height"));
                            if w > 0 && h > 0 {
                                if let Err(e) = control.resize(w, h).await {
                                    tracing::debug!(error = %e, "exec: resize");
                                }
                            }
                        }
                    }
                    Some(CLOSE) if data.get(1) == Some(&STDIN) => stdin_tx = None,
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => { client_gone = true; break; }
                Some(Ok(_)) => {}
            },
            _ = shutdown.cancelled() => break,
        }
    }
    drop(stdin_tx);
    if client_gone {
        // Nothing to report to; dropping the session ends what the runtime can end.
        return;
    }
    let status = if shutdown.is_cancelled() {
        error_status("the node's agent is shutting down")
    } else {
        match control.wait().await {
            Ok(code) => exit_status(code, &spec.command),
            Err(e) => error_status(&format!("cannot read the command's exit code: {e}")),
        }
    };
    for m in finish(status) {
        if sink.send(m).await.is_err() {
            return;
        }
    }
    // Wait (briefly) for the client's close so the connection ends cleanly.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while let Some(Ok(m)) = incoming.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// How a client-side exec ended.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("{0}")]
    Handshake(String),
    #[error("the exec stream broke: {0}")]
    Stream(String),
    /// The server could not run the command (its Status message).
    #[error("{0}")]
    Failed(String),
}

/// The local ends of an exec: where input comes from and output goes.
pub struct ClientIo<'a> {
    pub stdin: Option<Pin<Box<dyn AsyncRead + Send>>>,
    pub stdout: &'a mut (dyn std::io::Write + Send),
    pub stderr: &'a mut (dyn std::io::Write + Send),
    /// Terminal sizes to send (width, height), for `tty`.
    pub resize: Option<tokio::sync::mpsc::Receiver<(u16, u16)>>,
}

/// Run `spec` in a pod's container through an API server's `pods/exec` (`server` is
/// HOST:PORT of its API port; `tls` the caller's credential). Returns the exit code.
pub async fn exec_via_api(
    server: &str,
    tls: &berth_tls::ClientTls,
    namespace: &str,
    pod: &str,
    container: &str,
    spec: &ExecSpec,
    io: ClientIo<'_>,
) -> Result<i32, ExecError> {
    let handshake = |m: String| ExecError::Handshake(format!("cannot reach {server}: {m}"));
    let config = berth_tls::mtls_client_config(tls).map_err(|e| handshake(e.to_string()))?;
    let name = berth_tls::server_name(server).map_err(|e| handshake(e.to_string()))?;
    let connect = async {
        let tcp = tokio::net::TcpStream::connect(server)
            .await
            .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())
    };
    let stream = tokio::time::timeout(std::time::Duration::from_secs(10), connect)
        .await
        .map_err(|_| handshake("timed out after 10s".into()))?
        .map_err(handshake)?;
    let mut q: Vec<(String, String)> = spec
        .command
        .iter()
        .map(|c| ("command".to_string(), c.clone()))
        .collect();
    for (k, on) in [
        ("stdin", spec.stdin),
        ("stdout", spec.stdout),
        ("stderr", spec.stderr),
        ("tty", spec.tty),
    ] {
        if on {
            q.push((k.to_string(), "true".to_string()));
        }
    }
    if !container.is_empty() {
        q.push(("container".to_string(), container.to_string()));
    }
    let query: Vec<String> = q
        .iter()
        .map(|(k, v)| format!("{k}={}", percent_encode(v)))
        .collect();
    let url = format!(
        "wss://{server}/api/v1/namespaces/{namespace}/pods/{pod}/exec?{}",
        query.join("&")
    );
    run_client(stream, &url, http::HeaderMap::new(), io).await
}

/// Percent-encode everything but unreserved characters (RFC 3986).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Run an exec over `stream` (already connected, TLS done) to `url`
/// (`wss://HOST/api/v1/namespaces/NS/pods/POD/exec?command=...`), with `headers` added to the
/// upgrade request (e.g. Authorization). Returns the command's exit code.
pub async fn run_client<S>(
    stream: S,
    url: &str,
    headers: http::HeaderMap,
    io: ClientIo<'_>,
) -> Result<i32, ExecError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url
        .into_client_request()
        .map_err(|e| ExecError::Handshake(format!("bad exec URL {url:?}: {e}")))?;
    request.headers_mut().extend(headers);
    request.headers_mut().insert(
        http::header::SEC_WEBSOCKET_PROTOCOL,
        http::HeaderValue::from_static("v5.channel.k8s.io, v4.channel.k8s.io"),
    );
    let (ws, resp) = match tokio_tungstenite::client_async(request, stream).await {
        Ok(x) => x,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            let message = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_else(|| format!("{}: {}", resp.status(), body.trim()));
            return Err(ExecError::Failed(message));
        }
        Err(e) => return Err(ExecError::Handshake(e.to_string())),
    };
    let v5 = resp
        .headers()
        .get(http::header::SEC_WEBSOCKET_PROTOCOL)
        .is_some_and(|p| p == PROTOCOL_V5);
    let (mut sink, mut incoming) = ws.split();
    let ClientIo {
        stdin,
        stdout,
        stderr,
        resize,
    } = io;
    // Outgoing messages (stdin, resize, close) from their tasks to the one writer.
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<Message>(16);
    let mut tasks = Vec::new();
    if let Some(mut input) = stdin {
        let tx = out_tx.clone();
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match input.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send(frame(STDIN, &buf[..n])).await.is_err() {
                            return;
                        }
                    }
                }
            }
            if v5 {
                let _ = tx.send(Message::Binary(vec![CLOSE, STDIN].into())).await;
            }
        }));
    }
    if let Some(mut sizes) = resize {
        let tx = out_tx.clone();
        tasks.push(tokio::spawn(async move {
            while let Some((w, h)) = sizes.recv().await {
                let body = json!({"Width": w, "Height": h}).to_string();
                if tx.send(frame(RESIZE, body.as_bytes())).await.is_err() {
                    return;
                }
            }
        }));
    }
    drop(out_tx);
    let mut status: Option<Value> = None;
    let mut sending = true;
    loop {
        tokio::select! {
            m = out_rx.recv(), if sending => match m {
                Some(m) => {
                    if sink.send(m).await.is_err() { sending = false; }
                }
                None => sending = false,
            },
            m = incoming.next() => match m {
                Some(Ok(Message::Binary(data))) => match data.first().copied() {
                    Some(STDOUT) => {
                        stdout.write_all(&data[1..]).and_then(|_| stdout.flush()).map_err(|e| ExecError::Stream(e.to_string()))?;
                    }
                    Some(STDERR) => {
                        stderr.write_all(&data[1..]).and_then(|_| stderr.flush()).map_err(|e| ExecError::Stream(e.to_string()))?;
                    }
                    Some(ERROR) => {
                        status = serde_json::from_slice(&data[1..]).ok();
                    }
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None => break,
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    if status.is_some() { break; }
                    return Err(ExecError::Stream(e.to_string()));
                }
            },
        }
    }
    for t in tasks {
        t.abort();
    }
    let _ = sink.close().await;
    status_exit_code(status.as_ref())
}

/// The exit code a final status means (kubectl's errorDecoderV4).
pub fn status_exit_code(status: Option<&Value>) -> Result<i32, ExecError> {
    let Some(s) = status else {
        return Err(ExecError::Stream(
            "the connection closed without the command's exit status".into(),
        ));
    };
    match s.get("status").and_then(Value::as_str) {
        Some("Success") => Ok(0),
        Some("Failure") if s.get("reason").and_then(Value::as_str) == Some("NonZeroExitCode") => s
            .pointer("/details/causes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|c| c.get("reason").and_then(Value::as_str) == Some("ExitCode"))
            .and_then(|c| c.get("message").and_then(Value::as_str))
            .and_then(|m| m.parse().ok())
            .ok_or_else(|| ExecError::Stream(format!("exit status without an exit code: {s}"))),
        _ => Err(ExecError::Failed(
            s.get("message")
                .and_then(Value::as_str)
                .unwrap_or("the command failed")
                .to_string(),
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_like_the_kubelets_and_are_validated() {
        let r = parse_target(
            "/exec/default/web/app?command=sh&command=-c&command=echo+a%20b&stdin=true&stdout=1&tty=false",
        )
        .expect("ok");
        assert_eq!(r.namespace, "default");
        assert_eq!(r.container, "app");
        assert_eq!(r.spec.command, vec!["sh", "-c", "echo a b"]);
        assert!(r.spec.stdin && r.spec.stdout && !r.spec.stderr && !r.spec.tty);
        assert!(parse_target("/exec/default/web/app?stdout=1")
            .unwrap_err()
            .contains("at least 1 command"));
        assert!(parse_target("/exec/default/web/app?command=ls")
            .unwrap_err()
            .contains("at least one of stdin, stdout, stderr"));
        assert!(parse_target("/nope").is_err());
    }

    #[test]
    fn the_client_prefers_v5_and_the_server_takes_the_clients_first_supported_protocol() {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            http::HeaderValue::from_static(
                "v6.channel.k8s.io, v4.channel.k8s.io, v5.channel.k8s.io",
            ),
        );
        assert_eq!(choose_protocol(&h), Some(PROTOCOL_V4));
        h.insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            http::HeaderValue::from_static("channel.k8s.io"),
        );
        assert_eq!(choose_protocol(&h), None);
    }

    #[test]
    fn exit_statuses_round_trip_as_kubectl_reads_them() {
        let cmd = vec!["sh".to_string()];
        assert_eq!(status_exit_code(Some(&exit_status(0, &cmd))).unwrap(), 0);
        let s = exit_status(3, &cmd);
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(s["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(s["details"]["causes"][0]["message"], "3");
        assert_eq!(status_exit_code(Some(&s)).unwrap(), 3);
        match status_exit_code(Some(&error_status("no such file"))) {
            Err(ExecError::Failed(m)) => assert_eq!(m, "no such file"),
            other => panic!("{other:?}"),
        }
        assert!(status_exit_code(None).is_err());
    }
}
