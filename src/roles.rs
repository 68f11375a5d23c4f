//! Roles that compose several crates: `berth server` (the API server plus the leader-only
//! control loops) and `berth dev` (a whole single-node cluster in one process).
//!
//! The apiserver crate does not depend on the client, so the scheduler and controllers, which
//! talk to the API like every other loop, are started here: on every server, gated by
//! `run_while_leader` on the Raft leader id, so exactly one member runs them at a time and they
//! hand over on failover (every write they make is compare-and-swap, so an old leader's
//! in-flight writes cannot double-act). Each loop is supervised: one that panics or returns is
//! restarted with backoff while this member keeps leading.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use berth_apiserver::{ServerArgs, ServerHandle};
use berth_client::runtime::events::Recorder;
use berth_client::runtime::supervise::Supervisor;
use berth_client::{Client, ClientConfig};
use berth_proto::types::ObjectReference;
use tokio_util::sync::CancellationToken;

/// An API client of `server` itself with its `system:server` identity (the control loops', the
/// registry's).
fn server_client(server: &ServerHandle) -> Result<Client, berth_client::ClientError> {
    Client::new(
        &[server.advertise_addr().to_string()],
        ClientConfig {
            deadline: Duration::from_secs(30),
            tls: Some(server.client_tls()),
            ..ClientConfig::default()
        },
    )
}

/// Start the scheduler and the controllers on `server` whenever it is the Raft leader.
pub fn spawn_leader_loops(
    server: &ServerHandle,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    spawn_leader_loops_with_registry(server, Vec::new(), shutdown)
}

/// [`spawn_leader_loops`], telling the Deployment controller the addresses the cluster
/// registry is reached by (images naming one are cluster images, pinned to digests).
pub fn spawn_leader_loops_with_registry(
    server: &ServerHandle,
    registry_hosts: Vec<String>,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let client = server_client(server).context("creating the control loops' client")?;
    let leader = server.leader_watch();
    let id = server.id();
    // A loop that panics or returns is restarted on its own (backoff, the
    // berth_controller_restarts_total metric, a ControllerRestarted Event about this server).
    let supervisor = Supervisor::new().with_events(
        client.clone(),
        Recorder::new("berth-server").with_host(server.advertise_addr()),
        ObjectReference {
            kind: "Server".to_string(),
            namespace: String::new(),
            name: format!("server-{id}"),
            uid: String::new(),
        },
    );
    Ok(tokio::spawn(async move {
        berth_controllers::run::run_while_leader(leader, id, shutdown, move |token| {
            let client = client.clone();
            let supervisor = supervisor.clone();
            let registry_hosts = registry_hosts.clone();
            async move {
                let sched = tokio::spawn({
                    let (client, supervisor, token) =
                        (client.clone(), supervisor.clone(), token.clone());
                    async move {
                        supervisor
                            .run("scheduler", token, move |t| {
                                berth_scheduler::run::run(
                                    client.clone(),
                                    berth_scheduler::run::Config::default(),
                                    t,
                                )
                            })
                            .await
                    }
                });
                berth_controllers::run::run_controllers(
                    client,
                    berth_controllers::run::Config {
                        supervisor,
                        cluster_registry_hosts: registry_hosts,
                        ..berth_controllers::run::Config::default()
                    },
                    token,
                )
                .await;
                let _ = sched.await;
            }
        })
        .await
    }))
}

/// How the registry of one server is run (beyond where it listens).
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// HTTPS with the cluster CA and certificate access; plain HTTP open to every caller
    /// otherwise (the loopback listener of `berth dev`).
    pub tls: bool,
    /// The URL peers and node mirrors use (default: scheme://ADVERTISE-HOST:PORT).
    pub advertise: Option<String>,
    /// Unreferenced blobs older than this are removed.
    pub gc_grace: Duration,
    /// How often garbage is collected.
    pub gc_interval: Duration,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            tls: true,
            advertise: None,
            gc_grace: Duration::from_secs(3600),
            gc_interval: Duration::from_secs(600),
        }
    }
}

