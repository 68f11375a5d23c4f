//! `berth build -t NAME:TAG [-f Dockerfile] [--build-arg K=V].. DIR [--push]`: build an image
//! with the local Docker engine (its build API, the context sent as a tar stream, the build's
//! output shown as it happens) and optionally push it to the cluster registry, from where pods
//! naming `NAME:TAG` pull it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use berth_proto::image::ImageRef;
use bollard::query_parameters::{BuildImageOptions, TagImageOptions};
use bollard::Docker;
use futures::StreamExt;

use super::Io;

#[derive(Debug, Clone, clap::Args)]
pub struct BuildArgs {
    /// Name and tag of the image, NAME[:TAG] (repeatable; the first is built, the others are
    /// tagged).
    #[arg(short = 't', long = "tag", value_name = "NAME:TAG", required = true)]
    pub tags: Vec<String>,
    /// The Dockerfile, relative to DIR (or an absolute path inside it).
    #[arg(short = 'f', long = "file", default_value = "Dockerfile")]
    pub file: String,
    /// Build-time variable KEY=VALUE, or KEY to take it from this environment (repeatable).
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    pub build_args: Vec<String>,
    /// Do not use the engine's build cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Push every tag to the cluster registry once built.
    #[arg(long)]
    pub push: bool,
    /// Push to this registry instead of the cluster's (http(s)://HOST:PORT; HOST:PORT means
    /// http on loopback, https otherwise). Default: the cluster's registry servers, through
    /// the API (as `berth push`).
    #[arg(long, env = "BERTH_REGISTRY", value_name = "URL")]
    pub registry: Option<String>,
    /// The build context: a directory.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

/// KEY=VALUE or KEY (from `env`).
fn build_args(
    args: &[String],
    env: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    for a in args {
        let (k, v) = match a.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => match env(a) {
                Some(v) => (a.clone(), v),
                // As docker: a bare KEY that is not set is left out.
                None => continue,
            },
        };
        if k.is_empty() {
            bail!("--build-arg {a:?}: the name is empty (use KEY=VALUE)");
        }
        out.insert(k, v);
    }
    Ok(out)
}

/// The Dockerfile path inside the context, as the engine wants it (relative, `/`-separated).
fn dockerfile_in(dir: &Path, file: &str) -> anyhow::Result<String> {
    let path = if Path::new(file).is_absolute() {
        PathBuf::from(file)
    } else {
        dir.join(file)
    };
    if !path.is_file() {
        bail!(
            "no Dockerfile at {} (pass -f FILE, relative to {})",
            path.display(),
            dir.display()
        );
    }
    let canon_dir = dir.canonicalize()?;
    let canon = path.canonicalize()?;
    let rel = canon.strip_prefix(&canon_dir).map_err(|_| {
        anyhow::anyhow!(
            "-f {file}: the Dockerfile {} is outside the build context {}",
            canon.display(),
            canon_dir.display()
        )
    })?;
    Ok(rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().to_string())
        .collect::<Vec<_>>()
        .join("/"))
}

/// The context as an uncompressed tar (in memory: contexts are sources, not data sets).
fn context_tar(dir: &Path) -> anyhow::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.append_dir_all(".", dir)
        .with_context(|| format!("reading the build context {}", dir.display()))?;
    Ok(b.into_inner()?)
}

