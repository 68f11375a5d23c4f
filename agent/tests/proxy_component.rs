//! Component tests of the Service proxy: the real `Proxy::run` on 127.0.0.1 with fake TCP
//! backends that greet each connection with their identity and then echo.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use berth_agent::proxy::{
    render_prometheus, Proxy, ProxyConfig, ProxyError, ProxyHandle, ServiceBackends,
    ServiceMetrics, ServiceProblem,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(10);
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Greets every connection with "<id>\n", then echoes until EOF.
struct FakeBackend {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for FakeBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn fake_backend(id: &str) -> FakeBackend {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let addr = listener.local_addr().expect("addr");
    let greeting = format!("{id}\n");
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let greeting = greeting.clone();
            conns.spawn(async move {
                if s.write_all(greeting.as_bytes()).await.is_err() {
                    return;
                }
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    FakeBackend { addr, task }
}

/// A port with nothing listening on it (connects are refused).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

struct Running {
    handle: ProxyHandle,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        timeout(DEADLINE, self.task)
            .await
            .expect("proxy stops within the deadline")
            .expect("proxy task");
    }
}

/// Production defaults, except that shutdown does not wait long for open test connections.
fn test_config() -> ProxyConfig {
    ProxyConfig {
        shutdown_grace: Duration::from_millis(200),
        ..ProxyConfig::default()
    }
}

fn start(config: ProxyConfig) -> Running {
    let (proxy, handle) = Proxy::new(config);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(proxy.run(shutdown.clone()));
    Running {
        handle,
        shutdown,
        task,
    }
}

fn svc(name: &str, node_port: u16, backends: &[SocketAddr]) -> ServiceBackends {
    ServiceBackends {
        namespace: "default".into(),
        name: name.into(),
        port_name: "http".into(),
        node_port,
        listen_addrs: vec![LOCALHOST],
        also_listen: Vec::new(),
        backends: backends.to_vec(),
    }
}

/// Configures one service on a fresh node port (retrying if the port was taken meanwhile).
async fn set_one(proxy: &ProxyHandle, name: &str, backends: &[SocketAddr]) -> u16 {
    for _ in 0..5 {
        let port = free_port();
        match proxy.set_services(vec![svc(name, port, backends)]).await {
            Ok(()) => return port,
            Err(ProxyError::Apply { .. }) => continue,
            Err(e) => panic!("set_services: {e}"),
        }
    }
    panic!("no free node port found");
}

/// Connects through the proxy and reads the backend's greeting.
async fn identify(port: u16) -> (BufReader<TcpStream>, String) {
    timeout(DEADLINE, async {
        let s = TcpStream::connect((LOCALHOST, port))
            .await
            .expect("connect to proxy");
        let mut s = BufReader::new(s);
        let mut line = String::new();
        s.read_line(&mut line).await.expect("read greeting");
        (s, line.trim_end().to_string())
    })
    .await
    .expect("greeting within the deadline")
}

async fn ping(conn: &mut BufReader<TcpStream>, msg: &str) -> String {
    timeout(DEADLINE, async {
        conn.get_mut()
            .write_all(format!("{msg}\n").as_bytes())
            .await
            .expect("write");
        let mut line = String::new();
        conn.read_line(&mut line).await.expect("read echo");
        line.trim_end().to_string()
    })
    .await
    .expect("echo within the deadline")
}

/// Asserts the peer closes the connection (EOF or reset) within the deadline.
async fn assert_closed(conn: &mut BufReader<TcpStream>) {
    let mut buf = [0u8; 64];
    match timeout(DEADLINE, conn.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!("expected close, got {n} bytes: {:?}", &buf[..n]),
        Err(_) => panic!("connection still open after {DEADLINE:?}"),
    }
}

async fn metrics_of(proxy: &ProxyHandle, name: &str) -> ServiceMetrics {
    proxy
        .metrics()
        .await
        .expect("metrics")
        .into_iter()
        .find(|m| m.name == name)
        .expect("service in metrics")
}

/// Polls the metrics until `cond` holds (counters are updated by connection tasks, which may
/// run a moment after the client saw the effect).
async fn wait_metrics(
    proxy: &ProxyHandle,
    name: &str,
    cond: impl Fn(&ServiceMetrics) -> bool,
) -> ServiceMetrics {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let m = metrics_of(proxy, name).await;
        if cond(&m) {
            return m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "metrics condition not met in time: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balancing_spreads_open_connections_evenly_over_backends() {
    let backends = [
        fake_backend("a").await,
        fake_backend("b").await,
        fake_backend("c").await,
    ];
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let proxy = start(test_config());
    let port = set_one(&proxy.handle, "web", &addrs).await;

    let mut held = Vec::new();
    let mut hits: HashMap<String, usize> = HashMap::new();
    for _ in 0..30 {
        let (conn, id) = identify(port).await;
        *hits.entry(id).or_default() += 1;
        held.push(conn);
    }
    // Least-loaded of two: with connections held open, no backend gets far ahead.
    for id in ["a", "b", "c"] {
        let n = hits.get(id).copied().unwrap_or(0);
        assert!((6..=14).contains(&n), "uneven spread {hits:?}");
    }
    let m = wait_metrics(&proxy.handle, "web", |m| m.connections_active == 30).await;
    assert_eq!(m.connections_total, 30);
    assert_eq!(m.ready_backends, 3);
    assert_eq!(m.backends.iter().map(|b| b.active).sum::<u64>(), 30);

    let mut c = held.pop().expect("conn");
    assert_eq!(ping(&mut c, "hello").await, "hello");
    drop(c);
    drop(held);
    let m = wait_metrics(&proxy.handle, "web", |m| m.connections_active == 0).await;
    assert_eq!(m.bytes_in, "hello\n".len() as u64);
    assert_eq!(m.bytes_out, 30 * 2 + "hello\n".len() as u64);
    let text = render_prometheus(&[m]);
    assert!(text.contains(
        "berth_proxy_connections_total{namespace=\"default\",service=\"web\",port=\"http\""
    ));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connections_use_the_new_set_as_soon_as_set_services_returns() {
    let blue = [fake_backend("blue-1").await, fake_backend("blue-2").await];
    let green = [fake_backend("green-1").await, fake_backend("green-2").await];
    let proxy = start(test_config());
    let port = set_one(&proxy.handle, "web", &[blue[0].addr, blue[1].addr]).await;
    for _ in 0..5 {
        let (_c, id) = identify(port).await;
        assert!(id.starts_with("blue"), "got {id}");
    }
    // Flip back and forth: after each call returns, not one connection may reach the old set.
    for round in 0..4 {
        let (color, set) = if round % 2 == 0 {
            ("green", &green)
        } else {
            ("blue", &blue)
        };
        proxy
            .handle
            .set_services(vec![svc("web", port, &[set[0].addr, set[1].addr])])
            .await
            .expect("swap");
        for _ in 0..20 {
            let (_c, id) = identify(port).await;
            assert!(id.starts_with(color), "round {round}: got {id}");
        }
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn established_connection_to_removed_backend_keeps_working_until_closed() {
    let old = fake_backend("old").await;
    let new = fake_backend("new").await;
    let proxy = start(test_config());
    let port = set_one(&proxy.handle, "web", &[old.addr]).await;
    let (mut conn, id) = identify(port).await;
    assert_eq!(id, "old");

    proxy
        .handle
        .set_services(vec![svc("web", port, &[new.addr])])
        .await
        .expect("swap");
    let (_c, id) = identify(port).await;
    assert_eq!(id, "new");
    // The old connection drains: still served by the removed backend.
    for i in 0..3 {
        assert_eq!(
            ping(&mut conn, &format!("ping {i}")).await,
            format!("ping {i}")
        );
    }
    let m = metrics_of(&proxy.handle, "web").await;
    let draining: Vec<_> = m.backends.iter().filter(|b| !b.ready).collect();
    assert_eq!(draining.len(), 1, "{m:?}");
    assert_eq!(draining[0].addr, old.addr);
    assert_eq!(m.drain_closed, 0);

    drop(conn);
    wait_metrics(&proxy.handle, "web", |m| m.connections_active == 1).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_closes_connections_of_a_removed_backend() {
    let old = fake_backend("old").await;
    let new = fake_backend("new").await;
    let proxy = start(ProxyConfig {
        drain_timeout: Duration::from_millis(300),
        ..test_config()
    });
    let port = set_one(&proxy.handle, "web", &[old.addr, new.addr]).await;
    // Hold connections until both backends have one.
    let mut by_id: HashMap<String, BufReader<TcpStream>> = HashMap::new();
    for _ in 0..50 {
        let (c, id) = identify(port).await;
        by_id.entry(id).or_insert(c);
        if by_id.len() == 2 {
            break;
        }
    }
    let mut to_old = by_id.remove("old").expect("a connection to old");
    let mut to_new = by_id.remove("new").expect("a connection to new");

    proxy
        .handle
        .set_services(vec![svc("web", port, &[new.addr])])
        .await
        .expect("swap");
    assert_closed(&mut to_old).await;
    // The kept backend's connection is untouched.
    assert_eq!(ping(&mut to_new, "still here").await, "still here");
    wait_metrics(&proxy.handle, "web", |m| m.drain_closed == 1).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_fails_over_to_another_backend() {
    let live = fake_backend("live").await;
    let dead: SocketAddr = (LOCALHOST, free_port()).into();
    let proxy = start(test_config());
    let port = set_one(&proxy.handle, "web", &[dead, live.addr]).await;
    for _ in 0..30 {
        let (_c, id) = identify(port).await;
        assert_eq!(id, "live");
    }
    let m = wait_metrics(&proxy.handle, "web", |m| m.connections_active == 0).await;
    assert!(
        m.connect_errors >= 1,
        "the dead backend was never tried: {m:?}"
    );
    assert_eq!(m.failed_connections, 0);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_backends_refusing_closes_the_client_after_trying_each_once() {
    let dead: Vec<SocketAddr> = (0..2).map(|_| (LOCALHOST, free_port()).into()).collect();
    let proxy = start(test_config());
    let port = set_one(&proxy.handle, "web", &dead).await;
    let s = TcpStream::connect((LOCALHOST, port))
        .await
        .expect("connect");
    assert_closed(&mut BufReader::new(s)).await;
    let m = wait_metrics(&proxy.handle, "web", |m| m.failed_connections == 1).await;
    assert_eq!(m.connect_errors, 2, "each backend tried once: {m:?}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_without_endpoints_closes_connections_at_once() {
    let proxy = start(test_config());
    let port = set_one(&proxy.handle, "empty", &[]).await;
    for _ in 0..3 {
        let s = TcpStream::connect((LOCALHOST, port))
            .await
            .expect("accepted");
        assert_closed(&mut BufReader::new(s)).await;
    }
    let m = wait_metrics(&proxy.handle, "empty", |m| m.no_backend_errors == 3).await;
    assert_eq!(m.connections_total, 3);
    assert_eq!(m.ready_backends, 0);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_service_stops_listening_and_its_node_port_can_be_reused() {
    let a = fake_backend("a").await;
    let b = fake_backend("b").await;
    let proxy = start(test_config());
    let port = set_one(&proxy.handle, "first", &[a.addr]).await;
    let (mut kept, id) = identify(port).await;
    assert_eq!(id, "a");

    proxy.handle.set_services(vec![]).await.expect("remove all");
    let refused = TcpStream::connect((LOCALHOST, port)).await;
    assert!(refused.is_err(), "node port still listening after removal");
    // Connections of a removed Service drain like those of a removed backend.
    assert_eq!(ping(&mut kept, "drain").await, "drain");

    proxy
        .handle
        .set_services(vec![svc("second", port, &[b.addr])])
        .await
        .expect("node port moves to another service");
    let (_c, id) = identify(port).await;
    assert_eq!(id, "b");
    let names: Vec<String> = proxy
        .handle
        .metrics()
        .await
        .expect("metrics")
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(names, vec!["second".to_string()]);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_conflict_is_reported_and_other_services_are_still_served() {
    let a = fake_backend("a").await;
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = squatter.local_addr().expect("addr").port();
    let proxy = start(ProxyConfig {
        bind_retry_interval: Duration::from_millis(50),
        ..test_config()
    });
    let free = free_port();
    let err = proxy
        .handle
        .set_services(vec![
            svc("blocked", taken, &[a.addr]),
            svc("ok", free, &[a.addr]),
            svc("zero", 0, &[a.addr]),
        ])
        .await
        .expect_err("a taken port and port 0 must be reported");
    let ProxyError::Apply { failures } = &err else {
        panic!("unexpected error {err}");
    };
    assert_eq!(failures.len(), 2, "{err}");
    assert!(failures
        .iter()
        .any(|f| f.service.name == "blocked" && matches!(f.problem, ServiceProblem::Bind { .. })));
    assert!(failures
        .iter()
        .any(|f| f.service.name == "zero" && matches!(f.problem, ServiceProblem::NodePortZero)));
    assert!(
        err.to_string().contains("cannot listen on 127.0.0.1:"),
        "{err}"
    );
    let (_c, id) = identify(free).await;
    assert_eq!(id, "a");

    // Once the port is free again the proxy binds it by itself.
    drop(squatter);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Ok(Ok(s)) = timeout(
            Duration::from_secs(1),
            TcpStream::connect((LOCALHOST, taken)),
        )
        .await
        {
            let mut s = BufReader::new(s);
            let mut line = String::new();
            let _ = timeout(DEADLINE, s.read_line(&mut line)).await;
            assert_eq!(line.trim_end(), "a");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "port never re-bound"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_node_port_in_one_update_keeps_the_first_service() {
    let a = fake_backend("a").await;
    let b = fake_backend("b").await;
    let proxy = start(test_config());
    let port = free_port();
    let err = proxy
        .handle
        .set_services(vec![
            svc("zeta", port, &[b.addr]),
            svc("alpha", port, &[a.addr]),
        ])
        .await
        .expect_err("clash reported");
    assert!(err.to_string().contains("default/zeta:http"), "{err}");
    let (_c, id) = identify(port).await;
    assert_eq!(id, "a", "first by key (alpha) owns the port");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_listeners_and_cuts_connections_after_grace() {
    let a = fake_backend("a").await;
    let proxy = start(ProxyConfig {
        shutdown_grace: Duration::from_millis(200),
        ..test_config()
    });
    let port = set_one(&proxy.handle, "web", &[a.addr]).await;
    let (mut conn, _) = identify(port).await;
    let handle = proxy.handle.clone();
    proxy.stop().await;
    assert_closed(&mut conn).await;
    assert!(TcpStream::connect((LOCALHOST, port)).await.is_err());
    assert!(matches!(
        handle.set_services(vec![]).await,
        Err(ProxyError::Stopped)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_never_reach_the_old_set_after_the_swap_returns() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::time::Instant;

    let blue = fake_backend("blue").await;
    let green = fake_backend("green").await;
    let proxy = start(test_config());
    let port = set_one(&proxy.handle, "web", &[blue.addr]).await;

    let done = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (done, stop) = (done.clone(), stop.clone());
        clients.spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let (_c, id) = identify(port).await;
                seen.push((started, Instant::now(), id));
                done.fetch_add(1, Ordering::Relaxed);
            }
            seen
        });
    }
    let wait_for = |n: usize| {
        let done = done.clone();
        async move {
            let deadline = Instant::now() + DEADLINE;
            while done.load(Ordering::Relaxed) < n {
                assert!(Instant::now() < deadline, "clients made no progress");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };

    // (start of the call, its return, the colour every later connection must see)
    let mut swaps = Vec::new();
    for (k, (color, addr)) in [("green", green.addr), ("blue", blue.addr)]
        .into_iter()
        .cycle()
        .take(6)
        .enumerate()
    {
        wait_for(20 * (k + 1)).await;
        let called = Instant::now();
        proxy
            .handle
            .set_services(vec![svc("web", port, &[addr])])
            .await
            .expect("swap");
        swaps.push((called, Instant::now(), color));
    }
    wait_for(20 * 7).await;
    stop.store(true, Ordering::Relaxed);
    let mut checked = 0;
    while let Some(seen) = clients.join_next().await {
        for (started, greeted, id) in seen.expect("client task") {
            // The swap in force: the last one that returned before this connection started,
            // as long as the next one was not called before the greeting arrived (the proxy
            // may accept a connection any time in between).
            let Some(k) = swaps
                .iter()
                .rposition(|(_, returned, _)| *returned <= started)
            else {
                continue;
            };
            if swaps
                .get(k + 1)
                .is_some_and(|(called, _, _)| *called <= greeted)
            {
                continue; // raced with the next swap: either colour is allowed
            }
            if id != swaps[k].2 {
                let t0 = swaps[0].0;
                let rel = |t: Instant| t.saturating_duration_since(t0).as_micros();
                let table: Vec<_> = swaps
                    .iter()
                    .map(|(c, r, col)| (rel(*c), rel(*r), *col))
                    .collect();
                panic!(
                    "connection over [{}, {}] us saw {id} after swap {k} returned; swaps \
                     (called, returned, colour): {table:?}",
                    rel(started),
                    rel(greeted)
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 60, "too few connections checked: {checked}");
    proxy.stop().await;
}

/// Several agents on one host (tests, benchmarks) each serve their own node address; only one
/// of them can also have 127.0.0.1, and the others must not give up their own address for it.
#[tokio::test]
async fn a_taken_localhost_port_does_not_stop_serving_the_node_address() {
    let a = fake_backend("a").await;
    let port = free_port();
    let squatter = std::net::TcpListener::bind((LOCALHOST, port)).expect("bind localhost");
    let node_ip: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let proxy = start(test_config());
    let mut spec = svc("web", port, &[a.addr]);
    spec.listen_addrs = vec![node_ip, LOCALHOST];
    proxy
        .handle
        .set_services(vec![spec])
        .await
        .expect("the node address alone is enough");
    let s = timeout(DEADLINE, TcpStream::connect((node_ip, port)))
        .await
        .expect("connect within the deadline")
        .expect("connect to the node address");
    let mut s = BufReader::new(s);
    let mut line = String::new();
    timeout(DEADLINE, s.read_line(&mut line))
        .await
        .expect("greeting within the deadline")
        .expect("read greeting");
    assert_eq!(line.trim_end(), "a");
    drop(squatter);
}
