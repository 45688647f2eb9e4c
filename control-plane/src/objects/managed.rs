//! Field ownership (`metadata.managedFields`, `FieldsV1`) and server-side apply.
//!
//! A field set is a set of paths; a path element is `f:<field>`, `k:<merge key JSON>` for
//! an item of a keyed list, `v:<value JSON>` for an item of a set, and `.` for an item or
//! map itself. Updates give their manager the fields they changed; an apply gives its
//! manager exactly the fields in its configuration, reports conflicts with other
//! managers, and removes fields it applied before but no longer does.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};

use super::patch::{apply_merge, ListKey, ListStrategy};
use super::{meta, meta_mut, now_string};

type Path = Vec<String>;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct FieldSet(BTreeSet<Path>);

/// Metadata fields the server owns; they are never tracked.
const SYSTEM_META: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
    "generateName",
];

/// Maps whose entries are tracked one by one and which mark themselves with `.`.
const GRANULAR_MAPS: &[&str] = &[
    "labels",
    "annotations",
    "matchLabels",
    "nodeSelector",
    "data",
    "binaryData",
    "stringData",
    "limits",
    "requests",
    "capacity",
    "allocatable",
];

/// How server-side apply tracks list `field` under `path` (`x-kubernetes-list-type`).
fn apply_strategy(kind: &str, path: &[&str], field: &str) -> ListStrategy {
    crate::registry::lists::index().get(kind, path, field).apply
}

impl FieldSet {
    /// The fields set in `obj` (system metadata, apiVersion and kind excluded).
    pub fn of(kind: &str, obj: &Value, with_status: bool) -> FieldSet {
        let mut set = FieldSet::default();
        if let Some(o) = obj.as_object() {
            for (k, v) in o {
                match k.as_str() {
                    "apiVersion" | "kind" => {}
                    "status" if !with_status => {}
                    "metadata" => {
                        if let Some(m) = v.as_object() {
                            for (mk, mv) in m
                                .iter()
                                .filter(|(mk, _)| !SYSTEM_META.contains(&mk.as_str()))
                            {
                                set.walk(
                                    kind,
                                    &mut vec!["metadata"],
                                    vec!["f:metadata".into(), format!("f:{mk}")],
                                    mk,
                                    mv,
                                );
                            }
                        }
                    }
                    _ => set.walk(kind, &mut vec![], vec![format!("f:{k}")], k, v),
                }
            }
        }
        set
    }

    fn walk<'a>(
        &mut self,
        kind: &str,
        names: &mut Vec<&'a str>,
        path: Path,
        field: &'a str,
        v: &'a Value,
    ) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                if GRANULAR_MAPS.contains(&field) {
                    self.0.insert([path.clone(), vec![".".into()]].concat());
                }
                names.push(field);
                for (k, child) in m {
                    let mut p = path.clone();
                    p.push(format!("f:{k}"));
                    self.walk(kind, names, p, k, child);
                }
                names.pop();
            }
            Value::Array(items) if !items.is_empty() => match apply_strategy(kind, names, field) {
                ListStrategy::Atomic => {
                    self.0.insert(path);
                }
                ListStrategy::Set => {
                    for item in items {
                        let mut p = path.clone();
                        p.push(format!("v:{item}"));
                        self.0.insert(p);
                    }
                }
                ListStrategy::Keyed(keys) => {
                    names.push(field);
                    names.push("[]");
                    for item in items {
                        let Some(m) = item.as_object() else { continue };
                        let mut ip = path.clone();
                        ip.push(key_element(keys, item));
                        self.0.insert([ip.clone(), vec![".".into()]].concat());
                        for (k, child) in m {
                            let mut p = ip.clone();
                            p.push(format!("f:{k}"));
                            self.walk(kind, names, p, k, child);
                        }
                    }
                    names.truncate(names.len() - 2);
                }
            },
            _ => {
                self.0.insert(path);
            }
        }
    }

    pub fn to_fields_v1(&self) -> Value {
        let mut root = Map::new();
        for path in &self.0 {
            let mut node = &mut root;
            for el in path {
                node = node
                    .entry(el.clone())
                    .or_insert_with(|| json!({}))
                    .as_object_mut()
                    .expect("fields are objects");
            }
        }
        Value::Object(root)
    }

    pub fn from_fields_v1(v: &Value) -> FieldSet {
        fn go(v: &Value, path: &mut Path, out: &mut BTreeSet<Path>) {
            match v.as_object() {
                Some(m) if !m.is_empty() => {
                    for (k, child) in m {
                        path.push(k.clone());
                        go(child, path, out);
                        path.pop();
                    }
                }
                _ => {
                    out.insert(path.clone());
                }
            }
        }
        let mut out = BTreeSet::new();
        go(v, &mut Vec::new(), &mut out);
        FieldSet(out)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn remove_all(&mut self, other: &FieldSet) {
        self.0.retain(|p| !other.0.contains(p));
    }
}

