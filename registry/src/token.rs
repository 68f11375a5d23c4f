//! Push tokens: bearer credentials for pushing without a client certificate (a CI job running
//! `docker login`/`docker push`, `skopeo copy --dest-creds`).
//!
//! A token is `bpt1.PAYLOAD.MAC`: PAYLOAD is base64url JSON `{"sub", "repo", "exp"}` (who it
//! was issued to, the repository prefix it may push to, expiry in Unix seconds), MAC is
//! HMAC-SHA256 of `bpt1.PAYLOAD` under a key derived from the cluster CA's private key, which
//! every server holds. So any server verifies a token another issued, without a store lookup,
//! and tokens die with their expiry (or all at once when the CA is replaced). Issued by a
//! server's registry to the admin only (`POST /berth/v1/tokens`, `berth registry token`).
//! Tokens are secrets: never logged; errors name the token's subject, not its bytes.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest as _, Sha256};

const PREFIX: &str = "bpt1";

/// The longest a token may live.
pub const MAX_TTL_SECS: u64 = 30 * 24 * 3600;

/// What a token allows.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Claims {
    /// Who it was issued for (free text, e.g. `ci-shop`).
    pub sub: String,
    /// Repository prefix it may push to and pull from (`""`: every repository).
    pub repo: String,
    /// Expiry, Unix seconds.
    pub exp: u64,
}

impl Claims {
    /// May this token write/read `repository`?
    pub fn covers(&self, repository: &str) -> bool {
        self.repo.is_empty()
            || repository == self.repo.trim_end_matches('/')
            || repository.starts_with(&format!("{}/", self.repo.trim_end_matches('/')))
    }
}

/// Issues and verifies push tokens with the key derived from the cluster CA's private key.
#[derive(Clone)]
pub struct PushTokens {
    key: [u8; 32],
}

impl std::fmt::Debug for PushTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PushTokens(<key>)")
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl PushTokens {
    /// The key: SHA-256 over a purpose label and the CA private key (PEM).
    pub fn from_ca_key(ca_key_pem: &str) -> PushTokens {
        let mut h = Sha256::new();
        h.update(b"berth registry push token v1\0");
        h.update(ca_key_pem.as_bytes());
        PushTokens {
            key: h.finalize().into(),
        }
    }

    fn mac(&self, data: &str) -> Vec<u8> {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes any key");
        m.update(data.as_bytes());
        m.finalize().into_bytes().to_vec()
    }

    /// A token for `sub` allowed on repositories under `repo`, valid `ttl_secs`.
    pub fn issue(&self, sub: &str, repo: &str, ttl_secs: u64) -> (String, Claims) {
        let claims = Claims {
            sub: sub.to_string(),
            repo: repo.trim_end_matches('/').to_string(),
            exp: now() + ttl_secs.min(MAX_TTL_SECS),
        };
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap_or_default());
        let signed = format!("{PREFIX}.{payload}");
        let mac = URL_SAFE_NO_PAD.encode(self.mac(&signed));
        (format!("{signed}.{mac}"), claims)
    }

    /// The claims of a valid, unexpired token.
    pub fn verify(&self, token: &str) -> Result<Claims, String> {
        let mut parts = token.trim().splitn(3, '.');
        let (Some(PREFIX), Some(payload), Some(mac)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err("not a Berth push token (make one with `berth registry token`)".into());
        };
        let given = URL_SAFE_NO_PAD
            .decode(mac)
            .map_err(|_| "the push token is damaged".to_string())?;
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes any key");
        m.update(format!("{PREFIX}.{payload}").as_bytes());
        m.verify_slice(&given).map_err(|_| {
            "the push token was not issued by this cluster (or is damaged)".to_string()
        })?;
        let claims: Claims = URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| "the push token is damaged".to_string())?;
        if claims.exp <= now() {
            return Err(format!(
                "the push token for {:?} has expired: make a new one with `berth registry token`",
                claims.sub
            ));
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_on_any_server_of_the_cluster_and_nowhere_else() {
        let a = PushTokens::from_ca_key("-----BEGIN PRIVATE KEY-----\nAAA\n");
        let b = PushTokens::from_ca_key("-----BEGIN PRIVATE KEY-----\nAAA\n");
        let other = PushTokens::from_ca_key("-----BEGIN PRIVATE KEY-----\nBBB\n");
        let (t, claims) = a.issue("ci-shop", "shop/", 3600);
        assert_eq!(claims.repo, "shop");
        assert_eq!(b.verify(&t), Ok(claims.clone()));
        assert!(other
            .verify(&t)
            .expect_err("refused")
            .contains("not issued by this cluster"));
        // Tampering with the claims breaks the MAC.
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(&Claims {
                repo: String::new(),
                ..claims.clone()
            })
            .expect("json"),
        );
        parts[1] = &forged;
        assert!(a.verify(&parts.join(".")).is_err());
        assert!(a
            .verify("hunter2")
            .expect_err("refused")
            .contains("not a Berth push token"));
        // Expired.
        let (old, _) = a.issue("ci", "", 0);
        assert!(a.verify(&old).expect_err("refused").contains("expired"));
        // Scope.
        assert!(claims.covers("shop"));
        assert!(claims.covers("shop/web"));
        assert!(!claims.covers("shopping"));
        assert!(!claims.covers("other/web"));
    }
}
