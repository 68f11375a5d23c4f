//! Image trust: `berth trust key generate|add|list|remove`, `berth trust policy ...` and
//! `berth sign IMAGE[:TAG|@DIGEST] --key NAME|PATH`.
//!
//! Keys are ECDSA P-256 (cosign's key type); signatures are cosign's simple-signing payload
//! over the manifest digest, ASN.1 DER, base64 (see `berth_proto::trust`). The private key
//! stays on the signer's machine (`~/.berth/trust/NAME.key`, mode 0600); the cluster stores
//! only public keys (`TrustKey`) and signatures (`ImageSignature`).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use berth_client::{Client, ClientError};
use berth_proto::image::{manifest_object_name, tag_object_name, ImageRef};
use berth_proto::trust::{
    sign_image, PrivateKey, PublicKey, CLUSTER_POLICY_NAME, NAMESPACE_POLICY_NAME,
};
use berth_proto::types::{
    ClusterImagePolicy, ImageManifest, ImagePolicy, ImageSignature, ImageTag, TrustKey,
};
use clap::{Args, Subcommand, ValueEnum};

use super::{table, Ctx, Io};

#[derive(Debug, Clone, Args)]
pub struct TrustArgs {
    #[command(subcommand)]
    pub command: TrustCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum TrustCommand {
    /// The keys whose signatures the cluster trusts.
    #[command(subcommand)]
    Key(KeyCommand),
    /// The require-signed-images policy, cluster-wide and per namespace.
    #[command(subcommand)]
    Policy(PolicyCommand),
}

#[derive(Debug, Clone, Subcommand)]
pub enum KeyCommand {
    /// Make an ECDSA P-256 key pair: the private key to DIR/NAME.key (0600, never
    /// overwritten) and NAME.pub beside it; the public key is trusted by the cluster as NAME.
    Generate {
        name: String,
        /// Where to write the key files [default: ~/.berth/trust].
        #[arg(long, value_name = "DIR")]
        output: Option<PathBuf>,
    },
    /// Trust an existing ECDSA P-256 public key (PEM, e.g. cosign.pub or `openssl pkey
    /// -pubout`) as NAME.
    Add {
        name: String,
        #[arg(long = "public-key", value_name = "FILE.pub")]
        public_key: PathBuf,
    },
    /// The trusted keys: NAME, FINGERPRINT, AGE.
    List,
    /// Stop trusting a key: images signed only by it may no longer start under the policy.
    Remove { name: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Setting {
    /// Only images signed by a trusted key may run.
    On,
    /// Any image may run.
    Off,
    /// (with --namespace) drop the namespace's own setting: the cluster's applies.
    Inherit,
}

#[derive(Debug, Clone, Subcommand)]
pub enum PolicyCommand {
    /// Require images signed by a trusted key, for the cluster (default) or one namespace
    /// (which overrides the cluster's setting, on or off).
    #[command(name = "require-signed-images")]
    RequireSignedImages {
        setting: Setting,
        /// Set it for this namespace only [default: the whole cluster].
        #[arg(long, short = 'n', value_name = "NS")]
        namespace: Option<String>,
    },
    /// The cluster's setting and every namespace's override.
    Show,
}

#[derive(Debug, Clone, Args)]
pub struct SignArgs {
    /// The image in the cluster registry: REPO[:TAG] or REPO@sha256:DIGEST. A tag is signed
    /// as the digest it points at now.
    #[arg(value_name = "IMAGE[:TAG|@DIGEST]")]
    pub image: String,
    /// The private key: a NAME under ~/.berth/trust (NAME.key) or a PATH to a PEM PKCS#8
    /// key. Its public key must be trusted (berth trust key add/generate).
    #[arg(long, value_name = "NAME|PATH")]
    pub key: String,
}

fn trust_dir() -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or_else(|| anyhow!("HOME is not set: pass --output DIR"))?;
    Ok(PathBuf::from(home).join(".berth").join("trust"))
}

fn check_key_name(name: &str) -> anyhow::Result<()> {
    berth_proto::validate::check_dns1123_subdomain(name)
        .map_err(|e| anyhow!("invalid key name {name:?}: {e}"))
}

fn trust_key(name: &str, pk: &PublicKey) -> TrustKey {
    let mut k = TrustKey::default();
    k.metadata.name = name.to_string();
    k.spec.public_key = pk.to_pem();
    k.spec.fingerprint = pk.fingerprint();
    k
}

async fn existing_key(client: &Client, name: &str) -> anyhow::Result<Option<TrustKey>> {
    match client.get::<TrustKey>("", name).await {
        Ok(k) => Ok(Some(k)),
        Err(ClientError::NotFound(_)) => Ok(None),
        Err(e) => Err(e).context(format!("cannot read trust key {name}")),
    }
}

/// Write `text` to a new file (never replacing one) with `mode`.
fn write_new(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(mode);
    }
    let _ = mode;
    let mut f = o.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow!(
                "{} already exists: not overwriting a key; remove it or pass --output DIR",
                path.display()
            )
        } else {
            anyhow!("cannot create {}: {e}", path.display())
        }
    })?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

