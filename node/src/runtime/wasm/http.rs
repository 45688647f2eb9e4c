//! `wasi:http/proxy` components served at the pod IP, as `wasmtime serve` serves them: an
//! engine of their own with the pooling allocator, one `ProxyPre` per image, and a fresh
//! store and instance per request (with the container's WASI, limits and log), at most
//! [`MAX_IN_FLIGHT`] at once per container (more wait: back-pressure). The listener is made
//! inside the pod's network namespace, and requests run on threads inside it, so a
//! component's outgoing requests leave from the pod.

use std::sync::Arc;

use hyper::server::conn::http1;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::{govern, GuestConfig, HasLimits, Limits};

/// Requests one container handles at once; more wait for a free slot.
const MAX_IN_FLIGHT: usize = 128;
/// Instances the pool holds ready (across all served containers of the node).
const POOL_INSTANCES: u32 = 1_000;

/// Store data of a served request.
pub(crate) struct HttpHost {
    ctx: WasiCtx,
    table: ResourceTable,
    http: WasiHttpCtx,
    limits: Limits,
    /// The pod's network as the guest reaches it (its resolver and namespace).
    hooks: super::outgoing::PodHttpHooks,
}

impl crate::dns::lookup::PodLookups for HttpHost {
    fn resolver(&self) -> Option<std::sync::Arc<crate::dns::lookup::Resolver>> {
        self.hooks.resolver.clone()
    }
}

impl super::sockets::PodSockets for HttpHost {
    fn netns(&self) -> Option<std::sync::Arc<crate::sandbox::netns::Netns>> {
        self.hooks.netns.clone()
    }
}

impl WasiView for HttpHost {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HttpHost {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

impl HasLimits for HttpHost {
    fn limits(&mut self) -> &mut Limits {
        &mut self.limits
    }
}

/// The engine of served components, and their linker (all of WASI p2 plus wasi:http, as
/// components built from other languages import the CLI interfaces too).
pub(super) struct HttpEngine {
    engine: Engine,
    linker: Linker<HttpHost>,
}

impl HttpEngine {
    pub fn new() -> wasmtime::Result<HttpEngine> {
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(POOL_INSTANCES)
            .total_core_instances(POOL_INSTANCES)
            .total_memories(POOL_INSTANCES)
            .total_tables(POOL_INSTANCES)
            .total_stacks(POOL_INSTANCES);
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        crate::dns::lookup::add_to_linker(&mut linker)?;
        super::sockets::add_to_linker(&mut linker)?;
        // Ticks for this engine's guests (yields, CPU limits, kills).
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("skiff-http-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(super::TICK);
                }
            })?;
        Ok(HttpEngine { engine, linker })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn prepare(&self, component: &Component) -> wasmtime::Result<ProxyPre<HttpHost>> {
        ProxyPre::new(self.linker.instantiate_pre(component)?)
    }
}

/// A served container: what each request's instance gets.
pub(super) struct Served {
    pub engine: Engine,
    pub pre: ProxyPre<HttpHost>,
    pub guest: GuestConfig,
    /// The container's memory, shared by the instances of its requests.
    pub budget: super::Budget,
    pub cpu_limit_millis: Option<u64>,
}

/// Binds the container's port on all addresses of the current network namespace (run it
/// on a thread inside the pod's).
pub(super) fn bind(port: u16) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind((std::net::Ipv6Addr::UNSPECIFIED, port))
        .or_else(|_| std::net::TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, port)))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

impl Served {
    /// Serves HTTP/1.1 on `listener` until dropped (dropping also ends every connection
    /// and request in flight), or until `drain` is notified (the container's SIGTERM):
    /// then it takes no new connection, lets the requests in flight finish, closes idle
    /// connections and returns.
    pub async fn serve(
        self,
        listener: std::net::TcpListener,
        drain: Arc<tokio::sync::Notify>,
    ) -> wasmtime::Result<()> {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let served = Arc::new(self);
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
        // Connections end with the container: the set aborts them when dropped.
        let mut connections = tokio::task::JoinSet::new();
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        loop {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => accepted?,
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
                _ = drain.notified() => break,
            };
            let _ = stream.set_nodelay(true);
            let (served, slots) = (served.clone(), slots.clone());
            let service = hyper::service::service_fn(move |req| {
                let (served, slots) = (served.clone(), slots.clone());
                async move {
                    let _slot = slots.acquire_owned().await;
                    Ok::<_, std::convert::Infallible>(match served.handle(req).await {
                        Ok(resp) => resp,
                        Err(e) => {
                            served.guest.log_error(&format!("{e:#}"));
                            internal_error()
                        }
                    })
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let conn = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(io, service);
            let conn = graceful.watch(conn);
            connections.spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "an HTTP connection ended");
                }
            });
        }
        drop(listener);
        graceful.shutdown().await;
        while connections.join_next().await.is_some() {}
        Ok(())
    }

    /// One request, on a fresh instance.
    async fn handle(
        &self,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> Result<hyper::Response<HyperOutgoingBody>, wasmtime::Error> {
        let wasi = self.guest.builder().map_err(wasmtime::Error::msg)?.build();
        let mut store = Store::new(
            &self.engine,
            HttpHost {
                ctx: wasi,
                table: ResourceTable::new(),
                http: WasiHttpCtx::new(),
                limits: Limits::new(self.budget.clone()),
                hooks: self.guest.hooks(),
            },
        );
        govern(&mut store, self.cpu_limit_millis);
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let req = store.data_mut().http().new_incoming_request(
            wasmtime_wasi_http::p2::bindings::http::types::Scheme::Http,
            req,
        )?;
        let out = store.data_mut().http().new_response_outparam(sender)?;
        let proxy = self.pre.instantiate_async(&mut store).await?;
        // The guest may go on (streaming the body) after it has given the response head.
        let task = tokio::spawn(async move {
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, req, out)
                .await
        });
        match receiver.await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(code)) => Err(wasmtime::Error::msg(format!(
                "the component failed: {code:?}"
            ))),
            Err(_) => {
                let why = match task.await {
                    Ok(Err(e)) => format!("{e:#}"),
                    Ok(Ok(())) => "it returned without one".into(),
                    Err(e) => e.to_string(),
                };
                Err(wasmtime::Error::msg(format!(
                    "the component gave no response: {why}"
                )))
            }
        }
    }
}

/// The answer to a request the component could not handle.
fn internal_error() -> hyper::Response<HyperOutgoingBody> {
    use http_body_util::BodyExt;
    let body = http_body_util::Full::new(bytes::Bytes::from_static(b"the component failed\n"))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut resp = hyper::Response::new(body);
    *resp.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
    resp
}
