//! Container runtimes: the one seam between the agent's loops and whatever actually runs a
//! workload.
//!
//! [`Runtime`] is a small async trait (create, start, stop with grace, remove, list, inspect,
//! logs, exec) with three implementations:
//! - [`process::ProcessRuntime`]: host processes in their own process group, state under the data
//!   dir so a restarted agent re-finds them (pid + kernel start time) and adopts them;
//! - [`docker::DockerRuntime`]: the Docker Engine through bollard; containers carry labels;
//! - [`fake::FakeRuntime`]: in-memory, scriptable exits and exec results, for unit tests.
//!
//! Every workload carries its identity ([`ContainerSpec::pod_uid`], container name, attempt) so
//! that listing the runtime is enough to rebuild the agent's view after a restart: the runtime,
//! not agent memory, is the source of truth for what is running.

pub mod docker;
pub mod fake;
pub mod multi;
pub mod pause;
pub mod process;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use berth_proto::types::Time;
use bytes::Bytes;
use futures::Stream;
use serde::{Deserialize, Serialize};

/// Label keys (Docker labels; the process runtime stores the same map in its state file).
pub const LABEL_POD_UID: &str = "berth.pod-uid";
pub const LABEL_POD_NAMESPACE: &str = "berth.pod-namespace";
pub const LABEL_POD_NAME: &str = "berth.pod-name";
pub const LABEL_CONTAINER: &str = "berth.container-name";
pub const LABEL_ATTEMPT: &str = "berth.attempt";
pub const LABEL_HOST_PORTS: &str = "berth.host-ports";
pub const LABEL_MANAGED: &str = "berth.managed";
pub const LABEL_GRACE: &str = "berth.grace-seconds";
/// The node (agent) that owns the workload: agents sharing one Docker engine (tests, several
/// agents on one host) only ever see and touch their own.
pub const LABEL_NODE: &str = "berth.node";
/// Marks a pod's sandbox (the container holding a Docker pod's network namespace), which is
/// not one of the pod's containers.
pub const LABEL_SANDBOX: &str = "berth.sandbox";

/// A container port published on the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortBinding {
    pub name: String,
    pub container_port: u16,
    pub host_port: u16,
    /// "TCP" or "UDP".
    pub protocol: String,
}

/// Everything a runtime needs to create one container attempt.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// Owning node; empty = unscoped.
    pub node_name: String,
    pub pod_uid: String,
    pub pod_namespace: String,
    pub pod_name: String,
    pub container_name: String,
    /// 0 for the first start; equals the container's restartCount.
    pub attempt: u32,
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub working_dir: Option<String>,
    pub env: Vec<(String, String)>,
    pub ports: Vec<PortBinding>,
    pub memory_limit_bytes: Option<u64>,
    pub cpu_limit_millis: Option<u64>,
    /// Signal sent first on stop (e.g. "SIGTERM").
    pub stop_signal: Option<String>,
    /// The pod's terminationGracePeriodSeconds, kept so an orphan is stopped as gracefully.
    pub grace_seconds: Option<u64>,
    /// The runtime handler to create it with (the pod's runtimeClassName, resolved); None:
    /// the default one.
    #[serde(default)]
    pub runtime_class: Option<String>,
    /// The pod's resolv.conf (dnsPolicy ClusterFirst on the pod network); None: the runtime's
    /// default (the host's resolvers).
    #[serde(default)]
    pub dns: Option<String>,
    /// Every port of the pod with a `hostPort`, published on the node by the pod's sandbox
    /// (runtimes with a pod network; the others publish [`ContainerSpec::ports`]).
    #[serde(default)]
    pub pod_host_ports: Vec<PortBinding>,
    /// The node address those hostPorts are published on. Not every local address: a
    /// wildcard publish would also capture a ClusterIP (a local address on `berth-svc`) at the
    /// same port for clients on the node. None: every address.
    #[serde(default)]
    pub host_port_ip: Option<std::net::IpAddr>,
    /// The pod's volumes this container mounts (bind mounts from the node).
    #[serde(default)]
    pub mounts: Vec<Mount>,
}

/// A node path bind-mounted into a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    pub host_path: PathBuf,
    pub container_path: String,
    pub read_only: bool,
}

