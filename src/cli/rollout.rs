//! `berth rollout status|history|undo|restart|promote|abort deploy/NAME`.
//!
//! The Deployment controller does the work; these commands only write what it reads (the
//! pod template, or the `berth.io/promote` / `berth.io/abort` request annotations) with a
//! compare-and-swap, and read back its status. [`status_view`] is the pure core of
//! `rollout status` (kubectl's wording, plus the blue-green phases).

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use berth_client::runtime::watcher::{self, Event};
use berth_client::{Client, ClientError, Kind};
use berth_proto::enums::{
    revision, ABORT_ANNOTATION, PROMOTE_ANNOTATION, REVERTED_CONDITION, ROLLOUT_FAILED_ANNOTATION,
    TEMPLATE_HASH_LABEL,
};
use berth_proto::types::{condition, Deployment, ReplicaSet};
use berth_proto::{BlueGreenPhase, StrategyType};
use clap::{Args, Subcommand};
use futures::StreamExt;

use super::get::NsArgs;
use super::table::{self, Table};
use super::{exit, parse_duration, parse_kind_and_names, Ctx, Exit, Io};

/// The pod-template annotation `rollout restart` sets (the same key kubectl uses).
pub const RESTARTED_AT_ANNOTATION: &str = "kubectl.kubernetes.io/restartedAt";
/// Free text recorded on a revision, shown by `rollout history`.
pub const CHANGE_CAUSE_ANNOTATION: &str = "kubernetes.io/change-cause";

#[derive(Debug, Clone, Args)]
pub struct RolloutArgs {
    #[command(subcommand)]
    pub command: RolloutCommand,
}

#[derive(Debug, Clone, Args)]
pub struct Target {
    /// deploy/NAME or deploy NAME
    #[arg(required = true, value_name = "deploy/NAME")]
    pub args: Vec<String>,
    #[command(flatten)]
    pub ns: NsArgs,
}

#[derive(Debug, Clone, Subcommand)]
pub enum RolloutCommand {
    /// Wait until the rollout finishes (or needs a promotion), printing progress. Exit 0 done,
    /// 4 timed out, 5 failed, 6 paused awaiting promotion (`--until complete`), 7 aborted or
    /// reverted.
    Status {
        #[command(flatten)]
        target: Target,
        /// Stop at `paused` (a blue-green rollout ready for promotion, or complete) or only
        /// at `complete` (a pause that needs `rollout promote` exits 6). Default: stop at
        /// either, exit 0.
        #[arg(long, value_enum, value_name = "paused|complete")]
        until: Option<Until>,
        /// Print the current state once instead of waiting.
        #[arg(long = "watch", default_value_t = true, action = clap::ArgAction::Set)]
        watch: bool,
        /// Give up after this long (e.g. 5m); 0 = wait forever.
        #[arg(long = "timeout", default_value = "0", value_parser = parse_duration)]
        wait_timeout: Duration,
    },
    /// The revisions of a deployment (its ReplicaSets), oldest first.
    History {
        #[command(flatten)]
        target: Target,
    },
    /// Roll back to the previous revision (or --to-revision N).
    Undo {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        to_revision: Option<i64>,
    },
    /// Replace every pod by starting a new revision with the same spec.
    Restart {
        #[command(flatten)]
        target: Target,
    },
    /// Blue-green: switch the active Service to the new revision now.
    Promote {
        #[command(flatten)]
        target: Target,
    },
    /// Blue-green: drop the new revision and keep traffic on the current one.
    Abort {
        #[command(flatten)]
        target: Target,
    },
}

/// Where `rollout status --until` stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Until {
    /// Paused awaiting promotion, or complete.
    Paused,
    /// Complete only: a pause that needs `rollout promote` ends the wait with exit 6.
    Complete,
}

/// Where a rollout stands, as `rollout status` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusView {
    /// Still going; the message says what it waits for.
    Waiting(String),
    /// Finished: stop waiting, exit 0.
    Done(String),
    /// Blue-green, ready and paused for a promotion. `auto`: an auto-promotion will follow.
    Paused { message: String, auto: bool },
    /// Cannot finish without help (progress deadline exceeded): exit 5.
    Failed(String),
    /// Aborted (blue-green) or reverted (`autoRevert`), back on the previous revision: exit 7.
    Reverted(String),
}

