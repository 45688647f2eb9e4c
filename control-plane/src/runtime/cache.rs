//! The shared watched cache (kube's shared informers): one list/watch loop per resource,
//! started when a controller first asks for it, holding every object by namespace/name.
//! Controllers read it instead of the store and register handlers that turn changes into
//! keys of their work queues. After writing, a controller waits until the cache holds its
//! write ([`Informer::wait_for`]), so its next reconcile never acts on state older than
//! its own writes (what kube-controller-manager's "expectations" are for).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::Value;

use crate::objects::{ListOptions, Objects, WatchFilter, WatchItem, Written};
use crate::registry::ResourceType;
use crate::store::Revision;

/// One change seen by the cache: `new` is `None` for a deletion (`old` is the last state).
pub struct Change {
    pub old: Option<Arc<Value>>,
    pub new: Option<Arc<Value>>,
}

impl Change {
    /// The changed object: the new state, or the last one for a deletion.
    pub fn object(&self) -> &Value {
        self.new
            .as_deref()
            .or(self.old.as_deref())
            .expect("a change has a state")
    }
}

type Handler = Box<dyn Fn(&Change) + Send + Sync>;

/// `namespace/name` (an empty namespace for cluster-scoped objects): the key of an object in
/// the cache and in controllers' work queues.
pub fn key_of(obj: &Value) -> String {
    let s = |p: &str| obj.pointer(p).and_then(Value::as_str).unwrap_or_default();
    format!("{}/{}", s("/metadata/namespace"), s("/metadata/name"))
}

/// Splits a key into namespace (`None` when cluster-scoped) and name.
pub fn split_key(key: &str) -> (Option<&str>, &str) {
    let (ns, name) = key.split_once('/').unwrap_or(("", key));
    (Some(ns).filter(|n| !n.is_empty()), name)
}

/// The revision of a write (the `resourceVersion` the store stamped on it): what
/// [`Informer::wait_for`] waits for.
pub fn written_rev(w: &Written) -> Revision {
    serde_json::from_slice::<Value>(&w.object)
        .ok()
        .and_then(|v| {
            v.pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
        })
        .unwrap_or(0)
}

/// A secondary index: objects by a value computed from each (pods by node name).
type IndexFn = fn(&Value) -> Option<String>;

#[derive(Default)]
struct State {
    items: BTreeMap<String, Arc<Value>>,
    handlers: Vec<Handler>,
    indexes: HashMap<&'static str, (IndexFn, HashMap<String, BTreeSet<String>>)>,
}

impl State {
    fn index(&mut self, key: &str, old: Option<&Value>, new: Option<&Value>) {
        for (f, map) in self.indexes.values_mut() {
            let f = *f;
            let (was, is) = (old.and_then(f), new.and_then(f));
            if was == is {
                continue;
            }
            if let Some(w) = was {
                if let Some(set) = map.get_mut(&w) {
                    set.remove(key);
                    if set.is_empty() {
                        map.remove(&w);
                    }
                }
            }
            if let Some(i) = is {
                map.entry(i).or_default().insert(key.to_string());
            }
        }
    }
}

/// The cached objects of one resource.
pub struct Informer {
    pub rt: &'static ResourceType,
    state: RwLock<State>,
    /// The newest revision applied (0 until the first list).
    applied: tokio::sync::watch::Sender<Revision>,
}

impl Informer {
    pub fn get(&self, ns: Option<&str>, name: &str) -> Option<Arc<Value>> {
        let key = format!("{}/{name}", ns.unwrap_or_default());
        self.state.read().expect("cache").items.get(&key).cloned()
    }

    /// The objects of a namespace (every object when `None`).
    pub fn list(&self, ns: Option<&str>) -> Vec<Arc<Value>> {
        let st = self.state.read().expect("cache");
        match ns {
            None => st.items.values().cloned().collect(),
            // '0' follows '/': the range holds exactly the keys "ns/...".
            Some(ns) => st
                .items
                .range(format!("{ns}/")..format!("{ns}0"))
                .map(|(_, v)| v.clone())
                .collect(),
        }
    }

