//! The controller runtime's Prometheus metrics, in the process-wide
//! [`berth_metrics::global`] registry, labelled by controller (the reconciled type's name).

use berth_metrics::{Counter, Gauge, Histogram};

/// Handles to one controller's metrics; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct ControllerMetrics {
    pub ok: Counter,
    pub errors: Counter,
    pub panics: Counter,
    pub duration: Histogram,
    pub queue_depth: Gauge,
}

/// The controller label for a reconciled type: its name without the module path
/// (`berth_proto::types::Deployment` -> `Deployment`).
pub(crate) fn controller_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    let base = full.split('<').next().unwrap_or(full);
    base.rsplit("::").next().unwrap_or(base)
}

impl ControllerMetrics {
    pub fn global(controller: &str) -> ControllerMetrics {
        let r = berth_metrics::global();
        let reconciles = r.counter_vec(
            "berth_controller_reconciles_total",
            "Reconciles run, by controller and result (ok, error, panic).",
            &["controller", "result"],
        );
        ControllerMetrics {
            ok: reconciles.with(&[controller, "ok"]),
            errors: reconciles.with(&[controller, "error"]),
            panics: reconciles.with(&[controller, "panic"]),
            duration: r
                .histogram_vec(
                    "berth_controller_reconcile_duration_seconds",
                    "Reconcile duration, by controller.",
                    &["controller"],
                    berth_metrics::DEFAULT_LATENCY_BUCKETS,
                )
                .with(&[controller]),
            queue_depth: r
                .gauge_vec(
                    "berth_controller_queue_depth",
                    "Keys waiting in the controller's work queue.",
                    &["controller"],
                )
                .with(&[controller]),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn controller_name_is_the_bare_type_name() {
        assert_eq!(
            super::controller_name::<berth_proto::types::Deployment>(),
            "Deployment"
        );
        assert_eq!(super::controller_name::<Vec<u8>>(), "Vec");
    }
}
