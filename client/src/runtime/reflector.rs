//! The reflector: an in-memory cache of one kind, fed by a watcher.
//!
//! One [`Writer`] applies watcher events; any number of cheap, cloneable [`Store`] readers
//! see the result (objects are shared as `Arc<T>`, never copied on read). A store is *ready*
//! once the first full list (`Restarted`) has been applied; controllers wait for that so a
//! reconcile never mistakes "not loaded yet" for "does not exist".

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use futures::stream::{Stream, StreamExt};

use super::watcher::Event;
use super::{Object, ObjectRef};

type Map<T> = HashMap<ObjectRef, Arc<T>>;

/// Read side of the cache. Clone freely.
pub struct Store<T> {
    map: Arc<RwLock<Map<T>>>,
    ready: tokio::sync::watch::Receiver<bool>,
}

impl<T> Clone for Store<T> {
    fn clone(&self) -> Self {
        Store {
            map: self.map.clone(),
            ready: self.ready.clone(),
        }
    }
}

/// The store's writer went away before the first list arrived.
#[derive(Debug, thiserror::Error)]
#[error("the store's writer was dropped before the store became ready")]
pub struct WriterDropped;

impl<T: Object> Store<T> {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Map<T>> {
        // Poisoning only means a writer panicked; the map itself is always consistent.
        self.map.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, key: &ObjectRef) -> Option<Arc<T>> {
        self.read().get(key).cloned()
    }

    /// All cached objects, in no particular order.
    pub fn state(&self) -> Vec<Arc<T>> {
        self.read().values().cloned().collect()
    }

    /// Cached objects matching `pred`.
    pub fn filter(&self, pred: impl Fn(&T) -> bool) -> Vec<Arc<T>> {
        self.read().values().filter(|o| pred(o)).cloned().collect()
    }

    /// Cached objects in `namespace`.
    pub fn in_namespace(&self, namespace: &str) -> Vec<Arc<T>> {
        self.read()
            .iter()
            .filter(|(k, _)| k.namespace == namespace)
            .map(|(_, v)| v.clone())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Wait until the first full list has been applied.
    pub async fn wait_until_ready(&self) -> Result<(), WriterDropped> {
        let mut rx = self.ready.clone();
        rx.wait_for(|r| *r)
            .await
            .map(|_| ())
            .map_err(|_| WriterDropped)
    }
}

/// Write side of the cache: exactly one per store.
pub struct Writer<T> {
    map: Arc<RwLock<Map<T>>>,
    ready: tokio::sync::watch::Sender<bool>,
}

impl<T: Object> Writer<T> {
    pub fn new() -> Self {
        let (ready, _) = tokio::sync::watch::channel(false);
        Writer {
            map: Arc::new(RwLock::new(HashMap::new())),
            ready,
        }
    }

    /// A reader of this writer's store.
    pub fn as_reader(&self) -> Store<T> {
        Store {
            map: self.map.clone(),
            ready: self.ready.subscribe(),
        }
    }

    pub fn apply_watcher_event(&mut self, event: &Event<T>) {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        match event {
            Event::Applied(o) => {
                map.insert(o.object_ref(), Arc::new(o.clone()));
            }
            Event::Deleted(o) => {
                map.remove(&o.object_ref());
            }
            Event::Restarted(all) => {
                *map = all
                    .iter()
                    .map(|o| (o.object_ref(), Arc::new(o.clone())))
                    .collect();
                drop(map);
                self.ready.send_replace(true);
            }
        }
    }
}

impl<T: Object> Default for Writer<T> {
    fn default() -> Self {
        Writer::new()
    }
}

/// A new empty store: its reader and its writer.
pub fn store<T: Object>() -> (Store<T>, Writer<T>) {
    let w = Writer::new();
    (w.as_reader(), w)
}

/// Pass a watcher's events through, applying each to `writer` first.
pub fn reflector<T, E, S>(
    mut writer: Writer<T>,
    stream: S,
) -> impl Stream<Item = Result<Event<T>, E>>
where
    T: Object,
    S: Stream<Item = Result<Event<T>, E>>,
{
    stream.inspect(move |ev| {
        if let Ok(ev) = ev {
            writer.apply_watcher_event(ev);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::watcher::fake::pod;
    use berth_proto::types::Pod;
    use std::time::Duration;

    #[test]
    fn restarted_replaces_everything_and_marks_ready() {
        let (store, mut w) = store::<Pod>();
        assert!(!store.is_ready());
        w.apply_watcher_event(&Event::Applied(pod("stale", 1)));
        w.apply_watcher_event(&Event::Restarted(vec![pod("a", 2), pod("b", 3)]));
        assert!(store.is_ready());
        let mut names: Vec<String> = store
            .state()
            .iter()
            .map(|p| p.metadata.name.clone())
            .collect();
        names.sort();
        assert_eq!(names, vec!["a", "b"]);
    }

    #[test]
    fn applied_upserts_and_deleted_removes_across_clones() {
        let (store, mut w) = store::<Pod>();
        let reader2 = store.clone();
        w.apply_watcher_event(&Event::Restarted(vec![]));
        w.apply_watcher_event(&Event::Applied(pod("a", 2)));
        w.apply_watcher_event(&Event::Applied(pod("a", 5)));
        let key = ObjectRef::new("default", "a");
        assert_eq!(
            reader2.get(&key).map(|p| p.metadata.resource_version),
            Some(5)
        );
        w.apply_watcher_event(&Event::Deleted(pod("a", 5)));
        assert!(store.get(&key).is_none());
        assert!(reader2.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn wait_until_ready_resolves_after_first_list() {
        let (store, mut w) = store::<Pod>();
        let waiter = tokio::spawn({
            let store = store.clone();
            async move { store.wait_until_ready().await.is_ok() }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiter.is_finished());
        w.apply_watcher_event(&Event::Restarted(vec![pod("a", 1)]));
        let ok = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("ready in time")
            .expect("join");
        assert!(ok);
    }

    #[tokio::test]
    async fn wait_until_ready_fails_when_writer_is_dropped() {
        let (store, w) = store::<Pod>();
        drop(w);
        assert!(store.wait_until_ready().await.is_err());
    }
}
