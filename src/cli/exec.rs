//! `berth exec POD|deploy/NAME [-c C] [-i] [-t] -- COMMAND [ARG...]`: run a command in a pod's
//! container through the API server's `pods/exec` (the path kubectl takes: a WebSocket,
//! v5.channel.k8s.io, proxied to the node's agent), and exit with the command's exit code.

use std::io::IsTerminal as _;

use anyhow::anyhow;
use berth_agent::exec::{exec_via_api, ClientIo, ExecError, ExecSpec};
use clap::Args;

use super::{Ctx, Io};

#[derive(Debug, Clone, Args)]
pub struct ExecArgs {
    /// POD, pod/NAME, or deploy/NAME (one of its pods, ready ones first).
    #[arg(value_name = "POD")]
    pub target: String,
    /// Container name (default: the pod's only container).
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    /// Pass this command's standard input to the command (until it ends).
    #[arg(short = 'i', long)]
    pub stdin: bool,
    /// Allocate a terminal in the container (Docker pods); with -i on a terminal, the local
    /// terminal is switched to raw mode for the session.
    #[arg(short = 't', long)]
    pub tty: bool,
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// The command ran and exited non-zero: `berth exec` exits with the same status.
#[derive(Debug)]
pub struct CommandExited(pub u8);

impl std::fmt::Display for CommandExited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "command terminated with exit code {}", self.0)
    }
}

impl std::error::Error for CommandExited {}

/// Puts the local terminal in raw mode (keys go to the remote terminal as typed) and restores
/// it when dropped.
struct RawMode(Option<nix::sys::termios::Termios>);

impl RawMode {
    fn enable() -> RawMode {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let Ok(saved) = tcgetattr(&stdin) else {
            return RawMode(None);
        };
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        if tcsetattr(&stdin, SetArg::TCSANOW, &raw).is_err() {
            return RawMode(None);
        }
        RawMode(Some(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                saved,
            );
        }
    }
}

pub async fn run(ctx: &Ctx, a: ExecArgs, io: &mut Io<'_>) -> anyhow::Result<()> {
    let client = ctx.client()?;
    let ns = a.namespace.as_deref().unwrap_or("default");
    let pod = super::logs::resolve_pod(&client, ns, &a.target).await?;
    let tls = ctx.client_config.tls.as_ref().ok_or_else(|| {
        anyhow!("berth exec needs the CLI's credential (a config with a certificate)")
    })?;
    let spec = ExecSpec {
        command: a.command.clone(),
        stdin: a.stdin,
        stdout: true,
        stderr: !a.tty,
        tty: a.tty,
    };
    let _raw = (a.tty && a.stdin && std::io::stdin().is_terminal()).then(RawMode::enable);
    let mut last = None;
    for server in &ctx.servers {
        let stdin = a.stdin.then(|| {
            Box::pin(tokio::io::stdin()) as std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>>
        });
        let run = exec_via_api(
            server,
            tls,
            ns,
            &pod.metadata.name,
            a.container.as_deref().unwrap_or(""),
            &spec,
            ClientIo {
                stdin,
                stdout: &mut *io.out,
                stderr: &mut *io.err,
                resize: None,
            },
        );
        let result = tokio::select! {
            r = run => r,
            _ = ctx.shutdown.cancelled() => return Err(anyhow!("interrupted")),
        };
        match result {
            Ok(0) => return Ok(()),
            Ok(code) => return Err(CommandExited(code.clamp(1, 255) as u8).into()),
            // Not reached: try the next server.
            Err(e @ ExecError::Handshake(_)) => last = Some(e),
            Err(e) => return Err(e.into()),
        }
    }
    Err(last
        .map(Into::into)
        .unwrap_or_else(|| anyhow!("no server to run the command on")))
}
