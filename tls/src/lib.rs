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

mod admin;
mod ca;
mod certinfo;
mod config;
mod credential;
mod error;
mod files;
mod identity;
mod pem;
pub mod pinned;
mod secret;
mod token;
mod verify;

pub use admin::AdminConfig;
pub use ca::{ClusterCa, Validity, CA_COMMON_NAME, CA_VALIDITY_DAYS, CERT_VALIDITY_DAYS};
pub use certinfo::{csr_key_sha256, CertInfo, BACKDATE};
pub use config::{
    api_port_server_config, api_server_tls_config, ca_client_config, client_tls_config, endpoint,
    install_default_provider, mtls_client_config, mtls_server_config, optional_mtls_server_config,
    server_name, server_tls_config, ClientTls,
};
pub use credential::{CertRequest, Credential};
pub use error::{error_chain, innermost_cause, TlsError};
pub use files::{create_private_dir, write_private};
pub use identity::{
    identity_of_cert, identity_of_peer, peer_identity, Identity, VerifiedPeer,
    API_TOKEN_IDENTITY_PREFIX, NODE_PREFIX, SERVER_IDENTITY,
};
pub use secret::Secret;
pub use token::{fingerprint_of_pem, JoinToken, TOKEN_PREFIX};
pub use verify::{verify_client_cert, verify_server_cert};
