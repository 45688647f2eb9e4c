//! The one write path: every create, update, patch and delete — from HTTP handlers,
//! controllers or the scheduler — goes through [`Objects`], which fills in system
//! metadata, runs the admission chain ([`admission`]: plugins around the resource's own
//! defaulting and validation), enforces status and finalizer semantics, and talks to the
//! [`Store`]. What a kind does differently (graceful deletion, address allocation, its
//! own finalizers) it says through its [`crate::registry::Hooks`], and subresource rules
//! (binding, finalize, scale) are registry functions handed to the generic update loops.
//! Only [`Objects::bind_pod`], the scheduler's entry point, names a kind (pods).

pub mod admission;
mod error;
pub mod managed;
pub mod patch;
mod watch;

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Map, Value};

pub use crate::registry::KUBERNETES_SERVICE_IP;
pub use admission::{Admission, ALWAYS_ON_PLUGINS, DEFAULT_TOLERATION_SECONDS, OPTIONAL_PLUGINS};
pub use error::ObjectError;
pub use patch::PatchType;
pub use watch::{parsed_event, WatchFilter, WatchItem, WatchStream};

use crate::registry::validation::{Errors, FieldError};
use crate::registry::{
    validate_object_meta, AdmitError, ObjectMetaRules, Operation, Registry, ResourceType,
    StatusPolicy,
};
use crate::selectors::{FieldSelector, Selector};
use crate::store::{Precondition, Revision, Store, StoreError, Stored};
use admission::{Attributes, Chain};

/// How unknown fields in a request body are treated (`fieldValidation`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    #[default]
    Warn,
    Strict,
}

#[derive(Clone, Debug, Default)]
pub struct WriteOptions {
    pub dry_run: bool,
    pub field_manager: Option<String>,
    pub validation: FieldValidation,
    /// Server-side apply: take fields owned by other managers.
    pub force: bool,
}

/// The outcome of a write.
#[derive(Debug)]
pub struct Written {
    pub object: Bytes,
    pub created: bool,
    /// `Warning` headers for the client (unknown fields under `Warn`).
    pub warnings: Vec<String>,
}

/// Runs CPU-heavy work (patching a large object) so that it does not stall the other
/// requests and watches served by the same worker thread.
/// Small work (almost every patch) runs in place: handing the worker over costs more.
fn heavy<T>(big: bool, f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) if big => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Whether a patch is large enough (in JSON nodes, counted up to the limit) for `heavy`.
fn is_big(v: &Value) -> bool {
    const NODES: usize = 10_000;
    fn count(v: &Value, n: &mut usize) {
        *n += 1;
        if *n > NODES {
            return;
        }
        match v {
            Value::Array(a) => a.iter().for_each(|x| count(x, n)),
            Value::Object(m) => m.values().for_each(|x| count(x, n)),
            _ => {}
        }
    }
    let mut n = 0;
    count(v, &mut n);
    n > NODES
}

/// How a JSON value is named in messages.
fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A stored object that does not decode: the server's fault (500), named clearly.
fn stored_corrupt(rt: &ResourceType, name: &str, why: String) -> ObjectError {
    ObjectError::Store(StoreError::Corrupt(format!(
        "the stored {} {name:?} cannot be decoded: {why}",
        rt.qualified()
    )))
}

#[derive(Clone, Debug, Default)]
pub struct ListOptions {
    pub labels: Selector,
    pub fields: FieldSelector,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
    /// Where a watch starts; for a list, the snapshot to read when `exact`.
    pub resource_version: Option<Revision>,
    /// `resourceVersionMatch=Exact`: list as of `resource_version` (otherwise the newest).
    pub exact: bool,
}

#[derive(Debug)]
pub struct ListPage {
    pub items: Vec<Bytes>,
    pub rev: Revision,
    pub continue_token: Option<String>,
    pub remaining: Option<i64>,
}

#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    pub grace_period_seconds: Option<i64>,
    pub propagation_policy: Option<String>,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<Revision>,
    pub dry_run: bool,
}

/// What to write to: the object itself, or one of its subresources.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Main,
    Status,
}

/// Alphabet Kubernetes uses for `generateName` suffixes (no vowels, no look-alikes).
const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
/// Every round of a read-modify-write race has a winner, so N racing writers need at most
/// N rounds (Kubernetes' GuaranteedUpdate loops without bound); this only stops a bug.
const MAX_UPDATE_RETRIES: usize = 256;

pub fn now() -> jiff::Timestamp {
    jiff::Timestamp::from_second(jiff::Timestamp::now().as_second()).expect("now is in range")
}

pub fn now_string() -> String {
    now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

pub(crate) fn meta(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata").and_then(Value::as_object)
}

pub(crate) fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["metadata"]
        .as_object_mut()
        .expect("metadata is an object")
}

pub(crate) fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    meta(obj).and_then(|m| m.get(field)).and_then(Value::as_str)
}

