//! The `berth` command: one binary, many roles (server, agent, dev, CLI).
//!
//! `main()` parses flags with clap, sets up tracing and signals, and dispatches to the library
//! `run` functions of the component crates, or to the kubectl-like CLI in [`cli`].

pub mod cli;
pub mod demo;
pub mod roles;
pub use cli::main;
