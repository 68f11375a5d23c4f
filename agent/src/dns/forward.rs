//! Forwarding names outside the cluster zone to the upstream resolvers (the host's
//! resolv.conf), as CoreDNS's `forward . /etc/resolv.conf`: the client's query goes out
//! as-is under a fresh random ID, over UDP from a new ephemeral port (so replies cannot be
//! confused across queries), then over TCP to the same upstream if the reply is truncated.
//! An upstream that times out, fails, answers garbage, SERVFAIL or REFUSED is skipped for the
//! next; when all fail the caller answers SERVFAIL. No recursion, no cache: the upstreams
//! and the clients' stub resolvers do that.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// The largest UDP reply accepted from an upstream (EDNS payloads beyond this are rare and
/// TCP covers them).
const MAX_UDP: usize = 4096;

#[derive(Debug, Clone)]
pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    /// Per upstream, UDP and the TCP retry together.
    timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
enum ExchangeError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("unparsable reply: {0}")]
    Decode(String),
    #[error("reply to another query")]
    Mismatch,
    #[error("query too short")]
    Short,
}

impl Forwarder {
    pub fn new(upstreams: Vec<SocketAddr>, timeout: Duration) -> Forwarder {
        Forwarder { upstreams, timeout }
    }

    pub fn is_empty(&self) -> bool {
        self.upstreams.is_empty()
    }

    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    /// The first usable reply to `query` (a whole DNS message as the client sent it), its ID
    /// still the one we sent (the caller answers with the client's). `None`: every upstream
    /// failed.
    pub async fn forward(&self, query: &[u8]) -> Option<Message> {
        for upstream in &self.upstreams {
            let id: u16 = rand::random();
            let attempt = tokio::time::timeout(self.timeout, exchange(*upstream, query, id));
            match attempt.await.unwrap_or(Err(ExchangeError::Timeout)) {
                Ok(reply)
                    if !matches!(
                        reply.metadata.response_code,
                        ResponseCode::ServFail | ResponseCode::Refused
                    ) =>
                {
                    return Some(reply);
                }
                Ok(reply) => tracing::debug!(
                    %upstream, rcode = %reply.metadata.response_code, "upstream refused; trying the next"
                ),
                Err(error) => {
                    tracing::debug!(%upstream, %error, "upstream failed; trying the next")
                }
            }
        }
        None
    }
}

/// `query` with its ID replaced.
fn with_id(query: &[u8], id: u16) -> Result<Vec<u8>, ExchangeError> {
    if query.len() < 12 {
        return Err(ExchangeError::Short);
    }
    let mut q = query.to_vec();
    q[..2].copy_from_slice(&id.to_be_bytes());
    Ok(q)
}

fn decode(bytes: &[u8], id: u16) -> Result<Message, ExchangeError> {
    let m = Message::from_vec(bytes).map_err(|e| ExchangeError::Decode(e.to_string()))?;
    if m.metadata.id != id {
        return Err(ExchangeError::Mismatch);
    }
    Ok(m)
}

async fn exchange(upstream: SocketAddr, query: &[u8], id: u16) -> Result<Message, ExchangeError> {
    let q = with_id(query, id)?;
    let local: SocketAddr = if upstream.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(local).await?;
    sock.connect(upstream).await?;
    sock.send(&q).await?;
    let mut buf = vec![0u8; MAX_UDP];
    let reply = loop {
        let n = sock.recv(&mut buf).await?;
        match decode(&buf[..n], id) {
            Ok(m) => break m,
            // A stray or late datagram on our port: keep waiting (the timeout bounds it).
            Err(ExchangeError::Mismatch | ExchangeError::Decode(_)) => continue,
            Err(e) => return Err(e),
        }
    };
    if !reply.metadata.truncation {
        return Ok(reply);
    }
    exchange_tcp(upstream, &q, id).await
}

async fn exchange_tcp(upstream: SocketAddr, q: &[u8], id: u16) -> Result<Message, ExchangeError> {
    let len = u16::try_from(q.len()).map_err(|_| ExchangeError::Short)?;
    let mut stream = TcpStream::connect(upstream).await?;
    let mut framed = Vec::with_capacity(q.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(q);
    stream.write_all(&framed).await?;
    let n = stream.read_u16().await?;
    let mut buf = vec![0u8; usize::from(n)];
    stream.read_exact(&mut buf).await?;
    decode(&buf, id)
}
