//! Wasm containers on wasmtime: one `Engine` per agent; preview 1 command modules and
//! preview 2 command components (`wasi:cli/run`), compiled once per image digest (and
//! cached on disk, so a restarted agent skips compilation); one `Store` per container with
//! deny-by-default WASI (only the container's args, env and mounts); memory limits through
//! a `ResourceLimiter`; CPU limits through epoch interruption, so a spinning guest yields
//! and gets only its share; a kill drops the guest wherever it is.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::component::{Component, ResourceTable};
use wasmtime::{Config, Engine, Linker, Module, ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::{ContainerSpec, Exit, KillSwitch, Running, Runtime, RuntimeError};

mod guard;
mod http;
mod outgoing;
mod sockets;
use crate::logs::{LogFile, Stream};
use crate::sandbox::netns::Netns;

/// The epoch ticks this often: the granularity of yields, CPU accounting and kills.
const TICK: Duration = Duration::from_millis(5);
/// CPU limits are enforced over windows of this length.
const CPU_WINDOW: Duration = Duration::from_millis(100);

/// Store data of a preview 1 module.
struct P1Host {
    wasi: WasiP1Ctx,
    limits: Limits,
}

/// Store data of a preview 2 component (its outgoing wasi:http requests included).
struct P2Host {
    ctx: WasiCtx,
    table: ResourceTable,
    http: wasmtime_wasi_http::WasiHttpCtx,
    limits: Limits,
    /// The pod's network as the guest reaches it (its resolver and namespace).
    hooks: outgoing::PodHttpHooks,
}

impl crate::dns::lookup::PodLookups for P2Host {
    fn resolver(&self) -> Option<Arc<crate::dns::lookup::Resolver>> {
        self.hooks.resolver.clone()
    }
}

impl sockets::PodSockets for P2Host {
    fn netns(&self) -> Option<Arc<Netns>> {
        self.hooks.netns.clone()
    }
}

impl wasmtime_wasi_http::WasiHttpView for P2Host {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

impl WasiView for P2Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

trait HasLimits: Send + 'static {
    fn limits(&mut self) -> &mut Limits;
}

impl HasLimits for P1Host {
    fn limits(&mut self) -> &mut Limits {
        &mut self.limits
    }
}

impl HasLimits for P2Host {
    fn limits(&mut self) -> &mut Limits {
        &mut self.limits
    }
}

/// A container's memory: every linear memory and table of all its instances (a served
/// component's requests each have one) counts against one limit, its own or, without
/// one, the node's memory.
#[derive(Clone)]
pub(crate) struct Budget(Arc<BudgetInner>);

struct BudgetInner {
    limit: usize,
    used: std::sync::atomic::AtomicUsize,
}

impl Budget {
    pub(crate) fn new(limit: usize) -> Budget {
        Budget(Arc::new(BudgetInner {
            limit,
            used: Default::default(),
        }))
    }
}

/// One store's share of its container's [`Budget`]: growth past the budget traps (the
/// container is then `OOMKilled`); what the store took goes back when it is dropped.
struct Limits {
    budget: Budget,
    charged: usize,
    exceeded: bool,
}

impl Limits {
    fn new(budget: Budget) -> Limits {
        Limits {
            budget,
            charged: 0,
            exceeded: false,
        }
    }

    /// Takes `bytes` more from the budget, if it has them.
    fn charge(&mut self, bytes: usize, what: &str) -> wasmtime::Result<bool> {
        use std::sync::atomic::Ordering;
        let b = &self.budget.0;
        let before = b.used.fetch_add(bytes, Ordering::Relaxed);
        if before.saturating_add(bytes) > b.limit {
            b.used.fetch_sub(bytes, Ordering::Relaxed);
            self.exceeded = true;
            return Err(wasmtime::Error::msg(format!("{what} limit exceeded")));
        }
        self.charged += bytes;
        Ok(true)
    }
}

impl Drop for Limits {
    fn drop(&mut self) {
        let used = &self.budget.0.used;
        used.fetch_sub(self.charged, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Bytes a table element is counted as (a pointer and its type, at least).
const TABLE_ELEMENT_BYTES: usize = 8;

impl ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.charge(desired.saturating_sub(current), "memory")
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let elements = desired.saturating_sub(current);
        self.charge(elements.saturating_mul(TABLE_ELEMENT_BYTES), "table")
    }
}

enum Compiled {
    Module(Module),
    Component(Component),
}

/// An image ready to instantiate: compiled, its imports resolved against WASI once. Every
/// container of the image shares it (a clone is a reference count).
#[derive(Clone)]
enum Prepared {
    Module(wasmtime::InstancePre<P1Host>),
    Command(wasmtime_wasi::p2::bindings::CommandPre<P2Host>),
    /// A `wasi:http/proxy` component, served with an instance per request.
    Proxy(wasmtime_wasi_http::p2::bindings::ProxyPre<http::HttpHost>),
}

pub struct WasmRuntime {
    engine: Engine,
    p1: Linker<P1Host>,
    p2: wasmtime::component::Linker<P2Host>,
    /// Served components: an engine of their own, with pooled instances.
    http: http::HttpEngine,
    prepared: Mutex<HashMap<String, Prepared>>,
    cache_dir: PathBuf,
    /// The bound of a container without a memory limit: the node's memory.
    node_memory: u64,
    /// The largest Wasm binary compiled.
    max_wasm_bytes: u64,
}

/// The largest Wasm binary compiled, in bytes: compiling takes time and memory that grow
/// with it, and no real module or component comes near.
pub const MAX_WASM_BYTES: u64 = 256 << 20;

fn start_error(id: &str) -> impl Fn(&dyn std::fmt::Display) -> RuntimeError + '_ {
    move |e| RuntimeError::Start {
        id: id.into(),
        reason: format!("{e:#}"),
    }
}

/// The port a served component listens on when its container declares none (as
/// `wasmtime serve`'s default).
const DEFAULT_HTTP_PORT: u16 = 8080;

const CLI_RUN: &str = "wasi:cli/run";
const HTTP_HANDLER: &str = "wasi:http/incoming-handler";

/// Whether a component (its binary) handles HTTP requests rather than running as a
/// command: read from its export section, so that it is compiled once, for the engine
/// that serves it.
fn serves_http(bytes: &[u8]) -> bool {
    use wasmparser::{Parser, Payload};
    let mut exports = Vec::new();
    // Nested modules and components have exports of their own: only the outer ones count.
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload {
            Ok(Payload::ModuleSection { .. } | Payload::ComponentSection { .. }) => depth += 1,
            Ok(Payload::End(_)) if depth == 0 => break,
            Ok(Payload::End(_)) => depth -= 1,
            Ok(Payload::ComponentExportSection(section)) if depth == 0 => {
                for export in section.into_iter().flatten() {
                    let name = export.name.name;
                    exports.push(name.split('@').next().unwrap_or(name).to_string());
                }
            }
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    let has = |n: &str| exports.iter().any(|e| e == n);
    has(HTTP_HANDLER) && !has(CLI_RUN)
}

/// Whether a Wasm binary is a component (layer 1) rather than a core module.
pub fn is_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[6..8] == [1, 0]
}

impl WasmRuntime {
    /// One engine for the agent; compiled images are cached under `cache_dir`.
    pub fn new(cache_dir: &Path) -> Result<WasmRuntime, RuntimeError> {
        let fail = start_error("engine");
        let mut config = Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config).map_err(|e| fail(&e))?;
        let mut p1: Linker<P1Host> = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut p1, |h| &mut h.wasi).map_err(|e| fail(&e))?;
        let mut p2 = wasmtime::component::Linker::<P2Host>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut p2).map_err(|e| fail(&e))?;
        // Commands may make HTTP requests too (as `wasmtime run -S http`).
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut p2).map_err(|e| fail(&e))?;
        crate::dns::lookup::add_to_linker(&mut p2).map_err(|e| fail(&e))?;
        sockets::add_to_linker(&mut p2).map_err(|e| fail(&e))?;
        // The epoch ticker lives as long as the engine.
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("skiff-wasm-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(TICK);
                }
            })
            .map_err(|e| fail(&e))?;
        std::fs::create_dir_all(cache_dir).map_err(|e| fail(&e))?;
        Ok(WasmRuntime {
            http: http::HttpEngine::new().map_err(|e| fail(&e))?,
            engine,
            p1,
            p2,
            prepared: Mutex::new(HashMap::new()),
            cache_dir: cache_dir.to_path_buf(),
            node_memory: u64::MAX,
            max_wasm_bytes: MAX_WASM_BYTES,
        })
    }

    /// Bounds containers without a memory limit by `bytes` (the node's memory).
    pub fn with_node_memory(mut self, bytes: u64) -> WasmRuntime {
        self.node_memory = bytes;
        self
    }

    /// Compiles no Wasm binary larger than `bytes`.
    pub fn with_max_wasm_bytes(mut self, bytes: u64) -> WasmRuntime {
        self.max_wasm_bytes = bytes;
        self
    }

    /// Forgets image `digest` (deleted from the node): its compiled code, in memory and
    /// in the disk cache.
    pub fn forget(&self, digest: &str) {
        self.prepared.lock().expect("prepared").remove(digest);
        for suffix in CACHE_SUFFIXES {
            let _ = std::fs::remove_file(cached_path(&self.cache_dir, digest, suffix));
        }
    }

    /// The image ready to instantiate: from memory, or prepared now (compiled on a
    /// blocking thread: a large module takes seconds, which must not stall the agent's
    /// other work, such as its lease).
    async fn prepared(&self, spec: &ContainerSpec) -> Result<Prepared, RuntimeError> {
        if let Some(p) = self
            .prepared
            .lock()
            .expect("prepared")
            .get(&spec.image_digest)
        {
            return Ok(p.clone());
        }
        let fail = start_error(&spec.id);
        let bytes = image_bytes(spec, self.max_wasm_bytes)?;
        let served = is_component(&bytes) && serves_http(&bytes);
        let (engine, suffix) = match (served, is_component(&bytes)) {
            (true, _) => (self.http.engine(), "cwasm-http"),
            (false, true) => (&self.engine, "cwasm-component"),
            (false, false) => (&self.engine, "cwasm"),
        };
        let (engine, cache_dir, digest) = (
            engine.clone(),
            self.cache_dir.clone(),
            spec.image_digest.clone(),
        );
        let compiled = tokio::task::spawn_blocking(move || {
            compile(&engine, &cache_dir, suffix, &digest, &bytes)
        })
        .await
        .map_err(|e| fail(&e))?
        .map_err(|reason| RuntimeError::InvalidImage {
            image: spec.image_digest.clone(),
            reason,
        })?;
        let prepared = match compiled {
            Compiled::Module(module) => {
                Prepared::Module(self.p1.instantiate_pre(&module).map_err(|e| fail(&e))?)
            }
            Compiled::Component(component) if served => {
                Prepared::Proxy(self.http.prepare(&component).map_err(|e| fail(&e))?)
            }
            Compiled::Component(component) => {
                let pre = self.p2.instantiate_pre(&component).map_err(|e| fail(&e))?;
                Prepared::Command(
                    wasmtime_wasi::p2::bindings::CommandPre::new(pre).map_err(|e| fail(&e))?,
                )
            }
        };
        self.prepared
            .lock()
            .expect("prepared")
            .insert(spec.image_digest.clone(), prepared.clone());
        Ok(prepared)
    }
}

