//! Scenarios with agents (process runtime), controllers, the scheduler and the per-node proxy:
//! (1) apply hello, (3) lose a node, (5) blue-green under load, (6) kill -9 an agent; plus the
//! multi-tier example (web, then api, then store, through Service environment variables).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use berth_proto::types::{Node, Pod};

use crate::harness::load::Load;
use crate::harness::net::sh;
use crate::harness::{repo_manifest, wait_until, Cluster, Opts};

pub(super) const HELLO_PORT: u16 = 30080;
const SHOP_PORT: u16 = 30090;
const SHOP_PREVIEW_PORT: u16 = 30091;

/// Pods labelled `app=APP` that are not being deleted.
fn app_pods(c: &Cluster, app: &str) -> Result<Vec<Pod>, String> {
    let pods: Vec<Pod> = c.get_list("pods")?;
    Ok(pods
        .into_iter()
        .filter(|p| p.metadata.labels.get("app").map(String::as_str) == Some(app))
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect())
}

/// Exactly `n` live pods of `app`, all Ready.
pub(super) fn ready_pods(c: &Cluster, app: &str, n: usize) -> Result<Vec<Pod>, String> {
    let pods = app_pods(c, app)?;
    let ready = pods.iter().filter(|p| p.is_ready()).count();
    if pods.len() == n && ready == n {
        Ok(pods)
    } else {
        Err(format!(
            "{ready} of {} {app} pods Ready (want {n}): {:?}",
            pods.len(),
            pods.iter()
                .map(|p| (
                    &p.metadata.name,
                    &p.spec.node_name,
                    p.status.as_ref().map(|s| &s.phase)
                ))
                .collect::<Vec<_>>()
        ))
    }
}

/// Host index of node `nodeN`.
pub(super) fn host_of_node(name: &str) -> Option<usize> {
    name.strip_prefix("node")?
        .parse::<usize>()
        .ok()?
        .checked_sub(1)
}

/// `(pod name, version)` from a demo server's answer `hello from POD version V`.
fn who_answered(body: &str) -> Option<(String, String)> {
    let rest = body.trim().strip_prefix("hello from ")?;
    let (pod, version) = rest.split_once(" version ")?;
    Some((
        pod.to_string(),
        version.split_whitespace().next()?.to_string(),
    ))
}

/// Wait until node `i`'s proxy on `port` answers 200 with `version`; returns the answer.
pub(super) fn wait_answer(
    c: &Cluster,
    i: usize,
    port: u16,
    version: &str,
    limit: Duration,
) -> ((String, String), Duration) {
    wait_until(
        &format!("node{}:{port} to answer with version {version}", i + 1),
        limit,
        || {
            let (status, body) = c.http_get(c.ip(i), port, "/")?;
            match who_answered(&body) {
                Some((pod, v)) if status == 200 && v == version => Ok((pod, v)),
                _ => Err(format!("HTTP {status}: {body:?}")),
            }
        },
    )
}

pub(super) fn apply(c: &Cluster, manifest: &str) {
    c.cli_ok(&["apply", "-f", &repo_manifest(manifest)]);
}

#[test]
fn hello_runs_every_replica_ready_and_answers_through_every_nodes_proxy() {
    let Some(c) = Cluster::start(
        "hello",
        1,
        Opts {
            agents: true,
            ..Opts::default()
        },
    ) else {
        return;
    };
    let t = Instant::now();
    apply(&c, "hello.yaml");
    let (pods, took) = wait_until("3 hello pods Ready", Duration::from_secs(45), || {
        ready_pods(&c, "hello", 3)
    });
    eprintln!("hello: 3 replicas Ready {took:?} after apply");
    let names: BTreeSet<String> = pods.iter().map(|p| p.metadata.name.clone()).collect();

    let mut answered_by = BTreeSet::new();
    for i in 0..3 {
        wait_answer(&c, i, HELLO_PORT, "v1", Duration::from_secs(20));
        for _ in 0..10 {
            let (status, body) = c
                .http_get(c.ip(i), HELLO_PORT, "/")
                .unwrap_or_else(|e| panic!("node{} proxy: {e}", i + 1));
            assert_eq!(status, 200, "node{}: {body}", i + 1);
            let (pod, version) =
                who_answered(&body).unwrap_or_else(|| panic!("unexpected answer {body:?}"));
            assert_eq!(version, "v1");
            assert!(
                names.contains(&pod),
                "answer from {pod}, which is not one of the Ready pods {names:?}"
            );
            answered_by.insert(pod);
        }
    }
    eprintln!(
        "hello: every node's proxy answers ({:?} after apply); pods that answered: {answered_by:?}",
        t.elapsed()
    );
    wait_until(
        "Deployment hello to report 3 ready replicas",
        Duration::from_secs(10),
        || {
            let out = c.cli(&["get", "deployment", "hello", "-o", "json"]);
            if !out.ok() {
                return Err(out.to_string());
            }
            let d: serde_json::Value =
                serde_json::from_str(&out.stdout).map_err(|e| format!("{e}: {}", out.stdout))?;
            if d["status"]["readyReplicas"] == 3 {
                Ok(())
            } else {
                Err(format!("status: {}", d["status"]))
            }
        },
    );
}

