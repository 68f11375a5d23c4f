//! Volume binding in the pure scheduling core: a pod's claims must exist; a bound claim's
//! volume node affinity holds; an unbound local-path claim follows the node its first pod was
//! placed on (also within one batch); immediate claims must be bound first.

use std::sync::Arc;

use berth_proto::storage::*;
use berth_proto::types::*;
use berth_scheduler::volumes::VolumeState;
use berth_scheduler::{schedule_batch, schedule_one, Outcome, Snapshot};
use berth_testkit::{NodeBuilder, PodBuilder};

fn with_claim(mut pod: Pod, claim: &str) -> Pod {
    pod.spec.volumes.push(Volume {
        name: "data".into(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: claim.into(),
            read_only: None,
        }),
        ..Default::default()
    });
    pod
}

fn claim(name: &str, class: &str, volume: &str) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: name.into(),
            namespace: "default".into(),
            uid: format!("uid-{name}"),
            ..Default::default()
        },
        spec: PersistentVolumeClaimSpec {
            access_modes: vec!["ReadWriteOnce".into()],
            storage_class_name: Some(class.into()),
            volume_name: volume.into(),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn volume(name: &str, affinity: Option<VolumeNodeAffinity>) -> PersistentVolume {
    PersistentVolume {
        metadata: ObjectMeta {
            name: name.into(),
            ..Default::default()
        },
        spec: PersistentVolumeSpec {
            node_affinity: affinity,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn nodes() -> Vec<Node> {
    ["a", "b", "c"]
        .iter()
        .map(|n| NodeBuilder::new(n).cpu("4").memory("8Gi").ready().build())
        .collect()
}

fn snap(
    nodes: Vec<Node>,
    bound: &[Pod],
    claims: Vec<PersistentVolumeClaim>,
    volumes: Vec<PersistentVolume>,
) -> Snapshot {
    Snapshot::new(nodes.into_iter().map(Arc::new), bound).with_volumes(Arc::new(VolumeState::new(
        claims.into_iter().map(Arc::new),
        volumes.into_iter().map(Arc::new),
    )))
}

fn bind(node: &str) -> Outcome {
    Outcome::Bind { node: node.into() }
}

fn unsched(reason: &str) -> Outcome {
    Outcome::Unschedulable {
        reason: reason.into(),
    }
}

#[test]
fn claims_decide_where_a_pod_may_go() {
    let pod = with_claim(PodBuilder::new("p").build(), "data");
    let conflict = "0/3 nodes are available: 3 node(s) had volume node affinity conflict.";
    type Case = (
        &'static str,
        Vec<PersistentVolumeClaim>,
        Vec<PersistentVolume>,
        Vec<Pod>,
        Outcome,
    );
    let cases: Vec<Case> = vec![
        (
            "missing claim",
            vec![],
            vec![],
            vec![],
            unsched("0/3 nodes are available: persistentvolumeclaim \"data\" not found."),
        ),
        (
            "claim bound to a volume pinned to b",
            vec![claim("data", LOCAL_PATH, "pv1")],
            vec![volume("pv1", Some(pin_to_node("b")))],
            vec![],
            bind("b"),
        ),
        (
            "claim bound to a volume pinned to a node that is gone",
            vec![claim("data", LOCAL_PATH, "pv1")],
            vec![volume("pv1", Some(pin_to_node("z")))],
            vec![],
            unsched(conflict),
        ),
        (
            "claim bound to a volume with no affinity (a hostPath on every node)",
            vec![claim("data", "manual", "pv1")],
            vec![volume("pv1", None)],
            vec![],
            bind("a"),
        ),
        (
            "claim bound to a volume that does not exist",
            vec![claim("data", "manual", "pv1")],
            vec![],
            vec![],
            unsched("0/3 nodes are available: persistentvolumeclaim \"data\" is bound to persistentvolume \"pv1\", which does not exist."),
        ),
        (
            "unbound local-path claim: any node (WaitForFirstConsumer)",
            vec![claim("data", LOCAL_PATH, "")],
            vec![],
            vec![],
            bind("a"),
        ),
        (
            "unbound local-path claim already used by a pod on c",
            vec![claim("data", LOCAL_PATH, "")],
            vec![],
            vec![with_claim(PodBuilder::new("first").node("c").build(), "data")],
            bind("c"),
        ),
        (
            "unbound local-path claim whose volume is provisioned but not yet taken",
            vec![claim("data", LOCAL_PATH, "")],
            vec![{
                let mut v = volume("pvc-uid-data", Some(pin_to_node("b")));
                v.spec.claim_ref = Some(ClaimReference {
                    namespace: "default".into(),
                    name: "data".into(),
                    uid: "uid-data".into(),
                    ..Default::default()
                });
                v
            }],
            vec![],
            bind("b"),
        ),
        (
            "unbound claim of a class with immediate binding",
            vec![claim("data", "manual", "")],
            vec![],
            vec![],
            unsched("0/3 nodes are available: pod has unbound immediate PersistentVolumeClaims."),
        ),
    ];
    for (what, claims, volumes, bound, want) in cases {
        let s = snap(nodes(), &bound, claims, volumes);
        assert_eq!(schedule_one(&s, &pod), want, "{what}");
    }
}

#[test]
fn a_pinned_node_that_is_full_or_cordoned_leaves_the_pod_pending_with_both_reasons() {
    let mut ns = nodes();
    ns[1] = NodeBuilder::new("b").ready().unschedulable().build();
    let s = snap(
        ns,
        &[],
        vec![claim("data", LOCAL_PATH, "pv1")],
        vec![volume("pv1", Some(pin_to_node("b")))],
    );
    let pod = with_claim(PodBuilder::new("p").build(), "data");
    assert_eq!(
        schedule_one(&s, &pod),
        unsched("0/3 nodes are available: 2 node(s) had volume node affinity conflict, 1 node(s) were unschedulable.")
    );
}

#[test]
fn pods_sharing_an_unbound_claim_in_one_batch_land_on_the_same_node() {
    let s = snap(nodes(), &[], vec![claim("data", LOCAL_PATH, "")], vec![]);
    // Spread would put these on different nodes without the claim.
    let pods: Vec<Pod> = (0..3)
        .map(|i| {
            with_claim(
                PodBuilder::new(&format!("p{i}"))
                    .owner("ReplicaSet", "rs", "rs-uid")
                    .build(),
                "data",
            )
        })
        .collect();
    let nodes: Vec<Outcome> = schedule_batch(&s, &pods)
        .into_iter()
        .map(|d| d.outcome)
        .collect();
    assert_eq!(nodes, vec![bind("a"), bind("a"), bind("a")]);
    // And without the claim they spread (so the test above proves the claim did it).
    let free: Vec<Pod> = (0..3)
        .map(|i| {
            PodBuilder::new(&format!("q{i}"))
                .owner("ReplicaSet", "rs", "rs-uid")
                .build()
        })
        .collect();
    let spread: Vec<Outcome> = schedule_batch(&s, &free)
        .into_iter()
        .map(|d| d.outcome)
        .collect();
    assert_ne!(spread, nodes);
}
