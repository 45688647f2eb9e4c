//! One worker per pod, the I/O shell of its lifecycle: sandbox, supervisors, status, deletion.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{ConfigMap, Container, ContainerStatus, Pod, PodStatus, Secret};
use kube::api::{Api, DeleteParams, Preconditions};
use tracing::Instrument;

use super::container::{BACKOFF_MAX, BACKOFF_START};
use super::events::PodRef;
use super::latest;
use super::lifecycle::{Action, Event, Lifecycle, Shape, Stage, Which};
use super::pod_sandbox::prepare_sandbox;
use super::spec::source_error;
use super::status::{
    initial_status, now, terminated, waiting, ReportTo, Reporter, StatusWriter, Transitions,
    STATUS_RETRY_MAX, STATUS_RETRY_START,
};
use super::supervisor::{sleep_until, supervise, Mailbox, Update};
use super::{AbortOnDrop, Ctx};
use crate::layout::Layout;
use crate::runtime::{Containers, Exit};
use crate::sandbox::{Sandbox, Sources};

pub struct Worker {
    changes: latest::Sender<PodChange>,
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
        let (tx, rx) = latest::channel(PodChange::of(&pod));
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
#[derive(Clone, Debug)]
pub struct PodDirs {
    pub sandbox: PathBuf,
    pub logs: PathBuf,
    /// The pod's runc bundles (each removed with its container).
    pub containers: PathBuf,
}

impl PodDirs {
    pub fn of(layout: &Layout, pod: &Pod) -> PodDirs {
        let m = &pod.metadata;
        PodDirs::named(
            layout,
            m.namespace.as_deref().unwrap_or_default(),
            m.name.as_deref().unwrap_or_default(),
            m.uid.as_deref().unwrap_or_default(),
        )
    }

    fn named(layout: &Layout, ns: &str, name: &str, uid: &str) -> PodDirs {
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
    /// The pod object (without its status, the scheduler's fields and the metadata in
    /// `APART`), as JSON: what the worker and supervisors
    /// need of it, they parse when they need it. A parsed pod keeps every field of every
    /// container in place, set or not (~4 KiB for one container); its JSON, what is set.
    pod: Box<[u8]>,
    pub(super) resource_version: Option<String>,
    pub(super) ns: String,
    pub(super) name: String,
    pub(super) uid: String,
    pub(super) restart_policy: &'static str,
    /// Set once the sandbox is ready (containers start only then).
    pub(super) sandbox: std::sync::OnceLock<Sandbox>,
    /// Every container the pod starts holds a token of it until it is gone.
    pub(super) containers: Containers,
}

/// The scheduler's part of a pod spec, which a node never reads.
const SCHEDULING: &[&str] = &[
    "affinity",
    "nodeSelector",
    "preemptionPolicy",
    "priority",
    "priorityClassName",
    "schedulerName",
    "schedulingGates",
    "tolerations",
    "topologySpreadConstraints",
];

/// Metadata a worker keeps apart (or never reads).
const APART: &[&str] = &[
    "creationTimestamp",
    "generation",
    "managedFields",
    "name",
    "namespace",
    "resourceVersion",
    "uid",
];

/// What a worker keeps of its pod: its JSON without the scheduling fields and the metadata
/// it keeps apart (half of a small pod: the default tolerations alone take ~200 bytes).
fn kept_json(pod: &Pod) -> Box<[u8]> {
    let mut v = serde_json::to_value(pod).expect("a pod serializes");
    if let Some(spec) = v.get_mut("spec").and_then(|s| s.as_object_mut()) {
        for field in SCHEDULING {
            spec.remove(*field);
        }
    }
    if let Some(meta) = v.get_mut("metadata").and_then(|s| s.as_object_mut()) {
        for field in APART {
            meta.remove(*field);
        }
    }
    serde_json::to_vec(&v)
        .expect("a pod serializes")
        .into_boxed_slice()
}

/// A pod from [`kept_json`] (without the metadata kept apart).
fn parsed(json: &[u8]) -> Pod {
    serde_json::from_slice(json).expect("the pod was serialized")
}

/// Init container or container `which` of `pod` (which has a spec: workers need one).
pub(super) fn container_of(pod: &Pod, which: Which) -> &Container {
    let spec = pod.spec.as_ref().expect("a running pod has a spec");
    match which {
        Which::Init(i) => &spec.init_containers.as_ref().expect("init containers")[i],
        Which::Main(i) => &spec.containers[i],
    }
}

impl PodCtx {
    fn new(ctx: Arc<Ctx>, pod: &Pod, containers: Containers) -> PodCtx {
        let m = &pod.metadata;
        let uid = m.uid.clone().unwrap_or_default();
        PodCtx {
            pod: kept_json(pod),
            resource_version: m.resource_version.clone(),
            ns: m.namespace.clone().unwrap_or_default(),
            name: m.name.clone().unwrap_or_default(),
            uid,
            restart_policy: match pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) {
                Some("OnFailure") => "OnFailure",
                Some("Never") => "Never",
                _ => "Always",
            },
            ctx,
            sandbox: Default::default(),
            containers,
        }
    }

