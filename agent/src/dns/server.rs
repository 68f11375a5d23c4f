//! The DNS server: sockets, the hickory request handler over the current snapshot, the
//! handle that publishes new snapshots, and the query counters.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use berth_metrics::{Counter, Registry};
use berth_proto::types::{Endpoints, Service};
use futures::FutureExt;
use hickory_proto::op::{Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::Record;
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder};
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol as NetProtocol;
use hickory_server::net::NetError;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder};
use hickory_server::Server;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::forward::Forwarder;
use super::zone::{Resolution, Snapshot, Zone};
use super::{DnsConfig, DnsError};

/// A TCP client idle longer than this is disconnected.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Per upstream (UDP and the TCP retry together).
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// UDP receive loops per listen address: one per core, at most this many.
const MAX_UDP_SOCKETS: usize = 4;

const RCODES: [&str; 7] = [
    "NOERROR", "NXDOMAIN", "SERVFAIL", "REFUSED", "FORMERR", "NOTIMP", "other",
];

fn rcode_index(r: ResponseCode) -> usize {
    match r {
        ResponseCode::NoError => 0,
        ResponseCode::NXDomain => 1,
        ResponseCode::ServFail => 2,
        ResponseCode::Refused => 3,
        ResponseCode::FormErr => 4,
        ResponseCode::NotImp => 5,
        _ => 6,
    }
}

/// Who answered a query (the `zone` label).
#[derive(Debug, Clone, Copy)]
enum Source {
    Cluster = 0,
    Upstream = 1,
}

/// `berth_agent_dns_queries_total{zone,rcode}`, resolved to counters up front so the hot
/// path is one atomic add.
#[derive(Debug, Clone)]
struct DnsMetrics {
    registry: Registry,
    counters: Arc<[Counter]>,
}

impl DnsMetrics {
    fn new() -> DnsMetrics {
        let registry = Registry::new();
        let vec = registry.counter_vec(
            "berth_agent_dns_queries_total",
            "DNS queries answered by the agent's cluster DNS, by who answered (cluster: from \
             the Service cache; upstream: forwarded) and response code.",
            &["zone", "rcode"],
        );
        let counters = ["cluster", "upstream"]
            .iter()
            .flat_map(|z| RCODES.iter().map(|r| vec.with(&[z, r])).collect::<Vec<_>>())
            .collect();
        DnsMetrics { registry, counters }
    }

    fn count(&self, source: Source, rcode: ResponseCode) {
        if let Some(c) = self
            .counters
            .get(source as usize * RCODES.len() + rcode_index(rcode))
        {
            c.inc();
        }
    }
}

struct Shared {
    zone: Zone,
    state: ArcSwap<Snapshot>,
    /// Serializes writers (so a slower, older set_state cannot store after a newer one);
    /// readers never take it.
    writer: Mutex<()>,
    serial: AtomicU32,
    metrics: DnsMetrics,
}

/// Publishes the cluster state to the running server; cheap to clone.
#[derive(Clone)]
pub struct DnsHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for DnsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsHandle")
            .field("domain", &self.shared.zone.domain())
            .field("names", &self.shared.state.load().len())
            .finish()
    }
}

impl DnsHandle {
    fn new(zone: Zone) -> DnsHandle {
        // SOA serials start at the clock (so a restarted agent's serial does not go back) and
        // grow by one per state.
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs() as u32);
        let snapshot = Snapshot::empty(&zone, start);
        DnsHandle {
            shared: Arc::new(Shared {
                zone,
                state: ArcSwap::from_pointee(snapshot),
                writer: Mutex::new(()),
                serial: AtomicU32::new(start),
                metrics: DnsMetrics::new(),
            }),
        }
    }

    /// Replace every cluster name with those of these caches (whole state, not a delta);
    /// queries that start after this returns see the new names.
    pub fn set_state(&self, services: &[Service], endpoints: &[Endpoints]) {
        let _writer = self.shared.writer.lock().unwrap_or_else(|e| e.into_inner());
        let serial = self
            .shared
            .serial
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1);
        let snapshot = self.shared.zone.snapshot(serial, services, endpoints);
        self.shared.state.store(Arc::new(snapshot));
    }

    /// The snapshot being answered from.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.state.load_full()
    }

    /// The server's metrics (`berth_agent_dns_queries_total`), to render with the agent's.
    pub fn registry(&self) -> &Registry {
        &self.shared.metrics.registry
    }
}

