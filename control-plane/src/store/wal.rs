//! The write-ahead log that makes sled writes durable: every applied write is appended
//! here, and a write is acknowledged once its record is on disk (append + fdatasync, in
//! groups). sled itself flushes in the background; after a crash, records newer than
//! what sled kept are replayed. Segments are deleted once sled has flushed past them.
//!
//! A record is `rev (u64) | len (u32) | crc32 of rev and payload (u32) | payload`; a torn
//! record at the tail (a write that was never acknowledged) ends the log.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::Revision;

const HEADER: usize = 16;
/// A new segment is started past this size, so old ones can be deleted.
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

pub struct Wal {
    dir: PathBuf,
    file: File,
    segment_bytes: u64,
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
    let mut out = Vec::new();
    if !dir.exists() {
        return Ok(out);
    }
    for (_, path) in segments(dir)? {
        let mut data = Vec::new();
        File::open(&path)?.read_to_end(&mut data)?;
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
            out.push((rev, payload.to_vec()));
            at += HEADER + len;
        }
    }
    Ok(out)
}

impl Wal {
    /// Starts a fresh log in `dir` (after any replay), with records from `next` on.
    pub fn create(dir: &Path, next: Revision) -> io::Result<Wal> {
        std::fs::create_dir_all(dir)?;
        for (_, p) in segments(dir)? {
            std::fs::remove_file(p)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(segment_path(dir, next))?;
        File::open(dir)?.sync_all()?;
        Ok(Wal {
            dir: dir.to_path_buf(),
            file,
            segment_bytes: 0,
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
        self.segment_bytes >= SEGMENT_BYTES
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

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Deletes the segments whose records are all at or below `through` (now in sled).
pub fn remove_through(dir: &Path, through: Revision) -> io::Result<()> {
    let segs = segments(dir)?;
    for pair in segs.windows(2) {
        // A segment ends where the next one starts.
        if pair[1].0 <= through + 1 {
            std::fs::remove_file(&pair[0].1)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_and_a_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::create(dir.path(), 1).unwrap();
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
        remove_through(dir.path(), 2).unwrap();
        assert_eq!(segments(dir.path()).unwrap().len(), 1);
    }
}
