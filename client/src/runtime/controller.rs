//! [`Controller`]: watch a kind (and related kinds), queue keys, run `reconcile` per key.
//!
//! ```ignore
//! Controller::new(client.clone(), watcher::Config::default())  // Deployments
//!     .owns::<ReplicaSet>(watcher::Config::default())           // child -> owner key
//!     .watches::<Pod, _>(watcher::Config::default(), map_pod)   // anything -> keys
//!     .shutdown_on(token)
//!     .run(reconcile, error_policy, Arc::new(ctx))
//!     .await;
//! ```
//!
//! Guarantees: level-triggered (only keys are queued; `reconcile` gets the object from the
//! store at dispatch time, and a key whose object is gone is dropped); at most one reconcile
//! per key at a time; at most `concurrency` reconciles at once; nothing is dispatched until
//! every watched store has its first full list; on shutdown no new work starts and running
//! reconciles are awaited.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use berth_proto::Resource;
use futures::stream::{self, BoxStream, StreamExt};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::queue::{RateLimit, WorkQueue};
use super::reflector::{self, Store, Writer};
use super::watcher::{self, ApiSource, Backoff, Event, ListWatch};
use super::{Object, ObjectRef};
use crate::client::Client;

/// What to do with a key after a reconcile (or after an error, via the error policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Action {
    requeue: Requeue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Requeue {
    Never,
    After(Duration),
    Backoff,
}

impl Action {
    /// Reconcile again after `d` even if nothing changes (e.g. a timed rollout step).
    pub fn requeue(d: Duration) -> Action {
        Action {
            requeue: Requeue::After(d),
        }
    }

    /// Reconcile again only when a watched object changes.
    pub fn await_change() -> Action {
        Action {
            requeue: Requeue::Never,
        }
    }

    /// Reconcile again after this key's exponential backoff (for errors); reset by the
    /// key's next successful reconcile.
    pub fn requeue_with_backoff() -> Action {
        Action {
            requeue: Requeue::Backoff,
        }
    }

    /// The fixed requeue delay, if any.
    pub fn requeue_after(&self) -> Option<Duration> {
        match self.requeue {
            Requeue::After(d) => Some(d),
            _ => None,
        }
    }
}

/// Tuning for [`Controller::run`].
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Maximum reconciles running at once.
    pub concurrency: usize,
    /// Backoff for `Action::requeue_with_backoff`.
    pub rate_limit: RateLimit,
    /// Backoff for the watchers' reconnects.
    pub watch_backoff: Backoff,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            concurrency: 4,
            rate_limit: RateLimit::default(),
            watch_backoff: Backoff::default(),
        }
    }
}

type Trigger = BoxStream<'static, Vec<ObjectRef>>;
type ReadyCheck = Box<dyn Fn() -> bool + Send + Sync>;
/// Builds a trigger stream once the controller's watch backoff is known.
type TriggerFactory = Box<dyn FnOnce(Backoff) -> Trigger + Send>;

/// A control loop for kind `T`. See the module docs.
pub struct Controller<T: Object> {
    client: Client,
    store: Store<T>,
    triggers: Vec<TriggerFactory>,
    ready_checks: Vec<ReadyCheck>,
    config: ControllerConfig,
    shutdown: CancellationToken,
}

fn keys_of<T: Object>(ev: &Event<T>) -> Vec<ObjectRef> {
    ev.objects().map(Object::object_ref).collect()
}

/// Turn a source into a reflected trigger stream mapping each event to keys.
fn trigger_from<S, F>(src: S, writer: Writer<S::Object>, map: F) -> TriggerFactory
where
    S: ListWatch,
    F: Fn(&Event<S::Object>) -> Vec<ObjectRef> + Send + 'static,
{
    Box::new(move |backoff| {
        reflector::reflector(writer, watcher::watcher_with(src, backoff))
            // Every event yields (maybe no) keys: an empty batch still wakes the controller
            // loop, which re-checks store readiness then.
            .map(move |ev| match ev {
                Ok(ev) => map(&ev),
                Err(e) => {
                    tracing::warn!(error = %e, "watch failed; retrying");
                    Vec::new()
                }
            })
            .boxed()
    })
}

fn ready_check<O: Object>(store: Store<O>) -> ReadyCheck {
    Box::new(move || store.is_ready())
}