/// The registry URL peers use: `--registry-advertise`, else the server's advertised host with
/// the registry's bound port.
fn registry_url(
    server: &ServerHandle,
    bound: std::net::SocketAddr,
    opts: &RegistryOptions,
) -> String {
    if let Some(u) = &opts.advertise {
        return u.trim_end_matches('/').to_string();
    }
    let scheme = if opts.tls { "https" } else { "http" };
    let adv = server.advertise_addr();
    let host = match adv.parse::<std::net::SocketAddr>() {
        Ok(a) => a.ip().to_string(),
        Err(_) => adv.rsplit_once(':').map_or(adv, |(h, _)| h).to_string(),
    };
    let host = if bound.ip().is_unspecified() {
        host
    } else {
        bound.ip().to_string()
    };
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host
    };
    format!("{scheme}://{host}:{}", bound.port())
}

/// Start the cluster registry of `server` on `listen`. Tags and manifests go to the Raft
/// store; blobs to DATA_DIR/registry on this server's disk, replicated to a majority of the
/// servers before a push is acknowledged (see `berth_registry::cluster`). The server
/// registers its registry URL (a `RegistryServer` object) for its peers and the node mirrors,
/// and collects unreferenced blobs.
pub async fn spawn_registry(
    server: &ServerHandle,
    listen: &str,
    opts: RegistryOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<std::net::SocketAddr> {
    let client = server_client(server).context("creating the registry's store client")?;
    let dir = server.data_dir().join("registry");
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("the registry cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    let url = registry_url(server, addr, &opts);
    let peer_tls = berth_tls::mtls_client_config(&server.client_tls())
        .context("the registry's peer TLS settings")?;
    let http = reqwest::Client::builder()
        .use_preconfigured_tls((*peer_tls).clone())
        .connect_timeout(Duration::from_secs(5))
        .build()
        .context("the registry's peer HTTP client")?;
    let raft = server.raft().clone();
    let members: std::sync::Arc<dyn Fn() -> Vec<u64> + Send + Sync> =
        std::sync::Arc::new(move || raft.status().members.iter().map(|m| m.id).collect());
    let blobs = berth_registry::ClusterBlobs::new(
        berth_registry::LocalBlobs::open(dir.join("blobs"))
            .map_err(|e| anyhow::anyhow!("registry storage: {e}"))?,
        std::sync::Arc::new(berth_registry::StorePeers::new(
            client.clone(),
            server.id(),
            members,
        )),
        client.clone(),
        berth_registry::ClusterConfig {
            self_id: server.id(),
            http,
            transfer_timeout: Duration::from_secs(600),
        },
        dir.join("uploads"),
    )
    .map_err(|e| anyhow::anyhow!("registry storage: {e}"))?;
    let blobs = std::sync::Arc::new(blobs);
    let registry = berth_registry::Registry::new(
        std::sync::Arc::new(berth_registry::StoreMetadata::new(client.clone())),
        blobs.clone(),
        dir.join("uploads"),
    )
    .with_context(|| format!("cannot create {}", dir.join("uploads").display()))?
    .with_access(if opts.tls {
        berth_registry::Access::Certificates
    } else {
        berth_registry::Access::Open
    })
    .with_sent_counters({
        let sent = server.metrics().counter_vec(
            "berth_registry_blob_bytes_sent_total",
            "Blob bytes this server's registry sent, to pulling clients or to peer servers refetching.",
            &["to"],
        );
        berth_registry::SentCounters {
            clients: sent.with(&["clients"]),
            peers: sent.with(&["peers"]),
        }
    });
    let registry = if opts.tls {
        registry.with_push_tokens(berth_registry::token::PushTokens::from_ca_key(
            server.pki().ca.key_pem(),
        ))
    } else {
        registry
    };
    let tls_config = if opts.tls {
        let pki = server.pki();
        Some(
            berth_tls::optional_mtls_server_config(pki.ca.cert_pem(), &pki.server)
                .context("the registry's TLS settings")?,
        )
    } else {
        None
    };
    tokio::spawn(berth_registry::serve::serve(
        listener,
        tls_config,
        registry.router(),
        shutdown.clone(),
    ));
    // Register for peers and node mirrors (retried: the store may still be electing).
    let (id, reg_client, reg_url, token) =
        (server.id(), client.clone(), url.clone(), shutdown.clone());
    tokio::spawn(async move {
        let mut wait = Duration::from_millis(200);
        loop {
            match berth_registry::cluster::register_server(&reg_client, id, &reg_url).await {
                Ok(()) => break,
                Err(e) => tracing::warn!(error = %e, "registry: not registered yet; retrying"),
            }
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(Duration::from_secs(10));
        }
    });
    let (grace, every) = (opts.gc_grace, opts.gc_interval);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            match blobs.collect_garbage(grace).await {
                Ok(removed) if !removed.is_empty() => {
                    tracing::info!(
                        count = removed.len(),
                        "registry: garbage-collected unreferenced blobs"
                    )
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "registry: garbage collection failed"),
            }
        }
    });
    tracing::info!(%addr, %url, https = opts.tls, "cluster registry listening");
    Ok(addr)
}

