//! One backend address of an upstream: its pool, breaker, health and
//! statistics, and the guards that count a request in flight on it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::uri::Authority;

use super::breaker::{self, Admit, Breaker, FailureKind};
use super::{ConnectTarget, Held, Pool};
use crate::observability::metrics::{EndpointMetrics, metrics};

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
    pub(super) authority: Authority,
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
    pub(super) fn new(ep: &Arc<Endpoint>, held: Held) -> Self {
        InflightGuard {
            ep: EndpointGuard::new(ep),
            _upstream: held,
        }
    }

    /// The same request, moved to another endpoint.
    pub(super) fn move_to(&mut self, ep: &Arc<Endpoint>) {
        self.ep = EndpointGuard::new(ep);
    }
}

/// Settings an endpoint is built with, besides its address.
pub struct EndpointParams<'a> {
    /// Upstream name (metric label).
    pub upstream: &'a str,
    /// Pool settings.
    pub target: ConnectTarget,
    /// Endpoint weight.
    pub weight: u32,
    /// HTTP/2 cleartext.
    pub h2: bool,
    /// Circuit breaker settings.
    pub breaker: Option<breaker::BreakerSettings>,
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

    fn record(&self, admit: Admit, outcome: Option<FailureKind>) {
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
pub(super) struct Slot<'a> {
    ep: &'a Endpoint,
    pub(super) admit: Admit,
    open: bool,
    started: Instant,
}

impl Slot<'_> {
    pub(super) fn new(ep: &Endpoint) -> Slot<'_> {
        Slot {
            ep,
            admit: ep.admit(),
            open: true,
            started: Instant::now(),
        }
    }

    pub(super) fn done(mut self, outcome: Option<FailureKind>) {
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
