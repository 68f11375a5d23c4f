//! THE mapping from server errors to gRPC status codes (the client maps back; keep the two in
//! step). Messages are the errors' `Display`: what was wrong and what to do.
//!
//! | error                                   | gRPC code           | notes                          |
//! |-----------------------------------------|---------------------|--------------------------------|
//! | `StoreError::NotFound`                  | NOT_FOUND           |                                |
//! | `StoreError::AlreadyExists`             | ALREADY_EXISTS      |                                |
//! | `StoreError::Conflict`                  | ABORTED             | "expected resourceVersion X, actual Y"; metadata `berth-actual-resource-version` |
//! | `StoreError::Invalid` / validation      | INVALID_ARGUMENT    | every field error, `path: msg; ...` |
//! | `StoreError::TooLarge`                  | INVALID_ARGUMENT    | size and limit in the message  |
//! | `StoreError::NodePort`                  | INVALID_ARGUMENT    | port taken / out of range      |
//! | `StoreError::NodePortsExhausted`        | RESOURCE_EXHAUSTED  |                                |
//! | `StoreError::NotApplied`                | FAILED_PRECONDITION | atomic batch: another op failed; `BatchResult.rolled_back` |
//! | `StoreError::Expired`                   | OUT_OF_RANGE        | message starts with "Expired:"; relist |
//! | `StoreError::Forbidden`                 | PERMISSION_DENIED   | node authorizer, at apply time |
//! | `StoreError::NamespaceNotFound`         | NOT_FOUND           | `namespaces "x" not found: ...` |
//! | `StoreError::NamespaceTerminating`      | PERMISSION_DENIED   | Kubernetes' message            |
//! | authorization (`crate::authz`)          | PERMISSION_DENIED   | names the identity and action  |
//! | no client certificate                   | UNAUTHENTICATED     | says which credential to use   |
//! | `StoreError::Storage` / `BadCommand`    | INTERNAL            |                                |
//! | `RaftError::NotLeader`                  | UNAVAILABLE         | metadata `berth-leader` = leader address (if known), `berth-leader-id` |
//! | `RaftError::Dropped` / `Stopped`        | UNAVAILABLE         | retry (on another server)      |
//! | `RaftError::ConfChangeInProgress`       | UNAVAILABLE         | retry later                    |
//! | `RaftError::Timeout`                    | DEADLINE_EXCEEDED   | outcome of a write unknown     |
//! | `RaftError::OutcomeUnknown`             | INTERNAL            | metadata `berth-outcome: unknown` |
//! | forwarded write, leader connection broke | UNKNOWN            | metadata `berth-outcome: unknown` |
//! | `RaftError::UnknownMember`              | NOT_FOUND           |                                |
//! | other `RaftError`                       | INTERNAL            |                                |
//! | bad request (kind, selector, framing)   | INVALID_ARGUMENT    |                                |
//!
//! Every message is cut to [`MAX_STATUS_MESSAGE`] bytes ([`bounded`]).

use tonic::{Code, Status};

use crate::raft::RaftError;
use crate::store::StoreError;

/// Metadata key carrying the leader's address on UNAVAILABLE (not leader).
pub const LEADER_METADATA: &str = "berth-leader";
/// Metadata key carrying the leader's raft id on UNAVAILABLE (not leader).
pub const LEADER_ID_METADATA: &str = "berth-leader-id";
/// Metadata key set to "unknown" on the reply to a write whose outcome this server cannot
/// know (the leader changed while it was in flight); the client reports "outcome unknown".
pub const OUTCOME_METADATA: &str = "berth-outcome";

/// Mark `s` as the answer to a write whose outcome is unknown.
pub fn outcome_unknown(mut s: Status) -> Status {
    s.metadata_mut().insert(
        OUTCOME_METADATA,
        tonic::metadata::MetadataValue::from_static("unknown"),
    );
    s
}

/// Metadata key carrying the current resourceVersion on ABORTED (conflict).
pub const ACTUAL_RV_METADATA: &str = "berth-actual-resource-version";

pub fn store_code(e: &StoreError) -> Code {
    match e {
        StoreError::NotFound { .. } | StoreError::NamespaceNotFound { .. } => Code::NotFound,
        StoreError::AlreadyExists { .. } => Code::AlreadyExists,
        StoreError::Conflict { .. } => Code::Aborted,
        StoreError::Invalid(_)
        | StoreError::TooLarge { .. }
        | StoreError::NodePort(_)
        | StoreError::Address(_) => Code::InvalidArgument,
        StoreError::NotApplied { .. } => Code::FailedPrecondition,
        StoreError::NodePortsExhausted { .. } | StoreError::AddressesExhausted { .. } => {
            Code::ResourceExhausted
        }
        StoreError::Expired { .. } => Code::OutOfRange,
        StoreError::Forbidden(_) | StoreError::NamespaceTerminating { .. } => {
            Code::PermissionDenied
        }
        StoreError::Storage(_) | StoreError::BadCommand(_) => Code::Internal,
    }
}

