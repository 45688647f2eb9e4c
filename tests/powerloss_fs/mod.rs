//! A FUSE file system that forgets what was not synced when the power is cut.
//!
//! Killing a process (even with SIGKILL) keeps everything it wrote: the kernel's page cache
//! survives it, so a durability test that only kills the server passes without a single
//! fsync. This file system keeps file contents written since the last `fsync`/`fdatasync`
//! of that file in its own memory, over a backing directory that holds only synced data.
//! [`PowerLossFs::power_cut`] unmounts it and throws that memory away: what is left is what
//! a machine that lost power would find on its disk.
//!
//! Model: file data is durable once the file is synced; namespace changes (create, mkdir,
//! rename, unlink) are durable at once, as on a journaling file system that orders them
//! before the data (lenient towards the program, strict about data). Every open bypasses
//! the kernel's page cache (direct I/O) and attributes are never cached, so nothing the
//! kernel keeps hides the loss.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    FileAttr, FileType, Filesystem, MountOption, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
};

const TTL: Duration = Duration::ZERO;
const ROOT: u64 = fuser::FUSE_ROOT_ID;

/// A write not yet synced.
enum Op {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

struct Fs {
    backing: PathBuf,
    /// Inode → path in the backing directory.
    paths: HashMap<u64, PathBuf>,
    /// Inode → its unsynced writes, in order.
    unsynced: HashMap<u64, Vec<Op>>,
}

fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

impl Fs {
    fn path(&self, ino: u64) -> Result<&PathBuf, i32> {
        self.paths.get(&ino).ok_or(libc::ENOENT)
    }

    fn child(&self, parent: u64, name: &OsStr) -> Result<PathBuf, i32> {
        Ok(self.path(parent)?.join(name))
    }

    /// The length a reader sees: the backing file's, changed by unsynced writes.
    fn len(&self, ino: u64, backing_len: u64) -> u64 {
        self.unsynced
            .get(&ino)
            .into_iter()
            .flatten()
            .fold(backing_len, |len, op| match op {
                Op::Write(at, data) => len.max(at + data.len() as u64),
                Op::SetLen(l) => *l,
            })
    }

