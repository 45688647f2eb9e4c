//! How list fields merge, from one source. Kubernetes declares it on its Go types
//! (`patchStrategy`/`patchMergeKey` tags, `+listType`/`+listMapKey` markers) and publishes it
//! in its OpenAPI schemas as `x-kubernetes-patch-strategy`, `x-kubernetes-patch-merge-key`,
//! `x-kubernetes-list-type` and `x-kubernetes-list-map-keys`. The schemas k8s-openapi
//! generates drop those extensions, so [`annotate`] puts them back (per type, as kube does)
//! into the schemas Skiff serves, and [`index`] reads them from those same schemas, once, into
//! a per-kind map from field path to [`ListSpec`]: strategic merge patch and server-side
//! apply look lists up there. A new kind built from types listed here needs no new row.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, PoisonError};

use serde_json::{json, Map, Value};

/// How a list field is merged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListStrategy {
    /// Replaced whole (Kubernetes' atomic lists, and every list it says nothing about).
    Atomic,
    /// A set of primitives (e.g. `finalizers`).
    Set,
    /// Maps identified by key fields: by one (`x-kubernetes-patch-merge-key`) in a strategic
    /// merge patch, by all of them (`x-kubernetes-list-map-keys`) in server-side apply, e.g.
    /// container ports by `containerPort` and `protocol`.
    Keyed(&'static [ListKey]),
}

/// A key field of a [`ListStrategy::Keyed`] list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ListKey {
    pub field: &'static str,
    /// What server-side apply takes for an item that omits the field: its schema default
    /// (kube's key defaults are strings, e.g. a port's `protocol` is `TCP`). None in a patch.
    pub default: Option<&'static str>,
}

impl ListKey {
    /// The key's value in `item`: the item's own, else the default, else none.
    pub fn value_in<'v>(&self, item: &'v Value) -> Option<Cow<'v, Value>> {
        match (item.get(self.field), self.default) {
            (Some(v), _) => Some(Cow::Borrowed(v)),
            (None, Some(d)) => Some(Cow::Owned(Value::String(d.into()))),
            (None, None) => None,
        }
    }
}

/// A list field's behaviour under both merges, which kube lets differ (`hostIPs` merge by
/// `ip` in a strategic merge patch but are atomic to server-side apply).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListSpec {
    /// Strategic merge patch (`x-kubernetes-patch-strategy`/`-patch-merge-key`).
    pub patch: ListStrategy,
    /// Server-side apply (`x-kubernetes-list-type`/`-list-map-keys`).
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

/// The defaults kube's schemas declare (`+default`) on key fields of list-maps: server-side
/// apply identifies an item that omits such a field by its default, as structured-merge-diff
/// does (so `{containerPort: 53}` is the live `{containerPort: 53, protocol: TCP}`).
#[rustfmt::skip]
const KEY_DEFAULTS: &[(&str, &str, &str, &str)] = &[
    (CORE, "ContainerPort", "protocol", "TCP"),
    (CORE, "ServicePort", "protocol", "TCP"),
];

/// Writes the list extensions, and the defaults of list-map key fields, into the schemas
/// (`components.schemas`, by full type name) that declare them.
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
    for &(prefix, ty, field, default) in KEY_DEFAULTS {
        if let Some(prop) = schemas
            .get_mut(&format!("{prefix}{ty}"))
            .and_then(|s| s.pointer_mut(&format!("/properties/{field}")))
            .and_then(Value::as_object_mut)
        {
            prop.insert("default".into(), json!(default));
        }
    }
}

/// Interns the keys of a list read from a schema: the index holds `&'static` slices (so a
/// [`ListStrategy`] is `Copy`). Each distinct list of keys is allocated once per process,
/// however many indexes are built; there are only a handful.
fn intern(keys: &[(&str, Option<&str>)]) -> &'static [ListKey] {
    static KNOWN: Mutex<Vec<&'static [ListKey]>> = Mutex::new(Vec::new());
    let mut known = KNOWN.lock().unwrap_or_else(PoisonError::into_inner);
    let same = |k: &[ListKey]| {
        k.len() == keys.len()
            && k.iter()
                .zip(keys)
                .all(|(k, (field, default))| k.field == *field && k.default == *default)
    };
    if let Some(k) = known.iter().copied().find(|k| same(k)) {
        return k;
    }
    let leak = |s: &str| -> &'static str { Box::leak(s.to_owned().into_boxed_str()) };
    let interned: &'static [ListKey] = Box::leak(
        keys.iter()
            .map(|&(field, default)| ListKey {
                field: leak(field),
                default: default.map(leak),
            })
            .collect(),
    );
    known.push(interned);
    interned
}

