//! The watcher: a never-ending stream of [`Event`]s for one kind, resilient to server
//! failover and compaction.
//!
//! It is an explicit state machine ([`State`]) stepped inside `futures::stream::unfold`:
//!
//! ```text
//! Empty --list ok--> (emit Restarted(all)) --> Listed{rev}
//! Listed{rev} --watch(rev) ok--> Watching{rev, stream}
//! Watching --Added/Modified--> emit Applied, rev = event.revision
//! Watching --Deleted-->        emit Deleted, rev = event.revision
//! Watching --Bookmark-->       rev = event.revision (nothing emitted)
//! any --Expired--> Empty (relist)
//! any --other error--> emit Err, back off, retry from the same state (the client fails over
//!                      to another server on the next call)
//! Watching --stream ended--> back off, Listed{rev} (resume without relisting)
//! ```
//!
//! Errors are reported as `Err` items for visibility; the stream itself never ends, so
//! consumers just log them.

use std::marker::PhantomData;
use std::time::Duration;

use berth_proto::{DynObject, Kind, Resource};
use futures::future::BoxFuture;
use futures::stream::{BoxStream, Stream, StreamExt};
use rand::Rng;

use super::Object;
use crate::client::{Change, Client, WatchStream};
use crate::error::ClientError;

/// What the watcher tells its consumer.
#[derive(Debug, Clone, PartialEq)]
pub enum Event<T> {
    /// The object was created or changed.
    Applied(T),
    /// The object was deleted (its last state).
    Deleted(T),
    /// A fresh full list: replace everything known with exactly these objects.
    Restarted(Vec<T>),
}

impl<T> Event<T> {
    /// The objects this event carries (the deleted one included).
    pub fn objects(&self) -> impl Iterator<Item = &T> {
        match self {
            Event::Applied(o) | Event::Deleted(o) => std::slice::from_ref(o).iter(),
            Event::Restarted(v) => v.iter(),
        }
    }
}

/// A list reply: the objects and the revision the list is consistent at.
pub type ListResult<T> = Result<(Vec<T>, u64), ClientError>;

/// Where a watcher lists and watches from. Implemented over [`Client`] for typed kinds
/// ([`ApiSource`]) and dynamic ones ([`DynSource`]); tests use in-memory fakes.
pub trait ListWatch: Send + Sync + 'static {
    type Object: Object;
    /// All matching objects and the revision the list is consistent at.
    fn list(&self) -> BoxFuture<'static, ListResult<Self::Object>>;
    /// Changes with revision > `from_revision`.
    fn watch(
        &self,
        from_revision: u64,
    ) -> BoxFuture<'static, Result<WatchStream<Self::Object>, ClientError>>;
}

/// Which objects of a kind to watch.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// None = all namespaces.
    pub namespace: Option<String>,
    /// Label selector, "" = everything.
    pub label_selector: String,
}

impl Config {
    pub fn namespace(mut self, ns: &str) -> Self {
        self.namespace = Some(ns.to_string());
        self
    }
    pub fn labels(mut self, selector: &str) -> Self {
        self.label_selector = selector.to_string();
        self
    }
}

/// Lists and watches a typed kind through a [`Client`].
pub struct ApiSource<T> {
    client: Client,
    config: Config,
    _kind: PhantomData<fn() -> T>,
}

impl<T> ApiSource<T> {
    pub fn new(client: Client, config: Config) -> Self {
        ApiSource {
            client,
            config,
            _kind: PhantomData,
        }
    }
}

impl<T: Resource + Object> ListWatch for ApiSource<T> {
    type Object = T;
    fn list(&self) -> BoxFuture<'static, ListResult<T>> {
        let (client, config) = (self.client.clone(), self.config.clone());
        Box::pin(async move {
            client
                .list::<T>(config.namespace.as_deref(), &config.label_selector)
                .await
        })
    }
    fn watch(&self, from: u64) -> BoxFuture<'static, Result<WatchStream<T>, ClientError>> {
        let (client, config) = (self.client.clone(), self.config.clone());
        Box::pin(async move {
            client
                .watch::<T>(config.namespace.as_deref(), &config.label_selector, from)
                .await
        })
    }
}

/// Lists and watches any kind as [`DynObject`]s (the CLI's `get -w`).
pub struct DynSource {
    client: Client,
    kind: Kind,
    config: Config,
}

impl DynSource {
    pub fn new(client: Client, kind: Kind, config: Config) -> Self {
        DynSource {
            client,
            kind,
            config,
        }
    }
}

