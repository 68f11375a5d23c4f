//! A 3-host Berth cluster built from the real binary: [`Cluster`].
//!
//! Host i (0-based) runs server i (`berth server --data-dir .. --listen IP:7000`, `--init` on
//! host 0, `--join` host 0's address on the others) and, when asked for, agent i
//! (`berth agent --server A0,A1,A2 --name node{i+1} --address IP --runtime process`). The CLI
//! and the HTTP clients run in the root namespace, as a user outside the cluster would.
//!
//! Security, as an operator sets a cluster up: `--init` writes the CA, the join token
//! (`h1/server/pki/token`) and the admin's CLI config (`h1/server/admin.yaml`); the joining
//! servers and the agents get the token through `BERTH_TOKEN` (first start only: restarts reuse
//! the certificates in their data dirs, without the token); the CLI runs with
//! `BERTH_CONFIG=h1/server/admin.yaml` and every raw gRPC client ([`api_client`]) speaks mutual
//! TLS with the admin credential ([`Cluster::admin_tls`]) unless a test chooses another one.
//!
//! Everything waits on conditions with deadlines ([`wait_until`]); faults are `kill9`,
//! `restart`, `partition`/`heal` (iptables in the namespace) and `cut_node`. Dropping the
//! cluster kills every process it started (and whatever they spawned in the namespaces),
//! removes the namespaces and bridge, and, when the test failed, prints the tail of every log
//! and keeps the temp dir for inspection.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use berth_proto::pb::api_client::ApiClient;
use berth_proto::pb::{ClusterStatusRequest, ClusterStatusResponse};
use berth_tls::{AdminConfig, ClientTls, Credential};
use serde::de::DeserializeOwned;
use tonic::transport::Channel;

use super::net::{netns_available, Net};
use super::proc::{berth_bin, Proc};

/// Port every server listens on (each host has its own address).
pub const API_PORT: u16 = 7000;

/// Held by every running cluster so that tests run one at a time even under `cargo test`
/// (nextest runs them one at a time through the `e2e` test group anyway).
static SERIAL: Mutex<()> = Mutex::new(());

