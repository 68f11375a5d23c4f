//! The raft log on disk: an append-only, segmented write-ahead log (etcd's WAL, TiKV's
//! raft-engine), separate from the state machine's sled database.
//!
//! Every Ready's new entries and hard state become ONE record appended to the current segment
//! and made durable by ONE `fdatasync` (group commit), run on the blocking pool while the raft
//! task applies already committed entries. The log itself is also kept in memory (it is
//! bounded by the compaction threshold: the node snapshots and compacts every N entries), so
//! `entries()`/`term()` never touch the disk.
//!
//! Layout of the log directory (`<data dir>/raft-wal` for `berth server`):
//! - `FORMAT`: `berth-raft-wal 1`; any other content is refused with a clear error.
//! - `<seq, 16 hex digits>.wal`: segments, replayed in `seq` order. A new segment is started
//!   at every open and when the current one passes [`SEGMENT_BYTES`]; each starts with a
//!   checkpoint record (hard state + compaction point) so it stands alone once older segments
//!   are removed. Compaction removes whole segments whose entries are all compacted.
//! - `snap-<index, 20 digits>.snap`: snapshots (see [`SnapshotFiles`]).
//!
//! Record: `len: u32 LE | crc32(payload): u32 LE | payload`, payload = `kind: u8 | body`.
//! A record that is cut short or fails its checksum at the tail of the LAST segment is a
//! write torn by a crash before its fsync returned (so never acknowledged): the segment is
//! truncated there. The same anywhere else is corruption and refuses to start.

// rust-protobuf messages are built by assigning fields of a default value.
#![allow(clippy::field_reassign_with_default)]

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use protobuf::Message as _;
use raft::eraftpb::{Entry, HardState, Snapshot, SnapshotMetadata};

use super::RaftError;

/// A segment is closed and a new one started past this size.
pub(crate) const SEGMENT_BYTES: u64 = 64 << 20;
const FORMAT_FILE: &str = "FORMAT";
const FORMAT: &str = "berth-raft-wal 1\n";
const HEADER: usize = 8;
/// A record longer than this is treated as garbage (a torn length).
const MAX_RECORD: usize = 1 << 30;

const KIND_ENTRIES: u8 = 1;
const KIND_HARD_STATE: u8 = 2;
const KIND_COMPACT: u8 = 3;
const KIND_RESET: u8 = 4;
const KIND_CHECKPOINT: u8 = 5;

fn corrupt(what: impl std::fmt::Display) -> RaftError {
    RaftError::Corrupt(what.to_string())
}

fn io_err(path: &Path, what: &str, e: std::io::Error) -> RaftError {
    RaftError::Corrupt(format!("{what} {}: {e}", path.display()))
}

fn encode_pb<M: protobuf::Message>(m: &M) -> Result<Vec<u8>, RaftError> {
    m.write_to_bytes()
        .map_err(|e| corrupt(format!("encode: {e}")))
}

fn push_record(buf: &mut Vec<u8>, payload: &[u8]) {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    buf.extend_from_slice(payload);
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 8)
        .and_then(|s| <[u8; 8]>::try_from(s).ok())
        .map(u64::from_le_bytes)
}

fn segment_name(seq: u64) -> String {
    format!("{seq:016x}.wal")
}

fn fsync_dir(dir: &Path) -> Result<(), RaftError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, "fsync directory", e))
}

struct Segment {
    seq: u64,
    path: PathBuf,
    /// Highest entry index written into it (0: none).
    max_index: u64,
}

/// What a background sync writes; returned to [`Wal::finish_sync`].
pub(crate) struct SyncJob {
    file: File,
    path: PathBuf,
    size: u64,
    buf: Vec<u8>,
    fsync: bool,
    /// Start this segment (seq, path, checkpoint record) after the write.
    rotate: Option<(u64, PathBuf, Vec<u8>)>,
    dir: PathBuf,
    remove: Vec<PathBuf>,
}

/// The outcome of a [`SyncJob`].
pub(crate) struct SyncDone {
    file: File,
    size: u64,
    rotated: Option<(u64, PathBuf)>,
}

