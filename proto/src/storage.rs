//! Persistent storage: `v1 PersistentVolumeClaim` and `v1 PersistentVolume`, their validation,
//! and the pure rules the binder, the scheduler and the agent share (which claims a pod uses,
//! whether a volume may be used on a node, whether a volume satisfies a claim).
//!
//! Berth has one StorageClass, `local-path` (k3s's default): a claim that names no class gets
//! it when stored; its volumes are provisioned on the node of the claim's first pod
//! (`volumeBindingMode: WaitForFirstConsumer`) as a directory on that node's disk, pinned to the
//! node by `nodeAffinity`, with `persistentVolumeReclaimPolicy: Delete`. Claims of any other
//! class (or `""`) bind only to PersistentVolumes created beforehand (static provisioning),
//! immediately, as Kubernetes does for a class with no StorageClass object.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::quantity::ParsedQuantity;
use crate::types::{HostPathVolumeSource, LabelSelector, Node, ObjectMeta, PodSpec, Quantity};
use crate::validate::{check_dns1123_label, check_dns1123_subdomain, FieldError, FieldPath};

/// The one StorageClass: volumes provisioned on the node's disk (k3s's `local-path`).
pub const LOCAL_PATH: &str = "local-path";
/// The provisioner named in `pv.kubernetes.io/provisioned-by` of the volumes Berth creates.
pub const PROVISIONER: &str = "berth.dev/local-path";
/// Annotation on a PersistentVolume that says who provisioned it (Kubernetes' name).
pub const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
/// Annotation on a claim naming the node its volume was provisioned for (Kubernetes' name).
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// Annotation on a Node: the directory under which its agent keeps provisioned volumes.
pub const NODE_STORAGE_DIR: &str = "berth.dev/local-path-dir";
/// The node label volume node affinity names (Berth nodes without it match by name).
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// Access modes Kubernetes knows. On one node's disk every mode is honoured only for pods on
/// that node (as with k3s's local-path).
pub const ACCESS_MODES: &[&str] = &[
    "ReadWriteOnce",
    "ReadOnlyMany",
    "ReadWriteMany",
    "ReadWriteOncePod",
];

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VolumeResourceRequirements {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, Quantity>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, Quantity>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PersistentVolumeClaimSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_modes: Vec<String>,
    #[serde(default)]
    pub resources: VolumeResourceRequirements,
    /// None when written: the default class (`local-path`) is set when stored. `""`: no class,
    /// only a pre-created volume of no class binds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// The bound PersistentVolume (set by the binder, or by the user to pick one).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub volume_name: String,
    /// Filesystem (the only mode Berth supports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_mode: Option<String>,
    /// Only volumes with matching labels bind (static provisioning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PersistentVolumeClaimStatus {
    /// Pending, Bound or Lost.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub phase: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_modes: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub capacity: BTreeMap<String, Quantity>,
}

/// `v1 PersistentVolumeClaim`: a request for storage by a pod's namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PersistentVolumeClaim {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PersistentVolumeClaimSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<PersistentVolumeClaimStatus>,
}

/// `spec.claimRef` of a PersistentVolume: the claim it is (or is to be) bound to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimReference {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource_version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub field_path: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalVolumeSource {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs_type: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeSelectorRequirement {
    pub key: String,
    /// In, NotIn, Exists, DoesNotExist, Gt, Lt.
    pub operator: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeSelectorTerm {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<NodeSelectorRequirement>,
    /// Only `metadata.name` (In/NotIn), as in Kubernetes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_fields: Vec<NodeSelectorRequirement>,
}

