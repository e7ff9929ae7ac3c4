//! Distributed tracing: OpenTelemetry spans exported over OTLP.
//!
//! The request path only records, and only for a sampled request: when
//! each stage (authentication, rate limits, cache lookup, each upstream
//! attempt) started and ended, and a few facts about it. The finish stage
//! turns the record into spans (one server span, a child per stage and
//! attempt) and pushes them on a bounded queue: one short lock, no I/O, no
//! wake-up. One task per tracer takes batches off the queue on a timer (or
//! once a batch is full) and sends them with opentelemetry-otlp's exporter:
//! OTLP/gRPC over tonic, or OTLP/HTTP (protobuf) over the gateway's own
//! client. A full queue or a failed export drops spans and counts them in
//! `tollgate_trace_spans_dropped_total{reason}`; a request never waits for
//! the collector.
//!
//! Sampling is the SDK's `ParentBased(TraceIdRatioBased)`: a request that
//! continues a trace follows its parent's sampled flag; a new trace is
//! recorded when its id falls under `sample_ratio`.
//!
//! Modules: `context` (W3C `traceparent` / `tracestate`), `record` (what a
//! request records), `export` (the export task and the OTLP clients); the
//! tracer, its queue and the turning of records into spans are here.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderMap, Uri};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, Value};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use rustls::ClientConfig;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::config::spec::OtlpProtocol;
use crate::observability::metrics::metrics;

mod context;
mod export;
mod record;

pub(crate) use context::{TRACEPARENT, TraceContext};
pub use record::{Recording, ServerSpan};

/// The longest text attribute kept (path, user agent, host): the rest is
/// cut, so a span's size is bounded whatever a client sends.
const MAX_TEXT: usize = 512;

/// What a tracer is built from (compiled from `observability.tracing`).
#[derive(Clone, PartialEq)]
pub struct TracerSettings {
    /// Where spans go (for `http`, the full `/v1/traces` URL).
    pub endpoint: Uri,
    /// gRPC or HTTP/protobuf.
    pub protocol: OtlpProtocol,
    /// `service.name`.
    pub service_name: String,
    /// Share of new traces recorded.
    pub sample_ratio: f64,
    /// Headers sent with every export (secrets: never shown).
    pub headers: HeaderMap,
    /// Deadline of one export.
    pub timeout: Duration,
    /// Spans queued at most.
    pub max_queue: usize,
    /// Spans per export at most.
    pub max_batch: usize,
    /// Longest wait before queued spans are sent.
    pub flush_interval: Duration,
    /// The `ca_file`'s bytes (for `https://`).
    pub ca: Option<Vec<u8>>,
}

/// The tracer of one config: the sampler, the queue and its export task.
/// Carried over by a reload that leaves `observability.tracing` as it was.
pub struct Tracer {
    /// What it was built from (a reload compares it).
    pub settings: TracerSettings,
    /// TraceIdRatioBased's bound: a trace is sampled when the low 63 bits
    /// of its id's last 8 bytes are below it.
    bound: u64,
    shared: Arc<Shared>,
    /// The exporter's TLS settings (for `https://`).
    tls: Option<Arc<ClientConfig>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// What the request path and the export task share.
pub(super) struct Shared {
    queue: Mutex<Vec<SpanData>>,
    wake: Notify,
    closed: AtomicBool,
    max_queue: usize,
    max_batch: usize,
    scope: InstrumentationScope,
}

impl Tracer {
    /// A tracer for `settings`; nothing runs until `start`.
    pub(crate) fn new(settings: TracerSettings) -> Result<Self, String> {
        let tls = match settings.endpoint.scheme_str() {
            Some("https") => {
                let base = crate::auth::jwks::tls_config(settings.ca.as_deref())?;
                let mut cfg = (*base).clone();
                cfg.alpn_protocols = match settings.protocol {
                    OtlpProtocol::Grpc => vec![b"h2".to_vec()],
                    OtlpProtocol::Http => vec![b"http/1.1".to_vec()],
                };
                Some(Arc::new(cfg))
            }
            _ => None,
        };
        Ok(Self {
            bound: ratio_bound(settings.sample_ratio),
            shared: Arc::new(Shared {
                queue: Mutex::new(Vec::with_capacity(settings.max_batch.min(4096))),
                wake: Notify::new(),
                closed: AtomicBool::new(false),
                max_queue: settings.max_queue,
                max_batch: settings.max_batch,
                scope: InstrumentationScope::builder("tollgate")
                    .with_version(env!("CARGO_PKG_VERSION"))
                    .build(),
            }),
            tls,
            settings,
            task: Mutex::new(None),
        })
    }

