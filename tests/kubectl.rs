//! Real Kubernetes clients against Berth's Kubernetes REST API: kubectl (the machine's, 1.32)
//! and the Python `kubernetes` client (PyPI), on an in-process three-member cluster with the
//! scheduler, the controllers and hollow nodes (fake agents that mark bound pods Ready). The
//! kubeconfig is the one `berth kubeconfig` writes, pointed at a follower, so every write also
//! crosses the follower-to-leader forwarding path.
//!
//! Needs kubectl and python3 with the `kubernetes` package (fails under CI=true without them;
//! .ci/run installs them).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

mod common;

use berth_apiserver::testing::{wait_until, TestCluster};
use berth_client::{Client, ClientConfig};
use berth_testkit::{HollowConfig, HollowNode};
use tokio::io::AsyncBufReadExt as _;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(60);

const DOCS_NGINX: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: nginx-deployment
  labels:
    app: nginx
spec:
  replicas: 3
  selector:
    matchLabels:
      app: nginx
  template:
    metadata:
      labels:
        app: nginx
    spec:
      containers:
      - name: nginx
        image: nginx:1.14.2
        ports:
        - containerPort: 80
---
apiVersion: v1
kind: Service
metadata:
  name: my-service
spec:
  selector:
    app: nginx
  ports:
    - protocol: TCP
      port: 80
      targetPort: 80
";

struct Env {
    cluster: Option<TestCluster>,
    nodes: Vec<HollowNode>,
    shutdown: CancellationToken,
    loops: Vec<tokio::task::JoinHandle<()>>,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl Env {
    async fn start() -> Env {
        let cluster = TestCluster::start(3).await.expect("three-member cluster");
        let shutdown = CancellationToken::new();
        let mut loops = Vec::new();
        for i in 0..cluster.len() {
            let server = cluster.server(i).expect("member");
            loops.push(
                berth::roles::spawn_leader_loops(server, shutdown.clone()).expect("leader loops"),
            );
        }
        let servers: Vec<String> = (0..cluster.len())
            .map(|i| cluster.addr(i).to_string())
            .collect();
        let client =
            Client::new(&servers, ClientConfig::with_tls(cluster.admin_tls())).expect("client");
        let mut nodes = Vec::new();
        for i in 0..2 {
            let cfg = HollowConfig {
                address: format!("127.0.0.{}", i + 1),
                heartbeat: Duration::from_millis(300),
                ..Default::default()
            };
            nodes.push(
                HollowNode::start(client.clone(), &format!("node-{i}"), cfg)
                    .await
                    .expect("hollow node"),
            );
        }
        // kubectl talks to a follower: writes are forwarded to the leader.
        let leader = cluster.leader().unwrap_or(0);
        let follower = (leader + 1) % cluster.len();
        let tls = cluster.admin_tls();
        let yaml = berth::cli::kubeconfig::kubeconfig_yaml(
            "berth",
            &[cluster.addr(follower).to_string()],
            &tls.ca_cert_pem,
            &tls.credential.cert_pem,
            &tls.credential.key_pem,
        )
        .expect("kubeconfig");
        let dir = tempfile::tempdir().expect("tmp");
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, yaml).expect("write kubeconfig");
        Env {
            cluster: Some(cluster),
            nodes,
            shutdown,
            loops,
            dir,
            kubeconfig,
        }
    }