impl SyncJob {
    /// Write, fsync, rotate, drop compacted segments (blocking; run off the raft task).
    pub(crate) fn run(mut self) -> Result<SyncDone, RaftError> {
        if !self.buf.is_empty() {
            self.file
                .write_all(&self.buf)
                .map_err(|e| io_err(&self.path, "write raft log segment", e))?;
            self.size += self.buf.len() as u64;
        }
        if self.fsync || self.rotate.is_some() {
            self.file
                .sync_data()
                .map_err(|e| io_err(&self.path, "fsync raft log segment", e))?;
        }
        let mut rotated = None;
        if let Some((seq, path, checkpoint)) = self.rotate.take() {
            let mut file = create_segment(&path, &checkpoint)?;
            fsync_dir(&self.dir)?;
            file.flush()
                .map_err(|e| io_err(&path, "write raft log segment", e))?;
            self.file = file;
            self.size = checkpoint.len() as u64;
            rotated = Some((seq, path));
        }
        let removed = !self.remove.is_empty();
        for p in &self.remove {
            if let Err(e) = std::fs::remove_file(p) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    return Err(io_err(p, "remove compacted raft log segment", e));
                }
            }
        }
        if removed {
            fsync_dir(&self.dir)?;
        }
        Ok(SyncDone {
            file: self.file,
            size: self.size,
            rotated,
        })
    }
}

fn create_segment(path: &Path, checkpoint: &[u8]) -> Result<File, RaftError> {
    let mut file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(path)
        .map_err(|e| io_err(path, "create raft log segment", e))?;
    file.write_all(checkpoint)
        .map_err(|e| io_err(path, "write raft log segment", e))?;
    file.sync_all()
        .map_err(|e| io_err(path, "fsync raft log segment", e))?;
    Ok(file)
}

/// The raft log and hard state: in memory, and (unless `dir` is None, for tests) in segment
/// files. Only the raft task uses it.
pub(crate) struct Wal {
    dir: Option<PathBuf>,
    /// The current segment's file (None while a sync job holds it).
    file: Option<File>,
    size: u64,
    segments: Vec<Segment>,
    /// Records not yet handed to a sync job.
    pending: Vec<u8>,
    /// Remove closed segments whose entries are all at or below this index.
    compacted_upto: u64,
    truncated: (u64, u64),
    entries: VecDeque<Entry>,
    hard_state: HardState,
}

/// The state replayed from the segments.
struct Replayed {
    truncated: (u64, u64),
    entries: BTreeMap<u64, Entry>,
    hard_state: HardState,
}

impl Replayed {
    fn apply(&mut self, payload: &[u8]) -> Result<u64, String> {
        let (&kind, body) = payload.split_first().ok_or("empty record")?;
        let pair = |b: &[u8]| -> Result<(u64, u64), String> {
            Ok((
                u64_at(b, 0).ok_or("short record")?,
                u64_at(b, 8).ok_or("short record")?,
            ))
        };
        let mut max_index = 0;
        match kind {
            KIND_ENTRIES => {
                let mut rest = body;
                let mut first = true;
                while !rest.is_empty() {
                    let len = rest
                        .get(..4)
                        .and_then(|s| <[u8; 4]>::try_from(s).ok())
                        .map(u32::from_le_bytes)
                        .ok_or("short entry length")? as usize;
                    let bytes = rest.get(4..4 + len).ok_or("short entry")?;
                    rest = &rest[4 + len..];
                    let e = Entry::parse_from_bytes(bytes).map_err(|e| e.to_string())?;
                    if first {
                        // A new leader's entries replace the conflicting suffix.
                        let _ = self.entries.split_off(&e.index);
                        first = false;
                    }
                    max_index = max_index.max(e.index);
                    self.entries.insert(e.index, e);
                }
            }
            KIND_HARD_STATE => {
                self.hard_state = HardState::parse_from_bytes(body).map_err(|e| e.to_string())?;
            }
            KIND_COMPACT => {
                let (index, term) = pair(body)?;
                self.entries = self.entries.split_off(&(index + 1));
                self.truncated = (index, term);
            }
            KIND_RESET => {
                self.truncated = pair(body)?;
                self.entries.clear();
            }
            KIND_CHECKPOINT => {
                let (index, term) = pair(body)?;
                if index >= self.truncated.0 {
                    self.entries = self.entries.split_off(&(index + 1));
                    self.truncated = (index, term);
                }
                self.hard_state =
                    HardState::parse_from_bytes(&body[16..]).map_err(|e| e.to_string())?;
            }
            other => return Err(format!("unknown record kind {other}")),
        }
        Ok(max_index)
    }
}

