//! The agent's own HTTPS endpoint, which the API server proxies `kubectl logs` and
//! `kubectl exec` to. Its
//! certificate is self-signed; it admits only clients with a certificate signed by the
//! cluster CA (the API server).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

use crate::agent::Ctx;
use crate::logs;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct LogQuery {
    follow: Option<String>,
    previous: Option<String>,
    tail_lines: Option<i64>,
    since_seconds: Option<i64>,
    since_time: Option<String>,
    timestamps: Option<String>,
    limit_bytes: Option<u64>,
}

fn flag(v: &Option<String>) -> bool {
    matches!(v.as_deref(), Some("true" | "1" | "True" | "t"))
}

/// A container's runs, oldest first: their log files, plus the running one, whose file may
/// not exist yet (a log file is made on the first line).
fn runs(ctx: &Ctx, ns: &str, pod: &str, container: &str) -> Vec<PathBuf> {
    // Named as the pod worker names them (see `PodDirs`).
    let (ns, pod, container) = (
        crate::sandbox::path_element(ns),
        crate::sandbox::path_element(pod),
        crate::sandbox::path_element(container),
    );
    let container = container.as_str();
    let prefix = format!("{ns}_{pod}_");
    let of_container = |p: &&PathBuf| {
        let dir = p.parent();
        dir.and_then(|d| d.file_name())
            .is_some_and(|n| n == container)
            && dir
                .and_then(|d| d.parent())
                .and_then(|d| d.file_name())
                .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
    };
    let active = ctx
        .active_logs
        .lock()
        .expect("active logs")
        .iter()
        .find(of_container)
        .cloned();
    // The running pod's directory, else the newest pod of that name (a recreated pod has
    // a new uid).
    let pod_dir = match active.as_ref().and_then(|p| p.parent()?.parent()) {
        Some(d) => Some(d.to_path_buf()),
        None => std::fs::read_dir(ctx.data_dir.join(crate::agent::LOGS))
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
            .map(|e| e.path()),
    };
    let Some(dir) = pod_dir else { return vec![] };
    let run_of = |p: &std::path::Path| -> Option<u64> {
        p.file_name()?.to_str()?.strip_suffix(".log")?.parse().ok()
    };
    let mut runs: Vec<(u64, PathBuf)> = std::fs::read_dir(dir.join(container))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| run_of(&e.path()).map(|n| (n, e.path())))
        .collect();
    if let Some(p) = active {
        if let Some(n) = run_of(&p).filter(|n| !runs.iter().any(|(m, _)| m == n)) {
            runs.push((n, p));
        }
    }
    runs.sort();
    runs.into_iter().map(|(_, p)| p).collect()
}

fn render(entries: &[logs::Entry], q: &LogQuery) -> Vec<u8> {
    let since = q
        .since_seconds
        .map(|s| jiff::Timestamp::now() - jiff::SignedDuration::from_secs(s))
        .or_else(|| q.since_time.as_deref().and_then(|t| t.parse().ok()));
    let mut lines: Vec<String> = Vec::new();
    let mut pending = String::new();
    for e in entries.iter().filter(|e| since.is_none_or(|s| e.time >= s)) {
        if pending.is_empty() && flag(&q.timestamps) {
            pending.push_str(&e.time.strftime("%Y-%m-%dT%H:%M:%S.%fZ").to_string());
            pending.push(' ');
        }
        pending.push_str(&e.text);
        if !e.partial {
            lines.push(std::mem::take(&mut pending));
        }
    }
    if let Some(n) = q.tail_lines.filter(|n| *n >= 0) {
        let n = n as usize;
        if lines.len() > n {
            lines.drain(..lines.len() - n);
        }
    }
    let mut out: Vec<u8> = lines
        .into_iter()
        .flat_map(|l| (l + "\n").into_bytes())
        .collect();
    if let Some(limit) = q.limit_bytes {
        out.truncate(limit as usize);
    }
    out
}

/// Why a container that never ran waits, in the kubelet's words for `kubectl logs`.
async fn waiting_reason(ctx: &Ctx, ns: &str, pod: &str, container: &str) -> String {
    let reason = get_pod(ctx, ns, pod).await.ok().and_then(|p| {
        let status = p.status?;
        status
            .container_statuses
            .into_iter()
            .flatten()
            .chain(status.init_container_statuses.into_iter().flatten())
            .find(|c| c.name == container)?
            .state?
            .waiting?
            .reason
    });
    match reason.as_deref() {
        Some("ErrImagePull") => "image can't be pulled".into(),
        Some("ImagePullBackOff") => "trying and failing to pull image".into(),
        Some(r) => r.into(),
        None => "ContainerCreating".into(),
    }
}

