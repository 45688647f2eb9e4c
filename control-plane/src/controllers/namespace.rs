//! Namespaces: a live one gets its `default` ServiceAccount (as Kubernetes' service account
//! controller does); once one is marked for deletion, everything in it is deleted, then
//! the `kubernetes` finalizer is removed so the namespace itself goes away.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::objects::{DeleteOptions, ListOptions, ObjectError, Objects, Target, WriteOptions};
use crate::registry::finalize_namespace;
use crate::runtime::Action;

const FINALIZER: &str = "kubernetes";
/// Content removal starts (at second granularity) about this long after the namespace is marked, as with Kubernetes'
/// controller (which first rediscovers the API): a client deleting a namespace together
/// with its contents (`kubectl delete -f`) still finds them.
const START_DELAY: Duration = Duration::from_millis(300);

pub async fn reconcile(objects: Arc<Objects>, ns: Value) -> Result<Action, ObjectError> {
    if ns
        .pointer("/metadata/deletionTimestamp")
        .is_none_or(Value::is_null)
    {
        return ensure_default_service_account(&objects, &ns).await;
    }
    let finalizers: Vec<Value> = ns
        .pointer("/spec/finalizers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if !finalizers.contains(&json!(FINALIZER)) {
        return Ok(Action::Done);
    }
    let name = ns
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let marked = ns
        .pointer("/metadata/deletionTimestamp")
        .and_then(Value::as_str)
        .and_then(|t| t.parse::<jiff::Timestamp>().ok());
    if let Some(t) = marked {
        let age = crate::objects::now().duration_since(t);
        if age < jiff::SignedDuration::from_secs(1) {
            return Ok(Action::RequeueAfter(START_DELAY));
        }
    }
    let mut remaining = 0;
    for rt in objects.registry().resources.iter().filter(|r| r.namespaced) {
        let opts = DeleteOptions {
            propagation_policy: Some("Background".into()),
            ..Default::default()
        };
        objects
            .delete_collection(rt, Some(&name), &ListOptions::default(), &opts)
            .await?;
        remaining += objects
            .list(
                rt,
                Some(&name),
                &ListOptions {
                    limit: Some(1),
                    ..Default::default()
                },
            )
            .await?
            .items
            .len();
    }
    if remaining > 0 {
        // Pods wait for their node agents; finalizers for their controllers.
        return Ok(Action::RequeueAfter(Duration::from_secs(1)));
    }
    let rest: Vec<Value> = finalizers.into_iter().filter(|f| f != FINALIZER).collect();
    let nsrt = objects
        .registry()
        .find("", "v1", "namespaces")
        .expect("namespaces are served");
    objects
        .update_with(
            nsrt,
            None,
            &name,
            Target::Main,
            &WriteOptions::default(),
            |old| Ok(finalize_namespace(old, &rest)),
        )
        .await?;
    tracing::info!(namespace = %name, "namespace deleted");
    Ok(Action::Done)
}

async fn ensure_default_service_account(
    objects: &Objects,
    ns: &Value,
) -> Result<Action, ObjectError> {
    let name = ns
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let sa = objects
        .registry()
        .find("", "v1", "serviceaccounts")
        .expect("serviceaccounts are served");
    match objects.get(sa, Some(name), "default").await {
        Ok(_) => return Ok(Action::Done),
        Err(ObjectError::NotFound { .. }) => {}
        Err(e) => return Err(e),
    }
    let body =
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}});
    match objects
        .create(sa, Some(name), body, &WriteOptions::default())
        .await
    {
        // A namespace being deleted meanwhile refuses new content; that is fine.
        Ok(_) | Err(ObjectError::AlreadyExists { .. }) | Err(ObjectError::Forbidden { .. }) => {
            Ok(Action::Done)
        }
        Err(e) => Err(e),
    }
}
