//! Wiring: flags -> runtime, API client, pod cache feeder, pod sync, node heartbeat, logs API
//! and the Service proxy, each one task in a [`TaskTracker`], all stopped by one
//! [`CancellationToken`]. Stopping the agent never stops workloads: the next agent adopts them.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use berth_client::runtime::watcher::{self, Event as WatchEvent};
use berth_client::{Client, ClientConfig, ClientError};
use berth_proto::trust::TrustSnapshot;
use berth_proto::types::{Endpoints, Event, Node, Pod, Service};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{ApiError, NodeApi, PodCache};
use crate::backoff::BackoffPolicy;
use crate::events::EventSink;
use crate::hostports::{self, HostPorts};
use crate::logs::{LogServer, LogsError};
use crate::node::{self, Heartbeat, NodeConfig};
use crate::podsync::{PodSync, SyncConfig};
use crate::proxy::datapath::{PlanProgrammed, ProxyMode, ServiceDatapath};
use crate::proxy::nft::{NftDatapath, NodeFacts};
use crate::proxy::{self, Proxy, ProxyConfig, ProxyPlan};
use crate::runtime::docker::DockerRuntime;
use crate::runtime::multi::MultiRuntime;
use crate::runtime::process::ProcessRuntime;
use crate::runtime::{Runtime, RuntimeError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimeKind {
    Docker,
    Process,
}

/// `berth agent` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// API servers, HOST:PORT[,HOST:PORT...]; any member works, the client fails over.
    #[arg(long, env = "BERTH_SERVER", value_delimiter = ',', default_value = berth_client::DEFAULT_SERVER)]
    pub server: Vec<String>,
    /// Node name (default: this host's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Address other nodes and the proxy reach this node's workloads at.
    #[arg(long, default_value = "127.0.0.1")]
    pub address: String,
    /// Where the agent keeps process-runtime state and logs (default: ~/.berth/agent).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Container runtime (default: docker when a Docker engine answers, else process).
    #[arg(long, value_enum)]
    pub runtime: Option<RuntimeKind>,
    /// The cluster registry as this node's Docker engine reaches it (HOST:PORT, plain HTTP on
    /// loopback, as `berth dev` serves it): images named without a registry (`nginx:1.14.2`)
    /// are pulled from it when it has them, else from Docker Hub as usual.
    #[arg(long, value_name = "HOST:PORT")]
    pub cluster_registry: Option<String>,
    /// The node-local registry mirror: a pull-only loopback endpoint the Docker engine pulls
    /// cluster images from (no daemon configuration: Docker allows plain HTTP on 127.0.0.0/8),
    /// forwarding to the servers' registries over mTLS with this node's certificate. Used as
    /// the cluster registry unless --cluster-registry is given. `off` disables it.
    #[arg(long, value_name = "HOST:PORT", default_value = DEFAULT_MIRROR)]
    pub registry_mirror: String,
    /// Advertised capacity, e.g. cpu=4,memory=8Gi (default: this host's CPUs and memory).
    #[arg(long)]
    pub capacity: Option<String>,
    /// Node label KEY=VALUE (repeatable).
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Host ports handed out to container ports.
    #[arg(long, default_value = "20000-29999")]
    pub host_port_range: String,
    /// Listen address of the agent's logs API (default: ADDRESS:10250).
    #[arg(long)]
    pub listen: Option<String>,
    /// Do not run the Service proxy on this node.
    #[arg(long)]
    pub no_proxy: bool,
    /// How this node serves Services (ClusterIPs, nodePorts, LoadBalancer ports): `nftables`
    /// DNATs in the kernel (one Berth-owned table, `nft list table ip berth`), `userspace`
    /// proxies each connection. Default: nftables where `nft` works, else userspace (with a
    /// warning and the metric berth_agent_proxy_nftables_fallback).
    #[arg(long, value_enum, value_name = "MODE")]
    pub proxy_mode: Option<ProxyMode>,
    /// Remove what the agent programs on this host (the nftables Service table, the ClusterIP
    /// interface, the pod network's firewall chains) and exit; workloads are left alone.
    #[arg(long)]
    pub cleanup: bool,
    /// First crash-loop restart delay in milliseconds (doubles up to 5 min).
    #[arg(long, default_value_t = 10_000, hide = true)]
    pub restart_backoff_ms: u64,
    /// Node heartbeat interval in milliseconds.
    #[arg(long, default_value_t = 2_000, hide = true)]
    pub heartbeat_ms: u64,
    /// The cluster's join token, to get this node's certificate on first start (printed by
    /// `berth server --init`, in DATA/pki/token on every server). Prefer BERTH_TOKEN: a flag
    /// is visible to other users in `ps`.
    #[arg(long, env = "BERTH_TOKEN", hide_env_values = true)]
    pub token: Option<berth_tls::Secret>,
    /// Docker pods get their own address on the node's pod network (the Node's spec.podCIDR)
    /// and other nodes' pod CIDRs are routed via their addresses; `off`: Docker pods publish
    /// their ports on host ports instead (as process pods do).
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    pub pod_network: String,
    /// The whole pod address range (the API server's --cluster-cidr): traffic from pods to
    /// anywhere outside it is masqueraded.
    #[arg(long, default_value = DEFAULT_CLUSTER_CIDR)]
    pub cluster_cidr: String,
    /// The cluster's DNS domain (the kubelet's --cluster-domain).
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// The image of the container that holds each Docker pod's network namespace (default: a
    /// built-in one the agent imports into the engine; the kubelet's
    /// --pod-infra-container-image).
    #[arg(long, value_name = "IMAGE")]
    pub pod_infra_image: Option<String>,
    /// Further addresses the node's cluster DNS answers on (HOST:PORT, repeatable), beside the
    /// pod network's gateway (port 53) that pods use.
    #[arg(long, value_name = "HOST:PORT")]
    pub dns_listen: Vec<String>,
    /// Node paths a hostPath volume may not resolve to, be under or contain (the API servers'
    /// flag of the same name, checked again here after following symlinks; the agent's data
    /// dir is added).
    #[arg(
        long,
        value_name = "PATH,...",
        value_delimiter = ',',
        default_values_t = berth_proto::hostpath::DEFAULT_FORBIDDEN.iter().map(|s| s.to_string())
    )]
    pub forbidden_host_paths: Vec<String>,
    /// When given, hostPath volumes must resolve to one of these paths or under them; `none`
    /// forbids hostPath volumes on this node.
    #[arg(long, value_name = "PATH,...|none", value_delimiter = ',')]
    pub allowed_host_paths: Vec<String>,
}

