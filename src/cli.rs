//! The `berth` command line: clap parsing, tracing and signal setup, and dispatch.
//!
//! Adding a subcommand = one [`Command`] variant + one `async fn run(&Ctx, Args, &mut Io)`
//! in its module under `src/cli/`, plus one arm in [`run`].
//!
//! Roles (`server`, `agent`) run until Ctrl-C/SIGTERM; everything else is a kubectl-like
//! client command that talks to the API through [`berth_client::Client`]. Output goes to
//! [`Io`] (stdout/stderr in the binary, buffers in tests); any failure returns an error that
//! `main` prints as `error: ...` with the exit status [`exit_code`] picks (see [`exit`]).

pub mod apply;
pub mod build;
pub mod certificate;
pub mod cluster;
pub mod config;
pub mod create;
pub mod delete;
pub mod describe;
pub mod diff;
pub mod exec;
pub mod get;
pub mod images;
pub mod kubeconfig;
pub mod logs;
pub mod membership;
pub mod node;
pub mod portforward;
pub mod push;
pub mod registry;
pub mod rollout;
pub mod scale;
pub mod secrets_encryption;
pub mod snapshot;
pub mod table;
pub mod token;
pub mod trust;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::anyhow;
use berth_client::{Client, ClientConfig, ClientError, Kind};
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

/// The exit statuses of `berth`, as `--help` and the README list them.
pub mod exit {
    /// The command failed; stderr says why. `diff`: there are changes (not a failure).
    pub const FAILURE: u8 = 1;
    /// `diff`: the manifests differ from the cluster (same number as [`FAILURE`], as in
    /// `kubectl diff` and `diff(1)`; a failed `diff` exits [`USAGE`] or more).
    pub const CHANGES: u8 = 1;
    /// The command line was wrong (unknown flag, missing argument).
    pub const USAGE: u8 = 2;
    /// A write's outcome is unknown: the leader changed while it was in flight. Every write
    /// is safe to repeat: run the command again.
    pub const OUTCOME_UNKNOWN: u8 = 3;
    /// `rollout status --timeout`, `apply --wait --timeout`: the time ran out while the
    /// rollout was still going.
    pub const TIMED_OUT: u8 = 4;
    /// `rollout status`, `apply --wait`: the rollout failed (progress deadline exceeded, or
    /// `apply --wait` saw a new pod crash-looping or failing to pull its image).
    pub const ROLLOUT_FAILED: u8 = 5;
    /// `rollout status --until complete`, `apply --wait`: a blue-green rollout is paused
    /// awaiting `berth rollout promote` (no auto-promotion will come).
    pub const PAUSED: u8 = 6;
    /// `rollout status`, `apply --wait`: the rollout was aborted (blue-green) or reverted
    /// (`autoRevert`): the previous revision serves.
    pub const REVERTED: u8 = 7;

    /// The exit status table, as `--help` and the README print it.
    pub const TABLE: &[(u8, &str)] = &[
        (0, "success; `diff`: no changes"),
        (
            FAILURE,
            "failure, stderr says why; `diff`: the manifests differ from the cluster",
        ),
        (USAGE, "bad command line; `diff`: it failed"),
        (
            OUTCOME_UNKNOWN,
            "outcome unknown: the leader changed while a write was in flight, it is safe to \
             run the command again",
        ),
        (
            TIMED_OUT,
            "timed out (`--timeout` of `rollout status`, `apply --wait`) while the rollout was \
             still going",
        ),
        (
            ROLLOUT_FAILED,
            "the rollout failed: progress deadline exceeded, or pods crash-looping or failing \
             to pull their image (`apply --wait`)",
        ),
        (
            PAUSED,
            "paused awaiting `rollout promote` (`rollout status --until complete`, `apply \
             --wait`)",
        ),
        (
            REVERTED,
            "the rollout was aborted or reverted (`autoRevert`): the previous revision serves",
        ),
    ];

