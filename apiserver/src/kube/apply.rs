//! Server-side apply (`PATCH` with `Content-Type: application/apply-patch+yaml`) and the
//! field manager of every other write; the ownership rules are in [`super::managed`].

use berth_proto::pb::{self, api_server::Api as _};
use http::StatusCode;
use serde_json::Value;

use super::handlers::{resource_version, PATCH_ATTEMPTS};
use super::managed::{self, Conflict};
use super::status::{KubeError, Target};
use super::{Ctx, KubeApi, ResPath, Resp};

pub(super) const APPLY_YAML: &str = "application/apply-patch+yaml";

/// Kubernetes' limit on a field manager's name.
const MAX_MANAGER: usize = 128;

fn check_manager(name: &str) -> Result<(), KubeError> {
    if name.chars().count() > MAX_MANAGER || name.chars().any(char::is_control) {
        return Err(KubeError::new(
            422,
            "Invalid",
            format!(
                "fieldManager: Invalid value: {name:?}: must be at most {MAX_MANAGER} printable \
                 characters"
            ),
        ));
    }
    Ok(())
}

/// Who is making a non-apply write: the `fieldManager` query parameter (kubectl sends
/// `kubectl-client-side-apply`, `kubectl-edit`, ...), else the user agent's product
/// (`kubectl/v1.32.0 (linux/amd64) …` -> `kubectl`), as Kubernetes does.
pub(super) fn update_manager(ctx: &Ctx) -> Result<String, KubeError> {
    let given = ctx.q("fieldManager");
    if !given.is_empty() {
        check_manager(given)?;
        return Ok(given.to_string());
    }
    let ua: String = ctx
        .user_agent
        .split('/')
        .next()
        .unwrap_or("")
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_MANAGER)
        .collect();
    Ok(if ua.is_empty() { "unknown".into() } else { ua })
}

/// Record a non-apply write of `new` over `old` in `new`'s managed fields (not for the status
/// subresource, whose writes keep the stored metadata).
pub(super) fn record(
    ctx: &Ctx,
    rp: &ResPath,
    old: Option<&Value>,
    new: &mut Value,
) -> Result<(), KubeError> {
    if rp.sub.as_deref() == Some("status") {
        return Ok(());
    }
    let manager = update_manager(ctx)?;
    managed::record_update(rp.kind, old, new, &manager, managed::now());
    Ok(())
}

/// The 409 Kubernetes answers a conflicting apply with; kubectl prints the causes.
fn conflict_error(target: &Target, conflicts: &[Conflict]) -> KubeError {
    let n = conflicts.len();
    let who = |c: &Conflict| format!("{:?} using {}", c.manager, c.api_version);
    let message = match conflicts {
        [c] => format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            who(c),
            c.field
        ),
        _ => {
            let mut by_manager: Vec<(String, Vec<&str>)> = Vec::new();
            for c in conflicts {
                let w = who(c);
                match by_manager.iter_mut().find(|(m, _)| *m == w) {
                    Some((_, fields)) => fields.push(&c.field),
                    None => by_manager.push((w, vec![&c.field])),
                }
            }
            let parts: Vec<String> = by_manager
                .iter()
                .map(|(w, fields)| {
                    format!(
                        "conflicts with {w}:\n{}",
                        fields
                            .iter()
                            .map(|f| format!("- {f}"))
                            .collect::<Vec<_>>()
                            .join("\n")
                    )
                })
                .collect();
            format!("Apply failed with {n} conflicts: {}", parts.join("\n"))
        }
    };
    let mut e = KubeError::new(409, "Conflict", message).with_target(target);
    e.causes = conflicts
        .iter()
        .map(|c| (c.field.clone(), format!("conflict with {}", who(c))))
        .collect();
    e
}

