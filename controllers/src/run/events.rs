//! Recording Events about objects (best effort: an Event that cannot be written is logged).

use berth_client::{Client, ClientError};
use berth_proto::types::*;
use chrono::Utc;

fn fnv(s: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Record `reason`/`message` about `object`. Events are named by object and content, so the
/// same event written twice (e.g. after a retried reconcile) is stored once.
pub async fn record(
    client: &Client,
    object: ObjectReference,
    type_: &str,
    reason: &str,
    message: &str,
    component: &str,
) {
    let now = Utc::now();
    let ns = if object.namespace.is_empty() {
        "default".to_string()
    } else {
        object.namespace.clone()
    };
    let name = format!(
        "{}.{:x}",
        object.name,
        fnv(&format!(
            "{}{reason}{message}{}",
            object.uid,
            now.timestamp() / 60
        ))
    );
    let ev = Event {
        metadata: ObjectMeta {
            name,
            namespace: ns,
            ..Default::default()
        },
        involved_object: object,
        reason: reason.into(),
        message: message.into(),
        type_: type_.into(),
        source: EventSource {
            component: component.into(),
            host: String::new(),
        },
        first_timestamp: Some(now),
        last_timestamp: Some(now),
        count: 1,
        ..Default::default()
    };
    match client.create(&ev).await {
        Ok(_) | Err(ClientError::AlreadyExists(_)) => {}
        Err(e) => tracing::warn!(error = %e, %reason, "could not record event"),
    }
}

pub fn reference(kind: &str, meta: &ObjectMeta) -> ObjectReference {
    ObjectReference {
        kind: kind.into(),
        namespace: meta.namespace.clone(),
        name: meta.name.clone(),
        uid: meta.uid.clone(),
    }
}
