//! The ReplicaSet controller's pure core: `plan(rs, its pods, now) -> Plan`.
//!
//! Creates pods from the template when there are too few and deletes the least valuable ones
//! when there are too many (unscheduled, then not ready, then most recently ready, then
//! newest: Kubernetes' ordering), deletes failed pods so they are replaced, and computes
//! status (replicas, ready, available after minReadySeconds).

use std::time::Duration;

use berth_proto::types::*;
use berth_proto::PodPhase;

/// Most pods created or deleted in one pass (a burst limit; the next pass continues).
pub const BURST: usize = 500;

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// New pods, fully formed except for the name suffix (see [`pod_name`]).
    pub create: Vec<Pod>,
    /// Names of pods to delete, with the resourceVersion they were judged on.
    pub delete: Vec<(String, u64)>,
    pub status: ReplicaSetStatus,
    /// Re-plan when a pod passes minReadySeconds.
    pub requeue_after: Option<Duration>,
}

/// `<rs>-<suffix>`; the shell supplies 5 random lowercase alphanumerics.
pub fn pod_name(rs: &ReplicaSet, suffix: &str) -> String {
    format!("{}-{}", rs.metadata.name, suffix)
}

/// A pod for `rs` named `name`: the template, with the images pinned by the Deployment
/// controller ([`berth_proto::image::IMAGE_DIGESTS_ANNOTATION`]) when it recorded any.
pub fn new_pod(rs: &ReplicaSet, name: &str) -> Pod {
    let t = &rs.spec.template;
    let mut spec = t.spec.clone();
    let pins = berth_proto::image::image_pins(&rs.metadata.annotations);
    for c in spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut())
    {
        if let Some(p) = berth_proto::image::pinned_image(&pins, &c.name, &c.image) {
            c.image = p.to_string();
        }
    }
    Pod {
        metadata: ObjectMeta {
            name: name.into(),
            namespace: rs.metadata.namespace.clone(),
            labels: t.metadata.labels.clone(),
            annotations: t.metadata.annotations.clone(),
            owner_references: vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: "ReplicaSet".into(),
                name: rs.metadata.name.clone(),
                uid: rs.metadata.uid.clone(),
                controller: true,
            }],
            ..Default::default()
        },
        spec,
        ..Default::default()
    }
}

fn ready_since(p: &Pod) -> Option<Time> {
    p.status
        .as_ref()
        .and_then(|s| condition(&s.conditions, "Ready"))
        .filter(|c| c.is_true())
        .map(|c| c.last_transition_time.unwrap_or_default())
}

/// Pods that count toward replicas: not being deleted, not finished.
pub fn is_active(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none() && !p.is_terminal()
}

/// Ready for at least `min_ready` seconds at `now`.
pub fn is_available(p: &Pod, min_ready: i64, now: Time) -> bool {
    ready_since(p)
        .is_some_and(|t| min_ready <= 0 || now - t >= chrono::Duration::seconds(min_ready))
}

/// Deletion preference: smaller sorts first (deleted first).
fn deletion_rank(
    p: &Pod,
) -> (
    u8,
    u8,
    u8,
    std::cmp::Reverse<Option<Time>>,
    std::cmp::Reverse<Option<Time>>,
) {
    let assigned = u8::from(!p.spec.node_name.is_empty());
    let running = match p.phase() {
        PodPhase::Pending => 0,
        PodPhase::Unknown => 1,
        PodPhase::Running | PodPhase::Succeeded | PodPhase::Failed => 2,
    };
    let ready = u8::from(p.is_ready());
    (
        assigned,
        running,
        ready,
        std::cmp::Reverse(ready_since(p)),
        std::cmp::Reverse(p.metadata.creation_timestamp),
    )
}

