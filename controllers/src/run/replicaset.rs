//! ReplicaSet shell: ReplicaSets (and the Pods they own) -> `replicaset::plan` -> one Batch of
//! pod creates/deletes, then status.
//!
//! Expectations (as in Kubernetes): after creating or deleting pods, the cache lags the store
//! for a moment; until it has seen those changes (or a timeout passes) the set is not
//! re-planned, otherwise a second pass would create the same pods again.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_client::runtime::reflector::{self, Store};
use berth_client::runtime::watcher;
use berth_client::{Action, BatchOp, Client, Controller, DynObject};
use berth_proto::types::*;
use berth_proto::Kind;
use chrono::Utc;
use rand::Rng;
use tokio_util::sync::CancellationToken;

use super::{error_policy, requeue, Config, Error};
use crate::replicaset;

const EXPECTATION_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct Expectation {
    creates: HashSet<String>,
    deletes: HashSet<String>,
    at: Instant,
}

struct Ctx {
    client: Client,
    pods: Store<Pod>,
    expectations: Mutex<HashMap<String, Expectation>>,
}

pub async fn run(client: Client, config: Config, shutdown: CancellationToken) {
    let (pods, writer) = reflector::store::<Pod>();
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        pods,
        expectations: Mutex::new(HashMap::new()),
    });
    Controller::<ReplicaSet>::new(client, watcher::Config::default())
        .owns_with_store::<Pod>(watcher::Config::default(), writer)
        .with_config(config.controller())
        .shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .await;
}

fn suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::thread_rng();
    (0..5)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Has the cache caught up with what we did last time?
fn satisfied(ctx: &Ctx, uid: &str, pods: &[Arc<Pod>]) -> bool {
    let mut map = match ctx.expectations.lock() {
        Ok(m) => m,
        Err(p) => p.into_inner(),
    };
    let Some(e) = map.get_mut(uid) else {
        return true;
    };
    e.creates
        .retain(|n| !pods.iter().any(|p| p.metadata.name == *n));
    e.deletes.retain(|n| {
        pods.iter()
            .any(|p| p.metadata.name == *n && p.metadata.deletion_timestamp.is_none())
    });
    if (e.creates.is_empty() && e.deletes.is_empty()) || e.at.elapsed() > EXPECTATION_TIMEOUT {
        map.remove(uid);
        true
    } else {
        false
    }
}

async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let uid = rs.metadata.uid.clone();
    let ns = rs.metadata.namespace.clone();
    let pods = ctx
        .pods
        .filter(|p| p.metadata.controller_uid() == Some(uid.as_str()));
    if !satisfied(&ctx, &uid, &pods) {
        // The pod events that satisfy the expectation requeue us; this is the safety net.
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let owned: Vec<Pod> = pods.iter().map(|p| p.as_ref().clone()).collect();
    let plan = replicaset::plan(&rs, &owned, Utc::now());

    let mut ops = Vec::new();
    let mut names = Vec::new();
    for template in &plan.create {
        let name = replicaset::pod_name(&rs, &suffix());
        let mut pod = template.clone();
        pod.metadata.name = name.clone();
        ops.push(BatchOp::Create(DynObject::from_typed(&pod)));
        names.push((name, true));
    }
    for (name, rv) in &plan.delete {
        ops.push(BatchOp::Delete {
            kind: Kind::Pod,
            namespace: ns.clone(),
            name: name.clone(),
            precondition: Some(*rv),
        });
        names.push((name.clone(), false));
    }
    if !ops.is_empty() {
        let mut exp = Expectation {
            creates: names.iter().filter(|n| n.1).map(|n| n.0.clone()).collect(),
            deletes: names.iter().filter(|n| !n.1).map(|n| n.0.clone()).collect(),
            at: Instant::now(),
        };
        let results = ctx.client.batch(ops).await.map_err(Error::new(
            "create/delete pods of",
            Kind::ReplicaSet,
            &ns,
            &rs.metadata.name,
        ))?;
        let mut failed_create = None;
        for (r, (name, create)) in results.into_iter().zip(&names) {
            if let Err(e) = r {
                tracing::debug!(pod = %name, error = %e, "pod write failed");
                if *create {
                    exp.creates.remove(name);
                    failed_create.get_or_insert(e);
                } else {
                    exp.deletes.remove(name);
                }
            }
        }
        // As Kubernetes' ReplicaSet controller does: say why pods could not be created (e.g.
        // refused by image trust admission), once per failing pass (Events are de-duplicated).
        if let Some(e) = failed_create {
            berth_client::runtime::events::Recorder::new("replicaset-controller")
                .record(
                    &ctx.client,
                    berth_client::runtime::events::reference(rs.as_ref()),
                    berth_client::runtime::events::EventType::Warning,
                    "FailedCreate",
                    &format!("Error creating: {e}"),
                )
                .await;
        }
        tracing::info!(replicaset = %rs.metadata.name, created = plan.create.len(), deleted = plan.delete.len(), "synced pods");
        if !exp.creates.is_empty() || !exp.deletes.is_empty() {
            let mut map = match ctx.expectations.lock() {
                Ok(m) => m,
                Err(p) => p.into_inner(),
            };
            map.insert(uid, exp);
        }
    }
    if rs.status.as_ref() != Some(&plan.status) {
        let mut updated = rs.as_ref().clone();
        updated.status = Some(plan.status.clone());
        ctx.client
            .update_status(&updated)
            .await
            .map_err(Error::new(
                "update status of",
                Kind::ReplicaSet,
                &ns,
                &rs.metadata.name,
            ))?;
    }
    Ok(requeue(plan.requeue_after))
}