    pub(super) fn sandbox(&self) -> &Sandbox {
        self.sandbox
            .get()
            .expect("containers start once the sandbox is ready")
    }

    /// Where the pod keeps its files (made when needed: a pod keeps no paths).
    pub(super) fn dirs(&self) -> PodDirs {
        PodDirs::named(&self.ctx.layout, &self.ns, &self.name, &self.uid)
    }

    /// The pod object (without its status and the scheduler's fields), parsed; of the
    /// metadata kept apart, name, namespace, uid and resourceVersion are put back.
    pub(super) fn pod(&self) -> Pod {
        let mut pod = parsed(&self.pod);
        let m = &mut pod.metadata;
        m.name = Some(self.name.clone());
        m.namespace = Some(self.ns.clone());
        m.uid = Some(self.uid.clone());
        m.resource_version = self.resource_version.clone();
        pod
    }

    /// The pod, as its events name it.
    pub(super) fn pod_ref(&self) -> PodRef<'_> {
        PodRef {
            namespace: &self.ns,
            name: &self.name,
            uid: &self.uid,
            resource_version: self.resource_version.as_deref(),
        }
    }

    /// Where the pod's status goes.
    fn report_to(&self) -> ReportTo<'_> {
        ReportTo {
            client: &self.ctx.client,
            namespace: &self.ns,
            name: &self.name,
            host_ip: self.ctx.node_ip(),
            restart_policy: self.restart_policy,
            writes: &self.ctx.status_writes,
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

async fn run(
    ctx: Arc<Ctx>,
    pod: Box<Pod>,
    rx: latest::Receiver<PodChange>,
    containers: Containers,
) {
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
    rx: latest::Receiver<PodChange>,
    mut pod: Box<Pod>,
    containers: Containers,
) {
    // The status the pod had (after an agent restart) only seeds the containers' states;
    // the worker keeps the rest of the pod without it.
    let prev = pod.status.take().unwrap_or_default();
    if pod.spec.is_none() {
        return;
    }
    let pc = Arc::new(PodCtx::new(ctx, &pod, containers));
    // A pod deleted while this agent was away: nothing of it may start again.
    if rx.get().deleting {
        return Box::pin(finish_deletion(&pc)).await;
    }
    let mut w = PodRun::new(pc, rx, &pod, prev);
    drop(pod);
    let mut pending = w.life.step(Event::Begin {
        deleting: w.rx.get().deleting,
        finished: w.finished,
    });
    w.report();
    loop {
        for action in std::mem::take(&mut pending) {
            if action == Action::FinishDeletion {
                // Whatever still runs is killed with its supervisor.
                w.supervisors.clear();
                return Box::pin(finish_deletion(&w.pc)).await;
            }
            w.carry_out(action);
        }
        w.report();
        let event = match w.next().await {
            Next::Event(event) => event,
            Next::Act(action) => {
                pending.push(action);
                continue;
            }
            Next::Nothing => continue,
            // The worker is being stopped.
            Next::Stopped => return,
        };
        // Logged by reference before the step takes it: formatted only when debugging.
        tracing::debug!(pod = %w.pc.name, ?event, stage = ?w.life.stage, "pod worker event");
        pending = w.life.step(event);
        tracing::debug!(pod = %w.pc.name, stage = ?w.life.stage, actions = ?pending, "pod worker step");
    }
}

/// A pod worker between events: its lifecycle, its containers' statuses and supervisors,
/// and what it waits on.
struct PodRun {
    pc: Arc<PodCtx>,
    rx: latest::Receiver<PodChange>,
    life: Lifecycle,
    /// The containers' statuses, shared with their supervisors' machines.
    init: Vec<Arc<ContainerStatus>>,
    main: Vec<Arc<ContainerStatus>>,
    init_done: bool,
    /// What containers that outlived an earlier agent were, for adopting them (taken by
    /// their supervisors: a fresh pod keeps nothing here).
    before: BTreeMap<Which, Box<ContainerStatus>>,
    reporter: Reporter,
    /// The pod had ended before this worker began: it keeps the status it ended with.
    finished: bool,
    /// When `activeDeadlineSeconds` runs out.
    deadline: Option<tokio::time::Instant>,
    /// The measuring of a pod with local storage limits (boxed: most pods have none).
    storage: Option<Box<super::storage::Watch>>,
    /// Why the pod is being failed, until it is reported (the deadline, an eviction).
    failing: Option<Box<Failing>>,
    /// Each running supervisor, and the signal that tells its container to stop.
    supervisors: Vec<(
        Which,
        AbortOnDrop<()>,
        latest::Sender<Option<tokio::time::Instant>>,
    )>,
    updates: Arc<Mailbox>,
    /// The sandbox being made, or when to try again, and the next back-off.
    sandbox_job: Option<BoxFuture<'static, Result<Sandbox, (&'static str, String)>>>,
    sandbox_retry: Option<tokio::time::Instant>,
    sandbox_backoff: Duration,
}

/// Why a worker fails its pod: the pod's status reason and message, and the Event's type.
struct Failing {
    reason: &'static str,
    message: String,
    event_type: &'static str,
}

/// What a pod worker's wait ended with.
enum Next {
    Event(Event),
    /// An action of the worker's own (a retry), not the lifecycle's.
    Act(Action),
    /// News that changes nothing in the lifecycle.
    Nothing,
    Stopped,
}

impl PodRun {
    fn new(pc: Arc<PodCtx>, rx: latest::Receiver<PodChange>, pod: &Pod, prev: PodStatus) -> PodRun {
        let spec = pod.spec.as_ref().expect("a running pod has a spec");
        let statuses = |containers: Option<&Vec<Container>>,
                        before: &Option<Vec<ContainerStatus>>| {
            let before = before.iter().flatten();
            containers
                .into_iter()
                .flatten()
                .map(|c| Arc::new(initial_status(c, before.clone().find(|s| s.name == c.name))))
                .collect::<Vec<_>>()
        };
        let init = statuses(spec.init_containers.as_ref(), &prev.init_container_statuses);
        let main = statuses(Some(&spec.containers), &prev.container_statuses);
        let start = prev.start_time.clone().unwrap_or_else(now);
        let sidecars: Vec<bool> = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| c.restart_policy.as_deref() == Some("Always"))
            .collect();
        let life = Lifecycle::new(Shape {
            sidecars: sidecars.clone(),
            mains: spec.containers.len(),
        });
        // Status goes to the API server through one writer that always sends the latest.
        let reporter = Reporter {
            pod_ip: prev.pod_ip.clone(),
            start,
            qos_class: prev.qos_class.clone(),
            conditions: Transitions::of(prev.conditions.as_deref().unwrap_or_default()),
            failure: Default::default(),
            sidecars,
            last: Default::default(),
            writer: StatusWriter::default(),
        };
        let mut w = PodRun {
            init_done: init.is_empty(),
            init,
            main,
            before: adoptable(spec, &prev),
            finished: matches!(prev.phase.as_deref(), Some("Succeeded" | "Failed")),
            reporter,
            life,
            deadline: None,
            storage: super::storage::Limits::of(pod, pc.dirs().clone())
                .map(|l| Box::new(super::storage::Watch::new(l))),
            failing: None,
            supervisors: Vec::new(),
            updates: Default::default(),
            sandbox_job: None,
            sandbox_retry: None,
            sandbox_backoff: BACKOFF_START,
            pc,
            rx,
        };
        w.deadline = w.deadline();
        w
    }

