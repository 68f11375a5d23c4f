//! The scenarios: [`control_plane`] needs only servers and the CLI; [`workloads`] also runs
//! agents, controllers, the scheduler and the per-node proxy; [`security`] checks joining,
//! authentication and the node authorizer over the real binaries; [`dev`] runs `berth dev` on
//! one host (Ctrl-C and resume); [`proof`] checks linearizability, watch guarantees and crash
//! safety of the store under injected faults.

mod autorevert;
mod control_plane;
mod dev;
mod harness_selftest;
mod network;
mod proof;
mod registry;
mod release;
mod security;
mod workloads;
