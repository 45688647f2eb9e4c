//! Node lifecycle, as kube-controller-manager's node lifecycle controller and taint
//! eviction: a node whose agent has not renewed its Lease (nor posted status) within the
//! grace period gets its conditions set to `Unknown`, its pods marked not ready, and the
//! `node.kubernetes.io/unreachable` taints (NoSchedule and NoExecute); a node reporting
//! `Ready=False` gets the `not-ready` ones. Pods on a node with NoExecute taints are
//! deleted once their tolerations run out (at once if they tolerate none), and their
//! controllers replace them elsewhere. Heartbeats are timed by this controller's own
//! clock when it sees them change, not by the agents' clocks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::pods::{self, str_at};
use crate::events::{Event, Events, Recorder};
use crate::objects::{now, now_string, DeleteOptions, ObjectError, Objects, Target, WriteOptions};
use crate::runtime::{self, cache, Action, Cache, Informer, Queue};

const COMPONENT: &str = "node-controller";
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
const NODE_INDEX: &str = "spec.nodeName";

#[derive(Clone, Debug)]
pub struct NodeLifecycleConfig {
    /// How often each node is looked at (kube's `--node-monitor-period`).
    pub monitor_period: Duration,
    /// How long a node may go without a heartbeat before it is `Unknown`
    /// (kube's `--node-monitor-grace-period`).
    pub grace_period: Duration,
}

impl Default for NodeLifecycleConfig {
    fn default() -> Self {
        NodeLifecycleConfig {
            monitor_period: Duration::from_secs(1),
            grace_period: Duration::from_secs(6),
        }
    }
}

struct Ctx {
    config: NodeLifecycleConfig,
    objects: Arc<Objects>,
    nodes: Arc<Informer>,
    pods: Arc<Informer>,
    /// Per node: the heartbeat last seen (lease renew time or Ready heartbeat time) and
    /// when this controller saw it change.
    probes: Mutex<HashMap<String, (String, Instant)>>,
    events: Recorder,
    /// Evictions are reported as the taint eviction controller, as in Kubernetes.
    evictions: Recorder,
}

impl Ctx {
    /// Notes a heartbeat value of `node`; a new value restarts its grace period.
    fn probe(&self, node: &str, beat: String) {
        let mut probes = self.probes.lock().expect("probes");
        match probes.get_mut(node) {
            Some((seen, at)) if *seen != beat => {
                *seen = beat;
                *at = Instant::now();
            }
            Some(_) => {}
            None => {
                probes.insert(node.to_string(), (beat, Instant::now()));
            }
        }
    }

    fn silent_for(&self, node: &str) -> Duration {
        let mut probes = self.probes.lock().expect("probes");
        // A node first seen now (say, after a restart of the control plane) gets a full
        // grace period.
        let (_, at) = probes
            .entry(node.to_string())
            .or_insert_with(|| (String::new(), Instant::now()));
        at.elapsed()
    }
}

pub fn spawn(cache: &Arc<Cache>, config: NodeLifecycleConfig, events: &Arc<Events>) {
    let ctx = Arc::new(Ctx {
        config,
        objects: cache.objects().clone(),
        nodes: cache.of("", "v1", "nodes"),
        pods: cache.of("", "v1", "pods"),
        probes: Mutex::default(),
        events: events.recorder(COMPONENT),
        evictions: events.recorder("taint-eviction-controller"),
    });
    ctx.pods.add_index(NODE_INDEX, |p| {
        Some(str_at(p, "/spec/nodeName").to_string()).filter(|n| !n.is_empty())
    });
    let queue = Queue::new();
    let (q, c) = (queue.clone(), ctx.clone());
    ctx.nodes.on_change(move |ch| {
        let Some(node) = ch.new.as_deref() else {
            return;
        };
        let name = str_at(node, "/metadata/name");
        if let Some(beat) =
            pods::condition(node, "Ready").and_then(|r| r["lastHeartbeatTime"].as_str())
        {
            c.probe(name, beat.to_string());
        }
        q.add(cache::key_of(node));
    });
    let c = ctx.clone();
    cache
        .objects()
        .registry()
        .find("coordination.k8s.io", "v1", "leases")
        .map(|rt| cache.informer(rt))
        .expect("leases are served")
        .on_change(move |ch| {
            let Some(lease) = ch.new.as_deref() else {
                return;
            };
            if str_at(lease, "/metadata/namespace") == "kube-node-lease" {
                let renew = str_at(lease, "/spec/renewTime").to_string();
                c.probe(str_at(lease, "/metadata/name"), renew);
            }
        });
    runtime::spawn_controller(COMPONENT, queue, move |key| reconcile(ctx.clone(), key));
}

