//! Field ownership and server-side apply, after Kubernetes' structured-merge-diff
//! (`sigs.k8s.io/structured-merge-diff/v4`, driven by `k8s.io/apiserver/pkg/endpoints/handlers/fieldmanager`).
//!
//! Every object written through the REST API carries `metadata.managedFields`: per field
//! manager (`kubectl`, `kubectl-client-side-apply`, a `fieldManager` query parameter, ...) and
//! operation (`Apply` or `Update`), the set of fields it owns, in the `FieldsV1` encoding
//! (`{"f:spec":{"f:replicas":{}}}`, list items as `k:{"name":"web"}` or `v:"value"`, `.` for
//! an item or map that is itself owned besides its children).
//!
//! * An **update** (PUT, JSON/merge/strategic patch, scale) gives its manager every field it
//!   changed, added or removed, and takes those fields from every other manager — no
//!   conflicts.
//! * An **apply** merges the applied configuration into the live object (objects field by
//!   field; lists by the merge keys strategic merge patch uses: containers and env by `name`,
//!   container ports by `containerPort`, ...; other lists as a whole). Changing a field another
//!   manager owns is a conflict unless forced (then the applier takes it). Fields the manager
//!   applied last time but no longer does are removed from the object, unless another manager
//!   owns them too. The applier's `Apply` entry becomes exactly the applied field set.
//! * An object that has no managed fields yet (created through gRPC or before Berth tracked
//!   them) is owned by `before-first-apply` on its first apply, as in Kubernetes.
//!
//! Identity and bookkeeping (`apiVersion`, `kind`, `metadata.name/namespace/uid/
//! resourceVersion/generation/creationTimestamp/managedFields`) and `status` are not owned.

use std::collections::{BTreeMap, BTreeSet};

use berth_proto::patch::{FieldSchema, ListType};
use berth_proto::types::{ManagedFieldsEntry, Time};
use berth_proto::Kind;
use serde_json::{json, Map, Value};

/// A field path, element by element in FieldsV1 spelling (`f:spec`, `k:{"name":"web"}`).
pub type FieldPath = Vec<String>;
/// A set of field paths.
pub type FieldSet = BTreeSet<FieldPath>;

pub const APPLY: &str = "Apply";
pub const UPDATE: &str = "Update";
pub const BEFORE_FIRST_APPLY: &str = "before-first-apply";

const UNTRACKED_META: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "managedFields",
    "selfLink",
];

/// One manager's entry, with its field set decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manager {
    pub name: String,
    pub operation: String,
    pub api_version: String,
    pub time: Option<Time>,
    pub set: FieldSet,
}

/// A field another manager owns and the apply would change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub manager: String,
    pub api_version: String,
    /// `.spec.replicas`, `.spec.template.spec.containers[name="web"].image`.
    pub field: String,
}

