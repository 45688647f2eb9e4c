//! A container's supervisor: the I/O shell carrying out its state machine's actions.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{
    Container, ContainerStatus, Lifecycle, LifecycleHandler, Pod, Probe,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tokio::sync::mpsc;

use super::container::{Action, Event, Machine, Policy, Restart};
use super::latest;
use super::lifecycle::Which;
use super::pod::{container_of, PodCtx};
use super::probes::{self, Outcome, ProbeKind};
use super::spec::{self, Resolved};
use super::status::now;
use super::AbortOnDrop;
use crate::layout::{self, ContainerId};
use crate::logs::LogFile;
use crate::runtime::{Exit, KillSwitch, Running, Runtime};
use crate::sandbox::Sources;

/// What a container supervisor reports.
pub(super) enum Update {
    /// Shared with the machine (a channel allocates its slots up front, 32 at a time).
    Status(Which, Arc<ContainerStatus>),
    /// The supervisor ended: the container will not start again (whether it succeeded).
    Exited(Which, bool),
}

/// Where a pod's supervisors leave their news for its worker, in order. Nothing is
/// allocated while no news waits (a channel keeps a block of slots for good).
#[derive(Default)]
pub(super) struct Mailbox {
    news: std::sync::Mutex<std::collections::VecDeque<Update>>,
    posted: tokio::sync::Notify,
}

impl Mailbox {
    pub(super) fn post(&self, update: Update) {
        self.news.lock().expect("mailbox").push_back(update);
        // One reader: a permit is kept for it if it is not waiting yet.
        self.posted.notify_one();
    }

    /// The oldest news, once there is some.
    pub(super) async fn next(&self) -> Update {
        loop {
            {
                let mut news = self.news.lock().expect("mailbox");
                if let Some(update) = news.pop_front() {
                    if news.is_empty() {
                        *news = Default::default();
                    }
                    return update;
                }
            }
            self.posted.notified().await;
        }
    }
}

/// Runs one container's life until it will not restart; reports every change. The result
/// says whether it succeeded.
pub(super) async fn supervise(
    pc: Arc<PodCtx>,
    which: Which,
    status: Arc<ContainerStatus>,
    previous: Option<Box<ContainerStatus>>,
    updates: Arc<Mailbox>,
    mut stop: latest::Receiver<Option<tokio::time::Instant>>,
) -> bool {
    let (mut machine, ports) = {
        // What the container's run needs of its spec; the rest is parsed when needed.
        let pod = pc.pod();
        let c = container_of(&pod, which);
        let policy = policy(&pc, &pod, which);
        let machine = Machine::new(policy, status, tokio::time::Instant::now());
        (machine, probes::NamedPorts::of(c))
    };
    // A container an earlier agent started and that outlived it goes on.
    let adopted = match previous {
        // Boxed, as every rare path: the task keeps its largest state's size for good.
        Some(prev) => Box::pin(adopt(&pc, prev)).await,
        None => None,
    };
    if stop.get().is_some() {
        return false;
    }
    let mut run = Run::default();
    let first = match adopted {
        Some((running, prev, runtime, cid)) => {
            let started = prev
                .state
                .as_ref()
                .and_then(|s| s.running.as_ref())
                .and_then(|r| r.started_at.clone())
                .unwrap_or_else(now);
            let log_path = layout::run_log(&pc.dirs().logs, &prev.name, prev.restart_count).into();
            let run_id = cid.run_id().to_string();
            run.begin(&pc, running, runtime.name(), run_id, log_path);
            Event::Adopted {
                status: prev,
                started,
            }
        }
        None => Event::Begin,
    };
    let mut actions = machine.step(first, tokio::time::Instant::now());
    loop {
        for action in std::mem::take(&mut actions) {
            if let Action::Report = action {
                let status = machine.status().clone();
                updates.post(Update::Status(which, status));
            } else {
                run.carry_out(action, &pc, which, &machine.status().name, &ports);
            }
        }
        if let Some(ok) = machine.done() {
            return ok;
        }
        let timer = machine.timer();
        let event = tokio::select! {
            made = some(&mut run.creating) => {
                run.creating = None;
                match made {
                    Ok(made) => {
                        run.begin(&pc, made.running, made.runtime, made.run_id, made.log_path);
                        Event::Created {
                            container_id: made.container_id,
                            image: made.image,
                            started: made.started,
                        }
                    }
                    Err(f) => Event::CreateFailed {
                        reason: f.reason,
                        message: f.message,
                        image: f.image,
                    },
                }
            }
            exit = some(&mut run.exit) => {
                run.end(&pc);
                Event::Exited { exit, at: now() }
            }
            outcome = some(&mut run.hook) => {
                run.hook = None;
                Event::HookDone(outcome)
            }
            Some(r) = probe_result(&mut run.probes) => Event::Probe {
                kind: r.kind,
                outcome: r.outcome,
                verdict: r.verdict,
            },
            until = stop_requested(&mut stop), if machine.heeds_stop() => {
                Event::StopRequested { until }
            }
            () = sleep_until(timer) => Event::Timer,
        };
        let name = &machine.status().name;
        tracing::debug!(container = %name, ?event, state = ?machine.state(), "container event");
        actions = machine.step(event, tokio::time::Instant::now());
    }
}

