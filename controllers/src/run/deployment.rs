//! Deployment shell: Deployments (and the ReplicaSets they own) -> `deployment::plan` ->
//! writes. The status (which carries the blue-green state) is written first, so a decision is
//! recorded before it is acted on; every later action is re-derived from that state on the
//! next pass if it fails.

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
use crate::deployment::bluegreen::Switch;
use crate::deployment::{self, Action as Step, TEMPLATE_HASH_LABEL};
use berth_proto::image::IMAGE_DIGESTS_ANNOTATION;

struct Ctx {
    client: Client,
    replica_sets: Store<ReplicaSet>,
    /// Pods, read only for Deployments with `autoRevert` (to judge the new revision's pods).
    pods: Store<Pod>,
    registry_hosts: Vec<String>,
    /// For the blue-green traffic-switch barrier: which pods the Services' Endpoints list,
    /// and what every node's proxy has programmed.
    traffic: Traffic,
}

struct Traffic {
    services: Store<Service>,
    endpoints: Store<Endpoints>,
    pods: Store<Pod>,
    nodes: Store<Node>,
}

impl Traffic {
    /// Has Service `ns/name`'s switch to revision `hash` reached every Ready node's proxy?
    /// Its Endpoints must list only pods of that revision, and every Ready node that reports
    /// `status.proxy` must have programmed their resourceVersion.
    fn switch(&self, ns: &str, name: &str, hash: &str) -> Switch {
        if self.services.get(&ObjectRef::new(ns, name)).is_none() {
            return Switch::Confirmed; // nothing to switch (the controller warns about it)
        }
        let Some(e) = self.endpoints.get(&ObjectRef::new(ns, name)) else {
            return Switch::Pending(format!("Service {ns}/{name} has no Endpoints yet"));
        };
        let addresses: Vec<&EndpointAddress> =
            e.subsets.iter().flat_map(|s| &s.addresses).collect();
        if addresses.is_empty() {
            return Switch::Pending(format!("Endpoints {ns}/{name} have no ready address yet"));
        }
        let other = addresses.iter().find(|a| {
            let pod = a
                .target_ref
                .as_ref()
                .and_then(|r| self.pods.get(&ObjectRef::new(ns, &r.name)));
            pod.is_none_or(|p| {
                p.metadata
                    .labels
                    .get(TEMPLATE_HASH_LABEL)
                    .map(String::as_str)
                    != Some(hash)
            })
        });
        if let Some(a) = other {
            let pod = a
                .target_ref
                .as_ref()
                .map(|r| r.name.as_str())
                .unwrap_or(&a.ip);
            return Switch::Pending(format!(
                "Endpoints {ns}/{name} still list {pod}, not of revision {hash}"
            ));
        }
        let rv = e.metadata.resource_version;
        let mut behind: Vec<String> = self
            .nodes
            .filter(|n| n.is_ready())
            .iter()
            .filter(|n| {
                n.status
                    .as_ref()
                    .and_then(|s| s.proxy.as_ref())
                    .is_some_and(|p| p.programmed_revision < rv)
            })
            .map(|n| n.metadata.name.clone())
            .collect();
        if behind.is_empty() {
            return Switch::Confirmed;
        }
        behind.sort();
        Switch::Pending(format!(
            "node(s) {} have not programmed Endpoints {ns}/{name} revision {rv}",
            behind.join(", ")
        ))
    }
}

/// A blue-green Deployment whose last switch still waits for the proxies.
fn barrier_pending(d: &Deployment) -> bool {
    d.status
        .as_ref()
        .and_then(|s| s.blue_green.as_ref())
        .is_some_and(|b| {
            b.switch_confirmed_at.is_none() && matches!(b.phase.as_str(), "Promoting" | "Degraded")
        })
}

/// Seconds from a switch (promotion, undo, abort) until every node's proxy had it.
fn barrier_histogram() -> berth_metrics::Histogram {
    berth_metrics::global().histogram(
        "berth_bluegreen_switch_barrier_seconds",
        "Time from a blue-green switch (promotion, undo, abort) until every Ready node's proxy \
         had programmed it (or the barrier timed out).",
        &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
    )
}

