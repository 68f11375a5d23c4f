//! Garbage collection shell: caches of every owner/dependent kind; after a change (and a
//! short delay to gather more) orphans found by `gc::plan` are confirmed with a live read of
//! their owner and deleted with a resourceVersion precondition.

use std::collections::HashSet;
use std::time::Duration;

use berth_client::runtime::batch::{run_batched, Batching, Pass};
use berth_client::runtime::reflector::{self, Store};
use berth_client::runtime::watcher::{self, Backoff};
use berth_client::{Client, ClientError, Object};
use berth_proto::types::*;
use berth_proto::{Kind, Resource};
use futures::stream::{self, BoxStream, StreamExt};
use tokio_util::sync::CancellationToken;

use super::Config;
use crate::gc::{self, Item};

fn watch<T: Resource + Object>(client: &Client) -> (Store<T>, BoxStream<'static, ()>) {
    let (store, writer) = reflector::store::<T>();
    let events = reflector::reflector(
        writer,
        watcher::watcher_with(
            watcher::ApiSource::<T>::new(client.clone(), watcher::Config::default()),
            Backoff::default(),
        ),
    )
    .map(|_| ())
    .boxed();
    (store, events)
}

fn item_of<T: Resource>(o: &T) -> Item {
    let m = o.meta();
    Item {
        kind: T::KIND,
        namespace: m.namespace.clone(),
        name: m.name.clone(),
        uid: m.uid.clone(),
        resource_version: m.resource_version,
        owners: m.owner_references.clone(),
    }
}

fn items<T: Resource + Object>(store: &Store<T>, out: &mut Vec<Item>, live: &mut HashSet<String>) {
    for o in store.state() {
        let item = item_of(o.as_ref());
        live.insert(item.uid.clone());
        if !item.owners.is_empty() {
            out.push(item);
        }
    }
}

/// The caches garbage collection reads, and how it writes.
struct GcPass {
    client: Client,
    config: Config,
    deployments: Store<Deployment>,
    replica_sets: Store<ReplicaSet>,
    pods: Store<Pod>,
    services: Store<Service>,
    endpoints: Store<Endpoints>,
    nodes: Store<Node>,
}

impl Pass for GcPass {
    fn ready(&self) -> bool {
        self.deployments.is_ready()
            && self.replica_sets.is_ready()
            && self.pods.is_ready()
            && self.services.is_ready()
            && self.endpoints.is_ready()
            && self.nodes.is_ready()
    }

    async fn run(&mut self) -> Option<Duration> {
        let mut dirty = false;
        let mut all = Vec::new();
        let mut live = HashSet::new();
        items(&self.deployments, &mut all, &mut live);
        items(&self.replica_sets, &mut all, &mut live);
        items(&self.pods, &mut all, &mut live);
        items(&self.services, &mut all, &mut live);
        items(&self.endpoints, &mut all, &mut live);
        for orphan in gc::plan(&all, &live) {
            if collect(&self.client, orphan).await.is_err() {
                dirty = true;
            }
        }
        let node_names: HashSet<String> = self
            .nodes
            .state()
            .iter()
            .map(|n| n.metadata.name.clone())
            .collect();
        let bound: Vec<(Item, String)> = self
            .pods
            .state()
            .iter()
            .map(|p| (item_of(p.as_ref()), p.spec.node_name.clone()))
            .collect();
        for pod in gc::pods_on_missing_nodes(&bound, &node_names) {
            if collect_pod_of_missing_node(&self.client, pod, &bound)
                .await
                .is_err()
            {
                dirty = true;
            }
        }
        // Something could not be confirmed or deleted: try again later.
        dirty.then_some(self.config.gc_delay * 5)
    }
}

pub async fn run(client: Client, config: Config, shutdown: CancellationToken) {
    let (deployments, e1) = watch::<Deployment>(&client);
    let (replica_sets, e2) = watch::<ReplicaSet>(&client);
    let (pods, e3) = watch::<Pod>(&client);
    let (services, e4) = watch::<Service>(&client);
    let (endpoints, e5) = watch::<Endpoints>(&client);
    let (nodes, e6) = watch::<Node>(&client);
    let changes = stream::select_all([e1, e2, e3, e4, e5, e6]);
    let batching = Batching {
        window: config.gc_delay,
        resync: None,
        pass_at_start: false,
    };
    let mut pass = GcPass {
        client,
        config,
        deployments,
        replica_sets,
        pods,
        services,
        endpoints,
        nodes,
    };
    run_batched(&mut pass, changes, batching, shutdown).await;
}

/// Delete a pod bound to a node the cache does not know, once a live read confirms the node
/// is gone.
async fn collect_pod_of_missing_node(
    client: &Client,
    pod: &Item,
    bound: &[(Item, String)],
) -> Result<(), ClientError> {
    let Some((_, node)) = bound.iter().find(|(i, _)| i.uid == pod.uid) else {
        return Ok(());
    };
    match client.get::<Node>("", node).await {
        Ok(_) => return Ok(()),
        Err(ClientError::NotFound(_)) => {}
        Err(e) => return Err(e),
    }
    match client
        .delete(
            Kind::Pod,
            &pod.namespace,
            &pod.name,
            Some(pod.resource_version),
        )
        .await
    {
        Ok(_) => {
            tracing::info!(pod = %pod.name, namespace = %pod.namespace, %node, "deleted pod bound to a missing node");
            Ok(())
        }
        Err(ClientError::NotFound(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Delete `item` unless a live read finds one of its owners.
async fn collect(client: &Client, item: &Item) -> Result<(), ClientError> {
    for owner in &item.owners {
        let Some(kind) = Kind::parse(&owner.kind) else {
            continue;
        };
        match client.get_dyn(kind, &item.namespace, &owner.name).await {
            Ok(o) if o.meta().uid == owner.uid => return Ok(()),
            Ok(_) | Err(ClientError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    match client
        .delete(
            item.kind,
            &item.namespace,
            &item.name,
            Some(item.resource_version),
        )
        .await
    {
        Ok(_) => {
            tracing::info!(kind = %item.kind, namespace = %item.namespace, name = %item.name, "garbage-collected orphan");
            Ok(())
        }
        Err(ClientError::NotFound(_)) => Ok(()),
        Err(e) => Err(e),
    }
}