/// Terms are ORed; the requirements of one term are ANDed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeSelector {
    #[serde(default)]
    pub node_selector_terms: Vec<NodeSelectorTerm>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VolumeNodeAffinity {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required: Option<NodeSelector>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PersistentVolumeSpec {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub capacity: BTreeMap<String, Quantity>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_modes: Vec<String>,
    /// Delete or Retain (Retain when unset, as for any volume created by hand).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_reclaim_policy: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub storage_class_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_ref: Option<ClaimReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<HostPathVolumeSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalVolumeSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_affinity: Option<VolumeNodeAffinity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_mode: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mount_options: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PersistentVolumeStatus {
    /// Pending, Available, Bound, Released or Failed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub phase: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// `v1 PersistentVolume` (cluster-scoped): a piece of storage on a node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PersistentVolume {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PersistentVolumeSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<PersistentVolumeStatus>,
}

/// The names of the claims a pod's volumes use (in the pod's namespace), in volume order.
pub fn pod_claims(spec: &PodSpec) -> impl Iterator<Item = &str> {
    spec.volumes
        .iter()
        .filter_map(|v| v.persistent_volume_claim.as_ref())
        .map(|c| c.claim_name.as_str())
}

fn storage_bytes(m: &BTreeMap<String, Quantity>) -> Option<u64> {
    m.get("storage")
        .and_then(|q| q.parsed().ok())
        .map(|q: ParsedQuantity| q.value())
}

impl PersistentVolumeClaim {
    /// The class, as stored (`local-path` when the user named none).
    pub fn storage_class(&self) -> &str {
        self.spec
            .storage_class_name
            .as_deref()
            .unwrap_or(LOCAL_PATH)
    }

    /// Is this claim's volume provisioned by Berth on its first pod's node?
    pub fn is_local_path(&self) -> bool {
        self.storage_class() == LOCAL_PATH
    }

    pub fn phase(&self) -> &str {
        self.status
            .as_ref()
            .map(|s| s.phase.as_str())
            .filter(|p| !p.is_empty())
            .unwrap_or("Pending")
    }

    /// `resources.requests.storage` in bytes.
    pub fn requested_bytes(&self) -> Option<u64> {
        storage_bytes(&self.spec.resources.requests)
    }
}

impl PersistentVolume {
    pub fn phase(&self) -> &str {
        self.status
            .as_ref()
            .map(|s| s.phase.as_str())
            .filter(|p| !p.is_empty())
            .unwrap_or("Pending")
    }

    /// Delete or Retain.
    pub fn reclaim_policy(&self) -> &str {
        self.spec
            .persistent_volume_reclaim_policy
            .as_deref()
            .unwrap_or("Retain")
    }

    /// Was it provisioned by Berth's local-path provisioner (its directory is the agent's)?
    pub fn is_provisioned(&self) -> bool {
        self.metadata
            .annotations
            .get(PROVISIONED_BY)
            .is_some_and(|p| p == PROVISIONER)
    }

    pub fn capacity_bytes(&self) -> Option<u64> {
        storage_bytes(&self.spec.capacity)
    }

    /// May a pod on `node` use this volume? (No nodeAffinity: any node.)
    pub fn allows_node(&self, node: &Node) -> bool {
        match self
            .spec
            .node_affinity
            .as_ref()
            .and_then(|a| a.required.as_ref())
        {
            None => true,
            Some(sel) => node_selector_matches(sel, node),
        }
    }

    /// The node a nodeAffinity of exactly one hostname pins this volume to.
    pub fn pinned_node(&self) -> Option<&str> {
        let sel = self.spec.node_affinity.as_ref()?.required.as_ref()?;
        let [term] = sel.node_selector_terms.as_slice() else {
            return None;
        };
        term.match_expressions
            .iter()
            .chain(&term.match_fields)
            .find(|r| {
                r.operator == "In"
                    && r.values.len() == 1
                    && (r.key == HOSTNAME_LABEL || r.key == "metadata.name")
            })
            .map(|r| r.values[0].as_str())
    }

    /// Can this volume satisfy `claim`? Class, access modes, size, selector; and not bound to
    /// another claim (a `claimRef` naming this claim is a pre-binding and matches).
    pub fn satisfies(&self, claim: &PersistentVolumeClaim) -> bool {
        if let Some(r) = &self.spec.claim_ref {
            let same = r.namespace == claim.metadata.namespace
                && r.name == claim.metadata.name
                && (r.uid.is_empty() || r.uid == claim.metadata.uid);
            if !same {
                return false;
            }
        } else if self.phase() != "Available" && self.phase() != "Pending" {
            return false;
        }
        if self.metadata.deletion_timestamp.is_some() {
            return false;
        }
        if self.spec.storage_class_name != claim.storage_class() {
            return false;
        }
        if !claim
            .spec
            .access_modes
            .iter()
            .all(|m| self.spec.access_modes.contains(m))
        {
            return false;
        }
        if claim.requested_bytes().unwrap_or(0) > self.capacity_bytes().unwrap_or(0) {
            return false;
        }
        if let Some(sel) = &claim.spec.selector {
            match crate::selector::Selector::from_label_selector(sel) {
                Ok(s) => {
                    if !s.matches(&self.metadata.labels) {
                        return false;
                    }
                }
                Err(_) => return false,
            }
        }
        true
    }
}

/// The label value of `key` on `node`; `kubernetes.io/hostname` falls back to the node's name.
fn node_label<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    node.metadata
        .labels
        .get(key)
        .map(String::as_str)
        .or_else(|| (key == HOSTNAME_LABEL).then_some(node.metadata.name.as_str()))
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let num = |s: &str| s.parse::<i64>().ok();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| r.values.iter().any(|x| x == v)),
        "NotIn" => !value.is_some_and(|v| r.values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) =
                (value.and_then(num), r.values.first().and_then(|s| num(s)))
            else {
                return false;
            };
            if r.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// Does `node` match the selector (any term, every requirement of it)?
