//! Skiff's node agent (the kubelet of Skiff).
//!
//! - [`agent`]: node registration, heartbeats, pod workers and status reporting.
//! - [`runtime`]: the `Runtime` trait and its Wasm implementation on wasmtime.
//! - [`sandbox`]: the pod sandbox the runtimes share (volumes; the network namespace later).
//! - [`images`]: the node's content-addressed image store; [`layers`]: unpacked image
//!   layers; [`registry`]: OCI pulls and pushes.
//! - [`logs`]: container logs in the CRI format.
//! - [`bench`]: `skiff bench pods`.
//! - [`server`]: the agent's HTTPS endpoint (container logs for `kubectl logs`).
pub mod agent;
pub mod bench;
pub mod expansion;
pub mod images;
pub mod layers;
pub mod logs;
pub mod portforward;
pub mod registry;
pub mod runtime;
pub mod sandbox;
pub mod server;
pub mod spdy;
pub mod streams;
