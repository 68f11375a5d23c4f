//! Build, Ship, Run across hosts: `berth build --push` outside the cluster (the root
//! namespace's engine, the admin config, no daemon configuration), pods on hosts 2 and 3 —
//! each with its own, unconfigured Docker engine — pull that image from the cluster registry
//! through their agents' loopback mirrors; the server that took the push is killed and new pods
//! still pull (its blobs are on a majority); an image that does not exist gives ErrImagePull
//! then ImagePullBackOff and disturbs nothing else.

use std::collections::BTreeMap;
use std::time::Duration;

use berth_proto::types::Pod;

use crate::harness::{wait_until, Cluster, Opts};

/// Pod name -> (node, image, ready, restarts).
type PodsView = BTreeMap<String, (String, String, bool, i32)>;

/// `app=shop` pods (not being deleted).
fn shop_pods(c: &Cluster) -> Result<PodsView, String> {
    let pods: Vec<Pod> = c.get_list("pods")?;
    Ok(pods
        .into_iter()
        .filter(|p| p.metadata.labels.get("app").map(String::as_str) == Some("shop"))
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            let ready = p.is_ready();
            let st = p.status.clone().unwrap_or_default();
            let restarts = st.container_statuses.iter().map(|s| s.restart_count).sum();
            (
                p.metadata.name.clone(),
                (
                    p.spec.node_name.clone(),
                    p.spec.containers[0].image.clone(),
                    ready,
                    restarts,
                ),
            )
        })
        .collect())
}

fn deployment(image: &str, replicas: u32) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: shop\nspec:\n  replicas: {replicas}\n  selector:\n    matchLabels:\n      app: shop\n  template:\n    metadata:\n      labels:\n        app: shop\n    spec:\n      runtimeClassName: docker\n      containers:\n      - name: web\n        image: {image}\n        ports:\n        - containerPort: 8080\n        readinessProbe:\n          httpGet:\n            path: /\n            port: 8080\n          periodSeconds: 1\n"
    )
}

/// `n` Ready shop pods, all running `image` (by its tag), all on hosts 2 and 3.
fn wait_shop(
    c: &Cluster,
    image: &str,
    n: usize,
    limit: Duration,
) -> BTreeMap<String, (String, String, bool, i32)> {
    wait_until(&format!("{n} shop pods Ready on {image}"), limit, || {
        let pods = shop_pods(c)?;
        let good = pods
            .values()
            .filter(|(node, img, ready, _)| *ready && img.starts_with(image) && node != "node1")
            .count();
        if good == n && pods.len() == n {
            Ok(pods)
        } else {
            Err(format!("{pods:?}"))
        }
    })
    .0
}

fn build_and_push(c: &Cluster, tag: &str, greeting: &str) -> String {
    let ctx = c.dir().join(format!("ctx-{greeting}"));
    std::fs::create_dir_all(&ctx).expect("context dir");
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM berth-busybox:1\nARG GREETING\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"mkdir -p /www && echo \\\"$GREETING\\\" > /www/index.html\"]\nCMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n",
    )
    .expect("Dockerfile");
    let arg = format!("GREETING={greeting}");
    let out = c.cli_ok(&[
        "build",
        "-t",
        tag,
        "--build-arg",
        &arg,
        "--push",
        &ctx.display().to_string(),
    ]);
    assert!(
        out.contains(&format!("pushed {tag} to https://")),
        "pushed to a server's registry: {out}"
    );
    // Not left in the root engine: nothing but the registry holds it now.
    let _ = std::process::Command::new("docker")
        .args(["rmi", tag])
        .output();
    out
}

