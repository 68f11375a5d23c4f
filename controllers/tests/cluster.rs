//! In-process cluster tests: a real API server on 127.0.0.1:0, the scheduler and every
//! controller running against it, and hollow nodes (fake agents) that heartbeat and mark bound
//! pods Ready. Each test waits on conditions with deadlines.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use berth_apiserver::testing::{wait_until, TestCluster};
use berth_client::{Client, ClientConfig};
use berth_controllers::deployment::{template_hash, PROMOTE_ANNOTATION, TEMPLATE_HASH_LABEL};
use berth_controllers::run::NodeLifecycleConfig;
use berth_proto::types::*;
use berth_testkit::{DeploymentBuilder, HollowConfig, HollowNode, ServiceBuilder};
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(40);

struct Env {
    cluster: Option<TestCluster>,
    client: Client,
    nodes: Vec<HollowNode>,
    shutdown: CancellationToken,
    loops: tokio::task::JoinSet<()>,
}

impl Env {
    async fn start(nodes: usize, lifecycle: NodeLifecycleConfig) -> Result<Env> {
        Env::start_with(nodes, lifecycle, Vec::new()).await
    }

    /// Like [`Env::start`], with hollow nodes on which pods of `crash_images` crash-loop.
    async fn start_with(
        nodes: usize,
        lifecycle: NodeLifecycleConfig,
        crash_images: Vec<String>,
    ) -> Result<Env> {
        let cluster = TestCluster::start(1)
            .await
            .context("starting the API server")?;
        let client = Client::new(
            &[cluster.addr(0).to_string()],
            ClientConfig::with_tls(cluster.admin_tls()),
        )?;
        let shutdown = CancellationToken::new();
        let mut loops = tokio::task::JoinSet::new();
        let config = berth_controllers::Config {
            node_lifecycle: lifecycle,
            gc_delay: Duration::from_millis(50),
            ..Default::default()
        };
        loops.spawn(berth_controllers::run_controllers(
            client.clone(),
            config,
            shutdown.clone(),
        ));
        loops.spawn(berth_scheduler::run(
            client.clone(),
            berth_scheduler::Config::default(),
            shutdown.clone(),
        ));
        let mut hollow = Vec::new();
        for i in 0..nodes {
            let cfg = HollowConfig {
                cpu: "4".into(),
                address: format!("127.0.0.{}", i + 1),
                heartbeat: Duration::from_millis(300),
                crash_images: crash_images.clone(),
                ..Default::default()
            };
            hollow.push(HollowNode::start(client.clone(), &format!("node-{i}"), cfg).await?);
        }
        Ok(Env {
            cluster: Some(cluster),
            client,
            nodes: hollow,
            shutdown,
            loops,
        })
    }

    async fn stop(mut self) -> Result<()> {
        for n in &mut self.nodes {
            n.stop().await;
        }
        self.shutdown.cancel();
        while self.loops.join_next().await.is_some() {}
        if let Some(c) = self.cluster.take() {
            c.shutdown().await?;
        }
        Ok(())
    }

    /// The pods not being deleted (terminating ones count toward no replica count; the hollow
    /// nodes finish their deletion a poll later).
    async fn pods(&self) -> Result<Vec<Pod>> {
        let mut pods = self.client.list::<Pod>(Some("default"), "").await?.0;
        pods.retain(|p| p.metadata.deletion_timestamp.is_none());
        Ok(pods)
    }

    async fn deployment(&self, name: &str) -> Result<Deployment> {
        Ok(self.client.get("default", name).await?)
    }

