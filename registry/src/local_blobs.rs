//! [`LocalBlobs`]: content-addressed blob files on this server's disk.
//!
//! Layout: `ROOT/blobs/sha256/<first 2 hex>/<64 hex>`. A commit fsyncs the file, renames it
//! into place and fsyncs the directory, so an acknowledged blob survives a crash. Reads verify:
//! [`Blobs::local_path`] re-hashes the file every time before handing it out (a cache keyed by
//! length and mtime would miss bit rot, which changes neither); a file whose bytes no longer
//! match its digest is moved to `ROOT/quarantine/` and reported missing, so it is never served
//! (the cluster wrapper then refetches it from a peer).

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use async_trait::async_trait;
use sha2::{Digest as _, Sha256};

use crate::storage::{BlobInfo, Blobs, RegistryError};

pub struct LocalBlobs {
    root: PathBuf,
}

fn hex_of(digest: &str) -> Result<&str, RegistryError> {
    berth_proto::image::check_digest(digest).map_err(RegistryError::Unknown)?;
    Ok(&digest["sha256:".len()..])
}

/// sha256 of a file's bytes, as `sha256:<hex>`.
pub fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let d = h.finalize();
    Ok(berth_proto::image::sha256_digest_from_bytes(&d))
}

impl LocalBlobs {
    /// Open (creating) the blob store under `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<LocalBlobs, RegistryError> {
        let root = root.into();
        std::fs::create_dir_all(root.join("blobs").join("sha256")).map_err(|e| {
            RegistryError::Internal(format!("cannot create {}: {e}", root.display()))
        })?;
        Ok(LocalBlobs { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob `digest` lives (whether or not it exists).
    pub fn path_of(&self, digest: &str) -> Result<PathBuf, RegistryError> {
        let hex = hex_of(digest)?;
        Ok(self
            .root
            .join("blobs")
            .join("sha256")
            .join(&hex[..2])
            .join(hex))
    }

    /// Every blob file on this disk (digest and file metadata), unverified.
    pub fn list(&self) -> Result<Vec<(String, std::fs::Metadata)>, RegistryError> {
        let mut out = Vec::new();
        let top = self.root.join("blobs").join("sha256");
        for dir in std::fs::read_dir(&top)? {
            let dir = dir?;
            if !dir.file_type()?.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(dir.path())? {
                let f = f?;
                let name = f.file_name().to_string_lossy().into_owned();
                let digest = format!("sha256:{name}");
                let meta = f.metadata()?;
                if meta.is_file() && berth_proto::image::check_digest(&digest).is_ok() {
                    out.push((digest, meta));
                }
            }
        }
        Ok(out)
    }

    /// Move a corrupt file out of the way (kept for inspection, never served).
    fn quarantine(&self, digest: &str, path: &Path) {
        let dir = self.root.join("quarantine");
        let stamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let target = dir.join(format!("{}-{stamp}", digest.replace(':', "-")));
        let moved = std::fs::create_dir_all(&dir).and_then(|_| std::fs::rename(path, &target));
        match moved {
            Ok(()) => tracing::error!(
                %digest,
                quarantined = %target.display(),
                "registry: blob bytes do not match their digest (disk corruption?); not serving it"
            ),
            Err(e) => {
                tracing::error!(%digest, error = %e, "registry: corrupt blob could not be moved; removing it");
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

#[async_trait]
impl Blobs for LocalBlobs {
    async fn stat(&self, digest: &str) -> Result<Option<BlobInfo>, RegistryError> {
        let path = self.path_of(digest)?;
        match tokio::fs::metadata(&path).await {
            Ok(m) if m.is_file() => Ok(Some(BlobInfo { size: m.len() })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn local_path(&self, digest: &str) -> Result<Option<PathBuf>, RegistryError> {
        let path = self.path_of(digest)?;
        let p = path.clone();
        let actual = match tokio::task::spawn_blocking(move || hash_file(&p))
            .await
            .map_err(|e| RegistryError::Internal(format!("hashing task failed: {e}")))?
        {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if actual != digest {
            self.quarantine(digest, &path);
            return Ok(None);
        }
        Ok(Some(path))
    }

    async fn commit(&self, digest: &str, file: &Path) -> Result<BlobInfo, RegistryError> {
        let target = self.path_of(digest)?;
        let file = file.to_path_buf();
        let size = tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
            let f = std::fs::File::open(&file)?;
            f.sync_all()?;
            let size = f.metadata()?.len();
            let dir = target.parent().unwrap_or(Path::new("."));
            std::fs::create_dir_all(dir)?;
            std::fs::rename(&file, &target)?;
            std::fs::File::open(dir)?.sync_all()?;
            Ok(size)
        })
        .await
        .map_err(|e| RegistryError::Internal(format!("commit task failed: {e}")))??;
        Ok(BlobInfo { size })
    }

    async fn remove(&self, digest: &str) -> Result<(), RegistryError> {
        match tokio::fs::remove_file(self.path_of(digest)?).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::image::sha256_digest;

    async fn put(blobs: &LocalBlobs, dir: &Path, bytes: &[u8]) -> String {
        let d = sha256_digest(bytes);
        let tmp = dir.join("upload");
        std::fs::write(&tmp, bytes).expect("write upload");
        blobs.commit(&d, &tmp).await.expect("commit");
        d
    }

    #[tokio::test]
    async fn committed_blobs_are_served_and_a_corrupted_one_never_is() {
        let dir = tempfile::tempdir().expect("tmp");
        let blobs = LocalBlobs::open(dir.path().join("reg")).expect("open");
        let d = put(&blobs, dir.path(), b"layer bytes").await;
        assert_eq!(
            blobs.stat(&d).await.expect("stat"),
            Some(BlobInfo { size: 11 })
        );
        let p = blobs.local_path(&d).await.expect("path").expect("present");
        assert_eq!(std::fs::read(&p).expect("read"), b"layer bytes");

        // Flip the bytes on disk (same length): the next read re-hashes and refuses it.
        std::fs::write(&p, b"LAYER BYTES").expect("corrupt");
        assert_eq!(blobs.local_path(&d).await.expect("path"), None);
        assert_eq!(
            blobs.stat(&d).await.expect("stat"),
            None,
            "quarantined, not present"
        );
        let q: Vec<_> = std::fs::read_dir(dir.path().join("reg").join("quarantine"))
            .expect("quarantine dir")
            .collect();
        assert_eq!(q.len(), 1);

        // Unknown and malformed digests.
        assert_eq!(
            blobs.local_path(&sha256_digest(b"nope")).await.expect("ok"),
            None
        );
        assert!(matches!(
            blobs.stat("sha256:xyz").await,
            Err(RegistryError::Unknown(_))
        ));
        blobs.remove(&d).await.expect("remove absent is fine");
    }
}
