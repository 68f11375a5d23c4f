//! kubectl (the machine's, 1.32) reading pod logs and running commands in pods through
//! Berth's Kubernetes REST API: `pods/log` (the API server streams from the pod's agent over
//! mutual TLS) and `pods/exec` (WebSocket, v5.channel.k8s.io, proxied to the agent's exec
//! endpoint). One API server with its scheduler and controllers, and real agents: the process
//! runtime for logs, the Docker runtime (image berth-busybox:1, built by
//! images/build-busybox.sh) for exec.
//!
//! Needs kubectl (and Docker for the exec tests): fails under CI=true without them.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use berth_apiserver::testing::{wait_until, TestCluster};
use berth_client::{Client, ClientConfig};
use berth_proto::types::Pod;
use tokio::io::AsyncBufReadExt as _;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(60);

struct Env {
    cluster: Option<TestCluster>,
    agent: Option<berth_agent::AgentHandle>,
    client: Client,
    shutdown: CancellationToken,
    loops: Vec<tokio::task::JoinHandle<()>>,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl Env {
    /// One server with its leader loops, an agent named `node` on `runtime`, and a kubeconfig
    /// with the admin credential.
    async fn start(node: &str, runtime: berth_agent::RuntimeKind, ports: &str) -> Env {
        let cluster = TestCluster::start(1).await.expect("cluster");
        let shutdown = CancellationToken::new();
        let server = cluster.server(0).expect("member");
        let loops =
            vec![berth::roles::spawn_leader_loops(server, shutdown.clone()).expect("loops")];
        let addr = cluster.addr(0).to_string();
        let client = Client::new(
            std::slice::from_ref(&addr),
            ClientConfig::with_tls(cluster.admin_tls()),
        )
        .expect("client");
        let dir = tempfile::tempdir().expect("tmp");
        let agent = berth_agent::start(
            berth_agent::AgentArgs {
                server: vec![addr.clone()],
                token: Some(berth_tls::Secret::new(cluster.token())),
                name: Some(node.into()),
                address: "127.0.0.1".into(),
                data_dir: Some(dir.path().join("agent")),
                runtime: Some(runtime),
                capacity: Some("cpu=4,memory=4Gi".into()),
                host_port_range: ports.into(),
                listen: Some("127.0.0.1:0".into()),
                no_proxy: true,
                restart_backoff_ms: 300,
                heartbeat_ms: 500,
                ..Default::default()
            },
            CancellationToken::new(),
        )
        .await
        .expect("agent");
        let tls = cluster.admin_tls();
        let yaml = berth::cli::kubeconfig::kubeconfig_yaml(
            "berth",
            &[addr],
            &tls.ca_cert_pem,
            &tls.credential.cert_pem,
            &tls.credential.key_pem,
        )
        .expect("kubeconfig");
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, yaml).expect("write kubeconfig");
        Env {
            cluster: Some(cluster),
            agent: Some(agent),
            client,
            shutdown,
            loops,
            dir,
            kubeconfig,
        }
    }

    async fn stop(mut self) {
        if let Some(a) = self.agent.take() {
            // A stopped agent leaves workloads running by design: stop them explicitly.
            a.stop_workloads().await;
        }
        self.shutdown.cancel();
        for l in self.loops.drain(..) {
            let _ = l.await;
        }
        if let Some(c) = self.cluster.take() {
            c.shutdown().await.expect("cluster shutdown");
        }
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).expect("write manifest");
        p
    }

    fn kubectl_cmd(&self, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("kubectl");
        c.args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("KUBECACHEDIR", self.dir.path().join("cache"))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        c
    }

    /// Run kubectl; (exit code, stdout, stderr).
    async fn kubectl_code(&self, args: &[&str]) -> (i32, String, String) {
        let out = tokio::time::timeout(DEADLINE, self.kubectl_cmd(args).output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} did not finish in {DEADLINE:?}"))
            .expect("run kubectl");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Run kubectl, which must succeed; its stdout.
    async fn kubectl(&self, args: &[&str]) -> String {
        let (code, out, err) = self.kubectl_code(args).await;
        assert_eq!(
            code, 0,
            "kubectl {args:?} failed:\nstdout: {out}\nstderr: {err}"
        );
        out
    }

    async fn wait_running(&self, name: &str) {
        let client = self.client.clone();
        let name = name.to_string();
        wait_until(DEADLINE, &format!("pod {name} Running"), || {
            let client = client.clone();
            let name = name.clone();
            async move {
                client
                    .get::<Pod>("default", &name)
                    .await
                    .ok()
                    .and_then(|p| p.status)
                    .is_some_and(|s| s.phase == "Running")
                    .then_some(())
            }
        })
        .await
        .unwrap();
    }
}

