//! API bearer tokens for pipelines (`berth token create --name ci --ttl 24h [--read-only]`):
//! what kubectl sends as `Authorization: Bearer …` when a kubeconfig has `token:` instead of a
//! client certificate.
//!
//! A token is `berth-token.NAME.SECRET` (SECRET: 32 random bytes, base64url). Only its
//! SHA-256 is stored, in the Secret `berth-system/api-token-NAME` of type
//! `berth.dev/api-token`, with its expiry and read-only flag as annotations: the CLI generates
//! the token and sends only the hash, so no server, log or snapshot ever holds the token.
//! Revoking is deleting that Secret (`berth token revoke NAME`); a server checks the Secret
//! on every request, so a revocation counts as soon as the deletion is applied there.

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

/// Where token Secrets live.
pub const NAMESPACE: &str = "berth-system";
/// Their Secret type.
pub const SECRET_TYPE: &str = "berth.dev/api-token";
/// Label on every token Secret (`berth token list`).
pub const LABEL: &str = "berth.dev/api-token";
pub const EXPIRES_ANNOTATION: &str = "berth.dev/expires";
pub const READ_ONLY_ANNOTATION: &str = "berth.dev/read-only";
/// The data key holding the token's `sha256:<hex>`.
pub const HASH_KEY: &str = "sha256";
const PREFIX: &str = "berth-token";

/// The Secret name of token `name`.
pub fn secret_name(name: &str) -> String {
    format!("api-token-{name}")
}

/// A token name: a DNS label (it is part of a Secret name and of the token).
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 50
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid token name {name:?}: use 1-50 lowercase letters, digits and '-', starting \
             and ending with a letter or digit"
        ))
    }
}

/// A new token for `name` from 32 random bytes, and the Secret that stores its hash.
pub fn issue(
    name: &str,
    random: &[u8; 32],
    expires: DateTime<Utc>,
    read_only: bool,
) -> Result<(String, Value), String> {
    check_name(name)?;
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random);
    let token = format!("{PREFIX}.{name}.{secret}");
    let hash = crate::image::sha256_digest(token.as_bytes());
    let obj = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": secret_name(name),
            "namespace": NAMESPACE,
            "labels": {LABEL: "true"},
            "annotations": {
                EXPIRES_ANNOTATION: expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                READ_ONLY_ANNOTATION: read_only.to_string(),
            },
        },
        "type": SECRET_TYPE,
        "stringData": {HASH_KEY: hash},
    });
    Ok((token, obj))
}

/// The token name in a presented token, if it has the token's shape.
pub fn name_of(token: &str) -> Option<&str> {
    let rest = token.strip_prefix(PREFIX)?.strip_prefix('.')?;
    let (name, secret) = rest.split_once('.')?;
    (check_name(name).is_ok() && !secret.is_empty()).then_some(name)
}

/// What a valid token may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub name: String,
    pub read_only: bool,
    pub expires: DateTime<Utc>,
}

/// Check `token` against its stored Secret (as JSON, `data` base64): the hash must match (in
/// constant time) and the token must not have expired. The error says why, without the token.
pub fn verify(token: &str, secret: &Value, now: DateTime<Utc>) -> Result<Grant, String> {
    let name = name_of(token).ok_or("not a Berth API token")?;
    if secret.get("type").and_then(Value::as_str) != Some(SECRET_TYPE) {
        return Err(format!(
            "token {name}: its Secret is not of type {SECRET_TYPE}"
        ));
    }
    let stored = secret
        .pointer(&format!("/data/{HASH_KEY}"))
        .and_then(Value::as_str)
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .ok_or_else(|| format!("token {name}: its Secret holds no hash"))?;
    let presented = crate::image::sha256_digest(token.as_bytes());
    if !constant_time_eq(&stored, presented.as_bytes()) {
        return Err(format!("token {name}: wrong secret"));
    }
    let ann = |k: &str| {
        secret
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(k))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let expires = DateTime::parse_from_rfc3339(&ann(EXPIRES_ANNOTATION))
        .map_err(|_| format!("token {name}: no valid expiry"))?
        .with_timezone(&Utc);
    if now >= expires {
        return Err(format!("token {name}: expired at {expires}"));
    }
    Ok(Grant {
        name: name.to_string(),
        read_only: ann(READ_ONLY_ANNOTATION) != "false",
        expires,
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The stored form: what the API server keeps after decoding stringData to data.
    fn stored(obj: &Value) -> Value {
        let mut v = obj.clone();
        let hash = v["stringData"][HASH_KEY].as_str().unwrap().to_string();
        v["data"] = json!({HASH_KEY: base64::engine::general_purpose::STANDARD.encode(hash)});
        v.as_object_mut().unwrap().remove("stringData");
        v
    }

    #[test]
    fn an_issued_token_verifies_until_it_expires_and_a_wrong_one_never() {
        let now = Utc::now();
        let (token, obj) = issue("ci", &[7; 32], now + chrono::Duration::hours(24), true).unwrap();
        assert!(token.starts_with("berth-token.ci."), "{token}");
        assert!(
            !obj.to_string().contains(&token),
            "the Secret holds only the hash"
        );
        let s = stored(&obj);
        let g = verify(&token, &s, now).unwrap();
        assert_eq!(g.name, "ci");
        assert!(g.read_only);
        let err = verify(&token, &s, now + chrono::Duration::hours(25)).unwrap_err();
        assert!(err.contains("expired"), "{err}");
        let forged = format!("{}x", token);
        let err = verify(&forged, &s, now).unwrap_err();
        assert!(
            err.contains("wrong secret") && !err.contains(&forged),
            "{err}"
        );
        assert!(verify("Bearer nonsense", &s, now).is_err());
        assert_eq!(name_of(&token), Some("ci"));
        assert!(issue("Bad_Name", &[0; 32], now, false).is_err());
    }
}
