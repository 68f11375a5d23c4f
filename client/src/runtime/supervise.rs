//! Supervision of long-running control loops (the controllers and the scheduler on the
//! leader): a loop that panics, returns an error, or returns at all before shutdown is logged
//! with its cause, counted in `berth_controller_restarts_total{loop=NAME}`, reported as a
//! `ControllerRestarted` Warning Event, and started again after an exponential backoff (capped,
//! and reset once a run has stayed up for a healthy period). Shutdown (e.g. leadership lost)
//! cancels the running attempt and waits for it, so loops stop cleanly.

use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use berth_proto::types::ObjectReference;
use tokio_util::sync::CancellationToken;

use super::events::{EventType, Recorder};
use crate::Client;

/// How a supervised loop's future ended: `None` is a normal end (only expected at
/// shutdown), `Some(cause)` a failure.
pub trait LoopExit: Send + 'static {
    fn failure(self) -> Option<String>;
}

impl LoopExit for () {
    fn failure(self) -> Option<String> {
        None
    }
}

impl<E: Display + Send + 'static> LoopExit for Result<(), E> {
    fn failure(self) -> Option<String> {
        self.err().map(|e| e.to_string())
    }
}

/// Restart delays: start at `initial`, double per consecutive failure up to `max`; a run that
/// lasted at least `healthy_after` resets the delay to `initial`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartBackoff {
    pub initial: Duration,
    pub max: Duration,
    pub healthy_after: Duration,
}

impl Default for RestartBackoff {
    fn default() -> Self {
        RestartBackoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
            healthy_after: Duration::from_secs(60),
        }
    }
}

impl RestartBackoff {
    /// The delay before the next start, given the delay used before the run that just ended
    /// (`None`: it was the first run) and how long that run lasted.
    pub fn next_delay(&self, previous: Option<Duration>, ran_for: Duration) -> Duration {
        match previous {
            Some(prev) if ran_for < self.healthy_after => prev.saturating_mul(2).min(self.max),
            _ => self.initial.min(self.max),
        }
    }
}

/// Injected failure of a loop's start, for tests of supervision itself: called with the loop
/// name and the attempt number (0 first); `true` makes that attempt panic instead of running.
pub type FaultHook = Arc<dyn Fn(&str, u32) -> bool + Send + Sync>;

/// Where restarts are reported as Events.
#[derive(Debug, Clone)]
struct EventTarget {
    client: Client,
    recorder: Recorder,
    object: ObjectReference,
}

/// Runs loops under supervision (see the module docs). Cheap to clone; one per process.
#[derive(Clone, Default)]
pub struct Supervisor {
    backoff: RestartBackoff,
    events: Option<EventTarget>,
    fault: Option<FaultHook>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("backoff", &self.backoff)
            .field("events", &self.events.as_ref().map(|e| &e.object))
            .field("fault_injection", &self.fault.is_some())
            .finish()
    }
}

/// The message of a panic payload (`panic!("...")` carries a `&str` or a `String`).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

/// The restart counter of loop `name`.
pub fn restarts_counter(name: &str) -> berth_metrics::Counter {
    berth_metrics::global()
        .counter_vec(
            "berth_controller_restarts_total",
            "Restarts of a supervised control loop (it panicked, failed or returned), by loop.",
            &["loop"],
        )
        .with(&[name])
}

impl Supervisor {
    pub fn new() -> Supervisor {
        Supervisor::default()
    }

    pub fn with_backoff(mut self, backoff: RestartBackoff) -> Supervisor {
        self.backoff = backoff;
        self
    }

    /// Report restarts as Warning Events about `object` (e.g. the leading server).
    pub fn with_events(
        mut self,
        client: Client,
        recorder: Recorder,
        object: ObjectReference,
    ) -> Supervisor {
        self.events = Some(EventTarget {
            client,
            recorder,
            object,
        });
        self
    }

    /// Make chosen attempts of chosen loops panic at start (tests of supervision only).
    pub fn with_fault_injection(mut self, hook: FaultHook) -> Supervisor {
        self.fault = Some(hook);
        self
    }

