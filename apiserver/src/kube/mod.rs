//! The Kubernetes REST API, served next to gRPC on the API port (see [`crate::serve`]), so
//! kubectl, client-go, kube-rs and the Python client work against Berth unchanged.
//!
//! One write path, two front doors: every handler here calls the same [`ApiService`] methods
//! the gRPC clients reach, in process, with the caller's verified identity attached — so
//! authentication, the node authorizer, validation, image trust, raft, forwarding to the
//! leader and watch resumption are exactly the gRPC API's. This module only translates:
//! paths and query parameters to requests, answers to Kubernetes objects, lists, Tables,
//! watch event streams and `Status` errors ([`status`]).
//!
//! Routes (`{g}` is a group, core kinds live under `/api/v1`):
//!
//! | path                                                   | methods                         |
//! |--------------------------------------------------------|---------------------------------|
//! | `/version`, `/healthz`, `/livez`, `/readyz`             | GET (no credential needed)      |
//! | `/api`, `/apis`, `/apis/{g}`, `/api/v1`, `/apis/{g}/v1` | GET discovery (v2 if asked)     |
//! | `/openapi/v3`, `/openapi/v3/api/v1`, `/openapi/v3/apis/{g}/v1` | GET                      |
//! | `…/[namespaces/{ns}/]{plural}`                          | GET list/watch, POST, DELETE    |
//! | `…/[namespaces/{ns}/]{plural}/{name}`                   | GET, PUT, PATCH, DELETE         |
//! | `…/{name}/status`, `…/{name}/scale`                     | GET, PUT, PATCH                 |
//! | `/api/v1/namespaces/{ns}/pods/{name}/portforward`       | GET, POST upgrade ([`portforward`]) |
//! | `/api/v1/namespaces/{ns}/pods/{name}/log`               | GET ([`podlog`])                |
//! | `/api/v1/namespaces/{ns}/pods/{name}/exec`              | GET, POST WebSocket ([`exec`])  |

mod apply;
mod cascade;
pub mod discovery;
mod exec;
pub mod fields;
mod handlers;
pub mod managed;
mod podlog;
pub mod portforward;
pub mod protobuf;
pub mod spdy;
pub mod status;
pub mod table;

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use berth_proto::Kind;
use berth_tls::{Identity, VerifiedPeer};
use http::{header, Method, StatusCode};
use serde_json::Value;

use crate::service::ApiService;
use status::{KubeError, Target};

type Resp = http::Response<Body>;

/// The Kubernetes REST front door of one server.
pub struct KubeApi {
    api: Arc<ApiService>,
    advertise: String,
}

impl KubeApi {
    /// Why requests from `who` (a certificate issued at `issued`) are refused, if revoked.
    pub(crate) fn revoked(&self, who: &Identity, issued: std::time::SystemTime) -> Option<String> {
        self.api.revoked(who, issued)
    }
}

/// What a handler needs to know about its request besides the body.
pub(crate) struct Ctx {
    who: Option<Identity>,
    query: HashMap<String, String>,
    accept: String,
    content_type: String,
    user_agent: String,
}

impl Ctx {
    fn q(&self, name: &str) -> &str {
        self.query.get(name).map(String::as_str).unwrap_or("")
    }
    fn flag(&self, name: &str) -> bool {
        matches!(self.q(name), "true" | "1")
    }
    fn dry_run(&self) -> Result<bool, KubeError> {
        match self.q("dryRun") {
            "" => Ok(false),
            "All" => Ok(true),
            other => Err(KubeError::bad_request(format!(
                "invalid dryRun {other:?}: the only supported value is \"All\""
            ))),
        }
    }
}

