//! Circuit breaker per endpoint: closed → open → half-open → closed.
//!
//! - **Closed:** requests flow. It opens after `consecutive_failures` in a
//!   row, or when `failure_rate` of the last `window` failed (counted only
//!   with at least `min_requests` in the window).
//! - **Open:** the balancer skips the endpoint for `open_for`, doubled on
//!   each re-trip up to `max_open_for`.
//! - **Half-open:** after that, up to `half_open_requests` probes are let
//!   through. All must succeed to close; one failure re-opens (longer).
//!
//! State sits behind a small mutex held for a few instructions, never
//! across an await. A probe that is abandoned (the client left, the route
//! timed out) gives its slot back when its `Attempt` is dropped.

use std::sync::Mutex;
use std::time::Duration;

// Tokio's clock: the same as the system's in the gateway, and one the
// tests can pause and advance.
use tokio::time::Instant;

use prometheus::{IntCounter, IntGauge};

use crate::observability::metrics::metrics;

/// Outcomes a breaker can count as failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// No connection could be made.
    ConnectError,
    /// No response head in time.
    Timeout,
    /// The connection failed mid-exchange or the response was invalid.
    Reset,
    /// A 5xx response.
    Status5xx,
}

impl FailureKind {
    fn bit(self) -> u8 {
        match self {
            FailureKind::ConnectError => 1,
            FailureKind::Timeout => 2,
            FailureKind::Reset => 4,
            FailureKind::Status5xx => 8,
        }
    }
}

/// Compiled `circuit_breaker` settings.
#[derive(Debug, Clone)]
pub struct BreakerSettings {
    /// Open after this many failures in a row (0: off).
    pub consecutive_failures: u32,
    /// Open when this share (0..=1) of the window failed (`None`: off).
    pub failure_rate: Option<f64>,
    /// Least requests in the window for the rate to count.
    pub min_requests: u32,
    /// Length of the rate window.
    pub window: Duration,
    /// First open period.
    pub open_for: Duration,
    /// Longest open period.
    pub max_open_for: Duration,
    /// Probes in half-open.
    pub half_open_requests: u32,
    /// Which failures count (bits of `FailureKind::bit`).
    pub failure_on: u8,
}

impl BreakerSettings {
    /// The failure kinds bitset from a list.
    pub fn kinds(list: &[FailureKind]) -> u8 {
        list.iter().fold(0, |acc, f| acc | f.bit())
    }
}

/// The state, as exported (`tollgate_circuit_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Requests flow.
    Closed = 0,
    /// Probing.
    HalfOpen = 1,
    /// Skipped.
    Open = 2,
}

impl Phase {
    /// Label value.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Closed => "closed",
            Phase::HalfOpen => "half_open",
            Phase::Open => "open",
        }
    }
}

/// Buckets in the rate window.
const BUCKETS: usize = 10;

#[derive(Debug, Default, Clone, Copy)]
struct Bucket {
    /// Index of the bucket period this counts (time / bucket length).
    period: u64,
    requests: u32,
    failures: u32,
}

#[derive(Debug)]
struct State {
    phase: Phase,
    consecutive: u32,
    buckets: [Bucket; BUCKETS],
    /// Open: until when.
    until: Instant,
    /// Times it opened without closing in between.
    trips: u32,
    /// Half-open: probes let through and probes that succeeded.
    probes: u32,
    succeeded: u32,
}

/// One endpoint's breaker.
pub struct Breaker {
    label: String,
    settings: BreakerSettings,
    state: Mutex<State>,
    epoch: Instant,
    gauge: IntGauge,
    to: [IntCounter; 3],
}

/// Whether a request may go to the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Yes (closed).
    Yes,
    /// Yes, as one of the half-open probes.
    Probe,
    /// No: open, or the probes are taken.
    No,
}

impl Breaker {
    /// A closed breaker for `endpoint` of `upstream`.
    pub fn new(settings: BreakerSettings, upstream: &str, endpoint: &str) -> Self {
        let m = metrics();
        let gauge = m.circuit_state.with_label_values(&[upstream, endpoint]);
        gauge.set(0);
        let to = [Phase::Closed, Phase::HalfOpen, Phase::Open].map(|p| {
            m.circuit_transitions
                .with_label_values(&[upstream, endpoint, p.name()])
        });
        let now = Instant::now();
        Self {
            label: format!("{upstream}/{endpoint}"),
            settings,
            state: Mutex::new(State {
                phase: Phase::Closed,
                consecutive: 0,
                buckets: [Bucket::default(); BUCKETS],
                until: now,
                trips: 0,
                probes: 0,
                succeeded: 0,
            }),
            epoch: now,
            gauge,
            to,
        }
    }

