//! Host-port allocation (Nomad-style networking): each container port of a pod is published on
//! a node port taken from a configured range; an endpoint is `node address : host port`.
//!
//! Allocations are per pod and sticky for the pod's life (restarts keep their ports). They are
//! recorded in Pod `status.hostPorts` and in the workload's own labels, so an agent restarted
//! from nothing re-derives them with [`HostPorts::reserve`] before allocating anything new, and
//! frees a pod's ports when its last workload is gone ([`HostPorts::release`]).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;

use berth_proto::types::{HostPortMapping, PodSpec};

use crate::runtime::PortBinding;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HostPortError {
    #[error("no free host port left in {start}-{end} for pod {pod}: widen --host-port-range or run fewer pods with ports on this node")]
    Exhausted { start: u16, end: u16, pod: String },
    #[error("host port {port} requested by pod {pod} is already used by pod {owner}")]
    Conflict {
        port: u16,
        pod: String,
        owner: String,
    },
    #[error("invalid host port range {0:?}: use START-END, e.g. 20000-29999")]
    BadRange(String),
}

/// Parse `START-END`.
pub fn parse_range(s: &str) -> Result<RangeInclusive<u16>, HostPortError> {
    let bad = || HostPortError::BadRange(s.to_string());
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let (a, b): (u16, u16) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if a == 0 || a > b {
        return Err(bad());
    }
    Ok(a..=b)
}

/// The allocator. Single owner (the pod sync loop); not shared.
#[derive(Debug, Clone)]
pub struct HostPorts {
    range: RangeInclusive<u16>,
    /// port -> pod uid
    used: BTreeMap<u16, String>,
    /// pod uid -> its bindings
    by_pod: BTreeMap<String, Vec<PortBinding>>,
    /// Next candidate, so freed ports are not immediately reused (old connections may linger).
    cursor: u16,
    /// Check that a port is bindable on the host before handing it out.
    probe_host: bool,
}

impl HostPorts {
    pub fn new(range: RangeInclusive<u16>) -> HostPorts {
        HostPorts {
            cursor: *range.start(),
            range,
            used: BTreeMap::new(),
            by_pod: BTreeMap::new(),
            probe_host: true,
        }
    }

    /// Skip the host bind check (unit tests).
    pub fn without_host_check(mut self) -> Self {
        self.probe_host = false;
        self
    }

    pub fn get(&self, pod_uid: &str) -> Option<&[PortBinding]> {
        self.by_pod.get(pod_uid).map(|v| v.as_slice())
    }

    pub fn pods(&self) -> BTreeSet<String> {
        self.by_pod.keys().cloned().collect()
    }

    /// Record ports already in use by a pod (from its workloads or its status).
    pub fn reserve(&mut self, pod_uid: &str, bindings: &[PortBinding]) {
        if bindings.is_empty() || self.by_pod.contains_key(pod_uid) {
            return;
        }
        for b in bindings.iter().filter(|b| b.host_port != 0) {
            self.used.insert(b.host_port, pod_uid.to_string());
        }
        self.by_pod.insert(pod_uid.to_string(), bindings.to_vec());
    }

    /// Ports for every container port of `spec`, allocating on first call for this pod.
    pub fn allocate(
        &mut self,
        pod_uid: &str,
        pod_name: &str,
        spec: &PodSpec,
    ) -> Result<Vec<PortBinding>, HostPortError> {
        self.allocate_with(pod_uid, pod_name, spec, true)
    }

