//! The response body sent downstream, carrying the request's finish stage.
//!
//! `finish` (access log line, metrics, in-flight gauge) runs exactly once:
//! when the body ends or, if the client goes away first, when hyper drops
//! the body.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::conn::{ConnUpstream, StallClock};
use super::ctx::{End, Finish};
use crate::compression::{Compressor, Encoded};
use crate::upstream::{InflightGuard, UpstreamBody};

enum Kind {
    Full(Option<Bytes>),
    Upstream(UpstreamBody),
    /// An upstream body compressed as it streams.
    Encoded(Encoded),
}

/// A gateway-made or upstream-streamed response body.
pub(crate) struct ResponseBody {
    kind: Kind,
    bytes: u64,
    finish: Option<Box<Finish>>,
    _inflight: Option<InflightGuard>,
    tee: Option<Tee>,
    /// h2: how long the client's flow control has held the last chunk.
    stall: Option<StallClock>,
    /// The client connection's share of the upstream, held to the end.
    _conn_share: Option<ConnUpstream>,
}

/// A copy of the body kept for the cache; handed to `sink` when the body
/// ends complete within `max` bytes, `None` when it grows past `max` or
/// carries trailers, dropped unheard when the transfer breaks off.
struct Tee {
    chunks: Vec<Bytes>,
    size: usize,
    max: usize,
    sink: Box<dyn FnOnce(Option<Bytes>) + Send>,
}

impl ResponseBody {
    /// A body held in memory.
    pub(crate) fn full(b: Bytes) -> Self {
        Self {
            kind: Kind::Full(Some(b).filter(|b| !b.is_empty())),
            bytes: 0,
            finish: None,
            _inflight: None,
            tee: None,
            stall: None,
            _conn_share: None,
        }
    }

    /// An upstream body, streamed; `inflight` is released when it ends.
    pub(crate) fn upstream(b: UpstreamBody, inflight: Option<InflightGuard>) -> Self {
        Self {
            kind: Kind::Upstream(b),
            bytes: 0,
            finish: None,
            _inflight: inflight,
            tee: None,
            stall: None,
            _conn_share: None,
        }
    }

    /// Compresses an upstream body as it streams (a body held in memory,
    /// or one already compressed, is left as it is).
    pub(crate) fn compressed(mut self, z: Compressor) -> Self {
        if let Kind::Upstream(b) = std::mem::replace(&mut self.kind, Kind::Full(None)) {
            self.kind = Kind::Encoded(Encoded::new(b, z));
        }
        self
    }

    /// Copies the body (up to `max` bytes) and hands it to `sink` once it
    /// has ended complete.
    pub(crate) fn tee(mut self, max: usize, sink: Box<dyn FnOnce(Option<Bytes>) + Send>) -> Self {
        self.tee = Some(Tee {
            chunks: Vec::new(),
            size: 0,
            max,
            sink,
        });
        self
    }

    /// Attaches the finish stage.
    pub(crate) fn with_finish(mut self, f: Box<Finish>) -> Self {
        self.finish = Some(f);
        self
    }

    /// Keeps the client connection's hold on an upstream slot until the
    /// body ends.
    pub(crate) fn holding(mut self, share: Option<ConnUpstream>) -> Self {
        self._conn_share = share;
        self
    }

    /// Times the client's flow control on an h2 stream.
    pub(crate) fn with_stall_clock(mut self, clock: Option<StallClock>) -> Self {
        self.stall = clock;
        self
    }

    /// Hands the complete copy to the cache.
    fn store_copy(&mut self) {
        if let Some(t) = self.tee.take() {
            let body = if t.chunks.len() == 1 {
                t.chunks.into_iter().next().unwrap_or_default()
            } else {
                t.chunks.concat().into()
            };
            (t.sink)(Some(body));
        }
    }

    /// The copy cannot be stored (too large, or trailers): the sink hears
    /// so at once. (Dropped unheard, when the transfer breaks off.)
    fn drop_copy(&mut self) {
        if let Some(t) = self.tee.take() {
            (t.sink)(None);
        }
    }

    fn done(&mut self, end: End) {
        if let Some(f) = self.finish.take() {
            f.run(self.bytes, end);
        }
        self._inflight = None;
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        let complete = match &self.kind {
            Kind::Full(rest) => rest.is_none(),
            Kind::Upstream(b) => b.is_end_stream(),
            Kind::Encoded(b) => b.is_end_stream(),
        };
        if complete {
            self.store_copy();
        }
        self.done(if complete {
            End::Complete
        } else {
            End::ClientGone
        });
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Some(c) = &this.stall {
            c.polled();
        }
        let polled = match &mut this.kind {
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream(b) => Pin::new(b).poll_frame(cx),
            Kind::Encoded(b) => Pin::new(b).poll_frame(cx),
        };
        match &polled {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    if let Some(c) = &this.stall
                        && !d.is_empty()
                    {
                        c.handed_over();
                    }
                    this.bytes += d.len() as u64;
                    let too_large = match &mut this.tee {
                        Some(t) if t.size + d.len() > t.max => true,
                        Some(t) => {
                            t.size += d.len();
                            t.chunks.push(d.clone());
                            false
                        }
                        None => false,
                    };
                    if too_large {
                        this.drop_copy();
                    }
                    // hyper stops polling a body that says it has ended.
                    if this.is_end_stream() {
                        this.store_copy();
                    }
                } else {
                    // Trailers are not stored: neither is the response.
                    this.drop_copy();
                    // A gRPC call's status comes in its trailers.
                    if let (Some(t), Some(finish)) = (f.trailers_ref(), &mut this.finish) {
                        finish.saw_grpc_status(t);
                    }
                }
            }
            Poll::Ready(None) => {
                this.store_copy();
                this.done(End::Complete);
            }
            Poll::Ready(Some(Err(_))) => this.done(End::UpstreamFailed),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.is_none(),
            Kind::Upstream(b) => b.is_end_stream(),
            Kind::Encoded(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Upstream(b) => b.size_hint(),
            Kind::Encoded(b) => b.size_hint(),
        }
    }
}
