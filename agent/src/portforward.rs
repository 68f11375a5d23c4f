//! The agent's end of `pods/{name}/portforward`: `GET /portForward/{namespace}/{pod}?port=N&uid=U`
//! with `Connection: Upgrade`, `Upgrade: berth-portforward`, on the logs API's mutual-TLS
//! listener, for `system:server` certificates only (API servers relay kubectl's streams here;
//! see `berth_apiserver::kube::portforward`).
//!
//! The agent connects to the pod's port from the node first, then answers `101 Switching
//! Protocols` and copies bytes both ways (half-closes passed on) until both sides are done; a
//! failure is an error status whose text is the kubelet's message for it, which the server
//! puts on the client's error stream:
//! `error forwarding port 8080 to pod default/web, uid 1f…: dial tcp 10.42.1.5:8080: connect: connection refused`.
//!
//! Where a pod's port is ([`target_addr`]): a pod on the node's pod network (Docker, its own
//! `status.podIP`) at `podIP:port`; a pod sharing the node's network (a process pod, or a Docker
//! pod with published ports) at `127.0.0.1:hostPort` for the host port published for that
//! container port, or `127.0.0.1:port` when none was (a process listening on a fixed port).

use std::net::SocketAddr;
use std::time::Duration;

use berth_metrics::http::{text_response, Body};
use berth_proto::types::Pod;
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::api::PodCache;

/// The upgrade token (the API server's `AGENT_UPGRADE`).
pub const UPGRADE: &str = "berth-portforward";

const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// A parsed `/portForward/...` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardRequest {
    pub namespace: String,
    pub pod: String,
    pub port: u16,
    /// Empty: any pod of that name.
    pub uid: String,
}

/// Is this request for the port-forward endpoint?
pub fn is_portforward_path<B>(req: &Request<B>) -> bool {
    req.uri().path().starts_with("/portForward/")
}

/// Parse `/portForward/NS/POD?port=N[&uid=U]`.
pub fn parse_target(path: &str, query: Option<&str>) -> Result<ForwardRequest, String> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (ns, pod) = match parts.as_slice() {
        ["portForward", ns, pod] if !ns.is_empty() && !pod.is_empty() => (*ns, *pod),
        _ => {
            return Err(format!(
                "unknown path {path:?}: use /portForward/NAMESPACE/POD?port=N"
            ))
        }
    };
    let mut port = None;
    let mut uid = String::new();
    for kv in query.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k {
            "port" => {
                port = Some(
                    v.parse::<u16>()
                        .ok()
                        .filter(|p| *p > 0)
                        .ok_or_else(|| format!("port={v:?} is not a port number (1-65535)"))?,
                )
            }
            "uid" => uid = v.to_string(),
            _ => return Err(format!("unknown parameter {k:?}: use port, uid")),
        }
    }
    Ok(ForwardRequest {
        namespace: ns.to_string(),
        pod: pod.to_string(),
        port: port.ok_or("the port parameter is required: ?port=N")?,
        uid,
    })
}

/// Where `port` of `pod` is reached from its node (see the module docs).
pub fn target_addr(pod: &Pod, port: u16) -> SocketAddr {
    let loopback = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    let Some(st) = pod.status.as_ref() else {
        return loopback(port);
    };
    if !st.pod_ip.is_empty() && st.pod_ip != st.host_ip {
        if let Ok(ip) = st.pod_ip.parse::<std::net::IpAddr>() {
            return SocketAddr::new(ip, port);
        }
    }
    st.host_ports
        .iter()
        .find(|h| h.container_port == i32::from(port))
        .and_then(|h| u16::try_from(h.host_port).ok())
        .filter(|p| *p > 0)
        .map(loopback)
        .unwrap_or_else(|| loopback(port))
}

/// Go's wording for dial errors, which clients and people grep for.
fn dial_error(addr: SocketAddr, e: &std::io::Error) -> String {
    let why = match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connect: connection refused".to_string(),
        std::io::ErrorKind::TimedOut => "i/o timeout".to_string(),
        _ => format!("connect: {e}"),
    };
    format!("dial tcp {addr}: {why}")
}

