//! A compiled `rate_limits.NAME`: its limiters (the default shape and one
//! per override), where its buckets live (this process, or Redis for
//! `scope: global`, with `on_error`), shadow mode and keyless requests.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;

use super::limiter::Limiter;
use super::{Definition, LimitKeyPart, Shape, Verdict, global};

/// How a policy is built, beyond its key and shapes.
pub struct PolicyOptions {
    /// Most keys tracked per limiter.
    pub max_keys: u64,
    /// Count only, reject nothing.
    pub shadow: bool,
    /// Send headers on allowed responses.
    pub headers: bool,
    /// The definition's digest.
    pub definition: Definition,
}

#[cfg(test)]
impl PolicyOptions {
    /// Local, enforcing, with headers, 1,000 keys.
    pub(super) fn for_tests() -> Self {
        PolicyOptions {
            max_keys: 1000,
            shadow: false,
            headers: true,
            definition: Definition::of("t"),
        }
    }
}

/// A policy's answer for one request.
#[derive(Debug, Clone, Copy)]
pub enum Checked {
    /// The bucket's verdict.
    Verdict(Verdict),
    /// Redis failed; `on_error` gave this verdict (`local` or `allow`).
    Fallback(Verdict),
    /// Redis failed and `on_error: deny`.
    Unavailable,
}

/// What a request is missing a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// Refuse (401 with auth on the route, else 429).
    Reject,
    /// One shared bucket.
    Shared,
    /// Not limited.
    Skip,
}

/// A compiled `rate_limits.NAME`.
pub struct Policy {
    /// Name (metric label, header policy name).
    pub name: String,
    /// The definition's digest (an unchanged policy keeps its buckets
    /// across reloads).
    pub definition: Definition,
    /// Key parts, in order.
    pub key: Vec<LimitKeyPart>,
    /// Count only, reject nothing.
    pub shadow: bool,
    /// Keyless requests.
    pub missing: Missing,
    /// Send headers on allowed responses.
    pub headers: bool,
    /// Runs after authentication (keyed on identity).
    pub after_auth: bool,
    default: Limiter,
    pub(super) overrides: HashMap<String, Limiter>,
    /// Redis, for `scope: global`.
    pub global: Option<Arc<global::Redis>>,
    /// `RateLimit-Policy` and `X-RateLimit-Limit` per bucket shape, made once.
    pub(super) fixed_headers: Vec<(Shape, HeaderValue, HeaderValue)>,
    /// When the last shadow-mode line was logged (at most one a second).
    last_log: std::sync::atomic::AtomicU64,
    epoch: std::time::Instant,
}

impl Policy {
    /// A policy; `None` when a shape cannot be expressed.
    pub fn new(
        name: &str,
        o: PolicyOptions,
        key: Vec<LimitKeyPart>,
        default: Shape,
        overrides: Vec<(String, Shape)>,
        missing: Missing,
    ) -> Option<Self> {
        let max_keys = o.max_keys;
        let mut map = HashMap::new();
        for (value, shape) in overrides {
            map.insert(value, Limiter::new(shape, max_keys)?);
        }
        Some(Self {
            name: name.to_owned(),
            shadow: o.shadow,
            headers: o.headers,
            after_auth: key.iter().any(LimitKeyPart::needs_identity),
            default: Limiter::new(default, max_keys)?,
            fixed_headers: std::iter::once(default)
                .chain(map.values().map(|l| l.shape))
                .filter_map(|shape| {
                    let w = shape.window.as_secs().max(1);
                    let policy =
                        HeaderValue::try_from(format!("\"{name}\";q={};w={w}", shape.count))
                            .ok()?;
                    Some((shape, policy, HeaderValue::from(shape.burst)))
                })
                .collect(),
            overrides: map,
            global: None,
            last_log: std::sync::atomic::AtomicU64::new(0),
            epoch: std::time::Instant::now(),
            definition: o.definition,
            key,
            missing,
        })
    }

    /// The local check (this process's bucket), without Redis: what a
    /// `local` policy decides, and what `on_error: local` falls back to.
    pub fn check_local(&self, key: &String) -> Verdict {
        let first = key.split('\u{1f}').next().unwrap_or("");
        self.overrides
            .get(first)
            .unwrap_or(&self.default)
            .check(key)
    }