/// What a container's guests are given (each request of a served component gets it anew).
pub(crate) struct GuestConfig {
    id: String,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    working_dir: Option<String>,
    mounts: Vec<super::Mount>,
    log: LogFile,
    /// The pod's resolver for the guest's name lookups.
    resolver: Option<Arc<crate::dns::lookup::Resolver>>,
    /// The pod's network namespace, where the guest's sockets are made (none: the node's).
    netns: Option<Arc<Netns>>,
    /// On the node's network without asking for it: the node's own addresses are out of
    /// reach ([`guard`]).
    guarded: bool,
}

impl GuestConfig {
    fn of(spec: &ContainerSpec) -> GuestConfig {
        GuestConfig {
            id: spec.id.clone(),
            argv: spec.argv.clone(),
            env: spec.env.clone(),
            working_dir: spec.working_dir.clone().filter(|d| !d.is_empty()),
            mounts: spec.mounts.clone(),
            log: spec.log.clone(),
            resolver: spec.resolver.clone(),
            netns: spec.network.netns(),
            guarded: matches!(spec.network, crate::sandbox::Network::Shared),
        }
    }

    /// How the guest reaches its pod's network beyond plain sockets: its resolver, and
    /// its outgoing HTTP requests.
    pub(crate) fn hooks(&self) -> outgoing::PodHttpHooks {
        outgoing::PodHttpHooks {
            resolver: self.resolver.clone(),
            netns: self.netns.clone(),
            guarded: self.guarded,
        }
    }

