//! JWT authentication (pipeline stage 4): a route's `auth` policy names a
//! provider; the provider finds the token, verifies it against its keys
//! and rules, and yields the caller's `Identity` (claims, `sub`, tenant) for
//! the stages after it.
//!
//! - `token`: where tokens are looked for (header, cookie, query) and how
//!   many may be given.
//! - `keys`, `jwks`: a provider's keys (files, secrets, remote JWKS with
//!   its refresh task).
//! - `jwt`: verification. jsonwebtoken with one `Validation` per accepted
//!   algorithm, built when the config is compiled, every rule set
//!   explicitly: `exp` required, `nbf` checked, the configured leeway,
//!   `iss` / `aud` required when configured. What jsonwebtoken does not
//!   check is checked there: `crit` headers, `iss` as a single string, the
//!   algorithm against the key's type. Successes are cached by a SHA-256
//!   of the token until its `exp` (or `cache.max_ttl`), and dropped when
//!   the provider's keys change.
//! - `memo`: the last token verified on each client connection.
//! - `policy`: a route's `auth` (optional, required claim values), its
//!   counters, and what is stripped before forwarding.
//! - `error`: why a request was refused.

mod error;
pub(crate) mod jwks;
mod jwt;
pub(crate) mod keys;
mod memo;
mod policy;
pub(crate) mod token;

use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use serde_json::{Map, Value};

pub(crate) use error::AuthFailure;
pub(crate) use jwt::{Provider, ProviderOptions, Rules};
pub(crate) use memo::ConnMemo;
pub(crate) use policy::RouteAuth;

/// Who the caller is, from a verified token.
#[derive(Debug)]
pub struct Identity {
    /// The provider that verified the token.
    pub provider: Arc<str>,
    /// `sub`, when it is a string.
    pub sub: Option<String>,
    /// The tenant claim's value.
    pub tenant: Option<String>,
    /// Every claim.
    pub claims: Map<String, Value>,
    /// Headers set upstream (`forward_claims`).
    pub forwarded: Vec<(HeaderName, HeaderValue)>,
    /// `exp` (seconds since the epoch).
    pub exp: u64,
}

/// The `result` label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthOutcome {
    /// Verified (and authorized).
    Ok,
    /// No token (also: optional routes let through anonymously).
    Missing,
    /// Refused token.
    Invalid,
    /// Expired token.
    Expired,
    /// Valid token without the required claims.
    Forbidden,
    /// No keys.
    Unavailable,
}

const OUTCOMES: [(AuthOutcome, &str); 6] = [
    (AuthOutcome::Ok, "ok"),
    (AuthOutcome::Missing, "missing"),
    (AuthOutcome::Invalid, "invalid"),
    (AuthOutcome::Expired, "expired"),
    (AuthOutcome::Forbidden, "forbidden"),
    (AuthOutcome::Unavailable, "unavailable"),
];

/// The claim at a dotted path.
pub(crate) fn claim_at<'a>(claims: &'a Map<String, Value>, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let mut v = claims.get(first)?;
    for p in rest {
        v = v.as_object()?.get(p)?;
    }
    Some(v)
}
