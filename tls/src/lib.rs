//! berth-tls: the cluster's PKI and the mutual TLS every Berth connection uses.
//!
//! - [`ClusterCa`]: a self-signed cluster CA (rcgen, ECDSA P-256) that issues
//!   [`Credential`]s: server certificates with SANs for the server's addresses
//!   ([`ClusterCa::issue_server`]) and client certificates whose subject common name is an
//!   [`Identity`], `admin`, `system:server` or `system:node:NAME` ([`ClusterCa::issue_client`]);
//!   [`ClusterCa::sign_request`] signs a joiner's [`CertRequest`] (its key never leaves it).
//! - [`pinned`]: the joiner's first connection, trusting only a server whose chain holds the CA
//!   named by the join token (like k3s' token CA hash).
//! - [`JoinToken`]: `K10<sha256 of the CA certificate, hex>::<secret>` (k3s style). A joiner
//!   checks the CA it is shown against the fingerprint; the server checks the secret in
//!   constant time. Its `Debug` never shows the secret.
//! - Files: [`write_private`] (mode 0600, for keys), [`create_private_dir`] (0700) and
//!   [`AdminConfig`] (CA + admin credential + server addresses, a kubeconfig-like YAML, 0600).
//! - tonic: [`server_tls_config`] (client certificates from the CA required) and
//!   [`client_tls_config`]; [`peer_identity`] reads the caller's identity from a request.
//! - [`verify_server_cert`] / [`verify_client_cert`]: rustls' webpki checks at a given time.
//!
//! Crypto is rustls with the ring provider (no aws-lc, so no cmake).

use std::fmt;
use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

pub mod pinned;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Common name prefix of cluster CAs: `berth-cluster-ca@<unix seconds>-<random>`, unique per
/// cluster so a certificate from another cluster's CA is an unknown issuer, not a bad signature.
pub const CA_COMMON_NAME: &str = "berth-cluster-ca";
/// Prefix of node identities: `system:node:NAME`.
pub const NODE_PREFIX: &str = "system:node:";
/// The identity of API servers (Raft peers, forwarded requests, the control loops).
pub const SERVER_IDENTITY: &str = "system:server";
/// Prefix of every join token.
pub const TOKEN_PREFIX: &str = "K10";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("invalid {what}: {reason}")]
    Invalid { what: String, reason: String },
    #[error("certificate rejected: {0}")]
    Rejected(String),
    #[error("invalid join token: {0}")]
    BadToken(String),
    #[error("the join token's secret does not match this cluster's")]
    WrongSecret,
    #[error(
        "the join token does not match the server's cluster CA (fingerprint {actual}); \
         check that the token comes from this cluster"
    )]
    WrongCa { actual: String },
    #[error("{0}")]
    Bootstrap(String),
    #[error("the system random number generator failed")]
    Random,
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Who a client certificate speaks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// The cluster administrator: may do everything.
    Admin,
    /// An API server (`system:server`): Raft traffic, forwarded requests, control loops.
    Server,
    /// An agent: `system:node:NAME`.
    Node(String),
}

impl Identity {
    /// Parse `admin` or `system:node:NAME` (NAME non-empty, no further ':').
    pub fn parse(s: &str) -> Result<Identity, TlsError> {
        if s == "admin" {
            return Ok(Identity::Admin);
        }
        if s == SERVER_IDENTITY {
            return Ok(Identity::Server);
        }
        match s.strip_prefix(NODE_PREFIX) {
            Some(name) if !name.is_empty() && !name.contains(':') => {
                Ok(Identity::Node(name.to_string()))
            }
            _ => Err(TlsError::Invalid {
                what: "identity".into(),
                reason: format!(
                    "{s:?}: expected \"admin\", \"{SERVER_IDENTITY}\" or \"{NODE_PREFIX}NAME\""
                ),
            }),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Admin => f.write_str("admin"),
            Identity::Server => f.write_str(SERVER_IDENTITY),
            Identity::Node(n) => write!(f, "{NODE_PREFIX}{n}"),
        }
    }
}

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

/// A certificate and its private key, both PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
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

/// A key pair and a certificate request for it, made by a joiner: the request goes to the
/// server, the key stays here.
pub struct CertRequest {
    pub key_pem: String,
    pub csr_pem: String,
}

impl fmt::Debug for CertRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertRequest")
            .field("csr_pem", &self.csr_pem)
            .field("key_pem", &"<redacted>")
            .finish()
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

    /// The credential once the server has signed the request.
    pub fn into_credential(self, cert_pem: String) -> Credential {
        Credential {
            cert_pem,
            key_pem: self.key_pem,
        }
    }
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

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
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

pub(crate) fn first_cert_der(pem: &str, what: &str) -> Result<CertificateDer<'static>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| TlsError::Invalid {
        what: what.into(),
        reason: format!("no PEM certificate: {e:?}"),
    })
}

