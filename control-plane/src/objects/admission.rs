//! The admission chain every create, update and delete goes through, whoever writes
//! (kube's admission plugins): the mutating plugins in order, then the kind's own
//! defaulting and validation (the registry's strategy), then the validating plugins in
//! order. A delete has no new object: the plugins see the one deleted as `old`. A plugin
//! has a name, says which requests it handles, and may refuse one. Access control, Pod
//! Security, quotas and webhooks are to join as further plugins.

use async_trait::async_trait;
use serde_json::{json, Value};
use tracing::Instrument;

use super::{meta_str, ObjectError, Objects};
use crate::registry::{Operation, ResourceType};

/// Settings of the built-in admission plugins (flags of `skiff server`).
#[derive(Clone, Debug)]
pub struct Admission {
    /// The `tolerationSeconds` the DefaultTolerationSeconds plugin gives pods for the
    /// `node.kubernetes.io/not-ready:NoExecute` taint (kube: 300; Skiff heals faster).
    pub default_not_ready_toleration_seconds: i64,
    /// The same for `node.kubernetes.io/unreachable:NoExecute`.
    pub default_unreachable_toleration_seconds: i64,
    /// The DenyServiceExternalIPs plugin is on: no new `spec.externalIPs` (they let a
    /// Service's author take any address's traffic on every node, CVE-2020-8554).
    pub deny_service_external_ips: bool,
}

/// The plugins `--enable-admission-plugins` may name: those always on, and the optional.
pub const ALWAYS_ON_PLUGINS: &[&str] = &[
    "NamespaceLifecycle",
    "RuntimeClass",
    "DefaultTolerationSeconds",
];
pub const OPTIONAL_PLUGINS: &[&str] = &["DenyServiceExternalIPs"];

pub const DEFAULT_TOLERATION_SECONDS: i64 = 5;

impl Default for Admission {
    fn default() -> Self {
        Admission {
            default_not_ready_toleration_seconds: DEFAULT_TOLERATION_SECONDS,
            default_unreachable_toleration_seconds: DEFAULT_TOLERATION_SECONDS,
            deny_service_external_ips: false,
        }
    }
}

/// What is being written, as a plugin sees it.
#[derive(Clone, Copy, Debug)]
pub struct Attributes<'a> {
    pub resource: &'a ResourceType,
    pub namespace: Option<&'a str>,
    pub name: &'a str,
    pub operation: Operation,
    /// The stored object an update replaces or a delete removes.
    pub old: Option<&'a Value>,
    pub dry_run: bool,
}

impl Attributes<'_> {
    /// Whether this is a write of `group`/`plural` itself (not a subresource of it).
    pub fn is(&self, group: &str, plural: &str) -> bool {
        self.resource.group == group && self.resource.plural == plural
    }
}

/// A plugin that may change the object (or refuse it) before the kind admits it.
#[async_trait]
pub trait Mutating: Send + Sync {
    fn name(&self) -> &'static str;
    fn handles(&self, a: &Attributes<'_>) -> bool;
    async fn admit(
        &self,
        a: &Attributes<'_>,
        obj: &mut Value,
        objects: &Objects,
    ) -> Result<(), ObjectError>;
}

/// A plugin that may refuse the admitted object, as it will be stored.
#[async_trait]
pub trait Validating: Send + Sync {
    fn name(&self) -> &'static str;
    fn handles(&self, a: &Attributes<'_>) -> bool;
    async fn validate(
        &self,
        a: &Attributes<'_>,
        obj: &Value,
        objects: &Objects,
    ) -> Result<(), ObjectError>;
}

/// The ordered plugins.
pub struct Chain {
    mutating: Vec<Box<dyn Mutating>>,
    validating: Vec<Box<dyn Validating>>,
}

impl Chain {
    /// The built-in plugins, in kube's order.
    pub fn new(settings: &Admission) -> Self {
        Chain {
            mutating: vec![
                Box::new(NamespaceLifecycle),
                Box::new(RuntimeClass),
                Box::new(DefaultTolerationSeconds {
                    not_ready: settings.default_not_ready_toleration_seconds,
                    unreachable: settings.default_unreachable_toleration_seconds,
                }),
            ],
            validating: if settings.deny_service_external_ips {
                vec![Box::new(DenyServiceExternalIps) as Box<dyn Validating>]
            } else {
                Vec::new()
            },
        }
    }

    /// Adds a mutating plugin after the others.
    pub fn push_mutating(&mut self, plugin: Box<dyn Mutating>) {
        self.mutating.push(plugin);
    }

    /// Adds a validating plugin after the others.
    pub fn push_validating(&mut self, plugin: Box<dyn Validating>) {
        self.validating.push(plugin);
    }

    /// The plugins' names, mutating ones first, in the order they run.
    pub fn names(&self) -> Vec<&'static str> {
        let m = self.mutating.iter().map(|p| p.name());
        m.chain(self.validating.iter().map(|p| p.name())).collect()
    }

