//! Deployments, as kube-controller-manager's deployment controller: each pod template is a
//! revision, kept as a ReplicaSet named `<deployment>-<template hash>` (label
//! `pod-template-hash`, annotation `deployment.kubernetes.io/revision`). RollingUpdate
//! scales the new ReplicaSet up within `maxSurge` and the old ones down within
//! `maxUnavailable`; Recreate scales the old ones to zero and waits for their pods to go
//! before scaling the new one up. A change of `replicas` mid-rollout is spread over the
//! active ReplicaSets in proportion. Status, `Progressing`/`Available` conditions and the
//! progress deadline as kube reports them (what `kubectl rollout status` reads). Old
//! revisions beyond `revisionHistoryLimit` are deleted. `kubectl rollout undo|restart|pause|
//! resume` are plain spec changes handled here.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::pods::{self, str_at};
use super::replicaset::set_owner;
use crate::events::{Event, EventType, Events, Recorder};
use crate::objects::{now, now_string, DeleteOptions, ObjectError, Objects, Target, WriteOptions};
use crate::runtime::{self, cache, written_rev, Action, Cache, Informer, Queue};
use crate::selectors::label_selector_matches_json;
use crate::store::Revision;

const COMPONENT: &str = "deployment-controller";
pub const REVISION: &str = "deployment.kubernetes.io/revision";
const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
pub const HASH_LABEL: &str = "pod-template-hash";
/// Deployment annotations not copied to its ReplicaSets.
const NOT_COPIED: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];

struct Ctx {
    objects: Arc<Objects>,
    deployments: Arc<Informer>,
    sets: Arc<Informer>,
    pods: Arc<Informer>,
    events: Recorder,
}

/// Starts the controller: a Deployment is reconciled when it changes, when one of its
/// ReplicaSets changes, and when a pod of one of them is deleted (Recreate waits for that).
pub fn spawn(cache: &Arc<Cache>, events: &Arc<Events>) {
    let ctx = Arc::new(Ctx {
        objects: cache.objects().clone(),
        deployments: cache.of("apps", "v1", "deployments"),
        sets: cache.of("apps", "v1", "replicasets"),
        pods: cache.of("", "v1", "pods"),
        events: events.recorder(COMPONENT),
    });
    let queue = Queue::new();
    runtime::queue_changes(&ctx.deployments, &queue);
    let (q, deployments) = (queue.clone(), ctx.deployments.clone());
    ctx.sets.on_change(move |c| {
        for rs in [c.old.as_deref(), c.new.as_deref()].into_iter().flatten() {
            let ns = str_at(rs, "/metadata/namespace");
            match pods::controller_ref(rs) {
                Some(r) if r["kind"] == "Deployment" => {
                    q.add(format!("{ns}/{}", str_at(r, "/name")))
                }
                Some(_) => {}
                // An orphan: the deployments that could adopt it.
                None => {
                    for d in deployments.list(Some(ns)) {
                        if selector_of(&d).is_some_and(|s| label_selector_matches_json(&s, rs)) {
                            q.add(cache::key_of(&d));
                        }
                    }
                }
            }
        }
    });
    let (q, sets) = (queue.clone(), ctx.sets.clone());
    ctx.pods.on_change(move |c| {
        if c.new.is_some() {
            return;
        }
        let pod = c.object();
        let ns = str_at(pod, "/metadata/namespace");
        let Some(r) = pods::controller_ref(pod).filter(|r| r["kind"] == "ReplicaSet") else {
            return;
        };
        if let Some(rs) = sets.get(Some(ns), str_at(r, "/name")) {
            if let Some(d) = pods::controller_ref(&rs).filter(|r| r["kind"] == "Deployment") {
                q.add(format!("{ns}/{}", str_at(d, "/name")));
            }
        }
    });
    runtime::spawn_controller(COMPONENT, queue, move |key| reconcile(ctx.clone(), key));
}

fn selector_of(d: &Value) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector> {
    serde_json::from_value(d.pointer("/spec/selector")?.clone()).ok()
}

fn int_at(v: &Value, pointer: &str) -> i64 {
    v.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

fn replicas(rs: &Value) -> i64 {
    int_at(rs, "/spec/replicas")
}

fn annotation<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.pointer("/metadata/annotations")?.get(key)?.as_str()
}

fn revision(rs: &Value) -> i64 {
    annotation(rs, REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// `maxSurge`/`maxUnavailable`: an integer or a percentage of `total`.
fn resolve(v: Option<&Value>, total: i64, round_up: bool) -> i64 {
    match v {
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        Some(Value::String(s)) => {
            let Some(p) = s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) else {
                return s.parse().unwrap_or(0);
            };
            if round_up {
                (p * total + 99) / 100
            } else {
                p * total / 100
            }
        }
        _ => 0,
    }
}

fn is_rolling(d: &Value) -> bool {
    str_at(d, "/spec/strategy/type") != "Recreate"
}

fn max_surge(d: &Value) -> i64 {
    if !is_rolling(d) {
        return 0;
    }
    resolve(
        d.pointer("/spec/strategy/rollingUpdate/maxSurge"),
        replicas(d),
        true,
    )
}

/// As kube: both zero would block a rollout, so maxUnavailable becomes 1; never more than
/// the replicas.
fn max_unavailable(d: &Value) -> i64 {
    if !is_rolling(d) || replicas(d) == 0 {
        return 0;
    }
    let ru = d.pointer("/spec/strategy/rollingUpdate");
    let surge = resolve(ru.and_then(|r| r.get("maxSurge")), replicas(d), true);
    let mut unavailable = resolve(ru.and_then(|r| r.get("maxUnavailable")), replicas(d), false);
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    unavailable.min(replicas(d))
}

/// The template without the `pod-template-hash` label: what makes two revisions equal.
fn template_without_hash(t: &Value) -> Value {
    let mut t = t.clone();
    if let Some(labels) = t
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        labels.remove(HASH_LABEL);
        if labels.is_empty() {
            t["metadata"].as_object_mut().map(|m| m.remove("labels"));
        }
    }
    t
}

