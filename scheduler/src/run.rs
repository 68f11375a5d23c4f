//! The scheduler shell: a leader-only loop around the pure core.
//!
//! It keeps reflector caches of Pods and Nodes. Any change marks the loop dirty; after a short
//! batching window it builds a [`Snapshot`], schedules every unbound pod with
//! [`schedule_batch`], and writes the results in ONE Batch request (one raft entry):
//! - a bind is an Update of the pod with `spec.nodeName` set, conditioned on the
//!   resourceVersion the decision was made on (a pod changed meanwhile is simply retried);
//! - an unschedulable pod gets `PodScheduled=False` (reason `Unschedulable`, the kubectl-style
//!   message) and a `FailedScheduling` Event, written only when the message changes.
//!   It is retried on the next change of any pod or node.
//!
//! A bound pod that still says `PodScheduled=False` from an earlier unschedulable pass gets
//! `PodScheduled=True` in the next batch (the store keeps status and spec writes apart, and one
//! raft entry cannot chain two CAS writes of the same object); other pods get it from their
//! agent's first status write. Binds the cache has not seen yet are remembered as "assumed" so the next
//! pass neither double-books their resources nor binds them again.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use berth_client::runtime::batch::{run_batched, Batching, Pass};
use berth_client::runtime::reflector::{self, Store};
use berth_client::runtime::watcher::{self, Backoff};
use berth_client::{BatchOp, Client, ClientError, DynObject};
use berth_proto::types::*;
use chrono::Utc;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::plan::{plan_pass_with_volumes, Write};
use crate::volumes::VolumeState;
use berth_proto::storage::{PersistentVolume, PersistentVolumeClaim};
use std::sync::Arc;

/// Tuning of the scheduling loop.
#[derive(Debug, Clone)]
pub struct Config {
    /// How long to gather changes before a pass (more pods per raft entry).
    pub batch_window: Duration,
    /// Most pods per pass (and per Batch request).
    pub max_batch: usize,
    /// How long a bind the cache has not reflected yet is trusted.
    pub assume_ttl: Duration,
    /// Re-run a pass this often even without changes (a safety net, not the trigger).
    pub resync: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            batch_window: Duration::from_millis(5),
            max_batch: 2_000,
            assume_ttl: Duration::from_secs(30),
            resync: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("scheduling batch request failed: {0}")]
    Batch(#[source] ClientError),
}

struct Assumed {
    node: String,
    /// The pod's resourceVersion after the bind; the cache is caught up once it reaches it.
    bound_rv: u64,
    pod: Pod,
    at: Instant,
}

/// The scheduler's working state between passes.
struct Scheduler {
    client: Client,
    config: Config,
    pods: Store<Pod>,
    nodes: Store<Node>,
    claims: Store<PersistentVolumeClaim>,
    volumes: Store<PersistentVolume>,
    assumed: HashMap<String, Assumed>,
    metrics: crate::metrics::SchedulerMetrics,
    /// Passes failed in a row (their retry delay doubles).
    failures: u32,
}

impl Scheduler {
    /// Forget assumptions the cache has caught up with (or that expired).
    fn prune_assumed(&mut self) {
        let pods = &self.pods;
        let ttl = self.config.assume_ttl;
        self.assumed.retain(|uid, a| {
            let key = berth_client::ObjectRef::new(&a.pod.metadata.namespace, &a.pod.metadata.name);
            match pods.get(&key) {
                Some(p) if p.metadata.uid == *uid => {
                    p.metadata.resource_version < a.bound_rv && a.at.elapsed() < ttl
                }
                _ => false,
            }
        });
    }

