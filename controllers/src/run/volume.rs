//! PersistentVolume binder shell: caches of claims, volumes, pods and nodes; after a change
//! (gathered for a short window) `volume::plan` decides the writes, made one by one with
//! resourceVersion preconditions. A write that fails (a stale cache lost a CAS) is simply
//! re-planned on the next pass.

use std::time::Duration;

use berth_client::runtime::batch::{run_batched, Batching, Pass};
use berth_client::runtime::events::{self, EventType, Recorder};
use berth_client::runtime::reflector::{self, Store};
use berth_client::runtime::watcher::{self, Backoff};
use berth_client::{Client, ClientError, Object};
use berth_proto::storage::{PersistentVolume, PersistentVolumeClaim};
use berth_proto::types::*;
use berth_proto::{Kind, Resource};
use chrono::Utc;
use futures::stream::{self, BoxStream, StreamExt};
use tokio_util::sync::CancellationToken;

use super::Config;
use crate::volume::{self, Action};

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

struct Binder {
    client: Client,
    claims: Store<PersistentVolumeClaim>,
    volumes: Store<PersistentVolume>,
    pods: Store<Pod>,
    nodes: Store<Node>,
}

impl Pass for Binder {
    fn ready(&self) -> bool {
        self.claims.is_ready()
            && self.volumes.is_ready()
            && self.pods.is_ready()
            && self.nodes.is_ready()
    }

    async fn run(&mut self) -> Option<Duration> {
        let actions = volume::plan(
            &self.claims.state(),
            &self.volumes.state(),
            &self.pods.state(),
            &self.nodes.state(),
        );
        let mut failed = false;
        for a in actions {
            if let Err(e) = self.apply(&a).await {
                tracing::debug!(error = %e, "volume binder write failed; re-planned");
                failed = true;
            }
        }
        failed.then_some(Duration::from_millis(200))
    }
}

impl Binder {
    async fn event_about_claim(&self, c: &PersistentVolumeClaim, reason: &str, message: &str) {
        let ev = Recorder::new("persistentvolume-controller").event(
            events::reference(c),
            EventType::Normal,
            reason,
            message,
            1,
            Utc::now(),
        );
        if let Err(e) = self.client.create(&ev).await {
            tracing::debug!(error = %e, "volume event not written");
        }
    }

    async fn apply(&self, a: &Action) -> Result<(), ClientError> {
        match a {
            Action::CreateVolume(v) => {
                match self.client.create(v.as_ref()).await {
                    Ok(_) | Err(ClientError::AlreadyExists(_)) => {}
                    Err(e) => return Err(e),
                }
                let node = v.pinned_node().unwrap_or_default().to_string();
                tracing::info!(volume = %v.metadata.name, %node, "provisioned a local-path volume");
                if let Some(r) = &v.spec.claim_ref {
                    if let Some(c) = self
                        .claims
                        .get(&berth_client::ObjectRef::new(&r.namespace, &r.name))
                    {
                        self.event_about_claim(
                            &c,
                            "ProvisioningSucceeded",
                            &format!(
                                "Successfully provisioned volume {} on node {node}",
                                v.metadata.name
                            ),
                        )
                        .await;
                    }
                }
            }
            Action::UpdateVolume(v) => {
                self.client.update(v.as_ref()).await?;
            }
            Action::UpdateVolumeStatus(v) => {
                self.client.update_status(v.as_ref()).await?;
            }
            Action::DeleteVolume {
                name,
                resource_version,
            } => match self
                .client
                .delete(Kind::PersistentVolume, "", name, Some(*resource_version))
                .await
            {
                Ok(_) => {
                    tracing::info!(volume = %name, "deleted a released volume (reclaim policy Delete)")
                }
                Err(ClientError::NotFound(_)) => {}
                Err(e) => return Err(e),
            },
            Action::UpdateClaim(c) => {
                self.client.update(c.as_ref()).await?;
            }
            Action::UpdateClaimStatus(c) => {
                self.client.update_status(c.as_ref()).await?;
            }
        }
        Ok(())
    }
}

pub async fn run(client: Client, _config: Config, shutdown: CancellationToken) {
    let (claims, e1) = watch::<PersistentVolumeClaim>(&client);
    let (volumes, e2) = watch::<PersistentVolume>(&client);
    let (pods, e3) = watch::<Pod>(&client);
    let (nodes, e4) = watch::<Node>(&client);
    let changes = stream::select_all([e1, e2, e3, e4]);
    let batching = Batching {
        window: Duration::from_millis(20),
        resync: Some(Duration::from_secs(15)),
        pass_at_start: true,
    };
    let mut pass = Binder {
        client,
        claims,
        volumes,
        pods,
        nodes,
    };
    run_batched(&mut pass, changes, batching, shutdown).await;
}
