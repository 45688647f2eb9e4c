//! The per-kind hooks of the generic write path: what `objects` does differently for a
//! kind, asked of the kind instead of checked by name, as Kubernetes' generic store calls
//! its resource's strategy (`PrepareForUpdate`, `CheckGracefulDelete`, ...). Every method
//! defaults to "nothing special"; a kind overrides only what it needs.

use serde_json::Value;

use super::validation::Errors;

/// Called by `objects` for every writer (HTTP handlers, controllers, the scheduler).
pub trait Hooks: Send + Sync {
    /// Top-level fields a request may carry that are folded into others, not stored
    /// (Secret `stringData`): not reported as unknown.
    fn input_fields(&self) -> &'static [&'static str] {
        &[]
    }

    /// Readies an update's `new` object from the stored `old` one before admission
    /// (kube's `PrepareForUpdate`): server-set fields the request left out stay.
    fn prepare_update(&self, _old: &Value, _new: &mut Value) {}

    /// Whether objects take values from a pool all objects of the resource share (cluster
    /// IPs, node ports). Such writes run one at a time, each calling [`Hooks::allocate`].
    fn allocates(&self) -> bool {
        false
    }

    /// Takes from the pool what `obj` needs and lacks, given every other object of the
    /// resource (kube's REST `BeginCreate`/`BeginUpdate` allocators).
    fn allocate(&self, _others: &[Value], _obj: &mut Value) -> Result<(), Errors> {
        Ok(())
    }

    /// The grace period a delete of `obj` waits for, `requested` being the client's
    /// (kube's `CheckGracefulDelete`). `None`: no grace, the object goes at once (or when
    /// its finalizers are done).
    fn graceful_delete(&self, _obj: &Value, _requested: Option<i64>) -> Option<i64> {
        None
    }

    /// Whether the kind's own finalizers (beyond `metadata.finalizers`) still hold a
    /// deleted object back.
    fn finalizing(&self, _obj: &Value) -> bool {
        false
    }

    /// Marks an object whose deletion has to wait (a Namespace's phase).
    fn mark_deleting(&self, _obj: &mut Value) {}

    /// Whether a delete answers with the object instead of a `Status` (kube's
    /// `ReturnDeletedObject`).
    fn returns_deleted_object(&self) -> bool {
        false
    }

    /// Whether a replace (PUT) of a missing object creates it (kube's
    /// `AllowCreateOnUpdate`).
    fn allow_create_on_update(&self) -> bool {
        false
    }
}

/// A kind with no special write behaviour.
pub struct Plain;
impl Hooks for Plain {}

/// Kinds written by name whether or not they exist yet (Events, Leases, Endpoints).
pub struct CreateOnUpdate;
impl Hooks for CreateOnUpdate {
    fn allow_create_on_update(&self) -> bool {
        true
    }
}
