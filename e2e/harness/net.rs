//! Hosts as Linux network namespaces on a private bridge.
//!
//! Test `id` (1..=250) owns: bridge `berthbr{id}` in the root namespace with 10.231.{id}.1/24,
//! namespaces `berth-e2e{id}-h{i}` (i = 1..=n) each with `lo` up and an `eth0` (veth, peer
//! `bth{id}v{i}` on the bridge) at 10.231.{id}.{10+i}/24, default route via the bridge. Only
//! these addresses are ever targeted. The root namespace reaches every host through the bridge
//! (that is where the CLI and the HTTP load run).
//!
//! The host's firewall may drop bridged traffic (Docker sets FORWARD to DROP and loads
//! br_netfilter), so one `FORWARD -i berthbr{id} -o berthbr{id} -j ACCEPT` rule is inserted and
//! removed with the bridge. Partitions are `iptables -j DROP` on `eth0` inside a namespace, so
//! processes on the same host still reach each other over loopback.
//!
//! [`Net::create`] takes an exclusive lock for its id (`/tmp/berth-e2e-{id}.lock`, so two runs
//! of the suite on one machine wait for each other instead of colliding), then removes leftovers of an earlier crashed run with the same id (processes
//! still running in those namespaces, the namespaces, the bridge, the rule); [`Net`]'s `Drop`
//! tears everything down again, also when the test panicked.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One simulated machine.
#[derive(Debug, Clone)]
pub struct Host {
    pub ns: String,
    pub ip: Ipv4Addr,
}

/// The bridge and the hosts of one test.
#[derive(Debug)]
pub struct Net {
    pub id: u8,
    pub hosts: Vec<Host>,
    /// Exclusive lock on `/tmp/berth-e2e-{id}.lock` while the hosts exist (released by the
    /// kernel when this process dies, so a crashed run never blocks the next one).
    _lock: std::fs::File,
}

/// Take the per-id lock, so that two runs of the suite on one machine (say, two developers'
/// `cargo nextest run --workspace`) never build or tear down each other's hosts.
fn lock_id(id: u8) -> Result<std::fs::File, String> {
    let path = std::env::temp_dir().join(format!("berth-e2e-{id}.lock"));
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        #[allow(clippy::incompatible_msrv)] // File::try_lock: Rust 1.89; the suite runs on 1.95
        match f.try_lock() {
            Ok(()) => return Ok(f),
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200))
            }
            Err(e) => {
                return Err(format!(
                    "cannot lock {} (another e2e run on this machine is using hosts #{id}): {e}",
                    path.display()
                ))
            }
        }
    }
}

