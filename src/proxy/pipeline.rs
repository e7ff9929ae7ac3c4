//! The request pipeline, in stage order (see ARCHITECTURE.md):
//!
//! 1. `admit`: take the snapshot once, request id, trace context, client
//!    address; refuse what RFC 9110/9112 say a proxy must not forward.
//! 2. `route`: normalize the path, look up the route (404 / 405); `respond`
//!    and `redirect` routes answer here.
//! 6. `select` / 7. `forward`: pick the upstream (split), build the upstream request
//!    (hop-by-hop removal, forwarding headers, rewrites), send it with the
//!    route timeout, stream the response back.
//! 9. `respond`: response header rules, request id on every response.
//! 10. `finish`: attached to the response body, runs exactly once.
//!
//! Later stages (authenticate, rate_limit, cache) slot in between route and
//! forward.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::header::{
    CONNECTION, CONTENT_LENGTH, EXPECT, HOST, HeaderValue, LOCATION, TRANSFER_ENCODING, UPGRADE,
};
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::body::ResponseBody;
use super::ctx::{Finish, RequestCtx};
use super::error::ProxyError;
use super::headers::{self, TraceContext, X_REQUEST_ID};
use super::server::ActivityGuard;
use crate::body::{BodyError, RequestBody, find_body_error};
use crate::config::spec::UnderscorePolicy;
use crate::observability::metrics::metrics;
use crate::routing::normalize::normalize_path;
use crate::routing::{Lookup, RequestView};
use crate::snapshot::{Action, Route, SharedSnapshot, Snapshot};
use crate::upstream::{HashOn, Upstream, UpstreamError, balance::hash64};

/// What the connection knows about its requests.
pub struct ConnInfo {
    /// The TCP peer.
    pub peer: SocketAddr,
    /// Marks the request in flight on its connection until it finishes.
    pub activity: Option<ActivityGuard>,
}

/// Runs one request through the pipeline. Never fails: every error becomes
/// a response.
pub async fn handle(
    req: Request<Incoming>,
    conn: ConnInfo,
    live: &SharedSnapshot,
) -> Response<ResponseBody> {
    let snapshot = live.load_full();
    metrics().requests_inflight.inc();
    let mut ctx = admit_ctx(&req, conn, snapshot);
    let mut resp = match run(req, &mut ctx).await {
        Ok(r) => r,
        Err(e) => {
            ctx.reason = e.describe().1;
            e.to_response(&ctx.request_id).map(ResponseBody::full)
        }
    };
    if let Some(route) = ctx.route.and_then(|i| ctx.snapshot.routes.get(i)) {
        route.response_headers.apply(resp.headers_mut());
    }
    if let Ok(v) = HeaderValue::try_from(ctx.request_id.as_str()) {
        resp.headers_mut().insert(&X_REQUEST_ID, v);
    }
    let status = resp.status().as_u16();
    resp.map(|b| b.with_finish(Finish::new(ctx, status)))
}

fn admit_ctx(req: &Request<Incoming>, conn: ConnInfo, snapshot: Arc<Snapshot>) -> RequestCtx {
    let h = req.headers();
    let request_id = match h.get(&X_REQUEST_ID) {
        Some(v) if headers::valid_request_id(v) => {
            String::from_utf8_lossy(v.as_bytes()).into_owned()
        }
        _ => headers::new_request_id(),
    };
    let log_target = snapshot.settings.access_log.then(|| {
        let host = req
            .uri()
            .host()
            .map(str::to_owned)
            .or_else(|| h.get(HOST).and_then(|v| v.to_str().ok()).map(str::to_owned));
        (host.unwrap_or_default(), req.uri().path().to_owned())
    });
    RequestCtx {
        client: headers::client_ip(conn.peer.ip(), h, &snapshot.settings),
        peer: conn.peer.ip(),
        activity: conn.activity,
        trace: TraceContext::from_headers(h),
        start: Instant::now(),
        arrived: SystemTime::now(),
        method: req.method().clone(),
        route: None,
        upstream: None,
        upstream_duration: None,
        reason: "",
        bytes_in: h
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        log_target,
        request_id,
        snapshot,
    }
}

type Answer = Response<ResponseBody>;

