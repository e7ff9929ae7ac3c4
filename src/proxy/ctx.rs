//! The per-request context every stage reads and writes, and the finish
//! stage that consumes it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderValue, Method};

use super::cache::RequestCache;
use super::conn::ActivityGuard;
use super::error::ProxyError;
use crate::auth::{ConnMemo, Identity};
use crate::observability::access_log::{self, LogLine};
use crate::observability::metrics::metrics;
use crate::observability::trace::TraceContext;
use crate::observability::trace::{self, Recording, ServerSpan};
use crate::snapshot::{Route, Snapshot};
use crate::upstream::{Endpoint, Upstream};
use opentelemetry::KeyValue;

/// What the access log names of a request: its target and `Host`.
pub(crate) struct LogTarget {
    /// The request target as received.
    pub uri: http::Uri,
    /// The `Host` field, for origin-form targets.
    pub host: Option<HeaderValue>,
    /// `User-Agent`.
    pub user_agent: Option<HeaderValue>,
}

impl LogTarget {
    /// The host as sent, port included: the target's authority (h2's
    /// `:authority`, an absolute-form target), else `Host`.
    fn host(&self) -> &str {
        self.uri
            .authority()
            // Never userinfo (`user:password@`), which a client may send.
            .and_then(|a| a.as_str().rsplit('@').next())
            .or_else(|| self.host.as_ref().and_then(|v| v.to_str().ok()))
            .unwrap_or_default()
    }
}

/// What a client connection tells its requests, built once per
/// connection and shared by all of them.
pub(crate) struct ConnFacts {
    /// The TCP peer (the hop that forwarding headers name).
    pub peer: SocketAddr,
    /// The peer address as a header value, formatted once.
    pub peer_value: HeaderValue,
    /// The connection's last verified token.
    pub auth_memo: ConnMemo,
    /// Requests in progress on this gateway.
    pub inflight: Arc<Requests>,
    /// The connection is TLS (`X-Forwarded-Proto: https`).
    pub https: bool,
    /// The port TLS is served on (for `redirect_http`).
    pub https_port: u16,
    /// Subject of the client's verified certificate (mTLS).
    pub client_subject: Option<HeaderValue>,
    /// The TLS version and the SNI name, on TLS connections.
    pub tls: Option<TlsFacts>,
}

/// What a TLS handshake settled, for the access log.
pub(crate) struct TlsFacts {
    /// `1.2` or `1.3`.
    pub version: &'static str,
    /// The server name the client asked for.
    pub sni: Option<Box<str>>,
}

