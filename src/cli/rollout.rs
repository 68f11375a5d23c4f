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
use berth_proto::enums::{revision, ABORT_ANNOTATION, PROMOTE_ANNOTATION, TEMPLATE_HASH_LABEL};
use berth_proto::types::{condition, Deployment, ReplicaSet};
use berth_proto::{BlueGreenPhase, StrategyType};
use clap::{Args, Subcommand};
use futures::StreamExt;

use super::get::NsArgs;
use super::table::{self, Table};
use super::{parse_duration, parse_kind_and_names, Ctx, Io};

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
    /// Wait until the rollout finishes (or needs a promotion), printing progress.
    Status {
        #[command(flatten)]
        target: Target,
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

/// Where a rollout stands, as `rollout status` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusView {
    /// Still going; the message says what it waits for.
    Waiting(String),
    /// Finished (or paused for a manual promotion): stop waiting, exit 0.
    Done(String),
    /// Cannot finish without help: exit 1.
    Failed(String),
}

/// kubectl's rollout status logic, plus the BlueGreen phases.
pub fn status_view(d: &Deployment) -> StatusView {
    let name = &d.metadata.name;
    let st = d.status.clone().unwrap_or_default();
    if d.metadata.generation > st.observed_generation {
        return StatusView::Waiting("Waiting for deployment spec update to be observed...".into());
    }
    if let Some(c) = condition(&st.conditions, "Progressing") {
        if c.reason == "ProgressDeadlineExceeded" {
            return StatusView::Failed(format!(
                "deployment {name:?} exceeded its progress deadline"
            ));
        }
    }
    let desired = d.spec.replicas.unwrap_or(1);
    let blue_green = is_blue_green(d);
    if blue_green {
        let phase = st
            .blue_green
            .as_ref()
            .and_then(|b| b.phase.parse::<BlueGreenPhase>().ok());
        match phase {
            Some(BlueGreenPhase::Paused) => {
                return StatusView::Done(format!(
                    "deployment {name:?} is paused for promotion: the new revision is ready on \
                     the preview service; run `berth rollout promote deploy/{name}` to switch \
                     traffic (or `berth rollout abort deploy/{name}`)"
                ))
            }
            // Green was dropped (aborted by request, or not ready within the progress
            // deadline): traffic stays on the previous revision.
            Some(BlueGreenPhase::Degraded) => {
                return StatusView::Failed(format!(
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
            r.metadata
                .annotations
                .get(CHANGE_CAUSE_ANNOTATION)
                .cloned()
                .unwrap_or_else(|| "<none>".into()),
        ]);
    }
    t
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
            watch,
            wait_timeout,
        } => {
            let name = target_name(&target)?;
            status(
                ctx,
                &client,
                target.ns.namespace(),
                &name,
                watch,
                wait_timeout,
                io,
            )
            .await
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

async fn status(
    ctx: &Ctx,
    client: &Client,
    ns: &str,
    name: &str,
    watch: bool,
    wait_timeout: Duration,
    io: &mut Io<'_>,
) -> anyhow::Result<()> {
    let d: Deployment = client.get(ns, name).await.map_err(|e| match e {
        ClientError::NotFound(_) => anyhow!("{}", super::get::not_found(Kind::Deployment, name)),
        e => e.into(),
    })?;
    let mut last = String::new();
    let mut report =
        |d: &Deployment, io: &mut Io<'_>| -> anyhow::Result<Option<anyhow::Result<()>>> {
            let view = status_view(d);
            let (msg, outcome) = match &view {
                StatusView::Waiting(m) => (m.clone(), None),
                StatusView::Done(m) => (m.clone(), Some(Ok(()))),
                StatusView::Failed(m) => (m.clone(), Some(Err(anyhow!("{m}")))),
            };
            if msg != last && !matches!(view, StatusView::Failed(_)) {
                writeln!(io.out, "{msg}")?;
                io.out.flush()?;
                last = msg;
            }
            Ok(outcome)
        };
    if let Some(outcome) = report(&d, io)? {
        return outcome;
    }
    if !watch {
        return Ok(());
    }
    let config = watcher::Config::default().namespace(ns);
    let mut events = watcher::watcher::<Deployment>(client.clone(), config);
    let deadline = (!wait_timeout.is_zero()).then(|| tokio::time::Instant::now() + wait_timeout);
    loop {
        let next = async {
            match deadline {
                Some(t) => tokio::time::timeout_at(t, events.next()).await.ok(),
                None => Some(events.next().await),
            }
        };
        let ev = tokio::select! {
            _ = ctx.shutdown.cancelled() => return Ok(()),
            ev = next => ev,
        };
        let objs = match ev {
            None => {
                return Err(super::TimedOut(format!(
                    "timed out after {wait_timeout:?} waiting for deployment {name:?} to roll \
                     out; it is still going: wait longer (--timeout) or see `berth describe \
                     deploy/{name}`"
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
        for d in objs.iter().filter(|d| d.metadata.name == name) {
            if let Some(outcome) = report(d, io).context("writing output")? {
                return outcome;
            }
        }
    }
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
            matches!(status_view(&d), StatusView::Done(m) if m.contains("rollout promote deploy/web"))
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
        let owned = owned_revisions(&d, &[rs(2, "v2"), other, rs(1, "v1")]);
        assert_eq!(
            history_table(&owned).render(),
            "\
REVISION   TEMPLATE-HASH   REPLICAS   IMAGES   CHANGE-CAUSE
1          h1              0          v1       <none>
2          h2              0          v2       <none>
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
