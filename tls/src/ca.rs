//! The cluster certificate authority: generating or loading it, issuing server and client
//! certificates, signing joiners' requests.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::pem::first_cert_der;
use crate::token::hex;
use crate::{Credential, Identity, TlsError};

/// Common name prefix of cluster CAs: `berth-cluster-ca@<unix seconds>-<random>`, unique per
/// cluster so a certificate from another cluster's CA is an unknown issuer, not a bad signature.
pub const CA_COMMON_NAME: &str = "berth-cluster-ca";

/// When a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From an hour ago (clock skew) for `days` days.
    pub fn days(days: i64) -> Validity {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - time::Duration::hours(1),
            not_after: now + time::Duration::days(days),
        }
    }
}

/// Default lifetime of the CA.
pub const CA_VALIDITY_DAYS: i64 = 3650;
/// Default lifetime of issued certificates.
pub const CERT_VALIDITY_DAYS: i64 = 365;

/// The cluster certificate authority.
pub struct ClusterCa {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa")
            .field("fingerprint", &self.fingerprint_hex())
            .finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// A new CA valid for [`CA_VALIDITY_DAYS`].
    pub fn generate() -> Result<ClusterCa, TlsError> {
        ClusterCa::generate_with(Validity::days(CA_VALIDITY_DAYS))
    }

    pub fn generate_with(validity: Validity) -> Result<ClusterCa, TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut nonce = [0u8; 4];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
            .map_err(|_| TlsError::Random)?;
        params.distinguished_name = dn(&format!(
            "{CA_COMMON_NAME}@{}-{}",
            OffsetDateTime::now_utc().unix_timestamp(),
            hex(&nonce)
        ));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        Ok(ClusterCa {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// Load a CA from its certificate and private key (PEM).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<ClusterCa, TlsError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| TlsError::Invalid {
            what: "CA private key".into(),
            reason: e.to_string(),
        })?;
        let cert_der = first_cert_der(cert_pem, "CA certificate")?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).map_err(|e| TlsError::Invalid {
            what: "CA certificate".into(),
            reason: e.to_string(),
        })?;
        Ok(ClusterCa {
            cert_pem: cert_pem.to_string(),
            cert_der,
            key_pem: key_pem.to_string(),
            issuer,
        })
    }

    /// Write `ca.crt` and `ca.key` (0600) under `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), TlsError> {
        Credential {
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
        }
        .write(dir, "ca")
    }

    /// Read what [`ClusterCa::write`] wrote.
    pub fn read(dir: &Path) -> Result<ClusterCa, TlsError> {
        let c = Credential::read(dir, "ca")?;
        ClusterCa::from_pem(&c.cert_pem, &c.key_pem)
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key (PEM): handed only to joining servers, over a verified channel.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// SHA-256 of the CA certificate (DER).
    pub fn fingerprint(&self) -> [u8; 32] {
        fingerprint_of(&self.cert_der)
    }

    pub fn fingerprint_hex(&self) -> String {
        hex(&self.fingerprint())
    }

    /// A server certificate for `addresses` (IP addresses become IP SANs, anything else a
    /// DNS SAN), identity `system:server`, usable for serving and, for server-to-server (Raft)
    /// traffic, as a client.
    pub fn issue_server(&self, addresses: &[String]) -> Result<Credential, TlsError> {
        self.issue_server_with(addresses, Validity::days(CERT_VALIDITY_DAYS))
    }

    pub fn issue_server_with(
        &self,
        addresses: &[String],
        validity: Validity,
    ) -> Result<Credential, TlsError> {
        if addresses.is_empty() {
            return Err(TlsError::Invalid {
                what: "server certificate".into(),
                reason: "at least one address (IP or DNS name) is required".into(),
            });
        }
        let params = cert_params(&Identity::Server, addresses, true, validity)?;
        self.sign(params)
    }

    /// A client certificate whose subject common name is `identity`.
    pub fn issue_client(&self, identity: &Identity) -> Result<Credential, TlsError> {
        self.issue_client_with(identity, Validity::days(CERT_VALIDITY_DAYS))
    }

    pub fn issue_client_with(
        &self,
        identity: &Identity,
        validity: Validity,
    ) -> Result<Credential, TlsError> {
        let params = cert_params(identity, &[], false, validity)?;
        self.sign(params)
    }

    /// Sign a joiner's certificate request for `identity`. Only the request's public key is
    /// used (its signature proves the joiner holds the key); the subject, the SANs
    /// (`addresses`, for a server) and the usages are the CA's choice, never the joiner's.
    /// Returns the certificate followed by the CA certificate (the chain to present).
    pub fn sign_request(
        &self,
        csr_pem: &str,
        identity: &Identity,
        addresses: &[String],
    ) -> Result<String, TlsError> {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
            TlsError::Invalid {
                what: "certificate request".into(),
                reason: e.to_string(),
            }
        })?;
        let serving = *identity == Identity::Server || !addresses.is_empty();
        let params = cert_params(
            identity,
            addresses,
            serving,
            Validity::days(CERT_VALIDITY_DAYS),
        )?;
        let cert = params.signed_by(&csr.public_key, &self.issuer)?;
        Ok(format!("{}{}", cert.pem(), self.cert_pem))
    }

    fn sign(&self, params: CertificateParams) -> Result<Credential, TlsError> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Credential {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Parameters of a leaf certificate for `identity`: client auth always, server auth (with
/// `addresses` as SANs) when `serving`.
fn cert_params(
    identity: &Identity,
    addresses: &[String],
    serving: bool,
    validity: Validity,
) -> Result<CertificateParams, TlsError> {
    let mut params = leaf_params(&identity.to_string(), validity);
    for a in addresses {
        let san = match a.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(a.as_str().try_into().map_err(|e| TlsError::Invalid {
                what: "certificate address".into(),
                reason: format!("{a:?} is neither an IP address nor a DNS name: {e}"),
            })?),
        };
        if !params.subject_alt_names.contains(&san) {
            params.subject_alt_names.push(san);
        }
    }
    params.extended_key_usages = if serving {
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ]
    } else {
        vec![ExtendedKeyUsagePurpose::ClientAuth]
    };
    Ok(params)
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "berth");
    dn
}

fn leaf_params(common_name: &str, validity: Validity) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(common_name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    params
}

pub(crate) fn fingerprint_of(der: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}
