//! `berth cordon|uncordon NODE..` and `berth drain NODE`.
//!
//! Cordon sets `spec.unschedulable` (the scheduler skips the node); drain cordons and then
//! deletes the node's pods so their controllers recreate them elsewhere. Like kubectl, drain
//! refuses to delete pods that no controller would recreate unless `--force`.

use std::time::Duration;

use anyhow::{anyhow, bail};
use berth_client::{Client, ClientError, Kind};
use berth_proto::types::{Node, Pod};
use clap::Args;

use super::{parse_duration, table, Ctx, Io};

#[derive(Debug, Clone, Args)]
pub struct CordonArgs {
    /// Node names.
    #[arg(required = true, value_name = "NODE")]
    pub nodes: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct DrainArgs {
    #[arg(value_name = "NODE")]
    pub node: String,
    /// Also delete pods that no controller manages (they are gone for good).
    #[arg(long)]
    pub force: bool,
    /// How long to wait for the deleted pods to disappear (0 = do not wait).
    #[arg(long = "timeout", default_value = "60s", value_parser = parse_duration)]
    pub wait_timeout: Duration,
}

const CONFLICT_RETRIES: usize = 5;

/// Set `spec.unschedulable`; returns false if it already had that value.
async fn set_unschedulable(client: &Client, name: &str, value: bool) -> anyhow::Result<bool> {
    for _ in 0..=CONFLICT_RETRIES {
        let mut n: Node = match client.get("", name).await {
            Ok(n) => n,
            Err(ClientError::NotFound(_)) => {
                return Err(anyhow!("{}", super::get::not_found(Kind::Node, name)))
            }
            Err(e) => return Err(e.into()),
        };
        if n.spec.unschedulable == value {
            return Ok(false);
        }
        n.spec.unschedulable = value;
        match client.update(&n).await {
            Ok(_) => return Ok(true),
            Err(ClientError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    bail!("node {name:?} kept changing; try again")
}

fn line(name: &str, changed: bool, verb: &str) -> String {
    let node = table::kind_ref(Kind::Node, name);
    if changed {
        format!("{node} {verb}")
    } else {
        format!("{node} already {verb}")
    }
}

pub async fn cordon(ctx: &Ctx, a: CordonArgs, io: &mut Io<'_>) -> anyhow::Result<()> {
    let client = ctx.client()?;
    for n in &a.nodes {
        let changed = set_unschedulable(&client, n, true).await?;
        writeln!(io.out, "{}", line(n, changed, "cordoned"))?;
    }
    Ok(())
}

pub async fn uncordon(ctx: &Ctx, a: CordonArgs, io: &mut Io<'_>) -> anyhow::Result<()> {
    let client = ctx.client()?;
    for n in &a.nodes {
        let changed = set_unschedulable(&client, n, false).await?;
        writeln!(io.out, "{}", line(n, changed, "uncordoned"))?;
    }
    Ok(())
}

/// Which pods on a node drain deletes, and which block it (unmanaged, without --force).
pub fn drain_plan(pods: &[Pod], node: &str, force: bool) -> (Vec<Pod>, Vec<Pod>) {
    let on_node = pods.iter().filter(|p| p.spec.node_name == node);
    let (managed, unmanaged): (Vec<Pod>, Vec<Pod>) = on_node
        .cloned()
        .partition(|p| p.metadata.controller_uid().is_some());
    if force {
        (managed.into_iter().chain(unmanaged).collect(), vec![])
    } else {
        (managed, unmanaged)
    }
}

pub async fn drain(ctx: &Ctx, a: DrainArgs, io: &mut Io<'_>) -> anyhow::Result<()> {
    let client = ctx.client()?;
    let changed = set_unschedulable(&client, &a.node, true).await?;
    writeln!(io.out, "{}", line(&a.node, changed, "cordoned"))?;
    let (pods, _) = client.list::<Pod>(None, "").await?;
    let (evict, blocked) = drain_plan(&pods, &a.node, a.force);
    if !blocked.is_empty() {
        let names: Vec<String> = blocked
            .iter()
            .map(|p| format!("{}/{}", p.metadata.namespace, p.metadata.name))
            .collect();
        bail!(
            "cannot delete pods that no controller manages (use --force to delete them anyway): {}",
            names.join(", ")
        );
    }
    for p in &evict {
        let m = &p.metadata;
        match client
            .delete(Kind::Pod, &m.namespace, &m.name, Some(m.resource_version))
            .await
        {
            Ok(_) | Err(ClientError::NotFound(_)) => {
                writeln!(io.out, "pod/{} evicted", m.name)?;
            }
            // Changed meanwhile: delete whatever it is now (it is still on this node).
            Err(ClientError::Conflict { .. }) => {
                match client.delete(Kind::Pod, &m.namespace, &m.name, None).await {
                    Ok(_) | Err(ClientError::NotFound(_)) => {
                        writeln!(io.out, "pod/{} evicted", m.name)?
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    if !a.wait_timeout.is_zero() && !evict.is_empty() {
        let deadline = tokio::time::Instant::now() + a.wait_timeout;
        let uids: Vec<&str> = evict.iter().map(|p| p.metadata.uid.as_str()).collect();
        loop {
            let (now, _) = client.list::<Pod>(None, "").await?;
            let left = now
                .iter()
                .filter(|p| uids.contains(&p.metadata.uid.as_str()))
                .count();
            if left == 0 {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("{left} evicted pods still exist after {:?}", a.wait_timeout);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    writeln!(io.out, "{} drained", table::kind_ref(Kind::Node, &a.node))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::types::{ObjectMeta, OwnerReference, PodSpec};

    fn pod(name: &str, node: &str, managed: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: name.into(),
                namespace: "default".into(),
                owner_references: if managed {
                    vec![OwnerReference {
                        kind: "ReplicaSet".into(),
                        name: "rs".into(),
                        uid: "u".into(),
                        controller: true,
                        ..Default::default()
                    }]
                } else {
                    vec![]
                },
                ..Default::default()
            },
            spec: PodSpec {
                node_name: node.into(),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn drain_deletes_managed_pods_and_blocks_on_unmanaged_without_force() {
        let pods = vec![
            pod("a", "n1", true),
            pod("b", "n1", false),
            pod("c", "n2", true),
        ];
        let names = |v: &[Pod]| {
            v.iter()
                .map(|p| p.metadata.name.clone())
                .collect::<Vec<_>>()
        };
        let (evict, blocked) = drain_plan(&pods, "n1", false);
        assert_eq!(names(&evict), vec!["a"]);
        assert_eq!(names(&blocked), vec!["b"]);
        let (evict, blocked) = drain_plan(&pods, "n1", true);
        assert_eq!(names(&evict), vec!["a", "b"]);
        assert!(blocked.is_empty());
    }
}
