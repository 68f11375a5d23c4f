//! PEM parsing into rustls types, and CA trust anchors.

use std::sync::Arc;

use rustls::pki_types::CertificateDer;

use crate::TlsError;

pub(crate) fn first_cert_der(pem: &str, what: &str) -> Result<CertificateDer<'static>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| TlsError::Invalid {
        what: what.into(),
        reason: format!("no PEM certificate: {e:?}"),
    })
}

pub(crate) fn parse_chain(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
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

pub(crate) fn parse_key(pem: &str) -> Result<rustls::pki_types::PrivateKeyDer<'static>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| {
        TlsError::Invalid {
            what: "private key".into(),
            reason: format!("{e:?}"),
        }
    })
}

pub(crate) fn roots(ca_cert_pem: &str) -> Result<Arc<rustls::RootCertStore>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(first_cert_der(ca_cert_pem, "CA certificate")?)
        .map_err(|e| TlsError::Invalid {
            what: "CA certificate".into(),
            reason: e.to_string(),
        })?;
    Ok(Arc::new(roots))
}
