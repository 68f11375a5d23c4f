//! The BlueGreen strategy as an enum state machine with a pure [`step`].
//!
//! Blue is the revision the active Service selects; green is the template's current revision
//! brought up at full size beside it, selected by the preview Service. Promotion (the
//! `berth.io/promote` annotation written by `berth rollout promote`, or automatic) re-points the
//! active Service to green in one write and keeps blue for `scaleDownDelaySeconds` so that an
//! undo (the template set back to blue's) switches back at once. Abort (`berth.io/abort`, or
//! green not ready within progressDeadlineSeconds) drops green and leaves traffic on blue.
//!
//! The state lives in `status.blueGreen` (phase, selectors, times): [`State::decode`] reads it,
//! [`step`] moves it, [`State::encode`] writes it back. [`plan`] derives ReplicaSet sizes and
//! Service pointers from the new state.

use std::time::Duration;

use berth_proto::types::*;
use berth_proto::BlueGreenPhase;

use super::{desired_replicas, Action, ABORT_ANNOTATION, PROMOTE_ANNOTATION};

pub const DEFAULT_SCALE_DOWN_DELAY_SECONDS: i64 = 30;

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
    Promoting {
        active: String,
        previous: String,
        promoted_at: Time,
        scale_down_at: Time,
    },
    /// Green (`aborted`) was dropped; traffic stays on `active` until the template changes.
    Degraded { active: String, aborted: String },
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
    pub now: Time,
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
    State::Promoting {
        active: green.to_string(),
        previous: active.to_string(),
        promoted_at: inp.now,
        scale_down_at: inp.now + secs(inp.scale_down_delay_seconds),
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
        return State::Degraded {
            active: active.into(),
            aborted: green.into(),
        };
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
            return State::Degraded {
                active: active.into(),
                aborted: green.into(),
            };
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
            scale_down_at,
        } => {
            if inp.current == previous.as_str() && (inp.ready)(previous) {
                // Undo within the delay: blue is still at full size, switch straight back.
                fx.push(event(
                    "Normal",
                    "RolledBack",
                    format!("active service switched back from revision {active} to {previous}"),
                ));
                State::Promoting {
                    active: previous.clone(),
                    previous: active.clone(),
                    promoted_at: inp.now,
                    scale_down_at: inp.now + secs(inp.scale_down_delay_seconds),
                }
            } else if inp.current != active.as_str() {
                retarget(active, inp, &mut fx)
            } else if inp.now >= *scale_down_at {
                State::Healthy {
                    active: active.clone(),
                }
            } else {
                State::Promoting {
                    active: active.clone(),
                    previous: previous.clone(),
                    promoted_at: *promoted_at,
                    scale_down_at: *scale_down_at,
                }
            }
        }
        State::Degraded { active, aborted } => {
            if inp.current == aborted.as_str() {
                state.clone()
            } else {
                retarget(active, inp, &mut fx)
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
                State::Promoting {
                    active,
                    previous: bg.previous_active_selector.clone(),
                    promoted_at: bg.promoted_at.unwrap_or(now),
                    scale_down_at: bg.scale_down_at.unwrap_or(now),
                }
            }
            Some(BlueGreenPhase::Degraded) if !bg.aborted_selector.is_empty() => State::Degraded {
                active,
                aborted: bg.aborted_selector.clone(),
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
                scale_down_at,
            } => {
                bg.active_selector = active.clone();
                bg.preview_selector = active.clone();
                bg.previous_active_selector = previous.clone();
                bg.phase = BlueGreenPhase::Promoting.into();
                bg.promoted_at = Some(*promoted_at);
                bg.scale_down_at = Some(*scale_down_at);
            }
            State::Degraded { active, aborted } => {
                bg.active_selector = active.clone();
                bg.preview_selector = active.clone();
                bg.aborted_selector = aborted.clone();
                bg.phase = BlueGreenPhase::Degraded.into();
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

/// Step the state machine and size the ReplicaSets (`sets` includes the current revision).
pub fn plan(d: &Deployment, current: &str, sets: &mut [SetView<'_>], now: Time) -> Out {
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
        State::Promoting { scale_down_at, .. } => Some(until(*scale_down_at, now)),
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
