//! A server's PKI on disk, and how it gets one.
//!
//! Layout under the data dir (the dir itself is 0700, every key and the token 0600):
//!
//! ```text
//! DATA/pki/ca.crt  ca.key      the cluster CA (every server holds its key, to sign joiners)
//! DATA/pki/token               the server token, K10<CA sha256>::server:<secret> (joins
//!                              servers and agents)
//! DATA/pki/agent-token         the agent token, K10<CA sha256>::node:<secret> (joins agents
//!                              only, never gets the CA key); joining servers get it too
//! DATA/pki/secrets-encryption.key  the key wrapping the Secrets encryption keys (see
//!                              [`crate::encryption`]); handed to joining servers like the CA key
//! DATA/pki/server.crt .key     this server's certificate (system:server) + the CA, re-issued
//!                              at every start for the current addresses
//! DATA/admin.yaml              --init only: the admin's CLI config (servers, CA, admin cert)
//! ```
//!
//! - `--init`: a new CA, the two tokens and the admin config.
//! - `--join HOST:PORT --token T`: [`bootstrap`] over a connection pinned to the token's CA
//!   fingerprint: a CSR for a server certificate, answered with the certificate, the CA and
//!   its key (only for the SERVER role; agents get just their certificate).
//! - restart: load what is there.
//!
//! Which tokens admit a joiner is decided by the replicated store (the hashes in
//! [`berth_proto::jointoken`]'s Secrets, so `berth token rotate` reaches every server); the
//! files count only until those Secrets exist ([`StoredTokens`]).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use berth_proto::pb;

use crate::encryption::Kek;
use berth_tls::{
    AdminConfig, CertRequest, ClientTls, ClusterCa, Credential, Identity, JoinToken, TlsError,
};

/// Where a server keeps its PKI.
pub fn pki_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("pki")
}

/// Where `--init` writes the admin's CLI config.
pub fn admin_config_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.yaml")
}

const TOKEN_FILE: &str = "token";
const AGENT_TOKEN_FILE: &str = "agent-token";

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(
        "{0} holds cluster state but no PKI (pki/ca.crt, pki/ca.key, pki/token): it was made by \
         a Berth without TLS or the files were removed; restore them, or start over with an \
         empty data dir"
    )]
    Missing(PathBuf),
    #[error("--join needs --token (or BERTH_TOKEN): the join token printed by `berth server --init` and kept in DATA/pki/token on every server")]
    NoToken,
    #[error("the join token is not valid: {0}")]
    BadToken(TlsError),
    #[error(
        "--agent-token: {0}; give the bare secret (printable characters, no spaces), the \
         cluster CA fingerprint is added to it"
    )]
    BadAgentToken(String),
    #[error(transparent)]
    Encryption(#[from] crate::encryption::EncryptionError),
    #[error("bootstrapping TLS (joining via {target}) failed: {message}")]
    Bootstrap { target: String, message: String },
}

/// A server's CA, token and serving credential.
#[derive(Clone)]
pub struct ServerPki {
    pub ca: std::sync::Arc<ClusterCa>,
    /// The server token in DATA/pki/token (the one this server was created or joined with).
    pub token: JoinToken,
    /// The agent token in DATA/pki/agent-token (none on data dirs from before the agent
    /// token).
    pub agent_token: Option<JoinToken>,
    /// This server's certificate chain and key (identity `system:server`).
    pub server: Credential,
    /// The key wrapping the Secrets encryption keys ([`crate::encryption`]).
    pub secrets_kek: Kek,
}

impl std::fmt::Debug for ServerPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerPki")
            .field("ca", &self.ca)
            .finish_non_exhaustive()
    }
}

impl ServerPki {
    /// What this server presents when it dials other servers (Raft, forwarding, joins) and
    /// what its in-process control loops use.
    pub fn client_tls(&self) -> ClientTls {
        ClientTls::new(self.ca.cert_pem(), self.server.clone())
    }

    /// The TLS settings of the API port.
    pub fn server_tls_config(&self) -> tonic::transport::ServerTlsConfig {
        berth_tls::api_server_tls_config(self.ca.cert_pem(), &self.server)
    }

    /// A CLI config for the admin identity reaching `servers`.
    pub fn admin_config(&self, servers: Vec<String>) -> Result<AdminConfig, TlsError> {
        AdminConfig::new(&self.ca, servers)
    }

