//! `berth get KIND [NAME..] [-n NS | -A] [-l SELECTOR] [-o yaml|json|wide|name] [-w]`

use anyhow::{anyhow, Context};
use berth_client::runtime::watcher::{self, DynSource, Event};
use berth_client::{ClientError, DynObject, Kind};
use clap::{Args, ValueEnum};
use futures::StreamExt;

use super::table::{self, RowOptions};
use super::{parse_kind_and_names, Ctx, Io};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Yaml,
    Json,
    Wide,
    Name,
}

/// Namespace selection shared by commands.
#[derive(Debug, Clone, Args)]
pub struct NsArgs {
    /// Namespace (default "default").
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// All namespaces.
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    pub all_namespaces: bool,
}

impl NsArgs {
    pub fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or("default")
    }

    /// The namespace to list in for `kind` (None = all).
    pub fn list_scope(&self, kind: Kind) -> Option<String> {
        if self.all_namespaces || !kind.namespaced() {
            None
        } else {
            Some(self.namespace().to_string())
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct GetArgs {
    /// KIND [NAME..] or KIND/NAME..
    #[arg(required = true, value_name = "KIND [NAME]..")]
    pub args: Vec<String>,
    #[command(flatten)]
    pub ns: NsArgs,
    /// Label selector, e.g. app=web,tier!=db
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<OutputFormat>,
    /// After listing, keep printing changes until Ctrl-C.
    #[arg(short = 'w', long)]
    pub watch: bool,
    /// Add a LABELS column.
    #[arg(long)]
    pub show_labels: bool,
}

impl GetArgs {
    /// Table options from the flags.
    pub fn row_options(&self) -> RowOptions {
        RowOptions {
            wide: self.output == Some(OutputFormat::Wide),
            all_namespaces: self.ns.all_namespaces,
            show_labels: self.show_labels,
        }
    }
}

/// `kubectl get` error text for a missing object.
pub fn not_found(kind: Kind, name: &str) -> String {
    format!(
        "{} {name:?} not found",
        table::kind_resource(kind).replacen(&kind.as_str().to_ascii_lowercase(), kind.plural(), 1)
    )
}

/// Objects as YAML documents that `berth apply -f` accepts back.
pub fn to_yaml(objs: &[DynObject]) -> anyhow::Result<String> {
    let mut out = String::new();
    for (i, o) in objs.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&serde_yaml_ng::to_string(&o.value)?);
    }
    Ok(out)
}

/// One object as JSON, or several as a kubectl-style `List`.
pub fn to_json(objs: &[DynObject], single: bool) -> anyhow::Result<String> {
    let v = if single && objs.len() == 1 {
        objs[0].value.clone()
    } else {
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "List",
            "items": objs.iter().map(|o| o.value.clone()).collect::<Vec<_>>(),
        })
    };
    Ok(format!("{}\n", serde_json::to_string_pretty(&v)?))
}

/// Render `objs` in the requested format.
pub fn render(
    kind: Kind,
    objs: &[DynObject],
    output: Option<OutputFormat>,
    opts: RowOptions,
    single: bool,
) -> anyhow::Result<String> {
    Ok(match output {
        Some(OutputFormat::Yaml) => to_yaml(objs)?,
        Some(OutputFormat::Json) => to_json(objs, single)?,
        Some(OutputFormat::Name) => objs
            .iter()
            .map(|o| format!("{}\n", table::kind_ref(kind, o.name())))
            .collect(),
        Some(OutputFormat::Wide) | None => {
            let opts = RowOptions {
                wide: output == Some(OutputFormat::Wide),
                ..opts
            };
            table::rows(kind, objs, chrono::Utc::now(), opts)
                .map_err(|e| anyhow!("cannot show {kind}: {e}"))?
                .render()
        }
    })
}

