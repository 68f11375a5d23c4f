//! Semantic validation of typed objects: everything serde's schema cannot say (names, ranges,
//! cross-field rules like "the selector matches the template").
//!
//! Entry points: [`validate`] for a [`DynObject`] of any kind, or the typed functions
//! ([`validate_deployment`], [`validate_service`], ...; also the [`Validate`] trait). Each
//! returns *every* problem as a [`FieldError`] (a [`FieldPath`] plus a message), never just the
//! first, so a user fixes a manifest in one pass. The manifest loader maps each path to a line
//! of the user's file; the API server runs the same checks before anything is stored.
//!
//! The name and label rules (DNS-1123 names, qualified label keys, label values, IANA service
//! port names) are public building blocks, shared with [`crate::selector`].

/// DNS-1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub fn check_dns1123_label(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 63 {
        return Err(format!(
            "must be no more than 63 characters (has {})",
            s.len()
        ));
    }
    let b = s.as_bytes();
    let ok_inner = b
        .iter()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !ok_inner || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return Err(
            "must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"
                .into(),
        );
    }
    Ok(())
}

/// DNS-1123 subdomain: dot-separated DNS-1123 labels, at most 253 characters.
pub fn check_dns1123_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 253 {
        return Err(format!(
            "must be no more than 253 characters (has {})",
            s.len()
        ));
    }
    let msg = "must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
    for part in s.split('.') {
        if part.is_empty() || check_dns1123_label(part).is_err() {
            return Err(msg.into());
        }
    }
    Ok(())
}

fn is_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: u8| c.is_ascii_alphanumeric();
    !b.is_empty()
        && alnum(b[0])
        && alnum(b[b.len() - 1])
        && b.iter()
            .all(|&c| alnum(c) || c == b'-' || c == b'_' || c == b'.')
}

/// A qualified name (label and annotation keys): an optional DNS subdomain prefix and '/',
/// then a name of at most 63 characters matching `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`.
pub fn check_qualified_name(s: &str) -> Result<(), String> {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(p) = prefix {
        if p.is_empty() {
            return Err("prefix part must not be empty".into());
        }
        check_dns1123_subdomain(p).map_err(|e| format!("prefix part {e}"))?;
    }
    if name.is_empty() {
        return Err("name part must not be empty".into());
    }
    if name.len() > 63 {
        return Err(format!(
            "name part must be no more than 63 characters (has {})",
            name.len()
        ));
    }
    if !is_name_part(name) {
        return Err("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character".into());
    }
    Ok(())
}

/// A label value: empty, or at most 63 characters matching
/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`.
pub fn check_label_value(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Ok(());
    }
    if s.len() > 63 {
        return Err(format!(
            "must be no more than 63 characters (has {})",
            s.len()
        ));
    }
    if !is_name_part(s) {
        return Err("must be empty or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character".into());
    }
    Ok(())
}

/// An IANA service name (named ports): at most 15 characters, lowercase alphanumerics and '-',
/// at least one letter, no leading/trailing or doubled '-'.
pub fn check_port_name(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 15 {
        return Err(format!(
            "must be no more than 15 characters (has {})",
            s.len()
        ));
    }
    if !s
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
    {
        return Err("must contain only lower case alphanumeric characters or '-'".into());
    }
    if !s.bytes().any(|c| c.is_ascii_lowercase()) {
        return Err("must contain at least one letter".into());
    }
    if s.contains("--") {
        return Err("must not contain consecutive hyphens".into());
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err("must not begin or end with a hyphen".into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Field paths and errors

/// One step of a [`FieldPath`]: a struct field or map key, or a list index.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PathSeg {
    Field(String),
    Index(usize),
}

/// Where in an object something is, printed Kubernetes-style:
/// `spec.template.spec.containers[0].ports[1].containerPort`, with map keys that are not plain
/// identifiers in brackets: `metadata.labels[app.kubernetes.io/name]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct FieldPath(Vec<PathSeg>);

impl FieldPath {
    pub fn root() -> FieldPath {
        FieldPath(Vec::new())
    }

    /// Parse the dotted form (`spec.ports[0].port`); used for paths given as text.
    pub fn parse(s: &str) -> FieldPath {
        let mut segs = Vec::new();
        let mut cur = String::new();
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '.' => {
                    if !cur.is_empty() {
                        segs.push(PathSeg::Field(std::mem::take(&mut cur)));
                    }
                }
                '[' => {
                    if !cur.is_empty() {
                        segs.push(PathSeg::Field(std::mem::take(&mut cur)));
                    }
                    let mut inner = String::new();
                    for c in chars.by_ref() {
                        if c == ']' {
                            break;
                        }
                        inner.push(c);
                    }
                    segs.push(match inner.parse::<usize>() {
                        Ok(i) => PathSeg::Index(i),
                        Err(_) => PathSeg::Field(inner),
                    });
                }
                c => cur.push(c),
            }
        }
        if !cur.is_empty() {
            segs.push(PathSeg::Field(cur));
        }
        FieldPath(segs)
    }

    pub fn from_segments(segs: Vec<PathSeg>) -> FieldPath {
        FieldPath(segs)
    }

    pub fn child(&self, name: &str) -> FieldPath {
        let mut v = self.0.clone();
        v.push(PathSeg::Field(name.to_string()));
        FieldPath(v)
    }

    pub fn index(&self, i: usize) -> FieldPath {
        let mut v = self.0.clone();
        v.push(PathSeg::Index(i));
        FieldPath(v)
    }

    pub fn segments(&self) -> &[PathSeg] {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The rest of this path after `prefix`, if it starts with `prefix`.
    pub fn strip_prefix(&self, prefix: &FieldPath) -> Option<FieldPath> {
        self.0
            .strip_prefix(prefix.0.as_slice())
            .map(|rest| FieldPath(rest.to_vec()))
    }

    /// This path followed by `rest`.
    pub fn join(&self, rest: &FieldPath) -> FieldPath {
        let mut v = self.0.clone();
        v.extend(rest.0.iter().cloned());
        FieldPath(v)
    }

    pub fn parent(&self) -> Option<FieldPath> {
        if self.0.is_empty() {
            return None;
        }
        Some(FieldPath(self.0[..self.0.len() - 1].to_vec()))
    }
}

impl std::fmt::Display for FieldPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                PathSeg::Index(n) => write!(f, "[{n}]")?,
                PathSeg::Field(s)
                    if s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                        && s.bytes()
                            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-') =>
                {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    f.write_str(s)?;
                }
                PathSeg::Field(s) => write!(f, "[{s}]")?,
            }
        }
        Ok(())
    }
}

/// One problem with an object: where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct FieldError {
    pub path: FieldPath,
    pub message: String,
}

impl FieldError {
    pub fn new(path: FieldPath, message: impl Into<String>) -> FieldError {
        FieldError {
            path,
            message: message.into(),
        }
    }
}

/// Collects errors while walking an object.
#[derive(Default)]
struct Errs(Vec<FieldError>);

impl Errs {
    fn add(&mut self, path: &FieldPath, message: impl Into<String>) {
        self.0.push(FieldError::new(path.clone(), message));
    }
}

// ---------------------------------------------------------------------------------------------
// Entry points

use std::collections::{BTreeMap, HashMap};

use crate::enums::{PodPhase, StrategyType, TaintEffect};
use crate::object::{DynObject, Kind};
use crate::quantity::ParsedQuantity;
use crate::selector::Selector;
use crate::storage::{PersistentVolume, PersistentVolumeClaim};
use crate::types::*;

/// Validate an object of any kind. Returns every problem found (empty = valid).
pub fn validate(obj: &DynObject) -> Vec<FieldError> {
    fn typed<T: crate::Resource + Validate>(obj: &DynObject) -> Vec<FieldError> {
        match obj.to_typed::<T>() {
            Ok(t) => t.validate(),
            Err(e) => vec![FieldError::new(
                FieldPath::root(),
                format!("invalid {}: {e}", T::KIND),
            )],
        }
    }
    match obj.kind {
        Kind::Deployment => typed::<Deployment>(obj),
        Kind::ReplicaSet => typed::<ReplicaSet>(obj),
        Kind::Service => typed::<Service>(obj),
        Kind::Pod => typed::<Pod>(obj),
        Kind::Endpoints => typed::<Endpoints>(obj),
        Kind::Node => typed::<Node>(obj),
        Kind::Event => typed::<Event>(obj),
        Kind::ImageManifest => typed::<ImageManifest>(obj),
        Kind::ImageTag => typed::<ImageTag>(obj),
        Kind::ImageBlob => typed::<ImageBlob>(obj),
        Kind::RegistryServer => typed::<RegistryServer>(obj),
        // Image trust.
        Kind::TrustKey => typed::<TrustKey>(obj),
        Kind::ImageSignature => typed::<ImageSignature>(obj),
        Kind::ClusterImagePolicy => typed::<ClusterImagePolicy>(obj),
        Kind::ImagePolicy => typed::<ImagePolicy>(obj),
        Kind::ConfigMap => typed::<ConfigMap>(obj),
        Kind::Secret => typed::<Secret>(obj),
        Kind::PersistentVolumeClaim => typed::<PersistentVolumeClaim>(obj),
        Kind::PersistentVolume => typed::<PersistentVolume>(obj),
        Kind::Namespace => typed::<Namespace>(obj),
    }
}

