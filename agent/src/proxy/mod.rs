//! The per-node L4 Service proxy: every node listens on each Service's node port and forwards
//! each new TCP connection to a ready endpoint anywhere in the cluster.
//!
//! # Shape
//!
//! - [`Proxy`] is a single-owner worker (linkerd2-proxy style): one task runs
//!   [`Proxy::run`] with a `biased` select loop over shutdown, commands and a bind-retry tick.
//!   It owns the listeners and the per-Service state; nobody else mutates them.
//! - [`ProxyHandle`] is the cheap, cloneable front: [`ProxyHandle::set_services`] replaces the
//!   whole desired set (level-triggered: pass everything every time) and returns once it is
//!   applied; [`ProxyHandle::metrics`] returns a snapshot per Service.
//! - Per Service port the ready backends are an `Arc<BackendSet>` behind an `ArcSwap`: a new
//!   connection loads the current set once, so when `set_services` returns every later
//!   connection uses the new set. Connections already established keep running (drain) until
//!   they close, or until `drain_timeout` after their backend left the set.
//! - Balancing is power-of-two-choices over in-flight connection counts. A refused or timed-out
//!   connect tries another backend (up to `max_connect_attempts` distinct ones) before the
//!   client is closed; a Service with no backends accepts and closes at once (counted).
//! - The data path is `tokio::io::copy_bidirectional_with_sizes` with large buffers and
//!   TCP_NODELAY on both sides; connection tasks live in one `TaskTracker` (no detached spawns),
//!   listener tasks are owned by the worker; shutdown closes listeners, lets connections finish
//!   for `shutdown_grace`, then cuts the rest.
//!
//! Data flow: `set_services` -> worker validates -> swaps backend sets -> (re)binds listeners ->
//! accept loop -> `conn::serve` picks a backend (p2c) -> connect with failover -> copy bytes ->
//! counters in [`ServiceMetrics`] -> [`proxy_families`] / [`render_prometheus`].
//!
//! # Wiring (for the agent)
//!
//! The agent owns one `Proxy`: `let (proxy, handle) = Proxy::new(ProxyConfig::default());` and
//! runs `proxy.run(shutdown.child_token())` in its task set. It watches Services and Endpoints
//! (reflector caches) and, on every change of either, recomputes the full desired set and calls
//! `handle.set_services(all).await`:
//!
//! ```text
//! // services: every Service, endpoints: every Endpoints (all namespaces, from the caches)
//! let all = berth_agent::proxy::desired_services(&services, &endpoints, node_address);
//! match handle.set_services(all).await {
//!     Ok(()) => {}
//!     Err(ProxyError::Apply { failures }) => warn!(...), // e.g. a node port in use: the rest
//!                                                     // is applied; binds are retried
//!     Err(ProxyError::Stopped) => return,             // shutting down
//! }
//! ```
//!
//! [`service_backends`] yields one [`ServiceBackends`] per Service port that has a nodePort:
//! listening on the node address and 127.0.0.1, with backends = the ready addresses
//! (`subsets[].addresses`, never `notReadyAddresses`) joined with the endpoint port whose name
//! matches the Service port's name (Kubernetes' rule; a subset with a single port also matches
//! an unnamed Service port). Calls are cheap when nothing changed: unchanged backends keep their
//! identity and in-flight counts, unchanged listeners are left alone.

mod balancer;
mod conn;
pub mod datapath;
mod endpoints;
mod listener;
mod metrics;
pub mod nft;
pub mod plan;
pub mod progress;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use balancer::{Backend, BackendSet};
use conn::ConnEnv;
pub use endpoints::{cluster_ips, desired_services, service_backends};
use metrics::ServiceCounters;
pub use metrics::{proxy_families, render_prometheus, BackendMetrics, ServiceMetrics};
pub use plan::ProxyPlan;
pub use progress::{ProxyProgress, USERSPACE};

/// Tunables of the proxy; `Default` gives production values.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// How long an established connection may outlive the removal of its backend.
    pub drain_timeout: Duration,
    /// How long one connect attempt to a backend may take before the next backend is tried.
    pub connect_timeout: Duration,
    /// Distinct backends tried for one client connection before it is closed.
    pub max_connect_attempts: usize,
    /// Size of each of the two copy buffers of a connection.
    pub copy_buf_size: usize,
    /// Listen backlog of each node-port socket.
    pub listen_backlog: u32,
    /// How often node ports that failed to bind are tried again.
    pub bind_retry_interval: Duration,
    /// On shutdown, how long established connections may run before they are cut.
    pub shutdown_grace: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            drain_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(1),
            max_connect_attempts: 3,
            copy_buf_size: 64 * 1024,
            listen_backlog: 1024,
            bind_retry_interval: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Identity of one Service port: the unit the proxy balances.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
    pub port_name: String,
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.port_name.is_empty() {
            write!(f, "{}/{}", self.namespace, self.name)
        } else {
            write!(f, "{}/{}:{}", self.namespace, self.name, self.port_name)
        }
    }
}

