//! berth-testkit: dev-only helpers shared by every crate's tests.
//!
//! - [`builders`]: fluent fixture builders for the object schema (`NodeBuilder`, `PodBuilder`,
//!   `DeploymentBuilder`, `ServiceBuilder`) so a test states only what matters to it:
//!   `NodeBuilder::new("n1").cpu("4").memory("8Gi").ready().build()`.
//! - [`hollow`]: hollow nodes, fake agents without a runtime that register a Node, heartbeat,
//!   and mark pods bound to them Ready with a host IP and host ports.
//! - [`linearizability`]: a store history (create, CAS update, delete, get, list; outcomes may
//!   be unknown) checked for linearizability with `todc-utils`' WGL checker.
//! - [`skip`]: the one "skip here, fail under CI" decision for tests that need something of the
//!   machine (Docker, python3, network namespaces); every skip prints [`skip::SKIP_PREFIX`].
//!
//! Builders produce plain `berth_proto::types` values and do no I/O.

pub mod builders;
pub mod hollow;
pub mod images;
pub mod linearizability;
pub mod skip;

pub use builders::{DeploymentBuilder, NodeBuilder, PodBuilder, ServiceBuilder};
pub use hollow::{HollowConfig, HollowNode};
