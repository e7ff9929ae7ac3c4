//! The cache stages of the pipeline (ARCHITECTURE stages 6 and 8): the
//! lookup (hits, stale answers, coalescing), the conditional request that
//! revalidates a stored entry, the store step that copies a cacheable
//! response as it streams, the refresh a 304 makes, and `Cache-Status`.
//! The RFC 9111 rules themselves are in `crate::cache::policy`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HeaderValue;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::body::ResponseBody;
use super::error::ProxyError;
use crate::auth::Identity;
use crate::cache::coalesce::{Flight, Join};
use crate::cache::key::RouteCache;
use crate::cache::policy::{CacheMode, lookup};
use crate::cache::store::StoredResponse;
use crate::cache::validate::{
    age_of, is_conditional, not_modified, same_host_path, updated_headers,
};
use crate::cache::vary::vary_names;
use crate::observability::metrics::metrics;

/// Request headers removed on cached routes.
static CACHE_UNSAFE_HEADERS: [http::HeaderName; 3] = [
    http::HeaderName::from_static("x-original-url"),
    http::HeaderName::from_static("x-rewrite-url"),
    http::HeaderName::from_static("x-http-method-override"),
];

/// A planned store: the key, the request headers the storage rules and
/// `Vary` read, and the fetch other requests for the key wait on.
struct Plan {
    key: String,
    facts: HeaderMap,
    flight: Option<Flight>,
}

/// The cache's part in one request, from lookup to store. The pipeline
/// asks this one object at each step; no cache state lives elsewhere.
#[derive(Default)]
pub(crate) struct RequestCache {
    /// The request reached the cache step of a cached route.
    reached: bool,
    /// The request asked the cache to stay out (`no-store`), or carries a
    /// body on a GET/HEAD.
    bypass: bool,
    /// The `Cache-Status` saying why the cache stayed out, when the
    /// request itself made it (a GET/HEAD with a body).
    bypass_status: Option<&'static str>,
    /// A miss to store.
    plan: Option<Plan>,
    /// A stale entry that may stand in if the upstream fails.
    stale: Option<Arc<StoredResponse>>,
    /// A stored entry with validators: the upstream request becomes
    /// conditional, and a 304 refreshes and serves it.
    revalidate: Option<Arc<StoredResponse>>,
    /// An unsafe request's host and target: what is stored for them is
    /// invalidated once it succeeds.
    unsafe_url: Option<(String, String)>,
}

