//! core/v1 kinds other than Pod's own logic (which lives in `pod`).

use std::collections::HashSet;

use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Event, Namespace, Node, Pod, ReplicationController, Secret, Service,
    ServiceAccount,
};
use serde_json::Value;

use super::hooks::{CreateOnUpdate, Hooks};
use super::pod::PodHooks;
use super::pod::{default_template, validate_pod_spec};
use super::service_ips::ServiceHooks;
use super::table::{self, Column, AGE, NAME};
use super::validation::{
    check_port, is_dns1123_subdomain, validate_labels, ErrorType, Errors, NameRule,
};
use super::{typed, Base, Kind, Operation, ResourceType, StatusPolicy};
use crate::selectors::Field;

pub(super) fn register(out: &mut Vec<ResourceType>) {
    out.push(ResourceType {
        namespaced: false,
        short_names: &["ns"],
        subresources: &["status", "finalize"],
        name_rule: NameRule::Dns1123Label,
        status: StatusPolicy::Subresource,
        has_spec: true,
        field_selectors: const { &[Field::string("status.phase")] },
        hooks: &NamespaceHooks,
        ..Base::core("Namespace", "namespaces", "namespace", typed::<Namespace>())
    });
    out.push(ResourceType {
        short_names: &["po"],
        categories: &["all"],
        // ephemeralcontainers and resize are not served yet; discovery lists only what
        // works.
        subresources: &[
            "status",
            "binding",
            "log",
            "eviction",
            "exec",
            "attach",
            "portforward",
        ],
        status: StatusPolicy::Subresource,
        has_spec: true,
        field_selectors: const {
            &[
                Field::string("spec.nodeName"),
                Field::string("spec.restartPolicy"),
                Field::string("spec.schedulerName"),
                Field::string("spec.serviceAccountName"),
                Field::boolean("spec.hostNetwork"),
                Field::string("status.phase"),
                Field::string("status.podIP"),
                Field::string("status.nominatedNodeName"),
            ]
        },
        hooks: &PodHooks,
        ..Base::core("Pod", "pods", "pod", typed::<Pod>())
    });
    out.push(ResourceType {
        namespaced: false,
        short_names: &["no"],
        subresources: &["status"],
        status: StatusPolicy::SubresourceSetOnCreate,
        has_spec: true,
        field_selectors: const { &[Field::boolean("spec.unschedulable")] },
        ..Base::core("Node", "nodes", "node", typed::<Node>())
    });
    out.push(ResourceType {
        short_names: &["cm"],
        ..Base::core("ConfigMap", "configmaps", "configmap", typed::<ConfigMap>())
    });
    out.push(ResourceType {
        field_selectors: const { &[Field::string("type")] },
        hooks: &SecretHooks,
        ..Base::core("Secret", "secrets", "secret", typed::<Secret>())
    });
    out.push(ResourceType {
        short_names: &["svc"],
        categories: &["all"],
        subresources: &["status"],
        name_rule: NameRule::Dns1035Label,
        status: StatusPolicy::Subresource,
        has_spec: true,
        field_selectors: const { &[Field::string("spec.clusterIP"), Field::string("spec.type")] },
        hooks: &ServiceHooks,
        ..Base::core("Service", "services", "service", typed::<Service>())
    });
    out.push(ResourceType {
        short_names: &["ep"],
        hooks: &CreateOnUpdate,
        ..Base::core("Endpoints", "endpoints", "endpoints", typed::<Endpoints>())
    });
    out.push(ResourceType {
        short_names: &["ev"],
        hooks: &CreateOnUpdate,
        name_rule: NameRule::PathSegment,
        field_selectors: const {
            &[
                Field::string("involvedObject.kind"),
                Field::string("involvedObject.namespace"),
                Field::string("involvedObject.name"),
                Field::string("involvedObject.uid"),
                Field::string("involvedObject.apiVersion"),
                Field::string("involvedObject.resourceVersion"),
                Field::string("involvedObject.fieldPath"),
                Field::string("reason"),
                Field::string("reportingComponent"),
                Field::at("source", "source.component"),
                Field::string("type"),
            ]
        },
        ..Base::core("Event", "events", "event", typed::<Event>())
    });
    out.push(ResourceType {
        short_names: &["sa"],
        subresources: &["token"],
        ..Base::core(
            "ServiceAccount",
            "serviceaccounts",
            "serviceaccount",
            typed::<ServiceAccount>(),
        )
    });
    out.push(ResourceType {
        short_names: &["rc"],
        categories: &["all"],
        subresources: &["status", "scale"],
        status: StatusPolicy::Subresource,
        has_spec: true,
        field_selectors: const { &[Field::integer("status.replicas")] },
        ..Base::core(
            "ReplicationController",
            "replicationcontrollers",
            "replicationcontroller",
            typed::<ReplicationController>(),
        )
    });
}

