//! The node lifecycle controller's pure core: `plan(nodes, pods, now, config) -> Plan`.
//!
//! An agent heartbeats by writing `status.lastHeartbeatTime`. When that is older than the
//! grace period the node is marked Ready=Unknown and tainted
//! `node.kubernetes.io/unreachable:NoExecute` (new pods stay away: the scheduler filters
//! untolerated NoExecute taints). After the eviction timeout (or a pod's own
//! `tolerationSeconds` for that taint) the node's pods are deleted, and their ReplicaSets
//! replace them on healthy nodes. A node that heartbeats again loses the taint.
//! Meanwhile its pods are marked Ready=False at once, so Endpoints stop sending traffic to a
//! node nobody hears from (eviction only decides when they are replaced).
//! A node whose agent reports Ready=False gets `node.kubernetes.io/not-ready:NoExecute`
//! the same way.

use std::time::Duration;

use berth_proto::types::*;
use berth_proto::TaintEffect;

pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";
pub const NOT_READY_TAINT: &str = "node.kubernetes.io/not-ready";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Heartbeat age beyond which a node is considered lost.
    pub grace_period: Duration,
    /// How long pods stay on a lost node before they are deleted.
    pub eviction_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            grace_period: Duration::from_secs(6),
            eviction_timeout: Duration::from_secs(4),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Write this node (spec taints and/or status conditions changed).
    UpdateNode(Box<Node>),
    /// Write this pod's status: Ready=False (reason `NodeLost`, stamped with the plan's `now`)
    /// on a pod of a lost node, conditioned on the resourceVersion the plan saw.
    MarkPodNotReady(Box<Pod>),
    /// Delete a pod of a lost node (resourceVersion precondition).
    EvictPod {
        namespace: String,
        name: String,
        resource_version: u64,
        node: String,
    },
    Event {
        node: String,
        reason: String,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub requeue_after: Option<Duration>,
}

fn dur(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

fn to_std(d: chrono::Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.num_milliseconds().max(0) + 1).unwrap_or(0))
}

fn last_heartbeat(n: &Node) -> Option<Time> {
    let st = n.status.as_ref();
    st.and_then(|s| s.last_heartbeat_time)
        .or_else(|| {
            st.and_then(|s| condition(&s.conditions, "Ready"))
                .and_then(|c| c.last_update_time.or(c.last_transition_time))
        })
        .or(n.metadata.creation_timestamp)
}

/// The NoExecute taint key that applies to a node's state, if any.
fn wanted_taint(ready: Option<&Condition>) -> Option<&'static str> {
    match ready.map(|c| c.status.as_str()) {
        Some("True") => None,
        Some("False") => Some(NOT_READY_TAINT),
        _ => Some(UNREACHABLE_TAINT),
    }
}

/// How long `pod` may stay on a node tainted `key:NoExecute`: `None` = forever.
fn toleration_for(pod: &Pod, key: &str, default: Duration) -> Option<Duration> {
    let taint = Taint {
        key: key.into(),
        value: String::new(),
        effect: TaintEffect::NoExecute.into(),
    };
    match pod.spec.tolerations.iter().find(|t| t.tolerates(&taint)) {
        Some(t) => t
            .toleration_seconds
            .map(|s| Duration::from_secs(u64::try_from(s).unwrap_or(0))),
        None => Some(default),
    }
}

fn min_requeue(a: Option<Duration>, b: Duration) -> Option<Duration> {
    Some(a.map_or(b, |a| a.min(b)))
}

/// Is the node lost or not ready at `now` (so its pods matter to [`plan`])? A healthy node's
/// plan never looks at pods, which lets the shell skip gathering them.
pub fn node_is_down(node: &Node, now: Time, cfg: &Config) -> bool {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| condition(&s.conditions, "Ready"));
    let stale = last_heartbeat(node).is_none_or(|t| now > t + dur(cfg.grace_period));
    stale || ready.is_some_and(|c| !c.is_true())
}