fn parse_rv(s: &str) -> Result<Revision, ObjectError> {
    s.parse()
        .map_err(|_| ObjectError::BadRequest(format!("invalid resource version: {s:?}")))
}

/// Fields present in the request but dropped by decoding into the typed object.
pub fn unknown_fields(input: &Value, output: &Value, path: &str, out: &mut Vec<String>) {
    match (input, output) {
        (Value::Object(i), Value::Object(o)) => {
            for (k, v) in i {
                if v.is_null() {
                    continue;
                }
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match o.get(k) {
                    Some(ov) => unknown_fields(v, ov, &p, out),
                    None => out.push(p),
                }
            }
        }
        (Value::Array(i), Value::Array(o)) => {
            for (n, (iv, ov)) in i.iter().zip(o).enumerate() {
                unknown_fields(iv, ov, &format!("{path}[{n}]"), out);
            }
        }
        _ => {}
    }
}

fn random_suffix() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..5)
        .map(|_| NAME_ALPHABET[rng.random_range(0..NAME_ALPHABET.len())] as char)
        .collect()
}

/// The continue token: the snapshot revision and the last key returned.
fn encode_continue(rev: Revision, key: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(json!({"v": "meta.k8s.io/v1", "rv": rev, "start": key}).to_string())
}

fn decode_continue(token: &str) -> Result<(Revision, String), ObjectError> {
    use base64::Engine;
    let bad = || {
        ObjectError::BadRequest("continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)".into())
    };
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    match (v["rv"].as_u64(), v["start"].as_str()) {
        (Some(rv), Some(start)) => Ok((rv, start.to_string())),
        _ => Err(bad()),
    }
}

pub struct Objects {
    store: Arc<dyn Store>,
    registry: Arc<Registry>,
    admission: Chain,
    /// Serializes the writes of kinds that allocate from a shared pool (Services' IPs and
    /// node ports), so that two cannot take the same value.
    alloc: tokio::sync::Mutex<()>,
}

impl Objects {
    pub fn new(store: Arc<dyn Store>, registry: Arc<Registry>) -> Self {
        Objects {
            store,
            registry,
            admission: Chain::new(&Admission::default()),
            alloc: tokio::sync::Mutex::new(()),
        }
    }

    /// The same, with the built-in admission plugins set so.
    pub fn with_admission(mut self, admission: Admission) -> Self {
        self.admission = Chain::new(&admission);
        self
    }

