//! Container lifecycle hooks (postStart, preStop): exec in the container, httpGet to the
//! container's address, or sleep. The checks are the probes' ([`crate::probe::check`]).

use std::time::Duration;

use berth_proto::types::{Container, LifecycleHandler, Probe};

use crate::probe::{self, ProbeResult};
use crate::runtime::{PortBinding, Runtime};

/// Which hook, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    PostStart,
    PreStop,
}

impl Hook {
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::PostStart => "PostStartHook",
            Hook::PreStop => "PreStopHook",
        }
    }
    /// The event reason of a failure.
    pub fn failed_reason(self) -> &'static str {
        match self {
            Hook::PostStart => "FailedPostStartHook",
            Hook::PreStop => "FailedPreStopHook",
        }
    }
}

/// A short description of a handler: `exec [sh -c ...]`, `httpGet /path`, `sleep 3s`.
pub fn describe(h: &LifecycleHandler) -> String {
    if let Some(x) = &h.exec {
        return format!("exec {:?}", x.command);
    }
    if let Some(g) = &h.http_get {
        return format!(
            "httpGet {} port {}",
            g.path.as_deref().unwrap_or("/"),
            g.port
        );
    }
    if let Some(s) = &h.sleep {
        return format!("sleep {}s", s.seconds);
    }
    "<no handler>".to_string()
}

/// Where an httpGet hook connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookHost {
    /// The node's loopback (the container shares the node's network).
    Node,
    /// The pod's own address; None: ask the runtime for it (a pod that just started).
    Pod { pod_uid: String, ip: Option<String> },
}

/// Run one hook of container `id`, bounded by `timeout`; `Err` says why it failed.
pub async fn run(
    rt: &dyn Runtime,
    id: &str,
    c: &Container,
    h: &LifecycleHandler,
    ports: &[PortBinding],
    host: &HookHost,
    timeout: Duration,
) -> Result<(), String> {
    let host = match host {
        HookHost::Node => None,
        HookHost::Pod { ip: Some(ip), .. } => Some(ip.clone()),
        HookHost::Pod { pod_uid, ip: None } if h.http_get.is_some() => {
            match rt.pod_ip(pod_uid).await.filter(|ip| !ip.is_empty()) {
                Some(ip) => Some(ip),
                None => return Err("the pod has no IP address yet".to_string()),
            }
        }
        HookHost::Pod { .. } => None,
    };
    let host = host.as_deref();
    if let Some(s) = &h.sleep {
        let d = Duration::from_secs(s.seconds.max(0) as u64);
        tokio::time::sleep(d.min(timeout)).await;
        return Ok(());
    }
    let as_probe = Probe {
        exec: h.exec.clone(),
        http_get: h.http_get.clone(),
        ..Default::default()
    };
    let check = crate::prober::build_check(c, ports, host, &as_probe)?;
    match probe::check(&check, timeout, rt, id).await {
        ProbeResult::Success => Ok(()),
        ProbeResult::Failure(m) => Err(m),
    }
}
