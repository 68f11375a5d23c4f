//! Image trust on a real node: `berth dev` on Docker with require-signed-images on. An image
//! pushed to the cluster registry and signed with `berth sign` is admitted; a pod naming its
//! tag on a node whose engine holds a *locally built* image under that name (no registry
//! digest) is refused by the agent (`ErrImageNotTrusted`, a `Failed` event); once the local
//! image is gone the agent pulls the signed one from the cluster registry, checks the digest
//! Docker reports for it (RepoDigests), and the pod runs.
//! Needs Docker (fails under CI=true without it, skipped loudly elsewhere).

use std::time::{Duration, Instant};

mod dev_harness;
use dev_harness::{berth, docker, start_dev, wait_for};

fn pod_json(home: &std::path::Path, name: &str) -> Option<serde_json::Value> {
    let (ok, out, _) = berth(home, &["get", "pod", name, "-o", "json"]);
    if !ok {
        return None;
    }
    serde_json::from_str(&out).ok()
}

#[test]
fn the_agent_refuses_a_locally_built_image_and_runs_the_signed_one_from_the_cluster_registry() {
    let test =
        "the_agent_refuses_a_locally_built_image_and_runs_the_signed_one_from_the_cluster_registry";
    if !berth_testkit::skip::require(test, docker(&["version"]).map(|_| ())) {
        return;
    }
    berth_testkit::images::build_busybox();
    let tmp = tempfile::tempdir().expect("tmp");
    let node = format!("trust-{}", std::process::id());
    let (mut dev, home, reg) = start_dev(tmp.path(), &node);
    let repo = format!("berth-trust-shop-{}", std::process::id());
    let image = format!("{repo}:v1");
    let pushed = format!("127.0.0.1:{reg}/{image}");
    dev.remove_images = vec![pushed.clone(), image.clone()];
    wait_for("berth dev answering", Duration::from_secs(60), || {
        berth(&home, &["get", "nodes"]).0.then_some(())
    });

    // Ship: the busybox image to the cluster registry as REPO:v1 (not on the engine under
    // that name afterwards), and sign it.
    docker(&["tag", "berth-busybox:1", &pushed]).expect("tag");
    wait_for("the push", Duration::from_secs(30), || {
        docker(&["push", &pushed]).ok()
    });
    docker(&["rmi", &pushed]).expect("rmi the pushed name");
    let (ok, out, err) = berth(&home, &["trust", "key", "generate", "ci-2026"]);
    assert!(ok, "{out}{err}");
    assert!(home.join(".berth/trust/ci-2026.key").is_file());
    let (ok, out, err) = berth(&home, &["sign", &image, "--key", "ci-2026"]);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = berth(&home, &["trust", "policy", "require-signed-images", "on"]);
    assert!(ok, "{out}{err}");

    // A different image under the same name, built on the node: no registry digest.
    let builder = format!("berth-trust-build-{}", std::process::id());
    let _ = docker(&["rm", "-f", &builder]);
    docker(&["create", "--name", &builder, "berth-busybox:1", "true"]).expect("create");
    docker(&[
        "commit",
        "--change",
        "LABEL berth.test=local",
        &builder,
        &image,
    ])
    .expect("commit");
    let _ = docker(&["rm", "-f", &builder]);

    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: shop\nspec:\n  containers:\n  - name: web\n    image: {image}\n    command: [\"/bin/busybox\", \"sleep\", \"3600\"]\n"
    );
    let pod_file = tmp.path().join("shop.yaml");
    std::fs::write(&pod_file, pod).expect("write pod");
    let (ok, out, err) = berth(&home, &["apply", "-f", &pod_file.display().to_string()]);
    assert!(ok, "admitted (the tag is signed): {out}{err}");
    let waiting = wait_for("ErrImageNotTrusted", Duration::from_secs(60), || {
        let v = pod_json(&home, "shop")?;
        let w = v["status"]["containerStatuses"][0]["state"]["waiting"].clone();
        (w["reason"] == "ErrImageNotTrusted").then_some(w)
    });
    assert!(
        waiting["message"]
            .as_str()
            .unwrap_or_default()
            .contains("has no registry digest"),
        "{waiting}"
    );
    let (_, events, _) = berth(&home, &["get", "events"]);
    assert!(events.contains("has no registry digest"), "{events}");

    // The local image gone: the re-check pulls the signed image from the cluster registry,
    // its RepoDigest is signed, and the agent creates the container (it is created only after
    // the trust check; whether it then runs is the engine's business: on a host whose Docker
    // bridge is broken the start fails with RunContainerError, unrelated to trust).
    docker(&["rmi", &image]).expect("rmi the local build");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let v = pod_json(&home, "shop").unwrap_or_default();
        let (_, events, _) = berth(&home, &["get", "events"]);
        if v["status"]["phase"] == "Running" || events.contains("Created container web") {
            assert!(events.contains("Successfully pulled image"), "{events}");
            break;
        }
        if Instant::now() > deadline {
            panic!(
                "the signed image did not start: {:#}\n{events}",
                v["status"]
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