    /// The current phase (an open breaker whose time is up reads half-open).
    pub fn phase(&self) -> Phase {
        let now = Instant::now();
        self.state.lock().map_or(Phase::Closed, |s| match s.phase {
            Phase::Open if now >= s.until => Phase::HalfOpen,
            p => p,
        })
    }

    /// True when `admit` could say yes now (for the balancer; no slot taken).
    pub fn available(&self) -> bool {
        let now = Instant::now();
        self.state.lock().is_ok_and(|s| match s.phase {
            Phase::Closed => true,
            Phase::Open => now >= s.until,
            Phase::HalfOpen => s.probes < self.settings.half_open_requests,
        })
    }

    /// Takes a slot for one request.
    pub fn admit(&self) -> Admit {
        let now = Instant::now();
        let Ok(mut s) = self.state.lock() else {
            return Admit::Yes;
        };
        match s.phase {
            Phase::Closed => Admit::Yes,
            Phase::Open if now < s.until => Admit::No,
            Phase::Open => {
                self.enter(&mut s, Phase::HalfOpen);
                s.probes = 1;
                s.succeeded = 0;
                Admit::Probe
            }
            Phase::HalfOpen if s.probes < self.settings.half_open_requests => {
                s.probes += 1;
                Admit::Probe
            }
            Phase::HalfOpen => Admit::No,
        }
    }

    /// Seconds until an open breaker lets a probe through (for `Retry-After`).
    pub fn retry_after(&self) -> Duration {
        let now = Instant::now();
        self.state.lock().map_or(Duration::ZERO, |s| match s.phase {
            Phase::Open => s.until.saturating_duration_since(now),
            _ => Duration::ZERO,
        })
    }

    /// Records the outcome of a request admitted as `admit`.
    pub fn record(&self, admit: Admit, outcome: Option<FailureKind>) {
        let failed = outcome.is_some_and(|f| self.settings.failure_on & f.bit() != 0);
        let now = Instant::now();
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        match (s.phase, admit) {
            (Phase::HalfOpen, Admit::Probe) => {
                if failed {
                    self.open(&mut s, now);
                } else {
                    s.succeeded += 1;
                    if s.succeeded >= self.settings.half_open_requests {
                        s.trips = 0;
                        s.consecutive = 0;
                        s.buckets = [Bucket::default(); BUCKETS];
                        self.enter(&mut s, Phase::Closed);
                    }
                }
            }
            (Phase::Closed, _) => {
                s.consecutive = if failed { s.consecutive + 1 } else { 0 };
                let (requests, failures) = self.count(&mut s, now, failed);
                let by_streak = self.settings.consecutive_failures > 0
                    && s.consecutive >= self.settings.consecutive_failures;
                let by_rate = self.settings.failure_rate.is_some_and(|rate| {
                    requests >= self.settings.min_requests
                        && f64::from(failures) >= rate * f64::from(requests)
                });
                if failed && (by_streak || by_rate) {
                    self.open(&mut s, now);
                }
            }
            // A late answer from before the breaker opened, or a request
            // that was not a probe: nothing to learn.
            _ => {}
        }
    }

    /// Gives back a probe slot that will never be recorded.
    pub fn release(&self, admit: Admit) {
        if admit != Admit::Probe {
            return;
        }
        if let Ok(mut s) = self.state.lock()
            && s.phase == Phase::HalfOpen
        {
            s.probes = s.probes.saturating_sub(1);
        }
    }

    fn count(&self, s: &mut State, now: Instant, failed: bool) -> (u32, u32) {
        let len = (self.settings.window / BUCKETS as u32).max(Duration::from_millis(1));
        let period = (now.duration_since(self.epoch).as_nanos() / len.as_nanos()) as u64;
        let slot = (period % BUCKETS as u64) as usize;
        if let Some(b) = s.buckets.get_mut(slot) {
            if b.period != period {
                *b = Bucket {
                    period,
                    requests: 0,
                    failures: 0,
                };
            }
            b.requests += 1;
            b.failures += u32::from(failed);
        }
        s.buckets
            .iter()
            .filter(|b| period.saturating_sub(b.period) < BUCKETS as u64)
            .fold((0, 0), |(r, f), b| (r + b.requests, f + b.failures))
    }

    fn open(&self, s: &mut State, now: Instant) {
        let factor = 1u32 << s.trips.min(16);
        let period = self
            .settings
            .open_for
            .saturating_mul(factor)
            .min(self.settings.max_open_for);
        s.until = now + period;
        s.trips = s.trips.saturating_add(1);
        s.probes = 0;
        s.succeeded = 0;
        self.enter(s, Phase::Open);
    }

