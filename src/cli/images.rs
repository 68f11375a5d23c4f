//! `berth images`: the cluster registry's repositories and tags, with digests, sizes, and the
//! nodes that have each image (from the images the agents report in Node status).

use berth_proto::types::{ImageManifest, ImageTag, Node};
use clap::Args;

use super::{table, Ctx, Io};

#[derive(Debug, Clone, Args)]
pub struct ImagesArgs {
    /// Only this repository (e.g. shop/web).
    #[arg(value_name = "REPOSITORY")]
    pub repository: Option<String>,
}

pub async fn run(ctx: &Ctx, args: ImagesArgs, io: &mut Io<'_>) -> anyhow::Result<()> {
    let client = ctx.client()?;
    let (mut tags, _) = client.list::<ImageTag>(None, "").await?;
    if let Some(r) = &args.repository {
        tags.retain(|t| &t.spec.repository == r);
    }
    let (manifests, _) = client.list::<ImageManifest>(None, "").await?;
    let (nodes, _) = client.list::<Node>(None, "").await?;
    if tags.is_empty() {
        match &args.repository {
            Some(r) => writeln!(io.err, "no tags in repository {r:?} of the cluster registry")?,
            None => writeln!(
                io.err,
                "the cluster registry has no images yet (docker push HOST:PORT/NAME:TAG, or berth build --push)"
            )?,
        }
        return Ok(());
    }
    write!(
        io.out,
        "{}",
        table::images_table(&tags, &manifests, &nodes).render()
    )?;
    Ok(())
}
