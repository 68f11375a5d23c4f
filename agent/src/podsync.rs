//! The pod sync reconciler: makes the runtime match the pods bound to this node.
//!
//! Level-triggered (STYLE.md): every round re-reads *desired* (the [`PodCache`]: pods with
//! `spec.nodeName == this node`) and *observed* (`Runtime::list`, every Berth-labelled
//! workload), then
//! 1. [`record_exits`] folds newly seen exits into the crash-loop memory (pure),
//! 2. [`plan`] computes the actions (pure): start, restart after backoff, kill on
//!    liveness/startup failure, stop orphans gracefully, remove old attempts,
//! 3. the shell ([`PodSync`]) executes them, keeps the prober in step, and writes each pod's
//!    status ([`pod_status`], pure) and the events [`backoff_events`] (pure) decides.
//!
//! The shell only carries out effects: which workloads are being stopped is in the [`Memo`]
//! (`stopping`, read by [`plan`]); the stop tasks report back over a channel that the shell
//! folds in ([`Memo::stop_finished`]) before it plans.
//!
//! Init containers ([`init_progress`], pure): plain ones run one at a time, in order, each to
//! exit 0; a native sidecar (`restartPolicy: Always`) lets the next one start once it has
//! started (startupProbe passed, postStart finished) and is restarted whenever it exits; the
//! app containers start once all that is done. Init is over for good as soon as any app
//! container exists in the runtime, so a restarted agent never re-runs it. Sidecars of a pod
//! being torn down stop after its app containers, in reverse order. Lifecycle hooks run in
//! tasks of the shell: postStart after a start (a failure kills the container), preStop
//! inside the stop task, before the stop signal, within the grace period.
//!
//! Nothing local is trusted across an agent restart: restart counts are the attempt numbers in
//! the workloads' labels, host ports come from labels and pod status, backoff is re-derived
//! from the last exit time. Until the pod cache has had its first full list, no workload is
//! treated as an orphan, so an agent restarted while the API is down kills nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use berth_proto::types::{
    Condition, Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, Pod, PodStatus, Time,
};
use berth_proto::PodPhase;
use futures::StreamExt;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{ApiError, NodeApi, PodCache};
use crate::backoff::{BackoffPolicy, CrashLoop};
use crate::events::{EventSink, PodRef};
use crate::hostports::{self, HostPorts};
use crate::prober::{ProbeView, Probed, Prober};
use crate::pull::{self, Puller};
use crate::runtime::{ContainerInfo, ContainerSpec, ExitInfo, RunState, Runtime, RuntimeError};

/// Containers started per round, all at once.
const START_WAVE: usize = 8;

/// Default terminationGracePeriodSeconds.
pub const DEFAULT_GRACE_SECONDS: u64 = 30;

/// One container of one pod.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub pod_uid: String,
    pub container: String,
}

impl Key {
    pub fn new(pod_uid: &str, container: &str) -> Key {
        Key {
            pod_uid: pod_uid.to_string(),
            container: container.to_string(),
        }
    }
}

/// Why a container could not be created/started, and when to try again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateError {
    pub reason: String,
    pub message: String,
    pub retry_at: Instant,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Crash {
    pub backoff: CrashLoop,
    /// Runtime id of the last exit already counted.
    pub seen_exit: Option<String>,
}

/// What the agent remembers between rounds (all of it re-derivable after a restart).
#[derive(Debug, Clone, Default)]
pub struct Memo {
    pub crash: BTreeMap<Key, Crash>,
    pub create_errors: BTreeMap<Key, CreateError>,
    /// Attempt for which a BackOff event was already emitted.
    pub backoff_events: BTreeMap<Key, u32>,
    /// Runtime ids of workloads whose stop (probe kill or orphan stop) is in flight: [`plan`]
    /// leaves them alone until the stop finished.
    pub stopping: BTreeSet<String>,
    /// Containers waiting for an image pull: the pull they wait on.
    pub pulling: BTreeMap<Key, Pulling>,
    /// Containers whose last pull failed (ErrImagePull, then ImagePullBackOff).
    pub pull_failures: BTreeMap<Key, PullFailures>,
    /// Consecutive image trust refusals (ErrImageNotTrusted) per container: the re-check waits
    /// the crash-loop backoff of this count.
    pub trust_failures: BTreeMap<Key, u32>,
    /// Runtime ids of containers whose postStart hook is running: not started yet.
    pub post_starting: BTreeSet<String>,
    /// Uids of terminating pods still being drained out of the Service proxies (see
    /// [`crate::drain`]): their containers are not stopped yet.
    pub draining: BTreeSet<String>,
}

/// The waiting reason of a container whose image is refused by image trust
/// (require-signed-images): not signed by a trusted key, or not verifiable.
pub const ERR_IMAGE_NOT_TRUSTED: &str = "ErrImageNotTrusted";

/// A container waiting for a pull of its image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulling {
    pub image: String,
    pub attempt: u32,
    /// The [`Puller`] pull id.
    pub id: u64,
    /// The fingerprint of the pull's credentials (the pod's `imagePullSecrets`).
    pub auth: u64,
}

/// Consecutive failed pulls of one container's image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullFailures {
    pub count: u32,
    pub failed_at: Instant,
    /// The image and the last failure's reason, for the ImagePullBackOff message.
    pub image: String,
    pub why: String,
    /// ErrImagePull has turned into ImagePullBackOff.
    pub backing_off: bool,
}

/// How long ErrImagePull shows before it becomes ImagePullBackOff.
const ERR_IMAGE_PULL_SHOWN: Duration = Duration::from_secs(1);

/// The pull policy of a container: `imagePullPolicy`, else Kubernetes' default for its image
/// (Always for `:latest` or no tag, IfNotPresent otherwise).
pub fn pull_policy(c: &Container) -> &str {
    match c.image_pull_policy.as_deref() {
        Some(p) if !p.is_empty() => p,
        _ => berth_proto::image::ImageRef::parse(&c.image)
            .map(|r| r.default_pull_policy())
            .unwrap_or("IfNotPresent"),
    }
}

impl Memo {
    /// A Kill or StopOrphan of `id` was handed to a stop task.
    pub fn stop_started(&mut self, id: &str) {
        self.stopping.insert(id.to_string());
    }

    /// The stop task of `id` finished (stopped, or gave up: the next round re-plans).
    pub fn stop_finished(&mut self, id: &str) {
        self.stopping.remove(id);
    }

    /// Remember the BackOff events about to be emitted, so each attempt gets one.
    pub fn backoff_emitted(&mut self, events: &[BackOffEvent]) {
        for e in events {
            self.backoff_events.insert(e.key.clone(), e.attempt);
        }
    }
}

/// A container waiting out its crash-loop backoff whose attempt has had no BackOff event yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackOffEvent {
    pub key: Key,
    pub attempt: u32,
    pub message: String,
}

/// An effect for the shell to carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create and start `attempt` of a container.
    Start {
        pod_uid: String,
        container: String,
        attempt: u32,
    },
    /// Stop a running container of a desired pod because a probe failed (it is restarted later).
    Kill {
        id: String,
        key: Key,
        grace: Duration,
        message: String,
    },
    /// Stop and remove a workload whose pod is gone.
    StopOrphan { id: String, grace: Duration },
    /// Remove a stopped workload (old attempts, stopped orphans, never-started leftovers).
    Remove { id: String },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// Run again no later than this (a backoff or retry expiring).
    pub requeue: Option<Duration>,
}

impl Plan {
    fn requeue_in(&mut self, d: Duration) {
        self.requeue = Some(self.requeue.map_or(d, |r| r.min(d)));
    }
}

/// The uids of pods whose node state (host ports, sandboxes, volumes) must stay: wanted here,
/// or with a container still in the runtime.
fn live_pods(desired: &[Pod], observed: &[ContainerInfo]) -> BTreeSet<String> {
    desired
        .iter()
        .filter(|p| is_desired(p))
        .map(|p| p.metadata.uid.clone())
        .chain(observed.iter().map(|c| c.pod_uid.clone()))
        .collect()
}

/// Is a pod still wanted on this node?
pub fn is_desired(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
}

fn restart_policy(p: &Pod) -> &str {
    p.spec.restart_policy.as_deref().unwrap_or("Always")
}

fn should_restart(p: &Pod, e: &ExitInfo) -> bool {
    match restart_policy(p) {
        "Never" => false,
        "OnFailure" => e.exit_code != 0,
        _ => true,
    }
}

fn grace_of(p: &Pod) -> Duration {
    Duration::from_secs(
        p.spec
            .termination_grace_period_seconds
            .map(|g| g.max(0) as u64)
            .unwrap_or(DEFAULT_GRACE_SECONDS),
    )
}

/// Which list of the pod a container is in, and so how its exits are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `spec.containers`: restarted per the pod's restartPolicy.
    App,
    /// A plain init container: runs to completion; a failure is restarted unless the pod's
    /// restartPolicy is Never.
    Init,
    /// An init container with `restartPolicy: Always`: restarted whenever it exits.
    Sidecar,
}

impl Role {
    pub fn of(c: &Container, init: bool) -> Role {
        match (init, c.is_sidecar()) {
            (false, _) => Role::App,
            (true, true) => Role::Sidecar,
            (true, false) => Role::Init,
        }
    }
}

fn restarts(pod: &Pod, role: Role, e: &ExitInfo) -> bool {
    match role {
        Role::App => should_restart(pod, e),
        Role::Init => e.exit_code != 0 && restart_policy(pod) != "Never",
        Role::Sidecar => true,
    }
}

/// Where a pod's init sequence stands (Kubernetes' computeInitContainerActions, reduced).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitProgress {
    /// Every plain init container completed and every sidecar started (or the app
    /// containers already exist: init is never re-run, also not by a restarted agent).
    Done,
    /// `initContainers[i]` is the first one not yet completed (or sidecar not yet started).
    At(usize),
    /// `initContainers[i]` failed and the pod's restartPolicy is Never: the pod failed.
    Failed(usize),
}