fn require_kubectl(test: &str) -> bool {
    berth_testkit::skip::require(
        test,
        berth_testkit::skip::command_works("kubectl", &["version", "--client"]),
    )
}

/// `kubectl logs -f ...` in the background; its stdout lines arrive on the receiver.
fn follow(
    env: &Env,
    args: &[&str],
) -> (tokio::process::Child, tokio::sync::mpsc::Receiver<String>) {
    let mut cmd = env.kubectl_cmd(args);
    cmd.stdout(Stdio::piped()).stderr(Stdio::null());
    let mut child = cmd.spawn().expect("spawn kubectl");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            if tx.send(l).await.is_err() {
                return;
            }
        }
    });
    (child, rx)
}

async fn expect_line(rx: &mut tokio::sync::mpsc::Receiver<String>, want: &str) {
    let got = tokio::time::timeout(DEADLINE, async {
        while let Some(l) = rx.recv().await {
            if l == want {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(got, Ok(true), "kubectl logs -f never printed {want:?}");
}

fn go_file(dir: &Path) -> String {
    dir.join("go").display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_logs_reads_tails_follows_and_picks_containers_through_the_api_server() {
    if !require_kubectl(
        "kubectl_logs_reads_tails_follows_and_picks_containers_through_the_api_server",
    ) {
        return;
    }
    let env = Env::start("log-node", berth_agent::RuntimeKind::Process, "47900-47999").await;
    let go = go_file(env.dir.path());
    let pod = format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: talker
spec:
  nodeName: log-node
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: none
    command: [sh, -c, 'echo one; echo two; echo three; while [ ! -f {go} ]; do sleep 0.1; done; echo four; exec sleep 60']
  - name: side
    image: none
    command: [sh, -c, 'echo from-the-sidecar; exec sleep 60']
---
apiVersion: v1
kind: Pod
metadata:
  name: stuck
spec:
  nodeSelector: {{nowhere: yes-please}}
  containers:
  - name: main
    image: none
    command: [sleep, '60']
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: greeter
spec:
  replicas: 1
  selector:
    matchLabels: {{app: greeter}}
  template:
    metadata:
      labels: {{app: greeter}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: none
        command: [sh, -c, 'echo hello-from-the-deployment; exec sleep 60']
"
    );
    let m = env.file("pods.yaml", &pod);
    env.kubectl(&["apply", "-f", m.to_str().unwrap()]).await;
    env.wait_running("talker").await;

    // The first lines are in once the container is running; wait for all three.
    wait_until(
        DEADLINE,
        "kubectl logs talker shows three lines",
        || async {
            (env.kubectl_code(&["logs", "talker", "-c", "main"]).await.1 == "one\ntwo\nthree\n")
                .then_some(())
        },
    )
    .await
    .unwrap();
    assert_eq!(
        env.kubectl(&["logs", "talker", "-c", "main", "--tail=1"])
            .await,
        "three\n"
    );
    assert_eq!(
        env.kubectl(&["logs", "talker", "-c", "side"]).await,
        "from-the-sidecar\n"
    );
    assert_eq!(
        env.kubectl(&["logs", "talker", "-c", "main", "--limit-bytes=5"])
            .await,
        "one\nt"
    );

    // -f: the stream is open before the container writes "four".
    let (mut child, mut rx) = follow(&env, &["logs", "-f", "talker", "-c", "main"]);
    expect_line(&mut rx, "three").await;
    std::fs::write(&go, "").unwrap();
    expect_line(&mut rx, "four").await;
    child.kill().await.unwrap();

    // Errors as Kubernetes words them.
    let (code, _, err) = env.kubectl_code(&["logs", "talker", "-c", "nope"]).await;
    assert_ne!(code, 0);
    assert!(
        err.contains("container nope is not valid for pod talker"),
        "{err}"
    );
    let (code, _, err) = env.kubectl_code(&["logs", "stuck"]).await;
    assert_ne!(code, 0);
    assert!(
        err.contains("container \"main\" in pod \"stuck\" is waiting to start: ContainerCreating"),
        "{err}"
    );
    let (code, _, err) = env.kubectl_code(&["logs", "ghost"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("pods \"ghost\" not found"), "{err}");
    let (code, _, err) = env
        .kubectl_code(&["logs", "talker", "-c", "main", "--timestamps"])
        .await;
    assert_ne!(code, 0);
    assert!(err.contains("timestamps is not supported"), "{err}");

    // deploy/NAME: kubectl finds a pod of the deployment, then reads its log.
    wait_until(DEADLINE, "kubectl logs deploy/greeter", || async {
        (env.kubectl_code(&["logs", "deploy/greeter"]).await.1 == "hello-from-the-deployment\n")
            .then_some(())
    })
    .await
    .unwrap();

    // Discovery names the subresource.
    let out = env.kubectl(&["get", "--raw", "/api/v1"]).await;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let log = v["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "pods/log")
        .expect("pods/log in discovery");
    assert_eq!(log["verbs"], serde_json::json!(["get"]));
    env.stop().await;
}

/// Removes the Docker containers of agent `node`, even when the test panics.
struct RemoveNodeContainers(&'static str);
impl Drop for RemoveNodeContainers {
    fn drop(&mut self) {
        let filter = format!("label=berth.node={}", self.0);
        if let Ok(out) = std::process::Command::new("docker")
            .args(["ps", "-aq", "--filter", &filter])
            .output()
        {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = std::process::Command::new("docker")
                    .args(["rm", "-f", id])
                    .output();
            }
        }
    }
}

const SHELL_POD: &str = "apiVersion: v1
kind: Pod
metadata:
  name: shell
spec:
  nodeName: exec-node
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: berth-busybox:1
    imagePullPolicy: Never
    command: [/bin/busybox, sh, -c, '/bin/busybox --install -s /bin && exec sleep 300']
";

/// kubectl with `input` on its stdin; (exit code, stdout, stderr).
async fn kubectl_with_input(env: &Env, args: &[&str], input: &[u8]) -> (i32, String, String) {
    use tokio::io::AsyncWriteExt as _;
    let mut cmd = env.kubectl_cmd(args);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn kubectl");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(DEADLINE, child.wait_with_output())
        .await
        .expect("kubectl exec -i finishes once its input ends")
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_exec_runs_commands_in_a_docker_container_with_stdin_and_exit_codes() {
    let test = "kubectl_exec_runs_commands_in_a_docker_container_with_stdin_and_exit_codes";
    if !require_kubectl(test)
        || !berth_testkit::skip::require(
            test,
            berth_testkit::skip::command_works("docker", &["info"]),
        )
    {
        return;
    }
    berth_testkit::images::build_busybox();
    let _cleanup = RemoveNodeContainers("exec-node");
    let env = Env::start("exec-node", berth_agent::RuntimeKind::Docker, "48000-48099").await;
    let m = env.file("shell.yaml", SHELL_POD);
    env.kubectl(&["apply", "-f", m.to_str().unwrap()]).await;
    env.wait_running("shell").await;

    // Once the shell has installed busybox's applets, `echo` is a command like anywhere.
    let last = std::sync::Mutex::new(String::new());
    let r = wait_until(DEADLINE, "kubectl exec shell -- echo hi", || async {
        let (code, out, err) = env
            .kubectl_code(&["exec", "shell", "--", "echo", "hi"])
            .await;
        *last.lock().unwrap() = format!("exit {code}, stdout {out:?}, stderr {err:?}");
        (out == "hi\n").then_some(())
    })
    .await;
    assert!(r.is_ok(), "{r:?}; last try: {}", last.lock().unwrap());
    let (code, out, err) = env
        .kubectl_code(&["exec", "shell", "--", "sh", "-c", "echo out; echo err >&2"])
        .await;
    assert_eq!((code, out.as_str()), (0, "out\n"), "{err}");
    assert!(err.contains("err"), "stderr comes back on stderr: {err:?}");

    // The exit code passes through kubectl.
    let (code, _, err) = env
        .kubectl_code(&["exec", "shell", "--", "sh", "-c", "exit 3"])
        .await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("command terminated with exit code 3"), "{err}");

    // -i: the piped input reaches the command; its end closes the command's stdin.
    let (code, out, err) = kubectl_with_input(
        &env,
        &["exec", "-i", "shell", "--", "sh", "-c", "cat; echo done"],
        b"piped-in\nsecond\n",
    )
    .await;
    assert_eq!(
        (code, out.as_str()),
        (0, "piped-in\nsecond\ndone\n"),
        "{err}"
    );

    // Errors as Kubernetes words them.
    let (code, _, err) = env
        .kubectl_code(&["exec", "shell", "-c", "nope", "--", "true"])
        .await;
    assert_ne!(code, 0);
    assert!(
        err.contains("container nope is not valid for pod shell"),
        "{err}"
    );
    let (code, _, err) = env.kubectl_code(&["exec", "ghost", "--", "true"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("pods \"ghost\" not found"), "{err}");

    // berth exec: the same pods/exec path, the binary's exit status is the command's.
    let berth = |args: &[&str], input: &[u8]| {
        let cluster = env.cluster.as_ref().unwrap();
        let mut argv = vec![
            "--server".to_string(),
            cluster.addr(0).to_string(),
            "--config".to_string(),
            cluster.admin_config_path().display().to_string(),
            "exec".to_string(),
        ];
        argv.extend(args.iter().map(|a| a.to_string()));
        let input = input.to_vec();
        async move {
            use tokio::io::AsyncWriteExt as _;
            let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_berth"))
                .args(&argv)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("spawn berth");
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(&input).await.unwrap();
            drop(stdin);
            let out = tokio::time::timeout(DEADLINE, child.wait_with_output())
                .await
                .expect("berth exec finishes")
                .unwrap();
            (
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    let (code, out, err) = berth(
        &["shell", "--", "sh", "-c", "echo from-berth; echo e >&2"],
        b"",
    )
    .await;
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (0, "from-berth\n", "e\n")
    );
    let (code, _, err) = berth(&["shell", "--", "sh", "-c", "exit 7"], b"").await;
    assert_eq!(code, 7, "{err}");
    assert!(err.contains("command terminated with exit code 7"), "{err}");
    let (code, out, err) = berth(&["-i", "shell", "--", "wc", "-l"], b"a\nb\nc\n").await;
    assert_eq!((code, out.trim()), (0, "3"), "{err}");
    let (code, out, err) = berth(&["-t", "shell", "--", "tty"], b"").await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("/dev/pts/"),
        "-t allocates a terminal: {out:?}"
    );
    let (code, _, err) = berth(&["shell", "-c", "nope", "--", "true"], b"").await;
    assert_eq!(code, 1);
    assert!(
        err.contains("container nope is not valid for pod shell"),
        "{err}"
    );

    // The Python client (websocket-client, its own protocol list) on the same endpoint.
    if berth_testkit::skip::require(
        "kubectl_exec_runs_commands_in_a_docker_container_with_stdin_and_exit_codes (python)",
        berth_testkit::skip::command_works("python3", &["-c", "import kubernetes"]),
    ) {
        let script = r#"
from kubernetes import client, config
from kubernetes.stream import stream
config.load_kube_config()
v1 = client.CoreV1Api()
out = stream(v1.connect_get_namespaced_pod_exec, "shell", "default",
             command=["sh", "-c", "echo py-hi"], stderr=True, stdin=False, stdout=True, tty=False)
print("out=" + out.strip())
resp = stream(v1.connect_get_namespaced_pod_exec, "shell", "default",
              command=["sh", "-c", "exit 5"], stderr=True, stdin=False, stdout=True, tty=False,
              _preload_content=False)
resp.run_forever(timeout=20)
print("code=%s" % resp.returncode)
"#;
        let out = tokio::time::timeout(
            DEADLINE,
            tokio::process::Command::new("python3")
                .args(["-c", script])
                .env("KUBECONFIG", &env.kubeconfig)
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("the python client finished in time")
        .expect("run python3");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.contains("out=py-hi") && stdout.contains("code=5"),
            "python exec failed:\nstdout: {stdout}\nstderr: {stderr}"
        );
    }

    let out = env.kubectl(&["get", "--raw", "/api/v1"]).await;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let exec = v["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "pods/exec")
        .expect("pods/exec in discovery");
    assert_eq!(exec["verbs"], serde_json::json!(["create", "get"]));
    env.stop().await;
}
