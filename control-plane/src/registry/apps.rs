//! apps/v1: Deployments, ReplicaSets and DaemonSets.

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, Deployment, ReplicaSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

use super::core::{template_cells, CONTAINERS, IMAGES, SELECTOR};
use super::pod::{default_template, validate_template};
use super::table::{self, Column, AGE, NAME};
use super::validation::Errors;
use super::{typed, Base, Kind, Operation, ResourceType, StatusPolicy};
use crate::selectors::label_selector_string;

pub(super) fn register(out: &mut Vec<ResourceType>) {
    let apps = |kind, plural, singular, short: &'static [&'static str], strategy| ResourceType {
        group: "apps",
        short_names: short,
        categories: &["all"],
        subresources: &["status", "scale"],
        status: StatusPolicy::Subresource,
        has_spec: true,
        ..Base::core(kind, plural, singular, strategy)
    };
    out.push(apps(
        "Deployment",
        "deployments",
        "deployment",
        &["deploy"],
        typed::<Deployment>(),
    ));
    out.push(apps(
        "ReplicaSet",
        "replicasets",
        "replicaset",
        &["rs"],
        typed::<ReplicaSet>(),
    ));
    out.push(ResourceType {
        subresources: &["status"],
        ..apps(
            "DaemonSet",
            "daemonsets",
            "daemonset",
            &["ds"],
            typed::<DaemonSet>(),
        )
    });
    // The history of DaemonSets (and StatefulSets): one immutable object per template.
    out.push(ResourceType {
        group: "apps",
        ..Base::core(
            "ControllerRevision",
            "controllerrevisions",
            "controllerrevision",
            typed::<ControllerRevision>(),
        )
    });
}

const CR_COLUMNS: &[Column] = &[
    NAME,
    Column::new("Controller", "string", "Controller of the object"),
    Column::new(
        "Revision",
        "integer",
        "Revision indicates the revision of the state represented by Data.",
    ),
    AGE,
];

impl Kind for ControllerRevision {
    fn validate(&self, errs: &mut Errors) {
        if self.revision < 0 {
            errs.invalid(
                "revision",
                self.revision,
                "must be greater than or equal to 0",
            );
        }
    }
    fn validate_update(&self, old: &Self, errs: &mut Errors) {
        if self.data != old.data {
            errs.invalid("data", "", "field is immutable");
        }
    }
    fn columns() -> &'static [Column] {
        CR_COLUMNS
    }
    fn cells(&self, now: jiff::Timestamp) -> Vec<Value> {
        let controller = self
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|r| r.controller == Some(true))
            .map(|r| {
                let group = r.api_version.split_once('/').map_or("", |(g, _)| g);
                let kind = r.kind.to_lowercase();
                if group.is_empty() {
                    format!("{kind}/{}", r.name)
                } else {
                    format!("{kind}.{group}/{}", r.name)
                }
            })
            .unwrap_or_else(|| "<none>".into());
        vec![
            table::name(&self.metadata),
            controller.into(),
            self.revision.into(),
            table::age(self.meta_created(), now),
        ]
    }
}

const ALWAYS: &[&str] = &["Always"];

fn validate_replicas(replicas: Option<i32>, errs: &mut Errors) {
    if let Some(r) = replicas.filter(|r| *r < 0) {
        errs.invalid("spec.replicas", r, "must be greater than or equal to 0");
    }
}

fn selector_immutable(new: &LabelSelector, old: &LabelSelector, errs: &mut Errors) {
    if new != old {
        let shown = serde_json::to_string(new).unwrap_or_default();
        errs.invalid("spec.selector", shown, "field is immutable");
    }
}

fn selector_cell(s: &LabelSelector) -> Value {
    let s = label_selector_string(s);
    if s.is_empty() {
        "<none>".into()
    } else {
        s.into()
    }
}

const DEPLOYMENT_COLUMNS: &[Column] = &[
    NAME,
    Column::new("Ready", "string", "Number of the pod with ready state"),
    Column::new("Up-to-date", "string", "Total number of non-terminated pods targeted by this deployment that have the desired template spec."),
    Column::new("Available", "string", "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment."),
    AGE,
    CONTAINERS,
    IMAGES,
    SELECTOR,
];

