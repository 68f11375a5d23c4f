//! The cluster registry across three in-process servers, over HTTPS with the cluster CA, as
//! `berth server --registry-listen` runs it: a pushed blob is on a majority of the servers
//! before the push is acknowledged; a copy corrupted on one server's disk is never served but
//! refetched from a peer; with one server down pushes and pulls go on; unreferenced blobs are
//! garbage-collected after the grace period.

use std::path::{Path, PathBuf};
use std::time::Duration;

use berth::roles::{spawn_registry, RegistryOptions};
use berth_apiserver::testing::{wait_until, TestCluster};
use berth_proto::image::sha256_digest;
use tokio_util::sync::CancellationToken;

fn http(cluster: &TestCluster) -> reqwest::Client {
    let tls = berth_tls::mtls_client_config(&cluster.admin_tls()).expect("admin tls");
    reqwest::Client::builder()
        .use_preconfigured_tls((*tls).clone())
        .build()
        .expect("client")
}

fn blob_file(cluster: &TestCluster, i: usize, digest: &str) -> PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    cluster
        .server(i)
        .expect("running")
        .data_dir()
        .join("registry/blobs/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
}

fn holders(cluster: &TestCluster, digest: &str) -> Vec<usize> {
    (0..cluster.len())
        .filter(|&i| cluster.is_running(i) && blob_file(cluster, i, digest).exists())
        .collect()
}

/// Monolithic blob upload (`POST /v2/NAME/blobs/uploads/?digest=`).
async fn push_blob(
    http: &reqwest::Client,
    base: &str,
    repo: &str,
    bytes: &[u8],
) -> reqwest::Response {
    let d = sha256_digest(bytes);
    http.post(format!("{base}/v2/{repo}/blobs/uploads/?digest={d}"))
        .header("content-type", "application/octet-stream")
        .body(bytes.to_vec())
        .send()
        .await
        .expect("upload request")
}

async fn push_manifest(
    http: &reqwest::Client,
    base: &str,
    repo: &str,
    tag: &str,
    config: &[u8],
    layer: &[u8],
) {
    let m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256_digest(config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256_digest(layer), "size": layer.len()}],
    });
    let r = http
        .put(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(serde_json::to_vec(&m).expect("json"))
        .send()
        .await
        .expect("manifest request");
    assert_eq!(
        r.status(),
        201,
        "manifest push: {}",
        r.text().await.unwrap_or_default()
    );
}

async fn start_registries(
    cluster: &TestCluster,
    token: &CancellationToken,
    gc_grace: Duration,
) -> Vec<String> {
    let mut urls = Vec::new();
    for i in 0..cluster.len() {
        let server = cluster.server(i).expect("running");
        let addr = spawn_registry(
            server,
            "127.0.0.1:0",
            RegistryOptions {
                tls: true,
                advertise: None,
                gc_grace,
                gc_interval: Duration::from_millis(300),
            },
            token.clone(),
        )
        .await
        .expect("registry");
        urls.push(format!("https://{addr}"));
    }
    urls
}

fn random_bytes(n: usize, seed: u8) -> Vec<u8> {
    // Not compressible, distinct per seed.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ u64::from(seed);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn wait_registered(cluster: &TestCluster, n: usize) {
    let client = berth_client::Client::new(
        &[cluster.addr(0).to_string()],
        berth_client::ClientConfig::with_tls(cluster.admin_tls()),
    )
    .expect("client");
    wait_until(Duration::from_secs(20), "registries registered", || {
        let client = client.clone();
        async move {
            let (s, _) = client
                .list::<berth_proto::types::RegistryServer>(None, "")
                .await
                .ok()?;
            (s.len() >= n).then_some(())
        }
    })
    .await
    .expect("registered");
}

/// Three servers, each serving its registry (1 h GC grace), all registered.
async fn three_registries() -> (TestCluster, CancellationToken, Vec<String>) {
    let cluster = TestCluster::start(3).await.expect("cluster");
    cluster
        .wait_for_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    let token = CancellationToken::new();
    let urls = start_registries(&cluster, &token, Duration::from_secs(3600)).await;
    wait_registered(&cluster, 3).await;
    (cluster, token, urls)
}

