//! The cluster's two join tokens, as the replicated store keeps them (k3s' shape):
//!
//! - the **server** token `K10<CA fingerprint>::server:<secret>` joins servers (which receive
//!   the CA key and the Secrets encryption key) and agents;
//! - the **agent** token `K10<CA fingerprint>::node:<secret>` joins agents only: presented for
//!   a server bootstrap it is refused, so holding what an agent needs never makes a server.
//!
//! A rotation (`berth token rotate server|agent`, admin only) stores only the new token's
//! SHA-256, in the Secret `berth-system/join-token-server` or `berth-system/join-token-agent`
//! (type `berth.dev/join-token`), so it reaches every server with the next applied entry: the
//! old token stops working everywhere, members keep their certificates. Until a token's first
//! rotation, servers check it against their token files (DATA/pki/token and agent-token; a
//! joining server receives both); on a data dir from before the two tokens, the one token is
//! the server token.

use serde_json::{json, Value};

/// Where the token Secrets live.
pub const NAMESPACE: &str = "berth-system";
/// Their Secret type.
pub const SECRET_TYPE: &str = "berth.dev/join-token";
/// The data key holding the token's `sha256:<hex>`.
pub const HASH_KEY: &str = "sha256";
/// When the token was last set (RFC 3339).
pub const ROTATED_ANNOTATION: &str = "berth.dev/rotated";

/// Which of the two tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenRole {
    Server,
    Agent,
}

impl TokenRole {
    /// `server` / `agent`, as on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenRole::Server => "server",
            TokenRole::Agent => "agent",
        }
    }

    /// The user part of the secret (k3s: `server:` and `node:`).
    pub fn secret_prefix(self) -> &'static str {
        match self {
            TokenRole::Server => "server:",
            TokenRole::Agent => "node:",
        }
    }

    /// The Secret holding this token's hash.
    pub fn secret_name(self) -> &'static str {
        match self {
            TokenRole::Server => "join-token-server",
            TokenRole::Agent => "join-token-agent",
        }
    }
}

impl std::str::FromStr for TokenRole {
    type Err = String;
    fn from_str(s: &str) -> Result<TokenRole, String> {
        match s {
            "server" => Ok(TokenRole::Server),
            "agent" | "node" => Ok(TokenRole::Agent),
            _ => Err(format!(
                "unknown join token {s:?}: expected \"server\" or \"agent\""
            )),
        }
    }
}

/// Whether `(namespace, name)` is one of the join token Secrets (only the admin writes them).
pub fn is_token_secret(namespace: &str, name: &str) -> bool {
    namespace == NAMESPACE
        && [TokenRole::Server, TokenRole::Agent]
            .iter()
            .any(|r| r.secret_name() == name)
}

/// `sha256:<hex>` of a token's whole text form.
pub fn hash(token_text: &str) -> String {
    crate::image::sha256_digest(token_text.trim().as_bytes())
}

/// The Secret storing the hash of `token_text` as the `role` token.
pub fn secret(role: TokenRole, token_text: &str, now: chrono::DateTime<chrono::Utc>) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": role.secret_name(),
            "namespace": NAMESPACE,
            "annotations": {
                ROTATED_ANNOTATION: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            },
        },
        "type": SECRET_TYPE,
        "stringData": {HASH_KEY: hash(token_text)},
    })
}

/// The stored hash of a token Secret (as the server reveals it: `data` base64).
pub fn stored_hash(secret: &Value) -> Option<String> {
    use base64::Engine as _;
    if secret.get("type").and_then(Value::as_str) != Some(SECRET_TYPE) {
        return None;
    }
    let b = secret
        .pointer(&format!("/data/{HASH_KEY}"))
        .and_then(Value::as_str)?;
    let raw = base64::engine::general_purpose::STANDARD.decode(b).ok()?;
    String::from_utf8(raw).ok()
}

/// Does `token_text` hash to `stored` (constant time)?
pub fn matches(token_text: &str, stored: &str) -> bool {
    let h = hash(token_text);
    h.len() == stored.len()
        && h.bytes()
            .zip(stored.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_token_secret_holds_only_the_hash_and_matches_its_token_only() {
        use base64::Engine as _;
        let token = "K10abcd::node:0123";
        let mut s = secret(TokenRole::Agent, token, chrono::Utc::now());
        assert!(!s.to_string().contains("0123"), "{s}");
        assert_eq!(s["metadata"]["name"], "join-token-agent");
        let h = s["stringData"][HASH_KEY].as_str().unwrap().to_string();
        s["data"] =
            json!({HASH_KEY: base64::engine::general_purpose::STANDARD.encode(h.as_bytes())});
        let stored = stored_hash(&s).unwrap();
        assert!(matches(token, &stored));
        assert!(matches(&format!("{token}\n"), &stored));
        assert!(!matches("K10abcd::node:0124", &stored));
        assert!(is_token_secret("berth-system", "join-token-server"));
        assert!(!is_token_secret("default", "join-token-server"));
        assert_eq!("agent".parse::<TokenRole>().unwrap(), TokenRole::Agent);
        assert!("both".parse::<TokenRole>().is_err());
    }
}
