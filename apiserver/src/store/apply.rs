//! The semantics of each write, as a transaction over the current objects.
//!
//! A [`Txn`] reads the committed objects plus its own pending changes, runs ops one by one
//! (each succeeds whole or changes nothing), assigns each successful mutation the next
//! revision, and records the watch events. The store then commits `changes` to sled and memory
//! in one step, or throws them away (dry run). Pure and deterministic: everything that varies
//! comes in the [`Command`](super::command::Command).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use berth_proto::types::{
    Labels, ObjectMeta, Service, ServiceSpec, Time, NAMESPACE_FINALIZER, PROTECTED_NAMESPACES,
    SYSTEM_NAMESPACES,
};
use berth_proto::{DynObject, Kind};
use serde_json::Value;

use super::command::{ApplyOutcome, Op, OpOutput, OpResult};
use super::error::{normalize_namespace, ObjectKey, StoreError};
use super::watch::{ChangeType, Event};
use super::NodePortRange;

pub(super) struct Txn<'a> {
    base: &'a BTreeMap<ObjectKey, Arc<Value>>,
    /// Pending writes: Some = put, None = delete.
    pub changes: BTreeMap<ObjectKey, Option<Arc<Value>>>,
    pub revision: u64,
    pub events: Vec<Event>,
    pub now: Time,
    pub node_ports: NodePortRange,
    pub networks: super::networks::Networks,
    pub max_object_bytes: usize,
    /// Refuse new objects in namespaces that do not exist or are terminating (set by
    /// proposers that know Namespaces; entries written before them are applied as they were).
    pub check_namespaces: bool,
}

