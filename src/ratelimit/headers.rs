//! The rate-limit response headers: the IETF draft's `RateLimit-Policy`
//! and `RateLimit`, and the common `X-RateLimit-*`.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::{Policy, Verdict};

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
