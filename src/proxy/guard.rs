//! Stage 3, guard: what needs no identity, cheapest first: the route's IP
//! lists (403), a CORS preflight (answered here, before the limits and
//! authentication a browser's preflight cannot pass), then the rate
//! limits keyed without identity (429). The identity's own limits run
//! after stage 4 through the same `limit`.

use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use super::body::ResponseBody;
use super::ctx::RequestCtx;
use super::error::ProxyError;
use super::pipeline::Flow;
use crate::observability::metrics::metrics;
use crate::snapshot::Route;

/// Stage 3, guard (what needs no limit or identity): the route's IP
/// lists (403), then a CORS preflight, answered here: browsers send no
/// credentials on one, so it must not meet authentication or the limits.
pub(super) fn guard(
    route: &Route,
    req: &Request<Incoming>,
    ctx: &mut RequestCtx,
) -> Result<Flow<()>, ProxyError> {
    if let Some(rules) = &route.ip
        && !rules.permits(ctx.client)
    {
        metrics()
            .ip_denied
            .with_label_values(&[route.name.as_str(), "route"])
            .inc();
        return Err(ProxyError::IpDenied);
    }
    let Some(cors) = &route.cors else {
        return Ok(Flow::Continue(()));
    };
    if crate::access::cors::is_preflight(req.method(), req.headers()) {
        ctx.preflight = true;
        let mut r = Response::new(ResponseBody::full(Bytes::new()));
        *r.status_mut() = StatusCode::NO_CONTENT;
        *r.headers_mut() = cors.preflight(req.headers());
        return Ok(Flow::Answer(r));
    }
    ctx.origin = req.headers().get(http::header::ORIGIN).cloned();
    Ok(Flow::Continue(()))
}

/// Stages 3 and 4: the route's rate limits of one phase (before or after
/// authentication); the verdict the response headers describe goes into
/// the context.
pub(super) async fn limit(
    route: &Route,
    after_auth: bool,
    req: &Request<Incoming>,
    ctx: &mut RequestCtx,
) -> Result<(), ProxyError> {
    let Some(limits) = &route.limits else {
        return Ok(());
    };
    let started = ctx
        .spans
        .as_ref()
        .filter(|_| {
            limits
                .policies
                .iter()
                .any(|(p, _)| p.after_auth == after_auth)
        })
        .map(|_| Instant::now());
    let checked = check_limits(limits, route, after_auth, req, ctx).await;
    let phase = if after_auth {
        "after_auth"
    } else {
        "before_auth"
    };
    ctx.record_stage(
        "rate_limit",
        started,
        &checked,
        "tollgate.rate_limit.result",
        vec![opentelemetry::KeyValue::new(
            "tollgate.rate_limit.phase",
            phase,
        )],
    );
    checked
}

/// The route's limits for one phase: allowed (with the verdict closest
/// to its limit kept for the RateLimit headers), or refused.
async fn check_limits(
    limits: &crate::ratelimit::RouteLimits,
    route: &Route,
    after_auth: bool,
    req: &Request<Incoming>,
    ctx: &mut RequestCtx,
) -> Result<(), ProxyError> {
    use crate::ratelimit::{KeyInput, LimitOutcome};
    let input = KeyInput {
        headers: req.headers(),
        client: ctx.client,
        route: &route.name,
        identity: ctx.identity.as_deref(),
    };
    match limits.check(after_auth, &input).await {
        LimitOutcome::Allowed(verdict) => {
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
        LimitOutcome::Limited(policy, v) => {
            let secs = v.retry_after.as_secs_f64().ceil().max(1.0) as u64;
            ctx.rate_limit = Some((policy, v));
            Err(ProxyError::RateLimited(secs))
        }
        LimitOutcome::MissingKey if route.auth.is_some() => {
            Err(ProxyError::Auth(crate::auth::AuthFailure::Missing))
        }
        LimitOutcome::MissingKey => Err(ProxyError::RateLimited(1)),
        LimitOutcome::RepeatedKey => Err(ProxyError::BadRequest(
            "a rate-limit key header was sent more than once",
        )),
        LimitOutcome::Unavailable => Err(ProxyError::RateLimitUnavailable),
    }
}