/// Namespaces' write hooks: `spec.finalizers` (emptied by the namespace controller) hold
/// a deleted namespace back, and it shows `Terminating` meanwhile.
struct NamespaceHooks;

impl Hooks for NamespaceHooks {
    fn finalizing(&self, ns: &Value) -> bool {
        ns.pointer("/spec/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty())
    }

    fn mark_deleting(&self, ns: &mut Value) {
        ns["status"]["phase"] = serde_json::json!("Terminating");
    }

    fn returns_deleted_object(&self) -> bool {
        true
    }
}

/// The namespace with these `spec.finalizers` and nothing else changed (the
/// `namespaces/finalize` subresource, kube's `FinalizeREST`): how the namespace
/// controller lets a namespace whose content is gone be deleted.
pub fn finalize_namespace(ns: &Value, finalizers: &[Value]) -> Value {
    let mut new = ns.clone();
    new["spec"]["finalizers"] = Value::Array(finalizers.to_vec());
    new
}

/// Secrets' write hooks: `stringData` is folded into `data`, not stored.
struct SecretHooks;

impl Hooks for SecretHooks {
    fn input_fields(&self) -> &'static [&'static str] {
        &["stringData"]
    }
}

const NAMESPACE_COLUMNS: &[Column] = &[
    NAME,
    Column::new("Status", "string", "The status of the namespace"),
    AGE,
];

/// Namespaces that exist from the start and are made again when missing, as in Kubernetes.
pub const SYSTEM_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

impl Kind for Namespace {
    fn default_fields(&mut self, op: Operation) {
        let name = self.metadata.name.clone().unwrap_or_default();
        // Kubernetes labels every namespace with its own name.
        self.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert("kubernetes.io/metadata.name".into(), name);
        if op == Operation::Create {
            self.spec
                .get_or_insert_with(Default::default)
                .finalizers
                .get_or_insert_with(|| vec!["kubernetes".into()]);
            self.status
                .get_or_insert_with(Default::default)
                .phase
                .get_or_insert_with(|| "Active".into());
        }
    }
    fn columns() -> &'static [Column] {
        NAMESPACE_COLUMNS
    }
    fn cells(&self, now: jiff::Timestamp) -> Vec<Value> {
        let phase = self
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        vec![
            table::name(&self.metadata),
            phase.into(),
            table::age(self.meta_created(), now),
        ]
    }
}

const NODE_COLUMNS: &[Column] = &[
    NAME,
    Column::new("Status", "string", "The status of the node"),
    Column::new("Roles", "string", "The roles of the node"),
    AGE,
    Column::new("Version", "string", "Kubelet Version reported by the node."),
    Column::wide("Internal-IP", "string", "List of addresses reachable to the node. Queried from cloud provider, if available."),
    Column::wide("External-IP", "string", "List of addresses reachable to the node. Queried from cloud provider, if available."),
    Column::wide("OS-Image", "string", "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy))."),
    Column::wide("Kernel-Version", "string", "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64)."),
    Column::wide("Container-Runtime", "string", "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2)."),
];

/// A node's status as kube-apiserver keeps it: what is allocatable defaults to the capacity,
/// and the structs Go always serializes (`daemonEndpoints`, `nodeInfo`) are there, zero.
fn default_node_status(status: &mut k8s_openapi::api::core::v1::NodeStatus) {
    if status.allocatable.is_none() {
        status.allocatable = status.capacity.clone();
    }
    status
        .daemon_endpoints
        .get_or_insert_with(Default::default)
        .kubelet_endpoint
        .get_or_insert_with(Default::default);
    status.node_info.get_or_insert_with(Default::default);
}

