//! HTTP caching rules for a shared cache (RFC 9111): `Cache-Control`
//! parsing, whether a response may be stored, and for how long.
//!
//! Pure functions over headers; the store (issue 6) calls them. The rules
//! are the safe ones for an edge cache: a private response, a
//! `Set-Cookie`, or an answer to a request with credentials is never stored
//! unless the origin says it may be (or the key separates the users).

use std::time::{Duration, SystemTime};

use http::header::{AUTHORIZATION, CACHE_CONTROL, COOKIE, DATE, EXPIRES, SET_COOKIE, VARY};
use http::{HeaderMap, Method, StatusCode};

/// The directives this cache acts on (request or response).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheControl {
    /// `max-age=N` (seconds).
    pub max_age: Option<u64>,
    /// `s-maxage=N` (seconds; shared caches only).
    pub s_maxage: Option<u64>,
    /// `no-store`.
    pub no_store: bool,
    /// `no-cache` (without a field list: the whole response).
    pub no_cache: bool,
    /// `private`.
    pub private: bool,
    /// `public`.
    pub public: bool,
    /// `must-revalidate` or `proxy-revalidate`.
    pub must_revalidate: bool,
    /// `only-if-cached` (requests).
    pub only_if_cached: bool,
    /// `stale-while-revalidate=N` (RFC 5861).
    pub stale_while_revalidate: Option<u64>,
    /// `stale-if-error=N` (RFC 5861).
    pub stale_if_error: Option<u64>,
}

impl CacheControl {
    /// Parses every `Cache-Control` field of `headers`. Directive names are
    /// case-insensitive; values may be quoted; a directive with a malformed
    /// value is ignored, except that a malformed `max-age` / `s-maxage`
    /// counts as 0 (stale), the safe reading (RFC 9111 §4.2.1).
    pub fn parse(headers: &HeaderMap) -> Self {
        let mut cc = CacheControl::default();
        for value in headers.get_all(CACHE_CONTROL) {
            let Ok(text) = value.to_str() else {
                continue;
            };
            for directive in split_directives(text) {
                let (name, arg) = match directive.split_once('=') {
                    Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                    None => (directive.trim(), None),
                };
                let seconds = || arg.map(|a| a.parse::<u64>().unwrap_or(0));
                match name.to_ascii_lowercase().as_str() {
                    "max-age" => cc.max_age = seconds().or(Some(0)),
                    "s-maxage" => cc.s_maxage = seconds().or(Some(0)),
                    "no-store" => cc.no_store = true,
                    // `no-cache="field"` only names fields; not the whole response.
                    "no-cache" => cc.no_cache |= arg.is_none(),
                    "private" => cc.private |= arg.is_none(),
                    "public" => cc.public = true,
                    "must-revalidate" | "proxy-revalidate" => cc.must_revalidate = true,
                    "only-if-cached" => cc.only_if_cached = true,
                    "stale-while-revalidate" => {
                        cc.stale_while_revalidate = arg.and_then(|a| a.parse().ok());
                    }
                    "stale-if-error" => cc.stale_if_error = arg.and_then(|a| a.parse().ok()),
                    _ => {}
                }
            }
        }
        cc
    }
}

/// Splits on commas outside quoted strings.
fn split_directives(text: &str) -> impl Iterator<Item = &str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts.into_iter().filter(|p| !p.trim().is_empty())
}

/// Final statuses a shared cache may store (RFC 9110 §15.1 "heuristically
/// cacheable", minus those the issue excludes).
pub fn cacheable_status(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Statuses for which `default_ttl` may stand in for missing freshness.
/// Error statuses need explicit freshness, so that a malformed request
/// cannot plant an error page for everyone (cache-poisoned DoS).
fn default_ttl_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 200 | 203 | 204 | 300 | 301 | 308)
}

/// What the route allows beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct Allowances {
    /// `default_ttl`.
    pub default_ttl: Option<Duration>,
    /// `cache_authorized` with a tenant or claim in the key.
    pub authorized_per_tenant: bool,
    /// Cookie names that are part of the key.
    pub key_cookies: Vec<String>,
}

/// Whether and how long a response may be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storable {
    /// Store, fresh for `ttl` (zero: store but revalidate on every use).
    Yes {
        /// Freshness lifetime, minus the age it arrived with.
        ttl: Duration,
        /// `stale-while-revalidate` from the response.
        stale_while_revalidate: Option<Duration>,
        /// `stale-if-error` from the response.
        stale_if_error: Option<Duration>,
    },
    /// Do not store; why (for `Cache-Status` and logs).
    No(&'static str),
}

