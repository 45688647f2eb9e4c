//! A lean HTTPS client for load generation: HTTP/2 connections multiplexing many
//! requests, authenticated from a kubeconfig. (Controllers and agents use `kube`; a
//! benchmark needs a client whose own cost is small next to the server's.)

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper::{Method, Request, StatusCode};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("kubeconfig: {0}")]
    Config(String),
    #[error("connect: {0}")]
    Connect(String),
    #[error("request: {0}")]
    Http(String),
}

#[derive(Clone)]
pub struct Client {
    conns: Arc<Vec<SendRequest<Full<Bytes>>>>,
    next: Arc<AtomicUsize>,
    token: Arc<str>,
    authority: Arc<str>,
}

/// Server address, CA and token from a kubeconfig's current context.
pub fn read_kubeconfig(path: &Path) -> Result<(String, Vec<u8>, String), ClientError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ClientError::Config(format!("{}: {e}", path.display())))?;
    let v: Value = serde_saphyr::from_str(&text).map_err(|e| ClientError::Config(e.to_string()))?;
    let server = v
        .pointer("/clusters/0/cluster/server")
        .and_then(Value::as_str)
        .ok_or_else(|| ClientError::Config("no server".into()))?;
    let ca = v
        .pointer("/clusters/0/cluster/certificate-authority-data")
        .and_then(Value::as_str)
        .ok_or_else(|| ClientError::Config("no CA".into()))?;
    let ca = base64::engine::general_purpose::STANDARD
        .decode(ca)
        .map_err(|e| ClientError::Config(e.to_string()))?;
    let token = v
        .pointer("/users/0/user/token")
        .and_then(Value::as_str)
        .ok_or_else(|| ClientError::Config("no token".into()))?;
    Ok((server.to_string(), ca, token.to_string()))
}

pub struct Response {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Client {
    /// Opens `connections` HTTP/2 connections to the server in `kubeconfig`.
    pub async fn connect(kubeconfig: &Path, connections: usize) -> Result<Client, ClientError> {
        let (server, ca_pem, token) = read_kubeconfig(kubeconfig)?;
        let authority = server
            .trim_start_matches("https://")
            .trim_end_matches('/')
            .to_string();
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut ca_pem.as_slice()) {
            roots
                .add(cert.map_err(|e| ClientError::Config(e.to_string()))?)
                .map_err(|e| ClientError::Config(e.to_string()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Config(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
        let host = authority
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(&authority)
            .trim_matches(['[', ']'])
            .to_string();
        let name = rustls::pki_types::ServerName::try_from(host)
            .map_err(|e| ClientError::Config(e.to_string()))?;
        let mut conns = Vec::new();
        for _ in 0..connections.max(1) {
            let tcp = tokio::net::TcpStream::connect(&authority)
                .await
                .map_err(|e| ClientError::Connect(e.to_string()))?;
            tcp.set_nodelay(true).ok();
            let tls = connector
                .connect(name.clone(), tcp)
                .await
                .map_err(|e| ClientError::Connect(e.to_string()))?;
            let (send, conn) =
                hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .initial_stream_window_size(1 << 20)
                    .initial_connection_window_size(8 << 20)
                    .handshake(hyper_util::rt::TokioIo::new(tls))
                    .await
                    .map_err(|e| ClientError::Connect(e.to_string()))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            conns.push(send);
        }
        Ok(Client {
            conns: Arc::new(conns),
            next: Arc::new(AtomicUsize::new(0)),
            token: token.into(),
            authority: authority.into(),
        })
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<Request<Full<Bytes>>, ClientError> {
        Request::builder()
            .method(method)
            .uri(format!("https://{}{path}", self.authority))
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", content_type)
            .header("accept", "application/json")
            .body(Full::new(body))
            .map_err(|e| ClientError::Http(e.to_string()))
    }

    fn conn(&self) -> SendRequest<Full<Bytes>> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        self.conns[i].clone()
    }

    /// Sends a request on the next connection; returns the response with its body unread.
    async fn start(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let req = self.request(method, path, content_type, body)?;
        let mut conn = self.conn();
        let http = |e: hyper::Error| ClientError::Http(e.to_string());
        conn.ready().await.map_err(http)?;
        conn.send_request(req).await.map_err(http)
    }

    /// Sends a request and reads the whole response.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<Response, ClientError> {
        let resp = self.start(method, path, content_type, body).await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?
            .to_bytes();
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    pub async fn get(&self, path: &str) -> Result<Response, ClientError> {
        self.send(Method::GET, path, "application/json", Bytes::new())
            .await
    }

    /// Opens a streaming request (a watch); returns the response body to read from.
    pub async fn stream(&self, path: &str) -> Result<hyper::body::Incoming, ClientError> {
        let resp = self
            .start(Method::GET, path, "application/json", Bytes::new())
            .await?;
        if !resp.status().is_success() {
            return Err(ClientError::Http(format!(
                "watch failed: {}",
                resp.status()
            )));
        }
        Ok(resp.into_body())
    }
}

/// Splits a watch stream into events (one JSON object per line).
pub struct Lines {
    body: hyper::body::Incoming,
    buf: Vec<u8>,
}

impl Lines {
    pub fn new(body: hyper::body::Incoming) -> Self {
        Lines {
            body,
            buf: Vec::new(),
        }
    }

    pub async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return serde_json::from_slice(&line).ok();
            }
            let frame = self.body.frame().await?.ok()?;
            if let Ok(data) = frame.into_data() {
                self.buf.extend_from_slice(&data);
            }
        }
    }
}
