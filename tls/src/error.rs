//! The crate's error type and the one-line cause of an error chain.

use std::path::Path;

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

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// An error and all its causes, `outer: inner: innermost` (for HTTP client errors, whose
/// outer message alone is "error sending request").
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(err) = source {
        s.push_str(": ");
        s.push_str(&err.to_string());
        source = err.source();
    }
    s
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