impl Kind for Deployment {
    fn default_fields(&mut self, _op: Operation) {
        let spec = self.spec.get_or_insert_with(Default::default);
        spec.replicas.get_or_insert(1);
        let strategy = spec.strategy.get_or_insert_with(Default::default);
        let ty = strategy.type_.get_or_insert_with(|| "RollingUpdate".into());
        if ty == "RollingUpdate" {
            let ru = strategy.rolling_update.get_or_insert_with(Default::default);
            ru.max_unavailable
                .get_or_insert(IntOrString::String("25%".into()));
            ru.max_surge
                .get_or_insert(IntOrString::String("25%".into()));
        }
        spec.revision_history_limit.get_or_insert(10);
        spec.progress_deadline_seconds.get_or_insert(600);
        default_template(Some(&mut spec.template));
    }
    fn validate(&self, errs: &mut Errors) {
        let Some(spec) = &self.spec else {
            return errs.required("spec");
        };
        validate_replicas(spec.replicas, errs);
        validate_template(
            Some(&spec.selector),
            Some(&spec.template),
            "spec",
            ALWAYS,
            errs,
        );
        let ty = spec.strategy.as_ref().and_then(|s| s.type_.as_deref());
        errs.one_of(
            "spec.strategy.type",
            ty,
            &["Recreate", "RollingUpdate"],
            true,
        );
        if ty == Some("Recreate")
            && spec
                .strategy
                .as_ref()
                .is_some_and(|s| s.rolling_update.is_some())
        {
            errs.forbidden(
                "spec.strategy.rollingUpdate",
                "may not be specified when strategy `type` is 'Recreate'",
            );
        }
        if let Some(p) = spec.progress_deadline_seconds {
            if p <= spec.min_ready_seconds.unwrap_or(0) {
                errs.invalid(
                    "spec.progressDeadlineSeconds",
                    p,
                    "must be greater than minReadySeconds",
                );
            }
        }
    }
    fn validate_update(&self, old: &Self, errs: &mut Errors) {
        if let (Some(n), Some(o)) = (&self.spec, &old.spec) {
            selector_immutable(&n.selector, &o.selector, errs);
        }
    }
    fn columns() -> &'static [Column] {
        DEPLOYMENT_COLUMNS
    }
    fn cells(&self, now: jiff::Timestamp) -> Vec<Value> {
        let spec = self.spec.clone().unwrap_or_default();
        let status = self.status.clone().unwrap_or_default();
        let [c, i] = template_cells(Some(&spec.template));
        vec![
            table::name(&self.metadata),
            format!(
                "{}/{}",
                status.ready_replicas.unwrap_or(0),
                spec.replicas.unwrap_or(0)
            )
            .into(),
            status.updated_replicas.unwrap_or(0).into(),
            status.available_replicas.unwrap_or(0).into(),
            table::age(self.meta_created(), now),
            c,
            i,
            selector_cell(&spec.selector),
        ]
    }
}

const RS_COLUMNS: &[Column] = &[
    NAME,
    Column::new(
        "Desired",
        "integer",
        "Replicas is the number of desired replicas.",
    ),
    Column::new(
        "Current",
        "integer",
        "Replicas is the most recently observed number of replicas.",
    ),
    Column::new(
        "Ready",
        "integer",
        "The number of ready replicas for this replica set.",
    ),
    AGE,
    CONTAINERS,
    IMAGES,
    SELECTOR,
];

