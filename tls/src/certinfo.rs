//! What the cluster records about a certificate it issued ([`CertInfo`]): its identity, when
//! it was issued and expires, and its key's fingerprint — for `berth certificate list`, node
//! name claims and revocation.

use std::time::{Duration, SystemTime};

use rustls::pki_types::CertificateDer;

use crate::pem::first_cert_der;
use crate::token::hex;
use crate::{Identity, TlsError};

/// How far issued certificates are backdated against clock skew ([`crate::Validity::days`]):
/// a certificate was issued at its notBefore plus this.
pub const BACKDATE: Duration = Duration::from_secs(3600);

/// A certificate's identity, issue and expiry times, and its key's SHA-256 (hex, of the
/// SubjectPublicKeyInfo).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub identity: Identity,
    pub issued: SystemTime,
    pub not_after: SystemTime,
    pub key_sha256: String,
}

fn invalid(what: &str, e: impl std::fmt::Display) -> TlsError {
    TlsError::Invalid {
        what: what.into(),
        reason: e.to_string(),
    }
}

fn at(secs: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64)
}

impl CertInfo {
    /// Of a DER certificate.
    pub fn of_der(der: &CertificateDer<'_>) -> Result<CertInfo, TlsError> {
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|e| invalid("certificate", e))?;
        let identity = crate::identity_of_cert(der)?;
        let v = cert.validity();
        Ok(CertInfo {
            identity,
            issued: at(v.not_before.timestamp()) + BACKDATE,
            not_after: at(v.not_after.timestamp()),
            key_sha256: hex(
                ring::digest::digest(&ring::digest::SHA256, cert.public_key().raw).as_ref(),
            ),
        })
    }

    /// Of the first certificate in a PEM chain.
    pub fn of_pem(pem: &str) -> Result<CertInfo, TlsError> {
        CertInfo::of_der(&first_cert_der(pem, "certificate")?)
    }
}

/// SHA-256 (hex) of the public key in a PEM certificate request: compared with
/// [`CertInfo::key_sha256`] to tell a node renewing its certificate from another claiming
/// its name.
pub fn csr_key_sha256(csr_pem: &str) -> Result<String, TlsError> {
    use x509_parser::prelude::FromDer as _;
    let (_, pem) = x509_parser::pem::parse_x509_pem(csr_pem.as_bytes())
        .map_err(|e| invalid("certificate request", e))?;
    let (_, csr) =
        x509_parser::certification_request::X509CertificationRequest::from_der(&pem.contents)
            .map_err(|e| invalid("certificate request", e))?;
    Ok(hex(ring::digest::digest(
        &ring::digest::SHA256,
        csr.certification_request_info.subject_pki.raw,
    )
    .as_ref()))
}
