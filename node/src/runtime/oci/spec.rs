//! The OCI runtime spec (`config.json`) of a container, built with `oci-spec`: the pod's
//! network namespace (or the node's), its own mount, PID, UTS and IPC namespaces;
//! containerd's default capabilities, no-new-privileges, masked and read-only paths, a
//! deny-all device rule before the usual devices; cgroup limits from the container's
//! resources; the container's volumes bound in.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capabilities, Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder,
    LinuxDeviceCgroupBuilder, LinuxMemoryBuilder, LinuxNamespace, LinuxNamespaceBuilder,
    LinuxNamespaceType, LinuxPidsBuilder, LinuxResources, LinuxResourcesBuilder, LinuxSeccomp,
    Mount, MountBuilder, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

/// containerd's default capability set (what a Kubernetes container gets unless its
/// securityContext adds or drops).
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// Paths of /proc and /sys hidden from containers (containerd's defaults).
const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths containers may read but not write (containerd's defaults).
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The CFS period cpu limits are quotas of (the kubelet's default).
const CPU_PERIOD: u64 = 100_000;
/// The smallest quota the kernel takes.
const MIN_QUOTA: i64 = 1_000;

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("unknown capability {0:?}")]
    Capability(String),
    #[error("building the runtime spec: {0}")]
    Build(String),
}

fn build_err(e: impl std::fmt::Display) -> SpecError {
    SpecError::Build(e.to_string())
}

/// A directory or file of the node bound into the container.
#[derive(Clone, Debug, PartialEq)]
pub struct Bind {
    pub source: PathBuf,
    pub destination: String,
    pub read_only: bool,
}

/// Everything the spec is made of, resolved.
#[derive(Clone, Debug)]
pub struct Config {
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub hostname: String,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub read_only_root: bool,
    /// The pod's network namespace; `None`: the node's.
    pub netns: Option<PathBuf>,
    /// The pod's shared PID namespace; `None`: the container's own.
    pub pidns: Option<PathBuf>,
    pub binds: Vec<Bind>,
    pub capabilities: HashSet<String>,
    pub privileged: bool,
    pub no_new_privileges: bool,
    pub memory_limit: Option<i64>,
    pub cpu_limit_millis: Option<i64>,
    pub cpu_request_millis: Option<i64>,
    pub pids_limit: Option<i64>,
    pub cgroups_path: String,
    pub terminal: bool,
    /// The container's seccomp filter; `None`: unconfined.
    pub seccomp: Option<LinuxSeccomp>,
}

/// The capabilities a container ends with: the defaults, without `drop` (`ALL` drops
/// every one), with `add` (`ALL` adds every one), as containerd's CRI computes them.
pub fn capabilities(add: &[String], drop: &[String]) -> Result<HashSet<String>, SpecError> {
    let norm = |c: &str| c.trim_start_matches("CAP_").to_uppercase();
    let valid = |c: &String| -> Result<String, SpecError> {
        let n = norm(c);
        if n == "ALL" {
            return Ok(n);
        }
        serde_json::from_value::<Capability>(serde_json::Value::String(n.clone()))
            .map(|_| n)
            .map_err(|_| SpecError::Capability(c.clone()))
    };
    let add: Vec<String> = add.iter().map(valid).collect::<Result<_, _>>()?;
    let drop: Vec<String> = drop.iter().map(valid).collect::<Result<_, _>>()?;
    let mut caps: HashSet<String> = if add.iter().any(|c| c == "ALL") {
        all_capabilities()
    } else {
        DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).collect()
    };
    if drop.iter().any(|c| c == "ALL") {
        caps.clear();
    }
    for c in &drop {
        caps.remove(c);
    }
    for c in add.into_iter().filter(|c| c != "ALL") {
        caps.insert(c);
    }
    Ok(caps)
}

/// Every capability the kernel knows (what a privileged container gets).
pub fn all_capabilities() -> HashSet<String> {
    // The kernel's list, up to CAP_CHECKPOINT_RESTORE (40).
    [
        "CHOWN",
        "DAC_OVERRIDE",
        "DAC_READ_SEARCH",
        "FOWNER",
        "FSETID",
        "KILL",
        "SETGID",
        "SETUID",
        "SETPCAP",
        "LINUX_IMMUTABLE",
        "NET_BIND_SERVICE",
        "NET_BROADCAST",
        "NET_ADMIN",
        "NET_RAW",
        "IPC_LOCK",
        "IPC_OWNER",
        "SYS_MODULE",
        "SYS_RAWIO",
        "SYS_CHROOT",
        "SYS_PTRACE",
        "SYS_PACCT",
        "SYS_ADMIN",
        "SYS_BOOT",
        "SYS_NICE",
        "SYS_RESOURCE",
        "SYS_TIME",
        "SYS_TTY_CONFIG",
        "MKNOD",
        "LEASE",
        "AUDIT_WRITE",
        "AUDIT_CONTROL",
        "SETFCAP",
        "MAC_OVERRIDE",
        "MAC_ADMIN",
        "SYSLOG",
        "WAKE_ALARM",
        "BLOCK_SUSPEND",
        "AUDIT_READ",
        "PERFMON",
        "BPF",
        "CHECKPOINT_RESTORE",
    ]
    .iter()
    .map(|c| c.to_string())
    .collect()
}

