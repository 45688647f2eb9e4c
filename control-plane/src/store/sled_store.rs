//! The embedded store on sled.
//!
//! One sled tree holds three key spaces: `o/<key>` the current objects (8-byte revision +
//! JSON), `l/<revision>` the event log (the watch history, compacted to a bounded length)
//! and `m/…` metadata. An object and its log entry are written in one atomic batch.
//! Durability comes from the write-ahead log ([`super::wal`]) with group commit: one
//! flusher thread appends and fdatasyncs whatever has been applied since its last sync; a
//! writer returns once a sync covering its write has finished, and events are published to
//! watchers only after that sync. sled flushes in the background; the log is replayed
//! into it after a crash.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::{broadcast, mpsc};

use super::wal::{self, Wal};
use super::{
    encode_with_rev, Event, EventType, ListResult, Precondition, Revision, Store, StoreError,
    Stored, WatchReceiver,
};

const OBJ: &[u8] = b"o/";
const LOG: &[u8] = b"l/";
const META_COMPACTED: &[u8] = b"m/compacted";
/// Events kept in memory for cheap watch replays; older ones are read from the log.
const RECENT_EVENTS: usize = 4096;
const BROADCAST_CAPACITY: usize = 8192;
const WATCH_CHANNEL: usize = 512;

#[derive(Clone)]
pub struct SledStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    /// Held while writing: the last revision applied, and log records not yet synced.
    write: Mutex<WriteState>,
    /// Writes applied but not yet durable, published in order after a flush.
    pending: Mutex<BTreeMap<Revision, Arc<Event>>>,
    /// Wakes the flusher thread.
    kick: Arc<Kick>,
    /// The newest durable revision (or the error that stopped flushing), for writers.
    durable: tokio::sync::watch::Receiver<Durable>,
    /// Newest revision visible to readers and watchers.
    published: AtomicU64,
    oldest: AtomicU64,
    recent: Mutex<VecDeque<Arc<Event>>>,
    events: broadcast::Sender<Arc<Event>>,
    history: u64,
}

