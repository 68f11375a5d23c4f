//! berth-agent: the node agent that makes pods real (`berth agent`, and the agent half of
//! `berth dev`).
//!
//! Main types: [`AgentArgs`] (flags) and [`start`]/[`run`] (wiring, in [`agent`]);
//! [`runtime::Runtime`] with the Docker, process and fake runtimes; [`podsync::PodSync`], the
//! level-triggered pod reconciler around the pure [`podsync::plan`] and
//! [`podsync::pod_status`]; [`prober::Prober`] over the pure [`probe::ProbeState`];
//! [`backoff`] (CrashLoopBackOff); [`hostports`]; [`node::Heartbeat`]; the logs API in
//! [`logs`] (server + [`logs::fetch`] client, also serving `/metrics` from [`metrics`]); the
//! Service proxy in [`proxy`].
//!
//! Data flow:
//!
//! ```text
//! API watch (Pods) --> PodCache --+
//!                                 +--> PodSync round: record_exits -> plan -> Runtime
//! Runtime::list (labels) ---------+        create/start/stop/remove; Prober workers
//!                                          -> pod_status -> UpdateStatus; Events
//! Node heartbeat (2 s) ---------------> Node status (Ready, capacity, agentEndpoint)
//! API watch (Services+Endpoints) -----> proxy::ProxyHandle::set_services
//! logs API <--- `berth logs` (logs::fetch) --- Runtime::logs
//! ```
//!
//! Nothing local is trusted across a restart: the runtime's labels and the API are re-read,
//! and running workloads are adopted, not restarted.
pub mod agent;
pub mod api;
pub mod backoff;
pub mod credentials;
pub mod dns;
pub mod drain;
pub mod events;
pub mod exec;
pub mod hooks;
pub mod hostports;
pub mod logs;
pub mod metrics;
pub mod mirror;
pub mod net;
pub mod node;
pub mod podenv;
pub mod podnet;
pub mod podsync;
pub mod portforward;
pub mod probe;
pub mod prober;
pub mod proxy;
pub mod pull;
pub mod pullsecrets;
pub mod runtime;
pub mod svcenv;
pub mod volumes;

pub use agent::{run, start, AgentArgs, AgentError, AgentHandle, RuntimeKind};
