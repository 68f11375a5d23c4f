//! dns-bench: the agent's cluster DNS server against unbound, serving the same names, in one
//! run on loopback, measured by dnsperf with the same query file.
//!
//! The fixture is N ClusterIP Services and M headless Services with E ready endpoints each
//! (names spread over 10 namespaces). Berth's server runs in-process on its own tokio runtime
//! (`--workers`, default 2); unbound (`num-threads` = `--unbound-threads`, default 2) gets a
//! generated config with `local-zone: "cluster.local." static` and a `local-data` line per
//! record (no remote control, no chroot, iterator only, never querying upstream). The query
//! file mixes A queries for ClusterIP names (85%), headless names (10%) and headless endpoint
//! names (5%); every name exists on both servers (checked before measuring).
//!
//! Two runs per target and round:
//! - throughput: dnsperf with no rate limit (`-c` clients, `-q` outstanding, `-l` seconds):
//!   queries per second and dnsperf's average latency (under saturation, so mostly queueing);
//! - latency: dnsperf at a fixed rate (`--latency-qps`, both servers keep up) with `-v`, whose
//!   per-query latencies give p50/p99 (dnsperf 2.x prints no percentiles itself).
//!
//! Also the server's CPU time per query during the throughput run (scheduler accounting),
//! steadier than qps on a shared machine, and how long `set_state` takes for the fixture.
//!
//! Tools come from Debian: `apt-get install -y dnsperf unbound` (bench/setup.sh). Without
//! dnsperf nothing can be measured (exit code 2); without unbound its rows are skipped.
//! `--serve` only starts Berth's server with the fixture and prints its address (to try it
//! with `dig`).

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use berth_agent::dns::{self, DnsConfig, DnsHandle};
use berth_bench::procs::{self, ChildGuard};
use berth_bench::runtime_thread::{Flavor, RuntimeThread};
use berth_proto::types::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectMeta, Service, ServicePort,
    ServiceSpec,
};
use clap::Parser;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const DOMAIN: &str = "cluster.local";
const NAMESPACES: usize = 10;

#[derive(Parser, Debug)]
#[command(
    name = "dns-bench",
    about = "Berth cluster DNS vs unbound (dnsperf, loopback)"
)]
struct Args {
    /// ClusterIP Services in the fixture.
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// Headless Services in the fixture.
    #[arg(long, default_value_t = 50)]
    headless: usize,
    /// Ready endpoints per headless Service.
    #[arg(long, default_value_t = 3)]
    endpoints: usize,
    /// Seconds per throughput run (dnsperf -l).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// dnsperf clients (-c: UDP sockets, so the server's SO_REUSEPORT sockets all get work).
    #[arg(long, default_value_t = 10)]
    clients: u32,
    /// dnsperf threads (-T).
    #[arg(long, default_value_t = 1)]
    dnsperf_threads: u32,
    /// dnsperf outstanding queries (-q).
    #[arg(long, default_value_t = 100)]
    outstanding: u32,
    /// Queries per second of the latency run (dnsperf -Q; 0 skips it).
    #[arg(long, default_value_t = 10000)]
    latency_qps: u32,
    /// Seconds per latency run.
    #[arg(long, default_value_t = 5)]
    latency_duration: u64,
    /// Berth's DnsConfig::threads: threads of its own, each a current-thread runtime with its
    /// own UDP socket (0: on the harness's runtime of --workers).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Worker threads of the runtime Berth's server is started on (used for serving only
    /// with --threads 0; 0: a current-thread runtime).
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// unbound's num-threads.
    #[arg(long, default_value_t = 2)]
    unbound_threads: usize,
    /// Measured rounds per target; the table shows the median.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Seconds of unmeasured warm-up per target (0: none).
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    /// Run only these targets (berth, unbound).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Print every run.
    #[arg(long)]
    verbose: bool,
    /// Only start Berth's server with the fixture on this address (e.g. 127.0.0.1:5353) and
    /// wait (Ctrl-C to stop).
    #[arg(long)]
    serve: Option<SocketAddr>,
}

// ---------------------------------------------------------------------------------------------
// The fixture: the same names for both servers

/// One name and its addresses.
#[derive(Debug, Clone)]
struct Entry {
    name: String,
    ips: Vec<Ipv4Addr>,
}

