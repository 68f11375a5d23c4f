//! Kinds and the uniform view of an object that the server and the CLI share.

use serde::{de::DeserializeOwned, Serialize};

use crate::storage::{PersistentVolume, PersistentVolumeClaim};
use crate::types::*;

/// Every kind Berth stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Deployment,
    ReplicaSet,
    Service,
    Pod,
    Endpoints,
    Node,
    Event,
    ImageManifest,
    ImageTag,
    ImageBlob,
    RegistryServer,
    // Image trust (trust.berth.dev/v1).
    TrustKey,
    ImageSignature,
    ClusterImagePolicy,
    ImagePolicy,
    // Configuration (v1).
    ConfigMap,
    Secret,
    // Storage (v1).
    PersistentVolumeClaim,
    PersistentVolume,
    // Namespaces (v1).
    Namespace,
}

impl Kind {
    pub const ALL: [Kind; 20] = [
        Kind::Deployment,
        Kind::ReplicaSet,
        Kind::Service,
        Kind::Pod,
        Kind::Endpoints,
        Kind::Node,
        Kind::Event,
        Kind::ImageManifest,
        Kind::ImageTag,
        Kind::ImageBlob,
        Kind::RegistryServer,
        // Image trust.
        Kind::TrustKey,
        Kind::ImageSignature,
        Kind::ClusterImagePolicy,
        Kind::ImagePolicy,
        // Configuration.
        Kind::ConfigMap,
        Kind::Secret,
        // Storage.
        Kind::PersistentVolumeClaim,
        Kind::PersistentVolume,
        // Namespaces.
        Kind::Namespace,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Deployment => "Deployment",
            Kind::ReplicaSet => "ReplicaSet",
            Kind::Service => "Service",
            Kind::Pod => "Pod",
            Kind::Endpoints => "Endpoints",
            Kind::Node => "Node",
            Kind::Event => "Event",
            Kind::ImageManifest => "ImageManifest",
            Kind::ImageTag => "ImageTag",
            Kind::ImageBlob => "ImageBlob",
            Kind::RegistryServer => "RegistryServer",
            // Image trust.
            Kind::TrustKey => "TrustKey",
            Kind::ImageSignature => "ImageSignature",
            Kind::ClusterImagePolicy => "ClusterImagePolicy",
            Kind::ImagePolicy => "ImagePolicy",
            Kind::ConfigMap => "ConfigMap",
            Kind::Secret => "Secret",
            Kind::PersistentVolumeClaim => "PersistentVolumeClaim",
            Kind::PersistentVolume => "PersistentVolume",
            Kind::Namespace => "Namespace",
        }
    }

    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Deployment | Kind::ReplicaSet => "apps/v1",
            Kind::ImageManifest | Kind::ImageTag | Kind::ImageBlob | Kind::RegistryServer => {
                "registry.berth.dev/v1"
            }
            // Image trust.
            Kind::TrustKey
            | Kind::ImageSignature
            | Kind::ClusterImagePolicy
            | Kind::ImagePolicy => "trust.berth.dev/v1",
            _ => "v1",
        }
    }

    pub fn namespaced(self) -> bool {
        !matches!(
            self,
            Kind::Node
                | Kind::ImageManifest
                | Kind::ImageTag
                | Kind::ImageBlob
                | Kind::RegistryServer
        ) && !matches!(
            // Image trust: keys, signatures and the cluster policy are cluster-scoped.
            self,
            Kind::TrustKey | Kind::ImageSignature | Kind::ClusterImagePolicy
        ) && self != Kind::PersistentVolume
            && self != Kind::Namespace
    }

    /// Kinds that users write; the rest are written by Berth's own loops (users may still
    /// create them, as in Kubernetes, e.g. a Pod with spec.nodeName for testing an agent).
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Deployment => "deployments",
            Kind::ReplicaSet => "replicasets",
            Kind::Service => "services",
            Kind::Pod => "pods",
            Kind::Endpoints => "endpoints",
            Kind::Node => "nodes",
            Kind::Event => "events",
            Kind::ImageManifest => "imagemanifests",
            Kind::ImageTag => "imagetags",
            Kind::ImageBlob => "imageblobs",
            Kind::RegistryServer => "registryservers",
            // Image trust.
            Kind::TrustKey => "trustkeys",
            Kind::ImageSignature => "imagesignatures",
            Kind::ClusterImagePolicy => "clusterimagepolicies",
            Kind::ImagePolicy => "imagepolicies",
            Kind::ConfigMap => "configmaps",
            Kind::Secret => "secrets",
            Kind::PersistentVolumeClaim => "persistentvolumeclaims",
            Kind::PersistentVolume => "persistentvolumes",
            Kind::Namespace => "namespaces",
        }
    }

    /// Parse a kind as users type it: `Deployment`, `deployment`, `deployments`, `deploy`.
    pub fn parse(s: &str) -> Option<Kind> {
        let l = s.to_ascii_lowercase();
        Some(match l.as_str() {
            "deployment" | "deployments" | "deploy" => Kind::Deployment,
            "replicaset" | "replicasets" | "rs" => Kind::ReplicaSet,
            "service" | "services" | "svc" => Kind::Service,
            "pod" | "pods" | "po" => Kind::Pod,
            "endpoints" | "endpoint" | "ep" => Kind::Endpoints,
            "node" | "nodes" | "no" => Kind::Node,
            "event" | "events" | "ev" => Kind::Event,
            "imagemanifest" | "imagemanifests" => Kind::ImageManifest,
            "imagetag" | "imagetags" => Kind::ImageTag,
            "imageblob" | "imageblobs" => Kind::ImageBlob,
            "registryserver" | "registryservers" => Kind::RegistryServer,
            // Image trust.
            "trustkey" | "trustkeys" => Kind::TrustKey,
            "imagesignature" | "imagesignatures" => Kind::ImageSignature,
            "clusterimagepolicy" | "clusterimagepolicies" => Kind::ClusterImagePolicy,
            "imagepolicy" | "imagepolicies" => Kind::ImagePolicy,
            "configmap" | "configmaps" | "cm" => Kind::ConfigMap,
            "secret" | "secrets" => Kind::Secret,
            "persistentvolumeclaim" | "persistentvolumeclaims" | "pvc" => {
                Kind::PersistentVolumeClaim
            }
            "persistentvolume" | "persistentvolumes" | "pv" => Kind::PersistentVolume,
            "namespace" | "namespaces" | "ns" => Kind::Namespace,
            _ => return None,
        })
    }

    /// Does this kind have a `status` that only its owning loop writes?
    pub fn has_status(self) -> bool {
        !matches!(
            self,
            Kind::Endpoints
                | Kind::Event
                | Kind::ImageManifest
                | Kind::ImageTag
                | Kind::RegistryServer
        ) && !matches!(
            // Image trust: no status.
            self,
            Kind::TrustKey | Kind::ImageSignature | Kind::ClusterImagePolicy | Kind::ImagePolicy
        ) && !matches!(self, Kind::ConfigMap | Kind::Secret)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A typed object of one kind.
pub trait Resource: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    const KIND: Kind;
    fn meta(&self) -> &ObjectMeta;
    fn meta_mut(&mut self) -> &mut ObjectMeta;

    /// Set apiVersion and kind to this type's (objects built in code leave them empty).
    fn with_type_meta(self) -> Self;

    fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(&self.clone().with_type_meta()).unwrap_or_default()
    }
    fn from_json(b: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(b)
    }
}

