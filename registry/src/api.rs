//! The OCI Distribution API (v2) over the storage seams: what `docker push/pull` and `skopeo`
//! speak. Repository names contain `/`, so one fallback handler splits the path itself:
//! `/v2/NAME/manifests/REF`, `/v2/NAME/blobs/DIGEST`, `/v2/NAME/blobs/uploads/[ID]`,
//! `/v2/NAME/tags/list`, `/v2/_catalog`. Errors use the spec's JSON shape and codes.
//!
//! Uploads (monolithic `POST ?digest=`, or a session of PATCH chunks then `PUT ?digest=`) are
//! streamed to a file under the upload dir while a running sha256 is kept, so finishing an
//! upload never re-reads it; the digest is checked before [`Blobs::commit`]. Sessions live in
//! this process (a client resumes a session on the server that started it).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use berth_proto::image::{check_digest, check_repository, check_tag, sha256_digest};
use futures::StreamExt;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

use crate::storage::{Blobs, ManifestRecord, Metadata, RegistryError};

/// Manifests larger than this are refused (distribution's limit).
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;

const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
];

struct Upload {
    repository: String,
    path: PathBuf,
    offset: u64,
    hasher: Sha256,
}

/// Everything the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    metadata: Arc<dyn Metadata>,
    blobs: Arc<dyn Blobs>,
    upload_dir: PathBuf,
    uploads: Arc<Mutex<HashMap<String, Arc<Mutex<Upload>>>>>,
    access: Access,
    /// Blob bytes sent to pulling clients and to peer servers (refetches).
    sent: Option<SentCounters>,
    /// Push tokens accepted (and issued to the admin) when set.
    tokens: Option<crate::token::PushTokens>,
}

/// Counters of blob bytes this server sends (see [`Registry::with_sent_counters`]).
#[derive(Clone)]
pub struct SentCounters {
    pub clients: berth_metrics::Counter,
    pub peers: berth_metrics::Counter,
}

/// Who may do what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Everyone may pull and push: the loopback listener of `berth dev` (only local users
    /// reach it, as with Docker's own loopback exception for plain-HTTP registries).
    Open,
    /// By client certificate (see [`crate::serve::PEER_IDENTITY_HEADER`]): `admin` and
    /// `system:server` pull and push, `system:node:*` pull only, nobody else anything.
    Certificates,
}

impl Registry {
    pub fn new(
        metadata: Arc<dyn Metadata>,
        blobs: Arc<dyn Blobs>,
        upload_dir: impl Into<PathBuf>,
    ) -> std::io::Result<Registry> {
        let upload_dir = upload_dir.into();
        std::fs::create_dir_all(&upload_dir)?;
        Ok(Registry {
            metadata,
            blobs,
            upload_dir,
            uploads: Arc::new(Mutex::new(HashMap::new())),
            access: Access::Open,
            sent: None,
            tokens: None,
        })
    }

    /// The cluster registry of one server: tags and manifests in the replicated store through
    /// `client`, blobs and upload sessions under `dir` on this server's disk.
    pub fn in_store(
        client: berth_client::Client,
        dir: &std::path::Path,
    ) -> Result<Registry, RegistryError> {
        let blobs = crate::LocalBlobs::open(dir.join("blobs"))?;
        Registry::new(
            Arc::new(crate::StoreMetadata::new(client)),
            Arc::new(blobs),
            dir.join("uploads"),
        )
        .map_err(|e| {
            RegistryError::Internal(format!(
                "cannot create {}: {e}",
                dir.join("uploads").display()
            ))
        })
    }

    /// Count the blob bytes sent (a GET's whole length, counted when the answer starts).
    pub fn with_sent_counters(mut self, sent: SentCounters) -> Registry {
        self.sent = Some(sent);
        self
    }

    /// Accept push tokens (`Authorization: Basic` with the token as password, or `Bearer`)
    /// from callers without a certificate, and issue them to the admin.
    pub fn with_push_tokens(mut self, tokens: crate::token::PushTokens) -> Registry {
        self.tokens = Some(tokens);
        self
    }

    pub fn with_access(mut self, access: Access) -> Registry {
        self.access = access;
        self
    }

    /// The axum router serving `/v2/...`.
    pub fn router(self) -> axum::Router {
        axum::Router::new().fallback(handle).with_state(self)
    }
}

/// A Distribution API error.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    range: Option<u64>,
}

