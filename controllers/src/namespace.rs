//! The namespace controller's pure core: which system namespaces to create, which namespaces
//! are terminating, and in which order their content is deleted.
//!
//! Deleting a Namespace marks it Terminating (the store does, with deletionTimestamp and
//! `status.phase`); new objects in it are refused from then on. The controller deletes every
//! object in it, workloads first so their controllers do not chase the pods, then deletes the
//! Namespace again, which the store carries out only once nothing is left in it (the
//! `kubernetes` finalizer's meaning).

use berth_proto::types::{Namespace, SYSTEM_NAMESPACES};
use berth_proto::Kind;

/// The namespaced kinds in the order their objects are deleted: owners before what they own
/// (Deployments, then ReplicaSets, then Pods, whose containers the agents then stop), Events
/// last so the deletions' own events go too.
pub fn deletion_order() -> Vec<Kind> {
    const FIRST: [Kind; 7] = [
        Kind::Deployment,
        Kind::ReplicaSet,
        Kind::Pod,
        Kind::Service,
        Kind::Endpoints,
        Kind::ConfigMap,
        Kind::Secret,
    ];
    let mut out: Vec<Kind> = FIRST.to_vec();
    out.extend(
        Kind::ALL
            .into_iter()
            .filter(|k| k.namespaced() && !FIRST.contains(k) && *k != Kind::Event),
    );
    out.push(Kind::Event);
    out
}

/// The system namespaces that have no object yet.
pub fn missing_system_namespaces(existing: &[Namespace]) -> Vec<&'static str> {
    SYSTEM_NAMESPACES
        .into_iter()
        .filter(|s| !existing.iter().any(|n| n.metadata.name == *s))
        .collect()
}

/// The names of the namespaces being deleted.
pub fn terminating(namespaces: &[Namespace]) -> Vec<String> {
    namespaces
        .iter()
        .filter(|n| n.terminating())
        .map(|n| n.metadata.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(name: &str, phase: &str) -> Namespace {
        let mut n = Namespace::default();
        n.metadata.name = name.into();
        n.status.phase = phase.into();
        n
    }

    #[test]
    fn every_namespaced_kind_is_deleted_once_with_workloads_first_and_events_last() {
        let order = deletion_order();
        let namespaced: Vec<Kind> = Kind::ALL.into_iter().filter(|k| k.namespaced()).collect();
        assert_eq!(order.len(), namespaced.len());
        for k in namespaced {
            assert_eq!(order.iter().filter(|o| **o == k).count(), 1, "{k}");
        }
        assert!(!order.contains(&Kind::Namespace) && !order.contains(&Kind::Node));
        assert_eq!(
            &order[..3],
            &[Kind::Deployment, Kind::ReplicaSet, Kind::Pod]
        );
        assert_eq!(order.last(), Some(&Kind::Event));
    }

    #[test]
    fn only_absent_system_namespaces_are_created_and_only_terminating_ones_emptied() {
        let have = vec![ns("default", "Active"), ns("gone", "Terminating")];
        assert_eq!(missing_system_namespaces(&have), vec!["berth-system"]);
        assert_eq!(terminating(&have), vec!["gone".to_string()]);
        let mut marked = ns("marked", "");
        marked.metadata.deletion_timestamp = Some(chrono::Utc::now());
        assert_eq!(terminating(&[marked]), vec!["marked".to_string()]);
    }
}
