//! The first scheduler: binds each pod without a node to a Ready node that fits it — its
//! resource requests, its `nodeSelector` (including its RuntimeClass's), the node's taints —
//! preferring the least allocated node. A pod that fits nowhere stays Pending with a
//! `FailedScheduling` event and `PodScheduled=False` in kube-scheduler's words. It is a
//! plain reconcile function, so a fuller scheduler can replace it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::{json, Value};

use crate::events::{Event, Events, Recorder};
use crate::objects::{now_string, ObjectError, Objects, Target, WriteOptions};
use crate::registry::decode;
use crate::runtime::{self, Action, Queue};

pub(crate) mod framework;

pub use framework::Scoring;
use framework::{NodeEntry, NodeState, Nodes, Placed, PodInfo, Prepared, FILTERS};

pub const SCHEDULER_NAME: &str = "default-scheduler";
/// An unschedulable pod is tried again when the cluster changes in a way that may let it
/// fit (a node comes or changes, a pod goes), and at the latest after this long (kube's
/// podMaxInUnschedulablePodsDuration is 5 minutes).
const UNSCHEDULABLE_FLUSH: Duration = Duration::from_secs(60);
/// Bindings written at once: each waits for the disk, and concurrent writes share one
/// group commit, so many in flight make many bindings per fsync.
const BINDINGS_IN_FLIGHT: usize = 512;
/// How soon a pod whose attempt raced with a cluster change is tried again.
const BACKOFF: Duration = Duration::from_secs(1);

/// What the scheduler knows without asking the store, kept from the shared cache: the
/// nodes, and the bound, unfinished pods with what they request and carry (labels,
/// anti-affinity, host ports). A decision is made and assumed under one lock, so
/// concurrent reconciles never double-book a node.
#[derive(Default)]
pub struct Cache {
    state: std::sync::Mutex<CacheState>,
    loaded: tokio::sync::Notify,
    pods_loaded: std::sync::atomic::AtomicBool,
    nodes_loaded: std::sync::atomic::AtomicBool,
    scoring: Scoring,
}

#[derive(Default)]
struct CacheState {
    /// namespace/name -> (uid, placement)
    placed: HashMap<String, (String, Placed)>,
    /// Placed pods with required anti-affinity terms (every decision must respect them).
    with_anti_affinity: usize,
    /// Decisions start where the last one stopped (kube's nextStartNodeIndex), so large
    /// clusters are not always searched from the same end.
    nodes: Nodes,
    next_start: usize,
    /// Picks among equally scored nodes in turn.
    ties: usize,
    /// Pods that fit nowhere, waiting for a change of the cluster (kube's
    /// unschedulablePods queue).
    unschedulable: std::collections::HashSet<String>,
    /// How many times the unschedulable pods were sent back to the queue: a decision taken
    /// before the latest such move may have missed the change that caused it.
    moves: u64,
}

impl CacheState {
    fn assume(&mut self, key: &str, uid: &str, node: &str, info: Arc<PodInfo>) {
        self.forget(key, None);
        if let Some(n) = self.nodes.get_mut(node) {
            n.place(&info);
        }
        if !info.anti_affinity.is_empty() {
            self.with_anti_affinity += 1;
        }
        let placed = Placed {
            node: node.to_string(),
            info,
        };
        self.placed
            .insert(key.to_string(), (uid.to_string(), placed));
    }

    /// Drops a placement (only the one of pod `uid`, when given).
    fn forget(&mut self, key: &str, uid: Option<&str>) {
        if uid.is_some_and(|uid| self.placed.get(key).is_some_and(|(u, _)| u != uid)) {
            return;
        }
        if let Some((_, p)) = self.placed.remove(key) {
            if let Some(n) = self.nodes.get_mut(&p.node) {
                n.unplace(&p.info);
            }
            if !p.info.anti_affinity.is_empty() {
                self.with_anti_affinity -= 1;
            }
        }
    }