/// A registry client presenting `identity`'s certificate from the cluster CA.
fn client_as(cluster: &TestCluster, identity: berth_tls::Identity) -> reqwest::Client {
    let cred = cluster.credential_for(&identity).expect("credential");
    let tls = berth_tls::mtls_client_config(&cred).expect("tls");
    reqwest::Client::builder()
        .use_preconfigured_tls((*tls).clone())
        .build()
        .expect("client")
}

fn corrupt(path: &Path) {
    let mut b = std::fs::read(path).expect("read blob");
    b[0] ^= 0xff;
    std::fs::write(path, b).expect("corrupt blob");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_is_acknowledged_on_a_majority_and_a_corrupt_copy_is_refetched_from_a_peer() {
    let (mut cluster, token, urls) = three_registries().await;
    let http = http(&cluster);

    // Push through server 0: acknowledged only once a majority (2 of 3) has the bytes.
    let layer = random_bytes(3 << 20, 1);
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let d = sha256_digest(&layer);
    let r = push_blob(&http, &urls[0], "shop/web", &layer).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    assert!(
        holders(&cluster, &d).len() >= 2,
        "on a majority when acknowledged: {:?}",
        holders(&cluster, &d)
    );
    assert_eq!(
        push_blob(&http, &urls[0], "shop/web", &config)
            .await
            .status(),
        201
    );
    push_manifest(&http, &urls[0], "shop/web", "v1", &config, &layer).await;
    // The third copy follows in the background.
    wait_until(
        Duration::from_secs(10),
        "all three servers hold the layer",
        || {
            let h = holders(&cluster, &d);
            async move { (h.len() == 3).then_some(()) }
        },
    )
    .await
    .expect("replicated everywhere");

    // Bit rot on server 1: its copy is never served; the pull gets the right bytes (refetched
    // from a peer) and the bad file is quarantined.
    corrupt(&blob_file(&cluster, 1, &d));
    let got = http
        .get(format!("{}/v2/shop/web/blobs/{d}", urls[1]))
        .send()
        .await
        .expect("pull");
    assert_eq!(got.status(), 200);
    let body = got.bytes().await.expect("body");
    assert_eq!(sha256_digest(&body), d, "served bytes match the digest");
    assert_eq!(
        sha256_digest(&std::fs::read(blob_file(&cluster, 1, &d)).expect("refetched file")),
        d,
        "the local copy was replaced by a verified one"
    );
    let quarantine = cluster
        .server(1)
        .expect("s1")
        .data_dir()
        .join("registry/blobs/quarantine");
    assert_eq!(
        std::fs::read_dir(quarantine).expect("quarantine").count(),
        1
    );

    // A node certificate may not use the server-to-server endpoint.
    let node_http = client_as(&cluster, berth_tls::Identity::Node("n1".into()));
    // (A small body: the refusal comes before the server reads any, and a large one would
    // meet a closed connection instead of the 403.)
    let r = node_http
        .put(format!("{}/berth/v1/blobs/{d}", urls[2]))
        .body(b"not the layer".to_vec())
        .send()
        .await
        .expect("peer put");
    assert_eq!(r.status(), 403);

    // One server down: a new push still reaches a majority (the two left), and pulls work
    // from either survivor.
    cluster.stop(2).await.expect("stop server 2");
    cluster
        .wait_for_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    let layer2 = random_bytes(1 << 20, 2);
    let d2 = sha256_digest(&layer2);
    let r = push_blob(&http, &urls[0], "shop/web", &layer2).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    assert_eq!(holders(&cluster, &d2), vec![0, 1]);
    let got = http
        .get(format!("{}/v2/shop/web/blobs/{d2}", urls[1]))
        .send()
        .await
        .expect("pull");
    assert_eq!(sha256_digest(&got.bytes().await.expect("body")), d2);
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_without_a_majority_is_refused_and_unreferenced_blobs_are_collected() {
    let mut cluster = TestCluster::start(3).await.expect("cluster");
    cluster
        .wait_for_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    let token = CancellationToken::new();
    // Only server 0 runs a registry: its peers never registered one, so no majority.
    let server = cluster.server(0).expect("s0");
    let addr = spawn_registry(
        server,
        "127.0.0.1:0",
        RegistryOptions {
            tls: true,
            advertise: None,
            gc_grace: Duration::from_millis(500),
            gc_interval: Duration::from_millis(200),
        },
        token.clone(),
    )
    .await
    .expect("registry");
    let base = format!("https://{addr}");
    wait_registered(&cluster, 1).await;
    let http = http(&cluster);
    let layer = random_bytes(64 << 10, 3);
    let r = push_blob(&http, &base, "shop/api", &layer).await;
    assert_eq!(r.status(), 503);
    let text = r.text().await.expect("body");
    assert!(
        text.contains("reached 1 of 3 servers; a push needs a majority (2)"),
        "{text}"
    );

    // The refused blob is referenced by nothing: after the grace period it is removed.
    let d = sha256_digest(&layer);
    let f = blob_file(&cluster, 0, &d);
    assert!(f.exists(), "kept locally until collected");
    wait_until(
        Duration::from_secs(10),
        "unreferenced blob collected",
        || {
            let gone = !f.exists();
            async move { gone.then_some(()) }
        },
    )
    .await
    .expect("collected");
    let _ = cluster.stop(1).await;
    token.cancel();
}

/// A one-layer image Docker accepts: an uncompressed tar layer holding `hello.txt`, and a
/// config whose diff_ids name it.
fn tiny_image(text: &str) -> (Vec<u8>, Vec<u8>) {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(text.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "hello.txt", text.as_bytes())
        .expect("tar entry");
    let layer = b.into_inner().expect("tar");
    let arch = match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    };
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": arch, "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [sha256_digest(&layer)]},
    }))
    .expect("config");
    (config, layer)
}

