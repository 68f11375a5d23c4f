//! Join tokens: `K10<sha256 of the CA certificate, hex>::<secret>` (k3s style).

use std::fmt;

use crate::ca::fingerprint_of;
use crate::pem::first_cert_der;
use crate::{ClusterCa, TlsError};

/// Prefix of every join token.
pub const TOKEN_PREFIX: &str = "K10";

/// A join token: `K10<CA fingerprint, 64 hex digits>::<secret>`.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    ca_fingerprint: [u8; 32],
    secret: String,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("ca_fingerprint", &hex(&self.ca_fingerprint))
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl JoinToken {
    /// A new token for `ca` with a random 256-bit secret.
    pub fn generate(ca: &ClusterCa) -> Result<JoinToken, TlsError> {
        JoinToken::generate_for(ca.fingerprint(), "")
    }

    /// A new token naming the CA with `ca_fingerprint`, its secret `<user><random hex>`
    /// (k3s: `server:` for the server token, `node:` for the agent token).
    pub fn generate_for(ca_fingerprint: [u8; 32], user: &str) -> Result<JoinToken, TlsError> {
        use ring::rand::SecureRandom;
        let mut secret = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut secret)
            .map_err(|_| TlsError::Random)?;
        JoinToken::with_secret(ca_fingerprint, &format!("{user}{}", hex(&secret)))
    }

    /// A token naming the CA with `ca_fingerprint` whose secret is `secret` (a user-chosen
    /// one, like k3s' `--agent-token`); checked like a parsed one.
    pub fn with_secret(ca_fingerprint: [u8; 32], secret: &str) -> Result<JoinToken, TlsError> {
        JoinToken::parse(&format!("{TOKEN_PREFIX}{}::{secret}", hex(&ca_fingerprint)))
    }

    /// The part after `::` (contains the secret: never log it).
    pub fn secret_part(&self) -> &str {
        &self.secret
    }

    /// Parse the text form; errors say what is wrong without echoing the secret.
    pub fn parse(s: &str) -> Result<JoinToken, TlsError> {
        let s = s.trim();
        let rest = s
            .strip_prefix(TOKEN_PREFIX)
            .ok_or_else(|| TlsError::BadToken(format!("it must start with {TOKEN_PREFIX:?}")))?;
        let (fp, secret) = rest.split_once("::").ok_or_else(|| {
            TlsError::BadToken(format!("expected {TOKEN_PREFIX}<CA fingerprint>::<secret>"))
        })?;
        let fp = unhex(fp).filter(|b| b.len() == 32).ok_or_else(|| {
            TlsError::BadToken("the CA fingerprint must be 64 hexadecimal digits".into())
        })?;
        if secret.is_empty() || secret.len() > 256 || !secret.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(TlsError::BadToken(
                "the secret must be 1 to 256 printable characters".into(),
            ));
        }
        let mut ca_fingerprint = [0u8; 32];
        ca_fingerprint.copy_from_slice(&fp);
        Ok(JoinToken {
            ca_fingerprint,
            secret: secret.to_string(),
        })
    }

    pub fn ca_fingerprint(&self) -> [u8; 32] {
        self.ca_fingerprint
    }

    /// Server side: does a presented token carry this cluster's secret (constant time)?
    pub fn verify_secret(&self, presented: &JoinToken) -> Result<(), TlsError> {
        let fp_ok = constant_time_eq(&self.ca_fingerprint, &presented.ca_fingerprint);
        let secret_ok = constant_time_eq(self.secret.as_bytes(), presented.secret.as_bytes());
        if fp_ok & secret_ok {
            Ok(())
        } else {
            Err(TlsError::WrongSecret)
        }
    }

    /// Joiner side: is `ca_cert_pem` (as shown by the server) the CA this token names?
    pub fn verify_ca(&self, ca_cert_pem: &str) -> Result<(), TlsError> {
        let der = first_cert_der(ca_cert_pem, "CA certificate")?;
        let actual = fingerprint_of(&der);
        if constant_time_eq(&actual, &self.ca_fingerprint) {
            Ok(())
        } else {
            Err(TlsError::WrongCa {
                actual: hex(&actual),
            })
        }
    }

    /// The text form, which contains the secret: print it for the user, never log it.
    pub fn reveal(&self) -> String {
        format!(
            "{TOKEN_PREFIX}{}::{}",
            hex(&self.ca_fingerprint),
            self.secret
        )
    }
}

/// SHA-256 of the first certificate in `pem` (what a join token names), e.g. of the CA
/// certificate in an admin config.
pub fn fingerprint_of_pem(pem: &str) -> Result<[u8; 32], TlsError> {
    Ok(fingerprint_of(&first_cert_der(pem, "CA certificate")?))
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// Equality whose time does not depend on where the inputs differ (lengths are not secret).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}
