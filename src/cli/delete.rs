//! `berth delete -f FILE|DIR|-` or `berth delete KIND NAME..` (or KIND/NAME..).

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context};
use berth_client::{ClientError, Kind};
use clap::Args;

use super::get::{not_found, NsArgs};
use super::{parse_kind_and_names, table, Ctx, Io};

#[derive(Debug, Clone, Args)]
pub struct DeleteArgs {
    /// Manifest files or directories (or - for stdin) naming the objects to delete.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// KIND NAME.. or KIND/NAME..
    #[arg(value_name = "KIND [NAME]..")]
    pub args: Vec<String>,
    #[command(flatten)]
    pub ns: NsArgs,
    /// Delete every object of KIND matching this label selector.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Delete every object of KIND (in the namespace, or all with -A).
    #[arg(long)]
    pub all: bool,
    /// Succeed even if an object does not exist.
    #[arg(long)]
    pub ignore_not_found: bool,
    /// Seconds a pod gets to stop (kubectl's flag); -1: the pod's own
    /// terminationGracePeriodSeconds. 0 counts as 1 unless --force.
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub grace_period: i64,
    /// With --grace-period 0 (the default with --force): remove pods from the API at once,
    /// without waiting for their node to drain and stop them (they may keep running there).
    #[arg(long)]
    pub force: bool,
}

impl DeleteArgs {
    /// The grace period to send, as kubectl computes it.
    fn grace(&self) -> Option<i64> {
        match (self.grace_period, self.force) {
            (g, true) if g <= 0 => Some(0),
            (0, false) => Some(1),
            (g, _) if g < 0 => None,
            (g, _) => Some(g),
        }
    }
}

/// kubectl's confirmation line: `deployment.apps "web" deleted`.
pub fn deleted_line(kind: Kind, name: &str) -> String {
    format!("{} {name:?} deleted", table::kind_resource(kind))
}

pub async fn run(ctx: &Ctx, a: DeleteArgs, io: &mut Io<'_>) -> anyhow::Result<()> {
    let targets: Vec<(Kind, String, String)> = if !a.files.is_empty() {
        if !a.args.is_empty() {
            bail!("give either -f FILE or KIND NAME.., not both");
        }
        let objs = berth_proto::manifest::load_paths(&a.files).map_err(|errs| {
            anyhow!(
                "{errs}\n{} problem(s) found; nothing was deleted",
                errs.len()
            )
        })?;
        objs.iter()
            .map(|o| {
                let ns = if !o.kind.namespaced() {
                    String::new()
                } else if o.namespace().is_empty() {
                    a.ns.namespace().to_string()
                } else {
                    o.namespace().to_string()
                };
                (o.kind, ns, o.name().to_string())
            })
            .collect()
    } else {
        let (kind, names) = parse_kind_and_names(&a.args)?;
        let by_selector = a.selector.is_some() || a.all;
        if names.is_empty() && !by_selector {
            bail!(
                "which {}? name them, e.g. berth delete {} NAME, select them with -l or --all, \
                 or use -f FILE",
                kind.plural(),
                kind.as_str().to_lowercase()
            );
        }
        if !names.is_empty() && by_selector {
            bail!("give either names or -l/--all, not both");
        }
        if by_selector {
            let client = ctx.client()?;
            let scope = a.ns.list_scope(kind);
            let selector = a.selector.clone().unwrap_or_default();
            let (objs, _) = client
                .list_dyn(kind, scope.as_deref(), &selector)
                .await
                .with_context(|| format!("cannot list {}", kind.plural()))?;
            if objs.is_empty() {
                writeln!(io.err, "No resources found.")?;
                return Ok(());
            }
            objs.iter()
                .map(|o| (kind, o.namespace().to_string(), o.name().to_string()))
                .collect()
        } else {
            names
                .into_iter()
                .map(|n| (kind, a.ns.namespace().to_string(), n))
                .collect()
        }
    };
    let client = ctx.client()?;
    if a.grace() == Some(0) {
        writeln!(
            io.err,
            "Warning: Immediate deletion does not wait for confirmation that the running resource \
             has been terminated. The resource may continue to run on the cluster indefinitely."
        )?;
    }
    let mut failed = 0;
    for (kind, ns, name) in &targets {
        match client
            .delete_with_grace(*kind, ns, name, None, a.grace())
            .await
        {
            Ok(_) => writeln!(io.out, "{}", deleted_line(*kind, name))?,
            Err(ClientError::NotFound(_)) if a.ignore_not_found => {}
            Err(ClientError::NotFound(_)) => {
                failed += 1;
                writeln!(
                    io.err,
                    "Error from server (NotFound): {}",
                    not_found(*kind, name)
                )?;
            }
            Err(e @ ClientError::Unavailable { .. }) => return Err(e.into()),
            Err(e) => {
                failed += 1;
                writeln!(
                    io.err,
                    "error: cannot delete {}: {e}",
                    table::kind_ref(*kind, name)
                )?;
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} deletions failed", targets.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deleted_line_matches_kubectl() {
        assert_eq!(
            deleted_line(Kind::Deployment, "web"),
            "deployment.apps \"web\" deleted"
        );
        assert_eq!(
            deleted_line(Kind::Service, "web"),
            "service \"web\" deleted"
        );
    }
}
