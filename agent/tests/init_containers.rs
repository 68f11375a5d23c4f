//! Component tests of init containers, native sidecars and lifecycle hooks: the whole agent
//! on the process runtime against a real in-process API server. The workloads are `sh`
//! scripts that leave marks in a shared temp dir, so order is read back from the files.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use berth_agent::{AgentArgs, AgentHandle, RuntimeKind};
use berth_apiserver::testing::TestCluster;
use berth_client::{Client, ClientConfig};
use berth_proto::types::{
    Container, ContainerStatus, Event, ExecAction, Lifecycle, LifecycleHandler, ObjectMeta, Pod,
    PodSpec, Probe,
};
use tokio_util::sync::CancellationToken;

mod common;

const T: Duration = Duration::from_secs(40);

async fn start_agent(cluster: &TestCluster, dir: &Path, seed: u16) -> AgentHandle {
    let start = 40000 + seed * 100;
    let args = AgentArgs {
        server: vec![cluster.addr(0).to_string()],
        token: Some(berth_tls::Secret::new(cluster.token())),
        name: Some("node-a".to_string()),
        address: "127.0.0.1".into(),
        data_dir: Some(dir.to_path_buf()),
        runtime: Some(RuntimeKind::Process),
        capacity: Some("cpu=2,memory=2Gi".into()),
        host_port_range: format!("{start}-{}", start + 99),
        listen: Some("127.0.0.1:0".into()),
        no_proxy: true,
        restart_backoff_ms: 300,
        heartbeat_ms: 500,
        ..AgentArgs::default()
    };
    berth_agent::start(args, CancellationToken::new())
        .await
        .unwrap()
}

/// Kills every process working under `dir` (the process runtime's containers of one agent)
/// when dropped, so no workload outlives its test, also on failure.
struct KillUnder(std::path::PathBuf);

