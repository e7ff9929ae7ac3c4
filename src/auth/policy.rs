//! A route's `auth`: the provider it names (or the providers of `any_of`),
//! whether a credential is optional, the claim values it requires, its
//! `tollgate_auth_requests_total` counters, and the credential fields
//! removed before forwarding.

use std::collections::HashSet;
use std::sync::Arc;

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue};
use prometheus::IntCounter;
use serde_json::Value;

use super::token::{self, Conflict, Source};
use super::{AnyProvider, AuthFailure, AuthOutcome, ConnMemo, Identity, OUTCOMES, claim_at};
use crate::observability::metrics::metrics;

/// Removes every header and cookie a credential may come from
/// (`forward_token: false`, `forward_key: false`): `header:` sources, the
/// `cookie:` sources' cookies (other cookies are kept), and for a JWT
/// provider `Authorization`.
fn strip_token_headers(sources: &[Source], authorization: bool, headers: &mut HeaderMap) {
    if authorization {
        headers.remove(AUTHORIZATION);
    }
    let mut cookies = Vec::new();
    for s in sources {
        match s {
            Source::Header(name) => {
                headers.remove(name);
            }
            Source::Cookie(name) => cookies.push(name.as_str()),
            Source::Query(_) => {}
        }
    }
    if cookies.is_empty() || !headers.contains_key(http::header::COOKIE) {
        return;
    }
    let kept: Vec<String> = headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|kv| {
            let name = kv.split_once('=').map_or(*kv, |(k, _)| k);
            !kv.is_empty() && !cookies.contains(&name)
        })
        .map(str::to_owned)
        .collect();
    headers.remove(http::header::COOKIE);
    if !kept.is_empty()
        && let Ok(v) = HeaderValue::try_from(kept.join("; "))
    {
        headers.insert(http::header::COOKIE, v);
    }
}

/// A route's `auth`: the providers (one, or `any_of`), whether a
/// credential is optional, and the claim values it requires.
pub struct RouteAuth {
    /// The providers, tried in order.
    pub providers: Vec<AnyProvider>,
    /// Let requests without a credential through anonymously.
    pub optional: bool,
    /// (claim path, values that must all be present).
    pub require: Vec<(Vec<String>, Vec<String>)>,
    /// Per provider, one counter per outcome.
    counters: Vec<[IntCounter; 6]>,
}

impl RouteAuth {
    /// The policy of route `route`.
    pub fn new(
        route: &str,
        providers: Vec<AnyProvider>,
        optional: bool,
        require: Vec<(Vec<String>, Vec<String>)>,
    ) -> Self {
        let family = &metrics().auth_requests;
        let counters = providers
            .iter()
            .map(|p| OUTCOMES.map(|(_, label)| family.with_label_values(&[route, p.name(), label])))
            .collect();
        Self {
            providers,
            optional,
            require,
            counters,
        }
    }

    /// Counts a decision against the provider that made it.
    fn count(&self, provider: usize, o: AuthOutcome) {
        if let Some(i) = OUTCOMES.iter().position(|(x, _)| *x == o)
            && let Some(c) = self.counters.get(provider).and_then(|c| c.get(i))
        {
            c.inc();
        }
    }

