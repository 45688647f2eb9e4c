//! Skiff's control plane.
//!
//! - [`store`]: the cluster state (a `Store` trait; sled embedded by default).
//! - [`registry`]: every served resource with its defaulting, validation and table printing.
//! - [`selectors`], [`quantity`]: label/field selectors and resource quantities.
pub mod objects;
pub mod quantity;
pub mod registry;
pub mod selectors;
pub mod store;
