//! The shells: each pure plan wired to the client runtime, plus [`run_controllers`] (all of
//! them in one task set) and [`run_while_leader`] (start/stop on Raft leadership changes).
//!
//! Every write is a compare-and-swap on resourceVersion (or a create of a deterministic name),
//! so a plan made from a stale cache fails harmlessly and is simply re-planned; this is also
//! why a leadership overlap during failover cannot double an action.

mod deployment;
mod endpoints;
mod gc;
mod namespace;
mod nodelifecycle;
mod replicaset;
mod volume;

use std::future::Future;
use std::time::Duration;

use berth_client::runtime::supervise::Supervisor;
use berth_client::{Action, Client, ClientError, ControllerConfig};
use berth_proto::Kind;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use crate::nodelifecycle::Config as NodeLifecycleConfig;

/// Settings of all controllers.
#[derive(Debug, Clone)]
pub struct Config {
    pub node_lifecycle: NodeLifecycleConfig,
    /// Reconciles running at once per controller.
    pub concurrency: usize,
    /// How long garbage collection gathers changes before a pass.
    pub gc_delay: Duration,
    /// Restarts each controller loop that panics or returns (with backoff, a metric and an
    /// Event when it has an event target).
    pub supervisor: Supervisor,
    /// The addresses (HOST:PORT) the cluster registry is reached by: images naming one of them
    /// (`127.0.0.1:5000/shop/web:1`) are cluster images, like images named without a
    /// registry, and a new ReplicaSet pins them to the digest their tag has at that moment.
    pub cluster_registry_hosts: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_lifecycle: NodeLifecycleConfig::default(),
            concurrency: 8,
            gc_delay: Duration::from_millis(200),
            supervisor: Supervisor::new(),
            cluster_registry_hosts: Vec::new(),
        }
    }
}

impl Config {
    fn controller(&self) -> ControllerConfig {
        ControllerConfig {
            concurrency: self.concurrency.max(1),
            ..Default::default()
        }
    }
}

/// A failed API call made by a controller: what it tried, on which object, and why.
#[derive(Debug, thiserror::Error)]
#[error("{action} {kind} {namespace}/{name}: {source}")]
pub struct Error {
    pub action: &'static str,
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    #[source]
    pub source: ClientError,
}

impl Error {
    fn new(
        action: &'static str,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> impl FnOnce(ClientError) -> Error {
        let (namespace, name) = (namespace.to_string(), name.to_string());
        move |source| Error {
            action,
            kind,
            namespace,
            name,
            source,
        }
    }
}

/// Conflicts are normal (a stale cache lost a CAS): retry soon. Anything else backs off.
fn error_policy<T, C>(_obj: std::sync::Arc<T>, e: &Error, _ctx: std::sync::Arc<C>) -> Action {
    match e.source {
        ClientError::Conflict { .. } | ClientError::AlreadyExists(_) | ClientError::NotFound(_) => {
            Action::requeue(Duration::from_millis(50))
        }
        _ => Action::requeue_with_backoff(),
    }
}

fn requeue(after: Option<Duration>) -> Action {
    after.map_or_else(Action::await_change, Action::requeue)
}

/// The names controller loops are supervised under (the `loop` label of
/// `berth_controller_restarts_total`, and the name in their `ControllerRestarted` Events).
pub const LOOP_NAMES: [&str; 7] = [
    "deployment",
    "replicaset",
    "endpoints",
    "node-lifecycle",
    "gc",
    "persistentvolume-binder",
    "namespace",
];

