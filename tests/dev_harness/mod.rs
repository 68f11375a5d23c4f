//! What the `berth dev`-on-Docker test binaries share: start/stop `berth dev` and clean up its
//! node's containers and the test's images, run the CLI against it, talk to the engine, wait
//! on conditions.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| format!("docker: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Stops `berth dev` and removes whatever containers its node left, even on panic.
pub struct Dev {
    pub child: Child,
    pub node: String,
    /// Image names the test made.
    pub remove_images: Vec<String>,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = nix_kill(self.child.id());
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Ok(ids) = docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=berth.node={}", self.node),
        ]) {
            for id in ids.split_whitespace() {
                let _ = docker(&["rm", "-f", id]);
            }
        }
        // The node's pod network (berth dev leaves it for the next start).
        let _ = docker(&["network", "rm", &format!("berth-{}", self.node)]);
        for image in &self.remove_images {
            let _ = docker(&["rmi", image]);
        }
    }
}

/// SIGINT, as Ctrl-C: berth dev stops its workloads gracefully.
pub fn nix_kill(pid: u32) -> std::io::Result<()> {
    let status = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other("kill failed"))
    }
}

pub fn berth(home: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(args)
        .env("HOME", home)
        .env_remove("RUST_LOG")
        .output()
        .expect("run berth");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `berth dev` on Docker in `tmp` with its registry on a free port: (the guard, HOME, the
/// registry's port). A port taken between `free_port` and berth dev's bind (another test's
/// listener) makes it start again on new ones.
pub fn start_dev(tmp: &std::path::Path, node: &str) -> (Dev, std::path::PathBuf, u16) {
    let home = tmp.join("home");
    std::fs::create_dir_all(&home).expect("home");
    let mut seen = String::new();
    for attempt in 0..3 {
        let (api, reg) = (free_port(), free_port());
        let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
            .args([
                "dev",
                "--data-dir",
                &tmp.join(format!("dev{attempt}")).display().to_string(),
                "--listen",
                &format!("127.0.0.1:{api}"),
                "--registry-listen",
                &format!("127.0.0.1:{reg}"),
                "--name",
                node,
            ])
            .env("HOME", &home)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start berth dev");
        let stdout = child.stdout.take().expect("stdout");
        let dev = Dev {
            child,
            node: node.to_string(),
            remove_images: Vec::new(),
        };
        // Up to the registry line, or the end of output when berth dev could not start.
        seen.clear();
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            let Ok(line) = line else { break };
            seen.push_str(&line);
            seen.push('\n');
            if line.trim_start().starts_with("registry ") {
                break;
            }
        }
        if seen.contains(&format!("registry     127.0.0.1:{reg} ")) {
            assert!(seen.contains("runtime: docker"), "{seen}");
            // Keep reading, so a later line never meets a closed pipe.
            std::thread::spawn(move || lines.for_each(drop));
            return (dev, home, reg);
        }
        drop(dev);
    }
    panic!("berth dev did not start with its registry three times; last output:\n{seen}");
}
