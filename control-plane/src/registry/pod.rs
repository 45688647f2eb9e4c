//! Pods and pod templates: defaults, validation and the `kubectl get pods` columns.

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::core::v1::{
    Container, DownwardAPIVolumeFile, KeyToPath, Pod, PodSpec, PodStatus, PodTemplateSpec,
    ResourceRequirements, SeccompProfile, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use serde_json::{json, Value};

use super::table::{self, Column};
use super::validation::{
    check_env_var_name, check_port, check_port_name, file_mode, is_dns1123_label,
    local_descending_path, local_non_reserved_path, path_no_backsteps, validate_labels, Errors,
    DNS1123_LABEL_MSG,
};
use super::{Kind, Operation};
use crate::quantity;

const RESTART_POLICIES: &[&str] = &["Always", "OnFailure", "Never"];
const PULL_POLICIES: &[&str] = &["Always", "IfNotPresent", "Never"];
const PROTOCOLS: &[&str] = &["TCP", "UDP", "SCTP"];
const DNS_POLICIES: &[&str] = &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"];

fn default_container(c: &mut Container, host_network: bool) {
    c.termination_message_path
        .get_or_insert_with(|| "/dev/termination-log".into());
    c.termination_message_policy
        .get_or_insert_with(|| "File".into());
    if c.image_pull_policy.is_none() {
        let image = c.image.as_deref().unwrap_or_default();
        // The tag is after the last ':' that follows the last '/'; digests pin the image.
        let last = image.rsplit('/').next().unwrap_or(image);
        let latest =
            !image.contains('@') && last.split_once(':').is_none_or(|(_, tag)| tag == "latest");
        c.image_pull_policy = Some(if latest { "Always" } else { "IfNotPresent" }.into());
    }
    for p in c.ports.iter_mut().flatten() {
        p.protocol.get_or_insert_with(|| "TCP".into());
        if host_network && p.host_port.is_none() {
            p.host_port = Some(p.container_port);
        }
    }
    c.resources.get_or_insert_with(Default::default);
    for e in c.env.iter_mut().flatten() {
        if let Some(f) = e.value_from.as_mut().and_then(|v| v.field_ref.as_mut()) {
            f.api_version.get_or_insert_with(|| "v1".into());
        }
    }
    for probe in [
        &mut c.liveness_probe,
        &mut c.readiness_probe,
        &mut c.startup_probe,
    ]
    .into_iter()
    .flatten()
    {
        probe.timeout_seconds.get_or_insert(1);
        probe.period_seconds.get_or_insert(10);
        probe.success_threshold.get_or_insert(1);
        probe.failure_threshold.get_or_insert(3);
        if let Some(h) = probe.http_get.as_mut() {
            h.scheme.get_or_insert_with(|| "HTTP".into());
            h.path.get_or_insert_with(|| "/".into());
        }
    }
}

/// Kubernetes' `SetDefaults_PodSpec` and friends.
pub fn default_pod_spec(spec: &mut PodSpec) {
    spec.restart_policy.get_or_insert_with(|| "Always".into());
    spec.dns_policy.get_or_insert_with(|| "ClusterFirst".into());
    spec.termination_grace_period_seconds.get_or_insert(30);
    spec.security_context.get_or_insert_with(Default::default);
    spec.scheduler_name
        .get_or_insert_with(|| "default-scheduler".into());
    spec.enable_service_links.get_or_insert(true);
    let host_network = spec.host_network.unwrap_or(false);
    for c in spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten())
    {
        default_container(c, host_network);
    }
    for v in spec.volumes.iter_mut().flatten() {
        if let Some(s) = v.secret.as_mut() {
            s.default_mode.get_or_insert(0o644);
        }
        if let Some(c) = v.config_map.as_mut() {
            c.default_mode.get_or_insert(0o644);
        }
        if let Some(h) = v.host_path.as_mut() {
            h.type_.get_or_insert_with(String::new);
        }
        if let Some(d) = v.downward_api.as_mut() {
            d.default_mode.get_or_insert(0o644);
        }
        if let Some(p) = v.projected.as_mut() {
            p.default_mode.get_or_insert(0o644);
        }
    }
}

fn validate_resources(r: Option<&ResourceRequirements>, path: &str, errs: &mut Errors) {
    let Some(r) = r else { return };
    let mut parsed: [BTreeMap<&str, quantity::Milli>; 2] = Default::default();
    for (i, (field, map)) in [("limits", &r.limits), ("requests", &r.requests)]
        .into_iter()
        .enumerate()
    {
        for (name, q) in map.iter().flatten() {
            let p = format!("{path}.{field}[{name}]");
            match quantity::parse(&q.0) {
                Ok(v) if v.0 < 0 => errs.invalid_str(p, &q.0, "must be greater than or equal to 0"),
                Ok(v) => {
                    parsed[i].insert(name.as_str(), v);
                }
                Err(e) => errs.invalid_str(p, &q.0, e.to_string()),
            }
        }
    }
    for (name, req) in &parsed[1] {
        if let Some(lim) = parsed[0].get(name) {
            if req > lim {
                let q = &r.requests.as_ref().expect("parsed")[*name].0;
                errs.invalid_str(
                    format!("{path}.requests"),
                    q,
                    format!(
                        "must be less than or equal to {name} limit of {}",
                        r.limits.as_ref().expect("parsed")[*name].0
                    ),
                );
            }
        }
    }
}