    /// When `activeDeadlineSeconds` (counted from the pod's start, init containers
    /// included; it may change while the pod runs) runs out.
    fn deadline(&self) -> Option<tokio::time::Instant> {
        let secs = self.rx.get().active_deadline_seconds?;
        let elapsed = jiff::Timestamp::now()
            .duration_since(self.reporter.start.0)
            .as_secs()
            .max(0) as u64;
        Some(
            tokio::time::Instant::now()
                + Duration::from_secs((secs.max(0) as u64).saturating_sub(elapsed)),
        )
    }

    /// Hands the writer the pod's status (unless the pod had ended before this worker).
    fn report(&mut self) {
        if !self.finished {
            let to = self.pc.report_to();
            self.reporter
                .report(to, &self.init, &self.main, self.init_done);
        }
    }

    /// Carries out one of the lifecycle's actions (all but the deletion's end).
    fn carry_out(&mut self, action: Action) {
        match action {
            Action::PrepareSandbox => {
                let pc = self.pc.clone();
                self.sandbox_job = Some(Box::pin(async move {
                    let pod = pc.pod();
                    let spec = pod.spec.as_ref().expect("a running pod has a spec");
                    prepare_sandbox(&pc, spec).await
                }));
            }
            Action::RetrySandbox => {
                self.sandbox_retry = Some(tokio::time::Instant::now() + self.sandbox_backoff);
                self.sandbox_backoff = (self.sandbox_backoff * 2).min(BACKOFF_MAX);
            }
            Action::Start(which) => self.start(which),
            Action::Stop { which, graceful } => {
                let grace = match graceful {
                    true => Duration::from_secs(self.rx.get().grace_seconds as u64),
                    false => Duration::ZERO,
                };
                let until = tokio::time::Instant::now() + grace;
                for w in which {
                    if let Some((_, _, stop)) = self.supervisors.iter().find(|s| s.0 == w) {
                        stop.send(Some(until));
                    }
                }
            }
            Action::ReportFailure => self.fail(),
            Action::FinishDeletion => unreachable!("the worker ends the deletion itself"),
        }
    }

