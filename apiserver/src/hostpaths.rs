//! The hostPath policy at admission (see [`berth_proto::hostpath`], shared with the agent,
//! which checks the resolved path again on the node).

pub use berth_proto::hostpath::*;
