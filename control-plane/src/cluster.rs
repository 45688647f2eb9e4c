//! The composer: the API server, then on its objects the shared watched cache, every
//! controller and the scheduler. (The HTTP server itself starts no controller, so either
//! can run without the other.)

use std::future::Future;
use std::sync::Arc;

use crate::apiserver::{RunningServer, ServerConfig, ServerError};
use crate::controllers::{
    cronjob, daemonset, deployment, endpoints, garbage_collector, job, kubernetes_service,
    namespace, node_ipam, node_lifecycle, replicaset, service_lb, system_namespaces,
    NodeIpamConfig, NodeLifecycleConfig,
};
use crate::events::Events;
use crate::objects::Objects;
use crate::runtime::{spawn_object_controller, Cache};

/// Everything `skiff server` runs.
pub struct Config {
    pub server: ServerConfig,
    pub controllers: ControllerConfig,
}

/// Settings of the control loops (flags of `skiff server`).
#[derive(Clone, Debug, Default)]
pub struct ControllerConfig {
    pub node_lifecycle: NodeLifecycleConfig,
    /// Pod ranges for nodes (kube's `--allocate-node-cidrs`); `None` leaves nodes without.
    pub node_ipam: Option<NodeIpamConfig>,
    /// How the scheduler ranks nodes that fit (spread or bin-pack).
    pub scoring: crate::scheduler::Scoring,
    /// Where pods reach the API server: the `kubernetes` Service's endpoint (set by
    /// [`start`] from the server it started).
    pub api_endpoint: Option<std::net::SocketAddr>,
}

/// Starts the API server and the control loops; serves until `shutdown` resolves.
pub async fn start(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<RunningServer, ServerError> {
    let server = crate::apiserver::start(config.server, shutdown).await?;
    let controllers = ControllerConfig {
        api_endpoint: server.advertise,
        ..config.controllers
    };
    spawn_controllers(server.objects.clone(), controllers);
    Ok(server)
}

/// Runs the control plane until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    start(config, shutdown).await?.wait().await;
    Ok(())
}

/// Starts every control-plane controller and the scheduler over one shared cache, with
/// one event writer they all record through.
fn spawn_controllers(objects: Arc<Objects>, config: ControllerConfig) {
    let cache = Cache::new(objects.clone());
    let events = Events::start(objects.clone());
    let ns = objects
        .registry()
        .find("", "v1", "namespaces")
        .expect("namespaces are served");
    spawn_object_controller(&cache, ns, "namespace", namespace::reconcile);
    tokio::spawn(system_namespaces::run(objects.clone()));
    tokio::spawn(kubernetes_service::run(
        objects.clone(),
        config.api_endpoint,
    ));
    garbage_collector::spawn(&cache);
    replicaset::spawn(&cache, &replicaset::REPLICA_SET, &events);
    deployment::spawn(&cache, &events);
    daemonset::spawn(&cache, &events);
    job::spawn(&cache, job::BACKOFF_BASE, &events);
    cronjob::spawn(&cache, &events);
    endpoints::spawn(&cache);
    service_lb::spawn(&cache, &events);
    node_lifecycle::spawn(&cache, config.node_lifecycle, &events);
    if let Some(ipam) = config.node_ipam {
        node_ipam::spawn(&cache, ipam, &events);
    }
    replicaset::spawn(&cache, &replicaset::REPLICATION_CONTROLLER, &events);
    crate::scheduler::spawn(&cache, config.scoring, &events);
}
