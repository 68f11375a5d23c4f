//! Errors as Kubernetes `Status` objects, with the reasons and codes clients act on:
//! kubectl's apply creates on NotFound, client-go retries Conflict, reflectors relist on
//! Expired, and `details.causes` name the fields of an Invalid object.
//!
//! | gRPC code (see [`crate::status`]) | HTTP | reason            |
//! |-----------------------------------|------|-------------------|
//! | NOT_FOUND                         | 404  | NotFound          |
//! | ALREADY_EXISTS                    | 409  | AlreadyExists     |
//! | ABORTED (resourceVersion CAS)     | 409  | Conflict          |
//! | INVALID_ARGUMENT                  | 422  | Invalid (causes)  |
//! | FAILED_PRECONDITION               | 409  | Conflict          |
//! | OUT_OF_RANGE (watch too old)      | 410  | Expired           |
//! | PERMISSION_DENIED                 | 403  | Forbidden         |
//! | UNAUTHENTICATED                   | 401  | Unauthorized      |
//! | RESOURCE_EXHAUSTED                | 429  | TooManyRequests   |
//! | UNAVAILABLE                       | 503  | ServiceUnavailable|
//! | DEADLINE_EXCEEDED                 | 504  | Timeout           |
//! | anything else                     | 500  | InternalError     |

use berth_proto::Kind;
use serde_json::{json, Value};
use tonic::Code;

/// The object a request was about, for `details` and messages.
#[derive(Debug, Clone, Default)]
pub struct Target {
    pub kind: Option<Kind>,
    pub name: String,
}

impl Target {
    /// `deployments.apps` / `pods`: how Kubernetes names a resource in messages.
    fn resource(&self) -> String {
        match self.kind {
            Some(k) => {
                let g = super::discovery::group(k);
                if g.is_empty() {
                    k.plural().to_string()
                } else {
                    format!("{}.{g}", k.plural())
                }
            }
            None => String::new(),
        }
    }
}

/// A failed request, rendered as a `Status`.
#[derive(Debug, Clone)]
pub struct KubeError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub target: Target,
    /// `details.causes`: (field path, message).
    pub causes: Vec<(String, String)>,
    /// `details.retryAfterSeconds`.
    pub retry_after: Option<u32>,
}

