//! ReplicaSets and ReplicationControllers (one controller, two kinds), as
//! kube-controller-manager's: keep `replicas` active pods matching the selector, adopting
//! matching orphans and releasing owned pods that no longer match; create from the template
//! in slow-start batches (1, 2, 4, ...; stopping at a failure); delete the surplus in
//! [`pods::deletion_order`]; report `status`.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::{json, Map, Value};

use super::pods::{self, str_at};
use crate::events::{Event, EventType, Events, Recorder};
use crate::objects::{DeleteOptions, ObjectError, Objects, Target, WriteOptions};
use crate::registry::ResourceType;
use crate::runtime::{self, cache, written_rev, Action, Cache, Informer, Queue};
use crate::selectors::label_selector_matches_json;
use crate::store::Revision;

/// At most this many pods are created or deleted by one reconcile (kube's burstReplicas).
const BURST: usize = 500;

/// The two kinds this controller runs.
pub struct SetKind {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub kind: &'static str,
    component: &'static str,
    /// The selector of an object of the kind.
    selector: fn(&Value) -> Option<LabelSelector>,
}

impl SetKind {
    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

pub const REPLICA_SET: SetKind = SetKind {
    group: "apps",
    version: "v1",
    plural: "replicasets",
    kind: "ReplicaSet",
    component: "replicaset-controller",
    selector: |v| serde_json::from_value(v.pointer("/spec/selector")?.clone()).ok(),
};

/// A ReplicationController's selector is a plain label map.
pub const REPLICATION_CONTROLLER: SetKind = SetKind {
    group: "",
    version: "v1",
    plural: "replicationcontrollers",
    kind: "ReplicationController",
    component: "replication-controller",
    selector: |v| {
        let labels = serde_json::from_value(v.pointer("/spec/selector")?.clone()).ok()?;
        Some(LabelSelector {
            match_labels: Some(labels),
            match_expressions: None,
        })
    },
};

struct Ctx {
    kind: &'static SetKind,
    objects: Arc<Objects>,
    sets: Arc<Informer>,
    pods: Arc<Informer>,
    events: Recorder,
}

/// Starts the controller of `kind`: a set is reconciled when it changes and when one of
/// its pods (or a pod it could adopt) does.
pub fn spawn(cache: &Arc<Cache>, kind: &'static SetKind, events: &Arc<Events>) {
    let ctx = Arc::new(Ctx {
        kind,
        objects: cache.objects().clone(),
        sets: cache.of(kind.group, kind.version, kind.plural),
        pods: cache.of("", "v1", "pods"),
        events: events.recorder(kind.component),
    });
    let queue = Queue::new();
    runtime::queue_changes(&ctx.sets, &queue);
    let (q, sets) = (queue.clone(), ctx.sets.clone());
    ctx.pods.on_change(move |c| {
        for state in [c.old.as_deref(), c.new.as_deref()].into_iter().flatten() {
            owners_to_sync(kind, &sets, state, &mut |k| q.add(k));
        }
    });
    runtime::spawn_controller(kind.component, queue, move |key| {
        reconcile(ctx.clone(), key)
    });
}

/// The sets a pod's change concerns: its controller if one of `kind`, else (an orphan)
/// every set of the namespace whose selector matches it.
fn owners_to_sync(kind: &SetKind, sets: &Informer, pod: &Value, add: &mut dyn FnMut(String)) {
    let ns = str_at(pod, "/metadata/namespace");
    match pods::controller_ref(pod) {
        Some(r) if r["kind"] == kind.kind => add(format!("{ns}/{}", str_at(r, "/name"))),
        Some(_) => {}
        None if pods::is_terminating(pod) => {}
        None => {
            for set in sets.list(Some(ns)) {
                if (kind.selector)(&set).is_some_and(|s| label_selector_matches_json(&s, pod)) {
                    add(cache::key_of(&set));
                }
            }
        }
    }
}

async fn reconcile(ctx: Arc<Ctx>, key: String) -> Result<Action, ObjectError> {
    let (ns, name) = cache::split_key(&key);
    let Some(set) = ctx.sets.get(ns, name) else {
        return Ok(Action::Done);
    };
    let ns = ns.unwrap_or_default();
    let Some(selector) = (ctx.kind.selector)(&set) else {
        return Ok(Action::Done);
    };
    let uid = str_at(&set, "/metadata/uid");
    let all = ctx.pods.list(Some(ns));
    let mut last_write: Revision = 0;
    let mut owned: Vec<Arc<Value>> = Vec::new();
    for pod in &all {
        match claim(&ctx, &set, &selector, pod).await? {
            Claim::Mine(rev) => {
                last_write = last_write.max(rev);
                owned.push(pod.clone());
            }
            Claim::Released(rev) => last_write = last_write.max(rev),
            Claim::NotMine => {}
        }
    }
    let active: Vec<&Value> = owned
        .iter()
        .map(|p| p.as_ref())
        .filter(|p| pods::is_active(p))
        .collect();
    let mut failure = None;
    if !pods::is_terminating(&set) {
        let want = set["spec"]["replicas"].as_i64().unwrap_or(1).max(0) as usize;
        match manage(&ctx, &set, ns, &active, want).await {
            Ok(rev) => last_write = last_write.max(rev),
            Err((rev, reason, e)) => {
                last_write = last_write.max(rev);
                failure = Some((reason, e));
            }
        }
    }
    // The status counts the pods as they are after this reconcile's writes: one counting a
    // pod it just deleted would let a Deployment take down one pod too many.
    let after: Vec<Arc<Value>>;
    let active = if last_write > 0 {
        ctx.pods.wait_for(last_write).await;
        after = ctx
            .pods
            .list(Some(ns))
            .into_iter()
            .filter(|p| pods::controlled_by(p, uid) && pods::is_active(p))
            .collect();
        after.iter().map(|p| p.as_ref()).collect()
    } else {
        active
    };
    let min_ready = set["spec"]["minReadySeconds"].as_i64().unwrap_or(0);
    let status = status(&set, &active, min_ready, failure.as_ref());
    if set.get("status") != Some(&status) {
        super::update_same(
            &ctx.objects,
            &ctx.sets,
            &set,
            Target::Status,
            |cur, next| {
                let mut s = status.clone();
                s["observedGeneration"] = cur["metadata"]["generation"].clone();
                next["status"] = s;
            },
        )
        .await?;
    }
    if let Some((_, e)) = failure {
        return Err(e);
    }
    let ready = status["readyReplicas"].as_i64().unwrap_or(0);
    if min_ready > 0 && ready != status["availableReplicas"].as_i64().unwrap_or(0) {
        return Ok(Action::RequeueAfter(Duration::from_secs(min_ready as u64)));
    }
    Ok(Action::Done)
}

enum Claim {
    /// Ours (now); the revision of an adoption, or 0.
    Mine(Revision),
    /// Was ours, no longer matches: released at this revision.
    Released(Revision),
    NotMine,
}

/// Adopts a matching orphan, releases an owned pod that no longer matches (kube's
/// `ClaimPods`); a set being deleted adopts nothing.
async fn claim(
    ctx: &Ctx,
    set: &Value,
    selector: &LabelSelector,
    pod: &Value,
) -> Result<Claim, ObjectError> {
    let uid = str_at(set, "/metadata/uid");
    let matches = label_selector_matches_json(selector, pod);
    let (ns, name) = (
        str_at(pod, "/metadata/namespace"),
        str_at(pod, "/metadata/name"),
    );
    let pods_rt = ctx.pods.rt;
    match pods::controller_ref(pod) {
        Some(r) if r["uid"] == uid => {
            if matches || pods::is_terminating(pod) {
                return Ok(Claim::Mine(0));
            }
            let rev = set_owner(&ctx.objects, pods_rt, ns, name, |refs| {
                refs.retain(|r| r["uid"] != uid);
            })
            .await?;
            Ok(Claim::Released(rev))
        }
        Some(_) => Ok(Claim::NotMine),
        None if !matches || pods::is_terminating(pod) || pods::is_terminating(set) => {
            Ok(Claim::NotMine)
        }
        None => {
            let owner = pods::owner_ref(&ctx.kind.api_version(), ctx.kind.kind, set);
            let mut adopted = false;
            let rev = set_owner(&ctx.objects, pods_rt, ns, name, |refs| {
                if !refs.iter().any(|r| r["controller"] == true) {
                    refs.push(owner.clone());
                    adopted = true;
                }
            })
            .await?;
            Ok(if adopted {
                Claim::Mine(rev)
            } else {
                Claim::NotMine
            })
        }
    }
}

/// Rewrites an object's owner references; returns the write's revision (0 if it is gone).
pub async fn set_owner(
    objects: &Objects,
    rt: &ResourceType,
    ns: &str,
    name: &str,
    edit: impl FnMut(&mut Vec<Value>),
) -> Result<Revision, ObjectError> {
    super::edit_meta_list(objects, rt, Some(ns), name, "ownerReferences", edit).await
}

type Failure = (Revision, &'static str, ObjectError);

/// Creates or deletes pods so that `want` are active; returns the last write's revision.
async fn manage(
    ctx: &Ctx,
    set: &Value,
    ns: &str,
    active: &[&Value],
    want: usize,
) -> Result<Revision, Failure> {
    let name = str_at(set, "/metadata/name");
    if active.len() < want {
        let n = (want - active.len()).min(BURST);
        let owner = pods::owner_ref(&ctx.kind.api_version(), ctx.kind.kind, set);
        let template = set["spec"]["template"].clone();
        let prefix = pods::pod_name_prefix(name);
        let create = || async {
            let pod = pods::from_template(&template, &prefix, owner.clone());
            let w = ctx
                .objects
                .create(ctx.pods.rt, Some(ns), pod, &WriteOptions::default())
                .await?;
            let created: Value = serde_json::from_slice(&w.object).unwrap_or_default();
            let msg = format!("Created pod: {}", str_at(&created, "/metadata/name"));
            ctx.event(set, EventType::Normal, "SuccessfulCreate", &msg);
            Ok(written_rev(&w))
        };
        return slow_start(n, create).await.map_err(|(rev, e)| {
            ctx.event(
                set,
                EventType::Warning,
                "FailedCreate",
                &format!("Error creating: {e}"),
            );
            (rev, "FailedCreate", e)
        });
    }
    if active.len() > want {
        let n = (active.len() - want).min(BURST);
        let mut victims = active.to_vec();
        let related = ctx.related_pods(set, ns);
        let related: Vec<&Value> = related.iter().map(|p| p.as_ref()).collect();
        pods::deletion_order(&mut victims, &related);
        let results = join_all(victims[..n].iter().map(|pod| async move {
            let opts = DeleteOptions {
                precondition_uid: Some(str_at(pod, "/metadata/uid").to_string()),
                ..Default::default()
            };
            let pod_name = str_at(pod, "/metadata/name");
            match ctx
                .objects
                .delete(ctx.pods.rt, Some(ns), pod_name, &opts)
                .await
            {
                Ok(w) => {
                    ctx.event(
                        set,
                        EventType::Normal,
                        "SuccessfulDelete",
                        &format!("Deleted pod: {pod_name}"),
                    );
                    Ok(written_rev(&w))
                }
                Err(ObjectError::NotFound { .. }) => Ok(0),
                Err(e) => Err(e),
            }
        }))
        .await;
        let mut last = 0;
        let mut failed = None;
        for r in results {
            match r {
                Ok(rev) => last = last.max(rev),
                Err(e) => failed = Some(e),
            }
        }
        if let Some(e) = failed {
            ctx.event(
                set,
                EventType::Warning,
                "FailedDelete",
                &format!("Error deleting: {e}"),
            );
            return Err((last, "FailedDelete", e));
        }
        return Ok(last);
    }
    Ok(0)
}

/// Runs `count` calls in batches of 1, 2, 4, ... (each batch at once), stopping after a
/// batch with a failure: a template that cannot work fails once, not `count` times.
pub async fn slow_start<F, Fut>(count: usize, f: F) -> Result<Revision, (Revision, ObjectError)>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Revision, ObjectError>>,
{
    let (mut done, mut batch, mut last) = (0, 1, 0);
    while done < count {
        let n = batch.min(count - done);
        let mut failed = None;
        for r in join_all((0..n).map(|_| f())).await {
            match r {
                Ok(rev) => last = last.max(rev),
                Err(e) => failed = Some(e),
            }
        }
        if let Some(e) = failed {
            return Err((last, e));
        }
        done += n;
        batch = n * 2;
    }
    Ok(last)
}

impl Ctx {
    fn event(&self, set: &Value, type_: EventType, reason: &'static str, msg: &str) {
        let event = Event {
            type_,
            reason,
            message: msg,
        };
        self.events.publish(set, self.kind.kind, event);
    }

    /// The pods of sets sharing this set's controller (a Deployment's other ReplicaSets):
    /// deletion prefers nodes crowded with them.
    fn related_pods(&self, set: &Value, ns: &str) -> Vec<Arc<Value>> {
        let siblings: Vec<String> = match pods::controller_ref(set) {
            Some(r) => self
                .sets
                .list(Some(ns))
                .iter()
                .filter(|s| pods::controlled_by(s, str_at(r, "/uid")))
                .map(|s| str_at(s, "/metadata/uid").to_string())
                .collect(),
            None => vec![str_at(set, "/metadata/uid").to_string()],
        };
        self.pods
            .list(Some(ns))
            .into_iter()
            .filter(|p| {
                pods::controller_ref(p).is_some_and(|r| siblings.iter().any(|u| r["uid"] == *u))
            })
            .collect()
    }
}

/// The status a set reports for its active pods.
fn status(
    set: &Value,
    active: &[&Value],
    min_ready: i64,
    failure: Option<&(&'static str, ObjectError)>,
) -> Value {
    let now = crate::objects::now();
    let template_labels = set
        .pointer("/spec/template/metadata/labels")
        .and_then(Value::as_object);
    let fully_labeled = active
        .iter()
        .filter(|p| {
            let labels = p.pointer("/metadata/labels").and_then(Value::as_object);
            template_labels
                .into_iter()
                .flatten()
                .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        })
        .count();
    let ready = active.iter().filter(|p| pods::is_ready(p)).count();
    let available = active
        .iter()
        .filter(|p| pods::is_available(p, min_ready, now))
        .count();
    let mut s = Map::new();
    s.insert("replicas".into(), json!(active.len()));
    // Zero counts are left out, as Kubernetes serializes them (omitempty).
    for (k, n) in [
        ("fullyLabeledReplicas", fully_labeled),
        ("readyReplicas", ready),
        ("availableReplicas", available),
    ] {
        if n > 0 {
            s.insert(k.into(), json!(n));
        }
    }
    s.insert(
        "observedGeneration".into(),
        set["metadata"]["generation"].clone(),
    );
    let old_conditions = set.pointer("/status/conditions").and_then(Value::as_array);
    let mut conditions: Vec<Value> = old_conditions
        .into_iter()
        .flatten()
        .filter(|c| c["type"] != "ReplicaFailure")
        .cloned()
        .collect();
    if let Some((reason, e)) = failure {
        let old = old_conditions
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "ReplicaFailure" && c["reason"] == *reason);
        conditions.push(json!({
            "type": "ReplicaFailure", "status": "True", "reason": reason,
            "message": e.to_string(),
            "lastTransitionTime": old.map_or_else(|| json!(crate::objects::now_string()), |c| c["lastTransitionTime"].clone()),
        }));
    }
    if !conditions.is_empty() {
        s.insert("conditions".into(), Value::Array(conditions));
    }
    Value::Object(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slow_start_doubles_batches_and_stops_at_a_failure() {
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let r = slow_start(10, || async {
            let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if n == 4 {
                Err(ObjectError::BadRequest("quota".into()))
            } else {
                Ok(n as u64)
            }
        })
        .await;
        // Batches 1, 2, then 4 (the fifth call fails): 7 calls, not 10.
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 7);
        assert!(matches!(r, Err((6, ObjectError::BadRequest(_)))));
        let ok = slow_start(3, || async { Ok(1) }).await;
        assert_eq!(ok.unwrap(), 1);
    }

    #[test]
    fn status_counts_ready_available_and_fully_labeled_pods() {
        let set = json!({"metadata": {"generation": 3}, "spec": {"template": {"metadata": {"labels": {"app": "a", "tier": "t"}}}}});
        let ready = json!({"metadata": {"labels": {"app": "a", "tier": "t"}}, "status": {"conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2020-01-01T00:00:00Z"}]}});
        let partial = json!({"metadata": {"labels": {"app": "a"}}});
        let s = status(&set, &[&ready, &partial], 5, None);
        assert_eq!(
            s,
            json!({"replicas": 2, "fullyLabeledReplicas": 1, "readyReplicas": 1, "availableReplicas": 1, "observedGeneration": 3})
        );
        let failed = ("FailedCreate", ObjectError::BadRequest("no".into()));
        let s = status(&set, &[], 0, Some(&failed));
        assert_eq!(s["replicas"], 0);
        assert_eq!(s["conditions"][0]["type"], "ReplicaFailure");
        assert_eq!(s["conditions"][0]["reason"], "FailedCreate");
    }
}

