//! `pods/{name}/portforward` end to end: the machine's kubectl (1.32) and `berth port-forward`
//! against a one-member cluster with a real agent on the process runtime, whose pod serves
//! files with python3's http.server on its host port for containerPort 8080, and publishes a
//! second port (8081) nobody listens on.
//!
//! kubectl is run twice: as it comes (SPDY tunneled in a WebSocket; the server's session counter
//! proves it did not fall back to plain SPDY) and with `KUBECTL_PORT_FORWARD_WEBSOCKETS=false`
//! (plain SPDY/3.1). The Python client uses the WebSocket channel protocol. Needs kubectl and python3 (fails
//! under CI=true without them; .ci/run installs them).
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use berth_agent::{AgentArgs, AgentHandle, RuntimeKind};
use berth_apiserver::testing::{wait_until, TestCluster};
use berth_client::{Client, ClientConfig};
use berth_proto::types::{Container, ContainerPort, ObjectMeta, Pod, PodSpec};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(60);
/// The served file of /big: 1 MiB that a dropped or reordered frame would corrupt.
const BIG: usize = 1 << 20;

fn big_body() -> Vec<u8> {
    (0..BIG).map(|i| (i % 251) as u8).collect()
}

struct Env {
    cluster: TestCluster,
    agent: AgentHandle,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl Env {
    async fn start(seed: u16) -> Env {
        let cluster = TestCluster::start(1).await.unwrap();
        let client = Client::new(
            &[cluster.addr(0).to_string().as_str()],
            ClientConfig::with_tls(cluster.admin_tls()),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let start = 41000 + seed * 100;
        let agent = berth_agent::start(
            AgentArgs {
                server: vec![cluster.addr(0).to_string()],
                token: Some(berth_tls::Secret::new(cluster.token())),
                name: Some("node-a".into()),
                address: "127.0.0.1".into(),
                data_dir: Some(dir.path().join("agent")),
                runtime: Some(RuntimeKind::Process),
                capacity: Some("cpu=2,memory=2Gi".into()),
                host_port_range: format!("{start}-{}", start + 99),
                listen: Some("127.0.0.1:0".into()),
                no_proxy: true,
                heartbeat_ms: 500,
                ..AgentArgs::default()
            },
            CancellationToken::new(),
        )
        .await
        .unwrap();
        let script = format!(
            "cd \"$(mktemp -d)\" && echo portforward-ok > index.html && \
             python3 -c 'open(\"big\",\"wb\").write(bytes(i % 251 for i in range({BIG})))' && \
             exec python3 -m http.server --bind 127.0.0.1 $PORT_HTTP"
        );
        let port = |name: &str, n: i32| ContainerPort {
            name: name.into(),
            container_port: n,
            protocol: None,
            host_port: None,
        };
        let pod = Pod {
            metadata: ObjectMeta {
                name: "web".into(),
                namespace: "default".into(),
                ..Default::default()
            },
            spec: PodSpec {
                node_name: "node-a".into(),
                termination_grace_period_seconds: Some(1),
                containers: vec![Container {
                    name: "main".into(),
                    image: "none".into(),
                    command: vec!["sh".into(), "-c".into(), script],
                    ports: vec![port("http", 8080), port("idle", 8081)],
                    ..Default::default()
                }],
                ..Default::default()
            },
            ..Default::default()
        };
        client.create(&pod).await.unwrap();
        let running = wait_until(DEADLINE, "pod web Running", || async {
            client
                .get::<Pod>("default", "web")
                .await
                .ok()
                .filter(|p| p.status.as_ref().is_some_and(|s| s.phase == "Running"))
        })
        .await
        .unwrap();
        // Forwarding to a port before the pod listens on it ends kubectl (as with a kubelet):
        // wait for http.server itself on its host port.
        let host_port = running.status.as_ref().unwrap().host_ports[0].host_port as u16;
        wait_until(DEADLINE, "http.server listening in pod web", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", host_port))
                .await
                .ok()
                .map(|_| ())
        })
        .await
        .unwrap();
        let tls = cluster.admin_tls();
        let yaml = berth::cli::kubeconfig::kubeconfig_yaml(
            "berth",
            &[cluster.addr(0).to_string()],
            &tls.ca_cert_pem,
            &tls.credential.cert_pem,
            &tls.credential.key_pem,
        )
        .unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, yaml).unwrap();
        Env {
            cluster,
            agent,
            dir,
            kubeconfig,
        }
    }

