//! The agent: registers its Node, keeps it Ready with a Lease heartbeat, and runs the pods
//! bound to it (one worker per pod, see [`pod`]), talking to the API server only through
//! the Kubernetes API (`kube`).

mod container;
mod events;
mod lifecycle;
mod node_info;
mod pod;
mod probes;
mod spec;
mod status;
mod supervisor;
pub(crate) use pod::{PodDirs, LOGS};

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeCondition, NodeDaemonEndpoints, NodeStatus, Pod,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::Client;

pub use node_info::WASM_RUNTIME_LABEL;

use crate::images::ImageStore;
use crate::runtime::wasm::WasmRuntime;

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
    /// Registries (`host:port`) to pull from over plain HTTP besides loopback ones.
    pub insecure_registries: Vec<String>,
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
            let made = crate::sandbox::network::Cni::new(
                &cfg.cni_bin_dir,
                &cfg.data_dir.join("cni"),
                std::path::Path::new(crate::sandbox::netns::NETNS_DIR),
                &cfg.cni_bridge,
                cidr,
                cfg.cluster_cidr,
                cfg.warm_pod_networks,
            );
            match made {
                Ok(cni) => {
                    tracing::info!(pod_cidr = %cidr, bridge = %cfg.cni_bridge, "pod network ready");
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

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort()
    }
}

/// Everything pod workers share.
pub(crate) struct Ctx {
    pub client: Client,
    /// Every Service, watched: their environment variables for containers.
    pub services: kube::runtime::reflector::Store<k8s_openapi::api::core::v1::Service>,
    pub node_ip: String,
    pub data_dir: PathBuf,
    pub images: ImageStore,
    pub wasm: WasmRuntime,
    /// runc, where the node can run OCI containers.
    pub oci: Option<crate::runtime::oci::OciRuntime>,
    pub events: events::Recorder,
    pub insecure_registries: Vec<String>,
    /// The node's pod network (pods wait for it).
    pub networks: tokio::sync::watch::Receiver<Networks>,
    /// The cluster DNS this agent serves, if it could start it.
    pub dns: Option<crate::dns::ClusterDns>,
    /// Log files of container runs still writing (followers wait for more).
    pub active_logs: std::sync::Mutex<std::collections::HashSet<PathBuf>>,
}

impl Ctx {
    /// The runtime of that name (as container IDs name it), if the node has it.
    pub fn runtime(&self, name: &str) -> Option<&dyn crate::runtime::Runtime> {
        use crate::runtime::Runtime;
        match name {
            n if n == self.wasm.name() => Some(&self.wasm),
            n => self
                .oci
                .as_ref()
                .filter(|o| o.name() == n)
                .map(|o| o as &dyn Runtime),
        }
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

/// The local address used to reach the API server: the node's IP.
fn local_ip_towards(url: &str) -> String {
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
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect(target.as_str())?;
            s.local_addr()
        })
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| "127.0.0.1".into())
}

