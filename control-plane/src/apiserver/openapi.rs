//! `/openapi/v3`: one document per served group-version. Every operation carries
//! `x-kubernetes-group-version-kind` and the query parameters the server honours, which is
//! what kubectl checks before it leaves field validation to the server.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use serde_json::{json, Map, Value};

use crate::registry::{Registry, ResourceType};

fn param(name: &str, ty: &str, desc: &str) -> Value {
    json!({"name": name, "in": "query", "description": desc, "schema": {"type": ty, "uniqueItems": true}})
}

fn path_param(name: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": format!("{name} of the object"), "schema": {"type": "string", "uniqueItems": true}})
}

fn schema_name(rt: &ResourceType) -> String {
    let group = match rt.group {
        "" => "core".to_string(),
        g => g.split('.').next().unwrap_or(g).to_string(),
    };
    format!("io.k8s.api.{group}.{}.{}", rt.version, rt.kind)
}

fn write_params() -> Vec<Value> {
    vec![
        param("dryRun", "string", "When present, indicates that modifications should not be persisted."),
        param("fieldManager", "string", "fieldManager is a name associated with the actor or entity that is making these changes."),
        param("fieldValidation", "string", "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields. Valid values are: Ignore, Warn (default), Strict."),
    ]
}

fn list_params() -> Vec<Value> {
    [
        "allowWatchBookmarks",
        "continue",
        "fieldSelector",
        "labelSelector",
        "limit",
        "resourceVersion",
        "resourceVersionMatch",
        "sendInitialEvents",
        "timeoutSeconds",
        "watch",
    ]
    .iter()
    .map(|p| {
        param(
            p,
            if matches!(*p, "limit" | "timeoutSeconds") {
                "integer"
            } else if matches!(*p, "watch" | "allowWatchBookmarks" | "sendInitialEvents") {
                "boolean"
            } else {
                "string"
            },
            p,
        )
    })
    .collect()
}

fn op(
    rt: &ResourceType,
    action: &str,
    kind_ref: &str,
    params: Vec<Value>,
    body: Option<Vec<&str>>,
) -> Value {
    let ok = json!({"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{kind_ref}")}}}});
    let mut o = json!({
        "description": format!("{action} {}", rt.kind),
        "operationId": format!("{action}{}", rt.kind),
        "tags": [rt.group],
        "parameters": params,
        "responses": {"200": ok},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": rt.group, "version": rt.version, "kind": rt.kind},
    });
    if let Some(types) = body {
        let content: Map<String, Value> = types
            .into_iter()
            .map(|t| {
                (
                    t.to_string(),
                    json!({"schema": {"$ref": format!("#/components/schemas/{kind_ref}")}}),
                )
            })
            .collect();
        o["requestBody"] = json!({"required": true, "content": content});
    }
    o
}