impl ContainerSpec {
    /// The labels that identify this attempt in the runtime.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut l = BTreeMap::new();
        l.insert(LABEL_MANAGED.to_string(), "true".to_string());
        if !self.node_name.is_empty() {
            l.insert(LABEL_NODE.to_string(), self.node_name.clone());
        }
        l.insert(LABEL_POD_UID.to_string(), self.pod_uid.clone());
        l.insert(LABEL_POD_NAMESPACE.to_string(), self.pod_namespace.clone());
        l.insert(LABEL_POD_NAME.to_string(), self.pod_name.clone());
        l.insert(LABEL_CONTAINER.to_string(), self.container_name.clone());
        l.insert(LABEL_ATTEMPT.to_string(), self.attempt.to_string());
        l.insert(LABEL_HOST_PORTS.to_string(), encode_ports(&self.ports));
        if let Some(g) = self.grace_seconds {
            l.insert(LABEL_GRACE.to_string(), g.to_string());
        }
        l
    }

    /// `namespace_pod_container_attempt_uid8`, every character other than ASCII letters,
    /// digits and `-` replaced by `_`: the base of the attempt's Docker container name and
    /// the process runtime's directory name.
    pub fn instance_name(&self) -> String {
        let clean = |s: &str| -> String {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect()
        };
        let uid8: String = self.pod_uid.chars().take(8).collect();
        format!(
            "{}_{}_{}_{}_{}",
            clean(&self.pod_namespace),
            clean(&self.pod_name),
            clean(&self.container_name),
            self.attempt,
            clean(&uid8)
        )
    }
}

/// `name/proto:container:host,...`; kept in a label so ports survive an agent restart.
pub fn encode_ports(ports: &[PortBinding]) -> String {
    ports
        .iter()
        .map(|p| {
            format!(
                "{}/{}:{}:{}",
                p.name, p.protocol, p.container_port, p.host_port
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

pub fn decode_ports(s: &str) -> Vec<PortBinding> {
    s.split(',')
        .filter_map(|item| {
            let (np, rest) = item.split_once(':')?;
            let (name, protocol) = np.split_once('/')?;
            let (c, h) = rest.split_once(':')?;
            Some(PortBinding {
                name: name.to_string(),
                protocol: protocol.to_string(),
                container_port: c.parse().ok()?,
                host_port: h.parse().ok()?,
            })
        })
        .collect()
}

/// What the runtime reports about one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    /// Runtime id (Docker id, or the process runtime's directory name).
    pub id: String,
    pub pod_uid: String,
    pub pod_namespace: String,
    pub pod_name: String,
    pub container_name: String,
    pub attempt: u32,
    pub image: String,
    pub ports: Vec<PortBinding>,
    pub grace_seconds: Option<u64>,
    pub state: RunState,
    /// The runtime handler that runs it ("docker", "process"): the scheme of its containerID.
    pub runtime: &'static str,
}

impl ContainerInfo {
    /// Rebuild identity from labels; `None` when the labels are not Berth's.
    pub fn from_labels(
        runtime: &'static str,
        id: String,
        image: String,
        labels: &BTreeMap<String, String>,
        state: RunState,
    ) -> Option<ContainerInfo> {
        Some(ContainerInfo {
            id,
            pod_uid: labels.get(LABEL_POD_UID)?.clone(),
            pod_namespace: labels.get(LABEL_POD_NAMESPACE).cloned().unwrap_or_default(),
            pod_name: labels.get(LABEL_POD_NAME).cloned().unwrap_or_default(),
            container_name: labels.get(LABEL_CONTAINER)?.clone(),
            attempt: labels.get(LABEL_ATTEMPT)?.parse().ok()?,
            image,
            ports: labels
                .get(LABEL_HOST_PORTS)
                .map(|s| decode_ports(s))
                .unwrap_or_default(),
            grace_seconds: labels.get(LABEL_GRACE).and_then(|g| g.parse().ok()),
            state,
            runtime,
        })
    }
}

/// Lifecycle state of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    /// Created, never started.
    Created,
    Running {
        started_at: Time,
    },
    Exited(ExitInfo),
}

impl RunState {
    pub fn is_running(&self) -> bool {
        matches!(self, RunState::Running { .. })
    }
}

/// How a container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitInfo {
    pub exit_code: i32,
    pub signal: Option<i32>,
    /// "Completed", "Error", "OOMKilled", "Unknown".
    pub reason: String,
    pub message: String,
    pub started_at: Option<Time>,
    pub finished_at: Option<Time>,
}

impl ExitInfo {
    pub fn from_code(exit_code: i32, signal: Option<i32>) -> ExitInfo {
        ExitInfo {
            exit_code,
            signal,
            reason: if exit_code == 0 { "Completed" } else { "Error" }.to_string(),
            message: String::new(),
            started_at: None,
            finished_at: None,
        }
    }
}

/// Options for reading logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Only the last N lines.
    pub tail: Option<usize>,
    /// Keep streaming new output until the container exits or the reader goes away.
    pub follow: bool,
}

