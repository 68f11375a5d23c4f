//! The verbs: list, watch, get, create, update, patch, delete, deletecollection, and the
//! scale subresource. Each one calls the shared [`ApiService`](crate::service::ApiService).

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use base64::Engine as _;
use berth_proto::pb::{self, api_server::Api as _};
use berth_proto::{DynObject, Kind};
use http::StatusCode;
use serde_json::{json, Value};
use tokio_stream::StreamExt as _;

use super::cascade::Propagation;
use super::fields::FieldSelector;
use super::status::{KubeError, Target};
use super::{decode_object, json_response, media_type, Ctx, KubeApi, ResPath, Resp};

/// Attempts of a patch whose read-modify-write lost a race (client-go retries too, but a
/// patch without a resourceVersion is not supposed to conflict at all).
pub(super) const PATCH_ATTEMPTS: usize = 5;

/// Lines of a watch waiting for a slow client before the stream blocks the server's side.
const WATCH_LINES: usize = 64;

#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    rv: u64,
    ns: String,
    name: String,
}

fn encode_continue(t: &ContinueToken) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(t).unwrap_or_default())
}

fn decode_continue(s: &str) -> Result<ContinueToken, KubeError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| {
            KubeError::bad_request(
                "continue key is not valid: pass the metadata.continue value of the previous \
                 page unchanged",
            )
        })
}

fn objects(bytes: &[Vec<u8>]) -> Vec<DynObject> {
    bytes
        .iter()
        .filter_map(|b| DynObject::from_json(b).ok())
        .collect()
}

fn object_of(bytes: &[u8]) -> Result<Value, KubeError> {
    serde_json::from_slice(bytes).map_err(|e| {
        KubeError::new(
            500,
            "InternalError",
            format!("stored object is not JSON: {e}"),
        )
    })
}

pub(super) fn resource_version(v: &Value) -> u64 {
    v.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn set_resource_version(v: &mut Value, rv: u64) {
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert("resourceVersion".into(), rv.to_string().into());
    }
}

fn meta_str<'a>(v: &'a Value, field: &str) -> &'a str {
    v.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or("")
}

impl KubeApi {
    fn target_of(&self, rp: &ResPath, body: &Value) -> Target {
        let mut t = rp.target();
        if t.name.is_empty() {
            t.name = meta_str(body, "name").to_string();
        }
        t
    }

    pub(super) fn grpc_err(
        &self,
        s: tonic::Status,
        target: &Target,
        body: Option<&Value>,
    ) -> KubeError {
        match (s.code(), body) {
            (tonic::Code::InvalidArgument, Some(b)) => KubeError::invalid(&s, target, b),
            _ => KubeError::from_grpc(&s, target),
        }
    }

    pub(super) fn respond_object(
        &self,
        ctx: &Ctx,
        kind: Kind,
        code: StatusCode,
        v: Value,
    ) -> Result<Resp, KubeError> {
        if super::table::wants_table(&ctx.accept) {
            let obj = DynObject::from_value(v.clone())
                .map_err(|e| KubeError::new(500, "InternalError", e.to_string()))?;
            let t = super::table::table(kind, &[obj], None, ctx.q("includeObject"))
                .map_err(|e| KubeError::new(500, "InternalError", e))?;
            return Ok(json_response(code, &t));
        }
        Ok(json_response(code, &v))
    }

    pub(super) async fn get_value(&self, ctx: &Ctx, rp: &ResPath) -> Result<Value, KubeError> {
        let key = pb::ObjectKey {
            kind: rp.kind.as_str().to_string(),
            namespace: rp.namespace.clone().unwrap_or_default(),
            name: rp.name.clone().unwrap_or_default(),
        };
        let r = self
            .api
            .get(self.req(ctx, pb::GetRequest { key: Some(key) }))
            .await
            .map_err(|s| self.grpc_err(s, &rp.target(), None))?
            .into_inner();
        object_of(&r.object)
    }

    pub(super) async fn get(&self, ctx: &Ctx, rp: &ResPath) -> Result<Resp, KubeError> {
        let v = self.get_value(ctx, rp).await?;
        self.respond_object(ctx, rp.kind, StatusCode::OK, v)
    }

