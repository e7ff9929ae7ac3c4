//! The downstream request body as it is streamed upstream: never buffered,
//! capped at `max_request_body_bytes` (413) and guarded by
//! `body_read_timeout` (408) while it streams. On routes that retry, a
//! copy of a small body (at most `MAX_REPLAY_BYTES`) is kept as it streams,
//! so a retry can send it again; on mirrored routes, a copy of at most
//! `mirror.max_body` goes to the shadow upstream once the body has ended.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

/// Why a request body stopped.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// More bytes than the limit.
    #[error("request body exceeds {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// No data for `body_read_timeout`.
    #[error("request body read timed out")]
    Timeout,
    /// The client connection failed.
    #[error("request body read failed: {0}")]
    Read(#[from] hyper::Error),
}

/// Largest request body kept for a retry.
pub(crate) const MAX_REPLAY_BYTES: usize = 64 << 10;

/// The copy of a request body kept for retries.
#[derive(Debug, Default)]
pub struct Replay {
    chunks: Vec<Bytes>,
    size: usize,
    complete: bool,
    overflow: bool,
}

impl Replay {
    /// A copy of a body with no bytes.
    pub fn empty() -> Self {
        Self {
            complete: true,
            ..Self::default()
        }
    }

    /// The body again, when it was read to its end and was small enough.
    pub fn body(&self) -> Option<RequestBody> {
        (self.complete && !self.overflow).then(|| RequestBody {
            chunks: self.chunks.iter().cloned().collect(),
            ..RequestBody::empty()
        })
    }

    fn push(&mut self, data: &Bytes) {
        if self.overflow {
            return;
        }
        if self.size + data.len() > MAX_REPLAY_BYTES {
            self.overflow = true;
            self.chunks = Vec::new();
            return;
        }
        self.size += data.len();
        self.chunks.push(data.clone());
    }
}

/// Why a mirror got no copy of the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoCopy {
    /// The body grew past the mirror's `max_body`.
    TooLarge,
}

/// What a mirror receives: the whole body, or why not. The sender is
/// dropped (the receiver sees an error) when the body ends early: the
/// client went away, the read failed, or the upstream stopped reading.
pub(crate) type MirrorCopy = tokio::sync::oneshot::Receiver<Result<Vec<Bytes>, NoCopy>>;

/// The copy of a request body kept for a mirror, handed over when the
/// body ends (never while it streams: a slow shadow cannot hold the live
/// request back).
pub(crate) struct MirrorTee {
    chunks: Vec<Bytes>,
    size: u64,
    limit: u64,
    tx: Option<tokio::sync::oneshot::Sender<Result<Vec<Bytes>, NoCopy>>>,
}

impl MirrorTee {
    /// A tee keeping at most `limit` bytes, and the mirror's end of it.
    pub(crate) fn new(limit: u64) -> (Self, MirrorCopy) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let tee = Self {
            chunks: Vec::new(),
            size: 0,
            limit,
            tx: Some(tx),
        };
        (tee, rx)
    }

    fn push(&mut self, data: &Bytes) {
        let Some(tx) = self.tx.take() else {
            return;
        };
        self.size += data.len() as u64;
        if self.size > self.limit {
            self.chunks = Vec::new();
            let _ = tx.send(Err(NoCopy::TooLarge));
            return;
        }
        self.chunks.push(data.clone());
        self.tx = Some(tx);
    }

    fn finish(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Ok(std::mem::take(&mut self.chunks)));
        }
    }
}

/// A streamed, limited request body.
pub struct RequestBody {
    inner: Option<Incoming>,
    /// Bytes to send before (or instead of) `inner`: a replayed body.
    chunks: VecDeque<Bytes>,
    /// Where a copy is kept for retries.
    tee: Option<Arc<Mutex<Replay>>>,
    /// Where a copy is kept for a mirror.
    mirror: Option<MirrorTee>,
    remaining: u64,
    limit: u64,
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    /// Bytes read so far, shared with whoever logs them.
    counter: Option<Arc<AtomicU64>>,
}

