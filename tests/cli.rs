//! The CLI end to end against a real API server started in-process on 127.0.0.1:0: apply,
//! get (tables, -o yaml round trip), describe, scale, delete, cluster status, and the
//! "no server" error. Commands run through the library entry point `berth::cli::run` with
//! captured output, exactly as the binary runs them.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth::cli::{self, Cli, Io};
use berth_apiserver::testing::TestCluster;
use clap::Parser;
use tokio_util::sync::CancellationToken;

mod common;
use common::{berth, Out, Target};

const APP: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
        - name: app
          image: demo:v1
          ports:
            - containerPort: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
    - port: 80
      targetPort: 8080
"#;

/// A process-runtime agent (no proxy) named `name` joining `cluster` through `server` with its
/// token, its data under `dir`, host ports from `ports`, and its logs API on 127.0.0.1.
async fn process_agent(
    cluster: &TestCluster,
    server: &str,
    name: &str,
    ports: &str,
    dir: &Path,
) -> berth_agent::AgentHandle {
    berth_agent::start(
        berth_agent::AgentArgs {
            server: vec![server.to_string()],
            token: Some(berth_tls::Secret::new(cluster.token())),
            name: Some(name.into()),
            data_dir: Some(dir.join("agent")),
            runtime: Some(berth_agent::RuntimeKind::Process),
            capacity: Some("cpu=2,memory=2Gi".into()),
            host_port_range: ports.into(),
            listen: Some("127.0.0.1:0".into()),
            no_proxy: true,
            heartbeat_ms: 500,
            ..Default::default()
        },
        CancellationToken::new(),
    )
    .await
    .unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_get_yaml_round_trip_scale_and_delete_against_a_real_server() {
    let cluster = TestCluster::start(1).await.unwrap();
    let server = cluster.addr(0).to_string();
    let target = Target::new(&cluster, &server);
    let s = &target;
    let dir = tempfile::tempdir().unwrap();
    let app = write(dir.path(), "app.yaml", APP);

    let r = berth(s, &["apply", "-f", &app]).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.out, "deployment.apps/web created\nservice/web created\n");

    let r = berth(s, &["apply", "-f", &app]).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(
        r.out,
        "deployment.apps/web unchanged\nservice/web unchanged\n"
    );

    // Tables.
    let r = berth(s, &["get", "deploy"]).await;
    assert!(r.ok, "{r:?}");
    let lines: Vec<&str> = r.out.lines().collect();
    assert_eq!(lines[0], "NAME   READY   UP-TO-DATE   AVAILABLE   AGE");
    assert!(
        lines[1].starts_with("web    0/2     0            0           "),
        "{r:?}"
    );
    let r = berth(s, &["get", "svc", "web"]).await;
    assert!(r.ok, "{r:?}");
    assert!(
        r.out
            .contains("web    NodePort   10.43.0.1    <none>        80:3"),
        "{r:?}"
    );
    let r = berth(s, &["get", "deploy", "-A", "-o", "name"]).await;
    assert_eq!(r.out, "deployment.apps/web\n", "{r:?}");
    let r = berth(s, &["get", "deploy,svc"]).await;
    assert!(r.ok, "{r:?}");
    let lines: Vec<&str> = r.out.lines().collect();
    assert!(lines[1].starts_with("deployment.apps/web "), "{r:?}");
    assert_eq!(lines[2], "");
    assert!(lines[4].starts_with("service/web "), "{r:?}");

    // -o yaml applies back unchanged.
    let r = berth(s, &["get", "deploy", "web", "-o", "yaml"]).await;
    assert!(r.ok, "{r:?}");
    assert!(r.out.contains("resourceVersion:"), "{r:?}");
    let exported = write(dir.path(), "exported.yaml", &r.out);
    let r = berth(s, &["apply", "-f", &exported]).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.out, "deployment.apps/web unchanged\n");

    // A bad manifest: every error is reported and nothing is sent.
    let bad = write(
        dir.path(),
        "bad.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: bad\nspec:\n  replicas: 1\n  selector:\n    matchLabels: {app: bad}\n  template:\n    metadata:\n      labels: {app: bad}\n    spec:\n      contaners: []\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: also-bad\nspec:\n  ports: []\n",
    );
    let r = berth(s, &["apply", "-f", &bad]).await;
    assert!(!r.ok, "{r:?}");
    assert!(r.err.contains("bad.yaml:13"), "{r:?}");
    assert!(r.err.contains("nothing was applied"), "{r:?}");
    let r = berth(s, &["get", "svc", "also-bad"]).await;
    assert!(!r.ok);
    assert!(r.err.contains("services \"also-bad\" not found"), "{r:?}");

    // Dry run stores nothing.
    let other = write(
        dir.path(),
        "other.yaml",
        &APP.replace("name: web\n  labels", "name: web2\n  labels"),
    );
    let r = berth(s, &["apply", "--dry-run", "-f", &other]).await;
    assert!(r.ok, "{r:?}");
    assert!(
        r.out
            .starts_with("deployment.apps/web2 created (server dry run)\n"),
        "{r:?}"
    );
    let r = berth(s, &["get", "deploy", "web2"]).await;
    assert!(!r.ok, "{r:?}");

    // Scale is a CAS update of spec.replicas.
    let r = berth(s, &["scale", "deploy", "web", "--replicas", "5"]).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.out, "deployment.apps/web scaled\n");
    let r = berth(s, &["get", "deploy/web", "-o", "json"]).await;
    let v: serde_json::Value = serde_json::from_str(&r.out).unwrap();
    assert_eq!(v["spec"]["replicas"], 5);

    let r = berth(s, &["describe", "deploy", "web"]).await;
    assert!(r.ok, "{r:?}");
    assert!(r.out.contains("Replicas:           5 desired"), "{r:?}");
    assert!(r.out.contains("Image:            demo:v1"), "{r:?}");

    let r = berth(s, &["cluster", "status"]).await;
    assert!(r.ok, "{r:?}");
    assert!(r.out.starts_with("Leader:    1 ("), "{r:?}");
    let member = r.out.lines().last().unwrap_or_default();
    assert!(member.starts_with("1 "), "{r:?}");
    assert!(
        member.contains(" leader ") && member.contains(" healthy "),
        "{r:?}"
    );

    let r = berth(s, &["get", "deploy", "--show-labels"]).await;
    assert!(
        r.out.lines().next().unwrap().ends_with("   LABELS"),
        "{r:?}"
    );
    assert!(r.out.contains("   app=web\n"), "{r:?}");

    // Delete by selector, then by file (the deployment is already gone).
    let r = berth(s, &["delete", "deploy", "-l", "app=nothing"]).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.err, "No resources found.\n");
    let r = berth(s, &["delete", "deploy", "-l", "app=web"]).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.out, "deployment.apps \"web\" deleted\n");
    let r = berth(s, &["delete", "-f", &app]).await;
    assert!(!r.ok, "{r:?}");
    assert_eq!(r.out, "service \"web\" deleted\n");
    assert!(
        r.err.contains("deployments.apps \"web\" not found"),
        "{r:?}"
    );
    let r = berth(s, &["get", "deploy,svc"]).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.err, "No resources found.\n");
    let r = berth(s, &["get", "svc"]).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.err, "No resources found in default namespace.\n");

    cluster.shutdown().await.unwrap();
}

