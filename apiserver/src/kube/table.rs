//! `meta.k8s.io/v1 Table` responses (`kubectl get` asks for them): the same columns
//! `berth get` prints, from `berth_proto::table`, with the `-o wide` columns at priority 1.

use berth_proto::table::{event_time, rows, RowOptions};
use berth_proto::types::Event;
use berth_proto::{DynObject, Kind};
use serde_json::{json, Value};

/// Whether `accept` asks for a Table (`application/json;as=Table;v=v1;g=meta.k8s.io`).
pub fn wants_table(accept: &str) -> bool {
    accept.split(',').any(|part| {
        let params: Vec<&str> = part.split(';').map(str::trim).collect();
        params.contains(&"as=Table")
            && params.contains(&"g=meta.k8s.io")
            && (params.contains(&"v=v1") || params.contains(&"v=v1beta1"))
    })
}

/// The Table of `objs` (all of `kind`), each row carrying the object's metadata
/// (`PartialObjectMetadata`, what kubectl uses for `-A`, `-L` and `--show-labels`) or the
/// whole object when `include_object` is "Object".
pub fn table(
    kind: Kind,
    objs: &[DynObject],
    resource_version: Option<u64>,
    include_object: &str,
) -> Result<Value, String> {
    let mut objs: Vec<DynObject> = objs.to_vec();
    if kind == Kind::Event {
        // `rows` sorts events by time; sort first (stably, the same key) so rows and
        // objects line up.
        let mut keyed: Vec<(Option<chrono::DateTime<chrono::Utc>>, DynObject)> = objs
            .into_iter()
            .map(|o| (o.to_typed::<Event>().ok().and_then(|e| event_time(&e)), o))
            .collect();
        keyed.sort_by_key(|(t, _)| *t);
        objs = keyed.into_iter().map(|(_, o)| o).collect();
    }
    let now = chrono::Utc::now();
    let narrow = rows(kind, &objs, now, RowOptions::default())?;
    let wide = rows(
        kind,
        &objs,
        now,
        RowOptions {
            wide: true,
            ..RowOptions::default()
        },
    )?;
    let columns: Vec<Value> = wide
        .headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let priority = if narrow.headers.contains(h) { 0 } else { 1 };
            let mut c = json!({
                "name": title(h),
                "type": "string",
                "format": "",
                "description": "",
                "priority": priority,
            });
            if i == 0 && h == "NAME" {
                c["format"] = "name".into();
            }
            c
        })
        .collect();
    let rows: Vec<Value> = wide
        .rows
        .iter()
        .zip(&objs)
        .map(|(cells, obj)| {
            let object = if include_object == "Object" {
                obj.value.clone()
            } else if include_object == "None" {
                Value::Null
            } else {
                json!({
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": obj.value.get("metadata").cloned().unwrap_or(Value::Null),
                })
            };
            json!({"cells": cells, "object": object})
        })
        .collect();
    let mut metadata = json!({});
    if let Some(rv) = resource_version {
        metadata["resourceVersion"] = rv.to_string().into();
    }
    Ok(json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": columns,
        "rows": rows,
    }))
}

/// "UP-TO-DATE" -> "Up-to-date", "NOMINATED NODE" -> "Nominated Node": Kubernetes' column
/// names (kubectl upper-cases them again when printing).
fn title(h: &str) -> String {
    h.split(' ')
        .map(|w| {
            let lower = w.to_ascii_lowercase();
            let mut c = lower.chars();
            match c.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pod_table_has_kubectl_columns_with_wide_ones_at_priority_one() {
        let pod = DynObject::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-1", "namespace": "default", "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox"}]},
        }))
        .unwrap();
        let t = table(Kind::Pod, &[pod], Some(7), "").unwrap();
        let cols = t["columnDefinitions"].as_array().unwrap();
        assert_eq!(cols[0]["name"], "Name");
        assert_eq!(cols[0]["format"], "name");
        assert_eq!(cols[0]["priority"], 0);
        let node = cols.iter().find(|c| c["name"] == "Node").unwrap();
        assert_eq!(node["priority"], 1);
        assert_eq!(t["rows"][0]["cells"][0], "web-1");
        assert_eq!(t["rows"][0]["cells"].as_array().unwrap().len(), cols.len());
        assert_eq!(t["rows"][0]["object"]["metadata"]["labels"]["app"], "web");
        assert_eq!(t["metadata"]["resourceVersion"], "7");
        assert!(wants_table(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
        ));
        assert!(!wants_table("application/json"));
    }
}
