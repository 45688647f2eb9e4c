//! What the agent reports about its machine: capacity, addresses, system info, labels.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::{NodeAddress, NodeSystemInfo};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

pub use skiff_api::{OCI_RUNTIME_LABEL, WASM_RUNTIME_LABEL};
pub const KUBELET_VERSION: &str = "v1.33.0-skiff";

fn read(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Total memory in bytes, from /proc/meminfo.
pub(crate) fn memory_bytes() -> u64 {
    meminfo_bytes("MemTotal").unwrap_or(0)
}

fn meminfo_bytes(field: &str) -> Option<u64> {
    read("/proc/meminfo").lines().find_map(|l| {
        l.strip_prefix(field)?
            .strip_prefix(':')?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .ok()
            .map(|kb| kb * 1024)
    })
}

/// (total, available) bytes of the filesystem holding `dir`.
pub(crate) fn disk(dir: &Path) -> (u64, u64) {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return (0, 0);
    };
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // Safety: `c` is a valid C string and `s` a valid out-pointer for the call.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return (0, 0);
    }
    let f = s.f_frsize as u64;
    (s.f_blocks as u64 * f, s.f_bavail as u64 * f)
}

fn disk_bytes(dir: &Path) -> u64 {
    disk(dir).0
}

/// The node's figures the kubelet's eviction manager watches.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Figures {
    pub memory_available: u64,
    pub disk_total: u64,
    pub disk_available: u64,
    pub pid_max: u64,
    pub processes: u64,
}

/// Which pressure conditions hold: the kubelet's default hard eviction thresholds
/// (`memory.available<100Mi`, `nodefs.available<10%`) and fewer than 10% of process ids
/// left.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Pressure {
    pub memory: bool,
    pub disk: bool,
    pub pid: bool,
}

impl Figures {
    pub fn read(data_dir: &Path) -> Figures {
        let (disk_total, disk_available) = disk(data_dir);
        // The fourth field of loadavg is running/total scheduling entities.
        let processes = read("/proc/loadavg")
            .split_whitespace()
            .nth(3)
            .and_then(|f| f.split('/').nth(1)?.parse().ok())
            .unwrap_or(0);
        Figures {
            memory_available: meminfo_bytes("MemAvailable").unwrap_or(u64::MAX),
            disk_total,
            disk_available,
            pid_max: read("/proc/sys/kernel/pid_max").parse().unwrap_or(u64::MAX),
            processes,
        }
    }

    pub fn pressure(&self) -> Pressure {
        Pressure {
            memory: self.memory_available < 100 * 1024 * 1024,
            disk: self.disk_total > 0 && self.disk_available * 10 < self.disk_total,
            pid: self.pid_max.saturating_sub(self.processes) * 10 < self.pid_max,
        }
    }
}

pub fn capacity(data_dir: &Path, max_pods: u32) -> BTreeMap<String, Quantity> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    BTreeMap::from([
        ("cpu".to_string(), Quantity(cpus.to_string())),
        (
            "memory".to_string(),
            Quantity(format!("{}Ki", memory_bytes() / 1024)),
        ),
        ("pods".to_string(), Quantity(max_pods.to_string())),
        (
            "ephemeral-storage".to_string(),
            Quantity(format!("{}Ki", disk_bytes(data_dir) / 1024)),
        ),
    ])
}

pub fn system_info() -> NodeSystemInfo {
    let os_image = read("/etc/os-release")
        .lines()
        .find_map(|l| {
            l.strip_prefix("PRETTY_NAME=")
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "Linux".into());
    NodeSystemInfo {
        architecture: arch().into(),
        boot_id: read("/proc/sys/kernel/random/boot_id"),
        container_runtime_version: format!("skiff://{}", env!("CARGO_PKG_VERSION")),
        kernel_version: read("/proc/sys/kernel/osrelease"),
        kube_proxy_version: String::new(),
        kubelet_version: KUBELET_VERSION.into(),
        machine_id: read("/etc/machine-id"),
        operating_system: "linux".into(),
        os_image,
        system_uuid: read("/sys/class/dmi/id/product_uuid"),
        swap: None,
    }
}

/// The node's labels; `oci`: whether it offers the OCI runtime.
pub fn labels(node_name: &str, oci: bool) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), node_name.to_string()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("kubernetes.io/arch".to_string(), arch().to_string()),
        ("beta.kubernetes.io/os".to_string(), "linux".to_string()),
        ("beta.kubernetes.io/arch".to_string(), arch().to_string()),
        (WASM_RUNTIME_LABEL.to_string(), "true".to_string()),
    ]);
    // Said either way: pods that may hold OCI containers stay off a node saying "false".
    labels.insert(OCI_RUNTIME_LABEL.to_string(), oci.to_string());
    labels
}

pub fn addresses(node_name: &str, ip: &str) -> Vec<NodeAddress> {
    vec![
        NodeAddress {
            type_: "InternalIP".into(),
            address: ip.into(),
        },
        NodeAddress {
            type_: "Hostname".into(),
            address: node_name.into(),
        },
    ]
}

/// The machine's host name (what a hostNetwork pod sees as its own).
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // Safety: gethostname writes at most `len` bytes into the buffer.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pressure_follows_the_kubelets_default_thresholds() {
        let ok = Figures {
            memory_available: 1 << 30,
            disk_total: 1000,
            disk_available: 500,
            pid_max: 1000,
            processes: 100,
        };
        assert_eq!(ok.pressure(), Pressure::default());
        let low = Figures {
            memory_available: 50 << 20,
            disk_available: 99,
            processes: 901,
            ..ok
        };
        assert_eq!(
            low.pressure(),
            Pressure {
                memory: true,
                disk: true,
                pid: true
            }
        );
        let here = Figures::read(Path::new("/"));
        assert!(here.memory_available > 0 && here.processes > 0 && here.pid_max > 0);
    }
}