/// What the machine needs of container `which`'s spec.
fn policy(pc: &PodCtx, pod: &Pod, which: Which) -> Policy {
    let c = container_of(pod, which);
    let init = matches!(which, Which::Init(_));
    // A native sidecar restarts whatever the pod's policy says.
    let sidecar = init && c.restart_policy.as_deref() == Some("Always");
    let restart = match sidecar {
        true => Restart::Always,
        false => Restart::of(pc.restart_policy),
    };
    let hooks = c.lifecycle.as_ref();
    let grace = c
        .liveness_probe
        .as_ref()
        .and_then(|p| p.termination_grace_period_seconds)
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(30)
        .max(0) as u64;
    Policy {
        restart,
        init: init && !sidecar,
        startup_probe: c.startup_probe.is_some(),
        readiness_probe: c.readiness_probe.is_some(),
        post_start: hooks.is_some_and(|l| l.post_start.is_some()),
        pre_stop: hooks.is_some_and(|l| l.pre_stop.is_some()),
        probe_grace: Duration::from_secs(grace),
        pod: pc.pod_id(),
    }
}

/// `f`'s output once it has one; never, if there is no `f`.
async fn some<F: std::future::Future + Unpin>(f: &mut Option<F>) -> F::Output {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// Until `at`; never, without one. The timer is boxed: a task waiting on this keeps a
/// pointer, not a timer, while it has no deadline (an idle pod's worker and supervisors).
pub(super) async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => Box::pin(tokio::time::sleep_until(at)).await,
        None => std::future::pending().await,
    }
}

async fn probe_result(probes: &mut Option<Box<ProbeSet>>) -> Option<ProbeResult> {
    match probes {
        Some(p) => p.results.recv().await,
        None => std::future::pending().await,
    }
}

/// Resolves when the container is told to stop: with the time its grace period ends (now,
/// if its pod worker is gone).
async fn stop_requested(
    stop: &mut latest::Receiver<Option<tokio::time::Instant>>,
) -> tokio::time::Instant {
    match stop.wait_for(|s| s.is_some()).await {
        Ok(s) => s.unwrap_or_else(tokio::time::Instant::now),
        Err(_) => tokio::time::Instant::now(),
    }
}

/// The I/O of a container's current run: what its supervisor waits on and signals.
#[derive(Default)]
struct Run {
    /// The container being made.
    creating: Option<BoxFuture<'static, Result<Made, Failed>>>,
    /// The running container's end (dropping it kills the container).
    exit: Option<BoxFuture<'static, Exit>>,
    terminate: Option<KillSwitch>,
    kill: Option<KillSwitch>,
    /// Its runtime and run ID (what its hooks and probes reach is made from them).
    running: Option<(&'static str, String)>,
    /// Its log, while the container writes it.
    log_path: Option<Arc<Path>>,
    /// The hook under way (postStart or preStop).
    hook: Option<BoxFuture<'static, Outcome>>,
    /// Boxed: most containers have none.
    probes: Option<Box<ProbeSet>>,
}

impl Run {
    /// A container runs (made now, or adopted): its end, its signals, its probes' target.
    fn begin(
        &mut self,
        pc: &PodCtx,
        mut running: Box<dyn Running>,
        runtime: &'static str,
        run_id: String,
        log_path: Arc<Path>,
    ) {
        pc.ctx
            .active_logs
            .lock()
            .expect("active logs")
            .insert(log_path.clone(), runtime);
        self.log_path = Some(log_path);
        self.terminate = Some(running.terminate_switch());
        self.kill = Some(running.kill_switch());
        self.exit = Some(Box::pin(async move { running.wait().await }));
        self.running = Some((runtime, run_id));
    }

