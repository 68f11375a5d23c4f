//! Tables for single planning passes and a proptest simulation of whole rollouts.

use berth_proto::types::*;
use berth_testkit::builders::at;
use berth_testkit::DeploymentBuilder;
use proptest::prelude::*;

use super::bluegreen::{always_switched, step, Effect, Inputs, State, Switch};
use super::*;

/// The cluster as the controller sees it: ReplicaSets with spec and observed counts.
#[derive(Debug, Clone, Default)]
struct World {
    sets: Vec<ReplicaSet>,
    services: BTreeMap<String, String>,
    removed_annotations: Vec<String>,
    events: Vec<String>,
    /// The cluster registry's tags: (repository, tag) -> digest, read when a set is created.
    tags: BTreeMap<(String, String), String>,
}

/// The cluster registry's address as `berth dev` serves it.
const REGISTRY: &str = "127.0.0.1:5000";

impl World {
    fn apply(&mut self, plan: &Plan, now: Time) {
        for a in &plan.actions {
            match a {
                Action::CreateReplicaSet(rs) => {
                    let mut rs = (**rs).clone();
                    // What the shell does before it creates the set.
                    pin_images(&mut rs, &[REGISTRY.to_string()], |repo, tag| {
                        self.tags.get(&(repo.into(), tag.into())).cloned()
                    });
                    rs.metadata.uid = format!("uid-{}", rs.metadata.name);
                    rs.metadata.creation_timestamp = Some(now);
                    rs.status = Some(ReplicaSetStatus::default());
                    self.sets.push(rs);
                }
                Action::UpdateReplicaSet {
                    name,
                    replicas,
                    revision,
                } => {
                    let rs = self.get_mut(name);
                    rs.spec.replicas = *replicas;
                    if let Some(r) = revision {
                        rs.metadata
                            .annotations
                            .insert(REVISION_ANNOTATION.into(), r.to_string());
                    }
                }
                Action::DeleteReplicaSet { name } => self.sets.retain(|s| s.metadata.name != *name),
                Action::PointService { service, hash } => {
                    self.services.insert(service.clone(), hash.clone());
                }
                Action::RemoveAnnotation { key } => self.removed_annotations.push(key.clone()),
                Action::Event { reason, .. } => self.events.push(reason.clone()),
                Action::MarkRevisionFailed { name, record } => {
                    self.get_mut(name).metadata.annotations.insert(
                        berth_proto::enums::ROLLOUT_FAILED_ANNOTATION.into(),
                        record.clone(),
                    );
                }
            }
        }
    }

    fn get_mut(&mut self, name: &str) -> &mut ReplicaSet {
        self.sets
            .iter_mut()
            .find(|s| s.metadata.name == name)
            .expect("replica set exists")
    }

    /// The ReplicaSet controller and agents: pods follow spec at once; `gain` more become
    /// available per set (scale-downs remove unavailable pods first).
    fn settle(&mut self, gain: i32) {
        for rs in &mut self.sets {
            let st = rs.status.get_or_insert_with(Default::default);
            st.replicas = rs.spec.replicas;
            st.available_replicas = (st.available_replicas + gain).min(st.replicas);
            st.ready_replicas = st.available_replicas;
        }
    }

    fn by_hash(&self, hash: &str) -> Option<&ReplicaSet> {
        self.sets.iter().find(|s| rs_hash(s) == hash)
    }
}

fn run(d: &mut Deployment, w: &mut World, now: Time) -> Plan {
    let p = plan(d, &w.sets, now);
    w.apply(&p, now);
    for k in &w.removed_annotations {
        d.metadata.annotations.remove(k);
    }
    d.status = Some(p.status.clone());
    p
}

fn replicas_of(w: &World, hash: &str) -> i32 {
    w.by_hash(hash).map(|s| s.spec.replicas).unwrap_or(-1)
}

#[test]
fn template_hash_is_stable_and_sensitive() {
    let a = DeploymentBuilder::new("web").image("web:1").build();
    let b = DeploymentBuilder::new("web").image("web:2").build();
    assert_eq!(
        template_hash(&a.spec.template),
        template_hash(&a.clone().spec.template)
    );
    assert_ne!(
        template_hash(&a.spec.template),
        template_hash(&b.spec.template)
    );
    assert_eq!(template_hash(&a.spec.template).len(), 10);
}

#[test]
fn surge_and_unavailable_follow_kubernetes_rounding() {
    let cases = [
        (10, None, (3, 2)), // defaults 25%/25%: surge rounds up, unavailable down
        (1, None, (1, 0)),
        (4, Some(("1", "0")), (1, 0)),
        (4, Some(("0", "0")), (0, 1)),
        (10, Some(("50%", "10%")), (5, 1)),
    ];
    for (replicas, ru, want) in cases {
        let mut b = DeploymentBuilder::new("web").replicas(replicas);
        if let Some((s, u)) = ru {
            b = b.rolling(s, u);
        }
        assert_eq!(surge_and_unavailable(&b.build()), want, "{replicas} {ru:?}");
    }
}

#[test]
fn new_deployment_creates_first_revision_at_full_size() {
    let d = DeploymentBuilder::new("web").replicas(3).build();
    let p = plan(&d, &[], at(0));
    let [Action::CreateReplicaSet(rs)] = p.actions.as_slice() else {
        panic!("{:?}", p.actions)
    };
    let hash = template_hash(&d.spec.template);
    assert_eq!(rs.metadata.name, format!("web-{hash}"));
    assert_eq!(rs.spec.replicas, 3);
    assert_eq!(rs.metadata.annotations[REVISION_ANNOTATION], "1");
    assert_eq!(rs.spec.template.metadata.labels[TEMPLATE_HASH_LABEL], hash);
    assert_eq!(rs.spec.selector.match_labels[TEMPLATE_HASH_LABEL], hash);
    assert_eq!(rs.metadata.owner_references[0].uid, d.metadata.uid);
    assert!(rs.metadata.owner_references[0].controller);
}

