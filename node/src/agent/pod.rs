//! One worker per pod: prepares the pod sandbox (volumes), runs init containers in order,
//! then the containers, restarting them per `restartPolicy` with Kubernetes' back-off, and
//! reports status the Kubernetes way. When the pod is deleted it stops the containers and
//! finishes the deletion (as the kubelet does, with a zero grace period).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, Pod, PodCondition, PodStatus, Secret,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use super::lifecycle::{Action, Event, Lifecycle, Shape, Stage, Which};
use super::probes;
use super::{AbortOnDrop, Ctx};
use crate::layout::{self, ContainerId, Layout};
use crate::logs::LogFile;
use crate::runtime::{ContainerSpec, Containers, Exit, Running, Runtime};
use crate::sandbox::{Network, PodNamespace, Sandbox, Sources};

const BACKOFF_START: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A container that ran this long gets its back-off reset.
const BACKOFF_RESET: Duration = Duration::from_secs(600);

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

fn now() -> Time {
    Time(jiff::Timestamp::from_second(jiff::Timestamp::now().as_second()).expect("now"))
}

/// What a container supervisor reports.
enum Update {
    /// Boxed: a channel allocates its slots up front, 32 at a time.
    Status(Which, Box<ContainerStatus>),
    /// The supervisor ended: the container will not start again (whether it succeeded).
    Exited(Which, bool),
}

fn waiting(reason: &str, message: Option<String>) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.into()),
            message,
        }),
        ..Default::default()
    }
}

