//! The controller runtime under the controllers and the scheduler (kube-runtime's place):
//! the shared watched cache ([`cache`]: one list/watch per resource, read by every loop),
//! the work [`Queue`] of object keys, and [`spawn_controller`], which drives a reconcile
//! function from a queue. It depends on [`crate::objects`] only; what runs on it is
//! composed in [`crate::cluster`].

pub mod cache;
mod controller;
mod queue;

pub use cache::{key_of, split_key, written_rev, Cache, Change, Informer};
pub use controller::{queue_changes, spawn_controller, spawn_object_controller, Action};
pub use queue::Queue;
