//! What the workload controllers read from pods and owner references, as kube's
//! `controller_utils` does: activity, readiness, availability, controller references, pods
//! from templates and the order in which surplus pods are deleted.

use std::cmp::Ordering;
use std::collections::HashMap;

use serde_json::{json, Map, Value};

pub fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

pub fn is_terminating(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null())
}

pub fn is_terminal(pod: &Value) -> bool {
    matches!(str_at(pod, "/status/phase"), "Succeeded" | "Failed")
}

/// Neither finished nor being deleted: a pod that counts as a replica.
pub fn is_active(pod: &Value) -> bool {
    !is_terminal(pod) && !is_terminating(pod)
}

/// The condition of type `type_` in an object's `status.conditions` (a pod's, a node's, a
/// Job's...).
pub fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c["type"] == type_)
}

/// That condition, when its status is True.
pub fn condition_true<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    condition(obj, type_).filter(|c| c["status"] == "True")
}

/// Ready=True (a pod's or a node's).
pub fn is_ready(obj: &Value) -> bool {
    condition_true(obj, "Ready").is_some()
}

/// Since when the pod is ready (`None` if it is not).
fn ready_since(pod: &Value) -> Option<jiff::Timestamp> {
    let c = condition_true(pod, "Ready")?;
    c["lastTransitionTime"].as_str()?.parse().ok()
}

/// Ready for at least `min_ready_seconds` at `now`.
pub fn is_available(pod: &Value, min_ready_seconds: i64, now: jiff::Timestamp) -> bool {
    if !is_ready(pod) {
        return false;
    }
    if min_ready_seconds <= 0 {
        return true;
    }
    ready_since(pod).is_some_and(|t| {
        now.duration_since(t) >= jiff::SignedDuration::from_secs(min_ready_seconds)
    })
}

/// The owner reference marked `controller: true`, if any.
pub fn controller_ref(obj: &Value) -> Option<&Value> {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)?
        .iter()
        .find(|r| r["controller"] == true)
}

/// Whether `obj`'s controller is the object with this uid.
pub fn controlled_by(obj: &Value, uid: &str) -> bool {
    controller_ref(obj).is_some_and(|r| r["uid"] == uid)
}

/// The controller reference an owner puts on what it creates.
pub fn owner_ref(api_version: &str, kind: &str, owner: &Value) -> Value {
    json!({
        "apiVersion": api_version, "kind": kind,
        "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
        "controller": true, "blockOwnerDeletion": true,
    })
}

/// A pod made from a template (labels, annotations, finalizers and spec), named
/// `prefix` plus a random suffix, controlled by `owner`.
pub fn from_template(template: &Value, prefix: &str, owner: Value) -> Value {
    let mut meta = Map::new();
    for f in ["labels", "annotations", "finalizers"] {
        if let Some(v) = template.pointer(&format!("/metadata/{f}")) {
            meta.insert(f.into(), v.clone());
        }
    }
    meta.insert("generateName".into(), json!(prefix));
    meta.insert("ownerReferences".into(), json!([owner]));
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": meta,
        "spec": template.get("spec").cloned().unwrap_or_else(|| json!({})),
    })
}

/// `generateName` for pods of `owner`: its name and a dash, cut as Kubernetes cuts it
/// (the name plus a 5-character suffix must stay within 63 characters).
pub fn pod_name_prefix(owner: &str) -> String {
    let mut p = format!("{owner}-");
    if p.len() > 58 {
        p.truncate(58);
    }
    p
}

fn restarts(pod: &Value) -> i64 {
    pod.pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .map_or(0, |cs| {
            cs.iter()
                .map(|c| c["restartCount"].as_i64().unwrap_or(0))
                .sum()
        })
}

fn phase_rank(pod: &Value) -> u8 {
    match str_at(pod, "/status/phase") {
        "Pending" | "" => 0,
        "Unknown" => 1,
        "Running" => 2,
        _ => 3,
    }
}

fn deletion_cost(pod: &Value) -> i64 {
    str_at(
        pod,
        "/metadata/annotations/controller.kubernetes.io~1pod-deletion-cost",
    )
    .parse()
    .unwrap_or(0)
}

