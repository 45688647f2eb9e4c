//! Limits a client can run into, found by black-box fuzzing of the running server: each
//! must end in a bounded, well-formed answer.

mod common;

use std::time::{Duration, Instant};

use common::Server;
use serde_json::json;
use skiff_control_plane::bench::client::{Client, Lines};

/// Regression: 50,000 unknown fields in an apply gave 50,003 `Warning` headers (the
/// official Python client refuses a response with more than 100 headers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warnings_are_capped_as_kube_apiserver_caps_them() {
    let s = Server::start();
    let c = Client::connect(&s.kubeconfig(), 1).await.unwrap();
    let mut data = serde_json::Map::new();
    let mut cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "noisy"}});
    for i in 0..50_000 {
        data.insert(format!("unknown{i}"), json!(i));
    }
    cm.as_object_mut().unwrap().extend(data);
    let path = "/api/v1/namespaces/default/configmaps/noisy?fieldManager=t&fieldValidation=Warn";
    let r = c
        .send(
            hyper::Method::PATCH,
            path,
            "application/apply-patch+yaml",
            cm.to_string().into(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let warnings = r.headers.get_all("warning").iter().count();
    assert!((1..=50).contains(&warnings), "{warnings} Warning headers");
    let text: usize = r.headers.get_all("warning").iter().map(|v| v.len()).sum();
    assert!(text < 6 * 1024, "{text} bytes of warnings");
}

async fn watch_lasts(c: &Client, query: &str) -> Duration {
    let t = Instant::now();
    let body = c
        .stream(&format!(
            "/api/v1/namespaces/default/configmaps?watch=true&{query}"
        ))
        .await
        .unwrap();
    let mut lines = Lines::new(body);
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        while lines.next().await.is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "a watch with {query} stayed open");
    t.elapsed()
}

/// Regression: a watch whose `timeoutSeconds` was given twice or was not positive stayed
/// open forever; kube-apiserver ends every watch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_watch_ends() {
    let s = Server::start();
    let c = Client::connect(&s.kubeconfig(), 1).await.unwrap();
    assert!(watch_lasts(&c, "timeoutSeconds=-5").await < Duration::from_secs(2));
    // The first of repeated parameters counts, as in Go.
    let d = watch_lasts(&c, "timeoutSeconds=1&timeoutSeconds=").await;
    assert!(
        d >= Duration::from_millis(900) && d < Duration::from_secs(5),
        "{d:?}"
    );
    let d = watch_lasts(&c, "timeoutSeconds=2").await;
    assert!(
        d >= Duration::from_millis(1900) && d < Duration::from_secs(6),
        "{d:?}"
    );
}

/// The server's CPU time so far (user + system), from /proc.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // Safety: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// Regression: a server started with the usual soft open-files limit (1,024) stopped
/// answering /readyz under 1,100 idle TCP connections, its accept loop spinning a whole
/// core at EMFILE (agents then missed their leases). Idle connections are now let go
/// after the TLS handshake timeout, the limit is raised at start, and accept errors
/// back off.
#[test]
fn idle_connections_neither_stop_the_server_nor_stay() {
    let s = Server::start_with_open_files(1024);
    let addr = format!("127.0.0.1:{}", s.port);
    let idle: Vec<std::net::TcpStream> = (0..1100)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    let before = cpu_time(s.pid());
    let t = Instant::now();
    let ready = s.ok(&["get", "--raw", "/readyz"]);
    assert_eq!(ready, "ok");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "/readyz took {:?}",
        t.elapsed()
    );
    std::thread::sleep(Duration::from_secs(2));
    let busy = cpu_time(s.pid()) - before;
    assert!(
        busy < Duration::from_millis(800),
        "the server used {busy:?} of CPU while idle"
    );
    // A connection that never says anything is closed once the handshake time is up.
    let mut first = &idle[0];
    first
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = [0u8; 1];
    let t = Instant::now();
    let n = std::io::Read::read(&mut first, &mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the idle connection got data");
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "closed after {:?}",
        t.elapsed()
    );
}
