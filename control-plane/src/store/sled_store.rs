//! The embedded store: sled holds the current objects (`o/<key>` → 8-byte revision +
//! JSON); the write-ahead log ([`super::wal`]) is both what makes writes durable and the
//! event history that watches and paged lists resume from.
//!
//! A write is decided under one lock (the next revision, preconditions against the newest
//! state, including writes not yet on disk) and appended to the log buffer. One flusher
//! thread appends and fdatasyncs the buffer (group commit), then applies the batch to sled,
//! publishes the events to watchers and acknowledges the writers. So sled only ever holds
//! acknowledged state; after a crash the log is replayed into it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::{broadcast, mpsc};

use super::wal::{self, Wal};
use super::{
    encode_with_rev, Event, EventType, FreshValue, ListResult, Precondition, Revision, Store,
    StoreError, Stored, WatchReceiver,
};

const OBJ: &[u8] = b"o/";
/// Events kept in memory for cheap watch replays; older ones are read from the log.
const RECENT_EVENTS: usize = 4096;
/// Live events in flight to watchers; a slower watcher catches up from the history.
const BROADCAST_CAPACITY: usize = 8192;
/// The largest log buffer kept for reuse.
const SPARE_BUFFER_MAX: usize = 8 << 20;
/// How many of the newest events keep their parsed values (see [`FreshValue`]).
const FRESH_VALUES: usize = 1024;
const WATCH_CHANNEL: usize = 512;

#[derive(Clone)]
pub struct SledStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    wal_dir: PathBuf,
    write: Mutex<WriteState>,
    /// Events decided but not yet published, by revision (synced or not).
    pending: Mutex<BTreeMap<Revision, Arc<Event>>>,
    kick: Arc<Kick>,
    /// The newest acknowledged revision (or the error that stopped the flusher).
    durable: tokio::sync::watch::Receiver<Durable>,
    /// Newest revision visible to readers and watchers.
    published: AtomicU64,
    /// Watches and lists may start from any revision after this one.
    oldest: AtomicU64,
    recent: Mutex<VecDeque<Arc<Event>>>,
    recent_events: usize,
    /// The newest events still holding their parsed values.
    fresh: Mutex<VecDeque<Arc<Event>>>,
    events: broadcast::Sender<Arc<Event>>,
    history: u64,
}

/// Held while deciding a write.
struct WriteState {
    last: Revision,
    /// Log records not yet handed to the flusher.
    wal: Vec<u8>,
    /// Events not yet handed to the flusher, in order.
    queue: Vec<Arc<Event>>,
    /// The newest value of keys whose writes are not yet in sled (`None`: deleted).
    unapplied: HashMap<String, (Revision, Option<Stored>)>,
}

#[derive(Clone, Debug, Default)]
struct Durable {
    rev: Revision,
    error: Option<Arc<str>>,
}

/// A flag and condvar to wake the flusher.
#[derive(Default)]
struct Kick {
    wanted: Mutex<bool>,
    cv: std::sync::Condvar,
}

impl Kick {
    fn notify(&self) {
        let mut w = self.wanted.lock().expect("kick");
        if !*w {
            *w = true;
            self.cv.notify_one();
        }
    }

    /// Waits for a kick (or a timeout, so the thread can notice the store is gone).
    fn wait(&self) -> bool {
        let w = self.wanted.lock().expect("kick");
        let (mut w, _) = self
            .cv
            .wait_timeout_while(w, Duration::from_millis(200), |w| !*w)
            .expect("kick");
        std::mem::take(&mut *w)
    }
}

fn err(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn io_err(what: &str) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |e| StoreError::Backend(format!("{what}: {e}"))
}

fn obj_key(key: &str) -> Vec<u8> {
    [OBJ, key.as_bytes()].concat()
}

/// `o/` values: the 8-byte big-endian revision, then the JSON.
fn decode_value(raw: &[u8]) -> Result<Stored, StoreError> {
    if raw.len() < 8 {
        return Err(StoreError::Corrupt("short value".into()));
    }
    let rev = u64::from_be_bytes(raw[..8].try_into().expect("8 bytes"));
    Ok(Stored {
        rev,
        data: Bytes::copy_from_slice(&raw[8..]),
    })
}

