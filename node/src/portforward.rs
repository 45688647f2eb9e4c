//! `kubectl port-forward`: the client opens, per forwarded connection, a pair of SPDY
//! streams (`streamtype: data` and `error`, the same `port` and `requestid`); each data
//! stream is joined to a TCP connection to the port inside the pod's network namespace
//! (so a port bound to the pod's localhost is reached too), and a failure to connect is
//! written on its error stream. kubectl 1.31+ tunnels the SPDY session through a
//! websocket (`SPDY/3.1+portforward.k8s.io`); older clients upgrade to SPDY directly.

use std::collections::HashMap;
use std::path::PathBuf;

use axum::extract::ws::{Message, WebSocket};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::spdy::{self, Stream};

/// The websocket subprotocol of a tunnelled SPDY port-forward session.
pub const TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
/// The SPDY-level protocol (`X-Stream-Protocol-Version`).
pub const PROTOCOL: &str = "portforward.k8s.io";

/// Where the pod's ports are: inside its network namespace, or on the node's.
#[derive(Clone, Debug)]
pub enum PodNet {
    Namespace(PathBuf),
    Node,
}

/// Connects to `port` on the pod's own localhost: with a socket made inside its namespace
/// (a socket belongs to its creator's namespace).
async fn connect(net: &PodNet, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let socket = match net {
        PodNet::Node => tokio::net::TcpSocket::new_v4()?,
        PodNet::Namespace(path) => {
            crate::sandbox::netns::Netns::open(path)?.run(tokio::net::TcpSocket::new_v4)??
        }
    };
    socket
        .connect((std::net::Ipv4Addr::LOCALHOST, port).into())
        .await
}

/// Serves a port-forward session's streams as they come.
pub async fn serve_streams(
    mut streams: tokio::sync::mpsc::Receiver<Stream>,
    net: PodNet,
    pod: String,
) {
    // Error streams by request, for the data stream of the same request to report on.
    let mut errors: HashMap<String, spdy::StreamWriter> = HashMap::new();
    let mut pending: HashMap<String, Stream> = HashMap::new();
    while let Some(stream) = streams.recv().await {
        let kind = spdy::header(&stream.headers, "streamtype")
            .unwrap_or_default()
            .to_string();
        let request = spdy::header(&stream.headers, "requestid")
            .unwrap_or_default()
            .to_string();
        match kind.as_str() {
            "error" => {
                errors.insert(request.clone(), stream.out.clone());
                if let Some(data) = pending.remove(&request) {
                    let err = errors.remove(&request);
                    tokio::spawn(forward(data, err, net.clone(), pod.clone()));
                }
            }
            "data" => match errors.remove(&request) {
                Some(err) => {
                    tokio::spawn(forward(stream, Some(err), net.clone(), pod.clone()));
                }
                None => {
                    pending.insert(request, stream);
                }
            },
            _ => stream.out.finish().await,
        }
    }
}

/// Joins one data stream to a connection to its port.
async fn forward(mut data: Stream, error: Option<spdy::StreamWriter>, net: PodNet, pod: String) {
    let port: Option<u16> = spdy::header(&data.headers, "port").and_then(|p| p.parse().ok());
    let report = |msg: String| {
        let error = error.clone();
        async move {
            if let Some(e) = error {
                e.send(msg.as_bytes()).await;
                e.finish().await;
            }
        }
    };
    let Some(port) = port else {
        report("invalid port header".into()).await;
        data.out.finish().await;
        return;
    };
    let tcp = match connect(&net, port).await {
        Ok(t) => t,
        Err(e) => {
            report(format!("error forwarding port {port} to pod {pod}: failed to connect to localhost:{port} inside its network namespace: {e}")).await;
            data.out.finish().await;
            return;
        }
    };
    let (rd, mut wr) = tcp.into_split();
    let out = data.out.clone();
    let upstream = async move { out.copy_from(rd).await };
    let downstream = async move {
        while let Some(chunk) = data.incoming.recv().await {
            if wr.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    };
    tokio::join!(upstream, downstream);
    if let Some(e) = error {
        e.finish().await;
    }
}

/// A websocket as the byte stream it tunnels (binary messages carry SPDY's bytes).
pub fn tunnel(socket: WebSocket) -> tokio::io::DuplexStream {
    let (ours, theirs) = tokio::io::duplex(256 * 1024);
    let (mut rd, mut wr) = tokio::io::split(ours);
    let (mut sink, mut incoming) = socket.split();
    tokio::spawn(async move {
        while let Some(Ok(msg)) = incoming.next().await {
            match msg {
                Message::Binary(b) if wr.write_all(&b).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = wr.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink
                        .send(Message::Binary(buf[..n].to_vec().into()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        let _ = sink
            .send(Message::Close(Some(axum::extract::ws::CloseFrame {
                code: 1000,
                reason: "".into(),
            })))
            .await;
    });
    theirs
}

/// Runs a port-forward session over `io` (SPDY's bytes) until it ends.
pub async fn session<IO>(io: IO, net: PodNet, pod: String)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let streams = tokio::spawn(serve_streams(rx, net, pod));
    if let Err(e) = spdy::serve(io, tx).await {
        tracing::debug!(error = %e, "a port-forward session ended");
    }
    let _ = streams.await;
}
