//! DaemonSets, as kube-controller-manager's: one pod on every node that should run it
//! (node affinity holds, taints tolerated), also nodes that join later; pods pinned to
//! their node by required node affinity on `metadata.name` (the scheduler binds them);
//! the daemon tolerations added; history kept as ControllerRevisions (`kubectl rollout
//! history|undo daemonset`); RollingUpdate within maxUnavailable (or maxSurge), OnDelete;
//! failed pods replaced; status as kube counts it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::{json, Value};

use super::deployment::template_hash;
use super::pods::{self, str_at};
use super::replicaset::set_owner;
use crate::events::{Event, Events, Recorder};
use crate::objects::{DeleteOptions, ObjectError, Objects, Target, WriteOptions};
use crate::registry::decode;
use crate::runtime::{self, cache, written_rev, Action, Cache, Informer, Queue};
use crate::scheduler::framework::{daemon_fit, NodeEntry, PodInfo};
use crate::selectors::label_selector_matches_json;
use crate::store::Revision;

const COMPONENT: &str = "daemonset-controller";
pub const HASH_LABEL: &str = "controller-revision-hash";
const GENERATION_LABEL: &str = "pod-template-generation";

struct Ctx {
    objects: Arc<Objects>,
    sets: Arc<Informer>,
    pods: Arc<Informer>,
    nodes: Arc<Informer>,
    revisions: Arc<Informer>,
    events: Recorder,
}

pub fn spawn(cache: &Arc<Cache>, events: &Arc<Events>) {
    let ctx = Arc::new(Ctx {
        objects: cache.objects().clone(),
        sets: cache.of("apps", "v1", "daemonsets"),
        pods: cache.of("", "v1", "pods"),
        nodes: cache.of("", "v1", "nodes"),
        revisions: cache.of("apps", "v1", "controllerrevisions"),
        events: events.recorder(COMPONENT),
    });
    let queue = Queue::new();
    runtime::queue_changes(&ctx.sets, &queue);
    super::queue_controllers(&ctx.pods, "DaemonSet", &queue);
    // A node that comes, goes or changes what it offers: every DaemonSet looks again.
    let (q, sets) = (queue.clone(), ctx.sets.clone());
    ctx.nodes.on_change(move |c| {
        let relevant = match (&c.old, &c.new) {
            (Some(o), Some(n)) => {
                o["metadata"]["labels"] != n["metadata"]["labels"]
                    || o["spec"] != n["spec"]
                    || pods::is_ready(o) != pods::is_ready(n)
            }
            _ => true,
        };
        if relevant {
            for ds in sets.list(None) {
                q.add(cache::key_of(&ds));
            }
        }
    });
    runtime::spawn_controller(COMPONENT, queue, move |key| reconcile(ctx.clone(), key));
}

/// The node a daemon pod is for: its nodeName, or the `metadata.name` its required node
/// affinity names (kube's GetTargetNodeName).
fn target_node(pod: &Value) -> Option<String> {
    let bound = str_at(pod, "/spec/nodeName");
    if !bound.is_empty() {
        return Some(bound.to_string());
    }
    let terms = pod
        .pointer("/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms")?
        .as_array()?;
    terms.iter().find_map(|t| {
        t["matchFields"].as_array()?.iter().find_map(|f| {
            (f["key"] == "metadata.name" && f["operator"] == "In")
                .then(|| f["values"][0].as_str().map(str::to_string))
                .flatten()
        })
    })
}