pub async fn run(ctx: &Ctx, a: TrustArgs, io: &mut Io<'_>) -> anyhow::Result<()> {
    match a.command {
        TrustCommand::Key(k) => key(ctx, k, io).await,
        TrustCommand::Policy(p) => policy(ctx, p, io).await,
    }
}

async fn key(ctx: &Ctx, cmd: KeyCommand, io: &mut Io<'_>) -> anyhow::Result<()> {
    match cmd {
        KeyCommand::Generate { name, output } => {
            check_key_name(&name)?;
            let client = ctx.client()?;
            if existing_key(&client, &name).await?.is_some() {
                bail!(
                    "trust key {name} already exists in the cluster: pick another name, or \
                     `berth trust key remove {name}` first"
                );
            }
            let dir = match output {
                Some(d) => d,
                None => trust_dir()?,
            };
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let key_path = dir.join(format!("{name}.key"));
            let pub_path = dir.join(format!("{name}.pub"));
            if pub_path.exists() {
                bail!(
                    "{} already exists: not overwriting a key; remove it or pass --output DIR",
                    pub_path.display()
                );
            }
            let key = PrivateKey::generate()?;
            let pk = key.public_key();
            write_new(&key_path, &key.to_pem(), 0o600)?;
            write_new(&pub_path, &pk.to_pem(), 0o644)?;
            client
                .create(&trust_key(&name, &pk))
                .await
                .with_context(|| {
                    format!(
                        "the key was written to {} but registering its public key failed; \
                     retry with `berth trust key add {name} --public-key {}`",
                        key_path.display(),
                        pub_path.display()
                    )
                })?;
            writeln!(
                io.out,
                "trust key {name} created ({})\nprivate key: {} (keep it secret)\npublic key: {}",
                pk.fingerprint(),
                key_path.display(),
                pub_path.display()
            )?;
            Ok(())
        }
        KeyCommand::Add { name, public_key } => {
            check_key_name(&name)?;
            let text = std::fs::read_to_string(&public_key)
                .with_context(|| format!("cannot read {}", public_key.display()))?;
            let pk =
                PublicKey::from_pem(&text).map_err(|e| anyhow!("{}: {e}", public_key.display()))?;
            let client = ctx.client()?;
            if let Some(k) = existing_key(&client, &name).await? {
                if k.spec.fingerprint == pk.fingerprint() {
                    writeln!(io.out, "trust key {name} unchanged ({})", pk.fingerprint())?;
                    return Ok(());
                }
                bail!(
                    "trust key {name} already exists with another key ({}): `berth trust key \
                     remove {name}` first, or pick another name",
                    k.spec.fingerprint
                );
            }
            client
                .create(&trust_key(&name, &pk))
                .await
                .with_context(|| format!("cannot add trust key {name}"))?;
            writeln!(io.out, "trust key {name} added ({})", pk.fingerprint())?;
            Ok(())
        }
        KeyCommand::List => {
            let (mut keys, _) = ctx.client()?.list::<TrustKey>(None, "").await?;
            if keys.is_empty() {
                writeln!(
                    io.err,
                    "no trusted keys (berth trust key generate NAME, or berth trust key add NAME --public-key FILE.pub)"
                )?;
                return Ok(());
            }
            keys.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
            write!(
                io.out,
                "{}",
                table::trust_key_table(&keys, chrono::Utc::now()).render()
            )?;
            Ok(())
        }
        KeyCommand::Remove { name } => {
            let client = ctx.client()?;
            match client
                .delete(berth_client::Kind::TrustKey, "", &name, None)
                .await
            {
                Ok(_) => {}
                Err(ClientError::NotFound(_)) => bail!("there is no trust key {name}"),
                Err(e) => return Err(e).context(format!("cannot remove trust key {name}")),
            }
            writeln!(
                io.out,
                "trust key {name} removed: signatures made with it no longer count"
            )?;
            Ok(())
        }
    }
}

