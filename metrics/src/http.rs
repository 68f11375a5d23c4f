//! The `/metrics` HTTP endpoint on hyper 1.x (HTTP/1.1): `GET` (or `HEAD`) `/metrics` answers
//! the rendered text; other methods 405, other paths 404. Each connection is a task in a
//! `TaskTracker`; a request head must arrive within 10 s and fit hyper's 8 KiB minimum buffer.
//! On shutdown, open connections finish their request (hyper's graceful shutdown) within 2 s.
//!
//! [`MetricsServer::bind`] then [`MetricsServer::run`]; [`scrape`] is the matching client.
//! The pieces other HTTP servers in Berth reuse (the agent's API also serves `/metrics`):
//! [`serve_connections`] (accept loop + drain), [`serve_http1`] (one connection),
//! [`metrics_response`], [`text_response`] and the [`Body`] type.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE as CONTENT_TYPE_HEADER};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::text::CONTENT_TYPE;

/// How long a client has to send a request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections get to finish after shutdown.
const DRAIN: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot listen for metrics on {addr}: {source} (pick another --metrics-listen)")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("scraping http://{addr}/metrics: {source}")]
    Scrape {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("scraping http://{addr}/metrics: {message}")]
    BadReply { addr: String, message: String },
}

/// What the endpoint serves: called once per scrape.
pub type RenderFn = Arc<dyn Fn() -> String + Send + Sync>;

/// A response body: a whole buffer or a stream (the agent's `logs -f`).
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// A bound metrics endpoint.
pub struct MetricsServer {
    listener: TcpListener,
    render: RenderFn,
}

impl MetricsServer {
    pub async fn bind(addr: &str, render: RenderFn) -> Result<MetricsServer, MetricsError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| MetricsError::Listen {
                addr: addr.to_string(),
                source,
            })?;
        Ok(MetricsServer { listener, render })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serve until `shutdown`; open connections get 2 s to finish.
    pub async fn run(self, shutdown: CancellationToken) {
        let render = self.render;
        serve_connections(&self.listener, &shutdown, "metrics", |sock| {
            let render = render.clone();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let render = render.clone();
                async move {
                    Ok::<_, Infallible>(if is_metrics_path(&req) {
                        metrics_response(req.method(), || render())
                    } else {
                        text_response(StatusCode::NOT_FOUND, "not found: metrics are at /metrics")
                    })
                }
            });
            serve_http1(sock, service, shutdown.clone())
        })
        .await;
    }
}

/// Accept connections on `listener` until `shutdown`, each handled by `handle` in its own
/// task; then give open connections 2 s to finish (each should watch `shutdown` itself, as
/// [`serve_http1`] does). Accept errors are retried after 50 ms. `what` names the server in
/// debug logs (accept and connection errors).
pub async fn serve_connections<F, Fut, E>(
    listener: &TcpListener,
    shutdown: &CancellationToken,
    what: &'static str,
    mut handle: F,
) where
    F: FnMut(TcpStream) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display,
{
    let conns = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let sock = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::debug!(error = %e, server = what, "accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let conn = handle(sock);
        conns.spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, server = what, "connection");
            }
        });
    }
    conns.close();
    let _ = tokio::time::timeout(DRAIN, conns.wait()).await;
}

/// Serve HTTP/1.1 on one connection with `service` until the client closes it or, after
/// `shutdown`, the request in flight completes (hyper's graceful shutdown).
pub async fn serve_http1<I, S>(
    io: I,
    service: S,
    shutdown: CancellationToken,
) -> Result<(), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(io), service)
        // The agent's exec and pods/portforward endpoints take the connection over (HTTP
        // Upgrade).
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    }
}

/// Is this request for `/metrics` (any query)?
pub fn is_metrics_path<B>(req: &Request<B>) -> bool {
    req.uri().path() == "/metrics"
}

/// The answer to a `/metrics` request: the text `render` gives for `GET`, headers only for
/// `HEAD`, 405 otherwise (`render` is not called then).
pub fn metrics_response(method: &Method, render: impl FnOnce() -> String) -> Response<Body> {
    match *method {
        // hyper sends HEAD answers without their body (but with its length).
        Method::GET | Method::HEAD => with_type(StatusCode::OK, CONTENT_TYPE, render().into()),
        _ => text_response(StatusCode::METHOD_NOT_ALLOWED, "only GET is supported"),
    }
}

/// A plain-text response: `msg` and a newline.
pub fn text_response(status: StatusCode, msg: &str) -> Response<Body> {
    with_type(
        status,
        "text/plain; charset=utf-8",
        Bytes::from(format!("{msg}\n")),
    )
}

fn with_type(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut resp = Response::new(Full::new(body).boxed_unsync());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE_HEADER, HeaderValue::from_static(content_type));
    resp
}

/// One HTTP/1.1 `GET path` with `Host: host` over a connection already made (plain TCP or
/// TLS); the connection is driven by a task of its own until the response body is read or
/// dropped. The error is the reason, for the caller to wrap with its endpoint.
pub async fn get<I>(io: I, host: &str, path: &str) -> Result<Response<Incoming>, String>
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "HTTP client connection");
        }
    });
    let request = Request::get(path)
        .header(hyper::header::HOST, host)
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())
}