/// `.spec.containers[name="web"].image` for a path.
pub fn path_string(p: &[String]) -> String {
    let mut s = String::new();
    for e in p {
        if let Some(f) = e.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if let Some(k) = e.strip_prefix("k:") {
            let inner = serde_json::from_str::<Map<String, Value>>(k)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_else(|_| k.to_string());
            s.push_str(&format!("[{inner}]"));
        } else if let Some(v) = e.strip_prefix("v:") {
            s.push_str(&format!("[={v}]"));
        } else {
            s.push_str(&format!("[{e}]"));
        }
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Objects as flat maps of owned paths.

/// Every owned path of an object: leaves with their value, list items and maps as `None`.
type Flat = BTreeMap<FieldPath, Option<Value>>;

/// `obj` without the fields nobody owns.
fn tracked(obj: &Value) -> Map<String, Value> {
    let mut m = obj.as_object().cloned().unwrap_or_default();
    for f in ["apiVersion", "kind", "status"] {
        m.remove(f);
    }
    if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
        for f in UNTRACKED_META {
            meta.remove(*f);
        }
        if meta.is_empty() {
            m.remove("metadata");
        }
    }
    m
}

fn flatten(kind: Kind, obj: &Value) -> Flat {
    let mut out = Flat::new();
    walk_map(
        &tracked(obj),
        FieldSchema::root(kind),
        &mut Vec::new(),
        &mut out,
    );
    out
}

/// The set of fields an object has.
pub fn fields_of(kind: Kind, obj: &Value) -> FieldSet {
    flatten(kind, obj).into_keys().collect()
}

fn walk_map(m: &Map<String, Value>, schema: FieldSchema, path: &mut FieldPath, out: &mut Flat) {
    for (k, v) in m {
        if v.is_null() {
            continue;
        }
        let (child, list) = schema.field(k);
        let is_map = schema.is_metadata() && matches!(k.as_str(), "labels" | "annotations");
        path.push(format!("f:{k}"));
        walk_value(v, child, list, is_map, path, out);
        path.pop();
    }
}

fn walk_value(
    v: &Value,
    schema: FieldSchema,
    list: ListType,
    is_map: bool,
    path: &mut FieldPath,
    out: &mut Flat,
) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            if is_map {
                out.insert(path.clone(), None);
            }
            walk_map(m, schema, path, out);
        }
        Value::Array(items) if !items.is_empty() && item_keys(items, list).is_some() => {
            for item in items {
                let Some(key) = element_key(item, list) else {
                    continue;
                };
                path.push(key);
                match (list, item) {
                    (ListType::Map(_), Value::Object(m)) => {
                        out.insert(path.clone(), None);
                        walk_map(m, schema, path, out);
                    }
                    _ => {
                        out.insert(path.clone(), Some(item.clone()));
                    }
                }
                path.pop();
            }
        }
        _ => {
            out.insert(path.clone(), Some(v.clone()));
        }
    }
}

/// The path element of a list item: `k:{"name":"web"}` or `v:"x"`.
fn element_key(item: &Value, list: ListType) -> Option<String> {
    match list {
        ListType::Atomic => None,
        ListType::Map(key) => {
            let k = item.as_object()?.get(key).filter(|k| !k.is_null())?;
            Some(format!("k:{}", json!({ key: k })))
        }
        ListType::Set if !matches!(item, Value::Array(_) | Value::Object(_) | Value::Null) => {
            Some(format!("v:{item}"))
        }
        ListType::Set => None,
    }
}

/// The items' keys, if every item has one and they are unique (else the list is owned as a
/// whole, as structured-merge-diff does with lists it cannot key).
fn item_keys(items: &[Value], list: ListType) -> Option<Vec<String>> {
    let keys: Vec<String> = items
        .iter()
        .map(|i| element_key(i, list))
        .collect::<Option<_>>()?;
    let unique: BTreeSet<&String> = keys.iter().collect();
    (unique.len() == keys.len()).then_some(keys)
}

/// The paths whose value differs between `old` and `new` (added, removed or changed).
pub fn changed(kind: Kind, old: Option<&Value>, new: &Value) -> FieldSet {
    let a = old.map(|o| flatten(kind, o)).unwrap_or_default();
    let b = flatten(kind, new);
    a.keys()
        .chain(b.keys())
        .filter(|p| !same(a.get(*p), b.get(*p)))
        .cloned()
        .collect()
}

fn same(a: Option<&Option<Value>>, b: Option<&Option<Value>>) -> bool {
    match (a, b) {
        (Some(Some(Value::Number(x))), Some(Some(Value::Number(y)))) => {
            x == y || x.as_f64() == y.as_f64()
        }
        _ => a == b,
    }
}

/// Remove the field at `path` from `obj` (nothing if it is not there).
fn remove_path(obj: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = obj;
    for e in parents {
        let next = match step(cur, e) {
            Some(n) => n,
            None => return,
        };
        cur = next;
    }
    if let Some(f) = last.strip_prefix("f:") {
        if let Some(m) = cur.as_object_mut() {
            m.remove(f);
        }
    } else if let Some(i) = position(cur, last) {
        if let Some(a) = cur.as_array_mut() {
            a.remove(i);
        }
    }
}