#[test]
fn losing_a_node_reschedules_its_pods_within_15s_and_the_service_keeps_answering() {
    let Some(mut c) = Cluster::start(
        "node-loss",
        3,
        Opts {
            agents: true,
            ..Opts::default()
        },
    ) else {
        return;
    };
    apply(&c, "hello.yaml");
    let (pods, _) = wait_until("3 hello pods Ready", Duration::from_secs(45), || {
        ready_pods(&c, "hello", 3)
    });
    let leader = c.leader();
    let mut per_host: BTreeMap<usize, usize> = BTreeMap::new();
    for p in &pods {
        if let Some(h) = host_of_node(&p.spec.node_name) {
            *per_host.entry(h).or_default() += 1;
        }
    }
    // The victim: a node running hello pods, preferably not the Raft leader's host (losing the
    // leader too is scenario 2's business).
    let victim = per_host
        .iter()
        .filter(|(h, _)| **h != leader)
        .max_by_key(|(_, n)| **n)
        .or_else(|| per_host.iter().max_by_key(|(_, n)| **n))
        .map(|(h, _)| *h)
        .expect("a node running hello pods");
    let survivors: Vec<usize> = (0..3).filter(|&i| i != victim).collect();
    let victim_node = format!("node{}", victim + 1);
    eprintln!(
        "hello pods per host {per_host:?}; leader on host {}; cutting {victim_node}",
        leader + 1
    );

    let targets: Vec<SocketAddr> = survivors
        .iter()
        .map(|&i| SocketAddr::from((c.ip(i), HELLO_PORT)))
        .collect();
    let load = Load::start(&c.rt, targets, 50, Duration::from_secs(60));
    let cut_at = Instant::now();
    c.cut_node(victim);
    let (_, took) = wait_until(
        "3 hello pods Ready on the surviving nodes",
        Duration::from_secs(40),
        || {
            let pods = app_pods(&c, "hello")?;
            let ok: Vec<&Pod> = pods
                .iter()
                .filter(|p| {
                    p.is_ready() && p.spec.node_name != victim_node && !p.spec.node_name.is_empty()
                })
                .collect();
            if ok.len() >= 3 {
                Ok(())
            } else {
                Err(format!(
                    "{} Ready on surviving nodes: {:?}",
                    ok.len(),
                    pods.iter()
                        .map(|p| (&p.metadata.name, &p.spec.node_name, p.is_ready()))
                        .collect::<Vec<_>>()
                ))
            }
        },
    );
    eprintln!("node loss: replacement pods Ready {took:?} after {victim_node} was cut");

    // After the replacement, every request through the surviving nodes succeeds.
    let settled = Instant::now() + Duration::from_secs(2);
    wait_until(
        "2 s of load after replacement",
        Duration::from_secs(20),
        || {
            if Instant::now() >= settled && load.completed_since(settled) >= 100 {
                Ok(())
            } else {
                Err("still loading".to_string())
            }
        },
    );
    let samples = load.finish();
    let during = samples
        .iter()
        .filter(|s| s.started < cut_at + took && !s.ok)
        .count();
    let after: Vec<_> = samples
        .iter()
        .filter(|s| s.started >= settled && !s.ok)
        .collect();
    eprintln!(
        "node loss: {} requests through the surviving nodes; {during} failed before replacement, {} after",
        samples.len(),
        after.len()
    );
    assert!(
        after.is_empty(),
        "requests through surviving nodes failed after the replacement: {:?}",
        after
            .iter()
            .take(5)
            .map(|s| s.describe())
            .collect::<Vec<_>>()
    );
    assert!(
        took <= Duration::from_secs(15),
        "replacement pods became Ready only {took:?} after the node was lost (want <= 15 s)"
    );
}

