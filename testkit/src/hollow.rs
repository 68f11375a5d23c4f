//! Hollow nodes: fake agents with no runtime, for in-process cluster tests and benchmarks.
//!
//! A [`HollowNode`] registers a Node (capacity, address, Ready), heartbeats it, and marks every
//! pod bound to it Running and Ready with a `hostIP` and one published host port per container
//! port, as a real agent would report. Stopping it (or dropping the token) ends the heartbeat,
//! which is how tests simulate losing a node.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use berth_client::{Client, ClientError};
use berth_proto::types::*;
use chrono::Utc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What a hollow node looks like.
#[derive(Debug, Clone)]
pub struct HollowConfig {
    pub cpu: String,
    pub memory: String,
    pub address: String,
    pub heartbeat: Duration,
    /// How often bound pods are looked for (a poll keeps the fake simple).
    pub poll: Duration,
    /// Pods whose first container runs one of these images crash-loop instead of becoming
    /// Ready: Running, the container waiting in CrashLoopBackOff with restarts, Ready False.
    pub crash_images: Vec<String>,
}

impl Default for HollowConfig {
    fn default() -> Self {
        HollowConfig {
            cpu: "8".into(),
            memory: "16Gi".into(),
            address: "127.0.0.1".into(),
            heartbeat: Duration::from_millis(500),
            poll: Duration::from_millis(100),
            crash_images: Vec::new(),
        }
    }
}