#[cfg(test)]
mod controller_tests {
    use super::*;
    use crate::controllers::testing::{create, eventually, list, objects, rt};

    fn active_pods(pods: &[Value], uid: &str) -> Vec<Value> {
        pods.iter()
            .filter(|p| pods::controlled_by(p, uid) && pods::is_active(p))
            .cloned()
            .collect()
    }

    #[tokio::test]
    async fn keeps_replicas_adopts_orphans_and_scales_down() {
        let (objects, _d) = objects().await;
        // An orphan that matches is adopted rather than duplicated.
        let orphan = json!({"metadata": {"name": "orphan", "labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}});
        create(&objects, "", "pods", orphan).await;
        let other = json!({"metadata": {"name": "other", "labels": {"app": "db"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}});
        create(&objects, "", "pods", other).await;
        let cache = Cache::new(objects.clone());
        spawn(&cache, &REPLICA_SET, &Events::start(objects.clone()));
        let rs = json!({"metadata": {"name": "web"}, "spec": {"replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}});
        let rs = create(&objects, "apps", "replicasets", rs).await;
        let uid = str_at(&rs, "/metadata/uid").to_string();
        let pods = eventually("3 pods", || async {
            let mine = active_pods(&list(&objects, "", "pods").await, &uid);
            (mine.len() == 3).then_some(mine)
        })
        .await;
        assert!(
            pods.iter().any(|p| p["metadata"]["name"] == "orphan"),
            "the orphan was adopted"
        );
        assert!(pods
            .iter()
            .all(|p| p["metadata"]["generateName"] == "web-" || p["metadata"]["name"] == "orphan"));
        eventually("status", || async {
            let rs = list(&objects, "apps", "replicasets").await.remove(0);
            (rs["status"]["replicas"] == 3 && rs["status"]["fullyLabeledReplicas"] == 3)
                .then_some(())
        })
        .await;
        // A pod that stops matching is released, and replaced.
        let rts = rt(&objects, "", "pods");
        crate::controllers::testing::edit(
            &objects,
            rts,
            Some("default"),
            "orphan",
            Target::Main,
            |p| {
                p["metadata"]["labels"]["app"] = json!("debug");
            },
        )
        .await;
        eventually("release and replacement", || async {
            let all = list(&objects, "", "pods").await;
            let released = all
                .iter()
                .any(|p| p["metadata"]["name"] == "orphan" && pods::controller_ref(p).is_none());
            (released && active_pods(&all, &uid).len() == 3).then_some(())
        })
        .await;
        // Scale down to 1: two are deleted, and no status that has seen the change counts
        // them (a Deployment would take that for availability).
        let rsrt = rt(&objects, "apps", "replicasets");
        let mut watch = crate::controllers::testing::watch_now(&objects, rsrt);
        let statuses = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(crate::objects::WatchItem::Event { object, .. }) = watch.next().await {
                let rs: Value = serde_json::from_slice(&object).unwrap();
                let observed = rs["status"]["observedGeneration"] == rs["metadata"]["generation"];
                seen.push((observed, rs["status"]["replicas"].as_i64().unwrap_or(0)));
                if observed && rs["status"]["replicas"] == 1 {
                    return seen;
                }
            }
            seen
        });
        crate::controllers::testing::edit(
            &objects,
            rt(&objects, "apps", "replicasets"),
            Some("default"),
            "web",
            Target::Main,
            |r| {
                r["spec"]["replicas"] = json!(1);
            },
        )
        .await;
        eventually("scale down", || async {
            let all = list(&objects, "", "pods").await;
            (active_pods(&all, &uid).len() == 1).then_some(())
        })
        .await;
        let rs = eventually("status of 1", || async {
            let rs = list(&objects, "apps", "replicasets").await.remove(0);
            (rs["status"]["replicas"] == 1).then_some(rs)
        })
        .await;
        assert_eq!(
            rs["status"]["observedGeneration"],
            rs["metadata"]["generation"]
        );
        let seen = statuses.await.unwrap();
        assert!(
            seen.iter().all(|(observed, n)| !observed || *n == 1),
            "a status of the new generation counted deleted pods: {seen:?}"
        );
        let all = list(&objects, "", "pods").await;
        assert!(all
            .iter()
            .any(|p| p["metadata"]["name"] == "other" && pods::controller_ref(p).is_none()));
    }

    #[tokio::test]
    async fn replication_controllers_replace_deleted_pods() {
        let (objects, _d) = objects().await;
        let cache = Cache::new(objects.clone());
        spawn(
            &cache,
            &REPLICATION_CONTROLLER,
            &Events::start(objects.clone()),
        );
        let rc = json!({"metadata": {"name": "rc"}, "spec": {"replicas": 2,
            "template": {"metadata": {"labels": {"app": "rc"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}});
        let rc = create(&objects, "", "replicationcontrollers", rc).await;
        let uid = str_at(&rc, "/metadata/uid").to_string();
        let first = eventually("2 pods", || async {
            let mine = active_pods(&list(&objects, "", "pods").await, &uid);
            (mine.len() == 2).then_some(mine)
        })
        .await;
        assert_eq!(
            pods::controller_ref(&first[0]).unwrap()["kind"],
            "ReplicationController"
        );
        let victim = str_at(&first[0], "/metadata/name").to_string();
        objects
            .delete(
                rt(&objects, "", "pods"),
                Some("default"),
                &victim,
                &DeleteOptions::default(),
            )
            .await
            .unwrap();
        eventually("a replacement", || async {
            let mine = active_pods(&list(&objects, "", "pods").await, &uid);
            (mine.len() == 2
                && mine
                    .iter()
                    .all(|p| p["metadata"]["name"] != victim.as_str()))
            .then_some(())
        })
        .await;
    }
}