    /// The `--help` footer.
    pub const HELP: &str = "Exit status: 0 success (`diff`: no changes); 1 failure, stderr \
says why (`diff`: changes); 2 bad command line (`diff`: it failed); 3 outcome unknown: the \
leader changed while a write was in flight, it is safe to run the command again; 4 timed out \
(`--timeout`) while the rollout was still going; 5 the rollout failed (progress deadline, \
crash-looping pods, image pull errors); 6 paused awaiting `rollout promote`; 7 the rollout \
was aborted or reverted.";
}

/// A command's end with a given exit status (see [`exit`]). `message` is printed as
/// `error: ...` unless empty (`diff` found changes: the diff itself said it).
#[derive(Debug)]
pub struct Exit {
    pub code: u8,
    pub message: String,
}

impl Exit {
    pub fn new(code: u8, message: impl Into<String>) -> Exit {
        Exit {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

/// Waiting for something ran out of time (`rollout status --timeout`): exit status
/// [`exit::TIMED_OUT`].
#[derive(Debug)]
pub struct TimedOut(pub String);

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TimedOut {}

/// The exit status for a failed command (see [`exit`]).
pub fn exit_code(err: &anyhow::Error) -> u8 {
    for e in err.chain() {
        if let Some(Exit { code, .. }) = e.downcast_ref::<Exit>() {
            return *code;
        }
        if let Some(ClientError::OutcomeUnknown(_)) = e.downcast_ref::<ClientError>() {
            return exit::OUTCOME_UNKNOWN;
        }
        if e.downcast_ref::<TimedOut>().is_some() {
            return exit::TIMED_OUT;
        }
        if let Some(exec::CommandExited(code)) = e.downcast_ref::<exec::CommandExited>() {
            return *code;
        }
    }
    exit::FAILURE
}

/// Berth: a Kubernetes-style container orchestrator.
#[derive(Debug, Parser)]
#[command(
    name = "berth",
    version,
    about,
    propagate_version = true,
    after_help = exit::HELP
)]
pub struct Cli {
    #[command(flatten, next_help_heading = "Connection")]
    pub conn: ConnArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Connection flags. Accepted before the subcommand (`berth --server X get pods`) and after
/// it (`berth get pods --server X`; this one wins). Not clap-global, because `berth agent`
/// has a `--server` of its own.
#[derive(Debug, Clone, Default, Args)]
pub struct ConnArgs {
    /// API servers, HOST:PORT[,HOST:PORT..] (else $BERTH_SERVER, the config file, or
    /// 127.0.0.1:7440).
    #[arg(long, value_name = "HOST:PORT[,..]")]
    pub server: Option<String>,
    /// CLI config file (else $BERTH_CONFIG, else ~/.berth/config).
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// How long a request may keep retrying across servers (e.g. during a leader
    /// election), e.g. 15s, 500ms, 1m [default: 15s]. Nothing listening fails at once.
    #[arg(long = "request-timeout", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
}

impl ConnArgs {
    /// These flags, falling back to `outer` for the ones not given.
    pub fn or(&self, outer: &ConnArgs) -> ConnArgs {
        ConnArgs {
            server: self.server.clone().or_else(|| outer.server.clone()),
            config: self.config.clone().or_else(|| outer.config.clone()),
            timeout: self.timeout.or(outer.timeout),
        }
    }
}

/// A client command's own flags plus the connection flags.
#[derive(Debug, Clone, Args)]
pub struct WithConn<A: Args> {
    #[command(flatten)]
    pub args: A,
    #[command(flatten, next_help_heading = "Connection")]
    pub conn: ConnArgs,
}

/// The default of `--request-timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run an API server (a Raft member; runs the scheduler and controllers while leader)
    /// until Ctrl-C/SIGTERM.
    Server(crate::roles::ServerCmd),
    /// Run a node agent (runtime, probes, Service proxy) until Ctrl-C/SIGTERM; workloads
    /// keep running when it stops.
    Agent(berth_agent::AgentArgs),
    /// Run a whole single-node cluster in this process (API server, control loops, agent);
    /// Ctrl-C stops its workloads; running it again resumes.
    Dev(crate::roles::DevArgs),
    /// A tiny built-in HTTP workload (version, pod name, /healthz) for demos and tests.
    DemoServer(crate::demo::DemoArgs),
    /// Create or update objects from manifests, all or nothing: berth apply -f FILE|DIR|-
    /// [--dry-run]
    #[command(after_help = apply::HELP)]
    Apply(WithConn<apply::ApplyArgs>),
    /// Create a Secret or ConfigMap from literals and files: berth create secret generic NAME
    /// --from-literal K=V, berth create configmap NAME --from-file PATH
    Create(WithConn<create::CreateArgs>),
    /// Show objects: berth get deploy [NAME] [-n NS | -A] [-l SEL] [-o yaml|json|wide|name] [-w]
    Get(WithConn<get::GetArgs>),
    /// Show what `apply -f FILE` would change, field by field, as the server compares (exit 0
    /// no changes, 1 changes, 2 or more it failed)
    #[command(after_help = diff::HELP)]
    Diff(WithConn<diff::DiffArgs>),
    /// Show one object in detail, with its conditions and events.
    Describe(WithConn<describe::DescribeArgs>),
    /// Delete objects by file or by KIND NAME...
    Delete(WithConn<delete::DeleteArgs>),
    /// Set a deployment's replica count.
    Scale(WithConn<scale::ScaleArgs>),
    /// Print a container's log: berth logs POD|deploy/NAME [-c C] [-f] [--tail N] [-p]
    Logs(WithConn<logs::LogsArgs>),
    /// Forward local ports to a pod through the API server: berth port-forward POD|deploy/NAME
    /// [LOCAL:]REMOTE... [--address localhost]
    PortForward(WithConn<portforward::PortForwardArgs>),
    /// Run a command in a pod's container and exit with its exit code: berth exec POD [-c C]
    /// [-i] [-t] -- COMMAND [ARG...]
    Exec(WithConn<exec::ExecArgs>),
    /// Manage a deployment's rollout: status, history, undo, restart, promote, abort.
    Rollout(WithConn<rollout::RolloutArgs>),
    /// Mark nodes unschedulable.
    Cordon(WithConn<node::CordonArgs>),
    /// Mark nodes schedulable again.
    Uncordon(WithConn<node::CordonArgs>),
    /// Cordon a node and delete its pods so their controllers recreate them elsewhere.
    Drain(WithConn<node::DrainArgs>),
    /// Cluster membership and health.
    Cluster(WithConn<cluster::ClusterArgs>),
    /// Join tokens and API tokens: berth token show|rotate server|agent, berth token
    /// create|list|revoke (admin only).
    Token(WithConn<token::TokenArgs>),
    /// Certificates the cluster issued and their expiry: berth certificate list.
    Certificate(WithConn<certificate::CertificateArgs>),
    /// Node credentials: berth node revoke NAME (admin only).
    Node(WithConn<certificate::NodeArgs>),
    /// Back up the store: berth snapshot save FILE (admin), berth snapshot status FILE.
    Snapshot(WithConn<snapshot::SnapshotArgs>),
    /// Secrets encryption at rest: berth secrets-encryption status|rotate --data-dir DATA.
    SecretsEncryption(WithConn<secrets_encryption::SecretsEncryptionArgs>),
    /// Print a kubeconfig for kubectl and client libraries with this CLI's credential:
    /// berth kubeconfig > ~/.kube/config
    Kubeconfig(WithConn<kubeconfig::KubeconfigArgs>),
    /// Build an image with the local Docker engine and push it to the cluster registry:
    /// berth build -t NAME:TAG [-f Dockerfile] [--build-arg K=V] DIR [--push]
    Build(WithConn<build::BuildArgs>),
    /// Push an image from the local Docker engine to the cluster registry with this CLI's
    /// credential (no Docker daemon configuration): berth push NAME[:TAG]
    Push(WithConn<push::PushArgs>),
    /// The cluster registry: berth registry token --for NAME (a push token for CI).
    Registry(WithConn<registry::RegistryArgs>),
    /// The cluster registry's images: repository, tag, digest, size, nodes that have it.
    Images(WithConn<images::ImagesArgs>),
    /// Image trust: keys (generate, add, list, remove) and the require-signed-images policy.
    Trust(WithConn<trust::TrustArgs>),
    /// Sign an image of the cluster registry with a trusted key: berth sign
    /// IMAGE[:TAG|@DIGEST] --key NAME|PATH
    Sign(WithConn<trust::SignArgs>),
    /// Print the client version.
    Version,
}

impl Command {
    /// Long-running roles log at info by default; client commands only warn.
    pub fn is_role(&self) -> bool {
        matches!(
            self,
            Command::Server(_) | Command::Agent(_) | Command::Dev(_) | Command::DemoServer(_)
        )
    }
}

/// Where a command writes.
pub struct Io<'a> {
    pub out: &'a mut (dyn Write + Send),
    pub err: &'a mut (dyn Write + Send),
}