/// The `k:` element of `item` of a list keyed by `keys`: every key field it has, or whose
/// default it takes, sorted by name as structured-merge-diff writes them, e.g.
/// `k:{"containerPort":53,"protocol":"UDP"}`.
fn key_element(keys: &[ListKey], item: &Value) -> String {
    let mut fields: Vec<(&str, std::borrow::Cow<Value>)> = keys
        .iter()
        .filter_map(|k| Some((k.field, k.value_in(item)?)))
        .collect();
    fields.sort_by(|a, b| a.0.cmp(b.0));
    let fields: Vec<String> = fields
        .iter()
        .map(|(name, v)| format!("{}:{v}", Value::from(*name)))
        .collect();
    format!("k:{{{}}}", fields.join(","))
}

/// `v` with the defaults of the list-map keys its items omit filled in (a port's
/// `protocol`), so that looking an item up by its `k:` element finds it; an error (in
/// structured-merge-diff's words) for an item that omits a key without a default.
fn fill_key_defaults(kind: &str, names: &mut Vec<String>, v: &mut Value) -> Result<(), String> {
    let Some(m) = v.as_object_mut() else {
        return Ok(());
    };
    for (field, child) in m.iter_mut() {
        match child {
            Value::Object(_) => {
                names.push(field.clone());
                fill_key_defaults(kind, names, child)?;
                names.pop();
            }
            Value::Array(items) => {
                let parent: Vec<&str> = names.iter().map(String::as_str).collect();
                let ListStrategy::Keyed(keys) = apply_strategy(kind, &parent, field) else {
                    continue;
                };
                names.extend([field.clone(), "[]".into()]);
                for (i, item) in items.iter_mut().enumerate() {
                    let Some(o) = item.as_object_mut() else {
                        continue;
                    };
                    for k in keys {
                        match (k.default, o.contains_key(k.field)) {
                            (_, true) => {}
                            (Some(d), false) => {
                                o.insert(k.field.into(), d.into());
                            }
                            // structured-merge-diff's words.
                            (None, false) => {
                                let list: String = names[..names.len() - 1]
                                    .iter()
                                    .map(|n| match n.as_str() {
                                        "[]" => "[]".to_string(),
                                        n => format!(".{n}"),
                                    })
                                    .collect();
                                return Err(format!(
                                    "{list}: element {i}: associative list with keys has an element that omits key field {:?} (and doesn't have default value)",
                                    k.field
                                ));
                            }
                        }
                    }
                    fill_key_defaults(kind, names, item)?;
                }
                names.truncate(names.len() - 2);
            }
            _ => {}
        }
    }
    Ok(())
}

/// The identity of a list item for a path element: `k:` items by their merge-key fields,
/// `v:` items by their value. Both sides of a lookup use it, so it only has to be stable.
fn item_id(el: &str) -> Option<(String, String)> {
    if let Some(k) = el.strip_prefix("k:") {
        let key: Map<String, Value> = serde_json::from_str(k).ok()?;
        let mut fields: Vec<(&String, &Value)> = key.iter().collect();
        fields.sort_by(|a, b| a.0.cmp(b.0));
        let names = fields.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>();
        let id = fields
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        Some((format!("k:{}", names.join(",")), id))
    } else {
        let v: Value = serde_json::from_str(el.strip_prefix("v:")?).ok()?;
        Some(("v:".into(), v.to_string()))
    }
}