macro_rules! resource {
    ($t:ty, $k:expr) => {
        impl Resource for $t {
            const KIND: Kind = $k;
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
            fn with_type_meta(mut self) -> Self {
                self.api_version = $k.api_version().to_string();
                self.kind = $k.as_str().to_string();
                self
            }
        }
    };
}

resource!(Deployment, Kind::Deployment);
resource!(ReplicaSet, Kind::ReplicaSet);
resource!(Service, Kind::Service);
resource!(Pod, Kind::Pod);
resource!(Endpoints, Kind::Endpoints);
resource!(Node, Kind::Node);
resource!(Event, Kind::Event);
resource!(ImageManifest, Kind::ImageManifest);
resource!(ImageTag, Kind::ImageTag);
resource!(ImageBlob, Kind::ImageBlob);
resource!(RegistryServer, Kind::RegistryServer);
// Image trust.
resource!(TrustKey, Kind::TrustKey);
resource!(ImageSignature, Kind::ImageSignature);
resource!(ClusterImagePolicy, Kind::ClusterImagePolicy);
resource!(ImagePolicy, Kind::ImagePolicy);
resource!(ConfigMap, Kind::ConfigMap);
resource!(Secret, Kind::Secret);
resource!(PersistentVolumeClaim, Kind::PersistentVolumeClaim);
resource!(PersistentVolume, Kind::PersistentVolume);
resource!(Namespace, Kind::Namespace);

