//! Discovery (`/api`, `/apis`, resource lists, the aggregated v2 format), `/version` and the
//! OpenAPI v3 documents kubectl reads to learn that the server validates fields itself.

use berth_proto::Kind;
use serde_json::{json, Value};

/// Every verb a collection of stored objects supports.
const VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
const SUB_VERBS: [&str; 3] = ["get", "patch", "update"];

/// The Kubernetes version Berth's API answers as (kubectl warns beyond one minor of skew).
pub const KUBE_MINOR: &str = "32";

/// The API group of a kind ("" for the core group).
pub fn group(kind: Kind) -> &'static str {
    kind.api_version().rsplit_once('/').map_or("", |(g, _)| g)
}

/// The groups served under `/apis`, in discovery order.
pub const GROUPS: [&str; 3] = ["apps", "registry.berth.dev", "trust.berth.dev"];

/// The kind served at `group/version/plural`.
pub fn kind_of(group_: &str, version: &str, plural: &str) -> Option<Kind> {
    if version != "v1" {
        return None;
    }
    Kind::ALL
        .into_iter()
        .find(|k| group(*k) == group_ && k.plural() == plural)
}

pub fn kinds_in(group_: &str) -> impl Iterator<Item = Kind> + '_ {
    Kind::ALL.into_iter().filter(move |k| group(*k) == group_)
}

fn short_names(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Deployment => &["deploy"],
        Kind::ReplicaSet => &["rs"],
        Kind::Service => &["svc"],
        Kind::Pod => &["po"],
        Kind::Endpoints => &["ep"],
        Kind::Node => &["no"],
        Kind::Event => &["ev"],
        Kind::ConfigMap => &["cm"],
        Kind::PersistentVolumeClaim => &["pvc"],
        Kind::PersistentVolume => &["pv"],
        Kind::Namespace => &["ns"],
        _ => &[],
    }
}

/// `kubectl get all`.
fn categories(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Deployment | Kind::ReplicaSet | Kind::Service | Kind::Pod => &["all"],
        _ => &[],
    }
}

pub fn has_scale(kind: Kind) -> bool {
    matches!(kind, Kind::Deployment | Kind::ReplicaSet)
}

fn singular(kind: Kind) -> String {
    kind.as_str().to_ascii_lowercase()
}

/// `GET /api`.
pub fn api_versions(advertise: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": advertise}],
    })
}

fn group_versions(g: &str) -> Value {
    let gv = json!({"groupVersion": format!("{g}/v1"), "version": "v1"});
    json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
}

/// `GET /apis`.
pub fn api_group_list() -> Value {
    json!({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": GROUPS.iter().map(|g| group_versions(g)).collect::<Vec<_>>(),
    })
}

/// `GET /apis/GROUP`.
pub fn api_group(g: &str) -> Option<Value> {
    GROUPS.contains(&g).then(|| {
        let mut v = group_versions(g);
        v["kind"] = "APIGroup".into();
        v["apiVersion"] = "v1".into();
        v
    })
}

/// Pod subresources served by their own modules (`podlog`, `exec`): name, kind, verbs.
pub const POD_SUBRESOURCES: &[(&str, &str, &[&str])] = &[
    ("log", "Pod", &["get"]),
    ("exec", "PodExecOptions", &["create", "get"]),
    ("portforward", "PodPortForwardOptions", &["create", "get"]),
];

/// `GET /api/v1` or `/apis/GROUP/v1`.
pub fn resource_list(g: &str) -> Value {
    let gv = if g.is_empty() {
        "v1".to_string()
    } else {
        format!("{g}/v1")
    };
    let mut resources = Vec::new();
    for kind in kinds_in(g) {
        let mut r = json!({
            "name": kind.plural(),
            "singularName": singular(kind),
            "namespaced": kind.namespaced(),
            "kind": kind.as_str(),
            "verbs": VERBS,
        });
        if !short_names(kind).is_empty() {
            r["shortNames"] = json!(short_names(kind));
        }
        if !categories(kind).is_empty() {
            r["categories"] = json!(categories(kind));
        }
        resources.push(r);
        if kind.has_status() {
            resources.push(json!({
                "name": format!("{}/status", kind.plural()),
                "singularName": "",
                "namespaced": kind.namespaced(),
                "kind": kind.as_str(),
                "verbs": SUB_VERBS,
            }));
        }
        if kind == Kind::Pod {
            for (sub, sub_kind, verbs) in POD_SUBRESOURCES {
                resources.push(json!({
                    "name": format!("pods/{sub}"),
                    "singularName": "",
                    "namespaced": true,
                    "kind": sub_kind,
                    "verbs": verbs,
                }));
            }
        }
        if has_scale(kind) {
            resources.push(json!({
                "name": format!("{}/scale", kind.plural()),
                "singularName": "",
                "namespaced": true,
                "group": "autoscaling",
                "version": "v1",
                "kind": "Scale",
                "verbs": SUB_VERBS,
            }));
        }
    }
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": resources,
    })
}

