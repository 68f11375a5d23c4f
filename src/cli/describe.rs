//! `berth describe KIND NAME`: a human summary of one object, its conditions, related
//! objects and the events about it. Formatting is pure ([`describe`]); [`run`] fetches.

use std::fmt::Write as _;

use anyhow::{anyhow, bail, Context};
use berth_client::{Client, ClientError, DynObject, Kind};
use berth_proto::types::*;
use chrono::{DateTime, Utc};
use clap::Args;

use super::get::{not_found, NsArgs};
use super::table::{self, age, Table};
use super::{parse_kind_and_names, Ctx, Io};

#[derive(Debug, Clone, Args)]
pub struct DescribeArgs {
    /// KIND NAME.. or KIND/NAME..
    #[arg(required = true, value_name = "KIND NAME")]
    pub args: Vec<String>,
    #[command(flatten)]
    pub ns: NsArgs,
}

/// Related objects shown with the main one.
#[derive(Debug, Default)]
pub struct Related {
    pub events: Vec<Event>,
    /// Service: its Endpoints.
    pub endpoints: Option<Endpoints>,
    /// Deployment: its ReplicaSets.
    pub replicasets: Vec<ReplicaSet>,
    /// Node: pods bound to it.
    pub pods: Vec<Pod>,
    /// Endpoints: the nodes, for what each node's proxy has programmed.
    pub nodes: Vec<Node>,
}

fn kv(out: &mut String, key: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "{:<20}{value}", format!("{key}:"));
}

fn map_lines(out: &mut String, key: &str, m: &std::collections::BTreeMap<String, String>) {
    if m.is_empty() {
        kv(out, key, "<none>");
        return;
    }
    for (i, (k, v)) in m.iter().enumerate() {
        let label = if i == 0 {
            format!("{key}:")
        } else {
            String::new()
        };
        let _ = writeln!(out, "{label:<20}{k}={v}");
    }
}

fn meta_lines(out: &mut String, m: &ObjectMeta, namespaced: bool) {
    kv(out, "Name", &m.name);
    if namespaced {
        kv(out, "Namespace", &m.namespace);
    }
    map_lines(out, "Labels", &m.labels);
    map_lines(out, "Annotations", &m.annotations);
    kv(
        out,
        "CreationTimestamp",
        m.creation_timestamp
            .map(|t| t.to_rfc2822())
            .unwrap_or_else(|| "<unknown>".into()),
    );
    if let Some(t) = m.deletion_timestamp {
        kv(out, "DeletionTimestamp", t.to_rfc2822());
    }
    if let Some(o) = m.owner_references.iter().find(|o| o.controller) {
        kv(out, "Controlled By", format!("{}/{}", o.kind, o.name));
    }
}

fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.lines()
        .map(|l| format!("{pad}{l}\n"))
        .collect::<String>()
}

