//! The one Event recorder of every Berth component (controllers, scheduler, agent,
//! supervisor): it builds Kubernetes-style Events with the same naming, source and timestamps
//! everywhere, and writes them best effort.
//!
//! An Event is named `<object>.<hash>`, the hash over the involved object's uid, the type,
//! reason, message, count and the time bucket of the recorder's dedup window (a minute by
//! default). So the same event written twice within one window (a retried reconcile, a
//! scheduling pass repeated on a stale cache) is stored once: the second create answers
//! AlreadyExists, which is not an error. Components that aggregate repeats themselves (the
//! agent counts a probe failing every second) pass the count, which makes the name distinct.

use std::time::Duration;

use berth_proto::types::{Event, EventSource, ObjectMeta, ObjectReference, Time};
use berth_proto::Resource;

use crate::{Client, ClientError};

/// Kubernetes' Event types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The reference an Event names its object by.
pub fn reference<T: Resource>(obj: &T) -> ObjectReference {
    let m = obj.meta();
    ObjectReference {
        kind: T::KIND.as_str().to_string(),
        namespace: m.namespace.clone(),
        name: m.name.clone(),
        uid: m.uid.clone(),
    }
}

/// Builds and records Events for one component (`source.component`, e.g.
/// "deployment-controller") on one host (`source.host`, "" for cluster components).
#[derive(Debug, Clone)]
pub struct Recorder {
    component: String,
    host: String,
    dedup_window: Duration,
}

/// 64-bit FNV-1a over the parts, each followed by a separator byte.
fn fnv64(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0xff)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

impl Recorder {
    pub fn new(component: &str) -> Recorder {
        Recorder {
            component: component.to_string(),
            host: String::new(),
            dedup_window: Duration::from_secs(60),
        }
    }

    /// The node (or server) the component runs on, for `source.host`.
    pub fn with_host(mut self, host: &str) -> Recorder {
        self.host = host.to_string();
        self
    }

    /// Identical events (same object, type, reason, message and count) within one window of
    /// this length share a name, so only the first is stored. At least one second.
    pub fn with_dedup_window(mut self, window: Duration) -> Recorder {
        self.dedup_window = window.max(Duration::from_secs(1));
        self
    }

    pub fn component(&self) -> &str {
        &self.component
    }

    /// The Event (not written): for components that write it themselves, e.g. in a batch.
    /// An object without a namespace (a Node) gets its Event in "default".
    pub fn event(
        &self,
        object: ObjectReference,
        type_: EventType,
        reason: &str,
        message: &str,
        count: i32,
        now: Time,
    ) -> Event {
        let bucket = now
            .timestamp()
            .div_euclid(self.dedup_window.as_secs().max(1) as i64)
            .to_string();
        let count = count.max(1);
        let hash = fnv64(&[
            &object.uid,
            type_.as_str(),
            reason,
            message,
            &count.to_string(),
            &bucket,
        ]);
        let namespace = if object.namespace.is_empty() {
            "default".to_string()
        } else {
            object.namespace.clone()
        };
        Event {
            metadata: ObjectMeta {
                name: format!("{}.{hash:016x}", object.name),
                namespace,
                ..Default::default()
            },
            involved_object: object,
            reason: reason.to_string(),
            message: message.to_string(),
            type_: type_.as_str().to_string(),
            source: EventSource {
                component: self.component.clone(),
                host: self.host.clone(),
            },
            first_timestamp: Some(now),
            last_timestamp: Some(now),
            count,
            ..Default::default()
        }
    }

    /// Build and write the Event now, best effort: a write that fails is logged (Events must
    /// never fail the work they describe), and AlreadyExists means it was already recorded.
    pub async fn record(
        &self,
        client: &Client,
        object: ObjectReference,
        type_: EventType,
        reason: &str,
        message: &str,
    ) {
        let ev = self.event(object, type_, reason, message, 1, chrono::Utc::now());
        match client.create(&ev).await {
            Ok(_) | Err(ClientError::AlreadyExists(_)) => {}
            Err(e) => tracing::warn!(
                error = %e,
                component = %self.component,
                %reason,
                object = %format!("{}/{}", ev.involved_object.kind, ev.involved_object.name),
                "could not record event"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn obj(uid: &str) -> ObjectReference {
        ObjectReference {
            kind: "Pod".into(),
            namespace: "ns".into(),
            name: "web".into(),
            uid: uid.into(),
        }
    }

    fn at(secs: i64) -> Time {
        chrono::Utc
            .timestamp_opt(secs, 0)
            .single()
            .unwrap_or_default()
    }

    #[test]
    fn the_same_event_within_the_window_has_the_same_name_and_differs_otherwise() {
        let r = Recorder::new("scheduler");
        let name = |o: ObjectReference, t, reason: &str, msg: &str, count, now| {
            r.event(o, t, reason, msg, count, now).metadata.name
        };
        let base = name(obj("u1"), EventType::Warning, "R", "m", 1, at(600));
        assert!(base.starts_with("web."), "{base}");
        assert_eq!(
            base,
            name(obj("u1"), EventType::Warning, "R", "m", 1, at(659))
        );
        for (what, other) in [
            (
                "next window",
                name(obj("u1"), EventType::Warning, "R", "m", 1, at(660)),
            ),
            (
                "other uid",
                name(obj("u2"), EventType::Warning, "R", "m", 1, at(600)),
            ),
            (
                "other type",
                name(obj("u1"), EventType::Normal, "R", "m", 1, at(600)),
            ),
            (
                "other reason",
                name(obj("u1"), EventType::Warning, "S", "m", 1, at(600)),
            ),
            (
                "other message",
                name(obj("u1"), EventType::Warning, "R", "n", 1, at(600)),
            ),
            (
                "other count",
                name(obj("u1"), EventType::Warning, "R", "m", 2, at(600)),
            ),
        ] {
            assert_ne!(base, other, "{what}");
        }
    }

    #[test]
    fn events_carry_source_type_count_and_a_namespace() {
        let r = Recorder::new("berth-agent")
            .with_host("n1")
            .with_dedup_window(Duration::from_secs(1));
        let mut node = obj("u");
        node.kind = "Node".into();
        node.namespace.clear();
        let ev = r.event(node, EventType::Warning, "NodeNotReady", "gone", 3, at(5));
        assert_eq!(ev.metadata.namespace, "default", "cluster-scoped objects");
        assert_eq!(ev.involved_object.namespace, "");
        assert_eq!(ev.type_, "Warning");
        assert_eq!(ev.count, 3);
        assert_eq!(ev.source.component, "berth-agent");
        assert_eq!(ev.source.host, "n1");
        assert_eq!(ev.first_timestamp, Some(at(5)));
        assert_eq!(ev.last_timestamp, Some(at(5)));
        // A one-second window: one second later is a new event.
        let again = r.event(obj("u"), EventType::Normal, "R", "m", 1, at(5));
        let later = r.event(obj("u"), EventType::Normal, "R", "m", 1, at(6));
        assert_ne!(again.metadata.name, later.metadata.name);
    }
}