/// Longest status message sent. Messages travel in an HTTP/2 header (`grpc-message`); one
/// that echoes a huge hostile name or selector would make the client drop the connection
/// (`too_many_continuations`), so longer ones are cut, saying how much was left out.
pub const MAX_STATUS_MESSAGE: usize = 4096;

/// `msg`, cut to at most [`MAX_STATUS_MESSAGE`] bytes (on a character boundary) plus a note.
pub fn bounded(msg: String) -> String {
    if msg.len() <= MAX_STATUS_MESSAGE {
        return msg;
    }
    let mut end = MAX_STATUS_MESSAGE;
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} more bytes cut)", &msg[..end], msg.len() - end)
}

pub fn from_store(e: &StoreError) -> Status {
    let mut s = Status::new(store_code(e), bounded(e.to_string()));
    if let StoreError::Conflict { actual, .. } = e {
        if let Ok(v) = actual.to_string().parse() {
            s.metadata_mut().insert(ACTUAL_RV_METADATA, v);
        }
    }
    s
}

pub fn from_raft(e: &RaftError) -> Status {
    let code = match e {
        RaftError::NotLeader { .. }
        | RaftError::Dropped
        | RaftError::Stopped
        | RaftError::ConfChangeInProgress => Code::Unavailable,
        RaftError::Timeout(_) => Code::DeadlineExceeded,
        RaftError::UnknownMember(_) => Code::NotFound,
        _ => Code::Internal,
    };
    let mut s = Status::new(code, bounded(e.to_string()));
    if matches!(e, RaftError::OutcomeUnknown) {
        s = outcome_unknown(s);
    }
    if let RaftError::NotLeader {
        leader_id,
        leader_addr,
    } = e
    {
        if let Some(v) = leader_addr.as_deref().and_then(|a| a.parse().ok()) {
            s.metadata_mut().insert(LEADER_METADATA, v);
        }
        if let Some(v) = leader_id.and_then(|id| id.to_string().parse().ok()) {
            s.metadata_mut().insert(LEADER_ID_METADATA, v);
        }
    }
    s
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Status {
        from_store(&e)
    }
}

/// A malformed request.
pub fn invalid(msg: impl Into<String>) -> Status {
    Status::invalid_argument(bounded(msg.into()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::ObjectKey;
    use berth_proto::Kind;

    #[test]
    fn long_messages_are_cut_on_a_char_boundary_saying_how_much() {
        assert_eq!(bounded("short".into()), "short");
        let long = format!("a{}", "é".repeat(5000));
        let cut = bounded(long.clone());
        assert!(cut.len() < MAX_STATUS_MESSAGE + 40, "{}", cut.len());
        let kept = cut.split("... (").next().unwrap();
        assert!(long.starts_with(kept));
        assert!(cut.ends_with(&format!("({} more bytes cut)", long.len() - kept.len())));
        let s = invalid("x".repeat(1 << 20));
        assert!(s.message().len() <= MAX_STATUS_MESSAGE + 40);
    }

    #[test]
    fn conflict_maps_to_aborted_with_both_versions() {
        let s = from_store(&StoreError::Conflict {
            key: ObjectKey::new(Kind::Pod, "", "a"),
            expected: 3,
            actual: 5,
        });
        assert_eq!(s.code(), Code::Aborted);
        assert!(s.message().contains("expected resourceVersion 3, actual 5"));
        assert_eq!(s.metadata().get(ACTUAL_RV_METADATA).unwrap(), "5");
    }

    #[test]
    fn expired_maps_to_out_of_range_saying_relist() {
        let s = from_store(&StoreError::Expired {
            requested: 1,
            oldest: 9,
        });
        assert_eq!(s.code(), Code::OutOfRange);
        assert!(s.message().starts_with("Expired"));
        assert!(s.message().contains("relist"));
    }

    #[test]
    fn not_leader_maps_to_unavailable_with_leader_address() {
        let s = from_raft(&RaftError::NotLeader {
            leader_id: Some(2),
            leader_addr: Some("127.0.0.1:7441".into()),
        });
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(s.metadata().get(LEADER_METADATA).unwrap(), "127.0.0.1:7441");
        assert_eq!(s.metadata().get(LEADER_ID_METADATA).unwrap(), "2");
    }
}
