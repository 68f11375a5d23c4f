//! Who a certificate speaks for: [`Identity`] and reading it from a certificate or a peer.

use std::fmt;

use rustls::pki_types::CertificateDer;

use crate::TlsError;

/// Prefix of node identities: `system:node:NAME`.
pub const NODE_PREFIX: &str = "system:node:";
/// The identity of API servers (Raft peers, forwarded requests, the control loops).
pub const SERVER_IDENTITY: &str = "system:server";

/// Who a client certificate speaks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// The cluster administrator: may do everything.
    Admin,
    /// An API server (`system:server`): Raft traffic, forwarded requests, control loops.
    Server,
    /// An agent: `system:node:NAME`.
    Node(String),
    /// A pipeline's API bearer token (`berth token create`): `token:NAME`, or
    /// `token:NAME:read-only`. Never in a certificate; a server sets it after checking the
    /// token, and forwards it to the leader like any other caller.
    Token { name: String, read_only: bool },
}

/// Prefix of token identities: `token:NAME[:read-only]`.
pub const API_TOKEN_IDENTITY_PREFIX: &str = "token:";

impl Identity {
    /// Parse `admin` or `system:node:NAME` (NAME non-empty, no further ':').
    pub fn parse(s: &str) -> Result<Identity, TlsError> {
        if s == "admin" {
            return Ok(Identity::Admin);
        }
        if s == SERVER_IDENTITY {
            return Ok(Identity::Server);
        }
        if let Some(rest) = s.strip_prefix(API_TOKEN_IDENTITY_PREFIX) {
            let (name, read_only) = match rest.strip_suffix(":read-only") {
                Some(n) => (n, true),
                None => (rest, false),
            };
            if !name.is_empty() && !name.contains(':') {
                return Ok(Identity::Token {
                    name: name.to_string(),
                    read_only,
                });
            }
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
            Identity::Token {
                name,
                read_only: false,
            } => write!(f, "{API_TOKEN_IDENTITY_PREFIX}{name}"),
            Identity::Token {
                name,
                read_only: true,
            } => write!(f, "{API_TOKEN_IDENTITY_PREFIX}{name}:read-only"),
        }
    }
}

/// The identity a server's TLS layer verified for a connection, attached to each of its
/// requests as an extension (see [`peer_identity`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedPeer(pub Identity);

/// The identity of a verified peer certificate chain (rustls' `peer_certificates()`).
pub fn identity_of_peer(certs: Option<&[CertificateDer<'_>]>) -> Option<Identity> {
    identity_of_cert(certs?.first()?).ok()
}

/// The identity of a request's verified client certificate (its subject common name), if the
/// connection is TLS with a client certificate whose name is an [`Identity`].
///
/// A request served by Berth's own accept loop (the API port's shared gRPC + Kubernetes REST
/// listener) carries the identity as a [`VerifiedPeer`] extension instead; extensions are set
/// by the server only, never read from the wire.
pub fn peer_identity<T>(req: &tonic::Request<T>) -> Option<Identity> {
    if let Some(VerifiedPeer(id)) = req.extensions().get::<VerifiedPeer>() {
        return Some(id.clone());
    }
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
