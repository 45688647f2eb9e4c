//! How list fields merge, from one source. Kubernetes declares it on its Go types
//! (`patchStrategy`/`patchMergeKey` tags, `+listType`/`+listMapKey` markers) and publishes it
//! in its OpenAPI schemas as `x-kubernetes-patch-strategy`, `x-kubernetes-patch-merge-key`,
//! `x-kubernetes-list-type` and `x-kubernetes-list-map-keys`. The schemas k8s-openapi
//! generates drop those extensions, so [`annotate`] puts them back (per type, as kube does)
//! into the schemas Skiff serves, and [`index`] reads them from those same schemas, once, into
//! a per-kind map from field path to [`ListSpec`]: strategic merge patch and server-side
//! apply look lists up there. A new kind built from types listed here needs no new row.

use std::collections::HashMap;
use std::sync::LazyLock;

use serde_json::{json, Map, Value};

/// How a list field is merged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListStrategy {
    /// Replaced whole (Kubernetes' atomic lists, and every list it says nothing about).
    Atomic,
    /// A set of primitives (e.g. `finalizers`).
    Set,
    /// Maps merged by a key field (e.g. containers by `name`).
    Keyed(&'static str),
}

/// A list field's behaviour under both merges, which kube lets differ (`hostIPs` merge by
/// `ip` in a strategic merge patch but are atomic to server-side apply).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListSpec {
    /// Strategic merge patch (`x-kubernetes-patch-strategy`/`-patch-merge-key`).
    pub patch: ListStrategy,
    /// Server-side apply (`x-kubernetes-list-type`/`-list-map-keys`); a map list is keyed
    /// by its first key.
    pub apply: ListStrategy,
}

/// kube's list type of a field (`+listType`, with `+listMapKey`s for a map).
#[derive(Clone, Copy)]
enum ListType {
    Atomic,
    Set,
    Map(&'static [&'static str]),
}

const CORE: &str = "io.k8s.api.core.v1.";
const APPS: &str = "io.k8s.api.apps.v1.";
const BATCH: &str = "io.k8s.api.batch.v1.";
const DISCOVERY: &str = "io.k8s.api.discovery.v1.";
const META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.";

use ListType::{Atomic, Map as Keys, Set};

type Decl = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    ListType,
);

