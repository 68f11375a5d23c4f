//! api-bench: API write throughput and latency of a 3-member Berth cluster vs a 3-member etcd,
//! in the same run on loopback, with the same value size and client concurrency; plus watch
//! fan-out (events/s delivered to many watchers).
//!
//! Both systems run as real processes with fsync on (Berth: the built `berth server` binary;
//! etcd: Debian's etcd-server). Each write creates a new key holding a `--value-size` payload:
//! an etcd `put` of a fresh key vs a Berth `Create` of an Event whose message is the payload.
//!
//!     cargo build --release -p berth -p berth-bench
//!     target/release/api-bench --clients 64 --seconds 10
//!
//! Berth runs as it ships, with mutual TLS on every connection: the clients present the admin
//! credential `--init` wrote (s1/admin.yaml), the joining members get the join token in
//! BERTH_TOKEN. etcd runs plain HTTP (its default; no TLS).
//!
//! Phases per system: saturation (all clients writing flat out), then "half load" (an open
//! loop at 50% of that system's measured saturation rate) for p50/p99 at moderate load.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use berth_bench::cluster::Credentials;
use berth_bench::procs::{find_tool, free_port, spawn_logged, spawn_logged_env, ChildGuard};
use berth_client::{Change, Client};
use berth_proto::types::{Event, ObjectMeta, ObjectReference};
use berth_proto::Kind;
use clap::Parser;
use futures::StreamExt;

#[derive(Parser, Debug)]
#[command(about = "Berth vs etcd: API write throughput/latency and watch fan-out")]
struct Args {
    /// The berth binary to run the servers with.
    #[arg(long, default_value = "target/release/berth")]
    berth_bin: PathBuf,
    /// Concurrent writers (same for both systems).
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Seconds per phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Payload bytes per write.
    #[arg(long, default_value_t = 1024)]
    value_size: usize,
    /// Watchers for the fan-out phase.
    #[arg(long, default_value_t = 100)]
    watchers: usize,
    /// Writes during the fan-out phase.
    #[arg(long, default_value_t = 2000)]
    fanout_writes: usize,
    /// Skip etcd (e.g. when etcd-server is not installed).
    #[arg(long)]
    no_etcd: bool,
}

#[derive(Default, Clone)]
struct Stats {
    ok: u64,
    errors: u64,
    secs: f64,
    lat_us: Vec<u64>,
}

impl Stats {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.secs
    }
    fn pct(&self, p: f64) -> f64 {
        if self.lat_us.is_empty() {
            return f64::NAN;
        }
        let mut v = self.lat_us.clone();
        v.sort_unstable();
        let i = ((v.len() as f64 - 1.0) * p).round() as usize;
        v[i] as f64 / 1000.0
    }
}

/// Something that writes one fresh key with a payload.
trait Writer: Clone + Send + Sync + 'static {
    fn write(&self, key: u64) -> impl std::future::Future<Output = Result<()>> + Send;
}

#[derive(Clone)]
struct BerthWriter {
    clients: Arc<Vec<Client>>,
    payload: Arc<String>,
    prefix: Arc<String>,
    namespace: Arc<String>,
}

impl Writer for BerthWriter {
    async fn write(&self, key: u64) -> Result<()> {
        let c = &self.clients[(key as usize) % self.clients.len()];
        let ev = Event {
            metadata: ObjectMeta {
                name: format!("{}-{key}", self.prefix),
                namespace: self.namespace.to_string(),
                ..Default::default()
            },
            involved_object: ObjectReference {
                kind: "Pod".into(),
                namespace: self.namespace.to_string(),
                name: "bench".into(),
                uid: String::new(),
            },
            reason: "Bench".into(),
            message: (*self.payload).clone(),
            type_: "Normal".into(),
            ..Default::default()
        };
        c.create(&ev).await?;
        Ok(())
    }
}

/// etcd through its HTTP/JSON gateway (`POST /v3/kv/put`): a pool of keep-alive HTTP/1.1
/// connections, one per in-flight write. (etcd's Rust gRPC client needs protoc at build time;
/// the gateway costs etcd some CPU for JSON<->gRPC, which the table notes.)
#[derive(Clone)]
struct EtcdWriter {
    endpoints: Arc<Vec<String>>,
    pool: Arc<std::sync::Mutex<Vec<tokio::io::BufStream<tokio::net::TcpStream>>>>,
    payload_b64: Arc<String>,
    prefix: Arc<String>,
}

