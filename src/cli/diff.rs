//! `berth diff -f FILE|DIR|-`: what `berth apply` of the same files would change, field by
//! field. The objects are sent as a server-side dry-run apply (the same request `apply` sends,
//! with dry run), so the server decides what changes with the very comparison that apply
//! uses, server defaults included; the CLI only prints the difference between the stored
//! object and the one the dry run returned. Exit 0 no changes, 1 changes, 2 or more it failed.

use std::path::PathBuf;

use anyhow::anyhow;
use berth_client::{ClientError, DynObject, Outcome};
use clap::Args;
use serde_json::Value;

use super::{exit, table, Ctx, Exit, Io};

/// `berth diff --help` footer.
pub const HELP: &str = "The server compares, as for `berth apply` (a dry-run apply of the same \
objects): what it would create, change or leave as it is. Each change is printed as PATH: OLD \
-> NEW, + PATH: NEW (added) or - PATH: OLD (removed).\n\nExit status: 0 no changes; 1 changes \
(nothing is printed to stderr); 2 or more: diff itself failed (stderr says why).";

#[derive(Debug, Clone, Args)]
pub struct DiffArgs {
    /// Manifest files or directories (*.yaml, *.yml, *.json), or - for stdin.
    #[arg(short = 'f', long = "filename", value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,
    /// Namespace for objects that do not name one (default "default").
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
}

/// One field's change. Paths are dotted, with `[i]` for list items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Added(String, Value),
    Removed(String, Value),
    Changed(String, Value, Value),
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = |v: &Value| serde_json::to_string(v).unwrap_or_default();
        match self {
            Change::Added(p, n) => write!(f, "+ {p}: {}", v(n)),
            Change::Removed(p, o) => write!(f, "- {p}: {}", v(o)),
            Change::Changed(p, o, n) => write!(f, "~ {p}: {} -> {}", v(o), v(n)),
        }
    }
}

/// Bookkeeping the server changes on every write: not a difference the user made.
const IGNORED: &[&str] = &[
    "status",
    "metadata.resourceVersion",
    "metadata.generation",
    "metadata.managedFields",
    "metadata.creationTimestamp",
    "metadata.uid",
];

/// The field-by-field difference from `old` to `new` (bookkeeping fields left out).
pub fn changes(old: &Value, new: &Value) -> Vec<Change> {
    let mut out = Vec::new();
    walk("", old, new, &mut out);
    out
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn walk(path: &str, old: &Value, new: &Value, out: &mut Vec<Change>) {
    if IGNORED.contains(&path) {
        return;
    }
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = join(path, k);
                if IGNORED.contains(&p.as_str()) {
                    continue;
                }
                // A whole map added or removed is listed field by field (bookkeeping left out).
                let empty = Value::Object(Default::default());
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => walk(&p, x, y, out),
                    (Some(x @ Value::Object(_)), None) => walk(&p, x, &empty, out),
                    (None, Some(y @ Value::Object(_))) => walk(&p, &empty, y, out),
                    (Some(x), None) => out.push(Change::Removed(p, x.clone())),
                    (None, Some(y)) => out.push(Change::Added(p, y.clone())),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for i in 0..a.len().max(b.len()) {
                let p = format!("{path}[{i}]");
                match (a.get(i), b.get(i)) {
                    (Some(x), Some(y)) => walk(&p, x, y, out),
                    (Some(x), None) => out.push(Change::Removed(p, x.clone())),
                    (None, Some(y)) => out.push(Change::Added(p, y.clone())),
                    (None, None) => {}
                }
            }
        }
        (a, b) if a != b => out.push(Change::Changed(path.to_string(), a.clone(), b.clone())),
        _ => {}
    }
}

pub async fn run(ctx: &Ctx, a: DiffArgs, io: &mut Io<'_>) -> anyhow::Result<()> {
    match diff(ctx, &a, io).await {
        Ok(false) => Ok(()),
        Ok(true) => Err(Exit::new(exit::CHANGES, "").into()),
        // Failures exit 2 or more (1 means "changes").
        Err(e) if super::exit_code(&e) == exit::FAILURE => {
            Err(Exit::new(exit::USAGE, super::error_message(&e)).into())
        }
        Err(e) => Err(e),
    }
}

