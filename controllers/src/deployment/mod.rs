//! The Deployment controller's pure core: `plan(deployment, its replica sets, now) -> Plan`.
//!
//! A Deployment owns one ReplicaSet per revision of its pod template, told apart by the
//! `pod-template-hash` label (a stable hash of the template) and numbered by the
//! `deployment.kubernetes.io/revision` annotation. Each pass moves the ReplicaSet sizes one step
//! toward the strategy's goal (RollingUpdate within maxSurge/maxUnavailable, Recreate, or
//! BlueGreen, see [`bluegreen`]), prunes revisions beyond `revisionHistoryLimit`, and computes
//! the Deployment's status and conditions. The shell applies the plan with resourceVersion
//! preconditions; the next event re-plans from what actually happened (level-triggered).
//!
//! Before it creates a new ReplicaSet the shell pins its cluster-registry tags to their current
//! digests ([`pin_images`]): a revision runs the same bytes for its whole life, on every node.

pub mod autorevert;
pub mod bluegreen;

use std::collections::BTreeMap;
use std::time::Duration;

use berth_proto::image::{ImageRef, IMAGE_DIGESTS_ANNOTATION};
use berth_proto::types::*;
use berth_proto::{BlueGreenPhase, StrategyType};

// The names live in proto (the CLI and bench share them); re-exported for the loop's shell.
// PROMOTE/ABORT are written by `berth rollout promote|abort` and cleared here once acted on.
pub use berth_proto::enums::{
    revision, ABORT_ANNOTATION, PROMOTE_ANNOTATION, REVISION_ANNOTATION, TEMPLATE_HASH_LABEL,
};

pub const DEFAULT_PROGRESS_DEADLINE_SECONDS: i64 = 600;
pub const DEFAULT_REVISION_HISTORY_LIMIT: usize = 10;

/// One change the shell must make.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    CreateReplicaSet(Box<ReplicaSet>),
    /// Set `spec.replicas` (and the revision annotation when `revision` is given).
    UpdateReplicaSet {
        name: String,
        replicas: i32,
        revision: Option<i64>,
    },
    DeleteReplicaSet {
        name: String,
    },
    /// Set the Service's `pod-template-hash` selector to `hash` in one write.
    PointService {
        service: String,
        hash: String,
    },
    /// Remove an annotation from the Deployment (a consumed promote/abort request).
    RemoveAnnotation {
        key: String,
    },
    Event {
        type_: String,
        reason: String,
        message: String,
    },
    /// Record on a ReplicaSet that its rollout failed and was reverted
    /// ([`berth_proto::enums::ROLLOUT_FAILED_ANNOTATION`] = `record`), see [`autorevert`].
    MarkRevisionFailed {
        name: String,
        record: String,
    },
}