/// `pod` (of the lost node `node`) with Ready=False, reason `NodeLost`, at `now`.
fn mark_not_ready(pod: &Pod, node: &str, now: Time) -> Action {
    let mut p = pod.clone();
    let st = p.status.get_or_insert_with(Default::default);
    set_condition(
        &mut st.conditions,
        Condition::new(
            "Ready",
            false,
            "NodeLost",
            &format!("node {node} stopped posting status"),
            now,
        ),
    );
    Action::MarkPodNotReady(Box::new(p))
}

/// Plan the writes for `nodes` and the `pods` on them at `now` (the shell reads the clock once
/// and passes it in): node conditions and taints, pod Ready=False, evictions, Events.
pub fn plan(nodes: &[Node], pods: &[Pod], now: Time, cfg: &Config) -> Plan {
    let mut out = Plan::default();
    for node in nodes {
        let name = &node.metadata.name;
        let mut updated = node.clone();
        let st = updated.status.get_or_insert_with(Default::default);
        let ready = condition(&st.conditions, "Ready").cloned();
        let stale_at = last_heartbeat(node).map(|t| t + dur(cfg.grace_period));
        let stale = stale_at.is_none_or(|t| now > t);
        let mut effective = ready.clone();
        if stale && ready.as_ref().is_none_or(|c| c.status != "Unknown") {
            let c = Condition {
                type_: "Ready".into(),
                status: "Unknown".into(),
                reason: "NodeStatusUnknown".into(),
                message: "Agent stopped posting node status.".into(),
                last_transition_time: Some(now),
                last_update_time: Some(now),
            };
            set_condition(&mut st.conditions, c.clone());
            effective = Some(c);
            out.actions.push(Action::Event {
                node: name.clone(),
                reason: "NodeNotReady".into(),
                message: format!(
                    "Node {name} status is now: NodeNotReady (no heartbeat for {}s)",
                    cfg.grace_period.as_secs()
                ),
            });
        } else if let Some(t) = stale_at.filter(|_| !stale) {
            out.requeue_after = min_requeue(out.requeue_after, to_std(t - now));
        }
        // A node still registering (no Ready condition yet, heartbeat within grace) is left
        // alone.
        let want = if effective.is_none() && !stale {
            None
        } else {
            wanted_taint(effective.as_ref())
        };
        updated.spec.taints.retain(|t| {
            t.effect != TaintEffect::NoExecute
                || !(t.key == UNREACHABLE_TAINT || t.key == NOT_READY_TAINT)
                || Some(t.key.as_str()) == want
        });
        if let Some(key) = want {
            if !updated
                .spec
                .taints
                .iter()
                .any(|t| t.key == key && t.effect == TaintEffect::NoExecute)
            {
                updated.spec.taints.push(Taint {
                    key: key.into(),
                    value: String::new(),
                    effect: TaintEffect::NoExecute.into(),
                });
            }
        }
        if updated != *node {
            out.actions.push(Action::UpdateNode(Box::new(updated)));
        }
        // Evict after the toleration, counted from when the node went bad.
        let Some(key) = want else { continue };
        let since = effective
            .as_ref()
            .and_then(|c| c.last_transition_time)
            .unwrap_or(now);
        for pod in pods
            .iter()
            .filter(|p| p.spec.node_name == *name && p.metadata.deletion_timestamp.is_none())
        {
            // Only when the agent is silent: an agent that reports NotReady still manages its
            // pods' readiness itself.
            let silent = key == UNREACHABLE_TAINT;
            let Some(tol) = toleration_for(pod, key, cfg.eviction_timeout) else {
                if silent && pod.is_ready() {
                    out.actions.push(mark_not_ready(pod, name, now));
                }
                continue;
            };
            let at = since + dur(tol);
            if silent && pod.is_ready() && now < at {
                out.actions.push(mark_not_ready(pod, name, now));
            }
            if now >= at {
                out.actions.push(Action::EvictPod {
                    namespace: pod.metadata.namespace.clone(),
                    name: pod.metadata.name.clone(),
                    resource_version: pod.metadata.resource_version,
                    node: name.clone(),
                });
            } else {
                out.requeue_after = min_requeue(out.requeue_after, to_std(at - now));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_testkit::builders::at;
    use berth_testkit::{NodeBuilder, PodBuilder};

    fn cfg() -> Config {
        Config::default()
    }

    fn updated(p: &Plan) -> Vec<&Node> {
        p.actions
            .iter()
            .filter_map(|a| match a {
                Action::UpdateNode(n) => Some(n.as_ref()),
                _ => None,
            })
            .collect()
    }

    fn evicted(p: &Plan) -> Vec<&str> {
        p.actions
            .iter()
            .filter_map(|a| match a {
                Action::EvictPod { name, .. } => Some(name.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn fresh_heartbeat_changes_nothing_and_requeues_at_grace_expiry() {
        let n = NodeBuilder::new("n1").ready_at(at(0)).build();
        let p = plan(&[n], &[], at(2), &cfg());
        assert!(p.actions.is_empty());
        assert_eq!(p.requeue_after, Some(Duration::from_millis(4001)));
    }

    #[test]
    fn missed_heartbeat_marks_unknown_and_taints_unreachable() {
        let n = NodeBuilder::new("n1").ready_at(at(0)).build();
        let pods = [PodBuilder::new("p").node("n1").ready().build()];
        let p = plan(&[n], &pods, at(7), &cfg());
        let nodes = updated(&p);
        assert_eq!(nodes.len(), 1);
        let c = condition(&nodes[0].status.as_ref().expect("st").conditions, "Ready").expect("c");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("Unknown", "NodeStatusUnknown")
        );
        assert!(nodes[0]
            .spec
            .taints
            .iter()
            .any(|t| t.key == UNREACHABLE_TAINT && t.effect == "NoExecute"));
        assert!(evicted(&p).is_empty(), "eviction waits for the toleration");
        assert_eq!(p.requeue_after, Some(Duration::from_millis(4001)));
    }

    fn marked(p: &Plan) -> Vec<&str> {
        p.actions
            .iter()
            .filter_map(|a| match a {
                Action::MarkPodNotReady(pod) => Some(pod.metadata.name.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn ready_pods_on_lost_node_are_marked_not_ready_at_once() {
        let n = NodeBuilder::new("n1").ready_at(at(0)).build();
        let pods = [
            PodBuilder::new("ready").node("n1").ready().build(),
            PodBuilder::new("starting").node("n1").not_ready().build(),
            PodBuilder::new("elsewhere").node("n2").ready().build(),
        ];
        let p = plan(&[n], &pods, at(7), &cfg());
        assert_eq!(marked(&p), vec!["ready"]);
        let fresh = NodeBuilder::new("n1").ready_at(at(6)).build();
        assert!(marked(&plan(&[fresh], &pods, at(7), &cfg())).is_empty());
    }

    #[test]
    fn pod_marked_not_ready_carries_the_node_lost_condition_stamped_with_now() {
        let n = NodeBuilder::new("n1").ready_at(at(0)).build();
        let pod = PodBuilder::new("web")
            .namespace("shop")
            .node("n1")
            .resource_version(42)
            .ready()
            .build();
        let p = plan(&[n], std::slice::from_ref(&pod), at(7), &cfg());
        let marks: Vec<&Pod> = p
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::MarkPodNotReady(p) => Some(p.as_ref()),
                _ => None,
            })
            .collect();
        assert_eq!(marks.len(), 1);
        let m = marks[0];
        assert_eq!(
            (
                m.metadata.namespace.as_str(),
                m.metadata.name.as_str(),
                m.metadata.resource_version
            ),
            ("shop", "web", 42),
            "the write is conditioned on the resourceVersion the plan saw"
        );
        let st = m.status.as_ref().expect("status");
        let c = condition(&st.conditions, "Ready").expect("Ready");
        assert_eq!(
            (
                c.status.as_str(),
                c.reason.as_str(),
                c.message.as_str(),
                c.last_transition_time,
                c.last_update_time
            ),
            (
                "False",
                "NodeLost",
                "node n1 stopped posting status",
                Some(at(7)),
                Some(at(7))
            )
        );
        assert_eq!(
            st.phase,
            pod.status.as_ref().expect("status").phase,
            "phase kept"
        );
    }

    #[test]
    fn pods_of_a_lost_node_are_marked_and_evicted_by_readiness_and_toleration() {
        // The node stopped heartbeating at 0 and was marked lost at 7 (grace 6s, eviction 4s).
        let lost = updated(&plan(
            &[NodeBuilder::new("n1").ready_at(at(0)).build()],
            &[],
            at(7),
            &cfg(),
        ))[0]
            .clone();
        let tolerating = |secs: Option<i64>| {
            let mut p = PodBuilder::new("p")
                .node("n1")
                .ready()
                .toleration(UNREACHABLE_TAINT, "", "NoExecute")
                .build();
            p.spec.tolerations[0].toleration_seconds = secs;
            p
        };
        // (what, pod, now, marked not ready, evicted)
        let cases: Vec<(&str, Pod, i64, bool, bool)> = vec![
            (
                "ready, before timeout",
                PodBuilder::new("p").node("n1").ready().build(),
                8,
                true,
                false,
            ),
            (
                "ready, at timeout",
                PodBuilder::new("p").node("n1").ready().build(),
                11,
                false,
                true,
            ),
            (
                "not ready, before timeout",
                PodBuilder::new("p").node("n1").not_ready().build(),
                8,
                false,
                false,
            ),
            (
                "not ready, at timeout",
                PodBuilder::new("p").node("n1").not_ready().build(),
                11,
                false,
                true,
            ),
            ("tolerates forever", tolerating(None), 1000, true, false),
            (
                "tolerates 60s, before",
                tolerating(Some(60)),
                60,
                true,
                false,
            ),
            (
                "tolerates 60s, after",
                tolerating(Some(60)),
                67,
                false,
                true,
            ),
            (
                "being deleted",
                PodBuilder::new("p")
                    .node("n1")
                    .ready()
                    .deleting(at(8))
                    .build(),
                20,
                false,
                false,
            ),
            (
                "on another node",
                PodBuilder::new("p").node("n2").ready().build(),
                20,
                false,
                false,
            ),
        ];
        for (what, pod, now, want_marked, want_evicted) in cases {
            let p = plan(std::slice::from_ref(&lost), &[pod], at(now), &cfg());
            assert_eq!(!marked(&p).is_empty(), want_marked, "{what}: marked");
            assert_eq!(!evicted(&p).is_empty(), want_evicted, "{what}: evicted");
        }
    }

    #[test]
    fn pods_on_lost_node_are_evicted_after_toleration() {
        let n = plan(
            &[NodeBuilder::new("n1").ready_at(at(0)).build()],
            &[],
            at(7),
            &cfg(),
        );
        let lost = updated(&n)[0].clone();
        let pods = [
            PodBuilder::new("a").node("n1").build(),
            PodBuilder::new("b").node("n2").build(),
            PodBuilder::new("tolerant")
                .node("n1")
                .toleration(UNREACHABLE_TAINT, "", "NoExecute")
                .build(),
        ];
        let early = plan(std::slice::from_ref(&lost), &pods, at(10), &cfg());
        assert!(evicted(&early).is_empty());
        assert!(updated(&early).is_empty(), "already marked");
        let late = plan(&[lost], &pods, at(11), &cfg());
        assert_eq!(evicted(&late), vec!["a"]);
    }

    #[test]
    fn toleration_seconds_delays_eviction() {
        let n = plan(
            &[NodeBuilder::new("n1").ready_at(at(0)).build()],
            &[],
            at(7),
            &cfg(),
        );
        let lost = updated(&n)[0].clone();
        let mut pod = PodBuilder::new("slow")
            .node("n1")
            .toleration(UNREACHABLE_TAINT, "", "NoExecute")
            .build();
        pod.spec.tolerations[0].toleration_seconds = Some(60);
        assert!(evicted(&plan(
            std::slice::from_ref(&lost),
            std::slice::from_ref(&pod),
            at(20),
            &cfg()
        ))
        .is_empty());
        assert_eq!(
            evicted(&plan(&[lost], &[pod], at(68), &cfg())),
            vec!["slow"]
        );
    }

    #[test]
    fn recovered_node_loses_the_taint() {
        let n = plan(
            &[NodeBuilder::new("n1").ready_at(at(0)).build()],
            &[],
            at(7),
            &cfg(),
        );
        let mut back = updated(&n)[0].clone();
        // The agent heartbeats again and reports Ready=True.
        let st = back.status.as_mut().expect("st");
        st.last_heartbeat_time = Some(at(20));
        set_condition(
            &mut st.conditions,
            Condition::new("Ready", true, "AgentReady", "", at(20)),
        );
        let p = plan(
            &[back],
            &[PodBuilder::new("a").node("n1").build()],
            at(21),
            &cfg(),
        );
        let nodes = updated(&p);
        assert_eq!(nodes.len(), 1);
        assert!(nodes[0].spec.taints.is_empty());
        assert!(evicted(&p).is_empty());
    }

    #[test]
    fn agent_reported_not_ready_taints_not_ready() {
        let n = NodeBuilder::new("n1").not_ready().heartbeat(at(10)).build();
        let pods = [PodBuilder::new("ready").node("n1").ready().build()];
        let p = plan(&[n], &pods, at(11), &cfg());
        assert!(marked(&p).is_empty(), "the agent manages readiness itself");
        let nodes = updated(&p);
        assert!(nodes[0]
            .spec
            .taints
            .iter()
            .any(|t| t.key == NOT_READY_TAINT));
    }

    #[test]
    fn registering_node_without_conditions_is_left_alone_within_grace() {
        let mut n = NodeBuilder::new("n1").build();
        n.metadata.creation_timestamp = Some(at(0));
        assert!(plan(std::slice::from_ref(&n), &[], at(1), &cfg())
            .actions
            .is_empty());
        assert!(!updated(&plan(&[n], &[], at(7), &cfg())).is_empty());
    }

    #[test]
    fn healthy_node_plan_ignores_pods() {
        let n = NodeBuilder::new("n1").ready_at(at(0)).build();
        let pods = [PodBuilder::new("a").node("n1").ready().build()];
        assert!(!node_is_down(&n, at(3), &cfg()));
        assert_eq!(
            plan(std::slice::from_ref(&n), &pods, at(3), &cfg()),
            plan(std::slice::from_ref(&n), &[], at(3), &cfg())
        );
        assert!(node_is_down(&n, at(7), &cfg()));
        assert!(node_is_down(
            &NodeBuilder::new("n2").not_ready().heartbeat(at(3)).build(),
            at(3),
            &cfg()
        ));
    }

    #[test]
    fn durations_are_configurable() {
        let c = Config {
            grace_period: Duration::from_secs(1),
            eviction_timeout: Duration::from_secs(0),
        };
        let n = NodeBuilder::new("n1").ready_at(at(0)).build();
        let marked = plan(&[n], &[], at(2), &c);
        let lost = updated(&marked)[0].clone();
        let p = plan(
            &[lost],
            &[PodBuilder::new("a").node("n1").build()],
            at(2),
            &c,
        );
        assert_eq!(evicted(&p), vec!["a"]);
    }
}
