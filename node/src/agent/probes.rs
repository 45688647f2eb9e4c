//! Container probes as the kubelet runs them: `httpGet` (2xx and 3xx succeed), `tcpSocket`
//! (a connection), `grpc` (the gRPC health protocol's `Check` answering SERVING) and `exec`
//! (exit code 0, through the container's runtime), each with its initial delay, period,
//! timeout and success/failure thresholds. A [`Prober`] turns results into what the
//! container's supervisor acts on: started, ready, or to be restarted.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::runtime::{ExecProcess, RuntimeError};

/// What a probe found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure(String),
}

/// Runs a command in the probed container (exec probes): its process.
pub type Exec = std::sync::Arc<
    dyn Fn(Vec<String>) -> futures::future::BoxFuture<'static, Result<ExecProcess, RuntimeError>>
        + Send
        + Sync,
>;

/// What probes reach: the pod's address (or the node's, for hostNetwork pods), the
/// container's named ports, and a way to run commands in it.
#[derive(Clone)]
pub struct Target {
    pub ip: String,
    pub ports: NamedPorts,
    pub exec: Exec,
}

/// A container's name and the ports it names (what a probe's or hook's port may say):
/// all a target keeps of the container's spec.
#[derive(Clone, Debug, Default)]
pub struct NamedPorts {
    container: String,
    ports: Vec<(String, u16)>,
}

impl NamedPorts {
    pub fn of(c: &Container) -> NamedPorts {
        NamedPorts {
            container: c.name.clone(),
            ports: c
                .ports
                .iter()
                .flatten()
                .filter_map(|p| Some((p.name.clone()?, p.container_port as u16)))
                .collect(),
        }
    }

    /// A port given by number or by the name of one of the container's ports.
    fn resolve(&self, port: &IntOrString) -> Result<u16, String> {
        match port {
            IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("invalid port {n}")),
            IntOrString::String(name) => self
                .ports
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, p)| *p)
                .ok_or_else(|| format!("couldn't find port: {name} in {}", self.container)),
        }
    }
}

/// The kubelet's defaults for a probe's settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl Timing {
    pub fn of(p: &Probe) -> Timing {
        let secs =
            |v: Option<i32>, default: i32| Duration::from_secs(v.unwrap_or(default).max(0) as u64);
        Timing {
            initial_delay: secs(p.initial_delay_seconds, 0),
            period: secs(p.period_seconds, 10).max(Duration::from_secs(1)),
            timeout: secs(p.timeout_seconds, 1).max(Duration::from_secs(1)),
            success_threshold: p.success_threshold.unwrap_or(1).max(1) as u32,
            failure_threshold: p.failure_threshold.unwrap_or(3).max(1) as u32,
        }
    }
}

/// Runs a probe once.
pub async fn run(p: &Probe, t: &Target, timeout: Duration) -> Outcome {
    let probe = async {
        if let Some(h) = &p.http_get {
            let port = t.ports.resolve(&h.port)?;
            let host = h
                .host
                .clone()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| t.ip.clone());
            let path = h.path.clone().unwrap_or_else(|| "/".into());
            let https = h.scheme.as_deref() == Some("HTTPS");
            let headers: Vec<(String, String)> = h
                .http_headers
                .iter()
                .flatten()
                .map(|hh| (hh.name.clone(), hh.value.clone()))
                .collect();
            return http_get(&host, port, &path, https, &headers).await;
        }
        if let Some(s) = &p.tcp_socket {
            let port = t.ports.resolve(&s.port)?;
            let host = s
                .host
                .clone()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| t.ip.clone());
            return tokio::net::TcpStream::connect((host.as_str(), port))
                .await
                .map(|_| ())
                .map_err(|e| format!("dial tcp {host}:{port}: {e}"));
        }
        if let Some(g) = &p.grpc {
            let port = u16::try_from(g.port).map_err(|_| format!("invalid port {}", g.port))?;
            return grpc_check(&t.ip, port, g.service.as_deref().unwrap_or_default()).await;
        }
        if let Some(e) = &p.exec {
            let argv = e.command.clone().unwrap_or_default();
            let process = (t.exec)(argv.clone()).await.map_err(|e| e.to_string())?;
            let mut out = process.stdout;
            let mut text = String::new();
            let read = async {
                use tokio::io::AsyncReadExt;
                let _ = (&mut out).take(10 * 1024).read_to_string(&mut text).await;
            };
            let (code, ()) = tokio::join!(process.exit, read);
            return if code == 0 {
                Ok(())
            } else {
                Err(format!(
                    "command {argv:?} exited with {code}: {}",
                    text.trim()
                ))
            };
        }
        Err("the probe has no handler".into())
    };
    match tokio::time::timeout(timeout, probe).await {
        Ok(Ok(())) => Outcome::Success,
        Ok(Err(msg)) => Outcome::Failure(msg),
        Err(_) => Outcome::Failure(format!("the probe timed out after {timeout:?}")),
    }
}

/// Runs a lifecycle hook (`preStop`, `postStart`) within `budget`: a sleep, or an exec,
/// HTTP GET or TCP handler run as a probe's would be.
pub async fn run_hook(
    h: &k8s_openapi::api::core::v1::LifecycleHandler,
    t: &Target,
    budget: Duration,
) -> Outcome {
    if let Some(s) = &h.sleep {
        tokio::time::sleep(Duration::from_secs(s.seconds.max(0) as u64).min(budget)).await;
        return Outcome::Success;
    }
    let probe = Probe {
        exec: h.exec.clone(),
        http_get: h.http_get.clone(),
        tcp_socket: h.tcp_socket.clone(),
        ..Default::default()
    };
    run(&probe, t, budget).await
}