    /// WASI for a guest: nothing but its args, env, output, mounts and its pod's sockets.
    fn builder(&self) -> Result<WasiCtxBuilder, RuntimeError> {
        let mut b = WasiCtxBuilder::new();
        // `wasi:random`'s secure source: the kernel's (wasmtime's default keeps a ChaCha
        // generator per guest, ~300 bytes of an idle pod).
        b.secure_random(rand_core::UnwrapErr(getrandom::SysRng));
        b.args(&self.argv);
        b.envs(&self.env);
        // `workingDir`: WASI's initial working directory (`wasi:cli/environment`), and
        // `PWD`, which guests built for preview 1 read by convention.
        if let Some(dir) = &self.working_dir {
            b.initial_cwd(dir);
            if !self.env.iter().any(|(k, _)| k == "PWD") {
                b.env("PWD", dir);
            }
        }
        // Sockets in the pod's network (its namespace, or the node's where the pod lives
        // on it): TCP and UDP to and from any address there, and name lookup (wasmtime
        // allows none of them unless told).
        if self.guarded {
            b.socket_addr_check(|addr, usage| {
                use wasmtime_wasi::sockets::SocketAddrUse::{TcpConnect, UdpSend};
                // Where it connects or sends to; binding, listening and accepting are its
                // own business.
                let ok = !matches!(usage, TcpConnect | UdpSend) || guard::reachable(addr.ip());
                Box::pin(async move { ok })
            });
        } else {
            b.inherit_network();
        }
        b.allow_tcp(true);
        b.allow_udp(true);
        b.allow_ip_name_lookup(true);
        b.stdout(LogStream(self.log.clone(), Stream::Stdout));
        b.stderr(LogStream(self.log.clone(), Stream::Stderr));
        for m in &self.mounts {
            let perms = if m.read_only {
                FsPerms::ReadOnly
            } else {
                FsPerms::ReadWrite
            };
            b.preopened_dir(m.dir.path(), &m.guest_path, perms)
                .map_err(|e| RuntimeError::Start {
                    id: self.id.clone(),
                    reason: format!("mount {}: {e}", m.guest_path),
                })?;
        }
        Ok(b)
    }