#[derive(Clone)]
struct Handler {
    shared: Arc<Shared>,
    forwarder: Forwarder,
}

fn servfail_info(request: &Request) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = ResponseCode::ServFail;
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}

impl Handler {
    async fn error<R: ResponseHandler>(
        &self,
        request: &Request,
        edns: Option<&Edns>,
        rcode: ResponseCode,
        source: Source,
        mut response: R,
    ) -> ResponseInfo {
        let builder = MessageResponseBuilder::new(&request.queries, edns);
        let mut msg = builder.error_msg(&request.metadata, rcode);
        msg.metadata_mut().recursion_available = !self.forwarder.is_empty();
        self.shared.metrics.count(source, rcode);
        match response.send_response(msg).await {
            Ok(info) => info,
            Err(error) => {
                tracing::debug!(%error, "DNS: sending the reply failed");
                servfail_info(request)
            }
        }
    }

    async fn forward<R: ResponseHandler>(
        &self,
        request: &Request,
        edns: Option<&Edns>,
        mut response: R,
    ) -> ResponseInfo {
        if self.forwarder.is_empty() {
            return self
                .error(
                    request,
                    edns,
                    ResponseCode::Refused,
                    Source::Upstream,
                    response,
                )
                .await;
        }
        let Some(reply) = self.forwarder.forward(request.as_slice()).await else {
            return self
                .error(
                    request,
                    edns,
                    ResponseCode::ServFail,
                    Source::Upstream,
                    response,
                )
                .await;
        };
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.response_code = reply.metadata.response_code;
        metadata.authoritative = reply.metadata.authoritative;
        metadata.authentic_data = reply.metadata.authentic_data;
        metadata.recursion_available = reply.metadata.recursion_available;
        let msg = MessageResponseBuilder::new(&request.queries, edns).build(
            metadata,
            reply.answers.iter(),
            reply.authorities.iter(),
            std::iter::empty::<&Record>(),
            reply.additionals.iter(),
        );
        self.shared
            .metrics
            .count(Source::Upstream, reply.metadata.response_code);
        match response.send_response(msg).await {
            Ok(info) => info,
            Err(error) => {
                tracing::debug!(%error, "DNS: sending the forwarded reply failed");
                servfail_info(request)
            }
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    /// The TCP path (hickory's `Server`); UDP has its own loop, [`udp_loop`].
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response: R,
    ) -> ResponseInfo {
        // An owned Arc (not a guard) because the reply is sent across an await.
        let snapshot = self.shared.state.load_full();
        self.respond(request, &snapshot, response).await
    }
}

impl Handler {
    /// Whether answering `request` from `snapshot` needs an upstream (so may take seconds).
    fn needs_upstream(&self, request: &Request, snapshot: &Snapshot) -> bool {
        if self.forwarder.is_empty() {
            return false; // REFUSED at once
        }
        let Ok(info) = request.request_info() else {
            return false;
        };
        let q = info.query;
        request.metadata.op_code == OpCode::Query
            && request.edns.as_ref().is_none_or(|e| e.version() == 0)
            && snapshot.is_forwarded(q.name(), q.query_type(), q.query_class())
    }

    /// Answer `request` from `snapshot` or the upstreams. Without upstream work nothing in
    /// here waits (the UDP loop relies on that to answer inline).
    async fn respond<R: ResponseHandler>(
        &self,
        request: &Request,
        snapshot: &Snapshot,
        mut response: R,
    ) -> ResponseInfo {
        // EDNS as hickory's Catalog does it: answer with OPT when asked with it, our payload
        // limit the client's (so UDP replies are truncated at what it can take), version 0.
        let edns = request.edns.as_ref().map(|req| {
            let mut e = Edns::new();
            e.set_max_payload(req.max_payload().max(512));
            e.set_version(0);
            e
        });
        if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            return self
                .error(
                    request,
                    edns.as_ref(),
                    ResponseCode::BADVERS,
                    Source::Cluster,
                    response,
                )
                .await;
        }
        if request.metadata.op_code != OpCode::Query {
            return self
                .error(
                    request,
                    edns.as_ref(),
                    ResponseCode::NotImp,
                    Source::Cluster,
                    response,
                )
                .await;
        }
        let Ok(info) = request.request_info() else {
            // Not exactly one question.
            return self
                .error(
                    request,
                    edns.as_ref(),
                    ResponseCode::FormErr,
                    Source::Cluster,
                    response,
                )
                .await;
        };
        let q = info.query;
        let answer = match snapshot.resolve(q.name(), q.query_type(), q.query_class()) {
            Resolution::Forward => return self.forward(request, edns.as_ref(), response).await,
            Resolution::Answer(a) => a,
        };
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        metadata.recursion_available = !self.forwarder.is_empty();
        metadata.response_code = answer.rcode;
        let msg = MessageResponseBuilder::new(&request.queries, edns.as_ref()).build(
            metadata,
            answer.answers.iter(),
            std::iter::empty::<&Record>(),
            answer.soa,
            answer.additionals.iter(),
        );
        self.shared.metrics.count(Source::Cluster, answer.rcode);
        match response.send_response(msg).await {
            Ok(info) => info,
            Err(error) => {
                tracing::debug!(%error, "DNS: sending the reply failed");
                servfail_info(request)
            }
        }
    }
}