impl ListWatch for DynSource {
    type Object = DynObject;
    fn list(&self) -> BoxFuture<'static, ListResult<DynObject>> {
        let (client, config, kind) = (self.client.clone(), self.config.clone(), self.kind);
        Box::pin(async move {
            client
                .list_dyn(kind, config.namespace.as_deref(), &config.label_selector)
                .await
        })
    }
    fn watch(&self, from: u64) -> BoxFuture<'static, Result<WatchStream<DynObject>, ClientError>> {
        let (client, config, kind) = (self.client.clone(), self.config.clone(), self.kind);
        Box::pin(async move {
            client
                .watch_dyn(
                    kind,
                    config.namespace.as_deref(),
                    &config.label_selector,
                    from,
                )
                .await
        })
    }
}

/// Exponential backoff with jitter, reset after progress.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            current: initial,
        }
    }

    /// The next delay: the current step scaled by a random 75..=100%, then the step doubles.
    pub fn next_delay(&mut self) -> Duration {
        let d = self
            .current
            .mul_f64(rand::thread_rng().gen_range(0.75..=1.0));
        self.current = (self.current * 2).min(self.max);
        d
    }

    pub fn reset(&mut self) {
        self.current = self.initial;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Duration::from_millis(200), Duration::from_secs(10))
    }
}

/// The watcher's state between two emitted events.
pub enum State<T> {
    /// Nothing known: list next.
    Empty,
    /// Listed (or was watching) up to `revision`: start a watch from there.
    Listed { revision: u64 },
    /// A live watch stream; `revision` is the last revision seen.
    Watching {
        revision: u64,
        stream: WatchStream<T>,
    },
}

/// What one step produced: maybe an item to emit, the next state, and whether to back off
/// before the next step.
struct Step<T> {
    item: Option<Result<Event<T>, ClientError>>,
    next: State<T>,
    backoff: bool,
}

async fn step<S: ListWatch>(src: &S, state: State<S::Object>) -> Step<S::Object> {
    match state {
        State::Empty => match src.list().await {
            Ok((objects, revision)) => Step {
                item: Some(Ok(Event::Restarted(objects))),
                next: State::Listed { revision },
                backoff: false,
            },
            Err(e) => Step {
                item: Some(Err(e)),
                next: State::Empty,
                backoff: true,
            },
        },
        State::Listed { revision } => match src.watch(revision).await {
            Ok(stream) => Step {
                item: None,
                next: State::Watching { revision, stream },
                backoff: false,
            },
            Err(ClientError::Expired(msg)) => {
                tracing::debug!(revision, %msg, "watch revision expired; relisting");
                Step {
                    item: None,
                    next: State::Empty,
                    backoff: false,
                }
            }
            Err(e) => Step {
                item: Some(Err(e)),
                next: State::Listed { revision },
                backoff: true,
            },
        },
        State::Watching {
            revision,
            mut stream,
        } => match stream.next().await {
            Some(Ok(ev)) => {
                let rev = ev.revision.max(revision);
                let item = match ev.change {
                    Change::Added(o) | Change::Modified(o) => Some(Ok(Event::Applied(o))),
                    Change::Deleted(o) => Some(Ok(Event::Deleted(o))),
                    Change::Bookmark => None,
                };
                Step {
                    item,
                    next: State::Watching {
                        revision: rev,
                        stream,
                    },
                    backoff: false,
                }
            }
            Some(Err(ClientError::Expired(msg))) => {
                tracing::debug!(revision, %msg, "watch revision expired; relisting");
                Step {
                    item: None,
                    next: State::Empty,
                    backoff: false,
                }
            }
            Some(Err(e)) => Step {
                item: Some(Err(e)),
                next: State::Listed { revision },
                backoff: true,
            },
            None => {
                tracing::debug!(revision, "watch stream closed by the server; resuming");
                Step {
                    item: None,
                    next: State::Listed { revision },
                    backoff: true,
                }
            }
        },
    }
}