/// The name suffix and `pod-template-hash` of a template: FNV-32a of the template (and
/// the collision count), its decimal digits mapped to kube's safe alphabet.
pub fn template_hash(template: &Value, collisions: Option<i64>) -> String {
    let mut h: u32 = 0x811c9dc5;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u32::from(*b);
            h = h.wrapping_mul(0x01000193);
        }
    };
    eat(serde_json::to_string(template)
        .unwrap_or_default()
        .as_bytes());
    if let Some(c) = collisions {
        eat(&(c as u32).to_le_bytes());
    }
    const SAFE: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    h.to_string()
        .bytes()
        .map(|b| SAFE[usize::from(b) % SAFE.len()] as char)
        .collect()
}

fn created(v: &Value) -> &str {
    str_at(v, "/metadata/creationTimestamp")
}

/// What one reconcile works on: the deployment and its ReplicaSets, updated in place as it
/// writes.
struct Rollout {
    d: Value,
    new: Option<Value>,
    old: Vec<Value>,
    last_write: Revision,
    /// A condition set by this reconcile (new ReplicaSet created or found).
    progress: Option<(&'static str, String)>,
}

impl Rollout {
    fn all(&self) -> impl Iterator<Item = &Value> {
        self.new.iter().chain(self.old.iter())
    }

    fn total_replicas(&self) -> i64 {
        self.all().map(replicas).sum()
    }

    /// Available pods of a ReplicaSet; while it has not caught up with a new spec, no more
    /// than its replicas (a stale count would let a rollout go below its minimum).
    fn available(rs: &Value) -> i64 {
        let a = int_at(rs, "/status/availableReplicas");
        if int_at(rs, "/status/observedGeneration") < int_at(rs, "/metadata/generation") {
            a.min(replicas(rs))
        } else {
            a
        }
    }