impl KubeApi {
    /// Server-side apply: merge the applied configuration into the object (creating it if
    /// missing) as `fieldManager`, refusing to change fields other managers own unless
    /// `force=true`.
    pub(super) async fn server_side_apply(
        &self,
        ctx: &Ctx,
        rp: &ResPath,
        body: bytes::Bytes,
    ) -> Result<Resp, KubeError> {
        let target = rp.target();
        if rp.sub.is_some() {
            return Err(KubeError::unsupported_media(format!(
                "server-side apply of the {} subresource is not supported by Berth: apply the \
                 object itself (kubectl apply --server-side -f FILE)",
                rp.sub.as_deref().unwrap_or("")
            ))
            .with_target(&target));
        }
        let manager = ctx.q("fieldManager").to_string();
        if manager.is_empty() {
            return Err(KubeError::new(
                422,
                "Invalid",
                "fieldManager: Required value: is required for apply requests: add \
                 ?fieldManager=NAME (kubectl apply --server-side sends \"kubectl\")",
            )
            .with_target(&target));
        }
        check_manager(&manager)?;
        let force = match ctx.q("force") {
            "" | "false" => false,
            "true" => true,
            other => {
                return Err(KubeError::bad_request(format!(
                    "invalid force {other:?}: want true or false"
                )))
            }
        };
        let dry_run = ctx.dry_run()?;
        let mut applied: Value = serde_yaml_ng::from_slice(&body).map_err(|e| {
            KubeError::bad_request(format!(
                "the apply configuration is not valid YAML or JSON: {e}"
            ))
        })?;
        if !applied.is_object() {
            return Err(KubeError::bad_request(
                "the apply configuration must be an object with apiVersion, kind and metadata",
            ));
        }
        for f in ["apiVersion", "kind"] {
            if applied
                .get(f)
                .and_then(Value::as_str)
                .unwrap_or("")
                .is_empty()
            {
                return Err(KubeError::bad_request(format!(
                    "the apply configuration has no {f}: it must name apiVersion and kind \
                     (here {} and {})",
                    rp.kind.api_version(),
                    rp.kind.as_str()
                )));
            }
        }
        if applied["apiVersion"] != rp.kind.api_version() {
            return Err(KubeError::bad_request(format!(
                "the apply configuration's apiVersion {} does not match the request's {}",
                applied["apiVersion"],
                rp.kind.api_version()
            )));
        }
        self.check_body(rp, &mut applied)?;
        let pinned = resource_version(&applied) != 0;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let live = match self.get_value(ctx, rp).await {
                Ok(v) => Some(v),
                Err(e) if e.code == 404 => None,
                Err(e) => return Err(e),
            };
            let next = managed::apply(
                rp.kind,
                live.as_ref(),
                &applied,
                &manager,
                force,
                managed::now(),
            )
            .map_err(|c| conflict_error(&target, &c))?;
            let retry = |s: &tonic::Status| {
                !pinned
                    && attempt < PATCH_ATTEMPTS
                    && matches!(s.code(), tonic::Code::Aborted | tonic::Code::AlreadyExists)
            };
            if live.is_none() {
                let r = self
                    .api
                    .create(self.req(
                        ctx,
                        pb::CreateRequest {
                            object: serde_json::to_vec(&next).unwrap_or_default(),
                            dry_run,
                        },
                    ))
                    .await;
                match r {
                    Ok(r) => {
                        let out = serde_json::from_slice(&r.into_inner().object).map_err(|e| {
                            KubeError::new(500, "InternalError", format!("stored object: {e}"))
                        })?;
                        return self.respond_object(ctx, rp.kind, StatusCode::CREATED, out);
                    }
                    Err(s) if retry(&s) => continue,
                    Err(s) => return Err(self.grpc_err(s, &target, Some(&next))),
                }
            }
            match self.put_value(ctx, rp, &next).await {
                Ok(out) => return self.respond_object(ctx, rp.kind, StatusCode::OK, out),
                Err(s) if retry(&s) => continue,
                Err(s) => return Err(self.grpc_err(s, &target, Some(&next))),
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ctx(query: &[(&str, &str)], ua: &str) -> Ctx {
        Ctx {
            who: None,
            query: query
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            accept: String::new(),
            content_type: String::new(),
            user_agent: ua.into(),
        }
    }

    #[test]
    fn update_managers_come_from_the_query_or_the_user_agent() {
        let c = ctx(
            &[("fieldManager", "kubectl-edit")],
            "kubectl/v1.32.0 (linux/amd64)",
        );
        assert_eq!(update_manager(&c).unwrap(), "kubectl-edit");
        let c = ctx(&[], "kubectl/v1.32.0 (linux/amd64) kubernetes/abc");
        assert_eq!(update_manager(&c).unwrap(), "kubectl");
        assert_eq!(update_manager(&ctx(&[], "")).unwrap(), "unknown");
        let long = "x".repeat(200);
        assert_eq!(
            update_manager(&ctx(&[("fieldManager", &long)], ""))
                .err()
                .unwrap()
                .code,
            422
        );
    }

    #[test]
    fn conflicts_are_409_with_field_manager_conflict_causes() {
        let t = Target {
            kind: Some(berth_proto::Kind::Deployment),
            name: "web".into(),
        };
        let e = conflict_error(
            &t,
            &[Conflict {
                manager: "kubectl-scale".into(),
                api_version: "apps/v1".into(),
                field: ".spec.replicas".into(),
            }],
        );
        let s = e.to_status();
        assert_eq!(s["code"], 409);
        assert_eq!(s["reason"], "Conflict");
        assert_eq!(
            s["message"],
            "Apply failed with 1 conflict: conflict with \"kubectl-scale\" using apps/v1: .spec.replicas"
        );
        let cause = &s["details"]["causes"][0];
        assert_eq!(cause["reason"], "FieldManagerConflict");
        assert_eq!(cause["field"], ".spec.replicas");
        assert_eq!(
            cause["message"],
            "conflict with \"kubectl-scale\" using apps/v1"
        );
    }
}