fn conditions(out: &mut String, conds: &[Condition]) {
    if conds.is_empty() {
        return;
    }
    let mut t = Table {
        headers: ["Type", "Status", "Reason", "Message"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        rows: vec![],
    };
    for c in conds {
        t.rows.push(vec![
            c.type_.clone(),
            c.status.clone(),
            c.reason.clone(),
            c.message.clone(),
        ]);
    }
    out.push_str("Conditions:\n");
    out.push_str(&indent(&t.render(), 2));
}

fn probe_string(p: &Probe) -> String {
    let action = if let Some(h) = &p.http_get {
        format!("http-get :{}{}", h.port, h.path.as_deref().unwrap_or("/"))
    } else if let Some(t) = &p.tcp_socket {
        format!("tcp-socket :{}", t.port)
    } else if let Some(e) = &p.exec {
        format!("exec {:?}", e.command)
    } else {
        "<none>".to_string()
    };
    format!(
        "{action} delay={}s timeout={}s period={}s #success={} #failure={}",
        p.initial_delay(),
        p.timeout(),
        p.period(),
        p.success(),
        p.failure()
    )
}

/// kubectl's `Image:` and `Image ID:` for a reference: a pinned `REPO:TAG@sha256:...` shows
/// the tag as the image and `REPO@sha256:...` as its ID (the bytes that run).
fn image_and_id(image: &str) -> (String, Option<String>) {
    match berth_proto::image::ImageRef::parse(image) {
        Ok(r) if r.digest.is_some() => {
            let id = r.by_digest();
            let shown = if r.tag.is_some() {
                berth_proto::image::ImageRef {
                    digest: None,
                    ..r.clone()
                }
                .to_string()
            } else {
                image.to_string()
            };
            (shown, id)
        }
        _ => (image.to_string(), None),
    }
}

/// The containers of a ReplicaSet's template as its pods run them (its pinned digests applied).
pub(crate) fn pinned_containers(rs: &ReplicaSet, containers: &[Container]) -> Vec<Container> {
    let pins = berth_proto::image::image_pins(&rs.metadata.annotations);
    containers
        .iter()
        .map(|c| {
            let mut c = c.clone();
            if let Some(p) = berth_proto::image::pinned_image(&pins, &c.name, &c.image) {
                c.image = p.to_string();
            }
            c
        })
        .collect()
}

fn container_lines(out: &mut String, c: &Container, status: Option<&ContainerStatus>) {
    let _ = writeln!(out, "  {}:", c.name);
    let sub = |out: &mut String, k: &str, v: String| {
        let _ = writeln!(out, "    {:<18}{v}", format!("{k}:"));
    };
    let (image, image_id) = image_and_id(&c.image);
    sub(out, "Image", image);
    if let Some(id) = image_id {
        sub(out, "Image ID", id);
    }
    if !c.command.is_empty() {
        sub(out, "Command", c.command.join(" "));
    }
    if !c.args.is_empty() {
        sub(out, "Args", c.args.join(" "));
    }
    if let Some(rp) = &c.restart_policy {
        sub(out, "Restart Policy", rp.clone());
    }
    if let Some(l) = &c.lifecycle {
        let hook = |h: &LifecycleHandler| {
            if let Some(x) = &h.exec {
                format!("exec {}", x.command.join(" "))
            } else if let Some(g) = &h.http_get {
                format!("http-get {}:{}", g.path.as_deref().unwrap_or("/"), g.port)
            } else if let Some(sl) = &h.sleep {
                format!("sleep {}s", sl.seconds)
            } else {
                "<none>".to_string()
            }
        };
        if let Some(h) = &l.post_start {
            sub(out, "PostStart", hook(h));
        }
        if let Some(h) = &l.pre_stop {
            sub(out, "PreStop", hook(h));
        }
    }
    let ports: Vec<String> = c
        .ports
        .iter()
        .map(|p| {
            format!(
                "{}/{}",
                p.container_port,
                p.protocol.as_deref().unwrap_or("TCP")
            )
        })
        .collect();
    sub(
        out,
        "Ports",
        if ports.is_empty() {
            "<none>".into()
        } else {
            ports.join(", ")
        },
    );
    if let Some(r) = &c.resources {
        let fmt = |m: &std::collections::BTreeMap<String, Quantity>| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.0))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !r.requests.is_empty() {
            sub(out, "Requests", fmt(&r.requests));
        }
        if !r.limits.is_empty() {
            sub(out, "Limits", fmt(&r.limits));
        }
    }
    if let Some(p) = &c.liveness_probe {
        sub(out, "Liveness", probe_string(p));
    }
    if let Some(p) = &c.readiness_probe {
        sub(out, "Readiness", probe_string(p));
    }
    if let Some(p) = &c.startup_probe {
        sub(out, "Startup", probe_string(p));
    }
    if !c.env.is_empty() {
        let _ = writeln!(out, "    Environment:");
        for e in &c.env {
            let _ = writeln!(out, "      {}={}", e.name, e.value);
        }
    }
    if let Some(s) = status {
        let state = if let Some(r) = &s.state.running {
            match r.started_at {
                Some(t) => format!("Running (started {})", t.to_rfc2822()),
                None => "Running".into(),
            }
        } else if let Some(w) = &s.state.waiting {
            format!("Waiting ({})", w.reason)
        } else if let Some(t) = &s.state.terminated {
            format!("Terminated ({}, exit code {})", t.reason, t.exit_code)
        } else {
            "Unknown".into()
        };
        sub(out, "State", state);
        if let Some(t) = s.last_state.as_ref().and_then(|l| l.terminated.as_ref()) {
            sub(
                out,
                "Last State",
                format!("Terminated ({}, exit code {})", t.reason, t.exit_code),
            );
        }
        sub(out, "Ready", s.ready.to_string());
        sub(out, "Restart Count", s.restart_count.to_string());
    }
}

