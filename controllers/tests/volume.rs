//! The PersistentVolume binder's plan: WaitForFirstConsumer provisioning on the first pod's
//! node, the bind steps, static binding to the best pre-created volume, and reclaiming.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use berth_controllers::volume::{plan, provision, Action};
use berth_proto::storage::*;
use berth_proto::types::*;
use berth_testkit::{NodeBuilder, PodBuilder};

fn claim(name: &str, class: &str, size: &str) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: name.into(),
            namespace: "default".into(),
            uid: format!("u-{name}"),
            resource_version: 3,
            ..Default::default()
        },
        spec: PersistentVolumeClaimSpec {
            access_modes: vec!["ReadWriteOnce".into()],
            resources: VolumeResourceRequirements {
                requests: [("storage".to_string(), Quantity(size.into()))].into(),
                ..Default::default()
            },
            storage_class_name: Some(class.into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn user_pod(name: &str, claim: &str, node: Option<&str>) -> Pod {
    let mut b = PodBuilder::new(name);
    if let Some(n) = node {
        b = b.node(n);
    }
    let mut p = b.build();
    p.spec.volumes.push(Volume {
        name: "data".into(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: claim.into(),
            read_only: None,
        }),
        ..Default::default()
    });
    p
}

fn node(name: &str) -> Node {
    let mut n = NodeBuilder::new(name).ready().build();
    n.metadata.annotations.insert(
        NODE_STORAGE_DIR.into(),
        format!("/var/lib/berth/{name}/volumes/pv"),
    );
    n
}

fn arcs<T>(v: Vec<T>) -> Vec<Arc<T>> {
    v.into_iter().map(Arc::new).collect()
}

#[test]
fn a_local_path_claim_waits_for_its_first_pod_then_gets_a_volume_on_that_node() {
    let c = claim("data", LOCAL_PATH, "1Gi");
    let nodes = arcs(vec![node("a"), node("b")]);
    // No pod yet, or a pod not yet scheduled: only the Pending status.
    for pods in [vec![], vec![user_pod("p", "data", None)]] {
        let acts = plan(&arcs(vec![c.clone()]), &[], &arcs(pods), &nodes);
        assert!(
            matches!(acts.as_slice(), [Action::UpdateClaimStatus(s)] if s.phase() == "Pending"),
            "{acts:?}"
        );
    }
    let acts = plan(
        &arcs(vec![c.clone()]),
        &[],
        &arcs(vec![user_pod("p", "data", Some("b"))]),
        &nodes,
    );
    let v = acts
        .iter()
        .find_map(|a| match a {
            Action::CreateVolume(v) => Some(v.clone()),
            _ => None,
        })
        .expect("a volume is provisioned");
    assert_eq!(v.metadata.name, "pvc-u-data");
    assert_eq!(v.pinned_node(), Some("b"));
    assert_eq!(v.reclaim_policy(), "Delete");
    assert!(v.is_provisioned());
    assert_eq!(
        v.spec.host_path.as_ref().map(|h| h.path.as_str()),
        Some("/var/lib/berth/b/volumes/pv/pvc-u-data")
    );
    assert_eq!(
        v.spec.claim_ref.as_ref().map(|r| r.uid.as_str()),
        Some("u-data")
    );
    assert!(v.satisfies(&c));
    // A node that has not announced its storage directory gets nothing yet.
    let mut bare = node("b");
    bare.metadata.annotations.clear();
    assert!(provision(&c, &bare).is_none());
}

#[test]
fn binding_takes_three_steps_each_from_the_state_before() {
    let c = claim("data", LOCAL_PATH, "1Gi");
    let v = provision(&c, &node("a")).expect("provisioned");
    // Step 2: the claim takes the volume that points at it.
    let acts = plan(&arcs(vec![c.clone()]), &arcs(vec![v.clone()]), &[], &[]);
    let bound_claim = match acts.as_slice() {
        [Action::UpdateClaim(c)] => c.as_ref().clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(bound_claim.spec.volume_name, v.metadata.name);
    // Step 3: both say Bound; the claim shows the volume's capacity and modes.
    let acts = plan(
        &arcs(vec![bound_claim.clone()]),
        &arcs(vec![v.clone()]),
        &[],
        &[],
    );
    assert_eq!(acts.len(), 2, "{acts:?}");
    let mut done_c = bound_claim.clone();
    let mut done_v = v.clone();
    for a in acts {
        match a {
            Action::UpdateVolumeStatus(x) => {
                assert_eq!(x.phase(), "Bound");
                done_v = *x;
            }
            Action::UpdateClaimStatus(x) => {
                assert_eq!(x.phase(), "Bound");
                assert_eq!(x.status.as_ref().unwrap().capacity["storage"].0, "1Gi");
                done_c = *x;
            }
            other => panic!("{other:?}"),
        }
    }
    // Settled: nothing more to do.
    assert!(plan(
        &arcs(vec![done_c.clone()]),
        &arcs(vec![done_v.clone()]),
        &[],
        &[]
    )
    .is_empty());
    // The claim deleted: a provisioned volume with Delete is deleted...
    let acts = plan(&[], &arcs(vec![done_v.clone()]), &[], &[]);
    assert!(
        matches!(acts.as_slice(), [Action::DeleteVolume { name, .. }] if *name == v.metadata.name),
        "{acts:?}"
    );
    // ...with Retain it is Released and kept.
    let mut retained = done_v.clone();
    retained.spec.persistent_volume_reclaim_policy = Some("Retain".into());
    let acts = plan(&[], &arcs(vec![retained]), &[], &[]);
    assert!(
        matches!(acts.as_slice(), [Action::UpdateVolumeStatus(x)] if x.phase() == "Released"),
        "{acts:?}"
    );
    // The volume deleted under a bound claim: Lost.
    let acts = plan(&arcs(vec![done_c]), &[], &[], &[]);
    assert!(
        matches!(acts.as_slice(), [Action::UpdateClaimStatus(x)] if x.phase() == "Lost"),
        "{acts:?}"
    );
}

fn static_pv(name: &str, class: &str, size: &str) -> PersistentVolume {
    PersistentVolume {
        metadata: ObjectMeta {
            name: name.into(),
            ..Default::default()
        },
        spec: PersistentVolumeSpec {
            capacity: [("storage".to_string(), Quantity(size.into()))].into(),
            access_modes: vec!["ReadWriteOnce".into()],
            persistent_volume_reclaim_policy: Some("Retain".into()),
            storage_class_name: class.into(),
            host_path: Some(HostPathVolumeSource {
                path: format!("/mnt/{name}"),
                type_: None,
            }),
            ..Default::default()
        },
        status: Some(PersistentVolumeStatus {
            phase: "Available".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn a_claim_binds_the_smallest_matching_precreated_volume_and_two_claims_never_share_one() {
    let vols = arcs(vec![
        static_pv("big", "manual", "50Gi"),
        static_pv("fit", "manual", "20Gi"),
        static_pv("small", "manual", "1Gi"),
        static_pv("other-class", "fast", "20Gi"),
    ]);
    let claims = arcs(vec![
        claim("one", "manual", "20Gi"),
        claim("two", "manual", "20Gi"),
    ]);
    let acts = plan(&claims, &vols, &[], &[]);
    let picks: Vec<(String, String)> = acts
        .iter()
        .filter_map(|a| match a {
            Action::UpdateVolume(v) => Some((
                v.spec.claim_ref.as_ref().unwrap().name.clone(),
                v.metadata.name.clone(),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(
        picks,
        vec![("one".into(), "fit".into()), ("two".into(), "big".into())]
    );
    // No fitting volume: the claim stays Pending, nothing is provisioned for another class.
    let acts = plan(
        &arcs(vec![claim("huge", "manual", "1Ti")]),
        &vols,
        &arcs(vec![user_pod("p", "huge", Some("a"))]),
        &arcs(vec![node("a")]),
    );
    assert!(
        acts.iter()
            .all(|a| !matches!(a, Action::UpdateVolume(_) | Action::CreateVolume(_))),
        "{acts:?}"
    );
}

#[test]
fn a_precreated_volume_with_delete_fails_instead_of_losing_user_data() {
    let mut v = static_pv("mine", "manual", "1Gi");
    v.spec.persistent_volume_reclaim_policy = Some("Delete".into());
    v.spec.claim_ref = Some(ClaimReference {
        namespace: "default".into(),
        name: "gone".into(),
        uid: "u-gone".into(),
        ..Default::default()
    });
    let acts = plan(&[], &arcs(vec![v]), &[], &[]);
    assert!(
        matches!(acts.as_slice(), [Action::UpdateVolumeStatus(x)] if x.phase() == "Failed" && x.status.as_ref().unwrap().message.contains("delete the PersistentVolume yourself")),
        "{acts:?}"
    );
}
