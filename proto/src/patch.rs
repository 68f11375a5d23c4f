//! Kubernetes strategic merge patch (`application/strategic-merge-patch+json`) for Berth's
//! built-in kinds, on `serde_json::Value`.
//!
//! This is what `kubectl apply` (client-side), `kubectl patch`, `kubectl scale`,
//! `kubectl rollout restart` and `kubectl edit` send. It follows apimachinery's
//! `k8s.io/apimachinery/pkg/util/strategicpatch` (`StrategicMergeMapPatch`, the server side):
//!
//! * Objects merge recursively; `null` deletes a key.
//! * Lists with a merge key (containers by `name`, container ports by `containerPort`, ...)
//!   merge element by element; elements the original lacks are added; an element
//!   `{"$patch": "delete", <key>: <value>}` deletes; an element `{"$patch": "replace"}` makes
//!   the patch's list replace the original's. Lists without a merge key are replaced.
//! * Lists of strings with the merge strategy (`metadata.finalizers`) merge as sets;
//!   `$deleteFromPrimitiveList/<field>` removes values.
//! * `$patch: replace` / `$patch: delete` on an object; `$retainKeys` (keep only the listed
//!   keys, e.g. on a Deployment's `spec.strategy` or a pod volume); `$setElementOrder/<field>`
//!   (the order of a merged list).
//! * Directive keys never remain in the result.
//!
//! Element order in merged lists follows apimachinery: `$setElementOrder` first, then the
//! order of the patch's list, then the original's; elements the original did not have and that
//! no `$setElementOrder` places come before the remaining original elements (so
//! `kubectl patch` adding a container puts it first, as in the Kubernetes docs).
//!
//! Where apimachinery keeps a patch value verbatim (a field the original lacks, a replaced
//! list), this implementation still applies the directives inside it and drops `null`s, so no
//! directive can reach the stored object.

use serde_json::{Map, Value};

use crate::object::Kind;

/// Why a strategic merge patch could not be applied. Every message names the JSON field path
/// (e.g. `spec.template.spec.containers[name=web]`) and what to send instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    #[error("{what} must be a JSON object, not {found}; a strategic merge patch names the fields to change, e.g. {{\"spec\":{{\"replicas\":3}}}}")]
    NotAnObject {
        what: &'static str,
        found: &'static str,
    },
    #[error("list element at {path} has no `{key}`: this list is merged by `{key}`, so every element of the patch must carry it (e.g. {{\"{key}\": ...}}); to replace the whole list instead, add a {{\"$patch\": \"replace\"}} element")]
    MissingMergeKey { path: String, key: &'static str },
    #[error("list element at {path} is {found}, but this list is merged by `{key}`: its elements must be objects such as {{\"{key}\": ...}}")]
    ElementNotAnObject {
        path: String,
        key: &'static str,
        found: &'static str,
    },
    #[error("list element at {path} is {found}, but this list is a set of strings merged by value: send strings (remove entries with `$deleteFromPrimitiveList/<field>`)")]
    ElementNotAScalar { path: String, found: &'static str },
    #[error("unknown `$patch` value {value} at {path}: use \"replace\" (replace this object or list as a whole) or \"delete\" (remove it); merging is the default, so to merge leave `$patch` out")]
    BadPatchDirective { path: String, value: String },
    #[error("`$patch: delete` at {path} only works in lists merged by key (containers, env, ports, volumes, ...); this list is replaced as a whole, so send the complete list you want")]
    DeleteInAtomicList { path: String },
    #[error("`$retainKeys` at {path} {reason}; it must be a list of the field names to keep, e.g. [\"type\"]")]
    BadRetainKeys { path: String, reason: String },
    #[error("the patch sets `{key}` at {path}, but the `$retainKeys` list there does not keep it: add \"{key}\" to `$retainKeys` or drop `{key}` from the patch")]
    NotRetained { path: String, key: String },
    #[error("`{directive}` at {path} {reason}")]
    BadDirective {
        path: String,
        directive: String,
        reason: String,
    },
    #[error("the elements of `{field}` at {path} are not all in `$setElementOrder/{field}`, or not in its order: list every element the patch sends, in the same order (kubectl apply builds this list for you)")]
    SetElementOrderMismatch { path: String, field: String },
    #[error("unknown patch directive `{key}` at {path}: strategic merge patch understands `$patch`, `$retainKeys`, `$setElementOrder/<field>` and `$deleteFromPrimitiveList/<field>`")]
    UnknownDirective { path: String, key: String },
}

type Result<T> = std::result::Result<T, PatchError>;

const PATCH: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ELEMENT_ORDER: &str = "$setElementOrder";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList";

/// Apply a strategic merge `patch` to `original` (an object of `kind`, as JSON) and return the
/// patched object. `original` may be `null` (patching nothing: the patch's own content, with
/// its directives applied).
pub fn strategic_merge(kind: Kind, original: &Value, patch: &Value) -> Result<Value> {
    let Value::Object(patch) = patch else {
        return Err(PatchError::NotAnObject {
            what: "the patch",
            found: type_name(patch),
        });
    };
    let original = match original {
        Value::Object(o) => o.clone(),
        Value::Null => Map::new(),
        other => {
            return Err(PatchError::NotAnObject {
                what: "the object being patched",
                found: type_name(other),
            })
        }
    };
    Ok(Value::Object(merge_map(
        original,
        patch,
        Ctx::Root(kind),
        &Path::root(),
    )?))
}

// ---------------------------------------------------------------------------------------------
// Patch metadata: which lists merge, and by which key (the Kubernetes API types' patchStrategy
// and patchMergeKey tags), keyed by where in the object the field is.

/// The type of the object a field belongs to, as far as patch metadata cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctx {
    Root(Kind),
    Meta,
    WorkloadSpec,
    PodTemplate,
    PodSpec,
    Container,
    ServiceSpec,
    NodeSpec,
    Status(Kind),
    /// Anything else: objects merge, lists are replaced.
    Other,
}

/// How a list field is patched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListStrategy {
    /// Replaced by the patch's list (the default).
    Replace,
    /// A list of objects merged by this key.
    MergeByKey(&'static str),
    /// A list of scalars merged as a set.
    MergeSet,
}

