//! One container's life as a pure state machine beside the pod's: `step(Event) -> Vec<Action>`.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerState, ContainerStateRunning, ContainerStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tokio::time::Instant;

use super::probes::{Outcome, ProbeKind, Verdict};
use super::status::{terminated, waiting};
use crate::runtime::Exit;

/// Failed pulls and creations wait this long, doubling up to the maximum; so do crash
/// loops from their second restart on (the first is immediate), as the kubelet's.
pub const BACKOFF_START: Duration = Duration::from_secs(10);
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A container that ran this long gets its crash back-off reset.
const BACKOFF_RESET: Duration = Duration::from_secs(600);

/// A container's `restartPolicy` (a native sidecar's is `Always`, whatever the pod's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restart {
    Always,
    OnFailure,
    Never,
}

impl Restart {
    pub fn of(policy: &str) -> Restart {
        match policy {
            "Always" => Restart::Always,
            "OnFailure" => Restart::OnFailure,
            _ => Restart::Never,
        }
    }
}

/// What the machine needs to know of the container's spec.
#[derive(Clone, Debug)]
pub struct Policy {
    pub restart: Restart,
    /// A regular init container (not a sidecar): never ready; it restarts only on failure.
    pub init: bool,
    pub startup_probe: bool,
    pub readiness_probe: bool,
    pub post_start: bool,
    pub pre_stop: bool,
    /// Between SIGTERM and SIGKILL when a failing probe kills it.
    pub probe_grace: Duration,
    /// `<name>_<namespace>(<uid>)`, as the kubelet names the pod in messages.
    pub pod: String,
}