async fn reconcile(ctx: Arc<Ctx>, key: String) -> Result<Action, ObjectError> {
    let (_, name) = cache::split_key(&key);
    let Some(node) = ctx.nodes.get(None, name) else {
        ctx.probes.lock().expect("probes").remove(name);
        return Ok(Action::Done);
    };
    let ready = pods::condition(&node, "Ready").map(|c| str_at(c, "/status").to_string());
    let silent = ctx.silent_for(name);
    if silent > ctx.config.grace_period && ready.as_deref() != Some("Unknown") {
        mark_unknown(&ctx, &node).await?;
        // The cache brings the change back here.
        return Ok(Action::Done);
    }
    let wanted: &[(&str, &str)] = match ready.as_deref() {
        Some("Unknown") => &[(UNREACHABLE, "NoSchedule"), (UNREACHABLE, "NoExecute")],
        Some("False") => &[(NOT_READY, "NoSchedule"), (NOT_READY, "NoExecute")],
        _ => &[],
    };
    if set_taints(&ctx, &node, wanted).await? {
        return Ok(Action::Done);
    }
    let next_eviction = evict(&ctx, &node).await?;
    let check = ctx.config.monitor_period;
    Ok(Action::RequeueAfter(
        next_eviction.map_or(check, |d| d.min(check)),
    ))
}

/// The conditions an agent posts, which its silence makes Unknown (kube's list: others,
/// such as NetworkUnavailable, are a network plugin's).
const AGENT_CONDITIONS: [&str; 4] = ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];

