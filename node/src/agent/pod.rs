//! One worker per pod, the I/O shell of its lifecycle: sandbox, supervisors, status, deletion.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Container, ContainerStatus, Pod, Secret};
use kube::api::{Api, DeleteParams, Preconditions};
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use super::container::{BACKOFF_MAX, BACKOFF_START};
use super::lifecycle::{Action, Event, Lifecycle, Shape, Stage, Which};
use super::spec::source_error;
use super::status::{
    initial_status, now, terminated, waiting, write_status, Reporter, STATUS_RETRY_MAX,
    STATUS_RETRY_START,
};
use super::supervisor::{sleep_until, supervise, Update};
use super::{AbortOnDrop, Ctx};
use crate::layout::Layout;
use crate::runtime::{Containers, Exit};
use crate::sandbox::{NetworkConfig, Sandbox, SandboxConfig, Sources};

pub struct Worker {
    changes: watch::Sender<PodChange>,
    task: tokio::task::JoinHandle<()>,
    /// The containers the worker started that still exist.
    containers: Containers,
}

/// What a running pod's worker still needs to hear about its object.
#[derive(Clone, Copy, PartialEq)]
struct PodChange {
    deleting: bool,
    active_deadline_seconds: Option<i64>,
    /// How long containers have between SIGTERM and SIGKILL when the pod goes: the
    /// deletion's grace period, else the pod's `terminationGracePeriodSeconds` (30).
    grace_seconds: i64,
}

impl PodChange {
    fn of(pod: &Pod) -> PodChange {
        let spec = pod.spec.as_ref();
        PodChange {
            deleting: pod.metadata.deletion_timestamp.is_some(),
            active_deadline_seconds: spec.and_then(|s| s.active_deadline_seconds),
            grace_seconds: pod
                .metadata
                .deletion_grace_period_seconds
                .or_else(|| spec.and_then(|s| s.termination_grace_period_seconds))
                .unwrap_or(30)
                .max(0),
        }
    }
}

impl Worker {
    pub fn spawn(ctx: Arc<Ctx>, pod: Pod) -> Worker {
        let (tx, rx) = watch::channel(PodChange::of(&pod));
        let containers = Containers::default();
        // Boxed: a pod passed by value would take its size in the task for good.
        let task = tokio::spawn(run(ctx, Box::new(pod), rx, containers.clone()));
        Worker {
            changes: tx,
            task,
            containers,
        }
    }

    pub fn update(&self, pod: &Pod) {
        let change = PodChange::of(pod);
        self.changes
            .send_if_modified(|c| std::mem::replace(c, change) != change);
    }

    /// Stops the worker, leaving its pod's files (the agent is shutting down; the next
    /// one adopts the pod). Its containers die with the task.
    pub fn stop(self) {
        self.task.abort();
    }

    /// The pod object is gone: stops everything; resolves once the containers are really
    /// gone (only then can nothing write to the pod's files any more).
    pub async fn end(self) {
        self.task.abort();
        let _ = self.task.await;
        // Aborting the worker dropped its supervisors, which killed their containers.
        self.containers.gone().await;
    }

    pub fn finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// Where a pod keeps its files on the node: its sandbox (volumes) and its containers'
/// logs. Both go when the pod object does.
#[derive(Clone)]
pub struct PodDirs {
    pub sandbox: PathBuf,
    pub logs: PathBuf,
    /// The pod's runc bundles (each removed with its container).
    pub containers: PathBuf,
}

impl PodDirs {
    pub fn of(layout: &Layout, pod: &Pod) -> PodDirs {
        let m = &pod.metadata;
        let (ns, name, uid) = (
            m.namespace.as_deref().unwrap_or_default(),
            m.name.as_deref().unwrap_or_default(),
            m.uid.as_deref().unwrap_or_default(),
        );
        PodDirs {
            sandbox: layout.sandbox(uid),
            logs: layout.pod_logs(ns, name, uid),
            containers: layout.pod_bundles(uid),
        }
    }