    /// One pass: reads the clock once, plans with [`plan_pass`], writes the plan in one
    /// Batch request and remembers the binds that succeeded. Returns how many writes it made.
    async fn pass(&mut self) -> Result<usize, Error> {
        self.prune_assumed();
        let now = Utc::now();
        let started = Instant::now();
        let assumed: HashMap<String, String> = self
            .assumed
            .iter()
            .map(|(uid, a)| (uid.clone(), a.node.clone()))
            .collect();
        let volumes = Arc::new(VolumeState::new(self.claims.state(), self.volumes.state()));
        let plan = plan_pass_with_volumes(
            &self.pods.state(),
            self.nodes.state(),
            volumes,
            &assumed,
            self.config.max_batch,
            now,
        );
        self.metrics.pending.set(plan.waiting as f64);
        self.metrics.unschedulable.set(plan.unschedulable as f64);
        let mut ops: Vec<BatchOp> = Vec::with_capacity(plan.writes.len());
        let mut kinds: Vec<(String, Option<(String, Pod)>)> = Vec::with_capacity(plan.writes.len());
        for w in plan.writes {
            match w {
                Write::Bind { pod, node } => {
                    ops.push(BatchOp::Update(DynObject::from_typed(pod.as_ref())));
                    kinds.push((pod.metadata.uid.clone(), Some((node, *pod))));
                }
                Write::Status(pod) => {
                    ops.push(BatchOp::UpdateStatus(DynObject::from_typed(pod.as_ref())));
                    kinds.push((pod.metadata.name.clone(), None));
                }
                Write::Event { pod, event } => {
                    tracing::info!(pod = %pod, namespace = %event.involved_object.namespace, reason = %event.message, "pod unschedulable");
                    ops.push(BatchOp::Create(DynObject::from_typed(event.as_ref())));
                    kinds.push((pod, None));
                }
            }
        }
        if ops.is_empty() {
            return Ok(0);
        }
        let n = ops.len();
        let write_started = Instant::now();
        let results = self.client.batch(ops).await.map_err(Error::Batch)?;
        tracing::debug!(writes = n, pending = plan.batch, took = ?write_started.elapsed(), "scheduling batch written");
        for (res, (id, bind)) in results.into_iter().zip(kinds) {
            match (res, bind) {
                (Ok(obj), Some((node, pod))) => {
                    self.metrics.scheduled.inc();
                    let bound_rv = obj.map(|o| o.meta().resource_version).unwrap_or(u64::MAX);
                    self.assumed.insert(
                        id,
                        Assumed {
                            node,
                            bound_rv,
                            pod,
                            at: Instant::now(),
                        },
                    );
                }
                (Err(e), Some(_)) => {
                    self.metrics.bind_conflicts.inc();
                    tracing::debug!(pod_uid = %id, error = %e, "bind lost a race; will retry")
                }
                (Err(ClientError::AlreadyExists(_)), None) => {}
                (Err(e), None) => tracing::debug!(pod = %id, error = %e, "status write failed"),
                (Ok(_), None) => {}
            }
        }
        self.metrics
            .pass_duration
            .observe_duration(started.elapsed());
        Ok(n)
    }
}

/// Run the scheduler until `shutdown`. Meant to run only on the Raft leader (see the
/// controllers crate's `run_while_leader`); every write is CAS, so a brief overlap on failover
/// cannot double-bind.
pub async fn run(client: Client, config: Config, shutdown: CancellationToken) {
    let (pods, pod_writer) = reflector::store::<Pod>();
    let (nodes, node_writer) = reflector::store::<Node>();
    let pod_events = reflector::reflector(
        pod_writer,
        watcher::watcher_with(
            watcher::ApiSource::<Pod>::new(client.clone(), watcher::Config::default()),
            Backoff::default(),
        ),
    )
    .boxed();
    let node_events = reflector::reflector(
        node_writer,
        watcher::watcher_with(
            watcher::ApiSource::<Node>::new(client.clone(), watcher::Config::default()),
            Backoff::default(),
        ),
    )
    .boxed();
    let (claims, claim_writer) = reflector::store::<PersistentVolumeClaim>();
    let (volumes, volume_writer) = reflector::store::<PersistentVolume>();
    // A claim or volume change can make a waiting pod schedulable (its claim was created, or
    // bound); those events only wake the loop.
    let volume_events = futures::stream::select(
        reflector::reflector(
            claim_writer,
            watcher::watcher_with(
                watcher::ApiSource::<PersistentVolumeClaim>::new(
                    client.clone(),
                    watcher::Config::default(),
                ),
                Backoff::default(),
            ),
        )
        .map(|ev| ev.err().map(|e| e.to_string()))
        .boxed(),
        reflector::reflector(
            volume_writer,
            watcher::watcher_with(
                watcher::ApiSource::<PersistentVolume>::new(
                    client.clone(),
                    watcher::Config::default(),
                ),
                Backoff::default(),
            ),
        )
        .map(|ev| ev.err().map(|e| e.to_string()))
        .boxed(),
    )
    .map(|err| {
        if let Some(e) = err {
            tracing::warn!(error = %e, "volume watch failed; retrying");
        }
    });
    let changes = futures::stream::select(
        futures::stream::select(
            pod_events.map(|ev| {
                if let Err(e) = ev {
                    tracing::warn!(error = %e, "pod watch failed; retrying");
                }
            }),
            node_events.map(|ev| {
                if let Err(e) = ev {
                    tracing::warn!(error = %e, "node watch failed; retrying");
                }
            }),
        ),
        volume_events,
    );
    let batching = Batching {
        window: config.batch_window,
        resync: Some(config.resync),
        pass_at_start: true,
    };
    let mut s = Scheduler {
        client,
        config,
        pods,
        nodes,
        claims,
        volumes,
        assumed: HashMap::new(),
        metrics: crate::metrics::SchedulerMetrics::global(),
        failures: 0,
    };
    run_batched(&mut s, changes, batching, shutdown).await;
}

impl Pass for Scheduler {
    fn ready(&self) -> bool {
        self.pods.is_ready()
            && self.nodes.is_ready()
            && self.claims.is_ready()
            && self.volumes.is_ready()
    }

    async fn run(&mut self) -> Option<Duration> {
        match self.pass().await {
            Ok(_) => {
                self.failures = 0;
                None
            }
            Err(e) => {
                self.failures = self.failures.saturating_add(1);
                let delay = Duration::from_millis(50u64 << self.failures.min(6));
                tracing::warn!(error = %e, ?delay, "scheduling pass failed; retrying");
                Some(delay)
            }
        }
    }
}
