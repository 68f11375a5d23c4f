//! kubectl's write semantics against Berth's Kubernetes REST API: server-side apply (field
//! managers, conflicts, --force-conflicts), server-side dry run and `kubectl diff`, and
//! deletion with `--cascade=orphan`. kubectl 1.32 on an in-process three-member cluster,
//! through a follower.
//!
//! Needs kubectl (fails under CI=true without it; .ci/run installs it).

#[path = "common/kube_env.rs"]
mod kube_env;

use kube_env::{require_kubectl, KubeEnv};
use serde_json::Value;

const WEB: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels:
    app: web
  annotations:
    team: blue
spec:
  replicas: 2
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: web
        image: nginx:1.27
        env:
        - name: MODE
          value: prod
";

fn managers(d: &Value) -> Vec<(String, String)> {
    d["metadata"]["managedFields"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    (
                        e["manager"].as_str().unwrap_or("").to_string(),
                        e["operation"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_server_side_apply_tracks_managers_reports_conflicts_and_forces() {
    if !require_kubectl("kubectl_server_side_apply_tracks_managers_reports_conflicts_and_forces") {
        return;
    }
    let env = KubeEnv::start().await;
    let manifest = env.file("web.yaml", WEB);
    let m = manifest.to_str().expect("path");

    let out = env.kubectl(&["apply", "--server-side", "-f", m]).await;
    assert!(
        out.contains("deployment.apps/web serverside-applied"),
        "{out}"
    );
    let d = env.get_json(&["deploy", "web"]).await;
    assert_eq!(managers(&d), [("kubectl".into(), "Apply".into())], "{d}");
    let fields = &d["metadata"]["managedFields"][0];
    assert_eq!(fields["fieldsType"], "FieldsV1");
    assert!(
        fields["fieldsV1"]["f:spec"]["f:template"]["f:spec"]["f:containers"]
            ["k:{\"name\":\"web\"}"]["f:image"]
            .is_object(),
        "{fields}"
    );

    // Edit: new image, the env var and the annotation dropped. Applied again, the dropped
    // fields are gone from the object.
    let edited = WEB
        .replace("nginx:1.27", "nginx:1.28")
        .replace(
            "        env:\n        - name: MODE\n          value: prod\n",
            "",
        )
        .replace("  annotations:\n    team: blue\n", "");
    std::fs::write(&manifest, &edited).expect("edit");
    let out = env.kubectl(&["apply", "--server-side", "-f", m]).await;
    assert!(
        out.contains("deployment.apps/web serverside-applied"),
        "{out}"
    );
    let d = env.get_json(&["deploy", "web"]).await;
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "nginx:1.28", "{d}");
    assert!(c.get("env").is_none(), "env was not removed: {d}");
    assert!(
        d["metadata"]["annotations"].get("team").is_none(),
        "annotation was not removed: {d}"
    );

    // kubectl scale takes spec.replicas: re-applying replicas 2 is a conflict kubectl prints.
    env.kubectl(&["scale", "deploy/web", "--replicas=4"]).await;
    let d = env.get_json(&["deploy", "web"]).await;
    // kubectl scale sends no fieldManager: the user agent's "kubectl", as an Update.
    assert!(
        managers(&d).contains(&("kubectl".into(), "Update".into())),
        "{d}"
    );
    let (code, out, err) = env.kubectl_code(&["apply", "--server-side", "-f", m]).await;
    assert_ne!(code, 0, "conflicting apply succeeded: {out}");
    assert!(err.contains("Apply failed with 1 conflict"), "{err}");
    assert!(err.contains(".spec.replicas"), "{err}");
    assert!(err.contains("conflict with \""), "{err}");
    assert_eq!(
        env.get_json(&["deploy", "web"]).await["spec"]["replicas"],
        4
    );

    // Another applier setting a different image conflicts with kubectl's ownership.
    let other = env.file(
        "other.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  template:\n    \
         spec:\n      containers:\n      - name: web\n        image: nginx:1.29\n",
    );
    let (code, _, err) = env
        .kubectl_code(&[
            "apply",
            "--server-side",
            "--field-manager=other",
            "-f",
            other.to_str().expect("path"),
        ])
        .await;
    assert_ne!(code, 0);
    assert!(err.contains("conflict with \"kubectl\""), "{err}");
    assert!(
        err.contains(".spec.template.spec.containers[name=\"web\"].image"),
        "{err}"
    );

    // --force-conflicts: kubectl takes spec.replicas back.
    let out = env
        .kubectl(&["apply", "--server-side", "--force-conflicts", "-f", m])
        .await;
    assert!(out.contains("serverside-applied"), "{out}");
    let d = env.get_json(&["deploy", "web"]).await;
    assert_eq!(d["spec"]["replicas"], 2, "{d}");
    let replicas_owners: Vec<&str> = d["metadata"]["managedFields"]
        .as_array()
        .expect("managedFields")
        .iter()
        .filter(|e| e["fieldsV1"]["f:spec"].get("f:replicas").is_some())
        .map(|e| e["manager"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(replicas_owners, ["kubectl"], "{d}");

    // Apply without a field manager is refused by the server (kubectl always sends one).
    env.stop().await;
}
