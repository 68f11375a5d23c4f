//! The client's error type and the ONE place that maps gRPC statuses to it.
//!
//! The API server maps its store errors to gRPC codes (NotFound, AlreadyExists,
//! Aborted = resourceVersion conflict, InvalidArgument/FailedPrecondition = invalid,
//! OutOfRange = watch revision compacted, Unavailable = not leader or down); [`from_status`]
//! is the inverse, so every caller matches on [`ClientError`] variants, never on codes.

use tonic::{Code, Status};

/// Metadata key a follower may set on an `Unavailable` reply to name the current leader.
pub const LEADER_HINT_KEY: &str = "berth-leader";
/// Metadata key the server sets (to "unknown") on a reply to a write whose outcome it cannot
/// know: the leader changed while it was in flight.
pub const OUTCOME_KEY: &str = "berth-outcome";

/// What went wrong with a request to the Berth API.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ClientError {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// A compare-and-swap on resourceVersion lost: someone else wrote the object first.
    #[error("conflict: {message}")]
    Conflict {
        expected: u64,
        actual: u64,
        message: String,
    },
    /// The server rejected the object or the request (validation, failed precondition).
    #[error("invalid: {0}")]
    Invalid(String),
    /// A watch asked for a revision older than the server keeps; relist and watch again.
    #[error("watch revision expired: {0}")]
    Expired(String),
    /// No server could serve the request before the deadline.
    #[error("cannot reach any Berth server (tried {tried})")]
    Unavailable { tried: String },
    /// No answer in time: for a write, it may or may not have been applied (re-read to
    /// find out; CAS preconditions make a blind retry safe).
    #[error("timed out: {0}")]
    Timeout(String),
    /// The connection to the server (or the server's to the leader) broke after the write
    /// was sent, or the leader changed under it: it may or may not have been applied. Every
    /// Berth write is safe to repeat (apply is idempotent; a CAS or create fails cleanly if
    /// the first attempt did land), so the fix is to run the command again. The CLI exits 3.
    #[error(
        "outcome unknown: the leader changed while this write was in flight; it is safe to \
         apply again ({0})"
    )]
    OutcomeUnknown(String),
    /// One object of an all-or-nothing write that was fine itself but was not applied because
    /// another object of the same write was rejected.
    #[error("{0}")]
    NotApplied(String),
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The server's reply could not be decoded (a version mismatch or a server bug).
    #[error("cannot decode server reply: {0}")]
    Decode(String),
    /// The endpoint list was unusable (empty, or an address that is not host:port).
    #[error("bad server address: {0}")]
    Config(String),
    #[error("server error ({code:?}): {message}")]
    Other { code: Code, message: String },
}

impl ClientError {
    /// Errors that a retry against another server (or later) may fix.
    pub fn is_transient(&self) -> bool {
        matches!(self, ClientError::Unavailable { .. })
    }
}

/// Map a gRPC status from the server to a [`ClientError`].
pub fn from_status(status: &Status) -> ClientError {
    let message = status.message().to_string();
    if status
        .metadata()
        .get(OUTCOME_KEY)
        .and_then(|v| v.to_str().ok())
        == Some("unknown")
    {
        return ClientError::OutcomeUnknown(message);
    }
    match status.code() {
        Code::NotFound => ClientError::NotFound(message),
        Code::AlreadyExists => ClientError::AlreadyExists(message),
        Code::Aborted => {
            let (expected, actual) = parse_conflict(&message).unwrap_or((0, 0));
            ClientError::Conflict {
                expected,
                actual,
                message,
            }
        }
        Code::InvalidArgument | Code::FailedPrecondition => ClientError::Invalid(message),
        // tonic's own limit on a reply is OutOfRange too: that is not an expired watch.
        Code::OutOfRange if message.contains("message length too large") => {
            ClientError::Decode(message)
        }
        Code::OutOfRange => ClientError::Expired(message),
        Code::Unavailable => ClientError::Unavailable { tried: message },
        Code::DeadlineExceeded => ClientError::Timeout(message),
        Code::PermissionDenied | Code::Unauthenticated => ClientError::PermissionDenied(message),
        code => ClientError::Other { code, message },
    }
}

/// What the failover loop should do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// The request certainly did not take effect (not leader, no leader yet, connection
    /// refused or torn down): try another server.
    Always,
    /// No answer in time (our per-attempt timeout, or the server's DEADLINE_EXCEEDED when a
    /// raft proposal timed out): the outcome is unknown, so only reads are retried.
    IfIdempotent,
    /// The connection broke after the request was sent (or the server's forwarded request to
    /// the leader did): reads are retried, a write answers [`ClientError::OutcomeUnknown`].
    BrokenInFlight,
    /// A real answer: report it.
    Never,
}

/// Classify a failed attempt. Unavailable covers "not leader", "no leader yet" and connect
/// failures (tonic maps those to Unavailable; an h2 REFUSED_STREAM too: never processed);
/// a per-attempt timeout surfaces as Cancelled with a `TimeoutExpired` source; a request
/// hyper dropped before sending it (the connection was already gone) as Cancelled with a
/// transport cause; a connection torn down while the request was out as Unknown (or
/// Internal) with an h2/transport error as cause, or, when a follower's forward to the
/// leader broke, with that error's text in the message. The server marks a write the leader
/// change left undecided with `berth-outcome: unknown`.
pub(crate) fn retry_class(status: &Status) -> Retry {
    match status.code() {
        _ if status.metadata().contains_key(OUTCOME_KEY) => Retry::BrokenInFlight,
        Code::Unavailable => Retry::Always,
        Code::DeadlineExceeded => Retry::IfIdempotent,
        Code::Cancelled | Code::Unknown if is_timeout(status) => Retry::IfIdempotent,
        Code::Cancelled if has_transport_cause(status) => Retry::Always,
        Code::Unknown | Code::Internal if has_transport_cause(status) => Retry::BrokenInFlight,
        _ => Retry::Never,
    }
}

