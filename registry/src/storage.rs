//! The storage seams of the registry (see the crate docs).

use std::path::Path;

use async_trait::async_trait;

/// A manifest as stored: exact bytes plus what the registry derived from them on push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestRecord {
    pub repository: String,
    /// `sha256:<hex>` of `content`.
    pub digest: String,
    pub media_type: String,
    pub content: Vec<u8>,
    /// Blob digests referenced (config + layers).
    pub blobs: Vec<String>,
    /// Child manifest digests (index / manifest list).
    pub manifests: Vec<String>,
    /// OCI 1.1 `subject` digest, if any.
    pub subject: Option<String>,
    /// Manifest size + every referenced blob's size.
    pub total_size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobInfo {
    pub size: u64,
}

/// Errors from storage, mapped by the HTTP layer to the Distribution spec's error codes.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Referenced blob/manifest missing (MANIFEST_BLOB_UNKNOWN etc.); the message names it.
    #[error("{0}")]
    Unknown(String),
    /// The bytes do not match the digest they were pushed under (DIGEST_INVALID).
    #[error("{0}")]
    DigestMismatch(String),
    /// Not enough servers hold a copy yet / storage unavailable (503, retryable).
    #[error("{0}")]
    Unavailable(String),
    /// Refused by policy (DENIED).
    #[error("{0}")]
    Denied(String),
    #[error("{0}")]
    Internal(String),
}

impl From<std::io::Error> for RegistryError {
    fn from(e: std::io::Error) -> Self {
        RegistryError::Internal(e.to_string())
    }
}

/// Tags and manifests.
#[async_trait]
pub trait Metadata: Send + Sync + 'static {
    async fn get_manifest(
        &self,
        repository: &str,
        digest: &str,
    ) -> Result<Option<ManifestRecord>, RegistryError>;
    /// The digest `repository:tag` points at.
    async fn resolve_tag(
        &self,
        repository: &str,
        tag: &str,
    ) -> Result<Option<String>, RegistryError>;
    /// Store a manifest and (optionally) point `tag` at it, as one write.
    async fn put_manifest(
        &self,
        record: ManifestRecord,
        tag: Option<&str>,
    ) -> Result<(), RegistryError>;
    /// Delete a manifest and every tag of its repository pointing at it. false = not found.
    async fn delete_manifest(&self, repository: &str, digest: &str) -> Result<bool, RegistryError>;
    /// Sorted tags of a repository (empty when the repository is unknown).
    async fn list_tags(&self, repository: &str) -> Result<Vec<String>, RegistryError>;
    /// Sorted repository names.
    async fn catalog(&self) -> Result<Vec<String>, RegistryError>;
}

/// Content-addressed blob bytes.
#[async_trait]
pub trait Blobs: Send + Sync + 'static {
    /// Size of a blob present and intact (verified) on this server, or reachable from a peer.
    async fn stat(&self, digest: &str) -> Result<Option<BlobInfo>, RegistryError>;
    /// A path to a verified local copy of the blob (fetching it from a peer if the local copy
    /// is missing or corrupt), or None if no server has it.
    async fn local_path(&self, digest: &str) -> Result<Option<std::path::PathBuf>, RegistryError>;
    /// Take a finished upload whose bytes were already checked against `digest` (the file is
    /// moved, not copied). Returns once the blob is durable as the implementation promises
    /// (locally: fsynced; cluster: on a majority of servers).
    async fn commit(&self, digest: &str, file: &Path) -> Result<BlobInfo, RegistryError>;
    /// A verified copy on THIS server only, never fetched from a peer (what a peer asking
    /// for a refetch gets, so refetches never chain).
    async fn local_only(&self, digest: &str) -> Result<Option<std::path::PathBuf>, RegistryError> {
        self.local_path(digest).await
    }
    /// Take a copy a peer replicates to this server: durable here, not replicated further.
    async fn commit_replica(&self, digest: &str, file: &Path) -> Result<BlobInfo, RegistryError> {
        self.commit(digest, file).await
    }
    /// Remove the local copy (garbage collection).
    async fn remove(&self, digest: &str) -> Result<(), RegistryError>;
}
