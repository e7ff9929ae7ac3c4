//! `cache:` (the shared store) and `routes[i].cache`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::units::{ByteSize, DurationSpec};

/// `cache:`.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSpec {
    /// Total weight of stored bodies and headers. Default `256MiB`.
    pub max_size: ByteSize,
    /// Larger responses stream through uncached. Default `1MiB`.
    pub max_object_size: ByteSize,
    /// With `redis:`, an unsafe request's invalidation (a successful POST,
    /// PUT, PATCH or DELETE voids what is stored for its URL) reaches
    /// every replica sharing the Redis, not only this one. Purges always
    /// do. Default `false`.
    pub broadcast_invalidation: bool,
}

impl Default for CacheSpec {
    fn default() -> Self {
        Self {
            max_size: ByteSize(256 << 20),
            max_object_size: ByteSize(1 << 20),
            broadcast_invalidation: false,
        }
    }
}

/// `routes[i].cache`.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteCacheSpec {
    /// Freshness when the upstream gives none (200, 203, 204, 300, 301, 308 only).
    #[serde(default)]
    pub default_ttl: Option<DurationSpec>,
    /// Extra key parts beyond host, path and query: `tenant`, `header:NAME`, `cookie:NAME`, `claim:NAME`.
    #[serde(default)]
    pub key: Vec<String>,
    /// Cache responses to requests with `Authorization`; needs `tenant` or a claim in `key`.
    #[serde(default)]
    pub cache_authorized: bool,
    /// Serve a stale entry this long past its freshness when the upstream fails (connect error, timeout, 5xx); a response's own `stale-if-error` wins.
    #[serde(default)]
    pub stale_if_error: Option<DurationSpec>,
    /// Serve a stale entry this long past its freshness at once while one background request refreshes it; a response's own `stale-while-revalidate` wins.
    #[serde(default)]
    pub stale_while_revalidate: Option<DurationSpec>,
}
