//! Unpacked image layers, content-addressed: each layer blob is unpacked once, into
//! `<dir>/<hex of its digest>/`, and shared by every image and container that uses it. OCI
//! whiteouts become overlayfs ones (`.wh.NAME` a 0/0 character device, `.wh..wh..opq` the
//! `trusted.overlay.opaque` attribute), so a container's root file system is an overlay of
//! the layer directories with a writable layer of its own on top. The blob's digest is
//! checked as it is read; a layer whose digest does not match is not kept.

use std::cell::Cell;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("layer {digest}: {source}")]
    Io {
        digest: String,
        source: std::io::Error,
    },
    #[error("layer digest mismatch: expected {expected}, got {actual}")]
    Digest { expected: String, actual: String },
    #[error("layer {digest}: unsupported media type {media_type}")]
    MediaType { digest: String, media_type: String },
    #[error("layer {digest}: entry {path:?}: {reason}")]
    Entry {
        digest: String,
        path: String,
        reason: String,
    },
}

/// How a layer blob is compressed, from its media type.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn of(media_type: &str) -> Option<Compression> {
        match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar" => Some(Compression::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
                Some(Compression::Gzip)
            }
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => {
                Some(Compression::Zstd)
            }
            _ => None,
        }
    }
}

#[derive(Clone)]
pub struct LayerStore {
    dir: PathBuf,
}

/// How many bytes of tar may still be unpacked, and the flag that says so.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub left: u64,
    pub flag: &'static str,
}

impl Budget {
    /// One layer's limit.
    pub fn layer(left: u64) -> Budget {
        Budget {
            left,
            flag: "--max-layer-size",
        }
    }
}

/// Reads through to `inner`, failing once more than the budget passed: a layer's
/// decompressed size is the layer's claim, not a promise (a gzip or zstd bomb).
pub struct Limited<R> {
    pub inner: R,
    pub budget: Budget,
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.budget.left = self.budget.left.checked_sub(n as u64).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::FileTooLarge,
                format!(
                    "unpacks to more than this node's limit ({})",
                    self.budget.flag
                ),
            )
        })?;
        Ok(n)
    }
}

/// The most bytes tar may read between two entries: their headers, with GNU long names
/// and links, PAX records and sparse maps, which tar keeps in memory whole (a layer may
/// declare a long name of gigabytes). Go's archive/tar, which containerd unpacks with,
/// allows 1 MiB for each.
pub const MAX_HEADER_BYTES: u64 = 4 << 20;

/// Bounds what tar reads for an entry's headers: wrap the layer's reader with
/// [`HeaderBound::wrap`] and take entries with [`HeaderBound::next`].
#[derive(Default)]
pub struct HeaderBound {
    seen: Rc<Cell<u64>>,
    bound: Rc<Cell<u64>>,
    /// Where the last entry's data ends, padded to a block.
    data_end: Cell<u64>,
}

/// A layer's reader counting what tar reads, which may not pass the bound.
pub struct Counted<R> {
    inner: R,
    seen: Rc<Cell<u64>>,
    bound: Rc<Cell<u64>>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.bound.get().saturating_sub(self.seen.get());
        if left == 0 && !buf.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("an entry's headers (long names, PAX records) take more than {MAX_HEADER_BYTES} bytes"),
            ));
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.seen.set(self.seen.get() + n as u64);
        Ok(n)
    }
}

impl HeaderBound {
    pub fn wrap<R: Read>(&self, inner: R) -> Counted<R> {
        self.bound.set(u64::MAX);
        Counted {
            inner,
            seen: self.seen.clone(),
            bound: self.bound.clone(),
        }
    }

    /// The next entry, tar reading at most [`MAX_HEADER_BYTES`] past the last one's data
    /// to find it. (Entries' data is bounded by the layer's limit.)
    pub fn next<'a, R: Read>(
        &self,
        entries: &mut tar::Entries<'a, R>,
    ) -> Option<std::io::Result<tar::Entry<'a, R>>> {
        self.bound
            .set(self.data_end.get().saturating_add(MAX_HEADER_BYTES));
        let next = entries.next();
        self.bound.set(u64::MAX);
        if let Some(Ok(e)) = &next {
            // The bytes tar takes for its data: a PAX size overrides the header's (which
            // may claim anything), but a sparse entry's size is its expanded one, and its
            // data in the archive is the header's.
            let size = if e.header().entry_type().is_gnu_sparse() {
                e.header().entry_size().unwrap_or(0)
            } else {
                e.size()
            };
            self.data_end.set(
                e.raw_file_position()
                    .saturating_add(size.div_ceil(512) * 512),
            );
        }
        next
    }
}