impl Kind for Node {
    /// `podCIDR` is `podCIDRs[0]` (the v1 conversion keeps them in step); the status as
    /// kube's defaulting and Go's encoding give it (`SetDefaults_NodeStatus`).
    fn default_fields(&mut self, _op: Operation) {
        default_node_status(self.status.get_or_insert_with(Default::default));
        let Some(spec) = self.spec.as_mut() else {
            return;
        };
        match (&spec.pod_cidr, &spec.pod_cidrs) {
            (Some(one), None) if !one.is_empty() => spec.pod_cidrs = Some(vec![one.clone()]),
            (None, Some(all)) if !all.is_empty() => spec.pod_cidr = Some(all[0].clone()),
            _ => {}
        }
    }
    fn validate(&self, errs: &mut Errors) {
        let cidrs = self.spec.as_ref().and_then(|s| s.pod_cidrs.as_deref());
        let cidrs = cidrs.unwrap_or_default();
        let mut parsed = Vec::new();
        for (i, c) in cidrs.iter().enumerate() {
            match c.parse::<skiff_api::cidr::Cidr>() {
                Ok(c) => parsed.push(c),
                Err(e) => errs.invalid_str(format!("spec.podCIDRs[{i}]"), c, e.to_string()),
            }
        }
        let v4 = parsed.iter().filter(|c| c.addr.is_ipv4()).count();
        if cidrs.len() > 2 || (parsed.len() == 2 && v4 != 1) {
            let quoted: Vec<String> = cidrs.iter().map(|c| format!("{c:?}")).collect();
            errs.invalid(
                "spec.podCIDRs",
                format!("[]string{{{}}}", quoted.join(", ")),
                "may specify no more than one CIDR for each IP family",
            );
        }
        if let Some(spec) = &self.spec {
            if spec.pod_cidr.as_deref().unwrap_or_default() != cidrs.first().map_or("", |c| c) {
                errs.invalid_str(
                    "spec.podCIDR",
                    spec.pod_cidr.as_deref().unwrap_or_default(),
                    "must equal the first of spec.podCIDRs",
                );
            }
        }
    }
    /// The controller manager may give a node a pod range once; it never changes after.
    fn validate_update(&self, old: &Self, errs: &mut Errors) {
        let cidrs = |n: &Node| n.spec.as_ref().and_then(|s| s.pod_cidrs.clone());
        let before = cidrs(old).unwrap_or_default();
        if !before.is_empty() && before != cidrs(self).unwrap_or_default() {
            errs.forbidden(
                "spec.podCIDRs",
                "node updates may not change podCIDR except from \"\" to valid",
            );
        }
    }
    fn columns() -> &'static [Column] {
        NODE_COLUMNS
    }
    fn cells(&self, now: jiff::Timestamp) -> Vec<Value> {
        let status = self.status.as_ref();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
        let mut st = match ready {
            Some(c) if c.status == "True" => "Ready".to_string(),
            _ => "NotReady".to_string(),
        };
        if ready.is_none() {
            st = "Unknown".into();
        }
        if self
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false)
        {
            st.push_str(",SchedulingDisabled");
        }
        let roles: Vec<String> = self
            .metadata
            .labels
            .iter()
            .flatten()
            .filter_map(|(k, v)| {
                k.strip_prefix("node-role.kubernetes.io/")
                    .map(str::to_string)
                    .or_else(|| (k == "kubernetes.io/role").then(|| v.clone()))
            })
            .filter(|r| !r.is_empty())
            .collect();
        let addr = |kind: &str| {
            status
                .and_then(|s| s.addresses.as_ref())
                .and_then(|a| a.iter().find(|a| a.type_ == kind))
                .map(|a| a.address.clone())
                .unwrap_or_else(|| "<none>".into())
        };
        let info = status.and_then(|s| s.node_info.as_ref());
        let info_field = |f: fn(&k8s_openapi::api::core::v1::NodeSystemInfo) -> &String| {
            info.map(|i| f(i).clone()).unwrap_or_default()
        };
        vec![
            table::name(&self.metadata),
            st.into(),
            table::join_or_none(roles).into(),
            table::age(self.meta_created(), now),
            info_field(|i| &i.kubelet_version).into(),
            addr("InternalIP").into(),
            addr("ExternalIP").into(),
            info_field(|i| &i.os_image).into(),
            info_field(|i| &i.kernel_version).into(),
            info_field(|i| &i.container_runtime_version).into(),
        ]
    }
}

const CONFIGMAP_COLUMNS: &[Column] = &[
    NAME,
    Column::new("Data", "integer", "Number of data items"),
    AGE,
];

fn validate_data_keys<'a>(keys: impl Iterator<Item = &'a String>, path: &str, errs: &mut Errors) {
    for k in keys {
        let ok = !k.is_empty()
            && k.len() <= 253
            && k != "."
            && k != ".."
            && !k.starts_with("..")
            && k.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.');
        if !ok {
            errs.invalid_str(path, k, "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')");
        }
    }
}

/// The most a ConfigMap's or Secret's data may hold (Kubernetes' `MaxSecretSize`).
const MAX_DATA_SIZE: usize = 1024 * 1024;