/// Take the suite-wide lock (tests that build hosts without a [`Cluster`]).
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Poll `f` every 100 ms until it returns `Ok` or `limit` passes; panics naming `what` and the
/// last reason. Returns the value and how long it took.
pub fn wait_until<T>(
    what: &str,
    limit: Duration,
    mut f: impl FnMut() -> Result<T, String>,
) -> (T, Duration) {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return (v, start.elapsed()),
            Err(why) => {
                if start.elapsed() > limit {
                    panic!("timed out after {limit:?} waiting for {what}; last observation: {why}");
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Outcome of one CLI invocation.
#[derive(Debug, Clone)]
pub struct CliOut {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CliOut {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

impl std::fmt::Display for CliOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

/// The CLI as a user runs it: from the root namespace, servers from `BERTH_SERVER`, the
/// credential from the config file in `BERTH_CONFIG` (the admin config `--init` wrote, unless
/// a test picks another), a private `HOME` (no user config leaks in). Cloneable and usable
/// from any non-runtime thread.
#[derive(Debug, Clone)]
pub struct Cli {
    pub servers: String,
    /// `BERTH_CONFIG`; `None` leaves it unset (and `HOME` holds no config either).
    pub config: Option<PathBuf>,
    home: PathBuf,
    rt: tokio::runtime::Handle,
}

impl Cli {
    /// The same CLI with another config file (`None`: none at all).
    pub fn with_config(&self, config: Option<PathBuf>) -> Cli {
        Cli {
            config,
            ..self.clone()
        }
    }

    /// Run `berth ARGS` (30 s deadline; a hung CLI is reported as exit `None`).
    pub fn run(&self, args: &[&str]) -> CliOut {
        let mut cmd = tokio::process::Command::new(berth_bin());
        cmd.args(args)
            .env("BERTH_SERVER", &self.servers)
            .env("HOME", &self.home)
            .env_remove("BERTH_CONFIG")
            .env_remove("BERTH_TOKEN")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        if let Some(config) = &self.config {
            cmd.env("BERTH_CONFIG", config);
        }
        let line = format!("berth {}", args.join(" "));
        self.rt
            .block_on(run_to_end(cmd, &line, Duration::from_secs(30)))
    }
}

/// Run `cmd` to its end (at most `limit`; then it is killed and reported as exit `None`).
async fn run_to_end(mut cmd: tokio::process::Command, line: &str, limit: Duration) -> CliOut {
    match tokio::time::timeout(limit, cmd.output()).await {
        Ok(Ok(out)) => CliOut {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        },
        Ok(Err(e)) => panic!("cannot run {line}: {e}"),
        Err(_) => CliOut {
            code: None,
            stdout: String::new(),
            stderr: format!("e2e: `{line}` did not finish within {limit:?}"),
        },
    }
}

/// A gRPC client for the server at `addr` (`IP:PORT`) over mutual TLS: trusting the cluster CA
/// in `tls` and presenting its credential (2 s connect deadline). The server name checked is
/// `addr`'s IP (a SAN of every server certificate).
pub async fn api_client(addr: &str, tls: &ClientTls) -> Result<ApiClient<Channel>, String> {
    let channel = tls
        .endpoint(addr)
        .map_err(|e| format!("{addr}: {e}"))?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .map_err(|e| format!("connect {addr}: {}", innermost(&e)))?;
    Ok(ApiClient::new(channel))
}

/// The innermost cause of an error (a TLS alert rather than tonic's "transport error").
pub fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    berth_tls::innermost_cause(e)
}

/// A failed call's code, message and (for transport failures) innermost cause, on one line.
pub fn describe_status(s: &tonic::Status) -> String {
    match std::error::Error::source(s) {
        Some(cause) => format!("{:?}: {} ({})", s.code(), s.message(), innermost(cause)),
        None => format!("{:?}: {}", s.code(), s.message()),
    }
}

/// Which parts of the cluster a test needs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Opts {
    pub agents: bool,
    /// Every server also serves the cluster registry on IP:5443 (`--registry-listen`).
    pub registry: bool,
    /// Hosts 2 and 3 each run their own Docker engine (vfs storage, data under the test dir)
    /// and their agents use it (`--runtime docker`, with `process` too); host 1's agent stays
    /// process-only. Implies nothing about images: the engines start empty.
    pub docker: bool,
    /// With `docker`: host 1 runs an engine too, and its agent uses it.
    pub docker_everywhere: bool,
    /// `--proxy-mode` of every agent (None: the agent's default, nftables where nft works).
    pub proxy_mode: Option<&'static str>,
}

/// The registry port of every server when [`Opts::registry`].
pub const REGISTRY_PORT: u16 = 5443;

pub struct Cluster {
    // Field order is drop order: processes first, then the network, then the rest.
    pub servers: Vec<Proc>,
    pub agents: Vec<Proc>,
    /// Docker engines of hosts 2 and 3 ([`Opts::docker`]), stopped after the agents.
    pub engines: Vec<Proc>,
    pub net: Net,
    pub rt: tokio::runtime::Runtime,
    /// The admin credential (from `h1/server/admin.yaml`), once server 1 has written it.
    admin: Option<ClientTls>,
    /// The join token (from `h1/server/pki/token`), once server 1 has written it.
    token: Option<String>,
    dir: Option<tempfile::TempDir>,
    /// The temp dir's path (still known once `dir` is kept for a post-mortem).
    root: PathBuf,
    name: String,
    opts: Opts,
    /// Extra flags for every `berth server` (e.g. randomized raft timings).
    server_args: Vec<String>,
    _serial: MutexGuard<'static, ()>,
}

impl Cluster {
    /// Build the hosts and start the cluster for test `id`, or return `None` (after saying so)
    /// when network namespaces cannot be used here. In CI (`CI=true`) that is a failure.
    pub fn start(name: &str, id: u8, opts: Opts) -> Option<Cluster> {
        Self::start_with_server_args(name, id, opts, Vec::new())
    }

    /// [`Cluster::start`], every server also given `server_args`.
    pub fn start_with_server_args(
        name: &str,
        id: u8,
        opts: Opts,
        server_args: Vec<String>,
    ) -> Option<Cluster> {
        let serial = serial();
        if !berth_testkit::skip::require(&format!("e2e test {name}"), netns_available()) {
            return None;
        }
        let net = Net::create(id, 3).unwrap_or_else(|e| panic!("building hosts for {name}: {e}"));
        let dir = tempfile::Builder::new()
            .prefix(&format!("berth-e2e-{name}-"))
            .tempdir()
            .expect("temp dir");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let mut c = Cluster {
            servers: Vec::new(),
            agents: Vec::new(),
            engines: Vec::new(),
            net,
            rt,
            admin: None,
            token: None,
            root: dir.path().to_path_buf(),
            dir: Some(dir),
            name: name.to_string(),
            opts,
            server_args,
            _serial: serial,
        };
        c.opts = opts;
        c.start_servers();
        if opts.docker {
            c.start_engines();
        }
        if opts.agents {
            c.start_agents();
        }
        Some(c)
    }

    pub fn dir(&self) -> PathBuf {
        self.root.clone()
    }

    pub fn ip(&self, i: usize) -> Ipv4Addr {
        self.net.hosts[i].ip
    }

    /// Data dir of server `i` (`h{i+1}/server`).
    pub fn server_data(&self, i: usize) -> PathBuf {
        self.dir().join(format!("h{}", i + 1)).join("server")
    }

    /// Data dir of agent `i` (`h{i+1}/agent`).
    pub fn agent_data(&self, i: usize) -> PathBuf {
        self.dir().join(format!("h{}", i + 1)).join("agent")
    }

    /// The admin's CLI config that `berth server --init` wrote (server 1's `admin.yaml`).
    pub fn admin_config_path(&self) -> PathBuf {
        berth_apiserver::pki::admin_config_path(&self.server_data(0))
    }

    /// The admin credential (CA + admin certificate) from [`Cluster::admin_config_path`].
    pub fn admin_tls(&self) -> &ClientTls {
        self.admin
            .as_ref()
            .expect("the admin config is read once server 1 has started")
    }

    /// The cluster's join token, as server 1 keeps it in `pki/token`.
    pub fn join_token(&self) -> &str {
        self.token
            .as_deref()
            .expect("the join token is read once server 1 has started")
    }

    /// The credential agent `i` bootstrapped into its data dir (`pki/ca.crt`, `node.crt`,
    /// `node.key`): what anyone who can read that node's disk holds.
    pub fn node_tls(&self, i: usize) -> Result<ClientTls, String> {
        let dir = self.agent_data(i).join("pki");
        let ca = std::fs::read_to_string(dir.join("ca.crt"))
            .map_err(|e| format!("{}/ca.crt: {e}", dir.display()))?;
        let cred = Credential::read(&dir, "node").map_err(|e| e.to_string())?;
        Ok(ClientTls::new(ca, cred))
    }

    /// Run `berth ARGS` to its end inside host `i`'s namespace, with `env` added (at most
    /// `limit`; then it is killed and reported as exit `None`). For processes that are
    /// expected to exit, e.g. a server refused at join.
    pub fn run_on_host(
        &self,
        i: usize,
        args: &[&str],
        env: &[(&str, &str)],
        limit: Duration,
    ) -> CliOut {
        let mut cmd = tokio::process::Command::new("ip");
        cmd.args(["netns", "exec", &self.net.hosts[i].ns, berth_bin()])
            .args(args)
            .env("PATH", super::proc::path_with_berth())
            .env("RUST_LOG", "info")
            .env_remove("BERTH_TOKEN")
            .env_remove("BERTH_CONFIG")
            .env_remove("BERTH_SERVER")
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let line = format!("berth {} (on host {})", args.join(" "), i + 1);
        self.rt.block_on(run_to_end(cmd, &line, limit))
    }

    /// `IP:7000` of server `i`.
    pub fn api_addr(&self, i: usize) -> String {
        format!("{}:{API_PORT}", self.ip(i))
    }

    /// Every server address, comma-separated (what the CLI and the agents are given).
    pub fn all_api_addrs(&self) -> String {
        (0..self.net.hosts.len())
            .map(|i| self.api_addr(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn start_servers(&mut self) {
        let dir = self.dir();
        for i in 0..self.net.hosts.len() {
            let data = self.server_data(i);
            std::fs::create_dir_all(&data).expect("server data dir");
            let mut args = vec![
                "server".to_string(),
                "--data-dir".to_string(),
                data.display().to_string(),
                "--listen".to_string(),
                self.api_addr(i),
            ];
            if i == 0 {
                args.push("--init".to_string());
            } else {
                args.push("--join".to_string());
                args.push(self.api_addr(0));
            }
            args.extend(self.server_args.iter().cloned());
            if self.opts.registry {
                args.push("--registry-listen".to_string());
                args.push(format!("{}:{REGISTRY_PORT}", self.ip(i)));
            }
            let mut p = Proc::new(
                &format!("server{}", i + 1),
                &self.net.hosts[i].ns,
                args,
                dir.join(format!("server{}.log", i + 1)),
            );
            if i > 0 {
                // As an operator would: the token in the environment, not on the command line.
                p.set_env("BERTH_TOKEN", self.join_token());
            }
            p.start();
            self.servers.push(p);
            if i == 0 {
                self.read_admin_and_token();
            }
            let want = i + 1;
            wait_until(
                &format!("server{} to be a member of a {want}-member cluster", i + 1),
                Duration::from_secs(30),
                || {
                    let st = self.status(i)?;
                    if st.leader_id == 0 {
                        return Err(format!("server{} has no leader yet", i + 1));
                    }
                    if st.members.len() < want {
                        return Err(format!("{} members: {:?}", st.members.len(), st.members));
                    }
                    Ok(())
                },
            );
        }
        let n = self.servers.len();
        wait_until(
            "all servers to agree on one leader",
            Duration::from_secs(20),
            || self.agreed_leader(&(0..n).collect::<Vec<_>>()),
        );
    }

    /// Wait for server 1 (`--init`) to write the admin config and the join token, and read
    /// them.
    fn read_admin_and_token(&mut self) {
        let admin_path = self.admin_config_path();
        let token_path = berth_apiserver::pki::pki_dir(&self.server_data(0)).join("token");
        let server1 = &mut self.servers[0];
        let ((admin, token), _) = wait_until(
            "server1 (--init) to write admin.yaml and pki/token",
            Duration::from_secs(30),
            || {
                if !server1.is_running() {
                    panic!("server1 exited during --init:\n{}", server1.tail(40));
                }
                let admin = AdminConfig::read(&admin_path).map_err(|e| e.to_string())?;
                let token = std::fs::read_to_string(&token_path)
                    .map_err(|e| format!("{}: {e}", token_path.display()))?;
                let token = token.trim().to_string();
                if !token.starts_with(berth_tls::TOKEN_PREFIX) || !token.contains("::") {
                    return Err(format!("{} is not a join token yet", token_path.display()));
                }
                Ok((admin, token))
            },
        );
        self.admin = Some(ClientTls::new(
            admin.certificate_authority.clone(),
            admin.credential(),
        ));
        self.token = Some(token);
    }

    fn start_agents(&mut self) {
        let dir = self.dir();
        let servers = self.all_api_addrs();
        for i in 0..self.net.hosts.len() {
            let data = self.agent_data(i);
            std::fs::create_dir_all(&data).expect("agent data dir");
            let args = vec![
                "agent".to_string(),
                "--server".to_string(),
                servers.clone(),
                "--name".to_string(),
                format!("node{}", i + 1),
                "--address".to_string(),
                self.ip(i).to_string(),
                "--data-dir".to_string(),
                data.display().to_string(),
                "--runtime".to_string(),
                if self.has_engine(i) {
                    "docker".to_string()
                } else {
                    "process".to_string()
                },
            ];
            let mut args = args;
            if let Some(mode) = self.opts.proxy_mode {
                args.extend(["--proxy-mode".to_string(), mode.to_string()]);
            }
            let mut p = Proc::new(
                &format!("agent{}", i + 1),
                &self.net.hosts[i].ns,
                args,
                dir.join(format!("agent{}.log", i + 1)),
            );
            p.set_env("BERTH_TOKEN", self.join_token());
            if self.has_engine(i) {
                p.set_env(
                    "DOCKER_HOST",
                    &format!("unix://{}", self.engine_socket(i).display()),
                );
            }
            p.start();
            self.agents.push(p);
        }
        let n = self.agents.len();
        wait_until(&format!("{n} nodes Ready"), Duration::from_secs(30), || {
            let nodes: Vec<berth_proto::types::Node> = self.get_list("nodes")?;
            let ready: Vec<String> = nodes
                .iter()
                .filter(|n| node_ready(n))
                .map(|n| n.metadata.name.clone())
                .collect();
            if ready.len() == n {
                Ok(())
            } else {
                Err(format!("ready nodes: {ready:?} of {}", nodes.len()))
            }
        });
    }

    /// The Docker engine socket of host `i` ([`Opts::docker`], hosts 2 and 3).
    pub fn engine_socket(&self, i: usize) -> PathBuf {
        self.dir().join(format!("h{}", i + 1)).join("docker.sock")
    }

    /// Run `ARGS` (a host program) inside host `i`'s network namespace; its stdout.
    pub fn sh_on(&self, i: usize, args: &[&str]) -> Result<String, String> {
        let mut full = vec!["ip", "netns", "exec", self.net.hosts[i].ns.as_str()];
        full.extend_from_slice(args);
        super::net::sh(&full)
    }

    /// `docker ARGS` against host `i`'s engine.
    pub fn docker_on(&self, i: usize, args: &[&str]) -> Result<String, String> {
        let out = std::process::Command::new("docker")
            .args(args)
            .env(
                "DOCKER_HOST",
                format!("unix://{}", self.engine_socket(i).display()),
            )
            .output()
            .map_err(|e| format!("docker: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "docker {} on host {}: {}",
                args.join(" "),
                i + 1,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// A Docker engine per host 2 and 3, as an operator would run one on each machine:
    /// nothing configured (no insecure-registries, no certs.d); the cluster's images reach it
    /// through the agent's loopback mirror.
    /// Does host `i` run a Docker engine ([`Opts::docker`], [`Opts::docker_everywhere`])?
    pub fn has_engine(&self, i: usize) -> bool {
        self.opts.docker && (i > 0 || self.opts.docker_everywhere)
    }

    fn start_engines(&mut self) {
        let dir = self.dir();
        for i in 0..self.net.hosts.len() {
            if !self.has_engine(i) {
                continue;
            }
            let root = dir.join(format!("h{}", i + 1)).join("docker");
            std::fs::create_dir_all(&root).expect("engine dir");
            let empty = root.join("daemon.json");
            std::fs::write(&empty, "{}").expect("daemon.json");
            // Bridge subnets unique per test and host, away from the hosts' 10.231.N.0/24.
            let bip = format!("10.{}.{}.1/24", 240 + i, self.net.id);
            let args: Vec<String> = [
                "--config-file",
                &empty.display().to_string(),
                "--data-root",
                &root.join("data").display().to_string(),
                "--exec-root",
                &root.join("exec").display().to_string(),
                "--pidfile",
                &root.join("docker.pid").display().to_string(),
                "-H",
                &format!("unix://{}", self.engine_socket(i).display()),
                "--storage-driver",
                "vfs",
                "--bip",
                &bip,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let mut p = Proc::new(
                &format!("dockerd{}", i + 1),
                &self.net.hosts[i].ns,
                args,
                dir.join(format!("dockerd{}.log", i + 1)),
            )
            .with_program("dockerd")
            .via_nsenter();
            p.start();
            self.engines.push(p);
        }
        for i in (0..self.net.hosts.len()).filter(|i| self.has_engine(*i)) {
            wait_until(
                &format!("host {}'s Docker engine to answer", i + 1),
                Duration::from_secs(30),
                || self.docker_on(i, &["version", "--format", "{{.Server.Version}}"]),
            );
        }
    }

    // ---------------------------------------------------------------------------------------
    // Raft view

    /// ClusterStatus answered by server `i` itself (2 s deadline), asked as the admin.
    pub fn status(&self, i: usize) -> Result<ClusterStatusResponse, String> {
        let addr = self.api_addr(i);
        let tls = self.admin_tls().clone();
        self.rt.block_on(async move {
            let call = async {
                let mut c = api_client(&addr, &tls).await?;
                c.cluster_status(ClusterStatusRequest {})
                    .await
                    .map(|r| r.into_inner())
                    .map_err(|e| format!("ClusterStatus on {addr}: {}", describe_status(&e)))
            };
            tokio::time::timeout(Duration::from_secs(2), call)
                .await
                .map_err(|_| format!("ClusterStatus on {addr}: no answer within 2s"))?
        })
    }

    /// Host index of the member with raft id `id`, from a status's member list.
    fn host_of(&self, st: &ClusterStatusResponse, id: u64) -> Option<usize> {
        let m = st.members.iter().find(|m| m.id == id)?;
        let addr = m
            .address
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .trim_end_matches('/');
        (0..self.net.hosts.len()).find(|&i| addr == self.api_addr(i))
    }

    /// The leader all of `among` agree on (host index), or why there is none.
    pub fn agreed_leader(&self, among: &[usize]) -> Result<usize, String> {
        let mut leader = None;
        for &i in among {
            let st = self.status(i)?;
            if st.leader_id == 0 {
                return Err(format!("server{} sees no leader", i + 1));
            }
            let h = self.host_of(&st, st.leader_id).ok_or_else(|| {
                format!("leader id {} not in members {:?}", st.leader_id, st.members)
            })?;
            match leader {
                None => leader = Some(h),
                Some(l) if l != h => {
                    return Err(format!(
                        "servers disagree on the leader: server{} vs server{}",
                        l + 1,
                        h + 1
                    ))
                }
                Some(_) => {}
            }
        }
        leader.ok_or_else(|| "no servers asked".to_string())
    }

    /// Current leader as seen by every running server.
    pub fn leader(&mut self) -> usize {
        let running: Vec<usize> = (0..self.servers.len())
            .filter(|&i| self.servers[i].is_running())
            .collect();
        wait_until("a leader", Duration::from_secs(20), || {
            self.agreed_leader(&running)
        })
        .0
    }

    // ---------------------------------------------------------------------------------------
    // Faults

    pub fn kill9_server(&mut self, i: usize) {
        self.servers[i].kill9();
    }

    /// Start a killed server again from its data dir (without --init/--join and without the
    /// token: it recovers, with the PKI it keeps in its data dir).
    pub fn restart_server(&mut self, i: usize) {
        self.servers[i].args.retain(|a| a != "--init");
        if let Some(p) = self.servers[i].args.iter().position(|a| a == "--join") {
            self.servers[i].args.drain(p..p + 2);
        }
        self.servers[i].remove_env("BERTH_TOKEN");
        self.servers[i].start();
    }

    pub fn kill9_agent(&mut self, i: usize) {
        self.agents[i].kill9();
    }

    /// Start a killed agent again, without the token: it reuses the node certificate it
    /// bootstrapped into its data dir on its first start.
    pub fn restart_agent(&mut self, i: usize) {
        self.agents[i].remove_env("BERTH_TOKEN");
        self.agents[i].start();
    }

    pub fn partition(&self, i: usize) {
        self.net.partition(i);
    }

    pub fn heal(&self, i: usize) {
        self.net.heal(i);
    }

    /// Lose node `i` as a machine failure would: its network is cut (server and agent stop
    /// being reachable, its workloads stop answering from outside).
    pub fn cut_node(&self, i: usize) {
        self.net.partition(i);
    }

    // ---------------------------------------------------------------------------------------
    // The CLI, as a user runs it (root namespace, all servers given)

    /// A CLI handle (usable from other threads) given every server.
    pub fn cli_handle(&self) -> Cli {
        self.cli_handle_for(&self.all_api_addrs())
    }

    /// A CLI handle given only `servers` (comma-separated `HOST:PORT`), with the admin config.
    pub fn cli_handle_for(&self, servers: &str) -> Cli {
        let home = self.dir().join("home");
        let _ = std::fs::create_dir_all(&home);
        Cli {
            servers: servers.to_string(),
            config: Some(self.admin_config_path()),
            home,
            rt: self.rt.handle().clone(),
        }
    }

    /// Run `berth ARGS` with `BERTH_SERVER` set to every server and `BERTH_CONFIG` to the
    /// admin config (30 s deadline).
    pub fn cli(&self, args: &[&str]) -> CliOut {
        self.cli_handle().run(args)
    }

    /// Run the CLI and panic (with its output) unless it succeeds; returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(out.ok(), "`berth {}` failed: {out}", args.join(" "));
        out.stdout
    }

    /// Write `text` to a file in the temp dir; returns its path.
    pub fn write_file(&self, name: &str, text: &str) -> String {
        let p = self.dir().join(name);
        std::fs::write(&p, text).expect("write manifest");
        p.display().to_string()
    }

    /// `berth get KIND -o json`, decoded as a list of `T`.
    pub fn get_list<T: DeserializeOwned>(&self, kind: &str) -> Result<Vec<T>, String> {
        let out = self.cli(&["get", kind, "-o", "json"]);
        if !out.ok() {
            return Err(format!("berth get {kind}: {out}"));
        }
        decode_list(&out.stdout).map_err(|e| format!("berth get {kind} -o json: {e}"))
    }

    /// `berth get KIND NAME -o json`; `Ok(None)` when the CLI says it does not exist.
    pub fn get_one<T: DeserializeOwned>(
        &self,
        kind: &str,
        name: &str,
    ) -> Result<Option<T>, String> {
        let out = self.cli(&["get", kind, name, "-o", "json"]);
        if !out.ok() {
            if out.stderr.to_ascii_lowercase().contains("not found") {
                return Ok(None);
            }
            return Err(format!("berth get {kind} {name}: {out}"));
        }
        serde_json::from_str(&out.stdout)
            .map(Some)
            .map_err(|e| format!("berth get {kind} {name} -o json: {e}: {}", out.stdout))
    }

    // ---------------------------------------------------------------------------------------
    // HTTP, from the root namespace

    /// `GET path` on `ip:port` (a node's proxy); returns status and body.
    pub fn http_get(&self, ip: Ipv4Addr, port: u16, path: &str) -> Result<(u16, String), String> {
        let addr = SocketAddr::from((ip, port));
        let path = path.to_string();
        self.rt
            .block_on(async move { http_get(addr, &path, Duration::from_secs(3)).await })
    }

    /// `GET path` on `addr` from inside host `i` (its network namespace): for addresses only
    /// the node itself reaches, such as a ClusterIP.
    pub fn http_get_on(
        &self,
        i: usize,
        addr: SocketAddr,
        path: &str,
    ) -> Result<(u16, String), String> {
        let path = path.to_string();
        super::net::in_netns(&self.net.hosts[i].ns, move |rt| {
            rt.block_on(async move { http_get(addr, &path, Duration::from_secs(3)).await })
        })
        .join()
        .map_err(|_| "the client thread panicked".to_string())??
    }
}

/// Is the Node's Ready condition True?
pub fn node_ready(n: &berth_proto::types::Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| berth_proto::types::condition(&s.conditions, "Ready"))
        .is_some_and(|c| c.is_true())
}

/// Decode `get -o json` output: a kubectl-style `{"items": [...]}`, a bare array, one object,
/// or nothing at all (no objects).
pub fn decode_list<T: DeserializeOwned>(text: &str) -> Result<Vec<T>, String> {
    if text.trim().is_empty() {
        // Nothing to show: the CLI prints nothing (and says so on stderr), like `kubectl get`.
        return Ok(Vec::new());
    }
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("{e}: {text}"))?;
    let items = match v {
        serde_json::Value::Array(a) => a,
        serde_json::Value::Object(mut o) if o.contains_key("items") => match o.remove("items") {
            Some(serde_json::Value::Array(a)) => a,
            Some(serde_json::Value::Null) | None => Vec::new(),
            Some(other) => return Err(format!("items is not a list: {other}")),
        },
        other => vec![other],
    };
    items
        .into_iter()
        .map(|i| serde_json::from_value(i.clone()).map_err(|e| format!("{e}: {i}")))
        .collect()
}

/// A minimal HTTP/1.1 GET over a fresh TCP connection (`Connection: close`).
pub async fn http_get(
    addr: SocketAddr,
    path: &str,
    limit: Duration,
) -> Result<(u16, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let call = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("write to {addr}: {e}"))?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)
            .await
            .map_err(|e| format!("read from {addr}: {e}"))?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| format!("no HTTP status from {addr}: {text:?}"))?;
        // CGI scripts (busybox httpd) end their own headers with bare newlines.
        let body = text
            .split_once("\r\n\r\n")
            .or_else(|| text.split_once("\n\n"))
            .map(|x| x.1)
            .unwrap_or("")
            .to_string();
        Ok((status, body))
    };
    tokio::time::timeout(limit, call)
        .await
        .map_err(|_| format!("GET {path} on {addr}: no answer within {limit:?}"))?
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::env::var("E2E_KEEP").is_ok_and(|v| v == "1") && !std::thread::panicking() {
            if let Some(d) = self.dir.take() {
                eprintln!(
                    "===== E2E_KEEP=1: logs and data kept in {} =====",
                    d.keep().display()
                );
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "\n===== e2e test {} failed: process logs (tails) =====",
                self.name
            );
            for p in self
                .servers
                .iter()
                .chain(self.agents.iter())
                .chain(self.engines.iter())
            {
                eprintln!(
                    "----- {} ({}) -----\n{}",
                    p.name,
                    p.log.display(),
                    p.tail(40)
                );
            }
            if let Some(d) = self.dir.take() {
                eprintln!("===== logs and data kept in {} =====", d.keep().display());
            }
        }
        for p in self.servers.iter_mut().chain(self.agents.iter_mut()) {
            p.kill9();
        }
        // Engines last and gracefully: their containers first (removed at once, not stopped
        // with a grace period), then SIGTERM.
        for i in 1..=self.engines.len() {
            if let Ok(ids) = self.docker_on(i, &["ps", "-aq"]) {
                let ids: Vec<&str> = ids.split_whitespace().collect();
                if !ids.is_empty() {
                    let mut args = vec!["rm", "-f"];
                    args.extend(ids);
                    let _ = self.docker_on(i, &args);
                }
            }
        }
        for p in self.engines.iter_mut() {
            p.terminate(Duration::from_secs(15));
        }
    }
}