/// Print the differences; true when there are any.
async fn diff(ctx: &Ctx, a: &DiffArgs, io: &mut Io<'_>) -> anyhow::Result<bool> {
    let (docs, objects) = super::apply::prepare(&a.files, a.namespace.as_deref(), io)?;
    let client = ctx.client()?;
    let results = client.apply_all(&objects, true).await?;
    let mut any = false;
    let mut rejected = 0;
    for ((doc, obj), result) in docs.iter().zip(&objects).zip(results) {
        let what = table::kind_ref(obj.kind, obj.name());
        let ns = if obj.kind.namespaced() {
            format!(" -n {}", obj.namespace())
        } else {
            String::new()
        };
        match result {
            Ok((_, Outcome::Unchanged)) => {}
            Ok((after, Outcome::Created)) => {
                any = true;
                writeln!(io.out, "{what}{ns}: would be created")?;
                for c in changes(&Value::Object(Default::default()), &after.value) {
                    writeln!(io.out, "  {c}")?;
                }
            }
            Ok((after, _)) => {
                any = true;
                let before: DynObject = client
                    .get_dyn(obj.kind, obj.namespace(), obj.name())
                    .await?;
                writeln!(io.out, "{what}{ns}: would be configured")?;
                let list = changes(&before.value, &after.value);
                if list.is_empty() {
                    writeln!(io.out, "  (server bookkeeping only)")?;
                }
                for c in list {
                    writeln!(io.out, "  {c}")?;
                }
            }
            Err(ClientError::NotApplied(_)) => {}
            Err(e) => {
                rejected += 1;
                writeln!(io.err, "error: {}:{}: {what}: {e}", doc.file, doc.line)?;
            }
        }
    }
    if rejected > 0 {
        return Err(anyhow!(
            "{rejected} of {} objects would be rejected by `berth apply`; fix them and diff \
             again",
            objects.len()
        ));
    }
    Ok(any)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn changes_are_listed_field_by_field_without_bookkeeping() {
        let old = json!({
            "metadata": {"name": "web", "resourceVersion": "5", "generation": 1,
                         "labels": {"app": "web", "old": "x"}},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [
                {"name": "app", "image": "web:1"}]}}},
            "status": {"replicas": 2}
        });
        let new = json!({
            "metadata": {"name": "web", "resourceVersion": "6", "generation": 2,
                         "labels": {"app": "web", "tier": "front"}},
            "spec": {"replicas": 3, "template": {"spec": {"containers": [
                {"name": "app", "image": "web:2"}, {"name": "side", "image": "s:1"}]}}},
            "status": {"replicas": 3}
        });
        let got: Vec<String> = changes(&old, &new).iter().map(|c| c.to_string()).collect();
        assert_eq!(
            got,
            vec![
                "- metadata.labels.old: \"x\"",
                "+ metadata.labels.tier: \"front\"",
                "~ spec.replicas: 2 -> 3",
                "~ spec.template.spec.containers[0].image: \"web:1\" -> \"web:2\"",
                "+ spec.template.spec.containers[1]: {\"image\":\"s:1\",\"name\":\"side\"}",
            ]
        );
        assert!(changes(&old, &old).is_empty());
        // A new object: its fields, without the server's bookkeeping.
        let got: Vec<String> = changes(&json!({}), &new)
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(
            got,
            vec![
                "+ metadata.labels.app: \"web\"",
                "+ metadata.labels.tier: \"front\"",
                "+ metadata.name: \"web\"",
                "+ spec.replicas: 3",
                "+ spec.template.spec.containers: [{\"image\":\"web:2\",\"name\":\"app\"},{\"image\":\"s:1\",\"name\":\"side\"}]",
            ]
        );
    }
}