/// Typed validation; implemented for every stored kind.
pub trait Validate {
    fn validate(&self) -> Vec<FieldError>;
}

macro_rules! validate_impl {
    ($t:ty, $f:ident) => {
        impl Validate for $t {
            fn validate(&self) -> Vec<FieldError> {
                $f(self)
            }
        }
    };
}
validate_impl!(Deployment, validate_deployment);
validate_impl!(ReplicaSet, validate_replica_set);
validate_impl!(Service, validate_service);
validate_impl!(Pod, validate_pod);
validate_impl!(Endpoints, validate_endpoints);
validate_impl!(Node, validate_node);
validate_impl!(Event, validate_event);
validate_impl!(ImageManifest, validate_image_manifest);
validate_impl!(ImageTag, validate_image_tag);
validate_impl!(ImageBlob, validate_image_blob);
validate_impl!(RegistryServer, validate_registry_server);
// Image trust.
validate_impl!(TrustKey, validate_trust_key);
validate_impl!(ImageSignature, validate_image_signature);
validate_impl!(ClusterImagePolicy, validate_cluster_image_policy);
validate_impl!(ImagePolicy, validate_image_policy);
validate_impl!(ConfigMap, validate_config_map);
validate_impl!(Secret, validate_secret);
validate_impl!(PersistentVolumeClaim, validate_persistent_volume_claim);
validate_impl!(PersistentVolume, validate_persistent_volume);

pub fn validate_persistent_volume_claim(c: &PersistentVolumeClaim) -> Vec<FieldError> {
    let mut e = Errs::default();
    meta(
        &mut e,
        &c.metadata,
        &FieldPath::root().child("metadata"),
        NameRule::Subdomain,
        true,
    );
    e.0.extend(crate::storage::validate_claim_spec(c));
    e.0
}

pub fn validate_persistent_volume(v: &PersistentVolume) -> Vec<FieldError> {
    let mut e = Errs::default();
    meta(
        &mut e,
        &v.metadata,
        &FieldPath::root().child("metadata"),
        NameRule::Subdomain,
        false,
    );
    e.0.extend(crate::storage::validate_volume_spec(v));
    e.0
}

validate_impl!(Namespace, validate_namespace);

/// A Namespace: a DNS-1123 label name (as Kubernetes requires), a known phase.
pub fn validate_namespace(n: &Namespace) -> Vec<FieldError> {
    let mut e = Errs::default();
    let root = FieldPath::root();
    meta(
        &mut e,
        &n.metadata,
        &root.child("metadata"),
        NameRule::Label,
        false,
    );
    if !n.metadata.namespace.is_empty() {
        e.add(
            &root.child("metadata").child("namespace"),
            format!(
                "a Namespace is cluster-scoped: remove metadata.namespace ({:?})",
                n.metadata.namespace
            ),
        );
    }
    if !matches!(n.status.phase.as_str(), "" | "Active" | "Terminating") {
        e.add(
            &root.child("status").child("phase"),
            format!(
                "unsupported value {:?}: supported values: \"Active\", \"Terminating\"",
                n.status.phase
            ),
        );
    }
    e.0
}

pub fn validate_deployment(d: &Deployment) -> Vec<FieldError> {
    let mut e = Errs::default();
    let root = FieldPath::root();
    meta(
        &mut e,
        &d.metadata,
        &root.child("metadata"),
        NameRule::Subdomain,
        true,
    );
    let spec = root.child("spec");
    if let Some(r) = d.spec.replicas {
        non_negative(&mut e, &spec.child("replicas"), i64::from(r));
    }
    selector_and_template(&mut e, &d.spec.selector, &d.spec.template, &spec);
    if let Some(s) = d.spec.min_ready_seconds {
        non_negative(&mut e, &spec.child("minReadySeconds"), i64::from(s));
    }
    if let Some(s) = d.spec.revision_history_limit {
        non_negative(&mut e, &spec.child("revisionHistoryLimit"), i64::from(s));
    }
    if let Some(p) = d.spec.progress_deadline_seconds {
        let min_ready = d.spec.min_ready_seconds.unwrap_or(0);
        if p <= 0 {
            e.add(
                &spec.child("progressDeadlineSeconds"),
                format!("must be greater than 0 (got {p})"),
            );
        } else if p <= min_ready {
            e.add(
                &spec.child("progressDeadlineSeconds"),
                format!("must be greater than minReadySeconds ({min_ready})"),
            );
        }
    }
    if let Some(s) = &d.spec.strategy {
        strategy(&mut e, s, &spec.child("strategy"));
    }
    e.0
}

pub fn validate_replica_set(rs: &ReplicaSet) -> Vec<FieldError> {
    let mut e = Errs::default();
    let root = FieldPath::root();
    meta(
        &mut e,
        &rs.metadata,
        &root.child("metadata"),
        NameRule::Subdomain,
        true,
    );
    let spec = root.child("spec");
    non_negative(&mut e, &spec.child("replicas"), i64::from(rs.spec.replicas));
    selector_and_template(&mut e, &rs.spec.selector, &rs.spec.template, &spec);
    if let Some(s) = rs.spec.min_ready_seconds {
        non_negative(&mut e, &spec.child("minReadySeconds"), i64::from(s));
    }
    e.0
}

pub fn validate_pod(p: &Pod) -> Vec<FieldError> {
    let mut e = Errs::default();
    let root = FieldPath::root();
    meta(
        &mut e,
        &p.metadata,
        &root.child("metadata"),
        NameRule::Subdomain,
        true,
    );
    pod_spec(&mut e, &p.spec, &root.child("spec"));
    if let Some(st) = &p.status {
        if !st.phase.is_empty() {
            if let Err(err) = st.phase.parse::<PodPhase>() {
                e.add(&root.child("status").child("phase"), err.to_string());
            }
        }
    }
    e.0
}

/// Validate a pod spec on its own (a template's, or a Pod's), rooted at `path`.
pub fn validate_pod_spec(spec: &PodSpec, path: &FieldPath) -> Vec<FieldError> {
    let mut e = Errs::default();
    pod_spec(&mut e, spec, path);
    e.0
}

