//! PersistentVolumeClaims end to end on the Docker runtime, against a real in-process API
//! server with the controllers and the scheduler: a Deployment's busybox pod (image built by
//! images/build-busybox.sh) writes to its `local-path` claim; the binder provisions the volume
//! on the pod's node (nodeAffinity, under the agent's DATA/volumes/pv); the pod after a rollout,
//! the replacement of a deleted pod and a pod started after an agent restart each read what
//! the earlier ones wrote; a pod naming a missing claim stays Pending with the scheduler's
//! message; deleting the claim (reclaim policy Delete) deletes the volume and its directory.
//! The agent reads claims and volumes with its node credentials (the node authorizer).
//! Skipped outside CI when no Docker engine answers (a failure under CI=true).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use berth_agent::runtime::docker::DockerRuntime;
use berth_agent::{AgentArgs, AgentHandle, RuntimeKind};
use berth_apiserver::testing::TestCluster;
use berth_client::{Client, ClientConfig, ClientError};
use berth_proto::storage::{PersistentVolume, PersistentVolumeClaim};
use berth_proto::types::{condition, Pod};
use berth_proto::Kind;
use tokio_util::sync::CancellationToken;

mod common;

const T: Duration = Duration::from_secs(60);
const NODE: &str = "pv-node";

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
    let args = AgentArgs {
        server: vec![cluster.addr(0).to_string()],
        token: Some(berth_tls::Secret::new(cluster.token())),
        name: Some(NODE.into()),
        address: "127.0.0.1".into(),
        data_dir: Some(dir.to_path_buf()),
        runtime: Some(RuntimeKind::Docker),
        capacity: Some("cpu=2,memory=2Gi".into()),
        host_port_range: "41600-41699".into(),
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

async fn apply(client: &Client, yaml: &str) {
    for obj in berth_proto::manifest::parse_manifest("test.yaml", yaml).unwrap() {
        match client.create_dyn(&obj, false).await {
            Ok(_) => {}
            Err(ClientError::AlreadyExists(_)) => {
                let mut obj = obj.clone();
                let cur = client
                    .get_dyn(obj.kind, obj.namespace(), obj.name())
                    .await
                    .unwrap();
                obj.value["metadata"]["resourceVersion"] =
                    cur.meta().resource_version.to_string().into();
                client.update_dyn(&obj, false).await.unwrap();
            }
            Err(e) => panic!("{e}"),
        }
    }
}

fn deployment(ns: &str, version: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: store, namespace: {ns}}}
spec:
  replicas: 1
  strategy: {{type: Recreate}}
  selector: {{matchLabels: {{app: store}}}}
  template:
    metadata: {{labels: {{app: store}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: berth-busybox:1
        command: ["/bin/busybox", "sh", "-c"]
        args:
        - B=/bin/busybox; $B cat /data/log > /data/seen-by-$VERSION-$HOSTNAME 2>/dev/null; echo $VERSION-$HOSTNAME >> /data/log; exec $B sleep 3600
        env: [{{name: VERSION, value: "{version}"}}]
        volumeMounts: [{{name: data, mountPath: /data}}]
      volumes:
      - name: data
        persistentVolumeClaim: {{claimName: data}}
"#
    )
}

async fn running_store_pod(client: &Client, ns: &str, not: &[String]) -> String {
    common::wait_for(T, "a running store pod", || async {
        let (pods, _) = client.list::<Pod>(Some(ns), "app=store").await.ok()?;
        pods.into_iter()
            .find(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && !not.contains(&p.metadata.name)
                    && p.status.as_ref().is_some_and(|s| {
                        s.container_statuses
                            .iter()
                            .any(|c| c.state.running.is_some())
                    })
            })
            .map(|p| p.metadata.name)
    })
    .await
}

