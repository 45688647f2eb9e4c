//! Recording Kubernetes Events about objects (what `kubectl describe` shows), aggregating
//! repeats into one Event with a count, as Kubernetes' event recorder does.
//!
//! The composer starts one [`Events`] writer and hands it out; each controller takes a
//! [`Recorder`] from it with its reporter identity (kube-runtime's `Recorder` and
//! `Reporter`). Controllers publish without waiting ([`Recorder::publish`]): events go
//! through a bounded queue to the one writer, and under a burst the excess is dropped, as
//! client-go's broadcaster does (maxQueuedEvents 1000, DropIfChannelFull). An event never
//! holds up a reconcile.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Weak};

use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::objects::{now_string, ObjectError, Objects, Target, WriteOptions};

/// Events waiting for the writer; more are dropped.
const MAX_QUEUED: usize = 1000;
/// Events the writer writes at once (they share the store's group commits).
const WRITES_AT_ONCE: usize = 64;

/// An Event's `type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// What happened: the `type`, `reason` and `message` of an Event.
#[derive(Clone, Copy, Debug)]
pub struct Event<'a> {
    pub type_: EventType,
    pub reason: &'a str,
    pub message: &'a str,
}

impl<'a> Event<'a> {
    pub fn normal(reason: &'a str, message: &'a str) -> Event<'a> {
        Event {
            type_: EventType::Normal,
            reason,
            message,
        }
    }

    pub fn warning(reason: &'a str, message: &'a str) -> Event<'a> {
        Event {
            type_: EventType::Warning,
            reason,
            message,
        }
    }
}

/// What an Event says about the object it is about (its `involvedObject`).
#[derive(Clone, Debug)]
struct Involved {
    kind: String,
    api_version: Value,
    namespace: String,
    name: String,
    uid: Value,
    resource_version: Value,
}

impl Involved {
    fn of(obj: &Value, kind: &str) -> Involved {
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
struct Pending {
    involved: Involved,
    type_: EventType,
    reason: String,
    message: String,
    component: &'static str,
}

/// The event writer of a control plane: one bounded queue and the task that writes it.
/// The composer starts it once and hands [`Recorder`]s out of it.
pub struct Events {
    objects: Arc<Objects>,
    queue: mpsc::Sender<Pending>,
}

impl Events {
    /// Starts the writer on `objects` (within a Tokio runtime); it ends with the last
    /// `Events` or the objects.
    pub fn start(objects: Arc<Objects>) -> Arc<Events> {
        let queue = start_writer(Arc::downgrade(&objects));
        Arc::new(Events { objects, queue })
    }

    /// A recorder reporting as `component` (the Event's `source.component` and
    /// `reportingComponent`).
    pub fn recorder(self: &Arc<Self>, component: &'static str) -> Recorder {
        Recorder {
            events: self.clone(),
            component,
        }
    }
}

/// Publishes Events as one component (kube-runtime's `Recorder` with its `Reporter`).
#[derive(Clone)]
pub struct Recorder {
    events: Arc<Events>,
    component: &'static str,
}

impl Recorder {
    /// Queues `event` about `regarding` (a full object of `kind`) for writing, without
    /// waiting; drops it when the queue is full.
    pub fn publish(&self, regarding: &Value, kind: &str, event: Event<'_>) {
        let pending = Pending {
            involved: Involved::of(regarding, kind),
            type_: event.type_,
            reason: event.reason.to_string(),
            message: event.message.to_string(),
            component: self.component,
        };
        if self.events.queue.try_send(pending).is_err() {
            tracing::debug!(reason = event.reason, "event dropped: too many queued");
        }
    }

    /// Records `event` about `regarding` (a full object of `kind`), and returns once it is
    /// written.
    pub async fn record(
        &self,
        regarding: &Value,
        kind: &str,
        event: Event<'_>,
    ) -> Result<(), ObjectError> {
        let involved = Involved::of(regarding, kind);
        write(&self.events.objects, &involved, event, self.component).await
    }
}

/// The writer: takes what is queued, writes up to [`WRITES_AT_ONCE`] together; ends when
/// every sender is gone or the objects are.
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
                    let event = Event {
                        type_: p.type_,
                        reason: &p.reason,
                        message: &p.message,
                    };
                    if let Err(e) = write(objects, &p.involved, event, p.component).await {
                        tracing::debug!(error = %e, reason = p.reason, "event not recorded");
                    }
                }
            });
            futures::future::join_all(writes).await;
        }
    });
    tx
}

/// Creates the Event, or counts a repeat of the same occurrence.
async fn write(
    objects: &Objects,
    involved: &Involved,
    event: Event<'_>,
    component: &str,
) -> Result<(), ObjectError> {
    let Event {
        type_,
        reason,
        message,
    } = event;
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
        "reason": reason, "message": message, "type": type_.as_str(),
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
    use crate::registry::Registry;
    use crate::store::SledStore;

    fn pod() -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "default", "uid": "u1", "resourceVersion": "7"}})
    }

    /// Objects with the `default` namespace.
    async fn objects() -> (Arc<Objects>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(dir.path(), 10_000).unwrap());
        let objects = Arc::new(Objects::new(store, Arc::new(Registry::new())));
        let ns = objects.registry().find("", "v1", "namespaces").unwrap();
        let body = json!({"metadata": {"name": "default"}});
        objects
            .create(ns, None, body, &WriteOptions::default())
            .await
            .unwrap();
        (objects, dir)
    }

    async fn events_in_default(objects: &Objects) -> Vec<Value> {
        crate::controllers::testing::list(objects, "", "events").await
    }

    #[tokio::test]
    async fn a_repeat_is_counted_on_the_same_event() {
        let (objects, _d) = objects().await;
        let kubelet = Events::start(objects.clone()).recorder("kubelet");
        for _ in 0..2 {
            let event = Event::warning("BackOff", "again");
            kubelet.record(&pod(), "Pod", event).await.unwrap();
        }
        let events = events_in_default(&objects).await;
        assert_eq!(events.len(), 1);
        let ev = &events[0];
        assert_eq!(ev["count"], 2);
        assert_eq!(ev["type"], "Warning");
        assert_eq!(ev["involvedObject"]["name"], "p");
        assert_eq!(ev["involvedObject"]["resourceVersion"], "7");
        assert_eq!(ev["source"]["component"], "kubelet");
        assert_eq!(ev["reportingComponent"], "kubelet");
    }

    #[tokio::test]
    async fn publishing_never_waits_and_a_burst_beyond_the_queue_is_dropped() {
        let (objects, _d) = objects().await;
        let test = Events::start(objects.clone()).recorder("test");
        let burst = MAX_QUEUED * 3;
        for i in 0..burst {
            test.publish(&pod(), "Pod", Event::normal("Tick", &format!("tick {i}")));
        }
        // The queue's worth (and what the writer took meanwhile) is written; the rest not.
        let mut written = 0;
        for _ in 0..150 {
            let n = events_in_default(&objects).await.len();
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            written = events_in_default(&objects).await.len();
            if n >= MAX_QUEUED && n == written {
                break;
            }
        }
        assert!(written >= MAX_QUEUED, "only {written} written");
        assert!(written < burst, "{written} of {burst} written");
    }
}