/// Processes in host `i`'s namespace other than its server and agent: the workloads.
pub(super) fn workload_pids(c: &mut Cluster, i: usize) -> BTreeSet<u32> {
    let skip: BTreeSet<u32> = [c.servers[i].pid(), c.agents[i].pid()]
        .into_iter()
        .flatten()
        .collect();
    sh(&["ip", "netns", "pids", &c.net.hosts[i].ns])
        .expect("ip netns pids")
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .filter(|p| !skip.contains(p))
        // The agent's short-lived `nft -f` runs (nftables proxy mode) are not workloads.
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .map(|c| c.trim() != "nft")
                .unwrap_or(false)
        })
        .collect()
}

pub(super) fn restart_counts(pods: &[Pod]) -> BTreeMap<String, (String, i32)> {
    pods.iter()
        .map(|p| {
            let restarts = p
                .status
                .as_ref()
                .map(|s| s.container_statuses.iter().map(|c| c.restart_count).sum())
                .unwrap_or(0);
            (p.metadata.name.clone(), (p.metadata.uid.clone(), restarts))
        })
        .collect()
}

pub(super) fn heartbeat(c: &Cluster, node: &str) -> Result<String, String> {
    let n: Node = c
        .get_one("node", node)?
        .ok_or_else(|| format!("node {node} not found"))?;
    Ok(format!(
        "{:?}",
        n.status.and_then(|s| s.last_heartbeat_time)
    ))
}

