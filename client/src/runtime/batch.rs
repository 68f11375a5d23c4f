//! The batching pass loop shared by loops that act on whole caches at once rather than per
//! key (the scheduler, garbage collection): any change marks the loop dirty, and one pass
//! runs at a fixed deadline `window` after the first change (a deadline, not a debounce, so a
//! steady stream of changes cannot starve the passes), once every cache the pass reads is
//! ready. A pass may ask to run again after a delay (it failed, or could not finish).

use std::future::Future;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// One pass over the caches.
pub trait Pass: Send {
    /// Are the caches the pass reads ready (listed once)? No pass runs before.
    fn ready(&self) -> bool;
    /// Run a pass; `Some(delay)`: run again after `delay` even without a change.
    fn run(&mut self) -> impl Future<Output = Option<Duration>> + Send;
}

/// When passes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// How long changes are gathered before a pass.
    pub window: Duration,
    /// Also mark the loop dirty this often (a safety net, not the trigger).
    pub resync: Option<Duration>,
    /// Run a pass as soon as the caches are ready, even before any change.
    pub pass_at_start: bool,
}

/// The next pass's deadline after a change: the one already set, else `now + window`.
fn mark(pass_at: &mut Option<Instant>, window: Duration) {
    pass_at.get_or_insert_with(|| Instant::now() + window);
}

/// Run `pass` on every batch of `changes` until `shutdown` (or until `changes` ends).
pub async fn run_batched<P, S>(
    pass: &mut P,
    changes: S,
    batching: Batching,
    shutdown: CancellationToken,
) where
    P: Pass,
    S: Stream<Item = ()> + Send,
{
    let mut changes = std::pin::pin!(changes.fuse());
    let mut pass_at = batching.pass_at_start.then(Instant::now);
    let resync_every = batching.resync.unwrap_or(Duration::from_secs(3600));
    let mut resync = tokio::time::interval_at(Instant::now() + resync_every, resync_every);
    loop {
        let ready = pass.ready();
        let due = pass_at.unwrap_or_else(Instant::now);
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep_until(due), if pass_at.is_some() && ready => {
                pass_at = pass.run().await.map(|again| Instant::now() + again);
            }
            change = changes.next() => match change {
                Some(()) => mark(&mut pass_at, batching.window),
                None => break,
            },
            _ = resync.tick(), if batching.resync.is_some() => mark(&mut pass_at, batching.window),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    struct Counting {
        ready: Arc<AtomicBool>,
        runs: Arc<AtomicUsize>,
        /// Ask for one retry after the first pass.
        retry_once: bool,
    }

    impl Pass for Counting {
        fn ready(&self) -> bool {
            self.ready.load(Ordering::SeqCst)
        }
        async fn run(&mut self) -> Option<Duration> {
            self.runs.fetch_add(1, Ordering::SeqCst);
            std::mem::take(&mut self.retry_once).then_some(Duration::from_millis(100))
        }
    }

    fn setup(retry_once: bool) -> (Counting, Arc<AtomicBool>, Arc<AtomicUsize>) {
        let ready = Arc::new(AtomicBool::new(true));
        let runs = Arc::new(AtomicUsize::new(0));
        let p = Counting {
            ready: ready.clone(),
            runs: runs.clone(),
            retry_once,
        };
        (p, ready, runs)
    }

    const WINDOW: Duration = Duration::from_millis(10);

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_changes_is_one_pass_after_the_window_and_waits_for_ready() {
        let (mut p, ready, runs) = setup(false);
        ready.store(false, Ordering::SeqCst);
        let (tx, rx) = futures::channel::mpsc::unbounded::<()>();
        let shutdown = CancellationToken::new();
        let cfg = Batching {
            window: WINDOW,
            resync: None,
            pass_at_start: false,
        };
        let task = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { run_batched(&mut p, rx, cfg, shutdown).await }
        });
        for _ in 0..5 {
            tx.unbounded_send(()).unwrap_or_default();
        }
        tokio::time::sleep(WINDOW * 5).await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            0,
            "no pass before the caches are ready"
        );
        ready.store(true, Ordering::SeqCst);
        tx.unbounded_send(()).unwrap_or_default();
        tokio::time::sleep(WINDOW * 5).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1, "the burst is one pass");
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            1,
            "no change, no resync: no pass"
        );
        shutdown.cancel();
        task.await.unwrap_or_default();
    }

    #[tokio::test(start_paused = true)]
    async fn start_pass_retry_and_resync_each_run_a_pass() {
        let (mut p, _ready, runs) = setup(true);
        let (_tx, rx) = futures::channel::mpsc::unbounded::<()>();
        let shutdown = CancellationToken::new();
        let cfg = Batching {
            window: WINDOW,
            resync: Some(Duration::from_secs(10)),
            pass_at_start: true,
        };
        let task = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { run_batched(&mut p, rx, cfg, shutdown).await }
        });
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1, "the start pass");
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 2, "the retry asked for");
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 3, "the resync");
        shutdown.cancel();
        task.await.unwrap_or_default();
    }
}
