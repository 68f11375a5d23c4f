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
//!
//! The Kubernetes REST front door, on the same cluster in the same run (`--no-rest` skips it):
//! the same Event creates as `POST /api/v1/namespaces/bench/events` (JSON over HTTP/2, the
//! same mutual TLS; as many HTTP/2 connections as gRPC channels), the same watch fan-out as
//! REST watch streams, and `kubectl get pods` on `--list-pods` pods (default 10,000) vs
//! `berth get pods` (median wall time of 3 runs each; needs kubectl).

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
    /// Skip the Kubernetes REST API phases.
    #[arg(long)]
    no_rest: bool,
    /// Pods for the `kubectl get pods` vs `berth get pods` phase (0 skips it).
    #[arg(long, default_value_t = 10_000)]
    list_pods: usize,
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

/// The same Event creates through the Kubernetes REST API: `POST .../events` with a JSON
/// body over HTTP/2 (ALPN h2, mutual TLS with the admin credential), one HTTP/2 connection
/// per client in `http` (reqwest multiplexes requests on it).
#[derive(Clone)]
struct RestWriter {
    http: Arc<Vec<reqwest::Client>>,
    base: Arc<String>,
    payload: Arc<String>,
    prefix: Arc<String>,
    namespace: Arc<String>,
}

fn rest_client(creds: &Credentials) -> Result<reqwest::Client> {
    let mut tls = (*berth_tls::mtls_client_config(&creds.tls)?).clone();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .http2_prior_knowledge()
        .build()?)
}

impl Writer for RestWriter {
    async fn write(&self, key: u64) -> Result<()> {
        let http = &self.http[(key as usize) % self.http.len()];
        let ns = self.namespace.as_str();
        let body = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": format!("{}-{key}", self.prefix), "namespace": ns},
            "involvedObject": {"kind": "Pod", "namespace": ns, "name": "bench"},
            "reason": "Bench",
            "message": self.payload.as_str(),
            "type": "Normal",
        });
        let r = http
            .post(format!("{}/api/v1/namespaces/{ns}/events", self.base))
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body)?)
            .send()
            .await?;
        let status = r.status();
        let text = r.bytes().await?;
        if status != reqwest::StatusCode::CREATED {
            bail!("POST answered {status}: {}", String::from_utf8_lossy(&text));
        }
        Ok(())
    }
}