fn err(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        code,
        message: message.into(),
        range: None,
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Unknown(m) => err(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", m),
            RegistryError::DigestMismatch(m) => err(StatusCode::BAD_REQUEST, "DIGEST_INVALID", m),
            RegistryError::Unavailable(m) => err(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", m),
            RegistryError::Denied(m) => err(StatusCode::FORBIDDEN, "DENIED", m),
            RegistryError::Internal(m) => err(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", m),
        }
    }
}

impl From<std::io::Error> for ApiError {
    fn from(e: std::io::Error) -> Self {
        err(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "errors": [{"code": self.code, "message": self.message, "detail": null}]
        });
        let mut r = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"berth-registry\""),
            );
        }
        if let Some(end) = self.range {
            if let Ok(v) = HeaderValue::from_str(&format!("0-{}", end.saturating_sub(1))) {
                r.headers_mut().insert(header::RANGE, v);
            }
        }
        r
    }
}

type ApiResult = Result<Response, ApiError>;

enum Route {
    Base,
    Catalog,
    Tags(String),
    Manifest(String, String),
    Blob(String, String),
    UploadStart(String),
    Upload(String, String),
    /// Server-to-server blob copy (`/berth/v1/blobs/DIGEST`, see [`crate::cluster`]).
    PeerBlob(String),
    /// `POST /berth/v1/tokens`: a push token for the admin (see [`crate::token`]).
    Tokens,
}

impl Route {
    /// The repository the request is about, if any.
    fn repository(&self) -> Option<&str> {
        match self {
            Route::Tags(n)
            | Route::Manifest(n, _)
            | Route::Blob(n, _)
            | Route::UploadStart(n)
            | Route::Upload(n, _) => Some(n),
            _ => None,
        }
    }
}

fn route(path: &str) -> Option<Route> {
    if path == "/berth/v1/tokens" {
        return Some(Route::Tokens);
    }
    if let Some(d) = path.strip_prefix(crate::cluster::PEER_BLOBS_PATH) {
        return Some(Route::PeerBlob(d.to_string()));
    }
    let rest = path.strip_prefix("/v2")?;
    if rest.is_empty() || rest == "/" {
        return Some(Route::Base);
    }
    let rest = rest.strip_prefix('/')?;
    if rest == "_catalog" {
        return Some(Route::Catalog);
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Some(Route::Tags(name.to_string()));
    }
    if let Some(i) = rest.rfind("/blobs/uploads") {
        let (name, tail) = (&rest[..i], &rest[i + "/blobs/uploads".len()..]);
        let id = tail.trim_start_matches('/');
        return Some(if id.is_empty() {
            Route::UploadStart(name.to_string())
        } else {
            Route::Upload(name.to_string(), id.to_string())
        });
    }
    if let Some(i) = rest.rfind("/manifests/") {
        return Some(Route::Manifest(
            rest[..i].to_string(),
            rest[i + "/manifests/".len()..].to_string(),
        ));
    }
    if let Some(i) = rest.rfind("/blobs/") {
        return Some(Route::Blob(
            rest[..i].to_string(),
            rest[i + "/blobs/".len()..].to_string(),
        ));
    }
    None
}

fn query(req: &Request) -> HashMap<String, String> {
    req.uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

fn repo(name: &str) -> Result<String, ApiError> {
    check_repository(name).map_err(|m| err(StatusCode::BAD_REQUEST, "NAME_INVALID", m))?;
    Ok(name.to_string())
}

fn digest(d: &str) -> Result<String, ApiError> {
    check_digest(d).map_err(|m| err(StatusCode::BAD_REQUEST, "DIGEST_INVALID", m))?;
    Ok(d.to_string())
}

fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The token in `Authorization: Basic base64(USER:TOKEN)` or `Bearer TOKEN`.
fn presented_token(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    if let Some(t) = v.strip_prefix("Bearer ") {
        return Some(t.trim().to_string());
    }
    let b = v.strip_prefix("Basic ")?;
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b.trim())
        .ok()?;
    let s = String::from_utf8(decoded).ok()?;
    Some(s.split_once(':').map_or(s.clone(), |(_, p)| p.to_string()))
}

