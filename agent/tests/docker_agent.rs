//! The whole agent on the Docker runtime against a real in-process API server: a busybox
//! httpd pod (image built FROM scratch by images/build-busybox.sh) becomes Ready through its
//! readiness probe on an allocated host port, a restarted agent adopts it with zero restarts,
//! a crashing container reaches CrashLoopBackOff, a missing image under `imagePullPolicy:
//! Never` gives ErrImageNeverPull with a Warning event, and deleting pods removes their
//! containers. A second test pulls an image the node does not have from the cluster registry
//! (served in-process on the same store, pushed with `docker push`) and shows a missing one
//! going ErrImagePull then ImagePullBackOff.
//! Skipped outside CI when no Docker engine answers (a failure under CI=true:
//! berth_testkit::skip). Containers are removed even on failure.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use berth_agent::runtime::docker::DockerRuntime;
use berth_agent::{AgentArgs, AgentHandle, RuntimeKind};
use berth_apiserver::testing::TestCluster;
use berth_client::{Client, ClientConfig};
use berth_proto::types::{
    Container, ContainerPort, Event, HttpGetAction, IntOrString, ObjectMeta, Pod, PodSpec, Probe,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

mod common;

const T: Duration = Duration::from_secs(45);
const IMAGE: &str = "berth-busybox:1";

/// Removes every container of the test's namespace, even when the test panics.
struct Cleanup(String);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let out = std::process::Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label=berth.pod-namespace={}", self.0),
            ])
            .output();
        if let Ok(out) = out {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = std::process::Command::new("docker")
                    .args(["rm", "-f", id])
                    .output();
            }
        }
    }
}

async fn start_agent(cluster: &TestCluster, dir: &std::path::Path) -> AgentHandle {
    start_named_agent(cluster, dir, "docker-node", "41000-41099").await
}

async fn start_named_agent(
    cluster: &TestCluster,
    dir: &std::path::Path,
    node: &str,
    host_ports: &str,
) -> AgentHandle {
    let args = AgentArgs {
        server: vec![cluster.addr(0).to_string()],
        token: Some(berth_tls::Secret::new(cluster.token())),
        name: Some(node.into()),
        address: "127.0.0.1".into(),
        data_dir: Some(dir.to_path_buf()),
        runtime: Some(RuntimeKind::Docker),
        capacity: Some("cpu=2,memory=2Gi".into()),
        host_port_range: host_ports.into(),
        listen: Some("127.0.0.1:0".into()),
        no_proxy: true,
        restart_backoff_ms: 300,
        heartbeat_ms: 500,
        ..AgentArgs::default()
    };
    berth_agent::start(args, CancellationToken::new())
        .await
        .unwrap()
}

/// Objects go into a namespace of their own, which must exist first.
async fn create_namespace(c: &Client, ns: &str) {
    let mut n = berth_proto::types::Namespace::default();
    n.metadata.name = ns.to_string();
    c.create(&n).await.expect("namespace created");
}

fn pod(ns: &str, name: &str, image: &str, script: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: name.into(),
            namespace: ns.into(),
            ..Default::default()
        },
        spec: PodSpec {
            node_name: "docker-node".into(),
            termination_grace_period_seconds: Some(2),
            containers: vec![Container {
                name: "main".into(),
                image: image.into(),
                command: vec!["/bin/busybox".into()],
                args: vec!["sh".into(), "-c".into(), script.into()],
                ..Default::default()
            }],
            ..Default::default()
        },
        ..Default::default()
    }
}

async fn status_of(c: &Client, ns: &str, name: &str) -> Option<berth_proto::types::PodStatus> {
    c.get::<Pod>(ns, name).await.ok()?.status
}

