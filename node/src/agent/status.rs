//! A pod's status: phase and conditions as pure functions, and the one status writer.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus,
    Pod, PodCondition, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};

use crate::runtime::Exit;

pub fn now() -> Time {
    Time(jiff::Timestamp::from_second(jiff::Timestamp::now().as_second()).expect("now"))
}

pub fn waiting(reason: &str, message: Option<String>) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.into()),
            message,
        }),
        ..Default::default()
    }
}

/// How a container ended (at `finished`).
pub fn terminated(
    exit: &Exit,
    started: Option<Time>,
    container_id: &str,
    finished: Time,
) -> ContainerState {
    ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code: exit.code,
            reason: Some(exit.reason.into()),
            message: exit.message.clone(),
            started_at: started,
            finished_at: Some(finished),
            container_id: Some(container_id.into()),
            signal: None,
        }),
        ..Default::default()
    }
}

/// A container's status when a worker (re)starts: after an agent restart, a container the
/// status still shows running died with the old agent; it becomes the last state.
pub fn initial_status(c: &Container, previous: Option<&ContainerStatus>) -> ContainerStatus {
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
                    now(),
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

fn condition(type_: &str, ok: bool, reason: Option<&str>, now: &Time) -> PodCondition {
    PodCondition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.map(str::to_string),
        last_transition_time: Some(now.clone()),
        ..Default::default()
    }
}

/// The reason of a pod the agent evicts (the kubelet's).
pub const EVICTED: &str = "Evicted";

/// Reports a pod's status: computes it from the containers' states and hands it to the
/// pod's status writer.
pub struct Reporter {
    /// Known once the sandbox has its network.
    pub pod_ip: Option<String>,
    pub start: Time,
    pub qos_class: Option<String>,
    /// The conditions last reported (their transition times carry over).
    pub conditions: Transitions,
    /// Why the pod failed for good, if the worker ended it (reason, message).
    pub failure: Option<(&'static str, String)>,
    /// Per init container: whether it is a native sidecar.
    pub sidecars: Vec<bool>,
    /// A digest of the status last handed to the writer (most reports change nothing).
    pub last: Option<u64>,
    pub writer: StatusWriter,
}

/// The pod a reporter's statuses are for, as its worker knows it (the reporter keeps no
/// copy of it).
pub struct ReportTo<'a> {
    pub client: &'a kube::Client,
    pub namespace: &'a str,
    pub name: &'a str,
    pub host_ip: Arc<str>,
    pub restart_policy: &'a str,
    /// The agent's permits for status writes in flight.
    pub writes: &'a Arc<tokio::sync::Semaphore>,
}

impl Reporter {
    /// Hands the writer the status, unless it is the one handed last (the worker reports
    /// after every event, and most change nothing).
    pub fn report(
        &mut self,
        to: ReportTo<'_>,
        init: &[Arc<ContainerStatus>],
        main: &[Arc<ContainerStatus>],
        init_done: bool,
    ) {
        let status = Pending::of(&self.status(&to, init, main, init_done));
        let digest = digest(&status.json);
        if self.last.replace(digest) == Some(digest) {
            return;
        }
        self.writer.put(&to, status);
    }

    /// The pod's phase and conditions from its containers' states.
    fn status(
        &mut self,
        to: &ReportTo<'_>,
        init: &[Arc<ContainerStatus>],
        main: &[Arc<ContainerStatus>],
        init_done: bool,
    ) -> PodStatus {
        let copies = |l: &[Arc<ContainerStatus>]| l.iter().map(|s| (**s).clone()).collect();
        let (init, main): (Vec<_>, Vec<_>) = (copies(init), copies(main));
        let (host_ip, start) = (&*to.host_ip, &self.start);
        let phase = phase(&init, &main, &self.sidecars, to.restart_policy, init_done);
        let mut conditions = conditions(phase, &main, init_done, &self.conditions, &now());
        let failure = self.failure.clone();
        if let Some((EVICTED, message)) = &failure {
            // The kubelet marks its evictions as disruptions.
            conditions.push(PodCondition {
                type_: "DisruptionTarget".into(),
                status: "True".into(),
                reason: Some("TerminationByKubelet".into()),
                message: Some(message.clone()),
                last_transition_time: Some(
                    self.conditions
                        .since("DisruptionTarget", true)
                        .unwrap_or_else(now),
                ),
                ..Default::default()
            });
        }
        self.conditions = Transitions::of(&conditions);
        let pod_ip = self.pod_ip.clone();
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
            init_container_statuses: (!init.is_empty()).then_some(init),
            container_statuses: Some(main),
            qos_class: self.qos_class.clone(),
            ..Default::default()
        }
    }
}

