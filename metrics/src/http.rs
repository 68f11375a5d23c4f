//! A minimal HTTP/1.1 endpoint for Prometheus scrapes: `GET /metrics` answers the rendered
//! text; anything else is 404/405. One request per connection (`Connection: close`), each
//! connection a task in a `TaskTracker`; the head must arrive within 10 s and fit in 8 KiB.
//!
//! [`MetricsServer::bind`] then [`MetricsServer::run`]; [`scrape`] is the matching client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::text::CONTENT_TYPE;

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
            serve_conn(sock, render.clone())
        })
        .await;
    }
}

/// Accept connections on `listener` until `shutdown`, each handled by `handle` in its own
/// task; then give open connections 2 s to finish. Accept errors are retried after 50 ms.
/// `what` names the server in debug logs (accept and connection errors).
pub async fn serve_connections<F, Fut>(
    listener: &TcpListener,
    shutdown: &CancellationToken,
    what: &'static str,
    mut handle: F,
) where
    F: FnMut(TcpStream) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
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
    let _ = tokio::time::timeout(Duration::from_secs(2), conns.wait()).await;
}

/// Read an HTTP request head (up to the blank line); None if it is too large or the peer
/// closed first.
pub async fn read_head<S: AsyncRead + Unpin>(sock: &mut S) -> std::io::Result<Option<String>> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        if buf.len() > 8192 {
            return Ok(None);
        }
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

/// Write a complete `Connection: close` response and shut the write side.
pub async fn respond<S: AsyncWrite + Unpin>(
    sock: &mut S,
    status: u16,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Internal Server Error",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await?;
    sock.write_all(body).await?;
    sock.shutdown().await
}

/// The metrics response for a request line's method and target, or None when the target is
/// not `/metrics` (so a server with other routes can handle it).
pub fn route(method: &str, target: &str) -> Option<(u16, &'static str)> {
    let path = target.split('?').next().unwrap_or("");
    if path != "/metrics" {
        return None;
    }
    if method != "GET" && method != "HEAD" {
        return Some((405, "text/plain; charset=utf-8"));
    }
    Some((200, CONTENT_TYPE))
}

async fn serve_conn(mut sock: TcpStream, render: RenderFn) -> std::io::Result<()> {
    let head = match tokio::time::timeout(Duration::from_secs(10), read_head(&mut sock)).await {
        Ok(Ok(Some(h))) => h,
        _ => return Ok(()),
    };
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    match route(method, target) {
        Some((200, ct)) => {
            let body = render();
            let body = if method == "HEAD" { "" } else { body.as_str() };
            respond(&mut sock, 200, ct, body.as_bytes()).await
        }
        Some((status, ct)) => respond(&mut sock, status, ct, b"only GET is supported\n").await,
        None => {
            respond(
                &mut sock,
                404,
                "text/plain; charset=utf-8",
                b"not found: metrics are at /metrics\n",
            )
            .await
        }
    }
}

/// GET `http://{addr}/metrics` and return the body (any non-200 status is an error).
pub async fn scrape(addr: &str) -> Result<String, MetricsError> {
    let io = |source| MetricsError::Scrape {
        addr: addr.to_string(),
        source,
    };
    let mut sock = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
        .await
        .map_err(|_| io(std::io::ErrorKind::TimedOut.into()))?
        .map_err(io)?;
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    sock.write_all(req.as_bytes()).await.map_err(io)?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut buf))
        .await
        .map_err(|_| io(std::io::ErrorKind::TimedOut.into()))?
        .map_err(io)?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| MetricsError::BadReply {
            addr: addr.to_string(),
            message: "no HTTP header".to_string(),
        })?;
    let status = head.lines().next().unwrap_or("");
    if !status.contains(" 200 ") {
        return Err(MetricsError::BadReply {
            addr: addr.to_string(),
            message: format!("{status}: {}", body.trim()),
        });
    }
    Ok(body.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::registry::Registry;

    #[tokio::test]
    async fn serves_the_registry_at_metrics_and_404_elsewhere() {
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

        let mut sock = TcpStream::connect(&addr).await.unwrap();
        sock.write_all(b"GET /other HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut reply = String::new();
        sock.read_to_string(&mut reply).await.unwrap();
        assert!(reply.starts_with("HTTP/1.1 404"), "{reply}");

        stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
    }

    #[test]
    fn route_only_claims_the_metrics_path() {
        assert_eq!(route("GET", "/metrics").map(|r| r.0), Some(200));
        assert_eq!(route("GET", "/metrics?x=1").map(|r| r.0), Some(200));
        assert_eq!(route("POST", "/metrics").map(|r| r.0), Some(405));
        assert_eq!(route("GET", "/containerLogs/a/b"), None);
    }
}
