//! The node's identity: a `system:node:NAME` certificate from the cluster CA.
//!
//! Kept under the agent's data dir (0700): `pki/ca.crt`, `pki/node.crt`, `pki/node.key`
//! (0600). On start the agent uses them if they name this node, come from the CA the token
//! names (when a token is given) and are valid for at least another day; otherwise it needs
//! `--token` to get new ones: it makes a key and a certificate request, and sends the request
//! with the token over a connection that trusts only the CA the token names (see
//! `berth_tls::pinned`). The key never leaves the node.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use berth_proto::pb;
use berth_tls::{CertRequest, ClientTls, Credential, Identity, JoinToken};

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error(
        "no node certificate in {dir} and no join token: pass --token (or set BERTH_TOKEN) with \
         the cluster's join token (printed by `berth server --init`, kept in DATA/pki/token on \
         every server)"
    )]
    NoToken { dir: String },
    #[error(
        "{dir}/node.crt is for {found}, not system:node:{name}: pass --token to get a \
         certificate for {name}, or run with --name {found_name}"
    )]
    OtherNode {
        dir: String,
        found: String,
        name: String,
        found_name: String,
    },
    #[error("{dir}/node.crt has expired or expires within a day: pass --token to renew it")]
    Expiring { dir: String },
    #[error("the join token is not valid: {0}")]
    BadToken(berth_tls::TlsError),
    #[error("getting a node certificate failed: {0}")]
    Bootstrap(String),
    #[error(transparent)]
    Tls(#[from] berth_tls::TlsError),
}

fn pki_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("pki")
}

/// Credentials already on disk, if complete.
fn stored(dir: &Path) -> Option<ClientTls> {
    let ca = std::fs::read_to_string(dir.join("ca.crt")).ok()?;
    let cred = Credential::read(dir, "node").ok()?;
    Some(ClientTls::new(ca, cred))
}

/// The node's TLS credentials: from the data dir, or bootstrapped with `token` through one of
/// `servers`.
pub async fn node_credentials(
    data_dir: &Path,
    servers: &[String],
    node_name: &str,
    addresses: &[String],
    token: Option<&str>,
) -> Result<ClientTls, CredentialError> {
    let dir = pki_dir(data_dir);
    let dir_s = dir.display().to_string();
    let token = token
        .filter(|t| !t.trim().is_empty())
        .map(JoinToken::parse)
        .transpose()
        .map_err(CredentialError::BadToken)?;
    // The key of a stored certificate for this node, kept across renewals: the cluster
    // refuses another key claiming a registered node's name.
    let mut own_key = None;
    if let Some(tls) = stored(&dir) {
        let want = Identity::Node(node_name.to_string());
        let identity = tls.identity()?;
        let fresh = tls
            .not_after()
            .is_ok_and(|t| t > SystemTime::now() + Duration::from_secs(86_400));
        let same_ca = token
            .as_ref()
            .is_none_or(|t| t.verify_ca(&tls.ca_cert_pem).is_ok());
        if identity == want && fresh && same_ca {
            return Ok(tls);
        }
        if token.is_none() {
            return Err(if identity != want {
                let found_name = match &identity {
                    Identity::Node(n) => n.clone(),
                    other => other.to_string(),
                };
                CredentialError::OtherNode {
                    dir: dir_s,
                    found: identity.to_string(),
                    name: node_name.to_string(),
                    found_name,
                }
            } else {
                CredentialError::Expiring { dir: dir_s }
            });
        }
        if identity == want {
            own_key = Some(tls.credential.key_pem.clone());
        }
        tracing::info!(
            node = node_name,
            "stored node certificate unusable; requesting a new one with the join token"
        );
    }
    let token = token.ok_or(CredentialError::NoToken { dir: dir_s })?;
    let csr = match own_key {
        Some(k) => CertRequest::for_key(&k).or_else(|_| CertRequest::generate())?,
        None => CertRequest::generate()?,
    };
    // The token itself is added by `bootstrap`.
    let req = pb::BootstrapRequest {
        role: pb::BootstrapRole::Node as i32,
        name: node_name.to_string(),
        addresses: addresses.to_vec(),
        csr_pem: csr.csr_pem.clone(),
        ..Default::default()
    };
    let resp = berth_tls::pinned::bootstrap(servers, &token, req)
        .await
        .map_err(|e| CredentialError::Bootstrap(e.to_string()))?;
    berth_tls::create_private_dir(&dir)?;
    std::fs::write(dir.join("ca.crt"), &resp.ca_certificate_pem).map_err(|source| {
        berth_tls::TlsError::Io {
            path: dir.join("ca.crt").display().to_string(),
            source,
        }
    })?;
    let cred = csr.into_credential(resp.certificate_pem);
    cred.write(&dir, "node")?;
    tracing::info!(node = node_name, "got a node certificate from the cluster");
    Ok(ClientTls::new(resp.ca_certificate_pem, cred))
}
