//! The agent's node identity against a real in-process API server: it needs the join token
//! on first start, keeps its certificate (key 0600) for restarts without the token, refuses a
//! certificate of another node name, and a wrong token gets a clear error.
#![allow(clippy::unwrap_used)]

use berth_agent::{AgentArgs, RuntimeKind};
use berth_apiserver::testing::TestCluster;
use berth_tls::Secret;
use tokio_util::sync::CancellationToken;

fn args(
    cluster: &TestCluster,
    name: &str,
    dir: &std::path::Path,
    token: Option<&str>,
) -> AgentArgs {
    AgentArgs {
        server: vec![cluster.addr(0).to_string()],
        name: Some(name.into()),
        data_dir: Some(dir.to_path_buf()),
        runtime: Some(RuntimeKind::Process),
        capacity: Some("cpu=1,memory=1Gi".into()),
        host_port_range: "47900-47949".into(),
        listen: Some("127.0.0.1:0".into()),
        no_proxy: true,
        token: token.map(Secret::new),
        ..AgentArgs::default()
    }
}

async fn start_err(a: AgentArgs) -> String {
    match berth_agent::start(a, CancellationToken::new()).await {
        Ok(h) => {
            h.stop().await;
            panic!("the agent started")
        }
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_joins_with_the_token_once_and_restarts_on_its_own_certificate() {
    use std::os::unix::fs::PermissionsExt;
    let cluster = TestCluster::start(1).await.unwrap();
    let dir = tempfile::tempdir().unwrap();

    let err = start_err(args(&cluster, "cred-a", dir.path(), None)).await;
    assert!(
        err.contains("no node certificate") && err.contains("--token"),
        "{err}"
    );

    let err = start_err(args(&cluster, "cred-a", dir.path(), Some("K10nope"))).await;
    assert!(err.contains("join token is not valid"), "{err}");
    let (fp, _) = cluster.token().split_once("::").unwrap();
    let err = start_err(args(
        &cluster,
        "cred-a",
        dir.path(),
        Some(&format!("{fp}::wrong")),
    ))
    .await;
    assert!(err.contains("join token refused"), "{err}");
    assert!(!err.contains("::wrong"), "the secret is not echoed: {err}");

    let agent = berth_agent::start(
        args(&cluster, "cred-a", dir.path(), Some(cluster.token())),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    agent.stop().await;
    let key = dir.path().join("pki/node.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let cert = std::fs::read_to_string(dir.path().join("pki/node.crt")).unwrap();

    // Restart: no token needed, the same certificate is used.
    let agent = berth_agent::start(
        args(&cluster, "cred-a", dir.path(), None),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    agent.stop().await;
    assert_eq!(
        std::fs::read_to_string(dir.path().join("pki/node.crt")).unwrap(),
        cert
    );

    // Another name on the same data dir: the certificate is not for it.
    let err = start_err(args(&cluster, "cred-b", dir.path(), None)).await;
    assert!(
        err.contains("system:node:cred-a") && err.contains("--name cred-a"),
        "{err}"
    );
    cluster.shutdown().await.unwrap();
}
