//! berth-metrics: a small Prometheus metrics facility shared by every Berth component.
//!
//! Main types:
//! - [`Registry`]: a cheap, cloneable set of metric families. Components register
//!   [`CounterVec`], [`GaugeVec`] and [`HistogramVec`] families (labelled; the unlabelled
//!   [`Counter`], [`Gauge`], [`Histogram`] are a family with no labels) and bump them from hot
//!   paths with atomics only, or add a *collector*: a closure that reads state owned by
//!   someone else (raft status, store counts, the proxy's counters) at scrape time and returns
//!   [`Family`] values.
//! - [`global()`]: the process-wide registry used by loops that have no owner to hand one to
//!   them (the controller runtime, the scheduler). Per-instance state (a server, an agent)
//!   uses its own `Registry`, so several in one test process do not mix.
//! - [`text`]: rendering in the Prometheus text exposition format 0.0.4 (`# HELP`, `# TYPE`,
//!   escaped label values, histograms as cumulative `_bucket{le=..}` with `le="+Inf"`, `_sum`,
//!   `_count`) and a small sample parser for tests.
//! - [`http`]: the `GET /metrics` endpoint on hyper (HTTP/1.1), the accept loop and response
//!   helpers the agent's API shares, and [`http::scrape`].
//!
//! Data flow: hot path -> atomic in a registered metric; scrape -> `Registry::gather` (registered
//! families + collectors, sorted by name) -> `text::render` -> HTTP response.

pub mod http;
mod registry;
pub mod text;

pub use registry::{
    global, Counter, CounterVec, Family, Gauge, GaugeVec, Histogram, HistogramSnapshot,
    HistogramVec, Metric, MetricType, MetricValue, Registry, DEFAULT_LATENCY_BUCKETS,
};
