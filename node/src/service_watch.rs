//! One watch of the cluster's Services and EndpointSlices for everything on the node that
//! follows them (the containers' Service environment variables, the proxy, the DNS):
//! shared stores, and per follower a [`Changes`] naming the Services touched since it
//! last looked, so each recomputes only those.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};

use skiff_api::SERVICE_NAME_LABEL;

/// `namespace/name` of a Service.
pub fn key(ns: Option<&str>, name: &str) -> String {
    format!("{}/{name}", ns.unwrap_or_default())
}

fn service_key(s: &Service) -> String {
    key(
        s.metadata.namespace.as_deref(),
        s.metadata.name.as_deref().unwrap_or_default(),
    )
}

/// The key of the Service an EndpointSlice belongs to.
pub fn slice_service(s: &EndpointSlice) -> Option<String> {
    let name = s.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some(key(s.metadata.namespace.as_deref(), name))
}

#[derive(Default)]
struct Pending {
    keys: HashSet<String>,
    all: bool,
    services_synced: bool,
    slices_synced: bool,
}

/// The Services a follower has yet to look at.
#[derive(Default)]
pub struct Changes {
    pending: Mutex<Pending>,
    wake: tokio::sync::Notify,
}

/// What changed: these Services, or (`all`) any of them.
pub struct Changed {
    pub keys: HashSet<String>,
    pub all: bool,
}

impl Changes {
    fn mark(&self, f: impl FnOnce(&mut Pending)) {
        f(&mut self.pending.lock().expect("pending"));
        self.wake.notify_one();
    }

    /// Asks for everything to be looked at again (after a failed sync, say).
    pub fn mark_all(&self) {
        self.mark(|p| p.all = true);
    }

    /// Asks for these Services to be looked at again.
    pub fn mark_keys(&self, keys: impl IntoIterator<Item = String>) {
        self.mark(|p| p.keys.extend(keys));
    }

    /// Waits for changes once both watches have listed everything.
    pub async fn next(&self) -> Changed {
        loop {
            let c = self.take();
            if c.all || !c.keys.is_empty() {
                return c;
            }
            self.wake.notified().await;
        }
    }

    /// Takes what changed without waiting (nothing while the watches list).
    pub fn take(&self) -> Changed {
        let mut p = self.pending.lock().expect("pending");
        let listed = p.services_synced && p.slices_synced;
        Changed {
            keys: if listed {
                std::mem::take(&mut p.keys)
            } else {
                HashSet::new()
            },
            all: listed && std::mem::take(&mut p.all),
        }
    }

    /// A watch event of either kind: the Service it names (`key`) changed; `listed` marks
    /// that kind's first listing done.
    fn event<K>(
        &self,
        ev: &watcher::Event<K>,
        key: impl Fn(&K) -> Option<String>,
        listed: fn(&mut Pending),
    ) {
        match ev {
            watcher::Event::Apply(o) | watcher::Event::Delete(o) | watcher::Event::InitApply(o) => {
                if let Some(k) = key(o) {
                    self.mark(|p| {
                        p.keys.insert(k);
                    })
                }
            }
            watcher::Event::Init => {}
            watcher::Event::InitDone => self.mark(|p| {
                p.all = true;
                listed(p);
            }),
        }
    }
}

/// The watched Services and EndpointSlices.
#[derive(Clone)]
pub struct ServiceWatch {
    pub services: Store<Service>,
    pub slices: Store<EndpointSlice>,
}

impl ServiceWatch {
    /// Starts both watches, telling `followers` of every change (the first
    /// [`Changes::next`] names everything); they end when the returned tasks are aborted.
    pub fn start(
        client: &Client,
        followers: Vec<Arc<Changes>>,
    ) -> (ServiceWatch, [tokio::task::JoinHandle<()>; 2]) {
        let (services, services_writer) = kube::runtime::reflector::store();
        let (slices, slices_writer) = kube::runtime::reflector::store();
        let watch = ServiceWatch { services, slices };
        let followers = Arc::new(followers);
        let of_slices = followers.clone();
        let services_task = tokio::spawn(
            kube::runtime::reflector(
                services_writer,
                // Backing off when the API server is away (an edge node's link down),
                // not retrying in a loop that burns a core.
                watcher(
                    Api::<Service>::all(client.clone()),
                    watcher::Config::default(),
                )
                .default_backoff(),
            )
            .for_each(move |ev| {
                if let Ok(ev) = &ev {
                    for f in followers.iter() {
                        f.event(
                            ev,
                            |s: &Service| Some(service_key(s)),
                            |p| p.services_synced = true,
                        );
                    }
                }
                async {}
            }),
        );
        let slices_task = tokio::spawn(
            kube::runtime::reflector(
                slices_writer,
                // Backing off when the API server is away (an edge node's link down),
                // not retrying in a loop that burns a core.
                watcher(
                    Api::<EndpointSlice>::all(client.clone()),
                    watcher::Config::default(),
                )
                .default_backoff(),
            )
            .for_each(move |ev| {
                if let Ok(ev) = &ev {
                    for f in of_slices.iter() {
                        f.event(ev, slice_service, |p| p.slices_synced = true);
                    }
                }
                async {}
            }),
        );
        (watch, [services_task, slices_task])
    }

    pub fn service(&self, key: &str) -> Option<Arc<Service>> {
        let (ns, name) = key.split_once('/')?;
        self.services.get(&ObjectRef::new(name).within(ns))
    }

    /// The slices of the Services among `keys`, by Service.
    pub fn slices_of(
        &self,
        keys: &HashSet<String>,
    ) -> std::collections::HashMap<String, Vec<Arc<EndpointSlice>>> {
        let mut out: std::collections::HashMap<String, Vec<Arc<EndpointSlice>>> =
            Default::default();
        for s in self.slices.state() {
            if let Some(k) = slice_service(&s).filter(|k| keys.contains(k)) {
                out.entry(k).or_default().push(s);
            }
        }
        out
    }

    /// Every Service's key.
    pub fn service_keys(&self) -> impl Iterator<Item = String> {
        self.services.state().into_iter().map(|s| service_key(&s))
    }
}