/// Output and exit code of a command run inside a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit_code: i32,
    pub output: Vec<u8>,
}

pub type LogStream = Pin<Box<dyn Stream<Item = Result<Bytes, RuntimeError>> + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("image {image:?} is not present on this node: pull it (imagePullPolicy IfNotPresent or Always), load it on the node (docker load), or fix the image name")]
    ImageNotPresent { image: String },
    #[error("failed to pull image {image:?}: {kind}: {message}")]
    Pull {
        image: String,
        kind: PullFailure,
        message: String,
    },
    #[error("container {id} not found")]
    NotFound { id: String },
    #[error("container has no command: the process runtime needs `command` (and optionally `args`) because it has no image entrypoint")]
    NoCommand,
    #[error("failed to start {what}: {source}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{op} timed out after {after:?}")]
    Timeout { op: &'static str, after: Duration },
    #[error("runtime state in {path}: {source}")]
    State {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("docker: {0}")]
    Docker(#[from] bollard::errors::Error),
    #[error("{0}")]
    Other(String),
}

/// Why a pull failed, as a user acts on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullFailure {
    /// The repository, tag or digest does not exist there.
    NotFound,
    /// The registry wants credentials, or refused the ones given.
    Unauthorized,
    /// The registry could not be reached (DNS, refused, timeout, TLS).
    Unreachable,
    /// The reference cannot be pulled as written.
    InvalidReference,
    Other,
}

impl std::fmt::Display for PullFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PullFailure::NotFound => "not found",
            PullFailure::Unauthorized => "unauthorized",
            PullFailure::Unreachable => "registry unreachable",
            PullFailure::InvalidReference => "invalid reference",
            PullFailure::Other => "pull failed",
        })
    }
}

impl PullFailure {
    /// Classify an engine's pull error message (Docker passes the registry's words through).
    pub fn classify(message: &str) -> PullFailure {
        let m = message.to_ascii_lowercase();
        let any = |needles: &[&str]| needles.iter().any(|n| m.contains(n));
        if any(&[
            "unauthorized",
            "authentication required",
            "access denied",
            "denied:",
            "pull access denied",
            "no basic auth credentials",
        ]) {
            PullFailure::Unauthorized
        } else if any(&[
            "not found",
            "manifest unknown",
            "name unknown",
            "does not exist",
        ]) {
            PullFailure::NotFound
        } else if any(&[
            "no such host",
            "connection refused",
            "i/o timeout",
            "dial tcp",
            "network is unreachable",
            "timeout exceeded",
            "tls:",
            "x509:",
            "server gave http response to https client",
            "connection reset",
        ]) {
            PullFailure::Unreachable
        } else if any(&[
            "invalid reference",
            "invalid tag",
            "invalid repository name",
        ]) {
            PullFailure::InvalidReference
        } else {
            PullFailure::Other
        }
    }
}

/// A runtime handler: what a pod's `runtimeClassName` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handler {
    pub name: &'static str,
    /// Follows imagePullPolicy (see [`Runtime::uses_images`]).
    pub uses_images: bool,
    /// Gives each pod its own address on the node's pod network (Docker pods); otherwise pods
    /// share the node's network and their ports are published on host ports (processes).
    pub pod_network: bool,
}

/// What a successful pull brought.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pulled {
    /// Size of the image on the node, in bytes.
    pub size: u64,
}