impl RequestCache {
    /// Stage 6, the lookup on a cached route: a stored response for the
    /// request, or `None` (a miss, which plans storing for a GET; an
    /// unsafe method, which plans invalidating). `only-if-cached` misses
    /// get 504. After a stale-while-revalidate hit, `refresh` hands over
    /// the background fetch.
    pub(super) async fn lookup(
        &mut self,
        rc: &RouteCache,
        req: &mut Request<Incoming>,
        identity: Option<&Identity>,
        host: &str,
        normalized: Option<&str>,
        timeout: Duration,
    ) -> Result<Option<Response<ResponseBody>>, ProxyError> {
        self.reached = true;
        // Headers some backends honour to serve another URL or method:
        // never on a cached route, so no one can store one URL's body
        // under another's key.
        for name in CACHE_UNSAFE_HEADERS.iter() {
            req.headers_mut().remove(name);
        }
        let path = normalized.unwrap_or(req.uri().path());
        // The request target as sent, unless normalizing changed its path.
        let pq: std::borrow::Cow<'_, str> = match (normalized, req.uri().path_and_query()) {
            (None, Some(pq)) => pq.as_str().into(),
            _ => match req.uri().query() {
                Some(q) => format!("{path}?{q}").into(),
                None => path.to_owned().into(),
            },
        };
        if !req.method().is_safe() {
            self.unsafe_url = Some((host.to_owned(), pq.into_owned()));
            return Ok(None);
        }
        if !http_body::Body::is_end_stream(req.body()) {
            // A GET or HEAD with a body (the "fat GET"): an origin may let
            // the body shape its answer, which the key does not cover, so
            // the request is neither served from the cache nor stored.
            rc.counters[2].inc();
            self.bypass = true;
            self.bypass_status = Some("tollgate; fwd=bypass; detail=request-body");
            return Ok(None);
        }
        self.find(rc, req, identity, host, &pq, timeout).await
    }

    /// After a hit that leads a stale-while-revalidate refresh: the cache
    /// part of the background request that refreshes the entry.
    pub(super) fn refresh(&mut self) -> Option<RequestCache> {
        let plan = self.plan.take()?;
        Some(RequestCache {
            reached: true,
            plan: Some(plan),
            revalidate: self.revalidate.take(),
            ..RequestCache::default()
        })
    }

    /// The stored response for a GET or HEAD without a body, or `None`.
    async fn find(
        &mut self,
        rc: &RouteCache,
        req: &Request<Incoming>,
        identity: Option<&Identity>,
        host: &str,
        pq: &str,
        timeout: Duration,
    ) -> Result<Option<Response<ResponseBody>>, ProxyError> {
        let [hit, miss, bypass, _, coalesced, _] = &rc.counters;
        let mut waited = false;
        let wish = lookup(req.method(), req.headers());
        if wish == CacheMode::Bypass {
            bypass.inc();
            self.bypass = true;
            return Ok(None);
        }
        let key = rc.key(host, pq, req.headers(), identity);
        let mut variant = rc.store.lookup_key(&key, req.headers());
        let mut found = if wish == CacheMode::Revalidate {
            None
        } else {
            rc.store.get(&variant)
        };
        // stale-while-revalidate: a stale entry inside its window is served
        // now; the request that leads the key's fetch refreshes it in the
        // background, the others do not wait for it.
        if found.is_none()
            && wish == CacheMode::Normal
            && let Some(e) = rc.store.get_revalidating(&variant)
        {
            if req.method() == Method::GET
                && let Join::Lead(Some(f)) = rc.store.join(&key)
            {
                self.plan = Some(Plan {
                    key,
                    facts: req.headers().clone(),
                    flight: Some(f),
                });
                self.revalidate = Some(Arc::clone(&e)).filter(|e| e.has_validators());
            }
            rc.counters[3].inc();
            return Ok(Some(entry_response(
                &e,
                req.method() == Method::HEAD,
                HeaderValue::from_static("tollgate; fwd=stale; detail=revalidating"),
            )));
        }
        // Request coalescing: one request per key goes to the origin; the
        // others wait for its answer (at most the route timeout in all) and
        // look again. When the fetch was abandoned (its client left, or the
        // upstream failed), one waiter takes it over and the rest wait on.
        let mut flight = None;
        if found.is_none() && wish == CacheMode::Normal {
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                match rc.store.join(&key) {
                    Join::Lead(f) => {
                        flight = f;
                        break;
                    }
                    Join::Wait(mut done) => {
                        waited = true;
                        let since = Instant::now();
                        let _ = tokio::time::timeout_at(deadline, done.changed()).await;
                        // What the fetch stored (or revalidated) is used even
                        // when it must be revalidated on every use: it just was.
                        variant = rc.store.lookup_key(&key, req.headers());
                        found = rc.store.get_validated_since(&variant, since);
                        let settled = *done.borrow();
                        if found.is_some() || tokio::time::Instant::now() >= deadline {
                            break;
                        }
                        if settled {
                            // Not storable: go to the upstream (leading the
                            // next fetch when no one else has started one).
                            if let Join::Lead(f) = rc.store.join(&key) {
                                flight = f;
                            }
                            break;
                        }
                    }
                }
            }
        }
        if let Some(e) = found {
            if waited {
                coalesced.inc();
            } else {
                hit.inc();
            }
            // A conditional request the entry satisfies gets 304.
            if not_modified(req.headers(), &e) {
                let mut r = Response::new(ResponseBody::full(Bytes::new()));
                *r.status_mut() = StatusCode::NOT_MODIFIED;
                for name in [
                    http::header::ETAG,
                    http::header::LAST_MODIFIED,
                    http::header::CACHE_CONTROL,
                    http::header::EXPIRES,
                    http::header::VARY,
                ] {
                    if let Some(v) = e.headers.get(&name) {
                        r.headers_mut().insert(name, v.clone());
                    }
                }
                r.headers_mut()
                    .insert(http::header::AGE, HeaderValue::from(e.age()));
                r.headers_mut()
                    .insert(&CACHE_STATUS, HeaderValue::from_static("tollgate; hit"));
                return Ok(Some(r));
            }
            let hit = e.hit_headers(e.stored.elapsed());
            return Ok(Some(entry_response_aged(
                &e,
                req.method() == Method::HEAD,
                hit.age,
                hit.status,
            )));
        }
        miss.inc();
        if wish == CacheMode::OnlyIfCached {
            return Err(ProxyError::NotCached);
        }
        if wish == CacheMode::Normal {
            self.stale = rc.store.get_stale(&variant);
        }
        if req.method() == Method::GET {
            // A stored entry with validators turns the fetch into a
            // conditional request (see `forward`).
            self.revalidate = rc.store.get_revalidatable(&variant);
            // The storage rules and `Vary` read the request's headers.
            self.plan = Some(Plan {
                key,
                facts: req.headers().clone(),
                flight,
            });
        }
        Ok(None)
    }
}

