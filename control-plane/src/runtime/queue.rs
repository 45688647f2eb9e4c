//! A controller's work queue of object keys, as client-go's workqueue: each key once however
//! often it is added while waiting, a bounded number running, never one key twice at once,
//! and a per-key back-off for failures.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// How many objects a controller reconciles at once (never the same object twice at once):
/// their writes then share the store's group commits instead of queueing one by one.
const CONCURRENCY: usize = 32;

/// A controller's work queue of object keys (`namespace/name`): each key once however
/// often it is added while waiting, at most [`CONCURRENCY`] running, never one key twice at
/// once (a key added while it runs is queued again when it ends).
pub struct Queue {
    state: std::sync::Mutex<QueueState>,
    pub(super) ready: tokio::sync::Notify,
    /// How many keys may be reconciled at once.
    concurrency: usize,
}

impl Default for Queue {
    fn default() -> Self {
        Queue {
            state: Default::default(),
            ready: Default::default(),
            concurrency: CONCURRENCY,
        }
    }
}

#[derive(Default)]
struct QueueState {
    order: VecDeque<String>,
    waiting: HashSet<String>,
    running: HashSet<String>,
    failures: HashMap<String, u32>,
}

impl Queue {
    pub fn new() -> Arc<Queue> {
        Arc::default()
    }

    /// A queue running up to `concurrency` reconciles at once (the scheduler's bindings
    /// are cheap to decide and wait mostly on the disk: many share one commit).
    pub fn with_concurrency(concurrency: usize) -> Arc<Queue> {
        Arc::new(Queue {
            concurrency: concurrency.max(1),
            ..Default::default()
        })
    }

    pub fn add(&self, key: String) {
        let mut st = self.state.lock().expect("queue");
        if st.waiting.insert(key.clone()) && !st.running.contains(&key) {
            st.order.push_back(key);
            drop(st);
            self.ready.notify_one();
        }
    }

    /// The next key to reconcile, if a slot is free.
    pub(super) fn next(&self) -> Option<String> {
        let mut st = self.state.lock().expect("queue");
        if st.running.len() >= self.concurrency {
            return None;
        }
        let key = st.order.pop_front()?;
        st.waiting.remove(&key);
        st.running.insert(key.clone());
        Some(key)
    }

    /// `key`'s reconcile ended: if it was added meanwhile, it is queued now. Returns the
    /// back-off for a failure (growing with consecutive failures of the key).
    pub(super) fn done(&self, key: &str, failed: bool) -> Duration {
        let mut st = self.state.lock().expect("queue");
        st.running.remove(key);
        if st.waiting.contains(key) {
            st.order.push_back(key.to_string());
        }
        let n = if failed {
            let n = st.failures.entry(key.to_string()).or_default();
            *n += 1;
            *n
        } else {
            st.failures.remove(key);
            0
        };
        drop(st);
        self.ready.notify_one();
        Duration::from_millis(100 * 2u64.pow(n.min(8)))
    }

    /// Adds `key` after `delay`.
    pub fn add_after(self: &Arc<Self>, key: String, delay: Duration) {
        let q = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            q.add(key);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_holds_each_key_once_and_never_runs_a_key_twice() {
        let q = Queue::default();
        q.add("ns/a".into());
        q.add("ns/b".into());
        q.add("ns/a".into());
        assert_eq!(q.next().as_deref(), Some("ns/a"));
        q.add("ns/a".into());
        assert_eq!(q.next().as_deref(), Some("ns/b"));
        assert!(q.next().is_none(), "a is running; it waits");
        q.done("ns/a", false);
        assert_eq!(q.next().as_deref(), Some("ns/a"));
        q.done("ns/a", false);
        q.done("ns/b", false);
        assert_eq!(q.done("ns/x", true), Duration::from_millis(200));
        assert_eq!(q.done("ns/x", true), Duration::from_millis(400));
        assert_eq!(q.done("ns/x", false), Duration::from_millis(100));
        assert!(q.next().is_none());
    }
}
