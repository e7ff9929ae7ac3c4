//! Rate limiting (pipeline stages 3 and 4): token buckets per key, one
//! governor GCRA limiter per policy (plus one per override), built when
//! the config is compiled and carried over by reloads that leave the
//! policy unchanged.
//!
//! A route lists policies; every one must allow. Policies whose key needs
//! no identity (`client_ip`, `header:`, `route`) run before
//! authentication, so a flood of bad tokens is cut before any signature is
//! checked; those keyed on `tenant` or `claim:` run right after it.

pub mod global;
pub mod store;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::{Quota, RateLimiter};
use http::{HeaderMap, HeaderName, HeaderValue};
use prometheus::IntCounter;

use self::store::BoundedStore;
use crate::auth::{Identity, claim_at};
use crate::config::spec::RateLimitSpec;
use crate::observability::metrics::metrics;

/// One part of a bucket key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    /// The verified token's tenant.
    Tenant,
    /// The client address (IPv6 grouped by /64).
    ClientIp,
    /// A request header's value.
    Header(HeaderName),
    /// A claim of the verified token (dotted path).
    Claim(Vec<String>),
    /// The route's name.
    Route,
}

impl KeyPart {
    /// Parses `tenant`, `client_ip`, `header:NAME`, `claim:NAME` or `route`.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.split_once(':') {
            None if text == "tenant" => Ok(KeyPart::Tenant),
            None if text == "client_ip" => Ok(KeyPart::ClientIp),
            None if text == "route" => Ok(KeyPart::Route),
            Some(("header", name)) => HeaderName::try_from(name.trim())
                .map(KeyPart::Header)
                .map_err(|_| format!("`{name}` is not a header name")),
            Some(("claim", path)) if path.split('.').all(|p| !p.is_empty()) => {
                Ok(KeyPart::Claim(path.split('.').map(str::to_owned).collect()))
            }
            _ => Err(format!(
                "`{text}`: use tenant, client_ip, header:NAME, claim:NAME or route"
            )),
        }
    }

    fn needs_identity(&self) -> bool {
        matches!(self, KeyPart::Tenant | KeyPart::Claim(_))
    }
}

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
    fn interval(&self) -> Duration {
        self.window / self.count
    }
}

/// Longest rate-limit key kept as it is; longer ones are kept as a
/// 128-bit digest (33 bytes). With every key this short, `max_keys`
/// bounds a policy's memory: about 250 bytes a key (`store.rs`).
pub const MAX_KEY_BYTES: usize = 64;

type Governor = RateLimiter<String, BoundedStore, DefaultClock, StateInformationMiddleware>;

/// One limiter (a shape and its buckets).
struct Limiter {
    shape: Shape,
    governor: Governor,
}

impl Limiter {
    fn new(shape: Shape, max_keys: u64) -> Option<Self> {
        let quota = shape.quota()?;
        // A key idle for the time a whole bucket refills is back to fresh.
        let idle = shape.interval() * shape.burst;
        let governor: Governor = RateLimiter::<String, BoundedStore, DefaultClock>::new(
            quota,
            BoundedStore::new(max_keys, idle),
            DefaultClock::default(),
        )
        .with_middleware::<StateInformationMiddleware>();
        Some(Self { shape, governor })
    }

    fn check(&self, key: &String) -> Verdict {
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
    /// The definition (compared on reload).
    pub spec: RateLimitSpec,
    /// Key parts, in order.
    pub key: Vec<KeyPart>,
    /// Count only, reject nothing.
    pub shadow: bool,
    /// Keyless requests.
    pub missing: Missing,
    /// Send headers on allowed responses.
    pub headers: bool,
    /// Runs after authentication (keyed on identity).
    pub after_auth: bool,
    default: Limiter,
    overrides: HashMap<String, Limiter>,
    /// Redis, for `scope: global`.
    pub global: Option<Arc<global::Redis>>,
    /// `RateLimit-Policy` and `X-RateLimit-Limit` per bucket shape, made once.
    fixed_headers: Vec<(Shape, HeaderValue, HeaderValue)>,
    /// When the last shadow-mode line was logged (at most one a second).
    last_log: std::sync::atomic::AtomicU64,
    epoch: std::time::Instant,
}

/// What the request looks like to the key builder.
pub struct KeyInput<'a> {
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// Client address.
    pub client: IpAddr,
    /// Route name.
    pub route: &'a str,
    /// Verified identity, when authenticated.
    pub identity: Option<&'a Identity>,
}

/// Why a key could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    /// A part is absent or empty.
    Missing,
    /// A key header was sent more than once (400).
    Repeated,
}

impl Policy {
    /// A policy; `None` when a shape cannot be expressed.
    pub fn new(
        name: &str,
        spec: RateLimitSpec,
        key: Vec<KeyPart>,
        default: Shape,
        overrides: Vec<(String, Shape)>,
        missing: Missing,
    ) -> Option<Self> {
        let max_keys = spec.max_keys;
        let mut map = HashMap::new();
        for (value, shape) in overrides {
            map.insert(value, Limiter::new(shape, max_keys)?);
        }
        Some(Self {
            name: name.to_owned(),
            shadow: spec.mode == crate::config::spec::RateModeSpec::Shadow,
            headers: spec.headers,
            after_auth: key.iter().any(KeyPart::needs_identity),
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
            spec,
            key,
            missing,
        })
    }

