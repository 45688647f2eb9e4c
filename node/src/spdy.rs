//! SPDY/3.1, the multiplexing protocol of Kubernetes' older streaming (and of
//! `kubectl port-forward`, which tunnels it through a websocket): frames, header blocks
//! compressed with zlib and the SPDY dictionary (one stream of compression per direction
//! and connection), and a server session that hands each stream the client opens to a
//! handler. Flow control is not enforced on sending (as the Go implementation Kubernetes
//! uses); received data is acknowledged with WINDOW_UPDATEs.

use std::collections::HashMap;
use std::sync::OnceLock;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

const VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const WINDOW_UPDATE: u16 = 9;
const FLAG_FIN: u8 = 1;
/// Frames larger than this are refused (a header block, or data, of a broken peer).
const MAX_FRAME: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    #[error("SPDY: {0}")]
    Protocol(String),
    #[error("SPDY: {0}")]
    Io(#[from] std::io::Error),
}

/// The SPDY/3 header dictionary (draft-mbelshe-httpbis-spdy-00, 2.6.10.1): length-prefixed
/// header names and values, then common text.
fn dictionary() -> &'static [u8] {
    static DICT: OnceLock<Vec<u8>> = OnceLock::new();
    DICT.get_or_init(|| {
        const WORDS: &[&str] = &[
            "options", "head", "post", "put", "delete", "trace", "accept", "accept-charset",
            "accept-encoding", "accept-language", "accept-ranges", "age", "allow",
            "authorization", "cache-control", "connection", "content-base", "content-encoding",
            "content-language", "content-length", "content-location", "content-md5",
            "content-range", "content-type", "date", "etag", "expect", "expires", "from", "host",
            "if-match", "if-modified-since", "if-none-match", "if-range", "if-unmodified-since",
            "last-modified", "location", "max-forwards", "pragma", "proxy-authenticate",
            "proxy-authorization", "range", "referer", "retry-after", "server", "te", "trailer",
            "transfer-encoding", "upgrade", "user-agent", "vary", "via", "warning",
            "www-authenticate", "method", "get", "status", "200 OK", "version", "HTTP/1.1", "url",
            "public", "set-cookie", "keep-alive", "origin",
        ];
        const TAIL: &str = "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.";
        let mut d = Vec::new();
        for w in WORDS {
            d.extend_from_slice(&(w.len() as u32).to_be_bytes());
            d.extend_from_slice(w.as_bytes());
        }
        d.extend_from_slice(TAIL.as_bytes());
        d
    })
}

/// Header names and values (lower-case names, as SPDY carries them).
pub type Headers = Vec<(String, String)>;

pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[derive(Debug, PartialEq)]
pub enum Frame {
    Data {
        stream: u32,
        fin: bool,
        data: Bytes,
    },
    SynStream {
        stream: u32,
        fin: bool,
        headers: Headers,
    },
    SynReply {
        stream: u32,
        fin: bool,
        headers: Headers,
    },
    RstStream {
        stream: u32,
        status: u32,
    },
    Ping(u32),
    GoAway,
    WindowUpdate {
        stream: u32,
        delta: u32,
    },
    /// Anything else (SETTINGS, HEADERS, ...): read and ignored.
    Other,
}

/// One direction's header compression (SPDY compresses every header block of a
/// connection as one zlib stream).
pub struct Codec {
    inflate: flate2::Decompress,
    deflate: flate2::Compress,
    /// Whether the dictionary has been given to each side yet.
    inflate_primed: bool,
}

impl Default for Codec {
    fn default() -> Self {
        let mut deflate = flate2::Compress::new(flate2::Compression::default(), true);
        deflate
            .set_dictionary(dictionary())
            .expect("the dictionary applies to a fresh stream");
        Codec {
            inflate: flate2::Decompress::new(true),
            deflate,
            inflate_primed: false,
        }
    }
}

