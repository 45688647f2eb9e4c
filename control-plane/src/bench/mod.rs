//! `skiff bench api`: load against a running API server (or one it starts), printing
//! throughput and p50/p99 latency for create, update, get, list and watch fan-out, next to
//! the peer every durable write is bounded by: an append + fdatasync on the same disk.

pub mod client;
pub mod scheduler;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Method;
use serde_json::json;

use client::{Client, ClientError, Lines};

#[derive(Debug, Clone, clap::Args)]
pub struct ApiBenchArgs {
    /// A running server's kubeconfig; without it the bench starts `skiff server` itself.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Objects to create and update.
    #[arg(long, default_value_t = 2000)]
    pub objects: usize,
    /// Requests in flight at once, for each run of creates and updates (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = vec![1, 4, 16])]
    pub concurrency: Vec<usize>,
    /// GET requests to time.
    #[arg(long, default_value_t = 100_000)]
    pub gets: usize,
    /// Concurrent watchers for the fan-out test.
    #[arg(long, default_value_t = 1000)]
    pub watchers: usize,
    /// Changes each watcher must receive.
    #[arg(long, default_value_t = 100)]
    pub watch_events: usize,
    /// HTTP/2 connections for request load.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0}")]
    Failed(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Latency samples of one phase.
struct Stats {
    name: &'static str,
    samples: Vec<Duration>,
    elapsed: Duration,
}

impl Stats {
    fn pct(&self, p: f64) -> Duration {
        let mut s = self.samples.clone();
        s.sort();
        s.get(((s.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or_default()
    }

    fn print(&self, peer_p99: Option<Duration>) {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let rate = self.samples.len() as f64 / self.elapsed.as_secs_f64();
        let mut line = format!(
            "{:<22} {:>7} ops {:>9.0}/s   p50 {:>7.3} ms   p99 {:>7.3} ms   max {:>7.3} ms",
            self.name,
            self.samples.len(),
            rate,
            ms(self.pct(0.50)),
            ms(self.pct(0.99)),
            ms(self.pct(1.0))
        );
        if let Some(peer) = peer_p99.filter(|p| !p.is_zero()) {
            line.push_str(&format!(
                "   p99 = {:.1}x fdatasync p99",
                self.pct(0.99).as_secs_f64() / peer.as_secs_f64()
            ));
        }
        println!("{line}");
    }
}

/// The peer: appending 1 KiB to a file and fdatasync'ing it, on the same filesystem.
fn fdatasync_peer(dir: &Path, n: usize) -> Result<Stats, BenchError> {
    use std::io::Write;
    let path = dir.join("fsync-peer.log");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    let block = vec![b'x'; 1024];
    let start = Instant::now();
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        samples.push(t.elapsed());
    }
    let elapsed = start.elapsed();
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(Stats {
        name: "append+fdatasync (peer)",
        samples,
        elapsed,
    })
}

/// Runs `total` requests, `concurrency` at a time, timing each.
async fn timed<F, Fut>(
    name: &'static str,
    total: usize,
    concurrency: usize,
    f: F,
) -> Result<Stats, BenchError>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), BenchError>> + Send,
{
    let f = Arc::new(f);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (f, next) = (f.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, BenchError>(samples);
                }
                let t = Instant::now();
                f(i).await?;
                samples.push(t.elapsed());
            }
        }));
    }
    let mut samples = Vec::with_capacity(total);
    for t in tasks {
        samples.extend(t.await.map_err(|e| BenchError::Failed(e.to_string()))??);
    }
    Ok(Stats {
        name,
        samples,
        elapsed: start.elapsed(),
    })
}

fn expect(resp: &client::Response, want: u16, what: &str) -> Result<(), BenchError> {
    if resp.status.as_u16() != want {
        return Err(BenchError::Failed(format!(
            "{what}: HTTP {} {}",
            resp.status,
            String::from_utf8_lossy(&resp.body)
        )));
    }
    Ok(())
}

/// A `skiff server` process a bench started (in a temporary directory under the current
/// one), stopped on drop.
pub struct BenchServer {
    child: std::process::Child,
    pub dir: tempfile::TempDir,
    /// The server's data directory and the kubeconfig it wrote there.
    pub data: PathBuf,
    pub kubeconfig: PathBuf,
}