pub fn validate_service(s: &Service) -> Vec<FieldError> {
    let mut e = Errs::default();
    let root = FieldPath::root();
    meta(
        &mut e,
        &s.metadata,
        &root.child("metadata"),
        NameRule::Label,
        true,
    );
    let spec = root.child("spec");
    labels(&mut e, &s.spec.selector, &spec.child("selector"));
    if let Some(t) = &s.spec.type_ {
        if !matches!(t.as_str(), "NodePort" | "ClusterIP" | "LoadBalancer") {
            e.add(
                &spec.child("type"),
                format!("unsupported service type {t:?}: use ClusterIP, NodePort or LoadBalancer"),
            );
        }
    }
    if let Some(ip) = &s.spec.cluster_ip {
        if ip != "None" && ip.parse::<std::net::Ipv4Addr>().is_err() {
            e.add(
                &spec.child("clusterIP"),
                format!("{ip:?} is not an IPv4 address or \"None\" (headless)"),
            );
        }
        if ip == "None" && matches!(s.spec.type_.as_deref(), Some("NodePort" | "LoadBalancer")) {
            e.add(
                &spec.child("clusterIP"),
                format!(
                    "may not be \"None\" for a {} Service (a headless Service has no virtual \
                     IP to serve): drop the type or the clusterIP",
                    s.spec.type_.as_deref().unwrap_or_default()
                ),
            );
        }
    }
    match (s.spec.cluster_ips.first(), &s.spec.cluster_ip) {
        (Some(first), Some(ip)) if first != ip => e.add(
            &spec.child("clusterIPs"),
            format!("clusterIPs[0] {first:?} must equal clusterIP {ip:?}"),
        ),
        _ if s.spec.cluster_ips.len() > 1 => e.add(
            &spec.child("clusterIPs"),
            "only one (IPv4) cluster IP is supported",
        ),
        _ => {}
    }
    let ports = spec.child("ports");
    if s.spec.ports.is_empty() {
        e.add(&ports, "at least one port is required");
    }
    let many = s.spec.ports.len() > 1;
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut numbers: HashMap<(i32, &str), usize> = HashMap::new();
    for (i, p) in s.spec.ports.iter().enumerate() {
        let pp = ports.index(i);
        if p.name.is_empty() {
            if many {
                e.add(
                    &pp.child("name"),
                    "is required when the service has more than one port",
                );
            }
        } else {
            if let Err(m) = check_port_name(&p.name) {
                e.add(
                    &pp.child("name"),
                    format!("invalid port name {:?}: {m}", p.name),
                );
            }
            if let Some(j) = names.insert(&p.name, i) {
                e.add(
                    &pp.child("name"),
                    format!("duplicate port name {:?} (also ports[{j}])", p.name),
                );
            }
        }
        port_number(&mut e, &pp.child("port"), p.port);
        let proto = protocol(&mut e, p.protocol.as_deref(), &pp.child("protocol"));
        if let Some(j) = numbers.insert((p.port, proto), i) {
            e.add(
                &pp.child("port"),
                format!("duplicate port {}/{proto} (also ports[{j}])", p.port),
            );
        }
        if let Some(t) = &p.target_port {
            target_port(&mut e, t, &pp.child("targetPort"));
        }
        if let Some(n) = p.node_port {
            // 0 asks the server to allocate; the server checks its own range.
            if n != 0 {
                port_number(&mut e, &pp.child("nodePort"), n);
            }
        }
    }
    e.0
}

pub fn validate_endpoints(ep: &Endpoints) -> Vec<FieldError> {
    let mut e = Errs::default();
    let root = FieldPath::root();
    meta(
        &mut e,
        &ep.metadata,
        &root.child("metadata"),
        NameRule::Subdomain,
        true,
    );
    let subsets = root.child("subsets");
    for (i, s) in ep.subsets.iter().enumerate() {
        let sp = subsets.index(i);
        for (field, addrs) in [
            ("addresses", &s.addresses),
            ("notReadyAddresses", &s.not_ready_addresses),
        ] {
            for (j, a) in addrs.iter().enumerate() {
                let ap = sp.child(field).index(j);
                if a.ip.is_empty() {
                    e.add(&ap.child("ip"), "is required");
                } else if a.ip.parse::<std::net::IpAddr>().is_err()
                    && check_dns1123_subdomain(&a.ip).is_err()
                {
                    e.add(
                        &ap.child("ip"),
                        format!(
                            "invalid address {:?}: must be an IP address or a host name",
                            a.ip
                        ),
                    );
                }
            }
        }
        for (j, p) in s.ports.iter().enumerate() {
            let pp = sp.child("ports").index(j);
            port_number(&mut e, &pp.child("port"), p.port);
            if !p.name.is_empty() {
                if let Err(m) = check_port_name(&p.name) {
                    e.add(
                        &pp.child("name"),
                        format!("invalid port name {:?}: {m}", p.name),
                    );
                }
            }
            protocol(&mut e, p.protocol.as_deref(), &pp.child("protocol"));
        }
    }
    e.0
}

pub fn validate_node(n: &Node) -> Vec<FieldError> {
    let mut e = Errs::default();
    let root = FieldPath::root();
    meta(
        &mut e,
        &n.metadata,
        &root.child("metadata"),
        NameRule::Subdomain,
        false,
    );
    let taints = root.child("spec").child("taints");
    let mut seen: HashMap<(&str, &str), usize> = HashMap::new();
    for (i, t) in n.spec.taints.iter().enumerate() {
        let tp = taints.index(i);
        if let Err(m) = check_qualified_name(&t.key) {
            e.add(
                &tp.child("key"),
                format!("invalid taint key {:?}: {m}", t.key),
            );
        }
        if let Err(m) = check_label_value(&t.value) {
            e.add(
                &tp.child("value"),
                format!("invalid taint value {:?}: {m}", t.value),
            );
        }
        if let Err(err) = t.effect.parse::<TaintEffect>() {
            e.add(&tp.child("effect"), err.to_string());
        }
        if let Some(j) = seen.insert((&t.key, &t.effect), i) {
            e.add(
                &tp,
                format!("duplicate taint {}:{} (also taints[{j}])", t.key, t.effect),
            );
        }
    }
    e.0
}

pub fn validate_event(ev: &Event) -> Vec<FieldError> {
    let mut e = Errs::default();
    let root = FieldPath::root();
    meta(
        &mut e,
        &ev.metadata,
        &root.child("metadata"),
        NameRule::Subdomain,
        true,
    );
    let io = root.child("involvedObject");
    if ev.involved_object.kind.is_empty() {
        e.add(&io.child("kind"), "is required");
    }
    if ev.involved_object.name.is_empty() {
        e.add(&io.child("name"), "is required");
    }
    if !matches!(ev.type_.as_str(), "" | "Normal" | "Warning") {
        e.add(
            &root.child("type"),
            format!(
                "unsupported event type {:?}: use Normal or Warning",
                ev.type_
            ),
        );
    }
    non_negative(&mut e, &root.child("count"), i64::from(ev.count));
    e.0
}

pub fn validate_image_manifest(m: &ImageManifest) -> Vec<FieldError> {
    let mut e = Errs::default();
    let root = FieldPath::root();
    meta(
        &mut e,
        &m.metadata,
        &root.child("metadata"),
        NameRule::Subdomain,
        false,
    );
    let spec = root.child("spec");
    image_repo_field(&mut e, &spec.child("repository"), &m.spec.repository);
    digest_field(&mut e, &spec.child("digest"), &m.spec.digest);
    if m.spec.media_type.is_empty() {
        e.add(&spec.child("mediaType"), "is required");
    }
    if m.spec.content.is_empty() {
        e.add(&spec.child("content"), "is required");
    } else if crate::image::sha256_digest(m.spec.content.as_bytes()) != m.spec.digest {
        e.add(
            &spec.child("digest"),
            "does not match the sha256 of spec.content",
        );
    }
    for (i, d) in m.spec.blobs.iter().enumerate() {
        digest_field(&mut e, &spec.child("blobs").index(i), d);
    }
    for (i, d) in m.spec.manifests.iter().enumerate() {
        digest_field(&mut e, &spec.child("manifests").index(i), d);
    }
    if !m.spec.subject.is_empty() {
        digest_field(&mut e, &spec.child("subject"), &m.spec.subject);
    }
    non_negative(&mut e, &spec.child("totalSize"), m.spec.total_size);
    e.0
}

pub fn validate_image_tag(t: &ImageTag) -> Vec<FieldError> {
    let mut e = Errs::default();
    let root = FieldPath::root();
    meta(
        &mut e,
        &t.metadata,
        &root.child("metadata"),
        NameRule::Subdomain,
        false,
    );
    let spec = root.child("spec");
    image_repo_field(&mut e, &spec.child("repository"), &t.spec.repository);
    if let Err(m) = crate::image::check_tag(&t.spec.tag) {
        e.add(&spec.child("tag"), m);
    }
    digest_field(&mut e, &spec.child("digest"), &t.spec.digest);
    e.0
}

pub fn validate_image_blob(b: &ImageBlob) -> Vec<FieldError> {
    let mut e = Errs::default();
    let root = FieldPath::root();
    meta(
        &mut e,
        &b.metadata,
        &root.child("metadata"),
        NameRule::Subdomain,
        false,
    );
    let spec = root.child("spec");
    digest_field(&mut e, &spec.child("digest"), &b.spec.digest);
    non_negative(&mut e, &spec.child("size"), b.spec.size);
    e.0
}

// Image trust.

pub fn validate_trust_key(k: &TrustKey) -> Vec<FieldError> {
    let mut e = Errs::default();
    let root = FieldPath::root();
    meta(
        &mut e,
        &k.metadata,
        &root.child("metadata"),
        NameRule::Subdomain,
        false,
    );
    let spec = root.child("spec");
    match crate::trust::PublicKey::from_pem(&k.spec.public_key) {
        Err(m) => e.add(&spec.child("publicKey"), m.to_string()),
        Ok(pk) if pk.fingerprint() != k.spec.fingerprint => e.add(
            &spec.child("fingerprint"),
            format!(
                "does not match spec.publicKey (its fingerprint is {})",
                pk.fingerprint()
            ),
        ),
        Ok(_) => {}
    }
    e.0
}

