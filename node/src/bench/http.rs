//! `skiff bench http`: requests per second and latency of a wasi:http component served by
//! Skiff (a Deployment of one pod behind a NodePort Service) at its pod's IP, through the
//! Service's cluster IP and through its node port, next to `wasmtime serve` of the same
//! component on the same machine, in the same run and by the same load generator:
//! keep-alive HTTP/1.1 connections, each sending its next request as soon as it has read
//! an answer.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, PostParams};

use super::{cpu_ms, BenchCluster, BenchError, BenchNode};

#[derive(Debug, Clone, clap::Args)]
pub struct HttpBenchArgs {
    /// The wasi:http/proxy component both serve.
    #[arg(long, default_value = "wasm-examples/out/http-hello.wasm")]
    pub component: PathBuf,
    /// The peer's `wasmtime` CLI (the version Skiff embeds: `cargo install wasmtime-cli@48.0.8`).
    #[arg(long, default_value = "wasmtime")]
    pub wasmtime: PathBuf,
    /// Connections the load generator keeps busy.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Seconds of load on each server per round (after a second of warm-up).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Rounds, each loading Skiff then the peer.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
}

const IMAGE: &str = "bench.local/http:1";
const PORT: u16 = 8080;

/// What one load run saw.
struct Load {
    ok: u64,
    failed: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Load {
    fn rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Keeps `connections` connections to `addr` busy for `duration`.
async fn load(addr: SocketAddr, connections: usize, duration: Duration) -> Load {
    let started = Instant::now();
    let end = started + duration;
    let tasks: Vec<_> = (0..connections)
        .map(|_| tokio::spawn(connection(addr, end)))
        .collect();
    let mut total = Load {
        ok: 0,
        failed: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
    };
    for t in tasks {
        if let Ok(l) = t.await {
            total.ok += l.ok;
            total.failed += l.failed;
            total.latencies.extend(l.latencies);
        }
    }
    total.elapsed = started.elapsed();
    total
}

/// One connection's requests until `end` (reconnecting after an error).
async fn connection(addr: SocketAddr, end: Instant) -> Load {
    let mut out = Load {
        ok: 0,
        failed: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
    };
    let host = addr.to_string();
    while Instant::now() < end {
        let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
            out.failed += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let io = hyper_util::rt::TokioIo::new(stream);
        let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(io).await else {
            out.failed += 1;
            continue;
        };
        let conn = tokio::spawn(conn);
        while Instant::now() < end {
            let req = hyper::Request::get("/")
                .header(hyper::header::HOST, &host)
                .body(Empty::<Bytes>::new())
                .expect("request");
            let t = Instant::now();
            let answered = match sender.send_request(req).await {
                Ok(resp) => {
                    let ok = resp.status() == hyper::StatusCode::OK;
                    resp.into_body().collect().await.is_ok() && ok
                }
                Err(_) => false,
            };
            if answered {
                out.ok += 1;
                out.latencies.push(t.elapsed());
            } else {
                out.failed += 1;
                break;
            }
        }
        conn.abort();
    }
    out
}

/// Waits until something accepts connections at `addr`.
async fn accepting(addr: SocketAddr, what: &str) -> Result<(), BenchError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if Instant::now() > deadline {
            return Err(BenchError::Failed(format!(
                "{what} did not accept connections at {addr}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Loads `addr` for a second (not counted), then for `seconds`; prints and returns what it
/// saw, with the CPU `pid` spent per request.
async fn measure(
    what: &str,
    addr: SocketAddr,
    pid: u32,
    args: &HttpBenchArgs,
) -> Result<f64, BenchError> {
    load(addr, args.connections, Duration::from_secs(1)).await;
    let cpu = cpu_ms(pid);
    let mut l = load(addr, args.connections, Duration::from_secs(args.seconds)).await;
    let cpu = cpu_ms(pid) - cpu;
    if l.ok == 0 {
        return Err(BenchError::Failed(format!("{what}: no request succeeded")));
    }
    let p50 = super::pct(&mut l.latencies, 0.5);
    let p99 = super::pct(&mut l.latencies, 0.99);
    println!(
        "  {what:<44} {:>8.0} req/s  p50 {:.2} ms  p99 {:.2} ms  failed {}  server CPU {:.1} µs/req",
        l.rps(),
        p50.as_secs_f64() * 1000.0,
        p99.as_secs_f64() * 1000.0,
        l.failed,
        cpu * 1000.0 / l.ok as f64,
    );
    Ok(l.rps())
}

/// The peer: `wasmtime serve` of the component on a free loopback port.
struct Peer {
    child: std::process::Child,
    addr: SocketAddr,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Peer {
    async fn start(args: &HttpBenchArgs, dir: &std::path::Path) -> Result<Peer, BenchError> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        // Its guest's stderr goes to a file, as Skiff's goes to the container's log.
        let log = std::fs::File::create(dir.join("wasmtime-serve.log"))?;
        let child = std::process::Command::new(&args.wasmtime)
            .arg("serve")
            .arg("--addr")
            .arg(addr.to_string())
            .arg(&args.component)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| {
                BenchError::Failed(format!("the peer {}: {e}", args.wasmtime.display()))
            })?;
        let peer = Peer { child, addr };
        accepting(addr, "wasmtime serve").await?;
        Ok(peer)
    }
}

pub async fn run(args: HttpBenchArgs, cluster: BenchCluster<'_>) -> Result<(), BenchError> {
    let version = std::process::Command::new(&args.wasmtime)
        .arg("--version")
        .output()
        .map_err(|e| BenchError::Failed(format!("the peer {}: {e}", args.wasmtime.display())))?;
    let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
    let store = crate::images::ImageStore::open(&cluster.dir.join("agent").join("images"))?;
    store.import(&args.component, IMAGE)?;
    drop(store);
    let node = BenchNode::start(&cluster, 10).await?;
    let deployment = serde_json::json!({
        "metadata": {"name": "http"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "http"}},
            "template": {
                "metadata": {"labels": {"app": "http"}},
                "spec": {
                    "runtimeClassName": "wasmtime",
                    "terminationGracePeriodSeconds": 0,
                    "containers": [{"name": "http", "image": IMAGE, "imagePullPolicy": "IfNotPresent",
                                    "ports": [{"containerPort": PORT}]}],
                },
            },
        },
    });
    let deployments: Api<Deployment> = Api::namespaced(node.client.clone(), "bench");
    deployments
        .create(
            &PostParams::default(),
            &serde_json::from_value(deployment).expect("valid"),
        )
        .await?;
    let service = serde_json::json!({
        "metadata": {"name": "http"},
        "spec": {"type": "NodePort", "selector": {"app": "http"},
                 "ports": [{"port": 80, "targetPort": PORT}]},
    });
    let services: Api<Service> = Api::namespaced(node.client.clone(), "bench");
    let service = services
        .create(
            &PostParams::default(),
            &serde_json::from_value(service).expect("valid"),
        )
        .await?;
    let spec = service.spec.unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(60);
    let ip = loop {
        let pods = node.pods.list(&Default::default()).await?;
        let running = pods.items.into_iter().find_map(|p| {
            let status = p.status?;
            (status.phase.as_deref() == Some("Running")).then_some(status.pod_ip)?
        });
        if let Some(ip) = running {
            break ip;
        }
        if Instant::now() > deadline {
            return Err(BenchError::Failed("the pod did not run".into()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let parse = |s: String| {
        s.parse::<SocketAddr>()
            .map_err(|e| BenchError::Failed(format!("address {s}: {e}")))
    };
    let skiff = parse(format!("{ip}:{PORT}"))?;
    let cluster_ip = parse(format!("{}:80", spec.cluster_ip.unwrap_or_default()))?;
    let node_port = spec
        .ports
        .unwrap_or_default()
        .first()
        .and_then(|p| p.node_port)
        .unwrap_or_default();
    // A node port answers on the node's addresses (not loopback ones).
    let host_ip = {
        let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
        s.connect("192.0.2.1:9")?;
        s.local_addr()?.ip()
    };
    let node_port = SocketAddr::new(host_ip, node_port as u16);
    accepting(skiff, "the pod").await?;
    accepting(cluster_ip, "the Service's cluster IP").await?;
    accepting(node_port, "the Service's node port").await?;
    let peer = Peer::start(&args, cluster.dir).await?;
    println!(
        "skiff bench http: {} ({} bytes), {} connections, {} s per server per round; peer: {version} `serve` (it runs the component as WASIp2: wasi:http/proxy)",
        args.component.display(),
        std::fs::metadata(&args.component)?.len(),
        args.connections,
        args.seconds
    );
    let (mut ours, mut theirs, mut via_ip, mut via_port) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        println!("round {round}");
        ours.push(
            measure(
                &format!("Skiff, pod IP {skiff}"),
                skiff,
                node.agent_pid,
                &args,
            )
            .await?,
        );
        via_ip.push(
            measure(
                &format!("Skiff, Service cluster IP {cluster_ip}"),
                cluster_ip,
                node.agent_pid,
                &args,
            )
            .await?,
        );
        via_port.push(
            measure(
                &format!("Skiff, Service node port {node_port}"),
                node_port,
                node.agent_pid,
                &args,
            )
            .await?,
        );
        theirs.push(
            measure(
                &format!("wasmtime serve, {}", peer.addr),
                peer.addr,
                peer.child.id(),
                &args,
            )
            .await?,
        );
    }
    let best = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    println!(
        "Skiff / wasmtime serve (best round each): {:.0} / {:.0} req/s = {:.2}x",
        best(&ours),
        best(&theirs),
        best(&ours) / best(&theirs).max(1e-9)
    );
    for (what, v) in [("cluster IP", &via_ip), ("node port", &via_port)] {
        println!(
            "through the Service's {what} / to the pod IP (best round each): {:.0} / {:.0} req/s = {:.2}x",
            best(v),
            best(&ours),
            best(v) / best(&ours).max(1e-9)
        );
    }
    drop(node);
    Ok(())
}