    /// [`HostPorts::allocate`]; with `publish_all` false (a pod with its own address) only the
    /// ports that ask for a `hostPort` get one, the others have host port 0 (not published).
    pub fn allocate_with(
        &mut self,
        pod_uid: &str,
        pod_name: &str,
        spec: &PodSpec,
        publish_all: bool,
    ) -> Result<Vec<PortBinding>, HostPortError> {
        if let Some(b) = self.by_pod.get(pod_uid) {
            return Ok(b.clone());
        }
        let mut out: Vec<PortBinding> = Vec::new();
        let mut taken: Vec<u16> = Vec::new();
        let fail = |this: &mut HostPorts, taken: &[u16], e| {
            for p in taken {
                this.used.remove(p);
            }
            Err(e)
        };
        for c in &spec.containers {
            for p in &c.ports {
                let protocol = p.protocol.clone().unwrap_or_else(|| "TCP".to_string());
                let fixed = p.host_port.filter(|h| *h > 0).map(|h| h as u16);
                let port = match fixed {
                    Some(h) => {
                        if let Some(owner) = self.used.get(&h) {
                            let e = HostPortError::Conflict {
                                port: h,
                                pod: pod_name.to_string(),
                                owner: owner.clone(),
                            };
                            return fail(self, &taken, e);
                        }
                        h
                    }
                    None if !publish_all => {
                        out.push(PortBinding {
                            name: p.name.clone(),
                            container_port: p.container_port.clamp(0, u16::MAX as i32) as u16,
                            host_port: 0,
                            protocol,
                        });
                        continue;
                    }
                    None => match self.next_free() {
                        Some(h) => h,
                        None => {
                            let e = HostPortError::Exhausted {
                                start: *self.range.start(),
                                end: *self.range.end(),
                                pod: pod_name.to_string(),
                            };
                            return fail(self, &taken, e);
                        }
                    },
                };
                self.used.insert(port, pod_uid.to_string());
                taken.push(port);
                out.push(PortBinding {
                    name: p.name.clone(),
                    container_port: p.container_port.clamp(0, u16::MAX as i32) as u16,
                    host_port: port,
                    protocol,
                });
            }
        }
        // Per-container lookup needs the container name: keep order, callers split by spec.
        self.by_pod.insert(pod_uid.to_string(), out.clone());
        Ok(out)
    }

    fn next_free(&mut self) -> Option<u16> {
        let (start, end) = (*self.range.start(), *self.range.end());
        let span = (end - start) as u32 + 1;
        for i in 0..span {
            let p = start + (((self.cursor - start) as u32 + i) % span) as u16;
            if self.used.contains_key(&p) {
                continue;
            }
            if self.probe_host && !bindable(p) {
                continue;
            }
            self.cursor = if p == end { start } else { p + 1 };
            return Some(p);
        }
        None
    }

    /// Free a pod's ports.
    pub fn release(&mut self, pod_uid: &str) {
        if let Some(b) = self.by_pod.remove(pod_uid) {
            for p in b {
                if self.used.get(&p.host_port).map(|s| s.as_str()) == Some(pod_uid) {
                    self.used.remove(&p.host_port);
                }
            }
        }
    }
}

fn bindable(p: u16) -> bool {
    std::net::TcpListener::bind(("0.0.0.0", p)).is_ok()
}

/// Split a pod's bindings by container, in spec order (allocation order).
pub fn for_container<'a>(
    spec: &PodSpec,
    bindings: &'a [PortBinding],
    container: &str,
) -> &'a [PortBinding] {
    let mut i = 0;
    for c in &spec.containers {
        let n = c.ports.len().min(bindings.len().saturating_sub(i));
        if c.name == container {
            return &bindings[i..i + n];
        }
        i += n;
    }
    &[]
}

/// Status form of a pod's bindings.
pub fn to_status(spec: &PodSpec, bindings: &[PortBinding]) -> Vec<HostPortMapping> {
    let mut out = Vec::new();
    for c in &spec.containers {
        for b in for_container(spec, bindings, &c.name)
            .iter()
            .filter(|b| b.host_port != 0)
        {
            out.push(HostPortMapping {
                container_name: c.name.clone(),
                name: b.name.clone(),
                container_port: b.container_port as i32,
                host_port: b.host_port as i32,
                protocol: Some(b.protocol.clone()),
            });
        }
    }
    out
}