    fn upsert_node(&mut self, node: &Node) {
        let entry = NodeEntry::new(node);
        match self.nodes.get_mut(&entry.name) {
            Some(n) => n.entry = entry,
            None => {
                let mut n = NodeState::new(entry);
                for (_, p) in self.placed.values() {
                    if p.node == n.entry.name {
                        n.place(&p.info);
                    }
                }
                self.nodes.insert(n);
            }
        }
    }

    fn remove_node(&mut self, name: &str) {
        self.nodes.remove(name);
    }
}

/// What the cache reads of each pod change, read once.
#[derive(Clone, Copy)]
struct PodFacts<'a> {
    uid: &'a str,
    /// Bound to this node.
    node: Option<&'a str>,
    /// Succeeded or Failed.
    terminal: bool,
}

impl<'a> PodFacts<'a> {
    fn of(p: &'a Value) -> PodFacts<'a> {
        let str_at = |ptr| p.pointer(ptr).and_then(Value::as_str).unwrap_or_default();
        PodFacts {
            uid: str_at("/metadata/uid"),
            node: Some(str_at("/spec/nodeName")).filter(|n| !n.is_empty()),
            terminal: matches!(str_at("/status/phase"), "Succeeded" | "Failed"),
        }
    }
}

/// The outcome of one scheduling decision.
enum Decision {
    /// Assumed on this node; the binding is still to be written.
    Place(String),
    /// Already assumed (its binding is in flight).
    InFlight,
    /// Fits nowhere; the cache's move count when decided.
    Unschedulable(String, u64),
}

fn key_of(p: &Pod) -> String {
    format!(
        "{}/{}",
        p.metadata.namespace.as_deref().unwrap_or_default(),
        p.metadata.name.as_deref().unwrap_or_default()
    )
}

impl Cache {
    pub fn new(scoring: Scoring) -> Cache {
        Cache {
            scoring,
            ..Default::default()
        }
    }

    /// Keeps the placement of a bound, unfinished pod (decoded only when new); a pending
    /// pod keeps one the scheduler assumed for it (its own event may come after the
    /// decision); a finished pod's placement goes.
    fn observe(state: &mut CacheState, key: &str, p: &Value, facts: &PodFacts) {
        let PodFacts {
            uid,
            node,
            terminal,
        } = *facts;
        match node {
            Some(node) if !terminal => {
                let known = state
                    .placed
                    .get(key)
                    .is_some_and(|(u, pl)| u == uid && pl.node == node);
                if !known {
                    if let Ok(pod) = decode::<Pod>(p) {
                        state.assume(key, uid, node, Arc::new(PodInfo::new(&pod)));
                    }
                }
            }
            None if !terminal => {}
            _ => state.forget(key, Some(uid)),
        }
    }

