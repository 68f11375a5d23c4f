//! Metric types and the [`Registry`] holding them.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

/// Latency buckets in seconds, 1 ms .. 10 s (request latencies).
pub const DEFAULT_LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The Prometheus metric type of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
}

impl MetricType {
    pub fn as_str(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Histogram => "histogram",
        }
    }
}

/// A histogram's state at one instant: per-bucket (not cumulative) counts, the last one being
/// the overflow bucket above the highest bound.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Upper bounds, ascending (without +Inf).
    pub bounds: Vec<f64>,
    /// `bounds.len() + 1` counts; `counts[i]` observations fell in `(bounds[i-1], bounds[i]]`.
    pub counts: Vec<u64>,
    pub sum: f64,
}

impl HistogramSnapshot {
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// The value of one labelled series.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricValue {
    /// A counter or gauge sample.
    Single(f64),
    Histogram(HistogramSnapshot),
}

/// One labelled series of a family.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub labels: Vec<(String, String)>,
    pub value: MetricValue,
}

/// A metric family: what one `# HELP` / `# TYPE` pair describes.
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
    /// Add a counter/gauge sample (builder style).
    pub fn with(mut self, labels: &[(&str, &str)], value: f64) -> Family {
        self.push(labels, value);
        self
    }
    /// Add a counter/gauge sample.
    pub fn push(&mut self, labels: &[(&str, &str)], value: f64) {
        self.metrics.push(Metric {
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            value: MetricValue::Single(value),
        });
    }
}

fn f64_add(cell: &AtomicU64, v: f64) {
    let mut cur = cell.load(Ordering::Relaxed);
    loop {
        let new = (f64::from_bits(cur) + v).to_bits();
        match cell.compare_exchange_weak(cur, new, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return,
            Err(actual) => cur = actual,
        }
    }
}

/// A monotonically increasing count. Cloning shares the value.
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down. Cloning shares the value.
#[derive(Debug, Clone, Default)]
pub struct Gauge(Arc<AtomicU64>);

impl Gauge {
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }
    pub fn add(&self, v: f64) {
        f64_add(&self.0, v);
    }
    pub fn inc(&self) {
        self.add(1.0);
    }
    pub fn dec(&self) {
        self.add(-1.0);
    }
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

#[derive(Debug)]
struct HistogramInner {
    bounds: Arc<[f64]>,
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
}

/// Observations counted into fixed buckets. Cloning shares the state.
#[derive(Debug, Clone)]
pub struct Histogram(Arc<HistogramInner>);

impl Histogram {
    fn with_bounds(bounds: Arc<[f64]>) -> Histogram {
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Histogram(Arc::new(HistogramInner {
            bounds,
            counts,
            sum: AtomicU64::new(0f64.to_bits()),
        }))
    }

    /// A histogram not attached to any registry (tests, or a misregistration).
    pub fn detached(bounds: &[f64]) -> Histogram {
        Histogram::with_bounds(sanitize_bounds(bounds))
    }

    pub fn observe(&self, v: f64) {
        let i = self.0.bounds.partition_point(|b| *b < v);
        if let Some(c) = self.0.counts.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        f64_add(&self.0.sum, v);
    }

    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds: self.0.bounds.to_vec(),
            counts: self
                .0
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            sum: f64::from_bits(self.0.sum.load(Ordering::Relaxed)),
        }
    }
}

/// Finite, ascending, deduplicated bounds.
fn sanitize_bounds(bounds: &[f64]) -> Arc<[f64]> {
    let mut b: Vec<f64> = bounds.iter().copied().filter(|v| v.is_finite()).collect();
    b.sort_by(f64::total_cmp);
    b.dedup();
    b.into()
}

/// Series of one family keyed by their label values.
#[derive(Debug)]
struct Series<M> {
    label_names: Arc<[String]>,
    series: Mutex<HashMap<Vec<String>, M>>,
}