/// Plan one pass for `rs` over the pods it controls (already filtered by owner uid).
pub fn plan(rs: &ReplicaSet, pods: &[Pod], now: Time) -> Plan {
    let min_ready = i64::from(rs.spec.min_ready_seconds.unwrap_or(0));
    let mut delete: Vec<(String, u64)> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && p.phase() == PodPhase::Failed)
        .map(|p| (p.metadata.name.clone(), p.metadata.resource_version))
        .collect();
    let mut active: Vec<&Pod> = pods.iter().filter(|p| is_active(p)).collect();
    let want = usize::try_from(rs.spec.replicas.max(0)).unwrap_or(0);
    let mut create = Vec::new();
    if active.len() < want {
        for _ in 0..(want - active.len()).min(BURST) {
            create.push(new_pod(rs, ""));
        }
    } else if active.len() > want {
        active.sort_by_key(|p| deletion_rank(p));
        for p in active.iter().take((active.len() - want).min(BURST)) {
            delete.push((p.metadata.name.clone(), p.metadata.resource_version));
        }
    }
    let active: Vec<&Pod> = pods.iter().filter(|p| is_active(p)).collect();
    let ready = active.iter().filter(|p| p.is_ready()).count();
    let available = active
        .iter()
        .filter(|p| is_available(p, min_ready, now))
        .count();
    // The earliest moment a ready pod becomes available.
    let requeue_after = active
        .iter()
        .filter(|p| p.is_ready() && !is_available(p, min_ready, now))
        .filter_map(|p| ready_since(p))
        .map(|t| t + chrono::Duration::seconds(min_ready) - now)
        .min()
        .map(|d| {
            Duration::from_millis(u64::try_from(d.num_milliseconds().max(0) + 1).unwrap_or(0))
        });
    let n = |v: usize| i32::try_from(v).unwrap_or(i32::MAX);
    Plan {
        create,
        delete,
        status: ReplicaSetStatus {
            replicas: n(active.len()),
            ready_replicas: n(ready),
            available_replicas: n(available),
            observed_generation: rs.metadata.generation,
        },
        requeue_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_testkit::builders::at;
    use berth_testkit::PodBuilder;

    fn rs(replicas: i32) -> ReplicaSet {
        ReplicaSet {
            metadata: ObjectMeta {
                name: "web-abc".into(),
                namespace: "default".into(),
                uid: "rs-uid".into(),
                ..Default::default()
            },
            spec: ReplicaSetSpec {
                replicas,
                template: PodTemplateSpec {
                    metadata: ObjectMeta {
                        labels: [("app".to_string(), "web".to_string())].into(),
                        ..Default::default()
                    },
                    spec: PodSpec {
                        containers: vec![Container {
                            name: "app".into(),
                            ..Default::default()
                        }],
                        ..Default::default()
                    },
                },
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn creates_missing_pods_from_template_with_owner() {
        let p = plan(&rs(3), &[PodBuilder::new("web-abc-1").build()], at(0));
        assert_eq!(p.create.len(), 2);
        let pod = new_pod(&rs(3), &pod_name(&rs(3), "xyz12"));
        assert_eq!(pod.metadata.name, "web-abc-xyz12");
        assert_eq!(pod.metadata.labels["app"], "web");
        assert_eq!(pod.metadata.controller_uid(), Some("rs-uid"));
        assert!(p.delete.is_empty());
    }

    #[test]
    fn deletes_unscheduled_then_not_ready_then_newest_first() {
        let pods = vec![
            PodBuilder::new("old-ready")
                .node("n1")
                .ready_since(at(0))
                .created(at(0))
                .build(),
            PodBuilder::new("new-ready")
                .node("n1")
                .ready_since(at(50))
                .created(at(40))
                .build(),
            PodBuilder::new("not-ready")
                .node("n1")
                .not_ready()
                .created(at(0))
                .build(),
            PodBuilder::new("unscheduled").created(at(0)).build(),
        ];
        let names = |n: i32| -> Vec<String> {
            plan(&rs(n), &pods, at(100))
                .delete
                .into_iter()
                .map(|d| d.0)
                .collect()
        };
        assert_eq!(names(3), vec!["unscheduled"]);
        assert_eq!(names(2), vec!["unscheduled", "not-ready"]);
        assert_eq!(names(1), vec!["unscheduled", "not-ready", "new-ready"]);
    }

    #[test]
    fn failed_and_terminating_pods_do_not_count() {
        let pods = vec![
            PodBuilder::new("failed").node("n1").phase("Failed").build(),
            PodBuilder::new("gone")
                .node("n1")
                .ready()
                .deleting(at(1))
                .build(),
            PodBuilder::new("ok").node("n1").ready().build(),
        ];
        let p = plan(&rs(2), &pods, at(10));
        assert_eq!(p.create.len(), 1);
        assert_eq!(p.delete, vec![("failed".to_string(), 1)]);
        assert_eq!(p.status.replicas, 1);
    }

    #[test]
    fn available_waits_for_min_ready_seconds() {
        let mut r = rs(2);
        r.spec.min_ready_seconds = Some(10);
        let pods = vec![
            PodBuilder::new("a").node("n").ready_since(at(0)).build(),
            PodBuilder::new("b").node("n").ready_since(at(8)).build(),
        ];
        let p = plan(&r, &pods, at(12));
        assert_eq!(
            (p.status.ready_replicas, p.status.available_replicas),
            (2, 1)
        );
        assert_eq!(p.requeue_after, Some(Duration::from_millis(6001)));
    }
}