/// Every shop pod answers at its pod IP (from its host) with the page its image was built with.
fn every_pod_serves(c: &Cluster, page: &str) {
    let out = c.cli_ok(&["get", "pods", "-l", "app=shop", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("pods json");
    let items = v["items"].as_array().cloned().unwrap_or_default();
    assert!(!items.is_empty(), "{out}");
    for p in items {
        let node = p["spec"]["nodeName"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let host = node
            .trim_start_matches("node")
            .parse::<usize>()
            .expect("nodeN")
            - 1;
        assert!(
            host > 0,
            "{} on {node}, which has no Docker",
            p["metadata"]["name"]
        );
        let ip = p["status"]["podIP"].as_str().expect("a pod IP").to_string();
        let body = c
            .sh_on(
                host,
                &[
                    "busybox",
                    "wget",
                    "-q",
                    "-O",
                    "-",
                    &format!("http://{ip}:8080/"),
                ],
            )
            .expect("pod answers");
        assert_eq!(body.trim(), page, "{} on {node}", p["metadata"]["name"]);
    }
}

#[test]
fn images_built_outside_run_on_other_hosts_and_still_pull_after_the_pushing_server_dies() {
    berth_testkit::images::build_busybox();
    let Some(mut c) = Cluster::start(
        "registry",
        14,
        Opts {
            agents: true,
            registry: true,
            docker: true,
            ..Opts::default()
        },
    ) else {
        return;
    };
    let pid = std::process::id();
    let v1 = format!("e2e{pid}/shop:v1");
    let v2 = format!("e2e{pid}/shop:v2");
    let out = build_and_push(&c, &v1, "one");
    assert!(
        out.contains(&format!("to https://{}:5443", c.ip(0))),
        "server 1 (the first registry) took the push: {out}"
    );
    build_and_push(&c, &v2, "two");

    // Two replicas that need Docker: only hosts 2 and 3 have it; both pull through their
    // mirrors (neither engine has the image or any configuration).
    let file = c.write_file("shop-v1.yaml", &deployment(&v1, 2));
    c.cli_ok(&["apply", "-f", &file]);
    let pods = wait_shop(&c, &v1, 2, Duration::from_secs(60));
    assert_eq!(pods.len(), 2);
    every_pod_serves(&c, "one");
    for i in 1..3 {
        let images = c
            .docker_on(i, &["images", "--format", "{{.Repository}}:{{.Tag}}"])
            .expect("images");
        assert!(
            images.contains("127.0.0.1:5001/"),
            "host {} pulled through its mirror: {images}",
            i + 1
        );
    }

    // Kill the server that took the pushes; roll out v2 and scale up: the new pods pull v2's
    // blobs from the two servers left.
    c.kill9_server(0);
    let survivors = format!("{},{}", c.api_addr(1), c.api_addr(2));
    let cli = c.cli_handle_for(&survivors);
    let file = c.write_file("shop-v2.yaml", &deployment(&v2, 4));
    let out = cli.run(&["apply", "-f", &file]);
    assert!(out.ok(), "{out}");
    let before = wait_shop(&c, &v2, 4, Duration::from_secs(90));
    every_pod_serves(&c, "two");

    // An image nobody pushed: ErrImagePull, then ImagePullBackOff; the shop pods are untouched.
    let ghost = c.write_file(
        "ghost.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: ghost\nspec:\n  runtimeClassName: docker\n  containers:\n  - name: web\n    image: e2e{pid}/ghost:v9\n"
        ),
    );
    assert!(cli.run(&["apply", "-f", &ghost]).ok());
    let mut seen = Vec::new();
    wait_until(
        "ghost: ErrImagePull then ImagePullBackOff",
        Duration::from_secs(40),
        || {
            let out = cli.run(&["get", "pod", "ghost", "-o", "json"]);
            let p: Pod = serde_json::from_str(&out.stdout).map_err(|e| format!("{e}: {out}"))?;
            let reason = p
                .status
                .and_then(|s| s.container_statuses.first().cloned())
                .and_then(|c| c.state.waiting.map(|w| w.reason))
                .unwrap_or_default();
            if seen.last() != Some(&reason) {
                seen.push(reason.clone());
            }
            if seen.iter().any(|r| r == "ErrImagePull") && reason == "ImagePullBackOff" {
                Ok(())
            } else {
                Err(format!("reasons so far: {seen:?}"))
            }
        },
    );
    let after = shop_pods(&c).expect("pods");
    assert_eq!(after, before, "the shop pods are undisturbed");
    let events = cli.run(&["get", "events"]).stdout;
    assert!(events.contains("Failed to pull image"), "{events}");

    // Image trust. v3 is pushed with server 1 still down; the policy refuses it at apply until
    // it is signed.
    let v3 = format!("e2e{pid}/shop:v3");
    build_and_push(&c, &v3, "three");
    c.cli_ok(&["trust", "key", "generate", "ci-e2e"]);
    c.cli_ok(&["trust", "policy", "require-signed-images", "on"]);
    let signed = c.write_file(
        "signed.yaml",
        &deployment(&v3, 1)
            .replace("name: shop", "name: signed")
            .replace("app: shop", "app: signed"),
    );
    let out = c.cli(&["apply", "-f", &signed]);
    assert!(!out.ok(), "an unsigned image is refused at apply: {out}");
    assert!(
        out.stderr
            .contains("is not signed by a trusted key (trusted: ci-e2e)"),
        "{out}"
    );
    c.cli_ok(&["sign", &v3, "--key", "ci-e2e"]);

    // At the agent: host 3's engine holds other bytes under the signed tag (the v2 it pulled
    // re-tagged as v3). A pod naming the tag is admitted (the tag is signed), but the agent checks the
    // digest the node actually has and does not start it.
    let other = c
        .docker_on(2, &["images", "--format", "{{.Repository}} {{.ID}}"])
        .expect("host 3's images");
    let other = other
        .lines()
        .filter(|l| l.contains("shop"))
        .find_map(|l| l.split_whitespace().nth(1))
        .expect("host 3 holds v2")
        .to_string();
    c.docker_on(2, &["tag", &other, &v3])
        .expect("impostor tag on host 3");
    let impostor = c.write_file(
        "impostor.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: impostor\nspec:\n  nodeName: node3\n  runtimeClassName: docker\n  containers:\n  - name: web\n    image: {v3}\n    imagePullPolicy: IfNotPresent\n"
        ),
    );
    c.cli_ok(&["apply", "-f", &impostor]);
    wait_until(
        "the agent refuses the impostor",
        Duration::from_secs(30),
        || {
            let out = c.cli(&["get", "pod", "impostor", "-o", "json"]);
            let p: Pod = serde_json::from_str(&out.stdout).map_err(|e| format!("{e}: {out}"))?;
            let st = p.status.unwrap_or_default();
            let w = st
                .container_statuses
                .first()
                .and_then(|c| c.state.waiting.clone())
                .map(|w| (w.reason, w.message))
                .unwrap_or_default();
            if w.0 == "ErrImageNotTrusted" && w.1.contains("is not signed by a trusted key") {
                Ok(())
            } else {
                Err(format!("{w:?}"))
            }
        },
    );
    c.cli_ok(&["delete", "pod", "impostor"]);
    let _ = c.docker_on(2, &["rmi", &v3]);

    // Signed: admitted, and its pod runs the signed bytes.
    c.cli_ok(&["apply", "-f", &signed]);
    wait_until(
        "the signed deployment's pod Ready",
        Duration::from_secs(60),
        || {
            let pods: Vec<Pod> = c.get_list("pods")?;
            let ready = pods
                .iter()
                .filter(|p| p.metadata.labels.get("app").map(String::as_str) == Some("signed"))
                .filter(|p| p.is_ready())
                .count();
            if ready == 1 {
                Ok(())
            } else {
                Err(format!("{ready} ready"))
            }
        },
    );
}