    fn kubectl(&self, args: &[&str], spdy: bool) -> Child {
        let mut c = Command::new("kubectl");
        c.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if spdy {
            c.env("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false");
        }
        c.spawn().unwrap()
    }

    fn berth(&self, args: &[&str]) -> Child {
        Command::new(env!("CARGO_BIN_EXE_berth"))
            .arg("--server")
            .arg(self.cluster.addr(0).to_string())
            .arg("--config")
            .arg(self.cluster.admin_config_path())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }

    async fn stop(self) {
        // The process runtime leaves workloads running for the next agent: stop them.
        self.agent.stop_workloads().await;
        let _ = self.cluster.shutdown().await;
        drop(self.dir);
    }
}

fn tools_available(test: &str) -> bool {
    berth_testkit::skip::require(
        test,
        berth_testkit::skip::command_works("kubectl", &["version", "--client"]),
    ) && berth_testkit::skip::require(
        test,
        berth_testkit::skip::command_works("python3", &["--version"]),
    )
}

/// Read `child`'s stdout until "Forwarding from 127.0.0.1:NNNN -> REMOTE"; the local port.
async fn forwarding_port(child: &mut Child) -> u16 {
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let port = tokio::time::timeout(DEADLINE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
                return rest
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .parse::<u16>()
                    .unwrap();
            }
        }
        panic!("the command ended without printing Forwarding from 127.0.0.1:PORT");
    })
    .await
    .expect("Forwarding from ... within the deadline");
    // Keep draining stdout ("Handling connection for ...") so the command never blocks on it.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    port
}

/// One HTTP/1.0 GET through the forwarded port: (status line, body).
async fn get(port: u16, path: &str) -> std::io::Result<(String, Vec<u8>)> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await?;
    read_response(&mut s).await
}

async fn read_response(s: &mut tokio::net::TcpStream) -> std::io::Result<(String, Vec<u8>)> {
    let mut all = Vec::new();
    s.read_to_end(&mut all).await?;
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no HTTP response in {} bytes", all.len())))?;
    let head = String::from_utf8_lossy(&all[..split]).to_string();
    let status = head.lines().next().unwrap_or("").to_string();
    Ok((status, all[split + 4..].to_vec()))
}

/// Prove a forwarded port: the pod answers (waiting out its start), two connections are open
/// at once and answered independently, and 1 MiB arrives intact.
async fn check_forwarding(port: u16) {
    let (status, body) = get(port, "/")
        .await
        .expect("an answer from the pod through the tunnel");
    assert!(status.contains("200"), "{status}");
    assert_eq!(String::from_utf8_lossy(&body).trim(), "portforward-ok");

    // Two connections at once: A is opened and half-sent, B completes, then A.
    let mut a = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    a.write_all(b"GET /index.html HTTP/1.0\r\n").await.unwrap();
    let mut b = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    b.write_all(b"GET /big HTTP/1.0\r\n\r\n").await.unwrap();
    let (status_b, body_b) = read_response(&mut b).await.unwrap();
    a.write_all(b"Host: x\r\n\r\n").await.unwrap();
    let (status_a, body_a) = read_response(&mut a).await.unwrap();
    assert!(status_a.contains("200") && status_b.contains("200"));
    assert_eq!(String::from_utf8_lossy(&body_a).trim(), "portforward-ok");
    assert_eq!(body_b.len(), BIG);
    assert!(body_b == big_body(), "the 1 MiB body arrived corrupted");
}

/// Connect to a forwarded port nobody listens on in the pod: the connection is closed.
async fn poke(port: u16) {
    if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
        let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n").await;
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut sink)).await;
    }
}

