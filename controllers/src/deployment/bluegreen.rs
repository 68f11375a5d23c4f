//! The BlueGreen strategy as an enum state machine with a pure [`step`].
//!
//! Blue is the revision the active Service selects; green is the template's current revision
//! brought up at full size beside it, selected by the preview Service. Promotion (the
//! `berth.io/promote` annotation written by `berth rollout promote`, or automatic) re-points the
//! active Service to green in one write and keeps blue for `scaleDownDelaySeconds` so that an
//! undo (the template set back to blue's) switches back at once. Abort (`berth.io/abort`, or
//! green not ready within progressDeadlineSeconds) drops green and leaves traffic on blue.
//!
//! The traffic-switch barrier: a switch (promotion, undo, abort) is complete only once every
//! Ready node's proxy has programmed the Service's Endpoints as switched ([`Switch`], from the
//! shell: the Endpoints list only the new side's pods, and every node's
//! `status.proxy.programmedRevision` reached their resourceVersion), or the barrier timed out
//! (the laggards are named in an event). Only then does the old side's scale-down delay start
//! (an aborted green's scale-down, for abort), so no proxy still sends to a side being removed.
//!
//! The state lives in `status.blueGreen` (phase, selectors, times): [`State::decode`] reads it,
//! [`step`] moves it, [`State::encode`] writes it back. [`plan`] derives ReplicaSet sizes and
//! Service pointers from the new state.

use std::time::Duration;

use berth_proto::types::*;
use berth_proto::BlueGreenPhase;

use super::{desired_replicas, Action, ABORT_ANNOTATION, PROMOTE_ANNOTATION};

pub const DEFAULT_SCALE_DOWN_DELAY_SECONDS: i64 = 30;

/// How long a switch waits for every node's proxy before the rollout goes on anyway.
pub const DEFAULT_SWITCH_BARRIER_TIMEOUT_SECONDS: i64 = 30;

/// Has a Service's switch to a revision reached every node's proxy?
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Switch {
    Confirmed,
    /// Not yet: why (the Endpoints still list other pods, or which nodes lag).
    Pending(String),
}

/// Where a blue-green rollout stands. Hashes are pod-template hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Nothing has been served yet.
    Initial,
    /// Only `active` is wanted; older revisions are scaled down.
    Healthy { active: String },
    /// Green is coming up beside blue (`active`); `since` starts the progress deadline.
    Progressing {
        active: String,
        green: String,
        since: Time,
    },
    /// Green is fully ready and waits for promotion since `since`.
    Paused {
        active: String,
        green: String,
        since: Time,
    },
    /// Traffic is on `active`; `previous` is kept at size until `scale_down_at` for undo.
    /// `switched` is when every proxy had the switch (None: the barrier is still waiting; the
    /// scale-down delay has not started).
    Promoting {
        active: String,
        previous: String,
        promoted_at: Time,
        switched: Option<Time>,
        scale_down_at: Option<Time>,
    },
    /// Green (`aborted`) was dropped; traffic stays on `active` until the template changes.
    /// Green keeps its pods until the preview Service's switch back to `active` reached every
    /// proxy (`switched`), or the barrier timed out (from `since`).
    Degraded {
        active: String,
        aborted: String,
        since: Time,
        switched: Option<Time>,
    },
}

/// What [`step`] needs to know besides the state.
#[derive(Clone)]
pub struct Inputs<'a> {
    /// Hash of the Deployment's current template.
    pub current: &'a str,
    /// Is the revision with this hash fully available (available >= desired replicas)?
    pub ready: &'a dyn Fn(&str) -> bool,
    pub promote_requested: bool,
    pub abort_requested: bool,
    pub auto_promotion_enabled: bool,
    pub auto_promotion_seconds: i64,
    pub scale_down_delay_seconds: i64,
    pub progress_deadline_seconds: i64,
    /// The traffic-switch barrier of the active Service for a revision.
    pub active_switch: &'a dyn Fn(&str) -> Switch,
    /// The same for the preview Service (Confirmed when there is none).
    pub preview_switch: &'a dyn Fn(&str) -> Switch,
    pub barrier_timeout_seconds: i64,
    pub now: Time,
}