/// The identity `item_id` gives `item` under the kind of element `shape` (`k:<names>`
/// or `v:`).
fn id_of(item: &Value, shape: &str) -> String {
    match shape.strip_prefix("k:") {
        Some(names) => names
            .split(',')
            .map(|n| format!("{n}={}", item.get(n).unwrap_or(&Value::Null)))
            .collect::<Vec<_>>()
            .join(","),
        None => item.to_string(),
    }
}

/// Looks up values by field path, indexing each list it searches once, so resolving the
/// paths of n list items costs n, not n squared.
#[derive(Default)]
struct Lookup<'a> {
    /// (list address, item shape) → item identity → item.
    lists: std::collections::HashMap<(usize, String), std::collections::HashMap<String, &'a Value>>,
}

impl<'a> Lookup<'a> {
    fn value_at(&mut self, obj: &'a Value, path: &[String]) -> Option<&'a Value> {
        let mut cur = obj;
        for el in path {
            if el == "." {
                continue;
            }
            cur = if let Some(f) = el.strip_prefix("f:") {
                cur.get(f)?
            } else {
                let list = cur.as_array()?;
                let (shape, id) = item_id(el)?;
                let index = self
                    .lists
                    .entry((list as *const Vec<Value> as usize, shape))
                    .or_insert_with_key(|(_, shape)| {
                        let mut m = std::collections::HashMap::with_capacity(list.len());
                        for item in list {
                            m.entry(id_of(item, shape)).or_insert(item);
                        }
                        m
                    });
                *index.get(&id)?
            };
        }
        Some(cur)
    }
}

/// Removes the fields at `paths` from `obj`: the items of one list in one pass over it,
/// lists searched through an index, so removing n items or fields costs about n.
fn remove_all_at(obj: &mut Value, paths: &[&Path]) {
    // A list item removed whole takes its fields with it.
    let whole_items: BTreeSet<&[String]> = paths
        .iter()
        .filter_map(|p| match p.split_last() {
            Some((last, parents)) if last == "." => Some(parents),
            _ => None,
        })
        .collect();
    let mut by_depth: BTreeMap<std::cmp::Reverse<usize>, BTreeMap<&[String], Vec<&String>>> =
        BTreeMap::new();
    for p in paths {
        let p: &[String] = match p.split_last() {
            Some((last, parents)) if last == "." => parents,
            _ => p,
        };
        if (1..p.len()).any(|i| whole_items.contains(&p[..i])) {
            continue;
        }
        if let Some((last, parents)) = p.split_last() {
            by_depth
                .entry(std::cmp::Reverse(p.len()))
                .or_default()
                .entry(parents)
                .or_default()
                .push(last);
        }
    }
    // Deepest first: a list's items are removed only after everything inside them, so the
    // positions an index holds stay valid until then.
    let mut lookup = LookupMut::default();
    for groups in by_depth.into_values() {
        for (parents, lasts) in groups {
            let Some(cur) = lookup.navigate(obj, parents) else {
                continue;
            };
            if let Some(m) = cur.as_object_mut() {
                for l in &lasts {
                    if let Some(f) = l.strip_prefix("f:") {
                        m.remove(f);
                    }
                }
            } else if let Some(list) = cur.as_array_mut() {
                let doomed: std::collections::HashSet<(String, String)> =
                    lasts.iter().filter_map(|l| item_id(l)).collect();
                let shapes: BTreeSet<&String> = doomed.iter().map(|(s, _)| s).collect();
                list.retain(|item| {
                    !shapes
                        .iter()
                        .any(|shape| doomed.contains(&((*shape).clone(), id_of(item, shape))))
                });
                lookup.lists.remove(&(list as *const Vec<Value> as usize));
            }
        }
    }
}

/// Finds values by field path to change them, indexing each list it searches once.
#[derive(Default)]
struct LookupMut {
    /// List address → item shape → item identity → position.
    lists: std::collections::HashMap<
        usize,
        std::collections::HashMap<String, std::collections::HashMap<String, usize>>,
    >,
}

impl LookupMut {
    fn navigate<'v>(&mut self, obj: &'v mut Value, path: &[String]) -> Option<&'v mut Value> {
        let mut cur = obj;
        for el in path {
            if el == "." {
                continue;
            }
            cur = if let Some(f) = el.strip_prefix("f:") {
                cur.get_mut(f)?
            } else {
                let (shape, id) = item_id(el)?;
                let list = cur.as_array_mut()?;
                let positions = self
                    .lists
                    .entry(list as *const Vec<Value> as usize)
                    .or_default()
                    .entry(shape)
                    .or_insert_with_key(|shape| {
                        let mut m = std::collections::HashMap::with_capacity(list.len());
                        for (i, item) in list.iter().enumerate() {
                            m.entry(id_of(item, shape)).or_insert(i);
                        }
                        m
                    });
                let i = *positions.get(&id)?;
                list.get_mut(i)?
            };
        }
        Some(cur)
    }
}

