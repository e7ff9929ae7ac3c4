//! The one place a failure becomes a response: status, stable error code
//! (also the access log's reason and a metric label), who failed, and
//! whether the connection must close. No `_ =>` arm: a new variant does not
//! compile until it is mapped here.

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_TYPE, HeaderValue};
use http::{Method, Response, StatusCode};
use serde::Serialize;

use crate::auth::AuthFailure;
use crate::body::BodyError;
use crate::routing::normalize::PathError;
use crate::upstream::UpstreamError;

/// Who caused a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Party {
    /// The client sent something wrong.
    Downstream,
    /// The backend failed.
    Upstream,
    /// Configuration or routing.
    Gateway,
}

/// Every way the gateway answers a request itself with an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ProxyError {
    /// A malformed or forbidden request (RFC 9110 / 9112 violation).
    BadRequest(&'static str),
    /// The path could not be normalized.
    BadPath(PathError),
    /// No route matched.
    NoRoute,
    /// The client address is not let through (`server.ip`, `routes[i].ip`).
    IpDenied,
    /// A route matched host and path, but not the method.
    MethodNotAllowed(Vec<Method>),
    /// The request body stalled.
    BodyTimeout,
    /// The request body is larger than allowed.
    PayloadTooLarge(u64),
    /// The request head is larger than allowed.
    HeadersTooLarge,
    /// No connection could be made to any endpoint.
    UpstreamRefused,
    /// The connection to the endpoint failed mid-request, or it sent an
    /// invalid response.
    UpstreamReset,
    /// No endpoint can take the request (every breaker open); retry after
    /// this many seconds.
    UpstreamUnavailable(u64),
    /// The upstream did not answer within the route timeout.
    UpstreamTimeout,
    /// Authentication refused the request (401, 403) or could not run (503).
    Auth(AuthFailure),
    /// A rate-limit policy refused the request; retry after this many
    /// seconds.
    RateLimited(u64),
    /// `Cache-Control: only-if-cached` and nothing fresh is stored.
    NotCached,
    /// A global rate limit could not be checked (Redis down) and
    /// `on_error: deny`.
    RateLimitUnavailable,
    /// The client went away while its request body was being read: no
    /// response reaches it, the request is accounted as 499 (NGINX's
    /// "client closed request").
    ClientClosedRequest,
    /// A bulkhead or the load-shedding limit is full (`global`,
    /// `upstream` or `connections`): refused at once.
    Overloaded(&'static str),
}

/// 499, NGINX's "client closed request" (no standard status says it).
fn client_closed_request() -> StatusCode {
    StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST)
}

/// One row of the error map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Described {
    /// The response status.
    pub status: StatusCode,
    /// The stable error code: the JSON body's `error`, the access log's
    /// reason and a metric label.
    pub code: &'static str,
    /// Who failed.
    pub party: Party,
    /// The connection closes after the response.
    pub close: bool,
}

impl From<UpstreamError> for ProxyError {
    fn from(e: UpstreamError) -> Self {
        ProxyError::of_upstream(&e)
    }
}

impl ProxyError {
    /// What an upstream failure answers the client.
    fn of_upstream(e: &UpstreamError) -> Self {
        match e {
            UpstreamError::Timeout { .. } => ProxyError::UpstreamTimeout,
            UpstreamError::Unavailable { retry_after } => {
                ProxyError::UpstreamUnavailable(retry_after.as_secs_f64().ceil().max(1.0) as u64)
            }
            UpstreamError::Overloaded(scope) => ProxyError::Overloaded(scope),
            UpstreamError::Connect { .. } => ProxyError::UpstreamRefused,
            // A failing client body is the client's error, not the upstream's.
            UpstreamError::Send { source, .. } => match source.body_error() {
                Some(BodyError::TooLarge { limit }) => ProxyError::PayloadTooLarge(*limit),
                Some(BodyError::Timeout) => ProxyError::BodyTimeout,
                // The client stopped sending its body (closed, reset).
                Some(BodyError::Read(_)) => ProxyError::ClientClosedRequest,
                None => ProxyError::UpstreamReset,
            },
        }
    }
}