fn value_at<'a>(v: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    let mut cur = v;
    for e in path {
        cur = step(cur, e)?;
    }
    Some(cur)
}

fn is_empty_container(v: &Value) -> bool {
    match v {
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => m.is_empty(),
        _ => false,
    }
}

fn step<'a>(v: &'a mut Value, e: &str) -> Option<&'a mut Value> {
    if let Some(f) = e.strip_prefix("f:") {
        return v.as_object_mut()?.get_mut(f);
    }
    let i = position(v, e)?;
    v.as_array_mut()?.get_mut(i)
}

/// The index of the list item a `k:`/`v:` element names.
fn position(list: &Value, e: &str) -> Option<usize> {
    let items = list.as_array()?;
    if let Some(k) = e.strip_prefix("k:") {
        let want: Map<String, Value> = serde_json::from_str(k).ok()?;
        items.iter().position(|i| {
            want.iter().all(|(k, v)| {
                i.get(k)
                    .is_some_and(|x| same(Some(&Some(x.clone())), Some(&Some(v.clone()))))
            })
        })
    } else if let Some(v) = e.strip_prefix("v:") {
        let want: Value = serde_json::from_str(v).ok()?;
        items.iter().position(|i| *i == want)
    } else {
        None
    }
}

// ---------------------------------------------------------------------------------------------
// FieldsV1.

/// A field set in the FieldsV1 encoding.
pub fn encode(set: &FieldSet) -> Value {
    fn insert(node: &mut Map<String, Value>, path: &[String]) {
        match path.split_first() {
            None => {
                node.insert(".".into(), json!({}));
            }
            Some((first, rest)) => {
                let child = node.entry(first.clone()).or_insert_with(|| json!({}));
                if let Some(c) = child.as_object_mut() {
                    insert(c, rest);
                }
            }
        }
    }
    /// A "." alone means a leaf: `{}`.
    fn tidy(node: &mut Map<String, Value>) {
        for v in node.values_mut() {
            if let Some(c) = v.as_object_mut() {
                tidy(c);
                if c.len() == 1 && c.contains_key(".") {
                    c.clear();
                }
            }
        }
    }
    let mut root = Map::new();
    for p in set {
        insert(&mut root, p);
    }
    root.remove(".");
    tidy(&mut root);
    Value::Object(root)
}

/// A FieldsV1 field set, decoded.
pub fn decode(v: &Value) -> FieldSet {
    fn walk(v: &Value, path: &mut FieldPath, out: &mut FieldSet) {
        let Some(m) = v.as_object() else { return };
        if m.is_empty() {
            if !path.is_empty() {
                out.insert(path.clone());
            }
            return;
        }
        for (k, c) in m {
            if k == "." {
                if !path.is_empty() {
                    out.insert(path.clone());
                }
                continue;
            }
            path.push(k.clone());
            walk(c, path, out);
            path.pop();
        }
    }
    let mut out = FieldSet::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

/// The managers recorded on an object.
pub fn managers_of(obj: &Value) -> Vec<Manager> {
    let entries: Vec<ManagedFieldsEntry> = obj
        .pointer("/metadata/managedFields")
        .and_then(|m| serde_json::from_value(m.clone()).ok())
        .unwrap_or_default();
    entries
        .into_iter()
        .map(|e| Manager {
            set: e.fields_v1.as_ref().map(decode).unwrap_or_default(),
            name: e.manager,
            operation: e.operation,
            api_version: e.api_version,
            time: e.time,
        })
        .collect()
}

/// Record `managers` on `obj` (managers owning nothing are dropped).
pub fn set_managers(obj: &mut Value, managers: &[Manager]) {
    let entries: Vec<ManagedFieldsEntry> = managers
        .iter()
        .filter(|m| !m.set.is_empty())
        .map(|m| ManagedFieldsEntry {
            manager: m.name.clone(),
            operation: m.operation.clone(),
            api_version: m.api_version.clone(),
            time: m.time,
            fields_type: "FieldsV1".into(),
            fields_v1: Some(encode(&m.set)),
            subresource: String::new(),
        })
        .collect();
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    if entries.is_empty() {
        meta.remove("managedFields");
    } else if let Ok(v) = serde_json::to_value(entries) {
        meta.insert("managedFields".into(), v);
    }
}

fn strip_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), strip_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_nulls).collect()),
        other => other.clone(),
    }
}

