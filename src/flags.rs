//! The flags of the long-running roles (`server`, `agent`, `dev`), each group with the
//! `config()` that turns it into what the library crates run. Groups that several roles
//! share are flattened into each, so a flag is declared (name, default, help) once.

use std::net::SocketAddr;
use std::path::PathBuf;

use skiff_control_plane::{apiserver, cluster, controllers, objects, scheduler};
use skiff_node::agent::{AgentConfig, PodNetworkMode};
use skiff_node::runtime::oci::OciConfig;

/// `skiff server`: the API server, then the control loops.
#[derive(clap::Args)]
pub struct ServerFlags {
    #[command(flatten)]
    pub api: ApiFlags,
    #[command(flatten)]
    pub control: ControlFlags,
}

impl ServerFlags {
    pub fn config(&self) -> cluster::Config {
        self.api.config(&self.control)
    }
}

/// The API server's own flags, shared by `server` and `dev`.
#[derive(clap::Args)]
pub struct ApiFlags {
    /// Where the store, credentials and kubeconfig live.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Address to serve HTTPS on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub listen: SocketAddr,
    /// Store revisions kept so watches can resume from older resourceVersions.
    #[arg(long, default_value_t = apiserver::DEFAULT_HISTORY)]
    pub history: u64,
    /// Start even if the store's write-ahead log is damaged (not just a torn final
    /// record): truncate it at the damage, keeping what follows in the log directory.
    /// Writes after the damage are lost; without this flag the server refuses to start.
    #[arg(long)]
    pub repair: bool,
    /// Connections served at once; more wait until one ends.
    #[arg(long, default_value_t = skiff_api::conn::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Read-only requests served at once (watches, logs and exec aside); more get 429.
    #[arg(long, default_value_t = apiserver::inflight::DEFAULT_MAX_REQUESTS_INFLIGHT)]
    pub max_requests_inflight: usize,
    /// Mutating requests served at once; more get 429.
    #[arg(long, default_value_t = apiserver::inflight::DEFAULT_MAX_MUTATING_REQUESTS_INFLIGHT)]
    pub max_mutating_requests_inflight: usize,
}

impl ApiFlags {
    /// The control plane these flags and `control` describe.
    pub fn config(&self, control: &ControlFlags) -> cluster::Config {
        cluster::Config {
            server: apiserver::ServerConfig {
                data_dir: self.data_dir.clone(),
                listen: self.listen,
                history: self.history,
                repair: self.repair,
                admission: control.admission(),
                limits: apiserver::ServeLimits {
                    max_connections: self.max_connections,
                    max_requests_inflight: self.max_requests_inflight,
                    max_mutating_requests_inflight: self.max_mutating_requests_inflight,
                },
                advertise_address: control.advertise_address,
            },
            controllers: control.controllers(),
        }
    }
}