    /// The same, with this admission chain.
    pub fn with_admission_chain(mut self, chain: Chain) -> Self {
        self.admission = chain;
        self
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn key(rt: &ResourceType, ns: Option<&str>, name: &str) -> String {
        rt.key(ns, name)
    }

    pub async fn get(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Stored, ObjectError> {
        self.store
            .get(&Self::key(rt, ns, name))
            .await?
            .ok_or_else(|| ObjectError::not_found(rt, name))
    }

    pub async fn get_value(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
    ) -> Result<(Value, Revision), ObjectError> {
        let s = self.get(rt, ns, name).await?;
        Ok((s.to_value()?, s.rev))
    }

    pub async fn list(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        opts: &ListOptions,
    ) -> Result<ListPage, ObjectError> {
        let (at, after) = match &opts.continue_token {
            Some(t) => {
                let (rev, key) = decode_continue(t)?;
                (Some(rev), Some(key))
            }
            None => (opts.resource_version.filter(|r| opts.exact && *r > 0), None),
        };
        let prefix = rt.prefix(ns);
        // A name selector narrows the scan to one key.
        let result = self.store.list(&prefix, after.as_deref(), opts.limit, at).await.map_err(|e| match e {
            StoreError::Compacted { .. } if opts.continue_token.is_some() => ObjectError::Gone(
                "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.".into(),
            ),
            e => e.into(),
        })?;
        let filtering = !opts.labels.is_empty() || !opts.fields.is_empty();
        let mut items = Vec::with_capacity(result.items.len());
        for (_, s) in result.items {
            if filtering {
                let v = s.to_value()?;
                if !self.matches(&v, &opts.labels, &opts.fields) {
                    continue;
                }
            }
            items.push(s.data);
        }
        Ok(ListPage {
            items,
            rev: result.rev,
            continue_token: result
                .continue_after
                .map(|k| encode_continue(result.rev, &k)),
            remaining: None,
        })
    }

    pub fn matches(&self, obj: &Value, labels: &Selector, fields: &FieldSelector) -> bool {
        labels.matches_labels(
            meta(obj)
                .and_then(|m| m.get("labels"))
                .and_then(Value::as_object),
        ) && fields.matches(obj)
    }

    /// Runs the kind's defaulting and validation (metadata included). Metadata errors come
    /// first, then the kind's own, all in one `Invalid` error.
    fn admit(
        &self,
        rt: &ResourceType,
        obj: &Value,
        old: Option<&Value>,
        op: Operation,
    ) -> Result<Value, ObjectError> {
        let name = meta_str(obj, "name").unwrap_or_default().to_string();
        let decode_meta = |v: &Value| {
            serde_json::from_value::<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>(
                v.get("metadata").cloned().unwrap_or(json!({})),
            )
        };
        let new_meta = decode_meta(obj).map_err(|e| {
            ObjectError::BadRequest(format!(
                "{} in version \"{}\" cannot be handled as a {}: metadata: {e}",
                rt.kind, rt.version, rt.kind
            ))
        })?;
        let old_meta = old
            .map(decode_meta)
            .transpose()
            .map_err(|e| stored_corrupt(rt, &name, format!("metadata: {e}")))?;
        let mut errs = Errors::default();
        validate_object_meta(
            &new_meta,
            old_meta.as_ref(),
            &ObjectMetaRules {
                namespaced: rt.namespaced,
                name_rule: rt.name_rule,
            },
            &mut errs,
        );
        match rt.strategy.admit(obj, old, op) {
            Ok(out) if errs.is_empty() => Ok(out),
            Ok(_) => Err(ObjectError::invalid(rt, &name, errs)),
            Err(AdmitError::Decode(msg)) => Err(ObjectError::BadRequest(format!(
                "{} in version \"{}\" cannot be handled as a {}: {msg}",
                rt.kind, rt.version, rt.kind
            ))),
            Err(AdmitError::Invalid(more)) => {
                errs.0.extend(more.0);
                Err(ObjectError::invalid(rt, &name, errs))
            }
            Err(AdmitError::Stored(msg)) => Err(stored_corrupt(rt, &name, msg)),
        }
    }

    /// Checks unknown fields under the request's field validation mode.
    fn check_unknown(
        rt: &ResourceType,
        input: &Value,
        output: &Value,
        skip: &[&str],
        mode: FieldValidation,
    ) -> Result<Vec<String>, ObjectError> {
        if mode == FieldValidation::Ignore {
            return Ok(Vec::new());
        }
        let mut unknown = Vec::new();
        if let (Some(i), Some(o)) = (input.as_object(), output.as_object()) {
            for (k, v) in i {
                if skip.contains(&k.as_str()) || v.is_null() || k == "apiVersion" || k == "kind" {
                    continue;
                }
                match o.get(k) {
                    Some(ov) => unknown_fields(v, ov, k, &mut unknown),
                    None => unknown.push(k.clone()),
                }
            }
        }
        // Known fields the server owns are dropped by design, not unknown; so is Secrets'
        // stringData (folded into data).
        const SERVER_OWNED: &[&str] = &[
            "metadata.resourceVersion",
            "metadata.selfLink",
            "metadata.generation",
            "metadata.uid",
            "metadata.creationTimestamp",
            "metadata.deletionTimestamp",
            "metadata.deletionGracePeriodSeconds",
        ];
        let input_only = |f: &str| {
            rt.hooks
                .input_fields()
                .iter()
                .any(|i| f == *i || f.strip_prefix(i).is_some_and(|r| r.starts_with('.')))
        };
        unknown.retain(|f| !input_only(f) && !SERVER_OWNED.contains(&f.as_str()));
        let msgs: Vec<String> = unknown
            .iter()
            .map(|f| format!("unknown field {f:?}"))
            .collect();
        match mode {
            FieldValidation::Strict if !msgs.is_empty() => Err(ObjectError::BadRequest(format!(
                "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {}",
                rt.kind,
                rt.version,
                rt.kind,
                msgs.join(", ")
            ))),
            _ => Ok(msgs),
        }
    }

    pub async fn create(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        input: Value,
        opts: &WriteOptions,
    ) -> Result<Written, ObjectError> {
        let mut obj = input.clone();
        if !obj.is_object() {
            return Err(ObjectError::BadRequest(
                "the body of the request was in an unknown format".into(),
            ));
        }
        obj["apiVersion"] = json!(rt.api_version());
        obj["kind"] = json!(rt.kind);
        let m = meta_mut(&mut obj);
        match (rt.namespaced, ns, m.get("namespace").and_then(Value::as_str)) {
            (true, Some(req), Some(body)) if !body.is_empty() && body != req => {
                return Err(ObjectError::BadRequest("the namespace of the provided object does not match the namespace sent on the request".into()))
            }
            (true, Some(req), _) => {
                m.insert("namespace".into(), json!(req));
            }
            (false, _, _) => {
                m.remove("namespace");
            }
            _ => {}
        }
        if m.get("name")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            if let Some(g) = m
                .get("generateName")
                .and_then(Value::as_str)
                .filter(|g| !g.is_empty())
            {
                let name = format!("{g}{}", random_suffix());
                m.insert("name".into(), json!(name));
            }
        }
        if m.get("resourceVersion")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
        {
            return Err(ObjectError::BadRequest(
                "resourceVersion should not be set on objects to be created".into(),
            ));
        }
        m.remove("resourceVersion");
        m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        m.insert("creationTimestamp".into(), json!(now_string()));
        m.remove("deletionTimestamp");
        m.remove("deletionGracePeriodSeconds");
        m.remove("selfLink");
        if rt.has_spec {
            m.insert("generation".into(), json!(1));
        } else {
            m.remove("generation");
        }
        if rt.status == StatusPolicy::Subresource {
            // kube's PrepareForCreate resets status to its zero value, which it always
            // serializes: `{}` plus the kind's required fields, defaulted by admission.
            if let Some(o) = obj.as_object_mut() {
                o.insert("status".into(), json!({}));
            }
        }
        let name = meta_str(&obj, "name").unwrap_or_default().to_string();
        let attrs = Attributes {
            resource: rt,
            namespace: ns,
            name: &name,
            operation: Operation::Create,
            old: None,
            dry_run: opts.dry_run,
        };
        self.admission.mutate(&attrs, &mut obj, self).await?;
        let mut admitted = self.admit(rt, &obj, None, Operation::Create)?;
        let warnings = Self::check_unknown(rt, &input, &admitted, &["status"], opts.validation)?;
        if let Some(manager) = &opts.field_manager {
            managed::record_update(&mut admitted, None, manager, &rt.api_version(), "Update");
        }
        // Held until written.
        let _alloc = self.allocate(rt, &name, &mut admitted).await?;
        self.admission.validate(&attrs, &admitted, self).await?;
        if opts.dry_run {
            let data = serde_json::to_vec(&admitted).expect("a JSON value serializes");
            return Ok(Written {
                object: data.into(),
                created: true,
                warnings,
            });
        }
        let stored = self
            .store
            .put(&Self::key(rt, ns, &name), Precondition::Absent, admitted)
            .await
            .map_err(|e| match e {
                StoreError::AlreadyExists(_) => ObjectError::AlreadyExists {
                    resource: rt.qualified(),
                    group: rt.group.into(),
                    name: name.clone(),
                },
                e => e.into(),
            })?;
        Ok(Written {
            object: stored.data,
            created: true,
            warnings,
        })
    }

    /// Builds the object to store for an update of `target` from `input` over `old`.
    fn merge_for_update(rt: &ResourceType, input: &Value, old: &Value, target: Target) -> Value {
        let mut new = match target {
            Target::Main => {
                let mut n = input.clone();
                if rt.status != StatusPolicy::None {
                    match old.get("status") {
                        Some(s) => n["status"] = s.clone(),
                        None => {
                            n.as_object_mut().map(|o| o.remove("status"));
                        }
                    }
                }
                n
            }
            Target::Status => {
                // Only status changes; metadata stays as it was (resourceVersion aside).
                let mut n = old.clone();
                match input.get("status") {
                    Some(s) => n["status"] = s.clone(),
                    None => {
                        n.as_object_mut().map(|o| o.remove("status"));
                    }
                }
                if let Some(rv) = meta_str(input, "resourceVersion") {
                    meta_mut(&mut n).insert("resourceVersion".into(), json!(rv));
                } else {
                    meta_mut(&mut n).remove("resourceVersion");
                }
                n
            }
        };
        new["apiVersion"] = json!(rt.api_version());
        new["kind"] = json!(rt.kind);
        // System fields cannot be changed by clients.
        let om = meta(old).cloned().unwrap_or_default();
        let m = meta_mut(&mut new);
        for f in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "namespace",
        ] {
            match om.get(f) {
                Some(v) if f != "namespace" || m.get(f).is_none_or(|n| n.as_str() == Some("")) => {
                    m.insert(f.into(), v.clone());
                }
                Some(_) => {}
                None => {
                    m.remove(f);
                }
            }
        }
        if m.get("name")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            if let Some(n) = om.get("name") {
                m.insert("name".into(), n.clone());
            }
        }
        new
    }

    /// Replaces an object (PUT). Creates it when the resource allows create-on-update.
    pub async fn update(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        input: Value,
        target: Target,
        opts: &WriteOptions,
    ) -> Result<Written, ObjectError> {
        if !input.is_object() {
            return Err(ObjectError::BadRequest(
                "the body of the request was in an unknown format".into(),
            ));
        }
        match self
            .update_with(rt, ns, name, target, opts, |_| Ok(input.clone()))
            .await
        {
            Err(ObjectError::NotFound { .. })
                if target == Target::Main && rt.hooks.allow_create_on_update() =>
            {
                let mut obj = input;
                meta_mut(&mut obj).insert("name".into(), json!(name));
                meta_mut(&mut obj).remove("resourceVersion");
                self.create(rt, ns, obj, opts).await
            }
            other => other,
        }
    }

    /// Applies a patch of any Kubernetes patch type (server-side apply included).
    #[allow(clippy::too_many_arguments)]
    pub async fn patch(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        ptype: PatchType,
        patch: Value,
        target: Target,
        opts: &WriteOptions,
    ) -> Result<Written, ObjectError> {
        let big = is_big(&patch);
        if ptype != PatchType::Apply {
            return self
                .update_with(rt, ns, name, target, opts, |old| {
                    let out = heavy(big, || match ptype {
                        PatchType::Json => patch::json_patch(old, &patch),
                        PatchType::Merge => patch::merge_patch(old, &patch),
                        _ => patch::strategic_merge(rt.kind, old, &patch),
                    });
                    out.map_err(|e| ObjectError::PatchFailed(e.to_string()))
                })
                .await;
        }
        let Some(manager) = opts.field_manager.clone().filter(|m| !m.is_empty()) else {
            return Err(ObjectError::Invalid {
                kind: "PatchOptions".into(),
                group: "meta.k8s.io".into(),
                name: String::new(),
                errors: vec![FieldError {
                    field: "fieldManager".into(),
                    kind: crate::registry::validation::ErrorType::Required,
                    detail: "is required for apply patch".into(),
                }],
            });
        };
        if !patch.is_object() {
            return Err(ObjectError::BadRequest(
                "error decoding YAML: the applied configuration must be an object".into(),
            ));
        }
        for (field, want) in [
            ("apiVersion", rt.api_version()),
            ("kind", rt.kind.to_string()),
        ] {
            if patch.get(field).and_then(Value::as_str) != Some(want.as_str()) {
                return Err(ObjectError::BadRequest(format!(
                    "{field} must be {want:?} in an applied configuration of {}",
                    rt.qualified()
                )));
            }
        }
        let av = rt.api_version();
        // The entries apply() writes are final: the inner write must not add its own.
        let inner = WriteOptions {
            field_manager: None,
            ..opts.clone()
        };
        let conflict = |e: managed::ApplyError| match e {
            managed::ApplyError::Conflicts(c) => ObjectError::ApplyConflict {
                message: managed::describe_conflicts(&c),
                causes: c
                    .iter()
                    .map(|c| {
                        (
                            format!("conflict with \"{}\" using {}", c.manager, c.api_version),
                            c.field.clone(),
                        )
                    })
                    .collect(),
            },
            // kube-apiserver's words.
            managed::ApplyError::Invalid(msg) => ObjectError::BadRequest(format!(
                "failed to create typed patch object ({}{name}; {}, Kind={}): {msg}",
                ns.map(|n| format!("{n}/")).unwrap_or_default(),
                av,
                rt.kind
            )),
        };
        match self
            .update_with(rt, ns, name, target, &inner, |old| {
                heavy(big, || {
                    managed::apply(Some(old), &patch, &manager, &av, opts.force)
                })
                .map_err(conflict)
            })
            .await
        {
            Err(ObjectError::NotFound { .. }) if target == Target::Main => {
                let mut obj =
                    managed::apply(None, &patch, &manager, &av, opts.force).map_err(conflict)?;
                meta_mut(&mut obj).insert("name".into(), json!(name));
                self.create(rt, ns, obj, &inner).await
            }
            other => other,
        }
    }

    /// Admits `new` over `old` and stores it if anything changed.
    #[allow(clippy::too_many_arguments)]
    async fn write_update(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        input: &Value,
        mut new: Value,
        old: &Value,
        old_rev: Revision,
        target: Target,
        opts: &WriteOptions,
        skip: &[&str],
    ) -> Result<Written, ObjectError> {
        meta_mut(&mut new).remove("resourceVersion");
        rt.hooks.prepare_update(old, &mut new);
        let op = if target == Target::Status {
            Operation::UpdateStatus
        } else {
            Operation::Update
        };
        let attrs = Attributes {
            resource: rt,
            namespace: ns,
            name,
            operation: op,
            old: Some(old),
            dry_run: opts.dry_run,
        };
        self.admission.mutate(&attrs, &mut new, self).await?;
        let mut admitted = self.admit(rt, &new, Some(old), op)?;
        let warnings = Self::check_unknown(rt, input, &admitted, skip, opts.validation)?;
        if rt.has_spec && admitted.get("spec") != old.get("spec") {
            let g = meta(old)
                .and_then(|m| m.get("generation"))
                .and_then(Value::as_i64)
                .unwrap_or(0);
            meta_mut(&mut admitted).insert("generation".into(), json!(g + 1));
        }
        // Held until written, as on create.
        let _alloc = match target {
            Target::Main => self.allocate(rt, name, &mut admitted).await?,
            Target::Status => None,
        };
        self.admission.validate(&attrs, &admitted, self).await?;
        if let Some(manager) = &opts.field_manager {
            managed::record_update(
                &mut admitted,
                Some(old),
                manager,
                &rt.api_version(),
                "Update",
            );
        }
        let mut old_cmp = old.clone();
        meta_mut(&mut old_cmp).remove("resourceVersion");
        if managed::equal_ignoring_times(&admitted, &old_cmp) {
            // A no-op update is not written (and bumps nothing), as in Kubernetes.
            let data = serde_json::to_vec(old).expect("a JSON value serializes");
            return Ok(Written {
                object: data.into(),
                created: false,
                warnings,
            });
        }
        if opts.dry_run {
            let data = serde_json::to_vec(&admitted).expect("a JSON value serializes");
            return Ok(Written {
                object: data.into(),
                created: false,
                warnings,
            });
        }
        let key = Self::key(rt, ns, name);
        // An object being deleted goes away once its last finalizer is removed.
        let deleting = meta(&admitted)
            .and_then(|m| m.get("deletionTimestamp"))
            .is_some_and(|v| !v.is_null());
        let finalizers_left = meta(&admitted)
            .and_then(|m| m.get("finalizers"))
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        // A graceful deletion (a bound pod) waits for its node agent, whatever else is
        // written meanwhile (its status, say): the agent ends it with a zero grace period.
        let grace_pending = meta(&admitted)
            .and_then(|m| m.get("deletionGracePeriodSeconds"))
            .and_then(Value::as_i64)
            .is_some_and(|g| g > 0);
        if deleting && !finalizers_left && !grace_pending && !rt.hooks.finalizing(&admitted) {
            let put = self
                .store
                .put(&key, Precondition::Exists(Some(old_rev)), admitted)
                .await
                .map_err(|e| self.map_write_err(rt, name, e))?;
            let gone = self
                .store
                .delete(&key, Some(put.rev))
                .await
                .map_err(|e| self.map_write_err(rt, name, e))?;
            return Ok(Written {
                object: gone.data,
                created: false,
                warnings,
            });
        }
        let stored = self
            .store
            .put(&key, Precondition::Exists(Some(old_rev)), admitted)
            .await
            .map_err(|e| self.map_write_err(rt, name, e))?;
        Ok(Written {
            object: stored.data,
            created: false,
            warnings,
        })
    }

    /// For a kind that allocates from a shared pool, takes what `obj` needs given every
    /// other object of the resource; the guard returned keeps others from allocating
    /// until the write is done.
    async fn allocate(
        &self,
        rt: &ResourceType,
        name: &str,
        obj: &mut Value,
    ) -> Result<Option<tokio::sync::MutexGuard<'_, ()>>, ObjectError> {
        if !rt.hooks.allocates() {
            return Ok(None);
        }
        let guard = self.alloc.lock().await;
        let mine = meta(obj).and_then(|m| m.get("uid")).cloned();
        let others: Vec<Value> = self
            .list(rt, None, &ListOptions::default())
            .await?
            .items
            .iter()
            .filter_map(|b| serde_json::from_slice::<Value>(b).ok())
            .filter(|o| meta(o).and_then(|m| m.get("uid")) != mine.as_ref())
            .collect();
        rt.hooks
            .allocate(&others, obj)
            .map_err(|errs| ObjectError::invalid(rt, name, errs))?;
        Ok(Some(guard))
    }

    fn map_write_err(&self, rt: &ResourceType, name: &str, e: StoreError) -> ObjectError {
        match e {
            StoreError::Conflict { .. } => ObjectError::conflict(rt, name),
            StoreError::NotFound(_) => ObjectError::not_found(rt, name),
            e => e.into(),
        }
    }

    /// Read-modify-write with retries on conflict, as Kubernetes' GuaranteedUpdate: `change`
    /// turns the current object into the requested one (or fails).
    pub async fn update_with<F>(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        target: Target,
        opts: &WriteOptions,
        mut change: F,
    ) -> Result<Written, ObjectError>
    where
        F: FnMut(&Value) -> Result<Value, ObjectError>,
    {
        for _ in 0..MAX_UPDATE_RETRIES {
            let current = self.get(rt, ns, name).await?;
            let old = current.to_value()?;
            let input = change(&old)?;
            if !input.is_object() {
                // A JSON patch may replace the whole document (`"path": ""`) with anything.
                return Err(ObjectError::BadRequest(format!(
                    "the request produced {}, not a {} object",
                    json_kind(&input),
                    rt.kind
                )));
            }
            // A resourceVersion in the request (a PUT body, or one a patch sets) is a
            // precondition. A patch result carries the version it was applied to, so a
            // lost race is retried: on the next round a pinned version no longer matches.
            let pinned = match meta_str(&input, "resourceVersion").filter(|s| !s.is_empty()) {
                Some(rv) => Some(parse_rv(rv)?),
                None => None,
            };
            if pinned.is_some_and(|p| p != current.rev) {
                return Err(ObjectError::conflict(rt, name));
            }
            if let Some(n) = meta_str(&input, "name").filter(|n| *n != name) {
                return Err(ObjectError::BadRequest(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
            let new = Self::merge_for_update(rt, &input, &old, target);
            let skip: &[&str] = if target == Target::Status {
                &["spec", "metadata"]
            } else {
                &["status"]
            };
            match self
                .write_update(
                    rt,
                    ns,
                    name,
                    &input,
                    new,
                    &old,
                    current.rev,
                    target,
                    opts,
                    skip,
                )
                .await
            {
                Err(ObjectError::Conflict { .. }) => self.store.settle().await?,
                other => return other,
            }
        }
        Err(ObjectError::conflict(rt, name))
    }

    /// Deletes an object, or marks it for deletion when finalizers or a grace period apply.
    pub async fn delete(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Written, ObjectError> {
        let key = Self::key(rt, ns, name);
        for _ in 0..MAX_UPDATE_RETRIES {
            let current = self.get(rt, ns, name).await?;
            let mut obj = current.to_value()?;
            let attrs = Attributes {
                resource: rt,
                namespace: ns,
                name,
                operation: Operation::Delete,
                old: Some(&obj),
                dry_run: opts.dry_run,
            };
            self.admission.admit_delete(&attrs, self).await?;
            check_preconditions(rt, name, &obj, current.rev, opts)?;
            let already = meta(&obj)
                .and_then(|m| m.get("deletionTimestamp"))
                .is_some_and(|v| !v.is_null());
            let mut finalizers: Vec<Value> = meta(&obj)
                .and_then(|m| m.get("finalizers"))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            match opts.propagation_policy.as_deref() {
                Some("Foreground") if !finalizers.contains(&json!("foregroundDeletion")) => {
                    finalizers.push(json!("foregroundDeletion"))
                }
                Some("Orphan") if !finalizers.contains(&json!("orphan")) => {
                    finalizers.push(json!("orphan"))
                }
                _ => {}
            }
            let graceful = rt.hooks.graceful_delete(&obj, opts.grace_period_seconds);
            let must_wait =
                !finalizers.is_empty() || graceful.is_some() || rt.hooks.finalizing(&obj);
            if !must_wait {
                if opts.dry_run {
                    return Ok(Written {
                        object: current.data,
                        created: false,
                        warnings: vec![],
                    });
                }
                match self.store.delete(&key, Some(current.rev)).await {
                    Ok(gone) => {
                        return Ok(Written {
                            object: gone.data,
                            created: false,
                            warnings: vec![],
                        })
                    }
                    // Written meanwhile (a pod's status, say): look again. (Falling through
                    // took a terminating object for "already marked" and kept it.)
                    Err(StoreError::Conflict { .. }) => {
                        self.store.settle().await?;
                        continue;
                    }
                    Err(e) => return Err(self.map_write_err(rt, name, e)),
                }
            }
            if already && graceful.is_none() {
                // Already being deleted: nothing more to mark.
                return Ok(Written {
                    object: current.data,
                    created: false,
                    warnings: vec![],
                });
            }
            let m = meta_mut(&mut obj);
            if !already {
                let when = match graceful {
                    Some(g) => jiff::Timestamp::from_second(now().as_second() + g)
                        .unwrap_or_else(|_| now()),
                    None => now(),
                };
                m.insert(
                    "deletionTimestamp".into(),
                    json!(when.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()),
                );
                m.insert(
                    "deletionGracePeriodSeconds".into(),
                    json!(graceful.unwrap_or(0)),
                );
                let g = m.get("generation").and_then(Value::as_i64);
                if let Some(g) = g {
                    m.insert("generation".into(), json!(g + 1));
                }
            } else if let Some(g) = graceful {
                // A shorter grace period may replace a longer one.
                let cur = m
                    .get("deletionGracePeriodSeconds")
                    .and_then(Value::as_i64)
                    .unwrap_or(i64::MAX);
                if g >= cur {
                    return Ok(Written {
                        object: current.data,
                        created: false,
                        warnings: vec![],
                    });
                }
                m.insert("deletionGracePeriodSeconds".into(), json!(g));
            }
            if !finalizers.is_empty() {
                m.insert("finalizers".into(), Value::Array(finalizers));
            }
            rt.hooks.mark_deleting(&mut obj);
            meta_mut(&mut obj).remove("resourceVersion");
            if opts.dry_run {
                let data = serde_json::to_vec(&obj).expect("a JSON value serializes");
                return Ok(Written {
                    object: data.into(),
                    created: false,
                    warnings: vec![],
                });
            }
            match self
                .store
                .put(&key, Precondition::Exists(Some(current.rev)), obj)
                .await
            {
                Ok(s) => {
                    return Ok(Written {
                        object: s.data,
                        created: false,
                        warnings: vec![],
                    })
                }
                Err(StoreError::Conflict { .. }) => self.store.settle().await?,
                Err(e) => return Err(self.map_write_err(rt, name, e)),
            }
        }
        Err(ObjectError::conflict(rt, name))
    }

    /// Deletes every object a list selects, each through [`Objects::delete`] (so each
    /// meets admission); the first error, not-found aside, ends the collection there.
    pub async fn delete_collection(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        list: &ListOptions,
        opts: &DeleteOptions,
    ) -> Result<Vec<Bytes>, ObjectError> {
        let page = self
            .list(
                rt,
                ns,
                &ListOptions {
                    limit: None,
                    continue_token: None,
                    ..list.clone()
                },
            )
            .await?;
        let mut out = Vec::new();
        for item in page.items {
            let v: Value = serde_json::from_slice(&item)
                .map_err(|e| ObjectError::Store(StoreError::Corrupt(e.to_string())))?;
            let name = meta_str(&v, "name").unwrap_or_default().to_string();
            let item_ns = meta_str(&v, "namespace").map(str::to_string);
            match self.delete(rt, item_ns.as_deref(), &name, opts).await {
                Ok(w) => out.push(w.object),
                Err(ObjectError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// A watch on one resource (optionally one namespace) from `from`.
    pub fn watch(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        from: Revision,
        filter: WatchFilter,
    ) -> Result<watch::WatchStream, ObjectError> {
        let rx = self.store.watch(&rt.prefix(ns), from)?;
        Ok(watch::WatchStream::new(rx, filter))
    }
}

impl Objects {
    /// Binds a pod to a node (the `pods/binding` subresource).
    pub async fn bind_pod(&self, ns: &str, name: &str, node: &str) -> Result<Written, ObjectError> {
        self.bind_pod_from(ns, name, node, None).await
    }

    /// The same, starting from `known`, a copy of the pod (the scheduler's cache): no read
    /// of the store unless it turns out stale. The rules are the pod's
    /// ([`crate::registry::bind_pod`]).
    pub async fn bind_pod_from(
        &self,
        ns: &str,
        name: &str,
        node: &str,
        known: Option<&Value>,
    ) -> Result<Written, ObjectError> {
        let rt = self
            .registry
            .find("", "v1", "pods")
            .expect("pods are served");
        let written = self
            .rewrite(rt, Some(ns), name, known, |pod| {
                crate::registry::bind_pod(pod, node, &now_string()).map_err(|e| {
                    ObjectError::Conflict {
                        resource: rt.qualified(),
                        name: name.into(),
                        message: e.to_string(),
                    }
                })
            })
            .await?;
        // A binding is created.
        Ok(Written {
            created: true,
            ..written
        })
    }

    /// Read-modify-write of the stored object with retries on conflict, bypassing
    /// admission: for a subresource that sets what the object's own update may not (a
    /// pod's node). `known`, a recent copy of the object (a cache's), spares the first
    /// read; if stale, it loses the race and the next round reads the store.
    pub async fn rewrite<F>(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        known: Option<&Value>,
        mut change: F,
    ) -> Result<Written, ObjectError>
    where
        F: FnMut(&Value) -> Result<Value, ObjectError>,
    {
        let key = rt.key(ns, name);
        let mut known = known.and_then(|v| {
            let rev = meta_str(v, "resourceVersion")?.parse::<Revision>().ok()?;
            Some((rev, v.clone()))
        });
        for _ in 0..MAX_UPDATE_RETRIES {
            let (rev, current) = match known.take() {
                Some(k) => k,
                None => {
                    let current = self.get(rt, ns, name).await?;
                    (current.rev, current.to_value()?)
                }
            };
            let mut new = change(&current)?;
            meta_mut(&mut new).remove("resourceVersion");
            match self
                .store
                .put(&key, Precondition::Exists(Some(rev)), new)
                .await
            {
                Ok(s) => {
                    return Ok(Written {
                        object: s.data,
                        created: false,
                        warnings: vec![],
                    })
                }
                Err(StoreError::Conflict { .. }) => self.store.settle().await?,
                Err(e) => return Err(self.map_write_err(rt, name, e)),
            }
        }
        Err(ObjectError::conflict(rt, name))
    }
}

/// A delete's preconditions (uid, resourceVersion) against the object as stored at `rev`.
fn check_preconditions(
    rt: &ResourceType,
    name: &str,
    obj: &Value,
    rev: Revision,
    opts: &DeleteOptions,
) -> Result<(), ObjectError> {
    let failed = |message: String| ObjectError::Conflict {
        resource: rt.qualified(),
        name: name.into(),
        message,
    };
    if let Some(uid) = &opts.precondition_uid {
        let stored = meta_str(obj, "uid");
        if stored != Some(uid.as_str()) {
            return Err(failed(format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                stored.unwrap_or_default()
            )));
        }
    }
    if let Some(rv) = opts.precondition_rv.filter(|rv| *rv != rev) {
        return Err(failed(format!(
            "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {rev}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