/// Reads through to `inner`, hashing what passes.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

fn hex_of(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
}

impl LayerStore {
    pub fn open(dir: &Path) -> std::io::Result<LayerStore> {
        std::fs::create_dir_all(dir)?;
        Ok(LayerStore {
            dir: dir.to_path_buf(),
        })
    }

    /// Where layer `digest` is (or would be) unpacked.
    pub fn path(&self, digest: &str) -> Option<PathBuf> {
        hex_of(digest).map(|hex| self.dir.join(hex))
    }

    /// Whether layer `digest` is unpacked already.
    pub fn has(&self, digest: &str) -> bool {
        self.path(digest).is_some_and(|p| p.is_dir())
    }

    /// Unpacks the layer blob read from `blob` (whose digest must be `digest`) unless it is
    /// already, reading at most `limit` bytes of tar; returns its directory. Blocking: run
    /// it off the async threads.
    pub fn unpack(
        &self,
        blob: impl Read,
        digest: &str,
        media_type: &str,
        limit: u64,
    ) -> Result<PathBuf, LayerError> {
        self.unpack_within(blob, digest, media_type, &mut Budget::layer(limit))
    }

    /// [`Self::unpack`] taking what it reads from `budget` (an image's, shared by its
    /// layers).
    pub fn unpack_within(
        &self,
        blob: impl Read,
        digest: &str,
        media_type: &str,
        budget: &mut Budget,
    ) -> Result<PathBuf, LayerError> {
        let io = |source| LayerError::Io {
            digest: digest.into(),
            source,
        };
        let target = self.path(digest).ok_or_else(|| LayerError::Digest {
            expected: "a sha256 digest".into(),
            actual: digest.into(),
        })?;
        if target.is_dir() {
            return Ok(target);
        }
        let compression = Compression::of(media_type).ok_or_else(|| LayerError::MediaType {
            digest: digest.into(),
            media_type: media_type.into(),
        })?;
        // Unpacked beside its final place, then renamed: a crash or a bad digest leaves
        // no half layer under the final name.
        let tmp = tempfile::Builder::new()
            .prefix(".unpacking-")
            .tempdir_in(&self.dir)
            .map_err(io)?;
        let root = tmp.path().join("root");
        std::fs::create_dir(&root).map_err(io)?;
        let mut hashing = Hashing {
            inner: blob,
            hash: Sha256::new(),
        };
        {
            let decompressed: Box<dyn Read + '_> = match compression {
                Compression::None => Box::new(&mut hashing),
                Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(&mut hashing)),
                Compression::Zstd => {
                    Box::new(zstd::stream::read::Decoder::new(&mut hashing).map_err(io)?)
                }
            };
            let mut limited = Limited {
                inner: decompressed,
                budget: *budget,
            };
            unpack_tar(&mut limited, &root, digest)?;
            *budget = limited.budget;
        }
        // Whatever the tar reader left unread still counts for the digest.
        std::io::copy(&mut hashing, &mut std::io::sink()).map_err(io)?;
        let actual = format!("sha256:{:x}", hashing.hash.finalize());
        if actual != digest {
            return Err(LayerError::Digest {
                expected: digest.into(),
                actual,
            });
        }
        match std::fs::rename(&root, &target) {
            Ok(()) => Ok(target),
            // Another pull unpacked it meanwhile.
            Err(_) if target.is_dir() => Ok(target),
            Err(e) => Err(io(e)),
        }
    }
}

/// The entry's path made relative and checked: no `..`, nothing outside the layer.
fn relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