impl Drop for BenchServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl BenchServer {
    /// Starts a server on a free loopback port and waits until it answers.
    pub fn start(prefix: &str) -> Result<BenchServer, BenchError> {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(std::env::current_dir()?)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let data = dir.path().join("data");
        let child = std::process::Command::new(std::env::current_exe()?)
            .args([
                "server",
                "--listen",
                &format!("127.0.0.1:{port}"),
                // A node's pods are at most its range's addresses: a /20 holds 4,093.
                "--node-cidr-mask-size",
                "20",
                "--data-dir",
            ])
            .arg(&data)
            .env("SKIFF_LOG", "warn")
            .spawn()?;
        let kubeconfig = data.join("kubeconfig");
        let server = BenchServer {
            child,
            dir,
            data,
            kubeconfig,
        };
        for _ in 0..600 {
            if server.kubeconfig.exists()
                && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            {
                return Ok(server);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(BenchError::Failed("the server did not start".into()))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

pub async fn run_api(args: ApiBenchArgs) -> Result<(), BenchError> {
    let (_own, kubeconfig, data_dir) = match &args.kubeconfig {
        Some(k) => (None, k.clone(), std::env::current_dir()?),
        None => {
            let s = BenchServer::start("skiff-bench")?;
            let (k, d) = (s.kubeconfig.clone(), s.data.clone());
            (Some(s), k, d)
        }
    };
    println!(
        "skiff bench api: {} objects per run, concurrency {:?}, {} GETs, {} watchers x {} events",
        args.objects, args.concurrency, args.gets, args.watchers, args.watch_events
    );
    let peer = fdatasync_peer(&data_dir, 2000)?;
    peer.print(None);
    let peer_p99 = peer.pct(0.99);

    let c = Client::connect(&kubeconfig, args.connections).await?;
    let ns = format!("bench-{}", std::process::id());
    let r = c
        .send(
            Method::POST,
            "/api/v1/namespaces",
            "application/json",
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
                .to_string()
                .into(),
        )
        .await?;
    expect(&r, 201, "create namespace")?;
    let base: Arc<str> = format!("/api/v1/namespaces/{ns}/configmaps").into();

    let levels: Vec<usize> = if args.concurrency.is_empty() {
        vec![1]
    } else {
        args.concurrency.clone()
    };
    for &conc in &levels {
        println!("-- {conc} concurrent client(s)");
        let (cl, b) = (c.clone(), base.clone());
        let create = timed("create (durable)", args.objects, conc, move |i| {
            let (c, base) = (cl.clone(), b.clone());
            async move {
                let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("cm-c{conc}-{i}"), "labels": {"bench": "api"}}, "data": {"key": "value", "n": i.to_string()}});
                let r = c.send(Method::POST, &base, "application/json", body.to_string().into()).await?;
                expect(&r, 201, "create")
            }
        })
        .await?;
        create.print(Some(peer_p99));
        let (cl, b) = (c.clone(), base.clone());
        let update = timed("update (durable)", args.objects, conc, move |i| {
            let (c, base) = (cl.clone(), b.clone());
            async move {
                let patch = json!({"data": {"n": format!("updated-{i}")}});
                let r = c
                    .send(
                        Method::PATCH,
                        &format!("{base}/cm-c{conc}-{i}"),
                        "application/merge-patch+json",
                        patch.to_string().into(),
                    )
                    .await?;
                expect(&r, 200, "update")
            }
        })
        .await?;
        update.print(Some(peer_p99));
    }
    let top = *levels.iter().max().unwrap_or(&1);
    println!("-- reads ({} objects stored)", args.objects * levels.len());
    let (cl, b, n) = (c.clone(), base.clone(), args.objects);
    let get = timed("get", args.gets, top * 4, move |i| {
        let (c, base) = (cl.clone(), b.clone());
        async move {
            let r = c
                .get(&format!("{base}/cm-c{top}-{}", (i * 7919) % n))
                .await?;
            expect(&r, 200, "get")
        }
    })
    .await?;
    get.print(None);

    let (cl, b) = (c.clone(), base.clone());
    let list = timed("list (all objects)", 20, 2, move |_| {
        let (c, base) = (cl.clone(), b.clone());
        async move {
            let r = c.get(&base).await?;
            expect(&r, 200, "list")
        }
    })
    .await?;
    list.print(None);

    watch_fan_out(&kubeconfig, &c, &base, &args).await?;

    let r = c
        .send(
            Method::DELETE,
            &format!("/api/v1/namespaces/{ns}"),
            "application/json",
            Bytes::new(),
        )
        .await?;
    expect(&r, 200, "delete namespace")?;
    Ok(())
}

/// The object the fan-out test changes.
const WATCHED: &str = "cm-c1-0";

/// Opens `watchers` watches, makes `watch_events` changes, and checks every watcher gets
/// every change; reports how long delivery to all watchers took per change.
async fn watch_fan_out(
    kubeconfig: &Path,
    c: &Client,
    base: &str,
    args: &ApiBenchArgs,
) -> Result<(), BenchError> {
    let r = c.get(&format!("{base}?limit=1")).await?;
    let rv = serde_json::from_slice::<serde_json::Value>(&r.body)
        .ok()
        .and_then(|v| {
            v["metadata"]["resourceVersion"]
                .as_str()
                .map(str::to_string)
        })
        .unwrap_or_default();
    // Many streams per connection, a few connections, as informers in many processes would.
    let wc = Client::connect(kubeconfig, args.watchers.div_ceil(250).max(1)).await?;
    let expected = args.watch_events;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Vec<(u64, Instant)>)>();
    let mut ready = Vec::new();
    for w in 0..args.watchers {
        let body = wc
            .stream(&format!(
                "{base}?watch=true&resourceVersion={rv}&fieldSelector=metadata.name%3D{WATCHED}"
            ))
            .await?;
        let tx = tx.clone();
        ready.push(tokio::spawn(async move {
            let mut lines = Lines::new(body);
            let mut got = Vec::with_capacity(expected);
            while got.len() < expected {
                match tokio::time::timeout(Duration::from_secs(30), lines.next()).await {
                    Ok(Some(ev)) if ev["type"] == "MODIFIED" => {
                        let rv = ev["object"]["metadata"]["resourceVersion"]
                            .as_str()
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(0);
                        got.push((rv, Instant::now()));
                    }
                    Ok(Some(_)) => {}
                    _ => break,
                }
            }
            let _ = tx.send((w, got));
        }));
    }
    drop(tx);
    let mut sent: Vec<(u64, Instant)> = Vec::with_capacity(expected);
    let start = Instant::now();
    for i in 0..expected {
        let t = Instant::now();
        let patch = json!({"data": {"watch": i.to_string()}});
        let r = c
            .send(
                Method::PATCH,
                &format!("{base}/{WATCHED}"),
                "application/merge-patch+json",
                patch.to_string().into(),
            )
            .await?;
        expect(&r, 200, "watched update")?;
        let rv = serde_json::from_slice::<serde_json::Value>(&r.body)
            .ok()
            .and_then(|v| {
                v["metadata"]["resourceVersion"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
            })
            .unwrap_or(0);
        sent.push((rv, t));
    }
    let mut complete = 0;
    let mut delivery: Vec<Duration> = Vec::new();
    let mut last_by_event = vec![Duration::ZERO; expected];
    while let Some((_, got)) = rx.recv().await {
        if got.len() == expected {
            complete += 1;
        }
        for (rv, at) in got {
            if let Some(i) = sent.iter().position(|(s, _)| *s == rv) {
                let d = at.saturating_duration_since(sent[i].1);
                delivery.push(d);
                last_by_event[i] = last_by_event[i].max(d);
            }
        }
    }
    let elapsed = start.elapsed();
    let stats = Stats {
        name: "watch delivery",
        samples: delivery,
        elapsed,
    };
    println!(
        "watch fan-out          {} watchers, {} events each: {}/{} watchers got every event; {} deliveries in {:.2} s ({:.0}/s)",
        args.watchers,
        expected,
        complete,
        args.watchers,
        stats.samples.len(),
        elapsed.as_secs_f64(),
        stats.samples.len() as f64 / elapsed.as_secs_f64()
    );
    stats.print(None);
    let all = Stats {
        name: "change -> all watchers",
        samples: last_by_event,
        elapsed,
    };
    all.print(None);
    if complete != args.watchers {
        return Err(BenchError::Failed(format!(
            "only {complete} of {} watchers received every event",
            args.watchers
        )));
    }
    Ok(())
}
