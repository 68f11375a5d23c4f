//! Component tests of the Docker runtime against the real engine, with `berth-busybox:1`
//! (built FROM scratch by images/build-busybox.sh). Skipped outside CI when no engine answers (a failure under CI=true: berth_testkit::skip).

mod common;

use std::time::Duration;

use berth_testkit::images::build_busybox;
use common::{docker_or_skip, RemoveContainer};

use berth_agent::probe::{check, Check, ProbeResult, ProbeTarget};
use berth_agent::runtime::{
    ContainerSpec, LogOptions, PortBinding, RunState, Runtime, RuntimeError,
};
use futures::StreamExt;

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[tokio::test]
async fn busybox_httpd_container_serves_probes_logs_and_stops() {
    let Some(rt) = docker_or_skip("busybox_httpd_container_serves_probes_logs_and_stops").await
    else {
        return;
    };
    build_busybox();
    let host_port = free_port();
    let spec = ContainerSpec {
        pod_uid: uid(),
        pod_namespace: "default".into(),
        pod_name: "web".into(),
        container_name: "httpd".into(),
        attempt: 0,
        image: "berth-busybox:1".into(),
        command: vec!["/bin/busybox".into()],
        args: vec![
            "sh".into(),
            "-c".into(),
            "/bin/busybox mkdir -p /www && echo hello > /www/index.html && echo serving on $PORT_HTTP && exec /bin/busybox httpd -f -p 8080 -h /www".into(),
        ],
        ports: vec![PortBinding {
            name: "http".into(),
            container_port: 8080,
            host_port,
            protocol: "TCP".into(),
        }],
        memory_limit_bytes: Some(64 * 1024 * 1024),
        cpu_limit_millis: Some(500),
        ..Default::default()
    };
    let id = rt.create(&spec).await.expect("create");
    let _cleanup = RemoveContainer(id.clone());
    rt.start(&id).await.expect("start");

    let info = rt.inspect(&id).await.expect("inspect");
    assert_eq!(info.pod_uid, spec.pod_uid);
    assert_eq!(info.container_name, "httpd");
    assert_eq!(info.ports, spec.ports, "host ports are kept in labels");
    assert!(rt.list().await.expect("list").iter().any(|c| c.id == id));

    let target = ProbeTarget {
        host: "127.0.0.1".into(),
        port: host_port,
    };
    let http = Check::Http {
        target,
        path: "/index.html".into(),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match check(&http, Duration::from_secs(2), &rt, &id).await {
            ProbeResult::Success => break,
            ProbeResult::Failure(why) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "httpd never answered: {why}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let missing = Check::Http {
        target: ProbeTarget {
            host: "127.0.0.1".into(),
            port: host_port,
        },
        path: "/nope".into(),
    };
    assert!(matches!(
        check(&missing, Duration::from_secs(2), &rt, &id).await,
        ProbeResult::Failure(_)
    ));
    let exec_ok = Check::Exec {
        command: vec![
            "/bin/busybox".into(),
            "test".into(),
            "-f".into(),
            "/www/index.html".into(),
        ],
    };
    assert_eq!(
        check(&exec_ok, Duration::from_secs(10), &rt, &id).await,
        ProbeResult::Success
    );
    let exec_bad = Check::Exec {
        command: vec!["/bin/busybox".into(), "false".into()],
    };
    assert!(matches!(
        check(&exec_bad, Duration::from_secs(10), &rt, &id).await,
        ProbeResult::Failure(_)
    ));

    let mut logs = rt
        .logs(
            &id,
            LogOptions {
                tail: None,
                follow: false,
            },
        )
        .await
        .expect("logs");
    let mut text = Vec::new();
    while let Some(chunk) = logs.next().await {
        text.extend_from_slice(&chunk.expect("chunk"));
    }
    assert!(
        String::from_utf8_lossy(&text).contains("serving on 8080"),
        "{}",
        String::from_utf8_lossy(&text)
    );

    rt.stop(&id, Duration::from_secs(2), None)
        .await
        .expect("stop");
    match rt.inspect(&id).await.expect("inspect").state {
        RunState::Exited(e) => assert!(e.finished_at.is_some(), "{e:?}"),
        other => panic!("expected exited, got {other:?}"),
    }
    rt.remove(&id).await.expect("remove");
    assert!(matches!(
        rt.inspect(&id).await,
        Err(RuntimeError::NotFound { .. })
    ));
}

#[tokio::test]
async fn create_of_an_absent_image_fails_fast_and_pulls_say_why_they_failed() {
    let test = "create_of_an_absent_image_fails_fast_and_pulls_say_why_they_failed";
    let Some(rt) = docker_or_skip(test).await else {
        return;
    };
    let spec = ContainerSpec {
        pod_uid: uid(),
        pod_namespace: "default".into(),
        pod_name: "ghost".into(),
        container_name: "c".into(),
        image: "berth-test-no-such-image:1".into(),
        ..Default::default()
    };
    let t0 = std::time::Instant::now();
    assert!(!rt.image_present(&spec.image).await.expect("inspect"));
    let err = rt.create(&spec).await.expect_err("must fail");
    assert!(matches!(err, RuntimeError::ImageNotPresent { .. }), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(10));
    // Nothing listens on port 1: the engine cannot reach that registry.
    let err = rt
        .pull("127.0.0.1:1/berth-test/ghost:1")
        .await
        .expect_err("must fail");
    match &err {
        RuntimeError::Pull { kind, .. } => {
            assert_eq!(
                *kind,
                berth_agent::runtime::PullFailure::Unreachable,
                "{err}"
            )
        }
        other => panic!("want a pull error, got {other}"),
    }
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
}

#[tokio::test]
async fn crashed_container_reports_exit_code() {
    let Some(rt) = docker_or_skip("crashed_container_reports_exit_code").await else {
        return;
    };
    build_busybox();
    let spec = ContainerSpec {
        pod_uid: uid(),
        pod_namespace: "default".into(),
        pod_name: "crash".into(),
        container_name: "c".into(),
        image: "berth-busybox:1".into(),
        args: vec!["sh".into(), "-c".into(), "exit 7".into()],
        ..Default::default()
    };
    let id = rt.create(&spec).await.expect("create");
    let _cleanup = RemoveContainer(id.clone());
    rt.start(&id).await.expect("start");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let RunState::Exited(e) = rt.inspect(&id).await.expect("inspect").state {
            assert_eq!(e.exit_code, 7);
            assert_eq!(e.reason, "Error");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never exited");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn runtimes_scoped_to_different_nodes_do_not_see_each_others_containers() {
    let Some(rt) =
        docker_or_skip("runtimes_scoped_to_different_nodes_do_not_see_each_others_containers")
            .await
    else {
        return;
    };
    build_busybox();
    let node = format!("scope-{}", std::process::id());
    let spec = ContainerSpec {
        node_name: node.clone(),
        pod_uid: uid(),
        pod_namespace: "default".into(),
        pod_name: "scoped".into(),
        container_name: "c".into(),
        image: "berth-busybox:1".into(),
        args: vec!["sleep".into(), "30".into()],
        ..Default::default()
    };
    let id = rt.create(&spec).await.expect("create");
    let _cleanup = RemoveContainer(id.clone());
    let mine = rt.clone().for_node(&node).list().await.expect("list");
    assert!(mine.iter().any(|c| c.id == id));
    let other = rt
        .clone()
        .for_node("someone-else")
        .list()
        .await
        .expect("list");
    assert!(!other.iter().any(|c| c.id == id));
}
