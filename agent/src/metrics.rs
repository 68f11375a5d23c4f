//! The agent's Prometheus metrics, served at `GET /metrics` on the agent API (`--listen`, the
//! same HTTP server as the logs API).
//!
//! - Pods and containers: read from the pod cache at scrape time (the statuses this agent
//!   reported): `berth_agent_pods{phase}`, `berth_agent_pods_ready`,
//!   `berth_agent_container_restarts_total{namespace,pod,container}`.
//! - Probes: `berth_agent_probe_failures_total{probe}` counted by the prober workers in the
//!   agent's process-wide registry ([`process_registry`]; not [`berth_metrics::global`], which
//!   holds the scheduler's and controllers' metrics when they share the process).
//! - The Service proxy: its own per-Service counters ([`crate::proxy::proxy_families`]),
//!   fetched from the proxy worker per scrape.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use berth_metrics::{Family, Registry};
use berth_proto::PodPhase;

use crate::api::PodCache;
use crate::proxy::{proxy_families, ProxyHandle};

/// The agent's process-wide metrics (counted by workers that have no [`AgentMetrics`] to hand),
/// exported by every agent's `/metrics` in this process.
fn process_registry() -> &'static Registry {
    static AGENT: OnceLock<Registry> = OnceLock::new();
    AGENT.get_or_init(Registry::new)
}

/// Count a failed probe check (`kind`: Startup, Liveness, Readiness; exported lowercase).
pub(crate) fn probe_failed(kind: &str) {
    let kind = kind.to_ascii_lowercase();
    process_registry()
        .counter_vec(
            "berth_agent_probe_failures_total",
            "Failed probe checks, by probe type.",
            &["probe"],
        )
        .with(&[&kind])
        .inc();
}

/// What the agent's `/metrics` renders; cheap to clone.
#[derive(Clone)]
pub struct AgentMetrics {
    registry: Registry,
    proxy: Arc<Mutex<Option<ProxyHandle>>>,
    /// The cluster DNS server's counters, once it serves.
    dns: Arc<Mutex<Option<Registry>>>,
}

impl std::fmt::Debug for AgentMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentMetrics")
            .field("registry", &self.registry)
            .finish()
    }
}

fn pod_families(pods: &PodCache) -> Vec<Family> {
    let pods = pods.snapshot().unwrap_or_default();
    let mut by_phase: BTreeMap<&str, u64> = [
        PodPhase::Pending,
        PodPhase::Running,
        PodPhase::Succeeded,
        PodPhase::Failed,
    ]
    .into_iter()
    .map(|p| (p.as_str(), 0))
    .collect();
    let mut ready = 0u64;
    let mut restarts = Family::counter(
        "berth_agent_container_restarts_total",
        "Restarts of each container of the pods on this node.",
    );
    for p in &pods {
        let Some(st) = &p.status else {
            *by_phase.entry(PodPhase::Pending.as_str()).or_default() += 1;
            continue;
        };
        let phase = if st.phase.is_empty() {
            PodPhase::Pending.as_str()
        } else {
            st.phase.as_str()
        };
        *by_phase.entry(phase).or_default() += 1;
        if st
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.is_true())
        {
            ready += 1;
        }
        for c in &st.container_statuses {
            restarts.push(
                &[
                    ("namespace", &p.metadata.namespace),
                    ("pod", &p.metadata.name),
                    ("container", &c.name),
                ],
                f64::from(c.restart_count.max(0)),
            );
        }
    }
    let mut phases = Family::gauge("berth_agent_pods", "Pods bound to this node, by phase.");
    for (phase, n) in by_phase {
        phases.push(&[("phase", phase)], n as f64);
    }
    vec![
        phases,
        Family::gauge(
            "berth_agent_pods_ready",
            "Pods on this node that are Ready.",
        )
        .with(&[], ready as f64),
        restarts,
    ]
}

impl AgentMetrics {
    pub fn new(pods: PodCache) -> AgentMetrics {
        let registry = Registry::new();
        registry.add_collector(move || pod_families(&pods));
        AgentMetrics {
            registry,
            proxy: Arc::new(Mutex::new(None)),
            dns: Arc::new(Mutex::new(None)),
        }
    }

    /// Include the cluster DNS server's metrics (`berth_agent_dns_queries_total`) from now on,
    /// replacing an earlier server's.
    pub fn set_dns(&self, registry: Registry) {
        *self.dns.lock().unwrap_or_else(|e| e.into_inner()) = Some(registry);
    }