/// Where a container is in its life.
#[derive(Clone, Debug, PartialEq)]
pub enum State {
    /// Being made (image, runtime, configuration, start) as run `run`.
    Creating {
        run: i32,
    },
    /// Waiting until `until` to try again after a failed pull or creation, or a crash;
    /// `image_pull`: the wait shows ImagePullBackOff once over.
    BackOff {
        until: Instant,
        image_pull: bool,
    },
    /// Started; its postStart hook runs (it does not count as running before it is done).
    PostStart,
    Running,
    /// Told to stop: its preStop hook runs, then SIGTERM; SIGKILL at `until` (`None`: sent).
    Stopping {
        until: Option<Instant>,
    },
    /// SIGTERM sent; SIGKILL at `until` (`None`: sent). `restart`: it failed a probe and
    /// restarts per its policy (a container stopped because its pod goes does not).
    Killing {
        until: Option<Instant>,
        restart: bool,
    },
    /// It will not start again (`ok`: it succeeded).
    Done {
        ok: bool,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The supervisor begins with a new container.
    Begin,
    /// A container an earlier agent started goes on: its status then, and since when it runs.
    Adopted {
        status: Box<ContainerStatus>,
        started: Time,
    },
    /// The container started under this ID, from `image` (reference, resolved ID).
    Created {
        container_id: String,
        image: (String, String),
        started: Time,
    },
    /// It could not be made: the kubelet's `reason` (ErrImagePull, CreateContainerError,
    /// ...); `image` (reference, resolved ID), if it was found before the failure.
    CreateFailed {
        reason: &'static str,
        message: String,
        image: Option<(String, String)>,
    },
    /// A probe ran: what it found, and the verdict it makes with the earlier runs.
    Probe {
        kind: ProbeKind,
        outcome: Outcome,
        verdict: Verdict,
    },
    /// The hook under way (postStart or preStop) is done.
    HookDone(Outcome),
    /// The pod worker asks it to stop, SIGKILL at `until`.
    StopRequested { until: Instant },
    /// The time [`Machine::timer`] named has come.
    Timer,
    /// The container ended, at `at`.
    Exited { exit: Exit, at: Time },
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Make the container as run `run` (its log and run ID are numbered by it).
    Create {
        run: i32,
    },
    /// Hand the status to the pod worker.
    Report,
    /// Record a Kubernetes event about the container.
    Record {
        type_: &'static str,
        reason: &'static str,
        message: String,
    },
    RunPostStart,
    /// Run the preStop hook, within the grace period ending at `until`.
    RunPreStop {
        until: Instant,
    },
    /// Give up the hook under way.
    CancelHook,
    StartProbes(Vec<ProbeKind>),
    StopProbe(ProbeKind),
    StopProbes,
    /// SIGTERM (for a Wasm guest, the end).
    Terminate,
    /// SIGKILL.
    Kill,
}

#[derive(Debug)]
pub struct Machine {
    state: State,
    policy: Policy,
    /// Shared with the pod worker, which reports it: one copy while nothing changes.
    status: Arc<ContainerStatus>,
    /// The next wait after a failed pull or creation.
    backoff: Duration,
    /// The next crash-loop wait (zero: restart at once).
    crash_backoff: Duration,
    /// When the current run began (for the crash back-off reset), and its start time.
    began: Instant,
    started: Option<Time>,
}

impl Machine {
    pub fn new(policy: Policy, status: Arc<ContainerStatus>, now: Instant) -> Machine {
        Machine {
            state: State::Creating { run: 0 },
            policy,
            status,
            backoff: BACKOFF_START,
            crash_backoff: Duration::ZERO,
            began: now,
            started: None,
        }
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn status(&self) -> &Arc<ContainerStatus> {
        &self.status
    }

    /// The status, to change (a copy of it, if the worker still holds the old one).
    fn st(&mut self) -> &mut ContainerStatus {
        Arc::make_mut(&mut self.status)
    }

    /// When the supervisor should send [`Event::Timer`], if ever.
    pub fn timer(&self) -> Option<Instant> {
        match self.state {
            State::BackOff { until, .. } => Some(until),
            State::Stopping { until } | State::Killing { until, .. } => until,
            _ => None,
        }
    }

    /// Whether a stop request still changes anything.
    pub fn heeds_stop(&self) -> bool {
        !matches!(
            self.state,
            State::Stopping { .. } | State::Killing { restart: false, .. } | State::Done { .. }
        )
    }

    /// `Some(ok)` once the container will not start again.
    pub fn done(&self) -> Option<bool> {
        match self.state {
            State::Done { ok } => Some(ok),
            _ => None,
        }
    }

    /// What to do about `ev`, which happened at `now`.
    pub fn step(&mut self, ev: Event, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        match (self.state.clone(), ev) {
            (State::Done { .. }, _) => {}
            (_, Event::Begin) => self.create(&mut out),
            (_, Event::Adopted { status, started }) => {
                self.status = Arc::from(status);
                self.began_running(started, now, &mut out);
            }
            (
                State::Creating { run },
                Event::Created {
                    container_id,
                    image,
                    started,
                },
            ) => {
                let name = &self.status.name;
                out.push(self.record("Normal", "Created", format!("Created container: {name}")));
                out.push(self.record("Normal", "Started", format!("Started container {name}")));
                let p = &self.policy;
                let (startup, ready) = (
                    p.startup_probe,
                    !p.init && !p.startup_probe && !p.readiness_probe,
                );
                let st = self.st();
                (st.image, st.image_id) = image;
                st.restart_count = run;
                st.container_id = Some(container_id);
                // Started and ready now, unless probes say when.
                st.started = Some(!startup);
                st.ready = ready;
                st.state = Some(ContainerState {
                    running: Some(ContainerStateRunning {
                        started_at: Some(started.clone()),
                    }),
                    ..Default::default()
                });
                self.began_running(started, now, &mut out);
            }
            (
                State::Creating { .. },
                Event::CreateFailed {
                    reason,
                    message,
                    image,
                },
            ) => {
                let image_pull = reason == "ErrImagePull";
                // A failed pull has its own events already.
                if !image_pull && reason != "ErrImageNeverPull" {
                    out.push(self.record("Warning", "Failed", format!("Error: {message}")));
                }
                if let Some(image) = image {
                    {
                        let st = self.st();
                        (st.image, st.image_id) = image;
                    }
                }
                self.st().state = Some(waiting(reason, Some(message)));
                out.push(Action::Report);
                self.state = State::BackOff {
                    until: now + self.backoff,
                    image_pull,
                };
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
            }
            (State::BackOff { image_pull, .. }, Event::Timer) => {
                // Later attempts wait in ImagePullBackOff, as the kubelet's do.
                if image_pull {
                    let msg = format!("Back-off pulling image \"{}\"", self.status.image);
                    self.st().state = Some(waiting("ImagePullBackOff", Some(msg)));
                    out.push(Action::Report);
                }
                self.create(&mut out);
            }
            (State::Creating { .. } | State::BackOff { .. }, Event::StopRequested { .. }) => {
                self.state = State::Done { ok: false };
            }
            (State::PostStart, Event::HookDone(outcome)) => {
                if let Outcome::Failure(why) = outcome {
                    let msg = format!("PostStartHook failed: {why}");
                    out.push(self.record("Warning", "FailedPostStartHook", msg));
                    out.push(Action::Kill);
                }
                self.running(&mut out);
            }
            (State::PostStart, Event::StopRequested { until }) => {
                out.push(Action::CancelHook);
                self.running(&mut out);
                self.stop(until, &mut out);
            }
            (
                State::Running | State::Killing { restart: true, .. },
                Event::StopRequested { until },
            ) => self.stop(until, &mut out),
            (
                _,
                Event::Probe {
                    kind,
                    outcome,
                    verdict,
                },
            ) => self.probed(kind, outcome, verdict, now, &mut out),
            (State::Stopping { until }, Event::HookDone(outcome)) => {
                if let Outcome::Failure(why) = outcome {
                    let msg = format!("PreStopHook failed: {why}");
                    out.push(self.record("Warning", "FailedPreStopHook", msg));
                }
                out.push(Action::Terminate);
                self.state = State::Killing {
                    until,
                    restart: false,
                };
            }
            (State::Stopping { .. }, Event::Timer) => {
                out.push(Action::Kill);
                self.state = State::Stopping { until: None };
            }
            (State::Killing { restart, .. }, Event::Timer) => {
                out.push(Action::Kill);
                self.state = State::Killing {
                    until: None,
                    restart,
                };
            }
            (state, Event::Exited { exit, at }) => self.exited(state, exit, at, now, &mut out),
            (_, Event::Created { .. } | Event::CreateFailed { .. }) => {}
            (_, Event::HookDone(_) | Event::StopRequested { .. } | Event::Timer) => {}
        }
        out
    }

    fn record(&self, type_: &'static str, reason: &'static str, message: String) -> Action {
        Action::Record {
            type_,
            reason,
            message,
        }
    }

    /// The next attempt: `restartCount` numbers the latest run; a container that ran before
    /// (under this agent or an earlier one: it has a last state) starts one higher.
    fn create(&mut self, out: &mut Vec<Action>) {
        let run = self.status.restart_count + i32::from(self.status.last_state.is_some());
        self.state = State::Creating { run };
        out.push(Action::Create { run });
    }

    /// The container runs: its postStart hook first (the kubelet's order), if it has one.
    fn began_running(&mut self, started: Time, now: Instant, out: &mut Vec<Action>) {
        self.began = now;
        self.started = Some(started);
        if self.policy.post_start {
            self.state = State::PostStart;
            out.push(Action::RunPostStart);
        } else {
            self.running(out);
        }
    }

    /// It counts as running: reported, and probed (the startup probe first; liveness and
    /// readiness once it has passed).
    fn running(&mut self, out: &mut Vec<Action>) {
        self.state = State::Running;
        out.push(Action::Report);
        out.push(Action::StartProbes(if self.policy.startup_probe {
            vec![ProbeKind::Startup]
        } else {
            vec![ProbeKind::Liveness, ProbeKind::Readiness]
        }));
    }

    /// Told to stop: the preStop hook first (the kubelet's order), within the grace
    /// period; then SIGTERM.
    fn stop(&mut self, until: Instant, out: &mut Vec<Action>) {
        let msg = format!("Stopping container {}", self.status.name);
        out.push(self.record("Normal", "Killing", msg));
        if self.policy.pre_stop {
            out.push(Action::RunPreStop { until });
            self.state = State::Stopping { until: Some(until) };
        } else {
            out.push(Action::Terminate);
            self.state = State::Killing {
                until: Some(until),
                restart: false,
            };
        }
    }

    fn probed(
        &mut self,
        kind: ProbeKind,
        outcome: Outcome,
        verdict: Verdict,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if let Outcome::Failure(why) = &outcome {
            let msg = format!("{} probe failed: {why}", kind.name());
            out.push(self.record("Warning", "Unhealthy", msg));
        }
        match (kind, verdict) {
            (ProbeKind::Startup, Verdict::Passed) => {
                out.push(Action::StopProbe(ProbeKind::Startup));
                out.push(Action::StartProbes(vec![
                    ProbeKind::Liveness,
                    ProbeKind::Readiness,
                ]));
                let ready = !self.policy.init && !self.policy.readiness_probe;
                self.st().started = Some(true);
                self.st().ready = ready;
                out.push(Action::Report);
            }
            (ProbeKind::Readiness, Verdict::Passed) => {
                self.st().ready = true;
                out.push(Action::Report);
            }
            (ProbeKind::Readiness, Verdict::Failed(_)) => {
                self.st().ready = false;
                out.push(Action::Report);
            }
            (ProbeKind::Startup | ProbeKind::Liveness, Verdict::Failed(_))
                if self.state == State::Running =>
            {
                let msg = format!(
                    "Container {} failed {} probe, will be restarted",
                    self.status.name,
                    kind.name().to_lowercase()
                );
                out.push(self.record("Normal", "Killing", msg));
                out.push(Action::StopProbes);
                out.push(Action::Terminate);
                self.state = State::Killing {
                    until: Some(now + self.policy.probe_grace),
                    restart: true,
                };
            }
            _ => {}
        }
    }

    /// It ended: it restarts per its policy (at once the first time, then after the crash
    /// back-off), unless its pod stops it; else its status shows how it ended, for good.
    fn exited(&mut self, state: State, exit: Exit, at: Time, now: Instant, out: &mut Vec<Action>) {
        if matches!(state, State::Creating { .. } | State::BackOff { .. }) {
            return;
        }
        let id = self.status.container_id.clone().unwrap_or_default();
        let term = terminated(&exit, self.started.take(), &id, at);
        self.st().ready = false;
        self.st().started = Some(false);
        let may = matches!(
            state,
            State::PostStart | State::Running | State::Killing { restart: true, .. }
        );
        let restart = may
            && match self.policy.restart {
                Restart::Always => !self.policy.init || exit.code != 0,
                Restart::OnFailure => exit.code != 0,
                Restart::Never => false,
            };
        if !restart {
            self.st().state = Some(term);
            out.push(Action::Report);
            self.state = State::Done { ok: exit.code == 0 };
            return;
        }
        if now.saturating_duration_since(self.began) >= BACKOFF_RESET {
            self.crash_backoff = Duration::ZERO;
        }
        self.st().last_state = Some(term);
        if self.crash_backoff.is_zero() {
            self.crash_backoff = BACKOFF_START;
            self.create(out);
            return;
        }
        let (name, pod, secs) = (
            &self.status.name,
            &self.policy.pod,
            self.crash_backoff.as_secs(),
        );
        let msg = format!("back-off {secs}s restarting failed container={name} pod={pod}");
        let event = format!("Back-off restarting failed container {name} in pod {pod}");
        self.st().state = Some(waiting("CrashLoopBackOff", Some(msg)));
        out.push(Action::Report);
        out.push(self.record("Warning", "BackOff", event));
        self.state = State::BackOff {
            until: now + self.crash_backoff,
            image_pull: false,
        };
        self.crash_backoff = (self.crash_backoff * 2).min(BACKOFF_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(restart: Restart) -> Policy {
        Policy {
            restart,
            init: false,
            startup_probe: false,
            readiness_probe: false,
            post_start: false,
            pre_stop: false,
            probe_grace: Duration::from_secs(5),
            pod: "web_default(u1)".into(),
        }
    }

    fn status() -> ContainerStatus {
        ContainerStatus {
            name: "app".into(),
            image: "img:1".into(),
            ..Default::default()
        }
    }

    fn time() -> Time {
        Time(jiff::Timestamp::from_second(1_700_000_000).unwrap())
    }

    fn created() -> Event {
        Event::Created {
            container_id: "wasm://u1-app-0".into(),
            image: ("img:1".into(), "img@sha256:x".into()),
            started: time(),
        }
    }

    fn exited(code: i32) -> Event {
        Event::Exited {
            exit: Exit::code(code),
            at: time(),
        }
    }

    /// A machine past its first creation, running.
    fn running(p: Policy, t0: Instant) -> Machine {
        let mut m = Machine::new(p, status().into(), t0);
        assert_eq!(m.step(Event::Begin, t0), [Action::Create { run: 0 }]);
        m.step(created(), t0);
        assert_eq!(m.state(), &State::Running);
        m
    }

    fn reasons(actions: &[Action]) -> Vec<&'static str> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Record { reason, .. } => Some(*reason),
                _ => None,
            })
            .collect()
    }

