//! The object schema: Kubernetes-shaped serde types. This is the single source of truth; the
//! wire protocol carries these as JSON (see the crate header).
//!
//! Every struct denies unknown fields so a typo in a user's manifest is an error, not silently
//! ignored. Optional fields use `Option` or `#[serde(default)]` and are skipped when empty so
//! that `get -o yaml` output is clean and applies back unchanged.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub type Labels = BTreeMap<String, String>;
pub type Time = DateTime<Utc>;

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}
fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}
fn is_false(v: &bool) -> bool {
    !*v
}

/// resourceVersion is a string in Kubernetes; we keep it a number internally and accept both.
mod rv_string {
    use super::*;
    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            N(u64),
            S(String),
        }
        match Either::deserialize(d)? {
            Either::N(n) => Ok(n),
            Either::S(s) if s.is_empty() => Ok(0),
            Either::S(s) => s.parse().map_err(|_| {
                serde::de::Error::custom(format!("resourceVersion {s:?} is not a number"))
            }),
        }
    }
}

/// An integer or a string, e.g. `maxSurge: 25%` or `targetPort: http`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IntOrString {
    Int(i64),
    String(String),
}

impl Default for IntOrString {
    fn default() -> Self {
        IntOrString::Int(0)
    }
}

impl std::fmt::Display for IntOrString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IntOrString::Int(i) => write!(f, "{i}"),
            IntOrString::String(s) => f.write_str(s),
        }
    }
}

impl IntOrString {
    /// Resolve against a total, Kubernetes-style: "25%" of 10 rounds up when `round_up`.
    pub fn scaled_value(&self, total: i64, round_up: bool) -> Option<i64> {
        match self {
            IntOrString::Int(i) => Some(*i),
            IntOrString::String(s) => {
                let pct: i64 = s.strip_suffix('%')?.parse().ok()?;
                let v = pct * total;
                Some(if round_up { (v + 99) / 100 } else { v / 100 })
            }
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OwnerReference {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub uid: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub controller: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(default, skip_serializing_if = "is_zero_u64", with = "rv_string")]
    pub resource_version: u64,
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub generation: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_timestamp: Option<Time>,
    /// Seconds the object was given to stop when it was deleted (pods: set with
    /// deletionTimestamp, which is then the time by which the pod is to be gone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_grace_period_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owner_references: Vec<OwnerReference>,
    /// Which field manager owns which fields (server-side apply), as Kubernetes records it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub managed_fields: Vec<ManagedFieldsEntry>,
}

/// One field manager's fields: `metadata.managedFields[]` (server-side apply).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ManagedFieldsEntry {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub manager: String,
    /// `Apply` or `Update`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub operation: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
    /// Always `FieldsV1`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub fields_type: String,
    /// The field set, in the FieldsV1 encoding (`{"f:spec":{"f:replicas":{}}}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields_v1: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subresource: String,
}

impl ObjectMeta {
    pub fn controller_uid(&self) -> Option<&str> {
        self.owner_references
            .iter()
            .find(|o| o.controller)
            .map(|o| o.uid.as_str())
    }
}

// ---------------------------------------------------------------------------------------------
// Label selectors

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: Labels,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelectorRequirement {
    pub key: String,
    /// In, NotIn, Exists, DoesNotExist
    pub operator: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// Pods and containers

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvVar {
    pub name: String,
    #[serde(default)]
    pub value: String,
    /// Where the value comes from instead of `value` (a ConfigMap or Secret key, a field of
    /// the pod, a resource of the container); resolved by the agent when the container starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<EnvVarSource>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvVarSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_key_ref: Option<KeySelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<KeySelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field_ref: Option<ObjectFieldSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_field_ref: Option<ResourceFieldSelector>,
}

/// `configMapKeyRef` / `secretKeyRef`: one key of a ConfigMap or Secret in the pod's namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeySelector {
    #[serde(default)]
    pub name: String,
    pub key: String,
    /// The container starts without the variable when the object or key is missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectFieldSelector {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    pub field_path: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceFieldSelector {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub container_name: String,
    pub resource: String,
    /// Output unit ("1", "1m", "1Mi", ...); default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub divisor: Option<String>,
}

/// `volumeMounts[]`: where a pod volume appears in a container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VolumeMount {
    pub name: String,
    pub mount_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    /// A path inside the volume to mount instead of its root (never updated, as in Kubernetes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_path: Option<String>,
}

