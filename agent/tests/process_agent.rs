//! Component tests of the whole agent on the process runtime against a real in-process API
//! server (1 member on 127.0.0.1:0): pods become Ready with host ports and logs, crashes reach
//! CrashLoopBackOff, a failing liveness probe restarts, and a restarted agent adopts running
//! workloads with zero restarts and cleans up workloads of deleted pods.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use berth_agent::logs::LogRequest;
use berth_agent::{AgentArgs, AgentHandle, RuntimeKind};
use berth_apiserver::testing::TestCluster;
use berth_client::{Client, ClientConfig};
use berth_proto::types::{
    Container, ContainerPort, Event, HttpGetAction, IntOrString, Node, ObjectMeta, Pod, PodSpec,
    Probe,
};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

mod common;

const T: Duration = Duration::from_secs(40);

fn port_range(seed: u16) -> String {
    // Distinct ranges per test so parallel tests never contend for the same host ports.
    let start = 40000 + seed * 100;
    format!("{start}-{}", start + 99)
}

async fn start_agent(
    cluster: &TestCluster,
    name: &str,
    dir: &std::path::Path,
    seed: u16,
) -> AgentHandle {
    let args = AgentArgs {
        server: vec![cluster.addr(0).to_string()],
        token: Some(berth_tls::Secret::new(cluster.token())),
        name: Some(name.to_string()),
        address: "127.0.0.1".into(),
        data_dir: Some(dir.to_path_buf()),
        runtime: Some(RuntimeKind::Process),
        capacity: Some("cpu=2,memory=2Gi".into()),
        labels: vec!["zone=test".into()],
        host_port_range: port_range(seed),
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

fn pod(name: &str, node: &str, script: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: name.into(),
            namespace: "default".into(),
            ..Default::default()
        },
        spec: PodSpec {
            node_name: node.into(),
            termination_grace_period_seconds: Some(2),
            containers: vec![Container {
                name: "main".into(),
                image: "none".into(),
                command: vec!["sh".into(), "-c".into(), script.into()],
                ..Default::default()
            }],
            ..Default::default()
        },
        ..Default::default()
    }
}

fn http_pod(name: &str, node: &str, probe_path: &str, liveness: bool) -> Pod {
    let mut p = pod(
        name,
        node,
        "echo hello from $PORT_HTTP; exec python3 -m http.server --bind 127.0.0.1 $PORT",
    );
    let c = &mut p.spec.containers[0];
    c.ports = vec![ContainerPort {
        name: "http".into(),
        container_port: 8080,
        protocol: None,
        host_port: None,
    }];
    let probe = Probe {
        http_get: Some(HttpGetAction {
            path: Some(probe_path.into()),
            port: IntOrString::String("http".into()),
            host: None,
            scheme: None,
        }),
        period_seconds: Some(1),
        failure_threshold: Some(2),
        ..Default::default()
    };
    if liveness {
        c.liveness_probe = Some(Probe {
            initial_delay_seconds: Some(1),
            ..probe
        });
    } else {
        c.readiness_probe = Some(probe);
    }
    p
}

/// Is `python3` here (the workload of two tests)? Skips outside CI, fails under CI.
fn python_available(test: &str) -> bool {
    berth_testkit::skip::require(
        test,
        berth_testkit::skip::command_works("python3", &["--version"]),
    )
}