    fn total_available(&self) -> i64 {
        self.all().map(Self::available).sum()
    }
}

async fn reconcile(ctx: Arc<Ctx>, key: String) -> Result<Action, ObjectError> {
    let (ns, name) = cache::split_key(&key);
    let Some(d) = ctx.deployments.get(ns, name) else {
        return Ok(Action::Done);
    };
    let d = (*d).clone();
    let ns = ns.unwrap_or_default().to_string();
    let Some(selector) = selector_of(&d) else {
        return Ok(Action::Done);
    };
    if selector.match_labels.iter().flatten().next().is_none()
        && selector.match_expressions.iter().flatten().next().is_none()
    {
        // An empty selector would take every ReplicaSet of the namespace.
        return Ok(Action::Done);
    }
    let mut sets = Vec::new();
    let uid = str_at(&d, "/metadata/uid").to_string();
    let mut last_write = 0;
    for rs in ctx.sets.list(Some(&ns)) {
        let matches = label_selector_matches_json(&selector, &rs);
        let rs_name = str_at(&rs, "/metadata/name").to_string();
        match pods::controller_ref(&rs) {
            Some(r) if r["uid"] == uid.as_str() => {
                if matches || pods::is_terminating(&rs) {
                    sets.push((*rs).clone());
                } else {
                    let rev = set_owner(&ctx.objects, ctx.sets.rt, &ns, &rs_name, |refs| {
                        refs.retain(|r| r["uid"] != uid.as_str())
                    })
                    .await?;
                    last_write = last_write.max(rev);
                }
            }
            None if matches && !pods::is_terminating(&rs) && !pods::is_terminating(&d) => {
                let owner = pods::owner_ref("apps/v1", "Deployment", &d);
                let rev = set_owner(&ctx.objects, ctx.sets.rt, &ns, &rs_name, |refs| {
                    if !refs.iter().any(|r| r["controller"] == true) {
                        refs.push(owner.clone());
                    }
                })
                .await?;
                last_write = last_write.max(rev);
                sets.push((*rs).clone());
            }
            _ => {}
        }
    }
    // The new ReplicaSet: the oldest whose template is the deployment's.
    sets.sort_by(|a, b| {
        created(a)
            .cmp(created(b))
            .then_with(|| str_at(a, "/metadata/name").cmp(str_at(b, "/metadata/name")))
    });
    let want = template_without_hash(&d["spec"]["template"]);
    let new_at = sets
        .iter()
        .position(|rs| template_without_hash(&rs["spec"]["template"]) == want);
    let new = new_at.map(|i| sets.remove(i));
    let mut r = Rollout {
        d,
        new,
        old: sets,
        last_write,
        progress: None,
    };
    let action = if pods::is_terminating(&r.d) {
        Action::Done
    } else {
        step(&ctx, &ns, &mut r).await?
    };
    if r.last_write > 0 {
        ctx.sets.wait_for(r.last_write).await;
    }
    let requeue = sync_status(&ctx, &r).await?;
    Ok(match (action, requeue) {
        (Action::RequeueAfter(a), Some(b)) => Action::RequeueAfter(a.min(b)),
        (Action::RequeueAfter(a), None) => Action::RequeueAfter(a),
        (Action::Done, Some(b)) => Action::RequeueAfter(b),
        (Action::Done, None) => Action::Done,
    })
}

/// One step of the rollout (kube's sync / rolloutRolling / rolloutRecreate).
async fn step(ctx: &Ctx, ns: &str, r: &mut Rollout) -> Result<Action, ObjectError> {
    let paused = r.d["spec"]["paused"] == true;
    let scaling = r
        .all()
        .filter(|rs| replicas(rs) > 0)
        .any(|rs| annotation(rs, DESIRED_REPLICAS) != Some(replicas(&r.d).to_string().as_str()));
    if paused || scaling {
        if r.new.is_some() || !paused {
            sync_revision(ctx, ns, r, !paused).await?;
        }
        scale(ctx, r).await?;
        if !paused && complete(r) {
            cleanup(ctx, ns, r).await?;
        }
        return Ok(Action::Done);
    }
    if is_rolling(&r.d) {
        sync_revision(ctx, ns, r, true).await?;
        if reconcile_new(ctx, r).await? || reconcile_old(ctx, r).await? {
            return Ok(Action::Done);
        }
    } else {
        sync_revision(ctx, ns, r, false).await?;
        let mut scaled = false;
        for i in 0..r.old.len() {
            if replicas(&r.old[i]) > 0 {
                scale_old(ctx, r, i, 0).await?;
                scaled = true;
            }
        }
        if scaled {
            return Ok(Action::Done);
        }
        // Old pods must be gone (not just terminating) before the new ones start.
        let old_uids: Vec<&str> = r.old.iter().map(|rs| str_at(rs, "/metadata/uid")).collect();
        let running = ctx.pods.list(Some(ns)).iter().any(|p| {
            !pods::is_terminal(p)
                && pods::controller_ref(p).is_some_and(|o| old_uids.iter().any(|u| o["uid"] == *u))
        });
        if running {
            return Ok(Action::Done);
        }
        if r.new.is_none() {
            sync_revision(ctx, ns, r, true).await?;
        }
        let want = replicas(&r.d);
        if r.new.as_ref().is_some_and(|n| replicas(n) != want) {
            scale_new(ctx, r, want).await?;
            return Ok(Action::Done);
        }
    }
    if complete(r) {
        cleanup(ctx, ns, r).await?;
    }
    Ok(Action::Done)
}

/// Whether the rollout is done as far as ReplicaSets go (kube's DeploymentComplete on the
/// status about to be written).
fn complete(r: &Rollout) -> bool {
    let want = replicas(&r.d);
    let s = status_counts(r);
    s.updated == want && s.replicas == want && s.available == want
}

/// Finds or creates the new ReplicaSet and keeps revision annotations current.
async fn sync_revision(
    ctx: &Ctx,
    ns: &str,
    r: &mut Rollout,
    create: bool,
) -> Result<(), ObjectError> {
    let max_old = r.old.iter().map(revision).max().unwrap_or(0);
    let new_revision = max_old + 1;
    if let Some(new) = &r.new {
        let name = str_at(new, "/metadata/name").to_string();
        let want_annotations = rs_annotations(&r.d, new, new_revision, false);
        let min_ready = r.d["spec"]["minReadySeconds"].clone();
        if annotations_differ(new, &want_annotations) || new["spec"]["minReadySeconds"] != min_ready
        {
            let w = ctx
                .objects
                .update_with(
                    ctx.sets.rt,
                    Some(ns),
                    &name,
                    Target::Main,
                    &WriteOptions::default(),
                    |cur| {
                        let mut next = cur.clone();
                        merge_annotations(&mut next, &want_annotations);
                        next["spec"]["minReadySeconds"] = min_ready.clone();
                        Ok(next)
                    },
                )
                .await?;
            r.last_write = r.last_write.max(written_rev(&w));
            r.new = Some(serde_json::from_slice(&w.object).unwrap_or_default());
        }
        if r.progress.is_none() {
            r.progress = Some((
                "FoundNewReplicaSet",
                format!("Found new replica set \"{name}\""),
            ));
        }
    } else if create {
        create_new(ctx, ns, r, new_revision).await?;
    }
    // The deployment's own revision annotation follows its newest ReplicaSet.
    let rev = r.new.as_ref().map_or(max_old, revision).to_string();
    if r.new.is_some() && annotation(&r.d, REVISION) != Some(rev.as_str()) {
        let name = str_at(&r.d, "/metadata/name").to_string();
        let w = ctx
            .objects
            .update_with(
                ctx.deployments.rt,
                Some(ns),
                &name,
                Target::Main,
                &WriteOptions::default(),
                |cur| {
                    let mut next = cur.clone();
                    merge_annotations(
                        &mut next,
                        &json!({REVISION: rev})
                            .as_object()
                            .cloned()
                            .unwrap_or_default(),
                    );
                    Ok(next)
                },
            )
            .await?;
        r.d = serde_json::from_slice(&w.object).unwrap_or(r.d.clone());
    }
    Ok(())
}

fn annotations_differ(obj: &Value, want: &Map<String, Value>) -> bool {
    let have = obj
        .pointer("/metadata/annotations")
        .and_then(Value::as_object);
    want.iter()
        .any(|(k, v)| have.and_then(|h| h.get(k)) != Some(v))
}

fn merge_annotations(obj: &mut Value, add: &Map<String, Value>) {
    let meta = obj["metadata"]
        .as_object_mut()
        .expect("objects have metadata");
    let a = meta.entry("annotations").or_insert_with(|| json!({}));
    if !a.is_object() {
        *a = json!({});
    }
    let a = a.as_object_mut().expect("annotations is an object");
    for (k, v) in add {
        a.insert(k.clone(), v.clone());
    }
}

/// The annotations a ReplicaSet of `d` carries: the deployment's own (but kube's), its
/// revision (the previous one kept in the revision history when it changes) and, when
/// `replicas_too`, the desired and maximum replicas.
fn rs_annotations(
    d: &Value,
    rs: &Value,
    new_revision: i64,
    replicas_too: bool,
) -> Map<String, Value> {
    let mut out = Map::new();
    if let Some(a) = d
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
    {
        for (k, v) in a {
            if !NOT_COPIED.contains(&k.as_str()) {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    let old = revision(rs);
    if old < new_revision {
        out.insert(REVISION.into(), json!(new_revision.to_string()));
        if old > 0 {
            let history = match annotation(rs, REVISION_HISTORY) {
                Some(h) if !h.is_empty() => format!("{h},{old}"),
                _ => old.to_string(),
            };
            out.insert(REVISION_HISTORY.into(), json!(history));
        }
    }
    if replicas_too {
        out.insert(DESIRED_REPLICAS.into(), json!(replicas(d).to_string()));
        out.insert(
            MAX_REPLICAS.into(),
            json!((replicas(d) + max_surge(d)).to_string()),
        );
    }
    out
}

/// Creates the new ReplicaSet (`<name>-<hash>`), at the replicas the strategy allows now.
async fn create_new(
    ctx: &Ctx,
    ns: &str,
    r: &mut Rollout,
    new_revision: i64,
) -> Result<(), ObjectError> {
    let d = &r.d;
    let name = str_at(d, "/metadata/name");
    let collisions = d.pointer("/status/collisionCount").and_then(Value::as_i64);
    let hash = template_hash(&d["spec"]["template"], collisions);
    let mut template = d["spec"]["template"].clone();
    template["metadata"]["labels"][HASH_LABEL] = json!(hash);
    let mut selector = d["spec"]["selector"].clone();
    selector["matchLabels"][HASH_LABEL] = json!(hash);
    let replicas_now = new_replicas(d, r.all(), 0);
    let mut rs = json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {
            "name": format!("{name}-{hash}"),
            "labels": template["metadata"]["labels"].clone(),
            "ownerReferences": [pods::owner_ref("apps/v1", "Deployment", d)],
        },
        "spec": {"replicas": replicas_now, "minReadySeconds": d["spec"]["minReadySeconds"].clone(),
                 "selector": selector, "template": template},
    });
    if rs["spec"]["minReadySeconds"].is_null() {
        rs["spec"]
            .as_object_mut()
            .map(|s| s.remove("minReadySeconds"));
    }
    let mut annotations = rs_annotations(d, &json!({}), new_revision, true);
    annotations.insert(DESIRED_REPLICAS.into(), json!(replicas(d).to_string()));
    rs["metadata"]["annotations"] = Value::Object(annotations);
    match ctx
        .objects
        .create(ctx.sets.rt, Some(ns), rs, &WriteOptions::default())
        .await
    {
        Ok(w) => {
            r.last_write = r.last_write.max(written_rev(&w));
            let created: Value = serde_json::from_slice(&w.object).unwrap_or_default();
            let rs_name = str_at(&created, "/metadata/name").to_string();
            if replicas_now > 0 {
                let msg = format!("Scaled up replica set {rs_name} from 0 to {replicas_now}");
                ctx.event(d, EventType::Normal, "ScalingReplicaSet", &msg);
            }
            r.progress = Some((
                "NewReplicaSetCreated",
                format!("Created new replica set \"{rs_name}\""),
            ));
            r.new = Some(created);
            Ok(())
        }
        Err(ObjectError::AlreadyExists { .. }) => {
            // Another template hashed to this name (or ours, not yet adopted): count the
            // collision, which changes the next hash.
            let existing = ctx
                .objects
                .get_value(ctx.sets.rt, Some(ns), &format!("{name}-{hash}"))
                .await?
                .0;
            if pods::controlled_by(&existing, str_at(d, "/metadata/uid"))
                && template_without_hash(&existing["spec"]["template"])
                    == template_without_hash(&d["spec"]["template"])
            {
                r.new = Some(existing);
                return Ok(());
            }
            let dname = name.to_string();
            ctx.objects
                .update_with(
                    ctx.deployments.rt,
                    Some(ns),
                    &dname,
                    Target::Status,
                    &WriteOptions::default(),
                    |cur| {
                        let mut next = cur.clone();
                        let c = cur
                            .pointer("/status/collisionCount")
                            .and_then(Value::as_i64)
                            .unwrap_or(0);
                        next["status"]["collisionCount"] = json!(c + 1);
                        Ok(next)
                    },
                )
                .await?;
            // Retried (with the new hash) after a back-off.
            Err(ObjectError::conflict(
                ctx.sets.rt,
                &format!("{name}-{hash}"),
            ))
        }
        Err(e) => Err(e),
    }
}

/// How many replicas the new ReplicaSet may have now (kube's NewRSNewReplicas).
fn new_replicas<'a>(d: &Value, all: impl Iterator<Item = &'a Value>, new_now: i64) -> i64 {
    let want = replicas(d);
    if !is_rolling(d) {
        return want;
    }
    let current: i64 = all.map(replicas).sum();
    let max_total = want + max_surge(d);
    if current >= max_total {
        return new_now;
    }
    new_now + (max_total - current).min(want - new_now).max(0)
}

/// Scales the new ReplicaSet towards the deployment's replicas; true if it did.
async fn reconcile_new(ctx: &Ctx, r: &mut Rollout) -> Result<bool, ObjectError> {
    let Some(new) = &r.new else { return Ok(false) };
    let (have, want) = (replicas(new), replicas(&r.d));
    if have == want {
        return Ok(false);
    }
    let to = if have > want {
        want
    } else {
        new_replicas(&r.d, r.all(), have)
    };
    if to == have {
        return Ok(false);
    }
    scale_new(ctx, r, to).await?;
    Ok(true)
}

/// Scales old ReplicaSets down as far as `maxUnavailable` allows (unhealthy pods first);
/// true if it did (kube's reconcileOldReplicaSets).
async fn reconcile_old(ctx: &Ctx, r: &mut Rollout) -> Result<bool, ObjectError> {
    let old_count: i64 = r.old.iter().map(replicas).sum();
    if old_count == 0 {
        return Ok(false);
    }
    let all_count = r.total_replicas();
    let min_available = replicas(&r.d) - max_unavailable(&r.d);
    let new_unavailable = r
        .new
        .as_ref()
        .map_or(0, |n| (replicas(n) - Rollout::available(n)).max(0));
    let max_scaled_down = all_count - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return Ok(false);
    }
    // Old ReplicaSets with unavailable pods shrink first: that costs no availability.
    let mut order: Vec<usize> = (0..r.old.len()).collect();
    order.sort_by(|a, b| created(&r.old[*a]).cmp(created(&r.old[*b])));
    let mut cleaned = 0;
    for &i in &order {
        if cleaned >= max_scaled_down {
            break;
        }
        let rs = &r.old[i];
        let (n, avail) = (replicas(rs), Rollout::available(rs));
        if n == 0 || avail >= n {
            continue;
        }
        let down = (max_scaled_down - cleaned).min(n - avail);
        scale_old(ctx, r, i, n - down).await?;
        cleaned += down;
    }
    // Then healthy ones, while the available pods stay above the minimum.
    let available = r.total_available();
    let mut scaled = 0;
    if available > min_available {
        let budget = available - min_available;
        for &i in &order {
            if scaled >= budget {
                break;
            }
            let n = replicas(&r.old[i]);
            if n == 0 {
                continue;
            }
            let down = n.min(budget - scaled);
            scale_old(ctx, r, i, n - down).await?;
            scaled += down;
        }
    }
    Ok(cleaned + scaled > 0)
}

