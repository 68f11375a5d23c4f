//! `DeleteOptions.propagationPolicy`: what happens to the objects an object owns (a
//! Deployment's ReplicaSets, a ReplicaSet's Pods, a Service's Endpoints — Berth's owner
//! references).
//!
//! * `Background` (the default): the owner is deleted now; garbage collection deletes its
//!   dependents (then theirs) right after.
//! * `Foreground`: the same deletion, but the request is answered only once every dependent
//!   (transitively) is gone, so `kubectl delete --cascade=foreground` returns when nothing is
//!   left. Unlike Kubernetes, the owner disappears first rather than last (Berth has no
//!   finalizers to keep it visible meanwhile).
//! * `Orphan` (`kubectl delete --cascade=orphan`, or `orphanDependents: true`): the owner's
//!   reference is removed from each dependent, which then stays, then the owner is deleted.

use std::time::Duration;

use berth_proto::pb::{self, api_server::Api as _};
use berth_proto::{DynObject, Kind};
use serde_json::Value;

use super::handlers::PATCH_ATTEMPTS;
use super::status::KubeError;
use super::{Ctx, KubeApi, ResPath};

/// How long a foreground deletion waits for the dependents to go.
const FOREGROUND_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Propagation {
    Background,
    Foreground,
    Orphan,
}

impl Propagation {
    pub(super) fn parse(s: &str) -> Result<Propagation, KubeError> {
        match s {
            "" | "Background" => Ok(Propagation::Background),
            "Foreground" => Ok(Propagation::Foreground),
            "Orphan" => Ok(Propagation::Orphan),
            other => Err(KubeError::bad_request(format!(
                "invalid propagationPolicy {other:?}: use Background, Foreground or Orphan"
            ))),
        }
    }
}

/// The kinds that can be owned by an object of `kind`.
fn dependent_kinds(kind: Kind) -> &'static [Kind] {
    match kind {
        Kind::Deployment => &[Kind::ReplicaSet],
        Kind::ReplicaSet => &[Kind::Pod],
        Kind::Service => &[Kind::Endpoints],
        _ => &[],
    }
}

fn owned_by(v: &Value, uid: &str) -> bool {
    v.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid))
}

impl KubeApi {
    /// The objects (of the kinds an owner of `kind` can own) in `namespace` owned by `uid`.
    async fn dependents(
        &self,
        ctx: &Ctx,
        kind: Kind,
        namespace: &str,
        uid: &str,
    ) -> Result<Vec<DynObject>, KubeError> {
        let mut out = Vec::new();
        for dk in dependent_kinds(kind) {
            let r = self
                .api
                .list(self.req(
                    ctx,
                    pb::ListRequest {
                        kind: dk.as_str().to_string(),
                        namespace: namespace.to_string(),
                        label_selector: String::new(),
                    },
                ))
                .await
                .map_err(|s| KubeError::from_grpc(&s, &Default::default()))?
                .into_inner();
            out.extend(
                r.objects
                    .iter()
                    .filter_map(|b| DynObject::from_json(b).ok())
                    .filter(|o| owned_by(&o.value, uid)),
            );
        }
        Ok(out)
    }

    /// Every dependent of the owner, transitively: (kind, namespace, uid).
    pub(super) async fn all_dependents(
        &self,
        ctx: &Ctx,
        kind: Kind,
        namespace: &str,
        uid: &str,
    ) -> Result<Vec<(Kind, String)>, KubeError> {
        let mut found = Vec::new();
        let mut todo = vec![(kind, uid.to_string())];
        while let Some((k, u)) = todo.pop() {
            for d in self.dependents(ctx, k, namespace, &u).await? {
                let du = d.meta().uid;
                if found.iter().any(|(_, f)| *f == du) {
                    continue;
                }
                found.push((d.kind, du.clone()));
                todo.push((d.kind, du));
            }
        }
        Ok(found)
    }