async fn run(mut req: Request<Incoming>, ctx: &mut RequestCtx) -> Result<Answer, ProxyError> {
    let snapshot = Arc::clone(&ctx.snapshot);
    let settings = &snapshot.settings;

    // 1. admit
    let host = admit(
        &mut req,
        settings.headers_with_underscores,
        settings.max_request_body_bytes,
    )?;
    if req.uri() == "*" {
        let mut r = Response::new(ResponseBody::full(Bytes::new()));
        r.headers_mut().insert(
            http::header::ALLOW,
            HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS"),
        );
        return Ok(r);
    }

    // 2. route
    let path = normalize_path(req.uri().path(), settings.normalize).map_err(ProxyError::BadPath)?;
    let route_host = host_for_routing(&host);
    let view = RequestView {
        method: req.method(),
        host: &route_host,
        path: &path,
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
    let upstream = match &route.action {
        Action::Respond {
            status,
            body,
            headers,
        } => {
            let mut r = Response::new(ResponseBody::full(if req.method() == Method::HEAD {
                Bytes::new()
            } else {
                body.clone()
            }));
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
        Action::Forward(u) => Arc::clone(u),
        Action::Split(s) => Arc::clone(s.pick().ok_or(ProxyError::NoEndpoint)?),
    };
    let path = path.into_owned();

    // 6–7. forward
    forward(req, ctx, route, &upstream, &host, &path).await
}

/// Refuses requests a proxy must not forward; returns the request's host
/// (with port, as sent).
fn admit(
    req: &mut Request<Incoming>,
    underscores: UnderscorePolicy,
    max_body: u64,
) -> Result<String, ProxyError> {
    if req.method() == Method::CONNECT {
        return Err(ProxyError::BadRequest("CONNECT is not supported"));
    }
    if req.uri() == "*" && req.method() != Method::OPTIONS {
        return Err(ProxyError::BadRequest(
            "asterisk-form is only allowed with OPTIONS",
        ));
    }
    if req.version() <= Version::HTTP_11 {
        framing(req.headers())?;
    }
    let mut hosts = req.headers().get_all(HOST).iter();
    let host_header = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::BadRequest("repeated Host header"));
    }
    let host_header = match host_header {
        Some(v) => Some(parse_host(v.as_bytes())?),
        None => None,
    };
    let host = match (req.uri().authority(), host_header) {
        (Some(a), Some(h)) if !a.as_str().eq_ignore_ascii_case(h.as_str()) => {
            return Err(ProxyError::BadRequest(
                "request target authority differs from Host",
            ));
        }
        (Some(a), _) => {
            if a.as_str().contains('@') {
                return Err(ProxyError::BadRequest("user info in request target"));
            }
            a.as_str().to_owned()
        }
        (None, Some(h)) => h.as_str().to_owned(),
        (None, None) if req.version() == Version::HTTP_10 => String::new(),
        (None, None) => return Err(ProxyError::BadRequest("missing Host header")),
    };
    if underscores != UnderscorePolicy::Allow {
        let names: Vec<_> = req
            .headers()
            .keys()
            .filter(|k| k.as_str().contains('_'))
            .cloned()
            .collect();
        if !names.is_empty() && underscores == UnderscorePolicy::Reject {
            return Err(ProxyError::BadRequest(
                "header names with underscores are not allowed",
            ));
        }
        for n in names {
            req.headers_mut().remove(n);
        }
    }
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body) {
        return Err(ProxyError::PayloadTooLarge(max_body));
    }
    Ok(host)
}

/// RFC 9112 §6.3: a request with both Transfer-Encoding and Content-Length,
/// or with a transfer coding other than a single final `chunked`, has
/// ambiguous framing; it is refused (and the connection closed) rather than
/// forwarded, since another hop might read it differently.
fn framing(h: &HeaderMap) -> Result<(), ProxyError> {
    let mut te = h.get_all(TRANSFER_ENCODING).iter();
    let Some(first) = te.next() else {
        return Ok(());
    };
    if h.contains_key(CONTENT_LENGTH) {
        return Err(ProxyError::BadRequest(
            "both Transfer-Encoding and Content-Length",
        ));
    }
    if te.next().is_some() || !first.as_bytes().eq_ignore_ascii_case(b"chunked") {
        return Err(ProxyError::BadRequest(
            "unsupported Transfer-Encoding (only a single chunked)",
        ));
    }
    Ok(())
}

fn parse_host(v: &[u8]) -> Result<Authority, ProxyError> {
    if v.is_empty() || v.contains(&b'@') {
        return Err(ProxyError::BadRequest("invalid Host header"));
    }
    Authority::try_from(v).map_err(|_| ProxyError::BadRequest("invalid Host header"))
}

/// Lower-case host without port (borrowed when already so).
fn host_for_routing(host: &str) -> std::borrow::Cow<'_, str> {
    let bare = if host.starts_with('[') {
        host.split_inclusive(']').next().unwrap_or(host)
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    if bare.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(bare.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(bare)
    }
}