/// The applied configuration merged into the live object.
fn merge(live: Option<&Value>, applied: &Value, schema: FieldSchema, list: ListType) -> Value {
    match (live, applied) {
        (Some(Value::Object(l)), Value::Object(a)) => {
            let mut out = l.clone();
            for (k, av) in a {
                if av.is_null() {
                    continue;
                }
                let (cs, cl) = schema.field(k);
                out.insert(k.clone(), merge(l.get(k), av, cs, cl));
            }
            Value::Object(out)
        }
        (Some(Value::Array(l)), Value::Array(a))
            if item_keys(l, list).is_some() && item_keys(a, list).is_some() =>
        {
            let mut out = l.clone();
            for item in a {
                let key = element_key(item, list);
                match out.iter().position(|x| element_key(x, list) == key) {
                    Some(i) => out[i] = merge(Some(&out[i]), item, schema, ListType::Atomic),
                    None => out.push(strip_nulls(item)),
                }
            }
            Value::Array(out)
        }
        _ => strip_nulls(applied),
    }
}

/// The annotation client-side `kubectl apply` keeps its last applied configuration in.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The fields of the object's last client-side applied configuration (empty without one).
fn last_applied_fields(kind: Kind, live: &Value) -> FieldSet {
    live.pointer("/metadata/annotations")
        .and_then(|a| a.get(LAST_APPLIED))
        .and_then(Value::as_str)
        .and_then(|s| serde_json::from_str::<Value>(s).ok())
        .map(|v| fields_of(kind, &v))
        .unwrap_or_default()
}

fn is_prefix(p: &[String], of: &[String]) -> bool {
    of.len() >= p.len() && of[..p.len()] == *p
}

