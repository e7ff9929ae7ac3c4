//! The request pipeline: one straight function, `run`, calls the stages
//! in order (see ARCHITECTURE.md). Each stage is a function with one job;
//! it goes on, answers the request itself (`Flow::Answer`), or fails with
//! a `ProxyError` that maps to one status and body.
//!
//! 0. `accept` (server.rs, conn.rs): the connection and its watchdog.
//! 1. `admit`: load shedding first (503 at once, before any work), then
//!    the request's own limits and framing (admit.rs), `redirect_http`,
//!    `OPTIONS *`.
//! 2. `route`: normalize the path, look up the route (404 / 405).
//! 3. `guard` (guard.rs): the route's IP lists (403; `server.ip` is checked in
//!    admit, before routing), then its limits that need no identity, so
//!    floods are cut before any signature check (429).
//! 4. `authenticate`: the route's JWT policy (401, 403, 503), then the
//!    limits keyed on the identity (429).
//! 5. `answer`: `respond` and `redirect` routes answer here, after auth so
//!    they can be protected; forwarding routes pick their upstream.
//! 6. `cache_lookup`: hit, stale or miss (coalesced), through the
//!    request's one cache object (cache.rs).
//! 7. `forward` (forward.rs): the upstream request, retries, the response
//!    streamed back; stale-if-error covers an upstream that failed.
//! 8. `store` (cache.rs): a cacheable response teed into the cache.
//! 9. `respond`: the response's header rules, in `handle`.
//! 10. `finish` (ctx.rs): exactly once, attached to the response body, or
//!     run by the `Pending` guard when no response was made.
//!
//! The hot path avoids work it can skip: the URI is reused when the path
//! needs no change, header values are shared rather than copied, and the
//! hop-by-hop scan touches nothing when there is nothing to remove.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{ALLOW, CONNECTION, HOST, HeaderValue, LOCATION, UPGRADE};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;

use super::admit::{admit, host_for_routing};
use super::body::ResponseBody;
use super::cache::{CACHE_STATUS, RequestCache};
use super::conn::ActivityGuard;
use super::ctx::{ConnFacts, InProgress, LogTarget, Pending, RequestCtx};
use super::error::{Party, ProxyError};
use super::forward::forward;
use super::guard::{guard, limit};
use super::headers::{self, X_REQUEST_ID};
use crate::observability::metrics::metrics;
use crate::observability::trace::TraceContext;
use crate::routing::normalize::normalize_path;
use crate::routing::{RequestView, RouteLookup};
use crate::snapshot::{Action, Route, SharedSnapshot, Snapshot};
use crate::upstream::Upstream;

/// What a stage decided: go on (with what it produced), or answer now.
#[expect(
    clippy::large_enum_variant,
    reason = "returned once per stage and moved straight out: boxing the answer would allocate on every local answer and cache hit"
)]
pub(super) enum Flow<T> {
    Continue(T),
    Answer(Response<ResponseBody>),
}

/// Takes a stage's `Flow`: its value, or the answer returned from `run`.
macro_rules! next {
    ($flow:expr) => {
        match $flow {
            Flow::Continue(v) => v,
            Flow::Answer(r) => return Ok(r),
        }
    };
}

/// Runs one request through the pipeline. Never fails: every error becomes
/// a response.
pub(crate) async fn handle(
    mut req: Request<Incoming>,
    conn: Arc<ConnFacts>,
    activity: Option<ActivityGuard>,
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
        && let Some(activity) = &activity
    {
        activity.bodiless();
    }
    headers::remove_hop_by_hop(req.headers_mut());
    // Accounted exactly once even if this future is dropped unanswered.
    let mut ctx = Pending::new(context(&req, conn, activity, snapshot));
    ctx.upgrade = upgrade;
    let resp = match run(req, &mut ctx).await {
        Ok(r) => r,
        Err(e) => {
            ctx.reason = e.describe().code;
            if ctx.grpc {
                e.to_grpc_response().map(ResponseBody::full)
            } else {
                let id = ctx.request_id.to_str().unwrap_or("");
                e.to_response(id).map(ResponseBody::full)
            }
        }
    };
    let resp = respond(resp, &ctx);
    if ctx.grpc {
        ctx.grpc_status = super::ctx::grpc_status(resp.headers());
    }
    let status = resp.status().as_u16();
    let stall = ctx.activity.as_ref().and_then(ActivityGuard::stall_clock);
    // An upgrade ends when its tunnel closes, not with the 101.
    if let Some(tunnel) = ctx.tunnel.take() {
        if let Some(finish) = ctx.answered(status) {
            let _ = tunnel.send(finish);
        }
        return resp;
    }
    match ctx.answered(status) {
        Some(finish) => resp.map(|b| b.with_stall_clock(stall).with_finish(finish)),
        None => resp,
    }
}

