//! Stage 7, forward (and the hand-over to stage 8, store): the upstream
//! request is built from the client's (its hop-by-hop fields went in
//! `pipeline::handle`), sent through the route's retry policy under the
//! route timeout, and its response streamed back: a 101 becomes a tunnel,
//! a 5xx may be covered by a stale cache entry, anything else goes through
//! the cache's store step.
//!
//! Order of the gateway's own headers, after the client's hop-by-hop
//! fields are gone: forwarding (`X-Forwarded-*`, `Forwarded`, `X-Real-IP`),
//! request id, client certificate subject, trace context, Host, upgrade,
//! the route's `request_headers`, then the cache's validators. No client
//! header can remove, duplicate or override one of them. A mirrored route
//! sends a copy of this request (`upstream/mirror.rs`) before the live one.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::header::{CONNECTION, EXPECT, HOST, HeaderValue, UPGRADE};
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::body::ResponseBody;
use super::conn::ConnUpstream;
use super::ctx::{End, Finish, RequestCtx};
use super::error::ProxyError;
use super::headers::{self, X_REQUEST_ID};
use crate::body::{MirrorTee, Replay, RequestBody};
use crate::hash::hash64;
use crate::observability::metrics::metrics;
use crate::snapshot::Route;
use crate::socket::Socket;
use crate::upstream::mirror::CopyBody;
use crate::upstream::retry::{self, Again};
use crate::upstream::{HashOn, Upstream, UpstreamBody, UpstreamError};

/// `x-client-cert-subject`: the verified client certificate's subject.
static X_CLIENT_CERT_SUBJECT: http::HeaderName =
    http::HeaderName::from_static("x-client-cert-subject");

/// Sends the request to `upstream` and streams its response back.
/// `host`: the request's authority; `normalized`: its path when
/// normalizing changed it.
pub(super) async fn forward(
    mut req: Request<Incoming>,
    ctx: &mut RequestCtx,
    route: &Route,
    upstream: &Arc<Upstream>,
    host: Option<HeaderValue>,
    normalized: Option<&str>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let upgrade = ctx
        .upgrade
        .take()
        .map(|proto| (hyper::upgrade::on(&mut req), proto));
    let key = hash_key(upstream, &req, ctx, normalized);
    let uri = upstream_uri(req.uri(), normalized, route)?;
    let (parts, incoming) = req.into_parts();
    let proto = upgrade.as_ref().map(|(_, p)| p);
    let mut headers = upstream_headers(
        parts.headers,
        parts.version,
        &parts.uri,
        ctx,
        route,
        host,
        proto,
    );
    ctx.cache.make_conditional(&mut headers);
    let empty = http_body::Body::is_end_stream(&incoming);
    // A mirrored route sends a copy aside (never of an upgrade): at once
    // without a body, else once the body has ended.
    let mut mirror_tee = None;
    if let Some(ticket) = route
        .mirror
        .as_ref()
        .filter(|_| upgrade.is_none())
        .and_then(|m| m.admit(&http_body::Body::size_hint(&incoming)))
    {
        let body = if empty {
            CopyBody::Empty
        } else {
            let (tee, body) = ticket.tee();
            mirror_tee = Some(tee);
            body
        };
        ticket.send(parts.method.clone(), uri.clone(), headers.clone(), body);
    }
    // A retrying route keeps the head and a copy of a small body; a tunnel
    // is never retried.
    let policy = route.retry.as_ref().filter(|_| upgrade.is_none());
    let replay = policy.map(|_| {
        Arc::new(Mutex::new(if empty {
            Replay::empty()
        } else {
            Replay::default()
        }))
    });
    let body = request_body(incoming, replay.as_ref(), mirror_tee, ctx);
    let again = replay.map(|replay| Again {
        method: parts.method.clone(),
        uri: uri.clone(),
        headers: headers.clone(),
        replay,
    });
    let mut out = Request::new(body);
    *out.method_mut() = parts.method;
    *out.uri_mut() = uri;
    *out.headers_mut() = headers;
    *out.version_mut() = Version::HTTP_11;

    let share = hold_share(ctx, upstream)?;
    // The route timeout is applied inside, per step, so a timeout is
    // charged to the endpoint's breaker.
    let deadline = tokio::time::Instant::now() + route.timeout;
    let sent = match retry::send(
        upstream,
        policy,
        out,
        again,
        key,
        deadline,
        retry::Tries {
            count: &mut ctx.attempts,
            spans: ctx.spans.as_deref_mut(),
        },
    )
    .await
    {
        Ok(sent) => sent,
        Err(e) => {
            if let UpstreamError::Overloaded(scope) = &e {
                metrics().overflow.with_label_values(&[scope]).inc();
            }
            // The log names what failed: the upstream and the last endpoint tried.
            ctx.failed = Some((Arc::clone(upstream), e.endpoint().into()));
            return Err(e.into());
        }
    };
    ctx.upstream_duration = Some(sent.took);
    ctx.upstream_status = Some(sent.response.status().as_u16());
    ctx.upstream = Some((Arc::clone(upstream), Arc::clone(&sent.endpoint)));
    let guard = sent.inflight;
    let mut resp = sent.response;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some((client_upgrade, _)) = upgrade else {
            return Err(ProxyError::UpstreamReset);
        };
        return tunnel(resp, client_upgrade, ctx, route);
    }
    if resp.status().is_server_error()
        && let Some(stale) = ctx.cache.stand_in(
            route.cache.as_ref(),
            ctx.method == Method::HEAD,
            Some(resp.status()),
        )
    {
        return Ok(stale);
    }
    headers::remove_hop_by_hop(resp.headers_mut());
    let (mut parts, body) = resp.into_parts();
    // Compressed before the store step, so the cache keeps the variant
    // for this coding and a hit is never compressed again.
    let compressor = match &route.compression {
        Some(c) if !ctx.grpc => c.decide(parts.status, &mut parts.headers, ctx.coding),
        _ => None,
    };
    let mut body = ResponseBody::upstream(body, Some(guard)).holding(share);
    if let Some(z) = compressor
        && ctx.method != Method::HEAD
    {
        body = body.compressed(z);
    }
    Ok(ctx.cache.store(route.cache.as_ref(), parts, body).await)
}

