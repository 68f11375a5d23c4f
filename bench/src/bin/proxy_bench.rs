//! proxy-bench: the Berth Service proxy against its anchors, in one run on loopback.
//!
//! Same backend (nginx with one worker if installed, else the built-in Rust HTTP server on a
//! one-worker runtime), same `wrk` settings, four targets: direct to the backend (the limit),
//! through HAProxy (TCP mode, `nbthread 1`, config shaped like shared/anchors/haproxy.cfg),
//! through the Berth proxy's node port (in-process, on a one-worker tokio runtime for
//! fairness) and through the same Service's ClusterIP (`berth-vip`: the address held on an
//! ifb interface of its own, as the agent holds VIPs on `berth-svc`, port 80), and the same
//! Service through the in-kernel nftables datapath (`nft`: 127.0.0.1:nodePort, `nft-vip`:
//! the ClusterIP at port 8080; the agent's `table ip berth`, removed at exit). Both
//! keep-alive and `Connection: close` (a new connection per request). Prints req/s and p99 for
//! each and the ratios vs HAProxy and vs direct, plus the CPU time each proxy spent per request
//! (scheduler accounting; steadier than req/s on a shared, noisy machine). Finally the proxy's
//! share of a blue-green switch: how long `set_services` takes to re-point N Service ports.
//!
//! Tools come from Debian: `apt-get install -y wrk haproxy nginx` (bench/setup.sh). A missing
//! tool is reported and its rows skipped; without wrk nothing can be measured (exit code 2).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use berth_agent::proxy::{
    nft, Proxy, ProxyConfig, ProxyHandle, ProxyPlan, ServiceBackends, ServiceMetrics,
};
use berth_bench::http_backend;
use berth_bench::procs::{self, ChildGuard};
use berth_bench::runtime_thread::{Flavor, RuntimeThread};
use berth_bench::wrk::{self, WrkResult, WrkSettings};
use clap::{Parser, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "proxy-bench",
    about = "Berth Service proxy vs direct vs HAProxy (wrk, loopback)"
)]
struct Args {
    /// Seconds per measured wrk run.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// wrk connections (-c).
    #[arg(long, default_value_t = 32)]
    connections: u32,
    /// wrk threads (-t).
    #[arg(long, default_value_t = 1)]
    threads: u32,
    /// Seconds of unmeasured warm-up against each target before its run (0: none).
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    /// Backend server: nginx when installed (auto), or the built-in Rust server.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,
    /// Worker threads of the Berth proxy's multi-thread runtime (HAProxy runs with
    /// nbthread 1); 0 runs it on a current-thread runtime instead.
    #[arg(long, default_value_t = 1)]
    proxy_workers: usize,
    /// Measured runs per target and mode; the table shows the median (by req/s and by p99).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Print every run, not only the medians.
    #[arg(long)]
    verbose: bool,
    /// Which connection modes to run.
    #[arg(long, value_enum, default_value_t = ModeChoice::Both)]
    mode: ModeChoice,
    /// Run only these targets (direct, haproxy, berth, berth-vip, nft, nft-vip); default all.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Service ports configured for the backend-switch measurement (0: skip it).
    #[arg(long, default_value_t = 200)]
    switch_services: usize,
    /// Switches (all services blue -> green or back) measured.
    #[arg(long, default_value_t = 100)]
    switches: usize,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ModeChoice {
    Both,
    KeepAlive,
    Close,
}

/// One measured run: wrk's figures and the proxy's CPU time per request.
#[derive(Debug, Clone)]
struct Measured {
    wrk: WrkResult,
    cpu_per_req: Option<Duration>,
}

fn fmt_cpu(c: Option<Duration>) -> String {
    c.map_or("-".to_string(), |c| {
        format!("{:.1}us", c.as_secs_f64() * 1e6)
    })
}

/// Median req/s, median p99 and median CPU/request over the successful runs (the first
/// error if none succeeded).
fn median(runs: Vec<Result<Measured>>) -> Result<Measured> {
    let mut ok = Vec::new();
    let mut first_err = None;
    for r in runs {
        match r {
            Ok(r) => ok.push(r),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    if ok.is_empty() {
        return Err(first_err.unwrap_or_else(|| anyhow::anyhow!("no run")));
    }
    let mid = ok.len() / 2;
    let mut rps: Vec<f64> = ok.iter().map(|r| r.wrk.requests_per_sec).collect();
    rps.sort_by(f64::total_cmp);
    let mut p99: Vec<Duration> = ok.iter().map(|r| r.wrk.p99).collect();
    p99.sort();
    let mut cpu: Vec<Duration> = ok.iter().filter_map(|r| r.cpu_per_req).collect();
    cpu.sort();
    Ok(Measured {
        wrk: WrkResult {
            requests_per_sec: rps[mid],
            p99: p99[mid],
            errors: ok.iter().map(|r| r.wrk.errors).sum(),
            requests: ok.iter().map(|r| r.wrk.requests).sum(),
        },
        cpu_per_req: cpu.get(cpu.len() / 2).copied(),
    })
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum BackendChoice {
    Auto,
    Nginx,
    Rust,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("proxy-bench: {e:#}");
            ExitCode::from(1)
        }
    }
}

struct Tools {
    wrk: Option<PathBuf>,
    haproxy: Option<PathBuf>,
    nginx: Option<PathBuf>,
}

fn run(args: &Args) -> Result<ExitCode> {
    let tools = Tools {
        wrk: procs::find_tool("wrk"),
        haproxy: procs::find_tool("haproxy"),
        nginx: procs::find_tool("nginx"),
    };
    for (name, path, consequence) in [
        ("wrk", &tools.wrk, "nothing can be measured"),
        ("haproxy", &tools.haproxy, "the HAProxy rows are skipped"),
        (
            "nginx",
            &tools.nginx,
            "the built-in Rust HTTP server is the backend",
        ),
    ] {
        match path {
            Some(p) => println!("tool {name:8} {}", p.display()),
            None => println!(
                "tool {name:8} MISSING: {consequence} (install: apt-get update && apt-get install -y {name}, or bench/setup.sh)"
            ),
        }
    }
    let Some(wrk_path) = tools.wrk.clone() else {
        eprintln!("proxy-bench: wrk is not installed; install it with `apt-get install -y wrk`");
        return Ok(ExitCode::from(2));
    };
    let dir = tempfile::tempdir().context("creating a temporary directory")?;

    // The backend, shared by all three targets.
    let mut _nginx: Option<ChildGuard> = None;
    let mut _rust_backend = None;
    let use_nginx = match args.backend {
        BackendChoice::Auto => tools.nginx.is_some(),
        BackendChoice::Nginx => {
            if tools.nginx.is_none() {
                anyhow::bail!(
                    "--backend nginx, but nginx is not installed (apt-get install -y nginx)"
                );
            }
            true
        }
        BackendChoice::Rust => false,
    };
    let (backend, backend_desc) = match (&tools.nginx, use_nginx) {
        (Some(nginx), true) => {
            let addr = SocketAddr::new(LOCALHOST, procs::free_port()?);
            _nginx = Some(procs::start_nginx(nginx, dir.path(), addr)?);
            (addr, "nginx, 1 worker process".to_string())
        }
        _ => {
            let b = http_backend::start(1)?;
            let addr = b.addr;
            _rust_backend = Some(b);
            (
                addr,
                "built-in Rust HTTP/1.1 server, 1-worker tokio runtime".to_string(),
            )
        }
    };

    let mut _haproxy: Option<ChildGuard> = None;
    let haproxy_addr = match &tools.haproxy {
        Some(h) => {
            let addr = SocketAddr::new(LOCALHOST, procs::free_port()?);
            _haproxy = Some(procs::start_haproxy(h, dir.path(), addr, &[backend])?);
            Some(addr)
        }
        None => None,
    };

    let vip = Vip::add();
    let vip_ip = match &vip {
        Ok(v) => v.ip,
        Err(e) => {
            println!(
                "ClusterIP: could not hold a VIP on an interface of its own ({e:#}); the \
                 berth-vip row uses 127.0.0.2 instead (run as root for the real path)"
            );
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))
        }
    };
    let vip_addr = SocketAddr::new(vip_ip, 80);
    let (berth_addr, berth_handle, _berth_rt) = start_berth(backend, args.proxy_workers, vip_addr)?;
    // The nftables datapath: the same Service programmed as the agent's table (DNAT in the
    // kernel), reached at 127.0.0.1:nodePort and at the ClusterIP on port 8080 (port 80 of
    // the VIP is the userspace proxy's).
    let nft = match start_nft(backend, SocketAddr::new(vip_ip, NFT_VIP_PORT)) {
        Ok(n) => Some(n),
        Err(e) => {
            println!("nftables datapath: not measured: {e:#}");
            None
        }
    };

    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let berth_rt = match args.proxy_workers {
        0 => "current-thread runtime".to_string(),
        n => format!("{n}-worker multi-thread runtime"),
    };
    let haproxy_desc = match haproxy_addr {
        Some(a) => format!("TCP mode, nbthread 1 on {a}"),
        None => "missing".to_string(),
    };
    println!(
        "backend: {backend_desc} on {backend}; HAProxy: {haproxy_desc}; Berth proxy: in-process, {berth_rt}, node port {berth_addr}, ClusterIP {vip_addr}{}; {cpus} CPUs",
        match &vip {
            Ok(v) => format!(" on {}", v.iface),
            Err(_) => String::new(),
        }
    );

