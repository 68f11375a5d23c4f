//! What the `berth dev`-on-Docker test binaries share: start/stop `berth dev` and clean up its
//! node's containers and the test's images, run the CLI against it, talk to the engine, wait
//! on conditions.
#![allow(dead_code)]

use std::process::{Child, Command};
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