/// Orders pods for deletion as kube's `ActivePodsWithRanks`, first to delete first:
/// unscheduled before scheduled, Pending before Unknown before Running, not ready before
/// ready, lower `pod-deletion-cost` first, pods doubled up on a node (counting `related`
/// pods, e.g. of sibling ReplicaSets) first, ready for less time first, more restarts
/// first, newer first.
pub fn deletion_order(pods: &mut [&Value], related: &[&Value]) {
    let mut per_node: HashMap<&str, usize> = HashMap::new();
    for p in related.iter().filter(|p| is_active(p)) {
        *per_node.entry(str_at(p, "/spec/nodeName")).or_default() += 1;
    }
    let rank = |p: &Value| {
        per_node
            .get(str_at(p, "/spec/nodeName"))
            .copied()
            .unwrap_or(0)
    };
    let created = |p: &Value| {
        str_at(p, "/metadata/creationTimestamp")
            .parse::<jiff::Timestamp>()
            .ok()
    };
    pods.sort_by(|a, b| {
        let assigned = |p: &Value| !str_at(p, "/spec/nodeName").is_empty();
        assigned(a)
            .cmp(&assigned(b))
            .then_with(|| phase_rank(a).cmp(&phase_rank(b)))
            .then_with(|| is_ready(a).cmp(&is_ready(b)))
            .then_with(|| deletion_cost(a).cmp(&deletion_cost(b)))
            .then_with(|| rank(b).cmp(&rank(a)))
            .then_with(|| match (ready_since(a), ready_since(b)) {
                // Later readiness (less time ready) first.
                (Some(x), Some(y)) => y.cmp(&x),
                _ => Ordering::Equal,
            })
            .then_with(|| restarts(b).cmp(&restarts(a)))
            .then_with(|| match (created(a), created(b)) {
                (None, Some(_)) => Ordering::Less,
                (Some(_), None) => Ordering::Greater,
                (x, y) => y.cmp(&x),
            })
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, node: &str, phase: &str, ready: Option<&str>, created: &str) -> Value {
        let mut p = json!({"metadata": {"name": name, "creationTimestamp": created},
            "spec": {"nodeName": node}, "status": {"phase": phase}});
        if let Some(t) = ready {
            p["status"]["conditions"] =
                json!([{"type": "Ready", "status": "True", "lastTransitionTime": t}]);
        }
        p
    }

    fn order(pods: &[Value], related: &[Value]) -> Vec<String> {
        let mut refs: Vec<&Value> = pods.iter().collect();
        let related: Vec<&Value> = related.iter().collect();
        deletion_order(&mut refs, &related);
        refs.iter()
            .map(|p| str_at(p, "/metadata/name").to_string())
            .collect()
    }

    #[test]
    fn surplus_pods_are_deleted_in_kube_controller_managers_order() {
        let t = "2026-01-01T00:00:00Z";
        let pods = [
            pod(
                "running-old",
                "n1",
                "Running",
                Some("2026-01-01T00:00:10Z"),
                t,
            ),
            pod("unscheduled", "", "Pending", None, t),
            pod("pending", "n1", "Pending", None, t),
            pod("not-ready", "n2", "Running", None, t),
            pod(
                "ready-recently",
                "n2",
                "Running",
                Some("2026-01-01T00:05:00Z"),
                t,
            ),
        ];
        assert_eq!(
            order(&pods, &pods),
            [
                "unscheduled",
                "pending",
                "not-ready",
                "ready-recently",
                "running-old"
            ]
        );
        // Equal otherwise: the pod sharing its node with more related pods goes first,
        // then the newer one.
        let a = pod("alone", "n1", "Running", Some(t), t);
        let b = pod("crowded", "n2", "Running", Some(t), t);
        let c = pod("neighbour", "n2", "Running", Some(t), t);
        assert_eq!(
            order(&[a.clone(), b.clone()], &[a.clone(), b.clone(), c]),
            ["crowded", "alone"]
        );
        let newer = pod("newer", "n1", "Running", Some(t), "2026-02-01T00:00:00Z");
        assert_eq!(order(&[a.clone(), newer.clone()], &[]), ["newer", "alone"]);
        let mut costly = newer.clone();
        costly["metadata"]["annotations"] =
            json!({"controller.kubernetes.io/pod-deletion-cost": "100"});
        assert_eq!(order(&[costly, a], &[]), ["alone", "newer"]);
    }

    #[test]
    fn availability_waits_min_ready_seconds() {
        let p = pod(
            "p",
            "n",
            "Running",
            Some("2026-01-01T00:00:00Z"),
            "2026-01-01T00:00:00Z",
        );
        let at = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
        assert!(is_available(&p, 0, at("2026-01-01T00:00:00Z")));
        assert!(!is_available(&p, 10, at("2026-01-01T00:00:09Z")));
        assert!(is_available(&p, 10, at("2026-01-01T00:00:10Z")));
        assert!(!is_available(
            &pod("q", "n", "Running", None, ""),
            0,
            at("2026-01-01T00:00:00Z")
        ));
    }

    #[test]
    fn pods_from_templates_carry_labels_and_the_controller_reference() {
        let owner = json!({"metadata": {"name": "web", "uid": "u1"}});
        let tpl = json!({"metadata": {"labels": {"app": "web"}, "annotations": {"a": "b"}}, "spec": {"containers": []}});
        let p = from_template(
            &tpl,
            &pod_name_prefix("web"),
            owner_ref("apps/v1", "ReplicaSet", &owner),
        );
        assert_eq!(p["metadata"]["generateName"], "web-");
        assert_eq!(p["metadata"]["labels"]["app"], "web");
        assert!(controlled_by(&p, "u1"));
        assert_eq!(pod_name_prefix(&"x".repeat(70)).len(), 58);
    }
}