    /// List, filtered by field selector, in (namespace, name) order, paged by limit/continue.
    /// A continued list reads the current state from where the previous page ended (not the
    /// first page's snapshot); its resourceVersion says which revision it is.
    async fn list_objects(
        &self,
        ctx: &Ctx,
        rp: &ResPath,
    ) -> Result<(Vec<DynObject>, u64, Option<String>, usize), KubeError> {
        let fs = FieldSelector::parse(rp.kind, ctx.q("fieldSelector"))
            .map_err(KubeError::bad_request)?;
        let r = self
            .api
            .list(self.req(
                ctx,
                pb::ListRequest {
                    kind: rp.kind.as_str().to_string(),
                    namespace: rp.namespace.clone().unwrap_or_default(),
                    label_selector: ctx.q("labelSelector").to_string(),
                },
            ))
            .await
            .map_err(|s| self.grpc_err(s, &rp.target(), None))?
            .into_inner();
        let mut objs: Vec<DynObject> = objects(&r.objects)
            .into_iter()
            .filter(|o| fs.matches(&o.value))
            .collect();
        objs.sort_by(|a, b| (a.namespace(), a.name()).cmp(&(b.namespace(), b.name())));
        if !ctx.q("continue").is_empty() {
            let t = decode_continue(ctx.q("continue"))?;
            objs.retain(|o| (o.namespace(), o.name()) > (t.ns.as_str(), t.name.as_str()));
        }
        let limit: usize = match ctx.q("limit") {
            "" => 0,
            s => s.parse().map_err(|_| {
                KubeError::bad_request(format!("invalid limit {s:?}: want a number"))
            })?,
        };
        let mut cont = None;
        let mut remaining = 0;
        if limit > 0 && objs.len() > limit {
            remaining = objs.len() - limit;
            objs.truncate(limit);
            if let Some(last) = objs.last() {
                cont = Some(encode_continue(&ContinueToken {
                    rv: r.revision,
                    ns: last.namespace().to_string(),
                    name: last.name().to_string(),
                }));
            }
        }
        Ok((objs, r.revision, cont, remaining))
    }

    pub(super) async fn list(&self, ctx: &Ctx, rp: &ResPath) -> Result<Resp, KubeError> {
        let (objs, rev, cont, remaining) = self.list_objects(ctx, rp).await?;
        let mut metadata = json!({"resourceVersion": rev.to_string()});
        if let Some(c) = &cont {
            metadata["continue"] = c.clone().into();
            metadata["remainingItemCount"] = remaining.into();
        }
        if super::table::wants_table(&ctx.accept) {
            let mut t = super::table::table(rp.kind, &objs, Some(rev), ctx.q("includeObject"))
                .map_err(|e| KubeError::new(500, "InternalError", e))?;
            t["metadata"] = metadata;
            return Ok(json_response(StatusCode::OK, &t));
        }
        let list = json!({
            "kind": format!("{}List", rp.kind.as_str()),
            "apiVersion": rp.kind.api_version(),
            "metadata": metadata,
            "items": objs.into_iter().map(|o| o.value).collect::<Vec<_>>(),
        });
        Ok(json_response(StatusCode::OK, &list))
    }

    /// Fill in kind/apiVersion, check them and the namespace against the path.
    pub(super) fn check_body(&self, rp: &ResPath, body: &mut Value) -> Result<(), KubeError> {
        let kind = rp.kind;
        match body.get("kind").and_then(Value::as_str) {
            None | Some("") => body["kind"] = kind.as_str().into(),
            Some(k) if k == kind.as_str() => {}
            Some(k) => {
                return Err(KubeError::bad_request(format!(
                    "the kind of the body ({k}) does not match the resource of the request ({}); \
                     send it to the {} resource",
                    kind.plural(),
                    k.to_ascii_lowercase()
                )))
            }
        }
        if body
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
            .is_empty()
        {
            body["apiVersion"] = kind.api_version().into();
        }
        if !body.get("metadata").is_some_and(Value::is_object) {
            body["metadata"] = json!({});
        }
        if let Some(ns) = &rp.namespace {
            match meta_str(body, "namespace") {
                "" => body["metadata"]["namespace"] = ns.clone().into(),
                b if b == ns => {}
                b => {
                    return Err(KubeError::bad_request(format!(
                        "the namespace of the provided object ({b}) does not match the namespace \
                         sent on the request ({ns})"
                    )))
                }
            }
        }
        if let Some(name) = &rp.name {
            match meta_str(body, "name") {
                "" => body["metadata"]["name"] = name.clone().into(),
                b if b == name => {}
                b => {
                    return Err(KubeError::bad_request(format!(
                        "the name of the object ({b}) does not match the name on the URL ({name})"
                    )))
                }
            }
        }
        Ok(())
    }