/// A container's `postStart` and `preStop` hooks (kube's validateLifecycle): one handler
/// each; a sleep within the pod's grace period (zero allowed, as kube 1.33).
fn validate_lifecycle(c: &Container, path: &str, grace: Option<i64>, errs: &mut Errors) {
    let Some(l) = &c.lifecycle else {
        return;
    };
    for (name, hook) in [("postStart", &l.post_start), ("preStop", &l.pre_stop)] {
        let Some(h) = hook else {
            continue;
        };
        let hp = format!("{path}.lifecycle.{name}");
        let set: Vec<&str> = [
            ("exec", h.exec.is_some()),
            ("httpGet", h.http_get.is_some()),
            ("tcpSocket", h.tcp_socket.is_some()),
            ("sleep", h.sleep.is_some()),
        ]
        .into_iter()
        .filter_map(|(f, on)| on.then_some(f))
        .collect();
        match set.as_slice() {
            [] => errs.required_msg(hp.clone(), "must specify a handler type"),
            [_] => {}
            [_, more @ ..] => {
                for f in more {
                    errs.forbidden(
                        format!("{hp}.{f}"),
                        "may not specify more than 1 handler type",
                    );
                }
            }
        }
        if let Some(s) = &h.sleep {
            let grace = grace.unwrap_or(30);
            if s.seconds < 0 || s.seconds > grace {
                errs.invalid(
                    format!("{hp}.sleep"),
                    s.seconds,
                    format!("must be non-negative and less than terminationGracePeriodSeconds ({grace})"),
                );
            }
        }
    }
}

fn validate_container(c: &Container, path: &str, volumes: &HashSet<&str>, errs: &mut Errors) {
    if c.name.is_empty() {
        errs.required(format!("{path}.name"));
    } else if !is_dns1123_label(&c.name) {
        errs.invalid_str(format!("{path}.name"), &c.name, DNS1123_LABEL_MSG);
    }
    match c.image.as_deref() {
        None | Some("") => errs.required(format!("{path}.image")),
        Some(i) if i.trim() != i => errs.invalid_str(
            format!("{path}.image"),
            i,
            "must not have leading or trailing whitespace",
        ),
        _ => {}
    }
    errs.one_of(
        format!("{path}.imagePullPolicy"),
        c.image_pull_policy.as_deref(),
        PULL_POLICIES,
        true,
    );
    errs.one_of(
        format!("{path}.terminationMessagePolicy"),
        c.termination_message_policy.as_deref(),
        &["File", "FallbackToLogsOnError"],
        false,
    );
    let mut port_names = HashSet::new();
    for (i, p) in c.ports.iter().flatten().enumerate() {
        let pp = format!("{path}.ports[{i}]");
        if let Some(msg) = check_port(p.container_port) {
            errs.invalid(format!("{pp}.containerPort"), p.container_port, msg);
        }
        if let Some(h) = p.host_port.filter(|h| *h != 0) {
            if let Some(msg) = check_port(h) {
                errs.invalid(format!("{pp}.hostPort"), h, msg);
            }
        }
        errs.one_of(
            format!("{pp}.protocol"),
            p.protocol.as_deref(),
            PROTOCOLS,
            true,
        );
        if let Some(name) = p.name.as_deref().filter(|n| !n.is_empty()) {
            if let Some(msg) = check_port_name(name) {
                errs.invalid_str(format!("{pp}.name"), name, msg);
            } else if !port_names.insert(name) {
                errs.duplicate(format!("{pp}.name"), name);
            }
        }
    }
    for (i, e) in c.env.iter().flatten().enumerate() {
        let ep = format!("{path}.env[{i}]");
        if e.name.is_empty() {
            errs.required(format!("{ep}.name"));
        } else if let Some(msg) = check_env_var_name(&e.name) {
            errs.invalid_str(format!("{ep}.name"), &e.name, msg);
        }
        if let Some(from) = &e.value_from {
            let sources = [
                from.field_ref.is_some(),
                from.resource_field_ref.is_some(),
                from.config_map_key_ref.is_some(),
                from.secret_key_ref.is_some(),
            ]
            .iter()
            .filter(|b| **b)
            .count();
            if e.value.as_deref().is_some_and(|v| !v.is_empty()) {
                errs.invalid(
                    format!("{ep}.valueFrom"),
                    "",
                    "may not be specified when `value` is not empty",
                );
            } else if sources == 0 {
                errs.invalid(format!("{ep}.valueFrom"), "", "must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or `secretKeyRef`");
            } else if sources > 1 {
                errs.invalid(
                    format!("{ep}.valueFrom"),
                    "",
                    "may not have more than one field specified at a time",
                );
            }
            if let Some(k) = &from.config_map_key_ref {
                if k.key.is_empty() {
                    errs.required(format!("{ep}.valueFrom.configMapKeyRef.key"));
                }
            }
            if let Some(k) = &from.secret_key_ref {
                if k.key.is_empty() {
                    errs.required(format!("{ep}.valueFrom.secretKeyRef.key"));
                }
            }
        }
    }
    let mut mount_paths = HashSet::new();
    for (i, m) in c.volume_mounts.iter().flatten().enumerate() {
        let mp = format!("{path}.volumeMounts[{i}]");
        if m.name.is_empty() {
            errs.required(format!("{mp}.name"));
        } else if !volumes.contains(m.name.as_str()) {
            errs.not_found(format!("{mp}.name"), &m.name);
        }
        if m.mount_path.is_empty() {
            errs.required(format!("{mp}.mountPath"));
        } else if !mount_paths.insert(m.mount_path.as_str()) {
            errs.invalid_str(format!("{mp}.mountPath"), &m.mount_path, "must be unique");
        }
        // kube-apiserver names these two fields without the mount's index.
        let sub_path = m.sub_path.as_deref().unwrap_or_default();
        if !sub_path.is_empty() {
            local_descending_path(sub_path, &format!("{path}.volumeMounts.subPath"), errs);
        }
        if let Some(expr) = m.sub_path_expr.as_deref().filter(|e| !e.is_empty()) {
            if !sub_path.is_empty() {
                errs.invalid_str(
                    format!("{mp}.subPathExpr"),
                    expr,
                    "subPathExpr and subPath are mutually exclusive",
                );
            }
            local_descending_path(expr, &format!("{path}.volumeMounts.subPathExpr"), errs);
        }
        errs.one_of(
            format!("{path}.volumeMounts.mountPropagation"),
            m.mount_propagation.as_deref(),
            &["Bidirectional", "HostToContainer", "None"],
            false,
        );
        if m.mount_propagation.as_deref() == Some("Bidirectional") {
            errs.forbidden(
                format!("{path}.volumeMounts.mountPropagation"),
                "Bidirectional mount propagation is available only to privileged containers",
            );
        }
        match m.recursive_read_only.as_deref() {
            None | Some("Disabled") => {}
            Some("Enabled" | "IfPossible") => {
                if m.read_only != Some(true) {
                    errs.forbidden(
                        format!("{mp}.recursiveReadOnly"),
                        "may only be specified when readOnly is true",
                    );
                }
            }
            Some(other) => errs.not_supported(
                format!("{mp}.recursiveReadOnly"),
                other,
                &["Disabled", "Enabled", "IfPossible"],
            ),
        }
    }
    validate_resources(c.resources.as_ref(), &format!("{path}.resources"), errs);
    validate_seccomp(
        c.security_context
            .as_ref()
            .and_then(|s| s.seccomp_profile.as_ref()),
        &format!("{path}.securityContext"),
        errs,
    );
}