impl UpstreamError {
    /// The reason code the access log gives this failure.
    pub(crate) fn code(&self) -> &'static str {
        ProxyError::of_upstream(self).describe().code
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
    request_id: &'a str,
}

impl ProxyError {
    /// The row of the error map this error takes.
    pub(crate) fn describe(&self) -> Described {
        use ProxyError as E;
        use StatusCode as S;
        let (status, code, party, close) = match self {
            E::BadRequest(_) => (S::BAD_REQUEST, "bad_request", Party::Downstream, true),
            E::BadPath(_) => (S::BAD_REQUEST, "invalid_path", Party::Downstream, false),
            E::NoRoute => (S::NOT_FOUND, "no_route", Party::Gateway, false),
            E::IpDenied => (S::FORBIDDEN, "ip_denied", Party::Downstream, false),
            E::MethodNotAllowed(_) => (
                S::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                Party::Downstream,
                false,
            ),
            E::BodyTimeout => (
                S::REQUEST_TIMEOUT,
                "request_body_timeout",
                Party::Downstream,
                true,
            ),
            E::PayloadTooLarge(_) => (
                S::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                Party::Downstream,
                true,
            ),
            E::HeadersTooLarge => (
                S::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                Party::Downstream,
                true,
            ),
            E::UpstreamRefused => (S::BAD_GATEWAY, "upstream_refused", Party::Upstream, false),
            E::UpstreamReset => (S::BAD_GATEWAY, "upstream_reset", Party::Upstream, false),
            E::UpstreamUnavailable(_) => (
                S::SERVICE_UNAVAILABLE,
                "upstream_unavailable",
                Party::Upstream,
                false,
            ),
            E::UpstreamTimeout => (
                S::GATEWAY_TIMEOUT,
                "upstream_timeout",
                Party::Upstream,
                false,
            ),
            E::Auth(AuthFailure::Missing) => {
                (S::UNAUTHORIZED, "unauthorized", Party::Downstream, false)
            }
            E::Auth(AuthFailure::Invalid(_) | AuthFailure::Expired) => {
                (S::UNAUTHORIZED, "invalid_token", Party::Downstream, false)
            }
            E::Auth(AuthFailure::Forbidden) => {
                (S::FORBIDDEN, "insufficient_scope", Party::Downstream, false)
            }
            E::Overloaded(_) => (S::SERVICE_UNAVAILABLE, "overloaded", Party::Gateway, false),
            E::NotCached => (S::GATEWAY_TIMEOUT, "not_cached", Party::Downstream, false),
            E::ClientClosedRequest => (
                client_closed_request(),
                "client_closed_request",
                Party::Downstream,
                true,
            ),
            E::RateLimitUnavailable => (
                S::SERVICE_UNAVAILABLE,
                "rate_limit_unavailable",
                Party::Gateway,
                false,
            ),
            E::RateLimited(_) => (
                S::TOO_MANY_REQUESTS,
                "rate_limited",
                Party::Downstream,
                false,
            ),
            E::Auth(AuthFailure::Unavailable) => (
                S::SERVICE_UNAVAILABLE,
                "auth_unavailable",
                Party::Gateway,
                false,
            ),
        };
        Described {
            status,
            code,
            party,
            close,
        }
    }