    /// Starts container `which`'s supervisor.
    fn start(&mut self, which: Which) {
        if matches!(which, Which::Main(_)) {
            self.init_done = true;
        }
        let status = match which {
            Which::Init(i) => self.init[i].clone(),
            Which::Main(i) => self.main[i].clone(),
        };
        let previous = self.before.remove(&which);
        let (stop, signal) = latest::channel(None);
        let (pc, updates) = (self.pc.clone(), self.updates.clone());
        let task = tokio::spawn(async move {
            let ok = supervise(pc, which, status, previous, updates.clone(), signal).await;
            updates.post(Update::Exited(which, ok));
        });
        self.supervisors.push((which, AbortOnDrop(task), stop));
    }

    /// The pod ran past its deadline, or is evicted: its containers are being killed, and
    /// the status says so at once (their supervisors' own final word follows).
    fn fail(&mut self) {
        let Some(failing) = self.failing.take() else {
            return;
        };
        for st in self.init.iter_mut().chain(self.main.iter_mut()) {
            let Some(run) = st.state.as_ref().and_then(|x| x.running.clone()) else {
                continue;
            };
            let st = Arc::make_mut(st);
            let id = st.container_id.clone().unwrap_or_default();
            st.state = Some(terminated(&Exit::killed(None), run.started_at, &id, now()));
            st.ready = false;
            st.started = Some(false);
        }
        let Failing {
            reason,
            message,
            event_type,
        } = *failing;
        self.reporter.failure = Some((reason, message.clone()));
        let events = &self.pc.ctx.events;
        events.pod(self.pc.pod_ref(), None, event_type, reason, message);
    }

