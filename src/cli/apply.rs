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
it rejects any, none; each rejection is printed as FILE:LINE: KIND/NAME: reason.\n\n--wait: \
after applying, wait for every Deployment of the manifests to finish its rollout; fail at once \
when a new pod crash-loops or cannot pull its image (the pod and reason are printed), or when \
the progress deadline passes.\n\nExit status: 0 applied (--wait: and rolled out); 1 nothing \
applied (stderr says why); 2 bad command line; 3 outcome unknown: the leader changed while the \
apply was in flight, it is safe to apply again; with --wait: 4 --timeout ran out, 5 the rollout \
failed, 6 paused awaiting `berth rollout promote`, 7 aborted or reverted (autoRevert).";

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
    /// Wait for the Deployments' rollouts to complete (see the exit statuses below).
    #[arg(long, conflicts_with = "dry_run")]
    pub wait: bool,
    /// With --wait: give up after this long (e.g. 5m; exit 4); 0 = wait forever.
    #[arg(
        long = "timeout",
        default_value = "0",
        value_parser = super::parse_duration,
        requires = "wait"
    )]
    pub wait_timeout: std::time::Duration,
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

/// Read and check the manifests, and give every namespaced object without a namespace
/// `namespace` (else "default"). Problems are printed to stderr, then one error.
pub fn prepare(
    files: &[PathBuf],
    namespace: Option<&str>,
    io: &mut Io<'_>,
) -> anyhow::Result<(Vec<berth_proto::manifest::Document>, Vec<DynObject>)> {
    let docs = match berth_proto::manifest::load_documents(files) {
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
        return Err(anyhow!("no objects found in {files:?}"));
    }
    let default_ns = namespace.unwrap_or("default");
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
            describe_sources(files),
            size / 1024,
            MAX_APPLY_BYTES / 1024
        ));
    }
    Ok((docs, objects))
}

pub async fn run(ctx: &Ctx, a: ApplyArgs, io: &mut Io<'_>) -> anyhow::Result<()> {
    let (docs, objects) = prepare(&a.files, a.namespace.as_deref(), io)?;
    let client = ctx.client()?;
    let results = client.apply_all(&objects, a.dry_run).await?;
    let total = results.len();
    let mut lines = Vec::with_capacity(total);
    let mut rejected = 0;
    let mut applied = Vec::new();
    for ((doc, obj), result) in docs.iter().zip(&objects).zip(results) {
        match result {
            Ok((object, outcome)) => {
                lines.push(outcome_line(object.kind, object.name(), outcome, a.dry_run));
                applied.push(object);
            }
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
    if a.wait {
        wait_for_rollouts(ctx, &client, &applied, a.wait_timeout, io).await?;
    }
    Ok(())
}

/// `apply --wait`: each applied Deployment in turn, within one overall timeout.
async fn wait_for_rollouts(
    ctx: &Ctx,
    client: &berth_client::Client,
    applied: &[DynObject],
    timeout: std::time::Duration,
    io: &mut Io<'_>,
) -> anyhow::Result<()> {
    let started = tokio::time::Instant::now();
    for obj in applied
        .iter()
        .filter(|o| o.kind == berth_client::Kind::Deployment)
    {
        let d: berth_proto::types::Deployment = obj.to_typed().map_err(|e| {
            anyhow!(
                "the server answered deployment {:?} in a form this client cannot read: {e}",
                obj.name()
            )
        })?;
        let left = if timeout.is_zero() {
            timeout
        } else {
            match timeout.checked_sub(started.elapsed()) {
                Some(l) if !l.is_zero() => l,
                _ => {
                    return Err(super::TimedOut(format!(
                        "timed out after {timeout:?} waiting for the rollouts; deployment {:?} \
                         was not checked: wait longer (--timeout)",
                        obj.name()
                    ))
                    .into())
                }
            }
        };
        let opts = super::rollout::WaitOpts {
            watch: true,
            timeout: left,
            until: Some(super::rollout::Until::Complete),
            fail_fast: true,
        };
        super::rollout::wait_rollout(ctx, client, d, opts, io).await?;
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
