//! The write-ahead log: every write is appended here and acknowledged once its record is
//! on disk (append + fdatasync, in groups). It is also the store's event history. Segments
//! are named by the first revision they hold; one is deleted once sled has been flushed
//! past it and it is older than the kept history.
//!
//! A record is `rev (u64) | len (u32) | crc32 of rev and payload (u32) | payload`. At start
//! ([`recover`]) a torn final record of the newest segment (a write that was never
//! acknowledged: cut short, or zero-filled by the file system) is dropped; any other bad
//! record would silently drop acknowledged writes after it, so start-up stops there unless
//! told to repair (truncate the log at the damage, keeping what follows aside).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::{Revision, StoreError};

const HEADER: usize = 16;
/// A new segment is started past this size, so old ones can be deleted.
pub const SEGMENT_BYTES: u64 = 8 * 1024 * 1024;

pub struct Wal {
    dir: PathBuf,
    file: File,
    segment_bytes: u64,
    /// Segment size at which `segment_full` says to rotate.
    pub limit: u64,
}

fn segment_path(dir: &Path, first: Revision) -> PathBuf {
    dir.join(format!("{first:020}.wal"))
}

/// Segments in order, by the first revision they may hold.
fn segments(dir: &Path) -> io::Result<Vec<(Revision, PathBuf)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if let Some(first) = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|n| n.parse().ok())
        {
            out.push((first, p));
        }
    }
    out.sort();
    Ok(out)
}

/// Appends one record to `buf`.
pub fn encode(buf: &mut Vec<u8>, rev: Revision, payload: &[u8]) {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&rev.to_be_bytes());
    crc.update(payload);
    buf.extend_from_slice(&rev.to_be_bytes());
    buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    buf.extend_from_slice(&crc.finalize().to_be_bytes());
    buf.extend_from_slice(payload);
}

/// What reading one segment found.
#[derive(Debug, PartialEq)]
enum Scan {
    Clean,
    /// A torn final record starts here.
    Torn(usize),
    /// A bad record with more data after it.
    Corrupt {
        at: usize,
        reason: String,
    },
}

