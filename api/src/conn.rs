//! What every server of Skiff's does with its connections, so that no client, however
//! many idle sockets it opens, stops it answering: the open-files limit is raised at
//! start, an accept error (EMFILE) backs off instead of spinning, connections beyond a
//! cap wait in the kernel's backlog, and a TLS handshake or a request's header must
//! arrive in time.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request's header may take to arrive (kube-apiserver's ReadHeaderTimeout).
pub const READ_HEADER_TIMEOUT: Duration = Duration::from_secs(32);
/// Connections a server holds at once, at most, by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 8192;

/// Raises the soft open-files limit to the hard one (as container runtimes' and
/// kube-apiserver's service units do): the usual soft limit of 1,024 is a few hundred
/// clients. Returns the limit now in force.
pub fn raise_open_files_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // Safety: getrlimit/setrlimit with a valid, owned struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    lim.rlim_cur
}

/// A listening socket whose accepted connections each hold a permit of the server's
/// cap, and whose accept errors back off.
pub struct Listener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
}

/// An accepted connection: its socket, its peer, and its share of the cap (dropped with
/// the connection).
pub type Accepted = (TcpStream, std::net::SocketAddr, OwnedSemaphorePermit);

impl Listener {
    /// `inner` with at most `max_connections` connections at once, and never more than
    /// half the open-files limit (the rest is the server's own files).
    pub fn new(inner: TcpListener, max_connections: usize) -> Listener {
        let files = raise_open_files_limit();
        let cap = max_connections.min((files / 2).max(16) as usize);
        Listener {
            inner,
            permits: Arc::new(Semaphore::new(cap)),
        }
    }

    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.inner.local_addr()
    }

    /// The next connection, once the cap allows one. An accept error (out of files,
    /// say) is waited out as Go's servers do: 5 ms, doubling, at most 1 s.
    pub async fn accept(&self) -> Accepted {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let mut delay = Duration::from_millis(5);
        loop {
            match self.inner.accept().await {
                Ok((tcp, peer)) => return (tcp, peer, permit),
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?delay, "accepting a connection failed");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_past_the_cap_wait_until_one_ends() {
        let l = Listener::new(TcpListener::bind("127.0.0.1:0").await.unwrap(), 1);
        let addr = l.local_addr().unwrap();
        let _a = TcpStream::connect(addr).await.unwrap();
        let first = l.accept().await;
        let _b = TcpStream::connect(addr).await.unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(200), l.accept()).await;
        assert!(waiting.is_err(), "a second connection past a cap of one");
        drop(first);
        let _second = tokio::time::timeout(Duration::from_secs(2), l.accept())
            .await
            .expect("accepted once the first ended");
    }
}
