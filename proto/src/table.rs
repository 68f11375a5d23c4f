//! kubectl-style tables: pure functions from objects (and `now`) to aligned text.
//!
//! Each kind has a column set (`wide` adds columns); [`rows`] turns any list of
//! [`DynObject`]s of one kind into a [`Table`], and [`Table::render`] pads columns with
//! three spaces like kubectl's tabwriter.

use crate::types::*;
use crate::{DynObject, Kind, PodPhase, Resource};
use chrono::{DateTime, Utc};

/// Headers plus rows of cells; rendering aligns columns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Column widths over headers and rows.
    fn widths(&self) -> Vec<usize> {
        let mut w: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                if i < w.len() {
                    w[i] = w[i].max(c.chars().count());
                }
            }
        }
        w
    }

    fn line(cells: &[String], widths: &[usize]) -> String {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                let pad = widths.get(i).copied().unwrap_or(0) + 3;
                s.push_str(c);
                // A cell wider than its column (a later `get -w` row) still gets a gap.
                s.extend(std::iter::repeat_n(
                    ' ',
                    pad.saturating_sub(c.chars().count()).max(3),
                ));
            }
        }
        s.trim_end().to_string()
    }

    /// The whole table, header first, each line ending in '\n'.
    pub fn render(&self) -> String {
        let widths = self.widths();
        let mut out = Self::line(&self.headers, &widths);
        out.push('\n');
        for r in &self.rows {
            out.push_str(&Self::line(r, &widths));
            out.push('\n');
        }
        out
    }

    /// The header line only, aligned to the given widths.
    pub fn render_header_with(&self, widths: &[usize]) -> String {
        let mut out = Self::line(&self.headers, widths);
        out.push('\n');
        out
    }

    /// Rows only, aligned to the given widths (for `get -w` updates after the header).
    pub fn render_rows_with(&self, widths: &[usize]) -> String {
        let mut out = String::new();
        for r in &self.rows {
            out.push_str(&Self::line(r, widths));
            out.push('\n');
        }
        out
    }

    /// Column widths, at least `min` per column (keeps `-w` output roughly aligned).
    pub fn widths_at_least(&self, min: usize) -> Vec<usize> {
        self.widths().into_iter().map(|w| w.max(min)).collect()
    }

    /// Prefix every row with its namespace (for `-A`).
    fn with_namespace(mut self, namespaces: &[String]) -> Table {
        self.headers.insert(0, "NAMESPACE".to_string());
        for (r, ns) in self.rows.iter_mut().zip(namespaces) {
            r.insert(0, ns.clone());
        }
        self
    }
}

/// Options that change the columns.
#[derive(Debug, Clone, Copy, Default)]
pub struct RowOptions {
    pub wide: bool,
    pub all_namespaces: bool,
    /// Add a LABELS column (not for events).
    pub show_labels: bool,
}

/// kubectl's HumanDuration: "45s", "5m10s", "3h", "2d4h", "400d", "3y20d".
pub fn human_duration(d: chrono::Duration) -> String {
    let secs = d.num_seconds();
    if secs < -1 {
        return "<invalid>".to_string();
    }
    if secs < 0 {
        return "0s".to_string();
    }
    let (mins, hours) = (secs / 60, secs / 3600);
    if secs < 60 * 2 {
        format!("{secs}s")
    } else if mins < 10 {
        if secs % 60 == 0 {
            format!("{mins}m")
        } else {
            format!("{mins}m{}s", secs % 60)
        }
    } else if mins < 60 * 3 {
        format!("{mins}m")
    } else if hours < 8 {
        if mins % 60 == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{}m", mins % 60)
        }
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 24 * 8 {
        if hours % 24 == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{}h", hours / 24, hours % 24)
        }
    } else if hours < 24 * 365 * 2 {
        format!("{}d", hours / 24)
    } else if hours < 24 * 365 * 8 {
        let days = hours / 24;
        if days % 365 == 0 {
            format!("{}y", days / 365)
        } else {
            format!("{}y{}d", days / 365, days % 365)
        }
    } else {
        format!("{}y", hours / 24 / 365)
    }
}

/// Age of a timestamp as of `now`, "<unknown>" if absent.
pub fn age(t: Option<&DateTime<Utc>>, now: DateTime<Utc>) -> String {
    match t {
        Some(t) => human_duration(now - *t),
        None => "<unknown>".to_string(),
    }
}

/// kubectl's resource reference: `deployment.apps/web`, `service/web`.
pub fn kind_ref(kind: Kind, name: &str) -> String {
    format!("{}/{name}", kind_resource(kind))
}

/// `deployment.apps`, `service`, ...
pub fn kind_resource(kind: Kind) -> String {
    let lower = kind.as_str().to_ascii_lowercase();
    match kind.api_version().split_once('/') {
        Some((group, _)) => format!("{lower}.{group}"),
        None => lower,
    }
}

fn or_none(s: String) -> String {
    if s.is_empty() {
        "<none>".to_string()
    } else {
        s
    }
}

