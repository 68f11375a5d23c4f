//! Pure translation of a Service and its Endpoints into the proxy's desired state.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};

use berth_proto::types::{EndpointSubset, Endpoints, Service, ServicePort};

use super::{ServiceBackends, LOOPBACK};

/// One [`ServiceBackends`] per TCP port of `service` that is served on this node: on its
/// nodePort (node address and 127.0.0.1), on the ClusterIP at the Service port, and for type
/// LoadBalancer on the node address at the Service port (as k3s's service load balancer
/// does), with the ready addresses of `endpoints` (None or empty: no backends, so connections
/// are closed at once rather than hung). A headless Service (clusterIP None) has no virtual
/// address to serve.
pub fn service_backends(
    service: &Service,
    endpoints: Option<&Endpoints>,
    node_addr: IpAddr,
) -> Vec<ServiceBackends> {
    let single_port = service.spec.ports.len() == 1;
    let cluster_ip: Option<IpAddr> = service
        .spec
        .cluster_ip
        .as_deref()
        .and_then(|ip| ip.parse().ok())
        .filter(|ip: &IpAddr| !ip.is_unspecified());
    let load_balancer = service.spec.type_.as_deref() == Some("LoadBalancer");
    service
        .spec
        .ports
        .iter()
        .filter(|port| {
            port.protocol
                .as_deref()
                .is_none_or(|p| p.eq_ignore_ascii_case("TCP"))
        })
        .filter_map(|port| {
            let node_port = port
                .node_port
                .and_then(|p| u16::try_from(p).ok())
                .unwrap_or(0);
            let service_port = u16::try_from(port.port).ok().filter(|p| *p != 0);
            let mut also_listen = Vec::new();
            if let (Some(ip), Some(p)) = (cluster_ip, service_port) {
                also_listen.push(SocketAddr::new(ip, p));
            }
            if let (true, Some(p)) = (load_balancer, service_port) {
                also_listen.push(SocketAddr::new(node_addr, p));
            }
            if node_port == 0 && also_listen.is_empty() {
                return None;
            }
            let mut backends = BTreeSet::new();
            for subset in endpoints.map(|e| e.subsets.as_slice()).unwrap_or_default() {
                let Some(target) = subset_port(subset, port, single_port) else {
                    continue;
                };
                for address in &subset.addresses {
                    if let Ok(ip) = address.ip.parse::<IpAddr>() {
                        backends.insert(SocketAddr::new(ip, target));
                    }
                }
            }
            let mut listen_addrs = Vec::new();
            if node_port != 0 {
                listen_addrs.push(node_addr);
                if node_addr != LOOPBACK {
                    listen_addrs.push(LOOPBACK);
                }
            }
            Some(ServiceBackends {
                namespace: service.metadata.namespace.clone(),
                name: service.metadata.name.clone(),
                port_name: port.name.clone(),
                node_port,
                listen_addrs,
                also_listen,
                backends: backends.into_iter().collect(),
            })
        })
        .collect()
}

/// The ClusterIPs this node must hold as local addresses so that the proxy can listen on
/// them (every Service's, headless ones have none).
pub fn cluster_ips(services: &[Service]) -> BTreeSet<std::net::Ipv4Addr> {
    services
        .iter()
        .filter_map(|s| s.spec.cluster_ip.as_deref()?.parse().ok())
        .filter(|ip: &std::net::Ipv4Addr| !ip.is_unspecified())
        .collect()
}

/// The whole desired set for this node: every port with a nodePort of every Service, joined
/// with the Endpoints object of the same namespace and name. Pass the result to
/// [`super::ProxyHandle::set_services`] after any change of a Service or an Endpoints.
pub fn desired_services(
    services: &[Service],
    endpoints: &[Endpoints],
    node_addr: IpAddr,
) -> Vec<ServiceBackends> {
    let by_key: HashMap<(&str, &str), &Endpoints> = endpoints
        .iter()
        .map(|e| ((e.metadata.namespace.as_str(), e.metadata.name.as_str()), e))
        .collect();
    services
        .iter()
        .flat_map(|svc| {
            let key = (svc.metadata.namespace.as_str(), svc.metadata.name.as_str());
            service_backends(svc, by_key.get(&key).copied(), node_addr)
        })
        .collect()
}

