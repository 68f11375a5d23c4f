//! Component test: a real server with `--metrics-listen 127.0.0.1:0`, scraped over HTTP after
//! some writes.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use berth_apiserver::testing::wait_until;
use berth_apiserver::ServerArgs;
use berth_metrics::text::{find, parse, Sample};
use berth_proto::pb;
use serde_json::json;

const T: Duration = Duration::from_secs(20);

fn pod(name: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name },
        "spec": { "containers": [{ "name": "c", "image": "nginx" }] }
    }))
    .unwrap()
}

async fn scrape(addr: &str) -> Vec<Sample> {
    let text = berth_metrics::http::scrape(addr).await.unwrap();
    parse(&text).unwrap_or_else(|e| panic!("malformed exposition: {e}\n{text}"))
}

#[tokio::test]
async fn metrics_endpoint_reports_raft_store_and_grpc_latency_after_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = ServerArgs::new(dir.path());
    args.listen = "127.0.0.1:0".into();
    args.init = true;
    args.metrics_listen = Some("127.0.0.1:0".into());
    let server = berth_apiserver::start(args).await.unwrap();
    let metrics_addr = server.metrics_addr().unwrap().to_string();
    let admin = berth_tls::AdminConfig::read(&server.admin_config_path()).unwrap();
    let tls = berth_tls::ClientTls::new(admin.certificate_authority.clone(), admin.credential());
    let mut client = berth_apiserver::testing::client(server.addr(), &tls)
        .await
        .unwrap();

    for name in ["a", "b", "c"] {
        client
            .create(pb::CreateRequest {
                object: pod(name),
                dry_run: false,
            })
            .await
            .unwrap();
    }
    let err = client
        .get(pb::GetRequest {
            key: Some(pb::ObjectKey {
                kind: "Pod".into(),
                namespace: "default".into(),
                name: "missing".into(),
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    let samples = wait_until(T, "applied index and object counts in /metrics", || {
        let addr = metrics_addr.clone();
        async move {
            let s = scrape(&addr).await;
            let ok = find(&s, "berth_raft_applied_index", &[]).unwrap_or(0.0) > 0.0
                && find(&s, "berth_store_objects", &[("kind", "Pod")]) == Some(3.0);
            ok.then_some(s)
        }
    })
    .await
    .unwrap();

    assert_eq!(find(&samples, "berth_raft_is_leader", &[]), Some(1.0));
    assert_eq!(
        find(&samples, "berth_raft_leader_id", &[]),
        Some(server.id() as f64)
    );
    assert!(find(&samples, "berth_raft_term", &[]).unwrap() >= 1.0);
    let commit = find(&samples, "berth_raft_commit_index", &[]).unwrap();
    let applied = find(&samples, "berth_raft_applied_index", &[]).unwrap();
    assert!(commit >= applied);
    assert_eq!(
        find(&samples, "berth_raft_apply_lag", &[]),
        Some(commit - applied)
    );
    assert!(find(&samples, "berth_raft_proposals_total", &[]).unwrap() >= 3.0);
    assert!(find(&samples, "berth_store_revision", &[]).unwrap() >= 3.0);
    assert_eq!(
        find(
            &samples,
            "berth_grpc_requests_total",
            &[("method", "Create"), ("code", "Ok")]
        ),
        Some(3.0)
    );
    assert_eq!(
        find(
            &samples,
            "berth_grpc_requests_total",
            &[("method", "Get"), ("code", "NotFound")]
        ),
        Some(1.0)
    );
    assert_eq!(
        find(
            &samples,
            "berth_grpc_request_duration_seconds_bucket",
            &[("method", "Create"), ("code", "Ok"), ("le", "+Inf")]
        ),
        Some(3.0)
    );
    assert_eq!(
        find(
            &samples,
            "berth_grpc_request_duration_seconds_count",
            &[("method", "Create"), ("code", "Ok")]
        ),
        Some(3.0)
    );
    assert!(
        find(
            &samples,
            "berth_grpc_request_duration_seconds_sum",
            &[("method", "Create")]
        )
        .unwrap()
            > 0.0
    );

    // An open watch stream shows up as an active watcher.
    let mut stream = client
        .watch(pb::WatchRequest {
            kind: "Pod".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let _first = stream.message().await.unwrap();
    wait_until(T, "berth_watchers_active = 1", || {
        let addr = metrics_addr.clone();
        async move {
            (find(&scrape(&addr).await, "berth_watchers_active", &[]) == Some(1.0)).then_some(())
        }
    })
    .await
    .unwrap();
    drop(stream);
    server.shutdown().await.unwrap();
}