/// A digest of a status's JSON: what a reporter keeps instead of a copy.
fn digest(json: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut d = std::collections::hash_map::DefaultHasher::new();
    json.hash(&mut d);
    d.finish()
}

/// The pod's phase from its containers' states (`sidecars`: per init container, whether
/// it is a native sidecar).
pub fn phase(
    init: &[ContainerStatus],
    main: &[ContainerStatus],
    sidecars: &[bool],
    restart_policy: &str,
    init_done: bool,
) -> &'static str {
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
        .zip(sidecars)
        .any(|(s, sidecar)| !sidecar && term(s).is_some_and(|c| c != 0))
        && restart_policy == "Never";
    // As the kubelet's getPhase: a sidecar still running keeps the pod Running after its
    // main containers ended, until it is stopped too.
    let sidecar_running = init
        .iter()
        .zip(sidecars)
        .any(|(s, sidecar)| *sidecar && s.state.as_ref().is_some_and(|st| st.running.is_some()));
    if init_failed {
        "Failed"
    } else if all_terminated && sidecar_running {
        "Running"
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
    }
}

/// The conditions a pod worker reports, in order.
const CONDITIONS: [&str; 6] = [
    "PodReadyToStartContainers",
    "Initialized",
    "Ready",
    "ContainersReady",
    "PodScheduled",
    "DisruptionTarget",
];

/// Of each of the pod's conditions (in [`CONDITIONS`] order), whether it held when last
/// reported and since when: all that carries over from one report to the next.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Transitions([Option<(bool, i64)>; 6]);

impl Transitions {
    /// (Times in whole seconds, as the API carries them.)
    pub fn of(conditions: &[PodCondition]) -> Transitions {
        Transitions(CONDITIONS.map(|type_| {
            let c = conditions.iter().find(|c| c.type_ == type_)?;
            Some((
                c.status == "True",
                c.last_transition_time.as_ref()?.0.as_second(),
            ))
        }))
    }

    fn since(&self, type_: &str, holds: bool) -> Option<Time> {
        let i = CONDITIONS.iter().position(|t| *t == type_)?;
        let (_, secs) = self.0[i].filter(|(h, _)| *h == holds)?;
        jiff::Timestamp::from_second(secs).ok().map(Time)
    }
}

/// The pod's conditions in `phase`; those whose status did not change since `last` keep
/// their transition time, the others changed `now`.
pub fn conditions(
    phase: &str,
    main: &[ContainerStatus],
    init_done: bool,
    last: &Transitions,
    now: &Time,
) -> Vec<PodCondition> {
    let ready = phase == "Running" && main.iter().all(|s| s.ready);
    let not_ready = (!ready).then_some(if phase == "Succeeded" || phase == "Failed" {
        "PodCompleted"
    } else {
        "ContainersNotReady"
    });
    // Each condition's (holds, reason if not), in `CONDITIONS` order.
    let initialized = (
        init_done,
        (!init_done).then_some("ContainersNotInitialized"),
    );
    let states = [
        (true, None),
        initialized,
        (ready, not_ready),
        (ready, not_ready),
        (true, None),
    ];
    let mut conditions: Vec<PodCondition> = CONDITIONS
        .iter()
        .zip(states)
        .map(|(type_, (ok, reason))| condition(type_, ok, reason, now))
        .collect();
    for c in conditions.iter_mut() {
        if let Some(since) = last.since(&c.type_, c.status == "True") {
            c.last_transition_time = Some(since);
        }
    }
    conditions
}

/// The pod's status on its way to the API server: the latest one not yet written, and the
/// writer task that sends it, which exists only while there is something to send (an idle
/// pod keeps neither a status copy nor a task for it).
#[derive(Default)]
pub struct StatusWriter {
    slot: Arc<StatusSlot>,
}

#[derive(Default)]
struct StatusSlot {
    state: std::sync::Mutex<SlotState>,
    /// Wakes a writer holding back the first report.
    changed: tokio::sync::Notify,
}

