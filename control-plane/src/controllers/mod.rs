//! Controllers: plain reconcile functions over the shared watched cache ([`cache`]), each
//! driven by a work queue of keys ([`spawn_controller`]); [`spawn_all`] composes them.

mod cache;
mod cronjob;
mod daemonset;
mod deployment;
mod endpoints;
mod garbage_collector;
mod job;
mod kubernetes_service;
mod namespace;
mod node_ipam;
mod node_lifecycle;
pub(crate) mod pods;
mod replicaset;
mod service_lb;
mod system_namespaces;

pub use cache::{key_of, split_key, Cache, Change, Informer};
pub use node_ipam::NodeIpamConfig;
pub use node_lifecycle::NodeLifecycleConfig;
pub use system_namespaces::ensure as ensure_system_namespaces;

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tracing::Instrument;

use crate::objects::{ObjectError, Objects, Written};
use crate::registry::ResourceType;
use crate::store::Revision;

/// What a reconcile asks for next.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Done,
    RequeueAfter(Duration),
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
    /// [`crate::cluster::start`] from the server it started).
    pub api_endpoint: Option<std::net::SocketAddr>,
}

/// Starts every control-plane controller and the scheduler over one shared cache.
pub fn spawn_all(objects: Arc<Objects>, config: ControllerConfig) -> Arc<Cache> {
    let cache = Cache::new(objects.clone());
    let ns = objects
        .registry()
        .find("", "v1", "namespaces")
        .expect("namespaces are served");
    run(&cache, ns, "namespace", namespace::reconcile);
    tokio::spawn(system_namespaces::run(objects.clone()));
    tokio::spawn(kubernetes_service::run(
        objects.clone(),
        config.api_endpoint,
    ));
    garbage_collector::spawn(&cache);
    replicaset::spawn(&cache, &replicaset::REPLICA_SET);
    deployment::spawn(&cache);
    daemonset::spawn(&cache);
    job::spawn(&cache, job::BACKOFF_BASE);
    cronjob::spawn(&cache);
    endpoints::spawn(&cache);
    service_lb::spawn(&cache);
    node_lifecycle::spawn(&cache, config.node_lifecycle);
    if let Some(ipam) = config.node_ipam {
        node_ipam::spawn(&cache, ipam);
    }
    replicaset::spawn(&cache, &replicaset::REPLICATION_CONTROLLER);
    crate::scheduler::spawn(&cache, config.scoring);
    cache
}

/// Rewrites `obj` (its main object or its status), provided it is still the object this
/// controller saw (the same uid, not one re-created under its name): `edit` gets the
/// current state and changes a copy. Waits until `informer`'s cache holds the write, and
/// returns it.
pub async fn update_same(
    objects: &Objects,
    informer: &Informer,
    obj: &Value,
    target: crate::objects::Target,
    mut edit: impl FnMut(&Value, &mut Value),
) -> Result<Value, ObjectError> {
    let s = |p: &str| obj.pointer(p).and_then(Value::as_str).unwrap_or_default();
    let (ns, name, uid) = (
        s("/metadata/namespace"),
        s("/metadata/name"),
        s("/metadata/uid"),
    );
    let rt = informer.rt;
    let w = objects
        .update_with(
            rt,
            Some(ns).filter(|n| !n.is_empty()),
            name,
            target,
            &crate::objects::WriteOptions::default(),
            |cur| {
                if cur.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid) {
                    return Err(ObjectError::conflict(rt, name));
                }
                let mut next = cur.clone();
                edit(cur, &mut next);
                Ok(next)
            },
        )
        .await?;
    informer.wait_for(written_rev(&w)).await;
    Ok(serde_json::from_slice(&w.object).unwrap_or_default())
}