    /// Takes one request from the bucket of `key`. The override limiter
    /// is chosen by the key's first part (the tenant, for plans). A global
    /// policy asks Redis; when Redis fails, `on_error` decides (`None`:
    /// deny).
    pub async fn check(&self, key: &String) -> Checked {
        let first = key.split('\u{1f}').next().unwrap_or("");
        let limiter = self.overrides.get(first).unwrap_or(&self.default);
        let checked = match &self.global {
            None => Checked::Verdict(self.check_local(key)),
            Some(redis) => {
                let shape = limiter.shape;
                match redis
                    .take(&self.name, key, shape.interval(), shape.burst)
                    .await
                {
                    Some(b) => Checked::Verdict(Verdict {
                        allowed: b.allowed,
                        remaining: b.remaining,
                        burst: shape.burst,
                        retry_after: b.retry_after,
                        reset: b.used,
                        shape,
                    }),
                    None => match redis.settings.on_error {
                        global::OnError::Local => Checked::Fallback(self.check_local(key)),
                        global::OnError::Allow => Checked::Fallback(Verdict {
                            allowed: true,
                            remaining: shape.burst,
                            burst: shape.burst,
                            retry_after: Duration::ZERO,
                            reset: Duration::ZERO,
                            shape,
                        }),
                        global::OnError::Deny => Checked::Unavailable,
                    },
                }
            }
        };
        if let Checked::Verdict(v) | Checked::Fallback(v) = &checked
            && !v.allowed
            && self.shadow
            && self.log_now()
        {
            tracing::info!(policy = %self.name, "rate limit exceeded (shadow mode: let through; logged at most once a second)");
        }
        checked
    }

    /// True at most once a second (rate-limited log lines).
    fn log_now(&self) -> bool {
        use std::sync::atomic::Ordering;
        let now = self.epoch.elapsed().as_secs() + 1;
        let last = self.last_log.load(Ordering::Relaxed);
        now > last
            && self
                .last_log
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Keys tracked by the policy's limiters.
    pub fn keys(&self) -> u64 {
        self.default.governor.len() as u64
            + self
                .overrides
                .values()
                .map(|l| l.governor.len() as u64)
                .sum::<u64>()
    }

    /// Runs the limiters' pending evictions.
    pub fn sweep(&self) {
        self.default.governor.retain_recent();
        for l in self.overrides.values() {
            l.governor.retain_recent();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Local policies decide without awaiting: checks run on a tiny
    /// runtime so the tests stay plain functions.
    struct Sync(Policy);

    impl Sync {
        fn check(&self, key: &String) -> Verdict {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            match rt.block_on(self.0.check(key)) {
                Checked::Verdict(v) => v,
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_policy_answers_from_its_default_bucket() {
        let shape = Shape {
            count: 10,
            window: Duration::from_secs(1),
            burst: 5,
        };
        let p = Policy::new(
            "t",
            PolicyOptions::for_tests(),
            vec![LimitKeyPart::ClientIp],
            shape,
            vec![],
            Missing::Reject,
        )
        .unwrap();
        let p = Sync(p);
        let k = "1.2.3.4".to_owned();
        let mut remaining = Vec::new();
        for _ in 0..5 {
            let v = p.check(&k);
            assert!(v.allowed);
            remaining.push(v.remaining);
        }
        assert_eq!(remaining, vec![4, 3, 2, 1, 0]);
        let v = p.check(&k);
        assert!(!v.allowed);
        assert!(v.retry_after > Duration::ZERO && v.retry_after <= Duration::from_millis(100));
        // Another key has its own bucket.
        assert!(p.check(&"5.6.7.8".to_owned()).allowed);
    }

    #[test]
    fn overrides_follow_the_first_key_part() {
        let shape = Shape {
            count: 1,
            window: Duration::from_secs(60),
            burst: 1,
        };
        let big = Shape {
            count: 100,
            window: Duration::from_secs(1),
            burst: 100,
        };
        let p = Policy::new(
            "t",
            PolicyOptions::for_tests(),
            vec![LimitKeyPart::Tenant, LimitKeyPart::Route],
            shape,
            vec![("acme".into(), big)],
            Missing::Reject,
        )
        .unwrap();
        let p = Sync(p);
        let free = "free\u{1f}r".to_owned();
        assert!(p.check(&free).allowed);
        assert!(!p.check(&free).allowed);
        let acme = "acme\u{1f}r".to_owned();
        assert!((0..50).all(|_| p.check(&acme).allowed));
    }
}
