//! [`StoreMetadata`]: tags and manifests in the Raft-replicated store, so any server answers any
//! tag and a tag survives the loss of a minority of servers.
//!
//! Each manifest is one cluster-scoped `ImageManifest` object and each tag one `ImageTag`
//! (names from `berth_proto::image`). A push of a manifest with a tag is ONE atomic write of
//! both objects; deleting a manifest deletes the tags of its repository that point at it in
//! the same write. Reads go through the API server, which answers from the Raft-applied store.

use async_trait::async_trait;
use berth_client::{BatchOp, Client, ClientError, DynObject};
use berth_proto::image::{manifest_object_name, tag_object_name};
use berth_proto::types::{ImageManifest, ImageManifestSpec, ImageTag, ImageTagSpec, ObjectMeta};
use berth_proto::Kind;

use crate::storage::{ManifestRecord, Metadata, RegistryError};

/// Registry metadata kept in the cluster store through an API client (the server's own
/// `system:server` identity when embedded in `berth server`).
#[derive(Clone)]
pub struct StoreMetadata {
    client: Client,
}

impl StoreMetadata {
    pub fn new(client: Client) -> StoreMetadata {
        StoreMetadata { client }
    }
}

/// A store client error as the registry reports it (shared with [`crate::cluster`]).
pub(crate) fn store_err(what: &str, e: ClientError) -> RegistryError {
    match e {
        ClientError::PermissionDenied(m) => RegistryError::Denied(m),
        e @ (ClientError::Unavailable { .. }
        | ClientError::Timeout(_)
        | ClientError::OutcomeUnknown(_)) => {
            RegistryError::Unavailable(format!("{what}: the cluster store is unavailable: {e}"))
        }
        e => RegistryError::Internal(format!("{what}: {e}")),
    }
}

fn record_of(m: ImageManifest) -> ManifestRecord {
    let s = m.spec;
    ManifestRecord {
        repository: s.repository,
        digest: s.digest,
        media_type: s.media_type,
        content: s.content.into_bytes(),
        blobs: s.blobs,
        manifests: s.manifests,
        subject: (!s.subject.is_empty()).then_some(s.subject),
        total_size: s.total_size.max(0) as u64,
    }
}

fn manifest_object(r: &ManifestRecord) -> Result<ImageManifest, RegistryError> {
    let content = String::from_utf8(r.content.clone()).map_err(|_| {
        RegistryError::Internal(format!(
            "manifest {}@{} is not UTF-8 JSON",
            r.repository, r.digest
        ))
    })?;
    Ok(ImageManifest {
        metadata: ObjectMeta {
            name: manifest_object_name(&r.repository, &r.digest),
            ..Default::default()
        },
        spec: ImageManifestSpec {
            repository: r.repository.clone(),
            digest: r.digest.clone(),
            media_type: r.media_type.clone(),
            content,
            blobs: r.blobs.clone(),
            manifests: r.manifests.clone(),
            subject: r.subject.clone().unwrap_or_default(),
            total_size: i64::try_from(r.total_size).unwrap_or(i64::MAX),
        },
        ..Default::default()
    })
}

impl StoreMetadata {
    async fn tags_of(&self, repository: &str) -> Result<Vec<ImageTag>, RegistryError> {
        let (tags, _) = self
            .client
            .list::<ImageTag>(None, "")
            .await
            .map_err(|e| store_err("list tags", e))?;
        Ok(tags
            .into_iter()
            .filter(|t| t.spec.repository == repository)
            .collect())
    }
}

#[async_trait]
impl Metadata for StoreMetadata {
    async fn get_manifest(
        &self,
        repository: &str,
        digest: &str,
    ) -> Result<Option<ManifestRecord>, RegistryError> {
        let name = manifest_object_name(repository, digest);
        match self.client.get::<ImageManifest>("", &name).await {
            Ok(m) if m.spec.repository == repository && m.spec.digest == digest => {
                Ok(Some(record_of(m)))
            }
            Ok(_) | Err(ClientError::NotFound(_)) => Ok(None),
            Err(e) => Err(store_err("read manifest", e)),
        }
    }

    async fn resolve_tag(
        &self,
        repository: &str,
        tag: &str,
    ) -> Result<Option<String>, RegistryError> {
        let name = tag_object_name(repository, tag);
        match self.client.get::<ImageTag>("", &name).await {
            Ok(t) if t.spec.repository == repository && t.spec.tag == tag => {
                Ok(Some(t.spec.digest))
            }
            Ok(_) | Err(ClientError::NotFound(_)) => Ok(None),
            Err(e) => Err(store_err("read tag", e)),
        }
    }

    async fn put_manifest(
        &self,
        record: ManifestRecord,
        tag: Option<&str>,
    ) -> Result<(), RegistryError> {
        let mut objects = vec![DynObject::from_typed(&manifest_object(&record)?)];
        if let Some(tag) = tag {
            objects.push(DynObject::from_typed(&ImageTag {
                metadata: ObjectMeta {
                    name: tag_object_name(&record.repository, tag),
                    ..Default::default()
                },
                spec: ImageTagSpec {
                    repository: record.repository.clone(),
                    tag: tag.to_string(),
                    digest: record.digest.clone(),
                },
                ..Default::default()
            }));
        }
        let results = self
            .client
            .apply_all(&objects, false)
            .await
            .map_err(|e| store_err("store manifest", e))?;
        for r in results {
            r.map_err(|e| store_err("store manifest", e))?;
        }
        Ok(())
    }

    async fn delete_manifest(&self, repository: &str, digest: &str) -> Result<bool, RegistryError> {
        if self.get_manifest(repository, digest).await?.is_none() {
            return Ok(false);
        }
        let mut ops = vec![BatchOp::Delete {
            kind: Kind::ImageManifest,
            namespace: String::new(),
            name: manifest_object_name(repository, digest),
            precondition: None,
        }];
        for t in self.tags_of(repository).await? {
            if t.spec.digest == digest {
                ops.push(BatchOp::Delete {
                    kind: Kind::ImageTag,
                    namespace: String::new(),
                    name: t.metadata.name,
                    precondition: Some(t.metadata.resource_version),
                });
            }
        }
        let results = self
            .client
            .batch(ops)
            .await
            .map_err(|e| store_err("delete manifest", e))?;
        let mut found = false;
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Ok(_) => found |= i == 0,
                // Raced with another delete (or a re-tag): that object is gone or moved on.
                Err(ClientError::NotFound(_)) | Err(ClientError::Conflict { .. }) => {}
                Err(e) => return Err(store_err("delete manifest", e)),
            }
        }
        Ok(found)
    }

    async fn list_tags(&self, repository: &str) -> Result<Vec<String>, RegistryError> {
        let mut tags: Vec<String> = self
            .tags_of(repository)
            .await?
            .into_iter()
            .map(|t| t.spec.tag)
            .collect();
        tags.sort();
        tags.dedup();
        Ok(tags)
    }

    async fn catalog(&self) -> Result<Vec<String>, RegistryError> {
        let (manifests, _) = self
            .client
            .list::<ImageManifest>(None, "")
            .await
            .map_err(|e| store_err("list manifests", e))?;
        let mut repos: Vec<String> = manifests.into_iter().map(|m| m.spec.repository).collect();
        repos.sort();
        repos.dedup();
        Ok(repos)
    }
}
