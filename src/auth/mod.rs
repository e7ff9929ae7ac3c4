//! Authentication (pipeline stage 4): a route's `auth` policy names one
//! provider or several (`any_of`); a provider finds the credential, checks
//! it, and yields the caller's `Identity` (claims, `sub`, tenant) for the
//! stages after it. A JWT provider verifies signed tokens; an API key
//! provider looks keys up by their SHA-256.
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
//! - `apikey`: `type: api_key` providers and their keys files.
//! - `policy`: a route's `auth` (optional, required claim values), its
//!   counters, and what is stripped before forwarding.
//! - `error`: why a request was refused.

pub(crate) mod apikey;
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

use apikey::ApiKeys;
use token::Source;

/// A compiled `auth.providers.NAME`, of either kind.
#[derive(Clone)]
pub enum AnyProvider {
    /// `type: jwt`.
    Jwt(Arc<Provider>),
    /// `type: api_key`.
    ApiKey(Arc<ApiKeys>),
}

impl AnyProvider {
    /// The provider's name.
    pub fn name(&self) -> &Arc<str> {
        match self {
            AnyProvider::Jwt(p) => &p.name,
            AnyProvider::ApiKey(p) => &p.name,
        }
    }

    /// Digest of its definition (key files included).
    pub fn definition(&self) -> crate::config::Definition {
        match self {
            AnyProvider::Jwt(p) => p.definition,
            AnyProvider::ApiKey(p) => p.definition,
        }
    }

    /// The JWT provider, when it is one.
    pub fn jwt(&self) -> Option<&Arc<Provider>> {
        match self {
            AnyProvider::Jwt(p) => Some(p),
            AnyProvider::ApiKey(_) => None,
        }
    }

    /// True when both are the same compiled provider (carried over).
    pub fn same(&self, other: &AnyProvider) -> bool {
        match (self, other) {
            (AnyProvider::Jwt(a), AnyProvider::Jwt(b)) => Arc::ptr_eq(a, b),
            (AnyProvider::ApiKey(a), AnyProvider::ApiKey(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// Starts its background work (a remote key store's refresh).
    pub fn start(&self) {
        if let AnyProvider::Jwt(p) = self {
            p.keys.start();
        }
    }

    /// False while a remote key store waits for its first keys.
    pub fn ready(&self) -> bool {
        match self {
            AnyProvider::Jwt(p) => p.keys.ready(),
            AnyProvider::ApiKey(_) => true,
        }
    }

    fn sources(&self) -> &[Source] {
        match self {
            AnyProvider::Jwt(p) => &p.sources,
            AnyProvider::ApiKey(p) => &p.sources,
        }
    }

    /// True when the credential goes upstream too.
    fn forwards_credential(&self) -> bool {
        match self {
            AnyProvider::Jwt(p) => p.forward_token,
            AnyProvider::ApiKey(p) => p.forward_key,
        }
    }

    fn forward_claims(&self) -> &[(Vec<String>, HeaderName)] {
        match self {
            AnyProvider::Jwt(p) => &p.forward_claims,
            AnyProvider::ApiKey(p) => &p.forward_claims,
        }
    }
}

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
