//! The controller runtime every Berth control loop is built on (kube-runtime style):
//!
//! ```text
//! ListWatch source --watcher--> Event<T> --reflector--> Store<T> (cache, many readers)
//!                                   |
//!                                   +--> keys (ObjectRef) --> WorkQueue (dedup, delays,
//!                                                             per-key backoff)
//!                                                                 |
//!                      reconcile(Arc<T>, Arc<Ctx>) -> Action <----+ Controller (bounded
//!                                                                   concurrency, one
//!                                                                   reconcile per key)
//! ```
//!
//! Loops are level-triggered: events only enqueue keys; `reconcile` reads the latest object
//! from the store when the key is dispatched, so bursts of changes collapse into one run.

pub mod batch;
pub mod controller;
pub mod events;
mod metrics;
pub mod queue;
pub mod reflector;
pub mod supervise;
pub mod watcher;

use berth_proto::types::{Deployment, Endpoints, Event, Namespace, Node, Pod, ReplicaSet, Service};
use berth_proto::{DynObject, Resource};

/// Identifies an object of a known kind: namespace ("" for cluster-scoped) and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn new(namespace: &str, name: &str) -> ObjectRef {
        ObjectRef {
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    pub fn from_obj<T: Resource>(obj: &T) -> ObjectRef {
        ObjectRef::new(&obj.meta().namespace, &obj.meta().name)
    }
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// What the runtime needs to know about any object it caches: its key and version.
/// Implemented for every typed kind and for [`DynObject`].
pub trait Object: Clone + Send + Sync + 'static {
    fn object_ref(&self) -> ObjectRef;
    fn resource_version(&self) -> u64;
}

macro_rules! object_for_resource {
    ($($t:ty),*) => {$(
        impl Object for $t {
            fn object_ref(&self) -> ObjectRef {
                ObjectRef::from_obj(self)
            }
            fn resource_version(&self) -> u64 {
                self.meta().resource_version
            }
        }
    )*};
}

object_for_resource!(Deployment, ReplicaSet, Service, Pod, Endpoints, Node, Event, Namespace);
object_for_resource!(
    berth_proto::storage::PersistentVolumeClaim,
    berth_proto::storage::PersistentVolume
);

impl Object for DynObject {
    fn object_ref(&self) -> ObjectRef {
        ObjectRef::new(self.namespace(), self.name())
    }
    fn resource_version(&self) -> u64 {
        self.meta().resource_version
    }
}
