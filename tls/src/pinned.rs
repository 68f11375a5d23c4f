//! The joiner's first connection: before it has a certificate or the cluster CA, a server or
//! agent joining with `--token` dials a server over TLS and trusts it only if the chain the
//! server presents contains a CA certificate whose SHA-256 is the fingerprint in the token,
//! and the server's own certificate verifies against that CA for the address dialed (k3s'
//! "CA hash" pinning). Nothing is sent before that check passes, so a man in the middle
//! never sees the token's secret.
//!
//! [`pinned_channel`] gives a tonic [`Channel`] over such connections (a custom connector:
//! TCP, then a rustls handshake with [`PinnedCaVerifier`]).

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tonic::transport::{Channel, Endpoint, Uri};

use berth_proto::pb::{self, api_client::ApiClient};

use crate::ca::fingerprint_of;
use crate::config::ring_provider;
use crate::token::hex;
use crate::{JoinToken, TlsError};

#[derive(Debug)]
struct NotPinnedCa(String);

impl std::fmt::Display for NotPinnedCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotPinnedCa {}

/// Accepts a server whose presented chain holds the pinned CA and whose certificate verifies
/// against it.
#[derive(Debug)]
pub struct PinnedCaVerifier {
    fingerprint: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl PinnedCaVerifier {
    pub fn new(fingerprint: [u8; 32]) -> PinnedCaVerifier {
        PinnedCaVerifier {
            fingerprint,
            provider: ring_provider(),
        }
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates
            .iter()
            .find(|c| fingerprint_of(c) == self.fingerprint)
        else {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(NotPinnedCa(
                    format!(
                        "the server's certificate chain does not contain the cluster CA named \
                         by the join token (fingerprint {}): the token is for another cluster, \
                         or this is not a Berth server",
                        hex(&self.fingerprint)
                    ),
                )))),
            ));
        };
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|e| rustls::Error::General(format!("the pinned CA is unusable: {e}")))?;
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn client_config(fingerprint: [u8; 32]) -> Result<rustls::ClientConfig, TlsError> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(ring_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rejected(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCaVerifier::new(fingerprint)))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

/// A channel to `addr` (`HOST:PORT`) whose connections trust only a server presenting the CA
/// with this fingerprint (see the module docs). Connects lazily.
pub fn pinned_channel(
    addr: &str,
    fingerprint: [u8; 32],
    connect_timeout: Duration,
) -> Result<Channel, TlsError> {
    let bad = |reason: String| TlsError::Invalid {
        what: "server address".into(),
        reason,
    };
    let (host, _port) = addr
        .rsplit_once(':')
        .filter(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        .ok_or_else(|| bad(format!("{addr:?} is not HOST:PORT")))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let server_name = ServerName::try_from(host.clone())
        .map_err(|e| bad(format!("{host:?}: {e}")))?
        .to_owned();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(fingerprint)?));
    let target = addr.to_string();
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| bad(format!("{addr:?}: {e}")))?
        .connect_timeout(connect_timeout)
        .timeout(Duration::from_secs(30));
    let service = tower::service_fn(move |_: Uri| {
        let connector = connector.clone();
        let server_name = server_name.clone();
        let target = target.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(&target).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(server_name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(service))
}

/// Present `req` with `token` to each server in turn (each over a connection pinned to the
/// token's CA) until one signs it, and check that the CA it hands back is the token's.
/// Retried for up to 30 s (servers may be starting); a refused token is final.
pub async fn bootstrap(
    servers: &[String],
    token: &JoinToken,
    mut req: pb::BootstrapRequest,
) -> Result<pb::BootstrapResponse, TlsError> {
    req.token = token.reveal();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut failures: Vec<String> = Vec::new();
    loop {
        failures.clear();
        for server in servers {
            let server = server
                .trim()
                .trim_start_matches("https://")
                .trim_start_matches("http://");
            let channel =
                match pinned_channel(server, token.ca_fingerprint(), Duration::from_secs(3)) {
                    Ok(c) => c,
                    Err(e) => return Err(TlsError::Bootstrap(format!("{server}: {e}"))),
                };
            match ApiClient::new(channel).bootstrap(req.clone()).await {
                Ok(resp) => {
                    let resp = resp.into_inner();
                    token
                        .verify_ca(&resp.ca_certificate_pem)
                        .map_err(|e| TlsError::Bootstrap(format!("{server}: {e}")))?;
                    return Ok(resp);
                }
                Err(s)
                    if matches!(
                        s.code(),
                        tonic::Code::Unauthenticated
                            | tonic::Code::InvalidArgument
                            | tonic::Code::PermissionDenied
                    ) =>
                {
                    return Err(TlsError::Bootstrap(format!("{server}: {}", s.message())));
                }
                Err(s) => {
                    let reason = crate::innermost_cause(&s);
                    if reason.contains("join token") {
                        return Err(TlsError::Bootstrap(format!("{server}: {reason}")));
                    }
                    failures.push(format!("{server}: {reason}"));
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(TlsError::Bootstrap(failures.join("; ")));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
