//! The cluster DNS server embedded in the node agent: answers Service and pod names from the
//! agent's Service and Endpoints caches as Kubernetes' CoreDNS `kubernetes` plugin does, and
//! forwards every other name to the host's resolvers.
//!
//! Main types: [`DnsConfig`]; [`serve`] binds UDP and TCP and returns a [`DnsHandle`] (cheap
//! clone) whose [`DnsHandle::set_state`] publishes a new [`zone::Snapshot`]; the pure
//! [`zone::Snapshot::resolve`] answers one question from a snapshot; [`forward`] talks to the
//! upstreams; [`resolv`] has the resolv.conf helpers (host side: [`upstreams_from_resolv_conf`];
//! pod side: [`pod_resolv_conf`], [`search_expansions`]).
//!
//! Data flow:
//!
//! ```text
//! Service/Endpoints caches --set_state--> Zone::snapshot --ArcSwap::store--> Snapshot
//! UDP query --udp_loop--+
//! TCP query --hickory Server--+--> Handler: snapshot.load().resolve(name, type)
//!     -> Answer (AA, borrowed records) | Forward -> Forwarder (UDP, TCP on TC) -> reply
//! ```
//!
//! Lookups take no lock (an `ArcSwap` load); a new state is visible to every query that
//! starts after `set_state` returns. Nothing expires a snapshot: when the caches stop
//! changing (API server unreachable) the last one keeps being served.
//!
//! Transport: one SO_REUSEPORT UDP socket per receive loop (the kernel spreads clients over
//! them), each loop parsing with hickory-server's `Request` and answering cluster names inline
//! through the same `RequestHandler` code, encoded by hickory (`MessageResponse`), sent with
//! `try_send_to`; a forwarded query gets a task (at most 1024 in flight per loop). TCP, on the
//! same port, is hickory-server's `Server`. Where the loops run is [`DnsConfig::threads`]:
//! on the caller's runtime, or on threads of their own with a current-thread runtime each
//! (cheapest per query; see `dns-bench` in bench/README.md). hickory-server logs every TCP
//! request at `info` under the `hickory_server` target: a binary that logs at info should set
//! `hickory_server=warn`.

pub mod forward;
pub mod resolv;
mod server;
pub mod zone;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;

pub use resolv::{pod_resolv_conf, search_expansions, upstreams_from_resolv_conf};
pub use server::{serve, DnsHandle};

/// What the server answers for and where it forwards the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// The cluster domain, `cluster.local` (a trailing dot is accepted).
    pub domain: String,
    /// Resolvers for names outside `domain`, tried in order (see
    /// [`upstreams_from_resolv_conf`]). Empty: such names are REFUSED.
    pub upstreams: Vec<SocketAddr>,
    /// TTL of every cluster record, and the negative-caching TTL (SOA minimum).
    pub ttl: u32,
    /// Threads of the server's own, each a current-thread tokio runtime with one
    /// SO_REUSEPORT UDP socket per address (thread 0 also serves TCP): no cross-thread
    /// wake-up per query, the cheapest per query (see bench/README.md, dns-bench). 0: serve
    /// on the caller's runtime instead, one UDP socket per core (at most 4).
    pub threads: usize,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            domain: "cluster.local".into(),
            upstreams: Vec::new(),
            ttl: 5,
            threads: 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("cluster domain {domain:?} is not a DNS name: {reason}")]
    InvalidDomain { domain: String, reason: String },
    #[error("no address to listen on")]
    NoListenAddress,
    #[error("starting a DNS server thread")]
    Thread(#[source] std::io::Error),
    #[error("binding DNS {proto} on {addr}")]
    Bind {
        proto: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}
