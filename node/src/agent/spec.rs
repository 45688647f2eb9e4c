//! Pure functions from pod spec to `ContainerSpec`: env, argv, security, limits, runtime.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::images::{Image, RunConfig};
use crate::logs::LogFile;
use crate::runtime::{Alive, ContainerSpec, Seccomp, Security};
use crate::sandbox::{Mount, Sandbox};

/// What a container's spec is made of besides its pod, image and sandbox: resolved (the
/// environment read, the mounts opened) by the supervisor.
pub struct Resolved {
    /// This run's unique name on the node.
    pub run_id: String,
    /// The environment the pod spec gives (before the image's).
    pub env: Vec<(String, String)>,
    pub mounts: Vec<Mount>,
    pub log: LogFile,
    pub alive: Alive,
}

/// What a runtime is given to start container `c` of `pod`.
pub fn container_spec(
    pod: &Pod,
    c: &Container,
    img: &Image,
    sandbox: &Sandbox,
    r: Resolved,
) -> ContainerSpec {
    let m = &pod.metadata;
    let (ns, name) = (
        m.namespace.as_deref().unwrap_or_default(),
        m.name.as_deref().unwrap_or_default(),
    );
    let run = img.run.as_ref();
    ContainerSpec {
        id: format!("{ns}/{name}/{}", c.name),
        run_id: r.run_id,
        pod_uid: m.uid.clone().unwrap_or_default(),
        hostname: sandbox.hostname.clone(),
        files: sandbox.files(),
        security: security(pod, c),
        image_user: run.and_then(|r| r.user.clone()).filter(|u| !u.is_empty()),
        cpu_request_millis: request(c, "cpu").map(|m| m as u64),
        ports: c
            .ports
            .iter()
            .flatten()
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .map(|p| p.container_port as u16)
            .collect(),
        image: img.content.clone(),
        image_digest: img.digest.clone(),
        argv: argv(c, run),
        env: match run {
            Some(run) => image_env(run, r.env),
            None => r.env,
        },
        working_dir: c.working_dir.clone().or_else(|| {
            run.and_then(|r| r.working_dir.clone())
                .filter(|d| !d.is_empty())
        }),
        mounts: r.mounts,
        stdin: c.stdin == Some(true),
        stdin_once: c.stdin_once == Some(true),
        tty: c.tty == Some(true),
        pid_namespace: sandbox.pid_namespace.clone(),
        network: sandbox.network.clone(),
        resolver: sandbox.resolver.clone(),
        log: r.log,
        memory_limit: limit(c, "memory").map(|m| (m / 1000) as u64),
        cpu_limit_millis: limit(c, "cpu").map(|m| m as u64),
        alive: r.alive,
    }
}

/// The value of a `fieldRef` (`status.podIP`: `pod_ip`; `status.hostIP`: `host_ip`).
pub fn field(pod: &Pod, path: &str, pod_ip: &str, host_ip: &str) -> String {
    let m = &pod.metadata;
    let spec = pod.spec.as_ref();
    let keyed = |map: &Option<BTreeMap<String, String>>, prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|k| k.strip_prefix("['"))
            .and_then(|k| k.strip_suffix("']"))
            .and_then(|k| map.as_ref()?.get(k).cloned())
    };
    let own = |v: Option<&String>| v.cloned().unwrap_or_default();
    match path {
        "metadata.name" => own(m.name.as_ref()),
        "metadata.namespace" => own(m.namespace.as_ref()),
        "metadata.uid" => own(m.uid.as_ref()),
        "spec.nodeName" => own(spec.and_then(|s| s.node_name.as_ref())),
        "spec.serviceAccountName" => own(spec.and_then(|s| s.service_account_name.as_ref())),
        "status.hostIP" => host_ip.to_string(),
        "status.podIP" => pod_ip.to_string(),
        p if p.starts_with("metadata.labels") => {
            keyed(&m.labels, "metadata.labels").unwrap_or_default()
        }
        p if p.starts_with("metadata.annotations") => {
            keyed(&m.annotations, "metadata.annotations").unwrap_or_default()
        }
        _ => String::new(),
    }
}