/// Replies over UDP straight from the loop's socket (`try_send_to`: never waits; a reply
/// that does not fit the socket buffer is dropped, and the client asks again).
#[derive(Clone)]
struct UdpReply {
    socket: Arc<tokio::net::UdpSocket>,
    dst: SocketAddr,
}

#[async_trait::async_trait]
impl ResponseHandler for UdpReply {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        // As hickory's own encoding: the client's EDNS payload size, or RFC 1035's 512;
        // records past it are left out and TC set.
        let max = response.edns().map_or(512, |e| e.max_payload().max(512));
        let id = response.metadata().id;
        let mut buf = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut buf);
        encoder.set_max_size(max);
        let info = match response.destructive_emit(&mut encoder) {
            Ok(info) => info,
            Err(error) => {
                tracing::debug!(%error, "DNS: encoding a reply failed; answering SERVFAIL");
                buf.clear();
                let mut metadata = Metadata::new(id, MessageType::Response, OpCode::Query);
                metadata.response_code = ResponseCode::ServFail;
                let header = Header {
                    metadata,
                    counts: HeaderCounts::default(),
                };
                header.emit(&mut BinEncoder::new(&mut buf))?;
                ResponseInfo::from(header)
            }
        };
        if let Err(error) = self.socket.try_send_to(&buf, self.dst) {
            tracing::debug!(%error, dst = %self.dst, "DNS: reply dropped");
        }
        Ok(info)
    }
}

/// Forwarded queries in flight per UDP loop; past this, outside names get SERVFAIL at once
/// (a slow upstream must not pile up unbounded tasks).
const MAX_FORWARDS_IN_FLIGHT: usize = 1024;

/// FORMERR for a datagram whose header parses but whose body does not (as hickory's server).
fn formerr(datagram: &[u8]) -> Option<Vec<u8>> {
    let mut decoder = BinDecoder::new(datagram);
    let header = Header::read(&mut decoder).ok()?;
    if header.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut metadata = Metadata::response_from_request(&header.metadata);
    metadata.response_code = ResponseCode::FormErr;
    let mut buf = Vec::with_capacity(12);
    Header {
        metadata,
        counts: HeaderCounts::default(),
    }
    .emit(&mut BinEncoder::new(&mut buf))
    .ok()?;
    Some(buf)
}

/// One UDP socket's receive loop. Cluster names are answered inline, in the loop (no task,
/// no channel, no wake-up of another thread per query: the bulk of hickory `Server`'s UDP
/// cost in dns-bench); queries for the upstreams get a task each, bounded.
async fn udp_loop(socket: tokio::net::UdpSocket, handler: Handler, shutdown: CancellationToken) {
    let socket = Arc::new(socket);
    let mut forwards: JoinSet<()> = JoinSet::new();
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, src) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(error) => {
                    // ICMP errors for earlier replies and the like: the socket is fine.
                    tracing::debug!(%error, "DNS: UDP receive");
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        while forwards.try_join_next().is_some() {}
        if src.port() == 0 {
            continue;
        }
        let datagram = &buf[..n];
        let request = match Request::from_bytes(datagram.to_vec(), src, NetProtocol::Udp) {
            Ok(r) => r,
            Err(_) => {
                if let Some(reply) = formerr(datagram) {
                    let _ = socket.try_send_to(&reply, src);
                }
                continue;
            }
        };
        if request.metadata.message_type != MessageType::Query {
            continue; // never answer responses (reflection)
        }
        let reply = UdpReply {
            socket: socket.clone(),
            dst: src,
        };
        let snapshot = handler.shared.state.load_full();
        if !handler.needs_upstream(&request, &snapshot) {
            // Completes in its first poll: nothing in this path waits.
            if handler
                .respond(&request, &snapshot, reply)
                .now_or_never()
                .is_none()
            {
                tracing::warn!("DNS: a cluster answer did not complete at once; dropped");
            }
            continue;
        }
        if forwards.len() >= MAX_FORWARDS_IN_FLIGHT {
            let edns = request.edns.as_ref().map(|_| Edns::new());
            let _ = handler
                .error(
                    &request,
                    edns.as_ref(),
                    ResponseCode::ServFail,
                    Source::Upstream,
                    reply,
                )
                .now_or_never();
            continue;
        }
        let handler = handler.clone();
        forwards.spawn(async move {
            handler.respond(&request, &snapshot, reply).await;
        });
    }
}

