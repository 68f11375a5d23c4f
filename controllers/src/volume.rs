//! The PersistentVolume binder and the `local-path` provisioner, as one pure plan over the
//! claims, volumes, pods and nodes (Kubernetes' PV controller and k3s's local-path-provisioner
//! in one loop).
//!
//! Binding follows Kubernetes' two-sided protocol, one write per step, each re-planned from
//! the caches (level-triggered, safe to repeat):
//! 1. a volume gets `spec.claimRef` (the claim's namespace, name and uid): a pre-created
//!    volume matched to a Pending claim (static provisioning; class, access modes, size,
//!    selector), or a new volume `pvc-<claim uid>` created already pointing at its claim;
//! 2. the claim gets `spec.volumeName`;
//! 3. both get `status.phase: Bound` (the claim also its capacity and access modes).
//!
//! `local-path` claims wait for their first consumer (`WaitForFirstConsumer`): the scheduler
//! places the pod as usual, and once a live pod using the claim is bound to node N, the
//! provisioner creates a volume on N: `hostPath` `<N's storage dir>/pvc-<uid>` (the agent
//! announces the dir in the Node annotation `berth.dev/local-path-dir`) pinned to N by
//! `nodeAffinity`, with `persistentVolumeReclaimPolicy: Delete`. Provisioning here rather than
//! in the scheduler's bind keeps the scheduler a pure placement step and lets a claim whose
//! pod was placed by hand (`spec.nodeName`) get its volume too.
//!
//! When a bound claim is deleted its volume is Released: Delete removes the PersistentVolume
//! (the node's agent then removes the directory, seeing the volume gone), Retain keeps both.
//! Berth deletes only volumes it provisioned; a pre-created volume with Delete becomes Failed
//! with a message, as Kubernetes does for a hostPath outside /tmp. A bound claim whose volume
//! disappears is Lost.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use berth_proto::storage::*;
use berth_proto::types::*;
use berth_proto::Resource;

/// One write of a pass.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Provision: create this volume (already pointing at its claim).
    CreateVolume(Box<PersistentVolume>),
    /// Write a volume's spec (its claimRef).
    UpdateVolume(Box<PersistentVolume>),
    UpdateVolumeStatus(Box<PersistentVolume>),
    /// Delete the volume `name` at this resourceVersion (reclaim policy Delete).
    DeleteVolume {
        name: String,
        resource_version: u64,
    },
    /// Write a claim's spec (its volumeName).
    UpdateClaim(Box<PersistentVolumeClaim>),
    UpdateClaimStatus(Box<PersistentVolumeClaim>),
}

type ClaimKey = (String, String);

fn claim_key(c: &PersistentVolumeClaim) -> ClaimKey {
    (c.metadata.namespace.clone(), c.metadata.name.clone())
}

/// The claim a volume's claimRef names, if it still exists as the same object.
fn claim_of<'a>(
    v: &PersistentVolume,
    claims: &'a BTreeMap<ClaimKey, Arc<PersistentVolumeClaim>>,
) -> Option<&'a PersistentVolumeClaim> {
    let r = v.spec.claim_ref.as_ref()?;
    let c = claims.get(&(r.namespace.clone(), r.name.clone()))?;
    (r.uid.is_empty() || r.uid == c.metadata.uid).then_some(c.as_ref())
}

fn volume_status(v: &PersistentVolume, phase: &str, message: &str) -> Option<Action> {
    let cur = v.status.clone().unwrap_or_default();
    if cur.phase == phase && cur.message == message {
        return None;
    }
    let mut v = v.clone();
    v.status = Some(PersistentVolumeStatus {
        phase: phase.to_string(),
        reason: if phase == "Failed" {
            "VolumeFailedDelete".to_string()
        } else {
            String::new()
        },
        message: message.to_string(),
    });
    Some(Action::UpdateVolumeStatus(Box::new(v)))
}

