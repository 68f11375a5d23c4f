//! Linearizability of a recorded history of store operations, checked by an existing checker.
//!
//! # The checker
//! `todc-utils`' [`WGLChecker`]: Wing and Gong's search with Lowe's memoization (each partial
//! linearization is cached as (linearized set, model state) so no state is explored twice), as
//! in Porcupine and Knossos; its own tests replay Jepsen's etcd histories. Operations whose
//! outcome is unknown (a timeout, a broken connection) get their response at the very end of
//! the history, as Jepsen does: the checker may then linearize them anywhere after their
//! invocation, which covers "it happened" (somewhere) and "it did not" (at the end, where it
//! is observed by nothing). Evaluated and not chosen: `stateright`'s `LinearizabilityTester`
//! (also published as `consistency_model`) searches every interleaving recursively without
//! memoization, one stack frame per operation: exact for the short histories of a model
//! checker, exponential and stack-bound on the thousands of operations a fault run records.
//!
//! # The model
//! The store as one register per key holding a unique value (every write writes a value no
//! other write uses, so a read names the write it saw), with compare-and-swap: an update or a
//! delete carries the value whose resourceVersion it was conditioned on. Values stand for
//! resourceVersions one to one (each successful write gets its own revision), so CAS on the
//! value is CAS on the resourceVersion. A list returns every key at once.
//!
//! # Checking
//! [`check`] runs the checker twice: per key (P-compositionality: a history is linearizable
//! iff each key's sub-history is; a list is projected to one read per key), which is fast and
//! names the key that broke, and then on the whole history with lists as multi-key reads,
//! which also proves each list is one consistent cut. Both must pass.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use todc_utils::linearizability::history::{Action, History};
use todc_utils::linearizability::WGLChecker;
use todc_utils::specifications::Specification;

/// A key of the store (a small integer standing for an object name).
pub type Key = u32;
/// A value written (unique per write; 0 is never written).
pub type Value = u64;

/// How a write ended, as its client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Acknowledged.
    Ok,
    /// Create: the key already existed.
    Exists,
    /// Update/delete: the key did not exist.
    NotFound,
    /// Update/delete: the key held another value (resourceVersion conflict).
    Conflict,
    /// No answer (timeout, broken connection, a server that says the outcome is unknown): it
    /// may or may not have happened.
    Unknown,
}

/// One operation with its result.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Op {
    Create {
        key: Key,
        value: Value,
        out: Outcome,
    },
    /// Compare-and-swap: replace `expect` with `value`.
    Update {
        key: Key,
        value: Value,
        expect: Value,
        out: Outcome,
    },
    /// Delete, conditioned on `expect` when given.
    Delete {
        key: Key,
        expect: Option<Value>,
        out: Outcome,
    },
    /// A read of one key (`None`: absent).
    Get { key: Key, out: Option<Value> },
    /// A read of every key at once (absent keys are not listed).
    List { out: BTreeMap<Key, Value> },
}

impl Op {
    /// Whether the operation may change the state (reads never do).
    pub fn is_write(&self) -> bool {
        !matches!(self, Op::Get { .. } | Op::List { .. })
    }

    /// The keys it touches (`None`: every key).
    pub fn key(&self) -> Option<Key> {
        match self {
            Op::Create { key, .. }
            | Op::Update { key, .. }
            | Op::Delete { key, .. }
            | Op::Get { key, .. } => Some(*key),
            Op::List { .. } => None,
        }
    }

    /// The outcome of a write (`None` for reads).
    pub fn outcome(&self) -> Option<Outcome> {
        match self {
            Op::Create { out, .. } | Op::Update { out, .. } | Op::Delete { out, .. } => Some(*out),
            _ => None,
        }
    }
}

/// The sequential specification: a map of registers with CAS.
pub struct StoreSpec;

impl Specification for StoreSpec {
    type State = BTreeMap<Key, Value>;
    type Operation = Op;

    fn init() -> Self::State {
        BTreeMap::new()
    }

