//! Serving the registry's router over plain HTTP (loopback, `berth dev`) or HTTPS with the
//! cluster CA, where the client certificate — when one is offered — names the caller.
//!
//! The verified identity reaches the router as the [`PEER_IDENTITY_HEADER`] request header,
//! set by this layer only: any value a client sends under that name is removed first, so a
//! handler (the authorizer) can trust it as it would trust the TLS session itself.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

/// Request header carrying the TLS-verified client identity (`admin`, `system:server`,
/// `system:node:NAME`); absent when the client presented no certificate or on plain HTTP.
pub const PEER_IDENTITY_HEADER: &str = "x-berth-peer-identity";

/// Serve `router` on `listener` until `shutdown`: HTTPS when `tls` is given (identity from the
/// client certificate), plain HTTP otherwise. Connections are HTTP/1.1 (what docker, skopeo
/// and containerd speak to registries) with keep-alive.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    router: axum::Router,
    shutdown: CancellationToken,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let (sock, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "registry: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = sock.set_nodelay(true);
        let (router, acceptor, shutdown) = (router.clone(), acceptor.clone(), shutdown.clone());
        tokio::spawn(async move {
            match acceptor {
                None => connection(TokioIo::new(sock), None, peer, router, shutdown).await,
                Some(acceptor) => {
                    let tls = match tokio::time::timeout(
                        Duration::from_secs(10),
                        acceptor.accept(sock),
                    )
                    .await
                    {
                        Ok(Ok(t)) => t,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "registry: TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let who = berth_tls::identity_of_peer(tls.get_ref().1.peer_certificates())
                        .map(|i| i.to_string());
                    connection(TokioIo::new(tls), who, peer, router, shutdown).await
                }
            }
        });
    }
}

async fn connection<I>(
    io: TokioIo<I>,
    who: Option<String>,
    peer: SocketAddr,
    router: axum::Router,
    shutdown: CancellationToken,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let who = who.and_then(|w| HeaderValue::from_str(&w).ok());
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        let headers = req.headers_mut();
        headers.remove(PEER_IDENTITY_HEADER);
        if let Some(w) = &who {
            headers.insert(PEER_IDENTITY_HEADER, w.clone());
        }
        let router = router.clone();
        async move {
            let resp = router
                .oneshot(req.map(axum::body::Body::new))
                .await
                .unwrap_or_else(|e: Infallible| match e {});
            Ok::<_, Infallible>(resp)
        }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(io, svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "registry: connection ended with an error");
            }
        }
        _ = shutdown.cancelled() => {}
    }
}
