//! The downstream request body as it is streamed upstream: never buffered,
//! capped at `max_request_body_bytes` (413) and guarded by
//! `body_read_timeout` (408) while it streams.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// A streamed, limited request body.
pub struct RequestBody {
    inner: Option<Incoming>,
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
            remaining: limit,
            limit,
            timeout,
            sleep: None,
            counter: None,
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
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > this.remaining {
                        this.inner = None;
                        return Poll::Ready(Some(Err(BodyError::TooLarge { limit: this.limit })));
                    }
                    this.remaining -= n;
                    if let Some(c) = &this.counter {
                        c.fetch_add(n, Ordering::Relaxed);
                    }
                }
                if let Some(s) = this.sleep.as_mut() {
                    s.as_mut().reset(Instant::now() + this.timeout);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.inner = None;
                Poll::Ready(Some(Err(BodyError::Read(e))))
            }
            Poll::Ready(None) => {
                this.inner = None;
                Poll::Ready(None)
            }
            Poll::Pending => {
                let timeout = this.timeout;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                ready!(sleep.as_mut().poll(cx));
                this.inner = None;
                Poll::Ready(Some(Err(BodyError::Timeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

/// Finds a [`BodyError`] in an error's source chain (hyper wraps the body's
/// error when sending it upstream fails).
pub fn find_body_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a BodyError> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(b) = e.downcast_ref::<BodyError>() {
            return Some(b);
        }
        cur = e.source();
    }
    None
}
