//! Name lookups of Wasm guests (`wasi:sockets/ip-name-lookup`) through the pod's resolver
//! configuration, as an OCI container's libc reads its resolv.conf: the cluster DNS with
//! the namespace's search path and `ndots:5` under ClusterFirst, the node's resolvers
//! under Default. wasmtime's own implementation asks the node's libc (the node's
//! resolv.conf, the node's /etc/hosts), so the agent puts this one in its place (guests'
//! outgoing wasi:http requests resolve through it too: `runtime::wasm::outgoing`). Queries
//! are made in the pod's network namespace; pods on the node's network share a resolver
//! per configuration.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;

use futures::FutureExt;

use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::{RuntimeProvider, TokioRuntimeProvider};
use hickory_resolver::proto::rr::Name;
use wasmtime::component::{Linker, Resource, ResourceType};
use wasmtime_wasi::p2::bindings::sockets::network::{ErrorCode, IpAddress};
use wasmtime_wasi::p2::{DynPollable, Network, Pollable};
use wasmtime_wasi::WasiView;

use super::resolv::ResolvConf;
use crate::sandbox::netns::Netns;

/// The interface replaced (the version wasmtime-wasi 48 defines; older imports match it).
const INTERFACE: &str = "wasi:sockets/ip-name-lookup@0.2.12";

/// A resolver for one configuration: a pod's own (bound to its namespace), or one the pods
/// on the node's network with that configuration share. Built at the first lookup: a
/// hickory resolver holds a response cache whose queues are allocated up front (~30 KiB),
/// most of an idle pod's heap when every pod had one (`skiff bench pods`), and most guests
/// never look a name up.
pub struct Resolver {
    config: ResolverConfig,
    opts: ResolverOpts,
    /// The pod's network namespace, where its queries' sockets are made (none: the node's).
    netns: std::sync::OnceLock<Arc<Netns>>,
    /// A pod's own: it answers nothing until bound (never from the node's network).
    own: bool,
    /// Boxed: an unbuilt one costs a pointer, not a resolver's size (~500 bytes).
    inner: std::sync::OnceLock<Option<Box<hickory_resolver::Resolver<PodRuntime>>>>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resolver")
    }
}

impl Resolver {
    /// A resolver following `conf`; queries to `cluster_ip` go to `cluster_addr` (the
    /// cluster DNS, which may answer on another port where the agent has no root).
    pub fn new(
        conf: &ResolvConf,
        cluster_ip: IpAddr,
        cluster_addr: Option<SocketAddr>,
    ) -> Option<Resolver> {
        let mut servers = Vec::new();
        for ns in &conf.nameservers {
            let Ok(ip) = ns.parse::<IpAddr>() else {
                continue;
            };
            let (ip, port) = match cluster_addr {
                Some(a) if ip == cluster_ip => (a.ip(), a.port()),
                _ => (ip, 53),
            };
            let mut s = NameServerConfig::udp_and_tcp(ip);
            for c in &mut s.connections {
                c.port = port;
            }
            servers.push(s);
        }
        if servers.is_empty() {
            return None;
        }
        let search: Vec<Name> = conf
            .searches
            .iter()
            .filter_map(|s| Name::from_str(&format!("{}.", s.trim_end_matches('.'))).ok())
            .collect();
        let config = ResolverConfig::from_parts(None, search, servers);
        let mut opts = ResolverOpts::default();
        opts.ndots = conf.ndots();
        // No hosts file is read: not the node's (nor, as yet, the pod's hostAliases).
        opts.use_hosts_file = ResolveHosts::Never;
        opts.timeout = std::time::Duration::from_secs(5);
        opts.attempts = 2;
        Some(Resolver {
            config,
            opts,
            netns: std::sync::OnceLock::new(),
            own: false,
            inner: std::sync::OnceLock::new(),
        })
    }

    /// The resolver of a pod with a network of its own, to [`Self::bind`] to it.
    pub fn for_own_network(self) -> Resolver {
        Resolver { own: true, ..self }
    }

    /// Queries from the pod's namespace `netns` (set once, before the first lookup: a
    /// resolver of a pod with a namespace of its own is that pod's alone).
    pub fn bind(&self, netns: Arc<Netns>) {
        let _ = self.netns.set(netns);
    }

    /// The hickory resolver, built on first use (`None`: it could not be).
    fn inner(&self) -> Option<&hickory_resolver::Resolver<PodRuntime>> {
        if self.own && self.netns.get().is_none() {
            tracing::error!("a pod's resolver is not bound to its network namespace yet: no query from the node's");
            return None;
        }
        self.inner
            .get_or_init(|| {
                let runtime = PodRuntime {
                    tokio: TokioRuntimeProvider::default(),
                    netns: self.netns.get().cloned(),
                };
                hickory_resolver::Resolver::builder_with_config(self.config.clone(), runtime)
                    .with_options(self.opts.clone())
                    .build()
                    .inspect_err(|e| tracing::warn!(error = %e, "building a pod's resolver failed"))
                    .ok()
                    .map(Box::new)
            })
            .as_deref()
    }