    /// The human message.
    pub(crate) fn message(&self) -> String {
        match self {
            ProxyError::BadRequest(why) => (*why).to_owned(),
            ProxyError::BadPath(e) => e.to_string(),
            ProxyError::NoRoute => "no route matches this request".to_owned(),
            ProxyError::IpDenied => "this client address is not allowed here".to_owned(),
            ProxyError::MethodNotAllowed(_) => "the route does not allow this method".to_owned(),
            ProxyError::BodyTimeout => "the request body was not received in time".to_owned(),
            ProxyError::PayloadTooLarge(limit) => format!("the request body exceeds {limit} bytes"),
            ProxyError::HeadersTooLarge => "the request headers are too large".to_owned(),
            ProxyError::UpstreamRefused => "the upstream could not be reached".to_owned(),
            ProxyError::UpstreamReset => {
                "the upstream connection failed or sent an invalid response".to_owned()
            }
            ProxyError::UpstreamUnavailable(_) => "no upstream endpoint is available".to_owned(),
            ProxyError::UpstreamTimeout => "the upstream did not respond in time".to_owned(),
            ProxyError::Auth(f) => auth_message(*f).to_owned(),
            ProxyError::RateLimited(_) => "too many requests; slow down".to_owned(),
            ProxyError::NotCached => "only-if-cached: no fresh stored response".to_owned(),
            ProxyError::ClientClosedRequest => {
                "the client closed the connection while sending its request".to_owned()
            }
            ProxyError::RateLimitUnavailable => {
                "the shared rate limit cannot be checked right now".to_owned()
            }
            ProxyError::Overloaded("global") => {
                "the gateway is at its limit of requests in progress".to_owned()
            }
            ProxyError::Overloaded(_) => {
                "the upstream is at its limit of requests or connections".to_owned()
            }
        }
    }

