//! berth-apiserver (being built; see ARCHITECTURE.md).
pub mod raft;
