//! The request pipeline, in stage order (see ARCHITECTURE.md):
//!
//! 1. `admit` (admit.rs): take the snapshot once, request id, trace
//!    context, client address; refuse what a proxy must not forward.
//! 2. `route`: normalize the path, look up the route (404 / 405); `respond`
//!    and `redirect` routes answer here.
//! 3. `authenticate` (auth/): the route's JWT policy; claims and tenant
//!    go into the context, forwarded claims into the request headers.
//! 4. – 5. `rate_limit`, `cache_lookup`: later issues.
//! 6. `select` / 7. `forward`: pick the upstream (split), build the
//!    upstream request (hop-by-hop removal, forwarding headers, rewrites),
//!    send it under the route timeout, stream the response back.
//! 9. `respond`: response header rules, request id on every response.
//! 10. `finish`: attached to the response body, runs exactly once.
//!
//! The hot path avoids work it can skip: the URI is reused when the path
//! needs no change, header values are shared rather than copied, and the
//! hop-by-hop scan touches nothing when there is nothing to remove.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{ALLOW, CONNECTION, EXPECT, HOST, HeaderValue, LOCATION, UPGRADE};
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::admit::{admit, host_for_routing};
use super::body::ResponseBody;
use super::cache::{
    CACHE_STATUS, CACHE_UNSAFE_HEADERS, cache_lookup, parts_is_head, same_host_path, stale_response,
};
use super::ctx::{Finish, InProgress, Pending, RequestCtx, Requests};
use super::error::ProxyError;
use super::headers::{self, TraceContext, X_REQUEST_ID};
use super::server::ActivityGuard;
use crate::auth::ConnMemo;
use crate::body::{BodyError, Replay, RequestBody};
use crate::observability::metrics::metrics;
use crate::routing::normalize::normalize_path;
use crate::routing::{Lookup, RequestView};
use crate::snapshot::{Action, Route, SharedSnapshot, Snapshot};
use crate::upstream::retry::{Policy, Reason};
use crate::upstream::{HashOn, Upstream, UpstreamBody, UpstreamError, balance::hash64};

/// `x-client-cert-subject`: the verified client certificate's subject.
static X_CLIENT_CERT_SUBJECT: http::HeaderName =
    http::HeaderName::from_static("x-client-cert-subject");

/// What the connection knows about its requests.
pub struct ConnInfo {
    /// The TCP peer.
    pub peer: SocketAddr,
    /// The peer address as a header value, formatted once per connection.
    pub peer_value: HeaderValue,
    /// Marks the request in flight on its connection until it finishes.
    pub activity: Option<ActivityGuard>,
    /// The connection's last verified token.
    pub auth_memo: Arc<ConnMemo>,
    /// Requests in progress on this gateway.
    pub inflight: Arc<Requests>,
    /// The connection is TLS (`X-Forwarded-Proto: https`).
    pub https: bool,
    /// The port TLS is served on (for `redirect_http`).
    pub https_port: u16,
    /// Subject of the client's verified certificate (mTLS).
    pub client_subject: Option<HeaderValue>,
}

