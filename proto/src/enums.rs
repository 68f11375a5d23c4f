//! The closed sets of values some string fields take (pod phase, deployment strategy type,
//! blue-green phase, taint effect), and the annotation/label names the control loops and the
//! CLI share.
//!
//! The wire format and YAML stay strings, as in Kubernetes (`status.phase: Running`), so a
//! manifest or a stored object reads the same as before; code compares and writes through these
//! enums instead of spelling the strings. Each enum has `as_str()`, `Display`, and `FromStr`
//! whose error ([`UnknownValue`]) names the value and lists the allowed ones; validation
//! ([`crate::validate`]) uses that parse. Each also compares equal to its string form
//! (`pod.status.phase == PodPhase::Running`), so reading a stored field needs no parse.

use std::fmt;
use std::str::FromStr;

/// A string that is not one of an enum's values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported {what} {value:?}: must be one of {}", allowed.join(", "))]
pub struct UnknownValue {
    /// What the value names, e.g. "taint effect".
    pub what: &'static str,
    /// The value as given.
    pub value: String,
    /// Every accepted spelling.
    pub allowed: &'static [&'static str],
}

macro_rules! string_enum {
    (
        $(#[$meta:meta])*
        $name:ident, $what:literal {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// Every value's wire spelling, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            /// The wire (and YAML) spelling.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownValue;

            fn from_str(s: &str) -> Result<Self, UnknownValue> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownValue {
                        what: $what,
                        value: s.to_string(),
                        allowed: $name::NAMES,
                    }),
                }
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.as_str().to_string()
            }
        }

        impl PartialEq<$name> for str {
            fn eq(&self, other: &$name) -> bool {
                self == other.as_str()
            }
        }

        impl PartialEq<$name> for &str {
            fn eq(&self, other: &$name) -> bool {
                *self == other.as_str()
            }
        }

        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                self == other.as_str()
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                self.as_str() == other
            }
        }
    };
}

string_enum! {
    /// `Pod.status.phase`.
    PodPhase, "pod phase" {
        /// Accepted, not every container started yet.
        Pending = "Pending",
        /// Bound and every container started.
        Running = "Running",
        /// Every container exited 0 and will not restart.
        Succeeded = "Succeeded",
        /// Every container stopped and at least one failed, with no restart to come.
        Failed = "Failed",
        /// The node stopped reporting.
        Unknown = "Unknown",
    }
}

impl PodPhase {
    /// Succeeded or Failed: the pod will not run again.
    pub fn is_terminal(self) -> bool {
        matches!(self, PodPhase::Succeeded | PodPhase::Failed)
    }
}

string_enum! {
    /// `Deployment.spec.strategy.type`.
    #[derive(Default)]
    StrategyType, "deployment strategy type" {
        /// Replace pods gradually within maxSurge/maxUnavailable (the default).
        #[default]
        RollingUpdate = "RollingUpdate",
        /// Stop every old pod before starting new ones.
        Recreate = "Recreate",
        /// Start the new revision beside the old one and switch Services on promotion.
        BlueGreen = "BlueGreen",
    }
}

string_enum! {
    /// `Deployment.status.blueGreen.phase`. An aborted rollout (by request or by the progress
    /// deadline) is `Degraded`, as in Argo Rollouts, whose blue-green model this follows.
    BlueGreenPhase, "blue-green phase" {
        /// The new (green) revision is coming up beside the active one.
        Progressing = "Progressing",
        /// Green is ready on the preview Service and waits for promotion.
        Paused = "Paused",
        /// Traffic switched to green; blue waits for its scale-down delay.
        Promoting = "Promoting",
        /// One revision, ready, serving.
        Healthy = "Healthy",
        /// Green was dropped; traffic stays on the previous revision.
        Degraded = "Degraded",
    }
}

string_enum! {
    /// `Taint.effect` and (when not empty) `Toleration.effect`.
    TaintEffect, "taint effect" {
        /// New pods that do not tolerate the taint are not scheduled on the node.
        NoSchedule = "NoSchedule",
        /// The scheduler avoids the node for pods that do not tolerate the taint.
        PreferNoSchedule = "PreferNoSchedule",
        /// As NoSchedule, and running pods that do not tolerate it are evicted.
        NoExecute = "NoExecute",
    }
}

