//! A route's cache settings and how it builds keys: the route, host,
//! path and query, the configured parts (tenant, header, cookie, claim),
//! and the variant of a response that varies.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName};
use prometheus::IntCounter;

use super::policy::Allowances;
use super::store::Store;
use crate::auth::{Identity, claim_at};
use crate::observability::metrics::metrics;

/// One extra key part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheKeyPart {
    /// The verified token's tenant.
    Tenant,
    /// A request header's value.
    Header(HeaderName),
    /// A cookie's value.
    Cookie(String),
    /// A claim of the verified token.
    Claim(Vec<String>),
}

impl CacheKeyPart {
    /// Parses `tenant`, `header:NAME`, `cookie:NAME` or `claim:NAME`.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.split_once(':') {
            None if text == "tenant" => Ok(CacheKeyPart::Tenant),
            Some(("header", n)) => HeaderName::try_from(n.trim())
                .map(CacheKeyPart::Header)
                .map_err(|_| format!("`{n}` is not a header name")),
            Some(("cookie", n)) if !n.trim().is_empty() => {
                Ok(CacheKeyPart::Cookie(n.trim().to_owned()))
            }
            Some(("claim", p)) if p.split('.').all(|s| !s.is_empty()) => Ok(CacheKeyPart::Claim(
                p.split('.').map(str::to_owned).collect(),
            )),
            _ => Err(format!(
                "`{text}`: use tenant, header:NAME, cookie:NAME or claim:NAME"
            )),
        }
    }
}

/// A route's cache.
pub struct RouteCache {
    /// The shared store.
    pub store: Arc<Store>,
    /// The route's name (the first key part).
    pub route: String,
    /// Extra key parts.
    pub key: Vec<CacheKeyPart>,
    /// What the route allows beyond the defaults.
    pub allow: Allowances,
    /// `stale_if_error` of the route.
    pub stale_if_error: Duration,
    /// `stale_while_revalidate` of the route.
    pub stale_while_revalidate: Duration,
    /// hit, miss, bypass, stale (served stale), coalesced (served from
    /// another request's fetch), revalidated (a 304 from the upstream
    /// refreshed it) counters.
    pub counters: [IntCounter; 6],
}

impl RouteCache {
    /// The cache of route `route`.
    pub fn new(
        route: &str,
        store: Arc<Store>,
        key: Vec<CacheKeyPart>,
        allow: Allowances,
        (stale_if_error, stale_while_revalidate): (Duration, Duration),
    ) -> Self {
        let f = &metrics().cache_requests;
        Self {
            route: route.to_owned(),
            store,
            key,
            allow,
            stale_if_error,
            stale_while_revalidate,
            counters: ["hit", "miss", "bypass", "stale", "coalesced", "revalidated"]
                .map(|r| f.with_label_values(&[route, r])),
        }
    }

    /// The key: host, path and query, then the extra parts (absent parts
    /// count as empty, so requests without them share one variant).
    pub fn key(
        &self,
        host: &str,
        path_and_query: &str,
        headers: &HeaderMap,
        id: Option<&Identity>,
    ) -> String {
        let mut k =
            String::with_capacity(self.route.len() + host.len() + path_and_query.len() + 16);
        k.push_str(&self.route);
        k.push('\u{1f}');
        k.push_str(host);
        k.push('\u{1f}');
        k.push_str(path_and_query);
        for part in &self.key {
            k.push('\u{1f}');
            match part {
                CacheKeyPart::Tenant => {
                    k.push_str(id.and_then(|i| i.tenant.as_deref()).unwrap_or(""))
                }
                CacheKeyPart::Header(n) => {
                    for v in headers.get_all(n) {
                        k.push_str(&String::from_utf8_lossy(v.as_bytes()));
                        k.push(',');
                    }
                }
                CacheKeyPart::Cookie(name) => {
                    k.push_str(crate::cookies::get(headers, name).unwrap_or(""));
                }
                CacheKeyPart::Claim(path) => {
                    if let Some(v) = id.and_then(|i| claim_at(&i.claims, path)) {
                        k.push_str(&v.to_string());
                    }
                }
            }
        }
        k
    }
}