/// The context of `key`'s value (for a list: of its elements) and, for a list, its strategy.
fn field(ctx: Ctx, key: &str) -> (Ctx, ListStrategy) {
    use ListStrategy::*;
    match (ctx, key) {
        (Ctx::Root(_), "metadata") => (Ctx::Meta, Replace),
        (Ctx::Root(Kind::Deployment | Kind::ReplicaSet), "spec") => (Ctx::WorkloadSpec, Replace),
        (Ctx::Root(Kind::Pod), "spec") => (Ctx::PodSpec, Replace),
        (Ctx::Root(Kind::Service), "spec") => (Ctx::ServiceSpec, Replace),
        (Ctx::Root(Kind::Node), "spec") => (Ctx::NodeSpec, Replace),
        (Ctx::Root(kind), "status") => (Ctx::Status(kind), Replace),

        (Ctx::Meta, "ownerReferences") => (Ctx::Other, MergeByKey("uid")),
        (Ctx::Meta, "finalizers") => (Ctx::Other, MergeSet),

        (Ctx::WorkloadSpec, "template") => (Ctx::PodTemplate, Replace),
        (Ctx::PodTemplate, "metadata") => (Ctx::Meta, Replace),
        (Ctx::PodTemplate, "spec") => (Ctx::PodSpec, Replace),

        (Ctx::PodSpec, "containers" | "initContainers" | "ephemeralContainers") => {
            (Ctx::Container, MergeByKey("name"))
        }
        (Ctx::PodSpec, "volumes" | "imagePullSecrets" | "schedulingGates" | "resourceClaims") => {
            (Ctx::Other, MergeByKey("name"))
        }
        (Ctx::PodSpec, "hostAliases") => (Ctx::Other, MergeByKey("ip")),
        (Ctx::PodSpec, "topologySpreadConstraints") => (Ctx::Other, MergeByKey("topologyKey")),

        (Ctx::Container, "ports") => (Ctx::Other, MergeByKey("containerPort")),
        (Ctx::Container, "env") => (Ctx::Other, MergeByKey("name")),
        (Ctx::Container, "volumeMounts") => (Ctx::Other, MergeByKey("mountPath")),
        (Ctx::Container, "volumeDevices") => (Ctx::Other, MergeByKey("devicePath")),

        (Ctx::ServiceSpec, "ports") => (Ctx::Other, MergeByKey("port")),
        (Ctx::NodeSpec, "podCIDRs") => (Ctx::Other, MergeSet),

        (Ctx::Status(_), "conditions") => (Ctx::Other, MergeByKey("type")),
        (Ctx::Status(Kind::Node), "addresses") => (Ctx::Other, MergeByKey("type")),
        (Ctx::Status(Kind::Pod), "podIPs" | "hostIPs") => (Ctx::Other, MergeByKey("ip")),

        _ => (Ctx::Other, Replace),
    }
}

/// How a list field merges, for callers outside this module (server-side apply's field sets
/// use the same list identities as strategic merge patch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListType {
    /// Replaced as a whole.
    Atomic,
    /// Objects identified by this key field.
    Map(&'static str),
    /// Scalars identified by value.
    Set,
}

/// Where a field sits in an object of a kind, as far as list merging cares: walk it with
/// [`FieldSchema::field`] from [`FieldSchema::root`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldSchema(Ctx);

impl FieldSchema {
    pub fn root(kind: Kind) -> FieldSchema {
        FieldSchema(Ctx::Root(kind))
    }

    /// The schema of `key`'s value (for a list: of its elements) and how the value merges if
    /// it is a list.
    pub fn field(self, key: &str) -> (FieldSchema, ListType) {
        let (ctx, strategy) = field(self.0, key);
        let list = match strategy {
            ListStrategy::Replace => ListType::Atomic,
            ListStrategy::MergeByKey(k) => ListType::Map(k),
            ListStrategy::MergeSet => ListType::Set,
        };
        (FieldSchema(ctx), list)
    }

    /// Whether this is object metadata (labels and annotations are maps, not structs).
    pub fn is_metadata(self) -> bool {
        self.0 == Ctx::Meta
    }
}

// ---------------------------------------------------------------------------------------------
// Field paths for error messages.

#[derive(Debug, Clone)]
struct Path(String);

impl Path {
    fn root() -> Path {
        Path(String::new())
    }

    fn field(&self, key: &str) -> Path {
        let plain = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
        Path(match (self.0.is_empty(), plain) {
            (true, true) => key.to_string(),
            (false, true) => format!("{}.{key}", self.0),
            (_, false) => format!("{}[{key:?}]", self.0),
        })
    }

    fn index(&self, i: usize) -> Path {
        Path(format!("{}[{i}]", self.0))
    }

    fn keyed(&self, key: &str, value: &Value) -> Path {
        match value {
            Value::String(s) => Path(format!("{}[{key}={s}]", self.0)),
            other => Path(format!("{}[{key}={other}]", self.0)),
        }
    }

    fn show(&self) -> String {
        if self.0.is_empty() {
            "the top level".to_string()
        } else {
            format!("`{}`", self.0)
        }
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Equality of merge-key values and set elements: JSON numbers by value (80 == 80.0, as Go's
/// float64 decoding has it), everything else structurally.
fn value_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn is_scalar(v: &Value) -> bool {
    !matches!(v, Value::Array(_) | Value::Object(_))
}

// ---------------------------------------------------------------------------------------------
// Merging objects.

/// The `$patch` directive of an object, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Directive {
    Replace,
    Delete,
}

fn directive(patch: &Map<String, Value>, path: &Path) -> Result<Option<Directive>> {
    match patch.get(PATCH) {
        None => Ok(None),
        Some(Value::String(s)) if s == "replace" => Ok(Some(Directive::Replace)),
        Some(Value::String(s)) if s == "delete" => Ok(Some(Directive::Delete)),
        Some(other) => Err(PatchError::BadPatchDirective {
            path: path.show(),
            value: other.to_string(),
        }),
    }
}

/// The field a `$setElementOrder/<field>` or `$deleteFromPrimitiveList/<field>` key names.
fn directive_field<'k>(key: &'k str, prefix: &str, path: &Path) -> Result<&'k str> {
    match key
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('/'))
    {
        Some(field) if !field.is_empty() => Ok(field),
        _ => Err(PatchError::BadDirective {
            path: path.show(),
            directive: key.to_string(),
            reason: format!("must name the list it applies to, e.g. `{prefix}/containers`"),
        }),
    }
}

