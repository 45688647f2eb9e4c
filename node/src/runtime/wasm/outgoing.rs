//! A guest's outgoing wasi:http requests, sent from its pod's network: the host name is
//! resolved by the pod's resolver (never by the node's libc, whose lookups read the
//! node's files and run on the node's threads), the socket is made in the pod's network
//! namespace, and TLS checks the server's certificate against the name (webpki roots).
//! Then HTTP/1.1 with wasmtime-wasi-http's timeouts.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::http::uri::Scheme;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

use crate::dns::lookup::Resolver;
use crate::sandbox::netns::Netns;

/// wasmtime-wasi-http's default for each of its timeouts.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// Where a guest's requests go out: its pod's resolver and network namespace (none: the
/// node's network).
pub struct PodHttpHooks {
    pub resolver: Option<Arc<Resolver>>,
    pub netns: Option<Arc<Netns>>,
    /// On the node's network without asking for it: the node's own addresses are out of
    /// reach.
    pub guarded: bool,
}

type Sent = (
    hyper::http::Response<WasiBody>,
    Box<dyn std::future::Future<Output = Result<(), Error>> + Send>,
);

impl wasmtime_wasi_http::WasiHttpHooks for PodHttpHooks {
    fn send_request(
        &mut self,
        request: hyper::http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn std::future::Future<Output = Result<(), Error>> + Send>,
    ) -> Box<dyn std::future::Future<Output = Result<Sent, Error>> + Send> {
        drop(fut);
        let (resolver, netns, guarded) = (self.resolver.clone(), self.netns.clone(), self.guarded);
        Box::new(send(request, options, resolver, netns, guarded))
    }
}

/// The addresses of the request's host: an address as it is, a name through the pod's
/// resolver. Without one (a pod whose DNS could not be set up), names do not resolve.
async fn addresses(
    host: &str,
    port: u16,
    resolver: Option<&Resolver>,
) -> Result<Vec<SocketAddr>, Error> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let nxdomain = || Error::DnsError {
        rcode: Some("NXDOMAIN".into()),
        info_code: None,
    };
    let ips = resolver
        .ok_or_else(nxdomain)?
        .resolve(host)
        .await
        .map_err(|_| nxdomain())?;
    let mut addrs: Vec<SocketAddr> = ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect();
    // IPv4 first, as the pod's network has it for certain.
    addrs.sort_by_key(|a| a.is_ipv6());
    if addrs.is_empty() {
        return Err(nxdomain());
    }
    Ok(addrs)
}

/// A TCP connection to the first of `addrs` that answers, its socket made in `netns`.
async fn connect(
    addrs: &[SocketAddr],
    netns: Option<&Arc<Netns>>,
) -> Result<tokio::net::TcpStream, Error> {
    let mut last = None;
    for addr in addrs {
        let make = || {
            if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()
            } else {
                tokio::net::TcpSocket::new_v6()
            }
        };
        let socket = match netns {
            Some(ns) => ns.run(make).and_then(|s| s),
            None => make(),
        }
        .map_err(Error::Connect)?;
        match socket.connect(*addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.map_or(Error::ConnectionRefused, Error::Connect))
}

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// TLS over `tcp`, the certificate checked against `host`.
async fn tls(tcp: tokio::net::TcpStream, host: &str) -> Result<Box<dyn Stream>, Error> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.into(),
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::Tls(std::io::Error::other(e)))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
    )
    .map_err(Error::InvalidDnsNameError)?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(Error::Tls)?;
    Ok(Box::new(stream))
}

