//! The response side of the HTTP/1.1 codec: head parsing, RFC 9112
//! framing, and the streamed body that returns its connection to the pool.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};

use super::{Conn, H1Error, Stream};

/// Most header fields in an upstream response head.
const MAX_RESPONSE_HEADERS: usize = 128;
/// Longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;
/// Read size while streaming a response body.
const READ_CHUNK: usize = 16 << 10;

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked(Chunk),
    UntilClose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// Inside the trailer section.
    Trailers,
}

/// The parsed head: status, version, headers, and where the head ends.
struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    /// The framing fields, read while the head was parsed.
    facts: Facts,
}

/// What the framing decision needs, gathered in the same pass that builds
/// the header map (so no field is looked up again).
#[derive(Debug, Default)]
struct Facts {
    /// A `Connection: close` token was seen.
    close: bool,
    /// `Transfer-Encoding` was present; whether its final coding is chunked.
    te_chunked: Option<bool>,
    /// `Content-Length`: absent, the agreed value, or why it is invalid.
    length: Option<Result<u64, &'static str>>,
}

impl Facts {
    fn see(&mut self, name: &HeaderName, value: &HeaderValue) {
        if name == CONTENT_LENGTH {
            self.content_length(value);
        } else if name == TRANSFER_ENCODING {
            let last = value
                .to_str()
                .ok()
                .and_then(|v| v.rsplit(',').next())
                .map(str::trim);
            self.te_chunked = Some(last.is_some_and(|c| c.eq_ignore_ascii_case("chunked")));
        } else if name == CONNECTION
            && value
                .to_str()
                .is_ok_and(|t| t.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
        {
            self.close = true;
        }
    }

    fn content_length(&mut self, value: &HeaderValue) {
        if matches!(self.length, Some(Err(_))) {
            return;
        }
        let Ok(text) = value.to_str() else {
            self.length = Some(Err("bad content-length"));
            return;
        };
        for part in text.split(',') {
            let Ok(n) = part.trim().parse::<u64>() else {
                self.length = Some(Err("bad content-length"));
                return;
            };
            if let Some(Ok(prev)) = self.length
                && prev != n
            {
                self.length = Some(Err("conflicting content-length"));
                return;
            }
            self.length = Some(Ok(n));
        }
    }
}

/// Parses a complete response head at the front of `buf`, or `None` when
/// more bytes are needed.
fn parse_head(
    buf: &mut BytesMut,
    fields: &mut Vec<(HeaderName, usize, usize)>,
) -> Result<Option<Head>, H1Error> {
    // Uninitialized slots: zeroing 128 of them costs more than the parse.
    let mut slots =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(H1Error::Invalid("too many header fields"));
        }
        Err(_) => return Err(H1Error::Invalid("malformed response head")),
    };
    let status = resp
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(H1Error::Invalid("bad status code"))?;
    let version = if resp.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // Names now, value offsets into the buffer (so the values can share
    // the frozen head once the borrow ends). `fields` is the connection's
    // scratch list, reused so no response allocates it.
    let base = buf.as_ptr() as usize;
    fields.clear();
    for h in resp.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| H1Error::Invalid("bad header name"))?;
        fields.push((name, h.value.as_ptr() as usize - base, h.value.len()));
    }
    let mut headers = HeaderMap::with_capacity(fields.len());
    let head = buf.split_to(len).freeze();
    let mut facts = Facts::default();
    for (name, at, n) in fields.drain(..) {
        let value = HeaderValue::from_maybe_shared(head.slice(at..at + n))
            .map_err(|_| H1Error::Invalid("bad header value"))?;
        facts.see(&name, &value);
        headers.append(name, value);
    }
    Ok(Some(Head {
        status,
        version,
        headers,
        facts,
    }))
}

/// RFC 9112 §6.3 for a response.
fn framing(head: &Head, is_head_request: bool) -> Result<(Framing, bool), H1Error> {
    let s = head.status.as_u16();
    let f = &head.facts;
    let mut keep_alive = head.version == Version::HTTP_11 && !f.close;
    if is_head_request || (100..200).contains(&s) || s == 204 || s == 304 {
        return Ok((Framing::Empty, keep_alive));
    }
    if let Some(chunked) = f.te_chunked {
        if f.length.is_some() {
            keep_alive = false;
        }
        return Ok(if chunked {
            (Framing::Chunked(Chunk::Size), keep_alive)
        } else {
            (Framing::UntilClose, false)
        });
    }
    Ok(match f.length {
        Some(Err(why)) => return Err(H1Error::Invalid(why)),
        Some(Ok(0)) => (Framing::Empty, keep_alive),
        Some(Ok(n)) => (Framing::Length(n), keep_alive),
        None => (Framing::UntilClose, false),
    })
}