fn merge_map(
    mut original: Map<String, Value>,
    patch: &Map<String, Value>,
    ctx: Ctx,
    path: &Path,
) -> Result<Map<String, Value>> {
    match directive(patch, path)? {
        Some(Directive::Delete) => return Ok(Map::new()),
        Some(Directive::Replace) => {
            let mut rest = patch.clone();
            rest.remove(PATCH);
            return merge_map(Map::new(), &rest, ctx, path);
        }
        None => {}
    }

    apply_retain_keys(&mut original, patch, path)?;

    // Sort the keys: directives ($setElementOrder/..., $deleteFromPrimitiveList/...) and
    // plain fields.
    let mut orders = Vec::new();
    let mut deletions = Vec::new();
    for (key, value) in patch {
        if !key.starts_with('$') || key == RETAIN_KEYS {
            continue;
        }
        if key.starts_with(SET_ELEMENT_ORDER) {
            orders.push((directive_field(key, SET_ELEMENT_ORDER, path)?, key, value));
        } else if key.starts_with(DELETE_FROM_PRIMITIVE_LIST) {
            let field = directive_field(key, DELETE_FROM_PRIMITIVE_LIST, path)?;
            deletions.push((field, key, value));
        } else {
            return Err(PatchError::UnknownDirective {
                path: path.show(),
                key: key.clone(),
            });
        }
    }

    // $setElementOrder: merge the list it names now, then order it.
    let mut done: Vec<&str> = Vec::new();
    for (name, key, order) in orders {
        let Value::Array(order) = order else {
            return Err(PatchError::BadDirective {
                path: path.show(),
                directive: key.clone(),
                reason: format!("must be a list, not {}", type_name(order)),
            });
        };
        let (elem_ctx, strategy) = field(ctx, name);
        if strategy == ListStrategy::Replace {
            // Only merged lists have an order to set; a replaced list takes the patch's order.
            continue;
        }
        let list_path = path.field(name);
        let patch_list = match patch.get(name) {
            None => None,
            Some(Value::Array(p)) => Some(p),
            // null or a change of type: the plain merge below deletes or replaces the field.
            Some(_) => continue,
        };
        let original_list = match original.get(name) {
            Some(Value::Array(o)) => Some(o.clone()),
            _ => None,
        };
        check_order_list(order, strategy, &list_path, key)?;
        if let Some(p) = patch_list {
            check_patch_follows_order(p, order, strategy, &list_path, path, name)?;
        }
        let merged = match (&original_list, patch_list) {
            (None, None) => continue,
            (Some(o), None) => o.clone(),
            (None, Some(p)) => merge_list(Vec::new(), p, elem_ctx, strategy, &list_path)?,
            (Some(o), Some(p)) => merge_list(o.clone(), p, elem_ctx, strategy, &list_path)?,
        };
        let key_name = merge_key(strategy);
        let (in_order, server_only): (Vec<Value>, Vec<Value>) = merged
            .into_iter()
            .partition(|v| index_of(order, v, key_name).is_some());
        let server_order = original_list.unwrap_or_default();
        let ordered = normalize_order(in_order, server_only, order, &server_order, key_name);
        original.insert(name.to_string(), Value::Array(ordered));
        done.push(name);
    }

    // $deleteFromPrimitiveList: remove values from a list of scalars.
    for (name, key, values) in deletions {
        let Value::Array(values) = values else {
            return Err(PatchError::BadDirective {
                path: path.show(),
                directive: key.clone(),
                reason: format!(
                    "must be a list of the values to remove, not {}",
                    type_name(values)
                ),
            });
        };
        if let Some(bad) = values.iter().find(|v| !is_scalar(v)) {
            return Err(PatchError::BadDirective {
                path: path.show(),
                directive: key.clone(),
                reason: format!(
                    "lists values to remove from a list of strings, but one is {}",
                    type_name(bad)
                ),
            });
        }
        if let Some(Value::Array(list)) = original.get_mut(name) {
            list.retain(|v| !values.iter().any(|d| value_eq(v, d)));
        }
    }

    // The fields.
    for (key, value) in patch {
        if key.starts_with('$') || done.contains(&key.as_str()) {
            continue;
        }
        if value.is_null() {
            original.remove(key);
            continue;
        }
        let (child_ctx, strategy) = field(ctx, key);
        let child_path = path.field(key);
        let merged = match (original.remove(key), value) {
            (Some(Value::Object(o)), Value::Object(p)) => {
                Value::Object(merge_map(o, p, child_ctx, &child_path)?)
            }
            (_, Value::Object(p)) => {
                // Nothing to merge into: the patch's object, its directives applied.
                if directive(p, &child_path)? == Some(Directive::Delete) {
                    continue;
                }
                Value::Object(merge_map(Map::new(), p, child_ctx, &child_path)?)
            }
            (Some(Value::Array(o)), Value::Array(p)) => {
                Value::Array(merge_list(o, p, child_ctx, strategy, &child_path)?)
            }
            (_, Value::Array(p)) => {
                Value::Array(merge_list(Vec::new(), p, child_ctx, strategy, &child_path)?)
            }
            (_, scalar) => scalar.clone(),
        };
        original.insert(key.clone(), merged);
    }
    Ok(original)
}

