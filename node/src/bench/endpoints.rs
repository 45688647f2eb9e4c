//! `skiff bench endpoints`: how long a new endpoint takes to be reachable through its
//! Service after its pod turns Ready, on a node whose proxy already holds many Services
//! (by default 1,000 Services of 10 endpoints each: 10,000 endpoint chains). Each sample
//! creates a pod for a Service that has none; the clock starts when a watch sees the pod
//! Ready and stops when a connection to the Service's cluster IP succeeds (until the
//! proxy has the endpoint, the cluster IP refuses at once).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::watcher;

use super::{BenchCluster, BenchError, BenchNode};

#[derive(Debug, Clone, clap::Args)]
pub struct EndpointsBenchArgs {
    /// The wasi:http/proxy component the pods serve.
    #[arg(long, default_value = "wasm-examples/out/http-hello.wasm")]
    pub component: PathBuf,
    /// Services present before measuring.
    #[arg(long, default_value_t = 1000)]
    pub services: usize,
    /// Endpoints of each of them (pods they all select).
    #[arg(long, default_value_t = 10)]
    pub endpoints: usize,
    /// New endpoints timed.
    #[arg(long, default_value_t = 100)]
    pub samples: usize,
}

const IMAGE: &str = "bench.local/endpoints:1";
const PORT: i32 = 8080;

fn pod(name: &str, app: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {
            "runtimeClassName": "wasmtime",
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "http", "image": IMAGE, "imagePullPolicy": "IfNotPresent",
                            "ports": [{"containerPort": PORT}]}],
        },
    }))
    .expect("a valid pod")
}

fn service(name: &str, app: &str) -> Service {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {"selector": {"app": app}, "ports": [{"port": 80, "targetPort": PORT}]},
    }))
    .expect("a valid service")
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The dnat rules of the bench node's proxy table.
fn endpoint_rules() -> usize {
    std::process::Command::new("nft")
        .args([
            "list",
            "table",
            "ip",
            &crate::proxy::table_name(super::BENCH_BRIDGE),
        ])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .matches("dnat to")
                .count()
        })
        .unwrap_or(0)
}

pub async fn run(args: EndpointsBenchArgs, cluster: BenchCluster<'_>) -> Result<(), BenchError> {
    let store = crate::images::ImageStore::open(&cluster.dir.join("agent").join("images"))?;
    store.import(&args.component, IMAGE)?;
    drop(store);
    let node = BenchNode::start(&cluster, args.endpoints + args.samples + 16).await?;
    let services: Api<Service> = Api::namespaced(node.client.clone(), "bench");
    let started = Instant::now();
    for i in 0..args.endpoints {
        node.pods
            .create(
                &PostParams::default(),
                &pod(&format!("common-{i}"), "common"),
            )
            .await?;
    }
    let pp = PostParams::default();
    let made = futures::stream::iter(0..args.services)
        .map(|i| {
            let services = services.clone();
            let pp = pp.clone();
            async move {
                services
                    .create(&pp, &service(&format!("svc-{i}"), "common"))
                    .await
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    for m in made {
        m?;
    }
    let mut ips = Vec::new();
    for i in 0..args.samples {
        let s = services
            .create(&pp, &service(&format!("probe-{i}"), &format!("probe-{i}")))
            .await?;
        ips.push(s.spec.and_then(|s| s.cluster_ip).unwrap_or_default());
    }
    // Everything in place: every Service's endpoints in the proxy's table.
    let want = args.services * args.endpoints;
    let deadline = Instant::now() + Duration::from_secs(600);
    while endpoint_rules() < want {
        if Instant::now() > deadline {
            return Err(BenchError::Failed(format!(
                "the proxy holds {} of {want} endpoints",
                endpoint_rules()
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "skiff bench endpoints: {} Services x {} endpoints in the node's proxy ({} endpoint rules) after {:.1} s; {} samples",
        args.services,
        args.endpoints,
        endpoint_rules(),
        started.elapsed().as_secs_f64(),
        args.samples
    );
    // When each probe Service's slice first names a ready endpoint: the time splits into
    // Ready -> EndpointSlice (the control plane) and EndpointSlice -> reachable (the node).
    let sliced: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Instant>>> =
        Default::default();
    let slices_api: Api<EndpointSlice> = Api::namespaced(node.client.clone(), "bench");
    let seen = sliced.clone();
    let slice_watch = tokio::spawn(watcher(slices_api, watcher::Config::default()).for_each(
        move |ev| {
            if let Ok(watcher::Event::Apply(s)) = ev {
                let svc = s
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("kubernetes.io/service-name").cloned())
                    .unwrap_or_default();
                let ready = s
                    .endpoints
                    .iter()
                    .any(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false));
                if ready && svc.starts_with("probe-") {
                    seen.lock()
                        .expect("seen")
                        .entry(svc)
                        .or_insert_with(Instant::now);
                }
            }
            async {}
        },
    ));
    let (mut samples, mut to_slice, mut from_slice) = (Vec::new(), Vec::new(), Vec::new());
    for (i, ip) in ips.iter().enumerate() {
        let name = format!("probe-{i}");
        let addr: SocketAddr = format!("{ip}:80")
            .parse()
            .map_err(|e| BenchError::Failed(format!("cluster IP {ip}: {e}")))?;
        let wc = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let mut events = watcher(node.pods.clone(), wc).boxed();
        node.pods.create(&pp, &pod(&name, &name)).await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let ready_at = loop {
            let ev = tokio::time::timeout_at(deadline.into(), events.next())
                .await
                .map_err(|_| BenchError::Failed(format!("{name} did not turn Ready")))?;
            match ev {
                Some(Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p))) if ready(&p) => {
                    break Instant::now()
                }
                Some(_) => {}
                None => return Err(BenchError::Failed("the pod watch ended".into())),
            }
        };
        let reached_at = loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                break Instant::now();
            }
            if Instant::now() > deadline {
                return Err(BenchError::Failed(format!(
                    "{name} never reachable at {addr}"
                )));
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        };
        samples.push(reached_at.saturating_duration_since(ready_at));
        if let Some(at) = sliced.lock().expect("seen").get(&name).copied() {
            to_slice.push(at.saturating_duration_since(ready_at));
            from_slice.push(reached_at.saturating_duration_since(at));
        }
        node.pods.delete(&name, &DeleteParams::default()).await?;
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (p50, p90, p99) = (
        super::pct(&mut samples, 0.5),
        super::pct(&mut samples, 0.9),
        super::pct(&mut samples, 0.99),
    );
    let max = samples.iter().max().copied().unwrap_or_default();
    slice_watch.abort();
    println!(
        "  of which pod Ready -> EndpointSlice with it (control plane): p50 {:.1} ms, p99 {:.1} ms; EndpointSlice -> reachable (watch, proxy sync, nft): p50 {:.1} ms, p99 {:.1} ms",
        ms(super::pct(&mut to_slice, 0.5)),
        ms(super::pct(&mut to_slice, 0.99)),
        ms(super::pct(&mut from_slice, 0.5)),
        ms(super::pct(&mut from_slice, 0.99)),
    );
    println!(
        "new endpoint reachable through its Service after its pod turned Ready: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms (target p99 <= 100 ms)",
        ms(p50),
        ms(p90),
        ms(p99),
        ms(max)
    );
    drop(node);
    Ok(())
}
