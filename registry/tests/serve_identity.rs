//! The registry's HTTP(S) layer: the client certificate's identity reaches the router as a
//! header only this layer sets; a client cannot spoof it, and a certificate from a foreign CA
//! fails the handshake.

use std::time::Duration;

use axum::routing::get;
use berth_registry::serve::{serve, PEER_IDENTITY_HEADER};
use berth_tls::{ClientTls, ClusterCa, Identity};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_util::sync::CancellationToken;

fn echo_router() -> axum::Router {
    axum::Router::new().route(
        "/v2/",
        get(|headers: http::HeaderMap| async move {
            headers
                .get(PEER_IDENTITY_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("anonymous")
                .to_string()
        }),
    )
}

const SPOOFING_REQUEST: &str =
    "GET /v2/ HTTP/1.1\r\nHost: x\r\nx-berth-peer-identity: admin\r\nConnection: close\r\n\r\n";

async fn read_body<S: tokio::io::AsyncRead + Unpin>(mut s: S) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).to_string();
    text.split("\r\n\r\n").nth(1).unwrap_or("").to_string()
}

async fn https_get(addr: std::net::SocketAddr, tls: &ClientTls) -> std::io::Result<String> {
    let cfg = berth_tls::mtls_client_config(tls).map_err(std::io::Error::other)?;
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("127.0.0.1").map_err(std::io::Error::other)?;
    let mut s = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await?;
    s.write_all(SPOOFING_REQUEST.as_bytes()).await?;
    Ok(read_body(s).await)
}

#[tokio::test]
async fn client_certificate_identity_reaches_the_router_and_cannot_be_spoofed() {
    let ca = ClusterCa::generate().expect("ca");
    let server = ca
        .issue_server(&["127.0.0.1".to_string()])
        .expect("server cert");
    let tls = berth_tls::optional_mtls_server_config(ca.cert_pem(), &server).expect("tls");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = CancellationToken::new();
    tokio::spawn(serve(listener, Some(tls), echo_router(), stop.clone()));

    let node = ClientTls::new(
        ca.cert_pem(),
        ca.issue_client(&Identity::Node("n1".into()))
            .expect("node cert"),
    );
    assert_eq!(https_get(addr, &node).await.expect("get"), "system:node:n1");

    // A certificate from another cluster's CA never gets through the handshake.
    let other = ClusterCa::generate().expect("other ca");
    let foreign = ClientTls::new(
        ca.cert_pem(),
        other.issue_client(&Identity::Admin).expect("foreign cert"),
    );
    let r = https_get(addr, &foreign).await;
    assert!(
        r.as_deref().map_or(true, str::is_empty),
        "a foreign-CA certificate was served: {r:?}"
    );
    stop.cancel();
}

#[tokio::test]
async fn plain_http_callers_are_anonymous_even_when_they_send_the_identity_header() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = CancellationToken::new();
    tokio::spawn(serve(listener, None, echo_router(), stop.clone()));
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(SPOOFING_REQUEST.as_bytes())
        .await
        .expect("write");
    assert_eq!(read_body(s).await, "anonymous");
    stop.cancel();
}
