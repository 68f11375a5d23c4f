//! End-to-end suite: the real `berth` binary, real processes, each host with its own address.
//!
//! Every test builds three hosts as Linux network namespaces on a private bridge (see
//! `harness/net.rs`), starts three API servers (Raft) and, when it needs workloads, three agents
//! on the process runtime, then injects faults (kill -9, restarts, iptables partitions) and
//! checks what a user sees through the CLI, the gRPC API and the Services' node ports. Every
//! connection is mutual TLS, as on a real cluster (join token, admin config, node certificates);
//! `scenarios/security.rs` checks who may join, connect and write.
//! See `e2e/README.md` for how to run it and what each scenario proves.

mod harness;
mod scenarios;