/// One `managedFields` entry.
#[derive(Clone, Debug)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    subresource: Option<String>,
    time: Option<String>,
    fields: FieldSet,
}

fn entries(obj: &Value) -> Vec<Entry> {
    meta(obj)
        .and_then(|m| m.get("managedFields"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|e| Entry {
                    manager: e["manager"].as_str().unwrap_or_default().into(),
                    operation: e["operation"].as_str().unwrap_or("Update").into(),
                    api_version: e["apiVersion"].as_str().unwrap_or_default().into(),
                    subresource: e["subresource"].as_str().map(str::to_string),
                    time: e["time"].as_str().map(str::to_string),
                    fields: FieldSet::from_fields_v1(&e["fieldsV1"]),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn set_entries(obj: &mut Value, entries: Vec<Entry>) {
    let list: Vec<Value> = entries
        .into_iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager, "operation": e.operation, "apiVersion": e.api_version,
                "time": e.time.unwrap_or_else(now_string), "fieldsType": "FieldsV1", "fieldsV1": e.fields.to_fields_v1(),
            });
            if let Some(s) = e.subresource {
                v["subresource"] = json!(s);
            }
            v
        })
        .collect();
    let m = meta_mut(obj);
    if list.is_empty() {
        m.remove("managedFields");
    } else {
        m.insert("managedFields".into(), Value::Array(list));
    }
}

fn kind_of(obj: &Value) -> &str {
    obj.get("kind").and_then(Value::as_str).unwrap_or_default()
}

/// Records an Update by `manager`: it takes ownership of every field it changed.
pub fn record_update(
    new: &mut Value,
    old: Option<&Value>,
    manager: &str,
    api_version: &str,
    operation: &str,
) {
    let kind = kind_of(new).to_string();
    let status_write = false;
    let new_set = FieldSet::of(&kind, new, status_write);
    let mut list = entries(old.unwrap_or(new));
    let (changed, removed) = {
        let (mut in_old, mut in_new) = (Lookup::default(), Lookup::default());
        let shared: &Value = new;
        let changed = match old {
            None => new_set,
            Some(old) => FieldSet(
                new_set
                    .0
                    .into_iter()
                    .filter(|p| in_old.value_at(old, p) != in_new.value_at(shared, p))
                    .collect(),
            ),
        };
        // Fields the update removed are no longer anybody's.
        let removed: BTreeSet<Path> = list
            .iter()
            .flat_map(|e| e.fields.0.iter())
            .filter(|p| in_new.value_at(shared, p).is_none())
            .cloned()
            .collect();
        (changed, removed)
    };
    for e in list.iter_mut() {
        e.fields.remove_all(&changed);
        e.fields.0.retain(|p| !removed.contains(p));
    }
    if changed.is_empty() && old.is_some() {
        set_entries(new, list);
        return;
    }
    match list
        .iter_mut()
        .find(|e| e.manager == manager && e.operation == operation && e.subresource.is_none())
    {
        Some(e) => {
            e.fields.0.extend(changed.0);
            e.time = Some(now_string());
            e.api_version = api_version.into();
        }
        None => list.push(Entry {
            manager: manager.into(),
            operation: operation.into(),
            api_version: api_version.into(),
            subresource: None,
            time: None,
            fields: changed,
        }),
    }
    set_entries(new, list);
}