const HOST_PATH_TYPES: &[&str] = &[
    "",
    "BlockDevice",
    "CharDevice",
    "Directory",
    "DirectoryOrCreate",
    "File",
    "FileOrCreate",
    "Socket",
];

fn key_to_paths(items: Option<&Vec<KeyToPath>>, field: &str, errs: &mut Errors) {
    for (i, kp) in items.into_iter().flatten().enumerate() {
        let ip = format!("{field}.items[{i}]");
        if kp.key.is_empty() {
            errs.required(format!("{ip}.key"));
        }
        if kp.path.is_empty() {
            errs.required(format!("{ip}.path"));
        }
        local_non_reserved_path(&kp.path, &format!("{ip}.path"), errs);
        file_mode(kp.mode, &format!("{ip}.mode"), errs);
    }
}

/// A downward API file; kube-apiserver reports its errors at the volume's (or
/// projection's) path, without the item's index.
fn downward_api_file(f: &DownwardAPIVolumeFile, field: &str, errs: &mut Errors) {
    if f.path.is_empty() {
        errs.required(format!("{field}.path"));
    }
    local_non_reserved_path(&f.path, &format!("{field}.path"), errs);
    match (&f.field_ref, &f.resource_field_ref) {
        (Some(_), Some(_)) => errs.invalid(
            field,
            "\"resource\"",
            "fieldRef and resourceFieldRef can not be specified simultaneously",
        ),
        (None, None) => {
            errs.required_msg(field, "one of fieldRef and resourceFieldRef is required")
        }
        _ => {}
    }
    file_mode(f.mode, &format!("{field}.mode"), errs);
}

/// The paths and modes of a volume source: where the node will write or mount.
fn validate_volume_paths(v: &Volume, vp: &str, errs: &mut Errors) {
    if let Some(h) = &v.host_path {
        if h.path.is_empty() {
            errs.required(format!("{vp}.hostPath.path"));
        } else {
            path_no_backsteps(&h.path, &format!("{vp}.hostPath.path"), errs);
            if let Some(t) = h.type_.as_deref().filter(|t| !HOST_PATH_TYPES.contains(t)) {
                errs.not_supported(format!("{vp}.hostPath.type"), t, HOST_PATH_TYPES);
            }
        }
    }
    if let Some(c) = &v.config_map {
        let cp = format!("{vp}.configMap");
        if c.name.is_empty() {
            errs.required(format!("{cp}.name"));
        }
        file_mode(c.default_mode, &format!("{cp}.defaultMode"), errs);
        key_to_paths(c.items.as_ref(), &cp, errs);
    }
    if let Some(s) = &v.secret {
        let sp = format!("{vp}.secret");
        if s.secret_name.as_deref().unwrap_or_default().is_empty() {
            errs.required(format!("{sp}.secretName"));
        }
        file_mode(s.default_mode, &format!("{sp}.defaultMode"), errs);
        key_to_paths(s.items.as_ref(), &sp, errs);
    }
    if let Some(d) = &v.downward_api {
        let dp = format!("{vp}.downwardAPI");
        file_mode(d.default_mode, &format!("{dp}.defaultMode"), errs);
        for f in d.items.iter().flatten() {
            downward_api_file(f, &dp, errs);
        }
    }
    if let Some(g) = &v.git_repo {
        let gp = format!("{vp}.gitRepo");
        if g.repository.is_empty() {
            errs.required(format!("{gp}.repository"));
        }
        local_descending_path(
            g.directory.as_deref().unwrap_or_default(),
            &format!("{gp}.directory"),
            errs,
        );
    }
    if let Some(p) = &v.projected {
        let pp = format!("{vp}.projected");
        file_mode(p.default_mode, &format!("{pp}.defaultMode"), errs);
        let mut seen = HashSet::new();
        let mut unique = |path: &str, shown: &str, errs: &mut Errors| {
            if !path.is_empty() && !seen.insert(path.to_string()) {
                errs.invalid_str(&pp, shown, "conflicting duplicate paths");
            }
        };
        for (i, src) in p.sources.iter().flatten().enumerate() {
            let sp = format!("{pp}.sources[{i}]");
            let mut kinds = 0;
            let keyed = [
                ("secret", src.secret.as_ref().map(|s| (&s.name, &s.items))),
                (
                    "configMap",
                    src.config_map.as_ref().map(|c| (&c.name, &c.items)),
                ),
            ];
            for (field, source) in keyed {
                let Some((name, items)) = source else {
                    continue;
                };
                kinds += 1;
                if name.is_empty() {
                    errs.required(format!("{sp}.{field}.name"));
                }
                key_to_paths(items.as_ref(), &format!("{sp}.{field}"), errs);
                for kp in items.iter().flatten() {
                    unique(&kp.path, name, errs);
                }
            }
            if let Some(d) = &src.downward_api {
                kinds += 1;
                for f in d.items.iter().flatten() {
                    downward_api_file(f, &format!("{sp}.downwardAPI"), errs);
                    unique(&f.path, &f.path, errs);
                }
            }
            if let Some(t) = &src.service_account_token {
                kinds += 1;
                let tp = format!("{sp}.serviceAccountToken");
                let secs = t.expiration_seconds.unwrap_or(3600);
                if secs < 600 {
                    errs.invalid(
                        format!("{tp}.expirationSeconds"),
                        secs,
                        "may not specify a duration less than 10 minutes",
                    );
                } else if secs > 1 << 32 {
                    errs.invalid(
                        format!("{tp}.expirationSeconds"),
                        secs,
                        "may not specify a duration larger than 2^32 seconds",
                    );
                }
                if t.path.is_empty() {
                    errs.required(format!("{pp}.path"));
                } else {
                    local_non_reserved_path(&t.path, &format!("{pp}.path"), errs);
                }
            }
            if let Some(b) = &src.cluster_trust_bundle {
                kinds += 1;
                let bp = format!("{sp}.clusterTrustBundlePEM");
                if b.path.is_empty() {
                    errs.required(format!("{bp}.path"));
                }
                local_non_reserved_path(&b.path, &format!("{bp}.path"), errs);
                unique(&b.path, &b.path, errs);
            }
            if kinds > 1 {
                errs.forbidden(sp, "may not specify more than 1 volume type");
            }
        }
    }
}