impl EtcdWriter {
    fn new(endpoints: Vec<String>, payload: &str, prefix: &str) -> EtcdWriter {
        use base64::Engine;
        EtcdWriter {
            endpoints: Arc::new(endpoints),
            pool: Arc::default(),
            payload_b64: Arc::new(base64::engine::general_purpose::STANDARD.encode(payload)),
            prefix: Arc::new(prefix.to_string()),
        }
    }
}

impl Writer for EtcdWriter {
    async fn write(&self, key: u64) -> Result<()> {
        use base64::Engine;
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
        let pooled = self.pool.lock().map(|mut p| p.pop()).unwrap_or(None);
        let mut conn = match pooled {
            Some(c) => c,
            None => {
                let ep = &self.endpoints[(key as usize) % self.endpoints.len()];
                let s = tokio::net::TcpStream::connect(ep).await?;
                s.set_nodelay(true)?;
                tokio::io::BufStream::new(s)
            }
        };
        let k = base64::engine::general_purpose::STANDARD
            .encode(format!("/bench/{}-{key}", self.prefix));
        let body = format!(r#"{{"key":"{k}","value":"{}"}}"#, self.payload_b64);
        let req = format!(
            "POST /v3/kv/put HTTP/1.1\r\nHost: etcd\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        conn.write_all(req.as_bytes()).await?;
        conn.flush().await?;
        let mut status = String::new();
        conn.read_line(&mut status).await?;
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            if conn.read_line(&mut h).await? == 0 {
                bail!("etcd closed the connection");
            }
            let h = h.trim_end().to_ascii_lowercase();
            if h.is_empty() {
                break;
            }
            if let Some(v) = h.strip_prefix("content-length:") {
                len = v.trim().parse()?;
            }
        }
        let mut resp = vec![0u8; len];
        conn.read_exact(&mut resp).await?;
        if !status.contains(" 200 ") {
            bail!("etcd answered {status}");
        }
        if let Ok(mut p) = self.pool.lock() {
            p.push(conn);
        }
        Ok(())
    }
}

/// Closed loop: `clients` writers flat out for `dur`.
async fn saturate<W: Writer>(w: W, clients: usize, dur: Duration) -> Stats {
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + dur;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (w, next) = (w.clone(), next.clone());
        tasks.spawn(async move {
            let mut s = Stats::default();
            while Instant::now() < end {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                match w.write(k).await {
                    Ok(()) => {
                        s.ok += 1;
                        s.lat_us.push(t.elapsed().as_micros() as u64);
                    }
                    Err(_) => s.errors += 1,
                }
            }
            s
        });
    }
    let mut all = Stats::default();
    while let Some(r) = tasks.join_next().await {
        if let Ok(s) = r {
            all.ok += s.ok;
            all.errors += s.errors;
            all.lat_us.extend(s.lat_us);
        }
    }
    all.secs = start.elapsed().as_secs_f64();
    all
}

/// Open loop: writes issued at `rate`/s regardless of completions (latency includes queueing).
async fn open_loop<W: Writer>(w: W, key_base: u64, rate: f64, dur: Duration) -> Stats {
    let start = Instant::now();
    let total = (rate * dur.as_secs_f64()) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let sem = Arc::new(tokio::sync::Semaphore::new(4096));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        let due = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        let Ok(permit) = sem.clone().acquire_owned().await else {
            break;
        };
        let w = w.clone();
        tasks.spawn(async move {
            let r = w.write(key_base + i).await;
            drop(permit);
            (r.is_ok(), due.elapsed().as_micros() as u64)
        });
    }
    let mut s = Stats::default();
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok((true, us)) => {
                s.ok += 1;
                s.lat_us.push(us);
            }
            _ => s.errors += 1,
        }
    }
    s.secs = start.elapsed().as_secs_f64();
    s
}