impl<T: Resource + Object> Controller<T> {
    /// A controller for kind `T`, watched through `client`.
    pub fn new(client: Client, config: watcher::Config) -> Self {
        let src = ApiSource::<T>::new(client.clone(), config);
        Controller::for_source(client, src)
    }

    /// Reconcile the owner (of kind `T`) of every `C` that changes: children name their
    /// owner in `metadata.ownerReferences`.
    pub fn owns<C: Resource + Object>(self, config: watcher::Config) -> Self {
        let src = ApiSource::<C>::new(self.client.clone(), config);
        self.owns_source(src, Writer::new())
    }

    /// Like [`Controller::owns`], keeping the children in a store the caller reads (make it
    /// with `reflector::store()`).
    pub fn owns_with_store<C: Resource + Object>(
        self,
        config: watcher::Config,
        writer: Writer<C>,
    ) -> Self {
        let src = ApiSource::<C>::new(self.client.clone(), config);
        self.owns_source(src, writer)
    }

    /// [`Controller::owns`] over any source (tests use fakes).
    pub fn owns_source<S>(self, src: S, writer: Writer<S::Object>) -> Self
    where
        S: ListWatch,
        S::Object: Resource,
    {
        let kind = T::KIND.as_str();
        let map = move |ev: &Event<S::Object>| {
            ev.objects()
                .flat_map(|child| {
                    let ns = child.meta().namespace.clone();
                    child
                        .meta()
                        .owner_references
                        .iter()
                        .filter(|o| o.kind == kind)
                        .map(move |o| ObjectRef::new(&ns, &o.name))
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        self.add_trigger(src, writer, map)
    }

    /// Reconcile the keys `mapper` returns for every `O` that changes (e.g. Services
    /// selecting a Pod).
    pub fn watches<O, F>(self, config: watcher::Config, mapper: F) -> Self
    where
        O: Resource + Object,
        F: Fn(&O) -> Vec<ObjectRef> + Send + Sync + 'static,
    {
        let src = ApiSource::<O>::new(self.client.clone(), config);
        self.watches_source(src, Writer::new(), mapper)
    }

    /// Like [`Controller::watches`], keeping the objects in a store the caller reads.
    pub fn watches_with_store<O, F>(
        self,
        config: watcher::Config,
        writer: Writer<O>,
        mapper: F,
    ) -> Self
    where
        O: Resource + Object,
        F: Fn(&O) -> Vec<ObjectRef> + Send + Sync + 'static,
    {
        let src = ApiSource::<O>::new(self.client.clone(), config);
        self.watches_source(src, writer, mapper)
    }
}

impl<T: Object> Controller<T> {
    /// A controller whose main kind comes from `src` (tests use fakes; `client` is only
    /// used by `owns`/`watches`).
    pub fn for_source<S: ListWatch<Object = T>>(client: Client, src: S) -> Self {
        let (store, writer) = reflector::store::<T>();
        let mut c = Controller {
            client,
            store: store.clone(),
            triggers: Vec::new(),
            ready_checks: Vec::new(),
            config: ControllerConfig::default(),
            shutdown: CancellationToken::new(),
        };
        c.triggers.push(trigger_from(src, writer, keys_of::<T>));
        c.ready_checks.push(ready_check(store));
        c
    }

    /// [`Controller::watches`] over any source.
    pub fn watches_source<S, F>(self, src: S, writer: Writer<S::Object>, mapper: F) -> Self
    where
        S: ListWatch,
        F: Fn(&S::Object) -> Vec<ObjectRef> + Send + Sync + 'static,
    {
        let map = move |ev: &Event<S::Object>| ev.objects().flat_map(&mapper).collect();
        self.add_trigger(src, writer, map)
    }

    fn add_trigger<S, F>(mut self, src: S, writer: Writer<S::Object>, map: F) -> Self
    where
        S: ListWatch,
        F: Fn(&Event<S::Object>) -> Vec<ObjectRef> + Send + 'static,
    {
        self.ready_checks.push(ready_check(writer.as_reader()));
        self.triggers.push(trigger_from(src, writer, map));
        self
    }

    pub fn with_config(mut self, config: ControllerConfig) -> Self {
        self.config = config;
        self
    }

    /// Stop when `token` is cancelled (running reconciles finish first).
    pub fn shutdown_on(mut self, token: CancellationToken) -> Self {
        self.shutdown = token;
        self
    }

    /// The cache of the main kind (ready once its first list arrived).
    pub fn store(&self) -> Store<T> {
        self.store.clone()
    }

    /// Run until shutdown. `reconcile(obj, ctx)` brings the world in line with `obj`;
    /// on `Err(e)`, `error_policy(obj, &e, ctx)` decides when to retry.
    pub async fn run<R, RFut, E, P, Ctx>(self, reconcile: R, error_policy: P, ctx: Arc<Ctx>)
    where
        R: Fn(Arc<T>, Arc<Ctx>) -> RFut,
        RFut: Future<Output = Result<Action, E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
        P: Fn(Arc<T>, &E, Arc<Ctx>) -> Action,
        Ctx: Send + Sync + 'static,
    {
        let Controller {
            store,
            triggers,
            ready_checks,
            config,
            shutdown,
            ..
        } = self;
        let backoff = config.watch_backoff.clone();
        let mut triggers = stream::select_all(triggers.into_iter().map(|f| f(backoff.clone())));
        let queue: WorkQueue<ObjectRef> = WorkQueue::new(config.rate_limit);
        let concurrency = config.concurrency.max(1);
        let mut running: JoinSet<(ObjectRef, Arc<T>, Result<Action, E>)> = JoinSet::new();
        // Which key each task works on, so a panicked task still releases its key.
        let mut task_keys: HashMap<tokio::task::Id, ObjectRef> = HashMap::new();
        let mut ready = false;
        let metrics =
            super::metrics::ControllerMetrics::global(super::metrics::controller_name::<T>());

        loop {
            if !ready {
                ready = ready_checks.iter().all(|f| f());
            }
            metrics.queue_depth.set(queue.len() as f64);
            let can_dispatch = ready && running.len() < concurrency;
            tokio::select! {
                // Dispatch before taking more trigger events: a busy watch must not starve
                // reconciles (dispatch is bounded by `concurrency`, so triggers still run).
                biased;
                _ = shutdown.cancelled() => break,
                Some(joined) = running.join_next_with_id(), if !running.is_empty() => {
                    match joined {
                        Ok((id, (key, obj, result))) => {
                            task_keys.remove(&id);
                            let action = match result {
                                Ok(action) => {
                                    metrics.ok.inc();
                                    queue.forget(&key);
                                    action
                                }
                                Err(e) => {
                                    metrics.errors.inc();
                                    tracing::warn!(object = %key, error = %e, "reconcile failed");
                                    error_policy(obj, &e, ctx.clone())
                                }
                            };
                            schedule(&queue, &key, action);
                            queue.done(&key);
                        }
                        Err(join_err) => {
                            if let Some(key) = task_keys.remove(&join_err.id()) {
                                metrics.panics.inc();
                                tracing::error!(object = %key, error = %join_err, "reconcile panicked");
                                queue.add_rate_limited(key.clone());
                                queue.done(&key);
                            }
                        }
                    }
                }
                Some(key) = queue.next(), if can_dispatch => {
                    match store.get(&key) {
                        // Deleted since it was queued: nothing to reconcile (children are
                        // garbage-collected through their owner references).
                        None => {
                            queue.forget(&key);
                            queue.done(&key);
                        }
                        Some(obj) => {
                            let fut = reconcile(obj.clone(), ctx.clone());
                            let k = key.clone();
                            let duration = metrics.duration.clone();
                            let handle = running.spawn(async move {
                                let started = std::time::Instant::now();
                                let res = fut.await;
                                duration.observe_duration(started.elapsed());
                                (k, obj, res)
                            });
                            task_keys.insert(handle.id(), key);
                        }
                    }
                }
                Some(keys) = triggers.next() => {
                    for k in keys {
                        queue.add(k);
                    }
                }
            }
        }
        queue.shutdown();
        while running.join_next().await.is_some() {}
    }
}

fn schedule(queue: &WorkQueue<ObjectRef>, key: &ObjectRef, action: Action) {
    match action.requeue {
        Requeue::Never => {}
        Requeue::After(d) => queue.add_after(key.clone(), d),
        Requeue::Backoff => queue.add_rate_limited(key.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{Change, WatchEvent};
    use crate::runtime::watcher::fake::*;
    use crate::ClientError;
    use berth_proto::types::{ObjectMeta, OwnerReference, Pod, ReplicaSet};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    fn rs(name: &str, rv: u64) -> ReplicaSet {
        ReplicaSet {
            metadata: meta(name, rv),
            ..Default::default()
        }
    }

    fn pod_of(name: &str, owner: &str, rv: u64) -> Pod {
        Pod {
            metadata: ObjectMeta {
                owner_references: vec![OwnerReference {
                    api_version: "apps/v1".into(),
                    kind: "ReplicaSet".into(),
                    name: owner.into(),
                    uid: "u".into(),
                    controller: true,
                }],
                ..meta(name, rv)
            },
            ..Default::default()
        }
    }

    fn ev<T>(rev: u64, change: Change<T>) -> Result<WatchEvent<T>, ClientError> {
        Ok(WatchEvent {
            revision: rev,
            change,
        })
    }

    #[derive(Default)]
    struct Ctx {
        /// (name, resourceVersion) per reconcile, in start order.
        seen: Mutex<Vec<(String, u64)>>,
        running: AtomicUsize,
        max_running: AtomicUsize,
        fail_first: AtomicUsize,
    }

    #[derive(Debug)]
    struct Boom;
    impl std::fmt::Display for Boom {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("boom")
        }
    }

    async fn reconcile(obj: Arc<ReplicaSet>, ctx: Arc<Ctx>) -> Result<Action, Boom> {
        ctx.seen
            .lock()
            .expect("lock")
            .push((obj.metadata.name.clone(), obj.metadata.resource_version));
        let now = ctx.running.fetch_add(1, Ordering::SeqCst) + 1;
        ctx.max_running.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(1)).await;
        ctx.running.fetch_sub(1, Ordering::SeqCst);
        if ctx.fail_first.load(Ordering::SeqCst) > 0 {
            ctx.fail_first.fetch_sub(1, Ordering::SeqCst);
            return Err(Boom);
        }
        Ok(Action::await_change())
    }

    fn dead_client() -> Client {
        Client::connect_to("127.0.0.1:9").expect("client")
    }

    async fn wait_for(cond: impl Fn() -> bool) {
        tokio::time::timeout(Duration::from_secs(120), async {
            while !cond() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("condition within deadline");
    }

    #[tokio::test(start_paused = true)]
    async fn burst_of_changes_collapses_and_the_last_reconcile_sees_the_latest_version() {
        let main = FakeSource::new(
            vec![ListReply::Ok(vec![rs("a", 1), rs("b", 2)], 2)],
            vec![WatchReply::OkThenHang(vec![
                ev(3, Change::Modified(rs("a", 3))),
                ev(4, Change::Modified(rs("a", 4))),
                ev(5, Change::Modified(rs("a", 5))),
            ])],
        );
        let ctx = Arc::new(Ctx::default());
        let token = CancellationToken::new();
        let ctl = Controller::for_source(dead_client(), main).shutdown_on(token.clone());
        let task = tokio::spawn(ctl.run(reconcile, |_, _, _| Action::await_change(), ctx.clone()));
        wait_for(|| {
            ctx.seen
                .lock()
                .expect("lock")
                .iter()
                .any(|(_, rv)| *rv == 5)
        })
        .await;
        // Let anything else that was (wrongly) queued run.
        tokio::time::sleep(Duration::from_secs(10)).await;
        token.cancel();
        task.await.expect("join");
        let seen = ctx.seen.lock().expect("lock").clone();
        let a_runs: Vec<u64> = seen.iter().filter(|(n, _)| n == "a").map(|x| x.1).collect();
        // Three modifications collapse: "a" runs at most once more after its first
        // reconcile (never once per event), and its last run sees the latest version.
        assert!(a_runs.len() <= 2, "{seen:?}");
        assert_eq!(a_runs.last(), Some(&5), "{seen:?}");
        assert_eq!(seen.iter().filter(|(n, _)| n == "b").count(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn owned_child_change_reconciles_owner_once_at_a_time_within_concurrency() {
        let main = FakeSource::new(
            vec![ListReply::Ok(
                vec![rs("a", 1), rs("b", 1), rs("c", 1), rs("d", 1)],
                1,
            )],
            vec![WatchReply::OkThenHang(vec![])],
        );
        let pods = FakeSource::new(
            vec![ListReply::Ok(vec![], 1)],
            vec![WatchReply::OkThenHang(vec![
                ev(2, Change::Added(pod_of("a-1", "a", 2))),
                ev(3, Change::Added(pod_of("a-2", "a", 3))),
            ])],
        );
        let ctx = Arc::new(Ctx::default());
        let token = CancellationToken::new();
        let (pod_store, pod_writer) = reflector::store::<Pod>();
        let ctl = Controller::for_source(dead_client(), main)
            .owns_source(pods, pod_writer)
            .with_config(ControllerConfig {
                concurrency: 2,
                ..ControllerConfig::default()
            })
            .shutdown_on(token.clone());
        let task = tokio::spawn(ctl.run(reconcile, |_, _, _| Action::await_change(), ctx.clone()));
        wait_for(|| ctx.seen.lock().expect("lock").len() >= 4 && pod_store.len() == 2).await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        token.cancel();
        task.await.expect("join");
        let seen = ctx.seen.lock().expect("lock").clone();
        assert!(ctx.max_running.load(Ordering::SeqCst) <= 2);
        // Each of b, c, d once; "a" at least once and at most twice (its pod events may land
        // while it is queued or while it runs, but never concurrently with itself).
        for n in ["b", "c", "d"] {
            assert_eq!(seen.iter().filter(|(x, _)| x == n).count(), 1, "{seen:?}");
        }
        let a = seen.iter().filter(|(x, _)| x == "a").count();
        assert!((1..=2).contains(&a), "{seen:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn failed_reconcile_is_retried_per_error_policy() {
        let main = FakeSource::new(
            vec![ListReply::Ok(vec![rs("a", 1)], 1)],
            vec![WatchReply::OkThenHang(vec![])],
        );
        let ctx = Arc::new(Ctx {
            fail_first: AtomicUsize::new(2),
            ..Ctx::default()
        });
        let token = CancellationToken::new();
        let ctl = Controller::for_source(dead_client(), main).shutdown_on(token.clone());
        let start = tokio::time::Instant::now();
        let task = tokio::spawn(ctl.run(
            reconcile,
            |_, _: &Boom, _| Action::requeue(Duration::from_secs(30)),
            ctx.clone(),
        ));
        wait_for(|| ctx.seen.lock().expect("lock").len() == 3).await;
        // Two failures, each followed by the policy's 30 s requeue (plus 1 s of work).
        assert!(
            start.elapsed() >= Duration::from_secs(62),
            "{:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_secs(100)).await;
        token.cancel();
        task.await.expect("join");
        // After the success with await_change, no more runs.
        assert_eq!(ctx.seen.lock().expect("lock").len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_dispatched_before_every_store_is_ready() {
        let main = FakeSource::new(
            vec![ListReply::Ok(vec![rs("a", 1)], 1)],
            vec![WatchReply::OkThenHang(vec![])],
        );
        // The pods list fails twice before succeeding.
        let down = || ClientError::Unavailable {
            tried: "x: down".into(),
        };
        let pods = FakeSource::<Pod>::new(
            vec![
                ListReply::Err(down()),
                ListReply::Err(down()),
                ListReply::Ok(vec![], 1),
            ],
            vec![WatchReply::OkThenHang(vec![])],
        );
        let pods_script = pods.script.clone();
        let ctx = Arc::new(Ctx::default());
        let token = CancellationToken::new();
        let ctl = Controller::for_source(dead_client(), main)
            .owns_source(pods, Writer::new())
            .shutdown_on(token.clone());
        let task = tokio::spawn(ctl.run(reconcile, |_, _, _| Action::await_change(), ctx.clone()));
        wait_for(|| !ctx.seen.lock().expect("lock").is_empty()).await;
        // The reconcile only started after the third pods list, i.e. the store was ready.
        assert_eq!(pods_script.lock().expect("lock").list_calls, 3);
        token.cancel();
        task.await.expect("join");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_waits_for_running_reconcile() {
        let main = FakeSource::new(
            vec![ListReply::Ok(vec![rs("a", 1)], 1)],
            vec![WatchReply::OkThenHang(vec![])],
        );
        let ctx = Arc::new(Ctx::default());
        let token = CancellationToken::new();
        let ctl = Controller::for_source(dead_client(), main).shutdown_on(token.clone());
        let task = tokio::spawn(ctl.run(reconcile, |_, _, _| Action::await_change(), ctx.clone()));
        wait_for(|| ctx.running.load(Ordering::SeqCst) == 1).await;
        token.cancel();
        task.await.expect("join");
        assert_eq!(ctx.running.load(Ordering::SeqCst), 0);
    }
}