/// What the pipeline knows about one request.
pub(crate) struct RequestCtx {
    /// The snapshot this request runs on, start to finish.
    pub snapshot: Arc<Snapshot>,
    /// The connection it came on.
    pub conn: Arc<ConnFacts>,
    /// The request id (client's or generated).
    pub request_id: HeaderValue,
    /// Trace context (continued or new).
    pub trace: TraceContext,
    /// What a sampled request records for its spans (tracing on).
    pub spans: Option<Box<Recording>>,
    /// Client address after trusted-proxy resolution.
    pub client: IpAddr,
    /// When the request head was received.
    pub start: Instant,
    /// Method.
    pub method: Method,
    /// A gRPC call (`content-type: application/grpc…`): gateway errors
    /// answer in gRPC form.
    pub grpc: bool,
    /// The client asks to switch to this protocol (`Upgrade`, with
    /// `Connection: upgrade`), read before the hop-by-hop fields go.
    pub upgrade: Option<HeaderValue>,
    /// The route taken.
    pub route: Option<Arc<Route>>,
    /// The request's `Origin`, kept on routes with `cors`.
    pub origin: Option<HeaderValue>,
    /// A CORS preflight the gateway answered (its headers are final).
    pub preflight: bool,
    /// The content coding negotiated on a route with `compression`
    /// (`None`: identity).
    pub coding: crate::compression::Coding,
    /// The verified caller (routes with `auth`).
    pub identity: Option<Arc<Identity>>,
    /// An upgraded request's finish stage goes to its tunnel, which runs it
    /// when it closes.
    pub tunnel: Option<tokio::sync::oneshot::Sender<Box<Finish>>>,
    /// The rate-limit verdict the response's RateLimit headers describe.
    pub rate_limit: Option<(Arc<crate::ratelimit::Policy>, crate::ratelimit::Verdict)>,
    /// What the cache does for this request (cached routes).
    pub cache: RequestCache,
    /// Upstream and endpoint that answered.
    pub upstream: Option<(Arc<Upstream>, Arc<Endpoint>)>,
    /// The upstream that failed and the last endpoint tried (`""` when
    /// none was), when forwarding failed.
    pub failed: Option<(Arc<Upstream>, Box<str>)>,
    /// Tries made upstream (0: not forwarded).
    pub attempts: u32,
    /// The status the upstream answered with.
    pub upstream_status: Option<u16>,
    /// The request's HTTP version.
    pub version: http::Version,
    /// A gRPC call's status (`grpc-status`), from the response head or
    /// its trailers, upstream's or the gateway's own.
    pub grpc_status: Option<u16>,
    /// Time to the upstream response head.
    pub upstream_duration: Option<Duration>,
    /// Why the gateway answered itself.
    pub reason: &'static str,
    /// Request body bytes read, counted while the body streams (when there
    /// is a body).
    pub bytes_in: Option<Arc<AtomicU64>>,
    /// Host and path for the log (only kept when logging is on).
    pub log_target: Option<LogTarget>,
    /// Keeps the connection from idling out until the request finishes.
    pub activity: Option<ActivityGuard>,
    /// Counts the request as in progress on the gateway until it finishes.
    pub in_progress: InProgress,
}

/// The requests in progress on one gateway (for load shedding), and
/// whether its shutdown grace ran out (requests ended then are logged as
/// `shutdown_grace_expired`).
#[derive(Default)]
pub(crate) struct Requests {
    count: std::sync::atomic::AtomicUsize,
    cut: std::sync::atomic::AtomicBool,
    cut_signal: tokio::sync::Notify,
}

impl Requests {
    /// The shutdown grace ran out: what is still open is cut.
    pub(crate) fn cut(&self) {
        self.cut.store(true, Ordering::Release);
        self.cut_signal.notify_waiters();
    }

    /// Requests in progress now.
    pub(crate) fn current(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// True once the shutdown grace ran out.
    pub(crate) fn is_cut(&self) -> bool {
        self.cut.load(Ordering::Acquire)
    }

    /// Resolves once the shutdown grace ran out.
    pub(crate) async fn cut_happened(&self) {
        loop {
            let notified = self.cut_signal.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the flag is read: a `cut` in between wakes it.
            notified.as_mut().enable();
            if self.is_cut() {
                return;
            }
            notified.await;
        }
    }
}

/// One request in progress on the gateway (for load shedding); counted
/// from the request head to the end of the response.
pub(crate) struct InProgress {
    counter: Arc<Requests>,
    /// Requests in progress when this one arrived, itself included.
    pub count: usize,
}

impl InProgress {
    /// Counts one more request on `counter`.
    pub(crate) fn new(counter: Arc<Requests>) -> Self {
        let count = counter.count.fetch_add(1, Ordering::AcqRel) + 1;
        Self { counter, count }
    }

    /// True once the gateway's shutdown grace ran out.
    pub(crate) fn cut(&self) -> bool {
        self.counter.is_cut()
    }

    /// One more request in progress on the same gateway.
    pub(crate) fn another(&self) -> Self {
        Self::new(Arc::clone(&self.counter))
    }
}

impl RequestCtx {
    /// Records stage `name`, begun at `started`, in a sampled request's
    /// spans: `key` says `ok` or the reason code it refused with; a refusal
    /// that is the gateway's or an upstream's fault (5xx) marks the span as
    /// an error.
    pub(crate) fn record_stage<T>(
        &mut self,
        name: &'static str,
        started: Option<Instant>,
        result: &Result<T, ProxyError>,
        key: &'static str,
        mut attributes: Vec<opentelemetry::KeyValue>,
    ) {
        let (Some(started), Some(rec)) = (started, self.spans.as_deref_mut()) else {
            return;
        };
        let (code, failed) = match result {
            Ok(_) => ("ok", None),
            Err(e) => {
                let d = e.describe();
                (d.code, d.status.is_server_error().then_some(d.code))
            }
        };
        attributes.push(opentelemetry::KeyValue::new(key, code));
        rec.stage(name, started, attributes, failed);
    }