/// An object of any kind, as JSON, with typed access to the parts every kind shares. The API
/// server stores these; it never needs to know a kind's spec fields beyond validation.
#[derive(Debug, Clone, PartialEq)]
pub struct DynObject {
    pub kind: Kind,
    pub value: serde_json::Value,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("object is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("object has no kind")]
    MissingKind,
    #[error("unsupported kind {0:?} (supported: Deployment, ReplicaSet, Service, Pod, Endpoints, Node, Event, ImageManifest, ImageTag, ImageBlob, RegistryServer, TrustKey, ImageSignature, ClusterImagePolicy, ImagePolicy, ConfigMap, Secret, PersistentVolumeClaim, PersistentVolume, Namespace)")]
    UnknownKind(String),
    #[error("unsupported apiVersion {found:?} for kind {kind}: use {expected:?}")]
    ApiVersion {
        kind: Kind,
        found: String,
        expected: &'static str,
    },
    #[error("invalid {kind}: {source}")]
    Schema {
        kind: Kind,
        #[source]
        source: serde_json::Error,
    },
}

impl DynObject {
    /// Decode and type-check JSON bytes of any supported kind.
    pub fn from_json(b: &[u8]) -> Result<DynObject, DecodeError> {
        let value: serde_json::Value = serde_json::from_slice(b)?;
        Self::from_value(value)
    }

    pub fn from_value(mut value: serde_json::Value) -> Result<DynObject, DecodeError> {
        let kind_s = value
            .get("kind")
            .and_then(|k| k.as_str())
            .ok_or(DecodeError::MissingKind)?;
        let kind = match Kind::ALL.iter().find(|k| k.as_str() == kind_s) {
            Some(k) => *k,
            None => return Err(DecodeError::UnknownKind(kind_s.to_string())),
        };
        let av = value
            .get("apiVersion")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        if av.is_empty() {
            value["apiVersion"] = kind.api_version().into();
        } else if av != kind.api_version() {
            return Err(DecodeError::ApiVersion {
                kind,
                found: av.to_string(),
                expected: kind.api_version(),
            });
        }
        // Round-trip through the typed struct: checks the schema and normalizes the JSON.
        let value = match kind {
            Kind::Deployment => normalize::<Deployment>(kind, value)?,
            Kind::ReplicaSet => normalize::<ReplicaSet>(kind, value)?,
            Kind::Service => normalize::<Service>(kind, value)?,
            Kind::Pod => normalize::<Pod>(kind, value)?,
            Kind::Endpoints => normalize::<Endpoints>(kind, value)?,
            Kind::Node => normalize::<Node>(kind, value)?,
            Kind::Event => normalize::<Event>(kind, value)?,
            Kind::ImageManifest => normalize::<ImageManifest>(kind, value)?,
            Kind::ImageTag => normalize::<ImageTag>(kind, value)?,
            Kind::ImageBlob => normalize::<ImageBlob>(kind, value)?,
            Kind::RegistryServer => normalize::<RegistryServer>(kind, value)?,
            // Image trust.
            Kind::TrustKey => normalize::<TrustKey>(kind, value)?,
            Kind::ImageSignature => normalize::<ImageSignature>(kind, value)?,
            Kind::ClusterImagePolicy => normalize::<ClusterImagePolicy>(kind, value)?,
            Kind::ImagePolicy => normalize::<ImagePolicy>(kind, value)?,
            Kind::ConfigMap => normalize::<ConfigMap>(kind, value)?,
            Kind::Secret => normalize_secret(value)?,
            Kind::PersistentVolumeClaim => normalize_claim(value)?,
            Kind::PersistentVolume => normalize_volume(value)?,
            Kind::Namespace => normalize::<Namespace>(kind, value)?,
        };
        Ok(DynObject { kind, value })
    }