    /// Filters every node (until enough fit), scores those that fit, and assumes the pod
    /// on the best.
    fn decide(&self, pod: &Pod) -> Decision {
        let mut guard = self.state.lock().expect("scheduler cache");
        let st = &mut *guard;
        let key = key_of(pod);
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        if st.placed.get(&key).is_some_and(|(u, _)| u == uid) {
            return Decision::InFlight;
        }
        let info = Arc::new(PodInfo::new(pod));
        let needs_prepare = st.with_anti_affinity > 0
            || !info.affinity.is_empty()
            || !info.anti_affinity.is_empty()
            || !info.preferred_affinity.is_empty()
            || !info.preferred_anti_affinity.is_empty()
            || !info.spread.is_empty();
        let pre = if needs_prepare {
            Prepared::new(&info, &st.nodes, st.placed.values().map(|(_, p)| p))
        } else {
            Prepared::default()
        };
        let total = st.nodes.len();
        let want = framework::feasible_to_find(total);
        let filters: Vec<&framework::Filter> = FILTERS
            .iter()
            .filter(|f| (f.applies)(&info, &pre))
            .collect();
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        let mut feasible: Vec<&NodeState> = Vec::with_capacity(want.min(total));
        let start = if total == 0 { 0 } else { st.next_start % total };
        let mut processed = 0;
        for i in 0..total {
            if feasible.len() >= want {
                break;
            }
            processed += 1;
            let node = st.nodes.at((start + i) % total);
            let failed = filters
                .iter()
                .find_map(|f| (f.check)(&info, node, &pre).err().map(|why| (f.name, why)));
            match failed {
                Some((plugin, why)) => {
                    tracing::trace!(pod = %key, node = %node.entry.name, plugin, %why, "filtered out");
                    *reasons.entry(why).or_default() += 1
                }
                None => feasible.push(node),
            }
        }
        if feasible.is_empty() {
            return Decision::Unschedulable(framework::failure_message(total, &reasons), st.moves);
        }
        let scores = framework::score(&info, &feasible, &pre, self.scoring);
        let best = scores.iter().copied().max().unwrap_or(0);
        let tied: Vec<usize> = (0..scores.len()).filter(|i| scores[*i] == best).collect();
        let chosen = feasible[tied[st.ties % tied.len()]].entry.name.clone();
        st.ties = st.ties.wrapping_add(1);
        st.next_start = (start + processed) % total.max(1);
        st.assume(&key, uid, &chosen, info);
        Decision::Place(chosen)
    }

    async fn wait_loaded(&self) {
        use std::sync::atomic::Ordering::Acquire;
        loop {
            let waiting = self.loaded.notified();
            if self.pods_loaded.load(Acquire) && self.nodes_loaded.load(Acquire) {
                return;
            }
            waiting.await;
        }
    }

    fn mark_loaded(&self, flag: &std::sync::atomic::AtomicBool) {
        flag.store(true, std::sync::atomic::Ordering::Release);
        self.loaded.notify_waiters();
    }

    /// Follows the shared cache's pods and nodes; queues pods to schedule: new unbound
    /// pods and ones whose spec changed, and the unschedulable ones when a node comes or
    /// changes or a pod goes (freeing room).
    fn follow(self: &Arc<Self>, shared: &runtime::Cache, queue: &Arc<Queue>) {
        let (pods, nodes) = (shared.of("", "v1", "pods"), shared.of("", "v1", "nodes"));
        let (me, q) = (self.clone(), queue.clone());
        pods.on_change(move |c| {
            // Read as JSON: most changes are status writes of bound pods, and decoding
            // each into a typed Pod cost more than scheduling.
            let p = c.object();
            let key = runtime::key_of(p);
            let facts = PodFacts::of(p);
            let (node, terminal) = (facts.node, facts.terminal);
            let mut st = me.state.lock().expect("scheduler cache");
            match &c.new {
                None => {
                    st.forget(&key, Some(facts.uid));
                    st.unschedulable.remove(&key);
                    Self::retry_unschedulable(&mut st, &q);
                }
                Some(new) => {
                    Self::observe(&mut st, &key, p, &facts);
                    // A status write (ours among them) does not make a pod schedulable.
                    let spec_changed = c
                        .old
                        .as_ref()
                        .is_none_or(|o| o.get("spec") != new.get("spec"));
                    if node.is_none() && spec_changed {
                        st.unschedulable.remove(&key);
                        q.add(key);
                    }
                    if node.is_some() && terminal {
                        Self::retry_unschedulable(&mut st, &q);
                    }
                }
            }
        });
        let (me, q) = (self.clone(), queue.clone());
        nodes.on_change(move |c| {
            let Ok(n) = decode::<Node>(c.object()) else {
                return;
            };
            let name = n.metadata.name.clone().unwrap_or_default();
            let mut st = me.state.lock().expect("scheduler cache");
            if c.new.is_none() {
                st.remove_node(&name);
                return;
            }
            // Only what scheduling reads: a heartbeat alone changes nothing.
            let relevant = st
                .nodes
                .get(&name)
                .is_none_or(|old| old.entry != NodeEntry::new(&n));
            st.upsert_node(&n);
            if relevant {
                Self::retry_unschedulable(&mut st, &q);
            }
        });
        let me = self.clone();
        tokio::spawn(async move {
            pods.synced().await;
            me.mark_loaded(&me.pods_loaded);
            nodes.synced().await;
            me.mark_loaded(&me.nodes_loaded);
        });
        let (me, q) = (self.clone(), queue.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(UNSCHEDULABLE_FLUSH).await;
                Self::retry_unschedulable(&mut me.state.lock().expect("scheduler cache"), &q);
            }
        });
    }

    fn retry_unschedulable(st: &mut CacheState, queue: &Queue) {
        st.moves += 1;
        for key in st.unschedulable.drain() {
            queue.add(key);
        }
    }
}