    pub async fn remove(&self) {
        if let Err(e) = Sandbox::remove(&self.sandbox).await {
            tracing::warn!(error = %e, "tearing down a pod sandbox failed");
        }
        let _ = std::fs::remove_dir_all(&self.logs);
        // Empty by now (a bundle goes with its container); never recursively: a bundle
        // still there has a mounted root file system.
        let _ = std::fs::remove_dir(&self.containers);
        if let Some(uid) = self.containers.file_name() {
            crate::runtime::oci::remove_pod_cgroups(&uid.to_string_lossy());
        }
    }
}

/// A pod as its container supervisors see it.
pub(super) struct PodCtx {
    pub(super) ctx: Arc<Ctx>,
    pub(super) pod: Arc<Pod>,
    pub(super) ns: String,
    pub(super) name: String,
    pub(super) uid: String,
    pub(super) dirs: PodDirs,
    pub(super) restart_policy: String,
    /// Set once the sandbox is ready (containers start only then).
    pub(super) sandbox: std::sync::OnceLock<Sandbox>,
    /// Every container the pod starts holds a token of it until it is gone.
    pub(super) containers: Containers,
}

impl PodCtx {
    fn new(ctx: Arc<Ctx>, pod: Arc<Pod>, containers: Containers) -> PodCtx {
        let m = &pod.metadata;
        let uid = m.uid.clone().unwrap_or_default();
        PodCtx {
            ns: m.namespace.clone().unwrap_or_default(),
            name: m.name.clone().unwrap_or_default(),
            dirs: PodDirs::of(&ctx.layout, &pod),
            uid,
            restart_policy: pod
                .spec
                .as_ref()
                .and_then(|s| s.restart_policy.clone())
                .unwrap_or_else(|| "Always".into()),
            ctx,
            pod,
            sandbox: Default::default(),
            containers,
        }
    }

    pub(super) fn sandbox(&self) -> &Sandbox {
        self.sandbox
            .get()
            .expect("containers start once the sandbox is ready")
    }

    /// An init container or a container.
    pub(super) fn container(&self, which: Which) -> &Container {
        let spec = self.pod.spec.as_ref().expect("a running pod has a spec");
        match which {
            Which::Init(i) => &spec.init_containers.as_ref().expect("init containers")[i],
            Which::Main(i) => &spec.containers[i],
        }
    }

    pub(super) fn pod_id(&self) -> String {
        format!("{}_{}({})", self.name, self.ns, self.uid)
    }
}

#[async_trait::async_trait]
impl Sources for PodCtx {
    async fn config_map(&self, name: &str) -> Result<ConfigMap, String> {
        Api::<ConfigMap>::namespaced(self.ctx.client.clone(), &self.ns)
            .get(name)
            .await
            .map_err(|e| source_error("configmap", &self.ns, name, e))
    }