impl Action {
    fn event(type_: &str, reason: &str, message: impl Into<String>) -> Action {
        Action::Event {
            type_: type_.into(),
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// The result of one planning pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// The status to write (the shell skips the write when it equals the stored one).
    pub status: DeploymentStatus,
    /// Re-plan after this long even without events (deadlines, timers).
    pub requeue_after: Option<Duration>,
}

/// A stable, short, label-safe hash of a pod template (FNV-1a over its canonical JSON).
pub fn template_hash(t: &PodTemplateSpec) -> String {
    let bytes = serde_json::to_vec(t).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // Kubernetes' alphabet: no vowels (no words), no look-alikes.
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut out = String::with_capacity(10);
    for _ in 0..10 {
        out.push(ALPHABET[(h % ALPHABET.len() as u64) as usize] as char);
        h /= ALPHABET.len() as u64;
    }
    out
}

pub fn rs_hash(rs: &ReplicaSet) -> &str {
    rs.metadata
        .labels
        .get(TEMPLATE_HASH_LABEL)
        .map(String::as_str)
        .unwrap_or("")
}

fn rs_status(rs: &ReplicaSet) -> ReplicaSetStatus {
    rs.status.clone().unwrap_or_default()
}

pub fn desired_replicas(d: &Deployment) -> i32 {
    d.spec.replicas.unwrap_or(1).max(0)
}

/// The strategy type with its default.
pub fn strategy_type(d: &Deployment) -> StrategyType {
    d.spec.strategy_type()
}

/// (maxSurge, maxUnavailable) resolved against the replica count, Kubernetes-style: surge
/// rounds up, unavailable rounds down, and both zero means maxUnavailable 1.
pub fn surge_and_unavailable(d: &Deployment) -> (i32, i32) {
    let replicas = i64::from(desired_replicas(d));
    if strategy_type(d) != StrategyType::RollingUpdate {
        return (0, 0);
    }
    let ru = d
        .spec
        .strategy
        .as_ref()
        .and_then(|s| s.rolling_update.clone())
        .unwrap_or_default();
    let quarter = IntOrString::String("25%".into());
    let surge = ru
        .max_surge
        .as_ref()
        .unwrap_or(&quarter)
        .scaled_value(replicas, true)
        .unwrap_or(0)
        .max(0);
    let unavailable = ru
        .max_unavailable
        .as_ref()
        .unwrap_or(&quarter)
        .scaled_value(replicas, false)
        .unwrap_or(0)
        .clamp(0, replicas);
    let clamp = |v: i64| i32::try_from(v).unwrap_or(i32::MAX);
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (clamp(surge), clamp(unavailable))
    }
}

/// The ReplicaSet for revision `revision` of the Deployment's current template.
pub fn new_replica_set(d: &Deployment, hash: &str, replicas: i32, revision: i64) -> ReplicaSet {
    let mut template = d.spec.template.clone();
    template
        .metadata
        .labels
        .insert(TEMPLATE_HASH_LABEL.into(), hash.into());
    let mut selector = d.spec.selector.clone();
    selector
        .match_labels
        .insert(TEMPLATE_HASH_LABEL.into(), hash.into());
    let mut labels = d.spec.template.metadata.labels.clone();
    labels.insert(TEMPLATE_HASH_LABEL.into(), hash.into());
    ReplicaSet {
        metadata: ObjectMeta {
            name: format!("{}-{}", d.metadata.name, hash),
            namespace: d.metadata.namespace.clone(),
            labels,
            annotations: BTreeMap::from([(REVISION_ANNOTATION.into(), revision.to_string())]),
            owner_references: vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: "Deployment".into(),
                name: d.metadata.name.clone(),
                uid: d.metadata.uid.clone(),
                controller: true,
            }],
            ..Default::default()
        },
        spec: ReplicaSetSpec {
            replicas,
            selector,
            template,
            min_ready_seconds: d.spec.min_ready_seconds,
        },
        ..Default::default()
    }
}

/// Is `r` a tag (no digest) of the cluster registry: named without a registry (the agents try
/// the cluster registry first for those) or with one of `registry_hosts` (the addresses the
/// cluster registry is reached by)? Returns the registry's repository and tag.
pub fn cluster_tag(r: &ImageRef, registry_hosts: &[String]) -> Option<(String, String)> {
    if r.digest.is_some() {
        return None;
    }
    let ours = match &r.domain {
        None => true,
        Some(d) => registry_hosts.iter().any(|h| h == d),
    };
    ours.then(|| {
        (
            r.repository.clone(),
            r.tag_or_latest().unwrap_or("latest").to_string(),
        )
    })
}