    /// The JSON error response (`request_id` is added by the caller's header step too).
    pub(crate) fn to_response(&self, request_id: &str) -> Response<Bytes> {
        let Described {
            status,
            code,
            close,
            ..
        } = self.describe();
        let message = self.message();
        let body = serde_json::to_vec(&ErrorBody {
            error: code,
            message: &message,
            request_id,
        })
        .unwrap_or_default();
        let mut resp = Response::new(Bytes::from(body));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if close {
            h.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        if let ProxyError::Auth(f) = self {
            let challenge = match f {
                AuthFailure::Missing => Some(HeaderValue::from_static(r#"Bearer realm="tollgate""#)),
                AuthFailure::Invalid(_) | AuthFailure::Expired => HeaderValue::try_from(format!(
                    r#"Bearer realm="tollgate", error="invalid_token", error_description="{}""#,
                    auth_message(*f)
                ))
                .ok(),
                AuthFailure::Forbidden => HeaderValue::try_from(format!(
                    r#"Bearer realm="tollgate", error="insufficient_scope", error_description="{}""#,
                    auth_message(*f)
                ))
                .ok(),
                AuthFailure::Unavailable => {
                    h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("5"));
                    None
                }
            };
            if let Some(c) = challenge {
                h.insert(http::header::WWW_AUTHENTICATE, c);
            }
        }
        if let ProxyError::RateLimited(secs) = self {
            h.insert(http::header::RETRY_AFTER, HeaderValue::from(*secs));
        }
        if let ProxyError::Overloaded(_) | ProxyError::RateLimitUnavailable = self {
            h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let ProxyError::UpstreamUnavailable(secs) = self {
            h.insert(http::header::RETRY_AFTER, HeaderValue::from(*secs));
        }
        if let ProxyError::MethodNotAllowed(methods) = self {
            let allow = methods
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(", ");
            if let Ok(v) = HeaderValue::try_from(allow) {
                h.insert(http::header::ALLOW, v);
            }
        }
        resp
    }
}

impl ProxyError {
    /// The error as a gRPC "Trailers-Only" response: HTTP 200 with
    /// `grpc-status` and `grpc-message` in the headers and no body, which
    /// gRPC clients read as the call's status.
    pub(crate) fn to_grpc_response(&self) -> Response<Bytes> {
        let status = self.describe().status;
        // gRPC status codes (grpc/doc/statuscodes.md).
        let code: u8 = match (self, status.as_u16()) {
            (ProxyError::UpstreamTimeout, _) => 4, // DEADLINE_EXCEEDED
            (ProxyError::RateLimited(_) | ProxyError::PayloadTooLarge(_), _) => 8, // RESOURCE_EXHAUSTED
            (_, 401) => 16,                            // UNAUTHENTICATED
            (_, 403) => 7,                             // PERMISSION_DENIED
            (_, 404 | 405) => 12,                      // UNIMPLEMENTED
            (_, 502..=504) => 14,                      // UNAVAILABLE
            (ProxyError::ClientClosedRequest, _) => 1, // CANCELLED
            (_, 400 | 408 | 431) => 13,                // INTERNAL
            _ => 2,                                    // UNKNOWN
        };
        let mut resp = Response::new(Bytes::new());
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert("grpc-status", HeaderValue::from(u16::from(code)));
        // grpc-message is percent-encoded; our messages are plain ASCII.
        let message: String = self
            .message()
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() || c == ' ' {
                    c
                } else {
                    '?'
                }
            })
            .collect::<String>()
            .replace('%', "%25");
        if let Ok(v) = HeaderValue::try_from(message) {
            h.insert("grpc-message", v);
        }
        resp
    }
}

/// The message of an authentication failure. Fixed texts: never the token.
fn auth_message(f: AuthFailure) -> &'static str {
    match f {
        AuthFailure::Missing => "a bearer token is required",
        AuthFailure::Invalid(why) => why,
        AuthFailure::Expired => "the token has expired",
        AuthFailure::Forbidden => "the token lacks a required claim value",
        AuthFailure::Unavailable => "the token issuer's keys are not available yet",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_one_status_and_code() {
        let table = [
            (ProxyError::BadRequest("x"), 400, "bad_request"),
            (
                ProxyError::BadPath(PathError::ClimbsAboveRoot),
                400,
                "invalid_path",
            ),
            (ProxyError::NoRoute, 404, "no_route"),
            (
                ProxyError::MethodNotAllowed(vec![Method::GET]),
                405,
                "method_not_allowed",
            ),
            (ProxyError::BodyTimeout, 408, "request_body_timeout"),
            (ProxyError::PayloadTooLarge(1), 413, "payload_too_large"),
            (ProxyError::HeadersTooLarge, 431, "headers_too_large"),
            (ProxyError::UpstreamRefused, 502, "upstream_refused"),
            (ProxyError::UpstreamReset, 502, "upstream_reset"),
            (
                ProxyError::UpstreamUnavailable(1),
                503,
                "upstream_unavailable",
            ),
            (ProxyError::UpstreamTimeout, 504, "upstream_timeout"),
            (ProxyError::Overloaded("global"), 503, "overloaded"),
            (ProxyError::RateLimited(1), 429, "rate_limited"),
            (ProxyError::NotCached, 504, "not_cached"),
            (
                ProxyError::ClientClosedRequest,
                499,
                "client_closed_request",
            ),
            (
                ProxyError::RateLimitUnavailable,
                503,
                "rate_limit_unavailable",
            ),
            (ProxyError::Auth(AuthFailure::Missing), 401, "unauthorized"),
            (ProxyError::Auth(AuthFailure::Expired), 401, "invalid_token"),
            (
                ProxyError::Auth(AuthFailure::Invalid("x")),
                401,
                "invalid_token",
            ),
            (
                ProxyError::Auth(AuthFailure::Forbidden),
                403,
                "insufficient_scope",
            ),
            (
                ProxyError::Auth(AuthFailure::Unavailable),
                503,
                "auth_unavailable",
            ),
        ];
        for (err, status, code) in table {
            let d = err.describe();
            assert_eq!((d.status.as_u16(), d.code), (status, code), "{err:?}");
        }
    }

    #[test]
    fn error_body_is_json_with_request_id() {
        let r = ProxyError::MethodNotAllowed(vec![Method::GET, Method::POST]).to_response("abc");
        assert_eq!(r.headers()["allow"], "GET, POST");
        assert_eq!(
            r.body().as_ref(),
            br#"{"error":"method_not_allowed","message":"the route does not allow this method","request_id":"abc"}"#
        );
    }
}