/// A container runtime. Implementations must be safe to call concurrently.
#[async_trait::async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// "docker" or "process" (or "fake").
    fn name(&self) -> &'static str;
    /// e.g. "docker://20.10.24" for Node.status.nodeInfo.containerRuntimeVersion.
    async fn version(&self) -> Result<String, RuntimeError>;
    /// Create (not start) a container; returns its id.
    async fn create(&self, spec: &ContainerSpec) -> Result<String, RuntimeError>;
    async fn start(&self, id: &str) -> Result<(), RuntimeError>;
    /// Send `signal` (default SIGTERM), wait up to `grace`, then SIGKILL; returns when stopped.
    async fn stop(
        &self,
        id: &str,
        grace: Duration,
        signal: Option<&str>,
    ) -> Result<(), RuntimeError>;
    async fn remove(&self, id: &str) -> Result<(), RuntimeError>;
    /// Every Berth-managed container, running or not.
    async fn list(&self) -> Result<Vec<ContainerInfo>, RuntimeError>;
    async fn inspect(&self, id: &str) -> Result<ContainerInfo, RuntimeError>;
    async fn logs(&self, id: &str, opts: LogOptions) -> Result<LogStream, RuntimeError>;
    async fn exec(
        &self,
        id: &str,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, RuntimeError>;
    /// Start `spec.command` in container `id` with its streams attached, for `kubectl exec`
    /// (see [`crate::exec`]).
    async fn exec_stream(
        &self,
        id: &str,
        spec: &crate::exec::ExecSpec,
    ) -> Result<crate::exec::ExecSession, RuntimeError> {
        let _ = (id, spec);
        Err(RuntimeError::Other(format!(
            "the {} runtime cannot run interactive commands",
            self.name()
        )))
    }
    /// Does this runtime run images (and so follow imagePullPolicy)? The process runtime
    /// does not: it runs the container's `command` on the host.
    fn uses_images(&self) -> bool {
        false
    }
    /// Is `image` in the node's local image store?
    async fn image_present(&self, _image: &str) -> Result<bool, RuntimeError> {
        Ok(true)
    }
    /// Pull `image` into the node's local store ([`RuntimeError::Pull`] on failure).
    async fn pull(&self, _image: &str) -> Result<Pulled, RuntimeError> {
        Ok(Pulled::default())
    }
    /// Pull `image` with the credentials of the pod's `imagePullSecrets` (those matching the
    /// registry pulled from are tried in turn; none match: anonymously).
    async fn pull_with(
        &self,
        image: &str,
        _keyring: &crate::pullsecrets::Keyring,
    ) -> Result<Pulled, RuntimeError> {
        self.pull(image).await
    }
    /// The manifest digests the node's copy of `image` is known under in the registry of its
    /// repository (Docker: the RepoDigests naming the same repository), for image trust.
    /// `None`: this runtime cannot tell (the pod's or the tag's digest is checked instead).
    async fn image_digests(&self, _image: &str) -> Result<Option<Vec<String>>, RuntimeError> {
        Ok(None)
    }
    /// The images in the node's local store (Node `status.images`).
    async fn images(&self) -> Result<Vec<berth_proto::types::ContainerImage>, RuntimeError> {
        Ok(Vec::new())
    }
    /// The runtime handlers offered (Node `status.runtimeHandlers`), the default first.
    fn handlers(&self) -> Vec<Handler> {
        vec![Handler {
            name: self.name(),
            uses_images: self.uses_images(),
            pod_network: false,
        }]
    }
    /// The address of the pod on the pod network, for runtimes that give pods one (None: the
    /// pod has no sandbox here, or shares the node's network).
    async fn pod_ip(&self, _pod_uid: &str) -> Option<String> {
        None
    }
    /// Make the pod's sandbox now, before its first container (for a container whose
    /// environment needs `status.podIP`), and return the pod's address; None: this runtime
    /// gives pods no address of their own.
    async fn ensure_pod_sandbox(
        &self,
        _spec: &ContainerSpec,
    ) -> Result<Option<String>, RuntimeError> {
        Ok(None)
    }
    /// Make the pod network ready now (the Docker bridge, so the node's DNS can listen on its
    /// gateway before the first pod); runtimes without one do nothing.
    async fn prepare_pod_network(&self) -> Result<bool, RuntimeError> {
        Ok(false)
    }
    /// The pods whose sandbox this runtime made has stopped or vanished since it was last
    /// seen running (the pod's address went with it). They are forgotten here, so the pod's
    /// next container start makes a new sandbox; the caller restarts the pod's containers
    /// (kubelet's "SandboxChanged").
    async fn lost_sandboxes(&self) -> Result<Vec<String>, RuntimeError> {
        Ok(Vec::new())
    }
    /// Remove the pod sandboxes of every pod not in `keep` (their containers are gone).
    async fn remove_sandboxes(
        &self,
        _keep: &std::collections::BTreeSet<String>,
    ) -> Result<(), RuntimeError> {
        Ok(())
    }
}