/// Flags of the control loops and admission, shared by `server` and `dev`.
#[derive(clap::Args)]
pub struct ControlFlags {
    /// A node whose agent posts no heartbeat for this long becomes Unknown and unreachable.
    #[arg(long, default_value = "6s", value_parser = skiff_api::duration::parse)]
    node_monitor_grace_period: std::time::Duration,
    /// How often the node lifecycle controller looks at each node.
    #[arg(long, default_value = "1s", value_parser = skiff_api::duration::parse)]
    node_monitor_period: std::time::Duration,
    /// tolerationSeconds of the not-ready:NoExecute toleration admission gives pods.
    #[arg(long, default_value_t = objects::DEFAULT_TOLERATION_SECONDS)]
    default_not_ready_toleration_seconds: i64,
    /// tolerationSeconds of the unreachable:NoExecute toleration admission gives pods:
    /// how long pods stay on a node that stopped answering.
    #[arg(long, default_value_t = objects::DEFAULT_TOLERATION_SECONDS)]
    default_unreachable_toleration_seconds: i64,
    /// Admission plugins to turn on besides those always on (kube-apiserver's flag):
    /// DenyServiceExternalIPs refuses new Service externalIPs.
    #[arg(long, value_delimiter = ',', value_parser = admission_plugin)]
    enable_admission_plugins: Vec<String>,
    /// How the scheduler ranks the nodes a pod fits: least-allocated spreads pods,
    /// most-allocated packs them onto as few nodes as possible.
    #[arg(long, value_enum, default_value_t = Scoring::LeastAllocated)]
    scheduler_scoring: Scoring,
    /// Give each node a pod range (spec.podCIDR) from --cluster-cidr.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    allocate_node_cidrs: bool,
    /// The range pod addresses come from.
    #[arg(long, default_value = "10.244.0.0/16")]
    pub cluster_cidr: skiff_api::cidr::Cidr,
    /// The prefix length of each node's pod range.
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u8).range(8..=30))]
    node_cidr_mask_size: u8,
    /// The address the `kubernetes` Service's endpoints name (kube-apiserver's
    /// --advertise-address); default: the listen address, or where it is loopback or
    /// unspecified, this host's address on its default route.
    #[arg(long)]
    advertise_address: Option<std::net::IpAddr>,
}

