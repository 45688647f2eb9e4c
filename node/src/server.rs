//! The agent's own HTTPS endpoint, which the API server proxies `kubectl logs`, `exec`,
//! `attach` and `port-forward` to. It serves from a [`Host`] (the agent), which gives it no
//! more than these need. Its certificate is self-signed; it admits only clients with a
//! certificate signed by the cluster CA (the API server).

use std::net::SocketAddr;
use std::path::{Path as FilePath, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

use k8s_openapi::api::core::v1::Pod;

use crate::layout::ContainerId;
use crate::logs;
use crate::runtime::Runtime;

/// What the endpoint needs of the node (the kubelet server's `HostInterface`): the
/// agent implements it; tests fake it.
#[async_trait::async_trait]
pub trait Host: Send + Sync + 'static {
    /// The pod, as the API server has it; `None` if there is no such pod.
    async fn pod(&self, ns: &str, name: &str) -> Result<Option<Pod>, kube::Error>;
    /// A container's runs' log files, oldest first; the running one's file may not exist
    /// yet (a log file is made on its first line).
    fn container_runs(&self, ns: &str, pod: &str, container: &str) -> Vec<PathBuf>;
    /// Whether a running container still writes to the log file.
    fn log_active(&self, path: &FilePath) -> bool;
    /// The running container `container` of `pod`, from the agent's own records.
    fn running_container(&self, pod: &Pod, container: &str) -> Option<ContainerId>;
    /// The runtime that runs the container, if the node has it.
    fn runtime(&self, id: &ContainerId) -> Option<&dyn Runtime>;
    /// The network namespace of a pod's sandbox, if it has one of its own.
    fn pod_netns(&self, pod_uid: &str) -> Option<PathBuf>;
}

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
async fn waiting_reason(host: &impl Host, ns: &str, pod: &str, container: &str) -> String {
    let reason = get_pod(host, ns, pod).await.ok().and_then(|p| {
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

async fn container_logs<H: Host>(
    State(host): State<Arc<H>>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    Query(q): Query<LogQuery>,
) -> Response {
    let runs = host.container_runs(&ns, &pod, &container);
    let path = if flag(&q.previous) {
        runs.len().checked_sub(2).map(|i| runs[i].clone())
    } else {
        runs.last().cloned()
    };
    let Some(path) = path else {
        let msg = if flag(&q.previous) {
            format!("previous terminated container \"{container}\" in pod \"{pod}\" not found")
        } else {
            let why = waiting_reason(host.as_ref(), &ns, &pod, &container).await;
            format!("container \"{container}\" in pod \"{pod}\" is waiting to start: {why}")
        };
        return (StatusCode::BAD_REQUEST, msg).into_response();
    };
    let follow = flag(&q.follow) && !flag(&q.previous);
    let mut follower = logs::Follower::new(&path);
    let entries = match if follow {
        follower.read_new()
    } else {
        logs::read(&path)
    } {
        Ok(e) => e,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    let first = render(&entries, &q);
    if !follow {
        return ([(header::CONTENT_TYPE, "text/plain")], first).into_response();
    }
    // Follow: send what is there, then new lines (read from where the last read ended)
    // while this run of the container lives.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(16);
    let timestamps = q.timestamps.clone();
    tokio::spawn(async move {
        if tx.send(Ok(first)).await.is_err() {
            return;
        }
        loop {
            let active = host.log_active(&path);
            let entries = follower.read_new().unwrap_or_default();
            if !entries.is_empty() {
                let q = LogQuery {
                    timestamps: timestamps.clone(),
                    ..Default::default()
                };
                if tx.send(Ok(render(&entries, &q))).await.is_err() {
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
async fn get_pod(host: &impl Host, ns: &str, pod: &str) -> Result<Pod, (StatusCode, String)> {
    match host.pod(ns, pod).await {
        Ok(Some(p)) => Ok(p),
        Ok(None) => Err((StatusCode::NOT_FOUND, format!("pod {pod} not found"))),
        Err(e) => Err((StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
    }
}

/// The ID of a pod's running container `name`, as the agent started it: never as the
/// pod's status says (whoever may write `pods/status` could name any container there).
async fn running_container(
    host: &impl Host,
    ns: &str,
    pod: &str,
    name: &str,
) -> Result<ContainerId, (StatusCode, String)> {
    let p = get_pod(host, ns, pod).await?;
    host.running_container(&p, name).ok_or_else(|| {
        (
            StatusCode::NOT_FOUND,
            format!("container not found (\"{name}\")"),
        )
    })
}

/// `GET /exec/{ns}/{pod}/{container}?command=…`: a process in a running container,
/// connected over a websocket or SPDY (the API server forwards kubectl's upgraded
/// connection).
async fn exec<H: Host>(
    State(host): State<Arc<H>>,
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
    stream(host, (ns, pod, container), q, req).await
}

/// `GET /attach/{ns}/{pod}/{container}`: the main process of a running container (its
/// output from now on, its stdin and terminal), over a websocket or SPDY.
async fn attach<H: Host>(
    State(host): State<Arc<H>>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    req: axum::extract::Request,
) -> Response {
    let mut q = ExecQuery::parse(req.uri().query().unwrap_or_default());
    q.command.clear();
    stream(host, (ns, pod, container), q, req).await
}

/// Serves an exec (a command in `q`) or an attach (none) over the protocol the client
/// upgrades to.
async fn stream<H: Host>(
    host: Arc<H>,
    (ns, pod, container): (String, String, String),
    q: ExecQuery,
    req: axum::extract::Request,
) -> Response {
    let id = match running_container(host.as_ref(), &ns, &pod, &container).await {
        Ok(found) => found,
        Err((code, msg)) => return (code, msg).into_response(),
    };
    let process = move |host: Arc<H>, q: ExecQuery| async move {
        let rt = host
            .runtime(&id)
            .ok_or_else(|| format!("no {} runtime on this node", id.runtime()))?;
        let started = if q.command.is_empty() {
            rt.attach(id.run_id(), q.stdin, q.tty).await
        } else {
            rt.exec(id.run_id(), &q.command, q.stdin, q.tty).await
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
            crate::streams::serve_spdy(io, wanted, argv, process(host, q)).await;
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
        match process(host, q).await {
            Ok(process) => crate::streams::serve(socket, process, argv).await,
            Err(e) => crate::streams::fail(socket, &e).await,
        }
    })
}

/// Where a pod's ports are (its own namespace, or the node's network).
async fn pod_net(
    host: &impl Host,
    ns: &str,
    pod: &str,
) -> Result<(crate::portforward::PodNet, String), (StatusCode, String)> {
    let p = get_pod(host, ns, pod).await?;
    let uid = p.metadata.uid.clone().unwrap_or_default();
    let host_network = p.spec.as_ref().and_then(|s| s.host_network) == Some(true);
    let net = match host.pod_netns(&uid) {
        Some(netns) if !host_network => crate::portforward::PodNet::Namespace(netns),
        _ => crate::portforward::PodNet::Node,
    };
    Ok((net, uid))
}

/// `GET /portForward/{ns}/{pod}`: a port-forward session, over a websocket tunnelling SPDY
/// (kubectl 1.31+) or over SPDY itself.
async fn port_forward<H: Host>(
    State(host): State<Arc<H>>,
    Path((ns, pod)): Path<(String, String)>,
    req: axum::extract::Request,
) -> Response {
    let (net, uid) = match pod_net(host.as_ref(), &ns, &pod).await {
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
async fn port_forward_with_container<H: Host>(
    state: State<Arc<H>>,
    Path((ns, pod, _container)): Path<(String, String, String)>,
    req: axum::extract::Request,
) -> Response {
    port_forward(state, Path((ns, pod)), req).await
}

/// The endpoint's routes, served from `host`.
fn app<H: Host>(host: Arc<H>) -> Router {
    Router::new()
        .route(
            "/containerLogs/{ns}/{pod}/{container}",
            get(container_logs::<H>),
        )
        .route("/exec/{ns}/{pod}/{container}", get(exec::<H>))
        .route("/attach/{ns}/{pod}/{container}", get(attach::<H>))
        .route("/portForward/{ns}/{pod}", get(port_forward::<H>))
        .route(
            "/portforward/{ns}/{pod}/{container}",
            get(port_forward_with_container::<H>),
        )
        .with_state(host)
}

/// Binds the agent endpoint and serves it from `host` in the background; returns the
/// bound address.
pub async fn start<H: Host>(
    host: Arc<H>,
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
    let app = app(host);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let listener =
        skiff_api::conn::Listener::new(listener, skiff_api::conn::DEFAULT_MAX_CONNECTIONS);
    tokio::spawn(async move {
        use skiff_api::conn::{HANDSHAKE_TIMEOUT, IDLE_TIMEOUT};
        loop {
            let (tcp, _, permit) = listener.accept().await;
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
                let Ok(Ok(stream)) = handshake.await else {
                    return;
                };
                let _ = skiff_api::conn::serve_connection(stream, app, IDLE_TIMEOUT).await;
            });
        }
    });
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    /// A node with one pod, `ns/web`, whose container `app` ran twice (`runs`); nothing
    /// runs.
    struct FakeHost {
        pod: Option<Pod>,
        runs: Vec<PathBuf>,
    }

    #[async_trait::async_trait]
    impl Host for FakeHost {
        async fn pod(&self, ns: &str, name: &str) -> Result<Option<Pod>, kube::Error> {
            Ok(self
                .pod
                .clone()
                .filter(|p| (ns, name) == ("ns", p.metadata.name.as_deref().unwrap_or_default())))
        }

        fn container_runs(&self, ns: &str, pod: &str, container: &str) -> Vec<PathBuf> {
            match (ns, pod, container) {
                ("ns", "web", "app") => self.runs.clone(),
                _ => vec![],
            }
        }

        fn log_active(&self, _path: &FilePath) -> bool {
            false
        }

        fn runtime(&self, _id: &ContainerId) -> Option<&dyn Runtime> {
            None
        }

        fn running_container(&self, _pod: &Pod, _container: &str) -> Option<ContainerId> {
            None
        }

        fn pod_netns(&self, _pod_uid: &str) -> Option<PathBuf> {
            None
        }
    }

    fn host(dir: &FilePath) -> Arc<FakeHost> {
        let runs: Vec<PathBuf> = (0..2).map(|n| dir.join(format!("{n}.log"))).collect();
        for (n, path) in runs.iter().enumerate() {
            let log = logs::LogFile::new(path, Default::default());
            log.write(logs::Stream::Stdout, format!("run {n}\n").as_bytes())
                .unwrap();
            log.finish().unwrap();
        }
        let pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "uid-1"},
            "status": {"containerStatuses": [{
                "name": "app", "image": "i", "imageID": "", "ready": false, "restartCount": 1,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            }]},
        }))
        .unwrap();
        Arc::new(FakeHost {
            pod: Some(pod),
            runs,
        })
    }

    async fn get(host: Arc<FakeHost>, uri: &str) -> (StatusCode, String) {
        let req = axum::extract::Request::get(uri)
            .body(Body::empty())
            .unwrap();
        let resp = app(host).oneshot(req).await.unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn logs_are_the_latest_run_or_the_one_before() {
        let dir = tempfile::tempdir().unwrap();
        let h = host(dir.path());
        let latest = get(h.clone(), "/containerLogs/ns/web/app").await;
        assert_eq!(latest, (StatusCode::OK, "run 1\n".into()));
        let previous = get(h.clone(), "/containerLogs/ns/web/app?previous=true").await;
        assert_eq!(previous, (StatusCode::OK, "run 0\n".into()));
        let stamped = get(h, "/containerLogs/ns/web/app?timestamps=true").await;
        assert!(stamped.1.ends_with("Z run 1\n"), "{stamped:?}");
    }

    #[tokio::test]
    async fn a_container_without_logs_says_why_it_waits() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = host(dir.path());
        Arc::get_mut(&mut h).unwrap().runs.clear();
        let (status, msg) = get(h, "/containerLogs/ns/web/app").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            msg,
            "container \"app\" in pod \"web\" is waiting to start: CrashLoopBackOff"
        );
    }

    #[tokio::test]
    async fn exec_needs_a_pod_and_a_running_container() {
        let dir = tempfile::tempdir().unwrap();
        let h = host(dir.path());
        let (status, msg) = get(h.clone(), "/exec/ns/gone/app?command=sh").await;
        assert_eq!(
            (status, msg.as_str()),
            (StatusCode::NOT_FOUND, "pod gone not found")
        );
        let (status, msg) = get(h.clone(), "/exec/ns/web/app?command=sh").await;
        assert_eq!(
            (status, msg.as_str()),
            (StatusCode::NOT_FOUND, "container not found (\"app\")")
        );
        let (status, _) = get(h, "/exec/ns/web/app").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
}