impl Kind for ConfigMap {
    fn validate(&self, errs: &mut Errors) {
        validate_data_keys(self.data.iter().flatten().map(|(k, _)| k), "data", errs);
        validate_data_keys(
            self.binary_data.iter().flatten().map(|(k, _)| k),
            "binaryData",
            errs,
        );
        for k in self.data.iter().flatten().map(|(k, _)| k) {
            if self.binary_data.as_ref().is_some_and(|b| b.contains_key(k)) {
                errs.invalid_str("data", k, "duplicate of key present in binaryData");
            }
        }
        let size: usize = self
            .data
            .iter()
            .flatten()
            .map(|(_, v)| v.len())
            .sum::<usize>()
            + self
                .binary_data
                .iter()
                .flatten()
                .map(|(_, v)| v.0.len())
                .sum::<usize>();
        if size > MAX_DATA_SIZE {
            // The whole object, as Kubernetes reports it.
            errs.push("[]", ErrorType::TooLong(String::new(), MAX_DATA_SIZE), "");
        }
    }
    fn columns() -> &'static [Column] {
        CONFIGMAP_COLUMNS
    }
    fn cells(&self, now: jiff::Timestamp) -> Vec<Value> {
        let n = self.data.as_ref().map_or(0, |d| d.len())
            + self.binary_data.as_ref().map_or(0, |d| d.len());
        vec![
            table::name(&self.metadata),
            n.into(),
            table::age(self.meta_created(), now),
        ]
    }
}

const SECRET_COLUMNS: &[Column] = &[
    NAME,
    Column::new("Type", "string", "The type of the secret"),
    Column::new("Data", "integer", "Number of data items"),
    AGE,
];

impl Kind for Secret {
    fn default_fields(&mut self, _op: Operation) {
        self.type_.get_or_insert_with(|| "Opaque".into());
        // stringData is write-only: it is merged into data.
        if let Some(sd) = self.string_data.take() {
            let data = self.data.get_or_insert_with(Default::default);
            for (k, v) in sd {
                data.insert(k, k8s_openapi::ByteString(v.into_bytes()));
            }
        }
    }
    fn validate(&self, errs: &mut Errors) {
        validate_data_keys(self.data.iter().flatten().map(|(k, _)| k), "data", errs);
        let size: usize = self.data.iter().flatten().map(|(_, v)| v.0.len()).sum();
        if size > MAX_DATA_SIZE {
            errs.push("data", ErrorType::TooLong(String::new(), MAX_DATA_SIZE), "");
        }
    }
    fn validate_update(&self, old: &Self, errs: &mut Errors) {
        if self.type_ != old.type_ {
            errs.invalid_str(
                "type",
                self.type_.as_deref().unwrap_or_default(),
                "field is immutable",
            );
        }
        if old.immutable == Some(true) && (self.data != old.data || self.immutable != old.immutable)
        {
            errs.forbidden("data", "field is immutable when `immutable` is set");
        }
    }
    fn columns() -> &'static [Column] {
        SECRET_COLUMNS
    }
    fn cells(&self, now: jiff::Timestamp) -> Vec<Value> {
        let n = self.data.as_ref().map_or(0, |d| d.len());
        vec![
            table::name(&self.metadata),
            self.type_.clone().unwrap_or_default().into(),
            n.into(),
            table::age(self.meta_created(), now),
        ]
    }
}

const SERVICE_COLUMNS: &[Column] = &[
    NAME,
    Column::new("Type", "string", "The type of the service"),
    Column::new("Cluster-IP", "string", "The cluster IP of the service"),
    Column::new("External-IP", "string", "The external IPs of the service"),
    Column::new("Port(s)", "string", "The ports of the service"),
    AGE,
    Column::wide(
        "Selector",
        "string",
        "Route service traffic to pods with label keys and values matching this selector",
    ),
];

const SERVICE_TYPES: &[&str] = &["ClusterIP", "ExternalName", "NodePort", "LoadBalancer"];

