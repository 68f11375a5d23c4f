//! A real Berth cluster made of child processes of the release `berth` binary, for the
//! cluster-level benchmarks (`pod-start-bench`, `switch-bench`).
//!
//! [`LocalCluster`] owns a temporary directory (also the children's `HOME`, so nothing touches
//! the user's `~/.berth`), starts `berth server` members and `berth agent` nodes (or one
//! `berth dev`) with their logs in that directory, waits for them to be usable, and kills them
//! when dropped. Small helpers: [`percentile`], [`load_average`], [`vm_rss_kib`].
//!
//! Every gRPC connection is mutual TLS: the member that creates the cluster (`--init`, or
//! `berth dev`) writes DATA/admin.yaml and DATA/pki/token ([`Credentials`]); the bench's
//! clients and CLI calls present that admin credential, joining servers and agents get the
//! join token through `BERTH_TOKEN`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use berth_client::{Client, ClientConfig};
use berth_proto::types::Node;
use berth_tls::{AdminConfig, ClientTls};

use crate::procs::free_port;

/// The `berth` binary next to the running bench binary (both built into the same target dir),
/// or `$BERTH_BIN`.
pub fn berth_binary() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("BERTH_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("locating the bench binary")?;
    let dir = exe.parent().context("bench binary has no directory")?;
    let berth = dir.join("berth");
    if !berth.is_file() {
        bail!(
            "{} not found: build it with `cargo build --release -p berth -p berth-bench` \
             (same target dir) or set BERTH_BIN",
            berth.display()
        );
    }
    Ok(berth)
}

/// What `berth server --init` (or `berth dev`'s server) wrote to its data dir DATA:
/// the admin's CLI config (DATA/admin.yaml) and the cluster's join token (DATA/pki/token).
#[derive(Clone)]
pub struct Credentials {
    /// DATA/admin.yaml, for the CLI's `--config`.
    pub admin_config: PathBuf,
    /// The admin credential and the cluster CA, for in-process clients.
    pub tls: ClientTls,
    /// The join token (a secret: pass it in `BERTH_TOKEN`, never on a command line).
    pub token: String,
}

impl Credentials {
    /// Reads DATA/admin.yaml and DATA/pki/token of the member that created the cluster.
    pub fn read(data_dir: &Path) -> Result<Credentials> {
        let admin_config = data_dir.join("admin.yaml");
        let admin = AdminConfig::read(&admin_config)
            .with_context(|| format!("reading {}", admin_config.display()))?;
        let token_file = data_dir.join("pki").join("token");
        let token = std::fs::read_to_string(&token_file)
            .with_context(|| format!("reading {}", token_file.display()))?
            .trim()
            .to_string();
        if token.is_empty() {
            bail!("{} is empty", token_file.display());
        }
        Ok(Credentials {
            admin_config,
            tls: ClientTls::new(admin.certificate_authority.clone(), admin.credential()),
            token,
        })
    }