struct Fixture {
    services: Vec<Service>,
    endpoints: Vec<Endpoints>,
    cluster_ip: Vec<Entry>,
    headless: Vec<Entry>,
    endpoint_names: Vec<Entry>,
}

fn meta(ns: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: name.into(),
        namespace: ns.into(),
        ..Default::default()
    }
}

fn fixture(services: usize, headless: usize, per: usize) -> Fixture {
    let mut f = Fixture {
        services: Vec::new(),
        endpoints: Vec::new(),
        cluster_ip: Vec::new(),
        headless: Vec::new(),
        endpoint_names: Vec::new(),
    };
    let port = ServicePort {
        name: "http".into(),
        port: 80,
        ..Default::default()
    };
    for i in 0..services {
        let (ns, name) = (format!("ns-{}", i % NAMESPACES), format!("svc-{i}"));
        let ip = Ipv4Addr::new(10, 43, 1 + (i / 250) as u8, 1 + (i % 250) as u8);
        f.services.push(Service {
            metadata: meta(&ns, &name),
            spec: ServiceSpec {
                ports: vec![port.clone()],
                cluster_ip: Some(ip.to_string()),
                cluster_ips: vec![ip.to_string()],
                ..Default::default()
            },
            ..Default::default()
        });
        f.cluster_ip.push(Entry {
            name: format!("{name}.{ns}.svc.{DOMAIN}"),
            ips: vec![ip],
        });
    }
    for j in 0..headless {
        let (ns, name) = (format!("ns-{}", j % NAMESPACES), format!("hl-{j}"));
        let ips: Vec<Ipv4Addr> = (0..per)
            .map(|k| Ipv4Addr::new(10, 100 + (j / 250) as u8, (j % 250) as u8, 1 + k as u8))
            .collect();
        f.services.push(Service {
            metadata: meta(&ns, &name),
            spec: ServiceSpec {
                ports: vec![port.clone()],
                cluster_ip: Some("None".into()),
                cluster_ips: vec!["None".into()],
                ..Default::default()
            },
            ..Default::default()
        });
        f.endpoints.push(Endpoints {
            metadata: meta(&ns, &name),
            subsets: vec![EndpointSubset {
                addresses: ips
                    .iter()
                    .map(|ip| EndpointAddress {
                        ip: ip.to_string(),
                        ..Default::default()
                    })
                    .collect(),
                ports: vec![EndpointPort {
                    name: "http".into(),
                    port: 8080,
                    protocol: Some("TCP".into()),
                }],
                ..Default::default()
            }],
            ..Default::default()
        });
        let base = format!("{name}.{ns}.svc.{DOMAIN}");
        for ip in &ips {
            f.endpoint_names.push(Entry {
                name: format!("{}.{base}", ip.to_string().replace('.', "-")),
                ips: vec![*ip],
            });
        }
        f.headless.push(Entry { name: base, ips });
    }
    f
}

/// A small deterministic PRNG (xorshift64*) so both servers get the same query file.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> Option<&'a T> {
        if v.is_empty() {
            return None;
        }
        v.get((self.next() % v.len() as u64) as usize)
    }
}

/// dnsperf's input: `name type` lines, 85% ClusterIP, 10% headless, 5% endpoint names.
fn query_file(f: &Fixture, lines: usize) -> String {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut out = String::new();
    for _ in 0..lines {
        let roll = rng.next() % 100;
        let set = match roll {
            0..=84 => &f.cluster_ip,
            85..=94 => &f.headless,
            _ => &f.endpoint_names,
        };
        let e = rng
            .pick(set)
            .or_else(|| f.cluster_ip.first())
            .or_else(|| f.headless.first());
        if let Some(e) = e {
            let _ = writeln!(out, "{} A", e.name);
        }
    }
    out
}