/// Did our own per-attempt timeout fire?
pub(crate) fn is_timeout(status: &Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(err) = source {
        if err.downcast_ref::<tonic::TimeoutExpired>().is_some() {
            return true;
        }
        source = err.source();
    }
    status.code() == Code::Cancelled && status.message().contains("Timeout expired")
}

fn has_transport_cause(status: &Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(err) = source {
        if err.downcast_ref::<tonic::transport::Error>().is_some()
            || err.downcast_ref::<std::io::Error>().is_some()
        {
            return true;
        }
        source = err.source();
    }
    let m = status.message();
    m.contains("transport error") || m.contains("h2 protocol error")
}

/// The leader address a follower named in its reply, if any.
pub(crate) fn leader_hint(status: &Status) -> Option<String> {
    let v = status
        .metadata()
        .get(LEADER_HINT_KEY)?
        .to_str()
        .ok()?
        .trim();
    (!v.is_empty()).then(|| v.to_string())
}

/// The leader a follower named on a write it forwarded successfully.
pub(crate) fn success_leader_hint(md: &tonic::metadata::MetadataMap) -> Option<String> {
    let v = md.get(LEADER_HINT_KEY)?.to_str().ok()?.trim();
    (!v.is_empty()).then(|| v.to_string())
}

/// Parse the server's "expected resourceVersion X, actual Y" conflict message.
fn parse_conflict(message: &str) -> Option<(u64, u64)> {
    let after = |key: &str| -> Option<u64> {
        let i = message.find(key)? + key.len();
        let digits: String = message[i..]
            .trim_start()
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        digits.parse().ok()
    };
    Some((after("expected resourceVersion")?, after("actual")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aborted_maps_to_conflict_with_versions() {
        let e = from_status(&Status::aborted(
            "deployment default/web: expected resourceVersion 12, actual 15",
        ));
        match e {
            ClientError::Conflict {
                expected, actual, ..
            } => assert_eq!((expected, actual), (12, 15)),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn codes_map_to_variants() {
        assert!(matches!(
            from_status(&Status::not_found("x")),
            ClientError::NotFound(_)
        ));
        assert!(matches!(
            from_status(&Status::already_exists("x")),
            ClientError::AlreadyExists(_)
        ));
        assert!(matches!(
            from_status(&Status::invalid_argument("x")),
            ClientError::Invalid(_)
        ));
        assert!(matches!(
            from_status(&Status::failed_precondition("x")),
            ClientError::Invalid(_)
        ));
        assert!(matches!(
            from_status(&Status::out_of_range("x")),
            ClientError::Expired(_)
        ));
        assert!(matches!(
            from_status(&Status::permission_denied("x")),
            ClientError::PermissionDenied(_)
        ));
        assert!(matches!(
            from_status(&Status::internal("x")),
            ClientError::Other {
                code: Code::Internal,
                ..
            }
        ));
    }

    #[test]
    fn unavailable_is_retried_timeouts_only_for_reads_answers_never() {
        assert_eq!(
            retry_class(&Status::unavailable("not leader")),
            Retry::Always
        );
        assert_eq!(
            retry_class(&Status::deadline_exceeded("proposal timed out")),
            Retry::IfIdempotent
        );
        assert_eq!(
            retry_class(&Status::cancelled("Timeout expired")),
            Retry::IfIdempotent
        );
        assert_eq!(retry_class(&Status::not_found("x")), Retry::Never);
        assert_eq!(
            retry_class(&Status::cancelled("client went away")),
            Retry::Never
        );
        assert!(matches!(
            from_status(&Status::deadline_exceeded("x")),
            ClientError::Timeout(_)
        ));
    }

    #[test]
    fn a_write_cut_in_flight_is_outcome_unknown_not_retried_and_not_h2_unknown() {
        let mut marked = Status::unknown("the connection to the leader broke");
        marked
            .metadata_mut()
            .insert(OUTCOME_KEY, "unknown".parse().expect("ascii"));
        assert_eq!(retry_class(&marked), Retry::BrokenInFlight);
        let e = from_status(&marked);
        assert!(matches!(e, ClientError::OutcomeUnknown(_)), "{e:?}");
        assert!(e.to_string().starts_with(
            "outcome unknown: the leader changed while this write was in flight; it is safe to \
             apply again"
        ));
        let cut = Status::unknown("h2 protocol error: connection reset");
        assert_eq!(retry_class(&cut), Retry::BrokenInFlight);
        assert_eq!(
            retry_class(&Status::unknown("a handler's own error")),
            Retry::Never
        );
    }

    #[test]
    fn leader_named_on_a_forwarded_success_is_read_from_metadata() {
        let mut md = tonic::metadata::MetadataMap::new();
        assert_eq!(success_leader_hint(&md), None);
        md.insert(LEADER_HINT_KEY, "127.0.0.1:7441".parse().expect("ascii"));
        assert_eq!(success_leader_hint(&md).as_deref(), Some("127.0.0.1:7441"));
    }

    #[test]
    fn leader_hint_is_read_from_metadata() {
        let mut s = Status::unavailable("not leader");
        s.metadata_mut()
            .insert(LEADER_HINT_KEY, "127.0.0.1:7441".parse().expect("ascii"));
        assert_eq!(leader_hint(&s).as_deref(), Some("127.0.0.1:7441"));
        assert_eq!(leader_hint(&Status::unavailable("x")), None);
    }
}
