//! berth-apiserver: the replicated API server.
//!
//! Main parts:
//! - [`raft`]: consensus (raft-rs driven by one task), log and snapshots in sled.
//! - [`store`]: the revisioned object store, the raft state machine, with the watch hub.
//! - [`service`]: the gRPC `Api` service (validation, forwarding to the leader, watches).
//! - [`status`]: the one mapping of errors to gRPC codes.
//! - [`trust`]: image trust admission (require-signed-images).
//! - [`metrics`]: Prometheus metrics (raft, store, gRPC requests) served at `/metrics`.
//! - [`server`]: the process: [`ServerArgs`], [`run`], [`start`] / [`ServerHandle`].
//!
//! Data flow of a write: gRPC request -> validate -> raft propose (forwarded to the leader by
//! followers) -> commit -> `Store::apply` on every member -> watch events. Reads go through
//! `read_index` then the local store.
pub mod authz;
pub mod encryption;
pub mod failpoints;
pub mod hostpaths;
pub mod kube;
pub mod metrics;
pub mod noderestriction;
pub mod pki;
pub mod raft;
mod serve;
pub mod server;
pub mod service;
pub mod status;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod trust;

pub use server::{run, start, ServerArgs, ServerError, ServerHandle};
