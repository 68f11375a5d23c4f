//! The node-local registry mirror: a pull-only OCI Distribution endpoint on the node's loopback
//! (`--registry-mirror`, default 127.0.0.1:5001) that forwards to the cluster registry of the
//! servers over mutual TLS with this node's certificate.
//!
//! Docker talks plain HTTP to registries on 127.0.0.0/8 without any daemon configuration, so
//! the engine pulls cluster images as `127.0.0.1:5001/REPO:TAG` while the agent's node
//! certificate (which the engine never sees) authenticates the pull. The servers' registry URLs
//! come from the store's `RegistryServer` objects, refreshed every 30 s and whenever every
//! known server failed. Each node prefers one server (chosen by its name, so a fleet spreads
//! over the servers) and fails over to the others on connection errors and 5xx answers. Only
//! GET and HEAD pass: pushes go to the servers with the admin credential.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use berth_client::Client;
use berth_proto::types::RegistryServer;
use futures::TryStreamExt;
use http::{HeaderValue, Method, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// Headers of the upstream answer a registry client needs.
const PASSED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "docker-content-digest",
    "docker-distribution-api-version",
    "etag",
    "link",
    "www-authenticate",
];

#[derive(Clone)]
struct Mirror {
    client: Client,
    http: reqwest::Client,
    node: String,
    upstreams: Arc<Mutex<(Vec<String>, Option<Instant>)>>,
}

fn registry_error(status: StatusCode, code: &str, message: String) -> Response {
    let body = serde_json::json!({"errors": [{"code": code, "message": message, "detail": null}]});
    (status, axum::Json(body)).into_response()
}

/// FNV-1a: a stable choice of preferred server per node (std's hasher is randomly seeded).
pub fn preference(node: &str, n: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % n.max(1) as u64) as usize
}

impl Mirror {
    /// The servers' registry URLs, this node's preferred one first.
    async fn upstreams(&self, refresh: bool) -> Result<Vec<String>, String> {
        let mut g = self.upstreams.lock().await;
        let stale = g.1.is_none_or(|t| t.elapsed() > Duration::from_secs(30));
        if refresh || stale || g.0.is_empty() {
            match self.client.list::<RegistryServer>(None, "").await {
                Ok((mut servers, _)) => {
                    servers.sort_by_key(|s| s.spec.server_id);
                    let mut urls: Vec<String> = servers.into_iter().map(|s| s.spec.url).collect();
                    if !urls.is_empty() {
                        let first = preference(&self.node, urls.len());
                        urls.rotate_left(first);
                    }
                    *g = (urls, Some(Instant::now()));
                }
                Err(e) if g.0.is_empty() => {
                    return Err(format!("cannot list the cluster's registry servers: {e}"))
                }
                Err(e) => tracing::warn!(error = %e, "mirror: keeping the known registry servers"),
            }
        }
        if g.0.is_empty() {
            return Err(
                "no server of this cluster runs a registry (start servers with --registry-listen)"
                    .to_string(),
            );
        }
        Ok(g.0.clone())
    }

    async fn forward(
        &self,
        method: &Method,
        path: &str,
        headers: &http::HeaderMap,
        base: &str,
    ) -> Result<reqwest::Response, String> {
        let mut out = self.http.request(method.clone(), format!("{base}{path}"));
        for h in ["accept", "range", "if-none-match"] {
            for v in headers.get_all(h) {
                out = out.header(h, v);
            }
        }
        out.send().await.map_err(|e| berth_tls::error_chain(&e))
    }
}

async fn handle(State(m): State<Mirror>, req: Request) -> Response {
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return registry_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            format!(
                "this node-local mirror is pull-only ({} refused): push to a server's registry \
                 (berth build --push, or docker push SERVER:PORT/...) with the admin credential",
                req.method()
            ),
        );
    }
    if !req.uri().path().starts_with("/v2") {
        return registry_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("no such endpoint: {}", req.uri().path()),
        );
    }
    let (parts, _) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/v2/".to_string());
    let mut errors = Vec::new();
    for attempt in 0..2 {
        let ups = match m.upstreams(attempt > 0).await {
            Ok(u) => u,
            Err(e) => {
                return registry_error(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", e);
            }
        };
        for base in &ups {
            match m.forward(&parts.method, &path, &parts.headers, base).await {
                Ok(resp) if resp.status().is_server_error() => {
                    errors.push(format!("{base}: {}", resp.status()));
                }
                Ok(resp) => return relay(resp),
                Err(e) => errors.push(format!("{base}: {e}")),
            }
        }
    }
    tracing::warn!(%path, errors = %errors.join("; "), "mirror: no registry server answered");
    registry_error(
        StatusCode::BAD_GATEWAY,
        "UNAVAILABLE",
        format!(
            "no registry server of the cluster answered: {}",
            errors.join("; ")
        ),
    )
}

fn relay(resp: reqwest::Response) -> Response {
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut headers = http::HeaderMap::new();
    for h in PASSED_HEADERS {
        for v in resp.headers().get_all(*h) {
            if let Ok(v) = HeaderValue::from_bytes(v.as_bytes()) {
                headers.append(*h, v);
            }
        }
    }
    let body = Body::from_stream(resp.bytes_stream().map_err(std::io::Error::other));
    let mut r = Response::new(body);
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    r
}

/// Bind the mirror's listener (early, so a taken port fails the agent's start clearly).
pub async fn bind(listen: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(listen).await
}

/// Serve the mirror on `listener` until `shutdown`, forwarding with `tls` (the node's
/// credential) to the registry servers listed through `client`.
pub async fn serve(
    listener: TcpListener,
    client: Client,
    tls: &berth_tls::ClientTls,
    node: String,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let cfg = berth_tls::mtls_client_config(tls).map_err(|e| format!("mirror TLS: {e}"))?;
    let http = reqwest::Client::builder()
        .use_preconfigured_tls((*cfg).clone())
        .connect_timeout(Duration::from_secs(3))
        .build()
        .map_err(|e| format!("mirror HTTP client: {e}"))?;
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    let mirror = Mirror {
        client,
        http,
        node,
        upstreams: Arc::new(Mutex::new((Vec::new(), None))),
    };
    let app = axum::Router::new().fallback(handle).with_state(mirror);
    tracing::info!(addr = ?addr, "registry mirror listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .map_err(|e| format!("mirror: {e}"))
}

#[cfg(test)]
mod tests {
    use super::preference;

    #[test]
    fn each_node_prefers_a_stable_server_and_nodes_spread() {
        assert_eq!(preference("node-a", 3), preference("node-a", 3));
        let picks: std::collections::HashSet<usize> =
            (0..30).map(|i| preference(&format!("n{i}"), 3)).collect();
        assert_eq!(picks.len(), 3, "30 nodes use all 3 servers");
        assert_eq!(preference("x", 0), 0);
    }
}
