//! Key material: a [`Credential`] (certificate + key) and a joiner's [`CertRequest`].
//! Their `Debug` never shows the key.

use std::fmt;
use std::path::Path;

use rcgen::{CertificateParams, KeyPair};

use crate::error::io_err;
use crate::files::write_private;
use crate::TlsError;

/// A certificate and its private key, both PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        debug_hiding_key(f, "Credential", ("cert_pem", &self.cert_pem))
    }
}

/// `Name { <public field>: ..., key_pem: "<redacted>" }`: the one `Debug` of key material.
fn debug_hiding_key(
    f: &mut fmt::Formatter<'_>,
    name: &str,
    (field, value): (&str, &str),
) -> fmt::Result {
    f.debug_struct(name)
        .field(field, &value)
        .field("key_pem", &"<redacted>")
        .finish()
}

impl Credential {
    /// Write `<dir>/<name>.crt` (0644) and `<dir>/<name>.key` (0600).
    pub fn write(&self, dir: &Path, name: &str) -> Result<(), TlsError> {
        let crt = dir.join(format!("{name}.crt"));
        std::fs::write(&crt, &self.cert_pem).map_err(io_err(&crt))?;
        write_private(&dir.join(format!("{name}.key")), self.key_pem.as_bytes())
    }

    /// Read what [`Credential::write`] wrote.
    pub fn read(dir: &Path, name: &str) -> Result<Credential, TlsError> {
        let crt = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        Ok(Credential {
            cert_pem: std::fs::read_to_string(&crt).map_err(io_err(&crt))?,
            key_pem: std::fs::read_to_string(&key).map_err(io_err(&key))?,
        })
    }

    /// The tonic identity (certificate + key) to present.
    pub fn tonic_identity(&self) -> tonic::transport::Identity {
        tonic::transport::Identity::from_pem(&self.cert_pem, &self.key_pem)
    }
}

/// A key pair and a certificate request for it, made by a joiner: the request goes to the
/// server, the key stays here.
pub struct CertRequest {
    pub key_pem: String,
    pub csr_pem: String,
}

impl fmt::Debug for CertRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        debug_hiding_key(f, "CertRequest", ("csr_pem", &self.csr_pem))
    }
}

impl CertRequest {
    pub fn generate() -> Result<CertRequest, TlsError> {
        let key = KeyPair::generate()?;
        let params = CertificateParams::default();
        let csr = params.serialize_request(&key)?;
        Ok(CertRequest {
            key_pem: key.serialize_pem(),
            csr_pem: csr.pem()?,
        })
    }

    /// A request for the key in `key_pem` (a node renewing keeps its key, which is how the
    /// cluster tells it from another machine claiming its name).
    pub fn for_key(key_pem: &str) -> Result<CertRequest, TlsError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| TlsError::Invalid {
            what: "private key".into(),
            reason: e.to_string(),
        })?;
        let csr = CertificateParams::default().serialize_request(&key)?;
        Ok(CertRequest {
            key_pem: key_pem.to_string(),
            csr_pem: csr.pem()?,
        })
    }

    /// The credential once the server has signed the request.
    pub fn into_credential(self, cert_pem: String) -> Credential {
        Credential {
            cert_pem,
            key_pem: self.key_pem,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn debug_of_credentials_and_requests_shows_the_public_part_never_the_key() {
        let cred = Credential {
            cert_pem: "CERT".into(),
            key_pem: "SECRET-KEY".into(),
        };
        let req = CertRequest {
            key_pem: "SECRET-KEY".into(),
            csr_pem: "CSR".into(),
        };
        for (shown, public) in [(format!("{cred:?}"), "CERT"), (format!("{req:?}"), "CSR")] {
            assert!(shown.contains(public), "{shown}");
            assert!(shown.contains("<redacted>"), "{shown}");
            assert!(!shown.contains("SECRET-KEY"), "{shown}");
        }
    }
}