#[test]
fn an_agent_killed_with_sigkill_comes_back_without_restarting_its_workloads() {
    let Some(mut c) = Cluster::start(
        "agent-restart",
        6,
        Opts {
            agents: true,
            ..Opts::default()
        },
    ) else {
        return;
    };
    apply(&c, "hello.yaml");
    let (pods, _) = wait_until("3 hello pods Ready", Duration::from_secs(45), || {
        ready_pods(&c, "hello", 3)
    });
    let mut per_host: BTreeMap<usize, usize> = BTreeMap::new();
    for p in &pods {
        if let Some(h) = host_of_node(&p.spec.node_name) {
            *per_host.entry(h).or_default() += 1;
        }
    }
    let host = per_host
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(h, _)| *h)
        .expect("a node with pods");
    let node = format!("node{}", host + 1);
    let before = restart_counts(&pods);
    let pids_before = workload_pids(&mut c, host);
    assert!(
        !pids_before.is_empty(),
        "no workload processes found on {node}"
    );

    let hb0 = heartbeat(&c, &node).expect("heartbeat");
    c.kill9_agent(host);
    c.restart_agent(host);
    // The new agent is up and has heartbeated at least twice: it has re-derived its state.
    let mut seen = vec![hb0];
    let (_, took) = wait_until(
        "two heartbeats from the restarted agent",
        Duration::from_secs(30),
        || {
            let hb = heartbeat(&c, &node)?;
            if seen.last() != Some(&hb) {
                seen.push(hb);
            }
            if seen.len() >= 3 {
                Ok(())
            } else {
                Err(format!("heartbeats seen: {seen:?}"))
            }
        },
    );
    eprintln!("agent on {node} restarted; two heartbeats after {took:?}");
    assert!(c.agents[host].is_running(), "the restarted agent exited");

    let (after, _) = wait_until("3 hello pods Ready", Duration::from_secs(10), || {
        ready_pods(&c, "hello", 3)
    });
    assert_eq!(
        restart_counts(&after),
        before,
        "pods (uid, restartCount) changed across the agent restart"
    );
    // And they stay so while the new agent runs its sync rounds (3 s observation window).
    let window = Instant::now() + Duration::from_secs(3);
    loop {
        let pids_after = workload_pids(&mut c, host);
        assert_eq!(
            pids_after, pids_before,
            "workload processes on {node} changed across the agent restart"
        );
        if Instant::now() >= window {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let after = ready_pods(&c, "hello", 3).expect("hello pods still Ready");
    assert_eq!(
        restart_counts(&after),
        before,
        "pods (uid, restartCount) changed after the agent restart"
    );
    for i in 0..3 {
        wait_answer(&c, i, HELLO_PORT, "v1", Duration::from_secs(10));
    }
}

/// In nftables mode the kernel forwards Service traffic by itself: killing the agent with
/// SIGKILL leaves the table in place, and the restarted agent rebuilds it from the cluster
/// state in one transaction, so no request fails at any point.
#[test]
fn nftables_service_traffic_keeps_flowing_while_the_agent_is_killed_and_restarted() {
    let Some(mut c) = Cluster::start(
        "agent-kill-nft",
        173,
        Opts {
            agents: true,
            proxy_mode: Some("nftables"),
            ..Opts::default()
        },
    ) else {
        return;
    };
    apply(&c, "hello.yaml");
    wait_until("3 hello pods Ready", Duration::from_secs(45), || {
        ready_pods(&c, "hello", 3)
    });
    for i in 0..3 {
        wait_answer(&c, i, HELLO_PORT, "v1", Duration::from_secs(20));
    }
    let hello: berth_proto::types::Service = c
        .get_one("service", "hello")
        .expect("get service hello")
        .expect("service hello exists");
    let vip: std::net::Ipv4Addr = hello
        .spec
        .cluster_ip
        .as_deref()
        .and_then(|ip| ip.parse().ok())
        .expect("hello has a ClusterIP");
    let vip = SocketAddr::from((vip, 80));
    let host = 0;
    wait_until(
        &format!("{vip} on node1 to answer"),
        Duration::from_secs(20),
        || {
            let (status, body) = c.http_get_on(host, vip, "/")?;
            if status == 200 {
                Ok(())
            } else {
                Err(format!("HTTP {status}: {body:?}"))
            }
        },
    );
    let load = Load::start(
        &c.rt,
        vec![SocketAddr::from((c.ip(host), HELLO_PORT))],
        100,
        Duration::from_secs(30),
    );
    let vip_load = Load::start_in_hosts(
        vec![(c.net.hosts[host].ns.clone(), vip)],
        100,
        Duration::from_secs(30),
    );
    let enough = |since: Instant, n: usize| {
        let done = load
            .completed_since(since)
            .min(vip_load.completed_since(since));
        if done >= n {
            Ok(())
        } else {
            Err(format!("{done} requests"))
        }
    };
    let began = Instant::now();
    wait_until("1 s of load", Duration::from_secs(10), || {
        enough(began, 100)
    });

    const PROGRAMMED: &str = "Service datapath programmed from the cluster state";
    let programmed_before = c.agents[host].tail(100_000).matches(PROGRAMMED).count();
    assert!(
        programmed_before >= 1,
        "node1's agent never logged {PROGRAMMED:?}"
    );
    c.kill9_agent(host);
    let killed = Instant::now();
    wait_until(
        "3 s of load with node1's agent dead",
        Duration::from_secs(15),
        || enough(killed, 300),
    );
    assert!(!c.agents[host].is_running(), "the agent was not killed");
    c.restart_agent(host);
    let restarted = Instant::now();
    wait_until(
        "the restarted agent programs its table",
        Duration::from_secs(30),
        || {
            let n = c.agents[host].tail(100_000).matches(PROGRAMMED).count();
            if n > programmed_before {
                Ok(())
            } else {
                Err("not yet".to_string())
            }
        },
    );
    let reprogrammed = Instant::now();
    wait_until(
        "2 s of load after the restarted agent reprogrammed",
        Duration::from_secs(15),
        || enough(reprogrammed, 200),
    );
    let mut samples = load.finish();
    samples.extend(vip_load.finish());
    let down = samples
        .iter()
        .filter(|s| s.started >= killed && s.started < restarted)
        .count();
    let failed: Vec<_> = samples.iter().filter(|s| !s.ok).collect();
    eprintln!(
        "agent kill -9 (nftables): {} requests, {down} while the agent was dead, {} failed; \
         the restarted agent reprogrammed after {:?}",
        samples.len(),
        failed.len(),
        reprogrammed - restarted
    );
    assert!(down >= 300, "only {down} requests while the agent was dead");
    assert!(
        failed.is_empty(),
        "failed requests: {:?}",
        failed
            .iter()
            .take(5)
            .map(|s| s.describe())
            .collect::<Vec<_>>()
    );
}

#[test]
fn blue_green_promote_and_undo_under_load_fail_no_request_with_nftables() {
    blue_green("blue-green", 5, "nftables");
}

#[test]
fn blue_green_promote_and_undo_under_load_fail_no_request_with_the_userspace_proxy() {
    blue_green("blue-green-userspace", 171, "userspace");
}

/// Blue-green under load through every node's nodePort and ClusterIP, with the agents'
/// Service datapath in `mode`.
fn blue_green(name: &str, id: u8, mode: &'static str) {
    let Some(c) = Cluster::start(
        name,
        id,
        Opts {
            agents: true,
            proxy_mode: Some(mode),
            ..Opts::default()
        },
    ) else {
        return;
    };
    apply(&c, "blue-green.yaml");
    wait_until("2 shop pods Ready", Duration::from_secs(45), || {
        ready_pods(&c, "shop", 2)
    });
    for i in 0..3 {
        wait_answer(&c, i, SHOP_PORT, "v1", Duration::from_secs(20));
    }
    apply(&c, "blue-green-v2.yaml");
    wait_until(
        "4 shop pods Ready (blue and green)",
        Duration::from_secs(45),
        || ready_pods(&c, "shop", 4),
    );
    for i in 0..3 {
        wait_answer(&c, i, SHOP_PREVIEW_PORT, "v2", Duration::from_secs(20));
        // The active Service still points at blue.
        wait_answer(&c, i, SHOP_PORT, "v1", Duration::from_secs(5));
    }

    // The same Service through its ClusterIP, from inside every node (where a pod or the host
    // itself would call it): the VIP listener shares the nodePort's backend set, so it must
    // switch in the same instant.
    let shop: berth_proto::types::Service = c
        .get_one("service", "shop")
        .expect("get service shop")
        .expect("service shop exists");
    let vip: std::net::Ipv4Addr = shop
        .spec
        .cluster_ip
        .as_deref()
        .and_then(|ip| ip.parse().ok())
        .expect("shop has a ClusterIP");
    let vip = SocketAddr::from((vip, 80));
    for i in 0..3 {
        wait_until(
            &format!("{vip} on node{} to answer with v1", i + 1),
            Duration::from_secs(20),
            || {
                let (status, body) = c.http_get_on(i, vip, "/")?;
                match who_answered(&body) {
                    Some((_, v)) if status == 200 && v == "v1" => Ok(()),
                    _ => Err(format!("HTTP {status}: {body:?}")),
                }
            },
        );
    }

    let targets: Vec<SocketAddr> = (0..3)
        .map(|i| SocketAddr::from((c.ip(i), SHOP_PORT)))
        .collect();
    let load = Load::start(&c.rt, targets, 150, Duration::from_secs(30));
    let vip_load = Load::start_in_hosts(
        (0..3).map(|i| (c.net.hosts[i].ns.clone(), vip)).collect(),
        150,
        Duration::from_secs(30),
    );
    let began = Instant::now();
    wait_until(
        "2 s of load before promotion",
        Duration::from_secs(10),
        || {
            let n = load
                .completed_since(began)
                .min(vip_load.completed_since(began));
            if n >= 300 {
                Ok(())
            } else {
                Err(format!("{n} requests"))
            }
        },
    );

    let promote_at = Instant::now();
    c.cli_ok(&["rollout", "promote", "deploy/shop"]);
    for i in 0..3 {
        wait_answer(&c, i, SHOP_PORT, "v2", Duration::from_secs(10));
    }
    let promoted = Instant::now();
    wait_until(
        "3 s of load after promotion",
        Duration::from_secs(10),
        || {
            let n = load
                .completed_since(promoted)
                .min(vip_load.completed_since(promoted));
            if n >= 450 {
                Ok(())
            } else {
                Err(format!("{n} requests"))
            }
        },
    );

    let undo_at = Instant::now();
    c.cli_ok(&["rollout", "undo", "deploy/shop"]);
    for i in 0..3 {
        wait_answer(&c, i, SHOP_PORT, "v1", Duration::from_secs(10));
    }
    let undone = Instant::now();
    wait_until("3 s of load after undo", Duration::from_secs(10), || {
        let n = load
            .completed_since(undone)
            .min(vip_load.completed_since(undone));
        if n >= 450 {
            Ok(())
        } else {
            Err(format!("{n} requests"))
        }
    });
    let node_port_samples = load.finish();
    let vip_samples = vip_load.finish();
    let through_vip = vip_samples.len();
    let mut samples = node_port_samples;
    samples.extend(vip_samples);
    samples.sort_by_key(|s| s.started);

    let failed: Vec<_> = samples.iter().filter(|s| !s.ok).collect();
    let wrong_after_promote: Vec<_> = samples
        .iter()
        .filter(|s| s.started >= promoted && s.started < undo_at && s.version() != Some("v2"))
        .collect();
    let wrong_after_undo: Vec<_> = samples
        .iter()
        .filter(|s| s.started >= undone && s.version() != Some("v1"))
        .collect();
    let secs = samples
        .last()
        .map(|l| (l.started - samples[0].started).as_secs_f64())
        .unwrap_or(0.0);
    eprintln!(
        "blue-green ({mode}): {} requests ({through_vip} through ClusterIP {vip}) over {secs:.1}s \
         ({:.0}/s), {} failed; promote switched every node in {:?}, undo in {:?}",
        samples.len(),
        samples.len() as f64 / secs.max(0.001),
        failed.len(),
        promoted - promote_at,
        undone - undo_at
    );
    assert!(
        failed.is_empty(),
        "failed requests: {:?}",
        failed
            .iter()
            .take(5)
            .map(|s| s.describe())
            .collect::<Vec<_>>()
    );
    assert!(
        wrong_after_promote.is_empty(),
        "{} answers not from v2 after the promotion: {:?}",
        wrong_after_promote.len(),
        wrong_after_promote
            .iter()
            .take(3)
            .map(|s| s.describe())
            .collect::<Vec<_>>()
    );
    assert!(
        wrong_after_undo.is_empty(),
        "{} answers not from v1 after the undo: {:?}",
        wrong_after_undo.len(),
        wrong_after_undo
            .iter()
            .take(3)
            .map(|s| s.describe())
            .collect::<Vec<_>>()
    );
}

#[test]
fn multi_tier_web_reaches_api_and_store_through_service_environment_variables_with_nftables() {
    multi_tier("multi-tier", 10, "nftables");
}

#[test]
fn multi_tier_web_reaches_api_and_store_through_service_environment_variables_in_userspace() {
    multi_tier("multi-tier-userspace", 172, "userspace");
}

fn multi_tier(name: &str, id: u8, mode: &'static str) {
    let Some(c) = Cluster::start(
        name,
        id,
        Opts {
            agents: true,
            proxy_mode: Some(mode),
            ..Opts::default()
        },
    ) else {
        return;
    };
    apply(&c, "multi-tier.yaml");
    for (app, n) in [("store", 1), ("api", 2), ("web", 2)] {
        wait_until(
            &format!("{n} {app} pods Ready"),
            Duration::from_secs(45),
            || ready_pods(&c, app, n),
        );
    }
    // web -> api -> store, each hop through the caller's node proxy found via
    // API_SERVICE_HOST/PORT and STORE_SERVICE_HOST/PORT.
    for i in 0..3 {
        let (body, _) = wait_until(
            &format!("web on node{}:30100 to answer with api and store", i + 1),
            Duration::from_secs(20),
            || {
                let (status, body) = c.http_get(c.ip(i), 30100, "/")?;
                let chain = status == 200
                    && body.contains("version web-v1")
                    && body.contains("api -> hello from api-")
                    && body.contains("version api-v1")
                    && body.contains("store -> hello from store-")
                    && body.contains("version store-v1")
                    && !body.contains("error");
                if chain {
                    Ok(body)
                } else {
                    Err(format!("HTTP {status}: {body:?}"))
                }
            },
        );
        if i == 0 {
            eprintln!("multi-tier ({mode}) answer through node1:\n{body}");
        }
    }
}