pub async fn run(client: Client, config: Config, shutdown: CancellationToken) {
    let (replica_sets, writer) = reflector::store::<ReplicaSet>();
    let (services, services_w) = reflector::store::<Service>();
    let (endpoints, endpoints_w) = reflector::store::<Endpoints>();
    let (pods, pod_writer) = reflector::store::<Pod>();
    let (nodes, nodes_w) = reflector::store::<Node>();
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        replica_sets: replica_sets.clone(),
        pods: pods.clone(),
        registry_hosts: config.cluster_registry_hosts.clone(),
        traffic: Traffic {
            services,
            endpoints,
            pods,
            nodes,
        },
    });
    let controller = Controller::<Deployment>::new(client, watcher::Config::default());
    let deployments = controller.store();
    let auto_revert_deployments = controller.store();
    let (for_endpoints, for_nodes) = (deployments.clone(), deployments.clone());
    controller
        .owns_with_store::<ReplicaSet>(watcher::Config::default(), writer)
        // A pod of an autoRevert Deployment changing (crash-looping, failing readiness) may
        // fail its rollout before the ReplicaSet's counts change: re-plan its Deployment.
        .watches_with_store::<Pod, _>(watcher::Config::default(), pod_writer, move |pod| {
            deployment_of_pod(pod, &replica_sets, &auto_revert_deployments)
                .into_iter()
                .collect()
        })
        // A blue-green Service created (or re-applied without its revision pin) after the
        // Deployment must be pointed at the right revision: re-plan the Deployments naming it.
        .watches_with_store::<Service, _>(watcher::Config::default(), services_w, move |svc| {
            deployments
                .filter(|d| names_service(d, svc))
                .iter()
                .map(|d| ObjectRef::from_obj(d.as_ref()))
                .collect()
        })
        // The traffic-switch barrier: Endpoints of the blue-green Services and the nodes'
        // proxy reports move it on.
        .watches_with_store::<Endpoints, _>(watcher::Config::default(), endpoints_w, move |e| {
            for_endpoints
                .filter(|d| {
                    d.metadata.namespace == e.metadata.namespace
                        && names_service_name(d, &e.metadata.name)
                })
                .iter()
                .map(|d| ObjectRef::from_obj(d.as_ref()))
                .collect()
        })
        .watches_with_store::<Node, _>(watcher::Config::default(), nodes_w, move |_| {
            for_nodes
                .filter(barrier_pending)
                .iter()
                .map(|d| ObjectRef::from_obj(d.as_ref()))
                .collect()
        })
        .with_config(config.controller())
        .shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .await;
}

/// The autoRevert Deployment that owns `pod` (through its ReplicaSet), if any: two keyed
/// cache lookups per pod event.
fn deployment_of_pod(
    pod: &Pod,
    replica_sets: &Store<ReplicaSet>,
    deployments: &Store<Deployment>,
) -> Option<ObjectRef> {
    let ns = &pod.metadata.namespace;
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .find(|o| o.controller && o.kind == "ReplicaSet")?;
    let rs = replica_sets
        .get(&ObjectRef::new(ns, &owner.name))
        .filter(|rs| rs.metadata.uid == owner.uid)?;
    let d_owner = rs
        .metadata
        .owner_references
        .iter()
        .find(|o| o.controller && o.kind == "Deployment")?;
    let d = deployments
        .get(&ObjectRef::new(ns, &d_owner.name))
        .filter(|d| d.metadata.uid == d_owner.uid)?;
    deployment::autorevert::settings(&d)?;
    Some(ObjectRef::from_obj(d.as_ref()))
}

fn names_service(d: &Deployment, svc: &Service) -> bool {
    d.metadata.namespace == svc.metadata.namespace && names_service_name(d, &svc.metadata.name)
}

fn names_service_name(d: &Deployment, name: &str) -> bool {
    d.spec
        .strategy
        .as_ref()
        .and_then(|s| s.blue_green.as_ref())
        .is_some_and(|bg| bg.active_service == name || bg.preview_service.as_deref() == Some(name))
}