    /// What the running container's hooks and probes reach (made when one runs: most
    /// containers have neither).
    fn target(&self, pc: &PodCtx, ports: &probes::NamedPorts) -> Option<probes::Target> {
        let (runtime, run_id) = self.running.clone()?;
        let ctx = pc.ctx.clone();
        let exec: probes::Exec = Arc::new(move |argv: Vec<String>| {
            let (ctx, run_id) = (ctx.clone(), run_id.clone());
            Box::pin(async move {
                match ctx.runtimes.named(runtime) {
                    Some(rt) => rt.exec(&run_id, &argv, false, false).await,
                    None => Err(crate::runtime::RuntimeError::Exec(format!(
                        "no {runtime} runtime"
                    ))),
                }
            })
        });
        Some(probes::Target {
            ip: pc
                .sandbox
                .get()
                .map_or_else(|| pc.ctx.node_ip().to_string(), |s| s.ip.clone()),
            ports: ports.clone(),
            exec,
        })
    }

    /// The container ended: nothing of its run is waited on or signalled any more.
    fn end(&mut self, pc: &PodCtx) {
        if let Some(path) = self.log_path.take() {
            pc.ctx
                .active_logs
                .lock()
                .expect("active logs")
                .remove(&path);
        }
        *self = Run::default();
    }

    /// Carries out `action` (all but reports, which the supervisor sends).
    fn carry_out(
        &mut self,
        action: Action,
        pc: &Arc<PodCtx>,
        which: Which,
        name: &str,
        ports: &probes::NamedPorts,
    ) {
        // The hooks and probes to run are parsed from the pod when run.
        let hook = |pick: fn(&Lifecycle) -> Option<&LifecycleHandler>| {
            let pod = pc.pod();
            container_of(&pod, which)
                .lifecycle
                .as_ref()
                .and_then(pick)
                .cloned()
        };
        match action {
            Action::Create { run } => {
                self.creating = Some(Box::pin(create(pc.clone(), which, run)));
            }
            Action::Report => {}
            Action::Record {
                type_,
                reason,
                message,
            } => pc
                .ctx
                .events
                .pod(pc.pod_ref(), Some(name), type_, reason, message),
            Action::RunPostStart => {
                let hook = hook(|l| l.post_start.as_ref());
                let target = self.target(pc, ports);
                self.hook = run_hook(hook, target, Duration::from_secs(24 * 3600));
            }
            Action::RunPreStop { until } => {
                let hook = hook(|l| l.pre_stop.as_ref());
                let budget = until.saturating_duration_since(tokio::time::Instant::now());
                self.hook = run_hook(hook, self.target(pc, ports), budget);
            }
            Action::CancelHook => self.hook = None,
            Action::StartProbes(kinds) => {
                let Some(target) = self.target(pc, ports) else {
                    return;
                };
                let pod = pc.pod();
                let c = container_of(&pod, which);
                // Most containers have no probes: no channel for them either.
                for probe in kinds.into_iter().filter_map(|k| Some((k, k.of(c)?))) {
                    let set = self.probes.get_or_insert_with(|| Box::new(ProbeSet::new()));
                    set.start(probe, &target);
                }
            }
            Action::StopProbe(kind) => {
                if let Some(set) = self.probes.as_mut() {
                    set.stop(kind);
                }
            }
            Action::StopProbes => self.probes = None,
            Action::Terminate => self.terminate.iter().for_each(KillSwitch::kill),
            Action::Kill => self.kill.iter().for_each(KillSwitch::kill),
        }
    }
}

/// The hook to run, if there is one and the container runs.
fn run_hook(
    hook: Option<k8s_openapi::api::core::v1::LifecycleHandler>,
    target: Option<probes::Target>,
    budget: Duration,
) -> Option<BoxFuture<'static, Outcome>> {
    let (hook, target) = (hook?, target?);
    Some(Box::pin(async move {
        probes::run_hook(&hook, &target, budget).await
    }))
}

/// A container made: it runs.
struct Made {
    running: Box<dyn Running>,
    container_id: String,
    runtime: &'static str,
    run_id: String,
    /// Reference, and what it resolved to.
    image: (String, String),
    started: Time,
    /// Shared with the agent's set of logs being written.
    log_path: Arc<Path>,
}

/// Why a container could not be made: the kubelet's reason and message.
struct Failed {
    reason: &'static str,
    message: String,
    /// Reference, and what it resolved to, if the image was found.
    image: Option<(String, String)>,
}

