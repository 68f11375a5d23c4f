//! What the agent needs from the API server, as a small trait, plus the local pod cache.
//!
//! [`NodeApi`] is the agent's whole write surface (pod status, events, its Node). The
//! production implementation wraps `berth_client::Client`; tests use [`MemoryApi`], which
//! records every write and can be made unreachable to test that workloads keep running.
//!
//! [`PodCache`] holds the pods bound to this node, fed by a list+watch (or directly by tests),
//! and wakes the pod sync loop on every change. It starts *unsynced*: until the first full list
//! arrives the agent must not treat running workloads as orphans.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use berth_proto::storage::{PersistentVolume, PersistentVolumeClaim};
use berth_proto::trust::TrustSnapshot;
use berth_proto::types::{ConfigMap, Event, Node, Pod, Secret};
use tokio::sync::Notify;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("not found")]
    NotFound,
    #[error("conflict: the object changed meanwhile")]
    Conflict,
    #[error("API server unavailable: {0}")]
    Unavailable(String),
    #[error("API error: {0}")]
    Other(String),
}

#[async_trait::async_trait]
pub trait NodeApi: Send + Sync + 'static {
    /// Write a pod's status (the agent is its only writer for bound pods).
    async fn update_pod_status(&self, pod: &Pod) -> Result<Pod, ApiError>;
    async fn create_event(&self, ev: &Event) -> Result<(), ApiError>;
    async fn get_node(&self, name: &str) -> Result<Option<Node>, ApiError>;
    async fn create_node(&self, node: &Node) -> Result<Node, ApiError>;
    /// Update metadata/spec (labels).
    async fn update_node(&self, node: &Node) -> Result<Node, ApiError>;
    async fn update_node_status(&self, node: &Node) -> Result<Node, ApiError>;
    /// What image trust needs to decide whether `image` may start in `namespace`: the
    /// policies, and when one applies the tag's `ImageTag`, the trusted keys and their
    /// signatures over the digests to check (`node_digests` when the runtime knows them, else
    /// the reference's or the tag's digest).
    async fn trust_snapshot(
        &self,
        namespace: &str,
        image: &str,
        node_digests: Option<&[String]>,
    ) -> Result<TrustSnapshot, ApiError>;
    /// A ConfigMap a pod bound here references (None: it does not exist).
    async fn get_config_map(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<ConfigMap>, ApiError>;
    /// A Secret a pod bound here references (None: it does not exist).
    async fn get_secret(&self, namespace: &str, name: &str) -> Result<Option<Secret>, ApiError>;
    /// A PersistentVolumeClaim a pod bound here uses (None: it does not exist).
    async fn get_claim(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<PersistentVolumeClaim>, ApiError>;
    /// A PersistentVolume (None: it does not exist). A node may read the volumes of the claims
    /// its pods use, and learn that any other is gone.
    async fn get_volume(&self, name: &str) -> Result<Option<PersistentVolume>, ApiError>;
    /// The final delete of a pod this node stopped (grace 0, only at `resource_version`).
    async fn delete_pod(
        &self,
        namespace: &str,
        name: &str,
        resource_version: u64,
    ) -> Result<(), ApiError>;
}

/// Pods bound to this node, keyed by uid.
#[derive(Clone, Default)]
pub struct PodCache {
    inner: Arc<Mutex<Option<BTreeMap<String, Pod>>>>,
    changed: Arc<Notify>,
}

impl PodCache {
    pub fn new() -> PodCache {
        PodCache::default()
    }

    fn lock(&self) -> MutexGuard<'_, Option<BTreeMap<String, Pod>>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replace everything (a fresh list); marks the cache synced.
    pub fn replace_all(&self, pods: impl IntoIterator<Item = Pod>) {
        let map = pods
            .into_iter()
            .map(|p| (p.metadata.uid.clone(), p))
            .collect();
        *self.lock() = Some(map);
        self.changed.notify_one();
    }

    pub fn upsert(&self, pod: Pod) {
        self.lock()
            .get_or_insert_with(BTreeMap::new)
            .insert(pod.metadata.uid.clone(), pod);
        self.changed.notify_one();
    }

    /// Forget a pod; wakes the sync loop only if it was known (pods of other nodes pass by).
    pub fn remove(&self, uid: &str) {
        let removed = self
            .lock()
            .as_mut()
            .is_some_and(|m| m.remove(uid).is_some());
        if removed {
            self.changed.notify_one();
        }
    }

    /// `None` until the first full list.
    pub fn snapshot(&self) -> Option<Vec<Pod>> {
        self.lock().as_ref().map(|m| m.values().cloned().collect())
    }

    pub fn get(&self, uid: &str) -> Option<Pod> {
        self.lock().as_ref().and_then(|m| m.get(uid).cloned())
    }

    pub fn find(&self, namespace: &str, name: &str) -> Option<Pod> {
        self.lock().as_ref().and_then(|m| {
            m.values()
                .find(|p| p.metadata.namespace == namespace && p.metadata.name == name)
                .cloned()
        })
    }

    pub(crate) fn notifier(&self) -> Arc<Notify> {
        self.changed.clone()
    }
}

/// In-memory [`NodeApi`] for tests: records writes; can be switched "unreachable".
#[derive(Clone, Default)]
pub struct MemoryApi {
    inner: Arc<Mutex<MemoryState>>,
}

#[derive(Default)]
struct MemoryState {
    down: bool,
    statuses: Vec<Pod>,
    events: Vec<Event>,
    nodes: BTreeMap<String, Node>,
    node_status_writes: usize,
    deleted_pods: Vec<(String, String)>,
    rv: u64,
    trust: TrustSnapshot,
    config_maps: BTreeMap<(String, String), ConfigMap>,
    secrets: BTreeMap<(String, String), Secret>,
    claims: BTreeMap<(String, String), PersistentVolumeClaim>,
    volumes: BTreeMap<String, PersistentVolume>,
}

impl MemoryApi {
    pub fn new() -> MemoryApi {
        MemoryApi::default()
    }
    fn lock(&self) -> MutexGuard<'_, MemoryState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
    }
    fn check(&self) -> Result<(), ApiError> {
        if self.lock().down {
            Err(ApiError::Unavailable("test: API marked down".into()))
        } else {
            Ok(())
        }
    }
    /// Every status written, oldest first.
    pub fn statuses(&self) -> Vec<Pod> {
        self.lock().statuses.clone()
    }
    /// Latest status written for a pod uid.
    pub fn last_status(&self, uid: &str) -> Option<Pod> {
        self.lock()
            .statuses
            .iter()
            .rev()
            .find(|p| p.metadata.uid == uid)
            .cloned()
    }
    pub fn events(&self) -> Vec<Event> {
        self.lock().events.clone()
    }
    pub fn event_reasons(&self) -> Vec<String> {
        self.lock()
            .events
            .iter()
            .map(|e| e.reason.clone())
            .collect()
    }
    pub fn node(&self, name: &str) -> Option<Node> {
        self.lock().nodes.get(name).cloned()
    }
    pub fn node_status_writes(&self) -> usize {
        self.lock().node_status_writes
    }
    /// The pods the agent deleted for good (namespace, name), oldest first.
    pub fn deleted_pods(&self) -> Vec<(String, String)> {
        self.lock().deleted_pods.clone()
    }
    /// Create or replace a ConfigMap the agent can read.
    pub fn put_config_map(&self, c: ConfigMap) {
        let key = (c.metadata.namespace.clone(), c.metadata.name.clone());
        self.lock().config_maps.insert(key, c);
    }
    /// Create or replace a Secret the agent can read.
    pub fn put_secret(&self, s: Secret) {
        let key = (s.metadata.namespace.clone(), s.metadata.name.clone());
        self.lock().secrets.insert(key, s);
    }
    /// Create or replace a PersistentVolumeClaim the agent can read.
    pub fn put_claim(&self, c: PersistentVolumeClaim) {
        let key = (c.metadata.namespace.clone(), c.metadata.name.clone());
        self.lock().claims.insert(key, c);
    }
    /// Create or replace a PersistentVolume the agent can read.
    pub fn put_volume(&self, v: PersistentVolume) {
        self.lock().volumes.insert(v.metadata.name.clone(), v);
    }
    /// Delete a PersistentVolume (as the binder does for a released Delete volume).
    pub fn remove_volume(&self, name: &str) {
        self.lock().volumes.remove(name);
    }
    /// Change the trust objects (policies, tags, keys, signatures) the agent reads.
    pub fn edit_trust(&self, f: impl FnOnce(&mut TrustSnapshot)) {
        f(&mut self.lock().trust);
    }
}