impl RequestBody {
    /// Wraps `inner`, allowing at most `limit` bytes with at most `timeout`
    /// between pieces.
    pub fn new(inner: Incoming, limit: u64, timeout: Duration) -> Self {
        Self {
            inner: Some(inner),
            chunks: VecDeque::new(),
            tee: None,
            mirror: None,
            remaining: limit,
            limit,
            timeout,
            sleep: None,
            counter: None,
        }
    }

    /// Keeps a copy of the body in `replay` as it streams.
    pub fn teed(mut self, replay: Arc<Mutex<Replay>>) -> Self {
        self.tee = Some(replay);
        self
    }

    /// Keeps a copy of the body for a mirror as it streams.
    pub(crate) fn mirrored(mut self, tee: MirrorTee) -> Self {
        self.mirror = Some(tee);
        self
    }

    /// A body of these bytes (a mirror's copy).
    pub(crate) fn from_chunks(chunks: Vec<Bytes>) -> Self {
        Self {
            chunks: chunks.into(),
            ..Self::empty()
        }
    }

    /// Counts the bytes read into `counter` as they stream.
    pub fn counted(mut self, counter: Arc<AtomicU64>) -> Self {
        self.counter = Some(counter);
        self
    }

    /// A body with no bytes.
    pub fn empty() -> Self {
        Self {
            inner: None,
            chunks: VecDeque::new(),
            tee: None,
            mirror: None,
            remaining: 0,
            limit: 0,
            timeout: Duration::ZERO,
            sleep: None,
            counter: None,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if let Some(chunk) = this.chunks.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > this.remaining {
                        this.inner = None;
                        this.mirror = None;
                        return Poll::Ready(Some(Err(BodyError::TooLarge { limit: this.limit })));
                    }
                    this.remaining -= n;
                    if let Some(c) = &this.counter {
                        c.fetch_add(n, Ordering::Relaxed);
                    }
                    if let Some(t) = &this.tee
                        && let Ok(mut t) = t.lock()
                    {
                        t.push(data);
                        // A sender that stops at Content-Length never polls
                        // the end: the body is complete when hyper says so.
                        t.complete = this.inner.as_ref().is_some_and(Body::is_end_stream);
                    }
                    if let Some(m) = this.mirror.as_mut() {
                        m.push(data);
                        if this.inner.as_ref().is_some_and(Body::is_end_stream) {
                            m.finish();
                        }
                    }
                }
                if let Some(s) = this.sleep.as_mut() {
                    s.as_mut().reset(Instant::now() + this.timeout);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.inner = None;
                this.mirror = None;
                Poll::Ready(Some(Err(BodyError::Read(e))))
            }
            Poll::Ready(None) => {
                this.inner = None;
                if let Some(m) = this.mirror.as_mut() {
                    m.finish();
                }
                if let Some(t) = &this.tee
                    && let Ok(mut t) = t.lock()
                {
                    t.complete = true;
                }
                Poll::Ready(None)
            }
            Poll::Pending => {
                let timeout = this.timeout;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                ready!(sleep.as_mut().poll(cx));
                this.inner = None;
                this.mirror = None;
                Poll::Ready(Some(Err(BodyError::Timeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty() && self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let queued: u64 = self.chunks.iter().map(|c| c.len() as u64).sum();
        match &self.inner {
            None => SizeHint::with_exact(queued),
            Some(inner) if queued == 0 => inner.size_hint(),
            Some(inner) => {
                let h = inner.size_hint();
                let mut out = SizeHint::new();
                out.set_lower(h.lower() + queued);
                if let Some(u) = h.upper() {
                    out.set_upper(u + queued);
                }
                out
            }
        }
    }
}

/// Finds a [`BodyError`] in an error's source chain (hyper wraps the body's
/// error when sending it upstream fails).
pub(crate) fn find_body_error<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a BodyError> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(b) = e.downcast_ref::<BodyError>() {
            return Some(b);
        }
        cur = e.source();
    }
    None
}