async fn store_revision(cluster: &TestCluster) -> u64 {
    let mut c = cluster.client(0).await.unwrap();
    c.cluster_status(berth_proto::pb::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .revision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_is_all_or_nothing_and_names_the_file_and_line_the_server_rejected() {
    let cluster = TestCluster::start(1).await.unwrap();
    let server = cluster.addr(0).to_string();
    let target = Target::new(&cluster, &server);
    let dir = tempfile::tempdir().unwrap();
    let svc = |name: &str, port: u16| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  ports:\n    - port: 80\n      nodePort: {port}\n"
        )
    };
    let taken = write(dir.path(), "taken.yaml", &svc("taken", 30999));
    let r = berth(&target, &["apply", "-f", &taken]).await;
    assert!(r.ok, "{r:?}");
    let before = store_revision(&cluster).await;
    // Three valid documents; the server rejects the third (its node port is taken).
    let text = format!(
        "{}---\n{}---\n{}",
        svc("one", 30990),
        svc("two", 30991),
        svc("three", 30999)
    );
    let f = write(dir.path(), "svcs.yaml", &text);
    let r = berth(&target, &["apply", "-f", &f]).await;
    assert!(!r.ok, "{r:?}");
    assert_eq!(r.out, "", "nothing may be reported as applied: {r:?}");
    assert!(
        r.err.contains("svcs.yaml:19: service/three: invalid:")
            && r.err.contains("already allocated to Service \"taken\""),
        "{r:?}"
    );
    assert!(
        r.err
            .contains("nothing was applied: 1 of 3 objects was rejected"),
        "{r:?}"
    );
    assert_eq!(store_revision(&cluster).await, before, "revision moved");
    for name in ["one", "two"] {
        let r = berth(&target, &["get", "svc", name]).await;
        assert!(!r.ok && r.err.contains("not found"), "{name}: {r:?}");
    }
    // Fixed, the same file applies whole.
    std::fs::write(&f, text.replace("30999", "30992")).unwrap();
    let r = berth(&target, &["apply", "-f", &f]).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(
        r.out,
        "service/one created\nservice/two created\nservice/three created\n"
    );
    assert_eq!(store_revision(&cluster).await, before + 3);
    cluster.shutdown().await.unwrap();
}

const BLUE_GREEN: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: bg
spec:
  replicas: 1
  selector:
    matchLabels: {app: bg}
  strategy:
    type: BlueGreen
    blueGreen:
      activeService: bg
  template:
    metadata:
      labels: {app: bg}
    spec:
      containers:
        - name: app
          image: demo:v1
