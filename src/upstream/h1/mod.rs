//! HTTP/1.1 to upstreams, run inside the request's own task.
//!
//! hyper's client gives every connection a task of its own and hands each
//! request and response across channels, so a proxied request costs several
//! cross-task wake-ups. Like NGINX and Pingora, Tollgate instead drives the
//! upstream socket from the request's task: write the head, stream the
//! body, parse the response head (httparse, header values shared with the
//! read buffer, not copied), then decode the body framing as the downstream
//! side reads it. When the body ends cleanly the connection goes straight
//! back to the pool, with no task involved.
//!
//! Message framing follows RFC 9112 §6: a response to HEAD and every 1xx,
//! 204 and 304 has no body; otherwise `Transfer-Encoding` ending in
//! `chunked` wins over `Content-Length` (and then the connection is not
//! reused); a valid `Content-Length` counts the body; anything else runs to
//! the connection's close. Conflicting lengths, bad chunk sizes, oversized
//! heads and obs-fold are invalid responses (502). Response heads are
//! parsed in `head`, bodies decoded in `body`; the socket is
//! `crate::socket::Socket`.

use std::io::{self, IoSlice};
use std::pin::Pin;

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, HOST};
use http::{Method, Request, Response};
use http_body::Body;
use tokio::io::AsyncWriteExt;

use super::counter::Held;
use crate::body::RequestBody;
use crate::socket::Socket;

mod body;
mod error;
mod head;

pub(crate) use body::Body1;
pub(crate) use body::Recycle;
pub(crate) use error::H1Error;
#[cfg(feature = "fuzzing")]
pub(crate) use head::decode_for_fuzzing;
use head::read_response;

/// An idle or busy HTTP/1.1 connection to one endpoint.
pub struct Conn {
    stream: Socket,
    /// Bytes read but not yet consumed.
    buf: BytesMut,
    /// The request head being written (kept to reuse its allocation).
    head: Vec<u8>,
    /// Scratch list for parsing response heads (kept for the same reason).
    fields: Vec<(http::HeaderName, usize, usize)>,
    /// Counts the connection against the upstream's `max_connections`.
    _held: Option<Held>,
}

/// The request could not even be written on a reused connection: it is
/// handed back, untouched, to be sent on a fresh one.
pub(crate) struct NotSent(pub Box<Request<RequestBody>>);

impl Conn {
    /// Wraps a connected stream, counted by `held` while it lives.
    pub(crate) fn new(stream: Socket, held: Option<Held>) -> Self {
        Self {
            stream,
            buf: BytesMut::with_capacity(8 << 10),
            head: Vec::with_capacity(512),
            fields: Vec::new(),
            _held: held,
        }
    }

    /// False when the peer closed (or sent unexpected bytes on) the idle
    /// connection.
    pub fn is_reusable(&self) -> bool {
        self.buf.is_empty() && self.stream.is_quiet()
    }
}

