//! Anchor processes (nginx, HAProxy): found on the machine, started from generated configs in
//! a temporary directory, waited for, and killed when dropped.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Finds an executable in PATH or in the sbin directories Debian installs daemons to.
/// `BERTH_BENCH_HIDE=haproxy,nginx` makes tools look missing (to check that path).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let hidden = std::env::var("BERTH_BENCH_HIDE").unwrap_or_default();
    if hidden.split(',').any(|h| h.trim() == name) {
        return None;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// A free port on 127.0.0.1 (free when asked; the caller binds it right after).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .context("finding a free port")?
        .local_addr()?
        .port())
}

/// CPU time used so far by the threads of process `pid` whose name starts with `prefix`
/// (all threads when `None`), from the scheduler's nanosecond accounting
/// (`/proc/PID/task/TID/schedstat`). `None` when /proc cannot be read.
pub fn cpu_time(pid: u32, prefix: Option<&str>) -> Option<Duration> {
    let mut total = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let dir = task.ok()?.path();
        if let Some(prefix) = prefix {
            let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
            if !comm.starts_with(prefix) {
                continue;
            }
        }
        let stat = std::fs::read_to_string(dir.join("schedstat")).ok()?;
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(total))
}

/// A child process killed (and reaped) on drop.
pub struct ChildGuard {
    name: String,
    child: Child,
    log: PathBuf,
}

impl ChildGuard {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `addr` accepts connections; fails with the process's log if it exits.
    pub fn wait_ready(&mut self, addr: SocketAddr, deadline: Duration) -> Result<()> {
        let end = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited with {status} before listening on {addr}: {}",
                    self.name,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > end {
                bail!("{} did not listen on {addr} within {deadline:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `program` with its stdout and stderr in `log`; killed when the guard drops.
pub fn spawn_logged(name: &str, program: &Path, args: &[&str], log: PathBuf) -> Result<ChildGuard> {
    spawn_logged_env(name, program, args, &[], log)
}

/// [`spawn_logged`] with extra environment variables (e.g. a join token in `BERTH_TOKEN`,
/// which a command line would show to every user in `ps`).
pub fn spawn_logged_env(
    name: &str,
    program: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    log: PathBuf,
) -> Result<ChildGuard> {
    let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    let child = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    Ok(ChildGuard {
        name: name.to_string(),
        child,
        log,
    })
}

/// nginx with one worker process answering `200 ok` on `addr`, keep-alive without limit.
pub fn start_nginx(nginx: &Path, dir: &Path, addr: SocketAddr) -> Result<ChildGuard> {
    let d = dir.display();
    let conf = format!(
        "worker_processes 1;
daemon off;
master_process off;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen {addr} backlog=4096;
        location / {{ default_type text/plain; return 200 \"ok\\n\"; }}
    }}
}}
"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf)?;
    let path = path.display().to_string();
    let prefix = format!("{d}/");
    let error_log = format!("{d}/nginx-error.log");
    let mut g = spawn_logged(
        "nginx",
        nginx,
        &["-c", &path, "-p", &prefix, "-e", &error_log],
        dir.join("nginx.out"),
    )?;
    g.wait_ready(addr, Duration::from_secs(10))?;
    Ok(g)
}

/// HAProxy as in shared/anchors/haproxy.cfg: TCP mode, one thread, round robin.
pub fn haproxy_config(listen: SocketAddr, backends: &[SocketAddr]) -> String {
    let mut cfg = format!(
        "global
    nbthread 1
    maxconn 8000
defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend fe
    bind {listen}
    default_backend be
backend be
    balance roundrobin
"
    );
    for (i, b) in backends.iter().enumerate() {
        cfg.push_str(&format!("    server b{} {b}\n", i + 1));
    }
    cfg
}

pub fn start_haproxy(
    haproxy: &Path,
    dir: &Path,
    listen: SocketAddr,
    backends: &[SocketAddr],
) -> Result<ChildGuard> {
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, haproxy_config(listen, backends))?;
    let path = path.display().to_string();
    let mut g = spawn_logged(
        "haproxy",
        haproxy,
        &["-f", &path, "-db"],
        dir.join("haproxy.out"),
    )?;
    g.wait_ready(listen, Duration::from_secs(10))?;
    Ok(g)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haproxy_config_matches_the_anchor_shape() {
        let cfg = haproxy_config(
            "127.0.0.1:18080".parse().expect("addr"),
            &["127.0.0.1:18081".parse().expect("addr")],
        );
        for needle in [
            "nbthread 1",
            "mode tcp",
            "bind 127.0.0.1:18080",
            "balance roundrobin",
            "server b1 127.0.0.1:18081",
        ] {
            assert!(cfg.contains(needle), "missing {needle}:\n{cfg}");
        }
    }

    #[test]
    fn cpu_time_of_this_process_grows_with_work() {
        let pid = std::process::id();
        let before = cpu_time(pid, None).expect("schedstat readable");
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(50) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let after = cpu_time(pid, None).expect("schedstat readable");
        assert!(after > before, "{before:?} -> {after:?}");
        assert_eq!(
            cpu_time(pid, Some("no-thread-has-this-name")),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn missing_tool_is_none_not_an_error() {
        assert!(find_tool("berth-no-such-tool-xyz").is_none());
    }
}
