//! Raft over the real gRPC transport on 127.0.0.1: join through `add_member` (the joiner
//! learns the leader's address from incoming batches), replication, a dead member that never
//! blocks the others, restart from the data dir, and fault-injected leader isolation.
#![allow(clippy::unwrap_used)]

mod raft_common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use berth_apiserver::raft::{Bootstrap, Faults, RaftConfig, RaftError, RaftHandle, RaftNode, Role};
use raft_common::{assert_exactly_once, propose_concurrently, propose_retry, LogSm, DEADLINE};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

struct Server {
    handle: RaftHandle,
    sm: Arc<LogSm>,
    shutdown: CancellationToken,
    node: JoinHandle<Result<(), RaftError>>,
    grpc: JoinHandle<()>,
}

struct GrpcCluster {
    faults: Faults,
    servers: BTreeMap<u64, Server>,
    addrs: BTreeMap<u64, String>,
    dirs: BTreeMap<u64, tempfile::TempDir>,
}

impl GrpcCluster {
    fn new() -> Self {
        Self {
            faults: Faults::default(),
            servers: BTreeMap::new(),
            addrs: BTreeMap::new(),
            dirs: BTreeMap::new(),
        }
    }

    /// Bind a fresh port (or re-bind the member's old one) and start member `id`.
    async fn start(&mut self, id: u64, bootstrap: Bootstrap) {
        let listener = match self.addrs.get(&id) {
            Some(a) => bind_retry(a).await,
            None => tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        };
        let addr = listener.local_addr().unwrap().to_string();
        self.addrs.insert(id, addr.clone());
        let dir = self
            .dirs
            .entry(id)
            .or_insert_with(|| tempfile::tempdir().unwrap());
        let db = sled::open(dir.path().join("db")).unwrap();
        let sm = LogSm::open(&db);
        let mut cfg = RaftConfig::new(id, addr, db);
        cfg.log_dir = Some(dir.path().join("raft-wal"));
        cfg.bootstrap = bootstrap;
        cfg.tick = Duration::from_millis(50);
        cfg.request_timeout = Duration::from_secs(5);
        cfg.faults = self.faults.clone();
        let (node, handle) = RaftNode::new(cfg, sm.clone()).unwrap();
        let shutdown = CancellationToken::new();
        let node = tokio::spawn(node.run(shutdown.clone()));
        let svc = handle.raft_service();
        let stop = shutdown.clone();
        let grpc = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    stop.cancelled_owned(),
                )
                .await
                .unwrap();
        });
        self.servers.insert(
            id,
            Server {
                handle,
                sm,
                shutdown,
                node,
                grpc,
            },
        );
    }

    async fn stop(&mut self, id: u64) {
        let s = self.servers.remove(&id).unwrap();
        s.shutdown.cancel();
        s.node.await.unwrap().unwrap();
        s.grpc.await.unwrap();
    }

    fn h(&self, id: u64) -> &RaftHandle {
        &self.servers[&id].handle
    }

    async fn wait_leader(&self, ids: &[u64]) -> u64 {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let leaders: Vec<u64> = ids
                .iter()
                .copied()
                .filter(|i| self.h(*i).is_leader())
                .collect();
            if let [l] = leaders[..] {
                if ids.iter().all(|i| self.h(*i).leader_id() == Some(l)) {
                    return l;
                }
            }
            assert!(Instant::now() < deadline, "no agreed leader among {ids:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn write(&self, ids: &[u64], data: &str) {
        let handles: Vec<RaftHandle> = ids.iter().map(|i| self.h(*i).clone()).collect();
        propose_retry(&handles, data).await;
    }

    async fn wait_converged(&self, ids: &[u64]) -> Vec<String> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let logs: Vec<Vec<String>> = ids
                .iter()
                .map(|i| self.servers[i].sm.log_strings())
                .collect();
            let applied: Vec<u64> = ids.iter().map(|i| self.h(*i).status().applied).collect();
            if logs.windows(2).all(|w| w[0] == w[1]) && applied.windows(2).all(|w| w[0] == w[1]) {
                return logs.into_iter().next().unwrap_or_default();
            }
            assert!(
                Instant::now() < deadline,
                "{ids:?} did not converge: applied {applied:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `--init` member 1, then `add_member` + `--join` for 2..=n.
    async fn bootstrap(&mut self, n: u64) {
        self.start(1, Bootstrap::NewCluster).await;
        self.wait_leader(&[1]).await;
        for next in 2..=n {
            let ids: Vec<u64> = self.servers.keys().copied().collect();
            let l = self.wait_leader(&ids).await;
            // Reserve the new member's port first so its address is known to the leader.
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            drop(listener);
            let (id, members) = self.h(l).add_member(addr.clone()).await.unwrap();
            assert_eq!(id, next);
            assert!(members.iter().any(|m| m.id == id && m.address == addr));
            self.addrs.insert(id, addr);
            // No peer list: the joiner learns addresses from the leader's traffic.
            self.start(id, Bootstrap::Join { peers: vec![] }).await;
            let ids: Vec<u64> = self.servers.keys().copied().collect();
            self.wait_converged(&ids).await;
        }
    }

    async fn shutdown(mut self) {
        let ids: Vec<u64> = self.servers.keys().copied().collect();
        for id in ids {
            self.stop(id).await;
        }
    }
}

async fn bind_retry(addr: &str) -> tokio::net::TcpListener {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) => assert!(Instant::now() < deadline, "rebind {addr}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_members_join_replicate_and_survive_a_restart() {
    let mut c = GrpcCluster::new();
    c.bootstrap(3).await;
    let all = [1, 2, 3];
    let mut acked = Vec::new();
    for i in 0..20 {
        let d = format!("g{i}");
        c.write(&all, &d).await;
        acked.push(d);
    }
    for id in all {
        let st = c.h(id).status();
        assert_eq!(st.members.len(), 3, "member {id} knows all members");
    }
    // A dead member must not block the others.
    let leader = c.wait_leader(&all).await;
    let victim = all.into_iter().find(|i| *i != leader).unwrap();
    c.stop(victim).await;
    let rest: Vec<u64> = all.iter().copied().filter(|i| *i != victim).collect();
    let t0 = Instant::now();
    for i in 20..40 {
        let d = format!("g{i}");
        c.write(&rest, &d).await;
        acked.push(d);
    }
    assert!(t0.elapsed() < Duration::from_secs(15), "writes stalled");
    // The leader notices within an election timeout (check_quorum resets activity).
    let deadline = Instant::now() + DEADLINE;
    loop {
        let st = c.h(leader).status();
        let dead = st.members.iter().find(|m| m.id == victim).unwrap();
        if dead.reachable == Some(false) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dead member still reachable: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Restart it on its old address from its data dir.
    c.start(victim, Bootstrap::Join { peers: vec![] }).await;
    let log = c.wait_converged(&all).await;
    assert_exactly_once(&log, &acked);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_isolated_leader_is_replaced_and_rejoins() {
    let mut c = GrpcCluster::new();
    c.bootstrap(3).await;
    let all = [1, 2, 3];
    c.write(&all, "before").await;
    let old = c.wait_leader(&all).await;
    c.faults.isolate(old);
    let rest: Vec<u64> = all.iter().copied().filter(|i| *i != old).collect();
    let new = c.wait_leader(&rest).await;
    assert_ne!(new, old);
    c.write(&rest, "during").await;
    let deadline = Instant::now() + DEADLINE;
    while c.h(old).status().role == Role::Leader {
        assert!(
            Instant::now() < deadline,
            "isolated leader did not step down"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.faults.reconnect(old);
    let log = c.wait_converged(&all).await;
    assert_eq!(log, vec!["before".to_string(), "during".to_string()]);
    // Reads on the old leader are linearizable again once it rejoined.
    c.h(old).read_index().await.unwrap();
    c.shutdown().await;
}

/// Prints proposals/s over real gRPC with 64 concurrent proposers (not a gate; shows that
/// many proposals share a Ready, an fsync and an RPC).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_group_commit_serves_concurrent_proposers() {
    let mut c = GrpcCluster::new();
    c.bootstrap(3).await;
    let handles: Vec<RaftHandle> = [1, 2, 3].iter().map(|i| c.h(*i).clone()).collect();
    let n = 2000u64;
    let secs = propose_concurrently(&handles, n, 64).await;
    println!(
        "raft grpc: {n} proposals in {secs:.2}s = {:.0} proposals/s",
        n as f64 / secs
    );
    let log = c.wait_converged(&[1, 2, 3]).await;
    assert_eq!(log.len() as u64, n);
    c.shutdown().await;
}