/// Every list of the served API groups that kube does not leave atomic, with how it merges
/// (`k8s.io/api` and `k8s.io/apimachinery` types, v1.33), per schema-name prefix: the type,
/// the field, the patch strategy (`""`: none), the patch merge key (`""`: none) and the list
/// type. Keyed by type, not kind: a kind that embeds a `PodSpec` inherits its lists.
#[rustfmt::skip]
const DECLS: &[(&str, &[Decl])] = &[
    (META, &[
        ("ObjectMeta", "finalizers", "merge", "", Set),
        ("ObjectMeta", "ownerReferences", "merge", "uid", Keys(&["uid"])),
    ]),
    (CORE, &[
        ("Container", "ports", "merge", "containerPort", Keys(&["containerPort", "protocol"])),
        ("Container", "env", "merge", "name", Keys(&["name"])),
        ("Container", "volumeMounts", "merge", "mountPath", Keys(&["mountPath"])),
        ("Container", "volumeDevices", "merge", "devicePath", Keys(&["devicePath"])),
        ("EphemeralContainer", "ports", "merge", "containerPort", Keys(&["containerPort", "protocol"])),
        ("EphemeralContainer", "env", "merge", "name", Keys(&["name"])),
        ("EphemeralContainer", "volumeMounts", "merge", "mountPath", Keys(&["mountPath"])),
        ("EphemeralContainer", "volumeDevices", "merge", "devicePath", Keys(&["devicePath"])),
        ("ResourceRequirements", "claims", "", "", Keys(&["name"])),
        ("ContainerStatus", "volumeMounts", "merge", "mountPath", Keys(&["mountPath"])),
        ("ContainerStatus", "allocatedResourcesStatus", "merge", "name", Keys(&["name"])),
        ("ResourceStatus", "resources", "", "", Keys(&["resourceID"])),
        ("PodSpec", "volumes", "merge,retainKeys", "name", Keys(&["name"])),
        ("PodSpec", "initContainers", "merge", "name", Keys(&["name"])),
        ("PodSpec", "containers", "merge", "name", Keys(&["name"])),
        ("PodSpec", "ephemeralContainers", "merge", "name", Keys(&["name"])),
        ("PodSpec", "imagePullSecrets", "merge", "name", Keys(&["name"])),
        ("PodSpec", "hostAliases", "merge", "ip", Keys(&["ip"])),
        ("PodSpec", "topologySpreadConstraints", "merge", "topologyKey", Keys(&["topologyKey", "whenUnsatisfiable"])),
        ("PodSpec", "schedulingGates", "merge", "name", Keys(&["name"])),
        ("PodSpec", "resourceClaims", "merge,retainKeys", "name", Keys(&["name"])),
        ("PodStatus", "conditions", "merge", "type", Keys(&["type"])),
        ("PodStatus", "hostIPs", "merge", "ip", Atomic),
        ("PodStatus", "podIPs", "merge", "ip", Keys(&["ip"])),
        ("PodStatus", "resourceClaimStatuses", "merge,retainKeys", "name", Keys(&["name"])),
        ("PersistentVolumeClaimStatus", "conditions", "merge", "type", Keys(&["type"])),
        ("ReplicationControllerStatus", "conditions", "merge", "type", Keys(&["type"])),
        ("ServiceSpec", "ports", "merge", "port", Keys(&["port", "protocol"])),
        ("ServiceStatus", "conditions", "merge", "type", Keys(&["type"])),
        ("ServiceAccount", "secrets", "merge", "name", Keys(&["name"])),
        ("NodeSpec", "podCIDRs", "merge", "", Set),
        ("NodeStatus", "conditions", "merge", "type", Keys(&["type"])),
        ("NodeStatus", "addresses", "merge", "type", Keys(&["type"])),
        ("NamespaceStatus", "conditions", "merge", "type", Keys(&["type"])),
        ("ComponentStatus", "conditions", "merge", "type", Keys(&["type"])),
    ]),
    (APPS, &[
        ("DeploymentStatus", "conditions", "merge", "type", Keys(&["type"])),
        ("ReplicaSetStatus", "conditions", "merge", "type", Keys(&["type"])),
        ("DaemonSetStatus", "conditions", "merge", "type", Keys(&["type"])),
        ("StatefulSetStatus", "conditions", "merge", "type", Keys(&["type"])),
    ]),
    (BATCH, &[
        ("JobStatus", "conditions", "merge", "type", Atomic),
        ("UncountedTerminatedPods", "succeeded", "", "", Set),
        ("UncountedTerminatedPods", "failed", "", "", Set),
        ("PodFailurePolicyOnExitCodesRequirement", "values", "", "", Set),
    ]),
    (DISCOVERY, &[("Endpoint", "addresses", "", "", Set)]),
];

/// Writes the list extensions into the schemas (`components.schemas`, by full type name)
/// that declare them.
pub fn annotate(schemas: &mut Map<String, Value>) {
    for (prefix, decls) in DECLS {
        for &(ty, field, strategy, key, list_type) in *decls {
            let Some(prop) = schemas
                .get_mut(&format!("{prefix}{ty}"))
                .and_then(|s| s.pointer_mut(&format!("/properties/{field}")))
                .and_then(Value::as_object_mut)
            else {
                continue;
            };
            if !strategy.is_empty() {
                prop.insert("x-kubernetes-patch-strategy".into(), json!(strategy));
            }
            if !key.is_empty() {
                prop.insert("x-kubernetes-patch-merge-key".into(), json!(key));
            }
            let (name, keys) = match list_type {
                Atomic => ("atomic", None),
                Set => ("set", None),
                Keys(keys) => ("map", Some(keys)),
            };
            prop.insert("x-kubernetes-list-type".into(), json!(name));
            if let Some(keys) = keys {
                prop.insert("x-kubernetes-list-map-keys".into(), json!(keys));
            }
        }
    }
}

