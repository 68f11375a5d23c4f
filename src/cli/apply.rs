//! `berth apply -f FILE|DIR|- [--dry-run]`: parse and check every document first (any
//! error -> print them all, send nothing, exit 1), then send them all in ONE all-or-nothing
//! request: the server stores every object in one raft entry, or, if it rejects any of
//! them, none (each rejection printed with the file:line of its document, exit 1).

use std::path::PathBuf;

use anyhow::anyhow;
use berth_client::{ClientError, DynObject, Outcome};
use clap::Args;

use super::{table, Ctx, Io};

/// `berth apply --help` footer.
pub const HELP: &str = "All or nothing: the server stores every object of one apply, or, if \
it rejects any, none; each rejection is printed as FILE:LINE: KIND/NAME: reason.\n\nExit \
status: 0 applied; 1 nothing applied (stderr says why); 2 bad command line; 3 outcome \
unknown: the leader changed while the apply was in flight, it is safe to apply again.";

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
    let objects: Vec<DynObject> = docs
        .iter()
        .map(|doc| {
            let mut obj = doc.object.clone();
            if obj.kind.namespaced() && obj.namespace().is_empty() {
                let mut meta = obj.meta();
                meta.namespace = default_ns.to_string();
                obj.set_meta(&meta);
            }
            obj
        })
        .collect();
    let size: usize = objects.iter().map(|o| o.to_json().len()).sum();
    if size > MAX_APPLY_BYTES {
        return Err(anyhow!(
            "the {} objects in {} take {} KiB, more than one apply may carry ({} KiB); \
             nothing was applied: apply the files in smaller groups",
            objects.len(),
            describe_sources(&a.files),
            size / 1024,
            MAX_APPLY_BYTES / 1024
        ));
    }
    let client = ctx.client()?;
    let results = client.apply_all(&objects, a.dry_run).await?;
    let total = results.len();
    let mut lines = Vec::with_capacity(total);
    let mut rejected = 0;
    for ((doc, obj), result) in docs.iter().zip(&objects).zip(results) {
        match result {
            Ok((applied, outcome)) => lines.push(outcome_line(
                applied.kind,
                applied.name(),
                outcome,
                a.dry_run,
            )),
            // Fine itself; not applied because another object was rejected.
            Err(ClientError::NotApplied(_)) => {}
            Err(e) => {
                rejected += 1;
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
    if rejected > 0 {
        let what = if rejected == 1 { "was" } else { "were" };
        return Err(anyhow!(
            "nothing was applied: {rejected} of {total} objects {what} rejected; fix {} and \
             apply again",
            if rejected == 1 { "it" } else { "them" }
        ));
    }
    for line in lines {
        writeln!(io.out, "{line}")?;
    }
    Ok(())
}

/// The JSON bytes of all objects one apply may send: the server's request limit, less room
/// for the request's framing.
pub const MAX_APPLY_BYTES: usize = berth_apiserver::service::MAX_REQUEST_BYTES - 64 * 1024;

fn describe_sources(files: &[PathBuf]) -> String {
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    names.join(", ")
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