/// Desired state of one Service port on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceBackends {
    pub namespace: String,
    pub name: String,
    pub port_name: String,
    /// The port listened on (on every address of `listen_addrs`); 0: no node port (a
    /// ClusterIP Service), then only `also_listen` is served.
    pub node_port: u16,
    /// Usually the node address and 127.0.0.1.
    pub listen_addrs: Vec<IpAddr>,
    /// Further addresses served with the same backends: the ClusterIP at the Service port,
    /// and for type LoadBalancer the node address at the Service port.
    pub also_listen: Vec<SocketAddr>,
    /// Ready endpoints; order does not matter, duplicates are ignored.
    pub backends: Vec<SocketAddr>,
}

impl ServiceBackends {
    pub fn key(&self) -> ServiceKey {
        ServiceKey {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            port_name: self.port_name.clone(),
        }
    }

    /// The socket addresses to bind: deduplicated; an unspecified address (0.0.0.0 / ::)
    /// already covers every specific address of its family, so those are dropped.
    fn bind_addrs(&self) -> Vec<SocketAddr> {
        let mut ips: BTreeSet<IpAddr> = self.listen_addrs.iter().copied().collect();
        if ips.iter().any(|ip| ip.is_ipv4() && ip.is_unspecified()) {
            ips.retain(|ip| !ip.is_ipv4() || ip.is_unspecified());
        }
        if ips.iter().any(|ip| ip.is_ipv6() && ip.is_unspecified()) {
            ips.retain(|ip| !ip.is_ipv6() || ip.is_unspecified());
        }
        if self.node_port == 0 {
            return Vec::new();
        }
        ips.into_iter()
            .map(|ip| SocketAddr::new(ip, self.node_port))
            .collect()
    }

    /// The ClusterIP / load-balancer addresses, each bound (and retried) on its own: one that
    /// cannot be bound never keeps the node port from being served.
    fn extra_addrs(&self) -> BTreeSet<SocketAddr> {
        let main = self.bind_addrs();
        self.also_listen
            .iter()
            .filter(|a| !main.contains(a))
            .copied()
            .collect()
    }
}

/// Why one Service port is not (fully) served.
#[derive(Debug)]
pub enum ServiceProblem {
    /// Node port 0 is not a port clients can reach.
    NodePortZero,
    /// No address to listen on was given.
    NoListenAddress,
    /// The same Service port appeared twice in one `set_services` call.
    DuplicateService,
    /// Another Service port in the same call already uses this node port (or address).
    NodePortTaken { by: ServiceKey },
    /// The node port could not be bound (in use by another process, address not on this host).
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl fmt::Display for ServiceProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NodePortZero => write!(f, "node port is 0; give a nodePort in 1..=65535"),
            Self::NoListenAddress => write!(f, "no listen address given"),
            Self::DuplicateService => {
                write!(f, "listed twice in one update; the first entry was used")
            }
            Self::NodePortTaken { by } => {
                write!(f, "node port already used by {by} in the same update")
            }
            Self::Bind { addr, source } => write!(
                f,
                "cannot listen on {addr}: {source} (is another process using the port, or is \
                 the address not on this host?); retried every few seconds"
            ),
        }
    }
}

/// One Service port that `set_services` could not fully apply.
#[derive(Debug)]
pub struct ServiceFailure {
    pub service: ServiceKey,
    pub node_port: u16,
    pub problem: ServiceProblem,
}

impl fmt::Display for ServiceFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "service {} (node port {}): {}",
            self.service, self.node_port, self.problem
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The proxy task has stopped (shutdown) and takes no more commands.
    #[error("the service proxy is not running (it was shut down)")]
    Stopped,
    /// Everything else was applied; these Service ports are not (fully) served.
    #[error("service proxy: {} service port(s) not served: {}", failures.len(), join(failures))]
    Apply { failures: Vec<ServiceFailure> },
}