/// Run a command, returning stdout or an error naming the command and its stderr.
pub fn sh(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `{}`: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Can this process create network namespaces? (`Err` explains why not.)
pub fn netns_available() -> Result<(), String> {
    let probe = format!("berth-e2e-probe-{}", std::process::id());
    sh(&["ip", "netns", "add", &probe]).map_err(|e| {
        format!(
            "network namespaces are not usable here (the e2e suite needs root and iproute2): {e}"
        )
    })?;
    let _ = sh(&["ip", "netns", "del", &probe]);
    sh(&["iptables", "-L", "FORWARD", "-n"])
        .map_err(|e| format!("iptables is not usable here (the e2e suite needs it): {e}"))?;
    Ok(())
}

fn forward_rule(bridge: &str) -> Vec<String> {
    ["FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn iptables(op: &str, rule: &[String]) -> Result<String, String> {
    let mut args = vec!["iptables", op];
    args.extend(rule.iter().map(String::as_str));
    sh(&args)
}

/// Kill every process still running inside namespace `ns` (only processes this harness started
/// ever run there), waiting until they are gone.
pub fn kill_namespace_processes(ns: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids: Vec<String> = match sh(&["ip", "netns", "pids", ns]) {
            Ok(out) => out.split_whitespace().map(str::to_string).collect(),
            Err(_) => return,
        };
        if pids.is_empty() || Instant::now() > deadline {
            return;
        }
        for pid in &pids {
            let _ = sh(&["kill", "-9", pid]);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Net {
    fn ns_prefix(id: u8) -> String {
        format!("berth-e2e{id}-h")
    }

    /// Remove whatever an earlier (crashed) run with this id left behind.
    pub fn cleanup_leftovers(id: u8) {
        let prefix = Self::ns_prefix(id);
        if let Ok(list) = sh(&["ip", "netns", "list"]) {
            for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
                if ns.starts_with(&prefix) {
                    kill_namespace_processes(ns);
                    let _ = sh(&["ip", "netns", "del", ns]);
                }
            }
        }
        // A veth whose namespace outlived `ip netns del` (a process still in it) keeps its peer.
        for i in 1..=9 {
            let veth = format!("bth{id}v{i}");
            if sh(&["ip", "link", "show", &veth]).is_ok() {
                let _ = sh(&["ip", "link", "del", &veth]);
            }
        }
        let bridge = format!("berthbr{id}");
        if sh(&["ip", "link", "show", &bridge]).is_ok() {
            let _ = sh(&["ip", "link", "del", &bridge]);
        }
        let rule = forward_rule(&bridge);
        while iptables("-C", &rule).is_ok() {
            if iptables("-D", &rule).is_err() {
                break;
            }
        }
    }

    /// Build the bridge and `n` hosts for test `id`.
    pub fn create(id: u8, n: usize) -> Result<Net, String> {
        assert!((1..=250).contains(&id) && n <= 9);
        let lock = lock_id(id)?;
        Self::cleanup_leftovers(id);
        let bridge = format!("berthbr{id}");
        // From here on, Drop cleans up whatever was created.
        let mut net = Net {
            id,
            hosts: Vec::new(),
            _lock: lock,
        };
        sh(&["ip", "link", "add", &bridge, "type", "bridge"])?;
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("10.231.{id}.1/24"),
            "dev",
            &bridge,
        ])?;
        sh(&["ip", "link", "set", &bridge, "up"])?;
        iptables("-I", &forward_rule(&bridge))?;
        for i in 1..=n {
            let ns = format!("{}{i}", Self::ns_prefix(id));
            let veth = format!("bth{id}v{i}");
            let ip = Ipv4Addr::new(10, 231, id, 10 + i as u8);
            sh(&["ip", "netns", "add", &ns])?;
            net.hosts.push(Host { ns: ns.clone(), ip });
            sh(&[
                "ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            sh(&["ip", "link", "set", &veth, "master", &bridge, "up"])?;
            sh(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                "eth0",
            ])?;
            sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
            sh(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
            sh(&[
                "ip",
                "-n",
                &ns,
                "route",
                "add",
                "default",
                "via",
                &format!("10.231.{id}.1"),
            ])?;
        }
        Ok(net)
    }

    /// Cut host `i` (0-based) off the network: every packet in or out of its `eth0` is dropped.
    pub fn partition(&self, i: usize) {
        let ns = &self.hosts[i].ns;
        sh(&[
            "ip", "netns", "exec", ns, "iptables", "-A", "INPUT", "-i", "eth0", "-j", "DROP",
        ])
        .expect("partition: iptables INPUT");
        sh(&[
            "ip", "netns", "exec", ns, "iptables", "-A", "OUTPUT", "-o", "eth0", "-j", "DROP",
        ])
        .expect("partition: iptables OUTPUT");
    }

    /// Undo [`Net::partition`].
    pub fn heal(&self, i: usize) {
        let ns = &self.hosts[i].ns;
        sh(&["ip", "netns", "exec", ns, "iptables", "-F", "INPUT"]).expect("heal: flush INPUT");
        sh(&["ip", "netns", "exec", ns, "iptables", "-F", "OUTPUT"]).expect("heal: flush OUTPUT");
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for h in &self.hosts {
            kill_namespace_processes(&h.ns);
        }
        Self::cleanup_leftovers(self.id);
    }
}

/// Run `f` on a new thread that has joined network namespace `ns` (`/var/run/netns/NS`):
/// every socket it opens lives in that host, as a client on that machine would. The thread's
/// own tokio runtime (current-thread) is handed to `f`.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce(&tokio::runtime::Runtime) -> T + Send + 'static,
) -> std::thread::JoinHandle<Result<T, String>> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).map_err(|e| format!("open {path}: {e}"))?;
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("setns {path}: {e}"))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("runtime in {path}: {e}"))?;
        Ok(f(&rt))
    })
}