fn unpack_tar(reader: impl Read, root: &Path, digest: &str) -> Result<(), LayerError> {
    // A layer's names may be as long as its headers allow: the message (a pod's status)
    // keeps the start of each.
    let entry_err = |path: &Path, reason: String| LayerError::Entry {
        digest: digest.into(),
        path: clip(path.display().to_string(), 256),
        reason: clip(reason, 1024),
    };
    let bound = HeaderBound::default();
    let mut archive = tar::Archive::new(bound.wrap(reader));
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    let mut entries = archive
        .entries()
        .map_err(|e| entry_err(Path::new(""), e.to_string()))?;
    let root_dir = cap_primitives::fs::open_ambient_dir(root, cap_primitives::ambient_authority())
        .map_err(|e| entry_err(Path::new(""), e.to_string()))?;
    while let Some(entry) = bound.next(&mut entries) {
        let mut entry = entry.map_err(|e| entry_err(Path::new(""), e.to_string()))?;
        let path = entry
            .path()
            .map_err(|e| entry_err(Path::new(""), e.to_string()))?
            .into_owned();
        let rel = relative(&path).ok_or_else(|| entry_err(&path, "leaves the layer".into()))?;
        let name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name == OPAQUE || name.starts_with(WHITEOUT) {
            let parent = rel.parent().unwrap_or(Path::new(""));
            let dir = beneath(&root_dir, parent).map_err(|e| entry_err(&path, e.to_string()))?;
            if name == OPAQUE {
                set_opaque(&dir).map_err(|e| entry_err(&path, e.to_string()))?;
            } else {
                let hidden = &name[WHITEOUT.len()..];
                whiteout(&dir, hidden).map_err(|e| entry_err(&path, e.to_string()))?;
            }
            continue;
        }
        // tar refuses entries (and link targets) that would land outside `root`.
        entry
            .unpack_in(root)
            .map_err(|e| entry_err(&path, with_causes(&e)))?;
    }
    Ok(())
}

/// `s` cut to at most `max` bytes (at a character boundary), saying so.
fn clip(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    s
}

/// An error with its causes (tar's say only "failed to unpack" on top).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        msg = format!("{msg}: {c}");
        cause = c.source();
    }
    msg
}

