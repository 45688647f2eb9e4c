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
use kube::runtime::watcher;
use kube::{Api, Client};

/// The label naming an EndpointSlice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// `namespace/name` of a Service.
pub fn key(ns: Option<&str>, name: &str) -> String {
    format!("{}/{name}", ns.unwrap_or_default())
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

    /// Waits for changes once both watches have listed everything.
    pub async fn next(&self) -> Changed {
        loop {
            {
                let mut p = self.pending.lock().expect("pending");
                if p.services_synced && p.slices_synced && (p.all || !p.keys.is_empty()) {
                    return Changed {
                        keys: std::mem::take(&mut p.keys),
                        all: std::mem::take(&mut p.all),
                    };
                }
            }
            self.wake.notified().await;
        }
    }

    /// Takes what changed without waiting (empty while the watches list).
    pub fn take(&self) -> Changed {
        let mut p = self.pending.lock().expect("pending");
        if !(p.services_synced && p.slices_synced) {
            return Changed {
                keys: HashSet::new(),
                all: false,
            };
        }
        Changed {
            keys: std::mem::take(&mut p.keys),
            all: std::mem::take(&mut p.all),
        }
    }

    fn service_event(&self, ev: &watcher::Event<Service>) {
        match ev {
            watcher::Event::Apply(s) | watcher::Event::Delete(s) | watcher::Event::InitApply(s) => {
                let k = key(
                    s.metadata.namespace.as_deref(),
                    s.metadata.name.as_deref().unwrap_or_default(),
                );
                self.mark(|p| {
                    p.keys.insert(k);
                })
            }
            watcher::Event::Init => {}
            watcher::Event::InitDone => self.mark(|p| {
                p.all = true;
                p.services_synced = true;
            }),
        }
    }

    fn slice_event(&self, ev: &watcher::Event<EndpointSlice>) {
        match ev {
            watcher::Event::Apply(s) | watcher::Event::Delete(s) | watcher::Event::InitApply(s) => {
                if let Some(k) = slice_service(s) {
                    self.mark(|p| {
                        p.keys.insert(k);
                    })
                }
            }
            watcher::Event::Init => {}
            watcher::Event::InitDone => self.mark(|p| {
                p.all = true;
                p.slices_synced = true;
            }),
        }
    }
}

/// The watched Services and EndpointSlices.
#[derive(Clone)]
pub struct ServiceWatch {
    pub services: Store<Service>,
    pub slices: Store<EndpointSlice>,
    followers: Arc<Vec<Arc<Changes>>>,
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
        let watch = ServiceWatch {
            services,
            slices,
            followers: Arc::new(followers),
        };
        let followers = watch.followers.clone();
        let services_task = tokio::spawn(
            kube::runtime::reflector(
                services_writer,
                watcher(
                    Api::<Service>::all(client.clone()),
                    watcher::Config::default(),
                ),
            )
            .for_each(move |ev| {
                if let Ok(ev) = &ev {
                    for f in followers.iter() {
                        f.service_event(ev);
                    }
                }
                async {}
            }),
        );
        let followers = watch.followers.clone();
        let slices_task = tokio::spawn(
            kube::runtime::reflector(
                slices_writer,
                watcher(
                    Api::<EndpointSlice>::all(client.clone()),
                    watcher::Config::default(),
                ),
            )
            .for_each(move |ev| {
                if let Ok(ev) = &ev {
                    for f in followers.iter() {
                        f.slice_event(ev);
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
        self.services.state().into_iter().map(|s| {
            key(
                s.metadata.namespace.as_deref(),
                s.metadata.name.as_deref().unwrap_or_default(),
            )
        })
    }
}
