//! A read-only root file system that keeps `nosuid` and `nodev`. runc 1.1 makes a root
//! read-only by remounting it `MS_BIND|MS_REMOUNT|MS_RDONLY` alone, which drops the
//! mount's other flags, so a set-user-ID file of the image would work again. The agent
//! instead makes the mount points runc needs beneath the root (resolved in it, as runc
//! resolves them), remounts the root read-only keeping its flags, and does not ask runc.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use oci_spec::runtime::Spec;

/// Makes `spec`'s mount points and working directory under `rootfs`, then remounts
/// `rootfs` read-only, `nodev`, and `nosuid` unless `suid`. On an error nothing is
/// remounted: the caller leaves it to runc.
pub fn make_readonly(rootfs: &Path, spec: &Spec, suid: bool) -> std::io::Result<()> {
    let root = open(None, rootfs, libc::O_PATH | libc::O_DIRECTORY, 0)?;
    for m in spec.mounts().iter().flatten() {
        let bind = m.typ().as_deref() == Some("bind")
            || m.options()
                .iter()
                .flatten()
                .any(|o| o == "bind" || o == "rbind");
        let file = bind && m.source().as_ref().is_some_and(|s| s.is_file());
        ensure(&root, m.destination(), file)?;
    }
    if let Some(cwd) = spec.process().as_ref().map(|p| p.cwd()) {
        ensure(&root, cwd, false)?;
    }
    let target = CString::new(rootfs.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let flags = libc::MS_REMOUNT
        | libc::MS_BIND
        | libc::MS_RDONLY
        | libc::MS_NODEV
        | if suid { 0 } else { libc::MS_NOSUID };
    // Safety: mount with a valid path and null source, type and data.
    let r = unsafe {
        libc::mount(
            std::ptr::null(),
            target.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Makes `path` (a directory, or an empty file if `file`) beneath `root` unless it is
/// there, each component resolved inside `root` (symbolic links included), as runc's.
fn ensure(root: &OwnedFd, path: &Path, file: bool) -> std::io::Result<()> {
    let parts: Vec<&std::ffi::OsStr> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p),
            _ => None,
        })
        .collect();
    let mut prefix = std::path::PathBuf::new();
    for (i, part) in parts.iter().enumerate() {
        let parent = open(Some(root), &prefix, libc::O_PATH | libc::O_DIRECTORY, 0)?;
        prefix.push(part);
        if open(Some(root), &prefix, libc::O_PATH, 0).is_ok() {
            continue;
        }
        let name = CString::new(part.as_bytes()).map_err(std::io::Error::other)?;
        let last = i + 1 == parts.len();
        // The parent is O_PATH: its /proc link names it for the *at calls.
        let dir = open(
            None,
            Path::new(&format!("/proc/self/fd/{}", parent.as_raw_fd())),
            libc::O_DIRECTORY,
            0,
        )?;
        // Safety: *at calls on an open directory with a single-component name.
        let r = unsafe {
            if last && file {
                let fd = libc::openat(
                    dir.as_raw_fd(),
                    name.as_ptr(),
                    libc::O_CREAT
                        | libc::O_EXCL
                        | libc::O_WRONLY
                        | libc::O_CLOEXEC
                        | libc::O_NOFOLLOW,
                    0o644,
                );
                if fd >= 0 {
                    libc::close(fd);
                }
                fd.min(0)
            } else {
                libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o755)
            }
        };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::AlreadyExists {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// `openat2` of `path` under `root` resolved as if `root` were `/` (or plainly without a
/// root).
fn open(root: Option<&OwnedFd>, path: &Path, flags: i32, mode: u64) -> std::io::Result<OwnedFd> {
    let rel = if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    };
    let c = CString::new(rel.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.mode = mode;
    let dirfd = match root {
        Some(r) => {
            how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
            r.as_raw_fd()
        }
        None => libc::AT_FDCWD,
    };
    // Safety: openat2 with a valid path, an owned open_how and its size.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dirfd,
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // Safety: a descriptor just opened and owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mount points are made where runc will look for them: through the image's own
    /// links (an absolute one included), never outside the root.
    #[test]
    fn mount_points_are_made_beneath_the_root_through_its_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("usr/etc")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink("/usr/etc", root.join("etc")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
        let fd = open(None, &root, libc::O_PATH | libc::O_DIRECTORY, 0).unwrap();
        ensure(&fd, Path::new("/etc/hosts"), true).unwrap();
        assert!(root.join("usr/etc/hosts").is_file());
        ensure(&fd, Path::new("/data/cache"), false).unwrap();
        assert!(root.join("data/cache").is_dir());
        // `escape` names the host's directory by its absolute path: inside the root that
        // is `<root><outside>`, which is not there. Refused (runc is left to it), and
        // nothing is made outside.
        assert!(ensure(&fd, Path::new("/escape/x"), false).is_err());
        assert!(!outside.join("x").exists());
    }
}
