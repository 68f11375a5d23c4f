//! Node lifecycle shell: Nodes (re-queued when a Pod on them changes) ->
//! `nodelifecycle::plan` -> node taint/condition writes, pod status writes and evictions.
//! The shell reads the clock once per reconcile and executes the plan's actions as given.

use std::sync::Arc;

use berth_client::runtime::reflector::{self, Store};
use berth_client::runtime::watcher;
use berth_client::{Action, Client, ClientError, Controller, ObjectRef};
use berth_proto::types::*;
use berth_proto::Kind;
use chrono::Utc;
use tokio_util::sync::CancellationToken;

use berth_client::runtime::events::{self, EventType, Recorder};

use super::{error_policy, requeue, Config, Error};
use crate::nodelifecycle::{self, Action as Step};

struct Ctx {
    client: Client,
    pods: Store<Pod>,
    config: nodelifecycle::Config,
}

pub async fn run(client: Client, config: Config, shutdown: CancellationToken) {
    let (pods, writer) = reflector::store::<Pod>();
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        pods,
        config: config.node_lifecycle,
    });
    Controller::<Node>::new(client, watcher::Config::default())
        .watches_with_store::<Pod, _>(watcher::Config::default(), writer, |pod| {
            if pod.spec.node_name.is_empty() {
                Vec::new()
            } else {
                vec![ObjectRef::new("", &pod.spec.node_name)]
            }
        })
        .with_config(config.controller())
        .shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .await;
}

async fn reconcile(node: Arc<Node>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let name = node.metadata.name.clone();
    let now = Utc::now();
    // Scanning every pod for each node event is the expensive part; a healthy node's plan
    // does not need them.
    let pods: Vec<Pod> = if nodelifecycle::node_is_down(&node, now, &ctx.config) {
        ctx.pods
            .filter(|p| p.spec.node_name == name)
            .iter()
            .map(|p| p.as_ref().clone())
            .collect()
    } else {
        Vec::new()
    };
    let plan = nodelifecycle::plan(std::slice::from_ref(node.as_ref()), &pods, now, &ctx.config);
    let client = &ctx.client;
    let mut first_error = None;
    for step in plan.actions {
        match step {
            Step::UpdateNode(want) => {
                let mut current = node.as_ref().clone();
                if want.spec != current.spec {
                    current.spec = want.spec.clone();
                    current = client.update(&current).await.map_err(Error::new(
                        "taint",
                        Kind::Node,
                        "",
                        &name,
                    ))?;
                }
                if want.status != current.status {
                    current.status = want.status.clone();
                    client.update_status(&current).await.map_err(Error::new(
                        "mark not ready",
                        Kind::Node,
                        "",
                        &name,
                    ))?;
                }
            }
            Step::MarkPodNotReady(p) => match client.update_status(p.as_ref()).await {
                Ok(_) | Err(ClientError::NotFound(_)) => {}
                Err(e) => {
                    first_error.get_or_insert(Error::new(
                        "mark not ready",
                        Kind::Pod,
                        &p.metadata.namespace,
                        &p.metadata.name,
                    )(e));
                }
            },
            Step::EvictPod {
                namespace,
                name: pod,
                resource_version,
                node: node_name,
            } => match client
                .delete(Kind::Pod, &namespace, &pod, Some(resource_version))
                .await
            {
                Ok(_) => tracing::info!(%pod, node = %node_name, "evicted pod from lost node"),
                Err(ClientError::NotFound(_)) => {}
                Err(e) => {
                    first_error.get_or_insert(Error::new("evict", Kind::Pod, &namespace, &pod)(e));
                }
            },
            Step::Event {
                node: node_name,
                reason,
                message,
            } => {
                tracing::warn!(node = %node_name, %reason, %message, "node lifecycle");
                Recorder::new("node-lifecycle-controller")
                    .record(
                        client,
                        events::reference(node.as_ref()),
                        EventType::Warning,
                        &reason,
                        &message,
                    )
                    .await;
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(requeue(plan.requeue_after)),
    }
}
