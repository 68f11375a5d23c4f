//! [`ClusterBlobs`]: blob bytes replicated across the servers.
//!
//! Each server keeps verified files in its [`LocalBlobs`]. A commit (the end of a push's blob
//! upload) returns only when the blob is on a majority of the current Raft members: this
//! server plus enough peers, each sent the bytes over the peer endpoint
//! (`PUT /berth/v1/blobs/DIGEST`, server identity only) after a `HEAD` shows it lacks them. The
//! remaining peers keep receiving in the background. So losing a minority of servers loses
//! no acknowledged blob. Which servers hold a verified copy is recorded in the blob's
//! `ImageBlob` object (`status.servers`, raft ids).
//!
//! A read whose local copy is missing or corrupt (quarantined by [`LocalBlobs`]) is refetched
//! from a peer (`GET /berth/v1/blobs/DIGEST`, which serves only that peer's own verified copy,
//! so refetches never chain), verified against its digest, stored and then served: a corrupt
//! blob is never served, and one server's bad disk does not fail a pull. Concurrent reads of one
//! missing blob share one refetch.
//!
//! Garbage collection ([`ClusterBlobs::collect_garbage`]) removes local blobs that no manifest
//! in the store references and that are older than a grace period (which protects pushes in
//! flight: their blobs land before the manifest that references them), plus stale upload
//! files.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use berth_client::{Client, ClientError};
use berth_proto::image::blob_object_name;
use berth_proto::types::{
    ImageBlob, ImageBlobSpec, ImageBlobStatus, ImageManifest, ObjectMeta, RegistryServer,
};
use futures::StreamExt;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use crate::local_blobs::LocalBlobs;
use crate::storage::{BlobInfo, Blobs, RegistryError};
use crate::store::store_err;

/// The path prefix of the server-to-server blob endpoint.
pub const PEER_BLOBS_PATH: &str = "/berth/v1/blobs/";

/// Another server's registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub id: u64,
    pub url: String,
}

/// Who the other servers are right now.
#[async_trait]
pub trait PeerDirectory: Send + Sync + 'static {
    /// The registries of the other current members, and the number of members (counting this
    /// one), whose majority a commit must reach.
    async fn peers(&self) -> Result<(Vec<Peer>, usize), RegistryError>;
}

/// Peers from the store: the `RegistryServer` objects of the current Raft members.
pub struct StorePeers {
    client: Client,
    self_id: u64,
    members: Arc<dyn Fn() -> Vec<u64> + Send + Sync>,
}

impl StorePeers {
    /// `members` returns the current Raft member ids (this server's view).
    pub fn new(
        client: Client,
        self_id: u64,
        members: Arc<dyn Fn() -> Vec<u64> + Send + Sync>,
    ) -> StorePeers {
        StorePeers {
            client,
            self_id,
            members,
        }
    }
}

#[async_trait]
impl PeerDirectory for StorePeers {
    async fn peers(&self) -> Result<(Vec<Peer>, usize), RegistryError> {
        let mut members = (self.members)();
        if !members.contains(&self.self_id) {
            members.push(self.self_id);
        }
        let (servers, _) = self
            .client
            .list::<RegistryServer>(None, "")
            .await
            .map_err(|e| store_err("listing registry servers", e))?;
        let mut peers: Vec<Peer> = servers
            .into_iter()
            .filter(|s| s.spec.server_id != self.self_id && members.contains(&s.spec.server_id))
            .map(|s| Peer {
                id: s.spec.server_id,
                url: s.spec.url,
            })
            .collect();
        peers.sort_by_key(|p| p.id);
        Ok((peers, members.len()))
    }
}

/// Write (create or update) `server-<id>`'s registry endpoint.
pub async fn register_server(client: &Client, id: u64, url: &str) -> Result<(), RegistryError> {
    let obj = RegistryServer {
        metadata: ObjectMeta {
            name: format!("server-{id}"),
            ..Default::default()
        },
        spec: berth_proto::types::RegistryServerSpec {
            server_id: id,
            url: url.to_string(),
        },
        ..Default::default()
    };
    client
        .apply(&obj)
        .await
        .map_err(|e| store_err("registering this server's registry", e))?;
    Ok(())
}

/// Settings of [`ClusterBlobs`].
#[derive(Clone)]
pub struct ClusterConfig {
    pub self_id: u64,
    /// Client for peers' registries: mTLS with this server's certificate (or plain HTTP for
    /// loopback tests).
    pub http: reqwest::Client,
    /// How long one peer transfer may take.
    pub transfer_timeout: Duration,
}

