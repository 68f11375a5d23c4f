//! The Kubernetes docs' nginx Deployment (concepts/workloads/controllers/deployment), applied
//! unchanged to `berth dev` on Docker: its `image: nginx:1.14.2` names no registry, the node
//! does not have it, and the cluster registry does (an nginx stand-in built from the busybox
//! test image, since no outside registry is reachable here, pushed with `docker push`). The
//! agent pulls it from the cluster registry, the three replicas run, and one answers on its
//! container port 80 through the host port the agent allocated. Then Build / Ship / Run with
//! Berth's own commands: `berth build -t shop:v1 --push DIR`, and a pod naming `shop:v1` runs
//! that build.
//! Needs Docker (fails under CI=true without it, skipped loudly elsewhere).

use std::io::{Read, Write};
use std::time::Duration;

const DOCS_NGINX: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: nginx-deployment
  labels:
    app: nginx
spec:
  replicas: 3
  selector:
    matchLabels:
      app: nginx
  template:
    metadata:
      labels:
        app: nginx
    spec:
      containers:
      - name: nginx
        image: nginx:1.14.2
        ports:
        - containerPort: 80
";

mod dev_harness;
use dev_harness::{berth, docker, start_dev, wait_for};

#[test]
fn the_kubernetes_docs_nginx_deployment_and_a_berth_build_run_from_the_cluster_registry() {
    let test =
        "the_kubernetes_docs_nginx_deployment_and_a_berth_build_run_from_the_cluster_registry";
    if !berth_testkit::skip::require(test, docker(&["version"]).map(|_| ())) {
        return;
    }
    berth_testkit::images::build_busybox();
    let tmp = tempfile::tempdir().expect("tmp");
    let node = format!("docs-nginx-{}", std::process::id());
    let already_had_nginx = docker(&["image", "inspect", "nginx:1.14.2"]).is_ok();
    // Its banner says the node's runtime is Docker (start_dev checks).
    let (mut dev, home, reg) = start_dev(tmp.path(), &node);
    let pushed = format!("127.0.0.1:{reg}/nginx:1.14.2");
    // The agent's pull leaves the registry's name too.
    dev.remove_images.push(pushed.clone());
    if !already_had_nginx {
        dev.remove_images.push("nginx:1.14.2".into());
    }

    // An nginx stand-in serving a page on port 80, pushed as nginx:1.14.2 to the cluster
    // registry and absent from the engine under that name.
    let builder = format!("berth-docs-nginx-build-{}", std::process::id());
    let _ = docker(&["rm", "-f", &builder]);
    docker(&[
        "run",
        "--name",
        &builder,
        "berth-busybox:1",
        "sh",
        "-c",
        "/bin/busybox mkdir -p /usr/share/nginx/html && echo 'Welcome to nginx!' > /usr/share/nginx/html/index.html",
    ])
    .expect("build step");
    docker(&[
        "commit",
        "--change",
        r#"CMD ["httpd", "-f", "-p", "80", "-h", "/usr/share/nginx/html"]"#,
        &builder,
        &pushed,
    ])
    .expect("commit");
    let _ = docker(&["rm", "-f", &builder]);
    docker(&["push", &pushed]).expect("push to the cluster registry");
    docker(&["rmi", &pushed]).expect("rmi the pushed name");

    let manifest = tmp.path().join("nginx-deployment.yaml");
    std::fs::write(&manifest, DOCS_NGINX).expect("write manifest");
    let (ok, out, err) = berth(&home, &["apply", "-f", &manifest.display().to_string()]);
    assert!(ok, "apply: {out}{err}");
    assert_eq!(out.trim(), "deployment.apps/nginx-deployment created");

    let pods = wait_for("3 nginx pods running", Duration::from_secs(120), || {
        let (ok, out, _) = berth(&home, &["get", "pods", "-l", "app=nginx", "-o", "json"]);
        if !ok {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        let items = v["items"].as_array()?.clone();
        let running = items
            .iter()
            .filter(|p| p["status"]["phase"] == "Running")
            .count();
        (running == 3).then_some(items)
    });
    // The Deployment's revision pinned the tag to the digest it had (Swarm-style): the pods
    // run nginx:1.14.2@sha256:..., pulled by digest (remove that from the engine afterwards).
    let image = pods[0]["spec"]["containers"][0]["image"]
        .as_str()
        .expect("an image")
        .to_string();
    let digest = image
        .strip_prefix("nginx:1.14.2@")
        .unwrap_or_else(|| panic!("pinned to a digest: {image}"));
    dev.remove_images
        .push(format!("127.0.0.1:{reg}/nginx@{digest}"));
    // On the pod network: the pod's own IP and its containerPort, no host port.
    assert!(
        pods[0]["status"]["hostPorts"].is_null(),
        "no host port without hostPort: {}",
        pods[0]["status"]
    );
    let pod_ip = pods[0]["status"]["podIP"]
        .as_str()
        .expect("a pod IP")
        .to_string();
    assert!(pod_ip.starts_with("10.42."), "{pod_ip}");
    let body = wait_for("nginx answering", Duration::from_secs(20), || {
        get_page(&pod_ip, 80)
    });
    if !already_had_nginx {
        assert!(body.contains("Welcome to nginx!"), "{body}");
    }
    let (_, events, _) = berth(&home, &["get", "events"]);
    if !already_had_nginx {
        assert!(
            events.contains(&format!(r#"Successfully pulled image "{image}""#)),
            "{events}"
        );
    }

    // berth images: the tag, its digest, and the node that now has it (the agent reports its
    // images with the heartbeat).
    let images = wait_for(
        "berth images to show the node",
        Duration::from_secs(30),
        || {
            let (ok, out, _) = berth(&home, &["images"]);
            (ok && out
                .lines()
                .any(|l| l.starts_with("nginx ") && l.contains(&node)))
            .then_some(out)
        },
    );
    assert!(
        images.contains("1.14.2") && images.contains("sha256:"),
        "{images}"
    );

    // Build, Ship, Run with berth build.
    let ctx = tmp.path().join("shop");
    std::fs::create_dir_all(&ctx).expect("ctx");
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM berth-busybox:1\nARG GREETING=hi\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox mkdir -p /www && echo \\\"$GREETING from berth build\\\" > /www/index.html\"]\nCMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n",
    )
    .expect("Dockerfile");
    let shop = format!("berth-test-shop-{}:v1", std::process::id());
    dev.remove_images.push(shop.clone());
    dev.remove_images.push(format!("127.0.0.1:{reg}/{shop}"));
    let (ok, out, err) = berth(
        &home,
        &[
            "build",
            "-t",
            &shop,
            "--build-arg",
            "GREETING=hello",
            "--push",
            &ctx.display().to_string(),
        ],
    );
    assert!(ok, "berth build: {out}{err}");
    assert!(out.contains("Step 3/4"), "the build output is shown: {out}");
    assert!(
        out.contains(&format!("pushed {shop} to http://127.0.0.1:{reg}: sha256:")),
        "{out}"
    );
    // Off the node, so the pod's start must pull it back from the cluster registry.
    docker(&["rmi", &shop]).expect("rmi the build");
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: shop\nspec:\n  containers:\n  - name: web\n    image: {shop}\n    ports:\n    - containerPort: 8080\n"
    );
    let pod_file = tmp.path().join("shop.yaml");
    std::fs::write(&pod_file, pod).expect("write pod");
    let (ok, out, err) = berth(&home, &["apply", "-f", &pod_file.display().to_string()]);
    assert!(ok, "apply: {out}{err}");
    let port = wait_for("the shop pod running", Duration::from_secs(60), || {
        let (ok, out, _) = berth(&home, &["get", "pod", "shop", "-o", "json"]);
        if !ok {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        (v["status"]["phase"] == "Running")
            .then(|| v["status"]["podIP"].as_str().map(str::to_string))
            .flatten()
    });
    let body = wait_for("the built page", Duration::from_secs(20), || {
        get_page(&port, 8080)
    });
    assert!(body.contains("hello from berth build"), "{body}");
    drop(dev);
}

/// Push an image serving `page` on port 80 as `pushed`; returns its image ID.
fn push_page(pushed: &str, page: &str) -> String {
    let builder = format!("berth-pin-build-{}", std::process::id());
    let _ = docker(&["rm", "-f", &builder]);
    docker(&[
        "run",
        "--network",
        "none",
        "--name",
        &builder,
        "berth-busybox:1",
        "sh",
        "-c",
        &format!("/bin/busybox mkdir -p /www && echo '{page}' > /www/index.html"),
    ])
    .expect("build step");
    docker(&[
        "commit",
        "--change",
        r#"CMD ["httpd", "-f", "-p", "80", "-h", "/www"]"#,
        &builder,
        pushed,
    ])
    .expect("commit");
    let _ = docker(&["rm", "-f", &builder]);
    docker(&["push", pushed]).expect("push to the cluster registry");
    docker(&["image", "inspect", "-f", "{{.Id}}", pushed]).expect("image id")
}

fn get_page(ip: &str, port: u16) -> Option<String> {
    let mut s = std::net::TcpStream::connect((ip, port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.contains("200").then_some(body)
}

/// The running, not terminating pods of `app`: (name, image, pod IP).
fn running_pods(home: &std::path::Path, app: &str) -> Option<Vec<(String, String, String)>> {
    let (ok, out, _) = berth(
        home,
        &["get", "pods", "-l", &format!("app={app}"), "-o", "json"],
    );
    if !ok {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    let items = v["items"].as_array()?;
    if items
        .iter()
        .any(|p| p["status"]["phase"] != "Running" || !p["metadata"]["deletionTimestamp"].is_null())
    {
        return None; // mid-rollout
    }
    items
        .iter()
        .map(|p| {
            Some((
                p["metadata"]["name"].as_str()?.to_string(),
                p["spec"]["containers"][0]["image"].as_str()?.to_string(),
                p["status"]["podIP"]
                    .as_str()
                    .filter(|ip| !ip.is_empty())?
                    .to_string(),
            ))
        })
        .collect()
}

#[test]
fn a_deployment_runs_the_digest_its_tag_had_until_rollout_restart_and_undo_brings_it_back() {
    let test =
        "a_deployment_runs_the_digest_its_tag_had_until_rollout_restart_and_undo_brings_it_back";
    if !berth_testkit::skip::require(test, docker(&["version"]).map(|_| ())) {
        return;
    }
    berth_testkit::images::build_busybox();
    let tmp = tempfile::tempdir().expect("tmp");
    let node = format!("pin-{}", std::process::id());
    let (mut dev, home, reg) = start_dev(tmp.path(), &node);
    let repo = format!("pinweb{}", std::process::id());
    let pushed = format!("127.0.0.1:{reg}/{repo}:1");
    dev.remove_images.push(pushed.clone());
    let first_id = push_page(&pushed, "version one");
    dev.remove_images.push(first_id);

    let manifest = tmp.path().join("pinweb.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: pinweb\nspec:\n  replicas: 1\n  selector:\n    matchLabels:\n      app: pinweb\n  template:\n    metadata:\n      labels:\n        app: pinweb\n    spec:\n      containers:\n      - name: web\n        image: {repo}:1\n        ports:\n        - containerPort: 80\n"
        ),
    )
    .expect("write manifest");
    let (ok, out, err) = berth(&home, &["apply", "-f", &manifest.display().to_string()]);
    assert!(ok, "apply: {out}{err}");
    let pods = wait_for("the first pod running", Duration::from_secs(60), || {
        running_pods(&home, "pinweb").filter(|p| p.len() == 1)
    });
    let first = pods[0].1.clone();
    let pin_prefix = format!("{repo}:1@sha256:");
    assert!(first.starts_with(&pin_prefix), "pinned: {first}");
    let body = wait_for("version one", Duration::from_secs(20), || {
        get_page(&pods[0].2, 80)
    });
    assert!(body.contains("version one"), "{body}");

    // A new image is pushed to the same tag: scaling up still runs the old bytes.
    let second_id = push_page(&pushed, "version two");
    dev.remove_images.push(second_id);
    let (ok, out, err) = berth(&home, &["scale", "deploy", "pinweb", "--replicas", "2"]);
    assert!(ok, "scale: {out}{err}");
    let pods = wait_for("two pods running", Duration::from_secs(60), || {
        running_pods(&home, "pinweb").filter(|p| p.len() == 2)
    });
    for (name, image, port) in &pods {
        assert_eq!(image, &first, "{name} runs the revision's digest");
        let body = wait_for("a page", Duration::from_secs(20), || get_page(port, 80));
        assert!(body.contains("version one"), "{name}: {body}");
    }

    // rollout restart resolves the tag again: the second image everywhere.
    let (ok, out, err) = berth(&home, &["rollout", "restart", "deploy/pinweb"]);
    assert!(ok, "restart: {out}{err}");
    let pods = wait_for("the restarted pods", Duration::from_secs(90), || {
        running_pods(&home, "pinweb")
            .filter(|p| p.len() == 2 && p.iter().all(|(_, i, _)| *i != first))
    });
    let second = pods[0].1.clone();
    assert!(second.starts_with(&pin_prefix), "pinned: {second}");
    for (name, image, port) in &pods {
        assert_eq!(image, &second, "{name}");
        let body = wait_for("a page", Duration::from_secs(20), || get_page(port, 80));
        assert!(body.contains("version two"), "{name}: {body}");
    }
    let (ok, text, err) = berth(&home, &["describe", "deploy/pinweb"]);
    assert!(ok, "describe: {err}");
    let digest = second.split_once('@').map(|(_, d)| d).expect("digest");
    assert!(
        text.contains(&format!("Image:            {repo}:1\n"))
            && text.contains(&format!("Image ID:         {repo}@{digest}\n")),
        "{text}"
    );

    // rollout undo returns to the first revision and its digest.
    let (ok, out, err) = berth(&home, &["rollout", "undo", "deploy/pinweb"]);
    assert!(ok, "undo: {out}{err}");
    wait_for("the first digest back", Duration::from_secs(90), || {
        running_pods(&home, "pinweb")
            .filter(|p| p.len() == 2 && p.iter().all(|(_, i, _)| *i == first))
    });
    drop(dev);
}
