//! berth-apiserver: the replicated API server.
//!
//! Main parts:
//! - [`raft`]: consensus (raft-rs driven by one task), log and snapshots in sled.
//! - [`store`]: the revisioned object store, the raft state machine, with the watch hub.
//!
//! Data flow of a write: gRPC request -> validate -> raft propose -> commit -> `Store::apply`
//! on every member -> watch events. Reads go through `read_index` then the local store.
pub mod raft;
pub mod store;
