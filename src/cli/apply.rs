//! `berth apply -f FILE|DIR|- [--dry-run]`: parse and check every document first (any
//! error -> print them all, send nothing, exit 1), then Apply each object in order.

use std::path::PathBuf;

use anyhow::anyhow;
use berth_client::{ClientError, Outcome};
use clap::Args;

use super::{table, Ctx, Io};

#[derive(Debug, Clone, Args)]
pub struct ApplyArgs {
    /// Manifest files or directories (*.yaml, *.yml, *.json), or - for stdin.
    #[arg(short = 'f', long = "filename", value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,
    /// Namespace for objects that do not name one (default "default").
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Let the server check everything but store nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// kubectl's line: `deployment.apps/web created`, with ` (dry run)` when nothing was stored.
pub fn outcome_line(
    kind: berth_client::Kind,
    name: &str,
    outcome: Outcome,
    dry_run: bool,
) -> String {
    let suffix = if dry_run { " (server dry run)" } else { "" };
    format!("{} {outcome}{suffix}", table::kind_ref(kind, name))
}

pub async fn run(ctx: &Ctx, a: ApplyArgs, io: &mut Io<'_>) -> anyhow::Result<()> {
    let docs = match berth_proto::manifest::load_documents(&a.files) {
        Ok(docs) => docs,
        Err(errs) => {
            writeln!(io.err, "{errs}")?;
            return Err(anyhow!(
                "{} problem(s) found in the manifests; nothing was applied",
                errs.len()
            ));
        }
    };
    if docs.is_empty() {
        return Err(anyhow!("no objects found in {:?}", a.files));
    }
    let default_ns = a.namespace.as_deref().unwrap_or("default");
    let client = ctx.client()?;
    let total = docs.len();
    let mut failed = 0;
    for doc in docs {
        let mut obj = doc.object;
        if obj.kind.namespaced() && obj.namespace().is_empty() {
            let mut meta = obj.meta();
            meta.namespace = default_ns.to_string();
            obj.set_meta(&meta);
        }
        match client.apply_dyn(&obj, a.dry_run).await {
            Ok((applied, outcome)) => writeln!(
                io.out,
                "{}",
                outcome_line(applied.kind, applied.name(), outcome, a.dry_run)
            )?,
            // No server: nothing else will work either.
            Err(e @ ClientError::Unavailable { .. }) => return Err(e.into()),
            // Like kubectl: report, go on with the other objects, fail at the end.
            Err(e) => {
                failed += 1;
                writeln!(
                    io.err,
                    "error: {}:{}: {}: {e}",
                    doc.file,
                    doc.line,
                    table::kind_ref(obj.kind, obj.name())
                )?;
            }
        }
    }
    if failed > 0 {
        return Err(anyhow!("{failed} of {total} objects could not be applied"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_client::Kind;

    #[test]
    fn outcome_lines_match_kubectl() {
        assert_eq!(
            outcome_line(Kind::Deployment, "web", Outcome::Created, false),
            "deployment.apps/web created"
        );
        assert_eq!(
            outcome_line(Kind::Service, "web", Outcome::Unchanged, true),
            "service/web unchanged (server dry run)"
        );
    }
}