async fn policy(ctx: &Ctx, cmd: PolicyCommand, io: &mut Io<'_>) -> anyhow::Result<()> {
    let client = ctx.client()?;
    match cmd {
        PolicyCommand::RequireSignedImages { setting, namespace } => {
            let on = setting == Setting::On;
            match (namespace, setting) {
                (None, Setting::Inherit) => {
                    bail!("`inherit` is for a namespace: pass --namespace NS")
                }
                (None, _) => {
                    let mut p = ClusterImagePolicy::default();
                    p.metadata.name = CLUSTER_POLICY_NAME.into();
                    p.spec.require_signed_images = on;
                    client
                        .apply(&p)
                        .await
                        .context("cannot set the cluster policy")?;
                    writeln!(
                        io.out,
                        "require-signed-images is {} for the cluster (namespaces with their own \
                         setting keep it)",
                        if on { "on" } else { "off" }
                    )?;
                }
                (Some(ns), Setting::Inherit) => {
                    match client
                        .delete(
                            berth_client::Kind::ImagePolicy,
                            &ns,
                            NAMESPACE_POLICY_NAME,
                            None,
                        )
                        .await
                    {
                        Ok(_) | Err(ClientError::NotFound(_)) => {}
                        Err(e) => {
                            return Err(e)
                                .context(format!("cannot clear the policy of namespace {ns}"))
                        }
                    }
                    writeln!(
                        io.out,
                        "namespace {ns} follows the cluster's require-signed-images"
                    )?;
                }
                (Some(ns), _) => {
                    let mut p = ImagePolicy::default();
                    p.metadata.name = NAMESPACE_POLICY_NAME.into();
                    p.metadata.namespace = ns.clone();
                    p.spec.require_signed_images = on;
                    client
                        .apply(&p)
                        .await
                        .with_context(|| format!("cannot set the policy of namespace {ns}"))?;
                    writeln!(
                        io.out,
                        "require-signed-images is {} for namespace {ns}",
                        if on { "on" } else { "off" }
                    )?;
                }
            }
            Ok(())
        }
        PolicyCommand::Show => {
            let cluster = match client
                .get::<ClusterImagePolicy>("", CLUSTER_POLICY_NAME)
                .await
            {
                Ok(p) => p.spec.require_signed_images,
                Err(ClientError::NotFound(_)) => false,
                Err(e) => return Err(e).context("cannot read the cluster policy"),
            };
            let (mut nss, _) = client.list::<ImagePolicy>(None, "").await?;
            nss.sort_by(|a, b| a.metadata.namespace.cmp(&b.metadata.namespace));
            let onoff = |b: bool| if b { "on" } else { "off" };
            let mut t = table::Table::new(&["SCOPE", "REQUIRE-SIGNED-IMAGES"]);
            t.rows.push(vec!["cluster".into(), onoff(cluster).into()]);
            for p in &nss {
                t.rows.push(vec![
                    format!("namespace/{}", p.metadata.namespace),
                    onoff(p.spec.require_signed_images).into(),
                ]);
            }
            write!(io.out, "{}", t.render())?;
            let (keys, _) = client.list::<TrustKey>(None, "").await?;
            let mut names: Vec<&str> = keys.iter().map(|k| k.metadata.name.as_str()).collect();
            names.sort();
            writeln!(
                io.out,
                "trusted keys: {}",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            )?;
            Ok(())
        }
    }
}