    pub(super) async fn mutate(
        &self,
        a: &Attributes<'_>,
        obj: &mut Value,
        objects: &Objects,
    ) -> Result<(), ObjectError> {
        for p in self.mutating.iter().filter(|p| p.handles(a)) {
            let span = tracing::debug_span!(
                "admit",
                plugin = p.name(),
                resource = a.resource.plural,
                name = a.name
            );
            p.admit(a, obj, objects).instrument(span).await?;
        }
        Ok(())
    }

    pub(super) async fn validate(
        &self,
        a: &Attributes<'_>,
        obj: &Value,
        objects: &Objects,
    ) -> Result<(), ObjectError> {
        for p in self.validating.iter().filter(|p| p.handles(a)) {
            let span = tracing::debug_span!(
                "validate",
                plugin = p.name(),
                resource = a.resource.plural,
                name = a.name
            );
            p.validate(a, obj, objects).instrument(span).await?;
        }
        Ok(())
    }

    /// Runs the plugins that handle a delete of `a.old`, mutating ones first. Each sees a
    /// null object (kube's nil: a delete writes none) and may refuse the delete.
    pub(super) async fn admit_delete(
        &self,
        a: &Attributes<'_>,
        objects: &Objects,
    ) -> Result<(), ObjectError> {
        self.mutate(a, &mut Value::Null, objects).await?;
        self.validate(a, &Value::Null, objects).await
    }
}

/// Namespaces kube-apiserver never lets go (the NamespaceLifecycle plugin's immortal ones).
const IMMORTAL_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public"];

/// Namespaced objects are created only in a namespace that exists and is not being
/// deleted; the immortal namespaces are never deleted.
struct NamespaceLifecycle;

#[async_trait]
impl Mutating for NamespaceLifecycle {
    fn name(&self) -> &'static str {
        "NamespaceLifecycle"
    }

    fn handles(&self, a: &Attributes<'_>) -> bool {
        match a.operation {
            Operation::Create => a.resource.namespaced && a.namespace.is_some(),
            Operation::Delete => a.is("", "namespaces"),
            Operation::Update | Operation::UpdateStatus => false,
        }
    }

    async fn admit(
        &self,
        a: &Attributes<'_>,
        _obj: &mut Value,
        objects: &Objects,
    ) -> Result<(), ObjectError> {
        if a.operation == Operation::Delete {
            if IMMORTAL_NAMESPACES.contains(&a.name) {
                return Err(ObjectError::Forbidden {
                    resource: a.resource.qualified(),
                    name: a.name.into(),
                    message: "this namespace may not be deleted".into(),
                });
            }
            return Ok(());
        }
        let ns = a.namespace.unwrap_or_default();
        let nsrt = objects
            .registry()
            .find("", "v1", "namespaces")
            .expect("namespaces are served");
        let (nsobj, _) = objects.get_value(nsrt, None, ns).await?;
        if nsobj
            .pointer("/metadata/deletionTimestamp")
            .is_some_and(|v| !v.is_null())
        {
            return Err(ObjectError::Forbidden {
                resource: a.resource.qualified(),
                name: String::new(),
                message: format!(
                    "unable to create new content in namespace {ns} because it is being terminated"
                ),
            });
        }
        Ok(())
    }
}

/// A pod's RuntimeClass must exist, and its scheduling constraints join the pod's
/// `nodeSelector`.
struct RuntimeClass;

#[async_trait]
impl Mutating for RuntimeClass {
    fn name(&self) -> &'static str {
        "RuntimeClass"
    }

    fn handles(&self, a: &Attributes<'_>) -> bool {
        a.operation == Operation::Create && a.is("", "pods")
    }

    async fn admit(
        &self,
        a: &Attributes<'_>,
        pod: &mut Value,
        objects: &Objects,
    ) -> Result<(), ObjectError> {
        let Some(class) = pod
            .pointer("/spec/runtimeClassName")
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty())
            .map(str::to_string)
        else {
            return Ok(());
        };
        let rc = objects
            .registry()
            .find("node.k8s.io", "v1", "runtimeclasses")
            .expect("runtimeclasses are served");
        let pod_name = meta_str(pod, "name").unwrap_or_default().to_string();
        let forbidden = |message: String| ObjectError::Forbidden {
            resource: a.resource.qualified(),
            name: pod_name.clone(),
            message,
        };
        let class_obj = match objects.get_value(rc, None, &class).await {
            Ok((c, _)) => c,
            Err(ObjectError::NotFound { .. }) => {
                return Err(forbidden(format!(
                    "pod rejected: RuntimeClass {class:?} not found"
                )))
            }
            Err(e) => return Err(e),
        };
        let wanted = class_obj
            .pointer("/scheduling/nodeSelector")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        if wanted.is_empty() {
            return Ok(());
        }
        if !pod["spec"]["nodeSelector"].is_object() {
            pod["spec"]["nodeSelector"] = json!({});
        }
        let sel = pod["spec"]["nodeSelector"]
            .as_object_mut()
            .expect("an object");
        for (k, v) in wanted {
            match sel.get(&k) {
                Some(existing) if *existing != v => {
                    return Err(forbidden(format!("pod rejected: conflict: runtimeClass.scheduling.nodeSelector[{k}] = {v}; pod.spec.nodeSelector[{k}] = {existing}")))
                }
                _ => {
                    sel.insert(k, v);
                }
            }
        }
        Ok(())
    }
}