    fn enter(&self, s: &mut State, phase: Phase) {
        if s.phase == phase {
            return;
        }
        s.phase = phase;
        self.gauge.set(phase as i64);
        if let Some(c) = self.to.get(match phase {
            Phase::Closed => 0,
            Phase::HalfOpen => 1,
            Phase::Open => 2,
        }) {
            c.inc();
        }
        tracing::info!(endpoint = %self.label, to = phase.name(), "circuit breaker");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BreakerSettings {
        BreakerSettings {
            consecutive_failures: 3,
            failure_rate: None,
            min_requests: 20,
            window: Duration::from_secs(10),
            open_for: Duration::from_millis(30),
            max_open_for: Duration::from_millis(100),
            half_open_requests: 2,
            failure_on: BreakerSettings::kinds(&[
                FailureKind::ConnectError,
                FailureKind::Status5xx,
            ]),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_on_a_streak_probes_and_closes() {
        let b = Breaker::new(settings(), "t", "a");
        for _ in 0..2 {
            b.record(b.admit(), Some(FailureKind::ConnectError));
        }
        b.record(b.admit(), None); // the streak is broken
        for _ in 0..2 {
            b.record(b.admit(), Some(FailureKind::Status5xx));
        }
        assert_eq!(b.phase(), Phase::Closed);
        // Timeouts are not in failure_on: an outcome that does not count as
        // a failure counts as a success and ends the streak.
        b.record(b.admit(), Some(FailureKind::Timeout));
        assert_eq!(b.phase(), Phase::Closed);
        for _ in 0..2 {
            b.record(b.admit(), Some(FailureKind::Status5xx));
        }
        assert_eq!(b.phase(), Phase::Closed);
        b.record(b.admit(), Some(FailureKind::Status5xx));
        assert_eq!(b.phase(), Phase::Open);
        assert_eq!(b.admit(), Admit::No);
        tokio::time::advance(Duration::from_millis(29)).await;
        assert_eq!(b.admit(), Admit::No, "open for the whole open_for");
        tokio::time::advance(Duration::from_millis(1)).await;
        let p1 = b.admit();
        let p2 = b.admit();
        assert_eq!((p1, p2, b.admit()), (Admit::Probe, Admit::Probe, Admit::No));
        b.record(p1, None);
        assert_eq!(b.phase(), Phase::HalfOpen);
        b.record(p2, None);
        assert_eq!(b.phase(), Phase::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_for_longer_up_to_the_cap() {
        let b = Breaker::new(settings(), "t", "b");
        for _ in 0..3 {
            b.record(b.admit(), Some(FailureKind::ConnectError));
        }
        assert_eq!(b.retry_after(), Duration::from_millis(30));
        tokio::time::advance(Duration::from_millis(30)).await;
        let p = b.admit();
        assert_eq!(p, Admit::Probe);
        b.record(p, Some(FailureKind::ConnectError));
        assert_eq!(b.phase(), Phase::Open);
        assert_eq!(b.retry_after(), Duration::from_millis(60), "doubled");
        tokio::time::advance(Duration::from_millis(60)).await;
        b.record(b.admit(), Some(FailureKind::ConnectError));
        assert_eq!(b.retry_after(), Duration::from_millis(100), "capped");
    }

    #[test]
    fn failure_rate_needs_min_requests() {
        let mut s = settings();
        s.consecutive_failures = 0;
        s.failure_rate = Some(0.5);
        s.min_requests = 10;
        let b = Breaker::new(s, "t", "c");
        for i in 0..9 {
            b.record(b.admit(), (i % 2 == 0).then_some(FailureKind::Status5xx));
        }
        assert_eq!(b.phase(), Phase::Closed, "9 requests: below min_requests");
        b.record(b.admit(), Some(FailureKind::Status5xx));
        assert_eq!(b.phase(), Phase::Open, "6 of 10 failed");
    }

    #[tokio::test(start_paused = true)]
    async fn released_probes_free_their_slot() {
        let b = Breaker::new(settings(), "t", "d");
        for _ in 0..3 {
            b.record(b.admit(), Some(FailureKind::ConnectError));
        }
        tokio::time::advance(Duration::from_millis(30)).await;
        let (p1, p2) = (b.admit(), b.admit());
        assert_eq!(b.admit(), Admit::No);
        b.release(p1);
        assert_eq!(b.admit(), Admit::Probe);
        b.release(p2);
    }
}