/// Read one segment's valid records: (payloads, valid length, whether it ended torn).
fn read_segment(path: &Path) -> Result<(Vec<Vec<u8>>, u64, bool), RaftError> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(|e| io_err(path, "read raft log segment", e))?;
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < data.len() {
        let Some(head) = data.get(at..at + HEADER) else {
            return Ok((out, at as u64, true));
        };
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if len == 0 || len > MAX_RECORD {
            return Ok((out, at as u64, true));
        }
        let Some(payload) = data.get(at + HEADER..at + HEADER + len) else {
            return Ok((out, at as u64, true));
        };
        if crc32fast::hash(payload) != crc {
            return Ok((out, at as u64, true));
        }
        out.push(payload.to_vec());
        at += HEADER + len;
    }
    Ok((out, at as u64, false))
}

impl Wal {
    /// An in-memory log (nothing survives the process; for tests).
    pub(crate) fn in_memory() -> Wal {
        Wal {
            dir: None,
            file: None,
            size: 0,
            segments: Vec::new(),
            pending: Vec::new(),
            compacted_upto: 0,
            truncated: (0, 0),
            entries: VecDeque::new(),
            hard_state: HardState::default(),
        }
    }

    /// Whether `dir` holds a raft log (its FORMAT file).
    pub(crate) fn exists(dir: &Path) -> bool {
        dir.join(FORMAT_FILE).exists()
    }

