//! `berth token show [server|agent]`: print one of the cluster's join tokens, read from a
//! server with the admin credential (node and server certificates are refused). `berth server
//! --init` prints the tokens itself only on a terminal, so under systemd they never land in
//! the journal; this is how an admin gets them from anywhere the admin config works. The
//! server token joins servers and agents, the agent token agents only (k3s' shape, see
//! [`berth_proto::jointoken`]).
//!
//! `berth token rotate server|agent`: a new join token, printed once; the cluster stores only
//! its hash (replacing the old one, which stops admitting joiners on every server); members
//! keep their certificates.
//!
//! `berth token create --name ci --ttl 24h [--read-only]`: an API bearer token for pipelines
//! (kubectl, client libraries: `Authorization: Bearer`), printed once. The CLI makes the token
//! and stores only its SHA-256 (see [`berth_proto::apitoken`]); `berth token list` shows
//! names, expiry and scope, `berth token revoke NAME` deletes it.

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
    /// Print a join token (a secret): `server` (default; joins servers and agents) or
    /// `agent` (joins agents only). Admin only.
    Show {
        #[arg(value_name = "server|agent", default_value = "server")]
        role: berth_proto::jointoken::TokenRole,
    },
    /// Replace the `server` or `agent` join token with a new one and print it (only now: the
    /// cluster keeps its hash). The old token stops working on every server; members keep
    /// their certificates. Admin only.
    Rotate {
        #[arg(value_name = "server|agent")]
        role: berth_proto::jointoken::TokenRole,
    },
    /// Create an API bearer token and print it (only now: it is stored hashed).
    Create(CreateArgs),
    /// List API tokens: name, scope, expiry.
    List,
    /// Revoke API tokens by name.
    Revoke {
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
}

#[derive(Debug, Clone, Args)]
pub struct CreateArgs {
    /// Token name (lowercase letters, digits, '-').
    #[arg(long)]
    pub name: String,
    /// How long it is valid, e.g. 30m, 24h, 720h.
    #[arg(long, default_value = "24h", value_parser = super::parse_duration)]
    pub ttl: std::time::Duration,
    /// Get, list and watch only (no writes, no Secrets).
    #[arg(long)]
    pub read_only: bool,
    /// Print a kubeconfig using the token instead of the bare token.
    #[arg(long)]
    pub kubeconfig: bool,
}

pub async fn run(ctx: &Ctx, a: TokenArgs, io: &mut Io<'_>) -> anyhow::Result<()> {
    match a.command {
        TokenCommand::Show { role } => {
            let token = ctx
                .client()?
                .join_token_for(role.as_str())
                .await
                .with_context(|| format!("cannot read the {} token", role.as_str()))?;
            writeln!(io.out, "{}", token.expose())?;
            Ok(())
        }
        TokenCommand::Rotate { role } => rotate(ctx, role, io).await,
        TokenCommand::Create(c) => create(ctx, c, io).await,
        TokenCommand::List => list(ctx, io).await,
        TokenCommand::Revoke { names } => {
            let client = ctx.client()?;
            for name in names {
                berth_proto::apitoken::check_name(&name).map_err(anyhow::Error::msg)?;
                match client
                    .delete(
                        berth_proto::Kind::Secret,
                        berth_proto::apitoken::NAMESPACE,
                        &berth_proto::apitoken::secret_name(&name),
                        None,
                    )
                    .await
                {
                    Ok(_) => writeln!(io.out, "token {name} revoked")?,
                    Err(berth_client::ClientError::NotFound(_)) => {
                        anyhow::bail!("no API token named {name:?} (`berth token list` shows them)")
                    }
                    Err(e) => return Err(e).with_context(|| format!("revoking token {name}")),
                }
            }
            Ok(())
        }
    }
}