    /// Whether the files of a PKI exist under `data_dir`.
    pub fn exists(data_dir: &Path) -> bool {
        let dir = pki_dir(data_dir);
        ["ca.crt", "ca.key", TOKEN_FILE]
            .iter()
            .all(|f| dir.join(f).exists())
    }

    /// A new cluster: CA, server and agent tokens and a server certificate for `addresses`.
    /// `agent_secret` (`--agent-token`) is the agent token's secret; random if `None`.
    pub fn create(
        data_dir: &Path,
        addresses: &[String],
        agent_secret: Option<&str>,
    ) -> Result<ServerPki, PkiError> {
        let dir = pki_dir(data_dir);
        berth_tls::create_private_dir(&dir)?;
        let ca = ClusterCa::generate()?;
        let token = JoinToken::generate_for(ca.fingerprint(), "server:")?;
        let agent = match agent_secret {
            Some(s) => {
                let s = s.trim();
                if s.starts_with(berth_tls::TOKEN_PREFIX) {
                    return Err(PkiError::BadAgentToken(
                        "a whole K10 token cannot name a CA that does not exist yet".into(),
                    ));
                }
                JoinToken::with_secret(ca.fingerprint(), &format!("node:{s}"))
                    .map_err(|e| PkiError::BadAgentToken(e.to_string()))?
            }
            None => JoinToken::generate_for(ca.fingerprint(), "node:")?,
        };
        ca.write(&dir)?;
        write_token(&dir.join(TOKEN_FILE), &token)?;
        write_token(&dir.join(AGENT_TOKEN_FILE), &agent)?;
        let kek = Kek::generate().map_err(encryption)?;
        kek.write(&dir).map_err(encryption)?;
        let mut pki = Self::finish(&dir, ca, token, kek, addresses)?;
        pki.agent_token = Some(agent);
        Ok(pki)
    }

    /// Load the PKI of a restarting server, issuing a fresh server certificate for its
    /// current `addresses` (they may have changed; this also renews it).
    pub fn load(data_dir: &Path, addresses: &[String]) -> Result<ServerPki, PkiError> {
        if !Self::exists(data_dir) {
            return Err(PkiError::Missing(data_dir.to_path_buf()));
        }
        let dir = pki_dir(data_dir);
        berth_tls::create_private_dir(&dir)?;
        let ca = ClusterCa::read(&dir)?;
        let token = read_token(&dir.join(TOKEN_FILE))?;
        let agent_token = match dir.join(AGENT_TOKEN_FILE).exists() {
            true => Some(read_token(&dir.join(AGENT_TOKEN_FILE))?),
            false => None,
        };
        let kek = Kek::load_or_derive(&dir, ca.key_pem()).map_err(encryption)?;
        let mut pki = Self::finish(&dir, ca, token, kek, addresses)?;
        pki.agent_token = agent_token;
        Ok(pki)
    }

    fn finish(
        dir: &Path,
        ca: ClusterCa,
        token: JoinToken,
        secrets_kek: Kek,
        addresses: &[String],
    ) -> Result<ServerPki, PkiError> {
        let leaf = ca.issue_server(addresses)?;
        let server = Credential {
            cert_pem: format!("{}{}", leaf.cert_pem, ca.cert_pem()),
            key_pem: leaf.key_pem,
        };
        server.write(dir, "server")?;
        Ok(ServerPki {
            ca: std::sync::Arc::new(ca),
            token,
            agent_token: None,
            server,
            secrets_kek,
        })
    }