pub fn validate_image_signature(s: &ImageSignature) -> Vec<FieldError> {
    let mut e = Errs::default();
    let root = FieldPath::root();
    meta(
        &mut e,
        &s.metadata,
        &root.child("metadata"),
        NameRule::Subdomain,
        false,
    );
    let spec = root.child("spec");
    image_repo_field(&mut e, &spec.child("repository"), &s.spec.repository);
    digest_field(&mut e, &spec.child("digest"), &s.spec.digest);
    if s.spec.key_name.is_empty() {
        e.add(&spec.child("keyName"), "is required");
    } else if !s.metadata.name.is_empty() {
        // Verification finds a signature by this name (one per key, repository and digest).
        let want = crate::trust::signature_object_name(
            &s.spec.repository,
            &s.spec.digest,
            &s.spec.key_name,
        );
        if s.metadata.name != want {
            e.add(
                &root.child("metadata").child("name"),
                format!("must be {want:?} (derived from spec.repository, spec.digest and spec.keyName; berth sign names it)"),
            );
        }
    }
    if let Err(m) = crate::trust::parse_payload(&s.spec.payload) {
        e.add(&spec.child("payload"), m.to_string());
    }
    if s.spec.signature.is_empty() {
        e.add(&spec.child("signature"), "is required");
    } else if crate::trust::decode_signature(&s.spec.signature).is_err() {
        e.add(&spec.child("signature"), "is not base64");
    }
    e.0
}

pub fn validate_cluster_image_policy(p: &ClusterImagePolicy) -> Vec<FieldError> {
    let mut e = Errs::default();
    let path = FieldPath::root().child("metadata");
    meta(&mut e, &p.metadata, &path, NameRule::Subdomain, false);
    if !p.metadata.name.is_empty() && p.metadata.name != crate::trust::CLUSTER_POLICY_NAME {
        e.add(
            &path.child("name"),
            format!(
                "must be {:?}: the cluster has one ClusterImagePolicy",
                crate::trust::CLUSTER_POLICY_NAME
            ),
        );
    }
    e.0
}

/// The most a ConfigMap's or Secret's data may hold (Kubernetes: 1 MiB).
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;

/// A ConfigMap or Secret key: becomes a file name, so `[-._a-zA-Z0-9]+`, not `.` or `..`, at
/// most 253 characters (Kubernetes' IsConfigMapKey).
pub fn check_config_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("a key must not be empty".into());
    }
    if key.len() > 253 {
        return Err(format!("key {key:?} is longer than 253 characters"));
    }
    if key == "." || key == ".." {
        return Err(format!("key {key:?} is not allowed (it names a directory)"));
    }
    if let Some(c) = key
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "key {key:?} has {c:?}: keys consist of letters, digits, '-', '_' or '.' (they become file names)"
        ));
    }
    Ok(())
}

fn base64_len(e: &mut Errs, path: &FieldPath, v: &str) -> usize {
    use base64::Engine as _;
    match base64::engine::general_purpose::STANDARD.decode(v) {
        Ok(b) => b.len(),
        Err(_) => {
            // Never quote the value (it may be a secret).
            e.add(
                path,
                "is not valid base64 (standard alphabet, with padding); the value is not shown",
            );
            0
        }
    }
}

pub fn validate_config_map(c: &ConfigMap) -> Vec<FieldError> {
    let mut e = Errs::default();
    let root = FieldPath::root();
    meta(
        &mut e,
        &c.metadata,
        &root.child("metadata"),
        NameRule::Subdomain,
        true,
    );
    let mut total = 0usize;
    for (k, v) in &c.data {
        if let Err(m) = check_config_key(k) {
            e.add(&root.child("data").child(k), m);
        }
        total += v.len();
    }
    for (k, v) in &c.binary_data {
        let p = root.child("binaryData").child(k);
        if let Err(m) = check_config_key(k) {
            e.add(&p, m);
        }
        if c.data.contains_key(k) {
            e.add(
                &p,
                format!("key {k:?} is also in data: a key may be in only one of them"),
            );
        }
        total += base64_len(&mut e, &p, v);
    }
    if total > MAX_CONFIG_BYTES {
        e.add(
            &root,
            format!("holds {total} bytes of data; a ConfigMap may hold at most {MAX_CONFIG_BYTES} (1 MiB): mount large files from a volume instead"),
        );
    }
    e.0
}

pub fn validate_secret(s: &Secret) -> Vec<FieldError> {
    let mut e = Errs::default();
    let root = FieldPath::root();
    meta(
        &mut e,
        &s.metadata,
        &root.child("metadata"),
        NameRule::Subdomain,
        true,
    );
    let mut total = 0usize;
    let mut keys: Vec<&str> = Vec::new();
    for (k, v) in &s.data {
        let p = root.child("data").child(k);
        if let Err(m) = check_config_key(k) {
            e.add(&p, m);
        }
        total += base64_len(&mut e, &p, v);
        keys.push(k);
    }
    for (k, v) in &s.string_data {
        if let Err(m) = check_config_key(k) {
            e.add(&root.child("stringData").child(k), m);
        }
        if !s.data.contains_key(k) {
            total += v.len();
            keys.push(k);
        }
    }
    if total > MAX_CONFIG_BYTES {
        e.add(
            &root,
            format!(
                "holds {total} bytes of data; a Secret may hold at most {MAX_CONFIG_BYTES} (1 MiB)"
            ),
        );
    }
    let need = |e: &mut Errs, key: &str, ty: &str| {
        if !keys.contains(&key) {
            e.add(
                &root.child("data"),
                format!("a Secret of type {ty} needs the key {key:?}"),
            );
        }
    };
    match s.secret_type() {
        "kubernetes.io/dockerconfigjson" => {
            need(
                &mut e,
                ".dockerconfigjson",
                "kubernetes.io/dockerconfigjson",
            );
            if let Some(b) = s.value(".dockerconfigjson") {
                if serde_json::from_slice::<serde_json::Value>(&b)
                    .ok()
                    .and_then(|v| v.get("auths").cloned())
                    .is_none()
                {
                    e.add(
                        &root.child("data").child(".dockerconfigjson"),
                        "must be a Docker config JSON object with \"auths\" (as docker login writes ~/.docker/config.json)",
                    );
                }
            }
        }
        "kubernetes.io/dockercfg" => need(&mut e, ".dockercfg", "kubernetes.io/dockercfg"),
        "kubernetes.io/tls" => {
            need(&mut e, "tls.crt", "kubernetes.io/tls");
            need(&mut e, "tls.key", "kubernetes.io/tls");
        }
        "kubernetes.io/basic-auth"
            if !keys.contains(&"username") && !keys.contains(&"password") =>
        {
            e.add(
                &root.child("data"),
                "a Secret of type kubernetes.io/basic-auth needs \"username\" or \"password\"",
            );
        }
        "kubernetes.io/ssh-auth" => need(&mut e, "ssh-privatekey", "kubernetes.io/ssh-auth"),
        _ => {}
    }
    e.0
}

/// The pod fields `env[].valueFrom.fieldRef.fieldPath` may name (Kubernetes' downward API for
/// environment variables).
pub const ENV_FIELD_PATHS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "spec.nodeName",
    "spec.serviceAccountName",
    "status.hostIP",
    "status.hostIPs",
    "status.podIP",
    "status.podIPs",
];

/// Is `path` a fieldRef the agent can resolve (including `metadata.labels['k']` and
/// `metadata.annotations['k']`)?
pub fn env_field_path_ok(path: &str) -> bool {
    if ENV_FIELD_PATHS.contains(&path) {
        return true;
    }
    for prefix in ["metadata.labels['", "metadata.annotations['"] {
        if let Some(rest) = path.strip_prefix(prefix) {
            return rest.len() > 2 && rest.ends_with("']");
        }
    }
    false
}

/// The container resources `resourceFieldRef.resource` may name.
pub const ENV_RESOURCES: &[&str] = &[
    "limits.cpu",
    "limits.memory",
    "limits.ephemeral-storage",
    "requests.cpu",
    "requests.memory",
    "requests.ephemeral-storage",
];

/// A union field (volume source, env source): exactly one member set.
fn exactly_one(e: &mut Errs, p: &FieldPath, members: &[(&str, bool)]) {
    if members.iter().filter(|(_, set)| *set).count() != 1 {
        let names: Vec<&str> = members.iter().map(|(n, _)| *n).collect();
        e.add(p, format!("must set exactly one of {}", names.join(", ")));
    }
}

