//! `berth dev` over the real binary, as a new user runs it, on a host of its own (a network
//! namespace: its API port 127.0.0.1:7440, nodePort 30080 and host-port range collide with
//! nothing else on the machine; `berth dev`, the CLI and curl all run in it, with no flags):
//! started with a fresh `HOME`, `berth apply -f manifests/hello.yaml` (the CLI finds the cluster
//! through the `~/.berth/config` that `berth dev` wrote), `curl http://127.0.0.1:30080/`
//! answers "hello from ..."; Ctrl-C (SIGINT) stops the workloads (their processes are gone)
//! and `berth dev` exits 0; started again with the same `HOME` it resumes: the Deployment and
//! Service are still there and the nodePort answers again.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use crate::harness::cluster::{serial, CliOut};
use crate::harness::net::{netns_available, sh, Net};
use crate::harness::proc::{berth_bin, Proc};
use crate::harness::{repo_manifest, wait_until};

const NET_ID: u8 = 14;
const HELLO_PORT: u16 = 30080;

/// `berth ARGS` on the host (namespace `ns`) with `HOME=home` and nothing else of the caller's
/// Berth setup (at most 30 s: `timeout` kills a hung CLI, reported as exit 124).
fn cli(ns: &str, home: &Path, args: &[&str]) -> CliOut {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "timeout", "30", berth_bin()])
        .args(args)
        .env("HOME", home)
        .env_remove("BERTH_CONFIG")
        .env_remove("BERTH_SERVER")
        .env_remove("BERTH_TOKEN")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run berth {}: {e}", args.join(" ")));
    CliOut {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Processes in the host's namespace other than `berth dev` itself: the workloads.
fn workload_pids(ns: &str, dev_pid: Option<u32>) -> BTreeSet<u32> {
    sh(&["ip", "netns", "pids", ns])
        .expect("ip netns pids")
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .filter(|p| Some(*p) != dev_pid)
        .collect()
}

/// `curl http://127.0.0.1:30080/` on the host until it answers "hello from ..."; returns it.
fn wait_hello(ns: &str, what: &str) -> String {
    let url = format!("http://127.0.0.1:{HELLO_PORT}/");
    wait_until(what, Duration::from_secs(60), || {
        let body = sh(&[
            "ip",
            "netns",
            "exec",
            ns,
            "curl",
            "-sS",
            "--fail",
            "--max-time",
            "3",
            &url,
        ])?;
        if body.starts_with("hello from ") {
            Ok(body)
        } else {
            Err(format!("curl {url}: {body:?}"))
        }
    })
    .0
}

/// Wait until the log of `dev` says it is running (the second start must say "(resumed)").
fn wait_running(dev: &mut Proc, starts: usize) -> String {
    wait_until(
        "berth dev to say it is running",
        Duration::from_secs(60),
        || {
            if !dev.is_running() {
                return Err(format!("berth dev exited:\n{}", dev.tail(30)));
            }
            let log = std::fs::read_to_string(&dev.log).unwrap_or_default();
            let runs: Vec<&str> = log
                .lines()
                .filter(|l| l.starts_with("berth dev is running"))
                .collect();
            match runs.get(starts - 1) {
                Some(line) => Ok(line.to_string()),
                None => Err(format!("{} start banner(s) so far", runs.len())),
            }
        },
    )
    .0
}

/// Prints the last 60 lines of berth dev's log when the test fails (dropped before the temp
/// dir that holds the log).
struct TailOnPanic(std::path::PathBuf);
impl Drop for TailOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.0).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!(
                "--- last lines of {}:\n{}",
                self.0.display(),
                lines[lines.len().saturating_sub(60)..].join("\n")
            );
        }
    }
}

#[test]
fn dev_serves_hello_stops_its_workloads_on_ctrl_c_and_resumes_its_state() {
    if !berth_testkit::skip::require("e2e test dev", netns_available()) {
        return;
    }
    let _serial = serial();
    let net = Net::create(NET_ID, 1).expect("host for berth dev");
    let host = net.hosts[0].clone();
    let dir = tempfile::Builder::new()
        .prefix("berth-e2e-dev-")
        .tempdir()
        .expect("temp dir");
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).expect("HOME dir");
    let mut dev = Proc::new(
        "berth-dev",
        &host.ns,
        vec!["dev".into()],
        dir.path().join("dev.log"),
    );
    let _tail = TailOnPanic(dev.log.clone());
    dev.set_env("HOME", &home.display().to_string());
    dev.start();
    let banner = wait_running(&mut dev, 1);
    assert!(
        !banner.contains("(resumed)"),
        "first start resumed: {banner}"
    );
    assert!(
        home.join(".berth/config").is_file(),
        "berth dev did not write ~/.berth/config:\n{}",
        dev.tail(30)
    );

    let out = cli(
        &host.ns,
        &home,
        &["apply", "-f", &repo_manifest("hello.yaml")],
    );
    assert!(out.ok(), "berth apply -f manifests/hello.yaml: {out}");
    let answer = wait_hello(&host.ns, "the hello nodePort to answer");
    eprintln!("dev: nodePort {HELLO_PORT} answers {:?}", answer.trim());
    let dev_pid = dev.pid();
    // All three replicas run as processes on the host.
    let (workloads, _) = wait_until(
        "3 hello workload processes",
        Duration::from_secs(30),
        || {
            let pids = workload_pids(&host.ns, dev_pid);
            if pids.len() >= 3 {
                Ok(pids)
            } else {
                Err(format!("workload pids: {pids:?}"))
            }
        },
    );

    // Ctrl-C: the workloads stop and berth dev exits 0.
    let status = dev.interrupt(Duration::from_secs(60)).unwrap_or_else(|| {
        panic!(
            "berth dev did not exit within 60 s of SIGINT:\n{}",
            dev.tail(30)
        )
    });
    assert!(
        status.success(),
        "berth dev exited with {status} after SIGINT:\n{}",
        dev.tail(30)
    );
    let log = std::fs::read_to_string(&dev.log).unwrap_or_default();
    assert!(
        log.contains("berth dev: stopped"),
        "no clean stop in the log:\n{}",
        dev.tail(30)
    );
    let left: BTreeSet<u32> = workload_pids(&host.ns, None);
    let survivors: Vec<u32> = workloads.intersection(&left).copied().collect();
    assert!(
        survivors.is_empty(),
        "workload processes {survivors:?} still run after berth dev stopped (all in the namespace: {left:?})"
    );

    // Start again with the same HOME: the state is kept and the nodePort answers again.
    dev.start();
    let banner = wait_running(&mut dev, 2);
    assert!(
        banner.contains("(resumed)"),
        "second start did not resume: {banner}"
    );
    for (kind, name) in [("deployment", "hello"), ("service", "hello")] {
        let out = cli(&host.ns, &home, &["get", kind, name, "-o", "json"]);
        assert!(out.ok(), "berth get {kind} {name} after resume: {out}");
        let v: serde_json::Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("berth get {kind} {name} -o json: {e}: {}", out.stdout));
        assert_eq!(v["metadata"]["name"], name, "{out}");
    }
    wait_hello(&host.ns, "the hello nodePort to answer after resume");

    let status = dev.interrupt(Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "berth dev (resumed) did not stop cleanly on SIGINT: {status:?}\n{}",
        dev.tail(30)
    );
}