/// A resource path: which kind, where, and which subresource.
#[derive(Debug, Clone)]
pub(crate) struct ResPath {
    kind: Kind,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

impl ResPath {
    fn target(&self) -> Target {
        Target {
            kind: Some(self.kind),
            name: self.name.clone().unwrap_or_default(),
        }
    }
}

enum Route {
    Version,
    Health,
    Api,
    Apis,
    Group(String),
    Resources(String),
    OpenApiRoot,
    OpenApi(String),
    Resource(ResPath),
}

fn parse_route(path: &str) -> Result<Route, KubeError> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    Ok(match segs.as_slice() {
        ["version"] => Route::Version,
        ["healthz" | "livez" | "readyz"] => Route::Health,
        ["api"] => Route::Api,
        ["apis"] => Route::Apis,
        ["apis", g] => Route::Group(g.to_string()),
        ["api", "v1"] => Route::Resources(String::new()),
        ["apis", g, "v1"] if discovery::GROUPS.contains(g) => Route::Resources(g.to_string()),
        ["openapi", "v3"] => Route::OpenApiRoot,
        ["openapi", "v3", "api", "v1"] => Route::OpenApi(String::new()),
        ["openapi", "v3", "apis", g, "v1"] => Route::OpenApi(g.to_string()),
        ["api", "v1", rest @ ..] => Route::Resource(resource_path("", "v1", rest)?),
        ["apis", g, v, rest @ ..] => Route::Resource(resource_path(g, v, rest)?),
        _ => return Err(KubeError::not_found_path()),
    })
}

fn resource_path(group: &str, version: &str, rest: &[&str]) -> Result<ResPath, KubeError> {
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    let (plural, name, sub) = match rest {
        [p] => (*p, None, None),
        [p, n] => (*p, Some(n.to_string()), None),
        [p, n, s] => (*p, Some(n.to_string()), Some(s.to_string())),
        _ => return Err(KubeError::not_found_path()),
    };
    let kind = discovery::kind_of(group, version, plural).ok_or_else(KubeError::not_found_path)?;
    if namespace.is_some() && !kind.namespaced() {
        return Err(KubeError::not_found_path());
    }
    if namespace.is_none() && kind.namespaced() && name.is_some() {
        return Err(KubeError::not_found_path());
    }
    match sub.as_deref() {
        None => {}
        Some("status") if kind.has_status() => {}
        Some("scale") if discovery::has_scale(kind) => {}
        Some(s) if kind == Kind::Pod && discovery::POD_SUBRESOURCES.iter().any(|p| p.0 == s) => {}
        Some(_) => return Err(KubeError::not_found_path()),
    }
    Ok(ResPath {
        kind,
        namespace,
        name,
        sub,
    })
}

impl KubeApi {
    pub fn new(api: Arc<ApiService>, advertise: String) -> KubeApi {
        KubeApi { api, advertise }
    }

    /// Answer one request (never fails: errors become `Status` responses).
    pub async fn handle(&self, req: http::Request<Body>) -> Resp {
        match self.route(req).await {
            Ok(r) => r,
            Err(e) => error_response(&e),
        }
    }

