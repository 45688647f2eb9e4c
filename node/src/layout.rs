//! Where the node keeps its data, and how its containers are named: every path under the
//! agent's data directory is made here, and [`ContainerId`] prints and parses the
//! `runtime://id` form pod statuses carry.
//!
//! ```text
//! <data dir>/
//!   images/                                       the image store
//!   compiled/                                     compiled Wasm, by digest
//!   cni/                                          the pod network's state
//!   runc/                                         runc's state (`runc --root`)
//!   containers/<pod uid>/<run id>/                OCI bundles
//!   pods/<pod uid>/                               pod sandboxes
//!   logs/<ns>_<pod>_<pod uid>/<container>/<run>.log   container logs (CRI layout)
//! ```
//!
//! Names from the API (namespaces, pods, containers, uids) become one path element each
//! ([`path_element`]): a name cannot lead out of its directory.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::sandbox::path_element;

const IMAGES: &str = "images";
const COMPILED: &str = "compiled";
const CNI: &str = "cni";
const RUNC: &str = "runc";
const BUNDLES: &str = "containers";
const SANDBOXES: &str = "pods";
const LOGS: &str = "logs";

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("not a container ID (runtime://id): {0:?}")]
    ContainerId(String),
}

/// The agent's data directory.
#[derive(Clone, Debug)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Layout {
        Layout { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The image store.
    pub fn images(&self) -> PathBuf {
        self.root.join(IMAGES)
    }

    /// Compiled Wasm modules and components, cached across agent restarts.
    pub fn compiled(&self) -> PathBuf {
        self.root.join(COMPILED)
    }

    /// The pod network's state (host-local allocations, warm namespaces).
    pub fn cni(&self) -> PathBuf {
        self.root.join(CNI)
    }

    /// The node's seccomp profiles (`Localhost` ones name files beneath it), as the
    /// kubelet's `<root-dir>/seccomp`.
    pub fn seccomp(&self) -> PathBuf {
        self.root.join("seccomp")
    }

    /// runc's own state directory (`runc --root`).
    pub fn runc_state(&self) -> PathBuf {
        self.root.join(RUNC)
    }

    /// The OCI bundles of every pod, a directory per pod uid.
    pub fn bundles(&self) -> PathBuf {
        self.root.join(BUNDLES)
    }

    /// The OCI bundles of one pod.
    pub fn pod_bundles(&self, pod_uid: &str) -> PathBuf {
        self.bundles().join(path_element(pod_uid))
    }

    /// The OCI bundle of one container run.
    pub fn bundle(&self, pod_uid: &str, run_id: &str) -> PathBuf {
        self.pod_bundles(pod_uid).join(path_element(run_id))
    }

    /// The bundle of container run `run_id`, whichever pod's it is, if it is there.
    pub fn find_bundle(&self, run_id: &str) -> Option<PathBuf> {
        let name = path_element(run_id);
        std::fs::read_dir(self.bundles())
            .ok()?
            .flatten()
            .map(|e| e.path().join(&name))
            .find(|b| b.is_dir())
    }

    /// A pod's sandbox (volumes, network, `/etc` files).
    pub fn sandbox(&self, pod_uid: &str) -> PathBuf {
        self.root.join(SANDBOXES).join(path_element(pod_uid))
    }

    /// A pod's logs: `<ns>_<name>_<uid>`, as the kubelet names them.
    pub fn pod_logs(&self, ns: &str, name: &str, uid: &str) -> PathBuf {
        let [ns, name, uid] = [ns, name, uid].map(path_element);
        self.root.join(LOGS).join(format!("{ns}_{name}_{uid}"))
    }

    /// The sandboxes and logs of pods not in `live` (uids): pods deleted while the agent
    /// was away or its watch was broken.
    pub fn orphans(&self, live: &HashSet<String>) -> Vec<PathBuf> {
        let uid_of = |dir: &str, name: &str| match dir {
            LOGS => name.rsplit('_').next().unwrap_or_default().to_string(),
            _ => name.to_string(),
        };
        [SANDBOXES, LOGS]
            .into_iter()
            .flat_map(|dir| {
                std::fs::read_dir(self.root.join(dir))
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter(move |e| !live.contains(&uid_of(dir, &e.file_name().to_string_lossy())))
                    .map(|e| e.path())
            })
            .collect()
    }

    /// A container's runs, oldest first: their log files, plus the running one (among
    /// `active`, the files still written), whose file may not exist yet (a log file is made
    /// on its first line). The running pod of that name is looked at, else the newest one
    /// (a recreated pod has a new uid).
    pub fn container_runs<'a>(
        &self,
        ns: &str,
        pod: &str,
        container: &str,
        active: impl IntoIterator<Item = &'a Arc<Path>>,
    ) -> Vec<PathBuf> {
        let prefix = format!("{}_{}_", path_element(ns), path_element(pod));
        let container = path_element(container);
        let of_container = |p: &&Arc<Path>| {
            let dir = p.parent();
            dir.and_then(|d| d.file_name())
                .is_some_and(|n| n == container.as_str())
                && dir
                    .and_then(|d| d.parent())
                    .and_then(|d| d.file_name())
                    .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
        };
        let active = active
            .into_iter()
            .find(of_container)
            .map(|p| p.to_path_buf());
        let pod_dir = match active.as_ref().and_then(|p| p.parent()?.parent()) {
            Some(d) => Some(d.to_path_buf()),
            None => std::fs::read_dir(self.root.join(LOGS))
                .into_iter()
                .flatten()
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
                .map(|e| e.path()),
        };
        let Some(dir) = pod_dir else { return vec![] };
        let mut runs: Vec<(u64, PathBuf)> = std::fs::read_dir(dir.join(&container))
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|e| run_of(&e.path()).map(|n| (n, e.path())))
            .collect();
        if let Some(p) = active {
            if let Some(n) = run_of(&p).filter(|n| !runs.iter().any(|(m, _)| m == n)) {
                runs.push((n, p));
            }
        }
        runs.sort();
        runs.into_iter().map(|(_, p)| p).collect()
    }
}