/// An admission plugin's name, if Skiff has that plugin.
fn admission_plugin(name: &str) -> Result<String, String> {
    let known = || {
        objects::ALWAYS_ON_PLUGINS
            .iter()
            .chain(objects::OPTIONAL_PLUGINS)
    };
    if known().any(|p| *p == name) {
        Ok(name.to_string())
    } else {
        let all: Vec<&str> = known().copied().collect();
        Err(format!(
            "unknown admission plugin {name:?}; known: {}",
            all.join(", ")
        ))
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Scoring {
    LeastAllocated,
    MostAllocated,
}

impl ControlFlags {
    fn admission(&self) -> objects::Admission {
        objects::Admission {
            default_not_ready_toleration_seconds: self.default_not_ready_toleration_seconds,
            default_unreachable_toleration_seconds: self.default_unreachable_toleration_seconds,
            deny_service_external_ips: self
                .enable_admission_plugins
                .iter()
                .any(|p| p == "DenyServiceExternalIPs"),
        }
    }

    fn controllers(&self) -> cluster::ControllerConfig {
        cluster::ControllerConfig {
            node_lifecycle: controllers::NodeLifecycleConfig {
                monitor_period: self.node_monitor_period,
                grace_period: self.node_monitor_grace_period,
            },
            node_ipam: self
                .allocate_node_cidrs
                .then_some(controllers::NodeIpamConfig {
                    cluster_cidr: self.cluster_cidr,
                    node_mask: self.node_cidr_mask_size,
                }),
            scoring: match self.scheduler_scoring {
                Scoring::LeastAllocated => scheduler::Scoring::LeastAllocated,
                Scoring::MostAllocated => scheduler::Scoring::MostAllocated,
            },
            // The composer fills it in once the server knows its address.
            api_endpoint: None,
        }
    }
}

/// `skiff agent`: a node agent talking to the API server its kubeconfig names. `skiff dev`
/// fills one in for its own agent, which then starts as a remote one would.
#[derive(clap::Args)]
pub struct AgentFlags {
    #[arg(long)]
    pub kubeconfig: PathBuf,
    #[arg(long)]
    pub node_name: Option<String>,
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Pods this node accepts.
    #[arg(long, default_value_t = 1000)]
    pub max_pods: u32,
    /// The node's address (default: the local address that reaches the API server).
    #[arg(long)]
    pub node_ip: Option<String>,
    /// Port of the agent's HTTPS endpoint (container logs).
    #[arg(long, default_value_t = 10250)]
    pub port: u16,
    #[command(flatten)]
    pub pull: PullFlags,
    #[command(flatten)]
    pub logs: LogFlags,
    #[command(flatten)]
    pub image_gc: ImageGcFlags,
    /// How often the node's Lease is renewed (the heartbeat), e.g. 2s.
    #[arg(long, default_value = "2s", value_parser = skiff_api::duration::parse)]
    pub lease_renew_interval: std::time::Duration,
    /// The cluster's pod range (the server's --cluster-cidr): Service traffic from
    /// outside it is masqueraded.
    #[arg(long, default_value = "10.244.0.0/16")]
    pub cluster_cidr: skiff_api::cidr::Cidr,
    #[command(flatten)]
    pub network: NetworkFlags,
    #[command(flatten)]
    pub oci: OciFlags,
}

/// How image pulls go: plain-HTTP registries, and how large an image may be.
#[derive(clap::Args)]
pub struct PullFlags {
    /// A registry (host:port) to pull from over plain HTTP (loopback ones always are).
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,
    /// The most bytes one image layer may have, as downloaded and as unpacked (e.g. 4Gi).
    #[arg(long, default_value = "4Gi", value_parser = bytes)]
    pub max_layer_size: u64,
    /// The most bytes an image's layers may have together, as downloaded and as unpacked.
    #[arg(long, default_value = "8Gi", value_parser = bytes)]
    pub max_image_size: u64,
    /// The most bytes a Wasm module or component may have to be pulled and compiled.
    #[arg(long, default_value = "256Mi", value_parser = bytes)]
    pub max_wasm_size: u64,
    /// A pull receiving nothing for this long fails (the kubelet's flag), e.g. 1m.
    #[arg(long, default_value = "1m", value_parser = skiff_api::duration::parse)]
    pub image_pull_progress_deadline: std::time::Duration,
}

impl Default for PullFlags {
    fn default() -> Self {
        PullFlags {
            insecure_registries: Vec::new(),
            max_layer_size: skiff_node::registry::DEFAULT_MAX_LAYER_BYTES,
            max_image_size: skiff_node::registry::DEFAULT_MAX_IMAGE_BYTES,
            max_wasm_size: skiff_node::runtime::wasm::MAX_WASM_BYTES,
            image_pull_progress_deadline: skiff_node::registry::DEFAULT_PROGRESS_DEADLINE,
        }
    }
}

impl PullFlags {
    fn options(self) -> skiff_node::registry::PullOptions {
        skiff_node::registry::PullOptions {
            insecure: self.insecure_registries,
            max_layer_bytes: self.max_layer_size,
            max_image_bytes: self.max_image_size,
            max_wasm_bytes: self.max_wasm_size,
            progress_deadline: self.image_pull_progress_deadline,
        }
    }
}

/// When unused images are deleted (the kubelet's flags of the same names).
#[derive(clap::Args, Default)]
pub struct ImageGcFlags {
    /// Percent of the image disk used past which unused images are deleted (default 85;
    /// 100 turns collection off).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=100))]
    image_gc_high_threshold: Option<u8>,
    /// Percent of the image disk a collection brings usage down to (default 80).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=100))]
    image_gc_low_threshold: Option<u8>,
    /// Images first seen more recently than this are never deleted (default 2m).
    #[arg(long, value_parser = skiff_api::duration::parse)]
    minimum_image_ttl_duration: Option<std::time::Duration>,
    /// How often the image disk's usage is checked (default 5m; every 10s under
    /// DiskPressure).
    #[arg(long, value_parser = skiff_api::duration::parse)]
    image_gc_period: Option<std::time::Duration>,
}

impl ImageGcFlags {
    fn policy(self) -> anyhow::Result<skiff_node::agent::ImageGcPolicy> {
        let d = skiff_node::agent::ImageGcPolicy::default();
        let policy = skiff_node::agent::ImageGcPolicy {
            high_percent: self.image_gc_high_threshold.unwrap_or(d.high_percent),
            low_percent: self.image_gc_low_threshold.unwrap_or(d.low_percent),
            min_age: self.minimum_image_ttl_duration.unwrap_or(d.min_age),
            period: self.image_gc_period.unwrap_or(d.period),
        };
        // The kubelet's rule.
        anyhow::ensure!(
            policy.low_percent < policy.high_percent || policy.high_percent == 100,
            "--image-gc-low-threshold ({}) must be less than --image-gc-high-threshold ({})",
            policy.low_percent,
            policy.high_percent
        );
        Ok(policy)
    }
}

/// When containers' logs rotate (the kubelet's flags of the same names).
#[derive(clap::Args, Default)]
pub struct LogFlags {
    /// A container's log file is rotated past this size (default 10Mi).
    #[arg(long, value_parser = bytes)]
    container_log_max_size: Option<u64>,
    /// The most log files kept per container run, the current one included (default 5,
    /// at least 2).
    #[arg(long, value_parser = clap::value_parser!(u32).range(2..))]
    container_log_max_files: Option<u32>,
}

impl LogFlags {
    fn rotation(self) -> skiff_node::logs::Rotation {
        let default = skiff_node::logs::Rotation::default();
        skiff_node::logs::Rotation {
            max_bytes: self.container_log_max_size.unwrap_or(default.max_bytes),
            max_files: self.container_log_max_files.unwrap_or(default.max_files),
        }
    }
}

/// A size in bytes, as a Kubernetes quantity (`512Mi`, `4Gi`).
fn bytes(s: &str) -> Result<u64, String> {
    let q = skiff_api::quantity::parse(s).map_err(|e| e.to_string())?;
    u64::try_from(q.0 / 1000).map_err(|_| format!("{s}: not a size in bytes"))
}

impl AgentFlags {
    pub fn config(self) -> anyhow::Result<AgentConfig> {
        let network = self.network;
        Ok(AgentConfig {
            kubeconfig: self.kubeconfig,
            node_name: self.node_name.unwrap_or_else(hostname),
            data_dir: self.data_dir,
            max_pods: self.max_pods,
            node_ip: self.node_ip,
            port: self.port,
            pull: self.pull.options(),
            log_rotation: self.logs.rotation(),
            lease_renew_interval: self.lease_renew_interval,
            pod_network: network.mode(),
            cni_bin_dir: network.cni_bin_dir,
            cni_bridge: network.cni_bridge,
            warm_pod_networks: network.warm_pod_networks,
            service_proxy: network.proxy_mode == ProxyMode::Nftables,
            cluster_cidr: self.cluster_cidr,
            oci: self.oci.config(),
            image_gc: self.image_gc.policy()?,
        })
    }
}

/// How the agent networks its pods.
#[derive(clap::Args)]
pub struct NetworkFlags {
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

impl NetworkFlags {
    fn mode(&self) -> PodNetworkMode {
        match self.pod_network {
            PodNetwork::Auto => PodNetworkMode::Auto,
            PodNetwork::Cni => PodNetworkMode::Cni,
            PodNetwork::Node => PodNetworkMode::Node,
        }
    }
}

/// The node's OCI runtime.
#[derive(clap::Args)]
pub struct OciFlags {
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
    /// Give containers that ask for no seccomp profile the runtime's default
    /// (RuntimeDefault), as the kubelet's flag; else they run unconfined, as in Kubernetes.
    #[arg(long)]
    seccomp_default: bool,
}

impl OciFlags {
    /// `None`: the node runs Wasm only.
    fn config(&self) -> Option<OciConfig> {
        self.oci_runtime.then(|| OciConfig {
            runc: self.runc.clone(),
            pids_limit: (self.pod_max_pids > 0).then_some(self.pod_max_pids),
            allow_privileged: self.allow_privileged,
            seccomp_default: self.seccomp_default,
        })
    }
}

/// The node's name when none is given: this host's, lowercased (node names are DNS
/// labels), or `skiff-node`.
fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_lowercase())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "skiff-node".into())
}
