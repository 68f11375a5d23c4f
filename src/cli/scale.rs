//! `berth scale deploy NAME --replicas N` (also replicasets): a CAS update of
//! spec.replicas, retried on conflict.

use anyhow::{anyhow, bail, Context};
use berth_client::{Client, ClientError, Kind};
use berth_proto::types::{Deployment, ReplicaSet};
use clap::Args;

use super::get::NsArgs;
use super::{parse_kind_and_names, table, Ctx, Io};

#[derive(Debug, Clone, Args)]
pub struct ScaleArgs {
    /// deploy NAME, or deploy/NAME
    #[arg(required = true, value_name = "KIND NAME")]
    pub args: Vec<String>,
    /// The new desired replica count.
    #[arg(long)]
    pub replicas: i32,
    #[command(flatten)]
    pub ns: NsArgs,
}

const CONFLICT_RETRIES: usize = 5;

async fn scale_once(
    client: &Client,
    kind: Kind,
    ns: &str,
    name: &str,
    n: i32,
) -> Result<(), ClientError> {
    match kind {
        Kind::Deployment => {
            let mut d: Deployment = client.get(ns, name).await?;
            d.spec.replicas = Some(n);
            client.update(&d).await.map(|_| ())
        }
        _ => {
            let mut r: ReplicaSet = client.get(ns, name).await?;
            r.spec.replicas = n;
            client.update(&r).await.map(|_| ())
        }
    }
}

pub async fn run(ctx: &Ctx, a: ScaleArgs, io: &mut Io<'_>) -> anyhow::Result<()> {
    let (kind, names) = parse_kind_and_names(&a.args)?;
    if !matches!(kind, Kind::Deployment | Kind::ReplicaSet) {
        bail!(
            "cannot scale {}: only deployments and replicasets have replicas",
            kind.plural()
        );
    }
    if names.is_empty() {
        bail!(
            "which {}? e.g. berth scale deploy web --replicas 3",
            kind.as_str().to_lowercase()
        );
    }
    if a.replicas < 0 {
        bail!("--replicas must be 0 or more, got {}", a.replicas);
    }
    let client = ctx.client()?;
    let ns = a.ns.namespace();
    for name in &names {
        let mut attempt = 0;
        loop {
            match scale_once(&client, kind, ns, name, a.replicas).await {
                Ok(()) => break,
                // Someone else wrote in between: re-read and try again.
                Err(ClientError::Conflict { .. }) if attempt < CONFLICT_RETRIES => attempt += 1,
                Err(ClientError::NotFound(_)) => {
                    return Err(anyhow!("{}", super::get::not_found(kind, name)))
                }
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("cannot scale {}", table::kind_ref(kind, name)))
                }
            }
        }
        writeln!(io.out, "{} scaled", table::kind_ref(kind, name))?;
    }
    Ok(())
}