/// The document for one group-version.
fn document(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let rts: Vec<&ResourceType> = registry
        .resources
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if rts.is_empty() {
        return None;
    }
    let base = if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    };
    let mut paths = BTreeMap::new();
    // The kinds' full schemas (what `kubectl explain` reads), with every type they use.
    let mut generator = schemars::generate::SchemaSettings::openapi3().into_generator();
    let mut kinds = Vec::new();
    for rt in &rts {
        rt.strategy.schema(&mut generator);
        kinds.push((schema_name(rt), rt));
    }
    generator.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta>();
    let mut schemas = generator.take_definitions(true);
    // k8s-openapi's schemas lack kube's list extensions, which kubectl's apply reads.
    crate::registry::lists::annotate(&mut schemas);
    for (name, rt) in kinds {
        if let Some(s) = schemas.get_mut(&name).and_then(Value::as_object_mut) {
            s.insert(
                "x-kubernetes-group-version-kind".into(),
                json!([{"group": rt.group, "version": rt.version, "kind": rt.kind}]),
            );
        }
    }
    for rt in rts {
        let name = schema_name(rt);
        let list = format!("{name}List");
        schemas.insert(list.clone(), json!({"type": "object", "description": format!("{}List is a list of {}.", rt.kind, rt.kind),
            "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                "metadata": {"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta"},
                "items": {"type": "array", "items": {"$ref": format!("#/components/schemas/{name}")}}},
            "x-kubernetes-group-version-kind": [{"group": rt.group, "version": rt.version, "kind": format!("{}List", rt.kind)}]}));
        let (collection, item) = if rt.namespaced {
            (
                format!("{base}/namespaces/{{namespace}}/{}", rt.plural),
                format!("{base}/namespaces/{{namespace}}/{}/{{name}}", rt.plural),
            )
        } else {
            (
                format!("{base}/{}", rt.plural),
                format!("{base}/{}/{{name}}", rt.plural),
            )
        };
        let mut scope_params = vec![];
        if rt.namespaced {
            scope_params.push(path_param("namespace"));
        }
        let mut item_params = scope_params.clone();
        item_params.push(path_param("name"));
        let patch_types = vec![
            "application/json-patch+json",
            "application/merge-patch+json",
            "application/apply-patch+yaml",
        ];
        paths.insert(
            collection,
            json!({
                "get": op(rt, "list", &list, list_params(), None),
                "post": op(rt, "post", &name, write_params(), Some(vec!["*/*"])),
                "delete": op(rt, "deletecollection", &name, list_params(), None),
                "parameters": scope_params,
            }),
        );
        let mut patch_params = write_params();
        patch_params.push(param(
            "force",
            "boolean",
            "Force is going to \"force\" Apply requests.",
        ));
        paths.insert(
            item,
            json!({
                "get": op(rt, "get", &name, vec![], None),
                "put": op(rt, "put", &name, write_params(), Some(vec!["*/*"])),
                "patch": op(rt, "patch", &name, patch_params.clone(), Some(patch_types.clone())),
                "delete": op(rt, "delete", &name, vec![param("gracePeriodSeconds", "integer", ""), param("propagationPolicy", "string", "")], None),
                "parameters": item_params.clone(),
            }),
        );
        for sub in rt
            .subresources
            .iter()
            .filter(|s| matches!(**s, "status" | "scale"))
        {
            let sub_path = if rt.namespaced {
                format!(
                    "{base}/namespaces/{{namespace}}/{}/{{name}}/{sub}",
                    rt.plural
                )
            } else {
                format!("{base}/{}/{{name}}/{sub}", rt.plural)
            };
            paths.insert(
                sub_path,
                json!({
                    "get": op(rt, "get", &name, vec![], None),
                    "put": op(rt, "put", &name, write_params(), Some(vec!["*/*"])),
                    "patch": op(rt, "patch", &name, patch_params.clone(), Some(patch_types.clone())),
                    "parameters": item_params.clone(),
                }),
            );
        }
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": super::KUBERNETES_VERSION},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

/// The path of a group-version's document, as the index names it.
fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// The served OpenAPI documents, made once at start: `/openapi/v3` (where each
/// group-version's document lives, with a content hash) and each document, serialized.
pub struct Documents {
    pub index: bytes::Bytes,
    docs: std::collections::HashMap<String, bytes::Bytes>,
}

impl Documents {
    pub fn new(registry: &Registry) -> Documents {
        // Patches read the list index; build it with the documents, not on the first patch.
        crate::registry::lists::index();
        let mut paths = Map::new();
        let mut docs = std::collections::HashMap::new();
        for (g, v) in registry.group_versions() {
            let doc = document(registry, g, v).unwrap_or(Value::Null).to_string();
            let mut h = std::collections::hash_map::DefaultHasher::new();
            doc.hash(&mut h);
            let p = gv_path(g, v);
            paths.insert(
                p.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={:016X}", h.finish())}),
            );
            docs.insert(p, doc.into());
        }
        Documents {
            index: json!({ "paths": paths }).to_string().into(),
            docs,
        }
    }

    /// The document at `path` (`api/v1`, `apis/apps/v1`, ...).
    pub fn get(&self, path: &str) -> Option<bytes::Bytes> {
        self.docs.get(path).cloned()
    }
}
