//! Fluent fixture builders. Defaults are the least surprising valid object: namespace
//! `default`, one container `app` with image `app:1`, Ready nodes only when `.ready()` is called.

use std::collections::BTreeMap;

use berth_proto::types::*;
use chrono::{TimeZone, Utc};

/// A fixed instant tests can build times from (deterministic, unlike `Utc::now()`).
pub fn t0() -> Time {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .unwrap_or_default()
}

/// `t0()` plus `secs` seconds (fractions allowed through milliseconds).
pub fn at(secs: i64) -> Time {
    t0() + chrono::Duration::seconds(secs)
}

fn q(s: &str) -> Quantity {
    Quantity(s.to_string())
}

// ---------------------------------------------------------------------------------------------

/// Builds a [`Node`]. `.ready()` adds a Ready=True condition and a heartbeat at `t0()`.
#[derive(Debug, Clone)]
pub struct NodeBuilder {
    node: Node,
}

impl NodeBuilder {
    pub fn new(name: &str) -> Self {
        let node = Node {
            metadata: ObjectMeta {
                name: name.to_string(),
                uid: format!("uid-node-{name}"),
                resource_version: 1,
                labels: BTreeMap::from([("kubernetes.io/hostname".to_string(), name.to_string())]),
                creation_timestamp: Some(t0()),
                ..Default::default()
            },
            spec: NodeSpec::default(),
            status: Some(NodeStatus {
                addresses: vec![NodeAddress {
                    type_: "InternalIP".into(),
                    address: "127.0.0.1".into(),
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        NodeBuilder { node }
    }

    fn status(&mut self) -> &mut NodeStatus {
        self.node.status.get_or_insert_with(Default::default)
    }

    fn resource(mut self, key: &str, v: &str) -> Self {
        let st = self.status();
        st.capacity.insert(key.into(), q(v));
        st.allocatable.insert(key.into(), q(v));
        self
    }

    /// Capacity and allocatable cpu, e.g. "4" or "3500m".
    pub fn cpu(self, v: &str) -> Self {
        self.resource("cpu", v)
    }
    /// Capacity and allocatable memory, e.g. "8Gi".
    pub fn memory(self, v: &str) -> Self {
        self.resource("memory", v)
    }
    /// Capacity and allocatable pod count.
    pub fn pods(self, v: &str) -> Self {
        self.resource("pods", v)
    }

    pub fn address(mut self, ip: &str) -> Self {
        self.status().addresses = vec![NodeAddress {
            type_: "InternalIP".into(),
            address: ip.into(),
        }];
        self
    }

    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.node.metadata.labels.insert(k.into(), v.into());
        self
    }

    /// Ready=True with a heartbeat at `t0()`.
    pub fn ready(self) -> Self {
        self.ready_at(t0())
    }

    /// Ready=True with its last heartbeat at `when`.
    pub fn ready_at(mut self, when: Time) -> Self {
        let st = self.status();
        set_condition(
            &mut st.conditions,
            Condition::new(
                "Ready",
                true,
                "AgentReady",
                "agent is posting ready status",
                when,
            ),
        );
        st.last_heartbeat_time = Some(when);
        self
    }

    /// Ready=False (the agent reported itself not ready).
    pub fn not_ready(mut self) -> Self {
        let st = self.status();
        set_condition(
            &mut st.conditions,
            Condition::new("Ready", false, "AgentNotReady", "agent is not ready", t0()),
        );
        self
    }

    pub fn heartbeat(mut self, when: Time) -> Self {
        self.status().last_heartbeat_time = Some(when);
        self
    }

    /// Offer a runtime handler (`status.runtimeHandlers`), e.g. `.runtime("docker")`.
    pub fn runtime(mut self, name: &str) -> Self {
        self.status()
            .runtime_handlers
            .push(berth_proto::types::NodeRuntimeHandler { name: name.into() });
        self
    }

    /// Cordoned (`spec.unschedulable`).
    pub fn unschedulable(mut self) -> Self {
        self.node.spec.unschedulable = true;
        self
    }

    /// Add a taint, e.g. `.taint("dedicated", "gpu", "NoSchedule")`.
    pub fn taint(mut self, key: &str, value: &str, effect: &str) -> Self {
        self.node.spec.taints.push(Taint {
            key: key.into(),
            value: value.into(),
            effect: effect.into(),
        });
        self
    }

    pub fn resource_version(mut self, rv: u64) -> Self {
        self.node.metadata.resource_version = rv;
        self
    }

    pub fn build(self) -> Node {
        self.node
    }
}

// ---------------------------------------------------------------------------------------------

/// Builds a [`Pod`] with one container `app`.
#[derive(Debug, Clone)]
pub struct PodBuilder {
    pod: Pod,
}

impl PodBuilder {
    pub fn new(name: &str) -> Self {
        let pod = Pod {
            metadata: ObjectMeta {
                name: name.to_string(),
                namespace: "default".into(),
                uid: format!("uid-pod-{name}"),
                resource_version: 1,
                creation_timestamp: Some(t0()),
                ..Default::default()
            },
            spec: PodSpec {
                containers: vec![Container {
                    name: "app".into(),
                    image: "app:1".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
            ..Default::default()
        };
        PodBuilder { pod }
    }

    pub fn namespace(mut self, ns: &str) -> Self {
        self.pod.metadata.namespace = ns.into();
        self
    }

    pub fn uid(mut self, uid: &str) -> Self {
        self.pod.metadata.uid = uid.into();
        self
    }

    pub fn resource_version(mut self, rv: u64) -> Self {
        self.pod.metadata.resource_version = rv;
        self
    }

    pub fn created(mut self, when: Time) -> Self {
        self.pod.metadata.creation_timestamp = Some(when);
        self
    }

    pub fn deleting(mut self, when: Time) -> Self {
        self.pod.metadata.deletion_timestamp = Some(when);
        self
    }

    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.pod.metadata.labels.insert(k.into(), v.into());
        self
    }

    pub fn labels(mut self, labels: &Labels) -> Self {
        self.pod
            .metadata
            .labels
            .extend(labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        self
    }

    fn container(&mut self) -> &mut Container {
        if self.pod.spec.containers.is_empty() {
            self.pod.spec.containers.push(Container {
                name: "app".into(),
                ..Default::default()
            });
        }
        &mut self.pod.spec.containers[0]
    }

    fn request(mut self, key: &str, v: &str) -> Self {
        self.container()
            .resources
            .get_or_insert_with(Default::default)
            .requests
            .insert(key.into(), q(v));
        self
    }

    /// cpu request of the first container, e.g. "500m".
    pub fn cpu(self, v: &str) -> Self {
        self.request("cpu", v)
    }
    /// memory request of the first container, e.g. "256Mi".
    pub fn memory(self, v: &str) -> Self {
        self.request("memory", v)
    }

    /// Add a container port (0 host port = agent-allocated).
    pub fn port(mut self, name: &str, container_port: i32) -> Self {
        self.container().ports.push(ContainerPort {
            name: name.into(),
            container_port,
            ..Default::default()
        });
        self
    }

    /// Add a container port with a fixed host port.
    pub fn host_port(mut self, container_port: i32, host_port: i32) -> Self {
        self.container().ports.push(ContainerPort {
            container_port,
            host_port: Some(host_port),
            ..Default::default()
        });
        self
    }

    pub fn image(mut self, image: &str) -> Self {
        self.container().image = image.into();
        self
    }

    /// `spec.runtimeClassName`.
    pub fn runtime_class(mut self, name: &str) -> Self {
        self.pod.spec.runtime_class_name = Some(name.into());
        self
    }

    pub fn node_selector(mut self, k: &str, v: &str) -> Self {
        self.pod.spec.node_selector.insert(k.into(), v.into());
        self
    }

    /// Tolerate `key` (=`value` when non-empty, else Exists) for `effect` (empty = all).
    pub fn toleration(mut self, key: &str, value: &str, effect: &str) -> Self {
        self.pod.spec.tolerations.push(Toleration {
            key: key.into(),
            operator: Some(if value.is_empty() { "Exists" } else { "Equal" }.into()),
            value: value.into(),
            effect: effect.into(),
            toleration_seconds: None,
        });
        self
    }

    /// Controlled by `kind/name` with `uid` (e.g. a ReplicaSet).
    pub fn owner(mut self, kind: &str, name: &str, uid: &str) -> Self {
        self.pod.metadata.owner_references.push(OwnerReference {
            api_version: if kind == "Deployment" || kind == "ReplicaSet" {
                "apps/v1".into()
            } else {
                "v1".into()
            },
            kind: kind.into(),
            name: name.into(),
            uid: uid.into(),
            controller: true,
        });
        self
    }

    /// Bound to `node` (spec.nodeName).
    pub fn node(mut self, node: &str) -> Self {
        self.pod.spec.node_name = node.into();
        self
    }

    fn status(&mut self) -> &mut PodStatus {
        self.pod.status.get_or_insert_with(Default::default)
    }

    /// Running and Ready=True since `t0()`.
    pub fn ready(self) -> Self {
        self.ready_since(t0())
    }

    /// Running and Ready=True since `when` (matters for minReadySeconds).
    pub fn ready_since(mut self, when: Time) -> Self {
        let st = self.status();
        st.phase = berth_proto::PodPhase::Running.into();
        set_condition(
            &mut st.conditions,
            Condition::new("Ready", true, "", "", when),
        );
        self
    }

    /// Running but Ready=False.
    pub fn not_ready(mut self) -> Self {
        let st = self.status();
        st.phase = berth_proto::PodPhase::Running.into();
        set_condition(
            &mut st.conditions,
            Condition::new("Ready", false, "ContainersNotReady", "", t0()),
        );
        self
    }

    pub fn phase(mut self, phase: &str) -> Self {
        self.status().phase = phase.into();
        self
    }

    /// status.hostIP.
    pub fn host_ip(mut self, ip: &str) -> Self {
        self.status().host_ip = ip.into();
        self
    }

    /// The pod's own address on the pod network (status.podIP and podIPs).
    pub fn pod_ip(mut self, ip: &str) -> Self {
        let st = self.status();
        st.pod_ip = ip.into();
        st.pod_ips = vec![berth_proto::types::PodIp { ip: ip.into() }];
        self
    }

    /// A published port in status.hostPorts (what the agent reports).
    pub fn published(mut self, name: &str, container_port: i32, host_port: i32) -> Self {
        self.status().host_ports.push(HostPortMapping {
            container_name: "app".into(),
            name: name.into(),
            container_port,
            host_port,
            protocol: None,
        });
        self
    }

    pub fn build(self) -> Pod {
        self.pod
    }
}

// ---------------------------------------------------------------------------------------------

/// Builds a [`Deployment`] selecting `app=<name>` with one container `app`.
#[derive(Debug, Clone)]
pub struct DeploymentBuilder {
    d: Deployment,
}

impl DeploymentBuilder {
    pub fn new(name: &str) -> Self {
        let labels = Labels::from([("app".to_string(), name.to_string())]);
        let d = Deployment {
            metadata: ObjectMeta {
                name: name.into(),
                namespace: "default".into(),
                uid: format!("uid-deploy-{name}"),
                resource_version: 1,
                generation: 1,
                creation_timestamp: Some(t0()),
                ..Default::default()
            },
            spec: DeploymentSpec {
                replicas: Some(1),
                selector: LabelSelector {
                    match_labels: labels.clone(),
                    ..Default::default()
                },
                template: PodTemplateSpec {
                    metadata: ObjectMeta {
                        labels,
                        ..Default::default()
                    },
                    spec: PodSpec {
                        containers: vec![Container {
                            name: "app".into(),
                            image: "app:1".into(),
                            ..Default::default()
                        }],
                        ..Default::default()
                    },
                },
                ..Default::default()
            },
            ..Default::default()
        };
        DeploymentBuilder { d }
    }

    pub fn namespace(mut self, ns: &str) -> Self {
        self.d.metadata.namespace = ns.into();
        self
    }

    pub fn replicas(mut self, n: i32) -> Self {
        self.d.spec.replicas = Some(n);
        self
    }

    pub fn image(mut self, image: &str) -> Self {
        if let Some(c) = self.d.spec.template.spec.containers.first_mut() {
            c.image = image.into();
        }
        self
    }

    pub fn generation(mut self, g: i64) -> Self {
        self.d.metadata.generation = g;
        self
    }

    pub fn port(mut self, name: &str, container_port: i32) -> Self {
        if let Some(c) = self.d.spec.template.spec.containers.first_mut() {
            c.ports.push(ContainerPort {
                name: name.into(),
                container_port,
                ..Default::default()
            });
        }
        self
    }

    pub fn cpu(mut self, v: &str) -> Self {
        if let Some(c) = self.d.spec.template.spec.containers.first_mut() {
            c.resources
                .get_or_insert_with(Default::default)
                .requests
                .insert("cpu".into(), q(v));
        }
        self
    }

    /// RollingUpdate with the given maxSurge / maxUnavailable ("25%" or "1").
    pub fn rolling(mut self, max_surge: &str, max_unavailable: &str) -> Self {
        let parse = |s: &str| match s.parse::<i64>() {
            Ok(i) => IntOrString::Int(i),
            Err(_) => IntOrString::String(s.to_string()),
        };
        self.d.spec.strategy = Some(DeploymentStrategy {
            type_: Some(berth_proto::StrategyType::RollingUpdate.into()),
            rolling_update: Some(RollingUpdateDeployment {
                max_surge: Some(parse(max_surge)),
                max_unavailable: Some(parse(max_unavailable)),
                ..Default::default()
            }),
            blue_green: None,
        });
        self
    }

    pub fn recreate(mut self) -> Self {
        self.d.spec.strategy = Some(DeploymentStrategy {
            type_: Some(berth_proto::StrategyType::Recreate.into()),
            ..Default::default()
        });
        self
    }

    /// BlueGreen with `active` (and optional `preview`) Services.
    pub fn blue_green(mut self, active: &str, preview: Option<&str>) -> Self {
        self.d.spec.strategy = Some(DeploymentStrategy {
            type_: Some(berth_proto::StrategyType::BlueGreen.into()),
            rolling_update: None,
            blue_green: Some(BlueGreenStrategy {
                active_service: active.into(),
                preview_service: preview.map(str::to_string),
                ..Default::default()
            }),
        });
        self
    }

    /// Mutate the BlueGreen settings (after `.blue_green(..)`).
    pub fn blue_green_with(mut self, f: impl FnOnce(&mut BlueGreenStrategy)) -> Self {
        if let Some(bg) = self
            .d
            .spec
            .strategy
            .as_mut()
            .and_then(|s| s.blue_green.as_mut())
        {
            f(bg);
        }
        self
    }

    pub fn min_ready_seconds(mut self, s: i32) -> Self {
        self.d.spec.min_ready_seconds = Some(s);
        self
    }

    pub fn progress_deadline_seconds(mut self, s: i32) -> Self {
        self.d.spec.progress_deadline_seconds = Some(s);
        self
    }

    pub fn revision_history_limit(mut self, n: i32) -> Self {
        self.d.spec.revision_history_limit = Some(n);
        self
    }

    pub fn paused(mut self) -> Self {
        self.d.spec.paused = true;
        self
    }

    pub fn annotation(mut self, k: &str, v: &str) -> Self {
        self.d.metadata.annotations.insert(k.into(), v.into());
        self
    }

    pub fn status(mut self, status: DeploymentStatus) -> Self {
        self.d.status = Some(status);
        self
    }

    pub fn build(self) -> Deployment {
        self.d
    }
}

// ---------------------------------------------------------------------------------------------

/// Builds a [`Service`] selecting `app=<name>` by default.
#[derive(Debug, Clone)]
pub struct ServiceBuilder {
    s: Service,
}

impl ServiceBuilder {
    pub fn new(name: &str) -> Self {
        let s = Service {
            metadata: ObjectMeta {
                name: name.into(),
                namespace: "default".into(),
                uid: format!("uid-svc-{name}"),
                resource_version: 1,
                creation_timestamp: Some(t0()),
                ..Default::default()
            },
            spec: ServiceSpec {
                selector: Labels::from([("app".to_string(), name.to_string())]),
                ports: vec![],
                type_: None,
                ..Default::default()
            },
            ..Default::default()
        };
        ServiceBuilder { s }
    }

    pub fn namespace(mut self, ns: &str) -> Self {
        self.s.metadata.namespace = ns.into();
        self
    }

    /// Replace the selector with `k=v` pairs.
    pub fn selector(mut self, pairs: &[(&str, &str)]) -> Self {
        self.s.spec.selector = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self
    }

    /// A port `port` -> numeric `target_port`.
    pub fn port(mut self, name: &str, port: i32, target_port: i32) -> Self {
        self.s.spec.ports.push(ServicePort {
            name: name.into(),
            port,
            target_port: Some(IntOrString::Int(target_port as i64)),
            ..Default::default()
        });
        self
    }

    /// A port `port` -> named target port.
    pub fn named_port(mut self, name: &str, port: i32, target: &str) -> Self {
        self.s.spec.ports.push(ServicePort {
            name: name.into(),
            port,
            target_port: Some(IntOrString::String(target.into())),
            ..Default::default()
        });
        self
    }

    pub fn build(self) -> Service {
        self.s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_builder_sets_allocatable_and_ready() {
        let n = NodeBuilder::new("n1")
            .cpu("4")
            .memory("8Gi")
            .ready()
            .build();
        let st = n.status.as_ref().expect("status");
        assert_eq!(st.allocatable.get("cpu"), Some(&Quantity("4".into())));
        assert!(n.is_ready());
        assert_eq!(n.address(), Some("127.0.0.1"));
    }

    #[test]
    fn pod_builder_ready_and_owner() {
        let p = PodBuilder::new("p")
            .cpu("500m")
            .owner("ReplicaSet", "rs", "u1")
            .ready()
            .build();
        assert!(p.is_ready());
        assert_eq!(p.metadata.controller_uid(), Some("u1"));
    }

    #[test]
    fn deployment_builder_round_trips_through_json() {
        let d = DeploymentBuilder::new("web")
            .replicas(3)
            .rolling("1", "0")
            .build();
        let j = serde_json::to_string(&d).expect("json");
        let back: Deployment = serde_json::from_str(&j).expect("parse");
        assert_eq!(back, d);
    }
}