fn events_section(out: &mut String, events: &[Event], now: DateTime<Utc>) {
    if events.is_empty() {
        out.push_str("Events:             <none>\n");
        return;
    }
    let mut sorted: Vec<&Event> = events.iter().collect();
    sorted.sort_by_key(|e| table::event_time(e));
    let mut t = Table {
        headers: ["Type", "Reason", "Age", "From", "Message"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        rows: vec![],
    };
    for e in sorted {
        let age = match (e.count, e.first_timestamp) {
            (n, Some(first)) if n > 1 => format!(
                "{} (x{n} over {})",
                age(table::event_time(e).as_ref(), now),
                table::human_duration(now - first)
            ),
            _ => age(table::event_time(e).as_ref(), now),
        };
        t.rows.push(vec![
            e.type_.clone(),
            e.reason.clone(),
            age,
            e.source.component.clone(),
            e.message.clone(),
        ]);
    }
    out.push_str("Events:\n");
    out.push_str(&indent(&t.render(), 2));
}

fn describe_deployment(out: &mut String, d: &Deployment, rel: &Related, now: DateTime<Utc>) {
    meta_lines(out, &d.metadata, true);
    let st = d.status.clone().unwrap_or_default();
    let desired = d.spec.replicas.unwrap_or(1);
    kv(out, "Selector", selector_text(&d.spec.selector));
    kv(
        out,
        "Replicas",
        format!(
            "{desired} desired | {} updated | {} total | {} available | {} unavailable",
            st.updated_replicas, st.replicas, st.available_replicas, st.unavailable_replicas
        ),
    );
    kv(out, "StrategyType", d.spec.strategy_type().as_str());
    if let Some(ru) = d
        .spec
        .strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref())
    {
        kv(
            out,
            "RollingUpdateStrategy",
            format!(
                "{} max unavailable, {} max surge",
                ru.max_unavailable
                    .as_ref()
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "25%".into()),
                ru.max_surge
                    .as_ref()
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "25%".into())
            ),
        );
    }
    if let Some(bg) = d.spec.strategy.as_ref().and_then(|s| s.blue_green.as_ref()) {
        kv(out, "Active Service", &bg.active_service);
        if let Some(p) = &bg.preview_service {
            kv(out, "Preview Service", p);
        }
        kv(
            out,
            "Auto Promotion",
            bg.auto_promotion_enabled.unwrap_or(true).to_string(),
        );
    }
    if let Some(bg) = &st.blue_green {
        kv(out, "BlueGreen Phase", or_dash(&bg.phase));
        kv(out, "Active Selector", or_dash(&bg.active_selector));
        kv(out, "Preview Selector", or_dash(&bg.preview_selector));
    }
    kv(
        out,
        "MinReadySeconds",
        d.spec.min_ready_seconds.unwrap_or(0),
    );
    out.push_str("Pod Template:\n");
    map_lines(out, "  Labels", &d.spec.template.metadata.labels);
    out.push_str("  Containers:\n");
    // The current revision's pinned digests (what its pods run), when it has any.
    let hash = berth_controllers::deployment::template_hash(&d.spec.template);
    let containers = match rel
        .replicasets
        .iter()
        .find(|r| berth_controllers::deployment::rs_hash(r) == hash)
    {
        Some(rs) => pinned_containers(rs, &d.spec.template.spec.containers),
        None => d.spec.template.spec.containers.clone(),
    };
    for c in &containers {
        let mut s = String::new();
        container_lines(&mut s, c, None);
        out.push_str(&indent(&s, 2));
    }
    conditions(out, &st.conditions);
    if !rel.replicasets.is_empty() {
        let t = table::replicaset_table(&rel.replicasets, now, false);
        out.push_str("ReplicaSets:\n");
        out.push_str(&indent(&t.render(), 2));
    }
    events_section(out, &rel.events, now);
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

fn selector_text(sel: &LabelSelector) -> String {
    let mut parts: Vec<String> = sel
        .match_labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in &sel.match_expressions {
        parts.push(format!("{} {} {:?}", e.key, e.operator, e.values));
    }
    if parts.is_empty() {
        "<none>".into()
    } else {
        parts.join(",")
    }
}

fn describe_replicaset(out: &mut String, r: &ReplicaSet, rel: &Related, now: DateTime<Utc>) {
    meta_lines(out, &r.metadata, true);
    let st = r.status.clone().unwrap_or_default();
    kv(out, "Selector", selector_text(&r.spec.selector));
    kv(
        out,
        "Replicas",
        format!(
            "{} current / {} desired ({} ready, {} available)",
            st.replicas, r.spec.replicas, st.ready_replicas, st.available_replicas
        ),
    );
    out.push_str("Containers:\n");
    for c in &pinned_containers(r, &r.spec.template.spec.containers) {
        container_lines(out, c, None);
    }
    events_section(out, &rel.events, now);
}

fn describe_pod(out: &mut String, p: &Pod, rel: &Related, now: DateTime<Utc>) {
    meta_lines(out, &p.metadata, true);
    let st = p.status.clone().unwrap_or_default();
    kv(out, "Node", or_dash(&p.spec.node_name));
    kv(out, "Status", table::pod_status(p));
    if !st.message.is_empty() {
        kv(out, "Message", &st.message);
    }
    kv(out, "Host IP", or_dash(&st.host_ip));
    if let Some(r) = &p.spec.runtime_class_name {
        kv(out, "Runtime Class Name", r);
    }
    if let Some(t) = st.start_time {
        kv(out, "Start Time", t.to_rfc2822());
    }
    if !st.host_ports.is_empty() {
        out.push_str("Published Ports:\n");
        for hp in &st.host_ports {
            let _ = writeln!(
                out,
                "  {}:{} -> {}/{} ({})",
                or_dash(&st.host_ip),
                hp.host_port,
                hp.container_port,
                hp.protocol.as_deref().unwrap_or("TCP"),
                hp.container_name
            );
        }
    }
    if !p.spec.init_containers.is_empty() {
        out.push_str("Init Containers:\n");
        for c in &p.spec.init_containers {
            let cs = st.init_container_statuses.iter().find(|s| s.name == c.name);
            container_lines(out, c, cs);
        }
    }
    out.push_str("Containers:\n");
    for c in &p.spec.containers {
        let cs = st.container_statuses.iter().find(|s| s.name == c.name);
        container_lines(out, c, cs);
    }
    conditions(out, &st.conditions);
    events_section(out, &rel.events, now);
}

