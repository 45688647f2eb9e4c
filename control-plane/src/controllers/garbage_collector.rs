//! The garbage collector, as Kubernetes': an object whose owners (`ownerReferences`) are all
//! gone is deleted (the default `Background` policy), looked at when an owner is deleted and
//! whenever the object changes (so also at start). An owner deleted with `Orphan`
//! (`kubectl delete --cascade=orphan`) carries the `orphan` finalizer until its dependents no
//! longer name it; one deleted with `Foreground` carries `foregroundDeletion` until its
//! dependents are gone. Then the finalizer is removed and the owner goes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::objects::{DeleteOptions, ListOptions, ObjectError, Objects};
use crate::registry::ResourceType;
use crate::runtime::{spawn_object_controller, Action, Cache};

const ORPHAN: &str = "orphan";
const FOREGROUND: &str = "foregroundDeletion";
/// How soon an owner in foreground deletion looks at its dependents again.
const RECHECK: Duration = Duration::from_millis(500);

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// An object's namespace; `None` for a cluster-scoped one.
fn namespace_of(v: &Value) -> Option<&str> {
    Some(str_at(v, "/metadata/namespace")).filter(|n| !n.is_empty())
}

fn has_finalizer(obj: &Value, f: &str) -> bool {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|fs| fs.iter().any(|x| x == f))
}

/// Every object that names `uid` among its owners: in `ns` for a namespaced owner, anywhere
/// for a cluster-scoped one.
async fn dependents(
    objects: &Objects,
    ns: Option<&str>,
    uid: &str,
) -> Result<Vec<(&'static ResourceType, Value)>, ObjectError> {
    let mut out = Vec::new();
    for rt in objects.registry().resources {
        let page = objects
            .list(rt, ns.filter(|_| rt.namespaced), &ListOptions::default())
            .await?;
        for item in page.items {
            let Ok(v) = serde_json::from_slice::<Value>(&item) else {
                continue;
            };
            let owned = v
                .pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid));
            if owned {
                out.push((rt, v));
            }
        }
    }
    Ok(out)
}

/// Removes finalizer `f` from the owner (which then goes, if it was the last).
async fn finish(
    objects: &Objects,
    rt: &ResourceType,
    ns: Option<&str>,
    name: &str,
    f: &str,
) -> Result<Action, ObjectError> {
    super::edit_meta_list(objects, rt, ns, name, "finalizers", |fs| {
        fs.retain(|x| x != f)
    })
    .await?;
    Ok(Action::Done)
}

/// The objects that named each owner (by uid) when last seen, so an owner's deletion finds
/// its dependents without listing everything. Entries may be stale: each is checked.
#[derive(Default)]
pub struct Owners(std::sync::Mutex<HashMap<String, HashMap<String, Dependent>>>);

