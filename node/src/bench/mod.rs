//! `skiff bench pods`: Wasm pod start latency (create → Running seen by a watch, module
//! cached), next to OCI pods of the same shape (busybox through runc) in the same run, and
//! idle-pod density (agent RSS per pod), next to the peer measured in the same run: a bare
//! wasmtime host keeping the same idle guests, one async task and Store each. And
//! `skiff bench http` ([`http`]).

pub mod endpoints;
pub mod heap;
pub mod http;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, PostParams, WatchEvent, WatchParams};

/// A guest that sleeps forever in `poll_oneoff` (an hour at a time): an idle pod.
pub const IDLE_WAT: &str = r#"(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (i64.store (i32.const 0) (i64.const 1))
    (i32.store8 (i32.const 8) (i32.const 0))
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (i64.const 3600000000000))
    (i64.store (i32.const 32) (i64.const 0))
    (i32.store16 (i32.const 40) (i32.const 0))
    (loop $forever
      (drop (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))
      (br $forever))))"#;

#[derive(Debug, Clone, clap::Args)]
pub struct PodBenchArgs {
    /// Pods whose start latency is measured.
    #[arg(long, default_value_t = 500)]
    pub pods: usize,
    /// Idle pods one node is filled with for the density measurement.
    #[arg(long, default_value_t = 2000)]
    pub idle: usize,
    /// Pods created at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Pods timed one at a time are created this many milliseconds apart at least (each
    /// once the previous one runs), Wasm and OCI alike: the node's networks made ahead are
    /// refilled between them, as on a node not flooded with pods. 0: back to back.
    #[arg(long, default_value_t = 50)]
    pub interval_ms: u64,
    /// OCI pods of the same shape (busybox through runc) timed one at a time next to the
    /// Wasm ones (0: none; needs root, runc and Debian's busybox-static).
    #[arg(long, default_value_t = 100)]
    pub oci_pods: usize,
}

/// The OCI image of the comparison: Debian's busybox-static as a one-layer image whose
/// command idles, imported into the node's store as a registry pull would leave it.
const OCI_IMAGE: &str = "bench.local/busybox:1";

fn import_busybox(store: &crate::images::ImageStore) -> Result<(), BenchError> {
    use sha2::Digest;
    let busybox = std::fs::read("/bin/busybox")
        .map_err(|e| BenchError::Failed(format!("/bin/busybox (Debian's busybox-static): {e}")))?;
    let mut tar = tar::Builder::new(Vec::new());
    let header = |path: &str, kind: tar::EntryType, size: u64, mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        let _ = h.set_path(path);
        h.set_cksum();
        h
    };
    let dir = header("bin/", tar::EntryType::Directory, 0, 0o755);
    tar.append(&dir, &[][..])?;
    let bin = header(
        "bin/busybox",
        tar::EntryType::Regular,
        busybox.len() as u64,
        0o755,
    );
    tar.append(&bin, &busybox[..])?;
    for applet in ["sh", "sleep"] {
        let mut link = header(&format!("bin/{applet}"), tar::EntryType::Symlink, 0, 0o777);
        link.set_link_name("busybox")?;
        link.set_cksum();
        tar.append(&link, &[][..])?;
    }
    let raw = tar.into_inner()?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &raw)?;
    let layer = gz.finish()?;
    let digest = format!("sha256:{:x}", sha2::Sha256::digest(&layer));
    store
        .layers
        .unpack(
            &layer[..],
            &digest,
            "application/vnd.oci.image.layer.v1.tar+gzip",
            crate::registry::DEFAULT_MAX_LAYER_BYTES,
        )
        .map_err(|e| BenchError::Failed(e.to_string()))?;
    let run = crate::images::RunConfig {
        cmd: Some(vec!["sleep".into(), "3600".into()]),
        ..Default::default()
    };
    let manifest = format!("sha256:{:x}", sha2::Sha256::digest(digest.as_bytes()));
    store.put_rootfs_record(&manifest, vec![digest], layer.len() as u64, &run)?;
    store.tag(OCI_IMAGE, &manifest)?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Agent(#[from] crate::agent::AgentError),
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Images(#[from] crate::images::ImageError),
}

/// The API server a bench runs against, started by the caller (the node meets the control
/// plane only through its API): a working directory for the bench's files, the server's
/// kubeconfig, and its process (whose CPU time the bench reads).
pub struct BenchCluster<'a> {
    pub dir: &'a Path,
    pub kubeconfig: &'a Path,
    pub server_pid: u32,
}