/// Edits a list in an object's metadata (`ownerReferences`, `finalizers`), leaving the
/// field out when it ends empty, as Kubernetes serializes it. Returns the write's revision;
/// 0 if the object is gone.
pub async fn edit_meta_list(
    objects: &Objects,
    rt: &ResourceType,
    ns: Option<&str>,
    name: &str,
    field: &str,
    mut edit: impl FnMut(&mut Vec<Value>),
) -> Result<Revision, ObjectError> {
    let written = objects
        .update_with(
            rt,
            ns,
            name,
            crate::objects::Target::Main,
            &crate::objects::WriteOptions::default(),
            |cur| {
                let mut next = cur.clone();
                let meta = next["metadata"]
                    .as_object_mut()
                    .expect("objects have metadata");
                let mut list = meta
                    .get(field)
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                edit(&mut list);
                if list.is_empty() {
                    meta.remove(field);
                } else {
                    meta.insert(field.into(), Value::Array(list));
                }
                Ok(next)
            },
        )
        .await;
    match written {
        Ok(w) => Ok(written_rev(&w)),
        Err(ObjectError::NotFound { .. }) => Ok(0),
        Err(e) => Err(e),
    }
}

pub use crate::events::emit as emit_event;

/// How many objects a controller reconciles at once (never the same object twice at once):
/// their writes then share the store's group commits instead of queueing one by one.
const CONCURRENCY: usize = 32;

/// The revision of a write (the `resourceVersion` the store stamped on it).
pub fn written_rev(w: &Written) -> Revision {
    serde_json::from_slice::<Value>(&w.object)
        .ok()
        .and_then(|v| {
            v.pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
        })
        .unwrap_or(0)
}

/// A controller's work queue of object keys (`namespace/name`): each key once however
/// often it is added while waiting, at most [`CONCURRENCY`] running, never one key twice at
/// once (a key added while it runs is queued again when it ends).
pub struct Queue {
    state: std::sync::Mutex<QueueState>,
    ready: tokio::sync::Notify,
    /// How many keys may be reconciled at once.
    concurrency: usize,
}

impl Default for Queue {
    fn default() -> Self {
        Queue {
            state: Default::default(),
            ready: Default::default(),
            concurrency: CONCURRENCY,
        }
    }
}

#[derive(Default)]
struct QueueState {
    order: VecDeque<String>,
    waiting: HashSet<String>,
    running: HashSet<String>,
    failures: HashMap<String, u32>,
}

impl Queue {
    pub fn new() -> Arc<Queue> {
        Arc::default()
    }

    /// A queue running up to `concurrency` reconciles at once (the scheduler's bindings
    /// are cheap to decide and wait mostly on the disk: many share one commit).
    pub fn with_concurrency(concurrency: usize) -> Arc<Queue> {
        Arc::new(Queue {
            concurrency: concurrency.max(1),
            ..Default::default()
        })
    }

    pub fn add(&self, key: String) {
        let mut st = self.state.lock().expect("queue");
        if st.waiting.insert(key.clone()) && !st.running.contains(&key) {
            st.order.push_back(key);
            drop(st);
            self.ready.notify_one();
        }
    }

    /// The next key to reconcile, if a slot is free.
    fn next(&self) -> Option<String> {
        let mut st = self.state.lock().expect("queue");
        if st.running.len() >= self.concurrency {
            return None;
        }
        let key = st.order.pop_front()?;
        st.waiting.remove(&key);
        st.running.insert(key.clone());
        Some(key)
    }

    /// `key`'s reconcile ended: if it was added meanwhile, it is queued now. Returns the
    /// back-off for a failure (growing with consecutive failures of the key).
    fn done(&self, key: &str, failed: bool) -> Duration {
        let mut st = self.state.lock().expect("queue");
        st.running.remove(key);
        if st.waiting.contains(key) {
            st.order.push_back(key.to_string());
        }
        let n = if failed {
            let n = st.failures.entry(key.to_string()).or_default();
            *n += 1;
            *n
        } else {
            st.failures.remove(key);
            0
        };
        drop(st);
        self.ready.notify_one();
        Duration::from_millis(100 * 2u64.pow(n.min(8)))
    }

    /// Adds `key` after `delay`.
    pub fn add_after(self: &Arc<Self>, key: String, delay: Duration) {
        let q = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            q.add(key);
        });
    }
}

