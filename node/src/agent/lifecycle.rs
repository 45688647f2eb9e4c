//! A pod's life on the node as a state machine: a [`Stage`], and a [`Lifecycle::step`] that
//! takes an [`Event`] (the sandbox is ready, a container started or ended, the pod is being
//! deleted, its deadline passed) and says what to do next ([`Action`]s the pod worker
//! performs). No I/O here: the order of init containers, native sidecars (init containers
//! with `restartPolicy: Always`, started before and stopped after the main containers) and
//! termination is decided in one place and tested as plain logic.

/// Where a pod is in its life on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Setting up the sandbox (volumes, network).
    Sandbox,
    /// Init container `i` runs (the earlier ones completed, or, for sidecars, started).
    Init(usize),
    /// The main containers (and the sidecars) run.
    Running,
    /// Nothing will start again (the containers finished, an init container failed for
    /// good, or the deadline passed); sidecars are stopped; waiting for the deletion.
    Done,
    /// Being deleted: the main containers stop, then the sidecars in reverse order.
    Terminating,
    /// Everything is stopped and the deletion is being finished: the worker ends.
    Gone,
}

/// A container of the pod: an init container (by index) or a main one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Which {
    Init(usize),
    Main(usize),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The worker begins: `deleting` if the pod is already being deleted, `finished` if
    /// its status says it ended (an agent restart after its end).
    Begin {
        deleting: bool,
        finished: bool,
    },
    SandboxReady,
    SandboxFailed,
    /// A container is running (and started, past its startup probe).
    Started(Which),
    /// A container's supervisor ended: it will not start again (`ok`: it succeeded).
    Exited {
        which: Which,
        ok: bool,
    },
    Deleting,
    /// The pod must end now, failed (its deadline passed, or it is evicted).
    Fail,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    PrepareSandbox,
    /// Try the sandbox again after the back-off.
    RetrySandbox,
    Start(Which),
    /// Stop these containers: `graceful` gives them the pod's grace period (SIGTERM
    /// first), else they are killed at once.
    Stop {
        which: Vec<Which>,
        graceful: bool,
    },
    /// Report the pod Failed, with the reason its worker knows.
    ReportFailure,
    /// Remove the sandbox and delete the pod object for good.
    FinishDeletion,
}

/// The pod's shape, as far as its life is concerned.
#[derive(Clone, Debug)]
pub struct Shape {
    /// Per init container: whether it is a sidecar (`restartPolicy: Always`).
    pub sidecars: Vec<bool>,
    pub mains: usize,
}

#[derive(Debug)]
pub struct Lifecycle {
    pub stage: Stage,
    shape: Shape,
    /// Containers whose supervisors run.
    live: WhichSet,
    /// Containers told to stop (not told twice).
    stopping: WhichSet,
}

/// A few containers, in order (init containers first): a sorted `Vec`, which for a pod's
/// handful costs a fraction of a B-tree's node.
#[derive(Debug, Default)]
struct WhichSet(Vec<Which>);

impl WhichSet {
    fn insert(&mut self, w: Which) {
        if let Err(at) = self.0.binary_search(&w) {
            self.0.insert(at, w);
        }
    }

    fn remove(&mut self, w: &Which) {
        if let Ok(at) = self.0.binary_search(w) {
            self.0.remove(at);
        }
    }

    fn contains(&self, w: &Which) -> bool {
        self.0.binary_search(w).is_ok()
    }