fn describe_service(out: &mut String, s: &Service, rel: &Related, now: DateTime<Utc>) {
    meta_lines(out, &s.metadata, true);
    let sel: Vec<String> = s
        .spec
        .selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    kv(
        out,
        "Selector",
        if sel.is_empty() {
            "<none>".into()
        } else {
            sel.join(",")
        },
    );
    kv(
        out,
        "Type",
        s.spec.type_.clone().unwrap_or_else(|| "NodePort".into()),
    );
    // kubectl's lines: the virtual IP (None for a headless Service) and the list form.
    kv(out, "IP", s.spec.cluster_ip.as_deref().unwrap_or("<none>"));
    if !s.spec.cluster_ips.is_empty() {
        kv(out, "IPs", s.spec.cluster_ips.join(","));
    }
    for p in &s.spec.ports {
        let name = if p.name.is_empty() {
            "<unset>"
        } else {
            p.name.as_str()
        };
        let proto = p.protocol.as_deref().unwrap_or("TCP");
        kv(out, "Port", format!("{name}  {}/{proto}", p.port));
        kv(
            out,
            "TargetPort",
            p.target_port
                .as_ref()
                .map(|t| format!("{t}/{proto}"))
                .unwrap_or_else(|| format!("{}/{proto}", p.port)),
        );
        if let Some(np) = p.node_port {
            kv(out, "NodePort", format!("{name}  {np}/{proto}"));
        }
    }
    kv(
        out,
        "Endpoints",
        rel.endpoints
            .as_ref()
            .map(table::endpoints_string)
            .unwrap_or_else(|| "<none>".into()),
    );
    events_section(out, &rel.events, now);
}

fn describe_endpoints(out: &mut String, e: &Endpoints, rel: &Related, now: DateTime<Utc>) {
    meta_lines(out, &e.metadata, true);
    out.push_str("Subsets:\n");
    for s in &e.subsets {
        let addrs = |a: &[EndpointAddress]| {
            if a.is_empty() {
                "<none>".to_string()
            } else {
                a.iter().map(|x| x.ip.clone()).collect::<Vec<_>>().join(",")
            }
        };
        let _ = writeln!(out, "  Addresses:          {}", addrs(&s.addresses));
        let _ = writeln!(
            out,
            "  NotReadyAddresses:  {}",
            addrs(&s.not_ready_addresses)
        );
        for p in &s.ports {
            let _ = writeln!(
                out,
                "  Port:               {} {}/{}",
                or_dash(&p.name),
                p.port,
                p.protocol.as_deref().unwrap_or("TCP")
            );
        }
    }
    kv(out, "Revision", e.metadata.resource_version);
    let per = table::endpoints_programmed(e, &rel.nodes, now);
    if per.is_empty() {
        kv(out, "Programmed", "<no node reports its proxy>");
    } else {
        out.push_str(
            "Programmed:
  NODE                PROGRAMMED REVISION  LAG
",
        );
        for (node, rev, lag) in per {
            let lag = match lag {
                None => "in sync".to_string(),
                Some(l) => format!("{:.1}s behind", l.num_milliseconds().max(0) as f64 / 1000.0),
            };
            let _ = writeln!(out, "  {node:<20}{rev:<21}{lag}");
        }
    }
    events_section(out, &rel.events, now);
}

fn describe_node(out: &mut String, n: &Node, rel: &Related, now: DateTime<Utc>) {
    meta_lines(out, &n.metadata, false);
    kv(out, "Status", table::node_status(n));
    kv(out, "Unschedulable", n.spec.unschedulable);
    kv(
        out,
        "PodCIDR",
        n.spec.pod_cidr.as_deref().unwrap_or("<none>"),
    );
    if !n.spec.pod_cidrs.is_empty() {
        kv(out, "PodCIDRs", n.spec.pod_cidrs.join(","));
    }
    if n.spec.taints.is_empty() {
        kv(out, "Taints", "<none>");
    } else {
        for (i, t) in n.spec.taints.iter().enumerate() {
            let label = if i == 0 { "Taints:" } else { "" };
            let v = if t.value.is_empty() {
                format!("{}:{}", t.key, t.effect)
            } else {
                format!("{}={}:{}", t.key, t.value, t.effect)
            };
            let _ = writeln!(out, "{label:<20}{v}");
        }
    }
    let st = n.status.clone().unwrap_or_default();
    if let Some(t) = st.last_heartbeat_time {
        kv(
            out,
            "Last Heartbeat",
            format!(
                "{} ({} ago)",
                t.to_rfc2822(),
                table::human_duration(now - t)
            ),
        );
    }
    conditions(out, &st.conditions);
    if !st.addresses.is_empty() {
        out.push_str("Addresses:\n");
        for a in &st.addresses {
            let _ = writeln!(out, "  {}: {}", a.type_, a.address);
        }
    }
    let res = |m: &std::collections::BTreeMap<String, Quantity>| {
        m.iter()
            .map(|(k, v)| format!("  {k}: {}\n", v.0))
            .collect::<String>()
    };
    if !st.capacity.is_empty() {
        out.push_str("Capacity:\n");
        out.push_str(&res(&st.capacity));
    }
    if !st.allocatable.is_empty() {
        out.push_str("Allocatable:\n");
        out.push_str(&res(&st.allocatable));
    }
    if let Some(i) = &st.node_info {
        out.push_str("System Info:\n");
        let _ = writeln!(out, "  Agent Version:      {}", or_dash(&i.kubelet_version));
        let _ = writeln!(
            out,
            "  Runtime:            {}",
            or_dash(&i.container_runtime_version)
        );
        if !st.runtime_handlers.is_empty() {
            let names: Vec<&str> = st
                .runtime_handlers
                .iter()
                .map(|h| h.name.as_str())
                .collect();
            let _ = writeln!(out, "  Runtime Handlers:   {}", names.join(", "));
        }
        let _ = writeln!(
            out,
            "  OS/Arch:            {}/{}",
            or_dash(&i.operating_system),
            or_dash(&i.architecture)
        );
    }
    let _ = writeln!(out, "Pods:               ({} on this node)", rel.pods.len());
    if !rel.pods.is_empty() {
        let mut t = table::pod_table(&rel.pods, now, false);
        t.headers.insert(0, "NAMESPACE".into());
        for (r, p) in t.rows.iter_mut().zip(&rel.pods) {
            r.insert(0, p.metadata.namespace.clone());
        }
        out.push_str(&indent(&t.render(), 2));
    }
    events_section(out, &rel.events, now);
}