fn terminated(exit: &Exit, started: Option<Time>, container_id: &str) -> ContainerState {
    ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code: exit.code,
            reason: Some(exit.reason.into()),
            message: exit.message.clone(),
            started_at: started,
            finished_at: Some(now()),
            container_id: Some(container_id.into()),
            signal: None,
        }),
        ..Default::default()
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
struct PodCtx {
    ctx: Arc<Ctx>,
    pod: Arc<Pod>,
    ns: String,
    name: String,
    uid: String,
    dirs: PodDirs,
    restart_policy: String,
    /// Set once the sandbox is ready (containers start only then).
    sandbox: std::sync::OnceLock<Sandbox>,
    /// The pod's address (its own, or the node's on the node's network), with the sandbox.
    pod_ip: std::sync::OnceLock<String>,
    /// Every container the pod starts holds a token of it until it is gone.
    containers: Containers,
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
            pod_ip: Default::default(),
            containers,
        }
    }

    fn sandbox(&self) -> &Sandbox {
        self.sandbox
            .get()
            .expect("containers start once the sandbox is ready")
    }

    /// An init container or a container.
    fn container(&self, which: Which) -> &Container {
        let spec = self.pod.spec.as_ref().expect("a running pod has a spec");
        match which {
            Which::Init(i) => &spec.init_containers.as_ref().expect("init containers")[i],
            Which::Main(i) => &spec.containers[i],
        }
    }

    fn pod_id(&self) -> String {
        format!("{}_{}({})", self.name, self.ns, self.uid)
    }

    /// Environment for a container: the Services' variables (unless the pod turns service
    /// links off; the `kubernetes` Service's always), then `envFrom`, then `env` (values,
    /// and configMap, secret and field references): later ones win.
    async fn env(&self, c: &Container) -> Result<Vec<(String, String)>, String> {
        let links = self.pod.spec.as_ref().and_then(|s| s.enable_service_links) != Some(false);
        let mut services: BTreeMap<String, Arc<k8s_openapi::api::core::v1::Service>> =
            BTreeMap::new();
        for svc in self.ctx.services.state() {
            let (ns, name) = (
                svc.metadata.namespace.as_deref().unwrap_or_default(),
                svc.metadata.name.clone().unwrap_or_default(),
            );
            if links && ns == self.ns {
                // The pod's own namespace's Services win over the `kubernetes` one.
                services.insert(name, svc);
            } else if ns == "default" && name == "kubernetes" {
                services.entry(name).or_insert(svc);
            }
        }
        let mut env: Vec<(String, String)> =
            services.values().flat_map(|s| service_env(s)).collect();
        let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
            env.retain(|(ek, _)| *ek != k);
            env.push((k, v));
        };
        for from in c.env_from.iter().flatten() {
            let prefix = from.prefix.clone().unwrap_or_default();
            if let Some(r) = &from.config_map_ref {
                match self.config_map(&r.name).await {
                    Ok(cm) => {
                        for (k, v) in cm.data.unwrap_or_default() {
                            set(&mut env, format!("{prefix}{k}"), v);
                        }
                    }
                    Err(e) if r.optional == Some(true) => {
                        tracing::debug!(error = %e, "optional configMap missing")
                    }
                    Err(e) => return Err(e),
                }
            }
            if let Some(r) = &from.secret_ref {
                match self.secret(&r.name).await {
                    Ok(s) => {
                        for (k, v) in s.data.unwrap_or_default() {
                            set(
                                &mut env,
                                format!("{prefix}{k}"),
                                String::from_utf8_lossy(&v.0).into_owned(),
                            );
                        }
                    }
                    Err(e) if r.optional == Some(true) => {
                        tracing::debug!(error = %e, "optional secret missing")
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        for e in c.env.iter().flatten() {
            let value = match &e.value_from {
                None => e.value.clone().unwrap_or_default(),
                Some(src) => {
                    if let Some(r) = &src.config_map_key_ref {
                        let found = self
                            .config_map(&r.name)
                            .await
                            .map(|cm| cm.data.unwrap_or_default().get(&r.key).cloned());
                        match referenced("ConfigMap", &self.ns, &r.name, &r.key, r.optional, found)?
                        {
                            Some(v) => v,
                            None => continue,
                        }
                    } else if let Some(r) = &src.secret_key_ref {
                        let found = self.secret(&r.name).await.map(|s| {
                            s.data
                                .unwrap_or_default()
                                .get(&r.key)
                                .map(|v| String::from_utf8_lossy(&v.0).into_owned())
                        });
                        match referenced("Secret", &self.ns, &r.name, &r.key, r.optional, found)? {
                            Some(v) => v,
                            None => continue,
                        }
                    } else if let Some(f) = &src.field_ref {
                        self.field(&f.field_path)
                    } else {
                        String::new()
                    }
                }
            };
            set(&mut env, e.name.clone(), value);
        }
        Ok(env)
    }

    fn field(&self, path: &str) -> String {
        let m = &self.pod.metadata;
        let spec = self.pod.spec.clone().unwrap_or_default();
        let keyed = |map: &Option<BTreeMap<String, String>>, prefix: &str| {
            path.strip_prefix(prefix)
                .and_then(|k| k.strip_prefix("['"))
                .and_then(|k| k.strip_suffix("']"))
                .and_then(|k| map.as_ref()?.get(k).cloned())
        };
        match path {
            "metadata.name" => self.name.clone(),
            "metadata.namespace" => self.ns.clone(),
            "metadata.uid" => self.uid.clone(),
            "spec.nodeName" => spec.node_name.unwrap_or_default(),
            "spec.serviceAccountName" => spec.service_account_name.unwrap_or_default(),
            "status.hostIP" => self.ctx.node_ip.clone(),
            "status.podIP" => self.pod_ip.get().cloned().unwrap_or_default(),
            p if p.starts_with("metadata.labels") => {
                keyed(&m.labels, "metadata.labels").unwrap_or_default()
            }
            p if p.starts_with("metadata.annotations") => {
                keyed(&m.annotations, "metadata.annotations").unwrap_or_default()
            }
            _ => String::new(),
        }
    }

    /// Registry credentials from the pod's `imagePullSecrets` (docker config JSON).
    async fn registry_auth(&self, image: &str) -> oci_client::secrets::RegistryAuth {
        let registry = oci_client::Reference::try_from(image)
            .map(|r| r.registry().to_string())
            .unwrap_or_default();
        for s in self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.image_pull_secrets.as_ref())
            .into_iter()
            .flatten()
        {
            let Ok(secret) = self.secret(&s.name).await else {
                continue;
            };
            let data = secret.data.unwrap_or_default();
            if let Some(cfg) = data
                .get(".dockerconfigjson")
                .or_else(|| data.get(".dockercfg"))
            {
                if let Some(auth) = crate::registry::auth_from_dockerconfig(&cfg.0, &registry) {
                    return auth;
                }
            }
        }
        oci_client::secrets::RegistryAuth::Anonymous
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

/// A Service's variables for containers, as the kubelet's (and Docker links') makes them:
/// `{NAME}_SERVICE_HOST`, `_SERVICE_PORT` (and per named port), `{NAME}_PORT` and
/// `{NAME}_PORT_{port}_{PROTO}` with `_PROTO`, `_PORT`, `_ADDR`. None for a Service
/// without a cluster IP.
fn service_env(svc: &k8s_openapi::api::core::v1::Service) -> Vec<(String, String)> {
    let Some(spec) = svc.spec.as_ref() else {
        return Vec::new();
    };
    let ip = spec.cluster_ip.as_deref().unwrap_or_default();
    let ports = spec.ports.as_deref().unwrap_or_default();
    if ip.is_empty() || ip == "None" || ports.is_empty() {
        return Vec::new();
    }
    let var = |s: &str| s.replace('-', "_").to_uppercase();
    let prefix = var(svc.metadata.name.as_deref().unwrap_or_default());
    let mut out = vec![
        (format!("{prefix}_SERVICE_HOST"), ip.to_string()),
        (format!("{prefix}_SERVICE_PORT"), ports[0].port.to_string()),
    ];
    for p in ports {
        if let Some(name) = p.name.as_deref().filter(|n| !n.is_empty()) {
            out.push((
                format!("{prefix}_SERVICE_PORT_{}", var(name)),
                p.port.to_string(),
            ));
        }
    }
    for (i, p) in ports.iter().enumerate() {
        let proto = p.protocol.as_deref().unwrap_or("TCP");
        let url = format!("{}://{ip}:{}", proto.to_lowercase(), p.port);
        if i == 0 {
            out.push((format!("{prefix}_PORT"), url.clone()));
        }
        let pp = format!("{prefix}_PORT_{}_{}", p.port, proto.to_uppercase());
        out.push((format!("{pp}_PROTO"), proto.to_lowercase()));
        out.push((format!("{pp}_PORT"), p.port.to_string()));
        out.push((format!("{pp}_ADDR"), ip.to_string()));
        out.push((pp, url));
    }
    out
}

/// Why a configMap or secret a pod uses could not be read, in the kubelet's words.
fn source_error(kind: &str, ns: &str, name: &str, e: kube::Error) -> String {
    match e {
        kube::Error::Api(s) if s.code == 404 => format!("{kind} {name:?} not found"),
        kube::Error::Api(s) => format!("couldn't get {kind} {ns}/{name}: {}", s.message),
        e => format!("couldn't get {kind} {ns}/{name}: {e}"),
    }
}

/// A key a container's env refers to: `None` when the reference is optional and missing.
fn referenced(
    kind: &str,
    ns: &str,
    name: &str,
    key: &str,
    optional: Option<bool>,
    found: Result<Option<String>, String>,
) -> Result<Option<String>, String> {
    match found {
        Ok(Some(v)) => Ok(Some(v)),
        _ if optional == Some(true) => Ok(None),
        Ok(None) => Err(format!("couldn't find key {key} in {kind} {ns}/{name}")),
        Err(e) => Err(e),
    }
}

fn limit(c: &Container, res: &str) -> Option<i128> {
    c.resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get(res))
        .and_then(|q| skiff_api::quantity::parse(&q.0).ok())
        .map(|m| m.0)
}

/// Runs one container's lifecycle until it will not restart; reports every change.
#[allow(clippy::too_many_arguments)]
async fn supervise(
    pc: Arc<PodCtx>,
    which: Which,
    mut status: ContainerStatus,
    previous: Option<ContainerStatus>,
    updates: mpsc::Sender<Update>,
    mut stop: watch::Receiver<Option<tokio::time::Instant>>,
) -> bool {
    let ctx = pc.ctx.clone();
    let c = pc.container(which);
    let init = matches!(which, Which::Init(_));
    // A native sidecar restarts whatever the pod's policy says.
    let sidecar = init && c.restart_policy.as_deref() == Some("Always");
    let restart_policy = if sidecar {
        "Always"
    } else {
        pc.restart_policy.as_str()
    };
    // Failed pulls and creations retry after `backoff`. Crashes follow the kubelet: the
    // first restart is immediate, later ones wait 10 s doubling to 5 min.
    let mut backoff = BACKOFF_START;
    let mut crash_backoff = Duration::ZERO;
    // A container an earlier agent started and that outlived it goes on.
    let mut adopted = match previous {
        Some(prev) => adopt(&pc, prev).await,
        None => None,
    };
    loop {
        if stop.borrow().is_some() {
            return false;
        }
        let (mut running, started, container_id, log_path, runtime, run_id) =
            if let Some((running, prev, runtime, cid)) = adopted.take() {
                let started = prev
                    .state
                    .as_ref()
                    .and_then(|s| s.running.as_ref())
                    .and_then(|r| r.started_at.clone())
                    .unwrap_or_else(now);
                let id = prev.container_id.clone().unwrap_or_default();
                let log_path = layout::run_log(&pc.dirs.logs, &c.name, prev.restart_count);
                ctx.active_logs
                    .lock()
                    .expect("active logs")
                    .insert(log_path.clone());
                status = prev;
                let run_id = cid.run_id().to_string();
                (running, started, id, log_path, runtime, run_id)
            } else {
                let image = c.image.clone().unwrap_or_default();
                let policy = c
                    .image_pull_policy
                    .clone()
                    .unwrap_or_else(|| "IfNotPresent".into());
                let pulled = unless_stopped(
                    Box::pin(obtain_image(&pc, &c.name, &image, &policy)),
                    &mut stop,
                )
                .await;
                let Some(pulled) = pulled else {
                    return false;
                };
                let img = match pulled {
                    Ok(img) => img,
                    Err((reason, msg)) => {
                        status.state = Some(waiting(reason, Some(msg)));
                        let _ = updates
                            .send(Update::Status(which, Box::new(status.clone())))
                            .await;
                        if unless_stopped(tokio::time::sleep(backoff), &mut stop)
                            .await
                            .is_none()
                        {
                            return false;
                        }
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        // Later attempts wait in ImagePullBackOff, as the kubelet's do.
                        if reason == "ErrImagePull" {
                            status.state = Some(waiting(
                                "ImagePullBackOff",
                                Some(format!("Back-off pulling image \"{image}\"")),
                            ));
                            let _ = updates
                                .send(Update::Status(which, Box::new(status.clone())))
                                .await;
                        }
                        continue;
                    }
                };
                let class = pc
                    .pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.runtime_class_name.as_deref());
                let runtime = match pc.ctx.runtimes.for_image(&img, class) {
                    Ok(r) => r,
                    Err(msg) => {
                        let wait = create_failed(
                            &pc,
                            &c.name,
                            which,
                            &mut status,
                            &updates,
                            "CreateContainerError",
                            msg,
                            &mut backoff,
                        )
                        .await;
                        if unless_stopped(tokio::time::sleep(wait), &mut stop)
                            .await
                            .is_none()
                        {
                            return false;
                        }
                        continue;
                    }
                };
                status.image = image.clone();
                status.image_id = format!(
                    "{}@{}",
                    image.split('@').next().unwrap_or(&image),
                    img.digest
                );
                // The environment, then the mounts (a subPathExpr expands with it).
                let config = async {
                    let env = pc.env(c).await?;
                    let mounts = pc.sandbox().mounts(c, &env).map_err(|e| e.to_string())?;
                    Ok::<_, String>((env, mounts))
                };
                let (env, mounts) = match Box::pin(config).await {
                    Ok(config) => config,
                    Err(msg) => {
                        let wait = create_failed(
                            &pc,
                            &c.name,
                            which,
                            &mut status,
                            &updates,
                            "CreateContainerConfigError",
                            msg,
                            &mut backoff,
                        )
                        .await;
                        if unless_stopped(tokio::time::sleep(wait), &mut stop)
                            .await
                            .is_none()
                        {
                            return false;
                        }
                        continue;
                    }
                };
                // `restartCount` numbers the latest instance; a container that ran before (under
                // this agent or an earlier one: it has a last state) starts one higher.
                let run = status.restart_count + i32::from(status.last_state.is_some());
                let run_id = layout::run_id(&pc.uid, &c.name, run);
                let log_path = layout::run_log(&pc.dirs.logs, &c.name, run);
                let log = LogFile::new(&log_path, crate::logs::MAX_LOG_BYTES);
                let argv = argv(c, img.run.as_ref());
                let env = match &img.run {
                    Some(run) => image_env(run, env),
                    None => env,
                };
                let spec = ContainerSpec {
                    id: format!("{}/{}/{}", pc.ns, pc.name, c.name),
                    run_id: run_id.clone(),
                    pod_uid: pc.uid.clone(),
                    hostname: pc.sandbox().hostname.clone(),
                    files: pc.sandbox().files.clone(),
                    security: security(&pc.pod, c),
                    image_user: img
                        .run
                        .as_ref()
                        .and_then(|r| r.user.clone())
                        .filter(|u| !u.is_empty()),
                    cpu_request_millis: request(c, "cpu").map(|m| m as u64),
                    ports: c
                        .ports
                        .iter()
                        .flatten()
                        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
                        .map(|p| p.container_port as u16)
                        .collect(),
                    image: img.content.clone(),
                    image_digest: img.digest.clone(),
                    argv,
                    env,
                    working_dir: c.working_dir.clone().or_else(|| {
                        img.run
                            .as_ref()
                            .and_then(|r| r.working_dir.clone())
                            .filter(|d| !d.is_empty())
                    }),
                    mounts,
                    stdin: c.stdin == Some(true),
                    stdin_once: c.stdin_once == Some(true),
                    tty: c.tty == Some(true),
                    pid_namespace: pc.sandbox().pid_namespace.clone(),
                    network: pc.sandbox().network.clone(),
                    resolver: pc.sandbox().resolver.clone(),
                    log,
                    memory_limit: limit(c, "memory").map(|m| (m / 1000) as u64),
                    cpu_limit_millis: limit(c, "cpu").map(|m| m as u64),
                    alive: pc.containers.token(),
                };
                let container_id = ContainerId::new(runtime.name(), &run_id).to_string();
                let started = now();
                ctx.active_logs
                    .lock()
                    .expect("active logs")
                    .insert(log_path.clone());
                let running: Box<dyn Running> = match runtime.start(spec).await {
                    Ok(r) => r,
                    Err(e) => {
                        ctx.active_logs
                            .lock()
                            .expect("active logs")
                            .remove(&log_path);
                        let reason = match e {
                            crate::runtime::RuntimeError::Config(_) => "CreateContainerConfigError",
                            _ => "CreateContainerError",
                        };
                        let wait = create_failed(
                            &pc,
                            &c.name,
                            which,
                            &mut status,
                            &updates,
                            reason,
                            e.to_string(),
                            &mut backoff,
                        )
                        .await;
                        if unless_stopped(tokio::time::sleep(wait), &mut stop)
                            .await
                            .is_none()
                        {
                            return false;
                        }
                        continue;
                    }
                };
                ctx.events.pod(
                    &pc.pod,
                    Some(&c.name),
                    "Normal",
                    "Created",
                    format!("Created container: {}", c.name),
                );
                ctx.events.pod(
                    &pc.pod,
                    Some(&c.name),
                    "Normal",
                    "Started",
                    format!("Started container {}", c.name),
                );
                status.restart_count = run;
                status.container_id = Some(container_id.clone());
                // Started and ready now, unless probes say when.
                status.started = Some(c.startup_probe.is_none());
                status.ready =
                    (!init || sidecar) && c.startup_probe.is_none() && c.readiness_probe.is_none();
                status.state = Some(ContainerState {
                    running: Some(ContainerStateRunning {
                        started_at: Some(started.clone()),
                    }),
                    ..Default::default()
                });
                (running, started, container_id, log_path, runtime, run_id)
            };
        let began = Instant::now();
        // Told to stop: SIGTERM (for a Wasm guest, the end), then a kill when the grace
        // period is over. An aborted worker drops `running`, which kills the container.
        let (terminate, kill) = (running.terminate_switch(), running.kill_switch());
        let mut stopping: Option<tokio::time::Instant> = None;
        // Probes: the startup probe first; liveness and readiness once it has passed.
        let (probe_tx, mut probe_rx) = mpsc::channel::<ProbeResult>(8);
        let exec: probes::Exec = {
            let (ctx, name, run_id) = (ctx.clone(), runtime.name(), run_id.clone());
            std::sync::Arc::new(move |argv: Vec<String>| {
                let (ctx, run_id) = (ctx.clone(), run_id.clone());
                Box::pin(async move {
                    match ctx.runtimes.named(name) {
                        Some(rt) => rt.exec(&run_id, &argv, false, false).await,
                        None => Err(crate::runtime::RuntimeError::Exec(format!(
                            "no {name} runtime"
                        ))),
                    }
                })
            })
        };
        let target = probes::Target {
            ip: pc
                .pod_ip
                .get()
                .cloned()
                .unwrap_or_else(|| ctx.node_ip.clone()),
            container: c.clone(),
            exec,
        };
        // The postStart hook runs before the container counts as running (the kubelet's
        // order); if it fails, the container is killed and restarts as its policy says.
        if let Some(hook) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()) {
            let mut told = stop.clone();
            let outcome = tokio::select! {
                o = probes::run_hook(hook, &target, Duration::from_secs(24 * 3600)) => Some(o),
                _ = stop_requested(&mut told) => None,
            };
            if let Some(probes::Outcome::Failure(why)) = outcome {
                ctx.events.pod(
                    &pc.pod,
                    Some(&c.name),
                    "Warning",
                    "FailedPostStartHook",
                    format!("PostStartHook failed: {why}"),
                );
                kill.kill();
            }
        }
        let _ = updates
            .send(Update::Status(which, Box::new(status.clone())))
            .await;
        let mut probing = ProbeSet::default();
        if c.startup_probe.is_some() {
            probing.start(ProbeKind::Startup, c, &target, &probe_tx);
        } else {
            probing.start(ProbeKind::Liveness, c, &target, &probe_tx);
            probing.start(ProbeKind::Readiness, c, &target, &probe_tx);
        }
        let mut liveness_failed = false;
        // A preStop hook under way: the container is told to stop once it is done.
        let mut pre_stop: Option<futures::future::BoxFuture<'static, probes::Outcome>> = None;
        let exit = {
            let wait = running.wait();
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    exit = &mut wait => break exit,
                    Some(result) = probe_rx.recv() => {
                        if let probes::Outcome::Failure(why) = &result.outcome {
                            ctx.events.pod(&pc.pod, Some(&c.name), "Warning", "Unhealthy", format!("{} probe failed: {why}", result.kind.name()));
                        }
                        let changed = match (result.kind, result.verdict) {
                            (ProbeKind::Startup, probes::Verdict::Passed) => {
                                probing.stop(ProbeKind::Startup);
                                probing.start(ProbeKind::Liveness, c, &target, &probe_tx);
                                probing.start(ProbeKind::Readiness, c, &target, &probe_tx);
                                status.started = Some(true);
                                status.ready = (!init || sidecar) && c.readiness_probe.is_none();
                                true
                            }
                            (ProbeKind::Readiness, probes::Verdict::Passed) => {
                                status.ready = true;
                                true
                            }
                            (ProbeKind::Readiness, probes::Verdict::Failed(_)) => {
                                status.ready = false;
                                true
                            }
                            (kind @ (ProbeKind::Startup | ProbeKind::Liveness), probes::Verdict::Failed(_)) if stopping.is_none() => {
                                ctx.events.pod(&pc.pod, Some(&c.name), "Normal", "Killing", format!("Container {} failed {} probe, will be restarted", c.name, kind.name().to_lowercase()));
                                probing = ProbeSet::default();
                                liveness_failed = true;
                                terminate.kill();
                                let grace = c.liveness_probe.as_ref().and_then(|p| p.termination_grace_period_seconds)
                                    .or_else(|| pc.pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds))
                                    .unwrap_or(30)
                                    .max(0) as u64;
                                stopping = Some(tokio::time::Instant::now() + Duration::from_secs(grace));
                                false
                            }
                            _ => false,
                        };
                        if changed {
                            let _ = updates.send(Update::Status(which, Box::new(status.clone()))).await;
                        }
                    }
                    deadline = stop_requested(&mut stop), if stopping.is_none() || liveness_failed => {
                        liveness_failed = false;
                        ctx.events.pod(
                            &pc.pod,
                            Some(&c.name),
                            "Normal",
                            "Killing",
                            format!("Stopping container {}", c.name),
                        );
                        stopping = Some(deadline);
                        // The preStop hook first (the kubelet's order), within the grace
                        // period; then SIGTERM.
                        match c.lifecycle.as_ref().and_then(|l| l.pre_stop.clone()) {
                            Some(hook) => {
                                let target = target.clone();
                                let budget = deadline.saturating_duration_since(tokio::time::Instant::now());
                                pre_stop = Some(Box::pin(async move {
                                    probes::run_hook(&hook, &target, budget).await
                                }));
                            }
                            None => terminate.kill(),
                        }
                    }
                    outcome = async { pre_stop.as_mut().expect("a hook").await }, if pre_stop.is_some() => {
                        pre_stop = None;
                        if let probes::Outcome::Failure(why) = outcome {
                            ctx.events.pod(&pc.pod, Some(&c.name), "Warning", "FailedPreStopHook", format!("PreStopHook failed: {why}"));
                        }
                        terminate.kill();
                    }
                    _ = tokio::time::sleep_until(stopping.unwrap_or_else(tokio::time::Instant::now)), if stopping.is_some() => {
                        kill.kill();
                        stopping = Some(tokio::time::Instant::now() + Duration::from_secs(86400));
                    }
                }
            }
        };
        ctx.active_logs
            .lock()
            .expect("active logs")
            .remove(&log_path);
        let term = terminated(&exit, Some(started), &container_id);
        status.ready = false;
        status.started = Some(false);
        drop(probing);
        // A container killed for failing its probes restarts per the policy; one stopped
        // because its pod goes does not.
        let restart = (stopping.is_none() || liveness_failed)
            && match restart_policy {
                "Always" => !init || sidecar || exit.code != 0,
                "OnFailure" => exit.code != 0,
                _ => false,
            };
        if !restart {
            status.state = Some(term);
            let _ = updates
                .send(Update::Status(which, Box::new(status.clone())))
                .await;
            return exit.code == 0;
        }
        if began.elapsed() >= BACKOFF_RESET {
            crash_backoff = Duration::ZERO;
        }
        status.last_state = Some(term);
        if crash_backoff.is_zero() {
            crash_backoff = BACKOFF_START;
            continue;
        }
        let msg = format!(
            "back-off {}s restarting failed container={} pod={}",
            crash_backoff.as_secs(),
            c.name,
            pc.pod_id()
        );
        status.state = Some(waiting("CrashLoopBackOff", Some(msg)));
        let _ = updates
            .send(Update::Status(which, Box::new(status.clone())))
            .await;
        ctx.events.pod(
            &pc.pod,
            Some(&c.name),
            "Warning",
            "BackOff",
            format!(
                "Back-off restarting failed container {} in pod {}",
                c.name,
                pc.pod_id()
            ),
        );
        if unless_stopped(tokio::time::sleep(crash_backoff), &mut stop)
            .await
            .is_none()
        {
            return false;
        }
        crash_backoff = (crash_backoff * 2).min(BACKOFF_MAX);
    }
}