/// The storage decision for `status` + `response` to `method` + `request`.
pub fn storable(
    method: &Method,
    request: &HeaderMap,
    status: StatusCode,
    response: &HeaderMap,
    allow: &Allowances,
) -> Storable {
    if method != Method::GET {
        return Storable::No("method");
    }
    if !cacheable_status(status) {
        return Storable::No("status");
    }
    let req = CacheControl::parse(request);
    let resp = CacheControl::parse(response);
    if req.no_store || resp.no_store {
        return Storable::No("no-store");
    }
    if resp.private {
        return Storable::No("private");
    }
    if response.contains_key(SET_COOKIE) {
        return Storable::No("set-cookie");
    }
    if response
        .get_all(VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim() == "*")
    {
        return Storable::No("vary-star");
    }
    let explicitly_shared = resp.public || resp.s_maxage.is_some();
    if request.contains_key(AUTHORIZATION) && !explicitly_shared && !allow.authorized_per_tenant {
        return Storable::No("authorization");
    }
    if request.contains_key(COOKIE) && !explicitly_shared && !cookies_in_key(request, allow) {
        return Storable::No("cookie");
    }
    let explicit = resp
        .s_maxage
        .or(resp.max_age)
        .map(Duration::from_secs)
        .or_else(|| expires_lifetime(response));
    let lifetime = match explicit {
        Some(l) => l,
        // Stored only to be revalidated before each use.
        None if default_ttl_status(status) && resp.no_cache => Duration::ZERO,
        None if default_ttl_status(status) => match allow.default_ttl {
            Some(d) => d,
            None => return Storable::No("no-freshness"),
        },
        None => return Storable::No("no-freshness"),
    };
    let age = response
        .get(http::header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_secs);
    let ttl = if resp.no_cache {
        Duration::ZERO
    } else {
        lifetime.saturating_sub(age)
    };
    Storable::Yes {
        ttl,
        stale_while_revalidate: resp
            .stale_while_revalidate
            .filter(|_| !resp.must_revalidate && !resp.no_cache)
            .map(Duration::from_secs),
        stale_if_error: resp
            .stale_if_error
            .filter(|_| !resp.must_revalidate)
            .map(Duration::from_secs),
    }
}

/// True when every cookie the request sends is part of the key.
fn cookies_in_key(request: &HeaderMap, allow: &Allowances) -> bool {
    !allow.key_cookies.is_empty()
        && crate::cookies::pairs(request)
            .all(|(name, _)| allow.key_cookies.iter().any(|k| k == name))
}

/// `Expires - Date` (RFC 9111 §4.2.1); an invalid `Expires` means stale.
fn expires_lifetime(response: &HeaderMap) -> Option<Duration> {
    let expires = response.get(EXPIRES)?.to_str().ok()?;
    let Ok(expires) = httpdate::parse_http_date(expires) else {
        return Some(Duration::ZERO);
    };
    let date = response
        .get(DATE)
        .and_then(|d| d.to_str().ok())
        .and_then(|d| httpdate::parse_http_date(d).ok())
        .unwrap_or_else(SystemTime::now);
    Some(expires.duration_since(date).unwrap_or(Duration::ZERO))
}

/// What a request asks of the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    /// A fresh stored response may be used.
    Normal,
    /// `no-cache` or `max-age=0`: go to the origin (revalidate).
    Revalidate,
    /// `only-if-cached`: answer 504 on a miss.
    OnlyIfCached,
    /// `no-store`: neither use nor store.
    Bypass,
}