fn start_etcd(dir: &Path) -> Result<(Vec<ChildGuard>, Vec<String>)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let etcd = find_tool("etcd").context(
        "etcd is not installed: `apt-get install -y etcd-server etcd-client`, or pass --no-etcd",
    )?;
    let ports: Vec<(u16, u16)> = (0..3)
        .map(|_| Ok((free_port()?, free_port()?)))
        .collect::<Result<_>>()?;
    let cluster = ports
        .iter()
        .enumerate()
        .map(|(i, (_, p))| format!("e{}=http://127.0.0.1:{p}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut guards = Vec::new();
    let mut endpoints = Vec::new();
    for (i, (c, p)) in ports.iter().enumerate() {
        let name = format!("e{}", i + 1);
        let data = dir.join(&name);
        let client_url = format!("http://127.0.0.1:{c}");
        let peer_url = format!("http://127.0.0.1:{p}");
        let args = [
            "--name",
            &name,
            "--data-dir",
            &data.display().to_string(),
            "--listen-client-urls",
            &client_url,
            "--advertise-client-urls",
            &client_url,
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
            "--initial-cluster",
            &cluster,
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            "bench",
            "--quota-backend-bytes",
            "8589934592",
        ]
        .map(String::from);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        guards.push(spawn_logged(
            &name,
            &etcd,
            &argv,
            dir.join(format!("{name}.log")),
        )?);
        endpoints.push(format!("127.0.0.1:{c}"));
    }
    for (g, e) in guards.iter_mut().zip(&endpoints) {
        g.wait_ready(e.parse()?, Duration::from_secs(20))?;
    }
    Ok((guards, endpoints))
}

async fn start_berth(
    bin: &Path,
    dir: &Path,
) -> Result<(Vec<ChildGuard>, Vec<String>, Credentials)> {
    if !bin.is_file() {
        bail!(
            "{} not found: build it first with `cargo build --release -p berth`",
            bin.display()
        );
    }
    let mut guards = Vec::new();
    let mut endpoints: Vec<String> = Vec::new();
    let mut creds: Option<Credentials> = None;
    for i in 0..3 {
        let addr = format!("127.0.0.1:{}", free_port()?);
        let data = dir.join(format!("s{}", i + 1)).display().to_string();
        let mut args = vec!["server", "--data-dir", &data, "--listen", &addr];
        let first: String = endpoints.first().cloned().unwrap_or_default();
        if i == 0 {
            args.push("--init");
        } else {
            args.push("--join");
            args.push(&first);
        }
        // Joining members bootstrap their certificate with the token from s1.
        let token = creds.as_ref().map(|c| c.token.clone());
        let env: Vec<(&str, &str)> = token.iter().map(|t| ("BERTH_TOKEN", t.as_str())).collect();
        let mut g = spawn_logged_env(
            &format!("berth-s{}", i + 1),
            bin,
            &args,
            &env,
            dir.join(format!("s{}.log", i + 1)),
        )?;
        g.wait_ready(addr.parse()?, Duration::from_secs(20))?;
        guards.push(g);
        endpoints.push(addr);
        if creds.is_none() {
            creds = Some(Credentials::wait(Path::new(&data), Duration::from_secs(20)).await?);
        }
        let creds = creds.as_ref().context("no credentials")?;
        // Wait until the member is in the cluster before adding the next one.
        let c = creds.client(&endpoints)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(s) = c.cluster_status().await {
                if s.members.len() > i && s.leader_id != 0 {
                    break;
                }
            }
            if Instant::now() > deadline {
                bail!("berth member {} did not join within 30s", i + 1);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let creds = creds.context("no berth member started")?;
    Ok((guards, endpoints, creds))
}

async fn fanout(
    creds: &Credentials,
    endpoints: &[String],
    watchers: usize,
    writes: usize,
    payload: &str,
) -> Result<f64> {
    let c = creds.client(endpoints)?;
    let rev = c.cluster_status().await?.revision;
    let received = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..watchers {
        let c = creds.client(&[endpoints[i % endpoints.len()].clone()])?;
        let mut stream = c.watch_dyn(Kind::Event, Some("fanout"), "", rev).await?;
        let received = received.clone();
        tasks.spawn(async move {
            let mut n = 0usize;
            while let Some(ev) = stream.next().await {
                if let Ok(ev) = ev {
                    if matches!(ev.change, Change::Added(_)) {
                        n += 1;
                        received.fetch_add(1, Ordering::Relaxed);
                        if n == writes {
                            break;
                        }
                    }
                }
            }
        });
    }
    let start = Instant::now();
    let w = BerthWriter {
        clients: Arc::new(vec![c.clone()]),
        payload: Arc::new(payload.to_string()),
        prefix: Arc::new("fan".into()),
        namespace: Arc::new("fanout".into()),
    };
    let next = Arc::new(AtomicU64::new(0));
    let mut writers = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let (w, next) = (w.clone(), next.clone());
        writers.spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k as usize >= writes {
                    break;
                }
                let _ = w.write(k).await;
            }
        });
    }
    while writers.join_next().await.is_some() {}
    let deadline = Duration::from_secs(120);
    let _ = tokio::time::timeout(deadline, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    let secs = start.elapsed().as_secs_f64();
    Ok(received.load(Ordering::Relaxed) as f64 / secs)
}

