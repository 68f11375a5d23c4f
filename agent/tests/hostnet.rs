//! Host networking (`berth_agent::net`) against the real kernel: every case builds its own
//! network namespaces ("nodes" and "pods", joined by veth pairs and bridges) and runs the
//! sync functions on a thread that has entered a node's namespace (netlink sockets, iptables
//! children and /proc/sys/net all follow the calling thread's namespace).
//!
//! These need root and `ip netns`. They fail (not skip) without them: CI runs as root.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use berth_agent::net::{
    remove_vips_interface, sync_firewall, sync_routes, sync_vips, teardown_firewall, Firewall,
    NetError, ROUTE_PROTOCOL, VIPS_ALIAS, VIPS_INTERFACE,
};
use ipnet::Ipv4Net;
use nix::sched::{setns, CloneFlags};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};
use tokio::time::timeout;

/// Bounds every network wait of a test.
const DEADLINE: Duration = Duration::from_secs(5);
const NS_PREFIX: &str = "berth-t";

fn net(s: &str) -> Ipv4Net {
    s.parse().expect("cidr")
}
fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("ip")
}

/// A network namespace made with `ip netns add`, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str) -> Netns {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        sweep_leftovers();
        let name = format!(
            "{NS_PREFIX}-{}-{}-{tag}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let out = Command::new("ip").args(["netns", "add", &name]).output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => panic!(
                "hostnet tests need root and network namespaces (`ip netns add {name}` failed: \
                 {}); CI runs them as root",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => panic!("hostnet tests need iproute2's `ip` (running it failed: {e})"),
        }
        let ns = Netns { name };
        ns.ip("link set lo up");
        ns
    }

    /// `ip -n NS <args>`, which must succeed.
    fn ip(&self, args: &str) {
        let mut full = vec!["-n", &self.name];
        full.extend(args.split_whitespace());
        run_ok("ip", &full);
    }

    /// A shell command run inside the namespace (`ip netns exec`); must succeed.
    fn sh(&self, script: &str) -> String {
        run_ok("ip", &["netns", "exec", &self.name, "sh", "-c", script])
    }

    /// Runs `f`'s future on a fresh thread inside this namespace, on its own runtime.
    fn spawn<T, F, Fut>(&self, f: F) -> JoinHandle<T>
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
    {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open the namespace file");
            setns(&file, CloneFlags::CLONE_NEWNET).expect("setns into the test namespace");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(f())
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

    /// Lines of `iptables -t TABLE -S` in the namespace.
    fn iptables_dump(&self, table: &str) -> Vec<String> {
        self.sh(&format!("iptables -w -t {table} -S"))
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn sysctl(&self, key: &str) -> String {
        self.sh(&format!("sysctl -n {key}")).trim().to_string()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Deletes namespaces left by test processes that died before their Drop ran.
fn sweep_leftovers() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(&format!("{NS_PREFIX}-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next() else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
        }
    }
}

fn run_ok(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().expect("spawn");
    assert!(
        out.status.success(),
        "`{program} {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Two nodes on one L2 segment: `eth0` 10.99.0.1/24 in A, 10.99.0.2/24 in B.
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

/// The node's pod bridge `cbr0` with `gateway` (e.g. 10.42.1.1/24) and, if `pod` is given, a
/// pod namespace on it with that address and a default route via the bridge.
fn pod_bridge(node: &Netns, gateway: &str, pod: Option<&str>) -> Option<Netns> {
    node.ip("link add cbr0 type bridge");
    node.ip(&format!("addr add {gateway} dev cbr0"));
    node.ip("link set cbr0 up");
    let pod_addr = pod?;
    let p = Netns::new("pod");
    node.ip(&format!(
        "link add vpod type veth peer name eth0 netns {}",
        p.name
    ));
    node.ip("link set vpod master cbr0");
    node.ip("link set vpod up");
    let prefix = gateway.split('/').nth(1).expect("gateway as address/len");
    p.ip(&format!("addr add {pod_addr}/{prefix} dev eth0"));
    p.ip("link set eth0 up");
    let gw = gateway.split('/').next().expect("gateway address");
    p.ip(&format!("route add default via {gw}"));
    Some(p)
}

/// What Docker 20.10 programs that matters here: FORWARD policy DROP with DOCKER-USER jumped
/// to first (ending in RETURN), and nat PREROUTING/OUTPUT sending local destinations to DOCKER.
fn docker_like_rules(node: &Netns) {
    node.sh("set -e
         iptables -w -P FORWARD DROP
         iptables -w -N DOCKER-USER
         iptables -w -A DOCKER-USER -j RETURN
         iptables -w -N DOCKER
         iptables -w -I FORWARD 1 -j DOCKER-USER
         iptables -w -A FORWARD -o cbr0 -j DOCKER
         iptables -w -t nat -N DOCKER
         iptables -w -t nat -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
         iptables -w -t nat -A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
         iptables -w -t nat -A DOCKER -i cbr0 -j RETURN");
}

/// A listener in `ns` on `addr` that accepts one connection within the deadline, says "ok"
/// and returns the peer address it saw. Returns once the listener is bound.
fn serve_once(ns: &Netns, addr: SocketAddrV4) -> JoinHandle<Result<SocketAddr, String>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = ns.spawn(move || async move {
        let listener = match TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                let _ = ready_tx.send(Err(e.to_string()));
                return Err(format!("bind {addr}: {e}"));
            }
        };
        let _ = ready_tx.send(Ok(()));
        let (mut stream, peer) = timeout(DEADLINE, listener.accept())
            .await
            .map_err(|_| format!("no connection to {addr} within {DEADLINE:?}"))?
            .map_err(|e| format!("accept on {addr}: {e}"))?;
        stream.write_all(b"ok").await.map_err(|e| e.to_string())?;
        Ok(peer)
    });
    match ready_rx.recv_timeout(DEADLINE) {
        Ok(Ok(())) => handle,
        Ok(Err(e)) => panic!("listener on {addr} did not bind: {e}"),
        Err(e) => panic!("listener on {addr} not ready: {e}"),
    }
}

/// Connects from `ns` (from `source` if given) to `dst` within `within`, reads the greeting.
fn connect_from(
    ns: &Netns,
    source: Option<Ipv4Addr>,
    dst: SocketAddrV4,
    within: Duration,
) -> Result<(), String> {
    ns.run(move || async move {
        let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
        if let Some(src) = source {
            socket
                .bind(SocketAddr::from((src, 0)))
                .map_err(|e| format!("bind {src}: {e}"))?;
        }
        let mut stream = timeout(within, socket.connect(dst.into()))
            .await
            .map_err(|_| format!("connect to {dst} timed out after {within:?}"))?
            .map_err(|e| format!("connect to {dst}: {e}"))?;
        let mut greeting = [0u8; 2];
        timeout(within, stream.read_exact(&mut greeting))
            .await
            .map_err(|_| format!("no greeting from {dst}"))?
            .map_err(|e| format!("read from {dst}: {e}"))?;
        Ok(())
    })
}

fn peer_of(listener: JoinHandle<Result<SocketAddr, String>>) -> SocketAddr {
    match listener.join() {
        Ok(Ok(peer)) => peer,
        Ok(Err(e)) => panic!("listener: {e}"),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

fn routes(ns: &Netns, filter: &str) -> String {
    ns.sh(&format!("ip -4 route show {filter}"))
}

/// The node list both nodes are given: A owns 10.42.0.0/24, B 10.42.1.0/24.
fn node_list() -> Vec<(Ipv4Net, Ipv4Addr)> {
    vec![
        (net("10.42.0.0/24"), ip("10.99.0.1")),
        (net("10.42.1.0/24"), ip("10.99.0.2")),
    ]
}

/// Two nodes with pod bridges, a pod (10.42.1.5) on B, Docker-like rules on both, and routes
/// and firewall synced on both.
struct Cluster {
    a: Netns,
    _b: Netns,
    pod: Netns,
}

fn cluster_with_pod_on_b() -> Cluster {
    let (a, b) = two_nodes();
    pod_bridge(&a, "10.42.0.1/24", None);
    let pod = pod_bridge(&b, "10.42.1.1/24", Some("10.42.1.5")).expect("pod");
    docker_like_rules(&a);
    docker_like_rules(&b);
    for node in [&a, &b] {
        node.run(|| async {
            sync_routes(&node_list()).await.expect("sync routes");
            sync_firewall(net("10.42.0.0/16"))
                .await
                .expect("sync firewall");
        });
    }
    Cluster { a, _b: b, pod }
}

#[test]
fn pod_cidr_of_another_node_is_reachable_with_the_pod_source_kept() {
    let (a, b) = two_nodes();
    pod_bridge(&a, "10.42.0.1/24", None);
    let pod = pod_bridge(&b, "10.42.1.1/24", Some("10.42.1.5")).expect("pod");
    docker_like_rules(&a);
    docker_like_rules(&b);

    let on_a = a
        .run(|| async { sync_routes(&node_list()).await })
        .expect("sync routes on A");
    assert_eq!(on_a.added, vec![net("10.42.1.0/24")]);
    assert_eq!(
        on_a.skipped_local,
        vec![net("10.42.0.0/24")],
        "A's own CIDR is its bridge"
    );
    let on_b = b
        .run(|| async { sync_routes(&node_list()).await })
        .expect("sync routes on B");
    assert_eq!(on_b.added, vec![net("10.42.0.0/24")]);
    let shown = routes(&a, "10.42.1.0/24");
    assert!(
        shown.contains("via 10.99.0.2") && shown.contains(&format!("proto {ROUTE_PROTOCOL}")),
        "{shown}"
    );

    // Routes alone are not enough: Docker's FORWARD policy drops the routed pod traffic (a
    // timeout, where a reachable pod without a listener would refuse at once).
    let target = SocketAddrV4::new(ip("10.42.1.5"), 8080);
    let blocked = connect_from(
        &a,
        Some(ip("10.42.0.1")),
        target,
        Duration::from_millis(800),
    );
    assert!(
        blocked.as_ref().is_err_and(|e| e.contains("timed out")),
        "FORWARD DROP should stop it before the firewall sync: {blocked:?}"
    );

    for node in [&a, &b] {
        node.run(|| async { sync_firewall(net("10.42.0.0/16")).await })
            .expect("firewall");
    }
    let listener = serve_once(&pod, target);
    connect_from(&a, Some(ip("10.42.0.1")), target, DEADLINE).expect("pod reachable from A");
    let peer = peer_of(listener);
    assert_eq!(
        peer.ip(),
        ip("10.42.0.1"),
        "pod-to-pod across nodes keeps the source"
    );
}

#[test]
fn pod_egress_leaving_the_cluster_cidr_is_masqueraded_to_the_node_address() {
    let c = cluster_with_pod_on_b();
    let target = SocketAddrV4::new(ip("10.99.0.1"), 8081);
    let listener = serve_once(&c.a, target);
    connect_from(&c.pod, None, target, DEADLINE).expect("pod reaches A's node address");
    assert_eq!(
        peer_of(listener).ip(),
        ip("10.99.0.2"),
        "masqueraded to node B's address"
    );
}

#[test]
fn resync_follows_node_join_and_leave_and_writes_nothing_when_unchanged() {
    let (a, _b) = two_nodes();
    // A leftover Berth route from an earlier agent run, for a node that no longer exists.
    a.ip(&format!(
        "route add 10.42.7.0/24 via 10.99.0.2 proto {ROUTE_PROTOCOL}"
    ));

    let joined = vec![
        (net("10.42.1.0/24"), ip("10.99.0.2")),
        (net("10.42.2.0/24"), ip("10.99.0.3")),
    ];
    let first = a.run({
        let d = joined.clone();
        move || async move { sync_routes(&d).await }
    });
    let first = first.expect("first sync");
    assert_eq!(first.added, vec![net("10.42.1.0/24"), net("10.42.2.0/24")]);
    assert_eq!(
        first.removed,
        vec![net("10.42.7.0/24")],
        "stale Berth route removed"
    );

    let again = a.run({
        let d = joined.clone();
        move || async move { sync_routes(&d).await }
    });
    let again = again.expect("second sync");
    assert!(!again.changed(), "{again:?}");
    assert_eq!(again.unchanged.len(), 2);

    // Node 10.99.0.3 leaves.
    let left = a
        .run(|| async { sync_routes(&[(net("10.42.1.0/24"), ip("10.99.0.2"))]).await })
        .expect("sync after leave");
    assert_eq!(left.removed, vec![net("10.42.2.0/24")]);
    let ours = routes(&a, &format!("proto {ROUTE_PROTOCOL}"));
    assert_eq!(ours.lines().count(), 1, "{ours}");

    // Node B comes back with another address: replaced in place.
    let moved = a
        .run(|| async { sync_routes(&[(net("10.42.1.0/24"), ip("10.99.0.4"))]).await })
        .expect("sync after address change");
    assert_eq!(moved.replaced, vec![net("10.42.1.0/24")]);
    assert!(routes(&a, "10.42.1.0/24").contains("via 10.99.0.4"));

    let none = a
        .run(|| async { sync_routes(&[]).await })
        .expect("empty sync");
    assert_eq!(none.removed, vec![net("10.42.1.0/24")]);
    assert_eq!(routes(&a, &format!("proto {ROUTE_PROTOCOL}")), "");
}

#[test]
fn foreign_route_for_a_pod_cidr_is_left_alone_and_reported() {
    let (a, _b) = two_nodes();
    a.ip("route add 10.42.1.0/24 via 10.99.0.2"); // proto boot: someone else's
    a.ip("route add 10.42.9.0/24 via 10.99.0.2 proto static"); // not a pod CIDR at all

    let err = a
        .run(|| async {
            sync_routes(&[
                (net("10.42.1.0/24"), ip("10.99.0.5")),
                (net("10.42.2.0/24"), ip("10.99.0.3")),
            ])
            .await
        })
        .expect_err("the foreign route is reported");
    match &err {
        NetError::ForeignRoute { prefix, existing } => {
            assert_eq!(*prefix, net("10.42.1.0/24"));
            assert_eq!(existing, "10.42.1.0/24 via 10.99.0.2 dev eth0 proto boot");
        }
        other => panic!("expected ForeignRoute, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("ip route del 10.42.1.0/24") && msg.contains("not Berth's"),
        "{msg}"
    );

    let foreign = routes(&a, "10.42.1.0/24 proto boot");
    assert!(foreign.contains("via 10.99.0.2"), "left alone: {foreign}");
    assert!(
        routes(&a, "10.42.9.0/24").contains("proto static"),
        "untouched"
    );
    assert!(
        routes(&a, "10.42.2.0/24").contains("via 10.99.0.3"),
        "the other prefix still synced"
    );
}

#[test]
fn route_via_an_address_off_the_segment_is_a_clear_error() {
    let (a, _b) = two_nodes();
    let err = a
        .run(|| async { sync_routes(&[(net("10.42.3.0/24"), ip("192.168.77.1"))]).await })
        .expect_err("not on-link");
    let msg = err.to_string();
    assert!(
        msg.contains("10.42.3.0/24 via 192.168.77.1") && msg.contains("one L2 segment"),
        "{msg}"
    );
}

#[test]
fn vips_follow_the_desired_set_and_a_listener_on_a_vip_is_reachable() {
    let n = Netns::new("vip");
    let set = |ips: &[&str]| ips.iter().map(|s| ip(s)).collect::<BTreeSet<_>>();

    let first = set(&["10.43.0.10", "10.43.0.11"]);
    let done = n
        .run(move || async move { sync_vips(&first).await })
        .expect("first sync");
    assert!(done.created_interface);
    assert_eq!(done.added, vec![ip("10.43.0.10"), ip("10.43.0.11")]);
    // A dummy, or an ifb on kernels without the dummy driver (this test VM's among them).
    let link = n.sh(&format!("ip -d link show {VIPS_INTERFACE}"));
    assert!(["dummy", "ifb"].contains(&done.kind), "{done:?}");
    assert!(link.contains(&format!("\n    {} ", done.kind)), "{link}");
    assert!(
        link.contains(",UP") && link.contains(&format!("alias {VIPS_ALIAS}")),
        "{link}"
    );

    let same = set(&["10.43.0.10", "10.43.0.11"]);
    let again = n
        .run(move || async move { sync_vips(&same).await })
        .expect("resync");
    assert!(!again.changed(), "{again:?}");

    let vip = SocketAddrV4::new(ip("10.43.0.10"), 80);
    let listener = serve_once(&n, vip);
    connect_from(&n, None, vip, DEADLINE).expect("VIP reachable inside the node");
    peer_of(listener);

    // Down by someone else, and the set changes: brought up, .10 out, .12 in.
    n.ip(&format!("link set {VIPS_INTERFACE} down"));
    let next = set(&["10.43.0.11", "10.43.0.12"]);
    let changed = n
        .run(move || async move { sync_vips(&next).await })
        .expect("change");
    assert!(changed.brought_up);
    assert_eq!(changed.removed, vec![net("10.43.0.10/32")]);
    assert_eq!(changed.added, vec![ip("10.43.0.12")]);
    let addrs = n.sh(&format!("ip -4 -o addr show dev {VIPS_INTERFACE}"));
    let held: Vec<&str> = addrs
        .split_whitespace()
        .filter(|w| w.starts_with("10.43."))
        .collect();
    assert_eq!(held, vec!["10.43.0.11/32", "10.43.0.12/32"], "{addrs}");

    assert!(n
        .run(|| async { remove_vips_interface().await })
        .expect("teardown"));
    assert!(!n
        .run(|| async { remove_vips_interface().await })
        .expect("teardown twice"));
    assert!(!n.sh("ip -o link show").contains(VIPS_INTERFACE));
}

#[test]
fn a_berth_svc_that_is_not_a_dummy_is_refused_and_kept() {
    let n = Netns::new("notdummy");
    n.ip(&format!("link add {VIPS_INTERFACE} type bridge"));
    let vips: BTreeSet<_> = [ip("10.43.0.10")].into();
    let err = n
        .run(move || async move { sync_vips(&vips).await })
        .expect_err("refused");
    assert!(
        matches!(&err, NetError::NotDummy { name, kind } if name == VIPS_INTERFACE && kind == "bridge"),
        "{err:?}"
    );
    assert!(err.to_string().contains("ip link del berth-svc"), "{err}");
    let err = n
        .run(|| async { remove_vips_interface().await })
        .expect_err("refused too");
    assert!(matches!(err, NetError::NotDummy { .. }), "{err:?}");
    assert!(n
        .sh(&format!("ip -d link show {VIPS_INTERFACE}"))
        .contains("bridge"));
}

/// The Service path of a pod: its packet to ClusterIP:port goes via its gateway into the
/// node's INPUT (the VIP is local on berth-svc), never FORWARD, so Docker's FORWARD DROP does
/// not matter, nor does strict reverse-path filtering, ip_forward, or route_localnet.
#[test]
fn pod_reaches_vip_through_input_with_docker_rules_and_strict_rp_filter() {
    let node = Netns::new("node");
    let pod = pod_bridge(&node, "10.42.0.1/24", Some("10.42.0.5")).expect("pod");
    docker_like_rules(&node);
    node.sh(
        "sysctl -qw net.ipv4.ip_forward=0 net.ipv4.conf.all.rp_filter=1 \
         net.ipv4.conf.default.rp_filter=1 net.ipv4.conf.cbr0.rp_filter=1",
    );
    assert_eq!(node.sysctl("net.ipv4.conf.all.route_localnet"), "0");

    let vips: BTreeSet<_> = [ip("10.43.0.10")].into();
    node.run(move || async move { sync_vips(&vips).await })
        .expect("vips");
    let vip = SocketAddrV4::new(ip("10.43.0.10"), 80);
    let listener = serve_once(&node, vip);
    connect_from(&pod, None, vip, DEADLINE).expect("pod reaches the VIP");
    assert_eq!(
        peer_of(listener).ip(),
        ip("10.42.0.5"),
        "the proxy sees the pod's address"
    );
}

fn count(lines: &[String], pred: impl Fn(&str) -> bool) -> usize {
    lines.iter().filter(|l| pred(l)).count()
}

#[test]
fn firewall_chains_are_created_once_and_removed_by_teardown() {
    let n = Netns::new("fw");
    n.sh("sysctl -qw net.ipv4.ip_forward=0");

    let first = n
        .run(|| async { sync_firewall(net("10.42.0.0/16")).await })
        .expect("sync");
    assert!(first.enabled_ip_forward);
    assert_eq!(first.forward_parent, "FORWARD");
    assert_eq!(first.jumps_added, vec!["filter/FORWARD", "nat/POSTROUTING"]);
    let second = n
        .run(|| async { sync_firewall(net("10.42.0.0/16")).await })
        .expect("resync");
    assert!(
        second.jumps_added.is_empty() && !second.enabled_ip_forward,
        "{second:?}"
    );
    assert!(
        second.rewritten.is_empty(),
        "an unchanged table is not rewritten: {second:?}"
    );
    assert_eq!(n.sysctl("net.ipv4.ip_forward"), "1");

    let filter = n.iptables_dump("filter");
    assert_eq!(
        count(&filter, |l| l.starts_with("-A BERTH-FORWARD ")),
        2,
        "{filter:#?}"
    );
    assert_eq!(
        count(&filter, |l| l == "-A FORWARD -j BERTH-FORWARD"),
        1,
        "{filter:#?}"
    );
    assert_eq!(
        count(&filter, |l| l
            .starts_with("-A BERTH-FORWARD -s 10.42.0.0/16 ")
            && l.ends_with("-j ACCEPT")),
        1
    );
    assert_eq!(
        count(&filter, |l| l
            .starts_with("-A BERTH-FORWARD -d 10.42.0.0/16 ")
            && l.ends_with("-j ACCEPT")),
        1
    );
    let nat = n.iptables_dump("nat");
    let own: Vec<&String> = nat
        .iter()
        .filter(|l| l.starts_with("-A BERTH-POSTROUTING "))
        .collect();
    assert_eq!(own.len(), 2, "{nat:#?}");
    assert!(own[0].contains("-s 10.42.0.0/16 -d 10.42.0.0/16") && own[0].ends_with("-j RETURN"));
    assert!(
        own[1].contains("-s 10.42.0.0/16 ! -d 224.0.0.0/4") && own[1].ends_with("-j MASQUERADE"),
        "{own:?}"
    );
    assert_eq!(
        count(&nat, |l| l == "-A POSTROUTING -j BERTH-POSTROUTING"),
        1
    );

    n.run(|| async { teardown_firewall().await })
        .expect("teardown");
    for table in ["filter", "nat"] {
        let dump = n.iptables_dump(table);
        assert_eq!(count(&dump, |l| l.contains("BERTH")), 0, "{dump:#?}");
    }
    n.run(|| async { teardown_firewall().await })
        .expect("teardown when absent");
}

#[test]
fn firewall_jumps_from_docker_user_first_and_moves_there_when_docker_starts_later() {
    let n = Netns::new("fwdocker");
    n.ip("link add cbr0 type bridge");
    let before = n
        .run(|| async { sync_firewall(net("10.42.0.0/16")).await })
        .expect("sync");
    assert_eq!(before.forward_parent, "FORWARD");

    docker_like_rules(&n);
    let after = n
        .run(|| async { sync_firewall(net("10.42.0.0/16")).await })
        .expect("resync");
    assert_eq!(after.forward_parent, "DOCKER-USER");
    assert_eq!(after.jumps_added, vec!["filter/DOCKER-USER"]);
    assert_eq!(after.jumps_removed, vec!["filter/FORWARD"]);
    let filter = n.iptables_dump("filter");
    let docker_user: Vec<&String> = filter
        .iter()
        .filter(|l| l.starts_with("-A DOCKER-USER "))
        .collect();
    assert_eq!(
        docker_user,
        vec![
            "-A DOCKER-USER -j BERTH-FORWARD",
            "-A DOCKER-USER -j RETURN"
        ],
        "Berth's jump comes first in DOCKER-USER"
    );
    assert_eq!(count(&filter, |l| l == "-A FORWARD -j BERTH-FORWARD"), 0);

    n.run(|| async { teardown_firewall().await })
        .expect("teardown");
    let filter = n.iptables_dump("filter");
    assert_eq!(count(&filter, |l| l.contains("BERTH")), 0, "{filter:#?}");
    assert_eq!(
        count(&filter, |l| l == "-A DOCKER-USER -j RETURN"),
        1,
        "Docker's rule kept"
    );
}

#[test]
fn missing_iptables_is_a_clear_error() {
    let n = Netns::new("noipt");
    let err = n
        .run(|| async {
            Firewall::with_binaries("/nonexistent/iptables", "/nonexistent/iptables-restore")
                .sync(net("10.42.0.0/16"))
                .await
        })
        .expect_err("no iptables");
    let msg = err.to_string();
    assert!(
        matches!(&err, NetError::Several { errors, .. } if errors.len() == 2),
        "{err:?}"
    );
    assert!(
        msg.contains("/nonexistent/iptables") && msg.contains("install iptables"),
        "{msg}"
    );
}

/// Without CAP_NET_ADMIN every step fails with an error that says so. The checks run in a
/// child process (this very test, re-run with BERTH_HOSTNET_PROBE=1: [`unprivileged_probe`])
/// started inside a namespace with CAP_NET_ADMIN dropped from its bounding set by `setpriv`.
#[test]
fn without_cap_net_admin_every_error_says_it_needs_root() {
    if std::env::var("BERTH_HOSTNET_PROBE").as_deref() == Ok("1") {
        unprivileged_probe();
        return;
    }
    let n = Netns::new("noadmin");
    let exe = std::env::current_exe().expect("test binary path");
    let exe = exe.to_str().expect("utf-8 path");
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &n.name,
            "setpriv",
            "--bounding-set=-net_admin",
        ])
        .args([
            "--inh-caps=-net_admin",
            exe,
            "--exact",
            "without_cap_net_admin_every_error_says_it_needs_root",
        ])
        .args(["--nocapture", "--test-threads=1"])
        .env("BERTH_HOSTNET_PROBE", "1")
        .output()
        .expect("run the probe");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "probe failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{stdout}");
}

/// The child side of [`without_cap_net_admin_every_error_says_it_needs_root`].
fn unprivileged_probe() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let routes = sync_routes(&[(net("10.42.1.0/24"), ip("10.99.0.2"))]).await;
        let vips = sync_vips(&[ip("10.43.0.10")].into()).await;
        let firewall = sync_firewall(net("10.42.0.0/16")).await;
        for (what, result) in [
            ("routes", routes.map(drop)),
            ("vips", vips.map(drop)),
            ("firewall", firewall.map(drop)),
        ] {
            let err = result.expect_err(what);
            println!("{what}: {err}");
            assert!(err.is_permission_denied(), "{what}: {err:?}");
            assert!(err.to_string().contains("needs root"), "{what}: {err}");
        }
    });
}
