//! The agent: registers its Node, keeps it Ready with a Lease heartbeat, and runs the pods
//! bound to it ([`pods`] follows them, a worker per pod in [`pod`]), talking to the API
//! server only through the Kubernetes API (`kube`). It serves the agent endpoint
//! ([`crate::server`]) as its [`crate::server::Host`].

mod container;
mod events;
mod image_gc;
mod latest;
mod lifecycle;
pub(crate) mod node_info;
mod pod;
mod pod_sandbox;
mod pods;
mod probes;
mod spec;
pub use image_gc::Policy as ImageGcPolicy;
mod status;
mod storage;
mod supervisor;

use std::collections::HashSet;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeCondition, NodeDaemonEndpoints, NodeStatus, Pod,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;

pub use node_info::WASM_RUNTIME_LABEL;

use crate::images::ImageStore;
use crate::layout::{ContainerId, Layout};
use crate::runtime::wasm::WasmRuntime;
use crate::runtime::{Runtime, Runtimes};

/// How often the agent renews its Lease by default: a node that stops is noticed within
/// the control plane's grace period (6 s by default), so its pods move in seconds.
pub const LEASE_RENEW_INTERVAL: Duration = Duration::from_secs(2);
const FIELD_MANAGER: &str = "skiff-agent";

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub kubeconfig: PathBuf,
    pub node_name: String,
    pub data_dir: PathBuf,
    pub max_pods: u32,
    /// The address other nodes and the API server reach this node at.
    pub node_ip: Option<String>,
    /// The agent endpoint's port (`kubectl logs` goes through it); 0 picks a free one.
    pub port: u16,
    /// How image pulls go: plain-HTTP registries (`host:port`, besides loopback ones),
    /// size limits.
    pub pull: crate::registry::PullOptions,
    /// When containers' logs rotate (`--container-log-max-size`, `--container-log-max-files`).
    pub log_rotation: crate::logs::Rotation,
    /// When unused images are deleted (the kubelet's image GC thresholds).
    pub image_gc: image_gc::Policy,
    /// How often the node's Lease is renewed.
    pub lease_renew_interval: Duration,
    /// How pods get their network.
    pub pod_network: PodNetworkMode,
    /// Where the CNI plugins are.
    pub cni_bin_dir: PathBuf,
    /// The bridge the node's pods hang on.
    pub cni_bridge: String,
    /// Pod networks kept made ahead of their pods (0: each pod makes its own).
    pub warm_pod_networks: usize,
    /// Proxy Service traffic with nftables where the node can.
    pub service_proxy: bool,
    /// The cluster's pod range.
    pub cluster_cidr: skiff_api::cidr::Cidr,
    /// The OCI runtime's settings; `None`: the node runs Wasm only.
    pub oci: Option<crate::runtime::oci::OciConfig>,
}

/// How the agent networks its pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodNetworkMode {
    /// A namespace per pod through CNI where the agent can make one (root, the plugins
    /// installed), else the node's network.
    Auto,
    /// A namespace per pod through CNI; the agent will not start without.
    Cni,
    /// Every pod on the node's network (an unprivileged agent, say in a CI container).
    Node,
}

/// The node's pod network, once known.
#[derive(Clone)]
pub(crate) enum Networks {
    /// Waiting for the control plane to give the node its pod range.
    Waiting,
    Cni(Arc<crate::sandbox::network::Cni>),
    /// Pods live on the node's network, for this reason.
    Node {
        reason: String,
    },
    /// The agent runs as root but cannot give pods networks of their own (no CNI
    /// plugins, say): pods wait and the node is not Ready, as the kubelet's
    /// network-not-ready; the node's network is no silent fallback.
    Unavailable {
        reason: String,
    },
}

impl Networks {
    /// Why the node cannot network pods, if it cannot.
    fn problem(&self) -> Option<&str> {
        match self {
            Networks::Unavailable { reason } => Some(reason),
            _ => None,
        }
    }
}

/// Why this agent cannot give pods namespaces of their own, if it cannot.
fn cni_unavailable(cfg: &AgentConfig) -> Option<String> {
    // Safety: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("the agent does not run as root".into());
    }
    for plugin in ["bridge", "host-local", "loopback", "portmap"] {
        if !cfg.cni_bin_dir.join(plugin).exists() {
            return Some(format!(
                "the CNI plugin {plugin} is not in {}",
                cfg.cni_bin_dir.display()
            ));
        }
    }
    let probe = std::path::Path::new(crate::sandbox::netns::NETNS_DIR)
        .join(format!("skiff-probe-{}", std::process::id()));
    match crate::sandbox::netns::create(&probe) {
        Ok(()) => {
            let _ = crate::sandbox::netns::remove(&probe);
            None
        }
        Err(e) => Some(format!("cannot create network namespaces: {e}")),
    }
}

