//! `berth snapshot save FILE` (admin): a consistent snapshot of the store from any member
//! (everything committed before the request), written with a header naming its revision,
//! object count, size and SHA-256 ([`berth_proto::snapshotfile`]); like `etcdctl snapshot
//! save`. `berth snapshot status FILE` checks a file and prints its header. Restore with
//! `berth server --restore FILE --init --data-dir DIR`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};

use super::{Ctx, Io};

#[derive(Debug, Clone, Args)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    pub command: SnapshotCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum SnapshotCommand {
    /// Save a snapshot of the store to FILE (admin only).
    Save {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Check a snapshot file (size, checksum) and print its revision and object count.
    Status {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

/// `ctx`: only `save` talks to a server (`status` works without a CLI config).
pub async fn run(ctx: anyhow::Result<Ctx>, a: SnapshotArgs, io: &mut Io<'_>) -> anyhow::Result<()> {
    match a.command {
        SnapshotCommand::Save { file } => save(&ctx?, &file, io).await,
        SnapshotCommand::Status { file } => status(&file, io),
    }
}

async fn save(ctx: &Ctx, file: &Path, io: &mut Io<'_>) -> anyhow::Result<()> {
    let body = ctx
        .client()?
        .snapshot()
        .await
        .context("taking a snapshot of the store")?;
    let bytes = berth_proto::snapshotfile::encode(&body).map_err(anyhow::Error::msg)?;
    let (header, _) = berth_proto::snapshotfile::decode(&bytes).map_err(anyhow::Error::msg)?;
    // Whole or not at all: write beside it, then rename.
    let part = file.with_extension("part");
    berth_tls::write_private(&part, &bytes)
        .with_context(|| format!("writing {}", part.display()))?;
    std::fs::rename(&part, file).with_context(|| format!("writing {}", file.display()))?;
    writeln!(
        io.out,
        "snapshot saved to {}: revision {}, {} objects, {} bytes, sha256 {}",
        file.display(),
        header.revision,
        header.objects,
        header.size,
        header.sha256
    )?;
    Ok(())
}

fn status(file: &Path, io: &mut Io<'_>) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let (h, _) = berth_proto::snapshotfile::decode(&bytes)
        .map_err(|m| anyhow::anyhow!("{}: {m}", file.display()))?;
    let mut t =
        berth_proto::table::Table::new(&["REVISION", "OBJECTS", "SIZE", "SHA256", "VERSION"]);
    t.rows.push(vec![
        h.revision.to_string(),
        h.objects.to_string(),
        h.size.to_string(),
        h.sha256,
        h.version.to_string(),
    ]);
    io.out.write_all(t.render().as_bytes())?;
    Ok(())
}