    pub(super) async fn create(
        &self,
        ctx: &Ctx,
        rp: &ResPath,
        body: bytes::Bytes,
    ) -> Result<Resp, KubeError> {
        let mut v = decode_object(ctx, &body)?;
        self.check_body(rp, &mut v)?;
        super::apply::record(ctx, rp, None, &mut v)?;
        let target = self.target_of(rp, &v);
        let r = self
            .api
            .create(self.req(
                ctx,
                pb::CreateRequest {
                    object: serde_json::to_vec(&v).unwrap_or_default(),
                    dry_run: ctx.dry_run()?,
                },
            ))
            .await
            .map_err(|s| self.grpc_err(s, &target, Some(&v)))?
            .into_inner();
        self.respond_object(ctx, rp.kind, StatusCode::CREATED, object_of(&r.object)?)
    }

    /// PUT of the object or its status: compare-and-swap on metadata.resourceVersion when the
    /// body has one (an update without one is unconditional, as Kubernetes allows).
    pub(super) async fn put_value(
        &self,
        ctx: &Ctx,
        rp: &ResPath,
        v: &Value,
    ) -> Result<Value, tonic::Status> {
        let req = pb::UpdateRequest {
            object: serde_json::to_vec(v).unwrap_or_default(),
            dry_run: ctx.dry_run().unwrap_or(false),
        };
        let r = if rp.sub.as_deref() == Some("status") {
            self.api.update_status(self.req(ctx, req)).await?
        } else {
            self.api.update(self.req(ctx, req)).await?
        };
        serde_json::from_slice(&r.into_inner().object)
            .map_err(|e| tonic::Status::internal(format!("stored object is not JSON: {e}")))
    }