/// A field another manager owns with a different value.
#[derive(Debug, Clone, PartialEq)]
pub struct ApplyConflict {
    pub manager: String,
    pub api_version: String,
    /// The field path as Kubernetes prints it, e.g. `.spec.replicas`.
    pub field: String,
}

fn display_path(path: &[String]) -> String {
    let mut s = String::new();
    for el in path {
        if let Some(f) = el.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if let Some(k) = el.strip_prefix("k:") {
            s.push_str(&format!(
                "[{}]",
                k.trim_start_matches('{')
                    .trim_end_matches('}')
                    .replace('"', "")
                    .replace(':', "=")
            ));
        } else if let Some(v) = el.strip_prefix("v:") {
            s.push_str(&format!("[{v}]"));
        }
    }
    s
}

/// Why a configuration could not be applied.
#[derive(Debug)]
pub enum ApplyError {
    /// Fields other managers own with other values.
    Conflicts(Vec<ApplyConflict>),
    /// The configuration does not merge (a list item without its key fields, say).
    Invalid(String),
}

/// Server-side apply of `applied` by `manager` over `current` (absent for a create).
pub fn apply(
    current: Option<&Value>,
    applied: &Value,
    manager: &str,
    api_version: &str,
    force: bool,
) -> Result<Value, ApplyError> {
    let kind = kind_of(applied).to_string();
    let applied_set = FieldSet::of(&kind, applied, false);
    let invalid = |e: super::patch::PatchError| ApplyError::Invalid(e.to_string());
    let Some(current) = current else {
        // Every list-map item needs its keys (or their defaults); kept as given.
        fill_key_defaults(&kind, &mut Vec::new(), &mut applied.clone())
            .map_err(ApplyError::Invalid)?;
        let mut obj = applied.clone();
        set_entries(
            &mut obj,
            vec![Entry {
                manager: manager.into(),
                operation: "Apply".into(),
                api_version: api_version.into(),
                subresource: None,
                time: None,
                fields: applied_set,
            }],
        );
        return Ok(obj);
    };
    let mut list = entries(current);
    let mut conflicts = Vec::new();
    let mut filled = applied.clone();
    fill_key_defaults(&kind, &mut Vec::new(), &mut filled).map_err(ApplyError::Invalid)?;
    let (mut in_current, mut in_applied) = (Lookup::default(), Lookup::default());
    for e in list
        .iter_mut()
        .filter(|e| !(e.manager == manager && e.operation == "Apply"))
    {
        if e.subresource.is_some() {
            continue;
        }
        let clashing: BTreeSet<Path> = e
            .fields
            .0
            .iter()
            .filter(|p| {
                applied_set.0.contains(*p)
                    && p.last().is_some_and(|l| l != ".")
                    && in_current.value_at(current, p) != in_applied.value_at(&filled, p)
            })
            .cloned()
            .collect();
        if force {
            e.fields.0.retain(|p| !clashing.contains(p));
        } else {
            conflicts.extend(clashing.iter().map(|p| ApplyConflict {
                manager: e.manager.clone(),
                api_version: e.api_version.clone(),
                field: display_path(p),
            }));
        }
    }
    if !conflicts.is_empty() {
        return Err(ApplyError::Conflicts(conflicts));
    }
    // Merge the configuration in (list items matched as apply identifies them), then drop
    // what this manager applied before but no longer does, unless someone else also owns it.
    let mut obj = apply_merge(&kind, current, &strip_nulls(applied)).map_err(invalid)?;
    let previous = list
        .iter()
        .find(|e| e.manager == manager && e.operation == "Apply")
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    let others: BTreeSet<&Path> = list
        .iter()
        .filter(|e| !(e.manager == manager && e.operation == "Apply"))
        .flat_map(|e| e.fields.0.iter())
        .collect();
    let dropped: Vec<&Path> = previous
        .0
        .iter()
        .filter(|p| !applied_set.0.contains(*p) && !others.contains(p))
        .collect();
    remove_all_at(&mut obj, &dropped);
    list.retain(|e| !(e.manager == manager && e.operation == "Apply"));
    list.push(Entry {
        manager: manager.into(),
        operation: "Apply".into(),
        api_version: api_version.into(),
        subresource: None,
        time: None,
        fields: applied_set,
    });
    set_entries(&mut obj, list);
    Ok(obj)
}

