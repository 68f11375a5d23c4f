//! Garbage collection's pure core: objects whose owners are all gone are deleted.
//!
//! Deleting a Deployment orphans its ReplicaSets (collected), which orphans their Pods
//! (collected on the next pass); deleting a Service orphans its Endpoints. Pods bound to a
//! Node that no longer exists are collected too (their ReplicaSet replaces them), as the
//! Kubernetes pod GC does. The shell confirms
//! with a live read of the owner before deleting, since a cache may not have seen an owner that
//! was created a moment ago.

use std::collections::HashSet;

use berth_proto::types::OwnerReference;
use berth_proto::Kind;

/// The parts of an object GC looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub resource_version: u64,
    pub owners: Vec<OwnerReference>,
}

/// The items to delete: they have owner references and none of the owners exists.
pub fn plan<'a>(items: &'a [Item], live_uids: &HashSet<String>) -> Vec<&'a Item> {
    items
        .iter()
        .filter(|i| !i.owners.is_empty() && i.owners.iter().all(|o| !live_uids.contains(&o.uid)))
        .collect()
}

/// The items (pods, with `node` their spec.nodeName) bound to a node that does not exist.
pub fn pods_on_missing_nodes<'a>(
    pods: &'a [(Item, String)],
    nodes: &HashSet<String>,
) -> Vec<&'a Item> {
    pods.iter()
        .filter(|(_, node)| !node.is_empty() && !nodes.contains(node))
        .map(|(i, _)| i)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_bound_to_deleted_nodes_are_collected() {
        let pods = vec![
            (item(Kind::Pod, "on-live", "p1", None), "n1".to_string()),
            (item(Kind::Pod, "on-gone", "p2", None), "n9".to_string()),
            (item(Kind::Pod, "unbound", "p3", None), String::new()),
        ];
        let nodes: HashSet<String> = ["n1".to_string()].into();
        let names: Vec<&str> = pods_on_missing_nodes(&pods, &nodes)
            .iter()
            .map(|i| i.name.as_str())
            .collect();
        assert_eq!(names, vec!["on-gone"]);
    }

    fn item(kind: Kind, name: &str, uid: &str, owner: Option<&str>) -> Item {
        Item {
            kind,
            namespace: "default".into(),
            name: name.into(),
            uid: uid.into(),
            resource_version: 1,
            owners: owner
                .map(|o| {
                    vec![OwnerReference {
                        uid: o.into(),
                        controller: true,
                        ..Default::default()
                    }]
                })
                .unwrap_or_default(),
        }
    }

    #[test]
    fn orphans_are_collected_and_owned_objects_kept() {
        let items = vec![
            item(Kind::Deployment, "web", "d1", None),
            item(Kind::ReplicaSet, "web-1", "rs1", Some("d1")),
            item(Kind::ReplicaSet, "gone-1", "rs2", Some("d-deleted")),
            item(Kind::Pod, "gone-1-x", "p1", Some("rs2")),
            item(Kind::Endpoints, "svc", "e1", Some("svc-deleted")),
        ];
        let live: HashSet<String> = items.iter().map(|i| i.uid.clone()).collect();
        let names: Vec<&str> = plan(&items, &live)
            .iter()
            .map(|i| i.name.as_str())
            .collect();
        assert_eq!(names, vec!["gone-1", "svc"]);
    }

    #[test]
    fn object_with_one_live_owner_of_several_is_kept() {
        let mut i = item(Kind::Pod, "p", "p1", Some("a"));
        i.owners.push(OwnerReference {
            uid: "b".into(),
            ..Default::default()
        });
        let live: HashSet<String> = ["b".to_string()].into();
        assert!(plan(std::slice::from_ref(&i), &live).is_empty());
    }
}