/// Registry objects: metadata, then the spec and status fields as `key: value` lines (the
/// manifest content itself is left to `get -o yaml`).
fn describe_registry_object(out: &mut String, obj: &DynObject) {
    meta_lines(out, &obj.meta(), false);
    for part in ["spec", "status"] {
        if let Some(m) = obj.value.get(part).and_then(|v| v.as_object()) {
            for (k, v) in m {
                if k == "content" {
                    kv(
                        out,
                        k,
                        format!("<{} bytes>", v.as_str().map_or(0, str::len)),
                    );
                    continue;
                }
                let text = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                kv(out, k, text);
            }
        }
    }
}

fn describe_event(out: &mut String, e: &Event) {
    meta_lines(out, &e.metadata, true);
    kv(
        out,
        "Involved Object",
        format!("{}/{}", e.involved_object.kind, e.involved_object.name),
    );
    kv(out, "Type", &e.type_);
    kv(out, "Reason", &e.reason);
    kv(out, "Message", &e.message);
    kv(out, "Source", or_dash(&e.source.component));
    kv(out, "Count", e.count);
}

/// kubectl's shape: the data keys and, under each, the text (a ConfigMap is not secret).
fn describe_config_map(out: &mut String, c: &ConfigMap, rel: &Related, now: DateTime<Utc>) {
    meta_lines(out, &c.metadata, true);
    out.push_str("\nData\n====\n");
    for (k, v) in &c.data {
        out.push_str(&format!("{k}:\n----\n{v}\n\n"));
    }
    if !c.binary_data.is_empty() {
        out.push_str("\nBinaryData\n====\n");
        for k in c.binary_data.keys() {
            let n = c.value(k).map_or(0, |b| b.len());
            out.push_str(&format!("{k}: {n} bytes\n"));
        }
    }
    events_section(out, &rel.events, now);
}

/// kubectl's shape: type and each key with its size, never a value.
fn describe_secret(out: &mut String, s: &Secret, rel: &Related, now: DateTime<Utc>) {
    meta_lines(out, &s.metadata, true);
    kv(out, "Type", s.secret_type());
    out.push_str("\nData\n====\n");
    for k in s.data.keys() {
        let n = s.value(k).map_or(0, |b| b.len());
        out.push_str(&format!("{k}:  {n} bytes\n"));
    }
    events_section(out, &rel.events, now);
}

/// kubectl's shape for a claim: class, phase, volume, capacity, modes and the pods using it.
fn describe_claim(
    out: &mut String,
    c: &berth_proto::storage::PersistentVolumeClaim,
    rel: &Related,
    now: DateTime<Utc>,
) {
    use berth_proto::storage::access_modes_short;
    meta_lines(out, &c.metadata, true);
    kv(out, "StorageClass", c.storage_class());
    kv(out, "Status", c.phase());
    kv(out, "Volume", &c.spec.volume_name);
    let st = c.status.clone().unwrap_or_default();
    kv(
        out,
        "Capacity",
        st.capacity
            .get("storage")
            .map(|q| q.0.clone())
            .unwrap_or_default(),
    );
    kv(out, "Access Modes", access_modes_short(&st.access_modes));
    kv(
        out,
        "VolumeMode",
        c.spec.volume_mode.as_deref().unwrap_or("Filesystem"),
    );
    let used_by: Vec<&str> = rel.pods.iter().map(|p| p.metadata.name.as_str()).collect();
    kv(
        out,
        "Used By",
        if used_by.is_empty() {
            "<none>".to_string()
        } else {
            used_by.join(", ")
        },
    );
    events_section(out, &rel.events, now);
}