/// The labels of a stored object.
pub(crate) fn labels_of(v: &Value) -> Labels {
    v.get("metadata")
        .and_then(|m| m.get("labels"))
        .and_then(|l| l.as_object())
        .map(|l| {
            l.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn resource_version_of(v: &Value) -> u64 {
    match v.get("metadata").and_then(|m| m.get("resourceVersion")) {
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
        _ => 0,
    }
}

fn set_resource_version(v: &mut Value, rv: u64) {
    if let Some(m) = v.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        m.insert("resourceVersion".into(), Value::String(rv.to_string()));
    }
}

fn decode(object: Value) -> Result<DynObject, StoreError> {
    let obj = DynObject::from_value(object).map_err(|e| StoreError::Invalid(e.to_string()))?;
    if obj.name().is_empty() {
        return Err(StoreError::Invalid(format!(
            "{}: metadata.name is required",
            obj.kind
        )));
    }
    Ok(obj)
}

fn key_of(obj: &DynObject) -> ObjectKey {
    ObjectKey::new(obj.kind, obj.namespace(), obj.name())
}

fn precondition(key: &ObjectKey, expected: u64, current: &Value) -> Result<(), StoreError> {
    let actual = resource_version_of(current);
    if expected != 0 && expected != actual {
        return Err(StoreError::Conflict {
            key: key.clone(),
            expected,
            actual,
        });
    }
    Ok(())
}

/// `value` without metadata.resourceVersion, for "did anything change" comparisons.
fn without_rv(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        m.remove("resourceVersion");
    }
    v
}

impl<'a> Txn<'a> {
    pub fn new(
        base: &'a BTreeMap<ObjectKey, Arc<Value>>,
        revision: u64,
        now: Time,
        node_ports: NodePortRange,
        max_object_bytes: usize,
    ) -> Txn<'a> {
        Txn {
            base,
            changes: BTreeMap::new(),
            revision,
            events: Vec::new(),
            now,
            node_ports,
            networks: super::networks::Networks::default(),
            max_object_bytes,
            check_namespaces: false,
        }
    }

    fn get(&self, key: &ObjectKey) -> Option<Arc<Value>> {
        match self.changes.get(key) {
            Some(v) => v.clone(),
            None => self.base.get(key).cloned(),
        }
    }

    /// Run the ops of one command. Independent ops each succeed or fail alone; `atomic` ones
    /// all succeed, or the transaction is put back as it was before the first of them and
    /// every op answers an error (its own, or [`StoreError::NotApplied`]). Every op runs
    /// either way, so one answer names every problem.
    pub fn run_all(&mut self, ops: Vec<Op>, atomic: bool) -> Vec<OpResult> {
        if !atomic {
            return ops.into_iter().map(|op| self.run(op)).collect();
        }
        let saved = (self.changes.clone(), self.revision, self.events.len());
        let results: Vec<OpResult> = ops.into_iter().map(|op| self.run(op)).collect();
        let failed: Vec<usize> = results
            .iter()
            .enumerate()
            .filter(|(_, r)| r.is_err())
            .map(|(i, _)| i)
            .collect();
        if failed.is_empty() {
            return results;
        }
        let (changes, revision, events) = saved;
        self.changes = changes;
        self.revision = revision;
        self.events.truncate(events);
        results
            .into_iter()
            .map(|r| {
                r.and_then(|_| {
                    Err(StoreError::NotApplied {
                        failed: failed.clone(),
                    })
                })
            })
            .collect()
    }

    pub fn run(&mut self, op: Op) -> OpResult {
        match op {
            Op::Create { object, uid } => self.create(object, &uid),
            Op::Update { object } => self.update(object),
            Op::UpdateStatus { object, bound_node } => {
                self.update_status(object, bound_node.as_deref())
            }
            Op::Apply { object, uid } => self.apply(object, &uid),
            Op::Delete {
                key,
                resource_version,
                grace_period_seconds,
            } => self.delete(key, resource_version, grace_period_seconds),
        }
    }

    /// Record a successful mutation at the next revision.
    fn commit(
        &mut self,
        key: ObjectKey,
        mut object: Value,
        prev: Option<&Value>,
        change: ChangeType,
    ) -> Result<Value, StoreError> {
        if key.kind == Kind::Secret && change != ChangeType::Deleted {
            self.check_secret_keys(&key, &object)?;
        }
        let revision = self.revision + 1;
        set_resource_version(&mut object, revision);
        let size = serde_json::to_vec(&object).map(|b| b.len()).unwrap_or(0);
        if change != ChangeType::Deleted && size > self.max_object_bytes {
            return Err(StoreError::TooLarge {
                what: key.to_string(),
                size,
                limit: self.max_object_bytes,
            });
        }
        self.revision = revision;
        let object = Arc::new(object);
        self.events.push(Event {
            revision,
            change,
            kind: key.kind,
            namespace: key.namespace.clone(),
            object: object.clone(),
            prev_labels: prev.map(labels_of),
            labels: labels_of(&object),
            size,
        });
        let out = (*object).clone();
        let stored = (change != ChangeType::Deleted).then_some(object);
        self.changes.insert(key, stored);
        Ok(out)
    }

    fn create(&mut self, object: Value, uid: &str) -> OpResult {
        let mut obj = decode(object)?;
        let key = key_of(&obj);
        if self.get(&key).is_some() {
            return Err(StoreError::AlreadyExists { key });
        }
        if self.check_namespaces && key.kind.namespaced() {
            self.namespace_accepts(&key.namespace)?;
        }
        if key.kind == Kind::Namespace {
            // Server-owned, as Kubernetes' namespace strategy sets them.
            obj.value["spec"] = serde_json::json!({ "finalizers": [NAMESPACE_FINALIZER] });
            obj.value["status"] = serde_json::json!({ "phase": "Active" });
        }
        let mut meta = obj.meta();
        meta.namespace = key.namespace.clone();
        meta.uid = uid.to_string();
        meta.creation_timestamp = Some(self.now);
        meta.deletion_timestamp = None;
        meta.deletion_grace_period_seconds = None;
        meta.generation = 1;
        meta.resource_version = 0;
        obj.set_meta(&meta);
        self.assign_addresses(&key, &mut obj.value, None)?;
        let object = self.commit(key, obj.value, None, ChangeType::Added)?;
        Ok(OpOutput {
            object,
            outcome: None,
        })
    }

    /// Finish a write to an existing object: node ports, generation, no-op detection.
    /// Returns None when nothing changed.
    fn finish_change(
        &mut self,
        key: &ObjectKey,
        mut new: DynObject,
        existing: &Value,
    ) -> Result<Option<Value>, StoreError> {
        self.assign_addresses(key, &mut new.value, Some(existing))?;
        let old = DynObject {
            kind: key.kind,
            value: existing.clone(),
        };
        let mut meta = new.meta();
        meta.generation = old.meta().generation;
        if new.spec_part() != old.spec_part() {
            meta.generation += 1;
        }
        meta.resource_version = resource_version_of(existing);
        new.set_meta(&meta);
        if without_rv(&new.value) == without_rv(existing) {
            return Ok(None);
        }
        self.commit(key.clone(), new.value, Some(existing), ChangeType::Modified)
            .map(Some)
    }

    fn update(&mut self, object: Value) -> OpResult {
        let mut obj = decode(object)?;
        let key = key_of(&obj);
        let existing = self
            .get(&key)
            .ok_or_else(|| StoreError::NotFound { key: key.clone() })?;
        let req_meta = obj.meta();
        precondition(&key, req_meta.resource_version, &existing)?;
        let old_meta = DynObject {
            kind: key.kind,
            value: (*existing).clone(),
        }
        .meta();
        // The request owns labels, annotations, owner references and the spec; identity,
        // timestamps and status stay as stored.
        let meta = ObjectMeta {
            name: key.name.clone(),
            namespace: key.namespace.clone(),
            labels: req_meta.labels,
            annotations: req_meta.annotations,
            owner_references: req_meta.owner_references,
            // Server-side apply's record (the REST API maintains it); a writer that does not
            // send one keeps the stored one.
            managed_fields: if req_meta.managed_fields.is_empty() {
                old_meta.managed_fields.clone()
            } else {
                req_meta.managed_fields
            },
            ..old_meta
        };
        obj.set_meta(&meta);
        keep_status(&mut obj.value, &existing);
        keep_namespace_spec(key.kind, &mut obj.value, &existing);
        let object = self
            .finish_change(&key, obj, &existing)?
            .unwrap_or_else(|| (*existing).clone());
        Ok(OpOutput {
            object,
            outcome: None,
        })
    }

    fn update_status(&mut self, object: Value, bound_node: Option<&str>) -> OpResult {
        let obj = decode(object)?;
        let key = key_of(&obj);
        if !key.kind.has_status() {
            return Err(StoreError::Invalid(format!(
                "{} has no status; use Update",
                key.kind
            )));
        }
        let existing = self
            .get(&key)
            .ok_or_else(|| StoreError::NotFound { key: key.clone() })?;
        if let Some(node) = bound_node {
            let bound = existing["spec"]["nodeName"].as_str().unwrap_or("");
            if key.kind != Kind::Pod || bound != node {
                let now = if bound.is_empty() {
                    "it is not bound to a node".to_string()
                } else {
                    format!("it is bound to node {bound}")
                };
                return Err(StoreError::Forbidden(format!(
                    "{}{node} may not update the status of {key}: {now}; a node may only update \
                     the status of pods bound to it",
                    berth_tls::NODE_PREFIX
                )));
            }
        }
        precondition(&key, obj.meta().resource_version, &existing)?;
        let mut new = (*existing).clone();
        match (new.as_object_mut(), obj.status()) {
            (Some(m), Some(s)) => {
                m.insert("status".into(), s.clone());
            }
            (Some(m), None) => {
                m.remove("status");
            }
            _ => {}
        }
        let new = DynObject::from_value(new).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let object = self
            .finish_change(&key, new, &existing)?
            .unwrap_or_else(|| (*existing).clone());
        Ok(OpOutput {
            object,
            outcome: None,
        })
    }

    fn apply(&mut self, object: Value, uid: &str) -> OpResult {
        let obj = decode(object)?;
        let key = key_of(&obj);
        let Some(existing) = self.get(&key) else {
            let out = self.create(obj.value, uid)?;
            return Ok(OpOutput {
                outcome: Some(ApplyOutcome::Created),
                ..out
            });
        };
        let req_meta = obj.meta();
        precondition(&key, req_meta.resource_version, &existing)?;
        // Replace the user-owned part wholesale; keep metadata identity and status; merge the
        // labels and annotations given into the stored ones (loops may have added their own).
        let mut new = (*existing).clone();
        if let (Some(n), Some(req)) = (new.as_object_mut(), obj.value.as_object()) {
            n.retain(|k, _| matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind"));
            for (k, v) in req {
                if !matches!(k.as_str(), "metadata" | "status") {
                    n.insert(k.clone(), v.clone());
                }
            }
        }
        keep_namespace_spec(key.kind, &mut new, &existing);
        // A Pod's binding belongs to the scheduler: re-applying a manifest without
        // spec.nodeName must not unbind it.
        if key.kind == Kind::Pod {
            let bound = existing["spec"]["nodeName"].clone();
            let requested = new["spec"]["nodeName"].as_str().unwrap_or("");
            if requested.is_empty() && bound.is_string() {
                new["spec"]["nodeName"] = bound;
            }
        }
        let mut new = DynObject::from_value(new).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let mut meta = new.meta();
        meta.labels.extend(req_meta.labels);
        meta.annotations.extend(req_meta.annotations);
        if !req_meta.owner_references.is_empty() {
            meta.owner_references = req_meta.owner_references;
        }
        new.set_meta(&meta);
        let (object, outcome) = match self.finish_change(&key, new, &existing)? {
            Some(o) => (o, ApplyOutcome::Configured),
            None => ((*existing).clone(), ApplyOutcome::Unchanged),
        };
        Ok(OpOutput {
            object,
            outcome: Some(outcome),
        })
    }

    fn delete(&mut self, key: ObjectKey, resource_version: u64, grace: Option<i64>) -> OpResult {
        let key = ObjectKey {
            namespace: normalize_namespace(key.kind, &key.namespace),
            ..key
        };
        let existing = self
            .get(&key)
            .ok_or_else(|| StoreError::NotFound { key: key.clone() })?;
        precondition(&key, resource_version, &existing)?;
        if key.kind == Kind::Namespace {
            return self.delete_namespace(key, &existing);
        }
        if key.kind == Kind::Pod {
            match self.graceful_pod_delete(&existing, grace) {
                PodDelete::Remove => {}
                PodDelete::Keep => {
                    return Ok(OpOutput {
                        object: (*existing).clone(),
                        outcome: None,
                    })
                }
                PodDelete::Mark(v) => {
                    let object = self.commit(key, v, Some(&existing), ChangeType::Modified)?;
                    return Ok(OpOutput {
                        object,
                        outcome: None,
                    });
                }
            }
        }
        let object = self.commit(
            key,
            (*existing).clone(),
            Some(&existing),
            ChangeType::Deleted,
        )?;
        Ok(OpOutput {
            object,
            outcome: None,
        })
    }

    /// Graceful deletion of a Pod, as Kubernetes' pod strategy does it: a pod bound to a node
    /// that exists, not finished, deleted with a grace period above 0 is only marked
    /// (deletionTimestamp = now + grace, deletionGracePeriodSeconds = grace); its node drains
    /// it out of every Service proxy, stops it within the grace period and then deletes it with
    /// grace 0. A second delete may shorten the grace period, never lengthen it. Unbound or
    /// finished pods, pods of a node that is gone and grace 0 are removed at once.
    fn graceful_pod_delete(&self, existing: &Value, grace: Option<i64>) -> PodDelete {
        let node = existing["spec"]["nodeName"].as_str().unwrap_or("");
        let phase = existing["status"]["phase"].as_str().unwrap_or("");
        if node.is_empty()
            || matches!(phase, "Succeeded" | "Failed")
            || self.get(&ObjectKey::new(Kind::Node, "", node)).is_none()
        {
            return PodDelete::Remove;
        }
        let grace = grace
            .or_else(|| existing["spec"]["terminationGracePeriodSeconds"].as_i64())
            .unwrap_or(DEFAULT_POD_GRACE_SECONDS)
            .max(0);
        if grace == 0 {
            return PodDelete::Remove;
        }
        let until = self.now + chrono::Duration::seconds(grace);
        let marked = existing["metadata"]["deletionTimestamp"].as_str();
        if let Some(old) = marked.and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()) {
            if until >= old.with_timezone(&chrono::Utc) {
                return PodDelete::Keep;
            }
        } else if marked.is_some() {
            return PodDelete::Keep;
        }
        let mut v = existing.clone();
        v["metadata"]["deletionTimestamp"] = serde_json::to_value(until).unwrap_or(Value::Null);
        v["metadata"]["deletionGracePeriodSeconds"] = Value::from(grace);
        PodDelete::Mark(v)
    }

    /// Secrets encryption's invariant, kept where it cannot race: a Secret's values are
    /// sealed only with keys of the keyring, and the keyring never drops a key a stored Secret
    /// still uses (see [`crate::encryption`]).
    fn check_secret_keys(&self, key: &ObjectKey, object: &Value) -> Result<(), StoreError> {
        use crate::encryption::{key_names_in, KEYRING_NAME, KEYRING_NAMESPACE};
        let ring_key = ObjectKey::new(Kind::Secret, KEYRING_NAMESPACE, KEYRING_NAME);
        let names = |v: &Value| -> BTreeSet<String> {
            v["data"]
                .as_object()
                .map(|d| d.keys().cloned().collect())
                .unwrap_or_default()
        };
        if *key == ring_key {
            let keep = names(object);
            for (k, v) in self.others(Kind::Secret, key) {
                if let Some(n) = key_names_in(&v)
                    .into_iter()
                    .flatten()
                    .find(|n| !keep.contains(n))
                {
                    return Err(StoreError::Invalid(format!(
                        "the secrets encryption keyring may not drop key {n:?}: {k} is still \
                         encrypted with it; re-encrypt first (berth secrets-encryption rotate)"
                    )));
                }
            }
            return Ok(());
        }
        let used: BTreeSet<String> = key_names_in(object).into_iter().flatten().collect();
        if used.is_empty() {
            return Ok(());
        }
        let have = self.get(&ring_key).map(|r| names(&r)).unwrap_or_default();
        match used.iter().find(|n| !have.contains(*n)) {
            Some(n) => Err(StoreError::Invalid(format!(
                "{key} was encrypted with key {n:?}, which is no longer in the secrets \
                 encryption keyring (a rotation finished meanwhile): write it again"
            ))),
            None => Ok(()),
        }
    }

    /// May a new object be created in namespace `ns`? It must exist (the system namespaces
    /// always do) and not be terminating.
    fn namespace_accepts(&self, ns: &str) -> Result<(), StoreError> {
        let found = self.get(&ObjectKey::new(Kind::Namespace, "", ns));
        match found {
            None if SYSTEM_NAMESPACES.contains(&ns) => Ok(()),
            None => Err(StoreError::NamespaceNotFound {
                namespace: ns.to_string(),
            }),
            Some(v) if namespace_terminating(&v) => Err(StoreError::NamespaceTerminating {
                namespace: ns.to_string(),
            }),
            Some(_) => Ok(()),
        }
    }

    /// Does any object live in namespace `ns`?
    fn namespace_has_content(&self, ns: &str) -> bool {
        Kind::ALL.iter().filter(|k| k.namespaced()).any(|&kind| {
            let from = ObjectKey {
                kind,
                namespace: ns.to_string(),
                name: String::new(),
            };
            let in_ns = |k: &ObjectKey| k.kind == kind && k.namespace == ns;
            let in_base = self
                .base
                .range(from.clone()..)
                .take_while(|(k, _)| in_ns(k))
                .any(|(k, _)| !matches!(self.changes.get(k), Some(None)));
            in_base
                || self
                    .changes
                    .range(from..)
                    .take_while(|(k, _)| in_ns(k))
                    .any(|(_, v)| v.is_some())
        })
    }

    /// Deleting a Namespace, as Kubernetes does: the protected ones are refused; an active
    /// one is marked Terminating (deletionTimestamp, phase); a terminating one goes once
    /// nothing is left in it (the namespace controller empties it and deletes it again).
    fn delete_namespace(&mut self, key: ObjectKey, existing: &Arc<Value>) -> OpResult {
        if PROTECTED_NAMESPACES.contains(&key.name.as_str()) {
            return Err(StoreError::Forbidden(
                "this namespace may not be deleted".to_string(),
            ));
        }
        if !namespace_terminating(existing) {
            let mut v = (**existing).clone();
            v["metadata"]["deletionTimestamp"] =
                serde_json::to_value(self.now).unwrap_or(Value::Null);
            v["status"] = serde_json::json!({ "phase": "Terminating" });
            let object = self.commit(key, v, Some(existing), ChangeType::Modified)?;
            return Ok(OpOutput {
                object,
                outcome: None,
            });
        }
        if self.namespace_has_content(&key.name) {
            return Ok(OpOutput {
                object: (**existing).clone(),
                outcome: None,
            });
        }
        let object = self.commit(
            key,
            (**existing).clone(),
            Some(existing),
            ChangeType::Deleted,
        )?;
        Ok(OpOutput {
            object,
            outcome: None,
        })
    }

    /// Cluster IPs and node ports of Services, pod CIDRs of Nodes (see [`super::networks`]).
    fn assign_addresses(
        &self,
        key: &ObjectKey,
        value: &mut Value,
        existing: Option<&Value>,
    ) -> Result<(), StoreError> {
        match key.kind {
            Kind::Service => {
                let headless = self.assign_cluster_ip(key, value, existing)?;
                if !headless {
                    self.assign_node_ports(key, value, existing)?;
                }
                Ok(())
            }
            Kind::Node => self.assign_pod_cidr(key, value, existing),
            _ => Ok(()),
        }
    }

    /// Validate a given clusterIP or allocate one; an update keeps the stored one. Returns
    /// whether the Service is headless.
    fn assign_cluster_ip(
        &self,
        key: &ObjectKey,
        value: &mut Value,
        existing: Option<&Value>,
    ) -> Result<bool, StoreError> {
        let nets = self.networks;
        let stored = existing
            .and_then(|e| e["spec"]["clusterIP"].as_str())
            .map(str::to_string);
        let asked = value["spec"]["clusterIP"]
            .as_str()
            .or_else(|| value["spec"]["clusterIPs"][0].as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        if let (Some(s), Some(a)) = (&stored, &asked) {
            if s != a {
                return Err(StoreError::Address(format!(
                    "{key}: spec.clusterIP: field is immutable (it is {s}, asked {a}): delete \
                     and re-create the Service to change it"
                )));
            }
        }
        let ip = match asked.or(stored) {
            Some(none) if none == "None" => {
                value["spec"]["clusterIP"] = Value::String(none.clone());
                value["spec"]["clusterIPs"] = serde_json::json!([none]);
                if let Some(ports) = value["spec"]["ports"].as_array_mut() {
                    for p in ports {
                        if let Some(p) = p.as_object_mut() {
                            p.remove("nodePort");
                        }
                    }
                }
                return Ok(true);
            }
            Some(ip) => {
                let parsed: std::net::Ipv4Addr = ip.parse().map_err(|_| {
                    StoreError::Address(format!(
                        "{key}: spec.clusterIP: {ip:?} is not an IPv4 address or \"None\""
                    ))
                })?;
                if !nets.service_ip_usable(parsed) {
                    return Err(StoreError::Address(format!(
                        "{key}: spec.clusterIP: {ip} is not in the service range {} (--service-cidr): \
                         pick one inside it or omit clusterIP to have one allocated",
                        nets.service_cidr
                    )));
                }
                if let Some(owner) = self.service_ips(key).get(&parsed) {
                    return Err(StoreError::Address(format!(
                        "{key}: spec.clusterIP: {ip} is already allocated to {owner}: pick another \
                         or omit clusterIP to have one allocated"
                    )));
                }
                parsed
            }
            None => {
                let used = self.service_ips(key).into_keys().collect();
                nets.free_service_ip(&used)
                    .ok_or_else(|| StoreError::AddressesExhausted {
                        what: "cluster IP".into(),
                        range: nets.service_cidr.to_string(),
                        flag: "--service-cidr".into(),
                    })?
            }
        };
        value["spec"]["clusterIP"] = Value::String(ip.to_string());
        value["spec"]["clusterIPs"] = serde_json::json!([ip.to_string()]);
        Ok(false)
    }

    /// Cluster IPs held by Services other than `skip`.
    fn service_ips(&self, skip: &ObjectKey) -> BTreeMap<std::net::Ipv4Addr, ObjectKey> {
        self.others(Kind::Service, skip)
            .into_iter()
            .filter_map(|(k, v)| Some((v["spec"]["clusterIP"].as_str()?.parse().ok()?, k)))
            .collect()
    }

    /// Keep a Node's pod CIDR across writes (an agent re-applying its Node omits it), or
    /// allocate the lowest free block.
    fn assign_pod_cidr(
        &self,
        key: &ObjectKey,
        value: &mut Value,
        existing: Option<&Value>,
    ) -> Result<(), StoreError> {
        let nets = self.networks;
        let stored = existing
            .and_then(|e| e["spec"]["podCIDR"].as_str())
            .map(str::to_string);
        let asked = value["spec"]["podCIDR"].as_str().map(str::to_string);
        let cidr = match (asked, stored) {
            (Some(a), Some(s)) if a != s => {
                return Err(StoreError::Address(format!(
                    "{key}: spec.podCIDR: field is immutable (it is {s}, asked {a})"
                )))
            }
            (_, Some(s)) => s,
            (Some(a), None) => {
                let c: super::networks::Cidr = a
                    .parse()
                    .map_err(|m| StoreError::Address(format!("{key}: spec.podCIDR: {m}")))?;
                let owner = self.others(Kind::Node, key).into_iter().find(|(_, v)| {
                    v["spec"]["podCIDR"]
                        .as_str()
                        .and_then(|o| o.parse::<super::networks::Cidr>().ok())
                        .is_some_and(|o| o.overlaps(&c))
                });
                if let Some((owner, _)) = owner {
                    return Err(StoreError::Address(format!(
                        "{key}: spec.podCIDR: {a} overlaps the pod CIDR of {owner}"
                    )));
                }
                a
            }
            (None, None) => {
                let used = self
                    .others(Kind::Node, key)
                    .into_iter()
                    .filter_map(|(_, v)| v["spec"]["podCIDR"].as_str()?.parse().ok())
                    .collect();
                nets.free_pod_cidr(&used)
                    .ok_or_else(|| StoreError::AddressesExhausted {
                        what: "node pod CIDR".into(),
                        range: nets.cluster_cidr.to_string(),
                        flag: "--cluster-cidr".into(),
                    })?
                    .to_string()
            }
        };
        if !value["spec"].is_object() {
            value["spec"] = serde_json::json!({});
        }
        value["spec"]["podCIDR"] = Value::String(cidr.clone());
        value["spec"]["podCIDRs"] = serde_json::json!([cidr]);
        Ok(())
    }

    /// Every Service visible to this transaction except `skip`.
    fn other_services(&self, skip: &ObjectKey) -> Vec<(ObjectKey, Arc<Value>)> {
        self.others(Kind::Service, skip)
    }

    /// Every object of `kind` visible to this transaction except `skip`.
    fn others(&self, kind: Kind, skip: &ObjectKey) -> Vec<(ObjectKey, Arc<Value>)> {
        let from = ObjectKey {
            kind,
            namespace: String::new(),
            name: String::new(),
        };
        let mut out: BTreeMap<ObjectKey, Option<Arc<Value>>> = self
            .base
            .range(from.clone()..)
            .take_while(|(k, _)| k.kind == kind)
            .map(|(k, v)| (k.clone(), Some(v.clone())))
            .collect();
        for (k, v) in self.changes.range(from..) {
            if k.kind != kind {
                break;
            }
            out.insert(k.clone(), v.clone());
        }
        out.into_iter()
            .filter(|(k, _)| k != skip)
            .filter_map(|(k, v)| Some((k, v?)))
            .collect()
    }

    /// Validate given nodePorts and allocate missing ones (keeping an existing Service's
    /// allocation across updates).
    fn assign_node_ports(
        &self,
        key: &ObjectKey,
        value: &mut Value,
        existing: Option<&Value>,
    ) -> Result<(), StoreError> {
        let range = self.node_ports;
        let mut used: BTreeMap<i32, ObjectKey> = BTreeMap::new();
        for (k, v) in self.other_services(key) {
            if let Ok(s) = serde_json::from_value::<Service>((*v).clone()) {
                for p in s.spec.ports {
                    if let Some(np) = p.node_port {
                        used.insert(np, k.clone());
                    }
                }
            }
        }
        let mut spec: ServiceSpec = serde_json::from_value(value["spec"].clone())
            .map_err(|e| StoreError::Invalid(format!("{key}: invalid spec: {e}")))?;
        let old_ports = existing
            .and_then(|e| serde_json::from_value::<Service>(e.clone()).ok())
            .map(|s| s.spec.ports)
            .unwrap_or_default();
        let mut mine: BTreeSet<i32> = BTreeSet::new();
        for p in &spec.ports {
            let Some(np) = p.node_port else { continue };
            if !range.contains(np) {
                return Err(StoreError::NodePort(format!(
                    "{key}: nodePort {np} of port {} is outside the node-port range {range}; \
                     pick one in range or omit it to have one allocated",
                    p.port
                )));
            }
            if let Some(owner) = used.get(&np) {
                return Err(StoreError::NodePort(format!(
                    "{key}: nodePort {np} of port {} is already allocated to {owner}; \
                     pick another or omit it to have one allocated",
                    p.port
                )));
            }
            if !mine.insert(np) {
                return Err(StoreError::NodePort(format!(
                    "{key}: nodePort {np} is given for more than one port"
                )));
            }
        }
        for p in spec.ports.iter_mut().filter(|p| p.node_port.is_none()) {
            // Keep the previous allocation of the same port (by name, else by number).
            let prev = old_ports
                .iter()
                .find(|o| {
                    if p.name.is_empty() {
                        o.name.is_empty() && o.port == p.port
                    } else {
                        o.name == p.name
                    }
                })
                .and_then(|o| o.node_port)
                .filter(|np| range.contains(*np) && !used.contains_key(np) && !mine.contains(np));
            let np = match prev {
                Some(np) => np,
                None => (i32::from(range.start)..=i32::from(range.end))
                    .find(|np| !used.contains_key(np) && !mine.contains(np))
                    .ok_or_else(|| StoreError::NodePortsExhausted {
                        range: range.to_string(),
                    })?,
            };
            mine.insert(np);
            p.node_port = Some(np);
        }
        value["spec"] = serde_json::to_value(&spec)
            .map_err(|e| StoreError::Invalid(format!("{key}: invalid spec: {e}")))?;
        Ok(())
    }
}

/// A Namespace's spec (its finalizers) belongs to the server: writes keep the stored one.
/// What deleting a Pod does (see `Txn::graceful_pod_delete`).
enum PodDelete {
    /// Gone from the store now.
    Remove,
    /// Already terminating with an earlier deadline: unchanged.
    Keep,
    /// Marked terminating: this is the pod to store.
    Mark(Value),
}

/// A pod's grace period when neither the delete nor its spec gives one (Kubernetes' 30 s).
pub const DEFAULT_POD_GRACE_SECONDS: i64 = 30;

fn keep_namespace_spec(kind: Kind, new: &mut Value, existing: &Value) {
    if kind == Kind::Namespace {
        if let Some(n) = new.as_object_mut() {
            match existing.get("spec") {
                Some(s) => n.insert("spec".into(), s.clone()),
                None => n.remove("spec"),
            };
        }
    }
}

/// Is this stored Namespace being deleted?
pub(crate) fn namespace_terminating(v: &Value) -> bool {
    v["metadata"]["deletionTimestamp"].is_string() || v["status"]["phase"] == "Terminating"
}

/// Replace `new`'s status with `existing`'s (absent if it had none).
fn keep_status(new: &mut Value, existing: &Value) {
    if let Some(n) = new.as_object_mut() {
        match existing.get("status") {
            Some(s) => {
                n.insert("status".into(), s.clone());
            }
            None => {
                n.remove("status");
            }
        }
    }
}
