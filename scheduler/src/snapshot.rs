//! An immutable view of the cluster for one scheduling pass: every node with what is already
//! reserved on it (requests of bound pods, host ports in use, pods per owner).
//!
//! Built once per pass from the reflector caches; [`NodeInfo::assume`] records a decision made
//! earlier in the same batch so later pods see it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use berth_proto::quantity::{pod_requests, Resources};
use berth_proto::types::{Node, Pod, Quantity};

use crate::volumes::{pin_claims, ClaimNodes, VolumeState};

/// A fixed host port: (protocol, port).
pub type HostPort = (String, i32);

/// One node plus what is reserved on it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub node: Arc<Node>,
    /// Allocatable cpu (millicores) and memory (bytes).
    pub allocatable: Resources,
    /// Allocatable pod count, when the node states one.
    pub max_pods: Option<u64>,
    /// Sum of the requests of pods bound here.
    pub requested: Resources,
    pub pod_count: u64,
    pub used_ports: BTreeSet<HostPort>,
    /// Pods bound here per controller owner uid (the spread tie-break).
    pub owner_counts: BTreeMap<String, u32>,
}

impl NodeInfo {
    pub fn new(node: Arc<Node>) -> Self {
        let (allocatable, max_pods) = match node.status.as_ref() {
            Some(st) => {
                let map = if st.allocatable.is_empty() {
                    &st.capacity
                } else {
                    &st.allocatable
                };
                (
                    Resources::from_map(map),
                    map.get("pods")
                        .and_then(|q: &Quantity| q.parsed().ok())
                        .map(|q| q.value()),
                )
            }
            None => (Resources::default(), None),
        };
        NodeInfo {
            node,
            allocatable,
            max_pods,
            requested: Resources::default(),
            pod_count: 0,
            used_ports: BTreeSet::new(),
            owner_counts: BTreeMap::new(),
        }
    }

    pub fn name(&self) -> &str {
        &self.node.metadata.name
    }

    /// Reserve `pod` on this node (a bound pod, or a decision earlier in the batch).
    pub fn assume(&mut self, pod: &Pod) {
        self.requested = self.requested.saturating_add(pod_requests(&pod.spec));
        self.pod_count += 1;
        self.used_ports.extend(pod_host_ports(pod));
        if let Some(st) = &pod.status {
            for hp in &st.host_ports {
                if hp.host_port > 0 {
                    self.used_ports
                        .insert((protocol(hp.protocol.as_deref()), hp.host_port));
                }
            }
        }
        if let Some(owner) = pod.metadata.controller_uid() {
            *self.owner_counts.entry(owner.to_string()).or_default() += 1;
        }
    }

    /// What remains for new pods.
    pub fn free(&self) -> Resources {
        self.allocatable.saturating_sub(self.requested)
    }
}

fn protocol(p: Option<&str>) -> String {
    p.filter(|p| !p.is_empty())
        .unwrap_or("TCP")
        .to_ascii_uppercase()
}

/// The fixed host ports a pod asks for (0 / unset = allocated by the agent, never conflicts).
pub fn pod_host_ports(pod: &Pod) -> impl Iterator<Item = HostPort> + '_ {
    pod.spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter())
        .filter_map(|p| match p.host_port {
            Some(hp) if hp > 0 => Some((protocol(p.protocol.as_deref()), hp)),
            _ => None,
        })
}

/// Does this pod still hold resources on its node? Finished pods do not.
fn occupies_node(pod: &Pod) -> bool {
    !pod.spec.node_name.is_empty() && !pod.is_terminal()
}

/// All nodes, in name order, with the pods already bound to them accounted for.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub nodes: Vec<NodeInfo>,
    /// Claims and volumes (shared, read-only).
    pub volumes: Arc<VolumeState>,
    /// The node each claim in use is used on (by bound pods).
    pub claim_nodes: ClaimNodes,
}

impl Snapshot {
    /// Build from every node and every pod (unbound and finished pods are ignored).
    pub fn new<'a>(
        nodes: impl IntoIterator<Item = Arc<Node>>,
        pods: impl IntoIterator<Item = &'a Pod>,
    ) -> Self {
        let mut nodes: Vec<NodeInfo> = nodes.into_iter().map(NodeInfo::new).collect();
        nodes.sort_by(|a, b| a.name().cmp(b.name()));
        let index: BTreeMap<String, usize> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name().to_string(), i))
            .collect();
        let mut claim_nodes = ClaimNodes::new();
        for pod in pods {
            if !occupies_node(pod) {
                continue;
            }
            pin_claims(&mut claim_nodes, pod, &pod.spec.node_name);
            if let Some(&i) = index.get(&pod.spec.node_name) {
                nodes[i].assume(pod);
            }
        }
        Snapshot {
            nodes,
            volumes: Arc::default(),
            claim_nodes,
        }
    }

    /// The claims and volumes pods' PersistentVolumeClaims are checked against.
    pub fn with_volumes(mut self, volumes: Arc<VolumeState>) -> Self {
        self.volumes = volumes;
        self
    }

    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.nodes.iter().find(|n| n.name() == name)
    }
}