/// A switch that is always confirmed (no proxy reports: the barrier has nothing to wait for).
pub fn always_switched(_: &str) -> Switch {
    Switch::Confirmed
}

/// Side effects of a transition besides the new state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Event {
        type_: &'static str,
        reason: &'static str,
        message: String,
    },
    /// The promote request was acted on (or moot): clear it.
    ConsumePromote,
    /// The abort request was acted on (or moot): clear it.
    ConsumeAbort,
}

fn secs(n: i64) -> chrono::Duration {
    chrono::Duration::seconds(n)
}

fn event(type_: &'static str, reason: &'static str, message: String) -> Effect {
    Effect::Event {
        type_,
        reason,
        message,
    }
}

fn promote(active: &str, green: &str, inp: &Inputs<'_>, fx: &mut Vec<Effect>) -> State {
    if inp.promote_requested {
        fx.push(Effect::ConsumePromote);
    }
    fx.push(event(
        "Normal",
        "Promoted",
        format!("active service switched from revision {active} to {green}"),
    ));
    settle_promotion(green, active, inp.now, inp, fx)
}

/// Promoting with the barrier checked: once every proxy has `active`, the delay for
/// `previous` starts (with no delay, straight to Healthy).
fn settle_promotion(
    active: &str,
    previous: &str,
    promoted_at: Time,
    inp: &Inputs<'_>,
    fx: &mut Vec<Effect>,
) -> State {
    let waited = (inp.now - promoted_at).num_milliseconds().max(0);
    match (inp.active_switch)(active) {
        Switch::Confirmed => fx.push(event(
            "Normal",
            "TrafficSwitched",
            format!(
                "every node's proxy serves revision {active} ({waited} ms after the switch); \
                 revision {previous} scales down in {}s",
                inp.scale_down_delay_seconds
            ),
        )),
        Switch::Pending(_) if inp.now - promoted_at < secs(inp.barrier_timeout_seconds) => {
            return State::Promoting {
                active: active.into(),
                previous: previous.into(),
                promoted_at,
                switched: None,
                scale_down_at: None,
            };
        }
        Switch::Pending(why) => fx.push(event(
            "Warning",
            "SwitchBarrierTimeout",
            format!(
                "not every node's proxy confirmed revision {active} within {}s ({why}); \
                 revision {previous} scales down in {}s anyway",
                inp.barrier_timeout_seconds, inp.scale_down_delay_seconds
            ),
        )),
    }
    if inp.scale_down_delay_seconds <= 0 {
        return State::Healthy {
            active: active.into(),
        };
    }
    State::Promoting {
        active: active.into(),
        previous: previous.into(),
        promoted_at,
        switched: Some(inp.now),
        scale_down_at: Some(inp.now + secs(inp.scale_down_delay_seconds)),
    }
}

/// Degraded with the barrier checked for the preview Service's switch back to `active`.
fn settle_abort(
    active: &str,
    aborted: &str,
    since: Time,
    inp: &Inputs<'_>,
    fx: &mut Vec<Effect>,
) -> State {
    let switched = match (inp.preview_switch)(active) {
        Switch::Confirmed => Some(inp.now),
        Switch::Pending(_) if inp.now - since < secs(inp.barrier_timeout_seconds) => None,
        Switch::Pending(why) => {
            fx.push(event(
                "Warning",
                "SwitchBarrierTimeout",
                format!(
                    "not every node's proxy confirmed the preview switch back to revision \
                     {active} within {}s ({why}); revision {aborted} scales down anyway",
                    inp.barrier_timeout_seconds
                ),
            ));
            Some(inp.now)
        }
    };
    State::Degraded {
        active: active.into(),
        aborted: aborted.into(),
        since,
        switched,
    }
}

