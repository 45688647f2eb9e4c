//! Network namespaces kept alive by a bind mount of their `ns/net` file (as `ip netns add`
//! does), so a namespace outlives the agent and runc containers can join it by path; and
//! entering one for a moment, to make a pod's sockets there (a socket belongs to the
//! namespace of the thread that creates it).

use std::cell::RefCell;
use std::fs::File;
use std::future::Future;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

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

/// The namespace the process started in: every thread returns to it. (The main thread's;
/// it never enters a pod's.)
fn host() -> std::io::Result<&'static OwnedFd> {
    static HOST: OnceLock<Result<OwnedFd, i32>> = OnceLock::new();
    HOST.get_or_init(|| {
        File::open("/proc/self/ns/net")
            .map(OwnedFd::from)
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
    })
    .as_ref()
    .map_err(|e| std::io::Error::from_raw_os_error(*e))
}

/// Moves the calling thread into the namespace `fd`.
fn set(fd: &OwnedFd) -> std::io::Result<()> {
    // Safety: setns with a valid namespace descriptor affects only this thread.
    check(unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) })
}

/// Whether any thread has entered a pod's namespace yet (before that, a new thread has
/// nothing to leave, and an agent without root could not).
static ENTERED: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// The pod namespace this thread is in (none: the host's).
    static CURRENT: RefCell<Option<Arc<Netns>>> = const { RefCell::new(None) };
}

/// For a runtime's `on_thread_start`: a thread started while its parent was inside a pod's
/// namespace (a blocking-pool thread spawned from a socket's first poll) inherited it, and
/// must not make the node's sockets there.
pub fn thread_started() {
    if ENTERED.load(Ordering::SeqCst) {
        if let Err(e) = host().and_then(set) {
            tracing::error!(error = %e, "a new thread cannot return to the node's network namespace");
            std::process::abort();
        }
    }
}

/// An open network namespace. A socket belongs to the namespace of the thread that makes
/// it, so a pod's sockets are made by entering its namespace for that moment only (a
/// `setns` there and one back, about a microsecond): its Wasm guests run on the agent's
/// own threads, which hold nothing per pod.
pub struct Netns {
    fd: OwnedFd,
    path: PathBuf,
}