/// The status line the agent answers a port-forward upgrade presented with `tls`.
async fn agent_status_line(env: &Env, tls: &berth_tls::ClientTls) -> String {
    let endpoint = env.agent.agent_endpoint.clone();
    let config = berth_tls::mtls_client_config(tls).unwrap();
    let tcp = tokio::net::TcpStream::connect(&endpoint).await.unwrap();
    let host = endpoint.rsplit_once(':').unwrap().0.to_string();
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host).unwrap();
    let mut s = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    s.write_all(
        b"GET /portForward/default/web?port=8080 HTTP/1.1\r\nHost: agent\r\n\
          Connection: Upgrade\r\nUpgrade: berth-portforward\r\n\r\n",
    )
    .await
    .unwrap();
    let mut line = String::new();
    tokio::io::BufReader::new(s)
        .read_line(&mut line)
        .await
        .unwrap();
    line
}

/// One HTTP/1.1 GET to the API server as the admin: (status line, body).
async fn api_request(env: &Env, path: &str, headers: &str) -> (String, String) {
    let addr = env.cluster.addr(0).to_string();
    let config = berth_tls::mtls_client_config(&env.cluster.admin_tls()).unwrap();
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let host = addr.rsplit_once(':').unwrap().0.to_string();
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host).unwrap();
    let mut s = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: api\r\n{headers}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut all = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut all)).await;
    let text = String::from_utf8_lossy(&all).to_string();
    let status = text.lines().next().unwrap_or("").to_string();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Wait for `child` to exit; its exit success and stderr.
async fn finish(mut child: Child) -> (bool, String) {
    let mut stderr = child.stderr.take().unwrap();
    let mut err = String::new();
    let status = tokio::time::timeout(DEADLINE, async {
        let _ = stderr.read_to_string(&mut err).await;
        child.wait().await.unwrap()
    })
    .await
    .expect("the command exits after the pod's error");
    (status.success(), err)
}

async fn kubectl_forwards(env: &Env, spdy: bool) {
    use berth_apiserver::kube::portforward::sessions_served;
    let protocol = if spdy { "spdy" } else { "spdy-websocket" };
    let before = sessions_served(protocol);
    let mut pf = env.kubectl(&["port-forward", "pod/web", "0:8080"], spdy);
    let port = forwarding_port(&mut pf).await;
    let checked = tokio::spawn(check_forwarding(port)).await;
    pf.start_kill().unwrap();
    let (_, stderr) = finish(pf).await;
    if let Err(e) = checked {
        panic!("forwarding through kubectl (spdy={spdy}) failed: {e}\nkubectl stderr:\n{stderr}");
    }
    // kubectl falls back to SPDY silently when the WebSocket upgrade fails: the server counts
    // which protocol it served.
    assert_eq!(
        sessions_served(protocol),
        before + 1,
        "kubectl (spdy={spdy}) did not use {protocol}:\n{stderr}"
    );

    // A port nobody listens on: kubectl reports the kubelet's error and gives up.
    let mut pf = env.kubectl(&["port-forward", "pod/web", "0:8081"], spdy);
    let port = forwarding_port(&mut pf).await;
    poke(port).await;
    let (ok, stderr) = finish(pf).await;
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains("error forwarding port 8081 to pod default/web")
            && stderr.contains("connection refused"),
        "{stderr}"
    );
    assert!(stderr.contains("lost connection to pod"), "{stderr}");
}

/// The Python client's `portforward` (WebSocket channels, `v4.channel.k8s.io`).
const PYTHON_PORTFORWARD: &str = r#"
import sys
from kubernetes import client, config
from kubernetes.stream import portforward
config.load_kube_config(sys.argv[1])
api = client.CoreV1Api()
pf = portforward(api.connect_get_namespaced_pod_portforward, "web", "default", ports="8080")
s = pf.socket(8080)
s.settimeout(30)
s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
s.close()
print(data.decode(errors="replace"))
print("error:", pf.error(8080))
"#;