/// Watch everything `src` lists, forever. See the module docs for the state machine.
pub fn watcher_with<S: ListWatch>(
    src: S,
    backoff: Backoff,
) -> impl Stream<Item = Result<Event<S::Object>, ClientError>> + Send + 'static {
    struct Acc<S: ListWatch> {
        src: S,
        state: State<S::Object>,
        backoff: Backoff,
        sleep: Option<Duration>,
    }
    let acc = Acc {
        src,
        state: State::Empty,
        backoff,
        sleep: None,
    };
    futures::stream::unfold(acc, |mut acc| async move {
        loop {
            if let Some(d) = acc.sleep.take() {
                tokio::time::sleep(d).await;
            }
            let state = std::mem::replace(&mut acc.state, State::Empty);
            let Step {
                item,
                next,
                backoff,
            } = step(&acc.src, state).await;
            acc.state = next;
            if backoff {
                acc.sleep = Some(acc.backoff.next_delay());
            } else if matches!(item, Some(Ok(_))) {
                acc.backoff.reset();
            }
            if let Some(item) = item {
                return Some((item, acc));
            }
        }
    })
}

/// Watch a typed kind through `client`.
pub fn watcher<T: Resource + Object>(
    client: Client,
    config: Config,
) -> BoxStream<'static, Result<Event<T>, ClientError>> {
    watcher_with(ApiSource::<T>::new(client, config), Backoff::default()).boxed()
}

#[cfg(test)]
pub(crate) mod fake {
    //! An in-memory list/watch source whose replies tests script.
    use super::*;
    use crate::client::WatchEvent;
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    pub enum ListReply<T> {
        Ok(Vec<T>, u64),
        Err(ClientError),
    }

    pub enum WatchReply<T> {
        /// The stream yields these items, then ends.
        Ok(Vec<Result<WatchEvent<T>, ClientError>>),
        /// The stream yields these items and then stays open forever.
        OkThenHang(Vec<Result<WatchEvent<T>, ClientError>>),
        Err(ClientError),
    }

    /// Metadata of a test object named `name` in "default" at revision `rv`.
    pub fn meta(name: &str, rv: u64) -> berth_proto::types::ObjectMeta {
        berth_proto::types::ObjectMeta {
            name: name.into(),
            namespace: "default".into(),
            resource_version: rv,
            ..Default::default()
        }
    }

    /// A bare Pod named `name` in "default" at revision `rv`.
    pub fn pod(name: &str, rv: u64) -> berth_proto::types::Pod {
        berth_proto::types::Pod {
            metadata: meta(name, rv),
            ..Default::default()
        }
    }

    pub struct Script<T> {
        pub lists: VecDeque<ListReply<T>>,
        pub watches: VecDeque<WatchReply<T>>,
        /// Revisions each watch call asked for, in order.
        pub watch_calls: Vec<u64>,
        pub list_calls: usize,
    }

    #[derive(Clone)]
    pub struct FakeSource<T> {
        pub script: Arc<Mutex<Script<T>>>,
    }

    impl<T> FakeSource<T> {
        pub fn new(lists: Vec<ListReply<T>>, watches: Vec<WatchReply<T>>) -> Self {
            FakeSource {
                script: Arc::new(Mutex::new(Script {
                    lists: lists.into(),
                    watches: watches.into(),
                    watch_calls: vec![],
                    list_calls: 0,
                })),
            }
        }
    }

