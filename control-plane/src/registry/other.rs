//! coordination.k8s.io/v1 Leases and node.k8s.io/v1 RuntimeClasses.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::node::v1::RuntimeClass;
use serde_json::Value;

use super::table::{self, Column, AGE, NAME};
use super::validation::{is_dns1123_label, Errors, DNS1123_LABEL_MSG};
use super::{typed, Base, Kind, ResourceType};

pub(super) fn register(out: &mut Vec<ResourceType>) {
    out.push(ResourceType {
        group: "coordination.k8s.io",
        hooks: &super::hooks::CreateOnUpdate,
        ..Base::core("Lease", "leases", "lease", typed::<Lease>())
    });
    out.push(ResourceType {
        group: "node.k8s.io",
        namespaced: false,
        ..Base::core(
            "RuntimeClass",
            "runtimeclasses",
            "runtimeclass",
            typed::<RuntimeClass>(),
        )
    });
}

const LEASE_COLUMNS: &[Column] = &[
    NAME,
    Column::new("Holder", "string", "The holder of the lease"),
    AGE,
];

impl Kind for Lease {
    fn validate(&self, errs: &mut Errors) {
        if let Some(d) = self
            .spec
            .as_ref()
            .and_then(|s| s.lease_duration_seconds)
            .filter(|d| *d <= 0)
        {
            errs.invalid("spec.leaseDurationSeconds", d, "must be greater than 0");
        }
    }
    fn columns() -> &'static [Column] {
        LEASE_COLUMNS
    }
    fn cells(&self, now: jiff::Timestamp) -> Vec<Value> {
        let holder = self
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.clone())
            .unwrap_or_default();
        vec![
            table::name(&self.metadata),
            holder.into(),
            table::age(self.meta_created(), now),
        ]
    }
}

const RUNTIMECLASS_COLUMNS: &[Column] = &[NAME, Column::new("Handler", "string", "Handler specifies the underlying runtime and configuration that the CRI implementation will use to handle pods of this class."), AGE];

impl Kind for RuntimeClass {
    fn validate(&self, errs: &mut Errors) {
        if self.handler.is_empty() {
            errs.required("handler");
        } else if !is_dns1123_label(&self.handler) {
            errs.invalid_str("handler", &self.handler, DNS1123_LABEL_MSG);
        }
    }
    fn validate_update(&self, old: &Self, errs: &mut Errors) {
        if self.handler != old.handler {
            errs.invalid_str("handler", &self.handler, "field is immutable");
        }
    }
    fn columns() -> &'static [Column] {
        RUNTIMECLASS_COLUMNS
    }
    fn cells(&self, now: jiff::Timestamp) -> Vec<Value> {
        vec![
            table::name(&self.metadata),
            self.handler.clone().into(),
            table::age(self.meta_created(), now),
        ]
    }
}
