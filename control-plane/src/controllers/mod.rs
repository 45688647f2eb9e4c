//! Controllers: plain reconcile functions on the controller runtime ([`crate::runtime`]:
//! the shared watched cache, work queues, `spawn_controller`), one module per controller,
//! and the helpers they share; [`crate::cluster`] composes them.

pub(crate) mod cronjob;
pub(crate) mod daemonset;
pub(crate) mod deployment;
pub(crate) mod endpoints;
pub(crate) mod garbage_collector;
pub(crate) mod job;
pub(crate) mod kubernetes_service;
pub(crate) mod namespace;
pub(crate) mod node_ipam;
pub(crate) mod node_lifecycle;
pub(crate) mod pods;
pub(crate) mod replicaset;
pub(crate) mod service_lb;
pub(crate) mod system_namespaces;

pub use node_ipam::NodeIpamConfig;
pub use node_lifecycle::NodeLifecycleConfig;
pub use system_namespaces::ensure as ensure_system_namespaces;

use std::sync::Arc;

use serde_json::Value;

use crate::objects::{ObjectError, Objects};
use crate::registry::ResourceType;
use crate::runtime::{written_rev, Informer, Queue};
use crate::store::Revision;

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

/// A store with the `default` namespace, for controller tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::objects::{WriteOptions, Written};
    use crate::registry::Registry;
    use crate::store::SledStore;
    use std::future::Future;
    use std::time::Duration;

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
    use std::time::Duration;

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
