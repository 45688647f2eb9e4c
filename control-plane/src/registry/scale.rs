//! The `autoscaling/v1 Scale` subresource: a scalable object's replicas, read and set
//! through one small kind whatever the object's own (kube's `ScaleREST` of deployments,
//! replica sets and replication controllers).

use serde_json::{json, Value};

use super::validation::{ErrorType, Errors};
use super::ResourceType;

/// The Scale view of `obj`, an object of `rt`.
pub fn scale_of(rt: &ResourceType, obj: &Value) -> Value {
    let m = obj
        .get("metadata")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut scale = json!({
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {"name": m.get("name"), "uid": m.get("uid"), "resourceVersion": m.get("resourceVersion"), "creationTimestamp": m.get("creationTimestamp")},
        "spec": {"replicas": obj.pointer("/spec/replicas").cloned().unwrap_or(json!(0))},
        "status": {"replicas": obj.pointer("/status/replicas").cloned().unwrap_or(json!(0)), "selector": selector(obj)},
    });
    if rt.namespaced {
        scale["metadata"]["namespace"] = m.get("namespace").cloned().unwrap_or(Value::Null);
    }
    scale
}

/// `status.selector`: the object's selector as a label selector string. A
/// ReplicationController's is a plain map of labels.
fn selector(obj: &Value) -> String {
    match obj.pointer("/spec/selector") {
        Some(Value::Object(sel))
            if sel.contains_key("matchLabels") || sel.contains_key("matchExpressions") =>
        {
            serde_json::from_value::<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>(
                Value::Object(sel.clone()),
            )
            .map(|s| crate::selectors::label_selector_string(&s))
            .unwrap_or_default()
        }
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(","),
        _ => String::new(),
    }
}

/// `old` with the replicas `scale` asks for. The Scale's resourceVersion, when set, pins
/// the write to that version of the object. `Err`: the Scale's field errors.
pub fn apply_scale(old: &Value, scale: &Value) -> Result<Value, Errors> {
    let replicas = scale
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if replicas < 0 {
        let mut errs = Errors::default();
        errs.push(
            "spec.replicas",
            ErrorType::Invalid(replicas.to_string()),
            "must be greater than or equal to 0",
        );
        return Err(errs);
    }
    let mut new = old.clone();
    new["spec"]["replicas"] = json!(replicas);
    if let Some(rv) = scale
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    {
        if !new["metadata"].is_object() {
            new["metadata"] = json!({});
        }
        new["metadata"]["resourceVersion"] = json!(rv);
    }
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;

    fn deployment() -> Value {
        json!({"metadata": {"name": "web", "namespace": "default", "uid": "u", "resourceVersion": "7"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}},
            "status": {"replicas": 1}})
    }

    #[test]
    fn the_scale_view_carries_replicas_and_the_selector() {
        let registry = Registry::new();
        let d = registry.find("apps", "v1", "deployments").unwrap();
        let s = scale_of(d, &deployment());
        assert_eq!(s["spec"]["replicas"], 2);
        assert_eq!(s["status"], json!({"replicas": 1, "selector": "app=web"}));
        assert_eq!(s["metadata"]["namespace"], "default");
        let rc = json!({"spec": {"selector": {"app": "web", "tier": "a"}}});
        assert_eq!(selector(&rc), "app=web,tier=a");
    }

    #[test]
    fn applying_a_scale_sets_replicas_and_pins_the_version() {
        let scale = json!({"metadata": {"resourceVersion": "7"}, "spec": {"replicas": 5}});
        let new = apply_scale(&deployment(), &scale).unwrap();
        assert_eq!(new["spec"]["replicas"], 5);
        assert_eq!(new["metadata"]["resourceVersion"], "7");
        let errs = apply_scale(&deployment(), &json!({"spec": {"replicas": -1}})).unwrap_err();
        assert_eq!(
            errs.0[0].to_string(),
            "spec.replicas: Invalid value: -1: must be greater than or equal to 0"
        );
    }
}
