//! Node registration and heartbeat.
//!
//! [`desired_node`] (pure) builds the Node this agent should publish: InternalIP and Hostname
//! addresses, capacity and allocatable (from `--capacity` or the host: CPU count and
//! /proc/meminfo), labels, nodeInfo (runtime version), `status.agentEndpoint` (the logs API) and
//! a Ready condition with the heartbeat time. [`Heartbeat::run`] registers the Node (create, or
//! update labels of an existing one, never touching spec set by users like `unschedulable`),
//! then rewrites its status every interval. While the API is unreachable it keeps trying;
//! workloads are never affected.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use berth_proto::types::Quantity;
use berth_proto::types::{
    set_condition, Condition, ContainerImage, Node, NodeAddress, NodeProxyStatus, NodeStatus,
    NodeSystemInfo, ObjectMeta, Time,
};
use tokio_util::sync::CancellationToken;

use crate::api::{ApiError, NodeApi};
use crate::runtime::Runtime;

pub const HOSTNAME_LABEL: &str = "berth.io/hostname";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NodeConfigError {
    #[error("invalid --capacity {0:?}: use cpu=N,memory=QUANTITY, e.g. cpu=4,memory=8Gi")]
    Capacity(String),
    #[error("invalid --label {0:?}: use KEY=VALUE, e.g. --label zone=a")]
    Label(String),
}

/// Parse `cpu=4,memory=8Gi` into canonical quantities.
pub fn parse_capacity(s: &str) -> Result<BTreeMap<String, Quantity>, NodeConfigError> {
    let bad = || NodeConfigError::Capacity(s.to_string());
    let mut out = BTreeMap::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (k, v) = item.split_once('=').ok_or_else(bad)?;
        let q = Quantity::parse(v.trim()).map_err(|_| bad())?;
        let canon = match k.trim() {
            "cpu" => Quantity::from_millicores(q.millis()),
            "memory" => Quantity::from_bytes(q.value()),
            "pods" => Quantity(q.value().to_string()),
            _ => return Err(bad()),
        };
        out.insert(k.trim().to_string(), canon);
    }
    if !out.contains_key("cpu") || !out.contains_key("memory") {
        return Err(bad());
    }
    Ok(out)
}

/// Parse `k=v` labels.
pub fn parse_labels(items: &[String]) -> Result<BTreeMap<String, String>, NodeConfigError> {
    let mut out = BTreeMap::new();
    for i in items {
        let (k, v) = i
            .split_once('=')
            .ok_or_else(|| NodeConfigError::Label(i.clone()))?;
        if k.trim().is_empty() {
            return Err(NodeConfigError::Label(i.clone()));
        }
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(out)
}

/// CPU (millicores) and memory (bytes) of this host.
pub fn host_capacity() -> BTreeMap<String, Quantity> {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u64)
        .unwrap_or(1);
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(1024 * 1024);
    let mut out = BTreeMap::new();
    out.insert("cpu".to_string(), Quantity::from_millicores(cpus * 1000));
    out.insert("memory".to_string(), Quantity::from_bytes(mem_kib * 1024));
    out
}

/// The host's name, lowercased (the default node name).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_string())
        .to_ascii_lowercase()
}

/// What this agent publishes about its node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    pub address: String,
    pub labels: BTreeMap<String, String>,
    pub capacity: BTreeMap<String, Quantity>,
    pub agent_endpoint: String,
    pub heartbeat: Duration,
    /// `status.runtimeHandlers`: the runtimes pods can pick, the default first.
    pub runtime_handlers: Vec<String>,
    /// Annotations the agent owns on its Node (e.g. where it keeps provisioned volumes).
    pub annotations: BTreeMap<String, String>,
}

/// The Node as it should be now (pure). Keeps user-owned parts of `existing` (spec, other
/// labels, annotations) and condition transition times.
pub fn desired_node(
    cfg: &NodeConfig,
    runtime_version: Result<&str, &str>,
    images: &[ContainerImage],
    existing: Option<&Node>,
    now: Time,
) -> Node {
    desired_node_with_proxy(cfg, runtime_version, images, existing, None, now)
}

