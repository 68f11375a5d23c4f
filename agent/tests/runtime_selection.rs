//! How the agent picks its container runtime (`select_runtime`), against the real Docker
//! engine: whether Docker was asked for (`--runtime docker`) or auto-detected (no flag), the
//! runtime sees only its own node's containers, so agents sharing one engine never adopt or
//! kill each other's workloads. Fails under CI=true when no engine answers; elsewhere it is
//! skipped, loudly (berth_testkit::skip).
#![allow(clippy::unwrap_used)]

mod common;

use berth_testkit::images::build_busybox;
use common::{docker_or_skip, RemoveContainer};

use berth_agent::agent::select_runtime;
use berth_agent::runtime::{ContainerSpec, Runtime};
use berth_agent::RuntimeKind;

#[tokio::test]
async fn docker_runtime_is_scoped_to_its_node_whether_chosen_or_auto_detected() {
    let test = "docker_runtime_is_scoped_to_its_node_whether_chosen_or_auto_detected";
    let Some(docker) = docker_or_skip(test).await else {
        return;
    };
    build_busybox();
    let other = format!("other-node-{}", uuid::Uuid::new_v4());
    let spec = ContainerSpec {
        node_name: other.clone(),
        pod_uid: uuid::Uuid::new_v4().to_string(),
        pod_namespace: "default".into(),
        pod_name: "neighbour".into(),
        container_name: "c".into(),
        image: "berth-busybox:1".into(),
        command: vec!["/bin/busybox".into()],
        args: vec!["sleep".into(), "60".into()],
        ..Default::default()
    };
    let owner = docker.for_node(&other);
    let id = owner
        .create(&spec)
        .await
        .expect("create the other node's container");
    let _cleanup = RemoveContainer(id.clone());
    assert!(
        owner.list().await.unwrap().iter().any(|c| c.id == id),
        "the owning node's runtime lists its container"
    );

    let dir = tempfile::tempdir().unwrap();
    for kind in [Some(RuntimeKind::Docker), None] {
        let rt = select_runtime(kind, "this-node", dir.path(), None)
            .await
            .unwrap();
        assert_eq!(
            rt.name(),
            "docker",
            "{kind:?}: Docker answers, so Docker is used"
        );
        let handlers: Vec<_> = rt.handlers().iter().map(|h| h.name).collect();
        assert_eq!(
            handlers,
            ["docker", "process"],
            "{kind:?}: Docker is the default, processes are there for runtimeClassName: process"
        );
        let seen = rt.list().await.unwrap();
        assert!(
            !seen.iter().any(|c| c.id == id),
            "{kind:?}: the runtime of node this-node lists another node's container {id}"
        );
    }
}
