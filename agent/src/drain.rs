//! Drain before stop: a terminating pod gets its stop signal only once no proxy sends it new
//! connections.
//!
//! When a pod is deleted it is marked (metadata.deletionTimestamp) and the endpoints
//! controller takes it out of every Endpoints at once. [`drain_state`] (pure) says whether
//! that has reached every proxy: no Endpoints in this node's watch cache lists the pod as a
//! ready address any more, and every Ready node whose proxy reports `status.proxy` has
//! programmed a revision at least that of the newest Endpoints of the pod's namespace then.
//! The pod sync waits for it (bounded by [`DRAIN_TIMEOUT`]) before it runs preStop hooks and
//! sends SIGTERM, then the grace period runs as usual.
//!
//! [`TrafficView`] is the shared cache the agent's Endpoints and Node watches fill.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_proto::types::{Endpoints, Node, Pod};

/// The longest a terminating pod waits for the proxies before it is stopped anyway.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Where draining a terminating pod stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drain {
    /// No proxy routes to the pod any more: stop it.
    Drained,
    /// Not yet, and why (for the log).
    Waiting(String),
}

/// Is `pod` drained out of every proxy? `endpoints` and `nodes` are this node's watch caches.
/// `frozen` is the Endpoints revision the proxies must reach, once known (the caller keeps it
/// per pod so a busy namespace does not move the goal); the revision used is returned.
pub fn drain_state<'a>(
    pod: &Pod,
    endpoints: impl IntoIterator<Item = &'a Endpoints>,
    nodes: impl IntoIterator<Item = &'a Node>,
    frozen: Option<u64>,
) -> (Drain, Option<u64>) {
    let ns = pod.metadata.namespace.as_str();
    let mut newest = 0;
    for e in endpoints.into_iter().filter(|e| e.metadata.namespace == ns) {
        newest = newest.max(e.metadata.resource_version);
        let listed = e.subsets.iter().flat_map(|s| &s.addresses).any(|a| {
            a.target_ref.as_ref().is_some_and(|r| {
                (r.uid.is_empty() || r.uid == pod.metadata.uid)
                    && r.name == pod.metadata.name
                    && (r.kind.is_empty() || r.kind == "Pod")
            })
        });
        if listed && frozen.is_none() {
            return (
                Drain::Waiting(format!(
                    "still a ready endpoint of Service {ns}/{}",
                    e.metadata.name
                )),
                None,
            );
        }
    }
    let goal = frozen.unwrap_or(newest);
    let behind: Vec<String> = nodes
        .into_iter()
        .filter(|n| n.is_ready())
        .filter_map(|n| {
            let p = n.status.as_ref()?.proxy.as_ref()?;
            (p.programmed_revision < goal).then(|| n.metadata.name.clone())
        })
        .collect();
    if behind.is_empty() {
        (Drain::Drained, Some(goal))
    } else {
        (
            Drain::Waiting(format!(
                "node(s) {} have not programmed Endpoints revision {goal} yet",
                behind.join(", ")
            )),
            Some(goal),
        )
    }
}

/// The Endpoints and Nodes this agent watches, shared between the watch tasks and the pod
/// sync. Cheap to clone.
#[derive(Clone, Default)]
pub struct TrafficView {
    inner: Arc<Mutex<ViewState>>,
}

impl std::fmt::Debug for TrafficView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrafficView").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct ViewState {
    endpoints: Option<BTreeMap<(String, String), Endpoints>>,
    nodes: Option<BTreeMap<String, Node>>,
}

impl TrafficView {
    pub fn new() -> TrafficView {
        TrafficView::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ViewState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replace the Endpoints (the proxy feed calls this after every change).
    pub fn set_endpoints(&self, all: &BTreeMap<(String, String), Endpoints>) {
        self.lock().endpoints = Some(all.clone());
    }

    /// Replace the Nodes (the Node watch calls this after every change).
    pub fn set_nodes(&self, all: &BTreeMap<String, Node>) {
        self.lock().nodes = Some(all.clone());
    }

    /// [`drain_state`] over the caches; Waiting while either has not been listed yet.
    pub fn check(&self, pod: &Pod, frozen: Option<u64>) -> (Drain, Option<u64>) {
        let g = self.lock();
        match (&g.endpoints, &g.nodes) {
            (Some(e), Some(n)) => drain_state(pod, e.values(), n.values(), frozen),
            _ => (
                Drain::Waiting("the Endpoints and Nodes are not listed yet".into()),
                None,
            ),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use berth_proto::types::*;

    fn pod() -> Pod {
        let mut p = Pod::default();
        p.metadata.name = "web-1".into();
        p.metadata.namespace = "default".into();
        p.metadata.uid = "u1".into();
        p
    }

    fn eps(rv: u64, pods: &[&str]) -> Endpoints {
        let mut e = Endpoints::default();
        e.metadata.name = "web".into();
        e.metadata.namespace = "default".into();
        e.metadata.resource_version = rv;
        e.subsets = vec![EndpointSubset {
            addresses: pods
                .iter()
                .map(|p| EndpointAddress {
                    ip: "10.0.0.1".into(),
                    target_ref: Some(ObjectReference {
                        kind: "Pod".into(),
                        namespace: "default".into(),
                        name: p.to_string(),
                        uid: String::new(),
                    }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }];
        e
    }

    fn node(name: &str, ready: bool, programmed: Option<u64>) -> Node {
        let mut n = Node::default();
        n.metadata.name = name.into();
        n.status = Some(NodeStatus {
            conditions: vec![Condition::new("Ready", ready, "", "", chrono::Utc::now())],
            proxy: programmed.map(|r| NodeProxyStatus {
                mode: "userspace".into(),
                programmed_revision: r,
                programmed_time: None,
            }),
            ..Default::default()
        });
        n
    }

    #[test]
    fn waits_while_the_pod_is_a_ready_endpoint() {
        let (d, goal) = drain_state(&pod(), [&eps(5, &["web-1", "web-2"])], [], None);
        assert!(matches!(d, Drain::Waiting(w) if w.contains("default/web")));
        assert_eq!(goal, None);
    }

    #[test]
    fn drained_once_every_ready_proxy_programmed_the_revision_without_it() {
        let e = eps(9, &["web-2"]);
        let nodes = [
            node("a", true, Some(9)),
            node("b", true, Some(8)),
            node("down", false, Some(1)),
            node("no-proxy", true, None),
        ];
        let (d, goal) = drain_state(&pod(), [&e], nodes.iter(), None);
        assert_eq!(goal, Some(9));
        assert!(
            matches!(&d, Drain::Waiting(w) if w.contains("node(s) b ")),
            "{d:?}"
        );
        let nodes = [node("a", true, Some(9)), node("b", true, Some(12))];
        assert_eq!(
            drain_state(&pod(), [&e], nodes.iter(), goal).0,
            Drain::Drained
        );
    }

    #[test]
    fn a_frozen_goal_does_not_move_with_later_endpoints_writes() {
        let nodes = [node("a", true, Some(9))];
        let later = eps(30, &["web-2"]);
        assert_eq!(
            drain_state(&pod(), [&later], nodes.iter(), Some(9)),
            (Drain::Drained, Some(9))
        );
    }
}