fn bind_error(proto: &'static str, addr: SocketAddr) -> impl FnOnce(std::io::Error) -> DnsError {
    move |source| DnsError::Bind {
        proto,
        addr,
        source,
    }
}

fn socket(addr: SocketAddr, ty: Type, proto: Protocol) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    Ok(s)
}

fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let s = socket(addr, Type::DGRAM, Protocol::UDP)?;
    // Several sockets on one port, the kernel spreading clients over them by address hash.
    s.set_reuse_port(true)?;
    // Room for a burst while the loop is busy (capped by net.core.rmem_max; best effort).
    let _ = s.set_recv_buffer_size(1 << 20);
    s.bind(&addr.into())?;
    Ok(s.into())
}

fn tcp_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let s = socket(addr, Type::STREAM, Protocol::TCP)?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

/// One listen address bound: its UDP sockets (one per receive loop), its TCP listener and
/// the address they share. Std sockets: each is registered with the runtime that serves it.
struct Bound {
    udp: Vec<std::net::UdpSocket>,
    tcp: std::net::TcpListener,
    addr: SocketAddr,
}

/// `sockets` UDP sockets and a TCP listener on one port: the given one, or for port 0 one
/// free for both protocols (a few tries: the UDP port may be taken for TCP).
fn bind_one(addr: SocketAddr, sockets: usize) -> Result<Bound, DnsError> {
    let mut tries = if addr.port() == 0 { 16 } else { 1 };
    loop {
        tries -= 1;
        let first = udp_socket(addr).map_err(bind_error("UDP", addr))?;
        let bound = first.local_addr().map_err(bind_error("UDP", addr))?;
        let tcp = match tcp_listener(bound) {
            Ok(l) => l,
            Err(e) if tries > 0 && e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => return Err(bind_error("TCP", bound)(e)),
        };
        let mut udp = vec![first];
        for _ in 1..sockets {
            udp.push(udp_socket(bound).map_err(bind_error("UDP", bound))?);
        }
        return Ok(Bound {
            udp,
            tcp,
            addr: bound,
        });
    }
}

/// The UDP loops over `udp` and a hickory `Server` over `tcp`, on the current runtime, until
/// `shutdown`.
async fn run_server(
    handler: Handler,
    udp: Vec<std::net::UdpSocket>,
    tcp: Vec<std::net::TcpListener>,
    shutdown: CancellationToken,
) {
    let mut loops = JoinSet::new();
    for s in udp {
        match tokio::net::UdpSocket::from_std(s) {
            Ok(s) => {
                loops.spawn(udp_loop(s, handler.clone(), shutdown.clone()));
            }
            Err(error) => tracing::error!(%error, "cluster DNS: registering a UDP socket"),
        }
    }
    if tcp.is_empty() {
        while loops.join_next().await.is_some() {}
        return;
    }
    let mut server = Server::new(handler);
    for l in tcp {
        match tokio::net::TcpListener::from_std(l) {
            Ok(l) => server.register_listener(l, TCP_IDLE, 64),
            Err(error) => tracing::error!(%error, "cluster DNS: registering a TCP listener"),
        }
    }
    let stopped = tokio::select! {
        _ = shutdown.cancelled() => true,
        r = server.block_until_done() => {
            if let Err(error) = r {
                tracing::error!(%error, "cluster DNS stopped");
            }
            false
        }
    };
    if stopped {
        let _ = server.shutdown_gracefully().await;
    }
    while loops.join_next().await.is_some() {}
}

