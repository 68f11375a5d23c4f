//! `GET /api/v1/namespaces/{ns}/pods/{name}/log`: a container's log, streamed from the agent
//! of the pod's node (its logs API, `GET /containerLogs/...`, see `berth_agent::logs`) over
//! mutual TLS with this server's `system:server` certificate — the way kube-apiserver proxies
//! to the kubelet. Query parameters: `container`, `follow`, `tailLines`, `previous`,
//! `limitBytes`; `timestamps` and `sinceSeconds`/`sinceTime` are refused (the agents' log
//! stores keep no per-line times yet).
//!
//! The checks and their messages are Kubernetes' (pkg/registry/core/pod): a missing or
//! unknown container is 400 `container X is not valid for pod Y`, a container that has not
//! started is 400 `container "X" in pod "Y" is waiting to start: REASON`, a pod without a node
//! is 400 `pod Y does not have a host assigned`.
//!
//! Also here: what pods/log and pods/exec share — who may use them ([`authorize_pod_stream`])
//! and reaching a pod's agent ([`agent_endpoint`], [`agent_request`]).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use berth_proto::pb::{self, api_server::Api as _};
use berth_tls::Identity;
use bytes::Bytes;
use futures::StreamExt as _;
use http::{header, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::status::KubeError;
use super::{Ctx, KubeApi, ResPath, Resp};

/// How long connecting (TCP + TLS) to an agent may take.
const AGENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// pods/log and pods/exec: the administrator, servers and read-write API tokens. Nodes may
/// not (one agent reading or running commands in another node's pods), and neither may
/// read-only tokens (logs and commands reach what Secrets hold).
pub(super) fn authorize_pod_stream(
    ctx: &Ctx,
    rp: &ResPath,
    sub: &str,
    verb: &str,
) -> Result<(), KubeError> {
    let who = ctx.who.as_ref();
    let allowed = matches!(
        who,
        Some(
            Identity::Admin
                | Identity::Server
                | Identity::Token {
                    read_only: false,
                    ..
                }
        )
    );
    if allowed {
        return Ok(());
    }
    let user = who.map(|w| w.to_string()).unwrap_or_default();
    Err(KubeError::new(
        403,
        "Forbidden",
        format!(
            "pods \"{}\" is forbidden: User \"{user}\" cannot {verb} resource \"pods/{sub}\" in \
             API group \"\" in the namespace \"{}\"",
            rp.name.as_deref().unwrap_or(""),
            rp.namespace.as_deref().unwrap_or("")
        ),
    )
    .with_target(&rp.target()))
}

/// The container a request names, checked against the pod like Kubernetes does. An empty
/// name means the pod's only container (or its `kubectl.kubernetes.io/default-container`).
pub(super) fn pick_container(pod: &Value, requested: &str) -> Result<String, KubeError> {
    let pod_name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let names = |path: &str| -> Vec<String> {
        pod.pointer(path)
            .and_then(Value::as_array)
            .map(|cs| {
                cs.iter()
                    .filter_map(|c| c.get("name").and_then(Value::as_str))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let containers = names("/spec/containers");
    let inits = names("/spec/initContainers");
    if requested.is_empty() {
        if containers.len() == 1 {
            return Ok(containers[0].clone());
        }
        if let Some(d) = pod
            .pointer("/metadata/annotations/kubectl.kubernetes.io~1default-container")
            .and_then(Value::as_str)
            .filter(|d| containers.iter().any(|c| c == d))
        {
            return Ok(d.to_string());
        }
        let mut all = containers.clone();
        all.extend(inits.iter().cloned());
        return Err(KubeError::bad_request(format!(
            "a container name must be specified for pod {pod_name}, choose one of: [{}]",
            all.join(" ")
        )));
    }
    if containers.iter().chain(&inits).any(|c| c == requested) {
        Ok(requested.to_string())
    } else {
        Err(KubeError::bad_request(format!(
            "container {requested} is not valid for pod {pod_name}"
        )))
    }
}

/// The container's status entry (regular or init), if the pod reported one.
fn container_status<'a>(pod: &'a Value, container: &str) -> Option<&'a Value> {
    ["/status/containerStatuses", "/status/initContainerStatuses"]
        .iter()
        .filter_map(|p| pod.pointer(p).and_then(Value::as_array))
        .flatten()
        .find(|s| s.get("name").and_then(Value::as_str) == Some(container))
}

/// Has the container ever started (so the runtime has it and its log)? Otherwise the
/// Kubernetes message: `container "C" in pod "P" is waiting to start: REASON`.
pub(super) fn check_started(pod: &Value, container: &str, previous: bool) -> Result<(), KubeError> {
    let pod_name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let status = container_status(pod, container);
    if previous {
        if status.is_some_and(|s| s.pointer("/lastState/terminated").is_some()) {
            return Ok(());
        }
        return Err(KubeError::bad_request(format!(
            "previous terminated container \"{container}\" in pod \"{pod_name}\" not found"
        )));
    }
    let reason = match status {
        None => "ContainerCreating",
        Some(s) => {
            // Crash-looping (waiting again) still has the last attempt's log.
            let ran = s.get("restartCount").and_then(Value::as_i64).unwrap_or(0) > 0
                || s.pointer("/lastState/terminated").is_some();
            match s.pointer("/state/waiting") {
                Some(w) if !ran => w
                    .get("reason")
                    .and_then(Value::as_str)
                    .unwrap_or("ContainerCreating"),
                _ => return Ok(()),
            }
        }
    };
    Err(KubeError::bad_request(format!(
        "container \"{container}\" in pod \"{pod_name}\" is waiting to start: {reason}"
    )))
}

/// A TLS connection to an agent, as this server (`system:server`).
pub(super) type AgentConn = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// The node a pod is bound to, or Kubernetes' error for a pod that has none.
pub(super) fn node_of(pod: &Value) -> Result<&str, KubeError> {
    match pod.pointer("/spec/nodeName").and_then(Value::as_str) {
        Some(node) if !node.is_empty() => Ok(node),
        _ => Err(KubeError::bad_request(format!(
            "pod {} does not have a host assigned",
            pod.pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("")
        ))),
    }
}

/// An HTTP/1.1 connection to the agent at `endpoint` over mutual TLS (`config`: this
/// server's credential), driven by its own task (with upgrades, for exec and port-forward)
/// until the sender is dropped. The error says why, for the caller's message.
pub(super) async fn agent_http1(
    endpoint: &str,
    config: Arc<tokio_rustls::rustls::ClientConfig>,
) -> Result<hyper::client::conn::http1::SendRequest<http_body_util::Empty<Bytes>>, String> {
    let name = berth_tls::server_name(endpoint).map_err(|e| e.to_string())?;
    let tcp = tokio::net::TcpStream::connect(endpoint)
        .await
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let sock: AgentConn = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(sock))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "agent connection");
        }
    });
    Ok(sender)
}

