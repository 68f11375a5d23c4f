//! The pure scheduling pass: every decision of one pass of the shell, as data.
//!
//! [`plan_pass`] takes what the shell's caches hold (pods, nodes, the binds written but not
//! yet seen by the cache) and the time the shell read once, and returns the writes the shell
//! executes in one Batch request, in order:
//! - the pending/bound split: unbound, live, non-terminal pods are pending (oldest first, at
//!   most `max_batch`); pods with an assumed bind count as bound to that node;
//! - `PodScheduled=True` for a bound pod still saying `False` from an earlier pass;
//! - a bind per pod that fits ([`schedule_batch`]);
//! - `PodScheduled=False` + a `FailedScheduling` Event per pod that does not fit, skipped when
//!   the pod already says `PodScheduled=False` with the same message (no rewrite, no new
//!   Event for an unchanged reason).

use std::collections::HashMap;
use std::sync::Arc;

use berth_client::runtime::events::{self, EventType, Recorder};
use berth_proto::types::*;
use berth_proto::PodPhase;

use crate::schedule::{schedule_batch, Outcome};
use crate::snapshot::Snapshot;
use crate::volumes::VolumeState;

/// One write of a pass.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Update `pod` (its `spec.nodeName` is already set to `node`), conditioned on the
    /// resourceVersion the decision was made on.
    Bind { pod: Box<Pod>, node: String },
    /// Write this pod's status (a `PodScheduled` condition changed).
    Status(Box<Pod>),
    /// Create this Event about the pod named `pod`.
    Event { pod: String, event: Box<Event> },
}

/// What one pass decided.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PassPlan {
    /// Pods waiting to be scheduled (all of them, not only this pass's batch).
    pub waiting: usize,
    /// Pods of this pass's batch that fit nowhere (whether or not their condition is rewritten).
    pub unschedulable: usize,
    /// Pods scheduled in this pass (the batch).
    pub batch: usize,
    /// The writes to make, in order.
    pub writes: Vec<Write>,
}

/// Does this pod still wait for a node?
pub fn needs_scheduling(p: &Pod) -> bool {
    p.spec.node_name.is_empty() && p.metadata.deletion_timestamp.is_none() && !p.is_terminal()
}

fn pod_scheduled(p: &Pod) -> Option<&Condition> {
    p.status
        .as_ref()
        .and_then(|s| condition(&s.conditions, "PodScheduled"))
}

/// Bound, not yet started by its agent, and still saying PodScheduled=False from an earlier
/// unschedulable pass. (A pod bound on its first try gets PodScheduled=True from its agent's
/// first status write; writing it here too would double the raft writes of every bind, since
/// one entry cannot chain a spec and a status CAS on the same object.)
fn needs_scheduled_condition(p: &Pod) -> bool {
    !p.spec.node_name.is_empty()
        && p.metadata.deletion_timestamp.is_none()
        && p.phase() == PodPhase::Pending
        && pod_scheduled(p).is_some_and(|c| !c.is_true())
}

/// Does the pod already say it is unschedulable for exactly this reason?
fn already_unschedulable(p: &Pod, reason: &str) -> bool {
    pod_scheduled(p).is_some_and(|c| !c.is_true() && c.message == reason)
}

fn with_condition(p: &Pod, c: Condition) -> Pod {
    let mut p = p.clone();
    let st = p.status.get_or_insert_with(Default::default);
    if st.phase.is_empty() {
        st.phase = PodPhase::Pending.into();
    }
    set_condition(&mut st.conditions, c);
    p
}

/// The scheduler's `FailedScheduling` Warning Event about `p`.
pub fn failed_scheduling_event(p: &Pod, message: &str, now: Time) -> Event {
    Recorder::new("scheduler").event(
        events::reference(p),
        EventType::Warning,
        "FailedScheduling",
        message,
        1,
        now,
    )
}

/// Plan one pass. `assumed` maps a pod uid to the node of a bind the cache has not reflected
/// yet; `max_batch` caps both the pods scheduled and the condition writes of one pass.
pub fn plan_pass(
    pods: &[Arc<Pod>],
    nodes: Vec<Arc<Node>>,
    assumed: &HashMap<String, String>,
    max_batch: usize,
    now: Time,
) -> PassPlan {
    plan_pass_with_volumes(pods, nodes, Arc::default(), assumed, max_batch, now)
}

/// [`plan_pass`] with the claims and volumes pods' PersistentVolumeClaims are checked against.
pub fn plan_pass_with_volumes(
    pods: &[Arc<Pod>],
    nodes: Vec<Arc<Node>>,
    volumes: Arc<VolumeState>,
    assumed: &HashMap<String, String>,
    max_batch: usize,
    now: Time,
) -> PassPlan {
    // Pods already bound are read in place; only assumed binds are copied.
    let mut assumed_bound: Vec<Pod> = Vec::new();
    let mut pending: Vec<Pod> = Vec::new();
    let mut out = PassPlan::default();
    for p in pods {
        if let Some(node) = assumed.get(&p.metadata.uid) {
            let mut bound = p.as_ref().clone();
            bound.spec.node_name = node.clone();
            assumed_bound.push(bound);
            continue;
        }
        if needs_scheduling(p) {
            out.waiting += 1;
            if pending.len() < max_batch {
                pending.push(p.as_ref().clone());
            }
        } else if needs_scheduled_condition(p) && out.writes.len() < max_batch {
            let c = Condition::new("PodScheduled", true, "", "", now);
            out.writes
                .push(Write::Status(Box::new(with_condition(p, c))));
        }
    }
    if pending.is_empty() {
        return out;
    }
    // Oldest first: fairness across passes.
    pending.sort_by(|a, b| {
        a.metadata
            .creation_timestamp
            .cmp(&b.metadata.creation_timestamp)
            .then_with(|| a.metadata.name.cmp(&b.metadata.name))
    });
    let bound = pods
        .iter()
        .filter(|p| !needs_scheduling(p) && !assumed.contains_key(&p.metadata.uid))
        .map(|p| p.as_ref());
    let snapshot = Snapshot::new(nodes, bound.chain(assumed_bound.iter())).with_volumes(volumes);
    let decisions = schedule_batch(&snapshot, &pending);
    out.batch = pending.len();
    for (d, pod) in decisions.iter().zip(&pending) {
        match &d.outcome {
            Outcome::Bind { node } => {
                let mut bound = pod.clone();
                bound.spec.node_name = node.clone();
                out.writes.push(Write::Bind {
                    pod: Box::new(bound),
                    node: node.clone(),
                });
            }
            Outcome::Unschedulable { reason } => {
                out.unschedulable += 1;
                if already_unschedulable(pod, reason) {
                    continue;
                }
                let c = Condition::new("PodScheduled", false, "Unschedulable", reason, now);
                out.writes
                    .push(Write::Status(Box::new(with_condition(pod, c))));
                out.writes.push(Write::Event {
                    pod: pod.metadata.name.clone(),
                    event: Box::new(failed_scheduling_event(pod, reason, now)),
                });
            }
        }
    }
    out
}
