//! Kubernetes' remote command protocol for `exec`: over a websocket (`v5.channel.k8s.io`,
//! and the older `v4.channel.k8s.io`), as kubectl 1.30+ and the official clients speak it
//! (binary messages whose first byte is the channel: 0 stdin, 1 stdout, 2 stderr, 3 the
//! final `Status`, 4 terminal resizes, 255 a stream's close in v5); and over SPDY
//! (`v4.channel.k8s.io`, kubectl's fallback and older clients' way): one stream per
//! channel, opened by the client with a `streamType` header.

use axum::extract::ws::{Message, WebSocket};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::runtime::ExecProcess;

/// The subprotocols served, most preferred first.
pub const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const STATUS: u8 = 3;
const RESIZE: u8 = 4;
/// v5: the client closed one of its streams (the next byte says which).
const CLOSE: u8 = 255;

/// How long output still pending after the process ended may take to arrive.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// The `Status` ending an exec: success, or kubelet's words for a non-zero exit.
pub fn exit_status(code: i32, argv: &[String]) -> serde_json::Value {
    if code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("command terminated with non-zero exit code: error executing command [{}], exit code {code}", argv.join(" ")),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}
    })
}

/// A `Status` for an exec that could not run at all.
pub fn failure(message: &str) -> serde_json::Value {
    json!({"metadata": {}, "status": "Failure", "message": message, "reason": "InternalError"})
}

/// A close with the normal status (1000): clients treat a close without one as an error.
fn normal_close() -> Message {
    Message::Close(Some(axum::extract::ws::CloseFrame {
        code: 1000,
        reason: "".into(),
    }))
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut m = Vec::with_capacity(data.len() + 1);
    m.push(channel);
    m.extend_from_slice(data);
    Message::Binary(m.into())
}

/// Sends a final status and closes (an exec that failed before its process started).
pub async fn fail(mut socket: WebSocket, message: &str) {
    let status = failure(message).to_string();
    let _ = socket.send(frame(STATUS, status.as_bytes())).await;
    let _ = socket.send(normal_close()).await;
}

/// Copies one output of the process to its channel until it ends.
async fn pump(
    mut from: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    channel: u8,
    out: tokio::sync::mpsc::Sender<Message>,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match from.read(&mut buf).await {
            // A terminal's master reads EIO once the process is gone: its end.
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if out.send(frame(channel, &buf[..n])).await.is_err() {
                    break;
                }
            }
        }
    }
}

/// Connects a running process to the websocket until it exits; ends with its `Status`.
pub async fn serve(socket: WebSocket, process: ExecProcess, argv: Vec<String>) {
    let (mut sink, mut incoming) = socket.split();
    let (out, mut queued) = tokio::sync::mpsc::channel::<Message>(16);
    let writer = tokio::spawn(async move {
        while let Some(m) = queued.recv().await {
            if sink.send(m).await.is_err() {
                return;
            }
        }
        let _ = sink.send(normal_close()).await;
    });
    let ExecProcess {
        stdin,
        stdout,
        stderr,
        resize,
        exit,
    } = process;
    let mut pumps = vec![tokio::spawn(pump(stdout, STDOUT, out.clone()))];
    if let Some(stderr) = stderr {
        pumps.push(tokio::spawn(pump(stderr, STDERR, out.clone())));
    }
    let input = tokio::spawn(async move {
        let mut stdin = stdin;
        while let Some(Ok(msg)) = incoming.next().await {
            let data = match msg {
                Message::Binary(b) => b,
                Message::Close(_) => break,
                _ => continue,
            };
            match data.first() {
                Some(&STDIN) => {
                    if let Some(s) = stdin.as_mut() {
                        if s.write_all(&data[1..]).await.is_err() || s.flush().await.is_err() {
                            stdin = None;
                        }
                    }
                }
                Some(&RESIZE) => {
                    let size: serde_json::Value =
                        serde_json::from_slice(&data[1..]).unwrap_or_default();
                    if let (Some(f), Some(w), Some(h)) = (
                        resize.as_ref(),
                        size["Width"].as_u64(),
                        size["Height"].as_u64(),
                    ) {
                        f(w as u16, h as u16);
                    }
                }
                // The client has no more input: the process reads its end.
                Some(&CLOSE) if data.get(1) == Some(&STDIN) => stdin = None,
                _ => {}
            }
        }
    });
    let code = exit.await;
    for p in pumps {
        let _ = tokio::time::timeout(DRAIN, p).await;
    }
    input.abort();
    let status = exit_status(code, &argv).to_string();
    let _ = out.send(frame(STATUS, status.as_bytes())).await;
    drop(out);
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_read_as_the_kubelets() {
        let argv = vec!["sh".to_string(), "-c".into(), "exit 3".into()];
        assert_eq!(
            exit_status(0, &argv),
            json!({"metadata": {}, "status": "Success"})
        );
        let failed = exit_status(3, &argv);
        assert_eq!(failed["reason"], "NonZeroExitCode");
        assert_eq!(failed["details"]["causes"][0]["message"], "3");
        assert_eq!(
            failed["message"],
            "command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3"
        );
    }
}

