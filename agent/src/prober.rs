//! The prober: one worker task per running container that has probes.
//!
//! A worker owns the container's [`ProbeState`]s, sleeps until the next due check, runs it
//! ([`probe::check`]), and publishes a [`ProbeView`] (started / ready / liveness failed) into a
//! shared map, waking the pod sync loop when the view changes. The startup probe gates the
//! others, as in Kubernetes. Failed checks are recorded as `Unhealthy` events. Workers live in a
//! [`TaskTracker`] and are cancelled when their container stops running.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_proto::types::{Container, IntOrString, Probe};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::events::{EventSink, PodRef};
use crate::probe::{self, Check, ProbeKind, ProbeResult, ProbeState, ProbeStatus, ProbeTarget};
use crate::runtime::{PortBinding, Runtime};

/// What the pod sync loop needs to know from a container's probes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeView {
    /// Startup probe passed (or there is none).
    pub started: bool,
    /// Readiness probe passed (or there is none) and the container has started.
    pub ready: bool,
    /// Set when liveness failed: the message of the last failure.
    pub liveness_failed: Option<String>,
    /// Set when the startup probe failed.
    pub startup_failed: Option<String>,
}

impl ProbeView {
    /// The view before any probe ran.
    pub fn initial(c: &Container) -> ProbeView {
        let started = c.startup_probe.is_none();
        ProbeView {
            started,
            ready: started && c.readiness_probe.is_none(),
            liveness_failed: None,
            startup_failed: None,
        }
    }
}

/// A running container to probe.
#[derive(Debug, Clone)]
pub struct Probed {
    pub id: String,
    pub pod: PodRef,
    pub container: Container,
    pub ports: Vec<PortBinding>,
    /// Where httpGet/tcpSocket probes connect by default: the pod's own IP on the pod
    /// network (as the kubelet does), else the node itself (127.0.0.1 and the host port).
    pub host: Option<String>,
    /// The pod status already reported this very container started / ready (adoption).
    pub was_started: bool,
    pub was_ready: bool,
}

pub struct Prober {
    runtime: Arc<dyn Runtime>,
    views: Arc<Mutex<HashMap<String, ProbeView>>>,
    workers: HashMap<String, CancellationToken>,
    tracker: TaskTracker,
    kick: Arc<Notify>,
    events: EventSink,
    shutdown: CancellationToken,
}

impl Prober {
    pub fn new(
        runtime: Arc<dyn Runtime>,
        kick: Arc<Notify>,
        events: EventSink,
        shutdown: CancellationToken,
    ) -> Prober {
        Prober {
            runtime,
            views: Arc::new(Mutex::new(HashMap::new())),
            workers: HashMap::new(),
            tracker: TaskTracker::new(),
            kick,
            events,
            shutdown,
        }
    }

    /// Current view of a container (initial view if no probe has run yet).
    pub fn view(&self, id: &str, c: &Container) -> ProbeView {
        self.views
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
            .unwrap_or_else(|| ProbeView::initial(c))
    }

    /// Make the set of workers match the running containers.
    pub fn sync(&mut self, running: Vec<Probed>) {
        let keep: std::collections::HashSet<String> =
            running.iter().map(|r| r.id.clone()).collect();
        self.workers.retain(|id, tok| {
            let k = keep.contains(id);
            if !k {
                tok.cancel();
            }
            k
        });
        self.views
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|id, _| keep.contains(id));
        for r in running {
            let c = &r.container;
            if c.startup_probe.is_none()
                && c.liveness_probe.is_none()
                && c.readiness_probe.is_none()
            {
                continue;
            }
            if self.workers.contains_key(&r.id) {
                continue;
            }
            let tok = self.shutdown.child_token();
            self.workers.insert(r.id.clone(), tok.clone());
            let mut initial = ProbeView::initial(c);
            if r.was_started {
                initial.started = true;
                initial.ready = r.was_ready || c.readiness_probe.is_none();
            }
            self.views
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(r.id.clone(), initial);
            let w = Worker {
                runtime: self.runtime.clone(),
                views: self.views.clone(),
                kick: self.kick.clone(),
                events: self.events.clone(),
                target: r,
            };
            self.tracker.spawn(w.run(tok));
        }
    }

    pub fn active_workers(&self) -> usize {
        self.workers.len()
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        for t in self.workers.values() {
            t.cancel();
        }
    }
}

struct Worker {
    runtime: Arc<dyn Runtime>,
    views: Arc<Mutex<HashMap<String, ProbeView>>>,
    kick: Arc<Notify>,
    events: EventSink,
    target: Probed,
}

struct Active {
    kind: ProbeKind,
    state: ProbeState,
    check: Check,
    last_failure: Option<String>,
}

/// Resolve a probe port (number or port name) to where it is reachable from the node.
pub fn resolve_port(c: &Container, ports: &[PortBinding], port: &IntOrString) -> Option<u16> {
    let container_port: u16 = match port {
        IntOrString::Int(n) => u16::try_from(*n).ok()?,
        IntOrString::String(name) => match name.parse::<u16>() {
            Ok(n) => n,
            Err(_) => {
                let p = c.ports.iter().find(|p| &p.name == name)?;
                u16::try_from(p.container_port).ok()?
            }
        },
    };
    Some(
        ports
            .iter()
            .find(|b| b.container_port == container_port)
            .map(|b| b.host_port)
            .filter(|p| *p != 0) // not published: reached at the pod's own address
            .unwrap_or(container_port),
    )
}