struct WriteState {
    last: Revision,
    wal: Vec<u8>,
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

/// The flusher thread: syncs the log on demand, then publishes what became durable. It
/// holds the store weakly and ends when the store is dropped.
fn flusher(
    inner: std::sync::Weak<Inner>,
    kick: Arc<Kick>,
    mut wal: Wal,
    tx: tokio::sync::watch::Sender<Durable>,
) {
    loop {
        let kicked = kick.wait();
        let Some(inner) = inner.upgrade() else { return };
        if !kicked {
            continue;
        }
        let (covered, records) = {
            let mut w = inner.write.lock().expect("write lock");
            (w.last, std::mem::take(&mut w.wal))
        };
        if covered <= tx.borrow().rev {
            continue;
        }
        if let Err(e) = wal.write_durable(&records) {
            tracing::error!(error = %e, "write-ahead log sync failed; writes are no longer acknowledged");
            tx.send_replace(Durable {
                rev: tx.borrow().rev,
                error: Some(e.to_string().into()),
            });
            return;
        }
        inner.publish(covered);
        tx.send_replace(Durable {
            rev: covered,
            error: None,
        });
        if wal.segment_full() {
            if let Err(e) = wal.rotate(covered + 1) {
                tracing::error!(error = %e, "write-ahead log rotation failed");
                tx.send_replace(Durable {
                    rev: covered,
                    error: Some(e.to_string().into()),
                });
                return;
            }
            // Once sled has flushed everything up to `covered`, older segments can go.
            let (db, dir) = (inner.db.clone(), wal.dir().to_path_buf());
            std::thread::spawn(move || match db.flush() {
                Ok(_) => {
                    if let Err(e) = wal::remove_through(&dir, covered) {
                        tracing::warn!(error = %e, "removing old log segments failed");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "checkpoint flush failed"),
            });
        }
        if covered.saturating_sub(inner.oldest.load(Ordering::Relaxed))
            > inner.history + inner.history / 4
        {
            let weak = Arc::downgrade(&inner);
            std::thread::spawn(move || {
                if let Some(inner) = weak.upgrade() {
                    if let Err(e) = inner.compact() {
                        tracing::warn!(error = %e, "store compaction failed");
                    }
                }
            });
        }
    }
}

/// The sled batch that applies `ev`.
fn batch_for(ev: &Event) -> sled::Batch {
    let mut batch = sled::Batch::default();
    batch.insert(&log_key(ev.rev), encode_event(ev));
    let okey = obj_key(&ev.key);
    match ev.kind {
        EventType::Deleted => batch.remove(okey),
        _ => batch.insert(
            okey,
            encode_value(&Stored {
                rev: ev.rev,
                data: ev.object.clone(),
            }),
        ),
    }
    batch
}

fn err(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn obj_key(key: &str) -> Vec<u8> {
    [OBJ, key.as_bytes()].concat()
}

fn log_key(rev: Revision) -> [u8; 10] {
    let mut k = [0u8; 10];
    k[..2].copy_from_slice(LOG);
    k[2..].copy_from_slice(&rev.to_be_bytes());
    k
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

/// `l/` values: kind, key, object JSON, previous value (empty when none).
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
    })
}

impl SledStore {
    /// Opens (or creates) the store in `dir`, keeping about `history` revisions of events.
    pub fn open(dir: &Path, history: u64) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(dir.join("sled"))
            .mode(sled::Mode::HighThroughput)
            .cache_capacity(64 * 1024 * 1024)
            .open()
            .map_err(err)?;
        let mut last = match db.scan_prefix(LOG).next_back() {
            Some(kv) => {
                let (k, _) = kv.map_err(err)?;
                u64::from_be_bytes(
                    k[2..]
                        .try_into()
                        .map_err(|_| StoreError::Corrupt("log key".into()))?,
                )
            }
            None => 0,
        };
        // Replay acknowledged writes that sled had not flushed when the process stopped.
        let wal_dir = dir.join("wal");
        let records = wal::read_all(&wal_dir)
            .map_err(|e| StoreError::Backend(format!("reading the write-ahead log: {e}")))?;
        let mut replayed = 0;
        for (rev, payload) in records {
            if rev <= last {
                continue;
            }
            if rev != last + 1 {
                return Err(StoreError::Corrupt(format!(
                    "write-ahead log jumps from revision {last} to {rev}"
                )));
            }
            db.apply_batch(batch_for(&decode_event(rev, &payload)?))
                .map_err(err)?;
            last = rev;
            replayed += 1;
        }
        if replayed > 0 {
            db.flush().map_err(err)?;
            tracing::info!(replayed, revision = last, "replayed the write-ahead log");
        }
        let wal = Wal::create(&wal_dir, last + 1)
            .map_err(|e| StoreError::Backend(format!("creating the write-ahead log: {e}")))?;
        let compacted = match db.get(META_COMPACTED).map_err(err)? {
            Some(v) => u64::from_be_bytes(
                v.as_ref()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("meta".into()))?,
            ),
            None => 0,
        };
        let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
        let kick = Arc::new(Kick::default());
        let (durable_tx, durable_rx) = tokio::sync::watch::channel(Durable {
            rev: last,
            error: None,
        });
        let store = SledStore {
            inner: Arc::new(Inner {
                db,
                write: Mutex::new(WriteState {
                    last,
                    wal: Vec::new(),
                }),
                pending: Mutex::new(BTreeMap::new()),
                kick: kick.clone(),
                durable: durable_rx,
                published: AtomicU64::new(last),
                oldest: AtomicU64::new(compacted),
                recent: Mutex::new(VecDeque::with_capacity(RECENT_EVENTS)),
                events,
                history: history.max(1),
            }),
        };
        // Warm the replay cache with the tail of the log.
        let tail: Vec<Arc<Event>> = store
            .inner
            .read_log(last.saturating_sub(RECENT_EVENTS as u64), last)?
            .into_iter()
            .map(Arc::new)
            .collect();
        store.inner.recent.lock().expect("recent").extend(tail);
        let weak = Arc::downgrade(&store.inner);
        std::thread::Builder::new()
            .name("skiff-store-flush".into())
            .spawn(move || flusher(weak, kick, wal, durable_tx))
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        Ok(store)
    }

    /// Applies one write under the write lock and returns its event (not yet durable).
    fn apply(
        &self,
        key: &str,
        build: impl FnOnce(Option<&Stored>, Revision) -> Result<(EventType, Bytes), StoreError>,
    ) -> Result<Arc<Event>, StoreError> {
        let inner = &self.inner;
        let okey = obj_key(key);
        let mut w = inner.write.lock().expect("write lock");
        let rev = w.last + 1;
        let current = inner
            .db
            .get(&okey)
            .map_err(err)?
            .map(|raw| decode_value(&raw))
            .transpose()?;
        let (kind, object) = build(current.as_ref(), rev)?;
        let ev = Event {
            rev,
            kind,
            key: key.to_string(),
            object,
            prev: current,
        };
        let encoded = encode_event(&ev);
        inner.db.apply_batch(batch_for(&ev)).map_err(err)?;
        wal::encode(&mut w.wal, rev, &encoded);
        w.last = rev;
        let ev = Arc::new(ev);
        inner
            .pending
            .lock()
            .expect("pending")
            .insert(rev, ev.clone());
        Ok(ev)
    }

    /// Returns once `rev` is on disk.
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
        let inner = self;
        let ready: Vec<Arc<Event>> = {
            let mut pending = inner.pending.lock().expect("pending");
            let rest = pending.split_off(&(upto + 1));
            std::mem::replace(&mut *pending, rest)
                .into_values()
                .collect()
        };
        if ready.is_empty() {
            return;
        }
        {
            let mut recent = inner.recent.lock().expect("recent");
            for ev in &ready {
                if recent.len() == RECENT_EVENTS {
                    recent.pop_front();
                }
                recent.push_back(ev.clone());
            }
        }
        inner.published.store(upto, Ordering::Release);
        for ev in ready {
            // No receivers is fine: nobody is watching.
            let _ = inner.events.send(ev);
        }
    }

    /// Drops log entries older than the kept history.
    fn compact(&self) -> Result<(), StoreError> {
        let inner = self;
        let published = inner.published.load(Ordering::Acquire);
        let new_oldest = published.saturating_sub(inner.history);
        if new_oldest <= inner.oldest.load(Ordering::Acquire) {
            return Ok(());
        }
        // Readers check `oldest` before they read the log, so raise it first.
        inner.oldest.store(new_oldest, Ordering::Release);
        inner
            .db
            .insert(META_COMPACTED, &new_oldest.to_be_bytes())
            .map_err(err)?;
        let mut batch = sled::Batch::default();
        for kv in inner.db.range(log_key(0)..log_key(new_oldest + 1)) {
            batch.remove(kv.map_err(err)?.0);
        }
        inner.db.apply_batch(batch).map_err(err)?;
        tracing::debug!(oldest = new_oldest, "compacted store history");
        Ok(())
    }
}