fn validate_env_source(e: &mut Errs, p: &FieldPath, v: &EnvVar) {
    let Some(src) = &v.value_from else {
        return;
    };
    let vp = p.child("valueFrom");
    if !v.value.is_empty() {
        e.add(&vp, "may not be set together with value: use one of them");
    }
    exactly_one(
        e,
        &vp,
        &[
            ("configMapKeyRef", src.config_map_key_ref.is_some()),
            ("secretKeyRef", src.secret_key_ref.is_some()),
            ("fieldRef", src.field_ref.is_some()),
            ("resourceFieldRef", src.resource_field_ref.is_some()),
        ],
    );
    for (field, r) in [
        ("configMapKeyRef", &src.config_map_key_ref),
        ("secretKeyRef", &src.secret_key_ref),
    ] {
        if let Some(r) = r {
            let rp = vp.child(field);
            if r.name.is_empty() {
                e.add(&rp.child("name"), "is required");
            } else if let Err(m) = check_dns1123_subdomain(&r.name) {
                e.add(&rp.child("name"), m);
            }
            if let Err(m) = check_config_key(&r.key) {
                e.add(&rp.child("key"), m);
            }
        }
    }
    if let Some(f) = &src.field_ref {
        if !env_field_path_ok(&f.field_path) {
            e.add(
                &vp.child("fieldRef").child("fieldPath"),
                format!(
                    "unsupported field {:?}: use one of {}, metadata.labels['KEY'], metadata.annotations['KEY']",
                    f.field_path,
                    ENV_FIELD_PATHS.join(", ")
                ),
            );
        }
    }
    if let Some(r) = &src.resource_field_ref {
        if !ENV_RESOURCES.contains(&r.resource.as_str()) {
            e.add(
                &vp.child("resourceFieldRef").child("resource"),
                format!(
                    "unsupported resource {:?}: use one of {}",
                    r.resource,
                    ENV_RESOURCES.join(", ")
                ),
            );
        }
        if let Some(d) = &r.divisor {
            if Quantity::parse(d).is_err() {
                e.add(
                    &vp.child("resourceFieldRef").child("divisor"),
                    format!("{d:?} is not a quantity (e.g. 1, 1m, 1Mi)"),
                );
            }
        }
    }
}

/// A relative path inside a volume: not absolute, no `..` element (Kubernetes'
/// validateLocalDescendingPath).
fn local_path(e: &mut Errs, p: &FieldPath, path: &str) {
    if path.is_empty() {
        e.add(p, "must not be empty");
    } else if path.starts_with('/') {
        e.add(
            p,
            format!("{path:?} must be a relative path inside the volume"),
        );
    } else if path.split('/').any(|seg| seg == "..") {
        e.add(
            p,
            format!("{path:?} must not contain '..' (it would leave the volume)"),
        );
    } else if path.contains('\0') {
        e.add(p, "must not contain NUL");
    }
}

fn file_mode(e: &mut Errs, p: &FieldPath, mode: Option<i32>) {
    if let Some(m) = mode {
        if !(0..=0o777).contains(&m) {
            e.add(
                p,
                format!("{m} is not a file mode: use 0 to 0777 (octal; 420 is 0644)"),
            );
        }
    }
}

fn key_items(e: &mut Errs, p: &FieldPath, items: &[KeyToPath]) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, it) in items.iter().enumerate() {
        let ip = p.child("items").index(i);
        if let Err(m) = check_config_key(&it.key) {
            e.add(&ip.child("key"), m);
        }
        local_path(e, &ip.child("path"), &it.path);
        file_mode(e, &ip.child("mode"), it.mode);
        if let Some(j) = seen.insert(it.path.as_str(), i) {
            e.add(
                &ip.child("path"),
                format!("{:?} is also items[{j}].path", it.path),
            );
        }
    }
}

/// The hostPath types Kubernetes knows.
pub const HOST_PATH_TYPES: &[&str] = &[
    "",
    "DirectoryOrCreate",
    "Directory",
    "FileOrCreate",
    "File",
    "Socket",
    "CharDevice",
    "BlockDevice",
];

fn volumes(e: &mut Errs, spec: &PodSpec, path: &FieldPath) {
    let vp = path.child("volumes");
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (i, v) in spec.volumes.iter().enumerate() {
        let p = vp.index(i);
        if v.name.is_empty() {
            e.add(&p.child("name"), "is required");
        } else if let Err(m) = check_dns1123_label(&v.name) {
            e.add(&p.child("name"), m);
        } else if let Some(j) = names.insert(v.name.as_str(), i) {
            e.add(
                &p.child("name"),
                format!("duplicate volume {:?} (also volumes[{j}])", v.name),
            );
        }
        exactly_one(
            e,
            &p,
            &[
                ("emptyDir", v.empty_dir.is_some()),
                ("hostPath", v.host_path.is_some()),
                ("configMap", v.config_map.is_some()),
                ("secret", v.secret.is_some()),
                ("persistentVolumeClaim", v.persistent_volume_claim.is_some()),
            ],
        );
        if let Some(d) = &v.empty_dir {
            if let Some(m) = &d.medium {
                if !matches!(m.as_str(), "" | "Memory") {
                    e.add(
                        &p.child("emptyDir").child("medium"),
                        format!("unsupported medium {m:?}: use \"\" (the node's disk) or Memory"),
                    );
                }
            }
            if let Some(q) = &d.size_limit {
                if q.parsed().is_err() {
                    e.add(
                        &p.child("emptyDir").child("sizeLimit"),
                        format!("{:?} is not a quantity (e.g. 64Mi)", q.0),
                    );
                }
            }
        }
        if let Some(h) = &v.host_path {
            let hp = p.child("hostPath");
            if !h.path.starts_with('/') {
                e.add(
                    &hp.child("path"),
                    format!("{:?} must be an absolute path", h.path),
                );
            }
            if h.path.split('/').any(|seg| seg == "..") {
                e.add(&hp.child("path"), "must not contain '..'");
            }
            if let Some(t) = &h.type_ {
                if !HOST_PATH_TYPES.contains(&t.as_str()) {
                    e.add(
                        &hp.child("type"),
                        format!(
                            "unsupported hostPath type {t:?}: use one of {}",
                            HOST_PATH_TYPES[1..].join(", ")
                        ),
                    );
                }
            }
        }
        if let Some(c) = &v.config_map {
            let cp = p.child("configMap");
            if let Err(m) = check_dns1123_subdomain(&c.name) {
                e.add(&cp.child("name"), m);
            }
            key_items(e, &cp, &c.items);
            file_mode(e, &cp.child("defaultMode"), c.default_mode);
        }
        if let Some(s) = &v.secret {
            let sp = p.child("secret");
            if let Err(m) = check_dns1123_subdomain(&s.secret_name) {
                e.add(&sp.child("secretName"), m);
            }
            key_items(e, &sp, &s.items);
            file_mode(e, &sp.child("defaultMode"), s.default_mode);
        }
        if let Some(c) = &v.persistent_volume_claim {
            let cp = p.child("persistentVolumeClaim").child("claimName");
            if c.claim_name.is_empty() {
                e.add(
                    &cp,
                    "is required (the name of a PersistentVolumeClaim in the pod's namespace)",
                );
            } else if let Err(m) = check_dns1123_subdomain(&c.claim_name) {
                e.add(&cp, m);
            }
        }
    }
    let all = spec.all_containers();
    for (list, ci, c) in all {
        let cp = path.child(list).index(ci);
        let mut paths: HashMap<&str, usize> = HashMap::new();
        for (mi, m) in c.volume_mounts.iter().enumerate() {
            let mp = cp.child("volumeMounts").index(mi);
            if !spec.volumes.iter().any(|v| v.name == m.name) {
                e.add(
                    &mp.child("name"),
                    format!("no volume named {:?} in spec.volumes", m.name),
                );
            }
            if !m.mount_path.starts_with('/') {
                e.add(
                    &mp.child("mountPath"),
                    format!("{:?} must be an absolute path", m.mount_path),
                );
            } else if m.mount_path.contains(':') {
                e.add(&mp.child("mountPath"), "must not contain ':'");
            }
            let norm = m.mount_path.trim_end_matches('/');
            if let Some(j) = paths.insert(norm, mi) {
                e.add(
                    &mp.child("mountPath"),
                    format!("{:?} is also volumeMounts[{j}].mountPath", m.mount_path),
                );
            }
            if let Some(sp) = &m.sub_path {
                if !sp.is_empty() {
                    local_path(e, &mp.child("subPath"), sp);
                }
            }
        }
    }
}