/// The innermost cause of an error chain (a TLS alert or "connection refused" rather than
/// tonic's "transport error"), for one-line messages.
pub fn innermost_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e.to_string();
    let mut source = e.source();
    while let Some(err) = source {
        last = err.to_string();
        source = err.source();
    }
    last
}

/// A secret given on the command line or in the environment (a join token): `Debug` and
/// `Display` never show it, so logging the flags cannot leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    /// The secret itself: pass it on, never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Secret, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

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
        use ring::rand::SecureRandom;
        let mut secret = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut secret)
            .map_err(|_| TlsError::Random)?;
        Ok(JoinToken {
            ca_fingerprint: ca.fingerprint(),
            secret: hex(&secret),
        })
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

/// Create `path` (and parents) with mode 0700 on the last component; tighten it to 0700 if
/// it already exists.
pub fn create_private_dir(path: &Path) -> Result<(), TlsError> {
    std::fs::create_dir_all(path).map_err(io_err(path))?;
    set_mode(path, 0o700)
}

/// Write `contents` to `path` readable by its owner only (0600), also when it already existed.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), TlsError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    // An existing file keeps its mode on open: tighten it before writing the secret.
    if path.exists() {
        set_mode(path, 0o600)?;
    }
    let mut f = opts.open(path).map_err(io_err(path))?;
    f.write_all(contents).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), TlsError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(io_err(path))?;
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

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
        let text = serde_yaml::to_string(self).map_err(|e| TlsError::Invalid {
            what: "admin config".into(),
            reason: e.to_string(),
        })?;
        write_private(path, text.as_bytes())
    }

    pub fn read(path: &Path) -> Result<AdminConfig, TlsError> {
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        serde_yaml::from_str(&text).map_err(|e| TlsError::Invalid {
            what: format!("admin config {}", path.display()),
            reason: e.to_string(),
        })
    }
}

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

fn parse_chain(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    let chain = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid {
            what: what.into(),
            reason: format!("{e:?}"),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Invalid {
            what: what.into(),
            reason: "no PEM certificate".into(),
        });
    }
    Ok(chain)
}

fn parse_key(pem: &str) -> Result<rustls::pki_types::PrivateKeyDer<'static>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| {
        TlsError::Invalid {
            what: "private key".into(),
            reason: format!("{e:?}"),
        }
    })
}

/// A rustls server that presents `server` and requires a client certificate from the CA
/// (for servers that are not tonic, like the agent's logs API).
pub fn mtls_server_config(
    ca_cert_pem: &str,
    server: &Credential,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots(ca_cert_pem)?,
        ring_provider(),
    )
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

/// The identity of a verified peer certificate chain (rustls' `peer_certificates()`).
pub fn identity_of_peer(certs: Option<&[CertificateDer<'_>]>) -> Option<Identity> {
    identity_of_cert(certs?.first()?).ok()
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
    tonic::transport::ServerTlsConfig::new()
        .identity(server.tonic_identity())
        .client_ca_root(tonic::transport::Certificate::from_pem(ca_cert_pem))
        .client_auth_optional(true)
        .timeout(Duration::from_secs(10))
}

/// Server side of mutual TLS: present `server`, require a client certificate issued by the CA
/// in `ca_cert_pem`.
pub fn server_tls_config(
    ca_cert_pem: &str,
    server: &Credential,
) -> tonic::transport::ServerTlsConfig {
    tonic::transport::ServerTlsConfig::new()
        .identity(server.tonic_identity())
        .client_ca_root(tonic::transport::Certificate::from_pem(ca_cert_pem))
        .client_auth_optional(false)
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

/// The identity of a request's verified client certificate (its subject common name), if the
/// connection is TLS with a client certificate whose name is an [`Identity`].
pub fn peer_identity<T>(req: &tonic::Request<T>) -> Option<Identity> {
    let certs = req.peer_certs()?;
    let leaf = certs.first()?;
    identity_of_cert(leaf).ok()
}

/// The [`Identity`] named by a certificate's subject common name.
pub fn identity_of_cert(der: &CertificateDer<'_>) -> Result<Identity, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| TlsError::Invalid {
        what: "certificate".into(),
        reason: e.to_string(),
    })?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or_else(|| TlsError::Invalid {
            what: "certificate".into(),
            reason: "no subject common name".into(),
        })?;
    Identity::parse(cn)
}

pub(crate) fn ring_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca_cert_pem: &str) -> Result<Arc<rustls::RootCertStore>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(first_cert_der(ca_cert_pem, "CA certificate")?)
        .map_err(|e| TlsError::Invalid {
            what: "CA certificate".into(),
            reason: e.to_string(),
        })?;
    Ok(Arc::new(roots))
}

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
