//! `skiff bench scheduler`: kube-scheduler's scheduler_perf SchedulingBasic shape against
//! an API server started in this process: simulated nodes (Node objects with kube's
//! node-default capacity, Ready, no agents and no node lifecycle controller to expire
//! them) and pods with pod-default's requests, created over HTTPS. Two ways per shape:
//! (a) every pod created first, then the scheduler started (scheduling alone); (b) the
//! scheduler running while pods are created as fast as the server takes them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::{json, Value};

use super::client::Client;
use super::BenchError;
use crate::apiserver::{self, ServerConfig};
use crate::objects::{ListOptions, Objects, Target, WatchFilter, WatchItem, WriteOptions};

#[derive(Debug, Clone, clap::Args)]
pub struct SchedulerBenchArgs {
    /// Shapes as NODES/PODS (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = vec!["5000/10000".to_string(), "1000/30000".to_string()])]
    pub shapes: Vec<String>,
    /// Pod creations in flight at once.
    #[arg(long, default_value_t = 64)]
    pub create_concurrency: usize,
    /// HTTP/2 connections for the creations.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
}

#[derive(Clone, Copy, PartialEq)]
enum Way {
    Prefilled,
    Streamed,
}

impl Way {
    fn label(self) -> &'static str {
        match self {
            Way::Prefilled => "a: created first, then scheduled",
            Way::Streamed => "b: created while scheduling",
        }
    }
}

struct Outcome {
    nodes: usize,
    pods: usize,
    way: Way,
    rate: f64,
    p50: Duration,
    p99: Duration,
    /// `Scheduled` events written (under load the event queue drops the excess).
    events: usize,
}

pub async fn run(args: SchedulerBenchArgs) -> Result<(), BenchError> {
    let mut outcomes = Vec::new();
    for shape in &args.shapes {
        let (n, p) = shape
            .split_once('/')
            .and_then(|(n, p)| Some((n.parse().ok()?, p.parse().ok()?)))
            .ok_or_else(|| BenchError::Failed(format!("shape {shape:?} is not NODES/PODS")))?;
        for way in [Way::Prefilled, Way::Streamed] {
            let o = run_one(&args, n, p, way).await?;
            println!(
                "  {n} nodes, {p} pods, {}: {:.0} pods/s, p50 {:.1} ms, p99 {:.1} ms; {} of {p} Scheduled events written (a full event queue drops the excess)",
                way.label(),
                o.rate,
                o.p50.as_secs_f64() * 1000.0,
                o.p99.as_secs_f64() * 1000.0,
                o.events
            );
            outcomes.push(o);
        }
    }
    println!("kube-scheduler's CI floor for SchedulingBasic at 5,000 nodes: 680-810 pods/s");
    for o in outcomes {
        println!(
            "scheduled {} pods on {} nodes ({}): {:.0} pods/s, p50 {:.1} ms, p99 {:.1} ms (create to bound)",
            o.pods,
            o.nodes,
            if o.way == Way::Prefilled { "a" } else { "b" },
            o.rate,
            o.p50.as_secs_f64() * 1000.0,
            o.p99.as_secs_f64() * 1000.0
        );
    }
    Ok(())
}

/// kube's node-default.yaml: 4 cpus, 32Gi, 110 pods.
fn node(i: usize) -> Value {
    let name = format!("node-{i}");
    json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {"capacity": {"cpu": "4", "memory": "32Gi", "pods": "110"},
                   "allocatable": {"cpu": "4", "memory": "32Gi", "pods": "110"},
                   "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}})
}

/// kube's pod-default.yaml: one container requesting 100m cpu and 500Mi.
fn pod(i: usize) -> String {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("pod-{i}")},
        "spec": {"containers": [{"name": "pause", "image": "registry.k8s.io/pause:3.10",
            "ports": [{"containerPort": 80}],
            "resources": {"requests": {"cpu": "100m", "memory": "500Mi"},
                          "limits": {"cpu": "100m", "memory": "500Mi"}}}]}})
    .to_string()
}

async fn add_nodes(objects: &Objects, n: usize) -> Result<(), BenchError> {
    let rt = objects
        .registry()
        .find("", "v1", "nodes")
        .expect("nodes are served");
    let w = &WriteOptions::default();
    let fail = |e: crate::objects::ObjectError| BenchError::Failed(format!("adding nodes: {e}"));
    let all: Vec<usize> = (0..n).collect();
    for chunk in all.chunks(256) {
        let futs = chunk.iter().map(|&i| async move {
            let v = node(i);
            objects.create(rt, None, v.clone(), w).await?;
            objects
                .update_with(rt, None, &format!("node-{i}"), Target::Status, w, |cur| {
                    let mut next = cur.clone();
                    next["status"] = v["status"].clone();
                    Ok(next)
                })
                .await
        });
        for r in futures::future::join_all(futs).await {
            r.map_err(fail)?;
        }
    }
    Ok(())
}

