//! `skiff`: one binary, one subcommand per role. This file only parses and calls.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

// Many small allocations per request; mimalloc is faster than glibc's malloc here. The
// `system-alloc` feature keeps glibc's, whose calls heap profilers (heaptrack) intercept.
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "skiff",
    version,
    about = "A Kubernetes-compatible orchestrator for WebAssembly and OCI workloads"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Flags of the control loops and admission, shared by `server` and `dev`.
#[derive(clap::Args)]
struct ControlFlags {
    /// A node whose agent posts no heartbeat for this long becomes Unknown and unreachable.
    #[arg(long, default_value = "6s", value_parser = skiff_api::duration::parse)]
    node_monitor_grace_period: std::time::Duration,
    /// How often the node lifecycle controller looks at each node.
    #[arg(long, default_value = "1s", value_parser = skiff_api::duration::parse)]
    node_monitor_period: std::time::Duration,
    /// tolerationSeconds of the not-ready:NoExecute toleration admission gives pods.
    #[arg(long, default_value_t = skiff_control_plane::objects::DEFAULT_TOLERATION_SECONDS)]
    default_not_ready_toleration_seconds: i64,
    /// tolerationSeconds of the unreachable:NoExecute toleration admission gives pods:
    /// how long pods stay on a node that stopped answering.
    #[arg(long, default_value_t = skiff_control_plane::objects::DEFAULT_TOLERATION_SECONDS)]
    default_unreachable_toleration_seconds: i64,
    /// How the scheduler ranks the nodes a pod fits: least-allocated spreads pods,
    /// most-allocated packs them onto as few nodes as possible.
    #[arg(long, value_enum, default_value_t = Scoring::LeastAllocated)]
    scheduler_scoring: Scoring,
    /// Give each node a pod range (spec.podCIDR) from --cluster-cidr.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    allocate_node_cidrs: bool,
    /// The range pod addresses come from.
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: skiff_api::cidr::Cidr,
    /// The prefix length of each node's pod range.
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u8).range(8..=30))]
    node_cidr_mask_size: u8,
    /// The address the `kubernetes` Service's endpoints name (kube-apiserver's
    /// --advertise-address); default: the listen address, or where it is loopback or
    /// unspecified, this host's address on its default route.
    #[arg(long)]
    advertise_address: Option<std::net::IpAddr>,
}