async fn scale_new(ctx: &Ctx, r: &mut Rollout, to: i64) -> Result<(), ObjectError> {
    let rs = r.new.take().expect("a new ReplicaSet");
    let scaled = scale_rs(ctx, &r.d, rs, to, &mut r.last_write).await?;
    r.new = Some(scaled);
    Ok(())
}

async fn scale_old(ctx: &Ctx, r: &mut Rollout, i: usize, to: i64) -> Result<(), ObjectError> {
    let rs = r.old[i].clone();
    r.old[i] = scale_rs(ctx, &r.d, rs, to, &mut r.last_write).await?;
    Ok(())
}

/// Sets a ReplicaSet's replicas (and the desired/max annotations) with a
/// `ScalingReplicaSet` event on the deployment.
async fn scale_rs(
    ctx: &Ctx,
    d: &Value,
    rs: Value,
    to: i64,
    last_write: &mut Revision,
) -> Result<Value, ObjectError> {
    let from = replicas(&rs);
    let name = str_at(&rs, "/metadata/name").to_string();
    let mut add = Map::new();
    add.insert(DESIRED_REPLICAS.into(), json!(replicas(d).to_string()));
    add.insert(
        MAX_REPLICAS.into(),
        json!((replicas(d) + max_surge(d)).to_string()),
    );
    if from == to && !annotations_differ(&rs, &add) {
        return Ok(rs);
    }
    let written = super::update_same(&ctx.objects, &ctx.sets, &rs, Target::Main, |_, next| {
        next["spec"]["replicas"] = json!(to);
        merge_annotations(next, &add);
    })
    .await?;
    let rev = str_at(&written, "/metadata/resourceVersion")
        .parse()
        .unwrap_or(0);
    *last_write = (*last_write).max(rev);
    if from != to {
        let dir = if to > from { "up" } else { "down" };
        let msg = format!("Scaled {dir} replica set {name} from {from} to {to}");
        ctx.event(d, EventType::Normal, "ScalingReplicaSet", &msg);
    }
    Ok(written)
}