/// kubectl's shape for a volume: class, phase, claim, policy, node affinity and source.
fn describe_volume(
    out: &mut String,
    v: &berth_proto::storage::PersistentVolume,
    rel: &Related,
    now: DateTime<Utc>,
) {
    use berth_proto::storage::access_modes_short;
    meta_lines(out, &v.metadata, false);
    kv(out, "StorageClass", &v.spec.storage_class_name);
    kv(out, "Status", v.phase());
    kv(
        out,
        "Claim",
        v.spec
            .claim_ref
            .as_ref()
            .map(|r| format!("{}/{}", r.namespace, r.name))
            .unwrap_or_default(),
    );
    kv(out, "Reclaim Policy", v.reclaim_policy());
    kv(
        out,
        "Access Modes",
        access_modes_short(&v.spec.access_modes),
    );
    kv(
        out,
        "VolumeMode",
        v.spec.volume_mode.as_deref().unwrap_or("Filesystem"),
    );
    kv(
        out,
        "Capacity",
        v.spec
            .capacity
            .get("storage")
            .map(|q| q.0.clone())
            .unwrap_or_default(),
    );
    match v
        .spec
        .node_affinity
        .as_ref()
        .and_then(|a| a.required.as_ref())
    {
        None => kv(out, "Node Affinity", "<none>"),
        Some(sel) => {
            out.push_str(
                "Node Affinity:
  Required Terms:
",
            );
            for (i, t) in sel.node_selector_terms.iter().enumerate() {
                let terms: Vec<String> = t
                    .match_expressions
                    .iter()
                    .chain(&t.match_fields)
                    .map(|r| {
                        format!(
                            "{} {} [{}]",
                            r.key,
                            r.operator.to_lowercase(),
                            r.values.join(", ")
                        )
                    })
                    .collect();
                let _ = writeln!(out, "    Term {i}:        {}", terms.join(", "));
            }
        }
    }
    if let Some(st) = &v.status {
        if !st.message.is_empty() {
            kv(out, "Message", &st.message);
        }
    }
    out.push_str(
        "Source:
",
    );
    if let Some(h) = &v.spec.host_path {
        let _ = writeln!(
            out,
            "    Type:          HostPath (bare host directory volume)"
        );
        let _ = writeln!(out, "    Path:          {}", h.path);
        let _ = writeln!(
            out,
            "    HostPathType:  {}",
            h.type_.as_deref().unwrap_or("")
        );
    } else if let Some(l) = &v.spec.local {
        let _ = writeln!(
            out,
            "    Type:  LocalVolume (a persistent volume backed by local storage on a node)"
        );
        let _ = writeln!(out, "    Path:  {}", l.path);
    }
    events_section(out, &rel.events, now);
}

/// kubectl's shape: name, labels, annotations, status.
fn describe_namespace(out: &mut String, n: &Namespace) {
    meta_lines(out, &n.metadata, false);
    let phase = if n.status.phase.is_empty() {
        "Active"
    } else {
        &n.status.phase
    };
    kv(out, "Status", phase);
}

/// The text for one object and what relates to it.
pub fn describe(obj: &DynObject, rel: &Related, now: DateTime<Utc>) -> Result<String, String> {
    let mut out = String::new();
    let bad = |e: serde_json::Error| format!("{} {}: {e}", obj.kind, obj.name());
    match obj.kind {
        Kind::Deployment => describe_deployment(&mut out, &obj.to_typed().map_err(bad)?, rel, now),
        Kind::ReplicaSet => describe_replicaset(&mut out, &obj.to_typed().map_err(bad)?, rel, now),
        Kind::Pod => describe_pod(&mut out, &obj.to_typed().map_err(bad)?, rel, now),
        Kind::Service => describe_service(&mut out, &obj.to_typed().map_err(bad)?, rel, now),
        Kind::Endpoints => describe_endpoints(&mut out, &obj.to_typed().map_err(bad)?, rel, now),
        Kind::Node => describe_node(&mut out, &obj.to_typed().map_err(bad)?, rel, now),
        Kind::Event => describe_event(&mut out, &obj.to_typed().map_err(bad)?),
        Kind::ImageTag | Kind::ImageManifest | Kind::ImageBlob | Kind::RegistryServer => {
            describe_registry_object(&mut out, obj)
        }
        // Image trust: the spec's fields as they are.
        Kind::TrustKey | Kind::ImageSignature | Kind::ClusterImagePolicy | Kind::ImagePolicy => {
            describe_registry_object(&mut out, obj)
        }
        Kind::ConfigMap => describe_config_map(&mut out, &obj.to_typed().map_err(bad)?, rel, now),
        Kind::Secret => describe_secret(&mut out, &obj.to_typed().map_err(bad)?, rel, now),
        Kind::PersistentVolumeClaim => {
            describe_claim(&mut out, &obj.to_typed().map_err(bad)?, rel, now)
        }
        Kind::PersistentVolume => {
            describe_volume(&mut out, &obj.to_typed().map_err(bad)?, rel, now)
        }
        Kind::Namespace => describe_namespace(&mut out, &obj.to_typed().map_err(bad)?),
    }
    Ok(out)
}

