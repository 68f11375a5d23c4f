//! Volume binding for scheduling (Kubernetes' VolumeBinding plugin): what a pod's
//! PersistentVolumeClaims require of its node.
//!
//! - PreFilter ([`constraints`]): every claim must exist and not be being deleted; a claim of
//!   a class with immediate binding (anything but `local-path`) must already be bound. If not,
//!   no node is tried and the pod's message says why (`persistentvolumeclaim "x" not found`).
//! - Filter ([`fits`]): a bound claim's volume must allow the node (`nodeAffinity`); an
//!   unbound `local-path` claim (WaitForFirstConsumer) already used by a pod bound to a node
//!   (its volume is provisioned or about to be there) keeps later pods on that node. Otherwise
//!   the node fails with "node(s) had volume node affinity conflict".

use std::collections::BTreeMap;
use std::sync::Arc;

use berth_proto::storage::{pod_claims, PersistentVolume, PersistentVolumeClaim};
use berth_proto::types::{Node, Pod};

/// Claims by (namespace, name) and volumes by name, from the scheduler's caches.
#[derive(Debug, Clone, Default)]
pub struct VolumeState {
    claims: BTreeMap<(String, String), Arc<PersistentVolumeClaim>>,
    volumes: BTreeMap<String, Arc<PersistentVolume>>,
}

impl VolumeState {
    pub fn new(
        claims: impl IntoIterator<Item = Arc<PersistentVolumeClaim>>,
        volumes: impl IntoIterator<Item = Arc<PersistentVolume>>,
    ) -> VolumeState {
        VolumeState {
            claims: claims
                .into_iter()
                .map(|c| ((c.metadata.namespace.clone(), c.metadata.name.clone()), c))
                .collect(),
            volumes: volumes
                .into_iter()
                .map(|v| (v.metadata.name.clone(), v))
                .collect(),
        }
    }
}

/// The claims a node's pods hold: (namespace, claim) -> node, from pods bound (or assumed).
pub type ClaimNodes = BTreeMap<(String, String), String>;

/// Record that `pod`, bound to `node`, uses its claims there (the first pod wins).
pub fn pin_claims(claim_nodes: &mut ClaimNodes, pod: &Pod, node: &str) {
    for c in pod_claims(&pod.spec) {
        claim_nodes
            .entry((pod.metadata.namespace.clone(), c.to_string()))
            .or_insert_with(|| node.to_string());
    }
}

/// One requirement a claim puts on the node.
#[derive(Debug, Clone)]
pub enum Constraint {
    /// The node must be allowed by this volume's nodeAffinity.
    Volume(Arc<PersistentVolume>),
    /// The node must be this one (an unbound local-path claim already used there).
    Node(String),
}

/// PreFilter: the constraints of `pod`'s claims, or why no node can be tried.
pub fn constraints(
    state: &VolumeState,
    claim_nodes: &ClaimNodes,
    pod: &Pod,
) -> Result<Vec<Constraint>, String> {
    let ns = &pod.metadata.namespace;
    let mut out = Vec::new();
    for name in pod_claims(&pod.spec) {
        let key = (ns.clone(), name.to_string());
        let Some(c) = state.claims.get(&key) else {
            return Err(format!("persistentvolumeclaim {name:?} not found"));
        };
        if c.metadata.deletion_timestamp.is_some() {
            return Err(format!("persistentvolumeclaim {name:?} is being deleted"));
        }
        if !c.spec.volume_name.is_empty() {
            match state.volumes.get(&c.spec.volume_name) {
                Some(v) => out.push(Constraint::Volume(v.clone())),
                None => {
                    return Err(format!(
                        "persistentvolumeclaim {name:?} is bound to persistentvolume {:?}, which does not exist",
                        c.spec.volume_name
                    ))
                }
            }
            continue;
        }
        // A volume created for the claim but not yet taken by it (binding in progress).
        if let Some(v) = state.volumes.values().find(|v| {
            v.spec
                .claim_ref
                .as_ref()
                .is_some_and(|r| r.namespace == *ns && r.name == name && r.uid == c.metadata.uid)
        }) {
            out.push(Constraint::Volume(v.clone()));
            continue;
        }
        if !c.is_local_path() {
            return Err("pod has unbound immediate PersistentVolumeClaims".to_string());
        }
        if let Some(node) = claim_nodes.get(&key) {
            out.push(Constraint::Node(node.clone()));
        }
    }
    Ok(out)
}

/// Filter: does `node` satisfy every constraint?
pub fn fits(constraints: &[Constraint], node: &Node) -> bool {
    constraints.iter().all(|c| match c {
        Constraint::Volume(v) => v.allows_node(node),
        Constraint::Node(n) => *n == node.metadata.name,
    })
}