/// The stages, in order.
async fn run(
    mut req: Request<Incoming>,
    ctx: &mut RequestCtx,
) -> Result<Response<ResponseBody>, ProxyError> {
    let snapshot = Arc::clone(&ctx.snapshot);
    // 1. admit
    let host = next!(admit_request(&mut req, ctx, &snapshot)?);
    // 2. route
    let route_host = host_for_routing(host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or(""));
    let (route, normalized) = find_route(&req, &route_host, &snapshot)?;
    ctx.route = Some(Arc::clone(&route));
    // 3. guard: the route's IP lists, a CORS preflight, then the limits
    // that need no identity
    next!(guard(&route, &req, ctx)?);
    limit(&route, false, &req, ctx).await?;
    // 4. authenticate, then the limits keyed on the identity
    authenticate(&route, &mut req, ctx).await?;
    limit(&route, true, &req, ctx).await?;
    // 5. answer locally, or pick the upstream
    let upstream = next!(answer(&route, &req)?);
    // The coding a compressed response would use: the cache keys its
    // variants on it, and the upstream is asked for it alone.
    if let Some(c) = &route.compression
        && !ctx.grpc
        && ctx.upgrade.is_none()
    {
        ctx.coding = c.negotiate(req.headers_mut());
    }
    // 6. cache lookup
    let req = next!(
        cache_lookup(
            req,
            ctx,
            &route,
            upstream,
            (&host, &route_host, normalized.as_deref())
        )
        .await?
    );
    // 7. forward (8. store happens as the response streams)
    let head_only = req.method() == Method::HEAD;
    match forward(req, ctx, &route, upstream, host, normalized.as_deref()).await {
        Ok(resp) => {
            ctx.cache.invalidate_after(
                route.cache.as_ref(),
                &resp,
                snapshot.broadcast_invalidation.as_ref(),
            );
            Ok(resp)
        }
        // stale-if-error: a failing upstream (connect error, reset,
        // timeout, unavailable) is covered by the stale entry.
        Err(e) if e.describe().party == Party::Upstream => ctx
            .cache
            .stand_in(route.cache.as_ref(), head_only, None)
            .ok_or(e),
        Err(e) => Err(e),
    }
}

/// Stage 1, admit: load shedding first (over the limit of requests in
/// progress, refuse at once rather than queue: this request is counted
/// already), then the request's head (admit.rs), `redirect_http` and
/// `OPTIONS *`. Goes on with the request's authority.
fn admit_request(
    req: &mut Request<Incoming>,
    ctx: &RequestCtx,
    snapshot: &Snapshot,
) -> Result<Flow<Option<HeaderValue>>, ProxyError> {
    let settings = &snapshot.settings;
    if ctx.in_progress.count > settings.max_inflight_requests {
        metrics().overflow.with_label_values(&["global"]).inc();
        return Err(ProxyError::Overloaded("global"));
    }
    let host = admit(req, settings)?;
    // `server.ip`, before any routing work.
    if let Some(rules) = &settings.ip
        && !rules.permits(ctx.client)
    {
        metrics().ip_denied.with_label_values(&["", "server"]).inc();
        return Err(ProxyError::IpDenied);
    }
    if !ctx.conn.https && settings.redirect_https {
        return https_redirect(req, host.as_ref(), ctx.conn.https_port).map(Flow::Answer);
    }
    if req.uri() == "*" {
        let mut r = Response::new(ResponseBody::full(Bytes::new()));
        r.headers_mut().insert(
            ALLOW,
            HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS"),
        );
        return Ok(Flow::Answer(r));
    }
    Ok(Flow::Continue(host))
}

