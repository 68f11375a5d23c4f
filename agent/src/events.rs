//! Event recording: loops push Kubernetes-style Events into a bounded buffer; the pod sync loop
//! flushes it to the API. Recording never blocks on the API, and while the API is unreachable
//! the oldest events are dropped first (events are best-effort, as in Kubernetes).
//!
//! Repeats are aggregated: the same (pod, reason, message) within [`REPEAT_WINDOW`] is only
//! counted, and the next one after the window carries the count (a readiness probe failing every
//! second writes one event per window, not one per second).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_client::runtime::events::{EventType, Recorder};
use berth_proto::types::{Event, ObjectReference, Time};

use crate::api::NodeApi;

const MAX_BUFFERED: usize = 1000;

/// Identical events closer together than this are counted, not sent.
pub const REPEAT_WINDOW: Duration = Duration::from_secs(30);

/// (pod uid, reason, message)
type SeenKey = (String, String, String);

#[derive(Debug, Clone, Copy)]
struct Seen {
    last_sent: tokio::time::Instant,
    suppressed: i32,
}

/// Which pod an event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

#[derive(Clone)]
pub struct EventSink {
    recorder: Recorder,
    buf: Arc<Mutex<VecDeque<Event>>>,
    seen: Arc<Mutex<HashMap<SeenKey, Seen>>>,
}

impl EventSink {
    pub fn new(node: &str) -> EventSink {
        EventSink {
            // Repeats are aggregated here (with their count), so the recorder dedups only the
            // same event sent twice within one second.
            recorder: Recorder::new("berth-agent")
                .with_host(node)
                .with_dedup_window(Duration::from_secs(1)),
            buf: Arc::new(Mutex::new(VecDeque::new())),
            seen: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    pub fn normal(&self, pod: &PodRef, reason: &str, message: String) {
        self.record(pod, reason, message, "Normal", chrono::Utc::now());
    }

    pub fn warning(&self, pod: &PodRef, reason: &str, message: String) {
        self.record(pod, reason, message, "Warning", chrono::Utc::now());
    }

    pub fn record(&self, pod: &PodRef, reason: &str, message: String, type_: &str, now: Time) {
        let count = {
            let t = tokio::time::Instant::now();
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if seen.len() > 4 * MAX_BUFFERED {
                seen.retain(|_, s| t.duration_since(s.last_sent) < REPEAT_WINDOW);
            }
            let key = (pod.uid.clone(), reason.to_string(), message.clone());
            match seen.get_mut(&key) {
                Some(s) if t.duration_since(s.last_sent) < REPEAT_WINDOW => {
                    s.suppressed += 1;
                    return;
                }
                Some(s) => {
                    let count = s.suppressed + 1;
                    *s = Seen {
                        last_sent: t,
                        suppressed: 0,
                    };
                    count
                }
                None => {
                    seen.insert(
                        key,
                        Seen {
                            last_sent: t,
                            suppressed: 0,
                        },
                    );
                    1
                }
            }
        };
        let object = ObjectReference {
            kind: "Pod".to_string(),
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            uid: pod.uid.clone(),
        };
        let ev = self.recorder.event(
            object,
            EventType::from_name(type_),
            reason,
            &message,
            count,
            now,
        );
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::MemoryApi;

    #[tokio::test(start_paused = true)]
    async fn repeated_events_are_counted_within_the_window() {
        let sink = EventSink::new("n1");
        let api = MemoryApi::new();
        let pod = PodRef {
            namespace: "default".into(),
            name: "p".into(),
            uid: "u".into(),
        };
        for _ in 0..10 {
            sink.warning(&pod, "Unhealthy", "Readiness probe failed: 500".into());
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        sink.warning(&pod, "Unhealthy", "Readiness probe failed: refused".into());
        sink.flush(&api).await;
        assert_eq!(api.events().len(), 2, "one per distinct message");
        tokio::time::advance(REPEAT_WINDOW).await;
        sink.warning(&pod, "Unhealthy", "Readiness probe failed: 500".into());
        sink.flush(&api).await;
        let evs = api.events();
        assert_eq!(evs.len(), 3);
        assert_eq!(evs[2].count, 10, "9 suppressed repeats + this one");
    }
}
