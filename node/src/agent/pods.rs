//! The pods bound to this node: a worker per pod from the pod watch, and after every
//! (re)list a sweep of what pods deleted unseen left behind.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::watcher;

use super::pod::{PodDirs, Worker};
use super::Ctx;

/// The pod workers, by pod uid.
pub(super) struct Workers {
    ctx: Arc<Ctx>,
    by_uid: HashMap<String, Worker>,
    /// The uids a (re)list has named so far, while one is under way.
    listed: Option<HashSet<String>>,
}

/// Follows the pods bound to `node_name` until `shutdown` resolves (or the watch ends);
/// the workers are then left running for the caller to stop.
pub(super) async fn run(
    ctx: Arc<Ctx>,
    node_name: &str,
    shutdown: impl Future<Output = ()> + Send,
) -> Workers {
    let pods: Api<Pod> = Api::all(ctx.client.clone());
    let wc = watcher::Config::default().fields(&format!("spec.nodeName={node_name}"));
    let mut stream = watcher(pods, wc).boxed();
    let mut workers = Workers {
        ctx,
        by_uid: HashMap::new(),
        listed: None,
    };
    tokio::pin!(shutdown);
    loop {
        let ev = tokio::select! {
            ev = stream.next() => ev,
            _ = &mut shutdown => break,
        };
        match ev {
            Some(Ok(ev)) => workers.handle(ev),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "pod watch failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            None => break,
        }
    }
    workers
}

impl Workers {
    fn handle(&mut self, ev: watcher::Event<Pod>) {
        match ev {
            watcher::Event::Apply(p) | watcher::Event::InitApply(p) => self.applied(p),
            watcher::Event::Delete(p) => self.deleted(&p),
            watcher::Event::Init => self.listed = Some(HashSet::new()),
            watcher::Event::InitDone => self.relisted(),
        }
    }

    /// A pod is new or changed: its worker hears of it, or starts.
    fn applied(&mut self, mut p: Pod) {
        let uid = p.metadata.uid.clone().unwrap_or_default();
        if let Some(listed) = self.listed.as_mut() {
            listed.insert(uid.clone());
        }
        self.by_uid.retain(|_, w| !w.finished());
        match self.by_uid.get(&uid) {
            Some(w) => w.update(&p),
            None => {
                // Workers never need managedFields (often the largest part of a pod).
                p.metadata.managed_fields = None;
                self.by_uid.insert(uid, Worker::spawn(self.ctx.clone(), p));
            }
        }
    }

    /// A pod object is gone: its worker ends, then its files go.
    fn deleted(&mut self, p: &Pod) {
        let worker = self
            .by_uid
            .remove(p.metadata.uid.as_deref().unwrap_or_default());
        let dirs = PodDirs::of(&self.ctx.layout, p);
        tokio::spawn(async move {
            if let Some(w) = worker {
                w.end().await;
            }
            dirs.remove().await;
        });
    }

    /// A (re)list named every pod bound here: workers of others, and files and runc
    /// containers of pods without a worker, belong to pods deleted unseen.
    fn relisted(&mut self) {
        let listed = self.listed.take().unwrap_or_default();
        let stale: Vec<Worker> = self
            .by_uid
            .extract_if(|uid, _| !listed.contains(uid))
            .map(|(_, w)| w)
            .collect();
        let orphans = self.ctx.layout.orphans(&listed);
        let ctx = self.ctx.clone();
        tokio::spawn(async move {
            for w in stale {
                w.end().await;
            }
            // runc containers of pods deleted while no agent watched.
            if let Some(oci) = &ctx.runtimes.oci {
                for uid in oci.pods().into_iter().filter(|u| !listed.contains(u)) {
                    tracing::info!(pod_uid = %uid, "removing the containers of a deleted pod");
                    oci.remove_pod(&uid).await;
                }
            }
            for path in orphans {
                tracing::info!(path = %path.display(), "removing the sandbox and files of a deleted pod");
                if let Err(e) = crate::sandbox::Sandbox::remove(&path).await {
                    tracing::warn!(error = %e, "tearing down a pod sandbox failed");
                }
            }
        });
    }

    /// The agent is going: the workers stop, leaving their pods' files and runc
    /// containers to the next agent.
    pub(super) fn stop(self) {
        for (_, w) in self.by_uid {
            w.stop();
        }
    }
}
