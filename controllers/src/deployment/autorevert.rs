//! Auto-revert of a failed RollingUpdate: `spec.strategy.rollingUpdate.autoRevert: true`
//! (named after Nomad's `auto_revert`), with an optional early threshold
//! (`autoRevertFailedPods` new pods failing for `autoRevertFailedSeconds`).
//!
//! A rollout fails when `progressDeadlineSeconds` passes without progress, or sooner when the
//! threshold is met: a new pod counts as failing once it has been crash-looping, failing to
//! pull its image, or running without passing readiness for `autoRevertFailedSeconds`.
//! Restarts keep the clock running (a pod that flaps between ready and crashing is judged from
//! its creation), a pod that is ready now never counts, and pods that are only waiting for a
//! node or still creating their containers count only through the progress deadline.
//!
//! On failure the plan marks the failed ReplicaSet ([`ROLLOUT_FAILED_ANNOTATION`]: the durable
//! record `rollout history` shows, and that keeps the same template from being rolled out
//! again), records one Event, and from then on rolls *toward the previous revision* with the
//! RollingUpdate step itself: the previous revision is scaled up first within maxSurge, then
//! the failed one down, unavailable pods first, never below `replicas - maxUnavailable`
//! available. Only a changed template (or `berth rollout restart`, which changes it) starts a
//! new rollout. The whole module is pure: [`step`] reads the ReplicaSets, the new revision's
//! pods and the stored status, and returns actions and the `Reverted` condition to write.

use std::time::Duration;

use berth_proto::enums::{REVERTED_CONDITION, ROLLOUT_FAILED_ANNOTATION, TEMPLATE_HASH_LABEL};
use berth_proto::types::*;
use berth_proto::StrategyType;

use super::{Action, Rs};

/// How long a new pod must keep failing before it counts, when the threshold is set without
/// `autoRevertFailedSeconds`.
pub const DEFAULT_FAILED_SECONDS: i32 = 30;

/// The condition reason (and Event reason) of a reverted rollout.
pub const REVERTED_REASON: &str = "RolloutReverted";

/// Container waiting reasons that mean the revision itself is broken.
const BROKEN: &[&str] = &[
    "CrashLoopBackOff",
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// A Deployment's auto-revert settings (None: not enabled, or not a RollingUpdate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Fail as soon as this many new pods are failing (None: only the progress deadline).
    pub failed_pods: Option<i32>,
    /// How long a new pod must keep failing before it counts.
    pub failed_after: chrono::Duration,
}

pub fn settings(d: &Deployment) -> Option<Settings> {
    if d.spec.strategy_type() != StrategyType::RollingUpdate {
        return None;
    }
    let ru = d.spec.strategy.as_ref()?.rolling_update.as_ref()?;
    ru.auto_revert.then(|| Settings {
        failed_pods: ru.auto_revert_failed_pods.map(|n| n.max(1)),
        failed_after: chrono::Duration::seconds(i64::from(
            ru.auto_revert_failed_seconds
                .unwrap_or(DEFAULT_FAILED_SECONDS)
                .max(0),
        )),
    })
}

/// A new pod that is not serving, and why: `reason` is the container's waiting reason
/// (CrashLoopBackOff, ErrImagePull, ...) or `ReadinessFailing`; it has been so since `since`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unhealthy {
    pub pod: String,
    pub reason: String,
    pub since: Time,
}

/// Judge one pod of the new revision: None when it is ready, finished, being deleted, or only
/// waiting to be scheduled or created (not the revision's fault, as far as anyone can tell).
pub fn unhealthy(p: &Pod) -> Option<Unhealthy> {
    if p.metadata.deletion_timestamp.is_some() || p.is_terminal() || p.is_ready() {
        return None;
    }
    let st = p.status.as_ref()?;
    let created = p
        .metadata
        .creation_timestamp
        .or(st.start_time)
        .unwrap_or_default();
    let statuses = || {
        st.init_container_statuses
            .iter()
            .chain(st.container_statuses.iter())
    };
    let restarted = statuses().any(|c| c.restart_count > 0);
    let waiting = statuses()
        .filter_map(|c| c.state.waiting.as_ref())
        .find(|w| BROKEN.contains(&w.reason.as_str()))
        .map(|w| w.reason.clone());
    let reason = match waiting {
        Some(r) => r,
        // Running again after a crash: the same crash loop, between two backoffs.
        None if restarted => "CrashLoopBackOff".to_string(),
        None => {
            let running = !st.container_statuses.is_empty()
                && st
                    .container_statuses
                    .iter()
                    .all(|c| c.state.running.is_some());
            if !running {
                return None;
            }
            "ReadinessFailing".to_string()
        }
    };
    // A crash loop or a pull failure is judged from the pod's creation: flapping between
    // ready and crashed does not reset the clock. Readiness alone from when it last changed.
    let since = if reason == "ReadinessFailing" {
        condition(&st.conditions, "Ready")
            .filter(|c| !c.is_true())
            .and_then(|c| c.last_transition_time)
            .unwrap_or(created)
            .max(created)
    } else {
        created
    };
    Some(Unhealthy {
        pod: p.metadata.name.clone(),
        reason,
        since,
    })
}