/// The tolerations every daemon pod gets (kube's AddOrUpdateDaemonPodTolerations): it
/// stays on nodes that are not ready, unreachable or under pressure, and goes on cordoned
/// ones.
fn add_daemon_tolerations(pod: &mut Value) {
    let host_network = pod["spec"]["hostNetwork"] == true;
    let mut wanted = vec![
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if host_network {
        wanted.push(("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    let spec = pod["spec"].as_object_mut().expect("a pod spec");
    let list = spec.entry("tolerations").or_insert_with(|| json!([]));
    if !list.is_array() {
        *list = json!([]);
    }
    let list = list.as_array_mut().expect("an array");
    for (key, effect) in wanted {
        if !list
            .iter()
            .any(|t| t["key"] == key && t["effect"] == effect)
        {
            list.push(json!({"key": key, "operator": "Exists", "effect": effect}));
        }
    }
}

/// The daemon pod of `ds` for `node`, from its template.
fn pod_for(ds: &Value, node: &str, hash: &str) -> Value {
    let mut pod = pods::from_template(
        &ds["spec"]["template"],
        &pods::pod_name_prefix(str_at(ds, "/metadata/name")),
        pods::owner_ref("apps/v1", "DaemonSet", ds),
    );
    pod["metadata"]["labels"][HASH_LABEL] = json!(hash);
    pod["metadata"]["labels"][GENERATION_LABEL] = json!(ds["metadata"]["generation"].to_string());
    pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] = json!({
        "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}]
    });
    add_daemon_tolerations(&mut pod);
    pod
}

/// The template as a daemon pod not yet pinned to a node (its own node affinity, the
/// daemon tolerations): what nodes are tested against.
fn template_info(ds: &Value, hash: &str) -> Result<PodInfo, ObjectError> {
    let mut probe = pod_for(ds, "", hash);
    let own = ds
        .pointer("/spec/template/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution")
        .cloned();
    let na = probe["spec"]["affinity"]["nodeAffinity"]
        .as_object_mut()
        .expect("pod_for sets node affinity");
    match own {
        Some(aff) => {
            na.insert("requiredDuringSchedulingIgnoredDuringExecution".into(), aff);
        }
        None => {
            na.remove("requiredDuringSchedulingIgnoredDuringExecution");
        }
    }
    let pod: Pod = decode(&probe).map_err(ObjectError::BadRequest)?;
    Ok(PodInfo::new(&pod))
}

/// Resolves `maxUnavailable`/`maxSurge` against the number of nodes.
fn resolve(v: &Value, total: i64, round_up: bool) -> i64 {
    match v {
        Value::Number(n) => n.as_i64().unwrap_or(0),
        Value::String(s) => match s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
            Some(p) if round_up => (p * total + 99) / 100,
            Some(p) => p * total / 100,
            None => s.parse().unwrap_or(0),
        },
        _ => 0,
    }
}

/// What a reconcile found on one node.
#[derive(Default)]
struct OnNode {
    should_run: bool,
    may_stay: bool,
    pods: Vec<Arc<Value>>,
}

async fn reconcile(ctx: Arc<Ctx>, key: String) -> Result<Action, ObjectError> {
    let (ns, name) = cache::split_key(&key);
    let Some(ds) = ctx.sets.get(ns, name) else {
        return Ok(Action::Done);
    };
    let ns = ns.unwrap_or_default();
    let Some(selector) = ds
        .pointer("/spec/selector")
        .and_then(|s| serde_json::from_value(s.clone()).ok())
    else {
        return Ok(Action::Done);
    };
    let uid = str_at(&ds, "/metadata/uid").to_string();
    let mut last_write: Revision = 0;
    // Claim: ours, and matching orphans (adopted).
    let mut mine = Vec::new();
    for p in ctx.pods.list(Some(ns)) {
        if pods::controlled_by(&p, &uid) {
            mine.push(p);
        } else if pods::controller_ref(&p).is_none()
            && !pods::is_terminating(&p)
            && !pods::is_terminating(&ds)
            && label_selector_matches_json(&selector, &p)
        {
            let owner = pods::owner_ref("apps/v1", "DaemonSet", &ds);
            let rev = set_owner(
                &ctx.objects,
                ctx.pods.rt,
                ns,
                str_at(&p, "/metadata/name"),
                |refs| {
                    if !refs.iter().any(|r| r["controller"] == true) {
                        refs.push(owner.clone());
                    }
                },
            )
            .await?;
            last_write = last_write.max(rev);
            mine.push(p);
        }
    }
    let collisions = ds.pointer("/status/collisionCount").and_then(Value::as_i64);
    let hash = template_hash(&ds["spec"]["template"], collisions);
    if pods::is_terminating(&ds) {
        return Ok(Action::Done);
    }
    last_write = last_write.max(sync_history(&ctx, &ds, ns, &hash).await?);

    let info = template_info(&ds, &hash)?;
    let mut nodes: HashMap<String, OnNode> = HashMap::new();
    for n in ctx.nodes.list(None) {
        let Ok(node) = decode::<Node>(&n) else {
            continue;
        };
        let (should_run, may_stay) = daemon_fit(&info, &NodeEntry::new(&node));
        nodes.insert(
            str_at(&n, "/metadata/name").to_string(),
            OnNode {
                should_run,
                may_stay,
                pods: Vec::new(),
            },
        );
    }
    let mut failed = Vec::new();
    for p in &mine {
        if pods::is_terminating(p) {
            continue;
        }
        if str_at(p, "/status/phase") == "Failed" {
            failed.push(p.clone());
            continue;
        }
        match target_node(p).and_then(|n| nodes.get_mut(&n)) {
            Some(on) => on.pods.push(p.clone()),
            // Its node is gone: the pod goes too.
            None => failed.push(p.clone()),
        }
    }
    let min_ready = ds["spec"]["minReadySeconds"].as_i64().unwrap_or(0);
    let now = crate::objects::now();
    let available = |p: &Value| pods::is_available(p, min_ready, now);
    let current = |p: &Value| str_at(p, &format!("/metadata/labels/{HASH_LABEL}")) == hash;

    let mut to_create: Vec<String> = Vec::new();
    let mut to_delete: Vec<Arc<Value>> = failed;
    for (node, on) in &mut nodes {
        if on.should_run && on.pods.is_empty() {
            to_create.push(node.clone());
        } else if !on.may_stay {
            to_delete.append(&mut on.pods);
        } else if on.pods.len() > 1 {
            // Keep one: the current one if any, else the oldest.
            on.pods.sort_by(|a, b| {
                current(b).cmp(&current(a)).then_with(|| {
                    str_at(a, "/metadata/creationTimestamp")
                        .cmp(str_at(b, "/metadata/creationTimestamp"))
                })
            });
            let surplus: Vec<Arc<Value>> = on.pods.drain(1..).collect();
            // While surging, an old pod waits for its new neighbour to be available.
            let keep_old = on.pods.first().is_some_and(|p| !available(p))
                && surplus.iter().any(|p| !current(p));
            if !keep_old {
                to_delete.extend(surplus);
            } else {
                on.pods.extend(surplus);
            }
        }
    }
    if str_at(&ds, "/spec/updateStrategy/type") != "OnDelete" {
        rolling_update(
            &ds,
            &nodes,
            &mut to_create,
            &mut to_delete,
            &available,
            &current,
        );
    }
    to_create.sort();
    let pod_rt = ctx.pods.rt;
    for node in &to_create {
        let w = ctx
            .objects
            .create(
                pod_rt,
                Some(ns),
                pod_for(&ds, node, &hash),
                &WriteOptions::default(),
            )
            .await;
        match w {
            Ok(w) => {
                last_write = last_write.max(written_rev(&w));
                let created: Value = serde_json::from_slice(&w.object).unwrap_or_default();
                let msg = format!("Created pod: {}", str_at(&created, "/metadata/name"));
                ctx.events
                    .publish(&ds, "DaemonSet", Event::normal("SuccessfulCreate", &msg));
            }
            Err(e) => {
                let msg = format!("Error creating: {e}");
                ctx.events
                    .publish(&ds, "DaemonSet", Event::warning("FailedCreate", &msg));
                return Err(e);
            }
        }
    }
    for pod in &to_delete {
        let opts = DeleteOptions {
            precondition_uid: Some(str_at(pod, "/metadata/uid").to_string()),
            ..Default::default()
        };
        let pod_name = str_at(pod, "/metadata/name");
        match ctx.objects.delete(pod_rt, Some(ns), pod_name, &opts).await {
            Ok(w) => {
                last_write = last_write.max(written_rev(&w));
                let msg = format!("Deleted pod: {pod_name}");
                ctx.events
                    .publish(&ds, "DaemonSet", Event::normal("SuccessfulDelete", &msg));
            }
            Err(ObjectError::NotFound { .. }) | Err(ObjectError::Conflict { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    if last_write > 0 {
        ctx.pods.wait_for(last_write).await;
    }
    // Which nodes should run the pod was worked out above; the status counts the pods as
    // they are after this reconcile's writes.
    let should_run: HashMap<String, bool> = nodes
        .iter()
        .map(|(n, on)| (n.clone(), on.should_run))
        .collect();
    sync_status(&ctx, &ds, ns, &uid, &hash, min_ready, &should_run).await?;
    if min_ready > 0 {
        return Ok(Action::RequeueAfter(Duration::from_secs(min_ready as u64)));
    }
    Ok(Action::Done)
}

/// RollingUpdate: replaces old pods node by node, at most `maxUnavailable` nodes without
/// an available pod at once; with `maxSurge`, the new pod starts beside the old one, which
/// goes when the new one is available.
fn rolling_update(
    ds: &Value,
    nodes: &HashMap<String, OnNode>,
    to_create: &mut Vec<String>,
    to_delete: &mut Vec<Arc<Value>>,
    available: &dyn Fn(&Value) -> bool,
    current: &dyn Fn(&Value) -> bool,
) {
    let desired = nodes.values().filter(|n| n.should_run).count() as i64;
    let ru = &ds["spec"]["updateStrategy"]["rollingUpdate"];
    let surge = resolve(&ru["maxSurge"], desired, true);
    let mut max_unavailable = resolve(&ru["maxUnavailable"], desired, true);
    if surge == 0 && max_unavailable == 0 {
        max_unavailable = 1;
    }
    let mut names: Vec<&String> = nodes.keys().collect();
    names.sort();
    let mut unavailable = nodes
        .values()
        .filter(|n| n.should_run && !n.pods.iter().any(|p| available(p)))
        .count() as i64;
    let mut surged = nodes.values().filter(|n| n.pods.len() > 1).count() as i64;
    let mut deletions = Vec::new();
    let mut creations = Vec::new();
    for name in names {
        let on = &nodes[name];
        if !on.should_run {
            continue;
        }
        let Some(old) = on.pods.iter().find(|p| !current(p)) else {
            continue;
        };
        if on.pods.len() > 1 {
            continue; // a surge in progress here
        }
        if surge > 0 {
            if surged < surge {
                creations.push(name.clone());
                surged += 1;
            }
        } else if !available(old) {
            // An old pod that is not available costs nothing to replace.
            deletions.push(old.clone());
        } else if unavailable < max_unavailable {
            deletions.push(old.clone());
            unavailable += 1;
        }
    }
    to_delete.extend(deletions);
    to_create.extend(creations);
}

/// Keeps a ControllerRevision of the current template (the highest revision) and drops
/// old ones beyond `revisionHistoryLimit` that no pod uses; returns the last write.
async fn sync_history(
    ctx: &Ctx,
    ds: &Value,
    ns: &str,
    hash: &str,
) -> Result<Revision, ObjectError> {
    let uid = str_at(ds, "/metadata/uid");
    let mut mine: Vec<Arc<Value>> = ctx
        .revisions
        .list(Some(ns))
        .into_iter()
        .filter(|r| pods::controlled_by(r, uid))
        .collect();
    let name = format!("{}-{hash}", str_at(ds, "/metadata/name"));
    let max = mine
        .iter()
        .map(|r| r["revision"].as_i64().unwrap_or(0))
        .max()
        .unwrap_or(0);
    let rt = ctx.revisions.rt;
    let mut last = 0;
    match mine.iter().find(|r| str_at(r, "/metadata/name") == name) {
        Some(r) if r["revision"].as_i64().unwrap_or(0) == max => {}
        Some(_) => {
            // An older template is current again (an undo): it becomes the newest.
            let w = ctx
                .objects
                .update_with(
                    rt,
                    Some(ns),
                    &name,
                    Target::Main,
                    &WriteOptions::default(),
                    |cur| {
                        let mut next = cur.clone();
                        next["revision"] = json!(max + 1);
                        Ok(next)
                    },
                )
                .await?;
            last = written_rev(&w);
        }
        None => {
            let mut template = ds["spec"]["template"].clone();
            template["$patch"] = json!("replace");
            let mut labels = ds["spec"]["template"]["metadata"]["labels"].clone();
            labels[HASH_LABEL] = json!(hash);
            let rev = json!({
                "apiVersion": "apps/v1", "kind": "ControllerRevision",
                "metadata": {"name": name, "labels": labels,
                             "ownerReferences": [pods::owner_ref("apps/v1", "DaemonSet", ds)]},
                "data": {"spec": {"template": template}},
                "revision": max + 1,
            });
            match ctx
                .objects
                .create(rt, Some(ns), rev, &WriteOptions::default())
                .await
            {
                Ok(w) => last = written_rev(&w),
                Err(ObjectError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    let limit = ds["spec"]["revisionHistoryLimit"]
        .as_i64()
        .unwrap_or(10)
        .max(0) as usize;
    let in_use: Vec<String> = ctx
        .pods
        .list(Some(ns))
        .iter()
        .filter(|p| pods::controlled_by(p, uid))
        .map(|p| str_at(p, &format!("/metadata/labels/{HASH_LABEL}")).to_string())
        .collect();
    mine.retain(|r| str_at(r, "/metadata/name") != name);
    mine.sort_by_key(|r| r["revision"].as_i64().unwrap_or(0));
    let stale: Vec<&Arc<Value>> = mine
        .iter()
        .filter(|r| {
            !in_use
                .iter()
                .any(|h| str_at(r, "/metadata/name").ends_with(&format!("-{h}")))
        })
        .collect();
    let surplus = stale.len().saturating_sub(limit);
    for r in stale.into_iter().take(surplus) {
        match ctx
            .objects
            .delete(
                rt,
                Some(ns),
                str_at(r, "/metadata/name"),
                &DeleteOptions::default(),
            )
            .await
        {
            Ok(w) => last = last.max(written_rev(&w)),
            Err(ObjectError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(last)
}

async fn sync_status(
    ctx: &Ctx,
    ds: &Value,
    ns: &str,
    uid: &str,
    hash: &str,
    min_ready: i64,
    should_run: &HashMap<String, bool>,
) -> Result<(), ObjectError> {
    let now = crate::objects::now();
    let mut by_node: HashMap<String, Vec<Arc<Value>>> = HashMap::new();
    for p in ctx.pods.list(Some(ns)) {
        if pods::controlled_by(&p, uid) && pods::is_active(&p) {
            if let Some(n) = target_node(&p) {
                by_node.entry(n).or_default().push(p);
            }
        }
    }
    let (mut desired, mut current, mut mis, mut ready, mut updated, mut available) =
        (0, 0, 0, 0, 0, 0);
    for (name, &should_run) in should_run {
        let here = by_node.get(name).map_or(&[][..], |v| v.as_slice());
        if should_run {
            desired += 1;
            if !here.is_empty() {
                current += 1;
                if here.iter().any(|p| pods::is_ready(p)) {
                    ready += 1;
                }
                if here.iter().any(|p| pods::is_available(p, min_ready, now)) {
                    available += 1;
                }
                if here
                    .iter()
                    .any(|p| str_at(p, &format!("/metadata/labels/{HASH_LABEL}")) == hash)
                {
                    updated += 1;
                }
            }
        } else if !here.is_empty() {
            mis += 1;
        }
    }
    let mut status = json!({
        "currentNumberScheduled": current, "numberMisscheduled": mis,
        "desiredNumberScheduled": desired, "numberReady": ready,
        "observedGeneration": ds["metadata"]["generation"],
    });
    for (k, v) in [
        ("updatedNumberScheduled", updated),
        ("numberAvailable", available),
        ("numberUnavailable", desired - available),
    ] {
        if v != 0 {
            status[k] = json!(v);
        }
    }
    if let Some(cc) = ds.pointer("/status/collisionCount") {
        status["collisionCount"] = cc.clone();
    }
    if ds.get("status") == Some(&status) {
        return Ok(());
    }
    super::update_same(&ctx.objects, &ctx.sets, ds, Target::Status, |_, next| {
        next["status"] = status.clone()
    })
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::testing::{create, eventually, list, objects, rt};

    async fn add_node(objects: &Objects, name: &str, labels: Value, taints: Value) {
        let node = json!({"metadata": {"name": name, "labels": labels}, "spec": {"taints": taints},
            "status": {"allocatable": {"cpu": "2", "memory": "1Gi", "pods": "10"},
                       "conditions": [{"type": "Ready", "status": "True"}]}});
        objects
            .create(
                rt(objects, "", "nodes"),
                None,
                node,
                &WriteOptions::default(),
            )
            .await
            .unwrap();
    }

    fn live(pods: &[Value]) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = pods
            .iter()
            .filter(|p| pods::is_active(p))
            .map(|p| {
                (
                    target_node(p).unwrap_or_default(),
                    str_at(p, "/spec/containers/0/image").to_string(),
                )
            })
            .collect();
        out.sort();
        out
    }

    #[tokio::test]
    async fn one_pod_per_fitting_node_also_later_ones_and_rolling_updates() {
        let (objects, _d) = objects().await;
        add_node(&objects, "a", json!({"role": "edge"}), json!([])).await;
        add_node(
            &objects,
            "b",
            json!({"role": "edge"}),
            json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]),
        )
        .await;
        add_node(&objects, "c", json!({"role": "core"}), json!([])).await;
        let cache = Cache::new(objects.clone());
        spawn(&cache, &Events::start(objects.clone()));
        crate::controllers::kubelet::spawn(objects.clone());
        let ds = json!({"metadata": {"name": "agent"}, "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {"metadata": {"labels": {"app": "agent"}}, "spec": {
                "nodeSelector": {"role": "edge"}, "containers": [{"name": "c", "image": "v1"}]}}}});
        create(&objects, "apps", "daemonsets", ds).await;
        // b's taint is not tolerated and c is not an edge node: only a.
        let pods = eventually("a pod on a", || async {
            let pods = list(&objects, "", "pods").await;
            (live(&pods) == [("a".to_string(), "v1".to_string())]).then_some(pods)
        })
        .await;
        let p = &pods[0];
        assert_eq!(
            p["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
                ["nodeSelectorTerms"][0]["matchFields"][0]["values"][0],
            "a"
        );
        let tolerations = p["spec"]["tolerations"].as_array().unwrap();
        assert!(tolerations
            .iter()
            .any(|t| t["key"] == "node.kubernetes.io/unreachable" && t["effect"] == "NoExecute"));
        assert!(p["metadata"]["labels"][HASH_LABEL].is_string());
        // A node joining later gets its pod.
        add_node(&objects, "d", json!({"role": "edge"}), json!([])).await;
        eventually("a pod on d", || async {
            let pods = list(&objects, "", "pods").await;
            (live(&pods).len() == 2).then_some(())
        })
        .await;
        let ds = eventually("status", || async {
            let ds = list(&objects, "apps", "daemonsets").await.remove(0);
            (ds["status"]["desiredNumberScheduled"] == 2 && ds["status"]["numberReady"] == 2)
                .then_some(ds)
        })
        .await;
        assert_eq!(ds["status"]["currentNumberScheduled"], 2);
        // A rolling update to v2 replaces both, and the history has two revisions.
        let dsrt = rt(&objects, "apps", "daemonsets");
        crate::controllers::testing::edit(
            &objects,
            dsrt,
            Some("default"),
            "agent",
            Target::Main,
            |next| {
                next["spec"]["template"]["spec"]["containers"][0]["image"] = json!("v2");
            },
        )
        .await;
        eventually("both on v2", || async {
            let pods = list(&objects, "", "pods").await;
            let want = [
                ("a".to_string(), "v2".to_string()),
                ("d".to_string(), "v2".to_string()),
            ];
            (live(&pods) == want).then_some(())
        })
        .await;
        eventually("updated status", || async {
            let ds = list(&objects, "apps", "daemonsets").await.remove(0);
            (ds["status"]["updatedNumberScheduled"] == 2 && ds["status"]["numberAvailable"] == 2)
                .then_some(())
        })
        .await;
        let revs = list(&objects, "apps", "controllerrevisions").await;
        let mut numbers: Vec<i64> = revs
            .iter()
            .map(|r| r["revision"].as_i64().unwrap())
            .collect();
        numbers.sort();
        assert_eq!(numbers, [1, 2]);
        // A node that stops matching loses its pod.
        crate::controllers::testing::edit(
            &objects,
            rt(&objects, "", "nodes"),
            None,
            "d",
            Target::Main,
            |next| {
                next["metadata"]["labels"]["role"] = json!("core");
            },
        )
        .await;
        eventually("only a", || async {
            let pods = list(&objects, "", "pods").await;
            (live(&pods) == [("a".to_string(), "v2".to_string())]).then_some(())
        })
        .await;
    }

    #[test]
    fn rolling_update_keeps_within_max_unavailable() {
        let pod = |hash: &str, ready: bool| {
            let mut p = json!({"metadata": {"labels": {HASH_LABEL: hash}}, "status": {}});
            if ready {
                p["status"]["conditions"] = json!([{"type": "Ready", "status": "True"}]);
            }
            Arc::new(p)
        };
        let ds = json!({"spec": {"updateStrategy": {"rollingUpdate": {"maxUnavailable": 1}}}});
        let mut nodes = HashMap::new();
        for n in ["a", "b", "c"] {
            nodes.insert(
                n.to_string(),
                OnNode {
                    should_run: true,
                    may_stay: true,
                    pods: vec![pod("old", true)],
                },
            );
        }
        let (mut create, mut delete) = (Vec::new(), Vec::new());
        let available = |p: &Value| pods::is_ready(p);
        let current = |p: &Value| str_at(p, &format!("/metadata/labels/{HASH_LABEL}")) == "new";
        rolling_update(&ds, &nodes, &mut create, &mut delete, &available, &current);
        assert_eq!(delete.len(), 1, "one node at a time");
        // An unavailable old pod is replaced without counting.
        nodes.get_mut("b").unwrap().pods = vec![pod("old", false)];
        let (mut create, mut delete) = (Vec::new(), Vec::new());
        rolling_update(&ds, &nodes, &mut create, &mut delete, &available, &current);
        assert_eq!(
            delete.len(),
            1,
            "b's unavailable pod uses up the budget: {delete:?}"
        );
        // With maxSurge the new pod comes first.
        let surge = json!({"spec": {"updateStrategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}}});
        let (mut create, mut delete) = (Vec::new(), Vec::new());
        rolling_update(
            &surge,
            &nodes,
            &mut create,
            &mut delete,
            &available,
            &current,
        );
        assert_eq!((create.len(), delete.len()), (1, 0));
    }
}
