//! A deduplicating work queue of keys with delayed and rate-limited requeue (client-go's
//! workqueue semantics).
//!
//! - A key is queued at most once: adding a key that is already waiting is a no-op, except
//!   that an earlier due time wins (`add` beats a pending `add_after`).
//! - A key handed out by [`WorkQueue::next`] is *processing* until [`WorkQueue::done`]; adds
//!   meanwhile are remembered (earliest due time) and take effect at `done`, so one key is
//!   never processed twice at once and no change is lost.
//! - [`WorkQueue::add_rate_limited`] delays by `base * 2^(failures-1)` up to `max`, per key,
//!   until [`WorkQueue::forget`].
//!
//! Time comes from `tokio::time`, so tests drive it with paused time.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Per-key exponential backoff for [`WorkQueue::add_rate_limited`].
#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    pub base: Duration,
    pub max: Duration,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            base: Duration::from_millis(100),
            max: Duration::from_secs(60),
        }
    }
}

struct State<K> {
    ready: VecDeque<K>,
    ready_set: HashSet<K>,
    /// Delayed keys by due time (seq breaks ties, FIFO).
    timers: BTreeMap<(Instant, u64), K>,
    delayed: HashMap<K, (Instant, u64)>,
    processing: HashSet<K>,
    /// Keys added while processing, with the earliest due time asked for.
    dirty: HashMap<K, Instant>,
    failures: HashMap<K, u32>,
    seq: u64,
    shutdown: bool,
}

/// Cloneable handle; all clones share one queue.
pub struct WorkQueue<K> {
    state: Arc<Mutex<State<K>>>,
    notify: Arc<Notify>,
    rate_limit: RateLimit,
}

impl<K> Clone for WorkQueue<K> {
    fn clone(&self) -> Self {
        WorkQueue {
            state: self.state.clone(),
            notify: self.notify.clone(),
            rate_limit: self.rate_limit,
        }
    }
}