async fn python_forwards(env: &Env) {
    let script = env.dir.path().join("pf.py");
    std::fs::write(&script, PYTHON_PORTFORWARD).unwrap();
    let out = tokio::time::timeout(
        DEADLINE,
        Command::new("python3")
            .arg(&script)
            .arg(&env.kubeconfig)
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("the Python client finishes")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("200 OK"), "{stdout}\n{stderr}");
    assert!(stdout.contains("portforward-ok"), "{stdout}\n{stderr}");
    assert!(stdout.contains("error: None"), "{stdout}\n{stderr}");
}

fn python_client_available(test: &str) -> bool {
    berth_testkit::skip::require(
        test,
        berth_testkit::skip::command_works("python3", &["-c", "import kubernetes"]),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_port_forward_over_websocket_and_spdy_reaches_the_pod_and_reports_refused_ports() {
    if !tools_available(
        "kubectl_port_forward_over_websocket_and_spdy_reaches_the_pod_and_reports_refused_ports",
    ) {
        return;
    }
    let env = Env::start(1).await;
    kubectl_forwards(&env, false).await;
    kubectl_forwards(&env, true).await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_python_clients_portforward_reaches_the_pod_over_websocket_channels() {
    let test = "the_python_clients_portforward_reaches_the_pod_over_websocket_channels";
    if !tools_available(test) || !python_client_available(test) {
        return;
    }
    let env = Env::start(3).await;
    python_forwards(&env).await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn berth_port_forward_reaches_the_pod_by_named_port_and_reports_refused_ports() {
    if !tools_available(
        "berth_port_forward_reaches_the_pod_by_named_port_and_reports_refused_ports",
    ) {
        return;
    }
    let env = Env::start(2).await;
    let mut pf = env.berth(&["port-forward", "web", ":http"]);
    let port = forwarding_port(&mut pf).await;
    let checked = tokio::spawn(check_forwarding(port)).await;
    pf.start_kill().unwrap();
    let (_, stderr) = finish(pf).await;
    if let Err(e) = checked {
        panic!("forwarding through berth port-forward failed: {e}\nstderr:\n{stderr}");
    }

    let mut pf = env.berth(&["port-forward", "pod/web", "0:8081"]);
    let port = forwarding_port(&mut pf).await;
    poke(port).await;
    let (ok, stderr) = finish(pf).await;
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains("error forwarding port 8081 to pod default/web")
            && stderr.contains("connection refused"),
        "{stderr}"
    );

    // The agent relays for API servers only: the admin's own certificate is refused there.
    let status = agent_status_line(&env, &env.cluster.admin_tls()).await;
    assert!(status.contains("403"), "{status}");

    // The endpoint itself, as a client library meets it: a plain GET is told to upgrade, and a
    // pod with no node cannot be forwarded to (both as Kubernetes Status errors).
    let (status, body) =
        api_request(&env, "/api/v1/namespaces/default/pods/web/portforward", "").await;
    assert!(status.contains("400"), "{status}");
    assert!(body.contains("Upgrade request required"), "{body}");
    let client = Client::new(
        &[env.cluster.addr(0).to_string().as_str()],
        ClientConfig::with_tls(env.cluster.admin_tls()),
    )
    .unwrap();
    let mut unscheduled = Pod::default();
    unscheduled.metadata.name = "unscheduled".into();
    unscheduled.metadata.namespace = "default".into();
    unscheduled.spec.containers.push(Container {
        name: "main".into(),
        image: "none".into(),
        command: vec!["sleep".into(), "60".into()],
        ..Default::default()
    });
    client.create(&unscheduled).await.unwrap();
    let (status, body) = api_request(
        &env,
        "/api/v1/namespaces/default/pods/unscheduled/portforward",
        "Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: portforward.k8s.io\r\n",
    )
    .await;
    assert!(status.contains("400"), "{status}");
    assert!(
        body.contains("pod unscheduled does not have a host assigned"),
        "{body}"
    );

    // A pod that does not exist: the CLI says so before listening.
    let pf = env.berth(&["port-forward", "nope", "8080"]);
    let (ok, stderr) = finish(pf).await;
    assert!(!ok && stderr.contains("nope"), "{stderr}");
    env.stop().await;
}