/// Runs a controller: reconciles the keys of `queue` as they come, requeueing as asked and
/// retrying failures with back-off.
pub fn spawn_controller<F, Fut>(name: &'static str, queue: Arc<Queue>, reconcile: F)
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Action, ObjectError>> + Send + 'static,
{
    let reconcile = Arc::new(reconcile);
    tokio::spawn(async move {
        loop {
            while let Some(key) = queue.next() {
                let (reconcile, queue) = (reconcile.clone(), queue.clone());
                tokio::spawn(async move {
                    let span = tracing::debug_span!("reconcile", controller = name, object = %key);
                    let result = reconcile(key.clone()).instrument(span).await;
                    let failed =
                        matches!(&result, Err(e) if !matches!(e, ObjectError::NotFound { .. }));
                    let backoff = queue.done(&key, failed);
                    match result {
                        Ok(Action::Done) | Err(ObjectError::NotFound { .. }) => {}
                        Ok(Action::RequeueAfter(d)) => queue.add_after(key, d),
                        Err(e) => {
                            tracing::warn!(controller = name, object = %key, error = %e, "reconcile failed");
                            queue.add_after(key, backoff);
                        }
                    }
                });
            }
            queue.ready.notified().await;
        }
    });
}

/// Queues the key of every object of `informer` that is added or changed.
pub fn queue_changes(informer: &Informer, queue: &Arc<Queue>) {
    let q = queue.clone();
    informer.on_change(move |c| {
        if c.new.is_some() {
            q.add(cache::key_of(c.object()));
        }
    });
}

/// Queues the controller (`namespace/name`) of every object of `informer` that changes or
/// goes, when that controller is of `kind` (owned objects mapped back to their owner).
pub fn queue_controllers(informer: &Informer, kind: &'static str, queue: &Arc<Queue>) {
    let q = queue.clone();
    informer.on_change(move |c| {
        for o in [c.old.as_deref(), c.new.as_deref()].into_iter().flatten() {
            if let Some(r) = pods::controller_ref(o).filter(|r| r["kind"] == kind) {
                let ns = o
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                q.add(format!("{ns}/{}", r["name"].as_str().unwrap_or("")));
            }
        }
    });
}

/// A controller of one resource whose reconcile takes the object itself (the cached
/// latest state of each changed object; deletions are not reconciled). Returns its queue.
pub fn run<F, Fut>(
    cache: &Arc<Cache>,
    rt: &'static ResourceType,
    name: &'static str,
    reconcile: F,
) -> Arc<Queue>
where
    F: Fn(Arc<Objects>, Value) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Action, ObjectError>> + Send + 'static,
{
    let queue = Queue::new();
    let informer = cache.informer(rt);
    queue_changes(&informer, &queue);
    let objects = cache.objects().clone();
    let reconcile = Arc::new(reconcile);
    spawn_controller(name, queue.clone(), move |key| {
        let (objects, informer, reconcile) = (objects.clone(), informer.clone(), reconcile.clone());
        async move {
            let (ns, n) = cache::split_key(&key);
            match informer.get(ns, n) {
                Some(obj) => reconcile(objects, (*obj).clone()).await,
                None => Ok(Action::Done),
            }
        }
    });
    queue
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_holds_each_key_once_and_never_runs_a_key_twice() {
        let q = Queue::default();
        q.add("ns/a".into());
        q.add("ns/b".into());
        q.add("ns/a".into());
        assert_eq!(q.next().as_deref(), Some("ns/a"));
        q.add("ns/a".into());
        assert_eq!(q.next().as_deref(), Some("ns/b"));
        assert!(q.next().is_none(), "a is running; it waits");
        q.done("ns/a", false);
        assert_eq!(q.next().as_deref(), Some("ns/a"));
        q.done("ns/a", false);
        q.done("ns/b", false);
        assert_eq!(q.done("ns/x", true), Duration::from_millis(200));
        assert_eq!(q.done("ns/x", true), Duration::from_millis(400));
        assert_eq!(q.done("ns/x", false), Duration::from_millis(100));
        assert!(q.next().is_none());
    }
}

/// A store with the `default` namespace, for controller tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::objects::WriteOptions;
    use crate::registry::Registry;
    use crate::store::SledStore;

    pub async fn objects() -> (Arc<Objects>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(dir.path(), 10_000).unwrap());
        let objects = Arc::new(Objects::new(store, Arc::new(Registry::new())));
        ensure_system_namespaces(&objects).await.unwrap();
        (objects, dir)
    }

    pub fn rt(objects: &Objects, group: &str, plural: &str) -> &'static ResourceType {
        let version = "v1";
        objects.registry().find(group, version, plural).unwrap()
    }

    pub async fn create(objects: &Objects, group: &str, plural: &str, obj: Value) -> Value {
        let w = objects
            .create(
                rt(objects, group, plural),
                Some("default"),
                obj,
                &WriteOptions::default(),
            )
            .await
            .unwrap();
        serde_json::from_slice(&w.object).unwrap()
    }

    pub async fn list(objects: &Objects, group: &str, plural: &str) -> Vec<Value> {
        let page = objects
            .list(
                rt(objects, group, plural),
                Some("default"),
                &Default::default(),
            )
            .await
            .unwrap();
        page.items
            .iter()
            .map(|b| serde_json::from_slice(b).unwrap())
            .collect()
    }

    /// Changes an object as `change` says (a test's `kubectl edit`), retrying on conflicts.
    pub async fn edit(
        objects: &Objects,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        target: crate::objects::Target,
        change: impl Fn(&mut Value),
    ) -> Written {
        objects
            .update_with(rt, ns, name, target, &WriteOptions::default(), |cur| {
                let mut next = cur.clone();
                change(&mut next);
                Ok(next)
            })
            .await
            .unwrap()
    }

    /// A watch of every object of `rt` from now on.
    pub fn watch_now(objects: &Objects, rt: &ResourceType) -> crate::objects::WatchStream {
        let from = objects.store().revision();
        objects
            .watch(rt, None, from, crate::objects::WatchFilter::default())
            .unwrap()
    }

    /// Polls `f` until it gives a value (30 s at most: a loaded CI machine runs a hundred
    /// of these tests at once on two cores).
    pub async fn eventually<T, Fut>(what: &str, mut f: impl FnMut() -> Fut) -> T
    where
        Fut: Future<Output = Option<T>>,
    {
        for _ in 0..1500 {
            if let Some(v) = f().await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("timed out waiting for {what}");
    }
}