/// The init progress of a pod, from the runtime's containers (pure).
pub fn init_progress(
    pod: &Pod,
    attempts: &BTreeMap<Key, Vec<&ContainerInfo>>,
    view: &dyn Fn(&str, &Container) -> ProbeView,
    post_starting: &BTreeSet<String>,
) -> InitProgress {
    let uid = pod.metadata.uid.as_str();
    if pod
        .spec
        .containers
        .iter()
        .any(|c| attempts.contains_key(&Key::new(uid, &c.name)))
    {
        return InitProgress::Done;
    }
    for (i, c) in pod.spec.init_containers.iter().enumerate() {
        let latest = attempts
            .get(&Key::new(uid, &c.name))
            .and_then(|v| v.first());
        match (Role::of(c, true), latest.map(|l| (&l.id, &l.state))) {
            (Role::Sidecar, Some((id, RunState::Running { .. })))
                if view(id, c).started && !post_starting.contains(id.as_str()) => {}
            (Role::Init, Some((_, RunState::Exited(e)))) if e.exit_code == 0 => {}
            (Role::Init, Some((_, RunState::Exited(e)))) if !restarts(pod, Role::Init, e) => {
                return InitProgress::Failed(i)
            }
            _ => return InitProgress::At(i),
        }
    }
    InitProgress::Done
}

/// Have all app containers of a pod terminated for good (its phase is Succeeded or Failed)?
fn app_containers_done(pod: &Pod, attempts: &BTreeMap<Key, Vec<&ContainerInfo>>) -> bool {
    !pod.spec.containers.is_empty()
        && pod.spec.containers.iter().all(|c| {
            attempts
                .get(&Key::new(&pod.metadata.uid, &c.name))
                .and_then(|v| v.first())
                .is_some_and(|l| match &l.state {
                    RunState::Exited(e) => !restarts(pod, Role::App, e),
                    _ => false,
                })
        })
}

/// A container of the pod by name, app or init.
pub fn find_container<'a>(pod: &'a Pod, name: &str) -> Option<&'a Container> {
    pod.spec
        .containers
        .iter()
        .chain(pod.spec.init_containers.iter())
        .find(|c| c.name == name)
}

/// Attempts of each container, newest first.
pub fn by_key(observed: &[ContainerInfo]) -> BTreeMap<Key, Vec<&ContainerInfo>> {
    let mut m: BTreeMap<Key, Vec<&ContainerInfo>> = BTreeMap::new();
    for c in observed {
        m.entry(Key::new(&c.pod_uid, &c.container_name))
            .or_default()
            .push(c);
    }
    for v in m.values_mut() {
        v.sort_by_key(|c| std::cmp::Reverse(c.attempt));
    }
    m
}

/// Count exits not seen before into each container's crash loop.
pub fn record_exits(
    memo: &mut Memo,
    observed: &[ContainerInfo],
    policy: &BackoffPolicy,
    now: Instant,
    wall: Time,
) {
    for (key, attempts) in by_key(observed) {
        let Some(latest) = attempts.first() else {
            continue;
        };
        let RunState::Exited(e) = &latest.state else {
            continue;
        };
        let entry = memo.crash.entry(key).or_insert_with(|| Crash {
            // A fresh agent: earlier attempts all crashed as far as we can tell.
            backoff: CrashLoop {
                crashes: latest.attempt,
                not_before: None,
            },
            seen_exit: None,
        });
        if entry.seen_exit.as_deref() == Some(latest.id.as_str()) {
            continue;
        }
        let ran_for = match (e.started_at, e.finished_at) {
            (Some(s), Some(f)) => (f - s).to_std().unwrap_or_default(),
            _ => Duration::ZERO,
        };
        let since_exit = e
            .finished_at
            .and_then(|f| (wall - f).to_std().ok())
            .unwrap_or_default();
        let exit_at = now.checked_sub(since_exit).unwrap_or(now);
        entry.backoff.record_exit(policy, ran_for, exit_at);
        entry.seen_exit = Some(latest.id.clone());
    }
}

/// The pure planning step.
pub fn plan(
    desired: &[Pod],
    observed: &[ContainerInfo],
    memo: &Memo,
    view: &dyn Fn(&str, &Container) -> ProbeView,
    now: Instant,
) -> Plan {
    let stopping = &memo.stopping;
    let mut out = Plan::default();
    let attempts = by_key(observed);
    let wanted: BTreeSet<&str> = desired
        .iter()
        .filter(|p| is_desired(p))
        .map(|p| p.metadata.uid.as_str())
        .collect();
    let mut handled: BTreeSet<&Key> = BTreeSet::new();

    for pod in desired.iter().filter(|p| is_desired(p)) {
        let uid = pod.metadata.uid.as_str();
        let progress = init_progress(pod, &attempts, view, &memo.post_starting);
        // The pod is over (init failed under Never, or every app container ended for good):
        // sidecars are stopped and not restarted.
        let over = matches!(progress, InitProgress::Failed(_))
            || (progress == InitProgress::Done && app_containers_done(pod, &attempts));
        let all = pod
            .spec
            .init_containers
            .iter()
            .enumerate()
            .map(|(i, c)| (Some(i), c))
            .chain(pod.spec.containers.iter().map(|c| (None, c)));
        for (init_index, c) in all {
            let role = Role::of(c, init_index.is_some());
            let may_start = match (role, progress, init_index) {
                (Role::App, p, _) => p == InitProgress::Done,
                (Role::Sidecar, _, _) if over => false,
                (Role::Sidecar, InitProgress::Done, _) => true,
                (_, InitProgress::At(at), Some(i)) => i <= at,
                _ => false,
            };
            let key = Key::new(uid, &c.name);
            let list: &[&ContainerInfo] = attempts.get(&key).map(|v| v.as_slice()).unwrap_or(&[]);
            if let Some((k, _)) = attempts.get_key_value(&key) {
                handled.insert(k);
            }
            // Keep the newest two attempts (the previous one serves `logs --previous`).
            for old in list.iter().skip(2) {
                if stopping.contains(&old.id) {
                    continue;
                }
                if old.state.is_running() {
                    out.actions.push(Action::StopOrphan {
                        id: old.id.clone(),
                        grace: grace_of(pod),
                    });
                } else {
                    out.actions.push(Action::Remove { id: old.id.clone() });
                }
            }
            let retry_wait = memo
                .create_errors
                .get(&key)
                .and_then(|e| e.retry_at.checked_duration_since(now))
                .filter(|d| !d.is_zero());
            let Some(latest) = list.first() else {
                if !may_start {
                    continue;
                }
                match retry_wait {
                    Some(d) => out.requeue_in(d),
                    None => out.actions.push(Action::Start {
                        pod_uid: uid.to_string(),
                        container: c.name.clone(),
                        attempt: 0,
                    }),
                }
                continue;
            };
            if stopping.contains(&latest.id) {
                continue;
            }
            match &latest.state {
                RunState::Running { .. } if role == Role::Sidecar && over => {
                    out.actions.push(Action::Kill {
                        id: latest.id.clone(),
                        key: key.clone(),
                        grace: grace_of(pod),
                        message: format!(
                            "Stopping sidecar container {}: the pod's containers have finished",
                            c.name
                        ),
                    });
                }
                RunState::Running { .. } if memo.post_starting.contains(&latest.id) => {}
                RunState::Running { .. } => {
                    let v = view(&latest.id, c);
                    let why = v
                        .startup_failed
                        .map(|m| {
                            format!(
                                "Container {} failed startup probe, will be restarted: {m}",
                                c.name
                            )
                        })
                        .or_else(|| {
                            v.liveness_failed.map(|m| {
                                format!(
                                    "Container {} failed liveness probe, will be restarted: {m}",
                                    c.name
                                )
                            })
                        });
                    if let Some(message) = why {
                        out.actions.push(Action::Kill {
                            id: latest.id.clone(),
                            key: key.clone(),
                            grace: grace_of(pod),
                            message,
                        });
                    }
                }
                RunState::Created => {
                    if !may_start {
                        continue;
                    }
                    // Created by an agent that died before starting it: create the same attempt
                    // again (runtimes replace a container of the same name).
                    match retry_wait {
                        Some(d) => out.requeue_in(d),
                        None => out.actions.push(Action::Start {
                            pod_uid: uid.to_string(),
                            container: c.name.clone(),
                            attempt: latest.attempt,
                        }),
                    }
                }
                RunState::Exited(e) => {
                    if !may_start || !restarts(pod, role, e) {
                        continue;
                    }
                    if let Some(d) = retry_wait {
                        out.requeue_in(d);
                        continue;
                    }
                    match memo.crash.get(&key).and_then(|c| c.backoff.remaining(now)) {
                        Some(d) => out.requeue_in(d),
                        None => out.actions.push(Action::Start {
                            pod_uid: uid.to_string(),
                            container: c.name.clone(),
                            attempt: latest.attempt + 1,
                        }),
                    }
                }
            }
        }
    }

    // Everything else is an orphan: its pod is gone, deleted, or no longer has that container.
    for (key, list) in &attempts {
        if handled.contains(key) && wanted.contains(key.pod_uid.as_str()) {
            continue;
        }
        if memo.draining.contains(&key.pod_uid) {
            out.requeue_in(Duration::from_millis(100));
            continue;
        }
        // Sidecars of a pod being torn down stop after its app containers, in reverse order
        // (Kubernetes 1.29+).
        if let Some(pod) = desired.iter().find(|p| p.metadata.uid == key.pod_uid) {
            let sidecars: Vec<&str> = pod
                .spec
                .init_containers
                .iter()
                .filter(|c| c.is_sidecar())
                .map(|c| c.name.as_str())
                .collect();
            if let Some(pos) = sidecars.iter().position(|n| *n == key.container) {
                let later: BTreeSet<&str> = pod
                    .spec
                    .containers
                    .iter()
                    .map(|c| c.name.as_str())
                    .chain(sidecars[pos + 1..].iter().copied())
                    .collect();
                let waits = attempts.iter().any(|(k, l)| {
                    k.pod_uid == key.pod_uid
                        && later.contains(k.container.as_str())
                        && l.iter().any(|c| c.state.is_running())
                });
                if waits && list.iter().any(|c| c.state.is_running()) {
                    out.requeue_in(Duration::from_millis(200));
                    continue;
                }
            }
        }
        for c in list {
            if stopping.contains(&c.id) {
                continue;
            }
            if c.state.is_running() {
                out.actions.push(Action::StopOrphan {
                    id: c.id.clone(),
                    grace: Duration::from_secs(c.grace_seconds.unwrap_or(DEFAULT_GRACE_SECONDS)),
                });
            } else {
                out.actions.push(Action::Remove { id: c.id.clone() });
            }
        }
    }
    out
}

