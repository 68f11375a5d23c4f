//! `berth secrets-encryption status|rotate --data-dir DATA`: the keys Secrets are encrypted
//! with at rest (see `berth_apiserver::encryption`), like k3s's `secrets-encrypt`. Run on a
//! server with the admin config: the key-encryption key is read from DATA/pki (it never
//! leaves the servers), the keyring is read and written through the API.
//!
//! `rotate` adds a key (`keyN+1`) and makes it the write key, rewrites every Secret (the
//! server seals it with the new key), then drops the old keys from the keyring.

use std::path::PathBuf;

use anyhow::Context;
use berth_apiserver::encryption::{Kek, Keyring, KEYRING_NAME, KEYRING_NAMESPACE};
use berth_client::{Client, ClientError, DynObject, Kind};
use clap::{Args, Subcommand};

use super::{Ctx, Io};

#[derive(Debug, Clone, Args)]
pub struct SecretsEncryptionArgs {
    #[command(subcommand)]
    pub command: SecretsEncryptionCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum SecretsEncryptionCommand {
    /// The keys (names only) and the write key.
    Status(DirArgs),
    /// Add a key, make it the write key, re-encrypt every Secret, drop the old keys.
    Rotate(DirArgs),
}

#[derive(Debug, Clone, Args)]
pub struct DirArgs {
    /// This server's data dir (its pki/secrets-encryption.key is used).
    #[arg(long)]
    pub data_dir: PathBuf,
}

fn kek(dir: &std::path::Path) -> anyhow::Result<Kek> {
    let path = berth_apiserver::pki::pki_dir(dir).join(berth_apiserver::encryption::KEK_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {}: run this on a server, with --data-dir its data dir",
            path.display()
        )
    })?;
    Kek::from_base64(&text).map_err(|m| anyhow::anyhow!("{}: {m}", path.display()))
}

async fn keyring(client: &Client, kek: &Kek) -> anyhow::Result<Option<(Keyring, u64)>> {
    match client
        .get_dyn(Kind::Secret, KEYRING_NAMESPACE, KEYRING_NAME)
        .await
    {
        Ok(o) => {
            let ring = Keyring::from_secret(kek, &o.value)?;
            Ok(Some((ring, o.meta().resource_version)))
        }
        Err(ClientError::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

async fn store_keyring(client: &Client, kek: &Kek, ring: &Keyring, rv: u64) -> anyhow::Result<()> {
    let mut v = ring.to_secret(kek)?;
    let obj = if rv == 0 {
        DynObject::from_value(v)?
    } else {
        v["metadata"]["resourceVersion"] = rv.to_string().into();
        DynObject::from_value(v)?
    };
    if rv == 0 {
        client.create_dyn(&obj, false).await?;
    } else {
        client
            .update_dyn(&obj, false)
            .await
            .context("updating the keyring (changed meanwhile? run rotate again)")?;
    }
    Ok(())
}

/// What a rotation did.
#[derive(Debug)]
pub struct Rotation {
    pub write_key: String,
    pub reencrypted: usize,
    pub dropped: Vec<String>,
}

/// Rotate the keys (see the module docs).
pub async fn rotate(client: &Client, kek: &Kek) -> anyhow::Result<Rotation> {
    let (mut ring, rv) = match keyring(client, kek).await? {
        Some(r) => r,
        None => (Keyring::new()?, 0),
    };
    let write_key = if rv == 0 {
        ring.write.clone()
    } else {
        ring.rotate()?
    };
    store_keyring(client, kek, &ring, rv).await?;
    let (secrets, _) = client.list_dyn(Kind::Secret, None, "").await?;
    let mut reencrypted = 0;
    for s in secrets {
        if s.namespace() == KEYRING_NAMESPACE && s.name() == KEYRING_NAME {
            continue;
        }
        let mut cur = s;
        loop {
            // The same values, written again: the server seals them with the write key.
            match client.update_dyn(&cur, false).await {
                Ok(_) => {
                    reencrypted += 1;
                    break;
                }
                Err(ClientError::NotFound(_)) => break,
                Err(ClientError::Conflict { .. }) => {
                    match client
                        .get_dyn(Kind::Secret, cur.namespace(), cur.name())
                        .await
                    {
                        Ok(o) => cur = o,
                        Err(ClientError::NotFound(_)) => break,
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(e) => {
                    return Err(anyhow::Error::from(e).context(format!(
                        "re-encrypting Secret {}/{}; the old keys are kept, run rotate again",
                        cur.namespace(),
                        cur.name()
                    )))
                }
            }
        }
    }
    let (mut ring, rv) = keyring(client, kek)
        .await?
        .context("the keyring disappeared during the rotation")?;
    let dropped = ring.drop_old();
    if !dropped.is_empty() {
        store_keyring(client, kek, &ring, rv).await?;
    }
    Ok(Rotation {
        write_key,
        reencrypted,
        dropped,
    })
}

pub async fn run(ctx: &Ctx, a: SecretsEncryptionArgs, io: &mut Io<'_>) -> anyhow::Result<()> {
    let client = ctx.client()?;
    match a.command {
        SecretsEncryptionCommand::Status(d) => {
            let kek = kek(&d.data_dir)?;
            match keyring(&client, &kek).await? {
                None => writeln!(
                    io.out,
                    "Encryption: AES-256-GCM (aesgcm)\nKeys: none yet (made at the first Secret write)"
                )?,
                Some((ring, _)) => writeln!(
                    io.out,
                    "Encryption: AES-256-GCM (aesgcm)\nWrite key: {}\nKeys: {}",
                    ring.write,
                    ring.names().join(", ")
                )?,
            }
        }
        SecretsEncryptionCommand::Rotate(d) => {
            let kek = kek(&d.data_dir)?;
            let r = rotate(&client, &kek).await?;
            writeln!(
                io.out,
                "write key: {}\nre-encrypted {} Secrets\ndropped keys: {}",
                r.write_key,
                r.reencrypted,
                if r.dropped.is_empty() {
                    "none".to_string()
                } else {
                    r.dropped.join(", ")
                }
            )?;
        }
    }
    Ok(())
}