    fn apply(op: &Op, state: &Self::State) -> (bool, Self::State) {
        let cur = |k: &Key| state.get(k).copied();
        let with = |k: Key, v: Option<Value>| {
            let mut s = state.clone();
            match v {
                Some(v) => s.insert(k, v),
                None => s.remove(&k),
            };
            s
        };
        let same = || state.clone();
        match op {
            Op::Create { key, value, out } => match (out, cur(key)) {
                (Outcome::Ok | Outcome::Unknown, None) => (true, with(*key, Some(*value))),
                (Outcome::Exists | Outcome::Unknown, Some(_)) => (true, same()),
                _ => (false, same()),
            },
            Op::Update {
                key,
                value,
                expect,
                out,
            } => match (out, cur(key)) {
                (Outcome::Ok | Outcome::Unknown, Some(v)) if v == *expect => {
                    (true, with(*key, Some(*value)))
                }
                (Outcome::Conflict | Outcome::Unknown, Some(v)) if v != *expect => (true, same()),
                (Outcome::NotFound | Outcome::Unknown, None) => (true, same()),
                _ => (false, same()),
            },
            Op::Delete { key, expect, out } => {
                let matches = |v: Value| expect.is_none_or(|e| e == v);
                match (out, cur(key)) {
                    (Outcome::Ok | Outcome::Unknown, Some(v)) if matches(v) => {
                        (true, with(*key, None))
                    }
                    (Outcome::Conflict | Outcome::Unknown, Some(v)) if !matches(v) => {
                        (true, same())
                    }
                    (Outcome::NotFound | Outcome::Unknown, None) => (true, same()),
                    _ => (false, same()),
                }
            }
            Op::Get { key, out } => (cur(key) == *out, same()),
            Op::List { out } => (state == out, same()),
        }
    }
}

/// One operation as recorded: who ran it, when it was invoked and when it returned, on a
/// shared sequence (any monotonic counter all clients draw from), and what it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub client: usize,
    pub invoked: u64,
    /// `None`: no answer (the op's outcome must then be [`Outcome::Unknown`], or it is a read
    /// and is dropped: a read nobody saw constrains nothing).
    pub returned: Option<u64>,
    pub op: Op,
}

/// What [`check`] found.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub ops: usize,
    pub unknown_writes: usize,
    pub linearizable: bool,
    /// The keys whose sub-history is not linearizable (empty when it is).
    pub bad_keys: Vec<Key>,
    /// Whether the whole-history check (lists as one cut) ran to its end.
    pub whole_checked: bool,
    pub took: Duration,
    pub detail: String,
}

fn to_history(ops: &[&Recorded]) -> History<Op> {
    // (position, is_response, op index): calls and returns in the order they happened;
    // unknown outcomes return after everything.
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, r) in ops.iter().enumerate() {
        events.push((r.invoked, false, i));
        events.push((r.returned.unwrap_or(u64::MAX), true, i));
    }
    events.sort_by_key(|&(at, is_ret, i)| (at, is_ret, i));
    // One process per operation: the history never has two open calls on one process.
    let actions = events
        .into_iter()
        .map(|(_, is_ret, i)| {
            let op = ops[i].op.clone();
            (
                i,
                if is_ret {
                    Action::Response(op)
                } else {
                    Action::Call(op)
                },
            )
        })
        .collect();
    History::from_actions(actions)
}

/// Is this history linearizable under [`StoreSpec`]? (`true` for an empty one.)
pub fn is_linearizable(ops: &[&Recorded]) -> bool {
    if ops.is_empty() {
        return true;
    }
    WGLChecker::<StoreSpec>::is_linearizable(to_history(ops))
}

/// Drop reads without an answer; check that unanswered writes are marked unknown.
fn normalize(history: &[Recorded]) -> Result<Vec<Recorded>, String> {
    let mut out = Vec::with_capacity(history.len());
    for r in history {
        if r.returned.is_none() {
            match r.op.outcome() {
                None => continue,
                Some(Outcome::Unknown) => {}
                Some(o) => {
                    return Err(format!(
                        "client {} op {:?}: no return recorded but outcome {o:?}",
                        r.client, r.op
                    ))
                }
            }
        }
        out.push(r.clone());
    }
    Ok(out)
}

