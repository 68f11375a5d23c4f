//! `berth push NAME[:TAG]`: copy an image from the local Docker engine to the cluster registry
//! through the Distribution API, with the CLI's own credential (the admin certificate of the
//! config file): no Docker daemon configuration (certs.d, insecure-registries) on the pushing
//! machine. `berth build --push` uses it too.
//!
//! The image is read with the engine's export (`docker save`): its `manifest.json` names the
//! config and the layer tars. Each blob is uploaded once (a `HEAD` first skips what the
//! registry has; a monolithic `POST ?digest=` streams the file), then an OCI image manifest
//! naming them is put under the tag. Layers stay as the engine stores them (uncompressed tar,
//! `application/vnd.oci.image.layer.v1.tar`; gzip when the export has gzip), so the config's
//! `rootfs.diff_ids` match without recompressing anything.
//!
//! Where to: `--registry URL` when given, else every server's registry as the cluster lists
//! them (`RegistryServer` objects), first that answers.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use berth_proto::image::ImageRef;
use berth_proto::types::RegistryServer;
use bollard::Docker;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::{Ctx, Io};

#[derive(Debug, Clone, clap::Args)]
pub struct PushArgs {
    /// The local image, NAME[:TAG] (default tag latest), pushed under the same repository and
    /// tag: to the registry NAME starts with (as Docker), else to the cluster's.
    #[arg(value_name = "NAME[:TAG]", required = true)]
    pub images: Vec<String>,
    /// Push to this registry instead of the cluster's (http(s)://HOST:PORT; HOST:PORT means
    /// http on loopback, https otherwise).
    #[arg(long, env = "BERTH_REGISTRY", value_name = "URL")]
    pub registry: Option<String>,
}

/// `HOST:PORT` or a URL -> a base URL.
pub fn registry_base(r: &str) -> String {
    let r = r.trim_end_matches('/');
    if r.starts_with("http://") || r.starts_with("https://") {
        return r.to_string();
    }
    let host = r.rsplit_once(':').map_or(r, |(h, _)| h);
    let loopback = host == "localhost"
        || host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback {
        format!("http://{r}")
    } else {
        format!("https://{r}")
    }
}

/// The registries to push to: `--registry`, else the cluster's.
pub async fn targets(ctx: &Ctx, registry: Option<&str>) -> anyhow::Result<Vec<String>> {
    if let Some(r) = registry {
        return Ok(vec![registry_base(r)]);
    }
    let client = ctx.client()?;
    let (mut servers, _) = client
        .list::<RegistryServer>(None, "")
        .await
        .context("asking the cluster where its registry is")?;
    servers.sort_by_key(|s| s.spec.server_id);
    if servers.is_empty() {
        bail!(
            "no server of this cluster runs a registry: start servers with --registry-listen \
             HOST:PORT (berth dev serves one on 127.0.0.1:5000), or pass --registry URL"
        );
    }
    Ok(servers.into_iter().map(|s| s.spec.url).collect())
}

/// Where `image` goes: `--registry`; else the registry its name starts with
/// (`127.0.0.1:5000/shop/web`, as Docker); else the cluster's.
pub async fn targets_for(
    ctx: &Ctx,
    registry: Option<&str>,
    image: &ImageRef,
) -> anyhow::Result<Vec<String>> {
    match (registry, &image.domain) {
        (None, Some(d)) => Ok(vec![registry_base(d)]),
        (r, _) => targets(ctx, r).await,
    }
}

/// The HTTP client for registries: the CLI's credential when it has one.
pub fn http_client(ctx: &Ctx) -> anyhow::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder().connect_timeout(std::time::Duration::from_secs(5));
    if let Some(tls) = &ctx.client_config.tls {
        let cfg = berth_tls::mtls_client_config(tls).context("the registry TLS settings")?;
        b = b.use_preconfigured_tls((*cfg).clone());
    }
    Ok(b.build()?)
}

