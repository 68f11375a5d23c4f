//! REST watches (as `kubectl get --raw '...?watch=1'` streams them) while the leader is
//! killed: the one on a follower keeps streaming (or, if it ends, a relist and a rewatch from
//! its last resourceVersion cover every change); the one on the leader ends, and a rewatch on
//! a survivor from its last resourceVersion delivers every later change. No watch delivers an
//! event twice.
//!
//! Needs kubectl (fails under CI=true without it; .ci/run installs it).

#[path = "common/kube_env.rs"]
mod kube_env;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;

use berth_apiserver::testing::wait_until;
use kube_env::{require_kubectl, KubeEnv, DEADLINE};
use serde_json::Value;
use tokio::io::AsyncBufReadExt as _;

const WATCH: &str = "/api/v1/namespaces/default/configmaps?watch=1";

/// One watch's events: (type, name, resourceVersion), in order, and whether it ended.
type Seen = std::sync::Arc<std::sync::Mutex<(Vec<(String, String, u64)>, bool)>>;

fn spawn_watch(
    env: &KubeEnv,
    kubeconfig: &std::path::Path,
    from: u64,
) -> (Seen, tokio::process::Child) {
    let url = format!("{WATCH}&resourceVersion={from}");
    let mut child = env
        .kubectl_cmd(&["get", "--raw", &url, "--request-timeout=0"])
        .env("KUBECONFIG", kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl get --raw watch");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let seen: Seen = Default::default();
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let Ok(ev) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            let o = &ev["object"]["metadata"];
            let rv = o["resourceVersion"].as_str().and_then(|r| r.parse().ok());
            if let Ok(mut g) = s.lock() {
                g.0.push((
                    ev["type"].as_str().unwrap_or("").to_string(),
                    o["name"].as_str().unwrap_or("").to_string(),
                    rv.unwrap_or(0),
                ));
            }
        }
        if let Ok(mut g) = s.lock() {
            g.1 = true;
        }
    });
    (seen, child)
}

fn names(seen: &Seen) -> (BTreeSet<String>, bool, u64) {
    let g = seen.lock().expect("lock");
    let added =
        g.0.iter()
            .filter(|(t, _, _)| t == "ADDED")
            .map(|(_, n, _)| n.clone())
            .collect();
    let last = g.0.iter().map(|(_, _, rv)| *rv).max().unwrap_or(0);
    (added, g.1, last)
}

fn assert_no_duplicates(seen: &Seen) {
    let g = seen.lock().expect("lock");
    let mut count: BTreeMap<&(String, String, u64), usize> = BTreeMap::new();
    for e in &g.0 {
        *count.entry(e).or_default() += 1;
    }
    let dup: Vec<_> = count.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        dup.is_empty(),
        "events delivered twice to one watch: {dup:?}"
    );
}

/// The ConfigMap list as the API answers it (kubectl's own `get -o json` drops its
/// resourceVersion).
async fn raw_list(env: &KubeEnv) -> Value {
    let out = env
        .kubectl(&["get", "--raw", "/api/v1/namespaces/default/configmaps"])
        .await;
    serde_json::from_str(&out).expect("list json")
}

async fn create_cm(env: &KubeEnv, name: &str) {
    // Right after the kill the new leader may not be elected yet: retry until accepted.
    wait_until(DEADLINE, &format!("configmap {name} created"), || async {
        let (code, _, err) = env
            .kubectl_code(&["create", "configmap", name, "--from-literal=k=v"])
            .await;
        (code == 0 || err.contains("AlreadyExists") || err.contains("already exists")).then_some(())
    })
    .await
    .expect("create");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rest_watch_on_a_follower_survives_or_resumes_across_a_leader_kill() {
    if !require_kubectl("a_rest_watch_on_a_follower_survives_or_resumes_across_a_leader_kill") {
        return;
    }
    let mut env = KubeEnv::start().await;
    let list = raw_list(&env).await;
    let rv0: u64 = list["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .expect("list resourceVersion");
    let (seen, mut child) = spawn_watch(&env, &env.kubeconfig, rv0);
    // A second watch on the leader itself: it ends when the leader dies.
    let leader = env.cluster().leader().expect("a leader");
    assert_ne!(
        leader, env.member,
        "the kubeconfig must point at a follower"
    );
    let on_leader = env.file(
        "leader-kubeconfig",
        &kube_env::kubeconfig_for(env.cluster(), leader),
    );
    let (seen_leader, mut child_leader) = spawn_watch(&env, &on_leader, rv0);
    for i in 0..5 {
        create_cm(&env, &format!("before-{i}")).await;
    }
    wait_until(DEADLINE, "both watches saw the first five", || async {
        (names(&seen).0.len() >= 5 && names(&seen_leader).0.len() >= 5).then_some(())
    })
    .await
    .expect("first events");

    env.cluster_mut()
        .stop(leader)
        .await
        .expect("kill the leader");
    for i in 0..5 {
        create_cm(&env, &format!("after-{i}")).await;
    }
    let want: BTreeSet<String> = (0..5)
        .flat_map(|i| [format!("before-{i}"), format!("after-{i}")])
        .collect();
    // The watch either delivers all ten or ends.
    wait_until(
        DEADLINE,
        "the watch delivered everything or ended",
        || async {
            let (got, ended, _) = names(&seen);
            (got.is_superset(&want) || ended).then_some(())
        },
    )
    .await
    .expect("watch outcome");
    assert_no_duplicates(&seen);
    let (mut got, ended, last) = names(&seen);
    eprintln!(
        "the watch on the follower {} the leader kill",
        if ended { "ended at" } else { "streamed across" }
    );
    if ended {
        // Resume as a reflector does: relist, then rewatch from the last resourceVersion.
        let list = raw_list(&env).await;
        for cm in list["items"].as_array().expect("items") {
            if let Some(n) = cm["metadata"]["name"].as_str() {
                got.insert(n.to_string());
            }
        }
        let (again, mut child2) = spawn_watch(&env, &env.kubeconfig, last);
        create_cm(&env, "resumed").await;
        wait_until(DEADLINE, "the rewatch sees a new change", || async {
            names(&again).0.contains("resumed").then_some(())
        })
        .await
        .expect("rewatch");
        assert_no_duplicates(&again);
        let _ = child2.kill().await;
    }
    assert!(
        got.is_superset(&want),
        "missing: {:?}",
        want.difference(&got)
    );

    // The leader's watch ended (its server is gone) after the first five, no event twice.
    wait_until(DEADLINE, "the watch on the killed leader ended", || async {
        names(&seen_leader).1.then_some(())
    })
    .await
    .expect("leader watch ends");
    assert_no_duplicates(&seen_leader);
    let (got_leader, _, last) = names(&seen_leader);
    assert!(last > rv0, "the leader's watch saw nothing");
    // Resume it as a reflector would, on a surviving member: from the last resourceVersion it
    // saw, every later change arrives once, and together nothing is missing.
    let (resumed, mut child3) = spawn_watch(&env, &env.kubeconfig, last);
    wait_until(DEADLINE, "the resumed watch catches up", || async {
        let mut all = got_leader.clone();
        all.extend(names(&resumed).0);
        all.is_superset(&want).then_some(())
    })
    .await
    .expect("resumed watch covers every change");
    assert_no_duplicates(&resumed);
    {
        let r = resumed.lock().expect("lock");
        assert!(
            r.0.iter().all(|(_, _, rv)| *rv > last),
            "the rewatch from {last} repeated an older event: {:?}",
            r.0
        );
    }
    let _ = child3.kill().await;
    let _ = child_leader.kill().await;
    let _ = child.kill().await;
    env.stop().await;
}