impl Kind for ReplicaSet {
    fn default_fields(&mut self, _op: Operation) {
        let spec = self.spec.get_or_insert_with(Default::default);
        spec.replicas.get_or_insert(1);
        default_template(spec.template.as_mut());
    }
    fn validate(&self, errs: &mut Errors) {
        let Some(spec) = &self.spec else {
            return errs.required("spec");
        };
        validate_replicas(spec.replicas, errs);
        validate_template(
            Some(&spec.selector),
            spec.template.as_ref(),
            "spec",
            ALWAYS,
            errs,
        );
    }
    fn validate_update(&self, old: &Self, errs: &mut Errors) {
        if let (Some(n), Some(o)) = (&self.spec, &old.spec) {
            selector_immutable(&n.selector, &o.selector, errs);
        }
    }
    fn columns() -> &'static [Column] {
        RS_COLUMNS
    }
    fn cells(&self, now: jiff::Timestamp) -> Vec<Value> {
        let spec = self.spec.clone().unwrap_or_default();
        let status = self.status.clone().unwrap_or_default();
        let [c, i] = template_cells(spec.template.as_ref());
        vec![
            table::name(&self.metadata),
            spec.replicas.unwrap_or(0).into(),
            status.replicas.into(),
            status.ready_replicas.unwrap_or(0).into(),
            table::age(self.meta_created(), now),
            c,
            i,
            selector_cell(&spec.selector),
        ]
    }
}

const DS_COLUMNS: &[Column] = &[
    NAME,
    Column::new("Desired", "integer", "The total number of nodes that should be running the daemon pod."),
    Column::new("Current", "integer", "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod."),
    Column::new("Ready", "integer", "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and ready."),
    Column::new("Up-to-date", "integer", "The total number of nodes that are running updated daemon pod"),
    Column::new("Available", "integer", "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available (ready for at least spec.minReadySeconds)"),
    Column::new("Node Selector", "string", "NodeSelector is a selector which must be true for the pod to fit on a node. Selector which must match a node's labels for the pod to be scheduled on that node."),
    AGE,
    CONTAINERS,
    IMAGES,
    SELECTOR,
];

impl Kind for DaemonSet {
    fn default_fields(&mut self, _op: Operation) {
        let spec = self.spec.get_or_insert_with(Default::default);
        let us = spec.update_strategy.get_or_insert_with(Default::default);
        if us.type_.get_or_insert_with(|| "RollingUpdate".into()) == "RollingUpdate" {
            let ru = us.rolling_update.get_or_insert_with(Default::default);
            ru.max_unavailable.get_or_insert(IntOrString::Int(1));
            ru.max_surge.get_or_insert(IntOrString::Int(0));
        }
        spec.revision_history_limit.get_or_insert(10);
        default_template(Some(&mut spec.template));
    }
    fn validate(&self, errs: &mut Errors) {
        let Some(spec) = &self.spec else {
            return errs.required("spec");
        };
        validate_template(
            Some(&spec.selector),
            Some(&spec.template),
            "spec",
            ALWAYS,
            errs,
        );
        errs.one_of(
            "spec.updateStrategy.type",
            spec.update_strategy
                .as_ref()
                .and_then(|s| s.type_.as_deref()),
            &["OnDelete", "RollingUpdate"],
            true,
        );
    }
    fn validate_update(&self, old: &Self, errs: &mut Errors) {
        if let (Some(n), Some(o)) = (&self.spec, &old.spec) {
            selector_immutable(&n.selector, &o.selector, errs);
        }
    }
    fn columns() -> &'static [Column] {
        DS_COLUMNS
    }
    fn cells(&self, now: jiff::Timestamp) -> Vec<Value> {
        let spec = self.spec.clone().unwrap_or_default();
        let status = self.status.clone().unwrap_or_default();
        let [c, i] = template_cells(Some(&spec.template));
        let node_selector = table::format_labels(
            spec.template
                .spec
                .as_ref()
                .and_then(|s| s.node_selector.as_ref()),
        );
        vec![
            table::name(&self.metadata),
            status.desired_number_scheduled.into(),
            status.current_number_scheduled.into(),
            status.number_ready.into(),
            status.updated_number_scheduled.unwrap_or(0).into(),
            status.number_available.unwrap_or(0).into(),
            node_selector.into(),
            table::age(self.meta_created(), now),
            c,
            i,
            selector_cell(&spec.selector),
        ]
    }
}