pub fn node_selector_matches(sel: &NodeSelector, node: &Node) -> bool {
    sel.node_selector_terms.iter().any(|t| {
        (!t.match_expressions.is_empty() || !t.match_fields.is_empty())
            && t.match_expressions
                .iter()
                .all(|r| requirement_matches(r, node_label(node, &r.key)))
            && t.match_fields.iter().all(|r| {
                r.key == "metadata.name"
                    && requirement_matches(r, Some(node.metadata.name.as_str()))
            })
    })
}

/// The nodeAffinity that pins a volume to `node` (what the provisioner writes).
pub fn pin_to_node(node: &str) -> VolumeNodeAffinity {
    VolumeNodeAffinity {
        required: Some(NodeSelector {
            node_selector_terms: vec![NodeSelectorTerm {
                match_expressions: vec![NodeSelectorRequirement {
                    key: HOSTNAME_LABEL.to_string(),
                    operator: "In".to_string(),
                    values: vec![node.to_string()],
                }],
                match_fields: Vec::new(),
            }],
        }),
    }
}

/// kubectl's short forms of access modes (`RWO,ROX`).
pub fn access_modes_short(modes: &[String]) -> String {
    modes
        .iter()
        .map(|m| match m.as_str() {
            "ReadWriteOnce" => "RWO",
            "ReadOnlyMany" => "ROX",
            "ReadWriteMany" => "RWX",
            "ReadWriteOncePod" => "RWOP",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(",")
}

// ---------------------------------------------------------------------------------------------
// Validation

fn access_modes(e: &mut Vec<FieldError>, modes: &[String], path: &FieldPath) {
    if modes.is_empty() {
        e.push(FieldError::new(
            path.clone(),
            "at least one access mode is required (e.g. ReadWriteOnce)",
        ));
    }
    for (i, m) in modes.iter().enumerate() {
        if !ACCESS_MODES.contains(&m.as_str()) {
            e.push(FieldError::new(
                path.index(i),
                format!(
                    "unsupported access mode {m:?}: use one of {}",
                    ACCESS_MODES.join(", ")
                ),
            ));
        }
    }
    if modes.iter().any(|m| m == "ReadWriteOncePod") && modes.len() > 1 {
        e.push(FieldError::new(
            path.clone(),
            "ReadWriteOncePod may not be combined with other access modes",
        ));
    }
}

fn storage_quantity(
    e: &mut Vec<FieldError>,
    m: &BTreeMap<String, Quantity>,
    path: &FieldPath,
    what: &str,
) {
    for k in m.keys().filter(|k| k.as_str() != "storage") {
        e.push(FieldError::new(
            path.child(k),
            format!("unsupported resource {k:?}: {what} takes only storage"),
        ));
    }
    match m.get("storage") {
        None => e.push(FieldError::new(
            path.child("storage"),
            "is required (e.g. storage: 1Gi)",
        )),
        Some(q) => match q.parsed() {
            Err(err) => e.push(FieldError::new(path.child("storage"), err.to_string())),
            Ok(v) if v.is_zero() => e.push(FieldError::new(
                path.child("storage"),
                "must be greater than zero",
            )),
            Ok(_) => {}
        },
    }
}

fn volume_mode(e: &mut Vec<FieldError>, m: Option<&str>, path: &FieldPath) {
    if let Some(m) = m {
        if m != "Filesystem" {
            e.push(FieldError::new(
                path.clone(),
                format!("unsupported volumeMode {m:?}: Berth supports only Filesystem"),
            ));
        }
    }
}

fn name_field(e: &mut Vec<FieldError>, name: &str, path: &FieldPath, required: bool) {
    if name.is_empty() {
        if required {
            e.push(FieldError::new(path.clone(), "is required"));
        }
    } else if let Err(m) = check_dns1123_subdomain(name) {
        e.push(FieldError::new(
            path.clone(),
            format!("invalid name {name:?}: {m}"),
        ));
    }
}

fn absolute_path(e: &mut Vec<FieldError>, p: &str, path: &FieldPath) {
    if !p.starts_with('/') {
        e.push(FieldError::new(
            path.clone(),
            format!("{p:?} must be an absolute path"),
        ));
    } else if p.split('/').any(|s| s == "..") {
        e.push(FieldError::new(path.clone(), "must not contain '..'"));
    }
}

/// Validate a PersistentVolumeClaim's spec and status (its metadata is checked by the caller).
pub fn validate_claim_spec(c: &PersistentVolumeClaim) -> Vec<FieldError> {
    let mut e = Vec::new();
    let spec = FieldPath::root().child("spec");
    access_modes(&mut e, &c.spec.access_modes, &spec.child("accessModes"));
    storage_quantity(
        &mut e,
        &c.spec.resources.requests,
        &spec.child("resources").child("requests"),
        "a claim",
    );
    for k in c.spec.resources.limits.keys() {
        if k != "storage" {
            e.push(FieldError::new(
                spec.child("resources").child("limits").child(k),
                format!("unsupported resource {k:?}: a claim takes only storage"),
            ));
        }
    }
    if let Some(class) = c.spec.storage_class_name.as_deref() {
        if !class.is_empty() {
            name_field(&mut e, class, &spec.child("storageClassName"), false);
        }
    }
    name_field(
        &mut e,
        &c.spec.volume_name,
        &spec.child("volumeName"),
        false,
    );
    volume_mode(
        &mut e,
        c.spec.volume_mode.as_deref(),
        &spec.child("volumeMode"),
    );
    if let Some(st) = &c.status {
        if !matches!(st.phase.as_str(), "" | "Pending" | "Bound" | "Lost") {
            e.push(FieldError::new(
                FieldPath::root().child("status").child("phase"),
                format!("unknown phase {:?}: use Pending, Bound or Lost", st.phase),
            ));
        }
    }
    e
}

const OPERATORS: &[&str] = &["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"];

fn node_affinity(e: &mut Vec<FieldError>, a: &VolumeNodeAffinity, path: &FieldPath) {
    let Some(req) = &a.required else {
        e.push(FieldError::new(
            path.child("required"),
            "is required (the nodes the volume can be used on)",
        ));
        return;
    };
    let tp = path.child("required").child("nodeSelectorTerms");
    if req.node_selector_terms.is_empty() {
        e.push(FieldError::new(tp.clone(), "at least one term is required"));
    }
    for (i, t) in req.node_selector_terms.iter().enumerate() {
        let p = tp.index(i);
        if t.match_expressions.is_empty() && t.match_fields.is_empty() {
            e.push(FieldError::new(
                p.clone(),
                "needs matchExpressions or matchFields (an empty term matches no node)",
            ));
        }
        for (field, list) in [
            ("matchExpressions", &t.match_expressions),
            ("matchFields", &t.match_fields),
        ] {
            for (j, r) in list.iter().enumerate() {
                let rp = p.child(field).index(j);
                if field == "matchFields" && r.key != "metadata.name" {
                    e.push(FieldError::new(
                        rp.child("key"),
                        format!("unsupported field {:?}: use metadata.name", r.key),
                    ));
                } else if field == "matchExpressions" {
                    if let Err(m) = crate::validate::check_qualified_name(&r.key) {
                        e.push(FieldError::new(rp.child("key"), m));
                    }
                }
                if !OPERATORS.contains(&r.operator.as_str()) {
                    e.push(FieldError::new(
                        rp.child("operator"),
                        format!(
                            "unsupported operator {:?}: use one of {}",
                            r.operator,
                            OPERATORS.join(", ")
                        ),
                    ));
                    continue;
                }
                let n = r.values.len();
                let bad = match r.operator.as_str() {
                    "In" | "NotIn" if n == 0 => Some("must have at least one value"),
                    "Exists" | "DoesNotExist" if n > 0 => Some("must have no values"),
                    "Gt" | "Lt" if n != 1 || r.values[0].parse::<i64>().is_err() => {
                        Some("must have exactly one integer value")
                    }
                    _ => None,
                };
                if let Some(m) = bad {
                    e.push(FieldError::new(
                        rp.child("values"),
                        format!("{m} for operator {}", r.operator),
                    ));
                }
            }
        }
    }
}

/// Validate a PersistentVolume's spec and status (its metadata is checked by the caller).
pub fn validate_volume_spec(v: &PersistentVolume) -> Vec<FieldError> {
    let mut e = Vec::new();
    let spec = FieldPath::root().child("spec");
    storage_quantity(
        &mut e,
        &v.spec.capacity,
        &spec.child("capacity"),
        "a volume",
    );
    access_modes(&mut e, &v.spec.access_modes, &spec.child("accessModes"));
    match v.spec.persistent_volume_reclaim_policy.as_deref() {
        None | Some("Delete") | Some("Retain") => {}
        Some("Recycle") => e.push(FieldError::new(
            spec.child("persistentVolumeReclaimPolicy"),
            "Recycle is deprecated in Kubernetes and not supported by Berth: use Delete or Retain",
        )),
        Some(p) => e.push(FieldError::new(
            spec.child("persistentVolumeReclaimPolicy"),
            format!("unsupported reclaim policy {p:?}: use Delete or Retain"),
        )),
    }
    if !v.spec.storage_class_name.is_empty() {
        name_field(
            &mut e,
            &v.spec.storage_class_name,
            &spec.child("storageClassName"),
            false,
        );
    }
    match (&v.spec.host_path, &v.spec.local) {
        (None, None) => e.push(FieldError::new(
            spec.clone(),
            "a volume source is required: hostPath or local (Berth supports these two)",
        )),
        (Some(_), Some(_)) => e.push(FieldError::new(
            spec.child("local"),
            "may not be specified together with hostPath: use exactly one volume source",
        )),
        (Some(h), None) => {
            absolute_path(&mut e, &h.path, &spec.child("hostPath").child("path"));
            if let Some(t) = h.type_.as_deref() {
                if !matches!(t, "" | "DirectoryOrCreate" | "Directory") {
                    e.push(FieldError::new(
                        spec.child("hostPath").child("type"),
                        format!("unsupported type {t:?} for a PersistentVolume: use Directory or DirectoryOrCreate"),
                    ));
                }
            }
        }
        (None, Some(l)) => {
            absolute_path(&mut e, &l.path, &spec.child("local").child("path"));
            if v.spec.node_affinity.is_none() {
                e.push(FieldError::new(
                    spec.child("nodeAffinity"),
                    "is required for a local volume (the node its path is on)",
                ));
            }
        }
    }
    if let Some(a) = &v.spec.node_affinity {
        node_affinity(&mut e, a, &spec.child("nodeAffinity"));
    }
    if let Some(r) = &v.spec.claim_ref {
        let p = spec.child("claimRef");
        name_field(&mut e, &r.name, &p.child("name"), true);
        if r.namespace.is_empty() {
            e.push(FieldError::new(p.child("namespace"), "is required"));
        } else if let Err(m) = check_dns1123_label(&r.namespace) {
            e.push(FieldError::new(p.child("namespace"), m));
        }
        if !r.kind.is_empty() && r.kind != "PersistentVolumeClaim" {
            e.push(FieldError::new(
                p.child("kind"),
                format!("must be PersistentVolumeClaim (got {:?})", r.kind),
            ));
        }
    }
    volume_mode(
        &mut e,
        v.spec.volume_mode.as_deref(),
        &spec.child("volumeMode"),
    );
    if let Some(st) = &v.status {
        if !matches!(
            st.phase.as_str(),
            "" | "Pending" | "Available" | "Bound" | "Released" | "Failed"
        ) {
            e.push(FieldError::new(
                FieldPath::root().child("status").child("phase"),
                format!(
                    "unknown phase {:?}: use Pending, Available, Bound, Released or Failed",
                    st.phase
                ),
            ));
        }
    }
    e
}
