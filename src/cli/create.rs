//! `berth create secret generic|docker-registry|tls NAME ...` and `berth create configmap
//! NAME ...` and `berth create namespace NAME`: kubectl's imperative shapes (`--from-literal K=V`, `--from-file [K=]PATH`,
//! `--from-env-file PATH`), validated like a manifest, never echoing a value.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context};
use base64::Engine as _;
use berth_client::ClientError;
use berth_proto::types::{ConfigMap, Namespace, ObjectMeta, Secret};
use berth_proto::validate::{validate_config_map, validate_namespace, validate_secret};
use berth_proto::DynObject;
use clap::{Args, Subcommand};

use super::{Ctx, Io};

#[derive(Debug, Clone, Args)]
pub struct CreateArgs {
    #[command(subcommand)]
    pub what: CreateWhat,
}

#[derive(Debug, Clone, Subcommand)]
pub enum CreateWhat {
    /// A Secret: generic (from literals and files), docker-registry or tls.
    Secret {
        #[command(subcommand)]
        kind: SecretKind,
    },
    /// A ConfigMap from literals, files or an env file.
    #[command(alias = "cm")]
    Configmap(FromArgs),
    /// A Namespace: berth create namespace NAME [--dry-run].
    #[command(alias = "ns")]
    Namespace {
        name: String,
        /// Validate and print what would be created, without creating it.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum SecretKind {
    /// berth create secret generic NAME --from-literal K=V --from-file [K=]PATH [--type T]
    Generic {
        #[command(flatten)]
        from: FromArgs,
        /// The Secret's type (default Opaque).
        #[arg(long = "type")]
        type_: Option<String>,
    },
    /// berth create secret docker-registry NAME --docker-server S --docker-username U
    /// --docker-password P [--docker-email E]: a kubernetes.io/dockerconfigjson Secret.
    DockerRegistry {
        name: String,
        #[arg(long, default_value = "https://index.docker.io/v1/")]
        docker_server: String,
        #[arg(long)]
        docker_username: String,
        #[arg(long)]
        docker_password: String,
        #[arg(long)]
        docker_email: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// berth create secret tls NAME --cert FILE --key FILE: a kubernetes.io/tls Secret.
    Tls {
        name: String,
        #[arg(long)]
        cert: std::path::PathBuf,
        #[arg(long)]
        key: std::path::PathBuf,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Namespace (default "default").
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Validate and print what would be created, without creating it.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Args)]
pub struct FromArgs {
    pub name: String,
    /// KEY=VALUE (repeatable).
    #[arg(long = "from-literal", value_name = "KEY=VALUE")]
    pub literals: Vec<String>,
    /// A file, as [KEY=]PATH (the key defaults to the file name); a directory adds each
    /// regular file in it (repeatable).
    #[arg(long = "from-file", value_name = "[KEY=]PATH")]
    pub files: Vec<String>,
    /// KEY=VALUE lines (# comments and blank lines skipped) (repeatable).
    #[arg(long = "from-env-file", value_name = "PATH")]
    pub env_files: Vec<String>,
    #[command(flatten)]
    pub common: Common,
}

/// Every key and its bytes, in the order given; a key given twice is an error.
fn gather(f: &FromArgs) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    let mut out: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut put = |k: String, v: Vec<u8>, from: &str| -> anyhow::Result<()> {
        if out.insert(k.clone(), v).is_some() {
            bail!("key {k:?} is given twice (again by {from})");
        }
        Ok(())
    };
    for l in &f.literals {
        let (k, v) = l
            .split_once('=')
            .ok_or_else(|| anyhow!("--from-literal {:?}: expected KEY=VALUE", redact(l)))?;
        put(k.to_string(), v.as_bytes().to_vec(), "--from-literal")?;
    }
    for spec in &f.files {
        let (key, path) = match spec.split_once('=') {
            Some((k, p)) => (Some(k.to_string()), p),
            None => (None, spec.as_str()),
        };
        let p = Path::new(path);
        if p.is_dir() {
            if key.is_some() {
                bail!("--from-file {spec}: a key cannot name a directory");
            }
            let mut entries: Vec<_> = std::fs::read_dir(p)
                .with_context(|| format!("--from-file {path}"))?
                .flatten()
                .filter(|e| e.path().is_file())
                .collect();
            entries.sort_by_key(|e| e.file_name());
            for e in entries {
                let k = e.file_name().to_string_lossy().into_owned();
                let v = std::fs::read(e.path())
                    .with_context(|| format!("--from-file {}", e.path().display()))?;
                put(k, v, "--from-file")?;
            }
        } else {
            let k = key.unwrap_or_else(|| {
                p.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            });
            let v = std::fs::read(p).with_context(|| format!("--from-file {path}"))?;
            put(k, v, "--from-file")?;
        }
    }
    for path in &f.env_files {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("--from-env-file {path}"))?;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line.split_once('=').ok_or_else(|| {
                anyhow!(
                    "{path}:{}: expected KEY=VALUE (the value is not shown)",
                    i + 1
                )
            })?;
            put(k.to_string(), v.as_bytes().to_vec(), path)?;
        }
    }
    Ok(out)
}

