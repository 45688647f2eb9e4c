//! Running a controller: a plain reconcile function driven by a [`Queue`] of keys, its
//! outcome an [`Action`] (kube-runtime's `Controller::run` with its `Action` and error
//! policy), and the handlers that turn cache changes into keys.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tracing::Instrument;

use super::cache::{key_of, split_key, Cache, Informer};
use super::Queue;
use crate::objects::{ObjectError, Objects};
use crate::registry::ResourceType;

/// What a reconcile asks for next.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Done,
    RequeueAfter(Duration),
}

/// Runs a controller: reconciles the keys of `queue` as they come, requeueing as asked and
/// retrying failures with back-off.
pub fn spawn_controller<F, Fut>(name: &'static str, queue: Arc<Queue>, reconcile: F)
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Action, ObjectError>> + Send + 'static,
{
    let reconcile = Arc::new(reconcile);
    tokio::spawn(async move {
        loop {
            while let Some(key) = queue.next() {
                let (reconcile, queue) = (reconcile.clone(), queue.clone());
                tokio::spawn(async move {
                    let span = tracing::debug_span!("reconcile", controller = name, object = %key);
                    let result = reconcile(key.clone()).instrument(span).await;
                    let failed =
                        matches!(&result, Err(e) if !matches!(e, ObjectError::NotFound { .. }));
                    let backoff = queue.done(&key, failed);
                    match result {
                        Ok(Action::Done) | Err(ObjectError::NotFound { .. }) => {}
                        Ok(Action::RequeueAfter(d)) => queue.add_after(key, d),
                        Err(e) => {
                            tracing::warn!(controller = name, object = %key, error = %e, "reconcile failed");
                            queue.add_after(key, backoff);
                        }
                    }
                });
            }
            queue.ready.notified().await;
        }
    });
}

/// Queues the key of every object of `informer` that is added or changed.
pub fn queue_changes(informer: &Informer, queue: &Arc<Queue>) {
    let q = queue.clone();
    informer.on_change(move |c| {
        if c.new.is_some() {
            q.add(key_of(c.object()));
        }
    });
}

/// A controller of one resource whose reconcile takes the object itself (the cached
/// latest state of each changed object; deletions are not reconciled). Returns its queue.
pub fn spawn_object_controller<F, Fut>(
    cache: &Arc<Cache>,
    rt: &'static ResourceType,
    name: &'static str,
    reconcile: F,
) -> Arc<Queue>
where
    F: Fn(Arc<Objects>, Value) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Action, ObjectError>> + Send + 'static,
{
    let queue = Queue::new();
    let informer = cache.informer(rt);
    queue_changes(&informer, &queue);
    let objects = cache.objects().clone();
    let reconcile = Arc::new(reconcile);
    spawn_controller(name, queue.clone(), move |key| {
        let (objects, informer, reconcile) = (objects.clone(), informer.clone(), reconcile.clone());
        async move {
            let (ns, n) = split_key(&key);
            match informer.get(ns, n) {
                Some(obj) => reconcile(objects, (*obj).clone()).await,
                None => Ok(Action::Done),
            }
        }
    });
    queue
}