/// [`desired_node`] with the proxy's latest report as `status.proxy`.
pub fn desired_node_with_proxy(
    cfg: &NodeConfig,
    runtime_version: Result<&str, &str>,
    images: &[ContainerImage],
    existing: Option<&Node>,
    proxy: Option<NodeProxyStatus>,
    now: Time,
) -> Node {
    let mut node = existing.cloned().unwrap_or_else(|| Node {
        metadata: ObjectMeta {
            name: cfg.name.clone(),
            ..Default::default()
        },
        ..Default::default()
    });
    node.metadata
        .labels
        .insert(HOSTNAME_LABEL.to_string(), cfg.name.clone());
    for (k, v) in &cfg.labels {
        node.metadata.labels.insert(k.clone(), v.clone());
    }
    for (k, v) in &cfg.annotations {
        node.metadata.annotations.insert(k.clone(), v.clone());
    }
    let old = node.status.clone().unwrap_or_default();
    let mut conditions = old.conditions.clone();
    let ready = match runtime_version {
        Ok(_) => Condition::new(
            "Ready",
            true,
            "AgentReady",
            "berth agent is posting ready status",
            now,
        ),
        Err(why) => Condition::new(
            "Ready",
            false,
            "RuntimeUnavailable",
            &format!("container runtime is not answering: {why}"),
            now,
        ),
    };
    set_condition(&mut conditions, ready);
    node.status = Some(NodeStatus {
        capacity: cfg.capacity.clone(),
        allocatable: cfg.capacity.clone(),
        conditions,
        addresses: vec![
            NodeAddress {
                type_: "InternalIP".to_string(),
                address: cfg.address.clone(),
            },
            NodeAddress {
                type_: "Hostname".to_string(),
                address: cfg.name.clone(),
            },
        ],
        node_info: Some(NodeSystemInfo {
            container_runtime_version: runtime_version.unwrap_or("unknown").to_string(),
            kubelet_version: format!("berth-agent/{}", env!("CARGO_PKG_VERSION")),
            operating_system: std::env::consts::OS.to_string(),
            architecture: std::env::consts::ARCH.to_string(),
        }),
        agent_endpoint: cfg.agent_endpoint.clone(),
        images: node_images(images),
        runtime_handlers: cfg
            .runtime_handlers
            .iter()
            .map(|name| berth_proto::types::NodeRuntimeHandler { name: name.clone() })
            .collect(),
        last_heartbeat_time: Some(now),
        proxy,
    });
    node
}

/// At most this many images in Node status (the kubelet's nodeStatusMaxImages).
pub const MAX_NODE_IMAGES: usize = 50;

/// The largest [`MAX_NODE_IMAGES`] images, largest first (names sorted, so an unchanged store
/// gives an identical status).
fn node_images(images: &[ContainerImage]) -> Vec<ContainerImage> {
    let mut v: Vec<ContainerImage> = images
        .iter()
        .cloned()
        .map(|mut i| {
            i.names.sort();
            i
        })
        .collect();
    v.sort_by(|a, b| b.size_bytes.cmp(&a.size_bytes).then(a.names.cmp(&b.names)));
    v.truncate(MAX_NODE_IMAGES);
    v
}

/// Registration + heartbeat loop.
pub struct Heartbeat {
    pub cfg: NodeConfig,
    pub api: Arc<dyn NodeApi>,
    pub runtime: Arc<dyn Runtime>,
    /// The proxy's reports (None: no proxy on this node). A new report is written at once
    /// (with the runtime facts of the last beat), at most every [`PROXY_REPORT_INTERVAL`].
    pub proxy: Option<tokio::sync::watch::Receiver<Option<NodeProxyStatus>>>,
}

/// The shortest time between two proxy reports: changes in between are batched into one
/// write of the newest revision.
pub const PROXY_REPORT_INTERVAL: Duration = Duration::from_millis(50);

