//! Metric handles and the [`Registry`] holding them, on `prometheus-client`: the families live in
//! a [`prometheus_client::registry::Registry`], collectors are [`prometheus_client::collector::Collector`]s,
//! and [`crate::text::render`] encodes with prometheus-client's Prometheus text encoder. This
//! module keeps Berth's small API over it: register-or-get by name (callers need not
//! coordinate), label values by position, and `get()` read-back on counters and gauges.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter as PcCounter;
use prometheus_client::metrics::family::{Family as PcFamily, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge as PcGauge;
use prometheus_client::metrics::histogram::Histogram as PcHistogram;
use prometheus_client::metrics::MetricType as PcType;

/// Latency buckets in seconds, 1 ms .. 10 s (request latencies).
pub const DEFAULT_LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The label set of one series: (name, value) pairs in registration order.
type Labels = Vec<(String, String)>;

/// The Prometheus metric type of a collected [`Family`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    Counter,
    Gauge,
}

/// One labelled sample of a collected family.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// A family computed at scrape time by a collector ([`Registry::add_collector`]): what one
/// `# HELP` / `# TYPE` pair describes. A counter's name ends in `_total`.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub name: String,
    pub help: String,
    pub kind: MetricType,
    pub metrics: Vec<Metric>,
}

impl Family {
    pub fn new(name: &str, help: &str, kind: MetricType) -> Family {
        Family {
            name: name.to_string(),
            help: help.to_string(),
            kind,
            metrics: Vec::new(),
        }
    }
    pub fn gauge(name: &str, help: &str) -> Family {
        Family::new(name, help, MetricType::Gauge)
    }
    pub fn counter(name: &str, help: &str) -> Family {
        Family::new(name, help, MetricType::Counter)
    }
    /// Add a sample (builder style).
    pub fn with(mut self, labels: &[(&str, &str)], value: f64) -> Family {
        self.push(labels, value);
        self
    }
    /// Add a sample.
    pub fn push(&mut self, labels: &[(&str, &str)], value: f64) {
        self.metrics.push(Metric {
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            value,
        });
    }

    /// Write this family through a prometheus-client encoder (the encoder adds `_total` to a
    /// counter's name, so it is given without).
    pub(crate) fn encode(&self, encoder: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let (name, kind) = match self.kind {
            MetricType::Counter => (counter_base(&self.name), PcType::Counter),
            MetricType::Gauge => (self.name.as_str(), PcType::Gauge),
        };
        let mut fam = encoder.encode_descriptor(name, &self.help, None, kind)?;
        for m in &self.metrics {
            let mut enc = fam.encode_family(&m.labels)?;
            // Whole values are written as integers (`3`, not `3.0`), as the registered
            // counters are.
            let whole = m.value.fract() == 0.0 && m.value.abs() < 9.0e15;
            match (self.kind, whole) {
                (MetricType::Counter, true) if m.value >= 0.0 => {
                    enc.encode_counter::<Labels, u64, f64>(&(m.value as u64), None)?
                }
                (MetricType::Counter, _) => {
                    enc.encode_counter::<Labels, f64, f64>(&m.value, None)?
                }
                (MetricType::Gauge, true) => enc.encode_gauge(&(m.value as i64))?,
                (MetricType::Gauge, false) => enc.encode_gauge(&m.value)?,
            }
        }
        Ok(())
    }
}

/// A counter's name as prometheus-client registers it: without the `_total` it appends.
fn counter_base(name: &str) -> &str {
    name.strip_suffix("_total").unwrap_or(name)
}

/// prometheus-client appends a `.` to registered help text; ours already ends with one.
fn help_base(help: &str) -> &str {
    help.strip_suffix('.').unwrap_or(help)
}

/// A monotonically increasing count. Cloning shares the value.
#[derive(Debug, Clone, Default)]
pub struct Counter(PcCounter<u64>);