fn join(failures: &[ServiceFailure]) -> String {
    failures
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

enum Command {
    SetServices {
        services: Vec<ServiceBackends>,
        reply: oneshot::Sender<Vec<ServiceFailure>>,
    },
    Metrics {
        reply: oneshot::Sender<Vec<ServiceMetrics>>,
    },
}

/// Cloneable front of a running [`Proxy`].
#[derive(Clone)]
pub struct ProxyHandle {
    commands: mpsc::Sender<Command>,
}

impl ProxyHandle {
    /// Replaces the whole desired set of Service ports. Returns once applied: every connection
    /// accepted afterwards uses the new backends. Service ports left out are removed (their
    /// listeners close; their connections drain).
    pub async fn set_services(&self, services: Vec<ServiceBackends>) -> Result<(), ProxyError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::SetServices { services, reply })
            .await
            .map_err(|_| ProxyError::Stopped)?;
        let failures = rx.await.map_err(|_| ProxyError::Stopped)?;
        if failures.is_empty() {
            Ok(())
        } else {
            Err(ProxyError::Apply { failures })
        }
    }

    /// A snapshot of the counters of every Service port, ordered by Service key.
    pub async fn metrics(&self) -> Result<Vec<ServiceMetrics>, ProxyError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Metrics { reply })
            .await
            .map_err(|_| ProxyError::Stopped)?;
        rx.await.map_err(|_| ProxyError::Stopped)
    }
}

/// State shared between the worker and the connections of one Service port.
pub(crate) struct ServiceShared {
    pub(crate) backends: ArcSwap<BackendSet>,
    pub(crate) counters: ServiceCounters,
}

struct ListenerEntry {
    node_port: u16,
    addrs: Vec<SocketAddr>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl ListenerEntry {
    /// Stops the accept loops and waits until the sockets are closed, so the port can be
    /// bound again right away.
    async fn close(self) {
        self.stop.cancel();
        for task in self.tasks {
            if let Err(e) = task.await {
                tracing::warn!(node_port = self.node_port, error = %e, "listener task failed");
            }
        }
    }
}

struct ServiceEntry {
    spec: ServiceBackends,
    shared: Arc<ServiceShared>,
    listener: Option<ListenerEntry>,
    /// Listeners on the ClusterIP / load-balancer addresses, one per address.
    extras: BTreeMap<SocketAddr, ListenerEntry>,
    /// Removed backends with connections possibly still draining; kept so that a backend that
    /// comes back in time is revived (its connections are then not cut).
    draining: HashMap<SocketAddr, Arc<Backend>>,
}

/// The proxy worker. Create with [`Proxy::new`], run with [`Proxy::run`].
pub struct Proxy {
    /// Config, copy-buffer pool and the connection kill switch, shared with every connection.
    env: Arc<ConnEnv>,
    commands: mpsc::Receiver<Command>,
    services: BTreeMap<ServiceKey, ServiceEntry>,
    conns: TaskTracker,
}

impl Proxy {
    pub fn new(config: ProxyConfig) -> (Proxy, ProxyHandle) {
        let (tx, rx) = mpsc::channel(16);
        let proxy = Proxy {
            env: Arc::new(ConnEnv::new(config)),
            commands: rx,
            services: BTreeMap::new(),
            conns: TaskTracker::new(),
        };
        (proxy, ProxyHandle { commands: tx })
    }

