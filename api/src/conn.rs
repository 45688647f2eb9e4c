//! What every server of Skiff's does with its connections, so that no client, however
//! many idle sockets it opens, stops it answering: the open-files limit is raised at
//! start, an accept error (EMFILE) backs off instead of spinning, connections beyond a
//! cap wait in the kernel's backlog, a TLS handshake or a request's header must arrive
//! in time, and a connection without a request for [`IDLE_TIMEOUT`] is closed.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request's header may take to arrive (kube-apiserver's ReadHeaderTimeout).
pub const READ_HEADER_TIMEOUT: Duration = Duration::from_secs(32);
/// Connections a server holds at once, at most, by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 8192;
/// How long a connection may have no request in flight before it is closed
/// (kube-apiserver's IdleTimeout): idle connections, HTTP/2 ones included, cannot hold
/// the server's cap. A watch is a request in flight until it ends.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Streams one HTTP/2 connection may have at once (informers multiplex many watches on
/// one; Kubernetes allows 250).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 1000;

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

/// Serves one accepted (and handshaken) connection with `app`: HTTP/1 with the header
/// timeout, HTTP/2 with pings that let a dead peer go, upgrades (exec, attach,
/// port-forward), and closed gracefully once idle for `idle`.
pub async fn serve_connection<I>(io: I, app: axum::Router, idle: Duration) -> Result<(), String>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use tower::ServiceExt;
    let activity = Activity::new();
    let counted = activity.clone();
    let svc = tower::service_fn(move |req: axum::extract::Request| {
        let in_flight = counted.begin();
        let app = app.clone();
        async move {
            let res = app.oneshot(req).await?;
            Ok::<_, std::convert::Infallible>(res.map(|body| {
                axum::body::Body::new(Tracked {
                    inner: body,
                    _in_flight: in_flight,
                })
            }))
        }
    });
    let svc = hyper_util::service::TowerToHyperService::new(
        svc.map_request(|r: hyper::Request<hyper::body::Incoming>| r.map(axum::body::Body::new)),
    );
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(READ_HEADER_TIMEOUT);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION);
    let conn = builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        done = conn.as_mut() => return done.map_err(|e| e.to_string()),
        _ = activity.idle(idle) => {}
    }
    // Idle: no new requests; one that raced in is answered first.
    conn.as_mut().graceful_shutdown();
    conn.await.map_err(|e| e.to_string())
}

/// A connection's requests in flight (until their responses' bodies end) and when the
/// last one ended.
#[derive(Clone)]
struct Activity(Arc<ActivityState>);

struct ActivityState {
    in_flight: AtomicUsize,
    start: Instant,
    /// When the last request ended, in milliseconds since `start`.
    last: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity(Arc::new(ActivityState {
            in_flight: AtomicUsize::new(0),
            start: Instant::now(),
            last: AtomicU64::new(0),
        }))
    }

    fn begin(&self) -> InFlight {
        self.0.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }

    /// How long nothing has been in flight (`None` while something is).
    fn idle_for(&self) -> Option<Duration> {
        if self.0.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.0.last.load(Ordering::SeqCst));
        Some(self.0.start.elapsed().saturating_sub(last))
    }

    /// Returns once the connection has been idle for `timeout`.
    async fn idle(&self, timeout: Duration) {
        loop {
            let wait = match self.idle_for() {
                Some(d) if d >= timeout => return,
                Some(d) => timeout - d,
                None => timeout,
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// One request in flight; ends when dropped.
struct InFlight(Activity);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0 .0;
        a.last
            .store(a.start.elapsed().as_millis() as u64, Ordering::SeqCst);
        a.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its request in flight until it ends.
struct Tracked<B> {
    inner: B,
    _in_flight: InFlight,
}

impl<B: http_body::Body + Unpin> http_body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
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

    use std::future::Future;

    /// A body sending a chunk every 100 ms, `left` more times.
    struct Ticks {
        left: u32,
        sleep: Pin<Box<tokio::time::Sleep>>,
    }

    impl http_body::Body for Ticks {
        type Data = axum::body::Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
            if self.left == 0 {
                return Poll::Ready(None);
            }
            if self.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.left -= 1;
            let next = tokio::time::Instant::now() + Duration::from_millis(100);
            self.sleep.as_mut().reset(next);
            Poll::Ready(Some(Ok(http_body::Frame::data("tick\n".into()))))
        }
    }

    /// Serves a test app on loopback, each connection idle after 300 ms.
    async fn server() -> std::net::SocketAddr {
        let app = axum::Router::new()
            .route("/", axum::routing::get(|| async { "ok" }))
            .route(
                "/watch",
                axum::routing::get(|| async {
                    axum::body::Body::new(Ticks {
                        left: 8,
                        sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
                    })
                }),
            );
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = l.accept().await.unwrap();
                let app = app.clone();
                tokio::spawn(serve_connection(tcp, app, Duration::from_millis(300)));
            }
        });
        addr
    }

    /// An HTTP/2 connection that sends nothing more after a request is closed once
    /// idle (it would otherwise hold a share of the cap for good); a streamed response
    /// longer than the idle time (a watch) is not cut.
    #[tokio::test]
    async fn idle_connections_are_closed_but_long_responses_are_not() {
        use http_body_util::BodyExt;
        let addr = server().await;
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .unwrap();
        let conn = tokio::spawn(conn);
        let get = |path: &str| {
            hyper::Request::get(format!("http://{addr}{path}"))
                .body(http_body_util::Empty::<axum::body::Bytes>::new())
                .unwrap()
        };
        let started = Instant::now();
        let res = send.send_request(get("/watch")).await.unwrap();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "tick\n".repeat(8));
        assert!(started.elapsed() >= Duration::from_millis(600));
        let res = send.send_request(get("/")).await.unwrap();
        assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "ok");
        let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
        assert!(ended.is_ok(), "the idle connection was not closed");

        // HTTP/1: the same after a request; and a connection that never sends one.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut all = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut all)).await;
        assert!(read.is_ok(), "the idle HTTP/1 connection was not closed");
        assert!(String::from_utf8_lossy(&all).ends_with("ok"), "{all:?}");
    }
}
