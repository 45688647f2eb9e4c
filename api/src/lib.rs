//! What the control plane and the node agent share: they meet only through the Kubernetes
//! API, and read its values the same way with these.
//!
//! - [`cidr`]: CIDR ranges (the cluster's and each node's pod range).
//! - [`duration`]: durations in flags as Kubernetes writes them (`6s`, `500ms`).
//! - [`image`]: image references as stored and compared (`name` means `name:latest`).
//! - [`quantity`]: resource quantities (`500m`, `1Gi`) in milli-units.
//! - [`WASM_RUNTIME_LABEL`], [`OCI_RUNTIME_LABEL`]: the node labels of the runtimes a
//!   node offers.

pub mod cidr;
pub mod duration;
pub mod image;
pub mod quantity;

/// The node label of nodes that run Wasm containers (the `wasmtime` RuntimeClass selects it).
pub const WASM_RUNTIME_LABEL: &str = "runtime.skiff.dev/wasm";
/// The node label of nodes that run OCI containers through runc (pods that may hold them
/// are kept to such nodes).
pub const OCI_RUNTIME_LABEL: &str = "runtime.skiff.dev/oci";
