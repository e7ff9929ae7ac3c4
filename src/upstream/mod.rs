//! Upstreams: named groups of endpoints with a balancer and per-endpoint
//! connection pools (stage 7, `forward`).
//!
//! An `Upstream` is built by `config::compile` and shared by `Arc`; a reload
//! that leaves an upstream's definition unchanged reuses the same `Arc`, so
//! its pools stay warm.

pub mod balance;
pub mod breaker;
pub mod counter;
pub mod h1;
pub mod health;
pub mod pool;
pub mod retry;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderName, Request, Response, Uri};
use hyper::body::Incoming;
use prometheus::Histogram;

use crate::body::{BodyError, RequestBody};
use crate::config::spec::UpstreamSpec;
use crate::observability::metrics::{EndpointMetrics, metrics};
pub use balance::Balancer;
use breaker::{Admit, Breaker, Failure};
pub use counter::{Counter, Held};
pub use pool::{ConnectError, Pool, Target};

/// What a `consistent_hash` balancer hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    /// A request header's value.
    Header(HeaderName),
    /// A cookie's value.
    Cookie(String),
    /// The client address (after trusted-proxy resolution).
    ClientIp,
    /// The normalized path.
    Path,
}

/// One backend address.
pub struct Endpoint {
    /// `host:port`, the endpoint's label in metrics and logs.
    pub id: String,
    /// Relative share of traffic.
    pub weight: u32,
    /// Requests in flight (for `least_request`).
    pub inflight: AtomicUsize,
    /// Its connections.
    pub pool: Arc<Pool>,
    /// Its metric handles.
    pub metrics: EndpointMetrics,
    /// Its circuit breaker, when the upstream has one.
    pub breaker: Option<Breaker>,
    /// False while active health checks hold it out of rotation.
    pub healthy: AtomicBool,
    /// Recent latency and error rate (for `GET /upstreams`).
    pub stats: Stats,
    healthy_gauge: Option<prometheus::IntGauge>,
    authority: Authority,
}

/// A named group of endpoints.
pub struct Upstream {
    /// Config name.
    pub name: String,
    /// The definition it was built from (compared on reload).
    pub spec: UpstreamSpec,
    /// Endpoints, in config order.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// What `consistent_hash` hashes.
    pub hash_on: Option<HashOn>,
    /// Active health check settings.
    pub health: Option<health::Settings>,
    /// Hash of the TLS files read (compared on reload with `spec`).
    pub tls_hash: u64,
    balancer: Balancer,
    h2: bool,
    duration: Histogram,
    background: AtomicBool,
    /// Requests in flight, capped at `limits.max_inflight`.
    pub requests: Counter,
    /// Open HTTP/1.1 connections, capped at `limits.max_connections`.
    pub connections: Counter,
    /// Dropped with the upstream: ends its health checker.
    stop: tokio::sync::watch::Sender<()>,
}

/// Why forwarding failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made (after one retry on another endpoint).
    #[error("connect to {endpoint} failed: {source}")]
    Connect {
        /// Endpoint id.
        endpoint: String,
        /// Cause.
        source: ConnectError,
    },
    /// The exchange failed after connecting: reset, closed, an invalid
    /// response, or the downstream body failed while being sent.
    #[error("request to {endpoint} failed: {source}")]
    Send {
        /// Endpoint id.
        endpoint: String,
        /// Cause.
        source: SendFailure,
    },
    /// Every endpoint is open (circuit breaker): nothing was attempted.
    #[error("no endpoint is available; the first opens again in {retry_after:?}")]
    Unavailable {
        /// Until the soonest endpoint takes a probe.
        retry_after: Duration,
    },
    /// `limits.max_inflight` requests (or `max_connections` connections)
    /// are in use: refused at once.
    #[error("the upstream's {0} limit is reached")]
    Overloaded(&'static str),
    /// No response head before the deadline.
    #[error("no response from {endpoint} in time")]
    Timeout {
        /// Endpoint id.
        endpoint: String,
    },
}

impl UpstreamError {
    /// The endpoint tried, or `""` when none was.
    pub fn endpoint(&self) -> &str {
        match self {
            UpstreamError::Connect { endpoint, .. }
            | UpstreamError::Send { endpoint, .. }
            | UpstreamError::Timeout { endpoint } => endpoint,
            UpstreamError::Unavailable { .. } | UpstreamError::Overloaded(_) => "",
        }
    }
}