/// A Service's variables for containers, as the kubelet's (and Docker links') makes them:
/// `{NAME}_SERVICE_HOST`, `_SERVICE_PORT` (and per named port), `{NAME}_PORT` and
/// `{NAME}_PORT_{port}_{PROTO}` with `_PROTO`, `_PORT`, `_ADDR`. None for a Service
/// without a cluster IP.
pub fn service_env(svc: &k8s_openapi::api::core::v1::Service) -> Vec<(String, String)> {
    let Some(spec) = svc.spec.as_ref() else {
        return Vec::new();
    };
    let ip = spec.cluster_ip.as_deref().unwrap_or_default();
    let ports = spec.ports.as_deref().unwrap_or_default();
    if ip.is_empty() || ip == "None" || ports.is_empty() {
        return Vec::new();
    }
    let var = |s: &str| s.replace('-', "_").to_uppercase();
    let prefix = var(svc.metadata.name.as_deref().unwrap_or_default());
    let mut out = vec![
        (format!("{prefix}_SERVICE_HOST"), ip.to_string()),
        (format!("{prefix}_SERVICE_PORT"), ports[0].port.to_string()),
    ];
    for p in ports {
        if let Some(name) = p.name.as_deref().filter(|n| !n.is_empty()) {
            out.push((
                format!("{prefix}_SERVICE_PORT_{}", var(name)),
                p.port.to_string(),
            ));
        }
    }
    for (i, p) in ports.iter().enumerate() {
        let proto = p.protocol.as_deref().unwrap_or("TCP");
        let url = format!("{}://{ip}:{}", proto.to_lowercase(), p.port);
        if i == 0 {
            out.push((format!("{prefix}_PORT"), url.clone()));
        }
        let pp = format!("{prefix}_PORT_{}_{}", p.port, proto.to_uppercase());
        out.push((format!("{pp}_PROTO"), proto.to_lowercase()));
        out.push((format!("{pp}_PORT"), p.port.to_string()));
        out.push((format!("{pp}_ADDR"), ip.to_string()));
        out.push((pp, url));
    }
    out
}

/// Why a configMap or secret a pod uses could not be read, in the kubelet's words.
pub fn source_error(kind: &str, ns: &str, name: &str, e: kube::Error) -> String {
    match e {
        kube::Error::Api(s) if s.code == 404 => format!("{kind} {name:?} not found"),
        kube::Error::Api(s) => format!("couldn't get {kind} {ns}/{name}: {}", s.message),
        e => format!("couldn't get {kind} {ns}/{name}: {e}"),
    }
}

/// A key a container's env refers to: `None` when the reference is optional and missing.
pub fn referenced(
    kind: &str,
    ns: &str,
    name: &str,
    key: &str,
    optional: Option<bool>,
    found: Result<Option<String>, String>,
) -> Result<Option<String>, String> {
    match found {
        Ok(Some(v)) => Ok(Some(v)),
        _ if optional == Some(true) => Ok(None),
        Ok(None) => Err(format!("couldn't find key {key} in {kind} {ns}/{name}")),
        Err(e) => Err(e),
    }
}

pub fn limit(c: &Container, res: &str) -> Option<i128> {
    c.resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get(res))
        .and_then(|q| skiff_api::quantity::parse(&q.0).ok())
        .map(|m| m.0)
}