/// Sends `request`; with `guarded`, never to the node's own addresses (checked on the
/// addresses connected to, so a second lookup cannot answer otherwise).
async fn send(
    mut request: hyper::http::Request<WasiBody>,
    options: Option<RequestOptions>,
    resolver: Option<Arc<Resolver>>,
    netns: Option<Arc<Netns>>,
    guarded: bool,
) -> Result<Sent, Error> {
    use http_body_util::BodyExt;
    let timeout = |pick: fn(&RequestOptions) -> Option<Duration>| {
        options.as_ref().and_then(pick).unwrap_or(DEFAULT_TIMEOUT)
    };
    let connect_timeout = timeout(|o| o.connect_timeout);
    let first_byte_timeout = timeout(|o| o.first_byte_timeout);
    let between_bytes = timeout(|o| o.between_bytes_timeout).max(Duration::from_nanos(1));
    let uri = request.uri().clone();
    let authority = uri.authority().ok_or(Error::HttpRequestUriInvalid)?;
    let https = uri.scheme() == Some(&Scheme::HTTPS);
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let host = authority.host();
    let stream = tokio::time::timeout(connect_timeout, async {
        let addrs = addresses(host, port, resolver.as_deref()).await?;
        if guarded && addrs.iter().any(|a| !super::guard::reachable(a.ip())) {
            return Err(Error::DestinationIpProhibited);
        }
        let tcp = connect(&addrs, netns.as_ref()).await?;
        let _ = tcp.set_nodelay(true);
        if https {
            tls(tcp, host).await
        } else {
            Ok(Box::new(tcp) as Box<dyn Stream>)
        }
    })
    .await
    .map_err(|_| Error::ConnectionTimeout)??;
    let (mut sender, conn) = tokio::time::timeout(
        connect_timeout,
        hyper::client::conn::http1::Builder::new().handshake(hyper_util::rt::TokioIo::new(stream)),
    )
    .await
    .map_err(|_| Error::ConnectionTimeout)??;
    // The connection runs on its own (its socket is made: the namespace no longer
    // matters); the guest's side waits for it to end.
    let conn = tokio::spawn(conn);
    // Only the path goes on the request line (the host is in the `host` header).
    *request.uri_mut() = hyper::http::Uri::builder()
        .path_and_query(uri.path_and_query().map_or("/", |p| p.as_str()))
        .build()
        .map_err(|_| Error::HttpRequestUriInvalid)?;
    let response = tokio::time::timeout(first_byte_timeout, sender.send_request(request))
        .await
        .map_err(|_| Error::ConnectionReadTimeout)??;
    let response = response.map(|incoming| {
        Timed {
            incoming,
            between_bytes,
            deadline: Box::pin(tokio::time::sleep(between_bytes)),
        }
        .boxed_unsync()
    });
    let io = async move {
        match conn.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::from(e)),
            Err(_) => Err(Error::ConnectionTerminated),
        }
    };
    Ok((
        response,
        Box::new(io) as Box<dyn std::future::Future<Output = _> + Send>,
    ))
}

/// A response body whose frames must come within `between_bytes` of each other.
struct Timed {
    incoming: hyper::body::Incoming,
    between_bytes: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl http_body::Body for Timed {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Error>>> {
        match Pin::new(&mut self.incoming).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let next = tokio::time::Instant::now() + self.between_bytes;
                self.deadline.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Error::from(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match std::future::Future::poll(self.deadline.as_mut(), cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Error::ConnectionReadTimeout))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.incoming.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(uri: &str) -> hyper::http::Request<WasiBody> {
        use http_body_util::BodyExt;
        let body = http_body_util::Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed_unsync();
        hyper::http::Request::get(uri).body(body).unwrap()
    }

    /// Names never resolve through the node's libc (its /etc/hosts says `localhost` is
    /// 127.0.0.1): without the pod's resolver, a name is not found, whatever the scheme.
    #[tokio::test]
    async fn names_resolve_through_the_pods_resolver_only() {
        for uri in ["http://localhost:9/", "https://localhost:9/"] {
            match send(get(uri), None, None, None, false).await {
                Err(Error::DnsError { .. }) => {}
                Err(e) => panic!("{uri}: {e:?}"),
                Ok(_) => panic!("{uri}: answered"),
            }
        }
        // An address needs no resolver (nothing listens on port 9: refused).
        match send(get("http://127.0.0.1:9/"), None, None, None, false).await {
            Err(Error::Connect(e)) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused),
            Err(e) => panic!("{e:?}"),
            Ok(_) => panic!("answered"),
        }
    }
}