    /// The bucket key for a request.
    pub fn key(&self, input: &KeyInput<'_>) -> Result<String, KeyError> {
        let mut out = String::new();
        for (i, part) in self.key.iter().enumerate() {
            if i > 0 {
                out.push('\u{1f}');
            }
            match part {
                KeyPart::Tenant => {
                    let t = input
                        .identity
                        .and_then(|id| id.tenant.as_deref())
                        .filter(|t| !t.is_empty())
                        .ok_or(KeyError::Missing)?;
                    out.push_str(t);
                }
                KeyPart::ClientIp => push_ip(&mut out, input.client),
                KeyPart::Header(name) => {
                    let mut values = input.headers.get_all(name).iter();
                    let v = values.next().ok_or(KeyError::Missing)?;
                    if values.next().is_some() {
                        return Err(KeyError::Repeated);
                    }
                    let v = v.to_str().map_err(|_| KeyError::Missing)?.trim();
                    if v.is_empty() {
                        return Err(KeyError::Missing);
                    }
                    out.push_str(v);
                }
                KeyPart::Claim(path) => {
                    let v = input
                        .identity
                        .and_then(|id| claim_at(&id.claims, path))
                        .ok_or(KeyError::Missing)?;
                    match v {
                        serde_json::Value::String(s) if !s.is_empty() => out.push_str(s),
                        serde_json::Value::Number(n) => out.push_str(&n.to_string()),
                        serde_json::Value::Bool(b) => {
                            out.push_str(if *b { "true" } else { "false" })
                        }
                        _ => return Err(KeyError::Missing),
                    }
                }
                KeyPart::Route => out.push_str(input.route),
            }
        }
        Ok(self.compact(out))
    }

    /// A key longer than `MAX_KEY_BYTES` is kept as a digest, so what a
    /// client sends (a 32 KiB header value) never decides how much memory
    /// a key takes, here or in Redis. A first part that names an override
    /// (a configured tenant plan) stays readable, as the override is
    /// chosen by it.
    fn compact(&self, key: String) -> String {
        if key.len() <= MAX_KEY_BYTES {
            return key;
        }
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key.as_bytes());
        let first = key.split('\u{1f}').next().unwrap_or("");
        let mut out = String::with_capacity(MAX_KEY_BYTES);
        if self.overrides.contains_key(first) {
            out.push_str(first);
            out.push('\u{1f}');
        }
        out.push('#');
        for b in &digest.as_ref()[..16] {
            out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789abcdef"[usize::from(b & 0xf)]));
        }
        out
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

/// IPv4 as is; IPv6 by its /64 (one subscriber gets a whole /64).
fn push_ip(out: &mut String, ip: IpAddr) {
    use std::fmt::Write;
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            let _ = write!(out, "{v4}");
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let _ = write!(out, "{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3]);
        }
    }
}

/// A route's policies with their per-route counters.
pub struct RouteLimits {
    /// (policy, counters for allowed / limited).
    pub policies: Vec<(Arc<Policy>, [IntCounter; 3])>,
}

impl RouteLimits {
    /// The limits of route `route`.
    pub fn new(route: &str, policies: Vec<Arc<Policy>>) -> Self {
        let family = &metrics().ratelimit_decisions;
        Self {
            policies: policies
                .into_iter()
                .map(|p| {
                    let c = ["allowed", "limited", "error"]
                        .map(|r| family.with_label_values(&[route, p.name.as_str(), r]));
                    (p, c)
                })
                .collect(),
        }
    }
}

/// The outcome of a route's policies for one phase.
pub enum Outcome {
    /// Every policy allowed; the verdict closest to its limit (for headers).
    Allowed(Option<(Arc<Policy>, Verdict)>),
    /// A policy refused: 429 with this verdict.
    Limited(Arc<Policy>, Verdict),
    /// A key was missing and the policy rejects keyless requests.
    MissingKey,
    /// A key header was sent more than once.
    RepeatedKey,
    /// Redis failed for a global policy with `on_error: deny`.
    Unavailable,
}

impl RouteLimits {
    /// Runs the policies of this phase (`after_auth` false: before
    /// authentication) and merges the verdicts.
    pub async fn check(&self, after_auth: bool, input: &KeyInput<'_>) -> Outcome {
        let mut closest: Option<(Arc<Policy>, Verdict)> = None;
        for (p, counters) in self
            .policies
            .iter()
            .filter(|(p, _)| p.after_auth == after_auth)
        {
            let key = match p.key(input) {
                Ok(k) => k,
                Err(KeyError::Repeated) => return Outcome::RepeatedKey,
                Err(KeyError::Missing) => match p.missing {
                    Missing::Skip => continue,
                    Missing::Shared => String::new(),
                    // Shadow mode rejects nothing.
                    Missing::Reject if p.shadow => continue,
                    Missing::Reject => return Outcome::MissingKey,
                },
            };
            let [allowed, limited, error] = counters;
            let v = match p.check(&key).await {
                Checked::Verdict(v) => v,
                Checked::Fallback(v) => {
                    error.inc();
                    v
                }
                Checked::Unavailable => {
                    error.inc();
                    if p.shadow {
                        continue;
                    }
                    return Outcome::Unavailable;
                }
            };
            if v.allowed {
                allowed.inc();
            } else {
                limited.inc();
                if !p.shadow {
                    return Outcome::Limited(Arc::clone(p), v);
                }
            }
            if !p.shadow && p.headers {
                let ratio = |v: &Verdict| f64::from(v.remaining) / f64::from(v.burst.max(1));
                if closest.as_ref().is_none_or(|(_, c)| ratio(&v) < ratio(c)) {
                    closest = Some((Arc::clone(p), v));
                }
            }
        }
        Outcome::Allowed(closest)
    }
}