impl StatusView {
    /// What `rollout status --until` (None: the default) does with this view: None = keep
    /// waiting, Some(Ok) = exit 0, Some(Err(code, message)).
    pub fn outcome(&self, until: Option<Until>) -> Option<Result<(), (u8, String)>> {
        match self {
            StatusView::Waiting(_) => None,
            StatusView::Done(_) => Some(Ok(())),
            StatusView::Paused { auto: true, .. } if until == Some(Until::Complete) => None,
            StatusView::Paused { message, .. } => match until {
                Some(Until::Complete) => Some(Err((exit::PAUSED, message.clone()))),
                _ => Some(Ok(())),
            },
            StatusView::Failed(m) => Some(Err((exit::ROLLOUT_FAILED, m.clone()))),
            StatusView::Reverted(m) => Some(Err((exit::REVERTED, m.clone()))),
        }
    }

    pub fn message(&self) -> &str {
        match self {
            StatusView::Waiting(m)
            | StatusView::Done(m)
            | StatusView::Paused { message: m, .. }
            | StatusView::Failed(m)
            | StatusView::Reverted(m) => m,
        }
    }
}

/// kubectl's rollout status logic, plus the BlueGreen phases.
pub fn status_view(d: &Deployment) -> StatusView {
    let name = &d.metadata.name;
    let st = d.status.clone().unwrap_or_default();
    if d.metadata.generation > st.observed_generation {
        return StatusView::Waiting("Waiting for deployment spec update to be observed...".into());
    }
    let desired = d.spec.replicas.unwrap_or(1);
    if let Some(c) = condition(&st.conditions, REVERTED_CONDITION).filter(|c| c.is_true()) {
        // Reverted: done once the previous revision serves at full size again.
        let back =
            st.updated_replicas == 0 && st.replicas == desired && st.available_replicas >= desired;
        return if back {
            StatusView::Reverted(format!(
                "deployment {name:?} rollout failed and was reverted ({}): {}",
                c.reason, c.message
            ))
        } else {
            StatusView::Waiting(format!(
                "Waiting for deployment {name:?} revert to finish: the rollout failed ({}); {} \
                 of {desired} replicas of the previous revision are available...",
                c.reason,
                (st.available_replicas).min(desired)
            ))
        };
    }
    if let Some(c) = condition(&st.conditions, "Progressing") {
        if c.reason == "ProgressDeadlineExceeded" {
            return StatusView::Failed(format!(
                "deployment {name:?} exceeded its progress deadline"
            ));
        }
    }
    let blue_green = is_blue_green(d);
    if blue_green {
        let phase = st
            .blue_green
            .as_ref()
            .and_then(|b| b.phase.parse::<BlueGreenPhase>().ok());
        match phase {
            Some(BlueGreenPhase::Paused) => {
                let auto = d
                    .spec
                    .strategy
                    .as_ref()
                    .and_then(|s| s.blue_green.as_ref())
                    .is_some_and(|bg| bg.auto_promotion_enabled.unwrap_or(true));
                return StatusView::Paused {
                    message: format!(
                        "deployment {name:?} is paused for promotion: the new revision is ready \
                         on the preview service; run `berth rollout promote deploy/{name}` to \
                         switch traffic (or `berth rollout abort deploy/{name}`)"
                    ),
                    auto,
                };
            }
            // Green was dropped (aborted by request, or not ready within the progress
            // deadline): traffic stays on the previous revision.
            Some(BlueGreenPhase::Degraded) => {
                return StatusView::Reverted(format!(
                    "deployment {name:?} rollout was aborted: the new revision was dropped and \
                     traffic stays on the previous one; change the template to try again"
                ))
            }
            Some(BlueGreenPhase::Progressing) => {
                return StatusView::Waiting(format!(
                    "Waiting for deployment {name:?} rollout to finish: new revision coming up \
                     beside the active one ({} of {desired} updated replicas are available)...",
                    st.available_replicas.min(st.updated_replicas)
                ))
            }
            // Traffic is already on the new revision; the previous one is only kept around
            // for an instant undo.
            Some(BlueGreenPhase::Promoting) => {
                let until = st
                    .blue_green
                    .as_ref()
                    .and_then(|b| b.scale_down_at)
                    .map(|t| format!(" until {}", t.format("%H:%M:%S UTC")))
                    .unwrap_or_default();
                return StatusView::Done(format!(
                    "deployment {name:?} successfully rolled out (the previous revision is kept\
                     {until} for `berth rollout undo deploy/{name}`)"
                ));
            }
            // Healthy (or not written yet): the replica counts below tell.
            Some(BlueGreenPhase::Healthy) | None => {}
        }
    }
    if st.updated_replicas < desired {
        return StatusView::Waiting(format!(
            "Waiting for deployment {name:?} rollout to finish: {} out of {desired} new replicas \
             have been updated...",
            st.updated_replicas
        ));
    }
    if st.replicas > st.updated_replicas && !blue_green {
        return StatusView::Waiting(format!(
            "Waiting for deployment {name:?} rollout to finish: {} old replicas are pending \
             termination...",
            st.replicas - st.updated_replicas
        ));
    }
    if st.available_replicas < st.updated_replicas {
        return StatusView::Waiting(format!(
            "Waiting for deployment {name:?} rollout to finish: {} of {} updated replicas are \
             available...",
            st.available_replicas, st.updated_replicas
        ));
    }
    StatusView::Done(format!("deployment {name:?} successfully rolled out"))
}

