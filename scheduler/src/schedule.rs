//! The pure scheduling step: filter -> score -> pick, for one pod or a batch.

use std::collections::BTreeMap;

use berth_proto::types::Pod;

use crate::plugins::{filter, requests, score, Reason};
use crate::snapshot::Snapshot;
use crate::volumes;

/// What happened to one pod. "Does not fit" is an outcome, not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Bind to this node.
    Bind { node: String },
    /// No node fits; `reason` is kubectl-style ("0/3 nodes are available: ...").
    Unschedulable { reason: String },
}

/// The outcome for one pod of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The pod's resourceVersion the decision was made on (the bind's CAS precondition).
    pub resource_version: u64,
    pub outcome: Outcome,
}

/// Summarise per-node rejections like the Kubernetes scheduler's FitError: count each reason,
/// most frequent first (ties by wording), e.g.
/// `0/3 nodes are available: 2 Insufficient cpu, 1 node(s) were unschedulable.`
pub fn fit_error(num_nodes: usize, reasons: &BTreeMap<Reason, usize>) -> String {
    let mut items: Vec<(usize, String)> =
        reasons.iter().map(|(r, n)| (*n, r.to_string())).collect();
    items.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let mut msg = format!("0/{num_nodes} nodes are available");
    if items.is_empty() {
        msg.push('.');
    } else {
        let parts: Vec<String> = items.iter().map(|(n, r)| format!("{n} {r}")).collect();
        msg.push_str(": ");
        msg.push_str(&parts.join(", "));
        msg.push('.');
    }
    msg
}

/// How many feasible nodes to find before choosing among them: all of a small cluster, a
/// shrinking share of a large one (Kubernetes' adaptive `percentageOfNodesToScore`: 50% minus
/// 1% per 125 nodes, at least 5%, at least 100 nodes). Scoring a sample keeps a pass over
/// 5,000 nodes fast; the sample rotates so every node gets its turn.
pub fn feasible_nodes_to_find(num_nodes: usize) -> usize {
    const MIN: usize = 100;
    if num_nodes <= MIN {
        return num_nodes;
    }
    let pct = 50usize.saturating_sub(num_nodes / 125).max(5);
    (num_nodes * pct / 100).max(MIN)
}

/// Choose a node for `pod` (index into `snapshot.nodes`) or explain why none fits. Nodes are
/// visited from `start` round-robin until enough feasible ones are found; returns the choice
/// and how many nodes were visited.
fn pick(snapshot: &Snapshot, pod: &Pod, start: usize) -> (Result<usize, String>, usize) {
    let req = requests(pod);
    let n = snapshot.nodes.len();
    let claims = match volumes::constraints(&snapshot.volumes, &snapshot.claim_nodes, pod) {
        Ok(c) => c,
        Err(why) => return (Err(format!("0/{n} nodes are available: {why}.")), 0),
    };
    let to_find = feasible_nodes_to_find(n);
    let start = if to_find < n { start % n } else { 0 };
    let mut best: Option<(crate::plugins::Score, usize)> = None;
    let mut reasons: BTreeMap<Reason, usize> = BTreeMap::new();
    let mut feasible = 0;
    let mut visited = 0;
    for k in 0..n {
        if feasible >= to_find {
            break;
        }
        visited += 1;
        let i = (start + k) % n;
        let info = &snapshot.nodes[i];
        let fit = filter(pod, req, info).and_then(|()| {
            if volumes::fits(&claims, &info.node) {
                Ok(())
            } else {
                Err(vec![Reason::VolumeNodeAffinityConflict])
            }
        });
        match fit {
            Ok(()) => {
                feasible += 1;
                let s = score(pod, req, info);
                // Strictly greater: among equal scores the first node visited wins.
                if best.as_ref().is_none_or(|(b, _)| s > *b) {
                    best = Some((s, i));
                }
            }
            Err(rs) => {
                for r in rs {
                    *reasons.entry(r).or_default() += 1;
                }
            }
        }
    }
    let result = match best {
        Some((_, i)) => Ok(i),
        None => Err(fit_error(n, &reasons)),
    };
    (result, visited)
}

/// Schedule one pod against a snapshot.
pub fn schedule_one(snapshot: &Snapshot, pod: &Pod) -> Outcome {
    match pick(snapshot, pod, 0).0 {
        Ok(i) => Outcome::Bind {
            node: snapshot.nodes[i].name().to_string(),
        },
        Err(reason) => Outcome::Unschedulable { reason },
    }
}

/// Schedule pods in order; each decision is assumed on the (copied) snapshot so later pods of
/// the batch see the resources and ports taken by earlier ones.
pub fn schedule_batch(snapshot: &Snapshot, pods: &[Pod]) -> Vec<Decision> {
    let mut snap = snapshot.clone();
    let mut start = 0;
    pods.iter()
        .map(|pod| {
            let (picked, visited) = pick(&snap, pod, start);
            start += visited;
            let outcome = match picked {
                Ok(i) => {
                    snap.nodes[i].assume(pod);
                    let node = snap.nodes[i].name().to_string();
                    volumes::pin_claims(&mut snap.claim_nodes, pod, &node);
                    Outcome::Bind {
                        node: snap.nodes[i].name().to_string(),
                    }
                }
                Err(reason) => Outcome::Unschedulable { reason },
            };
            Decision {
                namespace: pod.metadata.namespace.clone(),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
                resource_version: pod.metadata.resource_version,
                outcome,
            }
        })
        .collect()
}