/// The content type of the aggregated discovery document, which clients ask for in `Accept`.
pub const AGGREGATED_V2: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Whether `accept` asks for the aggregated discovery format (v2; v2beta1 is not served).
pub fn wants_aggregated(accept: &str) -> bool {
    accept.split(',').any(|part| {
        let params: Vec<&str> = part.split(';').map(str::trim).collect();
        params.contains(&"g=apidiscovery.k8s.io")
            && params.contains(&"v=v2")
            && params.contains(&"as=APIGroupDiscoveryList")
    })
}

fn aggregated_group(g: &str) -> Value {
    let mut resources = Vec::new();
    for kind in kinds_in(g) {
        let scope = if kind.namespaced() {
            "Namespaced"
        } else {
            "Cluster"
        };
        let mut subs = Vec::new();
        if kind.has_status() {
            subs.push(json!({
                "subresource": "status",
                "responseKind": {"group": g, "version": "v1", "kind": kind.as_str()},
                "verbs": SUB_VERBS,
            }));
        }
        if kind == Kind::Pod {
            for (sub, sub_kind, verbs) in POD_SUBRESOURCES {
                subs.push(json!({
                    "subresource": sub,
                    "responseKind": {"group": "", "version": "v1", "kind": sub_kind},
                    "verbs": verbs,
                }));
            }
        }
        if has_scale(kind) {
            subs.push(json!({
                "subresource": "scale",
                "responseKind": {"group": "autoscaling", "version": "v1", "kind": "Scale"},
                "verbs": SUB_VERBS,
            }));
        }
        let mut r = json!({
            "resource": kind.plural(),
            "responseKind": {"group": g, "version": "v1", "kind": kind.as_str()},
            "scope": scope,
            "singularResource": singular(kind),
            "verbs": VERBS,
        });
        if !short_names(kind).is_empty() {
            r["shortNames"] = json!(short_names(kind));
        }
        if !categories(kind).is_empty() {
            r["categories"] = json!(categories(kind));
        }
        if !subs.is_empty() {
            r["subresources"] = Value::Array(subs);
        }
        resources.push(r);
    }
    json!({
        "metadata": {"name": g},
        "versions": [{"version": "v1", "resources": resources, "freshness": "Current"}],
    })
}

/// Aggregated discovery of `/api` (`core`) or `/apis` (every other group).
pub fn aggregated(core: bool) -> Value {
    let items: Vec<Value> = if core {
        vec![aggregated_group("")]
    } else {
        GROUPS.iter().map(|g| aggregated_group(g)).collect()
    };
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    })
}

/// `GET /version`.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": KUBE_MINOR,
        "gitVersion": format!("v1.{KUBE_MINOR}.0+berth-{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, go_arch()),
    })
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The hash in OpenAPI v3 URLs; clients cache documents by it, so it changes with the schema,
/// i.e. with Berth's version.
fn openapi_hash() -> String {
    format!("berth-{}", env!("CARGO_PKG_VERSION")).replace('.', "-")
}

fn gv_path(g: &str) -> String {
    if g.is_empty() {
        "api/v1".to_string()
    } else {
        format!("apis/{g}/v1")
    }
}

/// `GET /openapi/v3`: where each group-version's document is.
pub fn openapi_root() -> Value {
    let mut paths = serde_json::Map::new();
    for g in std::iter::once("").chain(GROUPS) {
        let p = gv_path(g);
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={}", openapi_hash())}),
        );
    }
    json!({ "paths": paths })
}

fn query_param(name: &str) -> Value {
    json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}})
}

