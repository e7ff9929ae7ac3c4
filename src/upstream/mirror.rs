//! Request mirroring (shadow traffic), sent from stage 7: a copy of a
//! forwarded request goes to another upstream, fire-and-forget. The copy
//! runs in a task of its own, so it never delays or changes the client's
//! response; its response is read and discarded.
//!
//! What bounds it, so a slow or hanging shadow cannot take anything from
//! live traffic:
//! - its own bulkhead: at most `max_concurrent` copies in flight per
//!   route; a request over it is not copied (`overloaded`), never queued;
//! - `max_body`: a body that is (or grows) larger is not copied, and the
//!   copy is handed over only once the live body has ended;
//! - `timeout`: one deadline for waiting for the body, the shadow's answer
//!   and reading (at most `MAX_DRAIN_BYTES` of) its body;
//! - the shadow upstream's own limits, pool and circuit breakers.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, Version};
use http_body::SizeHint;
use http_body_util::BodyExt;
use prometheus::IntCounter;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{Upstream, UpstreamError};
use crate::body::{MirrorCopy, MirrorTee, NoCopy, RequestBody};
use crate::observability::metrics::metrics;

/// Marks a mirrored copy, so the shadow can tell it from live traffic.
static X_TOLLGATE_MIRROR: HeaderName = HeaderName::from_static("x-tollgate-mirror");

/// Most bytes of a shadow's response body read (so its connection can be
/// reused); a longer body is cut and its connection closed.
const MAX_DRAIN_BYTES: usize = 1 << 20;

/// The `result` label values of `tollgate_mirror_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MirrorResult {
    /// The shadow answered (any status below 500).
    Ok,
    /// The shadow answered 5xx, or the exchange failed.
    Error,
    /// The deadline passed.
    Timeout,
    /// The route's mirror bulkhead (or the shadow upstream's) was full:
    /// not copied.
    Overloaded,
    /// The body is larger than `max_body`: not copied.
    TooLarge,
    /// The live request's body did not end (the client went away, the
    /// upstream stopped reading): nothing sent.
    Incomplete,
}

const RESULTS: [(MirrorResult, &str); 6] = [
    (MirrorResult::Ok, "ok"),
    (MirrorResult::Error, "error"),
    (MirrorResult::Timeout, "timeout"),
    (MirrorResult::Overloaded, "overloaded"),
    (MirrorResult::TooLarge, "too_large"),
    (MirrorResult::Incomplete, "incomplete"),
];

/// A compiled `routes[i].mirror`.
pub struct Mirror {
    /// The shadow upstream.
    pub upstream: Arc<Upstream>,
    /// Share of requests copied, 0.0 to 1.0.
    share: f64,
    /// Largest body copied.
    pub max_body: u64,
    timeout: Duration,
    slots: Arc<Semaphore>,
    counters: [IntCounter; 6],
}

/// Settings of `Mirror::new`.
pub struct MirrorSettings {
    /// Percent of requests copied.
    pub percent: f64,
    /// Largest body copied.
    pub max_body: u64,
    /// Copies in flight at most.
    pub max_concurrent: usize,
    /// Deadline of one copy.
    pub timeout: Duration,
}

/// A request chosen for copying, holding its bulkhead slot.
pub(crate) struct Ticket {
    mirror: Arc<Mirror>,
    permit: OwnedSemaphorePermit,
}

/// Where the copy's body comes from.
pub(crate) enum CopyBody {
    /// No body.
    Empty,
    /// The live body's copy, when it ends.
    Tee(MirrorCopy),
}

impl Mirror {
    /// The mirror of route `route`; its counters exist at 0 from here.
    pub fn new(route: &str, upstream: Arc<Upstream>, s: MirrorSettings) -> Self {
        let family = &metrics().mirror_requests;
        Self {
            upstream,
            share: (s.percent / 100.0).clamp(0.0, 1.0),
            max_body: s.max_body,
            timeout: s.timeout,
            slots: Arc::new(Semaphore::new(s.max_concurrent)),
            counters: RESULTS.map(|(_, label)| family.with_label_values(&[route, label])),
        }
    }

    fn count(&self, r: MirrorResult) {
        if let Some(i) = RESULTS.iter().position(|(x, _)| *x == r)
            && let Some(c) = self.counters.get(i)
        {
            c.inc();
        }
    }

    /// Whether this request is copied: sampled by `percent`, a body
    /// (`body`: the request body's size hint, its declared length when it
    /// has one) within `max_body`, a free bulkhead slot. A request refused
    /// for size or capacity is counted here.
    pub(crate) fn admit(self: &Arc<Self>, body: &SizeHint) -> Option<Ticket> {
        if self.share < 1.0 && fastrand::f64() >= self.share {
            return None;
        }
        if body.lower() > self.max_body {
            self.count(MirrorResult::TooLarge);
            return None;
        }
        match Arc::clone(&self.slots).try_acquire_owned() {
            Ok(permit) => Some(Ticket {
                mirror: Arc::clone(self),
                permit,
            }),
            Err(_) => {
                self.count(MirrorResult::Overloaded);
                None
            }
        }
    }
}

impl Ticket {
    /// A tee for the live body, and the copy's end of it.
    pub(crate) fn tee(&self) -> (MirrorTee, CopyBody) {
        let (tee, rx) = MirrorTee::new(self.mirror.max_body);
        (tee, CopyBody::Tee(rx))
    }

    /// Sends the copy in a task of its own: nothing here waits for it.
    pub(crate) fn send(self, method: Method, uri: Uri, mut headers: HeaderMap, body: CopyBody) {
        headers.insert(&X_TOLLGATE_MIRROR, HeaderValue::from_static("1"));
        tokio::spawn(async move {
            let m = &self.mirror;
            let deadline = tokio::time::Instant::now() + m.timeout;
            let result =
                tokio::time::timeout_at(deadline, copy(m, method, uri, headers, body, deadline))
                    .await
                    .unwrap_or(MirrorResult::Timeout);
            m.count(result);
            drop(self.permit);
        });
    }
}

async fn copy(
    m: &Mirror,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: CopyBody,
    deadline: tokio::time::Instant,
) -> MirrorResult {
    let body = match body {
        CopyBody::Empty => RequestBody::empty(),
        CopyBody::Tee(rx) => match rx.await {
            Ok(Ok(chunks)) => RequestBody::from_chunks(chunks),
            Ok(Err(NoCopy::TooLarge)) => return MirrorResult::TooLarge,
            Err(_) => return MirrorResult::Incomplete,
        },
    };
    let mut req = Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    *req.version_mut() = Version::HTTP_11;
    let mut tried = 0;
    match m.upstream.send(req, None, deadline, &mut tried).await {
        Ok(sent) => {
            let failed = sent.response.status().is_server_error();
            let mut body = sent.response.into_body();
            let mut read = 0usize;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => {
                        read += f.data_ref().map_or(0, Bytes::len);
                        if read > MAX_DRAIN_BYTES {
                            break;
                        }
                    }
                    Err(_) => return MirrorResult::Error,
                }
            }
            if failed {
                MirrorResult::Error
            } else {
                MirrorResult::Ok
            }
        }
        Err(UpstreamError::Timeout { .. }) => MirrorResult::Timeout,
        Err(UpstreamError::Overloaded(_)) => MirrorResult::Overloaded,
        Err(_) => MirrorResult::Error,
    }
}