/// Parse a signal name ("SIGTERM", "TERM", "15").
pub fn parse_signal(s: &str) -> Option<nix::sys::signal::Signal> {
    use std::str::FromStr;
    if let Ok(n) = s.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(n).ok();
    }
    let name = if s.starts_with("SIG") {
        s.to_string()
    } else {
        format!("SIG{s}")
    };
    nix::sys::signal::Signal::from_str(&name).ok()
}

/// `PORT` (the first port) and one `PORT_<NAME>` per named port, holding the port the workload
/// must listen on: the host port for processes (no network namespace), the container port in
/// Docker (published to the host port by the engine).
pub fn port_env(ports: &[PortBinding], use_host_port: bool) -> Vec<(String, String)> {
    let pick = |p: &PortBinding| {
        if use_host_port {
            p.host_port
        } else {
            p.container_port
        }
        .to_string()
    };
    let mut env = Vec::new();
    if let Some(first) = ports.first() {
        env.push(("PORT".to_string(), pick(first)));
    }
    for p in ports.iter().filter(|p| !p.name.is_empty()) {
        let name: String = p
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        env.push((format!("PORT_{name}"), pick(p)));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_failures_are_classified_from_the_engines_words() {
        use PullFailure::*;
        for (msg, want) in [
            ("manifest for 127.0.0.1:5000/shop/web:9 not found: manifest unknown: manifest unknown", NotFound),
            ("pull access denied for shop, repository does not exist or may require 'docker login': denied: requested access to the resource is denied", Unauthorized),
            ("Head \"https://reg.example.com/v2/shop/manifests/1\": unauthorized: authentication required", Unauthorized),
            ("Get \"https://127.0.0.1:1/v2/\": dial tcp 127.0.0.1:1: connect: connection refused", Unreachable),
            ("Get \"https://reg.invalid/v2/\": dial tcp: lookup reg.invalid: no such host", Unreachable),
            ("Get \"https://10.0.0.9/v2/\": net/http: request canceled (Client.Timeout exceeded while awaiting headers)", Unreachable),
            ("invalid reference format", InvalidReference),
            ("something else entirely", Other),
        ] {
            assert_eq!(PullFailure::classify(msg), want, "{msg}");
        }
    }

    #[test]
    fn instance_name_joins_the_attempt_fields_and_replaces_unsafe_characters() {
        let spec = ContainerSpec {
            pod_uid: "0123456789abcdef".into(),
            pod_namespace: "team.a".into(),
            pod_name: "web-1".into(),
            container_name: "main/app".into(),
            attempt: 3,
            ..Default::default()
        };
        assert_eq!(spec.instance_name(), "team_a_web-1_main_app_3_01234567");
    }

    #[test]
    fn ports_round_trip_through_the_label_encoding() {
        let ports = vec![
            PortBinding {
                name: "http".into(),
                container_port: 8080,
                host_port: 20001,
                protocol: "TCP".into(),
            },
            PortBinding {
                name: "".into(),
                container_port: 53,
                host_port: 20002,
                protocol: "UDP".into(),
            },
        ];
        assert_eq!(decode_ports(&encode_ports(&ports)), ports);
        assert!(decode_ports("").is_empty());
    }

    #[test]
    fn signal_names_parse_with_or_without_prefix() {
        use nix::sys::signal::Signal;
        assert_eq!(parse_signal("SIGTERM"), Some(Signal::SIGTERM));
        assert_eq!(parse_signal("INT"), Some(Signal::SIGINT));
        assert_eq!(parse_signal("9"), Some(Signal::SIGKILL));
        assert_eq!(parse_signal("NOPE"), None);
    }
}
