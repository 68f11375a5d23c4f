//! `imagePullSecrets` against a real registry with authentication: Debian's `docker-registry`
//! (distribution 2.8, the reference implementation) on 127.0.0.1 with htpasswd auth. An image
//! that exists only there is pulled and run by a pod whose pull secret has the right
//! credentials; without a secret, with wrong credentials, and with a secret that does not
//! exist (a FailedToRetrieveImagePullSecret event, then an anonymous pull) the pods show
//! ErrImagePull / ImagePullBackOff with the registry's reason, and no password anywhere.
//! The node reads the Secret through the node authorizer (imagePullSecrets count as a
//! reference). Skipped outside CI without a Docker engine or docker-registry/htpasswd (a
//! failure under CI=true: berth_testkit::skip; .ci/run installs them).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use berth_agent::runtime::docker::DockerRuntime;
use berth_agent::{AgentArgs, RuntimeKind};
use berth_apiserver::testing::TestCluster;
use berth_client::{Client, ClientConfig};
use berth_proto::types::{Container, Event, LocalObjectRef, ObjectMeta, Pod, PodSpec, Secret};
use tokio_util::sync::CancellationToken;

mod common;

const T: Duration = Duration::from_secs(60);
const IMAGE: &str = "berth-busybox:1";
const NODE: &str = "pull-secret-node";
const PASSWORD: &str = "correct-horse-battery";
const WRONG: &str = "wrong-staple-7781";

fn run(cmd: &str, args: &[&str], env: &[(&str, &Path)]) -> String {
    let mut c = std::process::Command::new(cmd);
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn tool(name: &str) -> Result<(), String> {
    match std::process::Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
    {
        Ok(o) if o.status.success() => Ok(()),
        _ => Err(format!(
            "{name} is not installed (apt-get install -y docker-registry apache2-utils)"
        )),
    }
}

/// The registry process, killed (by its own pid) when dropped.
struct Registry(std::process::Child);
impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Removes the test's containers and image names, even when it panics.
struct Cleanup {
    ns: String,
    image: String,
}
impl Drop for Cleanup {
    fn drop(&mut self) {
        let out = std::process::Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label=berth.pod-namespace={}", self.ns),
            ])
            .output();
        if let Ok(out) = out {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = std::process::Command::new("docker")
                    .args(["rm", "-f", id])
                    .output();
            }
        }
        let _ = std::process::Command::new("docker")
            .args(["rmi", &self.image])
            .output();
    }
}

/// Start `docker-registry` with htpasswd auth (user `puller`) in `dir`; returns it and its
/// address once it answers.
async fn start_registry(dir: &Path) -> (Registry, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    // distribution accepts bcrypt entries only (-B).
    let htpasswd = run("htpasswd", &["-Bbn", "puller", PASSWORD], &[]);
    std::fs::write(dir.join("htpasswd"), format!("{htpasswd}\n")).unwrap();
    let cfg = dir.join("config.yml");
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: {addr}\nauth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
            dir.join("data").display(),
            dir.join("htpasswd").display()
        ),
    )
    .unwrap();
    let child = std::process::Command::new("docker-registry")
        .args(["serve", &cfg.display().to_string()])
        .stdout(std::fs::File::create(dir.join("log")).unwrap())
        .stderr(std::fs::File::create(dir.join("log.err")).unwrap())
        .spawn()
        .unwrap();
    let reg = Registry(child);
    berth_tls::install_default_provider();
    let url = format!("http://{addr}/v2/");
    common::wait_for(Duration::from_secs(20), "docker-registry answering", || {
        let url = url.clone();
        async move {
            let r = reqwest::get(&url).await.ok()?;
            // 401 without credentials: it is up and wants them.
            (r.status() == reqwest::StatusCode::UNAUTHORIZED).then_some(())
        }
    })
    .await;
    (reg, addr)
}

fn docker_config_secret(ns: &str, name: &str, registry: &str, password: &str) -> Secret {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let json = serde_json::json!({"auths": {registry: {
        "username": "puller", "password": password, "auth": b64(&format!("puller:{password}"))
    }}});
    Secret {
        metadata: ObjectMeta {
            name: name.into(),
            namespace: ns.into(),
            ..Default::default()
        },
        type_: "kubernetes.io/dockerconfigjson".into(),
        data: [(".dockerconfigjson".to_string(), b64(&json.to_string()))].into(),
        ..Default::default()
    }
}