/// Which of a container's probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ProbeKind {
    Startup,
    Liveness,
    Readiness,
}

impl ProbeKind {
    fn name(self) -> &'static str {
        match self {
            ProbeKind::Startup => "Startup",
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
        }
    }

    fn of(self, c: &Container) -> Option<&k8s_openapi::api::core::v1::Probe> {
        match self {
            ProbeKind::Startup => c.startup_probe.as_ref(),
            ProbeKind::Liveness => c.liveness_probe.as_ref(),
            ProbeKind::Readiness => c.readiness_probe.as_ref(),
        }
    }
}

/// A probe run's result, and what it makes of the probe's verdict.
struct ProbeResult {
    kind: ProbeKind,
    outcome: probes::Outcome,
    verdict: probes::Verdict,
}

/// The probe loops of a running container (they stop when dropped).
#[derive(Default)]
struct ProbeSet(Vec<(ProbeKind, AbortOnDrop<()>)>);

impl ProbeSet {
    /// Starts probing `kind`, if the container has such a probe: after its initial delay,
    /// every period, each run's result sent to `tx`.
    fn start(
        &mut self,
        kind: ProbeKind,
        c: &Container,
        target: &probes::Target,
        tx: &mpsc::Sender<ProbeResult>,
    ) {
        let Some(probe) = kind.of(c).cloned() else {
            return;
        };
        let (target, tx) = (target.clone(), tx.clone());
        let task = tokio::spawn(async move {
            let mut prober = probes::Prober::new(probes::Timing::of(&probe));
            tokio::time::sleep(prober.timing.initial_delay).await;
            loop {
                let outcome = probes::run(&probe, &target, prober.timing.timeout).await;
                let verdict = prober.record(outcome.clone());
                if tx
                    .send(ProbeResult {
                        kind,
                        outcome,
                        verdict,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
                tokio::time::sleep(prober.timing.period).await;
            }
        });
        self.0.push((kind, AbortOnDrop(task)));
    }

    fn stop(&mut self, kind: ProbeKind) {
        self.0.retain(|(k, _)| *k != kind);
    }
}

/// A container the pod's status shows running under an earlier agent, if its runtime
/// still has it (runc containers outlive the agent; Wasm guests do not).
async fn adopt(pc: &PodCtx, prev: ContainerStatus) -> Option<Adopted<'_>> {
    prev.state.as_ref()?.running.as_ref()?;
    let id: ContainerId = prev.container_id.as_deref()?.parse().ok()?;
    let runtime = pc.ctx.runtimes.of(&id)?;
    let running = runtime.adopt(id.run_id(), pc.containers.token()).await?;
    tracing::info!(container = %prev.name, %id, "adopted a running container");
    Some((running, prev, runtime, id))
}

/// An adopted container, its status, the runtime that runs it and its ID there.
type Adopted<'a> = (
    Box<dyn Running>,
    ContainerStatus,
    &'a dyn Runtime,
    ContainerId,
);