fn validate_env_from(e: &mut Errs, p: &FieldPath, c: &Container) {
    for (j, f) in c.env_from.iter().enumerate() {
        let fp = p.child("envFrom").index(j);
        exactly_one(
            e,
            &fp,
            &[
                ("configMapRef", f.config_map_ref.is_some()),
                ("secretRef", f.secret_ref.is_some()),
            ],
        );
        for (field, r) in [
            ("configMapRef", &f.config_map_ref),
            ("secretRef", &f.secret_ref),
        ] {
            if let Some(r) = r {
                if let Err(m) = check_dns1123_subdomain(&r.name) {
                    e.add(&fp.child(field).child("name"), m);
                }
            }
        }
        if f.prefix.contains('=') || f.prefix.contains('\0') {
            e.add(&fp.child("prefix"), "must not contain '=' or NUL");
        }
    }
}

pub fn validate_image_policy(p: &ImagePolicy) -> Vec<FieldError> {
    let mut e = Errs::default();
    let path = FieldPath::root().child("metadata");
    meta(&mut e, &p.metadata, &path, NameRule::Subdomain, true);
    if !p.metadata.name.is_empty() && p.metadata.name != crate::trust::NAMESPACE_POLICY_NAME {
        e.add(
            &path.child("name"),
            format!(
                "must be {:?}: a namespace has one ImagePolicy",
                crate::trust::NAMESPACE_POLICY_NAME
            ),
        );
    }
    e.0
}

pub fn validate_registry_server(r: &RegistryServer) -> Vec<FieldError> {
    let mut e = Errs::default();
    let root = FieldPath::root();
    meta(
        &mut e,
        &r.metadata,
        &root.child("metadata"),
        NameRule::Subdomain,
        false,
    );
    let url = root.child("spec").child("url");
    match r.spec.url.split_once("://") {
        Some(("http" | "https", rest)) if !rest.is_empty() && !rest.contains('/') => {}
        _ => e.add(
            &url,
            format!(
                "{:?} is not a registry base URL: use http(s)://HOST:PORT",
                r.spec.url
            ),
        ),
    }
    e.0
}

fn image_repo_field(e: &mut Errs, path: &FieldPath, repo: &str) {
    if let Err(m) = crate::image::check_repository(repo) {
        e.add(path, m);
    }
}

fn digest_field(e: &mut Errs, path: &FieldPath, d: &str) {
    if let Err(m) = crate::image::check_digest(d) {
        e.add(path, m);
    }
}

// ---------------------------------------------------------------------------------------------
// Pieces

#[derive(Clone, Copy)]
enum NameRule {
    Subdomain,
    Label,
}

fn meta(e: &mut Errs, m: &ObjectMeta, path: &FieldPath, rule: NameRule, namespaced: bool) {
    let np = path.child("name");
    if m.name.is_empty() {
        e.add(&np, "is required");
    } else {
        let r = match rule {
            NameRule::Subdomain => check_dns1123_subdomain(&m.name),
            NameRule::Label => check_dns1123_label(&m.name),
        };
        if let Err(msg) = r {
            e.add(&np, format!("invalid name {:?}: {msg}", m.name));
        }
    }
    if namespaced && !m.namespace.is_empty() {
        if let Err(msg) = check_dns1123_label(&m.namespace) {
            e.add(
                &path.child("namespace"),
                format!("invalid namespace {:?}: {msg}", m.namespace),
            );
        }
    }
    labels(e, &m.labels, &path.child("labels"));
    for k in m.annotations.keys() {
        if let Err(msg) = check_qualified_name(k) {
            e.add(
                &path.child("annotations").child(k),
                format!("invalid annotation key {k:?}: {msg}"),
            );
        }
    }
}

fn labels(e: &mut Errs, l: &Labels, path: &FieldPath) {
    for (k, v) in l {
        let p = path.child(k);
        if let Err(msg) = check_qualified_name(k) {
            e.add(&p, format!("invalid label key {k:?}: {msg}"));
        }
        if let Err(msg) = check_label_value(v) {
            e.add(&p, format!("invalid label value {v:?}: {msg}"));
        }
    }
}

fn non_negative(e: &mut Errs, path: &FieldPath, v: i64) {
    if v < 0 {
        e.add(
            path,
            format!("must be greater than or equal to 0 (got {v})"),
        );
    }
}

fn port_number(e: &mut Errs, path: &FieldPath, p: i32) {
    if !(1..=65535).contains(&p) {
        e.add(path, format!("must be between 1 and 65535 (got {p})"));
    }
}

/// Check a protocol and return it normalized ("TCP" when unset).
fn protocol<'a>(e: &mut Errs, p: Option<&'a str>, path: &FieldPath) -> &'a str {
    match p {
        None => "TCP",
        Some(p @ ("TCP" | "UDP")) => p,
        Some(p) => {
            e.add(path, format!("unsupported protocol {p:?}: use TCP or UDP"));
            p
        }
    }
}

fn target_port(e: &mut Errs, t: &IntOrString, path: &FieldPath) {
    match t {
        IntOrString::Int(i) => {
            if !(1..=65535).contains(i) {
                e.add(path, format!("must be between 1 and 65535 (got {i})"));
            }
        }
        IntOrString::String(s) => {
            if let Err(m) = check_port_name(s) {
                e.add(
                    path,
                    format!("invalid port name {s:?}: {m} (or give a port number)"),
                );
            }
        }
    }
}

fn selector_and_template(
    e: &mut Errs,
    sel: &LabelSelector,
    template: &PodTemplateSpec,
    spec: &FieldPath,
) {
    let sp = spec.child("selector");
    let tp = spec.child("template");
    let tm = tp.child("metadata");
    labels(e, &template.metadata.labels, &tm.child("labels"));
    if !template.metadata.name.is_empty() {
        if let Err(m) = check_dns1123_subdomain(&template.metadata.name) {
            e.add(
                &tm.child("name"),
                format!("invalid name {:?}: {m}", template.metadata.name),
            );
        }
    }
    if sel.match_labels.is_empty() && sel.match_expressions.is_empty() {
        e.add(
            &sp,
            "must not be empty: give matchLabels that match spec.template.metadata.labels",
        );
    } else {
        let before = e.0.len();
        labels(e, &sel.match_labels, &sp.child("matchLabels"));
        for (i, x) in sel.match_expressions.iter().enumerate() {
            if let Err(m) = crate::selector::requirement_from_expression(x) {
                e.add(&sp.child("matchExpressions").index(i), m);
            }
        }
        if e.0.len() == before {
            if let Ok(s) = Selector::from_label_selector(sel) {
                if !s.matches(&template.metadata.labels) {
                    e.add(
                        &sp,
                        format!(
                            "does not match spec.template.metadata.labels: selector {:?}, labels {:?}",
                            s.to_string(),
                            Selector::from_labels(&template.metadata.labels).to_string()
                        ),
                    );
                }
            }
        }
    }
    pod_spec(e, &template.spec, &tp.child("spec"));
}

