//! Attaching to a runc container's main process (`kubectl attach`, `kubectl run -i`): the
//! container's shim serves a unix socket in its bundle; each client gets the container's
//! output from then on, and may write to its stdin (or terminal) and resize its terminal.
//! Frames both ways: a kind byte, a big-endian u32 length, the payload.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::runtime::{ExecProcess, RuntimeError};

/// The socket's name in the bundle.
pub const SOCKET: &str = "attach.sock";

// Shim to client.
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
// Client to shim.
const STDIN: u8 = 0;
const RESIZE: u8 = 3;
/// The client's stdin ended.
const CLOSE: u8 = 4;

const MAX_FRAME: usize = 1 << 20;
/// A client that takes longer than this to take output is dropped (it must not stall the
/// container, whose output also goes to its log).
const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// A socket path for `name` in the directory open as `dir` in process `pid`, short enough
/// for a socket address (108 bytes, less than many bundle paths).
pub fn socket_path(pid: u32, dir: &std::fs::File, name: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/fd/{}/{name}", dir.as_raw_fd()))
}

fn frame(kind: u8, data: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(5 + data.len());
    f.push(kind);
    f.extend_from_slice(&(data.len() as u32).to_be_bytes());
    f.extend_from_slice(data);
    f
}

/// The attached clients of a container (shim side).
#[derive(Default)]
pub struct Hub {
    clients: Mutex<Vec<UnixStream>>,
}

/// Which output stream bytes come from.
#[derive(Clone, Copy)]
pub enum Output {
    Stdout,
    Stderr,
}

impl Hub {
    /// Sends output to every client; drops those that fail or stall.
    pub fn send(&self, stream: Output, data: &[u8]) {
        let mut clients = self.clients.lock().expect("clients");
        if clients.is_empty() {
            return;
        }
        let kind = match stream {
            Output::Stdout => STDOUT,
            Output::Stderr => STDERR,
        };
        let f = frame(kind, data);
        clients.retain_mut(|c| c.write_all(&f).is_ok());
    }

    /// Ends every session (the container is gone).
    pub fn close(&self) {
        for c in self.clients.lock().expect("clients").drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Where clients' input goes (shim side): the write end of the container's stdin pipe or
/// its terminal's master; `once`: closed when the first session's stdin ends
/// (`stdinOnce`).
pub struct Input {
    sink: Mutex<Option<std::fs::File>>,
    once: bool,
    terminal: Option<OwnedFd>,
}

impl Input {
    pub fn new(sink: Option<OwnedFd>, once: bool, terminal: Option<OwnedFd>) -> Input {
        Input {
            sink: Mutex::new(sink.map(std::fs::File::from)),
            once,
            terminal,
        }
    }

    fn write(&self, data: &[u8]) {
        if let Some(s) = self.sink.lock().expect("sink").as_mut() {
            let _ = s.write_all(data);
        }
    }

    fn ended(&self) {
        if self.once {
            self.sink.lock().expect("sink").take();
        }
    }
}

/// Serves the attach socket until the process ends (threads: one accepting, one per
/// client reading its input).
pub fn serve(listener: UnixListener, hub: Arc<Hub>, input: Arc<Input>) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let _ = conn.set_write_timeout(Some(CLIENT_WRITE_TIMEOUT));
            if let Ok(out) = conn.try_clone() {
                hub.clients.lock().expect("clients").push(out);
            }
            let input = input.clone();
            std::thread::spawn(move || client_input(conn, &input));
        }
    });
}

/// A client's frames: stdin, resizes, the end of its stdin.
fn client_input(mut conn: UnixStream, input: &Input) {
    let mut sent_stdin = false;
    loop {
        let mut head = [0u8; 5];
        if conn.read_exact(&mut head).is_err() {
            break;
        }
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if len > MAX_FRAME {
            break;
        }
        let mut data = vec![0u8; len];
        if conn.read_exact(&mut data).is_err() {
            break;
        }
        match head[0] {
            STDIN => {
                sent_stdin = true;
                input.write(&data);
            }
            RESIZE if data.len() == 4 => {
                if let Some(t) = &input.terminal {
                    let cols = u16::from_be_bytes([data[0], data[1]]);
                    let rows = u16::from_be_bytes([data[2], data[3]]);
                    super::exec::set_size(t.as_raw_fd(), cols, rows);
                }
            }
            CLOSE => {
                input.ended();
                return;
            }
            _ => {}
        }
    }
    // A session that gave input and went counts as its stdin ending.
    if sent_stdin {
        input.ended();
    }
}

