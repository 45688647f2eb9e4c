//! What the control plane and the node agent share: they meet only through the Kubernetes
//! API, and read its values the same way with these.
//!
//! - [`cidr`]: CIDR ranges (the cluster's and each node's pod range).
//! - [`conn`]: how servers take connections (caps, back-off, timeouts, open-files limit).
//! - [`duration`]: durations in flags as Kubernetes writes them (`6s`, `500ms`).
//! - [`image`]: image references as stored and compared (`name` means `name:latest`).
//! - [`quantity`]: resource quantities (`500m`, `1Gi`) in milli-units.
//! - [`private_dir`]: data directories only their owner enters (0700).
//! - [`WASM_RUNTIME_LABEL`], [`OCI_RUNTIME_LABEL`]: the node labels of the runtimes a
//!   node offers.
//! - [`SERVICE_NAME_LABEL`], [`SERVICE_PROXY_NAME_LABEL`], [`CLUSTER_DNS_IP`]: what the
//!   endpoints controller writes and the nodes' proxies and DNS read.

pub mod cidr;
pub mod conn;
pub mod duration;
pub mod image;
pub mod private_dir;
pub mod quantity;

/// The node label of nodes that run Wasm containers (the `wasmtime` RuntimeClass selects it).
pub const WASM_RUNTIME_LABEL: &str = "runtime.skiff.dev/wasm";
/// The node label of nodes that run OCI containers through runc (pods that may hold them
/// are kept to such nodes).
pub const OCI_RUNTIME_LABEL: &str = "runtime.skiff.dev/oci";
/// The label naming an EndpointSlice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Services carrying it are some other proxy's: node proxies leave them alone.
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// The cluster DNS address: `kube-system/kube-dns`'s cluster IP, where every node's DNS
/// answers (the kubelet's --cluster-dns default).
pub const CLUSTER_DNS_IP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 96, 0, 10);