/// The BackOff events due (pure): one per attempt of a desired pod's container whose latest
/// attempt exited and is waiting out its crash-loop backoff, unless `memo` says that attempt
/// already had one. The caller emits them and records them with [`Memo::backoff_emitted`].
pub fn backoff_events(
    desired: &[Pod],
    observed: &[ContainerInfo],
    memo: &Memo,
    now: Instant,
) -> Vec<BackOffEvent> {
    let attempts = by_key(observed);
    let mut out = Vec::new();
    for pod in desired.iter().filter(|p| is_desired(p)) {
        let all = pod
            .spec
            .init_containers
            .iter()
            .map(|c| (Role::of(c, true), c))
            .chain(pod.spec.containers.iter().map(|c| (Role::App, c)));
        for (role, c) in all {
            let key = Key::new(&pod.metadata.uid, &c.name);
            let Some(latest) = attempts.get(&key).and_then(|v| v.first()) else {
                continue;
            };
            if role != Role::App
                && !matches!(&latest.state, RunState::Exited(e) if restarts(pod, role, e))
            {
                continue;
            }
            let backing_off = matches!(latest.state, RunState::Exited(_))
                && memo
                    .crash
                    .get(&key)
                    .and_then(|c| c.backoff.remaining(now))
                    .is_some();
            if backing_off && memo.backoff_events.get(&key) != Some(&latest.attempt) {
                out.push(BackOffEvent {
                    attempt: latest.attempt,
                    message: format!(
                        "Back-off restarting failed container {} in pod {}",
                        c.name, pod.metadata.name
                    ),
                    key,
                });
            }
        }
    }
    out
}

fn terminated(e: &ExitInfo) -> ContainerStateTerminated {
    ContainerStateTerminated {
        exit_code: e.exit_code,
        signal: e.signal,
        reason: e.reason.clone(),
        message: e.message.clone(),
        started_at: e.started_at,
        finished_at: e.finished_at,
    }
}

fn waiting(reason: &str, message: String) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: reason.to_string(),
            message,
        }),
        ..Default::default()
    }
}

/// Set a condition; an unchanged (status, reason, message) keeps the old one byte-for-byte so
/// that an unchanged pod produces an identical status (and no write).
fn put_condition(
    conds: &mut Vec<Condition>,
    old: &[Condition],
    type_: &str,
    ok: bool,
    reason: &str,
    wall: Time,
) {
    let status = if ok { "True" } else { "False" };
    if let Some(o) = old.iter().find(|c| c.type_ == type_) {
        if o.status == status && o.reason == reason {
            conds.push(o.clone());
            return;
        }
    }
    conds.push(Condition::new(type_, ok, reason, "", wall));
}

/// Inputs of [`pod_status`] that are not the pod itself.
pub struct StatusInputs<'a> {
    pub observed: &'a [ContainerInfo],
    pub memo: &'a Memo,
    pub view: &'a dyn Fn(&str, &Container) -> ProbeView,
    pub policy: &'a BackoffPolicy,
    pub host_ip: &'a str,
    /// The pod's own address; None: it shares the node's (host_ip); Some(""): it will have
    /// one but has none yet (its sandbox is not up).
    pub pod_ip: Option<&'a str>,
    pub ports: &'a [crate::runtime::PortBinding],
    pub now: Instant,
    pub wall: Time,
}

/// One container's status, and whether it has started and ended for good (pure).
struct OneStatus {
    cs: ContainerStatus,
    started: bool,
    terminal: bool,
    succeeded: bool,
}

fn container_status(
    pod: &Pod,
    c: &Container,
    role: Role,
    list: &[&ContainerInfo],
    inp: &StatusInputs<'_>,
    default_waiting: &str,
) -> OneStatus {
    let key = Key::new(&pod.metadata.uid, &c.name);
    let latest = list.first();
    let prev = list.get(1);
    let prev_state = prev.and_then(|p| match &p.state {
        RunState::Exited(e) => Some(ContainerState {
            terminated: Some(terminated(e)),
            ..Default::default()
        }),
        _ => None,
    });
    let create_err = inp.memo.create_errors.get(&key);
    let mut cs = ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone(),
        restart_count: latest.map(|l| l.attempt as i32).unwrap_or(0),
        container_id: latest
            .map(|l| format!("{}://{}", l.runtime, l.id))
            .unwrap_or_default(),
        started: Some(false),
        ..Default::default()
    };
    let (mut started, mut terminal, mut succeeded) = (false, false, true);
    match latest.map(|l| &l.state) {
        None | Some(RunState::Created) => {
            cs.state = match create_err {
                Some(e) => waiting(&e.reason, e.message.clone()),
                None => waiting(default_waiting, String::new()),
            };
            cs.last_state = prev_state;
        }
        Some(RunState::Running { started_at }) => {
            started = true;
            let hook_running = latest.is_some_and(|l| inp.memo.post_starting.contains(&l.id));
            let v = latest.map(|l| (inp.view)(&l.id, c)).unwrap_or_default();
            cs.state = ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(*started_at),
                }),
                ..Default::default()
            };
            cs.ready = v.ready && !hook_running;
            cs.started = Some(v.started && !hook_running);
            cs.last_state = prev_state;
        }
        Some(RunState::Exited(e)) => {
            started = true;
            if restarts(pod, role, e) {
                let crashes = inp
                    .memo
                    .crash
                    .get(&key)
                    .map(|c| c.backoff.crashes)
                    .unwrap_or(1);
                let backing_off = inp
                    .memo
                    .crash
                    .get(&key)
                    .and_then(|c| c.backoff.remaining(inp.now))
                    .is_some();
                cs.state = match create_err {
                    Some(ce) => waiting(&ce.reason, ce.message.clone()),
                    None if backing_off => waiting(
                        "CrashLoopBackOff",
                        format!(
                            "back-off {} restarting failed container={} pod={}",
                            humanize(inp.policy.delay(crashes)),
                            c.name,
                            pod.metadata.name
                        ),
                    ),
                    None => waiting("ContainerCreating", String::new()),
                };
                cs.last_state = Some(ContainerState {
                    terminated: Some(terminated(e)),
                    ..Default::default()
                });
            } else {
                terminal = true;
                succeeded = e.exit_code == 0;
                cs.state = ContainerState {
                    terminated: Some(terminated(e)),
                    ..Default::default()
                };
                cs.last_state = prev_state;
            }
        }
    }
    OneStatus {
        cs,
        started,
        terminal,
        succeeded,
    }
}

/// The status this pod should have (pure).
pub fn pod_status(pod: &Pod, inp: &StatusInputs<'_>) -> PodStatus {
    let uid = pod.metadata.uid.as_str();
    let old = pod.status.clone().unwrap_or_default();
    let attempts = by_key(inp.observed);
    let progress = init_progress(pod, &attempts, inp.view, &inp.memo.post_starting);
    // Kubernetes: containers not created yet wait in PodInitializing in a pod with init
    // containers, ContainerCreating otherwise.
    let default_waiting = if pod.spec.init_containers.is_empty() {
        "ContainerCreating"
    } else {
        "PodInitializing"
    };
    let list_of = |c: &Container| -> &[&ContainerInfo] {
        attempts
            .get(&Key::new(uid, &c.name))
            .map(|v| v.as_slice())
            .unwrap_or(&[])
    };
    let mut init_statuses = Vec::new();
    let mut sidecars_ready = true;
    for c in &pod.spec.init_containers {
        let role = Role::of(c, true);
        let one = container_status(pod, c, role, list_of(c), inp, default_waiting);
        if role == Role::Sidecar {
            sidecars_ready &= one.cs.ready;
        }
        init_statuses.push(one.cs);
    }
    let mut statuses = Vec::new();
    let (mut all_ready, mut any_started, mut all_terminal, mut all_succeeded) =
        (true, false, true, true);
    for c in &pod.spec.containers {
        let one = container_status(pod, c, Role::App, list_of(c), inp, default_waiting);
        any_started |= one.started;
        all_terminal &= one.terminal;
        all_succeeded &= one.succeeded;
        all_ready &= one.cs.ready;
        statuses.push(one.cs);
    }
    let initialized = progress == InitProgress::Done;
    if matches!(progress, InitProgress::Failed(_)) {
        all_terminal = true;
        all_succeeded = false;
    }
    all_ready &= sidecars_ready;
    let phase = if !pod.spec.containers.is_empty() && all_terminal {
        if all_succeeded {
            PodPhase::Succeeded
        } else {
            PodPhase::Failed
        }
    } else if !initialized {
        PodPhase::Pending
    } else if any_started {
        PodPhase::Running
    } else {
        PodPhase::Pending
    };
    let ready = all_ready && !pod.spec.containers.is_empty() && phase == PodPhase::Running;
    let ready_reason = if ready { "" } else { "ContainersNotReady" };
    let mut conditions = Vec::new();
    put_condition(
        &mut conditions,
        &old.conditions,
        "PodScheduled",
        true,
        "",
        inp.wall,
    );
    put_condition(
        &mut conditions,
        &old.conditions,
        "Initialized",
        initialized,
        if initialized {
            ""
        } else {
            "ContainersNotInitialized"
        },
        inp.wall,
    );
    put_condition(
        &mut conditions,
        &old.conditions,
        "ContainersReady",
        ready,
        ready_reason,
        inp.wall,
    );
    put_condition(
        &mut conditions,
        &old.conditions,
        "Ready",
        ready,
        ready_reason,
        inp.wall,
    );
    let pod_ip = inp.pod_ip.unwrap_or(inp.host_ip).to_string();
    PodStatus {
        phase: phase.to_string(),
        conditions,
        host_ip: inp.host_ip.to_string(),
        pod_ip: pod_ip.clone(),
        pod_ips: if pod_ip.is_empty() {
            Vec::new()
        } else {
            vec![berth_proto::types::PodIp { ip: pod_ip }]
        },
        start_time: old.start_time.or(Some(inp.wall)),
        init_container_statuses: init_statuses,
        container_statuses: statuses,
        host_ports: hostports::to_status(&pod.spec, inp.ports),
        reason: String::new(),
        message: String::new(),
    }
}