/// `berth server`'s flags: the API server's plus the registry's.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerCmd {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Serve the cluster image registry (OCI Distribution API) over HTTPS with the cluster CA
    /// on HOST:PORT: admin certificates push, node certificates pull. Off unless given.
    #[arg(long, value_name = "HOST:PORT")]
    pub registry_listen: Option<String>,
    /// The registry URL other servers and the node mirrors use (default:
    /// https://ADVERTISE-HOST:PORT).
    #[arg(long, value_name = "URL")]
    pub registry_advertise: Option<String>,
    /// Blobs no manifest references are removed once older than this (protects pushes in
    /// flight, whose blobs land before their manifest).
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = crate::cli::parse_duration)]
    pub registry_gc_grace: Duration,
}

/// What `berth server --init` prints on stdout. The join token itself only when `token` is
/// given (stdout is a terminal): under systemd stdout goes to the journal, where a secret
/// must not land, so otherwise it says where the token is and how to read it.
fn init_banner(
    id: u64,
    addr: &str,
    admin: &std::path::Path,
    token_file: &std::path::Path,
    token: Option<(&str, &str)>,
) -> String {
    let admin = admin.display();
    let agent_file = token_file.with_file_name("agent-token");
    let agent_file = agent_file.display();
    let token_file = token_file.display();
    let token_lines = match token {
        Some((t, a)) => format!(
            "  Server token (secret; joins servers and agents; also in {token_file}):\n      {t}\n\
             \n  Agent token (secret; joins agents only; also in {agent_file}):\n      {a}"
        ),
        None => format!(
            "  Join tokens (secrets; not printed because stdout is not a terminal): the server \
             token in {token_file}, the agent token in {agent_file} (readable by this user \
             only)\n      read them with: berth --config {admin} token show server|agent   \
             (admin only)"
        ),
    };
    format!(
        "New cluster created; this server is member {id} at {addr}.\n\
         \n  Admin config (CLI):  {admin}\
         \n      berth --config {admin} get nodes   (or copy it to ~/.berth/config)\n\
         {token_lines}\
         \n\nJoin servers:  BERTH_TOKEN=<server token> berth server --join {addr} --listen HOST:PORT\
         \nJoin agents:   BERTH_TOKEN=<agent token> berth agent --server {addr} --address IP"
    )
}

/// `berth server`: an API server / Raft member, plus the control loops while it leads.
pub async fn run_server(cmd: ServerCmd, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut server = berth_apiserver::start(cmd.server).await?;
    tracing::info!(
        id = server.id(),
        addr = %server.advertise_addr(),
        "berth server is serving"
    );
    if server.created_pki() {
        let token_file = berth_apiserver::pki::pki_dir(server.data_dir()).join("token");
        let tokens = (
            server.join_token(),
            server.agent_join_token().unwrap_or_default(),
        );
        let token = std::io::IsTerminal::is_terminal(&std::io::stdout())
            .then_some((tokens.0.as_str(), tokens.1.as_str()));
        println!(
            "{}",
            init_banner(
                server.id(),
                server.advertise_addr(),
                &server.admin_config_path(),
                &token_file,
                token
            )
        );
    }
    let loops_token = shutdown.child_token();
    let mut registry_hosts = Vec::new();
    if let Some(listen) = &cmd.registry_listen {
        let opts = RegistryOptions {
            tls: true,
            advertise: cmd.registry_advertise.clone(),
            gc_grace: cmd.registry_gc_grace,
            ..RegistryOptions::default()
        };
        let addr = spawn_registry(&server, listen, opts, loops_token.clone()).await?;
        registry_hosts = vec![listen.clone(), addr.to_string()];
        registry_hosts.dedup();
    }
    let loops = spawn_leader_loops_with_registry(&server, registry_hosts, loops_token.clone())?;
    let res = tokio::select! {
        _ = shutdown.cancelled() => Ok(()),
        r = server.wait() => r,
    };
    loops_token.cancel();
    let _ = loops.await;
    let stopped = server.shutdown().await;
    res.and(stopped)?;
    Ok(())
}