fn encode_value(s: &Stored) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + s.data.len());
    v.extend_from_slice(&s.rev.to_be_bytes());
    v.extend_from_slice(&s.data);
    v
}

fn put_chunk(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

fn take_chunk<'a>(raw: &mut &'a [u8]) -> Result<&'a [u8], StoreError> {
    let bad = || StoreError::Corrupt("truncated log entry".into());
    if raw.len() < 4 {
        return Err(bad());
    }
    let n = u32::from_be_bytes(raw[..4].try_into().expect("4 bytes")) as usize;
    if raw.len() < 4 + n {
        return Err(bad());
    }
    let chunk = &raw[4..4 + n];
    *raw = &raw[4 + n..];
    Ok(chunk)
}

/// A log record's payload: kind, key, object JSON, previous value (empty when none).
fn encode_event(ev: &Event) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + ev.key.len() + ev.object.len());
    out.push(match ev.kind {
        EventType::Added => 0,
        EventType::Modified => 1,
        EventType::Deleted => 2,
    });
    put_chunk(&mut out, ev.key.as_bytes());
    put_chunk(&mut out, &ev.object);
    put_chunk(
        &mut out,
        &ev.prev.as_ref().map(encode_value).unwrap_or_default(),
    );
    out
}

fn decode_event(rev: Revision, raw: &[u8]) -> Result<Event, StoreError> {
    let (&kind, mut rest) = raw
        .split_first()
        .ok_or_else(|| StoreError::Corrupt("empty log entry".into()))?;
    let kind = match kind {
        0 => EventType::Added,
        1 => EventType::Modified,
        2 => EventType::Deleted,
        k => return Err(StoreError::Corrupt(format!("unknown event kind {k}"))),
    };
    let key = String::from_utf8(take_chunk(&mut rest)?.to_vec())
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let object = Bytes::copy_from_slice(take_chunk(&mut rest)?);
    let prev = take_chunk(&mut rest)?;
    let prev = if prev.is_empty() {
        None
    } else {
        Some(decode_value(prev)?)
    };
    Ok(Event {
        rev,
        kind,
        key,
        object,
        prev,
        value: FreshValue::default(),
    })
}

/// Applies one event to sled (idempotent when replayed in order).
fn apply_to_sled(db: &sled::Db, ev: &Event) -> Result<(), StoreError> {
    let key = obj_key(&ev.key);
    match ev.kind {
        EventType::Deleted => db.remove(key).map(|_| ()),
        _ => db
            .insert(
                key,
                encode_value(&Stored {
                    rev: ev.rev,
                    data: ev.object.clone(),
                }),
            )
            .map(|_| ()),
    }
    .map_err(err)
}

/// The flusher thread: syncs the log, applies the batch to sled, publishes, acknowledges.
/// It holds the store weakly and ends when the store is dropped.
fn flusher(
    inner: std::sync::Weak<Inner>,
    kick: Arc<Kick>,
    mut wal: Wal,
    tx: tokio::sync::watch::Sender<Durable>,
) {
    let fail = |tx: &tokio::sync::watch::Sender<Durable>, what: &str, e: &dyn std::fmt::Display| {
        tracing::error!(error = %e, "{what}; writes are no longer acknowledged");
        let rev = tx.borrow().rev;
        tx.send_replace(Durable {
            rev,
            error: Some(format!("{what}: {e}").into()),
        });
    };
    // The buffer written last time, handed back to writers: a burst of writes does not
    // grow a fresh buffer (copying it at each doubling) for every batch.
    let mut spare: Vec<u8> = Vec::new();
    loop {
        let kicked = kick.wait();
        let Some(inner) = inner.upgrade() else { return };
        if !kicked {
            continue;
        }
        let (mut records, batch) = {
            let mut w = inner.write.lock().expect("write lock");
            let records = std::mem::replace(&mut w.wal, std::mem::take(&mut spare));
            (records, std::mem::take(&mut w.queue))
        };
        let Some(covered) = batch.last().map(|e| e.rev) else {
            continue;
        };
        if let Err(e) = wal.write_durable(&records) {
            return fail(&tx, "write-ahead log sync failed", &e);
        }
        if records.capacity() <= SPARE_BUFFER_MAX {
            records.clear();
            spare = records;
        }
        for ev in &batch {
            if let Err(e) = apply_to_sled(&inner.db, ev) {
                return fail(&tx, "applying to sled failed", &e);
            }
        }
        {
            // sled has these now; later readers of the newest state may use it.
            let mut w = inner.write.lock().expect("write lock");
            w.unapplied.retain(|_, (rev, _)| *rev > covered);
        }
        inner.publish(covered);
        tx.send_replace(Durable {
            rev: covered,
            error: None,
        });
        if wal.segment_full() {
            if let Err(e) = wal.rotate(covered + 1) {
                return fail(&tx, "write-ahead log rotation failed", &e);
            }
            let weak = Arc::downgrade(&inner);
            std::thread::spawn(move || {
                if let Some(inner) = weak.upgrade() {
                    if let Err(e) = inner.checkpoint(covered) {
                        tracing::warn!(error = %e, "store checkpoint failed");
                    }
                }
            });
        }
    }
}