    fn attr_of(&mut self, path: &Path) -> Result<FileAttr, i32> {
        let m = std::fs::symlink_metadata(path).map_err(|e| errno(&e))?;
        let ino = if path == self.backing { ROOT } else { m.ino() };
        self.paths.insert(ino, path.to_path_buf());
        let kind = if m.is_dir() {
            FileType::Directory
        } else if m.file_type().is_symlink() {
            FileType::Symlink
        } else {
            FileType::RegularFile
        };
        let size = if kind == FileType::RegularFile {
            self.len(ino, m.len())
        } else {
            m.len()
        };
        let time = |s: i64| UNIX_EPOCH + Duration::from_secs(s.max(0) as u64);
        Ok(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: time(m.atime()),
            mtime: time(m.mtime()),
            ctime: time(m.ctime()),
            crtime: time(m.ctime()),
            kind,
            perm: (m.mode() & 0o7777) as u16,
            nlink: m.nlink() as u32,
            uid: m.uid(),
            gid: m.gid(),
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    fn forget_path(&mut self, path: &Path) {
        let gone: Vec<u64> = self
            .paths
            .iter()
            .filter(|(_, p)| p.starts_with(path))
            .map(|(i, _)| *i)
            .collect();
        for ino in gone {
            self.paths.remove(&ino);
            self.unsynced.remove(&ino);
        }
    }
}

impl Filesystem for Fs {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        match self.child(parent, name).and_then(|p| self.attr_of(&p)) {
            Ok(attr) => reply.entry(&TTL, &attr, 0),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.path(ino).cloned().and_then(|p| self.attr_of(&p)) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let path = match self.path(ino) {
            Ok(p) => p.clone(),
            Err(e) => return reply.error(e),
        };
        if let Some(mode) = mode {
            let perms = std::fs::Permissions::from_mode(mode & 0o7777);
            if let Err(e) = std::fs::set_permissions(&path, perms) {
                return reply.error(errno(&e));
            }
        }
        if let Some(size) = size {
            self.unsynced.entry(ino).or_default().push(Op::SetLen(size));
        }
        match self.attr_of(&path) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&mut self, _req: &Request<'_>, ino: u64, reply: ReplyData) {
        match self.path(ino).map(std::fs::read_link) {
            Ok(Ok(target)) => reply.data(target.as_os_str().as_encoded_bytes()),
            Ok(Err(e)) => reply.error(errno(&e)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let made = self.child(parent, name).and_then(|p| {
            std::fs::create_dir(&p).map_err(|e| errno(&e))?;
            let perms = std::fs::Permissions::from_mode(mode & !umask & 0o7777);
            std::fs::set_permissions(&p, perms).map_err(|e| errno(&e))?;
            self.attr_of(&p)
        });
        match made {
            Ok(attr) => reply.entry(&TTL, &attr, 0),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        match self.child(parent, name) {
            Ok(p) => match std::fs::remove_file(&p) {
                Ok(()) => {
                    self.forget_path(&p);
                    reply.ok()
                }
                Err(e) => reply.error(errno(&e)),
            },
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        match self.child(parent, name) {
            Ok(p) => match std::fs::remove_dir(&p) {
                Ok(()) => {
                    self.forget_path(&p);
                    reply.ok()
                }
                Err(e) => reply.error(errno(&e)),
            },
            Err(e) => reply.error(e),
        }
    }

    fn symlink(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let made = self.child(parent, link_name).and_then(|p| {
            std::os::unix::fs::symlink(target, &p).map_err(|e| errno(&e))?;
            self.attr_of(&p)
        });
        match made {
            Ok(attr) => reply.entry(&TTL, &attr, 0),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        _flags: u32,
        reply: ReplyEmpty,
    ) {
        let (from, to) = match (self.child(parent, name), self.child(newparent, newname)) {
            (Ok(f), Ok(t)) => (f, t),
            (Err(e), _) | (_, Err(e)) => return reply.error(e),
        };
        // What `to` named is replaced, unsynced writes and all.
        let replaced: Vec<u64> = self
            .paths
            .iter()
            .filter(|(_, p)| p.starts_with(&to))
            .map(|(i, _)| *i)
            .collect();
        if let Err(e) = std::fs::rename(&from, &to) {
            return reply.error(errno(&e));
        }
        for ino in replaced {
            self.paths.remove(&ino);
            self.unsynced.remove(&ino);
        }
        for p in self.paths.values_mut() {
            if let Ok(rest) = p.strip_prefix(&from) {
                *p = to.join(rest);
            }
        }
        reply.ok()
    }

    fn open(&mut self, _req: &Request<'_>, _ino: u64, _flags: i32, reply: ReplyOpen) {
        reply.opened(0, fuser::consts::FOPEN_DIRECT_IO);
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let file = match self.path(ino).map(File::open) {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => return reply.error(errno(&e)),
            Err(e) => return reply.error(e),
        };
        let offset = offset.max(0) as u64;
        let mut buf = vec![0u8; size as usize];
        let mut filled = 0;
        while filled < buf.len() {
            match file.read_at(&mut buf[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) => return reply.error(errno(&e)),
            }
        }
        let backing_len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let end = offset + size as u64;
        for op in self.unsynced.get(&ino).into_iter().flatten() {
            match op {
                Op::SetLen(l) if *l < end => {
                    let from = l.saturating_sub(offset) as usize;
                    buf[from..].iter_mut().for_each(|b| *b = 0);
                }
                Op::SetLen(_) => {}
                Op::Write(at, data) => {
                    let (lo, hi) = ((*at).max(offset), (at + data.len() as u64).min(end));
                    if lo < hi {
                        buf[(lo - offset) as usize..(hi - offset) as usize]
                            .copy_from_slice(&data[(lo - at) as usize..(hi - at) as usize]);
                    }
                }
            }
        }
        let len = self.len(ino, backing_len);
        buf.truncate(len.saturating_sub(offset).min(size as u64) as usize);
        reply.data(&buf)
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        if !self.paths.contains_key(&ino) {
            return reply.error(libc::ENOENT);
        }
        self.unsynced
            .entry(ino)
            .or_default()
            .push(Op::Write(offset.max(0) as u64, data.to_vec()));
        reply.written(data.len() as u32)
    }

    fn flush(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _owner: u64, reply: ReplyEmpty) {
        reply.ok()
    }

    /// The one way data reaches the disk.
    fn fsync(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let Ok(path) = self.path(ino).cloned() else {
            return reply.error(libc::ENOENT);
        };
        let ops = self.unsynced.remove(&ino).unwrap_or_default();
        let synced = OpenOptions::new().write(true).open(&path).and_then(|f| {
            for op in &ops {
                match op {
                    Op::Write(at, data) => f.write_all_at(data, *at)?,
                    Op::SetLen(l) => f.set_len(*l)?,
                }
            }
            f.sync_all()
        });
        match synced {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn opendir(&mut self, _req: &Request<'_>, _ino: u64, _flags: i32, reply: ReplyOpen) {
        reply.opened(0, 0)
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let dir = match self.path(ino).map(std::fs::read_dir) {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => return reply.error(errno(&e)),
            Err(e) => return reply.error(e),
        };
        let mut entries = vec![
            (ino, FileType::Directory, ".".into()),
            (ino, FileType::Directory, "..".into()),
        ];
        for e in dir.flatten() {
            let Ok(m) = e.metadata() else { continue };
            let kind = if m.is_dir() {
                FileType::Directory
            } else if m.file_type().is_symlink() {
                FileType::Symlink
            } else {
                FileType::RegularFile
            };
            entries.push((m.ino(), kind, e.file_name()));
        }
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(ino, (i + 1) as i64, kind, name) {
                break;
            }
        }
        reply.ok()
    }

    fn fsyncdir(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _ds: bool, reply: ReplyEmpty) {
        // Namespace changes are durable at once in this model.
        reply.ok()
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        reply.statfs(1 << 24, 1 << 23, 1 << 23, 1 << 20, 1 << 19, 4096, 255, 4096)
    }

    fn access(&mut self, _req: &Request<'_>, _ino: u64, _mask: i32, reply: ReplyEmpty) {
        reply.ok()
    }

    fn create(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let made = self.child(parent, name).and_then(|p| {
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&p)
                .map_err(|e| errno(&e))?;
            let perms = std::fs::Permissions::from_mode(mode & !umask & 0o7777);
            std::fs::set_permissions(&p, perms).map_err(|e| errno(&e))?;
            self.attr_of(&p)
        });
        match made {
            Ok(attr) => reply.created(&TTL, &attr, 0, 0, fuser::consts::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }
}

/// The file system mounted at `mountpoint` over `backing`.
pub struct PowerLossFs {
    backing: PathBuf,
    mountpoint: PathBuf,
    session: Option<fuser::BackgroundSession>,
}

impl PowerLossFs {
    pub fn mount(backing: &Path, mountpoint: &Path) -> PowerLossFs {
        std::fs::create_dir_all(backing).unwrap();
        std::fs::create_dir_all(mountpoint).unwrap();
        let mut fs = PowerLossFs {
            backing: backing.to_path_buf(),
            mountpoint: mountpoint.to_path_buf(),
            session: None,
        };
        fs.start();
        fs
    }

    fn start(&mut self) {
        let fs = Fs {
            backing: self.backing.clone(),
            paths: HashMap::from([(ROOT, self.backing.clone())]),
            unsynced: HashMap::new(),
        };
        let options = [
            MountOption::FSName("skiff-powerloss".into()),
            MountOption::DefaultPermissions,
        ];
        self.session = Some(
            fuser::spawn_mount2(fs, &self.mountpoint, &options)
                .expect("mount the power-loss file system (needs /dev/fuse)"),
        );
    }

    /// Cuts the power: unmounts, losing every write not synced, and mounts again. Whoever
    /// had files open here must be gone (killed) first.
    pub fn power_cut(&mut self) {
        if let Some(s) = self.session.take() {
            s.join();
        }
        self.start();
    }
}

impl Drop for PowerLossFs {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            s.join();
        }
    }
}