/// Waits for the control plane to give the node a pod range, then sets up the pod network
/// over it.
async fn await_pod_cidr(
    client: Client,
    cfg: AgentConfig,
    networks: tokio::sync::watch::Sender<Networks>,
) {
    let nodes: Api<Node> = Api::all(client);
    let mut told = false;
    loop {
        let cidr = match nodes.get(&cfg.node_name).await {
            Ok(n) => n.spec.and_then(|s| s.pod_cidr).unwrap_or_default(),
            Err(e) => {
                tracing::debug!(error = %e, "reading the node for its pod CIDR");
                String::new()
            }
        };
        if let Ok(cidr) = cidr.parse::<skiff_api::cidr::Cidr>() {
            // Pods wait, and the node is not Ready, while the bridge is another's.
            if let Some(reason) = crate::sandbox::network::bridge_taken(&cfg.cni_bridge, cidr) {
                if !matches!(&*networks.borrow(), Networks::Unavailable { reason: r } if *r == reason)
                {
                    tracing::error!(%reason, "the node cannot give pods networks");
                    networks.send_replace(Networks::Unavailable { reason });
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
            let made = crate::sandbox::network::Cni::new(
                &cfg.cni_bin_dir,
                &Layout::new(&cfg.data_dir).cni(),
                std::path::Path::new(crate::sandbox::netns::NETNS_DIR),
                &cfg.cni_bridge,
                cidr,
                cfg.cluster_cidr,
                cfg.warm_pod_networks,
            );
            match made {
                Ok(cni) => {
                    tracing::info!(pod_cidr = %cidr, bridge = %cfg.cni_bridge, "pod network ready");
                    report_pod_capacity(&nodes, &cfg, cidr).await;
                    let cni = Arc::new(cni);
                    networks.send_replace(Networks::Cni(cni.clone()));
                    // Until the agent stops (this task is aborted then).
                    cni.keep_warm().await;
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "setting up the pod network"),
            }
        } else if !told {
            told = true;
            tracing::info!("waiting for the control plane to give this node a pod CIDR");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A node takes no more pods than its range has addresses for (all but the network,
/// gateway and broadcast addresses): `capacity.pods` and `allocatable.pods` say so, so
/// the scheduler sends no pod that could only wait for an address.
async fn report_pod_capacity(nodes: &Api<Node>, cfg: &AgentConfig, cidr: skiff_api::cidr::Cidr) {
    let addresses = cidr.subnets(32).saturating_sub(3);
    let pods = u64::from(cfg.max_pods).min(addresses).to_string();
    let patch =
        serde_json::json!({"status": {"capacity": {"pods": pods}, "allocatable": {"pods": pods}}});
    let written = nodes
        .patch_status(
            &cfg.node_name,
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await;
    if let Err(e) = written {
        tracing::warn!(error = %e, "reporting the node's pod capacity failed");
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("kubeconfig {path}: {reason}")]
    Kubeconfig { path: PathBuf, reason: String },
    #[error("API: {0}")]
    Api(#[from] kube::Error),
    #[error(transparent)]
    Images(#[from] crate::images::ImageError),
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Server(#[from] crate::server::ServerError),
    #[error("pod network: {0}")]
    Network(String),
}

/// A background task that ends with its owner.
pub(crate) struct AbortOnDrop<T = ()>(pub tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort()
    }
}

/// Everything pod workers share.
pub(crate) struct Ctx {
    pub client: Client,
    /// Every Service, watched: their environment variables for containers.
    pub services: kube::runtime::reflector::Store<k8s_openapi::api::core::v1::Service>,
    /// The node's InternalIP (re-read as the host's addresses change).
    node_ip: std::sync::RwLock<Arc<str>>,
    pub layout: Layout,
    pub images: ImageStore,
    pub runtimes: Runtimes,
    pub events: events::Recorder,
    pub pull: crate::registry::PullOptions,
    pub log_rotation: crate::logs::Rotation,
    /// The node's pod network (pods wait for it).
    pub networks: tokio::sync::watch::Receiver<Networks>,
    /// The cluster DNS this agent serves, if it could start it.
    pub dns: Option<crate::dns::ClusterDns>,
    /// The node's running containers, as the agent started them: each run's log file
    /// (followers wait for more while it is here) and the runtime that runs it. `kubectl
    /// exec` finds its container here, never in a pod status, which its writers control.
    pub active_logs:
        std::sync::Mutex<std::collections::HashMap<Arc<std::path::Path>, &'static str>>,
    /// The resolvers pods on the node's network share.
    pub resolvers: crate::dns::lookup::SharedResolvers,
    /// Pod status writes in flight at once (status::MAX_STATUS_WRITES).
    pub status_writes: Arc<tokio::sync::Semaphore>,
}

impl Ctx {
    /// The node's InternalIP as of now.
    pub fn node_ip(&self) -> Arc<str> {
        self.node_ip.read().expect("node ip").clone()
    }
}

/// What the agent endpoint serves from: the API server's pods, the node's logs, its
/// runtimes and pod sandboxes.
#[async_trait::async_trait]
impl crate::server::Host for Ctx {
    async fn pod(&self, ns: &str, name: &str) -> Result<Option<Pod>, kube::Error> {
        Api::<Pod>::namespaced(self.client.clone(), ns)
            .get_opt(name)
            .await
    }

    fn container_runs(&self, ns: &str, pod: &str, container: &str) -> Vec<PathBuf> {
        let active = self.active_logs.lock().expect("active logs");
        self.layout
            .container_runs(ns, pod, container, active.keys())
    }

    fn log_active(&self, path: &std::path::Path) -> bool {
        self.active_logs
            .lock()
            .expect("active logs")
            .contains_key(path)
    }

    fn running_container(&self, pod: &Pod, container: &str) -> Option<ContainerId> {
        let m = &pod.metadata;
        let (ns, name, uid) = (
            m.namespace.as_deref()?,
            m.name.as_deref()?,
            m.uid.as_deref()?,
        );
        let active = self.active_logs.lock().expect("active logs");
        self.layout
            .running_run(ns, name, uid, container, active.iter())
    }

    fn runtime(&self, id: &ContainerId) -> Option<&dyn Runtime> {
        self.runtimes.of(id)
    }

    fn pod_netns(&self, pod_uid: &str) -> Option<PathBuf> {
        crate::sandbox::network::recorded_netns(&self.layout.sandbox(pod_uid))
    }
}

/// A client for the API server in `kubeconfig`, over HTTP/2 when the server offers it: all
/// of the agent's requests (thousands of pods' status writes and events) then share one
/// connection instead of a pool that grows with every burst. Its socket sets TCP_NODELAY
/// (kube's default connector leaves Nagle's algorithm on, and a request written as several
/// TLS records then waits for the server's delayed ACK, ~40 ms, on every round trip).
pub async fn client_from(kubeconfig: &std::path::Path) -> Result<Client, AgentError> {
    use kube::client::ConfigExt;
    let bad = |reason: String| AgentError::Kubeconfig {
        path: kubeconfig.to_path_buf(),
        reason,
    };
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).map_err(|e| bad(e.to_string()))?;
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .map_err(|e| bad(e.to_string()))?;
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config.rustls_client_config()?)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http);
    let service = tower::ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .map_err(tower::BoxError::from)
        .service(
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .timer(hyper_util::rt::TokioTimer::new())
                .http2_keep_alive_interval(Duration::from_secs(30))
                .build(https),
        );
    Ok(Client::new(service, config.default_namespace))
}

/// The node's address when `--node-ip` is not given: the local address used to reach the
/// API server, unless that is loopback (a server on this host, as `skiff dev`'s): then the
/// address of the interface with the default route, as the kubelet chooses a host
/// interface, since node ports do not answer on loopback. Loopback only without one.
fn node_ip_towards(url: &str) -> String {
    let host = url
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or("127.0.0.1")
        .to_string();
    let target = if host.contains(':') {
        host
    } else {
        format!("{host}:443")
    };
    let towards = |target: &str| {
        // A UDP "connection" sends nothing: it asks the kernel which address would.
        std::net::UdpSocket::bind("0.0.0.0:0")
            .and_then(|s| {
                s.connect(target)?;
                s.local_addr()
            })
            .map(|a| a.ip())
    };
    match towards(&target) {
        Ok(ip) if !ip.is_loopback() => ip.to_string(),
        // Any address off this host takes the default route (nothing is sent to it).
        _ => towards("198.51.100.1:9")
            .ok()
            .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
            .map_or_else(|| "127.0.0.1".into(), |ip| ip.to_string()),
    }
}

/// The node's conditions as of `now` under `pressure`; a condition whose status is
/// unchanged from `previous` keeps its transition time.
fn node_conditions(
    now: &Time,
    previous: &[NodeCondition],
    pressure: node_info::Pressure,
    network: Option<&str>,
) -> Vec<NodeCondition> {
    let cond = |type_: &str, (status, reason, message): (&str, &str, &str)| NodeCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(now.clone()),
        last_transition_time: previous
            .iter()
            .find(|p| p.type_ == type_ && p.status == status)
            .and_then(|p| p.last_transition_time.clone())
            .or_else(|| Some(now.clone())),
    };
    let either = |bad: bool, yes, no| if bad { yes } else { no };
    vec![
        cond(
            "MemoryPressure",
            either(
                pressure.memory,
                (
                    "True",
                    "KubeletHasInsufficientMemory",
                    "kubelet has insufficient memory available",
                ),
                (
                    "False",
                    "KubeletHasSufficientMemory",
                    "kubelet has sufficient memory available",
                ),
            ),
        ),
        cond(
            "DiskPressure",
            either(
                pressure.disk,
                (
                    "True",
                    "KubeletHasDiskPressure",
                    "kubelet has disk pressure",
                ),
                (
                    "False",
                    "KubeletHasNoDiskPressure",
                    "kubelet has no disk pressure",
                ),
            ),
        ),
        cond(
            "PIDPressure",
            either(
                pressure.pid,
                (
                    "True",
                    "KubeletHasInsufficientPID",
                    "kubelet has insufficient PID available",
                ),
                (
                    "False",
                    "KubeletHasSufficientPID",
                    "kubelet has sufficient PID available",
                ),
            ),
        ),
        // As a network plugin reports it (the kubelet leaves it to the plugin).
        match network {
            Some(why) => cond("NetworkUnavailable", ("True", "NetworkPluginNotReady", why)),
            None => cond(
                "NetworkUnavailable",
                ("False", "RouteCreated", "the agent set up the node's pod network"),
            ),
        },
        match network {
            // The kubelet's words for a network plugin that is not ready.
            Some(why) => cond(
                "Ready",
                (
                    "False",
                    "KubeletNotReady",
                    &format!("container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: {why}"),
                ),
            ),
            None => cond(
                "Ready",
                ("True", "KubeletReady", "kubelet is posting ready status"),
            ),
        },
    ]
}

/// Whether two condition lists differ in more than their times.
fn conditions_changed(old: &[NodeCondition], new: &[NodeCondition]) -> bool {
    new.iter().any(|n| {
        !old.iter()
            .any(|o| o.type_ == n.type_ && o.status == n.status && o.reason == n.reason)
    })
}

/// The node's images as `status.images` reports them.
fn node_images(images: &ImageStore) -> Vec<k8s_openapi::api::core::v1::ContainerImage> {
    images
        .summary()
        .into_iter()
        .map(|(names, size)| k8s_openapi::api::core::v1::ContainerImage {
            names: Some(names),
            size_bytes: Some(size as i64),
        })
        .collect()
}

fn node_status(
    cfg: &AgentConfig,
    (ip, port): (&str, u16),
    images: &ImageStore,
    network: Option<&str>,
) -> NodeStatus {
    let now = Time(jiff::Timestamp::now());
    let capacity = node_info::capacity(&cfg.data_dir, cfg.max_pods);
    NodeStatus {
        capacity: Some(capacity.clone()),
        allocatable: Some(capacity),
        conditions: Some(node_conditions(
            &now,
            &[],
            node_info::Figures::read(&cfg.data_dir).pressure(),
            network,
        )),
        addresses: Some(node_info::addresses(&cfg.node_name, ip)),
        node_info: Some(node_info::system_info()),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint { port: port as i32 }),
        }),
        images: Some(node_images(images)),
        ..Default::default()
    }
}

/// Creates the Node (or takes over an existing one) and reports its status.
async fn register(
    client: &Client,
    cfg: &AgentConfig,
    endpoint: (&str, u16),
    ctx: &Ctx,
    oci: bool,
) -> Result<(), AgentError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let network = ctx.networks.borrow().problem().map(str::to_string);
    let status = node_status(cfg, endpoint, &ctx.images, network.as_deref());
    let node = Node {
        metadata: ObjectMeta {
            name: Some(cfg.node_name.clone()),
            labels: Some(node_info::labels(&cfg.node_name, oci)),
            ..Default::default()
        },
        spec: None,
        status: Some(status.clone()),
    };
    match nodes
        .create(
            &PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            },
            &node,
        )
        .await
    {
        Ok(_) => tracing::info!(node = %cfg.node_name, "registered node"),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let labels =
                serde_json::json!({"metadata": {"labels": node_info::labels(&cfg.node_name, oci)}});
            nodes
                .patch(
                    &cfg.node_name,
                    &PatchParams::default(),
                    &Patch::Merge(labels),
                )
                .await?;
            tracing::info!(node = %cfg.node_name, "node already registered; taking it over");
        }
        Err(e) => return Err(e.into()),
    }
    nodes
        .patch_status(
            &cfg.node_name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": status})),
        )
        .await?;
    Ok(())
}