/// A running hollow node; [`HollowNode::stop`] ends it (its Node object stays, going stale).
pub struct HollowNode {
    pub name: String,
    token: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl HollowNode {
    /// Register node `name` and start heartbeating and readying its pods.
    pub async fn start(client: Client, name: &str, config: HollowConfig) -> anyhow::Result<Self> {
        register(&client, name, &config)
            .await
            .with_context(|| format!("registering hollow node {name}"))?;
        let token = CancellationToken::new();
        let task = tokio::spawn(run(client, name.to_string(), config, token.clone()));
        Ok(HollowNode {
            name: name.to_string(),
            token,
            task: Some(task),
        })
    }

    /// Stop heartbeating and serving pods (simulates a lost node).
    pub async fn stop(&mut self) {
        self.token.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for HollowNode {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

async fn register(client: &Client, name: &str, c: &HollowConfig) -> Result<(), ClientError> {
    let now = Utc::now();
    let res: BTreeMap<String, Quantity> = [
        ("cpu".to_string(), Quantity(c.cpu.clone())),
        ("memory".to_string(), Quantity(c.memory.clone())),
        ("pods".to_string(), Quantity("110".into())),
    ]
    .into();
    let node = Node {
        metadata: ObjectMeta {
            name: name.into(),
            labels: [("kubernetes.io/hostname".to_string(), name.to_string())].into(),
            ..Default::default()
        },
        spec: NodeSpec::default(),
        status: None,
        ..Default::default()
    };
    let created = match client.create(&node).await {
        Ok(n) => n,
        Err(ClientError::AlreadyExists(_)) => client.get::<Node>("", name).await?,
        Err(e) => return Err(e),
    };
    let mut n = created;
    let mut attempts = 0;
    loop {
        n.status = Some(node_status(c, res.clone(), now));
        match client.update_status(&n).await {
            Ok(_) => return Ok(()),
            // A controller wrote the node meanwhile: re-read and try again.
            Err(ClientError::Conflict { .. }) if attempts < 10 => {
                attempts += 1;
                n = client.get::<Node>("", name).await?;
            }
            Err(e) => return Err(e),
        }
    }
}

fn node_status(c: &HollowConfig, res: BTreeMap<String, Quantity>, now: Time) -> NodeStatus {
    NodeStatus {
        capacity: res.clone(),
        allocatable: res,
        conditions: vec![Condition::new(
            "Ready",
            true,
            "AgentReady",
            "hollow node",
            now,
        )],
        addresses: vec![NodeAddress {
            type_: "InternalIP".into(),
            address: c.address.clone(),
        }],
        last_heartbeat_time: Some(now),
        ..Default::default()
    }
}

async fn heartbeat(client: &Client, name: &str) -> Result<(), ClientError> {
    let mut n: Node = client.get("", name).await?;
    let now = Utc::now();
    let st = n.status.get_or_insert_with(Default::default);
    st.last_heartbeat_time = Some(now);
    set_condition(
        &mut st.conditions,
        Condition::new("Ready", true, "AgentReady", "hollow node", now),
    );
    client.update_status(&n).await?;
    Ok(())
}

async fn ready_pods(
    client: &Client,
    name: &str,
    c: &HollowConfig,
    next_port: &AtomicI32,
) -> Result<(), ClientError> {
    let (pods, _) = client.list::<Pod>(None, "").await?;
    for mut p in pods {
        if p.spec.node_name == name && p.metadata.deletion_timestamp.is_some() {
            // A hollow pod has nothing to stop: finish its graceful deletion at once, as an
            // agent does once the pod's containers are gone.
            match client
                .delete_with_grace(
                    berth_proto::Kind::Pod,
                    &p.metadata.namespace,
                    &p.metadata.name,
                    Some(p.metadata.resource_version),
                    Some(0),
                )
                .await
            {
                Ok(_) | Err(ClientError::Conflict { .. }) | Err(ClientError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
            continue;
        }
        if p.spec.node_name != name || p.is_ready() {
            continue;
        }
        let now = Utc::now();
        let mut host_ports = Vec::new();
        for ctr in &p.spec.containers {
            for port in &ctr.ports {
                host_ports.push(HostPortMapping {
                    container_name: ctr.name.clone(),
                    name: port.name.clone(),
                    container_port: port.container_port,
                    host_port: port
                        .host_port
                        .filter(|h| *h > 0)
                        .unwrap_or_else(|| next_port.fetch_add(1, Ordering::SeqCst)),
                    protocol: port.protocol.clone(),
                });
            }
        }
        let crashing = p
            .spec
            .containers
            .first()
            .is_some_and(|ctr| c.crash_images.contains(&ctr.image));
        if crashing {
            let st = p.status.get_or_insert_with(Default::default);
            if st.container_statuses.iter().any(|s| s.restart_count > 0) {
                continue;
            }
            st.phase = berth_proto::PodPhase::Running.into();
            st.host_ip = c.address.clone();
            st.start_time = Some(now);
            set_condition(
                &mut st.conditions,
                Condition::new("PodScheduled", true, "", "", now),
            );
            set_condition(
                &mut st.conditions,
                Condition::new("Ready", false, "ContainersNotReady", "", now),
            );
            st.container_statuses = p
                .spec
                .containers
                .iter()
                .map(|ctr| ContainerStatus {
                    name: ctr.name.clone(),
                    image: ctr.image.clone(),
                    restart_count: 1,
                    state: ContainerState {
                        waiting: Some(ContainerStateWaiting {
                            reason: "CrashLoopBackOff".into(),
                            message: "back-off 10s restarting failed container".into(),
                        }),
                        ..Default::default()
                    },
                    ..Default::default()
                })
                .collect();
            match client.update_status(&p).await {
                Ok(_) | Err(ClientError::Conflict { .. }) | Err(ClientError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
            continue;
        }
        let st = p.status.get_or_insert_with(Default::default);
        st.phase = berth_proto::PodPhase::Running.into();
        st.host_ip = c.address.clone();
        st.host_ports = host_ports;
        st.start_time = Some(now);
        // As a real agent's first status write does.
        set_condition(
            &mut st.conditions,
            Condition::new("PodScheduled", true, "", "", now),
        );
        set_condition(
            &mut st.conditions,
            Condition::new("Ready", true, "", "", now),
        );
        match client.update_status(&p).await {
            Ok(_) | Err(ClientError::Conflict { .. }) | Err(ClientError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn run(client: Client, name: String, c: HollowConfig, token: CancellationToken) {
    let next_port = Arc::new(AtomicI32::new(40000));
    let mut hb = tokio::time::interval(c.heartbeat);
    let mut poll = tokio::time::interval(c.poll);
    loop {
        tokio::select! {
            _ = token.cancelled() => break,
            _ = hb.tick() => {
                if let Err(e) = heartbeat(&client, &name).await {
                    tracing::debug!(node = %name, error = %e, "hollow heartbeat failed");
                }
            }
            _ = poll.tick() => {
                if let Err(e) = ready_pods(&client, &name, &c, &next_port).await {
                    tracing::debug!(node = %name, error = %e, "hollow pod sync failed");
                }
            }
        }
    }
}