    fn waiting_reason(m: &Machine) -> Option<String> {
        m.status().state.as_ref()?.waiting.as_ref()?.reason.clone()
    }

    #[test]
    fn a_container_runs_and_completes_for_good() {
        let t0 = Instant::now();
        let mut m = Machine::new(policy(Restart::Never), status().into(), t0);
        m.step(Event::Begin, t0);
        let a = m.step(created(), t0);
        assert_eq!(reasons(&a), ["Created", "Started"]);
        assert!(a.contains(&Action::Report));
        assert!(a.contains(&Action::StartProbes(vec![
            ProbeKind::Liveness,
            ProbeKind::Readiness
        ])));
        assert!(m.status().ready && m.status().started == Some(true));
        assert_eq!(m.status().image_id, "img@sha256:x");
        assert_eq!(m.step(exited(0), t0), [Action::Report]);
        assert_eq!(m.done(), Some(true));
        let term = m
            .status()
            .state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap();
        assert_eq!(term.exit_code, 0);
        assert!(!m.status().ready);
    }

    #[test]
    fn failed_creations_back_off_doubling_and_pulls_show_image_pull_back_off() {
        let t0 = Instant::now();
        let mut m = Machine::new(policy(Restart::Always), status().into(), t0);
        m.step(Event::Begin, t0);
        let fail = |reason| Event::CreateFailed {
            reason,
            message: "nope".into(),
            image: None,
        };
        let a = m.step(fail("CreateContainerConfigError"), t0);
        assert_eq!(reasons(&a), ["Failed"]);
        assert_eq!(m.timer(), Some(t0 + BACKOFF_START));
        assert_eq!(m.step(Event::Timer, t0), [Action::Create { run: 0 }]);
        // A failed pull has had its events; its next wait shows ImagePullBackOff.
        let a = m.step(fail("ErrImagePull"), t0);
        assert_eq!(reasons(&a), Vec::<&str>::new());
        assert_eq!(waiting_reason(&m).as_deref(), Some("ErrImagePull"));
        assert_eq!(m.timer(), Some(t0 + BACKOFF_START * 2));
        let a = m.step(Event::Timer, t0);
        assert_eq!(a, [Action::Report, Action::Create { run: 0 }]);
        assert_eq!(waiting_reason(&m).as_deref(), Some("ImagePullBackOff"));
        // Told to stop while waiting: it ends at once, without a word.
        m.step(fail("CreateContainerError"), t0);
        let until = t0 + Duration::from_secs(30);
        assert_eq!(m.step(Event::StopRequested { until }, t0), []);
        assert_eq!(m.done(), Some(false));
    }