/// Project a history on one key: lists become reads of that key.
fn project(history: &[Recorded], key: Key) -> Vec<Recorded> {
    history
        .iter()
        .filter_map(|r| match &r.op {
            Op::List { out } => Some(Recorded {
                op: Op::Get {
                    key,
                    out: out.get(&key).copied(),
                },
                ..r.clone()
            }),
            op if op.key() == Some(key) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

/// Run `f` on its own thread for at most `limit` (`None` past it; the thread is left to end
/// with the process).
fn bounded<T: Send + 'static>(
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("wgl-check".into())
        .stack_size(64 << 20)
        .spawn(move || {
            let _ = tx.send(f());
        })
        .ok()?;
    rx.recv_timeout(limit).ok()
}

/// Check `history` per key and as a whole (see the module docs). The whole-history search
/// gets at most `whole_limit` (zero: skipped); if it does not finish, `whole_checked` is
/// false and the verdict rests on the per-key check (which is reported either way). A search
/// that ran out of time keeps its thread busy until the process ends.
pub fn check(history: &[Recorded], whole_limit: Duration) -> Verdict {
    let start = Instant::now();
    let history = match normalize(history) {
        Ok(h) => h,
        Err(e) => {
            return Verdict {
                ops: history.len(),
                unknown_writes: 0,
                linearizable: false,
                bad_keys: vec![],
                whole_checked: false,
                took: start.elapsed(),
                detail: e,
            }
        }
    };
    let unknown_writes = history
        .iter()
        .filter(|r| r.op.outcome() == Some(Outcome::Unknown))
        .count();
    let mut keys: Vec<Key> = history.iter().filter_map(|r| r.op.key()).collect();
    for r in &history {
        if let Op::List { out } = &r.op {
            keys.extend(out.keys());
        }
    }
    keys.sort_unstable();
    keys.dedup();
    let bad_keys: Vec<Key> = keys
        .iter()
        .copied()
        .filter(|&k| {
            let sub = project(&history, k);
            !is_linearizable(&sub.iter().collect::<Vec<_>>())
        })
        .collect();
    let mut detail = String::new();
    let mut whole_checked = false;
    let mut linearizable = bad_keys.is_empty();
    if linearizable && whole_limit.is_zero() {
        detail = "whole-history search skipped; the per-key check passed".to_string();
    } else if linearizable {
        let h = history.clone();
        match bounded(whole_limit, move || {
            is_linearizable(&h.iter().collect::<Vec<_>>())
        }) {
            Some(ok) => {
                whole_checked = true;
                if !ok {
                    linearizable = false;
                    detail = "every key is linearizable alone, but no single order explains \
                              the lists (a list was not one consistent cut)"
                        .to_string();
                }
            }
            None => {
                detail = format!(
                    "the whole-history search did not finish within {whole_limit:?}; the \
                     per-key check passed"
                );
            }
        }
    } else {
        detail = format!("not linearizable on keys {bad_keys:?}");
    }
    Verdict {
        ops: history.len(),
        unknown_writes,
        linearizable,
        bad_keys,
        whole_checked,
        took: start.elapsed(),
        detail,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A history built by hand: `(client, invoked, returned, op)`.
    fn h(ops: Vec<(usize, u64, Option<u64>, Op)>) -> Vec<Recorded> {
        ops.into_iter()
            .map(|(client, invoked, returned, op)| Recorded {
                client,
                invoked,
                returned,
                op,
            })
            .collect()
    }

    fn create(key: Key, value: Value, out: Outcome) -> Op {
        Op::Create { key, value, out }
    }
    fn update(key: Key, expect: Value, value: Value, out: Outcome) -> Op {
        Op::Update {
            key,
            value,
            expect,
            out,
        }
    }
    fn get(key: Key, out: Option<Value>) -> Op {
        Op::Get { key, out }
    }
    fn list(items: &[(Key, Value)]) -> Op {
        Op::List {
            out: items.iter().copied().collect(),
        }
    }
    const LIMIT: Duration = Duration::from_secs(10);

    #[test]
    fn a_read_of_an_overwritten_value_after_the_write_returned_is_a_stale_read() {
        // c0 creates k1=1 then CASes it to 2; after that returned, c1 still reads 1.
        let hist = h(vec![
            (0, 1, Some(2), create(1, 1, Outcome::Ok)),
            (0, 3, Some(4), update(1, 1, 2, Outcome::Ok)),
            (1, 5, Some(6), get(1, Some(1))),
        ]);
        let v = check(&hist, LIMIT);
        assert!(!v.linearizable, "{v:?}");
        assert_eq!(v.bad_keys, vec![1]);
    }

    #[test]
    fn an_acknowledged_write_missing_from_later_reads_and_lists_is_a_lost_write() {
        // k1=1 then an acknowledged CAS to 2; later a list shows 1 and a CAS on 1 succeeds:
        // the acknowledged write was lost.
        let hist = h(vec![
            (0, 1, Some(2), create(1, 1, Outcome::Ok)),
            (0, 3, Some(4), update(1, 1, 2, Outcome::Ok)),
            (1, 5, Some(6), list(&[(1, 1)])),
            (2, 7, Some(8), update(1, 1, 3, Outcome::Ok)),
            (1, 9, Some(10), get(1, Some(3))),
        ]);
        let v = check(&hist, LIMIT);
        assert!(!v.linearizable, "{v:?}");
    }

    #[test]
    fn a_list_that_mixes_two_moments_fails_the_whole_history_check_only() {
        // k1 and k2 are both changed; a list shows k1 old and k2 new although k1 changed
        // strictly before k2 did. Each key alone is fine; no single moment explains the list.
        let hist = h(vec![
            (0, 1, Some(2), create(1, 1, Outcome::Ok)),
            (0, 3, Some(4), create(2, 10, Outcome::Ok)),
            (1, 5, Some(20), list(&[(1, 1), (2, 11)])),
            (0, 6, Some(7), update(1, 1, 2, Outcome::Ok)),
            (0, 8, Some(9), update(2, 10, 11, Outcome::Ok)),
        ]);
        let v = check(&hist, LIMIT);
        assert!(v.bad_keys.is_empty(), "{v:?}");
        assert!(v.whole_checked && !v.linearizable, "{v:?}");
    }

    #[test]
    fn a_valid_concurrent_history_with_unknown_writes_passes() {
        // Two concurrent CASes on k1 (one wins, one conflicts), a read concurrent with them,
        // an unknown create that a later read shows happened, an unknown CAS nobody saw, a
        // conflicting create, and a list at the end.
        let hist = h(vec![
            (0, 1, Some(2), create(1, 1, Outcome::Ok)),
            (1, 3, Some(8), update(1, 1, 2, Outcome::Ok)),
            (2, 4, Some(9), update(1, 1, 3, Outcome::Conflict)),
            (3, 5, Some(6), get(1, Some(1))),
            (4, 7, None, create(2, 20, Outcome::Unknown)),
            (3, 10, Some(11), get(2, Some(20))),
            (5, 12, None, update(1, 2, 4, Outcome::Unknown)),
            (3, 13, Some(14), get(1, Some(2))),
            (6, 15, Some(16), create(1, 5, Outcome::Exists)),
            (7, 17, Some(18), get(3, None)),
            (3, 19, Some(20), list(&[(1, 2), (2, 20)])),
            // A read that never returned constrains nothing.
            (8, 21, None, get(1, Some(99))),
        ]);
        let v = check(&hist, LIMIT);
        assert!(v.linearizable, "{v:?}");
        assert!(v.whole_checked);
        assert_eq!(v.unknown_writes, 2);
        assert_eq!(v.ops, 11);
    }

    #[test]
    fn a_deleted_key_read_back_before_the_delete_returned_is_fine_after_it_is_not() {
        let del = |expect| Op::Delete {
            key: 1,
            expect,
            out: Outcome::Ok,
        };
        let ok = h(vec![
            (0, 1, Some(2), create(1, 1, Outcome::Ok)),
            (0, 3, Some(6), del(Some(1))),
            (1, 4, Some(5), get(1, Some(1))),
            (1, 7, Some(8), get(1, None)),
        ]);
        assert!(check(&ok, LIMIT).linearizable);
        let stale = h(vec![
            (0, 1, Some(2), create(1, 1, Outcome::Ok)),
            (0, 3, Some(4), del(None)),
            (1, 5, Some(6), get(1, Some(1))),
        ]);
        assert!(!check(&stale, LIMIT).linearizable);
    }
}
