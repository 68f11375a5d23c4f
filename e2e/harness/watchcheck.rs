//! Watch guarantees under faults (`scenarios/proof.rs`): watchers that follow the load's
//! ConfigMaps across server failures, and the checks on what they received.
//!
//! A [`Follower`] watches namespace `proof` from a revision on one server; when the stream
//! ends, fails or stays silent for 3 s (server killed, partitioned member expired by a
//! snapshot, a connection a partition broke silently; bookmarks come every 200 ms) it resumes
//! from the last revision it processed (events and bookmarks) on the NEXT server. Only when
//! every server answers Expired does it relist (a new segment; counted). Everything is
//! recorded, and [`check`] proves:
//! - ordered and unique: revisions strictly increase along each follower's stream, across
//!   resumes;
//! - atomic: all followers agree on what each revision was (type, key, value): no revision is
//!   delivered split or with different content;
//! - reliable: within each covered range, a follower got every revision any follower got and
//!   every acknowledged write of the load (no gap);
//! - acknowledged writes appear with the resourceVersion their writer was given.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_proto::pb::{EventType, ListRequest, WatchRequest};
use berth_testkit::linearizability::{Key, Value};
use berth_tls::ClientTls;

use super::cluster::api_client;
use super::history::{decode, NAMESPACE};

/// One delivered change: (type, key, value).
pub type Change = (i32, Key, Value);

#[derive(Debug, Clone, Default)]
pub struct Segment {
    /// Exclusive start revision.
    pub from: u64,
    /// Last revision processed (events and bookmarks).
    pub to: u64,
    pub events: Vec<(u64, Change)>,
}

#[derive(Debug, Default)]
pub struct Record {
    pub segments: Vec<Segment>,
    pub resumes: usize,
    pub expired_answers: usize,
    pub relists: usize,
}

pub struct Follower {
    pub record: Arc<Mutex<Record>>,
    task: tokio::task::JoinHandle<()>,
}

/// The revision a list of the load's namespace is consistent at (on `addr`).
pub async fn list_revision(addr: &str, tls: &ClientTls) -> Result<u64, String> {
    let mut c = api_client(addr, tls).await?;
    let r = c
        .list(ListRequest {
            kind: "ConfigMap".into(),
            namespace: NAMESPACE.into(),
            label_selector: String::new(),
        })
        .await
        .map_err(|e| e.to_string())?;
    Ok(r.into_inner().revision)
}

fn lock(r: &Mutex<Record>) -> std::sync::MutexGuard<'_, Record> {
    r.lock().unwrap_or_else(|e| e.into_inner())
}

