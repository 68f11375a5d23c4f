//! A recorded, bounded mixed load on the store for the linearizability proof
//! (`scenarios/proof.rs`).
//!
//! [`Load`] runs `clients` closed-loop clients (each one op at a time, paced so that together
//! they send about `rate` ops/s): some pinned to one server, the rest cluster-wide (each op to
//! a random server). Every op is create, CAS update, delete, get or list on the ConfigMaps
//! `k0..k{keys-1}` of namespace `proof`; each write writes a value no other write uses (data
//! `v`), so a read names the write it saw. Invocation and return take numbers from one shared
//! counter (real-time order); an op without a definite answer (timeout, broken connection,
//! UNAVAILABLE, INTERNAL, ...) is recorded with outcome Unknown: it may or may not have
//! happened. Definite failures are NotFound, AlreadyExists and Aborted (resourceVersion
//! conflict). The history goes to `berth_testkit::linearizability::check`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_proto::pb::api_client::ApiClient;
use berth_proto::pb::{
    CreateRequest, DeleteRequest, GetRequest, ListRequest, ObjectKey, UpdateRequest,
};
use berth_testkit::linearizability::{Key, Op, Outcome, Recorded, Value};
use berth_tls::ClientTls;
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;

use super::cluster::api_client;

/// The namespace the load writes in (create it first).
pub const NAMESPACE: &str = "proof";
/// How long a client waits for an answer before counting the op as unknown.
pub const OP_TIMEOUT: Duration = Duration::from_secs(4);

/// What every client shares.
struct Shared {
    seq: AtomicU64,
    /// (epoch, op): the epoch whose keys the op touches (see [`Load::start`]).
    history: Mutex<Vec<(usize, Recorded)>>,
    /// resourceVersion of every value acknowledged or read (value -> rv).
    rvs: Mutex<BTreeMap<Value, u64>>,
    /// (invoked, returned, revision, what it listed) of every successful list.
    list_revisions: Mutex<Vec<ListSeen>>,
    next_value: AtomicU64,
    stop: AtomicBool,
}

/// A running load.
pub struct Load {
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    rt: tokio::runtime::Handle,
    pub started: Instant,
    keys: Key,
}

/// Who a client talks to.
#[derive(Debug, Clone)]
enum Target {
    Pinned(String),
    Any(Vec<String>),
}

/// The object for key `k` holding value `v` (`rv`: the resourceVersion a CAS expects).
fn object(k: Key, v: Value, rv: Option<u64>) -> Vec<u8> {
    let mut meta = serde_json::json!({"name": format!("k{k}"), "namespace": NAMESPACE});
    if let Some(rv) = rv {
        meta["resourceVersion"] = serde_json::Value::String(rv.to_string());
    }
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta,
        "data": {"v": v.to_string()},
    })
    .to_string()
    .into_bytes()
}

/// (key, value, resourceVersion) of a returned ConfigMap of the load.
pub fn decode(bytes: &[u8]) -> Option<(Key, Value, u64)> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let key = v["metadata"]["name"]
        .as_str()?
        .strip_prefix('k')?
        .parse()
        .ok()?;
    let value = v["data"]["v"].as_str()?.parse().ok()?;
    let rv = match &v["metadata"]["resourceVersion"] {
        serde_json::Value::String(s) => s.parse().ok()?,
        serde_json::Value::Number(n) => n.as_u64()?,
        _ => return None,
    };
    Some((key, value, rv))
}

fn key_of(k: Key) -> ObjectKey {
    ObjectKey {
        kind: "ConfigMap".into(),
        namespace: NAMESPACE.into(),
        name: format!("k{k}"),
    }
}

/// A successful list: (invoked, returned, revision, key -> value).
pub type ListSeen = (u64, u64, u64, BTreeMap<Key, Value>);

/// A write's outcome from a gRPC status: definite failures, else unknown.
fn write_outcome(s: &tonic::Status) -> Outcome {
    match s.code() {
        tonic::Code::NotFound => Outcome::NotFound,
        tonic::Code::AlreadyExists => Outcome::Exists,
        tonic::Code::Aborted => Outcome::Conflict,
        _ => Outcome::Unknown,
    }
}

