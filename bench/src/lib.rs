//! berth-bench: benchmark harnesses that compare Berth with its anchors in the same run on the
//! same machine (absolute figures on shared machines mean little; ratios hold).
//!
//! - [`wrk`]: run `wrk` and parse its report (req/s, p99, errors).
//! - [`http_backend`]: a small keep-alive HTTP/1.1 server, the backend when nginx is missing.
//! - [`procs`]: external anchor processes (nginx, HAProxy) started from generated configs and
//!   killed on drop; tool lookup that says what is missing instead of failing.
//!
//! Binaries: `proxy-bench` (direct vs HAProxy vs the Berth Service proxy, keep-alive and
//! new-connection-per-request).

pub mod cluster;
pub mod http_backend;
pub mod images;
pub mod procs;
pub mod runtime_thread;
pub mod wrk;