fn strategy(e: &mut Errs, s: &DeploymentStrategy, path: &FieldPath) {
    let ty = s
        .type_
        .as_deref()
        .unwrap_or(StrategyType::default().as_str());
    if let Err(err) = ty.parse::<StrategyType>() {
        e.add(&path.child("type"), err.to_string());
    }
    if let Some(ru) = &s.rolling_update {
        let rp = path.child("rollingUpdate");
        if ty != StrategyType::RollingUpdate {
            e.add(
                &rp,
                format!("may only be set when type is RollingUpdate (type is {ty})"),
            );
        }
        // None = not given (defaults to 25%), Some(n) = a valid value.
        let mut check = |field: &str, v: &Option<IntOrString>| -> Option<i64> {
            let v = v.as_ref()?;
            let p = rp.child(field);
            match int_or_percent(v) {
                Err(m) => {
                    e.add(&p, m);
                    None
                }
                Ok((n, pct)) => {
                    if pct && n > 100 && field == "maxUnavailable" {
                        e.add(&p, format!("must not be greater than 100% (got {v})"));
                    }
                    Some(n)
                }
            }
        };
        let surge = check("maxSurge", &ru.max_surge);
        let unavailable = check("maxUnavailable", &ru.max_unavailable);
        // Both default to 25%, so only an explicit 0 for both deadlocks the rollout.
        if surge == Some(0) && unavailable == Some(0) {
            e.add(
                &rp.child("maxUnavailable"),
                "may not be 0 when maxSurge is 0: the rollout could never progress",
            );
        }
        auto_revert(e, ru, &rp);
    }
    match (&s.blue_green, ty) {
        (None, t) if t == StrategyType::BlueGreen => e.add(
            &path.child("blueGreen"),
            "is required when type is BlueGreen",
        ),
        (Some(_), t) if t != StrategyType::BlueGreen => e.add(
            &path.child("blueGreen"),
            format!("may only be set when type is BlueGreen (type is {t})"),
        ),
        (Some(bg), _) => {
            let bp = path.child("blueGreen");
            if bg.active_service.is_empty() {
                e.add(&bp.child("activeService"), "is required");
            } else if let Err(m) = check_dns1123_label(&bg.active_service) {
                e.add(
                    &bp.child("activeService"),
                    format!("invalid service name {:?}: {m}", bg.active_service),
                );
            }
            if let Some(pv) = &bg.preview_service {
                if let Err(m) = check_dns1123_label(pv) {
                    e.add(
                        &bp.child("previewService"),
                        format!("invalid service name {pv:?}: {m}"),
                    );
                } else if *pv == bg.active_service {
                    e.add(
                        &bp.child("previewService"),
                        format!("must differ from activeService {pv:?}"),
                    );
                }
            }
            if let Some(v) = bg.auto_promotion_seconds {
                non_negative(e, &bp.child("autoPromotionSeconds"), v);
            }
            if let Some(v) = bg.scale_down_delay_seconds {
                non_negative(e, &bp.child("scaleDownDelaySeconds"), v);
            }
        }
        (None, _) => {}
    }
}

/// `autoRevert` and its failure threshold: the threshold only means something with autoRevert.
fn auto_revert(e: &mut Errs, ru: &RollingUpdateDeployment, rp: &FieldPath) {
    for (field, v, min) in [
        ("autoRevertFailedPods", ru.auto_revert_failed_pods, 1),
        ("autoRevertFailedSeconds", ru.auto_revert_failed_seconds, 0),
    ] {
        let Some(v) = v else { continue };
        let p = rp.child(field);
        if !ru.auto_revert {
            e.add(
                &p,
                "may only be set with autoRevert: true (it is the threshold at which a failing \
                 rollout is reverted)",
            );
        } else if v < min {
            e.add(&p, format!("must be at least {min} (got {v})"));
        }
    }
}

/// `3` or `"25%"` -> (number, is_percent).
fn int_or_percent(v: &IntOrString) -> Result<(i64, bool), String> {
    let bad = || {
        format!(
            "must be a non-negative integer or a percentage like \"25%\" (got {v:?})",
            v = v.to_string()
        )
    };
    match v {
        IntOrString::Int(i) if *i >= 0 => Ok((*i, false)),
        IntOrString::Int(_) => Err(bad()),
        IntOrString::String(s) => {
            let n = s.strip_suffix('%').ok_or_else(bad)?;
            if n.is_empty() || !n.bytes().all(|c| c.is_ascii_digit()) || n.len() > 9 {
                return Err(bad());
            }
            n.parse::<i64>().map(|n| (n, true)).map_err(|_| bad())
        }
    }
}

const KNOWN_RESOURCES: [&str; 2] = ["cpu", "memory"];

fn pod_spec(e: &mut Errs, spec: &PodSpec, path: &FieldPath) {
    let cp = path.child("containers");
    if spec.containers.is_empty() {
        e.add(&cp, "at least one container is required");
    }
    volumes(e, spec, path);
    for (i, s) in spec.image_pull_secrets.iter().enumerate() {
        let sp = path.child("imagePullSecrets").index(i).child("name");
        if let Err(m) = check_dns1123_subdomain(&s.name) {
            e.add(&sp, m);
        }
    }
    if !spec.node_name.is_empty() {
        if let Err(m) = check_dns1123_subdomain(&spec.node_name) {
            e.add(
                &path.child("nodeName"),
                format!("invalid node name {:?}: {m}", spec.node_name),
            );
        }
    }
    labels(e, &spec.node_selector, &path.child("nodeSelector"));
    if let Some(p) = &spec.restart_policy {
        if !matches!(p.as_str(), "Always" | "OnFailure" | "Never") {
            e.add(
                &path.child("restartPolicy"),
                format!("unsupported restart policy {p:?}: use Always, OnFailure or Never"),
            );
        }
    }
    if let Some(r) = &spec.runtime_class_name {
        if !crate::types::RUNTIME_CLASSES.contains(&r.as_str()) {
            e.add(
                &path.child("runtimeClassName"),
                format!(
                    "unsupported runtime class {r:?}: use \"docker\" (images in the Docker engine) or \"process\" (host processes), or leave it out for the node's default"
                ),
            );
        }
    }
    if let Some(d) = &spec.dns_policy {
        if d == "None" {
            e.add(
                &path.child("dnsPolicy"),
                "dnsPolicy None needs dnsConfig, which Berth does not support: use ClusterFirst (the cluster DNS) or Default (the node's resolvers)".to_string(),
            );
        } else if !crate::types::DNS_POLICIES.contains(&d.as_str()) {
            e.add(
                &path.child("dnsPolicy"),
                format!("unsupported dnsPolicy {d:?}: use ClusterFirst, ClusterFirstWithHostNet or Default"),
            );
        }
    }
    if let Some(g) = spec.termination_grace_period_seconds {
        non_negative(e, &path.child("terminationGracePeriodSeconds"), g);
    }
    for (i, t) in spec.tolerations.iter().enumerate() {
        toleration(e, t, &path.child("tolerations").index(i));
    }

    let mut names: HashMap<&str, (&str, usize)> = HashMap::new();
    // Ports are per pod: two containers cannot both listen on 8080/TCP.
    let mut port_numbers: HashMap<(i32, &str), (&str, usize, usize)> = HashMap::new();
    let mut port_names: HashMap<&str, (&str, usize, usize)> = HashMap::new();
    let icp = path.child("initContainers");
    let all = spec.all_containers();
    for (list, i, c) in all {
        let init = list == "initContainers";
        let p = if init { icp.index(i) } else { cp.index(i) };
        if c.name.is_empty() {
            e.add(&p.child("name"), "is required");
        } else {
            if let Err(m) = check_dns1123_label(&c.name) {
                e.add(
                    &p.child("name"),
                    format!("invalid container name {:?}: {m}", c.name),
                );
            }
            if let Some((l, j)) = names.insert(&c.name, (list, i)) {
                e.add(
                    &p.child("name"),
                    format!("duplicate container name {:?} (also {l}[{j}])", c.name),
                );
            }
        }
        if c.image.trim().is_empty() {
            e.add(&p.child("image"), "is required");
        }
        if let Some(pp) = &c.image_pull_policy {
            if !matches!(pp.as_str(), "Always" | "IfNotPresent" | "Never") {
                e.add(
                    &p.child("imagePullPolicy"),
                    format!("unsupported pull policy {pp:?}: use Always, IfNotPresent or Never"),
                );
            }
        }
        let mut env_names: HashMap<&str, usize> = HashMap::new();
        for (j, v) in c.env.iter().enumerate() {
            let ep = p.child("env").index(j);
            if v.name.is_empty() {
                e.add(&ep.child("name"), "is required");
            } else if v.name.contains('=') || v.name.contains('\0') {
                e.add(
                    &ep.child("name"),
                    format!(
                        "invalid environment variable name {:?}: must not contain '=' or NUL",
                        v.name
                    ),
                );
            } else if let Some(k) = env_names.insert(&v.name, j) {
                e.add(
                    &ep.child("name"),
                    format!(
                        "duplicate environment variable {:?} (also env[{k}])",
                        v.name
                    ),
                );
            }
            validate_env_source(e, &ep, v);
        }
        validate_env_from(e, &p, c);
        for (j, port) in c.ports.iter().enumerate() {
            let pp = p.child("ports").index(j);
            port_number(e, &pp.child("containerPort"), port.container_port);
            if let Some(h) = port.host_port {
                if !(0..=65535).contains(&h) {
                    e.add(
                        &pp.child("hostPort"),
                        format!("must be between 0 and 65535 (got {h}; 0 lets the agent choose)"),
                    );
                }
            }
            let proto = protocol(e, port.protocol.as_deref(), &pp.child("protocol"));
            if let Some((l, ci, pj)) =
                port_numbers.insert((port.container_port, proto), (list, i, j))
            {
                e.add(
                    &pp.child("containerPort"),
                    format!(
                        "duplicate port {}/{proto} (also {l}[{ci}].ports[{pj}])",
                        port.container_port
                    ),
                );
            }
            if !port.name.is_empty() {
                if let Err(m) = check_port_name(&port.name) {
                    e.add(
                        &pp.child("name"),
                        format!("invalid port name {:?}: {m}", port.name),
                    );
                }
                if let Some((l, ci, pj)) = port_names.insert(&port.name, (list, i, j)) {
                    e.add(
                        &pp.child("name"),
                        format!(
                            "duplicate port name {:?} (also {l}[{ci}].ports[{pj}])",
                            port.name
                        ),
                    );
                }
            }
        }
        if let Some(r) = &c.resources {
            resources(e, r, &p.child("resources"));
        }
        for (field, probe_opt) in [
            ("readinessProbe", &c.readiness_probe),
            ("livenessProbe", &c.liveness_probe),
            ("startupProbe", &c.startup_probe),
        ] {
            if let Some(pr) = probe_opt {
                if init && !c.is_sidecar() {
                    // Kubernetes: only restartable (sidecar) init containers may have probes.
                    e.add(
                        &p.child(field),
                        "may not be set for init containers without restartPolicy: Always",
                    );
                } else {
                    probe(e, pr, c, &p.child(field));
                }
            }
        }
        if let Some(rp) = &c.restart_policy {
            if !init {
                e.add(
                    &p.child("restartPolicy"),
                    format!("may only be set on init containers (got {rp:?}); use spec.restartPolicy for app containers"),
                );
            } else if rp != "Always" {
                e.add(
                    &p.child("restartPolicy"),
                    format!("unsupported restart policy {rp:?}: only Always (a sidecar) is allowed on an init container"),
                );
            }
        }
        if let Some(l) = &c.lifecycle {
            let lp = p.child("lifecycle");
            if init && !c.is_sidecar() {
                e.add(
                    &lp,
                    "may not be set for init containers without restartPolicy: Always",
                );
            } else {
                for (field, h) in [("postStart", &l.post_start), ("preStop", &l.pre_stop)] {
                    if let Some(h) = h {
                        lifecycle_handler(e, h, c, &lp.child(field));
                    }
                }
            }
        }
    }
}

