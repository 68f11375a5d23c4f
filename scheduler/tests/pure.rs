//! Table tests and properties of the pure scheduling core, built with testkit fixtures.

use std::sync::Arc;

use berth_proto::quantity::pod_requests;
use berth_proto::types::{Node, Pod};
use berth_scheduler::{schedule_batch, schedule_one, Outcome, Snapshot};
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