    async fn route(&self, req: http::Request<Body>) -> Result<Resp, KubeError> {
        let who = req.extensions().get::<VerifiedPeer>().map(|p| p.0.clone());
        let headers = req.headers();
        let header_str = |name: header::HeaderName| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        // No client certificate: a pipeline's bearer token, if it sent one.
        let mut bearer_error = None;
        let who = match who {
            Some(w) => Some(w),
            None => match bearer(req.headers()) {
                Some(token) => match self.api.bearer_identity(token) {
                    Ok(id) => Some(id),
                    Err(e) => {
                        tracing::info!(reason = %e, "kube api: bearer token refused");
                        bearer_error = Some(e);
                        None
                    }
                },
                None => None,
            },
        };
        let ctx = Ctx {
            who,
            query: req
                .uri()
                .query()
                .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
                .unwrap_or_default(),
            accept: header_str(header::ACCEPT),
            content_type: header_str(header::CONTENT_TYPE),
            user_agent: header_str(header::USER_AGENT),
        };
        let path = req.uri().path().to_string();
        let route = parse_route(&path)?;
        match route {
            Route::Version => return Ok(json_response(StatusCode::OK, &discovery::version())),
            Route::Health => {
                return Ok(http::Response::builder()
                    .header(header::CONTENT_TYPE, "text/plain")
                    .body(Body::from("ok"))
                    .unwrap_or_default())
            }
            _ => {}
        }
        if ctx.who.is_none() {
            return Err(KubeError::new(
                401,
                "Unauthorized",
                if bearer_error.is_some() {
                    "the bearer token is not valid (unknown, revoked, expired or mistyped): \
                     create a new one with `berth token create --name NAME --ttl 24h`"
                } else {
                    "no client certificate or bearer token: this server requires a \
                     certificate from the cluster CA or a token from `berth token create`; \
                     `berth kubeconfig` writes a kubeconfig with the admin credential"
                },
            ));
        }
        let method = req.method().clone();
        let get_only = |v: Value| {
            if method == Method::GET {
                Ok(json_response(StatusCode::OK, &v))
            } else {
                Err(KubeError::method_not_allowed(&method, &path))
            }
        };
        match route {
            Route::Api if discovery::wants_aggregated(&ctx.accept) => {
                Ok(aggregated_response(discovery::aggregated(true)))
            }
            Route::Apis if discovery::wants_aggregated(&ctx.accept) => {
                Ok(aggregated_response(discovery::aggregated(false)))
            }
            Route::Api => get_only(discovery::api_versions(&self.advertise)),
            Route::Apis => get_only(discovery::api_group_list()),
            Route::Group(g) => {
                get_only(discovery::api_group(&g).ok_or_else(KubeError::not_found_path)?)
            }
            Route::Resources(g) => get_only(discovery::resource_list(&g)),
            Route::OpenApiRoot => get_only(discovery::openapi_root()),
            Route::OpenApi(g) => {
                get_only(discovery::openapi_gv(&g).ok_or_else(KubeError::not_found_path)?)
            }
            Route::Resource(rp) => self.resource(req, &ctx, &rp).await,
            Route::Version | Route::Health => Err(KubeError::not_found_path()),
        }
    }

    async fn resource(
        &self,
        req: http::Request<Body>,
        ctx: &Ctx,
        rp: &ResPath,
    ) -> Result<Resp, KubeError> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        match (&method, rp.name.is_some(), rp.sub.as_deref()) {
            (&Method::GET | &Method::POST, true, Some("portforward")) => {
                self.portforward(req, ctx, rp).await
            }
            (&Method::GET, false, _) if ctx.flag("watch") => self.watch(ctx, rp).await,
            (&Method::GET, false, _) => self.list(ctx, rp).await,
            (&Method::GET, true, Some("scale")) => self.get_scale(ctx, rp).await,
            (&Method::GET, true, Some("log")) => self.pod_log(ctx, rp).await,
            (&Method::GET | &Method::POST, true, Some("exec")) => self.pod_exec(req, ctx, rp).await,
            (_, true, Some("exec")) => Err(KubeError::method_not_allowed(&method, &path)),
            (_, true, Some("log")) => Err(KubeError::method_not_allowed(&method, &path)),
            (&Method::GET, true, _) => self.get(ctx, rp).await,
            (&Method::POST, false, _) if rp.namespace.is_some() || !rp.kind.namespaced() => {
                let body = read_body(req).await?;
                self.create(ctx, rp, body).await
            }
            (&Method::PUT, true, Some("scale")) => {
                let body = read_body(req).await?;
                self.put_scale(ctx, rp, body).await
            }
            (&Method::PUT, true, _) => {
                let body = read_body(req).await?;
                self.update(ctx, rp, body).await
            }
            (&Method::PATCH, true, _) => {
                let body = read_body(req).await?;
                self.patch(ctx, rp, body).await
            }
            (&Method::DELETE, true, None) => {
                let body = read_body(req).await?;
                self.delete(ctx, rp, body).await
            }
            (&Method::DELETE, false, None) => {
                let body = read_body(req).await?;
                self.delete_collection(ctx, rp, body).await
            }
            _ => Err(KubeError::method_not_allowed(&method, &path)),
        }
    }

    /// A request to the shared service, as the caller.
    fn req<T>(&self, ctx: &Ctx, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if let Some(w) = &ctx.who {
            r.extensions_mut().insert(VerifiedPeer(w.clone()));
        }
        r
    }
}