/// The node's status is written at least this often (the kubelet's
/// `nodeStatusReportFrequency`); the Lease is the heartbeat in between.
const NODE_STATUS_REPORT: Duration = Duration::from_secs(300);
/// How often the node's conditions and images are computed and compared with what the
/// API server shows (the kubelet's `nodeStatusUpdateFrequency`): a read of the node, of
/// the node's figures and of its image store, so not at every Lease renewal.
const NODE_STATUS_CHECK: Duration = Duration::from_secs(10);

/// Renews the node's Lease every `lease_renew_interval`; every [`NODE_STATUS_CHECK`]
/// reports its conditions and images when they changed (a pressure comes or goes, an image
/// arrives, or the node was marked not Ready while the agent was unreachable), and at least
/// every [`NODE_STATUS_REPORT`].
async fn heartbeat(client: Client, cfg: AgentConfig, ctx: Arc<Ctx>, server: String) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let nodes: Api<Node> = Api::all(client);
    // Registration has just reported the status.
    let mut reported = tokio::time::Instant::now();
    let mut checked = reported;
    loop {
        let now = MicroTime(jiff::Timestamp::now());
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(cfg.node_name.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(cfg.node_name.clone()),
                // Three missed renewals: what the control plane's grace period expects.
                lease_duration_seconds: Some((cfg.lease_renew_interval.as_secs() * 3).max(1) as i32),
                renew_time: Some(now),
                ..Default::default()
            }),
        };
        let apply = PatchParams::apply(FIELD_MANAGER).force();
        if let Err(e) = leases
            .patch(&cfg.node_name, &apply, &Patch::Apply(&lease))
            .await
        {
            tracing::warn!(error = %e, "renewing the node lease failed");
        }
        if checked.elapsed() >= NODE_STATUS_CHECK {
            checked = tokio::time::Instant::now();
            let due = reported.elapsed() >= NODE_STATUS_REPORT;
            let network = ctx.networks.borrow().problem().map(str::to_string);
            // The host's address may change (DHCP, a new link): the kubelet re-reads it
            // at each status update.
            if cfg.node_ip.is_none() {
                let now = node_ip_towards(&server);
                if *ctx.node_ip() != *now {
                    tracing::info!(was = %ctx.node_ip(), now = %now, "the node's address changed");
                    *ctx.node_ip.write().expect("node ip") = now.as_str().into();
                }
            }
            let ip = ctx.node_ip();
            let reported_status =
                report_status(&nodes, &cfg, &ctx.images, &ip, network.as_deref(), due).await;
            match reported_status {
                Ok(true) => reported = tokio::time::Instant::now(),
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "reporting node status failed"),
            }
        }
        tokio::time::sleep(cfg.lease_renew_interval).await;
    }
}

