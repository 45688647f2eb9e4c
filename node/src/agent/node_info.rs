//! What the agent reports about its machine: capacity, addresses, system info, labels.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::{NodeAddress, NodeSystemInfo};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

pub use skiff_api::WASM_RUNTIME_LABEL;
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
fn memory_bytes() -> u64 {
    read("/proc/meminfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Bytes of the filesystem holding `dir`.
fn disk_bytes(dir: &Path) -> u64 {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return 0;
    };
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // Safety: `c` is a valid C string and `s` a valid out-pointer for the call.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return 0;
    }
    s.f_blocks as u64 * s.f_frsize as u64
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

pub fn labels(node_name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), node_name.to_string()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("kubernetes.io/arch".to_string(), arch().to_string()),
        ("beta.kubernetes.io/os".to_string(), "linux".to_string()),
        ("beta.kubernetes.io/arch".to_string(), arch().to_string()),
        (WASM_RUNTIME_LABEL.to_string(), "true".to_string()),
    ])
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
