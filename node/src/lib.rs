//! Skiff's node agent (the kubelet of Skiff).
//!
//! - [`runtime`]: the `Runtime` trait and its Wasm implementation on wasmtime.
//! - [`logs`]: container logs in the CRI format.
pub mod logs;
pub mod runtime;