    fn iter(&self) -> std::slice::Iter<'_, Which> {
        self.0.iter()
    }

    fn extend(&mut self, ws: impl IntoIterator<Item = Which>) {
        ws.into_iter().for_each(|w| self.insert(w));
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Lifecycle {
    pub fn new(shape: Shape) -> Lifecycle {
        Lifecycle {
            stage: Stage::Sandbox,
            shape,
            live: WhichSet::default(),
            stopping: WhichSet::default(),
        }
    }

    fn is_sidecar(&self, w: Which) -> bool {
        matches!(w, Which::Init(i) if self.shape.sidecars.get(i) == Some(&true))
    }

    fn start(&mut self, w: Which, out: &mut Vec<Action>) {
        self.live.insert(w);
        out.push(Action::Start(w));
    }

    /// From init container `i` on: the next one to start, or the main containers.
    fn advance(&mut self, i: usize, out: &mut Vec<Action>) {
        if i < self.shape.sidecars.len() {
            self.stage = Stage::Init(i);
            self.start(Which::Init(i), out);
        } else {
            self.stage = Stage::Running;
            for m in 0..self.shape.mains {
                self.start(Which::Main(m), out);
            }
            if self.shape.mains == 0 {
                self.finish(out);
            }
        }
    }

    /// Nothing will start again: sidecars go, in reverse order.
    fn finish(&mut self, out: &mut Vec<Action>) {
        self.stage = Stage::Done;
        self.stop_next(true, out);
    }

    /// The next stops of a pod winding down: every live container that is not a sidecar,
    /// else the last live sidecar; when none is left and the pod is being deleted, the
    /// deletion is finished.
    fn stop_next(&mut self, graceful: bool, out: &mut Vec<Action>) {
        let others: Vec<Which> = self
            .live
            .iter()
            .copied()
            .filter(|w| !self.is_sidecar(*w) && !self.stopping.contains(w))
            .collect();
        let others_live = self.live.iter().any(|w| !self.is_sidecar(*w));
        if !others.is_empty() {
            self.stopping.extend(others.iter().copied());
            out.push(Action::Stop {
                which: others,
                graceful,
            });
            return;
        }
        if others_live {
            return;
        }
        let last_sidecar = self
            .live
            .iter()
            .rev()
            .copied()
            .find(|w| self.is_sidecar(*w));
        match last_sidecar {
            Some(w) if !self.stopping.contains(&w) => {
                self.stopping.insert(w);
                out.push(Action::Stop {
                    which: vec![w],
                    graceful,
                });
            }
            Some(_) => {}
            None if self.stage == Stage::Terminating => {
                self.stage = Stage::Gone;
                out.push(Action::FinishDeletion);
            }
            None => {}
        }
    }

    /// What to do about `ev`.
    pub fn step(&mut self, ev: Event) -> Vec<Action> {
        let mut out = Vec::new();
        match (self.stage, ev) {
            (Stage::Gone, _) => {}
            (_, Event::Begin { deleting: true, .. }) => {
                self.stage = Stage::Gone;
                out.push(Action::FinishDeletion);
            }
            (_, Event::Begin { finished: true, .. }) => self.stage = Stage::Done,
            (_, Event::Begin { .. }) => out.push(Action::PrepareSandbox),
            (Stage::Sandbox, Event::SandboxReady) => self.advance(0, &mut out),
            (Stage::Sandbox, Event::SandboxFailed) => out.push(Action::RetrySandbox),
            (Stage::Init(i), Event::Started(Which::Init(j)))
                if i == j && self.is_sidecar(Which::Init(i)) =>
            {
                self.advance(i + 1, &mut out)
            }
            (stage, Event::Exited { which, ok }) => {
                self.live.remove(&which);
                self.stopping.remove(&which);
                match stage {
                    // A regular init container completed: the next one.
                    Stage::Init(i) if which == Which::Init(i) && ok => {
                        self.advance(i + 1, &mut out)
                    }
                    // It failed for good (restartPolicy Never): the pod is Failed.
                    Stage::Init(i) if which == Which::Init(i) => self.finish(&mut out),
                    Stage::Running if !self.live.iter().any(|w| matches!(w, Which::Main(_))) => {
                        self.finish(&mut out)
                    }
                    Stage::Done => self.stop_next(true, &mut out),
                    Stage::Terminating => self.stop_next(true, &mut out),
                    _ => {}
                }
            }
            (Stage::Terminating, Event::Deleting) => {}
            (_, Event::Deleting) => {
                self.stage = Stage::Terminating;
                self.stop_next(true, &mut out);
                if self.live.is_empty() && self.stage == Stage::Terminating {
                    self.stage = Stage::Gone;
                    out.push(Action::FinishDeletion);
                }
            }
            (Stage::Done | Stage::Terminating, Event::Fail) => {}
            (_, Event::Fail) => {
                self.stage = Stage::Done;
                let all: Vec<Which> = self.live.iter().copied().collect();
                self.stopping.extend(all.iter().copied());
                if !all.is_empty() {
                    out.push(Action::Stop {
                        which: all,
                        graceful: false,
                    });
                }
                out.push(Action::ReportFailure);
            }
            (_, Event::SandboxReady | Event::SandboxFailed | Event::Started(_)) => {}
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Which::{Init, Main};

    fn pod(sidecars: &[bool], mains: usize) -> Lifecycle {
        let mut l = Lifecycle::new(Shape {
            sidecars: sidecars.to_vec(),
            mains,
        });
        assert_eq!(
            l.step(Event::Begin {
                deleting: false,
                finished: false
            }),
            [Action::PrepareSandbox]
        );
        l
    }

    fn stop(which: &[Which]) -> Action {
        Action::Stop {
            which: which.to_vec(),
            graceful: true,
        }
    }

    #[test]
    fn init_containers_run_in_order_then_the_main_ones() {
        let mut l = pod(&[false, false], 2);
        assert_eq!(l.step(Event::SandboxReady), [Action::Start(Init(0))]);
        // Running is not enough for a regular init container: it must complete.
        assert_eq!(l.step(Event::Started(Init(0))), []);
        assert_eq!(
            l.step(Event::Exited {
                which: Init(0),
                ok: true
            }),
            [Action::Start(Init(1))]
        );
        assert_eq!(
            l.step(Event::Exited {
                which: Init(1),
                ok: true
            }),
            [Action::Start(Main(0)), Action::Start(Main(1))]
        );
        assert_eq!(l.stage, Stage::Running);
        assert_eq!(
            l.step(Event::Exited {
                which: Main(0),
                ok: true
            }),
            []
        );
        assert_eq!(
            l.step(Event::Exited {
                which: Main(1),
                ok: true
            }),
            []
        );
        assert_eq!(l.stage, Stage::Done);
        assert_eq!(l.step(Event::Deleting), [Action::FinishDeletion]);
        assert_eq!(l.stage, Stage::Gone);
    }

    #[test]
    fn a_failed_init_container_ends_the_pod() {
        let mut l = pod(&[true, false], 1);
        l.step(Event::SandboxReady);
        l.step(Event::Started(Init(0)));
        // The sidecar goes once the pod will not go on.
        assert_eq!(
            l.step(Event::Exited {
                which: Init(1),
                ok: false
            }),
            [stop(&[Init(0)])]
        );
        assert_eq!(l.stage, Stage::Done);
    }

    #[test]
    fn sidecars_start_first_and_stop_last_in_reverse_order() {
        let mut l = pod(&[true, false, true], 1);
        assert_eq!(l.step(Event::SandboxReady), [Action::Start(Init(0))]);
        // A sidecar lets the next init container start once it has started.
        assert_eq!(l.step(Event::Started(Init(0))), [Action::Start(Init(1))]);
        assert_eq!(
            l.step(Event::Exited {
                which: Init(1),
                ok: true
            }),
            [Action::Start(Init(2))]
        );
        assert_eq!(l.step(Event::Started(Init(2))), [Action::Start(Main(0))]);
        // Deleted: the main container stops first...
        assert_eq!(l.step(Event::Deleting), [stop(&[Main(0)])]);
        // ...then the sidecars, the last one first.
        assert_eq!(
            l.step(Event::Exited {
                which: Main(0),
                ok: false
            }),
            [stop(&[Init(2)])]
        );
        assert_eq!(
            l.step(Event::Exited {
                which: Init(2),
                ok: false
            }),
            [stop(&[Init(0)])]
        );
        assert_eq!(
            l.step(Event::Exited {
                which: Init(0),
                ok: false
            }),
            [Action::FinishDeletion]
        );
    }

    #[test]
    fn sidecars_stop_when_the_main_containers_finish() {
        let mut l = pod(&[true], 1);
        l.step(Event::SandboxReady);
        l.step(Event::Started(Init(0)));
        assert_eq!(
            l.step(Event::Exited {
                which: Main(0),
                ok: true
            }),
            [stop(&[Init(0)])]
        );
        assert_eq!(
            l.step(Event::Exited {
                which: Init(0),
                ok: false
            }),
            []
        );
        assert_eq!(l.stage, Stage::Done);
    }

    #[test]
    fn deadlines_kill_everything_at_once() {
        let mut l = pod(&[true], 2);
        l.step(Event::SandboxReady);
        l.step(Event::Started(Init(0)));
        assert_eq!(
            l.step(Event::Fail),
            [
                Action::Stop {
                    which: vec![Init(0), Main(0), Main(1)],
                    graceful: false
                },
                Action::ReportFailure
            ]
        );
        assert_eq!(l.step(Event::Fail), []);
    }

    #[test]
    fn deletion_before_or_during_the_sandbox() {
        let mut l = pod(&[], 1);
        assert_eq!(l.step(Event::Deleting), [Action::FinishDeletion]);
        let mut l = Lifecycle::new(Shape {
            sidecars: vec![],
            mains: 1,
        });
        assert_eq!(
            l.step(Event::Begin {
                deleting: true,
                finished: false
            }),
            [Action::FinishDeletion]
        );
        let mut l = pod(&[], 1);
        assert_eq!(l.step(Event::SandboxFailed), [Action::RetrySandbox]);
        assert_eq!(l.step(Event::SandboxReady), [Action::Start(Main(0))]);
    }
}