    /// Waits (up to `timeout`) until [`Credentials::read`] succeeds: the files are written
    /// while the server starts.
    pub async fn wait(data_dir: &Path, timeout: Duration) -> Result<Credentials> {
        let end = Instant::now() + timeout;
        loop {
            match Credentials::read(data_dir) {
                Ok(c) => return Ok(c),
                Err(e) if Instant::now() > end => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// A client of `servers` presenting the admin credential, with default timeouts.
    pub fn client<S: AsRef<str>>(&self, servers: &[S]) -> Result<Client> {
        Ok(Client::new(
            servers,
            ClientConfig::with_tls(self.tls.clone()),
        )?)
    }
}

/// One child process (server, agent or dev), killed with SIGTERM then SIGKILL on drop.
pub struct Member {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Member {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited with {status}; its log ({}):\n{}",
                self.name,
                self.log.display(),
                tail(&self.log, 30)
            );
        }
        Ok(())
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        // SIGTERM first so an agent/dev stops its workloads the way it normally does.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A cluster of `berth` child processes sharing one temporary directory.
pub struct LocalCluster {
    pub berth: PathBuf,
    // Declared before `dir` so the processes die before their directory is removed.
    pub members: Vec<Member>,
    pub servers: Vec<String>,
    /// Data dir of the member that created the cluster (its admin.yaml and pki/token).
    init_dir: Option<PathBuf>,
    /// Read from `init_dir` once that member is up.
    credentials: Option<Credentials>,
    dir: tempfile::TempDir,
}

impl LocalCluster {
    pub fn new() -> Result<LocalCluster> {
        let mut dir = tempfile::Builder::new()
            .prefix("berth-bench-")
            .tempdir()
            .context("creating a temporary directory")?;
        if std::env::var_os("BERTH_BENCH_KEEP").is_some() {
            // Keep the logs and data for a post-mortem.
            dir.disable_cleanup(true);
            eprintln!("keeping {}", dir.path().display());
        }
        std::fs::create_dir_all(dir.path().join("home"))?;
        Ok(LocalCluster {
            berth: berth_binary()?,
            members: Vec::new(),
            servers: Vec::new(),
            init_dir: None,
            credentials: None,
            dir,
        })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The admin credential and join token (once the first server or `berth dev` is up).
    pub fn credentials(&self) -> Result<&Credentials> {
        self.credentials
            .as_ref()
            .context("no cluster yet: start a server or berth dev first")
    }

    /// A command for the `berth` binary with HOME in the temp dir and the binary's directory
    /// first in PATH (so pods can run `berth demo-server` on the process runtime).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.berth);
        let bin_dir = self
            .berth
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![bin_dir];
        paths.extend(std::env::split_paths(&path));
        cmd.env("HOME", self.dir().join("home"))
            .env("PATH", std::env::join_paths(paths).unwrap_or(path))
            .env_remove("BERTH_SERVER")
            .env_remove("BERTH_CONFIG")
            .env_remove("BERTH_TOKEN");
        cmd
    }

    /// Starts `berth ARGS`; with `token`, BERTH_TOKEN is set to the cluster's join token.
    fn spawn(&mut self, name: &str, args: &[String], token: bool) -> Result<usize> {
        let token = if token {
            Some(self.credentials()?.token.clone())
        } else {
            None
        };
        let log = self.dir().join(format!("{name}.log"));
        let out = std::fs::File::create(&log)?;
        let err = out.try_clone()?;
        let mut cmd = self.command();
        if let Some(token) = token {
            cmd.env("BERTH_TOKEN", token);
        }
        let child = cmd
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or("warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {} {}", self.berth.display(), args.join(" ")))?;
        self.members.push(Member {
            name: name.to_string(),
            child,
            log,
        });
        Ok(self.members.len() - 1)
    }

    /// Starts `berth dev` (server + controllers + agent in one process); returns its index.
    pub async fn start_dev(&mut self, runtime: &str, node: &str) -> Result<usize> {
        let port = free_port()?;
        let listen = format!("127.0.0.1:{port}");
        let data = self.dir().join("dev");
        let args: Vec<String> = [
            "dev",
            "--data-dir",
            &data.display().to_string(),
            "--listen",
            &listen,
            "--runtime",
            runtime,
            "--name",
            node,
            "--no-config",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let i = self.spawn("dev", &args, false)?;
        self.servers.push(listen);
        // berth dev's server keeps its data (and the admin.yaml its --init wrote) in DATA/server.
        self.init_dir = Some(data.join("server"));
        self.wait_api(i).await?;
        Ok(i)
    }

    /// Starts one more `berth server` (the first one with `--init`, later ones `--join` the
    /// first) and waits until the cluster answers through it.
    pub async fn start_server(&mut self) -> Result<usize> {
        self.start_server_with(&[]).await
    }

    /// [`LocalCluster::start_server`] with more flags (e.g. `--registry-listen`).
    pub async fn start_server_with(&mut self, extra: &[String]) -> Result<usize> {
        let k = self.servers.len();
        let port = free_port()?;
        let listen = format!("127.0.0.1:{port}");
        let data = self.dir().join(format!("server{k}"));
        let mut args: Vec<String> = vec![
            "server".into(),
            "--data-dir".into(),
            data.display().to_string(),
            "--listen".into(),
            listen.clone(),
        ];
        let joining = match self.servers.first() {
            None => {
                args.push("--init".into());
                self.init_dir = Some(data.clone());
                false
            }
            Some(first) => {
                args.push("--join".into());
                args.push(first.clone());
                true
            }
        };
        args.extend(extra.iter().cloned());
        let i = self.spawn(&format!("server{k}"), &args, joining)?;
        self.servers.push(listen);
        self.wait_api(i).await?;
        Ok(i)
    }

    /// Starts `berth agent --name NAME --address ADDRESS` against every server; waits for its
    /// Node to be Ready.
    pub async fn start_agent(
        &mut self,
        name: &str,
        address: &str,
        runtime: &str,
        host_ports: &str,
    ) -> Result<usize> {
        self.start_agent_with(name, address, runtime, host_ports, &[])
            .await
    }

    /// [`LocalCluster::start_agent`] with more flags (e.g. `--registry-mirror`).
    pub async fn start_agent_with(
        &mut self,
        name: &str,
        address: &str,
        runtime: &str,
        host_ports: &str,
        extra: &[String],
    ) -> Result<usize> {
        let data = self.dir().join(format!("agent-{name}"));
        let listen = format!("{address}:{}", free_port()?);
        let mut args: Vec<String> = vec![
            "agent".into(),
            "--server".into(),
            self.servers.join(","),
            "--name".into(),
            name.into(),
            "--address".into(),
            address.into(),
            "--data-dir".into(),
            data.display().to_string(),
            "--runtime".into(),
            runtime.into(),
            "--host-port-range".into(),
            host_ports.into(),
            "--listen".into(),
            listen,
        ];
        args.extend(extra.iter().cloned());
        let i = self.spawn(&format!("agent-{name}"), &args, true)?;
        self.wait_node_ready(i, name).await?;
        Ok(i)
    }

    /// A client of every server, presenting the admin credential.
    pub fn client(&self) -> Result<Client> {
        self.credentials()?.client(&self.servers)
    }

    async fn wait_api(&mut self, member: usize) -> Result<()> {
        let end = Instant::now() + Duration::from_secs(60);
        let server = self.servers.last().context("no server")?.clone();
        if self.credentials.is_none() {
            // The creating member writes admin.yaml and pki/token before it serves.
            let init_dir = self
                .init_dir
                .clone()
                .context("no member created the cluster")?;
            loop {
                self.members[member].check_alive()?;
                match Credentials::read(&init_dir) {
                    Ok(c) => {
                        self.credentials = Some(c);
                        break;
                    }
                    Err(e) if Instant::now() > end => {
                        return Err(e.context(format!(
                            "{} wrote no credentials within 60 s; log:\n{}",
                            self.members[member].name,
                            tail(&self.members[member].log, 30)
                        )));
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }
        let client = self.credentials()?.client(&[server])?;
        loop {
            self.members[member].check_alive()?;
            if let Ok(st) = client.cluster_status().await {
                if st.leader_id != 0 {
                    return Ok(());
                }
            }
            if Instant::now() > end {
                bail!(
                    "{} did not answer within 60 s; log:\n{}",
                    self.members[member].name,
                    tail(&self.members[member].log, 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn wait_node_ready(&mut self, member: usize, node: &str) -> Result<()> {
        let end = Instant::now() + Duration::from_secs(60);
        let client = self.client()?;
        loop {
            self.members[member].check_alive()?;
            if let Ok(n) = client.get::<Node>("", node).await {
                let ready = n
                    .status
                    .as_ref()
                    .and_then(|s| berth_proto::types::condition(&s.conditions, "Ready"))
                    .is_some_and(|c| c.is_true());
                if ready {
                    return Ok(());
                }
            }
            if Instant::now() > end {
                bail!(
                    "node {node} not Ready within 60 s; log of {}:\n{}",
                    self.members[member].name,
                    tail(&self.members[member].log, 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs the `berth` CLI against this cluster (admin config, every server); fails with its
    /// output on a non-zero exit.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let out = self
            .command()
            .arg("--config")
            .arg(&self.credentials()?.admin_config)
            .arg("--server")
            .arg(self.servers.join(","))
            .args(args)
            .output()
            .with_context(|| format!("running berth {}", args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "berth {} failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// The `p`-th percentile (0..=100, nearest rank) of `sorted` (ascending); ZERO when empty.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The 1/5/15-minute load averages, as /proc/loadavg prints them.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Resident memory of `pid` in KiB (VmRSS from /proc/PID/status).
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Milliseconds with one decimal, for tables.
pub fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_uses_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&v, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&v, 100.0), Duration::from_millis(100));
        assert_eq!(percentile(&v[..1], 99.0), Duration::from_millis(1));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }

    #[test]
    fn own_rss_is_readable_and_nonzero() {
        assert!(vm_rss_kib(std::process::id()).is_some_and(|k| k > 0));
    }
}
