//! The certificates the cluster knows, and the nodes it revoked, as the store keeps them
//! (ConfigMaps in `berth-system`, written by servers and the admin only):
//!
//! - `cert-node-NAME` (label `berth.dev/certificate=true`): the last certificate issued to
//!   that node — `identity`, `issued`, `expires` (RFC 3339) and `keySha256` (its public key's
//!   SHA-256). Servers write them when they sign a node's request; `berth certificate list`
//!   reads them (servers report their own serving certificate in `ClusterStatus`). A node name whose Node exists is kept by the key recorded for it: another
//!   key asking for a certificate under that name is refused.
//! - `revoked-certificates`: `node.NAME` -> the revocation time (RFC 3339), written by
//!   `berth node revoke NAME`. Every certificate for `system:node:NAME` issued at or before
//!   that time is refused on every request from then on; a certificate issued later (the node
//!   joined again with a token, as the admin allowed) is not.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

pub const NAMESPACE: &str = "berth-system";
pub const RECORD_LABEL: &str = "berth.dev/certificate";
pub const REVOKED: &str = "revoked-certificates";

pub const IDENTITY_KEY: &str = "identity";
pub const ISSUED_KEY: &str = "issued";
pub const EXPIRES_KEY: &str = "expires";
pub const KEY_SHA256_KEY: &str = "keySha256";

/// The record of node `name`'s certificate.
pub fn node_record_name(name: &str) -> String {
    format!("cert-node-{name}")
}

/// The revocation list's key for node `name`.
pub fn revocation_key(node: &str) -> String {
    format!("node.{node}")
}

/// Whether `(namespace, name)` is a certificate record or the revocation list (only servers
/// and the admin write them).
pub fn is_protected(namespace: &str, name: &str) -> bool {
    namespace == NAMESPACE && (name == REVOKED || name.starts_with("cert-"))
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The ConfigMap recording a certificate.
pub fn record(
    name: &str,
    identity: &str,
    issued: DateTime<Utc>,
    expires: DateTime<Utc>,
    key_sha256: &str,
) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {RECORD_LABEL: "true"}},
        "data": {
            IDENTITY_KEY: identity,
            ISSUED_KEY: rfc3339(issued),
            EXPIRES_KEY: rfc3339(expires),
            KEY_SHA256_KEY: key_sha256,
        },
    })
}

/// A data value of a ConfigMap.
pub fn data<'a>(cm: &'a Value, key: &str) -> Option<&'a str> {
    cm.pointer("/data")?.get(key)?.as_str()
}

/// When node `name` was revoked, per the revocation list `list` (None: never).
pub fn revoked_at(list: &Value, node: &str) -> Option<DateTime<Utc>> {
    let t = data(list, &revocation_key(node))?;
    DateTime::parse_from_rfc3339(t)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Is a certificate of node `name` issued at `issued` refused by `list`?
pub fn is_revoked(list: &Value, node: &str, issued: DateTime<Utc>) -> bool {
    revoked_at(list, node).is_some_and(|t| issued <= t)
}

/// The revocation list after revoking node `name` at `now` (`list`: the stored one, if any).
pub fn revoke(list: Option<&Value>, node: &str, now: DateTime<Utc>) -> Value {
    let mut v = list.cloned().unwrap_or_else(|| {
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": REVOKED, "namespace": NAMESPACE},
            "data": {},
        })
    });
    if !v.get("data").is_some_and(Value::is_object) {
        v["data"] = json!({});
    }
    v["data"][revocation_key(node)] = json!(rfc3339(now));
    v
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_revoked_node_s_older_certificates_are_refused_and_newer_ones_not() {
        // Certificates carry whole seconds, and so does the list.
        let t = DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap();
        let list = revoke(None, "n1", t + chrono::Duration::milliseconds(700));
        assert!(is_revoked(&list, "n1", t - chrono::Duration::hours(2)));
        assert!(is_revoked(&list, "n1", t));
        assert!(!is_revoked(&list, "n1", t + chrono::Duration::seconds(1)));
        assert!(!is_revoked(&list, "n2", t - chrono::Duration::hours(2)));
        let again = revoke(Some(&list), "n2", t);
        assert!(revoked_at(&again, "n1").is_some() && revoked_at(&again, "n2").is_some());
        assert!(is_protected(NAMESPACE, REVOKED));
        assert!(is_protected(NAMESPACE, &node_record_name("n1")));
        assert!(!is_protected("default", REVOKED));
    }
}