fn unbound_config(dir: &Path, listen: SocketAddr, threads: usize, f: &Fixture) -> String {
    let d = dir.display();
    let mut c = format!(
        "server:
  interface: {ip}
  port: {port}
  num-threads: {threads}
  so-reuseport: yes
  do-daemonize: no
  chroot: \"\"
  username: \"\"
  directory: \"{d}\"
  pidfile: \"{d}/unbound.pid\"
  use-syslog: no
  logfile: \"\"
  verbosity: 0
  do-ip6: no
  do-not-query-localhost: yes
  access-control: 127.0.0.0/8 allow
  module-config: \"iterator\"
  local-zone: \"{DOMAIN}.\" static
  local-data: \"{DOMAIN}. 5 IN SOA ns.dns.{DOMAIN}. hostmaster.{DOMAIN}. 1 7200 1800 86400 5\"
",
        ip = listen.ip(),
        port = listen.port(),
    );
    for e in f
        .cluster_ip
        .iter()
        .chain(&f.headless)
        .chain(&f.endpoint_names)
    {
        for ip in &e.ips {
            let _ = writeln!(c, "  local-data: \"{}. 5 IN A {ip}\"", e.name);
        }
    }
    c.push_str("remote-control:\n  control-enable: no\n");
    c
}

// ---------------------------------------------------------------------------------------------
// Servers

/// Berth's DNS server on its own runtime thread, with the fixture loaded.
fn start_berth(
    listen: SocketAddr,
    workers: usize,
    threads: usize,
    f: &Fixture,
) -> Result<(SocketAddr, Duration, RuntimeThread)> {
    let flavor = match workers {
        0 => Flavor::CurrentThread,
        n => Flavor::MultiThread(n),
    };
    let (tx, rx) = std::sync::mpsc::channel::<Result<(SocketAddr, DnsHandle), String>>();
    let rt = RuntimeThread::start("berth-dns", flavor, move |stop| async move {
        let cfg = DnsConfig {
            domain: DOMAIN.into(),
            upstreams: Vec::new(),
            ttl: 5,
            threads,
        };
        match dns::serve(vec![listen], cfg, stop.clone()).await {
            Ok((h, bound)) => {
                let _ = tx.send(Ok((bound[0], h)));
                stop.cancelled().await;
            }
            Err(e) => {
                let _ = tx.send(Err(format!("{e:#}")));
            }
        }
    })?;
    let (addr, handle) = rx
        .recv_timeout(Duration::from_secs(10))
        .context("the Berth DNS runtime did not start")?
        .map_err(|e| anyhow::anyhow!("starting Berth's DNS server: {e}"))?;
    let t = Instant::now();
    handle.set_state(&f.services, &f.endpoints);
    let set_state = t.elapsed();
    Ok((addr, set_state, rt))
}

fn start_unbound(
    unbound: &Path,
    dir: &Path,
    listen: SocketAddr,
    threads: usize,
    f: &Fixture,
) -> Result<ChildGuard> {
    let path = dir.join("unbound.conf");
    std::fs::write(&path, unbound_config(dir, listen, threads, f))?;
    let path = path.display().to_string();
    let mut g = procs::spawn_logged(
        "unbound",
        unbound,
        &["-d", "-c", &path],
        dir.join("unbound.log"),
    )?;
    // unbound listens on TCP too; a connect means it is up.
    g.wait_ready(listen, Duration::from_secs(20))?;
    Ok(g)
}

// ---------------------------------------------------------------------------------------------
// A check that both servers say the same

/// The A addresses `server` gives for `name` (a minimal UDP client; for the check only).
fn query_a(server: SocketAddr, name: &str) -> Result<Vec<Ipv4Addr>> {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
    sock.set_read_timeout(Some(Duration::from_secs(2)))?;
    let id: u16 = 0x4242;
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(u8::try_from(label.len())?);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    sock.send_to(&q, server)?;
    let mut buf = [0u8; 4096];
    let (n, _) = sock
        .recv_from(&mut buf)
        .with_context(|| format!("no reply from {server} for {name}"))?;
    let r = &buf[..n];
    if r.len() < 12 || r[..2] != id.to_be_bytes() {
        bail!("bad reply from {server} for {name}");
    }
    let rcode = r[3] & 0x0f;
    if rcode != 0 {
        bail!("{server} answered rcode {rcode} for {name}");
    }
    let answers = u16::from_be_bytes([r[6], r[7]]);
    // Skip the question (uncompressed, as we sent it), then read the answers.
    let mut i = q.len();
    let mut ips = Vec::new();
    for _ in 0..answers {
        // Owner name: a pointer or labels.
        loop {
            let b = *r.get(i).context("short reply")?;
            if b & 0xc0 == 0xc0 {
                i += 2;
                break;
            }
            i += 1 + usize::from(b);
            if b == 0 {
                break;
            }
        }
        let ty = u16::from_be_bytes([*r.get(i).context("short")?, *r.get(i + 1).context("short")?]);
        let len = usize::from(u16::from_be_bytes([
            *r.get(i + 8).context("short")?,
            *r.get(i + 9).context("short")?,
        ]));
        i += 10;
        if ty == 1 && len == 4 {
            let d = r.get(i..i + 4).context("short")?;
            ips.push(Ipv4Addr::new(d[0], d[1], d[2], d[3]));
        }
        i += len;
    }
    ips.sort();
    Ok(ips)
}