pub struct ClusterBlobs {
    local: Arc<LocalBlobs>,
    peers: Arc<dyn PeerDirectory>,
    client: Client,
    cfg: ClusterConfig,
    tmp_dir: PathBuf,
    refetching: tokio::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl ClusterBlobs {
    pub fn new(
        local: LocalBlobs,
        peers: Arc<dyn PeerDirectory>,
        client: Client,
        cfg: ClusterConfig,
        tmp_dir: impl Into<PathBuf>,
    ) -> Result<ClusterBlobs, RegistryError> {
        let tmp_dir = tmp_dir.into();
        std::fs::create_dir_all(&tmp_dir).map_err(|e| {
            RegistryError::Internal(format!("cannot create {}: {e}", tmp_dir.display()))
        })?;
        Ok(ClusterBlobs {
            local: Arc::new(local),
            peers,
            client,
            cfg,
            tmp_dir,
            refetching: tokio::sync::Mutex::new(HashMap::new()),
        })
    }

    pub fn local(&self) -> &LocalBlobs {
        &self.local
    }

    /// Add (or with `remove`, drop) this server in the blob's `ImageBlob.status.servers`;
    /// deletes the object when no server holds the blob any more. Best effort: the record is
    /// for operators and refetch hints; a failure is logged, not returned.
    async fn record(&self, digest: &str, size: u64, servers: &[u64], remove: bool) {
        if let Err(e) = record_servers(&self.client, digest, size, servers, remove).await {
            tracing::warn!(%digest, error = %e, "registry: could not record which servers hold the blob");
        }
    }

    /// Remove local blobs that no manifest references and that are older than `grace`, and
    /// upload files older than `grace`. Returns the removed blob digests.
    pub async fn collect_garbage(&self, grace: Duration) -> Result<Vec<String>, RegistryError> {
        let (manifests, _) = self
            .client
            .list::<ImageManifest>(None, "")
            .await
            .map_err(|e| store_err("listing manifests for garbage collection", e))?;
        let referenced: HashSet<String> = manifests
            .into_iter()
            .flat_map(|m| m.spec.blobs.into_iter())
            .collect();
        let now = SystemTime::now();
        let old = |m: &std::fs::Metadata| {
            m.modified()
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age >= grace)
        };
        let mut removed = Vec::new();
        for (digest, meta) in self.local.list()? {
            if referenced.contains(&digest) || !old(&meta) {
                continue;
            }
            self.local.remove(&digest).await?;
            tracing::info!(%digest, size = meta.len(), "registry: removed an unreferenced blob");
            self.record(&digest, meta.len(), &[self.cfg.self_id], true)
                .await;
            removed.push(digest);
        }
        if let Ok(mut rd) = tokio::fs::read_dir(&self.tmp_dir).await {
            while let Ok(Some(e)) = rd.next_entry().await {
                if let Ok(m) = e.metadata().await {
                    if m.is_file() && old(&m) {
                        let _ = tokio::fs::remove_file(e.path()).await;
                    }
                }
            }
        }
        Ok(removed)
    }