/// Writes the node's conditions and images if they differ from what the API server shows
/// (or `due` says it is time anyway); whether it wrote.
async fn report_status(
    nodes: &Api<Node>,
    cfg: &AgentConfig,
    images: &ImageStore,
    ip: &str,
    network: Option<&str>,
    due: bool,
) -> Result<bool, kube::Error> {
    let status = nodes
        .get_status(&cfg.node_name)
        .await?
        .status
        .unwrap_or_default();
    let previous = status.conditions.unwrap_or_default();
    let pressure = node_info::Figures::read(&cfg.data_dir).pressure();
    let now = Time(jiff::Timestamp::now());
    let conditions = node_conditions(&now, &previous, pressure, network);
    // Pulled or imported images count for the scheduler's image locality.
    let now_images = node_images(images);
    let addresses = node_info::addresses(&cfg.node_name, ip);
    if !due
        && !conditions_changed(&previous, &conditions)
        && status.images.unwrap_or_default() == now_images
        && status.addresses.as_ref() == Some(&addresses)
    {
        return Ok(false);
    }
    let patch = serde_json::json!({"status": {
        "conditions": conditions, "images": now_images, "addresses": addresses}});
    nodes
        .patch_status(
            &cfg.node_name,
            &PatchParams::default(),
            &Patch::Strategic(patch),
        )
        .await?;
    Ok(true)
}