/// A seccomp profile of type `Localhost` names a file beneath the node's profile root.
fn validate_seccomp(sc: Option<&SeccompProfile>, field: &str, errs: &mut Errors) {
    let Some(sc) = sc else { return };
    let lp = format!("{field}.seccompProfile.localhostProfile");
    match (sc.type_.as_str(), sc.localhost_profile.as_deref()) {
        ("Localhost", None | Some("")) => {
            errs.required_msg(lp, "must be set when seccomp type is Localhost")
        }
        ("Localhost", Some(p)) => local_descending_path(p, &lp, errs),
        (_, Some(_)) => errs.invalid(lp, "", "can only be set when seccomp type is Localhost"),
        _ => {}
    }
    let tp = format!("{field}.seccompProfile.type");
    match sc.type_.as_str() {
        "" => errs.required_msg(tp, "type is required when seccompProfile is set"),
        "Localhost" | "RuntimeDefault" | "Unconfined" => {}
        other => errs.not_supported(tp, other, &["Localhost", "RuntimeDefault", "Unconfined"]),
    }
}

/// Validates a pod spec at `path` (`spec`, or `spec.template.spec` in a template).
pub fn validate_pod_spec(spec: &PodSpec, path: &str, errs: &mut Errors) {
    let mut volumes = HashSet::new();
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        let vp = format!("{path}.volumes[{i}]");
        if v.name.is_empty() {
            errs.required(format!("{vp}.name"));
        } else if !is_dns1123_label(&v.name) {
            errs.invalid_str(format!("{vp}.name"), &v.name, DNS1123_LABEL_MSG);
        } else if !volumes.insert(v.name.as_str()) {
            errs.duplicate(format!("{vp}.name"), &v.name);
        }
        let sources = serde_json::to_value(v)
            .ok()
            .and_then(|v| {
                v.as_object()
                    .map(|o| o.keys().filter(|k| *k != "name").count())
            })
            .unwrap_or(0);
        if sources == 0 {
            errs.required_msg(vp.clone(), "must specify a volume type");
        } else if sources > 1 {
            errs.forbidden(vp.clone(), "may not specify more than 1 volume type");
        }
        validate_volume_paths(v, &vp, errs);
    }
    if spec.containers.is_empty() {
        errs.required(format!("{path}.containers"));
    }
    validate_seccomp(
        spec.security_context
            .as_ref()
            .and_then(|s| s.seccomp_profile.as_ref()),
        &format!("{path}.securityContext"),
        errs,
    );
    let mut names = HashSet::new();
    for (field, list) in [
        (
            "initContainers",
            spec.init_containers.as_deref().unwrap_or_default(),
        ),
        ("containers", &spec.containers[..]),
    ] {
        for (i, c) in list.iter().enumerate() {
            let cp = format!("{path}.{field}[{i}]");
            validate_container(c, &cp, &volumes, errs);
            validate_lifecycle(c, &cp, spec.termination_grace_period_seconds, errs);
            if !c.name.is_empty() && !names.insert(c.name.as_str()) {
                errs.duplicate(format!("{cp}.name"), &c.name);
            }
        }
    }
    errs.one_of(
        format!("{path}.restartPolicy"),
        spec.restart_policy.as_deref(),
        RESTART_POLICIES,
        true,
    );
    errs.one_of(
        format!("{path}.dnsPolicy"),
        spec.dns_policy.as_deref(),
        DNS_POLICIES,
        true,
    );
    if let Some(t) = spec.termination_grace_period_seconds.filter(|t| *t < 0) {
        errs.invalid(
            format!("{path}.terminationGracePeriodSeconds"),
            t,
            "must be greater than or equal to 0",
        );
    }
    if let Some(d) = spec.active_deadline_seconds.filter(|d| *d <= 0) {
        errs.invalid(
            format!("{path}.activeDeadlineSeconds"),
            d,
            "must be between 1 and 2147483647, inclusive",
        );
    }
    validate_labels(
        spec.node_selector.as_ref(),
        &format!("{path}.nodeSelector"),
        errs,
    );
    for (i, t) in spec.tolerations.iter().flatten().enumerate() {
        errs.one_of(
            format!("{path}.tolerations[{i}].operator"),
            t.operator.as_deref(),
            &["Equal", "Exists"],
            false,
        );
        errs.one_of(
            format!("{path}.tolerations[{i}].effect"),
            t.effect.as_deref(),
            &["NoSchedule", "PreferNoSchedule", "NoExecute"],
            false,
        );
    }
}