/// Run every controller (Deployment, ReplicaSet, Endpoints, node lifecycle, GC, Namespace) until
/// `shutdown`, each supervised by `config.supervisor`: a loop that panics or returns is
/// restarted on its own, and the others keep running. Meant to run only on the Raft leader
/// (see [`run_while_leader`]).
pub async fn run_controllers(client: Client, config: Config, shutdown: CancellationToken) {
    let mut set = JoinSet::new();
    for name in LOOP_NAMES {
        let (client, config, shutdown) = (client.clone(), config.clone(), shutdown.clone());
        set.spawn(async move {
            let supervisor = config.supervisor.clone();
            supervisor
                .run(name, shutdown, move |token| {
                    let (client, config) = (client.clone(), config.clone());
                    async move {
                        match name {
                            "deployment" => deployment::run(client, config, token).await,
                            "replicaset" => replicaset::run(client, config, token).await,
                            "endpoints" => endpoints::run(client, config, token).await,
                            "node-lifecycle" => nodelifecycle::run(client, config, token).await,
                            "persistentvolume-binder" => volume::run(client, config, token).await,
                            "namespace" => namespace::run(client, config, token).await,
                            _ => gc::run(client, config, token).await,
                        }
                    }
                })
                .await
        });
    }
    while let Some(r) = set.join_next().await {
        if let Err(e) = r {
            // Only the supervisor itself could fail here; the other loops keep running.
            tracing::error!(error = %e, "a controller supervisor failed");
        }
    }
}

/// Run `start(token)` while `leader` names `my_id`; cancel it (and wait for it) when
/// leadership moves away, start it again when it comes back; stop for good on `shutdown`.
pub async fn run_while_leader<F, Fut>(
    mut leader: watch::Receiver<Option<u64>>,
    my_id: u64,
    shutdown: CancellationToken,
    start: F,
) where
    F: Fn(CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut running: Option<(CancellationToken, tokio::task::JoinHandle<()>)> = None;
    loop {
        let is_leader = *leader.borrow_and_update() == Some(my_id);
        if is_leader && running.is_none() {
            tracing::info!(id = my_id, "became leader: starting control loops");
            let token = shutdown.child_token();
            running = Some((token.clone(), tokio::spawn(start(token))));
        } else if !is_leader {
            if let Some((token, handle)) = running.take() {
                tracing::info!(id = my_id, "lost leadership: stopping control loops");
                token.cancel();
                let _ = handle.await;
            }
        }
        let ended = async {
            match running.as_mut() {
                Some((_, handle)) => {
                    let _ = handle.await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = leader.changed() => if changed.is_err() { break },
            _ = ended => {
                // The loops are supervised one by one, so this is not expected; start them
                // again rather than leave a leader without a control plane.
                tracing::error!(id = my_id, "control loops ended while leading; starting them again");
                running = None;
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
    if let Some((token, handle)) = running.take() {
        token.cancel();
        let _ = handle.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn loops_run_only_while_this_member_leads() {
        let (tx, rx) = watch::channel(None);
        let shutdown = CancellationToken::new();
        let running = Arc::new(AtomicUsize::new(0));
        let starts = Arc::new(AtomicUsize::new(0));
        let (r, s) = (running.clone(), starts.clone());
        let task = tokio::spawn(run_while_leader(rx, 2, shutdown.clone(), move |tok| {
            let (r, s) = (r.clone(), s.clone());
            async move {
                s.fetch_add(1, Ordering::SeqCst);
                r.fetch_add(1, Ordering::SeqCst);
                tok.cancelled().await;
                r.fetch_sub(1, Ordering::SeqCst);
            }
        }));
        let wait = |want: usize, c: Arc<AtomicUsize>| async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while c.load(Ordering::SeqCst) != want {
                assert!(tokio::time::Instant::now() < deadline, "timed out");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tx.send_replace(Some(1));
        tx.send_replace(Some(2));
        wait(1, running.clone()).await;
        tx.send_replace(Some(3));
        wait(0, running.clone()).await;
        tx.send_replace(Some(2));
        wait(2, starts.clone()).await;
        wait(1, running.clone()).await;
        shutdown.cancel();
        task.await.expect("join");
        assert_eq!(running.load(Ordering::SeqCst), 0);
    }
}