/// Green (`green`) is the current template beside `active`: wait for it, pause, or promote.
fn with_green(
    active: &str,
    green: &str,
    since: Time,
    inp: &Inputs<'_>,
    fx: &mut Vec<Effect>,
) -> State {
    if inp.abort_requested {
        fx.push(Effect::ConsumeAbort);
        fx.push(event(
            "Warning",
            "RolloutAborted",
            format!("rollout of revision {green} aborted by user; traffic stays on {active}"),
        ));
        return settle_abort(active, green, inp.now, inp, fx);
    }
    if !(inp.ready)(green) {
        if (inp.now - since) > secs(inp.progress_deadline_seconds) {
            fx.push(event(
                "Warning",
                "ProgressDeadlineExceeded",
                format!(
                    "revision {green} was not ready within {}s; rollout aborted, traffic stays on {active}",
                    inp.progress_deadline_seconds
                ),
            ));
            return settle_abort(active, green, inp.now, inp, fx);
        }
        return State::Progressing {
            active: active.into(),
            green: green.into(),
            since,
        };
    }
    // Green is ready. `since` is when it became ready when we come from Paused.
    let auto_due = inp.auto_promotion_enabled
        && (inp.auto_promotion_seconds <= 0 || inp.now - since >= secs(inp.auto_promotion_seconds));
    if inp.promote_requested || auto_due {
        return promote(active, green, inp, fx);
    }
    State::Paused {
        active: active.into(),
        green: green.into(),
        since,
    }
}

/// A new template while `active` serves: back to steady if it is `active`, else a new green.
fn retarget(active: &str, inp: &Inputs<'_>, fx: &mut Vec<Effect>) -> State {
    if inp.current == active {
        State::Healthy {
            active: active.into(),
        }
    } else {
        with_green(active, inp.current, inp.now, inp, fx)
    }
}

/// One transition. Pure: all time and readiness come from `inp`.
///
/// Promote and abort requests are addressed to the green shown in preview, so they only act
/// when `state` already has one (Progressing or Paused). A request seen in any other state is
/// spent or moot, e.g. the promote that produced the current Promoting state whose clear lost a
/// write conflict with the next template: it is consumed, never carried to the next green,
/// which would otherwise go live (or be aborted) without a request of its own.
pub fn step(state: &State, inp: &Inputs<'_>) -> (State, Vec<Effect>) {
    let showing_green = matches!(state, State::Progressing { .. } | State::Paused { .. });
    let outer = inp;
    let inp = &Inputs {
        promote_requested: outer.promote_requested && showing_green,
        abort_requested: outer.abort_requested && showing_green,
        ..outer.clone()
    };
    let mut fx = Vec::new();
    let next = match state {
        State::Initial => State::Healthy {
            active: inp.current.into(),
        },
        State::Healthy { active } => retarget(active, inp, &mut fx),
        State::Progressing {
            active,
            green,
            since,
        } => {
            if inp.current == green {
                with_green(active, green, *since, inp, &mut fx)
            } else {
                retarget(active, inp, &mut fx)
            }
        }
        State::Paused {
            active,
            green,
            since,
        } => {
            if inp.current != green {
                retarget(active, inp, &mut fx)
            } else if !(inp.ready)(green) {
                // Lost readiness while waiting: progress again with a fresh deadline.
                with_green(active, green, inp.now, inp, &mut fx)
            } else {
                with_green(active, green, *since, inp, &mut fx)
            }
        }
        State::Promoting {
            active,
            previous,
            promoted_at,
            switched,
            scale_down_at,
        } => {
            if inp.current == previous.as_str() && (inp.ready)(previous) {
                // Undo within the delay: blue is still at full size (no pod is created),
                // switch straight back; the barrier runs again for the switch back.
                fx.push(event(
                    "Normal",
                    "RolledBack",
                    format!("active service switched back from revision {active} to {previous}"),
                ));
                settle_promotion(previous, active, inp.now, inp, &mut fx)
            } else if inp.current != active.as_str() {
                retarget(active, inp, &mut fx)
            } else {
                match scale_down_at {
                    None => settle_promotion(active, previous, *promoted_at, inp, &mut fx),
                    Some(t) if inp.now >= *t => State::Healthy {
                        active: active.clone(),
                    },
                    Some(_) => State::Promoting {
                        active: active.clone(),
                        previous: previous.clone(),
                        promoted_at: *promoted_at,
                        switched: *switched,
                        scale_down_at: *scale_down_at,
                    },
                }
            }
        }
        State::Degraded {
            active,
            aborted,
            since,
            switched,
        } => {
            if inp.current != aborted.as_str() {
                retarget(active, inp, &mut fx)
            } else if switched.is_none() {
                settle_abort(active, aborted, *since, inp, &mut fx)
            } else {
                state.clone()
            }
        }
    };
    // Requests that the new state has no use for are consumed so they do not linger and fire
    // on a later, unrelated rollout.
    let waiting_for_green = matches!(next, State::Progressing { .. } | State::Paused { .. });
    let promote_kept = inp.promote_requested && waiting_for_green;
    if outer.promote_requested && !promote_kept && !fx.contains(&Effect::ConsumePromote) {
        fx.push(Effect::ConsumePromote);
    }
    if outer.abort_requested && !fx.contains(&Effect::ConsumeAbort) {
        fx.push(Effect::ConsumeAbort);
    }
    (next, fx)
}