/// Runs one request through the pipeline. Never fails: every error becomes
/// a response.
pub async fn handle(
    mut req: Request<Incoming>,
    conn: ConnInfo,
    live: &SharedSnapshot,
) -> Response<ResponseBody> {
    let snapshot = live.load_full();
    metrics().requests_inflight.inc();
    protocol_counter(req.version()).inc();
    // The client's hop-by-hop fields and those its `Connection` names go
    // before any stage reads the request, so every header the gateway sets
    // later (request id, identity claims, forwarding, trace context,
    // configured headers) is added after them: no client header can remove,
    // duplicate or override one of the gateway's.
    let upgrade = upgrade_protocol(&req);
    if http_body::Body::is_end_stream(req.body())
        && let Some(activity) = &conn.activity
    {
        activity.bodiless();
    }
    headers::remove_hop_by_hop(req.headers_mut());
    // Accounted exactly once even if this future is dropped unanswered.
    let mut ctx = Pending::new(context(&req, conn, snapshot));
    ctx.upgrade = upgrade;
    let mut resp = match run(req, &mut ctx).await {
        Ok(r) => r,
        Err(e) => {
            ctx.reason = e.describe().1;
            if ctx.grpc {
                e.to_grpc_response().map(ResponseBody::full)
            } else {
                let id = ctx.request_id.to_str().unwrap_or("");
                e.to_response(id).map(ResponseBody::full)
            }
        }
    };
    if let Some(route) = ctx.route.and_then(|i| ctx.snapshot.routes.get(i)) {
        if !route.response_headers.is_empty() {
            route.response_headers.apply(resp.headers_mut());
        }
        // Every response on a cached route says what the cache did.
        if route.cache.is_some() && !resp.headers().contains_key(&CACHE_STATUS) {
            resp.headers_mut()
                .insert(&CACHE_STATUS, super::cache::fallback_status(&ctx));
        }
    }
    resp.headers_mut()
        .insert(&X_REQUEST_ID, ctx.request_id.clone());
    if let Some((policy, verdict)) = &ctx.rate_limit {
        crate::ratelimit::headers(policy, verdict, resp.headers_mut());
    }
    if ctx.https
        && let Some(hsts) = &ctx.snapshot.settings.hsts
    {
        resp.headers_mut()
            .insert(http::header::STRICT_TRANSPORT_SECURITY, hsts.clone());
    }
    let status = resp.status().as_u16();
    let stall = ctx.activity.as_ref().and_then(ActivityGuard::stall_clock);
    match ctx.answered() {
        Some(ctx) => resp.map(|b| {
            b.with_stall_clock(stall)
                .with_finish(Finish::new(ctx, status))
        }),
        None => resp,
    }
}

/// `tollgate_downstream_requests_total{protocol}`, resolved once.
fn protocol_counter(v: Version) -> &'static prometheus::IntCounter {
    static C: std::sync::OnceLock<[prometheus::IntCounter; 2]> = std::sync::OnceLock::new();
    let [h1, h2] = C.get_or_init(|| {
        let f = &metrics().downstream_requests;
        [
            f.with_label_values(&["http1"]),
            f.with_label_values(&["h2"]),
        ]
    });
    if v == Version::HTTP_2 { h2 } else { h1 }
}

fn context(req: &Request<Incoming>, conn: ConnInfo, snapshot: Arc<Snapshot>) -> RequestCtx {
    let h = req.headers();
    let request_id = match h.get(&X_REQUEST_ID) {
        Some(v) if headers::valid_request_id(v) => v.clone(),
        _ => headers::new_request_id(),
    };
    let log_target = snapshot.settings.access_log.then(|| {
        let host = req
            .uri()
            .host()
            .or_else(|| h.get(HOST).and_then(|v| v.to_str().ok()));
        (
            host.unwrap_or_default().to_owned(),
            req.uri().path().to_owned(),
        )
    });
    RequestCtx {
        client: headers::client_ip(conn.peer.ip(), h, &snapshot.settings),
        peer: conn.peer.ip(),
        peer_value: conn.peer_value,
        activity: conn.activity,
        auth_memo: conn.auth_memo,
        in_progress: InProgress::new(conn.inflight),
        https: conn.https,
        grpc: h
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc")),
        client_subject: conn.client_subject,
        https_port: conn.https_port,
        rate_limit: None,
        cache_plan: None,
        stale: None,
        revalidate: None,
        cache_reached: false,
        cache_bypass: false,
        cache_bypass_status: None,
        upgrade: None,
        trace: TraceContext::from_headers(h),
        start: Instant::now(),
        method: req.method().clone(),
        route: None,
        upstream: None,
        upstream_duration: None,
        reason: "",
        bytes_in: None,
        identity: None,
        log_target,
        request_id,
        snapshot,
    }
}