    /// Open the log in `dir` (created if missing), replaying every segment; a torn record at
    /// the tail of the last one is cut off. Always continues in a new segment.
    pub(crate) fn open(dir: &Path) -> Result<Wal, RaftError> {
        let format_path = dir.join(FORMAT_FILE);
        if !format_path.exists() {
            std::fs::create_dir_all(dir)
                .map_err(|e| io_err(dir, "create raft log directory", e))?;
            let tmp = dir.join("FORMAT.tmp");
            std::fs::write(&tmp, FORMAT)
                .and_then(|()| File::open(&tmp)?.sync_all())
                .map_err(|e| io_err(&tmp, "write", e))?;
            std::fs::rename(&tmp, &format_path).map_err(|e| io_err(&format_path, "write", e))?;
            fsync_dir(dir)?;
        }
        let format =
            std::fs::read_to_string(&format_path).map_err(|e| io_err(&format_path, "read", e))?;
        if format != FORMAT {
            return Err(RaftError::Config(format!(
                "{} says {:?}: the raft log in {} was written by another version of Berth \
                 (this one reads {:?}); run the version that wrote it, or move the data \
                 directory aside and join this server again as a new member (berth server \
                 --join)",
                format_path.display(),
                format.trim(),
                dir.display(),
                FORMAT.trim()
            )));
        }
        let mut seqs: Vec<u64> = Vec::new();
        for ent in std::fs::read_dir(dir).map_err(|e| io_err(dir, "list", e))? {
            let ent = ent.map_err(|e| io_err(dir, "list", e))?;
            let name = ent.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(hex) = name.strip_suffix(".wal") {
                if let Ok(seq) = u64::from_str_radix(hex, 16) {
                    seqs.push(seq);
                }
            }
        }
        seqs.sort_unstable();
        let mut st = Replayed {
            truncated: (0, 0),
            entries: BTreeMap::new(),
            hard_state: HardState::default(),
        };
        let mut segments = Vec::new();
        for (i, seq) in seqs.iter().enumerate() {
            let path = dir.join(segment_name(*seq));
            let (records, valid, torn) = read_segment(&path)?;
            let last = i + 1 == seqs.len();
            if torn {
                if !last {
                    return Err(corrupt(format!(
                        "raft log segment {} is damaged at byte {valid} and is not the last \
                         one (not a torn write); move the data directory aside and join this \
                         server again as a new member (berth server --join)",
                        path.display()
                    )));
                }
                tracing::warn!(segment = %path.display(), at = valid, "raft log: cutting off a write torn by a crash (it was never acknowledged)");
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| io_err(&path, "open", e))?;
                f.set_len(valid)
                    .and_then(|()| f.sync_all())
                    .map_err(|e| io_err(&path, "truncate torn tail of", e))?;
            }
            let mut max_index = 0;
            for (n, r) in records.iter().enumerate() {
                let m = st.apply(r).map_err(|e| {
                    corrupt(format!(
                        "raft log segment {} record {n}: {e}",
                        path.display()
                    ))
                })?;
                max_index = max_index.max(m);
            }
            segments.push(Segment {
                seq: *seq,
                path,
                max_index,
            });
        }
        let Replayed {
            truncated,
            entries: map,
            hard_state,
        } = st;
        let mut entries = VecDeque::with_capacity(map.len());
        for (index, e) in map.range(truncated.0 + 1..) {
            if *index != truncated.0 + 1 + entries.len() as u64 {
                return Err(corrupt(format!(
                    "raft log in {} misses entry {} (compacted up to {})",
                    dir.display(),
                    truncated.0 + 1 + entries.len() as u64,
                    truncated.0
                )));
            }
            entries.push_back(e.clone());
        }
        let mut wal = Wal {
            dir: Some(dir.to_path_buf()),
            file: None,
            size: 0,
            segments,
            pending: Vec::new(),
            compacted_upto: 0,
            truncated,
            entries,
            hard_state,
        };
        let seq = wal.segments.last().map_or(1, |s| s.seq + 1);
        let path = dir.join(segment_name(seq));
        let checkpoint = wal.checkpoint()?;
        wal.file = Some(create_segment(&path, &checkpoint)?);
        fsync_dir(dir)?;
        wal.size = checkpoint.len() as u64;
        wal.segments.push(Segment {
            seq,
            path,
            max_index: 0,
        });
        Ok(wal)
    }

    fn checkpoint(&self) -> Result<Vec<u8>, RaftError> {
        let mut payload = vec![KIND_CHECKPOINT];
        payload.extend_from_slice(&self.truncated.0.to_le_bytes());
        payload.extend_from_slice(&self.truncated.1.to_le_bytes());
        payload.extend_from_slice(&encode_pb(&self.hard_state)?);
        let mut rec = Vec::with_capacity(payload.len() + HEADER);
        push_record(&mut rec, &payload);
        Ok(rec)
    }

    pub(crate) fn truncated(&self) -> (u64, u64) {
        self.truncated
    }

    pub(crate) fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub(crate) fn last_index(&self) -> u64 {
        self.truncated.0 + self.entries.len() as u64
    }

    /// The entry at `index`, if it is in the (uncompacted) log.
    pub(crate) fn entry(&self, index: u64) -> Option<&Entry> {
        let off = index.checked_sub(self.truncated.0 + 1)?;
        self.entries.get(usize::try_from(off).ok()?)
    }

    /// Entries `[low, high)` (both inside the log), at most `max_size` bytes but at least one.
    pub(crate) fn range(&self, low: u64, high: u64, max_size: u64) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut size = 0u64;
        for i in low..high {
            let Some(e) = self.entry(i) else { break };
            size += u64::from(e.compute_size());
            if !out.is_empty() && size > max_size {
                break;
            }
            out.push(e.clone());
        }
        out
    }

    /// Append `entries` (contiguous), replacing any conflicting suffix. Durable at the next
    /// sync.
    pub(crate) fn append(&mut self, entries: &[Entry]) -> Result<(), RaftError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        if first.index <= self.truncated.0 {
            return Err(corrupt(format!(
                "append at index {} overlaps the compacted log (up to {})",
                first.index, self.truncated.0
            )));
        }
        if first.index > self.last_index() + 1 {
            return Err(corrupt(format!(
                "append at index {} leaves a gap after last index {}",
                first.index,
                self.last_index()
            )));
        }
        let keep = (first.index - self.truncated.0 - 1) as usize;
        self.entries.truncate(keep);
        let mut payload = Vec::with_capacity(
            1 + entries
                .iter()
                .map(|e| 4 + e.compute_size() as usize)
                .sum::<usize>(),
        );
        payload.push(KIND_ENTRIES);
        for e in entries {
            let len = e.compute_size();
            payload.extend_from_slice(&len.to_le_bytes());
            e.write_to_vec(&mut payload)
                .map_err(|err| corrupt(format!("encode entry: {err}")))?;
            self.entries.push_back(e.clone());
        }
        if self.dir.is_some() {
            push_record(&mut self.pending, &payload);
            let last = self.last_index();
            if let Some(seg) = self.segments.last_mut() {
                seg.max_index = seg.max_index.max(last);
            }
        }
        Ok(())
    }

    pub(crate) fn set_hard_state(&mut self, hs: &HardState) -> Result<(), RaftError> {
        if self.dir.is_some() {
            let mut payload = vec![KIND_HARD_STATE];
            payload.extend_from_slice(&encode_pb(hs)?);
            push_record(&mut self.pending, &payload);
        }
        self.hard_state = hs.clone();
        Ok(())
    }

    fn marker(&mut self, kind: u8, index: u64, term: u64) {
        if self.dir.is_some() {
            let mut payload = vec![kind];
            payload.extend_from_slice(&index.to_le_bytes());
            payload.extend_from_slice(&term.to_le_bytes());
            push_record(&mut self.pending, &payload);
        }
    }

    /// Drop entries up to and including `index` (inside the log). Segments holding only
    /// such entries are removed after the next sync made this durable.
    pub(crate) fn compact(&mut self, index: u64, term: u64) {
        if index <= self.truncated.0 {
            return;
        }
        let drop_n = ((index - self.truncated.0) as usize).min(self.entries.len());
        self.entries.drain(..drop_n);
        self.truncated = (index, term);
        self.marker(KIND_COMPACT, index, term);
        self.compacted_upto = index;
    }

    /// A snapshot at (index, term) replaces the whole log. Every older segment is removed
    /// after the next sync (which also starts a new segment).
    pub(crate) fn reset(&mut self, index: u64, term: u64) {
        self.entries.clear();
        self.truncated = (index, term);
        self.marker(KIND_RESET, index, term);
        self.compacted_upto = u64::MAX;
    }

    /// Hand the pending records to a job that writes them (and fsyncs when `fsync`). None
    /// when there is nothing to do or the log is in memory.
    pub(crate) fn start_sync(&mut self, fsync: bool) -> Result<Option<SyncJob>, RaftError> {
        let Some(dir) = self.dir.clone() else {
            self.pending.clear();
            return Ok(None);
        };
        if self.pending.is_empty() && !fsync {
            return Ok(None);
        }
        let file = self
            .file
            .take()
            .ok_or_else(|| corrupt("raft log: a sync started while another is running"))?;
        let buf = std::mem::take(&mut self.pending);
        let rotate_now =
            self.size + buf.len() as u64 > SEGMENT_BYTES || self.compacted_upto == u64::MAX;
        let rotate = if rotate_now {
            let seq = self.segments.last().map_or(1, |s| s.seq + 1);
            Some((seq, dir.join(segment_name(seq)), self.checkpoint()?))
        } else {
            None
        };
        // Closed segments whose entries are all compacted (or, after a snapshot reset, all
        // closed segments: the current one holds the reset record). Segments without
        // entries go too: the next segment's checkpoint carries their hard state and
        // compaction point.
        let upto = self.compacted_upto;
        let closed = self.segments.len().saturating_sub(1);
        let remove = self.segments[..closed]
            .iter()
            .filter(|s| s.max_index <= upto)
            .map(|s| s.path.clone())
            .collect();
        Ok(Some(SyncJob {
            file,
            path: self
                .segments
                .last()
                .map(|s| s.path.clone())
                .unwrap_or_default(),
            size: self.size,
            buf,
            fsync,
            rotate,
            dir,
            remove,
        }))
    }

    /// Take back the file of a finished [`SyncJob`].
    pub(crate) fn finish_sync(&mut self, done: SyncDone, job_removed: &[PathBuf]) {
        self.file = Some(done.file);
        self.size = done.size;
        self.segments.retain(|s| !job_removed.contains(&s.path));
        if let Some((seq, path)) = done.rotated {
            self.segments.push(Segment {
                seq,
                path,
                max_index: 0,
            });
        }
        if self.compacted_upto == u64::MAX {
            self.compacted_upto = self.truncated.0;
        }
    }

    /// Write and fsync everything pending now (blocking).
    pub(crate) fn sync_now(&mut self) -> Result<(), RaftError> {
        if let Some(job) = self.start_sync(true)? {
            let removed = job.remove.clone();
            let done = job.run()?;
            self.finish_sync(done, &removed);
        }
        Ok(())
    }

    /// Number of segment files (for tests and logs).
    #[cfg(test)]
    pub(crate) fn segment_count(&self) -> usize {
        self.segments.len()
    }
}

