//! Service discovery through the environment, as Kubernetes does it: a container started in
//! namespace N sees `{SVC}_SERVICE_HOST` / `{SVC}_SERVICE_PORT` (and `{SVC}_SERVICE_PORT_{PORT}`
//! for named ports) for every Service of N that exists when it starts.
//!
//! For a Service with a ClusterIP the host is that IP and the port the Service port, with
//! Docker-link variables beside them (`{SVC}_PORT=tcp://IP:PORT`, `{SVC}_PORT_80_TCP_ADDR`, ...),
//! exactly as the kubelet writes them; every node's proxy serves the ClusterIP. Headless
//! Services get none (as in Kubernetes: there is no one address). A Service without a
//! ClusterIP (stored before the API server allocated them) falls back to this node's address
//! and the Service's node port, i.e. the node's own proxy.
//! The agent's Service watch (which also programs the proxy) keeps a [`ServiceEnv`] current;
//! pod sync reads it when it builds a container.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use berth_proto::types::Service;

/// The Services this node knows, shared between the Service watch and pod sync.
#[derive(Debug, Clone, Default)]
pub struct ServiceEnv {
    services: Arc<RwLock<BTreeMap<(String, String), Service>>>,
    /// Whether this node serves ClusterIPs (it holds them as local addresses); if not, the
    /// variables point at the node's proxy on the nodePort instead.
    cluster_ips: Arc<std::sync::atomic::AtomicBool>,
}

impl ServiceEnv {
    pub fn new() -> ServiceEnv {
        ServiceEnv::default()
    }

    /// Replace the known Services.
    pub fn set<'a>(&self, services: impl IntoIterator<Item = &'a Service>) {
        let map = services
            .into_iter()
            .map(|s| {
                (
                    (s.metadata.namespace.clone(), s.metadata.name.clone()),
                    s.clone(),
                )
            })
            .collect();
        if let Ok(mut g) = self.services.write() {
            *g = map;
        }
    }

    /// Record whether this node serves ClusterIPs.
    pub fn set_cluster_ips_served(&self, served: bool) {
        self.cluster_ips
            .store(served, std::sync::atomic::Ordering::Relaxed);
    }

    /// The variables for a container in `namespace` on a node reached at `host`.
    pub fn vars(&self, namespace: &str, host: &str) -> Vec<(String, String)> {
        let cluster_ips = self.cluster_ips.load(std::sync::atomic::Ordering::Relaxed);
        match self.services.read() {
            Ok(g) => service_vars(g.values(), namespace, host, cluster_ips),
            Err(_) => Vec::new(),
        }
    }
}

fn env_name(s: &str) -> String {
    s.to_ascii_uppercase().replace(['-', '.'], "_")
}

/// Kubernetes-style variables for the Services of `namespace` (pure; sorted by name).
pub fn service_vars<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    namespace: &str,
    host: &str,
    cluster_ips: bool,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for svc in services {
        let ns = if svc.metadata.namespace.is_empty() {
            "default"
        } else {
            svc.metadata.namespace.as_str()
        };
        if ns != namespace {
            continue;
        }
        let name = env_name(&svc.metadata.name);
        match svc.spec.cluster_ip.as_deref() {
            Some("None") => continue,
            Some(ip) if cluster_ips && ip.parse::<std::net::IpAddr>().is_ok() => {
                cluster_ip_vars(&mut out, &name, ip, &svc.spec.ports);
                continue;
            }
            _ => {}
        }
        let ports: Vec<_> = svc
            .spec
            .ports
            .iter()
            .filter_map(|p| p.node_port.filter(|n| *n > 0).map(|n| (p, n)))
            .collect();
        let Some((_, first)) = ports.first() else {
            continue;
        };
        out.push((format!("{name}_SERVICE_HOST"), host.to_string()));
        out.push((format!("{name}_SERVICE_PORT"), first.to_string()));
        for (p, n) in &ports {
            if !p.name.is_empty() {
                out.push((
                    format!("{name}_SERVICE_PORT_{}", env_name(&p.name)),
                    n.to_string(),
                ));
            }
        }
    }
    out.sort();
    out
}