impl<K: Clone + Eq + Hash + Send + 'static> WorkQueue<K> {
    pub fn new(rate_limit: RateLimit) -> Self {
        WorkQueue {
            state: Arc::new(Mutex::new(State {
                ready: VecDeque::new(),
                ready_set: HashSet::new(),
                timers: BTreeMap::new(),
                delayed: HashMap::new(),
                processing: HashSet::new(),
                dirty: HashMap::new(),
                failures: HashMap::new(),
                seq: 0,
                shutdown: false,
            })),
            notify: Arc::new(Notify::new()),
            rate_limit,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<K>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue `key` now.
    pub fn add(&self, key: K) {
        self.add_at(key, Instant::now());
    }

    /// Queue `key` after `delay` (or earlier if it is already queued sooner).
    pub fn add_after(&self, key: K, delay: Duration) {
        self.add_at(key, Instant::now() + delay);
    }

    /// Queue `key` after its per-key backoff, which doubles on every call until `forget`.
    pub fn add_rate_limited(&self, key: K) {
        let delay = {
            let mut s = self.lock();
            let n = s.failures.entry(key.clone()).or_insert(0);
            *n = n.saturating_add(1);
            backoff_delay(self.rate_limit, *n)
        };
        self.add_after(key, delay);
    }

    /// Reset `key`'s backoff (after a success).
    pub fn forget(&self, key: &K) {
        self.lock().failures.remove(key);
    }

    /// How many times `key` was rate-limited since the last `forget`.
    pub fn failures(&self, key: &K) -> u32 {
        self.lock().failures.get(key).copied().unwrap_or(0)
    }

    fn add_at(&self, key: K, at: Instant) {
        let mut s = self.lock();
        if s.shutdown {
            return;
        }
        if s.processing.contains(&key) {
            let e = s.dirty.entry(key).or_insert(at);
            *e = (*e).min(at);
            return;
        }
        if s.ready_set.contains(&key) {
            return;
        }
        if let Some(&(t, seq)) = s.delayed.get(&key) {
            if at >= t {
                return;
            }
            s.timers.remove(&(t, seq));
            s.delayed.remove(&key);
        }
        if at <= Instant::now() {
            s.ready_set.insert(key.clone());
            s.ready.push_back(key);
        } else {
            s.seq += 1;
            let seq = s.seq;
            s.timers.insert((at, seq), key.clone());
            s.delayed.insert(key, (at, seq));
        }
        drop(s);
        // A stored permit wakes the consumer even if it is not waiting yet.
        self.notify.notify_one();
    }

    /// The next due key, marked processing; waits as needed. None after `shutdown` (keys
    /// still queued are dropped). Cancel-safe: a key is only taken when this returns.
    pub async fn next(&self) -> Option<K> {
        loop {
            let deadline = {
                let mut s = self.lock();
                if s.shutdown {
                    return None;
                }
                let now = Instant::now();
                while let Some((&(t, seq), _)) = s.timers.first_key_value() {
                    if t > now {
                        break;
                    }
                    if let Some(k) = s.timers.remove(&(t, seq)) {
                        s.delayed.remove(&k);
                        s.ready_set.insert(k.clone());
                        s.ready.push_back(k);
                    }
                }
                if let Some(k) = s.ready.pop_front() {
                    s.ready_set.remove(&k);
                    s.processing.insert(k.clone());
                    if !s.ready.is_empty() {
                        // Let another waiting consumer (if any) take the next one.
                        self.notify.notify_one();
                    }
                    return Some(k);
                }
                s.timers.first_key_value().map(|((t, _), _)| *t)
            };
            match deadline {
                Some(t) => {
                    tokio::select! {
                        _ = self.notify.notified() => {}
                        _ = tokio::time::sleep_until(t) => {}
                    }
                }
                None => self.notify.notified().await,
            }
        }
    }

    /// Finish processing `key`; if it was added meanwhile, it is queued again.
    pub fn done(&self, key: &K) {
        let again = {
            let mut s = self.lock();
            s.processing.remove(key);
            s.dirty.remove(key)
        };
        if let Some(at) = again {
            self.add_at(key.clone(), at);
        }
    }

    /// Keys waiting (ready or delayed), not counting those being processed.
    pub fn len(&self) -> usize {
        let s = self.lock();
        s.ready.len() + s.timers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stop handing out keys; `next` returns None from now on.
    pub fn shutdown(&self) {
        self.lock().shutdown = true;
        self.notify.notify_waiters();
        self.notify.notify_one();
    }
}

fn backoff_delay(rl: RateLimit, failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(30);
    rl.base.saturating_mul(1u32 << exp).min(rl.max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q() -> WorkQueue<&'static str> {
        WorkQueue::new(RateLimit {
            base: Duration::from_secs(1),
            max: Duration::from_secs(8),
        })
    }

    async fn next_within(q: &WorkQueue<&'static str>, d: Duration) -> Option<&'static str> {
        tokio::time::timeout(d, q.next()).await.ok().flatten()
    }

    #[tokio::test(start_paused = true)]
    async fn duplicate_adds_collapse_into_one_item() {
        let q = q();
        q.add("a");
        q.add("b");
        q.add("a");
        assert_eq!(q.len(), 2);
        assert_eq!(q.next().await, Some("a"));
        assert_eq!(q.next().await, Some("b"));
        assert_eq!(next_within(&q, Duration::from_secs(5)).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn add_while_processing_requeues_once_at_done() {
        let q = q();
        q.add("a");
        assert_eq!(q.next().await, Some("a"));
        q.add("a");
        q.add("a");
        // Not handed out again while still processing.
        assert_eq!(next_within(&q, Duration::from_secs(5)).await, None);
        q.done(&"a");
        assert_eq!(q.next().await, Some("a"));
        q.done(&"a");
        assert_eq!(next_within(&q, Duration::from_secs(5)).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn add_after_waits_and_earlier_due_time_wins() {
        let q = q();
        let start = Instant::now();
        q.add_after("a", Duration::from_secs(10));
        q.add_after("a", Duration::from_secs(3));
        q.add_after("a", Duration::from_secs(20));
        assert_eq!(q.len(), 1);
        assert_eq!(q.next().await, Some("a"));
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        q.done(&"a");
        // The later schedules were merged away.
        assert_eq!(next_within(&q, Duration::from_secs(30)).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn immediate_add_overrides_pending_delay() {
        let q = q();
        let start = Instant::now();
        q.add_after("a", Duration::from_secs(10));
        q.add("a");
        assert_eq!(q.next().await, Some("a"));
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limited_requeue_doubles_per_key_until_forget() {
        let q = q();
        let mut waits = vec![];
        for _ in 0..5 {
            let start = Instant::now();
            q.add_rate_limited("a");
            assert_eq!(q.next().await, Some("a"));
            waits.push(start.elapsed().as_secs());
            q.done(&"a");
        }
        assert_eq!(waits, vec![1, 2, 4, 8, 8]);
        assert_eq!(q.failures(&"a"), 5);
        q.forget(&"a");
        let start = Instant::now();
        q.add_rate_limited("a");
        assert_eq!(q.next().await, Some("a"));
        assert_eq!(start.elapsed().as_secs(), 1);
        // Another key's backoff is independent.
        assert_eq!(q.failures(&"b"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_consumer_wakes_on_add() {
        let q = q();
        let consumer = tokio::spawn({
            let q = q.clone();
            async move { q.next().await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!consumer.is_finished());
        q.add("a");
        let got = tokio::time::timeout(Duration::from_secs(5), consumer)
            .await
            .expect("woken")
            .expect("join");
        assert_eq!(got, Some("a"));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_releases_waiters() {
        let q = q();
        let consumer = tokio::spawn({
            let q = q.clone();
            async move { q.next().await }
        });
        tokio::task::yield_now().await;
        q.shutdown();
        let got = tokio::time::timeout(Duration::from_secs(5), consumer)
            .await
            .expect("released")
            .expect("join");
        assert_eq!(got, None);
    }
}
