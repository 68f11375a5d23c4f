//! One `berth` process (server or agent) running inside a host's namespace.
//!
//! Started as `ip netns exec NS <berth binary> ARGS...` (ip execs the binary, so the child's pid
//! is berth's own and SIGKILL reaches it directly). stdout and stderr are appended to one log
//! file, across restarts, with a marker line per start; [`Proc::tail`] is printed when a test
//! fails.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// The berth binary under test (built by cargo for this test target).
pub fn berth_bin() -> &'static str {
    env!("CARGO_BIN_EXE_berth")
}

/// Seconds since the epoch (compare with the processes' RFC 3339 log timestamps).
pub fn unix_now() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:03} (unix time)", d.as_secs(), d.subsec_millis())
}

/// `$PATH` with the berth binary's directory first, as on a machine where berth is installed
/// (the example manifests run `berth demo-server` on the process runtime).
pub fn path_with_berth() -> String {
    let dir = std::path::Path::new(berth_bin())
        .parent()
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    match std::env::var("PATH") {
        Ok(p) if !p.is_empty() => format!("{dir}:{p}"),
        _ => format!("{dir}:/usr/local/bin:/usr/bin:/bin"),
    }
}

#[derive(Debug)]
pub struct Proc {
    pub name: String,
    /// The program run in the namespace (the berth binary unless [`Proc::with_program`]).
    program: String,
    pub ns: String,
    pub args: Vec<String>,
    /// Extra environment variables (e.g. `BERTH_TOKEN`, which keeps the join token out of
    /// `ps`); changed between restarts like `args`.
    pub env: Vec<(String, String)>,
    pub log: PathBuf,
    child: Option<Child>,
    starts: u32,
    /// Enter the namespace with `nsenter --net=` instead of `ip netns exec` (which also
    /// remounts /sys and hides the cgroup mounts a Docker engine needs).
    nsenter: bool,
}

impl Proc {
    pub fn new(name: &str, ns: &str, args: Vec<String>, log: PathBuf) -> Proc {
        Proc {
            name: name.to_string(),
            program: berth_bin().to_string(),
            ns: ns.to_string(),
            args,
            env: Vec::new(),
            log,
            child: None,
            starts: 0,
            nsenter: false,
        }
    }

    /// Start through `nsenter --net=/var/run/netns/NS` (for a Docker engine on the host).
    pub fn via_nsenter(mut self) -> Proc {
        self.nsenter = true;
        self
    }

    /// Run `program` instead of the berth binary (harness self-tests).
    pub fn with_program(mut self, program: &str) -> Proc {
        self.program = program.to_string();
        self
    }

    /// Set (or replace) an environment variable for the next starts.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.remove_env(key);
        self.env.push((key.to_string(), value.to_string()));
    }

    /// Drop an environment variable for the next starts.
    pub fn remove_env(&mut self, key: &str) {
        self.env.retain(|(k, _)| k != key);
    }

    /// Start (or restart) the process with its current `args` and `env`.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open process log");
        let _ = writeln!(
            log,
            "===== e2e: start #{} of {}: {} {}",
            self.starts,
            self.name,
            self.program,
            self.args.join(" ")
        );
        let err = log.try_clone().expect("clone log handle");
        let mut cmd = if self.nsenter {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/var/run/netns/{}", self.ns))
                .arg(&self.program);
            c
        } else {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &self.ns, &self.program]);
            c
        };
        let child = cmd
            .args(&self.args)
            .env("PATH", path_with_berth())
            // Nothing of the caller's own Berth setup leaks in; only what the test sets.
            .env_remove("BERTH_TOKEN")
            .env_remove("BERTH_CONFIG")
            .env_remove("BERTH_SERVER")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env(
                "RUST_LOG",
                std::env::var("E2E_RUST_LOG").unwrap_or_else(|_| "info".to_string()),
            )
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.name));
        self.child = Some(child);
    }

    /// SIGKILL the process and reap it (no-op when not running).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            if let Ok(mut log) = OpenOptions::new().append(true).open(&self.log) {
                let _ = writeln!(
                    log,
                    "===== e2e: killed {} with SIGKILL at {}",
                    self.name,
                    unix_now()
                );
            }
        }
    }

    /// SIGTERM, then SIGKILL if the process has not exited within `grace`.
    pub fn terminate(&mut self, grace: std::time::Duration) {
        let Some(pid) = self.pid() else {
            return;
        };
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let deadline = std::time::Instant::now() + grace;
        while std::time::Instant::now() < deadline {
            if !self.is_running() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        self.kill9();
    }

    /// SIGINT (what Ctrl-C sends), then wait up to `limit` for the process to exit; returns its
    /// exit status, or `None` if it is still running after `limit` (it is then SIGKILLed).
    pub fn interrupt(&mut self, limit: std::time::Duration) -> Option<std::process::ExitStatus> {
        let pid = self.pid()?;
        let _ = std::process::Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status();
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            let c = self.child.as_mut()?;
            if let Ok(Some(status)) = c.try_wait() {
                if let Ok(mut log) = OpenOptions::new().append(true).open(&self.log) {
                    let _ = writeln!(
                        log,
                        "===== e2e: {} exited after SIGINT: {status}",
                        self.name
                    );
                }
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        self.kill9();
        None
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Is the process still alive? (Reaps it and logs its exit status if it died.)
    pub fn is_running(&mut self) -> bool {
        let Some(c) = self.child.as_mut() else {
            return false;
        };
        match c.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                if let Ok(mut log) = OpenOptions::new().append(true).open(&self.log) {
                    let _ = writeln!(log, "===== e2e: {} exited on its own: {status}", self.name);
                }
                self.child = None;
                false
            }
            Err(_) => false,
        }
    }

    /// The last `n` lines of the log.
    pub fn tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}