/// What a list's schema `prop` declares, or `None` for an atomic list under both merges;
/// `item` is the schema of its items, which holds the defaults of key fields.
fn spec_of(prop: &Map<String, Value>, item: Option<&Value>) -> Option<ListSpec> {
    let ext = |name: &str| prop.get(name).and_then(Value::as_str);
    let merges =
        ext("x-kubernetes-patch-strategy").is_some_and(|s| s.split(',').any(|s| s == "merge"));
    let patch = match (merges, ext("x-kubernetes-patch-merge-key")) {
        (true, Some(key)) => ListStrategy::Keyed(intern(&[(key, None)])),
        (true, None) => ListStrategy::Set,
        (false, _) => ListStrategy::Atomic,
    };
    let keys: Vec<(&str, Option<&str>)> = prop
        .get("x-kubernetes-list-map-keys")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|field| {
            let default = item
                .and_then(|i| i.get("properties"))
                .and_then(|p| p.get(field))
                .and_then(|f| f.get("default"))
                .and_then(Value::as_str);
            (field, default)
        })
        .collect();
    let apply = match ext("x-kubernetes-list-type") {
        Some("map") if !keys.is_empty() => ListStrategy::Keyed(intern(&keys)),
        Some("set") => ListStrategy::Set,
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
                let item = items
                    .get("$ref")
                    .and_then(Value::as_str)
                    .and_then(|r| schemas.get(r.rsplit('/').next()?))
                    .or(Some(items));
                if let Some(spec) = prop.as_object().and_then(|p| spec_of(p, item)) {
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

    /// A list's merges in short: `atomic`, `set`, or the key fields (`=` their default),
    /// the patch's first.
    fn shape(spec: ListSpec) -> (String, String) {
        let one = |s: ListStrategy| match s {
            ListStrategy::Atomic => "atomic".to_string(),
            ListStrategy::Set => "set".to_string(),
            ListStrategy::Keyed(keys) => keys
                .iter()
                .map(|k| match k.default {
                    Some(d) => format!("{}={d}", k.field),
                    None => k.field.to_string(),
                })
                .collect::<Vec<_>>()
                .join(","),
        };
        (one(spec.patch), one(spec.apply))
    }

    #[test]
    fn lists_come_from_the_types_each_kind_embeds() {
        let index = index();
        let get = |kind, path: &[&str], field| shape(index.get(kind, path, field));
        let is = |patch: &str, apply: &str| (patch.to_string(), apply.to_string());
        let tpl = ["spec", "template", "spec"];
        assert_eq!(get("Deployment", &tpl, "containers"), is("name", "name"));
        // Apply keys container ports by all their keys, with the protocol's default; a
        // patch by the port alone.
        assert_eq!(
            get(
                "Deployment",
                &["spec", "template", "spec", "containers", "[]"],
                "ports"
            ),
            is("containerPort", "containerPort,protocol=TCP")
        );
        let job_tpl = ["spec", "jobTemplate", "spec", "template", "spec"];
        assert_eq!(get("CronJob", &job_tpl, "volumes"), is("name", "name"));
        assert_eq!(
            get("Pod", &["spec"], "topologySpreadConstraints"),
            is("topologyKey", "topologyKey,whenUnsatisfiable")
        );
        assert_eq!(get("Pod", &["spec"], "tolerations"), is("atomic", "atomic"));
        assert_eq!(get("Node", &["spec"], "taints"), is("atomic", "atomic"));
        assert_eq!(
            get("Service", &["spec"], "ports"),
            is("port", "port,protocol=TCP")
        );
        assert_eq!(
            get("Service", &["spec"], "externalIPs"),
            is("atomic", "atomic")
        );
        assert_eq!(
            get("ConfigMap", &["metadata"], "finalizers"),
            is("set", "set")
        );
        assert_eq!(
            get(
                "ReplicaSet",
                &["spec", "template", "metadata"],
                "finalizers"
            ),
            is("set", "set")
        );
        assert_eq!(get("Pod", &["status"], "hostIPs"), is("ip", "atomic"));
        assert_eq!(
            get("EndpointSlice", &["endpoints", "[]"], "addresses"),
            is("atomic", "set")
        );
        assert_eq!(
            index.get("NoSuchKind", &["spec"], "containers"),
            ListSpec::ATOMIC
        );
    }

    /// Each index build (tests make many) reuses the keys a previous build interned.
    #[test]
    fn building_an_index_again_reuses_the_interned_keys() {
        let ports = |i: &ListIndex| match i.get("Service", &["spec"], "ports").apply {
            ListStrategy::Keyed(keys) => keys.as_ptr(),
            other => panic!("{other:?}"),
        };
        let again = ListIndex::build(&super::super::Registry::new());
        assert_eq!(ports(index()), ports(&again));
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