/// The container's securityContext over its pod's.
pub fn security(pod: &Pod, c: &Container) -> Security {
    let p = pod
        .spec
        .as_ref()
        .and_then(|s| s.security_context.clone())
        .unwrap_or_default();
    let own = c.security_context.clone().unwrap_or_default();
    let caps = own.capabilities.clone().unwrap_or_default();
    Security {
        run_as_user: own.run_as_user.or(p.run_as_user),
        run_as_group: own.run_as_group.or(p.run_as_group),
        run_as_non_root: own.run_as_non_root.or(p.run_as_non_root) == Some(true),
        supplemental_groups: p.supplemental_groups.unwrap_or_default(),
        read_only_root_filesystem: own.read_only_root_filesystem == Some(true),
        privileged: own.privileged == Some(true),
        allow_privilege_escalation: own.allow_privilege_escalation,
        add_capabilities: caps.add.unwrap_or_default(),
        drop_capabilities: caps.drop.unwrap_or_default(),
        seccomp: own
            .seccomp_profile
            .or(p.seccomp_profile)
            .and_then(|s| match s.type_.as_str() {
                "Unconfined" => Some(Seccomp::Unconfined),
                "RuntimeDefault" => Some(Seccomp::RuntimeDefault),
                "Localhost" => Some(Seccomp::Localhost(s.localhost_profile.unwrap_or_default())),
                _ => None,
            }),
    }
}

/// A container's resource request in milli-units (its limit when it states none, as the
/// API server defaults it).
pub fn request(c: &Container, res: &str) -> Option<i128> {
    c.resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|l| l.get(res))
        .and_then(|q| skiff_api::quantity::parse(&q.0).ok())
        .map(|m| m.0)
        .or_else(|| limit(c, res))
}

/// A container's arguments as Kubernetes composes them: `command` replaces the image's
/// Entrypoint (and then its Cmd is dropped), `args` replaces its Cmd. A Wasm artifact has
/// neither: its argv[0] is the container's name.
pub fn argv(c: &Container, image: Option<&RunConfig>) -> Vec<String> {
    let Some(image) = image else {
        let mut argv = c.command.clone().unwrap_or_default();
        if argv.is_empty() {
            argv.push(c.name.clone());
        }
        argv.extend(c.args.clone().unwrap_or_default());
        return argv;
    };
    let image = Some(image);
    let entrypoint = image.and_then(|r| r.entrypoint.clone()).unwrap_or_default();
    let cmd = image.and_then(|r| r.cmd.clone()).unwrap_or_default();
    let mut argv = match &c.command {
        Some(command) if !command.is_empty() => command.clone(),
        _ => entrypoint,
    };
    let args = match (&c.command, &c.args) {
        (_, Some(args)) => args.clone(),
        (Some(command), None) if !command.is_empty() => Vec::new(),
        _ => cmd,
    };
    if argv.is_empty() {
        // Only Cmd (or nothing) from the image: its first word is the program.
        let mut args = args.into_iter();
        argv.push(args.next().unwrap_or_else(|| c.name.clone()));
        argv.extend(args);
        return argv;
    }
    argv.extend(args);
    argv
}