/// The server said it proposed nothing (`RaftError::NotLeader` / `Dropped`, see
/// apiserver/src/raft/mod.rs): the write certainly did not happen and is left out of the
/// history (a write that never happened constrains nothing). Transport errors, timeouts and
/// everything else stay unknown.
fn certainly_not_applied(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::Unavailable
        && (s
            .message()
            .starts_with("this server is not the raft leader")
            || s.message().starts_with("the proposal was dropped"))
}

struct Client {
    id: usize,
    target: Target,
    tls: ClientTls,
    conns: BTreeMap<String, ApiClient<Channel>>,
    /// What this client last saw of each key: (value, resourceVersion).
    seen: BTreeMap<Key, (Value, u64)>,
    keys: Key,
    /// Each epoch uses its own `keys` keys, so a long run is checked epoch by epoch.
    epoch_len: Option<Duration>,
    started: Instant,
    epoch: usize,
    rng: rand::rngs::StdRng,
    shared: Arc<Shared>,
}

impl Client {
    fn pick(&mut self) -> String {
        match &self.target {
            Target::Pinned(a) => a.clone(),
            Target::Any(all) => all[self.rng.gen_range(0..all.len())].clone(),
        }
    }

    async fn conn(&mut self, addr: &str) -> Result<ApiClient<Channel>, String> {
        if let Some(c) = self.conns.get(addr) {
            return Ok(c.clone());
        }
        let c = api_client(addr, &self.tls).await?;
        self.conns.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    fn record(&self, invoked: u64, returned: Option<u64>, op: Op) {
        self.shared
            .history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((
                self.epoch,
                Recorded {
                    client: self.id,
                    invoked,
                    returned,
                    op,
                },
            ));
    }

    fn note_rv(&mut self, k: Key, v: Value, rv: u64) {
        self.seen.insert(k, (v, rv));
        self.shared
            .rvs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(v, rv);
    }

    /// Run one random op against `addr`.
    async fn one(&mut self) {
        let addr = self.pick();
        self.epoch = self.epoch_len.map_or(0, |l| {
            (self.started.elapsed().as_secs_f64() / l.as_secs_f64()) as usize
        });
        let k: Key = self.epoch as Key * self.keys + self.rng.gen_range(0..self.keys);
        let dice = self.rng.gen_range(0..100);
        let value = self.shared.next_value.fetch_add(1, Ordering::SeqCst);
        let mut c = match tokio::time::timeout(Duration::from_secs(2), self.conn(&addr)).await {
            Ok(Ok(c)) => c,
            // Not connected: nothing was sent, nothing to record.
            _ => {
                self.conns.remove(&addr);
                tokio::time::sleep(Duration::from_millis(50)).await;
                return;
            }
        };
        let shared = self.shared.clone();
        let seq = &shared.seq;
        let invoked = seq.fetch_add(1, Ordering::SeqCst);
        // (op, answered, connection broken)
        let (op, answered, broken) = match dice {
            0..15 => {
                let r = tokio::time::timeout(
                    OP_TIMEOUT,
                    c.create(CreateRequest {
                        object: object(k, value, None),
                        dry_run: false,
                    }),
                )
                .await;
                match r {
                    Ok(Ok(resp)) => {
                        if let Some((_, _, rv)) = decode(&resp.get_ref().object) {
                            self.note_rv(k, value, rv);
                        }
                        (
                            Op::Create {
                                key: k,
                                value,
                                out: Outcome::Ok,
                            },
                            true,
                            false,
                        )
                    }
                    Ok(Err(s)) => {
                        let out = write_outcome(&s);
                        (
                            Op::Create { key: k, value, out },
                            out != Outcome::Unknown,
                            out == Outcome::Unknown,
                        )
                    }
                    Err(_) => (
                        Op::Create {
                            key: k,
                            value,
                            out: Outcome::Unknown,
                        },
                        false,
                        true,
                    ),
                }
            }
            15..50 => {
                // CAS on what this client last saw of the key (a read if it saw nothing).
                let Some(&(expect, rv)) = self.seen.get(&k) else {
                    return self.read(c, k, invoked).await;
                };
                let r = tokio::time::timeout(
                    OP_TIMEOUT,
                    c.update(UpdateRequest {
                        object: object(k, value, Some(rv)),
                        dry_run: false,
                    }),
                )
                .await;
                let op = |out| Op::Update {
                    key: k,
                    value,
                    expect,
                    out,
                };
                match r {
                    Ok(Ok(resp)) => {
                        if let Some((_, _, rv)) = decode(&resp.get_ref().object) {
                            self.note_rv(k, value, rv);
                        }
                        (op(Outcome::Ok), true, false)
                    }
                    Ok(Err(s)) if certainly_not_applied(&s) => {
                        self.conns.remove(&addr);
                        return;
                    }
                    Ok(Err(s)) => {
                        let out = write_outcome(&s);
                        if out != Outcome::Unknown {
                            self.seen.remove(&k);
                        }
                        (op(out), out != Outcome::Unknown, out == Outcome::Unknown)
                    }
                    Err(_) => (op(Outcome::Unknown), false, true),
                }
            }
            50..60 => {
                let Some(&(expect, rv)) = self.seen.get(&k) else {
                    return self.read(c, k, invoked).await;
                };
                let r = tokio::time::timeout(
                    OP_TIMEOUT,
                    c.delete(DeleteRequest {
                        key: Some(key_of(k)),
                        resource_version: rv,
                        grace_period_seconds: None,
                    }),
                )
                .await;
                let op = |out| Op::Delete {
                    key: k,
                    expect: Some(expect),
                    out,
                };
                match r {
                    Ok(Ok(_)) => {
                        self.seen.remove(&k);
                        (op(Outcome::Ok), true, false)
                    }
                    Ok(Err(s)) if certainly_not_applied(&s) => {
                        self.conns.remove(&addr);
                        return;
                    }
                    Ok(Err(s)) => {
                        let out = write_outcome(&s);
                        if out != Outcome::Unknown {
                            self.seen.remove(&k);
                        }
                        (op(out), out != Outcome::Unknown, out == Outcome::Unknown)
                    }
                    Err(_) => (op(Outcome::Unknown), false, true),
                }
            }
            60..80 => return self.read(c, k, invoked).await,
            _ => {
                let r = tokio::time::timeout(
                    OP_TIMEOUT,
                    c.list(ListRequest {
                        kind: "ConfigMap".into(),
                        namespace: NAMESPACE.into(),
                        label_selector: String::new(),
                    }),
                )
                .await;
                match r {
                    Ok(Ok(resp)) => {
                        let resp = resp.into_inner();
                        let mut out = BTreeMap::new();
                        for o in &resp.objects {
                            if let Some((k, v, rv)) = decode(o) {
                                out.insert(k, v);
                                self.note_rv(k, v, rv);
                            }
                        }
                        let returned = seq.fetch_add(1, Ordering::SeqCst);
                        self.shared
                            .list_revisions
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((invoked, returned, resp.revision, out.clone()));
                        self.record(invoked, Some(returned), Op::List { out });
                        return;
                    }
                    _ => (
                        Op::List {
                            out: BTreeMap::new(),
                        },
                        false,
                        true,
                    ),
                }
            }
        };
        let returned = answered.then(|| seq.fetch_add(1, Ordering::SeqCst));
        if broken {
            // The connection may be what broke: dial again next time.
            self.conns.remove(&addr);
        }
        self.record(invoked, returned, op);
    }
}

impl Client {
    /// Get key `k` (invoked at `invoked`) and record it.
    async fn read(&mut self, mut c: ApiClient<Channel>, k: Key, invoked: u64) {
        let r = tokio::time::timeout(
            OP_TIMEOUT,
            c.get(GetRequest {
                key: Some(key_of(k)),
            }),
        )
        .await;
        let returned = || self.shared.seq.fetch_add(1, Ordering::SeqCst);
        let out = match r {
            Ok(Ok(resp)) => match decode(&resp.get_ref().object) {
                Some((_, v, rv)) => {
                    let at = returned();
                    self.note_rv(k, v, rv);
                    Some((Some(v), at))
                }
                None => None,
            },
            Ok(Err(s)) if s.code() == tonic::Code::NotFound => {
                let at = returned();
                self.seen.remove(&k);
                Some((None, at))
            }
            // No answer: a read nobody saw constrains nothing (not recorded).
            _ => None,
        };
        if let Some((v, at)) = out {
            self.record(invoked, Some(at), Op::Get { key: k, out: v });
        }
    }
}

impl Load {
    /// Start `clients` clients (`pinned` of them pinned to the servers in turn, the rest
    /// cluster-wide) at about `rate` ops/s in all over `keys` keys.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        rt: &tokio::runtime::Runtime,
        addrs: Vec<String>,
        tls: ClientTls,
        clients: usize,
        pinned: usize,
        rate: u32,
        keys: Key,
        epoch_len: Option<Duration>,
        seed: u64,
    ) -> Load {
        let shared = Arc::new(Shared {
            seq: AtomicU64::new(1),
            history: Mutex::new(Vec::new()),
            rvs: Mutex::new(BTreeMap::new()),
            list_revisions: Mutex::new(Vec::new()),
            next_value: AtomicU64::new(1),
            stop: AtomicBool::new(false),
        });
        let period = Duration::from_secs_f64(clients as f64 / rate.max(1) as f64);
        let tasks = (0..clients)
            .map(|id| {
                let target = if id < pinned {
                    Target::Pinned(addrs[id % addrs.len()].clone())
                } else {
                    Target::Any(addrs.clone())
                };
                let mut client = Client {
                    id,
                    target,
                    tls: tls.clone(),
                    conns: BTreeMap::new(),
                    seen: BTreeMap::new(),
                    keys,
                    epoch_len,
                    started: Instant::now(),
                    epoch: 0,
                    rng: rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(id as u64 * 7919)),
                    shared: shared.clone(),
                };
                rt.spawn(async move {
                    let mut tick = tokio::time::interval(period);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    while !client.shared.stop.load(Ordering::SeqCst) {
                        tick.tick().await;
                        client.one().await;
                    }
                })
            })
            .collect();
        Load {
            shared,
            tasks,
            rt: rt.handle().clone(),
            started: Instant::now(),
            keys,
        }
    }

    /// Acknowledged writes so far.
    pub fn acked_writes(&self) -> usize {
        self.shared
            .history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, r)| r.op.outcome() == Some(Outcome::Ok))
            .count()
    }

    /// Stop the clients (each finishes its op in flight) and return what was recorded.
    pub fn finish(mut self) -> Finished {
        self.shared.stop.store(true, Ordering::SeqCst);
        for t in self.tasks.drain(..) {
            let _ = self.rt.block_on(t);
        }
        fn take<T: Default>(m: &Mutex<T>) -> T {
            std::mem::take(&mut *m.lock().unwrap_or_else(|e| e.into_inner()))
        }
        Finished {
            history: take(&self.shared.history),
            keys: self.keys,
            rvs: take(&self.shared.rvs),
            list_revisions: take(&self.shared.list_revisions),
            elapsed: self.started.elapsed(),
            next_seq: self.shared.seq.load(Ordering::SeqCst),
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// What a finished load recorded.
pub struct Finished {
    /// (epoch, op).
    pub history: Vec<(usize, Recorded)>,
    /// Keys per epoch.
    pub keys: Key,
    /// value -> resourceVersion, for every value acknowledged or read.
    pub rvs: BTreeMap<Value, u64>,
    /// (invoked, returned, revision, what it listed) of every list.
    pub list_revisions: Vec<ListSeen>,
    pub elapsed: Duration,
    /// The sequence number after the load's (for ops appended afterwards).
    pub next_seq: u64,
}

impl Finished {
    /// Lists that returned a lower revision than a list that had returned before they were
    /// invoked: the store's revision went backwards for a client.
    pub fn revision_regressions(&self) -> Vec<String> {
        let mut by_return: Vec<(u64, u64, u64)> = self
            .list_revisions
            .iter()
            .map(|l| (l.0, l.1, l.2))
            .collect();
        by_return.sort_by_key(|l| l.1);
        let prefix_max: Vec<u64> = by_return
            .iter()
            .scan(0u64, |m, l| {
                *m = (*m).max(l.2);
                Some(*m)
            })
            .collect();
        let mut out = Vec::new();
        for &(inv, _, rev, _) in &self.list_revisions {
            // The highest revision of a list that returned before `inv`.
            let idx = by_return.partition_point(|l| l.1 < inv);
            if let Some(&max) = idx.checked_sub(1).and_then(|i| prefix_max.get(i)) {
                if rev < max {
                    out.push(format!(
                        "a list invoked at #{inv} saw revision {rev} after one had seen {max}"
                    ));
                }
            }
        }
        out
    }

    /// Counts: (ops, acknowledged writes, definite write failures, unknown writes, reads).
    pub fn counts(&self) -> (usize, usize, usize, usize, usize) {
        let mut c = (self.history.len(), 0, 0, 0, 0);
        for (_, r) in &self.history {
            match r.op.outcome() {
                Some(Outcome::Ok) => c.1 += 1,
                Some(Outcome::Unknown) => c.3 += 1,
                Some(_) => c.2 += 1,
                None => c.4 += 1,
            }
        }
        c
    }
}

/// A seeded RNG for a run (the seed is printed so a run can be repeated).
pub fn rng(seed: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed)
}

impl Finished {
    /// The history of each epoch: its ops, lists cut down to the epoch's keys.
    pub fn epochs(&self) -> Vec<Vec<Recorded>> {
        let n = self.history.iter().map(|(e, _)| e + 1).max().unwrap_or(0);
        let mut out = vec![Vec::new(); n];
        for (e, r) in &self.history {
            let lo = *e as Key * self.keys;
            let mut r = r.clone();
            if let Op::List { out } = &mut r.op {
                out.retain(|k, _| (lo..lo + self.keys).contains(k));
            }
            out[*e].push(r);
        }
        out
    }

    /// Append an op run after the load (final reads), numbered after everything recorded.
    pub fn append(&mut self, epoch: usize, op: Op) {
        let invoked = self.next_seq;
        self.next_seq += 2;
        self.history.push((
            epoch,
            Recorded {
                client: usize::MAX,
                invoked,
                returned: Some(invoked + 1),
                op,
            },
        ));
    }
}

/// Lists that were not one consistent cut: replaying `changes` (revision -> (type, key,
/// value), every change of the load's keys as the watch followers recorded them, checked on
/// their own) up to a list's revision must give exactly what the list returned.
/// Only lists at revisions in `[from, until]` (the followers' unbroken coverage) are checked.
pub fn torn_lists(
    lists: &[ListSeen],
    changes: &BTreeMap<u64, (i32, Key, Value)>,
    from: u64,
    until: u64,
) -> Vec<String> {
    let deleted = berth_proto::pb::EventType::Deleted as i32;
    let mut sorted: Vec<&ListSeen> = lists
        .iter()
        .filter(|l| l.2 >= from && l.2 <= until)
        .collect();
    sorted.sort_by_key(|l| l.2);
    let mut state: BTreeMap<Key, Value> = BTreeMap::new();
    let mut it = changes.range(from + 1..).peekable();
    let mut out = Vec::new();
    for (inv, _, rev, seen) in sorted {
        while let Some((r, (t, k, v))) = it.peek() {
            if *r > rev {
                break;
            }
            if *t == deleted {
                state.remove(k);
            } else {
                state.insert(*k, *v);
            }
            it.next();
        }
        if *seen != state {
            out.push(format!(
                "the list invoked at #{inv} at revision {rev} returned {seen:?}, the state at that revision was {state:?}"
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_that_mixes_two_revisions_is_not_one_cut() {
        let added = berth_proto::pb::EventType::Added as i32;
        let modified = berth_proto::pb::EventType::Modified as i32;
        // rev 11: k0=1, rev 12: k1=2, rev 13: k0=3.
        let changes: BTreeMap<u64, (i32, Key, Value)> = [
            (11, (added, 0, 1)),
            (12, (added, 1, 2)),
            (13, (modified, 0, 3)),
        ]
        .into();
        let list = |rev, items: &[(Key, Value)]| (1, 2, rev, items.iter().copied().collect());
        let good = vec![list(12, &[(0, 1), (1, 2)]), list(13, &[(0, 3), (1, 2)])];
        assert!(torn_lists(&good, &changes, 10, 13).is_empty());
        // At revision 12 k0 was still 1: a list saying 3 there mixes two moments.
        let bad = vec![list(12, &[(0, 3), (1, 2)])];
        assert_eq!(torn_lists(&bad, &changes, 10, 13).len(), 1);
    }
}