/// The token of an `Authorization: Bearer TOKEN` header.
fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}

/// The request body, bounded like a gRPC request.
async fn read_body(req: http::Request<Body>) -> Result<bytes::Bytes, KubeError> {
    use http_body_util::BodyExt as _;
    let limited = http_body_util::Limited::new(req.into_body(), crate::service::MAX_REQUEST_BYTES);
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Err(KubeError::new(
                    413,
                    "RequestEntityTooLarge",
                    format!(
                        "request body is larger than {} bytes",
                        crate::service::MAX_REQUEST_BYTES
                    ),
                ))
            } else {
                Err(KubeError::bad_request(format!(
                    "reading the request body: {e}"
                )))
            }
        }
    }
}

/// Decode a JSON (or YAML) object body.
fn decode_object(ctx: &Ctx, body: &[u8]) -> Result<Value, KubeError> {
    let ct = media_type(&ctx.content_type);
    let v: Value = if ct == protobuf::PROTOBUF {
        protobuf::decode(body).map_err(|e| {
            KubeError::bad_request(format!("the protobuf request body cannot be decoded: {e}"))
        })?
    } else if ct == "application/yaml" {
        serde_yaml_ng::from_slice(body).map_err(|e| {
            KubeError::bad_request(format!("the request body is not valid YAML: {e}"))
        })?
    } else if ct.is_empty() || ct == "application/json" || ct == "*/*" {
        serde_json::from_slice(body).map_err(|e| {
            KubeError::bad_request(format!("the request body is not valid JSON: {e}"))
        })?
    } else {
        return Err(KubeError::unsupported_media(format!(
            "the body of this request must be application/json, application/yaml or \
             application/vnd.kubernetes.protobuf, not {ct}"
        )));
    };
    if !v.is_object() {
        return Err(KubeError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    Ok(v)
}

/// `application/json; charset=utf-8` -> `application/json`.
fn media_type(ct: &str) -> String {
    ct.split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

fn json_response(code: StatusCode, v: &Value) -> Resp {
    http::Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(serde_json::to_vec(v).unwrap_or_default()))
        .unwrap_or_default()
}

fn aggregated_response(v: Value) -> Resp {
    http::Response::builder()
        .header(header::CONTENT_TYPE, discovery::AGGREGATED_V2)
        .body(Body::from(serde_json::to_vec(&v).unwrap_or_default()))
        .unwrap_or_default()
}

fn error_response(e: &KubeError) -> Resp {
    let code = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = json_response(code, &e.to_status());
    if let Some(s) = e.retry_after {
        if let Ok(v) = http::HeaderValue::from_str(&s.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    r
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rp(path: &str) -> ResPath {
        match parse_route(path).unwrap() {
            Route::Resource(r) => r,
            _ => panic!("{path} is not a resource path"),
        }
    }

    #[test]
    fn paths_map_to_kinds_namespaces_names_and_subresources() {
        let r = rp("/apis/apps/v1/namespaces/prod/deployments/web/scale");
        assert_eq!(r.kind, Kind::Deployment);
        assert_eq!(r.namespace.as_deref(), Some("prod"));
        assert_eq!(r.name.as_deref(), Some("web"));
        assert_eq!(r.sub.as_deref(), Some("scale"));
        let r = rp("/api/v1/pods");
        assert_eq!((r.kind, r.namespace, r.name), (Kind::Pod, None, None));
        let r = rp("/api/v1/nodes/n1/status");
        assert_eq!(r.kind, Kind::Node);
        assert_eq!(r.sub.as_deref(), Some("status"));
        for bad in [
            "/api/v1/pods/x",
            "/api/v1/namespaces/default/nodes/n1",
            "/apis/apps/v2/deployments",
            "/apis/apps/v1/namespaces/default/deployments/web/logs",
            "/api/v1/namespaces/default/services/x/scale",
            "/api/v1/widgets",
            "/nope",
        ] {
            assert!(parse_route(bad).is_err(), "{bad}");
        }
    }
}