async fn container_logs(
    State(ctx): State<Arc<Ctx>>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    Query(q): Query<LogQuery>,
) -> Response {
    let runs = runs(&ctx, &ns, &pod, &container);
    let path = if flag(&q.previous) {
        runs.len().checked_sub(2).map(|i| runs[i].clone())
    } else {
        runs.last().cloned()
    };
    let Some(path) = path else {
        let msg = if flag(&q.previous) {
            format!("previous terminated container \"{container}\" in pod \"{pod}\" not found")
        } else {
            let why = waiting_reason(&ctx, &ns, &pod, &container).await;
            format!("container \"{container}\" in pod \"{pod}\" is waiting to start: {why}")
        };
        return (StatusCode::BAD_REQUEST, msg).into_response();
    };
    let entries = match logs::read(&path) {
        Ok(e) => e,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    let first = render(&entries, &q);
    if !flag(&q.follow) || flag(&q.previous) {
        return ([(header::CONTENT_TYPE, "text/plain")], first).into_response();
    }
    // Follow: send what is there, then new lines while this run of the container lives.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(16);
    let seen = entries.len();
    let timestamps = q.timestamps.clone();
    tokio::spawn(async move {
        if tx.send(Ok(first)).await.is_err() {
            return;
        }
        let mut seen = seen;
        loop {
            let active = ctx.active_logs.lock().expect("active logs").contains(&path);
            let entries = logs::read(&path).unwrap_or_default();
            if entries.len() > seen {
                let q = LogQuery {
                    timestamps: timestamps.clone(),
                    ..Default::default()
                };
                let chunk = render(&entries[seen..], &q);
                seen = entries.len();
                if tx.send(Ok(chunk)).await.is_err() {
                    return;
                }
            } else if !active {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    ([(header::CONTENT_TYPE, "text/plain")], body).into_response()
}

fn tls_config(ca_pem: &[u8], hosts: Vec<String>) -> Result<rustls::ServerConfig, ServerError> {
    let tls = |e: &dyn std::fmt::Display| ServerError::Tls(e.to_string());
    let key = rcgen::KeyPair::generate().map_err(|e| tls(&e))?;
    let mut params = rcgen::CertificateParams::new(hosts).map_err(|e| tls(&e))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "skiff-agent");
    let cert = params.self_signed(&key).map_err(|e| tls(&e))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &ca_pem[..]) {
        roots.add(c.map_err(|e| tls(&e))?).map_err(|e| tls(&e))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| tls(&e))?;
    let key_der =
        rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| tls(&e))?;
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![cert.der().clone()], key_der)
        .map_err(|e| tls(&e))
}

/// Binds the agent endpoint and serves it in the background; returns the bound address.
/// The protocol a request asks to upgrade to, lower-cased (`websocket`, `spdy/3.1`).
fn upgrade_of(req: &axum::extract::Request) -> String {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// The answer that switches a connection to SPDY/3.1 speaking `protocol`.
fn switching_to_spdy(protocol: &'static str) -> Response {
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "SPDY/3.1")
        .header("X-Stream-Protocol-Version", protocol)
        .body(Body::empty())
        .expect("valid response")
}

/// What an exec asks for (its query: `command` repeats).
#[derive(Debug, Default, PartialEq)]
struct ExecQuery {
    command: Vec<String>,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
}

impl ExecQuery {
    fn parse(query: &str) -> ExecQuery {
        let mut q = ExecQuery::default();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            let on = flag(&Some(v.to_string()));
            match k.as_ref() {
                "command" => q.command.push(v.into_owned()),
                "stdin" | "input" => q.stdin = on,
                "stdout" | "output" => q.stdout = on,
                "stderr" | "error" => q.stderr = on,
                "tty" => q.tty = on,
                _ => {}
            }
        }
        q
    }
}