/// Tears down what a stopped agent's pods left: their runc containers, then every pod
/// sandbox under its data directory (networks, then files), and the pods' bridge.
pub async fn reset(
    data_dir: &std::path::Path,
    bridge: &str,
    runc: &std::path::Path,
) -> Result<(), AgentError> {
    let layout = Layout::new(data_dir);
    crate::runtime::oci::OciRuntime::reset(&layout, runc).await;
    let warm = crate::sandbox::network::warm_dirs(&layout.cni());
    for path in layout.orphans(&HashSet::new()).into_iter().chain(warm) {
        crate::sandbox::Sandbox::remove(&path)
            .await
            .map_err(|e| AgentError::Network(e.to_string()))?;
    }
    crate::proxy::nft::remove(&crate::proxy::table_name(bridge));
    crate::dns::remove_address(crate::dns::CLUSTER_DNS_IP);
    if let Err(e) = crate::routes::remove_all() {
        tracing::warn!(error = %e, "removing the routes to other nodes' pods");
    }
    crate::sandbox::network::remove_bridge(bridge).map_err(|e| AgentError::Network(e.to_string()))
}

/// Whether this agent proxies Service traffic (asked to, and able to).
fn proxy_wanted(cfg: &AgentConfig) -> bool {
    if !cfg.service_proxy {
        return false;
    }
    match crate::proxy::unavailable() {
        Some(reason) => {
            tracing::warn!(%reason, "this node does not proxy Service traffic");
            false
        }
        None => true,
    }
}