/// The kubelet's variables for a Service with a ClusterIP (its `makeLinkVariables` too).
fn cluster_ip_vars(
    out: &mut Vec<(String, String)>,
    name: &str,
    ip: &str,
    ports: &[berth_proto::types::ServicePort],
) {
    let Some(first) = ports.first() else {
        return;
    };
    out.push((format!("{name}_SERVICE_HOST"), ip.to_string()));
    out.push((format!("{name}_SERVICE_PORT"), first.port.to_string()));
    for (i, p) in ports.iter().enumerate() {
        if !p.name.is_empty() {
            out.push((
                format!("{name}_SERVICE_PORT_{}", env_name(&p.name)),
                p.port.to_string(),
            ));
        }
        let proto = p.protocol.as_deref().unwrap_or("TCP").to_ascii_uppercase();
        let lower = proto.to_ascii_lowercase();
        let url = format!("{lower}://{ip}:{}", p.port);
        if i == 0 {
            out.push((format!("{name}_PORT"), url.clone()));
        }
        let prefix = format!("{name}_PORT_{}_{proto}", p.port);
        out.push((prefix.clone(), url));
        out.push((format!("{prefix}_PROTO"), lower));
        out.push((format!("{prefix}_PORT"), p.port.to_string()));
        out.push((format!("{prefix}_ADDR"), ip.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::types::{ObjectMeta, ServicePort, ServiceSpec};

    fn svc(ns: &str, name: &str, ports: &[(&str, Option<i32>)]) -> Service {
        Service {
            metadata: ObjectMeta {
                name: name.into(),
                namespace: ns.into(),
                ..Default::default()
            },
            spec: ServiceSpec {
                ports: ports
                    .iter()
                    .map(|(n, np)| ServicePort {
                        name: n.to_string(),
                        port: 80,
                        node_port: *np,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn services_of_the_pods_namespace_point_at_this_nodes_proxy() {
        let all = [
            svc(
                "default",
                "my-api",
                &[("http", Some(30101)), ("grpc", Some(30102))],
            ),
            svc("default", "store", &[("", Some(30200))]),
            svc("other", "elsewhere", &[("", Some(30300))]),
            svc("default", "no-port-yet", &[("", None)]),
        ];
        let vars = service_vars(&all, "default", "10.0.0.7", true);
        let want: Vec<(String, String)> = [
            ("MY_API_SERVICE_HOST", "10.0.0.7"),
            ("MY_API_SERVICE_PORT", "30101"),
            ("MY_API_SERVICE_PORT_GRPC", "30102"),
            ("MY_API_SERVICE_PORT_HTTP", "30101"),
            ("STORE_SERVICE_HOST", "10.0.0.7"),
            ("STORE_SERVICE_PORT", "30200"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(vars, want);
    }

    #[test]
    fn services_with_a_cluster_ip_point_at_it_and_the_service_port_as_kubernetes_does() {
        let mut redis = svc("default", "redis-leader", &[("", None)]);
        redis.spec.ports[0].port = 6379;
        redis.spec.cluster_ip = Some("10.43.0.12".into());
        let mut headless = svc("default", "db", &[("", None)]);
        headless.spec.cluster_ip = Some("None".into());
        let vars = service_vars(&[redis.clone(), headless], "default", "10.0.0.7", true);
        let want: Vec<(String, String)> = [
            ("REDIS_LEADER_PORT", "tcp://10.43.0.12:6379"),
            ("REDIS_LEADER_PORT_6379_TCP", "tcp://10.43.0.12:6379"),
            ("REDIS_LEADER_PORT_6379_TCP_ADDR", "10.43.0.12"),
            ("REDIS_LEADER_PORT_6379_TCP_PORT", "6379"),
            ("REDIS_LEADER_PORT_6379_TCP_PROTO", "tcp"),
            ("REDIS_LEADER_SERVICE_HOST", "10.43.0.12"),
            ("REDIS_LEADER_SERVICE_PORT", "6379"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(vars, want);
        // A node that cannot hold ClusterIPs points at its own proxy on the nodePort.
        redis.spec.ports[0].node_port = Some(30379);
        assert_eq!(
            service_vars(&[redis], "default", "10.0.0.7", false),
            vec![
                (
                    "REDIS_LEADER_SERVICE_HOST".to_string(),
                    "10.0.0.7".to_string()
                ),
                ("REDIS_LEADER_SERVICE_PORT".to_string(), "30379".to_string())
            ]
        );
    }

    #[test]
    fn shared_env_reflects_the_latest_set() {
        let env = ServiceEnv::new();
        assert!(env.vars("default", "127.0.0.1").is_empty());
        env.set(&[svc("default", "web", &[("", Some(30100))])]);
        assert_eq!(
            env.vars("default", "127.0.0.1"),
            vec![
                ("WEB_SERVICE_HOST".to_string(), "127.0.0.1".to_string()),
                ("WEB_SERVICE_PORT".to_string(), "30100".to_string())
            ]
        );
        env.set(&[]);
        assert!(env.vars("default", "127.0.0.1").is_empty());
    }
}