/// How the agent networks its pods.
#[derive(clap::Args)]
struct NetworkFlags {
    /// auto: a network namespace per pod through CNI where the agent can make one (root,
    /// plugins installed), else the node's network; cni: always (or fail); node: never.
    #[arg(long, value_enum, default_value_t = PodNetwork::Auto)]
    pod_network: PodNetwork,
    /// Where the CNI plugins are.
    #[arg(long, default_value = skiff_node::sandbox::network::DEFAULT_BIN_DIR)]
    cni_bin_dir: PathBuf,
    /// The bridge the node's pods are attached to.
    #[arg(long, default_value = "skiff0")]
    cni_bridge: String,
    /// Pod networks kept set up ahead of the pods that will take them (pods without
    /// hostPorts start without waiting for the CNI plugins); each holds an address.
    #[arg(long, default_value_t = 4)]
    warm_pod_networks: usize,
    /// How Service traffic is proxied on this node: nftables (as kube-proxy's nftables
    /// mode; needs root and nft), or none.
    #[arg(long, value_enum, default_value_t = ProxyMode::Nftables)]
    proxy_mode: ProxyMode,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ProxyMode {
    Nftables,
    None,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PodNetwork {
    Auto,
    Cni,
    Node,
}

/// The node's OCI runtime.
#[derive(clap::Args)]
struct OciFlags {
    /// Offer the OCI runtime (runc) where the node can (root, runc, overlayfs).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    oci_runtime: bool,
    /// The runc binary.
    #[arg(long, default_value = "runc")]
    runc: PathBuf,
    /// The most processes one container may run (-1: no limit).
    #[arg(long, default_value_t = 4096, allow_negative_numbers = true)]
    pod_max_pids: i64,
    /// Let containers with `privileged: true` run on this node.
    #[arg(long)]
    allow_privileged: bool,
}

impl OciFlags {
    fn config(&self) -> Option<skiff_node::runtime::oci::OciConfig> {
        self.oci_runtime
            .then(|| skiff_node::runtime::oci::OciConfig {
                runc: self.runc.clone(),
                pids_limit: (self.pod_max_pids > 0).then_some(self.pod_max_pids),
                allow_privileged: self.allow_privileged,
            })
    }
}

impl NetworkFlags {
    fn mode(&self) -> skiff_node::agent::PodNetworkMode {
        match self.pod_network {
            PodNetwork::Auto => skiff_node::agent::PodNetworkMode::Auto,
            PodNetwork::Cni => skiff_node::agent::PodNetworkMode::Cni,
            PodNetwork::Node => skiff_node::agent::PodNetworkMode::Node,
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Scoring {
    LeastAllocated,
    MostAllocated,
}

impl ControlFlags {
    fn admission(&self) -> skiff_control_plane::objects::Admission {
        skiff_control_plane::objects::Admission {
            default_not_ready_toleration_seconds: self.default_not_ready_toleration_seconds,
            default_unreachable_toleration_seconds: self.default_unreachable_toleration_seconds,
        }
    }

    fn controllers(&self) -> skiff_control_plane::controllers::ControllerConfig {
        skiff_control_plane::controllers::ControllerConfig {
            node_lifecycle: skiff_control_plane::controllers::NodeLifecycleConfig {
                monitor_period: self.node_monitor_period,
                grace_period: self.node_monitor_grace_period,
            },
            node_ipam: self.allocate_node_cidrs.then_some(
                skiff_control_plane::controllers::NodeIpamConfig {
                    cluster_cidr: self.cluster_cidr,
                    node_mask: self.node_cidr_mask_size,
                },
            ),
            scoring: match self.scheduler_scoring {
                Scoring::LeastAllocated => skiff_control_plane::scheduler::Scoring::LeastAllocated,
                Scoring::MostAllocated => skiff_control_plane::scheduler::Scoring::MostAllocated,
            },
            api_endpoint: None,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the API server (and the control-plane controllers) on the embedded store.
    Server {
        /// Where the store, credentials and kubeconfig live.
        #[arg(long)]
        data_dir: PathBuf,
        /// Address to serve HTTPS on.
        #[arg(long, default_value = "127.0.0.1:6443")]
        listen: SocketAddr,
        /// Store revisions kept so watches can resume from older resourceVersions.
        #[arg(long, default_value_t = skiff_control_plane::apiserver::DEFAULT_HISTORY)]
        history: u64,
        /// Start even if the store's write-ahead log is damaged (not just a torn final
        /// record): truncate it at the damage, keeping what follows in the log directory.
        /// Writes after the damage are lost; without this flag the server refuses to start.
        #[arg(long)]
        repair: bool,
        #[command(flatten)]
        control: ControlFlags,
    },
    /// Run a node agent: register the node and run the pods bound to it.
    Agent {
        #[arg(long)]
        kubeconfig: PathBuf,
        #[arg(long)]
        node_name: Option<String>,
        #[arg(long)]
        data_dir: PathBuf,
        /// Pods this node accepts.
        #[arg(long, default_value_t = 1000)]
        max_pods: u32,
        /// The node's address (default: the local address that reaches the API server).
        #[arg(long)]
        node_ip: Option<String>,
        /// Port of the agent's HTTPS endpoint (container logs).
        #[arg(long, default_value_t = 10250)]
        port: u16,
        /// A registry (host:port) to pull from over plain HTTP (loopback ones always are).
        #[arg(long = "insecure-registry")]
        insecure_registries: Vec<String>,
        /// How often the node's Lease is renewed (the heartbeat), e.g. 2s.
        #[arg(long, default_value = "2s", value_parser = skiff_api::duration::parse)]
        lease_renew_interval: std::time::Duration,
        /// The cluster's pod range (the server's --cluster-cidr): Service traffic from
        /// outside it is masqueraded.
        #[arg(long, default_value = "10.244.0.0/16")]
        cluster_cidr: skiff_api::cidr::Cidr,
        #[command(flatten)]
        network: NetworkFlags,
        #[command(flatten)]
        oci: OciFlags,
    },
    /// An all-in-one cluster: the API server and an agent on this machine, the agent
    /// connecting over loopback as a remote one would. Needs no root for Wasm pods.
    Dev {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:6443")]
        listen: SocketAddr,
        #[arg(long, default_value_t = skiff_control_plane::apiserver::DEFAULT_HISTORY)]
        history: u64,
        /// As `skiff server --repair`.
        #[arg(long)]
        repair: bool,
        #[arg(long)]
        node_name: Option<String>,
        #[arg(long, default_value_t = 1000)]
        max_pods: u32,
        #[command(flatten)]
        control: ControlFlags,
        #[command(flatten)]
        network: NetworkFlags,
        #[command(flatten)]
        oci: OciFlags,
    },
    /// Tear down what a stopped agent's pods left on this node (their containers, network
    /// namespaces and addresses, files) and the pods' bridge, as `kubeadm reset` does. Run
    /// with the agent stopped.
    Reset {
        /// The agent's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// The pods' bridge, removed too.
        #[arg(long, default_value = "skiff0")]
        cni_bridge: String,
        /// The runc binary the agent used.
        #[arg(long, default_value = "runc")]
        runc: PathBuf,
    },
    /// A runc container's shim (started by the agent, one per container).
    #[command(hide = true)]
    Shim {
        #[arg(long)]
        id: String,
        #[arg(long)]
        bundle: PathBuf,
        #[arg(long)]
        runc: PathBuf,
        #[arg(long)]
        runc_root: PathBuf,
        #[arg(long)]
        log: PathBuf,
        #[arg(long)]
        max_log_bytes: u64,
        #[arg(long)]
        cgroup: String,
        #[arg(long)]
        stdin: bool,
        #[arg(long)]
        stdin_once: bool,
        #[arg(long)]
        tty: bool,
    },
    /// The holder of a pod's shared PID namespace (started by the agent).
    #[command(hide = true)]
    Pause {
        #[arg(long)]
        pod: String,
    },
    /// Publish a Wasm module or component to an OCI registry as a CNCF Wasm artifact.
    Push {
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
    },
    /// The node's image store.
    Images {
        #[command(subcommand)]
        what: Images,
    },
    /// Benchmarks against a running server (or one the bench starts).
    /// Fuzz the API server's decoders and patch paths from the seed corpus for a set time
    /// per target, saving inputs that panic or are slow (control-plane/src/fuzz.rs).
    Fuzz {
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
    },
    Bench {
        #[command(subcommand)]
        what: Bench,
    },
}

#[derive(Subcommand)]
enum Images {
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

#[derive(Subcommand)]
enum Bench {
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

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SKIFF_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_lowercase())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "skiff-node".into())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The shim forks first thing: it must do so while the process has a single thread.
    if let Command::Shim {
        id,
        bundle,
        runc,
        runc_root,
        log,
        max_log_bytes,
        cgroup,
        stdin,
        stdin_once,
        tty,
    } = cli.command
    {
        let args = skiff_node::runtime::oci::shim::ShimArgs {
            id,
            bundle,
            runc,
            runc_root,
            log,
            max_log_bytes,
            cgroup,
            stdin,
            stdin_once,
            tty,
        };
        std::process::exit(skiff_node::runtime::oci::shim::run(args));
    }
    // The pause process forks into a new PID namespace: single-threaded too.
    if let Command::Pause { pod } = &cli.command {
        std::process::exit(skiff_node::sandbox::pause::run(pod));
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    init_tracing();
    // One TLS crypto provider for the whole process (clients and servers alike).
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command {
        Command::Shim { .. } | Command::Pause { .. } => {
            unreachable!("handled before the runtime starts")
        }
        Command::Server {
            data_dir,
            listen,
            history,
            repair,
            control,
        } => {
            let config = skiff_control_plane::cluster::Config {
                server: skiff_control_plane::apiserver::ServerConfig {
                    data_dir,
                    listen,
                    history,
                    repair,
                    admission: control.admission(),
                    advertise_address: control.advertise_address,
                },
                controllers: control.controllers(),
            };
            skiff_control_plane::cluster::run(config, shutdown_signal()).await?;
        }
        Command::Agent {
            kubeconfig,
            node_name,
            data_dir,
            max_pods,
            node_ip,
            port,
            insecure_registries,
            lease_renew_interval,
            cluster_cidr,
            network,
            oci,
        } => {
            let node_name = node_name.unwrap_or_else(hostname);
            let config = skiff_node::agent::AgentConfig {
                kubeconfig,
                node_name,
                data_dir,
                max_pods,
                node_ip,
                port,
                insecure_registries,
                lease_renew_interval,
                pod_network: network.mode(),
                cni_bin_dir: network.cni_bin_dir,
                cni_bridge: network.cni_bridge,
                warm_pod_networks: network.warm_pod_networks,
                service_proxy: network.proxy_mode == ProxyMode::Nftables,
                cluster_cidr,
                oci: oci.config(),
            };
            skiff_node::agent::run(config, shutdown_signal()).await?;
        }
        Command::Dev {
            data_dir,
            listen,
            history,
            repair,
            node_name,
            max_pods,
            control,
            network,
            oci,
        } => {
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            let server_config = skiff_control_plane::cluster::Config {
                server: skiff_control_plane::apiserver::ServerConfig {
                    data_dir: data_dir.clone(),
                    listen,
                    history,
                    repair,
                    admission: control.admission(),
                    advertise_address: control.advertise_address,
                },
                controllers: control.controllers(),
            };
            let server =
                skiff_control_plane::cluster::start(server_config, stopped(stop_rx.clone()))
                    .await?;
            let agent_config = skiff_node::agent::AgentConfig {
                kubeconfig: server.kubeconfig.clone(),
                node_name: node_name.unwrap_or_else(hostname),
                data_dir: data_dir.join("agent"),
                max_pods,
                node_ip: None,
                // Any free port, so several dev clusters can share a machine.
                port: 0,
                insecure_registries: Vec::new(),
                lease_renew_interval: skiff_node::agent::LEASE_RENEW_INTERVAL,
                pod_network: network.mode(),
                cni_bin_dir: network.cni_bin_dir.clone(),
                cni_bridge: network.cni_bridge.clone(),
                warm_pod_networks: network.warm_pod_networks,
                service_proxy: network.proxy_mode == ProxyMode::Nftables,
                cluster_cidr: control.cluster_cidr,
                oci: oci.config(),
            };
            let mut agent = tokio::spawn(skiff_node::agent::run(agent_config, stopped(stop_rx)));
            // Stop on a signal, or when the agent fails (the whole cluster goes down with it).
            let early = tokio::select! {
                _ = shutdown_signal() => None,
                r = &mut agent => Some(r),
            };
            let _ = stop_tx.send(true);
            let result = match early {
                Some(r) => r,
                None => agent.await,
            };
            server.wait().await;
            result??;
        }
        Command::Push {
            file,
            image,
            username,
            password,
            insecure,
        } => {
            let wasm = std::fs::read(&file)?;
            let auth = match (username, password) {
                (Some(u), Some(p)) => skiff_node::registry::Auth::Basic(u, p),
                _ => skiff_node::registry::Auth::Anonymous,
            };
            let registry = image.split('/').next().unwrap_or_default().to_string();
            let insecure = if insecure { vec![registry] } else { vec![] };
            let url = skiff_node::registry::push(wasm, &image, &auth, &insecure).await?;
            println!("pushed {image} ({url})");
        }
        Command::Reset {
            data_dir,
            cni_bridge,
            runc,
        } => skiff_node::agent::reset(&data_dir, &cni_bridge, &runc).await?,
        Command::Images {
            what:
                Images::Import {
                    file,
                    name,
                    data_dir,
                },
        } => {
            let store = skiff_node::images::ImageStore::open(&data_dir.join("images"))?;
            let img = store.import(&file, &name)?;
            println!("imported {} ({})", img.reference, img.digest);
        }
        Command::Images {
            what: Images::List { data_dir },
        } => {
            for (reference, digest) in
                skiff_node::images::ImageStore::open(&data_dir.join("images"))?.list()
            {
                println!("{reference}\t{digest}");
            }
        }
        Command::Fuzz {
            seconds,
            targets,
            dir,
            findings,
            seed,
        } => {
            let seed = seed.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64)
            });
            println!("seed {seed}");
            // On a thread of its own: the write-path target drives its own runtime.
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
        }
        Command::Bench {
            what: Bench::Api(args),
        } => skiff_control_plane::bench::run_api(args).await?,
        Command::Bench {
            what: Bench::Scheduler(args),
        } => skiff_control_plane::bench::scheduler::run(args).await?,
        Command::Bench {
            what: Bench::Pods(args),
        } => {
            let server = skiff_control_plane::bench::BenchServer::start("skiff-bench-pods")?;
            skiff_node::bench::run_pods(args, bench_cluster(&server)).await?
        }
        Command::Bench {
            what: Bench::Http(args),
        } => {
            let server = skiff_control_plane::bench::BenchServer::start("skiff-bench-http")?;
            skiff_node::bench::http::run(args, bench_cluster(&server)).await?
        }
        Command::Bench {
            what: Bench::Endpoints(args),
        } => {
            let server = skiff_control_plane::bench::BenchServer::start("skiff-bench-endpoints")?;
            skiff_node::bench::endpoints::run(args, bench_cluster(&server)).await?
        }
    }
    Ok(())
}