    pub(super) async fn update(
        &self,
        ctx: &Ctx,
        rp: &ResPath,
        body: bytes::Bytes,
    ) -> Result<Resp, KubeError> {
        ctx.dry_run()?;
        let mut v = decode_object(ctx, &body)?;
        self.check_body(rp, &mut v)?;
        let target = self.target_of(rp, &v);
        // The stored object, to see what this update changes (managed fields); an update
        // without a resourceVersion is pinned to the one read, and retried if that loses.
        let pinned = resource_version(&v) != 0;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let current = self.get_value(ctx, rp).await?;
            let mut next = v.clone();
            if !pinned {
                set_resource_version(&mut next, resource_version(&current));
            }
            super::apply::record(ctx, rp, Some(&current), &mut next)?;
            match self.put_value(ctx, rp, &next).await {
                Ok(out) => return self.respond_object(ctx, rp.kind, StatusCode::OK, out),
                Err(s)
                    if s.code() == tonic::Code::Aborted && !pinned && attempt < PATCH_ATTEMPTS =>
                {
                    continue
                }
                Err(s) => return Err(self.grpc_err(s, &target, Some(&next))),
            }
        }
    }

    /// JSON patch, merge patch or strategic merge patch, as read-modify-write with CAS: the
    /// object is read, patched and written back at the revision it was read at, again (up to
    /// [`PATCH_ATTEMPTS`]) if another write came in between — unless the patch itself sets
    /// metadata.resourceVersion, which makes that a precondition, as in Kubernetes.
    pub(super) async fn patch(
        &self,
        ctx: &Ctx,
        rp: &ResPath,
        body: bytes::Bytes,
    ) -> Result<Resp, KubeError> {
        ctx.dry_run()?;
        let ct = media_type(&ctx.content_type);
        if ct == super::apply::APPLY_YAML {
            return self.server_side_apply(ctx, rp, body).await;
        }
        let target = rp.target();
        let patch = Patch::parse(&ct, &body)?;
        let scale = rp.sub.as_deref() == Some("scale");
        let mut attempt = 0;
        loop {
            attempt += 1;
            let current = self.get_value(ctx, rp).await?;
            let rv = resource_version(&current);
            let original = if scale {
                scale_of(&current)?
            } else {
                current.clone()
            };
            let mut patched = patch.apply(rp.kind, &original)?;
            let pinned = match resource_version(&patched) {
                0 => {
                    set_resource_version(&mut patched, rv);
                    false
                }
                p => p != rv || patch.sets_resource_version(),
            };
            for field in ["name", "namespace", "uid"] {
                if meta_str(&patched, field) != meta_str(&original, field) {
                    return Err(KubeError::new(
                        422,
                        "Invalid",
                        format!("the patch changes metadata.{field}, which cannot be changed"),
                    )
                    .with_target(&target));
                }
            }
            let mut to_write = if scale {
                with_replicas(&current, &patched)?
            } else {
                patched
            };
            super::apply::record(ctx, rp, Some(&current), &mut to_write)?;
            let write_rp = ResPath {
                sub: if scale { None } else { rp.sub.clone() },
                ..rp.clone()
            };
            match self.put_value(ctx, &write_rp, &to_write).await {
                Ok(out) => {
                    let out = if scale { scale_of(&out)? } else { out };
                    return self.respond_object(ctx, rp.kind, StatusCode::OK, out);
                }
                Err(s)
                    if s.code() == tonic::Code::Aborted && !pinned && attempt < PATCH_ATTEMPTS =>
                {
                    continue
                }
                Err(s) => return Err(self.grpc_err(s, &target, Some(&to_write))),
            }
        }
    }

    pub(super) async fn get_scale(&self, ctx: &Ctx, rp: &ResPath) -> Result<Resp, KubeError> {
        let v = self.get_value(ctx, rp).await?;
        Ok(json_response(StatusCode::OK, &scale_of(&v)?))
    }

    pub(super) async fn put_scale(
        &self,
        ctx: &Ctx,
        rp: &ResPath,
        body: bytes::Bytes,
    ) -> Result<Resp, KubeError> {
        ctx.dry_run()?;
        let scale = decode_object(ctx, &body)?;
        let target = rp.target();
        let current = self.get_value(ctx, rp).await?;
        let mut next = with_replicas(&current, &scale)?;
        let wanted = resource_version(&scale);
        if wanted != 0 {
            set_resource_version(&mut next, wanted);
        }
        super::apply::record(ctx, rp, Some(&current), &mut next)?;
        let write_rp = ResPath {
            sub: None,
            ..rp.clone()
        };
        let out = self
            .put_value(ctx, &write_rp, &next)
            .await
            .map_err(|s| self.grpc_err(s, &target, None))?;
        Ok(json_response(StatusCode::OK, &scale_of(&out)?))
    }

    pub(super) async fn delete(
        &self,
        ctx: &Ctx,
        rp: &ResPath,
        body: bytes::Bytes,
    ) -> Result<Resp, KubeError> {
        let opts = DeleteOptions::parse(ctx, &body)?;
        let target = rp.target();
        let dry_run = ctx.dry_run()? || opts.dry_run;
        if let Some(uid) = &opts.uid {
            let v = self.get_value(ctx, rp).await?;
            if meta_str(&v, "uid") != uid {
                return Err(KubeError::new(
                    409,
                    "Conflict",
                    format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        meta_str(&v, "uid")
                    ),
                )
                .with_target(&target));
            }
        }
        let out = self
            .delete_propagating(
                ctx,
                rp,
                (opts.resource_version, opts.grace_period_seconds),
                dry_run,
                opts.propagation,
            )
            .await?;
        Ok(json_response(StatusCode::OK, &out))
    }

    /// Delete one object with its dependents as `propagation` says (see [`super::cascade`]);
    /// `rv` is the resourceVersion precondition and the grace period (pods).
    async fn delete_propagating(
        &self,
        ctx: &Ctx,
        rp: &ResPath,
        rv: (u64, Option<i64>),
        dry_run: bool,
        propagation: Propagation,
    ) -> Result<Value, KubeError> {
        if dry_run || propagation == Propagation::Background {
            return self.delete_one(ctx, rp, rv, dry_run).await;
        }
        let current = self.get_value(ctx, rp).await?;
        let uid = meta_str(&current, "uid").to_string();
        let ns = rp.namespace.clone().unwrap_or_default();
        match propagation {
            Propagation::Orphan => {
                let n = self.orphan_dependents(ctx, rp, &uid).await?;
                tracing::debug!(kind = %rp.kind, name = ?rp.name, orphaned = n, "delete: orphaned dependents");
                self.delete_one(ctx, rp, rv, false).await
            }
            _ => {
                let deps = self.all_dependents(ctx, rp.kind, &ns, &uid).await?;
                let out = self.delete_one(ctx, rp, rv, false).await?;
                self.wait_dependents_gone(ctx, &ns, &deps).await?;
                Ok(out)
            }
        }
    }

    /// Delete one object; a dry run is checked as the delete would be (authorization,
    /// preconditions) by a dry-run batch, and answers the object that would be deleted.
    async fn delete_one(
        &self,
        ctx: &Ctx,
        rp: &ResPath,
        (rv, grace_period_seconds): (u64, Option<i64>),
        dry_run: bool,
    ) -> Result<Value, KubeError> {
        let key = pb::ObjectKey {
            kind: rp.kind.as_str().to_string(),
            namespace: rp.namespace.clone().unwrap_or_default(),
            name: rp.name.clone().unwrap_or_default(),
        };
        if dry_run {
            let op = pb::BatchOp {
                op: Some(pb::batch_op::Op::Delete(pb::DeleteRequest {
                    key: Some(key),
                    resource_version: rv,
                    grace_period_seconds,
                })),
            };
            let r = self
                .api
                .batch(self.req(
                    ctx,
                    pb::BatchRequest {
                        ops: vec![op],
                        atomic: true,
                        dry_run: true,
                    },
                ))
                .await
                .map_err(|s| self.grpc_err(s, &rp.target(), None))?
                .into_inner();
            let Some(res) = r.results.into_iter().next() else {
                return Err(KubeError::new(
                    500,
                    "InternalError",
                    "the dry-run delete returned no result",
                ));
            };
            if res.code != 0 {
                let s = tonic::Status::new(tonic::Code::from_i32(res.code), res.message);
                return Err(self.grpc_err(s, &rp.target(), None));
            }
            return object_of(&res.object);
        }
        let r = self
            .api
            .delete(self.req(
                ctx,
                pb::DeleteRequest {
                    key: Some(key),
                    resource_version: rv,
                    grace_period_seconds,
                },
            ))
            .await
            .map_err(|s| self.grpc_err(s, &rp.target(), None))?
            .into_inner();
        object_of(&r.object)
    }

    pub(super) async fn delete_collection(
        &self,
        ctx: &Ctx,
        rp: &ResPath,
        body: bytes::Bytes,
    ) -> Result<Resp, KubeError> {
        let opts = DeleteOptions::parse(ctx, &body)?;
        let dry_run = ctx.dry_run()? || opts.dry_run;
        let (objs, rev, _, _) = self.list_objects(ctx, rp).await?;
        let mut deleted = Vec::new();
        for o in objs {
            let one = ResPath {
                namespace: (!o.namespace().is_empty()).then(|| o.namespace().to_string()),
                name: Some(o.name().to_string()),
                ..rp.clone()
            };
            match self
                .delete_propagating(
                    ctx,
                    &one,
                    (0, opts.grace_period_seconds),
                    dry_run,
                    opts.propagation,
                )
                .await
            {
                Ok(v) => deleted.push(v),
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(json_response(
            StatusCode::OK,
            &json!({
                "kind": format!("{}List", rp.kind.as_str()),
                "apiVersion": rp.kind.api_version(),
                "metadata": {"resourceVersion": rev.to_string()},
                "items": deleted,
            }),
        ))
    }

    /// A watch as a chunked stream of JSON lines (`{"type":…,"object":…}`), from
    /// `resourceVersion` (unset or 0: every current object as ADDED first, then changes).
    pub(super) async fn watch(&self, ctx: &Ctx, rp: &ResPath) -> Result<Resp, KubeError> {
        let kind = rp.kind;
        let fs =
            FieldSelector::parse(kind, ctx.q("fieldSelector")).map_err(KubeError::bad_request)?;
        let from: u64 = match ctx.q("resourceVersion") {
            "" => 0,
            s => s.parse().map_err(|_| {
                KubeError::bad_request(format!("invalid resourceVersion {s:?}: want a number"))
            })?,
        };
        let timeout = match ctx.q("timeoutSeconds") {
            "" => None,
            s => Some(Duration::from_secs(s.parse().map_err(|_| {
                KubeError::bad_request(format!("invalid timeoutSeconds {s:?}: want a number"))
            })?)),
        };
        let bookmarks = ctx.flag("allowWatchBookmarks");
        let send_initial = ctx.flag("sendInitialEvents");
        let as_table = super::table::wants_table(&ctx.accept);
        let include = ctx.q("includeObject").to_string();
        let target = rp.target();
        let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(WATCH_LINES);
        let upstream = self
            .api
            .watch(self.req(
                ctx,
                pb::WatchRequest {
                    kind: kind.as_str().to_string(),
                    namespace: rp.namespace.clone().unwrap_or_default(),
                    label_selector: ctx.q("labelSelector").to_string(),
                    from_revision: from,
                },
            ))
            .await;
        let mut stream = match upstream {
            Ok(s) => s.into_inner(),
            // Too old: Kubernetes answers 200 with one ERROR event; the client relists.
            Err(s) if s.code() == tonic::Code::OutOfRange => {
                let line = error_line(&KubeError::from_grpc(&s, &target));
                return Ok(stream_response(futures::stream::once(async move { line })));
            }
            Err(s) => return Err(self.grpc_err(s, &target, None)),
        };
        tokio::spawn(async move {
            let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
            let mut initial_end_sent = false;
            loop {
                let next = async {
                    match deadline {
                        Some(d) => tokio::time::timeout_at(d, stream.next())
                            .await
                            .ok()
                            .flatten(),
                        None => stream.next().await,
                    }
                };
                let item = tokio::select! {
                    _ = tx.closed() => return,
                    item = next => item,
                };
                let Some(item) = item else { return };
                let line = match item {
                    Ok(ev) => {
                        let ty =
                            pb::EventType::try_from(ev.r#type).unwrap_or(pb::EventType::Modified);
                        if ty == pb::EventType::Bookmark {
                            if !bookmarks {
                                continue;
                            }
                            let mut meta = json!({"resourceVersion": ev.revision.to_string()});
                            if send_initial && !initial_end_sent {
                                meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
                                initial_end_sent = true;
                            }
                            event_line(
                                "BOOKMARK",
                                json!({"kind": kind.as_str(), "apiVersion": kind.api_version(), "metadata": meta}),
                            )
                        } else {
                            let Ok(obj) = DynObject::from_json(&ev.object) else {
                                continue;
                            };
                            if !fs.matches(&obj.value) {
                                continue;
                            }
                            let ty = match ty {
                                pb::EventType::Added => "ADDED",
                                pb::EventType::Deleted => "DELETED",
                                _ => "MODIFIED",
                            };
                            let object = if as_table {
                                match super::table::table(kind, &[obj], None, &include) {
                                    Ok(t) => t,
                                    Err(_) => continue,
                                }
                            } else {
                                obj.value
                            };
                            event_line(ty, object)
                        }
                    }
                    Err(s) => {
                        let _ = tx
                            .send(error_line(&KubeError::from_grpc(&s, &target)))
                            .await;
                        return;
                    }
                };
                if tx.send(line).await.is_err() {
                    return;
                }
            }
        });
        Ok(stream_response(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
    }
}

fn event_line(ty: &str, object: Value) -> bytes::Bytes {
    let mut b = serde_json::to_vec(&json!({"type": ty, "object": object})).unwrap_or_default();
    b.push(b'\n');
    b.into()
}

fn error_line(e: &KubeError) -> bytes::Bytes {
    event_line("ERROR", e.to_status())
}

fn stream_response<S>(s: S) -> Resp
where
    S: futures::Stream<Item = bytes::Bytes> + Send + 'static,
{
    http::Response::builder()
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(s.map(Ok::<_, Infallible>)))
        .unwrap_or_default()
}

/// The autoscaling/v1 Scale of a Deployment or ReplicaSet.
fn scale_of(v: &Value) -> Result<Value, KubeError> {
    let sel = v.pointer("/spec/selector").cloned().unwrap_or(Value::Null);
    let selector = serde_json::from_value::<berth_proto::types::LabelSelector>(sel)
        .ok()
        .and_then(|s| berth_proto::selector::Selector::from_label_selector(&s).ok())
        .map(|s| s.to_string())
        .unwrap_or_default();
    let meta = v.get("metadata").cloned().unwrap_or(Value::Null);
    let mut m = json!({});
    for f in [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
    ] {
        if let Some(x) = meta.get(f) {
            m[f] = x.clone();
        }
    }
    Ok(json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": m,
        "spec": {"replicas": v.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1)},
        "status": {
            "replicas": v.pointer("/status/replicas").and_then(Value::as_i64).unwrap_or(0),
            "selector": selector,
        },
    }))
}

