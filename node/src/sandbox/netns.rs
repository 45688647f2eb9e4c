//! Network namespaces kept alive by a bind mount of their `ns/net` file (as `ip netns add`
//! does), so a namespace outlives the agent and runc containers can join it by path; and the
//! threads that run a pod's Wasm guests inside one (a socket belongs to the namespace of the
//! thread that creates it).

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where named namespaces live, so `ip netns exec` sees them too.
pub const NETNS_DIR: &str = "/run/netns";

fn cstr(p: &Path) -> std::io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other)
}

fn check(r: libc::c_int) -> std::io::Result<()> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Creates a network namespace pinned at `path` (a new, empty file bind-mounted over by the
/// namespace). Nothing may exist at `path` yet.
pub fn create(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    let target = cstr(path)?;
    // A thread of its own: unshare moves only the calling thread into the new namespace.
    let made = std::thread::Builder::new()
        .name("skiff-netns".into())
        .spawn(move || -> std::io::Result<()> {
            let source = c"/proc/thread-self/ns/net";
            // Safety: plain syscalls with valid NUL-terminated strings.
            unsafe {
                check(libc::unshare(libc::CLONE_NEWNET))?;
                check(libc::mount(
                    source.as_ptr(),
                    target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ))
            }
        })?
        .join()
        .map_err(|_| std::io::Error::other("the namespace thread panicked"))?;
    if let Err(e) = made {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(())
}

/// Unpins and removes the namespace at `path` (it goes once nothing uses it). Missing is
/// fine: teardown may run twice.
pub fn remove(path: &Path) -> std::io::Result<()> {
    let target = cstr(path)?;
    // Safety: a plain syscall with a valid NUL-terminated string.
    let r = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        // EINVAL: not a mount point (the file of a failed create); ENOENT: gone.
        if !matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) {
            return Err(e);
        }
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Whether `path` is a pinned network namespace.
pub fn exists(path: &Path) -> bool {
    // The pinned file shows the nsfs inode: a different device than its directory's.
    use std::os::unix::fs::MetadataExt;
    match (
        std::fs::metadata(path),
        path.parent().map(std::fs::metadata),
    ) {
        (Ok(f), Some(Ok(d))) => f.dev() != d.dev(),
        _ => false,
    }
}

/// Moves the calling thread into the namespace `fd`.
fn enter(fd: &OwnedFd) -> std::io::Result<()> {
    // Safety: setns with a valid namespace descriptor affects only this thread.
    check(unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) })
}

/// A single-threaded tokio runtime whose threads (its own and its blocking pool's) all live
/// in one network namespace: tasks spawned on it create their sockets there. It stops when
/// dropped, dropping its tasks.
pub struct Executor {
    handle: tokio::runtime::Handle,
    _stop: tokio::sync::oneshot::Sender<()>,
    path: PathBuf,
}

/// The runtime's own thread runs only the guests' host calls (guests run on their own
/// fiber stacks); a small stack keeps a pod cheap.
const EXECUTOR_STACK: usize = 512 * 1024;

impl Executor {
    /// An executor of `threads` threads (1: a current-thread runtime) inside `netns`.
    pub fn start(netns: &Path, threads: usize) -> std::io::Result<Executor> {
        let fd: Arc<OwnedFd> = Arc::new(File::open(netns)?.into());
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let name = format!(
            "skiff-pod-{}",
            netns.file_name().unwrap_or_default().to_string_lossy()
        );
        std::thread::Builder::new()
            .name(name.chars().take(15).collect())
            .stack_size(EXECUTOR_STACK)
            .spawn(move || {
                let built = enter(&fd).and_then(|()| {
                    let each = fd.clone();
                    let mut builder = if threads > 1 {
                        let mut b = tokio::runtime::Builder::new_multi_thread();
                        b.worker_threads(threads);
                        b
                    } else {
                        tokio::runtime::Builder::new_current_thread()
                    };
                    builder
                        .enable_all()
                        .thread_stack_size(EXECUTOR_STACK)
                        .on_thread_start(move || {
                            if let Err(e) = enter(&each) {
                                // A blocking thread outside the namespace must not run.
                                tracing::error!(error = %e, "cannot enter the pod's network namespace");
                                std::process::abort();
                            }
                        })
                        .build()
                });
                match built {
                    Ok(rt) => {
                        let _ = handle_tx.send(Ok(rt.handle().clone()));
                        let _ = rt.block_on(stopped);
                        rt.shutdown_background();
                    }
                    Err(e) => {
                        let _ = handle_tx.send(Err(e));
                    }
                }
            })?;
        let handle = handle_rx
            .recv()
            .map_err(|_| std::io::Error::other("the pod's network thread ended"))??;
        Ok(Executor {
            handle,
            _stop: stop,
            path: netns.to_path_buf(),
        })
    }

    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    pub fn netns(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Whether this process may create network namespaces: the tests that need it run as
    /// root (CI does) and fail loudly otherwise rather than pass without checking.
    pub fn privileged() -> bool {
        // Safety: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    pub fn run_on<T: Send + 'static>(
        ex: &Executor,
        f: impl std::future::Future<Output = T> + Send + 'static,
    ) -> T {
        futures::executor::block_on(ex.handle().spawn(f)).unwrap()
    }

    fn inode(p: &str) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).unwrap().ino()
    }

    #[test]
    fn a_pinned_namespace_is_entered_by_its_executor_threads() {
        assert!(privileged(), "these tests need root (CI runs as root)");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ns1");
        create(&path).unwrap();
        assert!(exists(&path));
        let ns_inode = {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(&path).unwrap().ino()
        };
        assert_ne!(ns_inode, inode("/proc/self/ns/net"));
        let ex = Executor::start(&path, 1).unwrap();
        let (main, blocking) = run_on(&ex, async {
            let main = inode("/proc/thread-self/ns/net");
            let blocking = tokio::task::spawn_blocking(|| inode("/proc/thread-self/ns/net"))
                .await
                .unwrap();
            (main, blocking)
        });
        assert_eq!((main, blocking), (ns_inode, ns_inode));
        // A listener made there is bound inside: only its loopback, not the host's, has it.
        let listener = run_on(&ex, async { std::net::TcpListener::bind("0.0.0.0:0") }).unwrap();
        let port = listener.local_addr().unwrap().port();
        // The host has no such listener.
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
        drop(ex);
        remove(&path).unwrap();
        assert!(!path.exists());
        remove(&path).unwrap();
    }
}