/// Default data directory of `berth dev`.
pub fn default_dev_dir() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".berth").join("dev"))
}

/// Flags of `berth dev`.
#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// Where the cluster keeps its state (default ~/.berth/dev); starting again resumes it.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address of the API server.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:7440")]
    pub listen: String,
    /// How the node runs containers by default: the Docker engine (when it answers; pods may
    /// still choose `runtimeClassName: process`) or plain host processes. Default: docker if
    /// an engine answers within 3 s, else process.
    #[arg(long, value_enum)]
    pub runtime: Option<berth_agent::RuntimeKind>,
    /// Name of the single node (default: this host's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Do not write the CLI config file (~/.berth/config).
    #[arg(long)]
    pub no_config: bool,
    /// Serve the server's Prometheus metrics at http://HOST:PORT/metrics (port 0: any free
    /// port, printed on start); the agent's are on its API address, also at /metrics.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:0")]
    pub metrics_listen: String,
    /// Serve the cluster image registry over plain HTTP on this loopback address (Docker
    /// pushes to and pulls from 127.0.0.1 registries without configuration); "off" disables.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:5000")]
    pub registry_listen: String,
    /// Pod addresses (the node's pod CIDR is a /24 of it).
    #[arg(long, value_name = "CIDR", default_value = "10.42.0.0/16")]
    pub cluster_cidr: String,
    /// Service ClusterIPs.
    #[arg(long, value_name = "CIDR", default_value = "10.43.0.0/16")]
    pub service_cidr: String,
    /// Docker pods on their own addresses (`off`: on host ports).
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    pub pod_network: String,
}