/// `current` with spec.replicas from the Scale `scale` (and its resourceVersion).
fn with_replicas(current: &Value, scale: &Value) -> Result<Value, KubeError> {
    let replicas = match scale.pointer("/spec/replicas") {
        None | Some(Value::Null) => 0,
        Some(r) => r
            .as_i64()
            .filter(|r| (0..=i64::from(i32::MAX)).contains(r))
            .ok_or_else(|| {
                KubeError::new(
                    422,
                    "Invalid",
                    format!("spec.replicas: must be a non-negative integer, not {r}"),
                )
            })?,
    };
    let mut next = current.clone();
    next["spec"]["replicas"] = replicas.into();
    let rv = resource_version(scale);
    set_resource_version(
        &mut next,
        if rv == 0 {
            resource_version(current)
        } else {
            rv
        },
    );
    Ok(next)
}

/// A PATCH body of one of the supported types.
enum Patch {
    Json(json_patch::Patch, bool),
    Merge(Value),
    Strategic(Value),
}

impl Patch {
    fn parse(ct: &str, body: &[u8]) -> Result<Patch, KubeError> {
        let bad = |what: &str, e: serde_json::Error| {
            KubeError::bad_request(format!("the {what} patch is not valid: {e}"))
        };
        Ok(match ct {
            "application/json-patch+json" => {
                let p: json_patch::Patch =
                    serde_json::from_slice(body).map_err(|e| bad("JSON", e))?;
                let sets_rv = p.0.iter().any(|op| {
                    let path = match op {
                        json_patch::PatchOperation::Add(o) => o.path.to_string(),
                        json_patch::PatchOperation::Replace(o) => o.path.to_string(),
                        _ => String::new(),
                    };
                    path == "/metadata/resourceVersion"
                });
                Patch::Json(p, sets_rv)
            }
            "application/merge-patch+json" => {
                Patch::Merge(serde_json::from_slice(body).map_err(|e| bad("merge", e))?)
            }
            "application/strategic-merge-patch+json" => Patch::Strategic(
                serde_json::from_slice(body).map_err(|e| bad("strategic merge", e))?,
            ),
            "application/apply-patch+cbor" => {
                return Err(KubeError::unsupported_media(
                    "server-side apply with a CBOR body is not supported by Berth: send the \
                     configuration as application/apply-patch+yaml (YAML or JSON)",
                ))
            }
            other => {
                return Err(KubeError::unsupported_media(format!(
                    "unsupported patch type {other:?}: use application/json-patch+json, \
                     application/merge-patch+json or application/strategic-merge-patch+json"
                )))
            }
        })
    }