fn to_caps(names: &HashSet<String>) -> Result<Capabilities, SpecError> {
    names
        .iter()
        .map(|n| {
            serde_json::from_value::<Capability>(serde_json::Value::String(n.clone()))
                .map_err(|_| SpecError::Capability(n.clone()))
        })
        .collect()
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount, SpecError> {
    MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(build_err)
}

fn namespace(typ: LinuxNamespaceType, path: Option<&Path>) -> Result<LinuxNamespace, SpecError> {
    let b = LinuxNamespaceBuilder::default().typ(typ);
    match path {
        Some(p) => b.path(p),
        None => b,
    }
    .build()
    .map_err(build_err)
}

/// The kubelet's CPU shares for a request (`MilliCPUToShares`).
pub fn cpu_shares(request_millis: i64) -> u64 {
    ((request_millis * 1024) / 1000).max(2) as u64
}

/// The kubelet's CFS quota for a limit (`MilliCPUToQuota`).
pub fn cpu_quota(limit_millis: i64) -> i64 {
    (limit_millis * CPU_PERIOD as i64 / 1000).max(MIN_QUOTA)
}

pub fn build(c: &Config) -> Result<Spec, SpecError> {
    let caps = if c.privileged {
        to_caps(&all_capabilities())?
    } else {
        to_caps(&c.capabilities)?
    };
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .inheritable(Capabilities::new())
        .ambient(Capabilities::new())
        .build()
        .map_err(build_err)?;
    let user = UserBuilder::default()
        .uid(c.uid)
        .gid(c.gid)
        .additional_gids(c.additional_gids.clone())
        .build()
        .map_err(build_err)?;
    let process = ProcessBuilder::default()
        .terminal(c.terminal)
        .user(user)
        .args(c.argv.clone())
        .env(c.env.clone())
        .cwd(if c.cwd.is_empty() { "/" } else { &c.cwd })
        .no_new_privileges(c.no_new_privileges && !c.privileged)
        .capabilities(capabilities)
        .build()
        .map_err(build_err)?;
    let root = RootBuilder::default()
        .path("rootfs")
        .readonly(c.read_only_root)
        .build()
        .map_err(build_err)?;
    let mounts = mounts(c)?;
    let mut namespaces = vec![
        namespace(LinuxNamespaceType::Pid, c.pidns.as_deref())?,
        namespace(LinuxNamespaceType::Ipc, None)?,
        namespace(LinuxNamespaceType::Uts, None)?,
        namespace(LinuxNamespaceType::Mount, None)?,
    ];
    if let Some(netns) = &c.netns {
        namespaces.push(namespace(LinuxNamespaceType::Network, Some(netns))?);
    }
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources(c)?)
        .cgroups_path(PathBuf::from(&c.cgroups_path));
    if let Some(filter) = &c.seccomp {
        linux = linux.seccomp(filter.clone());
    }
    if !c.privileged {
        linux = linux
            .masked_paths(
                MASKED_PATHS
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>(),
            )
            .readonly_paths(
                READONLY_PATHS
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>(),
            );
    }
    SpecBuilder::default()
        .version("1.0.2")
        .root(root)
        .hostname(c.hostname.clone())
        .process(process)
        .mounts(mounts)
        .linux(linux.build().map_err(build_err)?)
        .build()
        .map_err(build_err)
}

/// The container's mounts: the kernel file systems runc's default spec has, then the
/// pod's binds.
fn mounts(c: &Config) -> Result<Vec<Mount>, SpecError> {
    let sys_mode = if c.privileged { "rw" } else { "ro" };
    let mut mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", sys_mode],
        )?,
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", sys_mode],
        )?,
    ];
    for b in &c.binds {
        let mut options = vec!["rbind", "rprivate"];
        if b.read_only {
            options.push("ro");
        }
        mounts.push(mount(
            &b.destination,
            "bind",
            &b.source.to_string_lossy(),
            &options,
        )?);
    }
    Ok(mounts)
}

