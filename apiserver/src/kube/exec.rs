//! `GET|POST /api/v1/namespaces/{ns}/pods/{name}/exec?command=...&stdin=&stdout=&stderr=&tty=&
//! container=`: run a command in a pod's container over a WebSocket (subprotocols
//! `v5.channel.k8s.io`, kubectl 1.30+, and `v4.channel.k8s.io`, the Python client).
//!
//! Like kube-apiserver with the kubelet, this server checks the request (who may, the pod, the
//! container, the pod's phase), then proxies the upgrade to the agent of the pod's node
//! (`/exec/{ns}/{pod}/{container}`, mutual TLS with this server's `system:server`
//! certificate; see `berth_agent::exec`) and, once the agent has switched protocols, copies
//! bytes both ways: the agent speaks the remote-command protocol itself.
//!
//! SPDY (kubectl's fallback when the WebSocket upgrade fails) is not served: such a request
//! gets a 400 Status saying so after the same checks, so kubectl shows the real error.

use axum::body::Body;
use http::{header, HeaderValue, StatusCode};
use serde_json::Value;

use super::podlog::{authorize_pod_stream, pick_container};
use super::status::KubeError;
use super::{Ctx, KubeApi, ResPath, Resp};

/// The remote-command subprotocols the agents speak.
const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