    fn sets_resource_version(&self) -> bool {
        match self {
            Patch::Json(_, s) => *s,
            Patch::Merge(v) | Patch::Strategic(v) => v
                .pointer("/metadata/resourceVersion")
                .is_some_and(|r| !r.is_null()),
        }
    }

    fn apply(&self, kind: Kind, original: &Value) -> Result<Value, KubeError> {
        let mut doc = original.clone();
        match self {
            Patch::Json(p, _) => json_patch::patch(&mut doc, p).map_err(|e| {
                KubeError::new(
                    422,
                    "Invalid",
                    format!("the JSON patch cannot be applied: {e}"),
                )
            })?,
            Patch::Merge(p) => json_patch::merge(&mut doc, p),
            Patch::Strategic(p) => {
                doc = berth_proto::patch::strategic_merge(kind, original, p).map_err(|e| {
                    KubeError::new(
                        422,
                        "Invalid",
                        format!("the strategic merge patch cannot be applied: {e}"),
                    )
                })?;
            }
        }
        Ok(doc)
    }
}

/// The parts of `DeleteOptions` Berth acts on.
struct DeleteOptions {
    resource_version: u64,
    uid: Option<String>,
    /// `dryRun: ["All"]` in the body (client-go sends it there, not in the query).
    dry_run: bool,
    propagation: Propagation,
    /// `gracePeriodSeconds` (body or query): pods only; 0 with `--force` removes at once.
    grace_period_seconds: Option<i64>,
}