    /// A context for a background request made on this request's behalf
    /// (a cache refresh, with its `cache` part): the same identity and
    /// forwarding facts, no connection activity, its own in-progress count.
    pub(crate) fn for_background(&self, cache: RequestCache) -> RequestCtx {
        RequestCtx {
            snapshot: Arc::clone(&self.snapshot),
            conn: Arc::clone(&self.conn),
            request_id: self.request_id.clone(),
            trace: self.trace.clone(),
            spans: None,
            client: self.client,
            start: Instant::now(),
            method: self.method.clone(),
            grpc: self.grpc,
            upgrade: None,
            route: self.route.clone(),
            origin: None,
            preflight: false,
            coding: self.coding,
            identity: self.identity.clone(),
            rate_limit: None,
            tunnel: None,
            cache,
            upstream: None,
            failed: None,
            attempts: 0,
            upstream_status: None,
            version: self.version,
            grpc_status: None,
            upstream_duration: None,
            reason: "",
            bytes_in: None,
            log_target: None,
            activity: None,
            in_progress: self.in_progress.another(),
        }
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.counter.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How a response body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// Sent to the end.
    Complete,
    /// The client went away before the end.
    ClientGone,
    /// The upstream body failed mid-stream (the client got a cut response).
    UpstreamFailed,
    /// No response was made: the client went away (or reset its h2
    /// stream) while the request was still being handled.
    ClientClosed,
}

impl End {
    /// The access log reason for a response the gateway did not make.
    fn reason(self) -> &'static str {
        match self {
            End::Complete => "",
            End::ClientGone => "downstream_disconnect",
            End::UpstreamFailed => "upstream_body_error",
            End::ClientClosed => "client_closed_request",
        }
    }
}

/// A request that has no response yet: if it is dropped unanswered (the
/// client went away, its h2 stream was reset, or the shutdown grace ran
/// out), the finish stage still runs once, with status 499 (NGINX's
/// "client closed request"), or 503 when the gateway cut it.
///
/// The context lives in its finish stage's box from the start, so it is
/// moved once onto the heap, not again when the response is made.
pub(crate) struct Pending(Option<Box<Finish>>);

impl Pending {
    /// Guards `ctx` until the response is made.
    pub(crate) fn new(ctx: RequestCtx) -> Self {
        Self(Some(Box::new(Finish { ctx, status: 0 })))
    }

    /// The finish stage for the response made, with `status`.
    pub(crate) fn answered(mut self, status: u16) -> Option<Box<Finish>> {
        let mut f = self.0.take()?;
        f.status = status;
        Some(f)
    }
}

impl std::ops::Deref for Pending {
    type Target = RequestCtx;
    #[expect(
        clippy::expect_used,
        reason = "the context is only taken by `answered`, which consumes the guard"
    )]
    fn deref(&self) -> &RequestCtx {
        &self
            .0
            .as_ref()
            .expect("a pending request has its context")
            .ctx
    }
}

impl std::ops::DerefMut for Pending {
    #[expect(
        clippy::expect_used,
        reason = "the context is only taken by `answered`, which consumes the guard"
    )]
    fn deref_mut(&mut self) -> &mut RequestCtx {
        &mut self
            .0
            .as_mut()
            .expect("a pending request has its context")
            .ctx
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(mut f) = self.0.take() {
            f.status = if f.ctx.in_progress.cut() { 503 } else { 499 };
            f.run(0, End::ClientClosed);
        }
    }
}