impl SledStore {
    /// Opens (or creates) the store in `dir`, keeping about `history` revisions of events.
    pub fn open(dir: &Path, history: u64) -> Result<Self, StoreError> {
        Self::open_tuned(dir, history, wal::SEGMENT_BYTES, RECENT_EVENTS, false)
    }

    /// Like [`open`](Self::open), but a damaged write-ahead log is truncated at the damage
    /// instead of stopping start-up (what follows it is kept aside; see [`wal::recover`]).
    pub fn open_repairing(dir: &Path, history: u64) -> Result<Self, StoreError> {
        Self::open_tuned(dir, history, wal::SEGMENT_BYTES, RECENT_EVENTS, true)
    }

    /// Like [`open`](Self::open), with log segments of `segment_bytes` and `recent_events`
    /// kept in memory (tests use small ones to exercise the on-disk paths).
    pub fn open_tuned(
        dir: &Path,
        history: u64,
        segment_bytes: u64,
        recent_events: usize,
        repair: bool,
    ) -> Result<Self, StoreError> {
        let recent_events = recent_events.max(1);
        let config = sled::Config::new()
            .path(dir.join("sled"))
            .mode(sled::Mode::HighThroughput)
            // The write-ahead log makes writes durable; sled is flushed at checkpoints.
            .flush_every_ms(None)
            .cache_capacity(64 * 1024 * 1024);
        // A store dropped a moment ago in this process may still be finishing a flush on
        // its background threads, holding sled's directory lock; wait for it briefly.
        let mut attempts = 0;
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock") && attempts < 100 =>
                {
                    attempts += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(err(e)),
            }
        };
        // Replay the whole retained log in order: sled holds a prefix of it, and replaying
        // writes it already has is harmless because every key ends at its last write.
        let wal_dir = dir.join("wal");
        let records = wal::recover(&wal_dir, repair)?;
        let mut last = 0;
        let mut tail: VecDeque<Arc<Event>> = VecDeque::with_capacity(recent_events);
        let replayed = records.len();
        for (i, (rev, payload)) in records.into_iter().enumerate() {
            if i > 0 && rev != last + 1 {
                return Err(StoreError::Corrupt(format!(
                    "write-ahead log jumps from revision {last} to {rev}"
                )));
            }
            let ev = decode_event(rev, &payload)?;
            apply_to_sled(&db, &ev)?;
            last = rev;
            if tail.len() == recent_events {
                tail.pop_front();
            }
            tail.push_back(Arc::new(ev));
        }
        if replayed > 0 {
            db.flush().map_err(err)?;
            tracing::info!(replayed, revision = last, "replayed the write-ahead log");
        } else {
            // No records: the newest segment's name still says where revisions continue.
            last = wal::segment_floor(&wal_dir).map_err(io_err("reading the write-ahead log"))?;
        }
        if repair {
            // A repaired log may end before writes sled already holds: revisions go on
            // after the newest of those, never reusing one.
            for item in db.scan_prefix(OBJ) {
                let (_, raw) = item.map_err(err)?;
                last = last.max(decode_value(&raw)?.rev);
            }
        }
        // The replayed segments stay as history; new writes go to a fresh segment.
        let oldest = wal::oldest(&wal_dir)
            .map_err(io_err("reading the write-ahead log"))?
            .unwrap_or(last);
        let mut wal =
            Wal::open_next(&wal_dir, last + 1).map_err(io_err("creating the write-ahead log"))?;
        wal.limit = segment_bytes;
        let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
        let kick = Arc::new(Kick::default());
        let (durable_tx, durable_rx) = tokio::sync::watch::channel(Durable {
            rev: last,
            error: None,
        });
        let store = SledStore {
            inner: Arc::new(Inner {
                db,
                wal_dir,
                write: Mutex::new(WriteState {
                    last,
                    wal: Vec::new(),
                    queue: Vec::new(),
                    unapplied: HashMap::new(),
                }),
                pending: Mutex::new(BTreeMap::new()),
                kick: kick.clone(),
                durable: durable_rx,
                published: AtomicU64::new(last),
                oldest: AtomicU64::new(oldest.min(last)),
                recent: Mutex::new(tail),
                recent_events,
                fresh: Mutex::default(),
                events,
                history: history.max(1),
            }),
        };
        let weak = Arc::downgrade(&store.inner);
        std::thread::Builder::new()
            .name("skiff-store-flush".into())
            .spawn(move || flusher(weak, kick, wal, durable_tx))
            .map_err(io_err("starting the flusher"))?;
        Ok(store)
    }

    /// Decides one write under the write lock and queues it for the flusher.
    fn apply(
        &self,
        key: &str,
        build: impl FnOnce(Option<&Stored>) -> Result<(EventType, Value), StoreError>,
    ) -> Result<Arc<Event>, StoreError> {
        let inner = &self.inner;
        let mut w = inner.write.lock().expect("write lock");
        let rev = w.last + 1;
        let current = match w.unapplied.get(key) {
            Some((_, v)) => v.clone(),
            None => inner
                .db
                .get(obj_key(key))
                .map_err(err)?
                .map(|raw| decode_value(&raw))
                .transpose()?,
        };
        let (kind, mut value) = build(current.as_ref())?;
        let object = encode_with_rev(&mut value, rev)?;
        let ev = Arc::new(Event {
            rev,
            kind,
            key: key.to_string(),
            object,
            prev: current,
            value: FreshValue::new(value),
        });
        wal::encode(&mut w.wal, rev, &encode_event(&ev));
        let newest = (kind != EventType::Deleted).then(|| Stored {
            rev,
            data: ev.object.clone(),
        });
        w.unapplied.insert(key.to_string(), (rev, newest));
        w.queue.push(ev.clone());
        w.last = rev;
        inner
            .pending
            .lock()
            .expect("pending")
            .insert(rev, ev.clone());
        Ok(ev)
    }

    /// Returns once `rev` is acknowledged (on disk and applied).
    async fn make_durable(&self, rev: Revision) -> Result<(), StoreError> {
        let mut rx = self.inner.durable.clone();
        if rx.borrow().rev >= rev {
            return Ok(());
        }
        self.inner.kick.notify();
        let state = rx
            .wait_for(|d| d.rev >= rev || d.error.is_some())
            .await
            .map_err(|_| StoreError::Backend("the store flusher stopped".into()))?;
        match &state.error {
            Some(e) => Err(StoreError::Backend(e.to_string())),
            None => Ok(()),
        }
    }
}