/// `GET /openapi/v3/api/v1` or `/openapi/v3/apis/GROUP/v1`: the paths of each kind with their
/// operations, each tagged with its group-version-kind, and the write operations' query
/// parameters — `fieldValidation` among them, which is how kubectl learns that this server
/// rejects unknown fields itself (Berth always validates strictly). Schemas are not published
/// (kubectl falls back to its compiled-in types for client-side apply).
pub fn openapi_gv(g: &str) -> Option<Value> {
    if !g.is_empty() && !GROUPS.contains(&g) {
        return None;
    }
    let mut paths = serde_json::Map::new();
    for kind in kinds_in(g) {
        let gvk = json!({"group": g, "version": "v1", "kind": kind.as_str()});
        let op = |action: &str, params: &[&str]| {
            json!({
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk,
                "parameters": params.iter().map(|p| query_param(p)).collect::<Vec<_>>(),
                "responses": {"200": {"description": "OK"}},
            })
        };
        let write = ["dryRun", "fieldManager", "fieldValidation", "pretty"];
        let patch = [
            "dryRun",
            "fieldManager",
            "fieldValidation",
            "force",
            "pretty",
        ];
        let list = [
            "labelSelector",
            "fieldSelector",
            "limit",
            "continue",
            "resourceVersion",
            "timeoutSeconds",
            "watch",
            "allowWatchBookmarks",
        ];
        let base = format!("/{}", gv_path(g));
        let (collection, object) = if kind.namespaced() {
            (
                format!("{base}/namespaces/{{namespace}}/{}", kind.plural()),
                format!("{base}/namespaces/{{namespace}}/{}/{{name}}", kind.plural()),
            )
        } else {
            (
                format!("{base}/{}", kind.plural()),
                format!("{base}/{}/{{name}}", kind.plural()),
            )
        };
        paths.insert(
            collection,
            json!({
                "get": op("list", &list),
                "post": op("post", &write),
                "delete": op("deletecollection", &list),
            }),
        );
        paths.insert(
            object.clone(),
            json!({
                "get": op("get", &["pretty"]),
                "put": op("put", &write),
                "patch": op("patch", &patch),
                "delete": op("delete", &["dryRun", "pretty"]),
            }),
        );
        if kind.has_status() {
            paths.insert(
                format!("{object}/status"),
                json!({
                    "get": op("get", &["pretty"]),
                    "put": op("put", &write),
                    "patch": op("patch", &patch),
                }),
            );
        }
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Berth", "version": format!("v1.{KUBE_MINOR}.0")},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn resource_lists_name_every_kind_once_with_scale_and_status_subresources() {
        let apps = resource_list("apps");
        let names: Vec<&str> = apps["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "deployments",
                "deployments/status",
                "deployments/scale",
                "replicasets",
                "replicasets/status",
                "replicasets/scale"
            ]
        );
        let scale = &apps["resources"][2];
        assert_eq!(scale["group"], "autoscaling");
        assert_eq!(scale["kind"], "Scale");
        let core = resource_list("");
        let cm = core["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "configmaps")
            .unwrap();
        assert_eq!(cm["shortNames"], json!(["cm"]));
        assert_eq!(cm["namespaced"], true);
        let mut all = 0;
        for g in std::iter::once("").chain(GROUPS) {
            all += kinds_in(g).count();
        }
        assert_eq!(all, Kind::ALL.len(), "every kind is in exactly one group");
    }

    #[test]
    fn aggregated_discovery_is_chosen_only_when_the_client_asks_for_v2() {
        assert!(wants_aggregated(
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json"
        ));
        assert!(!wants_aggregated("application/json, */*"));
        assert!(!wants_aggregated(
            "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"
        ));
        let apis = aggregated(false);
        assert_eq!(apis["items"][0]["metadata"]["name"], "apps");
        let deploy = &apis["items"][0]["versions"][0]["resources"][0];
        assert_eq!(deploy["subresources"][1]["responseKind"]["kind"], "Scale");
    }

    #[test]
    fn openapi_patch_operations_carry_gvk_and_field_validation() {
        let doc = openapi_gv("apps").unwrap();
        let patch =
            &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"]["kind"],
            "Deployment"
        );
        assert!(patch["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "fieldValidation" && p["in"] == "query"));
        assert!(openapi_gv("nope.example").is_none());
        let root = openapi_root();
        assert!(root["paths"]["apis/apps/v1"]["serverRelativeURL"]
            .as_str()
            .unwrap()
            .starts_with("/openapi/v3/apis/apps/v1?hash="));
    }
}