/// A status on its way, as JSON: a fraction of a parsed status's size, which matters when a
/// burst of pods' statuses waits for the API server.
struct Pending {
    json: Box<str>,
    /// It shows a container still being created (and nothing failed).
    creating: bool,
}

impl Pending {
    fn of(status: &PodStatus) -> Pending {
        let creating = status.container_statuses.iter().flatten().any(|c| {
            c.state
                .as_ref()
                .and_then(|s| s.waiting.as_ref())
                .is_some_and(|w| {
                    w.reason.as_deref() == Some("ContainerCreating") && w.message.is_none()
                })
        });
        Pending {
            json: serde_json::to_string(status)
                .expect("a status serializes")
                .into_boxed_str(),
            creating,
        }
    }
}

#[derive(Default)]
struct SlotState {
    /// Most of the time there is none to write.
    latest: Option<Pending>,
    /// The writer at work, if any (it clears this as it ends).
    writer: Option<tokio::task::AbortHandle>,
    /// Whether a status was ever written (the first one may wait for more news).
    reported: bool,
    /// The pod is gone, or its worker is: nothing more is written.
    closed: bool,
}

impl StatusWriter {
    /// Sends `status` as soon as the writer can (a newer one replaces it if not sent yet).
    fn put(&self, to: &ReportTo<'_>, status: Pending) {
        let mut st = self.slot.state.lock().expect("status slot");
        if st.closed {
            return;
        }
        st.latest = Some(status);
        if st.writer.is_none() {
            let api = Api::namespaced(to.client.clone(), to.namespace);
            let (slot, writes) = (self.slot.clone(), to.writes.clone());
            let task = write_status(api, to.name.to_string(), slot, writes);
            // Stored before the task can end: it clears it under the same lock.
            st.writer = Some(tokio::spawn(task).abort_handle());
        }
        drop(st);
        self.slot.changed.notify_one();
    }
}

impl Drop for StatusWriter {
    /// The pod's worker is gone: so is its writer.
    fn drop(&mut self) {
        let mut st = self.slot.state.lock().expect("status slot");
        st.closed = true;
        if let Some(w) = st.writer.take() {
            w.abort();
        }
    }
}

impl StatusSlot {
    /// Whether the waiting status still shows a container being created (nothing failed).
    fn creating(&self) -> bool {
        let st = self.state.lock().expect("status slot");
        st.latest.as_ref().is_some_and(|p| p.creating)
    }

    /// The status to write next; none: the writer ends (and says so, under the lock `put`
    /// takes, so that a status put meanwhile gets a new writer).
    fn take(&self) -> Option<Pending> {
        let mut st = self.state.lock().expect("status slot");
        let next = st.latest.take();
        if next.is_none() {
            st.writer = None;
        }
        next
    }

    /// Whether this is the first status the pod reports (marks it reported).
    fn first(&self) -> bool {
        !std::mem::replace(&mut self.state.lock().expect("status slot").reported, true)
    }

    /// Puts back a status whose write failed, unless a newer one is waiting.
    fn restore(&self, status: Pending) {
        let mut st = self.state.lock().expect("status slot");
        st.latest.get_or_insert(status);
    }

    /// The pod is gone: the writer ends, and no other starts.
    fn close(&self) {
        let mut st = self.state.lock().expect("status slot");
        st.closed = true;
        st.latest = None;
        st.writer = None;
    }
}

/// How long the first status report waits for more news: a pod whose containers start
/// within it is reported Running in one write instead of ContainerCreating, then Running.
const FIRST_REPORT_DELAY: Duration = Duration::from_millis(20);
/// Status writes an agent has in flight at once. More wait, their statuses coalescing (as
/// the kubelet's status manager, which writes one at a time): a burst of pod starts
/// otherwise holds a request, its body and an HTTP/2 stream per pod until the API server
/// catches up.
pub const MAX_STATUS_WRITES: usize = 16;
/// A failed status write is retried after this, doubling up to the maximum.
pub const STATUS_RETRY_START: Duration = Duration::from_millis(500);
pub const STATUS_RETRY_MAX: Duration = Duration::from_secs(10);