    #[test]
    fn crashes_restart_at_once_then_after_a_doubling_back_off() {
        let t0 = Instant::now();
        let mut m = running(policy(Restart::Always), t0);
        // The first restart is immediate, as run 1.
        assert_eq!(m.step(exited(1), t0), [Action::Create { run: 1 }]);
        m.step(created(), t0);
        assert_eq!(m.status().restart_count, 1);
        let a = m.step(exited(1), t0);
        assert_eq!(reasons(&a), ["BackOff"]);
        assert_eq!(waiting_reason(&m).as_deref(), Some("CrashLoopBackOff"));
        assert_eq!(m.timer(), Some(t0 + Duration::from_secs(10)));
        assert_eq!(m.step(Event::Timer, t0), [Action::Create { run: 2 }]);
        m.step(created(), t0);
        m.step(exited(1), t0);
        assert_eq!(m.timer(), Some(t0 + Duration::from_secs(20)));
        // A run of ten minutes resets the back-off.
        m.step(Event::Timer, t0);
        m.step(created(), t0);
        let later = t0 + BACKOFF_RESET;
        assert_eq!(m.step(exited(0), later), [Action::Create { run: 4 }]);
    }

    #[test]
    fn restart_policies_decide() {
        let t0 = Instant::now();
        let mut m = running(policy(Restart::OnFailure), t0);
        m.step(exited(0), t0);
        assert_eq!(m.done(), Some(true));
        let mut m = running(policy(Restart::OnFailure), t0);
        assert_eq!(m.step(exited(2), t0), [Action::Create { run: 1 }]);
        // A regular init container under Always restarts only on failure.
        let mut m = running(
            Policy {
                init: true,
                ..policy(Restart::Always)
            },
            t0,
        );
        assert!(!m.status().ready);
        m.step(exited(0), t0);
        assert_eq!(m.done(), Some(true));
    }

