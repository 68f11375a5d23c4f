//! The nftables Service datapath (`berth_agent::proxy::nft`) against the real kernel, in
//! network namespaces: two "nodes" A (10.99.0.1) and B (10.99.0.2) on one veth; A runs the
//! datapath, B runs the endpoints. Needs root, `ip netns` and `nft`; fails (not skips)
//! without them: CI runs as root and installs nftables.

use std::future::Future;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use berth_agent::proxy::nft::{list_table, remove_table, NftDatapath, NodeFacts};
use berth_agent::proxy::{ProxyPlan, ServiceBackends};
use nix::sched::{setns, CloneFlags};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout;

const DEADLINE: Duration = Duration::from_secs(5);
const NS_PREFIX: &str = "berth-nft";

struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str) -> Netns {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "{NS_PREFIX}-{}-{}-{tag}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let out = Command::new("ip").args(["netns", "add", &name]).output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => panic!(
                "these tests need root and network namespaces (`ip netns add {name}` failed: {})",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => panic!("these tests need iproute2's `ip` (running it failed: {e})"),
        }
        let ns = Netns { name };
        ns.ip("link set lo up");
        ns
    }

    fn ip(&self, args: &str) {
        let mut full = vec!["-n", &self.name];
        full.extend(args.split_whitespace());
        let out = Command::new("ip").args(&full).output().expect("spawn ip");
        assert!(
            out.status.success(),
            "`ip {}` failed: {}",
            full.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn spawn<T, F, Fut>(&self, f: F) -> std::thread::JoinHandle<T>
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
    {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open the namespace file");
            setns(&file, CloneFlags::CLONE_NEWNET).expect("setns into the test namespace");
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(f())
        })
    }

    fn run<T, F, Fut>(&self, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
    {
        match self.spawn(f).join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn two_nodes() -> (Netns, Netns) {
    let a = Netns::new("a");
    let b = Netns::new("b");
    a.ip(&format!(
        "link add eth0 type veth peer name eth0 netns {}",
        b.name
    ));
    a.ip("addr add 10.99.0.1/24 dev eth0");
    b.ip("addr add 10.99.0.2/24 dev eth0");
    a.ip("link set eth0 up");
    b.ip("link set eth0 up");
    (a, b)
}

/// Endpoints on B: each port answers `VERSION\n` on connect, then `VERSION:LINE` per line.
/// Runs until the returned sender is dropped.
fn serve_versions(b: &Netns, ports: &[(u16, &'static str)]) -> tokio::sync::oneshot::Sender<()> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let ports = ports.to_vec();
    b.spawn(move || async move {
        for (port, version) in ports {
            let l = tokio::net::TcpListener::bind(("10.99.0.2", port))
                .await
                .expect("bind an endpoint on B");
            tokio::spawn(async move {
                while let Ok((s, _)) = l.accept().await {
                    tokio::spawn(async move {
                        let (r, mut w) = s.into_split();
                        let _ = w.write_all(format!("{version}\n").as_bytes()).await;
                        let mut lines = BufReader::new(r).lines();
                        while let Ok(Some(line)) = lines.next_line().await {
                            if w.write_all(format!("{version}:{line}\n").as_bytes())
                                .await
                                .is_err()
                            {
                                break;
                            }
                        }
                    });
                }
            });
        }
        ready_tx.send(()).expect("ready");
        let _ = stopped.await;
    });
    ready
        .recv_timeout(DEADLINE)
        .expect("endpoints on B listening");
    stop
}

fn plan(revision: u64, backends: &[&str]) -> ProxyPlan {
    ProxyPlan {
        revision,
        services: vec![ServiceBackends {
            namespace: "default".into(),
            name: "shop".into(),
            port_name: "http".into(),
            node_port: 30090,
            listen_addrs: vec!["10.99.0.1".parse().expect("ip")],
            also_listen: vec!["10.43.0.10:80".parse().expect("addr")],
            backends: backends.iter().map(|a| a.parse().expect("addr")).collect(),
        }],
    }
}

/// What the agent does beside the table in both modes: the ClusterIPs are local addresses on
/// `berth-svc`, so a host process has a route to them (no default route needed).
async fn hold_vip() {
    let vips = ["10.43.0.10".parse().expect("ip")].into_iter().collect();
    berth_agent::net::sync_vips(&vips).await.expect("sync_vips");
}

fn facts() -> NodeFacts {
    NodeFacts {
        cluster_cidr: Some("10.42.0.0/16".parse().expect("cidr")),
    }
}

/// Connects to `addr` and returns the first line (the endpoint's version).
async fn first_line(addr: SocketAddr) -> Result<String, String> {
    let s = timeout(DEADLINE, TcpStream::connect(addr))
        .await
        .map_err(|_| format!("connect {addr}: timed out"))?
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let mut lines = BufReader::new(s).lines();
    match timeout(DEADLINE, lines.next_line()).await {
        Ok(Ok(Some(l))) => Ok(l),
        other => Err(format!("read from {addr}: {other:?}")),
    }
}

#[test]
fn cluster_ip_switches_atomically_while_established_connections_drain() {
    let (a, b) = two_nodes();
    let _endpoints = serve_versions(&b, &[(8081, "v1"), (8082, "v2")]);
    a.run(|| async {
        NftDatapath::enable_forwarding().expect("sysctls");
        hold_vip().await;
        let mut nft = NftDatapath::new(facts());
        nft.probe().await.expect("nft works here (dry run)");
        assert!(nft
            .program(&plan(1, &["10.99.0.2:8081"]))
            .await
            .expect("program v1"));
        assert!(
            !nft.program(&plan(2, &["10.99.0.2:8081"]))
                .await
                .expect("same rules"),
            "an identical rule set is not programmed again"
        );
        let vip: SocketAddr = "10.43.0.10:80".parse().expect("addr");
        assert_eq!(first_line(vip).await.expect("ClusterIP to v1"), "v1");

        // A connection established before the switch keeps its endpoint (conntrack).
        let held = TcpStream::connect(vip).await.expect("connect");
        let mut held = BufReader::new(held);
        let mut line = String::new();
        held.read_line(&mut line).await.expect("read");
        assert_eq!(line, "v1\n");

        assert!(nft
            .program(&plan(3, &["10.99.0.2:8082"]))
            .await
            .expect("program v2"));
        for _ in 0..20 {
            assert_eq!(
                first_line(vip).await.expect("ClusterIP to v2"),
                "v2",
                "every new connection after the transaction goes to v2"
            );
        }
        held.get_mut()
            .write_all(b"still there\n")
            .await
            .expect("write");
        line.clear();
        timeout(DEADLINE, held.read_line(&mut line))
            .await
            .expect("drained connection answers")
            .expect("read");
        assert_eq!(line, "v1:still there\n");

        // Two endpoints: numgen spreads new connections over both.
        nft.program(&plan(4, &["10.99.0.2:8081", "10.99.0.2:8082"]))
            .await
            .expect("program both");
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..60 {
            seen.insert(first_line(vip).await.expect("ClusterIP"));
        }
        assert_eq!(seen.len(), 2, "both endpoints answer: {seen:?}");

        // No ready endpoint: refused at once (TCP reset), not hung.
        nft.program(&plan(5, &[])).await.expect("program empty");
        let err = timeout(DEADLINE, TcpStream::connect(vip))
            .await
            .expect("a Service without endpoints answers at once")
            .expect_err("refused");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    });
}

#[test]
fn node_port_from_another_host_is_masqueraded_back_through_this_node() {
    let (a, b) = two_nodes();
    let _endpoints = serve_versions(&b, &[(8081, "v1")]);
    a.run(|| async {
        NftDatapath::enable_forwarding().expect("sysctls");
        let mut nft = NftDatapath::new(facts());
        nft.program(&plan(1, &["10.99.0.2:8081"]))
            .await
            .expect("program");
    });
    // The client is B itself: without masquerade B would answer itself from 10.99.0.2 and the
    // connection to 10.99.0.1:30090 would never complete.
    let got = b.run(|| async { first_line("10.99.0.1:30090".parse().expect("addr")).await });
    assert_eq!(got.expect("nodePort from B"), "v1");
}

#[test]
fn a_refused_rule_set_keeps_the_previous_table_and_cleanup_removes_it() {
    let (a, b) = two_nodes();
    let _endpoints = serve_versions(&b, &[(8081, "v1")]);
    let dir = tempfile::tempdir().expect("tempdir");
    let failing = dir.path().join("nft");
    std::fs::write(
        &failing,
        "#!/bin/sh\necho 'Error: Could not process rule: Operation not supported' >&2\nexit 1\n",
    )
    .expect("write the failing nft");
    std::fs::set_permissions(
        &failing,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    a.run(move || async move {
        NftDatapath::enable_forwarding().expect("sysctls");
        hold_vip().await;
        let mut good = NftDatapath::new(facts());
        good.program(&plan(1, &["10.99.0.2:8081"]))
            .await
            .expect("program");
        let mut bad = NftDatapath::with_program(&failing, facts());
        let err = bad
            .program(&plan(2, &[]))
            .await
            .expect_err("the refusing nft fails");
        assert!(
            err.to_string().contains("Operation not supported"),
            "the error carries nft's message: {err}"
        );
        assert!(bad.probe().await.is_err(), "the probe fails the same way");
        let missing = NftDatapath::with_program("/nonexistent/nft", facts());
        let err = missing.probe().await.expect_err("no binary");
        assert!(err.to_string().contains("install nftables"), "{err}");

        let vip: SocketAddr = "10.43.0.10:80".parse().expect("addr");
        assert_eq!(first_line(vip).await.expect("previous table serves"), "v1");

        // A new datapath (a restarted agent) adopts the table by replacing it whole.
        let mut adopted = NftDatapath::new(facts());
        adopted
            .program(&plan(3, &["10.99.0.2:8081"]))
            .await
            .expect("adopt");
        assert_eq!(first_line(vip).await.expect("adopted table serves"), "v1");

        let nft = std::path::Path::new("nft");
        assert!(list_table(nft).await.expect("list").is_some());
        assert!(remove_table(nft).await.expect("remove"));
        assert!(list_table(nft).await.expect("list").is_none());
        assert!(
            !remove_table(nft).await.expect("remove again"),
            "idempotent"
        );
    });
}