async fn run(
    mut req: Request<Incoming>,
    ctx: &mut RequestCtx,
) -> Result<Response<ResponseBody>, ProxyError> {
    let snapshot = Arc::clone(&ctx.snapshot);
    let settings = &snapshot.settings;

    // 0. load shedding: over the limit of requests in progress, refuse at
    // once rather than queue (this request is counted already).
    if ctx.in_progress.count > settings.max_inflight_requests {
        metrics().overflow.with_label_values(&["global"]).inc();
        return Err(ProxyError::Overloaded("global"));
    }

    // 1. admit
    let host = admit(&mut req, settings)?;
    if !ctx.https && settings.redirect_https {
        return https_redirect(&req, host.as_ref(), ctx.https_port);
    }
    if req.uri() == "*" {
        let mut r = Response::new(ResponseBody::full(Bytes::new()));
        r.headers_mut().insert(
            ALLOW,
            HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS"),
        );
        return Ok(r);
    }

    // 2. route
    let normalized =
        match normalize_path(req.uri().path(), settings.normalize).map_err(ProxyError::BadPath)? {
            std::borrow::Cow::Borrowed(_) => None,
            std::borrow::Cow::Owned(p) => Some(p),
        };
    let host_text = host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or("");
    let route_host = host_for_routing(host_text);
    let view = RequestView {
        method: req.method(),
        host: &route_host,
        path: normalized.as_deref().unwrap_or(req.uri().path()),
        query: req.uri().query(),
        headers: req.headers(),
    };
    let id = match snapshot.router.lookup(&view) {
        Lookup::Found(id) => id,
        Lookup::MethodNotAllowed(allow) => return Err(ProxyError::MethodNotAllowed(allow)),
        Lookup::NotFound => return Err(ProxyError::NoRoute),
    };
    ctx.route = Some(id);
    let route = snapshot.routes.get(id).ok_or(ProxyError::NoRoute)?;

    // 3. limits that need no identity, then authenticate
    if let Some(limits) = &route.limits {
        rate_limit(limits, false, &req, ctx, route).await?;
    }
    if let Some(policy) = &route.auth {
        // A `Uri` clone shares its bytes: no copy of the query.
        let uri = req.uri().clone();
        ctx.identity = policy
            .check(req.headers_mut(), uri.query(), &ctx.auth_memo)
            .await
            .map_err(ProxyError::Auth)?;
        strip_query_tokens(&mut req, policy);
    }

    // 4. limits keyed on the identity
    if let Some(limits) = &route.limits {
        rate_limit(limits, true, &req, ctx, route).await?;
    }
    let upstream = match &route.action {
        Action::Respond {
            status,
            body,
            headers,
        } => {
            let body = if req.method() == Method::HEAD {
                Bytes::new()
            } else {
                body.clone()
            };
            let mut r = Response::new(ResponseBody::full(body));
            *r.status_mut() = *status;
            *r.headers_mut() = headers.clone();
            return Ok(r);
        }
        Action::Redirect { status, location } => {
            let mut r = Response::new(ResponseBody::full(Bytes::new()));
            *r.status_mut() = *status;
            r.headers_mut().insert(LOCATION, location.clone());
            return Ok(r);
        }
        Action::Forward(u) => u,
        Action::Split(s) => s.pick().ok_or(ProxyError::UpstreamUnavailable(1))?,
    };

    // 5. cache lookup
    let mut unsafe_url = None;
    if let Some(rc) = &route.cache {
        ctx.cache_reached = true;
        // Headers some backends honour to serve another URL or method:
        // never on a cached route, so no one can store one URL's body
        // under another's key.
        for name in CACHE_UNSAFE_HEADERS.iter() {
            req.headers_mut().remove(name);
        }
        let path = normalized.as_deref().unwrap_or(req.uri().path());
        // The request target as sent, unless normalizing changed its path.
        let pq: std::borrow::Cow<'_, str> = match (&normalized, req.uri().path_and_query()) {
            (None, Some(pq)) => pq.as_str().into(),
            _ => match req.uri().query() {
                Some(q) => format!("{path}?{q}").into(),
                None => path.to_owned().into(),
            },
        };
        if req.method().is_safe() && !http_body::Body::is_end_stream(req.body()) {
            // A GET or HEAD with a body (the "fat GET"): an origin may let
            // the body shape its answer, which the key does not cover, so
            // the request is neither served from the cache nor stored.
            rc.counters[2].inc();
            ctx.cache_bypass = true;
            ctx.cache_bypass_status = Some("tollgate; fwd=bypass; detail=request-body");
        } else if req.method().is_safe() {
            if let Some(hit) = cache_lookup(rc, &req, ctx, &route_host, &pq, route.timeout).await? {
                // stale-while-revalidate: the stale answer goes out now and
                // this request's twin refreshes the entry in the background.
                if let Some(plan) = ctx.cache_plan.take() {
                    let mut bg = ctx.for_background();
                    bg.cache_plan = Some(plan);
                    bg.revalidate = ctx.revalidate.take();
                    let snapshot = Arc::clone(&ctx.snapshot);
                    let upstream = Arc::clone(upstream);
                    let id = ctx.route;
                    tokio::spawn(async move {
                        let Some(route) = id.and_then(|i| snapshot.routes.get(i)) else {
                            return;
                        };
                        if let Ok(resp) =
                            forward(req, &mut bg, route, &upstream, host, normalized).await
                        {
                            // Reading the body to its end stores it.
                            let mut body = resp.into_body();
                            while let Some(Ok(_)) = http_body_util::BodyExt::frame(&mut body).await
                            {
                            }
                        }
                    });
                }
                return Ok(hit);
            }
        } else {
            unsafe_url = Some(pq.into_owned());
        }
    }
    // 6–7. select and forward
    let head_only = req.method() == Method::HEAD;
    let cache_host = unsafe_url.as_ref().map(|_| route_host.to_string());
    match forward(req, ctx, route, upstream, host, normalized).await {
        // stale-if-error: a failing upstream (connect error, reset,
        // timeout, unavailable) is covered by the stale entry.
        Err(e) if e.describe().2 == super::error::Party::Upstream => match ctx.stale.take() {
            Some(entry) => Ok(stale_response(route, &entry, head_only, None)),
            None => Err(e),
        },
        Ok(resp) => {
            // A successful unsafe request invalidates what is stored for
            // its URL, and for Location / Content-Location on this host.
            if let (Some(pq), Some(rc), Some(route_host)) = (unsafe_url, &route.cache, cache_host)
                && (resp.status().is_success() || resp.status().is_redirection())
            {
                rc.store.invalidate_url(&rc.route, &route_host, &pq);
                for name in [LOCATION, http::header::CONTENT_LOCATION] {
                    if let Some(target) = resp
                        .headers()
                        .get(&name)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| same_host_path(v, &route_host))
                    {
                        rc.store.invalidate_url(&rc.route, &route_host, &target);
                    }
                }
            }
            Ok(resp)
        }
        other => other,
    }
}