/// Reads a segment's records into `out`. Only in the `newest` segment may a bad record be
/// a torn write: when it is the last one (it reaches the end of the file, or only zeros
/// follow it).
fn scan(data: &[u8], newest: bool, out: &mut Vec<(Revision, Vec<u8>)>) -> Scan {
    let mut at = 0;
    while at < data.len() {
        let rest = &data[at..];
        let zeros = || rest.iter().all(|b| *b == 0);
        if rest.len() < HEADER {
            return if newest {
                Scan::Torn(at)
            } else {
                Scan::Corrupt {
                    at,
                    reason: format!("{} stray bytes after the last record", rest.len()),
                }
            };
        }
        let rev = u64::from_be_bytes(rest[..8].try_into().expect("8 bytes"));
        let len = u32::from_be_bytes(rest[8..12].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_be_bytes(rest[12..16].try_into().expect("4 bytes"));
        let Some(payload) = rest.get(HEADER..HEADER + len) else {
            return if newest {
                Scan::Torn(at)
            } else {
                Scan::Corrupt {
                    at,
                    reason: "a record runs past the end of the segment".into(),
                }
            };
        };
        let mut h = crc32fast::Hasher::new();
        h.update(&rev.to_be_bytes());
        h.update(payload);
        if h.finalize() != crc {
            if newest && (HEADER + len == rest.len() || zeros()) {
                return Scan::Torn(at);
            }
            return Scan::Corrupt {
                at,
                reason: format!(
                    "checksum mismatch in the record of revision {rev}, with {} more bytes of records after it",
                    rest.len().saturating_sub(HEADER + len)
                ),
            };
        }
        out.push((rev, payload.to_vec()));
        at += HEADER + len;
    }
    Scan::Clean
}

/// Reads every record of a segment's bytes (the fuzzers' entry point); how many were intact.
pub(crate) fn scan_all(data: &[u8], newest: bool) -> usize {
    let mut out = Vec::new();
    let _ = scan(data, newest, &mut out);
    out.len()
}

fn truncate(path: &Path, at: usize) -> io::Result<()> {
    let f = OpenOptions::new().write(true).open(path)?;
    f.set_len(at as u64)?;
    f.sync_all()
}

/// Every record in `dir`, in order, for start-up: a torn final record is cut off the log;
/// other damage is an error unless `repair`, which truncates the log at the damage and
/// moves the segments after it into `dir/damaged-<time>/`.
pub fn recover(dir: &Path, repair: bool) -> Result<Vec<(Revision, Vec<u8>)>, StoreError> {
    let mut out = Vec::new();
    if !dir.exists() {
        return Ok(out);
    }
    let io = |what: &'static str| move |e: io::Error| StoreError::Backend(format!("{what}: {e}"));
    let segs = segments(dir).map_err(io("reading the write-ahead log"))?;
    for (i, (_, path)) in segs.iter().enumerate() {
        let data = std::fs::read(path).map_err(io("reading the write-ahead log"))?;
        match scan(&data, i + 1 == segs.len(), &mut out) {
            Scan::Clean => {}
            Scan::Torn(at) => {
                tracing::warn!(segment = %path.display(), offset = at, bytes = data.len() - at,
                    "dropping a torn final record of the write-ahead log (a write that was never acknowledged)");
                truncate(path, at).map_err(io("truncating a torn write-ahead log record"))?;
            }
            Scan::Corrupt { at, reason } if !repair => {
                return Err(StoreError::Corrupt(format!(
                    "write-ahead log segment {} is damaged at byte {at}: {reason}. Starting \
                     would drop acknowledged writes; restart with --repair to truncate the log \
                     there (what follows is kept aside)",
                    path.display()
                )));
            }
            Scan::Corrupt { at, reason } => {
                let aside = dir.join(format!("damaged-{}", jiff::Timestamp::now().as_second()));
                std::fs::create_dir_all(&aside).map_err(io("repairing the write-ahead log"))?;
                std::fs::write(aside.join("tail"), &data[at..])
                    .map_err(io("repairing the write-ahead log"))?;
                truncate(path, at).map_err(io("repairing the write-ahead log"))?;
                for (_, later) in &segs[i + 1..] {
                    let name = later.file_name().expect("a segment has a name");
                    std::fs::rename(later, aside.join(name))
                        .map_err(io("repairing the write-ahead log"))?;
                }
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io("repairing the write-ahead log"))?;
                tracing::warn!(segment = %path.display(), offset = at, %reason, kept = %aside.display(),
                    later_segments = segs.len() - i - 1, "repaired the write-ahead log: truncated it at the damage");
                break;
            }
        }
    }
    Ok(out)
}

/// The revision before the newest segment's first (where revisions continue when the
/// log holds no record), or 0 for an empty log.
pub fn segment_floor(dir: &Path) -> io::Result<Revision> {
    if !dir.exists() {
        return Ok(0);
    }
    Ok(segments(dir)?
        .last()
        .map_or(0, |(first, _)| first.saturating_sub(1)))
}

/// The revision before the oldest retained record: history reaches back to just after it.
pub fn oldest(dir: &Path) -> io::Result<Option<Revision>> {
    if !dir.exists() {
        return Ok(None);
    }
    Ok(segments(dir)?
        .first()
        .map(|(first, _)| first.saturating_sub(1)))
}

/// Removes the segments whose records all lie at or below `through`, never the newest.
/// `raise_oldest` is told the new oldest revision before any file goes.
pub fn first_kept_after_removing(
    dir: &Path,
    through: Revision,
    raise_oldest: impl Fn(Revision) -> Revision,
) -> io::Result<Option<Revision>> {
    let segs = segments(dir)?;
    let doomed: Vec<&PathBuf> = segs
        .windows(2)
        .filter(|p| p[1].0 <= through + 1)
        .map(|p| &p[0].1)
        .collect();
    let Some(last_doomed) = doomed.len().checked_sub(1) else {
        return Ok(None);
    };
    let new_oldest = segs[last_doomed + 1].0 - 1;
    raise_oldest(new_oldest);
    for p in doomed {
        std::fs::remove_file(p)?;
    }
    Ok(Some(new_oldest))
}