impl Inner {
    /// Makes every pending event up to `upto` visible, in revision order.
    fn publish(&self, upto: Revision) {
        let ready: Vec<Arc<Event>> = {
            let mut pending = self.pending.lock().expect("pending");
            let rest = pending.split_off(&(upto + 1));
            std::mem::replace(&mut *pending, rest)
                .into_values()
                .collect()
        };
        {
            let mut recent = self.recent.lock().expect("recent");
            for ev in &ready {
                if recent.len() == self.recent_events {
                    recent.pop_front();
                }
                recent.push_back(ev.clone());
            }
        }
        {
            let mut fresh = self.fresh.lock().expect("fresh");
            for ev in &ready {
                if fresh.len() == FRESH_VALUES {
                    if let Some(old) = fresh.pop_front() {
                        old.value.clear();
                    }
                }
                fresh.push_back(ev.clone());
            }
        }
        self.published.store(upto, Ordering::Release);
        for ev in ready {
            // No receivers is fine: nobody is watching.
            let _ = self.events.send(ev);
        }
    }

    /// Makes sled durable up to `covered`, then drops log segments that are neither needed
    /// for recovery nor within the kept history.
    fn checkpoint(&self, covered: Revision) -> Result<(), StoreError> {
        self.db.flush().map_err(err)?;
        let keep_from = covered.min(
            self.published
                .load(Ordering::Acquire)
                .saturating_sub(self.history),
        );
        // Readers check `oldest` before they read the log, so raise it first.
        if let Some(new_oldest) = wal::first_kept_after_removing(&self.wal_dir, keep_from, |o| {
            self.oldest.fetch_max(o, Ordering::AcqRel)
        })
        .map_err(io_err("removing log segments"))?
        {
            tracing::debug!(oldest = new_oldest, "compacted store history");
        }
        Ok(())
    }

