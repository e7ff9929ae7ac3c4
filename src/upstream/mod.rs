//! Upstreams: named groups of endpoints with a balancer and per-endpoint
//! connection pools (stage 7, `forward`).
//!
//! An `Upstream` is built by `config::compile` and shared by `Arc`; a reload
//! that leaves an upstream's definition unchanged reuses the same `Arc`, so
//! its pools stay warm.

pub(crate) mod balance;
pub(crate) mod breaker;
pub(crate) mod counter;
mod endpoint;
mod error;
pub(crate) mod h1;
pub(crate) mod health;
pub(crate) mod mirror;
pub(crate) mod pool;
pub(crate) mod retry;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderName, Request, Response, Uri};
use hyper::body::Incoming;
use prometheus::Histogram;

use crate::body::RequestBody;
use crate::config::Definition;
use crate::observability::metrics::metrics;
pub(crate) use balance::{Balancer, BalancerKind};
use breaker::{Admit, Breaker, FailureKind};
pub(crate) use counter::{Counter, Held};
use endpoint::Slot;
pub(crate) use endpoint::{Endpoint, EndpointParams, InflightGuard};
pub(crate) use error::{ConnectError, SendFailure, UpstreamError};
pub(crate) use pool::{ConnectTarget, Pool};

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

/// A named group of endpoints.
pub struct Upstream {
    /// Config name.
    pub name: String,
    /// The definition's digest (an unchanged upstream keeps its pools,
    /// breakers and health state across reloads).
    pub definition: Definition,
    /// Endpoints, in config order.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// What `consistent_hash` hashes.
    pub hash_on: Option<HashOn>,
    /// Active health check settings.
    pub health: Option<health::HealthCheck>,
    /// Hash of the TLS files read (compared on reload with `spec`).
    pub tls_hash: u64,
    balancer: Balancer,
    kind: BalancerKind,
    protocol: Protocol,
    duration: Histogram,
    background: AtomicBool,
    /// Requests in flight, capped at `limits.max_inflight`.
    pub requests: Counter,
    /// Open HTTP/1.1 connections, capped at `limits.max_connections`.
    pub connections: Counter,
    /// Dropped with the upstream: ends its health checker.
    stop: tokio::sync::watch::Sender<()>,
}

/// The wire protocol to an upstream's endpoints (`protocol:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 with a keep-alive pool (plain or TLS).
    Http1,
    /// HTTP/2 cleartext with prior knowledge.
    H2c,
    /// HTTP/2 over TLS (ALPN h2).
    H2,
}

impl Protocol {
    /// The name the config uses.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::H2c => "h2c",
            Protocol::H2 => "h2",
        }
    }
}

/// What `Upstream::new` assembles, beyond its endpoints.
pub struct UpstreamParams {
    /// The definition's digest.
    pub definition: Definition,
    /// The balancer.
    pub balancer: BalancerKind,
    /// The wire protocol.
    pub protocol: Protocol,
    /// What `consistent_hash` hashes.
    pub hash_on: Option<HashOn>,
    /// Active health checks.
    pub health: Option<health::HealthCheck>,
    /// Requests in flight and open connections, with their caps.
    pub counters: (Counter, Counter),
}

/// A streamed upstream response body.
pub enum UpstreamBody {
    /// Read by our HTTP/1.1 codec.
    H1(h1::Body1),
    /// Read by hyper's client (h2c, h2 over TLS).
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

impl Upstream {
    /// Assembles an upstream from built endpoints.
    pub fn new(name: &str, endpoints: Vec<Arc<Endpoint>>, p: UpstreamParams) -> Self {
        let weights: Vec<u32> = endpoints.iter().map(|e| e.weight).collect();
        let ids: Vec<&str> = endpoints.iter().map(|e| e.id.as_str()).collect();
        let balancer = Balancer::new(p.balancer, &weights, &ids);
        Self {
            name: name.to_owned(),
            duration: metrics().upstream_duration.with_label_values(&[name]),
            definition: p.definition,
            endpoints,
            hash_on: p.hash_on,
            health: p.health,
            tls_hash: 0,
            balancer,
            kind: p.balancer,
            protocol: p.protocol,
            background: AtomicBool::new(false),
            requests: p.counters.0,
            connections: p.counters.1,
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

    /// True for h2 and h2c upstreams.
    pub fn is_h2(&self) -> bool {
        self.protocol != Protocol::Http1
    }

    /// The upstream's state for `GET /upstreams`.
    pub fn status(&self) -> serde_json::Value {
        use serde_json::json;
        json!({
            "name": self.name,
            "balancer": self.kind.name(),
            "protocol": self.protocol.name(),
            "inflight": self.requests.current(),
            "connections": self.connections.current(),
            "limits": {
                "max_connections": self.connections.max(),
                "max_inflight": self.requests.max(),
            },
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
        if self.is_h2() {
            to_absolute_form(&mut req, &self.endpoints[idx].authority);
        }
        loop {
            let ep = &self.endpoints[idx];
            let timed_out = || UpstreamError::Timeout {
                endpoint: ep.id.clone(),
            };
            let (conn, pooled) = match ep.pool.checkout() {
                Some(c) => (c, true),
                // Boxed: a connect (TCP, maybe TLS) is the largest state
                // of this future (6.8 KB) and the rare path; inline, every
                // request would move it (this future is boxed per try).
                None => {
                    match tokio::time::timeout_at(deadline, Box::pin(ep.pool.connect())).await {
                        Err(_) => {
                            slot.done(Some(FailureKind::Timeout));
                            return Err(timed_out());
                        }
                        Ok(Ok(c)) => (c, false),
                        Ok(Err(ConnectError::Overflow)) => {
                            slot.done(None);
                            return Err(UpstreamError::Overloaded("connections"));
                        }
                        Ok(Err(source)) => {
                            ep.metrics.connect_errors.inc();
                            slot.done(Some(FailureKind::ConnectError));
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
                    }
                }
            };
            let response = match conn {
                pool::Pooled::Http1(conn) => {
                    let exchange = h1::send(conn, req, &ep.id, pooled, ep.pool.max_head());
                    match tokio::time::timeout_at(deadline, exchange).await {
                        Err(_) => {
                            slot.done(Some(FailureKind::Timeout));
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
                            slot.done(e.body_error().is_none().then_some(FailureKind::Reset));
                            return Err(UpstreamError::Send {
                                endpoint: ep.id.clone(),
                                source: e,
                            });
                        }
                    }
                }
                // hyper's client: the shared h2 connection.
                pool::Pooled::H2(mut tx) => {
                    match tokio::time::timeout_at(deadline, tx.try_send_request(req)).await {
                        Err(_) => {
                            slot.done(Some(FailureKind::Timeout));
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
                                slot.done(e.body_error().is_none().then_some(FailureKind::Reset));
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
            slot.done((status >= 500).then_some(FailureKind::Status5xx));
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
