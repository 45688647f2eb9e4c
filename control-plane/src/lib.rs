//! Skiff's control plane.
//!
//! - [`cluster`]: the composer: the API server, then the controllers, the scheduler and
//!   the event recorder they share.
//! - [`apiserver`]: the Kubernetes-compatible HTTPS API (discovery, OpenAPI, resources).
//! - [`objects`]: the single write path every writer uses (admission, patches, apply).
//! - [`registry`]: every served resource with its defaulting, validation and table printing.
//! - [`store`]: the cluster state (a `Store` trait; sled embedded by default).
//! - [`runtime`]: the controller runtime: the shared watched cache, work queues,
//!   `spawn_controller`.
//! - [`controllers`]: reconcile loops on the runtime; [`scheduler`] binds pods to nodes.
//! - [`events`]: recording Events about objects.
//! - [`bench`]: `skiff bench api`, load and latency against a server.
//! - [`selectors`], [`quantity`]: label/field selectors and resource quantities.
pub mod apiserver;
pub mod bench;
pub mod cluster;
pub mod controllers;
pub mod cron;
pub mod events;
pub mod fuzz;
pub mod objects;
pub use skiff_api::quantity;
pub mod registry;
pub mod runtime;
pub mod scheduler;
pub mod selectors;
pub mod store;