/// Build the check a probe runs; `Err` explains a probe that can never work.
pub fn build_check(
    c: &Container,
    ports: &[PortBinding],
    host: Option<&str>,
    p: &Probe,
) -> Result<Check, String> {
    let default_host = host.unwrap_or("127.0.0.1");
    if let Some(h) = &p.http_get {
        let port = resolve_port(c, ports, &h.port).ok_or_else(|| {
            format!(
                "httpGet port {} is not a port of container {}",
                h.port, c.name
            )
        })?;
        let mut path = h.path.clone().unwrap_or_else(|| "/".to_string());
        if !path.starts_with('/') {
            path.insert(0, '/');
        }
        return Ok(Check::Http {
            target: ProbeTarget {
                host: h.host.clone().unwrap_or_else(|| default_host.to_string()),
                port,
            },
            path,
        });
    }
    if let Some(t) = &p.tcp_socket {
        let port = resolve_port(c, ports, &t.port).ok_or_else(|| {
            format!(
                "tcpSocket port {} is not a port of container {}",
                t.port, c.name
            )
        })?;
        return Ok(Check::Tcp {
            target: ProbeTarget {
                host: t.host.clone().unwrap_or_else(|| default_host.to_string()),
                port,
            },
        });
    }
    if let Some(e) = &p.exec {
        if e.command.is_empty() {
            return Err("exec probe has an empty command".to_string());
        }
        return Ok(Check::Exec {
            command: e.command.clone(),
        });
    }
    Err("probe has no handler: set httpGet, tcpSocket or exec".to_string())
}

impl Worker {
    fn publish(&self, view: ProbeView) {
        let changed = {
            let mut v = self.views.lock().unwrap_or_else(|e| e.into_inner());
            let old = v.insert(self.target.id.clone(), view.clone());
            old.as_ref() != Some(&view)
        };
        if changed {
            self.kick.notify_one();
        }
    }

    async fn run(self, cancel: CancellationToken) {
        let c = self.target.container.clone();
        let started = Instant::now();
        let mut probes: Vec<Active> = Vec::new();
        for (kind, p) in [
            (ProbeKind::Startup, &c.startup_probe),
            (ProbeKind::Liveness, &c.liveness_probe),
            (ProbeKind::Readiness, &c.readiness_probe),
        ] {
            let Some(p) = p else { continue };
            match build_check(&c, &self.target.ports, self.target.host.as_deref(), p) {
                Ok(check) => {
                    let mut state = ProbeState::new(p, started);
                    let known_good = match kind {
                        ProbeKind::Startup => self.target.was_started,
                        ProbeKind::Readiness => self.target.was_started && self.target.was_ready,
                        ProbeKind::Liveness => false,
                    };
                    if known_good {
                        state.assume(ProbeStatus::Success);
                    }
                    probes.push(Active {
                        kind,
                        state,
                        check,
                        last_failure: None,
                    })
                }
                Err(why) => self.events.warning(
                    &self.target.pod,
                    "Unhealthy",
                    format!(
                        "{} probe of container {} is invalid: {why}",
                        kind.as_str(),
                        c.name
                    ),
                ),
            }
        }
        loop {
            let startup_done = probes
                .iter()
                .find(|p| p.kind == ProbeKind::Startup)
                .is_none_or(|p| p.state.status() == ProbeStatus::Success);
            let due = probes
                .iter()
                .filter(|p| startup_done != (p.kind == ProbeKind::Startup))
                .map(|p| p.state.next_due())
                .min();
            let Some(due) = due else {
                // Nothing left to run (e.g. only a startup probe, now passed).
                self.publish(self.view(&probes, startup_done));
                cancel.cancelled().await;
                return;
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(due) => {}
            }
            let now = Instant::now();
            for p in probes.iter_mut() {
                let active = startup_done != (p.kind == ProbeKind::Startup);
                if !active || p.state.next_due() > now {
                    continue;
                }
                let result = tokio::select! {
                    _ = cancel.cancelled() => return,
                    r = probe::check(&p.check, p.state.timeout, self.runtime.as_ref(), &self.target.id) => r,
                };
                if let ProbeResult::Failure(why) = &result {
                    crate::metrics::probe_failed(p.kind.as_str());
                    self.events.warning(
                        &self.target.pod,
                        "Unhealthy",
                        format!("{} probe failed: {why}", p.kind.as_str()),
                    );
                    p.last_failure = Some(why.clone());
                }
                p.state.observe(&result, Instant::now());
            }
            let startup_done_now = probes
                .iter()
                .find(|p| p.kind == ProbeKind::Startup)
                .is_none_or(|p| p.state.status() == ProbeStatus::Success);
            self.publish(self.view(&probes, startup_done_now));
        }
    }

    fn view(&self, probes: &[Active], started: bool) -> ProbeView {
        let get = |k: ProbeKind| probes.iter().find(|p| p.kind == k);
        let ready = started
            && get(ProbeKind::Readiness).is_none_or(|p| p.state.status() == ProbeStatus::Success);
        let failed = |k: ProbeKind| {
            get(k)
                .filter(|p| p.state.status() == ProbeStatus::Failure)
                .map(|p| p.last_failure.clone().unwrap_or_default())
        };
        ProbeView {
            started,
            ready,
            liveness_failed: failed(ProbeKind::Liveness),
            startup_failed: failed(ProbeKind::Startup),
        }
    }
}

/// Grace used when a probe kills a container whose pod has no terminationGracePeriodSeconds.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);