pub(super) async fn read_response(
    mut conn: Conn,
    is_head_request: bool,
    max_head: usize,
) -> Result<(Response<Body1>, Conn), H1Error> {
    loop {
        if let Some(head) = parse_head(&mut conn.buf, &mut conn.fields)? {
            // Interim responses (100 Continue, 103 Early Hints) are dropped;
            // 101 ends HTTP on this connection and is returned as is.
            if head.status.is_informational() && head.status != StatusCode::SWITCHING_PROTOCOLS {
                continue;
            }
            let (framing, keep_alive) = framing(&head, is_head_request)?;
            let mut resp = Response::new(Body1::pending(framing, keep_alive));
            *resp.status_mut() = head.status;
            *resp.version_mut() = Version::HTTP_11;
            *resp.headers_mut() = head.headers;
            return Ok((resp, conn));
        }
        if conn.buf.len() > max_head {
            return Err(H1Error::Invalid("response head too large"));
        }
        conn.buf.reserve(4096);
        let n = tokio::io::AsyncReadExt::read_buf(&mut conn.stream, &mut conn.buf).await?;
        if n == 0 {
            return Err(if conn.buf.is_empty() {
                H1Error::Io(io::ErrorKind::UnexpectedEof.into())
            } else {
                H1Error::Invalid("connection closed inside the response head")
            });
        }
    }
}

/// Where a connection goes once a response body ended cleanly on it (the
/// endpoint's pool).
pub trait Recycle: Send + Sync {
    /// Takes back `conn`, ready for another request.
    fn recycle(&self, conn: Conn);
}

/// A response body read from an upstream connection as the downstream side
/// polls it. On a clean end the connection returns to its pool.
pub struct Body1 {
    conn: Option<Conn>,
    pool: Option<Arc<dyn Recycle>>,
    framing: Framing,
    keep_alive: bool,
}

impl Body1 {
    fn pending(framing: Framing, keep_alive: bool) -> Self {
        Self {
            conn: None,
            pool: None,
            framing,
            keep_alive,
        }
    }

    /// Gives the body its connection and the pool to return it to.
    pub fn attach(&mut self, conn: Conn, pool: Arc<dyn Recycle>) {
        self.conn = Some(conn);
        self.pool = Some(pool);
        if self.framing == Framing::Empty {
            self.finish();
        }
    }

    /// Closes the connection after this body instead of pooling it.
    pub fn no_reuse(&mut self) {
        self.keep_alive = false;
    }

    /// Keeps the connection of a 101 response for the tunnel; it never
    /// returns to the pool.
    pub fn hold(&mut self, conn: Conn) {
        self.conn = Some(conn);
        self.keep_alive = false;
    }

    /// Takes the connection out (for a 101 upgrade): the stream and any
    /// bytes already read past the head.
    pub fn take_upgraded(&mut self) -> Option<(Stream, Bytes)> {
        self.conn.take().map(|c| (c.stream, c.buf.freeze()))
    }

    fn finish(&mut self) {
        self.framing = Framing::Empty;
        if let (Some(conn), Some(pool)) = (self.conn.take(), self.pool.take())
            && self.keep_alive
            && conn.buf.is_empty()
        {
            pool.recycle(conn);
        }
    }

    /// Reads more bytes into the buffer; `Ok(false)` at end of stream.
    fn poll_fill(conn: &mut Conn, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        let n = ready!(conn.stream.poll_fill(cx, &mut conn.buf, READ_CHUNK))?;
        Poll::Ready(Ok(n > 0))
    }
}