fn row(name: &str, s: &Stats) -> String {
    format!(
        "{:<26} {:>10.0} {:>9.2} {:>9.2} {:>8}",
        name,
        s.rate(),
        s.pct(0.5),
        s.pct(0.99),
        s.errors
    )
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let payload = "x".repeat(args.value_size);
    let dur = Duration::from_secs(args.seconds);
    let conns = 4.min(args.clients).max(1);

    eprintln!(
        "starting a 3-member Berth cluster ({}, mutual TLS)",
        args.berth_bin.display()
    );
    let (_berth, berth_eps, creds) = start_berth(&args.berth_bin, dir.path()).await?;
    let berth = BerthWriter {
        clients: Arc::new(
            (0..conns)
                .map(|i| {
                    let mut eps = berth_eps.clone();
                    let n = eps.len();
                    eps.rotate_left(i % n);
                    creds.client(&eps)
                })
                .collect::<Result<_, _>>()?,
        ),
        payload: Arc::new(payload.clone()),
        prefix: Arc::new("sat".into()),
        namespace: Arc::new("bench".into()),
    };
    eprintln!(
        "berth: saturation with {} clients for {:?}",
        args.clients, dur
    );
    let b_sat = saturate(berth.clone(), args.clients, dur).await;
    let b_half = open_loop(
        BerthWriter {
            prefix: Arc::new("half".into()),
            ..berth.clone()
        },
        0,
        b_sat.rate() / 2.0,
        dur,
    )
    .await;

    let mut etcd_rows = None;
    let mut _etcd_guards = None;
    if !args.no_etcd {
        eprintln!("starting a 3-member etcd");
        let (g, eps) = start_etcd(&dir.path().join("etcd"))?;
        _etcd_guards = Some(g);
        let etcd = EtcdWriter::new(eps.clone(), &payload, "sat");
        eprintln!(
            "etcd: saturation with {} clients for {:?}",
            args.clients, dur
        );
        let e_sat = saturate(etcd.clone(), args.clients, dur).await;
        let e_half = open_loop(
            EtcdWriter::new(eps, &payload, "half"),
            0,
            e_sat.rate() / 2.0,
            dur,
        )
        .await;
        etcd_rows = Some((e_sat, e_half));
    }

    eprintln!(
        "berth: watch fan-out to {} watchers, {} writes",
        args.watchers, args.fanout_writes
    );
    let fan = fanout(
        &creds,
        &berth_eps,
        args.watchers,
        args.fanout_writes,
        &payload,
    )
    .await?;

    println!(
        "\nAPI writes: {} B values, {} clients, {} s per phase, 3 members each, fsync on\n",
        args.value_size, args.clients, args.seconds
    );
    println!(
        "{:<26} {:>10} {:>9} {:>9} {:>8}",
        "system / phase", "writes/s", "p50 ms", "p99 ms", "errors"
    );
    println!("{}", row("berth saturation", &b_sat));
    println!("{}", row("berth at 50% of its max", &b_half));
    if let Some((e_sat, e_half)) = &etcd_rows {
        println!("{}", row("etcd saturation", e_sat));
        println!("{}", row("etcd at 50% of its max", e_half));
        println!(
            "\nberth / etcd throughput: {:.2}x   (goal >= 2x; berth p99 at half load {:.1} ms, goal <= 50 ms)",
            b_sat.rate() / e_sat.rate(),
            b_half.pct(0.99)
        );
    }
    println!(
        "\nwatch fan-out: {:.0} events/s delivered to {} watchers ({} writes)",
        fan, args.watchers, args.fanout_writes
    );
    Ok(())
}