impl DeleteOptions {
    fn parse(ctx: &Ctx, body: &[u8]) -> Result<DeleteOptions, KubeError> {
        let query_policy = Propagation::parse(ctx.q("propagationPolicy"))?;
        let query_grace = match ctx.q("gracePeriodSeconds") {
            "" => None,
            g => Some(g.parse::<i64>().map_err(|_| {
                KubeError::bad_request(format!(
                    "invalid gracePeriodSeconds {g:?}: want a whole number of seconds"
                ))
            })?),
        };
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(DeleteOptions {
                resource_version: 0,
                uid: None,
                dry_run: false,
                grace_period_seconds: query_grace,
                propagation: if ctx.flag("orphanDependents") {
                    Propagation::Orphan
                } else {
                    query_policy
                },
            });
        }
        let v = decode_object(ctx, body)?;
        let propagation = match (
            v.get("propagationPolicy").and_then(Value::as_str),
            v.get("orphanDependents").and_then(Value::as_bool),
        ) {
            (Some(p), Some(o)) if (p == "Orphan") != o => {
                return Err(KubeError::bad_request(format!(
                    "orphanDependents {o} contradicts propagationPolicy {p}: send only \
                     propagationPolicy"
                )))
            }
            (Some(p), _) => Propagation::parse(p)?,
            (None, Some(true)) => Propagation::Orphan,
            (None, _) => query_policy,
        };
        let resource_version = match v
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
        {
            None | Some("") => 0,
            Some(s) => s.parse().map_err(|_| {
                KubeError::bad_request(format!(
                    "invalid preconditions.resourceVersion {s:?}: want a number"
                ))
            })?,
        };
        let uid = v
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        let dry_run = match v.get("dryRun") {
            None | Some(Value::Null) => false,
            Some(Value::Array(a)) if a.is_empty() => false,
            Some(Value::Array(a)) if a.iter().all(|x| x == "All") => true,
            Some(other) => {
                return Err(KubeError::bad_request(format!(
                    "invalid dryRun {other}: the only supported value is [\"All\"]"
                )))
            }
        };
        let grace_period_seconds = match v.get("gracePeriodSeconds") {
            None | Some(Value::Null) => query_grace,
            Some(g) => Some(g.as_i64().ok_or_else(|| {
                KubeError::bad_request(format!(
                    "invalid gracePeriodSeconds {g}: want a whole number of seconds"
                ))
            })?),
        };
        Ok(DeleteOptions {
            resource_version,
            uid,
            dry_run,
            propagation,
            grace_period_seconds,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip_and_garbage_is_a_bad_request() {
        let t = ContinueToken {
            rv: 9,
            ns: "default".into(),
            name: "web-3".into(),
        };
        let back = decode_continue(&encode_continue(&t)).unwrap();
        assert_eq!(
            (back.rv, back.ns.as_str(), back.name.as_str()),
            (9, "default", "web-3")
        );
        assert_eq!(decode_continue("!!!").err().unwrap().code, 400);
    }

    #[test]
    fn scale_reads_and_writes_replicas_of_a_deployment() {
        let d = json!({"metadata": {"name": "web", "namespace": "default", "resourceVersion": "5"},
                       "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}},
                       "status": {"replicas": 2}});
        let s = scale_of(&d).unwrap();
        assert_eq!(s["spec"]["replicas"], 2);
        assert_eq!(s["status"]["selector"], "app=web");
        assert_eq!(s["metadata"]["resourceVersion"], "5");
        let next = with_replicas(&d, &json!({"spec": {"replicas": 4}})).unwrap();
        assert_eq!(next["spec"]["replicas"], 4);
        assert_eq!(next["metadata"]["resourceVersion"], "5");
        assert_eq!(
            with_replicas(&d, &json!({"spec": {"replicas": -1}}))
                .err()
                .unwrap()
                .code,
            422
        );
    }

    #[test]
    fn patches_of_each_type_apply_and_unknown_types_are_refused() {
        let d = json!({"metadata": {"name": "web", "labels": {"a": "1"}}, "spec": {"replicas": 1}});
        let p = Patch::parse(
            "application/merge-patch+json",
            br#"{"metadata":{"labels":{"a":null,"b":"2"}}}"#,
        )
        .unwrap();
        let out = p.apply(Kind::Deployment, &d).unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"b": "2"}));
        let p = Patch::parse(
            "application/json-patch+json",
            br#"[{"op":"replace","path":"/spec/replicas","value":3}]"#,
        )
        .unwrap();
        assert_eq!(
            p.apply(Kind::Deployment, &d).unwrap()["spec"]["replicas"],
            3
        );
        assert!(!p.sets_resource_version());
        let p = Patch::parse(
            "application/json-patch+json",
            br#"[{"op":"test","path":"/spec/replicas","value":9}]"#,
        )
        .unwrap();
        assert_eq!(p.apply(Kind::Deployment, &d).err().unwrap().code, 422);
        assert_eq!(
            Patch::parse("application/apply-patch+cbor", b"{}")
                .err()
                .unwrap()
                .code,
            415
        );
        assert_eq!(Patch::parse("text/plain", b"{}").err().unwrap().code, 415);
    }

    #[test]
    fn delete_options_give_preconditions_propagation_and_dry_run() {
        let ctx = Ctx {
            who: None,
            query: Default::default(),
            accept: String::new(),
            content_type: "application/json".into(),
            user_agent: String::new(),
        };
        let o = DeleteOptions::parse(&ctx, br#"{"kind":"DeleteOptions","apiVersion":"v1","propagationPolicy":"Background","preconditions":{"resourceVersion":"12","uid":"u"}}"#).unwrap();
        assert_eq!(o.resource_version, 12);
        assert_eq!(o.uid.as_deref(), Some("u"));
        assert_eq!(o.propagation, Propagation::Background);
        let o = DeleteOptions::parse(&ctx, br#"{"propagationPolicy":"Orphan","dryRun":["All"]}"#)
            .unwrap();
        assert_eq!(o.propagation, Propagation::Orphan);
        assert!(o.dry_run);
        let o = DeleteOptions::parse(&ctx, br#"{"orphanDependents":true}"#).unwrap();
        assert_eq!(o.propagation, Propagation::Orphan);
        assert!(DeleteOptions::parse(&ctx, br#"{"propagationPolicy":"Sideways"}"#).is_err());
        assert!(DeleteOptions::parse(
            &ctx,
            br#"{"propagationPolicy":"Background","orphanDependents":true}"#
        )
        .is_err());
        assert!(DeleteOptions::parse(&ctx, br#"{"dryRun":["Some"]}"#).is_err());
        assert_eq!(DeleteOptions::parse(&ctx, b"").unwrap().resource_version, 0);
    }
}
