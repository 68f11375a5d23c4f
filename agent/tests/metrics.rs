//! Component test of the agent's `/metrics` (on its agent API, `--listen`): a whole agent on
//! the process runtime against a real in-process API server, with a running pod whose
//! readiness probe fails, and traffic through its Service proxy.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use berth_apiserver::testing::wait_until;
use berth_metrics::text::{find, parse};
use berth_proto::types::{
    Container, IntOrString, ObjectMeta, Pod, PodSpec, Probe, TcpSocketAction,
};

mod common;

const T: Duration = Duration::from_secs(40);

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: name.into(),
        namespace: "default".into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_metrics_report_pods_probe_failures_and_proxy_traffic() {
    let common::ProxyAgent {
        cluster,
        client,
        agent,
        dir: _dir,
    } = common::start_proxy_agent("node-m", "46000-46099".into()).await;
    let endpoint = agent.agent_endpoint.clone();

    // A running pod whose readiness probe can never pass (nothing listens on port 1).
    client
        .create(&Pod {
            metadata: meta("idle"),
            spec: PodSpec {
                node_name: "node-m".into(),
                termination_grace_period_seconds: Some(1),
                containers: vec![Container {
                    name: "main".into(),
                    image: "none".into(),
                    command: vec!["sh".into(), "-c".into(), "sleep 60".into()],
                    readiness_probe: Some(Probe {
                        tcp_socket: Some(TcpSocketAction {
                            port: IntOrString::Int(1),
                            host: None,
                        }),
                        period_seconds: Some(1),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            },
            ..Default::default()
        })
        .await
        .unwrap();

    // A Service whose one endpoint is a local backend that answers a fixed line.
    let (backend_port, backend_task) = common::fixed_line_backend().await;
    let node_port = (30000..32767u16)
        .rev()
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .unwrap();
    common::create_node_port_service(&client, meta("web"), "web", node_port, backend_port).await;
    wait_until(T, "a reply through the node port", || async {
        let buf = common::read_all_from(node_port).await?;
        (buf == "from-backend\n").then_some(())
    })
    .await
    .unwrap();

    let web = [("service", "web"), ("namespace", "default")];
    let last = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let s = wait_until(T, "pod, probe and proxy metrics", || {
        let endpoint = endpoint.clone();
        let last = last.clone();
        async move {
            let text = berth_metrics::http::scrape(&endpoint).await.unwrap();
            let s = parse(&text).unwrap();
            *last.lock().unwrap() = text;
            let ok = find(&s, "berth_agent_pods", &[("phase", "Running")]) == Some(1.0)
                && find(
                    &s,
                    "berth_agent_probe_failures_total",
                    &[("probe", "readiness")],
                )
                .unwrap_or(0.0)
                    >= 1.0
                && find(&s, "berth_proxy_bytes_out_total", &web).unwrap_or(0.0) >= 13.0;
            ok.then_some(s)
        }
    })
    .await
    .unwrap_or_else(|e| {
        panic!("{e}; last scrape:\n{}", last.lock().unwrap());
    });
    assert!(find(&s, "berth_proxy_connections_total", &web).unwrap() >= 1.0);
    assert_eq!(find(&s, "berth_proxy_backends", &web), Some(1.0));
    assert_eq!(
        find(&s, "berth_proxy_connections_active", &web),
        Some(0.0),
        "every client connection of the test is closed"
    );
    assert_eq!(find(&s, "berth_agent_pods_ready", &[]), Some(0.0));
    assert_eq!(
        find(
            &s,
            "berth_agent_container_restarts_total",
            &[("pod", "idle"), ("container", "main")]
        ),
        Some(0.0)
    );

    agent.stop_workloads().await;
    backend_task.abort();
    cluster.shutdown().await.unwrap();
}
