//! The write-ahead log: every write is appended here and acknowledged once its record is
//! on disk (append + fdatasync, in groups). It is also the store's event history. Segments
//! are named by the first revision they hold; one is deleted once sled has been flushed
//! past it and it is older than the kept history.
//!
//! A record is `rev (u64) | len (u32) | crc32 of rev and payload (u32) | payload`; a torn
//! record at the tail (a write that was never acknowledged) ends the log.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::Revision;

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

/// Every intact record in `dir`, in order.
pub fn read_all(dir: &Path) -> io::Result<Vec<(Revision, Vec<u8>)>> {
    read_range(dir, 0, Revision::MAX)
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
        let got = read_all(dir.path()).unwrap();
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