    impl<T: Object> ListWatch for FakeSource<T> {
        type Object = T;
        fn list(&self) -> BoxFuture<'static, ListResult<T>> {
            let mut s = self.script.lock().expect("lock");
            s.list_calls += 1;
            let reply = s.lists.pop_front();
            Box::pin(async move {
                match reply {
                    Some(ListReply::Ok(v, r)) => Ok((v, r)),
                    Some(ListReply::Err(e)) => Err(e),
                    None => futures::future::pending().await,
                }
            })
        }
        fn watch(&self, from: u64) -> BoxFuture<'static, Result<WatchStream<T>, ClientError>> {
            let mut s = self.script.lock().expect("lock");
            s.watch_calls.push(from);
            let reply = s.watches.pop_front();
            Box::pin(async move {
                match reply {
                    Some(WatchReply::Ok(items)) => Ok(futures::stream::iter(items).boxed()),
                    Some(WatchReply::OkThenHang(items)) => Ok(futures::stream::iter(items)
                        .chain(futures::stream::pending())
                        .boxed()),
                    Some(WatchReply::Err(e)) => Err(e),
                    None => futures::future::pending().await,
                }
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::*;
    use super::*;
    use crate::client::WatchEvent;
    use berth_proto::types::Pod;

    fn ev(rev: u64, change: Change<Pod>) -> Result<WatchEvent<Pod>, ClientError> {
        Ok(WatchEvent {
            revision: rev,
            change,
        })
    }

    fn unavailable() -> ClientError {
        ClientError::Unavailable {
            tried: "x: down".into(),
        }
    }

    async fn take<S: Stream + Unpin>(s: &mut S, n: usize) -> Vec<S::Item> {
        let mut out = vec![];
        for _ in 0..n {
            match tokio::time::timeout(Duration::from_secs(60), s.next()).await {
                Ok(Some(x)) => out.push(x),
                _ => panic!("stream stalled after {} items", out.len()),
            }
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn lists_then_watches_from_list_revision_and_tracks_event_revisions() {
        let src = FakeSource::new(
            vec![ListReply::Ok(vec![pod("a", 3)], 5)],
            vec![
                WatchReply::Ok(vec![
                    ev(6, Change::Added(pod("b", 6))),
                    ev(7, Change::Bookmark),
                    ev(8, Change::Deleted(pod("a", 3))),
                ]),
                WatchReply::OkThenHang(vec![]),
            ],
        );
        let script = src.script.clone();
        let mut w = Box::pin(watcher_with(src, Backoff::default()));
        let got = take(&mut w, 3).await;
        assert_eq!(
            got,
            vec![
                Ok(Event::Restarted(vec![pod("a", 3)])),
                Ok(Event::Applied(pod("b", 6))),
                Ok(Event::Deleted(pod("a", 3))),
            ]
        );
        // The first stream ended: the watcher resumes from the last revision (8), without
        // relisting; the resumed watch stays quiet.
        let quiet = tokio::time::timeout(Duration::from_secs(30), w.next()).await;
        assert!(quiet.is_err(), "unexpected item {quiet:?}");
        let s = script.lock().expect("lock");
        assert_eq!(s.watch_calls, vec![5, 8]);
        assert_eq!(s.list_calls, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn expired_watch_relists_and_emits_restarted() {
        let src = FakeSource::new(
            vec![
                ListReply::Ok(vec![pod("a", 3)], 5),
                ListReply::Ok(vec![pod("a", 9), pod("c", 12)], 20),
            ],
            vec![
                WatchReply::Err(ClientError::Expired("compacted".into())),
                WatchReply::OkThenHang(vec![ev(21, Change::Modified(pod("c", 21)))]),
            ],
        );
        let script = src.script.clone();
        let mut w = Box::pin(watcher_with(src, Backoff::default()));
        let got = take(&mut w, 3).await;
        assert_eq!(
            got,
            vec![
                Ok(Event::Restarted(vec![pod("a", 3)])),
                Ok(Event::Restarted(vec![pod("a", 9), pod("c", 12)])),
                Ok(Event::Applied(pod("c", 21))),
            ]
        );
        assert_eq!(script.lock().expect("lock").watch_calls, vec![5, 20]);
    }

    #[tokio::test(start_paused = true)]
    async fn errors_are_reported_then_retried_with_growing_backoff() {
        let src = FakeSource::new(
            vec![
                ListReply::Err(unavailable()),
                ListReply::Err(unavailable()),
                ListReply::Ok(vec![], 1),
            ],
            vec![
                WatchReply::Ok(vec![Err(unavailable())]),
                WatchReply::OkThenHang(vec![ev(2, Change::Added(pod("x", 2)))]),
            ],
        );
        let script = src.script.clone();
        let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
        let mut w = Box::pin(watcher_with(src, backoff));
        let start = tokio::time::Instant::now();
        let got = take(&mut w, 5).await;
        assert_eq!(got[0], Err(unavailable()));
        assert_eq!(got[1], Err(unavailable()));
        assert_eq!(got[2], Ok(Event::Restarted(vec![])));
        // The mid-stream error is reported, then the watch resumes from revision 1.
        assert_eq!(got[3], Err(unavailable()));
        assert_eq!(got[4], Ok(Event::Applied(pod("x", 2))));
        // Two backoffs before the list (>= 0.75s + 1.5s), one after the stream error.
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(2250 + 750), "{waited:?}");
        assert!(waited <= Duration::from_secs(1 + 2 + 1), "{waited:?}");
        assert_eq!(script.lock().expect("lock").watch_calls, vec![1, 1]);
    }

    #[test]
    fn backoff_doubles_up_to_max_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let d: Vec<Duration> = (0..4).map(|_| b.next_delay()).collect();
        for (got, step) in d.iter().zip([100u64, 200, 400, 400]) {
            assert!(*got <= Duration::from_millis(step), "{got:?} > {step}");
            assert!(
                *got >= Duration::from_millis(step * 3 / 4),
                "{got:?} < {step}"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
