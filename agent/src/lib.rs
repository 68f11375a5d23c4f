//! berth-agent: the node agent that makes pods real.
pub mod agent;
pub mod api;
pub mod backoff;
pub mod events;
pub mod hostports;
pub mod logs;
pub mod node;
pub mod podsync;
pub mod probe;
pub mod prober;
pub mod proxy;
pub mod runtime;

pub use agent::{run, start, AgentArgs, AgentError, AgentHandle, RuntimeKind};