/// Removes query parameters that carried a token (`forward_token: false`).
fn strip_query_tokens(req: &mut Request<Incoming>, policy: &crate::auth::RouteAuth) {
    let mut names = policy.query_to_strip().peekable();
    if names.peek().is_none() {
        return;
    }
    let names: Vec<&str> = names.collect();
    let Some(query) = req.uri().query() else {
        return;
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|kv| {
            let k = kv.split_once('=').map_or(*kv, |(k, _)| k);
            !names
                .iter()
                .any(|n| crate::routing::matchers::decode(k) == *n)
        })
        .collect();
    if kept.len() == query.split('&').count() {
        return;
    }
    let pq = if kept.is_empty() {
        req.uri().path().to_owned()
    } else {
        format!("{}?{}", req.uri().path(), kept.join("&"))
    };
    let mut parts = req.uri().clone().into_parts();
    if let Ok(pq) = PathAndQuery::try_from(pq) {
        parts.path_and_query = Some(pq);
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
}

/// 308 to the same URL over https (`redirect_http`).
fn https_redirect(
    req: &Request<Incoming>,
    host: Option<&HeaderValue>,
    port: u16,
) -> Result<Response<ResponseBody>, ProxyError> {
    let host = host
        .and_then(|h| h.to_str().ok())
        .map(host_for_routing)
        .filter(|h| !h.is_empty())
        .ok_or(ProxyError::BadRequest("a redirect to https needs a Host"))?;
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = if port == 443 {
        format!("https://{host}{pq}")
    } else {
        format!("https://{host}:{port}{pq}")
    };
    let location =
        HeaderValue::try_from(location).map_err(|_| ProxyError::BadRequest("invalid target"))?;
    let mut r = Response::new(ResponseBody::full(Bytes::new()));
    *r.status_mut() = StatusCode::PERMANENT_REDIRECT;
    r.headers_mut().insert(LOCATION, location);
    Ok(r)
}

/// Runs a route's rate limits of one phase; the verdict to describe in
/// the response headers goes into the context.
async fn rate_limit(
    limits: &crate::ratelimit::RouteLimits,
    after_auth: bool,
    req: &Request<Incoming>,
    ctx: &mut RequestCtx,
    route: &Route,
) -> Result<(), ProxyError> {
    use crate::ratelimit::{KeyInput, Outcome};
    let input = KeyInput {
        headers: req.headers(),
        client: ctx.client,
        route: &route.name,
        identity: ctx.identity.as_deref(),
    };
    match limits.check(after_auth, &input).await {
        Outcome::Allowed(verdict) => {
            if verdict.is_some() {
                let closer = match (&verdict, &ctx.rate_limit) {
                    (Some((_, v)), Some((_, c))) => {
                        u64::from(v.remaining) * u64::from(c.burst.max(1))
                            < u64::from(c.remaining) * u64::from(v.burst.max(1))
                    }
                    _ => true,
                };
                if closer {
                    ctx.rate_limit = verdict;
                }
            }
            Ok(())
        }
        Outcome::Limited(policy, v) => {
            let secs = v.retry_after.as_secs_f64().ceil().max(1.0) as u64;
            ctx.rate_limit = Some((policy, v));
            Err(ProxyError::RateLimited(secs))
        }
        Outcome::MissingKey if route.auth.is_some() => {
            Err(ProxyError::Auth(crate::auth::Failure::Missing))
        }
        Outcome::MissingKey => Err(ProxyError::RateLimited(1)),
        Outcome::RepeatedKey => Err(ProxyError::BadRequest(
            "a rate-limit key header was sent more than once",
        )),
        Outcome::Unavailable => Err(ProxyError::RateLimitUnavailable),
    }
}

/// The protocol an HTTP/1.1 request asks to switch to (not h2c).
fn upgrade_protocol(req: &Request<Incoming>) -> Option<HeaderValue> {
    let proto = req.headers().get(UPGRADE)?;
    (req.version() == Version::HTTP_11
        && !proto.as_bytes().eq_ignore_ascii_case(b"h2c")
        && req.headers().get_all(CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        }))
    .then(|| proto.clone())
}