impl State {
    /// Read the state stored in `status.blueGreen`.
    pub fn decode(bg: Option<&BlueGreenStatus>, now: Time) -> State {
        let Some(bg) = bg.filter(|b| !b.active_selector.is_empty()) else {
            return State::Initial;
        };
        let active = bg.active_selector.clone();
        let since = bg.phase_since.unwrap_or(now);
        match bg.phase.parse::<BlueGreenPhase>().ok() {
            Some(BlueGreenPhase::Progressing)
                if !bg.preview_selector.is_empty() && bg.preview_selector != active =>
            {
                State::Progressing {
                    active,
                    green: bg.preview_selector.clone(),
                    since,
                }
            }
            Some(BlueGreenPhase::Paused) if !bg.preview_selector.is_empty() => State::Paused {
                active,
                green: bg.preview_selector.clone(),
                since,
            },
            Some(BlueGreenPhase::Promoting) if !bg.previous_active_selector.is_empty() => {
                let promoted_at = bg.promoted_at.unwrap_or(now);
                State::Promoting {
                    active,
                    previous: bg.previous_active_selector.clone(),
                    promoted_at,
                    // Written before the barrier existed: the delay was already running.
                    switched: bg
                        .switch_confirmed_at
                        .or(bg.scale_down_at.map(|_| promoted_at)),
                    scale_down_at: bg.scale_down_at,
                }
            }
            Some(BlueGreenPhase::Degraded) if !bg.aborted_selector.is_empty() => State::Degraded {
                active,
                aborted: bg.aborted_selector.clone(),
                since,
                switched: bg.switch_confirmed_at,
            },
            _ => State::Healthy { active },
        }
    }

