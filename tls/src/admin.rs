//! The admin's client configuration file (a kubeconfig-like YAML).

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::io_err;
use crate::files::write_private;
use crate::{ClusterCa, Credential, Identity, TlsError};

/// The admin's client configuration (like a kubeconfig): where the servers are, the CA to
/// trust and the admin credential. Written 0600 as YAML.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdminConfig {
    /// Server addresses, `host:port`.
    pub servers: Vec<String>,
    pub certificate_authority: String,
    pub client_certificate: String,
    pub client_key: String,
}

impl fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminConfig")
            .field("servers", &self.servers)
            .field("client_key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl AdminConfig {
    /// A config for the admin identity of `ca`, reaching `servers`.
    pub fn new(ca: &ClusterCa, servers: Vec<String>) -> Result<AdminConfig, TlsError> {
        let cred = ca.issue_client(&Identity::Admin)?;
        Ok(AdminConfig {
            servers,
            certificate_authority: ca.cert_pem().to_string(),
            client_certificate: cred.cert_pem,
            client_key: cred.key_pem,
        })
    }

    pub fn credential(&self) -> Credential {
        Credential {
            cert_pem: self.client_certificate.clone(),
            key_pem: self.client_key.clone(),
        }
    }

    pub fn write(&self, path: &Path) -> Result<(), TlsError> {
        let text = serde_yaml_ng::to_string(self).map_err(|e| TlsError::Invalid {
            what: "admin config".into(),
            reason: e.to_string(),
        })?;
        write_private(path, text.as_bytes())
    }

    pub fn read(path: &Path) -> Result<AdminConfig, TlsError> {
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        serde_yaml_ng::from_str(&text).map_err(|e| TlsError::Invalid {
            what: format!("admin config {}", path.display()),
            reason: e.to_string(),
        })
    }
}