/// What every client command needs: the resolved servers and a client for them.
pub struct Ctx {
    pub servers: Vec<String>,
    pub client_config: ClientConfig,
    /// Cancelled on Ctrl-C (ends `get -w`).
    pub shutdown: CancellationToken,
}

impl Ctx {
    pub fn new(g: &ConnArgs, shutdown: CancellationToken) -> anyhow::Result<Ctx> {
        let env = std::env::var("BERTH_SERVER").ok();
        let config_path = g.config.clone().or_else(|| {
            std::env::var_os(config::CONFIG_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        });
        let default_cfg = config::default_config_path();
        let resolved = config::resolve(
            g.server.as_deref(),
            env.as_deref(),
            config_path.as_deref(),
            default_cfg.as_deref(),
        )?;
        if let Some(tls) = &resolved.tls {
            Self::check_credential(tls, resolved.config_path.as_deref())?;
        }
        Ok(Ctx {
            servers: resolved.servers,
            client_config: ClientConfig {
                deadline: g.timeout.unwrap_or(DEFAULT_TIMEOUT),
                max_refused_rounds: Some(3),
                tls: resolved.tls,
                ..ClientConfig::default()
            },
            shutdown,
        })
    }

    pub fn client(&self) -> anyhow::Result<Client> {
        if self.client_config.tls.is_none() {
            anyhow::bail!(
                "no credentials: Berth servers require mutual TLS and no config file with a \
                 certificate was found. `berth dev` writes ~/.berth/config; for a cluster, use \
                 the admin config `berth server --init` wrote to DATA/admin.yaml: pass \
                 --config DATA/admin.yaml, set BERTH_CONFIG, or copy it to ~/.berth/config"
            );
        }
        Ok(Client::new(&self.servers, self.client_config.clone())?)
    }

    /// Check the credential before dialing: a certificate that its own CA does not vouch for,
    /// or that has expired, gets a clear error here instead of a closed connection.
    fn check_credential(
        tls: &berth_tls::ClientTls,
        path: Option<&std::path::Path>,
    ) -> anyhow::Result<()> {
        let file = path
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "the config file".into());
        berth_tls::verify_client_cert(
            &tls.ca_cert_pem,
            &tls.credential.cert_pem,
            std::time::SystemTime::now(),
        )
        .map_err(|e| {
            anyhow!(
                "{file}: clientCertificate is not usable with certificateAuthority ({e}); get a \
                 fresh admin config from the cluster (DATA/admin.yaml of the server that ran \
                 --init, or ~/.berth/config written by `berth dev`)"
            )
        })?;
        Ok(())
    }
}