impl Inner {
    /// Log events with revisions in `(from, to]`.
    fn read_log(&self, from: Revision, to: Revision) -> Result<Vec<Event>, StoreError> {
        let mut out = Vec::new();
        if to <= from {
            return Ok(out);
        }
        for kv in self.db.range(log_key(from + 1)..=log_key(to)) {
            let (k, v) = kv.map_err(err)?;
            let rev = u64::from_be_bytes(
                k[2..]
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("log key".into()))?,
            );
            out.push(decode_event(rev, &v)?);
        }
        Ok(out)
    }

    /// Published events after `from` (up to `to`), from memory when it still holds them.
    fn events_between(&self, from: Revision, to: Revision) -> Result<Vec<Arc<Event>>, StoreError> {
        let oldest = self.oldest.load(Ordering::Acquire);
        if from < oldest {
            return Err(StoreError::Compacted {
                requested: from,
                oldest,
            });
        }
        {
            let recent = self.recent.lock().expect("recent");
            if recent.front().is_some_and(|e| e.rev <= from + 1) || from >= to {
                return Ok(recent
                    .iter()
                    .filter(|e| e.rev > from && e.rev <= to)
                    .cloned()
                    .collect());
            }
        }
        let events = self.read_log(from, to)?;
        if events.first().is_some_and(|e| e.rev != from + 1) {
            return Err(StoreError::Compacted {
                requested: from,
                oldest: self.oldest.load(Ordering::Acquire),
            });
        }
        Ok(events.into_iter().map(Arc::new).collect())
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
        // Scan the live objects, then undo every change made after `rev`: the log entry
        // of a change is written before (in the same batch as) the object itself, so
        // reading the log after the scan covers every change the scan may have seen.
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
        let scan = inner.db.range(start..end);
        let mut overlay: BTreeMap<String, Option<Stored>> = BTreeMap::new();
        let mut newest = rev;
        let mut scanned = Vec::new();
        for kv in scan {
            let (k, v) = kv.map_err(err)?;
            let key = String::from_utf8(k[OBJ.len()..].to_vec())
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            if !in_range(&key) {
                continue;
            }
            let s = decode_value(&v)?;
            newest = newest.max(s.rev);
            scanned.push((key, s));
            if let Some(l) = limit {
                // Read a margin beyond the limit to know whether more remain.
                if scanned.len() > l + 64 && newest == rev {
                    break;
                }
            }
        }
        let last_applied = inner.write.lock().expect("write lock").last;
        for ev in inner.read_log(rev, last_applied)? {
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
        let ev = self.apply(key, |current, rev| {
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
            Ok((kind, encode_with_rev(object, rev)?))
        })?;
        self.make_durable(ev.rev).await?;
        Ok(Stored {
            rev: ev.rev,
            data: ev.object.clone(),
        })
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<Stored, StoreError> {
        let ev = self.apply(key, |current, rev| {
            let c = current.ok_or_else(|| StoreError::NotFound(key.into()))?;
            if let Some(expected) = expected.filter(|e| *e != c.rev) {
                return Err(StoreError::Conflict {
                    key: key.into(),
                    expected,
                    current: c.rev,
                });
            }
            let last: Value = c.to_value()?;
            Ok((EventType::Deleted, encode_with_rev(last, rev)?))
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
        SledStore::open(dir, 100).unwrap()
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
