//! Endpoints shell: Services (re-queued when a Pod they select changes) ->
//! `endpoints::plan` -> create or update the Service's Endpoints when they differ.

use std::sync::Arc;

use berth_client::runtime::reflector::{self, Store};
use berth_client::runtime::watcher;
use berth_client::{Action, Client, Controller, ObjectRef};
use berth_proto::types::*;
use berth_proto::Kind;
use tokio_util::sync::CancellationToken;

use super::{error_policy, Config, Error};
use crate::endpoints;

struct Ctx {
    client: Client,
    pods: Store<Pod>,
    endpoints: Store<Endpoints>,
    nodes: Store<Node>,
}

pub async fn run(client: Client, config: Config, shutdown: CancellationToken) {
    let (pods, pod_writer) = reflector::store::<Pod>();
    let (eps, ep_writer) = reflector::store::<Endpoints>();
    let (nodes, node_writer) = reflector::store::<Node>();
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        pods,
        endpoints: eps,
        nodes,
    });
    let controller = Controller::<Service>::new(client, watcher::Config::default());
    let services = controller.store();
    let lb_services = services.clone();
    controller
        // A node's readiness or address changes every LoadBalancer Service's ingress.
        .watches_with_store::<Node, _>(watcher::Config::default(), node_writer, move |_| {
            lb_services
                .filter(|s| s.spec.type_.as_deref() == Some("LoadBalancer"))
                .iter()
                .map(|s| ObjectRef::from_obj(s.as_ref()))
                .collect()
        })
        .owns_with_store::<Endpoints>(watcher::Config::default(), ep_writer)
        .watches_with_store::<Pod, _>(watcher::Config::default(), pod_writer, move |pod| {
            services
                .filter(|s| endpoints::selects(s, pod))
                .iter()
                .map(|s| ObjectRef::from_obj(s.as_ref()))
                .collect()
        })
        .with_config(config.controller())
        .shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .await;
}

async fn reconcile(svc: Arc<Service>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = svc.metadata.namespace.clone();
    let name = svc.metadata.name.clone();
    let nodes: Vec<Node> = ctx
        .nodes
        .state()
        .iter()
        .map(|n| n.as_ref().clone())
        .collect();
    if let Some(status) = endpoints::load_balancer_status(&svc, &nodes) {
        if svc.status.as_ref() != Some(&status) {
            let mut update = svc.as_ref().clone();
            update.status = Some(status);
            ctx.client.update_status(&update).await.map_err(Error::new(
                "update status of",
                Kind::Service,
                &ns,
                &name,
            ))?;
        }
    }
    let pods: Vec<Pod> = ctx
        .pods
        .in_namespace(&ns)
        .iter()
        .map(|p| p.as_ref().clone())
        .collect();
    let Some(mut desired) = endpoints::plan(&svc, &pods) else {
        return Ok(Action::await_change());
    };
    // As Kubernetes' endpoints controller: when the change behind this write was seen, so that
    // every proxy can measure how long programming it took.
    desired.metadata.annotations.insert(
        endpoints::LAST_CHANGE_TRIGGER_TIME.to_string(),
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    );
    match ctx.endpoints.get(&ObjectRef::new(&ns, &name)) {
        // AlreadyExists (the cache has not seen it yet) requeues; the next pass updates it.
        None => {
            ctx.client.create(&desired).await.map_err(Error::new(
                "create",
                Kind::Endpoints,
                &ns,
                &name,
            ))?;
        }
        Some(existing) => {
            if existing.subsets == desired.subsets
                && existing.metadata.owner_references == desired.metadata.owner_references
            {
                return Ok(Action::await_change());
            }
            desired.metadata.resource_version = existing.metadata.resource_version;
            ctx.client.update(&desired).await.map_err(Error::new(
                "update",
                Kind::Endpoints,
                &ns,
                &name,
            ))?;
        }
    }
    Ok(Action::await_change())
}