    /// Adds an index named `name` (once; later calls are no-ops).
    pub fn add_index(&self, name: &'static str, f: IndexFn) {
        let mut st = self.state.write().expect("cache");
        if st.indexes.contains_key(name) {
            return;
        }
        let mut map: HashMap<String, BTreeSet<String>> = HashMap::new();
        for (k, v) in &st.items {
            if let Some(i) = f(v) {
                map.entry(i).or_default().insert(k.clone());
            }
        }
        st.indexes.insert(name, (f, map));
    }

    /// The objects whose index `name` value is `value`.
    pub fn by_index(&self, name: &str, value: &str) -> Vec<Arc<Value>> {
        let st = self.state.read().expect("cache");
        let Some((_, map)) = st.indexes.get(name) else {
            return Vec::new();
        };
        map.get(value)
            .into_iter()
            .flatten()
            .filter_map(|k| st.items.get(k).cloned())
            .collect()
    }

    /// Calls `handler` for every change from now on, after an ADDED-like change for each
    /// object already cached (no change is missed or seen twice).
    pub fn on_change(&self, handler: impl Fn(&Change) + Send + Sync + 'static) {
        let mut st = self.state.write().expect("cache");
        for v in st.items.values() {
            handler(&Change {
                old: None,
                new: Some(v.clone()),
            });
        }
        st.handlers.push(Box::new(handler));
    }

    /// Waits until the first list is in.
    pub async fn synced(&self) {
        self.wait_for(1).await
    }

    /// Waits until the cache has applied revision `rev` of this resource (a write of ours);
    /// gives up after a while (the watch is restarting): the next reconcile corrects.
    pub async fn wait_for(&self, rev: Revision) {
        let mut rx = self.applied.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|r| *r >= rev)).await;
    }

    fn apply(&self, key: String, new: Option<Arc<Value>>, rev: Revision) {
        let mut st = self.state.write().expect("cache");
        let old = match &new {
            Some(v) => st.items.insert(key.clone(), v.clone()),
            None => st.items.remove(&key),
        };
        st.index(&key, old.as_deref(), new.as_deref());
        let change = Change { old, new };
        if change.old.is_some() || change.new.is_some() {
            for h in &st.handlers {
                h(&change);
            }
        }
        drop(st);
        self.applied.send_if_modified(|r| {
            let newer = rev > *r;
            *r = (*r).max(rev);
            newer
        });
    }

    /// Replaces everything with a fresh list, reporting the differences as changes.
    fn replace(&self, items: BTreeMap<String, Arc<Value>>, rev: Revision) {
        let mut st = self.state.write().expect("cache");
        let old = std::mem::take(&mut st.items);
        let mut changes = Vec::new();
        for (k, v) in &items {
            match old.get(k) {
                Some(o) if rv(o) == rv(v) => {}
                o => changes.push(Change {
                    old: o.cloned(),
                    new: Some(v.clone()),
                }),
            }
        }
        for (k, o) in &old {
            if !items.contains_key(k) {
                changes.push(Change {
                    old: Some(o.clone()),
                    new: None,
                });
            }
        }
        st.items = items;
        for c in &changes {
            let key = key_of(c.object());
            st.index(&key, c.old.as_deref(), c.new.as_deref());
        }
        for c in &changes {
            for h in &st.handlers {
                h(c);
            }
        }
        drop(st);
        self.applied.send_modify(|r| *r = (*r).max(rev).max(1));
    }

    /// Lists, then follows the watch; lists again whenever the watch ends.
    async fn run(self: Arc<Self>, objects: Arc<Objects>) {
        loop {
            let page = match objects.list(self.rt, None, &ListOptions::default()).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(resource = self.rt.plural, error = %e, "cache: list failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let items = page
                .items
                .iter()
                .filter_map(|b| serde_json::from_slice::<Value>(b).ok())
                .map(|v| (key_of(&v), Arc::new(v)))
                .collect();
            self.replace(items, page.rev);
            let Ok(mut stream) = objects.watch(self.rt, None, page.rev, WatchFilter::default())
            else {
                continue;
            };
            while let Some(WatchItem::Event {
                kind,
                object,
                rev,
                value,
            }) = stream.next().await
            {
                let Some(v) = crate::objects::parsed_event(&object, value) else {
                    continue;
                };
                let key = key_of(&v);
                let new = (kind != "DELETED").then_some(v);
                self.apply(key, new, rev);
            }
        }
    }
}

fn rv(v: &Value) -> Option<&str> {
    v.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
}