/// What went wrong in an exchange, by protocol.
#[derive(Debug, thiserror::Error)]
pub enum SendFailure {
    /// HTTP/1.1 (our codec).
    #[error("{0}")]
    H1(#[from] h1::H1Error),
    /// h2c, h2 or HTTP/1.1 over TLS (hyper).
    #[error("{0}")]
    H2(#[from] hyper::Error),
}

impl SendFailure {
    /// The downstream body's error, when that is what failed.
    pub fn body_error(&self) -> Option<&BodyError> {
        match self {
            SendFailure::H1(h1::H1Error::Body(b)) => Some(b),
            SendFailure::H1(_) => None,
            SendFailure::H2(e) => crate::body::find_body_error(e),
        }
    }
}

/// A streamed upstream response body.
pub enum UpstreamBody {
    /// Read by our HTTP/1.1 codec.
    H1(h1::Body1),
    /// Read by hyper's client (h2c, h2 over TLS, HTTP/1.1 over TLS).
    H2(Incoming),
}

impl http_body::Body for UpstreamBody {
    type Data = bytes::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        match self.get_mut() {
            UpstreamBody::H1(b) => std::pin::Pin::new(b).poll_frame(cx).map_err(Into::into),
            UpstreamBody::H2(b) => std::pin::Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::H1(b) => b.is_end_stream(),
            UpstreamBody::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            UpstreamBody::H1(b) => b.size_hint(),
            UpstreamBody::H2(b) => b.size_hint(),
        }
    }
}

/// A response head from an endpoint.
pub struct Sent {
    /// The response (body still streaming).
    pub response: Response<UpstreamBody>,
    /// The endpoint that answered.
    pub endpoint: Arc<Endpoint>,
    /// Time from the first attempt to the response head.
    pub took: std::time::Duration,
    /// Counts the request in flight on its endpoint (from the pick) until
    /// dropped; the response body holds it to the end.
    pub inflight: InflightGuard,
}

/// Counts a request in flight on its endpoint and its upstream until
/// dropped (the response body holds it to the end).
pub struct InflightGuard {
    ep: EndpointGuard,
    _upstream: Held,
}

/// One request in flight on an endpoint.
struct EndpointGuard(Arc<Endpoint>);

impl EndpointGuard {
    fn new(ep: &Arc<Endpoint>) -> Self {
        ep.inflight.fetch_add(1, Ordering::Relaxed);
        EndpointGuard(Arc::clone(ep))
    }
}

impl Drop for EndpointGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl InflightGuard {
    /// Counts one request in flight on `ep` (of the upstream `held` counts).
    fn new(ep: &Arc<Endpoint>, held: Held) -> Self {
        InflightGuard {
            ep: EndpointGuard::new(ep),
            _upstream: held,
        }
    }

    /// The same request, moved to another endpoint.
    fn move_to(&mut self, ep: &Arc<Endpoint>) {
        self.ep = EndpointGuard::new(ep);
    }
}

/// Settings an endpoint is built with, besides its address.
pub struct EndpointParams<'a> {
    /// Upstream name (metric label).
    pub upstream: &'a str,
    /// Pool settings.
    pub target: Target,
    /// Endpoint weight.
    pub weight: u32,
    /// HTTP/2 cleartext.
    pub h2: bool,
    /// Circuit breaker settings.
    pub breaker: Option<breaker::Settings>,
    /// Whether the upstream has active health checks (exports the gauge).
    pub health_checked: bool,
}

impl Endpoint {
    /// An endpoint with an empty pool.
    pub fn new(p: EndpointParams<'_>) -> Result<Self, String> {
        let id = if p.target.host.contains(':') {
            format!("[{}]:{}", p.target.host, p.target.port)
        } else {
            format!("{}:{}", p.target.host, p.target.port)
        };
        let authority: Authority = id
            .parse()
            .map_err(|e| format!("invalid endpoint address `{id}`: {e}"))?;
        let healthy_gauge = p.health_checked.then(|| {
            let g = metrics()
                .endpoint_healthy
                .with_label_values(&[p.upstream, &id]);
            g.set(1);
            g
        });
        Ok(Self {
            breaker: p.breaker.map(|b| Breaker::new(b, p.upstream, &id)),
            healthy: AtomicBool::new(true),
            stats: Stats::default(),
            healthy_gauge,
            metrics: EndpointMetrics::new(p.upstream, &id),
            pool: Arc::new(Pool::new(p.target, p.h2)),
            inflight: AtomicUsize::new(0),
            weight: p.weight,
            authority,
            id,
        })
    }
}