async fn related(client: &Client, obj: &DynObject) -> anyhow::Result<Related> {
    let mut rel = Related::default();
    let ns = obj.namespace();
    let events_ns = if obj.kind.namespaced() {
        Some(ns)
    } else {
        None
    };
    if obj.kind != Kind::Event {
        let (events, _) = client.list::<Event>(events_ns, "").await?;
        let uid = obj.meta().uid;
        rel.events = events
            .into_iter()
            .filter(|e| {
                let io = &e.involved_object;
                io.kind == obj.kind.as_str()
                    && io.name == obj.name()
                    && (io.uid.is_empty() || uid.is_empty() || io.uid == uid)
            })
            .collect();
    }
    match obj.kind {
        Kind::Endpoints => rel.nodes = client.list::<Node>(None, "").await?.0,
        Kind::Service => match client.get::<Endpoints>(ns, obj.name()).await {
            Ok(e) => rel.endpoints = Some(e),
            Err(ClientError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        },
        Kind::Deployment => {
            let uid = obj.meta().uid;
            let (rss, _) = client.list::<ReplicaSet>(Some(ns), "").await?;
            rel.replicasets = rss
                .into_iter()
                .filter(|r| {
                    r.metadata.owner_references.iter().any(|o| {
                        o.kind == "Deployment"
                            && o.name == obj.name()
                            && (uid.is_empty() || o.uid == uid)
                    })
                })
                .collect();
        }
        Kind::Node => {
            let (pods, _) = client.list::<Pod>(None, "").await?;
            rel.pods = pods
                .into_iter()
                .filter(|p| p.spec.node_name == obj.name())
                .collect();
        }
        Kind::PersistentVolumeClaim => {
            let (pods, _) = client.list::<Pod>(Some(ns), "").await?;
            rel.pods = pods
                .into_iter()
                .filter(|p| {
                    !p.is_terminal()
                        && berth_proto::storage::pod_claims(&p.spec).any(|c| c == obj.name())
                })
                .collect();
        }
        _ => {}
    }
    Ok(rel)
}

pub async fn run(ctx: &Ctx, a: DescribeArgs, io: &mut Io<'_>) -> anyhow::Result<()> {
    let (kind, names) = parse_kind_and_names(&a.args)?;
    if names.is_empty() {
        bail!(
            "which {}? e.g. berth describe {} NAME",
            kind.plural(),
            kind.as_str().to_lowercase()
        );
    }
    let client = ctx.client()?;
    for (i, name) in names.iter().enumerate() {
        let obj = match client.get_dyn(kind, a.ns.namespace(), name).await {
            Ok(o) => o,
            Err(ClientError::NotFound(_)) => return Err(anyhow!("{}", not_found(kind, name))),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot get {}", table::kind_ref(kind, name)))
            }
        };
        let rel = related(&client, &obj)
            .await
            .context("cannot read related objects")?;
        let text = describe(&obj, &rel, Utc::now()).map_err(|e| anyhow!(e))?;
        if i > 0 {
            writeln!(io.out)?;
        }
        io.out.write_all(text.as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0)
            .single()
            .expect("valid")
    }

    #[test]
    fn deployment_description_has_replicas_conditions_containers_and_events() {
        let d = Deployment {
            metadata: ObjectMeta {
                name: "web".into(),
                namespace: "default".into(),
                labels: [("app".to_string(), "web".to_string())].into(),
                creation_timestamp: Some(t0()),
                ..Default::default()
            },
            spec: DeploymentSpec {
                replicas: Some(3),
                selector: LabelSelector {
                    match_labels: [("app".to_string(), "web".to_string())].into(),
                    ..Default::default()
                },
                template: PodTemplateSpec {
                    spec: PodSpec {
                        containers: vec![Container {
                            name: "app".into(),
                            image: "demo:v2".into(),
                            ..Default::default()
                        }],
                        ..Default::default()
                    },
                    ..Default::default()
                },
                ..Default::default()
            },
            status: Some(DeploymentStatus {
                replicas: 3,
                updated_replicas: 3,
                available_replicas: 2,
                unavailable_replicas: 1,
                conditions: vec![Condition::new(
                    "Available",
                    false,
                    "MinimumReplicasUnavailable",
                    "2 of 3 available",
                    t0(),
                )],
                ..Default::default()
            }),
            ..Default::default()
        };
        let rel = Related {
            events: vec![Event {
                involved_object: ObjectReference {
                    kind: "Deployment".into(),
                    name: "web".into(),
                    ..Default::default()
                },
                reason: "ScalingReplicaSet".into(),
                message: "Scaled up replica set web-abc to 3".into(),
                type_: "Normal".into(),
                source: EventSource {
                    component: "deployment-controller".into(),
                    ..Default::default()
                },
                last_timestamp: Some(t0() - chrono::Duration::seconds(30)),
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = describe(&DynObject::from_typed(&d), &rel, t0()).expect("describe");
        for want in [
            "Name:               web\n",
            "Replicas:           3 desired | 3 updated | 3 total | 2 available | 1 unavailable\n",
            "StrategyType:       RollingUpdate\n",
            "      Image:            demo:v2\n",
            "  Available   False    MinimumReplicasUnavailable   2 of 3 available\n",
            "  Normal   ScalingReplicaSet   30s   deployment-controller   Scaled up replica set web-abc to 3\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
    }

    #[test]
    fn deployment_and_pod_show_the_pinned_digest_as_image_id() {
        let digest = berth_proto::image::sha256_digest(b"manifest");
        let template = PodTemplateSpec {
            spec: PodSpec {
                containers: vec![Container {
                    name: "nginx".into(),
                    image: "nginx:1.14.2".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
            ..Default::default()
        };
        let hash = berth_controllers::deployment::template_hash(&template);
        let d = Deployment {
            metadata: ObjectMeta {
                name: "web".into(),
                namespace: "default".into(),
                ..Default::default()
            },
            spec: DeploymentSpec {
                template: template.clone(),
                ..Default::default()
            },
            ..Default::default()
        };
        let mut rs = berth_controllers::deployment::new_replica_set(&d, &hash, 1, 1);
        berth_controllers::deployment::pin_images(&mut rs, &[], |_, _| Some(digest.clone()));
        let rel = Related {
            replicasets: vec![rs.clone()],
            ..Default::default()
        };
        let image_id = format!("      Image ID:         nginx@{digest}\n");
        let text = describe(&DynObject::from_typed(&d), &rel, t0()).expect("describe");
        assert!(
            text.contains("      Image:            nginx:1.14.2\n"),
            "{text}"
        );
        assert!(text.contains(&image_id), "{text}");
        // Without its ReplicaSet there is nothing pinned to show.
        let text = describe(&DynObject::from_typed(&d), &Related::default(), t0()).expect("d");
        assert!(!text.contains("Image ID"), "{text}");

        let pod = berth_controllers::replicaset::new_pod(&rs, "web-1");
        let text = describe(&DynObject::from_typed(&pod), &Related::default(), t0()).expect("d");
        assert!(
            text.contains("    Image:            nginx:1.14.2\n"),
            "{text}"
        );
        assert!(text.contains(&image_id[2..]), "{text}");
    }

    #[test]
    fn pod_lists_init_containers_with_sidecar_policy_and_hooks_before_containers() {
        let c = |name: &str| Container {
            name: name.into(),
            image: "busybox:1.36".into(),
            ..Default::default()
        };
        let mut proxy = c("proxy");
        proxy.restart_policy = Some("Always".into());
        let mut app = c("app");
        app.lifecycle = Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: vec!["sh".into(), "-c".into(), "sleep 1".into()],
                }),
                ..Default::default()
            }),
            post_start: Some(LifecycleHandler {
                sleep: Some(SleepAction { seconds: 2 }),
                ..Default::default()
            }),
        });
        let pod = Pod {
            metadata: ObjectMeta {
                name: "p".into(),
                namespace: "default".into(),
                ..Default::default()
            },
            spec: PodSpec {
                init_containers: vec![c("migrate"), proxy],
                containers: vec![app],
                ..Default::default()
            },
            status: Some(PodStatus {
                init_container_statuses: vec![ContainerStatus {
                    name: "migrate".into(),
                    state: ContainerState {
                        terminated: Some(ContainerStateTerminated {
                            exit_code: 0,
                            reason: "Completed".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let text = describe(&DynObject::from_typed(&pod), &Related::default(), t0()).expect("d");
        let init = text.find("Init Containers:\n  migrate:\n").expect(&text);
        let proxy = text.find("  proxy:\n").expect(&text);
        let apps = text.find("Containers:\n  app:\n").expect(&text);
        assert!(init < proxy && proxy < apps, "{text}");
        for want in [
            "    Restart Policy:   Always\n",
            "    PostStart:        sleep 2s\n",
            "    PreStop:          exec sh -c sleep 1\n",
            "Completed",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
    }

    #[test]
    fn objects_without_events_say_none() {
        let s = Service {
            metadata: ObjectMeta {
                name: "web".into(),
                namespace: "default".into(),
                ..Default::default()
            },
            spec: ServiceSpec {
                ports: vec![ServicePort {
                    port: 80,
                    node_port: Some(30080),
                    ..Default::default()
                }],
                ..Default::default()
            },
            ..Default::default()
        };
        let text =
            describe(&DynObject::from_typed(&s), &Related::default(), t0()).expect("describe");
        assert!(
            text.contains("NodePort:           <unset>  30080/TCP\n"),
            "{text}"
        );
        assert!(text.contains("Endpoints:          <none>\n"), "{text}");
        assert!(text.ends_with("Events:             <none>\n"), "{text}");
    }
}