    async fn stop(mut self) {
        for n in &mut self.nodes {
            n.stop().await;
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
            // No ~/.kube/cache from other runs.
            .env("KUBECACHEDIR", self.dir.path().join("cache"))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        c
    }

    /// Run kubectl; (exit success, stdout, stderr).
    async fn kubectl_status(&self, args: &[&str]) -> (bool, String, String) {
        self.kubectl_with(&self.kubeconfig, args).await
    }

    /// Run kubectl with another kubeconfig; (exit success, stdout, stderr).
    async fn kubectl_with(&self, kubeconfig: &Path, args: &[&str]) -> (bool, String, String) {
        let mut cmd = self.kubectl_cmd(args);
        cmd.env("KUBECONFIG", kubeconfig);
        let out = tokio::time::timeout(DEADLINE, cmd.output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} did not finish in {DEADLINE:?}"))
            .expect("run kubectl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Run kubectl, which must succeed; its stdout.
    async fn kubectl(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.kubectl_status(args).await;
        assert!(ok, "kubectl {args:?} failed:\nstdout: {out}\nstderr: {err}");
        out
    }
}

fn require_kubectl(test: &str) -> bool {
    berth_testkit::skip::require(
        test,
        berth_testkit::skip::command_works("kubectl", &["version", "--client"]),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_applies_rolls_out_scales_undoes_and_deletes_the_docs_nginx_deployment() {
    if !require_kubectl(
        "kubectl_applies_rolls_out_scales_undoes_and_deletes_the_docs_nginx_deployment",
    ) {
        return;
    }
    let env = Env::start().await;
    let manifest = env.file("nginx.yaml", DOCS_NGINX);
    let m = manifest.to_str().expect("path");

    let out = env.kubectl(&["apply", "-f", m]).await;
    assert!(
        out.contains("deployment.apps/nginx-deployment created"),
        "{out}"
    );
    assert!(out.contains("service/my-service created"), "{out}");
    env.kubectl(&[
        "wait",
        "--for=condition=Available",
        "deploy/nginx-deployment",
        "--timeout=60s",
    ])
    .await;
    env.kubectl(&[
        "rollout",
        "status",
        "deploy/nginx-deployment",
        "--timeout=60s",
    ])
    .await;

    // Tables: the same columns `berth get` prints; -o wide adds the priority-1 ones.
    let out = env.kubectl(&["get", "deploy"]).await;
    assert!(out.starts_with("NAME"), "{out}");
    assert!(out.contains("nginx-deployment   3/3"), "{out}");
    let out = env
        .kubectl(&["get", "pods", "-o", "wide", "-l", "app=nginx"])
        .await;
    assert!(out.contains("NODE"), "{out}");
    assert_eq!(out.matches("Running").count(), 3, "{out}");
    let out = env.kubectl(&["get", "all"]).await;
    assert!(out.contains("service/my-service"), "{out}");
    assert!(out.contains("deployment.apps/nginx-deployment"), "{out}");

    // Apply again with an edit: a strategic merge patch; a new ReplicaSet rolls out.
    let edited = DOCS_NGINX.replace("nginx:1.14.2", "nginx:1.16.1");
    std::fs::write(&manifest, edited).expect("edit");
    let out = env.kubectl(&["apply", "-f", m]).await;
    assert!(
        out.contains("deployment.apps/nginx-deployment configured"),
        "{out}"
    );
    assert!(out.contains("service/my-service unchanged"), "{out}");
    let out = env
        .kubectl(&[
            "rollout",
            "status",
            "deploy/nginx-deployment",
            "--timeout=60s",
        ])
        .await;
    assert!(out.contains("successfully rolled out"), "{out}");
    let out = env
        .kubectl(&["get", "deploy", "nginx-deployment", "-o", "json"])
        .await;
    let d: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(d["metadata"]["generation"], 2, "{d}");
    assert_eq!(d["status"]["observedGeneration"], 2, "{d}");
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:1.16.1"
    );

    let out = env
        .kubectl(&["rollout", "history", "deploy/nginx-deployment"])
        .await;
    assert!(out.contains("1 ") && out.contains("2 "), "{out}");
    let out = env
        .kubectl(&["rollout", "undo", "deploy/nginx-deployment"])
        .await;
    assert!(out.contains("rolled back"), "{out}");
    env.kubectl(&[
        "rollout",
        "status",
        "deploy/nginx-deployment",
        "--timeout=60s",
    ])
    .await;
    let image = env
        .kubectl(&[
            "get",
            "deploy",
            "nginx-deployment",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ])
        .await;
    assert_eq!(image, "nginx:1.14.2");

    // Scale through the scale subresource, seen by a watch.
    let mut watch = env
        .kubectl_cmd(&["get", "deploy", "nginx-deployment", "-w", "--no-headers"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl get -w");
    let mut lines = tokio::io::BufReader::new(watch.stdout.take().expect("stdout")).lines();
    let first = tokio::time::timeout(DEADLINE, lines.next_line())
        .await
        .expect("first watch line in time")
        .expect("read")
        .expect("a line");
    assert!(first.starts_with("nginx-deployment"), "{first}");
    let out = env
        .kubectl(&["scale", "deploy/nginx-deployment", "--replicas=5"])
        .await;
    assert!(out.contains("scaled"), "{out}");
    let saw_five = tokio::time::timeout(DEADLINE, async {
        while let Ok(Some(l)) = lines.next_line().await {
            if l.contains("5/5") {
                return l;
            }
        }
        String::new()
    })
    .await
    .expect("the watch shows 5/5 ready in time");
    assert!(saw_five.starts_with("nginx-deployment"), "{saw_five}");
    let _ = watch.kill().await;

    let out = env
        .kubectl(&["describe", "deploy", "nginx-deployment"])
        .await;
    assert!(out.contains("Replicas:"), "{out}");
    assert!(out.contains("ScalingReplicaSet"), "{out}");
    assert!(out.contains("NewReplicaSet:"), "{out}");

    // Errors: an unknown field names its path; a missing object is NotFound.
    let bad = env.file(
        "bad.yaml",
        &DOCS_NGINX.split("---").next().expect("deployment").replace(
            "containerPort: 80",
            "containerPort: 80\n          hostPortt: 8080",
        ),
    );
    let (ok, _, err) = env
        .kubectl_status(&["apply", "-f", bad.to_str().expect("path")])
        .await;
    assert!(!ok, "an invalid manifest was applied");
    assert!(err.contains("hostPortt"), "{err}");
    assert!(
        err.contains("spec.template.spec.containers[0].ports[0]"),
        "{err}"
    );
    let (ok, _, err) = env.kubectl_status(&["get", "deploy", "nope"]).await;
    assert!(!ok);
    assert!(
        err.contains("Error from server (NotFound): deployments.apps \"nope\" not found"),
        "{err}"
    );

    // The imperative commands send protobuf bodies (kubectl's typed clients).
    let out = env
        .kubectl(&[
            "create",
            "configmap",
            "app-config",
            "--from-literal=mode=fast",
        ])
        .await;
    assert!(out.contains("configmap/app-config created"), "{out}");
    env.kubectl(&[
        "create",
        "secret",
        "generic",
        "app-secret",
        "--from-literal=password=hunter2",
    ])
    .await;
    let b64 = env
        .kubectl(&[
            "get",
            "secret",
            "app-secret",
            "-o",
            "jsonpath={.data.password}",
        ])
        .await;
    assert_eq!(b64, "aHVudGVyMg==");
    let out = env
        .kubectl(&[
            "create",
            "deployment",
            "web",
            "--image=nginx:1.27",
            "--replicas=2",
            "--port=80",
        ])
        .await;
    assert!(out.contains("deployment.apps/web created"), "{out}");
    let out = env
        .kubectl(&["expose", "deployment", "web", "--port=80"])
        .await;
    assert!(out.contains("service/web exposed"), "{out}");
    env.kubectl(&["rollout", "status", "deploy/web", "--timeout=60s"])
        .await;
    let out = env
        .kubectl(&[
            "get",
            "cm/app-config",
            "deploy/web",
            "svc/web",
            "--no-headers",
        ])
        .await;
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(out.contains("2/2"), "{out}");
    let out = env
        .kubectl(&[
            "delete",
            "deploy/web",
            "svc/web",
            "cm/app-config",
            "secret/app-secret",
        ])
        .await;
    assert_eq!(out.matches("deleted").count(), 4, "{out}");

    let out = env.kubectl(&["delete", "-f", m, "--timeout=60s"]).await;
    assert!(
        out.contains("deployment.apps \"nginx-deployment\" deleted"),
        "{out}"
    );
    let (ok, _, err) = env
        .kubectl_status(&["get", "deploy", "nginx-deployment"])
        .await;
    assert!(!ok && err.contains("NotFound"), "{err}");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_python_kubernetes_client_lists_watches_patches_and_deletes_deployments() {
    let test = "the_python_kubernetes_client_lists_watches_patches_and_deletes_deployments";
    if !berth_testkit::skip::require(
        test,
        berth_testkit::skip::command_works("python3", &["-c", "import kubernetes"]),
    ) {
        return;
    }
    let env = Env::start().await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/k8s_clients/python_client.py");
    let out = tokio::time::timeout(
        DEADLINE,
        tokio::process::Command::new("python3")
            .arg(&script)
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
        out.status.success() && stdout.contains("python client ok"),
        "python client failed:\nstdout: {stdout}\nstderr: {stderr}"
    );
    // The writes went through the same store the gRPC API reads.
    let cluster = env.cluster.as_ref().expect("cluster");
    let client = Client::new(
        &[cluster.addr(0).to_string()],
        ClientConfig::with_tls(cluster.admin_tls()),
    )
    .expect("client");
    wait_until(DEADLINE, "py-web gone from the gRPC view too", || async {
        match client
            .get::<berth_proto::types::Deployment>("default", "py-web")
            .await
        {
            Err(berth_client::ClientError::NotFound(_)) => Some(()),
            _ => None,
        }
    })
    .await
    .expect("deleted");
    env.stop().await;
}

/// Pipelines authenticate with bearer tokens from `berth token create`: a read-only token
/// reads but cannot write or read Secrets (403 Forbidden), a full token writes, the stored
/// Secret holds only the token's hash, and a revoked token is refused (401 Unauthorized).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bearer_tokens_read_only_reads_full_writes_and_revoked_is_unauthorized() {
    if !require_kubectl("bearer_tokens_read_only_reads_full_writes_and_revoked_is_unauthorized") {
        return;
    }
    let env = Env::start().await;
    let cluster = env.cluster.as_ref().expect("cluster");
    // A follower serves the REST API: it checks the token against its own store.
    let server = {
        let leader = cluster.leader().unwrap_or(0);
        cluster.addr((leader + 1) % cluster.len()).to_string()
    };
    let target = common::Target::new(cluster, &server);
    let r = common::berth(
        &target,
        &[
            "token",
            "create",
            "--name",
            "ci-ro",
            "--ttl",
            "1h",
            "--read-only",
            "--kubeconfig",
        ],
    )
    .await;
    assert!(r.ok, "{r:?}");
    assert!(
        r.err.contains("read-only") && r.err.contains("shown only now"),
        "{r:?}"
    );
    let ro = env.file("ro.kubeconfig", &r.out);
    let r = common::berth(&target, &["token", "create", "--name", "ci", "--ttl", "1h"]).await;
    assert!(r.ok, "{r:?}");
    let token = r.out.trim().to_string();
    assert!(token.starts_with("berth-token.ci."), "{r:?}");
    let tls = cluster.admin_tls();
    let full = env.file(
        "full.kubeconfig",
        &berth::cli::kubeconfig::token_kubeconfig_yaml(
            "ci",
            std::slice::from_ref(&server),
            &tls.ca_cert_pem,
            &token,
        )
        .expect("kubeconfig"),
    );

    // The token is known at once on the follower (it was written through the leader).
    wait_until(DEADLINE, "the full token accepted", || async {
        env.kubectl_with(&full, &["get", "deploy"])
            .await
            .0
            .then_some(())
    })
    .await
    .expect("the full token is accepted");
    let (ok, out, err) = env
        .kubectl_with(
            &full,
            &["create", "configmap", "from-ci", "--from-literal=k=v"],
        )
        .await;
    assert!(ok, "a full token writes: {out}{err}");

    let (ok, out, err) = env
        .kubectl_with(&ro, &["get", "configmap", "from-ci", "-o", "name"])
        .await;
    assert!(
        ok && out.contains("configmap/from-ci"),
        "a read-only token reads: {out}{err}"
    );
    let (ok, _, err) = env
        .kubectl_with(
            &ro,
            &["create", "configmap", "from-ro", "--from-literal=k=v"],
        )
        .await;
    assert!(
        !ok && err.contains("is forbidden") && err.contains("read-only"),
        "{err}"
    );
    let (ok, _, err) = env.kubectl_with(&ro, &["get", "secrets", "-A"]).await;
    assert!(
        !ok && err.contains("forbidden"),
        "a read-only token reads no Secrets: {err}"
    );

    // Only the hash is stored.
    let stored = env
        .kubectl(&[
            "get",
            "secret",
            "-n",
            "berth-system",
            "api-token-ci",
            "-o",
            "json",
        ])
        .await;
    let secret_part = token.rsplit('.').next().expect("secret part");
    assert!(
        !stored.contains(secret_part),
        "the Secret must not hold the token: {stored}"
    );

    let r = common::berth(&target, &["token", "list"]).await;
    assert!(
        r.ok && r.out.contains("ci-ro") && r.out.contains("read-only"),
        "{r:?}"
    );
    let r = common::berth(&target, &["token", "revoke", "ci"]).await;
    assert!(r.ok, "{r:?}");
    wait_until(DEADLINE, "the revoked token refused", || async {
        // kubectl's words for a 401, with the server's message in parentheses.
        let (ok, _, err) = env.kubectl_with(&full, &["get", "deploy"]).await;
        (!ok && err.contains("must be logged in") && err.contains("revoked")).then_some(())
    })
    .await
    .expect("a revoked token is refused");
    let (ok, _, err) = env.kubectl_with(&ro, &["get", "deploy"]).await;
    assert!(ok, "the other token still works: {err}");
    let r = common::berth(&target, &["token", "revoke", "ci"]).await;
    assert!(!r.ok && r.err.contains("no API token named"), "{r:?}");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_namespaces_exist_refuse_content_when_missing_and_delete_everything_in_them() {
    let test = "kubectl_namespaces_exist_refuse_content_when_missing_and_delete_everything_in_them";
    if !require_kubectl(test) {
        return;
    }
    let env = Env::start().await;
    // default and berth-system exist from init (the namespace controller writes their objects).
    wait_until(DEADLINE, "system namespaces listed", || async {
        let (ok, out, _) = env.kubectl_status(&["get", "ns"]).await;
        (ok && out.contains("default") && out.contains("berth-system") && out.contains("Active"))
            .then_some(())
    })
    .await
    .expect("system namespaces listed");
    let (ok, _, err) = env
        .kubectl_status(&[
            "create",
            "configmap",
            "c",
            "--from-literal=a=b",
            "-n",
            "team-x",
        ])
        .await;
    assert!(
        !ok && err.contains("namespaces \"team-x\" not found"),
        "{err}"
    );
    let out = env.kubectl(&["create", "ns", "team-x"]).await;
    assert_eq!(out.trim(), "namespace/team-x created");
    let app = env.file("app.yaml", DOCS_NGINX);
    env.kubectl(&["apply", "-f", app.to_str().expect("path"), "-n", "team-x"])
        .await;
    env.kubectl(&[
        "create",
        "configmap",
        "c",
        "--from-literal=a=b",
        "-n",
        "team-x",
    ])
    .await;
    env.kubectl(&[
        "create",
        "secret",
        "generic",
        "s",
        "--from-literal=k=v",
        "-n",
        "team-x",
    ])
    .await;
    // A strategic merge patch works on the plaintext; the Secret reads back as base64.
    env.kubectl(&[
        "patch",
        "secret",
        "s",
        "-n",
        "team-x",
        "-p",
        r#"{"data":{"k2":"djI="}}"#,
    ])
    .await;
    let out = env
        .kubectl(&[
            "get",
            "secret",
            "s",
            "-n",
            "team-x",
            "-o",
            "jsonpath={.data.k} {.data.k2}",
        ])
        .await;
    assert_eq!(out, "dg== djI=");
    wait_until(DEADLINE, "the Deployment's pods", || async {
        let out = env
            .kubectl(&["get", "pods", "-n", "team-x", "-o", "name"])
            .await;
        (out.lines().count() == 3).then_some(())
    })
    .await
    .expect("the Deployment's pods");
    let (ok, _, err) = env.kubectl_status(&["delete", "ns", "default"]).await;
    assert!(
        !ok && err
            .contains("namespaces \"default\" is forbidden: this namespace may not be deleted"),
        "{err}"
    );
    // kubectl waits until the namespace is gone: everything in it went first.
    let out = env.kubectl(&["delete", "ns", "team-x"]).await;
    assert!(out.contains("namespace \"team-x\" deleted"), "{out}");
    let (ok, _, err) = env.kubectl_status(&["get", "ns", "team-x"]).await;
    assert!(!ok && err.contains("not found"), "{err}");
    let cluster = env.cluster.as_ref().expect("cluster");
    let client = Client::new(
        &[cluster.addr(0).to_string()],
        ClientConfig::with_tls(cluster.admin_tls()),
    )
    .expect("client");
    for kind in [
        berth_proto::Kind::Deployment,
        berth_proto::Kind::ReplicaSet,
        berth_proto::Kind::Pod,
        berth_proto::Kind::Service,
        berth_proto::Kind::ConfigMap,
        berth_proto::Kind::Secret,
    ] {
        let (left, _) = client
            .list_dyn(kind, Some("team-x"), "")
            .await
            .expect("list");
        assert!(left.is_empty(), "{kind} left in team-x: {}", left.len());
    }
    env.stop().await;
}