#[test]
fn rolling_update_surges_one_then_scales_old_down_as_new_becomes_available() {
    let mut d = DeploymentBuilder::new("web")
        .replicas(3)
        .rolling("1", "0")
        .build();
    let mut w = World::default();
    run(&mut d, &mut w, at(0));
    w.settle(3);
    run(&mut d, &mut w, at(1));
    let old = template_hash(&d.spec.template);

    d.spec.template.spec.containers[0].image = "app:2".into();
    let new = template_hash(&d.spec.template);
    run(&mut d, &mut w, at(2));
    assert_eq!((replicas_of(&w, &old), replicas_of(&w, &new)), (3, 1));
    // Nothing available yet on the new side: old must not shrink (maxUnavailable 0).
    w.settle(0);
    run(&mut d, &mut w, at(3));
    assert_eq!((replicas_of(&w, &old), replicas_of(&w, &new)), (3, 1));
    w.settle(1);
    run(&mut d, &mut w, at(4));
    assert_eq!((replicas_of(&w, &old), replicas_of(&w, &new)), (2, 1));
    run(&mut d, &mut w, at(5));
    assert_eq!((replicas_of(&w, &old), replicas_of(&w, &new)), (2, 2));
}

#[test]
fn recreate_scales_old_to_zero_before_creating_new() {
    let mut d = DeploymentBuilder::new("web").replicas(2).recreate().build();
    let mut w = World::default();
    run(&mut d, &mut w, at(0));
    w.settle(2);
    d.spec.template.spec.containers[0].image = "app:2".into();
    let new = template_hash(&d.spec.template);
    let p = run(&mut d, &mut w, at(1));
    assert!(!p
        .actions
        .iter()
        .any(|a| matches!(a, Action::CreateReplicaSet(_))));
    assert_eq!(w.sets[0].spec.replicas, 0);
    // Old pods still exist: wait.
    let p = plan(&d, &w.sets, at(2));
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    w.settle(0);
    run(&mut d, &mut w, at(3));
    assert_eq!(replicas_of(&w, &new), 2);
}

#[test]
fn revision_history_limit_prunes_oldest_idle_revisions() {
    let mut d = DeploymentBuilder::new("web")
        .replicas(1)
        .revision_history_limit(2)
        .build();
    let mut w = World::default();
    for i in 1..=5 {
        d.spec.template.spec.containers[0].image = format!("app:{i}");
        for t in 0..20 {
            run(&mut d, &mut w, at(i * 100 + t));
            w.settle(1);
        }
    }
    let mut revs: Vec<i64> = w.sets.iter().map(revision).collect();
    revs.sort();
    assert_eq!(revs, vec![3, 4, 5]);
}

#[test]
fn rollback_to_old_template_reuses_its_replica_set_as_newest_revision() {
    let mut d = DeploymentBuilder::new("web").replicas(1).build();
    let mut w = World::default();
    let v1 = template_hash(&d.spec.template);
    for i in 0..10 {
        run(&mut d, &mut w, at(i));
        w.settle(1);
    }
    d.spec.template.spec.containers[0].image = "app:2".into();
    for i in 10..20 {
        run(&mut d, &mut w, at(i));
        w.settle(1);
    }
    d.spec.template.spec.containers[0].image = "app:1".into();
    for i in 20..30 {
        run(&mut d, &mut w, at(i));
        w.settle(1);
    }
    assert_eq!(w.sets.len(), 2);
    let rs = w.by_hash(&v1).expect("v1 set");
    assert_eq!(revision(rs), 3);
    assert_eq!(rs.spec.replicas, 1);
}

#[test]
fn status_reports_complete_rollout() {
    let mut d = DeploymentBuilder::new("web")
        .replicas(2)
        .generation(4)
        .build();
    let mut w = World::default();
    for i in 0..5 {
        run(&mut d, &mut w, at(i));
        w.settle(2);
    }
    let st = d.status.clone().expect("status");
    assert_eq!(
        (
            st.observed_generation,
            st.replicas,
            st.updated_replicas,
            st.ready_replicas,
            st.available_replicas,
            st.unavailable_replicas
        ),
        (4, 2, 2, 2, 2, 0)
    );
    let prog = condition(&st.conditions, "Progressing").expect("progressing");
    assert_eq!(
        (prog.status.as_str(), prog.reason.as_str()),
        ("True", "NewReplicaSetAvailable")
    );
    assert!(condition(&st.conditions, "Available")
        .expect("available")
        .is_true());
}

#[test]
fn progress_deadline_exceeded_when_no_progress() {
    let mut d = DeploymentBuilder::new("web")
        .replicas(2)
        .progress_deadline_seconds(10)
        .build();
    let mut w = World::default();
    run(&mut d, &mut w, at(0));
    w.settle(0); // pods exist but never become available
    let p = run(&mut d, &mut w, at(1));
    assert!(p.requeue_after.is_some());
    run(&mut d, &mut w, at(5));
    let c = condition(&d.status.as_ref().expect("st").conditions, "Progressing")
        .expect("cond")
        .clone();
    assert_eq!(c.reason, "ReplicaSetUpdated");
    run(&mut d, &mut w, at(12));
    let c = condition(&d.status.as_ref().expect("st").conditions, "Progressing")
        .expect("cond")
        .clone();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "ProgressDeadlineExceeded")
    );
    let avail = condition(&d.status.as_ref().expect("st").conditions, "Available").expect("a");
    assert_eq!(avail.reason, "MinimumReplicasUnavailable");
    // Progress resumes: the condition recovers.
    w.settle(1);
    run(&mut d, &mut w, at(13));
    let c = condition(&d.status.as_ref().expect("st").conditions, "Progressing").expect("c");
    assert!(c.is_true());
}