fn strip_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), strip_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_nulls).collect()),
        other => other.clone(),
    }
}

/// Equality that ignores the `time` of managedFields entries (so no-op writes stay no-ops).
pub fn equal_ignoring_times(a: &Value, b: &Value) -> bool {
    fn scrub(v: &Value) -> Value {
        let mut v = v.clone();
        if let Some(list) = v
            .pointer_mut("/metadata/managedFields")
            .and_then(Value::as_array_mut)
        {
            for e in list {
                if let Some(o) = e.as_object_mut() {
                    o.remove("time");
                }
            }
        }
        v
    }
    scrub(a) == scrub(b)
}

/// Conflicts grouped per manager, for the error message.
pub fn describe_conflicts(conflicts: &[ApplyConflict]) -> String {
    let mut by: BTreeMap<(String, String), Vec<&str>> = BTreeMap::new();
    for c in conflicts {
        by.entry((c.manager.clone(), c.api_version.clone()))
            .or_default()
            .push(&c.field);
    }
    let n = conflicts.len();
    let mut parts = Vec::new();
    for ((m, v), fields) in by {
        parts.push(format!(
            "conflict{} with \"{m}\" using {v}:{}",
            if fields.len() > 1 { "s" } else { "" },
            if fields.len() == 1 {
                format!(" {}", fields[0])
            } else {
                fields
                    .iter()
                    .map(|f| format!("\n- {f}"))
                    .collect::<String>()
            }
        ));
    }
    format!(
        "Apply failed with {n} conflict{}: {}",
        if n > 1 { "s" } else { "" },
        parts.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deploy(replicas: i64, image: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "labels": {"app": "x"}},
            "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"name": "c", "image": image}]}}}})
    }

    #[test]
    fn fieldsv1_round_trips() {
        let set = FieldSet::of("Deployment", &deploy(1, "a"), false);
        let v = set.to_fields_v1();
        assert!(
            v["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"c\"}"]["f:image"]
                .is_object()
        );
        assert!(v["f:metadata"]["f:labels"]["."].is_object());
        assert_eq!(FieldSet::from_fields_v1(&v), set);
    }

    pub(super) fn conflicts(applied: Result<Value, ApplyError>) -> Vec<ApplyConflict> {
        match applied {
            Err(ApplyError::Conflicts(c)) => c,
            other => panic!("no conflicts: {other:?}"),
        }
    }

    /// Regression: a configuration that does not merge (a port without its
    /// `containerPort`) was answered with the object as it was, as if applied.
    #[test]
    fn a_configuration_that_does_not_merge_is_refused() {
        let mut d = deploy(1, "a");
        d["spec"]["template"]["spec"]["containers"][0]["ports"] = json!([{"name": "http"}]);
        for current in [
            None,
            Some(apply(None, &deploy(1, "a"), "alice", "apps/v1", false).unwrap()),
        ] {
            match apply(current.as_ref(), &d, "alice", "apps/v1", false) {
                Err(ApplyError::Invalid(msg)) => {
                    assert!(msg.contains("omits key field \"containerPort\""), "{msg}")
                }
                other => panic!("applied: {other:?}"),
            }
        }
    }

    #[test]
    fn apply_conflicts_with_another_manager_unless_forced() {
        let mut obj = apply(None, &deploy(1, "a"), "alice", "apps/v1", false).unwrap();
        let mut changed = obj.clone();
        changed["spec"]["replicas"] = json!(5);
        record_update(&mut changed, Some(&obj), "bob", "apps/v1", "Update");
        obj = changed;
        let err = conflicts(apply(
            Some(&obj),
            &deploy(1, "a"),
            "alice",
            "apps/v1",
            false,
        ));
        assert_eq!(
            err,
            vec![ApplyConflict {
                manager: "bob".into(),
                api_version: "apps/v1".into(),
                field: ".spec.replicas".into()
            }]
        );
        assert_eq!(
            describe_conflicts(&err),
            "Apply failed with 1 conflict: conflict with \"bob\" using apps/v1: .spec.replicas"
        );
        let forced = apply(Some(&obj), &deploy(1, "a"), "alice", "apps/v1", true).unwrap();
        assert_eq!(forced["spec"]["replicas"], 1);
        // Same value: shared ownership, no conflict.
        assert!(apply(Some(&obj), &deploy(5, "a"), "alice", "apps/v1", false).is_ok());
    }

    /// Items of a list-map (`x-kubernetes-list-type: map`) are owned one by one: two
    /// managers apply their own env vars to the same container without a conflict, and one
    /// dropping its var leaves the other's.
    #[test]
    fn apply_on_a_list_map_owns_items_by_key() {
        let with_env = |env: Value| {
            let mut d = deploy(1, "a");
            d["spec"]["template"]["spec"]["containers"][0]["env"] = env;
            d
        };
        let alice = with_env(json!([{"name": "A", "value": "1"}]));
        let bob = with_env(json!([{"name": "B", "value": "2"}]));
        let obj = apply(None, &alice, "alice", "apps/v1", false).unwrap();
        let obj = apply(Some(&obj), &bob, "bob", "apps/v1", false).unwrap();
        let env = |o: &Value| o["spec"]["template"]["spec"]["containers"][0]["env"].clone();
        assert_eq!(
            env(&obj),
            json!([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}])
        );
        let set = FieldSet::of("Deployment", &alice, false).to_fields_v1();
        let c = &set["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"c\"}"];
        assert!(
            c["f:env"]["k:{\"name\":\"A\"}"]["f:value"].is_object(),
            "{c}"
        );
        // Alice no longer sets A: it goes, B (Bob's) stays.
        let obj = apply(Some(&obj), &deploy(1, "a"), "alice", "apps/v1", false).unwrap();
        assert_eq!(env(&obj), json!([{"name": "B", "value": "2"}]));
        // An atomic list (tolerations) is one field: another value conflicts.
        let mut tol = deploy(1, "a");
        tol["spec"]["template"]["spec"]["tolerations"] =
            json!([{"key": "k", "operator": "Exists"}]);
        let obj = apply(Some(&obj), &tol, "alice", "apps/v1", false).unwrap();
        tol["spec"]["template"]["spec"]["tolerations"] =
            json!([{"key": "j", "operator": "Exists"}]);
        let err = conflicts(apply(Some(&obj), &tol, "bob", "apps/v1", false));
        assert_eq!(err[0].field, ".spec.template.spec.tolerations");
    }

    /// Regression: apply keyed list-map items by their first key only, so container ports
    /// 53/TCP and 53/UDP were one item (merged into one port on the next apply) and one
    /// `k:{"containerPort":53}` in managedFields. structured-merge-diff keys them by all of
    /// `containerPort` and `protocol`.
    #[test]
    fn apply_keys_list_map_items_by_all_their_keys() {
        let with_ports = |ports: Value| {
            let mut d = deploy(1, "a");
            d["spec"]["template"]["spec"]["containers"][0]["ports"] = ports;
            d
        };
        let ports = |o: &Value| o["spec"]["template"]["spec"]["containers"][0]["ports"].clone();
        let both = json!([
            {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
            {"name": "dns-udp", "containerPort": 53, "protocol": "UDP"}]);
        let obj = apply(None, &with_ports(both.clone()), "alice", "apps/v1", false).unwrap();
        let obj = apply(
            Some(&obj),
            &with_ports(both.clone()),
            "alice",
            "apps/v1",
            false,
        )
        .unwrap();
        assert_eq!(ports(&obj), both);
        let fields = &obj["metadata"]["managedFields"][0]["fieldsV1"];
        let owned = &fields["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"c\"}"]
            ["f:ports"];
        let keys: Vec<&String> = owned.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            [
                r#"k:{"containerPort":53,"protocol":"TCP"}"#,
                r#"k:{"containerPort":53,"protocol":"UDP"}"#
            ],
            "{fields}"
        );
        assert!(owned[r#"k:{"containerPort":53,"protocol":"UDP"}"#]["f:name"].is_object());

        // Dropping 53/UDP removes that port only.
        let tcp = json!([{"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"}]);
        let obj = apply(
            Some(&obj),
            &with_ports(tcp.clone()),
            "alice",
            "apps/v1",
            false,
        )
        .unwrap();
        assert_eq!(ports(&obj), tcp);

        // A port without a protocol is the TCP one (the key's schema default): applying it
        // matches the stored port instead of adding another (alice no longer sets the
        // protocol, so it goes; defaulting puts it back).
        let bare = json!([{"name": "dns-tcp", "containerPort": 53}]);
        let bare_cfg = with_ports(bare.clone());
        let mut obj = apply(Some(&obj), &bare_cfg, "alice", "apps/v1", false).unwrap();
        assert_eq!(ports(&obj), bare);
        obj["spec"]["template"]["spec"]["containers"][0]["ports"] = tcp.clone();
        let obj = apply(Some(&obj), &bare_cfg, "alice", "apps/v1", false).unwrap();
        assert_eq!(ports(&obj), tcp);
        let set = FieldSet::of("Deployment", &with_ports(bare), false).to_fields_v1();
        assert!(
            set.pointer(
                "/f:spec/f:template/f:spec/f:containers/k:{\"name\":\"c\"}/f:ports\
                 /k:{\"containerPort\":53,\"protocol\":\"TCP\"}/f:name"
            )
            .is_some(),
            "{set}"
        );
        // Another manager owning the same port's name, with the same value: no conflict.
        let mut bob = with_ports(json!([{"name": "dns-tcp", "containerPort": 53}]));
        bob["spec"]["replicas"] = json!(1);
        assert!(apply(Some(&obj), &bob, "bob", "apps/v1", false).is_ok());
    }

    #[test]
    fn apply_removes_fields_it_no_longer_sets() {
        let mut cfg = deploy(1, "a");
        cfg["metadata"]["labels"]["extra"] = json!("y");
        let obj = apply(None, &cfg, "alice", "apps/v1", false).unwrap();
        let next = apply(Some(&obj), &deploy(1, "b"), "alice", "apps/v1", false).unwrap();
        assert_eq!(next["metadata"]["labels"], json!({"app": "x"}));
        assert_eq!(
            next["spec"]["template"]["spec"]["containers"][0]["image"],
            "b"
        );
    }
}

#[cfg(test)]
mod scale_tests {
    use super::*;

    /// Regression: apply compared and removed list items by linear search (30,000 volumes
    /// took minutes). Applying 20,000, conflicting over them, and applying without them
    /// takes a few seconds in a debug build (quadratic: about two minutes).
    #[test]
    fn applying_and_dropping_many_keyed_items_is_linear() {
        let n = 20_000;
        let pod = crate::objects::patch::scale_tests::pod_with_volumes(n);
        let t = std::time::Instant::now();
        let first = apply(None, &pod, "a", "v1", false).unwrap();
        let second = apply(Some(&first), &pod, "a", "v1", false).unwrap();
        let mut other = pod.clone();
        other["spec"]["containers"][0]["image"] = serde_json::json!("y");
        // `b` applies the same volumes (no conflict) and another image (a conflict).
        let conflict = super::tests::conflicts(apply(Some(&second), &other, "b", "v1", false));
        assert_eq!(conflict.len(), 1, "{conflict:?}");
        let mut fewer = pod.clone();
        fewer["spec"]["volumes"] = serde_json::json!([{"name": "v0", "emptyDir": {}}]);
        let third = apply(Some(&second), &fewer, "a", "v1", false).unwrap();
        let took = t.elapsed();
        assert_eq!(third["spec"]["volumes"].as_array().unwrap().len(), 1);
        assert!(took < std::time::Duration::from_secs(20), "took {took:?}");
    }
}