/// Why a rollout failed: what the Event and the `Reverted` condition say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// CrashLoopBackOff, ImagePullBackOff, ReadinessFailing, ProgressDeadlineExceeded, ...
    pub reason: String,
    /// The failing new pods, by name.
    pub pods: Vec<String>,
}

/// Has the new revision failed? `deadline_exceeded`: the stored Progressing condition says
/// its progress deadline passed. Returns the failure, or when to look again (the moment the
/// next unhealthy pod crosses `failed_after`).
pub fn detect(
    s: &Settings,
    pods: &[Pod],
    deadline_exceeded: bool,
    now: Time,
) -> (Option<Failure>, Option<Duration>) {
    let mut bad: Vec<Unhealthy> = pods.iter().filter_map(unhealthy).collect();
    bad.sort_by(|a, b| a.since.cmp(&b.since).then(a.pod.cmp(&b.pod)));
    let (failing, pending): (Vec<&Unhealthy>, Vec<&Unhealthy>) =
        bad.iter().partition(|u| now - u.since >= s.failed_after);
    let summarize = |list: &[&Unhealthy], fallback: &str| Failure {
        reason: dominant_reason(list).unwrap_or_else(|| fallback.to_string()),
        pods: list.iter().map(|u| u.pod.clone()).collect(),
    };
    if deadline_exceeded {
        let all: Vec<&Unhealthy> = bad.iter().collect();
        return (Some(summarize(&all, "ProgressDeadlineExceeded")), None);
    }
    let Some(threshold) = s.failed_pods else {
        return (None, None);
    };
    if failing.len() >= usize::try_from(threshold).unwrap_or(1) {
        return (Some(summarize(&failing, "ReadinessFailing")), None);
    }
    let next = pending
        .iter()
        .map(|u| u.since + s.failed_after - now)
        .min()
        .and_then(|d| d.to_std().ok())
        .map(|d| d + Duration::from_millis(50));
    (None, next)
}

/// The most common reason among the pods (ties: the earliest failing pod's).
fn dominant_reason(list: &[&Unhealthy]) -> Option<String> {
    let mut best: Option<(&str, usize)> = None;
    for u in list {
        let n = list.iter().filter(|v| v.reason == u.reason).count();
        if best.is_none_or(|(_, m)| n > m) {
            best = Some((&u.reason, n));
        }
    }
    best.map(|(r, _)| r.to_string())
}

/// The revert in progress (or done), for the status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reverted {
    /// The failed revision's ReplicaSet and number.
    pub failed_rs: String,
    pub failed_revision: i64,
    /// The revision traffic goes back to.
    pub stable_rs: String,
    pub stable_revision: i64,
    /// Why, as recorded on the failed ReplicaSet: `REASON: detail`.
    pub record: String,
}

impl Reverted {
    pub fn reason(&self) -> &str {
        self.record
            .split_once(':')
            .map(|(r, _)| r.trim())
            .unwrap_or(&self.record)
    }

    pub fn condition(&self, now: Time) -> Condition {
        Condition::new(
            REVERTED_CONDITION,
            true,
            self.reason(),
            &format!(
                "Rollout of revision {} (ReplicaSet \"{}\") failed ({}); reverted to revision \
                 {} (ReplicaSet \"{}\"). Change the template or run `berth rollout restart` to \
                 try again.",
                self.failed_revision,
                self.failed_rs,
                self.record,
                self.stable_revision,
                self.stable_rs
            ),
            now,
        )
    }
}