async fn get_pod(c: &Client, name: &str) -> Option<Pod> {
    c.get::<Pod>("default", name).await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_pod_becomes_ready_with_host_port_logs_and_a_registered_node() {
    if !python_available("process_pod_becomes_ready_with_host_port_logs_and_a_registered_node") {
        return;
    }
    let cluster = TestCluster::start(1).await.unwrap();
    let server = cluster.addr(0).to_string();
    let client = Client::new(
        &[server.as_str()],
        ClientConfig::with_tls(cluster.admin_tls()),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(&cluster, "node-a", dir.path(), 1).await;

    let node: Node = common::wait_for(T, "node registered and Ready", || async {
        client
            .get::<Node>("", "node-a")
            .await
            .ok()
            .filter(|n| n.is_ready())
    })
    .await;
    let st = node.status.as_ref().unwrap();
    assert_eq!(node.address(), Some("127.0.0.1"));
    assert_eq!(st.agent_endpoint, agent.agent_endpoint);
    assert_eq!(st.capacity["cpu"].0, "2");
    assert_eq!(node.metadata.labels["zone"], "test");
    assert!(st
        .node_info
        .as_ref()
        .unwrap()
        .container_runtime_version
        .starts_with("process://"));

    client
        .create(&http_pod("web", "node-a", "/", false))
        .await
        .unwrap();
    let ready = common::wait_for(T, "pod Ready", || async {
        get_pod(&client, "web").await.filter(|p| p.is_ready())
    })
    .await;
    let st = ready.status.unwrap();
    assert_eq!(st.phase, "Running");
    assert_eq!(st.host_ip, "127.0.0.1");
    assert_eq!(st.host_ports.len(), 1);
    let hp = st.host_ports[0].host_port;
    assert!((40100..40200).contains(&hp), "{hp}");
    assert_eq!(st.container_statuses[0].restart_count, 0);
    // The workload really listens on the host port.
    tokio::net::TcpStream::connect(("127.0.0.1", hp as u16))
        .await
        .unwrap();

    let req = LogRequest {
        namespace: "default".into(),
        pod: "web".into(),
        ..LogRequest::default()
    };
    let admin = cluster.admin_tls();
    let mut logs = berth_agent::logs::fetch(&agent.agent_endpoint, &req, Some(&admin))
        .await
        .unwrap();
    let mut text = Vec::new();
    while let Some(chunk) = logs.next().await {
        text.extend_from_slice(&chunk.unwrap());
    }
    let text = String::from_utf8_lossy(&text);
    assert!(text.contains(&format!("hello from {hp}")), "{text}");

    let (events, _) = client.list::<Event>(Some("default"), "").await.unwrap();
    let reasons: Vec<&str> = events.iter().map(|e| e.reason.as_str()).collect();
    assert!(reasons.contains(&"Started"), "{reasons:?}");

    // Deleting the pod stops the workload and frees its port.
    client
        .delete(berth_proto::Kind::Pod, "default", "web", None)
        .await
        .unwrap();
    common::wait_for(T, "workload stopped after pod deletion", || async {
        std::net::TcpStream::connect(("127.0.0.1", hp as u16))
            .is_err()
            .then_some(())
    })
    .await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashing_process_reaches_crash_loop_back_off_with_last_exit_code() {
    let cluster = TestCluster::start(1).await.unwrap();
    let server = cluster.addr(0).to_string();
    let client = Client::new(
        &[server.as_str()],
        ClientConfig::with_tls(cluster.admin_tls()),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(&cluster, "node-b", dir.path(), 2).await;
    client
        .create(&pod("crash", "node-b", "echo crashing; exit 3"))
        .await
        .unwrap();
    let p = common::wait_for(T, "CrashLoopBackOff after restarts", || async {
        get_pod(&client, "crash").await.filter(|p| {
            p.status.as_ref().is_some_and(|s| {
                s.container_statuses.first().is_some_and(|c| {
                    c.restart_count >= 2
                        && c.state
                            .waiting
                            .as_ref()
                            .is_some_and(|w| w.reason == "CrashLoopBackOff")
                })
            })
        })
    })
    .await;
    let cs = &p.status.unwrap().container_statuses[0];
    let last = cs.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!(last.exit_code, 3);
    assert_eq!(last.reason, "Error");
    let msg = &cs.state.waiting.as_ref().unwrap().message;
    assert!(
        msg.contains("back-off") && msg.contains("container=main"),
        "{msg}"
    );
    let (events, _) = client.list::<Event>(Some("default"), "").await.unwrap();
    assert!(events
        .iter()
        .any(|e| e.reason == "BackOff" && e.type_ == "Warning"));
    // Previous logs are served from the attempt before the newest.
    let req = LogRequest {
        namespace: "default".into(),
        pod: "crash".into(),
        container: "main".into(),
        previous: true,
        ..LogRequest::default()
    };
    let mut prev =
        berth_agent::logs::fetch(&agent.agent_endpoint, &req, Some(&cluster.admin_tls()))
            .await
            .unwrap();
    let mut text = Vec::new();
    while let Some(chunk) = prev.next().await {
        text.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(String::from_utf8_lossy(&text), "crashing\n");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_liveness_probe_restarts_the_process() {
    if !python_available("failing_liveness_probe_restarts_the_process") {
        return;
    }
    let cluster = TestCluster::start(1).await.unwrap();
    let server = cluster.addr(0).to_string();
    let client = Client::new(
        &[server.as_str()],
        ClientConfig::with_tls(cluster.admin_tls()),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(&cluster, "node-c", dir.path(), 3).await;
    client
        .create(&http_pod("sick", "node-c", "/missing", true))
        .await
        .unwrap();
    common::wait_for(T, "restart after liveness failure", || async {
        get_pod(&client, "sick").await.filter(|p| {
            p.status.as_ref().is_some_and(|s| {
                s.container_statuses
                    .first()
                    .is_some_and(|c| c.restart_count >= 1)
            })
        })
    })
    .await;
    let (events, _) = client.list::<Event>(Some("default"), "").await.unwrap();
    let reasons: Vec<&str> = events.iter().map(|e| e.reason.as_str()).collect();
    assert!(reasons.contains(&"Unhealthy"), "{reasons:?}");
    assert!(
        events
            .iter()
            .any(|e| e.reason == "Killing" && e.message.contains("liveness")),
        "{reasons:?}"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_agent_adopts_running_process_with_zero_restarts() {
    let cluster = TestCluster::start(1).await.unwrap();
    let server = cluster.addr(0).to_string();
    let client = Client::new(
        &[server.as_str()],
        ClientConfig::with_tls(cluster.admin_tls()),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let first = start_agent(&cluster, "node-d", dir.path(), 4).await;
    client
        .create(&pod("keep", "node-d", "echo up; exec sleep 300"))
        .await
        .unwrap();
    let before = common::wait_for(T, "running", || async {
        get_pod(&client, "keep").await.and_then(|p| {
            let cs = p.status?.container_statuses.first()?.clone();
            cs.state.running.is_some().then_some(cs)
        })
    })
    .await;
    // The agent goes away (its loops stop; the workload does not).
    first.stop().await;
    let second = start_agent(&cluster, "node-d", dir.path(), 4).await;
    // The new agent has synced every pod bound to it (and so decided about "keep": adopt,
    // not restart) once a pod created after its start is running: every sync round plans
    // all of the node's pods at once.
    client
        .create(&pod("witness", "node-d", "exec sleep 300"))
        .await
        .unwrap();
    common::wait_for(
        T,
        "the new agent to run a pod created after its start",
        || async {
            let cs = get_pod(&client, "witness")
                .await?
                .status?
                .container_statuses
                .first()?
                .clone();
            cs.state.running.is_some().then_some(())
        },
    )
    .await;
    let after = get_pod(&client, "keep")
        .await
        .unwrap()
        .status
        .unwrap()
        .container_statuses[0]
        .clone();
    assert_eq!(after.restart_count, 0);
    assert_eq!(
        after.container_id, before.container_id,
        "same workload, adopted"
    );
    assert_eq!(after.state.running, before.state.running);
    // The adopting agent still owns it: deleting the pods stops their processes.
    for name in ["keep", "witness"] {
        client
            .delete(berth_proto::Kind::Pod, "default", name, None)
            .await
            .unwrap();
    }
    let containers = dir.path().join("containers");
    common::wait_for(T, "workload cleaned up", || async {
        std::fs::read_dir(&containers)
            .ok()?
            .next()
            .is_none()
            .then_some(())
    })
    .await;
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workloads_keep_running_and_restarting_while_the_api_is_down_then_status_resyncs() {
    let mut cluster = TestCluster::start(1).await.unwrap();
    let server = cluster.addr(0).to_string();
    let client = Client::new(
        &[server.as_str()],
        ClientConfig::with_tls(cluster.admin_tls()),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(&cluster, "node-e", dir.path(), 5).await;
    // Appends a line every 100 ms, and a crasher that exits after 0.3 s each time.
    client
        .create(&pod(
            "ticker",
            "node-e",
            "while :; do echo tick >> ../ticks; sleep 0.1; done",
        ))
        .await
        .unwrap();
    client
        .create(&pod("flaky", "node-e", "sleep 0.3; exit 1"))
        .await
        .unwrap();
    let restarts_before = common::wait_for(T, "both pods started", || async {
        let t = get_pod(&client, "ticker").await?.status?;
        let f = get_pod(&client, "flaky").await?.status?;
        (t.container_statuses.first()?.state.running.is_some()).then_some(())?;
        Some(f.container_statuses.first()?.restart_count)
    })
    .await;

    cluster.stop(0).await.unwrap();
    let ticks = || {
        std::fs::read_dir(dir.path().join("containers"))
            .unwrap()
            .flatten()
            .map(|e| {
                std::fs::read_to_string(e.path().join("ticks"))
                    .unwrap_or_default()
                    .lines()
                    .count()
            })
            .sum::<usize>()
    };
    let t0 = ticks();
    let flaky_attempts = || {
        std::fs::read_dir(dir.path().join("containers"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("_flaky_"))
            .filter_map(|e| {
                e.file_name()
                    .to_string_lossy()
                    .split('_')
                    .nth(3)
                    .and_then(|a| a.parse::<u32>().ok())
            })
            .max()
            .unwrap_or(0)
    };
    let a0 = flaky_attempts();
    // With the API down, the ticker keeps appending and the crasher keeps being restarted.
    common::wait_for(
        T,
        "the ticker to keep ticking and the crasher to be restarted while the API is down",
        || async { (ticks() > t0 + 5 && flaky_attempts() > a0).then_some(()) },
    )
    .await;

    cluster.restart(0).await.unwrap();
    let resynced = common::wait_for(T, "status resynced after the API returned", || async {
        let f = get_pod(&client, "flaky").await?.status?;
        let n = f.container_statuses.first()?.restart_count;
        (n > restarts_before.max(a0 as i32)).then_some(n)
    })
    .await;
    assert!(resynced > 0);
    let t = get_pod(&client, "ticker").await.unwrap().status.unwrap();
    assert_eq!(t.container_statuses[0].restart_count, 0);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_programs_its_proxy_from_services_and_endpoints() {
    let common::ProxyAgent {
        cluster: _cluster,
        client,
        agent,
        dir: _dir,
    } = common::start_proxy_agent("node-f", port_range(6)).await;

    // A backend that answers with a fixed line.
    let (backend_port, _backend_task) = common::fixed_line_backend().await;
    // A free port in the node-port range for the Service.
    let node_port = (30000..32767u16)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .unwrap();
    let meta = ObjectMeta {
        name: "svc".into(),
        namespace: "default".into(),
        ..Default::default()
    };
    common::create_node_port_service(&client, meta, "x", node_port, backend_port).await;
    let got = common::wait_for(T, "traffic through the node port", || async {
        let buf = common::read_all_from(node_port).await?;
        (!buf.is_empty()).then_some(buf)
    })
    .await;
    assert_eq!(got, "from-backend\n");
    agent.stop().await;
}

/// A process pod whose environment comes from a ConfigMap, a Secret and its own fields: it
/// waits with kubelet's CreateContainerConfigError while the ConfigMap is missing, then starts
/// with the values once both exist; no event carries the secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_takes_its_environment_from_a_config_map_a_secret_and_its_fields_once_they_exist() {
    use berth_proto::types::{
        ConfigMap, EnvFromSource, EnvVar, EnvVarSource, KeySelector, LocalObjectRef,
        ObjectFieldSelector, Secret,
    };
    let cluster = TestCluster::start(1).await.unwrap();
    let server = cluster.addr(0).to_string();
    let client = Client::new(
        &[server.as_str()],
        ClientConfig::with_tls(cluster.admin_tls()),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(&cluster, "node-env", dir.path(), 9).await;

    let mut p = pod(
        "cfg",
        "node-env",
        "echo \"mode=$MODE pass=$PASS node=$NODE ip=$IP lives=$GAME_lives\"; sleep 60",
    );
    let field = |path: &str| EnvVarSource {
        field_ref: Some(ObjectFieldSelector {
            api_version: String::new(),
            field_path: path.into(),
        }),
        ..Default::default()
    };
    let c = &mut p.spec.containers[0];
    c.env = vec![
        EnvVar {
            name: "MODE".into(),
            value: String::new(),
            value_from: Some(EnvVarSource {
                config_map_key_ref: Some(KeySelector {
                    name: "game".into(),
                    key: "mode".into(),
                    optional: None,
                }),
                ..Default::default()
            }),
        },
        EnvVar {
            name: "PASS".into(),
            value: String::new(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(KeySelector {
                    name: "mysql-pass".into(),
                    key: "password".into(),
                    optional: None,
                }),
                ..Default::default()
            }),
        },
        EnvVar {
            name: "NODE".into(),
            value: String::new(),
            value_from: Some(field("spec.nodeName")),
        },
        EnvVar {
            name: "IP".into(),
            value: String::new(),
            value_from: Some(field("status.podIP")),
        },
    ];
    c.env_from = vec![EnvFromSource {
        prefix: "GAME_".into(),
        config_map_ref: Some(LocalObjectRef {
            name: "game".into(),
            optional: None,
        }),
        secret_ref: None,
    }];
    client.create(&p).await.unwrap();

    let waiting = common::wait_for(T, "CreateContainerConfigError", || async {
        let p = get_pod(&client, "cfg").await?;
        let w = p
            .status?
            .container_statuses
            .first()?
            .state
            .waiting
            .clone()?;
        (w.reason == "CreateContainerConfigError").then_some(w)
    })
    .await;
    assert!(
        waiting.message.contains("configmap \"game\" not found"),
        "{waiting:?}"
    );

    let mut game = ConfigMap {
        metadata: ObjectMeta {
            name: "game".into(),
            namespace: "default".into(),
            ..Default::default()
        },
        ..Default::default()
    };
    game.data.insert("mode".into(), "fast".into());
    game.data.insert("lives".into(), "3".into());
    client.create(&game).await.unwrap();
    let mut pass = Secret {
        metadata: ObjectMeta {
            name: "mysql-pass".into(),
            namespace: "default".into(),
            ..Default::default()
        },
        ..Default::default()
    };
    pass.string_data.insert("password".into(), "hunter2".into());
    client.create(&pass).await.unwrap();

    let line = common::wait_for(T, "the container's first line", || async {
        let req = LogRequest {
            namespace: "default".into(),
            pod: "cfg".into(),
            ..LogRequest::default()
        };
        let admin = cluster.admin_tls();
        let mut logs = berth_agent::logs::fetch(&agent.agent_endpoint, &req, Some(&admin))
            .await
            .ok()?;
        let mut text = Vec::new();
        while let Some(chunk) = logs.next().await {
            text.extend_from_slice(&chunk.ok()?);
        }
        let text = String::from_utf8_lossy(&text).into_owned();
        text.contains("mode=").then_some(text)
    })
    .await;
    assert!(
        line.contains("mode=fast pass=hunter2 node=node-env ip=127.0.0.1 lives=3"),
        "{line}"
    );
    let (events, _) = client.list::<Event>(Some("default"), "").await.unwrap();
    for e in &events {
        assert!(!e.message.contains("hunter2"), "{e:?}");
    }
    agent.stop().await;
}