/// A stored entry as a response, with `Age` and `cache_status`.
fn entry_response(
    e: &StoredResponse,
    head_only: bool,
    cache_status: HeaderValue,
) -> Response<ResponseBody> {
    entry_response_aged(e, head_only, HeaderValue::from(e.age()), cache_status)
}

/// A stored entry as a response, with the given `Age` and `cache_status`.
fn entry_response_aged(
    e: &StoredResponse,
    head_only: bool,
    age: HeaderValue,
    cache_status: HeaderValue,
) -> Response<ResponseBody> {
    let body = if head_only {
        Bytes::new()
    } else {
        e.body.clone()
    };
    let mut r = Response::new(ResponseBody::full(body));
    *r.status_mut() = e.status;
    *r.headers_mut() = e.headers.clone();
    r.headers_mut().insert(http::header::AGE, age);
    r.headers_mut().insert(&CACHE_STATUS, cache_status);
    r
}

/// A stale entry served because the upstream failed (`fwd_status`: the
/// status it answered with, when it answered).
fn stale_response(
    rc: &RouteCache,
    e: &StoredResponse,
    head_only: bool,
    fwd_status: Option<StatusCode>,
) -> Response<ResponseBody> {
    rc.counters[3].inc();
    let status = match fwd_status {
        Some(s) => HeaderValue::try_from(format!("tollgate; fwd=stale; fwd-status={}", s.as_u16()))
            .unwrap_or(HeaderValue::from_static("tollgate; fwd=stale")),
        None => HeaderValue::from_static("tollgate; fwd=stale"),
    };
    entry_response(e, head_only, status)
}

/// `Cache-Status` (RFC 9211).
pub(super) static CACHE_STATUS: http::HeaderName = http::HeaderName::from_static("cache-status");

impl RequestCache {
    /// Stale-if-error: the stale entry, if any, standing in for an upstream
    /// that failed (`fwd_status`: the 5xx it answered with, when it did).
    pub(super) fn stand_in(
        &mut self,
        rc: Option<&RouteCache>,
        head_only: bool,
        fwd_status: Option<StatusCode>,
    ) -> Option<Response<ResponseBody>> {
        let rc = rc?;
        let entry = self.stale.take()?;
        Some(stale_response(rc, &entry, head_only, fwd_status))
    }

    /// After an unsafe request succeeded (2xx, 3xx): what is stored for its
    /// URL, and for its `Location` / `Content-Location` on the same host, is
    /// invalidated (RFC 9111 §4.4).
    pub(super) fn invalidate_after(
        &mut self,
        rc: Option<&RouteCache>,
        resp: &Response<ResponseBody>,
        fleet: Option<&Arc<crate::ratelimit::global::Redis>>,
    ) {
        let (Some(rc), Some((host, pq))) = (rc, self.unsafe_url.take()) else {
            return;
        };
        if !(resp.status().is_success() || resp.status().is_redirection()) {
            return;
        }
        let void = |target: &str| {
            rc.store.invalidate_url(&rc.route, &host, target);
            // The other replicas too (`cache.broadcast_invalidation`).
            if let Some(redis) = fleet {
                crate::cache::fleet::invalidate(redis, &rc.route, &host, target);
            }
        };
        void(&pq);
        for name in [http::header::LOCATION, http::header::CONTENT_LOCATION] {
            if let Some(target) = resp
                .headers()
                .get(&name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| same_host_path(v, &host))
            {
                void(&target);
            }
        }
    }

