//! Event recording: loops push Kubernetes-style Events into a bounded buffer; the pod sync loop
//! flushes it to the API. Recording never blocks on the API, and while the API is unreachable
//! the oldest events are dropped first (events are best-effort, as in Kubernetes).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use berth_proto::types::{Event, EventSource, ObjectMeta, ObjectReference, Time};

use crate::api::NodeApi;

const MAX_BUFFERED: usize = 1000;

/// Which pod an event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

#[derive(Clone)]
pub struct EventSink {
    node: String,
    buf: Arc<Mutex<VecDeque<Event>>>,
}

impl EventSink {
    pub fn new(node: &str) -> EventSink {
        EventSink {
            node: node.to_string(),
            buf: Arc::new(Mutex::new(VecDeque::new())),
        }
    }

    pub fn normal(&self, pod: &PodRef, reason: &str, message: String) {
        self.record(pod, reason, message, "Normal", chrono::Utc::now());
    }

    pub fn warning(&self, pod: &PodRef, reason: &str, message: String) {
        self.record(pod, reason, message, "Warning", chrono::Utc::now());
    }

    pub fn record(&self, pod: &PodRef, reason: &str, message: String, type_: &str, now: Time) {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let ev = Event {
            metadata: ObjectMeta {
                name: format!("{}.{}", pod.name, &id[..12]),
                namespace: pod.namespace.clone(),
                ..Default::default()
            },
            involved_object: ObjectReference {
                kind: "Pod".to_string(),
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
                uid: pod.uid.clone(),
            },
            reason: reason.to_string(),
            message,
            type_: type_.to_string(),
            source: EventSource {
                component: "berth-agent".to_string(),
                host: self.node.clone(),
            },
            first_timestamp: Some(now),
            last_timestamp: Some(now),
            count: 1,
            ..Default::default()
        };
        tracing::info!(pod = %format!("{}/{}", pod.namespace, pod.name), reason, message = %ev.message, "event");
        let mut b = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        if b.len() >= MAX_BUFFERED {
            b.pop_front();
        }
        b.push_back(ev);
    }

    /// Send buffered events; stops at the first failure and keeps the rest for next time.
    pub async fn flush(&self, api: &dyn NodeApi) {
        loop {
            let next = {
                let b = self.buf.lock().unwrap_or_else(|e| e.into_inner());
                b.front().cloned()
            };
            let Some(ev) = next else { return };
            match api.create_event(&ev).await {
                Ok(()) => {}
                Err(crate::api::ApiError::Unavailable(_)) => return,
                Err(e) => tracing::debug!(error = %e, "dropping event"),
            }
            let mut b = self.buf.lock().unwrap_or_else(|e| e.into_inner());
            if b.front().map(|f| &f.metadata.name) == Some(&ev.metadata.name) {
                b.pop_front();
            }
        }
    }
}
