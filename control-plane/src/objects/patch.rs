//! The patch formats Kubernetes accepts: JSON patch (RFC 6902), JSON merge patch
//! (RFC 7386) and strategic merge patch with its directives, using the merge keys the
//! built-in kinds declare (`x-kubernetes-patch-merge-key`, read by `registry::lists`), and
//! the merge of a server-side apply configuration, which matches list items as apply
//! identifies them (`x-kubernetes-list-map-keys`).

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PatchError {
    #[error("{0}")]
    Invalid(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> Option<PatchType> {
        let base = ct.split(';').next().unwrap_or("").trim();
        Some(match base {
            "application/json-patch+json" => PatchType::Json,
            "application/merge-patch+json" => PatchType::Merge,
            "application/strategic-merge-patch+json" => PatchType::Strategic,
            "application/apply-patch+yaml"
            | "application/apply-patch+json"
            | "application/apply-patch+cbor" => PatchType::Apply,
            _ => return None,
        })
    }
}

pub use crate::registry::lists::{ListKey, ListStrategy};

/// Which of a list's two strategies a merge follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lists {
    /// A strategic merge patch's: items by the one patch merge key.
    Patch,
    /// Server-side apply's: items by all their list-map keys, sets as sets.
    Apply,
}

/// The strategy of list field `field` whose parent is at `path` (field names only, list
/// items as `[]`), for an object of `kind`: what the kind's schema declares
/// (`x-kubernetes-patch-strategy`/`-patch-merge-key` for a patch,
/// `x-kubernetes-list-type`/`-list-map-keys` for apply), atomic if nothing.
fn list_strategy(kind: &str, path: &[&str], field: &str, lists: Lists) -> ListStrategy {
    let spec = crate::registry::lists::index().get(kind, path, field);
    match lists {
        Lists::Patch => spec.patch,
        Lists::Apply => spec.apply,
    }
}

/// The identity of `item` in a list keyed by `keys`: its key values (a key it omits takes
/// its default), or the first key it has no value for.
fn key_id<'k>(keys: &'k [ListKey], item: &Value) -> Result<String, &'k str> {
    let mut id = String::from("[");
    for (i, key) in keys.iter().enumerate() {
        if i > 0 {
            id.push(',');
        }
        id.push_str(&key.value_in(item).ok_or(key.field)?.to_string());
    }
    id.push(']');
    Ok(id)
}

pub fn json_patch(target: &Value, patch: &Value) -> Result<Value, PatchError> {
    let ops: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| PatchError::Invalid(format!("invalid JSON patch: {e}")))?;
    // Applied to a copy, which a failure discards: json-patch's own undo of a failed
    // multi-step patch can panic on odd paths.
    let mut out = target.clone();
    json_patch::patch_unsafe(&mut out, &ops).map_err(|e| PatchError::Invalid(e.to_string()))?;
    Ok(out)
}

pub fn merge_patch(target: &Value, patch: &Value) -> Result<Value, PatchError> {
    if !patch.is_object() {
        return Err(PatchError::Invalid(
            "a merge patch must be a JSON object".into(),
        ));
    }
    let mut out = target.clone();
    json_patch::merge(&mut out, patch);
    Ok(out)
}

const DIRECTIVE: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ORDER: &str = "$setElementOrder/";
const DELETE_FROM_PRIMITIVE: &str = "$deleteFromPrimitiveList/";

/// Applies a strategic merge patch to `original`.
pub fn strategic_merge(kind: &str, original: &Value, patch: &Value) -> Result<Value, PatchError> {
    merge(kind, original, patch, Lists::Patch)
}

/// Merges a server-side apply configuration into `original`: as a strategic merge patch,
/// but lists go by their apply strategy, so items of a list-map match on all its keys
/// (ports 53/TCP and 53/UDP are two items) and sets merge as sets.
pub fn apply_merge(kind: &str, original: &Value, applied: &Value) -> Result<Value, PatchError> {
    merge(kind, original, applied, Lists::Apply)
}

