//! Controllers: plain reconcile functions over watched state, each driven by [`run`].

mod namespace;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

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
    crate::scheduler::spawn(objects);
}

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
    Fut: Future<Output = Result<Action, ObjectError>> + Send,
{
    let reconcile = Arc::new(reconcile);
    let mut failures: HashMap<String, u32> = HashMap::new();
    let (requeue_tx, mut requeue_rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
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
        let initial: Vec<Value> = page
            .items
            .iter()
            .filter_map(|b| serde_json::from_slice(b).ok())
            .collect();
        for obj in initial {
            let _ = requeue_tx.send(obj);
        }
        loop {
            let obj = tokio::select! {
                ev = stream.next() => match ev {
                    Some(WatchItem::Event { kind, object, .. }) if kind != "DELETED" => match serde_json::from_slice::<Value>(&object) {
                        Ok(v) => v,
                        Err(_) => continue,
                    },
                    Some(WatchItem::Event { .. }) => continue,
                    Some(WatchItem::Error(_)) | None => break,
                },
                Some(obj) = requeue_rx.recv() => obj,
            };
            let key = format!(
                "{}/{}",
                obj.pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or(""),
                obj.pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
            );
            let span = tracing::debug_span!("reconcile", controller = name, object = %key);
            let _enter = span.enter();
            let result = reconcile(objects.clone(), obj.clone()).await;
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