fn header_has(headers: &http::HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// The query as the agent reads it: every `command`, the stream flags, in order.
fn agent_query(ctx_query: &[(String, String)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in ctx_query {
        if matches!(
            k.as_str(),
            "command" | "stdin" | "stdout" | "stderr" | "tty"
        ) {
            q.append_pair(k, v);
        }
    }
    q.finish()
}

/// Kubernetes' checks on PodExecOptions, with its words.
fn validate(pairs: &[(String, String)]) -> Result<(), KubeError> {
    let flag = |k: &str| {
        pairs
            .iter()
            .any(|(n, v)| n == k && matches!(v.as_str(), "1" | "true" | "True"))
    };
    if !pairs.iter().any(|(k, v)| k == "command" && !v.is_empty()) {
        return Err(KubeError::bad_request(
            "you must specify at least 1 command",
        ));
    }
    if !(flag("stdin") || flag("stdout") || flag("stderr")) {
        return Err(KubeError::bad_request(
            "you must specify at least one of stdin, stdout, stderr",
        ));
    }
    Ok(())
}

impl KubeApi {
    pub(super) async fn pod_exec(
        &self,
        mut req: http::Request<Body>,
        ctx: &Ctx,
        rp: &ResPath,
    ) -> Result<Resp, KubeError> {
        authorize_pod_stream(ctx, rp, "exec", "create")?;
        // Repeated `command` parameters: Ctx.query keeps only the last of each name.
        let pairs: Vec<(String, String)> = req
            .uri()
            .query()
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        validate(&pairs)?;
        let pod = self.pod_value(ctx, rp).await?;
        let container = pick_container(&pod, ctx.q("container"))?;
        let pod_name = rp.name.clone().unwrap_or_default();
        let phase = pod
            .pointer("/status/phase")
            .and_then(Value::as_str)
            .unwrap_or("");
        if phase == "Succeeded" || phase == "Failed" {
            return Err(KubeError::bad_request(format!(
                "cannot exec into a container in a completed pod; current phase is {phase}"
            )));
        }
        let running = ["/status/containerStatuses", "/status/initContainerStatuses"]
            .iter()
            .filter_map(|p| pod.pointer(p).and_then(Value::as_array))
            .flatten()
            .any(|s| {
                s.get("name").and_then(Value::as_str) == Some(container.as_str())
                    && s.pointer("/state/running").is_some()
            });
        if !running {
            return Err(KubeError::bad_request(format!(
                "container {container} is not running in pod {pod_name}: wait until the pod \
                 is Running (kubectl wait --for=condition=Ready pod/{pod_name})"
            )));
        }
        let headers = req.headers();
        if !(header_has(headers, header::UPGRADE, "websocket")
            && header_has(headers, header::CONNECTION, "upgrade"))
        {
            return Err(KubeError::bad_request(
                "exec is served over WebSocket only (Upgrade: websocket, subprotocol \
                 v5.channel.k8s.io or v4.channel.k8s.io); SPDY is not supported",
            ));
        }
        let offered: Vec<String> = headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|p| p.trim().to_string())
            .collect();
        if !offered.iter().any(|p| PROTOCOLS.contains(&p.as_str())) {
            return Err(KubeError::bad_request(format!(
                "none of the requested WebSocket subprotocols ({}) is supported: use \
                 v5.channel.k8s.io or v4.channel.k8s.io",
                offered.join(", ")
            )));
        }
        let endpoint = self.agent_endpoint(&pod).await?;
        let ns = rp.namespace.clone().unwrap_or_default();
        let path = format!("/exec/{ns}/{pod_name}/{container}?{}", agent_query(&pairs));
        let mut up = http::Request::get(path)
            .header(header::HOST, endpoint.as_str())
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, "websocket");
        for name in [
            header::SEC_WEBSOCKET_KEY,
            header::SEC_WEBSOCKET_VERSION,
            header::SEC_WEBSOCKET_PROTOCOL,
        ] {
            for v in headers.get_all(&name) {
                up = up.header(&name, v);
            }
        }
        let up = up
            .body(http_body_util::Empty::new())
            .map_err(|e| KubeError::new(500, "InternalError", e.to_string()))?;
        let mut agent_resp = self.agent_request(&endpoint, up).await?;
        if agent_resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Err(Self::agent_error(agent_resp).await);
        }
        let mut resp = http::Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
        for name in [
            header::UPGRADE,
            header::CONNECTION,
            header::SEC_WEBSOCKET_ACCEPT,
            header::SEC_WEBSOCKET_PROTOCOL,
        ] {
            if let Some(v) = agent_resp.headers().get(&name) {
                resp = resp.header(&name, v.clone());
            }
        }
        let client_upgrade = hyper::upgrade::on(&mut req);
        let agent_upgrade = hyper::upgrade::on(&mut agent_resp);
        let shutdown = self.api.shutdown_token();
        tokio::spawn(async move {
            let (client, agent) = match tokio::join!(client_upgrade, agent_upgrade) {
                (Ok(c), Ok(a)) => (c, a),
                (c, a) => {
                    tracing::debug!(
                        client = ?c.err(),
                        agent = ?a.err(),
                        "pods/exec: upgrade failed"
                    );
                    return;
                }
            };
            let mut client = hyper_util::rt::TokioIo::new(client);
            let mut agent = hyper_util::rt::TokioIo::new(agent);
            tokio::select! {
                r = tokio::io::copy_bidirectional(&mut client, &mut agent) => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "pods/exec: stream ended");
                    }
                }
                _ = shutdown.cancelled() => {}
            }
        });
        resp.body(Body::empty())
            .map_err(|e| KubeError::new(500, "InternalError", e.to_string()))
            .map(|mut r| {
                if !r.headers().contains_key(header::CONNECTION) {
                    r.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
                }
                r
            })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pairs(q: &str) -> Vec<(String, String)> {
        form_urlencoded::parse(q.as_bytes()).into_owned().collect()
    }

    #[test]
    fn exec_options_are_checked_and_passed_on_with_every_command_word() {
        let p =
            pairs("command=sh&command=-c&command=echo%20hi&stdout=true&container=app&tty=false");
        validate(&p).unwrap();
        assert_eq!(
            agent_query(&p),
            "command=sh&command=-c&command=echo+hi&stdout=true&tty=false"
        );
        assert_eq!(
            validate(&pairs("stdout=true")).unwrap_err().message,
            "you must specify at least 1 command"
        );
        assert_eq!(
            validate(&pairs("command=ls")).unwrap_err().message,
            "you must specify at least one of stdin, stdout, stderr"
        );
    }
}