/// The `grpc-status` in `fields`, when there is a valid one.
pub(crate) fn grpc_status(fields: &http::HeaderMap) -> Option<u16> {
    fields
        .get("grpc-status")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The finish stage of one request: runs once, when the response body ends
/// or is dropped.
pub(crate) struct Finish {
    ctx: RequestCtx,
    status: u16,
}

impl Finish {
    /// Reads `grpc-status` from a gRPC call's response head or trailers.
    pub(crate) fn saw_grpc_status(&mut self, fields: &http::HeaderMap) {
        if self.ctx.grpc {
            self.ctx.grpc_status = grpc_status(fields).or(self.ctx.grpc_status);
        }
    }

    /// Resolves once the gateway's shutdown grace ran out.
    pub(crate) async fn cut_happened(&self) {
        self.ctx.in_progress.counter.cut_happened().await;
    }

    /// The finish stage of an upgraded request, run when its tunnel
    /// closes: the bytes each way, the whole time to the close, and how it
    /// ended (`Complete`, or cut by the shutdown grace).
    pub(crate) fn tunnel_closed(mut self: Box<Self>, from_client: u64, to_client: u64, end: End) {
        self.ctx.bytes_in = Some(Arc::new(AtomicU64::new(from_client)));
        self.run(to_client, end);
    }

    /// Records metrics, writes the access log line and queues the spans.
    pub(crate) fn run(mut self: Box<Self>, bytes_out: u64, end: End) {
        let spans = self.ctx.spans.take();
        let c = &self.ctx;
        // Whatever ended a request after the shutdown grace ran out was
        // the gateway cutting it.
        let cut = end != End::Complete && c.in_progress.cut();
        let elapsed = c.start.elapsed();
        let m = match &c.route {
            Some(r) => &r.metrics,
            None => &c.snapshot.unrouted_metrics,
        };
        m.requests.inc(&c.method, self.status);
        m.duration.observe(elapsed.as_secs_f64());
        if let Some(code) = c.grpc_status {
            // 0-16 are gRPC's codes; anything else is one bucket, so the
            // label set stays bounded.
            m.grpc_responses.inc_status(code.min(17));
        }
        let bytes_in = c.bytes_in.as_ref().map_or(0, |n| n.load(Ordering::Relaxed));
        m.request_size.observe(bytes_in as f64);
        m.response_size.observe(bytes_out as f64);
        metrics().requests_inflight.dec();
        let reason = if cut {
            "shutdown_grace_expired"
        } else if c.reason.is_empty() {
            end.reason()
        } else {
            c.reason
        };
        let (up, ep) = match (&c.upstream, &c.failed) {
            (Some((u, e)), _) => (u.name.as_str(), e.id.as_str()),
            (None, Some((u, e))) => (u.name.as_str(), &**e),
            (None, None) => ("", ""),
        };
        if let (Some(rec), Some(tracer)) = (spans, &c.snapshot.tracer) {
            let span = server_span(c, self.status, reason, up, (bytes_in, bytes_out));
            tracer.finish(*rec, span);
        }
        if !c.snapshot.settings.access_log {
            return;
        }
        if let Some(target) = &c.log_target {
            let route = c.route.as_ref().map_or("", |r| r.name.as_str());
            let query = match (&c.snapshot.settings.access_log_query, target.uri.query()) {
                (Some(redact), Some(q)) => Some(access_log::redacted_query(q, redact)),
                _ => None,
            };
            access_log::log(&LogLine {
                time: SystemTime::now() - elapsed,
                request_id: c.request_id.to_str().unwrap_or(""),
                trace_id: c.trace.trace_id(),
                client: c.client,
                method: c.method.as_str(),
                host: target.host(),
                path: target.uri.path(),
                query: query.as_deref(),
                protocol: protocol_name(c.version),
                tls_version: c.conn.tls.as_ref().map(|t| t.version),
                sni: c.conn.tls.as_ref().and_then(|t| t.sni.as_deref()),
                user_agent: target.user_agent.as_ref().and_then(|v| v.to_str().ok()),
                upstream_status: c.upstream_status,
                attempts: c.attempts,
                grpc_status: c.grpc_status,
                status: self.status,
                bytes_in,
                bytes_out,
                duration: elapsed.as_secs_f64(),
                upstream_duration: c.upstream_duration.map(|d| d.as_secs_f64()),
                route,
                upstream: up,
                endpoint: ep,
                reason,
                tenant: c.identity.as_ref().and_then(|i| i.tenant.as_deref()),
                sub: c.identity.as_ref().and_then(|i| i.sub.as_deref()),
            });
        }
    }
}

/// `HTTP/1.1`, `HTTP/2`, `HTTP/1.0`.
fn protocol_name(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    }
}

