//! Skiff's node agent (the kubelet of Skiff).
//!
//! - [`agent`]: node registration, heartbeats, pod workers and status reporting.
//! - [`runtime`]: the `Runtime` trait and its implementations: Wasm on wasmtime, OCI
//!   containers through runc.
//! - [`sandbox`]: the pod sandbox the runtimes share (volumes, network and PID namespaces);
//!   [`procs`]: processes that outlive the agent, found again.
//! - [`images`]: the node's content-addressed image store; [`layers`]: unpacked image
//!   layers; [`registry`]: OCI pulls and pushes.
//! - [`layout`]: every path under the agent's data directory, and container IDs
//!   (`runtime://id`).
//! - [`logs`]: container logs in the CRI format.
//! - [`dns`]: the cluster DNS each agent serves its pods (and their Wasm guests' lookups);
//!   [`service_watch`]: the Services and EndpointSlices it and the proxy follow.
//! - [`proxy`]: the Service proxy (nftables, as kube-proxy's nftables mode); [`routes`]:
//!   routes to other nodes' pods (host-gw).
//! - [`bench`]: `skiff bench pods`, `skiff bench http`.
//! - [`server`]: the agent's HTTPS endpoint (logs, exec, attach, port-forward; [`streams`],
//!   [`spdy`], [`portforward`]), served from what the agent gives it ([`server::Host`]).
pub mod agent;
pub mod bench;
pub mod dns;
pub mod expansion;
pub mod images;
pub mod layers;
pub mod layout;
pub mod logs;
pub mod portforward;
pub mod procs;
pub mod proxy;
pub mod registry;
pub mod routes;
pub mod runtime;
pub mod sandbox;
pub mod server;
pub mod service_watch;
pub mod spdy;
pub mod streams;

/// Tests that measure CPU time, and tests that burn much of it, run one at a time.
#[cfg(test)]
pub(crate) static CPU_SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