/// Intact records with `from < rev <= to`, in order.
pub fn read_range(
    dir: &Path,
    from: Revision,
    to: Revision,
) -> io::Result<Vec<(Revision, Vec<u8>)>> {
    let mut out = Vec::new();
    if !dir.exists() {
        return Ok(out);
    }
    let segs = segments(dir)?;
    for (i, (first, path)) in segs.iter().enumerate() {
        let end = segs.get(i + 1).map_or(Revision::MAX, |(next, _)| next - 1);
        if end <= from || *first > to {
            continue;
        }
        let mut data = Vec::new();
        match File::open(path) {
            Ok(mut f) => f.read_to_end(&mut data)?,
            // Removed by a checkpoint meanwhile: the caller sees a gap.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let mut at = 0;
        while data.len() - at >= HEADER {
            let rev = u64::from_be_bytes(data[at..at + 8].try_into().expect("8 bytes"));
            let len =
                u32::from_be_bytes(data[at + 8..at + 12].try_into().expect("4 bytes")) as usize;
            let crc = u32::from_be_bytes(data[at + 12..at + 16].try_into().expect("4 bytes"));
            let Some(payload) = data.get(at + HEADER..at + HEADER + len) else {
                break;
            };
            let mut h = crc32fast::Hasher::new();
            h.update(&rev.to_be_bytes());
            h.update(payload);
            if h.finalize() != crc {
                break;
            }
            if rev > from && rev <= to {
                out.push((rev, payload.to_vec()));
            }
            at += HEADER + len;
        }
    }
    Ok(out)
}

impl Wal {
    /// Starts a new segment in `dir` for records from `next` on (older segments stay as
    /// history). A segment already named so holds no intact record and is replaced.
    pub fn open_next(dir: &Path, next: Revision) -> io::Result<Wal> {
        std::fs::create_dir_all(dir)?;
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(segment_path(dir, next))?;
        File::open(dir)?.sync_all()?;
        Ok(Wal {
            dir: dir.to_path_buf(),
            file,
            segment_bytes: 0,
            limit: SEGMENT_BYTES,
        })
    }

    /// Writes `records` (already encoded) and waits until they are on disk.
    pub fn write_durable(&mut self, records: &[u8]) -> io::Result<()> {
        self.file.write_all(records)?;
        self.file.sync_data()?;
        self.segment_bytes += records.len() as u64;
        Ok(())
    }

    pub fn segment_full(&self) -> bool {
        self.segment_bytes >= self.limit
    }

    /// Starts a new segment for records from `next` on.
    pub fn rotate(&mut self, next: Revision) -> io::Result<()> {
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(segment_path(&self.dir, next))?;
        File::open(&self.dir)?.sync_all()?;
        self.segment_bytes = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log of two segments: revisions 1-3, then 4-6; returns the segments' paths.
    fn two_segments(dir: &Path) -> (PathBuf, PathBuf) {
        let mut wal = Wal::open_next(dir, 1).unwrap();
        for first in [1, 4] {
            if first > 1 {
                wal.rotate(first).unwrap();
            }
            let mut buf = Vec::new();
            for rev in first..first + 3 {
                encode(&mut buf, rev, format!("payload {rev}").as_bytes());
            }
            wal.write_durable(&buf).unwrap();
        }
        (segment_path(dir, 1), segment_path(dir, 4))
    }

    fn revs(records: &[(Revision, Vec<u8>)]) -> Vec<Revision> {
        records.iter().map(|(r, _)| *r).collect()
    }

    fn flip(path: &Path, at: usize) {
        let mut data = std::fs::read(path).unwrap();
        data[at] ^= 0x40;
        std::fs::write(path, data).unwrap();
    }

    /// The byte offset of revision `rev`'s payload in a segment made by `two_segments`.
    fn payload_of(first: Revision, rev: Revision) -> usize {
        let one = HEADER + "payload 1".len();
        (rev - first) as usize * one + HEADER
    }

    #[test]
    fn a_torn_final_record_is_dropped_and_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let (_, newest) = two_segments(dir.path());
        let len = std::fs::metadata(&newest).unwrap().len();
        // Cut short, inside the last record.
        let f = OpenOptions::new().write(true).open(&newest).unwrap();
        f.set_len(len - 3).unwrap();
        assert_eq!(revs(&recover(dir.path(), false).unwrap()), [1, 2, 3, 4, 5]);
        // Cut off for good: once a newer segment exists, it is not taken for damage.
        let mut wal = Wal::open_next(dir.path(), 6).unwrap();
        let mut buf = Vec::new();
        encode(&mut buf, 6, b"again");
        wal.write_durable(&buf).unwrap();
        assert_eq!(
            revs(&recover(dir.path(), false).unwrap()),
            [1, 2, 3, 4, 5, 6]
        );
    }

    #[test]
    fn a_zero_filled_tail_is_a_torn_write() {
        let dir = tempfile::tempdir().unwrap();
        let (_, newest) = two_segments(dir.path());
        let mut f = OpenOptions::new().append(true).open(&newest).unwrap();
        f.write_all(&[0; 300]).unwrap();
        assert_eq!(
            revs(&recover(dir.path(), false).unwrap()),
            [1, 2, 3, 4, 5, 6]
        );
        // A bad checksum in the final record is a torn write too.
        flip(&newest, payload_of(4, 6) + 2);
        assert_eq!(revs(&recover(dir.path(), false).unwrap()), [1, 2, 3, 4, 5]);
    }

    /// Regression: a bad checksum in the middle of the newest segment was taken for a torn
    /// tail, silently dropping the acknowledged writes after it.
    #[test]
    fn damage_before_acknowledged_records_stops_start_up_until_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let (_, newest) = two_segments(dir.path());
        flip(&newest, payload_of(4, 5) + 1);
        let err = recover(dir.path(), false).unwrap_err().to_string();
        assert!(
            err.contains("checksum mismatch in the record of revision 5")
                && err.contains("--repair"),
            "{err}"
        );
        // Nothing was changed by the refusal.
        assert!(matches!(
            recover(dir.path(), false),
            Err(StoreError::Corrupt(_))
        ));
        assert_eq!(revs(&recover(dir.path(), true).unwrap()), [1, 2, 3, 4]);
        assert_eq!(revs(&recover(dir.path(), false).unwrap()), [1, 2, 3, 4]);

        // Damage in an older segment, even at its end, is never a torn write.
        let dir = tempfile::tempdir().unwrap();
        let (oldest2, _) = two_segments(dir.path());
        flip(&oldest2, payload_of(1, 3) + 1);
        assert!(recover(dir.path(), false).is_err());
        assert_eq!(revs(&recover(dir.path(), true).unwrap()), [1, 2]);
        let kept: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("damaged-"))
            .collect();
        assert_eq!(kept.len(), 1, "the rest is kept aside");
        assert!(kept[0].path().join("00000000000000000004.wal").exists());
    }

    #[test]
    fn records_survive_and_a_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open_next(dir.path(), 1).unwrap();
        let mut buf = Vec::new();
        encode(&mut buf, 1, b"one");
        encode(&mut buf, 2, b"two");
        wal.write_durable(&buf).unwrap();
        wal.rotate(3).unwrap();
        let mut torn = Vec::new();
        encode(&mut torn, 3, b"three");
        wal.write_durable(&torn[..torn.len() - 2]).unwrap();
        let got = recover(dir.path(), false).unwrap();
        assert_eq!(got, vec![(1, b"one".to_vec()), (2, b"two".to_vec())]);
        assert_eq!(
            read_range(dir.path(), 1, 2).unwrap(),
            vec![(2, b"two".to_vec())]
        );
        assert_eq!(
            first_kept_after_removing(dir.path(), 2, |o| o).unwrap(),
            Some(2)
        );
        assert_eq!(segments(dir.path()).unwrap().len(), 1);
        assert_eq!(oldest(dir.path()).unwrap(), Some(2));
        assert_eq!(segment_floor(dir.path()).unwrap(), 2);
    }
}