/// `volumes[]`: one storage source per volume.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Volume {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_dir: Option<EmptyDirVolumeSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<HostPathVolumeSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapVolumeSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretVolumeSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<PersistentVolumeClaimVolumeSource>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EmptyDirVolumeSource {
    /// "" (the node's disk) or Memory (a tmpfs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub medium: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_limit: Option<Quantity>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostPathVolumeSource {
    pub path: String,
    /// "", DirectoryOrCreate, Directory, FileOrCreate, File, Socket, CharDevice, BlockDevice.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
}

/// `items[]` of a configMap/secret volume: one key as a file at `path`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyToPath {
    pub key: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<i32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigMapVolumeSource {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<KeyToPath>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_mode: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretVolumeSource {
    pub secret_name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<KeyToPath>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_mode: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PersistentVolumeClaimVolumeSource {
    pub claim_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
}

/// `envFrom`: every key of a ConfigMap or Secret as a variable (with an optional prefix).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvFromSource {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<LocalObjectRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectRef>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalObjectRef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerPort {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    pub container_port: i32,
    /// TCP (default) or UDP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Fixed host port; 0 = the agent allocates one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<i32>,
}

/// Resource quantities as the user wrote them ("500m", "128Mi"); see `quantity` for parsing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceRequirements {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, Quantity>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, Quantity>,
}

/// A quantity as written: `cpu: 0.5` (a YAML number) and `cpu: "500m"` are both accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Quantity(#[serde(deserialize_with = "quantity_string")] pub String);