impl Codec {
    fn inflate(&mut self, input: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let err = |e: &dyn std::fmt::Display| SpdyError::Protocol(format!("header block: {e}"));
        let mut out = Vec::with_capacity(input.len() * 4 + 64);
        let mut pos = 0;
        loop {
            let before_in = self.inflate.total_in();
            let res =
                self.inflate
                    .decompress_vec(&input[pos..], &mut out, flate2::FlushDecompress::Sync);
            pos += (self.inflate.total_in() - before_in) as usize;
            match res {
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() && !self.inflate_primed => {
                    self.inflate_primed = true;
                    self.inflate
                        .set_dictionary(dictionary())
                        .map_err(|e| err(&e))?;
                    continue;
                }
                Err(e) => return Err(err(&e)),
            }
            if pos >= input.len() && out.len() < out.capacity() {
                return Ok(out);
            }
            out.reserve(out.capacity().max(256));
        }
    }

    fn deflate(&mut self, input: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(input.len() + 64);
        let mut pos = 0;
        loop {
            let before_in = self.deflate.total_in();
            let _ = self
                .deflate
                .compress_vec(&input[pos..], &mut out, flate2::FlushCompress::Sync);
            pos += (self.deflate.total_in() - before_in) as usize;
            if pos >= input.len() && out.len() < out.capacity() {
                return out;
            }
            out.reserve(out.capacity().max(256));
        }
    }

    fn encode_headers(&mut self, headers: &Headers) -> Vec<u8> {
        let mut raw = Vec::new();
        raw.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (k, v) in headers {
            let k = k.to_ascii_lowercase();
            raw.extend_from_slice(&(k.len() as u32).to_be_bytes());
            raw.extend_from_slice(k.as_bytes());
            raw.extend_from_slice(&(v.len() as u32).to_be_bytes());
            raw.extend_from_slice(v.as_bytes());
        }
        self.deflate(&raw)
    }

    fn decode_headers(&mut self, block: &[u8]) -> Result<Headers, SpdyError> {
        let raw = self.inflate(block)?;
        let bad = || SpdyError::Protocol("malformed header block".into());
        let mut b = &raw[..];
        let take = |b: &mut &[u8]| -> Result<Vec<u8>, SpdyError> {
            if b.len() < 4 {
                return Err(bad());
            }
            let n = b.get_u32() as usize;
            if b.len() < n {
                return Err(bad());
            }
            let v = b[..n].to_vec();
            b.advance(n);
            Ok(v)
        };
        if b.len() < 4 {
            return Err(bad());
        }
        let count = b.get_u32();
        let mut out = Vec::new();
        for _ in 0..count {
            let k = String::from_utf8_lossy(&take(&mut b)?).into_owned();
            let v = String::from_utf8_lossy(&take(&mut b)?).into_owned();
            // A value may hold several, NUL-separated.
            for one in v.split('\0') {
                out.push((k.clone(), one.to_string()));
            }
        }
        Ok(out)
    }