/// `deploy,svc` (or `all`) -> the kinds, when the first argument names several.
pub fn split_kinds(args: &[String]) -> anyhow::Result<Option<Vec<Kind>>> {
    let Some(first) = args.first() else {
        return Ok(None);
    };
    if first.eq_ignore_ascii_case("all") {
        if args.len() > 1 {
            return Err(anyhow!("`get all` takes no names"));
        }
        // kubectl's "all": the workload kinds users usually look at.
        return Ok(Some(vec![
            Kind::Pod,
            Kind::Service,
            Kind::Deployment,
            Kind::ReplicaSet,
        ]));
    }
    if !first.contains(',') || first.contains('/') {
        return Ok(None);
    }
    if args.len() > 1 {
        return Err(anyhow!(
            "names need a single resource type: use e.g. `berth get deploy web`"
        ));
    }
    let kinds = first
        .split(',')
        .filter(|k| !k.trim().is_empty())
        .map(|k| super::parse_kind(k.trim()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Some(kinds))
}

/// `get KIND1,KIND2`: one table per kind (names as KIND/NAME), or all objects together for
/// -o yaml|json|name.
async fn run_many(ctx: &Ctx, kinds: &[Kind], a: &GetArgs, io: &mut Io<'_>) -> anyhow::Result<()> {
    if a.watch {
        return Err(anyhow!("-w needs a single resource type"));
    }
    let client = ctx.client()?;
    let selector = a.selector.clone().unwrap_or_default();
    let mut all = Vec::new();
    let mut tables = Vec::new();
    for &kind in kinds {
        let scope = a.ns.list_scope(kind);
        let (list, _) = client
            .list_dyn(kind, scope.as_deref(), &selector)
            .await
            .with_context(|| format!("cannot list {}", kind.plural()))?;
        if list.is_empty() {
            continue;
        }
        if matches!(a.output, None | Some(OutputFormat::Wide)) {
            let mut t = table::rows(kind, &list, chrono::Utc::now(), a.row_options())
                .map_err(|e| anyhow!("cannot show {kind}: {e}"))?;
            if let Some(col) = t.headers.iter().position(|h| h == "NAME") {
                for r in &mut t.rows {
                    r[col] = table::kind_ref(kind, &r[col]);
                }
            }
            tables.push(t.render());
        }
        all.extend(list);
    }
    if all.is_empty() && !matches!(a.output, Some(OutputFormat::Json | OutputFormat::Yaml)) {
        writeln!(io.err, "No resources found.")?;
        return Ok(());
    }
    let text = match a.output {
        Some(OutputFormat::Yaml) => to_yaml(&all)?,
        Some(OutputFormat::Json) => to_json(&all, false)?,
        Some(OutputFormat::Name) => all
            .iter()
            .map(|o| format!("{}\n", table::kind_ref(o.kind, o.name())))
            .collect(),
        Some(OutputFormat::Wide) | None => tables.join("\n"),
    };
    io.out.write_all(text.as_bytes())?;
    Ok(())
}

pub async fn run(ctx: &Ctx, a: GetArgs, io: &mut Io<'_>) -> anyhow::Result<()> {
    if let Some(kinds) = split_kinds(&a.args)? {
        return run_many(ctx, &kinds, &a, io).await;
    }
    let (kind, names) = parse_kind_and_names(&a.args)?;
    let client = ctx.client()?;
    let selector = a.selector.clone().unwrap_or_default();
    if a.watch {
        return watch(ctx, kind, &names, &a, io).await;
    }
    let mut objs = Vec::new();
    let mut missing = 0;
    if names.is_empty() {
        let scope = a.ns.list_scope(kind);
        let (list, _) = client
            .list_dyn(kind, scope.as_deref(), &selector)
            .await
            .with_context(|| format!("cannot list {}", kind.plural()))?;
        objs = list;
        if objs.is_empty() && !matches!(a.output, Some(OutputFormat::Json | OutputFormat::Yaml)) {
            match scope {
                Some(ns) => writeln!(io.err, "No resources found in {ns} namespace.")?,
                None => writeln!(io.err, "No resources found.")?,
            }
            return Ok(());
        }
    } else {
        for name in &names {
            match client.get_dyn(kind, a.ns.namespace(), name).await {
                Ok(o) => objs.push(o),
                Err(ClientError::NotFound(_)) => {
                    missing += 1;
                    writeln!(
                        io.err,
                        "Error from server (NotFound): {}",
                        not_found(kind, name)
                    )?;
                }
                Err(e) => return Err(e).with_context(|| format!("cannot get {kind} {name:?}")),
            }
        }
    }
    if !objs.is_empty() && kind == Kind::Endpoints && a.output == Some(OutputFormat::Wide) {
        // Per-node programming of each Endpoints (the traffic-switch barrier's view).
        let (nodes, _) = client
            .list::<berth_proto::types::Node>(None, "")
            .await
            .context("cannot list nodes")?;
        let eps: Vec<berth_proto::types::Endpoints> = objs
            .iter()
            .map(|o| o.to_typed())
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow!("cannot show endpoints: {e}"))?;
        let t = table::endpoints_table_wide(&eps, &nodes, chrono::Utc::now());
        io.out.write_all(t.render().as_bytes())?;
    } else if !objs.is_empty() {
        let single = names.len() == 1;
        io.out
            .write_all(render(kind, &objs, a.output, a.row_options(), single)?.as_bytes())?;
    }
    if missing > 0 {
        return Err(anyhow!(
            "{missing} of {} {} not found",
            names.len(),
            kind.plural()
        ));
    }
    Ok(())
}