    #[test]
    fn a_failed_liveness_probe_kills_and_restarts() {
        let t0 = Instant::now();
        let mut m = running(policy(Restart::Always), t0);
        let a = m.step(
            Event::Probe {
                kind: ProbeKind::Liveness,
                outcome: Outcome::Failure("down".into()),
                verdict: Verdict::Failed("down".into()),
            },
            t0,
        );
        assert_eq!(reasons(&a), ["Unhealthy", "Killing"]);
        assert!(a.ends_with(&[Action::StopProbes, Action::Terminate]));
        assert_eq!(m.timer(), Some(t0 + Duration::from_secs(5)));
        assert_eq!(m.step(Event::Timer, t0), [Action::Kill]);
        assert_eq!(m.timer(), None);
        assert_eq!(m.step(exited(137), t0), [Action::Create { run: 1 }]);
    }

    #[test]
    fn a_stop_after_a_probe_kill_means_no_restart() {
        let t0 = Instant::now();
        let mut m = running(policy(Restart::Always), t0);
        m.step(
            Event::Probe {
                kind: ProbeKind::Liveness,
                outcome: Outcome::Failure("down".into()),
                verdict: Verdict::Failed("down".into()),
            },
            t0,
        );
        assert!(m.heeds_stop());
        let until = t0 + Duration::from_secs(30);
        let a = m.step(Event::StopRequested { until }, t0);
        assert_eq!(reasons(&a), ["Killing"]);
        assert!(!m.heeds_stop());
        assert_eq!(m.timer(), Some(until));
        m.step(exited(137), t0);
        assert_eq!(m.done(), Some(false));
    }