/// The container's securityContext over its pod's.
fn security(pod: &Pod, c: &Container) -> crate::runtime::Security {
    let p = pod
        .spec
        .as_ref()
        .and_then(|s| s.security_context.clone())
        .unwrap_or_default();
    let own = c.security_context.clone().unwrap_or_default();
    let caps = own.capabilities.clone().unwrap_or_default();
    crate::runtime::Security {
        run_as_user: own.run_as_user.or(p.run_as_user),
        run_as_group: own.run_as_group.or(p.run_as_group),
        run_as_non_root: own.run_as_non_root.or(p.run_as_non_root) == Some(true),
        supplemental_groups: p.supplemental_groups.unwrap_or_default(),
        read_only_root_filesystem: own.read_only_root_filesystem == Some(true),
        privileged: own.privileged == Some(true),
        allow_privilege_escalation: own.allow_privilege_escalation,
        add_capabilities: caps.add.unwrap_or_default(),
        drop_capabilities: caps.drop.unwrap_or_default(),
    }
}

/// A container's resource request in milli-units (its limit when it states none, as the
/// API server defaults it).
fn request(c: &Container, res: &str) -> Option<i128> {
    c.resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|l| l.get(res))
        .and_then(|q| skiff_api::quantity::parse(&q.0).ok())
        .map(|m| m.0)
        .or_else(|| limit(c, res))
}

