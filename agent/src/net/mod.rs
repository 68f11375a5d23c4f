//! Host network plumbing of a node: what the kernel needs so pods on different nodes reach
//! each other and pods reach Service ClusterIPs.
//!
//! Three level-triggered syncs, each given the whole desired state every time (idempotent,
//! and a failed step is repaired by the next call):
//!
//! - [`sync_routes`] ([`routes`]): flannel host-gw style, one route per other node's pod CIDR
//!   via that node's address, marked with [`ROUTE_PROTOCOL`] so only Berth's own routes are
//!   ever replaced or removed. Someone else's route for a pod CIDR is left alone and reported
//!   ([`NetError::ForeignRoute`]).
//! - [`sync_vips`] ([`vips`]): the dummy interface [`VIPS_INTERFACE`] (like kube-proxy's
//!   `kube-ipvs0`; an aliased ifb on kernels without the dummy driver) holds each ClusterIP as
//!   a /32, so the node's userspace proxy can listen on ClusterIP:port.
//!   [`remove_vips_interface`] tears it down.
//! - [`sync_firewall`] ([`firewall`]): iptables chains `BERTH-FORWARD` (filter) and
//!   `BERTH-POSTROUTING` (nat) that accept pod traffic through Docker's FORWARD DROP policy and
//!   masquerade pod egress that leaves the cluster CIDR; also `net.ipv4.ip_forward=1`.
//!   [`teardown_firewall`] removes them.
//!
//! ```text
//! Node list (pod CIDR, address) --> sync_routes --> main table, proto 66 routes
//! Service ClusterIPs -------------> sync_vips   --> berth-svc dummy, /32 addresses
//! cluster CIDR -------------------> sync_firewall -> iptables BERTH-* chains, ip_forward
//! ```
//!
//! Each function works on the network namespace of the calling thread (netlink sockets,
//! iptables children and /proc/sys/net all follow it), which is what the tests use to run a
//! "node" per namespace.
//!
//! The Service VIP path needs nothing beyond the /32 on `berth-svc`: a pod's packet to
//! ClusterIP:port arrives on its bridge, the destination is local, so it goes PREROUTING ->
//! INPUT (never FORWARD, so Docker's FORWARD DROP does not apply), and reverse-path filtering
//! checks the route back to the pod's source (its bridge), not the VIP's interface.
//! `route_localnet` only matters for 127.0.0.0/8 destinations. See `tests/hostnet.rs`
//! (`pod_reaches_vip_through_input_with_docker_rules_and_strict_rp_filter`).
//!
//! One interaction to know: Docker's nat PREROUTING and OUTPUT send every LOCAL destination
//! to its DOCKER chain, whose published-port rules (`! -i BRIDGE -p tcp --dport P -j DNAT`)
//! carry no `-d` unless the port was published on a specific host IP. A ClusterIP is a local
//! address, so ClusterIP:P is DNATed to the container that published P for clients on the
//! node itself and on other interfaces (pods on the same bridge are exempt). Publish host
//! ports on the node's address (HostIp), not 0.0.0.0, to keep the two apart.

pub mod firewall;
pub mod routes;
pub mod vips;

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

pub use firewall::{
    sync_firewall, teardown_firewall, Firewall, FirewallSync, FORWARD_CHAIN, POSTROUTING_CHAIN,
};
pub use routes::{sync_routes, RouteSync, ROUTE_PROTOCOL};
pub use vips::{remove_vips_interface, sync_vips, VipSync, VIPS_ALIAS, VIPS_INTERFACE};

/// What failed in the host plumbing, on which object, and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot open a netlink socket: {0}; the agent's host networking needs Linux")]
    NetlinkSocket(#[source] std::io::Error),
    #[error("netlink connection closed while trying to {op}; the next sync retries")]
    NetlinkClosed { op: String },
    /// A netlink request the kernel refused (or that could not be decoded).
    #[error("cannot {op} {object}: {cause}; {hint}")]
    Netlink {
        op: &'static str,
        object: String,
        /// The errno the kernel answered with, if it was a netlink error.
        errno: Option<i32>,
        cause: String,
        hint: &'static str,
    },
    #[error(
        "a route for pod CIDR {prefix} already exists and is not Berth's ({existing}); Berth \
         leaves it alone, so pods there are not reachable through Berth. Delete it \
         (`ip route del {prefix}`) if it is stale, or give the nodes pod CIDRs that do not \
         collide with this host's routes"
    )]
    ForeignRoute { prefix: Ipv4Net, existing: String },
    #[error(
        "pod CIDR {prefix} is given for two node addresses ({first} and {second}); the node \
         list is inconsistent, so Berth leaves the route for {prefix} as it is"
    )]
    DuplicatePodCidr {
        prefix: Ipv4Net,
        first: Ipv4Addr,
        second: Ipv4Addr,
    },
    #[error("{object} disappeared while Berth was setting it up (deleted concurrently?); the next sync retries")]
    Vanished { object: String },
    #[error(
        "interface {name} exists but is a {kind} link, not a dummy; Berth will not manage \
         Service IPs on it. Delete or rename it (`ip link del {name}`) and sync again"
    )]
    NotDummy { name: String, kind: String },
    #[error("`{program}` is not runnable: {source}; install iptables (the iptables-nft package) on the node")]
    IptablesMissing {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}; {hint}")]
    Iptables {
        command: String,
        status: String,
        stderr: String,
        hint: &'static str,
    },
    #[error("`{command}` did not finish within {seconds}s; another process may hold the xtables lock (/run/xtables.lock); the next sync retries")]
    IptablesTimeout { command: String, seconds: u64 },
    #[error("cannot set {path} to 1: {source}; needs root, and a writable /proc/sys (run the agent privileged / with CAP_NET_ADMIN)")]
    Sysctl {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Several independent steps of one sync failed; the others were applied.
    #[error("{} of the {what} steps failed: {}", .errors.len(), join(.errors))]
    Several {
        what: &'static str,
        errors: Vec<NetError>,
    },
}