/// The API server's address and the cluster CA (PEM) the kubeconfig names.
fn cluster_of(kubeconfig: &std::path::Path) -> Result<(String, Vec<u8>), AgentError> {
    let bad = |reason: String| AgentError::Kubeconfig {
        path: kubeconfig.to_path_buf(),
        reason,
    };
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).map_err(|e| bad(e.to_string()))?;
    let cluster = kc
        .clusters
        .first()
        .and_then(|c| c.cluster.clone())
        .unwrap_or_default();
    let ca_pem = {
        use base64::Engine;
        let data = cluster
            .certificate_authority_data
            .clone()
            .unwrap_or_default();
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| bad(format!("certificate-authority-data: {e}")))?
    };
    Ok((cluster.server.unwrap_or_default(), ca_pem))
}

/// The pod network the agent starts with: the node's when it cannot (or is told not to)
/// give pods namespaces of their own; an error when it must and cannot.
fn initial_networks(cfg: &AgentConfig) -> Result<Networks, AgentError> {
    // Safety: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let unavailable = match cfg.pod_network {
        PodNetworkMode::Node => Some("the agent was told to use the node's network".into()),
        PodNetworkMode::Auto | PodNetworkMode::Cni => cni_unavailable(cfg),
    };
    match (unavailable, cfg.pod_network) {
        (Some(reason), PodNetworkMode::Cni) => Err(AgentError::Network(reason)),
        // As root, pods could have networks of their own: they wait for one.
        (Some(reason), PodNetworkMode::Auto) if root => {
            tracing::error!(%reason, "the node cannot give pods networks of their own: it is not Ready (--pod-network node puts pods on the node's network)");
            Ok(Networks::Unavailable { reason })
        }
        (Some(reason), _) => {
            tracing::warn!(%reason, "pods will use the node's network");
            Ok(Networks::Node { reason })
        }
        (None, _) => Ok(Networks::Waiting),
    }
}

/// What follows the cluster's Services: their store (containers' environment), the
/// cluster DNS, and the Service proxy where the node runs one.
struct ServiceFollowers {
    services: kube::runtime::reflector::Store<k8s_openapi::api::core::v1::Service>,
    dns: Option<crate::dns::ClusterDns>,
    /// The watches, the DNS server and the proxy: they stop with the agent.
    tasks: Vec<AbortOnDrop>,
}