fn claim_status(
    c: &PersistentVolumeClaim,
    phase: &str,
    v: Option<&PersistentVolume>,
) -> Option<Action> {
    let want = PersistentVolumeClaimStatus {
        phase: phase.to_string(),
        access_modes: v.map(|v| v.spec.access_modes.clone()).unwrap_or_default(),
        capacity: v.map(|v| v.spec.capacity.clone()).unwrap_or_default(),
    };
    let want = if phase == "Lost" {
        // Lost keeps what it had.
        PersistentVolumeClaimStatus {
            phase: want.phase,
            ..c.status.clone().unwrap_or_default()
        }
    } else {
        want
    };
    if c.status.as_ref() == Some(&want) {
        return None;
    }
    let mut c = c.clone();
    c.status = Some(want);
    Some(Action::UpdateClaimStatus(Box::new(c)))
}

fn claim_ref(c: &PersistentVolumeClaim) -> ClaimReference {
    ClaimReference {
        api_version: "v1".into(),
        kind: "PersistentVolumeClaim".into(),
        namespace: c.metadata.namespace.clone(),
        name: c.metadata.name.clone(),
        uid: c.metadata.uid.clone(),
        resource_version: String::new(),
        field_path: String::new(),
    }
}

/// The node of the first live pod bound to a node that uses claim `key` (oldest first).
fn consumer_node<'a>(key: &ClaimKey, pods: &'a [Arc<Pod>]) -> Option<&'a str> {
    pods.iter()
        .filter(|p| {
            p.metadata.namespace == key.0
                && !p.spec.node_name.is_empty()
                && p.metadata.deletion_timestamp.is_none()
                && !p.is_terminal()
                && pod_claims(&p.spec).any(|c| c == key.1)
        })
        .min_by(|a, b| {
            a.metadata
                .creation_timestamp
                .cmp(&b.metadata.creation_timestamp)
                .then_with(|| a.metadata.name.cmp(&b.metadata.name))
        })
        .map(|p| p.spec.node_name.as_str())
}

/// The volume the provisioner creates for `c` on `node` (None: the node has not announced its
/// storage directory yet).
pub fn provision(c: &PersistentVolumeClaim, node: &Node) -> Option<PersistentVolume> {
    let dir = node.metadata.annotations.get(NODE_STORAGE_DIR)?;
    let name = format!("pvc-{}", c.metadata.uid);
    let capacity: BTreeMap<String, Quantity> = c
        .spec
        .resources
        .requests
        .get("storage")
        .map(|q| [("storage".to_string(), q.clone())].into())
        .unwrap_or_default();
    Some(
        PersistentVolume {
            metadata: ObjectMeta {
                name: name.clone(),
                annotations: [(PROVISIONED_BY.to_string(), PROVISIONER.to_string())].into(),
                ..Default::default()
            },
            spec: PersistentVolumeSpec {
                capacity,
                access_modes: c.spec.access_modes.clone(),
                persistent_volume_reclaim_policy: Some("Delete".into()),
                storage_class_name: LOCAL_PATH.into(),
                claim_ref: Some(claim_ref(c)),
                host_path: Some(HostPathVolumeSource {
                    path: format!("{}/{name}", dir.trim_end_matches('/')),
                    type_: Some("DirectoryOrCreate".into()),
                }),
                node_affinity: Some(pin_to_node(&node.metadata.name)),
                volume_mode: Some("Filesystem".into()),
                ..Default::default()
            },
            ..Default::default()
        }
        .with_type_meta(),
    )
}