impl<M: Clone> Series<M> {
    fn new(label_names: &[&str]) -> Series<M> {
        Series {
            label_names: label_names.iter().map(|s| s.to_string()).collect(),
            series: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Vec<String>, M>> {
        self.series.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The series for `values` (missing values are empty, extra ones ignored).
    fn get_or(&self, values: &[&str], make: impl FnOnce() -> M) -> M {
        let key: Vec<String> = (0..self.label_names.len())
            .map(|i| values.get(i).copied().unwrap_or_default().to_string())
            .collect();
        let mut map = self.lock();
        if let Some(m) = map.get(&key) {
            return m.clone();
        }
        let m = make();
        map.insert(key, m.clone());
        m
    }

    fn collect(&self, value: impl Fn(&M) -> MetricValue) -> Vec<Metric> {
        let map = self.lock();
        let mut out: Vec<Metric> = map
            .iter()
            .map(|(vals, m)| Metric {
                labels: self
                    .label_names
                    .iter()
                    .cloned()
                    .zip(vals.iter().cloned())
                    .collect(),
                value: value(m),
            })
            .collect();
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        out
    }
}

/// A family of counters distinguished by label values.
#[derive(Debug, Clone)]
pub struct CounterVec(Arc<Series<Counter>>);

impl CounterVec {
    /// The counter for these label values (in the order the label names were registered).
    pub fn with(&self, values: &[&str]) -> Counter {
        self.0.get_or(values, Counter::default)
    }
}

/// A family of gauges distinguished by label values.
#[derive(Debug, Clone)]
pub struct GaugeVec(Arc<Series<Gauge>>);

impl GaugeVec {
    pub fn with(&self, values: &[&str]) -> Gauge {
        self.0.get_or(values, Gauge::default)
    }
}

/// A family of histograms (same buckets) distinguished by label values.
#[derive(Debug, Clone)]
pub struct HistogramVec {
    series: Arc<Series<Histogram>>,
    bounds: Arc<[f64]>,
}

impl HistogramVec {
    pub fn with(&self, values: &[&str]) -> Histogram {
        self.series
            .get_or(values, || Histogram::with_bounds(self.bounds.clone()))
    }
}

#[derive(Debug, Clone)]
enum Registered {
    Counter(CounterVec),
    Gauge(GaugeVec),
    Histogram(HistogramVec),
}

struct Entry {
    help: String,
    metric: Registered,
}

type Collector = Arc<dyn Fn() -> Vec<Family> + Send + Sync>;

#[derive(Default)]
struct Inner {
    families: BTreeMap<String, Entry>,
    collectors: Vec<Collector>,
}

/// A set of metric families; cheap to clone (shared).
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_struct("Registry")
            .field("families", &inner.families.keys().collect::<Vec<_>>())
            .field("collectors", &inner.collectors.len())
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

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Register (or get the already registered) counter family `name`. Registering the same
    /// name again with the same labels returns the same family, so callers need not
    /// coordinate; a conflicting registration is logged and gets a detached family (its
    /// values are not exported) rather than a panic.
    pub fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> CounterVec {
        let mut inner = self.lock();
        match inner.families.get(name).map(|e| &e.metric) {
            Some(Registered::Counter(v)) if same_labels(&v.0.label_names, labels) => {
                return v.clone()
            }
            Some(_) => {
                tracing::error!(
                    metric = name,
                    "metric registered twice with different shapes"
                );
                return CounterVec(Arc::new(Series::new(labels)));
            }
            None => {}
        }
        let v = CounterVec(Arc::new(Series::new(labels)));
        inner.families.insert(
            name.to_string(),
            Entry {
                help: help.to_string(),
                metric: Registered::Counter(v.clone()),
            },
        );
        v
    }

    pub fn counter(&self, name: &str, help: &str) -> Counter {
        self.counter_vec(name, help, &[]).with(&[])
    }

    /// Register (or get) gauge family `name`; see [`Registry::counter_vec`].
    pub fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
        let mut inner = self.lock();
        match inner.families.get(name).map(|e| &e.metric) {
            Some(Registered::Gauge(v)) if same_labels(&v.0.label_names, labels) => {
                return v.clone()
            }
            Some(_) => {
                tracing::error!(
                    metric = name,
                    "metric registered twice with different shapes"
                );
                return GaugeVec(Arc::new(Series::new(labels)));
            }
            None => {}
        }
        let v = GaugeVec(Arc::new(Series::new(labels)));
        inner.families.insert(
            name.to_string(),
            Entry {
                help: help.to_string(),
                metric: Registered::Gauge(v.clone()),
            },
        );
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
        match inner.families.get(name).map(|e| &e.metric) {
            Some(Registered::Histogram(v))
                if same_labels(&v.series.label_names, labels) && v.bounds == bounds =>
            {
                return v.clone()
            }
            Some(_) => {
                tracing::error!(
                    metric = name,
                    "metric registered twice with different shapes"
                );
                return HistogramVec {
                    series: Arc::new(Series::new(labels)),
                    bounds,
                };
            }
            None => {}
        }
        let v = HistogramVec {
            series: Arc::new(Series::new(labels)),
            bounds,
        };
        inner.families.insert(
            name.to_string(),
            Entry {
                help: help.to_string(),
                metric: Registered::Histogram(v.clone()),
            },
        );
        v
    }

    pub fn histogram(&self, name: &str, help: &str, buckets: &[f64]) -> Histogram {
        self.histogram_vec(name, help, &[], buckets).with(&[])
    }

    /// Add a closure called at every scrape; it returns families computed from state owned
    /// elsewhere. It must be quick and must not call back into this registry.
    pub fn add_collector(&self, f: impl Fn() -> Vec<Family> + Send + Sync + 'static) {
        self.lock().collectors.push(Arc::new(f));
    }

    /// Every family (registered and collected), sorted by name. A labelled family with no
    /// series yet renders as HELP/TYPE only; an unlabelled one exists (at zero) from
    /// registration.
    pub fn gather(&self) -> Vec<Family> {
        let (mut out, collectors) = {
            let inner = self.lock();
            let fams: Vec<Family> = inner
                .families
                .iter()
                .map(|(name, e)| {
                    let (kind, metrics) = match &e.metric {
                        Registered::Counter(v) => (
                            MetricType::Counter,
                            v.0.collect(|c| MetricValue::Single(c.get() as f64)),
                        ),
                        Registered::Gauge(v) => (
                            MetricType::Gauge,
                            v.0.collect(|g| MetricValue::Single(g.get())),
                        ),
                        Registered::Histogram(v) => (
                            MetricType::Histogram,
                            v.series.collect(|h| MetricValue::Histogram(h.snapshot())),
                        ),
                    };
                    Family {
                        name: name.clone(),
                        help: e.help.clone(),
                        kind,
                        metrics,
                    }
                })
                .collect();
            (fams, inner.collectors.clone())
        };
        // Collectors run without the registry lock held.
        for c in collectors {
            out.extend(c());
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// [`Registry::gather`] rendered in the Prometheus text format.
    pub fn render(&self) -> String {
        crate::text::render(&self.gather())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn histogram_counts_each_observation_in_the_first_bucket_at_or_above_it() {
        let h = Histogram::detached(&[1.0, 0.1, f64::INFINITY, 0.5]);
        for v in [0.05, 0.1, 0.3, 2.0, 1.0] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(s.bounds, vec![0.1, 0.5, 1.0]);
        assert_eq!(s.counts, vec![2, 1, 1, 1]);
        assert_eq!(s.count(), 5);
        assert!((s.sum - 3.45).abs() < 1e-9);
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
        let fams = r.gather();
        assert_eq!(fams.len(), 1);
        assert_eq!(fams[0].kind, MetricType::Counter);
        assert_eq!(
            fams[0].metrics[0].labels,
            vec![("code".to_string(), "OK".to_string())]
        );
        assert_eq!(fams[0].metrics[0].value, MetricValue::Single(3.0));
    }

    #[test]
    fn gauge_moves_both_ways_and_collectors_join_the_sorted_output() {
        let r = Registry::new();
        let g = r.gauge("b_gauge", "B.");
        g.inc();
        g.inc();
        g.dec();
        assert_eq!(g.get(), 1.0);
        r.add_collector(|| vec![Family::gauge("a_gauge", "A.").with(&[("k", "v")], 4.0)]);
        let names: Vec<String> = r.gather().into_iter().map(|f| f.name).collect();
        assert_eq!(names, vec!["a_gauge", "b_gauge"]);
    }
}
