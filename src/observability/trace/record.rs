//! What a sampled request records on its way: its trace context, and a
//! child span per stage and upstream attempt. Built into spans when the
//! request finishes (`Tracer::finish`).

use std::borrow::Cow;
use std::time::{Instant, SystemTime};

use http::HeaderValue;
use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanId, SpanKind};

use super::context::{TraceContext, span_hex, traceparent};

/// What one sampled request recorded: its ids, and a span per stage and
/// upstream attempt.
pub struct Recording {
    pub(super) trace: TraceContext,
    pub(super) tracestate: Option<HeaderValue>,
    pub(super) start: Instant,
    pub(super) start_wall: SystemTime,
    pub(super) children: Vec<Child>,
}

/// A stage or upstream attempt.
pub(super) struct Child {
    pub(super) id: SpanId,
    pub(super) name: Cow<'static, str>,
    pub(super) kind: SpanKind,
    pub(super) start: Instant,
    pub(super) end: Instant,
    pub(super) attributes: Vec<KeyValue>,
    pub(super) failed: bool,
}

/// The server span's facts, known when the request finishes.
pub struct ServerSpan {
    /// `GET route`.
    pub name: String,
    /// HTTP semantic-convention attributes and Tollgate's.
    pub attributes: Vec<KeyValue>,
    /// 5xx: the span's status is Error.
    pub failed: bool,
    /// When the request ended.
    pub end: Instant,
}

impl Recording {
    /// A record for the request whose trace context this is, started at
    /// `start`.
    pub(crate) fn new(
        trace: TraceContext,
        tracestate: Option<HeaderValue>,
        start: Instant,
    ) -> Box<Self> {
        Box::new(Self {
            trace,
            tracestate,
            start,
            start_wall: SystemTime::now() - start.elapsed(),
            children: Vec::with_capacity(4),
        })
    }

    /// A stage that ran from `start` to now: `name`, its attributes, and
    /// the reason code it failed with.
    pub(crate) fn stage(
        &mut self,
        name: &'static str,
        start: Instant,
        mut attributes: Vec<KeyValue>,
        error: Option<&'static str>,
    ) {
        if let Some(code) = error {
            attributes.push(KeyValue::new("error.type", code));
        }
        self.children.push(Child {
            id: new_span_id(),
            name: Cow::Borrowed(name),
            kind: SpanKind::Internal,
            start,
            end: Instant::now(),
            attributes,
            failed: error.is_some(),
        });
    }

    /// Upstream attempt number `n` to `upstream` begins: its span, and
    /// the `traceparent` the attempt sends (the attempt's span is the
    /// upstream's parent).
    pub(crate) fn attempt_begins(&mut self, upstream: &str, n: u32) -> Option<HeaderValue> {
        let id = new_span_id();
        let now = Instant::now();
        self.children.push(Child {
            id,
            name: Cow::Owned(format!("upstream {upstream}")),
            kind: SpanKind::Client,
            start: now,
            end: now,
            attributes: vec![
                KeyValue::new("tollgate.upstream", upstream.to_owned()),
                KeyValue::new("tollgate.attempt", i64::from(n)),
            ],
            failed: false,
        });
        traceparent(
            &self.trace.trace_id,
            &span_hex(u64::from_be_bytes(id.to_bytes())),
            &self.trace.flags,
        )
    }

    /// The attempt begun last ended: at `endpoint` (`""`: none was
    /// tried), with a response status or the reason code it failed with.
    pub(crate) fn attempt_ends(&mut self, endpoint: &str, outcome: Result<u16, &'static str>) {
        let Some(c) = self
            .children
            .iter_mut()
            .rev()
            .find(|c| c.kind == SpanKind::Client)
        else {
            return;
        };
        c.end = Instant::now();
        if !endpoint.is_empty() {
            c.attributes
                .push(KeyValue::new("server.address", endpoint.to_owned()));
        }
        match outcome {
            Ok(status) => {
                c.attributes.push(KeyValue::new(
                    "http.response.status_code",
                    i64::from(status),
                ));
                c.failed = status >= 500;
            }
            Err(code) => {
                c.attributes.push(KeyValue::new("error.type", code));
                c.failed = true;
            }
        }
    }
}

fn new_span_id() -> SpanId {
    SpanId::from(fastrand::u64(1..))
}
