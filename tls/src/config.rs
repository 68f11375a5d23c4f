//! TLS settings for every connection: the client credential ([`ClientTls`]) and tonic
//! endpoints, tonic server/client TLS configs, and rustls configs for servers that are not
//! tonic (the agent's logs API).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::pem::{first_cert_der, parse_chain, parse_key, roots};
use crate::{identity_of_cert, Credential, Identity, TlsError};

/// What a client presents and trusts: the cluster CA and its own credential (admin, server
/// or node). Cheap to clone; `Debug` hides the key.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientTls {
    pub ca_cert_pem: String,
    pub credential: Credential,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("identity", &self.identity().ok())
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    pub fn new(ca_cert_pem: impl Into<String>, credential: Credential) -> ClientTls {
        ClientTls {
            ca_cert_pem: ca_cert_pem.into(),
            credential,
        }
    }

    /// The tonic client TLS settings: trust only the cluster CA, present the credential. The
    /// server name checked is the host of the URI dialed (an IP address or DNS name that must
    /// be among the server certificate's SANs).
    pub fn tonic(&self) -> tonic::transport::ClientTlsConfig {
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_cert_pem))
            .identity(self.credential.tonic_identity())
            .assume_http2(true)
    }

    /// A tonic endpoint for `addr` (`HOST:PORT`) over mutual TLS with this credential.
    pub fn endpoint(
        &self,
        addr: &str,
    ) -> Result<tonic::transport::Endpoint, tonic::transport::Error> {
        endpoint(addr, Some(self))
    }

    /// The identity the credential's certificate names.
    pub fn identity(&self) -> Result<Identity, TlsError> {
        identity_of_cert(&first_cert_der(&self.credential.cert_pem, "certificate")?)
    }

    /// When the credential's certificate stops being valid.
    pub fn not_after(&self) -> Result<SystemTime, TlsError> {
        let der = first_cert_der(&self.credential.cert_pem, "certificate")?;
        let (_, cert) =
            x509_parser::parse_x509_certificate(&der).map_err(|e| TlsError::Invalid {
                what: "certificate".into(),
                reason: e.to_string(),
            })?;
        let secs = cert.validity().not_after.timestamp().max(0) as u64;
        Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
    }
}

/// A tonic endpoint for `addr` (`HOST:PORT`, or a full URI): `https` with `tls`, plain `http`
/// without (raft-level tests only; every Berth server requires TLS). The one place that
/// turns an address and a credential into an endpoint.
pub fn endpoint(
    addr: &str,
    tls: Option<&ClientTls>,
) -> Result<tonic::transport::Endpoint, tonic::transport::Error> {
    let uri = if addr.contains("://") {
        addr.to_string()
    } else {
        let scheme = if tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{addr}")
    };
    let endpoint = tonic::transport::Endpoint::from_shared(uri)?;
    match tls {
        Some(tls) => endpoint.tls_config(tls.tonic()),
        None => Ok(endpoint),
    }
}

/// A rustls server that presents `server` and requires a client certificate from the CA
/// (for servers that are not tonic, like the agent's logs API).
pub fn mtls_server_config(
    ca_cert_pem: &str,
    server: &Credential,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    rustls_server(ca_cert_pem, server, false)
}