impl Heartbeat {
    async fn runtime_version(&self) -> Result<String, String> {
        match tokio::time::timeout(Duration::from_secs(5), self.runtime.version()).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out after 5s".to_string()),
        }
    }

    /// The runtime's version and images (slow: asked once per beat).
    async fn facts(&self) -> (Result<String, String>, Vec<ContainerImage>) {
        let version = self.runtime_version().await;
        // Best effort: an engine that cannot list images is already reported through Ready.
        let images = match tokio::time::timeout(Duration::from_secs(5), self.runtime.images()).await
        {
            Ok(Ok(i)) => i,
            _ => Vec::new(),
        };
        (version, images)
    }

    fn proxy_report(&self) -> Option<NodeProxyStatus> {
        self.proxy.as_ref().and_then(|rx| rx.borrow().clone())
    }

    /// Create or refresh the Node (labels) and write its status once.
    pub async fn beat(&self, registered: &mut Option<Node>) -> Result<(), ApiError> {
        let facts = self.facts().await;
        self.write(registered, &facts).await
    }

    /// Register if needed and write the status from `facts` and the proxy's latest report.
    async fn write(
        &self,
        registered: &mut Option<Node>,
        (version, images): &(Result<String, String>, Vec<ContainerImage>),
    ) -> Result<(), ApiError> {
        let v = version.as_deref().map_err(|e| e.as_str());
        let now = chrono::Utc::now();
        if registered.is_none() {
            let existing = self.api.get_node(&self.cfg.name).await?;
            let want = desired_node(&self.cfg, v, images, existing.as_ref(), now);
            let node = match existing {
                None => match self.api.create_node(&want).await {
                    Ok(n) => n,
                    Err(ApiError::Conflict) => {
                        return Err(ApiError::Other(
                            "node created concurrently; retrying".into(),
                        ))
                    }
                    Err(e) => return Err(e),
                },
                Some(e)
                    if e.metadata.labels != want.metadata.labels
                        || e.metadata.annotations != want.metadata.annotations =>
                {
                    let mut upd = e.clone();
                    upd.metadata.labels = want.metadata.labels.clone();
                    upd.metadata.annotations = want.metadata.annotations.clone();
                    match self.api.update_node(&upd).await {
                        Ok(n) => n,
                        // NodeRestriction: a node may not change its own labels once
                        // registered; the admin does (`berth label node`). Run with the
                        // labels the Node has.
                        Err(ApiError::Other(m)) => {
                            tracing::warn!(node = %self.cfg.name, error = %m, "cannot update the Node's labels; keeping the registered ones");
                            e
                        }
                        Err(err) => return Err(err),
                    }
                }
                Some(e) => e,
            };
            tracing::info!(node = %self.cfg.name, "node registered");
            *registered = Some(node);
        }
        let base = registered.as_ref();
        let mut want =
            desired_node_with_proxy(&self.cfg, v, images, base, self.proxy_report(), now);
        want.metadata.resource_version = 0;
        match self.api.update_node_status(&want).await {
            Ok(n) => {
                *registered = Some(n);
                Ok(())
            }
            Err(ApiError::NotFound) => {
                // Deleted by someone: register again next beat.
                *registered = None;
                Err(ApiError::NotFound)
            }
            Err(e) => Err(e),
        }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let mut registered: Option<Node> = None;
        let mut failing = false;
        let mut proxy = self.proxy.clone();
        let mut facts = None;
        let mut next_beat = tokio::time::Instant::now();
        loop {
            let now = tokio::time::Instant::now();
            let result = if now >= next_beat || facts.is_none() {
                next_beat = now + self.cfg.heartbeat;
                let f = self.facts().await;
                let r = self.write(&mut registered, &f).await;
                facts = Some(f);
                r
            } else if let Some(f) = &facts {
                self.write(&mut registered, f).await
            } else {
                Ok(())
            };
            match result {
                Ok(()) => {
                    if failing {
                        tracing::info!("API reachable again; node status resumed");
                    }
                    failing = false;
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "node heartbeat failed; workloads keep running, retrying");
                    }
                    failing = true;
                }
            }
            let report = async {
                match proxy.as_mut() {
                    Some(rx) => {
                        if rx.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                        // Batch what follows closely.
                        tokio::time::sleep(PROXY_REPORT_INTERVAL).await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(next_beat) => {}
                _ = report => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::MemoryApi;
    use crate::runtime::fake::FakeRuntime;

    fn cfg() -> NodeConfig {
        NodeConfig {
            name: "n1".into(),
            address: "10.0.0.7".into(),
            labels: [("zone".to_string(), "a".to_string())].into(),
            capacity: parse_capacity("cpu=4,memory=8Gi").expect("capacity"),
            agent_endpoint: "10.0.0.7:10250".into(),
            heartbeat: Duration::from_secs(2),
            runtime_handlers: vec!["docker".into(), "process".into()],
            annotations: BTreeMap::new(),
        }
    }

    #[test]
    fn node_images_are_the_largest_fifty_with_sorted_names() {
        let images: Vec<ContainerImage> = (0..60)
            .map(|i| ContainerImage {
                names: vec![format!("z{i}:1"), format!("a{i}:1")],
                size_bytes: i,
            })
            .collect();
        let n = desired_node(&cfg(), Ok("docker://20"), &images, None, chrono::Utc::now());
        let got = n.status.expect("status").images;
        assert_eq!(got.len(), MAX_NODE_IMAGES);
        assert_eq!(got[0].size_bytes, 59);
        assert_eq!(got[0].names, ["a59:1", "z59:1"]);
        assert_eq!(got[49].size_bytes, 10);
    }

    #[test]
    fn capacity_and_labels_parse_or_explain() {
        let c = parse_capacity("cpu=1500m,memory=512Mi").expect("ok");
        assert_eq!(c["cpu"].0, "1500m");
        assert_eq!(c["memory"].0, "512Mi");
        assert!(parse_capacity("cpu=4").is_err());
        assert!(parse_capacity("gpu=1,cpu=1,memory=1Gi").is_err());
        assert!(parse_capacity("cpu=x,memory=1Gi").is_err());
        assert!(parse_labels(&["a=b".into()]).is_ok());
        assert!(parse_labels(&["ab".into()]).is_err());
        let h = host_capacity();
        assert!(h.contains_key("cpu") && h.contains_key("memory"));
    }

    #[test]
    fn desired_node_keeps_user_spec_and_condition_transition_time() {
        let t0 = chrono::Utc::now();
        let mut existing = desired_node(&cfg(), Ok("docker://20"), &[], None, t0);
        existing.spec.unschedulable = true;
        existing.metadata.labels.insert("user".into(), "x".into());
        let t1 = t0 + chrono::Duration::seconds(2);
        let n = desired_node(&cfg(), Ok("docker://20"), &[], Some(&existing), t1);
        assert!(n.spec.unschedulable);
        assert_eq!(n.metadata.labels["user"], "x");
        assert_eq!(n.metadata.labels["zone"], "a");
        let st = n.status.as_ref().expect("status");
        assert_eq!(st.last_heartbeat_time, Some(t1));
        let ready = berth_proto::types::condition(&st.conditions, "Ready").expect("ready");
        assert_eq!(ready.last_transition_time, Some(t0));
        assert_eq!(n.address(), Some("10.0.0.7"));
        assert_eq!(st.agent_endpoint, "10.0.0.7:10250");
        assert_eq!(
            st.node_info
                .as_ref()
                .map(|i| i.container_runtime_version.as_str()),
            Some("docker://20")
        );
        let down = desired_node(&cfg(), Err("socket gone"), &[], Some(&n), t1);
        assert!(!down.is_ready());
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeat_registers_then_refreshes_status_and_survives_api_outage() {
        let api = MemoryApi::new();
        let hb = Heartbeat {
            proxy: None,
            cfg: cfg(),
            api: Arc::new(api.clone()),
            runtime: Arc::new(FakeRuntime::new()),
        };
        let shutdown = CancellationToken::new();
        api.set_down(true);
        let task = tokio::spawn(hb.run(shutdown.clone()));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(api.node("n1").is_none());
        api.set_down(false);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let n = api.node("n1").expect("registered after the outage");
        assert!(n.is_ready());
        assert!(
            api.node_status_writes() >= 2,
            "{}",
            api.node_status_writes()
        );
        shutdown.cancel();
        task.await.expect("join");
    }
}
