//! A route's `auth`: the provider it names, whether a token is optional,
//! the claim values it requires, its `tollgate_auth_requests_total`
//! counters, and the token fields removed before forwarding.

use std::collections::HashSet;
use std::sync::Arc;

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue};
use prometheus::IntCounter;
use serde_json::Value;

use super::token::{self, Conflict, Source};
use super::{AuthFailure, AuthOutcome, ConnMemo, Identity, OUTCOMES, Provider, claim_at};
use crate::observability::metrics::metrics;

/// Removes every header and cookie a token may come from
/// (`forward_token: false`): `Authorization`, `header:` sources, and the
/// `cookie:` sources' cookies (other cookies are kept).
fn strip_token_headers(sources: &[Source], headers: &mut HeaderMap) {
    headers.remove(AUTHORIZATION);
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

/// A route's `auth`: the provider, whether a token is optional, and the
/// claim values it requires.
pub struct RouteAuth {
    /// The provider.
    pub provider: Arc<Provider>,
    /// Let requests without a token through anonymously.
    pub optional: bool,
    /// (claim path, values that must all be present).
    pub require: Vec<(Vec<String>, Vec<String>)>,
    counters: [IntCounter; 6],
}

impl RouteAuth {
    /// The policy of route `route`.
    pub fn new(
        route: &str,
        provider: Arc<Provider>,
        optional: bool,
        require: Vec<(Vec<String>, Vec<String>)>,
    ) -> Self {
        let family = &metrics().auth_requests;
        let counters =
            OUTCOMES.map(|(_, label)| family.with_label_values(&[route, &provider.name, label]));
        Self {
            provider,
            optional,
            require,
            counters,
        }
    }

    fn count(&self, o: AuthOutcome) {
        if let Some(i) = OUTCOMES.iter().position(|(x, _)| *x == o)
            && let Some(c) = self.counters.get(i)
        {
            c.inc();
        }
    }

    /// Authenticates a request: on success its headers are rewritten for
    /// upstream (client copies of forwarded claim headers removed, verified
    /// claims set, `Authorization` dropped unless `forward_token`) and the
    /// identity is returned (`None`: anonymous on an optional route).
    pub async fn check(
        &self,
        headers: &mut HeaderMap,
        query: Option<&str>,
        memo: &ConnMemo,
    ) -> Result<Option<Arc<Identity>>, AuthFailure> {
        let r = self.check_inner(headers, query, memo).await;
        self.count(match &r {
            Ok(Some(_)) => AuthOutcome::Ok,
            Ok(None) => AuthOutcome::Missing,
            Err(f) => f.result(),
        });
        r
    }

    async fn check_inner(
        &self,
        headers: &mut HeaderMap,
        query: Option<&str>,
        memo: &ConnMemo,
    ) -> Result<Option<Arc<Identity>>, AuthFailure> {
        let p = &self.provider;
        let identity = {
            let token = token::extract(&p.sources, headers, query).map_err(|c| match c {
                Conflict::TwoAuthorizationHeaders => {
                    AuthFailure::Invalid("more than one Authorization header")
                }
                Conflict::Disagree => AuthFailure::Invalid("the request carries different tokens"),
            })?;
            match token {
                None if self.optional => None,
                None => return Err(AuthFailure::Missing),
                Some(t) if t.is_empty() => return Err(AuthFailure::Invalid("the token is empty")),
                Some(t) => {
                    // The memo is part of the cache: off when the cache is.
                    let memo = p.cache.as_ref().map(|_| memo);
                    let id = match memo.and_then(|m| m.get(p, &t)) {
                        Some(id) => {
                            p.hits.inc();
                            id
                        }
                        None => {
                            let generation = p.keys.generation();
                            let id = p.verify(&t).await?;
                            if let Some(m) = memo {
                                m.put(p, generation, &t, &id);
                            }
                            id
                        }
                    };
                    if !self.authorized(&id) {
                        return Err(AuthFailure::Forbidden);
                    }
                    Some(id)
                }
            }
        };
        for (_, h) in &p.forward_claims {
            headers.remove(h);
        }
        if let Some(id) = &identity {
            for (h, v) in &id.forwarded {
                headers.insert(h.clone(), v.clone());
            }
        }
        if !p.forward_token {
            strip_token_headers(&p.sources, headers);
        }
        Ok(identity)
    }

    /// Query parameters that carry tokens and must not go upstream
    /// (`forward_token: false` with `query:` sources).
    pub fn query_to_strip(&self) -> impl Iterator<Item = &str> {
        let p = &self.provider;
        p.sources.iter().filter_map(move |s| match s {
            Source::Query(name) if !p.forward_token => Some(name.as_str()),
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
