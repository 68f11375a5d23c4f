//! The client and the watcher against a real 3-member cluster on 127.0.0.1:0: requests fail
//! over when the leader stops, a watch resumes on another member without losing or repeating
//! changes, and CAS conflicts surface as `ClientError::Conflict`.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use berth_apiserver::testing::TestCluster;
use berth_client::runtime::reflector;
use berth_client::runtime::watcher::{self, Event};
use berth_client::{BatchOp, Client, ClientConfig, ClientError, DynObject, Kind, ObjectRef};
use berth_proto::types::{Container, ObjectMeta, Pod, PodSpec};
use futures::StreamExt;

const T: Duration = Duration::from_secs(30);

fn pod(name: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: name.into(),
            namespace: "default".into(),
            ..Default::default()
        },
        spec: PodSpec {
            containers: vec![Container {
                name: "c".into(),
                image: "demo".into(),
                ..Default::default()
            }],
            ..Default::default()
        },
        ..Default::default()
    }
}

async fn wait_for(what: &str, cond: impl Fn() -> bool) {
    tokio::time::timeout(T, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_fail_over_and_watch_resumes_when_the_leader_stops() {
    let mut cluster = TestCluster::start(3).await.unwrap();
    let leader = cluster.wait_for_leader(T).await.unwrap();
    // Put the leader first so the client's first choice is the member we stop.
    let mut addrs = vec![cluster.addr(leader).to_string()];
    addrs.extend(
        (0..3)
            .filter(|i| *i != leader)
            .map(|i| cluster.addr(i).to_string()),
    );
    let client = Client::new(
        &addrs,
        ClientConfig {
            deadline: T,
            ..ClientConfig::with_tls(cluster.admin_tls())
        },
    )
    .unwrap();

    let (store, writer) = reflector::store::<Pod>();
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut stream = Box::pin(reflector::reflector(
        writer,
        watcher::watcher::<Pod>(
            client.clone(),
            watcher::Config::default().namespace("default"),
        ),
    ));
    let seen = events.clone();
    let watch_task = tokio::spawn(async move {
        while let Some(ev) = stream.next().await {
            if let Ok(ev) = ev {
                let names: Vec<String> = match &ev {
                    Event::Applied(p) => vec![format!("applied {}", p.metadata.name)],
                    Event::Deleted(p) => vec![format!("deleted {}", p.metadata.name)],
                    Event::Restarted(all) => all
                        .iter()
                        .map(|p| format!("listed {}", p.metadata.name))
                        .collect(),
                };
                seen.lock().unwrap().extend(names);
            }
        }
    });

    store.wait_until_ready().await.unwrap();
    let a = client.create(&pod("a")).await.unwrap();
    assert!(a.metadata.resource_version > 0);
    wait_for("pod a in the cache", || {
        store.get(&ObjectRef::new("default", "a")).is_some()
    })
    .await;

    cluster.stop(leader).await.unwrap();

    // The first server is gone: the client moves on and the write lands once a new leader
    // is elected.
    let b = client.create(&pod("b")).await.unwrap();
    assert!(b.metadata.resource_version > a.metadata.resource_version);
    wait_for("pod b in the cache", || {
        store.get(&ObjectRef::new("default", "b")).is_some()
    })
    .await;

    // A stale resourceVersion loses the compare-and-swap.
    let mut stale = a.clone();
    stale.metadata.labels.insert("x".into(), "1".into());
    let fresh = client.update(&stale).await.unwrap();
    stale.metadata.labels.insert("x".into(), "2".into());
    match client.update(&stale).await {
        Err(ClientError::Conflict {
            expected, actual, ..
        }) => {
            assert_eq!(expected, a.metadata.resource_version);
            assert_eq!(actual, fresh.metadata.resource_version);
        }
        other => panic!("expected a conflict, got {other:?}"),
    }

    client
        .delete(berth_proto::Kind::Pod, "default", "a", None)
        .await
        .unwrap();
    wait_for("pod a gone from the cache", || {
        store.get(&ObjectRef::new("default", "a")).is_none()
    })
    .await;

    // Every change was seen exactly once, in order, across the failover: the watch resumed
    // from its last revision on another member (a relist would show up as "listed ...").
    wait_for("all events", || events.lock().unwrap().len() >= 4).await;
    let seen = events.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec!["applied a", "applied b", "applied a", "deleted a"],
        "{seen:?}"
    );

    watch_task.abort();
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_outlives_the_per_request_timeout() {
    let cluster = TestCluster::start(1).await.unwrap();
    let client = Client::new(
        &[cluster.addr(0).to_string()],
        ClientConfig {
            request_timeout: Duration::from_millis(500),
            ..ClientConfig::with_tls(cluster.admin_tls())
        },
    )
    .unwrap();
    let (_, rev) = client.list::<Pod>(None, "").await.unwrap();
    let mut stream = client.watch::<Pod>(None, "", rev).await.unwrap();
    // The point of this test is time passing: an idle stream must survive well beyond the
    // unary request timeout (which only bounds waiting for response headers).
    tokio::time::sleep(Duration::from_secs(2)).await;
    client.create(&pod("late")).await.unwrap();
    let got = tokio::time::timeout(T, async {
        loop {
            match stream.next().await {
                Some(Ok(ev)) => match ev.change {
                    berth_client::Change::Added(p) => return p.metadata.name,
                    _ => continue,
                },
                other => panic!("watch ended: {other:?}"),
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(got, "late");
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_returns_one_result_per_op_in_order() {
    let cluster = TestCluster::start(1).await.unwrap();
    let client = Client::new(
        &[cluster.addr(0).to_string()],
        ClientConfig::with_tls(cluster.admin_tls()),
    )
    .unwrap();
    let existing = client.create(&pod("existing")).await.unwrap();
    let mut stale = existing.clone();
    stale.metadata.resource_version += 100;
    let results = client
        .batch(vec![
            BatchOp::Create(DynObject::from_typed(&pod("fresh"))),
            BatchOp::Create(DynObject::from_typed(&pod("existing"))),
            BatchOp::Update(DynObject::from_typed(&stale)),
            BatchOp::Delete {
                kind: Kind::Pod,
                namespace: "default".into(),
                name: "missing".into(),
                precondition: None,
            },
        ])
        .await
        .unwrap();
    assert_eq!(results.len(), 4);
    match &results[0] {
        Ok(Some(o)) => assert_eq!(o.name(), "fresh"),
        other => panic!("create: {other:?}"),
    }
    assert!(
        matches!(results[1], Err(ClientError::AlreadyExists(_))),
        "{:?}",
        results[1]
    );
    assert!(
        matches!(results[2], Err(ClientError::Conflict { .. })),
        "{:?}",
        results[2]
    );
    assert!(
        matches!(results[3], Err(ClientError::NotFound(_))),
        "{:?}",
        results[3]
    );
    assert!(client.get::<Pod>("default", "fresh").await.is_ok());
    cluster.shutdown().await.unwrap();
}

/// A TCP proxy in front of one server that can lose the answer of the next request: once
/// `armed`, nothing more goes back to the client; `cut` then closes every connection, as a
/// leader that dies (or steps down and drops its connections) after taking a write does.
struct LossyProxy {
    addr: String,
    armed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cut: tokio_util::sync::CancellationToken,
}

impl LossyProxy {
    async fn start(upstream: String) -> LossyProxy {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let armed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cut = tokio_util::sync::CancellationToken::new();
        let (a, c) = (armed.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = tokio::net::TcpStream::connect(&upstream).await.unwrap();
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let (cut_up, cut_down) = (c.clone(), c.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = tokio::select! {
                            _ = cut_up.cancelled() => return,
                            n = cr.read(&mut buf) => match n { Ok(0) | Err(_) => return, Ok(n) => n },
                        };
                        if sw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
                let armed = a.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = tokio::select! {
                            _ = cut_down.cancelled() => return,
                            n = sr.read(&mut buf) => match n { Ok(0) | Err(_) => return, Ok(n) => n },
                        };
                        if !armed.load(Ordering::SeqCst) && cw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        LossyProxy { addr, armed, cut }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_answer_is_lost_in_flight_says_outcome_unknown_and_applying_again_is_safe() {
    let cluster = TestCluster::start(1).await.unwrap();
    let proxy = LossyProxy::start(cluster.addr(0).to_string()).await;
    let client = Client::new(
        std::slice::from_ref(&proxy.addr),
        ClientConfig {
            deadline: T,
            ..ClientConfig::with_tls(cluster.admin_tls())
        },
    )
    .unwrap();
    // Connect (TLS, HTTP/2 settings) before losing anything.
    client.list_dyn(Kind::Pod, None, "").await.unwrap();
    proxy.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let obj = DynObject::from_typed(&pod("lost-answer"));
    let write = {
        let (client, obj) = (client.clone(), obj.clone());
        tokio::spawn(async move { client.apply_dyn(&obj, false).await })
    };
    // The server took the write: only its answer is lost.
    let direct = Client::new(
        &[cluster.addr(0).to_string()],
        ClientConfig::with_tls(cluster.admin_tls()),
    )
    .unwrap();
    let deadline = tokio::time::Instant::now() + T;
    while direct
        .get_dyn(Kind::Pod, "default", "lost-answer")
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the write never landed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.cut.cancel();
    let err = tokio::time::timeout(T, write)
        .await
        .expect("the client must answer once the connection is gone")
        .unwrap()
        .expect_err("the answer was lost");
    assert!(matches!(err, ClientError::OutcomeUnknown(_)), "{err:?}");
    assert!(
        err.to_string().starts_with(
            "outcome unknown: the leader changed while this write was in flight; it is safe to \
             apply again"
        ),
        "{err}"
    );
    // As the message says: applying again is safe.
    let (_, outcome) = direct.apply_dyn(&obj, false).await.unwrap();
    assert_eq!(outcome, berth_client::Outcome::Unchanged);
    cluster.shutdown().await.unwrap();
}

/// A list is one reply: 5 pods of ~900 KiB each make a ~4.5 MB answer, past tonic's 4 MiB
/// default limit (10,000 pods of a real cluster are about that size). The client decodes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_reply_larger_than_four_mib_is_decoded() {
    let cluster = TestCluster::start(1).await.unwrap();
    cluster.wait_for_leader(T).await.unwrap();
    let client = Client::new(
        &[cluster.addr(0).to_string()],
        ClientConfig {
            deadline: T,
            ..ClientConfig::with_tls(cluster.admin_tls())
        },
    )
    .unwrap();
    for i in 0..5 {
        let mut p = pod(&format!("big-{i}"));
        p.metadata
            .annotations
            .insert("blob".into(), "x".repeat(900 * 1024));
        client.create(&p).await.unwrap();
    }
    let (pods, _) = client.list::<Pod>(Some("default"), "").await.unwrap();
    assert_eq!(pods.len(), 5);
}
