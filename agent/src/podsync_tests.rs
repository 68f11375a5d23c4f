//! Tests of the pod sync reconciler: the pure plan/status functions table by table, and the
//! shell driven round by round with the fake runtime, an in-memory API and paused time.

use std::sync::Arc;
use std::time::Duration;

use berth_proto::types::{Container, ExecAction, ObjectMeta, Pod, PodSpec, Probe};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::api::{MemoryApi, PodCache};
use crate::events::EventSink;
use crate::hostports::HostPorts;
use crate::prober::ProbeView;
use crate::runtime::fake::{Behavior, FakeRuntime, PullScript};
use crate::runtime::{ContainerInfo, ExitInfo, RunState};

fn pod(name: &str, containers: &[&str]) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: name.into(),
            namespace: "default".into(),
            uid: format!("uid-{name}"),
            ..Default::default()
        },
        spec: PodSpec {
            node_name: "n1".into(),
            containers: containers
                .iter()
                .map(|c| Container {
                    name: c.to_string(),
                    image: "img".into(),
                    command: vec!["run".into()],
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn info(p: &Pod, c: &str, attempt: u32, state: RunState) -> ContainerInfo {
    ContainerInfo {
        id: format!("{}-{c}-{attempt}", p.metadata.name),
        pod_uid: p.metadata.uid.clone(),
        pod_namespace: "default".into(),
        pod_name: p.metadata.name.clone(),
        container_name: c.into(),
        attempt,
        image: "img".into(),
        ports: vec![],
        grace_seconds: Some(7),
        state,
        runtime: "fake",
    }
}

fn running() -> RunState {
    RunState::Running {
        started_at: chrono::Utc::now(),
    }
}

/// A fixed wall-clock instant: exits happen at it and rounds are planned at it.
fn wall0() -> berth_proto::types::Time {
    chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default()
}

fn exited(code: i32) -> RunState {
    let now = wall0();
    RunState::Exited(ExitInfo {
        started_at: Some(now - chrono::Duration::seconds(1)),
        finished_at: Some(now),
        ..ExitInfo::from_code(code, None)
    })
}

fn default_view(_: &str, c: &Container) -> ProbeView {
    ProbeView::initial(c)
}

fn plan_of(desired: &[Pod], observed: &[ContainerInfo], memo: &Memo, now: Instant) -> Plan {
    plan(desired, observed, memo, &default_view, now)
}

#[tokio::test(start_paused = true)]
async fn new_pod_starts_every_container_at_attempt_zero() {
    let p = pod("a", &["web", "side"]);
    let out = plan_of(&[p], &[], &Memo::default(), Instant::now());
    assert_eq!(
        out.actions,
        vec![
            Action::Start {
                pod_uid: "uid-a".into(),
                container: "web".into(),
                attempt: 0
            },
            Action::Start {
                pod_uid: "uid-a".into(),
                container: "side".into(),
                attempt: 0
            },
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn running_containers_of_desired_pods_are_left_alone() {
    let p = pod("a", &["web"]);
    let obs = vec![info(&p, "web", 3, running())];
    assert_eq!(
        plan_of(&[p], &obs, &Memo::default(), Instant::now()),
        Plan::default()
    );
}

#[tokio::test(start_paused = true)]
async fn crashed_container_waits_its_backoff_then_restarts_as_the_next_attempt() {
    let p = pod("a", &["web"]);
    let obs = vec![info(&p, "web", 0, exited(1))];
    let mut memo = Memo::default();
    let t0 = Instant::now();
    record_exits(&mut memo, &obs, &BackoffPolicy::default(), t0, wall0());
    let out = plan_of(std::slice::from_ref(&p), &obs, &memo, t0);
    assert!(out.actions.is_empty());
    assert_eq!(out.requeue, Some(Duration::from_secs(10)));
    let later = plan_of(
        std::slice::from_ref(&p),
        &obs,
        &memo,
        t0 + Duration::from_secs(10),
    );
    assert_eq!(
        later.actions,
        vec![Action::Start {
            pod_uid: "uid-a".into(),
            container: "web".into(),
            attempt: 1
        }]
    );
    // The same exit is counted once, however many rounds see it.
    record_exits(&mut memo, &obs, &BackoffPolicy::default(), t0, wall0());
    assert_eq!(memo.crash[&Key::new("uid-a", "web")].backoff.crashes, 1);
}

#[tokio::test(start_paused = true)]
async fn a_fresh_agent_derives_backoff_from_the_attempt_number() {
    let p = pod("a", &["web"]);
    let obs = vec![info(&p, "web", 3, exited(1)), info(&p, "web", 2, exited(1))];
    let mut memo = Memo::default();
    let t0 = Instant::now();
    record_exits(&mut memo, &obs, &BackoffPolicy::default(), t0, wall0());
    // Fourth consecutive crash: 10 * 2^3 = 80 s.
    assert_eq!(
        plan_of(&[p], &obs, &memo, t0).requeue,
        Some(Duration::from_secs(80))
    );
}

#[tokio::test(start_paused = true)]
async fn liveness_failure_kills_the_running_container_with_the_pod_grace() {
    let mut p = pod("a", &["web"]);
    p.spec.termination_grace_period_seconds = Some(5);
    let obs = vec![info(&p, "web", 0, running())];
    let failing = |_: &str, _: &Container| ProbeView {
        started: true,
        ready: false,
        liveness_failed: Some("HTTP probe failed with statuscode: 500".into()),
        startup_failed: None,
    };
    let out = plan(&[p], &obs, &Memo::default(), &failing, Instant::now());
    match out.actions.as_slice() {
        [Action::Kill {
            id, grace, message, ..
        }] => {
            assert_eq!(id, "a-web-0");
            assert_eq!(*grace, Duration::from_secs(5));
            assert!(message.contains("failed liveness probe"), "{message}");
        }
        other => panic!("expected one kill, got {other:?}"),
    }
    // While the kill is in flight nothing else is planned for that container.
    let mut memo = Memo::default();
    memo.stop_started("a-web-0");
    let p2 = pod("a", &["web"]);
    assert!(plan(
        std::slice::from_ref(&p2),
        &obs,
        &memo,
        &failing,
        Instant::now()
    )
    .actions
    .is_empty());
    // Once the stop task reports back, the failing container is planned again.
    memo.stop_finished("a-web-0");
    assert_eq!(
        plan(&[p2], &obs, &memo, &failing, Instant::now())
            .actions
            .len(),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn workloads_being_stopped_are_neither_removed_nor_stopped_again() {
    let p = pod("a", &["web"]);
    // Three attempts: the oldest is beyond the two kept; an orphan of a gone pod runs too.
    let gone = pod("gone", &["db"]);
    let obs = vec![
        info(&p, "web", 2, running()),
        info(&p, "web", 1, exited(1)),
        info(&p, "web", 0, running()),
        info(&gone, "db", 0, running()),
    ];
    let all = plan_of(
        std::slice::from_ref(&p),
        &obs,
        &Memo::default(),
        Instant::now(),
    );
    assert_eq!(all.actions.len(), 2, "{:?}", all.actions);
    let mut memo = Memo::default();
    memo.stop_started("a-web-0");
    memo.stop_started("gone-db-0");
    assert_eq!(
        plan_of(std::slice::from_ref(&p), &obs, &memo, Instant::now()).actions,
        vec![]
    );
}

#[tokio::test(start_paused = true)]
async fn backoff_events_come_once_per_attempt_while_it_waits_out_its_backoff() {
    let p = pod("a", &["web"]);
    let key = Key::new("uid-a", "web");
    let t0 = Instant::now();
    let mut memo = Memo::default();
    // Running: nothing to say.
    let up = vec![info(&p, "web", 0, running())];
    assert_eq!(
        backoff_events(std::slice::from_ref(&p), &up, &memo, t0),
        vec![]
    );
    // Exited and backing off: one event for attempt 0, naming the container and the pod.
    let down = vec![info(&p, "web", 0, exited(1))];
    record_exits(&mut memo, &down, &BackoffPolicy::default(), t0, wall0());
    let due = backoff_events(std::slice::from_ref(&p), &down, &memo, t0);
    assert_eq!(
        due,
        vec![BackOffEvent {
            key: key.clone(),
            attempt: 0,
            message: "Back-off restarting failed container web in pod a".into(),
        }]
    );
    memo.backoff_emitted(&due);
    assert_eq!(
        backoff_events(std::slice::from_ref(&p), &down, &memo, t0),
        vec![]
    );
    // The backoff elapsed (the restart is due, not waited for): no event.
    let after = t0 + Duration::from_secs(10);
    let mut unsaid = memo.clone();
    unsaid.backoff_events.clear();
    assert_eq!(
        backoff_events(std::slice::from_ref(&p), &down, &unsaid, after),
        vec![]
    );
    // The next attempt crashes too: it gets its own event.
    let again = vec![info(&p, "web", 1, exited(1)), info(&p, "web", 0, exited(1))];
    record_exits(&mut memo, &again, &BackoffPolicy::default(), after, wall0());
    let due = backoff_events(std::slice::from_ref(&p), &again, &memo, after);
    assert_eq!(due.iter().map(|e| e.attempt).collect::<Vec<_>>(), vec![1]);
    // A pod being deleted gets none.
    let mut deleting = p.clone();
    deleting.metadata.deletion_timestamp = Some(wall0());
    assert_eq!(backoff_events(&[deleting], &again, &memo, after), vec![]);
}

#[tokio::test(start_paused = true)]
async fn orphans_are_stopped_with_their_recorded_grace_and_exited_ones_removed() {
    let gone = pod("gone", &["web"]);
    let obs = vec![
        info(&gone, "web", 0, running()),
        info(&gone, "web", 1, exited(0)),
    ];
    let out = plan_of(&[], &obs, &Memo::default(), Instant::now());
    assert_eq!(
        out.actions,
        vec![
            Action::Remove {
                id: "gone-web-1".into()
            },
            Action::StopOrphan {
                id: "gone-web-0".into(),
                grace: Duration::from_secs(7)
            },
        ]
    );
    // A pod being deleted counts as gone.
    let mut deleting = gone.clone();
    deleting.metadata.deletion_timestamp = Some(chrono::Utc::now());
    let out = plan_of(&[deleting], &obs[..1], &Memo::default(), Instant::now());
    assert!(matches!(
        out.actions.as_slice(),
        [Action::StopOrphan { .. }]
    ));
}

#[tokio::test(start_paused = true)]
async fn only_the_newest_two_attempts_are_kept() {
    let p = pod("a", &["web"]);
    let obs = vec![
        info(&p, "web", 0, exited(1)),
        info(&p, "web", 1, exited(1)),
        info(&p, "web", 2, running()),
    ];
    assert_eq!(
        plan_of(&[p], &obs, &Memo::default(), Instant::now()).actions,
        vec![Action::Remove {
            id: "a-web-0".into()
        }]
    );
}

#[tokio::test(start_paused = true)]
async fn restart_policy_decides_whether_an_exit_is_restarted() {
    let now = Instant::now();
    for (policy, code, restarts) in [
        ("Always", 0, true),
        ("Always", 1, true),
        ("OnFailure", 0, false),
        ("OnFailure", 2, true),
        ("Never", 1, false),
    ] {
        let mut p = pod("a", &["web"]);
        p.spec.restart_policy = Some(policy.into());
        let obs = vec![info(&p, "web", 0, exited(code))];
        let out = plan_of(&[p], &obs, &Memo::default(), now);
        assert_eq!(!out.actions.is_empty(), restarts, "{policy} exit {code}");
    }
}

#[tokio::test(start_paused = true)]
async fn create_errors_are_retried_only_after_the_retry_delay() {
    let p = pod("a", &["web"]);
    let now = Instant::now();
    let mut memo = Memo::default();
    memo.create_errors.insert(
        Key::new("uid-a", "web"),
        CreateError {
            reason: "ErrImageNeverPull".into(),
            message: "m".into(),
            retry_at: now + Duration::from_secs(10),
        },
    );
    let out = plan_of(std::slice::from_ref(&p), &[], &memo, now);
    assert!(out.actions.is_empty());
    assert_eq!(out.requeue, Some(Duration::from_secs(10)));
    assert_eq!(
        plan_of(&[p], &[], &memo, now + Duration::from_secs(10))
            .actions
            .len(),
        1
    );
}

fn status_of(
    p: &Pod,
    obs: &[ContainerInfo],
    memo: &Memo,
    view: &dyn Fn(&str, &Container) -> ProbeView,
) -> PodStatus {
    pod_status(
        p,
        &StatusInputs {
            observed: obs,
            memo,
            view,
            policy: &BackoffPolicy::default(),
            host_ip: "10.0.0.1",
            pod_ip: None,
            ports: &[],
            now: Instant::now(),
            wall: chrono::Utc::now(),
        },
    )
}

#[tokio::test(start_paused = true)]
async fn crash_loop_status_has_reason_restart_count_and_last_exit() {
    let p = pod("a", &["web"]);
    let obs = vec![info(&p, "web", 2, exited(3)), info(&p, "web", 1, exited(3))];
    let mut memo = Memo::default();
    record_exits(
        &mut memo,
        &obs,
        &BackoffPolicy::default(),
        Instant::now(),
        wall0(),
    );
    let s = status_of(&p, &obs, &memo, &default_view);
    assert_eq!(s.phase, "Running");
    let cs = &s.container_statuses[0];
    assert_eq!(cs.restart_count, 2);
    let w = cs.state.waiting.as_ref().expect("waiting");
    assert_eq!(w.reason, "CrashLoopBackOff");
    assert!(w.message.contains("back-off 40s"), "{}", w.message);
    assert_eq!(
        cs.last_state
            .as_ref()
            .and_then(|l| l.terminated.as_ref())
            .map(|t| t.exit_code),
        Some(3)
    );
    assert!(!p.is_ready());
    assert_eq!(s.host_ip, "10.0.0.1");
    // Pods share the node's network: their IP is the node's (hostNetwork-like).
    assert_eq!(s.pod_ip, "10.0.0.1");
    assert_eq!(
        s.pod_ips,
        vec![berth_proto::types::PodIp {
            ip: "10.0.0.1".into()
        }]
    );
}

#[tokio::test(start_paused = true)]
async fn pod_is_ready_only_when_every_container_passes_readiness() {
    let mut p = pod("a", &["web", "side"]);
    p.spec.containers[0].readiness_probe = Some(Probe::default());
    let obs = vec![
        info(&p, "web", 0, running()),
        info(&p, "side", 0, running()),
    ];
    let not_yet = status_of(&p, &obs, &Memo::default(), &default_view);
    assert_eq!(not_yet.phase, "Running");
    assert!(!not_yet.container_statuses[0].ready);
    assert!(
        not_yet.container_statuses[1].ready,
        "no readiness probe: ready when running"
    );
    let ready_cond = |s: &PodStatus| {
        berth_proto::types::condition(&s.conditions, "Ready").map(|c| c.status.clone())
    };
    assert_eq!(ready_cond(&not_yet).as_deref(), Some("False"));
    let passing = |_: &str, _: &Container| ProbeView {
        started: true,
        ready: true,
        ..Default::default()
    };
    let ready = status_of(&p, &obs, &Memo::default(), &passing);
    assert_eq!(ready_cond(&ready).as_deref(), Some("True"));
}

#[tokio::test(start_paused = true)]
async fn unchanged_inputs_give_an_identical_status() {
    let p = pod("a", &["web"]);
    let obs = vec![info(&p, "web", 0, running())];
    let s1 = status_of(&p, &obs, &Memo::default(), &default_view);
    let mut p2 = p.clone();
    p2.status = Some(s1.clone());
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(status_of(&p2, &obs, &Memo::default(), &default_view), s1);
}

#[tokio::test(start_paused = true)]
async fn terminal_pods_succeed_or_fail_by_exit_codes() {
    let mut p = pod("a", &["a", "b"]);
    p.spec.restart_policy = Some("Never".into());
    let ok = vec![info(&p, "a", 0, exited(0)), info(&p, "b", 0, exited(0))];
    assert_eq!(
        status_of(&p, &ok, &Memo::default(), &default_view).phase,
        "Succeeded"
    );
    let bad = vec![info(&p, "a", 0, exited(0)), info(&p, "b", 0, exited(1))];
    assert_eq!(
        status_of(&p, &bad, &Memo::default(), &default_view).phase,
        "Failed"
    );
    assert_eq!(
        status_of(&p, &[], &Memo::default(), &default_view).phase,
        "Pending"
    );
}

// ---------------------------------------------------------------------------------------------
// The shell, round by round, with the fake runtime and paused time.

struct Harness {
    rt: FakeRuntime,
    api: MemoryApi,
    cache: PodCache,
    sync: PodSync,
    _shutdown: CancellationToken,
}

fn harness(rt: FakeRuntime) -> Harness {
    let api = MemoryApi::new();
    let cache = PodCache::new();
    let shutdown = CancellationToken::new();
    let sync = PodSync::new(
        SyncConfig::new("n1", "10.0.0.1"),
        Arc::new(rt.clone()),
        Arc::new(api.clone()),
        cache.clone(),
        HostPorts::new(30000..=30099).without_host_check(),
        EventSink::new("n1"),
        &shutdown,
    );
    Harness {
        rt,
        api,
        cache,
        sync,
        _shutdown: shutdown,
    }
}

fn starts(rt: &FakeRuntime) -> Vec<String> {
    rt.calls()
        .into_iter()
        .filter(|c| c.starts_with("create "))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn crash_loop_restarts_after_10_20_40_seconds() {
    let rt = FakeRuntime::new();
    rt.set_behavior(
        "web",
        Behavior {
            exit_after: Some((Duration::from_secs(1), 1)),
            ignore_stop_signal: false,
        },
    );
    let mut h = harness(rt);
    let p = pod("a", &["web"]);
    h.cache.replace_all([p.clone()]);
    let t0 = Instant::now();
    let mut start_times = Vec::new();
    let mut seen = 0;
    while t0.elapsed() < Duration::from_secs(80) {
        h.sync.sync_once().await;
        let s = starts(&h.rt);
        if s.len() > seen {
            seen = s.len();
            start_times.push(t0.elapsed().as_secs());
        }
        tokio::time::advance(Duration::from_millis(500)).await;
    }
    // Runs 1 s, then waits 10, 20, 40 s before each restart.
    assert_eq!(start_times, vec![0, 11, 32, 73], "{:?}", starts(&h.rt));
    let last = h.api.last_status("uid-a").expect("status written");
    let cs = &last.status.expect("status").container_statuses[0];
    assert_eq!(cs.restart_count, 3);
    let reasons = h.api.event_reasons();
    assert!(reasons.iter().any(|r| r == "BackOff"), "{reasons:?}");
    assert!(reasons.iter().any(|r| r == "Started"), "{reasons:?}");
}

#[tokio::test(start_paused = true)]
async fn a_restarted_agent_adopts_running_containers_without_restarting_them() {
    let rt = FakeRuntime::new();
    let p = pod("a", &["web"]);
    let id = rt.insert_running(container_spec("n1", &p, &p.spec.containers[0], 4, &[]));
    let mut h = harness(rt);
    h.cache.replace_all([p]);
    for _ in 0..3 {
        h.sync.sync_once().await;
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    assert!(starts(&h.rt).is_empty(), "{:?}", h.rt.calls());
    assert!(
        !h.rt.calls().iter().any(|c| c.starts_with("stop")),
        "{:?}",
        h.rt.calls()
    );
    let st = h
        .api
        .last_status("uid-a")
        .expect("status")
        .status
        .expect("status");
    assert_eq!(st.container_statuses[0].restart_count, 4);
    assert_eq!(
        st.container_statuses[0].container_id,
        format!("fake://{id}")
    );
    assert!(st.container_statuses[0].state.running.is_some());
}

#[tokio::test(start_paused = true)]
async fn before_the_first_pod_list_nothing_is_started_or_killed() {
    let rt = FakeRuntime::new();
    let p = pod("a", &["web"]);
    rt.insert_running(container_spec("n1", &p, &p.spec.containers[0], 0, &[]));
    let mut h = harness(rt);
    h.sync.sync_once().await;
    assert!(!h
        .rt
        .calls()
        .iter()
        .any(|c| c.starts_with("stop") || c.starts_with("create")));
    // Once the (empty) list arrives the workload is an orphan and is stopped.
    h.cache.replace_all([]);
    h.sync.sync_once().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !h.rt.list_ids().await.is_empty() {
        assert!(Instant::now() < deadline, "{:?}", h.rt.calls());
        tokio::time::advance(Duration::from_millis(100)).await;
        h.sync.sync_once().await;
    }
}

#[tokio::test(start_paused = true)]
async fn orphan_stop_waits_the_grace_period_then_kills() {
    let rt = FakeRuntime::new();
    rt.set_behavior(
        "web",
        Behavior {
            exit_after: None,
            ignore_stop_signal: true,
        },
    );
    let mut p = pod("a", &["web"]);
    p.spec.termination_grace_period_seconds = Some(20);
    let id = rt.insert_running(container_spec("n1", &p, &p.spec.containers[0], 0, &[]));
    let mut h = harness(rt);
    h.cache.replace_all([]);
    let t0 = Instant::now();
    h.sync.sync_once().await;
    // Let the spawned stop task send its signal before the clock moves.
    tokio::task::yield_now().await;
    assert!(h.rt.calls().iter().any(|c| c.starts_with("stop")));
    tokio::time::advance(Duration::from_secs(19)).await;
    assert_eq!(
        h.rt.list_ids().await,
        vec![id.clone()],
        "still in its grace period"
    );
    let deadline = t0 + Duration::from_secs(30);
    while !h.rt.list_ids().await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{:?} {:?}",
            h.rt.calls(),
            h.rt.list().await
        );
        tokio::time::advance(Duration::from_millis(100)).await;
    }
    assert!(t0.elapsed() >= Duration::from_secs(20));
}

#[tokio::test(start_paused = true)]
async fn failing_liveness_probe_kills_and_restarts_the_container() {
    let rt = FakeRuntime::new();
    rt.set_exec_exit("web", 1);
    let mut p = pod("a", &["web"]);
    p.spec.termination_grace_period_seconds = Some(1);
    p.spec.containers[0].liveness_probe = Some(Probe {
        exec: Some(ExecAction {
            command: vec!["check".into()],
        }),
        period_seconds: Some(2),
        failure_threshold: Some(3),
        ..Default::default()
    });
    let mut h = harness(rt);
    h.cache.replace_all([p]);
    let t0 = Instant::now();
    while starts(&h.rt).len() < 2 {
        assert!(t0.elapsed() < Duration::from_secs(60), "{:?}", h.rt.calls());
        h.sync.sync_once().await;
        tokio::time::advance(Duration::from_millis(250)).await;
    }
    // Three failures 2 s apart (t=0, 2, 4), kill, then the 10 s crash backoff.
    assert!(
        t0.elapsed() >= Duration::from_secs(14),
        "{:?}",
        t0.elapsed()
    );
    let reasons = h.api.event_reasons();
    // Identical failures are aggregated into one event per window.
    assert_eq!(
        reasons.iter().filter(|r| *r == "Unhealthy").count(),
        1,
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r == "Killing"), "{reasons:?}");
}

#[tokio::test(start_paused = true)]
async fn missing_image_gives_err_image_never_pull_and_one_warning() {
    let rt = FakeRuntime::new();
    rt.set_image_missing("ghost:1");
    let mut p = pod("a", &["web"]);
    p.spec.containers[0].image = "ghost:1".into();
    let mut h = harness(rt);
    h.cache.replace_all([p]);
    for _ in 0..30 {
        h.sync.sync_once().await;
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    let st = h
        .api
        .last_status("uid-a")
        .expect("status")
        .status
        .expect("status");
    assert_eq!(st.phase, "Pending");
    let w = st.container_statuses[0]
        .state
        .waiting
        .clone()
        .expect("waiting");
    assert_eq!(w.reason, "ErrImageNeverPull");
    assert!(w.message.contains("ghost:1"), "{}", w.message);
    let failed = h
        .api
        .events()
        .into_iter()
        .filter(|e| e.reason == "Failed")
        .count();
    assert_eq!(failed, 1, "one warning, not one per retry");
    // It was retried (every 10 s), never hung.
    assert!(starts(&h.rt).len() >= 3);
}

fn waiting_reason(h: &Harness, uid: &str) -> Option<String> {
    h.api
        .last_status(uid)?
        .status?
        .container_statuses
        .first()?
        .state
        .waiting
        .as_ref()
        .map(|w| w.reason.clone())
}

fn event_messages(h: &Harness, reason: &str) -> Vec<String> {
    h.api
        .events()
        .into_iter()
        .filter(|e| e.reason == reason)
        .map(|e| e.message)
        .collect()
}

/// One round, then `step` of paused time (pull tasks run meanwhile).
async fn round(h: &mut Harness, step: Duration) {
    h.sync.sync_once().await;
    tokio::time::advance(step).await;
    tokio::task::yield_now().await;
}

#[tokio::test(start_paused = true)]
async fn concurrent_pods_needing_one_image_cause_one_pull_and_wait_in_container_creating() {
    let rt = FakeRuntime::new();
    rt.set_uses_images(true);
    rt.set_image_missing("shop:1");
    rt.set_pull(
        "shop:1",
        PullScript {
            delay: Duration::from_secs(5),
            size: 34_000_000,
            ..Default::default()
        },
    );
    let pods: Vec<Pod> = ["a", "b", "c"]
        .iter()
        .map(|n| {
            let mut p = pod(n, &["web"]);
            p.spec.containers[0].image = "shop:1".into();
            p
        })
        .collect();
    let mut h = harness(rt);
    h.cache.replace_all(pods);
    round(&mut h, Duration::from_secs(1)).await;
    assert!(
        starts(&h.rt).is_empty(),
        "nothing is created before the pull"
    );
    assert_eq!(
        waiting_reason(&h, "uid-a").as_deref(),
        Some("ContainerCreating")
    );
    for _ in 0..8 {
        round(&mut h, Duration::from_secs(1)).await;
    }
    assert_eq!(h.rt.pull_count("shop:1"), 1, "{:?}", h.rt.calls());
    assert_eq!(starts(&h.rt).len(), 3, "{:?}", h.rt.calls());
    assert_eq!(
        event_messages(&h, "Pulling"),
        vec![r#"Pulling image "shop:1""#; 3]
    );
    let pulled = event_messages(&h, "Pulled");
    assert_eq!(pulled.len(), 3, "{pulled:?}");
    assert!(
        pulled[0].starts_with(r#"Successfully pulled image "shop:1" in "#)
            && pulled[0].ends_with("s (34 MB)"),
        "{pulled:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn failed_pull_shows_err_image_pull_then_image_pull_backoff_and_retries_on_the_crash_backoff()
{
    let rt = FakeRuntime::new();
    rt.set_uses_images(true);
    rt.set_image_missing("ghost:9");
    rt.set_pull(
        "ghost:9",
        PullScript {
            fail: Some((
                crate::runtime::PullFailure::NotFound,
                "manifest unknown".into(),
            )),
            ..Default::default()
        },
    );
    let mut p = pod("a", &["web"]);
    p.spec.containers[0].image = "ghost:9".into();
    let mut h = harness(rt);
    h.cache.replace_all([p, pod("b", &["web"])]);
    let t0 = Instant::now();
    let mut reasons = Vec::new();
    let mut pulls_at = Vec::new();
    for _ in 0..80 {
        let before = h.rt.pull_count("ghost:9");
        round(&mut h, Duration::from_millis(500)).await;
        if h.rt.pull_count("ghost:9") > before {
            pulls_at.push((Instant::now() - t0).as_secs());
        }
        if let Some(r) = waiting_reason(&h, "uid-a") {
            if reasons.last() != Some(&r) {
                reasons.push(r);
            }
        }
    }
    assert_eq!(
        reasons[..3],
        ["ContainerCreating", "ErrImagePull", "ImagePullBackOff"],
        "{reasons:?}"
    );
    // Pulls at ~0 s, then 10 s and 20 s later (the crash-loop schedule).
    assert_eq!(pulls_at.len(), 3, "{pulls_at:?}");
    assert!(
        (10..=12).contains(&(pulls_at[1] - pulls_at[0])),
        "{pulls_at:?}"
    );
    assert!(
        (20..=22).contains(&(pulls_at[2] - pulls_at[1])),
        "{pulls_at:?}"
    );
    let st = h
        .api
        .last_status("uid-a")
        .expect("present")
        .status
        .expect("present");
    let w = st.container_statuses[0]
        .state
        .waiting
        .clone()
        .expect("present");
    assert!(
        w.message == r#"Back-off pulling image "ghost:9": not found: manifest unknown"#,
        "{}",
        w.message
    );
    let failed = event_messages(&h, "Failed");
    assert!(
        failed.contains(
            &r#"Failed to pull image "ghost:9": not found: manifest unknown"#.to_string()
        ),
        "{failed:?}"
    );
    assert!(
        failed.contains(&"Error: ErrImagePull".to_string()),
        "{failed:?}"
    );
    assert!(
        failed.contains(&"Error: ImagePullBackOff".to_string()),
        "{failed:?}"
    );
    assert!(
        event_messages(&h, "BackOff").contains(&r#"Back-off pulling image "ghost:9""#.to_string())
    );
    // Nothing else disturbed: the other pod runs.
    let b = h
        .api
        .last_status("uid-b")
        .expect("present")
        .status
        .expect("present");
    assert_eq!(b.phase, "Running");
}

#[tokio::test(start_paused = true)]
async fn pull_policies_never_if_not_present_and_always() {
    let rt = FakeRuntime::new();
    rt.set_uses_images(true);
    rt.set_image_missing("absent:1");
    let mut never = pod("never", &["web"]);
    never.spec.containers[0].image = "absent:1".into();
    never.spec.containers[0].image_pull_policy = Some("Never".into());
    let mut present = pod("present", &["web"]);
    present.spec.containers[0].image = "here:1".into();
    let mut latest = pod("latest", &["web"]);
    latest.spec.containers[0].image = "here:latest".into();
    let mut h = harness(rt);
    h.cache.replace_all([never, present, latest]);
    for _ in 0..5 {
        round(&mut h, Duration::from_millis(500)).await;
    }
    assert_eq!(
        waiting_reason(&h, "uid-never").as_deref(),
        Some("ErrImageNeverPull")
    );
    assert_eq!(h.rt.pull_count("absent:1"), 0, "Never never pulls");
    assert_eq!(
        h.rt.pull_count("here:1"),
        0,
        "IfNotPresent: present, not pulled"
    );
    assert_eq!(
        h.rt.pull_count("here:latest"),
        1,
        ":latest defaults to Always"
    );
    for uid in ["uid-present", "uid-latest"] {
        let st = h
            .api
            .last_status(uid)
            .expect("present")
            .status
            .expect("present");
        assert_eq!(st.phase, "Running", "{uid}");
    }
    assert!(event_messages(&h, "Pulled")
        .contains(&r#"Container image "here:1" already present on machine"#.to_string()));
}

#[tokio::test(start_paused = true)]
async fn a_runtime_class_the_node_does_not_have_is_a_config_error_not_a_start() {
    let mut p = pod("a", &["web"]);
    p.spec.runtime_class_name = Some("docker".into());
    let mut h = harness(FakeRuntime::new());
    h.cache.replace_all([p]);
    round(&mut h, Duration::from_secs(1)).await;
    assert!(starts(&h.rt).is_empty());
    let w = h
        .api
        .last_status("uid-a")
        .expect("present")
        .status
        .expect("present")
        .container_statuses[0]
        .state
        .waiting
        .clone()
        .expect("present");
    assert_eq!(w.reason, "CreateContainerConfigError");
    assert_eq!(
        w.message,
        r#"runtimeClassName "docker" is not available on node n1 (it has: fake)"#
    );
}

#[tokio::test(start_paused = true)]
async fn workloads_keep_running_while_the_api_is_down_and_status_catches_up() {
    let rt = FakeRuntime::new();
    let mut h = harness(rt);
    h.api.set_down(true);
    h.cache.replace_all([pod("a", &["web"])]);
    for _ in 0..3 {
        h.sync.sync_once().await;
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    assert_eq!(starts(&h.rt).len(), 1);
    assert!(h.api.statuses().is_empty());
    h.api.set_down(false);
    h.sync.sync_once().await;
    let st = h
        .api
        .last_status("uid-a")
        .expect("status after recovery")
        .status
        .expect("status");
    assert!(st.container_statuses[0].state.running.is_some());
    assert!(
        h.api.event_reasons().iter().any(|r| r == "Started"),
        "buffered events are sent"
    );
}

#[tokio::test(start_paused = true)]
async fn host_ports_are_allocated_recorded_and_freed() {
    let rt = FakeRuntime::new();
    let mut p = pod("a", &["web"]);
    p.spec.containers[0].ports = vec![berth_proto::types::ContainerPort {
        name: "http".into(),
        container_port: 8080,
        protocol: None,
        host_port: None,
    }];
    let mut h = harness(rt);
    h.cache.replace_all([p.clone()]);
    h.sync.sync_once().await;
    let st = h
        .api
        .last_status("uid-a")
        .expect("status")
        .status
        .expect("status");
    assert_eq!(st.host_ports.len(), 1);
    assert_eq!(st.host_ports[0].host_port, 30000);
    assert_eq!(h.sync.ports_of("uid-a").expect("ports")[0].host_port, 30000);
    h.cache.replace_all([]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while h.sync.ports_of("uid-a").is_some() {
        assert!(Instant::now() < deadline);
        h.sync.sync_once().await;
        tokio::time::advance(Duration::from_millis(200)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn adopted_ready_container_stays_ready_across_an_agent_restart() {
    let rt = FakeRuntime::new();
    let mut p = pod("a", &["web"]);
    p.spec.containers[0].readiness_probe = Some(Probe {
        exec: Some(ExecAction {
            command: vec!["check".into()],
        }),
        period_seconds: Some(5),
        ..Default::default()
    });
    let id = rt.insert_running(container_spec("n1", &p, &p.spec.containers[0], 0, &[]));
    // What the previous agent last reported for this very container.
    let mut reported = p.clone();
    reported.status = Some(PodStatus {
        container_statuses: vec![berth_proto::types::ContainerStatus {
            name: "web".into(),
            ready: true,
            started: Some(true),
            container_id: format!("fake://{id}"),
            ..Default::default()
        }],
        ..Default::default()
    });
    let mut h = harness(rt);
    h.cache.replace_all([reported]);
    for _ in 0..12 {
        h.sync.sync_once().await;
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    let written = h.api.statuses();
    assert!(!written.is_empty());
    assert!(
        written.iter().all(|p| p.is_ready()),
        "readiness flapped after adoption"
    );

    // Without that report, a fresh container is not ready until its probe passes.
    let rt = FakeRuntime::new();
    let mut h = harness(rt);
    h.cache.replace_all([p]);
    h.sync.sync_once().await;
    assert!(!h.api.statuses()[0].is_ready());
}

#[tokio::test(start_paused = true)]
async fn startup_probe_gates_readiness_and_its_failure_restarts_the_container() {
    let rt = FakeRuntime::new();
    rt.set_exec_exit("web", 1);
    let mut p = pod("a", &["web"]);
    p.spec.termination_grace_period_seconds = Some(1);
    let exec = |cmd: &str| ExecAction {
        command: vec![cmd.into()],
    };
    p.spec.containers[0].startup_probe = Some(Probe {
        exec: Some(exec("started")),
        period_seconds: Some(1),
        failure_threshold: Some(5),
        ..Default::default()
    });
    p.spec.containers[0].readiness_probe = Some(Probe {
        exec: Some(exec("ready")),
        period_seconds: Some(1),
        ..Default::default()
    });
    let mut h = harness(rt);
    h.cache.replace_all([p]);
    let t0 = Instant::now();
    while !h.api.event_reasons().iter().any(|r| r == "Killing") {
        assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", h.rt.calls());
        h.sync.sync_once().await;
        tokio::time::advance(Duration::from_millis(250)).await;
    }
    // Five startup failures one second apart; readiness never ran before startup passed.
    assert!(t0.elapsed() >= Duration::from_secs(4), "{:?}", t0.elapsed());
    assert!(
        !h.rt.calls().iter().any(|c| c.ends_with(" ready")),
        "{:?}",
        h.rt.calls()
    );
    let killing = h
        .api
        .events()
        .into_iter()
        .find(|e| e.reason == "Killing")
        .expect("event");
    assert!(
        killing.message.contains("failed startup probe"),
        "{}",
        killing.message
    );
    assert!(h.api.statuses().iter().all(|p| !p.is_ready()));
}

#[tokio::test(start_paused = true)]
async fn a_created_but_never_started_attempt_is_recreated_with_the_same_attempt_number() {
    let p = pod("a", &["web"]);
    let obs = vec![
        info(&p, "web", 3, RunState::Created),
        info(&p, "web", 2, exited(1)),
    ];
    assert_eq!(
        plan_of(&[p], &obs, &Memo::default(), Instant::now()).actions,
        vec![Action::Start {
            pod_uid: "uid-a".into(),
            container: "web".into(),
            attempt: 3
        }]
    );
}

// ---------------------------------------------------------------------------------------------
// Image trust (require-signed-images), checked just before a container starts.

fn trust_with_policy(digest_of_tag: &str, key: &berth_proto::trust::PrivateKey) -> TrustSnapshot {
    use berth_proto::types::{ClusterImagePolicy, ImageTag, TrustKey};
    let mut t = TrustSnapshot::default();
    let mut p = ClusterImagePolicy::default();
    p.metadata.name = "cluster".into();
    p.spec.require_signed_images = true;
    t.cluster_policy = Some(p);
    let mut tag = ImageTag::default();
    tag.spec.repository = "shop".into();
    tag.spec.tag = "v1".into();
    tag.spec.digest = digest_of_tag.into();
    t.tags.push(tag);
    let mut k = TrustKey::default();
    k.metadata.name = "ci-2026".into();
    k.spec.public_key = key.public_key().to_pem();
    k.spec.fingerprint = key.public_key().fingerprint();
    t.keys.push(k);
    t
}

use berth_proto::trust::TrustSnapshot;

#[tokio::test(start_paused = true)]
async fn under_the_policy_an_unsigned_image_waits_not_trusted_and_starts_once_signed() {
    let key = berth_proto::trust::PrivateKey::generate().expect("key");
    let d = berth_proto::image::sha256_digest(b"shop v1 manifest");
    let rt = FakeRuntime::new();
    rt.set_uses_images(true);
    rt.set_image_digests("shop:v1", vec![d.clone()]);
    let mut p = pod("a", &["web"]);
    p.spec.containers[0].image = "shop:v1".into();
    let mut h = harness(rt);
    h.api.edit_trust(|t| *t = trust_with_policy(&d, &key));
    h.cache.replace_all([p]);
    for _ in 0..6 {
        round(&mut h, Duration::from_millis(500)).await;
    }
    assert!(starts(&h.rt).is_empty(), "{:?}", h.rt.calls());
    assert_eq!(
        waiting_reason(&h, "uid-a").as_deref(),
        Some(ERR_IMAGE_NOT_TRUSTED)
    );
    let want = format!("image shop@{d} is not signed by a trusted key (trusted: ci-2026)");
    assert!(
        event_messages(&h, "Failed").contains(&want),
        "{:?}",
        event_messages(&h, "Failed")
    );
    let st = h
        .api
        .last_status("uid-a")
        .and_then(|p| p.status)
        .expect("status");
    let w = st.container_statuses[0]
        .state
        .waiting
        .clone()
        .expect("waiting");
    assert_eq!(w.message, want);

    // Signed later: the re-check on the crash-loop backoff lets it start.
    let sig = berth_proto::trust::sign_image(&key, "ci-2026", "shop", &d).expect("sign");
    h.api.edit_trust(|t| t.signatures.push(sig));
    let t0 = Instant::now();
    while starts(&h.rt).is_empty() && t0.elapsed() < Duration::from_secs(60) {
        round(&mut h, Duration::from_millis(500)).await;
    }
    assert_eq!(starts(&h.rt).len(), 1, "{:?}", h.rt.calls());
    assert!(
        t0.elapsed() <= Duration::from_secs(21),
        "{:?}",
        t0.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn the_agent_checks_the_digest_the_node_holds_not_the_tags() {
    let key = berth_proto::trust::PrivateKey::generate().expect("key");
    let signed = berth_proto::image::sha256_digest(b"signed");
    let on_node = berth_proto::image::sha256_digest(b"something else");
    let rt = FakeRuntime::new();
    rt.set_uses_images(true);
    rt.set_image_digests("shop:v1", vec![on_node.clone()]);
    let mut p = pod("a", &["web"]);
    p.spec.containers[0].image = "shop:v1".into();
    let mut h = harness(rt);
    h.api.edit_trust(|t| {
        *t = trust_with_policy(&signed, &key);
        t.signatures
            .push(berth_proto::trust::sign_image(&key, "ci-2026", "shop", &signed).expect("sign"));
    });
    h.cache.replace_all([p]);
    for _ in 0..6 {
        round(&mut h, Duration::from_millis(500)).await;
    }
    assert!(starts(&h.rt).is_empty(), "{:?}", h.rt.calls());
    assert!(
        event_messages(&h, "Failed").contains(&format!(
            "image shop@{on_node} is not signed by a trusted key (trusted: ci-2026)"
        )),
        "{:?}",
        event_messages(&h, "Failed")
    );
    // Policy off for the namespace: it starts.
    h.api.edit_trust(|t| {
        let mut off = berth_proto::types::ImagePolicy::default();
        off.metadata.name = "default".into();
        off.metadata.namespace = "default".into();
        t.namespace_policies.push(off);
    });
    let t0 = Instant::now();
    while starts(&h.rt).is_empty() && t0.elapsed() < Duration::from_secs(60) {
        round(&mut h, Duration::from_millis(500)).await;
    }
    assert_eq!(starts(&h.rt).len(), 1, "{:?}", h.rt.calls());
}

#[tokio::test(start_paused = true)]
async fn with_the_api_down_a_new_container_waits_for_the_trust_check_and_a_restart_does_not() {
    let rt = FakeRuntime::new();
    rt.set_uses_images(true);
    rt.set_behavior(
        "web",
        Behavior {
            exit_after: Some((Duration::from_secs(1), 1)),
            ignore_stop_signal: false,
        },
    );
    let mut fresh = pod("fresh", &["other"]);
    fresh.spec.containers[0].image = "shop:v1".into();
    let crashing = pod("crashing", &["web"]);
    let mut h = harness(rt);
    // The crashing pod starts while the API answers (no policy), then the API goes down.
    h.cache.replace_all([crashing.clone()]);
    let t0 = Instant::now();
    while starts(&h.rt).is_empty() && t0.elapsed() < Duration::from_secs(5) {
        round(&mut h, Duration::from_millis(100)).await;
    }
    assert_eq!(starts(&h.rt).len(), 1, "{:?}", h.rt.calls());
    h.api.set_down(true);
    // A new sync loop (as after an agent restart): it knows nothing about trust.
    let mut h2 = harness(h.rt.clone());
    h2.api.set_down(true);
    h2.cache.replace_all([crashing, fresh]);
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(15) {
        round(&mut h2, Duration::from_millis(500)).await;
    }
    let s = starts(&h2.rt);
    assert_eq!(
        s.iter().filter(|c| c.starts_with("create web#")).count(),
        2,
        "the crashed container restarted during the outage: {s:?}"
    );
    assert!(
        !s.iter().any(|c| c.starts_with("create other#")),
        "a container that never ran waits for the check: {s:?}"
    );
    let failures = &h2.sync.memo.create_errors;
    let e = failures
        .get(&Key::new("uid-fresh", "other"))
        .expect("fresh waits");
    assert_eq!(e.reason, ERR_IMAGE_NOT_TRUSTED);
    assert!(
        e.message.starts_with("cannot check image trust"),
        "{}",
        e.message
    );
}

// ---------------------------------------------------------------------------------------------
// Init containers and native sidecars.

/// A pod with init containers (`+name` is a sidecar) before its app containers.
fn init_pod(name: &str, inits: &[&str], apps: &[&str]) -> Pod {
    let mut p = pod(name, apps);
    p.spec.init_containers = inits
        .iter()
        .map(|n| Container {
            name: n.trim_start_matches('+').to_string(),
            image: "img".into(),
            command: vec!["run".into()],
            restart_policy: n.starts_with('+').then(|| "Always".to_string()),
            ..Default::default()
        })
        .collect();
    p
}

fn start(uid: &str, c: &str, attempt: u32) -> Action {
    Action::Start {
        pod_uid: uid.into(),
        container: c.into(),
        attempt,
    }
}

fn starts_of(p: &Plan) -> Vec<String> {
    p.actions
        .iter()
        .filter_map(|a| match a {
            Action::Start { container, .. } => Some(container.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn init_containers_start_one_at_a_time_in_order_then_the_app_containers() {
    let p = init_pod("a", &["one", "two"], &["web", "log"]);
    let t = Instant::now();
    let m = Memo::default();
    let ps = std::slice::from_ref(&p);
    assert_eq!(
        plan_of(ps, &[], &m, t).actions,
        vec![start("uid-a", "one", 0)]
    );
    // Running: nothing else starts.
    let obs = vec![info(&p, "one", 0, running())];
    assert_eq!(plan_of(ps, &obs, &m, t), Plan::default());
    // Completed: the next one.
    let obs = vec![info(&p, "one", 0, exited(0))];
    assert_eq!(
        plan_of(ps, &obs, &m, t).actions,
        vec![start("uid-a", "two", 0)]
    );
    // All completed: every app container at once, no init container again.
    let obs = vec![info(&p, "one", 0, exited(0)), info(&p, "two", 0, exited(0))];
    assert_eq!(starts_of(&plan_of(ps, &obs, &m, t)), vec!["web", "log"]);
}

#[tokio::test(start_paused = true)]
async fn a_failed_init_container_is_restarted_with_backoff_and_blocks_the_app() {
    let p = init_pod("a", &["one", "two"], &["web"]);
    let obs = vec![info(&p, "one", 0, exited(1))];
    let mut memo = Memo::default();
    let t0 = Instant::now();
    record_exits(&mut memo, &obs, &BackoffPolicy::default(), t0, wall0());
    let ps = std::slice::from_ref(&p);
    let out = plan_of(ps, &obs, &memo, t0);
    assert!(out.actions.is_empty(), "{:?}", out.actions);
    assert_eq!(out.requeue, Some(Duration::from_secs(10)));
    let later = plan_of(ps, &obs, &memo, t0 + Duration::from_secs(10));
    assert_eq!(later.actions, vec![start("uid-a", "one", 1)]);
    let s = status_of(&p, &obs, &memo, &default_view);
    assert_eq!(s.phase, "Pending");
    let w = s.init_container_statuses[0]
        .state
        .waiting
        .as_ref()
        .expect("waiting");
    assert_eq!(w.reason, "CrashLoopBackOff");
    assert_eq!(
        s.init_container_statuses[1]
            .state
            .waiting
            .as_ref()
            .map(|w| w.reason.as_str()),
        Some("PodInitializing")
    );
    assert_eq!(
        s.container_statuses[0]
            .state
            .waiting
            .as_ref()
            .map(|w| w.reason.as_str()),
        Some("PodInitializing")
    );
    let init = berth_proto::types::condition(&s.conditions, "Initialized").expect("cond");
    assert_eq!(
        (init.status.as_str(), init.reason.as_str()),
        ("False", "ContainersNotInitialized")
    );
    // A BackOff event is due for the init container.
    assert_eq!(backoff_events(ps, &obs, &memo, t0).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn with_restart_policy_never_a_failed_init_container_fails_the_pod() {
    let mut p = init_pod("a", &["+proxy", "one"], &["web"]);
    p.spec.restart_policy = Some("Never".into());
    let obs = vec![
        info(&p, "proxy", 0, running()),
        info(&p, "one", 0, exited(2)),
    ];
    let ps = std::slice::from_ref(&p);
    let out = plan_of(ps, &obs, &Memo::default(), Instant::now());
    // Nothing starts; the sidecar is stopped.
    assert!(starts_of(&out).is_empty());
    assert!(
        matches!(&out.actions[..], [Action::Kill { id, .. }] if id == "a-proxy-0"),
        "{:?}",
        out.actions
    );
    let s = status_of(&p, &obs, &Memo::default(), &default_view);
    assert_eq!(s.phase, "Failed");
    let t = s.init_container_statuses[1]
        .state
        .terminated
        .as_ref()
        .expect("terminated");
    assert_eq!((t.exit_code, t.reason.as_str()), (2, "Error"));
}

#[tokio::test(start_paused = true)]
async fn a_sidecar_lets_the_next_init_container_start_once_started_and_is_restarted_when_it_exits()
{
    let mut p = init_pod("a", &["+proxy", "one"], &["web"]);
    p.spec.init_containers[0].startup_probe = Some(Probe::default());
    let ps = std::slice::from_ref(&p);
    let t = Instant::now();
    let m = Memo::default();
    assert_eq!(
        plan_of(ps, &[], &m, t).actions,
        vec![start("uid-a", "proxy", 0)]
    );
    // Running but its startup probe has not passed: the next one waits.
    let obs = vec![info(&p, "proxy", 0, running())];
    assert_eq!(plan_of(ps, &obs, &m, t), Plan::default());
    let started = |_: &str, _: &Container| ProbeView {
        started: true,
        ready: true,
        ..Default::default()
    };
    assert_eq!(
        plan(ps, &obs, &m, &started, t).actions,
        vec![start("uid-a", "one", 0)]
    );
    // A running postStart hook also holds it back.
    let mut hooked = Memo::default();
    hooked.post_starting.insert("a-proxy-0".into());
    assert_eq!(plan(ps, &obs, &hooked, &started, t), Plan::default());
    // Init done, app running: the sidecar exits and is restarted (it is not a completion).
    let obs = vec![
        info(&p, "proxy", 0, exited(0)),
        info(&p, "one", 0, exited(0)),
        info(&p, "web", 0, running()),
    ];
    assert_eq!(
        plan(ps, &obs, &m, &started, t).actions,
        vec![start("uid-a", "proxy", 1)]
    );
    // Its readiness counts toward the pod's.
    let obs = vec![
        info(&p, "proxy", 1, running()),
        info(&p, "one", 0, exited(0)),
        info(&p, "web", 0, running()),
    ];
    let not_ready = |_: &str, c: &Container| ProbeView {
        started: true,
        ready: c.name != "proxy",
        ..Default::default()
    };
    let s = status_of(&p, &obs, &m, &not_ready);
    assert_eq!(s.phase, "Running");
    let cond = |s: &PodStatus, t: &str| {
        berth_proto::types::condition(&s.conditions, t).map(|c| c.status.clone())
    };
    assert_eq!(cond(&s, "Initialized").as_deref(), Some("True"));
    assert_eq!(cond(&s, "Ready").as_deref(), Some("False"));
    let s = status_of(&p, &obs, &m, &started);
    assert_eq!(cond(&s, "Ready").as_deref(), Some("True"));
    assert_eq!(s.init_container_statuses[0].restart_count, 1);
    assert_eq!(s.init_container_statuses[0].started, Some(true));
}

#[tokio::test(start_paused = true)]
async fn existing_app_containers_mean_init_is_done_and_is_not_rerun() {
    // A restarted agent whose init containers were removed (or whose runtime lost them):
    // the app containers exist, so init is not run again.
    let p = init_pod("a", &["one", "+proxy"], &["web"]);
    let obs = vec![info(&p, "web", 0, running())];
    let out = plan_of(
        std::slice::from_ref(&p),
        &obs,
        &Memo::default(),
        Instant::now(),
    );
    assert_eq!(
        out.actions,
        vec![start("uid-a", "proxy", 0)],
        "only the sidecar comes back"
    );
    let s = status_of(&p, &obs, &Memo::default(), &default_view);
    assert_eq!(s.phase, "Running");
}

#[tokio::test(start_paused = true)]
async fn when_the_app_containers_finish_the_sidecars_are_stopped_and_not_restarted() {
    let mut p = init_pod("a", &["+proxy"], &["job"]);
    p.spec.restart_policy = Some("OnFailure".into());
    let ps = std::slice::from_ref(&p);
    let obs = vec![
        info(&p, "proxy", 0, running()),
        info(&p, "job", 0, exited(0)),
    ];
    let out = plan_of(ps, &obs, &Memo::default(), Instant::now());
    assert!(
        matches!(&out.actions[..], [Action::Kill { id, .. }] if id == "a-proxy-0"),
        "{:?}",
        out.actions
    );
    let obs = vec![
        info(&p, "proxy", 0, exited(143)),
        info(&p, "job", 0, exited(0)),
    ];
    assert_eq!(
        plan_of(ps, &obs, &Memo::default(), Instant::now()),
        Plan::default()
    );
    assert_eq!(
        status_of(&p, &obs, &Memo::default(), &default_view).phase,
        "Succeeded"
    );
}

#[tokio::test(start_paused = true)]
async fn a_deleted_pod_stops_its_app_containers_before_its_sidecars_in_reverse_order() {
    let mut p = init_pod("a", &["+first", "+second"], &["web"]);
    p.metadata.deletion_timestamp = Some(wall0());
    let ps = std::slice::from_ref(&p);
    let stops = |obs: &[ContainerInfo]| -> Vec<String> {
        plan_of(ps, obs, &Memo::default(), Instant::now())
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::StopOrphan { id, .. } => Some(id.clone()),
                _ => None,
            })
            .collect()
    };
    let mut obs = vec![
        info(&p, "first", 0, running()),
        info(&p, "second", 0, running()),
        info(&p, "web", 0, running()),
    ];
    assert_eq!(stops(&obs), vec!["a-web-0"]);
    obs[2].state = exited(0);
    assert_eq!(stops(&obs), vec!["a-second-0"]);
    obs[1].state = exited(0);
    assert_eq!(stops(&obs), vec!["a-first-0"]);
}

// ---------------------------------------------------------------------------------------------
// Lifecycle hooks in the shell (the fake runtime records exec and stop calls in order).

fn hooked_pod() -> Pod {
    let mut p = pod("h", &["app"]);
    let exec = |cmd: &str| berth_proto::types::LifecycleHandler {
        exec: Some(ExecAction {
            command: vec![cmd.to_string()],
        }),
        ..Default::default()
    };
    p.spec.containers[0].lifecycle = Some(berth_proto::types::Lifecycle {
        post_start: Some(exec("post")),
        pre_stop: Some(exec("pre")),
    });
    p
}

fn position(calls: &[String], prefix: &str) -> usize {
    calls
        .iter()
        .position(|c| c.starts_with(prefix))
        .unwrap_or_else(|| panic!("no call {prefix:?} in {calls:?}"))
}

#[tokio::test(start_paused = true)]
async fn post_start_runs_after_the_start_and_pre_stop_before_the_stop_of_a_deleted_pod() {
    let rt = FakeRuntime::new();
    let mut h = harness(rt.clone());
    h.cache.replace_all([hooked_pod()]);
    for _ in 0..3 {
        round(&mut h, Duration::from_millis(100)).await;
    }
    let id = rt.list().await.expect("list")[0].id.clone();
    let calls = rt.calls();
    assert!(
        position(&calls, &format!("start {id}")) < position(&calls, &format!("exec {id} post"))
    );
    assert!(event_messages(&h, "FailedPostStartHook").is_empty());
    // Deleted from the API: the agent still knows its preStop hook.
    h.cache.replace_all([]);
    for _ in 0..3 {
        round(&mut h, Duration::from_millis(100)).await;
    }
    let calls = rt.calls();
    assert!(
        position(&calls, &format!("exec {id} pre")) < position(&calls, &format!("stop {id}")),
        "{calls:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_post_start_hook_is_an_event_and_kills_the_container() {
    let rt = FakeRuntime::new();
    rt.set_exec_exit("app", 1);
    let mut h = harness(rt.clone());
    let mut p = hooked_pod();
    if let Some(l) = p.spec.containers[0].lifecycle.as_mut() {
        l.pre_stop = None;
    }
    h.cache.replace_all([p]);
    for _ in 0..3 {
        round(&mut h, Duration::from_millis(100)).await;
    }
    let id = rt.list().await.expect("list")[0].id.clone();
    let msgs = event_messages(&h, "FailedPostStartHook");
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert!(
        msgs[0].contains("exited with 1") && msgs[0].contains("app"),
        "{msgs:?}"
    );
    assert!(
        rt.calls().contains(&format!("stop {id}")),
        "{:?}",
        rt.calls()
    );
}