/// Server-side apply of `applied` by `manager` to `live` (None: the object does not exist).
/// Returns the object to write, its `metadata.managedFields` updated, or the conflicts.
pub fn apply(
    kind: Kind,
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    now: Time,
) -> Result<Value, Vec<Conflict>> {
    let api_version = kind.api_version().to_string();
    let mut managers = live.map(managers_of).unwrap_or_default();
    if let Some(l) = live {
        if managers.is_empty() {
            managers.push(Manager {
                name: BEFORE_FIRST_APPLY.into(),
                operation: UPDATE.into(),
                api_version: api_version.clone(),
                time: Some(now),
                set: fields_of(kind, l),
            });
        }
    }
    let mut applied = strip_nulls(applied);
    if let Some(m) = applied.as_object_mut() {
        m.remove("status");
    }
    let applied_set = fields_of(kind, &applied);
    let base = live.cloned().unwrap_or_else(|| json!({}));
    let mut merged = merge(
        Some(&base),
        &applied,
        FieldSchema::root(kind),
        ListType::Atomic,
    );
    let changes = changed(kind, live, &merged);

    let is_self = |m: &Manager| m.name == manager && m.operation == APPLY;
    let mut conflicts = Vec::new();
    let mut conflicting = FieldSet::new();
    // Managers are told apart by name and operation: kubectl's updates (`kubectl scale`)
    // conflict with kubectl's applies, as in Kubernetes.
    for m in managers.iter().filter(|m| !is_self(m)) {
        for p in m.set.intersection(&changes) {
            conflicting.insert(p.clone());
            conflicts.push(Conflict {
                manager: m.name.clone(),
                api_version: m.api_version.clone(),
                field: path_string(p),
            });
        }
    }
    if !conflicts.is_empty() {
        // Moving from client-side apply: conflicts only on fields of the object's
        // last-applied-configuration are resolved in the applier's favour (Kubernetes'
        // lastAppliedManager), so `kubectl apply --server-side` takes over without --force.
        let from_last_applied = live
            .map(|l| last_applied_fields(kind, l))
            .is_some_and(|allowed| conflicting.is_subset(&allowed));
        if !force && !from_last_applied {
            return Err(conflicts);
        }
        for m in managers.iter_mut().filter(|m| !is_self(m)) {
            m.set.retain(|p| !changes.contains(p));
        }
    }
    // Fields this manager no longer applies and nobody else owns (there or below) go.
    let previous = managers
        .iter()
        .find(|m| is_self(m))
        .map(|m| m.set.clone())
        .unwrap_or_default();
    let others: FieldSet = managers
        .iter()
        .filter(|m| !is_self(m))
        .flat_map(|m| m.set.iter().cloned())
        .collect();
    let removed: Vec<FieldPath> = previous
        .difference(&applied_set)
        .filter(|p| !others.iter().any(|o| is_prefix(p, o)))
        .cloned()
        .collect();
    // Only the outermost: an item goes with its fields (its key among them).
    for p in removed
        .iter()
        .filter(|p| !removed.iter().any(|r| r.len() < p.len() && is_prefix(r, p)))
    {
        remove_path(&mut merged, p);
        // Lists and objects emptied by the removal go too (Kubernetes omits them).
        for depth in (1..p.len()).rev() {
            let parent = &p[..depth];
            if value_at(&mut merged, parent).is_some_and(|v| is_empty_container(v)) {
                remove_path(&mut merged, parent);
            } else {
                break;
            }
        }
    }
    for m in managers.iter_mut() {
        m.set.retain(|p| !removed.iter().any(|r| is_prefix(r, p)));
    }
    match managers.iter_mut().find(|m| is_self(m)) {
        Some(m) => {
            if m.set != applied_set || m.api_version != api_version {
                m.time = Some(now);
            }
            m.set = applied_set;
            m.api_version = api_version;
        }
        None => managers.push(Manager {
            name: manager.to_string(),
            operation: APPLY.into(),
            api_version,
            time: Some(now),
            set: applied_set,
        }),
    }
    if !merged.get("metadata").is_some_and(Value::is_object) {
        merged["metadata"] = json!({});
    }
    set_managers(&mut merged, &managers);
    Ok(merged)
}

/// Record a non-apply write by `manager`: `new` is the object about to be stored, `old` what
/// was stored (None for a create). The managed fields `new` carries are the starting point
/// (a PUT may send them; patches keep the stored ones); without any, `old`'s.
pub fn record_update(kind: Kind, old: Option<&Value>, new: &mut Value, manager: &str, now: Time) {
    let mut managers = managers_of(new);
    if managers.is_empty() {
        managers = old.map(managers_of).unwrap_or_default();
    }
    let changes = changed(kind, old, new);
    if !changes.is_empty() {
        let present = fields_of(kind, new);
        let is_self = |m: &Manager| m.name == manager && m.operation == UPDATE;
        for m in managers.iter_mut().filter(|m| !is_self(m)) {
            m.set.retain(|p| !changes.contains(p));
        }
        let owned: FieldSet = changes.intersection(&present).cloned().collect();
        let api_version = kind.api_version().to_string();
        match managers.iter_mut().find(|m| is_self(m)) {
            Some(m) => {
                m.set.retain(|p| present.contains(p));
                m.set.extend(owned);
                m.time = Some(now);
                m.api_version = api_version;
            }
            None => managers.push(Manager {
                name: manager.to_string(),
                operation: UPDATE.into(),
                api_version,
                time: Some(now),
                set: owned,
            }),
        }
    }
    if !new.get("metadata").is_some_and(Value::is_object) {
        new["metadata"] = json!({});
    }
    set_managers(new, &managers);
}

