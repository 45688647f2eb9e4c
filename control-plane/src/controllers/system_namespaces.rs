//! Kubernetes' system namespaces controller: `default`, `kube-system`, `kube-public` and
//! `kube-node-lease` always exist. Those that may be deleted (`kube-node-lease`) are made
//! again once gone: at once when their deletion is seen, and by a periodic check.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::objects::{ObjectError, Objects, WatchFilter, WatchItem, WriteOptions};
use crate::registry::SYSTEM_NAMESPACES;

/// How often missing namespaces are looked for besides watching (Kubernetes: 1 minute).
const PERIOD: Duration = Duration::from_secs(60);

/// Creates the system namespaces that are missing.
pub async fn ensure(objects: &Objects) -> Result<(), ObjectError> {
    let rt = objects
        .registry()
        .find("", "v1", "namespaces")
        .expect("namespaces are served");
    for name in SYSTEM_NAMESPACES {
        let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        match objects
            .create(rt, None, body, &WriteOptions::default())
            .await
        {
            Ok(_) => tracing::info!(namespace = name, "system namespace created"),
            Err(ObjectError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

pub async fn run(objects: Arc<Objects>) {
    let rt = objects
        .registry()
        .find("", "v1", "namespaces")
        .expect("namespaces are served");
    loop {
        let from = objects.store().revision();
        if let Err(e) = ensure(&objects).await {
            tracing::warn!(error = %e, "cannot create the system namespaces");
        }
        let Ok(mut events) = objects.watch(rt, None, from, WatchFilter::default()) else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let tick = tokio::time::sleep(PERIOD);
        tokio::pin!(tick);
        loop {
            tokio::select! {
                ev = events.next() => match ev {
                    Some(WatchItem::Event { kind: "DELETED", .. }) => break,
                    Some(WatchItem::Event { .. }) => {}
                    Some(WatchItem::Error(_)) | None => break,
                },
                _ = &mut tick => break,
            }
        }
    }
}