impl Follower {
    /// Follow from `from` (exclusive), starting on `addrs[first]`.
    pub fn start(
        rt: &tokio::runtime::Runtime,
        addrs: Vec<String>,
        first: usize,
        tls: ClientTls,
        from: u64,
    ) -> Follower {
        let record = Arc::new(Mutex::new(Record {
            segments: vec![Segment {
                from,
                to: from,
                events: vec![],
            }],
            ..Record::default()
        }));
        let rec = record.clone();
        let task = rt.spawn(async move {
            let mut idx = first;
            let mut last = from;
            let mut expired_in_a_row = 0usize;
            loop {
                let addr = addrs[idx % addrs.len()].clone();
                let mut expired = false;
                if let Ok(Ok(mut client)) =
                    tokio::time::timeout(Duration::from_secs(2), api_client(&addr, &tls)).await
                {
                    let req = WatchRequest {
                        kind: "ConfigMap".into(),
                        namespace: NAMESPACE.into(),
                        label_selector: String::new(),
                        from_revision: last,
                    };
                    match client.watch(req).await {
                        Ok(resp) => {
                            let mut stream = resp.into_inner();
                            loop {
                                // Bookmarks come every 200 ms: a stream silent for 3 s is dead
                                // (e.g. its TCP connection was cut by a partition and its reset
                                // dropped), so resume elsewhere, as a client with keepalives would.
                                let next =
                                    tokio::time::timeout(Duration::from_secs(3), stream.message())
                                        .await;
                                let Ok(next) = next else { break };
                                match next {
                                    Ok(Some(ev)) => {
                                        expired_in_a_row = 0;
                                        let mut r = lock(&rec);
                                        let seg = r.segments.last_mut().expect("a segment");
                                        if ev.r#type != EventType::Bookmark as i32 {
                                            let (k, v) = decode(&ev.object)
                                                .map(|(k, v, _)| (k, v))
                                                .unwrap_or((u32::MAX, 0));
                                            seg.events.push((ev.revision, (ev.r#type, k, v)));
                                        }
                                        seg.to = seg.to.max(ev.revision);
                                        last = last.max(ev.revision);
                                    }
                                    Ok(None) => break,
                                    Err(s) => {
                                        expired = s.code() == tonic::Code::OutOfRange;
                                        break;
                                    }
                                }
                            }
                        }
                        Err(s) => expired = s.code() == tonic::Code::OutOfRange,
                    }
                }
                {
                    let mut r = lock(&rec);
                    r.resumes += 1;
                    if expired {
                        r.expired_answers += 1;
                    }
                }
                expired_in_a_row = if expired { expired_in_a_row + 1 } else { 0 };
                idx += 1;
                if expired_in_a_row >= addrs.len() {
                    // Nobody keeps `last` any more: relist and start a new segment.
                    let addr = addrs[idx % addrs.len()].clone();
                    if let Ok(rev) = list_revision(&addr, &tls).await {
                        let mut r = lock(&rec);
                        r.relists += 1;
                        r.segments.push(Segment {
                            from: rev,
                            to: rev,
                            events: vec![],
                        });
                        last = rev;
                        expired_in_a_row = 0;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Follower { record, task }
    }

    /// Stop following and return what was recorded.
    pub fn take(&self) -> Record {
        self.task.abort();
        std::mem::take(&mut *lock(&self.record))
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What [`check`] found.
#[derive(Debug, Default)]
pub struct WatchVerdict {
    pub events: usize,
    pub resumes: usize,
    pub expired_answers: usize,
    pub relists: usize,
    pub violations: Vec<String>,
}

/// Check the followers' records (see the module docs). `acked`: value -> resourceVersion of
/// every acknowledged create/update of the load.
pub fn check(records: &[Record], acked: &BTreeMap<Value, u64>) -> WatchVerdict {
    let mut v = WatchVerdict::default();
    let mut truth: BTreeMap<u64, Change> = BTreeMap::new();
    for (w, r) in records.iter().enumerate() {
        v.resumes += r.resumes;
        v.expired_answers += r.expired_answers;
        v.relists += r.relists;
        let mut prev: Option<u64> = None;
        for seg in &r.segments {
            for &(rev, ch) in &seg.events {
                v.events += 1;
                if prev.is_some_and(|p| rev <= p) {
                    v.violations.push(format!(
                        "watcher {w}: revision {rev} delivered after {} (out of order or twice)",
                        prev.unwrap_or(0)
                    ));
                }
                if rev <= seg.from {
                    v.violations.push(format!(
                        "watcher {w}: revision {rev} is not after its start {}",
                        seg.from
                    ));
                }
                prev = Some(rev);
                if ch.1 == u32::MAX {
                    v.violations.push(format!(
                        "watcher {w}: revision {rev} carries an object that is not the load's"
                    ));
                }
                match truth.get(&rev) {
                    Some(t) if *t != ch => v.violations.push(format!(
                        "revision {rev}: watcher {w} got {ch:?}, another watcher got {t:?}"
                    )),
                    _ => {
                        truth.insert(rev, ch);
                    }
                }
            }
        }
    }
    // Acknowledged writes appear at the revision their writer was told.
    let by_value: BTreeMap<Value, u64> = truth
        .iter()
        .filter(|(_, c)| c.0 != EventType::Deleted as i32)
        .map(|(rev, c)| (c.2, *rev))
        .collect();
    for (w, r) in records.iter().enumerate() {
        for seg in &r.segments {
            let got: BTreeSet<u64> = seg.events.iter().map(|e| e.0).collect();
            let missing: Vec<u64> = truth
                .range(seg.from + 1..=seg.to)
                .map(|(rev, _)| *rev)
                .filter(|rev| !got.contains(rev))
                .collect();
            if !missing.is_empty() {
                v.violations.push(format!(
                    "watcher {w}: gap: {} revisions in ({}, {}] that another watcher got are missing, first {:?}",
                    missing.len(),
                    seg.from,
                    seg.to,
                    &missing[..missing.len().min(5)]
                ));
            }
            for (value, rv) in acked.range(..) {
                if *rv > seg.from && *rv <= seg.to && !got.contains(rv) {
                    v.violations.push(format!(
                        "watcher {w}: the acknowledged write of value {value} (resourceVersion {rv}) is missing from ({}, {}]",
                        seg.from, seg.to
                    ));
                }
            }
        }
    }
    for (value, rv) in acked {
        if let Some(seen) = by_value.get(value) {
            if seen != rv {
                v.violations.push(format!(
                    "value {value} was acknowledged at resourceVersion {rv} but watched at {seen}"
                ));
            }
        }
    }
    v
}
