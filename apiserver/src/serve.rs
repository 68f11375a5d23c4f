//! The API port: one TLS listener serving gRPC (the `berth` CLI, agents, raft, forwarding) and
//! the Kubernetes REST API (kubectl, client libraries) side by side.
//!
//! Each connection is TLS (the cluster CA verifies a client certificate when one is offered),
//! then HTTP/2 or HTTP/1.1 (ALPN; hyper-util's auto builder). Every request gets the verified
//! identity as a [`berth_tls::VerifiedPeer`] extension — set here only, never from the wire —
//! and is routed by its content type: `application/grpc*` to tonic's routes, everything else
//! to [`crate::kube`]. Both front doors end in the same `ApiService` (authorization,
//! validation, raft), so there is one write path.
//!
//! Shutdown: stop accepting, ask every connection to finish gracefully (HTTP/2 GOAWAY; watch
//! streams end because the service's shutdown token is cancelled too), wait for them up to
//! [`DRAIN`], then drop the rest — so no task keeps the store open after the server stops.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::kube::KubeApi;

/// How long connections get to finish after shutdown starts.
const DRAIN: Duration = Duration::from_secs(5);
/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serve `grpc` and `kube` on `listener` until `shutdown`.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Arc<tokio_rustls::rustls::ServerConfig>,
    grpc: axum::Router,
    kube: Arc<KubeApi>,
    shutdown: CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let mut conns = JoinSet::new();
    loop {
        let (sock, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            // Reap finished connections so the set does not grow without bound.
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "api: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Without TCP_NODELAY small responses wait for delayed ACKs (~40 ms per request).
        let _ = sock.set_nodelay(true);
        let (acceptor, grpc, kube, shutdown) = (
            acceptor.clone(),
            grpc.clone(),
            kube.clone(),
            shutdown.clone(),
        );
        conns.spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(sock)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "api: TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "api: TLS handshake timed out");
                    return;
                }
            };
            let certs = tls.get_ref().1.peer_certificates();
            let who = berth_tls::identity_of_peer(certs);
            let issued = certs
                .and_then(|c| c.first())
                .and_then(|c| berth_tls::CertInfo::of_der(c).ok())
                .map(|i| i.issued);
            connection(TokioIo::new(tls), who, issued, peer, grpc, kube, shutdown).await
        });
    }
    drop(listener);
    let drained =
        tokio::time::timeout(DRAIN, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::debug!(
            left = conns.len(),
            "api: connections still open after the drain; dropping them"
        );
        conns.abort_all();
        while conns.join_next().await.is_some() {}
    }
}

/// UNAUTHENTICATED (gRPC) or 401 (REST) for a revoked certificate.
fn refuse_revoked<B>(req: &http::Request<B>, message: String) -> axum::response::Response {
    if is_grpc(req) {
        return tonic::Status::unauthenticated(message).into_http::<axum::body::Body>();
    }
    let body = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "reason": "Unauthorized",
        "code": 401,
    });
    http::Response::builder()
        .status(http::StatusCode::UNAUTHORIZED)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(axum::body::Body::from(body.to_string()))
        .unwrap_or_default()
}

fn is_grpc<B>(req: &http::Request<B>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

async fn connection<I>(
    io: TokioIo<I>,
    who: Option<berth_tls::Identity>,
    issued: Option<std::time::SystemTime>,
    peer: SocketAddr,
    grpc: axum::Router,
    kube: Arc<KubeApi>,
    shutdown: CancellationToken,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        // Only this layer sets the identity; a request cannot carry its own.
        req.extensions_mut().remove::<berth_tls::VerifiedPeer>();
        if let Some(w) = &who {
            req.extensions_mut()
                .insert(berth_tls::VerifiedPeer(w.clone()));
        }
        let grpc = grpc.clone();
        let kube = kube.clone();
        // The revocation list (`berth node revoke`), checked on every request so a revoked
        // node's open connections (watches) stop too.
        let revoked = match (&who, issued) {
            (Some(w), Some(t)) => kube.revoked(w, t),
            _ => None,
        };
        async move {
            if let Some(m) = revoked {
                return Ok::<_, Infallible>(refuse_revoked(&req, m));
            }
            let req = req.map(axum::body::Body::new);
            let resp = if is_grpc(&req) {
                grpc.oneshot(req)
                    .await
                    .unwrap_or_else(|e: Infallible| match e {})
            } else {
                kube.handle(req).await
            };
            Ok::<_, Infallible>(resp)
        }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // Keep idle HTTP/2 connections (agents' watches) honest through NATs and dead peers.
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(60)))
        .keep_alive_timeout(Duration::from_secs(20));
    let conn = builder.serve_connection_with_upgrades(io, svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "api: connection ended with an error");
            }
            return;
        }
        _ = shutdown.cancelled() => {}
    }
    conn.as_mut().graceful_shutdown();
    if let Err(e) = conn.await {
        tracing::debug!(%peer, error = %e, "api: connection ended with an error while draining");
    }
}