/// Writes the pod's status until there is none left to write, always the latest (a status
/// put while a write is in flight or waiting replaces the one waiting).
async fn write_status(
    api: Api<Pod>,
    name: String,
    slot: Arc<StatusSlot>,
    writes: Arc<tokio::sync::Semaphore>,
) {
    if slot.first() {
        // Other news (the pod's address, say) before the containers run does not end the
        // wait.
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
    let mut retry = STATUS_RETRY_START;
    loop {
        // Taken once a write may go: until then, newer statuses replace it.
        let Ok(permit) = writes.acquire().await else {
            return;
        };
        let Some(status) = slot.take() else {
            return;
        };
        let body: serde_json::Value =
            serde_json::from_str(&status.json).expect("the status was serialized");
        // Boxed: the request future is large.
        let written = Box::pin(api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "status": body })),
        ))
        .await;
        // Not held while backing off: a failing write waits without stopping the others.
        drop(permit);
        match written {
            Ok(_) => retry = STATUS_RETRY_START,
            // The pod is gone: nothing more to report.
            Err(kube::Error::Api(e)) if e.code == 404 => return slot.close(),
            Err(e) => {
                // Keep it (unless a newer one came) and try again: a status must not be
                // lost because the API server was briefly away.
                tracing::debug!(error = %e, "status update failed; retrying");
                slot.restore(status);
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(STATUS_RETRY_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(state: ContainerState, ready: bool) -> ContainerStatus {
        ContainerStatus {
            state: Some(state),
            ready,
            ..Default::default()
        }
    }

    fn running() -> ContainerState {
        ContainerState {
            running: Some(Default::default()),
            ..Default::default()
        }
    }

    fn ended(code: i32) -> ContainerState {
        terminated(&Exit::code(code), None, "x", now())
    }

    #[test]
    fn phases_follow_the_containers() {
        let creating = container(waiting("ContainerCreating", None), false);
        assert_eq!(
            phase(&[], &[creating.clone()], &[], "Always", true),
            "Pending"
        );
        let up = container(running(), true);
        assert_eq!(phase(&[], &[up.clone()], &[], "Always", true), "Running");
        assert_eq!(phase(&[], &[up.clone()], &[], "Always", false), "Pending");
        let (ok, bad) = (container(ended(0), false), container(ended(1), false));
        assert_eq!(phase(&[], &[ok.clone()], &[], "Never", true), "Succeeded");
        assert_eq!(phase(&[], &[ok.clone(), bad], &[], "Never", true), "Failed");
        // A failed init container fails the pod only for good (Never); a sidecar never.
        let init_bad = container(ended(1), false);
        let main = [creating];
        assert_eq!(
            phase(&[init_bad.clone()], &main, &[false], "Never", false),
            "Failed"
        );
        assert_eq!(
            phase(&[init_bad.clone()], &main, &[false], "OnFailure", false),
            "Pending"
        );
        assert_eq!(
            phase(&[init_bad], &main, &[true], "Never", false),
            "Pending"
        );
        // Main containers done, a sidecar still up: Running until it stops (kubelet's
        // getPhase), then Succeeded.
        let sidecar_up = container(running(), true);
        assert_eq!(
            phase(&[sidecar_up], &[ok.clone()], &[true], "Never", true),
            "Running"
        );
        let sidecar_done = container(ended(0), false);
        assert_eq!(
            phase(&[sidecar_done], &[ok], &[true], "Never", true),
            "Succeeded"
        );
    }

    #[test]
    fn conditions_keep_their_transition_times_while_unchanged() {
        let (t0, t1) = (
            Time(jiff::Timestamp::from_second(1_000).unwrap()),
            Time(jiff::Timestamp::from_second(2_000).unwrap()),
        );
        let up = [container(running(), true)];
        let first = conditions("Pending", &up, false, &Transitions::default(), &t0);
        let ready = |cs: &[PodCondition]| {
            let c = cs.iter().find(|c| c.type_ == "Ready").unwrap();
            (c.status.clone(), c.last_transition_time.clone().unwrap())
        };
        assert_eq!(ready(&first), ("False".to_string(), t0.clone()));
        let second = conditions("Running", &up, true, &Transitions::of(&first), &t1);
        assert_eq!(ready(&second), ("True".to_string(), t1.clone()));
        let scheduled = second.iter().find(|c| c.type_ == "PodScheduled").unwrap();
        assert_eq!(scheduled.last_transition_time, Some(t0));
        let done = conditions("Succeeded", &up, true, &Transitions::of(&second), &t1);
        let r = done.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(r.reason.as_deref(), Some("PodCompleted"));
    }
}
