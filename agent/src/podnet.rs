//! The node's pod network, as the agent learns it: the pod CIDR the API server gave this Node
//! (`spec.podCIDR`), the bridge gateway (its first address, also where the node's cluster DNS
//! answers) and the cluster domain. Shared by the Node watch (which sets it), the Docker
//! runtime (which makes the bridge network and runs pods on it) and pod sync (which writes the
//! pods' resolv.conf).

use std::net::Ipv4Addr;
use std::sync::Arc;

use arc_swap::ArcSwapOption;

/// An IPv4 prefix, `10.42.1.0/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Cidr {
    pub fn parse(s: &str) -> Result<Ipv4Cidr, String> {
        let bad = || format!("{s:?} is not an IPv4 CIDR (e.g. 10.42.1.0/24)");
        let (a, p) = s.trim().split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        if prefix > 30 {
            return Err(format!(
                "{s:?}: a pod CIDR needs room for pods (/30 or wider)"
            ));
        }
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        if u32::from(addr) & !mask != 0 {
            return Err(format!(
                "{s:?} has host bits set (did you mean {}/{prefix}?)",
                Ipv4Addr::from(u32::from(addr) & mask)
            ));
        }
        Ok(Ipv4Cidr { addr, prefix })
    }

    fn mask(&self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0)
    }

    /// The first usable address: the bridge's gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) + 1)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr)
    }
}

impl std::fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// What Docker pods on this node are attached to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    pub pod_cidr: Ipv4Cidr,
    /// The cluster DNS server pods use (the bridge gateway, where the agent's DNS listens).
    pub dns: Ipv4Addr,
    pub domain: String,
}

impl NetConfig {
    pub fn new(pod_cidr: Ipv4Cidr, domain: &str) -> NetConfig {
        NetConfig {
            pod_cidr,
            dns: pod_cidr.gateway(),
            domain: domain.to_string(),
        }
    }

    /// The resolv.conf of a pod in `namespace` with dnsPolicy ClusterFirst: the node's
    /// cluster DNS with Kubernetes' search path, so `redis-leader`, `redis-leader.default` and
    /// the full name all resolve.
    pub fn resolv_conf(&self, namespace: &str) -> String {
        crate::dns::pod_resolv_conf(self.dns.into(), namespace, &self.domain)
    }
}

/// The shared, swappable view; empty until the Node has a pod CIDR.
#[derive(Debug, Clone, Default)]
pub struct PodNetwork {
    current: Arc<ArcSwapOption<NetConfig>>,
}

impl PodNetwork {
    pub fn new() -> PodNetwork {
        PodNetwork::default()
    }

    pub fn get(&self) -> Option<Arc<NetConfig>> {
        self.current.load_full()
    }

    /// Set the configuration; returns whether it changed.
    pub fn set(&self, cfg: NetConfig) -> bool {
        if self.get().as_deref() == Some(&cfg) {
            return false;
        }
        self.current.store(Some(Arc::new(cfg)));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_strictly_and_give_their_gateway() {
        let c = Ipv4Cidr::parse("10.42.3.0/24").expect("cidr");
        assert_eq!(c.gateway(), Ipv4Addr::new(10, 42, 3, 1));
        assert!(c.contains(Ipv4Addr::new(10, 42, 3, 200)));
        assert!(!c.contains(Ipv4Addr::new(10, 42, 4, 1)));
        assert_eq!(c.to_string(), "10.42.3.0/24");
        let e = Ipv4Cidr::parse("10.42.3.1/24").expect_err("host bits");
        assert!(e.contains("10.42.3.0/24"), "{e}");
        assert!(Ipv4Cidr::parse("10.42.3.0").is_err());
        assert!(Ipv4Cidr::parse("10.42.3.0/31").is_err());
    }
}
