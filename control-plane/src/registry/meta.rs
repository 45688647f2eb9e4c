//! `metadata` rules shared by every kind.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::validation::{
    check_qualified_name, is_dns1123_label, validate_annotations, validate_labels, Errors,
    NameRule, DNS1123_LABEL_MSG,
};

/// What the kind requires of its metadata.
pub struct ObjectMetaRules {
    pub namespaced: bool,
    pub name_rule: NameRule,
}

/// Validates `metadata` (and, on update, what may not change).
pub fn validate_object_meta(
    meta: &ObjectMeta,
    old: Option<&ObjectMeta>,
    rules: &ObjectMetaRules,
    errs: &mut Errors,
) {
    match meta.name.as_deref() {
        None | Some("") => errs.required_msg("metadata.name", "name or generateName is required"),
        Some(name) => {
            if let Some(msg) = rules.name_rule.check(name) {
                errs.invalid_str("metadata.name", name, msg);
            }
        }
    }
    if rules.namespaced {
        match meta.namespace.as_deref() {
            None | Some("") => errs.required("metadata.namespace"),
            Some(ns) if !is_dns1123_label(ns) => {
                errs.invalid_str("metadata.namespace", ns, DNS1123_LABEL_MSG)
            }
            _ => {}
        }
    } else if let Some(ns) = meta.namespace.as_deref().filter(|ns| !ns.is_empty()) {
        errs.forbidden(
            "metadata.namespace",
            format!("not allowed on this type ({ns:?})"),
        );
    }
    validate_labels(meta.labels.as_ref(), "metadata.labels", errs);
    validate_annotations(meta.annotations.as_ref(), "metadata.annotations", errs);
    for (i, f) in meta.finalizers.iter().flatten().enumerate() {
        if let Some(msg) = check_qualified_name(f) {
            errs.invalid_str(format!("metadata.finalizers[{i}]"), f, msg);
        }
    }
    let mut controllers = 0;
    for (i, r) in meta.owner_references.iter().flatten().enumerate() {
        let path = format!("metadata.ownerReferences[{i}]");
        if r.api_version.is_empty() {
            errs.invalid_str(
                format!("{path}.apiVersion"),
                &r.api_version,
                "version must not be empty",
            );
        }
        if r.kind.is_empty() {
            errs.invalid_str(format!("{path}.kind"), &r.kind, "kind must not be empty");
        }
        if r.name.is_empty() {
            errs.invalid_str(format!("{path}.name"), &r.name, "name must not be empty");
        }
        if r.uid.is_empty() {
            errs.invalid_str(format!("{path}.uid"), &r.uid, "uid must not be empty");
        }
        if r.controller == Some(true) {
            controllers += 1;
        }
    }
    if controllers > 1 {
        errs.invalid(
            "metadata.ownerReferences",
            "[...]",
            "Only one reference can have Controller set to true",
        );
    }
    if let Some(old) = old {
        let immutable = |errs: &mut Errors, field: &str, new: Option<&str>, old: Option<&str>| {
            if new.unwrap_or_default() != old.unwrap_or_default() {
                errs.invalid_str(field, new.unwrap_or_default(), "field is immutable");
            }
        };
        immutable(
            errs,
            "metadata.name",
            meta.name.as_deref(),
            old.name.as_deref(),
        );
        immutable(
            errs,
            "metadata.namespace",
            meta.namespace.as_deref(),
            old.namespace.as_deref(),
        );
        immutable(
            errs,
            "metadata.uid",
            meta.uid.as_deref(),
            old.uid.as_deref(),
        );
    }
}
