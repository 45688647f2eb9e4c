//! Container logs in the CRI format (`<RFC3339Nano> <stream> <F|P> <text>`), one file per
//! container run, rotated by size; and reading them back for `kubectl logs`.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// When a container's log rotates, as the kubelet's `containerLogMaxSize` and
/// `containerLogMaxFiles`: past `max_bytes`, keeping `max_files` files (the current one and
/// `<run>.log.1` (newest) up to `<run>.log.<max_files - 1>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rotation {
    pub max_bytes: u64,
    /// At least 2 (the kubelet's rule).
    pub max_files: u32,
}

impl Default for Rotation {
    /// The kubelet's defaults: 10 MiB, 5 files.
    fn default() -> Rotation {
        Rotation {
            max_bytes: 10 * 1024 * 1024,
            max_files: 5,
        }
    }
}

/// The `n`th rotated piece of the log at `path` (1: the newest).
fn rotated(path: &Path, n: u32) -> PathBuf {
    path.with_extension(format!("log.{n}"))
}

/// The rotated pieces of the log at `path` that exist, oldest first.
fn rotated_pieces(path: &Path) -> Vec<PathBuf> {
    let mut pieces: Vec<PathBuf> = (1..)
        .map(|n| rotated(path, n))
        .take_while(|p| p.exists())
        .collect();
    pieces.reverse();
    pieces
}
/// A line longer than this is written as partial (`P`) pieces.
const MAX_LINE: usize = 16 * 1024;

struct Inner {
    path: PathBuf,
    /// Opened (and its directory made) on the first line: a pod's start makes no files.
    file: Option<File>,
    size: u64,
    rotation: Rotation,
    /// Unfinished line per stream (stdout, stderr).
    partial: [Vec<u8>; 2],
    /// Closed after a kill: nothing is written (or created) any more.
    closed: bool,
}

/// The writer both of a container's streams share.
#[derive(Clone)]
pub struct LogFile(Arc<Mutex<Inner>>);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout = 0,
    Stderr = 1,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

fn timestamp() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        .to_string()
}

impl Inner {
    /// Shifts the rotated pieces one up (the oldest beyond the limit goes) and makes the
    /// current file the newest piece.
    fn rotate(&mut self) -> io::Result<()> {
        let keep = self.rotation.max_files.max(2) - 1;
        for n in (1..=keep).rev() {
            let from = rotated(&self.path, n);
            let result = if n == keep {
                std::fs::remove_file(&from)
            } else {
                std::fs::rename(&from, rotated(&self.path, n + 1))
            };
            match result {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        std::fs::rename(&self.path, rotated(&self.path, 1))?;
        self.file = None;
        Ok(())
    }

    /// The open file, appending to what an earlier agent wrote.
    fn file(&mut self) -> io::Result<&mut File> {
        if self.file.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.size = file.metadata()?.len();
            self.file = Some(file);
        }
        Ok(self.file.as_mut().expect("just opened"))
    }
}

impl LogFile {
    /// A container run's log, rotated as `rotation` says. Nothing is written to disk until
    /// the first line (or the run's end).
    pub fn new(path: &Path, rotation: Rotation) -> LogFile {
        LogFile(Arc::new(Mutex::new(Inner {
            path: path.to_path_buf(),
            file: None,
            size: 0,
            rotation,
            partial: [Vec::new(), Vec::new()],
            closed: false,
        })))
    }

    /// The file the log is written to.
    pub fn path(&self) -> PathBuf {
        self.0.lock().expect("log lock").path.clone()
    }

    /// How the log rotates.
    pub fn rotation(&self) -> Rotation {
        self.0.lock().expect("log lock").rotation
    }

    fn line(inner: &mut Inner, stream: Stream, tag: char, text: &[u8]) -> io::Result<()> {
        let mut out = Vec::with_capacity(text.len() + 48);
        out.extend_from_slice(timestamp().as_bytes());
        out.push(b' ');
        out.extend_from_slice(stream.name().as_bytes());
        out.push(b' ');
        out.push(tag as u8);
        out.push(b' ');
        out.extend_from_slice(text);
        out.push(b'\n');
        inner.file()?;
        if inner.size > 0 && inner.size + out.len() as u64 > inner.rotation.max_bytes {
            inner.rotate()?;
        }
        inner.file()?.write_all(&out)?;
        inner.size += out.len() as u64;
        Ok(())
    }