fn merge(kind: &str, original: &Value, patch: &Value, lists: Lists) -> Result<Value, PatchError> {
    let p = patch.as_object().ok_or_else(|| {
        PatchError::Invalid("a strategic merge patch must be a JSON object".into())
    })?;
    let o = original.as_object().cloned().unwrap_or_default();
    let mut path = Vec::new();
    Ok(merge_map(kind, lists, &mut path, o, p)?
        .map(Value::Object)
        .unwrap_or(Value::Object(Map::new())))
}

/// Merges patch map `p` into `o`; `None` means the map is deleted (`$patch: delete`).
fn merge_map<'a>(
    kind: &str,
    lists: Lists,
    path: &mut Vec<&'a str>,
    mut o: Map<String, Value>,
    p: &'a Map<String, Value>,
) -> Result<Option<Map<String, Value>>, PatchError> {
    match p.get(DIRECTIVE).and_then(Value::as_str) {
        Some("replace") => return Ok(Some(strip_directives(p))),
        Some("delete") => return Ok(None),
        Some("merge") | None => {}
        Some(other) => {
            return Err(PatchError::Invalid(format!(
                "Unknown patch type: {other:?}"
            )))
        }
    }
    if let Some(retain) = p.get(RETAIN_KEYS) {
        let keep: Vec<&str> = retain
            .as_array()
            .ok_or_else(|| PatchError::Invalid("$retainKeys must be a list".into()))?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        o.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (k, v) in p {
        if let Some(field) = k.strip_prefix(DELETE_FROM_PRIMITIVE) {
            let remove = v.as_array().cloned().unwrap_or_default();
            if let Some(Value::Array(list)) = o.get_mut(field) {
                list.retain(|x| !remove.contains(x));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        if v.is_null() {
            o.remove(k);
            continue;
        }
        let merged = match (o.remove(k), v) {
            (Some(Value::Object(ov)), Value::Object(pv)) => {
                path.push(k);
                let r = merge_map(kind, lists, path, ov, pv)?;
                path.pop();
                r.map(Value::Object)
            }
            (orig, Value::Array(pl)) => {
                let strategy = list_strategy(kind, path, k, lists);
                let orig_list = match orig {
                    Some(Value::Array(a)) => a,
                    _ => Vec::new(),
                };
                path.push(k);
                path.push("[]");
                let r = merge_list(
                    kind,
                    lists,
                    path,
                    strategy,
                    orig_list,
                    pl,
                    p.get(&format!("{SET_ORDER}{k}")),
                );
                path.truncate(path.len() - 2);
                Some(Value::Array(r?))
            }
            (_, Value::Object(pv)) => {
                // Nothing to merge into: the patch value, minus directives.
                match pv.get(DIRECTIVE).and_then(Value::as_str) {
                    Some("delete") => None,
                    _ => Some(Value::Object(strip_directives(pv))),
                }
            }
            (_, v) => Some(v.clone()),
        };
        if let Some(m) = merged {
            o.insert(k.clone(), m);
        }
    }
    // A `$setElementOrder` for a list the patch does not touch still reorders it.
    for (k, order) in p {
        if let Some(field) = k.strip_prefix(SET_ORDER) {
            if !p.contains_key(field) {
                if let Some(Value::Array(list)) = o.remove(field) {
                    let strategy = list_strategy(kind, path, field, lists);
                    o.insert(
                        field.to_string(),
                        Value::Array(reorder(list, order, strategy)),
                    );
                }
            }
        }
    }
    Ok(Some(o))
}

fn strip_directives(m: &Map<String, Value>) -> Map<String, Value> {
    m.iter()
        .filter(|(k, _)| !k.starts_with('$'))
        .map(|(k, v)| {
            let v = match v {
                Value::Object(inner) => Value::Object(strip_directives(inner)),
                Value::Array(items) => Value::Array(
                    items
                        .iter()
                        .filter(|i| i.get(DIRECTIVE).is_none())
                        .map(|i| {
                            i.as_object()
                                .map_or_else(|| i.clone(), |m| Value::Object(strip_directives(m)))
                        })
                        .collect(),
                ),
                other => other.clone(),
            };
            (k.clone(), v)
        })
        .collect()
}

fn merge_list<'a>(
    kind: &str,
    lists: Lists,
    path: &mut Vec<&'a str>,
    strategy: ListStrategy,
    orig: Vec<Value>,
    patch: &'a [Value],
    order: Option<&Value>,
) -> Result<Vec<Value>, PatchError> {
    let merged = match strategy {
        ListStrategy::Atomic => patch
            .iter()
            .map(|v| {
                v.as_object()
                    .map_or_else(|| v.clone(), |m| Value::Object(strip_directives(m)))
            })
            .collect(),
        ListStrategy::Set => {
            if patch
                .iter()
                .any(|v| v.get(DIRECTIVE).and_then(Value::as_str) == Some("replace"))
            {
                patch
                    .iter()
                    .filter(|v| v.get(DIRECTIVE).is_none())
                    .cloned()
                    .collect()
            } else {
                let mut seen: HashSet<String> = orig.iter().map(Value::to_string).collect();
                let mut out = orig;
                for v in patch {
                    if seen.insert(v.to_string()) {
                        out.push(v.clone());
                    }
                }
                out
            }
        }
        ListStrategy::Keyed(keys) => {
            if patch
                .iter()
                .any(|v| v.get(DIRECTIVE).and_then(Value::as_str) == Some("replace"))
            {
                return Ok(patch
                    .iter()
                    .filter(|v| v.get(DIRECTIVE).is_none())
                    .map(|v| {
                        v.as_object()
                            .map_or_else(|| v.clone(), |m| Value::Object(strip_directives(m)))
                    })
                    .collect());
            }
            // Items by key, so a patch of n items into a list of m costs n + m.
            let mut out: Vec<Option<Value>> = orig.into_iter().map(Some).collect();
            let mut index: HashMap<String, usize> = HashMap::with_capacity(out.len());
            for (i, o) in out.iter().enumerate() {
                if let Some(Ok(id)) = o.as_ref().map(|o| key_id(keys, o)) {
                    index.entry(id).or_insert(i);
                }
            }
            for item in patch {
                let Some(pm) = item.as_object() else {
                    let names: Vec<&str> = keys.iter().map(|k| k.field).collect();
                    return Err(PatchError::Invalid(format!(
                        "expected a map in list with merge keys {names:?}, found {item}"
                    )));
                };
                let id = key_id(keys, item).map_err(|key| {
                    PatchError::Invalid(match lists {
                        Lists::Patch => {
                            format!("map: {item} does not contain declared merge key: {key}")
                        }
                        Lists::Apply => format!(
                            "associative list with keys has an element that omits key field \
                             {key:?} (and doesn't have default value)"
                        ),
                    })
                })?;
                let pos = index.get(&id).copied();
                if pm.get(DIRECTIVE).and_then(Value::as_str) == Some("delete") {
                    if let Some(i) = pos {
                        out[i] = None;
                        index.remove(&id);
                    }
                    continue;
                }
                match pos {
                    Some(i) => {
                        let base = match out[i].take() {
                            Some(Value::Object(m)) => m,
                            _ => Map::new(),
                        };
                        match merge_map(kind, lists, path, base, pm)? {
                            Some(m) => out[i] = Some(Value::Object(m)),
                            None => {
                                index.remove(&id);
                            }
                        }
                    }
                    None => {
                        index.insert(id, out.len());
                        out.push(Some(Value::Object(strip_directives(pm))));
                    }
                }
            }
            out.into_iter().flatten().collect()
        }
    };
    Ok(match order {
        Some(order) => reorder(merged, order, strategy),
        None => merged,
    })
}

/// Orders `list` as `$setElementOrder` says; items it does not name keep their place after.
fn reorder(list: Vec<Value>, order: &Value, strategy: ListStrategy) -> Vec<Value> {
    let Some(order) = order.as_array() else {
        return list;
    };
    let id = |v: &Value| -> String {
        match strategy {
            ListStrategy::Keyed(keys) => key_id(keys, v).unwrap_or_default(),
            _ => v.to_string(),
        }
    };
    let mut ranks: HashMap<String, usize> = HashMap::with_capacity(order.len());
    for (rank, o) in order.iter().enumerate() {
        ranks.entry(id(o)).or_insert(rank);
    }
    let mut indexed: Vec<(usize, usize, Value)> = list
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let rank = ranks.get(&id(&v)).copied().unwrap_or(order.len());
            (rank, i, v)
        })
        .collect();
    indexed.sort_by_key(|(rank, i, _)| (*rank, *i));
    indexed.into_iter().map(|(_, _, v)| v).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn containers_merge_by_name_and_keep_other_fields() {
        let orig = json!({"metadata": {"labels": {"app": "web", "tier": "a"}}, "spec": {"template": {"spec": {"containers": [
            {"name": "web", "image": "nginx:1", "ports": [{"containerPort": 80, "protocol": "TCP"}]},
            {"name": "side", "image": "busybox"}]}}}});
        let patch = json!({"metadata": {"labels": {"tier": null, "new": "x"}}, "spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "web"}, {"name": "side"}],
            "containers": [{"name": "web", "image": "nginx:2"}]}}}});
        let out = strategic_merge("Deployment", &orig, &patch).unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"app": "web", "new": "x"}));
        let cs = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(cs[0]["image"], "nginx:2");
        assert_eq!(cs[0]["ports"][0]["containerPort"], 80);
        assert_eq!(cs[1]["name"], "side");
    }

    #[test]
    fn directives() {
        let orig = json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}],
            "volumes": [{"name": "v", "emptyDir": {}}]}, "metadata": {"finalizers": ["f1", "f2"]}});
        let patch = json!({"spec": {"containers": [{"name": "a", "$patch": "delete"}],
            "volumes": [{"name": "v", "$retainKeys": ["name", "hostPath"], "hostPath": {"path": "/d"}}]},
            "metadata": {"$deleteFromPrimitiveList/finalizers": ["f1"], "finalizers": ["f3"]}});
        let out = strategic_merge("Pod", &orig, &patch).unwrap();
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "b", "image": "y"}])
        );
        assert_eq!(
            out["spec"]["volumes"],
            json!([{"name": "v", "hostPath": {"path": "/d"}}])
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["f2", "f3"]));
        let replace = json!({"spec": {"$patch": "replace", "containers": [{"name": "z"}]}});
        let out = strategic_merge("Pod", &orig, &replace).unwrap();
        assert_eq!(out["spec"], json!({"containers": [{"name": "z"}]}));
    }

    #[test]
    fn atomic_lists_are_replaced_and_ports_merge_by_key() {
        let orig = json!({"spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}], "externalIPs": ["1.1.1.1"]}});
        let patch = json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}], "externalIPs": ["2.2.2.2"]}});
        let out = strategic_merge("Service", &orig, &patch).unwrap();
        assert_eq!(out["spec"]["ports"].as_array().unwrap().len(), 2);
        assert_eq!(out["spec"]["ports"][0]["targetPort"], 8080);
        assert_eq!(out["spec"]["externalIPs"], json!(["2.2.2.2"]));
    }

    /// What kube-apiserver answers for the same patches: lists merge as each type's schema
    /// declares, whatever kind embeds the type, and lists it says nothing about are atomic.
    #[test]
    fn lists_merge_as_kube_schemas_declare_them() {
        let pod = json!({"metadata": {"finalizers": ["a", "b"]}, "spec": {
            "containers": [{"name": "web", "image": "nginx:1",
                "ports": [{"containerPort": 80, "protocol": "TCP"}], "env": [{"name": "A", "value": "1"}]}],
            "tolerations": [{"key": "k1", "operator": "Exists"}, {"key": "k2", "operator": "Exists"}]}});
        let patch = json!({"metadata": {"finalizers": ["b", "c"]}, "spec": {
            "containers": [
                {"name": "web", "ports": [{"containerPort": 80, "name": "http"}, {"containerPort": 443}],
                 "env": [{"name": "B", "value": "2"}]},
                {"name": "side", "image": "busybox"}],
            "tolerations": [{"key": "k3", "operator": "Exists"}]}});
        let out = strategic_merge("Pod", &pod, &patch).unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b", "c"]));
        let web = &out["spec"]["containers"][0];
        assert_eq!(web["image"], "nginx:1");
        assert_eq!(
            web["ports"],
            json!([{"containerPort": 80, "protocol": "TCP", "name": "http"}, {"containerPort": 443}])
        );
        assert_eq!(
            web["env"],
            json!([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}])
        );
        assert_eq!(out["spec"]["containers"][1]["name"], "side");
        assert_eq!(
            out["spec"]["tolerations"],
            json!([{"key": "k3", "operator": "Exists"}])
        );

        // The same PodSpec, three levels down in a CronJob.
        let cj = json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": {
            "containers": [{"name": "c", "env": [{"name": "A", "value": "1"}]}]}}}}}});
        let patch = json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": {
            "containers": [{"name": "c", "env": [{"name": "A", "$patch": "delete"}, {"name": "Z", "value": "9"}]}]}}}}}});
        let out = strategic_merge("CronJob", &cj, &patch).unwrap();
        assert_eq!(
            out.pointer("/spec/jobTemplate/spec/template/spec/containers/0/env")
                .unwrap(),
            &json!([{"name": "Z", "value": "9"}])
        );

        // Node taints are atomic in kube (`kubectl taint k-` sends the remaining list);
        // addresses merge by type.
        let node = json!({"spec": {"taints": [{"key": "a", "effect": "NoSchedule"}, {"key": "b", "effect": "NoSchedule"}]},
            "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.1"}]}});
        let patch = json!({"spec": {"taints": [{"key": "b", "effect": "NoSchedule"}]},
            "status": {"addresses": [{"type": "Hostname", "address": "n1"}]}});
        let out = strategic_merge("Node", &node, &patch).unwrap();
        assert_eq!(
            out["spec"]["taints"],
            json!([{"key": "b", "effect": "NoSchedule"}])
        );
        assert_eq!(out["status"]["addresses"].as_array().unwrap().len(), 2);

        let sa = json!({"secrets": [{"name": "s1"}]});
        let out =
            strategic_merge("ServiceAccount", &sa, &json!({"secrets": [{"name": "s2"}]})).unwrap();
        assert_eq!(out["secrets"], json!([{"name": "s1"}, {"name": "s2"}]));

        // `$patch: replace` inside a keyed list replaces it.
        let patch = json!({"spec": {"containers": [{"$patch": "replace"}, {"name": "only"}]}});
        let out = strategic_merge("Pod", &pod, &patch).unwrap();
        assert_eq!(out["spec"]["containers"], json!([{"name": "only"}]));

        // A kind the server does not know has only atomic lists.
        let out = strategic_merge(
            "Widget",
            &pod,
            &json!({"spec": {"containers": [{"name": "x"}]}}),
        )
        .unwrap();
        assert_eq!(out["spec"]["containers"], json!([{"name": "x"}]));
    }

    /// A strategic merge patch keys container ports by `containerPort` alone (kube's known
    /// collapse of 53/TCP and 53/UDP); the apply merge keys them by port and protocol.
    #[test]
    fn ports_merge_by_the_patch_key_in_a_patch_and_by_all_keys_in_an_apply() {
        let tcp = json!({"spec": {"containers": [{"name": "c",
            "ports": [{"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"}]}]}});
        let udp = json!({"spec": {"containers": [{"name": "c",
            "ports": [{"name": "dns-udp", "containerPort": 53, "protocol": "UDP"}]}]}});
        let ports = |o: &Value| o["spec"]["containers"][0]["ports"].clone();
        let patched = strategic_merge("Pod", &tcp, &udp).unwrap();
        assert_eq!(
            ports(&patched),
            json!([{"name": "dns-udp", "containerPort": 53, "protocol": "UDP"}])
        );
        let applied = apply_merge("Pod", &tcp, &udp).unwrap();
        assert_eq!(
            ports(&applied),
            json!([{"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                {"name": "dns-udp", "containerPort": 53, "protocol": "UDP"}])
        );
        // An omitted protocol is its default, TCP.
        let bare = json!({"spec": {"containers": [{"name": "c",
            "ports": [{"name": "dns", "containerPort": 53}]}]}});
        assert_eq!(
            ports(&apply_merge("Pod", &tcp, &bare).unwrap()),
            json!([{"name": "dns", "containerPort": 53, "protocol": "TCP"}])
        );
        // Apply merges by the list type: `hostIPs` are atomic to it, keyed by `ip` in a patch.
        let pod = json!({"status": {"hostIPs": [{"ip": "10.0.0.1"}]}});
        let more = json!({"status": {"hostIPs": [{"ip": "10.0.0.2"}]}});
        assert_eq!(
            strategic_merge("Pod", &pod, &more).unwrap()["status"]["hostIPs"],
            json!([{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}])
        );
        assert_eq!(
            apply_merge("Pod", &pod, &more).unwrap()["status"]["hostIPs"],
            json!([{"ip": "10.0.0.2"}])
        );
    }

    #[test]
    fn json_and_merge_patches() {
        let orig = json!({"spec": {"replicas": 1, "paused": true}});
        assert_eq!(
            merge_patch(&orig, &json!({"spec": {"replicas": 3, "paused": null}})).unwrap(),
            json!({"spec": {"replicas": 3}})
        );
        let p = json!([{"op": "replace", "path": "/spec/replicas", "value": 5}]);
        assert_eq!(json_patch(&orig, &p).unwrap()["spec"]["replicas"], 5);
        assert!(json_patch(
            &orig,
            &json!([{"op": "test", "path": "/spec/replicas", "value": 9}])
        )
        .is_err());
    }
}

#[cfg(test)]
pub(crate) mod scale_tests {
    use super::*;
    use serde_json::json;

    /// A pod with `n` volumes.
    pub(crate) fn pod_with_volumes(n: usize) -> Value {
        let volumes: Vec<Value> = (0..n)
            .map(|i| json!({"name": format!("v{i}"), "emptyDir": {}}))
            .collect();
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "x"}], "volumes": volumes}})
    }

    /// Regression: keyed lists merged in quadratic time (30,000 volumes took over 6 s,
    /// stalling the server). Merging them is linear now: about half a second in a debug
    /// build (quadratic was minutes there).
    #[test]
    fn keyed_lists_merge_in_linear_time() {
        let n = 30_000;
        let orig = pod_with_volumes(n);
        let mut patch = pod_with_volumes(n);
        patch["spec"]["$setElementOrder/volumes"] = patch["spec"]["volumes"].clone();
        let t = std::time::Instant::now();
        let out = strategic_merge("Pod", &orig, &patch).unwrap();
        let took = t.elapsed();
        assert_eq!(out["spec"]["volumes"].as_array().unwrap().len(), n);
        assert!(took < std::time::Duration::from_secs(10), "took {took:?}");
    }
}
