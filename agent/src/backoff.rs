//! Restart backoff for crashing containers (Kubernetes' CrashLoopBackOff).
//!
//! Pure: the pod sync loop keeps one [`CrashLoop`] per container, tells it when the container
//! exited and how long it had been running, and asks when the next start is allowed. The delay
//! after the n-th consecutive crash is `base * 2^(n-1)`, capped at `max` (10 s, 20 s, 40 s, ...,
//! 5 min); a container that ran healthily for `reset_after` (10 min) before exiting starts the
//! sequence again.

use std::time::Duration;

use tokio::time::Instant;

/// The backoff schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    pub base: Duration,
    pub max: Duration,
    pub reset_after: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            base: Duration::from_secs(10),
            max: Duration::from_secs(300),
            reset_after: Duration::from_secs(600),
        }
    }
}

impl BackoffPolicy {
    /// Delay before the restart that follows the `crashes`-th consecutive crash (1-based).
    pub fn delay(&self, crashes: u32) -> Duration {
        if crashes == 0 {
            return Duration::ZERO;
        }
        let shift = (crashes - 1).min(31);
        let d = self.base.saturating_mul(1u32 << shift);
        d.min(self.max)
    }
}

/// Crash history of one container, enough to decide when it may start again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CrashLoop {
    /// Consecutive crashes since the last reset.
    pub crashes: u32,
    /// Earliest instant the next start is allowed.
    pub not_before: Option<Instant>,
}

impl CrashLoop {
    /// Record that the container exited at `now` after running for `ran_for`.
    pub fn record_exit(&mut self, policy: &BackoffPolicy, ran_for: Duration, now: Instant) {
        if ran_for >= policy.reset_after {
            self.crashes = 0;
        }
        self.crashes = self.crashes.saturating_add(1);
        self.not_before = Some(now + policy.delay(self.crashes));
    }

    /// Time left before a restart is allowed (`None`: may start now).
    pub fn remaining(&self, now: Instant) -> Option<Duration> {
        match self.not_before {
            Some(t) if t > now => Some(t - now),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_doubles_from_ten_seconds_and_caps_at_five_minutes() {
        let p = BackoffPolicy::default();
        let secs: Vec<u64> = (1..=8).map(|n| p.delay(n).as_secs()).collect();
        assert_eq!(secs, vec![10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(p.delay(0), Duration::ZERO);
        assert_eq!(p.delay(u32::MAX), Duration::from_secs(300));
    }

    #[tokio::test(start_paused = true)]
    async fn crash_loop_waits_the_schedule_and_resets_after_ten_healthy_minutes() {
        let p = BackoffPolicy::default();
        let mut c = CrashLoop::default();
        let t0 = Instant::now();
        c.record_exit(&p, Duration::from_secs(1), t0);
        assert_eq!(c.remaining(t0), Some(Duration::from_secs(10)));
        assert_eq!(c.remaining(t0 + Duration::from_secs(10)), None);
        c.record_exit(&p, Duration::from_secs(1), t0);
        assert_eq!(c.remaining(t0), Some(Duration::from_secs(20)));
        c.record_exit(&p, Duration::from_secs(599), t0);
        assert_eq!(c.crashes, 3);
        assert_eq!(c.remaining(t0), Some(Duration::from_secs(40)));
        // Ten minutes of healthy running: the next crash is treated as the first.
        c.record_exit(&p, Duration::from_secs(600), t0);
        assert_eq!(c.crashes, 1);
        assert_eq!(c.remaining(t0), Some(Duration::from_secs(10)));
    }
}
