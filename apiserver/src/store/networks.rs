//! Address allocation done inside the state machine, so every member computes the same answer
//! and a leader change can never hand out one address twice: each Service's ClusterIP from
//! `--service-cidr` and each Node's pod CIDR (a /24 by default) from `--cluster-cidr` (k3s's
//! defaults, 10.43.0.0/16 and 10.42.0.0/16). An allocation is the lowest free address (block)
//! not held by another object in the store, kept for the object's lifetime (updates that omit
//! it keep it; changing it is refused), and free again once the object is deleted.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An IPv4 network, `10.43.0.0/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    pub base: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.base)
    }

    /// Does this network share any address with `other`?
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains(other.base) || other.contains(self.base)
    }

    fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }

    /// The `i`-th address.
    fn nth(&self, i: u64) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base).wrapping_add(i as u32))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Cidr, String> {
        let (ip, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR: write it as 10.43.0.0/16"))?;
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|_| format!("{s:?}: {ip:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| (1..=30).contains(p))
            .ok_or_else(|| format!("{s:?}: the prefix length must be 1-30"))?;
        let c = Cidr { base: ip, prefix };
        if u32::from(ip) & c.mask() != u32::from(ip) {
            return Err(format!(
                "{s:?} has host bits set: did you mean {}/{prefix}?",
                Ipv4Addr::from(u32::from(ip) & c.mask())
            ));
        }
        Ok(c)
    }
}

impl TryFrom<String> for Cidr {
    type Error = String;
    fn try_from(s: String) -> Result<Cidr, String> {
        s.parse()
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> String {
        c.to_string()
    }
}

/// The proposer's address ranges, carried in every command (like the node-port range).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Networks {
    pub service_cidr: Cidr,
    pub cluster_cidr: Cidr,
    /// Prefix length of each node's pod CIDR.
    pub node_prefix: u8,
}

impl Default for Networks {
    fn default() -> Self {
        Networks {
            service_cidr: Cidr {
                base: Ipv4Addr::new(10, 43, 0, 0),
                prefix: 16,
            },
            cluster_cidr: Cidr {
                base: Ipv4Addr::new(10, 42, 0, 0),
                prefix: 16,
            },
            node_prefix: 24,
        }
    }
}

impl Networks {
    /// Refuse overlapping ranges and a node prefix that does not fit the cluster CIDR.
    pub fn check(&self) -> Result<(), String> {
        if self.service_cidr.overlaps(&self.cluster_cidr) {
            return Err(format!(
                "--service-cidr {} overlaps --cluster-cidr {}: pick disjoint ranges",
                self.service_cidr, self.cluster_cidr
            ));
        }
        if self.node_prefix < self.cluster_cidr.prefix || self.node_prefix > 30 {
            return Err(format!(
                "node pod CIDRs of /{} do not fit in --cluster-cidr {}",
                self.node_prefix, self.cluster_cidr
            ));
        }
        Ok(())
    }

    /// The lowest service IP (skipping the network and broadcast addresses) not in `used`.
    pub fn free_service_ip(&self, used: &std::collections::BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
        let c = self.service_cidr;
        (1..c.size() - 1)
            .map(|i| c.nth(i))
            .find(|ip| !used.contains(ip))
    }

    /// Is `ip` a usable service IP (in range, not the network or broadcast address)?
    pub fn service_ip_usable(&self, ip: Ipv4Addr) -> bool {
        let c = self.service_cidr;
        c.contains(ip) && ip != c.nth(0) && ip != c.nth(c.size() - 1)
    }

    /// The lowest node block not in `used`.
    pub fn free_pod_cidr(&self, used: &std::collections::BTreeSet<Cidr>) -> Option<Cidr> {
        let blocks = 1u64 << (self.node_prefix - self.cluster_cidr.prefix);
        let step = 1u64 << (32 - u32::from(self.node_prefix));
        (0..blocks)
            .map(|i| Cidr {
                base: self.cluster_cidr.nth(i * step),
                prefix: self.node_prefix,
            })
            .find(|c| !used.contains(c))
    }
}

impl PartialOrd for Cidr {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Cidr {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.base, self.prefix).cmp(&(other.base, other.prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn cidrs_parse_like_kubernetes_flags_and_say_what_is_wrong() {
        let c: Cidr = "10.43.0.0/16".parse().expect("parses");
        assert!(c.contains(Ipv4Addr::new(10, 43, 255, 1)));
        assert!(!c.contains(Ipv4Addr::new(10, 44, 0, 1)));
        assert!("10.43.0.1/16"
            .parse::<Cidr>()
            .expect_err("host bits")
            .contains("did you mean 10.43.0.0/16"));
        assert!("10.43.0.0".parse::<Cidr>().is_err());
        assert!("10.43.0.0/33".parse::<Cidr>().is_err());
        let n = Networks::default();
        n.check().expect("defaults are disjoint");
        let bad = Networks {
            service_cidr: "10.42.128.0/20".parse().expect("cidr"),
            ..n
        };
        assert!(bad.check().expect_err("overlap").contains("overlaps"));
    }

    #[test]
    fn allocation_takes_the_lowest_free_address_and_block() {
        let n = Networks {
            service_cidr: "10.43.0.0/30".parse().expect("cidr"),
            ..Networks::default()
        };
        let mut used = BTreeSet::new();
        assert_eq!(n.free_service_ip(&used), Some(Ipv4Addr::new(10, 43, 0, 1)));
        used.insert(Ipv4Addr::new(10, 43, 0, 1));
        assert_eq!(n.free_service_ip(&used), Some(Ipv4Addr::new(10, 43, 0, 2)));
        used.insert(Ipv4Addr::new(10, 43, 0, 2));
        assert_eq!(
            n.free_service_ip(&used),
            None,
            "network and broadcast are never handed out"
        );
        assert!(!n.service_ip_usable(Ipv4Addr::new(10, 43, 0, 3)));

        let n = Networks {
            cluster_cidr: "10.42.0.0/23".parse().expect("cidr"),
            ..Networks::default()
        };
        let mut blocks = BTreeSet::new();
        let a = n.free_pod_cidr(&blocks).expect("first");
        assert_eq!(a.to_string(), "10.42.0.0/24");
        blocks.insert(a);
        assert_eq!(
            n.free_pod_cidr(&blocks).expect("second").to_string(),
            "10.42.1.0/24"
        );
        blocks.insert("10.42.1.0/24".parse().expect("cidr"));
        assert_eq!(n.free_pod_cidr(&blocks), None);
    }
}