fn docker(args: &[&str]) -> std::process::Output {
    std::process::Command::new("docker")
        .args(args)
        .output()
        .expect("docker runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_pulls_through_the_node_mirror_with_no_daemon_config_and_fails_over() {
    let (mut cluster, token, urls) = three_registries().await;
    let http = http(&cluster);
    let repo = format!("mirror-test/hello{}", std::process::id());
    let (config, layer) = tiny_image("hello through the mirror\n");
    for b in [&config, &layer] {
        assert_eq!(push_blob(&http, &urls[0], &repo, b).await.status(), 201);
    }
    push_manifest(&http, &urls[0], &repo, "v1", &config, &layer).await;

    // The node's mirror: loopback, its node certificate towards the servers.
    let node_tls = cluster
        .credential_for(&berth_tls::Identity::Node("mirror-node".into()))
        .expect("node cred");
    let node_client = berth_client::Client::new(
        &[
            cluster.addr(0).to_string(),
            cluster.addr(1).to_string(),
            cluster.addr(2).to_string(),
        ],
        berth_client::ClientConfig::with_tls(node_tls.clone()),
    )
    .expect("node client");
    let listener = berth_agent::mirror::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let mirror = listener.local_addr().expect("addr");
    tokio::spawn({
        let (c, t, tok) = (node_client, node_tls, token.clone());
        async move { berth_agent::mirror::serve(listener, c, &t, "mirror-node".into(), tok).await }
    });

    // Pushes are refused by the mirror, with what to do instead.
    let r = reqwest::Client::new()
        .post(format!("http://{mirror}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 405);
    assert!(r.text().await.expect("body").contains("pull-only"));

    // Stop the server this node prefers: the pull fails over to another.
    let preferred = berth_agent::mirror::preference("mirror-node", 3);
    let mut by_id: Vec<(u64, usize)> = (0..3)
        .map(|i| (cluster.server(i).expect("running").id(), i))
        .collect();
    by_id.sort();
    let victim = by_id[preferred].1;
    cluster.stop(victim).await.expect("stop preferred server");
    cluster
        .wait_for_leader(Duration::from_secs(10))
        .await
        .expect("leader");

    let image = format!("{mirror}/{repo}:v1");
    let out = docker(&["pull", &image]);
    assert!(
        out.status.success(),
        "docker pull {image}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inspect = docker(&[
        "image",
        "inspect",
        "--format",
        "{{index .RepoDigests 0}}",
        &image,
    ]);
    assert!(String::from_utf8_lossy(&inspect.stdout).contains("@sha256:"));
    let missing = docker(&["pull", &format!("{mirror}/{repo}:nope")]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("not found")
            || String::from_utf8_lossy(&missing.stderr).contains("unknown"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
    let _ = docker(&["rmi", "-f", &image]);
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_tokens_are_issued_to_the_admin_and_push_only_inside_their_prefix() {
    let cluster = TestCluster::start(1).await.expect("cluster");
    cluster
        .wait_for_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    let token_ctl = CancellationToken::new();
    let urls = start_registries(&cluster, &token_ctl, Duration::from_secs(3600)).await;
    let base = &urls[0];
    let admin = http(&cluster);
    let issue = |client: reqwest::Client, q: &'static str| {
        let url = format!("{base}/berth/v1/tokens?{q}");
        async move { client.post(url).send().await.expect("issue") }
    };
    let r = issue(admin.clone(), "subject=ci-shop&repository=shop&ttl=3600").await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = serde_json::from_str(&r.text().await.expect("body")).expect("json");
    let token = v["token"].as_str().expect("token").to_string();

    // Only the admin issues tokens.
    let node_http = client_as(&cluster, berth_tls::Identity::Node("n1".into()));
    assert_eq!(issue(node_http, "subject=x").await.status(), 403);
    assert_eq!(issue(admin.clone(), "subject=&ttl=5").await.status(), 400);

    // No certificate, the token as docker login's password: push and pull under shop/.
    let ca = berth_tls::ca_client_config(&cluster.admin_tls().ca_cert_pem).expect("ca tls");
    let anon = reqwest::Client::builder()
        .use_preconfigured_tls((*ca).clone())
        .build()
        .expect("client");
    let layer = random_bytes(10_000, 9);
    let d = sha256_digest(&layer);
    let post = |repo: &str, auth: Option<(&str, &str)>| {
        let mut req = anon
            .post(format!("{base}/v2/{repo}/blobs/uploads/?digest={d}"))
            .body(layer.clone());
        if let Some((u, p)) = auth {
            req = req.basic_auth(u, Some(p));
        }
        req.send()
    };
    let r = post("shop/web", None).await.expect("post");
    assert_eq!(r.status(), 401, "no credential at all");
    assert!(
        r.headers().contains_key("www-authenticate"),
        "docker login is asked for Basic auth"
    );
    assert_eq!(
        post("shop/web", Some(("ci-shop", &token)))
            .await
            .expect("post")
            .status(),
        201
    );
    let r = post("other/web", Some(("ci-shop", &token)))
        .await
        .expect("post");
    assert_eq!(r.status(), 403);
    let v: serde_json::Value = serde_json::from_str(&r.text().await.expect("body")).expect("json");
    assert_eq!(
        v["errors"][0]["message"],
        "push token \"ci-shop\" covers repositories under \"shop\", not other/web"
    );
    let r = post("shop/web", Some(("ci-shop", "bpt1.forged.token")))
        .await
        .expect("post");
    assert_eq!(r.status(), 401);
    let r = anon
        .get(format!("{base}/v2/"))
        .basic_auth("ci-shop", Some(&token))
        .send()
        .await
        .expect("login");
    assert_eq!(r.status(), 200, "docker login's check of /v2/ passes");
    token_ctl.cancel();
}