    /// Whether a new trace with this id (32 hex digits) is recorded.
    pub(crate) fn samples(&self, trace_id: &[u8; 32]) -> bool {
        let low = std::str::from_utf8(&trace_id[16..])
            .ok()
            .and_then(|s| u64::from_str_radix(s, 16).ok())
            .unwrap_or(0);
        (low >> 1) < self.bound
    }

    /// Starts the export task (once; later calls do nothing). Call from
    /// within the runtime.
    pub(crate) fn start(&self) {
        let Ok(mut task) = self.task.lock() else {
            return;
        };
        if task.is_some() {
            return;
        }
        let shared = Arc::clone(&self.shared);
        let settings = self.settings.clone();
        let tls = self.tls.clone();
        *task = Some(tokio::spawn(export::export_loop(shared, settings, tls)));
    }

    /// Sends what is queued and stops the export task, waiting at most
    /// `timeout` (at shutdown).
    pub(crate) async fn shutdown(&self, timeout: Duration) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.wake.notify_one();
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            let _ = tokio::time::timeout(timeout, task).await;
        }
    }

    /// Queues a finished request's spans, or drops them (counted) when
    /// the queue is full. Wakes the export task only when a batch is
    /// full.
    fn push(&self, spans: Vec<SpanData>) {
        let n = spans.len();
        let Ok(mut q) = self.shared.queue.lock() else {
            return;
        };
        if q.len() + n > self.shared.max_queue {
            drop(q);
            dropped("queue_full", n);
            return;
        }
        let before = q.len();
        q.extend(spans);
        let full = before < self.shared.max_batch && q.len() >= self.shared.max_batch;
        drop(q);
        if full {
            self.shared.wake.notify_one();
        }
    }

    /// Turns a finished request's record into spans and queues them.
    pub(crate) fn finish(&self, rec: Recording, server: ServerSpan) {
        let Recording {
            trace,
            tracestate,
            start,
            start_wall,
            children,
        } = rec;
        let wall = |t: Instant| start_wall + t.saturating_duration_since(start);
        let trace_id = hex_trace_id(&trace.trace_id);
        let server_id = hex_span_id(&trace.span_id);
        let parent = trace.parent;
        let state = tracestate
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse::<TraceState>().ok())
            .unwrap_or_default();
        let flags = if context::sampled_flag(&trace.flags) {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let context = |id: SpanId| SpanContext::new(trace_id, id, flags, false, state.clone());
        let mut spans = Vec::with_capacity(children.len() + 1);
        for c in children {
            spans.push(SpanData {
                span_context: context(c.id),
                parent_span_id: server_id,
                parent_span_is_remote: false,
                span_kind: c.kind,
                name: c.name,
                start_time: wall(c.start),
                end_time: wall(c.end),
                attributes: c.attributes,
                dropped_attributes_count: 0,
                events: SpanEvents::default(),
                links: SpanLinks::default(),
                status: if c.failed {
                    Status::error("")
                } else {
                    Status::Unset
                },
                instrumentation_scope: self.shared.scope.clone(),
            });
        }
        spans.push(SpanData {
            span_context: context(server_id),
            parent_span_id: parent.map_or(SpanId::INVALID, |p| hex_span_id(&p)),
            parent_span_is_remote: parent.is_some(),
            span_kind: SpanKind::Server,
            name: server.name.into(),
            start_time: start_wall,
            end_time: wall(server.end),
            attributes: server.attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: if server.failed {
                Status::error("")
            } else {
                Status::Unset
            },
            instrumentation_scope: self.shared.scope.clone(),
        });
        self.push(spans);
    }
}

impl Drop for Tracer {
    /// A tracer a reload replaced: its task sends what is queued and ends.
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }
}

/// `TraceIdRatioBased`'s bound for `ratio` (0 to 1).
fn ratio_bound(ratio: f64) -> u64 {
    if ratio >= 1.0 {
        return u64::MAX;
    }
    (ratio.max(0.0) * (1u64 << 63) as f64) as u64
}

fn hex_trace_id(hex: &[u8; 32]) -> TraceId {
    std::str::from_utf8(hex)
        .ok()
        .and_then(|s| TraceId::from_hex(s).ok())
        .unwrap_or(TraceId::INVALID)
}

fn hex_span_id(hex: &[u8; 16]) -> SpanId {
    std::str::from_utf8(hex)
        .ok()
        .and_then(|s| SpanId::from_hex(s).ok())
        .unwrap_or(SpanId::INVALID)
}

pub(super) fn dropped(reason: &str, n: usize) {
    metrics()
        .trace_spans_dropped
        .with_label_values(&[reason])
        .inc_by(n as u64);
}