impl Counter {
    pub fn inc(&self) {
        self.0.inc();
    }
    pub fn add(&self, n: u64) {
        self.0.inc_by(n);
    }
    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

/// A value that goes up and down. Cloning shares the value.
#[derive(Debug, Clone, Default)]
pub struct Gauge(PcGauge<f64, AtomicU64>);

impl Gauge {
    pub fn set(&self, v: f64) {
        self.0.set(v);
    }
    pub fn add(&self, v: f64) {
        self.0.inc_by(v);
    }
    pub fn inc(&self) {
        self.add(1.0);
    }
    pub fn dec(&self) {
        self.add(-1.0);
    }
    pub fn get(&self) -> f64 {
        self.0.get()
    }
}

/// Observations counted into fixed buckets. Cloning shares the state.
#[derive(Debug, Clone)]
pub struct Histogram(PcHistogram);

impl Histogram {
    /// A histogram not attached to any registry (tests, or a misregistration).
    pub fn detached(bounds: &[f64]) -> Histogram {
        Histogram(HistogramCtor(sanitize_bounds(bounds)).new_metric())
    }

    pub fn observe(&self, v: f64) {
        self.0.observe(v);
    }

    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }
}

/// Finite, ascending, deduplicated bounds.
fn sanitize_bounds(bounds: &[f64]) -> Arc<[f64]> {
    let mut b: Vec<f64> = bounds.iter().copied().filter(|v| v.is_finite()).collect();
    b.sort_by(f64::total_cmp);
    b.dedup();
    b.into()
}

/// Makes each series of a histogram family with the family's bounds.
#[derive(Debug, Clone)]
struct HistogramCtor(Arc<[f64]>);

impl MetricConstructor<PcHistogram> for HistogramCtor {
    fn new_metric(&self) -> PcHistogram {
        PcHistogram::new(self.0.iter().copied())
    }
}

/// Pair label names with values (missing values are empty, extra ones ignored).
fn label_set(names: &[String], values: &[&str]) -> Labels {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            (
                n.clone(),
                values.get(i).copied().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn names_of(labels: &[&str]) -> Arc<[String]> {
    labels.iter().map(|s| s.to_string()).collect()
}

/// A family of counters distinguished by label values.
#[derive(Debug, Clone)]
pub struct CounterVec {
    family: PcFamily<Labels, PcCounter<u64>>,
    names: Arc<[String]>,
}

impl CounterVec {
    fn new(labels: &[&str]) -> CounterVec {
        CounterVec {
            family: PcFamily::default(),
            names: names_of(labels),
        }
    }
    /// The counter for these label values (in the order the label names were registered).
    pub fn with(&self, values: &[&str]) -> Counter {
        Counter(
            self.family
                .get_or_create_owned(&label_set(&self.names, values)),
        )
    }
}

/// A family of gauges distinguished by label values.
#[derive(Debug, Clone)]
pub struct GaugeVec {
    family: PcFamily<Labels, PcGauge<f64, AtomicU64>>,
    names: Arc<[String]>,
}

impl GaugeVec {
    fn new(labels: &[&str]) -> GaugeVec {
        GaugeVec {
            family: PcFamily::default(),
            names: names_of(labels),
        }
    }
    pub fn with(&self, values: &[&str]) -> Gauge {
        Gauge(
            self.family
                .get_or_create_owned(&label_set(&self.names, values)),
        )
    }
}

/// A family of histograms (same buckets) distinguished by label values.
#[derive(Debug, Clone)]
pub struct HistogramVec {
    family: PcFamily<Labels, PcHistogram, HistogramCtor>,
    names: Arc<[String]>,
    bounds: Arc<[f64]>,
}

impl HistogramVec {
    fn new(labels: &[&str], bounds: Arc<[f64]>) -> HistogramVec {
        HistogramVec {
            family: PcFamily::new_with_constructor(HistogramCtor(bounds.clone())),
            names: names_of(labels),
            bounds,
        }
    }
    pub fn with(&self, values: &[&str]) -> Histogram {
        Histogram(
            self.family
                .get_or_create_owned(&label_set(&self.names, values)),
        )
    }
}

/// What was registered under a name, to hand the same family to a second registration.
#[derive(Debug, Clone)]
enum Registered {
    Counter(CounterVec),
    Gauge(GaugeVec),
    Histogram(HistogramVec),
}

/// A [`Registry::add_collector`] closure as a prometheus-client collector.
struct FnCollector(Box<dyn Fn() -> Vec<Family> + Send + Sync>);

impl std::fmt::Debug for FnCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FnCollector")
    }
}