/// Stage 2, route: the route for the normalized path (404, 405), and the
/// normalized path when normalizing changed it.
fn find_route(
    req: &Request<Incoming>,
    route_host: &str,
    snapshot: &Snapshot,
) -> Result<(Arc<Route>, Option<String>), ProxyError> {
    let normalized = match normalize_path(req.uri().path(), snapshot.settings.normalize)
        .map_err(ProxyError::BadPath)?
    {
        std::borrow::Cow::Borrowed(_) => None,
        std::borrow::Cow::Owned(p) => Some(p),
    };
    let view = RequestView {
        method: req.method(),
        host: route_host,
        path: normalized.as_deref().unwrap_or(req.uri().path()),
        query: req.uri().query(),
        headers: req.headers(),
    };
    // A CORS preflight goes to the route of the request it asks about,
    // when that route answers preflights (`cors`).
    if crate::access::cors::is_preflight(req.method(), req.headers())
        && let Some(asked) = crate::access::cors::requested_method(req.headers())
    {
        let asked_view = RequestView {
            method: &asked,
            ..view
        };
        if let RouteLookup::Found(id) = snapshot.router.lookup(&asked_view)
            && let Some(route) = snapshot.routes.get(id).filter(|r| r.cors.is_some())
        {
            return Ok((Arc::clone(route), normalized));
        }
    }
    let id = match snapshot.router.lookup(&view) {
        RouteLookup::Found(id) => id,
        RouteLookup::MethodNotAllowed(allow) => return Err(ProxyError::MethodNotAllowed(allow)),
        RouteLookup::NotFound => return Err(ProxyError::NoRoute),
    };
    let route = snapshot.routes.get(id).ok_or(ProxyError::NoRoute)?;
    Ok((Arc::clone(route), normalized))
}

/// Stage 4, authenticate: the route's JWT policy; the identity goes into
/// the context, forwarded claims into the request headers.
async fn authenticate(
    route: &Route,
    req: &mut Request<Incoming>,
    ctx: &mut RequestCtx,
) -> Result<(), ProxyError> {
    let Some(policy) = &route.auth else {
        return Ok(());
    };
    let started = ctx.spans.is_some().then(Instant::now);
    // A `Uri` clone shares its bytes: no copy of the query.
    let uri = req.uri().clone();
    let checked = policy
        .check(req.headers_mut(), uri.query(), &ctx.conn.auth_memo)
        .await
        .map_err(ProxyError::Auth);
    ctx.record_stage("auth", started, &checked, "tollgate.auth.result", vec![]);
    ctx.identity = checked?;
    strip_query_tokens(req, policy);
    Ok(())
}

/// Stage 5, answer: `respond` and `redirect` routes answer here; a
/// forwarding route goes on with its upstream (a split picks one).
fn answer<'r>(
    route: &'r Route,
    req: &Request<Incoming>,
) -> Result<Flow<&'r Arc<Upstream>>, ProxyError> {
    match &route.action {
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
            Ok(Flow::Answer(r))
        }
        Action::Redirect { status, location } => {
            let mut r = Response::new(ResponseBody::full(Bytes::new()));
            *r.status_mut() = *status;
            r.headers_mut().insert(LOCATION, location.clone());
            Ok(Flow::Answer(r))
        }
        Action::Forward(u) => Ok(Flow::Continue(u)),
        Action::Split(s) => s
            .pick()
            .map(Flow::Continue)
            .ok_or(ProxyError::UpstreamUnavailable(1)),
    }
}

/// Stage 6, cache lookup on a cached route: a hit answers; a
/// stale-while-revalidate hit also starts the background refresh, which
/// forwards this request's twin. `target`: the request's authority, its
/// host for routing, and its normalized path.
async fn cache_lookup(
    mut req: Request<Incoming>,
    ctx: &mut RequestCtx,
    route: &Arc<Route>,
    upstream: &Arc<Upstream>,
    (host, route_host, normalized): (&Option<HeaderValue>, &str, Option<&str>),
) -> Result<Flow<Request<Incoming>>, ProxyError> {
    let Some(rc) = &route.cache else {
        return Ok(Flow::Continue(req));
    };
    let started = ctx.spans.is_some().then(Instant::now);
    let found = ctx
        .cache
        .lookup(
            rc,
            &mut req,
            ctx.identity.as_deref(),
            route_host,
            normalized,
            route.timeout,
        )
        .await;
    if started.is_some() {
        // What `Cache-Status` will say: the hit's own, or the miss's.
        let status = match &found {
            Ok(Some(hit)) => hit.headers().get(&CACHE_STATUS).cloned(),
            Ok(None) => Some(ctx.cache.status(&ctx.method, "")),
            Err(_) => None,
        };
        let mut attributes = vec![opentelemetry::KeyValue::new(
            "tollgate.cache.hit",
            matches!(found, Ok(Some(_))),
        )];
        attributes.extend(
            status
                .and_then(|s| s.to_str().ok().map(str::to_owned))
                .map(|s| opentelemetry::KeyValue::new("tollgate.cache.status", s)),
        );
        ctx.record_stage(
            "cache_lookup",
            started,
            &found,
            "tollgate.cache.result",
            attributes,
        );
    }
    let Some(hit) = found? else {
        return Ok(Flow::Continue(req));
    };
    if let Some(cache) = ctx.cache.refresh() {
        let mut bg = ctx.for_background(cache);
        let (route, upstream) = (Arc::clone(route), Arc::clone(upstream));
        let (host, normalized) = (host.clone(), normalized.map(str::to_owned));
        tokio::spawn(async move {
            if let Ok(resp) =
                forward(req, &mut bg, &route, &upstream, host, normalized.as_deref()).await
            {
                // Reading the body to its end stores it.
                let mut body = resp.into_body();
                while let Some(Ok(_)) = http_body_util::BodyExt::frame(&mut body).await {}
            }
        });
    }
    Ok(Flow::Answer(hit))
}