    /// The next whole frame in `buf`, if it holds one.
    pub fn parse(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, SpdyError> {
        if buf.len() < 8 {
            return Ok(None);
        }
        let len = ((buf[5] as usize) << 16) | ((buf[6] as usize) << 8) | buf[7] as usize;
        if len > MAX_FRAME {
            return Err(SpdyError::Protocol(format!("a frame of {len} bytes")));
        }
        if buf.len() < 8 + len {
            return Ok(None);
        }
        let mut head = buf.split_to(8);
        let body = buf.split_to(len).freeze();
        let control = head[0] & 0x80 != 0;
        let flags = head[4];
        let fin = flags & FLAG_FIN != 0;
        if !control {
            let stream = head.get_u32() & 0x7fff_ffff;
            return Ok(Some(Frame::Data {
                stream,
                fin,
                data: body,
            }));
        }
        let version = head.get_u16() & 0x7fff;
        let kind = head.get_u16();
        if version != VERSION {
            return Err(SpdyError::Protocol(format!("version {version}")));
        }
        let mut b = &body[..];
        let short = || SpdyError::Protocol(format!("a short control frame of type {kind}"));
        Ok(Some(match kind {
            SYN_STREAM => {
                if b.len() < 10 {
                    return Err(short());
                }
                let stream = b.get_u32() & 0x7fff_ffff;
                b.advance(6);
                Frame::SynStream {
                    stream,
                    fin,
                    headers: self.decode_headers(b)?,
                }
            }
            SYN_REPLY => {
                if b.len() < 4 {
                    return Err(short());
                }
                let stream = b.get_u32() & 0x7fff_ffff;
                Frame::SynReply {
                    stream,
                    fin,
                    headers: self.decode_headers(b)?,
                }
            }
            RST_STREAM if b.len() >= 8 => Frame::RstStream {
                stream: b.get_u32() & 0x7fff_ffff,
                status: b.get_u32(),
            },
            PING if b.len() >= 4 => Frame::Ping(b.get_u32()),
            GOAWAY => Frame::GoAway,
            WINDOW_UPDATE if b.len() >= 8 => Frame::WindowUpdate {
                stream: b.get_u32() & 0x7fff_ffff,
                delta: b.get_u32() & 0x7fff_ffff,
            },
            SETTINGS => Frame::Other,
            _ => Frame::Other,
        }))
    }

    fn control(kind: u16, flags: u8, body: &[u8]) -> Vec<u8> {
        let mut f = Vec::with_capacity(8 + body.len());
        f.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
        f.extend_from_slice(&kind.to_be_bytes());
        f.push(flags);
        f.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        f.extend_from_slice(body);
        f
    }

    pub fn encode(&mut self, frame: &Frame) -> Vec<u8> {
        let flag = |fin: bool| if fin { FLAG_FIN } else { 0 };
        match frame {
            Frame::Data { stream, fin, data } => {
                let mut f = Vec::with_capacity(8 + data.len());
                f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
                f.push(flag(*fin));
                f.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
                f.extend_from_slice(data);
                f
            }
            Frame::SynStream {
                stream,
                fin,
                headers,
            } => {
                let mut body = Vec::new();
                body.extend_from_slice(&stream.to_be_bytes());
                body.extend_from_slice(&0u32.to_be_bytes());
                body.extend_from_slice(&[0, 0]);
                body.extend_from_slice(&self.encode_headers(headers));
                Self::control(SYN_STREAM, flag(*fin), &body)
            }
            Frame::SynReply {
                stream,
                fin,
                headers,
            } => {
                let mut body = Vec::new();
                body.extend_from_slice(&stream.to_be_bytes());
                body.extend_from_slice(&self.encode_headers(headers));
                Self::control(SYN_REPLY, flag(*fin), &body)
            }
            Frame::RstStream { stream, status } => {
                let mut body = stream.to_be_bytes().to_vec();
                body.extend_from_slice(&status.to_be_bytes());
                Self::control(RST_STREAM, 0, &body)
            }
            Frame::Ping(id) => Self::control(PING, 0, &id.to_be_bytes()),
            Frame::GoAway => Self::control(GOAWAY, 0, &[0; 8]),
            Frame::WindowUpdate { stream, delta } => {
                let mut body = stream.to_be_bytes().to_vec();
                body.extend_from_slice(&delta.to_be_bytes());
                Self::control(WINDOW_UPDATE, 0, &body)
            }
            Frame::Other => Vec::new(),
        }
    }
}

/// A stream the client opened: its headers, its data as it arrives (ending when the client
/// half-closes it), and a way to send on it.
pub struct Stream {
    pub id: u32,
    pub headers: Headers,
    pub incoming: mpsc::Receiver<Bytes>,
    pub out: StreamWriter,
}

/// Sends on one stream of a session.
#[derive(Clone)]
pub struct StreamWriter {
    id: u32,
    frames: mpsc::Sender<Frame>,
}

impl StreamWriter {
    pub async fn send(&self, data: &[u8]) -> bool {
        for chunk in data.chunks(32 * 1024) {
            let f = Frame::Data {
                stream: self.id,
                fin: false,
                data: Bytes::copy_from_slice(chunk),
            };
            if self.frames.send(f).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Sends what `from` yields until it ends (or the session does), then half-closes.
    pub async fn copy_from(&self, mut from: impl tokio::io::AsyncRead + Unpin) {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if !self.send(&buf[..n]).await {
                        break;
                    }
                }
            }
        }
        self.finish().await;
    }