/// `KEY=...` for messages: never the value.
fn redact(literal: &str) -> String {
    match literal.split_once('=') {
        Some((k, _)) => format!("{k}=..."),
        None => "...".into(),
    }
}

fn meta(name: &str, c: &Common) -> ObjectMeta {
    ObjectMeta {
        name: name.to_string(),
        namespace: c.namespace.clone().unwrap_or_else(|| "default".into()),
        ..Default::default()
    }
}

pub async fn run(ctx: &Ctx, a: CreateArgs, io: &mut Io<'_>) -> anyhow::Result<()> {
    let b64 = |v: &[u8]| base64::engine::general_purpose::STANDARD.encode(v);
    let (obj, errors, common, what) = match a.what {
        CreateWhat::Namespace { name, dry_run } => {
            let ns = Namespace {
                metadata: ObjectMeta {
                    name,
                    ..Default::default()
                },
                ..Default::default()
            };
            let common = Common {
                namespace: None,
                dry_run,
            };
            (
                DynObject::from_typed(&ns),
                validate_namespace(&ns),
                common,
                "namespace",
            )
        }
        CreateWhat::Configmap(f) => {
            let mut cm = ConfigMap {
                metadata: meta(&f.name, &f.common),
                ..Default::default()
            };
            for (k, v) in gather(&f)? {
                match String::from_utf8(v) {
                    Ok(s) => {
                        cm.data.insert(k, s);
                    }
                    Err(e) => {
                        cm.binary_data.insert(k, b64(e.as_bytes()));
                    }
                }
            }
            let errs = validate_config_map(&cm);
            (DynObject::from_typed(&cm), errs, f.common, "configmap")
        }
        CreateWhat::Secret { kind } => {
            let (s, common) = match kind {
                SecretKind::Generic { from, type_ } => {
                    let mut s = Secret {
                        metadata: meta(&from.name, &from.common),
                        type_: type_.unwrap_or_default(),
                        ..Default::default()
                    };
                    for (k, v) in gather(&from)? {
                        s.data.insert(k, b64(&v));
                    }
                    (s, from.common)
                }
                SecretKind::DockerRegistry {
                    name,
                    docker_server,
                    docker_username,
                    docker_password,
                    docker_email,
                    common,
                } => {
                    let mut entry = serde_json::json!({
                        "username": docker_username,
                        "password": docker_password,
                        "auth": b64(format!("{docker_username}:{docker_password}").as_bytes()),
                    });
                    if let Some(e) = docker_email {
                        entry["email"] = e.into();
                    }
                    let cfg = serde_json::json!({ "auths": { docker_server: entry } });
                    let mut s = Secret {
                        metadata: meta(&name, &common),
                        type_: "kubernetes.io/dockerconfigjson".into(),
                        ..Default::default()
                    };
                    s.data
                        .insert(".dockerconfigjson".into(), b64(cfg.to_string().as_bytes()));
                    (s, common)
                }
                SecretKind::Tls {
                    name,
                    cert,
                    key,
                    common,
                } => {
                    let read = |p: &Path| {
                        std::fs::read(p).with_context(|| format!("reading {}", p.display()))
                    };
                    let mut s = Secret {
                        metadata: meta(&name, &common),
                        type_: "kubernetes.io/tls".into(),
                        ..Default::default()
                    };
                    s.data.insert("tls.crt".into(), b64(&read(&cert)?));
                    s.data.insert("tls.key".into(), b64(&read(&key)?));
                    (s, common)
                }
            };
            let errs = validate_secret(&s);
            (DynObject::from_typed(&s), errs, common, "secret")
        }
    };
    if !errors.is_empty() {
        let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        bail!(
            "{what}/{} is invalid:\n  {}",
            obj.name(),
            lines.join("\n  ")
        );
    }
    let client = ctx.client()?;
    match client.create_dyn(&obj, common.dry_run).await {
        Ok(_) => {
            let suffix = if common.dry_run { " (dry run)" } else { "" };
            writeln!(io.out, "{what}/{} created{suffix}", obj.name())?;
            Ok(())
        }
        Err(ClientError::AlreadyExists(_)) if what == "namespace" => {
            bail!("namespace/{} already exists", obj.name())
        }
        Err(ClientError::AlreadyExists(_)) => bail!(
            "{what}/{} already exists in namespace {}: delete it first, or change it with berth apply",
            obj.name(),
            obj.namespace()
        ),
        Err(e) => Err(e).with_context(|| format!("cannot create {what}/{}", obj.name())),
    }
}