    // Whose CPU time is charged to each target: the proxy process or thread (not the backend).
    let self_pid = std::process::id();
    let haproxy_pid = _haproxy.as_ref().map(ChildGuard::pid);
    let cpu_of = move |name: &str| -> Option<Duration> {
        match name {
            "haproxy" => procs::cpu_time(haproxy_pid?, None),
            "berth" | "berth-vip" => procs::cpu_time(self_pid, Some("berth-proxy")),
            _ => None,
        }
    };
    let targets: Vec<(&str, Option<SocketAddr>)> = [
        ("direct", Some(backend)),
        ("haproxy", haproxy_addr),
        ("berth", Some(berth_addr)),
        ("berth-vip", Some(vip_addr)),
        ("nft", nft.as_ref().map(|n| n.node_port)),
        ("nft-vip", nft.as_ref().map(|n| n.vip)),
    ]
    .into_iter()
    .filter(|(name, _)| args.only.is_empty() || args.only.iter().any(|o| o == name))
    .collect();
    let modes: Vec<bool> = [false, true]
        .into_iter()
        .filter(|close| match args.mode {
            ModeChoice::Both => true,
            ModeChoice::KeepAlive => !close,
            ModeChoice::Close => *close,
        })
        .collect();
    let mut rows = Vec::new();
    for close in modes {
        let settings = WrkSettings {
            threads: args.threads,
            connections: args.connections,
            duration: Duration::from_secs(args.duration),
            close,
        };
        println!(
            "running: {} ({} round(s), target order rotated per round)",
            settings.display("http://127.0.0.1:PORT/"),
            args.rounds
        );
        let mut runs: Vec<(&str, Option<Vec<Result<Measured>>>)> = targets
            .iter()
            .map(|(name, addr)| (*name, addr.map(|_| Vec::new())))
            .collect();
        for round in 0..args.rounds.max(1) {
            for k in 0..targets.len() {
                let i = (k + round) % targets.len();
                let (name, Some(addr)) = targets[i] else {
                    continue;
                };
                let url = format!("http://{addr}/");
                if args.warmup > 0 {
                    let warm = WrkSettings {
                        duration: Duration::from_secs(args.warmup),
                        ..settings.clone()
                    };
                    let _ = wrk::run(&wrk_path, &warm, &url);
                }
                let cpu_before = cpu_of(name);
                let r = wrk::run(&wrk_path, &settings, &url).map(|wrk| {
                    let cpu = cpu_before
                        .zip(cpu_of(name))
                        .map(|(b, a)| a.saturating_sub(b));
                    let cpu_per_req = cpu
                        .filter(|_| wrk.requests > 0)
                        .map(|c| c / u32::try_from(wrk.requests).unwrap_or(u32::MAX));
                    Measured { wrk, cpu_per_req }
                });
                if args.verbose {
                    match &r {
                        Ok(m) => println!(
                            "  round {round} {name:10} {:>9.0} req/s  p99 {:.2}ms  cpu/req {}",
                            m.wrk.requests_per_sec,
                            m.wrk.p99.as_secs_f64() * 1e3,
                            fmt_cpu(m.cpu_per_req)
                        ),
                        Err(e) => println!("  round {round} {name:10} failed: {e:#}"),
                    }
                }
                if let Some(v) = runs[i].1.as_mut() {
                    v.push(r);
                }
            }
        }
        let results = runs
            .into_iter()
            .map(|(name, v)| (name, v.map(median)))
            .collect();
        rows.push((if close { "close" } else { "keep-alive" }, results));
    }

