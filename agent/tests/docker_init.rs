//! Init containers on the Docker runtime: two busybox init containers (with a native sidecar
//! between them) run one after the other, each to completion, before the app container
//! starts (read back from the containers' start and finish times), and the pod becomes Ready
//! with initContainerStatuses; the sidecar, killed, is restarted beside the running app.
//! Skipped outside CI when no Docker engine answers (berth_testkit::skip). Containers are
//! removed even on failure.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use berth_agent::runtime::docker::DockerRuntime;
use berth_agent::{AgentArgs, RuntimeKind};
use berth_apiserver::testing::TestCluster;
use berth_client::{Client, ClientConfig};
use berth_proto::types::{Container, ObjectMeta, Pod, PodSpec};
use tokio_util::sync::CancellationToken;

mod common;

const T: Duration = Duration::from_secs(60);
const IMAGE: &str = "berth-busybox:1";
const NS: &str = "docker-init";

/// Removes every container of the test's namespace, even when the test panics.
struct Cleanup;
impl Drop for Cleanup {
    fn drop(&mut self) {
        let out = std::process::Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label=berth.pod-namespace={NS}"),
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

fn bb(name: &str, script: &str) -> Container {
    Container {
        name: name.into(),
        image: IMAGE.into(),
        image_pull_policy: Some("Never".into()),
        command: vec!["/bin/busybox".into()],
        args: vec!["sh".into(), "-c".into(), script.into()],
        ..Default::default()
    }
}

/// A native sidecar (`restartPolicy: Always`).
fn sidecar() -> Container {
    Container {
        restart_policy: Some("Always".into()),
        ..bb("proxy", "exec sleep 1000")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_init_containers_complete_in_order_before_the_app_starts_and_the_sidecar_restarts() {
    if !DockerRuntime::available(Duration::from_secs(5)).await {
        berth_testkit::skip::skip_or_fail(
            "docker_init_containers_complete_in_order_before_the_app_starts_and_the_sidecar_restarts",
            "Docker engine not reachable (no answer within 5s)",
        );
        return;
    }
    berth_testkit::images::build_busybox();
    let _cleanup = Cleanup;
    let cluster = TestCluster::start(1).await.unwrap();
    let server = cluster.addr(0).to_string();
    let client = Client::new(
        &[server.as_str()],
        ClientConfig::with_tls(cluster.admin_tls()),
    )
    .unwrap();
    let mut ns = berth_proto::types::Namespace::default();
    ns.metadata.name = NS.into();
    client.create(&ns).await.expect("namespace created");
    let dir = tempfile::tempdir().unwrap();
    let args = AgentArgs {
        server: vec![server.clone()],
        token: Some(berth_tls::Secret::new(cluster.token())),
        name: Some("docker-init-node".into()),
        address: "127.0.0.1".into(),
        data_dir: Some(dir.path().to_path_buf()),
        runtime: Some(RuntimeKind::Docker),
        capacity: Some("cpu=2,memory=2Gi".into()),
        host_port_range: "41700-41799".into(),
        listen: Some("127.0.0.1:0".into()),
        no_proxy: true,
        restart_backoff_ms: 300,
        heartbeat_ms: 500,
        ..AgentArgs::default()
    };
    let _agent = berth_agent::start(args, CancellationToken::new())
        .await
        .unwrap();
    let p = Pod {
        metadata: ObjectMeta {
            name: "ordered".into(),
            namespace: NS.into(),
            ..Default::default()
        },
        spec: PodSpec {
            node_name: "docker-init-node".into(),
            termination_grace_period_seconds: Some(1),
            init_containers: vec![bb("one", "sleep 1"), sidecar(), bb("two", "sleep 1")],
            containers: vec![bb("app", "exec sleep 1000")],
            ..Default::default()
        },
        ..Default::default()
    };
    client.create(&p).await.unwrap();
    let ready = common::wait_for(T, "pod Ready", || async {
        client
            .get::<Pod>(NS, "ordered")
            .await
            .ok()
            .filter(|p| p.is_ready())
    })
    .await;
    let st = ready.status.unwrap();
    let done: Vec<_> = st
        .init_container_statuses
        .iter()
        .filter(|s| s.name != "proxy")
        .map(|s| {
            let t = s
                .state
                .terminated
                .clone()
                .expect("init container terminated");
            assert_eq!(
                (t.exit_code, t.reason.as_str()),
                (0, "Completed"),
                "{}",
                s.name
            );
            assert!(
                s.container_id.starts_with("docker://"),
                "{}",
                s.container_id
            );
            (t.started_at.unwrap(), t.finished_at.unwrap())
        })
        .collect();
    let app_started = st.container_statuses[0]
        .state
        .running
        .as_ref()
        .and_then(|r| r.started_at)
        .unwrap();
    assert!(
        done[0].1 <= done[1].0,
        "two started after one finished: {done:?}"
    );
    assert!(
        done[1].1 <= app_started,
        "app started after two finished: {done:?} {app_started}"
    );
    assert_eq!(
        berth_proto::types::condition(&st.conditions, "Initialized").map(|c| c.status.clone()),
        Some("True".to_string())
    );

    // The sidecar runs beside the app; killed, it is restarted and the app is not.
    let proxy = st.init_container_statuses[1].clone();
    assert!(proxy.state.running.is_some() && proxy.ready, "{proxy:?}");
    let id = proxy
        .container_id
        .trim_start_matches("docker://")
        .to_string();
    let out = std::process::Command::new("docker")
        .args(["kill", &id])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = common::wait_for(T, "the sidecar restarted", || async {
        let p = client.get::<Pod>(NS, "ordered").await.ok()?;
        let st = p.status?;
        let s = &st.init_container_statuses[1];
        (s.restart_count == 1 && s.state.running.is_some()).then_some(st)
    })
    .await;
    assert_eq!(after.container_statuses[0].restart_count, 0);
    assert_eq!(after.init_container_statuses[0].restart_count, 0);
    assert_eq!(after.init_container_statuses[2].restart_count, 0);
}