/// The server span of a finished request: HTTP semantic-convention
/// attributes (method, status, scheme, protocol version, server and client
/// addresses, path, user agent, body sizes) and Tollgate's (route,
/// upstream, attempts, request id), with the access log's reason code as
/// `error.type`. A 5xx makes the span an error.
fn server_span(
    c: &RequestCtx,
    status: u16,
    reason: &'static str,
    upstream: &str,
    (bytes_in, bytes_out): (u64, u64),
) -> ServerSpan {
    let route = c.route.as_ref().map(|r| r.name.as_str());
    let mut a = Vec::with_capacity(16);
    // Semantic conventions: a method outside the standard set is `_OTHER`,
    // with the method sent in `http.request.method_original`.
    match crate::observability::metrics::method_label(&c.method) {
        (_, "OTHER") => {
            a.push(KeyValue::new("http.request.method", "_OTHER"));
            a.push(KeyValue::new(
                "http.request.method_original",
                trace::text(c.method.as_str()),
            ));
        }
        (_, m) => a.push(KeyValue::new("http.request.method", m)),
    }
    a.push(KeyValue::new(
        "http.response.status_code",
        i64::from(status),
    ));
    a.push(KeyValue::new(
        "url.scheme",
        if c.conn.https { "https" } else { "http" },
    ));
    a.push(KeyValue::new(
        "network.protocol.version",
        &protocol_name(c.version)[5..],
    ));
    a.push(KeyValue::new("client.address", c.client.to_string()));
    // The TCP peer, when trusted proxies made the client another address.
    if c.client != c.conn.peer.ip() {
        a.push(KeyValue::new(
            "network.peer.address",
            c.conn.peer.ip().to_string(),
        ));
    }
    if let Some(t) = &c.log_target {
        a.push(KeyValue::new("url.path", trace::text(t.uri.path())));
        if let Ok(host) = t.host().parse::<http::uri::Authority>() {
            a.push(KeyValue::new("server.address", trace::text(host.host())));
            if let Some(port) = host.port_u16() {
                a.push(KeyValue::new("server.port", i64::from(port)));
            }
        }
        if let Some(ua) = t.user_agent.as_ref().and_then(|v| v.to_str().ok()) {
            a.push(KeyValue::new("user_agent.original", trace::text(ua)));
        }
    }
    a.push(KeyValue::new("http.request.body.size", bytes_in as i64));
    a.push(KeyValue::new("http.response.body.size", bytes_out as i64));
    if let Some(r) = route {
        a.push(KeyValue::new("tollgate.route", r.to_owned()));
    }
    if let Ok(id) = c.request_id.to_str() {
        a.push(KeyValue::new("tollgate.request_id", id.to_owned()));
    }
    if !upstream.is_empty() {
        a.push(KeyValue::new("tollgate.upstream", upstream.to_owned()));
    }
    if c.attempts > 0 {
        a.push(KeyValue::new("tollgate.attempts", i64::from(c.attempts)));
    }
    if let Some(code) = c.grpc_status {
        a.push(KeyValue::new("rpc.grpc.status_code", i64::from(code)));
    }
    if !reason.is_empty() {
        a.push(KeyValue::new("error.type", reason));
    }
    ServerSpan {
        name: match route {
            Some(r) => format!("{} {r}", c.method),
            None => c.method.to_string(),
        },
        attributes: a,
        failed: status >= 500,
        end: Instant::now(),
    }
}