fn labels_string(l: &Labels) -> String {
    l.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn selector_string(sel: &LabelSelector) -> String {
    let mut parts = vec![labels_string(&sel.match_labels)];
    for e in &sel.match_expressions {
        parts.push(match e.operator.as_str() {
            "Exists" => e.key.clone(),
            "DoesNotExist" => format!("!{}", e.key),
            op => format!("{} {} ({})", e.key, op.to_lowercase(), e.values.join(",")),
        });
    }
    parts.retain(|p| !p.is_empty());
    parts.join(",")
}

fn containers_images(spec: &PodSpec) -> (String, String) {
    let names = spec.containers.iter().map(|c| c.name.as_str());
    let images = spec.containers.iter().map(|c| c.image.as_str());
    (
        names.collect::<Vec<_>>().join(","),
        images.collect::<Vec<_>>().join(","),
    )
}

// ----------------------------------------------------------------------------------------
// Per-kind rows

pub fn deployment_table(items: &[Deployment], now: DateTime<Utc>, wide: bool) -> Table {
    let mut t = if wide {
        Table::new(&[
            "NAME",
            "READY",
            "UP-TO-DATE",
            "AVAILABLE",
            "AGE",
            "CONTAINERS",
            "IMAGES",
            "SELECTOR",
        ])
    } else {
        Table::new(&["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"])
    };
    for d in items {
        let st = d.status.clone().unwrap_or_default();
        let desired = d.spec.replicas.unwrap_or(1);
        let mut row = vec![
            d.metadata.name.clone(),
            format!("{}/{}", st.ready_replicas, desired),
            st.updated_replicas.to_string(),
            st.available_replicas.to_string(),
            age(d.metadata.creation_timestamp.as_ref(), now),
        ];
        if wide {
            let (c, i) = containers_images(&d.spec.template.spec);
            row.extend([c, i, or_none(selector_string(&d.spec.selector))]);
        }
        t.rows.push(row);
    }
    t
}

pub fn replicaset_table(items: &[ReplicaSet], now: DateTime<Utc>, wide: bool) -> Table {
    let mut t = if wide {
        Table::new(&[
            "NAME",
            "DESIRED",
            "CURRENT",
            "READY",
            "AGE",
            "CONTAINERS",
            "IMAGES",
            "SELECTOR",
        ])
    } else {
        Table::new(&["NAME", "DESIRED", "CURRENT", "READY", "AGE"])
    };
    for r in items {
        let st = r.status.clone().unwrap_or_default();
        let mut row = vec![
            r.metadata.name.clone(),
            r.spec.replicas.to_string(),
            st.replicas.to_string(),
            st.ready_replicas.to_string(),
            age(r.metadata.creation_timestamp.as_ref(), now),
        ];
        if wide {
            let (c, i) = containers_images(&r.spec.template.spec);
            row.extend([c, i, or_none(selector_string(&r.spec.selector))]);
        }
        t.rows.push(row);
    }
    t
}

/// The name of an init container that is a native sidecar (`restartPolicy: Always`).
fn is_sidecar(p: &Pod, name: &str) -> bool {
    p.spec
        .init_containers
        .iter()
        .any(|c| c.name == name && c.is_sidecar())
}

/// kubectl's pod STATUS column (printPod): Terminating, the init progress (`Init:N/M`,
/// `Init:<reason>`), a container's waiting/terminated reason, or the phase.
pub fn pod_status(p: &Pod) -> String {
    if p.metadata.deletion_timestamp.is_some() {
        return "Terminating".to_string();
    }
    let Some(st) = &p.status else {
        return PodPhase::Pending.to_string();
    };
    if !st.reason.is_empty() {
        return st.reason.clone();
    }
    let initialized = st
        .conditions
        .iter()
        .any(|c| c.type_ == "Initialized" && c.status == "True");
    let mut init_reason = None;
    for (i, cs) in st.init_container_statuses.iter().enumerate() {
        let t = cs.state.terminated.as_ref();
        if t.is_some_and(|t| t.exit_code == 0) {
            continue;
        }
        if is_sidecar(p, &cs.name) && cs.started == Some(true) {
            continue;
        }
        init_reason = Some(if let Some(t) = t {
            if !t.reason.is_empty() {
                format!("Init:{}", t.reason)
            } else {
                match t.signal {
                    Some(sig) if sig != 0 => format!("Init:Signal:{sig}"),
                    _ => format!("Init:ExitCode:{}", t.exit_code),
                }
            }
        } else {
            match &cs.state.waiting {
                Some(w) if !w.reason.is_empty() && w.reason != "PodInitializing" => {
                    format!("Init:{}", w.reason)
                }
                _ => format!("Init:{i}/{}", p.spec.init_containers.len()),
            }
        });
        break;
    }
    if let Some(r) = init_reason.filter(|_| !initialized) {
        return r;
    }
    for cs in &st.container_statuses {
        if let Some(w) = &cs.state.waiting {
            if !w.reason.is_empty() {
                return w.reason.clone();
            }
        }
        if let Some(t) = &cs.state.terminated {
            if !t.reason.is_empty() {
                return t.reason.clone();
            }
            return match t.signal {
                Some(sig) if sig != 0 => format!("Signal:{sig}"),
                _ => format!("ExitCode:{}", t.exit_code),
            };
        }
    }
    if st.phase.is_empty() {
        PodPhase::Pending.to_string()
    } else {
        st.phase.clone()
    }
}

/// kubectl's RESTARTS: every init container's while the pod initializes, then the
/// sidecars' and the app containers'.
pub fn pod_restarts(p: &Pod) -> i32 {
    let Some(st) = &p.status else {
        return 0;
    };
    let initializing = pod_status(p).starts_with("Init:");
    let init: i32 = st
        .init_container_statuses
        .iter()
        .filter(|c| initializing || is_sidecar(p, &c.name))
        .map(|c| c.restart_count)
        .sum();
    if initializing {
        return init;
    }
    init + st
        .container_statuses
        .iter()
        .map(|c| c.restart_count)
        .sum::<i32>()
}

/// kubectl's READY column (1.29+): ready app containers and started, ready sidecars, over
/// the app containers plus the sidecars.
pub fn pod_ready(p: &Pod) -> String {
    let sidecars = p
        .spec
        .init_containers
        .iter()
        .filter(|c| c.is_sidecar())
        .count();
    let (app, init) = p
        .status
        .as_ref()
        .map(|s| {
            (
                s.container_statuses.as_slice(),
                s.init_container_statuses.as_slice(),
            )
        })
        .unwrap_or_default();
    let ready = app.iter().filter(|c| c.ready).count()
        + init
            .iter()
            .filter(|c| is_sidecar(p, &c.name) && c.started == Some(true) && c.ready)
            .count();
    format!("{ready}/{}", p.spec.containers.len() + sidecars)
}

/// `host:port[,host:port]` of a pod's published ports.
pub fn pod_addresses(p: &Pod) -> String {
    let Some(st) = &p.status else {
        return "<none>".to_string();
    };
    if st.host_ports.is_empty() {
        return or_none(st.host_ip.clone());
    }
    let host = if st.host_ip.is_empty() {
        "?"
    } else {
        st.host_ip.as_str()
    };
    st.host_ports
        .iter()
        .map(|hp| format!("{host}:{}", hp.host_port))
        .collect::<Vec<_>>()
        .join(",")
}

pub fn pod_table(items: &[Pod], now: DateTime<Utc>, wide: bool) -> Table {
    let mut t = if wide {
        Table::new(&[
            "NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE", "IP:PORTS",
        ])
    } else {
        Table::new(&["NAME", "READY", "STATUS", "RESTARTS", "AGE"])
    };
    for p in items {
        let restarts = pod_restarts(p);
        let mut row = vec![
            p.metadata.name.clone(),
            pod_ready(p),
            pod_status(p),
            restarts.to_string(),
            age(p.metadata.creation_timestamp.as_ref(), now),
        ];
        if wide {
            row.push(or_none(
                p.status
                    .as_ref()
                    .map(|s| s.pod_ip.clone())
                    .unwrap_or_default(),
            ));
            row.push(or_none(p.spec.node_name.clone()));
            row.push(pod_addresses(p));
        }
        t.rows.push(row);
    }
    t
}

/// kubectl's PORT(S): `80:30080/TCP,443:30443/TCP`.
pub fn service_ports(s: &Service) -> String {
    or_none(
        s.spec
            .ports
            .iter()
            .map(|p| {
                let proto = p.protocol.as_deref().unwrap_or("TCP");
                match p.node_port {
                    Some(np) => format!("{}:{np}/{proto}", p.port),
                    None => format!("{}/{proto}", p.port),
                }
            })
            .collect::<Vec<_>>()
            .join(","),
    )
}

pub fn service_table(items: &[Service], now: DateTime<Utc>, wide: bool) -> Table {
    let columns = [
        "NAME",
        "TYPE",
        "CLUSTER-IP",
        "EXTERNAL-IP",
        "PORT(S)",
        "AGE",
        "SELECTOR",
    ];
    let mut t = Table::new(&columns[..if wide { 7 } else { 6 }]);
    for s in items {
        let mut row = vec![
            s.metadata.name.clone(),
            s.spec.type_.clone().unwrap_or_else(|| {
                // Berth's default type is NodePort; a headless Service has no node ports.
                if s.spec.cluster_ip.as_deref() == Some("None") {
                    "ClusterIP".to_string()
                } else {
                    "NodePort".to_string()
                }
            }),
            s.spec
                .cluster_ip
                .clone()
                .unwrap_or_else(|| "<none>".to_string()),
            external_ips(s),
            service_ports(s),
            age(s.metadata.creation_timestamp.as_ref(), now),
        ];
        if wide {
            row.push(or_none(labels_string(&s.spec.selector)));
        }
        t.rows.push(row);
    }
    t
}

/// kubectl's EXTERNAL-IP: a LoadBalancer's ingress addresses (`<pending>` until known).
fn external_ips(s: &Service) -> String {
    if s.spec.type_.as_deref() != Some("LoadBalancer") {
        return "<none>".to_string();
    }
    let ips: Vec<String> = s
        .status
        .as_ref()
        .and_then(|st| st.load_balancer.as_ref())
        .map(|lb| {
            lb.ingress
                .iter()
                .map(|i| {
                    if i.ip.is_empty() {
                        i.hostname.clone()
                    } else {
                        i.ip.clone()
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    if ips.is_empty() {
        "<pending>".to_string()
    } else {
        ips.join(",")
    }
}

/// kubectl's ENDPOINTS: up to three `ip:port`, then `+ N more...`.
pub fn endpoints_string(e: &Endpoints) -> String {
    let mut all = Vec::new();
    for s in &e.subsets {
        for a in &s.addresses {
            if s.ports.is_empty() {
                all.push(a.ip.clone());
            }
            for p in &s.ports {
                all.push(format!("{}:{}", a.ip, p.port));
            }
        }
    }
    match all.len() {
        0 => "<none>".to_string(),
        n if n <= 3 => all.join(","),
        n => format!("{} + {} more...", all[..3].join(","), n - 3),
    }
}

/// How far each Ready node's proxy is with `e`: (node, programmed revision, lag). The lag is
/// None when the node has programmed `e` (its revision is at least `e`'s resourceVersion),
/// else the time since the change that triggered `e` (its last-change-trigger-time, or its
/// write when unknown). Nodes without a proxy report are left out.
pub fn endpoints_programmed(
    e: &Endpoints,
    nodes: &[Node],
    now: DateTime<Utc>,
) -> Vec<(String, u64, Option<chrono::Duration>)> {
    let since = e
        .metadata
        .annotations
        .get("endpoints.kubernetes.io/last-change-trigger-time")
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc));
    let mut out: Vec<_> = nodes
        .iter()
        .filter(|n| n.is_ready())
        .filter_map(|n| {
            let p = n.status.as_ref()?.proxy.as_ref()?;
            let lag = (p.programmed_revision < e.metadata.resource_version).then(|| {
                since
                    .map(|t| now - t)
                    .unwrap_or_else(chrono::Duration::zero)
            });
            Some((n.metadata.name.clone(), p.programmed_revision, lag))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// `berth get endpoints -o wide`'s PROGRAMMED column: `3/3` when every proxy has the
/// Endpoints, else `2/3 (node-b +1.2s)` naming the laggards and how long they lag.
pub fn programmed_string(e: &Endpoints, nodes: &[Node], now: DateTime<Utc>) -> String {
    let per = endpoints_programmed(e, nodes, now);
    if per.is_empty() {
        return "<none>".into();
    }
    let done = per.iter().filter(|p| p.2.is_none()).count();
    let behind: Vec<String> = per
        .iter()
        .filter_map(|(n, _, lag)| {
            lag.map(|l| format!("{n} +{:.1}s", l.num_milliseconds().max(0) as f64 / 1000.0))
        })
        .collect();
    if behind.is_empty() {
        format!("{done}/{}", per.len())
    } else {
        format!("{done}/{} ({})", per.len(), behind.join(", "))
    }
}

/// The endpoints table with the REVISION and PROGRAMMED columns of `-o wide`.
pub fn endpoints_table_wide(items: &[Endpoints], nodes: &[Node], now: DateTime<Utc>) -> Table {
    let mut t = Table::new(&["NAME", "ENDPOINTS", "AGE", "REVISION", "PROGRAMMED"]);
    for e in items {
        t.rows.push(vec![
            e.metadata.name.clone(),
            endpoints_string(e),
            age(e.metadata.creation_timestamp.as_ref(), now),
            e.metadata.resource_version.to_string(),
            programmed_string(e, nodes, now),
        ]);
    }
    t
}

pub fn endpoints_table(items: &[Endpoints], now: DateTime<Utc>) -> Table {
    let mut t = Table::new(&["NAME", "ENDPOINTS", "AGE"]);
    for e in items {
        t.rows.push(vec![
            e.metadata.name.clone(),
            endpoints_string(e),
            age(e.metadata.creation_timestamp.as_ref(), now),
        ]);
    }
    t
}

pub fn node_status(n: &Node) -> String {
    let ready = n
        .status
        .as_ref()
        .and_then(|s| condition(&s.conditions, "Ready"));
    let mut s = match ready {
        Some(c) if c.is_true() => "Ready".to_string(),
        Some(c) if c.status == "False" => "NotReady".to_string(),
        _ => "Unknown".to_string(),
    };
    if n.spec.unschedulable {
        s.push_str(",SchedulingDisabled");
    }
    s
}

fn node_roles(n: &Node) -> String {
    let mut roles: Vec<&str> = n
        .metadata
        .labels
        .keys()
        .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
        .filter(|r| !r.is_empty())
        .collect();
    roles.sort();
    or_none(roles.join(","))
}

fn node_resource(n: &Node, name: &str) -> String {
    let Some(st) = &n.status else {
        return "<none>".to_string();
    };
    st.allocatable
        .get(name)
        .or_else(|| st.capacity.get(name))
        .map(|q| q.0.clone())
        .unwrap_or_else(|| "<none>".to_string())
}

pub fn node_table(items: &[Node], now: DateTime<Utc>, wide: bool) -> Table {
    let mut t = if wide {
        Table::new(&[
            "NAME", "STATUS", "ROLES", "AGE", "VERSION", "ADDRESS", "CPU", "MEMORY",
        ])
    } else {
        Table::new(&["NAME", "STATUS", "ROLES", "AGE", "VERSION"])
    };
    for n in items {
        let version = n
            .status
            .as_ref()
            .and_then(|s| s.node_info.as_ref())
            .map(|i| i.kubelet_version.clone())
            .unwrap_or_default();
        let mut row = vec![
            n.metadata.name.clone(),
            node_status(n),
            node_roles(n),
            age(n.metadata.creation_timestamp.as_ref(), now),
            or_none(version),
        ];
        if wide {
            row.push(n.address().unwrap_or("<none>").to_string());
            row.push(node_resource(n, "cpu"));
            row.push(node_resource(n, "memory"));
        }
        t.rows.push(row);
    }
    t
}

/// Sizes as `docker images` prints them (decimal units).
pub fn human_size(bytes: i64) -> String {
    let b = bytes.max(0) as f64;
    if b < 1000.0 {
        format!("{bytes}B")
    } else if b < 1e6 {
        format!("{:.1}kB", b / 1e3)
    } else if b < 1e9 {
        format!("{:.1}MB", b / 1e6)
    } else {
        format!("{:.2}GB", b / 1e9)
    }
}

fn short_digest(d: &str) -> String {
    d.chars().take(7 + 12).collect()
}

pub fn image_tag_table(items: &[ImageTag], now: DateTime<Utc>) -> Table {
    let mut t = Table::new(&["REPOSITORY", "TAG", "DIGEST", "AGE"]);
    for i in items {
        t.rows.push(vec![
            i.spec.repository.clone(),
            i.spec.tag.clone(),
            short_digest(&i.spec.digest),
            age(i.metadata.creation_timestamp.as_ref(), now),
        ]);
    }
    t
}

// Image trust.

/// `berth trust key list`, `berth get trustkeys`.
pub fn trust_key_table(items: &[TrustKey], now: DateTime<Utc>) -> Table {
    let mut t = Table::new(&["NAME", "FINGERPRINT", "AGE"]);
    for k in items {
        t.rows.push(vec![
            k.metadata.name.clone(),
            k.spec.fingerprint.clone(),
            age(k.metadata.creation_timestamp.as_ref(), now),
        ]);
    }
    t
}

pub fn image_signature_table(items: &[ImageSignature], now: DateTime<Utc>) -> Table {
    let mut t = Table::new(&["REPOSITORY", "DIGEST", "KEY", "AGE"]);
    for s in items {
        t.rows.push(vec![
            s.spec.repository.clone(),
            short_digest(&s.spec.digest),
            s.spec.key_name.clone(),
            age(s.metadata.creation_timestamp.as_ref(), now),
        ]);
    }
    t
}

pub fn image_policy_table(items: &[(&ObjectMeta, &ImagePolicySpec)], now: DateTime<Utc>) -> Table {
    let mut t = Table::new(&["NAME", "REQUIRE-SIGNED-IMAGES", "AGE"]);
    for (m, spec) in items {
        t.rows.push(vec![
            m.name.clone(),
            if spec.require_signed_images {
                "on"
            } else {
                "off"
            }
            .to_string(),
            age(m.creation_timestamp.as_ref(), now),
        ]);
    }
    t
}

/// kubectl's `get configmaps`: NAME DATA AGE (DATA: keys in data and binaryData).
pub fn config_map_table(items: &[ConfigMap], now: DateTime<Utc>) -> Table {
    let mut t = Table::new(&["NAME", "DATA", "AGE"]);
    for c in items {
        t.rows.push(vec![
            c.metadata.name.clone(),
            (c.data.len() + c.binary_data.len()).to_string(),
            age(c.metadata.creation_timestamp.as_ref(), now),
        ]);
    }
    t
}

/// kubectl's `get pvc`: NAME STATUS VOLUME CAPACITY ACCESS MODES STORAGECLASS
/// VOLUMEATTRIBUTESCLASS AGE (wide: VOLUMEMODE). Capacity and modes are the bound volume's.
pub fn claim_table(
    items: &[crate::storage::PersistentVolumeClaim],
    now: DateTime<Utc>,
    wide: bool,
) -> Table {
    let mut headers = vec![
        "NAME",
        "STATUS",
        "VOLUME",
        "CAPACITY",
        "ACCESS MODES",
        "STORAGECLASS",
        "VOLUMEATTRIBUTESCLASS",
        "AGE",
    ];
    if wide {
        headers.push("VOLUMEMODE");
    }
    let mut t = Table::new(&headers);
    for c in items {
        let st = c.status.clone().unwrap_or_default();
        let mut row = vec![
            c.metadata.name.clone(),
            c.phase().to_string(),
            c.spec.volume_name.clone(),
            st.capacity
                .get("storage")
                .map(|q| q.0.clone())
                .unwrap_or_default(),
            crate::storage::access_modes_short(&st.access_modes),
            c.spec.storage_class_name.clone().unwrap_or_default(),
            "<unset>".to_string(),
            age(c.metadata.creation_timestamp.as_ref(), now),
        ];
        if wide {
            row.push(
                c.spec
                    .volume_mode
                    .clone()
                    .unwrap_or_else(|| "Filesystem".into()),
            );
        }
        t.rows.push(row);
    }
    t
}

/// kubectl's `get pv`: NAME CAPACITY ACCESS MODES RECLAIM POLICY STATUS CLAIM STORAGECLASS
/// VOLUMEATTRIBUTESCLASS REASON AGE.
pub fn volume_table(items: &[crate::storage::PersistentVolume], now: DateTime<Utc>) -> Table {
    let mut t = Table::new(&[
        "NAME",
        "CAPACITY",
        "ACCESS MODES",
        "RECLAIM POLICY",
        "STATUS",
        "CLAIM",
        "STORAGECLASS",
        "VOLUMEATTRIBUTESCLASS",
        "REASON",
        "AGE",
    ]);
    for v in items {
        t.rows.push(vec![
            v.metadata.name.clone(),
            v.spec
                .capacity
                .get("storage")
                .map(|q| q.0.clone())
                .unwrap_or_default(),
            crate::storage::access_modes_short(&v.spec.access_modes),
            v.reclaim_policy().to_string(),
            v.phase().to_string(),
            v.spec
                .claim_ref
                .as_ref()
                .map(|r| format!("{}/{}", r.namespace, r.name))
                .unwrap_or_default(),
            v.spec.storage_class_name.clone(),
            "<unset>".to_string(),
            v.status
                .as_ref()
                .map(|s| s.reason.clone())
                .unwrap_or_default(),
            age(v.metadata.creation_timestamp.as_ref(), now),
        ]);
    }
    t
}

/// kubectl's `get secrets`: NAME TYPE DATA AGE (never a value).
pub fn secret_table(items: &[Secret], now: DateTime<Utc>) -> Table {
    let mut t = Table::new(&["NAME", "TYPE", "DATA", "AGE"]);
    for s in items {
        t.rows.push(vec![
            s.metadata.name.clone(),
            s.secret_type().to_string(),
            s.data.len().to_string(),
            age(s.metadata.creation_timestamp.as_ref(), now),
        ]);
    }
    t
}

/// kubectl's `get namespaces`: NAME STATUS AGE.
pub fn namespace_table(items: &[Namespace], now: DateTime<Utc>) -> Table {
    let mut t = Table::new(&["NAME", "STATUS", "AGE"]);
    for n in items {
        let phase = match n.status.phase.as_str() {
            "" => "Active",
            p => p,
        };
        t.rows.push(vec![
            n.metadata.name.clone(),
            phase.to_string(),
            age(n.metadata.creation_timestamp.as_ref(), now),
        ]);
    }
    t
}

/// `berth images`: every tag of the cluster registry with its digest, size and the nodes
/// that have that digest (by the `repo@digest` names in Node `status.images`).
pub fn images_table(tags: &[ImageTag], manifests: &[ImageManifest], nodes: &[Node]) -> Table {
    let mut t = Table::new(&["REPOSITORY", "TAG", "DIGEST", "SIZE", "NODES"]);
    let mut tags: Vec<&ImageTag> = tags.iter().collect();
    tags.sort_by(|a, b| (&a.spec.repository, &a.spec.tag).cmp(&(&b.spec.repository, &b.spec.tag)));
    for tag in tags {
        let (repo, digest) = (&tag.spec.repository, &tag.spec.digest);
        let size = manifests
            .iter()
            .find(|m| &m.spec.digest == digest && &m.spec.repository == repo)
            .map(|m| human_size(m.spec.total_size))
            .unwrap_or_else(|| "-".to_string());
        let exact = format!("{repo}@{digest}");
        let suffix = format!("/{exact}");
        let mut on: Vec<&str> = nodes
            .iter()
            .filter(|n| {
                n.status.as_ref().is_some_and(|s| {
                    s.images.iter().any(|i| {
                        i.names
                            .iter()
                            .any(|name| *name == exact || name.ends_with(&suffix))
                    })
                })
            })
            .map(|n| n.metadata.name.as_str())
            .collect();
        on.sort();
        t.rows.push(vec![
            repo.clone(),
            tag.spec.tag.clone(),
            short_digest(digest),
            size,
            if on.is_empty() {
                "<none>".to_string()
            } else {
                on.join(",")
            },
        ]);
    }
    t
}

pub fn image_manifest_table(items: &[ImageManifest], now: DateTime<Utc>) -> Table {
    let mut t = Table::new(&["REPOSITORY", "DIGEST", "MEDIA TYPE", "SIZE", "AGE"]);
    for i in items {
        t.rows.push(vec![
            i.spec.repository.clone(),
            short_digest(&i.spec.digest),
            i.spec.media_type.clone(),
            human_size(i.spec.total_size),
            age(i.metadata.creation_timestamp.as_ref(), now),
        ]);
    }
    t
}

pub fn image_blob_table(items: &[ImageBlob], now: DateTime<Utc>) -> Table {
    let mut t = Table::new(&["DIGEST", "SIZE", "SERVERS", "AGE"]);
    for i in items {
        let servers = i
            .status
            .as_ref()
            .map(|s| s.servers.join(","))
            .unwrap_or_default();
        t.rows.push(vec![
            short_digest(&i.spec.digest),
            human_size(i.spec.size),
            or_none(servers),
            age(i.metadata.creation_timestamp.as_ref(), now),
        ]);
    }
    t
}

pub fn registry_server_table(items: &[RegistryServer], now: DateTime<Utc>) -> Table {
    let mut t = Table::new(&["NAME", "SERVER ID", "URL", "AGE"]);
    for i in items {
        t.rows.push(vec![
            i.metadata.name.clone(),
            i.spec.server_id.to_string(),
            i.spec.url.clone(),
            age(i.metadata.creation_timestamp.as_ref(), now),
        ]);
    }
    t
}

/// When an event last happened (falls back to first seen, then creation).
pub fn event_time(e: &Event) -> Option<DateTime<Utc>> {
    e.last_timestamp
        .or(e.first_timestamp)
        .or(e.metadata.creation_timestamp)
}

/// Events sorted oldest first, as kubectl does.
pub fn event_table(items: &[Event], now: DateTime<Utc>) -> Table {
    let mut sorted: Vec<&Event> = items.iter().collect();
    sorted.sort_by_key(|e| event_time(e));
    let mut t = Table::new(&["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]);
    for e in sorted {
        let obj = match Kind::parse(&e.involved_object.kind) {
            Some(k) => format!("{}/{}", k.as_str().to_lowercase(), e.involved_object.name),
            None => format!(
                "{}/{}",
                e.involved_object.kind.to_lowercase(),
                e.involved_object.name
            ),
        };
        t.rows.push(vec![
            age(event_time(e).as_ref(), now),
            e.type_.clone(),
            e.reason.clone(),
            obj,
            e.message.clone(),
        ]);
    }
    t
}

fn typed<T: Resource>(objs: &[DynObject]) -> Result<Vec<T>, String> {
    objs.iter()
        .map(|o| {
            o.to_typed::<T>()
                .map_err(|e| format!("{} {}: {e}", T::KIND, o.name()))
        })
        .collect()
}

/// The table for `objs` (all of `kind`). Events are sorted by time; the others keep the
/// server's order.
pub fn rows(
    kind: Kind,
    objs: &[DynObject],
    now: DateTime<Utc>,
    opts: RowOptions,
) -> Result<Table, String> {
    let wide = opts.wide;
    let ns_of = |objs: &[DynObject]| -> Vec<String> {
        objs.iter().map(|o| o.namespace().to_string()).collect()
    };
    let (table, namespaces) = match kind {
        Kind::Event => {
            let mut evs = typed::<Event>(objs)?;
            evs.sort_by_key(event_time);
            let ns = evs.iter().map(|e| e.metadata.namespace.clone()).collect();
            (event_table(&evs, now), ns)
        }
        Kind::Deployment => (deployment_table(&typed(objs)?, now, wide), ns_of(objs)),
        Kind::ReplicaSet => (replicaset_table(&typed(objs)?, now, wide), ns_of(objs)),
        Kind::Pod => (pod_table(&typed(objs)?, now, wide), ns_of(objs)),
        Kind::Service => (service_table(&typed(objs)?, now, wide), ns_of(objs)),
        Kind::Endpoints => (endpoints_table(&typed(objs)?, now), ns_of(objs)),
        Kind::Node => (node_table(&typed(objs)?, now, wide), ns_of(objs)),
        Kind::ImageTag => (image_tag_table(&typed(objs)?, now), ns_of(objs)),
        Kind::ImageManifest => (image_manifest_table(&typed(objs)?, now), ns_of(objs)),
        Kind::ImageBlob => (image_blob_table(&typed(objs)?, now), ns_of(objs)),
        Kind::RegistryServer => (registry_server_table(&typed(objs)?, now), ns_of(objs)),
        // Image trust.
        Kind::TrustKey => (trust_key_table(&typed(objs)?, now), ns_of(objs)),
        Kind::ImageSignature => (image_signature_table(&typed(objs)?, now), ns_of(objs)),
        Kind::ClusterImagePolicy => {
            let ps: Vec<ClusterImagePolicy> = typed(objs)?;
            let rows = ps
                .iter()
                .map(|p| (&p.metadata, &p.spec))
                .collect::<Vec<_>>();
            (image_policy_table(&rows, now), ns_of(objs))
        }
        Kind::ImagePolicy => {
            let ps: Vec<ImagePolicy> = typed(objs)?;
            let rows = ps
                .iter()
                .map(|p| (&p.metadata, &p.spec))
                .collect::<Vec<_>>();
            (image_policy_table(&rows, now), ns_of(objs))
        }
        Kind::ConfigMap => (config_map_table(&typed(objs)?, now), ns_of(objs)),
        Kind::Secret => (secret_table(&typed(objs)?, now), ns_of(objs)),
        Kind::PersistentVolumeClaim => (claim_table(&typed(objs)?, now, wide), ns_of(objs)),
        Kind::PersistentVolume => (volume_table(&typed(objs)?, now), ns_of(objs)),
        Kind::Namespace => (namespace_table(&typed(objs)?, now), ns_of(objs)),
    };
    let mut table = table;
    if opts.show_labels && kind != Kind::Event {
        table.headers.push("LABELS".to_string());
        for (row, o) in table.rows.iter_mut().zip(objs) {
            row.push(or_none(labels_string(&o.meta().labels)));
        }
    }
    Ok(if opts.all_namespaces && kind.namespaced() {
        table.with_namespace(&namespaces)
    } else {
        table
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn images_table_names_the_nodes_holding_each_tags_digest() {
        let d1 = format!("sha256:{}", "a".repeat(64));
        let d2 = format!("sha256:{}", "b".repeat(64));
        let tag = |repo: &str, t: &str, d: &str| ImageTag {
            spec: ImageTagSpec {
                repository: repo.into(),
                tag: t.into(),
                digest: d.into(),
            },
            ..Default::default()
        };
        let node = |name: &str, names: &[&str]| Node {
            metadata: ObjectMeta {
                name: name.into(),
                ..Default::default()
            },
            status: Some(NodeStatus {
                images: vec![ContainerImage {
                    names: names.iter().map(|n| n.to_string()).collect(),
                    size_bytes: 1,
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let manifests = vec![ImageManifest {
            spec: ImageManifestSpec {
                repository: "nginx".into(),
                digest: d1.clone(),
                total_size: 2_000_000,
                ..Default::default()
            },
            ..Default::default()
        }];
        let nodes = vec![
            node(
                "n2",
                &[&format!("127.0.0.1:5000/nginx@{d1}"), "nginx:1.14.2"],
            ),
            node("n1", &[&format!("nginx@{d1}")]),
            // Same tag name, other bytes: not this image.
            node(
                "n3",
                &["nginx:1.14.2", &format!("127.0.0.1:5000/nginx@{d2}")],
            ),
        ];
        let t = images_table(
            &[tag("shop", "v1", &d2), tag("nginx", "1.14.2", &d1)],
            &manifests,
            &nodes,
        );
        assert_eq!(t.rows[0][..2], ["nginx".to_string(), "1.14.2".to_string()]);
        assert_eq!(t.rows[0][3], "2.0MB");
        assert_eq!(t.rows[0][4], "n1,n2");
        assert_eq!(t.rows[1][3], "-");
        assert_eq!(t.rows[1][4], "<none>");
    }

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0)
            .single()
            .expect("valid")
    }

    fn meta(name: &str, created_secs_ago: i64) -> ObjectMeta {
        ObjectMeta {
            name: name.into(),
            namespace: "default".into(),
            creation_timestamp: Some(t0() - chrono::Duration::seconds(created_secs_ago)),
            ..Default::default()
        }
    }

    #[test]
    fn human_duration_matches_kubectl() {
        let cases = [
            (0, "0s"),
            (45, "45s"),
            (119, "119s"),
            (120, "2m"),
            (310, "5m10s"),
            (600, "10m"),
            (3 * 3600 + 5 * 60, "3h5m"),
            (10 * 3600, "10h"),
            (50 * 3600, "2d2h"),
            (30 * 86400, "30d"),
            (3 * 365 * 86400 + 20 * 86400, "3y20d"),
        ];
        for (secs, want) in cases {
            assert_eq!(
                human_duration(chrono::Duration::seconds(secs)),
                want,
                "{secs}"
            );
        }
        assert_eq!(human_duration(chrono::Duration::seconds(-5)), "<invalid>");
    }

    #[test]
    fn deployment_table_is_aligned_like_kubectl() {
        let mk = |name: &str, replicas, ready, age| Deployment {
            metadata: meta(name, age),
            spec: DeploymentSpec {
                replicas: Some(replicas),
                ..Default::default()
            },
            status: Some(DeploymentStatus {
                ready_replicas: ready,
                updated_replicas: ready,
                available_replicas: ready,
                ..Default::default()
            }),
            ..Default::default()
        };
        let t = deployment_table(
            &[mk("web", 3, 3, 300), mk("api-backend", 10, 7, 90000)],
            t0(),
            false,
        );
        assert_eq!(
            t.render(),
            "\
NAME          READY   UP-TO-DATE   AVAILABLE   AGE
web           3/3     3            3           5m
api-backend   7/10    7            7           25h
"
        );
    }

    fn pod(name: &str) -> Pod {
        Pod {
            metadata: meta(name, 65),
            spec: PodSpec {
                containers: vec![Container {
                    name: "app".into(),
                    image: "demo".into(),
                    ..Default::default()
                }],
                node_name: "node-1".into(),
                ..Default::default()
            },
            status: Some(PodStatus {
                phase: PodPhase::Running.into(),
                host_ip: "10.0.0.5".into(),
                pod_ip: "10.0.0.5".into(),
                container_statuses: vec![ContainerStatus {
                    name: "app".into(),
                    ready: true,
                    restart_count: 2,
                    ..Default::default()
                }],
                host_ports: vec![HostPortMapping {
                    container_name: "app".into(),
                    container_port: 8080,
                    host_port: 31001,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn pod_table_wide_shows_node_and_published_ports() {
        let mut crashing = pod("web-2");
        if let Some(st) = crashing.status.as_mut() {
            st.container_statuses[0].ready = false;
            st.container_statuses[0].state.waiting = Some(ContainerStateWaiting {
                reason: "CrashLoopBackOff".into(),
                message: String::new(),
            });
        }
        let t = pod_table(&[pod("web-1"), crashing], t0(), true);
        assert_eq!(
            t.render(),
            "\
NAME    READY   STATUS             RESTARTS   AGE   IP         NODE     IP:PORTS
web-1   1/1     Running            2          65s   10.0.0.5   node-1   10.0.0.5:31001
web-2   0/1     CrashLoopBackOff   2          65s   10.0.0.5   node-1   10.0.0.5:31001
"
        );
    }

    /// `pod("x")` with init containers `one`, `+proxy` (a sidecar), `two`.
    fn init_pod() -> Pod {
        let mut p = pod("x");
        let c = |name: &str, sidecar: bool| Container {
            name: name.into(),
            image: "busybox".into(),
            restart_policy: sidecar.then(|| "Always".to_string()),
            ..Default::default()
        };
        p.spec.init_containers = vec![c("one", false), c("proxy", true), c("two", false)];
        p
    }

    fn set_init(p: &mut Pod, states: Vec<ContainerStatus>, initialized: bool) {
        if let Some(st) = p.status.as_mut() {
            st.init_container_statuses = states;
            st.conditions = vec![Condition {
                type_: "Initialized".into(),
                status: if initialized { "True" } else { "False" }.into(),
                ..Default::default()
            }];
        }
    }

    fn init_status(
        name: &str,
        state: ContainerState,
        started: bool,
        ready: bool,
    ) -> ContainerStatus {
        ContainerStatus {
            name: name.into(),
            state,
            started: Some(started),
            ready,
            ..Default::default()
        }
    }

    fn waiting_state(reason: &str) -> ContainerState {
        ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: reason.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn terminated_state(code: i32, reason: &str) -> ContainerState {
        ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: code,
                reason: reason.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn running_state() -> ContainerState {
        ContainerState {
            running: Some(Default::default()),
            ..Default::default()
        }
    }

    #[test]
    fn pod_status_and_ready_show_init_progress_like_kubectl() {
        let pending = || waiting_state("PodInitializing");
        let cases: Vec<(&str, Vec<ContainerStatus>, bool, &str, &str)> = vec![
            (
                "first init container running",
                vec![
                    init_status("one", running_state(), true, false),
                    init_status("proxy", pending(), false, false),
                    init_status("two", pending(), false, false),
                ],
                false,
                "Init:0/3",
                "0/2",
            ),
            (
                "first done, sidecar started",
                vec![
                    init_status("one", terminated_state(0, "Completed"), false, false),
                    init_status("proxy", running_state(), true, true),
                    init_status("two", running_state(), true, false),
                ],
                false,
                "Init:2/3",
                "1/2",
            ),
            (
                "an init container failed",
                vec![
                    init_status("one", terminated_state(1, "Error"), false, false),
                    init_status("proxy", pending(), false, false),
                    init_status("two", pending(), false, false),
                ],
                false,
                "Init:Error",
                "0/2",
            ),
            (
                "an init container in crash loop",
                vec![
                    init_status("one", waiting_state("CrashLoopBackOff"), false, false),
                    init_status("proxy", pending(), false, false),
                    init_status("two", pending(), false, false),
                ],
                false,
                "Init:CrashLoopBackOff",
                "0/2",
            ),
            (
                "killed by a signal without a reason",
                vec![ContainerStatus {
                    name: "one".into(),
                    state: ContainerState {
                        terminated: Some(ContainerStateTerminated {
                            exit_code: 137,
                            signal: Some(9),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                    ..Default::default()
                }],
                false,
                "Init:Signal:9",
                "0/2",
            ),
        ];
        for (name, states, initialized, want_status, want_ready) in cases {
            let mut p = init_pod();
            set_init(&mut p, states, initialized);
            if let Some(st) = p.status.as_mut() {
                st.container_statuses[0].ready = false;
                st.container_statuses[0].state = waiting_state("PodInitializing");
            }
            assert_eq!(pod_status(&p), want_status, "case: {name}");
            assert_eq!(pod_ready(&p), want_ready, "case: {name}");
        }
        // Init done, app not started yet: PodInitializing; then Running with the sidecar
        // counted in READY and its restarts in RESTARTS.
        let mut p = init_pod();
        let mut proxy = init_status("proxy", running_state(), true, true);
        proxy.restart_count = 3;
        let mut one = init_status("one", terminated_state(0, "Completed"), false, false);
        one.restart_count = 5;
        set_init(
            &mut p,
            vec![
                one,
                proxy,
                init_status("two", terminated_state(0, "Completed"), false, false),
            ],
            true,
        );
        let app_running = p.clone();
        if let Some(st) = p.status.as_mut() {
            st.container_statuses[0].ready = false;
            st.container_statuses[0].state = waiting_state("PodInitializing");
        }
        assert_eq!(pod_status(&p), "PodInitializing");
        assert_eq!(pod_ready(&app_running), "2/2");
        assert_eq!(pod_status(&app_running), "Running");
        assert_eq!(
            pod_restarts(&app_running),
            2 + 3,
            "app + sidecar, not the completed init"
        );
    }

    #[test]
    fn pod_status_prefers_terminating_then_container_reasons() {
        let mut p = pod("x");
        p.metadata.deletion_timestamp = Some(t0());
        assert_eq!(pod_status(&p), "Terminating");
        let mut p = pod("x");
        p.status = None;
        assert_eq!(pod_status(&p), "Pending");
        let mut p = pod("x");
        if let Some(st) = p.status.as_mut() {
            st.container_statuses[0].state.terminated = Some(ContainerStateTerminated {
                exit_code: 3,
                ..Default::default()
            });
        }
        assert_eq!(pod_status(&p), "ExitCode:3");
    }

    #[test]
    fn service_ports_show_node_ports() {
        let s = Service {
            metadata: meta("web", 10),
            spec: ServiceSpec {
                ports: vec![
                    ServicePort {
                        port: 80,
                        node_port: Some(30080),
                        ..Default::default()
                    },
                    ServicePort {
                        port: 53,
                        protocol: Some("UDP".into()),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            },
            ..Default::default()
        };
        let t = service_table(&[s], t0(), false);
        assert_eq!(
            t.render(),
            "\
NAME   TYPE       CLUSTER-IP   EXTERNAL-IP   PORT(S)               AGE
web    NodePort   <none>       <none>        80:30080/TCP,53/UDP   10s
"
        );
    }

    #[test]
    fn endpoints_are_truncated_after_three() {
        let addr = |ip: &str| EndpointAddress {
            ip: ip.into(),
            ..Default::default()
        };
        let e = Endpoints {
            metadata: meta("web", 10),
            subsets: vec![EndpointSubset {
                addresses: vec![addr("a"), addr("b"), addr("c"), addr("d")],
                ports: vec![EndpointPort {
                    port: 80,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(endpoints_string(&e), "a:80,b:80,c:80 + 1 more...");
        assert_eq!(endpoints_string(&Endpoints::default()), "<none>");
    }

    #[test]
    fn programmed_column_counts_nodes_and_names_laggards_with_their_lag() {
        let now = t0();
        let node = |name: &str, rev: u64| {
            let mut n = Node::default();
            n.metadata.name = name.into();
            n.status = Some(NodeStatus {
                conditions: vec![Condition::new("Ready", true, "", "", now)],
                proxy: Some(NodeProxyStatus {
                    mode: "userspace".into(),
                    programmed_revision: rev,
                    programmed_time: None,
                }),
                ..Default::default()
            });
            n
        };
        let mut e = Endpoints::default();
        e.metadata.resource_version = 50;
        e.metadata.annotations.insert(
            "endpoints.kubernetes.io/last-change-trigger-time".into(),
            (now - chrono::Duration::milliseconds(1200)).to_rfc3339(),
        );
        let nodes = [node("a", 50), node("b", 49), node("c", 70)];
        assert_eq!(programmed_string(&e, &nodes, now), "2/3 (b +1.2s)");
        assert_eq!(programmed_string(&e, &nodes[..1], now), "1/1");
        assert_eq!(programmed_string(&e, &[], now), "<none>");
    }

    #[test]
    fn node_table_shows_readiness_and_cordon() {
        let n = Node {
            metadata: meta("node-1", 4 * 3600),
            spec: NodeSpec {
                unschedulable: true,
                ..Default::default()
            },
            status: Some(NodeStatus {
                conditions: vec![Condition::new("Ready", true, "", "", t0())],
                node_info: Some(NodeSystemInfo {
                    kubelet_version: "berth-0.1.0".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            node_table(&[n], t0(), false).render(),
            "\
NAME     STATUS                     ROLES    AGE   VERSION
node-1   Ready,SchedulingDisabled   <none>   4h    berth-0.1.0
"
        );
    }

    #[test]
    fn events_are_sorted_oldest_first_with_object_refs() {
        let ev = |name: &str, secs_ago: i64, reason: &str| Event {
            metadata: meta(name, secs_ago),
            involved_object: ObjectReference {
                kind: "Pod".into(),
                name: "web-1".into(),
                ..Default::default()
            },
            reason: reason.into(),
            message: "m".into(),
            type_: "Normal".into(),
            last_timestamp: Some(t0() - chrono::Duration::seconds(secs_ago)),
            ..Default::default()
        };
        let objs: Vec<DynObject> = [ev("e1", 5, "Started"), ev("e2", 30, "Scheduled")]
            .iter()
            .map(DynObject::from_typed)
            .collect();
        let t = rows(Kind::Event, &objs, t0(), RowOptions::default()).expect("rows");
        assert_eq!(
            t.render(),
            "\
LAST SEEN   TYPE     REASON      OBJECT      MESSAGE
30s         Normal   Scheduled   pod/web-1   m
5s          Normal   Started     pod/web-1   m
"
        );
    }

    #[test]
    fn all_namespaces_and_show_labels_add_columns() {
        let objs = vec![DynObject::from_typed(&pod("web-1"))];
        let t = rows(
            Kind::Pod,
            &objs,
            t0(),
            RowOptions {
                all_namespaces: true,
                show_labels: true,
                ..RowOptions::default()
            },
        )
        .expect("rows");
        assert_eq!(t.headers[0], "NAMESPACE");
        assert_eq!(t.rows[0][0], "default");
        assert_eq!(t.headers.last().map(String::as_str), Some("LABELS"));
        assert_eq!(t.rows[0].last().map(String::as_str), Some("<none>"));
    }

    #[test]
    fn kind_refs_use_api_group() {
        assert_eq!(kind_ref(Kind::Deployment, "web"), "deployment.apps/web");
        assert_eq!(kind_ref(Kind::Service, "web"), "service/web");
        assert_eq!(kind_resource(Kind::ReplicaSet), "replicaset.apps");
    }
}