    /// A line of the host's own on the container's stderr.
    fn log_error(&self, msg: &str) {
        let _ = self
            .log
            .write(Stream::Stderr, format!("{msg}\n").as_bytes());
    }
}

/// The Wasm bytes of a container's image.
fn image_bytes(spec: &ContainerSpec, cap: u64) -> Result<Vec<u8>, RuntimeError> {
    let invalid = |reason: String| RuntimeError::InvalidImage {
        image: spec.image_digest.clone(),
        reason,
    };
    let crate::images::Content::Wasm(path) = &spec.image else {
        return Err(invalid("not a Wasm image (a root file system)".into()));
    };
    let size = std::fs::metadata(path)
        .map_err(|e| invalid(e.to_string()))?
        .len();
    if size > cap {
        return Err(invalid(format!(
            "the Wasm binary has {size} bytes, more than the {cap} this node compiles (--max-wasm-size)"
        )));
    }
    std::fs::read(path).map_err(|e| invalid(e.to_string()))
}

/// The kinds of compiled code cached, by file suffix.
const CACHE_SUFFIXES: [&str; 3] = ["cwasm-http", "cwasm-component", "cwasm"];

fn cached_path(cache_dir: &Path, digest: &str, suffix: &str) -> PathBuf {
    cache_dir.join(format!("{}.{suffix}", digest.replace(':', "-")))
}

/// `bytes` compiled for `engine`: from the disk cache (`<digest>.<suffix>`), or compiled
/// now and cached.
fn compile(
    engine: &Engine,
    cache_dir: &Path,
    suffix: &str,
    digest: &str,
    bytes: &[u8],
) -> Result<Compiled, String> {
    let component = is_component(bytes);
    let cached = cached_path(cache_dir, digest, suffix);
    // Safety: the cache is written only by this agent with this engine's settings;
    // wasmtime checks the version and configuration and refuses anything else.
    let from_cache = if component {
        unsafe { Component::deserialize_file(engine, &cached) }.map(Compiled::Component)
    } else {
        unsafe { Module::deserialize_file(engine, &cached) }.map(Compiled::Module)
    };
    if let Ok(c) = from_cache {
        return Ok(c);
    }
    let (c, serialized) = if component {
        let c = Component::new(engine, bytes).map_err(|e| format!("{e:#}"))?;
        let s = c.serialize();
        (Compiled::Component(c), s)
    } else {
        let m = Module::new(engine, bytes).map_err(|e| format!("{e:#}"))?;
        let s = m.serialize();
        (Compiled::Module(m), s)
    };
    if let Ok(serialized) = serialized {
        let tmp = cached.with_extension("tmp");
        if std::fs::write(&tmp, serialized).is_ok() {
            let _ = std::fs::rename(&tmp, &cached);
        }
    }
    Ok(c)
}

/// Limits and CPU shares for a container's store: each epoch tick the guest yields (so a
/// kill, which drops it, takes effect), sleeping off any CPU used beyond its limit in the
/// current window.
fn govern<T: HasLimits>(store: &mut Store<T>, cpu_limit_millis: Option<u64>) {
    store.limiter(|h| h.limits());
    let share = cpu_limit_millis.map(|m| m as f64 / 1000.0);
    let mut window_start = Instant::now();
    let mut ran_since = Instant::now();
    let mut used = Duration::ZERO;
    store.epoch_deadline_callback(move |_| {
        let now = Instant::now();
        used += now - ran_since;
        if now - window_start >= CPU_WINDOW {
            window_start = now;
            used = Duration::ZERO;
        }
        let pause = match share {
            Some(share) if used.as_secs_f64() > share * CPU_WINDOW.as_secs_f64() => {
                Duration::from_secs_f64(used.as_secs_f64() / share)
                    .saturating_sub(now - window_start)
            }
            _ => Duration::ZERO,
        };
        ran_since = now + pause;
        if pause.is_zero() {
            Ok(UpdateDeadline::Yield(1))
        } else {
            Ok(UpdateDeadline::YieldCustom(
                1,
                Box::pin(tokio::time::sleep(pause)),
            ))
        }
    });
    store.set_epoch_deadline(1);
}

/// A container's stdout or stderr, writing CRI log lines.
struct LogStream(LogFile, Stream);

impl wasmtime_wasi::cli::IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for LogStream {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.0.writer(self.1))
    }
}

struct WasmContainer {
    task: tokio::task::JoinHandle<Exit>,
    kill: Arc<tokio::sync::Notify>,
    /// A served component's SIGTERM: it drains (commands have no signals: a stop ends
    /// them at once).
    drain: Option<Arc<tokio::sync::Notify>>,
}

impl Drop for WasmContainer {
    fn drop(&mut self) {
        self.kill.notify_one();
    }
}

#[async_trait::async_trait]
impl Running for WasmContainer {
    async fn wait(&mut self) -> Exit {
        match (&mut self.task).await {
            Ok(exit) => exit,
            Err(e) => Exit {
                code: 128,
                reason: "Error",
                message: Some(format!("the container task failed: {e}")),
            },
        }
    }

