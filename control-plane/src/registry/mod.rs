//! What the API serves: one [`ResourceType`] per resource, each with the strategy that
//! defaults, validates and prints its objects. Every writer (HTTP handlers, controllers,
//! the scheduler) goes through [`ResourceType::admit`], so the rules live in one place.

mod apps;
mod batch;
mod core;
mod discovery;
mod hooks;
pub mod lists;
mod meta;
mod other;
mod pod;
pub mod scale;
mod service_ips;
pub mod table;
pub mod validation;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

pub use self::core::{finalize_namespace, SYSTEM_NAMESPACES};
use crate::selectors::Field;
pub use hooks::Hooks;
pub use meta::{validate_object_meta, ObjectMetaRules};
pub use pod::{bind as bind_pod, BindError};
pub use service_ips::KUBERNETES_SERVICE_IP;
pub use table::Column;
use validation::{Errors, NameRule};

/// Which write is being admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
    /// A write to the `status` subresource.
    UpdateStatus,
    /// A delete: seen by admission plugins only (a kind's strategy admits writes).
    Delete,
}

/// How the main resource treats `status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusPolicy {
    /// No status at all.
    None,
    /// Status is written only through `/status`; writes to the main resource keep the
    /// old status (and creates start without one).
    Subresource,
    /// Like `Subresource`, but a create may set status (Nodes, as in Kubernetes).
    SubresourceSetOnCreate,
}

#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    /// The body is not a valid object of the kind (a 400 in Kubernetes).
    #[error("{0}")]
    Decode(String),
    /// Fields with invalid values (a 422).
    #[error("invalid object")]
    Invalid(Errors),
    /// The stored (old) object does not decode as the kind: the server's fault, not the
    /// client's (a 500).
    #[error("{0}")]
    Stored(String),
}

/// Per-kind behaviour over the typed k8s-openapi struct.
pub trait Kind:
    k8s_openapi::Resource
    + k8s_openapi::Metadata<Ty = ObjectMeta>
    + Serialize
    + DeserializeOwned
    + schemars::JsonSchema
    + Send
    + Sync
    + 'static
{
    /// Fills in Kubernetes' defaults.
    fn default_fields(&mut self, _op: Operation) {}
    fn validate(&self, _errs: &mut Errors) {}
    fn validate_update(&self, _old: &Self, _errs: &mut Errors) {}
    fn columns() -> &'static [Column] {
        table::NAME_AGE
    }
    /// One table row, a cell per column.
    fn cells(&self, now: jiff::Timestamp) -> Vec<Value> {
        let meta = k8s_openapi::Metadata::metadata(self);
        vec![table::name(meta), table::age(self.meta_created(), now)]
    }
    /// `metadata.creationTimestamp`, for ages.
    fn meta_created(&self) -> Option<jiff::Timestamp> {
        k8s_openapi::Metadata::metadata(self)
            .creation_timestamp
            .as_ref()
            .map(|t| t.0)
    }
}

/// The object-safe face of a [`Kind`], working on JSON.
pub trait Strategy: Send + Sync {
    /// Decodes `input` as the kind, applies defaults and validation, and returns the
    /// normalized object.
    fn admit(&self, input: &Value, old: Option<&Value>, op: Operation)
        -> Result<Value, AdmitError>;
    fn columns(&self) -> &'static [Column];
    fn cells(&self, obj: &Value, now: jiff::Timestamp) -> Vec<Value>;
    /// A reference to the kind's JSON schema; `schemas` collects it and what it uses.
    fn schema(&self, schemas: &mut schemars::SchemaGenerator) -> schemars::Schema;
}

struct Typed<K>(std::marker::PhantomData<K>);

/// Decodes a JSON value into a typed object, naming the field that failed.
pub fn decode<K: DeserializeOwned>(v: &Value) -> Result<K, String> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        if path == "." || path.is_empty() {
            e.into_inner().to_string()
        } else {
            format!("{path}: {}", e.into_inner())
        }
    })
}