/// Interns a string read from a schema: the index's keys are `&'static str` (so a
/// [`ListStrategy`] is `Copy`), and there are only a handful of distinct ones.
fn intern(s: &str) -> &'static str {
    let mut known: Vec<&'static str> = Vec::new();
    for (_, decls) in DECLS {
        for &(_, _, _, key, list_type) in *decls {
            known.push(key);
            if let Keys(keys) = list_type {
                known.extend_from_slice(keys);
            }
        }
    }
    known
        .into_iter()
        .find(|k| *k == s)
        .unwrap_or_else(|| Box::leak(s.to_owned().into_boxed_str()))
}

/// What a list's schema declares, or `None` for an atomic list under both merges.
fn spec_of(prop: &Map<String, Value>) -> Option<ListSpec> {
    let ext = |name: &str| prop.get(name).and_then(Value::as_str);
    let merges =
        ext("x-kubernetes-patch-strategy").is_some_and(|s| s.split(',').any(|s| s == "merge"));
    let patch = match (merges, ext("x-kubernetes-patch-merge-key")) {
        (true, Some(key)) => ListStrategy::Keyed(intern(key)),
        (true, None) => ListStrategy::Set,
        (false, _) => ListStrategy::Atomic,
    };
    let first_key = prop
        .get("x-kubernetes-list-map-keys")
        .and_then(|k| k.get(0))
        .and_then(Value::as_str);
    let apply = match (ext("x-kubernetes-list-type"), first_key) {
        (Some("map"), Some(key)) => ListStrategy::Keyed(intern(key)),
        (Some("set"), _) => ListStrategy::Set,
        _ => ListStrategy::Atomic,
    };
    let spec = ListSpec { patch, apply };
    (spec != ListSpec::ATOMIC).then_some(spec)
}

impl ListSpec {
    pub const ATOMIC: ListSpec = ListSpec {
        patch: ListStrategy::Atomic,
        apply: ListStrategy::Atomic,
    };
}

/// Field paths (names joined by `.`, list items as `[]`) to the lists that are not atomic,
/// per kind.
#[derive(Debug, Default)]
pub struct ListIndex {
    kinds: HashMap<&'static str, HashMap<String, ListSpec>>,
}

/// The key of list `field` under `path`: `spec.template.spec.containers.[].ports`.
fn path_key(path: &[&str], field: &str) -> String {
    let mut key =
        String::with_capacity(path.iter().map(|p| p.len() + 1).sum::<usize>() + field.len());
    for p in path {
        key.push_str(p);
        key.push('.');
    }
    key.push_str(field);
    key
}

impl ListIndex {
    /// Reads the lists of each served kind from the (annotated) schemas.
    pub fn build(registry: &super::Registry) -> ListIndex {
        let mut generator = schemars::generate::SchemaSettings::openapi3().into_generator();
        let roots: Vec<(&'static str, Value)> = registry
            .resources
            .iter()
            .map(|rt| (rt.kind, rt.strategy.schema(&mut generator).to_value()))
            .collect();
        let mut schemas = generator.take_definitions(true);
        annotate(&mut schemas);
        let mut index = ListIndex::default();
        for (kind, root) in roots {
            let lists = index.kinds.entry(kind).or_default();
            walk(&schemas, &root, &mut Vec::new(), &mut Vec::new(), lists);
        }
        index
    }

    /// How list `field` under `path` (field names, list items as `[]`) merges in `kind`.
    pub fn get(&self, kind: &str, path: &[&str], field: &str) -> ListSpec {
        self.kinds
            .get(kind)
            .and_then(|lists| lists.get(&path_key(path, field)))
            .copied()
            .unwrap_or(ListSpec::ATOMIC)
    }
}

/// Collects the lists below `schema` into `out`; `seen` holds the types being walked, so a
/// recursive type ends the walk.
fn walk<'a>(
    schemas: &'a Map<String, Value>,
    schema: &'a Value,
    path: &mut Vec<&'a str>,
    seen: &mut Vec<&'a str>,
    out: &mut HashMap<String, ListSpec>,
) {
    if let Some(name) = schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.rsplit('/').next())
    {
        if seen.contains(&name) {
            return;
        }
        if let Some(target) = schemas.get(name) {
            seen.push(name);
            walk(schemas, target, path, seen, out);
            seen.pop();
        }
    }
    for part in schema
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        walk(schemas, part, path, seen, out);
    }
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        return;
    };
    for (field, prop) in props {
        match prop.get("items") {
            Some(items) => {
                if let Some(spec) = prop.as_object().and_then(spec_of) {
                    out.insert(path_key(path, field), spec);
                }
                path.push(field);
                path.push("[]");
                walk(schemas, items, path, seen, out);
                path.truncate(path.len() - 2);
            }
            None => {
                path.push(field);
                walk(schemas, prop, path, seen, out);
                path.pop();
            }
        }
    }
}