    /// The addresses of `name` (an address stands for itself; `localhost` is loopback).
    pub async fn resolve(&self, name: &str) -> Result<Vec<IpAddr>, ErrorCode> {
        if let Ok(ip) = name.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let trimmed = name.trim_end_matches('.');
        if trimmed.eq_ignore_ascii_case("localhost") {
            return Ok(vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()]);
        }
        if trimmed.is_empty() || Name::from_str(trimmed).is_err() {
            return Err(ErrorCode::InvalidArgument);
        }
        let Some(inner) = self.inner() else {
            return Err(ErrorCode::TemporaryResolverFailure);
        };
        match inner.lookup_ip(name).await {
            Ok(found) => {
                let ips: Vec<IpAddr> = found.iter().map(|ip| ip.to_canonical()).collect();
                if ips.is_empty() {
                    Err(ErrorCode::NameUnresolvable)
                } else {
                    Ok(ips)
                }
            }
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => {
                Err(ErrorCode::NameUnresolvable)
            }
            Err(e) => {
                tracing::debug!(error = %e, name, "a guest's lookup failed");
                Err(ErrorCode::TemporaryResolverFailure)
            }
        }
    }
}

/// Hosts whose guests look names up through their pod's resolver.
pub trait PodLookups: WasiView + Send {
    fn resolver(&self) -> Option<Arc<Resolver>>;
}

/// The resolvers of pods on the node's network, one per configuration (a namespace's
/// search path, say): the pods that share one share its cache.
#[derive(Default)]
pub struct SharedResolvers(
    std::sync::Mutex<std::collections::HashMap<String, std::sync::Weak<Resolver>>>,
);

impl SharedResolvers {
    /// The resolver of the node's network for `conf` (see [`Resolver::new`]).
    pub fn get(
        &self,
        conf: &ResolvConf,
        cluster_ip: IpAddr,
        cluster_addr: Option<SocketAddr>,
    ) -> Option<Arc<Resolver>> {
        let key = format!("{}{cluster_addr:?}", conf.render());
        let mut known = self.0.lock().expect("resolvers");
        if let Some(r) = known.get(&key).and_then(std::sync::Weak::upgrade) {
            return Some(r);
        }
        let r = Arc::new(Resolver::new(conf, cluster_ip, cluster_addr)?);
        known.retain(|_, r| r.strong_count() > 0);
        known.insert(key, Arc::downgrade(&r));
        Some(r)
    }
}

/// hickory on tokio, with its sockets made in the pod's namespace.
#[derive(Clone)]
struct PodRuntime {
    tokio: TokioRuntimeProvider,
    netns: Option<Arc<Netns>>,
}

type Made<T> = Pin<Box<dyn Send + Future<Output = std::io::Result<T>>>>;

impl PodRuntime {
    /// `made` (a socket's making, which happens at its first poll), inside the namespace.
    fn inside<T: 'static>(&self, made: Made<T>) -> Made<T> {
        match &self.netns {
            None => made,
            Some(ns) => Box::pin(ns.polled(made).map(|r| r.and_then(|made| made))),
        }
    }
}

impl RuntimeProvider for PodRuntime {
    type Handle = <TokioRuntimeProvider as RuntimeProvider>::Handle;
    type Timer = <TokioRuntimeProvider as RuntimeProvider>::Timer;
    type Udp = <TokioRuntimeProvider as RuntimeProvider>::Udp;
    type Tcp = <TokioRuntimeProvider as RuntimeProvider>::Tcp;

    fn create_handle(&self) -> Self::Handle {
        self.tokio.create_handle()
    }

    fn connect_tcp(
        &self,
        server: SocketAddr,
        bind: Option<SocketAddr>,
        timeout: Option<std::time::Duration>,
    ) -> Made<Self::Tcp> {
        self.inside(self.tokio.connect_tcp(server, bind, timeout))
    }

    fn bind_udp(&self, local: SocketAddr, server: SocketAddr) -> Made<Self::Udp> {
        self.inside(self.tokio.bind_udp(local, server))
    }
}

/// A lookup under way, then its addresses.
pub struct Lookup {
    task: Option<tokio::task::JoinHandle<Result<Vec<IpAddr>, ErrorCode>>>,
    result: Option<Result<std::vec::IntoIter<IpAddr>, ErrorCode>>,
}

impl Lookup {
    async fn settle(&mut self) {
        if let Some(task) = self.task.take() {
            let r = task
                .await
                .unwrap_or(Err(ErrorCode::TemporaryResolverFailure));
            self.result = Some(r.map(Vec::into_iter));
        }
    }

    fn settle_now(&mut self) {
        if self.task.as_ref().is_some_and(|t| t.is_finished()) {
            let task = self.task.take().expect("there");
            let r = futures::FutureExt::now_or_never(task)
                .and_then(Result::ok)
                .unwrap_or(Err(ErrorCode::TemporaryResolverFailure));
            self.result = Some(r.map(Vec::into_iter));
        }
    }
}

