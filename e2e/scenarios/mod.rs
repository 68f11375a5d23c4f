//! The scenarios: [`control_plane`] needs only servers and the CLI; [`workloads`] also runs
//! agents, controllers, the scheduler and the per-node proxy.

mod control_plane;
mod harness_selftest;
mod workloads;