    /// Runs until `shutdown` is cancelled, then closes the listeners, gives established
    /// connections `shutdown_grace` to finish, and cuts the rest.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut retry = tokio::time::interval(self.env.config.bind_retry_interval);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut handles_gone = false;
        loop {
            let unbound = self.has_unbound();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                cmd = self.commands.recv(), if !handles_gone => match cmd {
                    Some(Command::SetServices { services, reply }) => {
                        let failures = self.apply(services).await;
                        for f in &failures {
                            tracing::warn!("{f}");
                        }
                        let _ = reply.send(failures);
                    }
                    Some(Command::Metrics { reply }) => {
                        let _ = reply.send(self.metrics());
                    }
                    // Nobody can change the set any more; keep serving the current one.
                    None => handles_gone = true,
                },
                _ = retry.tick(), if unbound => {
                    for f in self.bind_missing() {
                        tracing::debug!("still failing: {f}");
                    }
                }
            }
        }
        self.shutdown().await;
    }

    async fn shutdown(mut self) {
        let entries = std::mem::take(&mut self.services);
        for (_, entry) in entries {
            if let Some(listener) = entry.listener {
                listener.close().await;
            }
            for (_, l) in entry.extras {
                l.close().await;
            }
        }
        self.conns.close();
        if tokio::time::timeout(self.env.config.shutdown_grace, self.conns.wait())
            .await
            .is_err()
        {
            tracing::info!(
                remaining = self.conns.len(),
                "shutdown grace over; closing remaining proxied connections"
            );
            self.env.stop.cancel();
            self.conns.wait().await;
        }
    }

    fn has_unbound(&self) -> bool {
        self.services.values().any(|e| {
            (e.listener.is_none() && e.spec.node_port != 0)
                || e.spec
                    .extra_addrs()
                    .iter()
                    .any(|a| !e.extras.contains_key(a))
        })
    }

    fn metrics(&self) -> Vec<ServiceMetrics> {
        self.services
            .iter()
            .map(|(key, e)| {
                let set = e.shared.backends.load();
                let draining =
                    e.draining
                        .values()
                        .filter(|b| b.in_flight() > 0)
                        .map(|b| BackendMetrics {
                            addr: b.addr,
                            active: b.in_flight(),
                            ready: false,
                        });
                let backends = set
                    .backends
                    .iter()
                    .map(|b| BackendMetrics {
                        addr: b.addr,
                        active: b.in_flight(),
                        ready: true,
                    })
                    .chain(draining)
                    .collect();
                e.shared
                    .counters
                    .snapshot(key, e.spec.node_port, set.backends.len(), backends)
            })
            .collect()
    }

    /// Validates the desired set and applies it; returns what could not be applied.
    async fn apply(&mut self, services: Vec<ServiceBackends>) -> Vec<ServiceFailure> {
        // The same validation as the nftables datapath (plan.rs): one node port or address,
        // one Service port, the first by key wins.
        let (desired, mut failures) = plan::validate(services);

        // Close every listener that goes away or moves before binding anything, so a node
        // port can pass from one Service to another in one update.
        let removed: Vec<ServiceKey> = self
            .services
            .keys()
            .filter(|k| !desired.contains_key(*k))
            .cloned()
            .collect();
        for key in removed {
            if let Some(entry) = self.services.remove(&key) {
                let now = tokio::time::Instant::now();
                for b in entry.shared.backends.load().backends.iter() {
                    b.mark_removed(now + self.env.config.drain_timeout);
                }
                entry.shared.backends.store(Arc::new(BackendSet::default()));
                if let Some(listener) = entry.listener {
                    listener.close().await;
                }
                for (_, l) in entry.extras {
                    l.close().await;
                }
            }
        }
        for (key, entry) in self.services.iter_mut() {
            let Some(svc) = desired.get(key) else {
                continue;
            };
            let moved = entry
                .listener
                .as_ref()
                .is_some_and(|l| l.node_port != svc.node_port || l.addrs != svc.bind_addrs());
            if moved {
                if let Some(listener) = entry.listener.take() {
                    listener.close().await;
                }
            }
            let wanted = svc.extra_addrs();
            let gone: Vec<SocketAddr> = entry
                .extras
                .keys()
                .filter(|a| !wanted.contains(a))
                .copied()
                .collect();
            for a in gone {
                if let Some(l) = entry.extras.remove(&a) {
                    l.close().await;
                }
            }
        }

        // Swap backend sets first, then bind: the first connection on a new listener already
        // sees its backends.
        for (key, svc) in desired {
            let entry = self.services.entry(key).or_insert_with(|| ServiceEntry {
                spec: svc.clone(),
                shared: Arc::new(ServiceShared {
                    backends: ArcSwap::from_pointee(BackendSet::default()),
                    counters: ServiceCounters::default(),
                }),
                listener: None,
                extras: BTreeMap::new(),
                draining: HashMap::new(),
            });
            swap_backends(entry, &svc.backends, self.env.config.drain_timeout);
            entry.spec = svc;
        }
        failures.extend(self.bind_missing());
        failures
    }

    /// Binds every Service port that has no listener yet.
    fn bind_missing(&mut self) -> Vec<ServiceFailure> {
        let mut failures = Vec::new();
        for (key, entry) in self.services.iter_mut() {
            for addr in entry.spec.extra_addrs() {
                if entry.extras.contains_key(&addr) {
                    continue;
                }
                match listener::bind(addr, self.env.config.listen_backlog) {
                    Ok(socket) => {
                        let stop = CancellationToken::new();
                        let task = tokio::spawn(listener::accept_loop(
                            socket,
                            entry.shared.clone(),
                            self.env.clone(),
                            self.conns.clone(),
                            stop.clone(),
                        ));
                        tracing::info!(service = %key, %addr, "listening");
                        entry.extras.insert(
                            addr,
                            ListenerEntry {
                                node_port: addr.port(),
                                addrs: vec![addr],
                                stop,
                                tasks: vec![task],
                            },
                        );
                    }
                    Err(source) => failures.push(ServiceFailure {
                        service: key.clone(),
                        node_port: entry.spec.node_port,
                        problem: ServiceProblem::Bind { addr, source },
                    }),
                }
            }
            if entry.listener.is_some() || entry.spec.node_port == 0 {
                continue;
            }
            let mut addrs = entry.spec.bind_addrs();
            let mut sockets = Vec::with_capacity(addrs.len());
            let mut error = None;
            let localhost = |a: &SocketAddr| {
                a.ip() == IpAddr::from([127, 0, 0, 1])
                    || a.ip() == IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1])
            };
            let has_node_addr = addrs.iter().any(|a| !localhost(a));
            let mut skipped = Vec::new();
            for addr in &addrs {
                match listener::bind(*addr, self.env.config.listen_backlog) {
                    Ok(l) => sockets.push(l),
                    // The loopback listener is a convenience next to the node address: when
                    // several agents share one host (tests, benchmarks) only one of them can
                    // have it, and the others must still serve their own address.
                    Err(source) if localhost(addr) && has_node_addr => {
                        tracing::warn!(service = %key, %addr, error = %source,
                            "cannot listen on the loopback address too; serving the node address only");
                        skipped.push(*addr);
                    }
                    Err(source) => {
                        error = Some(ServiceProblem::Bind {
                            addr: *addr,
                            source,
                        });
                        break;
                    }
                }
            }
            if let Some(problem) = error {
                // All or nothing: half-bound Services would behave differently per address.
                drop(sockets);
                failures.push(ServiceFailure {
                    service: key.clone(),
                    node_port: entry.spec.node_port,
                    problem,
                });
                continue;
            }
            addrs.retain(|a| !skipped.contains(a));
            let stop = CancellationToken::new();
            let tasks = sockets
                .into_iter()
                .map(|socket| {
                    tokio::spawn(listener::accept_loop(
                        socket,
                        entry.shared.clone(),
                        self.env.clone(),
                        self.conns.clone(),
                        stop.clone(),
                    ))
                })
                .collect();
            tracing::info!(service = %key, node_port = entry.spec.node_port, ?addrs, "listening");
            entry.listener = Some(ListenerEntry {
                node_port: entry.spec.node_port,
                addrs,
                stop,
                tasks,
            });
        }
        failures
    }
}

