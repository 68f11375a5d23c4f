//! Backends and the power-of-two-choices pick.
//!
//! A [`Backend`] is shared by the backend set that lists it and by every connection to it: the
//! set reads its in-flight count to balance, connections raise and lower it, and the worker
//! marks it removed (which starts the drain deadline that open connections wait on).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rand::Rng;
use tokio::sync::watch;
use tokio::time::Instant;

pub(crate) struct Backend {
    pub(crate) addr: SocketAddr,
    in_flight: AtomicU64,
    /// `Some(deadline)` once removed from the set: connections to it end by then.
    removed: watch::Sender<Option<Instant>>,
}

impl Backend {
    pub(crate) fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            in_flight: AtomicU64::new(0),
            removed: watch::Sender::new(None),
        }
    }

    pub(crate) fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub(crate) fn mark_removed(&self, deadline: Instant) {
        self.removed.send_if_modified(|d| {
            if d.is_none() {
                *d = Some(deadline);
                true
            } else {
                false
            }
        });
    }

    pub(crate) fn revive(&self) {
        self.removed.send_replace(None);
    }

    pub(crate) fn removed_deadline(&self) -> Option<Instant> {
        *self.removed.borrow()
    }

    /// Resolves when a connection to this backend must end: the drain deadline after removal
    /// (re-armed if the backend is revived meanwhile). Never resolves for a listed backend.
    pub(crate) async fn drain_deadline(&self) {
        let mut rx = self.removed.subscribe();
        loop {
            let deadline = *rx.borrow_and_update();
            match deadline {
                None => {
                    if rx.changed().await.is_err() {
                        return std::future::pending().await;
                    }
                }
                Some(deadline) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline) => return,
                        changed = rx.changed() => {
                            if changed.is_err() {
                                // Sender gone cannot happen while we hold the backend, but
                                // keep the deadline anyway.
                                tokio::time::sleep_until(deadline).await;
                                return;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Counts one connection (or connect attempt) against a backend for as long as it lives.
pub(crate) struct InFlight(Arc<Backend>);

impl InFlight {
    pub(crate) fn new(backend: Arc<Backend>) -> Self {
        backend.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(backend)
    }

    pub(crate) fn backend(&self) -> &Arc<Backend> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The ready backends of one Service port; replaced whole, never mutated.
#[derive(Default)]
pub(crate) struct BackendSet {
    pub(crate) backends: Vec<Arc<Backend>>,
}

/// Power of two choices: two distinct random candidates not in `tried`, the one with fewer
/// in-flight connections wins (ties go to the first draw). `None` when every backend was tried.
pub(crate) fn pick<R: Rng>(
    backends: &[Arc<Backend>],
    tried: &[usize],
    rng: &mut R,
) -> Option<usize> {
    pick_by(backends.len(), |i| backends[i].in_flight(), tried, rng)
}

fn pick_by<R: Rng>(
    n: usize,
    load: impl Fn(usize) -> u64,
    tried: &[usize],
    rng: &mut R,
) -> Option<usize> {
    if tried.is_empty() {
        return two_choices(n, &load, rng);
    }
    // A retry after a failed connect: rare, so a small allocation is fine.
    let untried: Vec<usize> = (0..n).filter(|i| !tried.contains(i)).collect();
    let k = two_choices(untried.len(), &|j| load(untried[j]), rng)?;
    Some(untried[k])
}

fn two_choices<R: Rng>(n: usize, load: &dyn Fn(usize) -> u64, rng: &mut R) -> Option<usize> {
    match n {
        0 => None,
        1 => Some(0),
        _ => {
            let a = rng.gen_range(0..n);
            let mut b = rng.gen_range(0..n - 1);
            if b >= a {
                b += 1;
            }
            Some(if load(b) < load(a) { b } else { a })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn pick_returns_none_without_backends() {
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(pick_by(0, |_| 0, &[], &mut rng), None);
    }

    #[test]
    fn pick_single_backend_always_wins() {
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..10 {
            assert_eq!(pick_by(1, |_| 7, &[], &mut rng), Some(0));
        }
    }

    #[test]
    fn pick_of_two_prefers_less_loaded_every_time() {
        let mut rng = StdRng::seed_from_u64(2);
        let loads = [5u64, 1];
        for _ in 0..100 {
            assert_eq!(pick_by(2, |i| loads[i], &[], &mut rng), Some(1));
        }
    }

    #[test]
    fn pick_never_chooses_the_most_loaded_of_many() {
        let mut rng = StdRng::seed_from_u64(3);
        let loads = [0u64, 0, 0, 100];
        for _ in 0..1000 {
            assert_ne!(pick_by(4, |i| loads[i], &[], &mut rng), Some(3));
        }
    }

    #[test]
    fn pick_spreads_equal_load_over_all_backends() {
        let mut rng = StdRng::seed_from_u64(4);
        let mut hits = [0u32; 4];
        for _ in 0..4000 {
            if let Some(i) = pick_by(4, |_| 0, &[], &mut rng) {
                hits[i] += 1;
            }
        }
        assert!(hits.iter().all(|&h| h > 700), "uneven: {hits:?}");
    }

    #[test]
    fn pick_skips_tried_backends_and_ends_when_all_tried() {
        let mut rng = StdRng::seed_from_u64(5);
        for _ in 0..100 {
            assert_eq!(pick_by(3, |_| 0, &[0, 2], &mut rng), Some(1));
        }
        assert_eq!(pick_by(3, |_| 0, &[0, 1, 2], &mut rng), None);
        for _ in 0..100 {
            let i = pick_by(3, |_| 0, &[1], &mut rng);
            assert!(matches!(i, Some(0) | Some(2)), "picked {i:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn drain_deadline_fires_after_removal_and_not_before() {
        let b = Arc::new(Backend::new("127.0.0.1:1".parse().expect("addr")));
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.drain_deadline().await }
        });
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        assert!(!waiter.is_finished(), "listed backend must never time out");
        let start = Instant::now();
        b.mark_removed(start + std::time::Duration::from_secs(30));
        waiter.await.expect("join");
        assert!(Instant::now() >= start + std::time::Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn revived_backend_cancels_its_drain_deadline() {
        let b = Arc::new(Backend::new("127.0.0.1:1".parse().expect("addr")));
        b.mark_removed(Instant::now() + std::time::Duration::from_secs(30));
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.drain_deadline().await }
        });
        tokio::task::yield_now().await;
        b.revive();
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        assert!(!waiter.is_finished(), "revived backend must not be cut");
        waiter.abort();
    }
}