impl Drop for KillUnder {
    fn drop(&mut self) {
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return;
        };
        for p in procs.flatten() {
            let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let under =
                std::fs::read_link(p.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(&self.0));
            if under {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// Dropped in field order: the agent's workloads are killed last.
struct Env {
    _cluster: TestCluster,
    client: Client,
    _agent: AgentHandle,
    _data: tempfile::TempDir,
    /// The dir the workloads write their marks in.
    marks: tempfile::TempDir,
    _kill: KillUnder,
}

async fn env(seed: u16) -> Env {
    let cluster = TestCluster::start(1).await.unwrap();
    let server = cluster.addr(0).to_string();
    let client = Client::new(
        &[server.as_str()],
        ClientConfig::with_tls(cluster.admin_tls()),
    )
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let agent = start_agent(&cluster, data.path(), seed).await;
    Env {
        _kill: KillUnder(data.path().to_path_buf()),
        _cluster: cluster,
        client,
        _agent: agent,
        _data: data,
        marks: tempfile::tempdir().unwrap(),
    }
}

impl Env {
    fn path(&self, f: &str) -> String {
        self.marks.path().join(f).display().to_string()
    }
    fn read(&self, f: &str) -> String {
        std::fs::read_to_string(self.marks.path().join(f)).unwrap_or_default()
    }
    async fn pod(&self, name: &str) -> Option<Pod> {
        self.client.get::<Pod>("default", name).await.ok()
    }
    async fn wait_pod(&self, what: &str, name: &str, f: impl Fn(&Pod) -> bool) -> Pod {
        common::wait_for(T, what, || async { self.pod(name).await.filter(|p| f(p)) }).await
    }
}

fn sh(name: &str, script: &str) -> Container {
    Container {
        name: name.into(),
        image: "none".into(),
        command: vec!["sh".into(), "-c".into(), script.into()],
        ..Default::default()
    }
}

fn pod(name: &str, inits: Vec<Container>, apps: Vec<Container>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: name.into(),
            namespace: "default".into(),
            ..Default::default()
        },
        spec: PodSpec {
            node_name: "node-a".into(),
            termination_grace_period_seconds: Some(5),
            init_containers: inits,
            containers: apps,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn init_statuses(p: &Pod) -> &[ContainerStatus] {
    p.status
        .as_ref()
        .map(|s| s.init_container_statuses.as_slice())
        .unwrap_or_default()
}

fn app_status(p: &Pod) -> Option<&ContainerStatus> {
    p.status.as_ref().and_then(|s| s.container_statuses.first())
}

fn condition(p: &Pod, t: &str) -> Option<String> {
    p.status
        .as_ref()
        .and_then(|s| berth_proto::types::condition(&s.conditions, t))
        .map(|c| c.status.clone())
}

fn exec(cmd: &str) -> LifecycleHandler {
    LifecycleHandler {
        exec: Some(ExecAction {
            command: vec!["sh".into(), "-c".into(), cmd.into()],
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_init_containers_run_in_order_and_complete_before_the_app_starts() {
    let e = env(61).await;
    let order = e.path("order");
    let p = pod(
        "ordered",
        vec![
            sh("one", &format!("sleep 1; echo one >> {order}")),
            sh("two", &format!("sleep 1; echo two >> {order}")),
        ],
        vec![sh(
            "app",
            &format!("echo app >> {order}; cp {order} {order}.seen; exec sleep 1000"),
        )],
    );
    e.client.create(&p).await.unwrap();
    // While `two` runs: one completed, the pod Pending, not Initialized, the app waiting.
    let mid = e
        .wait_pod("the second init container running", "ordered", |p| {
            let s = init_statuses(p);
            s.len() == 2 && s[1].state.running.is_some()
        })
        .await;
    let s = init_statuses(&mid);
    let t = s[0].state.terminated.as_ref().expect("one terminated");
    assert_eq!((t.exit_code, t.reason.as_str()), (0, "Completed"));
    assert_eq!(mid.status.as_ref().unwrap().phase, "Pending");
    assert_eq!(condition(&mid, "Initialized").as_deref(), Some("False"));
    assert_eq!(
        app_status(&mid)
            .and_then(|c| c.state.waiting.as_ref())
            .map(|w| w.reason.as_str()),
        Some("PodInitializing")
    );
    assert_eq!(e.read("order"), "one\n");

    let ready = e.wait_pod("pod Ready", "ordered", |p| p.is_ready()).await;
    assert_eq!(e.read("order.seen"), "one\ntwo\napp\n");
    assert_eq!(condition(&ready, "Initialized").as_deref(), Some("True"));
    assert_eq!(ready.status.as_ref().unwrap().phase, "Running");
    for s in init_statuses(&ready) {
        assert_eq!(s.restart_count, 0, "{}", s.name);
        assert_eq!(s.state.terminated.as_ref().map(|t| t.exit_code), Some(0));
    }
    // Nothing runs twice.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(e.read("order"), "one\ntwo\napp\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_init_container_keeps_the_app_from_starting_and_crash_loops_or_fails_the_pod() {
    let e = env(62).await;
    let app_mark = e.path("app-ran");
    let app = sh("app", &format!("touch {app_mark}; exec sleep 1000"));
    let failing = pod("failing", vec![sh("init", "exit 3")], vec![app.clone()]);
    e.client.create(&failing).await.unwrap();
    let looping = e
        .wait_pod("the init container in CrashLoopBackOff", "failing", |p| {
            init_statuses(p).first().is_some_and(|s| {
                s.restart_count >= 1
                    && s.state
                        .waiting
                        .as_ref()
                        .is_some_and(|w| w.reason == "CrashLoopBackOff")
            })
        })
        .await;
    let s = &init_statuses(&looping)[0];
    assert_eq!(
        s.last_state
            .as_ref()
            .and_then(|l| l.terminated.as_ref())
            .map(|t| t.exit_code),
        Some(3)
    );
    assert_eq!(looping.status.as_ref().unwrap().phase, "Pending");
    assert_eq!(
        app_status(&looping)
            .and_then(|c| c.state.waiting.as_ref())
            .map(|w| w.reason.as_str()),
        Some("PodInitializing")
    );
    assert!(
        !Path::new(&app_mark).exists(),
        "the app must not have started"
    );

    // restartPolicy Never: the pod fails, the init container shows its exit.
    let mut never = pod("never", vec![sh("init", "exit 4")], vec![app]);
    never.spec.restart_policy = Some("Never".into());
    e.client.create(&never).await.unwrap();
    let failed = e
        .wait_pod("pod Failed", "never", |p| {
            p.status.as_ref().is_some_and(|s| s.phase == "Failed")
        })
        .await;
    let t = init_statuses(&failed)[0]
        .state
        .terminated
        .clone()
        .expect("terminated");
    assert_eq!((t.exit_code, t.reason.as_str()), (4, "Error"));
    assert_eq!(init_statuses(&failed)[0].restart_count, 0);
    assert!(
        !Path::new(&app_mark).exists(),
        "the app must not have started"
    );
    let (events, _) = e.client.list::<Event>(Some("default"), "").await.unwrap();
    assert!(
        events
            .iter()
            .any(|ev| ev.reason == "BackOff" && ev.message.contains("init")),
        "{:?}",
        events
            .iter()
            .map(|e| (&e.reason, &e.message))
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_sidecar_starts_first_runs_alongside_the_app_and_is_restarted_when_it_exits() {
    let e = env(63).await;
    let pid = e.path("sidecar.pid");
    let starts = e.path("sidecar.starts");
    let seen = e.path("app.saw-sidecar");
    let mut sidecar = sh(
        "proxy",
        &format!("echo start >> {starts}; echo $$ > {pid}; exec sleep 1000"),
    );
    sidecar.restart_policy = Some("Always".into());
    // The next init container waits for the startup probe.
    sidecar.startup_probe = Some(Probe {
        exec: Some(ExecAction {
            command: vec!["test".into(), "-s".into(), pid.clone()],
        }),
        period_seconds: Some(1),
        ..Default::default()
    });
    let p = pod(
        "sidecar",
        vec![sidecar, sh("check", &format!("test -s {pid}"))],
        vec![sh(
            "app",
            &format!("kill -0 $(cat {pid}) && touch {seen}; exec sleep 1000"),
        )],
    );
    e.client.create(&p).await.unwrap();
    let ready = e.wait_pod("pod Ready", "sidecar", |p| p.is_ready()).await;
    assert!(Path::new(&seen).exists(), "the app saw the sidecar running");
    let side = &init_statuses(&ready)[0];
    assert!(side.state.running.is_some() && side.ready && side.started == Some(true));
    assert_eq!(
        init_statuses(&ready)[1]
            .state
            .terminated
            .as_ref()
            .map(|t| t.exit_code),
        Some(0)
    );

    // The sidecar exits: it is restarted; the app is not.
    let first: String = e.read("sidecar.pid").trim().to_string();
    let killed = std::process::Command::new("kill")
        .arg(&first)
        .status()
        .unwrap();
    assert!(killed.success());
    let after = e
        .wait_pod("the sidecar restarted and running", "sidecar", |p| {
            init_statuses(p)
                .first()
                .is_some_and(|s| s.restart_count == 1 && s.state.running.is_some() && s.ready)
        })
        .await;
    assert_eq!(app_status(&after).map(|c| c.restart_count), Some(0));
    assert!(app_status(&after).is_some_and(|c| c.state.running.is_some()));
    assert_eq!(e.read("sidecar.starts"), "start\nstart\n");
    // The init container that completed is not re-run.
    assert_eq!(init_statuses(&after)[1].restart_count, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_start_runs_after_start_and_pre_stop_runs_before_sigterm() {
    let e = env(64).await;
    let log = e.path("log");
    let mut app = sh(
        "app",
        &format!(
            "trap 'echo term >> {log}; exit 0' TERM; echo up >> {log}; while true; do sleep 0.1; done"
        ),
    );
    app.lifecycle = Some(Lifecycle {
        post_start: Some(exec(&format!("echo poststart >> {log}"))),
        pre_stop: Some(exec(&format!(
            "echo prestop >> {log}; sleep 1; echo prestop-done >> {log}"
        ))),
    });
    e.client
        .create(&pod("hooks", vec![], vec![app]))
        .await
        .unwrap();
    e.wait_pod("pod Ready", "hooks", |p| p.is_ready()).await;
    common::wait_for(T, "postStart ran", || async {
        e.read("log").contains("poststart").then_some(())
    })
    .await;
    e.client
        .delete(berth_proto::Kind::Pod, "default", "hooks", None)
        .await
        .unwrap();
    common::wait_for(T, "SIGTERM handled", || async {
        e.read("log").contains("term\n").then_some(())
    })
    .await;
    let lines: Vec<String> = e
        .read("log")
        .lines()
        .filter(|l| *l != "up" && *l != "poststart")
        .map(String::from)
        .collect();
    assert_eq!(
        lines,
        vec!["prestop", "prestop-done", "term"],
        "{}",
        e.read("log")
    );

    // A failing postStart kills the container: FailedPostStartHook, then a restart.
    let mut bad = sh("app", "exec sleep 1000");
    bad.lifecycle = Some(Lifecycle {
        post_start: Some(exec("exit 7")),
        ..Default::default()
    });
    e.client
        .create(&pod("badhook", vec![], vec![bad]))
        .await
        .unwrap();
    e.wait_pod(
        "the container restarted after its postStart failed",
        "badhook",
        |p| app_status(p).is_some_and(|c| c.restart_count >= 1),
    )
    .await;
    let (events, _) = e.client.list::<Event>(Some("default"), "").await.unwrap();
    assert!(
        events.iter().any(|ev| ev.reason == "FailedPostStartHook"
            && ev.involved_object.name == "badhook"
            && ev.message.contains("exited with 7")),
        "{:?}",
        events
            .iter()
            .map(|e| (&e.reason, &e.message))
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_does_not_rerun_completed_init_containers_and_adopts_the_sidecar() {
    let cluster = TestCluster::start(1).await.unwrap();
    let server = cluster.addr(0).to_string();
    let client = Client::new(
        &[server.as_str()],
        ClientConfig::with_tls(cluster.admin_tls()),
    )
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let _kill = KillUnder(data.path().to_path_buf());
    let marks = tempfile::tempdir().unwrap();
    let runs = marks.path().join("init-runs").display().to_string();
    let first = start_agent(&cluster, data.path(), 65).await;
    let mut sidecar = sh("proxy", "exec sleep 1000");
    sidecar.restart_policy = Some("Always".into());
    let p = pod(
        "adopted",
        vec![sh("once", &format!("echo ran >> {runs}")), sidecar],
        vec![sh("app", "exec sleep 1000")],
    );
    client.create(&p).await.unwrap();
    let get = |name: &'static str| {
        let client = client.clone();
        async move { client.get::<Pod>("default", name).await.ok() }
    };
    let before = common::wait_for(T, "pod Ready", || async {
        get("adopted").await.filter(|p| p.is_ready())
    })
    .await;
    first.stop().await;
    let _second = start_agent(&cluster, data.path(), 65).await;
    // Once a pod created after the restart runs, the new agent has planned "adopted" too.
    client
        .create(&pod("witness", vec![], vec![sh("app", "exec sleep 1000")]))
        .await
        .unwrap();
    common::wait_for(T, "the witness running", || async {
        get("witness")
            .await
            .filter(|p| app_status(p).is_some_and(|c| c.state.running.is_some()))
    })
    .await;
    let after = get("adopted").await.unwrap();
    assert_eq!(std::fs::read_to_string(&runs).unwrap(), "ran\n");
    assert!(after.is_ready());
    for (b, a) in init_statuses(&before).iter().zip(init_statuses(&after)) {
        assert_eq!(a.restart_count, 0, "{}", a.name);
        assert_eq!(a.container_id, b.container_id, "{} adopted", a.name);
    }
    assert_eq!(app_status(&after).map(|c| c.restart_count), Some(0));
}
