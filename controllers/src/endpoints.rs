//! The Endpoints controller's pure core: `plan(service, pods) -> Endpoints`.
//!
//! A pod with its own address (a Docker pod on the node's pod network: `status.podIP` differs
//! from `status.hostIP`) is reached at `podIP : containerPort`, as in Kubernetes. A pod that
//! shares its node's network (a process pod) is reached at `node address : host port`: the
//! host port the agent published for the container port the Service's targetPort names (by
//! number or by port name). Pods with the same resolved ports share a subset; ready pods go to
//! `addresses`, the others to `notReadyAddresses`.
//!
//! A terminating pod (deletionTimestamp set) is left out at once, so that proxies stop sending
//! it new connections before its node stops it (drain before stop). Only when the Service has
//! no ready endpoint otherwise are terminating pods that still pass readiness kept as ready
//! addresses (Kubernetes' "serving and terminating" fallback), so the last replicas keep
//! serving until their replacements are ready.

use std::collections::BTreeMap;

use berth_proto::selector::matches_labels;
use berth_proto::types::*;

/// Resolve one Service port to the host port `pod` published for it.
pub fn resolve_host_port(pod: &Pod, sp: &ServicePort) -> Option<i32> {
    let st = pod.status.as_ref()?;
    let target = sp
        .target_port
        .clone()
        .unwrap_or(IntOrString::Int(i64::from(sp.port)));
    let container_port = match &target {
        IntOrString::Int(n) => i32::try_from(*n).ok()?,
        IntOrString::String(name) => {
            if let Some(hp) = st.host_ports.iter().find(|h| h.name == *name) {
                return Some(hp.host_port);
            }
            // The name may be declared in the spec while the status mapping carries no name.
            pod.spec
                .containers
                .iter()
                .flat_map(|c| c.ports.iter())
                .find(|p| p.name == *name)?
                .container_port
        }
    };
    st.host_ports
        .iter()
        .find(|h| h.container_port == container_port)
        .map(|h| h.host_port)
        .filter(|p| *p > 0)
}

/// Resolve one Service port to the container port of `pod` it targets (by number, or by the
/// name of a container port).
pub fn resolve_container_port(pod: &Pod, sp: &ServicePort) -> Option<i32> {
    let target = sp
        .target_port
        .clone()
        .unwrap_or(IntOrString::Int(i64::from(sp.port)));
    match &target {
        IntOrString::Int(n) => i32::try_from(*n).ok().filter(|p| *p > 0),
        IntOrString::String(name) => pod
            .spec
            .containers
            .iter()
            .flat_map(|c| c.ports.iter())
            .find(|p| p.name == *name)
            .map(|p| p.container_port),
    }
}

/// Does the pod have an address of its own (the pod network), rather than its node's?
pub fn has_pod_network(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .is_some_and(|st| !st.pod_ip.is_empty() && st.pod_ip != st.host_ip)
}

/// The status a Service should have: for type LoadBalancer the addresses of the Ready nodes
/// (sorted), which every node's proxy serves at the Service port; None for other types.
pub fn load_balancer_status(svc: &Service, nodes: &[Node]) -> Option<ServiceStatus> {
    if svc.spec.type_.as_deref() != Some("LoadBalancer") {
        return None;
    }
    let mut ips: Vec<String> = nodes
        .iter()
        .filter(|n| n.is_ready())
        .filter_map(|n| n.address().map(str::to_string))
        .collect();
    ips.sort();
    ips.dedup();
    Some(ServiceStatus {
        load_balancer: Some(LoadBalancerStatus {
            ingress: ips
                .into_iter()
                .map(|ip| LoadBalancerIngress {
                    ip,
                    ..Default::default()
                })
                .collect(),
        }),
    })
}

/// Does `svc` select `pod`: same namespace, and a selector (not empty: a Service without one
/// has hand-managed Endpoints) whose every label the pod carries.
pub fn selects(svc: &Service, pod: &Pod) -> bool {
    !svc.spec.selector.is_empty()
        && pod.metadata.namespace == svc.metadata.namespace
        && matches_labels(&svc.spec.selector, &pod.metadata.labels)
}

type PortKey = Vec<(String, i32, Option<String>)>;