    /// Wait (up to [`FOREGROUND_WAIT`]) until none of `deps` exists any more.
    pub(super) async fn wait_dependents_gone(
        &self,
        ctx: &Ctx,
        namespace: &str,
        deps: &[(Kind, String)],
    ) -> Result<(), KubeError> {
        let deadline = tokio::time::Instant::now() + FOREGROUND_WAIT;
        loop {
            let mut left = 0;
            for k in [Kind::ReplicaSet, Kind::Pod, Kind::Endpoints] {
                if !deps.iter().any(|(dk, _)| *dk == k) {
                    continue;
                }
                let r = self
                    .api
                    .list(self.req(
                        ctx,
                        pb::ListRequest {
                            kind: k.as_str().to_string(),
                            namespace: namespace.to_string(),
                            label_selector: String::new(),
                        },
                    ))
                    .await
                    .map_err(|s| KubeError::from_grpc(&s, &Default::default()))?
                    .into_inner();
                left += r
                    .objects
                    .iter()
                    .filter_map(|b| DynObject::from_json(b).ok())
                    .filter(|o| deps.iter().any(|(_, u)| *u == o.meta().uid))
                    .count();
            }
            if left == 0 {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(KubeError::new(
                    504,
                    "Timeout",
                    format!(
                        "the object was deleted, but {left} of its dependents were still there \
                         after {}s; garbage collection removes them in the background",
                        FOREGROUND_WAIT.as_secs()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Remove the owner reference to `uid` from every direct dependent, so they outlive it.
    pub(super) async fn orphan_dependents(
        &self,
        ctx: &Ctx,
        rp: &ResPath,
        uid: &str,
    ) -> Result<usize, KubeError> {
        let namespace = rp.namespace.clone().unwrap_or_default();
        let mut orphaned = 0;
        for d in self.dependents(ctx, rp.kind, &namespace, uid).await? {
            let dep = ResPath {
                kind: d.kind,
                namespace: Some(namespace.clone()),
                name: Some(d.name().to_string()),
                sub: None,
            };
            let mut current = d.value;
            let mut attempt = 0;
            loop {
                attempt += 1;
                let mut next = current.clone();
                if let Some(refs) = next
                    .pointer_mut("/metadata/ownerReferences")
                    .and_then(Value::as_array_mut)
                {
                    refs.retain(|r| r["uid"] != uid);
                }
                super::apply::record(ctx, &dep, Some(&current), &mut next)?;
                match self.put_value(ctx, &dep, &next).await {
                    Ok(_) => {
                        orphaned += 1;
                        break;
                    }
                    Err(s) if s.code() == tonic::Code::NotFound => break,
                    Err(s) if s.code() == tonic::Code::Aborted && attempt < PATCH_ATTEMPTS => {
                        current = match self.get_value(ctx, &dep).await {
                            Ok(v) => v,
                            Err(e) if e.code == 404 => break,
                            Err(e) => return Err(e),
                        };
                        if !owned_by(&current, uid) {
                            break;
                        }
                    }
                    Err(s) => return Err(self.grpc_err(s, &dep.target(), Some(&next))),
                }
            }
        }
        Ok(orphaned)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn propagation_policies_parse_and_unknown_ones_are_bad_requests() {
        assert_eq!(Propagation::parse("").unwrap(), Propagation::Background);
        assert_eq!(Propagation::parse("Orphan").unwrap(), Propagation::Orphan);
        assert_eq!(
            Propagation::parse("Foreground").unwrap(),
            Propagation::Foreground
        );
        let e = Propagation::parse("orphan").err().unwrap();
        assert_eq!(e.code, 400);
        assert!(e.message.contains("Background, Foreground or Orphan"));
        assert_eq!(dependent_kinds(Kind::Deployment), [Kind::ReplicaSet]);
        assert!(owned_by(
            &serde_json::json!({"metadata": {"ownerReferences": [{"uid": "u1"}]}}),
            "u1"
        ));
    }
}
