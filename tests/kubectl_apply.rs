//! kubectl's write semantics against Berth's Kubernetes REST API: server-side apply (field
//! managers, conflicts, --force-conflicts), server-side dry run and `kubectl diff`, and
//! deletion with `--cascade=orphan`. kubectl 1.32 on an in-process three-member cluster,
//! through a follower.
//!
//! Needs kubectl (fails under CI=true without it; .ci/run installs it).

#[path = "common/kube_env.rs"]
mod kube_env;

use berth_apiserver::testing::wait_until;
use kube_env::{require_kubectl, KubeEnv, DEADLINE};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_diff_and_server_dry_runs_store_nothing() {
    if !require_kubectl("kubectl_diff_and_server_dry_runs_store_nothing") {
        return;
    }
    let env = KubeEnv::start().await;
    let manifest = env.file("web.yaml", WEB);
    let m = manifest.to_str().expect("path");

    // A server dry-run create answers the would-be object and stores nothing.
    let out = env
        .kubectl(&["create", "--dry-run=server", "-o", "json", "-f", m])
        .await;
    let would: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(would["metadata"]["name"], "web", "{would}");
    assert!(
        !would["metadata"]["uid"].as_str().unwrap_or("").is_empty(),
        "{would}"
    );
    let (code, _, err) = env.kubectl_code(&["get", "deploy", "web"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("not found"), "{err}");
    // kubectl diff of an object that does not exist: the whole object is the diff.
    let (code, out, err) = env.kubectl_code(&["diff", "-f", m]).await;
    assert_eq!(code, 1, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("+  name: web"), "{out}");

    env.kubectl(&["apply", "-f", m]).await;
    let before = env.get_json(&["deploy", "web"]).await;
    let (code, out, err) = env.kubectl_code(&["diff", "-f", m]).await;
    assert_eq!(code, 0, "unchanged manifest differs:\n{out}\n{err}");
    assert!(out.is_empty(), "{out}");

    let edited = WEB.replace("nginx:1.27", "nginx:1.28");
    std::fs::write(&manifest, &edited).expect("edit");
    let (code, out, err) = env.kubectl_code(&["diff", "-f", m]).await;
    assert_eq!(code, 1, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("-        image: nginx:1.27"), "{out}");
    assert!(out.contains("+        image: nginx:1.28"), "{out}");
    // Server-side: the object was made by client-side apply, whose manager owns the image;
    // a conflict on a field of its last-applied-configuration goes to the server-side
    // applier (as Kubernetes migrates), so the diff shows the edit.
    let (code, out, err) = env.kubectl_code(&["diff", "--server-side", "-f", m]).await;
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("+        image: nginx:1.28"), "{out}");

    // Server dry runs of apply, scale and delete change nothing.
    let out = env.kubectl(&["apply", "--dry-run=server", "-f", m]).await;
    assert!(out.contains("(server dry run)"), "{out}");
    let out = env
        .kubectl(&["apply", "--server-side", "--dry-run=server", "-f", m])
        .await;
    assert!(out.contains("(server dry run)"), "{out}");
    env.kubectl(&["scale", "deploy/web", "--replicas=7", "--dry-run=server"])
        .await;
    let out = env
        .kubectl(&["delete", "deploy", "web", "--dry-run=server"])
        .await;
    assert!(out.contains("(server dry run)"), "{out}");
    let after = env.get_json(&["deploy", "web"]).await;
    // (The controllers write status meanwhile: the spec's generation tells spec writes.)
    assert_eq!(
        after["metadata"]["generation"], before["metadata"]["generation"],
        "a dry run wrote the spec: {after}"
    );
    assert_eq!(after["metadata"]["uid"], before["metadata"]["uid"]);
    assert_eq!(
        after["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:1.27"
    );
    assert_eq!(after["spec"]["replicas"], 2);

    // Moving from client-side to server-side apply: the edit applies without a conflict and
    // kubectl's Apply entry owns the image.
    let out = env.kubectl(&["apply", "--server-side", "-f", m]).await;
    assert!(out.contains("serverside-applied"), "{out}");
    let d = env.get_json(&["deploy", "web"]).await;
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:1.28"
    );
    assert!(
        managers(&d).contains(&("kubectl".into(), "Apply".into())),
        "{d}"
    );
    env.stop().await;
}