    /// Join: get the CA, its key and a server certificate from the cluster at `target`,
    /// trusting it only through the token's CA fingerprint.
    pub async fn join(
        data_dir: &Path,
        target: &str,
        token: &str,
        addresses: &[String],
    ) -> Result<ServerPki, PkiError> {
        let token = JoinToken::parse(token).map_err(PkiError::BadToken)?;
        let csr = CertRequest::generate()?;
        let resp = bootstrap(
            target,
            &token,
            pb::BootstrapRequest {
                role: pb::BootstrapRole::Server as i32,
                addresses: addresses.to_vec(),
                csr_pem: csr.csr_pem.clone(),
                ..Default::default()
            },
        )
        .await?;
        let ca = ClusterCa::from_pem(&resp.ca_certificate_pem, &resp.ca_key_pem)?;
        let dir = pki_dir(data_dir);
        berth_tls::create_private_dir(&dir)?;
        ca.write(&dir)?;
        write_token(&dir.join(TOKEN_FILE), &token)?;
        let server = csr.into_credential(resp.certificate_pem);
        server.write(&dir, "server")?;
        // A cluster older than the key derives it from the CA key on every member.
        let secrets_kek = if resp.secrets_encryption_key.is_empty() {
            Kek::derive_from_ca_key(ca.key_pem())
        } else {
            Kek::from_base64(&resp.secrets_encryption_key).map_err(|m| PkiError::Bootstrap {
                target: target.to_string(),
                message: format!("the secrets encryption key sent is invalid: {m}"),
            })?
        };
        secrets_kek.write(&dir).map_err(encryption)?;
        // The agent token, so this server admits agents with it too (a cluster from before
        // it sends none).
        let agent_token = match resp.agent_token.as_str() {
            "" => None,
            t => {
                let t = JoinToken::parse(t).map_err(|e| PkiError::Bootstrap {
                    target: target.to_string(),
                    message: format!("the agent token sent is invalid: {e}"),
                })?;
                write_token(&dir.join(AGENT_TOKEN_FILE), &t)?;
                Some(t)
            }
        };
        Ok(ServerPki {
            ca: std::sync::Arc::new(ca),
            token,
            agent_token,
            server,
            secrets_kek,
        })
    }
}

fn encryption(e: crate::encryption::EncryptionError) -> PkiError {
    PkiError::Encryption(e)
}

fn write_token(path: &Path, token: &JoinToken) -> Result<(), TlsError> {
    berth_tls::write_private(path, format!("{}\n", token.reveal()).as_bytes())
}

/// Where the `--init` server keeps the agent token.
pub fn agent_token_path(data_dir: &Path) -> PathBuf {
    pki_dir(data_dir).join(AGENT_TOKEN_FILE)
}

fn read_token(path: &Path) -> Result<JoinToken, PkiError> {
    let path = path.to_path_buf();
    let text = std::fs::read_to_string(&path).map_err(|source| TlsError::Io {
        path: path.display().to_string(),
        source,
    })?;
    JoinToken::parse(&text).map_err(PkiError::BadToken)
}

/// Present `token` to the server at `target` (over a connection that trusts only the CA
/// named by the token) and return its answer: the signed certificate and the CA.
pub async fn bootstrap(
    target: &str,
    token: &JoinToken,
    req: pb::BootstrapRequest,
) -> Result<pb::BootstrapResponse, PkiError> {
    berth_tls::pinned::bootstrap(&[target.to_string()], token, req)
        .await
        .map_err(|e| PkiError::Bootstrap {
            target: target.to_string(),
            message: e.to_string(),
        })
}

/// The addresses a server certificate must cover: the advertised and listen hosts,
/// loopback, and any `--tls-san`. Unspecified listen addresses (0.0.0.0) are left out.
pub fn server_sans(advertise: &str, listen: &str, extra: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |h: &str| {
        let h = h.trim_start_matches('[').trim_end_matches(']');
        if h.is_empty() {
            return;
        }
        if let Ok(ip) = h.parse::<IpAddr>() {
            if ip.is_unspecified() {
                return;
            }
        }
        if !out.iter().any(|x| x == h) {
            out.push(h.to_string());
        }
    };
    for addr in [advertise, listen] {
        if let Some((h, _)) = addr.rsplit_once(':') {
            push(h);
        }
    }
    for h in ["127.0.0.1", "localhost"] {
        push(h);
    }
    for h in extra {
        push(h);
    }
    out
}

/// The join token hashes the replicated store holds (`berth-system/join-token-server` and
/// `-agent`, see [`berth_proto::jointoken`]); `None` where no Secret exists yet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredTokens {
    pub server: Option<String>,
    pub agent: Option<String>,
}

impl StoredTokens {
    pub fn get(&self, role: berth_proto::jointoken::TokenRole) -> Option<&str> {
        match role {
            berth_proto::jointoken::TokenRole::Server => self.server.as_deref(),
            berth_proto::jointoken::TokenRole::Agent => self.agent.as_deref(),
        }
    }
}