    pub fn from_typed<T: Resource>(obj: &T) -> DynObject {
        DynObject {
            kind: T::KIND,
            value: serde_json::to_value(obj.clone().with_type_meta())
                .unwrap_or(serde_json::Value::Null),
        }
    }

    pub fn to_typed<T: Resource>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_value(self.value.clone())
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(&self.value).unwrap_or_default()
    }

    pub fn meta(&self) -> ObjectMeta {
        self.value
            .get("metadata")
            .and_then(|m| serde_json::from_value(m.clone()).ok())
            .unwrap_or_default()
    }

    pub fn set_meta(&mut self, meta: &ObjectMeta) {
        if let Ok(m) = serde_json::to_value(meta) {
            self.value["metadata"] = m;
        }
    }

    pub fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or("")
    }

    pub fn namespace(&self) -> &str {
        self.value["metadata"]["namespace"].as_str().unwrap_or("")
    }

    /// The user-owned part: everything but metadata and status.
    pub fn spec_part(&self) -> serde_json::Value {
        let mut v = self.value.clone();
        if let Some(m) = v.as_object_mut() {
            m.remove("metadata");
            m.remove("status");
        }
        v
    }

    pub fn status(&self) -> Option<&serde_json::Value> {
        self.value.get("status")
    }
}

/// A Secret as stored: `stringData` merged into `data` (base64), as the Kubernetes API server
/// does; `stringData` wins on a clash. Schema errors never quote values.
fn normalize_secret(value: serde_json::Value) -> Result<serde_json::Value, DecodeError> {
    use base64::Engine as _;
    let mut s: Secret = serde_json::from_value(value).map_err(|e| DecodeError::Schema {
        kind: Kind::Secret,
        source: serde::de::Error::custom(format!(
            "does not match the Secret schema (line {}, column {}); values are not shown",
            e.line(),
            e.column()
        )),
    })?;
    for (k, v) in std::mem::take(&mut s.string_data) {
        s.data
            .insert(k, base64::engine::general_purpose::STANDARD.encode(v));
    }
    serde_json::to_value(s.with_type_meta()).map_err(|source| DecodeError::Schema {
        kind: Kind::Secret,
        source,
    })
}

/// A claim as stored: no class named means the default class, `local-path` (Kubernetes'
/// DefaultStorageClass admission); `""` stays "no class".
fn normalize_claim(value: serde_json::Value) -> Result<serde_json::Value, DecodeError> {
    let kind = Kind::PersistentVolumeClaim;
    let mut c: PersistentVolumeClaim =
        serde_json::from_value(value).map_err(|source| DecodeError::Schema { kind, source })?;
    c.spec
        .storage_class_name
        .get_or_insert_with(|| crate::storage::LOCAL_PATH.to_string());
    serde_json::to_value(c.with_type_meta()).map_err(|source| DecodeError::Schema { kind, source })
}

/// A volume as stored: Retain when no reclaim policy is named (Kubernetes' default for a
/// volume created by hand).
fn normalize_volume(value: serde_json::Value) -> Result<serde_json::Value, DecodeError> {
    let kind = Kind::PersistentVolume;
    let mut v: PersistentVolume =
        serde_json::from_value(value).map_err(|source| DecodeError::Schema { kind, source })?;
    v.spec
        .persistent_volume_reclaim_policy
        .get_or_insert_with(|| "Retain".to_string());
    serde_json::to_value(v.with_type_meta()).map_err(|source| DecodeError::Schema { kind, source })
}

fn normalize<T: Resource>(
    kind: Kind,
    value: serde_json::Value,
) -> Result<serde_json::Value, DecodeError> {
    let typed: T =
        serde_json::from_value(value).map_err(|source| DecodeError::Schema { kind, source })?;
    serde_json::to_value(typed.with_type_meta())
        .map_err(|source| DecodeError::Schema { kind, source })
}