async fn follow_services(client: &Client, cfg: &AgentConfig) -> ServiceFollowers {
    let proxy_changes = proxy_wanted(cfg).then(Default::default);
    let dns_changes: Arc<crate::service_watch::Changes> = Default::default();
    let mut followers = vec![dns_changes.clone()];
    followers.extend(proxy_changes.clone());
    let (watch, watch_tasks) = crate::service_watch::ServiceWatch::start(client, followers);
    let mut tasks: Vec<AbortOnDrop> = watch_tasks.map(AbortOnDrop).into();
    // Safety: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let dns = crate::dns::start(watch.clone(), dns_changes, crate::dns::CLUSTER_DNS_IP, root).await;
    let dns = match dns {
        Ok((dns, task)) => {
            tasks.push(AbortOnDrop(task));
            Some(dns)
        }
        Err(e) => {
            tracing::warn!(error = %e, "no cluster DNS on this node: pods use the node's resolvers");
            None
        }
    };
    let services = watch.services.clone();
    if let Some(changes) = proxy_changes {
        crate::proxy::enable_forwarding();
        let proxy = crate::proxy::Proxy::new(
            crate::proxy::ProxyConfig {
                node_name: cfg.node_name.clone(),
                cluster_cidr: cfg.cluster_cidr.network().to_string(),
                table: crate::proxy::table_name(&cfg.cni_bridge),
            },
            watch,
            changes,
            {
                let events = events::Recorder::new(client.clone(), &cfg.node_name);
                Box::new(move |svc, why| {
                    let msg = format!("the node's proxy left this Service's rules out: {why}");
                    events.service(svc, "Warning", "FailedToApplyProxyRules", msg);
                })
            },
        );
        tasks.push(AbortOnDrop(tokio::spawn(proxy.run())));
    }
    ServiceFollowers {
        services,
        dns,
        tasks,
    }
}

/// The node's runtimes: wasmtime, and runc where the node offers it.
fn runtimes(cfg: &AgentConfig, layout: &Layout) -> Result<Runtimes, AgentError> {
    let oci = cfg.oci.as_ref().and_then(|oc| {
        crate::runtime::oci::OciRuntime::detect(layout, oc)
            .map_err(|reason| tracing::warn!(%reason, "this node does not offer the OCI runtime"))
            .ok()
    });
    Ok(Runtimes {
        wasm: WasmRuntime::new(&layout.compiled())?
            .with_node_memory(node_info::memory_bytes())
            .with_max_wasm_bytes(cfg.pull.max_wasm_bytes),
        oci,
    })
}

/// Registers the node, waiting for the API server rather than giving up (as the kubelet
/// does: an edge node may boot before its control plane).
async fn register_until_done(client: &Client, cfg: &AgentConfig, ctx: &Ctx, ip: &str, port: u16) {
    let mut retry = Duration::from_millis(500);
    let oci = ctx.runtimes.oci.is_some();
    while let Err(e) = register(client, cfg, (ip, port), ctx, oci).await {
        tracing::warn!(error = %e, retry_in = ?retry, "unable to register the node with the API server");
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(Duration::from_secs(10));
    }
}