async fn rotate(
    ctx: &Ctx,
    role: berth_proto::jointoken::TokenRole,
    io: &mut Io<'_>,
) -> anyhow::Result<()> {
    use berth_proto::jointoken;
    let ca = &ctx
        .client_config
        .tls
        .as_ref()
        .context(
            "no cluster CA in the CLI config: use the admin config `berth server --init` wrote",
        )?
        .ca_cert_pem;
    let fp = berth_tls::fingerprint_of_pem(ca).context("reading the CA in the CLI config")?;
    let token = berth_tls::JoinToken::generate_for(fp, role.secret_prefix())?;
    let obj = berth_proto::DynObject::from_value(jointoken::secret(
        role,
        &token.reveal(),
        chrono::Utc::now(),
    ))?;
    let client = ctx.client()?;
    match client.create_dyn(&obj, false).await {
        Ok(_) => {}
        // Replace it whatever its version: the newest rotation wins.
        Err(berth_client::ClientError::AlreadyExists(_)) => {
            client
                .update_dyn(&obj, false)
                .await
                .with_context(|| format!("storing the new {} token", role.as_str()))?;
        }
        Err(e) => {
            return Err(e).with_context(|| format!("storing the new {} token", role.as_str()))
        }
    }
    writeln!(io.out, "{}", token.reveal())?;
    let who = match role {
        jointoken::TokenRole::Server => "servers and agents",
        jointoken::TokenRole::Agent => "agents",
    };
    writeln!(
        io.err,
        "{} token rotated: it is shown only now; new {who} join with it (BERTH_TOKEN), the old \
         one is refused on every server, existing members keep their certificates",
        role.as_str()
    )?;
    Ok(())
}

async fn create(ctx: &Ctx, c: CreateArgs, io: &mut Io<'_>) -> anyhow::Result<()> {
    use rand::RngCore as _;
    let mut random = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut random);
    let ttl = chrono::Duration::from_std(c.ttl).context("--ttl is too long")?;
    let expires = chrono::Utc::now() + ttl;
    let (token, secret) = berth_proto::apitoken::issue(&c.name, &random, expires, c.read_only)
        .map_err(anyhow::Error::msg)?;
    let obj = berth_proto::DynObject::from_value(secret)?;
    match ctx.client()?.create_dyn(&obj, false).await {
        Ok(_) => {}
        Err(berth_client::ClientError::AlreadyExists(_)) => anyhow::bail!(
            "an API token named {:?} exists: revoke it first (`berth token revoke {}`) or pick \
             another name",
            c.name,
            c.name
        ),
        Err(e) => return Err(e).context("storing the token"),
    }
    if c.kubeconfig {
        let ca = &ctx
            .client_config
            .tls
            .as_ref()
            .context("no cluster CA in the CLI config")?
            .ca_cert_pem;
        let yaml = super::kubeconfig::token_kubeconfig_yaml(&c.name, &ctx.servers, ca, &token)?;
        io.out.write_all(yaml.as_bytes())?;
    } else {
        writeln!(io.out, "{token}")?;
    }
    writeln!(
        io.err,
        "token {} ({}) expires {}; it is shown only now",
        c.name,
        if c.read_only {
            "read-only"
        } else {
            "read-write"
        },
        expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )?;
    Ok(())
}

async fn list(ctx: &Ctx, io: &mut Io<'_>) -> anyhow::Result<()> {
    use berth_proto::apitoken;
    let (items, _) = ctx
        .client()?
        .list_dyn(
            berth_proto::Kind::Secret,
            Some(apitoken::NAMESPACE),
            &format!("{}=true", apitoken::LABEL),
        )
        .await
        .context("listing API tokens")?;
    let mut t = berth_proto::table::Table::new(&["NAME", "SCOPE", "EXPIRES"]);
    for o in items {
        let meta = o.meta();
        let ann = |k: &str| meta.annotations.get(k).cloned().unwrap_or_default();
        let name = meta
            .name
            .strip_prefix("api-token-")
            .unwrap_or(&meta.name)
            .to_string();
        let scope = if ann(apitoken::READ_ONLY_ANNOTATION) == "false" {
            "read-write"
        } else {
            "read-only"
        };
        t.rows.push(vec![
            name,
            scope.to_string(),
            ann(apitoken::EXPIRES_ANNOTATION),
        ]);
    }
    io.out.write_all(t.render().as_bytes())?;
    Ok(())
}