    /// Half-closes the stream (no more data from this side).
    pub async fn finish(&self) {
        let _ = self
            .frames
            .send(Frame::Data {
                stream: self.id,
                fin: true,
                data: Bytes::new(),
            })
            .await;
    }
}

/// Serves a SPDY session on `io` (the server side): every stream the client opens is
/// accepted (SYN_REPLY) and handed to `streams`; returns when the connection ends.
pub async fn serve<IO>(io: IO, streams: mpsc::Sender<Stream>) -> Result<(), SpdyError>
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let (frames_tx, mut frames_rx) = mpsc::channel::<Frame>(64);
    // One writer, one compression context for what this side sends.
    let writer = tokio::spawn(async move {
        let mut codec = Codec::default();
        while let Some(f) = frames_rx.recv().await {
            let bytes = codec.encode(&f);
            if wr.write_all(&bytes).await.is_err() {
                break;
            }
            if frames_rx.is_empty() && wr.flush().await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    let mut codec = Codec::default();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut open: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
    let result = loop {
        let frame = match codec.parse(&mut buf) {
            Ok(Some(f)) => f,
            Ok(None) => match rd.read_buf(&mut buf).await {
                Ok(0) => break Ok(()),
                Ok(_) => continue,
                Err(e) => break Err(e.into()),
            },
            Err(e) => break Err(e),
        };
        match frame {
            Frame::SynStream {
                stream,
                fin,
                headers,
            } => {
                let (tx, rx) = mpsc::channel(64);
                let _ = frames_tx
                    .send(Frame::SynReply {
                        stream,
                        fin: false,
                        headers: Vec::new(),
                    })
                    .await;
                if !fin {
                    open.insert(stream, tx);
                }
                let s = Stream {
                    id: stream,
                    headers,
                    incoming: rx,
                    out: StreamWriter {
                        id: stream,
                        frames: frames_tx.clone(),
                    },
                };
                if streams.send(s).await.is_err() {
                    break Ok(());
                }
            }
            Frame::Data { stream, fin, data } => {
                if !data.is_empty() {
                    // Acknowledge what arrived: the peer may count its window.
                    let _ = frames_tx
                        .send(Frame::WindowUpdate {
                            stream,
                            delta: data.len() as u32,
                        })
                        .await;
                    if let Some(tx) = open.get(&stream) {
                        let _ = tx.send(data).await;
                    }
                }
                if fin {
                    open.remove(&stream);
                }
            }
            Frame::RstStream { stream, .. } => {
                open.remove(&stream);
            }
            Frame::Ping(id) => {
                let _ = frames_tx.send(Frame::Ping(id)).await;
            }
            Frame::GoAway => break Ok(()),
            _ => {}
        }
    };
    drop(open);
    drop(frames_tx);
    let _ = writer.await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dictionary_is_the_specs() {
        // 1423 bytes, as the SPDY/3 draft's.
        assert_eq!(dictionary().len(), 1423);
        assert_eq!(&dictionary()[..11], b"\0\0\0\x07options");
        assert!(dictionary().ends_with(b",*,enq=0."));
    }

    #[test]
    fn frames_round_trip_with_stateful_header_compression() {
        let (mut client, mut server) = (Codec::default(), Codec::default());
        let frames = [
            Frame::SynStream {
                stream: 1,
                fin: false,
                headers: vec![
                    ("streamtype".into(), "data".into()),
                    ("port".into(), "8080".into()),
                ],
            },
            Frame::SynStream {
                stream: 3,
                fin: false,
                headers: vec![
                    ("streamtype".into(), "error".into()),
                    ("port".into(), "8080".into()),
                ],
            },
            Frame::Data {
                stream: 1,
                fin: true,
                data: Bytes::from_static(b"hello"),
            },
            Frame::Ping(7),
        ];
        let mut wire = BytesMut::new();
        for f in &frames {
            wire.extend_from_slice(&client.encode(f));
        }
        // Delivered in small pieces, as a network would.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for piece in wire.chunks(5) {
            buf.extend_from_slice(piece);
            while let Some(f) = server.parse(&mut buf).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, frames);
    }
}