async fn containers_of_namespace(ns: &str) -> usize {
    let out = tokio::process::Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=berth.pod-namespace={ns}"),
        ])
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_pods_run_probe_restart_adopt_and_clean_up() {
    if !DockerRuntime::available(Duration::from_secs(5)).await {
        berth_testkit::skip::skip_or_fail(
            "docker_pods_run_probe_restart_adopt_and_clean_up",
            "Docker engine not reachable (no answer within 5s)",
        );
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../images/build-busybox.sh");
    let out = std::process::Command::new("bash")
        .arg(script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let ns = format!("dt{}", std::process::id());
    let _cleanup = Cleanup(ns.clone());
    let cluster = TestCluster::start(1).await.unwrap();
    let server = cluster.addr(0).to_string();
    let client = Client::new(
        &[server.as_str()],
        ClientConfig::with_tls(cluster.admin_tls()),
    )
    .unwrap();
    create_namespace(&client, &ns).await;
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(&cluster, dir.path()).await;
    assert_eq!(agent.runtime, "docker");

    // 1. An httpd pod becomes Ready through its readiness probe, on an allocated host port.
    let mut web = pod(
        &ns,
        "web",
        IMAGE,
        "/bin/busybox mkdir -p /www && echo hello > /www/index.html && exec /bin/busybox httpd -f -p 8080 -h /www",
    );
    web.spec.containers[0].ports = vec![ContainerPort {
        name: "http".into(),
        container_port: 8080,
        protocol: None,
        host_port: None,
    }];
    web.spec.containers[0].readiness_probe = Some(Probe {
        http_get: Some(HttpGetAction {
            path: Some("/index.html".into()),
            port: IntOrString::String("http".into()),
            host: None,
            scheme: None,
        }),
        period_seconds: Some(1),
        ..Default::default()
    });
    client.create(&web).await.unwrap();
    // 2. A crashing container and 3. a missing image, side by side.
    client
        .create(&pod(&ns, "crash", IMAGE, "echo bye; exit 2"))
        .await
        .unwrap();
    let mut ghost = pod(&ns, "ghost", "berth-no-such-image:9", "true");
    ghost.spec.containers[0].image_pull_policy = Some("Never".into());
    client.create(&ghost).await.unwrap();

    let st = common::wait_for(T, "web Ready", || async {
        let s = status_of(&client, &ns, "web").await?;
        berth_proto::types::condition(&s.conditions, "Ready")
            .is_some_and(|c| c.is_true())
            .then_some(s)
    })
    .await;
    let hp = st.host_ports[0].host_port as u16;
    assert!((41000..41100).contains(&hp));
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", hp))
        .await
        .unwrap();
    sock.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    sock.read_to_string(&mut body).await.unwrap();
    assert!(body.contains("hello"), "{body}");
    let web_id = st.container_statuses[0].container_id.clone();
    assert!(web_id.starts_with("docker://"), "{web_id}");

    let crash = common::wait_for(T, "crash in CrashLoopBackOff", || async {
        let s = status_of(&client, &ns, "crash").await?;
        let c = s.container_statuses.first()?.clone();
        (c.restart_count >= 1
            && c.state
                .waiting
                .as_ref()
                .is_some_and(|w| w.reason == "CrashLoopBackOff"))
        .then_some(c)
    })
    .await;
    assert_eq!(crash.last_state.unwrap().terminated.unwrap().exit_code, 2);

    let ghost = common::wait_for(T, "ghost ErrImageNeverPull", || async {
        let s = status_of(&client, &ns, "ghost").await?;
        let w = s.container_statuses.first()?.state.waiting.clone()?;
        (w.reason == "ErrImageNeverPull").then_some(w)
    })
    .await;
    assert!(
        ghost.message.contains("berth-no-such-image:9"),
        "{}",
        ghost.message
    );
    let (events, _) = client.list::<Event>(Some(&ns), "").await.unwrap();
    assert!(
        events.iter().any(|e| e.reason == "Failed"
            && e.type_ == "Warning"
            && e.involved_object.name == "ghost"),
        "{:?}",
        events
            .iter()
            .map(|e| (&e.reason, &e.involved_object.name))
            .collect::<Vec<_>>()
    );
    assert!(events
        .iter()
        .any(|e| e.reason == "Pulled" && e.involved_object.name == "web"));

    // 4. Agent restart: the new agent adopts the running container, zero restarts.
    agent.stop().await;
    let agent = start_agent(&cluster, dir.path()).await;
    // The new agent has synced every pod of the node (and so decided about "web": adopt, not
    // restart) once a pod created after its start is running: each round plans all pods.
    client
        .create(&pod(&ns, "witness", IMAGE, "exec /bin/busybox sleep 300"))
        .await
        .unwrap();
    common::wait_for(
        T,
        "the new agent to run a pod created after its start",
        || async {
            let st = status_of(&client, &ns, "witness").await?;
            st.container_statuses
                .first()?
                .state
                .running
                .is_some()
                .then_some(())
        },
    )
    .await;
    let after = status_of(&client, &ns, "web").await.unwrap();
    assert_eq!(after.container_statuses[0].container_id, web_id);
    assert_eq!(after.container_statuses[0].restart_count, 0);
    assert!(after.container_statuses[0].ready);

    // 5. Deleting the pods removes their containers.
    for name in ["web", "crash", "ghost", "witness"] {
        client
            .delete(berth_proto::Kind::Pod, &ns, name, None)
            .await
            .unwrap();
    }
    common::wait_for(T, "containers removed", || async {
        (containers_of_namespace(&ns).await == 0).then_some(())
    })
    .await;
    agent.stop().await;
}

fn docker(args: &[&str]) -> String {
    let out = std::process::Command::new("docker")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn events_of(events: &[Event], pod: &str) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|e| e.involved_object.name == pod)
        .map(|e| (e.reason.clone(), e.message.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_agent_pulls_a_missing_image_from_the_cluster_registry_and_backs_off_on_an_unknown_one(
) {
    let test = "docker_agent_pulls_a_missing_image_from_the_cluster_registry_and_backs_off_on_an_unknown_one";
    if !DockerRuntime::available(Duration::from_secs(5)).await {
        berth_testkit::skip::skip_or_fail(
            test,
            "Docker engine not reachable (no answer within 5s)",
        );
        return;
    }
    berth_testkit::images::build_busybox();
    let ns = format!("dp{}", std::process::id());
    let _cleanup = Cleanup(ns.clone());
    let cluster = TestCluster::start(1).await.unwrap();
    let client = Client::new(
        &[cluster.addr(0).to_string()],
        ClientConfig::with_tls(cluster.admin_tls()),
    )
    .unwrap();
    create_namespace(&client, &ns).await;
    let dir = tempfile::tempdir().unwrap();
    let registry =
        berth_registry::Registry::in_store(client.clone(), &dir.path().join("registry")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop = CancellationToken::new();
    tokio::spawn(berth_registry::serve::serve(
        listener,
        None,
        registry.router(),
        stop.clone(),
    ));

    // An image whose top layer exists nowhere but in the registry: commit a container that
    // wrote a unique file, push it, remove it from the engine.
    let image = format!("127.0.0.1:{port}/berth-test/pulled:v{}", std::process::id());
    let _untag = RemoveImage(image.clone());
    let builder = format!("berth-pull-build-{}", std::process::id());
    let _ = docker(&["rm", "-f", &builder]).len();
    docker(&[
        "run",
        "--name",
        &builder,
        IMAGE,
        "/bin/busybox",
        "sh",
        "-c",
        &format!("echo {} > /stamp", uuid::Uuid::new_v4()),
    ]);
    docker(&["commit", &builder, &image]);
    docker(&["rm", "-f", &builder]);
    docker(&["push", &image]);
    docker(&["rmi", &image]);
    assert!(
        std::process::Command::new("docker")
            .args(["image", "inspect", &image])
            .output()
            .unwrap()
            .status
            .code()
            != Some(0),
        "the image must be gone from the node before the pod asks for it"
    );

    let agent = start_named_agent(&cluster, dir.path(), "docker-pull-node", "41100-41199").await;
    let mut pulled = pod(
        &ns,
        "pulled",
        &image,
        "/bin/busybox cat /stamp && exec /bin/busybox sleep 300",
    );
    pulled.spec.node_name = "docker-pull-node".into();
    let mut unknown = pod(
        &ns,
        "unknown",
        &format!("127.0.0.1:{port}/berth-test/ghost:9"),
        "true",
    );
    unknown.spec.node_name = "docker-pull-node".into();
    client.create(&pulled).await.unwrap();
    client.create(&unknown).await.unwrap();

    common::wait_for(T, "the pulled image's pod running", || async {
        let s = status_of(&client, &ns, "pulled").await?;
        s.container_statuses
            .first()?
            .state
            .running
            .as_ref()
            .map(|_| ())
    })
    .await;
    let backoff = common::wait_for(T, "the unknown image in ImagePullBackOff", || async {
        let s = status_of(&client, &ns, "unknown").await?;
        let w = s.container_statuses.first()?.state.waiting.clone()?;
        (w.reason == "ImagePullBackOff").then_some(w)
    })
    .await;
    assert!(
        backoff.message.contains("not found"),
        "the registry's reason reaches the status: {}",
        backoff.message
    );
    // Events are flushed after the status write of the same round.
    let events = common::wait_for(T, "the unknown image's BackOff event", || async {
        let (events, _) = client.list::<Event>(Some(&ns), "").await.ok()?;
        events_of(&events, "unknown")
            .iter()
            .any(|(r, _)| r == "BackOff")
            .then_some(events)
    })
    .await;
    let p = events_of(&events, "pulled");
    assert!(
        p.contains(&("Pulling".into(), format!("Pulling image {image:?}"))),
        "{p:?}"
    );
    assert!(
        p.iter().any(|(r, m)| r == "Pulled"
            && m.starts_with(&format!("Successfully pulled image {image:?} in "))),
        "{p:?}"
    );
    let u = events_of(&events, "unknown");
    assert!(
        u.iter().any(|(r, m)| r == "Failed"
            && m.contains("Failed to pull image")
            && m.contains("not found")),
        "{u:?}"
    );
    assert!(
        u.contains(&("Failed".into(), "Error: ErrImagePull".into())),
        "{u:?}"
    );

    for name in ["pulled", "unknown"] {
        client
            .delete(berth_proto::Kind::Pod, &ns, name, None)
            .await
            .unwrap();
    }
    common::wait_for(T, "containers removed", || async {
        (containers_of_namespace(&ns).await == 0).then_some(())
    })
    .await;
    agent.stop().await;
    stop.cancel();
}

/// Removes an image name the test made, even when the test panics.
struct RemoveImage(String);
impl Drop for RemoveImage {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["rmi", &self.0])
            .output();
    }
}

/// Commit a container of the busybox image that wrote `stamp` to /stamp as `image`.
fn commit_stamped(image: &str, stamp: &str) {
    let builder = format!("berth-pin-build-{}", std::process::id());
    let _ = docker(&["rm", "-f", &builder]).len();
    docker(&[
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
    ]);
    docker(&["commit", &builder, image]);
    docker(&["rm", "-f", &builder]);
}

fn engine_has(image: &str) -> bool {
    std::process::Command::new("docker")
        .args(["image", "inspect", image])
        .output()
        .unwrap()
        .status
        .success()
}

/// The image ID the container of pod `name` runs.
fn container_image_id(ns: &str, name: &str) -> String {
    let id = docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=berth.pod-namespace={ns}"),
        "--filter",
        &format!("label=berth.pod-name={name}"),
    ]);
    docker(&["inspect", "-f", "{{.Image}}", id.lines().next().unwrap()])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_agent_runs_a_pinned_digest_from_the_cluster_registry_after_its_tag_moved() {
    let test = "docker_agent_runs_a_pinned_digest_from_the_cluster_registry_after_its_tag_moved";
    if !DockerRuntime::available(Duration::from_secs(5)).await {
        berth_testkit::skip::skip_or_fail(
            test,
            "Docker engine not reachable (no answer within 5s)",
        );
        return;
    }
    berth_testkit::images::build_busybox();
    let ns = format!("pin{}", std::process::id());
    let _cleanup = Cleanup(ns.clone());
    let cluster = TestCluster::start(1).await.unwrap();
    let client = Client::new(
        &[cluster.addr(0).to_string()],
        ClientConfig::with_tls(cluster.admin_tls()),
    )
    .unwrap();
    create_namespace(&client, &ns).await;
    let dir = tempfile::tempdir().unwrap();
    let registry =
        berth_registry::Registry::in_store(client.clone(), &dir.path().join("registry")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let reg = listener.local_addr().unwrap().to_string();
    let stop = CancellationToken::new();
    tokio::spawn(berth_registry::serve::serve(
        listener,
        None,
        registry.router(),
        stop.clone(),
    ));

    // v1 is pushed (digest A), then another image is pushed to the same tag (digest B); both
    // are then removed from the engine, so the node has neither.
    let repo = format!("berth-test/pin{}", std::process::id());
    let pushed = format!("{reg}/{repo}:v1");
    let tag_digest = || async {
        let name = berth_proto::image::tag_object_name(&repo, "v1");
        client
            .get::<berth_proto::types::ImageTag>("", &name)
            .await
            .unwrap()
            .spec
            .digest
    };
    commit_stamped(&pushed, "first");
    docker(&["push", &pushed]);
    let first_id = docker(&["image", "inspect", "-f", "{{.Id}}", &pushed]);
    let a = tag_digest().await;
    commit_stamped(&pushed, "second");
    docker(&["push", &pushed]);
    let second_id = docker(&["image", "inspect", "-f", "{{.Id}}", &pushed]);
    let b = tag_digest().await;
    assert_ne!(a, b, "the tag moved");
    let _rm = (
        RemoveImage(first_id.clone()),
        RemoveImage(second_id.clone()),
    );
    docker(&["rmi", "-f", &first_id, &second_id]);
    let unqualified = format!("{repo}:v1@{a}");
    let qualified = format!("{reg}/{repo}@{a}");
    assert!(!engine_has(&format!("{reg}/{repo}@{a}")));

    let args = AgentArgs {
        server: vec![cluster.addr(0).to_string()],
        token: Some(berth_tls::Secret::new(cluster.token())),
        name: Some("docker-pin-node".into()),
        address: "127.0.0.1".into(),
        data_dir: Some(dir.path().to_path_buf()),
        runtime: Some(RuntimeKind::Docker),
        capacity: Some("cpu=2,memory=2Gi".into()),
        host_port_range: "41200-41299".into(),
        listen: Some("127.0.0.1:0".into()),
        no_proxy: true,
        restart_backoff_ms: 300,
        heartbeat_ms: 500,
        cluster_registry: Some(reg.clone()),
        ..AgentArgs::default()
    };
    let agent = berth_agent::start(args, CancellationToken::new())
        .await
        .unwrap();
    let script = "/bin/busybox cat /stamp && exec /bin/busybox sleep 300";
    let running = |name: &'static str| {
        let (client, ns) = (client.clone(), ns.clone());
        async move {
            common::wait_for(T, &format!("pod {name} running"), || async {
                let s = status_of(&client, &ns, name).await?;
                s.container_statuses
                    .first()?
                    .state
                    .running
                    .as_ref()
                    .map(|_| ())
            })
            .await
        }
    };
    // The form a pinned Deployment's pods carry: REPO:TAG@DIGEST, named without a registry.
    let mut p = pod(&ns, "unqualified", &unqualified, script);
    p.spec.node_name = "docker-pin-node".into();
    client.create(&p).await.unwrap();
    running("unqualified").await;
    // The old bytes, though the tag now names the second image.
    assert_eq!(container_image_id(&ns, "unqualified"), first_id);

    // Registry-qualified, by digest alone: already on the node (found by its RepoDigest).
    let mut p = pod(&ns, "qualified", &qualified, script);
    p.spec.node_name = "docker-pin-node".into();
    client.create(&p).await.unwrap();
    running("qualified").await;
    assert_eq!(container_image_id(&ns, "qualified"), first_id);
    let events = common::wait_for(T, "the events of both pods", || async {
        let (events, _) = client.list::<Event>(Some(&ns), "").await.ok()?;
        let q = events_of(&events, "qualified");
        q.iter().any(|(r, _)| r == "Pulled").then_some(events)
    })
    .await;
    let u = events_of(&events, "unqualified");
    assert!(
        u.contains(&("Pulling".into(), format!("Pulling image {unqualified:?}"))),
        "{u:?}"
    );
    let q = events_of(&events, "qualified");
    assert!(
        q.contains(&(
            "Pulled".into(),
            format!("Container image {qualified:?} already present on machine")
        )),
        "{q:?}"
    );

    for name in ["unqualified", "qualified"] {
        client
            .delete(berth_proto::Kind::Pod, &ns, name, None)
            .await
            .unwrap();
    }
    common::wait_for(T, "containers removed", || async {
        (containers_of_namespace(&ns).await == 0).then_some(())
    })
    .await;
    agent.stop().await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_runtime_pulls_a_digest_reference_from_the_cluster_registry_and_finds_it_by_repo_digest(
) {
    let test = "docker_runtime_pulls_a_digest_reference_from_the_cluster_registry_and_finds_it_by_repo_digest";
    if !DockerRuntime::available(Duration::from_secs(5)).await {
        berth_testkit::skip::skip_or_fail(
            test,
            "Docker engine not reachable (no answer within 5s)",
        );
        return;
    }
    use berth_agent::runtime::Runtime;
    berth_testkit::images::build_busybox();
    let cluster = TestCluster::start(1).await.unwrap();
    let client = Client::new(
        &[cluster.addr(0).to_string()],
        ClientConfig::with_tls(cluster.admin_tls()),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let registry =
        berth_registry::Registry::in_store(client.clone(), &dir.path().join("registry")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let reg = listener.local_addr().unwrap().to_string();
    let stop = CancellationToken::new();
    tokio::spawn(berth_registry::serve::serve(
        listener,
        None,
        registry.router(),
        stop.clone(),
    ));
    let repo = format!("berth-test/digest{}", std::process::id());
    let pushed = format!("{reg}/{repo}:v1");
    commit_stamped(&pushed, "by-digest");
    docker(&["push", &pushed]);
    let id = docker(&["image", "inspect", "-f", "{{.Id}}", &pushed]);
    let _rm = RemoveImage(id.clone());
    let name = berth_proto::image::tag_object_name(&repo, "v1");
    let digest = client
        .get::<berth_proto::types::ImageTag>("", &name)
        .await
        .unwrap()
        .spec
        .digest;
    docker(&["rmi", "-f", &id]);

    let rt = DockerRuntime::connect()
        .await
        .unwrap()
        .with_cluster_registry(Some(reg.clone()));
    let pinned = format!("{repo}:v1@{digest}");
    let qualified = format!("{reg}/{repo}@{digest}");
    assert!(!rt.image_present(&pinned).await.unwrap());
    assert!(!rt.image_present(&qualified).await.unwrap());
    let pulled = rt.pull(&pinned).await.unwrap();
    assert!(pulled.size > 0, "{pulled:?}");
    // Present under both forms (the engine's RepoDigests), and the very image pushed.
    assert!(rt.image_present(&pinned).await.unwrap());
    assert!(rt.image_present(&qualified).await.unwrap());
    assert_eq!(
        docker(&["image", "inspect", "-f", "{{.Id}}", &qualified]),
        id
    );
    // The trust check finds the registry digest of a pinned image (held under its digest
    // names, not as written).
    assert_eq!(
        rt.image_digests(&pinned).await.unwrap(),
        Some(vec![digest.clone()])
    );
    // A registry-qualified digest pulls too (here: already present, a no-op pull).
    rt.pull(&qualified).await.unwrap();
    stop.cancel();
}

/// The Kubernetes docs' sidecar shape on Docker: the main container writes a log to a shared
/// emptyDir and a sidecar tails it; the main container reads a ConfigMap volume (an update of
/// the ConfigMap shows up in the mounted file while the pod runs) and a Secret volume with
/// `defaultMode: 0400`; deleting the pod removes its volumes from the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_pod_shares_an_empty_dir_with_a_sidecar_and_sees_config_map_updates() {
    use berth_proto::types::{
        ConfigMap, ConfigMapVolumeSource, EmptyDirVolumeSource, Secret, SecretVolumeSource, Volume,
        VolumeMount,
    };
    let test = "docker_pod_shares_an_empty_dir_with_a_sidecar_and_sees_config_map_updates";
    if !DockerRuntime::available(Duration::from_secs(5)).await {
        berth_testkit::skip::skip_or_fail(
            test,
            "Docker engine not reachable (no answer within 5s)",
        );
        return;
    }
    berth_testkit::images::build_busybox();
    let ns = format!("dv{}", std::process::id());
    let _cleanup = Cleanup(ns.clone());
    let cluster = TestCluster::start(1).await.unwrap();
    let server = cluster.addr(0).to_string();
    let client = Client::new(
        &[server.as_str()],
        ClientConfig::with_tls(cluster.admin_tls()),
    )
    .unwrap();
    create_namespace(&client, &ns).await;
    let dir = tempfile::tempdir().unwrap();
    let agent = start_named_agent(&cluster, dir.path(), "docker-vol-node", "41300-41399").await;

    let meta = |name: &str| ObjectMeta {
        name: name.into(),
        namespace: ns.clone(),
        ..Default::default()
    };
    let mut cm = ConfigMap {
        metadata: meta("app-config"),
        ..Default::default()
    };
    cm.data.insert("greeting".into(), "hello".into());
    client.create(&cm).await.unwrap();
    let mut secret = Secret {
        metadata: meta("db"),
        ..Default::default()
    };
    secret
        .string_data
        .insert("password".into(), "hunter2".into());
    client.create(&secret).await.unwrap();

    let mut p = pod(
        &ns,
        "sidecar",
        IMAGE,
        "i=0; while true; do i=$((i+1)); echo \"line $i $(/bin/busybox cat /etc/app/greeting)\" >> /var/log/app.log; /bin/busybox sleep 0.3; done",
    );
    p.spec.node_name = "docker-vol-node".into();
    let mount = |name: &str, path: &str, ro: bool| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: ro.then_some(true),
        sub_path: None,
    };
    p.spec.volumes = vec![
        Volume {
            name: "logs".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        },
        Volume {
            name: "conf".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: "app-config".into(),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: "creds".into(),
            secret: Some(SecretVolumeSource {
                secret_name: "db".into(),
                default_mode: Some(0o400),
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    p.spec.containers[0].volume_mounts = vec![
        mount("logs", "/var/log", false),
        mount("conf", "/etc/app", true),
        mount("creds", "/etc/creds", true),
    ];
    let mut sidecar = p.spec.containers[0].clone();
    sidecar.name = "sidecar".into();
    sidecar.args = vec![
        "sh".into(),
        "-c".into(),
        "exec /bin/busybox tail -F /var/log/app.log".into(),
    ];
    sidecar.volume_mounts = vec![mount("logs", "/var/log", true)];
    p.spec.containers.push(sidecar);
    client.create(&p).await.unwrap();

    common::wait_for(T, "both containers running", || async {
        let st = status_of(&client, &ns, "sidecar").await?;
        (st.container_statuses.len() == 2
            && st
                .container_statuses
                .iter()
                .all(|c| c.state.running.is_some()))
        .then_some(())
    })
    .await;
    let name_of = |c: &str| {
        let names = docker(&[
            "ps",
            "--filter",
            &format!("label=berth.pod-namespace={ns}"),
            "--format",
            "{{.Names}}",
        ]);
        names
            .lines()
            // berth_NS_POD_CONTAINER_ATTEMPT_UID8: the pod is named "sidecar" too.
            .find(|n| n.contains(&format!("_sidecar_{c}_")))
            .unwrap_or_else(|| panic!("no {c} container in {names}"))
            .to_string()
    };
    let (main, side) = (name_of("main"), name_of("sidecar"));
    let sidecar_logs = |want: &'static str| {
        let side = side.clone();
        async move {
            let out = tokio::process::Command::new("docker")
                .args(["logs", &side])
                .output()
                .await
                .ok()?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.contains(want).then_some(text)
        }
    };
    common::wait_for(T, "the sidecar tails the main container's log", || {
        sidecar_logs(" hello")
    })
    .await;
    assert_eq!(
        docker(&["exec", &main, "/bin/busybox", "cat", "/etc/creds/password"]),
        "hunter2"
    );
    assert_eq!(
        docker(&[
            "exec",
            &main,
            "/bin/busybox",
            "stat",
            "-L",
            "-c",
            "%a",
            "/etc/creds/password"
        ]),
        "400"
    );
    // Read-only where the manifest says so.
    let w = std::process::Command::new("docker")
        .args(["exec", &main, "/bin/busybox", "touch", "/etc/app/x"])
        .output()
        .unwrap();
    assert!(!w.status.success(), "a readOnly mount was writable");

    // The ConfigMap changes: the mounted file follows (the agent re-projects every 10 s).
    let mut cm: ConfigMap = client.get(&ns, "app-config").await.unwrap();
    cm.data.insert("greeting".into(), "updated".into());
    client.update(&cm).await.unwrap();
    common::wait_for(
        Duration::from_secs(60),
        "the update in the mounted file",
        || sidecar_logs(" updated"),
    )
    .await;

    let uid = client
        .get::<Pod>(&ns, "sidecar")
        .await
        .unwrap()
        .metadata
        .uid;
    let vols = dir.path().join("volumes").join(&uid);
    assert!(vols.join("logs").join("app.log").exists());
    client
        .delete(berth_proto::Kind::Pod, &ns, "sidecar", None)
        .await
        .unwrap();
    common::wait_for(T, "the pod's volumes removed from the node", || async {
        (!vols.exists()).then_some(())
    })
    .await;
    agent.stop_workloads().await;
    cluster.shutdown().await.unwrap();
}