async fn http_get(
    host: &str,
    port: u16,
    path: &str,
    https: bool,
    headers: &[(String, String)],
) -> Result<(), String> {
    use http_body_util::Empty;
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let tcp = tokio::net::TcpStream::connect(&authority)
        .await
        .map_err(|e| format!("Get \"http://{authority}{path}\": {e}"))?;
    let uri = format!(
        "{}://{authority}{path}",
        if https { "https" } else { "http" }
    );
    let mut req = hyper::Request::get(path).header(hyper::header::HOST, &authority);
    req = req.header(hyper::header::USER_AGENT, "kube-probe/1.33");
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let status = if https {
        // The kubelet does not verify probe certificates either.
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(AnyCertificate))
        .with_no_client_auth();
        let name =
            rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("Get \"{uri}\": {e}"))?;
        send(hyper_util::rt::TokioIo::new(tls), req).await
    } else {
        send(hyper_util::rt::TokioIo::new(tcp), req).await
    }
    .map_err(|e| format!("Get \"{uri}\": {e}"))?;
    if (200..400).contains(&status) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {status}"))
    }
}

async fn send<T>(
    io: hyper_util::rt::TokioIo<T>,
    req: hyper::Request<http_body_util::Empty<bytes::Bytes>>,
) -> Result<u16, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    Ok(resp.status().as_u16())
}

/// Accepts any server certificate (probes, as the kubelet's, do not verify).
#[derive(Debug)]
struct AnyCertificate;

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The gRPC health protocol's `Check` (grpc.health.v1): a unary call over HTTP/2 whose
/// request is `HealthCheckRequest{service}` and whose answer must say SERVING (1).
async fn grpc_check(host: &str, port: u16, service: &str) -> Result<(), String> {
    use http_body_util::BodyExt;
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("failed to connect service \"{host}:{port}\" within 1s: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    // HealthCheckRequest: field 1 (service), a string.
    let mut msg = Vec::new();
    if !service.is_empty() {
        msg.push(0x0a);
        msg.push(service.len() as u8);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut body = vec![0u8];
    body.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    body.extend_from_slice(&msg);
    let req = hyper::Request::post(format!("http://{host}:{port}/grpc.health.v1.Health/Check"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let collected = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    let grpc_status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("0")
        .to_string();
    if grpc_status != "0" {
        return Err(format!("rpc error: code = {grpc_status}"));
    }
    let data = collected.to_bytes();
    // HealthCheckResponse: field 1 (status), a varint; SERVING is 1.
    let serving = data.len() >= 7 && data[5] == 0x08 && data[6] == 1;
    if serving {
        Ok(())
    } else {
        Err("service unhealthy (responded with \"NOT_SERVING\")".into())
    }
}

/// Which of a container's probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    Startup,
    Liveness,
    Readiness,
}

impl ProbeKind {
    pub fn name(self) -> &'static str {
        match self {
            ProbeKind::Startup => "Startup",
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
        }
    }

    pub fn of(self, c: &Container) -> Option<&Probe> {
        match self {
            ProbeKind::Startup => c.startup_probe.as_ref(),
            ProbeKind::Liveness => c.liveness_probe.as_ref(),
            ProbeKind::Readiness => c.readiness_probe.as_ref(),
        }
    }
}

/// A probe's results over time: the thresholds say when a run of them counts.
#[derive(Debug)]
pub struct Prober {
    pub timing: Timing,
    successes: u32,
    failures: u32,
}

/// What a change of a probe's verdict means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The probe passes now (it reached its success threshold).
    Passed,
    /// It fails now (it reached its failure threshold), with the last reason.
    Failed(String),
    Unchanged,
}

impl Prober {
    pub fn new(timing: Timing) -> Prober {
        Prober {
            timing,
            successes: 0,
            failures: 0,
        }
    }

    pub fn record(&mut self, outcome: Outcome) -> Verdict {
        match outcome {
            Outcome::Success => {
                self.failures = 0;
                self.successes += 1;
                if self.successes == self.timing.success_threshold {
                    Verdict::Passed
                } else {
                    Verdict::Unchanged
                }
            }
            Outcome::Failure(why) => {
                self.successes = 0;
                self.failures += 1;
                if self.failures == self.timing.failure_threshold {
                    Verdict::Failed(why)
                } else {
                    Verdict::Unchanged
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_decide() {
        let p = Probe {
            success_threshold: Some(2),
            failure_threshold: Some(2),
            ..Default::default()
        };
        let mut pr = Prober::new(Timing::of(&p));
        assert_eq!(pr.timing.period, Duration::from_secs(10));
        assert_eq!(pr.record(Outcome::Success), Verdict::Unchanged);
        assert_eq!(pr.record(Outcome::Success), Verdict::Passed);
        assert_eq!(pr.record(Outcome::Success), Verdict::Unchanged);
        assert_eq!(pr.record(Outcome::Failure("x".into())), Verdict::Unchanged);
        assert_eq!(
            pr.record(Outcome::Failure("y".into())),
            Verdict::Failed("y".into())
        );
    }

    #[test]
    fn named_ports_resolve() {
        let c = Container {
            name: "web".into(),
            ports: Some(vec![k8s_openapi::api::core::v1::ContainerPort {
                name: Some("http".into()),
                container_port: 8080,
                ..Default::default()
            }]),
            ..Default::default()
        };
        let ports = NamedPorts::of(&c);
        assert_eq!(ports.resolve(&IntOrString::String("http".into())), Ok(8080));
        assert_eq!(ports.resolve(&IntOrString::Int(9)), Ok(9));
        assert_eq!(
            ports.resolve(&IntOrString::String("nope".into())),
            Err("couldn't find port: nope in web".into())
        );
    }
}