/// The layer's directory `rel`, open: missing ones are made beneath `root`, and no
/// symbolic link is followed out of it (a layer with `a -> /etc` and `a/x/.wh.y` must not
/// make `/etc/x`), so nothing a layer names is made or changed outside it.
fn beneath(root: &std::fs::File, rel: &Path) -> std::io::Result<std::fs::File> {
    let mut prefix = PathBuf::new();
    for c in rel.components() {
        prefix.push(c);
        let made =
            cap_primitives::fs::create_dir(root, &prefix, &cap_primitives::fs::DirOptions::new());
        match made {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
    }
    cap_primitives::fs::open_dir(root, rel)
}

/// An overlayfs whiteout in `dir`: a character device 0/0 named `name`, hiding that
/// entry of lower layers.
fn whiteout(dir: &std::fs::File, name: &str) -> std::io::Result<()> {
    use cap_primitives::fs::FollowSymlinks;
    if matches!(name, "" | "." | "..") || name.contains('/') {
        return Err(std::io::Error::other("not a whiteout of an entry"));
    }
    let path = Path::new(name);
    match cap_primitives::fs::stat(dir, path, FollowSymlinks::No) {
        Ok(m) if m.is_dir() => cap_primitives::fs::remove_dir_all(dir, path)?,
        Ok(_) => cap_primitives::fs::remove_file(dir, path)?,
        Err(_) => {}
    }
    let n = std::ffi::CString::new(name).map_err(std::io::Error::other)?;
    // Safety: mknodat on an open directory with a valid single-component name.
    let r = unsafe {
        libc::mknodat(
            dir.as_raw_fd(),
            n.as_ptr(),
            libc::S_IFCHR,
            libc::makedev(0, 0),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Marks an open directory opaque: lower layers' entries of it are hidden. (The
/// descriptor may be O_PATH, which fsetxattr refuses: its /proc link names it.)
fn set_opaque(dir: &std::fs::File) -> std::io::Result<()> {
    let p = std::ffi::CString::new(format!("/proc/self/fd/{}", dir.as_raw_fd()))
        .map_err(std::io::Error::other)?;
    let (name, value) = (c"trusted.overlay.opaque", b"y");
    // Safety: setxattr with valid strings and buffer.
    let r = unsafe {
        libc::setxattr(
            p.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header with the owner and time fields a real tar has (the reader wants them).
    fn owned_header() -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h
    }

    fn cpath(p: &Path) -> std::ffi::CString {
        use std::os::unix::ffi::OsStrExt;
        std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap()
    }

    fn layer(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            match data {
                Some(d) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(d.len() as u64);
                    h.set_mode(0o644);
                    h.set_cksum();
                    b.append_data(&mut h, path, *d).unwrap();
                }
                None => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    h.set_mode(0o755);
                    h.set_cksum();
                    b.append_data(&mut h, path, &[][..]).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    fn digest(b: &[u8]) -> String {
        format!("sha256:{:x}", Sha256::digest(b))
    }

    fn gzip(b: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    const ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

    #[test]
    fn layers_unpack_once_with_whiteouts_for_overlayfs() {
        let dir = tempfile::tempdir().unwrap();
        let store = LayerStore::open(dir.path()).unwrap();
        let blob = gzip(&layer(&[
            ("etc/", None),
            ("etc/motd", Some(b"hi\n")),
            ("etc/.wh.passwd", Some(b"")),
            ("var/cache/", None),
            ("var/cache/.wh..wh..opq", Some(b"")),
        ]));
        let d = digest(&blob);
        let root = store.unpack(&blob[..], &d, GZIP, 1 << 20).unwrap();
        assert_eq!(std::fs::read(root.join("etc/motd")).unwrap(), b"hi\n");
        use std::os::unix::fs::FileTypeExt;
        let wh = std::fs::symlink_metadata(root.join("etc/passwd")).unwrap();
        assert!(wh.file_type().is_char_device());
        assert!(!root.join("etc/.wh.passwd").exists());
        let mut buf = [0u8; 4];
        let c = cpath(&root.join("var/cache"));
        // Safety: lgetxattr into an owned buffer.
        let n = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                c"trusted.overlay.opaque".as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        assert_eq!(&buf[..n as usize], b"y");
        // Once: a second unpack reads nothing.
        assert_eq!(
            store.unpack(std::io::empty(), &d, GZIP, 1 << 20).unwrap(),
            root
        );
        assert!(store.has(&d));
    }

    /// A small blob that unpacks to more than the limit stops there, and keeps nothing.
    #[test]
    fn a_decompression_bomb_stops_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = LayerStore::open(dir.path()).unwrap();
        let zeros = vec![0u8; 256 << 10];
        let blob = gzip(&layer(&[("big", Some(&zeros))]));
        assert!(blob.len() * 50 < zeros.len(), "{}", blob.len());
        let d = digest(&blob);
        let err = store.unpack(&blob[..], &d, GZIP, 64 << 10).unwrap_err();
        assert!(err.to_string().contains("--max-layer-size"), "{err}");
        assert!(!store.has(&d));
        assert!(store.unpack(&blob[..], &d, GZIP, 1 << 20).is_ok());
    }

    /// tar keeps a long name or PAX records in memory whole: a layer declaring one of
    /// gigabytes would take the agent's memory. Past the bound the layer is refused;
    /// long names, PAX records and large files of real sizes unpack.
    #[test]
    fn an_entrys_headers_are_bounded_but_its_data_is_not() {
        let _serial = crate::CPU_SERIAL.blocking_lock();
        let dir = tempfile::tempdir().unwrap();
        let store = LayerStore::open(dir.path()).unwrap();
        let long = format!("{}file", "dir/".repeat(60));
        let big = vec![7u8; 6 << 20];
        let mut b = tar::Builder::new(Vec::new());
        let mut h = owned_header();
        h.set_size(3);
        h.set_mode(0o644);
        b.append_data(&mut h, &long, &b"hi\n"[..]).unwrap();
        b.append_pax_extensions([("path", &b"pax/named"[..])])
            .unwrap();
        let mut h = owned_header();
        h.set_size(big.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, "ignored", &big[..]).unwrap();
        let blob = gzip(&b.into_inner().unwrap());
        let root = store
            .unpack(&blob[..], &digest(&blob), GZIP, 1 << 30)
            .unwrap();
        assert_eq!(std::fs::read(root.join(&long)).unwrap(), b"hi\n");
        let named = std::fs::metadata(root.join("pax/named")).unwrap();
        assert_eq!(named.len(), big.len() as u64);

        // A GNU long name of 16 MiB, then an entry it would name.
        let name_len = 16u64 << 20;
        let mut tar: Vec<u8> = Vec::new();
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
        h.set_entry_type(tar::EntryType::GNULongName);
        h.set_size(name_len);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        tar.extend_from_slice(h.as_bytes());
        tar.resize(tar.len() + name_len as usize, b'a');
        let mut h = owned_header();
        h.set_path("short").unwrap();
        h.set_size(0);
        h.set_mode(0o644);
        h.set_cksum();
        tar.extend_from_slice(h.as_bytes());
        tar.resize(tar.len() + 1024, 0);
        let long_name = tar.clone();
        let blob = gzip(&tar);
        let d = digest(&blob);
        let err = store.unpack(&blob[..], &d, GZIP, 1 << 30).unwrap_err();
        let want = "headers (long names, PAX records) take more than 4194304 bytes";
        let msg = err.to_string();
        assert!(msg.contains(want), "{}", &msg[..msg.len().min(300)]);
        assert!(!store.has(&d));

        // The same after an entry whose header claims 8 GiB of data and whose PAX size
        // says none (tar reads none): the claim widens nothing.
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([("size", &b"0"[..])]).unwrap();
        let mut claims = Vec::new();
        let mut h = owned_header();
        h.set_path("claims").unwrap();
        h.set_size(8 << 30);
        h.set_mode(0o644);
        h.set_cksum();
        claims.extend_from_slice(h.as_bytes());
        // (Not into_inner: that ends the archive.)
        let mut tar = b.get_ref().clone();
        tar.extend_from_slice(&claims);
        tar.extend_from_slice(&long_name);
        let blob = gzip(&tar);
        let err = store
            .unpack(&blob[..], &digest(&blob), GZIP, 1 << 30)
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(want), "{}", &msg[..msg.len().min(300)]);
    }

    #[test]
    fn zstd_layers_unpack_and_bad_digests_or_escapes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = LayerStore::open(dir.path()).unwrap();
        let tar = layer(&[("a.txt", Some(b"zstd\n"))]);
        let blob = zstd::stream::encode_all(&tar[..], 3).unwrap();
        let root = store
            .unpack(&blob[..], &digest(&blob), ZSTD, 1 << 20)
            .unwrap();
        assert_eq!(std::fs::read(root.join("a.txt")).unwrap(), b"zstd\n");
        // A blob that is not what its digest says is not kept.
        let other = digest(b"something else");
        let err = store.unpack(&blob[..], &other, ZSTD, 1 << 20).unwrap_err();
        assert!(matches!(err, LayerError::Digest { .. }), "{err}");
        assert!(!store.has(&other));
        // Escaping entries are refused.
        let mut raw = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_mode(0o644);
        h.set_size(1);
        h.set_entry_type(tar::EntryType::Regular);
        // `append_data` refuses `..`; write the name the way a hostile tar would.
        h.as_gnu_mut().unwrap().name[..9].copy_from_slice(b"../escape");
        h.set_cksum();
        raw.append(&h, &b"x"[..]).unwrap();
        let refused = |raw: tar::Builder<Vec<u8>>| {
            let evil = raw.into_inner().unwrap();
            store
                .unpack(
                    &evil[..],
                    &digest(&evil),
                    "application/vnd.oci.image.layer.v1.tar",
                    1 << 20,
                )
                .unwrap_err()
        };
        let err = refused(raw);
        assert!(err.to_string().contains("leaves the layer"), "{err}");
        assert!(!dir.path().parent().unwrap().join("escape").exists());
        // Nor through a symbolic link the layer itself makes: `out -> <outside>`, then
        // `out/planted`.
        let outside = tempfile::tempdir().unwrap();
        let mut raw = tar::Builder::new(Vec::new());
        let mut link = owned_header();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        link.set_mode(0o777);
        raw.append_link(&mut link, "out", outside.path()).unwrap();
        let mut file = owned_header();
        file.set_entry_type(tar::EntryType::Regular);
        file.set_size(1);
        file.set_mode(0o644);
        raw.append_data(&mut file, "out/planted", &b"x"[..])
            .unwrap();
        let err = refused(raw);
        assert!(matches!(err, LayerError::Entry { .. }), "{err}");
        assert!(!outside.path().join("planted").exists());
        // Nor a whiteout or an opaque marker below such a link: nothing is made there.
        for marker in ["a/foo/bar/.wh.x", "a/foo/.wh..wh..opq"] {
            let mut raw = tar::Builder::new(Vec::new());
            let mut link = owned_header();
            link.set_entry_type(tar::EntryType::Symlink);
            link.set_size(0);
            link.set_mode(0o777);
            raw.append_link(&mut link, "a", outside.path()).unwrap();
            let mut wh = owned_header();
            wh.set_entry_type(tar::EntryType::Regular);
            wh.set_size(0);
            wh.set_mode(0o644);
            raw.append_data(&mut wh, marker, &b""[..]).unwrap();
            let err = refused(raw);
            assert!(matches!(err, LayerError::Entry { .. }), "{err}");
            assert!(
                !outside.path().join("foo").exists(),
                "{marker} made a directory outside"
            );
        }
    }
}