/// The pod, from the API server (404 if it is gone).
async fn get_pod(
    ctx: &Ctx,
    ns: &str,
    pod: &str,
) -> Result<k8s_openapi::api::core::v1::Pod, (StatusCode, String)> {
    let api: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(ctx.client.clone(), ns);
    api.get(pod).await.map_err(|e| match e {
        kube::Error::Api(s) if s.code == 404 => {
            (StatusCode::NOT_FOUND, format!("pod {pod} not found"))
        }
        e => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    })
}

/// The running container `name` of a pod: its runtime's name and its ID there.
async fn running_container(
    ctx: &Ctx,
    ns: &str,
    pod: &str,
    name: &str,
) -> Result<(String, String), (StatusCode, String)> {
    let p = get_pod(ctx, ns, pod).await?;
    let status = p.status.unwrap_or_default();
    let found = status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.init_container_statuses.iter().flatten())
        .find(|c| c.name == name && c.state.as_ref().is_some_and(|s| s.running.is_some()))
        .and_then(|c| c.container_id.clone());
    let id = found.ok_or_else(|| {
        (
            StatusCode::NOT_FOUND,
            format!("container not found (\"{name}\")"),
        )
    })?;
    let (runtime, run_id) = id.split_once("://").ok_or_else(|| {
        (
            StatusCode::NOT_FOUND,
            format!("container not found (\"{name}\")"),
        )
    })?;
    Ok((runtime.to_string(), run_id.to_string()))
}

/// `GET /exec/{ns}/{pod}/{container}?command=…`: a process in a running container,
/// connected over a websocket or SPDY (the API server forwards kubectl's upgraded
/// connection).
async fn exec(
    State(ctx): State<Arc<Ctx>>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    req: axum::extract::Request,
) -> Response {
    let q = ExecQuery::parse(req.uri().query().unwrap_or_default());
    if q.command.is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            "you must specify at least one command for the container",
        )
            .into_response();
    }
    stream(ctx, (ns, pod, container), q, req).await
}

/// `GET /attach/{ns}/{pod}/{container}`: the main process of a running container (its
/// output from now on, its stdin and terminal), over a websocket or SPDY.
async fn attach(
    State(ctx): State<Arc<Ctx>>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    req: axum::extract::Request,
) -> Response {
    let mut q = ExecQuery::parse(req.uri().query().unwrap_or_default());
    q.command.clear();
    stream(ctx, (ns, pod, container), q, req).await
}

/// Serves an exec (a command in `q`) or an attach (none) over the protocol the client
/// upgrades to.
async fn stream(
    ctx: Arc<Ctx>,
    (ns, pod, container): (String, String, String),
    q: ExecQuery,
    req: axum::extract::Request,
) -> Response {
    let (runtime, run_id) = match running_container(&ctx, &ns, &pod, &container).await {
        Ok(found) => found,
        Err((code, msg)) => return (code, msg).into_response(),
    };
    let process = move |ctx: Arc<Ctx>, q: ExecQuery| async move {
        let rt = ctx
            .runtime(&runtime)
            .ok_or_else(|| format!("no {runtime} runtime on this node"))?;
        let started = if q.command.is_empty() {
            rt.attach(&run_id, q.stdin, q.tty).await
        } else {
            rt.exec(&run_id, &q.command, q.stdin, q.tty).await
        };
        started.map_err(|e| e.to_string())
    };
    let upgrade = upgrade_of(&req);
    if upgrade.starts_with("spdy/3.1") {
        let offered = req
            .headers()
            .get_all("x-stream-protocol-version")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|v| v.trim() == crate::streams::SPDY_PROTOCOL);
        if !offered {
            return (
                StatusCode::FORBIDDEN,
                "the client offers no streaming protocol the node speaks (v4.channel.k8s.io)",
            )
                .into_response();
        }
        let on = hyper::upgrade::on(req);
        let wanted = crate::streams::Wanted {
            stdin: q.stdin,
            stdout: q.stdout,
            stderr: q.stderr,
            tty: q.tty,
        };
        tokio::spawn(async move {
            let Ok(upgraded) = on.await else {
                return;
            };
            let argv = q.command.clone();
            let io = hyper_util::rt::TokioIo::new(upgraded);
            crate::streams::serve_spdy(io, wanted, argv, process(ctx, q)).await;
        });
        return switching_to_spdy(crate::streams::SPDY_PROTOCOL);
    }
    use axum::extract::FromRequest;
    let ws = match axum::extract::ws::WebSocketUpgrade::from_request(req, &()).await {
        Ok(ws) => ws.protocols(crate::streams::PROTOCOLS),
        Err(rejection) => return rejection.into_response(),
    };
    if ws.selected_protocol().is_none() {
        return (
            StatusCode::BAD_REQUEST,
            "unsupported streaming protocol: v5.channel.k8s.io or v4.channel.k8s.io",
        )
            .into_response();
    }
    ws.on_upgrade(move |socket| async move {
        let argv = q.command.clone();
        match process(ctx, q).await {
            Ok(process) => crate::streams::serve(socket, process, argv).await,
            Err(e) => crate::streams::fail(socket, &e).await,
        }
    })
}