/// Publishes the new backend set of one Service port. Backends that stay keep their identity
/// (and in-flight counts); removed ones start their drain deadline; returning ones are revived.
fn swap_backends(entry: &mut ServiceEntry, wanted: &[SocketAddr], drain_timeout: Duration) {
    let wanted: BTreeSet<SocketAddr> = wanted.iter().copied().collect();
    let current = entry.shared.backends.load_full();
    let unchanged = current.backends.len() == wanted.len()
        && current.backends.iter().all(|b| wanted.contains(&b.addr));
    if unchanged {
        return;
    }
    let now = tokio::time::Instant::now();
    let mut by_addr: HashMap<SocketAddr, Arc<Backend>> = current
        .backends
        .iter()
        .map(|b| (b.addr, b.clone()))
        .collect();
    let mut next = Vec::with_capacity(wanted.len());
    for addr in &wanted {
        let backend = match by_addr.remove(addr) {
            Some(b) => b,
            None => match entry.draining.remove(addr) {
                Some(b) => {
                    b.revive();
                    b
                }
                None => Arc::new(Backend::new(*addr)),
            },
        };
        next.push(backend);
    }
    for (addr, b) in by_addr {
        b.mark_removed(now + drain_timeout);
        entry.draining.insert(addr, b);
    }
    // Forget drained backends: nothing in flight, or past their deadline.
    entry
        .draining
        .retain(|_, b| b.in_flight() > 0 && b.removed_deadline().is_some_and(|d| d > now));
    entry
        .shared
        .backends
        .store(Arc::new(BackendSet { backends: next }));
}

/// 127.0.0.1: every node's proxy also listens on loopback so local pods reach Services there.
pub const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