#[test]
fn settled_deployment_plans_an_identical_status() {
    // Otherwise every pass would write status, wake every watcher and re-run itself.
    for mut d in [
        DeploymentBuilder::new("web").replicas(2).build(),
        DeploymentBuilder::new("web").replicas(2).paused().build(),
        bg_deploy(false),
    ] {
        let mut w = World::default();
        for i in 0..10 {
            run(&mut d, &mut w, at(i));
            w.settle(2);
        }
        let p = plan(&d, &w.sets, at(100));
        assert_eq!(Some(&p.status), d.status.as_ref());
        assert!(p
            .actions
            .iter()
            .all(|a| matches!(a, Action::PointService { .. })));
    }
}

#[test]
fn blue_green_paused_has_no_progress_deadline() {
    let mut d = bg_deploy(false);
    let mut w = World::default();
    run(&mut d, &mut w, at(0));
    w.settle(2);
    d.spec.template.spec.containers[0].image = "app:2".into();
    run(&mut d, &mut w, at(1));
    w.settle(2);
    run(&mut d, &mut w, at(2));
    assert_eq!(phase(&d), "Paused");
    run(&mut d, &mut w, at(5000));
    let c = condition(&d.status.as_ref().expect("st").conditions, "Progressing").expect("c");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "RolloutPaused")
    );
}

#[test]
fn paused_deployment_still_scales_its_single_revision() {
    let mut d = DeploymentBuilder::new("web").replicas(2).build();
    let mut w = World::default();
    run(&mut d, &mut w, at(0));
    w.settle(2);
    d.spec.paused = true;
    d.spec.replicas = Some(5);
    run(&mut d, &mut w, at(1));
    assert_eq!(w.sets[0].spec.replicas, 5);
}