    /// Waits for the next thing that happens to the pod.
    async fn next(&mut self) -> Next {
        let live = !matches!(
            self.life.stage,
            Stage::Done | Stage::Terminating | Stage::Gone
        );
        tokio::select! {
            prepared = async { self.sandbox_job.as_mut().expect("guarded").await }, if self.sandbox_job.is_some() => {
                self.sandbox_job = None;
                Next::Event(self.sandbox_made(prepared))
            }
            () = sleep_until(self.sandbox_retry) => {
                self.sandbox_retry = None;
                Next::Act(Action::PrepareSandbox)
            }
            update = self.updates.next() => self.updated(update),
            changed = self.rx.changed() => {
                if changed.is_err() {
                    return Next::Stopped;
                }
                self.deadline = self.deadline();
                if !self.rx.get().deleting {
                    return Next::Nothing;
                }
                // A sandbox still being made is abandoned (the deletion removes what it
                // made).
                self.sandbox_job = None;
                self.sandbox_retry = None;
                Next::Event(Event::Deleting)
            }
            () = sleep_until(self.deadline), if live => {
                self.deadline = None;
                self.failing = Some(Box::new(Failing {
                    reason: "DeadlineExceeded",
                    message: "Pod was active on the node longer than the specified deadline".into(),
                    event_type: "Normal",
                }));
                Next::Event(Event::Fail)
            }
            // Boxed: its timer would take room in every idle pod's task.
            message = async { Box::pin(self.storage.as_mut().expect("guarded").exceeded()).await }, if live && self.storage.is_some() => {
                self.storage = None;
                tracing::info!(%message, "evicting the pod");
                self.failing = Some(Box::new(Failing {
                    reason: super::status::EVICTED,
                    message,
                    event_type: "Warning",
                }));
                Next::Event(Event::Fail)
            }
        }
    }