impl Netns {
    pub fn open(path: &Path) -> std::io::Result<Arc<Netns>> {
        Ok(Arc::new(Netns {
            fd: File::open(path)?.into(),
            path: path.to_path_buf(),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves this thread into the namespace until the guard drops (which returns it to
    /// where it was: entries nest). Private: `run` and `polled` scope every guard, so
    /// guards drop in the order they were made.
    fn enter(self: &Arc<Self>) -> std::io::Result<Entered> {
        let prev = CURRENT.with(|c| c.borrow().clone());
        if prev.as_ref().is_some_and(|p| Arc::ptr_eq(p, self)) {
            return Ok(Entered {
                prev: None,
                moved: false,
                _here: Default::default(),
            });
        }
        // Known before leaving: the way back must not fail.
        host()?;
        set(&self.fd)?;
        ENTERED.store(true, Ordering::SeqCst);
        CURRENT.with(|c| *c.borrow_mut() = Some(self.clone()));
        Ok(Entered {
            prev,
            moved: true,
            _here: Default::default(),
        })
    }

    /// `f`, run on this thread inside the namespace.
    pub fn run<T>(self: &Arc<Self>, f: impl FnOnce() -> T) -> std::io::Result<T> {
        let _inside = self.enter()?;
        Ok(f())
    }

    /// `fut`, each poll of it inside the namespace (the sockets it makes as it goes are
    /// the namespace's; between polls the thread runs other tasks where it was).
    pub fn polled<F: Future + Unpin>(self: &Arc<Self>, fut: F) -> Polled<F> {
        Polled {
            ns: self.clone(),
            fut,
        }
    }
}

/// A thread inside a namespace; dropping it returns the thread.
struct Entered {
    prev: Option<Arc<Netns>>,
    moved: bool,
    /// Not `Send`: a guard held across an `await` would leave other tasks in the namespace.
    _here: std::marker::PhantomData<*const ()>,
}

impl Drop for Entered {
    fn drop(&mut self) {
        if !self.moved {
            return;
        }
        let back = match &self.prev {
            Some(ns) => set(&ns.fd),
            None => host().and_then(set),
        };
        if let Err(e) = back {
            // A thread stuck in a pod's namespace would make the node's sockets there.
            tracing::error!(error = %e, "a thread cannot leave a pod's network namespace");
            std::process::abort();
        }
        CURRENT.with(|c| *c.borrow_mut() = self.prev.take());
    }
}

/// A future polled inside a namespace ([`Netns::polled`]); an error: it could not enter.
pub struct Polled<F> {
    ns: Arc<Netns>,
    fut: F,
}

impl<F: Future + Unpin> Future for Polled<F> {
    type Output = std::io::Result<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let _inside = match this.ns.enter() {
            Ok(inside) => inside,
            Err(e) => return Poll::Ready(Err(e)),
        };
        Pin::new(&mut this.fut).poll(cx).map(Ok)
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

    fn inode(p: &str) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).unwrap().ino()
    }

    const HERE: &str = "/proc/thread-self/ns/net";

    #[test]
    fn a_pinned_namespace_is_entered_for_a_moment_and_left() {
        assert!(privileged(), "these tests need root (CI runs as root)");
        let dir = tempfile::tempdir().unwrap();
        let (p1, p2) = (dir.path().join("ns1"), dir.path().join("ns2"));
        create(&p1).unwrap();
        create(&p2).unwrap();
        assert!(exists(&p1));
        let host = inode(HERE);
        let (i1, i2) = (inode(p1.to_str().unwrap()), inode(p2.to_str().unwrap()));
        assert_ne!(i1, host);
        let (ns1, ns2) = (Netns::open(&p1).unwrap(), Netns::open(&p2).unwrap());
        // Entries nest: each guard returns the thread to where it was.
        let seen = ns1
            .run(|| {
                let outer = inode(HERE);
                let inner = ns2.run(|| inode(HERE)).unwrap();
                let again = ns1.run(|| inode(HERE)).unwrap();
                (outer, inner, again, inode(HERE))
            })
            .unwrap();
        assert_eq!(seen, (i1, i2, i1, i1));
        assert_eq!(inode(HERE), host);
        // A listener made inside is bound there: the host's loopback has no such port.
        let listener = ns1
            .run(|| std::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap()
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
        // A thread started inside inherits the namespace, and leaves it when told it
        // started (as the agent's runtime does for each of its threads).
        let (inherited, left) = ns1
            .run(|| {
                std::thread::spawn(|| {
                    let inherited = inode(HERE);
                    thread_started();
                    (inherited, inode(HERE))
                })
                .join()
                .unwrap()
            })
            .unwrap();
        assert_eq!((inherited, left), (i1, host));
        drop((listener, ns1, ns2));
        remove(&p1).unwrap();
        assert!(!p1.exists());
        remove(&p1).unwrap();
        remove(&p2).unwrap();
    }

    #[tokio::test]
    async fn a_polled_future_is_inside_only_while_it_runs() {
        assert!(privileged(), "these tests need root (CI runs as root)");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ns");
        create(&path).unwrap();
        let ns = Netns::open(&path).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let fut = ns.polled(Box::pin(async move {
            let before = inode(HERE);
            let _ = rx.await;
            (before, inode(HERE))
        }));
        let task = tokio::spawn(fut);
        tokio::task::yield_now().await;
        // The task waits; this thread is the host's again.
        assert_eq!(inode(HERE), inode("/proc/self/ns/net"));
        tx.send(()).unwrap();
        let ns_inode = inode(path.to_str().unwrap());
        assert_eq!(task.await.unwrap().unwrap(), (ns_inode, ns_inode));
        drop(ns);
        remove(&path).unwrap();
    }
}
