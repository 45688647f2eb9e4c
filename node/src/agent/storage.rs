//! Local ephemeral storage limits, enforced as the kubelet's eviction manager does: a pod
//! whose emptyDir grows past its `sizeLimit`, whose containers together use more than the
//! sum of their `ephemeral-storage` limits, or one of whose containers uses more than its
//! own limit, is evicted (every container killed, the pod Failed with reason `Evicted`
//! and the kubelet's message). A container's usage is its writable layer (runc) and its
//! logs; a pod's adds its emptyDir volumes. Only pods that set a limit are measured.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;

use super::pod::PodDirs;
use crate::sandbox::path_element;

/// How often limited pods are measured (the kubelet's eviction monitoring period).
pub const CHECK_EVERY: Duration = Duration::from_secs(10);

/// A limit, in bytes and as the manifest wrote it (messages quote it).
#[derive(Clone, Debug, PartialEq)]
struct Limit {
    bytes: u64,
    text: String,
}

fn limit(q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity) -> Option<Limit> {
    let milli = skiff_api::quantity::parse(&q.0).ok()?.0;
    Some(Limit {
        bytes: u64::try_from(milli / 1000).ok()?,
        text: q.0.clone(),
    })
}

/// What a pod limits, and where the limited things are on the node.
#[derive(Clone, Debug)]
pub struct Limits {
    /// emptyDir volumes with a `sizeLimit`: name, directory, limit.
    empty_dirs: Vec<(String, PathBuf, Limit)>,
    /// Every emptyDir's directory (they count towards the pod's total).
    all_empty_dirs: Vec<PathBuf>,
    /// Per container: its name and its `ephemeral-storage` limit.
    containers: Vec<(String, Option<Limit>)>,
    /// The pod's total (kube's PodLimits), if a container has a limit.
    pod: Option<Limit>,
    dirs: PodDirs,
    uid: String,
}

impl Limits {
    /// The pod's limits; `None` if it sets none (it is never measured).
    pub fn of(pod: &Pod, dirs: PodDirs) -> Option<Limits> {
        let spec = pod.spec.as_ref()?;
        let mut empty_dirs = Vec::new();
        let mut all_empty_dirs = Vec::new();
        for v in spec.volumes.iter().flatten() {
            let Some(e) = &v.empty_dir else { continue };
            let dir = dirs.sandbox.join("volumes").join(path_element(&v.name));
            if let Some(l) = e.size_limit.as_ref().and_then(limit) {
                empty_dirs.push((v.name.clone(), dir.clone(), l));
            }
            all_empty_dirs.push(dir);
        }
        let of = |c: &k8s_openapi::api::core::v1::Container| {
            let l = c
                .resources
                .as_ref()
                .and_then(|r| r.limits.as_ref())
                .and_then(|l| l.get("ephemeral-storage"))
                .and_then(limit);
            (c.name.clone(), l)
        };
        let init: Vec<_> = spec.init_containers.iter().flatten().map(of).collect();
        let main: Vec<_> = spec.containers.iter().map(of).collect();
        // kube's PodLimits: the containers' limits summed (those without one add
        // nothing), or an init container's if larger.
        let bytes = |l: &[(String, Option<Limit>)]| {
            l.iter()
                .filter_map(|(_, l)| l.as_ref().map(|l| l.bytes))
                .collect::<Vec<_>>()
        };
        let (sum, init_max) = (bytes(&main), bytes(&init).into_iter().max());
        let pod_limit = (!sum.is_empty() || init_max.is_some()).then(|| {
            let bytes = sum.iter().sum::<u64>().max(init_max.unwrap_or(0));
            Limit {
                bytes,
                text: format_bytes(bytes),
            }
        });
        let containers: Vec<_> = init.into_iter().chain(main).collect();
        if empty_dirs.is_empty() && containers.iter().all(|(_, l)| l.is_none()) {
            return None;
        }
        Some(Limits {
            empty_dirs,
            all_empty_dirs,
            containers,
            pod: pod_limit,
            dirs,
            uid: pod.metadata.uid.clone().unwrap_or_default(),
        })
    }

    /// Measures the pod (blocking: it walks directories); why it must be evicted, if it
    /// must.
    pub fn exceeded(&self) -> Option<String> {
        for (name, dir, l) in &self.empty_dirs {
            if usage(dir) > l.bytes {
                return Some(format!(
                    "Usage of EmptyDir volume {name:?} exceeds the limit {:?}. ",
                    l.text
                ));
            }
        }
        let used: Vec<u64> = self
            .containers
            .iter()
            .map(|(name, _)| self.container_usage(name))
            .collect();
        if let Some(l) = &self.pod {
            let volumes: u64 = self.all_empty_dirs.iter().map(|d| usage(d)).sum();
            if used.iter().sum::<u64>() + volumes > l.bytes {
                return Some(format!(
                    "Pod ephemeral local storage usage exceeds the total limit of containers {}. ",
                    l.text
                ));
            }
        }
        for ((name, l), used) in self.containers.iter().zip(used) {
            if let Some(l) = l.as_ref().filter(|l| used > l.bytes) {
                return Some(format!(
                    "Container {name} exceeded its local ephemeral storage limit {:?}. ",
                    l.text
                ));
            }
        }
        None
    }