impl TaintEffect {
    /// Whether the effect keeps a pod that does not tolerate it off the node at scheduling.
    pub fn forbids_scheduling(self) -> bool {
        matches!(self, TaintEffect::NoSchedule | TaintEffect::NoExecute)
    }
}

/// The ReplicaSet annotation holding its rollout revision (the key Kubernetes uses).
pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";
/// Deployment annotation `berth rollout promote` sets to switch a paused blue-green rollout.
pub const PROMOTE_ANNOTATION: &str = "berth.io/promote";
/// Deployment annotation `berth rollout abort` sets to drop a blue-green rollout's green side.
pub const ABORT_ANNOTATION: &str = "berth.io/abort";
/// ReplicaSet annotation the Deployment controller sets on a revision whose rollout failed and
/// was reverted (`autoRevert`): `REASON: message`. `rollout history` shows it; the controller
/// does not roll that template out again until it changes (`rollout restart` changes it).
pub const ROLLOUT_FAILED_ANNOTATION: &str = "berth.io/rollout-failed";
/// The Deployment condition that says a failed rollout was reverted (reason: why it failed).
pub const REVERTED_CONDITION: &str = "Reverted";
/// The label a Deployment's ReplicaSets and pods carry: the hash of their pod template.
pub const TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

/// A ReplicaSet's revision from [`REVISION_ANNOTATION`] (0 when absent or not a number).
pub fn revision(rs: &crate::types::ReplicaSet) -> i64 {
    rs.metadata
        .annotations
        .get(REVISION_ANNOTATION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_round_trips_through_its_string() {
        for p in PodPhase::ALL {
            assert_eq!(p.as_str().parse::<PodPhase>(), Ok(*p));
            assert_eq!(p.to_string(), p.as_str());
        }
        for s in StrategyType::ALL {
            assert_eq!(s.as_str().parse::<StrategyType>(), Ok(*s));
        }
        for b in BlueGreenPhase::ALL {
            assert_eq!(b.as_str().parse::<BlueGreenPhase>(), Ok(*b));
        }
        for t in TaintEffect::ALL {
            assert_eq!(t.as_str().parse::<TaintEffect>(), Ok(*t));
        }
    }

    #[test]
    fn an_unknown_value_names_itself_and_lists_the_allowed_ones() {
        let err = "noschedule".parse::<TaintEffect>().expect_err("lower case");
        assert_eq!(
            err.to_string(),
            "unsupported taint effect \"noschedule\": must be one of NoSchedule, \
             PreferNoSchedule, NoExecute"
        );
        let err = "Aborted"
            .parse::<BlueGreenPhase>()
            .expect_err("not a phase");
        assert!(err
            .to_string()
            .contains("Progressing, Paused, Promoting, Healthy, Degraded"));
    }

    #[test]
    fn parsing_is_case_sensitive_like_kubernetes() {
        assert!("running".parse::<PodPhase>().is_err());
        assert!("".parse::<StrategyType>().is_err());
    }

    #[test]
    fn a_stored_string_compares_with_the_enum() {
        let phase = String::from("Running");
        assert!(phase == PodPhase::Running);
        assert!(phase != PodPhase::Pending);
        assert!("NoExecute" == TaintEffect::NoExecute);
        assert!(PodPhase::Failed == "Failed");
    }

    #[test]
    fn a_pod_without_a_phase_reads_pending_and_a_foreign_spelling_reads_unknown() {
        use crate::types::{Pod, PodStatus};
        let with = |phase: &str| Pod {
            status: Some(PodStatus {
                phase: phase.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(Pod::default().phase(), PodPhase::Pending);
        assert_eq!(with("").phase(), PodPhase::Pending);
        assert_eq!(with("Running").phase(), PodPhase::Running);
        assert_eq!(with("Completed").phase(), PodPhase::Unknown);
        assert!(with("Failed").is_terminal() && with("Succeeded").is_terminal());
        assert!(!with("Running").is_terminal() && !Pod::default().is_terminal());
    }

    #[test]
    fn the_revision_annotation_parses_or_reads_zero() {
        let mut rs = crate::types::ReplicaSet::default();
        assert_eq!(revision(&rs), 0);
        rs.metadata
            .annotations
            .insert(REVISION_ANNOTATION.into(), "7".into());
        assert_eq!(revision(&rs), 7);
        rs.metadata
            .annotations
            .insert(REVISION_ANNOTATION.into(), "x".into());
        assert_eq!(revision(&rs), 0);
    }
}