/// Plan one pass over everything the binder reads.
pub fn plan(
    claims: &[Arc<PersistentVolumeClaim>],
    volumes: &[Arc<PersistentVolume>],
    pods: &[Arc<Pod>],
    nodes: &[Arc<Node>],
) -> Vec<Action> {
    let by_key: BTreeMap<ClaimKey, Arc<PersistentVolumeClaim>> = claims
        .iter()
        .filter(|c| c.metadata.deletion_timestamp.is_none())
        .map(|c| (claim_key(c), c.clone()))
        .collect();
    let volume_names: BTreeMap<&str, &PersistentVolume> = volumes
        .iter()
        .map(|v| (v.metadata.name.as_str(), v.as_ref()))
        .collect();
    let mut out = Vec::new();
    // Claims some volume already points at (bound, being bound, or pre-bound).
    let mut claimed: BTreeSet<ClaimKey> = BTreeSet::new();

    for v in volumes {
        if v.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Some(r) = &v.spec.claim_ref else {
            out.extend(volume_status(v, "Available", ""));
            continue;
        };
        match claim_of(v, &by_key) {
            Some(c) => {
                claimed.insert(claim_key(c));
                if c.spec.volume_name.is_empty() {
                    // Step 2: the claim takes the volume that points at it.
                    let mut c = c.clone();
                    c.spec.volume_name = v.metadata.name.clone();
                    c.metadata
                        .annotations
                        .insert("pv.kubernetes.io/bind-completed".into(), "yes".into());
                    out.push(Action::UpdateClaim(Box::new(c)));
                } else if c.spec.volume_name == v.metadata.name {
                    // Step 3.
                    out.extend(volume_status(v, "Bound", ""));
                    out.extend(claim_status(c, "Bound", Some(v)));
                }
                // A claim bound to another volume: this one stays as it is until the user
                // sorts it out (as in Kubernetes).
            }
            None if r.uid.is_empty() => {
                // Pre-bound by a user to a claim that does not exist yet.
                out.extend(volume_status(v, "Available", ""));
            }
            None => {
                // Its claim is gone: Released, then reclaimed.
                match (v.reclaim_policy(), v.is_provisioned()) {
                    ("Delete", true) => out.push(Action::DeleteVolume {
                        name: v.metadata.name.clone(),
                        resource_version: v.metadata.resource_version,
                    }),
                    ("Delete", false) => out.extend(volume_status(
                        v,
                        "Failed",
                        "Berth deletes only the volumes it provisioned: remove the data of this volume and delete the PersistentVolume yourself",
                    )),
                    _ => out.extend(volume_status(v, "Released", "")),
                }
            }
        }
    }

    // Volumes taken in this pass (a static match), so two claims never get the same one.
    let mut taken: BTreeSet<String> = BTreeSet::new();
    for c in by_key.values() {
        let key = claim_key(c);
        if !c.spec.volume_name.is_empty() {
            match volume_names.get(c.spec.volume_name.as_str()) {
                None => {
                    if c.phase() == "Bound" {
                        out.extend(claim_status(c, "Lost", None));
                    }
                }
                Some(v) if v.spec.claim_ref.is_none() && !claimed.contains(&key) => {
                    // The user named the volume: step 1 for it, if it fits.
                    if v.satisfies(c) && taken.insert(v.metadata.name.clone()) {
                        let mut v = (*v).clone();
                        v.spec.claim_ref = Some(claim_ref(c));
                        out.push(Action::UpdateVolume(Box::new(v)));
                    }
                }
                Some(_) => {}
            }
            continue;
        }
        if claimed.contains(&key) {
            continue;
        }
        // Static provisioning: the smallest Available volume that satisfies the claim.
        let best = volumes
            .iter()
            .filter(|v| v.spec.claim_ref.is_none() && !taken.contains(&v.metadata.name))
            .filter(|v| v.satisfies(c))
            .min_by_key(|v| {
                (
                    v.capacity_bytes().unwrap_or(u64::MAX),
                    v.metadata.name.clone(),
                )
            });
        if let Some(v) = best {
            taken.insert(v.metadata.name.clone());
            let mut v = v.as_ref().clone();
            v.spec.claim_ref = Some(claim_ref(c));
            out.push(Action::UpdateVolume(Box::new(v)));
            continue;
        }
        if c.status.is_none() {
            out.extend(claim_status(c, "Pending", None));
        }
        if !c.is_local_path() {
            continue;
        }
        // WaitForFirstConsumer: provision on the node of the first pod bound that uses it.
        let Some(node) = consumer_node(&key, pods) else {
            continue;
        };
        let Some(node) = nodes.iter().find(|n| n.metadata.name == node) else {
            continue;
        };
        let name = format!("pvc-{}", c.metadata.uid);
        if volume_names.contains_key(name.as_str()) {
            continue;
        }
        if let Some(v) = provision(c, node) {
            out.push(Action::CreateVolume(Box::new(v)));
        }
    }
    out
}