/// The agent went silent: its conditions become Unknown and its pods not ready.
async fn mark_unknown(ctx: &Ctx, node: &Value) -> Result<(), ObjectError> {
    let name = str_at(node, "/metadata/name").to_string();
    let at = now_string();
    ctx.objects
        .update_with(
            ctx.nodes.rt,
            None,
            &name,
            Target::Status,
            &WriteOptions::default(),
            |cur| {
                let mut next = cur.clone();
                if let Some(cs) = next
                    .pointer_mut("/status/conditions")
                    .and_then(Value::as_array_mut)
                {
                    let agents = cs
                        .iter_mut()
                        .filter(|c| AGENT_CONDITIONS.iter().any(|t| c["type"] == *t));
                    for c in agents {
                        if c["status"] != "Unknown" {
                            c["status"] = json!("Unknown");
                            c["reason"] = json!("NodeStatusUnknown");
                            c["message"] = json!("Kubelet stopped posting node status.");
                            c["lastTransitionTime"] = json!(at);
                        }
                    }
                }
                Ok(next)
            },
        )
        .await?;
    let msg = format!("Node {name} status is now: NodeNotReady");
    ctx.events
        .publish(node, "Node", Event::normal("NodeNotReady", &msg));
    for pod in ctx.pods.by_index(NODE_INDEX, &name) {
        if !pods::is_ready(&pod) || pods::is_terminal(&pod) {
            continue;
        }
        let r = ctx
            .objects
            .update_with(
                ctx.pods.rt,
                Some(str_at(&pod, "/metadata/namespace")),
                str_at(&pod, "/metadata/name"),
                Target::Status,
                &WriteOptions::default(),
                |cur| {
                    let mut next = cur.clone();
                    if let Some(cs) = next
                        .pointer_mut("/status/conditions")
                        .and_then(Value::as_array_mut)
                    {
                        for c in cs
                            .iter_mut()
                            .filter(|c| c["type"] == "Ready" || c["type"] == "ContainersReady")
                        {
                            c["status"] = json!("False");
                            c["lastTransitionTime"] = json!(at);
                        }
                    }
                    Ok(next)
                },
            )
            .await;
        match r {
            Ok(_) | Err(ObjectError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Makes the node's not-ready/unreachable taints exactly `wanted` (others untouched);
/// true if it wrote.
async fn set_taints(ctx: &Ctx, node: &Value, wanted: &[(&str, &str)]) -> Result<bool, ObjectError> {
    let taints: Vec<Value> = node
        .pointer("/spec/taints")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let ours = |t: &Value| t["key"] == UNREACHABLE || t["key"] == NOT_READY;
    let has = |k: &str, e: &str| taints.iter().any(|t| t["key"] == k && t["effect"] == e);
    let stale = taints.iter().any(|t| {
        ours(t)
            && !wanted
                .iter()
                .any(|(k, e)| t["key"] == *k && t["effect"] == *e)
    });
    if !stale && wanted.iter().all(|(k, e)| has(k, e)) {
        return Ok(false);
    }
    let at = now_string();
    let name = str_at(node, "/metadata/name").to_string();
    ctx.objects
        .update_with(
            ctx.nodes.rt,
            None,
            &name,
            Target::Main,
            &WriteOptions::default(),
            |cur| {
                let mut next = cur.clone();
                let mut list: Vec<Value> = cur
                    .pointer("/spec/taints")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                list.retain(|t| {
                    !ours(t)
                        || wanted
                            .iter()
                            .any(|(k, e)| t["key"] == *k && t["effect"] == *e)
                });
                for (k, e) in wanted {
                    if !list.iter().any(|t| t["key"] == *k && t["effect"] == *e) {
                        let mut t = json!({"key": k, "effect": e});
                        if *e == "NoExecute" {
                            t["timeAdded"] = json!(at);
                        }
                        list.push(t);
                    }
                }
                if list.is_empty() {
                    next["spec"].as_object_mut().map(|s| s.remove("taints"));
                } else {
                    next["spec"]["taints"] = Value::Array(list);
                }
                Ok(next)
            },
        )
        .await?;
    Ok(true)
}

/// Whether a toleration tolerates a taint (kube's `ToleratesTaint`).
pub fn tolerates(t: &Value, taint: &Value) -> bool {
    let (effect, key) = (str_at(t, "/effect"), str_at(t, "/key"));
    if !effect.is_empty() && effect != str_at(taint, "/effect") {
        return false;
    }
    if !key.is_empty() && key != str_at(taint, "/key") {
        return false;
    }
    match str_at(t, "/operator") {
        "Exists" => true,
        "" | "Equal" => str_at(t, "/value") == str_at(taint, "/value"),
        _ => false,
    }
}

/// How long a pod may stay on a node with these NoExecute taints: `None` for ever,
/// `Some(0)` if some taint is not tolerated at all. The shortest `tolerationSeconds` of
/// the tolerations used wins, counted from when the taint was added.
pub fn eviction_delay(pod: &Value, taints: &[&Value], now: jiff::Timestamp) -> Option<Duration> {
    let tolerations: Vec<&Value> = pod
        .pointer("/spec/tolerations")
        .and_then(Value::as_array)
        .map(|ts| ts.iter().collect())
        .unwrap_or_default();
    let mut delay: Option<Duration> = None;
    for taint in taints {
        let matching: Vec<&&Value> = tolerations.iter().filter(|t| tolerates(t, taint)).collect();
        if matching.is_empty() {
            return Some(Duration::ZERO);
        }
        // A toleration without seconds tolerates for ever.
        if matching
            .iter()
            .any(|t| t.get("tolerationSeconds").is_none_or(Value::is_null))
        {
            continue;
        }
        let secs = matching
            .iter()
            .filter_map(|t| t["tolerationSeconds"].as_i64())
            .min()
            .unwrap_or(0)
            .max(0);
        let added = taint["timeAdded"]
            .as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .unwrap_or(now);
        let since = now.duration_since(added).max(jiff::SignedDuration::ZERO);
        let left = jiff::SignedDuration::from_secs(secs) - since;
        let left = Duration::try_from(left).unwrap_or(Duration::ZERO);
        delay = Some(delay.map_or(left, |d| d.min(left)));
    }
    delay
}

/// Deletes the pods whose tolerations of the node's NoExecute taints ran out; returns how
/// soon the next one is due.
async fn evict(ctx: &Ctx, node: &Value) -> Result<Option<Duration>, ObjectError> {
    let taints: Vec<&Value> = node
        .pointer("/spec/taints")
        .and_then(Value::as_array)
        .map(|ts| ts.iter().filter(|t| t["effect"] == "NoExecute").collect())
        .unwrap_or_default();
    if taints.is_empty() {
        return Ok(None);
    }
    let name = str_at(node, "/metadata/name");
    let now = now();
    let mut next: Option<Duration> = None;
    for pod in ctx.pods.by_index(NODE_INDEX, name) {
        if pods::is_terminating(&pod) || pods::is_terminal(&pod) {
            continue;
        }
        match eviction_delay(&pod, &taints, now) {
            None => {}
            Some(d) if !d.is_zero() => next = Some(next.map_or(d, |n| n.min(d))),
            Some(_) => evict_pod(ctx, &pod).await?,
        }
    }
    Ok(next)
}

/// Marks the pod as disrupted (the `DisruptionTarget` condition) and deletes it.
async fn evict_pod(ctx: &Ctx, pod: &Value) -> Result<(), ObjectError> {
    let (ns, name) = (
        str_at(pod, "/metadata/namespace"),
        str_at(pod, "/metadata/name"),
    );
    let at = now_string();
    let marked = ctx
        .objects
        .update_with(ctx.pods.rt, Some(ns), name, Target::Status, &WriteOptions::default(), |cur| {
            let mut next = cur.clone();
            let mut cs: Vec<Value> = cur.pointer("/status/conditions").and_then(Value::as_array).cloned().unwrap_or_default();
            cs.retain(|c| c["type"] != "DisruptionTarget");
            cs.push(json!({"type": "DisruptionTarget", "status": "True", "reason": "DeletionByTaintManager",
                "message": "Taint manager: deleting due to NoExecute taint", "lastTransitionTime": at}));
            next["status"]["conditions"] = Value::Array(cs);
            Ok(next)
        })
        .await;
    match marked {
        Ok(_) => {}
        Err(ObjectError::NotFound { .. }) => return Ok(()),
        Err(e) => return Err(e),
    }
    let opts = DeleteOptions {
        precondition_uid: Some(str_at(pod, "/metadata/uid").to_string()),
        ..Default::default()
    };
    match ctx.objects.delete(ctx.pods.rt, Some(ns), name, &opts).await {
        Ok(_) | Err(ObjectError::NotFound { .. }) | Err(ObjectError::Conflict { .. }) => {}
        Err(e) => return Err(e),
    }
    let msg = format!("Marking for deletion Pod {ns}/{name}");
    ctx.evictions
        .publish(pod, "Pod", Event::normal("TaintManagerEviction", &msg));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerations_match_as_kube() {
        let taint = json!({"key": UNREACHABLE, "effect": "NoExecute"});
        assert!(tolerates(
            &json!({"key": UNREACHABLE, "operator": "Exists"}),
            &taint
        ));
        assert!(tolerates(&json!({"operator": "Exists"}), &taint));
        assert!(!tolerates(
            &json!({"key": NOT_READY, "operator": "Exists"}),
            &taint
        ));
        assert!(!tolerates(
            &json!({"key": UNREACHABLE, "operator": "Exists", "effect": "NoSchedule"}),
            &taint
        ));
        let valued = json!({"key": "gpu", "value": "a100", "effect": "NoSchedule"});
        assert!(tolerates(&json!({"key": "gpu", "value": "a100"}), &valued));
        assert!(!tolerates(
            &json!({"key": "gpu", "operator": "Equal", "value": "h100"}),
            &valued
        ));
    }

    #[test]
    fn eviction_waits_for_the_shortest_toleration_from_when_the_taint_came() {
        let at = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
        let taint =
            json!({"key": UNREACHABLE, "effect": "NoExecute", "timeAdded": "2026-01-01T00:00:00Z"});
        let pod = |tol: Value| json!({"spec": {"tolerations": tol}});
        let five = pod(
            json!([{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}]),
        );
        assert_eq!(
            eviction_delay(&five, &[&taint], at("2026-01-01T00:00:02Z")),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            eviction_delay(&five, &[&taint], at("2026-01-01T00:00:09Z")),
            Some(Duration::ZERO)
        );
        assert_eq!(
            eviction_delay(&pod(json!([])), &[&taint], at("2026-01-01T00:00:00Z")),
            Some(Duration::ZERO)
        );
        let forever = pod(json!([{"operator": "Exists"}]));
        assert_eq!(
            eviction_delay(&forever, &[&taint], at("2026-01-01T00:00:00Z")),
            None
        );
    }
}
