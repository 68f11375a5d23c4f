//! Filter and score plugins: pure functions of (pod, node info).
//!
//! Filters run in a fixed order and the first that rejects a node names the reason (the
//! resource filter may name several at once, e.g. cpu and memory), as in the Kubernetes
//! scheduler framework. Reasons use kubectl's wording so `describe pod` reads familiarly.

use berth_proto::quantity::{pod_requests, Resources};
use berth_proto::selector::matches_labels;
use berth_proto::types::{condition, Pod, Taint};
use berth_proto::TaintEffect;

use crate::snapshot::{pod_host_ports, NodeInfo};

/// Why a node was rejected for a pod.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    NotReady,
    Unschedulable,
    NodeSelectorMismatch,
    /// The node does not offer the pod's runtimeClassName.
    MissingRuntime(String),
    /// An untolerated NoSchedule/NoExecute taint: `{key: value}`.
    UntoleratedTaint(String),
    PortsInUse,
    TooManyPods,
    InsufficientCpu,
    InsufficientMemory,
    /// A claim's volume (or the node its claim is used on) rules the node out.
    VolumeNodeAffinityConflict,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::NotReady => f.write_str("node(s) were not ready"),
            Reason::Unschedulable => f.write_str("node(s) were unschedulable"),
            Reason::NodeSelectorMismatch => {
                f.write_str("node(s) didn't match Pod's node affinity/selector")
            }
            Reason::MissingRuntime(r) => write!(f, "node(s) didn't have runtime {r}"),
            Reason::UntoleratedTaint(t) => write!(f, "node(s) had untolerated taint {t}"),
            Reason::PortsInUse => {
                f.write_str("node(s) didn't have free ports for the requested pod ports")
            }
            Reason::TooManyPods => f.write_str("Too many pods"),
            Reason::InsufficientCpu => f.write_str("Insufficient cpu"),
            Reason::InsufficientMemory => f.write_str("Insufficient memory"),
            Reason::VolumeNodeAffinityConflict => {
                f.write_str("node(s) had volume node affinity conflict")
            }
        }
    }
}

/// Is `taint` tolerated by any of the pod's tolerations?
pub fn tolerated(pod: &Pod, taint: &Taint) -> bool {
    pod.spec.tolerations.iter().any(|t| t.tolerates(taint))
}

fn node_ready(info: &NodeInfo) -> bool {
    info.node
        .status
        .as_ref()
        .and_then(|s| condition(&s.conditions, "Ready"))
        .is_some_and(|c| c.is_true())
}

/// Run every filter; `Ok` = the pod fits, `Err` = the reasons of the first failing filter.
pub fn filter(pod: &Pod, requests: Resources, info: &NodeInfo) -> Result<(), Vec<Reason>> {
    let node = &info.node;
    if !node_ready(info) {
        return Err(vec![Reason::NotReady]);
    }
    if node.spec.unschedulable {
        return Err(vec![Reason::Unschedulable]);
    }
    if !matches_labels(&pod.spec.node_selector, &node.metadata.labels) {
        return Err(vec![Reason::NodeSelectorMismatch]);
    }
    if let Some(want) = &pod.spec.runtime_class_name {
        let offered = node
            .status
            .as_ref()
            .is_some_and(|s| s.runtime_handlers.iter().any(|h| &h.name == want));
        if !offered {
            return Err(vec![Reason::MissingRuntime(want.clone())]);
        }
    }
    if let Some(t) = node
        .spec
        .taints
        .iter()
        .filter(|t| {
            t.effect
                .parse::<TaintEffect>()
                .is_ok_and(TaintEffect::forbids_scheduling)
        })
        .find(|t| !tolerated(pod, t))
    {
        return Err(vec![Reason::UntoleratedTaint(format!(
            "{{{}: {}}}",
            t.key, t.value
        ))]);
    }
    if pod_host_ports(pod).any(|p| info.used_ports.contains(&p)) {
        return Err(vec![Reason::PortsInUse]);
    }
    let mut reasons = Vec::new();
    if info.max_pods.is_some_and(|max| info.pod_count + 1 > max) {
        reasons.push(Reason::TooManyPods);
    }
    let free = info.free();
    if requests.milli_cpu > free.milli_cpu {
        reasons.push(Reason::InsufficientCpu);
    }
    if requests.memory > free.memory {
        reasons.push(Reason::InsufficientMemory);
    }
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(reasons)
    }
}

/// The requests of a pod, computed once per pod.
pub fn requests(pod: &Pod) -> Resources {
    pod_requests(&pod.spec)
}

/// Utilisation is compared in buckets of this many percent: nodes whose fill differs by less
/// are "otherwise equal" for bin-packing, so the spread tie-break decides between them. Without
/// it, any request at all would make the first node strictly fuller and pile every replica of
/// a Deployment onto it; with it, small pods spread and large ones still pack.
pub const BINPACK_BUCKET_PERCENT: u64 = 10;

/// A node's score for a pod that passed the filters; higher is better. Compared
/// lexicographically: untolerated PreferNoSchedule taints first (fewer wins), then
/// most-allocated bin-packing by bucket, then spread (fewer pods of the same owner wins), then
/// the exact fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Score {
    /// Negated count of untolerated PreferNoSchedule taints.
    pub taints: i64,
    /// Most-allocated bucket after placing the pod (see [`BINPACK_BUCKET_PERCENT`]).
    pub binpack: u64,
    /// Negated count of pods with the same controller already on the node.
    pub spread: i64,
    /// Most-allocated fraction after placing the pod, in 1/10000 (averaged over the resources
    /// the node states).
    pub fill: u64,
}

pub fn score(pod: &Pod, requests: Resources, info: &NodeInfo) -> Score {
    let prefer_no = info
        .node
        .spec
        .taints
        .iter()
        .filter(|t| t.effect == TaintEffect::PreferNoSchedule && !tolerated(pod, t))
        .count() as i64;
    let used = info.requested.saturating_add(requests);
    let mut total = 0u128;
    let mut dims = 0u128;
    for (u, a) in [
        (used.milli_cpu, info.allocatable.milli_cpu),
        (used.memory, info.allocatable.memory),
    ] {
        if a > 0 {
            total += u128::from(u.min(a)) * 10_000 / u128::from(a);
            dims += 1;
        }
    }
    let fill = total
        .checked_div(dims)
        .map_or(0, |v| u64::try_from(v).unwrap_or(u64::MAX));
    let same_owner = pod
        .metadata
        .controller_uid()
        .and_then(|o| info.owner_counts.get(o))
        .copied()
        .unwrap_or(0);
    Score {
        taints: -prefer_no,
        binpack: fill / (BINPACK_BUCKET_PERCENT * 100),
        spread: -i64::from(same_owner),
        fill,
    }
}