/// The image's `Env`, overridden by the container's own.
pub fn image_env(run: &RunConfig, own: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = run
        .env
        .iter()
        .flatten()
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| own.iter().all(|(o, _)| o != k))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    env.extend(own);
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_give_the_kubelets_variables() {
        let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-api"},
            "spec": {"clusterIP": "10.96.3.4", "ports": [
                {"name": "http", "port": 80, "protocol": "TCP"},
                {"name": "dns", "port": 53, "protocol": "UDP"},
            ]},
        }))
        .unwrap();
        let env: BTreeMap<String, String> = service_env(&svc).into_iter().collect();
        let want: BTreeMap<String, String> = [
            ("WEB_API_SERVICE_HOST", "10.96.3.4"),
            ("WEB_API_SERVICE_PORT", "80"),
            ("WEB_API_SERVICE_PORT_HTTP", "80"),
            ("WEB_API_SERVICE_PORT_DNS", "53"),
            ("WEB_API_PORT", "tcp://10.96.3.4:80"),
            ("WEB_API_PORT_80_TCP", "tcp://10.96.3.4:80"),
            ("WEB_API_PORT_80_TCP_PROTO", "tcp"),
            ("WEB_API_PORT_80_TCP_PORT", "80"),
            ("WEB_API_PORT_80_TCP_ADDR", "10.96.3.4"),
            ("WEB_API_PORT_53_UDP", "udp://10.96.3.4:53"),
            ("WEB_API_PORT_53_UDP_PROTO", "udp"),
            ("WEB_API_PORT_53_UDP_PORT", "53"),
            ("WEB_API_PORT_53_UDP_ADDR", "10.96.3.4"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(env, want);
        let headless: k8s_openapi::api::core::v1::Service = serde_json::from_value(
            serde_json::json!({"metadata": {"name": "h"}, "spec": {"clusterIP": "None", "ports": [{"port": 80}]}}),
        )
        .unwrap();
        assert!(service_env(&headless).is_empty());
    }

    fn container(command: Option<&[&str]>, args: Option<&[&str]>) -> Container {
        let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        Container {
            name: "app".into(),
            command: command.map(own),
            args: args.map(own),
            ..Default::default()
        }
    }

    #[test]
    fn arguments_compose_as_in_kubernetes() {
        let image = RunConfig {
            entrypoint: Some(vec!["/app.wasm".into()]),
            cmd: Some(vec!["--serve".into()]),
            ..Default::default()
        };
        let run = |c: Option<&[&str]>, a: Option<&[&str]>, img: Option<&RunConfig>| {
            argv(&container(c, a), img).join(" ")
        };
        assert_eq!(run(None, None, Some(&image)), "/app.wasm --serve");
        assert_eq!(run(None, Some(&["-v"]), Some(&image)), "/app.wasm -v");
        assert_eq!(
            run(Some(&["/other.wasm"]), None, Some(&image)),
            "/other.wasm"
        );
        assert_eq!(
            run(Some(&["/o.wasm"]), Some(&["x"]), Some(&image)),
            "/o.wasm x"
        );
        let cmd_only = RunConfig {
            cmd: Some(vec!["/app.wasm".into(), "a".into()]),
            ..Default::default()
        };
        assert_eq!(run(None, None, Some(&cmd_only)), "/app.wasm a");
        // Wasm artifacts have no entrypoint: argv[0] is the container's name.
        assert_eq!(
            run(None, Some(&["from", "kubectl"]), None),
            "app from kubectl"
        );
        assert_eq!(run(Some(&["prog"]), Some(&["x"]), None), "prog x");
    }

    #[test]
    fn image_env_is_overridden_by_the_containers() {
        let image = RunConfig {
            env: Some(vec!["A=1".into(), "B=2".into()]),
            ..Default::default()
        };
        let env = image_env(&image, vec![("B".into(), "own".into())]);
        assert_eq!(
            env,
            [
                ("A".to_string(), "1".to_string()),
                ("B".into(), "own".into())
            ]
        );
    }
    #[test]
    fn fields_come_from_the_pod_and_its_addresses() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "u1",
                "labels": {"app": "a"}, "annotations": {"k": "v"}},
            "spec": {"nodeName": "n1", "containers": []},
        }))
        .unwrap();
        let f = |path| field(&pod, path, "10.1.0.5", "192.168.0.2");
        assert_eq!(f("metadata.name"), "web");
        assert_eq!(f("metadata.namespace"), "ns");
        assert_eq!(f("metadata.uid"), "u1");
        assert_eq!(f("spec.nodeName"), "n1");
        assert_eq!(f("spec.serviceAccountName"), "");
        assert_eq!(f("status.podIP"), "10.1.0.5");
        assert_eq!(f("status.hostIP"), "192.168.0.2");
        assert_eq!(f("metadata.labels['app']"), "a");
        assert_eq!(f("metadata.annotations['k']"), "v");
        assert_eq!(f("metadata.labels['none']"), "");
    }
}
