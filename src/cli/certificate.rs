//! `berth certificate list`: the certificates the cluster issued (node certificates when it
//! signed them, servers' serving certificates when they started) with their expiry, from the
//! records in `berth-system` (see [`berth_proto::certificates`]), plus this CLI's own.
//!
//! `berth node revoke NAME` (admin): the node's certificates are refused on every server from
//! then on (the revocation list in the store, checked on every request), its Node and
//! certificate record are deleted, so its name is free for a new machine joining with a token.

use anyhow::Context;
use berth_client::{ClientError, Kind};
use berth_proto::certificates as certs;
use clap::{Args, Subcommand};
use serde_json::Value;

use super::{Ctx, Io};

#[derive(Debug, Clone, Args)]
pub struct CertificateArgs {
    #[command(subcommand)]
    pub command: CertificateCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum CertificateCommand {
    /// The certificates the cluster knows: identity, issued, expires, status.
    List,
}

#[derive(Debug, Clone, Args)]
pub struct NodeArgs {
    #[command(subcommand)]
    pub command: NodeCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum NodeCommand {
    /// Revoke a node: its certificate is refused from now on and its Node is deleted (admin
    /// only). The machine may join again only with a join token.
    Revoke {
        #[arg(value_name = "NAME")]
        name: String,
    },
}

pub async fn run(ctx: &Ctx, a: CertificateArgs, io: &mut Io<'_>) -> anyhow::Result<()> {
    match a.command {
        CertificateCommand::List => list(ctx, io).await,
    }
}

fn parse_time(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// `expired`, `revoked` or how long it is still valid.
fn status(expires: &str, revoked: bool, now: chrono::DateTime<chrono::Utc>) -> String {
    if revoked {
        return "revoked".into();
    }
    match parse_time(expires) {
        Some(t) if t <= now => "expired".into(),
        Some(t) => {
            let left = t - now;
            if left.num_days() >= 1 {
                format!("valid ({}d left)", left.num_days())
            } else {
                format!("valid ({}h left)", left.num_hours())
            }
        }
        None => "unknown".into(),
    }
}

async fn list(ctx: &Ctx, io: &mut Io<'_>) -> anyhow::Result<()> {
    let client = ctx.client()?;
    let (items, _) = client
        .list_dyn(
            Kind::ConfigMap,
            Some(certs::NAMESPACE),
            &format!("{}=true", certs::RECORD_LABEL),
        )
        .await
        .context("listing certificate records")?;
    let revoked = match client
        .get_dyn(Kind::ConfigMap, certs::NAMESPACE, certs::REVOKED)
        .await
    {
        Ok(o) => Some(o.value),
        Err(ClientError::NotFound(_)) => None,
        Err(e) => return Err(e).context("reading the revocation list"),
    };
    let now = chrono::Utc::now();
    let mut t =
        berth_proto::table::Table::new(&["IDENTITY", "RECORD", "ISSUED", "EXPIRES", "STATUS"]);
    for o in items {
        let v = &o.value;
        let d = |k: &str| certs::data(v, k).unwrap_or_default().to_string();
        let identity = d(certs::IDENTITY_KEY);
        let is_revoked = match (identity.strip_prefix(berth_tls::NODE_PREFIX), &revoked) {
            (Some(node), Some(list)) => parse_time(&d(certs::ISSUED_KEY))
                .is_some_and(|issued| certs::is_revoked(list, node, issued)),
            _ => false,
        };
        let expires = d(certs::EXPIRES_KEY);
        t.rows.push(vec![
            identity,
            o.meta().name.clone(),
            d(certs::ISSUED_KEY),
            expires.clone(),
            status(&expires, is_revoked, now),
        ]);
    }
    // Each server's serving certificate, as the server itself reports it.
    if let Ok(overview) = client.cluster_status().await {
        for m in &overview.members {
            let row = match client.cluster_status_of(&m.address).await {
                Ok(s) if !s.certificate_expires.is_empty() => {
                    let st = status(&s.certificate_expires, false, now);
                    (s.certificate_expires, st)
                }
                Ok(_) => ("-".into(), "unknown (older server)".into()),
                Err(e) => ("-".into(), format!("unreachable: {e}")),
            };
            t.rows.push(vec![
                berth_tls::SERVER_IDENTITY.to_string(),
                format!("(member {} at {})", m.id, m.address),
                "-".into(),
                row.0,
                row.1,
            ]);
        }
    }
    // The CLI's own credential (the admin certificate `berth server --init` wrote).
    if let Some(tls) = &ctx.client_config.tls {
        if let Ok(info) = berth_tls::CertInfo::of_pem(&tls.credential.cert_pem) {
            let fmt = |t: std::time::SystemTime| {
                chrono::DateTime::<chrono::Utc>::from(t)
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            };
            let expires = fmt(info.not_after);
            t.rows.push(vec![
                info.identity.to_string(),
                "(this CLI's config)".into(),
                fmt(info.issued),
                expires.clone(),
                status(&expires, false, now),
            ]);
        }
    }
    io.out.write_all(t.render().as_bytes())?;
    Ok(())
}

pub async fn node(ctx: &Ctx, a: NodeArgs, io: &mut Io<'_>) -> anyhow::Result<()> {
    match a.command {
        NodeCommand::Revoke { name } => revoke(ctx, &name, io).await,
    }
}

async fn revoke(ctx: &Ctx, name: &str, io: &mut Io<'_>) -> anyhow::Result<()> {
    berth_proto::validate::check_dns1123_subdomain(name)
        .map_err(|m| anyhow::anyhow!("invalid node name {name:?}: {m}"))?;
    let client = ctx.client()?;
    // The revocation first: from its commit on, the node's requests are refused everywhere.
    for attempt in 0.. {
        let stored = match client
            .get_dyn(Kind::ConfigMap, certs::NAMESPACE, certs::REVOKED)
            .await
        {
            Ok(o) => Some(o.value),
            Err(ClientError::NotFound(_)) => None,
            Err(e) => return Err(e).context("reading the revocation list"),
        };
        let list: Value = certs::revoke(stored.as_ref(), name, chrono::Utc::now());
        let obj = berth_proto::DynObject::from_value(list)?;
        let res = match stored {
            Some(_) => client.update_dyn(&obj, false).await.map(|_| ()),
            None => client.create_dyn(&obj, false).await.map(|_| ()),
        };
        match res {
            Ok(()) => break,
            Err(ClientError::Conflict { .. } | ClientError::AlreadyExists(_)) if attempt < 5 => {
                continue
            }
            Err(e) => return Err(e).context("writing the revocation list"),
        }
    }
    let node_deleted = match client.delete(Kind::Node, "", name, None).await {
        Ok(_) => true,
        Err(ClientError::NotFound(_)) => false,
        Err(e) => return Err(e).with_context(|| format!("deleting Node {name}")),
    };
    match client
        .delete(
            Kind::ConfigMap,
            certs::NAMESPACE,
            &certs::node_record_name(name),
            None,
        )
        .await
    {
        Ok(_) | Err(ClientError::NotFound(_)) => {}
        Err(e) => return Err(e).context("deleting the node's certificate record"),
    }
    writeln!(
        io.out,
        "node {name} revoked: its certificate is refused from now on{}",
        if node_deleted {
            "; Node deleted"
        } else {
            " (no Node by that name)"
        }
    )?;
    Ok(())
}
