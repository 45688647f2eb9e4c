//! Recording Kubernetes Events about objects (what `kubectl describe` shows), aggregating
//! repeats into one Event with a count, as Kubernetes' event recorder does.
//!
//! Controllers emit events without waiting ([`emit`]): they go through a bounded queue to
//! one writer, and under a burst the excess is dropped, as client-go's broadcaster does
//! (maxQueuedEvents 1000, DropIfChannelFull). An event never holds up a reconcile.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Weak};

use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::objects::{now_string, ObjectError, Objects, Target, WriteOptions};

/// Events waiting for the writer; more are dropped.
const MAX_QUEUED: usize = 1000;
/// Events the writer writes at once (they share the store's group commits).
const WRITES_AT_ONCE: usize = 64;

/// What an Event says about the object it is about (its `involvedObject`).
#[derive(Clone, Debug)]
pub struct Involved {
    pub kind: String,
    pub api_version: Value,
    pub namespace: String,
    pub name: String,
    pub uid: Value,
    pub resource_version: Value,
}

impl Involved {
    pub fn of(obj: &Value, kind: &str) -> Involved {
        let meta = &obj["metadata"];
        Involved {
            kind: kind.to_string(),
            api_version: obj["apiVersion"].clone(),
            namespace: meta["namespace"].as_str().unwrap_or("default").to_string(),
            name: meta["name"].as_str().unwrap_or_default().to_string(),
            uid: meta["uid"].clone(),
            resource_version: meta["resourceVersion"].clone(),
        }
    }
}

/// One queued event.
pub struct Pending {
    involved: Involved,
    type_: &'static str,
    reason: String,
    message: String,
    component: &'static str,
}

/// The queue of an [`Objects`], started by the first event.
pub type Queue = std::sync::OnceLock<mpsc::Sender<Pending>>;

/// Queues `reason`/`message` about `involved` (a full object) for writing; drops it when
/// the queue is full.
pub fn emit(
    objects: &Arc<Objects>,
    involved: &Value,
    kind: &str,
    type_: &'static str,
    reason: &str,
    message: &str,
    component: &'static str,
) {
    let tx = objects
        .events()
        .get_or_init(|| start_writer(Arc::downgrade(objects)));
    let pending = Pending {
        involved: Involved::of(involved, kind),
        type_,
        reason: reason.to_string(),
        message: message.to_string(),
        component,
    };
    if tx.try_send(pending).is_err() {
        tracing::debug!(reason, "event dropped: too many queued");
    }
}

/// The writer: takes what is queued, writes up to [`WRITES_AT_ONCE`] together; ends with
/// the `Objects` (which holds the only sender).
fn start_writer(objects: Weak<Objects>) -> mpsc::Sender<Pending> {
    let (tx, mut rx) = mpsc::channel::<Pending>(MAX_QUEUED);
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(WRITES_AT_ONCE);
        while rx.recv_many(&mut batch, WRITES_AT_ONCE).await > 0 {
            let Some(objects) = objects.upgrade() else {
                return;
            };
            let writes = batch.drain(..).map(|p| {
                let objects = &objects;
                async move {
                    let r = record_for(
                        objects,
                        &p.involved,
                        p.type_,
                        &p.reason,
                        &p.message,
                        p.component,
                    );
                    if let Err(e) = r.await {
                        tracing::debug!(error = %e, reason = p.reason, "event not recorded");
                    }
                }
            });
            futures::future::join_all(writes).await;
        }
    });
    tx
}

/// Records `reason`/`message` about `involved` (a full object) from `component`, and
/// returns once it is written.
pub async fn record(
    objects: &Objects,
    involved: &Value,
    kind: &str,
    type_: &str,
    reason: &str,
    message: &str,
    component: &str,
) -> Result<(), ObjectError> {
    let involved = Involved::of(involved, kind);
    record_for(objects, &involved, type_, reason, message, component).await
}

/// Creates the Event, or counts a repeat of the same occurrence.
async fn record_for(
    objects: &Objects,
    involved: &Involved,
    type_: &str,
    reason: &str,
    message: &str,
    component: &str,
) -> Result<(), ObjectError> {
    let rt = objects
        .registry()
        .find("", "v1", "events")
        .expect("events are served");
    let (ns, name) = (involved.namespace.as_str(), involved.name.as_str());
    // The same occurrence always maps to the same Event object.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (involved.uid.as_str(), reason, message, component).hash(&mut h);
    let event_name = format!("{name}.{:016x}", h.finish());
    let now = now_string();
    let ev = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": event_name, "namespace": ns},
        "involvedObject": {
            "kind": involved.kind, "namespace": ns, "name": name, "uid": involved.uid,
            "apiVersion": involved.api_version, "resourceVersion": involved.resource_version,
        },
        "reason": reason, "message": message, "type": type_,
        "source": {"component": component},
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        "reportingComponent": component, "reportingInstance": "",
    });
    // Most occurrences are new: create first, count a repeat when it exists.
    let w = WriteOptions::default();
    match objects.create(rt, Some(ns), ev, &w).await {
        Ok(_) => Ok(()),
        Err(ObjectError::AlreadyExists { .. }) => {
            let counted = objects
                .update_with(rt, Some(ns), &event_name, Target::Main, &w, |old| {
                    let mut ev = old.clone();
                    ev["count"] = json!(old["count"].as_i64().unwrap_or(1) + 1);
                    ev["lastTimestamp"] = json!(now);
                    Ok(ev)
                })
                .await;
            match counted {
                Ok(_) | Err(ObjectError::NotFound { .. }) => Ok(()),
                Err(e) => Err(e),
            }
        }
        // The namespace may be going away; the event does not matter then.
        Err(ObjectError::Forbidden { .. }) | Err(ObjectError::NotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::testing;

    fn pod() -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "default", "uid": "u1", "resourceVersion": "7"}})
    }

    #[tokio::test]
    async fn a_repeat_is_counted_on_the_same_event() {
        let (objects, _d) = testing::objects().await;
        for _ in 0..2 {
            record(
                &objects,
                &pod(),
                "Pod",
                "Warning",
                "BackOff",
                "again",
                "kubelet",
            )
            .await
            .unwrap();
        }
        let events = testing::list(&objects, "", "events").await;
        assert_eq!(events.len(), 1);
        let ev = &events[0];
        assert_eq!(ev["count"], 2);
        assert_eq!(ev["involvedObject"]["name"], "p");
        assert_eq!(ev["involvedObject"]["resourceVersion"], "7");
        assert_eq!(ev["source"]["component"], "kubelet");
    }

    #[tokio::test]
    async fn emitting_never_waits_and_a_burst_beyond_the_queue_is_dropped() {
        let (objects, _d) = testing::objects().await;
        let burst = MAX_QUEUED * 3;
        for i in 0..burst {
            emit(
                &objects,
                &pod(),
                "Pod",
                "Normal",
                "Tick",
                &format!("tick {i}"),
                "test",
            );
        }
        // The queue's worth (and what the writer took meanwhile) is written; the rest not.
        let written = testing::eventually("the queued events", || async {
            let n = testing::list(&objects, "", "events").await.len();
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            let again = testing::list(&objects, "", "events").await.len();
            (n >= MAX_QUEUED && n == again).then_some(n)
        })
        .await;
        assert!(written < burst, "{written} of {burst} written");
    }
}