fn check_same_answers(targets: &[(&str, SocketAddr)], f: &Fixture) -> Result<usize> {
    let mut sample: Vec<&Entry> = Vec::new();
    sample.extend(
        f.cluster_ip
            .iter()
            .step_by((f.cluster_ip.len() / 20).max(1)),
    );
    sample.extend(f.headless.iter().step_by((f.headless.len() / 10).max(1)));
    sample.extend(
        f.endpoint_names
            .iter()
            .step_by((f.endpoint_names.len() / 10).max(1)),
    );
    for e in &sample {
        let mut want = e.ips.clone();
        want.sort();
        for (name, addr) in targets {
            let got = query_a(*addr, &e.name).with_context(|| format!("checking {name}"))?;
            if got != want {
                bail!("{name} answers {} with {got:?}, expected {want:?}", e.name);
            }
        }
    }
    Ok(sample.len())
}

// ---------------------------------------------------------------------------------------------
// dnsperf

#[derive(Debug, Clone, Default)]
struct Throughput {
    qps: f64,
    avg: Duration,
    lost: u64,
    completed: u64,
    rcodes: String,
    cpu_per_query: Option<Duration>,
}

#[derive(Debug, Clone, Default)]
struct Latency {
    p50: Duration,
    p99: Duration,
    max: Duration,
    samples: usize,
    lost: u64,
}

fn field<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .map(str::trim)
}

fn first_number(s: &str) -> Option<f64> {
    s.split_whitespace().next()?.parse().ok()
}

/// The figures of dnsperf's "Statistics" block.
fn parse_dnsperf(out: &str) -> Result<Throughput> {
    let qps = field(out, "Queries per second:")
        .and_then(first_number)
        .with_context(|| format!("no 'Queries per second' in dnsperf's output:\n{out}"))?;
    let avg = field(out, "Average Latency (s):")
        .and_then(first_number)
        .context("no 'Average Latency' in dnsperf's output")?;
    Ok(Throughput {
        qps,
        avg: Duration::from_secs_f64(avg),
        lost: field(out, "Queries lost:")
            .and_then(first_number)
            .unwrap_or(0.0) as u64,
        completed: field(out, "Queries completed:")
            .and_then(first_number)
            .unwrap_or(0.0) as u64,
        rcodes: field(out, "Response codes:")
            .unwrap_or_default()
            .to_string(),
        cpu_per_query: None,
    })
}

struct Dnsperf<'a> {
    path: &'a Path,
    queries: &'a Path,
    args: &'a Args,
}

