//! Table tests and properties of the pure scheduling core, built with testkit fixtures.

use std::sync::Arc;

use berth_proto::quantity::pod_requests;
use berth_proto::types::{Node, Pod};
use std::collections::HashMap;

use berth_proto::types::{condition, set_condition, Condition, Time};
use berth_scheduler::{
    plan_pass, schedule_batch, schedule_one, Outcome, PassPlan, Snapshot, Write,
};
use berth_testkit::builders::at;
use berth_testkit::{NodeBuilder, PodBuilder};
use proptest::prelude::*;

fn snap(nodes: Vec<Node>, pods: &[Pod]) -> Snapshot {
    Snapshot::new(nodes.into_iter().map(Arc::new), pods)
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
fn binpack_prefers_fullest_node_that_fits() {
    let nodes = vec![
        NodeBuilder::new("a").cpu("4").memory("8Gi").ready().build(),
        NodeBuilder::new("b").cpu("4").memory("8Gi").ready().build(),
    ];
    let bound = [PodBuilder::new("x")
        .cpu("2")
        .memory("1Gi")
        .node("b")
        .build()];
    let pod = PodBuilder::new("p").cpu("1").memory("1Gi").build();
    assert_eq!(schedule_one(&snap(nodes, &bound), &pod), bind("b"));
}

#[test]
fn binpack_skips_fullest_node_when_pod_does_not_fit_there() {
    let nodes = vec![
        NodeBuilder::new("a").cpu("4").memory("8Gi").ready().build(),
        NodeBuilder::new("b").cpu("4").memory("8Gi").ready().build(),
    ];
    let bound = [PodBuilder::new("x").cpu("3500m").node("b").build()];
    let pod = PodBuilder::new("p").cpu("1").build();
    assert_eq!(schedule_one(&snap(nodes, &bound), &pod), bind("a"));
}

#[test]
fn spread_breaks_ties_between_equal_nodes() {
    let nodes = vec![
        NodeBuilder::new("a").ready().build(),
        NodeBuilder::new("b").ready().build(),
        NodeBuilder::new("c").ready().build(),
    ];
    let pods: Vec<Pod> = (0..6)
        .map(|i| {
            PodBuilder::new(&format!("web-{i}"))
                .owner("ReplicaSet", "web", "rs1")
                .build()
        })
        .collect();
    let decisions = schedule_batch(&snap(nodes, &[]), &pods);
    let mut per_node = std::collections::BTreeMap::<String, u32>::new();
    for d in &decisions {
        match &d.outcome {
            Outcome::Bind { node } => *per_node.entry(node.clone()).or_default() += 1,
            o => panic!("unexpected {o:?}"),
        }
    }
    assert_eq!(
        per_node.values().copied().collect::<Vec<_>>(),
        vec![2, 2, 2]
    );
}

#[test]
fn small_replicas_spread_while_large_ones_pack() {
    let nodes = || {
        vec![
            NodeBuilder::new("a").cpu("4").memory("8Gi").ready().build(),
            NodeBuilder::new("b").cpu("4").memory("8Gi").ready().build(),
        ]
    };
    let pods = |cpu: &str| -> Vec<Pod> {
        (0..2)
            .map(|i| {
                PodBuilder::new(&format!("p{i}"))
                    .cpu(cpu)
                    .owner("ReplicaSet", "rs", "rs1")
                    .build()
            })
            .collect()
    };
    // 100m of 4 cpus stays in the same fill bucket: spread decides.
    let d = schedule_batch(&snap(nodes(), &[]), &pods("100m"));
    assert_eq!(
        (d[0].outcome.clone(), d[1].outcome.clone()),
        (bind("a"), bind("b"))
    );
    // 1.5 cpus moves the node to a fuller bucket: bin-packing decides.
    let d = schedule_batch(&snap(nodes(), &[]), &pods("1500m"));
    assert_eq!(
        (d[0].outcome.clone(), d[1].outcome.clone()),
        (bind("a"), bind("a"))
    );
}

#[test]
fn unschedulable_reason_counts_reasons_like_kubectl() {
    let nodes = vec![
        NodeBuilder::new("a").cpu("1").memory("1Gi").ready().build(),
        NodeBuilder::new("b").cpu("1").memory("1Gi").ready().build(),
        NodeBuilder::new("c")
            .cpu("8")
            .memory("1Gi")
            .ready()
            .unschedulable()
            .build(),
    ];
    let pod = PodBuilder::new("p").cpu("2").build();
    assert_eq!(
        schedule_one(&snap(nodes, &[]), &pod),
        unsched("0/3 nodes are available: 2 Insufficient cpu, 1 node(s) were unschedulable.")
    );
}

#[test]
fn a_runtime_class_places_the_pod_only_where_that_runtime_exists() {
    let nodes = vec![
        NodeBuilder::new("a")
            .cpu("4")
            .runtime("process")
            .ready()
            .build(),
        NodeBuilder::new("b")
            .cpu("4")
            .runtime("docker")
            .runtime("process")
            .ready()
            .build(),
        NodeBuilder::new("c")
            .cpu("4")
            .runtime("process")
            .ready()
            .build(),
    ];
    let docker = PodBuilder::new("d").runtime_class("docker").build();
    assert_eq!(schedule_one(&snap(nodes.clone(), &[]), &docker), bind("b"));
    let mut third = nodes[0].clone();
    third.metadata.name = "e".into();
    let three = vec![nodes[0].clone(), nodes[2].clone(), third];
    assert_eq!(
        schedule_one(&snap(three, &[]), &docker),
        unsched("0/3 nodes are available: 3 node(s) didn't have runtime docker.")
    );
    // No runtimeClassName: any node (its default runtime).
    let any = PodBuilder::new("p").build();
    assert!(matches!(
        schedule_one(&snap(nodes, &[]), &any),
        Outcome::Bind { .. }
    ));
}

#[test]
fn filters_reject_with_their_reasons() {
    let cases: Vec<(&str, Node, Pod, &str)> = vec![
        (
            "not ready",
            NodeBuilder::new("a").cpu("4").not_ready().build(),
            PodBuilder::new("p").build(),
            "0/1 nodes are available: 1 node(s) were not ready.",
        ),
        (
            "node selector",
            NodeBuilder::new("a").label("disk", "hdd").ready().build(),
            PodBuilder::new("p").node_selector("disk", "ssd").build(),
            "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector.",
        ),
        (
            "runtime class the node does not offer",
            NodeBuilder::new("a").runtime("process").ready().build(),
            PodBuilder::new("p").runtime_class("docker").build(),
            "0/1 nodes are available: 1 node(s) didn't have runtime docker.",
        ),
        (
            "NoSchedule taint",
            NodeBuilder::new("a")
                .ready()
                .taint("dedicated", "gpu", "NoSchedule")
                .build(),
            PodBuilder::new("p").build(),
            "0/1 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}.",
        ),
        (
            "NoExecute taint",
            NodeBuilder::new("a")
                .ready()
                .taint("node.kubernetes.io/unreachable", "", "NoExecute")
                .build(),
            PodBuilder::new("p").build(),
            "0/1 nodes are available: 1 node(s) had untolerated taint {node.kubernetes.io/unreachable: }.",
        ),
        (
            "cpu and memory",
            NodeBuilder::new("a").cpu("1").memory("1Gi").ready().build(),
            PodBuilder::new("p").cpu("2").memory("2Gi").build(),
            "0/1 nodes are available: 1 Insufficient cpu, 1 Insufficient memory.",
        ),
        (
            "pod count",
            NodeBuilder::new("a").pods("0").ready().build(),
            PodBuilder::new("p").build(),
            "0/1 nodes are available: 1 Too many pods.",
        ),
    ];
    for (what, node, pod, want) in cases {
        assert_eq!(
            schedule_one(&snap(vec![node], &[]), &pod),
            unsched(want),
            "{what}"
        );
    }
}

#[test]
fn no_nodes_is_an_outcome() {
    let pod = PodBuilder::new("p").build();
    assert_eq!(
        schedule_one(&snap(vec![], &[]), &pod),
        unsched("0/0 nodes are available.")
    );
}

#[test]
fn tolerations_admit_tainted_nodes() {
    let node = NodeBuilder::new("a")
        .ready()
        .taint("dedicated", "gpu", "NoSchedule")
        .build();
    for pod in [
        PodBuilder::new("eq")
            .toleration("dedicated", "gpu", "NoSchedule")
            .build(),
        PodBuilder::new("exists")
            .toleration("dedicated", "", "")
            .build(),
    ] {
        assert_eq!(
            schedule_one(&snap(vec![node.clone()], &[]), &pod),
            bind("a")
        );
    }
    let wrong_value = PodBuilder::new("wrong")
        .toleration("dedicated", "cpu", "NoSchedule")
        .build();
    assert!(matches!(
        schedule_one(&snap(vec![node], &[]), &wrong_value),
        Outcome::Unschedulable { .. }
    ));
}

#[test]
fn prefer_no_schedule_taint_only_lowers_the_score() {
    let nodes = vec![
        NodeBuilder::new("a")
            .cpu("4")
            .ready()
            .taint("spot", "", "PreferNoSchedule")
            .build(),
        NodeBuilder::new("b").cpu("4").ready().build(),
    ];
    // `a` is fuller (would win on bin-packing) but carries the PreferNoSchedule taint.
    let bound = [PodBuilder::new("x").cpu("2").node("a").build()];
    let pod = PodBuilder::new("p").cpu("1").build();
    assert_eq!(schedule_one(&snap(nodes.clone(), &bound), &pod), bind("b"));
    // Alone, the tainted node is still used.
    assert_eq!(
        schedule_one(&snap(vec![nodes[0].clone()], &bound), &pod),
        bind("a")
    );
}

#[test]
fn fixed_host_port_conflicts_within_a_batch() {
    let nodes = vec![
        NodeBuilder::new("a").ready().build(),
        NodeBuilder::new("b").ready().build(),
    ];
    let pods: Vec<Pod> = (0..3)
        .map(|i| {
            PodBuilder::new(&format!("p{i}"))
                .host_port(80, 8080)
                .build()
        })
        .collect();
    let d = schedule_batch(&snap(nodes, &[]), &pods);
    assert_eq!(d[0].outcome, bind("a"));
    assert_eq!(d[1].outcome, bind("b"));
    assert_eq!(
        d[2].outcome,
        unsched("0/2 nodes are available: 2 node(s) didn't have free ports for the requested pod ports.")
    );
}

#[test]
fn batch_accounts_for_earlier_decisions() {
    let nodes = vec![NodeBuilder::new("a").cpu("2").ready().build()];
    let pods: Vec<Pod> = (0..3)
        .map(|i| PodBuilder::new(&format!("p{i}")).cpu("1").build())
        .collect();
    let d = schedule_batch(&snap(nodes, &[]), &pods);
    assert_eq!(d[0].outcome, bind("a"));
    assert_eq!(d[1].outcome, bind("a"));
    assert_eq!(
        d[2].outcome,
        unsched("0/1 nodes are available: 1 Insufficient cpu.")
    );
}

#[test]
fn finished_pods_release_their_resources() {
    let nodes = vec![NodeBuilder::new("a").cpu("1").ready().build()];
    let bound = [PodBuilder::new("done")
        .cpu("1")
        .node("a")
        .phase("Succeeded")
        .build()];
    let pod = PodBuilder::new("p").cpu("1").build();
    assert_eq!(schedule_one(&snap(nodes, &bound), &pod), bind("a"));
}

#[test]
fn large_clusters_score_a_rotating_sample_but_find_the_only_fit() {
    use berth_scheduler::schedule::feasible_nodes_to_find;
    assert_eq!(feasible_nodes_to_find(3), 3);
    assert_eq!(feasible_nodes_to_find(100), 100);
    assert_eq!(feasible_nodes_to_find(1000), 420);
    assert_eq!(feasible_nodes_to_find(5000), 500);
    let mut nodes: Vec<Node> = (0..300)
        .map(|i| {
            NodeBuilder::new(&format!("n{i:03}"))
                .cpu("1")
                .ready()
                .build()
        })
        .collect();
    nodes.push(NodeBuilder::new("z-big").cpu("16").ready().build());
    let s = snap(nodes, &[]);
    // Only one node fits: every node is visited.
    let big = PodBuilder::new("big").cpu("8").build();
    assert_eq!(schedule_one(&s, &big), bind("z-big"));
    // Small pods spread over the rotating sample instead of all landing on one node.
    let pods: Vec<Pod> = (0..50)
        .map(|i| PodBuilder::new(&format!("p{i}")).cpu("100m").build())
        .collect();
    let decisions = schedule_batch(&s, &pods);
    let nodes: std::collections::BTreeSet<String> = decisions
        .iter()
        .filter_map(|d| match &d.outcome {
            Outcome::Bind { node } => Some(node.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(decisions.len(), 50);
    assert!(nodes.len() > 1, "{nodes:?}");
}

// ---- the pass plan: the decisions the scheduler's shell used to make itself -----------------

fn pass(pods: Vec<Pod>, nodes: Vec<Node>, assumed: &[(&str, &str)], max_batch: usize) -> PassPlan {
    let pods: Vec<Arc<Pod>> = pods.into_iter().map(Arc::new).collect();
    let assumed: HashMap<String, String> = assumed
        .iter()
        .map(|(uid, node)| (uid.to_string(), node.to_string()))
        .collect();
    plan_pass(
        &pods,
        nodes.into_iter().map(Arc::new).collect(),
        &assumed,
        max_batch,
        at(100),
    )
}

/// Pod names bound by the plan, with their node, in write order.
fn binds(p: &PassPlan) -> Vec<(String, String)> {
    p.writes
        .iter()
        .filter_map(|w| match w {
            Write::Bind { pod, node } => {
                assert_eq!(&pod.spec.node_name, node, "the bind carries its node");
                Some((pod.metadata.name.clone(), node.clone()))
            }
            _ => None,
        })
        .collect()
}

/// (pod, PodScheduled status, reason, message) of each status write, in order.
fn scheduled_writes(p: &PassPlan) -> Vec<(String, String, String, String)> {
    p.writes
        .iter()
        .filter_map(|w| match w {
            Write::Status(pod) => {
                let st = pod.status.as_ref().expect("a status write has a status");
                let c = condition(&st.conditions, "PodScheduled").expect("PodScheduled");
                assert_eq!(
                    c.last_update_time,
                    Some(at(100)),
                    "stamped with the shell's now"
                );
                Some((
                    pod.metadata.name.clone(),
                    c.status.clone(),
                    c.reason.clone(),
                    c.message.clone(),
                ))
            }
            _ => None,
        })
        .collect()
}

fn events(p: &PassPlan) -> Vec<(String, String, String)> {
    p.writes
        .iter()
        .filter_map(|w| match w {
            Write::Event { pod, event } => {
                assert_eq!(&event.involved_object.name, pod);
                Some((pod.clone(), event.reason.clone(), event.message.clone()))
            }
            _ => None,
        })
        .collect()
}

fn with_pod_scheduled(mut pod: Pod, status: bool, message: &str) -> Pod {
    let st = pod.status.get_or_insert_with(Default::default);
    let reason = if status { "" } else { "Unschedulable" };
    set_condition(
        &mut st.conditions,
        Condition::new("PodScheduled", status, reason, message, at(1)),
    );
    pod
}

const NO_ROOM: &str = "0/1 nodes are available: 1 Insufficient cpu.";

#[test]
fn pass_waits_only_for_live_unbound_unfinished_pods() {
    let deleting: Time = at(5);
    let cases: Vec<(&str, Pod, usize)> = vec![
        ("unbound", PodBuilder::new("p").build(), 1),
        ("bound", PodBuilder::new("p").node("n").build(), 0),
        (
            "deleting",
            PodBuilder::new("p").deleting(deleting).build(),
            0,
        ),
        (
            "succeeded",
            PodBuilder::new("p").phase("Succeeded").build(),
            0,
        ),
        ("failed", PodBuilder::new("p").phase("Failed").build(), 0),
    ];
    for (what, pod, waiting) in cases {
        let node = NodeBuilder::new("n").ready().build();
        let p = pass(vec![pod], vec![node], &[], 10);
        assert_eq!(p.waiting, waiting, "{what}: waiting");
        assert_eq!(p.batch, waiting, "{what}: scheduled in this pass");
        assert_eq!(binds(&p).len(), waiting, "{what}: binds");
    }
}

#[test]
fn pass_binds_oldest_first_and_counts_bound_pods_on_their_nodes() {
    // One cpu left on each node after what is bound: the older pod gets the room on "a",
    // the younger the room on "b", and nothing is left for a third.
    let nodes = vec![
        NodeBuilder::new("a").cpu("2").ready().build(),
        NodeBuilder::new("b").cpu("2").ready().build(),
    ];
    let pods = vec![
        PodBuilder::new("young").cpu("1").created(at(3)).build(),
        PodBuilder::new("bound-a").cpu("1").node("a").build(),
        PodBuilder::new("old").cpu("1").created(at(1)).build(),
        PodBuilder::new("bound-b").cpu("1").node("b").build(),
        PodBuilder::new("youngest").cpu("1").created(at(4)).build(),
    ];
    let p = pass(pods, nodes, &[], 10);
    assert_eq!(p.waiting, 3);
    assert_eq!(p.unschedulable, 1);
    let bound = binds(&p);
    assert_eq!(bound.len(), 2);
    assert_eq!(bound[0].0, "old");
    assert_eq!(bound[1].0, "young");
    assert_ne!(bound[0].1, bound[1].1, "one cpu free per node");
    assert_eq!(events(&p).len(), 1);
    assert_eq!(events(&p)[0].0, "youngest");
}

#[test]
fn assumed_binds_hold_their_node_and_are_not_bound_again() {
    // "first" was bound to "a" by an earlier pass the cache has not caught up with.
    let nodes = vec![
        NodeBuilder::new("a").cpu("1").ready().build(),
        NodeBuilder::new("b").cpu("1").ready().build(),
    ];
    let pods = vec![
        PodBuilder::new("first").cpu("1").created(at(1)).build(),
        PodBuilder::new("second").cpu("1").created(at(2)).build(),
    ];
    let p = pass(pods, nodes, &[("uid-pod-first", "a")], 10);
    assert_eq!(p.waiting, 1, "the assumed pod no longer waits");
    assert_eq!(binds(&p), vec![("second".to_string(), "b".to_string())]);
}

#[test]
fn max_batch_caps_the_pods_of_one_pass_but_not_the_waiting_count() {
    let nodes = vec![NodeBuilder::new("a").ready().build()];
    let pods = (0..5)
        .map(|i| PodBuilder::new(&format!("p{i}")).created(at(i)).build())
        .collect();
    let p = pass(pods, nodes, &[], 2);
    assert_eq!(p.waiting, 5);
    assert_eq!(p.batch, 2);
    let names: Vec<String> = binds(&p).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, vec!["p0", "p1"]);
}

#[test]
fn unschedulable_condition_and_event_are_written_only_when_the_reason_changes() {
    let s = |v: &str| v.to_string();
    // (what, the pod's PodScheduled before the pass, status writes + events expected)
    type Case<'a> = (&'a str, Option<(bool, &'a str)>, bool);
    let cases: Vec<Case> = vec![
        ("first time", None, true),
        ("same reason again", Some((false, NO_ROOM)), false),
        (
            "reason changed",
            Some((
                false,
                "0/1 nodes are available: 1 node(s) were unschedulable.",
            )),
            true,
        ),
    ];
    for (what, before, writes) in cases {
        let mut pod = PodBuilder::new("big").cpu("2").build();
        if let Some((status, message)) = before {
            pod = with_pod_scheduled(pod, status, message);
        }
        let nodes = vec![NodeBuilder::new("a").cpu("1").ready().build()];
        let p = pass(vec![pod], nodes, &[], 10);
        assert_eq!(p.unschedulable, 1, "{what}: counted either way");
        assert!(binds(&p).is_empty(), "{what}");
        if writes {
            assert_eq!(
                scheduled_writes(&p),
                vec![(s("big"), s("False"), s("Unschedulable"), s(NO_ROOM))],
                "{what}"
            );
            assert_eq!(
                events(&p),
                vec![(s("big"), s("FailedScheduling"), s(NO_ROOM))],
                "{what}"
            );
        } else {
            assert!(
                p.writes.is_empty(),
                "{what}: nothing rewritten, got {:?}",
                p.writes
            );
        }
    }
}

#[test]
fn bound_pod_still_saying_unschedulable_gets_pod_scheduled_true() {
    let s = |v: &str| v.to_string();
    // (what, pod, gets PodScheduled=True)
    let cases: Vec<(&str, Pod, bool)> = vec![
        (
            "bound after an unschedulable pass",
            with_pod_scheduled(PodBuilder::new("p").node("a").build(), false, NO_ROOM),
            true,
        ),
        (
            "bound on its first try (its agent writes the condition)",
            PodBuilder::new("p").node("a").build(),
            false,
        ),
        (
            "already PodScheduled=True",
            with_pod_scheduled(PodBuilder::new("p").node("a").build(), true, ""),
            false,
        ),
        (
            "already started by its agent",
            with_pod_scheduled(
                PodBuilder::new("p").node("a").ready().build(),
                false,
                NO_ROOM,
            ),
            false,
        ),
        (
            "being deleted",
            with_pod_scheduled(
                PodBuilder::new("p").node("a").deleting(at(5)).build(),
                false,
                NO_ROOM,
            ),
            false,
        ),
    ];
    for (what, pod, write) in cases {
        let nodes = vec![NodeBuilder::new("a").ready().build()];
        let p = pass(vec![pod], nodes, &[], 10);
        let want = if write {
            vec![(s("p"), s("True"), s(""), s(""))]
        } else {
            vec![]
        };
        assert_eq!(scheduled_writes(&p), want, "{what}");
        assert!(binds(&p).is_empty() && events(&p).is_empty(), "{what}");
    }
}

proptest! {
    #[test]
    fn batch_never_overcommits_a_node(
        node_cpus in prop::collection::vec(1u64..8, 1..5),
        node_mem_gi in prop::collection::vec(1u64..8, 1..5),
        pod_reqs in prop::collection::vec((0u64..3000, 0u64..3000), 0..40),
    ) {
        let nodes: Vec<Node> = node_cpus
            .iter()
            .zip(node_mem_gi.iter().cycle())
            .enumerate()
            .map(|(i, (c, m))| {
                NodeBuilder::new(&format!("n{i}"))
                    .cpu(&c.to_string())
                    .memory(&format!("{m}Gi"))
                    .ready()
                    .build()
            })
            .collect();
        let pods: Vec<Pod> = pod_reqs
            .iter()
            .enumerate()
            .map(|(i, (c, m))| {
                PodBuilder::new(&format!("p{i}"))
                    .cpu(&format!("{c}m"))
                    .memory(&format!("{m}Mi"))
                    .build()
            })
            .collect();
        let s = snap(nodes.clone(), &[]);
        let decisions = schedule_batch(&s, &pods);
        prop_assert_eq!(decisions.len(), pods.len());
        for info in &s.nodes {
            let mut cpu = 0u64;
            let mut mem = 0u64;
            for (d, p) in decisions.iter().zip(&pods) {
                if d.outcome == bind(info.name()) {
                    let r = pod_requests(&p.spec);
                    cpu += r.milli_cpu;
                    mem += r.memory;
                }
            }
            prop_assert!(cpu <= info.allocatable.milli_cpu, "cpu {} > {}", cpu, info.allocatable.milli_cpu);
            prop_assert!(mem <= info.allocatable.memory, "mem {} > {}", mem, info.allocatable.memory);
        }
        // Refusals are outcomes that name the node count.
        let prefix = format!("0/{} nodes are available", s.nodes.len());
        for d in &decisions {
            if let Outcome::Unschedulable { reason } = &d.outcome {
                prop_assert!(reason.starts_with(&prefix));
            }
        }
    }
}