    fn sandbox_made(&mut self, made: Result<Sandbox, (&'static str, String)>) -> Event {
        match made {
            Ok(sandbox) => {
                self.reporter.pod_ip = Some(sandbox.ip.clone());
                let _ = self.pc.sandbox.set(sandbox);
                Event::SandboxReady
            }
            Err((reason, msg)) => {
                let events = &self.pc.ctx.events;
                events.pod(self.pc.pod_ref(), None, "Warning", reason, msg.clone());
                for s in self.main.iter_mut() {
                    Arc::make_mut(s).state = Some(waiting("ContainerCreating", Some(msg.clone())));
                }
                Event::SandboxFailed
            }
        }
    }

    /// A supervisor's news: a container's new status, or its end.
    fn updated(&mut self, update: Update) -> Next {
        match update {
            Update::Status(which, st) => {
                let started = st.state.as_ref().is_some_and(|s| s.running.is_some())
                    && st.started == Some(true);
                match which {
                    Which::Init(i) => self.init[i] = st,
                    Which::Main(i) => self.main[i] = st,
                }
                match started {
                    true => Next::Event(Event::Started(which)),
                    false => Next::Nothing,
                }
            }
            Update::Exited(which, ok) => {
                self.supervisors.retain(|s| s.0 != which);
                Next::Event(Event::Exited { which, ok })
            }
        }
    }
}

/// The containers the pod's status (as an earlier agent left it) shows running: only those
/// may be adopted.
fn adoptable(
    spec: &k8s_openapi::api::core::v1::PodSpec,
    prev: &k8s_openapi::api::core::v1::PodStatus,
) -> BTreeMap<Which, Box<ContainerStatus>> {
    let find = |list: &Option<Vec<ContainerStatus>>, name: &str| {
        list.iter()
            .flatten()
            .find(|s| s.name == name && s.state.as_ref().is_some_and(|s| s.running.is_some()))
            .map(|s| Box::new(s.clone()))
    };
    let init = spec.init_containers.iter().flatten().enumerate();
    let init = init.filter_map(|(i, c)| {
        Some((
            Which::Init(i),
            find(&prev.init_container_statuses, &c.name)?,
        ))
    });
    let main = spec.containers.iter().enumerate();
    let main =
        main.filter_map(|(i, c)| Some((Which::Main(i), find(&prev.container_statuses, &c.name)?)));
    init.chain(main).collect()
}

/// Once the containers are gone (they were told to stop), removes the pod's sandbox (its
/// network, then its files) and deletes the pod object for good (grace period 0): as the
/// kubelet, only a pod whose resources are reclaimed goes.
async fn finish_deletion(pc: &PodCtx) {
    let (name, dirs, containers) = (&pc.name, pc.dirs(), &pc.containers);
    let api: Api<Pod> = Api::namespaced(pc.ctx.client.clone(), &pc.ns);
    tracing::debug!(pod = %name, "deletion: waiting for the containers to go");
    containers.gone().await;
    tracing::debug!(pod = %name, "deletion: removing the sandbox");
    dirs.remove().await;
    tracing::debug!(pod = %name, "deletion: deleting the object");
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(pc.uid.clone()),
            resource_version: None,
        }),
        ..Default::default()
    };
    // As the kubelet's status manager, keep at it until the object is gone: a pod whose
    // deletion was lost stays Terminating for good.
    let mut retry = STATUS_RETRY_START;
    loop {
        match api.delete(name, &dp).await {
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
    /// The size of the future an async fn of four (six) arguments returns.
    fn future4<A, B, C, D, F>(_: fn(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }
    fn future6<A, B, C, D, E, G, F>(_: fn(A, B, C, D, E, G) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn a_worker_keeps_what_a_node_reads_of_its_pod() {
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "u-1", "resourceVersion": "7",
                "creationTimestamp": "2026-01-01T00:00:00Z", "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "schedulerName": "default-scheduler", "priority": 0,
                "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists"}],
                "containers": [{"name": "c", "image": "i", "env": [{"name": "A", "value": "1"}]}]}
        }))
        .unwrap();
        let kept = super::kept_json(&pod);
        let text = String::from_utf8(kept.to_vec()).unwrap();
        for gone in [
            "tolerations",
            "schedulerName",
            "priority",
            "u-1",
            "creationTimestamp",
        ] {
            assert!(!text.contains(gone), "{gone} in {text}");
        }
        let back = super::parsed(&kept);
        assert_eq!(back.spec, {
            let mut spec = pod.spec.clone().unwrap();
            (spec.tolerations, spec.scheduler_name, spec.priority) = (None, None, None);
            Some(spec)
        });
        assert_eq!(back.metadata.labels, pod.metadata.labels);
    }

    /// An idle pod keeps its worker's task and a supervisor's per container, each its
    /// future plus tokio's 96 bytes, rounded up to 128 and then to an allocator size class:
    /// a few bytes more and the worker takes 1,536 bytes, the supervisor 1,280.
    #[test]
    fn an_idle_pods_tasks_fit_their_allocations() {
        assert!(future4(super::run) + 96 <= 1280, "{}", future4(super::run));
        let supervise = future6(super::super::supervisor::supervise);
        assert!(supervise + 96 <= 1024, "{supervise}");
    }
}