/// The cluster-registry tags a template's containers name (repository, tag), deduplicated:
/// what the shell reads from the store before it creates a new ReplicaSet.
pub fn cluster_tags(t: &PodTemplateSpec, registry_hosts: &[String]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = t
        .spec
        .containers
        .iter()
        .chain(t.spec.init_containers.iter())
        .filter_map(|c| ImageRef::parse(&c.image).ok())
        .filter_map(|r| cluster_tag(&r, registry_hosts))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Pin a NEW ReplicaSet's images: each container whose image is a cluster-registry tag that
/// `digest_of(repository, tag)` resolves is recorded as `REPO:TAG@sha256:...` in
/// [`IMAGE_DIGESTS_ANNOTATION`]. The template itself keeps the user's images (its hash, and
/// `rollout undo` copying it back, must match the Deployment's template). Images by digest,
/// external images and tags the registry does not have are left as written (their pods pull
/// the tag as they would unpinned: from Docker Hub, or ErrImagePull when nobody has it). Called once, at creation: a ReplicaSet's pins never
/// change, so scaling it later runs the same bytes everywhere; a changed template (including
/// `rollout restart`) makes a new ReplicaSet and resolves again.
pub fn pin_images(
    rs: &mut ReplicaSet,
    registry_hosts: &[String],
    mut digest_of: impl FnMut(&str, &str) -> Option<String>,
) {
    let mut pins = BTreeMap::new();
    let spec = &rs.spec.template.spec;
    for c in spec.containers.iter().chain(spec.init_containers.iter()) {
        let Ok(r) = ImageRef::parse(&c.image) else {
            continue;
        };
        let Some((repo, tag)) = cluster_tag(&r, registry_hosts) else {
            continue;
        };
        if let Some(d) = digest_of(&repo, &tag) {
            pins.insert(c.name.clone(), r.pinned(&d).to_string());
        }
    }
    if pins.is_empty() {
        rs.metadata.annotations.remove(IMAGE_DIGESTS_ANNOTATION);
    } else if let Ok(v) = serde_json::to_string(&pins) {
        rs.metadata
            .annotations
            .insert(IMAGE_DIGESTS_ANNOTATION.into(), v);
    }
}

/// Working view of one ReplicaSet during planning: its planned size and observed counts.
#[derive(Debug, Clone)]
struct Rs {
    name: String,
    hash: String,
    revision: i64,
    created: Option<Time>,
    /// Planned spec.replicas (starts as the stored one).
    replicas: i32,
    original: i32,
    /// Pods that exist (status.replicas), ready, available.
    pods: i32,
    ready: i32,
    available: i32,
    new: bool,
    /// The failed-rollout record, when this revision was reverted ([`autorevert`]).
    failed: Option<String>,
}

impl Rs {
    fn from(rs: &ReplicaSet) -> Rs {
        let st = rs_status(rs);
        Rs {
            name: rs.metadata.name.clone(),
            hash: rs_hash(rs).to_string(),
            revision: revision(rs),
            created: rs.metadata.creation_timestamp,
            replicas: rs.spec.replicas,
            original: rs.spec.replicas,
            pods: st.replicas,
            ready: st.ready_replicas,
            available: st.available_replicas,
            new: false,
            failed: autorevert::failed_record(rs),
        }
    }
}

/// Plan one pass for `d` given the ReplicaSets it controls (without its pods: no early
/// auto-revert detection, see [`plan_with_pods`]; no traffic-switch barrier).
pub fn plan(d: &Deployment, owned: &[ReplicaSet], now: Time) -> Plan {
    plan_with_pods(d, owned, &[], now)
}

/// Plan one pass for `d` given the ReplicaSets it controls and their pods (read only by
/// [`autorevert`], to judge the new revision's pods), with no traffic-switch barrier.
pub fn plan_with_pods(d: &Deployment, owned: &[ReplicaSet], pods: &[Pod], now: Time) -> Plan {
    plan_full(
        d,
        owned,
        pods,
        &bluegreen::always_switched,
        &bluegreen::always_switched,
        now,
    )
}

/// [`plan`] with the blue-green traffic-switch barrier of the active and preview Services
/// (see [`bluegreen::Switch`]).
pub fn plan_with(
    d: &Deployment,
    owned: &[ReplicaSet],
    active_switch: &dyn Fn(&str) -> bluegreen::Switch,
    preview_switch: &dyn Fn(&str) -> bluegreen::Switch,
    now: Time,
) -> Plan {
    plan_full(d, owned, &[], active_switch, preview_switch, now)
}

/// One pass for `d`: its ReplicaSets, their pods (for [`autorevert`]) and the blue-green
/// traffic-switch barrier of the active and preview Services.
pub fn plan_full(
    d: &Deployment,
    owned: &[ReplicaSet],
    pods: &[Pod],
    active_switch: &dyn Fn(&str) -> bluegreen::Switch,
    preview_switch: &dyn Fn(&str) -> bluegreen::Switch,
    now: Time,
) -> Plan {
    let hash = template_hash(&d.spec.template);
    let replicas = desired_replicas(d);
    let mut actions = Vec::new();

    let mut sets: Vec<Rs> = owned.iter().map(Rs::from).collect();
    // Oldest first: scale-downs take from the oldest revisions.
    sets.sort_by(|a, b| {
        a.revision
            .cmp(&b.revision)
            .then(a.created.cmp(&b.created))
            .then(a.name.cmp(&b.name))
    });
    let max_revision = sets.iter().map(|s| s.revision).max().unwrap_or(0);
    let mut new_idx = sets.iter().position(|s| s.hash == hash);

    // A template that matches an older revision (rollback) becomes the newest revision again.
    if let Some(i) = new_idx {
        if sets[i].revision < max_revision {
            sets[i].revision = max_revision + 1;
            actions.push(Action::UpdateReplicaSet {
                name: sets[i].name.clone(),
                replicas: sets[i].replicas,
                revision: Some(max_revision + 1),
            });
        }
    }

    let mut requeue_after = None;
    let mut bg_status = None;
    let mut reverted = None;
    if d.spec.paused {
        // Paused: no rollout step. Scaling still applies when a single revision runs (a
        // paused rollout keeps its revisions' sizes as they are).
        if let Some(i) = new_idx {
            let only = sets
                .iter()
                .enumerate()
                .all(|(j, s)| j == i || s.replicas == 0);
            if only && sets[i].replicas != replicas && strategy_type(d) != StrategyType::BlueGreen {
                sets[i].replicas = replicas;
                actions.push(Action::UpdateReplicaSet {
                    name: sets[i].name.clone(),
                    replicas,
                    revision: None,
                });
            }
        }
    } else {
        let strategy = strategy_type(d);
        // The new revision is created at the size the strategy allows right now.
        if new_idx.is_none() {
            let initial = match strategy {
                StrategyType::Recreate => {
                    if sets.iter().any(|s| s.replicas > 0 || s.pods > 0) {
                        None
                    } else {
                        Some(replicas)
                    }
                }
                StrategyType::BlueGreen => Some(replicas),
                StrategyType::RollingUpdate => {
                    let (surge, _) = surge_and_unavailable(d);
                    let total: i32 = sets.iter().map(|s| s.replicas).sum();
                    Some((replicas + surge - total).clamp(0, replicas))
                }
            };
            if let Some(initial) = initial {
                let rs = new_replica_set(d, &hash, initial, max_revision + 1);
                actions.push(Action::CreateReplicaSet(Box::new(rs.clone())));
                let mut w = Rs::from(&rs);
                w.created = Some(now);
                w.original = initial;
                w.new = true;
                sets.push(w);
                new_idx = Some(sets.len() - 1);
            }
        }
        match strategy {
            StrategyType::Recreate => recreate(&mut sets, new_idx, replicas),
            StrategyType::BlueGreen => {
                let out = bluegreen::plan_with(
                    d,
                    &hash,
                    &mut sets_view(&mut sets),
                    active_switch,
                    preview_switch,
                    now,
                );
                actions.extend(out.actions);
                requeue_after = out.requeue_after;
                bg_status = Some(out.status);
            }
            StrategyType::RollingUpdate => {
                let out = autorevert::step(d, &mut sets, new_idx, pods, replicas, now);
                actions.extend(out.actions);
                requeue_after = out.requeue_after;
                reverted = out.reverted;
                if reverted.is_none() {
                    rolling(d, &mut sets, new_idx, replicas);
                }
            }
        }
        for s in &sets {
            if !s.new && s.replicas != s.original {
                // Merge with an earlier revision bump of the same set.
                if let Some(Action::UpdateReplicaSet { replicas, .. }) = actions
                    .iter_mut()
                    .find(|a| matches!(a, Action::UpdateReplicaSet { name, .. } if *name == s.name))
                {
                    *replicas = s.replicas;
                } else {
                    actions.push(Action::UpdateReplicaSet {
                        name: s.name.clone(),
                        replicas: s.replicas,
                        revision: None,
                    });
                }
            }
        }
        if let Some(Action::CreateReplicaSet(rs)) = actions
            .iter_mut()
            .find(|a| matches!(a, Action::CreateReplicaSet(_)))
        {
            if let Some(s) = sets.iter().find(|s| s.new) {
                rs.spec.replicas = s.replicas;
            }
        }
    }

    // Revision history: delete the oldest fully scaled-down revisions beyond the limit.
    let limit = d
        .spec
        .revision_history_limit
        .map(|l| usize::try_from(l).unwrap_or(0))
        .unwrap_or(DEFAULT_REVISION_HISTORY_LIMIT);
    let keep: Vec<&str> = protected_hashes(d, &hash);
    let idle: Vec<&Rs> = sets
        .iter()
        .filter(|s| !s.new && s.hash != hash && !keep.contains(&s.hash.as_str()))
        .filter(|s| s.replicas == 0 && s.pods == 0)
        .collect();
    if idle.len() > limit {
        for s in &idle[..idle.len() - limit] {
            actions.push(Action::DeleteReplicaSet {
                name: s.name.clone(),
            });
        }
    }

    let (status, deadline_requeue) =
        compute_status(d, &sets, &hash, &actions, bg_status, reverted.as_ref(), now);
    let requeue_after = match (requeue_after, deadline_requeue) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Plan {
        actions,
        status,
        requeue_after,
    }
}

/// Hashes blue-green still needs even at zero replicas (never pruned).
fn protected_hashes<'a>(d: &'a Deployment, _current: &str) -> Vec<&'a str> {
    d.status
        .as_ref()
        .and_then(|s| s.blue_green.as_ref())
        .map(|bg| {
            vec![
                bg.active_selector.as_str(),
                bg.previous_active_selector.as_str(),
            ]
        })
        .unwrap_or_default()
}

