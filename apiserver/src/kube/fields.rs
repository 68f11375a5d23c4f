//! Field selectors (`?fieldSelector=metadata.name=web,status.phase!=Running`), with the
//! fields Kubernetes supports for the kinds Berth has. Unknown fields are refused (400), as
//! the Kubernetes API server does, rather than silently matching everything.

use berth_proto::Kind;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldSelector {
    reqs: Vec<(String, bool, String)>,
}

/// Fields a kind can be selected by (beyond metadata.name and metadata.namespace).
fn kind_fields(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Pod => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        Kind::Event => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        Kind::Secret => &["type"],
        Kind::Namespace => &["status.phase"],
        Kind::Node => &["spec.unschedulable"],
        Kind::ReplicaSet => &["status.replicas"],
        _ => &[],
    }
}

impl FieldSelector {
    pub fn everything() -> FieldSelector {
        FieldSelector { reqs: Vec::new() }
    }

    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    pub fn parse(kind: Kind, s: &str) -> Result<FieldSelector, String> {
        let mut reqs = Vec::new();
        for term in split_unescaped(s, ',') {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let (key, eq, value) = if let Some((k, v)) = split_op(term, "!=") {
                (k, false, v)
            } else if let Some((k, v)) = split_op(term, "==") {
                (k, true, v)
            } else if let Some((k, v)) = split_op(term, "=") {
                (k, true, v)
            } else {
                return Err(format!(
                    "invalid field selector {term:?}: want FIELD=VALUE, FIELD==VALUE or \
                     FIELD!=VALUE"
                ));
            };
            let key = key.trim();
            if key != "metadata.name"
                && key != "metadata.namespace"
                && !kind_fields(kind).contains(&key)
            {
                let mut known = vec!["metadata.name", "metadata.namespace"];
                known.extend(kind_fields(kind));
                return Err(format!(
                    "field label not supported: {key:?} (for {}: {})",
                    kind.plural(),
                    known.join(", ")
                ));
            }
            reqs.push((key.to_string(), eq, unescape(value)));
        }
        Ok(FieldSelector { reqs })
    }

    /// Whether `obj` (its JSON) matches every requirement.
    pub fn matches(&self, obj: &Value) -> bool {
        self.reqs.iter().all(|(key, eq, want)| {
            let got = field_value(obj, key);
            (got == *want) == *eq
        })
    }

    /// The single name this selector pins (`metadata.name=X`), to narrow a list.
    pub fn name(&self) -> Option<&str> {
        self.reqs
            .iter()
            .find(|(k, eq, _)| k == "metadata.name" && *eq)
            .map(|(_, _, v)| v.as_str())
    }
}

fn field_value(obj: &Value, key: &str) -> String {
    if key == "source" {
        return obj
            .pointer("/source/component")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
    }
    let mut v = obj;
    for part in key.split('.') {
        match v.get(part) {
            Some(x) => v = x,
            None => {
                // Kubernetes' defaults: an unset boolean is "false", the rest "".
                return if key == "spec.unschedulable" {
                    "false".into()
                } else {
                    String::new()
                };
            }
        }
    }
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn split_op<'a>(term: &'a str, op: &str) -> Option<(&'a str, &'a str)> {
    // The first unescaped occurrence.
    let bytes = term.as_bytes();
    let mut i = 0;
    while i + op.len() <= bytes.len() {
        if bytes[i] == b'\\' {
            i += 2;
            continue;
        }
        if term[i..].starts_with(op) {
            // `!=` must not be read as `=` with a key ending in `!`, and `==` not as `=`.
            return Some((&term[..i], &term[i + op.len()..]));
        }
        i += 1;
    }
    None
}

fn split_unescaped(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            out.push(&s[start..i]);
            start = i + 1;
        }
    }
    out.push(&s[start..]);
    out
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            out.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn selects_pods_by_node_and_phase_and_refuses_unknown_fields() {
        let pod = json!({"metadata": {"name": "a", "namespace": "default"},
                         "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        let s = FieldSelector::parse(Kind::Pod, "spec.nodeName=n1,status.phase!=Pending").unwrap();
        assert!(s.matches(&pod));
        let s = FieldSelector::parse(Kind::Pod, "spec.nodeName==n2").unwrap();
        assert!(!s.matches(&pod));
        let s = FieldSelector::parse(Kind::Pod, "metadata.name=a").unwrap();
        assert_eq!(s.name(), Some("a"));
        let err = FieldSelector::parse(Kind::Deployment, "spec.replicas=1").unwrap_err();
        assert!(err.contains("field label not supported"), "{err}");
        assert!(FieldSelector::parse(Kind::Pod, "nonsense").is_err());
    }

    #[test]
    fn selects_events_of_one_object_like_kubectl_describe() {
        let ev = json!({"metadata": {"name": "e"}, "involvedObject": {"kind": "Deployment", "name": "web", "namespace": "default", "uid": "u1"}});
        let s = FieldSelector::parse(
            Kind::Event,
            "involvedObject.name=web,involvedObject.namespace=default,involvedObject.kind=Deployment,involvedObject.uid=u1",
        )
        .unwrap();
        assert!(s.matches(&ev));
        let s = FieldSelector::parse(Kind::Event, "involvedObject.uid=u2").unwrap();
        assert!(!s.matches(&ev));
    }
}