impl Layout {
    /// The running run of a pod's container among `active` (each running run's log file
    /// and runtime), as its ID.
    pub fn running_run<'a>(
        &self,
        ns: &str,
        pod: &str,
        uid: &str,
        container: &str,
        active: impl IntoIterator<Item = (&'a Arc<Path>, &'a &'static str)>,
    ) -> Option<ContainerId> {
        let dir = self.pod_logs(ns, pod, uid).join(path_element(container));
        active.into_iter().find_map(|(path, runtime)| {
            let run = run_of(path).filter(|_| path.parent() == Some(dir.as_path()))?;
            let run = i32::try_from(run).ok()?;
            Some(ContainerId::new(runtime, &run_id(uid, container, run)))
        })
    }
}

/// The log file of a container's run `run` in its pod's log directory:
/// `<container>/<run>.log`.
pub fn run_log(pod_logs: &Path, container: &str, run: i32) -> PathBuf {
    pod_logs
        .join(path_element(container))
        .join(format!("{run}.log"))
}

/// Removes the log files of a container's runs before `run - 1` (rotated pieces too): a
/// node keeps the running run's log and the previous one's (`kubectl logs --previous`),
/// as the kubelet keeps one dead container per container.
pub fn prune_runs(pod_logs: &Path, container: &str, run: i32) {
    let dir = pod_logs.join(path_element(container));
    let keep_from = u64::try_from(run.saturating_sub(1)).unwrap_or(0);
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let stem = name.split('.').next().unwrap_or_default();
        if stem.parse::<u64>().is_ok_and(|n| n < keep_from) && name.contains(".log") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The run a log file is of (`<run>.log`).
fn run_of(path: &Path) -> Option<u64> {
    path.file_name()?
        .to_str()?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

/// A container run's name on the node, unique among the node's runs:
/// `<pod uid>-<container>-<run>`; a runtime knows the run by it.
pub fn run_id(pod_uid: &str, container: &str, run: i32) -> String {
    format!("{pod_uid}-{container}-{run}")
}

/// A container's ID as pod statuses show it, `<runtime>://<run id>`: the runtime that
/// runs it, and its name there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerId {
    runtime: String,
    run_id: String,
}

impl ContainerId {
    pub fn new(runtime: &str, run_id: &str) -> ContainerId {
        ContainerId {
            runtime: runtime.into(),
            run_id: run_id.into(),
        }
    }

    /// The runtime's name (as [`crate::runtime::Runtime::name`] gives it).
    pub fn runtime(&self) -> &str {
        &self.runtime
    }

    /// The container's name in its runtime.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// Whether this names a run of `container` in pod `pod_uid` ([`run_id`]'s form): a
    /// status (which its writer could forge) must not hand a pod another pod's container.
    pub fn is_run_of(&self, pod_uid: &str, container: &str) -> bool {
        self.run_id
            .strip_prefix(pod_uid)
            .and_then(|r| r.strip_prefix('-'))
            .and_then(|r| r.strip_prefix(container))
            .and_then(|r| r.strip_prefix('-'))
            .is_some_and(|run| run.parse::<i32>().is_ok())
    }
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.runtime, self.run_id)
    }
}

impl std::str::FromStr for ContainerId {
    type Err = LayoutError;