/// The node's conditions as of `now` under `pressure`; a condition whose status is
/// unchanged from `previous` keeps its transition time.
fn node_conditions(
    now: &Time,
    previous: &[NodeCondition],
    pressure: node_info::Pressure,
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
        cond(
            "Ready",
            ("True", "KubeletReady", "kubelet is posting ready status"),
        ),
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

fn node_status(cfg: &AgentConfig, ip: &str, port: u16, images: &ImageStore) -> NodeStatus {
    let now = Time(jiff::Timestamp::now());
    let capacity = node_info::capacity(&cfg.data_dir, cfg.max_pods);
    NodeStatus {
        capacity: Some(capacity.clone()),
        allocatable: Some(capacity),
        conditions: Some(node_conditions(
            &now,
            &[],
            node_info::Figures::read(&cfg.data_dir).pressure(),
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
    ip: &str,
    port: u16,
    images: &ImageStore,
    oci: bool,
) -> Result<(), AgentError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let status = node_status(cfg, ip, port, images);
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
async fn heartbeat(client: Client, cfg: AgentConfig, ctx: Arc<Ctx>) {
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
            match report_status(&nodes, &cfg, &ctx.images, due).await {
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
    due: bool,
) -> Result<bool, kube::Error> {
    let status = nodes
        .get_status(&cfg.node_name)
        .await?
        .status
        .unwrap_or_default();
    let previous = status.conditions.unwrap_or_default();
    let pressure = node_info::Figures::read(&cfg.data_dir).pressure();
    let conditions = node_conditions(&Time(jiff::Timestamp::now()), &previous, pressure);
    // Pulled or imported images count for the scheduler's image locality.
    let now_images = node_images(images);
    if !due
        && !conditions_changed(&previous, &conditions)
        && status.images.unwrap_or_default() == now_images
    {
        return Ok(false);
    }
    let patch = serde_json::json!({"status": {"conditions": conditions, "images": now_images}});
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
    crate::runtime::oci::OciRuntime::reset(data_dir, runc).await;
    let live = HashSet::new();
    let warm = crate::sandbox::network::warm_dirs(&data_dir.join("cni"));
    for path in pod::orphans(data_dir, &live).into_iter().chain(warm) {
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

/// Runs the agent until `shutdown` resolves.
/// Pods keep their volumes (and guests their mounts and files) open: a node with
/// thousands of pods needs more descriptors than the usual soft limit of 1,024, so the
/// agent takes what the hard limit allows, as container runtimes' service units do.
fn raise_open_files_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // Safety: getrlimit/setrlimit with a valid, owned struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

pub async fn run(
    cfg: AgentConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AgentError> {
    raise_open_files_limit();
    let client = client_from(&cfg.kubeconfig).await?;
    let kc = kube::config::Kubeconfig::read_from(&cfg.kubeconfig).map_err(|e| {
        AgentError::Kubeconfig {
            path: cfg.kubeconfig.clone(),
            reason: e.to_string(),
        }
    })?;
    let cluster = kc
        .clusters
        .first()
        .and_then(|c| c.cluster.clone())
        .unwrap_or_default();
    let server = cluster.server.clone().unwrap_or_default();
    let ca_pem = {
        use base64::Engine;
        let data = cluster
            .certificate_authority_data
            .clone()
            .unwrap_or_default();
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| AgentError::Kubeconfig {
                path: cfg.kubeconfig.clone(),
                reason: format!("certificate-authority-data: {e}"),
            })?
    };
    let ip = cfg
        .node_ip
        .clone()
        .unwrap_or_else(|| local_ip_towards(&server));
    std::fs::create_dir_all(&cfg.data_dir).map_err(|source| AgentError::Io {
        path: cfg.data_dir.clone(),
        source,
    })?;
    let unavailable = match cfg.pod_network {
        PodNetworkMode::Node => Some("the agent was told to use the node's network".into()),
        PodNetworkMode::Auto | PodNetworkMode::Cni => cni_unavailable(&cfg),
    };
    let initial = match unavailable {
        Some(reason) if cfg.pod_network == PodNetworkMode::Cni => {
            return Err(AgentError::Network(reason));
        }
        Some(reason) => {
            tracing::warn!(%reason, "pods will use the node's network");
            Networks::Node { reason }
        }
        None => Networks::Waiting,
    };
    let (networks_tx, networks) = tokio::sync::watch::channel(initial);
    let oci = match &cfg.oci {
        None => None,
        Some(oc) => match crate::runtime::oci::OciRuntime::detect(&cfg.data_dir, oc) {
            Ok(rt) => Some(rt),
            Err(reason) => {
                tracing::warn!(%reason, "this node does not offer the OCI runtime");
                None
            }
        },
    };
    let proxy_changes = proxy_wanted(&cfg).then(Default::default);
    let dns_changes: Arc<crate::service_watch::Changes> = Default::default();
    let mut followers = vec![dns_changes.clone()];
    followers.extend(proxy_changes.clone());
    let (watch, watch_tasks) = crate::service_watch::ServiceWatch::start(&client, followers);
    let services_watch = watch_tasks.map(AbortOnDrop);
    // Safety: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let (dns, dns_task) = match crate::dns::start(
        watch.clone(),
        dns_changes,
        crate::dns::CLUSTER_DNS_IP,
        root,
    )
    .await
    {
        Ok((dns, task)) => (Some(dns), Some(AbortOnDrop(task))),
        Err(e) => {
            tracing::warn!(error = %e, "no cluster DNS on this node: pods use the node's resolvers");
            (None, None)
        }
    };
    let services = watch.services.clone();
    let proxy = proxy_changes.map(|changes| {
        crate::proxy::enable_forwarding();
        let proxy = crate::proxy::Proxy::new(
            crate::proxy::ProxyConfig {
                node_name: cfg.node_name.clone(),
                cluster_cidr: cfg.cluster_cidr.network().to_string(),
                table: crate::proxy::table_name(&cfg.cni_bridge),
            },
            watch.clone(),
            changes,
        );
        AbortOnDrop(tokio::spawn(proxy.run()))
    });
    let ctx = Arc::new(Ctx {
        dns,
        services,
        networks,
        oci,
        client: client.clone(),
        node_ip: ip.clone(),
        data_dir: cfg.data_dir.clone(),
        images: ImageStore::open(&cfg.data_dir.join("images"))?,
        wasm: WasmRuntime::new(&cfg.data_dir.join("compiled"))?,
        events: events::Recorder::new(client.clone(), &cfg.node_name),
        active_logs: Default::default(),
        insecure_registries: cfg.insecure_registries.clone(),
    });
    let listen = std::net::SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), cfg.port);
    let endpoint = crate::server::start(
        ctx.clone(),
        listen,
        &ca_pem,
        vec![ip.clone(), cfg.node_name.clone()],
    )
    .await?;
    ctx.events
        .node("Normal", "Starting", "Starting kubelet.".into());
    // As the kubelet does, wait for the API server rather than give up: an edge node may
    // boot before its control plane.
    let mut retry = Duration::from_millis(500);
    while let Err(e) = register(
        &client,
        &cfg,
        &ip,
        endpoint.port(),
        &ctx.images,
        ctx.oci.is_some(),
    )
    .await
    {
        tracing::warn!(error = %e, retry_in = ?retry, "unable to register the node with the API server");
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(Duration::from_secs(10));
    }
    let ready = format!("Node {} status is now: NodeReady", cfg.node_name);
    ctx.events.node("Normal", "NodeReady", ready);
    let beat = tokio::spawn(heartbeat(client.clone(), cfg.clone(), ctx.clone()));
    let waiting = matches!(*ctx.networks.borrow(), Networks::Waiting);
    let network_setup = waiting.then(|| {
        AbortOnDrop(tokio::spawn(await_pod_cidr(
            client.clone(),
            cfg.clone(),
            networks_tx,
        )))
    });
    // Pods in namespaces of their own reach other nodes' pods by routes to their ranges.
    let routes = waiting.then(|| {
        AbortOnDrop(tokio::spawn(crate::routes::run(
            client.clone(),
            cfg.node_name.clone(),
            ip.clone(),
        )))
    });
    let pods: Api<Pod> = Api::all(client);
    let wc = watcher::Config::default().fields(&format!("spec.nodeName={}", cfg.node_name));
    let mut stream = watcher(pods, wc).boxed();
    let mut workers: HashMap<String, pod::Worker> = HashMap::new();
    // The uids a (re)list has named so far, while one is under way.
    let mut listed: Option<HashSet<String>> = None;
    tokio::pin!(shutdown);
    tracing::info!(node = %cfg.node_name, "agent running");
    loop {
        let ev = tokio::select! {
            ev = stream.next() => ev,
            _ = &mut shutdown => break,
        };
        match ev {
            Some(Ok(watcher::Event::Apply(mut p) | watcher::Event::InitApply(mut p))) => {
                let uid = p.metadata.uid.clone().unwrap_or_default();
                if let Some(listed) = listed.as_mut() {
                    listed.insert(uid.clone());
                }
                workers.retain(|_, w| !w.finished());
                match workers.get(&uid) {
                    Some(w) => w.update(&p),
                    None => {
                        // Workers never need managedFields (often the largest part of a pod).
                        p.metadata.managed_fields = None;
                        workers.insert(uid, pod::Worker::spawn(ctx.clone(), p));
                    }
                }
            }
            Some(Ok(watcher::Event::Delete(p))) => {
                let worker = workers.remove(p.metadata.uid.as_deref().unwrap_or_default());
                let dirs = pod::PodDirs::of(&ctx.data_dir, &p);
                tokio::spawn(async move {
                    if let Some(w) = worker {
                        w.end().await;
                    }
                    dirs.remove().await;
                });
            }
            Some(Ok(watcher::Event::Init)) => listed = Some(HashSet::new()),
            Some(Ok(watcher::Event::InitDone)) => {
                // A (re)list names every pod bound here: workers of others, and files of
                // pods without a worker, belong to pods deleted unseen.
                let listed = listed.take().unwrap_or_default();
                let stale: Vec<pod::Worker> = workers
                    .extract_if(|uid, _| !listed.contains(uid))
                    .map(|(_, w)| w)
                    .collect();
                let orphans = pod::orphans(&ctx.data_dir, &listed);
                let ctx2 = ctx.clone();
                tokio::spawn(async move {
                    for w in stale {
                        w.end().await;
                    }
                    // runc containers of pods deleted while no agent watched.
                    if let Some(oci) = &ctx2.oci {
                        for uid in oci.pods().into_iter().filter(|u| !listed.contains(u)) {
                            tracing::info!(pod_uid = %uid, "removing the containers of a deleted pod");
                            oci.remove_pod(&uid).await;
                        }
                    }
                    for path in orphans {
                        tracing::info!(path = %path.display(), "removing the sandbox and files of a deleted pod");
                        if let Err(e) = crate::sandbox::Sandbox::remove(&path).await {
                            tracing::warn!(error = %e, "tearing down a pod sandbox failed");
                        }
                    }
                });
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "pod watch failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            None => break,
        }
    }
    beat.abort();
    drop(network_setup);
    drop(routes);
    drop(services_watch);
    drop(proxy);
    drop(dns_task);
    // The pods' runc containers stay for the next agent to adopt.
    if let Some(oci) = &ctx.oci {
        oci.detach();
    }
    for (_, w) in workers {
        w.stop();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_conditions_keep_their_transition_time_while_unchanged() {
        let at = |s: i64| Time(jiff::Timestamp::from_second(s).unwrap());
        let calm = node_info::Pressure::default();
        let first = node_conditions(&at(100), &[], calm);
        let mut previous = first.clone();
        previous[0].status = "True".into(); // MemoryPressure had been True
        let next = node_conditions(&at(200), &previous, calm);
        let ready = next.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.last_transition_time, Some(at(100)));
        assert_eq!(ready.last_heartbeat_time, Some(at(200)));
        assert_eq!(next[0].type_, "MemoryPressure");
        assert_eq!(next[0].last_transition_time, Some(at(200)));
        assert!(conditions_changed(&previous, &next));
        assert!(!conditions_changed(
            &next,
            &node_conditions(&at(300), &next, calm)
        ));
        let short = node_info::Pressure {
            memory: true,
            ..calm
        };
        let pressed = node_conditions(&at(400), &next, short);
        assert_eq!(
            (pressed[0].status.as_str(), pressed[0].reason.as_deref()),
            ("True", Some("KubeletHasInsufficientMemory"))
        );
        assert!(conditions_changed(&next, &pressed));
    }
}