    print_table(&rows);
    if let Some(m) = berth_metrics(&berth_handle) {
        println!(
            "berth proxy counters: connections {} (active {}), bytes in {} / out {}, no-backend {}, connect errors {}, failed {}",
            m.connections_total,
            m.connections_active,
            m.bytes_in,
            m.bytes_out,
            m.no_backend_errors,
            m.connect_errors,
            m.failed_connections
        );
    }
    if args.switch_services > 0 {
        match measure_switch(
            args.switch_services,
            args.switches.max(1),
            args.proxy_workers,
        ) {
            Ok(line) => println!("{line}"),
            Err(e) => println!("backend switch: FAILED: {e:#}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The proxy's share of a blue-green switch: how long `set_services` takes to apply a new
/// backend set for every one of `services` Service ports (each listening on its own node
/// port) and return; after it returns every new connection goes to the new set (proved by
/// the component tests).
fn measure_switch(services: usize, switches: usize, workers: usize) -> Result<String> {
    let (proxy, handle) = Proxy::new(ProxyConfig::default());
    let flavor = match workers {
        0 => Flavor::CurrentThread,
        n => Flavor::MultiThread(n),
    };
    let _rt = RuntimeThread::start("switch-proxy", flavor, move |stop| async move {
        let _ = tokio::spawn(proxy.run(stop)).await;
    })?;
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Backends are never connected to here: only the set changes.
    let blue = [
        SocketAddr::new(LOCALHOST, 9),
        SocketAddr::new(LOCALHOST, 10),
    ];
    let green = [
        SocketAddr::new(LOCALHOST, 11),
        SocketAddr::new(LOCALHOST, 12),
    ];
    let make = |ports: &[u16], set: &[SocketAddr; 2]| -> Vec<ServiceBackends> {
        ports
            .iter()
            .enumerate()
            .map(|(i, port)| ServiceBackends {
                namespace: "bench".into(),
                name: format!("svc-{i}"),
                port_name: "http".into(),
                node_port: *port,
                listen_addrs: vec![LOCALHOST],
                also_listen: Vec::new(),
                backends: set.to_vec(),
            })
            .collect()
    };
    let mut ports = Vec::new();
    let mut bound = false;
    for _ in 0..5 {
        // Hold all probe sockets at once so the ports are distinct, then release them.
        let probes: Vec<std::net::TcpListener> = (0..services)
            .map(|_| std::net::TcpListener::bind((LOCALHOST, 0)))
            .collect::<std::io::Result<_>>()
            .context("reserving node ports")?;
        ports = probes
            .iter()
            .map(|l| l.local_addr().map(|a| a.port()))
            .collect::<std::io::Result<_>>()?;
        drop(probes);
        if control
            .block_on(handle.set_services(make(&ports, &blue)))
            .is_ok()
        {
            bound = true;
            break;
        }
    }
    if !bound {
        anyhow::bail!("could not bind {services} node ports");
    }
    let mut times = Vec::with_capacity(switches);
    for i in 0..switches {
        let set = if i % 2 == 0 { &green } else { &blue };
        let desired = make(&ports, set);
        let start = std::time::Instant::now();
        control
            .block_on(handle.set_services(desired))
            .context("switching backends")?;
        times.push(start.elapsed());
    }
    times.sort();
    let pct = |p: f64| times[((times.len() as f64 * p).ceil() as usize).clamp(1, times.len()) - 1];
    Ok(format!(
        "backend switch (proxy share): set_services re-pointing {services} service ports \
         ({switches} switches): p50 {:.2}ms, p99 {:.2}ms, max {:.2}ms",
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        times.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    ))
}

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const NFT_VIP_PORT: u16 = 8080;

/// The Service programmed into the kernel as the agent's nftables table; the table is
/// removed on drop.
struct NftService {
    node_port: SocketAddr,
    vip: SocketAddr,
}

impl Drop for NftService {
    fn drop(&mut self) {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            let _ = rt.block_on(nft::remove_table(std::path::Path::new("nft")));
        }
    }
}

/// Programs one Service (node port on 127.0.0.1 and `vip`, endpoint `backend`) the way
/// `berth agent --proxy-mode nftables` does. Refuses when a table is there already (an agent
/// in nftables mode runs in this network namespace: its table is not the bench's to replace).
fn start_nft(backend: SocketAddr, vip: SocketAddr) -> Result<NftService> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let program = std::path::Path::new("nft");
    if rt.block_on(nft::list_table(program))?.is_some() {
        anyhow::bail!(
            "the table {} exists already (an agent in nftables mode runs here); stop it or run \
             the bench in a network namespace of its own",
            nft::TABLE
        );
    }
    let port = procs::free_port()?;
    let plan = ProxyPlan {
        revision: 1,
        services: vec![ServiceBackends {
            namespace: "bench".into(),
            name: "web".into(),
            port_name: "http".into(),
            node_port: port,
            listen_addrs: vec![LOCALHOST],
            also_listen: vec![vip],
            backends: vec![backend],
        }],
    };
    let mut datapath = nft::NftDatapath::new(nft::NodeFacts {
        cluster_cidr: "10.42.0.0/16".parse().ok(),
    });
    let service = NftService {
        node_port: SocketAddr::new(LOCALHOST, port),
        vip,
    };
    rt.block_on(datapath.program(&plan))
        .context("programming the nftables table (needs root and nft: apt-get install nftables)")?;
    wait_listening(service.vip)?;
    Ok(service)
}

/// Runs the Berth proxy on its own runtime and configures one Service to `backend`.
fn start_berth(
    backend: SocketAddr,
    workers: usize,
    vip: SocketAddr,
) -> Result<(SocketAddr, ProxyHandle, RuntimeThread)> {
    let (proxy, handle) = Proxy::new(ProxyConfig::default());
    let flavor = match workers {
        0 => Flavor::CurrentThread,
        n => Flavor::MultiThread(n),
    };
    let rt = RuntimeThread::start("berth-proxy", flavor, move |stop| async move {
        let task = tokio::spawn(proxy.run(stop.clone()));
        let _ = task.await;
    })?;
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut last_err = None;
    for _ in 0..5 {
        let port = procs::free_port()?;
        let svc = ServiceBackends {
            namespace: "bench".into(),
            name: "web".into(),
            port_name: "http".into(),
            node_port: port,
            listen_addrs: vec![LOCALHOST],
            also_listen: vec![vip],
            backends: vec![backend],
        };
        match control.block_on(handle.set_services(vec![svc])) {
            Ok(()) => {
                wait_listening(vip)?;
                return Ok((SocketAddr::new(LOCALHOST, port), handle, rt));
            }
            Err(e) => last_err = Some(e),
        }
    }
    Err(anyhow::anyhow!(
        "could not start the Berth proxy: {}",
        last_err.map_or_else(|| "unknown".to_string(), |e| e.to_string())
    ))
}

/// The ClusterIP listeners are bound (and retried) by the proxy's own task, after
/// `set_services` returns: wait until `addr` accepts.
fn wait_listening(addr: SocketAddr) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(_) => return Ok(()),
            Err(e) if std::time::Instant::now() > deadline => {
                anyhow::bail!("the Berth proxy never listened on {addr}: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// A Service VIP held the way the agent holds them (an address on an ifb interface, whose
/// local route makes the kernel deliver it to the proxy's listener), on an interface of the
/// bench's own so a running agent's `berth-svc` is never touched. Removed on drop.
struct Vip {
    iface: String,
    ip: IpAddr,
}

impl Vip {
    fn add() -> Result<Vip> {
        let iface = format!("bbench{}", std::process::id() % 100_000);
        // 198.18.0.0/15 is reserved for benchmarking (RFC 2544); one /32 per run.
        let ip = Ipv4Addr::new(198, 18, 0, 1);
        let ip_cmd = |args: &[&str]| -> Result<()> {
            let out = std::process::Command::new("ip")
                .args(args)
                .output()
                .context("running ip(8)")?;
            anyhow::ensure!(
                out.status.success(),
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            Ok(())
        };
        ip_cmd(&["link", "add", &iface, "type", "dummy"])
            .or_else(|_| ip_cmd(&["link", "add", &iface, "type", "ifb"]))?;
        let v = Vip {
            iface: iface.clone(),
            ip: IpAddr::V4(ip),
        };
        ip_cmd(&["addr", "add", &format!("{ip}/32"), "dev", &iface])?;
        ip_cmd(&["link", "set", &iface, "up"])?;
        Ok(v)
    }
}

impl Drop for Vip {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.iface])
            .output();
    }
}

/// The proxy's counters once its connections have wound down (up to 5 s after the last run).
fn berth_metrics(handle: &ProxyHandle) -> Option<ServiceMetrics> {
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    control.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let m = handle.metrics().await.ok()?.into_iter().next()?;
            if m.connections_active == 0 || tokio::time::Instant::now() > deadline {
                return Some(m);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

type Rows<'a> = Vec<(&'a str, Vec<(&'a str, Option<Result<Measured>>)>)>;

fn print_table(rows: &Rows<'_>) {
    println!();
    println!(
        "{:<11} {:<10} {:>10} {:>10} {:>7} {:>13} {:>12} {:>12} {:>11} {:>12} {:>12}",
        "mode",
        "target",
        "req/s",
        "p99",
        "errors",
        "req/s÷HAProxy",
        "req/s÷direct",
        "p99÷HAProxy",
        "p99÷direct",
        "proxy CPU/req",
        "CPU÷HAProxy"
    );
    for (mode, results) in rows {
        let ok = |name: &str| {
            results.iter().find_map(|(n, r)| match r {
                Some(Ok(r)) if *n == name => Some(r.clone()),
                _ => None,
            })
        };
        let direct = ok("direct");
        let haproxy = ok("haproxy");
        for (name, r) in results {
            match r {
                None => println!(
                    "{mode:<11} {name:<10} missing: {name} is not installed (apt-get install -y {name})"
                ),
                Some(Err(e)) => println!("{mode:<11} {name:<10} FAILED: {e:#}"),
                Some(Ok(m)) => {
                    let ratio = |base: &Option<Measured>, f: fn(&Measured) -> Option<f64>| {
                        base.as_ref()
                            .and_then(|b| Some(f(m)? / f(b)?))
                            .map_or("n/a".to_string(), |x| format!("{x:.2}x"))
                    };
                    println!(
                        "{:<11} {:<10} {:>10.0} {:>10} {:>7} {:>13} {:>12} {:>12} {:>11} {:>12} {:>12}",
                        mode,
                        name,
                        m.wrk.requests_per_sec,
                        format!("{:.2}ms", m.wrk.p99.as_secs_f64() * 1e3),
                        m.wrk.errors,
                        ratio(&haproxy, |w| Some(w.wrk.requests_per_sec)),
                        ratio(&direct, |w| Some(w.wrk.requests_per_sec)),
                        ratio(&haproxy, |w| Some(w.wrk.p99.as_secs_f64())),
                        ratio(&direct, |w| Some(w.wrk.p99.as_secs_f64())),
                        fmt_cpu(m.cpu_per_req),
                        ratio(&haproxy, |w| w.cpu_per_req.map(|c| c.as_secs_f64())),
                    );
                }
            }
        }
    }
    println!(
        "ratios: req/s and p99 of the target divided by HAProxy's / direct's (req/s: higher is \
         better; p99 and CPU: lower is better); proxy CPU/req = CPU time of the proxy process \
         (HAProxy) or of the Berth proxy's runtime threads during the run, per request"
    );
    println!();
}
