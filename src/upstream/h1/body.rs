//! The response body of the HTTP/1.1 codec: how it is delimited
//! (`Framing`), the chunked decoder, and the streamed body that returns
//! its connection to the pool on a clean end. The head is in `head.rs`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};

use super::{Conn, H1Error};
use crate::socket::Socket;

/// Longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;
/// Read size while streaming a response body.
const READ_CHUNK: usize = 16 << 10;

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    Empty,
    Length(u64),
    Chunked(Chunk),
    UntilClose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// Inside the trailer section.
    Trailers,
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
    pub(super) fn pending(framing: Framing, keep_alive: bool) -> Self {
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
    pub(crate) fn take_upgraded(&mut self) -> Option<(Socket, Bytes)> {
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

pub(super) enum Step {
    Data(Bytes, Chunk),
    Next(Chunk),
    Done,
    NeedMore,
}

/// One step of the chunked decoder over the buffered bytes.
pub(super) fn step_chunked(buf: &mut BytesMut, state: Chunk) -> Result<Step, H1Error> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