/// A dependent: its resource, namespace and name.
type Dependent = (&'static ResourceType, Option<String>, String);

impl Owners {
    fn note(&self, rt: &'static ResourceType, obj: &Value) {
        let Some(refs) = obj
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
        else {
            return;
        };
        let ns = namespace_of(obj).map(str::to_string);
        let name = str_at(obj, "/metadata/name").to_string();
        let key = rt.key(ns.as_deref(), &name);
        let mut owners = self.0.lock().expect("owners");
        for r in refs {
            owners
                .entry(str_at(r, "/uid").to_string())
                .or_default()
                .insert(key.clone(), (rt, ns.clone(), name.clone()));
        }
    }

    fn take(&self, uid: &str) -> Vec<Dependent> {
        let taken = self.0.lock().expect("owners").remove(uid);
        taken.into_iter().flat_map(|m| m.into_values()).collect()
    }
}

pub async fn reconcile(
    objects: Arc<Objects>,
    owners: Arc<Owners>,
    rt: &'static ResourceType,
    obj: Value,
) -> Result<Action, ObjectError> {
    owners.note(rt, &obj);
    if obj
        .pointer("/metadata/deletionTimestamp")
        .is_none_or(Value::is_null)
    {
        return collect_if_orphaned(&objects, rt, &obj).await;
    }
    let (orphan, foreground) = (has_finalizer(&obj, ORPHAN), has_finalizer(&obj, FOREGROUND));
    if !orphan && !foreground {
        return Ok(Action::Done);
    }
    let name = str_at(&obj, "/metadata/name");
    let ns = namespace_of(&obj);
    let uid = str_at(&obj, "/metadata/uid");
    let deps = dependents(&objects, ns, uid).await?;
    if orphan {
        for (drt, dep) in &deps {
            let dns = namespace_of(dep);
            let dname = str_at(dep, "/metadata/name");
            super::edit_meta_list(
                objects.as_ref(),
                drt,
                dns,
                dname,
                "ownerReferences",
                |refs| refs.retain(|r| r["uid"] != uid),
            )
            .await?;
        }
        return finish(&objects, rt, ns, name, ORPHAN).await;
    }
    // Foreground: the dependents go first.
    for (drt, dep) in &deps {
        if dep
            .pointer("/metadata/deletionTimestamp")
            .is_some_and(|t| !t.is_null())
        {
            continue;
        }
        let dns = namespace_of(dep);
        let opts = DeleteOptions {
            propagation_policy: Some("Foreground".into()),
            precondition_uid: Some(str_at(dep, "/metadata/uid").to_string()),
            ..Default::default()
        };
        match objects
            .delete(drt, dns, str_at(dep, "/metadata/name"), &opts)
            .await
        {
            Ok(_) | Err(ObjectError::NotFound { .. }) | Err(ObjectError::Conflict { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    if deps.is_empty() {
        finish(&objects, rt, ns, name, FOREGROUND).await
    } else {
        Ok(Action::RequeueAfter(RECHECK))
    }
}

/// Whether the owner a reference names exists (with that uid); `None` for a kind this
/// server does not serve (such a reference keeps the dependent, as in Kubernetes).
async fn owner_exists(objects: &Objects, ns: Option<&str>, r: &Value) -> Option<bool> {
    let (group, version) = match str_at(r, "/apiVersion").split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", str_at(r, "/apiVersion")),
    };
    let kind = str_at(r, "/kind");
    let rt = objects
        .registry()
        .resources
        .iter()
        .find(|t| t.group == group && t.version == version && t.kind == kind)?;
    Some(
        match objects
            .get_value(rt, ns.filter(|_| rt.namespaced), str_at(r, "/name"))
            .await
        {
            Ok((owner, _)) => str_at(&owner, "/metadata/uid") == str_at(r, "/uid"),
            Err(_) => false,
        },
    )
}

/// Deletes `obj` (in the background) if it has owners and every one of them is gone.
async fn collect_if_orphaned(
    objects: &Objects,
    rt: &ResourceType,
    obj: &Value,
) -> Result<Action, ObjectError> {
    let Some(refs) = obj
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .filter(|r| !r.is_empty())
    else {
        return Ok(Action::Done);
    };
    let ns = namespace_of(obj);
    for r in refs {
        if owner_exists(objects, ns, r).await != Some(false) {
            return Ok(Action::Done);
        }
    }
    let opts = DeleteOptions {
        propagation_policy: Some("Background".into()),
        precondition_uid: Some(str_at(obj, "/metadata/uid").to_string()),
        ..Default::default()
    };
    match objects
        .delete(rt, ns, str_at(obj, "/metadata/name"), &opts)
        .await
    {
        Ok(_) | Err(ObjectError::NotFound { .. }) | Err(ObjectError::Conflict { .. }) => {
            Ok(Action::Done)
        }
        Err(e) => Err(e),
    }
}

/// Starts the collector on every served resource: each object is looked at when it changes,
/// and the dependents of each deleted object when it goes (collected if it was their last
/// owner).
pub fn spawn(cache: &Arc<Cache>) {
    let owners = Arc::new(Owners::default());
    let registry = cache.objects().registry();
    let mut queues = HashMap::new();
    for rt in registry.resources {
        let o = owners.clone();
        let queue = spawn_object_controller(cache, rt, "garbage-collector", move |objects, obj| {
            reconcile(objects, o.clone(), rt, obj)
        });
        queues.insert(rt.prefix(None), queue);
    }
    let queues = Arc::new(queues);
    for rt in registry.resources {
        let (owners, queues) = (owners.clone(), queues.clone());
        cache.informer(rt).on_change(move |c| {
            if c.new.is_some() {
                return;
            }
            for (drt, dns, dname) in owners.take(str_at(c.object(), "/metadata/uid")) {
                if let Some(q) = queues.get(&drt.prefix(None)) {
                    q.add(format!("{}/{dname}", dns.unwrap_or_default()));
                }
            }
        });
    }
}
