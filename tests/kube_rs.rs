//! The Rust Kubernetes client (`kube` with `k8s-openapi`) against Berth's Kubernetes REST API,
//! the way a Rust pipeline would use it: a kubeconfig as `berth kubeconfig` writes it, typed
//! `Api<Deployment>` list, a `kube::runtime::watcher`, merge/strategic/server-side-apply
//! patches and the scale subresource, on an in-process three-member cluster through a follower.

#[path = "common/kube_env.rs"]
mod kube_env;

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{watcher, WatchStreamExt as _};
use kube_env::{KubeEnv, DEADLINE};
use serde_json::json;

fn deployment(name: &str, replicas: i32) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"pipeline": "rust"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]}
            }
        }
    }))
    .expect("deployment")
}

/// Wait until the watcher reports a Deployment with these (replicas, image).
async fn seen(rx: &mut tokio::sync::mpsc::UnboundedReceiver<(i32, String)>, want: (i32, &str)) {
    tokio::time::timeout(DEADLINE, async {
        while let Some((r, i)) = rx.recv().await {
            if r == want.0 && i == want.1 {
                return;
            }
        }
        panic!("the watch ended before {want:?}");
    })
    .await
    .unwrap_or_else(|_| panic!("the watcher did not see {want:?} in time"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kube_rs_lists_watches_and_patches_deployments_with_a_berth_kubeconfig() {
    let env = KubeEnv::start().await;
    let kubeconfig = Kubeconfig::read_from(&env.kubeconfig).expect("read Berth's kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kube config");
    let client = kube::Client::try_from(config).expect("kube client");
    let api: Api<Deployment> = Api::namespaced(client.clone(), "default");

    let created = api
        .create(&PostParams::default(), &deployment("etl", 1))
        .await
        .expect("create");
    assert!(created.metadata.uid.is_some());
    api.create(&PostParams::default(), &deployment("loader", 2))
        .await
        .expect("create");

    // List with a label selector, typed.
    let list = api
        .list(&ListParams::default().labels("pipeline=rust"))
        .await
        .expect("list");
    let mut names: Vec<String> = list
        .items
        .iter()
        .filter_map(|d| d.metadata.name.clone())
        .collect();
    names.sort();
    assert_eq!(names, ["etl", "loader"]);
    assert!(list.metadata.resource_version.is_some());

    // A watcher (list, then watch from the list's resourceVersion) sees every change below.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let watch_api = api.clone();
    let watching = tokio::spawn(async move {
        let mut stream = watcher(
            watch_api,
            watcher::Config::default().fields("metadata.name=etl"),
        )
        .default_backoff()
        .boxed();
        while let Ok(Some(ev)) = stream.try_next().await {
            if let watcher::Event::Apply(d) | watcher::Event::InitApply(d) = ev {
                let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
                let image = d
                    .spec
                    .as_ref()
                    .and_then(|s| s.template.spec.as_ref())
                    .and_then(|s| s.containers.first())
                    .and_then(|c| c.image.clone())
                    .unwrap_or_default();
                if tx.send((replicas, image)).is_err() {
                    return;
                }
            }
        }
    });
    seen(&mut rx, (1, "nginx:1.27")).await;

    // Merge patch.
    let pp = PatchParams::default();
    api.patch("etl", &pp, &Patch::Merge(json!({"spec": {"replicas": 3}})))
        .await
        .expect("merge patch");
    seen(&mut rx, (3, "nginx:1.27")).await;
    // Strategic merge patch of one container, by name.
    api.patch(
        "etl",
        &pp,
        &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [
            {"name": "app", "image": "nginx:1.28"}
        ]}}}})),
    )
    .await
    .expect("strategic merge patch");
    seen(&mut rx, (3, "nginx:1.28")).await;
    // Server-side apply as the pipeline's own field manager, forced (kube's Patch::Apply).
    let applied = api
        .patch(
            "etl",
            &PatchParams::apply("rust-pipeline").force(),
            &Patch::Apply(deployment("etl", 5)),
        )
        .await
        .expect("server-side apply");
    let managers: Vec<String> = applied
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert!(
        managers.contains(&"rust-pipeline".to_string()),
        "{managers:?}"
    );
    seen(&mut rx, (5, "nginx:1.27")).await;
    // The scale subresource.
    let scale = api.get_scale("etl").await.expect("get scale");
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(5));
    api.patch_scale("etl", &pp, &Patch::Merge(json!({"spec": {"replicas": 2}})))
        .await
        .expect("patch scale");
    seen(&mut rx, (2, "nginx:1.27")).await;

    api.delete("etl", &DeleteParams::default())
        .await
        .expect("delete");
    api.delete("loader", &DeleteParams::default().dry_run())
        .await
        .expect("dry-run delete");
    assert!(api.get_opt("loader").await.expect("get").is_some());
    assert!(api.get_opt("etl").await.expect("get").is_none());
    watching.abort();
    env.stop().await;
}