    fn kill_switch(&self) -> KillSwitch {
        let kill = self.kill.clone();
        // `notify_one` keeps the signal for a task not waiting yet.
        KillSwitch::new(move || kill.notify_one())
    }

    fn terminate_switch(&self) -> KillSwitch {
        match &self.drain {
            Some(drain) => {
                let drain = drain.clone();
                KillSwitch::new(move || drain.notify_one())
            }
            None => self.kill_switch(),
        }
    }
}

/// Runs a guest until it returns or is killed. A kill drops the guest's future at once,
/// whatever it is doing (computing, or waiting in a WASI call such as `poll_oneoff` or a
/// read): with it go its store (memory, open files) and its stdout and stderr; the log is
/// closed so that nothing can write to it (or recreate it) afterwards.
async fn supervise_guest(
    run: impl std::future::Future<Output = (wasmtime::Result<()>, bool)>,
    kill: Arc<tokio::sync::Notify>,
    log: LogFile,
    alive: super::Alive,
) -> Exit {
    let ended = tokio::select! {
        biased;
        _ = kill.notified() => None,
        (result, out_of_memory) = run => Some(exit_of(result, out_of_memory)),
    };
    let exit = match ended {
        Some(exit) => {
            let _ = log.finish();
            exit
        }
        None => {
            let _ = log.finish_killed();
            Exit::killed(Some("killed".into()))
        }
    };
    drop(alive);
    exit
}

/// Turns a guest's end (return, `proc_exit`, trap) into an exit status.
fn exit_of(result: wasmtime::Result<()>, out_of_memory: bool) -> Exit {
    match result {
        Ok(()) => Exit::code(0),
        Err(e) => {
            if let Some(exit) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
                return Exit::code(exit.0);
            }
            if out_of_memory {
                return Exit {
                    code: 137,
                    reason: "OOMKilled",
                    message: Some("the container exceeded its memory limit".into()),
                };
            }
            Exit {
                code: 128 + 6,
                reason: "Error",
                message: Some(format!("{e:#}")),
            }
        }
    }
}