    /// Read-modify-write a Deployment, retrying when a controller's status write wins the CAS
    /// (as `kubectl edit` would ask the user to).
    async fn edit_deployment(&self, name: &str, f: impl Fn(&mut Deployment)) -> Result<Deployment> {
        for _ in 0..50 {
            let mut d = self.deployment(name).await?;
            f(&mut d);
            match self.client.update(&d).await {
                Ok(d) => return Ok(d),
                Err(berth_client::ClientError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(anyhow!("deployment {name} kept changing under the edit"))
    }

    /// Wait until `name` has `replicas` updated, ready, available pods and no others.
    async fn wait_rolled_out(&self, name: &str, replicas: i32) -> Result<()> {
        wait_until(
            DEADLINE,
            &format!("deployment {name} rolled out"),
            || async {
                let d = self.deployment(name).await.ok()?;
                let st = d.status?;
                (st.observed_generation == d.metadata.generation
                    && st.replicas == replicas
                    && st.updated_replicas == replicas
                    && st.available_replicas == replicas)
                    .then_some(())
            },
        )
        .await
        .map_err(|e| anyhow!(e))
    }
}

fn ready_pods_per_node(pods: &[Pod]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for p in pods.iter().filter(|p| p.is_ready()) {
        *m.entry(p.spec.node_name.clone()).or_insert(0) += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applied_deployment_is_scheduled_ready_and_spread_with_endpoints() -> Result<()> {
    let env = Env::start(3, NodeLifecycleConfig::default()).await?;
    let svc = ServiceBuilder::new("web").port("http", 80, 8080).build();
    env.client.create(&svc).await?;
    let d = DeploymentBuilder::new("web")
        .replicas(6)
        .port("http", 8080)
        .cpu("100m")
        .build();
    env.client.create(&d).await?;
    env.wait_rolled_out("web", 6).await?;

    let pods = env.pods().await?;
    assert_eq!(pods.len(), 6);
    let per_node = ready_pods_per_node(&pods);
    assert_eq!(per_node.len(), 3, "spread over every node: {per_node:?}");
    for p in &pods {
        let st = p.status.as_ref().expect("status");
        assert!(
            condition(&st.conditions, "PodScheduled").is_some_and(|c| c.is_true()),
            "{} bound",
            p.metadata.name
        );
        assert!(p
            .metadata
            .name
            .starts_with(&format!("web-{}-", template_hash(&d.spec.template))));
    }
    // Endpoints: one ready address per pod at node address : host port.
    wait_until(DEADLINE, "endpoints for web", || async {
        let ep: Endpoints = env.client.get("default", "web").await.ok()?;
        let n: usize = ep.subsets.iter().map(|s| s.addresses.len()).sum();
        (n == 6).then_some(())
    })
    .await
    .map_err(|e| anyhow!(e))?;
    let d = env.deployment("web").await?;
    let st = d.status.clone().expect("status");
    assert!(condition(&st.conditions, "Available")
        .expect("Available")
        .is_true());
    // Settled means quiet: no controller keeps rewriting the Deployment or its ReplicaSet.
    let rs_rv = |rs: &[ReplicaSet]| rs.iter().map(|r| r.metadata.resource_version).sum::<u64>();
    let before = rs_rv(&env.client.list::<ReplicaSet>(Some("default"), "").await?.0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        env.deployment("web").await?.metadata.resource_version,
        d.metadata.resource_version
    );
    assert_eq!(
        rs_rv(&env.client.list::<ReplicaSet>(Some("default"), "").await?.0),
        before
    );

    // Deleting the Deployment garbage-collects its ReplicaSets and Pods; the Service's
    // Endpoints go with the Service.
    env.client
        .delete(berth_proto::Kind::Deployment, "default", "web", None)
        .await?;
    env.client
        .delete(berth_proto::Kind::Service, "default", "web", None)
        .await?;
    wait_until(DEADLINE, "garbage collection", || async {
        let pods = env.pods().await.ok()?;
        let rs = env
            .client
            .list::<ReplicaSet>(Some("default"), "")
            .await
            .ok()?
            .0;
        let eps = env
            .client
            .list::<Endpoints>(Some("default"), "")
            .await
            .ok()?
            .0;
        (pods.is_empty() && rs.is_empty() && eps.is_empty()).then_some(())
    })
    .await
    .map_err(|e| anyhow!(e))?;
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unschedulable_pod_reports_reason_and_schedules_when_capacity_appears() -> Result<()> {
    let mut env = Env::start(1, NodeLifecycleConfig::default()).await?;
    let d = DeploymentBuilder::new("big").replicas(1).cpu("6").build();
    env.client.create(&d).await?;
    let msg = wait_until(DEADLINE, "PodScheduled=False", || async {
        let pods = env.pods().await.ok()?;
        let p = pods.first()?;
        let c = condition(&p.status.as_ref()?.conditions, "PodScheduled")?;
        (!c.is_true()).then(|| c.message.clone())
    })
    .await
    .map_err(|e| anyhow!(e))?;
    assert_eq!(msg, "0/1 nodes are available: 1 Insufficient cpu.");
    let events = env.client.list::<Event>(Some("default"), "").await?.0;
    assert!(events
        .iter()
        .any(|e| e.reason == "FailedScheduling" && e.message == msg));
    let big = HollowConfig {
        cpu: "8".into(),
        address: "127.0.0.9".into(),
        heartbeat: Duration::from_millis(300),
        ..Default::default()
    };
    env.nodes
        .push(HollowNode::start(env.client.clone(), "big-node", big).await?);
    env.wait_rolled_out("big", 1).await?;
    assert_eq!(env.pods().await?[0].spec.node_name, "big-node");
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_stays_within_max_surge_and_max_unavailable() -> Result<()> {
    let env = Env::start(3, NodeLifecycleConfig::default()).await?;
    let d = DeploymentBuilder::new("api")
        .replicas(4)
        .rolling("1", "1")
        .build();
    env.client.create(&d).await?;
    env.wait_rolled_out("api", 4).await?;

    let d = env
        .edit_deployment("api", |d| {
            d.spec.template.spec.containers[0].image = "app:2".into()
        })
        .await?;
    let new_hash = template_hash(&d.spec.template);
    // Sample the pods until the rollout completes: never more than replicas + maxSurge pods,
    // never fewer than replicas - maxUnavailable ready ones.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut samples = 0;
    loop {
        let pods = env.pods().await?;
        let ready = pods.iter().filter(|p| p.is_ready()).count();
        assert!(
            pods.len() <= 5,
            "{} pods exceed replicas + maxSurge",
            pods.len()
        );
        assert!(
            ready >= 3,
            "{ready} ready pods below replicas - maxUnavailable"
        );
        samples += 1;
        let done = pods.len() == 4
            && pods.iter().all(|p| {
                p.is_ready() && p.metadata.labels.get(TEMPLATE_HASH_LABEL) == Some(&new_hash)
            });
        if done {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "rollout did not finish"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(samples > 1);
    env.wait_rolled_out("api", 4).await?;
    let events = env.client.list::<Event>(Some("default"), "").await?.0;
    let new_rs = format!("api-{new_hash}");
    assert!(
        events.iter().any(|e| e.reason == "ScalingReplicaSet"
            && e.message
                .starts_with(&format!("Scaled up replica set {new_rs} to "))),
        "{:?}",
        events.iter().map(|e| &e.message).collect::<Vec<_>>()
    );
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_rollout_reverts_by_itself_and_the_service_keeps_its_endpoints(
) -> Result<()> {
    let env = Env::start_with(2, NodeLifecycleConfig::default(), vec!["web:bad".into()]).await?;
    let svc = ServiceBuilder::new("web").port("http", 80, 8080).build();
    env.client.create(&svc).await?;
    let mut d = DeploymentBuilder::new("web")
        .replicas(3)
        .image("web:1")
        .port("http", 8080)
        .rolling("1", "0")
        .build();
    let ru = d
        .spec
        .strategy
        .as_mut()
        .and_then(|s| s.rolling_update.as_mut())
        .expect("rolling update");
    ru.auto_revert = true;
    ru.auto_revert_failed_pods = Some(1);
    ru.auto_revert_failed_seconds = Some(1);
    env.client.create(&d).await?;
    env.wait_rolled_out("web", 3).await?;
    let ready_endpoints = || async {
        let ep: Endpoints = env.client.get("default", "web").await?;
        Ok::<usize, anyhow::Error>(ep.subsets.iter().map(|s| s.addresses.len()).sum())
    };
    wait_until(DEADLINE, "3 endpoints", || async {
        (ready_endpoints().await.ok()? == 3).then_some(())
    })
    .await
    .map_err(|e| anyhow!(e))?;

    let bad = env
        .edit_deployment("web", |d| {
            d.spec.template.spec.containers[0].image = "web:bad".into()
        })
        .await?;
    let bad_rs = format!("web-{}", template_hash(&bad.spec.template));
    // Sample until reverted: the Service never has fewer ready endpoints than
    // replicas - maxUnavailable (3), while the bad revision comes up and is taken back.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut min_seen = usize::MAX;
    loop {
        let n = ready_endpoints().await?;
        min_seen = min_seen.min(n);
        assert!(n >= 3, "the Service dropped to {n} ready endpoints");
        let d = env.deployment("web").await?;
        let st = d.status.clone().unwrap_or_default();
        let reverted = condition(&st.conditions, "Reverted").is_some_and(|c| c.is_true());
        // The bad revision's ReplicaSet appears once the controller has seen the edit.
        let rs: Option<ReplicaSet> = match env.client.get("default", &bad_rs).await {
            Ok(rs) => Some(rs),
            Err(berth_client::ClientError::NotFound(_)) => None,
            Err(e) => return Err(e.into()),
        };
        if reverted
            && rs.is_some_and(|rs| rs.spec.replicas == 0)
            && st.updated_replicas == 0
            && st.available_replicas == 3
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not reverted in time: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(min_seen >= 3);
    let d = env.deployment("web").await?;
    let st = d.status.expect("status");
    let c = condition(&st.conditions, "Reverted").expect("Reverted");
    assert_eq!(c.reason, "CrashLoopBackOff");
    assert!(c.message.contains(&bad_rs), "{}", c.message);
    assert!(
        c.message.contains("reverted to revision 1"),
        "{}",
        c.message
    );
    // The failed revision is marked for `rollout history`, and one Event says it.
    let rs: ReplicaSet = env.client.get("default", &bad_rs).await?;
    assert!(rs
        .metadata
        .annotations
        .get(berth_proto::enums::ROLLOUT_FAILED_ANNOTATION)
        .is_some_and(|r| r.starts_with("CrashLoopBackOff: pods web-")));
    let events = env.client.list::<Event>(Some("default"), "").await?.0;
    let reverts: Vec<&Event> = events
        .iter()
        .filter(|e| e.reason == "RolloutReverted")
        .collect();
    assert_eq!(reverts.len(), 1, "{reverts:?}");
    assert_eq!(reverts[0].count.max(1), 1, "{reverts:?}");
    // Every pod left runs the previous revision.
    let pods = env.pods().await?;
    assert!(pods
        .iter()
        .all(|p| p.spec.containers[0].image == "web:1" || p.metadata.deletion_timestamp.is_some()));
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_node_pods_are_replaced_on_healthy_nodes() -> Result<()> {
    let lifecycle = NodeLifecycleConfig {
        grace_period: Duration::from_secs(2),
        eviction_timeout: Duration::from_secs(1),
    };
    let mut env = Env::start(3, lifecycle).await?;
    let d = DeploymentBuilder::new("web").replicas(3).build();
    env.client.create(&d).await?;
    env.wait_rolled_out("web", 3).await?;
    let pods = env.pods().await?;
    let victim = pods[0].spec.node_name.clone();
    let idx = env
        .nodes
        .iter()
        .position(|n| n.name == victim)
        .expect("victim node");
    let started = tokio::time::Instant::now();
    env.nodes[idx].stop().await;

    wait_until(DEADLINE, "replacement pods ready elsewhere", || async {
        let pods = env.pods().await.ok()?;
        let ready: Vec<&Pod> = pods.iter().filter(|p| p.is_ready()).collect();
        (ready.len() == 3 && ready.iter().all(|p| p.spec.node_name != victim)).then_some(())
    })
    .await
    .map_err(|e| anyhow!(e))?;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(15), "replacement took {took:?}");
    let node: Node = env.client.get("", &victim).await?;
    assert!(node
        .spec
        .taints
        .iter()
        .any(|t| t.key == "node.kubernetes.io/unreachable" && t.effect == "NoExecute"));
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_of_a_deleted_node_are_replaced_at_once() -> Result<()> {
    let mut env = Env::start(2, NodeLifecycleConfig::default()).await?;
    let d = DeploymentBuilder::new("web").replicas(4).build();
    env.client.create(&d).await?;
    env.wait_rolled_out("web", 4).await?;
    env.nodes[0].stop().await;
    env.client
        .delete(berth_proto::Kind::Node, "", "node-0", None)
        .await?;
    let t = tokio::time::Instant::now();
    wait_until(DEADLINE, "pods all on node-1", || async {
        let pods = env.pods().await.ok()?;
        (pods.len() == 4
            && pods
                .iter()
                .all(|p| p.spec.node_name == "node-1" && p.is_ready()))
        .then_some(())
    })
    .await
    .map_err(|e| anyhow!(e))?;
    // Well before the heartbeat grace period plus eviction timeout (10 s) could act.
    assert!(
        t.elapsed() < Duration::from_secs(6),
        "took {:?}",
        t.elapsed()
    );
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_promote_then_undo_repoints_the_active_service() -> Result<()> {
    let env = Env::start(2, NodeLifecycleConfig::default()).await?;
    let active = ServiceBuilder::new("shop-active")
        .selector(&[("app", "shop")])
        .port("http", 80, 8080)
        .build();
    let preview = ServiceBuilder::new("shop-preview")
        .selector(&[("app", "shop")])
        .port("http", 80, 8080)
        .build();
    env.client.create(&active).await?;
    let d = DeploymentBuilder::new("shop")
        .replicas(2)
        .port("http", 8080)
        .blue_green("shop-active", Some("shop-preview"))
        .blue_green_with(|bg| {
            bg.auto_promotion_enabled = Some(false);
            bg.scale_down_delay_seconds = Some(30);
        })
        .build();
    let blue = template_hash(&d.spec.template);
    env.client.create(&d).await?;

    let selector_of = |name: &'static str| {
        let client = env.client.clone();
        async move {
            let s: Service = client.get("default", name).await.ok()?;
            s.spec.selector.get(TEMPLATE_HASH_LABEL).cloned()
        }
    };
    let phase = |d: &Deployment| {
        d.status
            .as_ref()
            .and_then(|s| s.blue_green.as_ref())
            .map(|b| b.phase.clone())
            .unwrap_or_default()
    };
    wait_until(DEADLINE, "blue healthy", || async {
        let d = env.deployment("shop").await.ok()?;
        (phase(&d) == "Healthy" && selector_of("shop-active").await? == blue).then_some(())
    })
    .await
    .map_err(|e| anyhow!(e))?;
    // A Service created after the rollout settled is still pinned to the right revision.
    env.client.create(&preview).await?;
    wait_until(DEADLINE, "late preview service pinned to blue", || async {
        (selector_of("shop-preview").await? == blue).then_some(())
    })
    .await
    .map_err(|e| anyhow!(e))?;

    let d = env
        .edit_deployment("shop", |d| {
            d.spec.template.spec.containers[0].image = "app:2".into()
        })
        .await?;
    let green = template_hash(&d.spec.template);
    wait_until(DEADLINE, "green paused awaiting promotion", || async {
        let d = env.deployment("shop").await.ok()?;
        (phase(&d) == "Paused" && selector_of("shop-preview").await? == green).then_some(())
    })
    .await
    .map_err(|e| anyhow!(e))?;
    assert_eq!(selector_of("shop-active").await, Some(blue.clone()));
    // Green's endpoints are up beside blue's.
    let eps: Endpoints = env.client.get("default", "shop-preview").await?;
    assert_eq!(
        eps.subsets.iter().map(|s| s.addresses.len()).sum::<usize>(),
        2
    );

    // `berth rollout promote`: the annotation.
    env.edit_deployment("shop", |d| {
        d.metadata
            .annotations
            .insert(PROMOTE_ANNOTATION.into(), "true".into());
    })
    .await?;
    wait_until(DEADLINE, "active service on green", || async {
        (selector_of("shop-active").await? == green).then_some(())
    })
    .await
    .map_err(|e| anyhow!(e))?;
    wait_until(DEADLINE, "promote annotation cleared", || async {
        let d = env.deployment("shop").await.ok()?;
        (!d.metadata.annotations.contains_key(PROMOTE_ANNOTATION)).then_some(())
    })
    .await
    .map_err(|e| anyhow!(e))?;

    // `berth rollout undo` within the scale-down delay: the template goes back to blue's and
    // the active Service switches back at once (blue is still running).
    env.edit_deployment("shop", |d| {
        d.spec.template.spec.containers[0].image = "app:1".into()
    })
    .await?;
    let t = tokio::time::Instant::now();
    wait_until(DEADLINE, "active service back on blue", || async {
        (selector_of("shop-active").await? == blue).then_some(())
    })
    .await
    .map_err(|e| anyhow!(e))?;
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "undo took {:?}",
        t.elapsed()
    );
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_failover_mid_rollout_finishes_without_duplicate_pods() -> Result<()> {
    let mut cluster = TestCluster::start(3).await.context("starting 3 servers")?;
    let addrs: Vec<String> = (0..3).map(|i| cluster.addr(i).to_string()).collect();
    let client = Client::new(&addrs, ClientConfig::with_tls(cluster.admin_tls()))?;
    // Every member runs the loops only while it leads, as `berth server` does.
    let mut member_tokens = Vec::new();
    let mut loops = tokio::task::JoinSet::new();
    for i in 0..3 {
        let server = cluster.server(i).expect("running");
        let token = CancellationToken::new();
        let c = client.clone();
        loops.spawn(berth_controllers::run_while_leader(
            server.leader_watch(),
            server.id(),
            token.clone(),
            move |tok| {
                let c = c.clone();
                async move {
                    tokio::join!(
                        berth_controllers::run_controllers(
                            c.clone(),
                            berth_controllers::Config::default(),
                            tok.clone()
                        ),
                        berth_scheduler::run(c, berth_scheduler::Config::default(), tok),
                    );
                }
            },
        ));
        member_tokens.push(token);
    }
    let mut nodes = Vec::new();
    for i in 0..2 {
        let cfg = HollowConfig {
            address: format!("127.0.0.{}", i + 1),
            heartbeat: Duration::from_millis(300),
            ..Default::default()
        };
        nodes.push(HollowNode::start(client.clone(), &format!("node-{i}"), cfg).await?);
    }
    let env = Env {
        cluster: None,
        client: client.clone(),
        nodes,
        shutdown: CancellationToken::new(),
        loops: tokio::task::JoinSet::new(),
    };
    let d = DeploymentBuilder::new("web")
        .replicas(4)
        .rolling("1", "0")
        .build();
    client.create(&d).await?;
    env.wait_rolled_out("web", 4).await?;

    let d = env
        .edit_deployment("web", |d| {
            d.spec.template.spec.containers[0].image = "app:2".into()
        })
        .await?;
    let new_hash = template_hash(&d.spec.template);
    wait_until(DEADLINE, "the rollout to start", || async {
        let pods = env.pods().await.ok()?;
        pods.iter()
            .any(|p| p.metadata.labels.get(TEMPLATE_HASH_LABEL) == Some(&new_hash))
            .then_some(())
    })
    .await
    .map_err(|e| anyhow!(e))?;
    let leader = cluster.leader().context("a leader")?;
    member_tokens[leader].cancel();
    cluster.stop(leader).await?;

    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Ok(pods) = env.pods().await {
            assert!(
                pods.len() <= 5,
                "{} pods exceed replicas + maxSurge",
                pods.len()
            );
            let done = pods.len() == 4
                && pods.iter().all(|p| {
                    p.is_ready() && p.metadata.labels.get(TEMPLATE_HASH_LABEL) == Some(&new_hash)
                });
            if done {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "rollout did not finish after failover"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    env.wait_rolled_out("web", 4).await?;
    let rs = client.list::<ReplicaSet>(Some("default"), "").await?.0;
    assert_eq!(rs.len(), 2, "one ReplicaSet per revision");

    let Env { mut nodes, .. } = env;
    for n in &mut nodes {
        n.stop().await;
    }
    for t in &member_tokens {
        t.cancel();
    }
    while loops.join_next().await.is_some() {}
    cluster.shutdown().await?;
    Ok(())
}

/// Point the cluster registry's `repository:tag` at `digest`, as a push does.
async fn set_tag(client: &Client, repository: &str, tag: &str, digest: &str) -> Result<()> {
    let name = berth_proto::image::tag_object_name(repository, tag);
    let spec = ImageTagSpec {
        repository: repository.into(),
        tag: tag.into(),
        digest: digest.into(),
    };
    match client.get::<ImageTag>("", &name).await {
        Ok(mut t) => {
            t.spec = spec;
            client.update(&t).await?;
        }
        Err(berth_client::ClientError::NotFound(_)) => {
            client
                .create(&ImageTag {
                    metadata: ObjectMeta {
                        name,
                        ..Default::default()
                    },
                    spec,
                    ..Default::default()
                })
                .await?;
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_pods_run_the_tags_digest_at_rollout_until_a_restart_resolves_it_again(
) -> Result<()> {
    let env = Env::start(2, NodeLifecycleConfig::default()).await?;
    let (d1, d2) = (
        berth_proto::image::sha256_digest(b"one"),
        berth_proto::image::sha256_digest(b"two"),
    );
    set_tag(&env.client, "nginx", "1.14.2", &d1).await?;
    let d = DeploymentBuilder::new("web")
        .replicas(1)
        .image("nginx:1.14.2")
        .build();
    env.client.create(&d).await?;
    env.wait_rolled_out("web", 1).await?;
    let images = |pods: &[Pod], hash: &str| -> Vec<String> {
        pods.iter()
            .filter(|p| {
                p.metadata
                    .labels
                    .get(TEMPLATE_HASH_LABEL)
                    .map(String::as_str)
                    == Some(hash)
            })
            .map(|p| p.spec.containers[0].image.clone())
            .collect()
    };
    let first = template_hash(&d.spec.template);
    assert_eq!(
        images(&env.pods().await?, &first),
        vec![format!("nginx:1.14.2@{d1}")]
    );

    // The tag moves; scaling up keeps the revision's digest on every new pod.
    set_tag(&env.client, "nginx", "1.14.2", &d2).await?;
    env.edit_deployment("web", |d| d.spec.replicas = Some(3))
        .await?;
    env.wait_rolled_out("web", 3).await?;
    assert_eq!(
        images(&env.pods().await?, &first),
        vec![format!("nginx:1.14.2@{d1}"); 3]
    );

    // `berth rollout restart` changes the template: the new revision resolves the tag again.
    let d = env
        .edit_deployment("web", |d| {
            d.spec.template.metadata.annotations.insert(
                "kubectl.kubernetes.io/restartedAt".into(),
                "2026-01-01T00:00:00Z".into(),
            );
        })
        .await?;
    let second = template_hash(&d.spec.template);
    wait_until(
        DEADLINE,
        "the restarted revision on the new digest",
        || async {
            let pods = env.pods().await.ok()?;
            (images(&pods, &second) == vec![format!("nginx:1.14.2@{d2}"); 3]).then_some(())
        },
    )
    .await
    .map_err(|e| anyhow!(e))?;
    let rs: ReplicaSet = env.client.get("default", &format!("web-{second}")).await?;
    assert_eq!(
        rs.spec.template.spec.containers[0].image, "nginx:1.14.2",
        "the template keeps the user's image"
    );
    env.stop().await
}

/// Image trust: a Deployment admitted with a signed image whose key is then removed cannot
/// get new pods or a new ReplicaSet; the ReplicaSet and the Deployment say why in FailedCreate
/// events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_and_replicasets_refused_by_image_trust_are_reported_as_failed_create_events(
) -> Result<()> {
    use berth_proto::trust::{sign_image, PrivateKey};
    let env = Env::start(1, NodeLifecycleConfig::default()).await?;
    let key = PrivateKey::generate()?;
    let digest = berth_proto::image::sha256_digest(b"shop v1");
    let mut tag = ImageTag::default();
    tag.metadata.name = berth_proto::image::tag_object_name("shop", "v1");
    tag.spec = ImageTagSpec {
        repository: "shop".into(),
        tag: "v1".into(),
        digest: digest.clone(),
    };
    env.client.create(&tag).await?;
    let mut tk = TrustKey::default();
    tk.metadata.name = "ci-2026".into();
    tk.spec.public_key = key.public_key().to_pem();
    tk.spec.fingerprint = key.public_key().fingerprint();
    env.client.create(&tk).await?;
    env.client
        .create(&sign_image(&key, "ci-2026", "shop", &digest)?)
        .await?;
    let mut policy = ClusterImagePolicy::default();
    policy.metadata.name = "cluster".into();
    policy.spec.require_signed_images = true;
    env.client.create(&policy).await?;

    let d = DeploymentBuilder::new("web")
        .replicas(1)
        .image("shop:v1")
        .build();
    env.client.create(&d).await?;
    env.wait_rolled_out("web", 1).await?;

    env.client
        .delete(berth_client::Kind::TrustKey, "", "ci-2026", None)
        .await?;
    env.edit_deployment("web", |d| d.spec.replicas = Some(2))
        .await?;
    let want = format!("image shop@{digest} is not signed by a trusted key (trusted: none)");
    wait_until(
        DEADLINE,
        "a FailedCreate event naming the image",
        || async {
            let events = env.client.list::<Event>(Some("default"), "").await.ok()?.0;
            events
                .iter()
                .any(|e| {
                    e.reason == "FailedCreate"
                        && e.involved_object.kind == "ReplicaSet"
                        && e.message.contains(&want)
                })
                .then_some(())
        },
    )
    .await
    .map_err(|e| anyhow!(e))?;
    assert_eq!(env.pods().await?.len(), 1);

    // A template change that keeps the images (admitted) needs a new ReplicaSet, whose
    // creation is refused: the Deployment says why.
    env.edit_deployment("web", |d| {
        d.spec
            .template
            .metadata
            .annotations
            .insert("restartedAt".into(), "now".into());
    })
    .await?;
    wait_until(
        DEADLINE,
        "a FailedCreate event on the Deployment",
        || async {
            let events = env.client.list::<Event>(Some("default"), "").await.ok()?.0;
            events
                .iter()
                .any(|e| {
                    e.reason == "FailedCreate"
                        && e.involved_object.kind == "Deployment"
                        && e.message.contains(&want)
                })
                .then_some(())
        },
    )
    .await
    .map_err(|e| anyhow!(e))?;
    env.stop().await
}