#[cfg(test)]
pub(crate) mod kubelet {
    //! A stand-in for node agents in controller unit tests: every pod becomes Running and
    //! Ready shortly after it is created, and a pod marked for deletion goes.
    use super::*;
    use crate::objects::{Target, WriteOptions};
    use serde_json::json;

    /// What a pod does: runs, unless its annotations say it ends (`test.skiff.dev/exit`:
    /// 0 succeeds, else fails; `test.skiff.dev/fail-indexes`: those job indexes fail, the
    /// others succeed).
    fn outcome(p: &Value) -> &'static str {
        let a = |k: &str| {
            p.pointer("/metadata/annotations")
                .and_then(|a| a.get(k))
                .and_then(Value::as_str)
        };
        if let Some(failing) = a("test.skiff.dev/fail-indexes") {
            let index = a("batch.kubernetes.io/job-completion-index").unwrap_or("");
            return if failing.split(',').any(|i| i == index) {
                "Failed"
            } else {
                "Succeeded"
            };
        }
        match a("test.skiff.dev/exit") {
            Some("0") => "Succeeded",
            Some(_) => "Failed",
            None => "Running",
        }
    }

    pub fn spawn(objects: Arc<Objects>) {
        tokio::spawn(async move {
            let rt = testing::rt(&objects, "", "pods");
            loop {
                for p in testing::list(&objects, "", "pods").await {
                    let name = p["metadata"]["name"].as_str().unwrap().to_string();
                    if pods::is_terminating(&p) {
                        let opts = crate::objects::DeleteOptions {
                            grace_period_seconds: Some(0),
                            ..Default::default()
                        };
                        let _ = objects.delete(rt, Some("default"), &name, &opts).await;
                    } else if !pods::is_ready(&p) && !pods::is_terminal(&p) {
                        let phase = outcome(&p);
                        let _ = objects
                            .update_with(rt, Some("default"), &name, Target::Status, &WriteOptions::default(), |cur| {
                                let mut next = cur.clone();
                                next["status"]["phase"] = json!(phase);
                                let ready = if phase == "Running" { "True" } else { "False" };
                                next["status"]["conditions"] = json!([{"type": "Ready", "status": ready, "lastTransitionTime": crate::objects::now_string()}]);
                                Ok(next)
                            })
                            .await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        });
    }
}