/// The URI sent upstream: origin-form, the normalized and rewritten path,
/// the query byte for byte. The client's URI is reused when unchanged.
fn upstream_uri(uri: &Uri, normalized: Option<&str>, route: &Route) -> Result<Uri, ProxyError> {
    let path = normalized.unwrap_or(uri.path());
    let rewritten = route.rewrite.apply(path);
    if rewritten.is_none() && normalized.is_none() {
        if uri.scheme().is_none() {
            return Ok(uri.clone());
        }
        let pq = uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        return Ok(Uri::from(pq));
    }
    let path = rewritten.as_deref().unwrap_or(path);
    let pq = match uri.query() {
        Some(q) => PathAndQuery::try_from(format!("{path}?{q}")),
        None => PathAndQuery::try_from(path),
    }
    .map_err(|_| ProxyError::BadRequest("invalid request target"))?;
    Ok(Uri::from(pq))
}

async fn forward(
    mut req: Request<Incoming>,
    ctx: &mut RequestCtx,
    route: &Route,
    upstream: &Arc<Upstream>,
    host: Option<HeaderValue>,
    normalized: Option<String>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let settings = &ctx.snapshot.settings;
    let upgrade = ctx
        .upgrade
        .take()
        .map(|proto| (hyper::upgrade::on(&mut req), proto));
    let key = hash_key(upstream, &req, ctx, normalized.as_deref());
    let uri = upstream_uri(req.uri(), normalized.as_deref(), route)?;
    let (parts, incoming) = req.into_parts();
    // The client's hop-by-hop fields went in `handle`.
    let mut headers = parts.headers;
    if parts.version == Version::HTTP_2 {
        headers::join_cookies(&mut headers);
    }
    // hyper answers 100-continue itself when the body is first read.
    headers.remove(EXPECT);
    headers::set_forwarding(
        &mut headers,
        ctx.peer,
        &ctx.peer_value,
        ctx.client,
        host.as_ref(),
        settings,
        ctx.https,
    );
    headers.insert(&X_REQUEST_ID, ctx.request_id.clone());
    // Only the gateway says who the client certificate belongs to.
    headers.remove(&X_CLIENT_CERT_SUBJECT);
    if let Some(subject) = &ctx.client_subject {
        headers.insert(&X_CLIENT_CERT_SUBJECT, subject.clone());
    }
    ctx.trace.apply(&mut headers);
    match (&route.host_rewrite, host) {
        (Some(h), _) => {
            headers.insert(HOST, h.clone());
        }
        // An absolute-form request may carry no Host header: send its authority.
        (None, Some(h)) if parts.uri.authority().is_some() => {
            headers.insert(HOST, h);
        }
        _ => {}
    }
    if let Some((_, proto)) = &upgrade {
        headers.insert(UPGRADE, proto.clone());
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if !route.request_headers.is_empty() {
        route.request_headers.apply(&mut headers);
    }
    super::cache::add_validators(&mut ctx.revalidate, &mut headers);
    // A retrying route keeps the head and a copy of a small body.
    let policy = route.retry.as_ref().filter(|_| upgrade.is_none());
    let replay = policy.map(|_| {
        Arc::new(std::sync::Mutex::new(
            if http_body::Body::is_end_stream(&incoming) {
                Replay::empty()
            } else {
                Replay::default()
            },
        ))
    });
    let body = if http_body::Body::is_end_stream(&incoming) {
        RequestBody::empty()
    } else {
        let body = RequestBody::new(
            incoming,
            settings.max_request_body_bytes,
            settings.body_read_timeout,
        );
        let body = match &replay {
            Some(r) => body.teed(Arc::clone(r)),
            None => body,
        };
        if settings.access_log {
            let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
            ctx.bytes_in = Some(Arc::clone(&counter));
            body.counted(counter)
        } else {
            body
        }
    };
    let head = policy.map(|_| (parts.method.clone(), uri.clone(), headers.clone()));
    let mut out = Request::new(body);
    *out.method_mut() = parts.method;
    *out.uri_mut() = uri;
    *out.headers_mut() = headers;
    *out.version_mut() = Version::HTTP_11;

    // Boxed: the exchange's state is large, and on the heap it is built once
    // instead of being copied into this future (callgrind: ~300 fewer
    // instructions per request than unboxed). The route timeout is applied
    // inside, per step, so a timeout is charged to the endpoint's breaker.
    // One client connection may hold at most a quarter of an upstream's
    // slots, so no single (h2) peer can take the whole bulkhead.
    let share = match &ctx.activity {
        Some(a) => a
            .hold_upstream((upstream.requests.max() / 4).max(1))
            .map_err(|_| {
                metrics()
                    .overflow
                    .with_label_values(&["client_connection"])
                    .inc();
                ProxyError::Overloaded("client_connection")
            })?,
        None => None,
    };
    let deadline = tokio::time::Instant::now() + route.timeout;
    let _active = policy.map(Policy::begin);
    let mut tried = 0u64;
    let mut retries = 0u32;
    let mut _retrying = None;
    let result = loop {
        let try_deadline = policy
            .and_then(|p| p.settings.per_try_timeout)
            .map_or(deadline, |t| {
                (tokio::time::Instant::now() + t).min(deadline)
            });
        let result = Box::pin(upstream.send(out, key, try_deadline, &mut tried)).await;
        let (Some(p), Some((method, uri, headers)), Some(replay)) = (policy, &head, &replay) else {
            break result;
        };
        let reason = match &result {
            Ok(sent) => Some(Reason::Status(sent.response.status().as_u16())),
            Err(UpstreamError::Connect { .. }) => Some(Reason::ConnectError),
            Err(UpstreamError::Send { source, .. }) if source.body_error().is_none() => {
                Some(Reason::Reset)
            }
            Err(UpstreamError::Timeout { .. }) if try_deadline < deadline => Some(Reason::Timeout),
            Err(_) => None,
        };
        let Some(reason) = reason.filter(|r| retries < p.settings.attempts && p.wants(*r, method))
        else {
            break result;
        };
        let Some(body) = replay.lock().ok().and_then(|r| r.body()) else {
            break result;
        };
        let Some(slot) = p.try_retry() else {
            break result;
        };
        // The failed try's response (if any) is dropped unread: nothing of
        // it has reached the client.
        drop(result);
        p.count(reason);
        retries += 1;
        _retrying = Some(slot);
        // The route timeout bounds every try and every wait: the backoff
        // is cut short at the deadline, and 504 comes only once it passed.
        tokio::time::sleep_until((tokio::time::Instant::now() + p.backoff(retries)).min(deadline))
            .await;
        if tokio::time::Instant::now() >= deadline {
            return Err(ProxyError::UpstreamTimeout);
        }
        out = Request::new(body);
        *out.method_mut() = method.clone();
        *out.uri_mut() = uri.clone();
        *out.headers_mut() = headers.clone();
        *out.version_mut() = Version::HTTP_11;
    };
    let sent = match result {
        Err(UpstreamError::Timeout { .. }) => return Err(ProxyError::UpstreamTimeout),
        Err(UpstreamError::Unavailable { retry_after }) => {
            return Err(ProxyError::UpstreamUnavailable(
                retry_after.as_secs_f64().ceil().max(1.0) as u64,
            ));
        }
        Err(UpstreamError::Overloaded(scope)) => {
            metrics().overflow.with_label_values(&[scope]).inc();
            return Err(ProxyError::Overloaded(scope));
        }
        Err(UpstreamError::Connect { .. }) => return Err(ProxyError::UpstreamRefused),
        Err(UpstreamError::Send { source, .. }) => {
            return Err(match source.body_error() {
                Some(BodyError::TooLarge { limit }) => ProxyError::PayloadTooLarge(*limit),
                Some(BodyError::Timeout) => ProxyError::BodyTimeout,
                Some(BodyError::Read(_)) => ProxyError::BadRequest("request body read failed"),
                None => ProxyError::UpstreamReset,
            });
        }
        Ok(sent) => sent,
    };
    ctx.upstream_duration = Some(sent.took);
    ctx.upstream = Some((Arc::clone(upstream), Arc::clone(&sent.endpoint)));
    let guard = sent.inflight;
    let mut resp = sent.response;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let (Some((client_upgrade, _)), UpstreamBody::H1(body)) = (upgrade, resp.body_mut()) else {
            return Err(ProxyError::UpstreamReset);
        };
        let Some(tunnel) = body.take_upgraded() else {
            return Err(ProxyError::UpstreamReset);
        };
        // From here the connection is a tunnel: timed by its idle limit,
        // not by the head and keep-alive timers.
        if let Some(activity) = &ctx.activity {
            activity.into_tunnel(route.tunnel_idle.unwrap_or(settings.tunnel_idle_timeout));
        }
        tokio::spawn(bridge(client_upgrade, tunnel));
        let (parts, _) = resp.into_parts();
        let mut r = Response::from_parts(parts, ResponseBody::full(Bytes::new()));
        keep_only_upgrade_hop_headers(r.headers_mut());
        return Ok(r);
    }
    if resp.status().is_server_error()
        && let Some(entry) = ctx.stale.take()
    {
        return Ok(stale_response(
            route,
            &entry,
            parts_is_head(&ctx.method),
            Some(resp.status()),
        ));
    }
    headers::remove_hop_by_hop(resp.headers_mut());
    let (parts, body) = resp.into_parts();
    let body = ResponseBody::upstream(body, Some(guard)).holding(share);
    Ok(super::cache::store_step(ctx, route, parts, body).await)
}

