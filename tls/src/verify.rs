//! Certificate checks at a given time (rustls' webpki verifiers), for tests and tools.

use std::time::{Duration, SystemTime};

use rustls::pki_types::{ServerName, UnixTime};

use crate::config::ring_provider;
use crate::pem::{first_cert_der, roots};
use crate::{identity_of_cert, Identity, TlsError};

fn unix_time(at: SystemTime) -> UnixTime {
    UnixTime::since_unix_epoch(
        at.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO),
    )
}

/// Check, at time `at`, that `cert_pem` is a server certificate for `server_name` issued by
/// the CA in `ca_cert_pem`.
pub fn verify_server_cert(
    ca_cert_pem: &str,
    cert_pem: &str,
    server_name: &str,
    at: SystemTime,
) -> Result<(), TlsError> {
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        roots(ca_cert_pem)?,
        ring_provider(),
    )
    .build()
    .map_err(|e| TlsError::Rejected(e.to_string()))?;
    let name = ServerName::try_from(server_name.to_string()).map_err(|e| TlsError::Invalid {
        what: "server name".into(),
        reason: format!("{server_name:?}: {e}"),
    })?;
    let cert = first_cert_der(cert_pem, "server certificate")?;
    use rustls::client::danger::ServerCertVerifier;
    verifier
        .verify_server_cert(&cert, &[], &name, &[], unix_time(at))
        .map(|_| ())
        .map_err(|e| TlsError::Rejected(e.to_string()))
}

/// Check, at time `at`, that `cert_pem` is a client certificate issued by the CA in
/// `ca_cert_pem`; returns the identity it names.
pub fn verify_client_cert(
    ca_cert_pem: &str,
    cert_pem: &str,
    at: SystemTime,
) -> Result<Identity, TlsError> {
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots(ca_cert_pem)?,
        ring_provider(),
    )
    .build()
    .map_err(|e| TlsError::Rejected(e.to_string()))?;
    let cert = first_cert_der(cert_pem, "client certificate")?;
    verifier
        .verify_client_cert(&cert, &[], unix_time(at))
        .map_err(|e| TlsError::Rejected(e.to_string()))?;
    identity_of_cert(&cert)
}