async fn reconcile(d: Arc<Deployment>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if d.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = d.metadata.namespace.clone();
    let mut owned: Vec<ReplicaSet> = ctx
        .replica_sets
        .filter(|rs| rs.metadata.controller_uid() == Some(d.metadata.uid.as_str()))
        .iter()
        .map(|rs| rs.as_ref().clone())
        .collect();
    // Only autoRevert reads pods: the others plan from the ReplicaSets' counts alone.
    let pods: Vec<Pod> = if deployment::autorevert::settings(&d).is_some() {
        let uids: Vec<&str> = owned.iter().map(|rs| rs.metadata.uid.as_str()).collect();
        ctx.pods
            .in_namespace(&ns)
            .iter()
            .filter(|p| {
                p.metadata
                    .controller_uid()
                    .is_some_and(|u| uids.contains(&u))
            })
            .map(|p| p.as_ref().clone())
            .collect()
    } else {
        Vec::new()
    };
    let bg = d
        .spec
        .strategy
        .as_ref()
        .and_then(|s| s.blue_green.clone())
        .unwrap_or_default();
    let active_switch = |hash: &str| ctx.traffic.switch(&ns, &bg.active_service, hash);
    let preview_switch = |hash: &str| match bg.preview_service.as_deref() {
        Some(p) if !p.is_empty() => ctx.traffic.switch(&ns, p, hash),
        _ => Switch::Confirmed,
    };
    let now = Utc::now();
    let mut plan = deployment::plan_full(&d, &owned, &pods, &active_switch, &preview_switch, now);
    observe_barrier(&d, &plan.status);
    let client = &ctx.client;
    for step in &mut plan.actions {
        if let Step::CreateReplicaSet(rs) = step {
            pin_images(client, &ctx.registry_hosts, rs).await?;
        }
    }
    let mut current = d.as_ref().clone();

    if current.status.as_ref() != Some(&plan.status) {
        current.status = Some(plan.status.clone());
        current = client.update_status(&current).await.map_err(Error::new(
            "update status of",
            Kind::Deployment,
            &ns,
            &d.metadata.name,
        ))?;
    }

    let mut remove_annotations = Vec::new();
    for step in plan.actions {
        match step {
            Step::CreateReplicaSet(rs) => match client.create(rs.as_ref()).await {
                Ok(_) => {
                    tracing::info!(deployment = %d.metadata.name, replicaset = %rs.metadata.name, replicas = rs.spec.replicas, "created replica set");
                    scaling_event(client, &d, &rs.metadata.name, 0, rs.spec.replicas).await;
                }
                Err(ClientError::AlreadyExists(_)) => {}
                Err(e) => {
                    // Refused (e.g. by image trust admission): say why on the Deployment, as
                    // Kubernetes' ReplicaFailure does (Events are de-duplicated).
                    if matches!(e, ClientError::Invalid(_)) {
                        recorder()
                            .record(
                                client,
                                events::reference(d.as_ref()),
                                EventType::Warning,
                                "FailedCreate",
                                &format!("Error creating replica set {}: {e}", rs.metadata.name),
                            )
                            .await;
                    }
                    return Err(Error::new(
                        "create",
                        Kind::ReplicaSet,
                        &ns,
                        &rs.metadata.name,
                    )(e));
                }
            },
            Step::UpdateReplicaSet {
                name,
                replicas,
                revision,
            } => {
                let Some(mut rs) = owned.iter().find(|r| r.metadata.name == name).cloned() else {
                    continue;
                };
                let from = rs.spec.replicas;
                rs.spec.replicas = replicas;
                if let Some(r) = revision {
                    rs.metadata
                        .annotations
                        .insert(deployment::REVISION_ANNOTATION.into(), r.to_string());
                }
                client.update(&rs).await.map_err(Error::new(
                    "scale",
                    Kind::ReplicaSet,
                    &ns,
                    &name,
                ))?;
                tracing::info!(deployment = %d.metadata.name, replicaset = %name, replicas, "scaled replica set");
                scaling_event(client, &d, &name, from, replicas).await;
            }
            Step::DeleteReplicaSet { name } => {
                let rv = owned
                    .iter()
                    .find(|r| r.metadata.name == name)
                    .map(|r| r.metadata.resource_version);
                match client.delete(Kind::ReplicaSet, &ns, &name, rv).await {
                    Ok(_) | Err(ClientError::NotFound(_)) => {}
                    Err(e) => return Err(Error::new("delete", Kind::ReplicaSet, &ns, &name)(e)),
                }
            }
            Step::PointService { service, hash } => {
                point_service(client, &ns, &service, &hash).await?;
            }
            Step::RemoveAnnotation { key } => remove_annotations.push(key),
            Step::MarkRevisionFailed { name, record } => {
                let Some(mut rs) = owned.iter().find(|r| r.metadata.name == name).cloned() else {
                    continue;
                };
                rs.metadata.annotations.insert(
                    berth_proto::enums::ROLLOUT_FAILED_ANNOTATION.into(),
                    record.clone(),
                );
                let stored = client.update(&rs).await.map_err(Error::new(
                    "mark failed",
                    Kind::ReplicaSet,
                    &ns,
                    &name,
                ))?;
                // A scale of the same set later in this pass writes over this version.
                if let Some(slot) = owned.iter_mut().find(|r| r.metadata.name == name) {
                    *slot = stored;
                }
                tracing::warn!(deployment = %d.metadata.name, replicaset = %name, %record, "rollout failed; reverting");
            }
            Step::Event {
                type_,
                reason,
                message,
            } => {
                let type_ = EventType::from_name(&type_);
                recorder()
                    .record(
                        client,
                        events::reference(d.as_ref()),
                        type_,
                        &reason,
                        &message,
                    )
                    .await;
            }
        }
    }
    if !remove_annotations.is_empty() {
        for k in &remove_annotations {
            current.metadata.annotations.remove(k);
        }
        client.update(&current).await.map_err(Error::new(
            "clear request annotations of",
            Kind::Deployment,
            &ns,
            &d.metadata.name,
        ))?;
    }
    Ok(requeue(plan.requeue_after))
}

