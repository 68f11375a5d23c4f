//! Helpers shared by the CLI test binaries: run a `berth` command line through the library
//! entry point with captured stdout/stderr, exactly as the binary runs it.
#![allow(clippy::unwrap_used, dead_code)]

use berth::cli::{self, Cli, Io};
use clap::Parser;
use tokio_util::sync::CancellationToken;

pub struct Out {
    pub ok: bool,
    /// The exit status the binary would end with.
    pub code: u8,
    pub out: String,
    pub err: String,
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ok={} exit={} stdout:\n{}\nstderr:\n{}",
            self.ok, self.code, self.out, self.err
        )
    }
}

/// Where a command goes: `--server` and the `--config` file with the admin credential.
pub struct Target {
    pub server: String,
    pub config: std::path::PathBuf,
}

impl Target {
    /// `server` (one or more HOST:PORT) of `cluster`, as its admin.
    pub fn new(cluster: &berth_apiserver::testing::TestCluster, server: &str) -> Target {
        Target {
            server: server.to_string(),
            config: cluster.admin_config_path(),
        }
    }

    /// `server` with an admin credential of a throwaway CA written under `dir` (for servers
    /// that are not there).
    pub fn nowhere(server: &str, dir: &std::path::Path) -> Target {
        let ca = berth_tls::ClusterCa::generate().unwrap();
        let config = dir.join("admin.yaml");
        berth_tls::AdminConfig::new(&ca, vec![server.to_string()])
            .unwrap()
            .write(&config)
            .unwrap();
        Target {
            server: server.to_string(),
            config,
        }
    }
}

pub async fn berth(t: &Target, args: &[&str]) -> Out {
    let config = t.config.display().to_string();
    let argv = ["berth", "--server", &t.server, "--config", &config]
        .into_iter()
        .chain(args.iter().copied());
    let cli = Cli::try_parse_from(argv).unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let r = {
        let mut io = Io {
            out: &mut out,
            err: &mut err,
        };
        cli::run(cli, &mut io, CancellationToken::new()).await
    };
    let mut err = String::from_utf8(err).unwrap();
    if let Err(e) = &r {
        err.push_str(&format!("error: {}\n", cli::error_message(e)));
    }
    Out {
        ok: r.is_ok(),
        code: r.as_ref().err().map(cli::exit_code).unwrap_or(0),
        out: String::from_utf8(out).unwrap(),
        err,
    }
}