#[async_trait::async_trait]
impl Runtime for WasmRuntime {
    fn name(&self) -> &'static str {
        "wasm"
    }

    async fn exec(
        &self,
        _run_id: &str,
        _argv: &[String],
        _stdin: bool,
        _tty: bool,
    ) -> Result<super::ExecProcess, RuntimeError> {
        Err(RuntimeError::Exec(
            "cannot exec in a Wasm container: a Wasm guest is one sandboxed module with no processes or shell to run commands in (exec into an OCI container of the pod instead)".into(),
        ))
    }

    async fn start(&self, spec: ContainerSpec) -> Result<Box<dyn Running>, RuntimeError> {
        let prepared = self.prepared(&spec).await?;
        let guest = GuestConfig::of(&spec);
        let mut wasi = guest.builder()?;
        let budget = Budget::new(
            spec.memory_limit
                .unwrap_or(self.node_memory)
                .try_into()
                .unwrap_or(usize::MAX),
        );
        let limits = Limits::new(budget.clone());
        let kill = Arc::new(tokio::sync::Notify::new());
        let drain = Arc::new(tokio::sync::Notify::new());
        let log = spec.log.clone();
        let serving = matches!(prepared, Prepared::Proxy(_));
        // Each kind of guest runs its own way; each run ends with the guest's result and
        // whether it went over its memory limit, and is supervised the same way. Boxed:
        // each run takes its own size, not the largest kind's.
        let run: futures::future::BoxFuture<'static, (wasmtime::Result<()>, bool)> = match prepared
        {
            Prepared::Module(pre) => {
                let mut store = Store::new(
                    &self.engine,
                    P1Host {
                        wasi: wasi.build_p1(),
                        limits,
                    },
                );
                govern(&mut store, spec.cpu_limit_millis);
                Box::pin(async move {
                    // Each step boxed: an idle guest keeps only the call's state, not the
                    // instantiation's too.
                    let result = async {
                        let instance = Box::pin(pre.instantiate_async(&mut store)).await?;
                        let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
                        Box::pin(start.call_async(&mut store, ())).await
                    }
                    .await;
                    (result, store.data_mut().limits().exceeded)
                })
            }
            Prepared::Command(command) => {
                let mut store = Store::new(
                    &self.engine,
                    P2Host {
                        ctx: wasi.build(),
                        table: ResourceTable::new(),
                        http: wasmtime_wasi_http::WasiHttpCtx::new(),
                        limits,
                        hooks: guest.hooks(),
                    },
                );
                govern(&mut store, spec.cpu_limit_millis);
                Box::pin(async move {
                    let result = async {
                        let command = Box::pin(command.instantiate_async(&mut store)).await?;
                        // `wasi:cli/run` returns Err(()) for a non-zero exit without a code.
                        match Box::pin(command.wasi_cli_run().call_run(&mut store)).await? {
                            Ok(()) => Ok(()),
                            Err(()) => Err(wasmtime::Error::new(wasmtime_wasi::I32Exit(1))),
                        }
                    }
                    .await;
                    (result, store.data_mut().limits().exceeded)
                })
            }
            Prepared::Proxy(pre) => {
                let port = spec.ports.first().copied().unwrap_or(DEFAULT_HTTP_PORT);
                // The listener is made inside the pod's network namespace.
                let listener = match &guest.netns {
                    None => http::bind(port),
                    Some(ns) => ns.run(|| http::bind(port)).and_then(|bound| bound),
                }
                .map_err(|e| RuntimeError::Start {
                    id: spec.id.clone(),
                    reason: format!("listening on port {port}: {e}"),
                })?;
                let served = http::Served {
                    engine: self.http.engine().clone(),
                    pre,
                    guest,
                    budget,
                    cpu_limit_millis: spec.cpu_limit_millis,
                };
                let d = drain.clone();
                Box::pin(async move { (served.serve(listener, d).await, false) })
            }
        };
        let task = tokio::spawn(supervise_guest(run, kill.clone(), log, spec.alive));
        let drain = serving.then_some(drain);
        Ok(Box::new(WasmContainer { task, kill, drain }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &str = r#"(module
      (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (memory (export "memory") 1)
      (data (i32.const 8) "hello\n")
      (func (export "_start")
        (i32.store (i32.const 0) (i32.const 8))
        (i32.store (i32.const 4) (i32.const 6))
        (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 20)))
        (call $exit (i32.const 3))))"#;
    const SPIN: &str =
        r#"(module (memory (export "memory") 1) (func (export "_start") (loop $l (br $l))))"#;
    const GROW: &str = r#"(module (memory (export "memory") 1) (func (export "_start") (drop (memory.grow (i32.const 64)))))"#;

    struct Fixture {
        rt: WasmRuntime,
        dir: tempfile::TempDir,
        _serial: tokio::sync::MutexGuard<'static, ()>,
    }

    impl Fixture {
        async fn new() -> Fixture {
            let serial = crate::CPU_SERIAL.lock().await;
            let dir = tempfile::tempdir().unwrap();
            Fixture {
                rt: WasmRuntime::new(&dir.path().join("cache")).unwrap(),
                dir,
                _serial: serial,
            }
        }

        fn spec(&self, name: &str, wat: &str) -> ContainerSpec {
            let image = self.dir.path().join(format!("{name}.wat"));
            std::fs::write(&image, wat).unwrap();
            ContainerSpec {
                id: name.into(),
                run_id: format!("uid-{name}-0"),
                pod_uid: "uid".into(),
                hostname: name.into(),
                files: vec![],
                security: Default::default(),
                image_user: None,
                cpu_request_millis: None,
                ports: vec![],
                image: crate::images::Content::Wasm(image),
                image_digest: format!("sha256:{name}"),
                argv: vec![name.into()],
                env: vec![],
                working_dir: None,
                mounts: vec![],
                stdin: false,
                stdin_once: false,
                tty: false,
                pid_namespace: None,
                network: crate::sandbox::Network::Node,
                resolver: None,
                log: LogFile::new(
                    &self.dir.path().join(format!("{name}.log")),
                    Default::default(),
                ),
                memory_limit: None,
                cpu_limit_millis: None,
                alive: crate::runtime::Containers::default().token(),
            }
        }
    }

    fn exporting(interface: &str, func: &str) -> String {
        format!(
            r#"(component
              (core module $m (func (export "f")))
              (core instance $i (instantiate $m))
              (type $t (func))
              (func $f (type $t) (canon lift (core func $i "f")))
              (instance $e (export "{func}" (func $f)))
              (export "{interface}" (instance $e)))"#
        )
    }

    #[test]
    fn http_handlers_are_told_apart_from_commands() {
        let bin = |wat: String| wat::parse_str(wat).unwrap();
        assert!(serves_http(&bin(exporting(
            "wasi:http/incoming-handler@0.2.12",
            "handle"
        ))));
        assert!(!serves_http(&bin(exporting("wasi:cli/run@0.2.0", "run"))));
        // The examples, as built.
        let example = |name: &str| {
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../wasm-examples/out");
            std::fs::read(root.join(name)).unwrap()
        };
        assert!(serves_http(&example("http-hello.wasm")));
        assert!(!serves_http(&example("net-probe.wasm")));
        assert!(!serves_http(b"not wasm"));
    }

    #[test]
    fn guests_random_bytes_come_from_the_kernel() {
        use rand_core::Rng;
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        let mut kernel = rand_core::UnwrapErr(getrandom::SysRng);
        kernel.fill_bytes(&mut a);
        kernel.fill_bytes(&mut b);
        assert_ne!(a, [0; 32]);
        assert_ne!(a, b);
        assert_ne!(kernel.next_u64(), kernel.next_u64());
    }

    #[tokio::test]
    async fn output_goes_to_the_log_and_exit_codes_are_kept() {
        let f = Fixture::new().await;
        let mut c = f.rt.start(f.spec("hello", HELLO)).await.unwrap();
        assert_eq!(
            c.wait().await,
            Exit {
                code: 3,
                reason: "Error",
                message: None
            }
        );
        let log = crate::logs::read(&f.dir.path().join("hello.log")).unwrap();
        assert_eq!(
            log.iter().map(|e| e.text.as_str()).collect::<Vec<_>>(),
            ["hello"]
        );
        // The compiled module is cached on disk for the next agent.
        let cached = f.dir.path().join("cache/sha256-hello.cwasm");
        assert!(cached.exists());
        // Until the image is deleted from the node.
        f.rt.forget("sha256:hello");
        assert!(!cached.exists());
        assert!(!f.rt.prepared.lock().unwrap().contains_key("sha256:hello"));
    }

    /// A binary over --max-wasm-size is not compiled: the container fails to start
    /// saying so.
    #[tokio::test]
    async fn a_binary_past_the_size_cap_is_not_compiled() {
        let mut f = Fixture::new().await;
        f.rt = WasmRuntime::new(&f.dir.path().join("cache"))
            .unwrap()
            .with_max_wasm_bytes(16);
        let err = f.rt.start(f.spec("hello", HELLO)).await.err().unwrap();
        assert!(
            err.to_string()
                .contains("this node compiles (--max-wasm-size)"),
            "{err}"
        );
        assert!(!f.dir.path().join("cache/sha256-hello.cwasm").exists());
    }

    /// A guest that prints its environment (one variable per line).
    const PRINTENV: &str = r#"(module
      (import "wasi_snapshot_preview1" "environ_sizes_get" (func $sizes (param i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "environ_get" (func $get (param i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (func (export "_start") (local $i i32)
        (drop (call $sizes (i32.const 0) (i32.const 4)))
        (drop (call $get (i32.const 64) (i32.const 1024)))
        ;; NULs between variables become newlines.
        (local.set $i (i32.const 1024))
        (block $done (loop $l
          (br_if $done (i32.ge_u (local.get $i) (i32.add (i32.const 1024) (i32.load (i32.const 4)))))
          (if (i32.eqz (i32.load8_u (local.get $i))) (then (i32.store8 (local.get $i) (i32.const 10))))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br $l)))
        (i32.store (i32.const 16) (i32.const 1024))
        (i32.store (i32.const 20) (i32.load (i32.const 4)))
        (drop (call $write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 24)))))"#;

    #[tokio::test]
    async fn the_working_directory_is_given_to_the_guest() {
        let f = Fixture::new().await;
        let mut spec = f.spec("printenv", PRINTENV);
        spec.env = vec![("A".into(), "1".into())];
        spec.working_dir = Some("/data".into());
        let mut c = f.rt.start(spec).await.unwrap();
        assert_eq!(c.wait().await.code, 0);
        let log = crate::logs::read(&f.dir.path().join("printenv.log")).unwrap();
        let lines: Vec<&str> = log.iter().map(|e| e.text.as_str()).collect();
        assert_eq!(lines, ["A=1", "PWD=/data"]);
    }

    /// A guest that opens `path` relative to its first preopened directory (fd 3) and
    /// exits with the WASI errno (0: opened).
    fn opener(path: &str, oflags: i32, rights: i64) -> String {
        format!(
            r#"(module
              (import "wasi_snapshot_preview1" "path_open"
                (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
              (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
              (memory (export "memory") 1)
              (data (i32.const 64) "{path}")
              (func (export "_start")
                (call $exit (call $open (i32.const 3) (i32.const 0) (i32.const 64)
                  (i32.const {len}) (i32.const {oflags}) (i64.const {rights}) (i64.const 0)
                  (i32.const 0) (i32.const 0)))))"#,
            len = path.len()
        )
    }

    #[tokio::test]
    async fn a_guest_sees_nothing_but_its_mounts() {
        let f = Fixture::new().await;
        let host = f.dir.path().join("host");
        let mounted = host.join("mounted");
        std::fs::create_dir_all(&mounted).unwrap();
        std::fs::write(mounted.join("inside.txt"), "ok").unwrap();
        std::fs::write(host.join("outside.txt"), "secret").unwrap();
        std::os::unix::fs::symlink("/etc", mounted.join("etc")).unwrap();
        std::os::unix::fs::symlink("../outside.txt", mounted.join("up")).unwrap();
        // WASI rights and open flags: fd_read, fd_write; O_CREAT.
        let (read, write, create) = (2, 64, 1);
        // (path, oflags, rights, read-only mount, may open)
        let cases = [
            ("inside.txt", 0, read, true, true),
            ("../outside.txt", 0, read, true, false),
            ("/etc/hostname", 0, read, true, false),
            ("etc/hostname", 0, read, true, false),
            ("up", 0, read, true, false),
            ("new.txt", create, write, true, false),
            ("new.txt", create, write, false, true),
            ("inside.txt", 0, read, false, true),
        ];
        for (i, (path, oflags, rights, read_only, allowed)) in cases.into_iter().enumerate() {
            let mut spec = f.spec(&format!("open{i}"), &opener(path, oflags, rights));
            spec.mounts = vec![crate::runtime::Mount {
                dir: crate::sandbox::HostDir::open(&mounted).unwrap(),
                guest_path: "/data".into(),
                read_only,
            }];
            let exit = f.rt.start(spec).await.unwrap().wait().await;
            assert_eq!(
                exit.code == 0,
                allowed,
                "open {path:?} (read-only mount: {read_only}): {exit:?}"
            );
        }
        // Without mounts there is no directory to open anything in.
        let bare = f.spec("nomount", &opener("inside.txt", 0, read));
        let exit = f.rt.start(bare).await.unwrap().wait().await;
        assert_ne!(exit.code, 0, "{exit:?}");
        assert_eq!(
            std::fs::read_to_string(host.join("outside.txt")).unwrap(),
            "secret"
        );
    }

    #[tokio::test]
    async fn a_spinning_guest_yields_and_can_be_killed() {
        let f = Fixture::new().await;
        let mut c = f.rt.start(f.spec("spin", SPIN)).await.unwrap();
        // The runtime thread is not starved: a timer still fires.
        tokio::time::sleep(Duration::from_millis(50)).await;
        c.kill();
        let exit = tokio::time::timeout(Duration::from_secs(2), c.wait())
            .await
            .expect("killed promptly");
        assert_eq!(exit.code, 137);
    }

    /// Sleeps an hour in `poll_oneoff`, then prints "woke".
    const SLEEP_HOUR: &str = r#"(module
      (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (data (i32.const 200) "woke\n")
      (func (export "_start")
        (i64.store (i32.const 0) (i64.const 1))
        (i32.store8 (i32.const 8) (i32.const 0))
        (i32.store (i32.const 16) (i32.const 1))
        (i64.store (i32.const 24) (i64.const 3600000000000))
        (drop (call $poll (i32.const 0) (i32.const 48) (i32.const 1) (i32.const 160)))
        (i32.store (i32.const 100) (i32.const 200))
        (i32.store (i32.const 104) (i32.const 5))
        (drop (call $fd_write (i32.const 1) (i32.const 100) (i32.const 1) (i32.const 120)))))"#;

    /// Regression: a kill was a flag read at epoch ticks, so a guest waiting in a WASI
    /// call kept its task, memory and log writer after its pod was deleted.
    #[tokio::test]
    async fn a_guest_blocked_in_a_wasi_call_is_killed() {
        let f = Fixture::new().await;
        let mut spec = f.spec("sleeper", SLEEP_HOUR);
        let containers = crate::runtime::Containers::default();
        spec.alive = containers.token();
        let log = spec.log.clone();
        let mut c = f.rt.start(spec).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        c.kill();
        let exit = tokio::time::timeout(Duration::from_secs(2), c.wait())
            .await
            .expect("a guest in poll_oneoff was not killed");
        assert_eq!(exit.code, 137);
        tokio::time::timeout(Duration::from_secs(2), containers.gone())
            .await
            .expect("the killed container still holds its resources");
        assert!(
            log.write(Stream::Stdout, b"late\n").is_err(),
            "its log is closed"
        );
        assert!(!f.dir.path().join("sleeper.log").exists());
    }

    #[tokio::test]
    async fn growing_past_the_memory_limit_is_oom_killed() {
        let f = Fixture::new().await;
        let mut spec = f.spec("grow", GROW);
        spec.memory_limit = Some(1 << 20);
        let mut c = f.rt.start(spec).await.unwrap();
        let exit = c.wait().await;
        assert_eq!((exit.code, exit.reason), (137, "OOMKilled"));
    }

    /// A limit is the container's, not each memory's: two memories of 640 KiB each are
    /// over a limit of 1 MiB.
    #[tokio::test]
    async fn the_memory_limit_counts_every_memory_together() {
        const TWO: &str = r#"(module (memory (export "memory") 1) (memory $b 1)
          (func (export "_start")
            (drop (memory.grow 0 (i32.const 9)))
            (drop (memory.grow $b (i32.const 9)))))"#;
        let f = Fixture::new().await;
        let mut spec = f.spec("two", TWO);
        spec.memory_limit = Some(1 << 20);
        let exit = f.rt.start(spec).await.unwrap().wait().await;
        assert_eq!((exit.code, exit.reason), (137, "OOMKilled"));
        // Each alone fits.
        let mut spec = f.spec("two-roomy", TWO);
        spec.memory_limit = Some(2 << 20);
        let exit = f.rt.start(spec).await.unwrap().wait().await;
        assert_eq!(exit.code, 0, "{exit:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cpu_limits_throttle_a_busy_loop() {
        let f = Fixture::new().await;
        let mut spec = f.spec("busy", SPIN);
        spec.cpu_limit_millis = Some(100);
        let c = f.rt.start(spec).await.unwrap();
        // Measure the thread CPU time the guest gets over half a second: about 10% of it.
        let before = process_cpu();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let used = process_cpu() - before;
        c.kill();
        assert!(
            used < Duration::from_millis(150),
            "a 100m container used {used:?} of CPU in 500ms"
        );
    }

    fn process_cpu() -> Duration {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        Duration::from_millis(ticks * 10)
    }
}