fn keep_only_upgrade_hop_headers(h: &mut HeaderMap) {
    let upgrade = h.get(UPGRADE).cloned();
    headers::remove_hop_by_hop(h);
    if let Some(u) = upgrade {
        h.insert(UPGRADE, u);
        h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Copies bytes both ways between the upgraded client connection and the
/// upstream socket until either side closes. Bytes the upstream sent right
/// after its 101 head (already read) go to the client first.
async fn bridge(client: OnUpgrade, (mut upstream, early): (tokio::net::TcpStream, Bytes)) {
    let Ok(c) = client.await else {
        return;
    };
    let mut c = TokioIo::new(c);
    if !early.is_empty()
        && tokio::io::AsyncWriteExt::write_all(&mut c, &early)
            .await
            .is_err()
    {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut c, &mut upstream).await;
}

/// The consistent-hash key for this request, if the upstream hashes.
fn hash_key(
    upstream: &Upstream,
    req: &Request<Incoming>,
    ctx: &RequestCtx,
    normalized: Option<&str>,
) -> Option<u64> {
    match upstream.hash_on.as_ref()? {
        HashOn::Header(name) => req.headers().get(name).map(|v| hash64(v.as_bytes())),
        HashOn::Cookie(name) => {
            crate::cookies::get(req.headers(), name).map(|v| hash64(v.as_bytes()))
        }
        HashOn::ClientIp => Some(match ctx.client {
            std::net::IpAddr::V4(a) => hash64(&a.octets()),
            std::net::IpAddr::V6(a) => hash64(&a.octets()),
        }),
        HashOn::Path => Some(hash64(normalized.unwrap_or(req.uri().path()).as_bytes())),
    }
}
