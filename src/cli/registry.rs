//! `berth registry token --for NAME [--repository PREFIX] [--ttl 24h]`: a push token for CI
//! (the password of `docker login SERVER:PORT`, or `skopeo --dest-creds berth:TOKEN`), issued
//! by a server's registry to the admin. See `berth_registry::token`.

use std::time::Duration;

use anyhow::{bail, Context};

use super::{parse_duration, Ctx, Io};

#[derive(Debug, Clone, clap::Args)]
pub struct RegistryArgs {
    #[command(subcommand)]
    pub cmd: RegistryCmd,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum RegistryCmd {
    /// Issue a push token (printed on stdout; a secret: store it as a CI secret).
    Token(TokenArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct TokenArgs {
    /// Who the token is for (shown in the registry's log and errors), e.g. ci-shop.
    #[arg(long = "for", value_name = "NAME")]
    pub subject: String,
    /// Only repositories under this prefix (e.g. `shop` allows shop and shop/*); default all.
    #[arg(long, value_name = "PREFIX", default_value = "")]
    pub repository: String,
    /// How long the token is valid (at most 30 days).
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
    pub ttl: Duration,
}

pub async fn run(ctx: &Ctx, args: RegistryArgs, io: &mut Io<'_>) -> anyhow::Result<()> {
    let RegistryCmd::Token(t) = args.cmd;
    let bases = super::push::targets(ctx, None).await?;
    let http = super::push::http_client(ctx)?;
    let mut errors = Vec::new();
    for base in &bases {
        let resp = http
            .post(format!("{base}/berth/v1/tokens"))
            .query(&[
                ("subject", t.subject.as_str()),
                ("repository", t.repository.as_str()),
                ("ttl", &t.ttl.as_secs().max(1).to_string()),
            ])
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                errors.push(format!("{base}: {e}"));
                continue;
            }
        };
        let status = resp.status();
        let text = resp.text().await.context("the registry's answer")?;
        let body: serde_json::Value =
            serde_json::from_str(&text).context("the registry's answer is not JSON")?;
        if !status.is_success() {
            let msg = body["errors"][0]["message"]
                .as_str()
                .unwrap_or("no message");
            bail!("{base} refused to issue a token ({status}): {msg}");
        }
        let token = body["token"].as_str().context("the answer has no token")?;
        let host = base.split("://").nth(1).unwrap_or(base);
        writeln!(io.out, "{token}")?;
        writeln!(
            io.err,
            "push token for {:?} on {}, expires {} (Unix time {}).\nUse: echo \"$TOKEN\" | docker login {host} -u {} --password-stdin   (the engine must trust the cluster CA: /etc/docker/certs.d/{host}/ca.crt)",
            t.subject,
            if t.repository.is_empty() { "every repository".to_string() } else { format!("repositories under {}", t.repository) },
            chrono::DateTime::from_timestamp(body["expires"].as_i64().unwrap_or(0), 0)
                .map(|d| d.to_rfc3339())
                .unwrap_or_default(),
            body["expires"],
            t.subject,
        )?;
        return Ok(());
    }
    bail!("no registry server answered: {}", errors.join("; "))
}