fn lifecycle_handler(e: &mut Errs, h: &LifecycleHandler, c: &Container, path: &FieldPath) {
    let n = [h.exec.is_some(), h.http_get.is_some(), h.sleep.is_some()]
        .iter()
        .filter(|x| **x)
        .count();
    if n != 1 {
        e.add(
            path,
            format!("must specify exactly one of exec, httpGet or sleep (found {n})"),
        );
    }
    if let Some(x) = &h.exec {
        if x.command.is_empty() {
            e.add(&path.child("exec").child("command"), "must not be empty");
        }
    }
    if let Some(s) = &h.sleep {
        if s.seconds <= 0 {
            e.add(
                &path.child("sleep").child("seconds"),
                format!("must be greater than 0 (got {})", s.seconds),
            );
        }
    }
    if let Some(g) = &h.http_get {
        // The probe checks cover the port, scheme and path.
        let as_probe = Probe {
            http_get: Some(g.clone()),
            ..Default::default()
        };
        probe(e, &as_probe, c, path);
    }
}

fn toleration(e: &mut Errs, t: &Toleration, path: &FieldPath) {
    let op = t.operator.as_deref().unwrap_or("Equal");
    match op {
        "Equal" => {
            if t.key.is_empty() {
                e.add(&path.child("key"), "is required when operator is Equal");
            }
        }
        "Exists" => {
            if !t.value.is_empty() {
                e.add(
                    &path.child("value"),
                    "must be empty when operator is Exists",
                );
            }
        }
        other => e.add(
            &path.child("operator"),
            format!("unsupported operator {other:?}: use Equal or Exists"),
        ),
    }
    if !t.key.is_empty() {
        if let Err(m) = check_qualified_name(&t.key) {
            e.add(&path.child("key"), format!("invalid key {:?}: {m}", t.key));
        }
    }
    if !t.effect.is_empty() {
        if let Err(err) = t.effect.parse::<TaintEffect>() {
            e.add(
                &path.child("effect"),
                format!("{err} (or leave it empty to tolerate every effect)"),
            );
        }
    }
    if let Some(s) = t.toleration_seconds {
        non_negative(e, &path.child("tolerationSeconds"), s);
    }
}

fn resources(e: &mut Errs, r: &ResourceRequirements, path: &FieldPath) {
    let mut parsed: [BTreeMap<&str, ParsedQuantity>; 2] = [BTreeMap::new(), BTreeMap::new()];
    for (slot, (field, map)) in [("requests", &r.requests), ("limits", &r.limits)]
        .into_iter()
        .enumerate()
    {
        for (k, q) in map {
            let p = path.child(field).child(k);
            if !KNOWN_RESOURCES.contains(&k.as_str()) {
                e.add(&p, format!("unsupported resource {k:?}: use cpu or memory"));
                continue;
            }
            match q.parsed() {
                Ok(v) => {
                    parsed[slot].insert(k.as_str(), v);
                }
                Err(err) => e.add(&p, err.to_string()),
            }
        }
    }
    for (k, req) in &parsed[0] {
        if let Some(lim) = parsed[1].get(k) {
            if req > lim {
                e.add(
                    &path.child("requests").child(k),
                    format!(
                        "must be less than or equal to the {k} limit ({} > {})",
                        r.requests.get(*k).map(|q| q.0.as_str()).unwrap_or(""),
                        r.limits.get(*k).map(|q| q.0.as_str()).unwrap_or("")
                    ),
                );
            }
        }
    }
}

fn probe(e: &mut Errs, p: &Probe, c: &Container, path: &FieldPath) {
    let handlers = [
        p.http_get.is_some(),
        p.tcp_socket.is_some(),
        p.exec.is_some(),
    ]
    .iter()
    .filter(|h| **h)
    .count();
    if handlers != 1 {
        e.add(
            path,
            format!("must specify exactly one of httpGet, tcpSocket or exec (found {handlers})"),
        );
    }
    let check_port = |e: &mut Errs, port: &IntOrString, pp: &FieldPath| match port {
        IntOrString::Int(i) => {
            if !(1..=65535).contains(i) {
                e.add(pp, format!("must be between 1 and 65535 (got {i})"));
            }
        }
        IntOrString::String(s) => {
            if !c.ports.iter().any(|cp| cp.name == *s) {
                let known: Vec<&str> = c
                    .ports
                    .iter()
                    .filter(|cp| !cp.name.is_empty())
                    .map(|cp| cp.name.as_str())
                    .collect();
                let hint = if known.is_empty() {
                    "the container has no named ports".to_string()
                } else {
                    format!("named ports: {}", known.join(", "))
                };
                e.add(
                    pp,
                    format!(
                        "port name {s:?} does not name a port of container {:?} ({hint})",
                        c.name
                    ),
                );
            }
        }
    };
    if let Some(h) = &p.http_get {
        let hp = path.child("httpGet");
        check_port(e, &h.port, &hp.child("port"));
        if let Some(s) = &h.scheme {
            if !matches!(s.as_str(), "HTTP" | "HTTPS") {
                e.add(
                    &hp.child("scheme"),
                    format!("unsupported scheme {s:?}: use HTTP or HTTPS"),
                );
            }
        }
        if let Some(path_s) = &h.path {
            if !path_s.is_empty() && !path_s.starts_with('/') {
                e.add(
                    &hp.child("path"),
                    format!("must start with '/' (got {path_s:?})"),
                );
            }
        }
    }
    if let Some(t) = &p.tcp_socket {
        check_port(e, &t.port, &path.child("tcpSocket").child("port"));
    }
    if let Some(x) = &p.exec {
        if x.command.is_empty() {
            e.add(&path.child("exec").child("command"), "must not be empty");
        }
    }
    if let Some(v) = p.initial_delay_seconds {
        non_negative(e, &path.child("initialDelaySeconds"), i64::from(v));
    }
    for (field, v) in [
        ("periodSeconds", p.period_seconds),
        ("timeoutSeconds", p.timeout_seconds),
        ("successThreshold", p.success_threshold),
        ("failureThreshold", p.failure_threshold),
    ] {
        if let Some(v) = v {
            if v <= 0 {
                e.add(
                    &path.child(field),
                    format!("must be greater than 0 (got {v})"),
                );
            }
        }
    }
}