/// Where a pod's ports are (its own namespace, or the node's network).
async fn pod_net(
    ctx: &Ctx,
    ns: &str,
    pod: &str,
) -> Result<(crate::portforward::PodNet, String), (StatusCode, String)> {
    let p = get_pod(ctx, ns, pod).await?;
    let uid = p.metadata.uid.clone().unwrap_or_default();
    let host = p.spec.as_ref().and_then(|s| s.host_network) == Some(true);
    let sandbox = crate::agent::PodDirs::of(&ctx.data_dir, &p).sandbox;
    let net = match crate::sandbox::network::recorded_netns(&sandbox) {
        Some(netns) if !host => crate::portforward::PodNet::Namespace(netns),
        _ => crate::portforward::PodNet::Node,
    };
    Ok((net, uid))
}

/// `GET /portForward/{ns}/{pod}`: a port-forward session, over a websocket tunnelling SPDY
/// (kubectl 1.31+) or over SPDY itself.
async fn port_forward(
    State(ctx): State<Arc<Ctx>>,
    Path((ns, pod)): Path<(String, String)>,
    req: axum::extract::Request,
) -> Response {
    let (net, uid) = match pod_net(&ctx, &ns, &pod).await {
        Ok(found) => found,
        Err((code, msg)) => return (code, msg).into_response(),
    };
    let upgrade = upgrade_of(&req);
    let name = format!("{ns}/{pod} ({uid})");
    if upgrade == "websocket" {
        use axum::extract::FromRequest;
        let ws = match axum::extract::ws::WebSocketUpgrade::from_request(req, &()).await {
            Ok(ws) => ws.protocols([crate::portforward::TUNNEL_PROTOCOL]),
            Err(rejection) => return rejection.into_response(),
        };
        if ws.selected_protocol().is_none() {
            return (StatusCode::BAD_REQUEST, "unsupported port-forward protocol").into_response();
        }
        return ws.on_upgrade(move |socket| {
            crate::portforward::session(crate::portforward::tunnel(socket), net, name)
        });
    }
    if upgrade.starts_with("spdy/3.1") {
        let on = hyper::upgrade::on(req);
        tokio::spawn(async move {
            if let Ok(upgraded) = on.await {
                crate::portforward::session(hyper_util::rt::TokioIo::new(upgraded), net, name)
                    .await;
            }
        });
        return switching_to_spdy(crate::portforward::PROTOCOL);
    }
    (StatusCode::BAD_REQUEST, "Upgrade request required").into_response()
}

/// The same, under the path the API server forwards to (it names a container, which
/// port-forward does not need).
async fn port_forward_with_container(
    state: State<Arc<Ctx>>,
    Path((ns, pod, _container)): Path<(String, String, String)>,
    req: axum::extract::Request,
) -> Response {
    port_forward(state, Path((ns, pod)), req).await
}

pub(crate) async fn start(
    ctx: Arc<Ctx>,
    listen: SocketAddr,
    ca_pem: &[u8],
    hosts: Vec<String>,
) -> Result<SocketAddr, ServerError> {
    let tls = Arc::new(tls_config(ca_pem, hosts)?);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| ServerError::Listen {
            addr: listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| ServerError::Listen {
            addr: listen,
            source,
        })?;
    let app = Router::new()
        .route("/containerLogs/{ns}/{pod}/{container}", get(container_logs))
        .route("/exec/{ns}/{pod}/{container}", get(exec))
        .route("/attach/{ns}/{pod}/{container}", get(attach))
        .route("/portForward/{ns}/{pod}", get(port_forward))
        .route(
            "/portforward/{ns}/{pod}/{container}",
            get(port_forward_with_container),
        )
        .with_state(ctx);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
            });
        }
    });
    Ok(addr)
}
