//! Recording Kubernetes Events about objects (what `kubectl describe` shows), aggregating
//! repeats into one Event with a count, as Kubernetes' event recorder does.

use std::hash::{Hash, Hasher};

use serde_json::{json, Value};

use crate::objects::{now_string, ObjectError, Objects, Target, WriteOptions};

/// Records `reason`/`message` about `involved` (a full object) from `component`.
pub async fn record(
    objects: &Objects,
    involved: &Value,
    kind: &str,
    type_: &str,
    reason: &str,
    message: &str,
    component: &str,
) -> Result<(), ObjectError> {
    let rt = objects
        .registry()
        .find("", "v1", "events")
        .expect("events are served");
    let meta = &involved["metadata"];
    let ns = meta["namespace"].as_str().unwrap_or("default");
    let name = meta["name"].as_str().unwrap_or_default();
    // The same occurrence always maps to the same Event object.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (meta["uid"].as_str(), reason, message, component).hash(&mut h);
    let event_name = format!("{name}.{:016x}", h.finish());
    let now = now_string();
    match objects.get(rt, Some(ns), &event_name).await {
        Ok(_) => {
            objects
                .update_with(
                    rt,
                    Some(ns),
                    &event_name,
                    Target::Main,
                    &WriteOptions::default(),
                    |old| {
                        let mut ev = old.clone();
                        ev["count"] = json!(old["count"].as_i64().unwrap_or(1) + 1);
                        ev["lastTimestamp"] = json!(now);
                        Ok(ev)
                    },
                )
                .await?;
        }
        Err(ObjectError::NotFound { .. }) => {
            let ev = json!({
                "apiVersion": "v1", "kind": "Event",
                "metadata": {"name": event_name, "namespace": ns},
                "involvedObject": {
                    "kind": kind, "namespace": ns, "name": name, "uid": meta["uid"],
                    "apiVersion": involved["apiVersion"], "resourceVersion": meta["resourceVersion"],
                },
                "reason": reason, "message": message, "type": type_,
                "source": {"component": component},
                "firstTimestamp": now, "lastTimestamp": now, "count": 1,
                "reportingComponent": component, "reportingInstance": "",
            });
            match objects
                .create(rt, Some(ns), ev, &WriteOptions::default())
                .await
            {
                Ok(_) | Err(ObjectError::AlreadyExists { .. }) => {}
                // The namespace may be going away; the event does not matter then.
                Err(ObjectError::Forbidden { .. }) | Err(ObjectError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Err(e) => return Err(e),
    }
    Ok(())
}