/// `$retainKeys`: drop the original's keys that are not listed; the patch may only set listed
/// keys.
fn apply_retain_keys(
    original: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    path: &Path,
) -> Result<()> {
    let Some(retain) = patch.get(RETAIN_KEYS) else {
        return Ok(());
    };
    let Value::Array(items) = retain else {
        return Err(PatchError::BadRetainKeys {
            path: path.show(),
            reason: format!("is {}", type_name(retain)),
        });
    };
    let mut keep = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Value::String(s) => keep.push(s.as_str()),
            other => {
                return Err(PatchError::BadRetainKeys {
                    path: path.show(),
                    reason: format!("contains {} ({other})", type_name(other)),
                })
            }
        }
    }
    for (key, value) in patch {
        if value.is_null() || key.starts_with('$') {
            continue;
        }
        if !keep.contains(&key.as_str()) {
            return Err(PatchError::NotRetained {
                path: path.show(),
                key: key.clone(),
            });
        }
    }
    original.retain(|k, _| keep.contains(&k.as_str()));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Merging lists.

fn merge_key(strategy: ListStrategy) -> Option<&'static str> {
    match strategy {
        ListStrategy::MergeByKey(k) => Some(k),
        _ => None,
    }
}

fn merge_list(
    original: Vec<Value>,
    patch: &[Value],
    ctx: Ctx,
    strategy: ListStrategy,
    path: &Path,
) -> Result<Vec<Value>> {
    match strategy {
        ListStrategy::Replace => replace_list(patch, ctx, path),
        ListStrategy::MergeSet => merge_set(original, patch, path),
        ListStrategy::MergeByKey(key) => merge_by_key(original, patch, key, ctx, path),
    }
}

/// A list without a merge key: the patch's list, its elements' directives applied.
fn replace_list(patch: &[Value], ctx: Ctx, path: &Path) -> Result<Vec<Value>> {
    let mut out = Vec::with_capacity(patch.len());
    for (i, elem) in patch.iter().enumerate() {
        match elem {
            Value::Object(m) => {
                let elem_path = path.index(i);
                match directive(m, &elem_path)? {
                    // The list is replaced anyway.
                    Some(Directive::Replace) => {}
                    Some(Directive::Delete) => {
                        return Err(PatchError::DeleteInAtomicList {
                            path: elem_path.show(),
                        })
                    }
                    None => out.push(Value::Object(merge_map(Map::new(), m, ctx, &elem_path)?)),
                }
            }
            other => out.push(other.clone()),
        }
    }
    Ok(out)
}

/// A list of scalars merged as a set (metadata.finalizers).
fn merge_set(original: Vec<Value>, patch: &[Value], path: &Path) -> Result<Vec<Value>> {
    for (i, v) in patch.iter().enumerate() {
        if !is_scalar(v) {
            return Err(PatchError::ElementNotAScalar {
                path: path.index(i).show(),
                found: type_name(v),
            });
        }
    }
    let mut merged: Vec<Value> = Vec::with_capacity(original.len() + patch.len());
    for v in original.iter().chain(patch) {
        if !merged.iter().any(|m| value_eq(m, v)) {
            merged.push(v.clone());
        }
    }
    let (in_patch, server_only): (Vec<Value>, Vec<Value>) = merged
        .into_iter()
        .partition(|v| index_of(patch, v, None).is_some());
    Ok(normalize_order(
        in_patch,
        server_only,
        patch,
        &original,
        None,
    ))
}

/// A list of objects merged by `key`.
fn merge_by_key(
    mut original: Vec<Value>,
    patch: &[Value],
    key: &'static str,
    ctx: Ctx,
    path: &Path,
) -> Result<Vec<Value>> {
    // Special elements first: deletions and replace.
    let mut plain: Vec<(&Map<String, Value>, &Value, Path)> = Vec::with_capacity(patch.len());
    let mut replace = false;
    for (i, elem) in patch.iter().enumerate() {
        let Value::Object(m) = elem else {
            return Err(PatchError::ElementNotAnObject {
                path: path.index(i).show(),
                key,
                found: type_name(elem),
            });
        };
        let key_value = m.get(key);
        let elem_path = match key_value {
            Some(v) => path.keyed(key, v),
            None => path.index(i),
        };
        match directive(m, &elem_path)? {
            Some(Directive::Replace) => replace = true,
            Some(Directive::Delete) => {
                let Some(target) = key_value else {
                    return Err(PatchError::MissingMergeKey {
                        path: elem_path.show(),
                        key,
                    });
                };
                original.retain(|o| !has_key_value(o, key, target));
            }
            None => {
                let Some(v) = key_value else {
                    return Err(PatchError::MissingMergeKey {
                        path: elem_path.show(),
                        key,
                    });
                };
                plain.push((m, v, elem_path));
            }
        }
    }

    if replace {
        return plain
            .into_iter()
            .map(|(m, _, elem_path)| Ok(Value::Object(merge_map(Map::new(), m, ctx, &elem_path)?)))
            .collect();
    }

    let server_order = original.clone();
    let mut merged = original;
    for (m, v, elem_path) in &plain {
        match merged.iter().position(|o| has_key_value(o, key, v)) {
            Some(at) => {
                let base = match std::mem::take(&mut merged[at]) {
                    Value::Object(o) => o,
                    _ => Map::new(),
                };
                merged[at] = Value::Object(merge_map(base, m, ctx, elem_path)?);
            }
            None => merged.push(Value::Object(merge_map(Map::new(), m, ctx, elem_path)?)),
        }
    }

    let patch_order: Vec<Value> = plain
        .iter()
        .map(|(m, _, _)| Value::Object((*m).clone()))
        .collect();
    let (in_patch, server_only): (Vec<Value>, Vec<Value>) = merged
        .into_iter()
        .partition(|v| index_of(&patch_order, v, Some(key)).is_some());
    Ok(normalize_order(
        in_patch,
        server_only,
        &patch_order,
        &server_order,
        Some(key),
    ))
}

fn has_key_value(elem: &Value, key: &str, value: &Value) -> bool {
    elem.get(key).is_some_and(|v| value_eq(v, value))
}

/// Where `item` is in `list`: by merge key for objects, by value for scalars.
fn index_of(list: &[Value], item: &Value, key: Option<&str>) -> Option<usize> {
    match key {
        Some(k) => {
            let v = item.get(k)?;
            list.iter().position(|e| has_key_value(e, k, v))
        }
        None => list.iter().position(|e| value_eq(e, item)),
    }
}