pub async fn run(conn: &super::ConnArgs, args: BuildArgs, io: &mut Io<'_>) -> anyhow::Result<()> {
    let mut refs = Vec::new();
    for t in &args.tags {
        let r = ImageRef::parse(t).map_err(|e| anyhow::anyhow!("-t {t}: {e}"))?;
        if r.digest.is_some() {
            bail!("-t {t}: a build is tagged, not named by digest (use NAME:TAG)");
        }
        refs.push(r);
    }
    if !args.dir.is_dir() {
        bail!(
            "the build context {} is not a directory",
            args.dir.display()
        );
    }
    let dockerfile = dockerfile_in(&args.dir, &args.file)?;
    let buildargs = build_args(&args.build_args, |k| std::env::var(k).ok())?;
    let docker = Docker::connect_with_local_defaults()
        .context("connecting to the Docker engine")?
        .negotiate_version()
        .await
        .context(
            "the Docker engine does not answer: start it (berth build uses the local engine)",
        )?;
    let dir = args.dir.clone();
    let tar = tokio::task::spawn_blocking(move || context_tar(&dir)).await??;
    let first = refs[0].to_string();
    writeln!(
        io.err,
        "sending build context {} ({} bytes) to the Docker engine",
        args.dir.display(),
        tar.len()
    )?;
    let opts = BuildImageOptions {
        dockerfile,
        t: Some(first.clone()),
        rm: true,
        nocache: args.no_cache,
        buildargs: Some(buildargs),
        ..Default::default()
    };
    let mut stream = docker.build_image(opts, None, Some(bollard::body_full(tar.into())));
    let mut id = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                if let Some(e) = info.error {
                    bail!("build of {first} failed: {}", e.trim_end());
                }
                if let Some(s) = info.stream {
                    write!(io.out, "{s}")?;
                }
                if let Some(s) = info.status {
                    writeln!(io.out, "{s}")?;
                }
                if let Some(a) = info.aux.and_then(|a| a.id) {
                    id = Some(a);
                }
            }
            Err(bollard::errors::Error::DockerStreamError { error }) => {
                bail!("build of {first} failed: {}", error.trim_end())
            }
            Err(e) => return Err(anyhow::Error::new(e).context(format!("building {first}"))),
        }
    }
    io.out.flush()?;
    for r in &refs[1..] {
        tag_as(
            &docker,
            &first,
            &r.repository_with_domain(),
            r.tag_or_latest(),
        )
        .await?;
    }
    writeln!(
        io.out,
        "built {} ({})",
        args.tags.join(", "),
        id.as_deref().unwrap_or("id unknown")
    )?;
    if !args.push {
        return Ok(());
    }
    let ctx = super::Ctx::new(conn, tokio_util::sync::CancellationToken::new())?;
    let http = super::push::http_client(&ctx)?;
    for r in &refs {
        let bases = super::push::targets_for(&ctx, args.registry.as_deref(), r).await?;
        let pushed = super::push::push_image(&docker, &http, &bases, r).await?;
        writeln!(io.out, "{pushed}; pods may name it {r}")?;
    }
    Ok(())
}

async fn tag_as(docker: &Docker, image: &str, repo: &str, tag: Option<&str>) -> anyhow::Result<()> {
    docker
        .tag_image(
            image,
            Some(TagImageOptions {
                repo: Some(repo.to_string()),
                tag: Some(tag.unwrap_or("latest").to_string()),
            }),
        )
        .await
        .with_context(|| format!("tagging {image} as {repo}:{}", tag.unwrap_or("latest")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn build_args_take_values_or_the_environment() {
        let env = |k: &str| (k == "FROM_ENV").then(|| "e".to_string());
        let got = build_args(
            &["A=1".into(), "B=".into(), "FROM_ENV".into(), "UNSET".into()],
            env,
        )
        .unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got["A"], "1");
        assert_eq!(got["B"], "");
        assert_eq!(got["FROM_ENV"], "e");
        assert!(build_args(&["=x".into()], env).is_err());
    }

    #[test]
    fn the_dockerfile_must_be_inside_the_context() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("ctx")).unwrap();
        std::fs::write(d.path().join("ctx/Dockerfile"), "FROM scratch\n").unwrap();
        std::fs::create_dir(d.path().join("ctx/sub")).unwrap();
        std::fs::write(d.path().join("ctx/sub/Other"), "FROM scratch\n").unwrap();
        std::fs::write(d.path().join("Outside"), "FROM scratch\n").unwrap();
        let ctx = d.path().join("ctx");
        assert_eq!(dockerfile_in(&ctx, "Dockerfile").unwrap(), "Dockerfile");
        assert_eq!(dockerfile_in(&ctx, "sub/Other").unwrap(), "sub/Other");
        let e = dockerfile_in(&ctx, "../Outside").unwrap_err().to_string();
        assert!(e.contains("outside the build context"), "{e}");
        let e = dockerfile_in(&ctx, "Nope").unwrap_err().to_string();
        assert!(e.contains("no Dockerfile at"), "{e}");
    }
}