#[test]
fn paused_deployment_changes_nothing() {
    let mut d = DeploymentBuilder::new("web").replicas(2).build();
    let mut w = World::default();
    run(&mut d, &mut w, at(0));
    w.settle(2);
    d.spec.paused = true;
    d.spec.template.spec.containers[0].image = "app:2".into();
    let p = plan(&d, &w.sets, at(1));
    assert!(p.actions.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Blue-green

fn bg_deploy(auto: bool) -> Deployment {
    DeploymentBuilder::new("web")
        .replicas(2)
        .blue_green("web-active", Some("web-preview"))
        .blue_green_with(|bg| {
            bg.auto_promotion_enabled = Some(auto);
            bg.scale_down_delay_seconds = Some(30);
        })
        .progress_deadline_seconds(60)
        .build()
}

fn phase(d: &Deployment) -> String {
    d.status
        .as_ref()
        .and_then(|s| s.blue_green.as_ref())
        .map(|b| b.phase.clone())
        .unwrap_or_default()
}

#[test]
fn blue_green_promote_then_undo_switches_active_service_back_instantly() {
    let mut d = bg_deploy(false);
    let mut w = World::default();
    let blue = template_hash(&d.spec.template);
    run(&mut d, &mut w, at(0));
    assert_eq!(w.services["web-active"], blue);
    w.settle(2);
    run(&mut d, &mut w, at(1));
    assert_eq!(phase(&d), "Healthy");

    d.spec.template.spec.containers[0].image = "app:2".into();
    let green = template_hash(&d.spec.template);
    run(&mut d, &mut w, at(10));
    assert_eq!(phase(&d), "Progressing");
    assert_eq!((replicas_of(&w, &blue), replicas_of(&w, &green)), (2, 2));
    assert_eq!(w.services["web-active"], blue);
    assert_eq!(w.services["web-preview"], green);
    w.settle(2);
    run(&mut d, &mut w, at(11));
    assert_eq!(phase(&d), "Paused", "manual promotion awaited");
    assert_eq!(w.services["web-active"], blue);

    d.metadata
        .annotations
        .insert(PROMOTE_ANNOTATION.into(), "true".into());
    run(&mut d, &mut w, at(20));
    assert_eq!(phase(&d), "Promoting");
    assert_eq!(w.services["web-active"], green);
    assert!(w
        .removed_annotations
        .contains(&PROMOTE_ANNOTATION.to_string()));
    assert!(!d.metadata.annotations.contains_key(PROMOTE_ANNOTATION));
    assert_eq!(replicas_of(&w, &blue), 2, "blue kept for the delay");

    // Undo within the delay: the template goes back to blue's.
    d.spec.template.spec.containers[0].image = "app:1".into();
    run(&mut d, &mut w, at(25));
    assert_eq!(w.services["web-active"], blue);
    assert_eq!(phase(&d), "Promoting");
    assert!(w.events.contains(&"RolledBack".to_string()));

    // After the delay the other revision is scaled down.
    run(&mut d, &mut w, at(56));
    assert_eq!(phase(&d), "Healthy");
    assert_eq!((replicas_of(&w, &blue), replicas_of(&w, &green)), (2, 0));
}

#[test]
fn blue_green_auto_promotes_when_green_ready() {
    let mut d = bg_deploy(true);
    let mut w = World::default();
    run(&mut d, &mut w, at(0));
    w.settle(2);
    d.spec.template.spec.containers[0].image = "app:2".into();
    let green = template_hash(&d.spec.template);
    run(&mut d, &mut w, at(1));
    w.settle(2);
    run(&mut d, &mut w, at(2));
    assert_eq!(w.services["web-active"], green);
    assert_eq!(phase(&d), "Promoting");
}

#[test]
fn blue_green_auto_promotion_seconds_waits() {
    let mut d = bg_deploy(true);
    if let Some(bg) = d.spec.strategy.as_mut().and_then(|s| s.blue_green.as_mut()) {
        bg.auto_promotion_seconds = Some(10);
    }
    let mut w = World::default();
    let blue = template_hash(&d.spec.template);
    run(&mut d, &mut w, at(0));
    w.settle(2);
    d.spec.template.spec.containers[0].image = "app:2".into();
    let green = template_hash(&d.spec.template);
    run(&mut d, &mut w, at(1));
    w.settle(2);
    let p = run(&mut d, &mut w, at(2));
    assert_eq!(phase(&d), "Paused");
    assert!(p.requeue_after.is_some_and(|r| r.as_secs() <= 10));
    run(&mut d, &mut w, at(8));
    assert_eq!(w.services["web-active"], blue);
    run(&mut d, &mut w, at(13));
    assert_eq!(w.services["web-active"], green);
}

#[test]
fn blue_green_abort_drops_green_and_keeps_blue() {
    let mut d = bg_deploy(false);
    let mut w = World::default();
    let blue = template_hash(&d.spec.template);
    run(&mut d, &mut w, at(0));
    w.settle(2);
    d.spec.template.spec.containers[0].image = "app:2".into();
    let green = template_hash(&d.spec.template);
    run(&mut d, &mut w, at(1));
    d.metadata
        .annotations
        .insert(ABORT_ANNOTATION.into(), "true".into());
    run(&mut d, &mut w, at(2));
    assert_eq!(phase(&d), "Degraded");
    assert_eq!(w.services["web-active"], blue);
    assert_eq!(w.services["web-preview"], blue);
    assert_eq!(replicas_of(&w, &green), 0);
    // Stays aborted while the template is unchanged.
    run(&mut d, &mut w, at(3));
    assert_eq!(replicas_of(&w, &green), 0);
    assert_eq!(phase(&d), "Degraded");
}

#[test]
fn blue_green_green_not_ready_past_deadline_aborts_with_event() {
    let mut d = bg_deploy(true);
    let mut w = World::default();
    let blue = template_hash(&d.spec.template);
    run(&mut d, &mut w, at(0));
    w.settle(2);
    d.spec.template.spec.containers[0].image = "app:2".into();
    run(&mut d, &mut w, at(1));
    w.settle(0);
    run(&mut d, &mut w, at(30));
    assert_eq!(phase(&d), "Progressing");
    run(&mut d, &mut w, at(62));
    assert_eq!(phase(&d), "Degraded");
    assert_eq!(w.services["web-active"], blue);
    assert!(w.events.contains(&"ProgressDeadlineExceeded".to_string()));
}

#[test]
fn blue_green_step_is_pure_and_stable_when_nothing_changes() {
    let ready = |_: &str| true;
    let inp = Inputs {
        current: "a",
        ready: &ready,
        promote_requested: false,
        abort_requested: false,
        auto_promotion_enabled: false,
        auto_promotion_seconds: 0,
        scale_down_delay_seconds: 30,
        progress_deadline_seconds: 600,
        active_switch: &always_switched,
        preview_switch: &always_switched,
        barrier_timeout_seconds: 30,
        now: at(0),
    };
    let s = State::Healthy { active: "a".into() };
    assert_eq!(step(&s, &inp), (s.clone(), vec![]));
    let (s2, _) = step(&State::Initial, &inp);
    assert_eq!(s2, s);
    let encoded = State::Paused {
        active: "a".into(),
        green: "b".into(),
        since: at(3),
    };
    let bg = encoded.encode(true, None);
    assert_eq!(State::decode(Some(&bg), at(9)), encoded);
}

/// Inputs for the blue-green table tests below: manual promotion, 3 s scale-down delay.
fn bg_inputs<'a>(current: &'a str, ready: &'a dyn Fn(&str) -> bool, now: Time) -> Inputs<'a> {
    Inputs {
        current,
        ready,
        promote_requested: false,
        abort_requested: false,
        auto_promotion_enabled: false,
        auto_promotion_seconds: 0,
        scale_down_delay_seconds: 3,
        progress_deadline_seconds: 600,
        active_switch: &always_switched,
        preview_switch: &always_switched,
        barrier_timeout_seconds: 30,
        now,
    }
}

#[test]
fn blue_green_new_template_during_promoting_starts_a_new_green_and_pauses() {
    // v7 was just promoted over v6; v8 arrives 0.1 s later, before the 3 s scale-down.
    let promoting = State::Promoting {
        active: "v7".into(),
        previous: "v6".into(),
        promoted_at: at(10),
        switched: Some(at(10)),
        scale_down_at: Some(at(13)),
    };
    let not_ready = |h: &str| h != "v8";
    let now = at(10) + chrono::Duration::milliseconds(100);
    let (s, _) = step(&promoting, &bg_inputs("v8", &not_ready, now));
    assert_eq!(
        s,
        State::Progressing {
            active: "v7".into(),
            green: "v8".into(),
            since: now,
        }
    );
    let all_ready = |_: &str| true;
    let (s, fx) = step(&s, &bg_inputs("v8", &all_ready, at(12)));
    assert_eq!(
        s.active(),
        Some("v7"),
        "v8 must not go live without a promote"
    );
    assert_eq!(s.preview(), Some("v8"));
    assert!(matches!(s, State::Paused { .. }), "{s:?}");
    assert!(fx.is_empty(), "{fx:?}");
    // Still paused after the old delay has run out.
    let (s, _) = step(&s, &bg_inputs("v8", &all_ready, at(20)));
    assert!(matches!(s, State::Paused { .. }), "{s:?}");
}

#[test]
fn blue_green_promote_request_left_over_from_last_promotion_does_not_promote_next_green() {
    // The controller promoted v7 but its write clearing the promote annotation lost a
    // conflict with the v8 apply, so the request for v7 is still set when v8 is seen.
    let promoting = State::Promoting {
        active: "v7".into(),
        previous: "v6".into(),
        promoted_at: at(10),
        switched: Some(at(10)),
        scale_down_at: Some(at(13)),
    };
    let not_ready = |h: &str| h != "v8";
    let now = at(10) + chrono::Duration::milliseconds(100);
    fn stale(inp: Inputs<'_>) -> Inputs<'_> {
        Inputs {
            promote_requested: true,
            ..inp
        }
    }
    let (s, fx) = step(&promoting, &stale(bg_inputs("v8", &not_ready, now)));
    assert_eq!(s.active(), Some("v7"));
    assert!(matches!(s, State::Progressing { .. }), "{s:?}");
    assert!(
        fx.contains(&Effect::ConsumePromote),
        "the spent request is cleared: {fx:?}"
    );
    // Had the clear failed again, the request is still not applied to v8.
    let all_ready = |_: &str| true;
    let (s, _) = step(&s, &bg_inputs("v8", &all_ready, at(12)));
    assert!(matches!(s, State::Paused { .. }), "{s:?}");
    assert_eq!(
        s.active(),
        Some("v7"),
        "v8 must not go live without a promote"
    );
    // A promote given while v8 is shown in preview does promote it.
    let (s, fx) = step(&s, &stale(bg_inputs("v8", &all_ready, at(14))));
    assert_eq!(s.active(), Some("v8"));
    assert!(fx.contains(&Effect::ConsumePromote));
}

#[test]
fn blue_green_abort_request_left_over_from_degraded_does_not_abort_next_green() {
    // v7 was aborted; the clear of the abort annotation was lost and v8 is applied.
    let degraded = State::Degraded {
        active: "v6".into(),
        aborted: "v7".into(),
        since: at(1),
        switched: Some(at(1)),
    };
    let not_ready = |h: &str| h != "v8";
    let inp = Inputs {
        abort_requested: true,
        ..bg_inputs("v8", &not_ready, at(5))
    };
    let (s, fx) = step(&degraded, &inp);
    assert_eq!(
        s,
        State::Progressing {
            active: "v6".into(),
            green: "v8".into(),
            since: at(5),
        }
    );
    assert_eq!(fx, vec![Effect::ConsumeAbort]);
}

#[test]
fn blue_green_template_changed_mid_promotion_pauses_before_going_live() {
    // Plan level: promote v2, then v3 is applied before the scale-down delay, while the
    // promote annotation for v2 is still on the object (its clear lost a write conflict).
    let mut d = bg_deploy(false);
    let mut w = World::default();
    let blue = template_hash(&d.spec.template);
    run(&mut d, &mut w, at(0));
    w.settle(2);
    d.spec.template.spec.containers[0].image = "app:2".into();
    let v2 = template_hash(&d.spec.template);
    run(&mut d, &mut w, at(1));
    w.settle(2);
    run(&mut d, &mut w, at(2));
    assert_eq!(phase(&d), "Paused");
    d.metadata
        .annotations
        .insert(PROMOTE_ANNOTATION.into(), "true".into());
    let p = plan(&d, &w.sets, at(3));
    w.apply(&p, at(3));
    d.status = Some(p.status.clone());
    assert!(w
        .removed_annotations
        .contains(&PROMOTE_ANNOTATION.to_string()));
    w.removed_annotations.clear(); // the annotation clear is lost
    assert_eq!(phase(&d), "Promoting");
    assert_eq!(w.services["web-active"], v2);

    d.spec.template.spec.containers[0].image = "app:3".into();
    let v3 = template_hash(&d.spec.template);
    run(&mut d, &mut w, at(3));
    assert_eq!(phase(&d), "Progressing");
    assert!(!d.metadata.annotations.contains_key(PROMOTE_ANNOTATION));
    w.settle(2);
    run(&mut d, &mut w, at(4));
    w.settle(2);
    run(&mut d, &mut w, at(40));
    assert_eq!(phase(&d), "Paused", "v3 waits for its own promote");
    assert_eq!(w.services["web-active"], v2);
    assert_eq!(w.services["web-preview"], v3);
    assert_eq!(replicas_of(&w, &blue), 0, "the old blue is scaled down");
    assert_eq!((replicas_of(&w, &v2), replicas_of(&w, &v3)), (2, 2));
}

// ---------------------------------------------------------------------------------------------
// Properties

fn arb_bound() -> impl Strategy<Value = String> {
    prop_oneof![
        (0i32..4).prop_map(|i| i.to_string()),
        prop::sample::select(vec!["0%", "10%", "25%", "50%", "100%"]).prop_map(String::from),
    ]
}

proptest! {
    #[test]
    fn rolling_update_never_exceeds_max_surge_or_max_unavailable(
        replicas in 1i32..12,
        surge in arb_bound(),
        unavailable in arb_bound(),
        gains in prop::collection::vec(0i32..3, 1..30),
    ) {
        let mut d = DeploymentBuilder::new("web")
            .replicas(replicas)
            .rolling(&surge, &unavailable)
            .build();
        let (max_surge, max_unavailable) = surge_and_unavailable(&d);
        let mut w = World::default();
        // A settled first revision.
        for i in 0..(replicas as i64 + 5) * 3 {
            run(&mut d, &mut w, at(i));
            w.settle(replicas);
        }
        d.spec.template.spec.containers[0].image = "app:2".into();
        let new = template_hash(&d.spec.template);
        let mut t = 1000;
        for round in 0..400 {
            t += 1;
            run(&mut d, &mut w, at(t));
            let total: i32 = w.sets.iter().map(|s| s.spec.replicas).sum();
            prop_assert!(total <= replicas + max_surge, "total {} > {} + {}", total, replicas, max_surge);
            // Available pods that survive the planned sizes (scale-downs remove unavailable
            // pods first).
            let available: i32 = w
                .sets
                .iter()
                .map(|s| s.status.as_ref().map(|st| st.available_replicas).unwrap_or(0).min(s.spec.replicas))
                .sum();
            prop_assert!(available >= replicas - max_unavailable,
                "available {} < {} - {}", available, replicas, max_unavailable);
            // Pods become available at the generated pace, and always eventually.
            let g = gains[round % gains.len()].max(i32::from(round % 3 == 0));
            w.settle(g);
            let done = w.sets.iter().all(|s| {
                let st = s.status.clone().unwrap_or_default();
                if rs_hash(s) == new {
                    s.spec.replicas == replicas && st.available_replicas == replicas
                } else {
                    s.spec.replicas == 0 && st.replicas == 0
                }
            });
            if done {
                break;
            }
        }
        prop_assert_eq!(replicas_of(&w, &new), replicas, "rollout did not finish");
        prop_assert!(w.sets.iter().filter(|s| rs_hash(s) != new).all(|s| s.spec.replicas == 0));
    }
}

// Digest pinning: a new ReplicaSet runs the digest its tags had when the template changed.

fn digest(n: u8) -> String {
    berth_proto::image::sha256_digest(&[n])
}

fn push(w: &mut World, repo: &str, tag: &str, d: &str) {
    w.tags.insert((repo.into(), tag.into()), d.into());
}

/// The images a pod the ReplicaSet creates now would run.
fn pod_images(rs: &ReplicaSet) -> Vec<String> {
    crate::replicaset::new_pod(rs, "p")
        .spec
        .containers
        .into_iter()
        .map(|c| c.image)
        .collect()
}

fn current<'a>(d: &Deployment, w: &'a World) -> &'a ReplicaSet {
    w.by_hash(&template_hash(&d.spec.template))
        .expect("current set")
}

fn settle_rollout(d: &mut Deployment, w: &mut World, from: i64) {
    for i in from..from + 20 {
        run(d, w, at(i));
        w.settle(10);
    }
}

#[test]
fn a_new_replica_set_pins_cluster_tags_to_their_current_digest() {
    let mut d = DeploymentBuilder::new("web").image("nginx:1.14.2").build();
    let mut w = World::default();
    push(&mut w, "nginx", "1.14.2", &digest(1));
    run(&mut d, &mut w, at(0));
    let rs = current(&d, &w);
    assert_eq!(pod_images(rs), vec![format!("nginx:1.14.2@{}", digest(1))]);
    // The pins are recorded on the set; its template keeps what the user wrote.
    assert_eq!(
        berth_proto::image::image_pins(&rs.metadata.annotations)["app"],
        format!("nginx:1.14.2@{}", digest(1))
    );
    assert_eq!(rs.spec.template.spec.containers[0].image, "nginx:1.14.2");
    // A registry-qualified name of the cluster registry is a cluster image too.
    let mut d = DeploymentBuilder::new("shop")
        .image(&format!("{REGISTRY}/shop/web:1"))
        .build();
    push(&mut w, "shop/web", "1", &digest(2));
    run(&mut d, &mut w, at(1));
    assert_eq!(
        pod_images(current(&d, &w)),
        vec![format!("{REGISTRY}/shop/web:1@{}", digest(2))]
    );
}

#[test]
fn scaling_up_after_the_tag_moved_still_runs_the_pinned_digest() {
    let mut d = DeploymentBuilder::new("web")
        .replicas(1)
        .image("nginx:1.14.2")
        .build();
    let mut w = World::default();
    push(&mut w, "nginx", "1.14.2", &digest(1));
    settle_rollout(&mut d, &mut w, 0);
    push(&mut w, "nginx", "1.14.2", &digest(2)); // docker push of a new image, same tag
    d.spec.replicas = Some(4);
    settle_rollout(&mut d, &mut w, 100);
    assert_eq!(w.sets.len(), 1, "scaling makes no new revision");
    let rs = current(&d, &w);
    assert_eq!(rs.spec.replicas, 4);
    assert_eq!(pod_images(rs), vec![format!("nginx:1.14.2@{}", digest(1))]);
}

#[test]
fn rollout_restart_resolves_the_tag_again_and_undo_returns_to_the_old_digest() {
    let mut d = DeploymentBuilder::new("web")
        .replicas(2)
        .image("nginx:1.14.2")
        .build();
    let mut w = World::default();
    push(&mut w, "nginx", "1.14.2", &digest(1));
    settle_rollout(&mut d, &mut w, 0);
    let first = template_hash(&d.spec.template);
    push(&mut w, "nginx", "1.14.2", &digest(2));
    // `berth rollout restart`: the template annotation changes, so a new revision.
    d.spec
        .template
        .metadata
        .annotations
        .insert("kubectl.kubernetes.io/restartedAt".into(), "now".into());
    settle_rollout(&mut d, &mut w, 100);
    let restarted = current(&d, &w);
    assert_ne!(rs_hash(restarted), first);
    assert_eq!(
        pod_images(restarted),
        vec![format!("nginx:1.14.2@{}", digest(2))]
    );
    assert_eq!(replicas_of(&w, &first), 0);

    // `berth rollout undo`: the old set's template (without its hash label) comes back.
    push(&mut w, "nginx", "1.14.2", &digest(3));
    let mut template = w.by_hash(&first).expect("old set").spec.template.clone();
    template.metadata.labels.remove(TEMPLATE_HASH_LABEL);
    d.spec.template = template;
    settle_rollout(&mut d, &mut w, 200);
    assert_eq!(template_hash(&d.spec.template), first);
    assert_eq!(w.sets.len(), 2, "undo reuses the old set");
    let back = current(&d, &w);
    assert_eq!(back.spec.replicas, 2);
    assert_eq!(
        pod_images(back),
        vec![format!("nginx:1.14.2@{}", digest(1))]
    );
}

#[test]
fn external_images_digest_references_and_missing_tags_are_left_as_written() {
    let pinned = format!("nginx:1.14.2@{}", digest(9));
    let mut w = World::default();
    push(&mut w, "nginx", "1.14.2", &digest(1));
    push(&mut w, "app", "1", &digest(4));
    for image in [
        pinned.as_str(),               // already by digest
        "quay.io/app:1",               // another registry, even with a same-named cluster tag
        "busybox:1.36",                // not in the cluster registry: the engine pulls it
        "127.0.0.1:5001/nginx:1.14.2", // not the cluster registry's address
    ] {
        let mut d = DeploymentBuilder::new("web").image(image).build();
        run(&mut d, &mut w, at(0));
        let rs = current(&d, &w);
        assert_eq!(pod_images(rs), vec![image.to_string()], "{image}");
        assert!(
            !rs.metadata
                .annotations
                .contains_key(berth_proto::image::IMAGE_DIGESTS_ANNOTATION),
            "{image}"
        );
    }
}

#[test]
fn pins_leave_the_template_hash_of_the_users_template() {
    let d = DeploymentBuilder::new("web").image("nginx:1.14.2").build();
    let hash = template_hash(&d.spec.template);
    let mut w = World::default();
    push(&mut w, "nginx", "1.14.2", &digest(1));
    let mut d1 = d.clone();
    run(&mut d1, &mut w, at(0));
    let mut w2 = World::default();
    push(&mut w2, "nginx", "1.14.2", &digest(2));
    let mut d2 = d.clone();
    run(&mut d2, &mut w2, at(0));
    // Same template, same revision name, whatever the digest; the set is current.
    assert_eq!(rs_hash(&w.sets[0]), hash);
    assert_eq!(w.sets[0].metadata.name, w2.sets[0].metadata.name);
    assert!(plan(&d1, &w.sets, at(1))
        .actions
        .iter()
        .all(|a| !matches!(a, Action::CreateReplicaSet(_))));
}

/// [`run`] with a traffic-switch barrier: the active Service's switch to a revision is
/// confirmed only for the hashes in `confirmed` (the rest name node-2 as lagging).
fn run_barrier(d: &mut Deployment, w: &mut World, confirmed: &[&str], now: Time) -> Plan {
    let active = |h: &str| {
        if confirmed.contains(&h) {
            Switch::Confirmed
        } else {
            Switch::Pending("node(s) node-2 have not programmed Endpoints revision 42".into())
        }
    };
    let p = plan_with(d, &w.sets, &active, &active, now);
    w.apply(&p, now);
    for k in &w.removed_annotations {
        d.metadata.annotations.remove(k);
    }
    d.status = Some(p.status.clone());
    p
}

/// A blue-green Deployment settled on blue, then green ready and paused; returns (blue, green).
fn paused_green(d: &mut Deployment, w: &mut World) -> (String, String) {
    let blue = template_hash(&d.spec.template);
    run(d, w, at(0));
    w.settle(2);
    run(d, w, at(1));
    d.spec.template.spec.containers[0].image = "app:2".into();
    let green = template_hash(&d.spec.template);
    run(d, w, at(10));
    w.settle(2);
    run(d, w, at(11));
    assert_eq!(phase(d), "Paused");
    (blue, green)
}

fn bg_status(d: &Deployment) -> BlueGreenStatus {
    d.status
        .as_ref()
        .and_then(|s| s.blue_green.clone())
        .unwrap_or_default()
}

#[test]
fn blue_green_scale_down_delay_starts_only_when_every_proxy_has_the_switch() {
    let mut d = bg_deploy(false);
    let mut w = World::default();
    let (blue, green) = paused_green(&mut d, &mut w);
    d.metadata
        .annotations
        .insert(PROMOTE_ANNOTATION.into(), "true".into());
    run_barrier(&mut d, &mut w, &[], at(20));
    assert_eq!(
        w.services["web-active"], green,
        "the switch is written at once"
    );
    assert_eq!(phase(&d), "Promoting");
    assert_eq!(
        bg_status(&d).scale_down_at,
        None,
        "no delay before the barrier"
    );
    // Long past the 30 s delay counted from the promotion, blue is still there: the barrier
    // has not passed (and is within its own timeout).
    run_barrier(&mut d, &mut w, &[], at(20) + chrono::Duration::seconds(29));
    assert_eq!(replicas_of(&w, &blue), 2);
    // Confirmed at 45: the delay runs from there.
    run_barrier(&mut d, &mut w, &[&green], at(45));
    let st = bg_status(&d);
    assert_eq!(st.switch_confirmed_at, Some(at(45)));
    assert_eq!(st.scale_down_at, Some(at(75)));
    assert!(w.events.contains(&"TrafficSwitched".to_string()));
    run_barrier(&mut d, &mut w, &[&green], at(74));
    assert_eq!(replicas_of(&w, &blue), 2, "still inside the delay");
    run_barrier(&mut d, &mut w, &[&green], at(76));
    assert_eq!(phase(&d), "Healthy");
    assert_eq!((replicas_of(&w, &blue), replicas_of(&w, &green)), (0, 2));
}

#[test]
fn blue_green_barrier_timeout_goes_on_and_names_the_laggards() {
    let mut d = bg_deploy(false);
    let mut w = World::default();
    let (_, _) = paused_green(&mut d, &mut w);
    d.metadata
        .annotations
        .insert(PROMOTE_ANNOTATION.into(), "true".into());
    run_barrier(&mut d, &mut w, &[], at(20));
    let p = run_barrier(&mut d, &mut w, &[], at(51));
    let warning = p.actions.iter().find_map(|a| match a {
        Action::Event {
            reason, message, ..
        } if reason == "SwitchBarrierTimeout" => Some(message.clone()),
        _ => None,
    });
    assert!(
        warning.as_deref().is_some_and(|m| m.contains("node-2")),
        "{warning:?}"
    );
    assert_eq!(bg_status(&d).scale_down_at, Some(at(81)));
}

#[test]
fn blue_green_zero_scale_down_delay_scales_blue_down_right_after_the_barrier() {
    let mut d = bg_deploy(false);
    if let Some(bg) = d.spec.strategy.as_mut().and_then(|s| s.blue_green.as_mut()) {
        bg.scale_down_delay_seconds = Some(0);
    }
    let mut w = World::default();
    let (blue, green) = paused_green(&mut d, &mut w);
    d.metadata
        .annotations
        .insert(PROMOTE_ANNOTATION.into(), "true".into());
    run_barrier(&mut d, &mut w, &[], at(20));
    assert_eq!(replicas_of(&w, &blue), 2, "not before the barrier");
    run_barrier(&mut d, &mut w, &[&green], at(21));
    assert_eq!(phase(&d), "Healthy");
    assert_eq!((replicas_of(&w, &blue), replicas_of(&w, &green)), (0, 2));
}

#[test]
fn blue_green_undo_inside_the_scale_down_delay_creates_zero_pods() {
    let mut d = bg_deploy(false);
    let mut w = World::default();
    let (blue, green) = paused_green(&mut d, &mut w);
    d.metadata
        .annotations
        .insert(PROMOTE_ANNOTATION.into(), "true".into());
    run_barrier(&mut d, &mut w, &[&green], at(20));
    assert!(bg_status(&d).scale_down_at.is_some());
    let sizes = |w: &World| -> Vec<(String, i32)> {
        w.sets
            .iter()
            .map(|s| (s.metadata.name.clone(), s.spec.replicas))
            .collect()
    };
    let before = sizes(&w);
    d.spec.template.spec.containers[0].image = "app:1".into();
    let p = run_barrier(&mut d, &mut w, &[&green], at(25));
    assert!(
        !p.actions
            .iter()
            .any(|a| matches!(a, Action::CreateReplicaSet(_))),
        "{:?}",
        p.actions
    );
    assert_eq!(sizes(&w), before, "no set grows: no pod is created");
    assert_eq!(w.services["web-active"], blue);
    assert_eq!(
        bg_status(&d).scale_down_at,
        None,
        "the switch back waits for the barrier"
    );
    run_barrier(&mut d, &mut w, &[&green, &blue], at(26));
    assert_eq!(bg_status(&d).scale_down_at, Some(at(56)));
    assert_eq!(sizes(&w), before);
}

#[test]
fn blue_green_side_waiting_to_scale_down_is_not_held_to_the_progress_deadline() {
    let mut d = bg_deploy(false);
    if let Some(bg) = d.spec.strategy.as_mut().and_then(|s| s.blue_green.as_mut()) {
        bg.scale_down_delay_seconds = Some(600);
    }
    let mut w = World::default();
    let (_, green) = paused_green(&mut d, &mut w);
    d.metadata
        .annotations
        .insert(PROMOTE_ANNOTATION.into(), "true".into());
    run_barrier(&mut d, &mut w, &[&green], at(20));
    // 60 s progress deadline, long passed while blue waits out its 600 s delay.
    run_barrier(&mut d, &mut w, &[&green], at(300));
    let p = run_barrier(&mut d, &mut w, &[&green], at(400));
    let c = condition(&p.status.conditions, "Progressing").expect("Progressing");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "ScaleDownDelay")
    );
}

#[test]
fn blue_green_abort_keeps_green_until_the_preview_switch_back_is_confirmed() {
    let mut d = bg_deploy(false);
    let mut w = World::default();
    let (blue, green) = paused_green(&mut d, &mut w);
    d.metadata
        .annotations
        .insert(ABORT_ANNOTATION.into(), "true".into());
    run_barrier(&mut d, &mut w, &[], at(20));
    assert_eq!(phase(&d), "Degraded");
    assert_eq!(w.services["web-preview"], blue);
    assert_eq!(
        replicas_of(&w, &green),
        2,
        "green kept while proxies switch back"
    );
    run_barrier(&mut d, &mut w, &[&blue], at(21));
    assert_eq!(replicas_of(&w, &green), 0);
    assert_eq!(bg_status(&d).switch_confirmed_at, Some(at(21)));
}