    async fn secret(&self, name: &str) -> Result<Secret, String> {
        Api::<Secret>::namespaced(self.ctx.client.clone(), &self.ns)
            .get(name)
            .await
            .map_err(|e| source_error("secret", &self.ns, name, e))
    }
}

/// The pod's sandbox (volumes, network and address, PID namespace, `/etc` files), made
/// from its spec and the node's networks. An error is the event's reason and message.
async fn prepare_sandbox(
    pc: &PodCtx,
    spec: &k8s_openapi::api::core::v1::PodSpec,
) -> Result<Sandbox, (&'static str, String)> {
    let host_network = spec.host_network == Some(true);
    let node_ip = pc.ctx.node_ip.clone();
    let network = if host_network {
        NetworkConfig::Node {
            ip: node_ip,
            host: true,
        }
    } else {
        pod_network(pc, spec).await?
    };
    let hostname = match host_network {
        true => super::node_info::hostname(),
        false => spec
            .hostname
            .clone()
            .unwrap_or_else(|| pc.name.chars().take(63).collect()),
    };
    // The kubelet's resolv.conf for the pod's policy. Its Wasm guests resolve with the same
    // configuration, through the cluster DNS wherever it answers (on a loopback port too,
    // which a resolv.conf cannot name).
    let node_resolv = crate::dns::resolv::ResolvConf::parse(
        &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
    );
    let cluster_ip = crate::dns::CLUSTER_DNS_IP.to_string();
    let dns = pc.ctx.dns.as_ref();
    let cluster = dns.map(|d| (cluster_ip.as_str(), d.domain.as_str()));
    let guests = crate::dns::resolv::for_pod(spec, &pc.ns, &node_resolv, cluster);
    let resolver = crate::dns::lookup::Resolver::new(
        &guests,
        crate::dns::CLUSTER_DNS_IP.into(),
        dns.map(|d| d.addr),
    )
    .map(Arc::new);
    let resolv = if dns.is_some_and(|d| d.for_pods) {
        guests
    } else {
        crate::dns::resolv::for_pod(spec, &pc.ns, &node_resolv, None)
    };
    let config = SandboxConfig {
        dir: &pc.dirs.sandbox,
        volumes: spec.volumes.as_deref().unwrap_or_default(),
        network,
        // Only processes share a PID namespace: a node without runc has none to share.
        share_pid: spec.share_process_namespace == Some(true) && pc.ctx.runtimes.oci.is_some(),
        hostname,
        aliases: spec
            .host_aliases
            .iter()
            .flatten()
            .map(|a| (a.ip.clone(), a.hostnames.clone().unwrap_or_default()))
            .collect(),
        resolv_conf: resolv.render(),
        resolver,
    };
    Sandbox::create(config, pc)
        .await
        .map_err(|e| (e.reason(), e.to_string()))
}

/// The pod's own network (or the node's where the node cannot give it one).
async fn pod_network<'a>(
    pc: &'a PodCtx,
    spec: &k8s_openapi::api::core::v1::PodSpec,
) -> Result<NetworkConfig<'a>, (&'static str, String)> {
    let mut networks = pc.ctx.networks.clone();
    let ready = networks
        .wait_for(|n| !matches!(n, super::Networks::Waiting))
        .await
        .map(|n| n.clone());
    match ready {
        Ok(super::Networks::Cni(cni)) => Ok(NetworkConfig::Pod {
            cni,
            who: crate::sandbox::network::PodRef {
                namespace: &pc.ns,
                name: &pc.name,
                uid: &pc.uid,
            },
            ports: port_mappings(spec),
        }),
        Ok(super::Networks::Node { reason }) => {
            let msg = format!(
                "This node cannot give pods a network of their own ({reason}): the pod's containers use the node's network"
            );
            pc.ctx
                .events
                .pod(&pc.pod, None, "Warning", "NodeNetwork", msg);
            Ok(NetworkConfig::Node {
                ip: pc.ctx.node_ip.clone(),
                host: false,
            })
        }
        Ok(super::Networks::Waiting) | Err(_) => Err((
            "FailedCreatePodSandBox",
            "the node's pod network is not ready".into(),
        )),
    }
}

/// The `hostPort`s a pod's containers ask for, as the portmap plugin takes them.
fn port_mappings(
    spec: &k8s_openapi::api::core::v1::PodSpec,
) -> Vec<crate::sandbox::network::PortMapping> {
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.host_port.is_some_and(|h| h > 0))
        .map(|p| crate::sandbox::network::PortMapping {
            host_port: p.host_port.unwrap_or_default(),
            container_port: p.container_port,
            protocol: p.protocol.as_deref().unwrap_or("TCP").to_lowercase(),
            host_ip: p.host_ip.clone().unwrap_or_default(),
        })
        .collect()
}