#[async_trait::async_trait]
impl NodeApi for MemoryApi {
    async fn delete_pod(
        &self,
        namespace: &str,
        name: &str,
        _resource_version: u64,
    ) -> Result<(), ApiError> {
        self.check()?;
        self.lock()
            .deleted_pods
            .push((namespace.to_string(), name.to_string()));
        Ok(())
    }
    async fn update_pod_status(&self, pod: &Pod) -> Result<Pod, ApiError> {
        self.check()?;
        let mut g = self.lock();
        g.rv += 1;
        let mut p = pod.clone();
        p.metadata.resource_version = g.rv;
        g.statuses.push(p.clone());
        Ok(p)
    }
    async fn create_event(&self, ev: &Event) -> Result<(), ApiError> {
        self.check()?;
        self.lock().events.push(ev.clone());
        Ok(())
    }
    async fn get_node(&self, name: &str) -> Result<Option<Node>, ApiError> {
        self.check()?;
        Ok(self.lock().nodes.get(name).cloned())
    }
    async fn create_node(&self, node: &Node) -> Result<Node, ApiError> {
        self.check()?;
        let mut g = self.lock();
        if g.nodes.contains_key(&node.metadata.name) {
            return Err(ApiError::Conflict);
        }
        g.rv += 1;
        let mut n = node.clone();
        n.metadata.resource_version = g.rv;
        g.nodes.insert(n.metadata.name.clone(), n.clone());
        Ok(n)
    }
    async fn update_node(&self, node: &Node) -> Result<Node, ApiError> {
        self.check()?;
        let mut g = self.lock();
        g.rv += 1;
        let rv = g.rv;
        let n = g
            .nodes
            .get_mut(&node.metadata.name)
            .ok_or(ApiError::NotFound)?;
        n.metadata = node.metadata.clone();
        n.metadata.resource_version = rv;
        n.spec = node.spec.clone();
        Ok(n.clone())
    }
    async fn update_node_status(&self, node: &Node) -> Result<Node, ApiError> {
        self.check()?;
        let mut g = self.lock();
        g.rv += 1;
        g.node_status_writes += 1;
        let rv = g.rv;
        let n = g
            .nodes
            .get_mut(&node.metadata.name)
            .ok_or(ApiError::NotFound)?;
        n.status = node.status.clone();
        n.metadata.resource_version = rv;
        Ok(n.clone())
    }
    async fn trust_snapshot(
        &self,
        _namespace: &str,
        _image: &str,
        _node_digests: Option<&[String]>,
    ) -> Result<TrustSnapshot, ApiError> {
        self.check()?;
        Ok(self.lock().trust.clone())
    }
    async fn get_config_map(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<ConfigMap>, ApiError> {
        self.check()?;
        let key = (namespace.to_string(), name.to_string());
        Ok(self.lock().config_maps.get(&key).cloned())
    }
    async fn get_secret(&self, namespace: &str, name: &str) -> Result<Option<Secret>, ApiError> {
        self.check()?;
        let key = (namespace.to_string(), name.to_string());
        Ok(self.lock().secrets.get(&key).cloned())
    }
    async fn get_claim(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<PersistentVolumeClaim>, ApiError> {
        self.check()?;
        let key = (namespace.to_string(), name.to_string());
        Ok(self.lock().claims.get(&key).cloned())
    }
    async fn get_volume(&self, name: &str) -> Result<Option<PersistentVolume>, ApiError> {
        self.check()?;
        Ok(self.lock().volumes.get(name).cloned())
    }
}
