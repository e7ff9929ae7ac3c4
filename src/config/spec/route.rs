//! `routes:`: match, action (upstream, split, respond, redirect), rewrite,
//! header rules, retry and timeouts.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::de::{self, Deserializer, MapAccess, Visitor, value::MapAccessDeserializer};
use serde::{Deserialize, Serialize};

use super::{RouteAuthSpec, RouteCacheSpec};
use crate::config::units::{ByteSize, DurationSpec, Str};

/// `routes[i]`.
#[derive(Debug, Clone, Deserialize, JsonSchema, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Unique name; used in metrics labels and logs.
    pub name: String,
    /// What requests this route takes.
    #[serde(rename = "match")]
    pub matcher: MatchSpec,
    /// Upstream that serves the route (one of `upstream`, `split`, `respond`, `redirect`).
    #[serde(default)]
    pub upstream: Option<String>,
    /// Weighted choice of upstreams per request (canary, blue-green).
    #[serde(default)]
    pub split: Option<Vec<SplitSpec>>,
    /// Answer directly with a fixed response.
    #[serde(default)]
    pub respond: Option<RespondSpec>,
    /// Answer with a redirect.
    #[serde(default)]
    pub redirect: Option<RedirectSpec>,
    /// Remove this prefix from the path before forwarding.
    #[serde(default)]
    pub strip_prefix: Option<Str>,
    /// Replace the path prefix `from` with `to` before forwarding.
    #[serde(default)]
    pub rewrite_prefix: Option<RewritePrefixSpec>,
    /// Host header sent upstream; default keeps the client's.
    #[serde(default)]
    pub host_rewrite: Option<Str>,
    /// Longest wait for the upstream's response head; 504 when passed. Default `15s`.
    #[serde(default)]
    pub timeout: Option<DurationSpec>,
    /// Timers of this route beyond `timeout`.
    #[serde(default)]
    pub timeouts: RouteTimeoutsSpec,
    /// Header changes on the way upstream.
    #[serde(default)]
    pub request_headers: HeaderRulesSpec,
    /// Header changes on the way back.
    #[serde(default)]
    pub response_headers: HeaderRulesSpec,
    /// JWT authentication; a route without it is public.
    #[serde(default)]
    pub auth: Option<RouteAuthSpec>,
    /// Retry policy; absent: only connect failures are retried, once.
    #[serde(default)]
    pub retry: Option<RetrySpec>,
    /// Rate-limit policies (names from `rate_limits`); every one must allow.
    #[serde(default)]
    pub rate_limit: Vec<String>,
    /// Serve GET/HEAD from the response cache (needs the top-level `cache:`).
    #[serde(default)]
    pub cache: Option<RouteCacheSpec>,
    /// IP allow and deny lists for this route (after `server.ip`).
    #[serde(default)]
    pub ip: Option<super::IpRulesSpec>,
    /// CORS: preflights answered by the gateway, `Access-Control-*` on responses.
    #[serde(default)]
    pub cors: Option<CorsSpec>,
    /// Shadow traffic: a copy of each request (or a share) sent to another upstream; its response is discarded.
    #[serde(default)]
    pub mirror: Option<MirrorSpec>,
    /// Compress upstream responses the client accepts compressed (zstd, br, gzip), streaming.
    #[serde(default)]
    pub compression: Option<CompressionSpec>,
}

/// A content coding the gateway compresses with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AlgorithmSpec {
    /// Zstandard (`zstd`).
    Zstd,
    /// Brotli (`br`).
    Br,
    /// gzip.
    Gzip,
}

/// `routes[i].compression`.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CompressionSpec {
    /// Codings offered, in the gateway's order of preference (the client's q-values come first). Default `[zstd, br, gzip]`.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<AlgorithmSpec>,
    /// Responses with a smaller `Content-Length` are sent as they are. Default `1KiB`.
    #[serde(default = "default_min_size")]
    pub min_size: ByteSize,
    /// Media types compressed: `type/subtype`, `type/*` or `type/*+suffix`. Default: text (html, plain, css, javascript, xml, csv, markdown), JSON and XML types (`+json`, `+xml` included), JavaScript, WebAssembly and SVG.
    #[serde(default)]
    pub content_types: Option<Vec<String>>,
    /// One level for every coding (gzip 1-9, br 0-11, zstd 1-19; clamped). Default: gzip 6, br 4, zstd 3.
    #[serde(default)]
    pub level: Option<u32>,
    /// Responses compressed at once at most on this route (each holds 0.4-0.9 MiB of encoder state); more go out as they are. Default `128`.
    #[serde(default = "default_compression_concurrency")]
    pub max_concurrent: u32,
}

fn default_algorithms() -> Vec<AlgorithmSpec> {
    vec![AlgorithmSpec::Zstd, AlgorithmSpec::Br, AlgorithmSpec::Gzip]
}
fn default_min_size() -> ByteSize {
    ByteSize(1 << 10)
}
fn default_compression_concurrency() -> u32 {
    128
}

