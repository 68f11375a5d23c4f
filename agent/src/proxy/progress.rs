//! What this node's proxy has programmed, reported to the cluster: the traffic-switch barrier.
//!
//! Both datapaths (the userspace proxy, nftables) call [`ProxyProgress::programmed`] at the one
//! place where "the plan at revision R is programmed", i.e. after the backends of every Service
//! as of the Endpoints watch at revision R are in effect. The Node heartbeat publishes the
//! latest report as `status.proxy.programmedRevision` (one write per batch of changes, not per
//! change: the channel keeps only the newest report). The blue-green controller and the agents
//! draining a terminating pod compare it with an Endpoints object's resourceVersion: a node
//! whose programmed revision is at least that serves that Endpoints.
//!
//! The same call observes the network programming latency, as kube-proxy does: from the
//! Endpoints' `endpoints.kubernetes.io/last-change-trigger-time` (set by the endpoints
//! controller when the pod or Service change that caused it happened) to now.

use std::sync::Arc;

use berth_metrics::Histogram;
use berth_proto::types::{Endpoints, NodeProxyStatus, Time};
use tokio::sync::watch;

/// The annotation Kubernetes' endpoints controller sets to the time of the change that
/// triggered an Endpoints write.
pub const LAST_CHANGE_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// The datapath name reported as `status.proxy.mode` by the userspace proxy.
pub const USERSPACE: &str = "userspace";

/// Buckets of the programming latency histogram (seconds).
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Cheap to clone; one per node.
#[derive(Clone)]
pub struct ProxyProgress {
    tx: Arc<watch::Sender<Option<NodeProxyStatus>>>,
    latency: Option<Histogram>,
}

impl Default for ProxyProgress {
    fn default() -> Self {
        ProxyProgress::new()
    }
}

impl ProxyProgress {
    pub fn new() -> ProxyProgress {
        ProxyProgress {
            tx: Arc::new(watch::channel(None).0),
            latency: None,
        }
    }

    /// Observe the programming latency in `registry` as
    /// `berth_proxy_network_programming_duration_seconds`.
    pub fn with_metrics(mut self, registry: &berth_metrics::Registry) -> ProxyProgress {
        self.latency = Some(registry.histogram(
            "berth_proxy_network_programming_duration_seconds",
            "Time from the change that triggered an Endpoints update (its \
             endpoints.kubernetes.io/last-change-trigger-time) until this node's proxy had \
             programmed it.",
            LATENCY_BUCKETS,
        ));
        self
    }

    /// The reports, newest only (the Node heartbeat publishes them).
    pub fn subscribe(&self) -> watch::Receiver<Option<NodeProxyStatus>> {
        self.tx.subscribe()
    }

    /// The latest report.
    pub fn current(&self) -> Option<NodeProxyStatus> {
        self.tx.borrow().clone()
    }

    /// The datapath `mode` now serves every Endpoints change up to store revision `revision`;
    /// `changed` are the Endpoints objects that changed since the last report (their trigger
    /// times feed the latency histogram). A revision lower than the one reported is ignored
    /// (a relist may deliver an older maximum).
    pub fn programmed<'a>(
        &self,
        mode: &str,
        revision: u64,
        changed: impl IntoIterator<Item = &'a Endpoints>,
        now: Time,
    ) {
        if let Some(h) = &self.latency {
            for e in changed {
                if let Some(t) = trigger_time(e) {
                    let secs = (now - t).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6;
                    h.observe(secs);
                }
            }
        }
        self.tx.send_if_modified(|cur| {
            let newer = cur
                .as_ref()
                .is_none_or(|c| revision > c.programmed_revision || c.mode != mode);
            if newer {
                *cur = Some(NodeProxyStatus {
                    mode: mode.to_string(),
                    programmed_revision: revision,
                    programmed_time: Some(now),
                });
            }
            newer
        });
    }
}

/// The `endpoints.kubernetes.io/last-change-trigger-time` of `e`, if set and valid.
pub fn trigger_time(e: &Endpoints) -> Option<Time> {
    let v = e.metadata.annotations.get(LAST_CHANGE_TRIGGER_TIME)?;
    chrono::DateTime::parse_from_rfc3339(v)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reports_only_move_forward_and_keep_the_newest() {
        let p = ProxyProgress::new();
        let rx = p.subscribe();
        let now = chrono::Utc::now();
        p.programmed(USERSPACE, 10, [], now);
        p.programmed(USERSPACE, 7, [], now);
        assert_eq!(rx.borrow().as_ref().unwrap().programmed_revision, 10);
        p.programmed(USERSPACE, 12, [], now);
        p.programmed(USERSPACE, 15, [], now);
        let cur = p.current().unwrap();
        assert_eq!(
            (cur.mode.as_str(), cur.programmed_revision),
            (USERSPACE, 15)
        );
    }

    #[test]
    fn programming_latency_is_measured_from_the_trigger_time() {
        let reg = berth_metrics::Registry::new();
        let p = ProxyProgress::new().with_metrics(&reg);
        let now = chrono::Utc::now();
        let mut e = Endpoints::default();
        e.metadata.annotations.insert(
            LAST_CHANGE_TRIGGER_TIME.into(),
            (now - chrono::Duration::milliseconds(40)).to_rfc3339(),
        );
        p.programmed(USERSPACE, 3, [&e], now);
        let text = reg.render();
        assert!(
            text.contains("berth_proxy_network_programming_duration_seconds_bucket{le=\"0.05\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "berth_proxy_network_programming_duration_seconds_bucket{le=\"0.025\"} 0"
            ),
            "{text}"
        );
    }
}
