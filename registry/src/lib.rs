//! Berth's image registry: the OCI Distribution API (v2) that every `berth server` serves.
//!
//! Two seams keep the HTTP protocol apart from where things are kept:
//! - [`Metadata`]: tags and manifests. The cluster implementation keeps them in the
//!   Raft-replicated store (`ImageTag` / `ImageManifest` objects, see `berth_proto::image`), so
//!   any server answers any tag; [`MemoryMetadata`]-style implementations serve tests and a
//!   stand-alone registry.
//! - [`Blobs`]: content-addressed blob bytes. The local implementation keeps verified files on
//!   this server's disk; the cluster implementation wraps it so that a commit returns only once
//!   the blob is on a majority of servers, and a blob that fails verification is refetched
//!   from a peer.
//!
//! Upload sessions (monolithic and chunked) are local to the server that started them.

pub mod api;
pub mod cluster;
pub mod local_blobs;
pub mod serve;
pub mod storage;
pub mod store;
pub mod token;

pub use api::{Access, Registry, SentCounters};
pub use cluster::{ClusterBlobs, ClusterConfig, Peer, PeerDirectory, StorePeers};
pub use local_blobs::LocalBlobs;
pub use storage::{BlobInfo, Blobs, ManifestRecord, Metadata, RegistryError};
pub use store::StoreMetadata;