    /// Makes the upstream request conditional on the stored entry being
    /// revalidated (`If-None-Match` / `If-Modified-Since` from its validators),
    /// unless the client asks its own conditional question: then there is no
    /// revalidation, and the answer goes back to the client as it is.
    pub(super) fn make_conditional(&mut self, headers: &mut HeaderMap) {
        let Some(e) = &self.revalidate else {
            return;
        };
        if is_conditional(headers) {
            self.revalidate = None;
            return;
        }
        if let Some(etag) = e.headers.get(http::header::ETAG) {
            headers.insert(http::header::IF_NONE_MATCH, etag.clone());
        }
        if let Some(lm) = e.headers.get(http::header::LAST_MODIFIED) {
            headers.insert(http::header::IF_MODIFIED_SINCE, lm.clone());
        }
    }

    /// `Cache-Status` for a response on a cached route that no cache stage
    /// labelled: a bypass (unsafe method, `no-store`, or refused before the
    /// cache step, such as a 429), or a miss the gateway answered itself,
    /// with the error's reason as `detail`.
    pub(super) fn status(&self, method: &Method, reason: &str) -> HeaderValue {
        let bypass = !self.reached || self.bypass || !method.is_safe();
        if reason.is_empty() {
            if let Some(status) = self.bypass_status {
                return HeaderValue::from_static(status);
            }
            return HeaderValue::from_static(if bypass {
                "tollgate; fwd=bypass"
            } else {
                "tollgate; fwd=miss"
            });
        }
        let fwd = if bypass { "bypass" } else { "miss" };
        HeaderValue::try_from(format!("tollgate; fwd={fwd}; detail={reason}"))
            .unwrap_or(HeaderValue::from_static("tollgate; fwd=miss"))
    }

    /// Stage 8, store: a response the lookup planned to store is copied as it
    /// streams to the client (or, for a 304 to the revalidation, the stored
    /// entry is refreshed and served), and labelled with `Cache-Status`.
    pub(super) async fn store(
        &mut self,
        rc: Option<&RouteCache>,
        mut parts: http::response::Parts,
        mut body: ResponseBody,
    ) -> Response<ResponseBody> {
        let revalidated = self.revalidate.take();
        if let (Some(Plan { key, facts, flight }), Some(rc)) = (self.plan.take(), rc) {
            // 304 to our conditional request: the stored body is current.
            if let Some(old) = revalidated
                .as_ref()
                .filter(|_| parts.status == StatusCode::NOT_MODIFIED)
            {
                // Read the (empty) body to its end so the connection is reused.
                while let Some(Ok(_)) = http_body_util::BodyExt::frame(&mut body).await {}
                return refresh(rc, key, &facts, flight, old, &parts.headers);
            }
            let decision = crate::cache::policy::storable(
                &Method::GET,
                &facts,
                parts.status,
                &parts.headers,
                &rc.allow,
            );
            let length = parts
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<usize>().ok());
            let vary = vary_names(&parts.headers);
            let stored = match (decision, vary) {
                (
                    crate::cache::policy::Storable::Yes {
                        ttl,
                        stale_if_error,
                        stale_while_revalidate,
                    },
                    Some(vary),
                ) if (!ttl.is_zero() || crate::cache::store::has_validators(&parts.headers))
                    && length.is_none_or(|n| n <= rc.store.max_object) =>
                {
                    let key = if vary.is_empty() {
                        rc.store.no_vary(&key);
                        key
                    } else {
                        rc.store.vary_on(&key, vary, &facts)
                    };
                    let store = Arc::clone(&rc.store);
                    let stale_if_error = stale_if_error.unwrap_or(rc.stale_if_error);
                    let stale_while_revalidate =
                        stale_while_revalidate.unwrap_or(rc.stale_while_revalidate);
                    let (status, headers) = (parts.status, parts.headers.clone());
                    let initial_age = age_of(&parts.headers);
                    body = body.tee(
                        rc.store.max_object,
                        Box::new(move |bytes| {
                            // Waiters wake once the entry is in, or go to the
                            // upstream themselves when it cannot be stored;
                            // a transfer broken off lets one of them take over.
                            let Some(bytes) = bytes else {
                                if let Some(f) = flight {
                                    f.settle();
                                }
                                return;
                            };
                            metrics().cache_stores.inc();
                            store.put(
                                key,
                                StoredResponse {
                                    status,
                                    headers,
                                    body: bytes,
                                    stored: std::time::Instant::now(),
                                    initial_age,
                                    ttl,
                                    stale_if_error,
                                    stale_while_revalidate,
                                    hit_headers: Default::default(),
                                    url: Default::default(),
                                },
                            );
                            if let Some(f) = flight {
                                f.settle();
                            }
                        }),
                    );
                    true
                }
                _ => {
                    if let Some(f) = flight {
                        f.settle();
                    }
                    false
                }
            };
            let status = match (&revalidated, stored) {
                (None, true) => HeaderValue::from_static("tollgate; fwd=miss; stored"),
                (None, false) => HeaderValue::from_static("tollgate; fwd=miss"),
                // The stored entry was stale (or the request asked for a
                // check) and the upstream sent a new answer.
                (Some(old), stored) => HeaderValue::try_from(format!(
                    "tollgate; fwd={}; fwd-status={}{}",
                    if old.fresh() { "request" } else { "stale" },
                    parts.status.as_u16(),
                    if stored { "; stored" } else { "" }
                ))
                .unwrap_or(HeaderValue::from_static("tollgate; fwd=stale")),
            };
            parts.headers.insert(&CACHE_STATUS, status);
        }
        Response::from_parts(parts, body)
    }
}

