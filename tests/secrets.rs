//! The join token over the real binary: `berth server --init` with stdout not a terminal
//! (as under systemd) prints where the token is and how to read it, never the token;
//! `berth token show` gives it to the admin; and neither the server nor an agent joining with
//! the token writes the secret or the admin key to its output, even at RUST_LOG=debug.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

/// A `berth` process whose stdout and stderr go to files (read them while it runs).
struct Proc {
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

impl Proc {
    fn spawn(dir: &Path, name: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let out = dir.join(format!("{name}.out"));
        let err = dir.join(format!("{name}.err"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
        cmd.args(args)
            .env("RUST_LOG", "debug")
            .env_remove("BERTH_TOKEN")
            .env_remove("BERTH_SERVER")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Proc {
            child: cmd.spawn().unwrap(),
            out,
            err,
        }
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn output(&self) -> String {
        format!(
            "{}{}",
            self.stdout(),
            std::fs::read_to_string(&self.err).unwrap_or_default()
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn berth(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("BERTH_SERVER")
        .output()
        .unwrap()
}

/// Poll `f` until it returns Some, failing after [`T`] with `what` and `context()`.
fn wait_for<R>(what: &str, context: impl Fn() -> String, mut f: impl FnMut() -> Option<R>) -> R {
    let deadline = Instant::now() + T;
    loop {
        if let Some(r) = f() {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}:\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn init_keeps_the_token_off_a_non_terminal_stdout_token_show_gives_it_to_the_admin_and_no_log_has_it(
) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let data_s = data.display().to_string();
    let server = Proc::spawn(
        dir.path(),
        "server",
        &[
            "server",
            "--init",
            "--data-dir",
            &data_s,
            "--listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    let admin = data.join("admin.yaml");
    let token_file = data.join("pki").join("token");
    // The banner names the address: "... member 1 at 127.0.0.1:PORT."
    let addr = wait_for(
        "the server's banner",
        || server.output(),
        || {
            let out = server.stdout();
            let rest = out.split(" at ").nth(1)?;
            let addr = rest.split(".\n").next()?.trim().to_string();
            (!addr.is_empty() && out.contains("Join agents")).then_some(addr)
        },
    );
    let token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_string();
    let secret = token.split_once("::").unwrap().1.to_string();
    assert!(secret.len() >= 16, "{token}");
    let banner = server.stdout();
    assert!(
        banner.contains(&token_file.display().to_string())
            && banner.contains(&format!("berth --config {} token show", admin.display())),
        "the banner says where the token is and how to read it:\n{banner}"
    );

    let shown = wait_for(
        "berth token show",
        || server.output(),
        || {
            let o = berth(&admin, &["token", "show"]);
            o.status.success().then_some(o)
        },
    );
    assert_eq!(
        String::from_utf8(shown.stdout).unwrap(),
        format!("{token}\n")
    );

    // An agent joins with the token (from the environment, as documented).
    let agent_data = dir.path().join("agent").display().to_string();
    let agent = Proc::spawn(
        dir.path(),
        "agent",
        &[
            "agent",
            "--server",
            &addr,
            "--name",
            "n1",
            "--data-dir",
            &agent_data,
            "--runtime",
            "process",
            "--listen",
            "127.0.0.1:0",
            "--no-proxy",
        ],
        &[("BERTH_TOKEN", &token)],
    );
    wait_for(
        "node n1 to register",
        || agent.output(),
        || {
            let o = berth(&admin, &["get", "nodes"]);
            String::from_utf8_lossy(&o.stdout)
                .contains("n1")
                .then_some(())
        },
    );

    // The admin key's base64 body lines (any one of them in a log would be a leak).
    let key_lines: Vec<String> = berth_tls::AdminConfig::read(&admin)
        .unwrap()
        .client_key
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .map(str::to_string)
        .collect();
    assert!(!key_lines.is_empty());
    drop(agent);
    drop(server);
    let logs = [
        (
            "server",
            std::fs::read_to_string(dir.path().join("server.out")).unwrap()
                + &std::fs::read_to_string(dir.path().join("server.err")).unwrap(),
        ),
        (
            "agent",
            std::fs::read_to_string(dir.path().join("agent.out")).unwrap()
                + &std::fs::read_to_string(dir.path().join("agent.err")).unwrap(),
        ),
    ];
    for (who, log) in &logs {
        assert!(
            log.contains("DEBUG"),
            "{who} did not log at debug level:\n{log}"
        );
        assert!(
            !log.contains(&secret),
            "the {who}'s output holds the token secret:\n{log}"
        );
        assert!(
            !log.contains("PRIVATE KEY"),
            "the {who}'s output holds a key:\n{log}"
        );
        for k in &key_lines {
            assert!(
                !log.contains(k.as_str()),
                "the {who}'s output holds admin key material"
            );
        }
    }
}