/// Parse "5s", "250ms", "2m", "1h" or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 5s, 500ms, 2m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("invalid duration unit in {s:?}: use ms, s, m or h")),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// Parse a kind as users type it (`deploy`, `svc`, `pods`, ...), with a helpful error.
pub fn parse_kind(s: &str) -> anyhow::Result<Kind> {
    Kind::parse(s).ok_or_else(|| {
        anyhow!(
            "unknown resource type {s:?}; known types: deployments (deploy), replicasets (rs), \
             services (svc), pods (po), endpoints (ep), nodes (no), events (ev)"
        )
    })
}

/// Split `KIND NAME...` or `KIND/NAME ...` into (kind, names).
pub fn parse_kind_and_names(args: &[String]) -> anyhow::Result<(Kind, Vec<String>)> {
    let Some(first) = args.first() else {
        return Err(anyhow!(
            "missing resource type, e.g. `deploy` or `deploy/web`"
        ));
    };
    if let Some((k, name)) = first.split_once('/') {
        let kind = parse_kind(k)?;
        let mut names = vec![name.to_string()];
        for a in &args[1..] {
            match a.split_once('/') {
                Some((k2, n)) if parse_kind(k2)? == kind => names.push(n.to_string()),
                Some(_) => return Err(anyhow!("mixed resource types in {args:?}")),
                None => {
                    return Err(anyhow!(
                        "{a:?}: when the first argument is KIND/NAME, all must be KIND/NAME"
                    ))
                }
            }
        }
        return Ok((kind, names));
    }
    Ok((parse_kind(first)?, args[1..].to_vec()))
}

