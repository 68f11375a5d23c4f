//! Image trust admission: a Pod, or a Deployment/ReplicaSet by its pod template, whose images
//! are not signed by a trusted key is refused when `require-signed-images` applies in its
//! namespace. The decision is [`berth_proto::trust::admit`], the same function the agents run
//! (through [`berth_proto::trust::check_image`]) before they start a container.
//!
//! **Consistency.** Everything the check reads (policies, the tag, keys, signatures, the
//! object being replaced) is read in one [`Store::read_view`]: one revision, the latest this
//! server applied. The server that proposes the write checks it (a follower checks, then
//! forwards the original request, and the leader checks again against its own state), so a
//! key removed moments before is seen unless its removal is not yet applied on the leader.
//!
//! **Updates.** A create is always checked. An update or apply whose container images are the
//! same as the stored object's is not re-checked: the controllers' own writes (scale,
//! annotations) and unrelated edits keep working for workloads admitted before the policy
//! was turned on; the agents still re-check every container start.

use berth_proto::trust::{
    admit, images_of, TrustLookup, CLUSTER_POLICY_NAME, NAMESPACE_POLICY_NAME,
};
use berth_proto::types::{ClusterImagePolicy, ImagePolicy, ImageSignature, ImageTag, TrustKey};
use berth_proto::{DynObject, Kind};
use serde::de::DeserializeOwned;

use crate::store::{ObjectKey, Store, StoreError, StoreView};

struct ViewLookup<'a, 'b>(&'a StoreView<'b>);

impl ViewLookup<'_, '_> {
    fn get<T: DeserializeOwned>(&self, kind: Kind, ns: &str, name: &str) -> Option<T> {
        let v = self.0.get(&ObjectKey::new(kind, ns, name))?;
        serde_json::from_value(v.clone()).ok()
    }
}

impl TrustLookup for ViewLookup<'_, '_> {
    fn cluster_policy(&self) -> Option<ClusterImagePolicy> {
        self.get(Kind::ClusterImagePolicy, "", CLUSTER_POLICY_NAME)
    }
    fn namespace_policy(&self, namespace: &str) -> Option<ImagePolicy> {
        self.get(Kind::ImagePolicy, namespace, NAMESPACE_POLICY_NAME)
    }
    fn tag_digest(&self, repository: &str, tag: &str) -> Option<String> {
        let name = berth_proto::image::tag_object_name(repository, tag);
        let t: ImageTag = self.get(Kind::ImageTag, "", &name)?;
        (t.spec.repository == repository && t.spec.tag == tag).then_some(t.spec.digest)
    }
    fn keys(&self) -> Vec<TrustKey> {
        self.0
            .list(Kind::TrustKey)
            .filter_map(|v| serde_json::from_value(v.clone()).ok())
            .collect()
    }
    fn signature(&self, repository: &str, digest: &str, key_name: &str) -> Option<ImageSignature> {
        let name = berth_proto::trust::signature_object_name(repository, digest, key_name);
        self.get(Kind::ImageSignature, "", &name)
    }
}

/// Check `obj` before it is written (`is_update`: an update or apply, compared with the
/// stored object). `Err` is the message for the caller.
pub fn admission(store: &Store, obj: &DynObject, is_update: bool) -> Result<(), String> {
    if !matches!(obj.kind, Kind::Pod | Kind::Deployment | Kind::ReplicaSet) {
        return Ok(());
    }
    let r = store.read_view(|view| {
        if is_update {
            let key = ObjectKey::new(obj.kind, obj.namespace(), obj.name());
            if let Some(old) = view.get(&key) {
                if let Ok(old) = DynObject::from_value(old.clone()) {
                    if images_of(&old) == images_of(obj) {
                        return Ok(());
                    }
                }
            }
        }
        admit(&ViewLookup(view), obj)
    });
    match r {
        Ok(r) => r,
        Err(e @ StoreError::Storage(_)) => Err(format!("cannot check image trust: {e}")),
        Err(e) => Err(e.to_string()),
    }
}