impl Collector for FnCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        for fam in (self.0)() {
            fam.encode(&mut encoder)?;
        }
        Ok(())
    }
}

struct Inner {
    registry: prometheus_client::registry::Registry,
    shapes: HashMap<String, Registered>,
}

/// A set of metric families; cheap to clone (shared).
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Mutex<Inner>>,
}

impl Default for Registry {
    fn default() -> Registry {
        Registry {
            inner: Arc::new(Mutex::new(Inner {
                registry: prometheus_client::registry::Registry::default(),
                shapes: HashMap::new(),
            })),
        }
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        let mut names: Vec<&String> = inner.shapes.keys().collect();
        names.sort();
        f.debug_struct("Registry")
            .field("families", &names)
            .finish()
    }
}

/// The process-wide registry (controller runtime, scheduler).
pub fn global() -> &'static Registry {
    static GLOBAL: OnceLock<Registry> = OnceLock::new();
    GLOBAL.get_or_init(Registry::new)
}

fn same_labels(a: &[String], b: &[&str]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

fn conflict(name: &str) {
    tracing::error!(
        metric = name,
        "metric registered twice with different shapes; the second one is not exported"
    );
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Register (or get the already registered) counter family `name` (ending in `_total`).
    /// Registering the same name again with the same labels returns the same family, so
    /// callers need not coordinate; a conflicting registration is logged and gets a detached
    /// family (its values are not exported) rather than a panic.
    pub fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> CounterVec {
        let mut inner = self.lock();
        match inner.shapes.get(name) {
            Some(Registered::Counter(v)) if same_labels(&v.names, labels) => return v.clone(),
            Some(_) => {
                conflict(name);
                return CounterVec::new(labels);
            }
            None => {}
        }
        let v = CounterVec::new(labels);
        inner
            .registry
            .register(counter_base(name), help_base(help), v.family.clone());
        inner
            .shapes
            .insert(name.to_string(), Registered::Counter(v.clone()));
        v
    }

    pub fn counter(&self, name: &str, help: &str) -> Counter {
        self.counter_vec(name, help, &[]).with(&[])
    }

    /// Register (or get) gauge family `name`; see [`Registry::counter_vec`].
    pub fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
        let mut inner = self.lock();
        match inner.shapes.get(name) {
            Some(Registered::Gauge(v)) if same_labels(&v.names, labels) => return v.clone(),
            Some(_) => {
                conflict(name);
                return GaugeVec::new(labels);
            }
            None => {}
        }
        let v = GaugeVec::new(labels);
        inner
            .registry
            .register(name, help_base(help), v.family.clone());
        inner
            .shapes
            .insert(name.to_string(), Registered::Gauge(v.clone()));
        v
    }

    pub fn gauge(&self, name: &str, help: &str) -> Gauge {
        self.gauge_vec(name, help, &[]).with(&[])
    }

    /// Register (or get) histogram family `name` with upper bounds `buckets` (non-finite
    /// bounds are dropped; `+Inf` is implicit); see [`Registry::counter_vec`].
    pub fn histogram_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: &[f64],
    ) -> HistogramVec {
        let bounds = sanitize_bounds(buckets);
        let mut inner = self.lock();
        match inner.shapes.get(name) {
            Some(Registered::Histogram(v))
                if same_labels(&v.names, labels) && v.bounds == bounds =>
            {
                return v.clone()
            }
            Some(_) => {
                conflict(name);
                return HistogramVec::new(labels, bounds);
            }
            None => {}
        }
        let v = HistogramVec::new(labels, bounds);
        inner
            .registry
            .register(name, help_base(help), v.family.clone());
        inner
            .shapes
            .insert(name.to_string(), Registered::Histogram(v.clone()));
        v
    }

    pub fn histogram(&self, name: &str, help: &str, buckets: &[f64]) -> Histogram {
        self.histogram_vec(name, help, &[], buckets).with(&[])
    }

    /// Add a closure called at every scrape; it returns families computed from state owned
    /// elsewhere. It runs while this registry is being encoded: it must be quick and must not
    /// call back into this registry.
    pub fn add_collector(&self, f: impl Fn() -> Vec<Family> + Send + Sync + 'static) {
        self.lock()
            .registry
            .register_collector(Box::new(FnCollector(Box::new(f))));
    }

    /// This registry in the Prometheus text format; see [`crate::text::render`] to merge
    /// several.
    pub fn render(&self) -> String {
        crate::text::render(&[self])
    }

    /// Encode into `out` with prometheus-client's Prometheus text (0.0.4) encoder.
    pub(crate) fn encode_into(&self, out: &mut String) -> std::fmt::Result {
        prometheus_client::encoding::prometheus_text::encode(out, &self.lock().registry)
    }
}