    /// Authenticates a request: on success its headers are rewritten for
    /// upstream (client copies of forwarded claim headers removed, verified
    /// claims set, credentials dropped unless forwarded) and the identity
    /// is returned (`None`: anonymous on an optional route).
    ///
    /// With several providers, each that finds a credential checks it, in
    /// order; the first that accepts decides. When none accepts, the first
    /// refusal is the answer; when none finds a credential, it is missing.
    /// The decision is counted once, under the provider that made it (a
    /// missing credential under the first provider).
    pub async fn check(
        &self,
        headers: &mut HeaderMap,
        query: Option<&str>,
        memo: &ConnMemo,
    ) -> Result<Option<Arc<Identity>>, AuthFailure> {
        let mut accepted = None;
        let mut refused = None;
        for (i, p) in self.providers.iter().enumerate() {
            match one(p, headers, query, memo).await {
                Ok(Some(id)) => {
                    accepted = Some((i, id));
                    break;
                }
                Ok(None) => {}
                Err(f) => {
                    refused.get_or_insert((i, f));
                }
            }
        }
        let (by, r) = match (accepted, refused) {
            (Some((i, id)), _) if self.authorized(&id) => (i, Ok(Some(id))),
            (Some((i, _)), _) => (i, Err(AuthFailure::Forbidden)),
            (None, Some((i, f))) => (i, Err(f)),
            (None, None) if self.optional => (0, Ok(None)),
            (None, None) => (0, Err(AuthFailure::Missing)),
        };
        self.count(
            by,
            match &r {
                Ok(Some(_)) => AuthOutcome::Ok,
                Ok(None) => AuthOutcome::Missing,
                Err(f) => f.result(),
            },
        );
        let identity = r?;
        for p in &self.providers {
            for (_, h) in p.forward_claims() {
                headers.remove(h);
            }
        }
        if let Some(id) = &identity {
            for (h, v) in &id.forwarded {
                headers.insert(h.clone(), v.clone());
            }
        }
        for p in &self.providers {
            if !p.forwards_credential() {
                strip_token_headers(p.sources(), p.jwt().is_some(), headers);
            }
        }
        Ok(identity)
    }

    /// Query parameters that carry credentials and must not go upstream
    /// (`forward_token: false` / `forward_key: false` with `query:` sources).
    pub fn query_to_strip(&self) -> impl Iterator<Item = &str> {
        self.providers
            .iter()
            .filter(|p| !p.forwards_credential())
            .flat_map(|p| p.sources())
            .filter_map(|s| match s {
                Source::Query(name) => Some(name.as_str()),
                _ => None,
            })
    }

    fn authorized(&self, id: &Identity) -> bool {
        self.require.iter().all(|(path, wanted)| {
            let have: HashSet<&str> = match claim_at(&id.claims, path) {
                Some(Value::String(s)) => s.split_whitespace().collect(),
                Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
                _ => HashSet::new(),
            };
            wanted.iter().all(|w| have.contains(w.as_str()))
        })
    }
}

/// One provider's look at the request: `Ok(None)` when it finds no
/// credential of its kind.
async fn one(
    p: &AnyProvider,
    headers: &HeaderMap,
    query: Option<&str>,
    memo: &ConnMemo,
) -> Result<Option<Arc<Identity>>, AuthFailure> {
    let credential = token::extract(p.sources(), headers, query).map_err(|c| match c {
        Conflict::TwoAuthorizationHeaders => {
            AuthFailure::Invalid("more than one Authorization header")
        }
        Conflict::Disagree => AuthFailure::Invalid("the request carries different credentials"),
    })?;
    let Some(t) = credential else {
        return Ok(None);
    };
    match p {
        AnyProvider::Jwt(p) => {
            if t.is_empty() {
                return Err(AuthFailure::Invalid("the token is empty"));
            }
            // The memo is part of the cache: off when the cache is.
            let memo = p.cache.as_ref().map(|_| memo);
            if let Some(id) = memo.and_then(|m| m.get(p, &t)) {
                p.hits.inc();
                return Ok(Some(id));
            }
            let generation = p.keys.generation();
            let id = p.verify(&t).await?;
            if let Some(m) = memo {
                m.put(p, generation, &t, &id);
            }
            Ok(Some(id))
        }
        AnyProvider::ApiKey(k) => {
            if t.is_empty() {
                return Err(AuthFailure::Invalid("the API key is empty"));
            }
            if t.len() > k.max_key_bytes {
                return Err(AuthFailure::Invalid("the API key is too large"));
            }
            k.lookup(&t)
                .map(Some)
                .ok_or(AuthFailure::Invalid("the API key is not valid"))
        }
    }
}
