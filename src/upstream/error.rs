//! Why an exchange with an upstream failed: no connection
//! (`ConnectError`), a failed exchange (`SendFailure`), and what the
//! proxy makes of them (`UpstreamError`).

use std::time::Duration;

use super::h1;
use crate::body::BodyError;

/// Why forwarding failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made (after one retry on another endpoint).
    #[error("connect to {endpoint} failed: {source}")]
    Connect {
        /// Endpoint id.
        endpoint: String,
        /// Cause.
        source: ConnectError,
    },
    /// The exchange failed after connecting: reset, closed, an invalid
    /// response, or the downstream body failed while being sent.
    #[error("request to {endpoint} failed: {source}")]
    Send {
        /// Endpoint id.
        endpoint: String,
        /// Cause.
        source: SendFailure,
    },
    /// Every endpoint is open (circuit breaker): nothing was attempted.
    #[error("no endpoint is available; the first opens again in {retry_after:?}")]
    Unavailable {
        /// Until the soonest endpoint takes a probe.
        retry_after: Duration,
    },
    /// `limits.max_inflight` requests (or `max_connections` connections)
    /// are in use: refused at once.
    #[error("the upstream's {0} limit is reached")]
    Overloaded(&'static str),
    /// No response head before the deadline.
    #[error("no response from {endpoint} in time")]
    Timeout {
        /// Endpoint id.
        endpoint: String,
    },
}

impl UpstreamError {
    /// The endpoint tried, or `""` when none was.
    pub fn endpoint(&self) -> &str {
        match self {
            UpstreamError::Connect { endpoint, .. }
            | UpstreamError::Send { endpoint, .. }
            | UpstreamError::Timeout { endpoint } => endpoint,
            UpstreamError::Unavailable { .. } | UpstreamError::Overloaded(_) => "",
        }
    }
}

/// What went wrong in an exchange, by protocol.
#[derive(Debug, thiserror::Error)]
pub enum SendFailure {
    /// HTTP/1.1 (our codec).
    #[error("{0}")]
    H1(#[from] h1::H1Error),
    /// h2c, h2 or HTTP/1.1 over TLS (hyper).
    #[error("{0}")]
    H2(#[from] hyper::Error),
}

impl SendFailure {
    /// The downstream body's error, when that is what failed.
    pub fn body_error(&self) -> Option<&BodyError> {
        match self {
            SendFailure::H1(h1::H1Error::Body(b)) => Some(b),
            SendFailure::H1(_) => None,
            SendFailure::H2(e) => crate::body::find_body_error(e),
        }
    }
}

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TCP connect (or name resolution) failed.
    #[error("connect failed: {0}")]
    Io(#[from] std::io::Error),
    /// TCP connect took longer than `connect_timeout`.
    #[error("connect timed out")]
    Timeout,
    /// The upstream's `limits.max_connections` are all open.
    #[error("the upstream's connection limit is reached")]
    Overflow,
    /// The HTTP handshake failed.
    #[error("handshake failed: {0}")]
    Handshake(#[from] hyper::Error),
}
