//! The watch hub: an in-memory history of the last N changes, and watchers that read it.
//!
//! Every applied mutation appends one [`Event`] (revisions are contiguous: event `i` of the
//! history has revision `start + 1 + i`), then bumps a `tokio::sync::watch` of the latest
//! revision. A [`Watcher`] keeps only the last revision it has processed and copies the next
//! events out of the history under a short lock, so:
//! - apply never blocks on a watcher (there are no per-watcher queues to fill);
//! - every change is seen exactly once and in order, replay and live alike;
//! - a watcher that falls behind the history (bounded by an event count and a byte budget), or
//!   whose `from_revision` is older than it, gets [`StoreError::Expired`] and must relist.
//!
//! History is not persisted: after a restart it starts at the store's revision, and a snapshot
//! restore starts a new epoch that expires every open watcher.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use berth_proto::types::Labels;
use berth_proto::Kind;
use tokio::sync::watch;

use super::error::StoreError;
use berth_proto::selector::Selector;

/// What happened to an object at one revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeType {
    Added,
    Modified,
    Deleted,
}

/// One change in the history.
#[derive(Debug, Clone)]
pub struct Event {
    pub revision: u64,
    pub change: ChangeType,
    pub kind: Kind,
    pub namespace: String,
    /// The object after the change (for Deleted: the last state, resourceVersion = revision).
    pub object: Arc<serde_json::Value>,
    /// Labels before the change (None for Added).
    pub prev_labels: Option<Labels>,
    /// Labels after the change.
    pub labels: Labels,
    /// Encoded size of `object`, for the history's byte budget.
    pub size: usize,
}

/// What a watcher sees: the event type after selector filtering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchEventType {
    Added,
    Modified,
    Deleted,
    Bookmark,
}

/// One event delivered to a watcher.
#[derive(Debug, Clone)]
pub struct WatchEvent {
    pub event_type: WatchEventType,
    pub revision: u64,
    /// None for bookmarks.
    pub object: Option<Arc<serde_json::Value>>,
}

/// Which changes a watcher wants.
#[derive(Debug, Clone, Default)]
pub struct WatchFilter {
    /// None = every kind.
    pub kind: Option<Kind>,
    /// None = every namespace.
    pub namespace: Option<String>,
    pub selector: Selector,
}

impl WatchFilter {
    pub fn matches_key(&self, kind: Kind, namespace: &str) -> bool {
        self.kind.is_none_or(|k| k == kind)
            && self.namespace.as_deref().is_none_or(|n| n == namespace)
    }

    /// Translate a change into what this watcher sees. A label change that moves an object
    /// into the selector is ADDED for this watcher, out of it DELETED.
    pub fn translate(&self, ev: &Event) -> Option<WatchEventType> {
        if !self.matches_key(ev.kind, &ev.namespace) {
            return None;
        }
        let now = self.selector.matches(&ev.labels);
        let before = ev
            .prev_labels
            .as_ref()
            .is_some_and(|l| self.selector.matches(l));
        match ev.change {
            ChangeType::Added => now.then_some(WatchEventType::Added),
            ChangeType::Deleted => before.then_some(WatchEventType::Deleted),
            ChangeType::Modified => match (before, now) {
                (true, true) => Some(WatchEventType::Modified),
                (false, true) => Some(WatchEventType::Added),
                (true, false) => Some(WatchEventType::Deleted),
                (false, false) => None,
            },
        }
    }
}

struct History {
    /// Revision just before the first kept event.
    start: u64,
    events: VecDeque<Arc<Event>>,
    /// Sum of the kept events' sizes.
    bytes: usize,
    /// Bumped by a snapshot restore: every watcher of an older epoch is expired.
    epoch: u64,
}

/// Shared between the store (writer) and every watcher (readers).
pub struct Hub {
    capacity: usize,
    max_bytes: usize,
    history: Mutex<History>,
    latest: watch::Sender<u64>,
}