impl Kind for Service {
    fn default_fields(&mut self, op: Operation) {
        let spec = self.spec.get_or_insert_with(Default::default);
        spec.type_.get_or_insert_with(|| "ClusterIP".into());
        if spec.type_.as_deref() != Some("ExternalName") {
            spec.session_affinity.get_or_insert_with(|| "None".into());
            spec.internal_traffic_policy
                .get_or_insert_with(|| "Cluster".into());
        }
        if matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer")) {
            spec.external_traffic_policy
                .get_or_insert_with(|| "Cluster".into());
        }
        for p in spec.ports.iter_mut().flatten() {
            p.protocol.get_or_insert_with(|| "TCP".into());
            if p.target_port.is_none() {
                p.target_port =
                    Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p.port));
            }
        }
        // kube's `status.loadBalancer` is a struct, never omitted: clients test for it.
        let lb = spec.type_.as_deref() == Some("LoadBalancer");
        if let Some(status) = self.status.as_mut() {
            // A Service that stops being a LoadBalancer loses its ingress at once (kube's
            // PrepareForUpdate), whatever de-provisioning follows.
            if !lb && op != Operation::UpdateStatus {
                status.load_balancer = None;
            }
            status.load_balancer.get_or_insert_with(Default::default);
        }
    }
    fn validate(&self, errs: &mut Errors) {
        let Some(spec) = &self.spec else {
            errs.required("spec");
            return;
        };
        errs.one_of("spec.type", spec.type_.as_deref(), SERVICE_TYPES, true);
        let external_name = spec.type_.as_deref() == Some("ExternalName");
        let headless = spec.cluster_ip.as_deref() == Some("None");
        let ports = spec.ports.as_deref().unwrap_or_default();
        if ports.is_empty() && !external_name && !headless {
            errs.required("spec.ports");
        }
        if external_name
            && spec
                .external_name
                .as_deref()
                .is_none_or(|n| !is_dns1123_subdomain(n))
        {
            errs.required("spec.externalName");
        }
        let mut names = HashSet::new();
        let mut seen = HashSet::new();
        for (i, p) in ports.iter().enumerate() {
            let pp = format!("spec.ports[{i}]");
            match p.name.as_deref().filter(|n| !n.is_empty()) {
                None if ports.len() > 1 => errs.required(format!("{pp}.name")),
                None => {}
                Some(n) => {
                    if !super::validation::is_dns1123_label(n) {
                        errs.invalid_str(
                            format!("{pp}.name"),
                            n,
                            super::validation::DNS1123_LABEL_MSG,
                        );
                    } else if !names.insert(n) {
                        errs.duplicate(format!("{pp}.name"), n);
                    }
                }
            }
            if let Some(msg) = check_port(p.port) {
                errs.invalid(format!("{pp}.port"), p.port, msg);
            }
            errs.one_of(
                format!("{pp}.protocol"),
                p.protocol.as_deref(),
                &["TCP", "UDP", "SCTP"],
                true,
            );
            if !seen.insert((p.port, p.protocol.clone())) {
                errs.duplicate(
                    pp.to_string(),
                    &format!("{}/{}", p.port, p.protocol.as_deref().unwrap_or("TCP")),
                );
            }
            if let Some(np) = p.node_port.filter(|n| *n != 0) {
                if !matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer")) {
                    errs.forbidden(
                        format!("{pp}.nodePort"),
                        "may not be used when `type` is 'ClusterIP'",
                    );
                } else if let Some(msg) = check_port(np) {
                    errs.invalid(format!("{pp}.nodePort"), np, msg);
                }
            }
            if let Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(t)) =
                p.target_port
            {
                if let Some(msg) = check_port(t) {
                    errs.invalid(format!("{pp}.targetPort"), t, msg);
                }
            }
        }
        validate_labels(spec.selector.as_ref(), "spec.selector", errs);
        errs.one_of(
            "spec.sessionAffinity",
            spec.session_affinity.as_deref(),
            &["ClientIP", "None"],
            false,
        );
        validate_service_addresses(self, errs);
    }
    fn validate_update(&self, old: &Self, errs: &mut Errors) {
        let old_ip = old
            .spec
            .as_ref()
            .and_then(|s| s.cluster_ip.as_deref())
            .unwrap_or_default();
        let new_ip = self
            .spec
            .as_ref()
            .and_then(|s| s.cluster_ip.as_deref())
            .unwrap_or_default();
        if !old_ip.is_empty() && old_ip != new_ip && !new_ip.is_empty() {
            errs.invalid_str("spec.clusterIPs[0]", new_ip, "may not change once set");
        }
    }
    fn columns() -> &'static [Column] {
        SERVICE_COLUMNS
    }
    fn cells(&self, now: jiff::Timestamp) -> Vec<Value> {
        let spec = self.spec.clone().unwrap_or_default();
        let ty = spec.type_.clone().unwrap_or_else(|| "ClusterIP".into());
        let cluster_ip = spec
            .cluster_ip
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "<none>".into());
        let mut external: Vec<String> = spec.external_ips.clone().unwrap_or_default();
        let lb: Vec<String> = self
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.as_ref())
            .map(|i| {
                i.iter()
                    .filter_map(|i| i.ip.clone().or_else(|| i.hostname.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let external = match ty.as_str() {
            "ExternalName" => spec.external_name.clone().unwrap_or_default(),
            "LoadBalancer" => {
                external.extend(lb);
                if external.is_empty() {
                    "<pending>".into()
                } else {
                    external.join(",")
                }
            }
            _ => table::join_or_none(external),
        };
        let ports: Vec<String> = spec
            .ports
            .iter()
            .flatten()
            .map(|p| {
                let proto = p.protocol.as_deref().unwrap_or("TCP");
                match p.node_port {
                    Some(np) if np != 0 => format!("{}:{np}/{proto}", p.port),
                    _ => format!("{}/{proto}", p.port),
                }
            })
            .collect();
        vec![
            table::name(&self.metadata),
            ty.into(),
            cluster_ip.into(),
            external.into(),
            table::join_or_none(ports).into(),
            table::age(self.meta_created(), now),
            table::format_labels(spec.selector.as_ref()).into(),
        ]
    }
}

/// The addresses a Service makes a node take traffic for, as kube validates them: a
/// bad one would otherwise reach every node's proxy.
fn validate_service_addresses(svc: &Service, errs: &mut Errors) {
    use super::validation::{non_special_ip, valid_ip};
    let spec = svc.spec.as_ref().expect("checked by the caller");
    for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
        let field = format!("spec.externalIPs[{i}]");
        if let Some(addr) = valid_ip(ip, &field, errs) {
            non_special_ip(addr, ip, &field, errs);
        }
    }
    if let Some(ip) = spec.load_balancer_ip.as_deref().filter(|ip| !ip.is_empty()) {
        valid_ip(ip, "spec.loadBalancerIP", errs);
    }
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_deref())
        .unwrap_or_default();
    if !ingress.is_empty() && spec.type_.as_deref() != Some("LoadBalancer") {
        errs.forbidden(
            "status.loadBalancer.ingress",
            "may only be used when `spec.type` is 'LoadBalancer'",
        );
        return;
    }
    for (i, ing) in ingress.iter().enumerate() {
        let path = format!("status.loadBalancer.ingress[{i}]");
        if let Some(ip) = ing.ip.as_deref().filter(|ip| !ip.is_empty()) {
            // Stricter than kube (which checks only the form): a node's proxy takes
            // traffic for these as for external IPs.
            let field = format!("{path}.ip");
            if let Some(addr) = valid_ip(ip, &field, errs) {
                non_special_ip(addr, ip, &field, errs);
            }
        }
        if let Some(h) = ing.hostname.as_deref().filter(|h| !h.is_empty()) {
            let field = format!("{path}.hostname");
            if !is_dns1123_subdomain(h) {
                errs.invalid_str(&field, h, super::validation::DNS1123_SUBDOMAIN_MSG);
            }
            if h.parse::<std::net::IpAddr>().is_ok() {
                errs.invalid_str(field, h, "must be a DNS name, not an IP address");
            }
        }
    }
}