/// The upstream request's head: the client's fields, then the gateway's.
fn upstream_headers(
    mut headers: HeaderMap,
    version: Version,
    client_uri: &Uri,
    ctx: &RequestCtx,
    route: &Route,
    host: Option<HeaderValue>,
    upgrade: Option<&HeaderValue>,
) -> HeaderMap {
    if version == Version::HTTP_2 {
        headers::join_cookies(&mut headers);
    }
    // hyper answers 100-continue itself when the body is first read.
    headers.remove(EXPECT);
    let conn = &ctx.conn;
    headers::set_forwarding(
        &mut headers,
        conn.peer.ip(),
        &conn.peer_value,
        ctx.client,
        host.as_ref(),
        &ctx.snapshot.settings,
        conn.https,
    );
    headers.insert(&X_REQUEST_ID, ctx.request_id.clone());
    // Only the gateway says who the client certificate belongs to.
    headers.remove(&X_CLIENT_CERT_SUBJECT);
    if let Some(subject) = &conn.client_subject {
        headers.insert(&X_CLIENT_CERT_SUBJECT, subject.clone());
    }
    ctx.trace.apply(&mut headers);
    match (&route.host_rewrite, host) {
        (Some(h), _) => {
            headers.insert(HOST, h.clone());
        }
        // An absolute-form request may carry no Host header: send its authority.
        (None, Some(h)) if client_uri.authority().is_some() => {
            headers.insert(HOST, h);
        }
        _ => {}
    }
    if let Some(proto) = upgrade {
        headers.insert(UPGRADE, proto.clone());
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if !route.request_headers.is_empty() {
        route.request_headers.apply(&mut headers);
    }
    headers
}

/// The request body as sent upstream: bounded in size and read time,
/// copied for a retry when the route retries and for a mirror when one
/// copies it, counted (access log, size histogram).
fn request_body(
    incoming: Incoming,
    replay: Option<&Arc<Mutex<Replay>>>,
    mirror: Option<MirrorTee>,
    ctx: &mut RequestCtx,
) -> RequestBody {
    if http_body::Body::is_end_stream(&incoming) {
        return RequestBody::empty();
    }
    let settings = &ctx.snapshot.settings;
    let body = RequestBody::new(
        incoming,
        settings.max_request_body_bytes,
        settings.body_read_timeout,
    );
    let body = match replay {
        Some(r) => body.teed(Arc::clone(r)),
        None => body,
    };
    let body = match mirror {
        Some(tee) => body.mirrored(tee),
        None => body,
    };
    let counter = Arc::new(AtomicU64::new(0));
    ctx.bytes_in = Some(Arc::clone(&counter));
    body.counted(counter)
}

/// One client connection may hold at most a quarter of an upstream's
/// slots, so no single (h2) peer can take the whole bulkhead.
fn hold_share(ctx: &RequestCtx, upstream: &Upstream) -> Result<Option<ConnUpstream>, ProxyError> {
    let Some(activity) = &ctx.activity else {
        return Ok(None);
    };
    activity
        .hold_upstream((upstream.requests.max() / 4).max(1))
        .map_err(|_| {
            metrics()
                .overflow
                .with_label_values(&["client_connection"])
                .inc();
            ProxyError::Overloaded("client_connection")
        })
}

/// A 101 from the upstream: the client connection becomes a tunnel to the
/// upstream socket, timed by its idle limit, not by the head and
/// keep-alive timers.
fn tunnel(
    mut resp: Response<UpstreamBody>,
    client_upgrade: OnUpgrade,
    ctx: &mut RequestCtx,
    route: &Route,
) -> Result<Response<ResponseBody>, ProxyError> {
    let UpstreamBody::H1(body) = resp.body_mut() else {
        return Err(ProxyError::UpstreamReset);
    };
    let Some(upstream) = body.take_upgraded() else {
        return Err(ProxyError::UpstreamReset);
    };
    if let Some(activity) = &ctx.activity {
        activity.enter_tunnel(
            route
                .tunnel_idle
                .unwrap_or(ctx.snapshot.settings.tunnel_idle_timeout),
        );
    }
    let (finish, finished) = tokio::sync::oneshot::channel();
    ctx.tunnel = Some(finish);
    tokio::spawn(bridge(client_upgrade, upstream, finished));
    let (parts, _) = resp.into_parts();
    let mut r = Response::from_parts(parts, ResponseBody::full(Bytes::new()));
    keep_only_upgrade_hop_headers(r.headers_mut());
    Ok(r)
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
/// upstream socket until either side closes (or the shutdown grace runs
/// out), then runs the request's finish stage with the bytes each way.
/// Bytes the upstream sent right after its 101 head (already read) go to
/// the client first.
async fn bridge(
    client: OnUpgrade,
    (mut upstream, early): (Socket, Bytes),
    finished: tokio::sync::oneshot::Receiver<Box<Finish>>,
) {
    let Ok(finish) = finished.await else {
        return;
    };
    let (from_client, to_client, end) = match client.await {
        Ok(c) => {
            // Counted on the client's side, so a tunnel that ends in an
            // error or is cut still reports the bytes that went through.
            let mut c = Counting::new(TokioIo::new(c));
            let early_ok = early.is_empty()
                || tokio::io::AsyncWriteExt::write_all(&mut c, &early)
                    .await
                    .is_ok();
            let end = if early_ok {
                tokio::select! {
                    r = tokio::io::copy_bidirectional(&mut c, &mut upstream) => match r {
                        Ok(_) => End::Complete,
                        Err(_) => End::ClientGone,
                    },
                    () = finish.cut_happened() => End::ClientGone,
                }
            } else {
                End::ClientGone
            };
            (c.read, c.written, end)
        }
        Err(_) => (0, 0, End::ClientGone),
    };
    finish.tunnel_closed(from_client, to_client, end);
}

/// An I/O object that counts the bytes read from it and written to it.
struct Counting<T> {
    io: T,
    read: u64,
    written: u64,
}

impl<T> Counting<T> {
    fn new(io: T) -> Self {
        Self {
            io,
            read: 0,
            written: 0,
        }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Counting<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.io).poll_read(cx, buf);
        self.read += (buf.filled().len() - before) as u64;
        r
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Counting<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.io).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = r {
            self.written += n as u64;
        }
        r
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if let std::task::Poll::Ready(Ok(n)) = r {
            self.written += n as u64;
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
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