impl Endpoint {
    /// True when the endpoint may take a request: healthy, and its breaker
    /// is not open.
    pub fn available(&self) -> bool {
        self.healthy.load(Ordering::Relaxed) && self.breaker.as_ref().is_none_or(Breaker::available)
    }

    /// Moves the endpoint in or out of rotation (health checks).
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
        if let Some(g) = &self.healthy_gauge {
            g.set(i64::from(healthy));
        }
    }

    fn admit(&self) -> Admit {
        self.breaker.as_ref().map_or(Admit::Yes, Breaker::admit)
    }

    fn record(&self, admit: Admit, outcome: Option<Failure>) {
        if let Some(b) = &self.breaker {
            b.record(admit, outcome);
        }
    }
}

/// Exponentially weighted moving averages of an endpoint's outcomes
/// (weight 1/16 per sample), updated without locks; a lost update under a
/// race only skips one sample.
#[derive(Debug, Default)]
pub struct Stats {
    latency_us: AtomicU64,
    error_ppm: AtomicU64,
}

impl Stats {
    fn observe(&self, took: Duration, failed: bool) {
        let ewma = |cell: &AtomicU64, sample: u64| {
            let old = cell.load(Ordering::Relaxed);
            let new = if old == 0 && sample > 0 {
                sample
            } else {
                (old * 15 + sample) / 16
            };
            cell.store(new, Ordering::Relaxed);
        };
        ewma(
            &self.latency_us,
            took.as_micros().min(u128::from(u32::MAX)) as u64,
        );
        ewma(&self.error_ppm, if failed { 1_000_000 } else { 0 });
    }

    /// Recent time to the response head, in milliseconds.
    pub fn latency_ms(&self) -> f64 {
        self.latency_us.load(Ordering::Relaxed) as f64 / 1000.0
    }

    /// Recent share of failed tries (0 to 1).
    pub fn error_rate(&self) -> f64 {
        self.error_ppm.load(Ordering::Relaxed) as f64 / 1e6
    }
}

/// A breaker slot taken for one attempt: given back if the attempt ends
/// without an outcome (the caller went away).
struct Slot<'a> {
    ep: &'a Endpoint,
    admit: Admit,
    open: bool,
    started: Instant,
}

impl Slot<'_> {
    fn new(ep: &Endpoint) -> Slot<'_> {
        Slot {
            ep,
            admit: ep.admit(),
            open: true,
            started: Instant::now(),
        }
    }

    fn done(mut self, outcome: Option<Failure>) {
        self.open = false;
        self.ep.record(self.admit, outcome);
        self.ep
            .stats
            .observe(self.started.elapsed(), outcome.is_some());
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if self.open
            && let Some(b) = &self.ep.breaker
        {
            b.release(self.admit);
        }
    }
}

impl Upstream {
    /// Assembles an upstream from built endpoints.
    pub fn new(
        name: &str,
        spec: UpstreamSpec,
        endpoints: Vec<Arc<Endpoint>>,
        hash_on: Option<HashOn>,
        health: Option<health::Settings>,
        counters: (Counter, Counter),
    ) -> Self {
        let weights: Vec<u32> = endpoints.iter().map(|e| e.weight).collect();
        let ids: Vec<&str> = endpoints.iter().map(|e| e.id.as_str()).collect();
        let balancer = Balancer::new(spec.balancer, &weights, &ids);
        let h2 = matches!(
            spec.protocol,
            crate::config::spec::ProtocolSpec::H2c | crate::config::spec::ProtocolSpec::H2
        );
        Self {
            name: name.to_owned(),
            duration: metrics().upstream_duration.with_label_values(&[name]),
            spec,
            endpoints,
            hash_on,
            health,
            tls_hash: 0,
            balancer,
            h2,
            background: AtomicBool::new(false),
            requests: counters.0,
            connections: counters.1,
            stop: tokio::sync::watch::channel(()).0,
        }
    }

    /// Starts the upstream's background work (health checks) once; needs
    /// a Tokio runtime.
    pub fn start_background(self: &Arc<Self>) {
        if !self.background.swap(true, Ordering::AcqRel) {
            health::start(self, self.stop.subscribe());
        }
    }

    /// True for h2c upstreams.
    pub fn is_h2(&self) -> bool {
        self.h2
    }