/// Run a parsed command. Client commands get a [`Ctx`]; roles get the shutdown token.
pub async fn run(cli: Cli, io: &mut Io<'_>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let outer = cli.conn;
    let ctx = |c: &ConnArgs| Ctx::new(&c.or(&outer), shutdown.clone());
    match cli.command {
        Command::Server(args) => crate::roles::run_server(args, shutdown).await,
        Command::Agent(args) => Ok(berth_agent::run(args, shutdown).await?),
        Command::Dev(args) => crate::roles::run_dev(args, shutdown).await,
        Command::DemoServer(args) => crate::demo::run(args, shutdown).await,
        Command::Apply(c) => apply::run(&ctx(&c.conn)?, c.args, io).await,
        Command::Create(c) => create::run(&ctx(&c.conn)?, c.args, io).await,
        Command::Get(c) => get::run(&ctx(&c.conn)?, c.args, io).await,
        Command::Diff(c) => diff::run(&ctx(&c.conn)?, c.args, io).await,
        Command::Describe(c) => describe::run(&ctx(&c.conn)?, c.args, io).await,
        Command::Delete(c) => delete::run(&ctx(&c.conn)?, c.args, io).await,
        Command::Scale(c) => scale::run(&ctx(&c.conn)?, c.args, io).await,
        Command::Logs(c) => logs::run(&ctx(&c.conn)?, c.args, io).await,
        Command::PortForward(c) => portforward::run(&ctx(&c.conn)?, c.args, io).await,
        Command::Exec(c) => exec::run(&ctx(&c.conn)?, c.args, io).await,
        Command::Rollout(c) => rollout::run(&ctx(&c.conn)?, c.args, io).await,
        Command::Cordon(c) => node::cordon(&ctx(&c.conn)?, c.args, io).await,
        Command::Uncordon(c) => node::uncordon(&ctx(&c.conn)?, c.args, io).await,
        Command::Drain(c) => node::drain(&ctx(&c.conn)?, c.args, io).await,
        Command::Cluster(c) => cluster::run(&ctx(&c.conn)?, c.args, io).await,
        Command::Token(c) => token::run(&ctx(&c.conn)?, c.args, io).await,
        Command::Certificate(c) => certificate::run(&ctx(&c.conn)?, c.args, io).await,
        Command::Node(c) => certificate::node(&ctx(&c.conn)?, c.args, io).await,
        Command::Snapshot(c) => snapshot::run(ctx(&c.conn), c.args, io).await,
        Command::SecretsEncryption(c) => secrets_encryption::run(&ctx(&c.conn)?, c.args, io).await,
        Command::Kubeconfig(c) => kubeconfig::run(&ctx(&c.conn)?, c.args, io).await,
        Command::Build(c) => build::run(&c.conn, c.args, io).await,
        Command::Push(c) => push::run(&ctx(&c.conn)?, c.args, io).await,
        Command::Registry(c) => registry::run(&ctx(&c.conn)?, c.args, io).await,
        Command::Images(c) => images::run(&ctx(&c.conn)?, c.args, io).await,
        Command::Trust(c) => trust::run(&ctx(&c.conn)?, c.args, io).await,
        Command::Sign(c) => trust::sign(&ctx(&c.conn)?, c.args, io).await,
        Command::Version => {
            writeln!(io.out, "berth {}", env!("CARGO_PKG_VERSION"))?;
            Ok(())
        }
    }
}