/// The request's wishes (methods other than GET and HEAD bypass).
pub fn lookup(method: &Method, request: &HeaderMap) -> CacheMode {
    if method != Method::GET && method != Method::HEAD {
        return CacheMode::Bypass;
    }
    let cc = CacheControl::parse(request);
    if cc.no_store {
        CacheMode::Bypass
    } else if cc.only_if_cached {
        CacheMode::OnlyIfCached
    } else if cc.no_cache || cc.max_age == Some(0) {
        CacheMode::Revalidate
    } else {
        CacheMode::Normal
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_static(v));
        }
        m
    }

    fn store(
        req: &[(&'static str, &'static str)],
        status: u16,
        resp: &[(&'static str, &'static str)],
    ) -> Storable {
        storable(
            &Method::GET,
            &h(req),
            StatusCode::from_u16(status).unwrap(),
            &h(resp),
            &Allowances {
                default_ttl: Some(Duration::from_secs(60)),
                ..Allowances::default()
            },
        )
    }

    fn ttl(s: Storable) -> u64 {
        match s {
            Storable::Yes { ttl, .. } => ttl.as_secs(),
            Storable::No(why) => panic!("not stored: {why}"),
        }
    }

    #[test]
    fn directives_parse_across_fields_quotes_and_case() {
        let cc = CacheControl::parse(&h(&[
            ("cache-control", "Public, MAX-AGE=\"30\""),
            (
                "cache-control",
                "s-maxage=10, no-cache=\"set-cookie\", stale-if-error=300",
            ),
        ]));
        assert!(cc.public && !cc.no_cache);
        assert_eq!(
            (cc.max_age, cc.s_maxage, cc.stale_if_error),
            (Some(30), Some(10), Some(300))
        );
        assert_eq!(
            CacheControl::parse(&h(&[("cache-control", "max-age=abc")])).max_age,
            Some(0)
        );
    }

    #[test]
    fn freshness_prefers_s_maxage_then_max_age_then_expires_then_default() {
        assert_eq!(
            ttl(store(
                &[],
                200,
                &[("cache-control", "max-age=30, s-maxage=10")]
            )),
            10
        );
        assert_eq!(ttl(store(&[], 200, &[("cache-control", "max-age=30")])), 30);
        assert_eq!(
            ttl(store(
                &[],
                200,
                &[
                    ("date", "Wed, 25 Nov 2026 10:00:00 GMT"),
                    ("expires", "Wed, 25 Nov 2026 10:02:00 GMT")
                ]
            )),
            120
        );
        assert_eq!(ttl(store(&[], 200, &[("expires", "not a date")])), 0);
        assert_eq!(ttl(store(&[], 200, &[])), 60, "default_ttl");
        assert_eq!(
            ttl(store(
                &[],
                200,
                &[("cache-control", "max-age=30"), ("age", "20")]
            )),
            10
        );
        assert_eq!(
            ttl(store(
                &[],
                200,
                &[("cache-control", "max-age=30, no-cache")]
            )),
            0
        );
        // `no-cache` alone: stored to be revalidated, never served stale
        // while revalidating, and an error page still needs freshness.
        let bare = store(
            &[],
            200,
            &[("cache-control", "no-cache, stale-while-revalidate=60")],
        );
        assert_eq!(
            bare,
            Storable::Yes {
                ttl: Duration::ZERO,
                stale_while_revalidate: None,
                stale_if_error: None
            }
        );
        assert_eq!(
            store(&[], 404, &[("cache-control", "no-cache")]),
            Storable::No("no-freshness")
        );
    }

    #[test]
    fn errors_need_explicit_freshness_and_some_statuses_never_store() {
        assert_eq!(store(&[], 404, &[]), Storable::No("no-freshness"));
        assert_eq!(ttl(store(&[], 404, &[("cache-control", "max-age=5")])), 5);
        for s in [206, 304, 429, 500, 502, 503, 504] {
            assert_eq!(
                store(&[], s, &[("cache-control", "max-age=5")]),
                Storable::No("status")
            );
        }
    }

    #[test]
    fn private_and_personal_responses_are_never_stored_by_default() {
        let cc = [("cache-control", "max-age=60")];
        assert_eq!(
            store(&[], 200, &[("cache-control", "private, max-age=60")]),
            Storable::No("private")
        );
        assert_eq!(
            store(&[("cache-control", "no-store")], 200, &cc),
            Storable::No("no-store")
        );
        assert_eq!(
            store(
                &[],
                200,
                &[("cache-control", "max-age=60"), ("set-cookie", "a=b")]
            ),
            Storable::No("set-cookie")
        );
        assert_eq!(
            store(
                &[],
                200,
                &[("cache-control", "max-age=60"), ("vary", "accept, *")]
            ),
            Storable::No("vary-star")
        );
        assert_eq!(
            store(&[("authorization", "Bearer x")], 200, &cc),
            Storable::No("authorization")
        );
        assert_eq!(
            ttl(store(
                &[("authorization", "Bearer x")],
                200,
                &[("cache-control", "public, max-age=60")]
            )),
            60
        );
        // Web cache deception: a Cookie request is not stored unless the
        // origin says so or the cookie is part of the key.
        assert_eq!(
            store(&[("cookie", "session=1")], 200, &cc),
            Storable::No("cookie")
        );
        assert_eq!(
            ttl(store(
                &[("cookie", "session=1")],
                200,
                &[("cache-control", "s-maxage=60")]
            )),
            60
        );
        let keyed = storable(
            &Method::GET,
            &h(&[("cookie", "session=1")]),
            StatusCode::OK,
            &h(&cc),
            &Allowances {
                key_cookies: vec!["session".into()],
                ..Allowances::default()
            },
        );
        assert_eq!(ttl(keyed), 60);
    }

    #[test]
    fn request_directives() {
        assert_eq!(lookup(&Method::GET, &h(&[])), CacheMode::Normal);
        assert_eq!(
            lookup(&Method::HEAD, &h(&[("cache-control", "no-cache")])),
            CacheMode::Revalidate
        );
        assert_eq!(
            lookup(&Method::GET, &h(&[("cache-control", "max-age=0")])),
            CacheMode::Revalidate
        );
        assert_eq!(
            lookup(&Method::GET, &h(&[("cache-control", "only-if-cached")])),
            CacheMode::OnlyIfCached
        );
        assert_eq!(lookup(&Method::POST, &h(&[])), CacheMode::Bypass);
    }
}