/// `get -w`: print the current state, then every change, until Ctrl-C.
async fn watch(
    ctx: &Ctx,
    kind: Kind,
    names: &[String],
    a: &GetArgs,
    io: &mut Io<'_>,
) -> anyhow::Result<()> {
    let client = ctx.client()?;
    let config = watcher::Config {
        namespace: a.ns.list_scope(kind),
        label_selector: a.selector.clone().unwrap_or_default(),
    };
    let src = DynSource::new(client, kind, config);
    let mut events = Box::pin(watcher::watcher_with(src, watcher::Backoff::default()));
    let wanted = |o: &DynObject| names.is_empty() || names.iter().any(|n| n == o.name());
    let opts = a.row_options();
    let mut printer = WatchPrinter::default();
    loop {
        let ev = tokio::select! {
            _ = ctx.shutdown.cancelled() => return Ok(()),
            ev = events.next() => ev,
        };
        let (objs, deleted): (Vec<DynObject>, bool) = match ev {
            None => return Ok(()),
            Some(Err(e)) => {
                writeln!(io.err, "warning: watch interrupted ({e}); retrying")?;
                continue;
            }
            Some(Ok(Event::Applied(o))) => (vec![o], false),
            Some(Ok(Event::Deleted(o))) => (vec![o], true),
            Some(Ok(Event::Restarted(all))) => (all, false),
        };
        let objs: Vec<DynObject> = objs.into_iter().filter(|o| wanted(o)).collect();
        if objs.is_empty() {
            continue;
        }
        let text = match a.output {
            Some(OutputFormat::Yaml) => format!("---\n{}", to_yaml(&objs)?),
            Some(OutputFormat::Json) => objs
                .iter()
                .map(|o| serde_json::to_string(&o.value).map(|s| s + "\n"))
                .collect::<Result<String, _>>()?,
            Some(OutputFormat::Name) => {
                render(kind, &objs, a.output, RowOptions::default(), false)?
            }
            Some(OutputFormat::Wide) | None => printer
                .print(kind, &objs, deleted, chrono::Utc::now(), opts)
                .map_err(|e| anyhow!("cannot show {kind}: {e}"))?,
        };
        io.out.write_all(text.as_bytes())?;
        io.out.flush()?;
    }
}

/// Table output for `get -w`: the header once, then one row per change, skipping rows
/// that look exactly like the object's previous one (status-only changes that no column
/// shows), and marking deletions in the STATUS column (or after the name).
#[derive(Debug, Default)]
pub struct WatchPrinter {
    widths: Option<Vec<usize>>,
    last: std::collections::HashMap<(String, String), Vec<String>>,
}

impl WatchPrinter {
    pub fn print(
        &mut self,
        kind: Kind,
        objs: &[DynObject],
        deleted: bool,
        now: chrono::DateTime<chrono::Utc>,
        opts: RowOptions,
    ) -> Result<String, String> {
        let mut out = String::new();
        // Events in time order (the initial list comes in key order), like `get events`.
        let mut objs: Vec<&DynObject> = objs.iter().collect();
        if kind == Kind::Event {
            objs.sort_by_key(|o| {
                o.to_typed::<berth_proto::types::Event>()
                    .ok()
                    .and_then(|e| table::event_time(&e))
            });
        }
        // Size the columns for the whole first batch (the initial list), not its first row.
        let mut first_widths = match self.widths {
            None => {
                let all: Vec<DynObject> = objs.iter().map(|o| (*o).clone()).collect();
                Some(table::rows(kind, &all, now, opts)?.widths_at_least(8))
            }
            Some(_) => None,
        };
        for o in objs {
            let mut t = table::rows(kind, std::slice::from_ref(o), now, opts)?;
            let Some(mut row) = t.rows.pop() else {
                continue;
            };
            if deleted {
                match t.headers.iter().position(|h| h == "STATUS") {
                    Some(i) => row[i] = "Deleted".to_string(),
                    None => {
                        if let Some(i) = t.headers.iter().position(|h| h == "NAME") {
                            row[i].push_str(" (deleted)");
                        }
                    }
                }
            }
            let key = (o.namespace().to_string(), o.name().to_string());
            if self.last.get(&key) == Some(&row) {
                continue;
            }
            if deleted {
                self.last.remove(&key);
            } else {
                self.last.insert(key, row.clone());
            }
            t.rows = vec![row];
            if self.widths.is_none() {
                // Leave some slack so later rows with longer values stay aligned.
                let w = first_widths.take().unwrap_or_else(|| t.widths_at_least(8));
                out.push_str(&t.render_header_with(&w));
                self.widths = Some(w);
            }
            out.push_str(&t.render_rows_with(self.widths.as_deref().unwrap_or_default()));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::types::{Deployment, ObjectMeta};

    #[test]
    fn several_kinds_parse_from_a_comma_list_or_all() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            split_kinds(&v(&["deploy,svc"])).expect("ok"),
            Some(vec![Kind::Deployment, Kind::Service])
        );
        assert_eq!(
            split_kinds(&v(&["all"])).expect("ok").map(|k| k.len()),
            Some(4)
        );
        assert_eq!(split_kinds(&v(&["deploy", "web"])).expect("ok"), None);
        assert!(split_kinds(&v(&["deploy,svc", "web"])).is_err());
        assert!(split_kinds(&v(&["deploy,bogus"])).is_err());
    }