/// Answer one port-forward request (the caller has checked it is from a server).
pub async fn respond(
    mut req: Request<Incoming>,
    pods: &PodCache,
    shutdown: CancellationToken,
) -> Response<Body> {
    let fr = match parse_target(req.uri().path(), req.uri().query()) {
        Ok(r) => r,
        Err(msg) => return text_response(StatusCode::BAD_REQUEST, &msg),
    };
    let upgrade_ok = req
        .headers()
        .get(hyper::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(UPGRADE));
    if !upgrade_ok {
        return text_response(
            StatusCode::BAD_REQUEST,
            &format!("port forwarding needs Connection: Upgrade and Upgrade: {UPGRADE}"),
        );
    }
    let pod = match pods.find(&fr.namespace, &fr.pod) {
        Some(p) if fr.uid.is_empty() || p.metadata.uid == fr.uid => p,
        _ => {
            return text_response(
                StatusCode::NOT_FOUND,
                &format!(
                    "error forwarding port {} to pod {}/{}, uid {}: pod not found on this node",
                    fr.port, fr.namespace, fr.pod, fr.uid
                ),
            )
        }
    };
    let addr = target_addr(&pod, fr.port);
    let fail = |why: String| {
        format!(
            "error forwarding port {} to pod {}/{}, uid {}: {why}",
            fr.port, fr.namespace, fr.pod, pod.metadata.uid
        )
    };
    let tcp = match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            return text_response(StatusCode::BAD_GATEWAY, &fail(dial_error(addr, &e)));
        }
        Err(_) => {
            return text_response(
                StatusCode::GATEWAY_TIMEOUT,
                &fail(format!("dial tcp {addr}: i/o timeout")),
            );
        }
    };
    let _ = tcp.set_nodelay(true);
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let up = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "portforward: upgrade");
                return;
            }
        };
        let mut up = hyper_util::rt::TokioIo::new(up);
        let mut tcp = tcp;
        tokio::select! {
            r = tokio::io::copy_bidirectional(&mut up, &mut tcp) => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, %addr, "portforward: copy");
                }
            }
            _ = shutdown.cancelled() => {}
        }
    });
    let mut resp = Response::new(Empty::new().map_err(|e| match e {}).boxed_unsync());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("Upgrade"),
    );
    h.insert(
        hyper::header::UPGRADE,
        hyper::header::HeaderValue::from_static(UPGRADE),
    );
    resp
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use berth_proto::types::{HostPortMapping, PodStatus};

    #[test]
    fn requests_name_the_pod_and_a_port() {
        let r = parse_target("/portForward/default/web", Some("port=8080&uid=abc")).unwrap();
        assert_eq!(
            r,
            ForwardRequest {
                namespace: "default".into(),
                pod: "web".into(),
                port: 8080,
                uid: "abc".into()
            }
        );
        assert!(parse_target("/portForward/default/web", None)
            .unwrap_err()
            .contains("port parameter is required"));
        assert!(parse_target("/portForward/default/web", Some("port=0")).is_err());
        assert!(parse_target("/portForward/default", Some("port=1")).is_err());
        assert!(parse_target("/portForward/default/web", Some("x=1&port=1")).is_err());
    }

    fn pod(pod_ip: &str, host_ip: &str, ports: &[(i32, i32)]) -> Pod {
        Pod {
            status: Some(PodStatus {
                pod_ip: pod_ip.into(),
                host_ip: host_ip.into(),
                host_ports: ports
                    .iter()
                    .map(|(c, h)| HostPortMapping {
                        container_port: *c,
                        host_port: *h,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn pods_on_the_pod_network_are_dialled_at_their_ip_and_others_on_loopback_host_ports() {
        assert_eq!(
            target_addr(&pod("10.42.1.5", "192.168.1.2", &[(80, 30080)]), 80).to_string(),
            "10.42.1.5:80"
        );
        assert_eq!(
            target_addr(&pod("127.0.0.1", "127.0.0.1", &[(8080, 40101)]), 8080).to_string(),
            "127.0.0.1:40101"
        );
        assert_eq!(
            target_addr(&pod("", "10.0.0.7", &[(8080, 40101)]), 9090).to_string(),
            "127.0.0.1:9090"
        );
        assert_eq!(target_addr(&Pod::default(), 22).to_string(), "127.0.0.1:22");
    }

    #[test]
    fn connection_refused_reads_as_go_says_it() {
        let e = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(
            dial_error("10.42.1.5:8080".parse().unwrap(), &e),
            "dial tcp 10.42.1.5:8080: connect: connection refused"
        );
    }
}