pub async fn run(ctx: &Ctx, args: PushArgs, io: &mut Io<'_>) -> anyhow::Result<()> {
    let docker = engine().await?;
    let http = http_client(ctx)?;
    for image in &args.images {
        let r = ImageRef::parse(image).map_err(|e| anyhow::anyhow!("{image}: {e}"))?;
        let bases = targets_for(ctx, args.registry.as_deref(), &r).await?;
        let pushed = push_image(&docker, &http, &bases, &r).await?;
        writeln!(io.out, "{pushed}")?;
    }
    Ok(())
}

pub async fn engine() -> anyhow::Result<Docker> {
    Docker::connect_with_local_defaults()
        .context("connecting to the Docker engine")?
        .negotiate_version()
        .await
        .context("the Docker engine does not answer: start it (berth push reads the image from the local engine)")
}

/// What one push did, as printed.
pub struct Pushed {
    pub target: String,
    pub registry: String,
    pub digest: String,
    pub size: u64,
    pub uploaded: usize,
    pub blobs: usize,
}

impl std::fmt::Display for Pushed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pushed {} to {}: {} ({:.1} MB, {} of {} blobs uploaded)",
            self.target,
            self.registry,
            self.digest,
            self.size as f64 / 1e6,
            self.uploaded,
            self.blobs
        )
    }
}

struct Blob {
    path: PathBuf,
    digest: String,
    size: u64,
    media_type: &'static str,
}

fn blob(path: PathBuf, media_type: &'static str) -> anyhow::Result<Blob> {
    let digest = berth_registry::local_blobs::hash_file(&path)
        .with_context(|| format!("reading {}", path.display()))?;
    let size = std::fs::metadata(&path)?.len();
    Ok(Blob {
        path,
        digest,
        size,
        media_type,
    })
}

fn is_gzip(path: &Path) -> bool {
    let mut magic = [0u8; 2];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == [0x1f, 0x8b]
}

/// Export `image` from the engine into `dir` and read its config and layers.
async fn export(docker: &Docker, image: &str, dir: &Path) -> anyhow::Result<(Blob, Vec<Blob>)> {
    let tar_path = dir.join("image.tar");
    let mut f = tokio::fs::File::create(&tar_path).await?;
    let mut s = docker.export_image(image);
    while let Some(chunk) = s.next().await {
        let chunk = chunk.map_err(|e| match e {
            bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            } => anyhow::anyhow!(
                "image {image} is not in the local Docker engine (build it with berth build -t {image} DIR, or docker pull / docker tag it)"
            ),
            e => anyhow::Error::new(e).context(format!("exporting {image} from the engine")),
        })?;
        f.write_all(&chunk).await?;
    }
    f.flush().await?;
    drop(f);
    let (dir2, tar2) = (dir.to_path_buf(), tar_path.clone());
    tokio::task::spawn_blocking(move || -> anyhow::Result<(Blob, Vec<Blob>)> {
        let out = dir2.join("x");
        tar::Archive::new(std::fs::File::open(&tar2)?)
            .unpack(&out)
            .context("unpacking the exported image")?;
        let _ = std::fs::remove_file(&tar2);
        let manifest: serde_json::Value = serde_json::from_slice(
            &std::fs::read(out.join("manifest.json")).context("the export has no manifest.json")?,
        )?;
        let entry = manifest
            .get(0)
            .ok_or_else(|| anyhow::anyhow!("the export's manifest.json is empty"))?;
        let config = entry["Config"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("manifest.json has no Config"))?;
        let config = blob(out.join(config), "application/vnd.oci.image.config.v1+json")?;
        let mut layers = Vec::new();
        for l in entry["Layers"].as_array().into_iter().flatten() {
            let p = out.join(
                l.as_str()
                    .ok_or_else(|| anyhow::anyhow!("manifest.json: a layer is not a path"))?,
            );
            let mt = if is_gzip(&p) {
                "application/vnd.oci.image.layer.v1.tar+gzip"
            } else {
                "application/vnd.oci.image.layer.v1.tar"
            };
            layers.push(blob(p, mt)?);
        }
        Ok((config, layers))
    })
    .await?
}