/// Encodes the request head: origin-form target, the headers as given, and
/// the framing of the body as streamed.
fn encode_head(req: &Request<RequestBody>, authority: &str, chunked: bool, out: &mut Vec<u8>) {
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    out.clear();
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(pq.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !req.headers().contains_key(HOST) {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(authority.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in req.headers() {
        // Framing is ours to state (hop-by-hop fields were removed already).
        if chunked && name == CONTENT_LENGTH {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

async fn write_all_vectored(stream: &mut Socket, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    while !bufs.is_empty() {
        let n = stream.write_vectored(bufs).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}

/// Sends `req` on `conn` and reads the response head. `reused` marks a
/// pooled connection: if even the head cannot be written on it, the request
/// comes back as [`NotSent`] for a retry on a fresh connection.
pub(crate) async fn send(
    mut conn: Conn,
    mut req: Request<RequestBody>,
    authority: &str,
    reused: bool,
    max_head: usize,
) -> Result<(Response<Body1>, Conn), Result<H1Error, NotSent>> {
    let has_body = !req.body().is_end_stream();
    let chunked = has_body && !req.headers().contains_key(CONTENT_LENGTH);
    let mut head = std::mem::take(&mut conn.head);
    encode_head(&req, authority, chunked, &mut head);
    // Wait for the first piece of the body before writing anything: a body
    // that is bad from the start (malformed chunks, too large) then never
    // reaches the upstream, and a small body goes out with the head.
    let first = if has_body {
        next_data(req.body_mut()).await.map_err(Ok)?
    } else {
        None
    };
    let written = match &first {
        Some(data) if chunked => {
            let size = format!("{:x}\r\n", data.len());
            let mut parts = [
                IoSlice::new(&head),
                IoSlice::new(size.as_bytes()),
                IoSlice::new(data),
                IoSlice::new(b"\r\n"),
            ];
            write_all_vectored(&mut conn.stream, &mut parts).await
        }
        Some(data) => {
            write_all_vectored(
                &mut conn.stream,
                &mut [IoSlice::new(&head), IoSlice::new(data)],
            )
            .await
        }
        None => conn.stream.write_all(&head).await,
    };
    // TLS keeps what it could not write yet: out with it before reading.
    let written = match written {
        Ok(()) if !has_body => conn.stream.flush().await,
        w => w,
    };
    if let Err(e) = written {
        // Only a request without a body is still intact here (a first
        // body piece may have been read), so only it can be handed back.
        return Err(if reused && !has_body {
            Err(NotSent(Box::new(req)))
        } else {
            Ok(e.into())
        });
    }
    conn.head = head;
    if has_body {
        if first.is_some() {
            match stream_body(&mut conn.stream, req.body_mut(), chunked).await {
                Ok(()) => {}
                // The upstream may have answered early (a 413, say) and
                // stopped reading: its response, if one arrived, is the
                // answer. The connection is not reused either way.
                Err(H1Error::Io(write_err)) => {
                    let is_head = req.method() == Method::HEAD;
                    return match read_response(conn, is_head, max_head).await {
                        Ok((mut resp, conn)) => {
                            resp.body_mut().no_reuse();
                            Ok((resp, conn))
                        }
                        Err(_) => Err(Ok(H1Error::Io(write_err))),
                    };
                }
                Err(e) => return Err(Ok(e)),
            }
        } else {
            if chunked {
                conn.stream
                    .write_all(b"0\r\n\r\n")
                    .await
                    .map_err(|e| Ok(e.into()))?;
            }
            conn.stream.flush().await.map_err(|e| Ok(e.into()))?;
        }
    }
    let is_head = req.method() == Method::HEAD;
    match read_response(conn, is_head, max_head).await {
        Ok(r) => Ok(r),
        // The keep-alive race: the upstream closed the pooled connection as
        // the request went out, and answered nothing. A request without a
        // body whose method is idempotent (RFC 9110 §9.2.2) is safe to send
        // again on a fresh connection.
        Err(H1Error::Io(e))
            if reused
                && !has_body
                && req.method().is_idempotent()
                && matches!(
                    e.kind(),
                    io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
                ) =>
        {
            Err(Err(NotSent(Box::new(req))))
        }
        Err(e) => Err(Ok(e)),
    }
}

/// The next non-empty data frame of the body, or `None` at its end.
async fn next_data(body: &mut RequestBody) -> Result<Option<Bytes>, H1Error> {
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await {
        if let Ok(data) = frame?.into_data()
            && !data.is_empty()
        {
            return Ok(Some(data));
        }
    }
    Ok(None)
}

async fn stream_body(
    stream: &mut Socket,
    body: &mut RequestBody,
    chunked: bool,
) -> Result<(), H1Error> {
    while let Some(data) = next_data(body).await? {
        if chunked {
            let size = format!("{:x}\r\n", data.len());
            write_all_vectored(
                stream,
                &mut [
                    IoSlice::new(size.as_bytes()),
                    IoSlice::new(&data),
                    IoSlice::new(b"\r\n"),
                ],
            )
            .await?;
        } else {
            stream.write_all(&data).await?;
        }
    }
    if chunked {
        stream.write_all(b"0\r\n\r\n").await?;
    }
    stream.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn request_heads_state_their_framing() {
        let mut r = Request::new(RequestBody::empty());
        *r.uri_mut() = "/a?b=1".parse().unwrap();
        r.headers_mut().insert("x-a", HeaderValue::from_static("1"));
        assert_eq!(
            {
                let mut out = Vec::new();
                encode_head(&r, "up:80", false, &mut out);
                out
            },
            b"GET /a?b=1 HTTP/1.1\r\nhost: up:80\r\nx-a: 1\r\n\r\n"
        );
        r.headers_mut().insert(HOST, HeaderValue::from_static("h"));
        r.headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from_static("9"));
        let mut out = Vec::new();
        encode_head(&r, "up:80", true, &mut out);
        let chunked = String::from_utf8(out).unwrap();
        assert!(
            !chunked.contains("content-length")
                && chunked.ends_with("transfer-encoding: chunked\r\n\r\n"),
            "{chunked}"
        );
    }
}