    #[test]
    fn watch_rows_skip_repeats_and_mark_deletions() {
        use berth_proto::types::{Pod, PodStatus};
        let pod = |phase: &str, rv: u64| {
            DynObject::from_typed(&Pod {
                metadata: ObjectMeta {
                    name: "p".into(),
                    namespace: "default".into(),
                    resource_version: rv,
                    ..Default::default()
                },
                status: Some(PodStatus {
                    phase: phase.into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
        };
        let now = chrono::Utc::now();
        let opts = RowOptions::default();
        let mut w = WatchPrinter::default();
        let first = w
            .print(Kind::Pod, &[pod("Pending", 1)], false, now, opts)
            .expect("rows");
        assert!(first.starts_with("NAME "), "{first}");
        assert_eq!(first.lines().count(), 2);
        // Same columns, newer resourceVersion: nothing to show.
        let same = w
            .print(Kind::Pod, &[pod("Pending", 2)], false, now, opts)
            .expect("rows");
        assert_eq!(same, "");
        let running = w
            .print(Kind::Pod, &[pod("Running", 3)], false, now, opts)
            .expect("rows");
        assert!(running.contains("Running"), "{running}");
        let gone = w
            .print(Kind::Pod, &[pod("Running", 3)], true, now, opts)
            .expect("rows");
        assert!(gone.contains("Deleted"), "{gone}");
    }

    #[test]
    fn watch_events_print_in_time_order_with_columns_sized_for_the_initial_list() {
        use berth_proto::types::{Event as KEvent, ObjectReference};
        let now = chrono::Utc::now();
        let ev = |name: &str, secs_ago: i64, reason: &str| {
            DynObject::from_typed(&KEvent {
                metadata: ObjectMeta {
                    name: name.into(),
                    namespace: "default".into(),
                    ..Default::default()
                },
                involved_object: ObjectReference {
                    kind: "Deployment".into(),
                    name: "hello".into(),
                    ..Default::default()
                },
                reason: reason.into(),
                message: "m".into(),
                type_: "Normal".into(),
                last_timestamp: Some(now - chrono::Duration::seconds(secs_ago)),
                ..Default::default()
            })
        };
        let mut w = WatchPrinter::default();
        let opts = RowOptions::default();
        // The initial list arrives in key order, not time order.
        let first = w
            .print(
                Kind::Event,
                &[ev("a", 5, "Created"), ev("b", 30, "ScalingReplicaSet")],
                false,
                now,
                opts,
            )
            .expect("rows");
        let lines: Vec<&str> = first.lines().collect();
        assert_eq!(lines.len(), 3, "{first}");
        assert!(lines[1].starts_with("30s "), "{first}");
        assert!(lines[2].starts_with("5s "), "{first}");
        assert!(
            lines[1].contains("ScalingReplicaSet   deployment/hello"),
            "{first}"
        );
        // A later row with a longer value than any column still has a gap.
        let later = w
            .print(
                Kind::Event,
                &[ev("c", 0, "AVeryLongReasonThatOverflowsItsColumn")],
                false,
                now,
                opts,
            )
            .expect("rows");
        assert!(
            later.contains("AVeryLongReasonThatOverflowsItsColumn   deployment/hello"),
            "{later}"
        );
    }

    #[test]
    fn not_found_message_uses_plural_resource() {
        assert_eq!(
            not_found(Kind::Deployment, "web"),
            "deployments.apps \"web\" not found"
        );
        assert_eq!(not_found(Kind::Pod, "x"), "pods \"x\" not found");
    }

    #[test]
    fn yaml_of_several_objects_is_multi_document() {
        let d = |n: &str| {
            DynObject::from_typed(&Deployment {
                metadata: ObjectMeta {
                    name: n.into(),
                    namespace: "default".into(),
                    ..Default::default()
                },
                ..Default::default()
            })
        };
        let y = to_yaml(&[d("a"), d("b")]).expect("yaml");
        assert_eq!(y.matches("---\n").count(), 1);
        assert!(y.starts_with("apiVersion: apps/v1\n"), "{y}");
        let names = render(
            Kind::Deployment,
            &[d("a"), d("b")],
            Some(OutputFormat::Name),
            RowOptions::default(),
            false,
        )
        .expect("names");
        assert_eq!(names, "deployment.apps/a\ndeployment.apps/b\n");
    }
}