fn pod(ns: &str, name: &str, image: &str, secrets: &[&str]) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: name.into(),
            namespace: ns.into(),
            ..Default::default()
        },
        spec: PodSpec {
            node_name: NODE.into(),
            termination_grace_period_seconds: Some(1),
            image_pull_secrets: secrets
                .iter()
                .map(|s| LocalObjectRef {
                    name: s.to_string(),
                    optional: None,
                })
                .collect(),
            containers: vec![Container {
                name: "main".into(),
                image: image.into(),
                // The image is on the node once the first pod pulled it: the others must ask
                // the registry again.
                image_pull_policy: Some("Always".into()),
                command: vec!["/bin/busybox".into()],
                args: vec![
                    "sh".into(),
                    "-c".into(),
                    "cat /stamp; exec /bin/busybox sleep 300".into(),
                ],
                ..Default::default()
            }],
            ..Default::default()
        },
        ..Default::default()
    }
}

async fn waiting(c: &Client, ns: &str, name: &str) -> Option<(String, String)> {
    let s = c.get::<Pod>(ns, name).await.ok()?.status?;
    let w = s.container_statuses.first()?.state.waiting.clone()?;
    Some((w.reason, w.message))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_pull_from_an_authenticated_registry_only_with_their_image_pull_secrets() {
    let test = "pods_pull_from_an_authenticated_registry_only_with_their_image_pull_secrets";
    if !DockerRuntime::available(Duration::from_secs(5)).await {
        berth_testkit::skip::skip_or_fail(test, "Docker engine not reachable (within 5s)");
        return;
    }
    if !berth_testkit::skip::require(test, tool("docker-registry").and(tool("htpasswd"))) {
        return;
    }
    berth_testkit::images::build_busybox();
    let dir = tempfile::tempdir().unwrap();
    let (_registry, addr) = start_registry(dir.path()).await;
    let ns = format!("ps{}", std::process::id());
    let image = format!("{addr}/private/busybox:{}", std::process::id());
    let _cleanup = Cleanup {
        ns: ns.clone(),
        image: image.clone(),
    };

    // Push an image that exists only in the registry (a unique top layer), with the CLI's
    // credentials in a throwaway DOCKER_CONFIG (the host's ~/.docker stays untouched).
    let stamp = uuid::Uuid::new_v4().to_string();
    let builder = format!("berth-pullsecret-build-{}", std::process::id());
    let _ = std::process::Command::new("docker")
        .args(["rm", "-f", &builder])
        .output();
    run(
        "docker",
        &[
            "run",
            "--network",
            "none",
            "--name",
            &builder,
            IMAGE,
            "/bin/busybox",
            "sh",
            "-c",
            &format!("echo {stamp} > /stamp"),
        ],
        &[],
    );
    run("docker", &["commit", &builder, &image], &[]);
    run("docker", &["rm", "-f", &builder], &[]);
    let cli = dir.path().join("docker-cli");
    std::fs::create_dir_all(&cli).unwrap();
    let env = [("DOCKER_CONFIG", cli.as_path())];
    let mut login = std::process::Command::new("docker")
        .env("DOCKER_CONFIG", &cli)
        .args(["login", &addr, "-u", "puller", "--password-stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        let mut stdin = login.stdin.take().unwrap();
        stdin.write_all(PASSWORD.as_bytes()).unwrap();
    }
    let login = login.wait_with_output().unwrap();
    assert!(
        login.status.success(),
        "docker login: {}",
        String::from_utf8_lossy(&login.stderr)
    );
    run("docker", &["push", &image], &env);
    run("docker", &["rmi", &image], &[]);

    let cluster = TestCluster::start(1).await.unwrap();
    let client = Client::new(
        &[cluster.addr(0).to_string()],
        ClientConfig::with_tls(cluster.admin_tls()),
    )
    .unwrap();
    // Objects go into a namespace of their own, which must exist first.
    let mut n = berth_proto::types::Namespace::default();
    n.metadata.name = ns.clone();
    client.create(&n).await.expect("namespace created");
    let agent_dir = tempfile::tempdir().unwrap();
    let agent = berth_agent::start(
        AgentArgs {
            server: vec![cluster.addr(0).to_string()],
            token: Some(berth_tls::Secret::new(cluster.token())),
            name: Some(NODE.into()),
            address: "127.0.0.1".into(),
            data_dir: Some(agent_dir.path().to_path_buf()),
            runtime: Some(RuntimeKind::Docker),
            capacity: Some("cpu=2,memory=2Gi".into()),
            host_port_range: "41300-41399".into(),
            listen: Some("127.0.0.1:0".into()),
            no_proxy: true,
            restart_backoff_ms: 300,
            heartbeat_ms: 500,
            ..AgentArgs::default()
        },
        CancellationToken::new(),
    )
    .await
    .unwrap();

    client
        .create(&docker_config_secret(&ns, "regcred", &addr, PASSWORD))
        .await
        .unwrap();
    client
        .create(&docker_config_secret(&ns, "badcred", &addr, WRONG))
        .await
        .unwrap();
    client
        .create(&pod(&ns, "with-secret", &image, &["regcred"]))
        .await
        .unwrap();
    // 1. The right credentials: pulled and running, the image's own file in its log.
    common::wait_for(T, "the pod with the pull secret running", || async {
        let s = client.get::<Pod>(&ns, "with-secret").await.ok()?.status?;
        s.container_statuses
            .first()?
            .state
            .running
            .as_ref()
            .map(|_| ())
    })
    .await;
    let id = run(
        "docker",
        &[
            "ps",
            "-q",
            "--filter",
            &format!("label=berth.pod-namespace={ns}"),
            "--filter",
            "label=berth.pod-name=with-secret",
        ],
        &[],
    );
    let logs = run("docker", &["logs", id.lines().next().unwrap()], &[]);
    assert!(logs.contains(&stamp), "the registry's image runs: {logs:?}");

    // 2. No secret, a wrong password, a secret that does not exist: the registry refuses.
    client
        .create(&pod(&ns, "anonymous", &image, &[]))
        .await
        .unwrap();
    client
        .create(&pod(&ns, "wrong", &image, &["badcred"]))
        .await
        .unwrap();
    client
        .create(&pod(&ns, "missing", &image, &["no-such-secret"]))
        .await
        .unwrap();
    for name in ["anonymous", "wrong", "missing"] {
        let (reason, message) = common::wait_for(T, &format!("{name} in ImagePullBackOff"), || {
            let client = client.clone();
            let ns = ns.clone();
            async move {
                let (r, m) = waiting(&client, &ns, name).await?;
                (r == "ImagePullBackOff").then_some((r, m))
            }
        })
        .await;
        assert_eq!(reason, "ImagePullBackOff");
        assert!(
            message.contains("unauthorized") && message.contains(&image),
            "{name}: the registry's reason: {message}"
        );
        let registry_says = if name == "wrong" {
            "authentication required"
        } else {
            "no basic auth credentials"
        };
        assert!(message.contains(registry_says), "{name}: {message}");
        assert!(
            !message.contains(WRONG) && !message.contains(PASSWORD),
            "{message}"
        );
    }
    let events = common::wait_for(T, "the missing secret's event", || async {
        let (events, _) = client.list::<Event>(Some(&ns), "").await.ok()?;
        events
            .iter()
            .any(|e| {
                e.involved_object.name == "missing" && e.reason == "FailedToRetrieveImagePullSecret"
            })
            .then_some(events)
    })
    .await;
    let of = |pod: &str| -> Vec<(String, String)> {
        events
            .iter()
            .filter(|e| e.involved_object.name == pod)
            .map(|e| (e.reason.clone(), e.message.clone()))
            .collect()
    };
    assert!(
        of("missing").contains(&(
            "FailedToRetrieveImagePullSecret".into(),
            "Unable to retrieve some image pull secrets (no-such-secret); attempting to pull the \
             image may not succeed."
                .into()
        )),
        "{:?}",
        of("missing")
    );
    assert!(
        of("wrong")
            .iter()
            .any(|(r, m)| r == "Failed" && m.contains("secret \"badcred\"")),
        "the failure names the secret tried: {:?}",
        of("wrong")
    );
    for e in &events {
        assert!(
            !e.message.contains(WRONG) && !e.message.contains(PASSWORD),
            "{}",
            e.message
        );
    }
    agent.stop().await;
}
