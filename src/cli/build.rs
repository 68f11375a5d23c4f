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

/// `.dockerignore`, as Docker reads it: one pattern per line (`#` comments, blank lines
/// skipped), relative to the context root (a leading `/` or `./` is dropped), Go-style globs
/// where `*` stays inside one path segment and `**` spans any number; `!` re-includes. A path
/// is excluded when the last pattern matching it or one of its parent directories is not a
/// `!` one.
struct DockerIgnore {
    rules: Vec<(globset::GlobMatcher, bool)>,
}

impl DockerIgnore {
    fn parse(text: &str) -> anyhow::Result<DockerIgnore> {
        let mut rules = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (negate, pat) = match line.strip_prefix('!') {
                Some(p) => (true, p.trim()),
                None => (false, line),
            };
            let pat = pat.trim_start_matches("./").trim_start_matches('/');
            let pat = pat.trim_end_matches('/');
            if pat.is_empty() {
                continue;
            }
            let glob = globset::GlobBuilder::new(pat)
                .literal_separator(true)
                .build()
                .map_err(|e| anyhow::anyhow!(".dockerignore:{}: {line:?}: {e}", n + 1))?;
            rules.push((glob.compile_matcher(), negate));
        }
        Ok(DockerIgnore { rules })
    }

    /// Is `rel` (`/`-separated, relative to the context) left out?
    fn excluded(&self, rel: &str) -> bool {
        let mut out = false;
        for (g, negate) in &self.rules {
            let mut hit = g.is_match(rel);
            let mut p = rel;
            while !hit {
                match p.rsplit_once('/') {
                    Some((parent, _)) => {
                        hit = g.is_match(parent);
                        p = parent;
                    }
                    None => break,
                }
            }
            if hit {
                out = !negate;
            }
        }
        out
    }
}

/// The context as an uncompressed tar (in memory: contexts are sources, not data sets),
/// without what `.dockerignore` excludes (the Dockerfile and `.dockerignore` are always sent,
/// as Docker does).
fn context_tar(dir: &Path, dockerfile: &str) -> anyhow::Result<Vec<u8>> {
    let ignore = match std::fs::read_to_string(dir.join(".dockerignore")) {
        Ok(t) => DockerIgnore::parse(&t)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => DockerIgnore { rules: Vec::new() },
        Err(e) => return Err(anyhow::Error::new(e).context("reading .dockerignore")),
    };
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((abs, rel)) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&abs)
            .with_context(|| format!("reading the build context {}", abs.display()))?
            .collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            let r = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let always = r == dockerfile || r == ".dockerignore";
            let ty = e.file_type()?;
            if ty.is_dir() {
                // Walked even when excluded: a `!` pattern may re-include something inside.
                if !ignore.excluded(&r) {
                    b.append_dir(&r, e.path())?;
                }
                stack.push((e.path(), r));
            } else if always || !ignore.excluded(&r) {
                b.append_path_with_name(e.path(), &r).with_context(|| {
                    format!("adding {} to the build context", e.path().display())
                })?;
            }
        }
    }
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
    let df = dockerfile.clone();
    let tar = tokio::task::spawn_blocking(move || context_tar(&dir, &df)).await??;
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
    fn dockerignore_leaves_out_what_docker_leaves_out() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        for f in [
            "Dockerfile",
            "app.py",
            "node_modules/x/index.js",
            "docs/a.md",
            "docs/keep.md",
            "src/main.rs",
            "src/gen/out.tmp",
            "secret.env",
        ] {
            std::fs::create_dir_all(root.join(f).parent().unwrap()).unwrap();
            std::fs::write(root.join(f), f).unwrap();
        }
        std::fs::write(
            root.join(".dockerignore"),
            "# build junk\nnode_modules\n/docs\n!docs/keep.md\n**/*.tmp\n*.env\nDockerfile\n",
        )
        .unwrap();
        let tar = context_tar(root, "Dockerfile").unwrap();
        let mut names: Vec<String> = tar::Archive::new(&tar[..])
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .filter(|n| !n.ends_with('/'))
            .collect();
        names.sort();
        let dirs_and_files = names.join(" ");
        assert_eq!(
            dirs_and_files, ".dockerignore Dockerfile app.py docs/keep.md src src/gen src/main.rs",
            "excluded: node_modules, docs/a.md, the .tmp and .env files; the Dockerfile and \
             .dockerignore always go"
        );
        assert!(DockerIgnore::parse("[").is_err());
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