/// The shared cache: one [`Informer`] per resource that some controller asked for.
pub struct Cache {
    objects: Arc<Objects>,
    informers: Mutex<HashMap<String, Arc<Informer>>>,
}

impl Cache {
    pub fn new(objects: Arc<Objects>) -> Arc<Cache> {
        Arc::new(Cache {
            objects,
            informers: Mutex::default(),
        })
    }

    pub fn objects(&self) -> &Arc<Objects> {
        &self.objects
    }

    /// The informer of `rt`, started on first use.
    pub fn informer(&self, rt: &'static ResourceType) -> Arc<Informer> {
        let id = rt.prefix(None);
        let mut all = self.informers.lock().expect("informers");
        if let Some(i) = all.get(&id) {
            return i.clone();
        }
        let informer = Arc::new(Informer {
            rt,
            state: RwLock::default(),
            applied: tokio::sync::watch::channel(0).0,
        });
        tokio::spawn(informer.clone().run(self.objects.clone()));
        all.insert(id, informer.clone());
        informer
    }

    /// The informer of a served resource, by group, version and plural name.
    pub fn of(&self, group: &str, version: &str, resource: &str) -> Arc<Informer> {
        let rt = self
            .objects
            .registry()
            .find(group, version, resource)
            .unwrap_or_else(|| panic!("{group}/{version} {resource} is served"));
        self.informer(rt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::{Target, WriteOptions};
    use crate::registry::Registry;
    use crate::store::SledStore;
    use serde_json::json;

    #[tokio::test]
    async fn follows_the_store_and_waits_for_own_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(dir.path(), 1000).unwrap());
        let objects = Arc::new(Objects::new(store, Arc::new(Registry::new())));
        let cache = Cache::new(objects.clone());
        let cms = cache.of("", "v1", "configmaps");
        let ns = objects.registry().find("", "v1", "namespaces").unwrap();
        let w = WriteOptions::default();
        for n in ["a", "b"] {
            objects
                .create(ns, None, json!({"metadata": {"name": n}}), &w)
                .await
                .unwrap();
        }
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        cms.on_change(move |c| {
            s.lock()
                .unwrap()
                .push((key_of(c.object()), c.new.is_some()))
        });
        cms.synced().await;
        let mut last = 0;
        for (n, name) in [("a", "x"), ("b", "y"), ("a", "z")] {
            let written = objects
                .create(cms.rt, Some(n), json!({"metadata": {"name": name}}), &w)
                .await
                .unwrap();
            last = written_rev(&written);
        }
        cms.wait_for(last).await;
        let names = |ns| {
            cms.list(Some(ns))
                .iter()
                .map(|v| v["metadata"]["name"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(names("a"), ["x", "z"]);
        assert_eq!(names("b"), ["y"]);
        let gone = objects
            .delete(cms.rt, Some("a"), "x", &Default::default())
            .await
            .unwrap();
        cms.wait_for(written_rev(&gone)).await;
        assert!(cms.get(Some("a"), "x").is_none());
        // An index follows changes: objects by a label.
        cms.add_index("team", |v| {
            v.pointer("/metadata/labels/team")
                .and_then(Value::as_str)
                .map(str::to_string)
        });
        let labelled = objects
            .create(
                cms.rt,
                Some("b"),
                json!({"metadata": {"name": "t", "labels": {"team": "red"}}}),
                &w,
            )
            .await
            .unwrap();
        cms.wait_for(written_rev(&labelled)).await;
        assert_eq!(cms.by_index("team", "red").len(), 1);
        let moved = objects
            .update_with(cms.rt, Some("b"), "t", Target::Main, &w, |cur| {
                let mut next = cur.clone();
                next["metadata"]["labels"]["team"] = json!("blue");
                Ok(next)
            })
            .await
            .unwrap();
        cms.wait_for(written_rev(&moved)).await;
        assert!(cms.by_index("team", "red").is_empty());
        assert_eq!(cms.by_index("team", "blue").len(), 1);
        assert_eq!(
            *seen.lock().unwrap(),
            [
                ("a/x".to_string(), true),
                ("b/y".to_string(), true),
                ("a/z".to_string(), true),
                ("a/x".to_string(), false),
                ("b/t".to_string(), true),
                ("b/t".to_string(), true)
            ]
        );
    }
}