/// How many `Scheduled` events there are, once the event writer is done.
async fn scheduled_events(objects: &Objects) -> Result<usize, BenchError> {
    let rt = objects
        .registry()
        .find("", "v1", "events")
        .expect("events are served");
    let mut last = None;
    for _ in 0..50 {
        let page = objects
            .list(rt, Some("default"), &ListOptions::default())
            .await
            .map_err(|e| BenchError::Failed(format!("listing events: {e}")))?;
        let n = page
            .items
            .iter()
            .filter_map(|b| serde_json::from_slice::<Value>(b).ok())
            .filter(|e| e["reason"] == "Scheduled")
            .count();
        if last == Some(n) {
            return Ok(n);
        }
        last = Some(n);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(last.unwrap_or(0))
}

/// When each pod was bound, from a watch.
#[derive(Default)]
struct Bound {
    at: Mutex<HashMap<String, Instant>>,
    all: tokio::sync::Notify,
}

fn follow_bindings(objects: Arc<Objects>, total: usize) -> Arc<Bound> {
    let bound = Arc::new(Bound::default());
    let b = bound.clone();
    tokio::spawn(async move {
        let rt = objects
            .registry()
            .find("", "v1", "pods")
            .expect("pods are served");
        loop {
            let from = objects.store().revision();
            // Anything bound before the watch starts is caught by a list.
            if let Ok(page) = objects
                .list(rt, Some("default"), &ListOptions::default())
                .await
            {
                let now = Instant::now();
                let mut at = b.at.lock().expect("bound");
                for item in page.items {
                    if let Ok(v) = serde_json::from_slice::<Value>(&item) {
                        if v["spec"]["nodeName"].is_string() {
                            let name = v["metadata"]["name"].as_str().unwrap_or("").to_string();
                            at.entry(name).or_insert(now);
                        }
                    }
                }
                if at.len() >= total {
                    b.all.notify_one();
                    return;
                }
            }
            let Ok(mut events) = objects.watch(rt, Some("default"), from, WatchFilter::default())
            else {
                continue;
            };
            while let Some(WatchItem::Event { object, value, .. }) = events.next().await {
                let Some(v) = crate::objects::parsed_event(&object, value) else {
                    continue;
                };
                if !v["spec"]["nodeName"].is_string() {
                    continue;
                }
                let mut at = b.at.lock().expect("bound");
                let name = v["metadata"]["name"].as_str().unwrap_or("").to_string();
                at.entry(name).or_insert_with(Instant::now);
                if at.len() >= total {
                    b.all.notify_one();
                    return;
                }
            }
        }
    });
    bound
}

async fn create_pods(
    client: &Client,
    n: usize,
    concurrency: usize,
) -> Result<HashMap<String, Instant>, BenchError> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (client, next) = (client.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut created = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, BenchError>(created);
                }
                let start = Instant::now();
                let r = client
                    .send(
                        Method::POST,
                        "/api/v1/namespaces/default/pods",
                        "application/json",
                        pod(i).into(),
                    )
                    .await?;
                if r.status != 201 {
                    return Err(BenchError::Failed(format!(
                        "creating a pod: HTTP {}: {}",
                        r.status,
                        String::from_utf8_lossy(&r.body)
                    )));
                }
                created.push((format!("pod-{i}"), start));
            }
        }));
    }
    let mut out = HashMap::new();
    for t in tasks {
        let created = t.await.map_err(|e| BenchError::Failed(e.to_string()))??;
        out.extend(created);
    }
    Ok(out)
}

async fn run_one(
    args: &SchedulerBenchArgs,
    nodes: usize,
    pods: usize,
    way: Way,
) -> Result<Outcome, BenchError> {
    let dir = tempfile::Builder::new()
        .prefix("skiff-bench-scheduler")
        .tempdir_in(std::env::current_dir()?)?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let config = ServerConfig {
        data_dir: dir.path().join("data"),
        listen: "127.0.0.1:0".parse().expect("an address"),
        // A watcher that falls behind a burst catches up from the log instead of relisting.
        history: 1_000_000,
        repair: false,
        admission: Default::default(),
        advertise_address: None,
        limits: Default::default(),
    };
    let server = apiserver::start(config, async {
        let _ = stop_rx.await;
    })
    .await
    .map_err(|e| BenchError::Failed(format!("starting the server: {e}")))?;
    let objects = server.objects.clone();
    add_nodes(&objects, nodes).await?;
    let client = Client::connect(&server.kubeconfig, args.connections).await?;
    let bound = follow_bindings(objects.clone(), pods);
    let start_scheduler = || {
        let cache = crate::runtime::Cache::new(objects.clone());
        let events = crate::events::Events::start(objects.clone());
        crate::scheduler::spawn(&cache, crate::scheduler::Scoring::default(), &events);
        cache
    };
    let (created, started, _cache) = match way {
        Way::Prefilled => {
            let created = create_pods(&client, pods, args.create_concurrency).await?;
            let started = Instant::now();
            (created, started, start_scheduler())
        }
        Way::Streamed => {
            let cache = start_scheduler();
            cache.of("", "v1", "pods").synced().await;
            cache.of("", "v1", "nodes").synced().await;
            let started = Instant::now();
            (
                create_pods(&client, pods, args.create_concurrency).await?,
                started,
                cache,
            )
        }
    };
    let waiting = bound.all.notified();
    let done = bound.at.lock().expect("bound").len() >= pods;
    if !done {
        tokio::time::timeout(Duration::from_secs(600), waiting)
            .await
            .map_err(|_| BenchError::Failed("pods were not all bound within 10 minutes".into()))?;
    }
    let out = {
        let at = bound.at.lock().expect("bound");
        let last = at.values().max().copied().unwrap_or(started);
        let mut latencies: Vec<Duration> = created
            .iter()
            .filter_map(|(name, c)| Some(at.get(name)?.duration_since((*c).max(started))))
            .collect();
        latencies.sort();
        let pct = |p: f64| {
            latencies
                .get(((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1))
                .copied()
                .unwrap_or_default()
        };
        Outcome {
            nodes,
            pods,
            way,
            rate: at.len() as f64 / last.duration_since(started).as_secs_f64().max(1e-9),
            p50: pct(0.5),
            p99: pct(0.99),
            events: 0,
        }
    };
    let out = Outcome {
        events: scheduled_events(&objects).await?,
        ..out
    };
    let _ = stop_tx.send(());
    server.wait().await;
    Ok(out)
}