/// A container's arguments as Kubernetes composes them: `command` replaces the image's
/// Entrypoint (and then its Cmd is dropped), `args` replaces its Cmd. A Wasm artifact has
/// neither: its argv[0] is the container's name.
fn argv(c: &Container, image: Option<&crate::images::RunConfig>) -> Vec<String> {
    let Some(image) = image else {
        let mut argv = c.command.clone().unwrap_or_default();
        if argv.is_empty() {
            argv.push(c.name.clone());
        }
        argv.extend(c.args.clone().unwrap_or_default());
        return argv;
    };
    let image = Some(image);
    let entrypoint = image.and_then(|r| r.entrypoint.clone()).unwrap_or_default();
    let cmd = image.and_then(|r| r.cmd.clone()).unwrap_or_default();
    let mut argv = match &c.command {
        Some(command) if !command.is_empty() => command.clone(),
        _ => entrypoint,
    };
    let args = match (&c.command, &c.args) {
        (_, Some(args)) => args.clone(),
        (Some(command), None) if !command.is_empty() => Vec::new(),
        _ => cmd,
    };
    if argv.is_empty() {
        // Only Cmd (or nothing) from the image: its first word is the program.
        let mut args = args.into_iter();
        argv.push(args.next().unwrap_or_else(|| c.name.clone()));
        argv.extend(args);
        return argv;
    }
    argv.extend(args);
    argv
}

/// The image's `Env`, overridden by the container's own.
fn image_env(run: &crate::images::RunConfig, own: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = run
        .env
        .iter()
        .flatten()
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| own.iter().all(|(o, _)| o != k))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    env.extend(own);
    env
}