/// What [`step`] decided.
#[derive(Debug, Default)]
pub struct Outcome {
    pub actions: Vec<Action>,
    /// Some: the current template's revision failed; the sets were stepped toward the
    /// previous revision (the caller must not run the normal RollingUpdate step).
    pub reverted: Option<Reverted>,
    /// Look again then (an unhealthy pod reaching the threshold).
    pub requeue_after: Option<Duration>,
}

/// The revision to go back to: the newest one older than `failed` that did not fail itself.
fn stable_index(sets: &[Rs], failed: usize) -> Option<usize> {
    sets.iter()
        .enumerate()
        .filter(|(i, s)| {
            *i != failed && s.failed.is_none() && s.revision < sets[failed].revision && !s.new
        })
        .max_by_key(|(_, s)| s.revision)
        .map(|(i, _)| i)
}

/// The stored Progressing condition says `rs_name` finished (`NewReplicaSetAvailable`) or
/// timed out (`ProgressDeadlineExceeded`)?
fn progressing_says(d: &Deployment, reason: &str, rs_name: &str) -> bool {
    d.status
        .as_ref()
        .and_then(|st| condition(&st.conditions, "Progressing"))
        .is_some_and(|c| c.reason == reason && c.message.contains(&format!("\"{rs_name}\"")))
}

/// One auto-revert pass over a RollingUpdate. `pods`: the Deployment's pods (any revision).
pub(super) fn step(
    d: &Deployment,
    sets: &mut [Rs],
    new_idx: Option<usize>,
    pods: &[Pod],
    replicas: i32,
    now: Time,
) -> Outcome {
    let mut out = Outcome::default();
    let Some(ni) = new_idx else { return out };
    let failed_record = match sets[ni].failed.clone() {
        // Marked before: keep reverting (never judged, never announced again).
        Some(record) => record,
        None => {
            let Some(s) = settings(d) else { return out };
            if stable_index(sets, ni).is_none() {
                return out;
            }
            let new = &sets[ni];
            let others_idle = sets
                .iter()
                .enumerate()
                .all(|(i, o)| i == ni || (o.replicas == 0 && o.pods == 0));
            // Finished: every older revision is gone. Pods failing later are not a failed
            // rollout (as with Nomad, auto-revert applies to an update in progress).
            let complete = progressing_says(d, "NewReplicaSetAvailable", &new.name)
                || (new.replicas == replicas && others_idle);
            if complete {
                return out;
            }
            let mine: Vec<Pod> = pods
                .iter()
                .filter(|p| p.metadata.labels.get(TEMPLATE_HASH_LABEL) == Some(&new.hash))
                .cloned()
                .collect();
            let deadline = progressing_says(d, "ProgressDeadlineExceeded", &new.name);
            let (failure, requeue) = detect(&s, &mine, deadline, now);
            out.requeue_after = requeue;
            let Some(f) = failure else { return out };
            let detail = if f.pods.is_empty() {
                "no new pod became available within progressDeadlineSeconds".to_string()
            } else {
                format!("pods {}", f.pods.join(", "))
            };
            let record = format!("{}: {detail}", f.reason);
            let name = new.name.clone();
            sets[ni].failed = Some(record.clone());
            out.actions.push(Action::MarkRevisionFailed {
                name,
                record: record.clone(),
            });
            let si = stable_index(sets, ni).unwrap_or(ni);
            out.actions.push(Action::event(
                "Warning",
                REVERTED_REASON,
                format!(
                    "Rollout of revision {} (ReplicaSet \"{}\") failed ({record}); reverting to \
                     revision {} (ReplicaSet \"{}\")",
                    sets[ni].revision, sets[ni].name, sets[si].revision, sets[si].name
                ),
            ));
            record
        }
    };
    let Some(si) = stable_index(sets, ni) else {
        // Nothing to go back to (its ReplicaSet was deleted): hold the sizes as they are.
        return out;
    };
    out.requeue_after = None;
    super::rolling(d, sets, Some(si), replicas);
    out.reverted = Some(Reverted {
        failed_rs: sets[ni].name.clone(),
        failed_revision: sets[ni].revision,
        stable_rs: sets[si].name.clone(),
        stable_revision: sets[si].revision,
        record: failed_record,
    });
    out
}

/// The failed-revision record of a ReplicaSet, if its rollout was reverted.
pub fn failed_record(rs: &ReplicaSet) -> Option<String> {
    rs.metadata
        .annotations
        .get(ROLLOUT_FAILED_ANNOTATION)
        .cloned()
}

#[cfg(test)]
#[path = "autorevert_tests.rs"]
mod tests;