/// Bindings recorded in a pod's status (for re-deriving after a restart).
pub fn from_status(spec: &PodSpec, status: &[HostPortMapping]) -> Vec<PortBinding> {
    // One binding per port of the spec, in spec order, so `for_container` slices stay right;
    // a port not in the status is not published (host port 0: a pod with its own address).
    let mut out = Vec::new();
    for c in &spec.containers {
        for p in &c.ports {
            let protocol = p.protocol.clone().unwrap_or_else(|| "TCP".to_string());
            let m = status.iter().find(|m| {
                m.container_name == c.name
                    && m.container_port == p.container_port
                    && m.protocol.as_deref().unwrap_or("TCP") == protocol
            });
            out.push(PortBinding {
                name: p.name.clone(),
                container_port: p.container_port.clamp(0, u16::MAX as i32) as u16,
                host_port: m.map_or(0, |m| m.host_port.clamp(0, u16::MAX as i32) as u16),
                protocol,
            });
        }
    }
    if out.iter().all(|b| b.host_port == 0) {
        out.clear(); // nothing recorded: allocate afresh
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::types::{Container, ContainerPort};

    type PortSpec<'a> = (&'a str, i32, Option<i32>);

    fn spec(ports: &[(&str, &[PortSpec<'_>])]) -> PodSpec {
        PodSpec {
            containers: ports
                .iter()
                .map(|(name, ps)| Container {
                    name: name.to_string(),
                    ports: ps
                        .iter()
                        .map(|(n, c, h)| ContainerPort {
                            name: n.to_string(),
                            container_port: *c,
                            protocol: None,
                            host_port: *h,
                        })
                        .collect(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn allocation_is_sticky_per_pod_and_distinct_across_pods() {
        let mut hp = HostPorts::new(20000..=20009).without_host_check();
        let s = spec(&[("web", &[("http", 8080, None), ("admin", 9090, None)])]);
        let a = hp.allocate("a", "pa", &s).expect("a");
        assert_eq!(
            a.iter().map(|b| b.host_port).collect::<Vec<_>>(),
            vec![20000, 20001]
        );
        assert_eq!(hp.allocate("a", "pa", &s).expect("again"), a);
        let b = hp.allocate("b", "pb", &s).expect("b");
        assert_eq!(
            b.iter().map(|b| b.host_port).collect::<Vec<_>>(),
            vec![20002, 20003]
        );
    }

    #[test]
    fn released_ports_are_reused_only_after_the_rest_of_the_range() {
        let mut hp = HostPorts::new(20000..=20002).without_host_check();
        let s = spec(&[("web", &[("http", 8080, None)])]);
        hp.allocate("a", "pa", &s).expect("a");
        hp.release("a");
        assert_eq!(hp.allocate("b", "pb", &s).expect("b")[0].host_port, 20001);
        assert_eq!(hp.allocate("c", "pc", &s).expect("c")[0].host_port, 20002);
        assert_eq!(hp.allocate("d", "pd", &s).expect("d")[0].host_port, 20000);
        let e = hp.allocate("e", "pe", &s).expect_err("exhausted");
        assert!(matches!(e, HostPortError::Exhausted { .. }));
        // A failed allocation leaves nothing behind.
        hp.release("b");
        assert_eq!(hp.allocate("e", "pe", &s).expect("e")[0].host_port, 20001);
    }

    #[test]
    fn fixed_host_ports_are_honoured_and_conflicts_reported() {
        let mut hp = HostPorts::new(20000..=20009).without_host_check();
        let fixed = spec(&[("web", &[("http", 80, Some(28080))])]);
        assert_eq!(
            hp.allocate("a", "pa", &fixed).expect("a")[0].host_port,
            28080
        );
        let e = hp.allocate("b", "pb", &fixed).expect_err("conflict");
        assert_eq!(
            e,
            HostPortError::Conflict {
                port: 28080,
                pod: "pb".into(),
                owner: "a".into()
            }
        );
    }

    #[test]
    fn reserved_ports_survive_a_restart_and_status_round_trips() {
        let s = spec(&[
            ("a", &[("x", 1, None)]),
            ("b", &[("y", 2, None), ("z", 3, None)]),
        ]);
        let mut hp = HostPorts::new(20000..=20009).without_host_check();
        let b = hp.allocate("p", "p", &s).expect("alloc");
        let status = to_status(&s, &b);
        assert_eq!(status[1].container_name, "b");
        assert_eq!(from_status(&s, &status), b);
        assert_eq!(for_container(&s, &b, "b").len(), 2);
        assert_eq!(for_container(&s, &b, "a")[0].host_port, 20000);
        // A fresh allocator (agent restart) learns the ports and does not hand them out again.
        let mut hp2 = HostPorts::new(20000..=20009).without_host_check();
        hp2.reserve("p", &from_status(&s, &status));
        let other = hp2.allocate("q", "q", &s).expect("q");
        assert!(other
            .iter()
            .all(|o| b.iter().all(|x| x.host_port != o.host_port)));
    }

    #[test]
    fn range_parsing_rejects_nonsense() {
        assert_eq!(parse_range("20000-29999").expect("ok"), 20000..=29999);
        assert!(parse_range("3-1").is_err());
        assert!(parse_range("abc").is_err());
        assert!(parse_range("0-10").is_err());
    }
}