impl Hub {
    /// A hub keeping at most `capacity` events and about `max_bytes` of encoded objects
    /// (always at least the newest event).
    pub fn new(capacity: usize, max_bytes: usize, revision: u64) -> Hub {
        Hub {
            capacity: capacity.max(1),
            max_bytes,
            history: Mutex::new(History {
                start: revision,
                events: VecDeque::new(),
                bytes: 0,
                epoch: 0,
            }),
            latest: watch::Sender::new(revision),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Append the events of one applied entry (contiguous revisions) and wake watchers.
    pub fn publish(&self, events: Vec<Event>) {
        let Some(last) = events.last().map(|e| e.revision) else {
            return;
        };
        {
            let mut h = self.lock();
            for ev in events {
                let expected = h.start + h.events.len() as u64 + 1;
                if ev.revision != expected {
                    // Cannot happen while the store is the only writer; if it ever does, expire
                    // everyone rather than deliver a gap.
                    tracing::error!(
                        expected,
                        got = ev.revision,
                        "watch history gap; expiring watchers"
                    );
                    h.events.clear();
                    h.bytes = 0;
                    h.start = ev.revision - 1;
                    h.epoch += 1;
                }
                h.bytes += ev.size;
                h.events.push_back(Arc::new(ev));
                while h.events.len() > self.capacity
                    || (h.bytes > self.max_bytes && h.events.len() > 1)
                {
                    if let Some(old) = h.events.pop_front() {
                        h.bytes -= old.size;
                        h.start += 1;
                    }
                }
            }
        }
        self.latest.send_replace(last);
    }

    /// Forget all history (snapshot restore): open watchers expire, new ones start at
    /// `revision`.
    pub fn reset(&self, revision: u64) {
        {
            let mut h = self.lock();
            h.events.clear();
            h.bytes = 0;
            h.start = revision;
            h.epoch += 1;
        }
        self.latest.send_replace(revision);
    }

    /// The oldest revision a watch can start from.
    pub fn oldest(&self) -> u64 {
        self.lock().start
    }

    /// Start a watcher that delivers every change with revision > `from_revision`.
    pub fn watch(
        self: &Arc<Self>,
        from_revision: u64,
        filter: WatchFilter,
    ) -> Result<Watcher, StoreError> {
        let h = self.lock();
        if from_revision < h.start {
            return Err(StoreError::Expired {
                requested: from_revision,
                oldest: h.start,
            });
        }
        Ok(Watcher {
            hub: self.clone(),
            last: from_revision,
            epoch: h.epoch,
            filter,
            rx: self.latest.subscribe(),
        })
    }
}

/// A cursor over the hub's history. See the module header.
pub struct Watcher {
    hub: Arc<Hub>,
    /// Last revision processed (delivered or filtered out).
    last: u64,
    epoch: u64,
    filter: WatchFilter,
    rx: watch::Receiver<u64>,
}

impl Watcher {
    /// The revision this watcher has processed up to: a client resuming from it misses nothing.
    pub fn revision(&self) -> u64 {
        self.last
    }

    /// A bookmark at the processed revision.
    pub fn bookmark(&self) -> WatchEvent {
        WatchEvent {
            event_type: WatchEventType::Bookmark,
            revision: self.last,
            object: None,
        }
    }

    /// Take the next matching events (at most `max`) without waiting; empty when caught up.
    pub fn poll(&mut self, max: usize) -> Result<Vec<WatchEvent>, StoreError> {
        let h = self.hub.lock();
        if h.epoch != self.epoch || self.last < h.start {
            return Err(StoreError::Expired {
                requested: self.last,
                oldest: h.start,
            });
        }
        let mut out = Vec::new();
        // Events with revision <= last are skipped; the first wanted one is at this offset.
        let first = (self.last - h.start) as usize;
        for ev in h.events.iter().skip(first) {
            if out.len() >= max.max(1) {
                break;
            }
            self.last = ev.revision;
            if let Some(t) = self.filter.translate(ev) {
                out.push(WatchEvent {
                    event_type: t,
                    revision: ev.revision,
                    object: Some(ev.object.clone()),
                });
            }
        }
        Ok(out)
    }

    /// Wait for and return the next matching events. Cancel-safe: the cursor only moves
    /// synchronously, between awaits.
    pub async fn next(&mut self, max: usize) -> Result<Vec<WatchEvent>, StoreError> {
        loop {
            // Mark the current value seen before polling, so a publish that races with the
            // poll still wakes us.
            self.rx.borrow_and_update();
            let evs = self.poll(max)?;
            if !evs.is_empty() {
                return Ok(evs);
            }
            if self.rx.changed().await.is_err() {
                // The store is gone (server shutting down).
                return Err(StoreError::Storage("store closed".to_string()));
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ev(
        revision: u64,
        change: ChangeType,
        prev: Option<&[(&str, &str)]>,
        now: &[(&str, &str)],
    ) -> Event {
        let to_labels = |l: &[(&str, &str)]| -> Labels {
            l.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        Event {
            revision,
            change,
            kind: Kind::Pod,
            namespace: "default".into(),
            object: Arc::new(serde_json::json!({ "rev": revision })),
            prev_labels: prev.map(to_labels),
            labels: to_labels(now),
            size: 100,
        }
    }

    fn filter(sel: &str) -> WatchFilter {
        WatchFilter {
            kind: Some(Kind::Pod),
            namespace: None,
            selector: Selector::parse(sel).unwrap(),
        }
    }

    #[test]
    fn label_change_moves_object_in_and_out_of_selector() {
        let f = filter("app=web");
        let web = [("app", "web")];
        let db = [("app", "db")];
        use ChangeType::*;
        use WatchEventType as W;
        assert_eq!(f.translate(&ev(1, Added, None, &web)), Some(W::Added));
        assert_eq!(f.translate(&ev(1, Added, None, &db)), None);
        assert_eq!(
            f.translate(&ev(2, Modified, Some(&web), &web)),
            Some(W::Modified)
        );
        assert_eq!(
            f.translate(&ev(2, Modified, Some(&web), &db)),
            Some(W::Deleted)
        );
        assert_eq!(
            f.translate(&ev(2, Modified, Some(&db), &web)),
            Some(W::Added)
        );
        assert_eq!(f.translate(&ev(2, Modified, Some(&db), &db)), None);
        assert_eq!(
            f.translate(&ev(3, Deleted, Some(&web), &web)),
            Some(W::Deleted)
        );
        assert_eq!(f.translate(&ev(3, Deleted, Some(&db), &db)), None);
    }

    #[test]
    fn watcher_replays_history_then_sees_live_events_once() {
        let hub = Arc::new(Hub::new(100, usize::MAX, 0));
        hub.publish(
            (1..=3)
                .map(|r| ev(r, ChangeType::Added, None, &[]))
                .collect(),
        );
        let mut w = hub.watch(1, WatchFilter::default()).unwrap();
        let revs: Vec<u64> = w.poll(10).unwrap().iter().map(|e| e.revision).collect();
        assert_eq!(revs, vec![2, 3]);
        assert!(w.poll(10).unwrap().is_empty());
        hub.publish(vec![ev(4, ChangeType::Added, None, &[])]);
        let revs: Vec<u64> = w.poll(10).unwrap().iter().map(|e| e.revision).collect();
        assert_eq!(revs, vec![4]);
        assert_eq!(w.revision(), 4);
    }

    #[test]
    fn watcher_that_falls_behind_the_history_expires() {
        let hub = Arc::new(Hub::new(3, usize::MAX, 0));
        let mut w = hub.watch(0, WatchFilter::default()).unwrap();
        hub.publish(
            (1..=5)
                .map(|r| ev(r, ChangeType::Added, None, &[]))
                .collect(),
        );
        assert_eq!(
            w.poll(10).unwrap_err(),
            StoreError::Expired {
                requested: 0,
                oldest: 2
            }
        );
        assert!(matches!(
            hub.watch(1, WatchFilter::default()),
            Err(StoreError::Expired { .. })
        ));
        assert!(hub.watch(2, WatchFilter::default()).is_ok());
    }

    #[test]
    fn history_is_bounded_by_bytes_too() {
        let hub = Arc::new(Hub::new(1000, 250, 0));
        hub.publish(
            (1..=5)
                .map(|r| ev(r, ChangeType::Added, None, &[]))
                .collect(),
        );
        // 100 bytes each, 250 allowed: the newest two remain.
        assert_eq!(hub.oldest(), 3);
        assert!(hub.watch(3, WatchFilter::default()).is_ok());
        assert!(hub.watch(2, WatchFilter::default()).is_err());
    }

    #[test]
    fn reset_expires_open_watchers() {
        let hub = Arc::new(Hub::new(10, usize::MAX, 0));
        let mut w = hub.watch(0, WatchFilter::default()).unwrap();
        hub.reset(50);
        assert!(matches!(w.poll(10), Err(StoreError::Expired { .. })));
        let mut w2 = hub.watch(50, WatchFilter::default()).unwrap();
        hub.publish(vec![ev(51, ChangeType::Added, None, &[])]);
        assert_eq!(w2.poll(10).unwrap()[0].revision, 51);
    }

    #[test]
    fn filtered_events_still_advance_the_bookmark_revision() {
        let hub = Arc::new(Hub::new(10, usize::MAX, 0));
        let mut w = hub.watch(0, filter("app=web")).unwrap();
        hub.publish(vec![ev(1, ChangeType::Added, None, &[("app", "db")])]);
        assert!(w.poll(10).unwrap().is_empty());
        assert_eq!(w.bookmark().revision, 1);
    }

    #[tokio::test]
    async fn next_wakes_on_publish() {
        let hub = Arc::new(Hub::new(10, usize::MAX, 0));
        let mut w = hub.watch(0, WatchFilter::default()).unwrap();
        let h2 = hub.clone();
        let t = tokio::spawn(async move { w.next(10).await });
        tokio::task::yield_now().await;
        h2.publish(vec![ev(1, ChangeType::Added, None, &[])]);
        let evs = tokio::time::timeout(std::time::Duration::from_secs(10), t)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(evs[0].revision, 1);
    }
}