    /// Include the proxy's per-Service metrics from now on.
    pub fn set_proxy(&self, handle: ProxyHandle) {
        *self.proxy.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The exposition text of one scrape.
    pub async fn render(&self) -> String {
        let dns = self.dns.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut registries = vec![&self.registry, process_registry()];
        if let Some(d) = &dns {
            registries.push(d);
        }
        let mut text = berth_metrics::text::render(&registries);
        let proxy = self.proxy.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(h) = proxy {
            match tokio::time::timeout(Duration::from_secs(5), h.metrics()).await {
                Ok(Ok(services)) => text.push_str(&berth_metrics::text::render_families(
                    proxy_families(&services),
                )),
                Ok(Err(e)) => tracing::debug!(error = %e, "proxy metrics unavailable"),
                Err(_) => tracing::warn!("proxy metrics: the proxy did not answer within 5 s"),
            }
        }
        text
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use berth_metrics::text::{find, parse};
    use berth_proto::types::{Condition, ContainerStatus, ObjectMeta, Pod, PodStatus};

    fn pod(name: &str, phase: &str, ready: bool, restarts: i32) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: name.into(),
                namespace: "default".into(),
                uid: format!("uid-{name}"),
                ..Default::default()
            },
            status: Some(PodStatus {
                phase: phase.into(),
                conditions: vec![Condition::new("Ready", ready, "", "", chrono::Utc::now())],
                container_statuses: vec![ContainerStatus {
                    name: "app".into(),
                    restart_count: restarts,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn pods_by_phase_ready_and_restarts_come_from_the_pod_cache() {
        let cache = PodCache::new();
        cache.replace_all([
            pod("a", "Running", true, 2),
            pod("b", "Running", false, 0),
            pod("c", "Pending", false, 0),
        ]);
        let m = AgentMetrics::new(cache);
        probe_failed("Liveness");
        let s = parse(&m.render().await).unwrap();
        assert_eq!(
            find(&s, "berth_agent_pods", &[("phase", "Running")]),
            Some(2.0)
        );
        assert_eq!(
            find(&s, "berth_agent_pods", &[("phase", "Pending")]),
            Some(1.0)
        );
        assert_eq!(
            find(&s, "berth_agent_pods", &[("phase", "Failed")]),
            Some(0.0)
        );
        assert_eq!(find(&s, "berth_agent_pods_ready", &[]), Some(1.0));
        assert_eq!(
            find(
                &s,
                "berth_agent_container_restarts_total",
                &[("pod", "a"), ("container", "app")]
            ),
            Some(2.0)
        );
        assert!(
            find(
                &s,
                "berth_agent_probe_failures_total",
                &[("probe", "liveness")]
            )
            .unwrap()
                >= 1.0
        );
    }

    #[tokio::test]
    async fn the_cluster_dns_counters_are_rendered_once_its_server_serves() {
        use hickory_proto::op::{Message, Query};
        use hickory_proto::rr::{Name, RecordType};
        let m = AgentMetrics::new(PodCache::new());
        let before = parse(&m.render().await).unwrap();
        assert_eq!(
            find(
                &before,
                "berth_agent_dns_queries_total",
                &[("zone", "cluster"), ("rcode", "NXDOMAIN")]
            ),
            None
        );
        let stop = tokio_util::sync::CancellationToken::new();
        let cfg = crate::dns::DnsConfig {
            domain: "cluster.local".into(),
            upstreams: Vec::new(),
            ttl: 5,
            threads: 0,
        };
        let (handle, bound) =
            crate::dns::serve(vec!["127.0.0.1:0".parse().unwrap()], cfg, stop.clone())
                .await
                .unwrap();
        m.set_dns(handle.registry().clone());
        let mut q = Message::query();
        q.metadata.id = 9;
        q.add_query(Query::query(
            Name::from_ascii("nothing.default.svc.cluster.local.").unwrap(),
            RecordType::A,
        ));
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        sock.send_to(&q.to_vec().unwrap(), bound[0]).await.unwrap();
        let mut buf = vec![0u8; 512];
        tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
            .await
            .expect("a DNS reply")
            .unwrap();
        let s = parse(&m.render().await).unwrap();
        assert_eq!(
            find(
                &s,
                "berth_agent_dns_queries_total",
                &[("zone", "cluster"), ("rcode", "NXDOMAIN")]
            ),
            Some(1.0)
        );
        stop.cancel();
    }
}
