//! Namespace controller shell: creates the system namespaces (idempotently, each time this
//! member becomes leader, so clusters made by older versions get them too), and empties and
//! removes terminating namespaces (see [`crate::namespace`]).

use std::time::Duration;

use berth_client::runtime::batch::{run_batched, Batching, Pass};
use berth_client::runtime::reflector::{self, Store};
use berth_client::runtime::watcher::{self, Backoff};
use berth_client::{Client, ClientError};
use berth_proto::types::Namespace;
use berth_proto::Kind;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::Config;
use crate::namespace;

/// How soon a namespace with content left is looked at again.
const RETRY: Duration = Duration::from_secs(1);

struct NamespacePass {
    client: Client,
    namespaces: Store<Namespace>,
}

impl Pass for NamespacePass {
    fn ready(&self) -> bool {
        self.namespaces.is_ready()
    }

    async fn run(&mut self) -> Option<Duration> {
        let all: Vec<Namespace> = self
            .namespaces
            .state()
            .iter()
            .map(|n| (**n).clone())
            .collect();
        let mut again = false;
        for name in namespace::missing_system_namespaces(&all) {
            let mut ns = Namespace::default();
            ns.metadata.name = name.to_string();
            match self.client.create(&ns).await {
                Ok(_) => tracing::info!(namespace = name, "created system namespace"),
                Err(ClientError::AlreadyExists(_)) => {}
                Err(e) => {
                    tracing::warn!(namespace = name, error = %e, "creating system namespace failed");
                    again = true;
                }
            }
        }
        for name in namespace::terminating(&all) {
            match finalize(&self.client, &name).await {
                Ok(true) => {}
                Ok(false) => again = true,
                Err(e) => {
                    tracing::warn!(namespace = %name, error = %e, "emptying terminating namespace failed");
                    again = true;
                }
            }
        }
        again.then_some(RETRY)
    }
}

/// Delete everything in terminating namespace `ns`, then the namespace itself. `Ok(true)`
/// when it is gone.
async fn finalize(client: &Client, ns: &str) -> Result<bool, ClientError> {
    let mut left = 0usize;
    for kind in namespace::deletion_order() {
        let (objects, _) = client.list_dyn(kind, Some(ns), "").await?;
        for o in objects {
            left += 1;
            match client.delete(kind, ns, o.name(), None).await {
                Ok(_) | Err(ClientError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
    }
    if left > 0 {
        tracing::info!(namespace = %ns, objects = left, "deleted the content of terminating namespace");
    }
    // The store removes the namespace only once nothing is left in it.
    match client.delete(Kind::Namespace, "", ns, None).await {
        Err(ClientError::NotFound(_)) => return Ok(true),
        Err(e) => return Err(e),
        Ok(_) => {}
    }
    match client.get::<Namespace>("", ns).await {
        Err(ClientError::NotFound(_)) => {
            tracing::info!(namespace = %ns, "namespace deleted");
            Ok(true)
        }
        Ok(_) => Ok(false),
        Err(e) => Err(e),
    }
}

pub async fn run(client: Client, _config: Config, shutdown: CancellationToken) {
    let (namespaces, writer) = reflector::store::<Namespace>();
    let changes = reflector::reflector(
        writer,
        watcher::watcher_with(
            watcher::ApiSource::<Namespace>::new(client.clone(), watcher::Config::default()),
            Backoff::default(),
        ),
    )
    .map(|_| ());
    let batching = Batching {
        window: Duration::from_millis(100),
        resync: Some(Duration::from_secs(30)),
        pass_at_start: true,
    };
    let mut pass = NamespacePass { client, namespaces };
    run_batched(&mut pass, changes, batching, shutdown).await;
}