async fn run(ctx: Arc<Ctx>, pod: Box<Pod>, rx: watch::Receiver<PodChange>, containers: Containers) {
    let span = tracing::info_span!(
        "pod",
        pod = %format!(
            "{}/{}",
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            pod.metadata.name.as_deref().unwrap_or_default()
        )
    );
    run_pod(ctx, rx, pod, containers).instrument(span).await
}

async fn run_pod(
    ctx: Arc<Ctx>,
    mut rx: watch::Receiver<PodChange>,
    mut pod: Box<Pod>,
    containers: Containers,
) {
    // The status the pod had (after an agent restart) only seeds the containers' states;
    // the worker keeps the rest of the pod without it.
    let prev = pod.status.take().unwrap_or_default();
    let pod: Arc<Pod> = Arc::from(pod);
    let Some(spec) = pod.spec.as_ref() else {
        return;
    };
    let pc = PodCtx::new(ctx.clone(), pod.clone(), containers.clone());
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &pc.ns);
    let dirs = pc.dirs.clone();
    // A pod deleted while this agent was away: nothing of it may start again.
    if rx.borrow().deleting {
        return Box::pin(finish_deletion(&api, &pod, &dirs, &containers)).await;
    }
    let finished = matches!(prev.phase.as_deref(), Some("Succeeded" | "Failed"));
    let start = prev.start_time.clone().unwrap_or_else(now);
    let statuses = |containers: Option<&Vec<Container>>, before: Option<&Vec<ContainerStatus>>| {
        containers
            .into_iter()
            .flatten()
            .map(|c| {
                let prev = before.and_then(|l| l.iter().find(|s| s.name == c.name));
                initial_status(c, prev)
            })
            .collect::<Vec<_>>()
    };
    let mut init = statuses(
        spec.init_containers.as_ref(),
        prev.init_container_statuses.as_ref(),
    );
    let mut main = statuses(Some(&spec.containers), prev.container_statuses.as_ref());
    let (tx, mut updates) = mpsc::channel::<Update>(64);
    // Status goes to the API server through one writer that always sends the latest state.
    let reporter = Reporter {
        host_ip: ctx.node_ip.clone(),
        pod_ip: std::sync::Mutex::new(prev.pod_ip.clone()),
        start: start.clone(),
        restart_policy: pc.restart_policy.clone(),
        qos_class: prev.qos_class.clone(),
        conditions: std::sync::Mutex::new(prev.conditions.clone().unwrap_or_default()),
        failure: Default::default(),
        sidecars: spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| c.restart_policy.as_deref() == Some("Always"))
            .collect(),
        last: Default::default(),
        slot: Default::default(),
    };
    // What each container was, for adopting those that outlived an earlier agent.
    let before = |containers: Option<&Vec<Container>>, list: Option<&Vec<ContainerStatus>>| {
        containers
            .into_iter()
            .flatten()
            .map(|c| {
                list.and_then(|l| l.iter().find(|s| s.name == c.name))
                    .cloned()
            })
            .collect::<Vec<_>>()
    };
    let init_before = before(
        spec.init_containers.as_ref(),
        prev.init_container_statuses.as_ref(),
    );
    let main_before = before(Some(&spec.containers), prev.container_statuses.as_ref());
    drop(prev);
    let _writer = AbortOnDrop(tokio::spawn(write_status(
        api.clone(),
        pc.name.clone(),
        reporter.slot.clone(),
    )));
    // activeDeadlineSeconds counts from the pod's start (init containers included) and
    // may be changed while it runs.
    let deadline_of = |c: &PodChange| {
        c.active_deadline_seconds.map(|secs| {
            let elapsed = jiff::Timestamp::now()
                .duration_since(start.0)
                .as_secs()
                .max(0) as u64;
            tokio::time::Instant::now()
                + Duration::from_secs((secs.max(0) as u64).saturating_sub(elapsed))
        })
    };
    let mut deadline = deadline_of(&rx.borrow());
    let shape = Shape {
        sidecars: reporter.sidecars.clone(),
        mains: spec.containers.len(),
    };
    let mut life = Lifecycle::new(shape);
    let pc = Arc::new(pc);
    // Each running supervisor, and the signal that tells its container to stop.
    let mut supervisors: BTreeMap<
        Which,
        (AbortOnDrop<()>, watch::Sender<Option<tokio::time::Instant>>),
    > = BTreeMap::new();
    let mut init_done = init.is_empty();
    let mut sandbox_job: Option<std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>>> =
        None;
    let mut sandbox_retry: Option<tokio::time::Instant> = None;
    let mut sandbox_backoff = BACKOFF_START;
    let mut pending = life.step(Event::Begin {
        deleting: rx.borrow().deleting,
        finished,
    });
    // A pod that had ended before this worker began keeps the status it ended with.
    let report = |init: &[ContainerStatus], main: &[ContainerStatus], done: bool| {
        if !finished {
            reporter.report(init, main, done);
        }
    };
    report(&init, &main, init_done);
    loop {
        for action in std::mem::take(&mut pending) {
            match action {
                Action::PrepareSandbox => {
                    let pc = pc.clone();
                    sandbox_job = Some(Box::pin(async move {
                        let spec = pc.pod.spec.as_ref().expect("a running pod has a spec");
                        prepare_sandbox(&pc, spec).await
                    }));
                }
                Action::RetrySandbox => {
                    sandbox_retry = Some(tokio::time::Instant::now() + sandbox_backoff);
                    sandbox_backoff = (sandbox_backoff * 2).min(BACKOFF_MAX);
                }
                Action::Start(which) => {
                    if matches!(which, Which::Main(_)) {
                        init_done = true;
                    }
                    let (status, previous) = match which {
                        Which::Init(i) => (init[i].clone(), init_before[i].clone()),
                        Which::Main(i) => (main[i].clone(), main_before[i].clone()),
                    };
                    let (stop_tx, stop_rx) = watch::channel(None);
                    let (pc, tx) = (pc.clone(), tx.clone());
                    let task = tokio::spawn(async move {
                        let ok = supervise(pc, which, status, previous, tx.clone(), stop_rx).await;
                        let _ = tx.send(Update::Exited(which, ok)).await;
                    });
                    supervisors.insert(which, (AbortOnDrop(task), stop_tx));
                }
                Action::Stop { which, graceful } => {
                    let grace = if graceful {
                        Duration::from_secs(rx.borrow().grace_seconds as u64)
                    } else {
                        Duration::ZERO
                    };
                    let until = tokio::time::Instant::now() + grace;
                    for w in which {
                        if let Some((_, stop)) = supervisors.get(&w) {
                            stop.send_replace(Some(until));
                        }
                    }
                }
                Action::ReportDeadline => {
                    // Its containers are being killed: the status says so at once (their
                    // supervisors' own final word follows).
                    for st in init.iter_mut().chain(main.iter_mut()) {
                        let Some(run) = st.state.as_ref().and_then(|x| x.running.clone()) else {
                            continue;
                        };
                        let id = st.container_id.clone().unwrap_or_default();
                        st.state =
                            Some(terminated(&Exit::killed(None), run.started_at, &id, now()));
                        st.ready = false;
                        st.started = Some(false);
                    }
                    let msg = "Pod was active on the node longer than the specified deadline";
                    *reporter.failure.lock().expect("failure") =
                        Some(("DeadlineExceeded", msg.to_string()));
                    ctx.events
                        .pod(&pod, None, "Normal", "DeadlineExceeded", msg.into());
                }
                Action::FinishDeletion => {
                    // Whatever still runs is killed with its supervisor.
                    supervisors.clear();
                    return Box::pin(finish_deletion(&api, &pod, &dirs, &containers)).await;
                }
            }
        }
        report(&init, &main, init_done);
        let event = tokio::select! {
            prepared = async { sandbox_job.as_mut().expect("guarded").await }, if sandbox_job.is_some() => {
                sandbox_job = None;
                match prepared {
                    Ok(sandbox) => {
                        *reporter.pod_ip.lock().expect("pod ip") = Some(sandbox.ip.clone());
                        let _ = pc.sandbox.set(sandbox);
                        Event::SandboxReady
                    }
                    Err((reason, msg)) => {
                        ctx.events.pod(&pod, None, "Warning", reason, msg.clone());
                        for s in main.iter_mut() {
                            s.state = Some(waiting("ContainerCreating", Some(msg.clone())));
                        }
                        Event::SandboxFailed
                    }
                }
            }
            () = sleep_until(sandbox_retry) => {
                sandbox_retry = None;
                pending.push(Action::PrepareSandbox);
                continue;
            }
            Some(update) = updates.recv() => match update {
                Update::Status(which, st) => {
                    let started = st.state.as_ref().is_some_and(|s| s.running.is_some())
                        && st.started == Some(true);
                    match which {
                        Which::Init(i) => init[i] = *st,
                        Which::Main(i) => main[i] = *st,
                    }
                    if !started {
                        continue;
                    }
                    Event::Started(which)
                }
                Update::Exited(which, ok) => {
                    supervisors.remove(&which);
                    Event::Exited { which, ok }
                }
            },
            changed = rx.changed() => {
                if changed.is_err() {
                    // The worker is being stopped.
                    return;
                }
                deadline = deadline_of(&rx.borrow());
                if !rx.borrow().deleting {
                    continue;
                }
                Event::Deleting
            }
            () = sleep_until(deadline), if !matches!(life.stage, Stage::Done | Stage::Terminating | Stage::Gone) => {
                deadline = None;
                Event::DeadlineExceeded
            }
        };
        if event == Event::Deleting {
            // A sandbox still being made is abandoned (the deletion removes what it made).
            sandbox_job = None;
            sandbox_retry = None;
        }
        // Logged by reference before the step takes it: formatted only when debugging.
        tracing::debug!(pod = %pc.name, ?event, stage = ?life.stage, "pod worker event");
        pending = life.step(event);
        tracing::debug!(pod = %pc.name, stage = ?life.stage, actions = ?pending, "pod worker step");
    }
}