/// `berth dev`: a single-member API server (embedded sled, the store of the real thing), the
/// control loops, and an agent, in one process. Ctrl-C stops the workloads gracefully and
/// exits; starting again resumes the cluster's state from the data dir.
pub async fn run_dev(args: DevArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let dir = match args.data_dir.clone() {
        Some(d) => d,
        None => default_dev_dir().context(
            "HOME is not set: pass --data-dir to choose where berth dev keeps its state",
        )?,
    };
    // 0700: the dev dir holds the server's store and the agent's state (and, later, keys).
    berth_tls::create_private_dir(&dir).context("cannot create the berth dev data dir")?;
    let resumed = dir.join("server").exists();
    let mut server_args = ServerArgs::new(dir.join("server"));
    server_args.listen = args.listen.clone();
    server_args.init = true;
    server_args.metrics_listen = Some(args.metrics_listen.clone());
    // Nothing of berth dev's state (the agent's certificates and volumes too) may be a hostPath.
    let abs = dir.canonicalize().unwrap_or_else(|_| dir.clone());
    server_args
        .forbidden_host_paths
        .push(abs.display().to_string());
    server_args.cluster_cidr = args
        .cluster_cidr
        .parse()
        .map_err(|e| anyhow::anyhow!("--cluster-cidr {}: {e}", args.cluster_cidr))?;
    server_args.service_cidr = args
        .service_cidr
        .parse()
        .map_err(|e| anyhow::anyhow!("--service-cidr {}: {e}", args.service_cidr))?;
    let mut server = berth_apiserver::start(server_args)
        .await
        .with_context(|| format!("starting the API server on {}", args.listen))?;
    let addr = server.advertise_addr().to_string();
    let loops_token = shutdown.child_token();

    let mut registry_addr = None;
    let registry_line = if args.registry_listen == "off" {
        "off".to_string()
    } else {
        match spawn_registry(
            &server,
            &args.registry_listen,
            RegistryOptions {
                tls: false,
                ..RegistryOptions::default()
            },
            loops_token.clone(),
        )
        .await
        {
            Ok(a) => {
                registry_addr = Some(a.to_string());
                format!("{a} (docker push {a}/NAME:TAG; pods may say image: NAME:TAG)")
            }
            // A busy port must not keep the cluster from starting: say so and go on.
            Err(e) => {
                eprintln!("berth dev: registry not started: {e:#} (use --registry-listen)");
                format!("off ({e:#})")
            }
        }
    };

    // Started after the registry so the Deployment controller knows its address (and
    // `localhost:PORT`, which names the same loopback registry).
    let registry_hosts = registry_addr
        .iter()
        .flat_map(|a| {
            let local = a
                .strip_prefix("127.0.0.1:")
                .map(|port| format!("localhost:{port}"));
            std::iter::once(a.clone()).chain(local)
        })
        .collect();
    let loops = spawn_leader_loops_with_registry(&server, registry_hosts, loops_token.clone())?;

    let agent_token = shutdown.child_token();
    let agent_args = berth_agent::AgentArgs {
        server: vec![addr.clone()],
        // The agent gets its node certificate from this server like any other agent.
        token: Some(berth_tls::Secret::new(server.join_token())),
        name: args.name.clone(),
        address: "127.0.0.1".to_string(),
        data_dir: Some(dir.join("agent")),
        runtime: args.runtime,
        cluster_registry: registry_addr,
        listen: Some("127.0.0.1:0".to_string()),
        pod_network: args.pod_network.clone(),
        cluster_cidr: args.cluster_cidr.clone(),
        ..berth_agent::AgentArgs::default()
    };
    let agent = berth_agent::start(agent_args, agent_token.clone())
        .await
        .context("starting the node agent")?;

    let config_note = if args.no_config {
        let admin = dir.join("admin.yaml");
        server
            .pki()
            .admin_config(vec![addr.clone()])?
            .write(&admin)?;
        format!(
            "(~/.berth/config not written: pass --config {} to the CLI)",
            admin.display()
        )
    } else {
        match crate::cli::config::default_config_path() {
            Some(path) => {
                let cfg: crate::cli::config::CliConfig =
                    server.pki().admin_config(vec![addr.clone()])?.into();
                cfg.save(&path)?;
                format!("CLI config written to {} (no flags needed)", path.display())
            }
            None => format!("HOME is not set: pass --server {addr} to the CLI"),
        }
    };
    // kubectl and client libraries: the same admin credential as a kubeconfig.
    let kubeconfig_path = dir.join("kubeconfig");
    {
        let admin = server.pki().admin_config(vec![addr.clone()])?;
        let yaml = crate::cli::kubeconfig::kubeconfig_yaml(
            "berth-dev",
            &admin.servers,
            &admin.certificate_authority,
            &admin.client_certificate,
            &admin.client_key,
        )?;
        berth_tls::write_private(&kubeconfig_path, yaml.as_bytes())
            .with_context(|| format!("writing {}", kubeconfig_path.display()))?;
    }
    println!(
        "berth dev is running{}\n\
         \n  API server   {addr}\
         \n  node         {} (runtime: {})\
         \n  registry     {registry_line}\
         \n  metrics      {} (server), http://{}/metrics (agent)\
         \n  data         {}\
         \n  {config_note}\
         \n  kubectl      export KUBECONFIG={}\
         \n\nTry:\
         \n  berth apply -f manifests/hello.yaml\
         \n  berth get pods\
         \n  curl http://127.0.0.1:30080/\
         \n\nCtrl-C stops the workloads and the cluster; `berth dev` again resumes it.",
        if resumed { " (resumed)" } else { "" },
        agent.node_name,
        agent.runtime,
        server
            .metrics_addr()
            .map(|a| format!("http://{a}/metrics"))
            .unwrap_or_else(|| "off".to_string()),
        agent.agent_endpoint,
        dir.display(),
        kubeconfig_path.display(),
    );

    let res = tokio::select! {
        _ = shutdown.cancelled() => Ok(()),
        r = server.wait() => r,
    };
    eprintln!("berth dev: stopping workloads gracefully...");
    agent.stop_workloads().await;
    agent_token.cancel();
    loops_token.cancel();
    let _ = loops.await;
    let stopped = server.shutdown().await;
    res.and(stopped)?;
    eprintln!("berth dev: stopped");
    Ok(())
}