/// GET `http://{addr}/metrics` and return the body (any non-200 status is an error).
pub async fn scrape(addr: &str) -> Result<String, MetricsError> {
    let io = |source| MetricsError::Scrape {
        addr: addr.to_string(),
        source,
    };
    let timed_out = || io(std::io::ErrorKind::TimedOut.into());
    let bad = |message: String| MetricsError::BadReply {
        addr: addr.to_string(),
        message,
    };
    let sock = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
        .await
        .map_err(|_| timed_out())?
        .map_err(io)?;
    let exchange = async {
        let resp = get(sock, addr, "/metrics").await.map_err(bad)?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| bad(e.to_string()))?
            .to_bytes();
        let text = String::from_utf8_lossy(&body).into_owned();
        if status != StatusCode::OK {
            return Err(bad(format!("{status}: {}", text.trim())));
        }
        Ok(text)
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| timed_out())?
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::registry::Registry;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One raw HTTP/1.1 exchange (`Connection: close`), returning the whole reply.
    async fn raw(addr: &str, method: &str, path: &str) -> String {
        let mut sock = TcpStream::connect(addr).await.unwrap();
        let req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        sock.write_all(req.as_bytes()).await.unwrap();
        let mut reply = String::new();
        tokio::time::timeout(Duration::from_secs(10), sock.read_to_string(&mut reply))
            .await
            .unwrap()
            .unwrap();
        reply
    }

    #[tokio::test]
    async fn serves_the_registry_at_metrics_with_its_content_type_and_404_405_elsewhere() {
        let reg = Registry::new();
        reg.counter("hits_total", "Hits.").add(5);
        let r = reg.clone();
        let server = MetricsServer::bind("127.0.0.1:0", Arc::new(move || r.render()))
            .await
            .unwrap();
        let addr = server.local_addr().unwrap().to_string();
        let stop = CancellationToken::new();
        let task = tokio::spawn(server.run(stop.clone()));

        let body = scrape(&addr).await.unwrap();
        assert!(body.contains("hits_total 5\n"), "{body}");
        reg.counter("hits_total", "Hits.").inc();
        assert!(scrape(&addr).await.unwrap().contains("hits_total 6\n"));

        let reply = raw(&addr, "GET", "/metrics?x=1").await;
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(
            reply
                .to_ascii_lowercase()
                .contains(&format!("content-type: {CONTENT_TYPE}")),
            "{reply}"
        );
        let head = raw(&addr, "HEAD", "/metrics").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(!head.contains("hits_total"), "HEAD has no body: {head}");
        let other = raw(&addr, "GET", "/other").await;
        assert!(other.starts_with("HTTP/1.1 404"), "{other}");
        assert!(other.contains("metrics are at /metrics"), "{other}");
        let post = raw(&addr, "POST", "/metrics").await;
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        // Not HTTP at all: a 400 from hyper's parser, and the server keeps serving.
        let mut junk = TcpStream::connect(&addr).await.unwrap();
        junk.write_all(b"\x01\x02 nonsense\r\n\r\n").await.unwrap();
        let mut reply = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), junk.read_to_string(&mut reply))
            .await
            .unwrap();
        assert!(
            reply.is_empty() || reply.starts_with("HTTP/1.1 400"),
            "{reply}"
        );
        assert!(scrape(&addr).await.unwrap().contains("hits_total 6\n"));

        stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(
            scrape(&addr).await,
            Err(MetricsError::Scrape { .. })
        ));
    }

    #[tokio::test]
    async fn shutdown_lets_an_idle_keep_alive_connection_go_within_the_drain() {
        let server = MetricsServer::bind("127.0.0.1:0", Arc::new(String::new))
            .await
            .unwrap();
        let addr = server.local_addr().unwrap().to_string();
        let stop = CancellationToken::new();
        let task = tokio::spawn(server.run(stop.clone()));
        // A keep-alive client that made one request and stays connected.
        let mut sock = TcpStream::connect(&addr).await.unwrap();
        sock.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = sock.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        let started = std::time::Instant::now();
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
        // The server closed the idle connection rather than waiting out the drain.
        let n = tokio::time::timeout(Duration::from_secs(10), sock.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 0, "connection closed");
        println!(
            "shutdown with an idle connection took {:?}",
            started.elapsed()
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn metrics_response_answers_get_and_head_and_refuses_other_methods() {
        let get = metrics_response(&Method::GET, || "x 1\n".into());
        assert_eq!(get.status(), StatusCode::OK);
        assert_eq!(get.headers()[CONTENT_TYPE_HEADER], CONTENT_TYPE);
        let head = metrics_response(&Method::HEAD, || "x 1\n".into());
        assert_eq!(head.status(), StatusCode::OK);
        let mut called = false;
        let post = metrics_response(&Method::POST, || {
            called = true;
            String::new()
        });
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert!(!called, "render is not called for a refused method");
    }
}