/// The annotation with the time of the change an Endpoints write reflects.
pub const LAST_CHANGE_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// The Endpoints object for `svc` (same name and namespace, owned by the Service), or `None`
/// for a Service without a selector (its Endpoints are managed by hand).
pub fn plan(svc: &Service, pods: &[Pod]) -> Option<Endpoints> {
    if svc.spec.selector.is_empty() {
        return None;
    }
    let mut subsets: BTreeMap<PortKey, (Vec<EndpointAddress>, Vec<EndpointAddress>)> =
        BTreeMap::new();
    let mut serving_terminating: Vec<(PortKey, EndpointAddress)> = Vec::new();
    for pod in pods.iter().filter(|p| selects(svc, p)) {
        let Some(st) = pod.status.as_ref() else {
            continue;
        };
        if st.host_ip.is_empty() || pod.is_terminal() {
            continue;
        }
        let own_ip = has_pod_network(pod);
        let ports: PortKey = svc
            .spec
            .ports
            .iter()
            .filter_map(|sp| {
                let port = if own_ip {
                    resolve_container_port(pod, sp)
                } else {
                    resolve_host_port(pod, sp)
                };
                port.map(|p| (sp.name.clone(), p, sp.protocol.clone()))
            })
            .collect();
        if ports.is_empty() && !svc.spec.ports.is_empty() {
            continue;
        }
        let addr = EndpointAddress {
            ip: if own_ip {
                st.pod_ip.clone()
            } else {
                st.host_ip.clone()
            },
            node_name: pod.spec.node_name.clone(),
            target_ref: Some(ObjectReference {
                kind: "Pod".into(),
                namespace: pod.metadata.namespace.clone(),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        };
        if pod.metadata.deletion_timestamp.is_some() {
            if pod.is_ready() {
                serving_terminating.push((ports, addr));
            }
            continue;
        }
        let entry = subsets.entry(ports).or_default();
        if pod.is_ready() {
            entry.0.push(addr);
        } else {
            entry.1.push(addr);
        }
    }
    if subsets.values().all(|(ready, _)| ready.is_empty()) {
        for (ports, addr) in serving_terminating {
            subsets.entry(ports).or_default().0.push(addr);
        }
    }
    let key = |a: &EndpointAddress| {
        (
            a.ip.clone(),
            a.target_ref
                .as_ref()
                .map(|r| r.name.clone())
                .unwrap_or_default(),
        )
    };
    let subsets = subsets
        .into_iter()
        .map(|(ports, (mut ready, mut not_ready))| {
            ready.sort_by_key(key);
            not_ready.sort_by_key(key);
            EndpointSubset {
                addresses: ready,
                not_ready_addresses: not_ready,
                ports: ports
                    .into_iter()
                    .map(|(name, port, protocol)| EndpointPort {
                        name,
                        port,
                        protocol,
                    })
                    .collect(),
            }
        })
        .collect();
    Some(Endpoints {
        metadata: ObjectMeta {
            name: svc.metadata.name.clone(),
            namespace: svc.metadata.namespace.clone(),
            labels: svc.metadata.labels.clone(),
            owner_references: vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Service".into(),
                name: svc.metadata.name.clone(),
                uid: svc.metadata.uid.clone(),
                controller: true,
            }],
            ..Default::default()
        },
        subsets,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_testkit::{PodBuilder, ServiceBuilder};

    fn ips(s: &EndpointSubset) -> Vec<String> {
        s.addresses.iter().map(|a| a.ip.clone()).collect()
    }

    #[test]
    fn endpoints_are_node_address_and_published_host_port() {
        let svc = ServiceBuilder::new("web").port("http", 80, 8080).build();
        let pods = vec![
            PodBuilder::new("a")
                .label("app", "web")
                .node("n1")
                .host_ip("10.0.0.1")
                .published("", 8080, 31001)
                .ready()
                .build(),
            PodBuilder::new("b")
                .label("app", "web")
                .node("n2")
                .host_ip("10.0.0.2")
                .published("", 8080, 31002)
                .not_ready()
                .build(),
            PodBuilder::new("other")
                .label("app", "db")
                .node("n2")
                .host_ip("10.0.0.2")
                .published("", 8080, 31003)
                .ready()
                .build(),
        ];
        let ep = plan(&svc, &pods).expect("endpoints");
        assert_eq!(ep.metadata.name, "web");
        assert_eq!(ep.metadata.owner_references[0].uid, svc.metadata.uid);
        assert_eq!(ep.subsets.len(), 2);
        let s1 = ep
            .subsets
            .iter()
            .find(|s| s.ports[0].port == 31001)
            .expect("31001");
        assert_eq!(ips(s1), vec!["10.0.0.1"]);
        assert_eq!(s1.ports[0].name, "http");
        let s2 = ep
            .subsets
            .iter()
            .find(|s| s.ports[0].port == 31002)
            .expect("31002");
        assert!(s2.addresses.is_empty());
        assert_eq!(s2.not_ready_addresses[0].ip, "10.0.0.2");
    }

    #[test]
    fn pods_on_the_pod_network_are_pod_ip_and_container_port_beside_host_port_pods() {
        let svc = ServiceBuilder::new("web")
            .named_port("http", 80, "web")
            .build();
        let docker = PodBuilder::new("a")
            .label("app", "web")
            .host_ip("10.0.0.1")
            .pod_ip("10.42.0.7")
            .port("web", 8080)
            .ready()
            .build();
        let process = PodBuilder::new("b")
            .label("app", "web")
            .host_ip("10.0.0.2")
            .pod_ip("10.0.0.2")
            .port("web", 8080)
            .published("web", 8080, 31001)
            .ready()
            .build();
        let ep = plan(&svc, &[docker, process]).expect("endpoints");
        let mut got: Vec<(String, i32)> = ep
            .subsets
            .iter()
            .flat_map(|s| s.addresses.iter().map(|a| (a.ip.clone(), s.ports[0].port)))
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![("10.0.0.2".into(), 31001), ("10.42.0.7".into(), 8080)]
        );
    }

    #[test]
    fn load_balancer_ingress_lists_the_ready_nodes_addresses() {
        let mut svc = ServiceBuilder::new("web").port("http", 80, 8080).build();
        let nodes = vec![
            berth_testkit::NodeBuilder::new("b")
                .address("10.0.0.2")
                .ready()
                .build(),
            berth_testkit::NodeBuilder::new("a")
                .address("10.0.0.1")
                .ready()
                .build(),
            berth_testkit::NodeBuilder::new("c")
                .address("10.0.0.3")
                .build(),
        ];
        assert_eq!(load_balancer_status(&svc, &nodes), None);
        svc.spec.type_ = Some("LoadBalancer".into());
        let st = load_balancer_status(&svc, &nodes).expect("a status");
        let ips: Vec<String> = st
            .load_balancer
            .expect("lb")
            .ingress
            .into_iter()
            .map(|i| i.ip)
            .collect();
        assert_eq!(ips, vec!["10.0.0.1", "10.0.0.2"]);
    }

    #[test]
    fn pods_with_the_same_ports_share_a_subset() {
        let svc = ServiceBuilder::new("web").port("", 80, 8080).build();
        let pods: Vec<Pod> = ["10.0.0.2", "10.0.0.1"]
            .iter()
            .enumerate()
            .map(|(i, ip)| {
                PodBuilder::new(&format!("p{i}"))
                    .label("app", "web")
                    .host_ip(ip)
                    .published("", 8080, 30000)
                    .ready()
                    .build()
            })
            .collect();
        let ep = plan(&svc, &pods).expect("endpoints");
        assert_eq!(ep.subsets.len(), 1);
        assert_eq!(ips(&ep.subsets[0]), vec!["10.0.0.1", "10.0.0.2"]);
    }

    #[test]
    fn target_port_resolves_by_name() {
        let svc = ServiceBuilder::new("web")
            .named_port("http", 80, "web")
            .build();
        let by_status = PodBuilder::new("a")
            .label("app", "web")
            .host_ip("h")
            .published("web", 9000, 31000)
            .ready()
            .build();
        let by_spec = PodBuilder::new("b")
            .label("app", "web")
            .host_ip("h")
            .port("web", 9001)
            .published("", 9001, 31001)
            .ready()
            .build();
        let unmatched = PodBuilder::new("c")
            .label("app", "web")
            .host_ip("h")
            .published("metrics", 9100, 31100)
            .ready()
            .build();
        let ep = plan(&svc, &[by_status, by_spec, unmatched]).expect("endpoints");
        let mut ports: Vec<i32> = ep.subsets.iter().map(|s| s.ports[0].port).collect();
        ports.sort();
        assert_eq!(ports, vec![31000, 31001]);
    }

    #[test]
    fn pods_without_host_ip_or_terminating_are_left_out() {
        let svc = ServiceBuilder::new("web").port("", 80, 8080).build();
        let pods = vec![
            PodBuilder::new("pending")
                .label("app", "web")
                .published("", 8080, 1)
                .build(),
            PodBuilder::new("bye")
                .label("app", "web")
                .host_ip("h")
                .published("", 8080, 2)
                .ready()
                .deleting(berth_testkit::builders::at(1))
                .build(),
            PodBuilder::new("stays")
                .label("app", "web")
                .host_ip("h")
                .published("", 8080, 3)
                .ready()
                .build(),
        ];
        let e = plan(&svc, &pods).expect("endpoints");
        let listed: Vec<&str> = e
            .subsets
            .iter()
            .flat_map(|s| s.addresses.iter().chain(&s.not_ready_addresses))
            .filter_map(|a| a.target_ref.as_ref().map(|r| r.name.as_str()))
            .collect();
        assert_eq!(listed, vec!["stays"]);
        let no_selector = ServiceBuilder::new("ext").selector(&[]).build();
        assert!(plan(&no_selector, &pods).is_none());
    }

    #[test]
    fn terminating_pods_still_ready_serve_only_when_nothing_else_is_ready() {
        let svc = ServiceBuilder::new("web").port("", 80, 8080).build();
        let bye = |name: &str, port, ready| {
            let b = PodBuilder::new(name)
                .label("app", "web")
                .host_ip("h")
                .published("", 8080, port)
                .deleting(berth_testkit::builders::at(1));
            if ready { b.ready() } else { b.not_ready() }.build()
        };
        let starting = PodBuilder::new("new")
            .label("app", "web")
            .host_ip("h")
            .published("", 8080, 9)
            .not_ready()
            .build();
        let pods = vec![bye("old", 1, true), bye("dead", 2, false), starting];
        let e = plan(&svc, &pods).expect("endpoints");
        let ready: Vec<&str> = e
            .subsets
            .iter()
            .flat_map(|s| &s.addresses)
            .filter_map(|a| a.target_ref.as_ref().map(|r| r.name.as_str()))
            .collect();
        assert_eq!(
            ready,
            vec!["old"],
            "the serving terminating pod is the fallback"
        );
    }
}