/// apimachinery's normalizeElementOrder: the patch's elements in `patch_order`, the others in
/// the original's order, interleaved by the original's order where both are known; an element
/// the original did not have goes before the original elements still to place.
fn normalize_order(
    mut from_patch: Vec<Value>,
    mut server_only: Vec<Value>,
    patch_order: &[Value],
    server_order: &[Value],
    key: Option<&str>,
) -> Vec<Value> {
    from_patch.sort_by_key(|v| index_of(patch_order, v, key).unwrap_or(usize::MAX));
    server_only.sort_by_key(|v| index_of(server_order, v, key).unwrap_or(usize::MAX));

    let mut out = Vec::with_capacity(from_patch.len() + server_only.len());
    let mut left = server_only.into_iter().peekable();
    let mut right = from_patch.into_iter().peekable();
    loop {
        let take_left = match (left.peek(), right.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(l), Some(r)) => match (
                index_of(server_order, l, key),
                index_of(server_order, r, key),
            ) {
                (Some(li), Some(ri)) => li < ri,
                _ => false,
            },
        };
        let next = if take_left { left.next() } else { right.next() };
        out.extend(next);
    }
    out
}

/// A `$setElementOrder` list: objects carrying the merge key, or scalars for a set.
fn check_order_list(
    order: &[Value],
    strategy: ListStrategy,
    list_path: &Path,
    directive: &str,
) -> Result<()> {
    for (i, v) in order.iter().enumerate() {
        let ok = match strategy {
            ListStrategy::MergeByKey(k) => v.get(k).is_some(),
            _ => is_scalar(v),
        };
        if !ok {
            let want = match strategy {
                ListStrategy::MergeByKey(k) => format!("objects carrying `{k}`"),
                _ => "scalars".to_string(),
            };
            return Err(PatchError::BadDirective {
                path: list_path.index(i).show(),
                directive: directive.to_string(),
                reason: format!("must list {want}, but this element is {}", type_name(v)),
            });
        }
    }
    Ok(())
}