/// A client-controlled text attribute, cut to `MAX_TEXT` bytes.
pub(crate) fn text(s: &str) -> Value {
    let mut end = s.len().min(MAX_TEXT);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Value::from(s[..end].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use opentelemetry::trace::{SamplingDecision, TraceContextExt};
    use opentelemetry_sdk::trace::{Sampler, ShouldSample};

    fn settings(ratio: f64) -> TracerSettings {
        TracerSettings {
            endpoint: Uri::from_static("http://127.0.0.1:4317"),
            protocol: OtlpProtocol::Grpc,
            service_name: "t".into(),
            sample_ratio: ratio,
            headers: HeaderMap::new(),
            timeout: Duration::from_secs(1),
            max_queue: 8,
            max_batch: 4,
            flush_interval: Duration::from_secs(1),
            ca: None,
        }
    }

    #[test]
    fn new_traces_are_sampled_as_the_sdks_trace_id_ratio_sampler_decides() {
        for ratio in [0.0, 0.01, 0.25, 0.5, 0.9, 1.0] {
            let tracer = Tracer::new(settings(ratio)).unwrap();
            let sdk = Sampler::TraceIdRatioBased(ratio);
            let mut agree = 0;
            for _ in 0..2000 {
                let id = fastrand::u128(1..);
                let mut hex = [0u8; 32];
                hex.copy_from_slice(format!("{id:032x}").as_bytes());
                let theirs = sdk
                    .should_sample(
                        Some(&opentelemetry::Context::new()),
                        TraceId::from(id),
                        "x",
                        &SpanKind::Server,
                        &[],
                        &[],
                    )
                    .decision
                    == SamplingDecision::RecordAndSample;
                assert_eq!(tracer.samples(&hex), theirs, "ratio {ratio}, id {id:032x}");
                agree += usize::from(theirs);
            }
            let share = agree as f64 / 2000.0;
            assert!((share - ratio).abs() < 0.05, "ratio {ratio}: {share}");
        }
        // The SDK's context type is what the sampler reads parents from.
        assert!(!opentelemetry::Context::new().has_active_span());
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let tracer = Tracer::new(settings(1.0)).unwrap();
        let before = metrics()
            .trace_spans_dropped
            .with_label_values(&["queue_full"])
            .get();
        let rec = |n: u8| {
            let mut r = Recording::new(
                TraceContext::of([b'a'; 32], [b'b'; 16], None, *b"01"),
                None,
                Instant::now(),
            );
            for _ in 0..n {
                r.stage("auth", Instant::now(), vec![], None);
            }
            r
        };
        let server = || ServerSpan {
            name: "GET r".into(),
            attributes: vec![],
            failed: false,
            end: Instant::now(),
        };
        tracer.finish(*rec(3), server()); // 4 spans
        tracer.finish(*rec(3), server()); // 8: full
        tracer.finish(*rec(0), server()); // 9: dropped
        assert_eq!(tracer.shared.queue.lock().unwrap().len(), 8);
        let after = metrics()
            .trace_spans_dropped
            .with_label_values(&["queue_full"])
            .get();
        assert!(after > before);
    }

    #[test]
    fn spans_link_to_the_server_span_and_its_remote_parent() {
        let tracer = Tracer::new(settings(1.0)).unwrap();
        let mut rec = Recording::new(
            TraceContext::of(
                *b"4bf92f3577b34da6a3ce929d0e0e4736",
                *b"00f067aa0ba902b7",
                Some(*b"1111111111111111"),
                *b"01",
            ),
            Some(HeaderValue::from_static("k=v")),
            Instant::now(),
        );
        let header = rec.attempt_begins("api", 1).unwrap();
        rec.attempt_ends("127.0.0.1:1", Ok(503));
        tracer.finish(
            *rec,
            ServerSpan {
                name: "GET r".into(),
                attributes: vec![],
                failed: true,
                end: Instant::now(),
            },
        );
        let q = tracer.shared.queue.lock().unwrap();
        let (attempt, server) = (&q[0], &q[1]);
        assert_eq!(
            server.span_context.span_id(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap()
        );
        assert_eq!(
            server.parent_span_id,
            SpanId::from_hex("1111111111111111").unwrap()
        );
        assert!(server.parent_span_is_remote);
        assert_eq!(attempt.parent_span_id, server.span_context.span_id());
        assert_eq!(attempt.span_kind, SpanKind::Client);
        assert_eq!(attempt.status, Status::error(""));
        assert_eq!(
            header.to_str().unwrap(),
            format!(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-{:016x}-01",
                attempt.span_context.span_id()
            )
        );
        assert_eq!(server.span_context.trace_state().header(), "k=v");
    }

    #[test]
    fn long_text_is_cut_on_a_character_boundary() {
        let s = "é".repeat(MAX_TEXT);
        let Value::String(v) = text(&s) else {
            panic!("text")
        };
        assert!(v.as_str().len() <= MAX_TEXT);
        assert!(v.as_str().chars().all(|c| c == 'é'));
    }
}