/// The private key `--key` names: a file path, or NAME under ~/.berth/trust.
fn load_private_key(arg: &str) -> anyhow::Result<(PrivateKey, PathBuf)> {
    let as_path = PathBuf::from(arg);
    let path = if as_path.is_file() || arg.contains('/') {
        as_path
    } else {
        trust_dir()?.join(format!("{arg}.key"))
    };
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read the private key {} (--key takes a NAME under ~/.berth/trust or a PATH)",
            path.display()
        )
    })?;
    let key = PrivateKey::from_pem(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    Ok((key, path))
}

pub async fn sign(ctx: &Ctx, a: SignArgs, io: &mut Io<'_>) -> anyhow::Result<()> {
    let r = ImageRef::parse(&a.image).map_err(|e| anyhow!(e))?;
    if let Some(d) = &r.domain {
        bail!(
            "{}: names the registry {d}; berth sign signs images of the cluster registry, named \
             without a registry host (e.g. {})",
            a.image,
            r.repository
        );
    }
    let (key, path) = load_private_key(&a.key)?;
    let client = ctx.client()?;
    let fingerprint = key.public_key().fingerprint();
    let (keys, _) = client.list::<TrustKey>(None, "").await?;
    let Some(trusted) = keys.iter().find(|k| k.spec.fingerprint == fingerprint) else {
        bail!(
            "the key {} ({fingerprint}) is not trusted by this cluster: add its public key with \
             `berth trust key add NAME --public-key FILE.pub`",
            path.display()
        );
    };
    let repo = &r.repository;
    let digest = match (&r.digest, r.tag_or_latest()) {
        (Some(d), _) => {
            match client
                .get::<ImageManifest>("", &manifest_object_name(repo, d))
                .await
            {
                Ok(_) => {}
                Err(ClientError::NotFound(_)) => {
                    bail!("the cluster registry has no manifest {repo}@{d}")
                }
                Err(e) => return Err(e).context("cannot read the manifest"),
            }
            d.clone()
        }
        (None, Some(tag)) => match client
            .get::<ImageTag>("", &tag_object_name(repo, tag))
            .await
        {
            Ok(t) => t.spec.digest,
            Err(ClientError::NotFound(_)) => bail!(
                "the cluster registry has no tag {repo}:{tag} (push it first: berth build -t \
                 {repo}:{tag} --push DIR)"
            ),
            Err(e) => return Err(e).context("cannot read the tag"),
        },
        (None, None) => bail!("{}: no tag or digest", a.image),
    };
    let sig: ImageSignature = sign_image(&key, &trusted.metadata.name, repo, &digest)?;
    client
        .apply(&sig)
        .await
        .with_context(|| format!("cannot store the signature of {repo}@{digest}"))?;
    writeln!(
        io.out,
        "signed {repo}@{digest} with trust key {}",
        trusted.metadata.name
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_keys_are_written_0600_and_never_overwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("k.key");
        write_new(&p, "secret", 0o600).expect("first write");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let e = write_new(&p, "other", 0o600).expect_err("exists");
        assert!(e.to_string().contains("not overwriting"), "{e}");
        assert_eq!(std::fs::read_to_string(&p).expect("read"), "secret");
    }
}
