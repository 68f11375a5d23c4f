//! One proxied connection: pick a backend (p2c), connect with failover, then copy bytes both
//! ways until either side closes, the backend's drain deadline passes, or the proxy stops.
//!
//! The copy is tokio's `copy_bidirectional_with_sizes` semantics (each direction: read, write
//! all, on EOF shut down the peer's write side; the first error ends both) with two changes
//! that matter when a connection carries one request: the large copy buffers come from a
//! [`BufPool`] instead of being allocated and zeroed per connection (allocator churn showed up
//! as `madvise` calls and page faults under connection-per-request load), and the final
//! `shutdown` is skipped when the other direction has already ended, since both sockets are
//! closed right after (one syscall less per connection).

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::balancer::{pick, InFlight};
use super::metrics::inc;
use super::{ProxyConfig, ServiceShared};

/// What every connection of one proxy shares (one `Arc` clone per connection).
pub(crate) struct ConnEnv {
    pub(crate) config: ProxyConfig,
    pub(crate) pool: BufPool,
    /// Cancelled when the shutdown grace is over: cuts every connection.
    pub(crate) stop: CancellationToken,
}

impl ConnEnv {
    pub(crate) fn new(config: ProxyConfig) -> Self {
        // Enough for the copy buffers of this many concurrent connections to be reused; more
        // are allocated on demand and freed when they come back to a full pool.
        const POOLED_CONNECTIONS: usize = 256;
        Self {
            pool: BufPool::new(config.copy_buf_size.max(1), 2 * POOLED_CONNECTIONS),
            config,
            stop: CancellationToken::new(),
        }
    }
}

pub(crate) async fn serve(client: TcpStream, shared: Arc<ServiceShared>, env: Arc<ConnEnv>) {
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
        let connect = tokio::time::timeout(env.config.connect_timeout, TcpStream::connect(addr));
        let result = tokio::select! {
            biased;
            _ = env.stop.cancelled() => return,
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
        if tried.len() >= env.config.max_connect_attempts.max(1) {
            inc(&counters.failed);
            return;
        }
    };
    drop(set);
    let _ = server.set_nodelay(true);

    counters.connections_active.fetch_add(1, Ordering::Relaxed);
    let mut client = client;
    let mut server = server;
    let mut up_buf = env.pool.get();
    let mut down_buf = env.pool.get();
    let mut bytes_in = 0u64;
    let mut bytes_out = 0u64;
    let backend = in_flight.backend();
    tokio::select! {
        biased;
        _ = env.stop.cancelled() => {}
        _ = backend.drain_deadline() => {
            inc(&counters.drain_closed);
            tracing::debug!(backend = %backend.addr, "drain timeout: closing connection");
        }
        r = copy_both_ways(
            &mut client,
            &mut server,
            (&mut *up_buf, &mut *down_buf),
            (&mut bytes_in, &mut bytes_out),
        ) => {
            if let Err(e) = r {
                tracing::trace!(backend = %backend.addr, error = %e, "proxied connection ended");
            }
        }
    }
    counters.bytes_in.fetch_add(bytes_in, Ordering::Relaxed);
    counters.bytes_out.fetch_add(bytes_out, Ordering::Relaxed);
    counters.connections_active.fetch_sub(1, Ordering::Relaxed);
    drop(in_flight);
}

/// Copies client -> server and server -> client concurrently until both directions ended.
/// Byte counts are updated as data is written, so they are right even when the caller drops
/// this future (drain timeout, shutdown).
async fn copy_both_ways(
    client: &mut TcpStream,
    server: &mut TcpStream,
    bufs: (&mut [u8], &mut [u8]),
    counts: (&mut u64, &mut u64),
) -> io::Result<()> {
    let (mut client_r, mut client_w) = client.split();
    let (mut server_r, mut server_w) = server.split();
    let up_done = AtomicBool::new(false);
    let down_done = AtomicBool::new(false);
    let up = one_way(
        &mut client_r,
        &mut server_w,
        bufs.0,
        counts.0,
        &up_done,
        &down_done,
    );
    let down = one_way(
        &mut server_r,
        &mut client_w,
        bufs.1,
        counts.1,
        &down_done,
        &up_done,
    );
    tokio::try_join!(up, down)?;
    Ok(())
}