/// The upstream answered 304 to the conditional request for `old`: its
/// stored headers are updated from the 304's (RFC 9111 §3.2), it is
/// stored again with the freshness they now give (or dropped when they
/// forbid storing), and this request is served from it.
fn refresh(
    rc: &RouteCache,
    key: String,
    facts: &HeaderMap,
    flight: Option<Flight>,
    old: &StoredResponse,
    update: &HeaderMap,
) -> Response<ResponseBody> {
    use crate::cache::policy::{Storable, storable};
    let headers = updated_headers(&old.headers, update);
    rc.counters[5].inc();
    let decision = storable(&Method::GET, facts, old.status, &headers, &rc.allow);
    let vary = vary_names(&headers);
    let (ttl, stale_if_error, stale_while_revalidate, store_as) = match (decision, vary) {
        (
            Storable::Yes {
                ttl,
                stale_if_error,
                stale_while_revalidate,
            },
            Some(vary),
        ) if !ttl.is_zero() || crate::cache::store::has_validators(&headers) => {
            let k = if vary.is_empty() {
                rc.store.no_vary(&key);
                key
            } else {
                rc.store.vary_on(&key, vary, facts)
            };
            (
                ttl,
                stale_if_error.unwrap_or(rc.stale_if_error),
                stale_while_revalidate.unwrap_or(rc.stale_while_revalidate),
                Some(k),
            )
        }
        _ => {
            // No longer storable: what was stored goes.
            rc.store.remove(&rc.store.lookup_key(&key, facts));
            let zero = std::time::Duration::ZERO;
            (zero, zero, zero, None)
        }
    };
    let entry = StoredResponse {
        status: old.status,
        headers,
        body: old.body.clone(),
        stored: std::time::Instant::now(),
        initial_age: age_of(update),
        ttl,
        stale_if_error,
        stale_while_revalidate,
        hit_headers: Default::default(),
        url: Default::default(),
    };
    let fwd = if old.fresh() { "request" } else { "stale" };
    let status = HeaderValue::try_from(format!(
        "tollgate; fwd={fwd}; fwd-status=304{}",
        if store_as.is_some() { "; stored" } else { "" }
    ))
    .unwrap_or(HeaderValue::from_static("tollgate; fwd=stale"));
    let resp = entry_response(&entry, false, status);
    if let Some(k) = store_as {
        metrics().cache_stores.inc();
        rc.store.put(k, entry);
    }
    // Waiters wake once the refreshed entry is in.
    if let Some(f) = flight {
        f.settle();
    }
    resp
}