/// The index of the served kinds, built on first use (the API server builds it at start).
pub fn index() -> &'static ListIndex {
    static INDEX: LazyLock<ListIndex> = LazyLock::new(|| ListIndex::build(&super::Registry::new()));
    &INDEX
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_come_from_the_types_each_kind_embeds() {
        let index = index();
        let keyed = |k| ListSpec {
            patch: ListStrategy::Keyed(k),
            apply: ListStrategy::Keyed(k),
        };
        let tpl = ["spec", "template", "spec"];
        assert_eq!(index.get("Deployment", &tpl, "containers"), keyed("name"));
        assert_eq!(
            index.get(
                "Deployment",
                &["spec", "template", "spec", "containers", "[]"],
                "ports"
            ),
            keyed("containerPort")
        );
        let job_tpl = ["spec", "jobTemplate", "spec", "template", "spec"];
        assert_eq!(index.get("CronJob", &job_tpl, "volumes"), keyed("name"));
        assert_eq!(index.get("Pod", &["spec"], "tolerations"), ListSpec::ATOMIC);
        assert_eq!(index.get("Node", &["spec"], "taints"), ListSpec::ATOMIC);
        assert_eq!(index.get("Service", &["spec"], "ports"), keyed("port"));
        assert_eq!(
            index.get("Service", &["spec"], "externalIPs"),
            ListSpec::ATOMIC
        );
        let set = ListSpec {
            patch: ListStrategy::Set,
            apply: ListStrategy::Set,
        };
        assert_eq!(index.get("ConfigMap", &["metadata"], "finalizers"), set);
        assert_eq!(
            index.get(
                "ReplicaSet",
                &["spec", "template", "metadata"],
                "finalizers"
            ),
            set
        );
        assert_eq!(
            index.get("Pod", &["status"], "hostIPs"),
            ListSpec {
                patch: ListStrategy::Keyed("ip"),
                apply: ListStrategy::Atomic
            }
        );
        assert_eq!(
            index.get("EndpointSlice", &["endpoints", "[]"], "addresses"),
            ListSpec {
                patch: ListStrategy::Atomic,
                apply: ListStrategy::Set
            }
        );
        assert_eq!(
            index.get("NoSuchKind", &["spec"], "containers"),
            ListSpec::ATOMIC
        );
    }

    #[test]
    fn every_declared_field_exists_in_the_served_schemas() {
        // A typo in the table would silently leave a list atomic.
        let mut generator = schemars::generate::SchemaSettings::openapi3().into_generator();
        for rt in super::super::Registry::new().resources {
            rt.strategy.schema(&mut generator);
        }
        let schemas = generator.take_definitions(true);
        let mut missing = Vec::new();
        for (prefix, decls) in DECLS {
            for &(ty, field, ..) in *decls {
                let name = format!("{prefix}{ty}");
                // Types of kinds not served yet (PersistentVolumeClaim, StatefulSet, ...).
                let Some(s) = schemas.get(&name) else {
                    continue;
                };
                if s.pointer(&format!("/properties/{field}")).is_none() {
                    missing.push(format!("{name}.{field}"));
                }
            }
        }
        assert!(missing.is_empty(), "{missing:?}");
    }
}