/// An upstream that is this server itself would loop every outside query back to us.
fn is_self(upstream: &SocketAddr, bound: &[SocketAddr]) -> bool {
    bound.iter().any(|b| {
        b == upstream
            || (b.port() == upstream.port()
                && b.ip().is_unspecified()
                && (upstream.ip().is_loopback() || upstream.ip().is_unspecified())
                && matches!(
                    (b.ip(), upstream.ip()),
                    (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_))
                ))
    })
}

/// Bind UDP and TCP on each of `listen` (port 0: a free port, the same for both) and serve
/// until `shutdown` is cancelled. Returns the handle to publish state with (the zone is empty
/// until the first [`DnsHandle::set_state`]) and the bound addresses, in `listen`'s order,
/// each serving UDP and TCP. With [`DnsConfig::threads`] 0 it runs on the current tokio
/// runtime (one UDP receive loop per core, at most 4); otherwise on that many threads of its
/// own, each a current-thread runtime with its own UDP socket per address.
pub async fn serve(
    listen: Vec<SocketAddr>,
    cfg: DnsConfig,
    shutdown: CancellationToken,
) -> Result<(DnsHandle, Vec<SocketAddr>), DnsError> {
    let zone = Zone::new(&cfg.domain, cfg.ttl)?;
    if listen.is_empty() {
        return Err(DnsError::NoListenAddress);
    }
    let loops = match cfg.threads {
        0 => std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, MAX_UDP_SOCKETS),
        n => n,
    };
    let mut bound = Vec::new();
    for addr in listen {
        bound.push(bind_one(addr, loops)?);
    }
    let addrs: Vec<SocketAddr> = bound.iter().map(|b| b.addr).collect();
    let upstreams: Vec<SocketAddr> = cfg
        .upstreams
        .into_iter()
        .filter(|u| {
            let me = is_self(u, &addrs);
            if me {
                tracing::warn!(upstream = %u, "DNS: not forwarding to ourselves");
            }
            !me
        })
        .collect();
    let handle = DnsHandle::new(zone);
    let handler = Handler {
        shared: handle.shared.clone(),
        forwarder: Forwarder::new(upstreams, UPSTREAM_TIMEOUT),
    };
    // Loop i gets the i-th UDP socket of every address; loop 0 also the TCP listeners.
    let mut per_loop: Vec<(Vec<std::net::UdpSocket>, Vec<std::net::TcpListener>)> =
        (0..loops).map(|_| (Vec::new(), Vec::new())).collect();
    for b in bound {
        for (i, s) in b.udp.into_iter().enumerate() {
            per_loop[i % loops].0.push(s);
        }
        per_loop[0].1.push(b.tcp);
    }
    if cfg.threads == 0 {
        let (udp, tcp): (Vec<_>, Vec<_>) = per_loop.into_iter().unzip();
        let udp = udp.into_iter().flatten().collect();
        let tcp = tcp.into_iter().flatten().collect();
        // The server's own tasks live in its JoinSet; this one only ties them to `shutdown`.
        tokio::spawn(run_server(handler, udp, tcp, shutdown));
    } else {
        for (i, (udp, tcp)) in per_loop.into_iter().enumerate() {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(DnsError::Thread)?;
            let (handler, shutdown) = (handler.clone(), shutdown.clone());
            // Ended by `shutdown` (the loop returns, the thread exits).
            std::thread::Builder::new()
                .name(format!("berth-dns-{i}"))
                .spawn(move || rt.block_on(run_server(handler, udp, tcp, shutdown)))
                .map_err(DnsError::Thread)?;
        }
    }
    tracing::info!(listen = ?addrs, domain = %handle.shared.zone.domain(), threads = cfg.threads, "cluster DNS serving");
    Ok((handle, addrs))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn an_upstream_on_our_own_address_is_not_used() {
        let bound: Vec<SocketAddr> = vec!["0.0.0.0:53".parse().unwrap()];
        let me: SocketAddr = "127.0.0.1:53".parse().unwrap();
        let other: SocketAddr = "127.0.0.53:5353".parse().unwrap();
        let v6: SocketAddr = "[::1]:53".parse().unwrap();
        assert!(is_self(&me, &bound));
        assert!(!is_self(&other, &bound));
        assert!(!is_self(&v6, &bound));
        assert!(is_self(&other, &[other]));
    }
}
