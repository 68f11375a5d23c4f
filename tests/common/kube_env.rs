//! An in-process three-member cluster with its leader loops (scheduler, controllers) and a
//! kubeconfig as `berth kubeconfig` writes it, for tests of Kubernetes clients against the
//! REST API. Included with `#[path = "common/kube_env.rs"] mod kube_env;`.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use berth_apiserver::testing::TestCluster;
use tokio_util::sync::CancellationToken;

pub const DEADLINE: Duration = Duration::from_secs(60);

pub struct KubeEnv {
    pub cluster: Option<TestCluster>,
    pub shutdown: CancellationToken,
    pub loops: Vec<tokio::task::JoinHandle<()>>,
    pub dir: tempfile::TempDir,
    /// Pointed at `member`.
    pub kubeconfig: PathBuf,
    pub member: usize,
}

impl KubeEnv {
    /// A cluster whose kubeconfig points at a follower (writes cross the forwarding path).
    pub async fn start() -> KubeEnv {
        let cluster = TestCluster::start(3).await.expect("three-member cluster");
        let leader = cluster.leader().unwrap_or(0);
        let follower = (leader + 1) % cluster.len();
        KubeEnv::with_member(cluster, follower)
    }

    pub fn with_member(cluster: TestCluster, member: usize) -> KubeEnv {
        let shutdown = CancellationToken::new();
        let mut loops = Vec::new();
        for i in 0..cluster.len() {
            let server = cluster.server(i).expect("member");
            loops.push(
                berth::roles::spawn_leader_loops(server, shutdown.clone()).expect("leader loops"),
            );
        }
        let dir = tempfile::tempdir().expect("tmp");
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_for(&cluster, member)).expect("write kubeconfig");
        KubeEnv {
            cluster: Some(cluster),
            shutdown,
            loops,
            dir,
            kubeconfig,
            member,
        }
    }

    pub fn cluster(&self) -> &TestCluster {
        self.cluster.as_ref().expect("cluster")
    }

    pub fn cluster_mut(&mut self) -> &mut TestCluster {
        self.cluster.as_mut().expect("cluster")
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        for l in self.loops.drain(..) {
            let _ = l.await;
        }
        if let Some(c) = self.cluster.take() {
            c.shutdown().await.expect("cluster shutdown");
        }
    }

    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).expect("write manifest");
        p
    }

    pub fn kubectl_cmd(&self, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("kubectl");
        c.args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("KUBECACHEDIR", self.dir.path().join("cache"))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        c
    }

    /// Run kubectl; (exit code, stdout, stderr).
    pub async fn kubectl_code(&self, args: &[&str]) -> (i32, String, String) {
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
    pub async fn kubectl(&self, args: &[&str]) -> String {
        let (code, out, err) = self.kubectl_code(args).await;
        assert_eq!(
            code, 0,
            "kubectl {args:?} failed:\nstdout: {out}\nstderr: {err}"
        );
        out
    }

    /// `kubectl get KIND NAME -o json`, parsed.
    pub async fn get_json(&self, what: &[&str]) -> serde_json::Value {
        let mut args = vec!["get"];
        args.extend_from_slice(what);
        args.extend_from_slice(&["-o", "json", "--show-managed-fields"]);
        serde_json::from_str(&self.kubectl(&args).await).expect("kubectl -o json")
    }
}

/// The kubeconfig `berth kubeconfig` writes, for one member.
pub fn kubeconfig_for(cluster: &TestCluster, member: usize) -> String {
    let tls = cluster.admin_tls();
    berth::cli::kubeconfig::kubeconfig_yaml(
        "berth",
        &[cluster.addr(member).to_string()],
        &tls.ca_cert_pem,
        &tls.credential.cert_pem,
        &tls.credential.key_pem,
    )
    .expect("kubeconfig")
}

pub fn require_kubectl(test: &str) -> bool {
    berth_testkit::skip::require(
        test,
        berth_testkit::skip::command_works("kubectl", &["version", "--client"]),
    )
}
