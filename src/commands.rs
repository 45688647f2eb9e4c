//! The one-shot subcommands: `reset`, `push`, `images`, `fuzz` and `bench`, each its
//! arguments and what it does with them.

use std::path::PathBuf;

/// `skiff reset`.
#[derive(clap::Args)]
pub struct ResetArgs {
    /// The agent's data directory.
    #[arg(long)]
    data_dir: PathBuf,
    /// The pods' bridge, removed too.
    #[arg(long, default_value = "skiff0")]
    cni_bridge: String,
    /// The runc binary the agent used.
    #[arg(long, default_value = "runc")]
    runc: PathBuf,
}

pub async fn reset(args: ResetArgs) -> anyhow::Result<()> {
    skiff_node::agent::reset(&args.data_dir, &args.cni_bridge, &args.runc).await?;
    Ok(())
}

/// `skiff push`.
#[derive(clap::Args)]
pub struct PushArgs {
    file: PathBuf,
    /// Where to push, e.g. 127.0.0.1:5000/examples/hello:1.0.
    image: String,
    #[arg(long)]
    username: Option<String>,
    #[arg(long)]
    password: Option<String>,
    /// Speak plain HTTP to this (non-loopback) registry.
    #[arg(long)]
    insecure: bool,
}

pub async fn push(args: PushArgs) -> anyhow::Result<()> {
    let wasm = std::fs::read(&args.file)?;
    let auth = match (args.username, args.password) {
        (Some(u), Some(p)) => skiff_node::registry::Auth::Basic(u, p),
        _ => skiff_node::registry::Auth::Anonymous,
    };
    let insecure = if args.insecure {
        vec![registry_host(&args.image).to_string()]
    } else {
        vec![]
    };
    let url = skiff_node::registry::push(wasm, &args.image, &auth, &insecure).await?;
    println!("pushed {} ({url})", args.image);
    Ok(())
}

/// The registry part of an image reference as written (`host:port` of
/// `host:port/repo:tag`), the form the registry client matches its insecure list against.
fn registry_host(image: &str) -> &str {
    image.split('/').next().unwrap_or_default()
}

/// `skiff images`.
#[derive(clap::Subcommand)]
pub enum Images {
    /// Load a Wasm module or component into a node's image store (for air-gapped nodes).
    Import {
        file: PathBuf,
        /// The image reference pods will use, e.g. registry.example/hello:1.0.
        #[arg(long)]
        name: String,
        /// The agent's data directory (for `skiff dev`, DIR/agent).
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// List the images in a node's store.
    List {
        #[arg(long)]
        data_dir: PathBuf,
    },
}

pub fn images(what: Images) -> anyhow::Result<()> {
    match what {
        Images::Import {
            file,
            name,
            data_dir,
        } => {
            let store = skiff_node::images::ImageStore::open(&data_dir.join("images"))?;
            let img = store.import(&file, &name)?;
            println!("imported {} ({})", img.reference, img.digest);
        }
        Images::List { data_dir } => {
            for (reference, digest) in
                skiff_node::images::ImageStore::open(&data_dir.join("images"))?.list()
            {
                println!("{reference}\t{digest}");
            }
        }
    }
    Ok(())
}

/// `skiff fuzz`.
#[derive(clap::Args)]
pub struct FuzzArgs {
    /// Seconds to fuzz each target.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Only these targets (repeatable): json, yaml, protobuf, json-patch, merge-patch,
    /// strategic-merge-patch, apply, write-path, label-selector, field-selector,
    /// quantity, query, wal.
    #[arg(long = "target")]
    targets: Vec<String>,
    /// The corpus directory (with corpus/ and regressions/).
    #[arg(long, default_value = "control-plane/fuzz")]
    dir: PathBuf,
    /// Where findings are written, one file per input.
    #[arg(long, default_value = "fuzz-findings")]
    findings: PathBuf,
    /// Random seed (default: from the clock); a run is reproducible with its seed.
    #[arg(long)]
    seed: Option<u64>,
}

pub fn fuzz(args: FuzzArgs) -> anyhow::Result<()> {
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    println!("seed {seed}");
    // On a thread of its own: the write-path target drives its own runtime.
    let FuzzArgs {
        seconds,
        targets,
        dir,
        findings,
        ..
    } = args;
    let out = findings.clone();
    let found = std::thread::spawn(move || {
        skiff_control_plane::fuzz::run_cli(
            &dir,
            &targets,
            std::time::Duration::from_secs(seconds),
            &out,
            seed,
        )
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the fuzzer itself panicked"))??;
    anyhow::ensure!(found == 0, "{found} findings in {}", findings.display());
    Ok(())
}

// `skiff bench`. (A doc comment here would become the subcommand's about: it has none.)
#[derive(clap::Subcommand)]
pub enum Bench {
    /// API server throughput and latency: create, update, get, list, watch fan-out.
    Api(skiff_control_plane::bench::ApiBenchArgs),
    /// Wasm pod start latency and idle-pod density on one node.
    Pods(skiff_node::bench::PodBenchArgs),
    /// Requests per second of a wasi:http component served at its pod's IP, next to
    /// `wasmtime serve` of the same component.
    Http(skiff_node::bench::http::HttpBenchArgs),
    /// How long a new endpoint takes to be reachable through its Service after its pod
    /// turns Ready, with many Services in the node's proxy.
    Endpoints(skiff_node::bench::endpoints::EndpointsBenchArgs),
    /// Scheduling throughput and latency on simulated nodes (kube's SchedulingBasic).
    Scheduler(skiff_control_plane::bench::scheduler::SchedulerBenchArgs),
}

pub async fn bench(what: Bench) -> anyhow::Result<()> {
    use skiff_control_plane::bench::BenchServer;
    match what {
        Bench::Api(args) => skiff_control_plane::bench::run_api(args).await?,
        Bench::Scheduler(args) => skiff_control_plane::bench::scheduler::run(args).await?,
        Bench::Pods(args) => {
            let server = BenchServer::start("skiff-bench-pods")?;
            skiff_node::bench::run_pods(args, bench_cluster(&server)).await?
        }
        Bench::Http(args) => {
            let server = BenchServer::start("skiff-bench-http")?;
            skiff_node::bench::http::run(args, bench_cluster(&server)).await?
        }
        Bench::Endpoints(args) => {
            let server = BenchServer::start("skiff-bench-endpoints")?;
            skiff_node::bench::endpoints::run(args, bench_cluster(&server)).await?
        }
    }
    Ok(())
}

/// What a node bench needs of the API server it started.
fn bench_cluster(
    server: &skiff_control_plane::bench::BenchServer,
) -> skiff_node::bench::BenchCluster<'_> {
    skiff_node::bench::BenchCluster {
        dir: server.dir.path(),
        kubeconfig: &server.kubeconfig,
        server_pid: server.pid(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_host_is_the_first_path_segment() {
        assert_eq!(
            registry_host("127.0.0.1:5000/examples/hello:1.0"),
            "127.0.0.1:5000"
        );
        assert_eq!(registry_host("registry.example/hello"), "registry.example");
        // No registry written: the first segment stands, as before (never docker.io).
        assert_eq!(registry_host("hello:1.0"), "hello:1.0");
    }
}
