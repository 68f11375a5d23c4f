//! berth-scheduler: places unbound pods on nodes.
//!
//! Two layers, as in the Kubernetes scheduler framework and Nomad:
//! - the pure core: a [`Snapshot`] (nodes + what is bound on each) -> [`plugins::filter`]
//!   (Ready, not cordoned, nodeSelector, taints/tolerations, host ports, cpu/memory/pod count)
//!   -> [`plugins::score`] (PreferNoSchedule, most-allocated bin-packing in 10% buckets,
//!   spread tie-break); [`volumes`]: a pod's PersistentVolumeClaims must exist, and their
//!   volumes' node affinity (or the node an unbound local-path claim is used on) holds
//!   -> a [`Decision`] per pod. [`schedule_batch`] accounts for earlier decisions of the same
//!   batch. "Does not fit" is [`Outcome::Unschedulable`] with a kubectl-style reason.
//! - the shell (added with the client runtime): a leader-only loop that watches unbound pods
//!   and nodes, schedules in batches and binds through one Batch write per batch with
//!   resourceVersion preconditions. [`metrics`]: queue depth, binds, unschedulable pods.

pub mod metrics;
pub mod plan;
pub mod plugins;
pub mod schedule;
pub mod snapshot;
pub mod volumes;

pub use plan::{plan_pass, plan_pass_with_volumes, PassPlan, Write};
pub use schedule::{fit_error, schedule_batch, schedule_one, Decision, Outcome};
pub use snapshot::{NodeInfo, Snapshot};
pub mod run;

pub use run::{run, Config};