/// Starts the scheduler over the shared cache.
pub fn spawn(shared: &Arc<runtime::Cache>, scoring: Scoring, events: &Arc<Events>) {
    let cache = Arc::new(Cache::new(scoring));
    let queue = Queue::with_concurrency(BINDINGS_IN_FLIGHT);
    cache.follow(shared, &queue);
    let pods = shared.of("", "v1", "pods");
    let objects = shared.objects().clone();
    let events = events.recorder(SCHEDULER_NAME);
    runtime::spawn_controller(SCHEDULER_NAME, queue, move |key| {
        let (objects, cache, pods) = (objects.clone(), cache.clone(), pods.clone());
        let events = events.clone();
        async move {
            let (ns, name) = runtime::split_key(&key);
            match pods.get(ns, name) {
                Some(pod) => reconcile(objects, cache, &events, &pod).await,
                None => Ok(Action::Done),
            }
        }
    });
}

/// Schedules one pod; the controller runner calls this for every pod change (several pods
/// at once: decisions are serialized by the cache, bindings are written concurrently).
pub async fn reconcile(
    objects: Arc<Objects>,
    cache: Arc<Cache>,
    events: &Recorder,
    pod_value: &Value,
) -> Result<Action, ObjectError> {
    // Most pod changes are of bound pods (status writes): skip them before decoding.
    if pod_value["spec"]["nodeName"]
        .as_str()
        .is_some_and(|n| !n.is_empty())
    {
        return Ok(Action::Done);
    }
    // Straight from the cached JSON: the path-tracking decoder is for error messages to
    // clients, and this pod was admitted already.
    let pod = <Pod as serde::Deserialize>::deserialize(pod_value)
        .map_err(|e| ObjectError::BadRequest(e.to_string()))?;
    let spec = pod.spec.as_ref();
    let terminal = matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    );
    if pod.metadata.deletion_timestamp.is_some()
        || terminal
        || spec
            .and_then(|s| s.scheduler_name.as_deref())
            .unwrap_or(SCHEDULER_NAME)
            != SCHEDULER_NAME
    {
        return Ok(Action::Done);
    }
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    cache.wait_loaded().await;
    match cache.decide(&pod) {
        Decision::InFlight => Ok(Action::Done),
        Decision::Place(node_name) => {
            match objects
                .bind_pod_from(&ns, &name, &node_name, Some(pod_value))
                .await
            {
                Ok(_) => {}
                // Bound or deleted meanwhile: nothing to do.
                Err(ObjectError::Conflict { .. }) | Err(ObjectError::NotFound { .. }) => {
                    return Ok(Action::Done)
                }
                Err(e) => {
                    let uid = pod.metadata.uid.as_deref();
                    cache
                        .state
                        .lock()
                        .expect("scheduler cache")
                        .forget(&key_of(&pod), uid);
                    return Err(e);
                }
            }
            let msg = format!("Successfully assigned {ns}/{name} to {node_name}");
            events.publish(pod_value, "Pod", Event::normal("Scheduled", &msg));
            tracing::debug!(pod = %format!("{ns}/{name}"), node = %node_name, "scheduled");
            Ok(Action::Done)
        }
        Decision::Unschedulable(msg, moves) => {
            let event = Event::warning("FailedScheduling", &msg);
            events.record(pod_value, "Pod", event).await?;
            mark_unschedulable(&objects, &ns, &name, &msg).await?;
            let mut st = cache.state.lock().expect("scheduler cache");
            if st.moves != moves {
                // The cluster changed while deciding: try again soon (kube's back-off queue).
                return Ok(Action::RequeueAfter(BACKOFF));
            }
            st.unschedulable.insert(key_of(&pod));
            Ok(Action::Done)
        }
    }
}

