//! The scheduler's Prometheus metrics, in the process-wide [`berth_metrics::global`] registry
//! (the scheduler runs inside a server process and is exported with the server's `/metrics`).

use berth_metrics::{Counter, Gauge, Histogram, Registry};

/// Handles to the scheduler's metrics; cheap to clone.
#[derive(Debug, Clone)]
pub struct SchedulerMetrics {
    /// Unbound pods waiting for a node at the last pass (the scheduling queue depth).
    pub pending: Gauge,
    /// Pods of the last pass that fit no node.
    pub unschedulable: Gauge,
    pub scheduled: Counter,
    pub bind_conflicts: Counter,
    pub pass_duration: Histogram,
}

impl SchedulerMetrics {
    pub fn register(r: &Registry) -> SchedulerMetrics {
        SchedulerMetrics {
            pending: r.gauge(
                "berth_scheduler_pending_pods",
                "Unbound pods waiting for a node at the last scheduling pass (queue depth).",
            ),
            unschedulable: r.gauge(
                "berth_scheduler_unschedulable_pods",
                "Pods that fit no node at the last scheduling pass.",
            ),
            scheduled: r.counter(
                "berth_scheduler_pods_scheduled_total",
                "Pods bound to a node.",
            ),
            bind_conflicts: r.counter(
                "berth_scheduler_bind_conflicts_total",
                "Binds that lost a race with another write (retried on the next pass).",
            ),
            pass_duration: r.histogram(
                "berth_scheduler_pass_duration_seconds",
                "Duration of a scheduling pass that had work (decide and write).",
                berth_metrics::DEFAULT_LATENCY_BUCKETS,
            ),
        }
    }

    /// The handles in the process-wide registry.
    pub fn global() -> SchedulerMetrics {
        SchedulerMetrics::register(berth_metrics::global())
    }
}
