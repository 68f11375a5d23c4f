//! Crash points for the fault-injection suite (`e2e/scenarios/proof.rs`), with tikv's `fail`.
//!
//! The points sit at function boundaries of the raft layer, so they stay put while what is
//! inside those functions changes:
//!
//! | point | where |
//! |---|---|
//! | `raft::append` | a Ready's entries are about to be appended to the log |
//! | `raft::append::fsync` | appended, the fsync not yet waited for |
//! | `raft::apply` | committed entries are about to be applied to the state machine |
//! | `raft::apply::done` | applied, the applied index not yet recorded by the raft layer |
//! | `raft::snapshot::send` | the leader is about to send a snapshot to a follower |
//! | `raft::snapshot::apply` | a received snapshot is stored, the state machine not yet restored |
//! | `raft::compact` | a snapshot is committed, the log not yet compacted behind it |
//!
//! They are compiled in only with the `failpoints` feature (test builds: the workspace's
//! dev-dependency turns it on; `cargo build --release` never does) and armed by the
//! environment: `BERTH_FAILPOINTS="raft::apply=crash(3);raft::compact=sleep(100)"`.
//! `crash(N)` aborts the process at the point's Nth hit (no destructors, no flush: like
//! `kill -9` at exactly that line, after a line on stderr saying so); any other action is
//! `fail`'s own syntax (`panic`, `sleep(MS)`, `50%panic`, `2*off->panic`, ...).

/// Arm the points named in `BERTH_FAILPOINTS` (once per process).
pub fn init() {
    let Ok(spec) = std::env::var("BERTH_FAILPOINTS") else {
        return;
    };
    #[cfg(feature = "failpoints")]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            for (name, action) in spec
                .split(';')
                .filter_map(|p| p.split_once('='))
                .map(|(n, a)| (n.trim().to_string(), a.trim().to_string()))
            {
                let armed = match crash_at(&action) {
                    Some(n) => arm_crash(&name, n),
                    None => fail::cfg(name.clone(), &action),
                };
                match armed {
                    Ok(()) => tracing::warn!(point = %name, %action, "crash point armed (BERTH_FAILPOINTS)"),
                    Err(e) => tracing::error!(point = %name, %action, error = %e, "BERTH_FAILPOINTS: cannot arm this point"),
                }
            }
        });
    }
    #[cfg(not(feature = "failpoints"))]
    tracing::warn!(
        %spec,
        "BERTH_FAILPOINTS is set but this berth was built without crash points (the \
         `failpoints` feature of berth-apiserver); ignored"
    );
}

/// `crash(N)` -> N (>= 1).
#[cfg(feature = "failpoints")]
fn crash_at(action: &str) -> Option<u64> {
    let n = action.strip_prefix("crash(")?.strip_suffix(')')?;
    n.trim().parse::<u64>().ok().filter(|n| *n >= 1)
}

#[cfg(feature = "failpoints")]
fn arm_crash(name: &str, n: u64) -> Result<(), String> {
    let hits = std::sync::atomic::AtomicU64::new(0);
    let point = name.to_string();
    fail::cfg_callback(name, move || {
        let hit = hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        if hit == n {
            eprintln!("berth: crash point {point} hit ({hit}); aborting the process");
            std::process::abort();
        }
    })
}

#[cfg(all(test, feature = "failpoints"))]
mod tests {
    use super::*;

    #[test]
    fn crash_takes_a_positive_hit_count() {
        assert_eq!(crash_at("crash(3)"), Some(3));
        assert_eq!(crash_at("crash(0)"), None);
        assert_eq!(crash_at("panic"), None);
    }
}
