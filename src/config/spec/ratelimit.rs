//! `redis:` and `rate_limits:`.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::de::Deserializer;
use serde::{Deserialize, Serialize};

use super::{Secret, yes};
use crate::config::units::{DurationSpec, Str};

/// `redis:`.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSpec {
    /// `redis://host:port/db` (password in the URL, `${ENV}` allowed).
    pub url: Secret,
    /// Multiplexed connections used round robin. Default `4`.
    #[serde(default = "default_redis_pool")]
    pub pool_size: usize,
    /// Longest wait for one Redis call on the request path. Default `50ms`.
    #[serde(default = "default_redis_timeout")]
    pub timeout: DurationSpec,
    /// When Redis is slow or down: `local` (this process's own bucket), `allow` or `deny` (503). Default `local`.
    #[serde(default)]
    pub on_error: OnErrorSpec,
}

fn default_redis_pool() -> usize {
    4
}
fn default_redis_timeout() -> DurationSpec {
    DurationSpec(std::time::Duration::from_millis(50))
}

/// `redis.on_error`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnErrorSpec {
    /// Fall back to the local limiter.
    #[default]
    Local,
    /// Let requests through.
    Allow,
    /// Refuse them (503).
    Deny,
}

/// `rate_limits.NAME`: a token bucket per key.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    /// What a bucket is kept per: `tenant`, `client_ip` (IPv6 by /64), `header:NAME`, `claim:NAME`, `route`, or a list of these.
    pub key: KeySpec,
    /// `enforce` (default) or `shadow` (count and log what would be limited; reject nothing).
    #[serde(default)]
    pub mode: RateModeSpec,
    /// `N/s`, `N/min` or `N/h`.
    pub rate: Str,
    /// Bucket size. Default: the rate's N.
    #[serde(default)]
    pub burst: Option<u32>,
    /// `local` (this process) or `global` (every replica, through Redis).
    #[serde(default)]
    pub scope: ScopeSpec,
    /// Other rates for some key values (tenant plans): `{ value: { rate, burst } }`.
    #[serde(default)]
    pub overrides: BTreeMap<String, RateOverrideSpec>,
    /// A request without the key: `reject` (401 if the route has auth, else 429), `shared` (one bucket for all of them) or `skip`. Default `reject`.
    #[serde(default)]
    pub missing_key: MissingKeySpec,
    /// Send the RateLimit headers on allowed responses too. Default `true`.
    #[serde(default = "yes")]
    pub headers: bool,
    /// Most keys tracked; the least recently used go first. Default `1000000`.
    #[serde(default = "default_max_keys")]
    pub max_keys: u64,
}

fn default_max_keys() -> u64 {
    1_000_000
}

/// `key:` as one part or a list.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct KeySpec(pub Vec<String>);

impl<'de> Deserialize<'de> for KeySpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize, JsonSchema)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        Ok(match Raw::deserialize(d)? {
            Raw::One(s) => KeySpec(vec![s]),
            Raw::Many(v) => KeySpec(v),
        })
    }
}

impl JsonSchema for KeySpec {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "RateLimitKey".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "One key part or a list: client_ip, tenant, route, header:NAME, claim:NAME.",
            "anyOf": [
                { "type": "string" },
                { "type": "array", "items": { "type": "string" } }
            ]
        })
    }
}

/// `rate_limits.NAME.mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RateModeSpec {
    /// Reject over the limit (429).
    #[default]
    Enforce,
    /// Count and log, reject nothing.
    Shadow,
}

/// `rate_limits.NAME.scope`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScopeSpec {
    /// Buckets in this process.
    #[default]
    Local,
    /// Buckets in Redis, shared by every replica.
    Global,
}

/// `rate_limits.NAME.missing_key`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MissingKeySpec {
    /// 401 on routes with auth, else 429.
    #[default]
    Reject,
    /// One bucket for every keyless request.
    Shared,
    /// Not limited by this policy.
    Skip,
}

/// `rate_limits.NAME.overrides.VALUE`.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateOverrideSpec {
    /// `N/s`, `N/min` or `N/h`.
    pub rate: Str,
    /// Bucket size. Default: the rate's N.
    #[serde(default)]
    pub burst: Option<u32>,
}