/// A container that could not be created: it waits with `reason`, a Failed event says
/// why, and the next attempt comes after the back-off.
#[allow(clippy::too_many_arguments)]
async fn create_failed(
    pc: &PodCtx,
    container: &str,
    which: Which,
    status: &mut ContainerStatus,
    updates: &mpsc::Sender<Update>,
    reason: &str,
    msg: String,
    backoff: &mut Duration,
) -> Duration {
    pc.ctx.events.pod(
        &pc.pod,
        Some(container),
        "Warning",
        "Failed",
        format!("Error: {msg}"),
    );
    status.state = Some(waiting(reason, Some(msg)));
    let _ = updates
        .send(Update::Status(which, Box::new(status.clone())))
        .await;
    let wait = *backoff;
    *backoff = (*backoff * 2).min(BACKOFF_MAX);
    wait
}

/// `fut`, unless the container is told to stop first.
async fn unless_stopped<T>(
    fut: impl std::future::Future<Output = T>,
    stop: &mut watch::Receiver<Option<tokio::time::Instant>>,
) -> Option<T> {
    tokio::select! {
        v = fut => Some(v),
        _ = stop_requested(stop) => None,
    }
}

/// Resolves when the container is told to stop: with the time its grace period ends (now,
/// if its pod worker is gone).
async fn stop_requested(
    stop: &mut watch::Receiver<Option<tokio::time::Instant>>,
) -> tokio::time::Instant {
    match stop.wait_for(|s| s.is_some()).await {
        Ok(s) => s.unwrap_or_else(tokio::time::Instant::now),
        Err(_) => tokio::time::Instant::now(),
    }
}

/// The image for a container, per its pull policy: from the node's store, or pulled.
async fn obtain_image(
    pc: &PodCtx,
    container: &str,
    image: &str,
    policy: &str,
) -> Result<crate::images::Image, (&'static str, String)> {
    let ctx = &pc.ctx;
    let local = ctx.images.resolve(image);
    match (policy, local) {
        ("Never" | "IfNotPresent", Some(img)) => {
            ctx.events.pod(
                &pc.pod,
                Some(container),
                "Normal",
                "Pulled",
                format!("Container image \"{image}\" already present on machine"),
            );
            Ok(img)
        }
        ("Never", None) => {
            let msg =
                format!("Container image \"{image}\" is not present with pull policy of Never");
            ctx.events.pod(
                &pc.pod,
                Some(container),
                "Warning",
                "ErrImageNeverPull",
                msg.clone(),
            );
            Err(("ErrImageNeverPull", msg))
        }
        _ => {
            ctx.events.pod(
                &pc.pod,
                Some(container),
                "Normal",
                "Pulling",
                format!("Pulling image \"{image}\""),
            );
            let started = Instant::now();
            let auth = pc.registry_auth(image).await;
            match crate::registry::pull(&ctx.images, image, &auth, &ctx.insecure_registries).await {
                Ok(img) => {
                    let size = img.size;
                    let took = started.elapsed().as_secs_f64();
                    ctx.events.pod(&pc.pod, Some(container), "Normal", "Pulled", format!("Successfully pulled image \"{image}\" in {took:.3}s. Image size: {size} bytes."));
                    Ok(img)
                }
                Err(e) => {
                    let msg = format!("Failed to pull image \"{image}\": {e}");
                    ctx.events
                        .pod(&pc.pod, Some(container), "Warning", "Failed", msg.clone());
                    Err(("ErrImagePull", msg))
                }
            }
        }
    }
}

/// A container's status when a worker (re)starts: after an agent restart, a container the
/// status still shows running died with the old agent; it becomes the last state.
fn initial_status(c: &Container, previous: Option<&ContainerStatus>) -> ContainerStatus {
    let running = previous
        .and_then(|p| p.state.as_ref())
        .and_then(|s| s.running.as_ref());
    let (restart_count, last_state) = match (previous, running) {
        (Some(p), Some(r)) => {
            let exit = Exit::killed(Some("the node agent restarted".into()));
            (
                p.restart_count,
                Some(terminated(
                    &exit,
                    r.started_at.clone(),
                    p.container_id.as_deref().unwrap_or_default(),
                )),
            )
        }
        (Some(p), None) => (p.restart_count, p.last_state.clone()),
        (None, _) => (0, None),
    };
    ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone().unwrap_or_default(),
        image_id: String::new(),
        ready: false,
        restart_count,
        last_state,
        state: Some(waiting("ContainerCreating", None)),
        started: Some(false),
        ..Default::default()
    }
}

fn condition(type_: &str, ok: bool, reason: Option<&str>) -> PodCondition {
    PodCondition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.map(str::to_string),
        last_transition_time: Some(now()),
        ..Default::default()
    }
}