/// Once the containers are gone (they were told to stop), removes the pod's sandbox (its
/// network, then its files) and deletes the pod object for good (grace period 0): as the
/// kubelet, only a pod whose resources are reclaimed goes.
async fn finish_deletion(api: &Api<Pod>, pod: &Pod, dirs: &PodDirs, containers: &Containers) {
    let name = pod.metadata.name.clone().unwrap_or_default();
    tracing::debug!(pod = %name, "deletion: waiting for the containers to go");
    containers.gone().await;
    tracing::debug!(pod = %name, "deletion: removing the sandbox");
    dirs.remove().await;
    tracing::debug!(pod = %name, "deletion: deleting the object");
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: pod.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    // As the kubelet's status manager, keep at it until the object is gone: a pod whose
    // deletion was lost stays Terminating for good.
    let mut retry = STATUS_RETRY_START;
    loop {
        match api.delete(&name, &dp).await {
            Ok(d) => {
                tracing::debug!(pod = %name, deleted = d.is_right(), "deletion: done");
                return;
            }
            // Gone already, or the name now belongs to another pod.
            Err(kube::Error::Api(e))
                if e.code == 404 || (e.code == 409 && e.message.contains("UID")) =>
            {
                tracing::debug!(pod = %name, error = %e.message, "deletion: the object is not ours any more");
                return;
            }
            Err(e) => {
                tracing::warn!(pod = %name, error = %e, "final pod deletion failed; retrying");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(STATUS_RETRY_MAX);
            }
        }
    }
}
