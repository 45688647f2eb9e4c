//! Turning store events into Kubernetes watch events for one resource and filter.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

use super::{meta, ObjectError};
use crate::selectors::{FieldSelector, Selector};
use crate::store::{Event, EventType, WatchReceiver};

/// Which objects a watch reports; objects moving in or out of the filter show up as
/// ADDED or DELETED, as in Kubernetes.
#[derive(Clone, Debug, Default)]
pub struct WatchFilter {
    pub labels: Selector,
    pub fields: FieldSelector,
    /// Only keys equal to this (a `metadata.name` watch).
    pub exact_key: Option<String>,
}

impl WatchFilter {
    fn is_trivial(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }

    fn matches(&self, raw: &[u8]) -> bool {
        let Ok(v) = serde_json::from_slice::<Value>(raw) else {
            return false;
        };
        self.labels.matches_labels(
            meta(&v)
                .and_then(|m| m.get("labels"))
                .and_then(Value::as_object),
        ) && self.fields.matches(&v)
    }
}

#[derive(Debug)]
pub enum WatchItem {
    Event {
        kind: &'static str,
        object: Bytes,
        rev: u64,
        /// `object` parsed, when the writer's value is still at hand.
        value: Option<Arc<Value>>,
    },
    Error(ObjectError),
}

/// An event's object parsed: the writer's value when the event carries it, else `object`
/// parsed (`None` if it is not JSON).
pub fn parsed_event(object: &[u8], value: Option<Arc<Value>>) -> Option<Arc<Value>> {
    value.or_else(|| serde_json::from_slice(object).ok().map(Arc::new))
}

pub struct WatchStream {
    rx: WatchReceiver,
    filter: WatchFilter,
}

impl WatchStream {
    pub(super) fn new(rx: WatchReceiver, filter: WatchFilter) -> Self {
        WatchStream { rx, filter }
    }

    /// The next event that passes the filter; `None` when the store closed the watch.
    pub async fn next(&mut self) -> Option<WatchItem> {
        loop {
            let ev = match self.rx.recv().await? {
                Ok(ev) => ev,
                Err(e) => return Some(WatchItem::Error(e.into())),
            };
            if let Some(item) = self.translate(ev) {
                return Some(item);
            }
        }
    }

    fn translate(&self, ev: Event) -> Option<WatchItem> {
        if self
            .filter
            .exact_key
            .as_deref()
            .is_some_and(|k| k != ev.key)
        {
            return None;
        }
        // Every item below reports `ev.object`, which `ev.value` is.
        let value = ev.value.get();
        let item = |kind, object| {
            Some(WatchItem::Event {
                kind,
                object,
                rev: ev.rev,
                value,
            })
        };
        if self.filter.is_trivial() {
            return item(ev.kind.as_str(), ev.object);
        }
        let prev_matches = ev
            .prev
            .as_ref()
            .is_some_and(|p| self.filter.matches(&p.data));
        let now_matches = ev.kind != EventType::Deleted && self.filter.matches(&ev.object);
        match ev.kind {
            EventType::Added if now_matches => item("ADDED", ev.object),
            EventType::Modified if now_matches && prev_matches => item("MODIFIED", ev.object),
            EventType::Modified if now_matches => item("ADDED", ev.object),
            EventType::Modified if prev_matches => item("DELETED", ev.object),
            EventType::Deleted if prev_matches => item("DELETED", ev.object),
            _ => None,
        }
    }
}