impl<K: Kind> Strategy for Typed<K> {
    fn admit(
        &self,
        input: &Value,
        old: Option<&Value>,
        op: Operation,
    ) -> Result<Value, AdmitError> {
        let mut obj: K = decode(input).map_err(AdmitError::Decode)?;
        obj.default_fields(op);
        let mut errs = Errors::default();
        obj.validate(&mut errs);
        if let Some(old) = old {
            let old: K = decode(old).map_err(AdmitError::Stored)?;
            obj.validate_update(&old, &mut errs);
        }
        if !errs.is_empty() {
            return Err(AdmitError::Invalid(errs));
        }
        serde_json::to_value(&obj).map_err(|e| AdmitError::Decode(e.to_string()))
    }

    fn columns(&self) -> &'static [Column] {
        K::columns()
    }

    fn cells(&self, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
        match decode::<K>(obj) {
            Ok(o) => o.cells(now),
            Err(_) => vec![Value::Null; K::columns().len()],
        }
    }

    fn schema(&self, schemas: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemas.subschema_for::<K>()
    }
}

/// One served resource (e.g. `apps/v1 deployments`).
pub struct ResourceType {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    /// Subresources served for it, e.g. `status`, `scale`, `log`.
    pub subresources: &'static [&'static str],
    pub name_rule: NameRule,
    pub status: StatusPolicy,
    /// Whether `metadata.generation` tracks spec changes.
    pub has_spec: bool,
    /// Field selectors beyond `metadata.name` and `metadata.namespace`.
    pub field_selectors: &'static [Field],
    pub strategy: &'static dyn Strategy,
    /// What the generic write path does differently for this kind.
    pub hooks: &'static dyn Hooks,
}

impl std::fmt::Debug for ResourceType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.qualified())
    }
}

impl ResourceType {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `deployments.apps`, `pods`: how Kubernetes names a resource in messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    fn group_dir(&self) -> &'static str {
        if self.group.is_empty() {
            "core"
        } else {
            self.group
        }
    }

    /// The store prefix of this resource's objects, within one namespace if given.
    pub fn prefix(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("/{}/{}/{}/", self.group_dir(), self.plural, ns),
            _ => format!("/{}/{}/", self.group_dir(), self.plural),
        }
    }

    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        format!("{}{}", self.prefix(namespace), name)
    }

    pub fn has_subresource(&self, sub: &str) -> bool {
        self.subresources.contains(&sub)
    }

    /// The field a field selector names, if the resource supports it.
    pub fn field(&self, name: &str) -> Option<Field> {
        const NAME: Field = Field::string("metadata.name");
        const NAMESPACE: Field = Field::string("metadata.namespace");
        match name {
            "metadata.name" => Some(NAME),
            "metadata.namespace" if self.namespaced => Some(NAMESPACE),
            _ => self
                .field_selectors
                .iter()
                .find(|f| f.name == name)
                .copied(),
        }
    }
}

const fn typed<K: Kind>() -> &'static dyn Strategy {
    &Typed::<K>(std::marker::PhantomData)
}

/// All served resources.
pub struct Registry {
    /// Leaked once per registry so handlers and watch tasks can hold `&'static` types.
    pub resources: &'static [ResourceType],
}

impl Registry {
    pub fn new() -> Self {
        let mut resources = Vec::new();
        core::register(&mut resources);
        apps::register(&mut resources);
        batch::register(&mut resources);
        discovery::register(&mut resources);
        other::register(&mut resources);
        Registry {
            resources: Box::leak(resources.into_boxed_slice()),
        }
    }

    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
        self.resources
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
    }

    /// Served group-versions in discovery order (core first).
    pub fn group_versions(&self) -> Vec<(&'static str, &'static str)> {
        let mut out: Vec<(&str, &str)> = Vec::new();
        for r in self.resources {
            if !out.contains(&(r.group, r.version)) {
                out.push((r.group, r.version));
            }
        }
        out
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

/// Fields that every `ResourceType` literal repeats.
pub(crate) struct Base;
impl Base {
    pub(crate) const fn core(
        kind: &'static str,
        plural: &'static str,
        singular: &'static str,
        strategy: &'static dyn Strategy,
    ) -> ResourceType {
        ResourceType {
            group: "",
            version: "v1",
            kind,
            plural,
            singular,
            namespaced: true,
            short_names: &[],
            categories: &[],
            subresources: &[],
            name_rule: NameRule::Dns1123Subdomain,
            status: StatusPolicy::None,
            has_spec: false,
            field_selectors: &[],
            strategy,
            hooks: &hooks::Plain,
        }
    }
}