/// The SPDY flavour's protocol version.
pub const SPDY_PROTOCOL: &str = "v4.channel.k8s.io";

/// Which streams an exec over SPDY has (as its query asks).
#[derive(Clone, Copy, Debug)]
pub struct Wanted {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// How long the client has to open its streams.
const STREAMS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Serves an exec over a SPDY session on `io`: waits for the client's streams, starts the
/// process with `start`, relays its streams, and ends with its `Status` on the error
/// stream.
pub async fn serve_spdy<IO, F>(io: IO, wanted: Wanted, argv: Vec<String>, start: F)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    F: std::future::Future<Output = Result<ExecProcess, String>>,
{
    use crate::spdy;
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    let session = tokio::spawn(spdy::serve(io, tx));
    let mut streams: std::collections::HashMap<String, spdy::Stream> = Default::default();
    let needed = |streams: &std::collections::HashMap<String, spdy::Stream>| {
        let has = |k: &str| streams.contains_key(k);
        has("error")
            && (!wanted.stdout || has("stdout"))
            && (!wanted.stderr || wanted.tty || has("stderr"))
            && (!wanted.stdin || has("stdin"))
            && (!wanted.tty || has("resize"))
    };
    let gathered = tokio::time::timeout(STREAMS_TIMEOUT, async {
        while !needed(&streams) {
            let Some(s) = rx.recv().await else {
                return false;
            };
            let kind = spdy::header(&s.headers, "streamtype")
                .unwrap_or_default()
                .to_string();
            streams.insert(kind, s);
        }
        true
    })
    .await
    .unwrap_or(false);
    let Some(error) = streams.remove("error") else {
        session.abort();
        return;
    };
    let report = |status: serde_json::Value| {
        let out = error.out.clone();
        async move {
            out.send(status.to_string().as_bytes()).await;
            out.finish().await;
        }
    };
    if !gathered {
        report(failure(
            "timed out waiting for the client to open its streams",
        ))
        .await;
        let _ = session.await;
        return;
    }
    let process = match start.await {
        Ok(p) => p,
        Err(msg) => {
            report(failure(&msg)).await;
            for s in streams.values() {
                s.out.finish().await;
            }
            let _ = session.await;
            return;
        }
    };
    let ExecProcess {
        stdin,
        stdout,
        stderr,
        resize,
        exit,
    } = process;
    let relay = |from: Box<dyn tokio::io::AsyncRead + Send + Unpin>, to: spdy::StreamWriter| async move {
        to.copy_from(from).await
    };
    let mut pumps = Vec::new();
    if let Some(out) = streams.get("stdout") {
        pumps.push(tokio::spawn(relay(stdout, out.out.clone())));
    }
    if let (Some(err), Some(stderr)) = (streams.get("stderr"), stderr) {
        pumps.push(tokio::spawn(relay(stderr, err.out.clone())));
    }
    let mut inputs = Vec::new();
    if let (Some(mut s), Some(mut stdin)) = (streams.remove("stdin"), stdin) {
        inputs.push(tokio::spawn(async move {
            while let Some(chunk) = s.incoming.recv().await {
                if stdin.write_all(&chunk).await.is_err() || stdin.flush().await.is_err() {
                    break;
                }
            }
            // The client's stdin ended: so does the process's.
        }));
    }
    if let (Some(mut s), Some(resize)) = (streams.remove("resize"), resize) {
        inputs.push(tokio::spawn(async move {
            let mut pending = Vec::new();
            while let Some(chunk) = s.incoming.recv().await {
                pending.extend_from_slice(&chunk);
                // A sequence of JSON objects.
                let mut de =
                    serde_json::Deserializer::from_slice(&pending).into_iter::<serde_json::Value>();
                let mut used = 0;
                while let Some(Ok(size)) = de.next() {
                    used = de.byte_offset();
                    if let (Some(w), Some(h)) = (size["Width"].as_u64(), size["Height"].as_u64()) {
                        resize(w as u16, h as u16);
                    }
                }
                pending.drain(..used);
            }
        }));
    }
    let code = exit.await;
    for p in pumps {
        let _ = tokio::time::timeout(DRAIN, p).await;
    }
    for i in inputs {
        i.abort();
    }
    report(exit_status(code, &argv)).await;
    for s in streams.values() {
        s.out.finish().await;
    }
    let _ = session.await;
}