/// Checks a controller's selector and template: labels must match, the selector must not be empty.
pub fn validate_template(
    selector: Option<&LabelSelector>,
    template: Option<&PodTemplateSpec>,
    path: &str,
    restart: &[&str],
    errs: &mut Errors,
) {
    let sel_labels = selector.and_then(|s| s.match_labels.as_ref());
    let has_exprs =
        selector.is_some_and(|s| s.match_expressions.as_ref().is_some_and(|e| !e.is_empty()));
    match selector {
        None => errs.required(format!("{path}.selector")),
        Some(_) if sel_labels.is_none_or(|m| m.is_empty()) && !has_exprs => errs.invalid(
            format!("{path}.selector"),
            "null",
            "empty selector is invalid for deployment",
        ),
        _ => {}
    }
    validate_labels(sel_labels, &format!("{path}.selector.matchLabels"), errs);
    let Some(t) = template else {
        errs.required(format!("{path}.template"));
        return;
    };
    let labels = t.metadata.as_ref().and_then(|m| m.labels.as_ref());
    validate_labels(labels, &format!("{path}.template.metadata.labels"), errs);
    if let Some(sel) = selector {
        if !crate::selectors::label_selector_matches(sel, labels) {
            let shown = table::format_labels(labels);
            errs.invalid(
                format!("{path}.template.metadata.labels"),
                format!("map[{}]", shown.replace(',', " ").replace('=', ":")),
                "`selector` does not match template `labels`",
            );
        }
    }
    match &t.spec {
        Some(spec) => {
            validate_pod_spec(spec, &format!("{path}.template.spec"), errs);
            if let Some(p) = spec
                .restart_policy
                .as_deref()
                .filter(|p| !restart.contains(p))
            {
                errs.not_supported(format!("{path}.template.spec.restartPolicy"), p, restart);
            }
        }
        None => errs.required(format!("{path}.template.spec")),
    }
}

pub fn default_template(t: Option<&mut PodTemplateSpec>) {
    if let Some(spec) = t.and_then(|t| t.spec.as_mut()) {
        default_pod_spec(spec);
    }
}

/// Guaranteed, Burstable or BestEffort, as the kubelet computes it.
fn qos_class(spec: &PodSpec) -> &'static str {
    let mut any = false;
    let mut guaranteed = true;
    for c in &spec.containers {
        let r = c.resources.as_ref();
        let limits = r.and_then(|r| r.limits.as_ref());
        let requests = r.and_then(|r| r.requests.as_ref());
        any |= limits.is_some_and(|l| !l.is_empty()) || requests.is_some_and(|q| !q.is_empty());
        for res in ["cpu", "memory"] {
            let l = limits.and_then(|l| l.get(res));
            let q = requests.and_then(|q| q.get(res)).or(l);
            if l.is_none()
                || q.map(|q| quantity::parse(&q.0).ok()) != l.map(|l| quantity::parse(&l.0).ok())
            {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

/// Pods' write hooks (kube's `pkg/registry/core/pod/strategy.go`).
pub(super) struct PodHooks;

impl super::Hooks for PodHooks {
    /// A pod bound to a node is stopped by its node agent first, which then deletes it
    /// with a zero grace period; an unbound or finished one has nothing to stop.
    fn graceful_delete(&self, pod: &Value, requested: Option<i64>) -> Option<i64> {
        let bound = pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
        let terminal = matches!(
            pod.pointer("/status/phase").and_then(Value::as_str),
            Some("Succeeded" | "Failed")
        );
        let grace = requested
            .or_else(|| {
                pod.pointer("/spec/terminationGracePeriodSeconds")
                    .and_then(Value::as_i64)
            })
            .unwrap_or(30);
        (bound && !terminal && grace > 0).then_some(grace)
    }

    fn returns_deleted_object(&self) -> bool {
        true
    }
}

/// Why a pod cannot be bound to a node: a 409 Conflict each, in kube's words.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BindError {
    #[error("pod {pod} is already assigned to node {node:?}")]
    AlreadyAssigned { pod: String, node: String },
    #[error("pod {pod} is being deleted, cannot be assigned to a host")]
    BeingDeleted { pod: String },
}

/// The pod bound to `node` at `now` (the `pods/binding` subresource, kube's
/// `BindingREST.setPodHostAndAnnotations`): `spec.nodeName` set and `PodScheduled` true.
/// A pod already bound, or being deleted, stays as it is.
pub fn bind(pod: &Value, node: &str, now: &str) -> Result<Value, BindError> {
    let name = || {
        pod.pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    if let Some(n) = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    {
        return Err(BindError::AlreadyAssigned {
            pod: name(),
            node: n.into(),
        });
    }
    if pod
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
    {
        return Err(BindError::BeingDeleted { pod: name() });
    }
    let mut pod = pod.clone();
    pod["spec"]["nodeName"] = json!(node);
    let mut conditions: Vec<Value> = pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["type"] != "PodScheduled")
        .cloned()
        .collect();
    conditions.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now}));
    pod["status"]["conditions"] = Value::Array(conditions);
    Ok(pod)
}