const ENDPOINTS_COLUMNS: &[Column] = &[
    NAME,
    Column::new("Endpoints", "string", "Endpoints of the resource"),
    AGE,
];

impl Kind for Endpoints {
    fn validate(&self, errs: &mut Errors) {
        use super::validation::{non_special_ip, valid_ip};
        for (i, subset) in self.subsets.iter().flatten().enumerate() {
            let lists = [
                ("addresses", subset.addresses.as_deref()),
                ("notReadyAddresses", subset.not_ready_addresses.as_deref()),
            ];
            for (list, addrs) in lists {
                for (j, a) in addrs.unwrap_or_default().iter().enumerate() {
                    let field = format!("subsets[{i}].{list}[{j}].ip");
                    if let Some(ip) = valid_ip(&a.ip, &field, errs) {
                        non_special_ip(ip, &a.ip, &field, errs);
                    }
                }
            }
        }
    }
    fn columns() -> &'static [Column] {
        ENDPOINTS_COLUMNS
    }
    fn cells(&self, now: jiff::Timestamp) -> Vec<Value> {
        let mut eps = Vec::new();
        for s in self.subsets.iter().flatten() {
            for a in s.addresses.iter().flatten() {
                match s.ports.as_deref() {
                    Some(ports) if !ports.is_empty() => {
                        eps.extend(ports.iter().map(|p| format!("{}:{}", a.ip, p.port)))
                    }
                    _ => eps.push(a.ip.clone()),
                }
            }
        }
        let shown = if eps.len() > 3 {
            format!("{} + {} more...", eps[..3].join(","), eps.len() - 3)
        } else {
            table::join_or_none(&eps)
        };
        vec![
            table::name(&self.metadata),
            shown.into(),
            table::age(self.meta_created(), now),
        ]
    }
}

const EVENT_COLUMNS: &[Column] = &[
    Column::new("Last Seen", "string", "Time when last event occurred"),
    Column::new("Type", "string", "Type of this event (Normal, Warning)"),
    Column::new("Reason", "string", "Reason is why the action was taken. It is human-readable. This field cannot be empty for new Events and it can have at most 128 characters."),
    Column::new("Object", "string", "The object that this event is about. Mapped from event.involvedObject"),
    Column::wide("Subobject", "string", "The subobject that this event is about. Mapped from event.involvedObject.fieldPath"),
    Column::wide("Source", "string", "The source of the event, component and host"),
    Column::new("Message", "string", "A human-readable description of the status of this operation."),
    Column::wide("First Seen", "string", "Time when first event occurred"),
    Column::wide("Count", "string", "Number of times this event has occurred"),
    Column { format: "name", ..Column::wide("Name", "string", "Name of the event") },
];