impl NetError {
    /// The kernel or iptables refused for lack of privileges (not root / no CAP_NET_ADMIN).
    pub fn is_permission_denied(&self) -> bool {
        match self {
            NetError::Netlink { errno, .. } => {
                matches!(*errno, Some(e) if e == libc::EPERM || e == libc::EACCES)
            }
            NetError::Iptables { hint, .. } => *hint == IPTABLES_PERMISSION_HINT,
            NetError::Sysctl { source, .. } => {
                source.kind() == std::io::ErrorKind::PermissionDenied
            }
            NetError::Several { errors, .. } => errors.iter().any(NetError::is_permission_denied),
            _ => false,
        }
    }

    /// Folds step errors into one: none -> Ok, one -> itself, more -> [`NetError::Several`].
    fn from_steps(what: &'static str, mut errors: Vec<NetError>) -> Result<(), NetError> {
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(NetError::Several { what, errors }),
        }
    }
}

fn join(errors: &[NetError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

pub(crate) const IPTABLES_PERMISSION_HINT: &str = "needs root / CAP_NET_ADMIN";

/// The errno of a netlink error answer (positive), if it is one.
pub(crate) fn errno_of(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| c.get().abs()),
        _ => None,
    }
}

/// Maps a failed netlink request to [`NetError::Netlink`] with a hint for the common errnos;
/// `unreachable_hint` is used for ENETUNREACH (only route adds produce it).
pub(crate) fn netlink_error(
    op: &'static str,
    object: impl Into<String>,
    e: rtnetlink::Error,
    unreachable_hint: &'static str,
) -> NetError {
    let errno = errno_of(&e);
    let cause = match &e {
        rtnetlink::Error::NetlinkError(m) => m.to_io().to_string(),
        other => other.to_string(),
    };
    let hint = match errno {
        Some(libc::EPERM | libc::EACCES) => "needs root / CAP_NET_ADMIN",
        Some(libc::ENETUNREACH) => unreachable_hint,
        Some(libc::EEXIST) => "something else created it concurrently; the next sync re-reads it",
        _ => "the next sync retries",
    };
    NetError::Netlink {
        op,
        object: object.into(),
        errno,
        cause,
        hint,
    }
}

/// Runs `op` with a fresh rtnetlink handle whose connection is driven alongside it (no
/// spawned task: the socket lives exactly as long as this call).
pub(crate) async fn with_netlink<T, F>(what: &str, op: F) -> Result<T, NetError>
where
    F: AsyncFnOnce(rtnetlink::Handle) -> Result<T, NetError>,
{
    let (connection, handle, _messages) =
        rtnetlink::new_connection().map_err(NetError::NetlinkSocket)?;
    tokio::select! {
        r = op(handle) => r,
        () = connection => Err(NetError::NetlinkClosed { op: what.to_string() }),
    }
}

/// IPv4 addresses configured on any interface of this host (namespace).
pub(crate) async fn local_ipv4_addresses(
    handle: &rtnetlink::Handle,
) -> Result<std::collections::BTreeSet<Ipv4Addr>, NetError> {
    use futures::TryStreamExt;
    use rtnetlink::packet_route::{address::AddressAttribute, AddressFamily};

    let mut out = std::collections::BTreeSet::new();
    let mut dump = handle.address().get().execute();
    while let Some(msg) = dump
        .try_next()
        .await
        .map_err(|e| netlink_error("list", "the host's addresses", e, ""))?
    {
        if msg.header.family != AddressFamily::Inet {
            continue;
        }
        // IFA_LOCAL is this side's address; IFA_ADDRESS is the peer on point-to-point links
        // and only stands for the local address when IFA_LOCAL is absent.
        let local = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(std::net::IpAddr::V4(a)) => Some(*a),
            _ => None,
        });
        let address = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(std::net::IpAddr::V4(a)) => Some(*a),
            _ => None,
        });
        if let Some(a) = local.or(address) {
            out.insert(a);
        }
    }
    Ok(out)
}
