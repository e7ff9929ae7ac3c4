//! One token bucket shape and its buckets: governor's GCRA limiter over a
//! bounded key store, and the verdict it gives for one request.

use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::{NoOpMiddleware, StateInformationMiddleware};
use governor::{Quota, RateLimiter};

use super::store::BoundedStore;

/// `N/s`, `N/min`, `N/h` → (N, window).
pub fn parse_rate(text: &str) -> Result<(u32, Duration), String> {
    let (n, unit) = text
        .trim()
        .split_once('/')
        .ok_or_else(|| format!("`{text}`: write N/s, N/min or N/h"))?;
    let n: u32 = n
        .trim()
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("`{text}`: the count must be a whole number above 0"))?;
    let window = match unit.trim() {
        "s" | "sec" | "second" => Duration::from_secs(1),
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        u => return Err(format!("`{text}`: unknown unit `{u}` (s, min, h)")),
    };
    Ok((n, window))
}

/// A bucket shape: `count` per `window`, holding at most `burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    /// Requests per window.
    pub count: u32,
    /// The window.
    pub window: Duration,
    /// Bucket size.
    pub burst: u32,
}

impl Shape {
    fn quota(&self) -> Option<Quota> {
        let period = self.window / self.count;
        let burst = std::num::NonZeroU32::new(self.burst)?;
        Quota::with_period(period).map(|q| q.allow_burst(burst))
    }

    /// Time to refill one request.
    pub(super) fn interval(&self) -> Duration {
        self.window / self.count
    }
}

/// What one policy said about one request.
#[derive(Debug, Clone, Copy)]
pub struct Verdict {
    /// Let through.
    pub allowed: bool,
    /// Requests left in the bucket.
    pub remaining: u32,
    /// Bucket size.
    pub burst: u32,
    /// Until the next request would be allowed (limited only).
    pub retry_after: Duration,
    /// Until the bucket is full again.
    pub reset: Duration,
    /// The bucket's shape (for `RateLimit-Policy`).
    pub shape: Shape,
}

type Governor<C> = RateLimiter<String, BoundedStore, C, StateInformationMiddleware>;

/// One limiter (a shape and its buckets), on a clock: the real one in the
/// gateway, a fake one in tests.
pub(super) struct Limiter<C: Clock = DefaultClock> {
    pub(super) shape: Shape,
    pub(super) governor: Governor<C>,
}

impl Limiter {
    pub(super) fn new(shape: Shape, max_keys: u64) -> Option<Self> {
        Self::with_clock(shape, max_keys, DefaultClock::default())
    }
}

impl<C: Clock> Limiter<C> {
    fn with_clock(shape: Shape, max_keys: u64, clock: C) -> Option<Self> {
        let quota = shape.quota()?;
        // A key idle for the time a whole bucket refills is back to fresh.
        let idle = shape.interval() * shape.burst;
        let governor = RateLimiter::<String, BoundedStore, C, NoOpMiddleware<C::Instant>>::new(
            quota,
            BoundedStore::new(max_keys, idle),
            clock,
        )
        .with_middleware::<StateInformationMiddleware>();
        Some(Self { shape, governor })
    }

    pub(super) fn check(&self, key: &String) -> Verdict {
        match self.governor.check_key(key) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                Verdict {
                    allowed: true,
                    remaining,
                    burst: self.shape.burst,
                    retry_after: Duration::ZERO,
                    reset: self.shape.interval()
                        * (self.shape.burst - remaining.min(self.shape.burst)),
                    shape: self.shape,
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.governor.clock().now());
                Verdict {
                    allowed: false,
                    remaining: 0,
                    burst: self.shape.burst,
                    retry_after: wait,
                    reset: self.shape.interval() * self.shape.burst,
                    shape: self.shape,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("100/s").unwrap(), (100, Duration::from_secs(1)));
        assert_eq!(parse_rate("5/min").unwrap(), (5, Duration::from_secs(60)));
        assert_eq!(parse_rate("2/h").unwrap(), (2, Duration::from_secs(3600)));
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("10/day").is_err());
        assert!(parse_rate("ten").is_err());
    }

    /// The bucket maths on a fake clock: the burst, the wait the refusal
    /// names, the refill one interval at a time, and a full bucket after
    /// a whole refill time.
    #[test]
    fn a_bucket_allows_its_burst_then_refills_one_interval_at_a_time() {
        let shape = Shape {
            count: 10,
            window: Duration::from_secs(1),
            burst: 5,
        };
        let clock = FakeRelativeClock::default();
        let l = Limiter::with_clock(shape, 100, clock.clone()).unwrap();
        let k = "1.2.3.4".to_owned();
        let remaining: Vec<u32> = (0..5)
            .map(|_| l.check(&k))
            .map(|v| {
                assert!(v.allowed);
                v.remaining
            })
            .collect();
        assert_eq!(remaining, vec![4, 3, 2, 1, 0]);
        let v = l.check(&k);
        assert!(!v.allowed);
        assert_eq!(v.retry_after, Duration::from_millis(100));
        assert_eq!(v.reset, Duration::from_millis(500));
        // Another key has its own bucket.
        assert!(l.check(&"5.6.7.8".to_owned()).allowed);
        clock.advance(Duration::from_millis(99));
        assert!(!l.check(&k).allowed, "not a moment early");
        clock.advance(Duration::from_millis(1));
        let v = l.check(&k);
        assert!(v.allowed);
        assert_eq!(v.remaining, 0);
        assert!(!l.check(&k).allowed);
        clock.advance(Duration::from_secs(1));
        let v = l.check(&k);
        assert!(v.allowed);
        assert_eq!(v.remaining, 4, "a full bucket again, not more");
    }
}