/// A change of `replicas` (or a paused deployment): the active ReplicaSets are scaled in
/// proportion to their size (kube's `scale`).
async fn scale(ctx: &Ctx, r: &mut Rollout) -> Result<(), ObjectError> {
    let want = replicas(&r.d);
    let active: Vec<bool> = r.all().map(|rs| replicas(rs) > 0).collect();
    let n_active = active.iter().filter(|a| **a).count();
    // One active ReplicaSet (or none: the newest) takes all the replicas.
    if n_active <= 1 {
        let target = match r.new.as_ref().filter(|n| replicas(n) > 0 || n_active == 0) {
            Some(_) => None,
            None => r.old.iter().position(|rs| replicas(rs) > 0),
        };
        match target {
            Some(i) => scale_old(ctx, r, i, want).await?,
            None if r.new.is_some() => scale_new(ctx, r, want).await?,
            None => {
                let newest =
                    (0..r.old.len()).max_by(|a, b| created(&r.old[*a]).cmp(created(&r.old[*b])));
                if let Some(i) = newest {
                    scale_old(ctx, r, i, want).await?;
                }
            }
        }
        return Ok(());
    }
    let saturated = r.new.as_ref().is_some_and(|n| {
        replicas(n) == want
            && annotation(n, DESIRED_REPLICAS) == Some(want.to_string().as_str())
            && Rollout::available(n) == want
    });
    if saturated {
        for i in 0..r.old.len() {
            if replicas(&r.old[i]) > 0 {
                scale_old(ctx, r, i, 0).await?;
            }
        }
        return Ok(());
    }
    if !is_rolling(&r.d) {
        return Ok(());
    }
    let allowed = if want > 0 { want + max_surge(&r.d) } else { 0 };
    let to_add = allowed - r.total_replicas();
    // Bigger first; on ties, newer first when growing and older first when shrinking.
    let mut idx: Vec<(usize, Value)> = r.all().cloned().enumerate().collect();
    idx.sort_by(|(_, a), (_, b)| {
        replicas(b).cmp(&replicas(a)).then_with(|| {
            if to_add > 0 {
                created(b).cmp(created(a))
            } else {
                created(a).cmp(created(b))
            }
        })
    });
    let mut targets: Vec<(usize, i64)> = Vec::new();
    let mut added = 0;
    if to_add != 0 {
        for (i, rs) in &idx {
            let p = proportion(rs, &r.d, to_add, added);
            targets.push((*i, replicas(rs) + p));
            added += p;
        }
    } else {
        targets = idx.iter().map(|(i, rs)| (*i, replicas(rs))).collect();
    }
    // The rest goes to the biggest.
    if let Some(first) = targets.first_mut() {
        first.1 = (first.1 + to_add - added).max(0);
    }
    let has_new = r.new.is_some();
    for (i, to) in targets {
        if has_new && i == 0 {
            scale_new(ctx, r, to).await?;
        } else {
            let oi = if has_new { i - 1 } else { i };
            scale_old(ctx, r, oi, to).await?;
        }
    }
    Ok(())
}

/// A ReplicaSet's share of `to_add` (kube's GetReplicaSetProportion).
fn proportion(rs: &Value, d: &Value, to_add: i64, added: i64) -> i64 {
    if replicas(rs) == 0 || to_add == 0 || to_add == added {
        return 0;
    }
    let fraction = if replicas(d) == 0 {
        -replicas(rs)
    } else {
        let annotated = annotation(rs, MAX_REPLICAS)
            .and_then(|m| m.parse::<i64>().ok())
            .filter(|m| *m > 0)
            .unwrap_or(replicas(d) + max_surge(d));
        let scaled = replicas(rs) as f64 * (replicas(d) + max_surge(d)) as f64 / annotated as f64;
        scaled.round() as i64 - replicas(rs)
    };
    let allowed = to_add - added;
    if to_add > 0 {
        fraction.min(allowed)
    } else {
        fraction.max(allowed)
    }
}

/// Deletes old, empty ReplicaSets beyond `revisionHistoryLimit` (oldest revisions first).
async fn cleanup(ctx: &Ctx, ns: &str, r: &mut Rollout) -> Result<(), ObjectError> {
    let Some(limit) =
        r.d.pointer("/spec/revisionHistoryLimit")
            .and_then(Value::as_i64)
    else {
        return Ok(());
    };
    let mut old: Vec<&Value> = r
        .old
        .iter()
        .filter(|rs| !pods::is_terminating(rs))
        .collect();
    let surplus = old.len() as i64 - limit;
    if surplus <= 0 {
        return Ok(());
    }
    old.sort_by(|a, b| {
        revision(a)
            .cmp(&revision(b))
            .then_with(|| created(a).cmp(created(b)))
    });
    let mut deleted = 0;
    for rs in old {
        if deleted >= surplus {
            break;
        }
        let idle = replicas(rs) == 0
            && int_at(rs, "/status/replicas") == 0
            && int_at(rs, "/status/observedGeneration") >= int_at(rs, "/metadata/generation");
        if !idle {
            continue;
        }
        let opts = DeleteOptions {
            precondition_uid: Some(str_at(rs, "/metadata/uid").to_string()),
            ..Default::default()
        };
        match ctx
            .objects
            .delete(ctx.sets.rt, Some(ns), str_at(rs, "/metadata/name"), &opts)
            .await
        {
            Ok(w) => r.last_write = r.last_write.max(written_rev(&w)),
            Err(ObjectError::NotFound { .. }) | Err(ObjectError::Conflict { .. }) => {}
            Err(e) => return Err(e),
        }
        deleted += 1;
    }
    Ok(())
}