/// A rustls HTTPS server (the cluster registry) that presents `server` and verifies a client
/// certificate against the CA when one is offered; clients without one still finish the
/// handshake and are authorized per request (401). A certificate from another CA, or an
/// expired one, fails the handshake. HTTP/1.1 only (what registry clients speak).
pub fn optional_mtls_server_config(
    ca_cert_pem: &str,
    server: &Credential,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut cfg = Arc::unwrap_or_clone(rustls_server(ca_cert_pem, server, true)?);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

fn rustls_server(
    ca_cert_pem: &str,
    server: &Credential,
    optional: bool,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let builder = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots(ca_cert_pem)?,
        ring_provider(),
    );
    let builder = if optional {
        builder.allow_unauthenticated()
    } else {
        builder
    };
    let verifier = builder
        .build()
        .map_err(|e| TlsError::Rejected(e.to_string()))?;
    let cfg = rustls::ServerConfig::builder_with_provider(ring_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rejected(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            parse_chain(&server.cert_pem, "server certificate")?,
            parse_key(&server.key_pem)?,
        )
        .map_err(|e| TlsError::Rejected(e.to_string()))?;
    Ok(Arc::new(cfg))
}

/// The API port's rustls server (gRPC and the Kubernetes REST API on one listener): like
/// [`api_server_tls_config`] — client certificates verified against the CA when offered,
/// optional so a joiner can bootstrap — with ALPN `h2` (gRPC, kubectl) then `http/1.1`
/// (curl, WebSocket upgrades).
pub fn api_port_server_config(
    ca_cert_pem: &str,
    server: &Credential,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut cfg = Arc::unwrap_or_clone(rustls_server(ca_cert_pem, server, true)?);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A rustls client that trusts only the CA and presents no certificate (a push-token client
/// of the registry).
pub fn ca_client_config(ca_cert_pem: &str) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let cfg = rustls::ClientConfig::builder_with_provider(ring_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rejected(e.to_string()))?
        .with_root_certificates(roots(ca_cert_pem)?)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// The TLS server name to verify for a `HOST:PORT` address (an IPv6 host in brackets): what
/// a client of an agent or an API server passes to `TlsConnector::connect`.
pub fn server_name(addr: &str) -> Result<rustls::pki_types::ServerName<'static>, TlsError> {
    let host = addr
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
        .unwrap_or(addr);
    rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| TlsError::Invalid {
        what: "server address".into(),
        reason: format!("{host:?}: {e}"),
    })
}

/// A rustls client that trusts only the CA and presents the credential.
pub fn mtls_client_config(tls: &ClientTls) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let cfg = rustls::ClientConfig::builder_with_provider(ring_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rejected(e.to_string()))?
        .with_root_certificates(roots(&tls.ca_cert_pem)?)
        .with_client_auth_cert(
            parse_chain(&tls.credential.cert_pem, "client certificate")?,
            parse_key(&tls.credential.key_pem)?,
        )
        .map_err(|e| TlsError::Rejected(e.to_string()))?;
    Ok(Arc::new(cfg))
}

/// Server side of the API port: present `server` (its chain: certificate then CA), and verify
/// any client certificate against the CA, but let clients without one finish the handshake so
/// that a joiner can present its join token (`Bootstrap`). Every other RPC rejects a caller
/// without a verified certificate (UNAUTHENTICATED). A certificate from another CA, or an
/// expired one, fails the handshake.
pub fn api_server_tls_config(
    ca_cert_pem: &str,
    server: &Credential,
) -> tonic::transport::ServerTlsConfig {
    mutual_server_tls(ca_cert_pem, server, true).timeout(Duration::from_secs(10))
}

/// Server side of mutual TLS: present `server`, require a client certificate issued by the CA
/// in `ca_cert_pem`.
pub fn server_tls_config(
    ca_cert_pem: &str,
    server: &Credential,
) -> tonic::transport::ServerTlsConfig {
    mutual_server_tls(ca_cert_pem, server, false)
}

/// The server identity plus client certificates verified against the CA; `optional` lets a
/// client without a certificate finish the handshake.
fn mutual_server_tls(
    ca_cert_pem: &str,
    server: &Credential,
    optional: bool,
) -> tonic::transport::ServerTlsConfig {
    tonic::transport::ServerTlsConfig::new()
        .identity(server.tonic_identity())
        .client_ca_root(tonic::transport::Certificate::from_pem(ca_cert_pem))
        .client_auth_optional(optional)
}

/// Client side of mutual TLS: trust only the CA in `ca_cert_pem`, present `client`, expect the
/// server's certificate to name `server_name` (an IP address or DNS name in its SANs).
pub fn client_tls_config(
    ca_cert_pem: &str,
    client: &Credential,
    server_name: &str,
) -> tonic::transport::ClientTlsConfig {
    tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca_cert_pem))
        .identity(client.tonic_identity())
        .domain_name(server_name)
}

pub(crate) fn ring_provider() -> Arc<rustls::crypto::CryptoProvider> {
    install_default_provider();
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Make ring the process-wide rustls provider (once), so clients built without Berth's own
/// TLS settings (a plain-HTTP reqwest client, which still builds a rustls config) do not panic
/// with "No provider set". Every Berth TLS config already names ring explicitly.
pub fn install_default_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::CryptoProvider::install_default(
            rustls::crypto::ring::default_provider(),
        );
    });
}
