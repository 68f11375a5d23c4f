//! The server process: data dir, sled, raft member, Api + Raft gRPC services on one port.
//!
//! [`run`] is what `berth server` calls; [`start`] returns a [`ServerHandle`] (bound address,
//! raft handle, store) for tests and `berth dev`.
//!
//! Start-up: create the data dir (0700) -> open sled `DIR/db` -> bind the listener (so
//! `--listen 127.0.0.1:0` works and the address is known) -> decide the member id and get
//! the PKI ([`crate::pki`]):
//! - the data dir already has an id: restart (`--init` / `--join` are ignored); load the PKI;
//! - `--init`: id 1, new single-member cluster; a new CA, join token and admin config;
//! - `--join HOST:PORT --token T`: bootstrap TLS with the token (CA, its key, a server
//!   certificate), then ask that server's `Join` rpc (forwarded to the leader) over mutual
//!   TLS, which adds this address as a member and returns our id; the id is persisted BEFORE
//!   raft starts.
//!
//! Everything on the port is mutual TLS (client API, Raft, forwarding); see [`crate::authz`].
//!
//! Shutdown: cancel -> watch streams end -> tonic drains connections -> the raft task stops
//! -> sled is flushed and dropped (so the same process can reopen the data dir).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use berth_proto::pb::{self, api_client::ApiClient, api_server::ApiServer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::pki::ServerPki;
use crate::raft::{Bootstrap, RaftConfig, RaftError, RaftHandle, RaftNode};
use crate::service::{ApiConfig, ApiService, MAX_REQUEST_BYTES};
use crate::store::{NodePortRange, Store, StoreConfig, StoreError};

/// Flags of `berth server`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Where this member keeps its state (default ~/.berth/server).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to serve the API and raft traffic on (port 0 = any free port).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:7440")]
    pub listen: String,
    /// Address other members and clients reach this server at (default: the bound address).
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise: Option<String>,
    /// Create a new cluster with this server as its first member.
    #[arg(long, conflicts_with = "join")]
    pub init: bool,
    /// Join the cluster that the server at HOST:PORT belongs to (needs --token).
    #[arg(long, value_name = "HOST:PORT", requires = "token")]
    pub join: Option<String>,
    /// The cluster's join token (printed by `--init`, kept in DATA/pki/token). Prefer the
    /// BERTH_TOKEN environment variable: a flag is visible to other users in `ps`.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "BERTH_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<berth_tls::Secret>,
    /// With --init: the agent token's secret (k3s' --agent-token); the agent token
    /// `K10<CA fingerprint>::node:SECRET` joins agents but never servers. Random if not given.
    /// Later changes: `berth token rotate agent`.
    #[arg(
        long,
        value_name = "SECRET",
        env = "BERTH_AGENT_TOKEN",
        hide_env_values = true,
        requires = "init"
    )]
    pub agent_token: Option<berth_tls::Secret>,
    /// With --init: a new one-member cluster holding the objects of a `berth snapshot save`
    /// FILE (new CA and tokens; every object keeps its uid, spec and status, revisions are
    /// new). A corrupt or truncated file is refused before anything is written.
    #[arg(long, value_name = "FILE", requires = "init")]
    pub restore: Option<PathBuf>,
    /// With --restore: the snapshotted cluster's DATA/pki/secrets-encryption.key (from any of
    /// its servers); needed when the snapshot holds Secrets, which stay encrypted with it.
    #[arg(
        long = "restore-secrets-key",
        value_name = "FILE",
        requires = "restore"
    )]
    pub restore_kek: Option<PathBuf>,
    /// Extra names or IPs for the server certificate (besides the listen and advertise
    /// addresses, 127.0.0.1 and localhost), e.g. a load balancer's.
    #[arg(long = "tls-san", value_name = "NAME|IP")]
    pub tls_san: Vec<String>,
    /// Range Service node ports are allocated from.
    #[arg(long, value_name = "LOW-HIGH", default_value = "30000-32767")]
    pub node_port_range: NodePortRange,
    /// Range Service cluster IPs are allocated from.
    #[arg(long, value_name = "CIDR", default_value = "10.43.0.0/16")]
    pub service_cidr: crate::store::networks::Cidr,
    /// Range node pod networks are allocated from (a /24 per node).
    #[arg(long, value_name = "CIDR", default_value = "10.42.0.0/16")]
    pub cluster_cidr: crate::store::networks::Cidr,
    /// Snapshot the store and compact the raft log after this many applied entries.
    #[arg(long, value_name = "ENTRIES", default_value_t = 10_000)]
    pub snapshot_threshold: u64,
    /// Interval of watch BOOKMARK events, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 5_000, hide = true)]
    pub watch_bookmark_ms: u64,
    /// Changes kept in memory for watch resumption; older revisions answer Expired.
    #[arg(long, value_name = "EVENTS", default_value_t = crate::store::DEFAULT_HISTORY_LEN, hide = true)]
    pub watch_history: usize,
    /// Raft tick in milliseconds (election timeout is 10-20 ticks).
    #[arg(long, value_name = "MS", default_value_t = 100, hide = true)]
    pub raft_tick_ms: u64,
    /// Election timeout in ticks (the randomized timeout is in [N, 1.5 N)); fault tests
    /// randomize it per run.
    #[arg(long, value_name = "TICKS", default_value_t = 10, hide = true)]
    pub raft_election_ticks: usize,
    /// Ticks between leader heartbeats (less than the election timeout).
    #[arg(long, value_name = "TICKS", default_value_t = 1, hide = true)]
    pub raft_heartbeat_ticks: usize,
    /// Test only: a file polled every 100 ms that injects network faults into this member's
    /// raft transport; `delay MS JITTER_MS` delays every batch to every peer, a missing or
    /// empty file injects nothing (the fault-injection suite, e2e/scenarios/proof.rs).
    #[arg(long, value_name = "FILE", hide = true)]
    pub test_fault_file: Option<PathBuf>,
    /// Serve Prometheus metrics over plain HTTP at http://HOST:PORT/metrics (default: off).
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_listen: Option<String>,
    /// Node paths a hostPath volume may not be, be under or contain (the server's data dir
    /// is added). Give every server the same list.
    #[arg(
        long,
        value_name = "PATH,...",
        value_delimiter = ',',
        default_values_t = crate::hostpaths::DEFAULT_FORBIDDEN.iter().map(|s| s.to_string())
    )]
    pub forbidden_host_paths: Vec<String>,
    /// When given, hostPath volumes must be at or under one of these paths (PodSecurityPolicy's
    /// allowedHostPaths); `none` forbids hostPath volumes (Pod Security's baseline level).
    #[arg(long, value_name = "PATH,...|none", value_delimiter = ',')]
    pub allowed_host_paths: Vec<String>,
}

