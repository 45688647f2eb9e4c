//! API discovery: the aggregated form (`apidiscovery.k8s.io/v2`) and the legacy
//! `APIVersions` / `APIGroupList` / `APIResourceList` documents.

use serde_json::{json, Value};

use crate::registry::{Registry, ResourceType};

pub const AGGREGATED_CONTENT_TYPE: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// The kind and verbs of a subresource.
fn subresource_info(rt: &ResourceType, sub: &str) -> (Value, &'static [&'static str]) {
    let own = json!({"group": rt.group, "version": rt.version, "kind": rt.kind});
    let gvk = |g: &str, v: &str, k: &str| json!({"group": g, "version": v, "kind": k});
    match sub {
        "status" => (own, &["get", "patch", "update"]),
        "scale" => (
            gvk("autoscaling", "v1", "Scale"),
            &["get", "patch", "update"],
        ),
        "binding" => (gvk("", "v1", "Binding"), &["create"]),
        "log" => (own, &["get"]),
        "exec" => (gvk("", "v1", "PodExecOptions"), &["create", "get"]),
        "attach" => (gvk("", "v1", "PodAttachOptions"), &["create", "get"]),
        "portforward" => (gvk("", "v1", "PodPortForwardOptions"), &["create", "get"]),
        "eviction" => (gvk("policy", "v1", "Eviction"), &["create"]),
        "finalize" => (own, &["update"]),
        "token" => (
            gvk("authentication.k8s.io", "v1", "TokenRequest"),
            &["create"],
        ),
        _ => (own, &["get"]),
    }
}

fn scope(rt: &ResourceType) -> &'static str {
    if rt.namespaced {
        "Namespaced"
    } else {
        "Cluster"
    }
}

fn group_item(registry: &Registry, group: &str) -> Value {
    let versions: Vec<&str> = registry
        .group_versions()
        .into_iter()
        .filter(|(g, _)| *g == group)
        .map(|(_, v)| v)
        .collect();
    let versions: Vec<Value> = versions
        .into_iter()
        .map(|v| {
            let resources: Vec<Value> = registry
                .resources
                .iter()
                .filter(|r| r.group == group && r.version == v)
                .map(|r| {
                    let subs: Vec<Value> = r
                        .subresources
                        .iter()
                        .map(|s| {
                            let (kind, verbs) = subresource_info(r, s);
                            json!({"subresource": s, "responseKind": kind, "verbs": verbs})
                        })
                        .collect();
                    let mut item = json!({
                        "resource": r.plural, "singularResource": r.singular, "scope": scope(r),
                        "responseKind": {"group": r.group, "version": r.version, "kind": r.kind}, "verbs": VERBS,
                    });
                    if !r.short_names.is_empty() {
                        item["shortNames"] = json!(r.short_names);
                    }
                    if !r.categories.is_empty() {
                        item["categories"] = json!(r.categories);
                    }
                    if !subs.is_empty() {
                        item["subresources"] = Value::Array(subs);
                    }
                    item
                })
                .collect();
            json!({"version": v, "resources": resources, "freshness": "Current"})
        })
        .collect();
    let mut meta = json!({"creationTimestamp": null});
    if !group.is_empty() {
        meta["name"] = json!(group);
    }
    json!({"metadata": meta, "versions": versions})
}

fn groups(registry: &Registry) -> Vec<&'static str> {
    let mut gs: Vec<&str> = Vec::new();
    for (g, _) in registry.group_versions() {
        if !g.is_empty() && !gs.contains(&g) {
            gs.push(g);
        }
    }
    gs
}

/// `/api` (legacy = true) or `/apis` in the aggregated form.
pub fn aggregated(registry: &Registry, legacy: bool) -> Value {
    let items: Vec<Value> = if legacy {
        vec![group_item(registry, "")]
    } else {
        groups(registry)
            .into_iter()
            .map(|g| group_item(registry, g))
            .collect()
    };
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

pub fn api_versions(server_address: &str) -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]})
}

fn api_group(registry: &Registry, group: &str) -> Value {
    let versions: Vec<Value> = registry
        .group_versions()
        .into_iter()
        .filter(|(g, _)| *g == group)
        .map(|(g, v)| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    json!({"name": group, "versions": versions, "preferredVersion": versions.first().cloned().unwrap_or(Value::Null)})
}

pub fn group_list(registry: &Registry) -> Value {
    let groups: Vec<Value> = groups(registry)
        .into_iter()
        .map(|g| api_group(registry, g))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/<group>`; `None` when the group is not served.
pub fn group(registry: &Registry, group: &str) -> Option<Value> {
    groups(registry).contains(&group).then(|| {
        let mut g = api_group(registry, group);
        g["kind"] = json!("APIGroup");
        g["apiVersion"] = json!("v1");
        g
    })
}

/// `/api/v1` or `/apis/<group>/<version>`; `None` when not served.
pub fn resource_list(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let rts: Vec<&ResourceType> = registry
        .resources
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if rts.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for r in rts {
        let mut item = json!({"name": r.plural, "singularName": r.singular, "namespaced": r.namespaced, "kind": r.kind, "verbs": VERBS});
        if !r.short_names.is_empty() {
            item["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            item["categories"] = json!(r.categories);
        }
        resources.push(item);
        for s in r.subresources {
            let (kind, verbs) = subresource_info(r, s);
            let mut sub = json!({"name": format!("{}/{s}", r.plural), "singularName": "", "namespaced": r.namespaced, "kind": kind["kind"], "verbs": verbs});
            if kind["group"] != json!(r.group) {
                sub["group"] = kind["group"].clone();
                sub["version"] = kind["version"].clone();
            }
            resources.push(sub);
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}
