//! berth-controllers: the loops that keep Deployments, ReplicaSets, Endpoints and Nodes true.
//!
//! Each controller is a pure `plan(desired, observed, now) -> Plan` (table- and property-tested)
//! plus a thin shell on the client runtime that reads the reflector caches, plans, and applies
//! the plan's actions with resourceVersion preconditions (a Conflict just requeues):
//! - [`deployment`]: ReplicaSets per pod-template hash; RollingUpdate, Recreate and BlueGreen
//!   ([`deployment::bluegreen`], an enum state machine with a pure `step`); status/conditions.
//! - [`replicaset`]: Pods to match `spec.replicas`.
//! - [`endpoints`]: `node address : host port` of the pods each Service selects.
//! - [`nodelifecycle`]: missed heartbeats -> Ready=Unknown + NoExecute taint -> pod eviction.
//! - [`gc`]: objects whose owners are gone are deleted.
//! - [`volume`]: PersistentVolumeClaims bound to volumes; `local-path` volumes provisioned on
//!   the node of a claim's first pod; released volumes reclaimed.
//! - [`namespace`]: system namespaces exist; a terminating namespace is emptied, then removed.

pub mod deployment;
pub mod endpoints;
pub mod gc;
pub mod namespace;
pub mod nodelifecycle;
pub mod replicaset;
pub mod run;
pub mod volume;

pub use run::{run_controllers, run_while_leader, Config, Error};