const POD_COLUMNS: &[Column] = &[
    table::NAME,
    Column::new("Ready", "string", "The aggregate readiness state of this pod for accepting traffic."),
    Column::new("Status", "string", "The aggregate status of the containers in this pod."),
    Column::new("Restarts", "string", "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted."),
    table::AGE,
    Column::wide("IP", "string", "IP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated."),
    Column::wide("Node", "string", "NodeName is a request to schedule this pod onto a specific node. If it is non-empty, the scheduler simply schedules this pod onto that node, assuming that it fits resource requirements."),
    Column::wide("Nominated Node", "string", "nominatedNodeName is set only when this pod preempts other pods on the node, but it cannot be scheduled right away as preemption victims receive their graceful termination periods."),
    Column::wide("Readiness Gates", "string", "If specified, all readiness gates will be evaluated for pod readiness."),
];

fn condition_true(status: &PodStatus, kind: &str) -> bool {
    status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == kind && c.status == "True")
}

/// The STATUS and RESTARTS cells, computed as kubectl's pod printer does.
fn pod_status_cells(pod: &Pod, now: jiff::Timestamp) -> (String, String, usize) {
    let default_status = PodStatus::default();
    let status = pod.status.as_ref().unwrap_or(&default_status);
    let spec = pod.spec.as_ref();
    let mut reason = status
        .reason
        .clone()
        .filter(|r| !r.is_empty())
        .or_else(|| status.phase.clone())
        .unwrap_or_default();
    if status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "PodScheduled" && c.reason.as_deref() == Some("SchedulingGated"))
    {
        reason = "SchedulingGated".into();
    }
    let mut restarts = 0;
    let mut ready = 0;
    let mut last_restart: Option<Time> = None;
    let mut note_restart = |cs: &k8s_openapi::api::core::v1::ContainerStatus| {
        if let Some(f) = cs
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .and_then(|t| t.finished_at.clone())
        {
            if last_restart.as_ref().is_none_or(|l| l.0 < f.0) {
                last_restart = Some(f);
            }
        }
    };
    let mut initializing = false;
    let n_init = spec
        .and_then(|s| s.init_containers.as_ref())
        .map_or(0, Vec::len);
    for (i, c) in status.init_container_statuses.iter().flatten().enumerate() {
        restarts += c.restart_count;
        note_restart(c);
        let state = c.state.as_ref();
        let term = state.and_then(|s| s.terminated.as_ref());
        let waiting = state.and_then(|s| s.waiting.as_ref());
        if term.is_some_and(|t| t.exit_code == 0) {
            continue;
        }
        if let Some(t) = term {
            reason = match t.reason.as_deref().filter(|r| !r.is_empty()) {
                Some(r) => format!("Init:{r}"),
                None if t.signal.unwrap_or(0) != 0 => {
                    format!("Init:Signal:{}", t.signal.unwrap_or(0))
                }
                None => format!("Init:ExitCode:{}", t.exit_code),
            };
        } else if let Some(r) = waiting
            .and_then(|w| w.reason.as_deref())
            .filter(|r| !r.is_empty() && *r != "PodInitializing")
        {
            reason = format!("Init:{r}");
        } else {
            reason = format!("Init:{i}/{n_init}");
        }
        initializing = true;
        break;
    }
    if !initializing || condition_true(status, "Initialized") {
        restarts = 0;
        let mut has_running = false;
        for c in status.container_statuses.iter().flatten().rev() {
            restarts += c.restart_count;
            note_restart(c);
            let state = c.state.as_ref();
            let term = state.and_then(|s| s.terminated.as_ref());
            if let Some(r) = state
                .and_then(|s| s.waiting.as_ref())
                .and_then(|w| w.reason.clone())
                .filter(|r| !r.is_empty())
            {
                reason = r;
            } else if let Some(t) = term {
                reason = match t.reason.as_deref().filter(|r| !r.is_empty()) {
                    Some(r) => r.to_string(),
                    None if t.signal.unwrap_or(0) != 0 => {
                        format!("Signal:{}", t.signal.unwrap_or(0))
                    }
                    None => format!("ExitCode:{}", t.exit_code),
                };
            } else if c.ready && state.is_some_and(|s| s.running.is_some()) {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            reason = if condition_true(status, "Ready") {
                "Running"
            } else {
                "NotReady"
            }
            .into();
        }
    }
    let terminal = matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"));
    if pod.metadata.deletion_timestamp.is_some() {
        if status.reason.as_deref() == Some("NodeLost") {
            reason = "Unknown".into();
        } else if !terminal {
            reason = "Terminating".into();
        }
    }
    let restarts_str = match last_restart {
        Some(t) if restarts != 0 => format!("{restarts} ({} ago)", table::since(Some(t.0), now)),
        _ => restarts.to_string(),
    };
    (reason, restarts_str, ready)
}

impl Kind for Pod {
    fn default_fields(&mut self, op: Operation) {
        let spec = self.spec.get_or_insert_with(Default::default);
        default_pod_spec(spec);
        if op == Operation::Create {
            if spec
                .service_account_name
                .as_deref()
                .unwrap_or_default()
                .is_empty()
            {
                spec.service_account_name = Some("default".into());
            }
            spec.service_account = spec.service_account_name.clone();
            spec.priority.get_or_insert(0);
            spec.preemption_policy
                .get_or_insert_with(|| "PreemptLowerPriority".into());
            // Requests default to limits for pods (not for templates).
            for c in spec
                .containers
                .iter_mut()
                .chain(spec.init_containers.iter_mut().flatten())
            {
                if let Some(r) = c.resources.as_mut() {
                    if let Some(limits) = r.limits.clone() {
                        let req = r.requests.get_or_insert_with(BTreeMap::new);
                        for (k, v) in limits {
                            req.entry(k).or_insert(v);
                        }
                    }
                }
            }
            let qos = qos_class(spec).to_string();
            let status = self.status.get_or_insert_with(Default::default);
            status.phase.get_or_insert_with(|| "Pending".into());
            status.qos_class = Some(qos);
        }
    }