/// The deployment's ReplicaSets, oldest revision first.
pub fn owned_revisions(d: &Deployment, sets: &[ReplicaSet]) -> Vec<ReplicaSet> {
    let mut owned: Vec<ReplicaSet> = sets
        .iter()
        .filter(|r| {
            r.metadata.owner_references.iter().any(|o| {
                o.kind == "Deployment"
                    && o.name == d.metadata.name
                    && (d.metadata.uid.is_empty() || o.uid == d.metadata.uid)
            })
        })
        .cloned()
        .collect();
    owned.sort_by_key(revision);
    owned
}

/// `rollout history` table.
pub fn history_table(sets: &[ReplicaSet]) -> Table {
    let mut t = Table {
        headers: [
            "REVISION",
            "TEMPLATE-HASH",
            "REPLICAS",
            "IMAGES",
            "STATUS",
            "CHANGE-CAUSE",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        rows: vec![],
    };
    for r in sets {
        // As the revision's pods run them: revisions of the same tag differ by their digests.
        let images: Vec<String> =
            super::describe::pinned_containers(r, &r.spec.template.spec.containers)
                .into_iter()
                .map(|c| c.image)
                .collect();
        t.rows.push(vec![
            revision(r).to_string(),
            r.metadata
                .labels
                .get(TEMPLATE_HASH_LABEL)
                .cloned()
                .unwrap_or_default(),
            r.spec.replicas.to_string(),
            images.join(","),
            revision_status(r),
            r.metadata
                .annotations
                .get(CHANGE_CAUSE_ANNOTATION)
                .cloned()
                .unwrap_or_else(|| "<none>".into()),
        ]);
    }
    t
}

/// `failed (REASON)` for a revision whose rollout failed and was reverted, else `-`.
pub fn revision_status(r: &ReplicaSet) -> String {
    match r.metadata.annotations.get(ROLLOUT_FAILED_ANNOTATION) {
        Some(record) => {
            let reason = record.split_once(':').map(|(r, _)| r).unwrap_or(record);
            format!("failed ({})", reason.trim())
        }
        None => "-".into(),
    }
}

/// Pick the revision to roll back to: `to` if given, else the newest one older than the
/// current (highest) revision.
pub fn undo_target(sets: &[ReplicaSet], to: Option<i64>) -> Result<ReplicaSet, String> {
    let newest = sets.iter().map(revision).max().unwrap_or(0);
    let found = match to {
        Some(n) => sets.iter().find(|r| revision(r) == n),
        None => sets
            .iter()
            .filter(|r| revision(r) < newest)
            .max_by_key(|r| revision(r)),
    };
    found.cloned().ok_or_else(|| match to {
        Some(n) => format!("revision {n} not found; see `berth rollout history`"),
        None => "no previous revision to roll back to".to_string(),
    })
}

fn target_name(t: &Target) -> anyhow::Result<String> {
    let (kind, names) = parse_kind_and_names(&t.args)?;
    if kind != Kind::Deployment {
        bail!("rollout works on deployments, not {}", kind.plural());
    }
    match names.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("which deployment? e.g. berth rollout status deploy/web"),
        _ => bail!("rollout takes one deployment at a time"),
    }
}