/// `routes[i].mirror`.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorSpec {
    /// The upstream that gets the copies (from `upstreams`).
    pub upstream: String,
    /// Share of requests copied, 0 to 100. Default `100`.
    #[serde(default = "hundred")]
    pub percent: f64,
    /// Requests with a larger body are not copied (the copy is kept in memory until the body ends). Default `64KiB`.
    #[serde(default = "default_mirror_body")]
    pub max_body: ByteSize,
    /// Copies in flight at most for this route; more are dropped, never queued. Default `64`.
    #[serde(default = "default_mirror_concurrency")]
    pub max_concurrent: u32,
    /// Deadline of one copy (waiting for the body, the shadow's answer and reading it). Default: the route's `timeout`.
    #[serde(default)]
    pub timeout: Option<DurationSpec>,
}

fn hundred() -> f64 {
    100.0
}
fn default_mirror_body() -> ByteSize {
    ByteSize(64 << 10)
}
fn default_mirror_concurrency() -> u32 {
    64
}

/// `routes[i].cors`.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CorsSpec {
    /// Allowed origins: `https://app.example.com` (exact), `https://*.example.com` (one or more labels; scheme and port optional), `{ regex: "^https://pr-[0-9]+\\.example\\.com$" }`, or `*` (any; not with `allow_credentials`).
    pub allow_origins: Vec<OriginSpec>,
    /// Methods a preflight may ask for. Default: the route's `match.methods`, else GET, HEAD, POST, PUT, PATCH, DELETE.
    #[serde(default)]
    pub allow_methods: Vec<String>,
    /// Request headers a preflight may ask for (`*`: any it asks for). Default none beyond the CORS-safelisted ones.
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// Response headers the browser lets scripts read (`Access-Control-Expose-Headers`).
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// Allow cookies and `Authorization` (`Access-Control-Allow-Credentials: true`). Default `false`.
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long a browser may keep a preflight's answer (`Access-Control-Max-Age`). Default: not sent (browsers use 5 s).
    #[serde(default)]
    pub max_age: Option<DurationSpec>,
}

/// One `allow_origins` entry.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema, Serialize)]
#[serde(untagged)]
pub enum OriginSpec {
    /// An origin, a wildcard origin, or `*`.
    Text(Str),
    /// `{ regex: ... }` over the whole origin (anchored).
    Regex(RegexOriginSpec),
}

/// `{ regex: ... }`.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegexOriginSpec {
    /// The regex.
    pub regex: Str,
}

/// `routes[i].retry`.
#[derive(Debug, Clone, Deserialize, JsonSchema, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySpec {
    /// Retries after the first try. Default `2`.
    pub attempts: u32,
    /// What is retried: `connect_error`, `reset`, `timeout` (per try), `5xx`, or a status. Default `[connect_error, reset, 502, 503, 504]`.
    pub on: Vec<RetryOnSpec>,
    /// Deadline of one try, within the route timeout. Default: none.
    pub per_try_timeout: Option<DurationSpec>,
    /// Full-jitter backoff between tries.
    pub backoff: BackoffSpec,
    /// Retries in progress may be at most this share of the route's requests in progress. Default `20%`.
    pub budget: Str,
    /// Retries always allowed at once, whatever the budget. Default `3`.
    pub min_concurrency: u32,
    /// Also retry POST and PATCH after a reset or a listed status. Default `false`.
    pub non_idempotent: bool,
}

impl Default for RetrySpec {
    fn default() -> Self {
        Self {
            attempts: 2,
            on: ["connect_error", "reset", "502", "503", "504"]
                .iter()
                .map(|s| RetryOnSpec((*s).to_owned()))
                .collect(),
            per_try_timeout: None,
            backoff: BackoffSpec::default(),
            budget: Str::from("20%"),
            min_concurrency: 3,
            non_idempotent: false,
        }
    }
}

/// `routes[i].retry.backoff`.
#[derive(Debug, Clone, Deserialize, JsonSchema, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackoffSpec {
    /// First wait cap. Default `25ms`.
    pub base: DurationSpec,
    /// Largest wait. Default `250ms`.
    pub max: DurationSpec,
}

impl Default for BackoffSpec {
    fn default() -> Self {
        use std::time::Duration;
        Self {
            base: DurationSpec(Duration::from_millis(25)),
            max: DurationSpec(Duration::from_millis(250)),
        }
    }
}

/// One `retry.on` entry: a word or a status code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct RetryOnSpec(pub String);

impl JsonSchema for RetryOnSpec {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "RetryOn".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "connect_error, reset, timeout, 5xx, or a status code.",
            "anyOf": [
                { "type": "string" },
                { "type": "integer", "minimum": 100, "maximum": 599 }
            ]
        })
    }
}

impl JsonSchema for ValueMatchSpec {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ValueMatch".into()
    }

    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let text = g.subschema_for::<Str>();
        schemars::json_schema!({
            "description": "A value to match exactly, or one of { exact: ... }, { regex: ... }, { present: true|false }.",
            "anyOf": [
                text,
                { "type": "object", "properties": { "exact": text }, "required": ["exact"], "additionalProperties": false },
                { "type": "object", "properties": { "regex": text }, "required": ["regex"], "additionalProperties": false },
                { "type": "object", "properties": { "present": { "type": "boolean" } }, "required": ["present"], "additionalProperties": false }
            ]
        })
    }
}

