//! The agent's own HTTPS endpoint, which the API server proxies `kubectl logs` to. Its
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
            format!(
                "container \"{container}\" in pod \"{pod}\" is waiting to start: ContainerCreating"
            )
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
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
            });
        }
    });
    Ok(addr)
}