---
apiVersion: v1
kind: Node
metadata:
  name: node-1
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_requests_and_cordon_write_what_the_controllers_read() {
    let cluster = TestCluster::start(1).await.unwrap();
    let server = cluster.addr(0).to_string();
    let target = Target::new(&cluster, &server);
    let s = &target;
    let dir = tempfile::tempdir().unwrap();
    let r = berth(s, &["apply", "-f", &write(dir.path(), "app.yaml", APP)]).await;
    assert!(r.ok, "{r:?}");
    let r = berth(
        s,
        &["apply", "-f", &write(dir.path(), "bg.yaml", BLUE_GREEN)],
    )
    .await;
    assert!(r.ok, "{r:?}");
    let json = |r: &Out| -> serde_json::Value { serde_json::from_str(&r.out).unwrap() };

    // No controller runs here: the status shows the spec is not yet observed.
    let r = berth(s, &["rollout", "status", "deploy/web", "--watch=false"]).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(
        r.out,
        "Waiting for deployment spec update to be observed...\n"
    );

    let r = berth(s, &["rollout", "promote", "deploy/web"]).await;
    assert!(!r.ok);
    assert!(
        r.err.contains("promote and abort apply to BlueGreen"),
        "{r:?}"
    );
    let r = berth(s, &["rollout", "promote", "deploy/bg"]).await;
    assert_eq!(r.out, "deployment.apps/bg promoted\n", "{r:?}");
    let r = berth(s, &["rollout", "abort", "deploy", "bg"]).await;
    assert_eq!(r.out, "deployment.apps/bg aborted\n", "{r:?}");
    let v = json(&berth(s, &["get", "deploy/bg", "-o", "json"]).await);
    assert_eq!(v["metadata"]["annotations"]["berth.io/promote"], "true");
    assert_eq!(v["metadata"]["annotations"]["berth.io/abort"], "true");

    let r = berth(s, &["rollout", "restart", "deploy/web"]).await;
    assert_eq!(r.out, "deployment.apps/web restarted\n", "{r:?}");
    let v = json(&berth(s, &["get", "deploy/web", "-o", "json"]).await);
    assert!(
        v["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"]
            .is_string()
    );

    let r = berth(s, &["rollout", "history", "deploy/web"]).await;
    assert_eq!(
        r.out, "deployment.apps/web\nNo rollout history found.\n",
        "{r:?}"
    );
    let r = berth(s, &["rollout", "undo", "deploy/web"]).await;
    assert!(r.err.contains("no previous revision"), "{r:?}");

    let r = berth(s, &["cordon", "node-1"]).await;
    assert_eq!(r.out, "node/node-1 cordoned\n", "{r:?}");
    let r = berth(s, &["cordon", "node-1"]).await;
    assert_eq!(r.out, "node/node-1 already cordoned\n", "{r:?}");
    let r = berth(s, &["get", "nodes"]).await;
    assert!(
        r.out.contains("node-1   Unknown,SchedulingDisabled"),
        "{r:?}"
    );
    let r = berth(s, &["drain", "node-1"]).await;
    assert_eq!(
        r.out, "node/node-1 already cordoned\nnode/node-1 drained\n",
        "{r:?}"
    );
    let r = berth(s, &["uncordon", "node-1"]).await;
    assert_eq!(r.out, "node/node-1 uncordoned\n", "{r:?}");
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_streams_a_pods_output_from_its_nodes_agent() {
    let cluster = TestCluster::start(1).await.unwrap();
    let server = cluster.addr(0).to_string();
    let target = Target::new(&cluster, &server);
    let s = &target;
    let dir = tempfile::tempdir().unwrap();
    let agent = process_agent(&cluster, &server, "cli-node", "47700-47799", dir.path()).await;
    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: talker\nspec:\n  nodeName: cli-node\n  terminationGracePeriodSeconds: 1\n  restartPolicy: Never\n  containers:\n    - name: main\n      image: none\n      command: [sh, -c, 'echo hello-from-logs; exec sleep 10']\n";
    let r = berth(s, &["apply", "-f", &write(dir.path(), "pod.yaml", pod)]).await;
    assert!(r.ok, "{r:?}");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    let last = loop {
        let r = berth(s, &["logs", "talker"]).await;
        if r.ok && r.out.contains("hello-from-logs") {
            break r;
        }
        assert!(tokio::time::Instant::now() < deadline, "no logs: {r:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(last.out, "hello-from-logs\n");
    let r = berth(s, &["logs", "pod/talker", "--tail", "1"]).await;
    assert_eq!(r.out, "hello-from-logs\n", "{r:?}");
    let r = berth(s, &["logs", "nobody"]).await;
    assert!(r.err.contains("pods \"nobody\" not found"), "{r:?}");

    // A stopped agent leaves workloads running by design: stop them explicitly.
    agent.stop_workloads().await;
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_status_shows_every_member_and_which_one_is_down() {
    let mut cluster = TestCluster::start(3).await.unwrap();
    let leader = cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .unwrap();
    let victim = (leader + 1) % 3;
    let servers: Vec<String> = (0..3).map(|i| cluster.addr(i).to_string()).collect();
    let all = servers.join(",");
    let all = Target::new(&cluster, &all);
    cluster.stop(victim).await.unwrap();
    let r = berth(&all, &["cluster", "status"]).await;
    assert!(r.ok, "{r:?}");
    let rows: Vec<&str> = r.out.lines().skip(7).collect();
    assert_eq!(rows.len(), 3, "{r:?}");
    for (i, addr) in servers.iter().enumerate() {
        let row = rows
            .iter()
            .find(|l| l.contains(addr.as_str()))
            .unwrap_or_else(|| panic!("no row for {addr}: {r:?}"));
        if i == victim {
            assert!(row.contains("unreachable: connection refused"), "{r:?}");
        } else {
            assert!(row.contains(" healthy "), "{r:?}");
        }
        if i == leader {
            assert!(row.contains(" leader "), "{r:?}");
        }
    }
    cluster.shutdown().await.unwrap();
}

/// A writer the test can read while a command is still writing to it.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Shared {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }

    /// Waits (30 s at most) until the output holds `needle`; panics naming `what` otherwise.
    async fn wait_for(&self, what: &str, needle: &str) {
        tokio::time::timeout(Duration::from_secs(30), async {
            while !self.text().contains(needle) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {what} in:\n{}", self.text()));
    }
}

/// Runs a streaming CLI command (`get -w`, `logs -f`) against `server` in a task, its stdout in
/// the returned buffer, until the returned token is cancelled (Ctrl-C).
fn spawn_streaming(
    target: &Target,
    server: &str,
    args: &[&str],
) -> (
    Shared,
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let out = Shared::default();
    let token = CancellationToken::new();
    let config = target.config.display().to_string();
    let mut argv = vec!["berth".to_string(), "--server".into(), server.into()];
    argv.extend(["--config".to_string(), config]);
    argv.extend(args.iter().map(|a| a.to_string()));
    let cli = Cli::try_parse_from(argv).unwrap();
    let task = tokio::spawn({
        let (mut out, token) = (out.clone(), token.clone());
        async move {
            let mut err = Vec::new();
            let mut io = Io {
                out: &mut out,
                err: &mut err,
            };
            cli::run(cli, &mut io, token).await
        }
    });
    (out, token, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_watch_prints_rows_as_objects_change_until_cancelled() {
    let cluster = TestCluster::start(1).await.unwrap();
    let server = cluster.addr(0).to_string();
    let target = Target::new(&cluster, &server);
    let dir = tempfile::tempdir().unwrap();
    let app = write(dir.path(), "app.yaml", APP);
    let r = berth(&target, &["apply", "-f", &app]).await;
    assert!(r.ok, "{r:?}");

    let (out, token, task) = spawn_streaming(&target, &server, &["get", "deploy", "-w"]);
    out.wait_for("initial row", "0/2").await;
    let r = berth(&target, &["scale", "deploy", "web", "--replicas", "3"]).await;
    assert!(r.ok, "{r:?}");
    out.wait_for("updated row", "0/3").await;
    token.cancel();
    let result = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("get -w stops on cancel")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
    let text = out.text();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("NAME "), "{text}");
    assert!(
        lines[1].starts_with("web ") && lines[1].contains("0/2"),
        "{text}"
    );
    assert!(
        lines[2].starts_with("web ") && lines[2].contains("0/3"),
        "{text}"
    );
    cluster.shutdown().await.unwrap();
}

#[tokio::test]
async fn no_server_gives_a_clear_error_quickly() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    drop(l);
    let dir = tempfile::tempdir().unwrap();
    let start = std::time::Instant::now();
    let r = berth(&Target::nowhere(&addr, dir.path()), &["get", "pods"]).await;
    assert!(!r.ok);
    assert!(
        r.err.contains(&format!(
            "error: cannot list pods: cannot reach any Berth server (tried {addr}: connection refused). Start one with 'berth dev' or pass --server."
        )),
        "{r:?}"
    );
    assert!(start.elapsed() < std::time::Duration::from_secs(10));
}

#[test]
fn the_binary_exits_non_zero_with_the_reason_on_stderr() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    drop(l);
    let dir = tempfile::tempdir().unwrap();
    let target = Target::nowhere(&addr, dir.path());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["get", "pods", "--server", &addr, "--config"])
        .arg(&target.config)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        err,
        format!(
            "error: cannot list pods: cannot reach any Berth server (tried {addr}: connection \
             refused). Start one with 'berth dev' or pass --server.\n"
        )
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("berth {}\n", env!("CARGO_PKG_VERSION"))
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["get", "gadgets"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .starts_with("error: unknown resource type \"gadgets\""));
}

#[tokio::test]
async fn a_credential_from_another_ca_or_missing_gets_a_clear_error_before_dialing() {
    let cluster = TestCluster::start(1).await.unwrap();
    let server = cluster.addr(0).to_string();
    let dir = tempfile::tempdir().unwrap();
    // The cluster's CA with an admin certificate some other CA signed.
    let mut forged = berth_tls::AdminConfig::read(&cluster.admin_config_path()).unwrap();
    let other = berth_tls::ClusterCa::generate().unwrap();
    let cred = other.issue_client(&berth_tls::Identity::Admin).unwrap();
    forged.client_certificate = cred.cert_pem;
    forged.client_key = cred.key_pem;
    let path = dir.path().join("forged.yaml");
    forged.write(&path).unwrap();
    let t = Target {
        server: server.clone(),
        config: path.clone(),
    };
    let r = berth(&t, &["get", "pods"]).await;
    assert!(!r.ok);
    assert!(
        r.err
            .contains("clientCertificate is not usable with certificateAuthority")
            && r.err.contains(&path.display().to_string()),
        "{r:?}"
    );
    // Servers only, no credential: says where to get one.
    let bare = write(
        dir.path(),
        "bare.yaml",
        &format!("servers: [\"{server}\"]\n"),
    );
    let t = Target {
        server,
        config: bare.into(),
    };
    let r = berth(&t, &["get", "pods"]).await;
    assert!(!r.ok);
    assert!(
        r.err.contains("no credentials") && r.err.contains("admin.yaml"),
        "{r:?}"
    );
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_flag_applies_gets_describes_and_deletes_in_that_namespace_only() {
    let cluster = TestCluster::start(1).await.unwrap();
    let server = cluster.addr(0).to_string();
    let s = &Target::new(&cluster, &server);
    let dir = tempfile::tempdir().unwrap();
    let app = write(dir.path(), "app.yaml", APP);
    // The namespace must exist first.
    let r = berth(s, &["apply", "-f", &app, "-n", "team-a"]).await;
    assert!(
        !r.ok
            && r.err.contains("namespaces \"team-a\" not found")
            && r.err.contains("berth create namespace team-a"),
        "{r:?}"
    );
    let r = berth(s, &["create", "namespace", "team-a"]).await;
    assert_eq!(r.out, "namespace/team-a created\n", "{r:?}");
    let r = berth(s, &["get", "ns"]).await;
    assert!(
        r.ok && r.out.contains("team-a") && r.out.contains("Active"),
        "{r:?}"
    );
    let r = berth(s, &["apply", "-f", &app, "-n", "team-a"]).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.out, "deployment.apps/web created\nservice/web created\n");
    // Not in default.
    let r = berth(s, &["get", "deploy", "web"]).await;
    assert!(!r.ok && r.err.contains("not found"), "{r:?}");
    let r = berth(s, &["get", "deploy", "web", "-n", "team-a", "-o", "name"]).await;
    assert_eq!(r.out, "deployment.apps/web\n", "{r:?}");
    let r = berth(s, &["get", "svc", "-A"]).await;
    assert!(r.ok && r.out.contains("team-a"), "{r:?}");
    let r = berth(s, &["describe", "deploy", "web", "-n", "team-a"]).await;
    assert!(r.ok && r.out.contains("team-a"), "{r:?}");
    let r = berth(s, &["describe", "deploy", "web"]).await;
    assert!(!r.ok, "{r:?}");
    let r = berth(s, &["delete", "deploy", "web"]).await;
    assert!(!r.ok && r.err.contains("not found"), "{r:?}");
    let r = berth(s, &["delete", "deploy", "web", "-n", "team-a"]).await;
    assert!(r.ok, "{r:?}");
    let r = berth(s, &["get", "deploy", "web", "-n", "team-a"]).await;
    assert!(!r.ok && r.err.contains("not found"), "{r:?}");
    let r = berth(s, &["get", "svc", "web", "-n", "team-a", "-o", "name"]).await;
    assert_eq!(r.out, "service/web\n", "{r:?}");
    // Deleting the namespace marks it Terminating (no namespace controller runs here, so it
    // stays so): new content is refused, the system namespaces cannot be deleted.
    let r = berth(s, &["delete", "ns", "team-a"]).await;
    assert!(r.ok, "{r:?}");
    let r = berth(s, &["get", "ns", "team-a"]).await;
    assert!(r.ok && r.out.contains("Terminating"), "{r:?}");
    let r = berth(s, &["apply", "-f", &app, "-n", "team-a"]).await;
    assert!(
        !r.ok
            && r.err.contains(
                "unable to create new content in namespace team-a because it is being terminated"
            ),
        "{r:?}"
    );
    let r = berth(s, &["create", "namespace", "kube-system"]).await;
    assert!(r.ok, "{r:?}");
    let r = berth(s, &["delete", "ns", "kube-system"]).await;
    assert!(!r.ok && r.err.contains("may not be deleted"), "{r:?}");
    cluster.shutdown().await.unwrap();
}

/// Write a Deployment's status as the controller would (no controllers run here).
async fn set_deployment_status(cluster: &TestCluster, name: &str, status: serde_json::Value) {
    let client = berth_client::Client::new(
        &[cluster.addr(0).to_string()],
        berth_client::ClientConfig::with_tls(cluster.admin_tls()),
    )
    .unwrap();
    let mut d = client
        .get_dyn(berth_client::Kind::Deployment, "default", name)
        .await
        .unwrap();
    let generation = d.value["metadata"]["generation"].clone();
    let mut status = status;
    status["observedGeneration"] = generation;
    d.value["status"] = status;
    client.update_status_dyn(&d).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_status_exits_5_when_the_rollout_failed_and_4_when_its_timeout_runs_out() {
    let cluster = TestCluster::start(1).await.unwrap();
    let server = cluster.addr(0).to_string();
    let s = &Target::new(&cluster, &server);
    let dir = tempfile::tempdir().unwrap();
    let r = berth(s, &["apply", "-f", &write(dir.path(), "app.yaml", APP)]).await;
    assert!(r.ok, "{r:?}");
    // Still going (0 of 2 updated): the timeout runs out.
    set_deployment_status(&cluster, "web", serde_json::json!({"replicas": 0})).await;
    let start = std::time::Instant::now();
    let r = berth(s, &["rollout", "status", "deploy/web", "--timeout", "1s"]).await;
    assert!(!r.ok, "{r:?}");
    assert_eq!(r.code, cli::exit::TIMED_OUT, "{r:?}");
    assert!(r.err.contains("timed out after 1s"), "{r:?}");
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "returned before its timeout"
    );
    // Past its progress deadline: failed.
    set_deployment_status(
        &cluster,
        "web",
        serde_json::json!({"conditions": [{
            "type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
            "message": "ReplicaSet web has timed out progressing"
        }]}),
    )
    .await;
    let r = berth(s, &["rollout", "status", "deploy/web", "--timeout", "30s"]).await;
    assert!(!r.ok, "{r:?}");
    assert_eq!(r.code, cli::exit::ROLLOUT_FAILED, "{r:?}");
    assert!(r.err.contains("exceeded its progress deadline"), "{r:?}");
    cluster.shutdown().await.unwrap();
}

#[test]
fn apply_reads_manifests_from_stdin() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cluster = rt.block_on(TestCluster::start(1)).unwrap();
    let server = cluster.addr(0).to_string();
    let target = Target::new(&cluster, &server);
    let run = |stdin: &str| {
        use std::io::Write as _;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["apply", "-f", "-", "--server", &server, "--config"])
            .arg(&target.config)
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let out = run(APP);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "deployment.apps/web created\nservice/web created\n"
    );
    // A bad document on stdin is named as <stdin>:LINE, and nothing is applied.
    let out = run("apiVersion: v1\nkind: Service\nmetadata:\n  name: other\n---\nkind: Gadget\n");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("<stdin>:6"), "{err}");
    let r = rt.block_on(berth(&target, &["get", "svc", "other"]));
    assert!(!r.ok && r.err.contains("not found"), "{r:?}");
    rt.block_on(cluster.shutdown()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_delivers_a_line_written_after_the_call_started() {
    let cluster = TestCluster::start(1).await.unwrap();
    let server = cluster.addr(0).to_string();
    let target = Target::new(&cluster, &server);
    let dir = tempfile::tempdir().unwrap();
    let agent = process_agent(&cluster, &server, "follow-node", "47800-47899", dir.path()).await;
    // The container writes "second" only once the test creates `go`, i.e. after `logs -f`
    // has printed "first".
    let go = dir.path().join("go");
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: follower\nspec:\n  nodeName: follow-node\n  terminationGracePeriodSeconds: 1\n  restartPolicy: Never\n  containers:\n    - name: main\n      image: none\n      command: [sh, -c, 'echo first; while [ ! -e {go} ]; do sleep 0.1; done; echo second; exec sleep 30']\n",
        go = go.display()
    );
    let r = berth(
        &target,
        &["apply", "-f", &write(dir.path(), "pod.yaml", &pod)],
    )
    .await;
    assert!(r.ok, "{r:?}");
    // Wait until the container runs and has written its first line.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        let r = berth(&target, &["logs", "follower"]).await;
        if r.ok && r.out.contains("first") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no logs: {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (out, token, task) = spawn_streaming(&target, &server, &["logs", "-f", "follower"]);
    out.wait_for("\"first\"", "first").await;
    assert!(!out.text().contains("second"));
    std::fs::write(&go, "").unwrap();
    out.wait_for("\"second\"", "second").await;
    assert_eq!(out.text(), "first\nsecond\n");
    token.cancel();
    let result = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("logs -f stops on Ctrl-C")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
    agent.stop_workloads().await;
    cluster.shutdown().await.unwrap();
}

/// The Kubernetes docs' headless Service (StatefulSet basics, `clusterIP: None`) and a
/// `type: LoadBalancer` Service (the guestbook frontend's shape) apply unchanged; the others get
/// a cluster IP from the service CIDR, and a taken or out-of-range one is refused by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_and_load_balancer_services_from_the_kubernetes_docs_apply_and_get_cluster_ips() {
    let cluster = TestCluster::start(1).await.unwrap();
    let server = cluster.addr(0).to_string();
    let target = Target::new(&cluster, &server);
    let dir = tempfile::tempdir().unwrap();
    let docs = write(
        dir.path(),
        "docs.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: nginx\n  labels:\n    app: nginx\nspec:\n  ports:\n  - port: 80\n    name: web\n  clusterIP: None\n  selector:\n    app: nginx\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: frontend\n  labels:\n    app: guestbook\n    tier: frontend\nspec:\n  type: LoadBalancer\n  ports:\n  - port: 80\n  selector:\n    app: guestbook\n    tier: frontend\n",
    );
    let r = berth(&target, &["apply", "-f", &docs]).await;
    assert!(r.ok, "{r:?}");
    let r = berth(&target, &["get", "svc"]).await;
    assert!(r.ok, "{r:?}");
    let row = |name: &str| {
        r.out
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    // NAME TYPE CLUSTER-IP EXTERNAL-IP PORT(S) AGE; a LoadBalancer's EXTERNAL-IP is the Ready
    // nodes' addresses, or <pending> before the controller wrote them.
    let frontend = row("frontend");
    assert_eq!(
        frontend[..3],
        ["frontend", "LoadBalancer", "10.43.0.1"],
        "{r:?}"
    );
    assert_eq!(frontend.get(4), Some(&"80:30000/TCP"), "{r:?}");
    assert_eq!(
        row("nginx")[..5],
        ["nginx", "ClusterIP", "None", "<none>", "80/TCP"],
        "{r:?}"
    );
    let taken = write(
        dir.path(),
        "taken.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: api\nspec:\n  clusterIP: 10.43.0.1\n  ports:\n  - port: 8080\n",
    );
    let r = berth(&target, &["apply", "-f", &taken]).await;
    assert!(!r.ok, "{r:?}");
    assert!(
        r.err
            .contains("spec.clusterIP: 10.43.0.1 is already allocated to Service \"frontend\""),
        "{r:?}"
    );
}

/// The Kubernetes docs' ConfigMap (configuration/configmap, `game-demo`) and a Secret written
/// with `stringData` apply unchanged, apply again as unchanged, list with kubectl's columns,
/// and describe shows a Secret's keys and sizes but never its values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_maps_and_secrets_apply_list_and_describe_without_showing_secret_values() {
    let cluster = TestCluster::start(1).await.unwrap();
    let server = cluster.addr(0).to_string();
    let target = Target::new(&cluster, &server);
    let dir = tempfile::tempdir().unwrap();
    let docs = write(
        dir.path(),
        "config.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: game-demo\ndata:\n  player_initial_lives: \"3\"\n  ui_properties_file_name: \"user-interface.properties\"\n  game.properties: |\n    enemy.types=aliens,monsters\n    player.maximum-lives=5\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: mysql-pass\ntype: Opaque\nstringData:\n  password: hunter2\n",
    );
    let r = berth(&target, &["apply", "-f", &docs]).await;
    assert!(r.ok, "{r:?}");
    assert!(
        r.out.contains("configmap/game-demo created")
            && r.out.contains("secret/mysql-pass created"),
        "{r:?}"
    );
    let r = berth(&target, &["apply", "-f", &docs]).await;
    assert!(r.ok, "{r:?}");
    assert!(
        r.out.contains("configmap/game-demo unchanged")
            && r.out.contains("secret/mysql-pass unchanged"),
        "{r:?}"
    );
    let r = berth(&target, &["get", "configmaps"]).await;
    assert!(r.ok, "{r:?}");
    let row: Vec<&str> = r
        .out
        .lines()
        .find(|l| l.starts_with("game-demo"))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    assert_eq!(row[..2], ["game-demo", "3"], "{r:?}");
    let r = berth(&target, &["get", "secrets"]).await;
    assert!(r.ok, "{r:?}");
    assert!(r.out.starts_with("NAME"), "{r:?}");
    let row: Vec<&str> = r
        .out
        .lines()
        .find(|l| l.starts_with("mysql-pass"))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    assert_eq!(row[..3], ["mysql-pass", "Opaque", "1"], "{r:?}");
    let r = berth(&target, &["describe", "secret", "mysql-pass"]).await;
    assert!(r.ok, "{r:?}");
    assert!(r.out.contains("password:  7 bytes"), "{r:?}");
    assert!(
        !r.out.contains("hunter2") && !r.out.contains("aHVudGVyMg"),
        "{r:?}"
    );
    // -o yaml gives the stored base64, as kubectl does, to the admin.
    let r = berth(&target, &["get", "secret", "mysql-pass", "-o", "yaml"]).await;
    assert!(r.ok, "{r:?}");
    assert!(r.out.contains("password: aHVudGVyMg=="), "{r:?}");
    assert!(!r.out.contains("stringData"), "{r:?}");
}

/// kubectl's imperative shapes: `create secret generic` from literals and a file (the MySQL
/// docs' `mysql-pass`), `create secret docker-registry`, `create configmap --from-file`; a
/// second create is refused by name; no output or error shows a value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_secret_and_configmap_from_literals_and_files_like_kubectl() {
    let cluster = TestCluster::start(1).await.unwrap();
    let server = cluster.addr(0).to_string();
    let target = Target::new(&cluster, &server);
    let dir = tempfile::tempdir().unwrap();
    let key_file = write(dir.path(), "ssh-key", "PRIVATE-hunter2");
    let r = berth(
        &target,
        &[
            "create",
            "secret",
            "generic",
            "mysql-pass",
            "--from-literal=password=hunter2",
            "--from-file",
            &key_file,
        ],
    )
    .await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.out.trim(), "secret/mysql-pass created");
    let r = berth(&target, &["describe", "secret", "mysql-pass"]).await;
    assert!(
        r.out.contains("password:  7 bytes") && r.out.contains("ssh-key:  15 bytes"),
        "{r:?}"
    );
    let again = berth(
        &target,
        &[
            "create",
            "secret",
            "generic",
            "mysql-pass",
            "--from-literal=password=hunter2",
        ],
    )
    .await;
    assert!(!again.ok, "{again:?}");
    assert!(
        again.err.contains("secret/mysql-pass already exists"),
        "{again:?}"
    );
    assert!(
        !again.err.contains("hunter2") && !again.out.contains("hunter2"),
        "{again:?}"
    );
    let bad = berth(
        &target,
        &["create", "secret", "generic", "x", "--from-literal=hunter2"],
    )
    .await;
    assert!(!bad.ok && bad.err.contains("expected KEY=VALUE"), "{bad:?}");
    assert!(!bad.err.contains("hunter2"), "{bad:?}");

    let r = berth(
        &target,
        &[
            "create",
            "secret",
            "docker-registry",
            "regcred",
            "--docker-server",
            "registry.example:5000",
            "--docker-username",
            "ci",
            "--docker-password",
            "hunter2",
        ],
    )
    .await;
    assert!(r.ok, "{r:?}");
    let r = berth(&target, &["get", "secrets"]).await;
    assert!(
        r.out
            .lines()
            .any(|l| l.starts_with("regcred") && l.contains("kubernetes.io/dockerconfigjson")),
        "{r:?}"
    );

    let props = write(dir.path(), "game.properties", "enemies=aliens\nlives=3\n");
    let r = berth(
        &target,
        &[
            "create",
            "configmap",
            "game-config",
            "--from-file",
            &props,
            "--from-literal=mode=fast",
        ],
    )
    .await;
    assert!(r.ok, "{r:?}");
    let r = berth(&target, &["get", "configmap", "game-config", "-o", "json"]).await;
    let v: serde_json::Value = serde_json::from_str(&r.out).unwrap();
    assert_eq!(v["data"]["game.properties"], "enemies=aliens\nlives=3\n");
    assert_eq!(v["data"]["mode"], "fast");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_encryption_rotate_reencrypts_every_secret_and_drops_the_old_key() {
    use berth_apiserver::encryption::{key_names_in, KEYRING_NAME, KEYRING_NAMESPACE};
    use berth_apiserver::store::ObjectKey;
    let cluster = TestCluster::start(1).await.unwrap();
    let server = cluster.addr(0).to_string();
    let s = &Target::new(&cluster, &server);
    let data_dir = cluster.server(0).unwrap().data_dir().display().to_string();
    let r = berth(
        s,
        &[
            "create",
            "secret",
            "generic",
            "db",
            "--from-literal",
            "password=hunter2-rot",
        ],
    )
    .await;
    assert!(r.ok, "{r:?}");
    let key = ObjectKey::new(berth_proto::Kind::Secret, "default", "db");
    let store = cluster.server(0).unwrap().store().clone();
    assert_eq!(
        key_names_in(&store.get(&key).unwrap()),
        vec![Some("key1".to_string())]
    );
    let r = berth(
        s,
        &["secrets-encryption", "rotate", "--data-dir", &data_dir],
    )
    .await;
    assert!(r.ok, "{r:?}");
    assert!(
        r.out.contains("write key: key2")
            && r.out.contains("re-encrypted 1 Secrets")
            && r.out.contains("dropped keys: key1"),
        "{r:?}"
    );
    assert_eq!(
        key_names_in(&store.get(&key).unwrap()),
        vec![Some("key2".to_string())]
    );
    let ring = store
        .get(&ObjectKey::new(
            berth_proto::Kind::Secret,
            KEYRING_NAMESPACE,
            KEYRING_NAME,
        ))
        .unwrap();
    let names: Vec<&String> = ring["data"].as_object().unwrap().keys().collect();
    assert_eq!(names, vec!["key2"]);
    let r = berth(
        s,
        &["secrets-encryption", "status", "--data-dir", &data_dir],
    )
    .await;
    assert!(
        r.out.contains("Write key: key2") && r.out.contains("Keys: key2"),
        "{r:?}"
    );
    // Still readable, as base64, by the admin.
    let r = berth(s, &["get", "secret", "db", "-o", "json"]).await;
    let v: serde_json::Value = serde_json::from_str(&r.out).unwrap();
    use base64::Engine as _;
    assert_eq!(
        v["data"]["password"],
        base64::engine::general_purpose::STANDARD.encode("hunter2-rot")
    );
    cluster.shutdown().await.unwrap();
}