    /// A container's writable layers (every run's bundle still on the node) and logs.
    fn container_usage(&self, name: &str) -> u64 {
        let prefix = format!("{}-{name}-", self.uid);
        let layers: u64 = std::fs::read_dir(&self.dirs.containers)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix(&prefix))
                    .is_some_and(|run| run.parse::<u32>().is_ok())
            })
            .map(|e| usage(&e.path().join("upper")))
            .sum();
        layers + usage(&self.dirs.logs.join(path_element(name)))
    }
}

/// A limited pod's measuring: every [`CHECK_EVERY`], off the async threads.
pub(super) struct Watch {
    limits: std::sync::Arc<Limits>,
    next: tokio::time::Instant,
    job: Option<tokio::task::JoinHandle<Option<String>>>,
}

impl Watch {
    pub(super) fn new(limits: Limits) -> Watch {
        Watch {
            limits: std::sync::Arc::new(limits),
            next: tokio::time::Instant::now() + CHECK_EVERY,
            job: None,
        }
    }

    /// Resolves when the pod has gone past a limit: why it is evicted. Cancel-safe: a
    /// measurement under way is kept for the next call.
    pub(super) async fn exceeded(&mut self) -> String {
        loop {
            if self.job.is_none() {
                tokio::time::sleep_until(self.next).await;
                let limits = self.limits.clone();
                self.job = Some(tokio::task::spawn_blocking(move || limits.exceeded()));
            }
            let found = self.job.as_mut().expect("just set").await.ok().flatten();
            self.job = None;
            self.next = tokio::time::Instant::now() + CHECK_EVERY;
            if let Some(message) = found {
                return message;
            }
        }
    }
}

/// A quantity for a byte count, as kube's `Quantity.String()` writes a sum (binary
/// suffixes where exact).
fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    let mut n = bytes;
    let mut unit = "";
    for u in UNITS {
        if n == 0 || !n.is_multiple_of(1024) {
            break;
        }
        n /= 1024;
        unit = u;
    }
    format!("{n}{unit}")
}

/// The disk space a directory tree takes (allocated blocks, as `du`), staying on its
/// file system (a mounted root inside is not counted) and following no links.
pub fn usage(dir: &Path) -> u64 {
    let Ok(top) = std::fs::symlink_metadata(dir) else {
        return 0;
    };
    let dev = top.dev();
    let mut total = top.blocks() * 512;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.dev() != dev {
                continue;
            }
            total += m.blocks() * 512;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    fn dirs(root: &Path) -> PodDirs {
        PodDirs {
            sandbox: root.join("sandbox"),
            logs: root.join("logs"),
            containers: root.join("bundles"),
        }
    }

    fn fill(path: &Path, bytes: usize) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, vec![7u8; bytes]).unwrap();
    }

    #[test]
    fn a_pod_without_limits_is_not_measured() {
        let p = pod(serde_json::json!({"metadata": {"uid": "u"}, "spec": {
            "containers": [{"name": "c"}], "volumes": [{"name": "v", "emptyDir": {}}]}}));
        assert!(Limits::of(&p, dirs(Path::new("/x"))).is_none());
    }

    #[test]
    fn each_limit_is_checked_with_the_kubelets_message() {
        let root = tempfile::tempdir().unwrap();
        let d = dirs(root.path());
        let p = pod(serde_json::json!({"metadata": {"uid": "u"}, "spec": {
            "containers": [
                {"name": "a", "resources": {"limits": {"ephemeral-storage": "1Mi"}}},
                {"name": "b", "resources": {"limits": {"ephemeral-storage": "3Mi"}}}],
            "volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": "1Mi"}},
                        {"name": "other", "emptyDir": {}}]}}));
        let l = Limits::of(&p, d.clone()).unwrap();
        assert_eq!(l.exceeded(), None);

        // A's writable layer (a run's bundle) past its own limit.
        fill(&d.containers.join("u-a-0/upper/big"), 1_200_000);
        assert_eq!(
            l.exceeded().unwrap(),
            "Container a exceeded its local ephemeral storage limit \"1Mi\". "
        );
        // Another pod's or another container's bundle is not a's.
        std::fs::rename(d.containers.join("u-a-0"), d.containers.join("u-ab-0")).unwrap();
        assert_eq!(l.exceeded(), None);

        // The pod's total (4Mi) counts every emptyDir and the containers' logs.
        fill(&d.sandbox.join("volumes/other/f"), 2_500_000);
        fill(&d.logs.join("b/0.log"), 2_000_000);
        assert_eq!(
            l.exceeded().unwrap(),
            "Pod ephemeral local storage usage exceeds the total limit of containers 4Mi. "
        );

        fill(&d.sandbox.join("volumes/scratch/f"), 1_100_000);
        assert_eq!(
            l.exceeded().unwrap(),
            "Usage of EmptyDir volume \"scratch\" exceeds the limit \"1Mi\". "
        );
    }

    #[test]
    fn sums_are_written_as_quantities() {
        assert_eq!(format_bytes(4 << 20), "4Mi");
        assert_eq!(format_bytes(1536 << 10), "1536Ki");
        assert_eq!(format_bytes(1000), "1000");
        assert_eq!(format_bytes(0), "0");
    }
}