/// Pin a new ReplicaSet's cluster-registry tags to the digests they have now (read from the
/// store, not a cache: a tag pushed a moment ago must count). A tag the registry does not have
/// stays unpinned; a failed read fails the pass (retried) rather than create the revision
/// unpinned.
async fn pin_images(
    client: &Client,
    registry_hosts: &[String],
    rs: &mut ReplicaSet,
) -> Result<(), Error> {
    let mut digests = std::collections::BTreeMap::new();
    for (repo, tag) in deployment::cluster_tags(&rs.spec.template, registry_hosts) {
        let name = berth_proto::image::tag_object_name(&repo, &tag);
        match client.get::<ImageTag>("", &name).await {
            Ok(t) if t.spec.repository == repo && t.spec.tag == tag => {
                digests.insert((repo, tag), t.spec.digest);
            }
            Ok(_) | Err(ClientError::NotFound(_)) => {}
            Err(e) => return Err(Error::new("read", Kind::ImageTag, "", &name)(e)),
        }
    }
    deployment::pin_images(rs, registry_hosts, |repo, tag| {
        digests.get(&(repo.to_string(), tag.to_string())).cloned()
    });
    if let Some(pins) = rs.metadata.annotations.get(IMAGE_DIGESTS_ANNOTATION) {
        tracing::info!(replicaset = %rs.metadata.name, %pins, "pinned images to digests");
    }
    Ok(())
}

/// Observe the barrier latency when this pass confirms a switch.
fn observe_barrier(d: &Deployment, new: &DeploymentStatus) {
    let old = d.status.as_ref().and_then(|s| s.blue_green.as_ref());
    let Some(new) = new.blue_green.as_ref() else {
        return;
    };
    let (Some(confirmed), None) = (
        new.switch_confirmed_at,
        old.and_then(|o| o.switch_confirmed_at),
    ) else {
        return;
    };
    let from = match new.phase.as_str() {
        "Promoting" => new.promoted_at,
        _ => new.phase_since,
    };
    if let Some(from) = from {
        let secs = (confirmed - from).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6;
        barrier_histogram().observe(secs);
        tracing::info!(deployment = %d.metadata.name, barrier_ms = secs * 1e3, "traffic switch confirmed by every proxy");
    }
}

fn recorder() -> Recorder {
    Recorder::new("deployment-controller")
}

/// kubectl's `ScalingReplicaSet` event ("Scaled up replica set web-abc to 3 from 1").
async fn scaling_event(client: &Client, d: &Deployment, rs: &str, from: i32, to: i32) {
    if from == to {
        return;
    }
    let dir = if to > from { "up" } else { "down" };
    recorder()
        .record(
            client,
            events::reference(d),
            EventType::Normal,
            "ScalingReplicaSet",
            &format!("Scaled {dir} replica set {rs} to {to} from {from}"),
        )
        .await;
}

/// Set the Service's `pod-template-hash` selector in one write (a no-op when already set).
async fn point_service(client: &Client, ns: &str, name: &str, hash: &str) -> Result<(), Error> {
    let mut svc: Service = match client.get(ns, name).await {
        Ok(s) => s,
        Err(ClientError::NotFound(_)) => {
            tracing::warn!(service = %name, namespace = %ns, "blue-green service not found; create it to route traffic");
            return Ok(());
        }
        Err(e) => return Err(Error::new("read", Kind::Service, ns, name)(e)),
    };
    if svc
        .spec
        .selector
        .get(TEMPLATE_HASH_LABEL)
        .map(String::as_str)
        == Some(hash)
    {
        return Ok(());
    }
    svc.spec
        .selector
        .insert(TEMPLATE_HASH_LABEL.into(), hash.into());
    client
        .update(&svc)
        .await
        .map_err(Error::new("re-point", Kind::Service, ns, name))?;
    tracing::info!(service = %name, namespace = %ns, %hash, "service now selects revision");
    Ok(())
}