fn wants_upgrade(req: &Request<Incoming>) -> bool {
    req.version() == Version::HTTP_11
        && req
            .headers()
            .get(UPGRADE)
            .is_some_and(|u| !u.as_bytes().eq_ignore_ascii_case(b"h2c"))
        && req.headers().get_all(CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
}

async fn forward(
    mut req: Request<Incoming>,
    ctx: &mut RequestCtx,
    route: &Route,
    upstream: &Arc<Upstream>,
    host: &str,
    path: &str,
) -> Result<Answer, ProxyError> {
    let settings = &ctx.snapshot.settings;
    let upgrade = wants_upgrade(&req).then(|| {
        let proto = req.headers().get(UPGRADE).cloned();
        (hyper::upgrade::on(&mut req), proto)
    });
    let key = hash_key(upstream, &req, ctx, path);
    let (parts, incoming) = req.into_parts();
    let mut headers = parts.headers;
    headers::remove_hop_by_hop(&mut headers);
    headers.remove(EXPECT);
    headers::set_forwarding(&mut headers, ctx.peer, host, settings);
    if let Ok(v) = HeaderValue::try_from(ctx.request_id.as_str()) {
        headers.insert(&X_REQUEST_ID, v);
    }
    ctx.trace.apply(&mut headers);
    match &route.host_rewrite {
        Some(h) => {
            headers.insert(HOST, h.clone());
        }
        None if !host.is_empty() => {
            if let Ok(v) = HeaderValue::try_from(host) {
                headers.insert(HOST, v);
            }
        }
        None => {}
    }
    if let Some((_, Some(proto))) = &upgrade {
        headers.insert(UPGRADE, proto.clone());
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
    route.request_headers.apply(&mut headers);

    let rewritten = route.rewrite.apply(path);
    let target_path = rewritten.as_deref().unwrap_or(path);
    let uri = build_uri(target_path, parts.uri.query())?;
    let body = if http_body::Body::is_end_stream(&incoming) {
        RequestBody::empty()
    } else {
        RequestBody::new(
            incoming,
            settings.max_request_body_bytes,
            settings.body_read_timeout,
        )
    };
    let mut out = Request::new(body);
    *out.method_mut() = parts.method;
    *out.uri_mut() = uri;
    *out.headers_mut() = headers;
    *out.version_mut() = Version::HTTP_11;

    let started = Instant::now();
    let sent = match tokio::time::timeout(route.timeout, upstream.send(out, key)).await {
        Err(_) => return Err(ProxyError::UpstreamTimeout),
        Ok(Err(UpstreamError::Connect { .. })) => return Err(ProxyError::UpstreamRefused),
        Ok(Err(UpstreamError::Send { source, .. })) => {
            return Err(match find_body_error(&source) {
                Some(BodyError::TooLarge { limit }) => ProxyError::PayloadTooLarge(*limit),
                Some(BodyError::Timeout) => ProxyError::BodyTimeout,
                Some(BodyError::Read(_)) => ProxyError::BadRequest("request body read failed"),
                None => ProxyError::UpstreamReset,
            });
        }
        Ok(Ok(sent)) => sent,
    };
    ctx.upstream_duration = Some(started.elapsed());
    ctx.upstream = Some((upstream.name.clone(), sent.endpoint.id.clone()));
    let guard = sent.track();
    let mut resp = sent.response;
    let status = resp.status();
    if status == StatusCode::SWITCHING_PROTOCOLS {
        if let Some((client_upgrade, _)) = upgrade {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            tokio::spawn(bridge(client_upgrade, upstream_upgrade));
            let (parts, _) = resp.into_parts();
            let mut r = Response::from_parts(parts, ResponseBody::full(Bytes::new()));
            keep_only_upgrade_hop_headers(r.headers_mut());
            drop(guard);
            return Ok(r);
        }
        return Err(ProxyError::UpstreamReset);
    }
    headers::remove_hop_by_hop(resp.headers_mut());
    let (parts, body) = resp.into_parts();
    Ok(Response::from_parts(
        parts,
        ResponseBody::upstream(body, Some(guard)),
    ))
}

fn keep_only_upgrade_hop_headers(h: &mut HeaderMap) {
    let upgrade = h.get(UPGRADE).cloned();
    headers::remove_hop_by_hop(h);
    if let Some(u) = upgrade {
        h.insert(UPGRADE, u);
        h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Copies bytes both ways between the upgraded client and upstream
/// connections until either side closes.
async fn bridge(client: OnUpgrade, upstream: OnUpgrade) {
    let (Ok(c), Ok(u)) = tokio::join!(client, upstream) else {
        return;
    };
    let mut c = TokioIo::new(c);
    let mut u = TokioIo::new(u);
    let _ = tokio::io::copy_bidirectional(&mut c, &mut u).await;
}

fn build_uri(path: &str, query: Option<&str>) -> Result<Uri, ProxyError> {
    let pq = match query {
        Some(q) => PathAndQuery::try_from(format!("{path}?{q}")),
        None => PathAndQuery::try_from(path),
    }
    .map_err(|_| ProxyError::BadRequest("invalid request target"))?;
    Ok(Uri::from(pq))
}

/// The consistent-hash key for this request, if the upstream hashes.
fn hash_key(
    upstream: &Upstream,
    req: &Request<Incoming>,
    ctx: &RequestCtx,
    path: &str,
) -> Option<u64> {
    match upstream.hash_on.as_ref()? {
        HashOn::Header(name) => req.headers().get(name).map(|v| hash64(v.as_bytes())),
        HashOn::Cookie(name) => req
            .headers()
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|kv| {
                kv.trim()
                    .split_once('=')
                    .filter(|(k, _)| k == name)
                    .map(|(_, v)| hash64(v.as_bytes()))
            }),
        HashOn::ClientIp => Some(match ctx.client {
            std::net::IpAddr::V4(a) => hash64(&a.octets()),
            std::net::IpAddr::V6(a) => hash64(&a.octets()),
        }),
        HashOn::Path => Some(hash64(path.as_bytes())),
    }
}