/// Stage 9, respond: the route's response header rules, what the cache
/// did, the request id, the rate-limit headers and HSTS, on every
/// response (the gateway's own included).
fn respond(mut resp: Response<ResponseBody>, ctx: &RequestCtx) -> Response<ResponseBody> {
    if let Some(route) = &ctx.route {
        if !route.response_headers.is_empty() {
            route.response_headers.apply(resp.headers_mut());
        }
        // Every response on a cached route says what the cache did.
        if route.cache.is_some() && !resp.headers().contains_key(&CACHE_STATUS) {
            let status = ctx.cache.status(&ctx.method, ctx.reason);
            resp.headers_mut().insert(&CACHE_STATUS, status);
        }
    }
    if let Some(cors) = ctx.route.as_ref().and_then(|r| r.cors.as_ref())
        && !ctx.preflight
    {
        cors.respond(ctx.origin.as_ref(), resp.headers_mut());
    }
    resp.headers_mut()
        .insert(&X_REQUEST_ID, ctx.request_id.clone());
    if let Some((policy, verdict)) = &ctx.rate_limit {
        crate::ratelimit::headers(policy, verdict, resp.headers_mut());
    }
    if ctx.conn.https
        && let Some(hsts) = &ctx.snapshot.settings.hsts
    {
        resp.headers_mut()
            .insert(http::header::STRICT_TRANSPORT_SECURITY, hsts.clone());
    }
    resp
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

fn context(
    req: &Request<Incoming>,
    conn: Arc<ConnFacts>,
    activity: Option<ActivityGuard>,
    snapshot: Arc<Snapshot>,
) -> RequestCtx {
    let h = req.headers();
    let request_id = match h.get(&X_REQUEST_ID) {
        Some(v) if headers::valid_request_id(v) => v.clone(),
        _ => headers::new_request_id(),
    };
    let start = Instant::now();
    let trace = TraceContext::from_headers(h, snapshot.tracer.as_deref());
    let spans = snapshot
        .tracer
        .as_ref()
        .and_then(|_| trace.recording(h, start));
    // Shared, not copied: a `Uri` and a `HeaderValue` clone share their
    // bytes with the request head.
    let log_target = (snapshot.settings.access_log || spans.is_some()).then(|| LogTarget {
        uri: req.uri().clone(),
        host: h.get(HOST).cloned(),
        user_agent: h.get(http::header::USER_AGENT).cloned(),
    });
    RequestCtx {
        client: headers::client_ip(conn.peer.ip(), h, &snapshot.settings),
        in_progress: InProgress::new(Arc::clone(&conn.inflight)),
        conn,
        activity,
        grpc: h
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc")),
        rate_limit: None,
        tunnel: None,
        cache: RequestCache::default(),
        upgrade: None,
        trace,
        spans,
        start,
        method: req.method().clone(),
        route: None,
        origin: None,
        preflight: false,
        coding: None,
        upstream: None,
        failed: None,
        attempts: 0,
        upstream_status: None,
        version: req.version(),
        grpc_status: None,
        upstream_duration: None,
        reason: "",
        bytes_in: None,
        identity: None,
        log_target,
        request_id,
        snapshot,
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