    /// The upstream's state for `GET /upstreams`.
    pub fn status(&self) -> serde_json::Value {
        use serde_json::json;
        json!({
            "name": self.name,
            "balancer": self.spec.balancer,
            "protocol": self.spec.protocol,
            "inflight": self.requests.current(),
            "connections": self.connections.current(),
            "limits": self.spec.limits,
            "health_checked": self.health.is_some(),
            "endpoints": self.endpoints.iter().map(|e| json!({
                "endpoint": e.id,
                "weight": e.weight,
                "healthy": e.healthy.load(Ordering::Relaxed),
                "circuit": e.breaker.as_ref().map_or("none", |b| b.phase().name()),
                "available": e.available(),
                "inflight": e.inflight.load(Ordering::Relaxed),
                "idle_connections": e.pool.idle_count(),
                "latency_ewma_ms": (e.stats.latency_ms() * 1000.0).round() / 1000.0,
                "error_rate_ewma": (e.stats.error_rate() * 10_000.0).round() / 10_000.0,
            })).collect::<Vec<_>>(),
        })
    }

    /// Picks an available endpoint, preferring those not in `avoid` (a
    /// bit per endpoint index, for endpoints already tried); `None` when
    /// every endpoint is open or unhealthy.
    pub fn pick(&self, key: Option<u64>, avoid: u64) -> Option<usize> {
        let n = self.endpoints.len();
        let eps = &self.endpoints;
        let avoided = |i: usize| i < 64 && avoid & (1 << i) != 0;
        let first = self
            .balancer
            .pick(n, key, |i| eps[i].inflight.load(Ordering::Relaxed));
        let ok = |i: usize| !avoided(i) && eps.get(i).is_some_and(|e| e.available());
        if ok(first) {
            return Some(first);
        }
        // Round robin: the next slots of the cycle keep the weights; other
        // balancers (and a cycle that keeps landing on skipped endpoints)
        // fall back to the next available endpoint after the first pick.
        if matches!(self.balancer, Balancer::RoundRobin { .. }) {
            for _ in 0..n {
                let i = self
                    .balancer
                    .pick(n, key, |i| eps[i].inflight.load(Ordering::Relaxed));
                if ok(i) {
                    return Some(i);
                }
            }
        }
        let any = |i: &usize| eps.get(*i).is_some_and(|e| e.available());
        (1..n)
            .map(|d| (first + d) % n)
            .find(|&i| ok(i))
            .or_else(|| (0..n).map(|d| (first + d) % n).find(any))
    }

    /// How long until an endpoint of this upstream takes a probe again.
    fn retry_after(&self) -> Duration {
        self.endpoints
            .iter()
            .filter_map(|e| e.breaker.as_ref().map(Breaker::retry_after))
            .min()
            .unwrap_or(Duration::ZERO)
    }