// `EncodeMetric` is what `register` needs of the families; asserted here so a change of the
// label type shows at this line rather than inside prometheus-client's bounds.
const _: fn() = || {
    fn is_metric<M: EncodeMetric>() {}
    is_metric::<PcFamily<Labels, PcCounter<u64>>>();
    is_metric::<PcFamily<Labels, PcHistogram, HistogramCtor>>();
};

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::text::{find, parse};

    #[test]
    fn histogram_counts_each_observation_in_the_first_bucket_at_or_above_it() {
        let r = Registry::new();
        let h = r.histogram("h_seconds", "H.", &[1.0, 0.1, f64::INFINITY, 0.5]);
        for v in [0.05, 0.1, 0.3, 2.0, 1.0] {
            h.observe(v);
        }
        let s = parse(&r.render()).unwrap();
        let bucket = |le: &str| find(&s, "h_seconds_bucket", &[("le", le)]);
        assert_eq!(bucket("0.1"), Some(2.0));
        assert_eq!(bucket("0.5"), Some(3.0));
        assert_eq!(bucket("1"), Some(4.0));
        assert_eq!(bucket("+Inf"), Some(5.0));
        assert_eq!(find(&s, "h_seconds_count", &[]), Some(5.0));
        let sum = find(&s, "h_seconds_sum", &[]).unwrap();
        assert!((sum - 3.45).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn registering_twice_shares_the_family_and_a_conflict_is_detached() {
        let r = Registry::new();
        let a = r.counter_vec("x_total", "X.", &["code"]);
        let b = r.counter_vec("x_total", "X.", &["code"]);
        a.with(&["OK"]).inc();
        b.with(&["OK"]).add(2);
        assert_eq!(a.with(&["OK"]).get(), 3);
        let g = r.gauge("x_total", "conflict");
        g.set(7.0);
        let text = r.render();
        assert_eq!(text.matches("# TYPE").count(), 1, "{text}");
        assert!(text.contains("# TYPE x_total counter\n"), "{text}");
        let s = parse(&text).unwrap();
        assert_eq!(s.len(), 1, "{text}");
        assert_eq!(find(&s, "x_total", &[("code", "OK")]), Some(3.0));
    }

    #[test]
    fn gauge_moves_both_ways_and_collectors_join_the_output() {
        let r = Registry::new();
        let g = r.gauge("b_gauge", "B.");
        g.inc();
        g.inc();
        g.dec();
        assert_eq!(g.get(), 1.0);
        r.add_collector(|| {
            vec![
                Family::gauge("a_gauge", "A.").with(&[("k", "v")], 4.0),
                Family::counter("c_total", "C.").with(&[], 2.0),
            ]
        });
        let text = r.render();
        let s = parse(&text).unwrap();
        assert_eq!(find(&s, "b_gauge", &[]), Some(1.0));
        assert_eq!(find(&s, "a_gauge", &[("k", "v")]), Some(4.0));
        assert_eq!(find(&s, "c_total", &[]), Some(2.0));
        assert!(text.contains("# TYPE c_total counter\n"), "{text}");
        assert!(text.contains("# HELP a_gauge A.\n"), "{text}");
    }
}