/// Receives the descriptor runc sends to a console socket (the container's terminal
/// master).
pub fn receive_fd(sock: &UnixStream) -> std::io::Result<OwnedFd> {
    // runc sends the terminal's name with it.
    let mut buf = [0u8; 4096];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // Safety: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) } as usize;
    let mut control = vec![0u8; space];
    // Safety: a zeroed msghdr is valid; its buffers are set below and outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // Safety: recvmsg into the buffers described by msg.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // Safety: msg was filled by recvmsg; the header is checked before its data is read.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null()
            || (*cmsg).cmsg_level != libc::SOL_SOCKET
            || (*cmsg).cmsg_type != libc::SCM_RIGHTS
        {
            return Err(std::io::Error::other("runc sent no terminal"));
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const libc::c_int);
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Aborts a session's tasks when the session goes.
struct Tasks(Vec<tokio::task::AbortHandle>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Attaches to the container whose bundle is `bundle` (agent side): its output from now
/// on, its stdin if `stdin`, one stream and resizes if `tty`. The session ends when the
/// container does (exit code 0, as the kubelet reports a finished attach).
pub async fn connect(bundle: &Path, stdin: bool, tty: bool) -> Result<ExecProcess, RuntimeError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fail = |e: std::io::Error| RuntimeError::Exec(format!("attaching: {e}"));
    let dir = std::fs::File::open(bundle).map_err(fail)?;
    let sock = tokio::net::UnixStream::connect(socket_path(std::process::id(), &dir, SOCKET))
        .await
        .map_err(fail)?;
    drop(dir);
    let (mut rd, mut wr) = sock.into_split();
    let (mut out_tx, out_rx) = tokio::io::duplex(1 << 16);
    let (mut err_tx, err_rx) = tokio::io::duplex(1 << 16);
    let reader = tokio::spawn(async move {
        loop {
            let mut head = [0u8; 5];
            if rd.read_exact(&mut head).await.is_err() {
                break;
            }
            let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            if len > MAX_FRAME {
                break;
            }
            let mut data = vec![0u8; len];
            if rd.read_exact(&mut data).await.is_err() {
                break;
            }
            let to = if head[0] == STDERR && !tty {
                &mut err_tx
            } else {
                &mut out_tx
            };
            if to.write_all(&data).await.is_err() {
                break;
            }
        }
    });
    let (in_tx, mut in_rx) = tokio::io::duplex(1 << 16);
    let (resize_tx, mut resize_rx) = tokio::sync::mpsc::unbounded_channel::<(u16, u16)>();
    let writer = tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        let mut open = stdin;
        loop {
            let f = tokio::select! {
                n = in_rx.read(&mut buf), if open => match n {
                    Ok(0) | Err(_) => {
                        open = false;
                        frame(CLOSE, &[])
                    }
                    Ok(n) => frame(STDIN, &buf[..n]),
                },
                Some((cols, rows)) = resize_rx.recv() => {
                    let mut size = cols.to_be_bytes().to_vec();
                    size.extend_from_slice(&rows.to_be_bytes());
                    frame(RESIZE, &size)
                }
                else => break,
            };
            if wr.write_all(&f).await.is_err() {
                break;
            }
        }
    });
    let tasks = Tasks(vec![reader.abort_handle(), writer.abort_handle()]);
    Ok(ExecProcess {
        stdin: stdin.then(|| Box::new(in_tx) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>),
        stdout: Box::new(out_rx),
        stderr: (!tty).then(|| Box::new(err_rx) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        resize: tty.then(|| {
            Box::new(move |cols, rows| {
                let _ = resize_tx.send((cols, rows));
            }) as Box<dyn Fn(u16, u16) + Send + Sync>
        }),
        exit: Box::pin(async move {
            let _ = reader.await;
            drop(tasks);
            0
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shim-side hub and input over a real socket, a client attached through `connect`:
    /// output reaches it by stream, its stdin reaches the container's pipe, and stdinOnce
    /// closes that pipe when the client's stdin ends.
    #[tokio::test]
    async fn clients_get_output_and_give_input() {
        let bundle = tempfile::tempdir().unwrap();
        let dir = std::fs::File::open(bundle.path()).unwrap();
        let listener = UnixListener::bind(socket_path(std::process::id(), &dir, SOCKET)).unwrap();
        let hub = Arc::new(Hub::default());
        let (stdin_r, stdin_w) = crate::runtime::oci::shim::pipe().unwrap();
        serve(
            listener,
            hub.clone(),
            Arc::new(Input::new(Some(stdin_w), true, None)),
        );
        let mut p = connect(bundle.path(), true, false).await.unwrap();
        // Output sent before the client is registered is not its: wait until it is.
        for _ in 0..100 {
            if !hub.clients.lock().unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        hub.send(Output::Stdout, b"out\n");
        hub.send(Output::Stderr, b"err\n");
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut line = [0u8; 4];
        p.stdout.read_exact(&mut line).await.unwrap();
        assert_eq!(&line, b"out\n");
        p.stderr
            .as_mut()
            .unwrap()
            .read_exact(&mut line)
            .await
            .unwrap();
        assert_eq!(&line, b"err\n");
        let mut stdin = p.stdin.take().unwrap();
        stdin.write_all(b"typed\n").await.unwrap();
        stdin.shutdown().await.unwrap();
        drop(stdin);
        // The container reads what was typed, then end of file (stdinOnce).
        let got = tokio::task::spawn_blocking(move || {
            let mut s = String::new();
            std::fs::File::from(stdin_r)
                .read_to_string(&mut s)
                .map(|_| s)
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(got, "typed\n");
        hub.close();
        assert_eq!(p.exit.await, 0);
    }
}