fn quantity_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Q {
        S(String),
        I(i64),
        F(f64),
    }
    Ok(match Q::deserialize(d)? {
        Q::S(s) => s,
        Q::I(i) => i.to_string(),
        Q::F(f) => f.to_string(),
    })
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpGetAction {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub port: IntOrString,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpSocketAction {
    pub port: IntOrString,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecAction {
    #[serde(default)]
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Probe {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGetAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<TcpSocketAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_delay_seconds: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_seconds: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_threshold: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<i32>,
}

impl Probe {
    pub fn initial_delay(&self) -> i32 {
        self.initial_delay_seconds.unwrap_or(0)
    }
    pub fn period(&self) -> i32 {
        self.period_seconds.unwrap_or(10)
    }
    pub fn timeout(&self) -> i32 {
        self.timeout_seconds.unwrap_or(1)
    }
    pub fn success(&self) -> i32 {
        self.success_threshold.unwrap_or(1)
    }
    pub fn failure(&self) -> i32 {
        self.failure_threshold.unwrap_or(3)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Container {
    pub name: String,
    #[serde(default)]
    pub image: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_from: Vec<EnvFromSource>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<VolumeMount>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ContainerPort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<Probe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Probe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_probe: Option<Probe>,
    /// Always, IfNotPresent, Never. There is no registry, so pulls are never attempted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
    /// Only on init containers, only `Always`: a native sidecar (Kubernetes 1.29+), started
    /// in init order, kept running beside the app containers, stopped after them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<String>,
    /// postStart / preStop hooks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<Lifecycle>,
}

impl Container {
    /// An init container with `restartPolicy: Always` (a native sidecar).
    pub fn is_sidecar(&self) -> bool {
        self.restart_policy.as_deref() == Some("Always")
    }
}

/// A container's lifecycle hooks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Lifecycle {
    /// Runs right after the container started; a failure kills it (FailedPostStartHook).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_start: Option<LifecycleHandler>,
    /// Runs before the container is sent its stop signal, within the grace period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_stop: Option<LifecycleHandler>,
}

/// One hook: exactly one of exec, httpGet, sleep.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LifecycleHandler {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGetAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sleep: Option<SleepAction>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SleepAction {
    pub seconds: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Toleration {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
    /// Equal (default) or Exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
    /// A [`crate::enums::TaintEffect`] (NoSchedule, PreferNoSchedule, NoExecute); empty matches all.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub effect: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toleration_seconds: Option<i64>,
}

impl Toleration {
    /// Kubernetes' `ToleratesTaint`: the effects match (an empty effect matches all), the keys
    /// match (an empty key matches all, with Exists), and with Equal (the default) the values
    /// match too; an empty key with Equal matches only a taint with an empty key.
    pub fn tolerates(&self, taint: &Taint) -> bool {
        if !self.effect.is_empty() && self.effect != taint.effect {
            return false;
        }
        if !self.key.is_empty() && self.key != taint.key {
            return false;
        }
        match self.operator.as_deref() {
            Some("Exists") => true,
            _ => self.key == taint.key && self.value == taint.value,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodSpec {
    /// Run in order, each to completion, before the app containers; those with
    /// `restartPolicy: Always` are native sidecars.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub init_containers: Vec<Container>,
    pub containers: Vec<Container>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node_name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: Labels,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_grace_period_seconds: Option<i64>,
    /// Always (default), OnFailure, Never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<String>,
    /// The runtime handler that runs the pod: `docker` or `process` (the RuntimeClasses every
    /// Berth node knows; see [`RUNTIME_CLASSES`]). None: the node's default (Docker where an
    /// engine answers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_class_name: Option<String>,
    /// ClusterFirst (default: the node's cluster DNS with the Kubernetes search path) or
    /// Default (the node's own resolvers). ClusterFirstWithHostNet is accepted as ClusterFirst.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_policy: Option<String>,
    /// Secrets (kubernetes.io/dockerconfigjson or /dockercfg, in the pod's namespace) whose
    /// credentials the agent uses to pull this pod's images.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectRef>,
}

impl PodSpec {
    /// Every container with the list it is in ("initContainers" or "containers") and its
    /// index there: init containers first, in order, then the app containers.
    pub fn all_containers(&self) -> impl Iterator<Item = (&'static str, usize, &Container)> {
        self.init_containers
            .iter()
            .enumerate()
            .map(|(i, c)| ("initContainers", i, c))
            .chain(
                self.containers
                    .iter()
                    .enumerate()
                    .map(|(i, c)| ("containers", i, c)),
            )
    }

    /// The ConfigMaps and Secrets (names in the pod's namespace) the pod's containers use:
    /// what a node may read for it (Kubernetes' node authorizer graph).
    pub fn referenced_config(&self) -> (BTreeSet<String>, BTreeSet<String>) {
        let mut config_maps = BTreeSet::new();
        let mut secrets = BTreeSet::new();
        for c in self.init_containers.iter().chain(&self.containers) {
            c.env_config_refs(&mut config_maps, &mut secrets);
        }
        for v in &self.volumes {
            if let Some(c) = &v.config_map {
                config_maps.insert(c.name.clone());
            }
            if let Some(s) = &v.secret {
                secrets.insert(s.secret_name.clone());
            }
        }
        for s in &self.image_pull_secrets {
            secrets.insert(s.name.clone());
        }
        (config_maps, secrets)
    }
}

impl Container {
    /// Add the ConfigMaps and Secrets this container's `env` and `envFrom` read.
    pub fn env_config_refs(
        &self,
        config_maps: &mut BTreeSet<String>,
        secrets: &mut BTreeSet<String>,
    ) {
        for e in &self.env {
            if let Some(src) = &e.value_from {
                if let Some(r) = &src.config_map_key_ref {
                    config_maps.insert(r.name.clone());
                }
                if let Some(r) = &src.secret_key_ref {
                    secrets.insert(r.name.clone());
                }
            }
        }
        for f in &self.env_from {
            if let Some(r) = &f.config_map_ref {
                config_maps.insert(r.name.clone());
            }
            if let Some(r) = &f.secret_ref {
                secrets.insert(r.name.clone());
            }
        }
    }
}

/// The dnsPolicy values Berth accepts.
pub const DNS_POLICIES: &[&str] = &["ClusterFirst", "ClusterFirstWithHostNet", "Default"];

/// The runtime classes Berth agents can offer (`spec.runtimeClassName`).
pub const RUNTIME_CLASSES: &[&str] = &["docker", "process"];

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodTemplateSpec {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: PodSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// "True", "False", "Unknown"
    pub status: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update_time: Option<Time>,
}

impl Condition {
    pub fn new(type_: &str, status: bool, reason: &str, message: &str, now: Time) -> Self {
        Condition {
            type_: type_.to_string(),
            status: if status { "True" } else { "False" }.to_string(),
            reason: reason.to_string(),
            message: message.to_string(),
            last_transition_time: Some(now),
            last_update_time: Some(now),
        }
    }
    pub fn is_true(&self) -> bool {
        self.status == "True"
    }
}

/// Find a condition by type.
pub fn condition<'a>(conds: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conds.iter().find(|c| c.type_ == type_)
}

/// Set a condition, keeping lastTransitionTime when the status did not change.
pub fn set_condition(conds: &mut Vec<Condition>, mut new: Condition) {
    if let Some(old) = conds.iter_mut().find(|c| c.type_ == new.type_) {
        if old.status == new.status {
            new.last_transition_time = old.last_transition_time;
        }
        *old = new;
    } else {
        conds.push(new);
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerStateWaiting {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerStateRunning {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerStateTerminated {
    pub exit_code: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<ContainerStateWaiting>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<ContainerStateRunning>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminated: Option<ContainerStateTerminated>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerStatus {
    pub name: String,
    #[serde(default)]
    pub ready: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<bool>,
    #[serde(default)]
    pub restart_count: i32,
    #[serde(default)]
    pub state: ContainerState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_state: Option<ContainerState>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub container_id: String,
}

/// Where a container port is published on the node (Nomad-style host ports).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostPortMapping {
    pub container_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    pub container_port: i32,
    pub host_port: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

/// One entry of `status.podIPs`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodIp {
    pub ip: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodStatus {
    /// A [`crate::enums::PodPhase`]: Pending, Running, Succeeded, Failed, Unknown.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub phase: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
    /// The pod's address. Pods share their node's network today (process pods, and Docker
    /// pods published on host ports), so it is the node's address, as for a Kubernetes pod
    /// with hostNetwork.
    #[serde(rename = "podIP", default, skip_serializing_if = "String::is_empty")]
    pub pod_ip: String,
    #[serde(rename = "podIPs", default, skip_serializing_if = "Vec::is_empty")]
    pub pod_ips: Vec<PodIp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub init_container_statuses: Vec<ContainerStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub container_statuses: Vec<ContainerStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_ports: Vec<HostPortMapping>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Pod {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: PodSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<PodStatus>,
}

impl Pod {
    /// `status.phase` as the enum: Pending while no phase was written yet. A spelling that is
    /// not a phase (validation refuses it, so only an object built in code has one) reads
    /// Unknown.
    pub fn phase(&self) -> crate::enums::PodPhase {
        use crate::enums::PodPhase;
        match self.status.as_ref().map(|s| s.phase.as_str()) {
            None | Some("") => PodPhase::Pending,
            Some(p) => p.parse().unwrap_or(PodPhase::Unknown),
        }
    }

    /// Succeeded or Failed: the pod's containers will not run again.
    pub fn is_terminal(&self) -> bool {
        self.phase().is_terminal()
    }

    pub fn is_ready(&self) -> bool {
        self.status
            .as_ref()
            .and_then(|s| condition(&s.conditions, "Ready"))
            .is_some_and(|c| c.is_true())
    }
}

// ---------------------------------------------------------------------------------------------
// Deployments and their revisions

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RollingUpdateDeployment {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_surge: Option<IntOrString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,
    /// Berth (after Nomad's `auto_revert`): when the rollout fails (progressDeadlineSeconds
    /// passes without progress, or [`Self::auto_revert_failed_pods`] new pods fail), scale the
    /// previous revision back up and the failed one to zero, within maxSurge/maxUnavailable.
    #[serde(default, skip_serializing_if = "is_false")]
    pub auto_revert: bool,
    /// With autoRevert: fail the rollout as soon as this many new pods have been
    /// crash-looping, failing to pull their image or failing readiness for
    /// [`Self::auto_revert_failed_seconds`] (unset: only the progress deadline fails it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_revert_failed_pods: Option<i32>,
    /// How long a new pod must keep failing before it counts (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_revert_failed_seconds: Option<i32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BlueGreenStrategy {
    pub active_service: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_promotion_enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_promotion_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down_delay_seconds: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeploymentStrategy {
    /// RollingUpdate (default), Recreate, BlueGreen.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolling_update: Option<RollingUpdateDeployment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blue_green: Option<BlueGreenStrategy>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeploymentSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    pub selector: LabelSelector,
    pub template: PodTemplateSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<DeploymentStrategy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_ready_seconds: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_deadline_seconds: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_history_limit: Option<i32>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub paused: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BlueGreenStatus {
    /// Pod-template hash the active Service selects.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub active_selector: String,
    /// Pod-template hash the preview Service selects.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub preview_selector: String,
    /// A [`crate::enums::BlueGreenPhase`]: Progressing, Paused, Promoting, Healthy, Degraded.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub phase: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted_at: Option<Time>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub previous_active_selector: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down_at: Option<Time>,
    /// When the current phase began (green creation for Progressing, green fully ready for
    /// Paused: the clock for progressDeadlineSeconds and autoPromotionSeconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_since: Option<Time>,
    /// Pod-template hash of a green revision that was aborted (kept at zero until the template
    /// changes again).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub aborted_selector: String,
    /// When every Ready node's proxy had programmed the last switch (promotion, undo or
    /// abort), or the switch barrier timed out; unset while the switch is still propagating.
    /// The old side's scale-down delay runs from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switch_confirmed_at: Option<Time>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeploymentStatus {
    #[serde(default)]
    pub observed_generation: i64,
    #[serde(default)]
    pub replicas: i32,
    #[serde(default)]
    pub updated_replicas: i32,
    #[serde(default)]
    pub ready_replicas: i32,
    #[serde(default)]
    pub available_replicas: i32,
    #[serde(default)]
    pub unavailable_replicas: i32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blue_green: Option<BlueGreenStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Deployment {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: DeploymentSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DeploymentStatus>,
}

impl DeploymentSpec {
    /// `strategy.type` as the enum, RollingUpdate when unset. A stored Deployment passed
    /// validation, so an unknown spelling (only possible in an object built in code) also reads
    /// as RollingUpdate; validation reports it for user input.
    pub fn strategy_type(&self) -> crate::enums::StrategyType {
        self.strategy
            .as_ref()
            .and_then(|s| s.type_.as_deref())
            .and_then(|t| t.parse().ok())
            .unwrap_or_default()
    }
}

/// One revision of a Deployment's pod template (the pods of one template hash).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplicaSetSpec {
    #[serde(default)]
    pub replicas: i32,
    pub selector: LabelSelector,
    pub template: PodTemplateSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_ready_seconds: Option<i32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplicaSetStatus {
    #[serde(default)]
    pub replicas: i32,
    #[serde(default)]
    pub ready_replicas: i32,
    #[serde(default)]
    pub available_replicas: i32,
    #[serde(default)]
    pub observed_generation: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplicaSet {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: ReplicaSetSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ReplicaSetStatus>,
}

// ---------------------------------------------------------------------------------------------
// Services and endpoints

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    pub port: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<IntOrString>,
    /// Allocated by the API server from its node-port range when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceSpec {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: Labels,
    pub ports: Vec<ServicePort>,
    /// NodePort (default; every node's proxy listens), ClusterIP or LoadBalancer (accepted).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// The Service's virtual IP from the API server's `--service-cidr`, allocated when the
    /// Service is created unless given; `None` makes a headless Service. Immutable.
    #[serde(rename = "clusterIP", default, skip_serializing_if = "Option::is_none")]
    pub cluster_ip: Option<String>,
    /// `[clusterIP]` (single-stack IPv4).
    #[serde(rename = "clusterIPs", default, skip_serializing_if = "Vec::is_empty")]
    pub cluster_ips: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceStatus {
    /// For type LoadBalancer: where it is served (every Ready node's address, as k3s's
    /// service load balancer reports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancerStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<LoadBalancerIngress>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancerIngress {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ip: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hostname: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: ServiceSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ServiceStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectReference {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointAddress {
    pub ip: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<ObjectReference>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointPort {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    pub port: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

/// Kubernetes' shape: addresses that share the same ports. With host ports, pods on different
/// nodes usually have different ports, so a subset often holds one address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointSubset {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<EndpointAddress>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ready_addresses: Vec<EndpointAddress>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<EndpointPort>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Endpoints {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub subsets: Vec<EndpointSubset>,
}

// ---------------------------------------------------------------------------------------------
// Nodes and events

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Taint {
    pub key: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
    /// A [`crate::enums::TaintEffect`]: NoSchedule, PreferNoSchedule, NoExecute.
    pub effect: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeSpec {
    /// This node's pod network, a block of the API server's `--cluster-cidr` allocated when
    /// the Node is registered and released when it is deleted.
    #[serde(rename = "podCIDR", default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr: Option<String>,
    #[serde(rename = "podCIDRs", default, skip_serializing_if = "Vec::is_empty")]
    pub pod_cidrs: Vec<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub unschedulable: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taints: Vec<Taint>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeAddress {
    #[serde(rename = "type")]
    pub type_: String,
    pub address: String,
}

/// An image on a node: its names (`repo:tag`, `repo@sha256:...`) and size.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerImage {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    #[serde(default)]
    pub size_bytes: i64,
}

/// A runtime handler a node offers (Kubernetes' NodeRuntimeHandler).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRuntimeHandler {
    pub name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeSystemInfo {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub container_runtime_version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kubelet_version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub operating_system: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub architecture: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeStatus {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub capacity: BTreeMap<String, Quantity>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub allocatable: BTreeMap<String, Quantity>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<NodeAddress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_info: Option<NodeSystemInfo>,
    /// host:port of the agent's own API (logs).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub agent_endpoint: String,
    /// The runtimes this node can run pods with, the default first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runtime_handlers: Vec<NodeRuntimeHandler>,
    /// Images on the node, largest first, at most 50 (as the kubelet reports them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<ContainerImage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_time: Option<Time>,
    /// What this node's Service proxy has programmed (absent: the node runs no proxy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<NodeProxyStatus>,
}

/// A node's Service proxy, as reported by its agent (batched, not one write per change).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeProxyStatus {
    /// `userspace` or `nftables`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mode: String,
    /// Every Endpoints change up to this store revision is programmed in the datapath: an
    /// Endpoints object whose resourceVersion is at most this is what the node serves.
    #[serde(default, with = "rv_string")]
    pub programmed_revision: u64,
    /// When that revision was programmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub programmed_time: Option<Time>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Node {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: NodeSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<NodeStatus>,
}

impl Node {
    pub fn is_ready(&self) -> bool {
        self.status
            .as_ref()
            .and_then(|s| condition(&s.conditions, "Ready"))
            .is_some_and(|c| c.is_true())
    }
    /// The address endpoints on this node are reached at.
    pub fn address(&self) -> Option<&str> {
        let s = self.status.as_ref()?;
        s.addresses
            .iter()
            .find(|a| a.type_ == "InternalIP")
            .or_else(|| s.addresses.first())
            .map(|a| a.address.as_str())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventSource {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub component: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Event {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub involved_object: ObjectReference,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: String,
    /// Normal or Warning.
    #[serde(rename = "type", default)]
    pub type_: String,
    #[serde(default)]
    pub source: EventSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_timestamp: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_timestamp: Option<Time>,
    #[serde(default)]
    pub count: i32,
}

// ---------------------------------------------------------------------------------------------
// The cluster registry's metadata (API group registry.berth.dev/v1, cluster-scoped). Tags and
// manifests live in the replicated store so any server answers any tag; blob bytes live on the
// servers' disks and `ImageBlob.status.servers` says which servers hold a verified copy.
// Object names are derived from repository/tag/digest by `crate::image` (DNS-safe, stable).

/// One manifest (image manifest or index) in one repository.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageManifestSpec {
    /// e.g. `library/nginx`, `shop/web`.
    pub repository: String,
    /// `sha256:<64 hex>` of `content`'s bytes.
    pub digest: String,
    /// e.g. `application/vnd.oci.image.manifest.v1+json`,
    /// `application/vnd.docker.distribution.manifest.v2+json`.
    pub media_type: String,
    /// The manifest exactly as pushed (manifests are JSON, hence UTF-8 text).
    pub content: String,
    /// Blob digests this manifest references (config and layers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blobs: Vec<String>,
    /// Child manifest digests (an index / manifest list).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub manifests: Vec<String>,
    /// `subject` digest (OCI 1.1 referrers), if any.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subject: String,
    /// Total size in bytes of the manifest and every blob it references.
    #[serde(default)]
    pub total_size: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageManifest {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: ImageManifestSpec,
}

/// A tag: repository + tag -> manifest digest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageTagSpec {
    pub repository: String,
    pub tag: String,
    /// `sha256:<64 hex>` of the manifest the tag points at.
    pub digest: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageTag {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: ImageTagSpec,
}

/// One server's registry endpoint, written by that server when its registry starts (name
/// `server-<raft id>`): peers replicate and refetch blobs through it, node mirrors pull
/// through it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegistryServerSpec {
    /// The server's Raft member id.
    pub server_id: u64,
    /// Base URL of its registry, e.g. `https://10.0.0.1:5443` (`http://` on `berth dev`'s
    /// loopback listener).
    pub url: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegistryServer {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: RegistryServerSpec,
}

/// A content-addressed blob (layer or config) known to the cluster registry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageBlobSpec {
    /// `sha256:<64 hex>`.
    pub digest: String,
    pub size: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageBlobStatus {
    /// Names (raft ids / registry endpoints) of the servers holding a verified copy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<String>,
    /// When the blob was last found unreferenced (garbage collection starts its grace period).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreferenced_since: Option<Time>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageBlob {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: ImageBlobSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ImageBlobStatus>,
}

// ---------------------------------------------------------------------------------------------
// Image trust (API group trust.berth.dev/v1): keys, signatures over manifest digests, and the
// require-signed-images policy. Verification ([`crate::trust`]) reads only these objects and
// `ImageTag`, so the API server and the agents check from the store alone.

/// A public key whose signatures the cluster trusts (cluster-scoped; the name is what
/// `berth sign --key NAME` and the error messages say).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrustKeySpec {
    /// ECDSA P-256 public key, PEM `PUBLIC KEY` (SubjectPublicKeyInfo), as cosign writes it.
    pub public_key: String,
    /// `sha256:<hex>` of the key's SubjectPublicKeyInfo DER.
    pub fingerprint: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrustKey {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: TrustKeySpec,
}

/// One key's signature over one manifest digest of one repository (cluster-scoped; named by
/// [`crate::trust::signature_object_name`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageSignatureSpec {
    /// The cluster registry repository, e.g. `shop/web`.
    pub repository: String,
    /// The manifest digest signed, `sha256:<64 hex>`.
    pub digest: String,
    /// The `TrustKey` that signed it.
    pub key_name: String,
    /// That key's fingerprint when it signed.
    pub key_fingerprint: String,
    /// The exact bytes signed: cosign's simple-signing JSON payload.
    pub payload: String,
    /// Base64 of the ASN.1 DER ECDSA P-256 SHA-256 signature over `payload` (as cosign).
    pub signature: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageSignature {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: ImageSignatureSpec,
}

/// What an image policy requires.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImagePolicySpec {
    /// Pods may run only images signed by a trusted key.
    #[serde(default)]
    pub require_signed_images: bool,
}

/// The cluster-wide default policy: the one object named `cluster`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterImagePolicy {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ImagePolicySpec,
}

/// A namespace's policy, overriding the cluster's (on or off): the object named `default` in
/// that namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImagePolicy {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ImagePolicySpec,
}

// ---------------------------------------------------------------------------------------------
// Configuration: ConfigMaps and Secrets (v1)

/// `v1 ConfigMap`: non-secret configuration, as text (`data`) or base64 bytes (`binaryData`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigMap {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
    /// base64 of the bytes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub binary_data: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub immutable: Option<bool>,
}

/// `v1 Secret`. `data` holds base64 of the bytes; `stringData` is write-only plain text, merged
/// into `data` when stored (as the Kubernetes API server does).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Secret {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Opaque (default), kubernetes.io/dockerconfigjson, kubernetes.io/tls, ...
    #[serde(default, rename = "type", skip_serializing_if = "String::is_empty")]
    pub type_: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub string_data: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub immutable: Option<bool>,
}

/// Never prints values: a Secret in a log line or an error shows its keys and sizes only.
impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sizes: BTreeMap<&str, usize> = self
            .data
            .iter()
            .map(|(k, v)| (k.as_str(), v.len()))
            .chain(self.string_data.iter().map(|(k, v)| (k.as_str(), v.len())))
            .collect();
        f.debug_struct("Secret")
            .field("metadata", &self.metadata)
            .field("type", &self.type_)
            .field("data (key: encoded bytes)", &sizes)
            .finish()
    }
}

impl Secret {
    /// The Secret's type, Opaque when unset.
    pub fn secret_type(&self) -> &str {
        if self.type_.is_empty() {
            "Opaque"
        } else {
            &self.type_
        }
    }

    /// The decoded value of `key` (None: no such key, or not base64).
    pub fn value(&self, key: &str) -> Option<Vec<u8>> {
        use base64::Engine as _;
        if let Some(v) = self.string_data.get(key) {
            return Some(v.as_bytes().to_vec());
        }
        base64::engine::general_purpose::STANDARD
            .decode(self.data.get(key)?)
            .ok()
    }
}

impl ConfigMap {
    /// The bytes of `key`, from `data` or `binaryData` (None: no such key).
    pub fn value(&self, key: &str) -> Option<Vec<u8>> {
        use base64::Engine as _;
        if let Some(v) = self.data.get(key) {
            return Some(v.as_bytes().to_vec());
        }
        base64::engine::general_purpose::STANDARD
            .decode(self.binary_data.get(key)?)
            .ok()
    }
}

// ---------------------------------------------------------------------------------------------
// Namespaces (v1)

/// The finalizer the namespace controller removes once everything in a terminating namespace
/// is gone (`spec.finalizers`, as in Kubernetes).
pub const NAMESPACE_FINALIZER: &str = "kubernetes";

/// `v1 Namespace` (cluster-scoped). Deleting one marks it Terminating; the namespace
/// controller deletes everything in it, removes its finalizer, then the Namespace itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Namespace {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: NamespaceSpec,
    #[serde(default)]
    pub status: NamespaceStatus,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespaceSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finalizers: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespaceStatus {
    /// `Active` or `Terminating`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub phase: String,
}

impl Namespace {
    pub fn terminating(&self) -> bool {
        self.metadata.deletion_timestamp.is_some() || self.status.phase == "Terminating"
    }
}

/// Namespaces every cluster has from init (the leader creates their objects; writes into
/// them are accepted even before it has).
pub const SYSTEM_NAMESPACES: [&str; 2] = ["default", "berth-system"];

/// Namespaces that may not be deleted (Kubernetes' immortal ones plus Berth's own).
pub const PROTECTED_NAMESPACES: [&str; 4] =
    ["default", "berth-system", "kube-system", "kube-public"];