/// Sets `PodScheduled=False` with reason `Unschedulable` (once per message).
async fn mark_unschedulable(
    objects: &Objects,
    ns: &str,
    name: &str,
    msg: &str,
) -> Result<(), ObjectError> {
    let rt = objects
        .registry()
        .find("", "v1", "pods")
        .expect("pods are served");
    let result = objects
        .update_with(rt, Some(ns), name, Target::Status, &WriteOptions::default(), |old| {
            let mut pod = old.clone();
            let mut conditions: Vec<Value> = pod["status"]["conditions"].as_array().cloned().unwrap_or_default();
            if conditions.iter().any(|c| c["type"] == "PodScheduled" && c["message"] == msg) {
                return Ok(pod);
            }
            conditions.retain(|c| c["type"] != "PodScheduled");
            conditions.push(json!({"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": msg, "lastProbeTime": null, "lastTransitionTime": now_string()}));
            pod["status"]["conditions"] = Value::Array(conditions);
            Ok(pod)
        })
        .await;
    match result {
        Ok(_) | Err(ObjectError::NotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::ListOptions;
    use crate::registry::Registry;
    use crate::store::SledStore;

    async fn cluster() -> (Arc<Objects>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(dir.path(), 1000).unwrap());
        let objects = Arc::new(Objects::new(store, Arc::new(Registry::new())));
        let reg = objects.registry();
        let w = WriteOptions::default();
        objects
            .create(
                reg.find("", "v1", "namespaces").unwrap(),
                None,
                json!({"metadata": {"name": "default"}}),
                &w,
            )
            .await
            .unwrap();
        objects.create(reg.find("node.k8s.io", "v1", "runtimeclasses").unwrap(), None, json!({"metadata": {"name": "wasmtime"}, "handler": "wasmtime", "scheduling": {"nodeSelector": {"runtime.skiff.dev/wasm": "true"}}}), &w).await.unwrap();
        for (name, wasm, ready) in [
            ("plain", false, true),
            ("edge", true, true),
            ("down", true, false),
        ] {
            let mut labels = json!({"kubernetes.io/hostname": name});
            if wasm {
                labels["runtime.skiff.dev/wasm"] = json!("true");
            }
            let node = json!({"metadata": {"name": name, "labels": labels}, "status": {
                "allocatable": {"cpu": "2", "memory": "1Gi", "pods": "110"},
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}});
            objects
                .create(reg.find("", "v1", "nodes").unwrap(), None, node, &w)
                .await
                .unwrap();
        }
        (objects, dir)
    }

    /// A scheduler cache filled from the shared watched cache, as `spawn` makes it (its
    /// queue is not worked: the tests call `reconcile` themselves).
    async fn loaded(objects: &Arc<Objects>) -> Arc<Cache> {
        let shared = runtime::Cache::new(objects.clone());
        let cache = Arc::new(Cache::default());
        cache.follow(&shared, &Queue::new());
        cache.wait_loaded().await;
        cache
    }

    async fn schedule(objects: &Arc<Objects>, pod: Value) -> (Value, Action) {
        let rt = objects.registry().find("", "v1", "pods").unwrap();
        let name = pod["metadata"]["name"].as_str().unwrap().to_string();
        let created = objects
            .create(rt, Some("default"), pod, &WriteOptions::default())
            .await
            .unwrap();
        let cache = loaded(objects).await;
        let created: Value = serde_json::from_slice(&created.object).unwrap();
        let events = Events::start(objects.clone()).recorder(SCHEDULER_NAME);
        let action = reconcile(objects.clone(), cache, &events, &created)
            .await
            .unwrap();
        (
            objects
                .get_value(rt, Some("default"), &name)
                .await
                .unwrap()
                .0,
            action,
        )
    }

    async fn events_for(objects: &Objects, name: &str) -> Vec<Value> {
        let rt = objects.registry().find("", "v1", "events").unwrap();
        let all = objects
            .list(rt, Some("default"), &ListOptions::default())
            .await
            .unwrap();
        all.items
            .iter()
            .map(|b| serde_json::from_slice::<Value>(b).unwrap())
            .filter(|e| e["involvedObject"]["name"] == name)
            .collect()
    }

    #[tokio::test]
    async fn wasm_pods_go_to_ready_wasm_nodes() {
        let (objects, _d) = cluster().await;
        let pod = json!({"metadata": {"name": "w"}, "spec": {"runtimeClassName": "wasmtime", "containers": [{"name": "c", "image": "x"}]}});
        let (pod, action) = schedule(&objects, pod).await;
        assert_eq!(action, Action::Done);
        assert_eq!(pod["spec"]["nodeName"], "edge");
        assert_eq!(
            pod["spec"]["nodeSelector"]["runtime.skiff.dev/wasm"], "true",
            "RuntimeClass scheduling joins the selector"
        );
        // The event is written in the background.
        let mut evs = Vec::new();
        for _ in 0..100 {
            evs = events_for(&objects, "w").await;
            if !evs.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(evs[0]["reason"], "Scheduled");
        assert_eq!(evs[0]["message"], "Successfully assigned default/w to edge");
    }

    #[tokio::test]
    async fn unschedulable_pods_stay_pending_with_the_reason() {
        let (objects, _d) = cluster().await;
        let pod = json!({"metadata": {"name": "big"}, "spec": {"containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": "3"}}}]}});
        let (pod, action) = schedule(&objects, pod).await;
        assert_eq!(action, Action::Done);
        assert!(pod["spec"].get("nodeName").is_none());
        let msg = "0/3 nodes are available: 2 Insufficient cpu, 1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }. preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling.";
        let cond = crate::controllers::pods::condition(&pod, "PodScheduled")
            .unwrap()
            .clone();
        assert_eq!(
            (
                cond["status"].as_str(),
                cond["reason"].as_str(),
                cond["message"].as_str()
            ),
            (Some("False"), Some("Unschedulable"), Some(msg))
        );
        let evs = events_for(&objects, "big").await;
        assert_eq!(
            (
                evs[0]["reason"].as_str(),
                evs[0]["type"].as_str(),
                evs[0]["message"].as_str()
            ),
            (Some("FailedScheduling"), Some("Warning"), Some(msg))
        );
        let unknown = json!({"metadata": {"name": "nope"}, "spec": {"runtimeClassName": "missing", "containers": [{"name": "c", "image": "x"}]}});
        let rt = objects.registry().find("", "v1", "pods").unwrap();
        let err = objects
            .create(rt, Some("default"), unknown, &WriteOptions::default())
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "pods \"nope\" is forbidden: pod rejected: RuntimeClass \"missing\" not found"
        );
    }

    #[tokio::test]
    async fn concurrent_decisions_never_overcommit_a_node() {
        let (objects, _d) = cluster().await;
        let reg = objects.registry();
        let w = WriteOptions::default();
        // Only "edge" takes Wasm pods; it has room for two more.
        let nodes = reg.find("", "v1", "nodes").unwrap();
        crate::controllers::testing::edit(&objects, nodes, None, "edge", Target::Status, |n| {
            n["status"]["allocatable"]["pods"] = json!("2")
        })
        .await;
        let pods = reg.find("", "v1", "pods").unwrap();
        let mut created = Vec::new();
        for i in 0..4 {
            let pod = json!({"metadata": {"name": format!("w{i}")}, "spec": {"runtimeClassName": "wasmtime", "containers": [{"name": "c", "image": "x"}]}});
            let c = objects
                .create(pods, Some("default"), pod, &w)
                .await
                .unwrap();
            created.push(serde_json::from_slice::<Value>(&c.object).unwrap());
        }
        let cache = loaded(&objects).await;
        let events = Events::start(objects.clone()).recorder(SCHEDULER_NAME);
        let results = futures::future::join_all(
            created
                .iter()
                .map(|p| reconcile(objects.clone(), cache.clone(), &events, p)),
        )
        .await;
        assert!(results.iter().all(|r| matches!(r, Ok(Action::Done))));
        let waiting = cache.state.lock().unwrap().unschedulable.len();
        assert_eq!(waiting, 2, "two fit nowhere and wait for a change");
        let all = objects
            .list(pods, Some("default"), &ListOptions::default())
            .await
            .unwrap();
        let on_edge = all
            .items
            .iter()
            .map(|b| serde_json::from_slice::<Value>(b).unwrap())
            .filter(|p| p["spec"]["nodeName"] == "edge")
            .count();
        assert_eq!(on_edge, 2);
    }

    #[tokio::test]
    async fn unschedulable_pods_wait_for_a_cluster_change_instead_of_retrying() {
        let (objects, _d) = cluster().await;
        let shared = runtime::Cache::new(objects.clone());
        spawn(&shared, Scoring::default(), &Events::start(objects.clone()));
        let reg = objects.registry();
        let pods = reg.find("", "v1", "pods").unwrap();
        let w = WriteOptions::default();
        for i in 0..20 {
            let pod = json!({"metadata": {"name": format!("big{i}")}, "spec": {"containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": "3"}}}]}});
            objects
                .create(pods, Some("default"), pod, &w)
                .await
                .unwrap();
        }
        let marked = || async {
            let all = objects
                .list(pods, Some("default"), &ListOptions::default())
                .await
                .unwrap();
            all.items
                .iter()
                .map(|b| serde_json::from_slice::<Value>(b).unwrap())
                .filter(|p| p["status"]["conditions"][0]["reason"] == "Unschedulable")
                .count()
        };
        for _ in 0..200 {
            if marked().await == 20 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(marked().await, 20);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = objects.store().revision();
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(
            objects.store().revision(),
            before,
            "nothing changed, so nothing was retried or written"
        );
        // Room appears: every waiting pod is tried again and bound.
        let nodes = reg.find("", "v1", "nodes").unwrap();
        crate::controllers::testing::edit(&objects, nodes, None, "plain", Target::Status, |n| {
            n["status"]["allocatable"]["cpu"] = json!("64")
        })
        .await;
        let mut bound = 0;
        for _ in 0..250 {
            let all = objects
                .list(pods, Some("default"), &ListOptions::default())
                .await
                .unwrap();
            bound = all
                .items
                .iter()
                .map(|b| serde_json::from_slice::<Value>(b).unwrap())
                .filter(|p| p["spec"]["nodeName"] == "plain")
                .count();
            if bound == 20 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(bound, 20);
    }

    #[test]
    fn failure_messages_read_like_kube_scheduler() {
        let mut r = BTreeMap::new();
        r.insert("Insufficient cpu".to_string(), 1);
        r.insert(
            "node(s) didn't match Pod's node affinity/selector".to_string(),
            2,
        );
        assert_eq!(
            framework::failure_message(3, &r),
            "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't match Pod's node affinity/selector. preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling."
        );
        assert_eq!(
            framework::failure_message(0, &BTreeMap::new()),
            "no nodes available to schedule pods"
        );
    }
}
