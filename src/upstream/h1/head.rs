//! The response head of the HTTP/1.1 codec: parsing (httparse, values
//! shared with the read buffer), the RFC 9112 §6 framing decision, and
//! reading a head off the connection (interim responses skipped).

use std::io;

use bytes::BytesMut;
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, Version};

use super::body::{Body1, Chunk, Framing};
#[cfg(feature = "fuzzing")]
use super::body::{Step, step_chunked};
use super::{Conn, H1Error};

/// Most header fields in an upstream response head.
const MAX_RESPONSE_HEADERS: usize = 128;

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

/// Runs the head parser, the framing rules and the body decoders over
/// `data` fed `split` bytes at a time, as a connection would (fuzzing).
#[cfg(feature = "fuzzing")]
pub(crate) fn decode_for_fuzzing(data: &[u8], split: usize) {
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
                bytes::Buf::advance(&mut buf, n as usize);
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