/// apimachinery's validatePatchWithSetOrderList: the patch's elements (deletions aside) appear
/// in `$setElementOrder`, in its order.
fn check_patch_follows_order(
    patch: &[Value],
    order: &[Value],
    strategy: ListStrategy,
    list_path: &Path,
    path: &Path,
    name: &str,
) -> Result<()> {
    let key = merge_key(strategy);
    let elems: Vec<(usize, &Value)> = patch
        .iter()
        .enumerate()
        .filter(|(_, v)| v.get(PATCH).is_none())
        .collect();
    let (mut p, mut o) = (0, 0);
    while p < elems.len() && o < order.len() {
        let (i, elem) = elems[p];
        let same = match key {
            Some(k) => match elem.get(k) {
                Some(v) => has_key_value(&order[o], k, v),
                None => {
                    return Err(PatchError::MissingMergeKey {
                        path: list_path.index(i).show(),
                        key: k,
                    })
                }
            },
            None => value_eq(elem, &order[o]),
        };
        if same {
            p += 1;
        }
        o += 1;
    }
    if p < elems.len() && !order.is_empty() {
        return Err(PatchError::SetElementOrderMismatch {
            path: path.show(),
            field: name.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn apply(kind: Kind, original: Value, patch: Value) -> Value {
        strategic_merge(kind, &original, &patch).expect("the patch applies")
    }

    fn error(kind: Kind, original: Value, patch: Value) -> PatchError {
        strategic_merge(kind, &original, &patch).expect_err("the patch is rejected")
    }

    /// No key starting with `$` anywhere in `v`.
    fn assert_no_directives(v: &Value) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    assert!(!k.starts_with('$'), "directive {k} left in the result");
                    assert_no_directives(v);
                }
            }
            Value::Array(items) => items.iter().for_each(assert_no_directives),
            _ => {}
        }
    }

    /// The Deployment of the Kubernetes docs task "Update API Objects in Place Using kubectl
    /// patch" (deployment-patch.yaml), with the toleration the docs add later.
    fn patch_demo() -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "patch-demo"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "nginx"}},
                "template": {
                    "metadata": {"labels": {"app": "nginx"}},
                    "spec": {
                        "containers": [{"name": "patch-demo-ctr", "image": "nginx"}],
                        "tolerations": [{
                            "effect": "NoSchedule",
                            "key": "dedicated",
                            "value": "test-team"
                        }]
                    }
                }
            }
        })
    }

    fn names(list: &Value) -> Vec<&str> {
        list.as_array()
            .expect("a list")
            .iter()
            .map(|c| c["name"].as_str().expect("a name"))
            .collect()
    }

    #[test]
    fn docs_patch_file_containers_adds_a_second_container_merged_by_name() {
        let out = apply(
            Kind::Deployment,
            patch_demo(),
            json!({"spec": {"template": {"spec": {"containers": [
                {"name": "patch-demo-ctr-2", "image": "redis"}
            ]}}}}),
        );
        let spec = &out["spec"]["template"]["spec"];
        // As in the docs' output: the new container first, the existing one kept.
        assert_eq!(
            names(&spec["containers"]),
            ["patch-demo-ctr-2", "patch-demo-ctr"]
        );
        assert_eq!(spec["containers"][0]["image"], "redis");
        assert_eq!(spec["containers"][1]["image"], "nginx");
        assert_eq!(spec["tolerations"][0]["key"], "dedicated");
    }

    #[test]
    fn docs_tolerations_have_no_merge_key_and_are_replaced() {
        let out = apply(
            Kind::Deployment,
            patch_demo(),
            json!({"spec": {"template": {"spec": {"tolerations": [
                {"effect": "NoSchedule", "key": "disktype", "value": "ssd"}
            ]}}}}),
        );
        assert_eq!(
            out["spec"]["template"]["spec"]["tolerations"],
            json!([{"effect": "NoSchedule", "key": "disktype", "value": "ssd"}])
        );
        assert_eq!(
            names(&out["spec"]["template"]["spec"]["containers"]),
            ["patch-demo-ctr"]
        );
    }

    #[test]
    fn docs_retain_keys_switches_strategy_from_rolling_update_to_recreate() {
        let mut original = patch_demo();
        original["spec"]["strategy"] = json!({
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}
        });
        // Without $retainKeys the rollingUpdate block stays (and validation rejects it).
        let plain = apply(
            Kind::Deployment,
            original.clone(),
            json!({"spec": {"strategy": {"type": "Recreate"}}}),
        );
        assert_eq!(
            plain["spec"]["strategy"]["rollingUpdate"]["maxSurge"],
            "25%"
        );

        let out = apply(
            Kind::Deployment,
            original,
            json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}),
        );
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
    }

    #[test]
    fn retain_keys_rejects_a_patched_field_it_does_not_keep() {
        let err = error(
            Kind::Deployment,
            patch_demo(),
            json!({"spec": {"strategy": {
                "$retainKeys": ["type"],
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1}
            }}}),
        );
        assert!(matches!(&err, PatchError::NotRetained { key, .. } if key == "rollingUpdate"));
        assert!(err.to_string().contains("`spec.strategy`"), "{err}");
    }

    #[test]
    fn retain_keys_must_be_a_list_of_strings() {
        for bad in [json!("type"), json!(["type", 3])] {
            let err = error(
                Kind::Deployment,
                patch_demo(),
                json!({"spec": {"strategy": {"$retainKeys": bad, "type": "Recreate"}}}),
            );
            assert!(matches!(err, PatchError::BadRetainKeys { .. }), "{err}");
            assert!(err.to_string().contains("`spec.strategy`"), "{err}");
        }
    }

    #[test]
    fn retain_keys_on_a_pod_volume_switches_its_source() {
        let pod = json!({"kind": "Pod", "spec": {
            "containers": [{"name": "web", "image": "nginx"}],
            "volumes": [
                {"name": "data", "emptyDir": {}},
                {"name": "cache", "emptyDir": {}}
            ]
        }});
        let out = apply(
            Kind::Pod,
            pod,
            json!({"spec": {"volumes": [{
                "$retainKeys": ["hostPath", "name"],
                "name": "data",
                "hostPath": {"path": "/srv/data"}
            }]}}),
        );
        assert_eq!(
            out["spec"]["volumes"],
            json!([
                {"name": "data", "hostPath": {"path": "/srv/data"}},
                {"name": "cache", "emptyDir": {}}
            ])
        );
    }

    #[test]
    fn kubectl_apply_image_change_with_set_element_order() {
        let mut original = patch_demo();
        original["spec"]["template"]["spec"]["containers"] = json!([{
            "name": "web",
            "image": "nginx:1.26",
            "ports": [{"containerPort": 80}],
            "imagePullPolicy": "IfNotPresent"
        }]);
        let out = apply(
            Kind::Deployment,
            original,
            json!({"spec":{"template":{"spec":{
                "$setElementOrder/containers":[{"name":"web"}],
                "containers":[{"image":"nginx:1.27","name":"web"}]
            }}}}),
        );
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"],
            json!([{
                "name": "web",
                "image": "nginx:1.27",
                "ports": [{"containerPort": 80}],
                "imagePullPolicy": "IfNotPresent"
            }])
        );
        assert_no_directives(&out);
    }

    #[test]
    fn set_element_order_orders_the_merged_list() {
        let mut original = patch_demo();
        original["spec"]["template"]["spec"]["containers"] = json!([
            {"name": "a", "image": "x"},
            {"name": "b", "image": "x"}
        ]);
        // kubectl apply adding c between a and b.
        let out = apply(
            Kind::Deployment,
            original.clone(),
            json!({"spec":{"template":{"spec":{
                "$setElementOrder/containers":[{"name":"a"},{"name":"c"},{"name":"b"}],
                "containers":[{"name":"c","image":"y"}]
            }}}}),
        );
        assert_eq!(
            names(&out["spec"]["template"]["spec"]["containers"]),
            ["a", "c", "b"]
        );

        // Only reordering.
        let out = apply(
            Kind::Deployment,
            original.clone(),
            json!({"spec":{"template":{"spec":{
                "$setElementOrder/containers":[{"name":"b"},{"name":"a"}]
            }}}}),
        );
        assert_eq!(
            names(&out["spec"]["template"]["spec"]["containers"]),
            ["b", "a"]
        );
        assert_no_directives(&out);

        // A patched element missing from the order list.
        let err = error(
            Kind::Deployment,
            original,
            json!({"spec":{"template":{"spec":{
                "$setElementOrder/containers":[{"name":"a"}],
                "containers":[{"name":"c","image":"y"}]
            }}}}),
        );
        assert!(
            matches!(err, PatchError::SetElementOrderMismatch { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("`spec.template.spec`"), "{err}");
    }

    #[test]
    fn patch_delete_removes_a_container() {
        let mut original = patch_demo();
        original["spec"]["template"]["spec"]["containers"] = json!([
            {"name": "web", "image": "nginx"},
            {"name": "sidecar", "image": "envoy"}
        ]);
        let out = apply(
            Kind::Deployment,
            original,
            json!({"spec":{"template":{"spec":{"containers":[
                {"$patch":"delete","name":"sidecar"}
            ]}}}}),
        );
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"],
            json!([{"name": "web", "image": "nginx"}])
        );
    }

    #[test]
    fn patch_delete_removes_an_env_var_merged_by_name() {
        let pod = json!({"kind": "Pod", "spec": {"containers": [{
            "name": "web",
            "image": "nginx",
            "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]
        }]}});
        let out = apply(
            Kind::Pod,
            pod,
            json!({"spec":{"containers":[{"name":"web","env":[
                {"$patch":"delete","name":"A"},
                {"name":"C","value":"3"}
            ]}]}}),
        );
        assert_eq!(
            out["spec"]["containers"][0]["env"],
            json!([{"name": "C", "value": "3"}, {"name": "B", "value": "2"}])
        );
        assert_eq!(out["spec"]["containers"][0]["image"], "nginx");
    }

    #[test]
    fn null_removes_a_label() {
        let mut original = patch_demo();
        original["metadata"]["labels"] = json!({"app": "nginx", "tier": "web"});
        let out = apply(
            Kind::Deployment,
            original,
            json!({"metadata": {"labels": {"tier": null, "missing": null}}}),
        );
        assert_eq!(out["metadata"]["labels"], json!({"app": "nginx"}));
    }

    #[test]
    fn finalizers_merge_as_a_set_and_delete_from_primitive_list_removes() {
        let mut original = patch_demo();
        original["metadata"]["finalizers"] = json!(["a", "b", "c"]);
        let out = apply(
            Kind::Deployment,
            original.clone(),
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["b"]}}),
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "c"]));
        assert_no_directives(&out);

        let out = apply(
            Kind::Deployment,
            original,
            json!({"metadata": {
                "$setElementOrder/finalizers": ["a", "c", "d"],
                "$deleteFromPrimitiveList/finalizers": ["b"],
                "finalizers": ["d"]
            }}),
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "c", "d"]));
        assert_no_directives(&out);
    }

    #[test]
    fn kubectl_scale_sets_replicas() {
        let out = apply(
            Kind::Deployment,
            patch_demo(),
            json!({"spec":{"replicas":3}}),
        );
        assert_eq!(out["spec"]["replicas"], 3);
        let mut expected = patch_demo();
        expected["spec"]["replicas"] = json!(3);
        assert_eq!(out, expected);
    }

    #[test]
    fn kubectl_rollout_restart_adds_the_restarted_at_annotation() {
        let mut original = patch_demo();
        original["spec"]["template"]["metadata"]["annotations"] = json!({"team": "web"});
        let out = apply(
            Kind::Deployment,
            original,
            json!({"spec":{"template":{"metadata":{"annotations":{
                "kubectl.kubernetes.io/restartedAt":"2025-01-02T03:04:05Z"
            }}}}}),
        );
        assert_eq!(
            out["spec"]["template"]["metadata"]["annotations"],
            json!({"team": "web", "kubectl.kubernetes.io/restartedAt": "2025-01-02T03:04:05Z"})
        );
        assert_eq!(
            out["spec"]["template"]["metadata"]["labels"]["app"],
            "nginx"
        );
    }

    #[test]
    fn replace_element_replaces_a_merged_list() {
        let out = apply(
            Kind::Deployment,
            patch_demo(),
            json!({"spec":{"template":{"spec":{"containers":[
                {"$patch":"replace"},
                {"name":"only","image":"busybox"}
            ]}}}}),
        );
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"],
            json!([{"name": "only", "image": "busybox"}])
        );
    }

    #[test]
    fn patch_replace_and_delete_on_an_object() {
        let out = apply(
            Kind::Deployment,
            patch_demo(),
            json!({"spec":{"selector":{"$patch":"replace","matchLabels":{"run":"x"}}}}),
        );
        assert_eq!(
            out["spec"]["selector"],
            json!({"matchLabels": {"run": "x"}})
        );

        let mut original = patch_demo();
        original["spec"]["template"]["metadata"]["annotations"] = json!({"a": "b"});
        let out = apply(
            Kind::Deployment,
            original,
            json!({"spec":{"template":{"metadata":{"annotations":{"$patch":"delete"}}}}}),
        );
        assert_eq!(
            out["spec"]["template"]["metadata"]["annotations"],
            json!({})
        );
    }

    #[test]
    fn ports_merge_by_container_port_and_service_port() {
        let pod = json!({"kind": "Pod", "spec": {"containers": [{
            "name": "web",
            "image": "nginx",
            "ports": [{"containerPort": 80, "name": "http"}],
            "volumeMounts": [{"name": "data", "mountPath": "/data"}]
        }]}});
        let out = apply(
            Kind::Pod,
            pod,
            json!({"spec":{"containers":[{"name":"web",
                "ports":[{"containerPort":80.0,"protocol":"TCP"}],
                "volumeMounts":[{"mountPath":"/data","readOnly":true}]
            }]}}),
        );
        let c = &out["spec"]["containers"][0];
        // Matched by value (80 == 80.0); the patch's value wins.
        assert_eq!(
            c["ports"],
            json!([{"containerPort": 80.0, "name": "http", "protocol": "TCP"}])
        );
        assert_eq!(
            c["volumeMounts"],
            json!([{"name": "data", "mountPath": "/data", "readOnly": true}])
        );

        let svc = json!({"kind": "Service", "spec": {"ports": [
            {"name": "http", "port": 80, "targetPort": 8080}
        ]}});
        let out = apply(
            Kind::Service,
            svc,
            json!({"spec":{"ports":[{"port":80,"targetPort":9090},{"port":443,"name":"https"}]}}),
        );
        assert_eq!(
            out["spec"]["ports"][0],
            json!({"name": "http", "port": 80, "targetPort": 9090})
        );
        assert_eq!(out["spec"]["ports"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn args_command_env_from_and_endpoints_subsets_are_replaced() {
        let pod = json!({"kind": "Pod", "spec": {"containers": [{
            "name": "web",
            "image": "nginx",
            "args": ["a", "b"],
            "envFrom": [{"configMapRef": {"name": "one"}}]
        }]}});
        let out = apply(
            Kind::Pod,
            pod,
            json!({"spec":{"containers":[{"name":"web",
                "args":["c"],
                "envFrom":[{"secretRef":{"name":"two"}}]
            }]}}),
        );
        assert_eq!(out["spec"]["containers"][0]["args"], json!(["c"]));
        assert_eq!(
            out["spec"]["containers"][0]["envFrom"],
            json!([{"secretRef": {"name": "two"}}])
        );

        let ep = json!({"kind": "Endpoints", "subsets": [{"addresses": [{"ip": "10.0.0.1"}]}]});
        let out = apply(
            Kind::Endpoints,
            ep,
            json!({"subsets": [{"addresses": [{"ip": "10.0.0.2"}]}]}),
        );
        assert_eq!(out["subsets"], json!([{"addresses": [{"ip": "10.0.0.2"}]}]));
    }

    #[test]
    fn status_conditions_and_node_addresses_merge_by_type() {
        let node = json!({"kind": "Node", "status": {
            "conditions": [
                {"type": "Ready", "status": "False"},
                {"type": "MemoryPressure", "status": "False"}
            ],
            "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}]
        }});
        let out = apply(
            Kind::Node,
            node,
            json!({"status": {
                "conditions": [{"type": "Ready", "status": "True"}],
                "addresses": [{"type": "Hostname", "address": "n1"}]
            }}),
        );
        assert_eq!(
            out["status"]["conditions"],
            json!([
                {"type": "Ready", "status": "True"},
                {"type": "MemoryPressure", "status": "False"}
            ])
        );
        assert_eq!(out["status"]["addresses"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn owner_references_merge_by_uid() {
        let rs = json!({"kind": "ReplicaSet", "metadata": {"ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "Deployment", "name": "d", "uid": "u1"}
        ]}});
        let out = apply(
            Kind::ReplicaSet,
            rs,
            json!({"metadata": {"ownerReferences": [{"uid": "u1", "controller": true}]}}),
        );
        assert_eq!(
            out["metadata"]["ownerReferences"],
            json!([{"apiVersion": "apps/v1", "kind": "Deployment", "name": "d", "uid": "u1", "controller": true}])
        );
    }

    #[test]
    fn directives_in_new_fields_are_applied_not_stored() {
        let pod =
            json!({"kind": "Pod", "spec": {"containers": [{"name": "web", "image": "nginx"}]}});
        let out = apply(
            Kind::Pod,
            pod,
            json!({"spec": {
                "initContainers": [{"name": "init", "image": "busybox", "env": [{"$patch": "delete", "name": "X"}]}],
                "volumes": [{"$retainKeys": ["name", "emptyDir"], "name": "v", "emptyDir": {}}],
                "nodeSelector": {"$patch": "delete"}
            }}),
        );
        assert_no_directives(&out);
        assert_eq!(
            out["spec"]["initContainers"],
            json!([{"name": "init", "image": "busybox", "env": []}])
        );
        assert!(out["spec"].get("nodeSelector").is_none());
    }

    #[test]
    fn error_patch_not_an_object() {
        let err = error(Kind::Deployment, patch_demo(), json!([{"spec": {}}]));
        assert!(
            matches!(
                err,
                PatchError::NotAnObject {
                    found: "a list",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn error_merge_keyed_element_without_its_key_names_the_path() {
        let err = error(
            Kind::Deployment,
            patch_demo(),
            json!({"spec":{"template":{"spec":{"containers":[
                {"name":"patch-demo-ctr","env":[{"value":"1"}]}
            ]}}}}),
        );
        assert_eq!(
            err,
            PatchError::MissingMergeKey {
                path: "`spec.template.spec.containers[name=patch-demo-ctr].env[0]`".into(),
                key: "name"
            }
        );
        assert!(err.to_string().contains("$patch"), "{err}");

        let err = error(
            Kind::Deployment,
            patch_demo(),
            json!({"spec":{"template":{"spec":{"containers":["web"]}}}}),
        );
        assert!(
            matches!(err, PatchError::ElementNotAnObject { .. }),
            "{err}"
        );
    }

    #[test]
    fn error_unknown_patch_value_and_unknown_directive() {
        let err = error(
            Kind::Deployment,
            patch_demo(),
            json!({"spec":{"template":{"spec":{"containers":[
                {"$patch":"remove","name":"patch-demo-ctr"}
            ]}}}}),
        );
        assert!(
            err.to_string()
                .contains("`spec.template.spec.containers[name=patch-demo-ctr]`"),
            "{err}"
        );
        assert!(matches!(err, PatchError::BadPatchDirective { .. }));

        let err = error(
            Kind::Deployment,
            patch_demo(),
            json!({"spec": {"$patch": "merge"}}),
        );
        assert!(matches!(err, PatchError::BadPatchDirective { .. }), "{err}");

        let err = error(
            Kind::Deployment,
            patch_demo(),
            json!({"spec": {"$replicas": 2}}),
        );
        assert!(matches!(err, PatchError::UnknownDirective { .. }), "{err}");

        let err = error(
            Kind::Deployment,
            patch_demo(),
            json!({"metadata": {"$deleteFromPrimitiveList": ["x"]}}),
        );
        assert!(matches!(err, PatchError::BadDirective { .. }), "{err}");
    }

    #[test]
    fn error_delete_element_in_a_replaced_list() {
        let err = error(
            Kind::Deployment,
            patch_demo(),
            json!({"spec":{"template":{"spec":{"tolerations":[
                {"$patch":"delete","key":"dedicated"}
            ]}}}}),
        );
        assert_eq!(
            err,
            PatchError::DeleteInAtomicList {
                path: "`spec.template.spec.tolerations[0]`".into()
            }
        );
    }

    #[test]
    fn set_element_order_of_a_replaced_list_is_dropped() {
        let out = apply(
            Kind::Deployment,
            patch_demo(),
            json!({"spec":{"template":{"spec":{
                "$setElementOrder/tolerations":[{"key":"x"}],
                "tolerations":[{"key":"x"}]
            }}}}),
        );
        assert_eq!(
            out["spec"]["template"]["spec"]["tolerations"],
            json!([{"key": "x"}])
        );
        assert_no_directives(&out);
    }

    #[test]
    fn patched_deployment_still_decodes_as_a_berth_deployment() {
        let out = apply(
            Kind::Deployment,
            patch_demo(),
            json!({"spec": {
                "replicas": 5,
                "strategy": {"$retainKeys": ["type"], "type": "Recreate"},
                "template": {"spec": {
                    "$setElementOrder/containers": [{"name": "patch-demo-ctr"}, {"name": "log"}],
                    "containers": [{"name": "log", "image": "busybox", "env": [{"name": "A", "value": "1"}]}]
                }}
            }}),
        );
        let d: crate::types::Deployment = serde_json::from_value(out).expect("decodes");
        assert_eq!(d.spec.replicas, Some(5));
        let names: Vec<_> = d
            .spec
            .template
            .spec
            .containers
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(names, ["patch-demo-ctr", "log"]);
    }

    #[test]
    fn patching_null_yields_the_patch_content() {
        let out = strategic_merge(
            Kind::ConfigMap,
            &Value::Null,
            &json!({"data": {"a": "1", "b": null}}),
        )
        .expect("applies");
        assert_eq!(out, json!({"data": {"a": "1"}}));
    }
}