impl SyncJob {
    /// The segments this job removes (hand them back to [`Wal::finish_sync`]).
    pub(crate) fn removes(&self) -> Vec<PathBuf> {
        self.remove.clone()
    }
}

const SNAP_MAGIC: &[u8; 8] = b"BERTHSN1";

/// Raft snapshots as files `snap-<index>.snap` next to the log (or in memory for tests):
/// written to a temporary name, fsynced, renamed. The newest valid one is the stored
/// snapshot; older ones are removed once a newer one is in place.
pub(crate) struct SnapshotFiles {
    dir: Option<PathBuf>,
    mem: Mutex<BTreeMap<u64, Vec<u8>>>,
}

fn snap_name(index: u64) -> String {
    format!("snap-{index:020}.snap")
}

fn encode_snapshot(meta: &SnapshotMetadata, data: &[u8]) -> Result<Vec<u8>, RaftError> {
    let meta_bytes = encode_pb(meta)?;
    let mut out = Vec::with_capacity(8 + 4 + meta_bytes.len() + data.len() + 4);
    out.extend_from_slice(SNAP_MAGIC);
    out.extend_from_slice(&(meta_bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(&meta_bytes);
    out.extend_from_slice(data);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

fn decode_snapshot(bytes: &[u8], what: &str) -> Result<Snapshot, RaftError> {
    let bad = |why: &str| corrupt(format!("snapshot {what}: {why}"));
    if bytes.len() < 16 || &bytes[..8] != SNAP_MAGIC {
        return Err(bad("not a Berth snapshot"));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32fast::hash(body).to_le_bytes() != crc {
        return Err(bad("checksum mismatch"));
    }
    let meta_len = u32::from_le_bytes([body[8], body[9], body[10], body[11]]) as usize;
    let meta = body.get(12..12 + meta_len).ok_or_else(|| bad("short"))?;
    let mut snap = Snapshot::default();
    snap.set_metadata(SnapshotMetadata::parse_from_bytes(meta).map_err(|e| bad(&e.to_string()))?);
    snap.data = body[12 + meta_len..].to_vec().into();
    Ok(snap)
}

impl SnapshotFiles {
    pub(crate) fn new(dir: Option<PathBuf>) -> Arc<SnapshotFiles> {
        Arc::new(SnapshotFiles {
            dir,
            mem: Mutex::new(BTreeMap::new()),
        })
    }

    fn indexes(&self) -> Result<Vec<u64>, RaftError> {
        let Some(dir) = &self.dir else {
            return Ok(self
                .mem
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .keys()
                .copied()
                .collect());
        };
        let mut out = Vec::new();
        for ent in std::fs::read_dir(dir).map_err(|e| io_err(dir, "list", e))? {
            let ent = ent.map_err(|e| io_err(dir, "list", e))?;
            let name = ent.file_name();
            if let Some(idx) = name
                .to_str()
                .and_then(|n| n.strip_prefix("snap-"))
                .and_then(|n| n.strip_suffix(".snap"))
                .and_then(|n| n.parse::<u64>().ok())
            {
                out.push(idx);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Store a snapshot durably (blocking; fine off the raft task).
    pub(crate) fn write(&self, meta: &SnapshotMetadata, data: &[u8]) -> Result<(), RaftError> {
        let bytes = encode_snapshot(meta, data)?;
        let Some(dir) = &self.dir else {
            self.mem
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(meta.index, bytes);
            return Ok(());
        };
        let path = dir.join(snap_name(meta.index));
        let tmp = dir.join(format!("{}.tmp", snap_name(meta.index)));
        let mut f = File::create(&tmp).map_err(|e| io_err(&tmp, "create", e))?;
        f.write_all(&bytes)
            .and_then(|()| f.sync_all())
            .map_err(|e| io_err(&tmp, "write", e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io_err(&path, "rename snapshot to", e))?;
        fsync_dir(dir)
    }

    /// The snapshot at `index`.
    pub(crate) fn read(&self, index: u64) -> Result<Option<Snapshot>, RaftError> {
        let Some(dir) = &self.dir else {
            let mem = self.mem.lock().unwrap_or_else(|e| e.into_inner());
            return mem
                .get(&index)
                .map(|b| decode_snapshot(b, &format!("at {index}")))
                .transpose();
        };
        let path = dir.join(snap_name(index));
        match std::fs::read(&path) {
            Ok(b) => decode_snapshot(&b, &path.display().to_string()).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path, "read", e)),
        }
    }

    /// The metadata of the newest stored snapshot.
    pub(crate) fn latest_meta(&self) -> Result<Option<SnapshotMetadata>, RaftError> {
        match self.indexes()?.last() {
            Some(i) => Ok(self.read(*i)?.map(|s| s.get_metadata().clone())),
            None => Ok(None),
        }
    }

    /// Remove every snapshot but the one at `keep` (and stale temporaries).
    pub(crate) fn prune(&self, keep: u64) -> Result<(), RaftError> {
        let Some(dir) = &self.dir else {
            self.mem
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|i, _| *i == keep);
            return Ok(());
        };
        for i in self.indexes()? {
            if i != keep {
                let p = dir.join(snap_name(i));
                std::fs::remove_file(&p).map_err(|e| io_err(&p, "remove old snapshot", e))?;
            }
        }
        for ent in std::fs::read_dir(dir).map_err(|e| io_err(dir, "list", e))? {
            let ent = ent.map_err(|e| io_err(dir, "list", e))?;
            if ent
                .file_name()
                .to_str()
                .is_some_and(|n| n.ends_with(".snap.tmp"))
            {
                let _ = std::fs::remove_file(ent.path());
            }
        }
        Ok(())
    }

    /// Remove the snapshot at `index` alone.
    pub(crate) fn remove(&self, index: u64) -> Result<(), RaftError> {
        let Some(dir) = &self.dir else {
            self.mem
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&index);
            return Ok(());
        };
        let p = dir.join(snap_name(index));
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(io_err(&p, "remove snapshot", e))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        let mut e = Entry::default();
        e.index = index;
        e.term = term;
        e.data = format!("e{index}").into_bytes().into();
        e
    }

    fn hs(term: u64, commit: u64) -> HardState {
        let mut h = HardState::default();
        h.term = term;
        h.commit = commit;
        h
    }

    fn terms(w: &Wal) -> Vec<(u64, u64)> {
        w.range(w.truncated().0 + 1, w.last_index() + 1, u64::MAX)
            .iter()
            .map(|e| (e.index, e.term))
            .collect()
    }

    fn last_segment(dir: &Path) -> PathBuf {
        let mut segs: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "wal"))
            .collect();
        segs.sort();
        segs.pop().unwrap()
    }

    #[test]
    fn synced_entries_and_hard_state_survive_reopen_with_conflicts_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Wal::open(dir.path()).unwrap();
        w.reset(1, 1);
        w.append(&[entry(2, 1), entry(3, 1), entry(4, 1)]).unwrap();
        w.set_hard_state(&hs(1, 3)).unwrap();
        w.sync_now().unwrap();
        w.append(&[entry(3, 2)]).unwrap();
        w.set_hard_state(&hs(2, 3)).unwrap();
        w.sync_now().unwrap();
        drop(w);
        let w = Wal::open(dir.path()).unwrap();
        assert_eq!(w.truncated(), (1, 1));
        assert_eq!(terms(&w), vec![(2, 1), (3, 2)]);
        assert_eq!(w.hard_state(), &hs(2, 3));
    }

    #[test]
    fn torn_tail_is_cut_off_and_the_log_continues() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Wal::open(dir.path()).unwrap();
        w.reset(1, 1);
        w.append(&[entry(2, 1), entry(3, 1)]).unwrap();
        w.set_hard_state(&hs(1, 3)).unwrap();
        w.sync_now().unwrap();
        // A crash in the middle of the next record's write.
        w.append(&[entry(4, 1)]).unwrap();
        let job = w.start_sync(false).unwrap().unwrap();
        let full = job.buf.clone();
        drop(job);
        drop(w);
        let seg = last_segment(dir.path());
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&full[..full.len() - 3]).unwrap();
        drop(f);
        let mut w = Wal::open(dir.path()).unwrap();
        assert_eq!(terms(&w), vec![(2, 1), (3, 1)]);
        assert_eq!(w.hard_state(), &hs(1, 3));
        // The cut segment is now a middle one: a later open must not see it as damaged.
        w.append(&[entry(4, 2)]).unwrap();
        w.sync_now().unwrap();
        drop(w);
        let w = Wal::open(dir.path()).unwrap();
        assert_eq!(terms(&w), vec![(2, 1), (3, 1), (4, 2)]);
    }

    #[test]
    fn garbage_in_a_middle_segment_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Wal::open(dir.path()).unwrap();
        w.append(&[entry(1, 1)]).unwrap();
        w.sync_now().unwrap();
        drop(w);
        // The second open starts segment 2: segment 1 is a middle one from now on.
        drop(Wal::open(dir.path()).unwrap());
        let first = dir.path().join(segment_name(1));
        let mut bytes = std::fs::read(&first).unwrap();
        let n = bytes.len();
        bytes[n - 1] ^= 0xff;
        std::fs::write(&first, bytes).unwrap();
        let err = Wal::open(dir.path()).err().unwrap();
        assert!(err.to_string().contains("damaged"), "{err}");
    }

    #[test]
    fn compaction_drops_whole_segments_and_replay_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Wal::open(dir.path()).unwrap();
        w.append(&[entry(1, 1), entry(2, 1)]).unwrap();
        w.sync_now().unwrap();
        drop(w);
        // Second open: segment 2 holds entries 3..=4.
        let mut w = Wal::open(dir.path()).unwrap();
        w.append(&[entry(3, 1), entry(4, 1)]).unwrap();
        w.sync_now().unwrap();
        assert_eq!(w.segment_count(), 2);
        w.compact(2, 1);
        w.sync_now().unwrap();
        assert_eq!(
            w.segment_count(),
            1,
            "segment 1 held only compacted entries"
        );
        assert!(!dir.path().join(segment_name(1)).exists());
        drop(w);
        let w = Wal::open(dir.path()).unwrap();
        assert_eq!(w.truncated(), (2, 1));
        assert_eq!(terms(&w), vec![(3, 1), (4, 1)]);
    }

    #[test]
    fn reset_by_snapshot_removes_every_older_segment() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Wal::open(dir.path()).unwrap();
        w.append(&[entry(1, 1), entry(2, 1), entry(3, 1)]).unwrap();
        w.sync_now().unwrap();
        w.reset(10, 3);
        w.set_hard_state(&hs(3, 10)).unwrap();
        w.sync_now().unwrap();
        w.append(&[entry(11, 3)]).unwrap();
        w.sync_now().unwrap();
        assert_eq!(w.segment_count(), 1);
        drop(w);
        let w = Wal::open(dir.path()).unwrap();
        assert_eq!(w.truncated(), (10, 3));
        assert_eq!(terms(&w), vec![(11, 3)]);
        assert_eq!(w.hard_state(), &hs(3, 10));
    }

    #[test]
    fn unknown_format_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FORMAT_FILE), "berth-raft-wal 9\n").unwrap();
        let err = Wal::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("another version of Berth"), "{err}");
    }

    #[test]
    fn snapshot_files_keep_the_newest_and_reject_damage() {
        let dir = tempfile::tempdir().unwrap();
        let s = SnapshotFiles::new(Some(dir.path().to_path_buf()));
        let mut meta = SnapshotMetadata::default();
        meta.index = 5;
        meta.term = 2;
        s.write(&meta, b"five").unwrap();
        meta.index = 9;
        s.write(&meta, b"nine").unwrap();
        assert_eq!(s.latest_meta().unwrap().unwrap().index, 9);
        s.prune(9).unwrap();
        assert!(s.read(5).unwrap().is_none());
        assert_eq!(&s.read(9).unwrap().unwrap().data[..], b"nine");
        let p = dir.path().join(snap_name(9));
        let mut b = std::fs::read(&p).unwrap();
        b[20] ^= 1;
        std::fs::write(&p, b).unwrap();
        assert!(s.read(9).is_err());
    }
}