    /// Send the blob at `path` to `peer` unless it already has it.
    async fn replicate_to(
        http: reqwest::Client,
        peer: Peer,
        digest: String,
        path: PathBuf,
        size: u64,
        timeout: Duration,
    ) -> Result<u64, String> {
        let url = format!("{}{PEER_BLOBS_PATH}{digest}", peer.url);
        let send = async {
            let head = http
                .head(&url)
                .send()
                .await
                .map_err(|e| describe_http(&e))?;
            if head.status().is_success() {
                return Ok(peer.id);
            }
            let file = tokio::fs::File::open(&path)
                .await
                .map_err(|e| format!("reading {}: {e}", path.display()))?;
            let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
                file,
                256 << 10,
            ));
            let resp = http
                .put(&url)
                .header(http::header::CONTENT_LENGTH, size)
                .body(body)
                .send()
                .await
                .map_err(|e| describe_http(&e))?;
            if resp.status().is_success() {
                Ok(peer.id)
            } else {
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                Err(format!("{status}: {}", text.trim()))
            }
        };
        match tokio::time::timeout(timeout, send).await {
            Ok(r) => r.map_err(|e| format!("server {} ({}): {e}", peer.id, peer.url)),
            Err(_) => Err(format!(
                "server {} ({}): no answer within {timeout:?}",
                peer.id, peer.url
            )),
        }
    }

    /// Fetch `digest` from `peer` into a temporary file, verifying it; returns the file.
    async fn fetch_from(&self, peer: &Peer, digest: &str) -> Result<PathBuf, String> {
        let url = format!("{}{PEER_BLOBS_PATH}{digest}", peer.url);
        let tmp = self
            .tmp_dir
            .join(format!("refetch-{}", uuid::Uuid::new_v4()));
        let fetch = async {
            let resp = self
                .cfg
                .http
                .get(&url)
                .send()
                .await
                .map_err(|e| describe_http(&e))?;
            if !resp.status().is_success() {
                return Err(format!("{}", resp.status()));
            }
            let mut f = tokio::fs::File::create(&tmp)
                .await
                .map_err(|e| format!("creating {}: {e}", tmp.display()))?;
            let mut h = Sha256::new();
            let mut stream = resp.bytes_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| describe_http(&e))?;
                h.update(&chunk);
                f.write_all(&chunk)
                    .await
                    .map_err(|e| format!("writing {}: {e}", tmp.display()))?;
            }
            f.flush()
                .await
                .map_err(|e| format!("writing {}: {e}", tmp.display()))?;
            let actual = berth_proto::image::sha256_digest_from_bytes(&h.finalize());
            if actual != digest {
                return Err(format!("sent bytes with digest {actual}"));
            }
            Ok(())
        };
        let r = match tokio::time::timeout(self.cfg.transfer_timeout, fetch).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {:?}", self.cfg.transfer_timeout)),
        };
        match r {
            Ok(()) => Ok(tmp),
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                Err(format!("server {} ({}): {e}", peer.id, peer.url))
            }
        }
    }

    /// Refetch a blob this server lacks (or had corrupt) from the peers, holders first.
    async fn refetch(&self, digest: &str) -> Result<Option<PathBuf>, RegistryError> {
        let gate = {
            let mut m = self.refetching.lock().await;
            m.entry(digest.to_string()).or_default().clone()
        };
        let _one = gate.lock().await;
        // Another reader may have refetched it while we waited.
        if let Some(p) = self.local.local_path(digest).await? {
            return Ok(Some(p));
        }
        let result = self.refetch_once(digest).await;
        self.refetching.lock().await.remove(digest);
        result
    }

    async fn refetch_once(&self, digest: &str) -> Result<Option<PathBuf>, RegistryError> {
        let (mut peers, _) = self.peers.peers().await?;
        if peers.is_empty() {
            return Ok(None);
        }
        let holders: Vec<u64> = match self
            .client
            .get::<ImageBlob>("", &blob_object_name(digest))
            .await
        {
            Ok(b) => b
                .status
                .map(|s| s.servers.iter().filter_map(|s| s.parse().ok()).collect())
                .unwrap_or_default(),
            // No server ever recorded it: nobody to ask.
            Err(ClientError::NotFound(_)) => return Ok(None),
            Err(_) => Vec::new(),
        };
        peers.sort_by_key(|p| !holders.contains(&p.id));
        let mut errors = Vec::new();
        for peer in &peers {
            match self.fetch_from(peer, digest).await {
                Ok(tmp) => {
                    let info = self.local.commit(digest, &tmp).await?;
                    tracing::info!(%digest, from = peer.id, size = info.size, "registry: refetched a blob from a peer");
                    self.record(digest, info.size, &[self.cfg.self_id], false)
                        .await;
                    return self.local.local_path(digest).await;
                }
                Err(e) => errors.push(e),
            }
        }
        tracing::warn!(%digest, errors = %errors.join("; "), "registry: no peer could send a blob");
        Ok(None)
    }
}

fn describe_http(e: &reqwest::Error) -> String {
    berth_tls::error_chain(e)
}