    fn validate(&self, errs: &mut Errors) {
        match &self.spec {
            Some(spec) => validate_pod_spec(spec, "spec", errs),
            None => errs.required("spec"),
        }
    }

    fn validate_update(&self, old: &Self, errs: &mut Errors) {
        let (Some(new), Some(old)) = (&self.spec, &old.spec) else {
            return;
        };
        // Only images, activeDeadlineSeconds and tolerations may change.
        let mut comparable = new.clone();
        for (c, o) in comparable.containers.iter_mut().zip(&old.containers) {
            c.image = o.image.clone();
        }
        for (c, o) in comparable
            .init_containers
            .iter_mut()
            .flatten()
            .zip(old.init_containers.iter().flatten())
        {
            c.image = o.image.clone();
        }
        comparable.active_deadline_seconds = old.active_deadline_seconds;
        comparable.tolerations = old.tolerations.clone();
        comparable.termination_grace_period_seconds = old.termination_grace_period_seconds;
        if comparable != *old {
            errs.forbidden("spec", "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)");
        }
    }

    fn columns() -> &'static [Column] {
        POD_COLUMNS
    }

    fn cells(&self, now: jiff::Timestamp) -> Vec<Value> {
        let (reason, restarts, ready) = pod_status_cells(self, now);
        let total = self.spec.as_ref().map_or(0, |s| s.containers.len());
        let status = self.status.as_ref();
        let ip = status
            .and_then(|s| s.pod_ips.as_ref())
            .and_then(|ips| ips.first())
            .map(|i| i.ip.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "<none>".into());
        let node = self
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "<none>".into());
        let nominated = status
            .and_then(|s| s.nominated_node_name.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "<none>".into());
        let gates = match self
            .spec
            .as_ref()
            .and_then(|s| s.readiness_gates.as_ref())
            .filter(|g| !g.is_empty())
        {
            Some(gates) => {
                let ok = gates
                    .iter()
                    .filter(|g| status.is_some_and(|s| condition_true(s, &g.condition_type)))
                    .count();
                format!("{ok}/{}", gates.len())
            }
            None => "<none>".into(),
        };
        vec![
            table::name(&self.metadata),
            format!("{ready}/{total}").into(),
            reason.into(),
            restarts.into(),
            table::age(self.meta_created(), now),
            ip.into(),
            node.into(),
            nominated.into(),
            gates.into(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(v: Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn defaults_follow_kubernetes() {
        let mut p = pod(
            json!({"metadata": {"name": "a"}, "spec": {"containers": [{"name": "c", "image": "nginx", "ports": [{"containerPort": 80}]}]}}),
        );
        p.default_fields(Operation::Create);
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
        assert_eq!(
            spec.containers[0].image_pull_policy.as_deref(),
            Some("Always")
        );
        assert_eq!(
            spec.containers[0].ports.as_ref().unwrap()[0]
                .protocol
                .as_deref(),
            Some("TCP")
        );
        assert_eq!(p.status.as_ref().unwrap().phase.as_deref(), Some("Pending"));
        assert_eq!(
            p.status.as_ref().unwrap().qos_class.as_deref(),
            Some("BestEffort")
        );
        let mut p =
            pod(json!({"spec": {"containers": [{"name": "c", "image": "reg:5000/nginx:1.2"}]}}));
        p.default_fields(Operation::Create);
        assert_eq!(
            p.spec.unwrap().containers[0].image_pull_policy.as_deref(),
            Some("IfNotPresent")
        );
    }

    #[test]
    fn validation_reports_each_bad_field() {
        let p = pod(
            json!({"spec": {"restartPolicy": "Sometimes", "containers": [
            {"name": "a", "image": "x", "ports": [{"containerPort": 70000, "protocol": "TCP"}], "imagePullPolicy": "Always"},
            {"name": "a", "imagePullPolicy": "Always"}]}}),
        );
        let mut errs = Errors::default();
        p.validate(&mut errs);
        let msgs: Vec<String> = errs.0.iter().map(|e| e.to_string()).collect();
        assert!(msgs.contains(&"spec.containers[0].ports[0].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive".to_string()), "{msgs:?}");
        assert!(
            msgs.contains(&"spec.containers[1].image: Required value".to_string()),
            "{msgs:?}"
        );
        assert!(
            msgs.contains(&"spec.containers[1].name: Duplicate value: \"a\"".to_string()),
            "{msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.starts_with("spec.restartPolicy: Unsupported value: \"Sometimes\"")),
            "{msgs:?}"
        );
    }

    #[test]
    fn lifecycle_hooks_take_one_handler_and_sleep_within_the_grace_period() {
        let p = pod(
            json!({"spec": {"terminationGracePeriodSeconds": 10, "containers": [
            {"name": "a", "image": "x", "lifecycle": {
                "preStop": {"sleep": {"seconds": 11}},
                "postStart": {"exec": {"command": ["true"]}, "sleep": {"seconds": 1}}}},
            {"name": "b", "image": "x", "lifecycle": {"preStop": {}}}]}}),
        );
        let mut errs = Errors::default();
        p.validate(&mut errs);
        let msgs: Vec<String> = errs.0.iter().map(|e| e.to_string()).collect();
        assert!(msgs.contains(&"spec.containers[0].lifecycle.preStop.sleep: Invalid value: 11: must be non-negative and less than terminationGracePeriodSeconds (10)".to_string()), "{msgs:?}");
        assert!(msgs.contains(&"spec.containers[0].lifecycle.postStart.sleep: Forbidden: may not specify more than 1 handler type".to_string()), "{msgs:?}");
        assert!(msgs.contains(&"spec.containers[1].lifecycle.preStop: Required value: must specify a handler type".to_string()), "{msgs:?}");
    }

    /// Regression: `subPath: ../../etc` and `items: [{path: ../../../x}]` were accepted and
    /// let a pod reach the node's files.
    #[test]
    fn paths_that_leave_their_volume_are_invalid() {
        let p = pod(
            json!({"spec": {"restartPolicy": "Always", "dnsPolicy": "ClusterFirst",
            "volumes": [
                {"name": "c", "configMap": {"name": "cm", "items": [
                    {"key": "k", "path": "../../../x"}, {"key": "k", "path": "/abs"},
                    {"key": "k", "path": "..data"}, {"key": "k", "path": "ok/file", "mode": 4096}]}},
                {"name": "s", "secret": {"secretName": "s", "items": [{"key": "k", "path": "a/../../b"}]}},
                {"name": "d", "downwardAPI": {"items": [{"path": "../n", "fieldRef": {"fieldPath": "metadata.name"}}]}},
                {"name": "p", "projected": {"sources": [
                    {"configMap": {"name": "cm", "items": [{"key": "k", "path": "../x"}]}},
                    {"serviceAccountToken": {"path": "/token"}}]}},
                {"name": "h", "hostPath": {"path": "/var/../etc", "type": "Nonsense"}}],
            "containers": [{"name": "a", "image": "x", "imagePullPolicy": "Always", "volumeMounts": [
                {"name": "c", "mountPath": "/a", "subPath": "../../etc"},
                {"name": "c", "mountPath": "/b", "subPath": "/"},
                {"name": "c", "mountPath": "/c", "subPathExpr": "$(X)/../.."},
                {"name": "c", "mountPath": "/d", "subPath": "a", "subPathExpr": "b"},
                {"name": "c", "mountPath": "/e", "subPath": "fine/dir"}]}]}}),
        );
        let mut errs = Errors::default();
        p.validate(&mut errs);
        let msgs: Vec<String> = errs.0.iter().map(|e| e.to_string()).collect();
        for want in [
            "spec.volumes[0].configMap.items[0].path: Invalid value: \"../../../x\": must not contain '..'",
            "spec.volumes[0].configMap.items[1].path: Invalid value: \"/abs\": must be a relative path",
            "spec.volumes[0].configMap.items[2].path: Invalid value: \"..data\": must not start with '..'",
            "spec.volumes[0].configMap.items[3].mode: Invalid value: 4096: must be a number between 0 and 0777 (octal), both inclusive",
            "spec.volumes[1].secret.items[0].path: Invalid value: \"a/../../b\": must not contain '..'",
            "spec.volumes[2].downwardAPI.path: Invalid value: \"../n\": must not contain '..'",
            "spec.volumes[3].projected.sources[0].configMap.items[0].path: Invalid value: \"../x\": must not contain '..'",
            "spec.volumes[3].projected.path: Invalid value: \"/token\": must be a relative path",
            "spec.volumes[4].hostPath.path: Invalid value: \"/var/../etc\": must not contain '..'",
            "spec.containers[0].volumeMounts.subPath: Invalid value: \"../../etc\": must not contain '..'",
            "spec.containers[0].volumeMounts.subPath: Invalid value: \"/\": must be a relative path",
            "spec.containers[0].volumeMounts.subPathExpr: Invalid value: \"$(X)/../..\": must not contain '..'",
            "spec.containers[0].volumeMounts[3].subPathExpr: Invalid value: \"b\": subPathExpr and subPath are mutually exclusive",
        ] {
            assert!(msgs.iter().any(|m| m == want), "missing {want}\nin {msgs:#?}");
        }
        assert!(
            msgs.iter().any(|m| m.starts_with(
                "spec.volumes[4].hostPath.type: Unsupported value: \"Nonsense\": supported values: \"\", \"BlockDevice\""
            )),
            "{msgs:#?}"
        );
        assert_eq!(msgs.len(), 14, "{msgs:#?}");
    }

    #[test]
    fn status_column_follows_kubectl() {
        let now = jiff::Timestamp::now();
        let p = pod(
            json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}, "status": {"phase": "Running", "containerStatuses": [
            {"name": "a", "ready": true, "restartCount": 0, "image": "", "imageID": "", "state": {"running": {}}},
            {"name": "b", "ready": false, "restartCount": 3, "image": "", "imageID": "", "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}}),
        );
        let (reason, restarts, ready) = pod_status_cells(&p, now);
        assert_eq!(
            (reason.as_str(), restarts.as_str(), ready),
            ("CrashLoopBackOff", "3", 1)
        );
    }

    #[test]
    fn binding_sets_the_node_and_replaces_pod_scheduled() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {}, "status": {"conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"},
            {"type": "Ready", "status": "False"}]}});
        let bound = bind(&pod, "n1", "2024-01-01T00:00:00Z").unwrap();
        assert_eq!(bound["spec"]["nodeName"], "n1");
        assert_eq!(
            bound["status"]["conditions"],
            json!([{"type": "Ready", "status": "False"},
                {"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": "2024-01-01T00:00:00Z"}])
        );
    }

    #[test]
    fn binding_refuses_a_bound_or_deleted_pod_in_kubes_words() {
        let bound = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1"}});
        assert_eq!(
            bind(&bound, "n2", "t").unwrap_err().to_string(),
            "pod p is already assigned to node \"n1\""
        );
        let deleting = json!({"metadata": {"name": "p", "deletionTimestamp": "t"}, "spec": {}});
        assert_eq!(
            bind(&deleting, "n2", "t").unwrap_err().to_string(),
            "pod p is being deleted, cannot be assigned to a host"
        );
    }
}
