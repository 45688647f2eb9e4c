//! The cluster-state store: a key space of JSON objects, one global revision.
//!
//! Every write gets the next revision, which is also written into the object as
//! `metadata.resourceVersion`, so a GET can return the stored bytes untouched. Writes are
//! durable before they are acknowledged and before watchers see them. A bounded history
//! of events lets watches (and paged lists) resume from an older revision.

mod sled_store;
pub(crate) mod wal;

pub use sled_store::SledStore;

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::mpsc;

/// A global, monotonically increasing store revision.
pub type Revision = u64;

/// One stored object: its serialized JSON (with `metadata.resourceVersion == rev`).
#[derive(Clone, Debug)]
pub struct Stored {
    pub rev: Revision,
    pub data: Bytes,
}

impl Stored {
    pub fn to_value(&self) -> Result<Value, StoreError> {
        serde_json::from_slice(&self.data).map_err(|e| StoreError::Corrupt(e.to_string()))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// A change to one key. For `Deleted`, `object` is the last state, stamped with the
/// deletion revision (as Kubernetes does).
#[derive(Clone, Debug)]
pub struct Event {
    pub rev: Revision,
    pub kind: EventType,
    pub key: String,
    pub object: Bytes,
    /// The value before this change (absent for `Added`).
    pub prev: Option<Stored>,
    /// `object` as the writer built it, while the event is fresh: watchers in this process
    /// (the controllers' cache) take it instead of parsing `object` again.
    pub value: FreshValue,
}

/// The parsed value of a new event's object. The store lets it go once newer events
/// followed, so its history and the watch channels keep the compact JSON only.
#[derive(Debug, Default)]
pub struct FreshValue(std::sync::Mutex<Option<Arc<Value>>>);

impl FreshValue {
    pub fn new(v: Value) -> FreshValue {
        FreshValue(std::sync::Mutex::new(Some(Arc::new(v))))
    }

    pub fn get(&self) -> Option<Arc<Value>> {
        self.0.lock().expect("fresh value").clone()
    }

    pub fn clear(&self) {
        self.0.lock().expect("fresh value").take();
    }
}

impl Clone for FreshValue {
    fn clone(&self) -> FreshValue {
        FreshValue(std::sync::Mutex::new(self.get()))
    }
}

/// A consistent list: the items under a prefix as of `rev`.
#[derive(Debug)]
pub struct ListResult {
    pub items: Vec<(String, Stored)>,
    pub rev: Revision,
    /// The last key returned, when more items remain after it.
    pub continue_after: Option<String>,
}

/// Where a write must find the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precondition {
    /// The key must not exist.
    Absent,
    /// The key must exist (at this revision, if given).
    Exists(Option<Revision>),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("key {0} already exists")]
    AlreadyExists(String),
    #[error("key {0} not found")]
    NotFound(String),
    #[error("key {key} is at revision {current}, not {expected}")]
    Conflict {
        key: String,
        expected: Revision,
        current: Revision,
    },
    #[error("revision {requested} has been compacted (oldest kept is {oldest})")]
    Compacted {
        requested: Revision,
        oldest: Revision,
    },
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("storage backend failed: {0}")]
    Backend(String),
}

/// Items a watch delivers: events in revision order, or one terminal error.
pub type WatchReceiver = mpsc::Receiver<Result<Event, StoreError>>;

#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// The newest revision whose writes are durable and visible.
    fn revision(&self) -> Revision;

    /// The oldest revision a watch or list may still start from.
    fn oldest_revision(&self) -> Revision;

    async fn get(&self, key: &str) -> Result<Option<Stored>, StoreError>;

    /// Items whose key starts with `prefix` and sorts after `after`, at most `limit` of
    /// them, as of revision `at` (the current one if `None`).
    async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: Option<usize>,
        at: Option<Revision>,
    ) -> Result<ListResult, StoreError>;

    /// Writes `object` (its `metadata.resourceVersion` is set to the new revision).
    async fn put(&self, key: &str, cond: Precondition, object: Value)
        -> Result<Stored, StoreError>;

    /// Removes `key`; returns its last state stamped with the deletion revision.
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<Stored, StoreError>;

    /// Waits until every write decided so far is readable (after a conflict, a retry
    /// must see the write it lost to).
    async fn settle(&self) -> Result<(), StoreError>;

    /// Every event under `prefix` after revision `from`, then new ones as they happen.
    fn watch(&self, prefix: &str, from: Revision) -> Result<WatchReceiver, StoreError>;
}

/// Sets `metadata.resourceVersion` in a JSON object and serializes it.
pub(crate) fn encode_with_rev(object: &mut Value, rev: Revision) -> Result<Bytes, StoreError> {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), Value::String(rev.to_string()));
    } else if let Some(obj) = object.as_object_mut() {
        obj.insert(
            "metadata".into(),
            serde_json::json!({ "resourceVersion": rev.to_string() }),
        );
    }
    serde_json::to_vec(object)
        .map(Bytes::from)
        .map_err(|e| StoreError::Corrupt(e.to_string()))
}