/// Now, to the second (as Kubernetes records managed-field times).
pub fn now() -> Time {
    let n = chrono::Utc::now();
    chrono::DateTime::from_timestamp(n.timestamp(), 0).unwrap_or(n)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn t() -> Time {
        chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap()
    }

    fn deploy(replicas: i64, containers: Value) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": containers}}}
        })
    }

    fn live(v: &Value, rv: u64) -> Value {
        let mut v = v.clone();
        v["metadata"]["uid"] = "u1".into();
        v["metadata"]["resourceVersion"] = rv.to_string().into();
        v
    }

    fn owners(obj: &Value) -> Vec<(String, String)> {
        managers_of(obj)
            .into_iter()
            .map(|m| (m.name, m.operation))
            .collect()
    }

    fn owns(obj: &Value, manager: &str, field: &str) -> bool {
        managers_of(obj)
            .iter()
            .filter(|m| m.name == manager)
            .any(|m| m.set.iter().any(|p| path_string(p) == field))
    }

    #[test]
    fn fields_v1_encoding_marks_items_and_label_maps_and_round_trips() {
        let d = deploy(2, json!([{"name": "web", "image": "nginx"}]));
        let set = fields_of(Kind::Deployment, &d);
        let enc = encode(&set);
        assert_eq!(
            enc,
            json!({
                "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                "f:spec": {
                    "f:replicas": {},
                    "f:selector": {"f:matchLabels": {"f:app": {}}},
                    "f:template": {
                        "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                        "f:spec": {"f:containers": {"k:{\"name\":\"web\"}": {
                            ".": {}, "f:image": {}, "f:name": {}
                        }}}
                    }
                }
            })
        );
        assert_eq!(decode(&enc), set);
        // Identity, bookkeeping and status are nobody's.
        let mut l = live(&d, 7);
        l["status"] = json!({"replicas": 2});
        assert_eq!(fields_of(Kind::Deployment, &l), set);
    }

    #[test]
    fn first_apply_creates_with_an_apply_entry_for_the_manager() {
        let d = deploy(2, json!([{"name": "web", "image": "nginx"}]));
        let out = apply(Kind::Deployment, None, &d, "kubectl", false, t()).unwrap();
        assert_eq!(out["spec"], d["spec"]);
        assert_eq!(
            owners(&out),
            vec![("kubectl".to_string(), APPLY.to_string())]
        );
        let e = &out["metadata"]["managedFields"][0];
        assert_eq!(e["apiVersion"], "apps/v1");
        assert_eq!(e["fieldsType"], "FieldsV1");
        assert!(e["time"].as_str().unwrap().starts_with("2023-11-14T"));
        assert!(owns(&out, "kubectl", ".spec.replicas"));
        assert!(owns(
            &out,
            "kubectl",
            ".spec.template.spec.containers[name=\"web\"].image"
        ));
    }

    #[test]
    fn fields_dropped_from_the_applied_config_are_removed_unless_another_manager_owns_them() {
        let first = deploy(
            2,
            json!([{"name": "web", "image": "nginx", "env": [{"name": "A", "value": "1"}]},
                   {"name": "sidecar", "image": "envoy"}]),
        );
        let mut first = first;
        first["metadata"]["annotations"] = json!({"team": "a"});
        let l = live(
            &apply(Kind::Deployment, None, &first, "kubectl", false, t()).unwrap(),
            2,
        );
        // Another manager adds a label through an update; it also sets the same annotation.
        let mut edited = l.clone();
        edited["metadata"]["labels"]["tier"] = "front".into();
        record_update(Kind::Deployment, Some(&l), &mut edited, "kubectl-edit", t());
        assert!(owns(&edited, "kubectl-edit", ".metadata.labels.tier"));
        // The second apply drops the sidecar, the env var and the annotation.
        let second = deploy(2, json!([{"name": "web", "image": "nginx"}]));
        let out = apply(
            Kind::Deployment,
            Some(&live(&edited, 3)),
            &second,
            "kubectl",
            false,
            t(),
        )
        .unwrap();
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"],
            json!([{"name": "web", "image": "nginx"}])
        );
        assert!(out["metadata"].get("annotations").is_none());
        // The other manager's label stays.
        assert_eq!(out["metadata"]["labels"]["tier"], "front");
        assert!(!owns(
            &out,
            "kubectl",
            ".spec.template.spec.containers[name=\"sidecar\"]"
        ));
    }

    #[test]
    fn changing_a_field_another_manager_owns_conflicts_unless_forced() {
        let d = deploy(2, json!([{"name": "web", "image": "nginx"}]));
        let l = live(
            &apply(Kind::Deployment, None, &d, "kubectl", false, t()).unwrap(),
            2,
        );
        // kubectl scale: an update of spec.replicas takes the field from the applier.
        let mut scaled = l.clone();
        scaled["spec"]["replicas"] = 5.into();
        record_update(
            Kind::Deployment,
            Some(&l),
            &mut scaled,
            "kubectl-scale",
            t(),
        );
        assert!(owns(&scaled, "kubectl-scale", ".spec.replicas"));
        assert!(!owns(&scaled, "kubectl", ".spec.replicas"));
        let scaled = live(&scaled, 3);

        // Re-applying replicas 2 conflicts with kubectl-scale.
        let err = apply(Kind::Deployment, Some(&scaled), &d, "kubectl", false, t()).unwrap_err();
        assert_eq!(
            err,
            vec![Conflict {
                manager: "kubectl-scale".into(),
                api_version: "apps/v1".into(),
                field: ".spec.replicas".into()
            }]
        );
        // The same name with another operation is another manager (kubectl scale's updates
        // are "kubectl"'s too).
        let mut by_kubectl = l.clone();
        by_kubectl["spec"]["replicas"] = 6.into();
        record_update(Kind::Deployment, Some(&l), &mut by_kubectl, "kubectl", t());
        let err = apply(
            Kind::Deployment,
            Some(&live(&by_kubectl, 3)),
            &d,
            "kubectl",
            false,
            t(),
        )
        .unwrap_err();
        assert_eq!(err[0].manager, "kubectl");
        // Applying the value it has now is no conflict: both own it.
        let same = deploy(5, json!([{"name": "web", "image": "nginx"}]));
        let out = apply(
            Kind::Deployment,
            Some(&scaled),
            &same,
            "kubectl",
            false,
            t(),
        )
        .unwrap();
        assert!(owns(&out, "kubectl", ".spec.replicas"));
        assert!(owns(&out, "kubectl-scale", ".spec.replicas"));
        // Forced: the applier takes it.
        let out = apply(Kind::Deployment, Some(&scaled), &d, "kubectl", true, t()).unwrap();
        assert_eq!(out["spec"]["replicas"], 2);
        assert!(owns(&out, "kubectl", ".spec.replicas"));
        assert!(!owns(&out, "kubectl-scale", ".spec.replicas"));
        // A second applier changing a container image conflicts on that one field.
        let other = deploy(2, json!([{"name": "web", "image": "nginx:2"}]));
        let err = apply(Kind::Deployment, Some(&l), &other, "ci", false, t()).unwrap_err();
        assert_eq!(err.len(), 1);
        assert_eq!(
            err[0].field,
            ".spec.template.spec.containers[name=\"web\"].image"
        );
        assert_eq!(err[0].manager, "kubectl");
    }

    #[test]
    fn appliers_merge_list_items_by_key_and_keep_each_others_items() {
        let a = deploy(1, json!([{"name": "web", "image": "nginx"}]));
        let l = live(
            &apply(Kind::Deployment, None, &a, "team-a", false, t()).unwrap(),
            2,
        );
        // Team b applies only its sidecar (a partial config is how apply is meant to be used).
        let b = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {"template": {"spec": {"containers": [{"name": "log", "image": "fluent"}]}}}});
        let out = apply(Kind::Deployment, Some(&l), &b, "team-b", false, t()).unwrap();
        let names: Vec<&str> = out["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["web", "log"]);
        // Team b withdrawing its config removes only its container.
        let l = live(&out, 3);
        let b2 =
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}});
        let out = apply(Kind::Deployment, Some(&l), &b2, "team-b", false, t()).unwrap();
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"],
            json!([{"name": "web", "image": "nginx"}])
        );
        assert_eq!(
            owners(&out),
            vec![("team-a".to_string(), APPLY.to_string())]
        );
    }

    #[test]
    fn an_object_without_managed_fields_belongs_to_before_first_apply() {
        let d = live(&deploy(2, json!([{"name": "web", "image": "nginx"}])), 4);
        let mut changed = deploy(3, json!([{"name": "web", "image": "nginx"}]));
        let err = apply(Kind::Deployment, Some(&d), &changed, "kubectl", false, t()).unwrap_err();
        assert_eq!(err[0].manager, BEFORE_FIRST_APPLY);
        assert_eq!(err[0].field, ".spec.replicas");
        // Applying what is there takes shared ownership without a conflict.
        changed["spec"]["replicas"] = 2.into();
        let out = apply(Kind::Deployment, Some(&d), &changed, "kubectl", false, t()).unwrap();
        assert_eq!(
            owners(&out),
            vec![
                (BEFORE_FIRST_APPLY.to_string(), UPDATE.to_string()),
                ("kubectl".to_string(), APPLY.to_string())
            ]
        );
    }

    #[test]
    fn conflicts_on_fields_of_the_last_client_side_apply_go_to_the_server_side_applier() {
        let d = deploy(2, json!([{"name": "web", "image": "nginx"}]));
        let mut csa = d.clone();
        csa["metadata"]["annotations"] = json!({LAST_APPLIED: d.to_string()});
        record_update(
            Kind::Deployment,
            None,
            &mut csa,
            "kubectl-client-side-apply",
            t(),
        );
        let l = live(&csa, 2);
        let edited = deploy(2, json!([{"name": "web", "image": "nginx:2"}]));
        let out = apply(Kind::Deployment, Some(&l), &edited, "kubectl", false, t()).unwrap();
        assert!(owns(
            &out,
            "kubectl",
            ".spec.template.spec.containers[name=\"web\"].image"
        ));
        assert!(!owns(
            &out,
            "kubectl-client-side-apply",
            ".spec.template.spec.containers[name=\"web\"].image"
        ));
        // A field outside the last applied configuration still conflicts.
        let mut edit = l.clone();
        edit["spec"]["paused"] = true.into();
        record_update(Kind::Deployment, Some(&l), &mut edit, "kubectl-edit", t());
        let mut unpause = edited.clone();
        unpause["spec"]["paused"] = false.into();
        let err = apply(
            Kind::Deployment,
            Some(&live(&edit, 3)),
            &unpause,
            "kubectl",
            false,
            t(),
        )
        .unwrap_err();
        assert!(err.iter().any(|c| c.field == ".spec.paused"), "{err:?}");
    }

    #[test]
    fn updates_own_what_they_change_and_unchanged_writes_record_nothing() {
        let d = deploy(2, json!([{"name": "web", "image": "nginx"}]));
        let mut created = d.clone();
        record_update(Kind::Deployment, None, &mut created, "kubectl-create", t());
        assert_eq!(
            owners(&created),
            vec![("kubectl-create".to_string(), UPDATE.to_string())]
        );
        let l = live(&created, 2);
        let mut same = l.clone();
        record_update(Kind::Deployment, Some(&l), &mut same, "other", t());
        assert_eq!(owners(&same), owners(&l));
        // Removing a field takes it from its owner without giving it to anyone.
        let mut removed = l.clone();
        removed["metadata"]["labels"] = json!({});
        record_update(Kind::Deployment, Some(&l), &mut removed, "other", t());
        assert!(!owns(&removed, "kubectl-create", ".metadata.labels.app"));
        assert!(!owns(&removed, "other", ".metadata.labels.app"));
        assert!(owns(&removed, "kubectl-create", ".spec.replicas"));
    }

    #[test]
    fn paths_read_like_kubernetes_field_paths() {
        let p: FieldPath = vec![
            "f:spec".into(),
            "f:ports".into(),
            "k:{\"port\":80}".into(),
            "f:targetPort".into(),
        ];
        assert_eq!(path_string(&p), ".spec.ports[port=80].targetPort");
        assert_eq!(
            path_string(&["f:metadata".into(), "f:finalizers".into(), "v:\"x\"".into()]),
            ".metadata.finalizers[=\"x\"]"
        );
    }
}