impl KubeError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> KubeError {
        KubeError {
            code,
            reason,
            message: message.into(),
            target: Target::default(),
            causes: Vec::new(),
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> KubeError {
        KubeError::new(400, "BadRequest", message)
    }

    pub fn not_found_path() -> KubeError {
        KubeError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    pub fn method_not_allowed(method: &http::Method, what: &str) -> KubeError {
        KubeError::new(
            405,
            "MethodNotAllowed",
            format!(
                "the server does not allow this method on the requested resource: {method} {what}"
            ),
        )
    }

    pub fn unsupported_media(message: impl Into<String>) -> KubeError {
        KubeError::new(415, "UnsupportedMediaType", message)
    }

    pub fn with_target(mut self, target: &Target) -> KubeError {
        self.target = target.clone();
        self
    }

    /// Map an `ApiService` answer to the Status a Kubernetes client expects.
    pub fn from_grpc(s: &tonic::Status, target: &Target) -> KubeError {
        let msg = s.message().to_string();
        let res = target.resource();
        let named = |what: &str| {
            if target.name.is_empty() || res.is_empty() {
                msg.clone()
            } else {
                format!("{res} \"{}\" {what}", target.name)
            }
        };
        let (code, reason, message) = match s.code() {
            Code::NotFound => (404, "NotFound", named("not found")),
            Code::AlreadyExists => (409, "AlreadyExists", named("already exists")),
            Code::Aborted => (
                409,
                "Conflict",
                if target.name.is_empty() || res.is_empty() {
                    msg.clone()
                } else {
                    format!(
                        "Operation cannot be fulfilled on {res} \"{}\": the object has been \
                         modified; please apply your changes to the latest version and try \
                         again ({msg})",
                        target.name
                    )
                },
            ),
            Code::InvalidArgument => (422, "Invalid", msg.clone()),
            Code::FailedPrecondition => (409, "Conflict", msg.clone()),
            Code::OutOfRange => (410, "Expired", msg.clone()),
            // Shaped as Kubernetes says it, so kubectl's output reads the same.
            Code::PermissionDenied => (
                403,
                "Forbidden",
                match (res.is_empty(), target.name.is_empty()) {
                    (true, _) => msg.clone(),
                    (false, true) => format!("{res} is forbidden: {msg}"),
                    (false, false) => format!("{res} \"{}\" is forbidden: {msg}", target.name),
                },
            ),
            Code::Unauthenticated => (401, "Unauthorized", msg.clone()),
            Code::ResourceExhausted => (429, "TooManyRequests", msg.clone()),
            Code::Unavailable => (503, "ServiceUnavailable", msg.clone()),
            Code::DeadlineExceeded => (504, "Timeout", msg.clone()),
            _ => (500, "InternalError", msg.clone()),
        };
        // The object's namespace does not exist: Kubernetes names the namespace, not the
        // object (`namespaces "x" not found`), and so do its details.
        if code == 404 && msg.starts_with("namespaces \"") {
            let short = msg.split_once(": ").map_or(msg.as_str(), |(a, _)| a);
            let ns = short
                .trim_start_matches("namespaces \"")
                .split('"')
                .next()
                .unwrap_or("");
            return KubeError::new(404, "NotFound", short).with_target(&Target {
                kind: Some(Kind::Namespace),
                name: ns.to_string(),
            });
        }
        let mut e = KubeError::new(code, reason, message).with_target(target);
        if code == 429 || code == 503 {
            e.retry_after = Some(1);
        }
        e
    }

    /// Invalid, with causes found by re-reading `body` the way `berth apply` does (field paths
    /// of unknown fields, bad types, failed validation); the server's message is the fallback.
    pub fn invalid(s: &tonic::Status, target: &Target, body: &Value) -> KubeError {
        let mut e = KubeError::from_grpc(s, target);
        let text = body.to_string();
        if let Err(errs) = berth_proto::manifest::parse_manifest("request body", &text) {
            e.causes = errs
                .errors()
                .iter()
                .map(|m| (m.path.to_string(), m.message.clone()))
                .collect();
        }
        if e.causes.is_empty() {
            e.causes.push((String::new(), s.message().to_string()));
        }
        let kind = target.kind.map(|k| k.as_str()).unwrap_or("object");
        e.message = format!(
            "{kind} \"{}\" is invalid: {}",
            target.name,
            e.causes
                .iter()
                .map(|(p, m)| if p.is_empty() {
                    m.clone()
                } else {
                    format!("{p}: {m}")
                })
                .collect::<Vec<_>>()
                .join(", ")
        );
        e
    }

    pub fn to_status(&self) -> Value {
        let mut details = serde_json::Map::new();
        if !self.target.name.is_empty() {
            details.insert("name".into(), self.target.name.clone().into());
        }
        if let Some(k) = self.target.kind {
            details.insert("group".into(), super::discovery::group(k).into());
            details.insert("kind".into(), k.plural().into());
        }
        if !self.causes.is_empty() {
            details.insert(
                "causes".into(),
                self.causes
                    .iter()
                    .map(|(field, message)| {
                        // A Conflict with causes is server-side apply's (see kube::apply).
                        let reason = if self.code == 409 {
                            "FieldManagerConflict"
                        } else if message.contains("unknown field") {
                            "FieldValueNotSupported"
                        } else {
                            "FieldValueInvalid"
                        };
                        json!({"reason": reason, "message": message, "field": field})
                    })
                    .collect::<Vec<_>>()
                    .into(),
            );
        }
        if let Some(s) = self.retry_after {
            details.insert("retryAfterSeconds".into(), s.into());
        }
        let mut v = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if !details.is_empty() {
            v["details"] = Value::Object(details);
        }
        v
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn not_found_names_the_resource_like_kubernetes() {
        let t = Target {
            kind: Some(Kind::Deployment),
            name: "web".into(),
        };
        let e = KubeError::from_grpc(
            &tonic::Status::not_found("Deployment default/web not found"),
            &t,
        );
        let s = e.to_status();
        assert_eq!(s["code"], 404);
        assert_eq!(s["reason"], "NotFound");
        assert_eq!(s["message"], "deployments.apps \"web\" not found");
        assert_eq!(s["details"]["kind"], "deployments");
        assert_eq!(s["details"]["group"], "apps");
    }

    #[test]
    fn invalid_bodies_name_the_bad_field_in_causes() {
        let t = Target {
            kind: Some(Kind::Deployment),
            name: "web".into(),
        };
        let body = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "web", "image": "nginx", "imagePullPolicyy": "Always"}]}}}
        });
        let e = KubeError::invalid(&tonic::Status::invalid_argument("bad"), &t, &body);
        let s = e.to_status();
        assert_eq!(s["code"], 422);
        let field = s["details"]["causes"][0]["field"].as_str().unwrap();
        assert!(field.contains("containers[0]"), "{s}");
        assert!(
            s["message"].as_str().unwrap().contains("imagePullPolicyy"),
            "{s}"
        );
    }
}