/// Runs the agent until `shutdown` resolves: sets up what pods share, serves the agent
/// endpoint, registers the node, then runs the pods bound to it (see [`pods`]).
pub async fn run(
    cfg: AgentConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AgentError> {
    // Pods keep their volumes (and guests their mounts and files) open: a node with
    // thousands of pods needs more descriptors than the usual soft limit of 1,024.
    skiff_api::conn::raise_open_files_limit();
    let client = client_from(&cfg.kubeconfig).await?;
    let (server, ca_pem) = cluster_of(&cfg.kubeconfig)?;
    let ip = cfg
        .node_ip
        .clone()
        .unwrap_or_else(|| node_ip_towards(&server));
    let layout = Layout::new(&cfg.data_dir);
    let tightened =
        skiff_api::private_dir::ensure(layout.root()).map_err(|source| AgentError::Io {
            path: cfg.data_dir.clone(),
            source,
        })?;
    if let Some(mode) = tightened {
        tracing::warn!(dir = %cfg.data_dir.display(), was = format!("{mode:o}"), "the data directory let other users in (it holds pods' Secrets, logs and file systems): now 0700");
    }
    let (networks_tx, networks) = tokio::sync::watch::channel(initial_networks(&cfg)?);
    let runtimes = runtimes(&cfg, &layout)?;
    let ServiceFollowers {
        services,
        dns,
        mut tasks,
    } = follow_services(&client, &cfg).await;
    let ctx = Arc::new(Ctx {
        dns,
        services,
        networks,
        runtimes,
        client: client.clone(),
        node_ip: std::sync::RwLock::new(ip.as_str().into()),
        images: ImageStore::open(&layout.images())?,
        layout,
        events: events::Recorder::new(client.clone(), &cfg.node_name),
        active_logs: Default::default(),
        resolvers: Default::default(),
        status_writes: Arc::new(tokio::sync::Semaphore::new(status::MAX_STATUS_WRITES)),
        pull: cfg.pull.clone(),
        log_rotation: cfg.log_rotation,
    });
    let listen = std::net::SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), cfg.port);
    let hosts = vec![ip.clone(), cfg.node_name.clone()];
    let endpoint = crate::server::start(ctx.clone(), listen, &ca_pem, hosts).await?;
    ctx.events
        .node("Normal", "Starting", "Starting kubelet.".into());
    register_until_done(&client, &cfg, &ctx, &ip, endpoint.port()).await;
    let ready = format!("Node {} status is now: NodeReady", cfg.node_name);
    ctx.events.node("Normal", "NodeReady", ready);
    tasks.push(AbortOnDrop(tokio::spawn(heartbeat(
        client.clone(),
        cfg.clone(),
        ctx.clone(),
        server,
    ))));
    if matches!(*ctx.networks.borrow(), Networks::Waiting) {
        let setup = await_pod_cidr(client.clone(), cfg.clone(), networks_tx);
        tasks.push(AbortOnDrop(tokio::spawn(setup)));
        // Pods in namespaces of their own reach other nodes' pods by routes to their ranges.
        let routes = crate::routes::run(client.clone(), cfg.node_name.clone(), ip.clone());
        tasks.push(AbortOnDrop(tokio::spawn(routes)));
    }
    let gc = image_gc::run(ctx.clone(), cfg.node_name.clone(), cfg.image_gc);
    tasks.push(AbortOnDrop(tokio::spawn(gc)));
    tracing::info!(node = %cfg.node_name, "agent running");
    let workers = pods::run(ctx.clone(), &cfg.node_name, shutdown).await;
    drop(tasks);
    // The pods' runc containers stay for the next agent to adopt.
    if let Some(oci) = &ctx.runtimes.oci {
        oci.detach();
    }
    workers.stop();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_conditions_keep_their_transition_time_while_unchanged() {
        let at = |s: i64| Time(jiff::Timestamp::from_second(s).unwrap());
        let calm = node_info::Pressure::default();
        let first = node_conditions(&at(100), &[], calm, None);
        let mut previous = first.clone();
        previous[0].status = "True".into(); // MemoryPressure had been True
        let next = node_conditions(&at(200), &previous, calm, None);
        let ready = next.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.last_transition_time, Some(at(100)));
        assert_eq!(ready.last_heartbeat_time, Some(at(200)));
        assert_eq!(next[0].type_, "MemoryPressure");
        assert_eq!(next[0].last_transition_time, Some(at(200)));
        assert!(conditions_changed(&previous, &next));
        assert!(!conditions_changed(
            &next,
            &node_conditions(&at(300), &next, calm, None)
        ));
        let short = node_info::Pressure {
            memory: true,
            ..calm
        };
        let pressed = node_conditions(&at(400), &next, short, None);
        assert_eq!(
            (pressed[0].status.as_str(), pressed[0].reason.as_deref()),
            ("True", Some("KubeletHasInsufficientMemory"))
        );
        assert!(conditions_changed(&next, &pressed));
        // A node that cannot network pods is not Ready, in the kubelet's words.
        let unnetworked = node_conditions(&at(500), &pressed, calm, Some("no CNI"));
        let ready = unnetworked.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_deref()),
            ("False", Some("KubeletNotReady"))
        );
        assert!(ready
            .message
            .as_deref()
            .unwrap()
            .ends_with("Network plugin returns error: no CNI"));
        let network = unnetworked
            .iter()
            .find(|c| c.type_ == "NetworkUnavailable")
            .unwrap();
        assert_eq!(
            (network.status.as_str(), network.message.as_deref()),
            ("True", Some("no CNI"))
        );
    }
}