#[async_trait::async_trait]
impl Pollable for Lookup {
    async fn ready(&mut self) {
        self.settle().await
    }
}

impl Drop for Lookup {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

fn ip_address(ip: IpAddr) -> IpAddress {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            IpAddress::Ipv4((o[0], o[1], o[2], o[3]))
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            IpAddress::Ipv6((s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]))
        }
    }
}

/// Puts the pod's resolver in place of wasmtime's `ip-name-lookup` in `linker` (after
/// wasmtime-wasi's own interfaces are added).
pub fn add_to_linker<T: PodLookups + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut i = linker.instance(INTERFACE)?;
    i.resource(
        "resolve-address-stream",
        ResourceType::host::<Lookup>(),
        |mut store, rep| {
            store
                .data_mut()
                .ctx()
                .table
                .delete(Resource::<Lookup>::new_own(rep))?;
            Ok(())
        },
    )?;
    i.func_wrap(
        "resolve-addresses",
        |mut store, (network, name): (Resource<Network>, String)| {
            let host = store.data_mut();
            // The network handle is the capability to look names up.
            host.ctx().table.get(&network)?;
            let Some(resolver) = host.resolver() else {
                return Ok((Err(ErrorCode::PermanentResolverFailure),));
            };
            let task = tokio::spawn(async move { resolver.resolve(&name).await });
            let lookup = Lookup {
                task: Some(task),
                result: None,
            };
            Ok((Ok(host.ctx().table.push(lookup)?),))
        },
    )?;
    i.func_wrap(
        "[method]resolve-address-stream.resolve-next-address",
        |mut store, (this,): (Resource<Lookup>,)| {
            let lookup = store.data_mut().ctx().table.get_mut(&this)?;
            lookup.settle_now();
            let answer = match &mut lookup.result {
                None => Err(ErrorCode::WouldBlock),
                Some(Ok(addrs)) => Ok(addrs.next().map(ip_address)),
                Some(Err(e)) => Err(*e),
            };
            Ok((answer,))
        },
    )?;
    i.func_wrap(
        "[method]resolve-address-stream.subscribe",
        |mut store, (this,): (Resource<Lookup>,)| -> wasmtime::Result<(Resource<DynPollable>,)> {
            let table = store.data_mut().ctx().table;
            Ok((wasmtime_wasi::p2::subscribe(table, this)?,))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pods_own_resolver_answers_nothing_until_bound() {
        let conf = ResolvConf::parse("nameserver 127.0.0.1\n");
        let r = Resolver::new(&conf, "10.96.0.10".parse().unwrap(), None)
            .unwrap()
            .for_own_network();
        assert_eq!(
            r.resolve("example.com").await,
            Err(ErrorCode::TemporaryResolverFailure)
        );
        // Addresses need no query.
        assert!(r.resolve("10.1.2.3").await.is_ok());
    }

    #[test]
    fn pods_on_the_nodes_network_share_a_resolver_per_configuration() {
        let shared = SharedResolvers::default();
        let ip = "10.96.0.10".parse().unwrap();
        let a = ResolvConf::parse("nameserver 10.96.0.10\nsearch a.svc.cluster.local\n");
        let b = ResolvConf::parse("nameserver 10.96.0.10\nsearch b.svc.cluster.local\n");
        let (a1, a2) = (
            shared.get(&a, ip, None).unwrap(),
            shared.get(&a, ip, None).unwrap(),
        );
        assert!(Arc::ptr_eq(&a1, &a2));
        let b1 = shared.get(&b, ip, None).unwrap();
        assert!(!Arc::ptr_eq(&a1, &b1));
        // Another cluster DNS address is another configuration.
        let elsewhere = Some("127.0.0.1:5353".parse().unwrap());
        assert!(!Arc::ptr_eq(&a1, &shared.get(&a, ip, elsewhere).unwrap()));
        drop((a1, a2));
        assert!(shared.get(&a, ip, None).is_some());
    }

    #[tokio::test]
    async fn addresses_and_localhost_need_no_server() {
        let conf = ResolvConf::parse("nameserver 127.0.0.1\noptions ndots:5\n");
        let r = Resolver::new(&conf, "10.96.0.10".parse().unwrap(), None).unwrap();
        assert_eq!(
            r.resolve("10.1.2.3").await.unwrap(),
            ["10.1.2.3".parse::<IpAddr>().unwrap()]
        );
        assert!(r
            .resolve("localhost")
            .await
            .unwrap()
            .contains(&"127.0.0.1".parse().unwrap()));
        assert!(matches!(
            r.resolve("bad..name").await,
            Err(ErrorCode::InvalidArgument)
        ));
        // None of these needed the hickory resolver (an idle pod's keeps no cache).
        assert!(r.inner.get().is_none());
    }
}