/// Which roles `presented` may join as: (server token, agent token). The store's hashes
/// decide once `berth token rotate` wrote them; until then this server's token files do
/// (every server has the same ones: joiners get them through bootstrap).
fn token_roles(pki: &ServerPki, stored: &StoredTokens, presented: &JoinToken) -> (bool, bool) {
    use berth_proto::jointoken::matches;
    let same_ca = presented.ca_fingerprint() == pki.ca.fingerprint();
    let text = presented.reveal();
    let server = match &stored.server {
        Some(h) => matches(&text, h),
        None => pki.token.verify_secret(presented).is_ok(),
    };
    let agent = match &stored.agent {
        Some(h) => matches(&text, h),
        None => pki
            .agent_token
            .as_ref()
            .is_some_and(|t| t.verify_secret(presented).is_ok()),
    };
    (same_ca && server, same_ca && agent)
}

/// Validate and authorize a [`pb::BootstrapRequest`] and sign it (the server side of
/// [`bootstrap`]). The caller is authenticated by the token alone: the server token admits
/// servers and agents, the agent token agents only (`stored`: the store's token hashes).
pub fn answer_bootstrap(
    pki: &ServerPki,
    stored: &StoredTokens,
    req: &pb::BootstrapRequest,
) -> Result<pb::BootstrapResponse, tonic::Status> {
    use tonic::Status;
    let presented = JoinToken::parse(&req.token).map_err(|e| {
        Status::unauthenticated(format!(
            "join token refused: {e}; use the server or agent token printed by `berth server \
             --init` (`berth token show server|agent`)"
        ))
    })?;
    let (as_server, as_agent) = token_roles(pki, stored, &presented);
    if !as_server && !as_agent {
        return Err(Status::unauthenticated(
            "join token refused: it is neither this cluster's server token nor its agent token \
             (a token replaced by `berth token rotate` no longer works); use the current one \
             (`berth token show server|agent`, admin only)",
        ));
    }
    if req.role == pb::BootstrapRole::Server as i32 && !as_server {
        return Err(Status::permission_denied(
            "join token refused: this is the agent token, which joins agents only; a server \
             joins with the server token (K10...::server:..., printed by `berth server --init`, \
             `berth token show server`)",
        ));
    }
    if req.addresses.len() > 16 {
        return Err(Status::invalid_argument(format!(
            "bootstrap: {} addresses given, at most 16 are allowed",
            req.addresses.len()
        )));
    }
    for a in &req.addresses {
        if a.parse::<IpAddr>().is_err()
            && berth_proto::validate::check_dns1123_subdomain(a).is_err()
        {
            return Err(Status::invalid_argument(format!(
                "bootstrap: address {a:?} is neither an IP address nor a DNS name"
            )));
        }
    }
    let role = pb::BootstrapRole::try_from(req.role).unwrap_or(pb::BootstrapRole::Unspecified);
    let identity = match role {
        pb::BootstrapRole::Node => {
            if let Err(m) = berth_proto::validate::check_dns1123_subdomain(&req.name) {
                return Err(Status::invalid_argument(format!(
                    "bootstrap: node name {:?} is invalid: {m}",
                    req.name
                )));
            }
            Identity::Node(req.name.clone())
        }
        pb::BootstrapRole::Server => Identity::Server,
        pb::BootstrapRole::Unspecified => {
            return Err(Status::invalid_argument(
                "bootstrap: role must be NODE or SERVER",
            ))
        }
    };
    let cert = pki
        .ca
        .sign_request(&req.csr_pem, &identity, &req.addresses)
        .map_err(|e| Status::invalid_argument(format!("bootstrap: {e}")))?;
    tracing::info!(identity = %identity, addresses = ?req.addresses, "issued a certificate to a joiner");
    Ok(pb::BootstrapResponse {
        certificate_pem: cert,
        ca_certificate_pem: pki.ca.cert_pem().to_string(),
        ca_key_pem: if identity == Identity::Server {
            pki.ca.key_pem().to_string()
        } else {
            String::new()
        },
        secrets_encryption_key: if identity == Identity::Server {
            pki.secrets_kek.to_base64()
        } else {
            String::new()
        },
        agent_token: match (&identity, &pki.agent_token) {
            (Identity::Server, Some(t)) => t.reveal(),
            _ => String::new(),
        },
    })
}
