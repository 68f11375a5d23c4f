//! NodeRestriction (Kubernetes' admission plugin of that name), for writes by a node identity
//! (`system:node:NAME`) to its own Node; [`crate::authz`] has already limited it to that Node
//! and to the status of pods bound to it.
//!
//! - On create, a node may set any labels but those under `node-restriction.kubernetes.io/`
//!   (which admins use to steer workloads to trusted nodes) — like `--node-labels`.
//! - On update (and apply) it may not change its labels — adding, removing or changing one —
//!   except the kubelet-owned ones Kubernetes lets a kubelet keep current
//!   ([`is_node_owned_label`]), nor its taints or `spec.unschedulable`: those are the
//!   admin's levers over the node, which a compromised node must not be able to pull.
//!
//! Status writes (`UpdateStatus`) carry no metadata or spec changes and need no check here.

use std::collections::BTreeMap;

use serde_json::Value;

/// Labels a node keeps current itself (Kubernetes' `kubeletLabels` and kubelet-owned
/// prefixes).
pub fn is_node_owned_label(key: &str) -> bool {
    const EXACT: [&str; 9] = [
        "kubernetes.io/hostname",
        "kubernetes.io/arch",
        "kubernetes.io/os",
        "beta.kubernetes.io/arch",
        "beta.kubernetes.io/os",
        "beta.kubernetes.io/instance-type",
        "node.kubernetes.io/instance-type",
        "topology.kubernetes.io/region",
        "topology.kubernetes.io/zone",
    ];
    if key.starts_with(RESTRICTED_PREFIX) {
        return false;
    }
    EXACT.contains(&key)
        || key.starts_with("kubelet.kubernetes.io/")
        || key.starts_with("node.kubernetes.io/")
}

/// Labels no node may set, even on create.
pub const RESTRICTED_PREFIX: &str = "node-restriction.kubernetes.io/";

fn labels(v: &Value) -> BTreeMap<String, String> {
    v.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn taints(v: &Value) -> Value {
    match v.pointer("/spec/taints") {
        None | Some(Value::Null) => Value::Array(Vec::new()),
        Some(t) => t.clone(),
    }
}

fn unschedulable(v: &Value) -> bool {
    v.pointer("/spec/unschedulable")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// Check a node's write of its own Node: `old` is the stored Node (None: a create); `partial`
/// for an apply, whose object names only the fields it sets (absent ones are not compared).
/// The error says what was refused and why (the caller prefixes the identity).
pub fn admit(old: Option<&Value>, new: &Value, partial: bool) -> Result<(), String> {
    let new_labels = labels(new);
    let Some(old) = old else {
        return match new_labels.keys().find(|k| k.starts_with(RESTRICTED_PREFIX)) {
            Some(k) => Err(format!(
                "may not set label {k:?}: labels under {RESTRICTED_PREFIX} are set by the admin \
                 only (NodeRestriction)"
            )),
            None => Ok(()),
        };
    };
    let old_labels = labels(old);
    let keys: std::collections::BTreeSet<&String> = if partial {
        new_labels.keys().collect()
    } else {
        old_labels.keys().chain(new_labels.keys()).collect()
    };
    for k in keys {
        if old_labels.get(k) != new_labels.get(k) && !is_node_owned_label(k) {
            return Err(format!(
                "may not change label {k:?} of its own Node: a node keeps only its \
                 kubelet-owned labels (kubernetes.io/hostname, kubernetes.io/os, ...) current; \
                 other labels are changed by the admin (`berth label node ...`, NodeRestriction)"
            ));
        }
    }
    let present = |p: &str| !partial || new.pointer(p).is_some();
    if present("/spec/taints") && taints(old) != taints(new) {
        return Err(
            "may not change the taints of its own Node: taints are set by the admin \
             (NodeRestriction)"
                .to_string(),
        );
    }
    if present("/spec/unschedulable") && unschedulable(old) != unschedulable(new) {
        return Err(
            "may not change spec.unschedulable of its own Node: cordon and uncordon are the \
             admin's (`berth cordon/uncordon`, NodeRestriction)"
                .to_string(),
        );
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(labels: Value, spec: Value) -> Value {
        json!({"kind": "Node", "metadata": {"name": "n1", "labels": labels}, "spec": spec})
    }

    #[test]
    fn a_node_keeps_its_own_labels_current_but_changes_no_other_label_taint_or_cordon() {
        let old = node(
            json!({"kubernetes.io/hostname": "n1", "zone": "a"}),
            json!({"taints": [{"key": "k", "effect": "NoSchedule"}]}),
        );
        // Unchanged, or only node-owned labels changed: admitted.
        admit(Some(&old), &old, false).unwrap();
        let mut own = old.clone();
        own["metadata"]["labels"]["kubernetes.io/os"] = json!("linux");
        own["metadata"]["labels"]["node.kubernetes.io/instance-type"] = json!("m5");
        admit(Some(&old), &own, false).unwrap();

        let refused = [
            ("changes zone", {
                let mut v = old.clone();
                v["metadata"]["labels"]["zone"] = json!("b");
                v
            }),
            ("adds a label", {
                let mut v = old.clone();
                v["metadata"]["labels"]["trusted"] = json!("yes");
                v
            }),
            ("removes a label", {
                let mut v = old.clone();
                v["metadata"]["labels"]
                    .as_object_mut()
                    .unwrap()
                    .remove("zone");
                v
            }),
            ("restricted label", {
                let mut v = old.clone();
                v["metadata"]["labels"]["node-restriction.kubernetes.io/pci"] = json!("true");
                v
            }),
            ("drops taints", {
                let mut v = old.clone();
                v["spec"]["taints"] = json!([]);
                v
            }),
            ("cordons itself", {
                let mut v = old.clone();
                v["spec"]["unschedulable"] = json!(true);
                v
            }),
        ];
        for (what, new) in refused {
            let err = admit(Some(&old), &new, false).unwrap_err();
            assert!(err.contains("NodeRestriction"), "{what}: {err}");
        }
    }

    #[test]
    fn an_apply_by_a_node_is_checked_on_the_fields_it_names() {
        let old = node(json!({"zone": "a"}), json!({"unschedulable": true}));
        // Names no labels or spec: nothing to compare.
        admit(Some(&old), &json!({"metadata": {"name": "n1"}}), true).unwrap();
        let err = admit(
            Some(&old),
            &json!({"metadata": {"name": "n1"}, "spec": {"unschedulable": false}}),
            true,
        )
        .unwrap_err();
        assert!(err.contains("unschedulable"), "{err}");
    }

    #[test]
    fn a_node_registers_with_its_labels_but_never_restricted_ones() {
        admit(None, &node(json!({"zone": "a"}), json!({})), false).unwrap();
        let err = admit(
            None,
            &node(
                json!({"node-restriction.kubernetes.io/secure": "true"}),
                json!({}),
            ),
            false,
        )
        .unwrap_err();
        assert!(err.contains("node-restriction.kubernetes.io/"), "{err}");
    }
}