/// The bench node's pod bridge (not a dev cluster's `skiff0`).
const BENCH_BRIDGE: &str = "skbench0";

/// The bench's agent (and, once stopped, a reset of its node: runc containers outlive
/// their agent).
struct Procs(Vec<std::process::Child>, Option<PathBuf>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let (Some(data), Ok(exe)) = (&self.1, std::env::current_exe()) {
            let _ = std::process::Command::new(exe)
                .args(["reset", "--cni-bridge", BENCH_BRIDGE, "--data-dir"])
                .arg(data)
                .status();
        }
    }
}

/// The bench's node: an agent (process) over `<dir>/agent`, Ready, and the namespace
/// `bench` its pods go in.
pub(crate) struct BenchNode {
    _procs: Procs,
    pub agent_pid: u32,
    pub pods: Api<Pod>,
    pub client: kube::Client,
}

impl BenchNode {
    pub async fn start(
        cluster: &BenchCluster<'_>,
        max_pods: usize,
    ) -> Result<BenchNode, BenchError> {
        let agent_dir = cluster.dir.join("agent");
        let mut agent = std::process::Command::new(std::env::current_exe()?);
        heap::trace_agent(&mut agent)?;
        let agent = agent
            .args([
                "agent",
                "--node-name",
                "bench-node",
                "--port",
                "0",
                "--max-pods",
                &max_pods.to_string(),
                "--kubeconfig",
            ])
            .arg(cluster.kubeconfig)
            .arg("--data-dir")
            .arg(&agent_dir)
            .args(["--cni-bridge", BENCH_BRIDGE])
            // SKIFF_BENCH_AGENT_LOG: the agent's log filter (to see where time goes).
            .env(
                "SKIFF_LOG",
                std::env::var("SKIFF_BENCH_AGENT_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .spawn()?;
        let agent_pid = agent.id();
        let procs = Procs(vec![agent], Some(agent_dir));
        let client = crate::agent::client_from(cluster.kubeconfig).await?;
        let nodes: Api<Node> = Api::all(client.clone());
        let ready = || async {
            nodes.get("bench-node").await.ok().is_some_and(|n| {
                n.status
                    .and_then(|s| s.conditions)
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ready().await {
            if Instant::now() > deadline {
                return Err(BenchError::Failed("the node did not become Ready".into()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let namespaces: Api<Namespace> = Api::all(client.clone());
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(serde_json::json!({"metadata": {"name": "bench"}}))
                    .expect("namespace"),
            )
            .await?;
        Ok(BenchNode {
            _procs: procs,
            agent_pid,
            pods: Api::namespaced(client.clone(), "bench"),
            client,
        })
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmRSS:")
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
        })
        .unwrap_or(0)
}

fn pct(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples
        .get(((samples.len() as f64 * p).ceil() as usize).saturating_sub(1))
        .copied()
        .unwrap_or_default()
}

/// The pods of the bench: one idle container, no volumes; Wasm ones of RuntimeClass
/// `wasmtime`, OCI ones of the default class. They go at once when deleted.
fn pod(name: &str, image: &str) -> Pod {
    let mut p = serde_json::json!({
        "metadata": {"name": name},
        "spec": {"terminationGracePeriodSeconds": 0, "containers": [{"name": "idle", "image": image, "imagePullPolicy": "IfNotPresent"}]},
    });
    if image != OCI_IMAGE {
        p["spec"]["runtimeClassName"] = serde_json::json!("wasmtime");
    }
    // The density pods outnumber a node's pod range (a /24): they use the node's network.
    if name.starts_with("idle-") {
        p["spec"]["hostNetwork"] = serde_json::json!(true);
    }
    serde_json::from_value(p).expect("valid pod")
}

fn is_running(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .is_some_and(|cs| {
            !cs.is_empty()
                && cs
                    .iter()
                    .all(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
        })
}

/// Creates `names` pods `concurrency` at a time; returns when each creation was sent.
async fn create_all(
    api: &Api<Pod>,
    names: Vec<String>,
    image: &str,
    concurrency: usize,
) -> Result<HashMap<String, Instant>, BenchError> {
    let sent = Arc::new(Mutex::new(HashMap::new()));
    futures::stream::iter(names)
        .map(|n| {
            let (api, sent, image) = (api.clone(), sent.clone(), image.to_string());
            async move {
                sent.lock().expect("sent").insert(n.clone(), Instant::now());
                api.create(&PostParams::default(), &pod(&n, &image))
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    Ok(Arc::try_unwrap(sent)
        .map(|m| m.into_inner().expect("sent"))
        .unwrap_or_default())
}

/// When a watch first saw each pod reach the stages of its start.
#[derive(Default)]
struct Stages {
    bound: HashMap<String, Instant>,
    reported: HashMap<String, Instant>,
    running: HashMap<String, Instant>,
}

fn minus((a, b): (f64, f64), (c, d): (f64, f64)) -> (f64, f64) {
    (a - c, b - d)
}

/// CPU time a process has used, in milliseconds.
fn cpu_ms(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime and stime are 14 and 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) * 1000.0 / hz.max(1.0)
}

fn report(
    mode: &str,
    sent: &HashMap<String, Instant>,
    seen: &Stages,
    elapsed: Duration,
    (server_ms, agent_ms): (f64, f64),
    pods: usize,
) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let between = |from: &HashMap<String, Instant>, to: &HashMap<String, Instant>| {
        let mut d: Vec<Duration> = from
            .iter()
            .filter_map(|(n, t)| to.get(n).map(|r| r.saturating_duration_since(*t)))
            .collect();
        (
            ms(pct(&mut d, 0.5)),
            ms(pct(&mut d, 0.99)),
            ms(pct(&mut d, 1.0)),
        )
    };
    let (p50, p99, max) = between(sent, &seen.running);
    println!(
        "start latency, {mode} (create -> Running seen by a watch): {} pods in {:.2} s; p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms; CPU per pod: server {:.2} ms, agent {:.2} ms",
        seen.running.len(),
        elapsed.as_secs_f64(),
        server_ms / pods.max(1) as f64,
        agent_ms / pods.max(1) as f64,
    );
    for (what, from, to) in [
        ("create -> bound", sent, &seen.bound),
        ("bound -> first agent status", &seen.bound, &seen.reported),
        (
            "first agent status -> Running",
            &seen.reported,
            &seen.running,
        ),
    ] {
        let (p50, p99, _) = between(from, to);
        println!("  {what:<30} p50 {p50:.1} ms, p99 {p99:.1} ms");
    }
}

/// Follows the watch until `done`; records when each pod was first seen
/// bound to the node, with a status from the agent, and Running.
async fn running_times(
    events: &mut (impl futures::Stream<Item = kube::Result<WatchEvent<Pod>>> + Unpin),
    seen: &mut Stages,
    done: impl Fn(&Stages) -> bool,
) -> Result<(), BenchError> {
    // Other updates (FailedScheduling, say) do not count as progress: stop once no new
    // pod has run for 2 minutes.
    let mut progress = (seen.running.len(), Instant::now());
    while !done(seen) {
        if seen.running.len() != progress.0 {
            progress = (seen.running.len(), Instant::now());
        }
        let left = Duration::from_secs(120).saturating_sub(progress.1.elapsed());
        let ev = tokio::time::timeout(left, events.next())
            .await
            .map_err(|_| {
                BenchError::Failed(format!(
                    "no more pods ran for 2 minutes ({} did)",
                    seen.running.len()
                ))
            })?
            .ok_or_else(|| BenchError::Failed("the watch ended".into()))??;
        if let WatchEvent::Added(p) | WatchEvent::Modified(p) = ev {
            let name = p.metadata.name.clone().unwrap_or_default();
            let now = Instant::now();
            if p.spec.as_ref().is_some_and(|s| s.node_name.is_some()) {
                seen.bound.entry(name.clone()).or_insert(now);
            }
            if p.status
                .as_ref()
                .is_some_and(|s| s.container_statuses.is_some())
            {
                seen.reported.entry(name.clone()).or_insert(now);
            }
            if is_running(&p) {
                seen.running.entry(name).or_insert(now);
            }
        }
    }
    Ok(())
}

/// The peer: a bare wasmtime host keeping `n` idle guests (one Engine and InstancePre,
/// an async task and Store per guest); returns the RSS it added, in KiB.
async fn bare_wasmtime_peer(n: usize) -> Result<u64, BenchError> {
    let fail = |e: wasmtime::Error| BenchError::Failed(format!("peer: {e:#}"));
    let mut config = wasmtime::Config::new();
    config.epoch_interruption(true);
    let engine = wasmtime::Engine::new(&config).map_err(fail)?;
    let module = wasmtime::Module::new(&engine, IDLE_WAT).map_err(fail)?;
    let mut linker: wasmtime::Linker<wasmtime_wasi::p1::WasiP1Ctx> = wasmtime::Linker::new(&engine);
    wasmtime_wasi::p1::add_to_linker_async(&mut linker, |c| c).map_err(fail)?;
    let pre = linker.instantiate_pre(&module).map_err(fail)?;
    let before = rss_kib(std::process::id());
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let mut store =
            wasmtime::Store::new(&engine, wasmtime_wasi::WasiCtxBuilder::new().build_p1());
        store.epoch_deadline_async_yield_and_update(1);
        let pre = pre.clone();
        tasks.push(tokio::spawn(async move {
            let instance = pre.instantiate_async(&mut store).await?;
            instance
                .get_typed_func::<(), ()>(&mut store, "_start")?
                .call_async(&mut store, ())
                .await
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let grown = rss_kib(std::process::id()).saturating_sub(before);
    for t in tasks {
        t.abort();
    }
    Ok(grown)
}

pub async fn run_pods(args: PodBenchArgs, cluster: BenchCluster<'_>) -> Result<(), BenchError> {
    // The timed pods stay, and idle ones are added up to `idle`.
    let total = (2 * args.pods).max(args.idle);
    let agent_dir = cluster.dir.join("agent");
    let image = "bench.local/idle:1";
    let store = crate::images::ImageStore::open(&agent_dir.join("images"))?;
    store.import(&write(cluster.dir, "idle.wat", IDLE_WAT)?, image)?;
    if args.oci_pods > 0 {
        import_busybox(&store)?;
    }
    drop(store);
    let node = BenchNode::start(&cluster, total + 10).await?;
    let (agent_pid, server_pid) = (node.agent_pid, cluster.server_pid);
    let pods = node.pods.clone();
    println!(
        "skiff bench pods: {} pods timed one at a time and {} at a time, {} idle pods for density",
        args.pods, args.concurrency, args.idle
    );

    // Warm up: the first start compiles the module; the measured ones use the cache.
    let mut events = pods.watch(&WatchParams::default(), "0").await?.boxed();
    create_all(&pods, vec!["warm".into()], image, 1).await?;
    running_times(&mut events, &mut Stages::default(), |s| {
        !s.running.is_empty()
    })
    .await?;
    let rss_base = rss_kib(agent_pid);

    let procs_cpu = || (cpu_ms(server_pid), cpu_ms(agent_pid));
    // One at a time: each pod is created once the previous one runs (an idle cluster).
    let cpu = procs_cpu();
    let started = Instant::now();
    let mut serial = Stages::default();
    let mut sent = HashMap::new();
    let mut events = watch_from_now(&pods).await?;
    let interval = Duration::from_millis(args.interval_ms);
    for i in 0..args.pods {
        let name = format!("s-{i}");
        let next = tokio::time::Instant::now() + interval;
        sent.extend(create_all(&pods, vec![name.clone()], image, 1).await?);
        running_times(&mut events, &mut serial, |s| s.running.contains_key(&name)).await?;
        tokio::time::sleep_until(next).await;
    }
    let one_at_a_time = format!("one at a time, {} ms apart at least", args.interval_ms);
    report(
        &one_at_a_time,
        &sent,
        &serial,
        started.elapsed(),
        minus(procs_cpu(), cpu),
        args.pods,
    );
    if args.oci_pods > 0 {
        let oci = oci_start_latency(&pods, args.oci_pods, interval, &procs_cpu).await?;
        let wasm = p50_to_running(&sent, &serial);
        println!(
            "Wasm vs OCI (same pod shape, {one_at_a_time}): p50 {:.1} ms vs {:.1} ms: Wasm starts {:.1}x faster",
            wasm * 1000.0,
            oci * 1000.0,
            oci / wasm.max(1e-9)
        );
    }

    // Back to back: `concurrency` creations always in flight.
    let names: Vec<String> = (0..args.pods).map(|i| format!("p-{i}")).collect();
    let events = watch_from_now(&pods).await?;
    let watcher = tokio::spawn(async move {
        let mut seen = Stages::default();
        let mut events = events;
        running_times(&mut events, &mut seen, |s| s.running.len() >= args.pods)
            .await
            .map(|_| seen)
    });
    let cpu = procs_cpu();
    let started = Instant::now();
    let sent = create_all(&pods, names, image, args.concurrency).await?;
    let running = watcher
        .await
        .map_err(|e| BenchError::Failed(e.to_string()))??;
    report(
        &format!("{} at a time", args.concurrency),
        &sent,
        &running,
        started.elapsed(),
        minus(procs_cpu(), cpu),
        args.pods,
    );

    let extra = args.idle.saturating_sub(2 * args.pods);
    let names: Vec<String> = (0..extra).map(|i| format!("idle-{i}")).collect();
    let events = watch_from_now(&pods).await?;
    let watcher = tokio::spawn(async move {
        let mut events = events;
        running_times(&mut events, &mut Stages::default(), |s| {
            s.running.len() >= extra
        })
        .await
    });
    create_all(&pods, names, image, args.concurrency.max(16)).await?;
    watcher
        .await
        .map_err(|e| BenchError::Failed(e.to_string()))??;
    let rss = settled_rss(agent_pid).await;
    let per_pod = rss.saturating_sub(rss_base) as f64 / total as f64;
    let peer = bare_wasmtime_peer(total).await? as f64 / total as f64;
    println!("idle pods: {total} running; agent RSS {} MiB ({} MiB before the pods): {per_pod:.1} KiB per pod", rss / 1024, rss_base / 1024);
    println!(
        "peer (bare wasmtime host, same guest): {peer:.1} KiB per guest; agent/peer = {:.1}x",
        per_pod / peer.max(0.001)
    );
    drop(node);
    Ok(())
}

/// The agent's RSS once its pods are idle: its allocator returns what their starts used
/// some seconds after the last, so it is read once it has held (within 0.5%) for five
/// seconds, at most a minute on.
async fn settled_rss(pid: u32) -> u64 {
    let mut last = rss_kib(pid);
    let mut held = 0;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = rss_kib(pid);
        held = if now.abs_diff(last) * 200 <= last {
            held + 1
        } else {
            0
        };
        last = now;
        if held == 5 {
            break;
        }
    }
    last
}

/// The median time from creation to Running.
fn p50_to_running(sent: &HashMap<String, Instant>, seen: &Stages) -> f64 {
    let mut d: Vec<Duration> = sent
        .iter()
        .filter_map(|(n, t)| seen.running.get(n).map(|r| r.saturating_duration_since(*t)))
        .collect();
    pct(&mut d, 0.5).as_secs_f64()
}

/// `n` OCI pods (busybox through runc) started one at a time, after a warm-up one; their
/// report, and the median start in seconds. They are deleted afterwards.
async fn oci_start_latency(
    pods: &Api<Pod>,
    n: usize,
    interval: Duration,
    procs_cpu: &impl Fn() -> (f64, f64),
) -> Result<f64, BenchError> {
    let mut events = watch_from_now(pods).await?;
    create_all(pods, vec!["oci-warm".into()], OCI_IMAGE, 1).await?;
    running_times(&mut events, &mut Stages::default(), |s| {
        s.running.contains_key("oci-warm")
    })
    .await?;
    let cpu = procs_cpu();
    let started = Instant::now();
    let mut seen = Stages::default();
    let mut sent = HashMap::new();
    let mut events = watch_from_now(pods).await?;
    for i in 0..n {
        let name = format!("oci-{i}");
        let next = tokio::time::Instant::now() + interval;
        sent.extend(create_all(pods, vec![name.clone()], OCI_IMAGE, 1).await?);
        running_times(&mut events, &mut seen, |s| s.running.contains_key(&name)).await?;
        tokio::time::sleep_until(next).await;
    }
    report(
        "OCI (busybox through runc), one at a time",
        &sent,
        &seen,
        started.elapsed(),
        minus(procs_cpu(), cpu),
        n,
    );
    let p50 = p50_to_running(&sent, &seen);
    for name in sent.keys().cloned().chain(["oci-warm".to_string()]) {
        let _ = pods.delete(&name, &Default::default()).await;
    }
    Ok(p50)
}

/// A watch of the pods from now on.
async fn watch_from_now(
    pods: &Api<Pod>,
) -> Result<impl futures::Stream<Item = kube::Result<WatchEvent<Pod>>> + Unpin + Send, BenchError> {
    let rv = pods
        .list_metadata(&Default::default())
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    Ok(pods.watch(&WatchParams::default(), &rv).await?.boxed())
}

fn write(dir: &Path, name: &str, body: &str) -> Result<PathBuf, BenchError> {
    let p = dir.join(name);
    std::fs::write(&p, body)?;
    Ok(p)
}