fn humanize(d: Duration) -> String {
    if d < Duration::from_secs(60) && d.subsec_millis() != 0 {
        return format!("{}ms", d.as_millis());
    }
    let s = d.as_secs();
    if s >= 60 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else if s >= 60 {
        format!("{}m{}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// Build the runtime spec of one container attempt.
pub fn container_spec(
    node: &str,
    pod: &Pod,
    c: &Container,
    attempt: u32,
    ports: &[crate::runtime::PortBinding],
) -> ContainerSpec {
    let limits = berth_proto::quantity::container_limits(c);
    ContainerSpec {
        node_name: node.to_string(),
        pod_uid: pod.metadata.uid.clone(),
        pod_namespace: pod.metadata.namespace.clone(),
        pod_name: pod.metadata.name.clone(),
        container_name: c.name.clone(),
        attempt,
        image: c.image.clone(),
        command: c.command.clone(),
        args: c.args.clone(),
        working_dir: c.working_dir.clone(),
        // Like Kubernetes: HOSTNAME is the pod name; POD_NAME/POD_NAMESPACE as the downward
        // API would give them. The container's own env comes later and wins.
        env: [
            ("HOSTNAME", &pod.metadata.name),
            ("POD_NAME", &pod.metadata.name),
            ("POD_NAMESPACE", &pod.metadata.namespace),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .chain(c.env.iter().map(|e| (e.name.clone(), e.value.clone())))
        .collect(),
        ports: ports.to_vec(),
        memory_limit_bytes: limits.memory.filter(|m| *m > 0),
        cpu_limit_millis: limits.milli_cpu.filter(|m| *m > 0),
        stop_signal: None,
        grace_seconds: Some(grace_of(pod).as_secs()),
        runtime_class: pod.spec.runtime_class_name.clone(),
        dns: None,
        pod_host_ports: Vec::new(),
        host_port_ip: None,
        mounts: Vec::new(),
    }
}

enum StartOutcome {
    Started(String),
    CreateFailed(RuntimeError),
    StartFailed(RuntimeError),
}

/// A preStop hook to run before a stop.
struct PreStop {
    handler: berth_proto::types::LifecycleHandler,
    container: Container,
    ports: Vec<crate::runtime::PortBinding>,
    host: crate::hooks::HookHost,
    pod: PodRef,
}

/// A postStart hook that finished.
struct HookDone {
    id: String,
    pod: PodRef,
    grace: Duration,
    result: Result<(), String>,
}

/// Settings of the pod sync loop.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    pub node_name: String,
    pub node_address: String,
    pub backoff: BackoffPolicy,
    /// Retry delay after a create failure (e.g. a missing image).
    pub create_retry: Duration,
    /// Upper bound between two rounds.
    pub resync: Duration,
    /// Services, for the `{SVC}_SERVICE_HOST/PORT` variables of new containers.
    pub services: crate::svcenv::ServiceEnv,
    /// The node's pod network, for the resolv.conf of pods on it.
    pub network: crate::podnet::PodNetwork,
    /// Where pod volumes live on this node (None: pods with volumes cannot start).
    pub volumes: Option<crate::volumes::Volumes>,
    /// The Endpoints and Nodes a terminating pod is drained against before it is stopped
    /// (None: stopped at once, e.g. no API watch in a test).
    pub traffic: Option<crate::drain::TrafficView>,
}

impl SyncConfig {
    pub fn new(node_name: &str, node_address: &str) -> SyncConfig {
        SyncConfig {
            node_name: node_name.to_string(),
            node_address: node_address.to_string(),
            backoff: BackoffPolicy::default(),
            create_retry: Duration::from_secs(10),
            resync: Duration::from_secs(1),
            services: crate::svcenv::ServiceEnv::new(),
            network: crate::podnet::PodNetwork::new(),
            volumes: None,
            traffic: None,
        }
    }
}

/// The shell around [`plan`]: owns the memo, host ports and prober; one task.
pub struct PodSync {
    cfg: SyncConfig,
    runtime: Arc<dyn Runtime>,
    api: Arc<dyn NodeApi>,
    pods: PodCache,
    memo: Memo,
    ports: HostPorts,
    prober: Prober,
    puller: Puller,
    events: EventSink,
    kick: Arc<Notify>,
    /// Stop tasks send the id they finished here; folded into `memo.stopping`.
    stop_done_tx: mpsc::UnboundedSender<String>,
    stop_done_rx: mpsc::UnboundedReceiver<String>,
    stops: TaskTracker,
    /// postStart hook tasks report here; folded in by [`PodSync::collect_post_starts`].
    hook_done_tx: mpsc::UnboundedSender<HookDone>,
    hook_done_rx: mpsc::UnboundedReceiver<HookDone>,
    /// The last spec seen of every pod with containers here: a pod deleted from the API
    /// still has its preStop hooks run and its sidecars stopped last.
    known: BTreeMap<String, Pod>,
    last_written: BTreeMap<String, PodStatus>,
    /// The last trust objects fetched per (namespace, image), used while the API is down.
    trust_cache: BTreeMap<(String, String), berth_proto::trust::TrustSnapshot>,
    /// Whether require-signed-images applied per namespace when last fetched (an image not
    /// seen before may start during an outage in a namespace known to be without the policy).
    trust_policy: BTreeMap<String, bool>,
    last_sandbox_gc: Option<Instant>,
    /// When configMap/secret volumes were last refreshed.
    last_volume_pass: Option<Instant>,
    /// Terminating pods being drained: since when, and the Endpoints revision to reach.
    drains: BTreeMap<String, (Instant, Option<u64>)>,
    /// Terminating pods drained (or given up on): their containers are being stopped.
    drained: BTreeSet<String>,
    /// Terminating pods whose final delete was sent (not sent again until it fails).
    finalized: BTreeSet<String>,
}

/// How often pod sandboxes are checked for removal when nothing else changed.
const SANDBOX_GC: Duration = Duration::from_secs(10);
/// How often configMap/secret volume files are re-read (the kubelet: about a minute; an
/// update shows up within this).
const VOLUME_REFRESH: Duration = Duration::from_secs(10);

fn pod_ref(p: &Pod) -> PodRef {
    PodRef {
        namespace: p.metadata.namespace.clone(),
        name: p.metadata.name.clone(),
        uid: p.metadata.uid.clone(),
    }
}

impl PodSync {
    pub fn new(
        cfg: SyncConfig,
        runtime: Arc<dyn Runtime>,
        api: Arc<dyn NodeApi>,
        pods: PodCache,
        ports: HostPorts,
        events: EventSink,
        shutdown: &CancellationToken,
    ) -> PodSync {
        let kick = pods.notifier();
        let (stop_done_tx, stop_done_rx) = mpsc::unbounded_channel();
        let (hook_done_tx, hook_done_rx) = mpsc::unbounded_channel();
        let prober = Prober::new(
            runtime.clone(),
            kick.clone(),
            events.clone(),
            shutdown.child_token(),
        );
        let puller = Puller::new(runtime.clone(), kick.clone());
        PodSync {
            cfg,
            puller,
            runtime,
            api,
            pods,
            memo: Memo::default(),
            ports,
            prober,
            events,
            kick,
            stop_done_tx,
            stop_done_rx,
            stops: TaskTracker::new(),
            hook_done_tx,
            hook_done_rx,
            known: BTreeMap::new(),
            last_written: BTreeMap::new(),
            trust_cache: BTreeMap::new(),
            trust_policy: BTreeMap::new(),
            last_sandbox_gc: None,
            last_volume_pass: None,
            drains: BTreeMap::new(),
            drained: BTreeSet::new(),
            finalized: BTreeSet::new(),
        }
    }

    /// Run rounds until shutdown. Workloads are left running on shutdown: the next agent adopts
    /// them.
    pub async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let requeue = self.sync_once().await;
            let wait = requeue
                .map(|r| r.min(self.cfg.resync))
                .unwrap_or(self.cfg.resync)
                .max(Duration::from_millis(10));
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = self.kick.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        self.stops.close();
        // Stops in flight (liveness kills, orphans) get a moment; the next agent redoes the rest.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.stops.wait()).await;
    }

    /// Fold in the stops that finished since the last look.
    fn collect_finished_stops(&mut self) {
        while let Ok(id) = self.stop_done_rx.try_recv() {
            self.memo.stop_finished(&id);
        }
    }

    /// One reconcile round; returns when the next one is due at the latest.
    pub async fn sync_once(&mut self) -> Option<Duration> {
        let observed = match self.runtime.list().await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "listing the runtime failed; retrying");
                return Some(Duration::from_secs(2));
            }
        };
        let Some(all) = self.pods.snapshot() else {
            // Not synced with the API yet: adopt nothing, kill nothing.
            return Some(self.cfg.resync);
        };
        let desired: Vec<Pod> = all
            .into_iter()
            .filter(|p| p.spec.node_name == self.cfg.node_name)
            .collect();
        self.restart_lost_sandboxes(&desired, &observed).await;
        let now = Instant::now();
        let wall = chrono::Utc::now();
        self.rederive_ports(&desired, &observed);
        self.pull_backoffs(&desired, now);
        record_exits(&mut self.memo, &observed, &self.cfg.backoff, now, wall);
        self.collect_finished_stops();
        self.collect_post_starts();
        let planned = self.with_gone_pods(&desired, &observed, wall);
        self.update_drains(&desired, now);
        let p = {
            let prober = &self.prober;
            let view = |id: &str, c: &Container| prober.view(id, c);
            plan(&planned, &observed, &self.memo, &view, now)
        };
        let changed = !p.actions.is_empty();
        let mut starts = Vec::new();
        for a in p.actions.clone() {
            match a {
                Action::Start {
                    pod_uid,
                    container,
                    attempt,
                } => starts.push((pod_uid, container, attempt)),
                other => self.execute(other, &planned, &observed).await,
            }
        }
        // Start in waves so the statuses of the first ones are written before the rest start
        // (a Docker engine starts a few containers per second).
        let more = starts.len() > START_WAVE;
        starts.truncate(START_WAVE);
        self.start_all(starts, &desired).await;
        let observed = if changed {
            self.runtime.list().await.unwrap_or(observed)
        } else {
            observed
        };
        self.collect_finished_stops();
        self.sync_prober(&desired, &observed);
        self.write_statuses(&desired, &observed).await;
        self.emit_backoff_events(&desired, &observed);
        self.finalize_terminated(&desired, &observed).await;
        self.cleanup(&desired, &observed);
        self.remove_sandboxes(&desired, &observed, changed).await;
        self.maintain_volumes(&desired, &observed).await;
        self.events.flush(self.api.as_ref()).await;
        if more {
            return Some(Duration::ZERO);
        }
        p.requeue
    }

    /// Drain before stop: decide which terminating pods may be stopped now (see
    /// [`crate::drain`]); the others go into `memo.draining`, which [`plan`] leaves alone.
    fn update_drains(&mut self, desired: &[Pod], now: Instant) {
        let terminating: Vec<&Pod> = desired
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_some())
            .collect();
        let live: BTreeSet<&str> = terminating
            .iter()
            .map(|p| p.metadata.uid.as_str())
            .collect();
        self.drains.retain(|uid, _| live.contains(uid.as_str()));
        self.drained.retain(|uid| live.contains(uid.as_str()));
        self.finalized.retain(|uid| live.contains(uid.as_str()));
        self.memo.draining.clear();
        for pod in terminating {
            let uid = pod.metadata.uid.clone();
            if self.drained.contains(&uid) {
                continue;
            }
            let Some(traffic) = &self.cfg.traffic else {
                self.drained.insert(uid);
                continue;
            };
            if pod.metadata.deletion_grace_period_seconds == Some(0) {
                self.drained.insert(uid);
                continue;
            }
            let (since, frozen) = self.drains.entry(uid.clone()).or_insert((now, None));
            let (state, goal) = traffic.check(pod, *frozen);
            if frozen.is_none() {
                *frozen = goal;
            }
            let waited = now.saturating_duration_since(*since);
            match state {
                crate::drain::Drain::Drained => {
                    tracing::info!(pod = %pod.metadata.name, namespace = %pod.metadata.namespace, waited_ms = waited.as_millis() as u64, "drained from every proxy; stopping");
                    self.drained.insert(uid);
                }
                crate::drain::Drain::Waiting(why) if waited >= crate::drain::DRAIN_TIMEOUT => {
                    self.events.warning(
                        &pod_ref(pod),
                        "DrainTimeout",
                        format!(
                            "Stopping after waiting {}s for the Service proxies: {why}",
                            crate::drain::DRAIN_TIMEOUT.as_secs()
                        ),
                    );
                    self.drained.insert(uid);
                }
                crate::drain::Drain::Waiting(_) => {
                    self.memo.draining.insert(uid);
                }
            }
        }
    }

    /// The kubelet's last step of a graceful deletion: a terminating pod none of whose
    /// containers runs any more is deleted for good (grace 0, at the resourceVersion seen).
    async fn finalize_terminated(&mut self, desired: &[Pod], observed: &[ContainerInfo]) {
        for pod in desired
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_some())
        {
            let uid = &pod.metadata.uid;
            if !self.drained.contains(uid) || self.finalized.contains(uid) {
                continue;
            }
            let running = observed.iter().any(|c| {
                c.pod_uid == *uid && (c.state.is_running() || self.memo.stopping.contains(&c.id))
            });
            if running {
                continue;
            }
            match self
                .api
                .delete_pod(
                    &pod.metadata.namespace,
                    &pod.metadata.name,
                    pod.metadata.resource_version,
                )
                .await
            {
                Ok(()) | Err(ApiError::NotFound) => {
                    self.finalized.insert(uid.clone());
                }
                // A newer version (e.g. our own status write): the next round uses it.
                Err(ApiError::Conflict) => {}
                Err(e) => {
                    tracing::debug!(pod = %pod.metadata.name, error = %e, "final delete of a terminated pod; retrying");
                }
            }
        }
    }

    fn rederive_ports(&mut self, desired: &[Pod], observed: &[ContainerInfo]) {
        let attempts = by_key(observed);
        for pod in desired {
            let uid = &pod.metadata.uid;
            if self.ports.get(uid).is_some() {
                continue;
            }
            let mut from_workloads = Vec::new();
            for c in &pod.spec.containers {
                if let Some(l) = attempts
                    .get(&Key::new(uid, &c.name))
                    .and_then(|v| v.first())
                {
                    from_workloads.extend(l.ports.iter().cloned());
                }
            }
            let from_status = pod
                .status
                .as_ref()
                .map(|s| hostports::from_status(&pod.spec, &s.host_ports))
                .unwrap_or_default();
            let b = if from_workloads.is_empty() {
                from_status
            } else {
                from_workloads
            };
            self.ports.reserve(uid, &b);
        }
        // Orphans still hold their ports until they are gone.
        for c in observed.iter().filter(|c| c.state.is_running()) {
            if self.ports.get(&c.pod_uid).is_none()
                && !desired.iter().any(|p| p.metadata.uid == c.pod_uid)
            {
                self.ports.reserve(&c.pod_uid, &c.ports);
            }
        }
    }

    /// The desired pods plus, marked deleted, the last known spec of every pod that is gone
    /// from the API but still has containers here (for [`plan`]'s teardown order and the
    /// preStop hooks).
    fn with_gone_pods(
        &mut self,
        desired: &[Pod],
        observed: &[ContainerInfo],
        wall: Time,
    ) -> Vec<Pod> {
        let here: BTreeSet<&str> = observed.iter().map(|c| c.pod_uid.as_str()).collect();
        for p in desired {
            if here.contains(p.metadata.uid.as_str())
                && (!p.spec.init_containers.is_empty()
                    || p.spec.containers.iter().any(|c| c.lifecycle.is_some()))
            {
                self.known.insert(p.metadata.uid.clone(), p.clone());
            }
        }
        let live: BTreeSet<&str> = desired.iter().map(|p| p.metadata.uid.as_str()).collect();
        self.known
            .retain(|uid, _| here.contains(uid.as_str()) || live.contains(uid.as_str()));
        let mut out = desired.to_vec();
        for (uid, p) in &self.known {
            if !live.contains(uid.as_str()) {
                let mut gone = p.clone();
                gone.metadata.deletion_timestamp = Some(wall);
                out.push(gone);
            }
        }
        out
    }

    async fn execute(&mut self, a: Action, desired: &[Pod], observed: &[ContainerInfo]) {
        let pre_stop = |me: &Self, id: &str| {
            let info = observed.iter().find(|c| c.id == id)?;
            let pod = desired.iter().find(|p| p.metadata.uid == info.pod_uid)?;
            me.pre_stop_of(pod, info)
        };
        match a {
            Action::Start {
                pod_uid,
                container,
                attempt,
            } => {
                self.start_all(vec![(pod_uid, container, attempt)], desired)
                    .await
            }
            Action::Kill {
                id,
                key,
                grace,
                message,
            } => {
                if let Some(pod) = desired.iter().find(|p| p.metadata.uid == key.pod_uid) {
                    self.events.normal(&pod_ref(pod), "Killing", message);
                }
                let hook = pre_stop(self, &id);
                self.spawn_stop_with(id, grace, false, hook);
            }
            Action::StopOrphan { id, grace } => {
                let hook = pre_stop(self, &id);
                self.spawn_stop_with(id, grace, true, hook)
            }
            Action::Remove { id } => {
                if let Err(e) = self.runtime.remove(&id).await {
                    tracing::warn!(container = %id, error = %e, "removing container");
                }
            }
        }
    }

    fn spawn_stop(&mut self, id: String, grace: Duration, remove: bool) {
        self.spawn_stop_with(id, grace, remove, None);
    }

    /// The preStop hook of the container `info` of `pod`, if it has one.
    fn pre_stop_of(&self, pod: &Pod, info: &ContainerInfo) -> Option<PreStop> {
        let c = find_container(pod, &info.container_name)?;
        let handler = c.lifecycle.as_ref()?.pre_stop.clone()?;
        Some(PreStop {
            handler,
            container: c.clone(),
            ports: info.ports.clone(),
            host: self.hook_host(pod),
            pod: pod_ref(pod),
        })
    }

    /// The pod's own address on the pod network as last written to its status (None: not
    /// known yet).
    fn written_pod_ip(&self, pod: &Pod) -> Option<String> {
        self.last_written
            .get(&pod.metadata.uid)
            .or(pod.status.as_ref())
            .map(|s| s.pod_ip.clone())
            .filter(|ip| !ip.is_empty() && *ip != self.cfg.node_address)
    }

    /// Where a hook's httpGet connects: the pod's own address on the pod network, else the
    /// node's loopback (the container shares the node's network).
    fn hook_host(&self, pod: &Pod) -> crate::hooks::HookHost {
        if !self.handler_has_pod_network(pod) {
            return crate::hooks::HookHost::Node;
        }
        let ip = self.written_pod_ip(pod);
        crate::hooks::HookHost::Pod {
            pod_uid: pod.metadata.uid.clone(),
            ip,
        }
    }

    /// Stop a container; with a preStop hook, the hook runs first and its time counts toward
    /// the grace period (at least 2 seconds are left for the stop signal, as the kubelet does).
    fn spawn_stop_with(
        &mut self,
        id: String,
        grace: Duration,
        remove: bool,
        pre_stop: Option<PreStop>,
    ) {
        self.memo.stop_started(&id);
        let rt = self.runtime.clone();
        let done = self.stop_done_tx.clone();
        let kick = self.kick.clone();
        let events = self.events.clone();
        self.stops.spawn(async move {
            let mut grace = grace;
            if let Some(h) = pre_stop {
                let began = Instant::now();
                let r = crate::hooks::run(
                    rt.as_ref(),
                    &id,
                    &h.container,
                    &h.handler,
                    &h.ports,
                    &h.host,
                    grace,
                )
                .await;
                if let Err(m) = r {
                    events.warning(
                        &h.pod,
                        crate::hooks::Hook::PreStop.failed_reason(),
                        format!(
                            "PreStopHook ({}) of container {} failed: {m}",
                            crate::hooks::describe(&h.handler),
                            h.container.name
                        ),
                    );
                }
                grace = grace
                    .saturating_sub(began.elapsed())
                    .max(Duration::from_secs(2));
            }
            if let Err(e) = rt.stop(&id, grace, None).await {
                tracing::warn!(container = %id, error = %e, "stopping container");
            }
            if remove {
                if let Err(e) = rt.remove(&id).await {
                    tracing::warn!(container = %id, error = %e, "removing container");
                }
            }
            // The receiver lives as long as the PodSync; after it is gone nobody plans.
            let _ = done.send(id);
            kick.notify_one();
        });
    }

    /// Run a started container's postStart hook in the background; until it finishes the
    /// container does not count as started (the next init container waits). A failure is
    /// folded in by [`PodSync::collect_post_starts`]: event and kill.
    fn spawn_post_start(
        &mut self,
        desired: &[Pod],
        key: &Key,
        pref: PodRef,
        id: String,
        spec: &ContainerSpec,
    ) {
        let Some(pod) = desired.iter().find(|p| p.metadata.uid == key.pod_uid) else {
            return;
        };
        let Some(c) = find_container(pod, &key.container) else {
            return;
        };
        let Some(handler) = c.lifecycle.as_ref().and_then(|l| l.post_start.clone()) else {
            return;
        };
        self.memo.post_starting.insert(id.clone());
        let rt = self.runtime.clone();
        let c = c.clone();
        let ports = spec.ports.clone();
        let host = self.hook_host(pod);
        let grace = grace_of(pod);
        let timeout = grace.max(Duration::from_secs(DEFAULT_GRACE_SECONDS));
        let done = self.hook_done_tx.clone();
        let kick = self.kick.clone();
        self.stops.spawn(async move {
            let r = crate::hooks::run(rt.as_ref(), &id, &c, &handler, &ports, &host, timeout)
                .await
                .map_err(|m| {
                    format!(
                        "PostStartHook ({}) of container {} failed: {m}",
                        crate::hooks::describe(&handler),
                        c.name
                    )
                });
            let _ = done.send(HookDone {
                id,
                pod: pref,
                grace,
                result: r,
            });
            kick.notify_one();
        });
    }

    /// Fold in finished postStart hooks: a failed one gets its event and its container
    /// killed (restarted per the pod's policy by the usual path).
    fn collect_post_starts(&mut self) {
        while let Ok(h) = self.hook_done_rx.try_recv() {
            self.memo.post_starting.remove(&h.id);
            if let Err(m) = h.result {
                self.events
                    .warning(&h.pod, crate::hooks::Hook::PostStart.failed_reason(), m);
                self.spawn_stop(h.id, h.grace, false);
            }
        }
    }

    /// Start containers: ports and specs are prepared in order, the runtime calls run
    /// concurrently (bounded; Docker create+start takes a while), results are applied in order.
    async fn start_all(&mut self, starts: Vec<(String, String, u32)>, desired: &[Pod]) {
        let now = Instant::now();
        let mut prepared = Vec::new();
        for (pod_uid, container, attempt) in starts {
            let Some(pod) = desired.iter().find(|p| p.metadata.uid == pod_uid) else {
                continue;
            };
            let Some(c) = find_container(pod, &container) else {
                continue;
            };
            let key = Key::new(&pod.metadata.uid, &c.name);
            let pref = pod_ref(pod);
            if !self.image_ready(pod, c, &key, attempt, &pref, now).await {
                continue;
            }
            if !self.image_trusted(pod, c, &key, attempt, &pref, now).await {
                continue;
            }
            let networked = self.handler_has_pod_network(pod);
            let bindings = match self.ports.allocate_with(
                &pod.metadata.uid,
                &pod.metadata.name,
                &pod.spec,
                !networked,
            ) {
                Ok(b) => b,
                Err(e) => {
                    self.create_failed(&key, &pref, "HostPortUnavailable", e.to_string(), now);
                    continue;
                }
            };
            let ports = hostports::for_container(&pod.spec, &bindings, &c.name);
            let mut spec = container_spec(&self.cfg.node_name, pod, c, attempt, ports);
            // The container's own variables, resolved now (ConfigMaps, Secrets, pod fields).
            let base = spec.env.len() - c.env.len();
            spec.env.truncate(base);
            if networked {
                spec.pod_host_ports = bindings
                    .iter()
                    .filter(|b| b.host_port != 0)
                    .cloned()
                    .collect();
                spec.host_port_ip = self
                    .cfg
                    .node_address
                    .parse::<std::net::IpAddr>()
                    .ok()
                    .filter(|ip| !ip.is_unspecified());
                if pod.spec.dns_policy.as_deref() != Some("Default") {
                    spec.dns = self
                        .cfg
                        .network
                        .get()
                        .map(|n| n.resolv_conf(&pod.metadata.namespace));
                }
            }
            if !pod.spec.volumes.is_empty() {
                match self.pod_mounts(pod, c).await {
                    Ok(m) => spec.mounts = m,
                    Err(message) => {
                        self.events.warning(&pref, "FailedMount", message.clone());
                        self.create_failed(&key, &pref, "CreateContainerConfigError", message, now);
                        continue;
                    }
                }
            }
            match self.container_env(pod, c, networked, &spec).await {
                Ok(own) => spec.env.extend(own),
                Err(message) => {
                    self.create_failed(&key, &pref, "CreateContainerConfigError", message, now);
                    continue;
                }
            }
            // Service variables go before the container's own env, which wins on a clash.
            let svc_vars = self
                .cfg
                .services
                .vars(&pod.metadata.namespace, &self.cfg.node_address);
            spec.env.splice(base..base, svc_vars);
            prepared.push((key, pref, spec));
        }
        let rt = self.runtime.clone();
        let results: Vec<_> = futures::stream::iter(prepared)
            .map(|(key, pref, spec)| {
                let rt = rt.clone();
                async move {
                    let outcome = match rt.create(&spec).await {
                        Err(e) => StartOutcome::CreateFailed(e),
                        Ok(id) => match rt.start(&id).await {
                            Ok(()) => StartOutcome::Started(id),
                            Err(e) => {
                                let _ = rt.remove(&id).await;
                                StartOutcome::StartFailed(e)
                            }
                        },
                    };
                    (key, pref, spec, outcome)
                }
            })
            .buffer_unordered(START_WAVE)
            .collect()
            .await;
        for (key, pref, spec, outcome) in results {
            let name = &spec.container_name;
            match outcome {
                StartOutcome::CreateFailed(e @ RuntimeError::ImageNotPresent { .. }) => {
                    self.create_failed(&key, &pref, "ErrImageNeverPull", e.to_string(), now)
                }
                StartOutcome::CreateFailed(e) => {
                    self.create_failed(&key, &pref, "CreateContainerError", e.to_string(), now)
                }
                StartOutcome::StartFailed(e) => {
                    self.events
                        .normal(&pref, "Created", format!("Created container {name}"));
                    self.create_failed(&key, &pref, "RunContainerError", e.to_string(), now)
                }
                StartOutcome::Started(id) => {
                    self.events
                        .normal(&pref, "Created", format!("Created container {name}"));
                    self.events
                        .normal(&pref, "Started", format!("Started container {name}"));
                    self.memo.create_errors.remove(&key);
                    self.spawn_post_start(desired, &key, pref, id, &spec);
                }
            }
        }
    }

    /// Is the image of this container attempt on the node, following its pull policy? Starts
    /// or joins a pull when it is not (the container then waits: ContainerCreating), and turns a
    /// finished pull into events and, on failure, ErrImagePull with the pull backoff.
    async fn image_ready(
        &mut self,
        pod: &Pod,
        c: &Container,
        key: &Key,
        attempt: u32,
        pref: &PodRef,
        now: Instant,
    ) -> bool {
        let handlers = self.runtime.handlers();
        let class = pod.spec.runtime_class_name.as_deref();
        let Some(handler) = handlers.iter().find(|h| class.is_none_or(|c| h.name == c)) else {
            let have: Vec<&str> = handlers.iter().map(|h| h.name).collect();
            self.create_failed(
                key,
                pref,
                "CreateContainerConfigError",
                format!(
                    "runtimeClassName {:?} is not available on node {} (it has: {})",
                    class.unwrap_or_default(),
                    self.cfg.node_name,
                    have.join(", ")
                ),
                now,
            );
            return false;
        };
        if !handler.uses_images {
            return true;
        }
        let image = c.image.as_str();
        if let Some(p) = self.memo.pulling.get(key) {
            if p.image == image && p.attempt == attempt {
                let Some(done) = self.puller.outcome(image, p.auth, p.id) else {
                    return false; // still pulling
                };
                self.memo.pulling.remove(key);
                return match done.result {
                    Ok(pulled) => {
                        self.memo.pull_failures.remove(key);
                        self.events.normal(
                            pref,
                            "Pulled",
                            format!(
                                "Successfully pulled image {image:?} in {} ({})",
                                pull::took(done.took),
                                pull::size(pulled.size)
                            ),
                        );
                        true
                    }
                    Err(why) => {
                        self.pull_failed(key, pref, image, why, now);
                        false
                    }
                };
            }
            self.memo.pulling.remove(key); // an older attempt or image
        }
        let policy = pull_policy(c);
        if policy != "Always" {
            // An engine that cannot answer is treated as not having it: the pull then says why.
            if self.runtime.image_present(image).await.unwrap_or(false) {
                self.events.normal(
                    pref,
                    "Pulled",
                    format!("Container image {image:?} already present on machine"),
                );
                return true;
            }
            if policy == "Never" {
                self.create_failed(
                    key,
                    pref,
                    "ErrImageNeverPull",
                    format!("Container image {image:?} is not present with pull policy of Never"),
                    now,
                );
                return false;
            }
        }
        let keyring = self.pull_keyring(pod, pref).await;
        let id = self.puller.request(image, &keyring);
        self.memo.pulling.insert(
            key.clone(),
            Pulling {
                image: image.to_string(),
                attempt,
                id,
                auth: keyring.fingerprint(),
            },
        );
        self.events
            .normal(pref, "Pulling", format!("Pulling image {image:?}"));
        false
    }

    /// The registry credentials of the pod's `imagePullSecrets`. As the kubelet does, a
    /// Secret that cannot be read is left out with a warning event and the pull goes on (it
    /// may then be refused by the registry); one that is not a Docker config says why.
    async fn pull_keyring(&mut self, pod: &Pod, pref: &PodRef) -> crate::pullsecrets::Keyring {
        let mut keyring = crate::pullsecrets::Keyring::default();
        let mut missing = Vec::new();
        for s in &pod.spec.image_pull_secrets {
            match self.api.get_secret(&pod.metadata.namespace, &s.name).await {
                Ok(Some(secret)) => {
                    if let Err(why) = keyring.add_secret(&secret) {
                        self.events.warning(
                            pref,
                            "FailedToRetrieveImagePullSecret",
                            format!("Unable to use image pull secret: {why}"),
                        );
                    }
                }
                Ok(None) => missing.push(s.name.clone()),
                Err(e) => {
                    tracing::warn!(pod = %pod.metadata.name, secret = %s.name, error = %e, "reading an image pull secret");
                    missing.push(s.name.clone());
                }
            }
        }
        if !missing.is_empty() {
            self.events.warning(
                pref,
                "FailedToRetrieveImagePullSecret",
                format!(
                    "Unable to retrieve some image pull secrets ({}); attempting to pull the \
                     image may not succeed.",
                    missing.join(", ")
                ),
            );
        }
        keyring
    }

    /// Does this pod's runtime handler give it its own address (the pod network)?
    fn handler_has_pod_network(&self, pod: &Pod) -> bool {
        let class = pod.spec.runtime_class_name.as_deref();
        self.runtime
            .handlers()
            .iter()
            .find(|h| class.is_none_or(|c| h.name == c))
            .is_some_and(|h| h.pod_network)
    }

    /// Does this runtime handler run images (and so follow imagePullPolicy and image trust)?
    fn handler_uses_images(&self, pod: &Pod) -> bool {
        let class = pod.spec.runtime_class_name.as_deref();
        self.runtime
            .handlers()
            .iter()
            .find(|h| class.is_none_or(|c| h.name == c))
            .is_some_and(|h| h.uses_images)
    }

    /// Image trust, just before the container starts (the image is on the node): under
    /// require-signed-images the digest the node holds must be signed by a trusted key
    /// ([`berth_proto::trust::check_image`], the check admission runs). Refused: the container
    /// waits with [`ERR_IMAGE_NOT_TRUSTED`], a `Failed` event says why, and the check runs
    /// again after the crash-loop backoff (so signing the image later lets it start).
    ///
    /// The trust objects come from the API server; when it cannot be reached the last answer
    /// for this namespace and image is used (a container that was allowed may restart during
    /// an outage), or, for an image not checked before, the namespace's last known policy when
    /// it was off; a restart (attempt > 0) of a container that already ran here is allowed;
    /// otherwise the container waits (fails closed) and is re-checked.
    async fn image_trusted(
        &mut self,
        pod: &Pod,
        c: &Container,
        key: &Key,
        attempt: u32,
        pref: &PodRef,
        now: Instant,
    ) -> bool {
        if !self.handler_uses_images(pod) {
            return true;
        }
        let ns = pod.metadata.namespace.as_str();
        let cache_key = (ns.to_string(), c.image.clone());
        let digests = self.runtime.image_digests(&c.image).await;
        let node_digests = digests.as_ref().ok().cloned().flatten();
        let snapshot = match self
            .api
            .trust_snapshot(ns, &c.image, node_digests.as_deref())
            .await
        {
            Ok(s) => {
                self.trust_policy.insert(
                    ns.to_string(),
                    berth_proto::trust::requires_signed_images(&s, ns),
                );
                self.trust_cache.insert(cache_key, s.clone());
                s
            }
            Err(e) => match self.trust_cache.get(&cache_key) {
                Some(s) => s.clone(),
                // The namespace was last seen without the policy: nothing to verify.
                None if self.trust_policy.get(ns) == Some(&false) => return true,
                // A restart of a container that already ran here (its image passed the check
                // when it first started, possibly under an earlier agent process).
                None if attempt > 0 => {
                    tracing::warn!(pod = %pref.name, container = %c.name, error = %e,
                        "API unreachable: restarting without re-checking image trust");
                    return true;
                }
                None => {
                    let why = format!("cannot check image trust for {:?}: {e}; retrying", c.image);
                    self.trust_failed(key, pref, why, now);
                    return false;
                }
            },
        };
        if !berth_proto::trust::requires_signed_images(&snapshot, ns) {
            self.memo.trust_failures.remove(key);
            return true;
        }
        let digests = match digests {
            Ok(d) => d,
            Err(e) => {
                let why = format!("cannot read the digests of image {:?}: {e}", c.image);
                self.trust_failed(key, pref, why, now);
                return false;
            }
        };
        match berth_proto::trust::check_image(&snapshot, ns, &c.image, digests.as_deref()) {
            Ok(()) => {
                self.memo.trust_failures.remove(key);
                true
            }
            Err(e) => {
                self.trust_failed(key, pref, e.to_string(), now);
                false
            }
        }
    }

    fn trust_failed(&mut self, key: &Key, pref: &PodRef, message: String, now: Instant) {
        let count = self.memo.trust_failures.entry(key.clone()).or_insert(0);
        *count = count.saturating_add(1);
        let delay = self.cfg.backoff.delay(*count);
        let repeat = self
            .memo
            .create_errors
            .get(key)
            .is_some_and(|e| e.reason == ERR_IMAGE_NOT_TRUSTED && e.message == message);
        if !repeat {
            self.events.warning(pref, "Failed", message.clone());
            self.events.warning(
                pref,
                "Failed",
                format!(
                    "Error: {ERR_IMAGE_NOT_TRUSTED}: container {}",
                    key.container
                ),
            );
        }
        self.memo.create_errors.insert(
            key.clone(),
            CreateError {
                reason: ERR_IMAGE_NOT_TRUSTED.to_string(),
                message,
                retry_at: now + delay,
            },
        );
    }

    /// A pull failed: ErrImagePull now, the next pull after the crash-loop backoff.
    fn pull_failed(&mut self, key: &Key, pref: &PodRef, image: &str, why: String, now: Instant) {
        let f = self
            .memo
            .pull_failures
            .entry(key.clone())
            .or_insert(PullFailures {
                count: 0,
                failed_at: now,
                image: String::new(),
                why: String::new(),
                backing_off: false,
            });
        f.count = f.count.saturating_add(1);
        f.failed_at = now;
        f.backing_off = false;
        f.image = image.to_string();
        f.why = why.clone();
        let delay = self.cfg.backoff.delay(f.count);
        let message = format!("Failed to pull image {image:?}: {why}");
        self.events.warning(pref, "Failed", message.clone());
        self.events
            .warning(pref, "Failed", "Error: ErrImagePull".to_string());
        self.memo.create_errors.insert(
            key.clone(),
            CreateError {
                reason: "ErrImagePull".to_string(),
                message,
                retry_at: now + delay,
            },
        );
    }

    /// ErrImagePull that has been shown for a moment becomes ImagePullBackOff (as the kubelet
    /// does), with a BackOff event.
    fn pull_backoffs(&mut self, desired: &[Pod], now: Instant) {
        for (key, f) in self.memo.pull_failures.iter_mut() {
            if f.backing_off || now < f.failed_at + ERR_IMAGE_PULL_SHOWN {
                continue;
            }
            let Some(err) = self.memo.create_errors.get_mut(key) else {
                continue;
            };
            if err.reason != "ErrImagePull" {
                continue;
            }
            f.backing_off = true;
            let back_off = format!("Back-off pulling image {:?}", f.image);
            err.reason = "ImagePullBackOff".to_string();
            err.message = format!("{back_off}: {}", f.why);
            let Some(pod) = desired.iter().find(|p| p.metadata.uid == key.pod_uid) else {
                continue;
            };
            let pref = pod_ref(pod);
            self.events.normal(&pref, "BackOff", back_off);
            self.events
                .warning(&pref, "Failed", "Error: ImagePullBackOff".to_string());
        }
    }

    fn create_failed(
        &mut self,
        key: &Key,
        pref: &PodRef,
        reason: &str,
        message: String,
        now: Instant,
    ) {
        let repeat = self
            .memo
            .create_errors
            .get(key)
            .is_some_and(|e| e.reason == reason && e.message == message);
        if !repeat {
            self.events.warning(
                pref,
                "Failed",
                format!("Error: {reason}: container {}: {message}", key.container),
            );
        }
        self.memo.create_errors.insert(
            key.clone(),
            CreateError {
                reason: reason.to_string(),
                message,
                retry_at: now + self.cfg.create_retry,
            },
        );
    }

    fn sync_prober(&mut self, desired: &[Pod], observed: &[ContainerInfo]) {
        let mut running = Vec::new();
        for c in observed
            .iter()
            .filter(|c| c.state.is_running() && !self.memo.stopping.contains(&c.id))
        {
            let Some(pod) = desired.iter().find(|p| p.metadata.uid == c.pod_uid) else {
                continue;
            };
            let Some(spec) = find_container(pod, &c.container_name) else {
                continue;
            };
            // A pod on the pod network is probed at its own IP: wait until it is known.
            let host = if self.handler_has_pod_network(pod) {
                match self.written_pod_ip(pod) {
                    Some(ip) => Some(ip),
                    None => continue,
                }
            } else {
                None
            };
            let cid = format!("{}://{}", c.runtime, c.id);
            let reported = pod.status.as_ref().and_then(|s| {
                s.container_statuses
                    .iter()
                    .chain(s.init_container_statuses.iter())
                    .find(|cs| cs.name == c.container_name && cs.container_id == cid)
            });
            running.push(Probed {
                id: c.id.clone(),
                pod: pod_ref(pod),
                container: spec.clone(),
                ports: c.ports.clone(),
                host,
                was_started: reported.is_some_and(|cs| cs.started == Some(true)),
                was_ready: reported.is_some_and(|cs| cs.ready),
            });
        }
        self.prober.sync(running);
    }

    async fn write_statuses(&mut self, desired: &[Pod], observed: &[ContainerInfo]) {
        let wall = chrono::Utc::now();
        let now = Instant::now();
        let mut updates = Vec::new();
        for pod in desired.iter().filter(|p| is_desired(p)) {
            let uid = pod.metadata.uid.clone();
            let mine: Vec<ContainerInfo> = observed
                .iter()
                .filter(|c| c.pod_uid == uid)
                .cloned()
                .collect();
            let ports = self.ports.get(&uid).map(|p| p.to_vec()).unwrap_or_default();
            let pod_ip = if !self.handler_has_pod_network(pod) {
                None
            } else if mine.is_empty() {
                Some(String::new())
            } else {
                Some(self.runtime.pod_ip(&uid).await.unwrap_or_default())
            };
            // Compute against the last status we wrote when the cache has not caught up yet.
            let mut base = pod.clone();
            if let Some(w) = self.last_written.get(&uid) {
                if pod.status.as_ref() != Some(w) {
                    base.status = Some(w.clone());
                }
            }
            let status = {
                let prober = &self.prober;
                let view = |id: &str, c: &Container| prober.view(id, c);
                let inputs = StatusInputs {
                    observed: &mine,
                    memo: &self.memo,
                    view: &view,
                    policy: &self.cfg.backoff,
                    host_ip: &self.cfg.node_address,
                    pod_ip: pod_ip.as_deref(),
                    ports: &ports,
                    now,
                    wall,
                };
                pod_status(&base, &inputs)
            };
            if pod.status.as_ref() == Some(&status) {
                self.last_written.insert(uid, status);
                continue;
            }
            if self.last_written.get(&uid) == Some(&status) {
                continue;
            }
            let mut update = pod.clone();
            update.status = Some(status.clone());
            update.metadata.resource_version = 0;
            updates.push((uid, status, update));
        }
        // Each write is a replicated commit: issue them concurrently (bounded).
        let api = self.api.clone();
        let results: Vec<_> = futures::stream::iter(updates)
            .map(|(uid, status, update)| {
                let api = api.clone();
                async move {
                    let r = api.update_pod_status(&update).await;
                    (uid, status, update.metadata.name, r)
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        for (uid, status, name, r) in results {
            match r {
                Ok(_) => {
                    self.last_written.insert(uid, status);
                }
                Err(ApiError::NotFound) => {}
                Err(e) => {
                    tracing::debug!(pod = %name, error = %e, "writing pod status (retried next round)")
                }
            }
        }
    }

    fn emit_backoff_events(&mut self, desired: &[Pod], observed: &[ContainerInfo]) {
        let due = backoff_events(desired, observed, &self.memo, Instant::now());
        self.memo.backoff_emitted(&due);
        for e in due {
            if let Some(pod) = desired.iter().find(|p| p.metadata.uid == e.key.pod_uid) {
                self.events.warning(&pod_ref(pod), "BackOff", e.message);
            }
        }
    }

    /// The pod's volumes set up on the node and container `c`'s mounts of them.
    async fn pod_mounts(
        &self,
        pod: &Pod,
        c: &berth_proto::types::Container,
    ) -> Result<Vec<crate::runtime::Mount>, String> {
        let Some(vols) = &self.cfg.volumes else {
            return Err("this agent has no data directory for pod volumes".into());
        };
        let prepared = vols.prepare(self.api.as_ref(), pod).await?;
        let mut mounts = crate::volumes::Volumes::mounts(c, &prepared)?;
        // A claim mounted with `persistentVolumeClaim.readOnly` is read-only in every container.
        for (m, vm) in mounts.iter_mut().zip(&c.volume_mounts) {
            let read_only_claim = pod.spec.volumes.iter().any(|v| {
                v.name == vm.name
                    && v.persistent_volume_claim
                        .as_ref()
                        .is_some_and(|p| p.read_only == Some(true))
            });
            m.read_only |= read_only_claim;
        }
        Ok(mounts)
    }

    /// Keep configMap/secret volume files current (every [`VOLUME_REFRESH`]) and remove the
    /// volumes of pods that are gone.
    async fn maintain_volumes(&mut self, desired: &[Pod], observed: &[ContainerInfo]) {
        let Some(vols) = self.cfg.volumes.clone() else {
            return;
        };
        let now = Instant::now();
        if self
            .last_volume_pass
            .is_some_and(|t| now - t < VOLUME_REFRESH)
        {
            return;
        }
        self.last_volume_pass = Some(now);
        for pod in desired.iter().filter(|p| is_desired(p)) {
            if crate::volumes::Volumes::has_projections(pod) {
                vols.refresh(self.api.as_ref(), pod).await;
            }
        }
        let keep = live_pods(desired, observed);
        vols.remove_others(&keep);
        vols.reclaim(self.api.as_ref()).await;
    }

    /// The container's `envFrom` and `env`, resolved (see [`crate::podenv`]); Err: why it
    /// cannot start yet (kubelet's CreateContainerConfigError message, never a value).
    async fn container_env(
        &mut self,
        pod: &Pod,
        c: &berth_proto::types::Container,
        networked: bool,
        spec: &ContainerSpec,
    ) -> Result<Vec<(String, String)>, String> {
        use crate::podenv::{resolve, Addresses, Sources};
        let plain = c.env_from.is_empty() && c.env.iter().all(|e| e.value_from.is_none());
        if plain {
            return Ok(c
                .env
                .iter()
                .map(|e| (e.name.clone(), e.value.clone()))
                .collect());
        }
        let sources = Sources::fetch(self.api.as_ref(), &pod.metadata.namespace, c)
            .await
            .map_err(|e| format!("reading the pod's ConfigMaps and Secrets: {e}"))?;
        let wants_pod_ip = c.env.iter().any(|e| {
            e.value_from
                .as_ref()
                .and_then(|s| s.field_ref.as_ref())
                .is_some_and(|f| f.field_path.starts_with("status.podIP"))
        });
        let pod_ip = if !networked {
            self.cfg.node_address.clone()
        } else if let Some(ip) = self.runtime.pod_ip(&pod.metadata.uid).await {
            ip
        } else if wants_pod_ip {
            self.runtime
                .ensure_pod_sandbox(spec)
                .await
                .map_err(|e| format!("making the pod sandbox for status.podIP: {e}"))?
                .unwrap_or_default()
        } else {
            String::new()
        };
        let addrs = Addresses {
            pod_ip: &pod_ip,
            host_ip: &self.cfg.node_address,
        };
        let (env, skipped) = resolve(pod, c, &sources, &addrs).map_err(|e| e.0)?;
        if !skipped.is_empty() {
            self.events.warning(
                &pod_ref(pod),
                "InvalidEnvironmentVariableNames",
                format!(
                    "Keys [{}] from envFrom of container {} were skipped since they are considered invalid environment variable names.",
                    skipped.join(", "),
                    c.name
                ),
            );
        }
        Ok(env)
    }

    /// A pod whose sandbox stopped (killed, or the engine restarted it without its network)
    /// has lost its address: its running containers sit in a dead network namespace. Stop
    /// them, as the kubelet does on "SandboxChanged"; they are started again in a new
    /// sandbox, with a new pod IP, by the usual restart path.
    async fn restart_lost_sandboxes(&mut self, desired: &[Pod], observed: &[ContainerInfo]) {
        let lost = match self.runtime.lost_sandboxes().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "checking the pod sandboxes (retried)");
                return;
            }
        };
        for uid in lost {
            let Some(pod) = desired.iter().find(|p| p.metadata.uid == uid) else {
                continue;
            };
            let running: Vec<&ContainerInfo> = observed
                .iter()
                .filter(|c| c.pod_uid == uid && matches!(c.state, RunState::Running { .. }))
                .collect();
            if running.is_empty() {
                continue; // the next start makes a new sandbox
            }
            tracing::info!(pod = %pod.metadata.name, containers = running.len(), "pod sandbox lost; restarting the pod's containers in a new one");
            self.events.normal(
                &pod_ref(pod),
                "SandboxChanged",
                "Pod sandbox changed, it will be killed and re-created.".to_string(),
            );
            for c in running {
                self.spawn_stop(c.id.clone(), grace_of(pod), false);
            }
        }
    }

    /// Remove the sandboxes of pods that are gone (no longer wanted here, no container left):
    /// after a round that changed something, and every [`SANDBOX_GC`] otherwise.
    async fn remove_sandboxes(
        &mut self,
        desired: &[Pod],
        observed: &[ContainerInfo],
        changed: bool,
    ) {
        let now = Instant::now();
        if !changed && self.last_sandbox_gc.is_some_and(|t| now - t < SANDBOX_GC) {
            return;
        }
        self.last_sandbox_gc = Some(now);
        let keep = live_pods(desired, observed);
        if let Err(e) = self.runtime.remove_sandboxes(&keep).await {
            tracing::warn!(error = %e, "removing pod sandboxes (retried)");
        }
    }

    fn cleanup(&mut self, desired: &[Pod], observed: &[ContainerInfo]) {
        let live = live_pods(desired, observed);
        for uid in self.ports.pods() {
            if !live.contains(&uid) {
                self.ports.release(&uid);
            }
        }
        let wanted: BTreeSet<&str> = desired.iter().map(|p| p.metadata.uid.as_str()).collect();
        self.memo
            .crash
            .retain(|k, _| wanted.contains(k.pod_uid.as_str()));
        self.memo
            .create_errors
            .retain(|k, _| wanted.contains(k.pod_uid.as_str()));
        self.memo
            .backoff_events
            .retain(|k, _| wanted.contains(k.pod_uid.as_str()));
        self.memo
            .pulling
            .retain(|k, _| wanted.contains(k.pod_uid.as_str()));
        self.memo
            .pull_failures
            .retain(|k, _| wanted.contains(k.pod_uid.as_str()));
        self.memo
            .trust_failures
            .retain(|k, _| wanted.contains(k.pod_uid.as_str()));
        let namespaces: BTreeSet<&str> = desired
            .iter()
            .map(|p| p.metadata.namespace.as_str())
            .collect();
        self.trust_cache
            .retain(|(ns, _), _| namespaces.contains(ns.as_str()));
        self.trust_policy
            .retain(|ns, _| namespaces.contains(ns.as_str()));
        self.last_written.retain(|k, _| wanted.contains(k.as_str()));
    }

    /// Host ports currently allocated to a pod.
    pub fn ports_of(&self, uid: &str) -> Option<Vec<crate::runtime::PortBinding>> {
        self.ports.get(uid).map(|p| p.to_vec())
    }
}

#[cfg(test)]
#[path = "podsync_tests.rs"]
mod tests;