    /// Sends `req` (origin-form URI, `Host` set) to an endpoint picked by
    /// the balancer, before `deadline`. A connect failure is retried once on
    /// another endpoint; a dead pooled connection is replaced
    /// transparently. Every outcome is fed to the endpoint's breaker.
    pub async fn send(
        &self,
        mut req: Request<RequestBody>,
        key: Option<u64>,
        deadline: tokio::time::Instant,
        tried: &mut u64,
    ) -> Result<Sent, UpstreamError> {
        let start = Instant::now();
        let held = self
            .requests
            .take()
            .ok_or(UpstreamError::Overloaded("upstream"))?;
        let unavailable = || UpstreamError::Unavailable {
            retry_after: self.retry_after(),
        };
        let mark = |tried: &mut u64, i: usize| {
            if i < 64 {
                *tried |= 1 << i;
            }
        };
        let mut idx = self.pick(key, *tried).ok_or_else(unavailable)?;
        let mut slot = Slot::new(&self.endpoints[idx]);
        if slot.admit == Admit::No {
            // Lost a race for the last probe slot: try the others once.
            idx = self
                .pick(key, *tried | (1 << idx.min(63)))
                .ok_or_else(unavailable)?;
            slot = Slot::new(&self.endpoints[idx]);
            if slot.admit == Admit::No {
                return Err(unavailable());
            }
        }
        mark(tried, idx);
        // In flight from the pick on, so `least_request` sees requests still
        // waiting for their response head (the slow ones matter most).
        let mut inflight = InflightGuard::new(&self.endpoints[idx], held);
        let mut retried = false;
        if self.h2 {
            to_absolute_form(&mut req, &self.endpoints[idx].authority);
        }
        loop {
            let ep = &self.endpoints[idx];
            let timed_out = || UpstreamError::Timeout {
                endpoint: ep.id.clone(),
            };
            let (conn, pooled) = match ep.pool.checkout() {
                Some(c) => (c, true),
                None => match tokio::time::timeout_at(deadline, ep.pool.connect()).await {
                    Err(_) => {
                        slot.done(Some(Failure::Timeout));
                        return Err(timed_out());
                    }
                    Ok(Ok(c)) => (c, false),
                    Ok(Err(ConnectError::Overflow)) => {
                        slot.done(None);
                        return Err(UpstreamError::Overloaded("connections"));
                    }
                    Ok(Err(source)) => {
                        ep.metrics.connect_errors.inc();
                        slot.done(Some(Failure::ConnectError));
                        if !retried
                            && self.endpoints.len() > 1
                            && let Some(next) = self.pick(key, *tried)
                            && next != idx
                        {
                            let next_slot = Slot::new(&self.endpoints[next]);
                            if next_slot.admit != Admit::No {
                                retried = true;
                                idx = next;
                                mark(tried, idx);
                                slot = next_slot;
                                inflight.move_to(&self.endpoints[idx]);
                                continue;
                            }
                        }
                        return Err(UpstreamError::Connect {
                            endpoint: ep.id.clone(),
                            source,
                        });
                    }
                },
            };
            let response = match conn {
                pool::Conn::Http1(conn) => {
                    let exchange = h1::send(conn, req, &ep.id, pooled, ep.pool.max_head());
                    match tokio::time::timeout_at(deadline, exchange).await {
                        Err(_) => {
                            slot.done(Some(Failure::Timeout));
                            return Err(timed_out());
                        }
                        Ok(Ok((resp, conn))) => {
                            let (parts, mut body) = resp.into_parts();
                            if parts.status == http::StatusCode::SWITCHING_PROTOCOLS {
                                body.hold(conn);
                            } else {
                                body.attach(conn, Arc::clone(&ep.pool) as Arc<dyn h1::Recycle>);
                            }
                            Response::from_parts(parts, UpstreamBody::H1(body))
                        }
                        // Not sent: the pooled connection was dead. Try again
                        // (the next pooled one, or a fresh connection).
                        Ok(Err(Err(h1::NotSent(back)))) => {
                            req = *back;
                            continue;
                        }
                        Ok(Err(Ok(e))) => {
                            let e = SendFailure::from(e);
                            // A failing client body is not the endpoint's fault.
                            slot.done(e.body_error().is_none().then_some(Failure::Reset));
                            return Err(UpstreamError::Send {
                                endpoint: ep.id.clone(),
                                source: e,
                            });
                        }
                    }
                }
                // hyper's client: the shared h2 connection.
                pool::Conn::H2(mut tx) => {
                    match tokio::time::timeout_at(deadline, tx.try_send_request(req)).await {
                        Err(_) => {
                            slot.done(Some(Failure::Timeout));
                            return Err(timed_out());
                        }
                        Ok(Ok(resp)) => resp.map(UpstreamBody::H2),
                        Ok(Err(mut e)) => match e.take_message() {
                            Some(back) if pooled => {
                                req = back;
                                continue;
                            }
                            _ => {
                                let e = SendFailure::from(e.into_error());
                                slot.done(e.body_error().is_none().then_some(Failure::Reset));
                                return Err(UpstreamError::Send {
                                    endpoint: ep.id.clone(),
                                    source: e,
                                });
                            }
                        },
                    }
                }
            };
            let took = start.elapsed();
            self.duration.observe(took.as_secs_f64());
            let status = response.status().as_u16();
            ep.metrics.requests.inc_status(status);
            slot.done((status >= 500).then_some(Failure::Status5xx));
            return Ok(Sent {
                response,
                endpoint: Arc::clone(ep),
                took,
                inflight,
            });
        }
    }

    /// One pool sweep on every endpoint (see `Pool::evict_expired`).
    pub fn evict_expired(&self, interval: std::time::Duration) {
        for ep in &self.endpoints {
            ep.pool.evict_expired(interval);
        }
    }
}

/// h2 carries the authority in `:authority`, from the URI; `Host` must not
/// be sent alongside it (RFC 9113 §8.3.1).
fn to_absolute_form(req: &mut Request<RequestBody>, fallback: &Authority) {
    let authority = req
        .headers_mut()
        .remove(HOST)
        .and_then(|h| Authority::try_from(h.as_bytes()).ok())
        .unwrap_or_else(|| fallback.clone());
    let pq = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority);
    parts.path_and_query = Some(pq);
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
}