const CONFLICT_RETRIES: usize = 5;

/// Read-modify-write a Deployment with CAS, retrying on conflict. `change` returns false to
/// skip the write (nothing to do).
async fn modify(
    client: &Client,
    ns: &str,
    name: &str,
    mut change: impl FnMut(&mut Deployment) -> anyhow::Result<bool>,
) -> anyhow::Result<bool> {
    for _ in 0..=CONFLICT_RETRIES {
        let mut d: Deployment = match client.get(ns, name).await {
            Ok(d) => d,
            Err(ClientError::NotFound(_)) => {
                return Err(anyhow!("{}", super::get::not_found(Kind::Deployment, name)))
            }
            Err(e) => return Err(e.into()),
        };
        if !change(&mut d)? {
            return Ok(false);
        }
        match client.update(&d).await {
            Ok(_) => return Ok(true),
            Err(ClientError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    bail!("deployment {name:?} kept changing; try again")
}

fn is_blue_green(d: &Deployment) -> bool {
    d.spec.strategy_type() == StrategyType::BlueGreen
}

pub async fn run(ctx: &Ctx, a: RolloutArgs, io: &mut Io<'_>) -> anyhow::Result<()> {
    let client = ctx.client()?;
    match a.command {
        RolloutCommand::Status {
            target,
            until,
            watch,
            wait_timeout,
        } => {
            let name = target_name(&target)?;
            let opts = WaitOpts {
                watch,
                timeout: wait_timeout,
                until,
                fail_fast: false,
            };
            status(ctx, &client, target.ns.namespace(), &name, opts, io).await
        }
        RolloutCommand::History { target } => {
            let name = target_name(&target)?;
            let ns = target.ns.namespace();
            let d: Deployment = client.get(ns, &name).await.map_err(|e| match e {
                ClientError::NotFound(_) => {
                    anyhow!("{}", super::get::not_found(Kind::Deployment, &name))
                }
                e => e.into(),
            })?;
            let (sets, _) = client.list::<ReplicaSet>(Some(ns), "").await?;
            let owned = owned_revisions(&d, &sets);
            writeln!(io.out, "{}", table::kind_ref(Kind::Deployment, &name))?;
            if owned.is_empty() {
                writeln!(io.out, "No rollout history found.")?;
            } else {
                io.out
                    .write_all(history_table(&owned).render().as_bytes())?;
            }
            Ok(())
        }
        RolloutCommand::Undo {
            target,
            to_revision,
        } => {
            let name = target_name(&target)?;
            let ns = target.ns.namespace();
            let mut skipped_to = None;
            // The target depends on the current ReplicaSets, so read them inside the retry.
            let mut done = false;
            for _ in 0..=CONFLICT_RETRIES {
                let mut d: Deployment = client.get(ns, &name).await?;
                let (sets, _) = client.list::<ReplicaSet>(Some(ns), "").await?;
                let owned = owned_revisions(&d, &sets);
                let target_rs = undo_target(&owned, to_revision).map_err(|e| anyhow!(e))?;
                let mut template = target_rs.spec.template.clone();
                template.metadata.labels.remove(TEMPLATE_HASH_LABEL);
                if template == d.spec.template {
                    skipped_to = Some(revision(&target_rs));
                    done = true;
                    break;
                }
                d.spec.template = template;
                match client.update(&d).await {
                    Ok(_) => {
                        done = true;
                        break;
                    }
                    Err(ClientError::Conflict { .. }) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            if !done {
                bail!("deployment {name:?} kept changing; try again");
            }
            match skipped_to {
                Some(r) => writeln!(
                    io.out,
                    "{} skipped rollback (current template already matches revision {r})",
                    table::kind_ref(Kind::Deployment, &name)
                )?,
                None => writeln!(
                    io.out,
                    "{} rolled back",
                    table::kind_ref(Kind::Deployment, &name)
                )?,
            }
            Ok(())
        }
        RolloutCommand::Restart { target } => {
            let name = target_name(&target)?;
            let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            modify(&client, target.ns.namespace(), &name, |d| {
                d.spec
                    .template
                    .metadata
                    .annotations
                    .insert(RESTARTED_AT_ANNOTATION.into(), now.clone());
                Ok(true)
            })
            .await?;
            writeln!(
                io.out,
                "{} restarted",
                table::kind_ref(Kind::Deployment, &name)
            )?;
            Ok(())
        }
        RolloutCommand::Promote { target } => {
            request(&client, &target, PROMOTE_ANNOTATION, "promoted", io).await
        }
        RolloutCommand::Abort { target } => {
            request(&client, &target, ABORT_ANNOTATION, "aborted", io).await
        }
    }
}

/// Write a blue-green request annotation for the controller to act on.
async fn request(
    client: &Client,
    target: &Target,
    annotation: &str,
    verb: &str,
    io: &mut Io<'_>,
) -> anyhow::Result<()> {
    let name = target_name(target)?;
    modify(client, target.ns.namespace(), &name, |d| {
        if !is_blue_green(d) {
            bail!(
                "deployment {name:?} uses the {} strategy; promote and abort apply to BlueGreen \
                 deployments",
                d.spec.strategy_type()
            );
        }
        d.metadata
            .annotations
            .insert(annotation.to_string(), "true".into());
        Ok(true)
    })
    .await?;
    writeln!(
        io.out,
        "{} {verb}",
        table::kind_ref(Kind::Deployment, &name)
    )?;
    Ok(())
}

/// How [`wait_rollout`] waits.
#[derive(Debug, Clone, Copy)]
pub struct WaitOpts {
    /// Print the state once instead of waiting.
    pub watch: bool,
    /// Zero: wait forever.
    pub timeout: Duration,
    pub until: Option<Until>,
    /// `apply --wait`: fail at once when a new pod crash-loops or cannot pull its image
    /// (unless the Deployment reverts by itself: then wait for its verdict).
    pub fail_fast: bool,
}

async fn status(
    ctx: &Ctx,
    client: &Client,
    ns: &str,
    name: &str,
    opts: WaitOpts,
    io: &mut Io<'_>,
) -> anyhow::Result<()> {
    let d: Deployment = client.get(ns, name).await.map_err(|e| match e {
        ClientError::NotFound(_) => anyhow!("{}", super::get::not_found(Kind::Deployment, name)),
        e => e.into(),
    })?;
    wait_rollout(ctx, client, d, opts, io).await
}

/// A new pod that shows the revision is broken (crash loop, image errors): `apply --wait`
/// fails on the first one without waiting for the progress deadline.
pub fn broken_pod(p: &berth_proto::types::Pod) -> Option<String> {
    let u = berth_controllers::deployment::autorevert::unhealthy(p)?;
    if u.reason == "ReadinessFailing" {
        return None;
    }
    let st = p.status.as_ref()?;
    let detail = st
        .init_container_statuses
        .iter()
        .chain(st.container_statuses.iter())
        .find_map(|c| {
            let w = c.state.waiting.as_ref().filter(|w| w.reason == u.reason)?;
            Some(format!(
                "container {:?}{}{}",
                c.name,
                if w.message.is_empty() { "" } else { ": " },
                w.message
            ))
        })
        .unwrap_or_default();
    let hint = if u.reason == "CrashLoopBackOff" {
        format!("see `berth logs {} -p`", p.metadata.name)
    } else {
        format!("see `berth describe pod {}`", p.metadata.name)
    };
    Some(format!(
        "pod {} is {}{}{detail}; {hint}",
        p.metadata.name,
        u.reason,
        if detail.is_empty() { "" } else { ", " }
    ))
}

/// Wait for `d`'s rollout as `rollout status` and `apply --wait` do, ending with the exit
/// status of [`StatusView::outcome`] (wrapped in [`Exit`]) or [`super::TimedOut`].
pub async fn wait_rollout(
    ctx: &Ctx,
    client: &Client,
    d: Deployment,
    opts: WaitOpts,
    io: &mut Io<'_>,
) -> anyhow::Result<()> {
    let ns = d.metadata.namespace.clone();
    let name = d.metadata.name.clone();
    let mut last = String::new();
    let mut report =
        |d: &Deployment, io: &mut Io<'_>| -> anyhow::Result<Option<anyhow::Result<()>>> {
            let view = status_view(d);
            let outcome = view.outcome(opts.until);
            let msg = view.message().to_string();
            let quiet = matches!(outcome, Some(Err(_)));
            if msg != last && !quiet {
                writeln!(io.out, "{msg}")?;
                io.out.flush()?;
                last = msg;
            }
            Ok(outcome.map(|o| o.map_err(|(code, m)| Exit::new(code, m).into())))
        };
    if let Some(outcome) = report(&d, io)? {
        return outcome;
    }
    if !opts.watch {
        return Ok(());
    }
    let config = watcher::Config::default().namespace(&ns);
    let mut events = watcher::watcher::<Deployment>(client.clone(), config);
    let deadline = (!opts.timeout.is_zero()).then(|| tokio::time::Instant::now() + opts.timeout);
    let reverts = berth_controllers::deployment::autorevert::settings(&d).is_some();
    let mut current = d;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let next = async {
            match deadline {
                Some(t) => tokio::time::timeout_at(t, events.next()).await.ok(),
                None => Some(events.next().await),
            }
        };
        let ev = tokio::select! {
            _ = ctx.shutdown.cancelled() => return Ok(()),
            _ = tick.tick(), if opts.fail_fast && !reverts => {
                if let Some(why) = new_pods_broken(client, &current).await? {
                    return Err(Exit::new(
                        exit::ROLLOUT_FAILED,
                        format!("deployment {name:?} rollout failed: {why}"),
                    )
                    .into());
                }
                continue;
            }
            ev = next => ev,
        };
        let objs = match ev {
            None => {
                return Err(super::TimedOut(format!(
                    "timed out after {:?} waiting for deployment {name:?} to roll out; it is \
                     still going: wait longer (--timeout) or see `berth describe \
                     deploy/{name}`",
                    opts.timeout
                ))
                .into())
            }
            Some(None) => bail!("the watch ended unexpectedly"),
            Some(Some(Err(e))) => {
                writeln!(io.err, "warning: watch interrupted ({e}); retrying")?;
                continue;
            }
            Some(Some(Ok(Event::Applied(d)))) => vec![d],
            Some(Some(Ok(Event::Deleted(d)))) if d.metadata.name == name => {
                bail!("deployment {name:?} was deleted")
            }
            Some(Some(Ok(Event::Deleted(_)))) => vec![],
            Some(Some(Ok(Event::Restarted(all)))) => all,
        };
        for d in objs.into_iter().filter(|d| d.metadata.name == name) {
            if let Some(outcome) = report(&d, io).context("writing output")? {
                return outcome;
            }
            current = d;
        }
    }
}

/// The first broken pod of `d`'s current template, if any.
async fn new_pods_broken(client: &Client, d: &Deployment) -> anyhow::Result<Option<String>> {
    let hash = berth_controllers::deployment::template_hash(&d.spec.template);
    let (pods, _) = client
        .list::<berth_proto::types::Pod>(
            Some(&d.metadata.namespace),
            &format!("{TEMPLATE_HASH_LABEL}={hash}"),
        )
        .await?;
    let mut found: Vec<(String, String)> = pods
        .iter()
        .filter_map(|p| Some((p.metadata.name.clone(), broken_pod(p)?)))
        .collect();
    found.sort();
    Ok(found.into_iter().next().map(|(_, why)| why))
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::enums::REVISION_ANNOTATION;
    use berth_proto::types::*;

    fn deploy(replicas: i32, st: DeploymentStatus) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                name: "web".into(),
                generation: 2,
                ..Default::default()
            },
            spec: DeploymentSpec {
                replicas: Some(replicas),
                ..Default::default()
            },
            status: Some(DeploymentStatus {
                observed_generation: 2,
                ..st
            }),
            ..Default::default()
        }
    }

    #[test]
    fn status_follows_kubectl_wording() {
        let mut d = deploy(3, DeploymentStatus::default());
        d.metadata.generation = 3;
        assert_eq!(
            status_view(&d),
            StatusView::Waiting("Waiting for deployment spec update to be observed...".into())
        );
        let d = deploy(
            3,
            DeploymentStatus {
                replicas: 4,
                updated_replicas: 1,
                ..Default::default()
            },
        );
        assert_eq!(
            status_view(&d),
            StatusView::Waiting(
                "Waiting for deployment \"web\" rollout to finish: 1 out of 3 new replicas have \
                 been updated..."
                    .into()
            )
        );
        let d = deploy(
            3,
            DeploymentStatus {
                replicas: 4,
                updated_replicas: 3,
                ..Default::default()
            },
        );
        assert!(
            matches!(status_view(&d), StatusView::Waiting(m) if m.contains("1 old replicas are pending termination"))
        );
        let d = deploy(
            3,
            DeploymentStatus {
                replicas: 3,
                updated_replicas: 3,
                available_replicas: 2,
                ..Default::default()
            },
        );
        assert!(
            matches!(status_view(&d), StatusView::Waiting(m) if m.contains("2 of 3 updated replicas are available"))
        );
        let d = deploy(
            3,
            DeploymentStatus {
                replicas: 3,
                updated_replicas: 3,
                available_replicas: 3,
                ..Default::default()
            },
        );
        assert_eq!(
            status_view(&d),
            StatusView::Done("deployment \"web\" successfully rolled out".into())
        );
    }

    #[test]
    fn progress_deadline_and_blue_green_pause_end_the_wait() {
        let d = deploy(
            3,
            DeploymentStatus {
                conditions: vec![Condition {
                    type_: "Progressing".into(),
                    status: "False".into(),
                    reason: "ProgressDeadlineExceeded".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
        );
        assert!(
            matches!(status_view(&d), StatusView::Failed(m) if m.contains("progress deadline"))
        );
        let mut d = deploy(
            3,
            DeploymentStatus {
                replicas: 6,
                updated_replicas: 3,
                available_replicas: 6,
                blue_green: Some(BlueGreenStatus {
                    phase: BlueGreenPhase::Paused.into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        d.spec.strategy = Some(DeploymentStrategy {
            type_: Some(StrategyType::BlueGreen.into()),
            ..Default::default()
        });
        assert!(
            matches!(status_view(&d), StatusView::Paused { message, .. } if message.contains("rollout promote deploy/web"))
        );
    }

    #[test]
    fn until_decides_what_a_pause_means_and_each_end_has_its_exit_status() {
        let paused = |auto| StatusView::Paused {
            message: "paused".into(),
            auto,
        };
        type Case = (StatusView, Option<Until>, Option<Result<(), u8>>);
        let cases: Vec<Case> = vec![
            (StatusView::Waiting("w".into()), None, None),
            (StatusView::Done("d".into()), None, Some(Ok(()))),
            (
                StatusView::Done("d".into()),
                Some(Until::Paused),
                Some(Ok(())),
            ),
            (
                StatusView::Done("d".into()),
                Some(Until::Complete),
                Some(Ok(())),
            ),
            (paused(false), None, Some(Ok(()))),
            (paused(false), Some(Until::Paused), Some(Ok(()))),
            (
                paused(false),
                Some(Until::Complete),
                Some(Err(exit::PAUSED)),
            ),
            // An auto-promotion will follow: waiting for complete keeps waiting.
            (paused(true), Some(Until::Complete), None),
            (paused(true), Some(Until::Paused), Some(Ok(()))),
            (
                StatusView::Failed("f".into()),
                None,
                Some(Err(exit::ROLLOUT_FAILED)),
            ),
            (
                StatusView::Reverted("r".into()),
                Some(Until::Complete),
                Some(Err(exit::REVERTED)),
            ),
        ];
        for (view, until, want) in cases {
            let got = view.outcome(until).map(|r| r.map_err(|(c, _)| c));
            assert_eq!(got, want, "{view:?} --until {until:?}");
        }
    }

    #[test]
    fn a_reverted_rollout_waits_for_the_old_side_then_reports_reverted() {
        let reverted = Condition {
            type_: REVERTED_CONDITION.into(),
            status: "True".into(),
            reason: "CrashLoopBackOff".into(),
            message: "Rollout of revision 2 failed".into(),
            ..Default::default()
        };
        let d = deploy(
            3,
            DeploymentStatus {
                replicas: 4,
                updated_replicas: 1,
                available_replicas: 2,
                conditions: vec![reverted.clone()],
                ..Default::default()
            },
        );
        assert!(
            matches!(status_view(&d), StatusView::Waiting(m) if m.contains("revert to finish") && m.contains("CrashLoopBackOff")),
            "{:?}",
            status_view(&d)
        );
        let d = deploy(
            3,
            DeploymentStatus {
                replicas: 3,
                updated_replicas: 0,
                available_replicas: 3,
                conditions: vec![reverted],
                ..Default::default()
            },
        );
        assert!(
            matches!(status_view(&d), StatusView::Reverted(m) if m.contains("reverted (CrashLoopBackOff)")),
            "{:?}",
            status_view(&d)
        );
    }

    fn rs(rev: i64, image: &str) -> ReplicaSet {
        ReplicaSet {
            metadata: ObjectMeta {
                name: format!("web-{rev}"),
                annotations: [(REVISION_ANNOTATION.to_string(), rev.to_string())].into(),
                labels: [(TEMPLATE_HASH_LABEL.to_string(), format!("h{rev}"))].into(),
                owner_references: vec![OwnerReference {
                    kind: "Deployment".into(),
                    name: "web".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
            spec: ReplicaSetSpec {
                template: PodTemplateSpec {
                    spec: PodSpec {
                        containers: vec![Container {
                            name: "app".into(),
                            image: image.into(),
                            ..Default::default()
                        }],
                        ..Default::default()
                    },
                    ..Default::default()
                },
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn undo_picks_previous_revision_or_the_named_one() {
        let sets = vec![rs(1, "v1"), rs(3, "v3"), rs(2, "v2")];
        assert_eq!(revision(&undo_target(&sets, None).expect("prev")), 2);
        assert_eq!(revision(&undo_target(&sets, Some(1)).expect("one")), 1);
        assert!(undo_target(&sets, Some(9))
            .expect_err("missing")
            .contains("revision 9 not found"));
        assert!(undo_target(&sets[..1], None).is_err());
    }

    #[test]
    fn history_lists_owned_revisions_oldest_first() {
        let d = Deployment {
            metadata: ObjectMeta {
                name: "web".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        let mut other = rs(5, "x");
        other.metadata.owner_references[0].name = "api".into();
        let mut failed = rs(2, "v2");
        failed.metadata.annotations.insert(
            ROLLOUT_FAILED_ANNOTATION.into(),
            "CrashLoopBackOff: pods web-2-a".into(),
        );
        let owned = owned_revisions(&d, &[failed, other, rs(1, "v1")]);
        assert_eq!(
            history_table(&owned).render(),
            "\
REVISION   TEMPLATE-HASH   REPLICAS   IMAGES   STATUS                      CHANGE-CAUSE
1          h1              0          v1       -                           <none>
2          h2              0          v2       failed (CrashLoopBackOff)   <none>
"
        );
    }

    #[test]
    fn history_shows_each_revisions_pinned_digest() {
        let (a, b) = (
            berth_proto::image::sha256_digest(b"a"),
            berth_proto::image::sha256_digest(b"b"),
        );
        let pinned = |rev: i64, digest: &str| {
            let mut r = rs(rev, "web:1");
            r.metadata.annotations.insert(
                berth_proto::image::IMAGE_DIGESTS_ANNOTATION.into(),
                format!(r#"{{"app":"web:1@{digest}"}}"#),
            );
            r
        };
        let text = history_table(&[pinned(1, &a), pinned(2, &b), rs(3, "web:1")]).render();
        assert!(text.contains(&format!("web:1@{a} ")), "{text}");
        assert!(text.contains(&format!("web:1@{b} ")), "{text}");
        assert!(
            text.contains("\n3          h3              0          web:1 "),
            "{text}"
        );
    }
}