    /// Appends output of `stream`, one log line per complete line.
    pub fn write(&self, stream: Stream, mut data: &[u8]) -> io::Result<()> {
        let mut inner = self.0.lock().expect("log lock");
        if inner.closed {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let s = stream as usize;
        while let Some(i) = data.iter().position(|b| *b == b'\n') {
            let mut line = std::mem::take(&mut inner.partial[s]);
            line.extend_from_slice(&data[..i]);
            Self::line(&mut inner, stream, 'F', &line)?;
            data = &data[i + 1..];
        }
        inner.partial[s].extend_from_slice(data);
        while inner.partial[s].len() >= MAX_LINE {
            let rest = inner.partial[s].split_off(MAX_LINE);
            let piece = std::mem::replace(&mut inner.partial[s], rest);
            Self::line(&mut inner, stream, 'P', &piece)?;
        }
        Ok(())
    }

    /// Writes out unfinished lines (at container exit). A run that printed nothing gets
    /// its empty file now, so that it counts among the container's runs.
    pub fn finish(&self) -> io::Result<()> {
        self.end(true)
    }

    /// Writes out unfinished lines of a killed run, creating nothing (its pod may be
    /// gone, files and all), and closes the log: later writes fail.
    pub fn finish_killed(&self) -> io::Result<()> {
        self.end(false)
    }

    fn end(&self, create: bool) -> io::Result<()> {
        let mut inner = self.0.lock().expect("log lock");
        if inner.closed {
            return Ok(());
        }
        inner.closed = !create;
        if !create && inner.file.is_none() {
            inner.partial = [Vec::new(), Vec::new()];
            return Ok(());
        }
        for stream in [Stream::Stdout, Stream::Stderr] {
            let rest = std::mem::take(&mut inner.partial[stream as usize]);
            if !rest.is_empty() {
                Self::line(&mut inner, stream, 'F', &rest)?;
            }
        }
        inner.file()?.flush()
    }

    /// An `AsyncWrite` for one of the streams (what WASI stdout/stderr write to).
    pub fn writer(&self, stream: Stream) -> LogWriter {
        LogWriter {
            log: self.clone(),
            stream,
        }
    }
}

pub struct LogWriter {
    log: LogFile,
    stream: Stream,
}

impl tokio::io::AsyncWrite for LogWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        // Local appends are short; doing them inline avoids a thread hop per write.
        Poll::Ready(self.log.write(self.stream, buf).map(|_| buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// One parsed CRI log line.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub time: jiff::Timestamp,
    pub stream: String,
    pub partial: bool,
    pub text: String,
}

pub fn parse_line(line: &str) -> Option<Entry> {
    let mut parts = line.splitn(4, ' ');
    let time = parts.next()?.parse().ok()?;
    let stream = parts.next()?.to_string();
    let partial = parts.next()? == "P";
    let text = parts.next().unwrap_or("").to_string();
    Some(Entry {
        time,
        stream,
        partial,
        text,
    })
}

/// Every entry of a container run's log (the oldest rotated piece first).
pub fn read(path: &Path) -> io::Result<Vec<Entry>> {
    let mut out = Vec::new();
    let mut files = rotated_pieces(path);
    files.push(path.to_path_buf());
    for p in files {
        match File::open(&p) {
            Ok(f) => {
                for line in BufReader::new(f).lines() {
                    if let Some(e) = parse_line(&line?) {
                        out.push(e);
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Reads a log as it grows, from where it left off: each call gives the whole lines
/// written since the last (the first, everything), across a rotation in between.
pub struct Follower {
    path: PathBuf,
    /// Bytes of the current file already given.
    pos: u64,
    /// The current file's inode when last read: another one means it was rotated.
    ino: Option<u64>,
}

impl Follower {
    pub fn new(path: &Path) -> Follower {
        Follower {
            path: path.to_path_buf(),
            pos: 0,
            ino: None,
        }
    }

    pub fn read_new(&mut self) -> io::Result<Vec<Entry>> {
        use std::os::unix::fs::MetadataExt;
        let mut out = Vec::new();
        let current = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        let ino = current.metadata()?.ino();
        if self.ino != Some(ino) {
            // First read: every rotated piece whole. After rotations: the rest of the piece
            // that was current, then the newer pieces whole (if it rotated away, they all).
            let pieces = rotated_pieces(&self.path);
            let was = match self.ino {
                None => None,
                Some(old) => pieces
                    .iter()
                    .position(|p| std::fs::metadata(p).is_ok_and(|m| m.ino() == old)),
            };
            let first = was.unwrap_or(0);
            for (i, p) in pieces.iter().enumerate().skip(first) {
                let from = if Some(i) == was { self.pos } else { 0 };
                match File::open(p) {
                    Ok(f) => {
                        lines_from(f, from, &mut out)?;
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            self.pos = 0;
            self.ino = Some(ino);
        }
        self.pos = lines_from(current, self.pos, &mut out)?;
        Ok(out)
    }
}

/// Parses the whole lines of `f` from byte `pos` into `out`; the position after them.
fn lines_from(mut f: File, pos: u64, out: &mut Vec<Entry>) -> io::Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    f.seek(SeekFrom::Start(pos))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    let whole = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    for line in String::from_utf8_lossy(&buf[..whole]).lines() {
        if let Some(e) = parse_line(line) {
            out.push(e);
        }
    }
    Ok(pos + whole as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follower_reads_only_what_is_new_across_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let log = LogFile::new(
            &path,
            Rotation {
                max_bytes: 200,
                max_files: 5,
            },
        );
        let mut f = Follower::new(&path);
        assert!(f.read_new().unwrap().is_empty());
        log.write(Stream::Stdout, b"one\ntwo\n").unwrap();
        let texts = |e: Vec<Entry>| e.into_iter().map(|e| e.text).collect::<Vec<_>>();
        assert_eq!(texts(f.read_new().unwrap()), ["one", "two"]);
        assert!(f.read_new().unwrap().is_empty());
        // Enough to rotate the 200-byte file: nothing lost, nothing twice.
        for i in 0..6 {
            log.write(Stream::Stdout, format!("line {i}\n").as_bytes())
                .unwrap();
        }
        let got = texts(f.read_new().unwrap());
        let want: Vec<String> = (0..6).map(|i| format!("line {i}")).collect();
        assert_eq!(got, want);
        assert!(path.with_extension("log.1").exists(), "rotated");
        // Several rotations between two reads: the rest of the old file, then the newer
        // pieces, in order.
        for i in 6..20 {
            log.write(Stream::Stdout, format!("line {i}\n").as_bytes())
                .unwrap();
        }
        assert!(path.with_extension("log.3").exists(), "rotated three times");
        let got = texts(f.read_new().unwrap());
        let want: Vec<String> = (6..20).map(|i| format!("line {i}")).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_log_file_is_made_on_the_first_line_or_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let (talks, silent) = (dir.path().join("a/0.log"), dir.path().join("b/0.log"));
        let log = LogFile::new(&talks, Rotation::default());
        assert!(!dir.path().join("a").exists(), "made before any output");
        log.write(Stream::Stdout, b"partial").unwrap();
        assert!(!talks.exists(), "made before a whole line");
        log.write(Stream::Stdout, b" line\n").unwrap();
        assert_eq!(read(&talks).unwrap()[0].text, "partial line");
        let quiet = LogFile::new(&silent, Rotation::default());
        quiet.finish().unwrap();
        assert!(silent.exists() && read(&silent).unwrap().is_empty());
    }

    /// Regression: a killed guest's writer could recreate its deleted pod's log directory.
    #[test]
    fn a_killed_run_writes_nothing_more() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pod/c/0.log");
        let log = LogFile::new(&path, Rotation::default());
        log.finish_killed().unwrap();
        assert!(log.write(Stream::Stdout, b"late\n").is_err());
        log.finish().unwrap();
        assert!(!dir.path().join("pod").exists(), "the log was recreated");
    }

    #[test]
    fn lines_are_written_in_cri_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c/0.log");
        let log = LogFile::new(&path, Rotation::default());
        log.write(Stream::Stdout, b"hello\nwor").unwrap();
        log.write(Stream::Stderr, b"oops\n").unwrap();
        log.write(Stream::Stdout, b"ld\ntail").unwrap();
        log.finish().unwrap();
        let entries = read(&path).unwrap();
        let got: Vec<(&str, &str)> = entries
            .iter()
            .map(|e| (e.stream.as_str(), e.text.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("stdout", "hello"),
                ("stderr", "oops"),
                ("stdout", "world"),
                ("stdout", "tail")
            ]
        );
        let raw = std::fs::read_to_string(&path).unwrap();
        assert!(
            raw.lines().next().unwrap().ends_with(" stdout F hello"),
            "{raw}"
        );
    }

    #[test]
    fn logs_rotate_by_size_keeping_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c/0.log");
        let rotation = Rotation {
            max_bytes: 1000,
            max_files: 3,
        };
        let log = LogFile::new(&path, rotation);
        // Each CRI line is ~50 bytes: 100 lines rotate several times.
        for i in 0..100 {
            log.write(Stream::Stdout, format!("line {i:03}\n").as_bytes())
                .unwrap();
        }
        log.finish().unwrap();
        let current = std::fs::metadata(&path).unwrap().len();
        let rotated = std::fs::metadata(path.with_extension("log.1"))
            .unwrap()
            .len();
        assert!(current <= 1000 && rotated <= 1000, "{current} {rotated}");
        assert!(dir.path().join("c/0.log.2").exists());
        assert!(
            !dir.path().join("c/0.log.3").exists(),
            "three files in all are kept"
        );
        let texts: Vec<String> = read(&path).unwrap().into_iter().map(|e| e.text).collect();
        // What is kept is the newest lines, in order, ending with the last one written.
        assert_eq!(texts.last().map(String::as_str), Some("line 099"));
        assert!(texts.len() > 10 && texts.len() < 100, "{}", texts.len());
        let first: usize = texts[0][5..].parse().unwrap();
        let expected: Vec<String> = (first..100).map(|i| format!("line {i:03}")).collect();
        assert_eq!(texts, expected);
        // A new run of the agent appends to the same file and keeps its size.
        let again = LogFile::new(&path, rotation);
        again.write(Stream::Stderr, b"after restart\n").unwrap();
        assert_eq!(read(&path).unwrap().last().unwrap().text, "after restart");
    }
}