    /// Run `start(token)` as loop `name` until `shutdown`, restarting it whenever it ends
    /// before. Each attempt gets a child token of `shutdown`; on shutdown the running attempt
    /// is cancelled and awaited.
    pub async fn run<F, Fut, O>(&self, name: &str, shutdown: CancellationToken, mut start: F)
    where
        F: FnMut(CancellationToken) -> Fut,
        Fut: Future<Output = O> + Send + 'static,
        O: LoopExit,
    {
        let restarts = restarts_counter(name);
        let mut delay: Option<Duration> = None;
        for attempt in 0u32.. {
            let token = shutdown.child_token();
            let inject = self.fault.as_ref().is_some_and(|f| f(name, attempt));
            let fut = start(token.clone());
            let started = tokio::time::Instant::now();
            let handle = tokio::spawn(async move {
                if inject {
                    panic!("injected fault");
                }
                fut.await.failure()
            });
            let abort = handle.abort_handle();
            let outcome = tokio::select! {
                r = handle => r,
                _ = shutdown.cancelled() => {
                    token.cancel();
                    // The loop sees its token and returns; it must not outlive the shutdown.
                    let _ = tokio::time::timeout(Duration::from_secs(30), async {
                        while !abort.is_finished() {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    })
                    .await;
                    abort.abort();
                    return;
                }
            };
            if shutdown.is_cancelled() {
                return;
            }
            let cause = match outcome {
                Ok(Some(e)) => format!("failed: {e}"),
                Ok(None) => "returned before shutdown".to_string(),
                Err(e) if e.is_panic() => format!("panicked: {}", panic_message(&*e.into_panic())),
                Err(e) => format!("was cancelled: {e}"),
            };
            let next = self.backoff.next_delay(delay, started.elapsed());
            delay = Some(next);
            restarts.inc();
            tracing::error!(
                %name,
                %cause,
                restart_in = ?next,
                restarts = restarts.get(),
                "control loop stopped; restarting"
            );
            if let Some(t) = &self.events {
                let message = format!("control loop {name} {cause}; restarting in {next:?}");
                tokio::select! {
                    _ = t.recorder.record(
                        &t.client,
                        t.object.clone(),
                        EventType::Warning,
                        "ControllerRestarted",
                        &message,
                    ) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(next) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn restart_delay_doubles_up_to_the_cap_and_resets_after_a_healthy_run() {
        let b = RestartBackoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(350),
            healthy_after: Duration::from_secs(10),
        };
        let short = Duration::from_millis(5);
        let ms = Duration::from_millis;
        let cases = [
            (None, short, ms(100)),
            (Some(ms(100)), short, ms(200)),
            (Some(ms(200)), short, ms(350)),
            (Some(ms(350)), short, ms(350)),
            (Some(ms(350)), Duration::from_secs(10), ms(100)),
            (None, Duration::from_secs(60), ms(100)),
        ];
        for (prev, ran, want) in cases {
            assert_eq!(b.next_delay(prev, ran), want, "prev {prev:?} ran {ran:?}");
        }
    }

    fn fast() -> Supervisor {
        Supervisor::new().with_backoff(RestartBackoff {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(20),
            healthy_after: Duration::from_secs(60),
        })
    }

    async fn wait_until(what: &str, f: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_loop_that_panics_errs_or_returns_is_restarted_and_counted() {
        let name = "test-panics-errs-returns";
        let before = restarts_counter(name).get();
        let attempts = Arc::new(AtomicU32::new(0));
        let working = Arc::new(AtomicU32::new(0));
        let shutdown = CancellationToken::new();
        let (a, w) = (attempts.clone(), working.clone());
        let task = tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                fast()
                    .run(name, shutdown, move |token| {
                        let n = a.fetch_add(1, Ordering::SeqCst);
                        let w = w.clone();
                        async move {
                            match n {
                                0 => panic!("boom"),
                                1 => return Err("the watch broke".to_string()),
                                2 => return Ok(()),
                                _ => {}
                            }
                            w.store(1, Ordering::SeqCst);
                            token.cancelled().await;
                            Ok(())
                        }
                    })
                    .await
            }
        });
        wait_until("the 4th attempt runs", || {
            working.load(Ordering::SeqCst) == 1
        })
        .await;
        assert_eq!(attempts.load(Ordering::SeqCst), 4);
        assert_eq!(restarts_counter(name).get() - before, 3);
        shutdown.cancel();
        task.await.expect("join");
        assert_eq!(attempts.load(Ordering::SeqCst), 4, "no restart at shutdown");
        assert_eq!(restarts_counter(name).get() - before, 3);
    }

    #[tokio::test]
    async fn shutdown_stops_the_running_attempt_and_nothing_restarts() {
        let name = "test-shutdown";
        let attempts = Arc::new(AtomicU32::new(0));
        let stopped = Arc::new(AtomicU32::new(0));
        let shutdown = CancellationToken::new();
        let (a, s) = (attempts.clone(), stopped.clone());
        let sup = fast().with_fault_injection(Arc::new(|_, attempt| attempt == 0));
        let task = tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                sup.run(name, shutdown, move |token| {
                    a.fetch_add(1, Ordering::SeqCst);
                    let s = s.clone();
                    async move {
                        token.cancelled().await;
                        s.fetch_add(1, Ordering::SeqCst);
                    }
                })
                .await
            }
        });
        // Attempt 0 panics by injection, attempt 1 runs.
        wait_until("the restarted attempt runs", || {
            attempts.load(Ordering::SeqCst) == 2
        })
        .await;
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("supervisor returns on shutdown")
            .expect("join");
        assert_eq!(
            stopped.load(Ordering::SeqCst),
            1,
            "the running attempt saw its token"
        );
        assert_eq!(attempts.load(Ordering::SeqCst), 2);
    }
}
