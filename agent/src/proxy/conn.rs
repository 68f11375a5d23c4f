//! One proxied connection: pick a backend (p2c), connect with failover, then copy bytes both
//! ways until either side closes, the backend's drain deadline passes, or the proxy stops.

use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::balancer::{pick, InFlight};
use super::metrics::inc;
use super::{ProxyConfig, ServiceShared};

pub(crate) async fn serve(
    client: TcpStream,
    shared: Arc<ServiceShared>,
    config: Arc<ProxyConfig>,
    stop: CancellationToken,
) {
    let counters = &shared.counters;
    inc(&counters.connections_total);
    // One load per connection: the set seen here is the set this connection uses, even if a
    // swap happens while it connects.
    let set = shared.backends.load_full();
    if set.backends.is_empty() {
        inc(&counters.no_backend);
        // Dropping the stream closes it at once: the client sees EOF, never a hang.
        return;
    }
    let _ = client.set_nodelay(true);

    let mut tried: Vec<usize> = Vec::new();
    let (server, in_flight) = loop {
        let choice = {
            let mut rng = rand::thread_rng();
            pick(&set.backends, &tried, &mut rng)
        };
        let Some(i) = choice else {
            inc(&counters.failed);
            return;
        };
        let in_flight = InFlight::new(set.backends[i].clone());
        let addr = in_flight.backend().addr;
        let connect = tokio::time::timeout(config.connect_timeout, TcpStream::connect(addr));
        let result = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            r = connect => r,
        };
        match result {
            Ok(Ok(server)) => break (server, in_flight),
            Ok(Err(e)) => {
                tracing::debug!(backend = %addr, error = %e, "connect to backend failed");
            }
            Err(_) => {
                tracing::debug!(backend = %addr, "connect to backend timed out");
            }
        }
        inc(&counters.connect_errors);
        tried.push(i);
        if tried.len() >= config.max_connect_attempts.max(1) {
            inc(&counters.failed);
            return;
        }
    };
    let _ = server.set_nodelay(true);

    counters.connections_active.fetch_add(1, Ordering::Relaxed);
    let mut client = Counted::new(client);
    let mut server = server;
    let backend = in_flight.backend().clone();
    let size = config.copy_buf_size;
    tokio::select! {
        biased;
        _ = stop.cancelled() => {}
        _ = backend.drain_deadline() => {
            inc(&counters.drain_closed);
            tracing::debug!(backend = %backend.addr, "drain timeout: closing connection");
        }
        r = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut server, size, size) => {
            if let Err(e) = r {
                tracing::trace!(backend = %backend.addr, error = %e, "proxied connection ended");
            }
        }
    }
    counters.bytes_in.fetch_add(client.read, Ordering::Relaxed);
    counters
        .bytes_out
        .fetch_add(client.written, Ordering::Relaxed);
    counters.connections_active.fetch_sub(1, Ordering::Relaxed);
    drop(in_flight);
}

/// Counts bytes on the client side in plain fields (flushed to the shared atomics once, when
/// the connection ends) so the hot path touches no shared cache line.
struct Counted {
    inner: TcpStream,
    read: u64,
    written: u64,
}

impl Counted {
    fn new(inner: TcpStream) -> Self {
        Self {
            inner,
            read: 0,
            written: 0,
        }
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.read += (buf.filled().len() - before) as u64;
        r
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            this.written += *n as u64;
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