impl Dnsperf<'_> {
    fn base(&self, server: SocketAddr, seconds: u64) -> Command {
        let mut c = Command::new(self.path);
        c.args([
            "-s",
            &server.ip().to_string(),
            "-p",
            &server.port().to_string(),
        ])
        .arg("-d")
        .arg(self.queries)
        .args(["-l", &seconds.to_string(), "-t", "2"])
        .stdin(Stdio::null());
        c
    }

    fn throughput(&self, server: SocketAddr, seconds: u64) -> Result<Throughput> {
        let out = self
            .base(server, seconds)
            .args(["-c", &self.args.clients.to_string()])
            .args(["-T", &self.args.dnsperf_threads.to_string()])
            .args(["-q", &self.args.outstanding.to_string()])
            .output()
            .context("running dnsperf")?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if !out.status.success() {
            bail!(
                "dnsperf failed ({}): {text}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        parse_dnsperf(&text)
    }

    /// Per-query latencies at a fixed rate from `-v` lines (`> NOERROR name A 0.000170`).
    fn latency(&self, server: SocketAddr) -> Result<Latency> {
        let mut child = self
            .base(server, self.args.latency_duration)
            .args(["-c", &self.args.clients.to_string()])
            .args(["-Q", &self.args.latency_qps.to_string()])
            .arg("-v")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("running dnsperf")?;
        let stdout = child.stdout.take().context("dnsperf's stdout")?;
        let mut lat: Vec<f64> = Vec::new();
        let mut tail = String::new();
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            if let Some(rest) = line.strip_prefix("> ") {
                if let Some(v) = rest.split_whitespace().last().and_then(|s| s.parse().ok()) {
                    lat.push(v);
                }
            } else {
                tail.push_str(&line);
                tail.push('\n');
            }
        }
        let status = child.wait()?;
        if !status.success() || lat.is_empty() {
            bail!("dnsperf -v failed ({status}): {tail}");
        }
        lat.sort_by(f64::total_cmp);
        let at = |q: f64| {
            let i = ((lat.len() as f64 * q).ceil() as usize).clamp(1, lat.len()) - 1;
            Duration::from_secs_f64(lat[i])
        };
        Ok(Latency {
            p50: at(0.50),
            p99: at(0.99),
            max: at(1.0),
            samples: lat.len(),
            lost: field(&tail, "Queries lost:")
                .and_then(first_number)
                .unwrap_or(0.0) as u64,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The run

/// Every measured run of one target.
#[derive(Debug, Default)]
struct Runs {
    throughput: Vec<Throughput>,
    latency: Vec<Latency>,
    errors: Vec<String>,
}

#[derive(Debug, Clone, Default)]
struct Row {
    throughput: Option<Throughput>,
    latency: Option<Latency>,
}

fn median_by<T: Clone>(v: &[T], key: impl Fn(&T) -> f64) -> Option<T> {
    let mut s: Vec<&T> = v.iter().collect();
    s.sort_by(|a, b| key(a).total_cmp(&key(b)));
    s.get(s.len() / 2).map(|t| (*t).clone())
}

fn fmt_ms(d: Duration) -> String {
    format!("{:.3}ms", d.as_secs_f64() * 1e3)
}

fn fmt_us(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.1}us", d.as_secs_f64() * 1e6))
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dns-bench: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn serve_only(args: &Args, listen: SocketAddr, f: &Fixture) -> Result<ExitCode> {
    let (addr, took, _rt) = start_berth(listen, args.workers, args.threads, f)?;
    println!(
        "Berth DNS on {addr} (UDP+TCP): {} ClusterIP + {} headless Services loaded in {}; \
         try: dig @{} -p {} svc-0.ns-0.svc.{DOMAIN}",
        args.services,
        args.headless,
        fmt_ms(took),
        addr.ip(),
        addr.port()
    );
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Ctrl-C or stdin closing ends it.
        let _ = std::io::stdin().read_line(&mut String::new());
        let _ = tx.send(());
    });
    let _ = rx.recv();
    Ok(ExitCode::SUCCESS)
}

fn run(args: &Args) -> Result<ExitCode> {
    let f = fixture(args.services, args.headless, args.endpoints);
    if let Some(listen) = args.serve {
        return serve_only(args, listen, &f);
    }
    let dnsperf = procs::find_tool("dnsperf");
    let unbound = procs::find_tool("unbound");
    for (name, path, consequence) in [
        ("dnsperf", &dnsperf, "nothing can be measured"),
        ("unbound", &unbound, "the unbound rows are skipped"),
    ] {
        match path {
            Some(p) => println!("tool {name:8} {}", p.display()),
            None => println!(
                "tool {name:8} MISSING: {consequence} (install: apt-get update && apt-get install -y {name}, or bench/setup.sh)"
            ),
        }
    }
    let Some(dnsperf_path) = dnsperf else {
        eprintln!(
            "dns-bench: dnsperf is not installed; install it with `apt-get install -y dnsperf`"
        );
        return Ok(ExitCode::from(2));
    };
    let want = |name: &str| args.only.is_empty() || args.only.iter().any(|o| o == name);

    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let queries = dir.path().join("queries.txt");
    std::fs::write(&queries, query_file(&f, 20_000))?;

    let (berth_addr, set_state, _berth_rt) = start_berth(
        SocketAddr::new(LOCALHOST, 0),
        args.workers,
        args.threads,
        &f,
    )?;
    let mut _unbound_guard = None;
    let unbound_addr = match (&unbound, want("unbound")) {
        (Some(u), true) => {
            let addr = SocketAddr::new(LOCALHOST, procs::free_port()?);
            _unbound_guard = Some(start_unbound(
                u,
                dir.path(),
                addr,
                args.unbound_threads,
                &f,
            )?);
            Some(addr)
        }
        _ => None,
    };
    let mut targets: Vec<(&str, SocketAddr)> = Vec::new();
    if want("berth") {
        targets.push(("berth", berth_addr));
    }
    if let Some(a) = unbound_addr {
        targets.push(("unbound", a));
    }
    let checked = check_same_answers(&targets, &f)?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let berth_rt = match (args.threads, args.workers) {
        (0, 0) => "on a current-thread runtime".to_string(),
        (0, n) => format!("on a {n}-worker runtime"),
        (t, _) => format!("{t} threads of its own (current-thread runtimes)"),
    };
    println!(
        "fixture: {} ClusterIP + {} headless Services x {} endpoints ({} names); both servers agree on {checked} sampled names",
        args.services,
        args.headless,
        args.endpoints,
        f.cluster_ip.len() + f.headless.len() + f.endpoint_names.len()
    );
    println!(
        "Berth: in-process, {berth_rt}, set_state of the fixture {}; unbound: num-threads {}; dnsperf -c {} -T {} -q {} -l {}; latency at -Q {} for {} s; {cpus} CPUs",
        fmt_ms(set_state),
        args.unbound_threads,
        args.clients,
        args.dnsperf_threads,
        args.outstanding,
        args.duration,
        args.latency_qps,
        args.latency_duration
    );

    let self_pid = std::process::id();
    let unbound_pid = _unbound_guard.as_ref().map(ChildGuard::pid);
    let cpu_of = move |name: &str| -> Option<Duration> {
        match name {
            "unbound" => procs::cpu_time(unbound_pid?, None),
            "berth" => procs::cpu_time(self_pid, Some("berth-dns")),
            _ => None,
        }
    };
    let perf = Dnsperf {
        path: &dnsperf_path,
        queries: &queries,
        args,
    };
    let mut rows: Vec<Runs> = targets.iter().map(|_| Runs::default()).collect();
    for round in 1..=args.rounds {
        for (i, (name, addr)) in targets.iter().enumerate() {
            if args.warmup > 0 {
                let _ = perf.throughput(*addr, args.warmup);
            }
            let cpu0 = cpu_of(name);
            match perf.throughput(*addr, args.duration) {
                Ok(mut t) => {
                    let cpu = cpu0.zip(cpu_of(name)).map(|(a, b)| b.saturating_sub(a));
                    t.cpu_per_query = cpu.and_then(|c| {
                        (t.completed > 0)
                            .then(|| c / u32::try_from(t.completed).unwrap_or(u32::MAX))
                    });
                    if args.verbose {
                        println!(
                            "  round {round} {name:8} {:>9.0} qps avg {} lost {} cpu/q {} [{}]",
                            t.qps,
                            fmt_ms(t.avg),
                            t.lost,
                            fmt_us(t.cpu_per_query),
                            t.rcodes
                        );
                    }
                    rows[i].throughput.push(t);
                }
                Err(e) => rows[i].errors.push(format!("{e:#}")),
            }
            if args.latency_qps > 0 {
                match perf.latency(*addr) {
                    Ok(l) => {
                        if args.verbose {
                            println!(
                                "  round {round} {name:8} at {} qps: p50 {} p99 {} max {} ({} samples, {} lost)",
                                args.latency_qps,
                                fmt_ms(l.p50),
                                fmt_ms(l.p99),
                                fmt_ms(l.max),
                                l.samples,
                                l.lost
                            );
                        }
                        rows[i].latency.push(l);
                    }
                    Err(e) => rows[i].errors.push(format!("{e:#}")),
                }
            }
        }
    }

    let table: Vec<(&str, Row, Vec<String>)> = rows
        .into_iter()
        .zip(&targets)
        .map(|(runs, &(name, _))| {
            let Runs {
                throughput: t,
                latency: l,
                errors: errs,
            } = runs;
            let row = Row {
                throughput: median_by(&t, |t| t.qps).map(|mut m| {
                    // The median run's qps with the median CPU/query over all runs.
                    let mut cpu: Vec<Duration> = t.iter().filter_map(|t| t.cpu_per_query).collect();
                    cpu.sort();
                    m.cpu_per_query = cpu.get(cpu.len() / 2).copied();
                    m.lost = t.iter().map(|t| t.lost).sum();
                    m
                }),
                latency: median_by(&l, |l| l.p99.as_secs_f64()),
            };
            (name, row, errs)
        })
        .collect();
    print_table(&table, args);
    if unbound.is_none() {
        println!("unbound is not installed: no ratio (apt-get install -y unbound)");
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(rows: &[(&str, Row, Vec<String>)], args: &Args) {
    let base = rows
        .iter()
        .find(|(n, _, _)| *n == "unbound")
        .map(|(_, r, _)| r.clone());
    println!();
    println!(
        "{:<8} {:>10} {:>10} {:>6} {:>10} {:>10} {:>10} {:>11} {:>11} {:>11}",
        "server",
        "qps",
        "avg(sat)",
        "lost",
        "p50",
        "p99",
        "qps÷unb",
        "p99÷unb",
        "CPU/query",
        "CPU÷unb"
    );
    for (name, r, errs) in rows {
        for e in errs {
            println!("{name:<8} FAILED: {e}");
        }
        let ratio = |f: &dyn Fn(&Row) -> Option<f64>| -> String {
            base.as_ref()
                .and_then(|b| Some(f(r)? / f(b)?))
                .map_or("n/a".into(), |x| format!("{x:.2}x"))
        };
        let t = r.throughput.clone().unwrap_or_default();
        println!(
            "{:<8} {:>10.0} {:>10} {:>6} {:>10} {:>10} {:>10} {:>11} {:>11} {:>11}",
            name,
            t.qps,
            fmt_ms(t.avg),
            t.lost,
            r.latency.as_ref().map_or("-".into(), |l| fmt_ms(l.p50)),
            r.latency.as_ref().map_or("-".into(), |l| fmt_ms(l.p99)),
            ratio(&|r| r.throughput.as_ref().map(|t| t.qps)),
            ratio(&|r| r.latency.as_ref().map(|l| l.p99.as_secs_f64())),
            fmt_us(t.cpu_per_query),
            ratio(&|r| r
                .throughput
                .as_ref()?
                .cpu_per_query
                .map(|c| c.as_secs_f64())),
        );
    }
    println!(
        "(qps, avg: dnsperf unlimited, -c {} -q {}, {} s, median of {} round(s); p50/p99: dnsperf -v at {} qps)",
        args.clients, args.outstanding, args.duration, args.rounds, args.latency_qps
    );
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn dnsperf_statistics_are_parsed() {
        let out = "Statistics:\n\n  Queries sent:         5\n  Queries completed:    5 (100.00%)\n  Queries lost:         0 (0.00%)\n\n  Response codes:       NOERROR 3 (60.00%), NXDOMAIN 2 (40.00%)\n  Run time (s):         1.000233\n  Queries per second:   4.998835\n\n  Average Latency (s):  0.000235 (min 0.000155, max 0.000519)\n";
        let t = parse_dnsperf(out).unwrap();
        assert!((t.qps - 4.998835).abs() < 1e-9);
        assert_eq!(t.avg, Duration::from_secs_f64(0.000235));
        assert_eq!(t.completed, 5);
        assert_eq!(t.lost, 0);
    }

    #[test]
    fn the_query_file_names_only_fixture_names() {
        let f = fixture(20, 4, 3);
        let q = query_file(&f, 500);
        let names: std::collections::HashSet<&str> = f
            .cluster_ip
            .iter()
            .chain(&f.headless)
            .chain(&f.endpoint_names)
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(q.lines().count(), 500);
        assert!(q.lines().all(|l| names.contains(l.trim_end_matches(" A"))));
    }
}