/// Read-modify-write of `ImageBlob.status.servers` with CAS retries.
async fn record_servers(
    client: &Client,
    digest: &str,
    size: u64,
    servers: &[u64],
    remove: bool,
) -> Result<(), ClientError> {
    let name = blob_object_name(digest);
    for _ in 0..8 {
        let current = match client.get::<ImageBlob>("", &name).await {
            Ok(b) => Some(b),
            Err(ClientError::NotFound(_)) => None,
            Err(e) => return Err(e),
        };
        let mut blob = match current {
            Some(b) => b,
            None if remove => return Ok(()),
            None => {
                let fresh = ImageBlob {
                    metadata: ObjectMeta {
                        name: name.clone(),
                        ..Default::default()
                    },
                    spec: ImageBlobSpec {
                        digest: digest.to_string(),
                        size: i64::try_from(size).unwrap_or(i64::MAX),
                    },
                    ..Default::default()
                };
                match client.create(&fresh).await {
                    Ok(b) => b,
                    Err(ClientError::AlreadyExists(_)) => continue,
                    Err(e) => return Err(e),
                }
            }
        };
        let mut status = blob.status.clone().unwrap_or_default();
        let before = status.servers.clone();
        for s in servers {
            let s = s.to_string();
            if remove {
                status.servers.retain(|x| *x != s);
            } else if !status.servers.contains(&s) {
                status.servers.push(s);
            }
        }
        status.servers.sort();
        if remove && status.servers.is_empty() {
            return match client
                .delete(
                    berth_proto::Kind::ImageBlob,
                    "",
                    &name,
                    Some(blob.metadata.resource_version),
                )
                .await
            {
                Ok(_) | Err(ClientError::NotFound(_)) => Ok(()),
                Err(ClientError::Conflict { .. }) => continue,
                Err(e) => Err(e),
            };
        }
        if status.servers == before && blob.status.is_some() {
            return Ok(());
        }
        blob.status = Some(ImageBlobStatus {
            servers: status.servers,
            unreferenced_since: status.unreferenced_since,
        });
        match client.update_status(&blob).await {
            Ok(_) => return Ok(()),
            Err(ClientError::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[async_trait]
impl Blobs for ClusterBlobs {
    async fn stat(&self, digest: &str) -> Result<Option<BlobInfo>, RegistryError> {
        if let Some(i) = self.local.stat(digest).await? {
            return Ok(Some(i));
        }
        match self
            .client
            .get::<ImageBlob>("", &blob_object_name(digest))
            .await
        {
            Ok(b) if b.status.as_ref().is_some_and(|s| !s.servers.is_empty()) => {
                Ok(Some(BlobInfo {
                    size: b.spec.size.max(0) as u64,
                }))
            }
            Ok(_) | Err(ClientError::NotFound(_)) => Ok(None),
            Err(e) => Err(store_err("looking up a blob", e)),
        }
    }

    async fn local_path(&self, digest: &str) -> Result<Option<PathBuf>, RegistryError> {
        if let Some(p) = self.local.local_path(digest).await? {
            return Ok(Some(p));
        }
        self.refetch(digest).await
    }

    async fn local_only(&self, digest: &str) -> Result<Option<PathBuf>, RegistryError> {
        self.local.local_path(digest).await
    }

    async fn commit(&self, digest: &str, file: &Path) -> Result<BlobInfo, RegistryError> {
        let info = self.local.commit(digest, file).await?;
        let (peers, members) = self.peers.peers().await?;
        let majority = members / 2 + 1;
        let need = majority.saturating_sub(1);
        if need == 0 {
            self.record(digest, info.size, &[self.cfg.self_id], false)
                .await;
            return Ok(info);
        }
        let path = self.local.path_of(digest)?;
        let (tx, mut rx) = tokio::sync::mpsc::channel(peers.len().max(1));
        for peer in peers.iter().cloned() {
            let tx = tx.clone();
            let (http, d, p, t) = (
                self.cfg.http.clone(),
                digest.to_string(),
                path.clone(),
                self.cfg.transfer_timeout,
            );
            tokio::spawn(async move {
                let r = ClusterBlobs::replicate_to(http, peer, d, p, info.size, t).await;
                let _ = tx.send(r).await;
            });
        }
        drop(tx);
        let mut acked = vec![self.cfg.self_id];
        let mut errors = Vec::new();
        while acked.len() < majority {
            match rx.recv().await {
                Some(Ok(id)) => acked.push(id),
                Some(Err(e)) => errors.push(e),
                None => break,
            }
        }
        self.record(digest, info.size, &acked, false).await;
        if acked.len() < majority {
            return Err(RegistryError::Unavailable(format!(
                "blob {digest} reached {} of {members} servers; a push needs a majority ({majority}) \
                 so that losing a server loses no image: {}. Retry when the servers are back",
                acked.len(),
                if errors.is_empty() {
                    "the other servers have not registered their registry endpoint".to_string()
                } else {
                    errors.join("; ")
                }
            )));
        }
        // The rest keep copying; record them as they finish.
        if acked.len() < members {
            let client = self.client.clone();
            let (d, size) = (digest.to_string(), info.size);
            tokio::spawn(async move {
                while let Some(r) = rx.recv().await {
                    match r {
                        Ok(id) => {
                            let _ = record_servers(&client, &d, size, &[id], false).await;
                        }
                        Err(e) => {
                            tracing::warn!(digest = %d, error = %e, "registry: a peer did not take a blob copy (it will refetch on demand)")
                        }
                    }
                }
            });
        }
        Ok(info)
    }

    async fn commit_replica(&self, digest: &str, file: &Path) -> Result<BlobInfo, RegistryError> {
        self.local.commit(digest, file).await
    }

    async fn remove(&self, digest: &str) -> Result<(), RegistryError> {
        self.local.remove(digest).await
    }
}