/// The pod's sandbox: its volumes, then its network (and address). An error is the
/// event's reason and message.
async fn prepare_sandbox(
    pc: &PodCtx,
    spec: &k8s_openapi::api::core::v1::PodSpec,
) -> Result<(Sandbox, String), (&'static str, String)> {
    let volumes = spec.volumes.as_deref().unwrap_or_default();
    let sandbox = Sandbox::create(&pc.dirs.sandbox, volumes, pc)
        .await
        .map_err(|e| ("FailedMount", e.to_string()))?;
    let node_ip = pc.ctx.node_ip.clone();
    let (sandbox, ip) = if spec.host_network == Some(true) {
        (sandbox, node_ip)
    } else {
        pod_network(pc, spec, sandbox).await?
    };
    let (hostname, host_network) = match spec.host_network {
        Some(true) => (super::node_info::hostname(), true),
        _ => (
            spec.hostname
                .clone()
                .unwrap_or_else(|| pc.name.chars().take(63).collect()),
            false,
        ),
    };
    let aliases = spec
        .host_aliases
        .iter()
        .flatten()
        .map(|a| (a.ip.clone(), a.hostnames.clone().unwrap_or_default()))
        .collect();
    let entries = crate::sandbox::HostsEntries {
        hostname: &hostname,
        pod_ip: &ip,
        aliases,
        host_network,
    };
    let mut sandbox = sandbox;
    // Only processes share a PID namespace: a node without runc has none to share.
    if spec.share_process_namespace == Some(true) && pc.ctx.runtimes.oci.is_some() {
        let dir = pc.dirs.sandbox.clone();
        let made = tokio::task::spawn_blocking(move || {
            crate::sandbox::pause::ensure(&dir, &std::env::current_exe()?)
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
        sandbox.pid_namespace = Some(made.map_err(|e| {
            (
                "FailedCreatePodSandBox",
                format!("Failed to create pod sandbox: the shared PID namespace: {e}"),
            )
        })?);
    }
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
    sandbox.resolver = crate::dns::lookup::Resolver::new(
        &guests,
        crate::dns::CLUSTER_DNS_IP.into(),
        dns.map(|d| d.addr),
    )
    .map(std::sync::Arc::new);
    let resolv = if dns.is_some_and(|d| d.for_pods) {
        guests
    } else {
        crate::dns::resolv::for_pod(spec, &pc.ns, &node_resolv, None)
    };
    sandbox
        .write_etc(&pc.dirs.sandbox, &entries, &resolv.render())
        .map_err(|e| {
            (
                "FailedCreatePodSandBox",
                format!("Failed to create pod sandbox: writing /etc files: {e}"),
            )
        })?;
    Ok((sandbox, ip))
}

/// The pod's own network (or the node's where the node cannot give it one).
async fn pod_network(
    pc: &PodCtx,
    spec: &k8s_openapi::api::core::v1::PodSpec,
    mut sandbox: Sandbox,
) -> Result<(Sandbox, String), (&'static str, String)> {
    let node_ip = pc.ctx.node_ip.clone();
    let mut networks = pc.ctx.networks.clone();
    let ready = networks
        .wait_for(|n| !matches!(n, super::Networks::Waiting))
        .await
        .map(|n| n.clone());
    match ready {
        Ok(super::Networks::Cni(cni)) => {
            let who = crate::sandbox::network::PodRef {
                namespace: &pc.ns,
                name: &pc.name,
                uid: &pc.uid,
            };
            let net = cni
                .setup(&pc.dirs.sandbox, &who, port_mappings(spec))
                .await
                .map_err(|e| {
                    let msg = format!("Failed to create pod sandbox: {e}");
                    ("FailedCreatePodSandBox", msg)
                })?;
            sandbox.network = Network::Pod(Arc::new(PodNamespace::new(net.netns)));
            Ok((sandbox, net.ip))
        }
        Ok(super::Networks::Node { reason }) => {
            let msg = format!(
                "This node cannot give pods a network of their own ({reason}): the pod's containers use the node's network"
            );
            pc.ctx
                .events
                .pod(&pc.pod, None, "Warning", "NodeNetwork", msg);
            Ok((sandbox, node_ip))
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

/// Reports a pod's status: computes it from the containers' states and hands it to the
/// pod's status writer.
struct Reporter {
    host_ip: String,
    /// Known once the sandbox has its network.
    pod_ip: std::sync::Mutex<Option<String>>,
    start: Time,
    restart_policy: String,
    qos_class: Option<String>,
    /// The last conditions reported (their transition times carry over).
    conditions: std::sync::Mutex<Vec<PodCondition>>,
    /// Why the pod failed for good, if the worker ended it (reason, message).
    failure: std::sync::Mutex<Option<(&'static str, String)>>,
    /// Per init container: whether it is a native sidecar.
    sidecars: Vec<bool>,
    /// The status last handed to the writer.
    last: std::sync::Mutex<Option<PodStatus>>,
    slot: Arc<StatusSlot>,
}

impl Reporter {
    /// Hands the writer the status, unless it is the one handed last (the worker reports
    /// after every event, and most change nothing).
    fn report(&self, init: &[ContainerStatus], main: &[ContainerStatus], init_done: bool) {
        let status = self.status(init, main, init_done);
        let mut last = self.last.lock().expect("last status");
        if last.as_ref() == Some(&status) {
            return;
        }
        *last = Some(status.clone());
        self.slot.put(status);
    }

    /// The pod's phase and conditions from its containers' states.
    fn status(
        &self,
        init: &[ContainerStatus],
        main: &[ContainerStatus],
        init_done: bool,
    ) -> PodStatus {
        let (host_ip, start, restart_policy) =
            (&self.host_ip, &self.start, self.restart_policy.as_str());
        let term = |s: &ContainerStatus| {
            s.state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .map(|t| t.exit_code)
        };
        let all_terminated = !main.is_empty() && main.iter().all(|s| term(s).is_some());
        // Sidecars end when the pod does; only regular init containers fail it.
        let init_failed = init
            .iter()
            .zip(&self.sidecars)
            .any(|(s, sidecar)| !sidecar && term(s).is_some_and(|c| c != 0))
            && restart_policy == "Never";
        let phase = if init_failed {
            "Failed"
        } else if all_terminated {
            if main.iter().all(|s| term(s) == Some(0)) {
                "Succeeded"
            } else {
                "Failed"
            }
        } else if init_done
            && main.iter().any(|s| {
                s.state.as_ref().is_some_and(|st| st.running.is_some()) || s.last_state.is_some()
            })
        {
            "Running"
        } else {
            "Pending"
        };
        let ready = phase == "Running" && main.iter().all(|s| s.ready);
        let not_ready = (!ready).then_some(if phase == "Succeeded" || phase == "Failed" {
            "PodCompleted"
        } else {
            "ContainersNotReady"
        });
        let mut conditions = vec![
            condition("PodReadyToStartContainers", true, None),
            condition(
                "Initialized",
                init_done,
                (!init_done).then_some("ContainersNotInitialized"),
            ),
            condition("Ready", ready, not_ready),
            condition("ContainersReady", ready, not_ready),
            condition("PodScheduled", true, None),
        ];
        // Keep transition times of conditions whose status did not change.
        let mut last = self.conditions.lock().expect("conditions");
        for c in conditions.iter_mut() {
            if let Some(old) = last.iter().find(|o| o.type_ == c.type_) {
                if old.status == c.status {
                    c.last_transition_time = old.last_transition_time.clone();
                }
            }
        }
        last.clone_from(&conditions);
        let pod_ip = self.pod_ip.lock().expect("pod ip").clone();
        let failure = self.failure.lock().expect("failure").clone();
        let phase = if failure.is_some() { "Failed" } else { phase };
        let (reason, message) =
            failure.map_or((None, None), |(r, m)| (Some(r.to_string()), Some(m)));
        PodStatus {
            reason,
            message,
            pod_ips: pod_ip
                .clone()
                .map(|ip| vec![k8s_openapi::api::core::v1::PodIP { ip }]),
            pod_ip,
            phase: Some(phase.into()),
            conditions: Some(conditions),
            host_ip: Some(host_ip.into()),
            host_ips: Some(vec![k8s_openapi::api::core::v1::HostIP {
                ip: host_ip.into(),
            }]),
            start_time: Some(start.clone()),
            init_container_statuses: (!init.is_empty()).then(|| init.to_vec()),
            container_statuses: Some(main.to_vec()),
            qos_class: self.qos_class.clone(),
            ..Default::default()
        }
    }
}

/// The latest status not yet written, and a wake-up for the writer. The writer takes the
/// status out, so a steady pod keeps no copy of it.
#[derive(Default)]
struct StatusSlot {
    latest: std::sync::Mutex<Option<PodStatus>>,
    changed: tokio::sync::Notify,
}

impl StatusSlot {
    fn put(&self, status: PodStatus) {
        *self.latest.lock().expect("status slot") = Some(status);
        self.changed.notify_one();
    }

    /// Whether the waiting status still shows a container being created (nothing failed).
    fn creating(&self) -> bool {
        self.latest
            .lock()
            .expect("status slot")
            .as_ref()
            .is_some_and(|s| {
                s.container_statuses.iter().flatten().any(|c| {
                    c.state
                        .as_ref()
                        .and_then(|s| s.waiting.as_ref())
                        .is_some_and(|w| {
                            w.reason.as_deref() == Some("ContainerCreating") && w.message.is_none()
                        })
                })
            })
    }

    fn take(&self) -> Option<PodStatus> {
        self.latest.lock().expect("status slot").take()
    }

    /// Puts back a status whose write failed, unless a newer one is waiting.
    fn restore(&self, status: PodStatus) {
        self.latest
            .lock()
            .expect("status slot")
            .get_or_insert(status);
    }
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
                        st.state = Some(terminated(&Exit::killed(None), run.started_at, &id));
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
        let never = tokio::time::Instant::now() + Duration::from_secs(86400 * 365);
        let event = tokio::select! {
            prepared = async { sandbox_job.as_mut().expect("guarded").await }, if sandbox_job.is_some() => {
                sandbox_job = None;
                match prepared {
                    Ok((sandbox, ip)) => {
                        let _ = pc.sandbox.set(sandbox);
                        let _ = pc.pod_ip.set(ip.clone());
                        *reporter.pod_ip.lock().expect("pod ip") = Some(ip);
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
            _ = tokio::time::sleep_until(sandbox_retry.unwrap_or(never)), if sandbox_retry.is_some() => {
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
            _ = tokio::time::sleep_until(deadline.unwrap_or(never)), if deadline.is_some() && !matches!(life.stage, Stage::Done | Stage::Terminating | Stage::Gone) => {
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

/// How long the first status report waits for more news: a pod whose containers start
/// within it is reported Running in one write instead of ContainerCreating, then Running.
const FIRST_REPORT_DELAY: Duration = Duration::from_millis(20);
/// A failed status write is retried after this, doubling up to the maximum.
const STATUS_RETRY_START: Duration = Duration::from_millis(500);
const STATUS_RETRY_MAX: Duration = Duration::from_secs(10);

/// Writes the pod's status whenever it changes, always the latest (changes made while a
/// write is in flight are merged into the next one).
async fn write_status(api: Api<Pod>, name: String, slot: Arc<StatusSlot>) {
    let mut first = true;
    let mut retry = STATUS_RETRY_START;
    loop {
        slot.changed.notified().await;
        if first {
            // Other news (the pod's address, say) before the containers run does not end
            // the wait.
            let until = tokio::time::Instant::now() + FIRST_REPORT_DELAY;
            while slot.creating() {
                if tokio::time::timeout_at(until, slot.changed.notified())
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
        first = false;
        let Some(status) = slot.take() else {
            continue;
        };
        // Boxed: the request future is large and every pod keeps this task.
        let written = Box::pin(api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "status": &status })),
        ))
        .await;
        match written {
            Ok(_) => retry = STATUS_RETRY_START,
            // The pod is gone: nothing more to report.
            Err(kube::Error::Api(e)) if e.code == 404 => return,
            Err(e) => {
                // Keep it (unless a newer one came) and try again: a status must not be
                // lost because the API server was briefly away.
                tracing::debug!(error = %e, "status update failed; retrying");
                slot.restore(status);
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(STATUS_RETRY_MAX);
                slot.changed.notify_one();
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::RunConfig;

    #[test]
    fn services_give_the_kubelets_variables() {
        let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-api"},
            "spec": {"clusterIP": "10.96.3.4", "ports": [
                {"name": "http", "port": 80, "protocol": "TCP"},
                {"name": "dns", "port": 53, "protocol": "UDP"},
            ]},
        }))
        .unwrap();
        let env: BTreeMap<String, String> = service_env(&svc).into_iter().collect();
        let want: BTreeMap<String, String> = [
            ("WEB_API_SERVICE_HOST", "10.96.3.4"),
            ("WEB_API_SERVICE_PORT", "80"),
            ("WEB_API_SERVICE_PORT_HTTP", "80"),
            ("WEB_API_SERVICE_PORT_DNS", "53"),
            ("WEB_API_PORT", "tcp://10.96.3.4:80"),
            ("WEB_API_PORT_80_TCP", "tcp://10.96.3.4:80"),
            ("WEB_API_PORT_80_TCP_PROTO", "tcp"),
            ("WEB_API_PORT_80_TCP_PORT", "80"),
            ("WEB_API_PORT_80_TCP_ADDR", "10.96.3.4"),
            ("WEB_API_PORT_53_UDP", "udp://10.96.3.4:53"),
            ("WEB_API_PORT_53_UDP_PROTO", "udp"),
            ("WEB_API_PORT_53_UDP_PORT", "53"),
            ("WEB_API_PORT_53_UDP_ADDR", "10.96.3.4"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(env, want);
        let headless: k8s_openapi::api::core::v1::Service = serde_json::from_value(
            serde_json::json!({"metadata": {"name": "h"}, "spec": {"clusterIP": "None", "ports": [{"port": 80}]}}),
        )
        .unwrap();
        assert!(service_env(&headless).is_empty());
    }

    fn container(command: Option<&[&str]>, args: Option<&[&str]>) -> Container {
        let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        Container {
            name: "app".into(),
            command: command.map(own),
            args: args.map(own),
            ..Default::default()
        }
    }

    #[test]
    fn arguments_compose_as_in_kubernetes() {
        let image = RunConfig {
            entrypoint: Some(vec!["/app.wasm".into()]),
            cmd: Some(vec!["--serve".into()]),
            ..Default::default()
        };
        let run = |c: Option<&[&str]>, a: Option<&[&str]>, img: Option<&RunConfig>| {
            argv(&container(c, a), img).join(" ")
        };
        assert_eq!(run(None, None, Some(&image)), "/app.wasm --serve");
        assert_eq!(run(None, Some(&["-v"]), Some(&image)), "/app.wasm -v");
        assert_eq!(
            run(Some(&["/other.wasm"]), None, Some(&image)),
            "/other.wasm"
        );
        assert_eq!(
            run(Some(&["/o.wasm"]), Some(&["x"]), Some(&image)),
            "/o.wasm x"
        );
        let cmd_only = RunConfig {
            cmd: Some(vec!["/app.wasm".into(), "a".into()]),
            ..Default::default()
        };
        assert_eq!(run(None, None, Some(&cmd_only)), "/app.wasm a");
        // Wasm artifacts have no entrypoint: argv[0] is the container's name.
        assert_eq!(
            run(None, Some(&["from", "kubectl"]), None),
            "app from kubectl"
        );
        assert_eq!(run(Some(&["prog"]), Some(&["x"]), None), "prog x");
    }

    #[test]
    fn image_env_is_overridden_by_the_containers() {
        let image = RunConfig {
            env: Some(vec!["A=1".into(), "B=2".into()]),
            ..Default::default()
        };
        let env = image_env(&image, vec![("B".into(), "own".into())]);
        assert_eq!(
            env,
            [
                ("A".to_string(), "1".to_string()),
                ("B".into(), "own".into())
            ]
        );
    }
}
