//! kubectl-style tables live in `berth_proto::table` (the API server serves them to kubectl as
//! `meta.k8s.io/v1 Table`; the CLI prints them).
pub use berth_proto::table::*;