/// The endpoint port that serves `port` in `subset`: the one with the same name; for a
/// single-port Service also a subset's only port whatever its name.
fn subset_port(subset: &EndpointSubset, port: &ServicePort, single_port: bool) -> Option<u16> {
    let by_name = subset.ports.iter().find(|p| p.name == port.name);
    let chosen = match by_name {
        Some(p) => Some(p),
        None if single_port && subset.ports.len() == 1 => subset.ports.first(),
        None => None,
    }?;
    u16::try_from(chosen.port).ok().filter(|p| *p != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::types::{EndpointAddress, EndpointPort, ObjectMeta, ServiceSpec};

    fn service(ports: &[(&str, Option<i32>)]) -> Service {
        Service {
            metadata: ObjectMeta {
                name: "web".into(),
                namespace: "default".into(),
                ..Default::default()
            },
            spec: ServiceSpec {
                ports: ports
                    .iter()
                    .map(|(name, node_port)| ServicePort {
                        name: (*name).into(),
                        port: 80,
                        node_port: *node_port,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn subset(ready: &[&str], not_ready: &[&str], ports: &[(&str, i32)]) -> EndpointSubset {
        let addr = |ip: &&str| EndpointAddress {
            ip: (*ip).into(),
            ..Default::default()
        };
        EndpointSubset {
            addresses: ready.iter().map(addr).collect(),
            not_ready_addresses: not_ready.iter().map(addr).collect(),
            ports: ports
                .iter()
                .map(|(name, port)| EndpointPort {
                    name: (*name).into(),
                    port: *port,
                    protocol: None,
                })
                .collect(),
        }
    }

    fn endpoints(subsets: Vec<EndpointSubset>) -> Endpoints {
        Endpoints {
            subsets,
            ..Default::default()
        }
    }

    fn node() -> IpAddr {
        "10.0.0.5".parse().expect("ip")
    }

    #[test]
    fn ready_addresses_become_backends_and_not_ready_are_left_out() {
        let svc = service(&[("http", Some(30080))]);
        let eps = endpoints(vec![
            subset(&["10.0.0.1"], &["10.0.0.9"], &[("http", 31001)]),
            subset(&["10.0.0.2"], &[], &[("http", 31002)]),
        ]);
        let out = service_backends(&svc, Some(&eps), node());
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].node_port, 30080);
        assert_eq!(out[0].port_name, "http");
        assert_eq!(
            out[0].backends,
            vec![
                "10.0.0.1:31001".parse().expect("addr"),
                "10.0.0.2:31002".parse().expect("addr")
            ]
        );
        assert_eq!(out[0].listen_addrs, vec![node(), LOOPBACK]);
    }

    #[test]
    fn ports_without_node_port_are_skipped_and_ports_match_by_name() {
        let svc = service(&[
            ("http", Some(30080)),
            ("admin", None),
            ("metrics", Some(30090)),
        ]);
        let eps = endpoints(vec![subset(
            &["10.0.0.1"],
            &[],
            &[("metrics", 9100), ("http", 8080), ("admin", 9000)],
        )]);
        let out = service_backends(&svc, Some(&eps), node());
        let got: Vec<(String, u16, Vec<SocketAddr>)> = out
            .into_iter()
            .map(|s| (s.port_name, s.node_port, s.backends))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "http".to_string(),
                    30080,
                    vec!["10.0.0.1:8080".parse().expect("addr")]
                ),
                (
                    "metrics".to_string(),
                    30090,
                    vec!["10.0.0.1:9100".parse().expect("addr")]
                ),
            ]
        );
    }

    #[test]
    fn desired_services_joins_endpoints_by_namespace_and_name() {
        let mut other_ns = service(&[("http", Some(30081))]);
        other_ns.metadata.namespace = "prod".into();
        let svc = service(&[("http", Some(30080))]);
        let mut eps = endpoints(vec![subset(&["10.0.0.1"], &[], &[("http", 31001)])]);
        eps.metadata = svc.metadata.clone();
        let out = desired_services(&[svc, other_ns], &[eps], node());
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].namespace, "default");
        assert_eq!(out[0].backends.len(), 1);
        assert_eq!(out[1].namespace, "prod");
        assert!(
            out[1].backends.is_empty(),
            "endpoints of another namespace must not leak"
        );
    }

    #[test]
    fn single_port_service_accepts_an_unnamed_endpoint_port() {
        let svc = service(&[("http", Some(30080))]);
        let eps = endpoints(vec![subset(&["10.0.0.1"], &[], &[("", 31001)])]);
        let out = service_backends(&svc, Some(&eps), node());
        assert_eq!(
            out[0].backends,
            vec!["10.0.0.1:31001".parse().expect("addr")]
        );
    }

    #[test]
    fn missing_endpoints_give_an_empty_backend_set_not_no_listener() {
        let svc = service(&[("", Some(30080))]);
        let out = service_backends(&svc, None, node());
        assert_eq!(out.len(), 1);
        assert!(out[0].backends.is_empty());
    }

    #[test]
    fn loopback_node_listens_once_and_bad_addresses_are_ignored() {
        let svc = service(&[("", Some(30080))]);
        let eps = endpoints(vec![subset(&["not-an-ip", "127.0.0.1"], &[], &[("", 0)])]);
        let out = service_backends(&svc, Some(&eps), LOOPBACK);
        assert_eq!(out[0].listen_addrs, vec![LOOPBACK]);
        assert!(out[0].backends.is_empty(), "port 0 is not a backend");
        let svc = service(&[("", Some(70000))]);
        assert!(service_backends(&svc, None, LOOPBACK).is_empty());
    }

    #[test]
    fn cluster_ip_and_load_balancer_ports_are_served_at_the_service_port() {
        let mut svc = service(&[("http", None)]);
        svc.spec.cluster_ip = Some("10.43.0.10".into());
        let eps = endpoints(vec![subset(&["10.42.1.5"], &[], &[("http", 8080)])]);
        let out = service_backends(&svc, Some(&eps), node());
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].node_port, 0);
        assert!(out[0].listen_addrs.is_empty());
        assert_eq!(
            out[0].also_listen,
            vec!["10.43.0.10:80".parse::<SocketAddr>().expect("addr")]
        );
        assert_eq!(
            out[0].backends,
            vec!["10.42.1.5:8080".parse().expect("addr")]
        );
        svc.spec.type_ = Some("LoadBalancer".into());
        svc.spec.ports[0].node_port = Some(30080);
        let out = service_backends(&svc, Some(&eps), node());
        assert_eq!(out[0].node_port, 30080);
        assert_eq!(
            out[0].also_listen,
            vec![
                "10.43.0.10:80".parse::<SocketAddr>().expect("addr"),
                "10.0.0.5:80".parse().expect("addr")
            ]
        );
        assert_eq!(
            cluster_ips(&[svc.clone()]).into_iter().collect::<Vec<_>>(),
            vec!["10.43.0.10".parse::<std::net::Ipv4Addr>().expect("ip")]
        );
        // Headless: nothing to listen on.
        svc.spec.cluster_ip = Some("None".into());
        svc.spec.type_ = None;
        svc.spec.ports[0].node_port = None;
        assert!(service_backends(&svc, Some(&eps), node()).is_empty());
        assert!(cluster_ips(&[svc]).is_empty());
    }
}