/// The user-facing message for a failure, with a hint when no server answered.
pub fn error_message(err: &anyhow::Error) -> String {
    let mut msg = format!("{err:#}");
    let tried = err
        .chain()
        .find_map(|e| match e.downcast_ref::<ClientError>() {
            Some(ClientError::Unavailable { tried }) => Some(tried.clone()),
            _ => None,
        });
    if let Some(tried) = tried {
        // A server that refuses our certificate ends the TLS handshake by closing the
        // connection: the client only sees "connection closed" or "broken pipe".
        let refused_tls = ["connection closed", "broken pipe", "certificate"]
            .iter()
            .any(|s| tried.contains(s));
        if refused_tls {
            msg.push_str(
                ". If the servers are running, they may have refused this client's \
                 certificate: check that the config file's credential is from this cluster \
                 (the admin.yaml `berth server --init` wrote)",
            );
        } else {
            msg.push_str(". Start one with 'berth dev' or pass --server.");
        }
    }
    msg
}

fn init_tracing(role: bool) {
    // hickory-server logs every DNS-over-TCP request at info.
    let default = if role {
        "info,hickory_server=warn"
    } else {
        "warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Logs go to stderr so command output on stdout stays clean for pipes.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Cancel `token` on Ctrl-C or SIGTERM.
async fn watch_signals(token: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutdown requested");
    token.cancel();
}

/// The binary's entry point.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.command.is_role());
    berth_tls::install_default_provider();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        let shutdown = CancellationToken::new();
        let signals = tokio::spawn(watch_signals(shutdown.clone()));
        let mut stdout = std::io::stdout();
        let mut stderr = std::io::stderr();
        let mut io = Io {
            out: &mut stdout,
            err: &mut stderr,
        };
        let r = run(cli, &mut io, shutdown).await;
        signals.abort();
        r
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let silent = e
                .downcast_ref::<Exit>()
                .is_some_and(|x| x.message.is_empty());
            if !silent {
                eprintln!("error: {}", error_message(&e));
            }
            ExitCode::from(exit_code(&e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_kind_names_parse() {
        for (s, k) in [
            ("deploy", Kind::Deployment),
            ("svc", Kind::Service),
            ("po", Kind::Pod),
            ("ep", Kind::Endpoints),
            ("no", Kind::Node),
            ("rs", Kind::ReplicaSet),
            ("ev", Kind::Event),
            ("Deployments", Kind::Deployment),
        ] {
            assert_eq!(parse_kind(s).expect(s), k);
        }
        let err = parse_kind("deploymnt").expect_err("typo");
        assert!(err.to_string().contains("known types"), "{err}");
    }

    #[test]
    fn kind_slash_name_and_kind_name_forms_are_equivalent() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse_kind_and_names(&v(&["deploy/web", "deploy/api"])).expect("ok"),
            (Kind::Deployment, vec!["web".into(), "api".into()])
        );
        assert_eq!(
            parse_kind_and_names(&v(&["svc", "web"])).expect("ok"),
            (Kind::Service, vec!["web".into()])
        );
        assert!(parse_kind_and_names(&v(&["deploy/web", "svc/web"])).is_err());
        assert!(parse_kind_and_names(&v(&[])).is_err());
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("5x").is_err());
    }

    #[test]
    fn unavailable_errors_get_a_hint() {
        let e = anyhow::Error::new(ClientError::Unavailable {
            tried: "127.0.0.1:7440: connection refused".into(),
        });
        assert_eq!(
            error_message(&e),
            "cannot reach any Berth server (tried 127.0.0.1:7440: connection refused). \
             Start one with 'berth dev' or pass --server."
        );
    }

    #[test]
    fn connection_flags_work_before_and_after_the_subcommand() {
        let cli = Cli::try_parse_from(["berth", "--server", "a:1", "get", "pods"]).expect("parse");
        let Command::Get(c) = &cli.command else {
            panic!("not get")
        };
        assert_eq!(c.conn.or(&cli.conn).server.as_deref(), Some("a:1"));
        let cli = Cli::try_parse_from([
            "berth",
            "--server",
            "a:1",
            "get",
            "pods",
            "--server",
            "b:2",
            "--request-timeout",
            "2s",
        ])
        .expect("parse");
        let Command::Get(c) = &cli.command else {
            panic!("not get")
        };
        let conn = c.conn.or(&cli.conn);
        assert_eq!(conn.server.as_deref(), Some("b:2"));
        assert_eq!(conn.timeout, Some(Duration::from_secs(2)));
        // The agent keeps its own --server flag.
        let cli = Cli::try_parse_from(["berth", "agent", "--server", "c:3,d:4"]).expect("parse");
        let Command::Agent(a) = &cli.command else {
            panic!("not agent")
        };
        assert_eq!(a.server, vec!["c:3", "d:4"]);
    }

    #[test]
    fn exit_status_says_outcome_unknown_and_timed_out_apart_from_failure() {
        let unknown = anyhow::Error::new(ClientError::OutcomeUnknown("x".into()))
            .context("cannot apply deployment/web");
        assert_eq!(exit_code(&unknown), exit::OUTCOME_UNKNOWN);
        assert_eq!(exit_code(&anyhow::Error::new(TimedOut("t".into()))), 4);
        assert_eq!(exit_code(&anyhow!("anything else")), exit::FAILURE);
        let help = format!("{}", <Cli as clap::CommandFactory>::command().render_help());
        assert!(help.contains("3 outcome unknown"), "{help}");
    }

    #[test]
    fn exit_status_table_is_distinct_documented_and_in_help() {
        let codes: Vec<u8> = exit::TABLE.iter().map(|(c, _)| *c).collect();
        assert_eq!(codes, vec![0, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(
            [
                exit::FAILURE,
                exit::USAGE,
                exit::OUTCOME_UNKNOWN,
                exit::TIMED_OUT,
                exit::ROLLOUT_FAILED,
                exit::PAUSED,
                exit::REVERTED
            ],
            [1, 2, 3, 4, 5, 6, 7]
        );
        let help = format!("{}", <Cli as clap::CommandFactory>::command().render_help());
        for needle in [
            "5 the rollout failed",
            "6 paused awaiting",
            "7 the rollout was aborted or reverted",
        ] {
            assert!(help.contains(needle), "{needle:?} not in --help: {help}");
        }
        // The README's table is the same table.
        let readme = include_str!("../README.md");
        for (code, text) in exit::TABLE {
            let row = format!("| {code} | {text} |");
            assert!(readme.contains(&row), "README lacks the row {row:?}");
        }
        for code in [5u8, 6, 7] {
            let e = anyhow::Error::new(Exit::new(code, "x")).context("while waiting");
            assert_eq!(exit_code(&e), code);
        }
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