impl Kind for Event {
    fn validate(&self, errs: &mut Errors) {
        if self
            .involved_object
            .name
            .as_deref()
            .unwrap_or_default()
            .is_empty()
            && self
                .involved_object
                .kind
                .as_deref()
                .unwrap_or_default()
                .is_empty()
        {
            errs.required("involvedObject");
        }
    }
    fn columns() -> &'static [Column] {
        EVENT_COLUMNS
    }
    fn cells(&self, now: jiff::Timestamp) -> Vec<Value> {
        let first = self
            .first_timestamp
            .as_ref()
            .map(|t| t.0)
            .or_else(|| self.event_time.as_ref().map(|t| t.0))
            .or(self.meta_created());
        let last = self.last_timestamp.as_ref().map(|t| t.0).or(first);
        let count = self.count.unwrap_or(1);
        let last_seen = if count > 1 {
            format!(
                "{} (x{count} over {})",
                table::since(last, now),
                table::since(first, now)
            )
        } else {
            table::since(last, now)
        };
        let io = &self.involved_object;
        let object = format!(
            "{}/{}",
            io.kind.as_deref().unwrap_or_default().to_lowercase(),
            io.name.as_deref().unwrap_or_default()
        );
        let source = self
            .source
            .as_ref()
            .map(|s| {
                [s.component.clone(), s.host.clone()]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .or_else(|| self.reporting_component.clone())
            .unwrap_or_default();
        vec![
            last_seen.into(),
            self.type_.clone().unwrap_or_default().into(),
            self.reason.clone().unwrap_or_default().into(),
            object.into(),
            io.field_path.clone().unwrap_or_default().into(),
            source.into(),
            self.message
                .clone()
                .unwrap_or_default()
                .trim()
                .to_string()
                .into(),
            table::since(first, now).into(),
            count.to_string().into(),
            table::name(&self.metadata),
        ]
    }
}

const SA_COLUMNS: &[Column] = &[NAME, Column::new("Secrets", "string", "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use."), AGE];

impl Kind for ServiceAccount {
    fn columns() -> &'static [Column] {
        SA_COLUMNS
    }
    fn cells(&self, now: jiff::Timestamp) -> Vec<Value> {
        let n = self.secrets.as_ref().map_or(0, Vec::len);
        vec![
            table::name(&self.metadata),
            n.into(),
            table::age(self.meta_created(), now),
        ]
    }
}

pub(super) const CONTAINERS: Column = Column::wide(
    "Containers",
    "string",
    "Names of each container in the template.",
);
pub(super) const IMAGES: Column = Column::wide(
    "Images",
    "string",
    "Images referenced by each container in the template.",
);
pub(super) const SELECTOR: Column = Column::wide("Selector", "string", "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment.");

/// The CONTAINERS and IMAGES cells of a pod template.
pub(super) fn template_cells(
    t: Option<&k8s_openapi::api::core::v1::PodTemplateSpec>,
) -> [Value; 2] {
    let containers = t
        .and_then(|t| t.spec.as_ref())
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    [
        containers
            .iter()
            .map(|c| c.name.clone())
            .collect::<Vec<_>>()
            .join(",")
            .into(),
        containers
            .iter()
            .map(|c| c.image.clone().unwrap_or_default())
            .collect::<Vec<_>>()
            .join(",")
            .into(),
    ]
}

const RC_COLUMNS: &[Column] = &[
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
        "The number of ready replicas for this replication controller.",
    ),
    AGE,
    CONTAINERS,
    IMAGES,
    SELECTOR,
];

