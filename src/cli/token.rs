//! `berth token show`: print the cluster's join token, read from a server with the admin
//! credential (node and server certificates are refused). `berth server --init` prints the
//! token itself only on a terminal, so under systemd it never lands in the journal; this is
//! how an admin gets it from anywhere the admin config works.

use anyhow::Context;
use clap::{Args, Subcommand};

use super::{Ctx, Io};

#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum TokenCommand {
    /// Print the join token (a secret: servers and agents join with it). Admin only.
    Show,
}

pub async fn run(ctx: &Ctx, a: TokenArgs, io: &mut Io<'_>) -> anyhow::Result<()> {
    match a.command {
        TokenCommand::Show => {
            let token = ctx
                .client()?
                .join_token()
                .await
                .context("cannot read the join token")?;
            writeln!(io.out, "{}", token.expose())?;
            Ok(())
        }
    }
}