    fn from_str(s: &str) -> Result<ContainerId, LayoutError> {
        match s.split_once("://") {
            Some((runtime, run_id)) if !runtime.is_empty() && !run_id.is_empty() => {
                Ok(ContainerId::new(runtime, run_id))
            }
            _ => Err(LayoutError::ContainerId(s.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_id_belongs_only_to_its_own_pod_and_container() {
        let id = ContainerId::new("runc", &run_id("uid-1", "web", 2));
        assert!(id.is_run_of("uid-1", "web"));
        assert!(!id.is_run_of("uid-2", "web"));
        assert!(!id.is_run_of("uid-1", "db"));
        let forged: ContainerId = "runc://uid-2-web-0".parse().unwrap();
        assert!(!forged.is_run_of("uid-1", "web"));
    }

    #[test]
    fn container_ids_print_and_parse_as_runtime_and_run() {
        let id = ContainerId::new("runc", &run_id("uid-1", "web", 2));
        assert_eq!(id.to_string(), "runc://uid-1-web-2");
        let back: ContainerId = "runc://uid-1-web-2".parse().unwrap();
        assert_eq!(back, id);
        assert_eq!((back.runtime(), back.run_id()), ("runc", "uid-1-web-2"));
        for bad in ["", "runc", "runc://", "://x", "runc:/x"] {
            assert!(bad.parse::<ContainerId>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_from_the_api_stay_one_path_element() {
        let l = Layout::new("/data");
        assert_eq!(l.sandbox("uid-1"), Path::new("/data/pods/uid-1"));
        assert_eq!(l.sandbox(".."), Path::new("/data/pods/%.."));
        assert_eq!(
            l.pod_logs("default", "a/b", "uid-1"),
            Path::new("/data/logs/default_a%2Fb_uid-1")
        );
        assert_eq!(
            run_log(&l.pod_logs("ns", "p", "u"), "c", 3),
            Path::new("/data/logs/ns_p_u/c/3.log")
        );
        assert_eq!(
            l.bundle("uid-1", "uid-1-c-0"),
            Path::new("/data/containers/uid-1/uid-1-c-0")
        );
        assert_eq!(l.pod_bundles("uid-1"), l.bundles().join("uid-1"));
    }

    #[test]
    fn orphans_are_the_files_of_pods_not_listed() {
        let data = tempfile::tempdir().unwrap();
        let l = Layout::new(data.path());
        let pod = |ns: &str, name: &str, uid: &str| (l.sandbox(uid), l.pod_logs(ns, name, uid));
        let (kept, gone) = (pod("default", "a", "uid-1"), pod("other", "b", "uid-2"));
        for (sandbox, logs) in [&kept, &gone] {
            std::fs::create_dir_all(sandbox.join("volumes")).unwrap();
            std::fs::create_dir_all(logs.join("main")).unwrap();
        }
        let live = ["uid-1".to_string()].into();
        let mut found = l.orphans(&live);
        found.sort();
        assert_eq!(found, [gone.1, gone.0]);
    }

    #[test]
    fn a_containers_runs_are_its_logs_and_the_running_one() {
        let data = tempfile::tempdir().unwrap();
        let l = Layout::new(data.path());
        let logs = l.pod_logs("ns", "web", "uid-1");
        for run in [0, 1, 10] {
            let f = run_log(&logs, "app", run);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(&f, "").unwrap();
        }
        // Another container, another pod whose name shares a prefix, a rotated file.
        std::fs::write(logs.join("app/2.log.1"), "").unwrap();
        std::fs::create_dir_all(l.pod_logs("ns", "web2", "uid-2").join("app")).unwrap();
        std::fs::write(run_log(&l.pod_logs("ns", "web2", "uid-2"), "app", 5), "").unwrap();
        let none = HashSet::new();
        let runs = l.container_runs("ns", "web", "app", &none);
        assert_eq!(runs, [0, 1, 10].map(|r| run_log(&logs, "app", r)));
        // The running one has not written yet.
        let active: HashSet<Arc<Path>> = [run_log(&logs, "app", 11).into()].into();
        let runs = l.container_runs("ns", "web", "app", &active);
        assert_eq!(runs.last(), Some(&run_log(&logs, "app", 11)));
        assert_eq!(runs.len(), 4);
        assert!(l.container_runs("ns", "web", "db", &none).is_empty());
        assert!(l.container_runs("other", "web", "app", &none).is_empty());
    }

    #[test]
    fn a_running_container_is_found_among_the_agents_runs_only() {
        let l = Layout::new(Path::new("/data"));
        let logs = l.pod_logs("ns", "web", "uid-1");
        let runc: &'static str = "runc";
        let active: std::collections::HashMap<Arc<Path>, &'static str> = [
            (run_log(&logs, "app", 3).into(), runc),
            (
                run_log(&l.pod_logs("ns", "db", "uid-2"), "app", 7).into(),
                "wasm",
            ),
        ]
        .into();
        let found = l.running_run("ns", "web", "uid-1", "app", active.iter());
        assert_eq!(found, Some(ContainerId::new("runc", "uid-1-app-3")));
        // Another container of the pod, the same pod name with another uid: none runs.
        assert_eq!(
            l.running_run("ns", "web", "uid-1", "side", active.iter()),
            None
        );
        assert_eq!(
            l.running_run("ns", "web", "uid-9", "app", active.iter()),
            None
        );
    }

    #[test]
    fn only_the_running_and_the_previous_runs_logs_are_kept() {
        let data = tempfile::tempdir().unwrap();
        let logs = data.path().join("pod");
        let dir = logs.join("app");
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["0.log", "1.log", "1.log.1", "2.log", "3.log", "notes"] {
            std::fs::write(dir.join(f), "").unwrap();
        }
        prune_runs(&logs, "app", 3);
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["2.log", "3.log", "notes"]);
    }
}
