//! The registry against skopeo (containers/image, a second independent client): copy the busybox
//! test image from the Docker engine into the cluster registry as a Docker v2 schema 2 image and
//! as an OCI image (`--format oci`), inspect both, copy between repositories (a cross-repository
//! blob mount), and copy back out to an OCI layout whose blobs match. Needs skopeo and Docker
//! (fails under CI=true without them; .ci/run installs skopeo).

mod served;

use std::process::Command;

fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

async fn skopeo(args: Vec<String>) -> Result<String, String> {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run("skopeo", &args)
    })
    .await
    .map_err(|e| e.to_string())?
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_copies_docker_and_oci_images_in_and_out_of_the_cluster_registry() {
    let test = "skopeo_copies_docker_and_oci_images_in_and_out_of_the_cluster_registry";
    let tools = run("skopeo", &["--version"])
        .and_then(|_| run("docker", &["version"]))
        .map(|_| ());
    if !berth_testkit::skip::require(test, tools) {
        return;
    }
    berth_testkit::images::build_busybox();
    let reg = served::serve_registry().await;
    let host = format!("127.0.0.1:{}", reg.addr.port());
    let no_tls = "--dest-tls-verify=false";

    for (repo, format) in [("skopeo/v2s2", "v2s2"), ("skopeo/oci", "oci")] {
        skopeo(args(&[
            "copy",
            no_tls,
            "--format",
            format,
            "docker-daemon:berth-busybox:1",
            &format!("docker://{host}/{repo}:v1"),
        ]))
        .await
        .unwrap_or_else(|e| panic!("skopeo copy into the registry ({format}): {e}"));
        let raw = skopeo(args(&[
            "inspect",
            "--tls-verify=false",
            "--raw",
            &format!("docker://{host}/{repo}:v1"),
        ]))
        .await
        .expect("skopeo inspect --raw");
        let m: serde_json::Value = serde_json::from_str(&raw).expect("manifest json");
        let want = if format == "oci" {
            "application/vnd.oci.image.manifest.v1+json"
        } else {
            "application/vnd.docker.distribution.manifest.v2+json"
        };
        assert_eq!(m["mediaType"], want, "{raw}");
        let info = skopeo(args(&[
            "inspect",
            "--tls-verify=false",
            &format!("docker://{host}/{repo}:v1"),
        ]))
        .await
        .expect("skopeo inspect");
        let v: serde_json::Value = serde_json::from_str(&info).expect("inspect json");
        assert_eq!(v["Architecture"], "amd64", "{info}");
    }

    // Registry to registry, another repository: skopeo mounts the blobs it can.
    skopeo(args(&[
        "copy",
        "--src-tls-verify=false",
        no_tls,
        &format!("docker://{host}/skopeo/oci:v1"),
        &format!("docker://{host}/skopeo/copied:v2"),
    ]))
    .await
    .expect("skopeo copy between repositories");
    let tags = skopeo(args(&[
        "list-tags",
        "--tls-verify=false",
        &format!("docker://{host}/skopeo/copied"),
    ]))
    .await
    .expect("list-tags");
    assert!(tags.contains("\"v2\""), "{tags}");

    // Out again, into an OCI layout on disk: every blob's file name is its digest, and the
    // registry served the bytes that hash to it.
    let out = tempfile::tempdir().expect("tmp");
    let layout = out.path().join("layout");
    skopeo(args(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{host}/skopeo/copied:v2"),
        &format!("oci:{}:v2", layout.display()),
    ]))
    .await
    .expect("skopeo copy out of the registry");
    let blobs = layout.join("blobs").join("sha256");
    let mut n = 0;
    for e in std::fs::read_dir(&blobs).expect("blobs dir") {
        let e = e.expect("entry");
        let bytes = std::fs::read(e.path()).expect("blob");
        let name = e.file_name().to_string_lossy().to_string();
        assert_eq!(
            berth_proto::image::sha256_digest(&bytes),
            format!("sha256:{name}")
        );
        n += 1;
    }
    assert!(n >= 3, "manifest, config and a layer: {n} blobs");
    // A tag that does not exist is an error skopeo reports as such.
    let err = skopeo(args(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{host}/skopeo/copied:nope"),
    ]))
    .await
    .expect_err("missing tag");
    assert!(err.contains("manifest unknown"), "{err}");
}
