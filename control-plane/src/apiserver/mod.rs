//! The Kubernetes-compatible API server: HTTPS with bearer-token authentication in front of
//! one dispatcher that serves discovery, OpenAPI and every registered resource.
//!
//! - [`pki`]: CA, serving certificate, admin token and kubeconfig.
//! - [`request`]: request paths and query parameters.
//! - [`resource`]: resource handlers (CRUD, subresources, watch, tables).
//! - [`discovery`], [`openapi`]: what kubectl reads before anything else.
//! - [`tokens`]: ServiceAccount tokens (TokenRequest) and their authentication.
//! - [`error`]: the single mapping from errors to `Status` responses.

pub mod discovery;
pub mod error;
pub mod inflight;
mod node_proxy;
pub mod openapi;
pub mod pki;
pub(crate) mod protobuf;
#[rustfmt::skip]
mod protobuf_schema;
pub mod request;
pub(crate) mod resource;
pub mod tokens;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::objects::{ObjectError, Objects, WriteOptions};
use crate::registry::Registry;
use crate::store::{SledStore, Store, StoreError};
use error::ApiError;
use request::{parse_path, ApiPath, Query};

/// The Kubernetes version Skiff's API corresponds to.
pub const KUBERNETES_VERSION: &str = "v1.33.0";
/// The largest request body accepted, as Kubernetes'.
const MAX_BODY: usize = 3 * 1024 * 1024;
/// Events kept for watches that resume from an older resourceVersion.
pub const DEFAULT_HISTORY: u64 = 20_000;

pub use skiff_api::WASM_RUNTIME_LABEL;

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub history: u64,
    /// Truncate a damaged write-ahead log at the damage instead of refusing to start.
    pub repair: bool,
    pub admission: crate::objects::Admission,
    /// The address clients in pods reach this server at (the `kubernetes` Service's
    /// endpoint); `None`: the listen address, or this host's default-route address.
    pub advertise_address: Option<std::net::IpAddr>,
    pub limits: ServeLimits,
}