fn sets_view(sets: &mut [Rs]) -> Vec<bluegreen::SetView<'_>> {
    sets.iter_mut()
        .map(|s| bluegreen::SetView {
            hash: &s.hash,
            replicas: &mut s.replicas,
            available: s.available,
        })
        .collect()
}

fn recreate(sets: &mut [Rs], new_idx: Option<usize>, replicas: i32) {
    let old_running = sets
        .iter()
        .enumerate()
        .any(|(i, s)| Some(i) != new_idx && (s.replicas > 0 || s.pods > 0));
    if old_running {
        for (i, s) in sets.iter_mut().enumerate() {
            if Some(i) != new_idx {
                s.replicas = 0;
            }
        }
        return;
    }
    if let Some(i) = new_idx {
        sets[i].replicas = replicas;
    }
}

/// One RollingUpdate step, as Kubernetes' `rolloutRolling`: scale the new revision up within
/// maxSurge; if it did not change, scale old revisions down within maxUnavailable (first the
/// unhealthy pods, then healthy ones).
fn rolling(d: &Deployment, sets: &mut [Rs], new_idx: Option<usize>, replicas: i32) {
    let (surge, max_unavailable) = surge_and_unavailable(d);
    let Some(ni) = new_idx else { return };
    // Scale the new revision.
    let cur = sets[ni].replicas;
    let target = if cur > replicas {
        replicas
    } else {
        let total: i32 = sets.iter().map(|s| s.replicas).sum();
        let room = (replicas + surge - total).max(0);
        cur + room.min(replicas - cur)
    };
    if target != cur {
        sets[ni].replicas = target;
        if !sets[ni].new {
            return;
        }
    }
    // Scale old revisions down.
    let old_total: i32 = sets
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != ni)
        .map(|(_, s)| s.replicas)
        .sum();
    if old_total == 0 {
        return;
    }
    let all: i32 = sets.iter().map(|s| s.replicas).sum();
    let min_available = replicas - max_unavailable;
    let new_unavailable = (sets[ni].replicas - sets[ni].available).max(0);
    let max_scaled_down = all - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return;
    }
    // Unhealthy old pods go first: removing them costs no availability.
    let mut scaled = 0;
    for (i, s) in sets.iter_mut().enumerate() {
        if i == ni || scaled >= max_scaled_down || s.replicas == 0 {
            continue;
        }
        let unhealthy = (s.replicas - s.available.min(s.replicas)).max(0);
        let n = unhealthy.min(max_scaled_down - scaled);
        s.replicas -= n;
        scaled += n;
    }
    // Then healthy ones, keeping minAvailable.
    let available: i32 = sets.iter().map(|s| s.available.min(s.replicas)).sum();
    let can = available - min_available;
    let mut done = 0;
    for (i, s) in sets.iter_mut().enumerate() {
        if i == ni || done >= can || s.replicas == 0 {
            continue;
        }
        let n = s.replicas.min(can - done);
        s.replicas -= n;
        done += n;
    }
}

