//! Per-Service-port counters (lock-free atomics bumped by connection tasks), their snapshot
//! type, and their Prometheus families.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use berth_metrics::{Family, MetricType};

use super::ServiceKey;

#[derive(Default)]
pub(crate) struct ServiceCounters {
    pub(crate) connections_total: AtomicU64,
    pub(crate) connections_active: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) no_backend: AtomicU64,
    pub(crate) connect_errors: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) drain_closed: AtomicU64,
}

pub(crate) fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl ServiceCounters {
    pub(crate) fn snapshot(
        &self,
        key: &ServiceKey,
        node_port: u16,
        ready_backends: usize,
        backends: Vec<BackendMetrics>,
    ) -> ServiceMetrics {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ServiceMetrics {
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            port_name: key.port_name.clone(),
            node_port,
            ready_backends,
            connections_total: get(&self.connections_total),
            connections_active: get(&self.connections_active),
            bytes_in: get(&self.bytes_in),
            bytes_out: get(&self.bytes_out),
            no_backend_errors: get(&self.no_backend),
            connect_errors: get(&self.connect_errors),
            failed_connections: get(&self.failed),
            drain_closed: get(&self.drain_closed),
            backends,
        }
    }
}

/// One backend as seen by the metrics: listed (ready) or draining.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendMetrics {
    pub addr: SocketAddr,
    /// Connections (and connect attempts) in flight to it.
    pub active: u64,
    /// false: removed from the set, connections still draining.
    pub ready: bool,
}

/// Counters of one Service port since it was first configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceMetrics {
    pub namespace: String,
    pub name: String,
    pub port_name: String,
    pub node_port: u16,
    /// Backends in the current set.
    pub ready_backends: usize,
    /// Client connections accepted.
    pub connections_total: u64,
    /// Client connections open now.
    pub connections_active: u64,
    /// Bytes from clients to backends.
    pub bytes_in: u64,
    /// Bytes from backends to clients.
    pub bytes_out: u64,
    /// Clients closed at once because the Service had no ready backend.
    pub no_backend_errors: u64,
    /// Failed connect attempts to backends (each one, including those retried elsewhere).
    pub connect_errors: u64,
    /// Clients closed because every backend tried failed to connect.
    pub failed_connections: u64,
    /// Connections cut because their backend was removed longer than the drain timeout ago.
    pub drain_closed: u64,
    pub backends: Vec<BackendMetrics>,
}

/// Renders the snapshot in the Prometheus text exposition format (version 0.0.4).
pub fn render_prometheus(services: &[ServiceMetrics]) -> String {
    berth_metrics::text::render_families(proxy_families(services))
}

/// The snapshot as metric families, one series per Service port.
pub fn proxy_families(services: &[ServiceMetrics]) -> Vec<Family> {
    type Field = fn(&ServiceMetrics) -> u64;
    let families: [(&str, MetricType, &str, Field); 10] = [
        (
            "berth_proxy_connections_total",
            MetricType::Counter,
            "Client connections accepted.",
            |m| m.connections_total,
        ),
        (
            "berth_proxy_connections_active",
            MetricType::Gauge,
            "Client connections open now.",
            |m| m.connections_active,
        ),
        (
            "berth_proxy_bytes_in_total",
            MetricType::Counter,
            "Bytes copied from clients to backends.",
            |m| m.bytes_in,
        ),
        (
            "berth_proxy_bytes_out_total",
            MetricType::Counter,
            "Bytes copied from backends to clients.",
            |m| m.bytes_out,
        ),
        (
            "berth_proxy_no_backend_total",
            MetricType::Counter,
            "Clients closed at once because the service had no ready backend.",
            |m| m.no_backend_errors,
        ),
        (
            "berth_proxy_connect_errors_total",
            MetricType::Counter,
            "Failed connect attempts to backends.",
            |m| m.connect_errors,
        ),
        (
            "berth_proxy_failed_connections_total",
            MetricType::Counter,
            "Clients closed because every backend tried failed to connect.",
            |m| m.failed_connections,
        ),
        (
            "berth_proxy_drain_closed_total",
            MetricType::Counter,
            "Connections cut when the drain timeout of their removed backend ran out.",
            |m| m.drain_closed,
        ),
        (
            "berth_proxy_backends",
            MetricType::Gauge,
            "Ready backends in the current set.",
            |m| m.ready_backends as u64,
        ),
        (
            "berth_proxy_draining_backends",
            MetricType::Gauge,
            "Removed backends with connections still open.",
            |m| m.backends.iter().filter(|b| !b.ready).count() as u64,
        ),
    ];
    families
        .into_iter()
        .map(|(name, kind, help, field)| {
            let mut fam = Family::new(name, help, kind);
            for m in services {
                let node_port = m.node_port.to_string();
                fam.push(
                    &[
                        ("namespace", &m.namespace),
                        ("service", &m.name),
                        ("port", &m.port_name),
                        ("node_port", &node_port),
                    ],
                    field(m) as f64,
                );
            }
            fam
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ServiceMetrics {
        ServiceMetrics {
            namespace: "default".into(),
            name: "we\"b".into(),
            port_name: "http".into(),
            node_port: 30080,
            ready_backends: 2,
            connections_total: 10,
            connections_active: 3,
            bytes_in: 100,
            bytes_out: 2000,
            no_backend_errors: 1,
            connect_errors: 4,
            failed_connections: 0,
            drain_closed: 0,
            backends: vec![BackendMetrics {
                addr: "127.0.0.1:9".parse().expect("addr"),
                active: 1,
                ready: false,
            }],
        }
    }

    #[test]
    fn prometheus_text_has_typed_families_and_escaped_labels() {
        let text = render_prometheus(&[sample()]);
        assert!(text.contains("# TYPE berth_proxy_connections_total counter\n"));
        assert!(text.contains("# TYPE berth_proxy_connections_active gauge\n"));
        assert!(text.contains(
            "berth_proxy_connections_total{namespace=\"default\",service=\"we\\\"b\",port=\"http\",node_port=\"30080\"} 10\n"
        ));
        assert!(text.contains("berth_proxy_bytes_out_total{"));
        assert!(text.contains("} 2000\n"));
        assert!(text.contains("berth_proxy_draining_backends{"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap_or_default();
            assert!(value.parse::<u64>().is_ok(), "bad sample line: {line}");
        }
    }
}