/// A caller without a certificate and with a push token: pull and push inside the token's
/// repository prefix (`/v2/` itself for `docker login`); never delete.
fn authorize_token(
    tokens: Option<&crate::token::PushTokens>,
    token: &str,
    method: &Method,
    repo: Option<&str>,
    base: bool,
) -> Result<(), ApiError> {
    let Some(tokens) = tokens else {
        return Err(err(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "this registry takes no push tokens: use a client certificate from the cluster CA",
        ));
    };
    let claims = tokens
        .verify(token)
        .map_err(|m| err(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", m))?;
    if *method == Method::DELETE {
        return Err(err(
            StatusCode::FORBIDDEN,
            "DENIED",
            format!(
                "push token {:?} may not delete (deletes need the admin credential)",
                claims.sub
            ),
        ));
    }
    let allowed = match repo {
        Some(r) => claims.covers(r),
        None => base || claims.repo.is_empty(),
    };
    if allowed {
        Ok(())
    } else {
        Err(err(
            StatusCode::FORBIDDEN,
            "DENIED",
            format!(
                "push token {:?} covers repositories under {:?}, not {}",
                claims.sub,
                claims.repo,
                repo.unwrap_or("this endpoint")
            ),
        ))
    }
}

/// Check the caller may use `method` (reads: GET/HEAD; everything else writes).
fn authorize(access: Access, headers: &HeaderMap, method: &Method) -> Result<(), ApiError> {
    if access == Access::Open {
        return Ok(());
    }
    let who = headers
        .get(crate::serve::PEER_IDENTITY_HEADER)
        .and_then(|v| v.to_str().ok());
    let read = matches!(*method, Method::GET | Method::HEAD);
    match who {
        None => Err(err(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "this registry needs a client certificate from the cluster CA (an admin config's \
             credential to push, a node certificate to pull) or a push token (`berth registry \
             token`, as the password of `docker login`)",
        )),
        Some("admin") | Some(berth_tls::SERVER_IDENTITY) => Ok(()),
        Some(n) if n.starts_with(berth_tls::NODE_PREFIX) && read => Ok(()),
        Some(n) => Err(err(
            StatusCode::FORBIDDEN,
            "DENIED",
            format!("{n} may pull but not {method} (pushes and deletes need the admin credential)"),
        )),
    }
}

/// The server-to-server endpoint: other servers only.
fn authorize_peer(access: Access, headers: &HeaderMap) -> Result<(), ApiError> {
    if access == Access::Open {
        return Ok(());
    }
    match headers
        .get(crate::serve::PEER_IDENTITY_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        Some(berth_tls::SERVER_IDENTITY) => Ok(()),
        who => Err(err(
            StatusCode::FORBIDDEN,
            "DENIED",
            format!(
                "{} may not use the server-to-server blob endpoint (servers only)",
                who.unwrap_or("a caller without a certificate")
            ),
        )),
    }
}

/// Token issuance: the admin only.
fn authorize_admin(access: Access, headers: &HeaderMap) -> Result<(), ApiError> {
    if access == Access::Open {
        return Ok(());
    }
    match headers
        .get(crate::serve::PEER_IDENTITY_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        Some("admin") => Ok(()),
        who => Err(err(
            StatusCode::FORBIDDEN,
            "DENIED",
            format!(
                "{} may not issue push tokens (the admin credential does)",
                who.unwrap_or("a caller without a certificate")
            ),
        )),
    }
}

async fn handle(State(reg): State<Registry>, req: Request) -> Response {
    let rt = route(req.uri().path());
    let certified = req
        .headers()
        .contains_key(crate::serve::PEER_IDENTITY_HEADER);
    let token = (reg.access == Access::Certificates && !certified)
        .then(|| presented_token(req.headers()))
        .flatten();
    let allowed = match (&rt, token) {
        (Some(Route::PeerBlob(_)), _) => authorize_peer(reg.access, req.headers()),
        (Some(Route::Tokens), _) => authorize_admin(reg.access, req.headers()),
        (rt, Some(t)) => authorize_token(
            reg.tokens.as_ref(),
            &t,
            req.method(),
            rt.as_ref().and_then(Route::repository),
            matches!(rt, Some(Route::Base)),
        ),
        _ => authorize(reg.access, req.headers(), req.method()),
    };
    let r = match (allowed, rt) {
        (Err(e), _) => Err(e),
        (Ok(()), None) => Err(err(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("no such endpoint: {}", req.uri().path()),
        )),
        (Ok(()), Some(rt)) => dispatch(reg, rt, req).await,
    };
    let mut resp = r.unwrap_or_else(IntoResponse::into_response);
    resp.headers_mut().insert(
        "Docker-Distribution-API-Version",
        HeaderValue::from_static("registry/2.0"),
    );
    resp
}

async fn dispatch(reg: Registry, rt: Route, req: Request) -> ApiResult {
    let m = req.method().clone();
    match (rt, m) {
        (Route::PeerBlob(d), m @ (Method::GET | Method::HEAD)) => {
            let d = digest(&d)?;
            let path = reg.blobs.local_only(&d).await?;
            let sent = reg.sent.as_ref().map(|s| &s.peers);
            serve_blob_file(&d, path, m == Method::HEAD, sent).await
        }
        (Route::Tokens, Method::POST) => issue_token(&reg, &req),
        (Route::PeerBlob(d), Method::PUT) => {
            let d = digest(&d)?;
            take_replica(&reg, &d, req.into_body()).await
        }
        (Route::Base, Method::GET | Method::HEAD) => {
            Ok((StatusCode::OK, axum::Json(serde_json::json!({}))).into_response())
        }
        (Route::Catalog, Method::GET) => {
            let q = query(&req);
            let all = reg.metadata.catalog().await?;
            Ok(paginate("repositories", all, &q, "/v2/_catalog", None))
        }
        (Route::Tags(name), Method::GET) => {
            let name = repo(&name)?;
            let q = query(&req);
            let tags = reg.metadata.list_tags(&name).await?;
            if tags.is_empty() && reg.metadata.catalog().await?.binary_search(&name).is_err() {
                return Err(err(
                    StatusCode::NOT_FOUND,
                    "NAME_UNKNOWN",
                    format!("repository {name} is not known to this registry"),
                ));
            }
            Ok(paginate(
                "tags",
                tags,
                &q,
                &format!("/v2/{name}/tags/list"),
                Some(&name),
            ))
        }
        (Route::Manifest(name, reference), m @ (Method::GET | Method::HEAD)) => {
            get_manifest(&reg, &repo(&name)?, &reference, m == Method::HEAD).await
        }
        (Route::Manifest(name, reference), Method::PUT) => {
            put_manifest(&reg, &repo(&name)?, &reference, req).await
        }
        (Route::Manifest(name, reference), Method::DELETE) => {
            let name = repo(&name)?;
            let d = digest(&reference).map_err(|_| {
                err(
                    StatusCode::BAD_REQUEST,
                    "UNSUPPORTED",
                    "delete a manifest by digest (sha256:...), not by tag",
                )
            })?;
            if reg.metadata.delete_manifest(&name, &d).await? {
                Ok(StatusCode::ACCEPTED.into_response())
            } else {
                Err(err(
                    StatusCode::NOT_FOUND,
                    "MANIFEST_UNKNOWN",
                    format!("manifest {name}@{d} is not known"),
                ))
            }
        }
        (Route::Blob(name, d), m @ (Method::GET | Method::HEAD)) => {
            repo(&name)?;
            get_blob(&reg, &digest(&d)?, m == Method::HEAD).await
        }
        (Route::Blob(..), Method::DELETE) => Err(err(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "blobs are garbage-collected when no manifest references them; delete the manifest",
        )),
        (Route::UploadStart(name), Method::POST) => start_upload(&reg, &repo(&name)?, req).await,
        (Route::Upload(name, id), Method::PATCH) => {
            patch_upload(&reg, &repo(&name)?, &id, req).await
        }
        (Route::Upload(name, id), Method::PUT) => {
            finish_upload(&reg, &repo(&name)?, &id, req).await
        }
        (Route::Upload(name, id), Method::GET) => {
            let name = repo(&name)?;
            let up = session(&reg, &name, &id).await?;
            let off = up.lock().await.offset;
            Ok(upload_accepted(StatusCode::NO_CONTENT, &name, &id, off))
        }
        (Route::Upload(name, id), Method::DELETE) => {
            let name = repo(&name)?;
            session(&reg, &name, &id).await?;
            if let Some(up) = reg.uploads.lock().await.remove(&id) {
                let _ = tokio::fs::remove_file(&up.lock().await.path).await;
            }
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        _ => Err(err(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "method not supported on this endpoint",
        )),
    }
}

fn paginate(
    key: &str,
    all: Vec<String>,
    q: &HashMap<String, String>,
    path: &str,
    name: Option<&str>,
) -> Response {
    let last = q.get("last").cloned().unwrap_or_default();
    let mut items: Vec<String> = all
        .into_iter()
        .filter(|x| last.is_empty() || *x > last)
        .collect();
    let n = q.get("n").and_then(|n| n.parse::<usize>().ok());
    let mut link = None;
    if let Some(n) = n {
        if items.len() > n {
            items.truncate(n);
            if let Some(l) = items.last() {
                link = Some(format!("<{path}?n={n}&last={l}>; rel=\"next\""));
            }
        }
    }
    let mut body = serde_json::Map::new();
    if let Some(name) = name {
        body.insert("name".into(), name.into());
    }
    body.insert(key.into(), items.into());
    let mut r = axum::Json(serde_json::Value::Object(body)).into_response();
    if let Some(l) = link {
        r.headers_mut().insert(header::LINK, hv(&l));
    }
    r
}

async fn resolve(reg: &Registry, name: &str, reference: &str) -> Result<String, ApiError> {
    if reference.contains(':') {
        return digest(reference);
    }
    check_tag(reference).map_err(|m| err(StatusCode::BAD_REQUEST, "TAG_INVALID", m))?;
    reg.metadata
        .resolve_tag(name, reference)
        .await?
        .ok_or_else(|| {
            err(
                StatusCode::NOT_FOUND,
                "MANIFEST_UNKNOWN",
                format!("manifest {name}:{reference} is not known (no such tag)"),
            )
        })
}

async fn get_manifest(reg: &Registry, name: &str, reference: &str, head: bool) -> ApiResult {
    let d = resolve(reg, name, reference).await?;
    let m = reg.metadata.get_manifest(name, &d).await?.ok_or_else(|| {
        err(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            format!("manifest {name}@{d} is not known"),
        )
    })?;
    let len = m.content.len();
    let mut r = if head {
        Response::new(Body::empty())
    } else {
        Response::new(Body::from(m.content))
    };
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, hv(&m.media_type));
    h.insert(header::CONTENT_LENGTH, hv(&len.to_string()));
    h.insert("Docker-Content-Digest", hv(&m.digest));
    h.insert(header::ETAG, hv(&format!("\"{}\"", m.digest)));
    Ok(r)
}

fn refs(v: &serde_json::Value, key: &str) -> Vec<(String, u64)> {
    v.get(key)
        .and_then(|x| x.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|d| {
                    Some((
                        d.get("digest")?.as_str()?.to_string(),
                        d.get("size").and_then(|s| s.as_u64()).unwrap_or(0),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn put_manifest(reg: &Registry, name: &str, reference: &str, req: Request) -> ApiResult {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.split(';').next().unwrap_or("").trim().to_string())
        .unwrap_or_default();
    let body = axum::body::to_bytes(req.into_body(), MAX_MANIFEST_BYTES)
        .await
        .map_err(|_| {
            err(
                StatusCode::PAYLOAD_TOO_LARGE,
                "SIZE_INVALID",
                format!("manifest larger than {MAX_MANIFEST_BYTES} bytes"),
            )
        })?;
    let d = sha256_digest(&body);
    let tag = if reference.contains(':') {
        if digest(reference)? != d {
            return Err(err(
                StatusCode::BAD_REQUEST,
                "DIGEST_INVALID",
                format!("manifest pushed as {reference} has digest {d}"),
            ));
        }
        None
    } else {
        check_tag(reference).map_err(|m| err(StatusCode::BAD_REQUEST, "TAG_INVALID", m))?;
        Some(reference.to_string())
    };
    let invalid = |m: String| err(StatusCode::BAD_REQUEST, "MANIFEST_INVALID", m);
    let v: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| invalid(format!("manifest is not JSON: {e}")))?;
    let media_type = v
        .get("mediaType")
        .and_then(|m| m.as_str())
        .map(str::to_string)
        .filter(|m| !m.is_empty())
        .unwrap_or(content_type);
    if !MANIFEST_TYPES.contains(&media_type.as_str()) {
        return Err(invalid(format!(
            "unsupported manifest media type {media_type:?}: use one of {}",
            MANIFEST_TYPES.join(", ")
        )));
    }
    if v.get("schemaVersion").and_then(|s| s.as_u64()) != Some(2) {
        return Err(invalid("schemaVersion must be 2".into()));
    }
    let mut blobs: Vec<(String, u64)> = Vec::new();
    if let Some(c) = v.get("config") {
        if let Some(cd) = c.get("digest").and_then(|x| x.as_str()) {
            blobs.push((
                cd.to_string(),
                c.get("size").and_then(|s| s.as_u64()).unwrap_or(0),
            ));
        }
    }
    blobs.extend(refs(&v, "layers"));
    let children = refs(&v, "manifests");
    let mut total = body.len() as u64;
    for (b, _) in &blobs {
        digest(b)?;
        let info = reg.blobs.stat(b).await?.ok_or_else(|| {
            err(
                StatusCode::BAD_REQUEST,
                "MANIFEST_BLOB_UNKNOWN",
                format!(
                    "blob {b} referenced by the manifest is not in the registry: push it first"
                ),
            )
        })?;
        total += info.size;
    }
    for (c, _) in &children {
        digest(c)?;
        let child = reg.metadata.get_manifest(name, c).await?.ok_or_else(|| err(StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN", format!("manifest {c} referenced by the index is not in repository {name}: push it first")))?;
        total += child.total_size;
    }
    let subject = v
        .get("subject")
        .and_then(|s| s.get("digest"))
        .and_then(|s| s.as_str())
        .map(str::to_string);
    let record = ManifestRecord {
        repository: name.to_string(),
        digest: d.clone(),
        media_type,
        content: body.to_vec(),
        blobs: blobs.into_iter().map(|b| b.0).collect(),
        manifests: children.into_iter().map(|c| c.0).collect(),
        subject,
        total_size: total,
    };
    reg.metadata.put_manifest(record, tag.as_deref()).await?;
    let mut r = StatusCode::CREATED.into_response();
    r.headers_mut()
        .insert(header::LOCATION, hv(&format!("/v2/{name}/manifests/{d}")));
    r.headers_mut().insert("Docker-Content-Digest", hv(&d));
    Ok(r)
}

/// `POST /berth/v1/tokens?subject=S&repository=P&ttl=SECONDS`.
fn issue_token(reg: &Registry, req: &Request) -> ApiResult {
    let Some(tokens) = &reg.tokens else {
        return Err(err(
            StatusCode::NOT_FOUND,
            "UNSUPPORTED",
            "this registry issues no push tokens (the loopback registry of berth dev needs none)",
        ));
    };
    let q = query(req);
    let subject = q.get("subject").cloned().unwrap_or_default();
    if subject.is_empty() || subject.len() > 63 {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
            "subject: name who the token is for (1-63 characters, e.g. ci-shop)",
        ));
    }
    let repo = q.get("repository").cloned().unwrap_or_default();
    if !repo.is_empty() {
        check_repository(repo.trim_end_matches('/')).map_err(|m| {
            err(
                StatusCode::BAD_REQUEST,
                "NAME_INVALID",
                format!("repository: {m}"),
            )
        })?;
    }
    let ttl: u64 = match q.get("ttl") {
        None => 24 * 3600,
        Some(t) => t.parse().map_err(|_| {
            err(
                StatusCode::BAD_REQUEST,
                "UNSUPPORTED",
                format!("ttl: {t:?} is not a number of seconds"),
            )
        })?,
    };
    if ttl == 0 || ttl > crate::token::MAX_TTL_SECS {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
            format!(
                "ttl: between 1 second and {} days",
                crate::token::MAX_TTL_SECS / 86400
            ),
        ));
    }
    let (token, claims) = tokens.issue(&subject, &repo, ttl);
    tracing::info!(subject = %claims.sub, repository = %claims.repo, expires = claims.exp, "registry: push token issued");
    Ok(axum::Json(serde_json::json!({
        "token": token, "subject": claims.sub, "repository": claims.repo, "expires": claims.exp,
    }))
    .into_response())
}

async fn get_blob(reg: &Registry, d: &str, head: bool) -> ApiResult {
    if head {
        // A HEAD (a push asking whether to upload) never fetches bytes from a peer.
        let info = reg.blobs.stat(d).await?.ok_or_else(|| {
            err(
                StatusCode::NOT_FOUND,
                "BLOB_UNKNOWN",
                format!("blob {d} is not in the registry"),
            )
        })?;
        let mut r = Response::new(Body::empty());
        blob_headers(r.headers_mut(), d, info.size);
        return Ok(r);
    }
    let path = reg.blobs.local_path(d).await?;
    serve_blob_file(d, path, head, reg.sent.as_ref().map(|s| &s.clients)).await
}

/// A peer's copy of `d`: streamed to an upload file while hashed, refused unless the bytes
/// match, then stored locally.
async fn take_replica(reg: &Registry, d: &str, body: Body) -> ApiResult {
    let id = uuid::Uuid::new_v4().to_string();
    let mut up = Upload {
        repository: String::new(),
        path: reg.upload_dir.join(format!("replica-{id}")),
        offset: 0,
        hasher: Sha256::new(),
    };
    tokio::fs::File::create(&up.path).await?;
    let r = async {
        append(&mut up, body).await?;
        let actual = berth_proto::image::sha256_digest_from_bytes(&up.hasher.clone().finalize());
        if actual != d {
            return Err(err(
                StatusCode::BAD_REQUEST,
                "DIGEST_INVALID",
                format!("the replicated bytes have digest {actual}, not {d}"),
            ));
        }
        reg.blobs.commit_replica(d, &up.path).await?;
        Ok(StatusCode::CREATED.into_response())
    }
    .await;
    if r.is_err() {
        let _ = tokio::fs::remove_file(&up.path).await;
    }
    r
}

async fn serve_blob_file(
    d: &str,
    path: Option<PathBuf>,
    head: bool,
    sent: Option<&berth_metrics::Counter>,
) -> ApiResult {
    let path = path.ok_or_else(|| {
        err(
            StatusCode::NOT_FOUND,
            "BLOB_UNKNOWN",
            format!("blob {d} is not in the registry"),
        )
    })?;
    let file = tokio::fs::File::open(&path).await?;
    let len = file.metadata().await?.len();
    if let (false, Some(c)) = (head, sent) {
        c.add(len);
    }
    let mut r = if head {
        Response::new(Body::empty())
    } else {
        Response::new(Body::from_stream(
            tokio_util::io::ReaderStream::with_capacity(file, 256 << 10),
        ))
    };
    blob_headers(r.headers_mut(), d, len);
    Ok(r)
}

/// The headers of a blob answer (GET or HEAD).
fn blob_headers(h: &mut HeaderMap, d: &str, len: u64) {
    h.insert(header::CONTENT_LENGTH, hv(&len.to_string()));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert("Docker-Content-Digest", hv(d));
    h.insert(header::ETAG, hv(&format!("\"{d}\"")));
}

fn upload_accepted(status: StatusCode, name: &str, id: &str, offset: u64) -> Response {
    let mut r = status.into_response();
    let h = r.headers_mut();
    h.insert(
        header::LOCATION,
        hv(&format!("/v2/{name}/blobs/uploads/{id}")),
    );
    h.insert(
        header::RANGE,
        hv(&format!("0-{}", offset.saturating_sub(1))),
    );
    h.insert("Docker-Upload-UUID", hv(id));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    r
}

async fn session(reg: &Registry, name: &str, id: &str) -> Result<Arc<Mutex<Upload>>, ApiError> {
    let up = reg.uploads.lock().await.get(id).cloned();
    match up {
        Some(u) if u.lock().await.repository == name => Ok(u),
        _ => Err(err(StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN", format!("upload {id} is not known in {name} (expired, finished, or started on another server): start a new one"))),
    }
}

async fn new_session(reg: &Registry, name: &str) -> Result<(String, Arc<Mutex<Upload>>), ApiError> {
    let id = uuid::Uuid::new_v4().to_string();
    let path = reg.upload_dir.join(&id);
    tokio::fs::File::create(&path).await?;
    let up = Arc::new(Mutex::new(Upload {
        repository: name.to_string(),
        path,
        offset: 0,
        hasher: Sha256::new(),
    }));
    reg.uploads.lock().await.insert(id.clone(), up.clone());
    Ok((id, up))
}

/// Append the request body to the session's file, hashing as it goes.
async fn append(up: &mut Upload, body: Body) -> Result<(), ApiError> {
    let mut f = tokio::fs::OpenOptions::new()
        .append(true)
        .open(&up.path)
        .await?;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            err(
                StatusCode::BAD_REQUEST,
                "BLOB_UPLOAD_INVALID",
                format!("upload body broke off: {e}"),
            )
        })?;
        f.write_all(&chunk).await?;
        up.hasher.update(&chunk);
        up.offset += chunk.len() as u64;
    }
    f.flush().await?;
    Ok(())
}

fn content_range_start(h: &HeaderMap) -> Option<u64> {
    let v = h.get(header::CONTENT_RANGE)?.to_str().ok()?;
    let v = v.trim_start_matches("bytes ").trim_start_matches("bytes=");
    v.split('-').next()?.trim().parse().ok()
}

async fn start_upload(reg: &Registry, name: &str, req: Request) -> ApiResult {
    let q = query(&req);
    if let (Some(mount), Some(_from)) = (q.get("mount"), q.get("from")) {
        let d = digest(mount)?;
        if reg.blobs.stat(&d).await?.is_some() {
            let mut r = StatusCode::CREATED.into_response();
            r.headers_mut()
                .insert(header::LOCATION, hv(&format!("/v2/{name}/blobs/{d}")));
            r.headers_mut().insert("Docker-Content-Digest", hv(&d));
            return Ok(r);
        }
    }
    let (id, up) = new_session(reg, name).await?;
    if let Some(d) = q.get("digest") {
        // Monolithic upload: the whole blob is this request's body.
        let d = digest(d)?;
        let mut u = up.lock().await;
        append(&mut u, req.into_body()).await?;
        drop(u);
        return commit(reg, name, &id, up, &d).await;
    }
    Ok(upload_accepted(StatusCode::ACCEPTED, name, &id, 0))
}

async fn patch_upload(reg: &Registry, name: &str, id: &str, req: Request) -> ApiResult {
    let up = session(reg, name, id).await?;
    let mut u = up.lock().await;
    if let Some(start) = content_range_start(req.headers()) {
        if start != u.offset {
            let mut e = err(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "RANGE",
                format!(
                    "chunk starts at {start} but the upload has {} bytes: resume from there",
                    u.offset
                ),
            );
            e.range = Some(u.offset);
            return Err(e);
        }
    }
    append(&mut u, req.into_body()).await?;
    let off = u.offset;
    Ok(upload_accepted(StatusCode::ACCEPTED, name, id, off))
}

async fn finish_upload(reg: &Registry, name: &str, id: &str, req: Request) -> ApiResult {
    let q = query(&req);
    let d = digest(q.get("digest").map(String::as_str).unwrap_or(""))?;
    let up = session(reg, name, id).await?;
    {
        let mut u = up.lock().await;
        append(&mut u, req.into_body()).await?;
    }
    commit(reg, name, id, up, &d).await
}

async fn commit(
    reg: &Registry,
    name: &str,
    id: &str,
    up: Arc<Mutex<Upload>>,
    d: &str,
) -> ApiResult {
    let u = up.lock().await;
    let actual = berth_proto::image::sha256_digest_from_bytes(&u.hasher.clone().finalize());
    if actual != d {
        // The session stays open: a client may still send the missing bytes.
        return Err(err(
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
            format!(
                "the uploaded bytes ({} of them) have digest {actual}, not {d}",
                u.offset
            ),
        ));
    }
    let path = u.path.clone();
    drop(u);
    reg.blobs.commit(d, &path).await?;
    reg.uploads.lock().await.remove(id);
    let mut r = StatusCode::CREATED.into_response();
    r.headers_mut()
        .insert(header::LOCATION, hv(&format!("/v2/{name}/blobs/{d}")));
    r.headers_mut().insert("Docker-Content-Digest", hv(d));
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn as_(who: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(w) = who {
            h.insert(crate::serve::PEER_IDENTITY_HEADER, hv(w));
        }
        h
    }

    #[test]
    fn certificates_decide_who_pulls_and_who_pushes() {
        let c = Access::Certificates;
        let status = |who, m: Method| authorize(c, &as_(who), &m).err().map(|e| e.status);
        assert_eq!(status(Some("admin"), Method::PUT), None);
        assert_eq!(status(Some("system:server"), Method::POST), None);
        assert_eq!(status(Some("system:node:n1"), Method::GET), None);
        assert_eq!(status(Some("system:node:n1"), Method::HEAD), None);
        assert_eq!(
            status(Some("system:node:n1"), Method::PUT),
            Some(StatusCode::FORBIDDEN)
        );
        assert_eq!(
            status(Some("system:node:n1"), Method::DELETE),
            Some(StatusCode::FORBIDDEN)
        );
        assert_eq!(status(None, Method::GET), Some(StatusCode::UNAUTHORIZED));
        assert_eq!(
            authorize(Access::Open, &as_(None), &Method::PUT)
                .err()
                .map(|e| e.status),
            None
        );
    }

    #[test]
    fn routes_split_repository_names_that_contain_slashes() {
        assert!(matches!(route("/v2/"), Some(Route::Base)));
        assert!(matches!(route("/v2/_catalog"), Some(Route::Catalog)));
        assert!(matches!(route("/v2/a/b/c/tags/list"), Some(Route::Tags(n)) if n == "a/b/c"));
        assert!(
            matches!(route("/v2/a/b/manifests/v1"), Some(Route::Manifest(n, r)) if n == "a/b" && r == "v1")
        );
        assert!(matches!(route("/v2/a/blobs/uploads/"), Some(Route::UploadStart(n)) if n == "a"));
        assert!(
            matches!(route("/v2/a/b/blobs/uploads/123"), Some(Route::Upload(n, id)) if n == "a/b" && id == "123")
        );
        assert!(
            matches!(route("/v2/a/blobs/sha256:00"), Some(Route::Blob(n, d)) if n == "a" && d == "sha256:00")
        );
        assert!(route("/v1/x").is_none());
        let req = Request::builder()
            .uri("/v2/a/blobs/uploads/?digest=sha256%3Aab+c")
            .body(Body::empty())
            .expect("request");
        assert_eq!(query(&req)["digest"], "sha256:ab c");
    }
}
