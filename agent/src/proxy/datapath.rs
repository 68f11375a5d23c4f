//! The node's Service datapath in either mode, programmed from the same [`ProxyPlan`]:
//!
//! - `nftables` ([`super::nft`]): DNAT in the kernel, one transaction per change; the default
//!   where `nft` works.
//! - `userspace` ([`super::Proxy`]): listeners that copy bytes; the fallback.
//!
//! [`ServiceDatapath::program`] is the one entry point the agent calls with each new plan, and
//! [`PlanProgrammed::plan_programmed`] the one place where "the plan at revision R is now
//! programmed on this node" happens, whatever the mode.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use berth_metrics::Family;
use tokio::sync::watch;

use super::nft::{NftDatapath, NftError};
use super::{ProxyError, ProxyHandle, ProxyPlan};

/// `berth agent --proxy-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProxyMode {
    /// DNAT in the kernel (one Berth-owned nftables table); needs the `nft` binary and root.
    Nftables,
    /// A userspace TCP proxy listening on every Service address.
    Userspace,
}

impl ProxyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyMode::Nftables => "nftables",
            ProxyMode::Userspace => "userspace",
        }
    }
}

impl std::fmt::Display for ProxyMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The last plan programmed on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Programmed {
    pub mode: ProxyMode,
    /// [`ProxyPlan::revision`] of the plan.
    pub revision: u64,
}

/// Where "the plan at revision R is now programmed" is recorded, for both modes. Cheap to
/// clone; [`PlanProgrammed::subscribe`] follows it.
#[derive(Clone)]
pub struct PlanProgrammed {
    tx: Arc<watch::Sender<Option<Programmed>>>,
}

impl Default for PlanProgrammed {
    fn default() -> Self {
        PlanProgrammed {
            tx: Arc::new(watch::Sender::new(None)),
        }
    }
}

impl PlanProgrammed {
    /// THE place where a plan counts as programmed on this node: every new connection to a
    /// Service now follows the plan at `revision` (the nftables transaction was committed, or
    /// the userspace proxy swapped its backend sets).
    pub fn plan_programmed(&self, mode: ProxyMode, revision: u64) {
        tracing::debug!(%mode, revision, "Service plan programmed");
        self.tx.send_replace(Some(Programmed { mode, revision }));
    }

    /// The last programmed plan (None: none yet).
    pub fn current(&self) -> Option<Programmed> {
        *self.tx.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<Programmed>> {
        self.tx.subscribe()
    }
}

/// Counters of the datapath for `/metrics`.
#[derive(Default)]
pub struct DatapathStats {
    mode: Mutex<Option<ProxyMode>>,
    /// Why nftables was not used although it was the wanted mode (None: it was not wanted,
    /// or it works).
    fallback: Mutex<Option<String>>,
    syncs: AtomicU64,
    sync_failures: AtomicU64,
}

impl DatapathStats {
    pub fn families(&self, programmed: Option<Programmed>) -> Vec<Family> {
        let mode = *self.mode.lock().unwrap_or_else(|e| e.into_inner());
        let fallback = self
            .fallback
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some();
        let mut modes = Family::gauge(
            "berth_agent_proxy_mode",
            "The Service datapath this node runs (1 for the active mode).",
        );
        for m in [ProxyMode::Nftables, ProxyMode::Userspace] {
            modes.push(
                &[("mode", m.as_str())],
                if Some(m) == mode { 1.0 } else { 0.0 },
            );
        }
        vec![
            modes,
            Family::gauge(
                "berth_agent_proxy_nftables_fallback",
                "1 when nftables mode was wanted but nft is missing or refused, so the \
                 userspace proxy runs instead.",
            )
            .with(&[], if fallback { 1.0 } else { 0.0 }),
            Family::counter(
                "berth_agent_proxy_syncs_total",
                "Service plans programmed into the datapath (unchanged plans not counted).",
            )
            .with(&[], self.syncs.load(Ordering::Relaxed) as f64),
            Family::counter(
                "berth_agent_proxy_sync_failures_total",
                "Service plans the datapath refused (the previous rules stayed).",
            )
            .with(&[], self.sync_failures.load(Ordering::Relaxed) as f64),
            Family::gauge(
                "berth_agent_proxy_programmed_revision",
                "The cluster revision of the last Service plan programmed on this node.",
            )
            .with(&[], programmed.map(|p| p.revision as f64).unwrap_or(0.0)),
        ]
    }