impl Kind for ReplicationController {
    fn default_fields(&mut self, _op: Operation) {
        let spec = self.spec.get_or_insert_with(Default::default);
        spec.replicas.get_or_insert(1);
        spec.min_ready_seconds.get_or_insert(0);
        let labels = spec
            .template
            .as_ref()
            .and_then(|t| t.metadata.as_ref())
            .and_then(|m| m.labels.clone());
        if spec.selector.as_ref().is_none_or(|s| s.is_empty()) {
            spec.selector = labels.clone();
        }
        if self.metadata.labels.as_ref().is_none_or(|l| l.is_empty()) {
            self.metadata.labels = labels;
        }
        default_template(spec.template.as_mut());
    }
    fn validate(&self, errs: &mut Errors) {
        let Some(spec) = &self.spec else {
            return errs.required("spec");
        };
        if spec.replicas.unwrap_or(0) < 0 {
            errs.invalid(
                "spec.replicas",
                spec.replicas.unwrap_or(0),
                "must be greater than or equal to 0",
            );
        }
        let selector = spec.selector.clone().unwrap_or_default();
        if selector.is_empty() {
            errs.required("spec.selector");
        }
        match &spec.template {
            None => errs.required("spec.template"),
            Some(t) => {
                let labels = t
                    .metadata
                    .as_ref()
                    .and_then(|m| m.labels.clone())
                    .unwrap_or_default();
                if !selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                    errs.invalid(
                        "spec.template.metadata.labels",
                        table::format_labels(Some(&labels)),
                        "`selector` does not match template `labels`",
                    );
                }
                match &t.spec {
                    Some(s) => validate_pod_spec(s, "spec.template.spec", errs),
                    None => errs.required("spec.template.spec"),
                }
            }
        }
    }
    fn columns() -> &'static [Column] {
        RC_COLUMNS
    }
    fn cells(&self, now: jiff::Timestamp) -> Vec<Value> {
        let spec = self.spec.as_ref();
        let status = self.status.as_ref();
        let [c, i] = template_cells(spec.and_then(|s| s.template.as_ref()));
        vec![
            table::name(&self.metadata),
            spec.and_then(|s| s.replicas).unwrap_or(0).into(),
            status.map_or(0, |s| s.replicas).into(),
            status.and_then(|s| s.ready_replicas).unwrap_or(0).into(),
            table::age(self.meta_created(), now),
            c,
            i,
            table::format_labels(spec.and_then(|s| s.selector.as_ref())).into(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors<K: Kind + serde::de::DeserializeOwned>(v: Value) -> Vec<String> {
        let obj: K = serde_json::from_value(v).unwrap();
        let mut errs = Errors::default();
        obj.validate(&mut errs);
        errs.0.iter().map(|e| e.to_string()).collect()
    }

    /// A bad external IP reached every node's proxy, whose batch nft then refused.
    #[test]
    fn service_addresses_are_checked_as_kube_does() {
        let svc = |spec: Value, status: Value| {
            let mut s = serde_json::json!({"metadata": {"name": "s"}, "status": status,
                "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]}});
            for (k, v) in spec.as_object().unwrap() {
                s["spec"][k] = v.clone();
            }
            errors::<Service>(s)
        };
        let ok = svc(
            serde_json::json!({"externalIPs": ["192.0.2.1", "2001:db8::1"]}),
            serde_json::json!({"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}, {"hostname": "lb.example"}]}}),
        );
        assert!(ok.is_empty(), "{ok:?}");
        let bad = svc(
            serde_json::json!({"externalIPs": ["999.1.1.1", "0.0.0.0", "127.0.0.1", "169.254.169.254", "224.0.0.1"],
                "loadBalancerIP": "x"}),
            serde_json::json!({"loadBalancer": {"ingress": [{"ip": "::1"}, {"hostname": "10.0.0.1"}]}}),
        );
        assert_eq!(
            bad,
            [
                "spec.externalIPs[0]: Invalid value: \"999.1.1.1\": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                "spec.externalIPs[1]: Invalid value: \"0.0.0.0\": may not be unspecified (0.0.0.0)",
                "spec.externalIPs[2]: Invalid value: \"127.0.0.1\": may not be in the loopback range (127.0.0.0/8, ::1/128)",
                "spec.externalIPs[3]: Invalid value: \"169.254.169.254\": may not be in the link-local range (169.254.0.0/16, fe80::/10)",
                "spec.externalIPs[4]: Invalid value: \"224.0.0.1\": may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)",
                "spec.loadBalancerIP: Invalid value: \"x\": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                "status.loadBalancer.ingress[0].ip: Invalid value: \"::1\": may not be in the loopback range (127.0.0.0/8, ::1/128)",
                "status.loadBalancer.ingress[1].hostname: Invalid value: \"10.0.0.1\": must be a DNS name, not an IP address",
            ]
        );
        let cluster_ip = serde_json::json!({"metadata": {"name": "s"},
            "spec": {"type": "ClusterIP", "ports": [{"port": 80, "protocol": "TCP"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}});
        assert_eq!(
            errors::<Service>(cluster_ip),
            ["status.loadBalancer.ingress: Forbidden: may only be used when `spec.type` is 'LoadBalancer'"]
        );
        let eps = serde_json::json!({"metadata": {"name": "s"},
            "subsets": [{"addresses": [{"ip": "10.244.0.5"}], "notReadyAddresses": [{"ip": "127.0.0.2"}]}]});
        assert_eq!(
            errors::<Endpoints>(eps),
            ["subsets[0].notReadyAddresses[0].ip: Invalid value: \"127.0.0.2\": may not be in the loopback range (127.0.0.0/8, ::1/128)"]
        );
    }
}