struct Counts {
    replicas: i64,
    updated: i64,
    ready: i64,
    available: i64,
}

fn status_counts(r: &Rollout) -> Counts {
    let sum = |p: &str| r.all().map(|rs| int_at(rs, p)).sum::<i64>();
    Counts {
        replicas: sum("/status/replicas"),
        updated: r.new.as_ref().map_or(0, |n| int_at(n, "/status/replicas")),
        ready: sum("/status/readyReplicas"),
        available: r.total_available(),
    }
}

fn condition(type_: &str, status: &str, reason: &str, message: &str, old: Option<&Value>) -> Value {
    let now = now_string();
    // The transition time stays while the status does; the update time moves.
    let transition = old
        .filter(|c| c["status"] == status)
        .map_or_else(|| json!(now), |c| c["lastTransitionTime"].clone());
    json!({"type": type_, "status": status, "lastUpdateTime": now,
           "lastTransitionTime": transition, "reason": reason, "message": message})
}

/// Writes the status kube computes (counts, Available and Progressing); returns when to
/// look again for the progress deadline.
async fn sync_status(ctx: &Ctx, r: &Rollout) -> Result<Option<Duration>, ObjectError> {
    let d = &r.d;
    let want = replicas(d);
    let c = status_counts(r);
    let total = r.total_replicas();
    let find = |t: &str| pods::condition(d, t);
    let mut conditions: Vec<Value> = Vec::new();
    let available_ok = c.available >= want - max_unavailable(d);
    let available = if available_ok {
        (
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.",
        )
    } else {
        (
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
        )
    };
    let keep_or = |type_: &str, status: &str, reason: &str, message: &str| match find(type_) {
        Some(o) if o["status"] == status && o["reason"] == reason && o["message"] == message => {
            o.clone()
        }
        o => condition(type_, status, reason, message, o),
    };
    conditions.push(keep_or("Available", available.0, available.1, available.2));
    let new_name = r
        .new
        .as_ref()
        .map(|n| str_at(n, "/metadata/name").to_string())
        .unwrap_or_default();
    let mut requeue = None;
    let deadline = d
        .pointer("/spec/progressDeadlineSeconds")
        .and_then(Value::as_i64);
    let old_progress = find("Progressing");
    let mut progressing = old_progress.cloned();
    let reason_is = |p: &Option<Value>, r: &str| p.as_ref().is_some_and(|p| p["reason"] == r);
    match &r.progress {
        Some((reason, msg)) if *reason == "NewReplicaSetCreated" || progressing.is_none() => {
            progressing = Some(condition("Progressing", "True", reason, msg, old_progress));
        }
        _ => {}
    }
    let paused = d["spec"]["paused"] == true;
    if paused && !reason_is(&progressing, "DeploymentPaused") {
        progressing = Some(condition(
            "Progressing",
            "Unknown",
            "DeploymentPaused",
            "Deployment is paused",
            old_progress,
        ));
    } else if !paused && reason_is(&progressing, "DeploymentPaused") {
        progressing = Some(condition(
            "Progressing",
            "Unknown",
            "DeploymentResumed",
            "Deployment is resumed",
            old_progress,
        ));
    }
    let done_before = c.replicas == c.updated && reason_is(&progressing, "NewReplicaSetAvailable");
    if let Some(secs) = deadline.filter(|_| !paused && !done_before) {
        let current = progressing.clone();
        if c.updated == want && c.replicas == want && c.available == want && r.new.is_some() {
            let msg = format!("ReplicaSet \"{new_name}\" has successfully progressed.");
            progressing = Some(condition(
                "Progressing",
                "True",
                "NewReplicaSetAvailable",
                &msg,
                current.as_ref(),
            ));
        } else if made_progress(d, &c) {
            let msg = format!("ReplicaSet \"{new_name}\" is progressing.");
            progressing = Some(condition(
                "Progressing",
                "True",
                "ReplicaSetUpdated",
                &msg,
                current.as_ref(),
            ));
        } else if let Some(p) = current
            .as_ref()
            .filter(|p| p["reason"] != "ProgressDeadlineExceeded")
        {
            let since = p["lastUpdateTime"]
                .as_str()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok());
            let left = since.map_or(jiff::SignedDuration::ZERO, |t| {
                jiff::SignedDuration::from_secs(secs) - now().duration_since(t)
            });
            if left <= jiff::SignedDuration::ZERO {
                let msg = format!("ReplicaSet \"{new_name}\" has timed out progressing.");
                progressing = Some(condition(
                    "Progressing",
                    "False",
                    "ProgressDeadlineExceeded",
                    &msg,
                    current.as_ref(),
                ));
            } else {
                requeue = Some(Duration::from_millis(left.as_millis().max(1) as u64 + 10));
            }
        }
    }
    if let Some(p) = progressing {
        conditions.push(p);
    }
    // A ReplicaSet's failure to create or delete pods shows on the deployment too.
    if let Some(f) = r
        .all()
        .find_map(|rs| pods::condition_true(rs, "ReplicaFailure"))
    {
        conditions.push(keep_or(
            "ReplicaFailure",
            "True",
            str_at(f, "/reason"),
            str_at(f, "/message"),
        ));
    }
    let mut status = Map::new();
    status.insert(
        "observedGeneration".into(),
        d["metadata"]["generation"].clone(),
    );
    for (k, n) in [
        ("replicas", c.replicas),
        ("updatedReplicas", c.updated),
        ("readyReplicas", c.ready),
        ("availableReplicas", c.available),
        ("unavailableReplicas", (total - c.available).max(0)),
    ] {
        if n != 0 {
            status.insert(k.into(), json!(n));
        }
    }
    if let Some(cc) = d.pointer("/status/collisionCount") {
        status.insert("collisionCount".into(), cc.clone());
    }
    // Conditions in kube's order: Available, Progressing, ReplicaFailure; compared without
    // the times that only move.
    status.insert("conditions".into(), Value::Array(conditions));
    let status = Value::Object(status);
    if !status_changed(d.get("status"), &status) {
        return Ok(requeue);
    }
    super::update_same(
        &ctx.objects,
        &ctx.deployments,
        d,
        Target::Status,
        |cur, next| {
            let mut s = status.clone();
            if let Some(cc) = cur.pointer("/status/collisionCount") {
                s["collisionCount"] = cc.clone();
            }
            next["status"] = s;
        },
    )
    .await?;
    Ok(requeue)
}

