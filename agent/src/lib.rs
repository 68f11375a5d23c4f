//! berth-agent: the node agent that makes pods real.
pub mod backoff;
pub mod probe;
pub mod proxy;
pub mod runtime;