/// The container's cgroup: devices denied but the usual ones, memory, CPU and pids.
fn resources(c: &Config) -> Result<LinuxResources, SpecError> {
    // Deny every device first; runc then allows the usual ones (null, zero, tty, ...).
    let deny_all = LinuxDeviceCgroupBuilder::default()
        .allow(c.privileged)
        .access("rwm")
        .build()
        .map_err(build_err)?;
    let mut resources = LinuxResourcesBuilder::default().devices(vec![deny_all]);
    if let Some(limit) = c.memory_limit {
        let memory = LinuxMemoryBuilder::default().limit(limit).build();
        resources = resources.memory(memory.map_err(build_err)?);
    }
    let mut cpu = LinuxCpuBuilder::default();
    if let Some(limit) = c.cpu_limit_millis {
        cpu = cpu.quota(cpu_quota(limit)).period(CPU_PERIOD);
    }
    // A container that asks for no CPU gets the least weight, as the kubelet gives it.
    let request = c.cpu_request_millis.or(c.cpu_limit_millis).unwrap_or(0);
    cpu = cpu.shares(cpu_shares(request));
    resources = resources.cpu(cpu.build().map_err(build_err)?);
    if let Some(pids) = c.pids_limit {
        let pids = LinuxPidsBuilder::default().limit(pids).build();
        resources = resources.pids(pids.map_err(build_err)?);
    }
    resources.build().map_err(build_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn capabilities_follow_add_and_drop() {
        let default = capabilities(&[], &[]).unwrap();
        assert_eq!(default.len(), DEFAULT_CAPABILITIES.len());
        let c = capabilities(&s(&["NET_ADMIN"]), &s(&["NET_RAW", "CAP_CHOWN"])).unwrap();
        assert!(c.contains("NET_ADMIN") && !c.contains("NET_RAW") && !c.contains("CHOWN"));
        let only = capabilities(&s(&["NET_BIND_SERVICE"]), &s(&["ALL"])).unwrap();
        assert_eq!(only, HashSet::from(["NET_BIND_SERVICE".to_string()]));
        assert!(capabilities(&s(&["ALL"]), &[])
            .unwrap()
            .contains("SYS_ADMIN"));
        assert!(matches!(
            capabilities(&s(&["NOT_A_CAP"]), &[]),
            Err(SpecError::Capability(_))
        ));
    }

    #[test]
    fn cpu_figures_are_the_kubelets() {
        assert_eq!(cpu_shares(0), 2);
        assert_eq!(cpu_shares(250), 256);
        assert_eq!(cpu_quota(500), 50_000);
        assert_eq!(cpu_quota(1), 1_000);
    }

    #[test]
    fn the_spec_joins_the_pod_network_and_limits_the_container() {
        let c = Config {
            argv: s(&["/bin/sh", "-c", "true"]),
            env: s(&["PATH=/bin"]),
            cwd: String::new(),
            hostname: "web".into(),
            uid: 1000,
            gid: 1000,
            additional_gids: vec![],
            read_only_root: true,
            netns: Some("/run/netns/skiff-x".into()),
            pidns: None,
            binds: vec![Bind {
                source: "/data/v".into(),
                destination: "/data".into(),
                read_only: true,
            }],
            capabilities: capabilities(&[], &s(&["ALL"])).unwrap(),
            privileged: false,
            no_new_privileges: true,
            memory_limit: Some(64 << 20),
            cpu_limit_millis: Some(500),
            cpu_request_millis: Some(100),
            pids_limit: Some(64),
            cgroups_path: "/skiff/pod/c".into(),
            terminal: false,
            seccomp: Some(super::super::seccomp::runtime_default(&HashSet::new())),
        };
        let v = serde_json::to_value(build(&c).unwrap()).unwrap();
        assert_eq!(v["process"]["cwd"], "/");
        assert_eq!(v["process"]["noNewPrivileges"], true);
        assert_eq!(v["process"]["user"]["uid"], 1000);
        assert_eq!(
            v["process"]["capabilities"]["bounding"],
            serde_json::json!([])
        );
        assert_eq!(v["root"]["readonly"], true);
        let ns = v["linux"]["namespaces"].as_array().unwrap();
        assert!(ns
            .iter()
            .any(|n| n["type"] == "network" && n["path"] == "/run/netns/skiff-x"));
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(v["linux"]["resources"]["cpu"]["shares"], 102);
        assert_eq!(v["linux"]["resources"]["pids"]["limit"], 64);
        assert_eq!(v["linux"]["resources"]["devices"][0]["allow"], false);
        assert!(v["linux"]["maskedPaths"].as_array().unwrap().len() > 5);
        // runc reads the filter in the runtime spec's words.
        assert_eq!(v["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
        let rules = v["linux"]["seccomp"]["syscalls"].as_array().unwrap();
        assert!(rules
            .iter()
            .any(|r| r["names"] == serde_json::json!(["clone"])
                && r["args"][0]["op"] == "SCMP_CMP_MASKED_EQ"));
        let data = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/data")
            .unwrap();
        assert!(data["options"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("ro")));
        // A PID namespace of its own, unless the pod shares one.
        assert!(ns.iter().any(|n| n["type"] == "pid" && n["path"].is_null()));
        let shared = Config {
            pidns: Some("/proc/42/ns/pid".into()),
            ..c.clone()
        };
        let v = serde_json::to_value(build(&shared).unwrap()).unwrap();
        assert!(v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["type"] == "pid" && n["path"] == "/proc/42/ns/pid"));
        // The node's network: no network namespace at all.
        let host = Config { netns: None, ..c };
        let v = serde_json::to_value(build(&host).unwrap()).unwrap();
        assert!(!v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["type"] == "network"));
    }
}