    /// Every change after `from` (published or not), from memory and, for older ones, the
    /// log on disk; `Compacted` when the log no longer reaches back that far.
    fn changes_since(&self, from: Revision) -> Result<Vec<Arc<Event>>, StoreError> {
        let oldest = self.oldest.load(Ordering::Acquire);
        if from < oldest {
            return Err(StoreError::Compacted {
                requested: from,
                oldest,
            });
        }
        // Pending first: an event moving to `recent` meanwhile is then seen twice, not never.
        let pending: Vec<Arc<Event>> = self
            .pending
            .lock()
            .expect("pending")
            .values()
            .cloned()
            .collect();
        let recent: Vec<Arc<Event>> = self
            .recent
            .lock()
            .expect("recent")
            .iter()
            .filter(|e| e.rev > from)
            .cloned()
            .collect();
        let first_in_memory = recent.first().or(pending.first()).map(|e| e.rev);
        let mut out: Vec<Arc<Event>> = Vec::new();
        match first_in_memory {
            Some(first) if first > from + 1 => {
                let older = wal::read_range(&self.wal_dir, from, first - 1)
                    .map_err(io_err("reading the write-ahead log"))?;
                if older.first().is_none_or(|(rev, _)| *rev != from + 1) {
                    return Err(StoreError::Compacted {
                        requested: from,
                        oldest: self.oldest.load(Ordering::Acquire),
                    });
                }
                for (rev, payload) in older {
                    out.push(Arc::new(decode_event(rev, &payload)?));
                }
            }
            _ => {}
        }
        let mut seen = out.last().map_or(from, |e| e.rev);
        for ev in recent.into_iter().chain(pending) {
            if ev.rev > seen {
                seen = ev.rev;
                out.push(ev);
            }
        }
        Ok(out)
    }

    /// Published events in `(from, to]`.
    fn events_between(&self, from: Revision, to: Revision) -> Result<Vec<Arc<Event>>, StoreError> {
        let mut evs = self.changes_since(from)?;
        evs.retain(|e| e.rev <= to);
        Ok(evs)
    }
}

#[async_trait::async_trait]
impl Store for SledStore {
    fn revision(&self) -> Revision {
        self.inner.published.load(Ordering::Acquire)
    }

    fn oldest_revision(&self) -> Revision {
        self.inner.oldest.load(Ordering::Acquire)
    }

    async fn settle(&self) -> Result<(), StoreError> {
        let last = self.inner.write.lock().expect("write lock").last;
        self.make_durable(last).await
    }

    async fn get(&self, key: &str) -> Result<Option<Stored>, StoreError> {
        self.inner
            .db
            .get(obj_key(key))
            .map_err(err)?
            .map(|raw| decode_value(&raw))
            .transpose()
    }