/// Set a condition unless one with the same status, reason and message is already there (so
/// an unchanged world writes an unchanged status and does not wake every watcher).
fn set_stable(conds: &mut Vec<Condition>, new: Condition) {
    let same = condition(conds, &new.type_).is_some_and(|c| {
        c.status == new.status && c.reason == new.reason && c.message == new.message
    });
    if !same {
        set_condition(conds, new);
    }
}

fn compute_status(
    d: &Deployment,
    sets: &[Rs],
    hash: &str,
    actions: &[Action],
    blue_green: Option<BlueGreenStatus>,
    reverted: Option<&autorevert::Reverted>,
    now: Time,
) -> (DeploymentStatus, Option<Duration>) {
    let replicas = desired_replicas(d);
    let old = d.status.clone().unwrap_or_default();
    let new_rs = sets.iter().find(|s| s.hash == hash);
    let mut st = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: sets.iter().map(|s| s.pods).sum(),
        updated_replicas: new_rs.map(|s| s.pods).unwrap_or(0),
        ready_replicas: sets.iter().map(|s| s.ready).sum(),
        available_replicas: sets.iter().map(|s| s.available).sum(),
        unavailable_replicas: 0,
        conditions: old.conditions.clone(),
        blue_green,
    };
    let spec_total: i32 = sets.iter().map(|s| s.replicas).sum();
    st.unavailable_replicas = (spec_total.max(replicas) - st.available_replicas).max(0);

    let (_, max_unavailable) = surge_and_unavailable(d);
    let min_available = replicas - max_unavailable;
    // Blue-green serves from the active revision only.
    let serving_available = match &st.blue_green {
        Some(bg) => sets
            .iter()
            .find(|s| s.hash == bg.active_selector)
            .map(|s| s.available)
            .unwrap_or(0),
        None => st.available_replicas,
    };
    let available_ok = serving_available >= min_available;
    set_stable(
        &mut st.conditions,
        Condition::new(
            "Available",
            available_ok,
            if available_ok {
                "MinimumReplicasAvailable"
            } else {
                "MinimumReplicasUnavailable"
            },
            if available_ok {
                "Deployment has minimum availability."
            } else {
                "Deployment does not have minimum availability."
            },
            now,
        ),
    );

    let rs_name = new_rs
        .map(|s| s.name.clone())
        .unwrap_or_else(|| format!("{}-{}", d.metadata.name, hash));
    let deadline = d
        .spec
        .progress_deadline_seconds
        .map(i64::from)
        .unwrap_or(DEFAULT_PROGRESS_DEADLINE_SECONDS);
    let complete = match &st.blue_green {
        Some(bg) => bg.phase == BlueGreenPhase::Healthy,
        None => {
            st.updated_replicas == replicas
                && st.replicas == replicas
                && st.available_replicas == replicas
                && new_rs.is_some_and(|s| s.replicas == replicas)
        }
    };
    let progressed = actions.iter().any(|a| {
        matches!(
            a,
            Action::CreateReplicaSet(_) | Action::UpdateReplicaSet { .. }
        )
    }) || old.updated_replicas != st.updated_replicas
        || old.ready_replicas != st.ready_replicas
        || old.available_replicas != st.available_replicas
        || old.replicas != st.replicas
        || old.observed_generation != st.observed_generation;
    let existing = condition(&old.conditions, "Progressing").cloned();
    let mut requeue = None;
    let bg_phase = st
        .blue_green
        .as_ref()
        .and_then(|b| b.phase.parse::<BlueGreenPhase>().ok());
    match reverted {
        Some(r) => set_stable(&mut st.conditions, r.condition(now)),
        None => st
            .conditions
            .retain(|c| c.type_ != berth_proto::enums::REVERTED_CONDITION),
    }
    if let Some(r) = reverted {
        // The failed revision is not retried: no deadline runs until the template changes.
        set_stable(
            &mut st.conditions,
            Condition::new(
                "Progressing",
                false,
                autorevert::REVERTED_REASON,
                &format!(
                    "ReplicaSet \"{}\" failed ({}); reverted to ReplicaSet \"{}\".",
                    r.failed_rs, r.record, r.stable_rs
                ),
                now,
            ),
        );
    } else if d.spec.paused {
        set_stable(
            &mut st.conditions,
            Condition {
                type_: "Progressing".into(),
                status: "Unknown".into(),
                reason: "DeploymentPaused".into(),
                message: "Deployment is paused".into(),
                last_transition_time: Some(now),
                last_update_time: Some(now),
            },
        );
    } else if bg_phase == Some(BlueGreenPhase::Paused) {
        // Waiting for a promotion is not a lack of progress: no deadline runs.
        set_stable(
            &mut st.conditions,
            Condition::new(
                "Progressing",
                true,
                "RolloutPaused",
                &format!("ReplicaSet \"{rs_name}\" is ready and awaits promotion."),
                now,
            ),
        );
    } else if bg_phase == Some(BlueGreenPhase::Promoting) {
        // The new side serves; the old one waits for the barrier and its scale-down delay,
        // which is not a lack of progress: no deadline runs.
        let waiting = st
            .blue_green
            .as_ref()
            .is_some_and(|b| b.switch_confirmed_at.is_none());
        set_stable(
            &mut st.conditions,
            Condition::new(
                "Progressing",
                true,
                if waiting {
                    "TrafficSwitching"
                } else {
                    "ScaleDownDelay"
                },
                &if waiting {
                    format!("ReplicaSet \"{rs_name}\" is active; waiting for every node's proxy to switch to it.")
                } else {
                    format!("ReplicaSet \"{rs_name}\" is active; the previous revision is kept for its scale-down delay.")
                },
                now,
            ),
        );
    } else if bg_phase == Some(BlueGreenPhase::Degraded) {
        set_stable(
            &mut st.conditions,
            Condition::new(
                "Progressing",
                false,
                "RolloutAborted",
                &format!("Rollout of ReplicaSet \"{rs_name}\" was aborted; the active revision keeps serving."),
                now,
            ),
        );
    } else if complete {
        let mut c = Condition::new(
            "Progressing",
            true,
            "NewReplicaSetAvailable",
            &format!("ReplicaSet \"{rs_name}\" has successfully progressed."),
            now,
        );
        if let Some(e) = &existing {
            if e.reason == c.reason {
                c.last_update_time = e.last_update_time;
            }
        }
        set_condition(&mut st.conditions, c);
    } else if progressed
        || existing.as_ref().is_none_or(|e| {
            matches!(
                e.reason.as_str(),
                "NewReplicaSetAvailable"
                    | "DeploymentPaused"
                    | "RolloutPaused"
                    | "RolloutAborted"
                    | autorevert::REVERTED_REASON
            )
        })
    {
        set_condition(
            &mut st.conditions,
            Condition::new(
                "Progressing",
                true,
                "ReplicaSetUpdated",
                &format!("ReplicaSet \"{rs_name}\" is progressing."),
                now,
            ),
        );
        requeue = Some(Duration::from_secs(
            u64::try_from(deadline).unwrap_or(0) + 1,
        ));
    } else if let Some(e) = existing.filter(|e| e.reason != "ProgressDeadlineExceeded") {
        let since = e.last_update_time.unwrap_or(now);
        let elapsed = (now - since).num_milliseconds();
        if elapsed > deadline * 1000 {
            set_condition(
                &mut st.conditions,
                Condition::new(
                    "Progressing",
                    false,
                    "ProgressDeadlineExceeded",
                    &format!("ReplicaSet \"{rs_name}\" has timed out progressing."),
                    now,
                ),
            );
        } else {
            let left = deadline * 1000 - elapsed + 1;
            requeue = Some(Duration::from_millis(u64::try_from(left).unwrap_or(0)));
        }
    }
    (st, requeue)
}

#[cfg(test)]
mod tests;
