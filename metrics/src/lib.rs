//! berth-metrics: the Prometheus metrics facility shared by every Berth component, on
//! `prometheus-client` (the Prometheus org's Rust client: registry, metric types, text encoder).
//!
//! Main types:
//! - [`Registry`]: a cheap, cloneable set of metric families. Components register
//!   [`CounterVec`], [`GaugeVec`] and [`HistogramVec`] families (labelled; the unlabelled
//!   [`Counter`], [`Gauge`], [`Histogram`] are a family with no labels) and bump them from hot
//!   paths with atomics only, or add a *collector*: a closure that reads state owned by
//!   someone else (raft status, store counts) at scrape time and returns [`Family`] values.
//!   Registering a name twice returns the same family; counters and gauges read back with
//!   `get()`.
//! - [`global()`]: the process-wide registry used by loops that have no owner to hand one to
//!   them (the controller runtime, the scheduler). Per-instance state (a server, an agent)
//!   uses its own `Registry`, so several in one test process do not mix.
//! - [`text`]: [`text::render`] merges registries into one exposition in the Prometheus text
//!   format 0.0.4 (prometheus-client's encoder), [`text::render_families`] renders families
//!   computed per scrape, and a small sample parser for tests.
//! - [`http`]: the `GET /metrics` endpoint on hyper (HTTP/1.1), the accept loop and response
//!   helpers the agent's API shares, and [`http::scrape`].
//!
//! Data flow: hot path -> atomic in a registered metric; scrape -> `text::render` (each
//! registry's families, then its collectors) -> HTTP response.

pub mod http;
mod registry;
pub mod text;

pub use registry::{
    global, Counter, CounterVec, Family, Gauge, GaugeVec, Histogram, HistogramVec, Metric,
    MetricType, Registry, DEFAULT_LATENCY_BUCKETS,
};