/// How much the server takes on at once (kube-apiserver's flags of the same names).
#[derive(Clone, Debug)]
pub struct ServeLimits {
    /// Connections held at once (more wait in the listen backlog).
    pub max_connections: usize,
    /// Read-only requests served at once, long-running ones (watches, logs, exec) aside.
    pub max_requests_inflight: usize,
    /// Mutating requests served at once.
    pub max_mutating_requests_inflight: usize,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            max_connections: skiff_api::conn::DEFAULT_MAX_CONNECTIONS,
            max_requests_inflight: inflight::DEFAULT_MAX_REQUESTS_INFLIGHT,
            max_mutating_requests_inflight: inflight::DEFAULT_MAX_MUTATING_REQUESTS_INFLIGHT,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("bootstrap: {0}")]
    Bootstrap(#[from] ObjectError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What every handler shares.
pub struct AppState {
    pub objects: Arc<Objects>,
    token: String,
    server_address: String,
    /// TLS towards node agents (for `pods/log`).
    pub(crate) node_tls: Arc<rustls::ClientConfig>,
    openapi: openapi::Documents,
    /// Signs and checks ServiceAccount tokens.
    pub(crate) tokens: tokens::Tokens,
    /// Requests in flight, by kind (the max-in-flight filter).
    in_flight: inflight::InFlight,
}

/// A started API server.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub kubeconfig: PathBuf,
    pub objects: Arc<Objects>,
    /// Where pods reach this server (`None`: no address to offer them).
    pub advertise: Option<SocketAddr>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningServer {
    /// Waits until the server stops (after its shutdown future resolves).
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// The address to advertise when none is given, as kube-apiserver picks it: the listen
/// address unless loopback or unspecified, else the address this host sends from on its
/// default route (a UDP "connect" sends nothing). `None` on a host without a route.
fn advertise_default(listen: std::net::IpAddr) -> Option<std::net::IpAddr> {
    if !listen.is_loopback() && !listen.is_unspecified() {
        return Some(listen);
    }
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?; // TEST-NET-1: any routable address will do.
    Some(s.local_addr().ok()?.ip()).filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
}

/// Opens the store, creates credentials and system objects, binds, and serves until
/// `shutdown` resolves.
pub async fn start(
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<RunningServer, ServerError> {
    let tightened =
        skiff_api::private_dir::ensure(&config.data_dir).map_err(|source| ServerError::Io {
            path: config.data_dir.clone(),
            source,
        })?;
    if let Some(mode) = tightened {
        tracing::warn!(dir = %config.data_dir.display(), was = format!("{mode:o}"), "the data directory let other users in (it holds every Secret): now 0700");
    }
    let pki = pki::Pki::load_or_create(&config.data_dir)?;
    let store_dir = config.data_dir.join("store");
    let store: Arc<dyn Store> = Arc::new(if config.repair {
        SledStore::open_repairing(&store_dir, config.history)?
    } else {
        SledStore::open(&store_dir, config.history)?
    });
    let registry = Arc::new(Registry::new());
    let objects =
        Arc::new(Objects::new(store, registry.clone()).with_admission(config.admission.clone()));
    bootstrap(&objects).await?;

    let listener =
        TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServerError::Listen {
                addr: config.listen,
                source,
            })?;
    let addr = listener
        .local_addr()
        .map_err(|source| ServerError::Listen {
            addr: config.listen,
            source,
        })?;
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        addr.ip().to_string()
    };
    let server_url = if addr.is_ipv6() {
        format!("https://[{host}]:{}", addr.port())
    } else {
        format!("https://{host}:{}", addr.port())
    };
    let kubeconfig = pki.write_kubeconfig(&server_url)?;
    let advertise = config
        .advertise_address
        .or_else(|| advertise_default(addr.ip()))
        .map(|ip| SocketAddr::new(ip, addr.port()));
    let tls = Arc::new(pki.server_tls(addr, advertise.map(|a| a.ip()))?);

    let state = Arc::new(AppState {
        objects: objects.clone(),
        token: pki.token.clone(),
        node_tls: Arc::new(pki.node_client_tls()?),
        server_address: format!("{host}:{}", addr.port()),
        openapi: openapi::Documents::new(&registry),
        tokens: tokens::Tokens::load_or_create(&config.data_dir.join("pki"))?,
        in_flight: inflight::InFlight::new(
            config.limits.max_requests_inflight,
            config.limits.max_mutating_requests_inflight,
        ),
    });
    let app = Router::new().fallback(dispatch).with_state(state);
    tracing::info!(listen = %addr, kubeconfig = %kubeconfig.display(), "skiff API server listening on {server_url}; kubeconfig at {}", kubeconfig.display());
    let listener = skiff_api::conn::Listener::new(listener, config.limits.max_connections);
    let task = tokio::spawn(serve(listener, tls, app, shutdown));
    Ok(RunningServer {
        addr,
        kubeconfig,
        objects,
        advertise,
        task,
    })
}

async fn serve(
    listener: skiff_api::conn::Listener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    use skiff_api::conn::{HANDSHAKE_TIMEOUT, IDLE_TIMEOUT};
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer, permit) = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let served = skiff_api::conn::serve_connection(tls, app, IDLE_TIMEOUT).await;
            if let Err(error) = served {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
}

/// Creates the system namespaces and the `wasmtime` RuntimeClass if missing.
async fn bootstrap(objects: &Objects) -> Result<(), ObjectError> {
    crate::controllers::ensure_system_namespaces(objects).await?;
    let rc = objects
        .registry()
        .find("node.k8s.io", "v1", "runtimeclasses")
        .expect("runtimeclasses are served");
    let wasmtime = json!({"metadata": {"name": "wasmtime"}, "handler": "wasmtime", "scheduling": {"nodeSelector": {WASM_RUNTIME_LABEL: "true"}}});
    match objects
        .create(rc, None, wasmtime, &WriteOptions::default())
        .await
    {
        Ok(_) | Err(ObjectError::AlreadyExists { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

fn json_ok(v: Value, content_type: &str) -> Response {
    (
        [(header::CONTENT_TYPE, content_type.to_string())],
        v.to_string(),
    )
        .into_response()
}

fn version() -> Value {
    json!({
        "major": "1", "minor": "33", "gitVersion": format!("{KUBERNETES_VERSION}+skiff"), "gitCommit": env!("CARGO_PKG_VERSION"),
        "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "rustc", "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, if std::env::consts::ARCH == "x86_64" { "amd64" } else { std::env::consts::ARCH }),
    })
}

/// Whether the request carries a credential of this cluster: the admin token, or a
/// ServiceAccount token this server issued whose ServiceAccount still exists. (Until access
/// control exists, every authenticated client may do everything.)
async fn authenticated(state: &AppState, headers: &axum::http::HeaderMap) -> bool {
    let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
    else {
        return false;
    };
    // Constant-time comparison.
    let admin = token.len() == state.token.len()
        && token
            .bytes()
            .zip(state.token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    admin || tokens::authenticate(&state.objects, &state.tokens, token).await
}

async fn dispatch(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let span = tracing::debug_span!("request", %method, %path);
    async move {
        let resp = match route(state, req).await {
            Ok(r) => r,
            Err(e) => e.into_response(),
        };
        tracing::debug!(status = resp.status().as_u16(), "handled");
        resp
    }
    .instrument(span)
    .await
}

/// Subresources (of pods, the only resource serving them) answered by the node agent
/// over an upgraded connection.
const STREAMING: &[&str] = &["exec", "attach", "portforward"];

async fn route(state: Arc<AppState>, req: Request) -> Result<Response, ApiError> {
    let path = req.uri().path().to_string();
    match path.as_str() {
        "/livez" | "/readyz" | "/healthz" => return Ok((StatusCode::OK, "ok").into_response()),
        "/version" => return Ok(json_ok(version(), "application/json")),
        _ => {}
    }
    if !authenticated(&state, req.headers()).await {
        return Err(ApiError::Unauthorized);
    }
    let _slot = state
        .in_flight
        .admit(req.method(), &path, req.uri().query())
        .map_err(|inflight::Saturated| ApiError::TooManyRequests)?;
    // Streaming subresources keep the whole request: the connection is upgraded.
    if let Some(ApiPath::Resource(rp)) = parse_path(&path) {
        let serves = |sub: &str| {
            state
                .objects
                .registry()
                .find(&rp.group, &rp.version, &rp.resource)
                .is_some_and(|rt| rt.has_subresource(sub))
        };
        if let (Some(name), Some(sub)) = (
            rp.name.as_deref(),
            rp.subresource
                .as_deref()
                .filter(|s| STREAMING.contains(s) && serves(s)),
        ) {
            let ns = rp.namespace.as_deref().unwrap_or("default");
            return node_proxy::pod_stream(
                &state.objects,
                state.node_tls.clone(),
                ns,
                name,
                sub,
                req,
            )
            .await;
        }
    }
    let (parts, body) = req.into_parts();
    let query = Query::parse(parts.uri.query())?;
    let accept = parts
        .headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let registry = state.objects.registry();
    if let Some(rest) = path.strip_prefix("/openapi/") {
        let doc = match rest.trim_end_matches('/') {
            "v3" => Some(state.openapi.index.clone()),
            p => p.strip_prefix("v3/").and_then(|gv| state.openapi.get(gv)),
        };
        let doc = doc.ok_or(ApiError::NoSuchPath)?;
        return Ok(([(header::CONTENT_TYPE, "application/json")], doc).into_response());
    }
    let api_path = parse_path(&path).ok_or(ApiError::NoSuchPath)?;
    let get_only = |m: &Method| {
        if *m == Method::GET {
            Ok(())
        } else {
            Err(ApiError::MethodNotAllowed)
        }
    };
    match api_path {
        ApiPath::Root { legacy } => {
            get_only(&parts.method)?;
            if accept.contains("as=APIGroupDiscoveryList") && accept.contains("v=v2") {
                Ok(json_ok(
                    discovery::aggregated(registry, legacy),
                    discovery::AGGREGATED_CONTENT_TYPE,
                ))
            } else if legacy {
                Ok(json_ok(
                    discovery::api_versions(&state.server_address),
                    "application/json",
                ))
            } else {
                Ok(json_ok(discovery::group_list(registry), "application/json"))
            }
        }
        ApiPath::Group(g) => {
            get_only(&parts.method)?;
            discovery::group(registry, &g)
                .map(|v| json_ok(v, "application/json"))
                .ok_or(ApiError::NoSuchPath)
        }
        ApiPath::GroupVersion { group, version } => {
            get_only(&parts.method)?;
            discovery::resource_list(registry, &group, &version)
                .map(|v| json_ok(v, "application/json"))
                .ok_or(ApiError::NoSuchPath)
        }
        ApiPath::Resource(rp) => {
            let body = axum::body::to_bytes(Body::new(body), MAX_BODY)
                .await
                .map_err(|e| {
                    let too_large = std::error::Error::source(&e)
                        .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
                    if too_large {
                        ApiError::TooLarge(MAX_BODY)
                    } else {
                        ApiError::BadRequest(format!("unable to read the request body: {e}"))
                    }
                })?;
            resource::handle(state.clone(), parts.method, rp, query, parts.headers, body).await
        }
    }
}