/// The ReplicaSets labelled `app=NAME`: (name, owner uids).
async fn replica_sets(env: &KubeEnv, app: &str) -> Vec<(String, Vec<String>)> {
    let l = format!("app={app}");
    let list = env.get_json(&["rs", "-l", &l]).await;
    list["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|rs| {
                    let owners = rs["metadata"]["ownerReferences"]
                        .as_array()
                        .map(|o| {
                            o.iter()
                                .map(|r| r["uid"].as_str().unwrap_or("").to_string())
                                .collect()
                        })
                        .unwrap_or_default();
                    (
                        rs["metadata"]["name"].as_str().unwrap_or("").to_string(),
                        owners,
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_delete_cascade_orphan_keeps_replica_sets_and_foreground_waits_for_them() {
    if !require_kubectl(
        "kubectl_delete_cascade_orphan_keeps_replica_sets_and_foreground_waits_for_them",
    ) {
        return;
    }
    let env = KubeEnv::start().await;
    let web = env.file("web.yaml", WEB);
    let api = env.file("api.yaml", &WEB.replace("web", "api"));
    env.kubectl(&["apply", "-f", web.to_str().expect("path")])
        .await;
    env.kubectl(&["apply", "-f", api.to_str().expect("path")])
        .await;
    for app in ["web", "api"] {
        wait_until(DEADLINE, &format!("a ReplicaSet of {app}"), || async {
            (!replica_sets(&env, app).await.is_empty()).then_some(())
        })
        .await
        .expect("replica set");
    }
    let web_uid = env.get_json(&["deploy", "web"]).await["metadata"]["uid"]
        .as_str()
        .expect("uid")
        .to_string();
    assert!(replica_sets(&env, "web").await[0].1.contains(&web_uid));

    // Orphan: the Deployment goes, its ReplicaSet stays without the owner reference.
    let out = env
        .kubectl(&["delete", "deploy", "web", "--cascade=orphan"])
        .await;
    assert!(out.contains("deployment.apps \"web\" deleted"), "{out}");
    let (code, _, _) = env.kubectl_code(&["get", "deploy", "web"]).await;
    assert_ne!(code, 0, "the deployment is still there");

    // Foreground: kubectl returns once the ReplicaSet (and its pods) are gone. That also
    // shows garbage collection ran after the orphaning.
    let out = env
        .kubectl(&["delete", "deploy", "api", "--cascade=foreground"])
        .await;
    assert!(out.contains("deployment.apps \"api\" deleted"), "{out}");
    assert!(replica_sets(&env, "api").await.is_empty());
    let pods = env.get_json(&["pods", "-l", "app=api"]).await;
    assert_eq!(pods["items"].as_array().map(Vec::len), Some(0), "{pods}");

    let orphans = replica_sets(&env, "web").await;
    assert_eq!(orphans.len(), 1, "{orphans:?}");
    assert!(orphans[0].1.is_empty(), "still owned: {orphans:?}");

    // Background (the default) on the orphaned ReplicaSet: its pods are collected.
    env.kubectl(&["delete", "rs", &orphans[0].0]).await;
    wait_until(
        DEADLINE,
        "the orphaned ReplicaSet's pods collected",
        || async {
            let pods = env.get_json(&["pods", "-l", "app=web"]).await;
            pods["items"]
                .as_array()
                .is_some_and(Vec::is_empty)
                .then_some(())
        },
    )
    .await
    .expect("pods collected");
    env.stop().await;
}

/// `spec.strategy.rollingUpdate.autoRevert` is part of Berth's Deployment schema: kubectl's
/// client-side and server-side apply both store it (Berth publishes no OpenAPI schemas, so
/// kubectl leaves validation to the server), and the server's strict validation refuses a
/// misspelling instead of ignoring it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_applies_auto_revert_and_the_server_refuses_a_misspelling() {
    if !require_kubectl("kubectl_applies_auto_revert_and_the_server_refuses_a_misspelling") {
        return;
    }
    let env = KubeEnv::start().await;
    let with = |block: &str| WEB.replace("  replicas: 2\n", &format!("  replicas: 2\n{block}"));
    let good = with(
        "  strategy:\n    type: RollingUpdate\n    rollingUpdate:\n      maxSurge: 1\n      \
         autoRevert: true\n      autoRevertFailedPods: 1\n",
    );
    let m = env.file("web.yaml", &good);
    let m = m.to_str().expect("path");
    env.kubectl(&["apply", "-f", m]).await;
    let d = env.get_json(&["deploy", "web"]).await;
    assert_eq!(
        d["spec"]["strategy"]["rollingUpdate"]["autoRevert"], true,
        "{d}"
    );
    let out = env
        .kubectl(&["apply", "--server-side", "--force-conflicts", "-f", m])
        .await;
    assert!(out.contains("serverside-applied"), "{out}");
    let d = env.get_json(&["deploy", "web"]).await;
    assert_eq!(
        d["spec"]["strategy"]["rollingUpdate"]["autoRevertFailedPods"], 1,
        "{d}"
    );

    let typo = env.file(
        "typo.yaml",
        &with("  strategy:\n    rollingUpdate:\n      autoRevrt: true\n"),
    );
    let t = typo.to_str().expect("path");
    for args in [
        vec!["apply", "-f", t],
        vec!["apply", "--server-side", "--force-conflicts", "-f", t],
    ] {
        let (code, out, err) = env.kubectl_code(&args).await;
        assert_ne!(code, 0, "{args:?} accepted a misspelt field: {out}");
        assert!(err.contains("autoRevrt"), "{args:?}: {err}");
    }
    env.stop().await;
}