impl KubeApi {
    /// The pod as stored (read as the caller, so its authorization applies).
    pub(super) async fn pod_value(&self, ctx: &Ctx, rp: &ResPath) -> Result<Value, KubeError> {
        let key = pb::ObjectKey {
            kind: rp.kind.as_str().to_string(),
            namespace: rp.namespace.clone().unwrap_or_default(),
            name: rp.name.clone().unwrap_or_default(),
        };
        let r = self
            .api
            .get(self.req(ctx, pb::GetRequest { key: Some(key) }))
            .await
            .map_err(|s| KubeError::from_grpc(&s, &rp.target()))?
            .into_inner();
        serde_json::from_slice(&r.object).map_err(|e| {
            KubeError::new(500, "InternalError", format!("stored pod is not JSON: {e}"))
        })
    }

    /// The agent address (`status.agentEndpoint` of the pod's Node).
    pub(super) async fn agent_endpoint(&self, pod: &Value) -> Result<String, KubeError> {
        let pod_name = pod
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        let node = node_of(pod)?;
        let key = pb::ObjectKey {
            kind: berth_proto::Kind::Node.as_str().to_string(),
            namespace: String::new(),
            name: node.to_string(),
        };
        // Read as this server: the caller may use pods/log without reading Nodes.
        let mut req = tonic::Request::new(pb::GetRequest { key: Some(key) });
        req.extensions_mut()
            .insert(berth_tls::VerifiedPeer(Identity::Server));
        let r = self.api.get(req).await.map_err(|s| {
            KubeError::new(
                500,
                "InternalError",
                format!(
                    "cannot read node {node:?} of pod {pod_name}: {}",
                    s.message()
                ),
            )
        })?;
        let v: Value = serde_json::from_slice(&r.into_inner().object).unwrap_or_default();
        match v.pointer("/status/agentEndpoint").and_then(Value::as_str) {
            Some(ep) if !ep.is_empty() => Ok(ep.to_string()),
            _ => Err(KubeError::new(
                503,
                "ServiceUnavailable",
                format!(
                    "node {node:?} of pod {pod_name} has not published its agent endpoint (is \
                     its agent running?)"
                ),
            )),
        }
    }

