//! Volumes on the process runtime: a process pod with an emptyDir, a read-only configMap
//! volume and a configMap key mounted by `subPath` runs in its own mount namespace, reads and
//! writes them at their mountPaths, while the node's own files at those paths stay as they
//! were and the node's mount table never shows the pod's mounts. A mountPath that does not
//! exist on the node gives CreateContainerError saying why. Needs root (CAP_SYS_ADMIN) for
//! the mount namespace: skipped outside CI without it, a failure under CI=true.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use berth_agent::{AgentArgs, RuntimeKind};
use berth_apiserver::testing::TestCluster;
use berth_client::{Client, ClientConfig};
use berth_proto::types::{
    ConfigMap, ConfigMapVolumeSource, Container, EmptyDirVolumeSource, ObjectMeta, Pod, PodSpec,
    Volume, VolumeMount,
};
use tokio_util::sync::CancellationToken;

mod common;

const T: Duration = Duration::from_secs(40);
const NODE: &str = "proc-vol-node";

fn am_root() -> Result<(), String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?");
    if euid == "0" {
        Ok(())
    } else {
        Err(format!(
            "mount namespaces need root (CAP_SYS_ADMIN); this test runs as uid {euid}"
        ))
    }
}

fn mount(name: &str, path: &Path, read_only: bool, sub_path: Option<&str>) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.display().to_string(),
        read_only: read_only.then_some(true),
        sub_path: sub_path.map(str::to_string),
    }
}

fn pod(name: &str, script: String, mounts: Vec<VolumeMount>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: name.into(),
            namespace: "default".into(),
            ..Default::default()
        },
        spec: PodSpec {
            node_name: NODE.into(),
            termination_grace_period_seconds: Some(1),
            volumes: vec![
                Volume {
                    name: "scratch".into(),
                    empty_dir: Some(EmptyDirVolumeSource::default()),
                    ..Default::default()
                },
                Volume {
                    name: "cfg".into(),
                    config_map: Some(ConfigMapVolumeSource {
                        name: "app-config".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ],
            containers: vec![Container {
                name: "main".into(),
                image: "none".into(),
                command: vec!["sh".into(), "-c".into(), script],
                volume_mounts: mounts,
                ..Default::default()
            }],
            ..Default::default()
        },
        ..Default::default()
    }
}

fn mount_table() -> String {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_pod_volumes_are_mounted_in_its_own_namespace_and_leave_the_host_unchanged() {
    let test = "process_pod_volumes_are_mounted_in_its_own_namespace_and_leave_the_host_unchanged";
    if !berth_testkit::skip::require(test, am_root()) {
        return;
    }
    let cluster = TestCluster::start(1).await.unwrap();
    let client = Client::new(
        &[cluster.addr(0).to_string()],
        ClientConfig::with_tls(cluster.admin_tls()),
    )
    .unwrap();
    let agent_dir = tempfile::tempdir().unwrap();
    let agent = berth_agent::start(
        AgentArgs {
            server: vec![cluster.addr(0).to_string()],
            token: Some(berth_tls::Secret::new(cluster.token())),
            name: Some(NODE.into()),
            address: "127.0.0.1".into(),
            data_dir: Some(agent_dir.path().to_path_buf()),
            runtime: Some(RuntimeKind::Process),
            capacity: Some("cpu=2,memory=2Gi".into()),
            host_port_range: "41400-41499".into(),
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

    // The node's own files at the mountPaths.
    let host = tempfile::tempdir().unwrap();
    let data = host.path().join("data");
    let conf = host.path().join("conf");
    let single = host.path().join("greeting.txt");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::write(data.join("host-only"), "the node's file").unwrap();
    std::fs::write(&single, "the node's greeting").unwrap();

    let mut cm = ConfigMap::default();
    cm.metadata.name = "app-config".into();
    cm.metadata.namespace = "default".into();
    cm.data = [(
        "greeting".to_string(),
        "hello from the configmap".to_string(),
    )]
    .into();
    client.create(&cm).await.unwrap();

    let script = format!(
        "ls {data} > {data}/listing; \
         cat {conf}/greeting > {data}/copied; echo >> {data}/copied; cat {single} >> {data}/copied; \
         if touch {conf}/new 2>/dev/null; then echo rw; else echo ro; fi > {data}/conf-writable; \
         echo done > {data}/done; exec sleep 300",
        data = data.display(),
        conf = conf.display(),
        single = single.display()
    );
    let p = pod(
        "vols",
        script,
        vec![
            mount("scratch", &data, false, None),
            mount("cfg", &conf, true, None),
            mount("cfg", &single, false, Some("greeting")),
        ],
    );
    client.create(&p).await.unwrap();
    let uid = client
        .get::<Pod>("default", "vols")
        .await
        .unwrap()
        .metadata
        .uid;
    let scratch = agent_dir.path().join("volumes").join(&uid).join("scratch");
    common::wait_for(T, "the pod wrote its emptyDir", || async {
        std::fs::read_to_string(scratch.join("done")).ok()
    })
    .await;
    let read = |f: &str| std::fs::read_to_string(scratch.join(f)).unwrap();
    assert_eq!(
        read("copied"),
        "hello from the configmap\nhello from the configmap",
        "the configMap volume and its subPath file are at their mountPaths"
    );
    assert_eq!(read("conf-writable").trim(), "ro", "readOnly is enforced");
    assert!(
        !read("listing").contains("host-only"),
        "the pod sees its emptyDir, not the node's directory: {}",
        read("listing")
    );
    // The node: its files unchanged, nothing the pod wrote, no pod mount in its table.
    let mut host_files: Vec<String> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    host_files.sort();
    assert_eq!(host_files, ["host-only"]);
    assert_eq!(
        std::fs::read_to_string(data.join("host-only")).unwrap(),
        "the node's file"
    );
    assert_eq!(
        std::fs::read_to_string(&single).unwrap(),
        "the node's greeting"
    );
    assert_eq!(std::fs::read_dir(&conf).unwrap().count(), 0);
    let table = mount_table();
    assert!(
        !table.contains(&host.path().display().to_string()),
        "the pod's mounts stay in its namespace"
    );
    let st = client
        .get::<Pod>("default", "vols")
        .await
        .unwrap()
        .status
        .unwrap();
    assert!(st.container_statuses[0].state.running.is_some(), "{st:?}");

    // A mountPath the node does not have: refused with the reason, nothing created.
    let missing = host.path().join("no-such-dir");
    client
        .create(&pod(
            "nowhere",
            "exec sleep 300".into(),
            vec![mount("scratch", &missing, false, None)],
        ))
        .await
        .unwrap();
    let message = common::wait_for(
        T,
        "CreateContainerError for a missing mountPath",
        || async {
            let s = client.get::<Pod>("default", "nowhere").await.ok()?.status?;
            let w = s.container_statuses.first()?.state.waiting.clone()?;
            (w.reason == "CreateContainerError").then_some(w.message)
        },
    )
    .await;
    assert!(
        message.contains(&format!("mountPath {} does not exist", missing.display())),
        "{message}"
    );
    assert!(!missing.exists());

    client
        .delete(berth_proto::Kind::Pod, "default", "vols", None)
        .await
        .unwrap();
    common::wait_for(T, "the pod's volumes removed", || async {
        (!scratch.exists()).then_some(())
    })
    .await;
    agent.stop().await;
}