impl ServerArgs {
    /// Defaults as the CLI would give them, for a data dir.
    pub fn new(data_dir: impl Into<PathBuf>) -> ServerArgs {
        ServerArgs {
            data_dir: Some(data_dir.into()),
            listen: "127.0.0.1:7440".to_string(),
            advertise: None,
            init: false,
            join: None,
            token: None,
            agent_token: None,
            restore: None,
            restore_kek: None,
            tls_san: Vec::new(),
            node_port_range: NodePortRange::default(),
            service_cidr: crate::store::networks::Networks::default().service_cidr,
            cluster_cidr: crate::store::networks::Networks::default().cluster_cidr,
            snapshot_threshold: 10_000,
            watch_bookmark_ms: 5_000,
            watch_history: crate::store::DEFAULT_HISTORY_LEN,
            raft_tick_ms: 100,
            raft_election_ticks: 10,
            raft_heartbeat_ticks: 1,
            test_fault_file: None,
            metrics_listen: None,
            forbidden_host_paths: crate::hostpaths::DEFAULT_FORBIDDEN
                .iter()
                .map(|s| s.to_string())
                .collect(),
            allowed_host_paths: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{0}")]
    Args(String),
    #[error("cannot determine the default data dir: HOME is not set; pass --data-dir")]
    NoHome,
    #[error("cannot use the data dir (pass --data-dir to choose another): {0}")]
    PrivateDataDir(#[source] berth_tls::TlsError),
    #[error("data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the database in {path}: {source}")]
    Db {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "data dir {0} holds no cluster state: pass --init to create a cluster, or --join HOST:PORT \
         to join one"
    )]
    NoClusterState(PathBuf),
    #[error("joining the cluster via {target} failed: {message}")]
    Join { target: String, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Raft(#[from] RaftError),
    #[error("server task failed: {0}")]
    Task(String),
    #[error(transparent)]
    Metrics(#[from] berth_metrics::http::MetricsError),
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    #[error("TLS: {0}")]
    Tls(#[from] berth_tls::TlsError),
}

/// A running server. Dropping it without `shutdown()` aborts its tasks (no graceful stop).
pub struct ServerHandle {
    addr: SocketAddr,
    advertise: String,
    raft: RaftHandle,
    store: Arc<Store>,
    db: sled::Db,
    shutdown: CancellationToken,
    tasks: JoinSet<Result<(), ServerError>>,
    watch_tasks: tokio_util::task::TaskTracker,
    metrics: berth_metrics::Registry,
    metrics_addr: Option<SocketAddr>,
    pki: ServerPki,
    data_dir: PathBuf,
    created_pki: bool,
}

impl ServerHandle {
    /// Whether this start created the cluster's CA, token and admin config (`--init` on an
    /// empty data dir).
    pub fn created_pki(&self) -> bool {
        self.created_pki
    }
    /// The cluster CA, join token and this server's credential.
    pub fn pki(&self) -> &ServerPki {
        &self.pki
    }
    /// What in-process clients of this server (the control loops) present: `system:server`.
    pub fn client_tls(&self) -> berth_tls::ClientTls {
        self.pki.client_tls()
    }
    /// The server token (contains the secret: print it for the user, never log it).
    pub fn join_token(&self) -> String {
        self.pki.token.reveal()
    }
    /// The agent token, on the server that created the cluster (secret, like the above).
    pub fn agent_join_token(&self) -> Option<String> {
        self.pki.agent_token.as_ref().map(|t| t.reveal())
    }
    /// This member's data dir.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
    /// Where `--init` wrote the admin's CLI config (it exists only on the member that
    /// created the cluster).
    pub fn admin_config_path(&self) -> PathBuf {
        crate::pki::admin_config_path(&self.data_dir)
    }
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// The address this member advertises to the cluster.
    pub fn advertise_addr(&self) -> &str {
        &self.advertise
    }
    pub fn id(&self) -> u64 {
        self.raft.id()
    }
    pub fn raft(&self) -> &RaftHandle {
        &self.raft
    }
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }
    /// The current leader id (None during elections); leader-only loops follow this.
    pub fn leader_watch(&self) -> watch::Receiver<Option<u64>> {
        self.raft.leader_watch()
    }
    pub fn is_leader(&self) -> bool {
        self.raft.is_leader()
    }
    /// This server's metrics (raft, store, gRPC requests).
    pub fn metrics(&self) -> &berth_metrics::Registry {
        &self.metrics
    }
    /// Where `/metrics` is served, if `--metrics-listen` was given.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Wait until a server task ends on its own (an error, or the token was cancelled).
    pub async fn wait(&mut self) -> Result<(), ServerError> {
        match self.tasks.join_next().await {
            Some(Ok(r)) => r,
            Some(Err(e)) => Err(ServerError::Task(e.to_string())),
            None => Ok(()),
        }
    }

    /// Stop serving, stop raft, flush and close the database.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        self.shutdown.cancel();
        self.watch_tasks.close();
        let mut first_err = None;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            match tokio::time::timeout_at(deadline, self.tasks.join_next()).await {
                Ok(Some(Ok(Ok(())))) => {}
                Ok(Some(Ok(Err(e)))) => {
                    first_err.get_or_insert(e);
                }
                Ok(Some(Err(e))) => {
                    first_err.get_or_insert(ServerError::Task(e.to_string()));
                }
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!("server tasks did not stop in time; aborting them");
                    self.tasks.abort_all();
                    while self.tasks.join_next().await.is_some() {}
                    break;
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.watch_tasks.wait()).await;
        if let Err(e) = self.store.flush() {
            first_err.get_or_insert(e.into());
        }
        // Db::flush on the blocking pool: sled 0.34's flush_async can hang when several
        // databases flush at once (sled#1241), e.g. members of an in-process test cluster.
        let db = self.db.clone();
        match tokio::task::spawn_blocking(move || db.flush()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "flushing the database failed"),
            Err(e) => tracing::warn!(error = %e, "flushing the database failed"),
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

fn data_dir(args: &ServerArgs) -> Result<PathBuf, ServerError> {
    match &args.data_dir {
        Some(d) => Ok(d.clone()),
        None => {
            let home = std::env::var_os("HOME").ok_or(ServerError::NoHome)?;
            Ok(PathBuf::from(home).join(".berth").join("server"))
        }
    }
}

/// Open sled, retrying briefly while a previous instance in this process releases its lock.
async fn open_db(path: &Path) -> Result<sled::Db, ServerError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match sled::open(path) {
            Ok(db) => return Ok(db),
            Err(sled::Error::Io(e))
                if (e.kind() == std::io::ErrorKind::WouldBlock
                    || e.to_string().contains("lock"))
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(source) => {
                return Err(ServerError::Db {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
    }
}

const SERVER_META_TREE: &str = "server_meta";
const MEMBER_ID_KEY: &[u8] = b"member_id";

fn stored_id(db: &sled::Db, path: &Path) -> Result<Option<u64>, ServerError> {
    let dberr = |source| ServerError::Db {
        path: path.to_path_buf(),
        source,
    };
    let tree = db.open_tree(SERVER_META_TREE).map_err(dberr)?;
    Ok(tree
        .get(MEMBER_ID_KEY)
        .map_err(dberr)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map(u64::from_be_bytes))
}

fn store_id(db: &sled::Db, path: &Path, id: u64) -> Result<(), ServerError> {
    let dberr = |source| ServerError::Db {
        path: path.to_path_buf(),
        source,
    };
    let tree = db.open_tree(SERVER_META_TREE).map_err(dberr)?;
    tree.insert(MEMBER_ID_KEY, &id.to_be_bytes())
        .map_err(dberr)?;
    tree.flush().map_err(dberr)?;
    Ok(())
}

/// Ask the cluster at `target` to add `advertise` as a member; retried for a while because the
/// target may be starting or electing a leader.
async fn join_cluster(
    target: &str,
    advertise: &str,
    tls: &berth_tls::ClientTls,
) -> Result<pb::JoinResponse, ServerError> {
    let err = |message: String| ServerError::Join {
        target: target.to_string(),
        message,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        let attempt =
            async {
                let endpoint = tls
                    .endpoint(target)
                    .map_err(|e| format!("fatal: bad address: {e}"))?
                    .connect_timeout(Duration::from_secs(3));
                let mut client =
                    ApiClient::new(endpoint.connect().await.map_err(|e| {
                        format!("cannot connect: {}", berth_tls::innermost_cause(&e))
                    })?);
                client
                    .join(pb::JoinRequest {
                        address: advertise.to_string(),
                    })
                    .await
                    .map(|r| r.into_inner())
                    .map_err(|s| (s.code(), s.message().to_string()))
                    .map_err(|(code, msg)| match code {
                        tonic::Code::InvalidArgument
                        | tonic::Code::PermissionDenied
                        | tonic::Code::Unauthenticated => format!("fatal: {msg}"),
                        _ => msg,
                    })
            };
        match attempt.await {
            Ok(r) => return Ok(r),
            Err(m) if m.starts_with("fatal: ") => return Err(err(m)),
            Err(m) => last = m,
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Err(err(last))
}

/// Start a server and return once it is serving.
pub async fn start(args: ServerArgs) -> Result<ServerHandle, ServerError> {
    let networks = crate::store::networks::Networks {
        service_cidr: args.service_cidr,
        cluster_cidr: args.cluster_cidr,
        ..crate::store::networks::Networks::default()
    };
    networks.check().map_err(ServerError::Args)?;
    crate::failpoints::init();
    let dir = data_dir(&args)?;
    // A snapshot to restore is checked whole before anything is created.
    let restore = match &args.restore {
        Some(file) => Some(read_restore(file, args.restore_kek.as_deref())?),
        None => None,
    };
    berth_tls::create_private_dir(&dir).map_err(ServerError::PrivateDataDir)?;
    let db_path = dir.join("db");
    let db = open_db(&db_path).await?;

    let listener = TcpListener::bind(&args.listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: args.listen.clone(),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServerError::Bind {
        addr: args.listen.clone(),
        source,
    })?;
    let advertise = args.advertise.clone().unwrap_or_else(|| addr.to_string());
    let sans = crate::pki::server_sans(&advertise, &addr.to_string(), &args.tls_san);

    let agent_secret = args.agent_token.as_ref().map(|s| s.expose());
    let mut pki = None;
    let (id, bootstrap) = match stored_id(&db, &db_path)? {
        Some(id) => {
            tracing::info!(id, data_dir = %dir.display(), "restarting raft member from its data dir");
            if !ServerPki::exists(&dir) && args.init && id == 1 {
                // A cluster made before TLS: its creator makes a CA now.
                tracing::warn!(data_dir = %dir.display(), "no PKI in the data dir; creating a new cluster CA");
                pki = Some(init_pki(&dir, &sans, &advertise, agent_secret)?);
            }
            (id, Bootstrap::Join { peers: Vec::new() })
        }
        None if args.init => {
            let mut created = init_pki(&dir, &sans, &advertise, agent_secret)?;
            if let Some(kek) = restore.as_ref().and_then(|r| r.kek.clone()) {
                kek.write(&crate::pki::pki_dir(&dir))
                    .map_err(crate::pki::PkiError::from)?;
                created.secrets_kek = kek;
            }
            pki = Some(created);
            store_id(&db, &db_path, 1)?;
            (1, Bootstrap::NewCluster)
        }
        None => match &args.join {
            Some(target) => {
                let token = args.token.as_ref().ok_or(crate::pki::PkiError::NoToken)?;
                let joined = ServerPki::join(&dir, target, token.expose(), &sans).await?;
                let resp = join_cluster(target, &advertise, &joined.client_tls()).await?;
                pki = Some(joined);
                store_id(&db, &db_path, resp.id)?;
                tracing::info!(id = resp.id, via = %target, "joined the cluster");
                let peers = resp
                    .members
                    .iter()
                    .filter(|m| m.id != resp.id)
                    .map(|m| (m.id, m.address.clone()))
                    .collect();
                (resp.id, Bootstrap::Join { peers })
            }
            None => return Err(ServerError::NoClusterState(dir)),
        },
    };
    let created_pki = pki.is_some() && id == 1;
    let pki = match pki {
        Some(p) => p,
        None => ServerPki::load(&dir, &sans)?,
    };

    let store = Arc::new(Store::open(
        &db,
        StoreConfig {
            history_len: args.watch_history.max(1),
            ..StoreConfig::default()
        },
    )?);
    let mut raft_cfg = RaftConfig::new(id, advertise.clone(), db.clone());
    raft_cfg.log_dir = Some(dir.join("raft-wal"));
    raft_cfg.bootstrap = bootstrap;
    raft_cfg.compaction_threshold = args.snapshot_threshold.max(1);
    raft_cfg.snapshot_catchup_entries = (args.snapshot_threshold / 2).min(1_000);
    raft_cfg.tick = Duration::from_millis(args.raft_tick_ms.max(1));
    raft_cfg.election_tick = args.raft_election_ticks.max(2);
    raft_cfg.max_election_tick = raft_cfg.election_tick * 3 / 2 + 1;
    raft_cfg.heartbeat_tick = args
        .raft_heartbeat_ticks
        .clamp(1, raft_cfg.election_tick - 1);
    if let Some(file) = args.test_fault_file.clone() {
        tokio::spawn(poll_fault_file(file, raft_cfg.faults.clone()));
    }
    raft_cfg.tls = Some(pki.client_tls());
    let (node, raft) = RaftNode::new(raft_cfg, store.clone())?;
    if let Some(known) = raft.member_address(id).filter(|a| *a != advertise) {
        tracing::warn!(
            id,
            known = %known,
            advertise = %advertise,
            "the cluster knows this member by another address; peers keep dialing the old one \
             (restart with --listen/--advertise {known})"
        );
    }

    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();
    {
        let token = shutdown.clone();
        tasks.spawn(async move { node.run(token).await.map_err(ServerError::from) });
    }
    let mut host_paths =
        crate::hostpaths::HostPathPolicy::new(&args.forbidden_host_paths, &args.allowed_host_paths);
    let abs_dir = dir.canonicalize().unwrap_or_else(|_| dir.clone());
    host_paths.forbid(&abs_dir.display().to_string());
    let api = ApiService::new(
        store.clone(),
        raft.clone(),
        ApiConfig {
            node_ports: args.node_port_range,
            networks,
            bookmark_interval: Duration::from_millis(args.watch_bookmark_ms.max(10)),
            host_paths,
        },
        pki.clone(),
        shutdown.clone(),
    );
    if let Some(r) = &restore {
        if id == 1 && created_pki {
            let n = api
                .restore_objects(&r.body)
                .await
                .map_err(|m| ServerError::Args(format!("--restore: {m}")))?;
            tracing::info!(objects = n, revision = r.revision, "restored the snapshot");
        } else {
            tracing::warn!("--restore ignored: this data dir holds a cluster already");
        }
    }
    let watch_tasks = api.watch_tasks();
    let metrics = berth_metrics::Registry::new();
    crate::metrics::register_server_collector(
        &metrics,
        raft.clone(),
        store.clone(),
        watch_tasks.clone(),
    );
    let grpc_metrics = crate::metrics::GrpcMetrics::register(&metrics);
    let api = Arc::new(api);
    let grpc = tonic::service::Routes::new(raft.raft_service())
        .add_service(crate::metrics::Instrumented::new(
            ApiServer::from_arc(api.clone())
                .max_decoding_message_size(MAX_REQUEST_BYTES)
                .max_encoding_message_size(usize::MAX),
            grpc_metrics,
        ))
        .prepare()
        .into_axum_router();
    let kube = Arc::new(crate::kube::KubeApi::new(api, advertise.clone()));
    let tls = berth_tls::api_port_server_config(pki.ca.cert_pem(), &pki.server)?;
    let metrics_addr = match &args.metrics_listen {
        Some(listen) => {
            let registry = metrics.clone();
            // The process-wide registry holds the leader loops' metrics (scheduler,
            // controllers) when they run in this process.
            let render: berth_metrics::http::RenderFn = Arc::new(move || {
                berth_metrics::text::render(&[&registry, berth_metrics::global()])
            });
            let server = berth_metrics::http::MetricsServer::bind(listen, render).await?;
            let bound = server.local_addr();
            let token = shutdown.clone();
            tasks.spawn(async move {
                server.run(token).await;
                Ok(())
            });
            if let Some(a) = bound {
                tracing::info!(addr = %a, "serving metrics at http://{a}/metrics");
            }
            bound
        }
        None => None,
    };
    {
        let token = shutdown.clone();
        tasks.spawn(async move {
            crate::serve::serve(listener, tls, grpc, kube, token).await;
            Ok(())
        });
    }
    tracing::info!(id, %addr, advertise = %advertise, "berth server listening");
    Ok(ServerHandle {
        addr,
        advertise,
        raft,
        store,
        db,
        shutdown,
        tasks,
        watch_tasks,
        metrics,
        metrics_addr,
        pki,
        data_dir: dir,
        created_pki,
    })
}

/// A checked `--restore` file: the store snapshot, its revision and the old cluster's KEK.
struct Restore {
    body: Vec<u8>,
    revision: u64,
    kek: Option<crate::encryption::Kek>,
}

fn read_restore(file: &Path, key: Option<&Path>) -> Result<Restore, ServerError> {
    let bad = |m: String| ServerError::Args(format!("--restore {}: {m}", file.display()));
    let bytes = std::fs::read(file).map_err(|e| bad(e.to_string()))?;
    let (header, body) = berth_proto::snapshotfile::decode(&bytes).map_err(bad)?;
    let holds_keyring = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v["objects"]
                .as_array()
                .map(|o| o.iter().any(crate::encryption::is_keyring))
        })
        .unwrap_or(false);
    let kek = match key {
        Some(k) => {
            let text = std::fs::read_to_string(k).map_err(|e| {
                ServerError::Args(format!("--restore-secrets-key {}: {e}", k.display()))
            })?;
            Some(crate::encryption::Kek::from_base64(&text).map_err(|m| {
                ServerError::Args(format!(
                    "--restore-secrets-key {}: {m}; give the old cluster's \
                     DATA/pki/secrets-encryption.key",
                    k.display()
                ))
            })?)
        }
        None if holds_keyring => {
            return Err(bad(
                "the snapshot holds Secrets encrypted with its cluster's key: pass \
                 --restore-secrets-key OLD_DATA/pki/secrets-encryption.key (from any server of \
                 that cluster)"
                    .into(),
            ))
        }
        None => None,
    };
    Ok(Restore {
        body: body.to_vec(),
        revision: header.revision,
        kek,
    })
}

/// `--init`: a new CA and token, and the admin's CLI config next to the data.
fn init_pki(
    dir: &Path,
    sans: &[String],
    advertise: &str,
    agent_secret: Option<&str>,
) -> Result<ServerPki, ServerError> {
    let pki = ServerPki::create(dir, sans, agent_secret)?;
    pki.admin_config(vec![advertise.to_string()])?
        .write(&crate::pki::admin_config_path(dir))?;
    Ok(pki)
}

/// `--test-fault-file`: apply the file's faults to the raft transport every 100 ms (for the
/// process's lifetime; test servers end with their process).
async fn poll_fault_file(file: PathBuf, faults: crate::raft::Faults) {
    let mut last = String::new();
    loop {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        if text != last {
            let words: Vec<&str> = text.split_whitespace().collect();
            let delay = match words.as_slice() {
                ["delay", ms, jitter] => match (ms.parse::<u64>(), jitter.parse::<u64>()) {
                    (Ok(ms), Ok(j)) => Some((Duration::from_millis(ms), Duration::from_millis(j))),
                    _ => None,
                },
                _ => None,
            };
            tracing::warn!(file = %file.display(), ?delay, "test fault file changed: raft transport delay");
            faults.set_delay(delay);
            last = text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Run a server until `shutdown` is cancelled (or a server task fails).
pub async fn run(args: ServerArgs, shutdown: CancellationToken) -> Result<(), ServerError> {
    let mut handle = start(args).await?;
    let res = tokio::select! {
        _ = shutdown.cancelled() => Ok(()),
        r = handle.wait() => r,
    };
    let stopped = handle.shutdown().await;
    res.and(stopped)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        server: ServerArgs,
    }

    #[test]
    fn flags_parse_with_defaults_and_reject_contradictions() {
        let cli = Cli::try_parse_from(["berth", "--init"]).unwrap();
        assert_eq!(cli.server.listen, "127.0.0.1:7440");
        assert_eq!(cli.server.node_port_range, NodePortRange::default());
        assert_eq!(cli.server.snapshot_threshold, 10_000);
        let cli = Cli::try_parse_from([
            "berth",
            "--join",
            "10.0.0.1:7440",
            "--node-port-range",
            "31000-31010",
            "--data-dir",
            "/tmp/x",
            "--token",
            "K10abc::secret",
        ])
        .unwrap();
        assert_eq!(cli.server.join.as_deref(), Some("10.0.0.1:7440"));
        let token = cli.server.token.clone().unwrap();
        assert_eq!(token.expose(), "K10abc::secret");
        assert!(
            !format!("{:?}", cli.server).contains("secret"),
            "Debug hides the token"
        );
        if std::env::var_os("BERTH_TOKEN").is_none() {
            let err = Cli::try_parse_from(["berth", "--join", "10.0.0.1:7440"])
                .err()
                .unwrap();
            assert!(err.to_string().contains("--token"), "{err}");
        }
        assert_eq!(cli.server.node_port_range.start, 31000);
        assert!(Cli::try_parse_from(["berth", "--init", "--join", "a:1"]).is_err());
        let err = Cli::try_parse_from(["berth", "--node-port-range", "9-1"])
            .err()
            .unwrap();
        assert!(err.to_string().contains("node-port range"), "{err}");
        // The hidden test flags of the fault-injection suite.
        let cli = Cli::try_parse_from([
            "berth",
            "--init",
            "--raft-election-ticks",
            "7",
            "--raft-heartbeat-ticks",
            "2",
            "--test-fault-file",
            "/tmp/faults",
        ])
        .unwrap();
        assert_eq!(cli.server.raft_election_ticks, 7);
        assert_eq!(cli.server.raft_heartbeat_ticks, 2);
        assert_eq!(
            cli.server.test_fault_file.as_deref(),
            Some(std::path::Path::new("/tmp/faults"))
        );
    }
}