/// [`fanout`] through REST watch streams: `watchers` chunked JSON streams from `rev`, each
/// counting ADDED lines until it has seen all `writes`.
async fn rest_fanout(
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
    let http = rest_client(creds)?;
    for i in 0..watchers {
        let url = format!(
            "https://{}/api/v1/namespaces/restfan/events?watch=true&resourceVersion={rev}",
            endpoints[i % endpoints.len()]
        );
        let resp = http.get(url).send().await?;
        if !resp.status().is_success() {
            bail!("REST watch answered {}", resp.status());
        }
        let received = received.clone();
        tasks.spawn(async move {
            let mut n = 0usize;
            let mut stream = resp.bytes_stream();
            let mut buf: Vec<u8> = Vec::new();
            while let Some(Ok(chunk)) = stream.next().await {
                buf.extend_from_slice(&chunk);
                while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    // Key order is the encoder's: look for the field, not a prefix.
                    if line
                        .windows(br#""type":"ADDED""#.len())
                        .any(|w| w == br#""type":"ADDED""#)
                    {
                        n += 1;
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if n >= writes {
                    break;
                }
            }
        });
    }
    let start = Instant::now();
    let w = BerthWriter {
        clients: Arc::new(vec![c.clone()]),
        payload: Arc::new(payload.to_string()),
        prefix: Arc::new("fan".into()),
        namespace: Arc::new("restfan".into()),
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
    let _ = tokio::time::timeout(Duration::from_secs(120), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    let secs = start.elapsed().as_secs_f64();
    Ok(received.load(Ordering::Relaxed) as f64 / secs)
}

/// `n` pending pods in namespace `list`, created in batches of 500 (one raft entry each).
async fn create_pods(creds: &Credentials, endpoints: &[String], n: usize) -> Result<()> {
    let c = creds.client(endpoints)?;
    let mut k = 0;
    while k < n {
        let ops: Vec<berth_client::BatchOp> = (k..(k + 500).min(n))
            .map(|i| {
                let pod = berth_proto::DynObject::from_value(serde_json::json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": format!("list-{i:05}"), "namespace": "list",
                                 "labels": {"app": "list"}},
                    "spec": {"containers": [{"name": "c", "image": "nginx:1.27"}]},
                }))?;
                Ok(berth_client::BatchOp::Create(pod))
            })
            .collect::<Result<_>>()?;
        k += ops.len();
        for r in c.batch(ops).await? {
            r?;
        }
    }
    Ok(())
}

/// Median wall time of `runs` runs of `cmd` (which must succeed and print `expect_lines`
/// lines or more).
fn time_command(
    mut make: impl FnMut() -> std::process::Command,
    runs: usize,
    expect_lines: usize,
) -> Result<Duration> {
    let mut times = Vec::new();
    for _ in 0..runs {
        let mut cmd = make();
        let start = Instant::now();
        let out = cmd.output().context("running the list command")?;
        let took = start.elapsed();
        if !out.status.success() {
            bail!("{:?} failed: {}", cmd, String::from_utf8_lossy(&out.stderr));
        }
        let lines = out.stdout.iter().filter(|b| **b == b'\n').count();
        if lines < expect_lines {
            bail!("{cmd:?} printed {lines} lines, expected {expect_lines}");
        }
        times.push(took);
    }
    times.sort();
    Ok(times[times.len() / 2])
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
    // A refused write (say, a namespace that does not exist) would read as a 0 events/s
    // fan-out: check that the writes landed.
    let landed = c
        .list_dyn(Kind::Event, Some("fanout"), "")
        .await
        .map(|(items, _)| items.len())
        .unwrap_or(0);
    if landed == 0 {
        bail!("fan-out: none of the {writes} writes to namespace fanout landed");
    }
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
    // The namespaces the writers and the list run use must exist (as in Kubernetes).
    let c = creds.client(&berth_eps)?;
    for ns in ["bench", "list", "fanout", "restfan"] {
        let mut n = berth_proto::types::Namespace::default();
        n.metadata.name = ns.into();
        match c.create(&n).await {
            Ok(_) | Err(berth_client::ClientError::AlreadyExists(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
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

    // The Kubernetes REST front door of the same cluster.
    let mut rest_rows = None;
    if !args.no_rest {
        let st = creds.client(&berth_eps)?.cluster_status().await?;
        let leader = st
            .members
            .iter()
            .find(|m| m.is_leader)
            .map(|m| m.address.clone())
            .unwrap_or_else(|| berth_eps[0].clone());
        let rest = RestWriter {
            http: Arc::new(
                (0..conns)
                    .map(|_| rest_client(&creds))
                    .collect::<Result<_>>()?,
            ),
            base: Arc::new(format!("https://{leader}")),
            payload: Arc::new(payload.clone()),
            prefix: Arc::new("rsat".into()),
            namespace: Arc::new("bench".into()),
        };
        eprintln!(
            "rest: saturation with {} clients for {:?}",
            args.clients, dur
        );
        let r_sat = saturate(rest.clone(), args.clients, dur).await;
        let r_half = open_loop(
            RestWriter {
                prefix: Arc::new("rhalf".into()),
                ..rest.clone()
            },
            0,
            r_sat.rate() / 2.0,
            dur,
        )
        .await;
        eprintln!(
            "rest: watch fan-out to {} watchers, {} writes",
            args.watchers, args.fanout_writes
        );
        let r_fan = rest_fanout(
            &creds,
            &berth_eps,
            args.watchers,
            args.fanout_writes,
            &payload,
        )
        .await?;
        let mut lists = None;
        if args.list_pods > 0 {
            match find_tool("kubectl") {
                None => eprintln!("kubectl not found: skipping the list phase (apt-get install kubernetes-client)"),
                Some(kubectl) => {
                    eprintln!("creating {} pods for the list phase", args.list_pods);
                    create_pods(&creds, &berth_eps, args.list_pods).await?;
                    let kubeconfig = dir.path().join("kubeconfig");
                    let out = std::process::Command::new(&args.berth_bin)
                        .args(["kubeconfig", "--config"])
                        .arg(&creds.admin_config)
                        .args(["--server", &leader])
                        .output()?;
                    if !out.status.success() {
                        bail!("berth kubeconfig failed: {}", String::from_utf8_lossy(&out.stderr));
                    }
                    std::fs::write(&kubeconfig, &out.stdout)?;
                    let n = args.list_pods;
                    let k = time_command(
                        || {
                            let mut c = std::process::Command::new(&kubectl);
                            c.args(["get", "pods", "-n", "list"])
                                .env("KUBECONFIG", &kubeconfig)
                                .env("KUBECACHEDIR", dir.path().join("kubecache"));
                            c
                        },
                        3,
                        n,
                    )?;
                    let b = time_command(
                        || {
                            let mut c = std::process::Command::new(&args.berth_bin);
                            c.arg("--config")
                                .arg(&creds.admin_config)
                                .args(["--server", &leader, "get", "pods", "-n", "list"]);
                            c
                        },
                        3,
                        n,
                    )?;
                    lists = Some((k, b));
                }
            }
        }
        rest_rows = Some((r_sat, r_half, r_fan, lists));
    }

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
    if let Some((r_sat, r_half, r_fan, lists)) = &rest_rows {
        println!(
            "\nKubernetes REST vs gRPC, same cluster, same run ({} clients, {} HTTP/2 connections \
             / gRPC channels)\n",
            args.clients, conns
        );
        println!(
            "{:<26} {:>10} {:>9} {:>9} {:>8}",
            "front door / phase", "writes/s", "p50 ms", "p99 ms", "errors"
        );
        println!("{}", row("grpc saturation", &b_sat));
        println!("{}", row("rest saturation", r_sat));
        println!("{}", row("grpc at 50% of its max", &b_half));
        println!("{}", row("rest at 50% of its max", r_half));
        println!(
            "\nrest / grpc writes: {:.2}x (goal >= 0.8x); watch fan-out rest {:.0} vs grpc {:.0} events/s = {:.2}x",
            r_sat.rate() / b_sat.rate(),
            r_fan,
            fan,
            r_fan / fan
        );
        if let Some((k, b)) = lists {
            println!(
                "list {} pods: kubectl get pods {:.0} ms, berth get pods {:.0} ms (kubectl / berth {:.2}x; median of 3)",
                args.list_pods,
                k.as_secs_f64() * 1000.0,
                b.as_secs_f64() * 1000.0,
                k.as_secs_f64() / b.as_secs_f64()
            );
        }
    }
    Ok(())
}