fn http_err(e: reqwest::Error) -> anyhow::Error {
    anyhow::anyhow!(berth_tls::error_chain(&e))
}

/// A registry's error answer, as its message.
async fn refused(what: &str, resp: reqwest::Response) -> anyhow::Error {
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    let msg = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["errors"][0]["message"].as_str().map(str::to_string))
        .unwrap_or(body);
    anyhow::anyhow!("{what}: the registry answered {status}: {}", msg.trim())
}

async fn upload(http: &reqwest::Client, base: &str, repo: &str, b: &Blob) -> anyhow::Result<bool> {
    let url = format!("{base}/v2/{repo}/blobs/{}", b.digest);
    let head = http.head(&url).send().await.map_err(http_err)?;
    if head.status().is_success() {
        return Ok(false);
    }
    let file = tokio::fs::File::open(&b.path).await?;
    let body =
        reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(file, 256 << 10));
    let resp = http
        .post(format!(
            "{base}/v2/{repo}/blobs/uploads/?digest={}",
            b.digest
        ))
        .header(reqwest::header::CONTENT_LENGTH, b.size)
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .body(body)
        .send()
        .await
        .map_err(http_err)?;
    if resp.status() != reqwest::StatusCode::CREATED {
        return Err(refused(&format!("uploading {}", b.digest), resp).await);
    }
    Ok(true)
}

/// Push the engine's `image` to the first of `bases` that takes it.
pub async fn push_image(
    docker: &Docker,
    http: &reqwest::Client,
    bases: &[String],
    image: &ImageRef,
) -> anyhow::Result<Pushed> {
    let local = image.to_string();
    let tag = image.tag.clone().unwrap_or_else(|| "latest".to_string());
    let repo = image.repository.clone();
    let dir = tempfile::Builder::new()
        .prefix("berth-push-")
        .tempdir()
        .context("a temporary directory for the export")?;
    let (config, layers) = export(docker, &local, dir.path()).await?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": config.media_type, "digest": config.digest, "size": config.size},
        "layers": layers.iter().map(|l| serde_json::json!({
            "mediaType": l.media_type, "digest": l.digest, "size": l.size,
        })).collect::<Vec<_>>(),
    });
    let manifest = serde_json::to_vec(&manifest)?;
    let digest = berth_proto::image::sha256_digest(&manifest);
    let mut errors = Vec::new();
    for base in bases {
        let attempt = async {
            let mut uploaded = 0;
            for b in std::iter::once(&config).chain(layers.iter()) {
                if upload(http, base, &repo, b).await? {
                    uploaded += 1;
                }
            }
            let resp = http
                .put(format!("{base}/v2/{repo}/manifests/{tag}"))
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/vnd.oci.image.manifest.v1+json",
                )
                .body(manifest.clone())
                .send()
                .await
                .map_err(http_err)?;
            if resp.status() != reqwest::StatusCode::CREATED {
                return Err(refused(&format!("putting the manifest of {repo}:{tag}"), resp).await);
            }
            anyhow::Ok(uploaded)
        };
        match attempt.await {
            Ok(uploaded) => {
                return Ok(Pushed {
                    target: format!("{repo}:{tag}"),
                    registry: base.clone(),
                    digest,
                    size: config.size + layers.iter().map(|l| l.size).sum::<u64>(),
                    uploaded,
                    blobs: layers.len() + 1,
                })
            }
            Err(e) => errors.push(format!("{base}: {e:#}")),
        }
    }
    bail!(
        "push of {local} failed on every registry server: {}",
        errors.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::registry_base;

    #[test]
    fn bare_addresses_mean_http_on_loopback_and_https_elsewhere() {
        assert_eq!(registry_base("127.0.0.1:5000"), "http://127.0.0.1:5000");
        assert_eq!(registry_base("localhost:5000/"), "http://localhost:5000");
        assert_eq!(registry_base("10.0.0.1:5443"), "https://10.0.0.1:5443");
        assert_eq!(
            registry_base("https://r.example:443"),
            "https://r.example:443"
        );
    }
}