/// Makes container `which` as run `run`: its image (per its pull policy), its runtime, its
/// environment and mounts, then the start.
async fn create(pc: Arc<PodCtx>, which: Which, run: i32) -> Result<Made, Failed> {
    let pod = pc.pod();
    let c = container_of(&pod, which);
    let image = c.image.clone().unwrap_or_default();
    let policy = c
        .image_pull_policy
        .clone()
        .unwrap_or_else(|| "IfNotPresent".into());
    let img = Box::pin(obtain_image(&pc, &pod, &c.name, &image, &policy))
        .await
        .map_err(|(reason, message)| Failed {
            reason,
            message,
            image: None,
        })?;
    let class = pod
        .spec
        .as_ref()
        .and_then(|s| s.runtime_class_name.as_deref());
    let runtime = pc
        .ctx
        .runtimes
        .for_image(&img, class)
        .map_err(|message| Failed {
            reason: "CreateContainerError",
            message,
            image: None,
        })?;
    let image_id = format!(
        "{}@{}",
        image.split('@').next().unwrap_or(&image),
        img.digest
    );
    let resolved = (image, image_id);
    let fail = |reason, message| Failed {
        reason,
        message,
        image: Some(resolved.clone()),
    };
    // The environment, then the mounts (a subPathExpr expands with it).
    let env = Box::pin(pc.env(&pod, c))
        .await
        .map_err(|m| fail("CreateContainerConfigError", m))?;
    let mounts = pc
        .sandbox()
        .mounts(c, &env)
        .map_err(|e| fail("CreateContainerConfigError", e.to_string()))?;
    let run_id = layout::run_id(&pc.uid, &c.name, run);
    let log_path: Arc<Path> = layout::run_log(&pc.dirs().logs, &c.name, run).into();
    layout::prune_runs(&pc.dirs().logs, &c.name, run);
    let log = LogFile::new(&log_path, pc.ctx.log_rotation);
    let parts = Resolved {
        run_id: run_id.clone(),
        env,
        mounts,
        log,
        alive: pc.containers.token(),
    };
    let spec = spec::container_spec(&pod, c, &img, pc.sandbox(), parts);
    let container_id = ContainerId::new(runtime.name(), &run_id).to_string();
    let started = now();
    let active = &pc.ctx.active_logs;
    (active.lock().expect("active logs")).insert(log_path.clone(), runtime.name());
    let running = runtime.start(spec).await.map_err(|e| {
        active.lock().expect("active logs").remove(&log_path);
        let reason = match e {
            crate::runtime::RuntimeError::Config(_) => "CreateContainerConfigError",
            _ => "CreateContainerError",
        };
        fail(reason, e.to_string())
    })?;
    Ok(Made {
        running,
        container_id,
        runtime: runtime.name(),
        run_id,
        image: resolved,
        started,
        log_path,
    })
}

/// A probe run's result, and what it makes of the probe's verdict.
struct ProbeResult {
    kind: ProbeKind,
    outcome: Outcome,
    verdict: probes::Verdict,
}

/// The probe loops of a running container (they stop when dropped) and their results.
struct ProbeSet {
    loops: Vec<(ProbeKind, AbortOnDrop<()>)>,
    tx: mpsc::Sender<ProbeResult>,
    results: mpsc::Receiver<ProbeResult>,
}

impl ProbeSet {
    fn new() -> ProbeSet {
        let (tx, results) = mpsc::channel(8);
        ProbeSet {
            loops: Vec::new(),
            tx,
            results,
        }
    }

    /// Starts probing with a container's probe of `kind`: after its initial delay, every
    /// period, each run's result sent to the set.
    fn start(&mut self, (kind, probe): (ProbeKind, &Probe), target: &probes::Target) {
        let (probe, target, tx) = (probe.clone(), target.clone(), self.tx.clone());
        let task = tokio::spawn(async move {
            let mut prober = probes::Prober::new(probes::Timing::of(&probe));
            tokio::time::sleep(prober.timing.initial_delay).await;
            loop {
                let outcome = probes::run(&probe, &target, prober.timing.timeout).await;
                let verdict = prober.record(outcome.clone());
                let result = ProbeResult {
                    kind,
                    outcome,
                    verdict,
                };
                if tx.send(result).await.is_err() {
                    return;
                }
                tokio::time::sleep(prober.timing.period).await;
            }
        });
        self.loops.push((kind, AbortOnDrop(task)));
    }

    fn stop(&mut self, kind: ProbeKind) {
        self.loops.retain(|(k, _)| *k != kind);
    }
}

