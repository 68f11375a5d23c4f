//! The pure Service plan both proxy modes program: Services + Endpoints + this node's facts ->
//! one validated [`ServiceBackends`] per served Service port, tagged with the revision of the
//! cluster state it was built from.
//!
//! The userspace proxy ([`super::Proxy`]) binds listeners for it; the nftables datapath
//! ([`super::nft`]) renders it into one kernel table. Validation (a node port or address
//! served by one Service port only, the first by key wins) lives here so that both modes make
//! the same choice, and its tests cover both.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};

use berth_proto::types::{Endpoints, Service};

use super::{service_backends, ServiceBackends, ServiceFailure, ServiceKey, ServiceProblem};

/// What a node's proxy serves, in either mode.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyPlan {
    /// The highest `metadata.resourceVersion` among the Services and Endpoints this plan was
    /// built from: once the plan is programmed, every change up to this revision is in effect
    /// on this node (see [`super::datapath::PlanProgrammed`]).
    pub revision: u64,
    /// Valid Service ports, ordered by key.
    pub services: Vec<ServiceBackends>,
}

impl ProxyPlan {
    /// The plan for every Service (joined with the Endpoints of the same namespace and name)
    /// as served at `node_addr`, and the Service ports that cannot be served as asked.
    pub fn build<'a>(
        services: impl IntoIterator<Item = &'a Service>,
        endpoints: impl IntoIterator<Item = &'a Endpoints>,
        node_addr: IpAddr,
    ) -> (ProxyPlan, Vec<ServiceFailure>) {
        let mut revision = 0;
        let by_key: HashMap<(&str, &str), &Endpoints> = endpoints
            .into_iter()
            .map(|e| {
                revision = revision.max(e.metadata.resource_version);
                ((e.metadata.namespace.as_str(), e.metadata.name.as_str()), e)
            })
            .collect();
        let mut all = Vec::new();
        for svc in services {
            revision = revision.max(svc.metadata.resource_version);
            let key = (svc.metadata.namespace.as_str(), svc.metadata.name.as_str());
            all.extend(service_backends(svc, by_key.get(&key).copied(), node_addr));
        }
        let (valid, failures) = validate(all);
        (
            ProxyPlan {
                revision,
                services: valid.into_values().collect(),
            },
            failures,
        )
    }
}

/// Splits a desired set into the Service ports that can be served and the ones that cannot:
/// nothing to serve on, listed twice, or a node port / address another Service port (the
/// first by key, deterministically) already has.
pub fn validate(
    services: Vec<ServiceBackends>,
) -> (BTreeMap<ServiceKey, ServiceBackends>, Vec<ServiceFailure>) {
    let mut failures = Vec::new();
    let mut desired: BTreeMap<ServiceKey, ServiceBackends> = BTreeMap::new();
    for svc in services {
        let problem = if svc.node_port == 0 && svc.also_listen.is_empty() {
            Some(ServiceProblem::NodePortZero)
        } else if svc.listen_addrs.is_empty() && svc.also_listen.is_empty() {
            Some(ServiceProblem::NoListenAddress)
        } else if desired.contains_key(&svc.key()) {
            Some(ServiceProblem::DuplicateService)
        } else {
            None
        };
        match problem {
            Some(problem) => failures.push(ServiceFailure {
                service: svc.key(),
                node_port: svc.node_port,
                problem,
            }),
            None => {
                desired.insert(svc.key(), svc);
            }
        }
    }
    let mut port_owner: HashMap<u16, ServiceKey> = HashMap::new();
    let mut addr_owner: HashMap<SocketAddr, ServiceKey> = HashMap::new();
    desired.retain(|key, svc| {
        let owner = (svc.node_port != 0)
            .then(|| port_owner.get(&svc.node_port))
            .flatten()
            .or_else(|| svc.also_listen.iter().find_map(|a| addr_owner.get(a)));
        match owner {
            Some(owner) => {
                failures.push(ServiceFailure {
                    service: key.clone(),
                    node_port: svc.node_port,
                    problem: ServiceProblem::NodePortTaken { by: owner.clone() },
                });
                false
            }
            None => {
                if svc.node_port != 0 {
                    port_owner.insert(svc.node_port, key.clone());
                }
                for a in &svc.also_listen {
                    addr_owner.insert(*a, key.clone());
                }
                true
            }
        }
    });
    (desired, failures)
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::types::{
        EndpointAddress, EndpointPort, EndpointSubset, ObjectMeta, ServicePort, ServiceSpec,
    };

    fn svc(name: &str, rv: u64, cluster_ip: &str, node_port: Option<i32>) -> Service {
        Service {
            metadata: ObjectMeta {
                name: name.into(),
                namespace: "default".into(),
                resource_version: rv,
                ..Default::default()
            },
            spec: ServiceSpec {
                cluster_ip: Some(cluster_ip.into()),
                ports: vec![ServicePort {
                    name: "http".into(),
                    port: 80,
                    node_port,
                    ..Default::default()
                }],
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn eps(name: &str, rv: u64, ready: &[&str], not_ready: &[&str]) -> Endpoints {
        let addr = |ip: &&str| EndpointAddress {
            ip: (*ip).into(),
            ..Default::default()
        };
        Endpoints {
            metadata: ObjectMeta {
                name: name.into(),
                namespace: "default".into(),
                resource_version: rv,
                ..Default::default()
            },
            subsets: vec![EndpointSubset {
                addresses: ready.iter().map(addr).collect(),
                not_ready_addresses: not_ready.iter().map(addr).collect(),
                ports: vec![EndpointPort {
                    name: "http".into(),
                    port: 8080,
                    protocol: None,
                }],
            }],
            ..Default::default()
        }
    }

    #[test]
    fn plan_carries_the_highest_revision_and_only_ready_endpoints() {
        let services = [svc("web", 7, "10.43.0.10", Some(30080))];
        let endpoints = [eps("web", 12, &["10.42.0.5"], &["10.42.0.6"])];
        let (plan, failures) =
            ProxyPlan::build(&services, &endpoints, "10.0.0.5".parse().expect("ip"));
        assert!(failures.is_empty(), "{failures:?}");
        assert_eq!(plan.revision, 12);
        assert_eq!(plan.services.len(), 1);
        assert_eq!(
            plan.services[0].backends,
            vec!["10.42.0.5:8080".parse::<SocketAddr>().expect("addr")]
        );
    }

    #[test]
    fn a_node_port_taken_twice_goes_to_the_first_service_by_key() {
        let services = [
            svc("b-second", 1, "10.43.0.11", Some(30080)),
            svc("a-first", 2, "10.43.0.10", Some(30080)),
        ];
        let (plan, failures) = ProxyPlan::build(&services, [], "10.0.0.5".parse().expect("ip"));
        assert_eq!(plan.services.len(), 1);
        assert_eq!(plan.services[0].name, "a-first");
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].service.name, "b-second");
        assert!(
            failures[0]
                .to_string()
                .contains("already used by default/a-first:http"),
            "{}",
            failures[0]
        );
    }

    #[test]
    fn the_same_cluster_ip_and_port_twice_is_refused_for_the_second() {
        let services = [
            svc("a", 1, "10.43.0.10", None),
            svc("b", 1, "10.43.0.10", None),
        ];
        let (plan, failures) = ProxyPlan::build(&services, [], "10.0.0.5".parse().expect("ip"));
        assert_eq!(plan.services.len(), 1);
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].service.name, "b");
    }
}