    async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: Option<usize>,
        at: Option<Revision>,
    ) -> Result<ListResult, StoreError> {
        let inner = &self.inner;
        let published = self.revision();
        let rev = at.unwrap_or(published).min(published);
        let oldest = self.oldest_revision();
        if rev < oldest {
            return Err(StoreError::Compacted {
                requested: rev,
                oldest,
            });
        }
        let in_range = |k: &str| k.starts_with(prefix) && after.is_none_or(|a| k > a);
        // Scan the objects, then undo every change made after `rev`. A change's event is
        // pending before sled has it, so reading the changes after the scan covers every
        // change the scan may have seen.
        let start = match after {
            Some(a) => {
                let mut k = obj_key(a);
                k.push(0);
                k
            }
            None => obj_key(prefix),
        };
        let end = {
            let mut e = obj_key(prefix);
            e.push(0xff);
            e
        };
        let mut newest = rev;
        let mut scanned = Vec::new();
        for kv in inner.db.range(start..end) {
            let (k, v) = kv.map_err(err)?;
            let key = String::from_utf8(k[OBJ.len()..].to_vec())
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            if !in_range(&key) {
                continue;
            }
            let s = decode_value(&v)?;
            newest = newest.max(s.rev);
            scanned.push((key, s));
            // Read a margin beyond the limit to know whether more remain.
            if limit.is_some_and(|l| scanned.len() > l + 64) && newest == rev {
                break;
            }
        }
        let mut overlay: BTreeMap<String, Option<Stored>> = BTreeMap::new();
        for ev in inner.changes_since(rev)? {
            if in_range(&ev.key) && !overlay.contains_key(&ev.key) {
                overlay.insert(ev.key.clone(), ev.prev.clone());
            }
        }
        // Merge the scan with the overlay, both sorted by key.
        let mut items = Vec::new();
        let mut more = None;
        let mut scan_iter = scanned.into_iter().peekable();
        let mut ov_iter = overlay.iter().peekable();
        let truncated_scan = limit.is_some_and(|l| scan_iter.len() > l + 64);
        loop {
            let next = match (scan_iter.peek(), ov_iter.peek()) {
                (None, None) => break,
                (Some((sk, _)), Some((ok, _))) if *ok < sk => {
                    let (k, v) = ov_iter.next().expect("peeked");
                    v.clone().map(|v| (k.clone(), v))
                }
                (Some(_), _) => {
                    let (k, v) = scan_iter.next().expect("peeked");
                    match overlay.get(&k) {
                        Some(at_rev) => {
                            if ov_iter.peek().is_some_and(|(ok, _)| **ok == k) {
                                ov_iter.next();
                            }
                            at_rev.clone().map(|s| (k, s))
                        }
                        None => Some((k, v)),
                    }
                }
                (None, Some(_)) => {
                    if truncated_scan {
                        break;
                    }
                    let (k, v) = ov_iter.next().expect("peeked");
                    v.clone().map(|v| (k.clone(), v))
                }
            };
            if let Some(item) = next {
                if limit.is_some_and(|l| items.len() >= l) {
                    more = items.last().map(|(k, _): &(String, Stored)| k.clone());
                    break;
                }
                items.push(item);
            }
        }
        if more.is_none() && truncated_scan {
            more = items.last().map(|(k, _)| k.clone());
        }
        Ok(ListResult {
            items,
            rev,
            continue_after: more,
        })
    }

    async fn put(
        &self,
        key: &str,
        cond: Precondition,
        object: Value,
    ) -> Result<Stored, StoreError> {
        let ev = self.apply(key, |current| {
            let kind = match (cond, current) {
                (Precondition::Absent, None) => EventType::Added,
                (Precondition::Absent, Some(_)) => {
                    return Err(StoreError::AlreadyExists(key.into()))
                }
                (Precondition::Exists(_), None) => return Err(StoreError::NotFound(key.into())),
                (Precondition::Exists(Some(expected)), Some(c)) if c.rev != expected => {
                    return Err(StoreError::Conflict {
                        key: key.into(),
                        expected,
                        current: c.rev,
                    })
                }
                (Precondition::Exists(_), Some(_)) => EventType::Modified,
            };
            Ok((kind, object))
        })?;
        self.make_durable(ev.rev).await?;
        Ok(Stored {
            rev: ev.rev,
            data: ev.object.clone(),
        })
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<Stored, StoreError> {
        let ev = self.apply(key, |current| {
            let c = current.ok_or_else(|| StoreError::NotFound(key.into()))?;
            if let Some(expected) = expected.filter(|e| *e != c.rev) {
                return Err(StoreError::Conflict {
                    key: key.into(),
                    expected,
                    current: c.rev,
                });
            }
            Ok((EventType::Deleted, c.to_value()?))
        })?;
        self.make_durable(ev.rev).await?;
        Ok(Stored {
            rev: ev.rev,
            data: ev.object.clone(),
        })
    }

    fn watch(&self, prefix: &str, from: Revision) -> Result<WatchReceiver, StoreError> {
        let inner = self.inner.clone();
        // Subscribe before reading history so nothing falls between the two.
        let mut live = inner.events.subscribe();
        let upto = inner.published.load(Ordering::Acquire);
        let backlog = inner.events_between(from, upto)?;
        let (tx, rx) = mpsc::channel(WATCH_CHANNEL);
        let prefix = prefix.to_string();
        tokio::spawn(async move {
            let mut sent = from;
            let deliver = |ev: &Arc<Event>| (ev.key.starts_with(&prefix)).then(|| Event::clone(ev));
            for ev in backlog {
                sent = ev.rev;
                if let Some(e) = deliver(&ev) {
                    if tx.send(Ok(e)).await.is_err() {
                        return;
                    }
                }
            }
            loop {
                let batch = tokio::select! {
                    r = live.recv() => match r {
                        Ok(ev) => vec![ev],
                        // Fell behind the broadcast: catch up from history.
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            let upto = inner.published.load(Ordering::Acquire);
                            match inner.events_between(sent, upto) {
                                Ok(evs) => evs,
                                Err(e) => {
                                    let _ = tx.send(Err(e)).await;
                                    return;
                                }
                            }
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    _ = tx.closed() => return,
                };
                for ev in batch {
                    if ev.rev <= sent {
                        continue;
                    }
                    sent = ev.rev;
                    if let Some(e) = deliver(&ev) {
                        if tx.send(Ok(e)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn open(dir: &Path) -> SledStore {
        SledStore::open_tuned(dir, 100, 4096, 8, false).unwrap()
    }

    #[tokio::test]
    async fn old_history_is_read_from_the_log_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open_tuned(dir.path(), 10_000, 1 << 20, 8, false).unwrap();
        let first = s
            .put("p/a", Precondition::Absent, obj("a", 0))
            .await
            .unwrap()
            .rev;
        for i in 1..50 {
            s.put("p/a", Precondition::Exists(None), obj("a", i))
                .await
                .unwrap();
        }
        let mut w = s.watch("p/", first).unwrap();
        for i in 1..50 {
            let e = w.recv().await.unwrap().unwrap();
            assert_eq!(e.rev, first + i);
            assert_eq!(
                serde_json::from_slice::<Value>(&e.object).unwrap()["v"],
                i as i64
            );
        }
        // A snapshot list from before most changes reads them back from disk too.
        let old = s.list("p/", None, None, Some(first + 3)).await.unwrap();
        assert_eq!(old.items[0].1.to_value().unwrap()["v"], 3);
    }

    fn obj(name: &str, v: i64) -> Value {
        json!({"metadata": {"name": name}, "v": v})
    }

    #[tokio::test]
    async fn revisions_increase_and_are_written_into_objects() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let a = s
            .put("p/a", Precondition::Absent, obj("a", 1))
            .await
            .unwrap();
        let b = s
            .put("p/b", Precondition::Absent, obj("b", 1))
            .await
            .unwrap();
        assert!(b.rev > a.rev);
        let got = s.get("p/a").await.unwrap().unwrap().to_value().unwrap();
        assert_eq!(got["metadata"]["resourceVersion"], a.rev.to_string());
        assert_eq!(s.revision(), b.rev);
    }

    #[tokio::test]
    async fn preconditions_are_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let a = s
            .put("p/a", Precondition::Absent, obj("a", 1))
            .await
            .unwrap();
        assert!(matches!(
            s.put("p/a", Precondition::Absent, obj("a", 2)).await,
            Err(StoreError::AlreadyExists(_))
        ));
        assert!(matches!(
            s.put("p/x", Precondition::Exists(None), obj("x", 2)).await,
            Err(StoreError::NotFound(_))
        ));
        s.put("p/a", Precondition::Exists(Some(a.rev)), obj("a", 2))
            .await
            .unwrap();
        assert!(matches!(
            s.put("p/a", Precondition::Exists(Some(a.rev)), obj("a", 3))
                .await,
            Err(StoreError::Conflict { .. })
        ));
        assert!(matches!(
            s.delete("p/a", Some(a.rev)).await,
            Err(StoreError::Conflict { .. })
        ));
        s.delete("p/a", None).await.unwrap();
        assert!(s.get("p/a").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn list_pages_and_reads_an_older_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        for i in 0..5 {
            s.put(
                &format!("p/{i}"),
                Precondition::Absent,
                obj(&i.to_string(), i),
            )
            .await
            .unwrap();
        }
        s.put("q/other", Precondition::Absent, obj("o", 0))
            .await
            .unwrap();
        let page = s.list("p/", None, Some(2), None).await.unwrap();
        assert_eq!(
            page.items
                .iter()
                .map(|(k, _)| k.as_str())
                .collect::<Vec<_>>(),
            ["p/0", "p/1"]
        );
        let snap = page.rev;
        // Changes after the first page must not show in the next pages of that snapshot.
        s.delete("p/2", None).await.unwrap();
        s.put("p/3", Precondition::Exists(None), obj("3", 33))
            .await
            .unwrap();
        s.put("p/25", Precondition::Absent, obj("25", 25))
            .await
            .unwrap();
        let rest = s
            .list("p/", page.continue_after.as_deref(), None, Some(snap))
            .await
            .unwrap();
        let keys: Vec<_> = rest.items.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["p/2", "p/3", "p/4"]);
        assert_eq!(rest.items[1].1.to_value().unwrap()["v"], 3);
        assert!(rest.continue_after.is_none());
        let now = s.list("p/", None, None, None).await.unwrap();
        let keys: Vec<_> = now.items.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["p/0", "p/1", "p/25", "p/3", "p/4"]);
    }

    #[tokio::test]
    async fn watch_replays_history_then_streams() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let a = s
            .put("p/a", Precondition::Absent, obj("a", 1))
            .await
            .unwrap();
        s.put("p/a", Precondition::Exists(None), obj("a", 2))
            .await
            .unwrap();
        s.put("q/x", Precondition::Absent, obj("x", 1))
            .await
            .unwrap();
        let mut w = s.watch("p/", a.rev).unwrap();
        let e = w.recv().await.unwrap().unwrap();
        assert_eq!((e.kind, e.key.as_str()), (EventType::Modified, "p/a"));
        s.delete("p/a", None).await.unwrap();
        let e = w.recv().await.unwrap().unwrap();
        assert_eq!(e.kind, EventType::Deleted);
        let v: Value = serde_json::from_slice(&e.object).unwrap();
        assert_eq!(v["metadata"]["resourceVersion"], e.rev.to_string());
    }

    #[tokio::test]
    async fn new_events_carry_the_written_value_and_older_ones_let_it_go() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open_tuned(dir.path(), 10_000, 1 << 20, 4096, false).unwrap();
        let first = s
            .put("p/a", Precondition::Absent, obj("a", 1))
            .await
            .unwrap();
        let mut w = s.watch("p/", first.rev - 1).unwrap();
        let e = w.recv().await.unwrap().unwrap();
        let v = e.value.get().expect("a fresh event has its value");
        assert_eq!(*v, serde_json::from_slice::<Value>(&e.object).unwrap());
        for i in 0..FRESH_VALUES {
            s.put("p/a", Precondition::Exists(None), obj("a", i as i64))
                .await
                .unwrap();
        }
        let mut w = s.watch("p/", first.rev - 1).unwrap();
        let old = w.recv().await.unwrap().unwrap();
        assert_eq!(old.rev, first.rev);
        assert!(old.value.get().is_none(), "only the newest keep values");
        assert!(!old.object.is_empty());
        let last = s
            .put("p/a", Precondition::Exists(None), obj("a", -1))
            .await
            .unwrap();
        let mut w = s.watch("p/", last.rev - 1).unwrap();
        assert!(w.recv().await.unwrap().unwrap().value.get().is_some());
    }

    #[tokio::test]
    async fn history_survives_restart_and_is_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let first;
        {
            let s = open(dir.path());
            first = s
                .put("p/a", Precondition::Absent, obj("a", 0))
                .await
                .unwrap()
                .rev;
            for i in 1..10 {
                s.put("p/a", Precondition::Exists(None), obj("a", i))
                    .await
                    .unwrap();
            }
        }
        let s = open(dir.path());
        assert_eq!(s.revision(), first + 9);
        let mut w = s.watch("p/", first + 7).unwrap();
        assert_eq!(w.recv().await.unwrap().unwrap().rev, first + 8);
        for i in 0..200 {
            s.put("p/a", Precondition::Exists(None), obj("a", i))
                .await
                .unwrap();
        }
        // Compaction runs in the background after a write.
        for _ in 0..100 {
            if s.oldest_revision() > first {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(s.oldest_revision() > first);
        assert!(matches!(
            s.watch("p/", first),
            Err(StoreError::Compacted { .. })
        ));
    }
}