/// kube's DenyServiceExternalIPs: a Service may keep or drop the external IPs it has,
/// never add one.
struct DenyServiceExternalIps;

#[async_trait]
impl Validating for DenyServiceExternalIps {
    fn name(&self) -> &'static str {
        "DenyServiceExternalIPs"
    }

    fn handles(&self, a: &Attributes<'_>) -> bool {
        matches!(a.operation, Operation::Create | Operation::Update) && a.is("", "services")
    }

    async fn validate(
        &self,
        a: &Attributes<'_>,
        svc: &Value,
        _objects: &Objects,
    ) -> Result<(), ObjectError> {
        let ips = |v: &Value| -> Vec<String> {
            v.pointer("/spec/externalIPs")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|ip| ip.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let had = a.old.map(ips).unwrap_or_default();
        if ips(svc).iter().all(|ip| had.contains(ip)) {
            return Ok(());
        }
        Err(ObjectError::Forbidden {
            resource: a.resource.qualified(),
            name: a.name.into(),
            message: "Use of external IPs is denied by admission control".into(),
        })
    }
}

/// A pod that does not tolerate the not-ready or unreachable NoExecute taint gets a
/// toleration of it for a while, so that its pods leave a dead node after that time.
struct DefaultTolerationSeconds {
    not_ready: i64,
    unreachable: i64,
}

impl DefaultTolerationSeconds {
    fn add_tolerations(&self, pod: &mut Value) {
        let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
            return;
        };
        let tolerations = spec.entry("tolerations").or_insert_with(|| json!([]));
        let Some(list) = tolerations.as_array_mut() else {
            return;
        };
        for (key, secs) in [
            ("node.kubernetes.io/not-ready", self.not_ready),
            ("node.kubernetes.io/unreachable", self.unreachable),
        ] {
            // As kube's ToleratesTaint: an empty key with `Exists` matches every key, an
            // empty effect every effect.
            let tolerated = list.iter().any(|t| {
                let k = t["key"].as_str().unwrap_or_default();
                let e = t["effect"].as_str().unwrap_or_default();
                (k == key || (k.is_empty() && t["operator"] == "Exists"))
                    && (e.is_empty() || e == "NoExecute")
            });
            if !tolerated {
                list.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": secs}));
            }
        }
    }
}

#[async_trait]
impl Mutating for DefaultTolerationSeconds {
    fn name(&self) -> &'static str {
        "DefaultTolerationSeconds"
    }

    fn handles(&self, a: &Attributes<'_>) -> bool {
        a.operation == Operation::Create && a.is("", "pods")
    }

    async fn admit(
        &self,
        _a: &Attributes<'_>,
        pod: &mut Value,
        _objects: &Objects,
    ) -> Result<(), ObjectError> {
        self.add_tolerations(pod);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin() -> DefaultTolerationSeconds {
        DefaultTolerationSeconds {
            not_ready: 7,
            unreachable: 9,
        }
    }

    #[test]
    fn default_tolerations_skip_what_the_pod_already_tolerates() {
        let mut wildcard = json!({"spec": {"tolerations": [{"operator": "Exists"}]}});
        plugin().add_tolerations(&mut wildcard);
        assert_eq!(wildcard["spec"]["tolerations"].as_array().unwrap().len(), 1);
        let mut one = json!({"spec": {"tolerations": [
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists"}]}});
        plugin().add_tolerations(&mut one);
        assert_eq!(
            one["spec"]["tolerations"][1],
            json!({"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 7})
        );
        assert_eq!(one["spec"]["tolerations"].as_array().unwrap().len(), 2);
        // A NoSchedule toleration does not cover NoExecute.
        let mut no_schedule = json!({"spec": {"tolerations": [
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoSchedule"}]}});
        plugin().add_tolerations(&mut no_schedule);
        assert_eq!(
            no_schedule["spec"]["tolerations"].as_array().unwrap().len(),
            3
        );
    }

    #[test]
    fn the_chain_runs_the_built_in_plugins_in_order() {
        assert_eq!(
            Chain::new(&Admission::default()).names(),
            [
                "NamespaceLifecycle",
                "RuntimeClass",
                "DefaultTolerationSeconds"
            ]
        );
    }
}