/// The lines of the volume's `log` once it has `n` of them.
async fn log_lines(dir: &std::path::Path, n: usize) -> Vec<String> {
    let file = dir.join("log");
    common::wait_for(T, &format!("{n} lines in {}", file.display()), || async {
        let text = std::fs::read_to_string(&file).ok()?;
        let lines: Vec<String> = text.lines().map(String::from).collect();
        (lines.len() >= n).then_some(lines)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claims_data_outlives_pods_a_rollout_and_an_agent_restart_and_goes_with_the_claim() {
    let test = "a_claims_data_outlives_pods_a_rollout_and_an_agent_restart_and_goes_with_the_claim";
    if !DockerRuntime::available(Duration::from_secs(5)).await {
        berth_testkit::skip::skip_or_fail(
            test,
            "Docker engine not reachable (no answer within 5s)",
        );
        return;
    }
    berth_testkit::images::build_busybox();
    let ns = format!("pv{}", std::process::id());
    let _cleanup = Cleanup(ns.clone());
    let cluster = TestCluster::start(1).await.unwrap();
    let server = cluster.addr(0).to_string();
    let client = Client::new(
        &[server.as_str()],
        ClientConfig::with_tls(cluster.admin_tls()),
    )
    .unwrap();
    // Objects go into a namespace of their own, which must exist first.
    let mut n = berth_proto::types::Namespace::default();
    n.metadata.name = ns.clone();
    client.create(&n).await.expect("namespace created");
    let loops = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(berth_controllers::run_controllers(
        client.clone(),
        berth_controllers::Config {
            gc_delay: Duration::from_millis(50),
            ..Default::default()
        },
        loops.clone(),
    ));
    tasks.spawn(berth_scheduler::run(
        client.clone(),
        berth_scheduler::Config::default(),
        loops.clone(),
    ));
    let dir = tempfile::tempdir().unwrap();
    let mut agent = start_agent(&cluster, dir.path()).await;

    // A pod naming a claim that does not exist waits with the scheduler's message.
    apply(
        &client,
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: lost, namespace: {ns}}}\nspec:\n  containers: [{{name: c, image: berth-busybox:1}}]\n  volumes: [{{name: d, persistentVolumeClaim: {{claimName: nope}}}}]\n"
        ),
    )
    .await;
    let msg = common::wait_for(T, "the lost pod's PodScheduled=False", || async {
        let p = client.get::<Pod>(&ns, "lost").await.ok()?;
        let c = condition(&p.status?.conditions, "PodScheduled")?.clone();
        // The scheduler may try once before it has seen the node ("0/0 nodes"); it retries.
        (!c.is_true() && c.message.starts_with("0/1 ")).then_some(c.message)
    })
    .await;
    assert_eq!(
        msg,
        "0/1 nodes are available: persistentvolumeclaim \"nope\" not found."
    );

    apply(
        &client,
        &format!(
            "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: data, namespace: {ns}}}\nspec:\n  accessModes: [ReadWriteOnce]\n  resources: {{requests: {{storage: 16Mi}}}}\n"
        ),
    )
    .await;
    apply(&client, &deployment(&ns, "v1")).await;
    let first = running_store_pod(&client, &ns, &[]).await;

    // Bound to a volume provisioned on the pod's node, under the agent's data dir.
    let claim = common::wait_for(T, "the claim Bound", || async {
        let c = client
            .get::<PersistentVolumeClaim>(&ns, "data")
            .await
            .ok()?;
        (c.phase() == "Bound").then_some(c)
    })
    .await;
    assert_eq!(claim.storage_class(), "local-path");
    let pv_name = claim.spec.volume_name.clone();
    assert_eq!(pv_name, format!("pvc-{}", claim.metadata.uid));
    let pv: PersistentVolume = client.get("", &pv_name).await.unwrap();
    assert_eq!(pv.pinned_node(), Some(NODE));
    assert_eq!(pv.reclaim_policy(), "Delete");
    let vol_dir =
        std::path::absolute(dir.path().join("volumes").join("pv").join(&pv_name)).unwrap();
    assert_eq!(
        pv.spec.host_path.as_ref().map(|h| h.path.clone()),
        Some(vol_dir.display().to_string())
    );
    assert_eq!(log_lines(&vol_dir, 1).await, vec![format!("v1-{first}")]);

    // A rollout (Recreate): the new revision's pod reads what the old one wrote.
    apply(&client, &deployment(&ns, "v2")).await;
    let second = running_store_pod(&client, &ns, std::slice::from_ref(&first)).await;
    assert_eq!(
        log_lines(&vol_dir, 2).await,
        vec![format!("v1-{first}"), format!("v2-{second}")]
    );
    assert_eq!(
        std::fs::read_to_string(vol_dir.join(format!("seen-by-v2-{second}"))).unwrap(),
        format!("v1-{first}\n")
    );

    // The agent restarts (workloads keep running); then the pod is deleted: its replacement,
    // started by the restarted agent, reads both earlier lines.
    agent.stop().await;
    agent = start_agent(&cluster, dir.path()).await;
    client.delete(Kind::Pod, &ns, &second, None).await.unwrap();
    let third = running_store_pod(&client, &ns, &[first.clone(), second.clone()]).await;
    assert_eq!(
        log_lines(&vol_dir, 3).await,
        vec![
            format!("v1-{first}"),
            format!("v2-{second}"),
            format!("v2-{third}")
        ]
    );
    assert_eq!(
        std::fs::read_to_string(vol_dir.join(format!("seen-by-v2-{third}"))).unwrap(),
        format!("v1-{first}\nv2-{second}\n")
    );

    // Deleting the workload leaves the data; deleting the claim deletes volume and directory.
    client
        .delete(Kind::Deployment, &ns, "store", None)
        .await
        .unwrap();
    common::wait_for(T, "the store pods gone", || async {
        let (pods, _) = client.list::<Pod>(Some(&ns), "app=store").await.ok()?;
        pods.is_empty().then_some(())
    })
    .await;
    assert!(
        vol_dir.join("log").exists(),
        "data kept while the claim exists"
    );
    client
        .delete(Kind::PersistentVolumeClaim, &ns, "data", None)
        .await
        .unwrap();
    common::wait_for(T, "the volume deleted", || async {
        match client.get::<PersistentVolume>("", &pv_name).await {
            Err(ClientError::NotFound(_)) => Some(()),
            _ => None,
        }
    })
    .await;
    common::wait_for(T, "the volume's directory removed", || async {
        (!vol_dir.exists()).then_some(())
    })
    .await;

    agent.stop_workloads().await;
    loops.cancel();
    while tasks.join_next().await.is_some() {}
    cluster.shutdown().await.unwrap();
}