/// Whether anything moved since the last status (kube's DeploymentProgressing).
fn made_progress(d: &Value, c: &Counts) -> bool {
    let old = |p: &str| int_at(d, &format!("/status/{p}"));
    let old_old = old("replicas") - old("updatedReplicas");
    let new_old = c.replicas - c.updated;
    c.updated > old("updatedReplicas")
        || new_old < old_old
        || c.ready > old("readyReplicas")
        || c.available > old("availableReplicas")
}

/// Whether two statuses differ in more than the `lastUpdateTime` of unchanged conditions.
fn status_changed(old: Option<&Value>, new: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(cs) = v.get_mut("conditions").and_then(Value::as_array_mut) {
            for c in cs {
                c.as_object_mut().map(|c| c.remove("lastUpdateTime"));
                c.as_object_mut().map(|c| c.remove("lastTransitionTime"));
            }
        }
        v
    };
    match old {
        None => true,
        Some(o) => strip(o) != strip(new),
    }
}

impl Ctx {
    fn event(&self, d: &Value, type_: EventType, reason: &'static str, msg: &str) {
        let event = Event {
            type_,
            reason,
            message: msg,
        };
        self.events.publish(d, "Deployment", event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(replicas: i64, surge: Value, unavailable: Value) -> Value {
        json!({"spec": {"replicas": replicas, "strategy": {"type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}}}})
    }

    #[test]
    fn surge_and_unavailability_resolve_as_kube() {
        let x = d(10, json!("25%"), json!("25%"));
        assert_eq!((max_surge(&x), max_unavailable(&x)), (3, 2));
        let zero = d(3, json!(0), json!(0));
        assert_eq!(max_unavailable(&zero), 1, "both zero would block");
        let big = d(2, json!(1), json!(5));
        assert_eq!(max_unavailable(&big), 2);
        let recreate = json!({"spec": {"replicas": 3, "strategy": {"type": "Recreate"}}});
        assert_eq!((max_surge(&recreate), max_unavailable(&recreate)), (0, 0));
    }

    #[test]
    fn the_new_replica_set_grows_within_max_surge() {
        let x = d(4, json!(1), json!(0));
        let rs = |n: i64| json!({"spec": {"replicas": n}});
        // 4 old + 0 new: one more pod may exist.
        assert_eq!(new_replicas(&x, [rs(4), rs(0)].iter(), 0), 1);
        // At the surge limit: no growth.
        assert_eq!(new_replicas(&x, [rs(4), rs(1)].iter(), 1), 1);
        // Never beyond the deployment's replicas.
        assert_eq!(new_replicas(&x, [rs(0), rs(3)].iter(), 3), 4);
    }

    #[test]
    fn templates_hash_stably_and_collisions_change_the_hash() {
        let t = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "a"}]}});
        let h = template_hash(&t, None);
        assert_eq!(h, template_hash(&t.clone(), None));
        assert!(h.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
        assert_ne!(h, template_hash(&t, Some(1)));
        let mut t2 = t.clone();
        t2["spec"]["containers"][0]["image"] = json!("b");
        assert_ne!(h, template_hash(&t2, None));
        let mut labelled = t.clone();
        labelled["metadata"]["labels"][HASH_LABEL] = json!(h);
        assert_eq!(template_without_hash(&labelled), t);
    }

    #[test]
    fn scaling_mid_rollout_is_proportional() {
        // 10 replicas, surge 3: two ReplicaSets annotated with max 13.
        let x = d(20, json!(3), json!(2));
        let rs = |n: i64| json!({"metadata": {"annotations": {MAX_REPLICAS: "13"}}, "spec": {"replicas": n}});
        // Going from 10 to 20 (allowed 23, 13 now): the 8-replica set gets most of the 10.
        let p8 = proportion(&rs(8), &x, 10, 0);
        let p5 = proportion(&rs(5), &x, 10, p8);
        assert_eq!((p8, p5), (6, 4));
    }
}

#[cfg(test)]
mod controller_tests {
    use super::*;
    use crate::controllers::testing::{create, eventually, list, objects, rt};
    use crate::objects::WatchItem;

    /// A store with the ReplicaSet and Deployment controllers and the stand-in kubelet.
    async fn started() -> (Arc<Objects>, tempfile::TempDir) {
        let (objects, dir) = objects().await;
        let cache = Cache::new(objects.clone());
        let events = Events::start(objects.clone());
        super::super::replicaset::spawn(&cache, &super::super::replicaset::REPLICA_SET, &events);
        spawn(&cache, &events);
        crate::controllers::kubelet::spawn(objects.clone());
        (objects, dir)
    }

    async fn set_image(objects: &Objects, image: &str) {
        crate::controllers::testing::edit(
            objects,
            rt(objects, "apps", "deployments"),
            Some("default"),
            "web",
            Target::Main,
            |next| {
                next["spec"]["template"]["spec"]["containers"][0]["image"] = json!(image);
            },
        )
        .await;
    }

    async fn rolled_out(objects: &Objects, image: &str) -> Value {
        eventually(&format!("rollout to {image}"), || async {
            let d = list(objects, "apps", "deployments").await.remove(0);
            let s = &d["status"];
            let done = s["updatedReplicas"] == 3
                && s["replicas"] == 3
                && s["availableReplicas"] == 3
                && s["observedGeneration"] == d["metadata"]["generation"]
                && d["spec"]["template"]["spec"]["containers"][0]["image"] == image
                && s["conditions"]
                    .as_array()
                    .is_some_and(|cs| cs.iter().any(|c| c["reason"] == "NewReplicaSetAvailable"));
            done.then_some(d)
        })
        .await
    }

    #[tokio::test]
    async fn rolling_updates_keep_availability_and_undo_restores_a_revision() {
        let (objects, _d) = started().await;
        // Bound pods (as if scheduled) are deleted gracefully: they linger, terminating.
        let d = json!({"metadata": {"name": "web"}, "spec": {"replicas": 3,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 1}},
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "v1"}]}}}});
        create(&objects, "apps", "deployments", d).await;
        let first = rolled_out(&objects, "v1").await;
        assert_eq!(annotation(&first, REVISION), Some("1"));
        let sets = list(&objects, "apps", "replicasets").await;
        assert_eq!(sets.len(), 1);
        let hash = str_at(&sets[0], "/spec/template/metadata/labels/pod-template-hash").to_string();
        assert_eq!(str_at(&sets[0], "/metadata/name"), format!("web-{hash}"));
        assert_eq!(annotation(&sets[0], REVISION), Some("1"));

        // Watch availability through the rollout: never below replicas - maxUnavailable.
        let drt = rt(&objects, "apps", "deployments");
        let mut watch = crate::controllers::testing::watch_now(&objects, drt);
        let lowest = tokio::spawn(async move {
            let mut lowest = i64::MAX;
            while let Some(WatchItem::Event { object, .. }) = watch.next().await {
                let d: Value = serde_json::from_slice(&object).unwrap();
                lowest = lowest.min(int_at(&d, "/status/availableReplicas"));
                if d["spec"]["template"]["spec"]["containers"][0]["image"] == "v2"
                    && d["status"]["observedGeneration"] == d["metadata"]["generation"]
                    && d["status"]["updatedReplicas"] == 3
                    && d["status"]["availableReplicas"] == 3
                    && d["status"]["replicas"] == 3
                {
                    break;
                }
            }
            lowest
        });
        set_image(&objects, "v2").await;
        let second = rolled_out(&objects, "v2").await;
        assert!(
            lowest.await.unwrap() >= 2,
            "availability fell below 3 - maxUnavailable"
        );
        assert_eq!(annotation(&second, REVISION), Some("2"));
        let sets = list(&objects, "apps", "replicasets").await;
        assert_eq!(sets.len(), 2);
        let old = sets
            .iter()
            .find(|s| annotation(s, REVISION) == Some("1"))
            .unwrap();
        assert_eq!(replicas(old), 0);

        // Undo: the template of revision 1 again; its ReplicaSet becomes revision 3.
        set_image(&objects, "v1").await;
        let third = rolled_out(&objects, "v1").await;
        assert_eq!(annotation(&third, REVISION), Some("3"));
        let sets = list(&objects, "apps", "replicasets").await;
        assert_eq!(sets.len(), 2, "no new ReplicaSet for an old template");
        let back = sets
            .iter()
            .find(|s| str_at(s, "/metadata/name") == format!("web-{hash}"))
            .unwrap();
        assert_eq!(annotation(back, REVISION), Some("3"));
        assert_eq!(annotation(back, REVISION_HISTORY), Some("1"));
        assert_eq!(replicas(back), 3);
    }

    #[tokio::test]
    async fn recreate_stops_old_pods_before_starting_new_ones_and_history_is_limited() {
        let (objects, _d) = started().await;
        let d = json!({"metadata": {"name": "web"}, "spec": {"replicas": 3, "revisionHistoryLimit": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "v1"}]}}}});
        create(&objects, "apps", "deployments", d).await;
        rolled_out(&objects, "v1").await;
        let prt = rt(&objects, "", "pods");
        let mut watch = crate::controllers::testing::watch_now(&objects, prt);
        let mixed = tokio::spawn(async move {
            // Pods alive per image; Recreate never has both at once.
            let mut alive: std::collections::HashMap<String, String> = Default::default();
            let mut mixed = false;
            while let Some(WatchItem::Event { kind, object, .. }) = watch.next().await {
                let p: Value = serde_json::from_slice(&object).unwrap();
                let name = str_at(&p, "/metadata/name").to_string();
                if kind == "DELETED" {
                    alive.remove(&name);
                } else {
                    alive.insert(name, str_at(&p, "/spec/containers/0/image").to_string());
                }
                let images: std::collections::HashSet<&String> = alive.values().collect();
                mixed |= images.len() > 1;
                if alive.len() == 3 && images.iter().all(|i| *i == "v2") {
                    break;
                }
            }
            mixed
        });
        set_image(&objects, "v2").await;
        rolled_out(&objects, "v2").await;
        assert!(!mixed.await.unwrap(), "old and new pods ran at once");
        set_image(&objects, "v3").await;
        rolled_out(&objects, "v3").await;
        let sets = eventually("history limited to 1", || async {
            let sets = list(&objects, "apps", "replicasets").await;
            (sets.len() == 2).then_some(sets)
        })
        .await;
        let mut revs: Vec<&str> = sets
            .iter()
            .filter_map(|s| annotation(s, REVISION))
            .collect();
        revs.sort();
        assert_eq!(revs, ["2", "3"]);
    }

    #[tokio::test]
    async fn scaling_and_pausing() {
        let (objects, _d) = started().await;
        let d = json!({"metadata": {"name": "web"}, "spec": {"replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "v1"}]}}}});
        create(&objects, "apps", "deployments", d).await;
        rolled_out(&objects, "v1").await;
        let drt = rt(&objects, "apps", "deployments");
        let edit = |f: fn(&mut Value)| {
            let objects = objects.clone();
            async move {
                crate::controllers::testing::edit(
                    &objects,
                    drt,
                    Some("default"),
                    "web",
                    Target::Main,
                    f,
                )
                .await;
            }
        };
        edit(|d| d["spec"]["paused"] = json!(true)).await;
        edit(|d| d["spec"]["template"]["spec"]["containers"][0]["image"] = json!("v2")).await;
        edit(|d| d["spec"]["replicas"] = json!(5)).await;
        let d = eventually("scaled while paused", || async {
            let d = list(&objects, "apps", "deployments").await.remove(0);
            (d["status"]["availableReplicas"] == 5).then_some(d)
        })
        .await;
        let progressing = pods::condition(&d, "Progressing").unwrap().clone();
        assert_eq!(
            (
                progressing["status"].as_str(),
                progressing["reason"].as_str()
            ),
            (Some("Unknown"), Some("DeploymentPaused"))
        );
        assert_eq!(
            list(&objects, "apps", "replicasets").await.len(),
            1,
            "paused: no new revision"
        );
        edit(|d| d["spec"]["paused"] = json!(false)).await;
        let d = eventually("resumed rollout", || async {
            let d = list(&objects, "apps", "deployments").await.remove(0);
            let s = &d["status"];
            (s["updatedReplicas"] == 5 && s["replicas"] == 5 && s["availableReplicas"] == 5)
                .then_some(d)
        })
        .await;
        assert_eq!(annotation(&d, REVISION), Some("2"));
    }
}