    #[test]
    fn stopping_runs_the_pre_stop_hook_then_terminates_then_kills() {
        let t0 = Instant::now();
        let mut m = running(
            Policy {
                pre_stop: true,
                ..policy(Restart::Always)
            },
            t0,
        );
        let until = t0 + Duration::from_secs(30);
        let a = m.step(Event::StopRequested { until }, t0);
        assert_eq!(a.last(), Some(&Action::RunPreStop { until }));
        let a = m.step(Event::HookDone(Outcome::Failure("exit 1".into())), t0);
        assert_eq!(reasons(&a), ["FailedPreStopHook"]);
        assert_eq!(a.last(), Some(&Action::Terminate));
        assert_eq!(m.step(Event::Timer, until), [Action::Kill]);
        m.step(exited(137), until);
        assert_eq!(m.done(), Some(false));
    }

    #[test]
    fn post_start_hooks_come_before_running() {
        let t0 = Instant::now();
        let p = Policy {
            post_start: true,
            ..policy(Restart::Always)
        };
        let mut m = Machine::new(p.clone(), status().into(), t0);
        m.step(Event::Begin, t0);
        let a = m.step(created(), t0);
        assert_eq!(a.last(), Some(&Action::RunPostStart));
        assert!(!a.contains(&Action::Report));
        // A failing hook kills the container, which then restarts per its policy.
        let a = m.step(Event::HookDone(Outcome::Failure("no".into())), t0);
        assert_eq!(reasons(&a), ["FailedPostStartHook"]);
        assert!(a.contains(&Action::Kill) && a.contains(&Action::Report));
        assert_eq!(m.step(exited(137), t0), [Action::Create { run: 1 }]);
        // Told to stop during the hook: the hook is dropped and the stop goes on.
        let mut m = Machine::new(p, status().into(), t0);
        m.step(Event::Begin, t0);
        m.step(created(), t0);
        let until = t0 + Duration::from_secs(1);
        let a = m.step(Event::StopRequested { until }, t0);
        assert_eq!(a[0], Action::CancelHook);
        assert_eq!(a.last(), Some(&Action::Terminate));
    }

