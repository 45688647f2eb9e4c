//! Controllers: plain reconcile functions over watched state, each driven by [`run`].

mod garbage_collector;
mod namespace;
mod system_namespaces;

pub use system_namespaces::ensure as ensure_system_namespaces;

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tracing::Instrument;

use crate::objects::{ListOptions, ObjectError, Objects, WatchFilter, WatchItem};
use crate::registry::ResourceType;

/// What a reconcile asks for next.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Done,
    RequeueAfter(Duration),
}

/// Starts every control-plane controller.
pub fn spawn_all(objects: Arc<Objects>) {
    let ns = objects
        .registry()
        .find("", "v1", "namespaces")
        .expect("namespaces are served");
    tokio::spawn(run(objects.clone(), ns, "namespace", namespace::reconcile));
    tokio::spawn(system_namespaces::run(objects.clone()));
    let owners = Arc::new(garbage_collector::Owners::default());
    for rt in objects.registry().resources {
        let o = owners.clone();
        tokio::spawn(run(
            objects.clone(),
            rt,
            "garbage-collector",
            move |objects, obj| garbage_collector::reconcile(objects, o.clone(), rt, obj),
        ));
        tokio::spawn(garbage_collector::on_deletions(
            objects.clone(),
            owners.clone(),
            rt,
        ));
    }
    crate::scheduler::spawn(objects);
}

/// How many objects a controller reconciles at once (never the same object twice at once):
/// their writes then share the store's group commits instead of queueing one by one.
const CONCURRENCY: usize = 32;

/// Lists and watches `rt`, calling `reconcile` for each changed object (by namespace/name),
/// requeueing as asked and retrying failures with back-off. Restarts the watch when the
/// history it resumes from is gone.
pub async fn run<F, Fut>(
    objects: Arc<Objects>,
    rt: &'static ResourceType,
    name: &'static str,
    reconcile: F,
) where
    F: Fn(Arc<Objects>, Value) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Action, ObjectError>> + Send + 'static,
{
    let reconcile = Arc::new(reconcile);
    let mut failures: HashMap<String, u32> = HashMap::new();
    let (requeue_tx, mut requeue_rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    type Done = (String, Value, Result<Action, ObjectError>);
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Done>();
    let mut queue = WorkQueue::default();
    loop {
        let page = match objects.list(rt, None, &ListOptions::default()).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(controller = name, error = %e, "list failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut stream = match objects.watch(rt, None, page.rev, WatchFilter::default()) {
            Ok(s) => s,
            Err(_) => continue,
        };
        for obj in page
            .items
            .iter()
            .filter_map(|b| serde_json::from_slice(b).ok())
        {
            queue.add(obj);
        }
        loop {
            while let Some((key, obj)) = queue.next() {
                let (reconcile, objects, done) =
                    (reconcile.clone(), objects.clone(), done_tx.clone());
                tokio::spawn(async move {
                    let span = tracing::debug_span!("reconcile", controller = name, object = %key);
                    let result = reconcile(objects, obj.clone()).instrument(span).await;
                    let _ = done.send((key, obj, result));
                });
            }
            tokio::select! {
                ev = stream.next() => match ev {
                    Some(WatchItem::Event { kind, object, .. }) if kind != "DELETED" => {
                        if let Ok(v) = serde_json::from_slice::<Value>(&object) {
                            queue.add(v);
                        }
                    }
                    Some(WatchItem::Event { .. }) => {}
                    Some(WatchItem::Error(_)) | None => break,
                },
                Some(obj) = requeue_rx.recv() => queue.add(obj),
                Some((key, obj, result)) = done_rx.recv() => {
                    queue.done(&key);
                    let delay = match result {
                        Ok(Action::Done) => {
                            failures.remove(&key);
                            None
                        }
                        Ok(Action::RequeueAfter(d)) => Some(d),
                        Err(ObjectError::NotFound { .. }) => None,
                        Err(e) => {
                            let n = failures.entry(key.clone()).or_default();
                            *n += 1;
                            tracing::warn!(controller = name, object = %key, error = %e, "reconcile failed");
                            Some(Duration::from_millis(100 * 2u64.pow((*n).min(8))))
                        }
                    };
                    if let Some(d) = delay {
                        let tx = requeue_tx.clone();
                        let objects = objects.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(d).await;
                            // Reconcile the latest state, not the stale copy.
                            let ns = obj.pointer("/metadata/namespace").and_then(Value::as_str);
                            let n = obj
                                .pointer("/metadata/name")
                                .and_then(Value::as_str)
                                .unwrap_or_default();
                            if let Ok((fresh, _)) = objects.get_value(rt, ns, n).await {
                                let _ = tx.send(fresh);
                            }
                        });
                    }
                }
            }
        }
    }
}

/// Objects waiting to be reconciled, by namespace/name: the latest version of each, at
/// most [`CONCURRENCY`] at once, never one object twice at once.
#[derive(Default)]
struct WorkQueue {
    order: VecDeque<String>,
    pending: HashMap<String, Value>,
    running: HashSet<String>,
}

impl WorkQueue {
    fn key(obj: &Value) -> String {
        format!(
            "{}/{}",
            obj.pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or(""),
            obj.pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("")
        )
    }

    fn add(&mut self, obj: Value) {
        let key = Self::key(&obj);
        if self.pending.insert(key.clone(), obj).is_none() && !self.running.contains(&key) {
            self.order.push_back(key);
        }
    }

    /// The next object to reconcile, if a slot is free.
    fn next(&mut self) -> Option<(String, Value)> {
        if self.running.len() >= CONCURRENCY {
            return None;
        }
        let key = self.order.pop_front()?;
        let obj = self.pending.remove(&key)?;
        self.running.insert(key.clone());
        Some((key, obj))
    }

    /// `key`'s reconcile ended: a change that came meanwhile is queued now.
    fn done(&mut self, key: &str) {
        self.running.remove(key);
        if self.pending.contains_key(key) {
            self.order.push_back(key.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(name: &str, v: u32) -> Value {
        json!({"metadata": {"namespace": "ns", "name": name}, "v": v})
    }

    #[test]
    fn work_queue_keeps_the_latest_version_and_never_runs_an_object_twice() {
        let mut q = WorkQueue::default();
        q.add(obj("a", 1));
        q.add(obj("b", 1));
        q.add(obj("a", 2));
        let (k, v) = q.next().unwrap();
        assert_eq!((k.as_str(), v["v"].as_u64()), ("ns/a", Some(2)));
        q.add(obj("a", 3));
        let (k, _) = q.next().unwrap();
        assert_eq!(k, "ns/b");
        assert!(q.next().is_none(), "a is running; its new version waits");
        q.done("ns/a");
        let (k, v) = q.next().unwrap();
        assert_eq!((k.as_str(), v["v"].as_u64()), ("ns/a", Some(3)));
        q.done("ns/a");
        q.done("ns/b");
        assert!(q.next().is_none());
    }
}