impl<'de> Deserialize<'de> for RetryOnSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RetryOnSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("connect_error, reset, timeout, 5xx or a status code")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RetryOnSpec, E> {
                Ok(RetryOnSpec(v.to_owned()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RetryOnSpec, E> {
                Ok(RetryOnSpec(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RetryOnSpec, E> {
                Ok(RetryOnSpec(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// `routes[i].match`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MatchSpec {
    /// Host names: exact (`api.example.com`) or wildcard (`*.example.com`). Empty: any host.
    #[serde(default)]
    pub hosts: Vec<Str>,
    /// Exact path, or a template with `{name}` segments.
    #[serde(default)]
    pub path: Option<Str>,
    /// Path prefix, matched on segment boundaries.
    #[serde(default)]
    pub path_prefix: Option<Str>,
    /// Regular expression over the whole normalized path (anchored).
    #[serde(default)]
    pub path_regex: Option<Str>,
    /// Allowed methods. Empty: any.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Header constraints: exact value, `{ regex }` or `{ present }`.
    #[serde(default)]
    pub headers: BTreeMap<String, ValueMatchSpec>,
    /// Query parameter constraints, same forms as headers.
    #[serde(default)]
    pub query: BTreeMap<String, ValueMatchSpec>,
}

/// A header or query constraint.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueMatchSpec {
    /// Equal to this value.
    Exact(Str),
    /// Matches this (anchored) regular expression.
    Regex(Str),
    /// Present (`true`) or absent (`false`).
    Present(bool),
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ValueMatchMap {
    #[serde(default)]
    regex: Option<Str>,
    #[serde(default)]
    present: Option<bool>,
    #[serde(default)]
    exact: Option<Str>,
}

impl<'de> Deserialize<'de> for ValueMatchSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ValueMatchSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a value, { regex: ... }, { exact: ... } or { present: true|false }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ValueMatchSpec, E> {
                Str::deserialize(de::value::StrDeserializer::<E>::new(v)).map(ValueMatchSpec::Exact)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ValueMatchSpec, E> {
                Ok(ValueMatchSpec::Exact(Str::from(v.to_string())))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ValueMatchSpec, E> {
                Ok(ValueMatchSpec::Exact(Str::from(v.to_string())))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<ValueMatchSpec, E> {
                Ok(ValueMatchSpec::Exact(Str::from(v.to_string())))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ValueMatchSpec, A::Error> {
                let m = ValueMatchMap::deserialize(MapAccessDeserializer::new(map))?;
                match (m.regex, m.present, m.exact) {
                    (Some(r), None, None) => Ok(ValueMatchSpec::Regex(r)),
                    (None, Some(p), None) => Ok(ValueMatchSpec::Present(p)),
                    (None, None, Some(e)) => Ok(ValueMatchSpec::Exact(e)),
                    _ => Err(de::Error::custom(
                        "give exactly one of `regex`, `exact` or `present`",
                    )),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// `routes[i].split[j]`.
#[derive(Debug, Clone, Deserialize, JsonSchema, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SplitSpec {
    /// Upstream name.
    pub upstream: String,
    /// Relative share, 0 to 10000.
    pub weight: u32,
}

/// `routes[i].respond`.
#[derive(Debug, Clone, Deserialize, JsonSchema, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RespondSpec {
    /// Status code. Default 200.
    #[serde(default = "default_status")]
    pub status: u16,
    /// Body. Default empty.
    #[serde(default)]
    pub body: Str,
    /// Response headers.
    #[serde(default)]
    pub headers: BTreeMap<String, Str>,
}

fn default_status() -> u16 {
    200
}

/// `routes[i].redirect`.
#[derive(Debug, Clone, Deserialize, JsonSchema, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectSpec {
    /// Location to send the client to.
    pub to: Str,
    /// 301, 302, 303, 307 or 308. Default 302.
    #[serde(default = "default_redirect")]
    pub status: u16,
}

fn default_redirect() -> u16 {
    302
}

/// `routes[i].rewrite_prefix`.
#[derive(Debug, Clone, Deserialize, JsonSchema, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RewritePrefixSpec {
    /// Prefix to replace (segment boundary).
    pub from: Str,
    /// Replacement.
    pub to: Str,
}

/// `request_headers` / `response_headers`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderRulesSpec {
    /// Replace (or add) these headers.
    #[serde(default)]
    pub set: BTreeMap<String, Str>,
    /// Add these headers, keeping existing values.
    #[serde(default)]
    pub add: BTreeMap<String, Str>,
    /// Remove these headers.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// `routes[i].timeouts`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RouteTimeoutsSpec {
    /// A WebSocket (or other upgraded) tunnel of this route with no data in either direction for this long is closed. Default: `server.limits.tunnel_idle_timeout`.
    #[serde(default)]
    pub tunnel_idle: Option<DurationSpec>,
}
