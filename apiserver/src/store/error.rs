//! What can go wrong in the store, and the object key every error names.
//!
//! These errors travel inside raft replies (serde), so they are plain data. They are mapped to
//! gRPC status codes in exactly one place: [`crate::status`].

use std::fmt;

use berth_proto::Kind;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Identity of a stored object: (kind, namespace, name). Cluster-scoped kinds (Node) have an
/// empty namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectKey {
    #[serde(with = "kind_serde")]
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    /// Build a key, defaulting the namespace the way the store does: `default` for namespaced
    /// kinds, none for cluster-scoped ones.
    pub fn new(kind: Kind, namespace: &str, name: &str) -> ObjectKey {
        ObjectKey {
            kind,
            namespace: normalize_namespace(kind, namespace),
            name: name.to_string(),
        }
    }
}

/// `default` for namespaced kinds when empty; always empty for cluster-scoped kinds.
pub fn normalize_namespace(kind: Kind, namespace: &str) -> String {
    if !kind.namespaced() {
        String::new()
    } else if namespace.is_empty() {
        "default".to_string()
    } else {
        namespace.to_string()
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {:?}", self.kind, self.name)
        } else {
            write!(
                f,
                "{} {:?} in namespace {:?}",
                self.kind, self.name, self.namespace
            )
        }
    }
}

pub(crate) mod kind_serde {
    use super::*;
    pub fn serialize<S: Serializer>(k: &Kind, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(k.as_str())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Kind, D::Error> {
        let s = String::deserialize(d)?;
        Kind::ALL
            .iter()
            .copied()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown kind {s:?}")))
    }
}

/// Why a store operation failed. Messages say what was wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum StoreError {
    #[error("{key} not found")]
    NotFound { key: ObjectKey },
    #[error("{key} already exists")]
    AlreadyExists { key: ObjectKey },
    /// Compare-and-swap on resourceVersion failed.
    #[error(
        "conflict on {key}: expected resourceVersion {expected}, actual {actual}; \
         re-read the object and retry"
    )]
    Conflict {
        key: ObjectKey,
        expected: u64,
        actual: u64,
    },
    /// The object failed schema decoding or validation.
    #[error("{0}")]
    Invalid(String),
    #[error("{what} is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        what: String,
        size: usize,
        limit: usize,
    },
    /// A requested clusterIP or pod CIDR is invalid, taken or would change.
    #[error("{0}")]
    Address(String),
    /// Every address of a range is allocated.
    #[error("no free {what} left in {range}: delete unused objects or widen {flag}")]
    AddressesExhausted {
        what: String,
        range: String,
        flag: String,
    },
    /// A requested nodePort is out of range or taken.
    #[error("{0}")]
    NodePort(String),
    /// Every nodePort in the range is allocated.
    #[error(
        "no free nodePort left in range {range}: delete unused Services or widen --node-port-range"
    )]
    NodePortsExhausted { range: String },
    /// A watch asked for revisions the server no longer keeps.
    #[error(
        "Expired: revision {requested} is older than the oldest revision this server keeps \
         ({oldest}); relist and watch from the list's revision"
    )]
    Expired { requested: u64, oldest: u64 },
    /// The caller may not make this change (checked when the entry is applied).
    #[error("{0}")]
    Forbidden(String),
    /// A namespaced object was created in a namespace that does not exist.
    #[error(
        "namespaces \"{namespace}\" not found: create the namespace first (berth create \
         namespace {namespace}, or a Namespace document before the objects in it)"
    )]
    NamespaceNotFound { namespace: String },
    /// A namespaced object was created in a namespace being deleted (Kubernetes' words).
    #[error(
        "unable to create new content in namespace {namespace} because it is being terminated"
    )]
    NamespaceTerminating { namespace: String },
    /// The server's storage failed; the member needs attention.
    #[error("storage error: {0}")]
    Storage(String),
    /// A raft entry or request that could not be decoded (version skew or corruption).
    #[error("malformed command: {0}")]
    BadCommand(String),
    /// This op was fine, but another op of the same all-or-nothing command failed, so none
    /// of them was applied. `failed` = 0-based positions of the ops that failed.
    #[error(
        "not applied: {} of this all-or-nothing write failed, so nothing was applied; fix {} \
         and write again",
        describe_positions(.failed),
        if .failed.len() == 1 { "it" } else { "them" }
    )]
    NotApplied { failed: Vec<usize> },
}

/// "object 3" / "objects 1, 3" (1-based, as a user counts documents).
fn describe_positions(failed: &[usize]) -> String {
    let list: Vec<String> = failed.iter().map(|i| (i + 1).to_string()).collect();
    match list.len() {
        1 => format!("object {}", list[0]),
        _ => format!("objects {}", list.join(", ")),
    }
}
