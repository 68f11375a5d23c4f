//! berth-testkit: dev-only helpers shared by every crate's tests.
//!
//! - [`builders`]: fluent fixture builders for the object schema (`NodeBuilder`, `PodBuilder`,
//!   `DeploymentBuilder`, `ServiceBuilder`) so a test states only what matters to it:
//!   `NodeBuilder::new("n1").cpu("4").memory("8Gi").ready().build()`.
//!
//! Builders produce plain `berth_proto::types` values; nothing here does I/O.

pub mod builders;

pub use builders::{DeploymentBuilder, NodeBuilder, PodBuilder, ServiceBuilder};