    /// The status to store; `active_ready` picks Healthy vs Progressing for the steady state.
    pub fn encode(&self, active_ready: bool, since: Option<Time>) -> BlueGreenStatus {
        let mut bg = BlueGreenStatus::default();
        match self {
            State::Initial => {}
            State::Healthy { active } => {
                bg.active_selector = active.clone();
                bg.preview_selector = active.clone();
                bg.phase = if active_ready {
                    BlueGreenPhase::Healthy
                } else {
                    BlueGreenPhase::Progressing
                }
                .into();
            }
            State::Progressing {
                active,
                green,
                since,
            }
            | State::Paused {
                active,
                green,
                since,
            } => {
                bg.active_selector = active.clone();
                bg.preview_selector = green.clone();
                bg.phase = if matches!(self, State::Paused { .. }) {
                    BlueGreenPhase::Paused
                } else {
                    BlueGreenPhase::Progressing
                }
                .into();
                bg.phase_since = Some(*since);
            }
            State::Promoting {
                active,
                previous,
                promoted_at,
                switched,
                scale_down_at,
            } => {
                bg.active_selector = active.clone();
                bg.preview_selector = active.clone();
                bg.previous_active_selector = previous.clone();
                bg.phase = BlueGreenPhase::Promoting.into();
                bg.promoted_at = Some(*promoted_at);
                bg.switch_confirmed_at = *switched;
                bg.scale_down_at = *scale_down_at;
            }
            State::Degraded {
                active,
                aborted,
                since,
                switched,
            } => {
                bg.active_selector = active.clone();
                bg.preview_selector = active.clone();
                bg.aborted_selector = aborted.clone();
                bg.phase = BlueGreenPhase::Degraded.into();
                bg.phase_since = Some(*since);
                bg.switch_confirmed_at = *switched;
            }
        }
        if bg.phase_since.is_none() {
            bg.phase_since = since;
        }
        bg
    }

    pub fn active(&self) -> Option<&str> {
        match self {
            State::Initial => None,
            State::Healthy { active }
            | State::Progressing { active, .. }
            | State::Paused { active, .. }
            | State::Promoting { active, .. }
            | State::Degraded { active, .. } => Some(active),
        }
    }

    /// The revision the preview Service selects.
    pub fn preview(&self) -> Option<&str> {
        match self {
            State::Progressing { green, .. } | State::Paused { green, .. } => Some(green),
            s => s.active(),
        }
    }
}

/// A mutable view of one ReplicaSet for sizing.
#[derive(Debug)]
pub struct SetView<'a> {
    pub hash: &'a str,
    pub replicas: &'a mut i32,
    pub available: i32,
}

/// The blue-green part of a Deployment plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Out {
    pub actions: Vec<Action>,
    pub status: BlueGreenStatus,
    pub requeue_after: Option<Duration>,
}

fn annotation_set(d: &Deployment, key: &str) -> bool {
    d.metadata
        .annotations
        .get(key)
        .is_some_and(|v| v != "false" && !v.is_empty())
}