    pub fn fallback_reason(&self) -> Option<String> {
        self.fallback
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

enum Backend {
    Userspace(ProxyHandle),
    Nftables(NftDatapath),
}

/// Why a plan was not (fully) programmed.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// The kernel refused the table: the previous one stays.
    #[error("the kernel refused the Service rules (the previous rules stay in effect): {0}")]
    Nftables(#[from] NftError),
    #[error(transparent)]
    Userspace(#[from] ProxyError),
}

/// The node's Service datapath: one mode, fed whole plans.
pub struct ServiceDatapath {
    backend: Backend,
    programmed: PlanProgrammed,
    stats: Arc<DatapathStats>,
}

impl ServiceDatapath {
    pub fn userspace(handle: ProxyHandle, programmed: PlanProgrammed) -> ServiceDatapath {
        let stats = Arc::new(DatapathStats::default());
        *stats.mode.lock().unwrap_or_else(|e| e.into_inner()) = Some(ProxyMode::Userspace);
        ServiceDatapath {
            backend: Backend::Userspace(handle),
            programmed,
            stats,
        }
    }

    pub fn nftables(nft: NftDatapath, programmed: PlanProgrammed) -> ServiceDatapath {
        let stats = Arc::new(DatapathStats::default());
        *stats.mode.lock().unwrap_or_else(|e| e.into_inner()) = Some(ProxyMode::Nftables);
        ServiceDatapath {
            backend: Backend::Nftables(nft),
            programmed,
            stats,
        }
    }

    /// Record that nftables was wanted but could not be used (`berth_agent_proxy_nftables_fallback`).
    pub fn with_fallback_reason(self, reason: String) -> ServiceDatapath {
        *self
            .stats
            .fallback
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(reason);
        self
    }

    pub fn mode(&self) -> ProxyMode {
        match self.backend {
            Backend::Userspace(_) => ProxyMode::Userspace,
            Backend::Nftables(_) => ProxyMode::Nftables,
        }
    }

    pub fn stats(&self) -> Arc<DatapathStats> {
        self.stats.clone()
    }

    pub fn programmed(&self) -> &PlanProgrammed {
        &self.programmed
    }

    /// Programs `plan`. In userspace mode, Service ports whose listener cannot be bound are
    /// reported in the error, and the rest of the plan is in effect (so it counts as
    /// programmed); in nftables mode an error means nothing changed.
    pub async fn program(&mut self, plan: &ProxyPlan) -> Result<(), DatapathError> {
        let mode = self.mode();
        let result = match &mut self.backend {
            Backend::Userspace(handle) => match handle.set_services(plan.services.clone()).await {
                Ok(()) => Ok(()),
                Err(e @ ProxyError::Apply { .. }) => {
                    self.stats.syncs.fetch_add(1, Ordering::Relaxed);
                    self.programmed.plan_programmed(mode, plan.revision);
                    return Err(e.into());
                }
                Err(e) => return Err(e.into()),
            },
            Backend::Nftables(nft) => match nft.program(plan).await {
                Ok(changed) => {
                    if !changed {
                        // Identical rules are in the kernel already: programmed all the same.
                        self.programmed.plan_programmed(mode, plan.revision);
                        return Ok(());
                    }
                    Ok(())
                }
                Err(e) => {
                    self.stats.sync_failures.fetch_add(1, Ordering::Relaxed);
                    return Err(e.into());
                }
            },
        };
        self.stats.syncs.fetch_add(1, Ordering::Relaxed);
        self.programmed.plan_programmed(mode, plan.revision);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::nft::NodeFacts;
    use crate::proxy::{Proxy, ProxyConfig, ServiceBackends};

    fn plan(revision: u64, node_port: u16) -> ProxyPlan {
        ProxyPlan {
            revision,
            services: vec![ServiceBackends {
                namespace: "default".into(),
                name: "web".into(),
                port_name: String::new(),
                node_port,
                listen_addrs: vec![crate::proxy::LOOPBACK],
                also_listen: Vec::new(),
                backends: vec!["127.0.0.1:9".parse().expect("addr")],
            }],
        }
    }

    #[tokio::test]
    async fn the_userspace_proxy_reports_the_revision_it_programmed() {
        let (proxy, handle) = Proxy::new(ProxyConfig::default());
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(proxy.run(stop.clone()));
        let programmed = PlanProgrammed::default();
        let watch = programmed.subscribe();
        let mut d = ServiceDatapath::userspace(handle, programmed.clone());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        d.program(&plan(7, port)).await.expect("program");
        assert_eq!(
            programmed.current(),
            Some(Programmed {
                mode: ProxyMode::Userspace,
                revision: 7
            })
        );
        assert!(watch.has_changed().expect("watch"));
        let families = d.stats().families(programmed.current());
        let text = berth_metrics::text::render_families(families);
        assert!(
            text.contains("berth_agent_proxy_programmed_revision 7"),
            "{text}"
        );
        assert!(
            text.contains("berth_agent_proxy_mode{mode=\"userspace\"} 1"),
            "{text}"
        );
        stop.cancel();
        task.await.expect("proxy task");
    }

    #[tokio::test]
    async fn a_refused_nftables_plan_is_not_reported_as_programmed() {
        let nft = NftDatapath::with_program("/nonexistent/nft", NodeFacts::default());
        let programmed = PlanProgrammed::default();
        let mut d = ServiceDatapath::nftables(nft, programmed.clone());
        let err = d.program(&plan(3, 30080)).await.expect_err("no nft");
        assert!(err.to_string().contains("previous rules stay"), "{err}");
        assert_eq!(programmed.current(), None);
        let text = berth_metrics::text::render_families(d.stats().families(None));
        assert!(
            text.contains("berth_agent_proxy_sync_failures_total 1"),
            "{text}"
        );
    }
}
