//! `berth logs POD|deploy/NAME [-c CONTAINER] [-f] [--tail N] [-p]`: find the pod's node,
//! read its agent's address from `status.agentEndpoint`, and stream the container's log
//! from the agent's logs API.

use anyhow::{anyhow, bail};
use berth_client::{Client, ClientError, Kind};
use berth_proto::selector::Selector;
use berth_proto::types::{Deployment, Node, Pod};
use clap::Args;
use futures::StreamExt;

use super::{parse_kind_and_names, Ctx, Io};

#[derive(Debug, Clone, Args)]
pub struct LogsArgs {
    /// POD, pod/NAME, or deploy/NAME (one of its pods, ready ones first).
    #[arg(value_name = "POD")]
    pub target: String,
    /// Container name (default: the pod's only container).
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    /// Keep streaming new lines until the container exits (or Ctrl-C).
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only the last N lines.
    #[arg(long)]
    pub tail: Option<usize>,
    /// The previous (crashed) attempt's log.
    #[arg(short = 'p', long)]
    pub previous: bool,
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
}

/// Choose the pod `deploy/NAME` stands for: a ready one first, then the newest.
pub fn pick_pod(mut pods: Vec<Pod>) -> Option<Pod> {
    pods.sort_by(|a, b| {
        b.is_ready().cmp(&a.is_ready()).then_with(|| {
            b.metadata
                .creation_timestamp
                .cmp(&a.metadata.creation_timestamp)
        })
    });
    pods.into_iter().next()
}

pub(super) async fn resolve_pod(client: &Client, ns: &str, target: &str) -> anyhow::Result<Pod> {
    let (kind, name) = if target.contains('/') {
        let (kind, names) = parse_kind_and_names(&[target.to_string()])?;
        (kind, names.into_iter().next().unwrap_or_default())
    } else {
        (Kind::Pod, target.to_string())
    };
    let not_found = |k: Kind, n: &str| anyhow!("{}", super::get::not_found(k, n));
    match kind {
        Kind::Pod => client.get::<Pod>(ns, &name).await.map_err(|e| match e {
            ClientError::NotFound(_) => not_found(Kind::Pod, &name),
            e => e.into(),
        }),
        Kind::Deployment => {
            let d: Deployment = client.get(ns, &name).await.map_err(|e| match e {
                ClientError::NotFound(_) => not_found(Kind::Deployment, &name),
                e => e.into(),
            })?;
            let sel = Selector::from_label_selector(&d.spec.selector)
                .map_err(|e| anyhow!("deployment {name:?} has an invalid selector: {e}"))?;
            let (pods, _) = client.list::<Pod>(Some(ns), &sel.to_string()).await?;
            pick_pod(pods).ok_or_else(|| anyhow!("deployment {name:?} has no pods yet"))
        }
        other => bail!("logs come from pods or deployments, not {}", other.plural()),
    }
}

pub async fn run(ctx: &Ctx, a: LogsArgs, io: &mut Io<'_>) -> anyhow::Result<()> {
    let client = ctx.client()?;
    let ns = a.namespace.as_deref().unwrap_or("default");
    let pod = resolve_pod(&client, ns, &a.target).await?;
    let pod_name = pod.metadata.name.clone();
    if pod.spec.node_name.is_empty() {
        bail!("pod {pod_name:?} is not scheduled to a node yet, so it has no logs");
    }
    let node: Node = client.get("", &pod.spec.node_name).await.map_err(|e| {
        anyhow!(
            "cannot find node {:?} of pod {pod_name:?}: {e}",
            pod.spec.node_name
        )
    })?;
    let endpoint = node
        .status
        .as_ref()
        .map(|s| s.agent_endpoint.clone())
        .unwrap_or_default();
    if endpoint.is_empty() {
        bail!(
            "node {:?} has not published its agent endpoint (is its agent running?)",
            pod.spec.node_name
        );
    }
    let req = berth_agent::logs::LogRequest {
        namespace: ns.to_string(),
        pod: pod_name.clone(),
        container: a.container.clone().unwrap_or_default(),
        follow: a.follow,
        tail: a.tail,
        previous: a.previous,
    };
    let mut stream =
        berth_agent::logs::fetch(&endpoint, &req, ctx.client_config.tls.as_ref()).await?;
    loop {
        let chunk = tokio::select! {
            _ = ctx.shutdown.cancelled() => return Ok(()),
            c = stream.next() => c,
        };
        match chunk {
            None => return Ok(()),
            Some(Ok(bytes)) => {
                io.out.write_all(&bytes)?;
                io.out.flush()?;
            }
            Some(Err(e)) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::types::{Condition, ObjectMeta, PodStatus};
    use chrono::TimeZone;

    fn pod(name: &str, ready: bool, created: i64) -> Pod {
        let t = chrono::Utc
            .timestamp_opt(created, 0)
            .single()
            .expect("valid");
        Pod {
            metadata: ObjectMeta {
                name: name.into(),
                creation_timestamp: Some(t),
                ..Default::default()
            },
            status: Some(PodStatus {
                conditions: vec![Condition::new("Ready", ready, "", "", t)],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn deployment_logs_prefer_a_ready_pod_then_the_newest() {
        let got = pick_pod(vec![pod("old-ready", true, 10), pod("new", false, 20)]);
        assert_eq!(got.map(|p| p.metadata.name), Some("old-ready".into()));
        let got = pick_pod(vec![pod("a", true, 10), pod("b", true, 20)]);
        assert_eq!(got.map(|p| p.metadata.name), Some("b".into()));
        assert!(pick_pod(vec![]).is_none());
    }
}