/// The RateLimit header fields for a verdict (IETF draft
/// `RateLimit-Policy` / `RateLimit`, and the common `X-RateLimit-*`).
pub fn headers(policy: &Policy, v: &Verdict, out: &mut HeaderMap) {
    static POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
    static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
    static LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
    static REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
    static RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
    let secs = |d: Duration| d.as_secs_f64().ceil() as u64;
    let t = if v.allowed && v.remaining > 0 {
        0
    } else {
        secs(v.retry_after.max(v.shape.interval()))
    };
    if let Some((_, p, limit)) = policy.fixed_headers.iter().find(|(s, _, _)| *s == v.shape) {
        out.insert(&POLICY, p.clone());
        out.insert(&LIMIT, limit.clone());
    }
    if let Ok(value) = HeaderValue::try_from(format!("\"{}\";r={};t={t}", policy.name, v.remaining))
    {
        out.insert(&RATELIMIT, value);
    }
    out.insert(&REMAINING, HeaderValue::from(v.remaining));
    out.insert(&RESET, HeaderValue::from(secs(v.reset)));
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

    fn spec() -> RateLimitSpec {
        serde_json::from_value(serde_json::json!({"key": "client_ip", "rate": "10/s"})).unwrap()
    }

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("100/s").unwrap(), (100, Duration::from_secs(1)));
        assert_eq!(parse_rate("5/min").unwrap(), (5, Duration::from_secs(60)));
        assert_eq!(parse_rate("2/h").unwrap(), (2, Duration::from_secs(3600)));
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("10/day").is_err());
        assert!(parse_rate("ten").is_err());
    }

    #[test]
    fn a_bucket_allows_its_burst_then_refuses_with_the_wait() {
        let shape = Shape {
            count: 10,
            window: Duration::from_secs(1),
            burst: 5,
        };
        let p = Policy::new(
            "t",
            spec(),
            vec![KeyPart::ClientIp],
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
            spec(),
            vec![KeyPart::Tenant, KeyPart::Route],
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

    #[test]
    fn ipv6_clients_share_their_64() {
        let mut a = String::new();
        push_ip(&mut a, "2001:db8:1:2:aaaa::1".parse().unwrap());
        let mut b = String::new();
        push_ip(&mut b, "2001:db8:1:2:bbbb::9".parse().unwrap());
        assert_eq!(a, b);
        let mut c = String::new();
        push_ip(&mut c, "::ffff:10.0.0.1".parse().unwrap());
        assert_eq!(c, "10.0.0.1");
    }

    #[test]
    fn key_parts_and_repeated_headers() {
        let shape = Shape {
            count: 1,
            window: Duration::from_secs(1),
            burst: 1,
        };
        let p = Policy::new(
            "t",
            spec(),
            vec![
                KeyPart::Header(HeaderName::from_static("x-api-key")),
                KeyPart::Route,
            ],
            shape,
            vec![],
            Missing::Reject,
        )
        .unwrap();
        let mut h = HeaderMap::new();
        let input = |h: &HeaderMap| -> Result<String, KeyError> {
            p.key(&KeyInput {
                headers: h,
                client: "1.1.1.1".parse().unwrap(),
                route: "r",
                identity: None,
            })
        };
        assert_eq!(input(&h), Err(KeyError::Missing));
        h.insert("x-api-key", HeaderValue::from_static("k1"));
        assert_eq!(input(&h).unwrap(), "k1\u{1f}r");
        h.append("x-api-key", HeaderValue::from_static("k2"));
        assert_eq!(input(&h), Err(KeyError::Repeated));
        // Long values are kept as a fixed-size digest, distinct per value.
        let long = |c: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                "x-api-key",
                HeaderValue::from_str(&c.repeat(32 << 10)).unwrap(),
            );
            input(&h).unwrap()
        };
        let (a, b) = (long("a"), long("b"));
        assert_eq!(a.len(), 33);
        assert!(a.starts_with('#'));
        assert_ne!(a, b);
        assert_eq!(a, long("a"));
        let exact = "k".repeat(MAX_KEY_BYTES - 2);
        h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_str(&exact).unwrap());
        assert_eq!(
            input(&h).unwrap(),
            format!("{exact}\u{1f}r"),
            "up to the bound: as it is"
        );
    }
}