impl Body for Body1 {
    type Data = Bytes;
    type Error = H1Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match this.framing {
                Framing::Empty => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Framing::Length(left) => {
                    if !conn.buf.is_empty() {
                        let n = conn
                            .buf
                            .len()
                            .min(usize::try_from(left).unwrap_or(usize::MAX));
                        let data = conn.buf.split_to(n).freeze();
                        let left = left - n as u64;
                        this.framing = Framing::Length(left);
                        if left == 0 {
                            this.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    if !ready!(Self::poll_fill(conn, cx))? {
                        this.conn = None;
                        return Poll::Ready(Some(Err(H1Error::Invalid(
                            "connection closed before the end of the body",
                        ))));
                    }
                }
                Framing::UntilClose => {
                    if !conn.buf.is_empty() {
                        let data = conn.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    if !ready!(Self::poll_fill(conn, cx))? {
                        this.conn = None;
                        this.framing = Framing::Empty;
                        return Poll::Ready(None);
                    }
                }
                Framing::Chunked(state) => match step_chunked(&mut conn.buf, state)? {
                    Step::Data(data, next) => {
                        this.framing = Framing::Chunked(next);
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Step::Next(next) => this.framing = Framing::Chunked(next),
                    Step::Done => {
                        this.finish();
                        return Poll::Ready(None);
                    }
                    Step::NeedMore => {
                        if !ready!(Self::poll_fill(conn, cx))? {
                            this.conn = None;
                            return Poll::Ready(Some(Err(H1Error::Invalid(
                                "connection closed inside a chunked body",
                            ))));
                        }
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Empty
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Empty => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

enum Step {
    Data(Bytes, Chunk),
    Next(Chunk),
    Done,
    NeedMore,
}

/// One step of the chunked decoder over the buffered bytes.
fn step_chunked(buf: &mut BytesMut, state: Chunk) -> Result<Step, H1Error> {
    match state {
        Chunk::Size => match httparse::parse_chunk_size(buf) {
            Ok(httparse::Status::Complete((used, size))) => {
                buf.advance(used);
                Ok(Step::Next(if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                }))
            }
            Ok(httparse::Status::Partial) if buf.len() <= MAX_CHUNK_LINE => Ok(Step::NeedMore),
            _ => Err(H1Error::Invalid("bad chunk size")),
        },
        Chunk::Data(left) => {
            if buf.is_empty() {
                return Ok(Step::NeedMore);
            }
            let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let data = buf.split_to(n).freeze();
            let left = left - n as u64;
            Ok(Step::Data(
                data,
                if left == 0 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left)
                },
            ))
        }
        Chunk::DataEnd => {
            if buf.len() < 2 {
                return Ok(Step::NeedMore);
            }
            if &buf[..2] != b"\r\n" {
                return Err(H1Error::Invalid("missing CRLF after chunk data"));
            }
            buf.advance(2);
            Ok(Step::Next(Chunk::Size))
        }
        // Trailer fields are dropped (they are hop-by-hop to us unless the
        // response declared them; forwarding trailers is not supported yet).
        Chunk::Trailers => match buf.windows(2).position(|w| w == b"\r\n") {
            Some(0) => {
                buf.advance(2);
                Ok(Step::Done)
            }
            Some(i) => {
                buf.advance(i + 2);
                Ok(Step::Next(Chunk::Trailers))
            }
            None if buf.len() <= MAX_CHUNK_LINE => Ok(Step::NeedMore),
            None => Err(H1Error::Invalid("trailer field too long")),
        },
    }
}

/// Runs the head parser, the framing rules and the body decoders over
/// `data` fed `split` bytes at a time, as a connection would (fuzzing).
#[cfg(feature = "fuzzing")]
pub fn decode_for_fuzzing(data: &[u8], split: usize) {
    let mut pieces = data.chunks(split.max(1));
    let mut buf = BytesMut::new();
    let mut fields = Vec::new();
    let mut feed = |buf: &mut BytesMut| match pieces.next() {
        Some(p) => {
            buf.extend_from_slice(p);
            true
        }
        None => false,
    };
    let head = loop {
        match parse_head(&mut buf, &mut fields) {
            Ok(Some(h))
                if h.status.is_informational() && h.status != StatusCode::SWITCHING_PROTOCOLS => {}
            Ok(Some(h)) => break h,
            Ok(None) if feed(&mut buf) => {}
            _ => return,
        }
    };
    let Ok((framing, _)) = framing(&head, false) else {
        return;
    };
    match framing {
        Framing::Chunked(mut state) => loop {
            match step_chunked(&mut buf, state) {
                Ok(Step::Data(_, next) | Step::Next(next)) => state = next,
                Ok(Step::NeedMore) if feed(&mut buf) => {}
                _ => return,
            }
        },
        Framing::Length(mut left) => {
            while left > 0 {
                let n = (buf.len() as u64).min(left);
                buf.advance(n as usize);
                left -= n;
                if left > 0 && !feed(&mut buf) {
                    return;
                }
            }
        }
        Framing::Empty | Framing::UntilClose => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Head {
        let mut b = BytesMut::from(text);
        parse_head(&mut b, &mut Vec::new()).unwrap().unwrap()
    }

    fn decode(wire: &[u8], feed: usize) -> Result<Vec<u8>, H1Error> {
        let mut buf = BytesMut::new();
        let mut state = Chunk::Size;
        let mut out = Vec::new();
        let mut rest = wire;
        loop {
            match step_chunked(&mut buf, state)? {
                Step::Data(d, next) => {
                    out.extend_from_slice(&d);
                    state = next;
                }
                Step::Next(next) => state = next,
                Step::Done => return Ok(out),
                Step::NeedMore => {
                    if rest.is_empty() {
                        return Err(H1Error::Invalid("eof"));
                    }
                    let n = feed.min(rest.len());
                    buf.extend_from_slice(&rest[..n]);
                    rest = &rest[n..];
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_in_any_split() {
        let wire = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n";
        for feed in [1, 2, 3, 7, 100] {
            assert_eq!(decode(wire, feed).unwrap(), b"hello world", "feed {feed}");
        }
    }

    #[test]
    fn bad_chunks_are_invalid() {
        assert!(decode(b"zz\r\nhello\r\n0\r\n\r\n", 100).is_err());
        assert!(decode(b"5\r\nhelloXX0\r\n\r\n", 100).is_err());
        assert!(decode(b"ffffffffffffffffff\r\n", 100).is_err());
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let f = |t: &str, head_req: bool| framing(&head(t), head_req).unwrap();
        assert_eq!(
            f("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", false),
            (Framing::Length(5), true)
        );
        assert_eq!(
            f("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", true),
            (Framing::Empty, true)
        );
        assert_eq!(
            f(
                "HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n",
                false
            ),
            (Framing::Empty, true)
        );
        assert_eq!(
            f("HTTP/1.1 304 Not Modified\r\n\r\n", false),
            (Framing::Empty, true)
        );
        assert_eq!(
            f(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                false
            ),
            (Framing::Chunked(Chunk::Size), true)
        );
        assert_eq!(
            f(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n",
                false
            ),
            (Framing::Chunked(Chunk::Size), false),
            "both: chunked wins, the connection is not reused"
        );
        assert_eq!(
            f("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n", false),
            (Framing::UntilClose, false)
        );
        assert_eq!(
            f("HTTP/1.1 200 OK\r\n\r\n", false),
            (Framing::UntilClose, false)
        );
        assert_eq!(
            f(
                "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\n",
                false
            ),
            (Framing::Length(1), false)
        );
        assert_eq!(
            f("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n", false),
            (Framing::Length(1), false)
        );
        assert_eq!(
            f("HTTP/1.1 200 OK\r\ncontent-length: 3, 3\r\n\r\n", false),
            (Framing::Length(3), true)
        );
        assert!(
            framing(
                &head("HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n"),
                false
            )
            .is_err()
        );
        assert!(
            framing(
                &head("HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n"),
                false
            )
            .is_err()
        );
    }

    #[test]
    fn heads_parse_once_complete_and_refuse_garbage() {
        let mut b = BytesMut::from("HTTP/1.1 200 OK\r\nx-a: 1\r\n");
        assert!(parse_head(&mut b, &mut Vec::new()).unwrap().is_none());
        b.extend_from_slice(b"\r\nbody");
        let h = parse_head(&mut b, &mut Vec::new()).unwrap().unwrap();
        assert_eq!(h.headers["x-a"], "1");
        assert_eq!(&b[..], b"body");
        assert!(parse_head(&mut BytesMut::from("garbage\r\n\r\n"), &mut Vec::new()).is_err());
        assert!(
            parse_head(
                &mut BytesMut::from("HTTP/1.1 200 OK\r\nx-a: b\r\n c\r\n\r\n"),
                &mut Vec::new(),
            )
            .is_err(),
            "obs-fold"
        );
    }
}