    /// Send `req` to the agent at `endpoint` over mutual TLS as this server. The connection is
    /// driven by its own task (with upgrades, for exec) until the response is dropped.
    pub(super) async fn agent_request(
        &self,
        endpoint: &str,
        req: http::Request<http_body_util::Empty<Bytes>>,
    ) -> Result<http::Response<hyper::body::Incoming>, KubeError> {
        let unreachable = |why: String| {
            KubeError::new(
                500,
                "InternalError",
                format!("cannot reach the agent at {endpoint}: {why}"),
            )
        };
        let tls = berth_tls::mtls_client_config(&self.api.client_tls())
            .map_err(|e| unreachable(e.to_string()))?;
        let mut sender = tokio::time::timeout(AGENT_CONNECT_TIMEOUT, agent_http1(endpoint, tls))
            .await
            .map_err(|_| unreachable(format!("no connection within {AGENT_CONNECT_TIMEOUT:?}")))?
            .map_err(unreachable)?;
        sender
            .send_request(req)
            .await
            .map_err(|e| unreachable(e.to_string()))
    }

    /// An agent's error answer (a one-line text body) as a Status.
    pub(super) async fn agent_error(resp: http::Response<hyper::body::Incoming>) -> KubeError {
        use http_body_util::BodyExt as _;
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), 64 * 1024).collect();
        let message = match tokio::time::timeout(Duration::from_secs(5), body).await {
            Ok(Ok(b)) => String::from_utf8_lossy(&b.to_bytes()).trim().to_string(),
            _ => status.to_string(),
        };
        match status.as_u16() {
            400 | 404 => KubeError::bad_request(message),
            _ => KubeError::new(
                500,
                "InternalError",
                format!("the agent answered {status}: {message}"),
            ),
        }
    }

    pub(super) async fn pod_log(&self, ctx: &Ctx, rp: &ResPath) -> Result<Resp, KubeError> {
        authorize_pod_stream(ctx, rp, "log", "get")?;
        for refused in ["timestamps", "sinceSeconds", "sinceTime"] {
            let v = ctx.q(refused);
            if !v.is_empty() && v != "false" {
                return Err(KubeError::bad_request(format!(
                    "{refused} is not supported by Berth's pod logs yet (the agents' log \
                     stores keep no per-line times): leave it out"
                )));
            }
        }
        let tail: Option<usize> = match ctx.q("tailLines") {
            "" => None,
            s => Some(s.parse().map_err(|_| {
                KubeError::bad_request(format!("invalid tailLines {s:?}: want a number >= 0"))
            })?),
        };
        let limit: Option<usize> = match ctx.q("limitBytes") {
            "" => None,
            s => match s.parse::<usize>() {
                Ok(n) if n > 0 => Some(n),
                _ => {
                    return Err(KubeError::bad_request(format!(
                        "invalid limitBytes {s:?}: want a number > 0"
                    )))
                }
            },
        };
        let follow = ctx.flag("follow");
        let previous = ctx.flag("previous");
        let pod = self.pod_value(ctx, rp).await?;
        let container = pick_container(&pod, ctx.q("container"))?;
        check_started(&pod, &container, previous)?;
        let endpoint = self.agent_endpoint(&pod).await?;
        let ns = rp.namespace.clone().unwrap_or_default();
        let name = rp.name.clone().unwrap_or_default();
        let mut path = format!("/containerLogs/{ns}/{name}/{container}");
        let mut q = Vec::new();
        if follow {
            q.push("follow=true".to_string());
        }
        if previous {
            q.push("previous=true".to_string());
        }
        if let Some(t) = tail {
            q.push(format!("tail={t}"));
        }
        if !q.is_empty() {
            path.push('?');
            path.push_str(&q.join("&"));
        }
        let req = http::Request::get(path)
            .header(header::HOST, endpoint.as_str())
            .body(http_body_util::Empty::new())
            .map_err(|e| KubeError::new(500, "InternalError", e.to_string()))?;
        let resp = self.agent_request(&endpoint, req).await?;
        if resp.status() != StatusCode::OK {
            return Err(Self::agent_error(resp).await);
        }
        let shutdown = self.api.shutdown_token();
        let body = http_body_util::BodyExt::into_data_stream(resp.into_body())
            .take_until(shutdown.cancelled_owned())
            .scan(limit.unwrap_or(usize::MAX), |room, chunk| {
                // Cut the last chunk at limitBytes; an agent read error ends the body (the
                // status line is already sent).
                if *room == 0 {
                    return futures::future::ready(None);
                }
                let out = match chunk {
                    Ok(mut b) => {
                        if b.len() > *room {
                            b.truncate(*room);
                        }
                        *room -= b.len();
                        Some(Ok::<Bytes, std::io::Error>(b))
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "pod log stream from the agent");
                        None
                    }
                };
                futures::future::ready(out)
            });
        Ok(http::Response::builder()
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Body::from_stream(body))
            .unwrap_or_default())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(status: Value) -> Value {
        json!({
            "metadata": {"name": "web", "annotations": {}},
            "spec": {"containers": [{"name": "app"}, {"name": "side"}],
                     "initContainers": [{"name": "init"}]},
            "status": status,
        })
    }

    #[test]
    fn only_admins_servers_and_read_write_tokens_may_read_logs_or_exec() {
        let rp = ResPath {
            kind: berth_proto::Kind::Pod,
            namespace: Some("default".into()),
            name: Some("web".into()),
            sub: Some("log".into()),
        };
        let ctx = |who: Option<Identity>| Ctx {
            who,
            query: Default::default(),
            accept: String::new(),
            content_type: String::new(),
            user_agent: String::new(),
        };
        let token = |read_only| Identity::Token {
            name: "ci".into(),
            read_only,
        };
        for ok in [Identity::Admin, Identity::Server, token(false)] {
            assert!(authorize_pod_stream(&ctx(Some(ok)), &rp, "log", "get").is_ok());
        }
        let e = authorize_pod_stream(
            &ctx(Some(Identity::Node("n1".into()))),
            &rp,
            "exec",
            "create",
        )
        .unwrap_err();
        assert_eq!(e.code, 403);
        assert_eq!(
            e.message,
            "pods \"web\" is forbidden: User \"system:node:n1\" cannot create resource \"pods/exec\" in API group \"\" in the namespace \"default\""
        );
        assert!(authorize_pod_stream(&ctx(Some(token(true))), &rp, "log", "get").is_err());
    }

    #[test]
    fn containers_are_checked_with_kubernetes_messages() {
        let p = pod(json!({}));
        assert_eq!(pick_container(&p, "side").unwrap(), "side");
        assert_eq!(pick_container(&p, "init").unwrap(), "init");
        let e = pick_container(&p, "nope").unwrap_err();
        assert_eq!(e.code, 400);
        assert_eq!(e.message, "container nope is not valid for pod web");
        let e = pick_container(&p, "").unwrap_err();
        assert_eq!(
            e.message,
            "a container name must be specified for pod web, choose one of: [app side init]"
        );
        let mut d = p.clone();
        d["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"] = "side".into();
        assert_eq!(pick_container(&d, "").unwrap(), "side");
        let one = json!({"metadata": {"name": "x"}, "spec": {"containers": [{"name": "only"}]}});
        assert_eq!(pick_container(&one, "").unwrap(), "only");
    }

    #[test]
    fn a_container_that_never_started_is_waiting_and_previous_needs_a_terminated_attempt() {
        let none = pod(json!({}));
        let e = check_started(&none, "app", false).unwrap_err();
        assert_eq!(
            e.message,
            "container \"app\" in pod \"web\" is waiting to start: ContainerCreating"
        );
        let pulling = pod(json!({"containerStatuses": [
            {"name": "app", "state": {"waiting": {"reason": "ImagePullBackOff"}}}]}));
        assert!(check_started(&pulling, "app", false)
            .unwrap_err()
            .message
            .ends_with("is waiting to start: ImagePullBackOff"));
        let running = pod(json!({"containerStatuses": [
            {"name": "app", "state": {"running": {}}}]}));
        assert!(check_started(&running, "app", false).is_ok());
        assert_eq!(
            check_started(&running, "app", true).unwrap_err().message,
            "previous terminated container \"app\" in pod \"web\" not found"
        );
        // Crash-looping: waiting again, but it ran before, so its log exists.
        let crashed = pod(json!({"containerStatuses": [
            {"name": "app", "restartCount": 2, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
             "lastState": {"terminated": {"exitCode": 1}}}]}));
        assert!(check_started(&crashed, "app", false).is_ok());
        assert!(check_started(&crashed, "app", true).is_ok());
    }
}