/// The API server's default --cluster-cidr.
pub const DEFAULT_CLUSTER_CIDR: &str = "10.42.0.0/16";

/// Where `berth agent` serves the node-local registry mirror by default.
pub const DEFAULT_MIRROR: &str = "127.0.0.1:5001";

impl Default for AgentArgs {
    fn default() -> Self {
        AgentArgs {
            server: vec![berth_client::DEFAULT_SERVER.to_string()],
            name: None,
            address: "127.0.0.1".to_string(),
            data_dir: None,
            runtime: None,
            cluster_registry: None,
            registry_mirror: "off".to_string(),
            capacity: None,
            labels: Vec::new(),
            host_port_range: "20000-29999".to_string(),
            listen: None,
            no_proxy: false,
            // In-process agents (tests, `berth dev`) may share a network namespace: the
            // userspace proxy keeps them apart, a kernel table would be shared.
            proxy_mode: Some(ProxyMode::Userspace),
            cleanup: false,
            restart_backoff_ms: 10_000,
            heartbeat_ms: 2_000,
            token: None,
            // In-process agents (tests, embedders) leave the host's network alone unless asked.
            pod_network: "off".to_string(),
            cluster_cidr: DEFAULT_CLUSTER_CIDR.to_string(),
            cluster_domain: "cluster.local".to_string(),
            pod_infra_image: None,
            dns_listen: Vec::new(),
            forbidden_host_paths: berth_proto::hostpath::DEFAULT_FORBIDDEN
                .iter()
                .map(|s| s.to_string())
                .collect(),
            allowed_host_paths: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("invalid flags: {0}")]
    Args(String),
    #[error("cannot use the data dir (pass --data-dir to choose another): {0}")]
    DataDir(#[source] berth_tls::TlsError),
    #[error("--runtime docker: the Docker engine is not reachable ({0}); start Docker or use --runtime process")]
    DockerUnavailable(String),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Logs(#[from] LogsError),
    #[error("API client: {0}")]
    Client(#[from] ClientError),
    #[error(transparent)]
    Credentials(#[from] crate::credentials::CredentialError),
    #[error("cleanup incomplete: {0}")]
    Cleanup(String),
}

/// A running agent.
pub struct AgentHandle {
    pub node_name: String,
    /// Where the logs API listens (also published as the Node's `status.agentEndpoint`).
    pub agent_endpoint: String,
    pub runtime: &'static str,
    pub data_dir: PathBuf,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    rt: Arc<dyn Runtime>,
}

impl AgentHandle {
    /// Stop all agent loops (workloads keep running) and wait for them.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Stop the agent's loops, then every workload on this node gracefully (each with its
    /// pod's grace period, all at once). `berth dev` does this on Ctrl-C; `berth agent` leaves
    /// workloads running instead, so that a restarted agent adopts them.
    pub async fn stop_workloads(self) {
        let rt = self.rt.clone();
        self.stop().await;
        let running = match rt.list().await {
            Ok(list) => list,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list workloads to stop them");
                return;
            }
        };
        let mut stops = tokio::task::JoinSet::new();
        for c in running.into_iter().filter(|c| c.state.is_running()) {
            let rt = rt.clone();
            stops.spawn(async move {
                let grace = Duration::from_secs(c.grace_seconds.unwrap_or(30));
                if let Err(e) = rt.stop(&c.id, grace, None).await {
                    tracing::warn!(pod = %c.pod_name, container = %c.container_name, error = %e, "stopping workload failed");
                }
            });
        }
        while stops.join_next().await.is_some() {}
        // The pods' sandboxes go too (the next start makes new ones).
        if let Err(e) = rt.remove_sandboxes(&Default::default()).await {
            tracing::warn!(error = %e, "removing pod sandboxes");
        }
    }

    /// Wait until the agent is told to stop (by the token given to [`start`]).
    pub async fn wait(self) {
        self.shutdown.cancelled().await;
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Run the agent until `shutdown`.
pub async fn run(args: AgentArgs, shutdown: CancellationToken) -> Result<(), AgentError> {
    if args.cleanup {
        return cleanup().await;
    }
    start(args, shutdown).await?.wait().await;
    Ok(())
}

/// `berth agent --cleanup`: remove Berth's host plumbing (the nftables Service table, the
/// ClusterIP interface, the firewall chains) from this host. Each step runs even when an
/// earlier one failed; the first failure is returned.
pub async fn cleanup() -> Result<(), AgentError> {
    let mut problems = Vec::new();
    match proxy::nft::remove_table(std::path::Path::new("nft")).await {
        Ok(true) => tracing::info!("removed the nftables table {}", proxy::nft::TABLE),
        Ok(false) => {}
        Err(proxy::nft::NftError::Missing { .. }) => {}
        Err(e) => problems.push(format!("nftables table: {e}")),
    }
    match crate::net::remove_vips_interface().await {
        Ok(true) => tracing::info!("removed interface {}", crate::net::VIPS_INTERFACE),
        Ok(false) => {}
        Err(e) => problems.push(format!("ClusterIP interface: {e}")),
    }
    if let Err(e) = crate::net::teardown_firewall().await {
        problems.push(format!("firewall chains: {e}"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(AgentError::Cleanup(problems.join("; ")))
    }
}

fn default_data_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".berth")
        .join("agent")
}

/// The container runtime for `--runtime KIND` (None: Docker when an engine answers within 3 s,
/// else processes). With Docker the node offers both handlers, Docker the default and
/// `process` for pods that ask for it (`runtimeClassName`); `--runtime process` offers only
/// processes. A Docker runtime is always scoped to `node`, whichever way it was chosen, so
/// agents sharing one engine never adopt or kill each other's containers.
pub async fn select_runtime(
    kind: Option<RuntimeKind>,
    node: &str,
    data_dir: &std::path::Path,
    cluster_registry: Option<String>,
) -> Result<Arc<dyn Runtime>, AgentError> {
    select_runtime_with(kind, node, data_dir, cluster_registry, None).await
}

/// [`select_runtime`], with Docker pods on `pod_network` (network, sandbox image) when given.
pub async fn select_runtime_with(
    kind: Option<RuntimeKind>,
    node: &str,
    data_dir: &std::path::Path,
    cluster_registry: Option<String>,
    pod_network: Option<(crate::podnet::PodNetwork, Option<String>)>,
) -> Result<Arc<dyn Runtime>, AgentError> {
    let docker = match kind {
        Some(RuntimeKind::Process) => None,
        Some(RuntimeKind::Docker) => Some(
            DockerRuntime::connect()
                .await
                .map_err(|e| AgentError::DockerUnavailable(e.to_string()))?,
        ),
        None => tokio::time::timeout(Duration::from_secs(3), DockerRuntime::connect())
            .await
            .ok()
            .and_then(Result::ok),
    };
    let process: Arc<dyn Runtime> = Arc::new(ProcessRuntime::new(data_dir)?);
    Ok(match docker {
        // Docker is the default; `runtimeClassName: process` still runs host processes.
        Some(d) => {
            let mut d = d.for_node(node).with_cluster_registry(cluster_registry);
            if let Some((net, infra)) = pod_network {
                d = d.with_pod_network(net, infra, data_dir.join("docker"));
            }
            Arc::new(MultiRuntime::new(vec![Arc::new(d), process]))
        }
        None => process,
    })
}

/// Start the agent's loops and return at once (the API may still be unreachable).
pub async fn start(
    args: AgentArgs,
    shutdown: CancellationToken,
) -> Result<AgentHandle, AgentError> {
    let shutdown = shutdown.child_token();
    let node_name = args.name.clone().unwrap_or_else(node::hostname);
    let address: IpAddr = args.address.parse().map_err(|_| {
        AgentError::Args(format!(
            "--address {:?} is not an IP address (e.g. 10.0.0.5)",
            args.address
        ))
    })?;
    let range = hostports::parse_range(&args.host_port_range)
        .map_err(|e| AgentError::Args(e.to_string()))?;
    let capacity = match &args.capacity {
        Some(c) => node::parse_capacity(c).map_err(|e| AgentError::Args(e.to_string()))?,
        None => node::host_capacity(),
    };
    let labels: BTreeMap<String, String> =
        node::parse_labels(&args.labels).map_err(|e| AgentError::Args(e.to_string()))?;
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    // 0700: it holds container state, logs and the node's key.
    berth_tls::create_private_dir(&data_dir).map_err(AgentError::DataDir)?;

    // The mirror's port is bound first, so the engine can be told where cluster images are.
    let mut mirror_listener = None;
    let cluster_registry = match (&args.cluster_registry, args.registry_mirror.as_str()) {
        (Some(r), _) => Some(r.clone()),
        (None, "off" | "") => None,
        (None, listen) => match crate::mirror::bind(listen).await {
            Ok(l) => {
                let addr = l.local_addr().map(|a| a.to_string()).ok();
                mirror_listener = Some(l);
                addr
            }
            Err(e) if listen == DEFAULT_MIRROR => {
                tracing::warn!(%listen, error = %e, "registry mirror not started (is another agent on this host using it? pass --registry-mirror HOST:PORT); cluster images cannot be pulled by name");
                None
            }
            Err(e) => {
                return Err(AgentError::Args(format!(
                    "--registry-mirror {listen}: cannot listen: {e}"
                )))
            }
        },
    };
    let cluster_cidr = crate::podnet::Ipv4Cidr::parse(&args.cluster_cidr)
        .map_err(|e| AgentError::Args(format!("--cluster-cidr: {e}")))?;
    let pod_network = crate::podnet::PodNetwork::new();
    let runtime = select_runtime_with(
        args.runtime,
        &node_name,
        &data_dir,
        cluster_registry.clone(),
        (args.pod_network == "on").then(|| (pod_network.clone(), args.pod_infra_image.clone())),
    )
    .await?;
    tracing::info!(node = %node_name, runtime = runtime.name(), data_dir = %data_dir.display(), "starting agent");

    let tls = crate::credentials::node_credentials(
        &data_dir,
        &args.server,
        &node_name,
        &[address.to_string()],
        args.token.as_ref().map(|t| t.expose()),
    )
    .await?;
    let client = Client::new(
        &args.server,
        ClientConfig {
            // Short: the agent retries every round anyway and must not stall its loops.
            deadline: Duration::from_secs(3),
            request_timeout: Duration::from_secs(3),
            tls: Some(tls.clone()),
            ..ClientConfig::default()
        },
    )?;
    let api: Arc<dyn NodeApi> = Arc::new(ClientApi {
        client: client.clone(),
    });
    let pods = PodCache::new();
    let tasks = TaskTracker::new();
    if let Some(l) = mirror_listener {
        let (client, tls, node, token) = (
            client.clone(),
            tls.clone(),
            node_name.clone(),
            shutdown.clone(),
        );
        tasks.spawn(async move {
            if let Err(e) = crate::mirror::serve(l, client, &tls, node, token).await {
                tracing::error!(error = %e, "registry mirror stopped");
            }
        });
    }

    let listen = args
        .listen
        .clone()
        .unwrap_or_else(|| SocketAddr::new(address, 10250).to_string());
    let metrics = crate::metrics::AgentMetrics::new(pods.clone());
    // The node certificate (its SAN is --address) serves the logs API over mutual TLS.
    let logs_tls = berth_tls::mtls_server_config(&tls.ca_cert_pem, &tls.credential)
        .map_err(crate::credentials::CredentialError::from)?;
    let logs = LogServer::bind(&listen, runtime.clone(), pods.clone())
        .await?
        .with_metrics(metrics.clone())
        .with_tls(logs_tls);
    let bound = logs
        .local_addr()
        .ok_or_else(|| AgentError::Args(format!("--listen {listen}: no local address")))?;
    let agent_endpoint = if bound.ip().is_unspecified() {
        SocketAddr::new(address, bound.port()).to_string()
    } else {
        bound.to_string()
    };
    tasks.spawn(logs.run(shutdown.clone()));

    tasks.spawn(feed_pods(
        client.clone(),
        node_name.clone(),
        pods.clone(),
        shutdown.clone(),
    ));

    let events = EventSink::new(&node_name);
    let mut sync_cfg = SyncConfig::new(&node_name, &address.to_string());
    // Drain before stop and the traffic-switch barrier: what this node's proxy has programmed,
    // and the Endpoints and Nodes a terminating pod is drained against.
    let traffic = crate::drain::TrafficView::new();
    let progress = proxy::ProxyProgress::new().with_metrics(metrics.registry());
    if !args.no_proxy {
        sync_cfg.traffic = Some(traffic.clone());
    }
    let services_env = sync_cfg.services.clone();
    sync_cfg.network = pod_network.clone();
    let mut host_paths = berth_proto::hostpath::HostPathPolicy::new(
        &args.forbidden_host_paths,
        &args.allowed_host_paths,
    );
    host_paths.forbid(
        &data_dir
            .canonicalize()
            .unwrap_or_else(|_| data_dir.clone())
            .display()
            .to_string(),
    );
    let volumes_dir = data_dir.join("volumes");
    let volumes_dir = std::path::absolute(&volumes_dir).unwrap_or(volumes_dir);
    sync_cfg.volumes = Some(
        crate::volumes::Volumes::new(volumes_dir.clone())
            .with_host_paths(host_paths)
            .with_node(&node_name),
    );
    sync_cfg.backoff = BackoffPolicy {
        base: Duration::from_millis(args.restart_backoff_ms.max(1)),
        ..BackoffPolicy::default()
    };
    let sync = PodSync::new(
        sync_cfg,
        runtime.clone(),
        api.clone(),
        pods.clone(),
        HostPorts::new(range),
        events,
        &shutdown,
    );
    tasks.spawn(sync.run(shutdown.clone()));

    let hb = Heartbeat {
        cfg: NodeConfig {
            name: node_name.clone(),
            address: address.to_string(),
            labels,
            capacity,
            agent_endpoint: agent_endpoint.clone(),
            heartbeat: Duration::from_millis(args.heartbeat_ms.max(100)),
            runtime_handlers: runtime
                .handlers()
                .iter()
                .map(|h| h.name.to_string())
                .collect(),
            annotations: [(
                berth_proto::storage::NODE_STORAGE_DIR.to_string(),
                volumes_dir.join("pv").display().to_string(),
            )]
            .into(),
        },
        api,
        runtime: runtime.clone(),
        proxy: (!args.no_proxy).then(|| progress.subscribe()),
    };
    tasks.spawn(hb.run(shutdown.clone()));

    let dns = DnsSlot::default();
    let mut dns_listen = Vec::new();
    for l in &args.dns_listen {
        dns_listen.push(l.parse::<SocketAddr>().map_err(|_| {
            AgentError::Args(format!(
                "--dns-listen {l:?} is not HOST:PORT (e.g. 127.0.0.1:1053)"
            ))
        })?);
    }
    tasks.spawn(feed_nodes(
        client.clone(),
        NodeNet {
            node: node_name.clone(),
            cluster_cidr,
            domain: args.cluster_domain.clone(),
            pod_network: pod_network.clone(),
            host_plumbing: args.pod_network == "on",
            runtime: runtime.clone(),
            dns: dns.clone(),
            dns_listen,
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
            traffic: traffic.clone(),
        },
        shutdown.clone(),
    ));

    if !args.no_proxy {
        let facts = NodeFacts {
            cluster_cidr: cluster_cidr.to_string().parse().ok(),
        };
        let programmed = PlanProgrammed::default();
        let owns_host_network = args.pod_network == "on";
        let datapath = match select_datapath(args.proxy_mode, facts, owns_host_network).await {
            Ok(nft) => ServiceDatapath::nftables(nft, programmed),
            Err(fallback) => {
                let (proxy, handle) = Proxy::new(ProxyConfig::default());
                metrics.set_proxy(handle.clone());
                tasks.spawn(proxy.run(shutdown.clone()));
                let d = ServiceDatapath::userspace(handle, programmed);
                match fallback {
                    Some(reason) => d.with_fallback_reason(reason),
                    None => d,
                }
            }
        };
        tracing::info!(mode = %datapath.mode(), "Service datapath");
        let (stats, programmed) = (datapath.stats(), datapath.programmed().clone());
        metrics
            .registry()
            .add_collector(move || stats.families(programmed.current()));
        tasks.spawn(feed_proxy(
            client,
            datapath,
            node_name.clone(),
            address,
            services_env,
            dns,
            (progress, traffic),
            shutdown.clone(),
        ));
    }

    Ok(AgentHandle {
        node_name,
        agent_endpoint,
        runtime: runtime.name(),
        data_dir,
        shutdown,
        tasks,
        rt: runtime,
    })
}

/// Keep the pod cache equal to the pods bound to `node` (list + watch, relist on expiry).
async fn feed_pods(client: Client, node: String, cache: PodCache, shutdown: CancellationToken) {
    let mut w = watcher::watcher::<Pod>(client, watcher::Config::default());
    let mut failing = false;
    loop {
        let ev = tokio::select! {
            _ = shutdown.cancelled() => return,
            ev = w.next() => ev,
        };
        match ev {
            Some(Ok(ev)) => {
                failing = false;
                match ev {
                    WatchEvent::Restarted(all) => {
                        cache.replace_all(all.into_iter().filter(|p| p.spec.node_name == node))
                    }
                    WatchEvent::Applied(p) if p.spec.node_name == node => cache.upsert(p),
                    WatchEvent::Applied(p) | WatchEvent::Deleted(p) => {
                        cache.remove(&p.metadata.uid)
                    }
                }
            }
            Some(Err(e)) => {
                if !failing {
                    tracing::warn!(error = %e, "watching pods failed; retrying (workloads keep running)");
                }
                failing = true;
            }
            None => return,
        }
    }
}

/// What the Node watch programs on this node.
struct NodeNet {
    node: String,
    cluster_cidr: crate::podnet::Ipv4Cidr,
    domain: String,
    pod_network: crate::podnet::PodNetwork,
    /// Program routes and the firewall (the pod network is on).
    host_plumbing: bool,
    runtime: Arc<dyn Runtime>,
    dns: DnsSlot,
    dns_listen: Vec<SocketAddr>,
    metrics: crate::metrics::AgentMetrics,
    shutdown: CancellationToken,
    /// Terminating pods are drained against the Nodes' proxy reports.
    traffic: crate::drain::TrafficView,
}

/// The node's DNS server once it runs, and the last Services/Endpoints to give it (the server
/// starts when the pod network's gateway exists, maybe after the first watch events).
#[derive(Clone, Default)]
struct DnsSlot {
    inner: Arc<std::sync::Mutex<DnsState>>,
}

#[derive(Default)]
struct DnsState {
    handle: Option<crate::dns::DnsHandle>,
    services: Vec<Service>,
    endpoints: Vec<Endpoints>,
}

impl DnsSlot {
    fn set_state(&self, services: Vec<Service>, endpoints: Vec<Endpoints>) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = &g.handle {
            h.set_state(&services, &endpoints);
        }
        g.services = services;
        g.endpoints = endpoints;
    }

    fn running(&self) -> bool {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .handle
            .is_some()
    }

    fn install(&self, h: crate::dns::DnsHandle) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        h.set_state(&g.services, &g.endpoints);
        g.handle = Some(h);
    }
}

/// Start the node's DNS server on the pod network's gateway (port 53) and `extra`, forwarding
/// other names to the resolvers of the host's /etc/resolv.conf.
async fn start_dns(net: &NodeNet, cfg: &crate::podnet::NetConfig) -> Result<(), String> {
    let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let upstreams = crate::dns::upstreams_from_resolv_conf(&resolv);
    let mut listen = vec![SocketAddr::new(cfg.dns.into(), 53)];
    listen.extend(net.dns_listen.iter().copied());
    let dns_cfg = crate::dns::DnsConfig {
        domain: cfg.domain.clone(),
        upstreams,
        ..crate::dns::DnsConfig::default()
    };
    let (handle, bound) = crate::dns::serve(listen, dns_cfg, net.shutdown.child_token())
        .await
        .map_err(|e| format!("cluster DNS not started: {}", berth_tls::error_chain(&e)))?;
    tracing::info!(?bound, domain = %cfg.domain, "cluster DNS listening");
    net.metrics.set_dns(handle.registry().clone());
    net.dns.install(handle);
    Ok(())
}

/// Watch the Nodes: this node's pod CIDR configures its pod network; every other node's pod
/// CIDR is routed via its address (host-gw), so routes follow nodes joining and leaving.
async fn feed_nodes(client: Client, net: NodeNet, shutdown: CancellationToken) {
    let mut w = watcher::watcher::<Node>(client, watcher::Config::default());
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    let mut last_problem = String::new();
    // Heartbeats change Nodes every few seconds: program only when what matters changed, and
    // every REPAIR anyway (someone may have removed a route or a rule).
    const REPAIR: Duration = Duration::from_secs(30);
    let mut last: Option<(Vec<NodeKey>, tokio::time::Instant)> = None;
    let mut tick = tokio::time::interval(REPAIR);
    loop {
        let ev = tokio::select! {
            _ = shutdown.cancelled() => return,
            ev = w.next() => Some(ev),
            _ = tick.tick() => None,
        };
        let ev = match ev {
            Some(None) => return, // the watch ended
            Some(Some(e)) => Some(e),
            None => None, // the repair tick
        };
        match ev {
            None => {}
            Some(Ok(WatchEvent::Restarted(all))) => {
                nodes = all
                    .into_iter()
                    .map(|n| (n.metadata.name.clone(), n))
                    .collect()
            }
            Some(Ok(WatchEvent::Applied(n))) => {
                nodes.insert(n.metadata.name.clone(), n);
            }
            Some(Ok(WatchEvent::Deleted(n))) => {
                nodes.remove(&n.metadata.name);
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "watching nodes");
                continue;
            }
        }
        net.traffic.set_nodes(&nodes);
        let fingerprint: Vec<_> = nodes
            .values()
            .map(|n| {
                (
                    n.metadata.name.clone(),
                    n.spec.pod_cidr.clone(),
                    n.address().map(str::to_string),
                )
            })
            .collect();
        let now = tokio::time::Instant::now();
        if let Some((f, at)) = &last {
            if *f == fingerprint && now - *at < REPAIR && last_problem.is_empty() {
                continue;
            }
        }
        last = Some((fingerprint, now));
        let problem = match program_nodes(&net, &nodes).await {
            Ok(()) => String::new(),
            Err(e) => e,
        };
        if problem != last_problem && !problem.is_empty() {
            tracing::warn!("pod network: {problem}");
        }
        last_problem = problem;
    }
}

/// What of a Node the host plumbing depends on: name, pod CIDR, address.
type NodeKey = (String, Option<String>, Option<String>);

/// One level-triggered pass of [`feed_nodes`].
async fn program_nodes(net: &NodeNet, nodes: &BTreeMap<String, Node>) -> Result<(), String> {
    let own = nodes.get(&net.node);
    if let Some(cidr) = own.and_then(|n| n.spec.pod_cidr.as_deref()) {
        let cidr = crate::podnet::Ipv4Cidr::parse(cidr)
            .map_err(|e| format!("this node's spec.podCIDR: {e}"))?;
        if !net.cluster_cidr.contains(cidr.addr) {
            return Err(format!(
                "this node's pod CIDR {cidr} is outside --cluster-cidr {}: pass the API server's --cluster-cidr to the agent",
                net.cluster_cidr
            ));
        }
        if net
            .pod_network
            .set(crate::podnet::NetConfig::new(cidr, &net.domain))
        {
            tracing::info!(pod_cidr = %cidr, "pod network configured");
        }
    }
    if !net.host_plumbing {
        return Ok(());
    }
    let mut problems = Vec::new();
    if let Some(cfg) = net.pod_network.get() {
        match net.runtime.prepare_pod_network().await {
            Ok(true) if !net.dns.running() => {
                if let Err(e) = start_dns(net, &cfg).await {
                    problems.push(e);
                }
            }
            Ok(_) => {}
            Err(e) => problems.push(format!("preparing the pod network: {e}")),
        }
    }
    let desired: Vec<(ipnet::Ipv4Net, std::net::Ipv4Addr)> = nodes
        .values()
        .filter(|n| n.metadata.name != net.node)
        .filter_map(|n| {
            let cidr: ipnet::Ipv4Net = n.spec.pod_cidr.as_deref()?.parse().ok()?;
            let via: std::net::Ipv4Addr = n.address()?.parse().ok()?;
            Some((cidr, via))
        })
        .collect();
    if let Err(e) = crate::net::sync_routes(&desired).await {
        problems.push(format!("routes to other nodes' pods: {e}"));
    }
    let cluster: Result<ipnet::Ipv4Net, _> = net.cluster_cidr.to_string().parse();
    if let Ok(cluster) = cluster {
        if let Err(e) = crate::net::sync_firewall(cluster).await {
            problems.push(format!("firewall: {e}"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// The datapath for `--proxy-mode`: `Ok` is nftables (checked with a dry run); `Err(reason)`
/// means userspace, with the reason nftables was wanted and not used (None: userspace was
/// asked for). In userspace mode an agent that manages the host's network (`--pod-network
/// on`, the CLI default) removes a Berth table a previous nftables-mode agent left, so it
/// cannot shadow the userspace listeners; in-process agents (tests) leave the host alone.
async fn select_datapath(
    mode: Option<ProxyMode>,
    facts: NodeFacts,
    owns_host_network: bool,
) -> Result<NftDatapath, Option<String>> {
    let nft = NftDatapath::new(facts);
    if mode == Some(ProxyMode::Userspace) {
        if !owns_host_network {
            return Err(None);
        }
        if let Ok(true) = proxy::nft::remove_table(nft.program_path()).await {
            tracing::info!(
                "removed the nftables Service table a previous agent left (--proxy-mode userspace)"
            );
        }
        return Err(None);
    }
    let checked = nft
        .probe()
        .await
        .map_err(|e| e.to_string())
        .and_then(|()| NftDatapath::enable_forwarding());
    match checked {
        Ok(()) => Ok(nft),
        Err(e) => {
            tracing::warn!(
                error = %e,
                "the nftables Service datapath is not available on this node; using the \
                 userspace proxy (berth_agent_proxy_nftables_fallback=1)"
            );
            Err(Some(e))
        }
    }
}

/// Program the node's Service datapath with the plan for every Service and its Endpoints, on
/// every change of either. Nothing is programmed before both watches have listed once: a
/// restarted agent first rebuilds the whole plan, and until then the table (or nothing, in
/// userspace mode) a previous agent left stays as it is.
#[allow(clippy::too_many_arguments)] // one task, its inputs spelled out
async fn feed_proxy(
    client: Client,
    mut datapath: ServiceDatapath,
    node_name: String,
    node_addr: IpAddr,
    services_env: crate::svcenv::ServiceEnv,
    dns: DnsSlot,
    (progress, traffic): (proxy::ProxyProgress, crate::drain::TrafficView),
    shutdown: CancellationToken,
) {
    let mut services = watcher::watcher::<Service>(client.clone(), watcher::Config::default());
    // The newest Endpoints revision seen, and the Endpoints changed since the last report
    // (the traffic-switch barrier: Node.status.proxy.programmedRevision).
    let mut revision = 0u64;
    let mut changed: Vec<Endpoints> = Vec::new();
    let mut endpoints = watcher::watcher::<Endpoints>(client.clone(), watcher::Config::default());
    let mut svc: BTreeMap<(String, String), Service> = BTreeMap::new();
    let mut eps: BTreeMap<(String, String), Endpoints> = BTreeMap::new();
    let key = |m: &berth_proto::types::ObjectMeta| (m.namespace.clone(), m.name.clone());
    let mut vip_warned = false;
    let (mut services_listed, mut endpoints_listed) = (false, false);
    let mut failing: Option<String> = None;
    let mut programmed_once = false;
    // The datapath records each plan it counts as programmed (in either mode); the barrier's
    // report follows that record instead of judging the datapath's results again.
    let mut plan_programmed = datapath.programmed().subscribe();
    let mut retry = tokio::time::interval(Duration::from_secs(5));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            ev = services.next() => match ev {
                Some(Ok(WatchEvent::Restarted(all))) => {
                    svc = all.into_iter().map(|s| (key(&s.metadata), s)).collect();
                    services_listed = true;
                }
                Some(Ok(WatchEvent::Applied(s))) => { svc.insert(key(&s.metadata), s); }
                Some(Ok(WatchEvent::Deleted(s))) => { svc.remove(&key(&s.metadata)); }
                Some(Err(e)) => { tracing::debug!(error = %e, "watching services"); continue; }
                None => return,
            },
            ev = endpoints.next() => match ev {
                Some(Ok(WatchEvent::Restarted(all))) => {
                    revision = revision.max(all.iter().map(|e| e.metadata.resource_version).max().unwrap_or(0));
                    changed.extend(all.iter().cloned());
                    eps = all.into_iter().map(|e| (key(&e.metadata), e)).collect();
                    endpoints_listed = true;
                }
                Some(Ok(WatchEvent::Applied(e))) => {
                    revision = revision.max(e.metadata.resource_version);
                    changed.push(e.clone());
                    eps.insert(key(&e.metadata), e);
                }
                Some(Ok(WatchEvent::Deleted(e))) => {
                    revision = revision.max(e.metadata.resource_version);
                    eps.remove(&key(&e.metadata));
                }
                Some(Err(e)) => { tracing::debug!(error = %e, "watching endpoints"); continue; }
                None => return,
            },
            // A plan the datapath refused is tried again (a transient failure heals).
            _ = retry.tick(), if failing.is_some() => {}
        }
        if !(services_listed && endpoints_listed) {
            continue;
        }
        services_env.set(svc.values());
        let list: Vec<Service> = svc.values().cloned().collect();
        dns.set_state(list.clone(), eps.values().cloned().collect());
        let vips = crate::net::sync_vips(&proxy::cluster_ips(&list)).await;
        services_env.set_cluster_ips_served(vips.is_ok());
        if let Err(e) = vips {
            if !vip_warned {
                tracing::warn!(error = %e, "ClusterIPs are not served on this node (nodePorts are)");
                vip_warned = true;
            }
        } else {
            vip_warned = false;
        }
        let (plan, invalid) = ProxyPlan::build(svc.values(), eps.values(), node_addr);
        for f in &invalid {
            tracing::warn!("{f}");
        }
        let result = datapath.program(&plan).await;
        if plan_programmed.has_changed().unwrap_or(false) {
            // Also a userspace plan whose ports could not all be bound: every backend set
            // was swapped.
            let mode = plan_programmed
                .borrow_and_update()
                .map(|p| p.mode)
                .unwrap_or(datapath.mode());
            programmed(
                &progress,
                &traffic,
                mode.as_str(),
                revision,
                &eps,
                &mut changed,
            );
        }
        match result {
            Ok(()) => {
                if !programmed_once {
                    programmed_once = true;
                    tracing::info!(
                        mode = %datapath.mode(),
                        revision = plan.revision,
                        service_ports = plan.services.len(),
                        "Service datapath programmed from the cluster state"
                    );
                }
                if failing.take().is_some() {
                    tracing::info!(mode = %datapath.mode(), revision = plan.revision, "Service datapath programmed again");
                }
            }
            Err(e @ proxy::datapath::DatapathError::Nftables(_)) => {
                let message = e.to_string();
                tracing::warn!(error = %message, "programming the Service datapath");
                if failing.as_deref() != Some(message.as_str()) {
                    node_event(&client, &node_name, "ServiceRulesRejected", &message).await;
                }
                failing = Some(message);
            }
            Err(e) => tracing::warn!(error = %e, "programming the proxy"),
        }
    }
}

/// A Warning event about this Node (best-effort: a failure is only logged).
async fn node_event(client: &Client, node: &str, reason: &str, message: &str) {
    use berth_client::runtime::events::{EventType, Recorder};
    let uid = match client.get::<Node>("", node).await {
        Ok(n) => n.metadata.uid,
        Err(_) => String::new(),
    };
    let object = berth_proto::types::ObjectReference {
        kind: "Node".to_string(),
        namespace: String::new(),
        name: node.to_string(),
        uid,
    };
    let ev = Recorder::new("berth-agent").with_host(node).event(
        object,
        EventType::Warning,
        reason,
        message,
        1,
        chrono::Utc::now(),
    );
    if let Err(e) = client.create(&ev).await {
        tracing::debug!(error = %e, reason, "cannot record the node event");
    }
}

/// The datapath's report (either mode) that the plan at Endpoints `revision` is programmed:
/// what the traffic-switch barrier and drain-before-stop wait for.
fn programmed(
    progress: &proxy::ProxyProgress,
    traffic: &crate::drain::TrafficView,
    mode: &str,
    revision: u64,
    eps: &BTreeMap<(String, String), Endpoints>,
    changed: &mut Vec<Endpoints>,
) {
    traffic.set_endpoints(eps);
    progress.programmed(mode, revision, changed.iter(), chrono::Utc::now());
    changed.clear();
}

/// [`NodeApi`] over the gRPC client.
pub struct ClientApi {
    pub client: Client,
}

fn map_err(e: ClientError) -> ApiError {
    match e {
        ClientError::NotFound(_) => ApiError::NotFound,
        ClientError::Conflict { .. } | ClientError::AlreadyExists(_) => ApiError::Conflict,
        ClientError::Unavailable { .. } => ApiError::Unavailable(e.to_string()),
        other => ApiError::Other(other.to_string()),
    }
}

impl ClientApi {
    /// `namespace/name` of kind `T`; None when it does not exist.
    async fn get_optional<T: berth_proto::Resource>(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<T>, ApiError> {
        match self.client.get::<T>(namespace, name).await {
            Ok(o) => Ok(Some(o)),
            Err(ClientError::NotFound(_)) => Ok(None),
            Err(e) => Err(map_err(e)),
        }
    }
}

#[async_trait::async_trait]
impl NodeApi for ClientApi {
    async fn delete_pod(
        &self,
        namespace: &str,
        name: &str,
        resource_version: u64,
    ) -> Result<(), ApiError> {
        self.client
            .delete_with_grace(
                berth_client::Kind::Pod,
                namespace,
                name,
                Some(resource_version),
                Some(0),
            )
            .await
            .map(|_| ())
            .map_err(map_err)
    }
    async fn update_pod_status(&self, pod: &Pod) -> Result<Pod, ApiError> {
        self.client.update_status(pod).await.map_err(map_err)
    }
    async fn create_event(&self, ev: &Event) -> Result<(), ApiError> {
        self.client.create(ev).await.map(|_| ()).map_err(map_err)
    }
    async fn get_node(&self, name: &str) -> Result<Option<Node>, ApiError> {
        self.get_optional("", name).await
    }
    async fn create_node(&self, node: &Node) -> Result<Node, ApiError> {
        self.client.create(node).await.map_err(map_err)
    }
    async fn update_node(&self, node: &Node) -> Result<Node, ApiError> {
        self.client.update(node).await.map_err(map_err)
    }
    async fn update_node_status(&self, node: &Node) -> Result<Node, ApiError> {
        self.client.update_status(node).await.map_err(map_err)
    }
    async fn get_config_map(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<berth_proto::types::ConfigMap>, ApiError> {
        self.get_optional(namespace, name).await
    }
    async fn get_secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<berth_proto::types::Secret>, ApiError> {
        self.get_optional(namespace, name).await
    }
    async fn get_claim(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<berth_proto::storage::PersistentVolumeClaim>, ApiError> {
        self.get_optional(namespace, name).await
    }
    async fn get_volume(
        &self,
        name: &str,
    ) -> Result<Option<berth_proto::storage::PersistentVolume>, ApiError> {
        self.get_optional("", name).await
    }
    async fn trust_snapshot(
        &self,
        namespace: &str,
        image: &str,
        node_digests: Option<&[String]>,
    ) -> Result<TrustSnapshot, ApiError> {
        use berth_proto::trust::{CLUSTER_POLICY_NAME, NAMESPACE_POLICY_NAME};
        use berth_proto::types::{
            ClusterImagePolicy, ImagePolicy, ImageSignature, ImageTag, TrustKey,
        };
        fn maybe<T>(r: Result<T, ClientError>) -> Result<Option<T>, ApiError> {
            match r {
                Ok(v) => Ok(Some(v)),
                Err(ClientError::NotFound(_)) => Ok(None),
                Err(e) => Err(map_err(e)),
            }
        }
        let mut s = TrustSnapshot {
            cluster_policy: maybe(
                self.client
                    .get::<ClusterImagePolicy>("", CLUSTER_POLICY_NAME)
                    .await,
            )?,
            namespace_policies: maybe(
                self.client
                    .get::<ImagePolicy>(namespace, NAMESPACE_POLICY_NAME)
                    .await,
            )?
            .into_iter()
            .collect(),
            ..TrustSnapshot::default()
        };
        if !berth_proto::trust::requires_signed_images(&s, namespace) {
            return Ok(s);
        }
        let Ok(r) = berth_proto::image::ImageRef::parse(image) else {
            return Ok(s); // the check says why it cannot be verified
        };
        if r.digest.is_none() && r.domain.is_none() {
            let tag = r.tag_or_latest().unwrap_or("latest");
            let name = berth_proto::image::tag_object_name(&r.repository, tag);
            s.tags
                .extend(maybe(self.client.get::<ImageTag>("", &name).await)?);
        }
        s.keys = self
            .client
            .list::<TrustKey>(None, "")
            .await
            .map_err(map_err)?
            .0;
        // The signatures check_image will ask for: by each trusted key over each digest.
        let digests: Vec<String> = match (node_digests, &r.digest) {
            (Some(d), _) => d.to_vec(),
            (None, Some(d)) => vec![d.clone()],
            (None, None) => s.tags.iter().map(|t| t.spec.digest.clone()).collect(),
        };
        for digest in &digests {
            for k in &s.keys {
                let name = berth_proto::trust::signature_object_name(
                    &r.repository,
                    digest,
                    &k.metadata.name,
                );
                s.signatures
                    .extend(maybe(self.client.get::<ImageSignature>("", &name).await)?);
            }
        }
        Ok(s)
    }
}
