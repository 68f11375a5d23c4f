//! Helpers shared by the agent's component tests (each test file has `mod common;`): polling a
//! condition with a deadline, an agent on the process runtime with its proxy on against a
//! 1-member API server, and a node-port Service whose one endpoint is a local backend that
//! answers a fixed line, so a test can send traffic through the agent's proxy.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use berth_agent::{AgentArgs, AgentHandle, RuntimeKind};
use berth_apiserver::testing::TestCluster;
use berth_client::{Client, ClientConfig};
use berth_proto::types::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectMeta, Service, ServicePort,
    ServiceSpec,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// The line the backend of [`fixed_line_backend`] writes to every connection.
pub const BACKEND_LINE: &str = "from-backend\n";

/// Polls `f` every 100 ms until it returns `Some`, and panics naming `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A 1-member in-process API server, a client to it, and an agent started against it.
pub struct ProxyAgent {
    pub cluster: TestCluster,
    pub client: Client,
    pub agent: AgentHandle,
    /// The agent's data dir (removed when dropped).
    pub dir: tempfile::TempDir,
}

/// Starts a [`ProxyAgent`]: the agent `name` on the process runtime with cpu=1, memory=1Gi,
/// host ports from `host_port_range`, its agent API on 127.0.0.1:0 and its Service proxy on.
pub async fn start_proxy_agent(name: &str, host_port_range: String) -> ProxyAgent {
    let cluster = TestCluster::start(1).await.unwrap();
    let server = cluster.addr(0).to_string();
    let client = Client::new(
        &[server.as_str()],
        ClientConfig::with_tls(cluster.admin_tls()),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let args = AgentArgs {
        server: vec![server.clone()],
        token: Some(berth_tls::Secret::new(cluster.token())),
        name: Some(name.into()),
        data_dir: Some(dir.path().to_path_buf()),
        runtime: Some(RuntimeKind::Process),
        capacity: Some("cpu=1,memory=1Gi".into()),
        host_port_range,
        listen: Some("127.0.0.1:0".into()),
        no_proxy: false,
        ..AgentArgs::default()
    };
    let agent = berth_agent::start(args, CancellationToken::new())
        .await
        .unwrap();
    ProxyAgent {
        cluster,
        client,
        agent,
        dir,
    }
}

/// A TCP backend on 127.0.0.1:0 that writes [`BACKEND_LINE`] to each connection and closes it.
/// Returns its port and the accept task.
pub async fn fixed_line_backend() -> (u16, tokio::task::JoinHandle<()>) {
    let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = backend.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = backend.accept().await {
            let _ = s.write_all(BACKEND_LINE.as_bytes()).await;
        }
    });
    (port, task)
}

/// Creates a Service named by `meta` (selector `app=<app>`, port 80, NodePort `node_port`) and
/// its Endpoints with the one ready address 127.0.0.1:`backend_port`.
pub async fn create_node_port_service(
    client: &Client,
    meta: ObjectMeta,
    app: &str,
    node_port: u16,
    backend_port: u16,
) {
    client
        .create(&Service {
            metadata: meta.clone(),
            spec: ServiceSpec {
                selector: [("app".to_string(), app.to_string())].into(),
                ports: vec![ServicePort {
                    name: "".into(),
                    port: 80,
                    target_port: None,
                    node_port: Some(node_port as i32),
                    protocol: None,
                }],
                type_: None,
                ..Default::default()
            },
            ..Default::default()
        })
        .await
        .unwrap();
    client
        .create(&Endpoints {
            metadata: meta,
            subsets: vec![EndpointSubset {
                addresses: vec![EndpointAddress {
                    ip: "127.0.0.1".into(),
                    node_name: String::new(),
                    target_ref: None,
                }],
                not_ready_addresses: vec![],
                ports: vec![EndpointPort {
                    name: "".into(),
                    port: backend_port as i32,
                    protocol: None,
                }],
            }],
            ..Default::default()
        })
        .await
        .unwrap();
}

/// Connects to 127.0.0.1:`port` and reads until the peer closes (2 s at most); `None` when the
/// connection or the read fails.
pub async fn read_all_from(port: u16) -> Option<String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let mut buf = String::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut buf))
        .await
        .ok()?
        .ok()?;
    Some(buf)
}

/// Force-removes the Docker container `.0` when dropped, also when the test panics.
pub struct RemoveContainer(pub String);
impl Drop for RemoveContainer {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["rm", "-f", &self.0])
            .output();
    }
}

/// The Docker engine, or `None` after [`berth_testkit::skip::skip_or_fail`] (a failure under
/// CI=true, a loud skip elsewhere).
pub async fn docker_or_skip(test: &str) -> Option<berth_agent::runtime::docker::DockerRuntime> {
    let connect = berth_agent::runtime::docker::DockerRuntime::connect();
    let why = match tokio::time::timeout(Duration::from_secs(5), connect).await {
        Ok(Ok(d)) => return Some(d),
        Ok(Err(e)) => format!("Docker engine not reachable: {e}"),
        Err(_) => "Docker engine did not answer within 5s".to_string(),
    };
    berth_testkit::skip::skip_or_fail(test, &why);
    None
}