/// A container the pod's status shows running under an earlier agent, if its runtime
/// still has it (runc containers outlive the agent; Wasm guests do not).
async fn adopt(pc: &PodCtx, prev: Box<ContainerStatus>) -> Option<Adopted<'_>> {
    prev.state.as_ref()?.running.as_ref()?;
    let id: ContainerId = prev.container_id.as_deref()?.parse().ok()?;
    if !id.is_run_of(&pc.uid, &prev.name) {
        tracing::warn!(container = %prev.name, %id, "not adopting a container of another pod");
        return None;
    }
    let runtime = pc.ctx.runtimes.of(&id)?;
    let running = runtime.adopt(id.run_id(), pc.containers.token()).await?;
    tracing::info!(container = %prev.name, %id, "adopted a running container");
    Some((running, prev, runtime, id))
}

/// An adopted container, its status, the runtime that runs it and its ID there.
type Adopted<'a> = (
    Box<dyn Running>,
    Box<ContainerStatus>,
    &'a dyn Runtime,
    ContainerId,
);

/// The image for a container, per its pull policy: from the node's store, or pulled.
async fn obtain_image(
    pc: &PodCtx,
    pod: &Pod,
    container: &str,
    image: &str,
    policy: &str,
) -> Result<crate::images::Image, (&'static str, String)> {
    let ctx = &pc.ctx;
    let local = ctx.images.resolve(image);
    match (policy, local) {
        ("Never" | "IfNotPresent", Some(img)) => {
            ctx.events.pod(
                pc.pod_ref(),
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
                pc.pod_ref(),
                Some(container),
                "Warning",
                "ErrImageNeverPull",
                msg.clone(),
            );
            Err(("ErrImageNeverPull", msg))
        }
        _ => {
            ctx.events.pod(
                pc.pod_ref(),
                Some(container),
                "Normal",
                "Pulling",
                format!("Pulling image \"{image}\""),
            );
            let started = Instant::now();
            let auth = pc.registry_auth(pod, image).await;
            match crate::registry::pull(&ctx.images, image, &auth, &ctx.pull).await {
                Ok(img) => {
                    let size = img.size;
                    let took = started.elapsed().as_secs_f64();
                    ctx.events.pod(pc.pod_ref(), Some(container), "Normal", "Pulled", format!("Successfully pulled image \"{image}\" in {took:.3}s. Image size: {size} bytes."));
                    Ok(img)
                }
                Err(e) => {
                    let msg = format!("Failed to pull image \"{image}\": {e}");
                    ctx.events.pod(
                        pc.pod_ref(),
                        Some(container),
                        "Warning",
                        "Failed",
                        msg.clone(),
                    );
                    Err(("ErrImagePull", msg))
                }
            }
        }
    }
}

impl PodCtx {
    /// Environment for a container: the Services' variables (unless the pod turns service
    /// links off; the `kubernetes` Service's always), then `envFrom`, then `env` (values,
    /// and configMap, secret and field references): later ones win.
    pub(super) async fn env(
        &self,
        pod: &Pod,
        c: &Container,
    ) -> Result<Vec<(String, String)>, String> {
        let links = pod.spec.as_ref().and_then(|s| s.enable_service_links) != Some(false);
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
        let mut env: Vec<(String, String)> = services
            .values()
            .flat_map(|s| spec::service_env(s))
            .collect();
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
                        match spec::referenced(
                            "ConfigMap",
                            &self.ns,
                            &r.name,
                            &r.key,
                            r.optional,
                            found,
                        )? {
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
                        match spec::referenced(
                            "Secret", &self.ns, &r.name, &r.key, r.optional, found,
                        )? {
                            Some(v) => v,
                            None => continue,
                        }
                    } else if let Some(f) = &src.field_ref {
                        let pod_ip = self.sandbox.get().map(|s| s.ip.as_str());
                        spec::field(
                            pod,
                            &f.field_path,
                            pod_ip.unwrap_or_default(),
                            &self.ctx.node_ip(),
                        )
                    } else {
                        String::new()
                    }
                }
            };
            set(&mut env, e.name.clone(), value);
        }
        Ok(env)
    }

    /// Registry credentials from the pod's `imagePullSecrets` (docker config JSON).
    pub(super) async fn registry_auth(
        &self,
        pod: &Pod,
        image: &str,
    ) -> oci_client::secrets::RegistryAuth {
        let registry = oci_client::Reference::try_from(image)
            .map(|r| r.registry().to_string())
            .unwrap_or_default();
        for s in pod
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
