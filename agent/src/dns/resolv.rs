//! resolv.conf on both sides of the cluster DNS server: the host's, read for the upstream
//! resolvers, and the pods', written so short Service names resolve (and the pure model of
//! how a stub resolver expands a name with that search path).

use std::net::{IpAddr, SocketAddr};

/// The `nameserver` lines of a resolv.conf, in order, on port 53 (duplicates dropped;
/// comments, other options and unparsable addresses ignored; an IPv6 zone suffix `%eth0` is
/// dropped with the address, as the standard library cannot parse it).
///
/// Loopback resolvers (systemd-resolved's 127.0.0.53, a local dnsmasq) are kept: unlike
/// CoreDNS in a pod, this server runs in the agent on the host's network, where they are
/// reachable, and they know the host's split-DNS set-up. The one loop that matters, an
/// upstream that is this server itself, is dropped by [`super::serve`] (an upstream equal to
/// one of its bound addresses).
pub fn upstreams_from_resolv_conf(text: &str) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or_default();
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(Ok(ip)) = words.next().map(str::parse::<IpAddr>) else {
            continue;
        };
        let addr = SocketAddr::new(ip, 53);
        if !out.contains(&addr) {
            out.push(addr);
        }
    }
    out
}

/// The search list of a pod in `namespace`: `NS.svc.DOMAIN svc.DOMAIN DOMAIN`.
fn search_list(namespace: &str, domain: &str) -> [String; 3] {
    let domain = domain.trim_matches('.');
    [
        format!("{namespace}.svc.{domain}"),
        format!("svc.{domain}"),
        domain.to_string(),
    ]
}

/// The resolv.conf Kubernetes writes for a `ClusterFirst` pod: this server, the namespace's
/// search path, `ndots:5` (so `redis-leader.default` is tried under the search path first).
pub fn pod_resolv_conf(nameserver: IpAddr, namespace: &str, domain: &str) -> String {
    let [a, b, c] = search_list(namespace, domain);
    format!("nameserver {nameserver}\nsearch {a} {b} {c}\noptions ndots:5\n")
}

/// The fully-qualified names a glibc/musl-style stub resolver with [`pod_resolv_conf`]'s
/// search path tries for `name`, in order (each tried on NXDOMAIN or NODATA of the previous):
/// a name ending in `.` is absolute and tried alone; one with at least `ndots` dots is tried
/// as-is first, then under each search domain; a shorter one under the search domains first
/// and as-is last.
pub fn search_expansions(name: &str, namespace: &str, domain: &str, ndots: usize) -> Vec<String> {
    if name.ends_with('.') {
        return vec![name.to_string()];
    }
    let searched = search_list(namespace, domain).map(|s| format!("{name}.{s}."));
    let absolute = format!("{name}.");
    if name.matches('.').count() >= ndots {
        std::iter::once(absolute).chain(searched).collect()
    } else {
        searched
            .into_iter()
            .chain(std::iter::once(absolute))
            .collect()
    }
}