/// Step the state machine and size the ReplicaSets (`sets` includes the current revision),
/// with no traffic-switch barrier (every switch counts as confirmed at once).
pub fn plan(d: &Deployment, current: &str, sets: &mut [SetView<'_>], now: Time) -> Out {
    plan_with(d, current, sets, &always_switched, &always_switched, now)
}

/// [`plan`] with the traffic-switch barrier of the active and preview Services.
pub fn plan_with(
    d: &Deployment,
    current: &str,
    sets: &mut [SetView<'_>],
    active_switch: &dyn Fn(&str) -> Switch,
    preview_switch: &dyn Fn(&str) -> Switch,
    now: Time,
) -> Out {
    let replicas = desired_replicas(d);
    let cfg = d
        .spec
        .strategy
        .as_ref()
        .and_then(|s| s.blue_green.clone())
        .unwrap_or_default();
    let available: Vec<(String, i32)> = sets
        .iter()
        .map(|s| (s.hash.to_string(), s.available))
        .collect();
    let ready = |h: &str| {
        available
            .iter()
            .any(|(hash, a)| hash == h && *a >= replicas)
    };
    let inp = Inputs {
        current,
        ready: &ready,
        promote_requested: annotation_set(d, PROMOTE_ANNOTATION),
        abort_requested: annotation_set(d, ABORT_ANNOTATION),
        auto_promotion_enabled: cfg.auto_promotion_enabled.unwrap_or(true),
        auto_promotion_seconds: cfg.auto_promotion_seconds.unwrap_or(0),
        scale_down_delay_seconds: cfg
            .scale_down_delay_seconds
            .unwrap_or(DEFAULT_SCALE_DOWN_DELAY_SECONDS)
            .max(0),
        progress_deadline_seconds: d
            .spec
            .progress_deadline_seconds
            .map(i64::from)
            .unwrap_or(super::DEFAULT_PROGRESS_DEADLINE_SECONDS),
        active_switch,
        preview_switch,
        barrier_timeout_seconds: DEFAULT_SWITCH_BARRIER_TIMEOUT_SECONDS,
        now,
    };
    let old_bg = d.status.as_ref().and_then(|s| s.blue_green.as_ref());
    let state = State::decode(old_bg, now);
    let (next, effects) = step(&state, &inp);

    // Size the ReplicaSets for the new state.
    for s in sets.iter_mut() {
        let want = match &next {
            State::Initial => *s.replicas,
            State::Healthy { active } | State::Degraded { active, .. } => {
                if s.hash == active {
                    replicas
                } else if matches!(&next, State::Degraded { aborted, switched: None, .. } if s.hash == aborted)
                {
                    // Aborted green keeps its pods until no proxy sends preview traffic to it.
                    *s.replicas
                } else {
                    0
                }
            }
            State::Progressing { active, green, .. } | State::Paused { active, green, .. } => {
                if s.hash == active || s.hash == green {
                    replicas
                } else {
                    0
                }
            }
            State::Promoting {
                active, previous, ..
            } => {
                if s.hash == active {
                    replicas
                } else if s.hash == previous {
                    (*s.replicas).min(replicas)
                } else {
                    0
                }
            }
        };
        *s.replicas = want;
    }

    let mut actions = Vec::new();
    if let Some(active) = next.active() {
        actions.push(Action::PointService {
            service: cfg.active_service.clone(),
            hash: active.to_string(),
        });
    }
    if let (Some(preview), Some(svc)) = (next.preview(), cfg.preview_service.as_ref()) {
        if !svc.is_empty() {
            actions.push(Action::PointService {
                service: svc.clone(),
                hash: preview.to_string(),
            });
        }
    }
    for fx in effects {
        match fx {
            Effect::Event {
                type_,
                reason,
                message,
            } => actions.push(Action::event(type_, reason, message)),
            Effect::ConsumePromote => actions.push(Action::RemoveAnnotation {
                key: PROMOTE_ANNOTATION.into(),
            }),
            Effect::ConsumeAbort => actions.push(Action::RemoveAnnotation {
                key: ABORT_ANNOTATION.into(),
            }),
        }
    }

    let requeue_after = match &next {
        State::Promoting {
            scale_down_at: Some(t),
            ..
        } => Some(until(*t, now)),
        State::Promoting { promoted_at, .. } => Some(until(
            (*promoted_at + secs(inp.barrier_timeout_seconds)).min(now + secs(1)),
            now,
        )),
        State::Degraded {
            since,
            switched: None,
            ..
        } => Some(until(
            (*since + secs(inp.barrier_timeout_seconds)).min(now + secs(1)),
            now,
        )),
        State::Paused { since, .. } if inp.auto_promotion_enabled => {
            Some(until(*since + secs(inp.auto_promotion_seconds), now))
        }
        State::Progressing { since, .. } => {
            Some(until(*since + secs(inp.progress_deadline_seconds), now))
        }
        _ => None,
    };
    let active_ready = next.active().is_some_and(|a| (inp.ready)(a));
    let status = next.encode(active_ready, None);
    Out {
        actions,
        status,
        requeue_after,
    }
}

fn until(t: Time, now: Time) -> Duration {
    let ms = (t - now).num_milliseconds().max(0) + 1;
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}