    #[test]
    fn startup_probes_gate_liveness_and_readiness() {
        let t0 = Instant::now();
        let p = Policy {
            startup_probe: true,
            readiness_probe: true,
            ..policy(Restart::Always)
        };
        let mut m = Machine::new(p, status().into(), t0);
        m.step(Event::Begin, t0);
        let a = m.step(created(), t0);
        assert!(a.contains(&Action::StartProbes(vec![ProbeKind::Startup])));
        assert_eq!(m.status().started, Some(false));
        let a = m.step(
            Event::Probe {
                kind: ProbeKind::Startup,
                outcome: Outcome::Success,
                verdict: Verdict::Passed,
            },
            t0,
        );
        assert_eq!(a[0], Action::StopProbe(ProbeKind::Startup));
        assert_eq!(m.status().started, Some(true));
        assert!(!m.status().ready, "ready once its readiness probe passes");
        m.step(
            Event::Probe {
                kind: ProbeKind::Readiness,
                outcome: Outcome::Success,
                verdict: Verdict::Passed,
            },
            t0,
        );
        assert!(m.status().ready);
    }

    #[test]
    fn an_adopted_container_goes_on_without_being_created() {
        let t0 = Instant::now();
        let mut m = Machine::new(policy(Restart::Always), status().into(), t0);
        let prev = ContainerStatus {
            restart_count: 3,
            container_id: Some("runc://u1-app-3".into()),
            ..status()
        };
        let a = m.step(
            Event::Adopted {
                status: Box::new(prev),
                started: time(),
            },
            t0,
        );
        assert_eq!(reasons(&a), Vec::<&str>::new());
        assert_eq!(m.state(), &State::Running);
        assert_eq!(m.step(exited(1), t0), [Action::Create { run: 4 }]);
        let last = m.status().last_state.as_ref().unwrap();
        let term = last.terminated.as_ref().unwrap();
        assert_eq!(term.container_id.as_deref(), Some("runc://u1-app-3"));
    }
}