async fn one_way(
    from: &mut ReadHalf<'_>,
    to: &mut WriteHalf<'_>,
    buf: &mut [u8],
    count: &mut u64,
    done: &AtomicBool,
    other_done: &AtomicBool,
) -> io::Result<()> {
    loop {
        let n = from.read(buf).await?;
        if n == 0 {
            break;
        }
        to.write_all(&buf[..n]).await?;
        *count += n as u64;
    }
    done.store(true, Ordering::Relaxed);
    if !other_done.load(Ordering::Relaxed) {
        // Half-close: the peer sees EOF but may still send (e.g. a response after the
        // request body ended).
        to.shutdown().await?;
    }
    Ok(())
}

/// A bounded free list of equal-sized copy buffers.
pub(crate) struct BufPool {
    size: usize,
    max: usize,
    free: Mutex<Vec<Box<[u8]>>>,
}

impl BufPool {
    pub(crate) fn new(size: usize, max: usize) -> Self {
        Self {
            size,
            max,
            free: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn get(&self) -> PooledBuf<'_> {
        let reused = self
            .free
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop();
        let buf = reused.unwrap_or_else(|| vec![0u8; self.size].into_boxed_slice());
        PooledBuf {
            buf: Some(buf),
            pool: self,
        }
    }

    #[cfg(test)]
    fn pooled(&self) -> usize {
        self.free.lock().map(|f| f.len()).unwrap_or_default()
    }
}

/// A buffer on loan from a [`BufPool`]; returned to it on drop (or freed if the pool is full).
pub(crate) struct PooledBuf<'a> {
    buf: Option<Box<[u8]>>,
    pool: &'a BufPool,
}

impl std::ops::Deref for PooledBuf<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.buf.as_deref().unwrap_or_default()
    }
}

impl std::ops::DerefMut for PooledBuf<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.buf.as_deref_mut().unwrap_or_default()
    }
}

impl Drop for PooledBuf<'_> {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            let mut free = self
                .pool
                .free
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if free.len() < self.pool.max {
                free.push(buf);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_reuses_buffers_and_keeps_at_most_max() {
        let pool = BufPool::new(1024, 2);
        {
            let mut a = pool.get();
            a[0] = 7;
            let _b = pool.get();
            let _c = pool.get();
            assert_eq!(a.len(), 1024);
        }
        assert_eq!(pool.pooled(), 2, "third buffer freed, not kept");
        let a = pool.get();
        assert_eq!(a.len(), 1024);
        assert_eq!(pool.pooled(), 1);
    }

    #[tokio::test]
    async fn copy_both_ways_half_closes_and_counts_bytes() {
        let front = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let back = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let mut client = TcpStream::connect(front.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (mut proxy_client, _) = front.accept().await.expect("accept");
        let mut proxy_server = TcpStream::connect(back.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (mut server, _) = back.accept().await.expect("accept");

        let copy = tokio::spawn(async move {
            let (mut a, mut b) = (vec![0u8; 16], vec![0u8; 16]);
            let (mut up, mut down) = (0u64, 0u64);
            let r = copy_both_ways(
                &mut proxy_client,
                &mut proxy_server,
                (&mut a[..], &mut b[..]),
                (&mut up, &mut down),
            )
            .await;
            (r.is_ok(), up, down)
        });
        // A request longer than the buffer, then half-close; the response follows the EOF.
        client
            .write_all(b"a request of more than sixteen bytes")
            .await
            .expect("write");
        client.shutdown().await.expect("half-close");
        let mut got = Vec::new();
        server
            .read_to_end(&mut got)
            .await
            .expect("server reads to EOF");
        assert_eq!(got, b"a request of more than sixteen bytes");
        server.write_all(b"response").await.expect("respond");
        drop(server);
        let mut resp = Vec::new();
        client.read_to_end(&mut resp).await.expect("client reads");
        assert_eq!(resp, b"response");
        let (ok, up, down) = copy.await.expect("join");
        assert!(ok);
        assert_eq!((up, down), (36, 8));
    }
}
