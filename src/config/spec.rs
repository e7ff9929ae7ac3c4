//! The config file, exactly as written: serde input types only.
//!
//! Every struct denies unknown keys. Nothing here is used on the request
//! path; `compile` turns a validated `Spec` into runtime types. The doc
//! comment on each field is the config reference (README "Configuration").

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor, value::MapAccessDeserializer};
use serde::{Deserialize, Serialize};

use super::units::{ByteSize, DurationSpec, Str};

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Listeners, limits and process settings.
    #[serde(default)]
    pub server: ServerSpec,
    /// Named groups of backend endpoints.
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamSpec>,
    /// Routes, in declared order (order breaks ties, see README "Routing").
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
    /// JWT providers that routes name in `auth`.
    #[serde(default)]
    pub auth: AuthSpec,
    /// Rate-limit policies that routes name in `rate_limit`.
    #[serde(default)]
    pub rate_limits: BTreeMap<String, RateLimitSpec>,
    /// Redis for `scope: global` rate limits.
    #[serde(default)]
    pub redis: Option<RedisSpec>,
    /// The response cache (routes opt in with `cache`).
    #[serde(default)]
    pub cache: Option<CacheSpec>,
}

/// `cache:`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSpec {
    /// Total weight of stored bodies and headers. Default `256MiB`.
    pub max_size: ByteSize,
    /// Larger responses stream through uncached. Default `1MiB`.
    pub max_object_size: ByteSize,
}

impl Default for CacheSpec {
    fn default() -> Self {
        Self {
            max_size: ByteSize(256 << 20),
            max_object_size: ByteSize(1 << 20),
        }
    }
}

/// `routes[i].cache`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
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

/// `redis:`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
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
        #[derive(Deserialize)]
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

/// `rate_limits.NAME.mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RateModeSpec {
    /// Reject over the limit (429).
    #[default]
    Enforce,
    /// Count and log, reject nothing.
    Shadow,
}

/// `rate_limits.NAME.scope`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScopeSpec {
    /// Buckets in this process.
    #[default]
    Local,
    /// Buckets in Redis, shared by every replica.
    Global,
}

/// `rate_limits.NAME.missing_key`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateOverrideSpec {
    /// `N/s`, `N/min` or `N/h`.
    pub rate: Str,
    /// Bucket size. Default: the rate's N.
    #[serde(default)]
    pub burst: Option<u32>,
}

/// `server:`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSpec {
    /// Addresses the proxy listens on (HTTP/1.1 and h2c on each). Default `["0.0.0.0:8080"]`.
    #[serde(default = "default_listen")]
    pub listen: Vec<Str>,
    /// Address of the admin listener. Default `127.0.0.1:9901` (`admin.listen` wins).
    #[serde(default = "default_admin_listen")]
    pub admin_listen: Str,
    /// The admin API: its address, bearer token and connection limits.
    #[serde(default)]
    pub admin: AdminSpec,
    /// Worker threads: `auto` (one per core) or a number.
    #[serde(default)]
    pub workers: WorkersSpec,
    /// How long in-flight requests may take to finish after SIGTERM. Default `30s`.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace: DurationSpec,
    /// CIDRs (or single addresses) whose X-Forwarded-* / Forwarded headers are trusted.
    #[serde(default)]
    pub trusted_proxies: Vec<Str>,
    /// Limits on downstream requests and connections.
    #[serde(default)]
    pub limits: LimitsSpec,
    /// Access log settings.
    #[serde(default)]
    pub access_log: AccessLogSpec,
    /// Load shedding: requests in progress beyond this get 503 `overloaded` at once. Default `20000`.
    #[serde(default = "default_max_inflight_requests")]
    pub max_inflight_requests: usize,
    /// Addresses that terminate TLS (HTTP/1.1 and h2 by ALPN). Default none.
    #[serde(default)]
    pub tls_listen: Vec<Str>,
    /// Certificates and settings for `tls_listen`.
    #[serde(default)]
    pub tls: Option<TlsSpec>,
}

/// `server.tls`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSpec {
    /// `{ cert, key, hosts }`: PEM files; hosts default to the certificate's DNS names.
    pub certificates: Vec<CertificateSpec>,
    /// The `cert` of a listed certificate used when SNI is absent or unknown; absent: such handshakes are refused.
    #[serde(default)]
    pub default_certificate: Option<Str>,
    /// `"1.2"` (default) or `"1.3"`.
    #[serde(default = "default_tls_min")]
    pub min_version: Str,
    /// ALPN protocols offered, in order. Default `[h2, "http/1.1"]`.
    #[serde(default = "default_alpn")]
    pub alpn: Vec<String>,
    /// Client certificates (mTLS): `{ ca, required }`.
    #[serde(default)]
    pub client_auth: Option<ClientAuthSpec>,
    /// The plaintext listeners answer every request with 308 to https.
    #[serde(default)]
    pub redirect_http: bool,
    /// `Strict-Transport-Security` on TLS responses: `{ max_age, include_subdomains }`.
    #[serde(default)]
    pub hsts: Option<HstsSpec>,
    /// TLS session resumption (a session cache and TLS 1.3 tickets). Default `true`.
    #[serde(default = "yes")]
    pub session_resumption: bool,
}

/// `server.tls.client_auth`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientAuthSpec {
    /// CA certificates (PEM) that client certificates must chain to.
    pub ca: Str,
    /// Refuse handshakes without a valid client certificate. Default `true`.
    #[serde(default = "yes")]
    pub required: bool,
}

/// `server.tls.hsts`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HstsSpec {
    /// `max-age` (durations such as `1y`, `180d`).
    pub max_age: DurationSpec,
    /// Add `includeSubDomains`. Default `false`.
    #[serde(default)]
    pub include_subdomains: bool,
}

fn default_tls_min() -> Str {
    Str::from("1.2")
}
fn default_alpn() -> Vec<String> {
    vec!["h2".into(), "http/1.1".into()]
}

/// `server.tls.certificates[i]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateSpec {
    /// Certificate chain (PEM), leaf first.
    pub cert: Str,
    /// Private key (PEM: RSA, ECDSA or Ed25519).
    pub key: Str,
    /// Host names served (`*.example.com` allowed); default: the certificate's DNS SANs.
    #[serde(default)]
    pub hosts: Vec<Str>,
}

fn default_max_inflight_requests() -> usize {
    20_000
}

impl Default for ServerSpec {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            admin_listen: default_admin_listen(),
            admin: AdminSpec::default(),
            workers: WorkersSpec::Auto,
            shutdown_grace: default_shutdown_grace(),
            trusted_proxies: Vec::new(),
            limits: LimitsSpec::default(),
            access_log: AccessLogSpec::default(),
            max_inflight_requests: default_max_inflight_requests(),
            tls_listen: Vec::new(),
            tls: None,
        }
    }
}

impl ServerSpec {
    /// The admin listener's address: `admin.listen`, else `admin_listen`.
    pub fn admin_address(&self) -> &Str {
        self.admin.listen.as_ref().unwrap_or(&self.admin_listen)
    }
}

/// `server.admin`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSpec {
    /// Address of the admin listener (replaces `server.admin_listen`).
    pub listen: Option<Str>,
    /// Bearer token every admin endpoint but `/healthz`, `/readyz` and `/metrics` requires (`${ENV}` works; never shown). One of `token` and `token_file`.
    pub token: Option<Secret>,
    /// File holding the token (relative to the config file; surrounding white space ignored; re-read on reload).
    pub token_file: Option<Str>,
    /// Let the admin API listen on a non-loopback address without a token (refused otherwise). Default `false`.
    pub allow_public_without_token: bool,
    /// Most concurrent admin connections; more wait in the accept queue. Default `64`.
    pub max_connections: usize,
    /// Time an admin connection gets for each request head (and between requests). Default `10s`.
    pub header_read_timeout: DurationSpec,
}

impl Default for AdminSpec {
    fn default() -> Self {
        Self {
            listen: None,
            token: None,
            token_file: None,
            allow_public_without_token: false,
            max_connections: 64,
            header_read_timeout: DurationSpec(std::time::Duration::from_secs(10)),
        }
    }
}

fn default_listen() -> Vec<Str> {
    vec![Str::from("0.0.0.0:8080")]
}
fn default_admin_listen() -> Str {
    Str::from("127.0.0.1:9901")
}
fn default_shutdown_grace() -> DurationSpec {
    DurationSpec(std::time::Duration::from_secs(30))
}

/// `server.workers`: `auto` or a thread count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WorkersSpec {
    /// One worker thread per core.
    #[default]
    Auto,
    /// Exactly this many worker threads.
    Count(usize),
}

impl<'de> Deserialize<'de> for WorkersSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = WorkersSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("`auto` or a number of threads from 1 to 1024")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<WorkersSpec, E> {
                match usize::try_from(v) {
                    Ok(n @ 1..=1024) => Ok(WorkersSpec::Count(n)),
                    _ => Err(E::custom("workers must be from 1 to 1024")),
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<WorkersSpec, E> {
                self.visit_u64(u64::try_from(v).unwrap_or(0))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<WorkersSpec, E> {
                match v {
                    "auto" => Ok(WorkersSpec::Auto),
                    other => other
                        .parse::<u64>()
                        .map_err(|_| E::custom("expected `auto` or a number"))
                        .and_then(|n| self.visit_u64(n)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for WorkersSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            WorkersSpec::Auto => s.serialize_str("auto"),
            WorkersSpec::Count(n) => s.serialize_u64(*n as u64),
        }
    }
}

/// `routes[i].timeouts`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RouteTimeoutsSpec {
    /// A WebSocket (or other upgraded) tunnel of this route with no data in either direction for this long is closed. Default: `server.limits.tunnel_idle_timeout`.
    #[serde(default)]
    pub tunnel_idle: Option<DurationSpec>,
}

/// `server.limits`: every protection an edge proxy needs, set explicitly.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSpec {
    /// Largest request head (request line + headers). Larger: 431. Default `64KiB`.
    pub max_request_header_bytes: ByteSize,
    /// Largest request body, by Content-Length up front or counted while streaming. Larger: 413. Default `10MiB`.
    pub max_request_body_bytes: ByteSize,
    /// Most header fields in one request. More: 431. Default `100`.
    pub max_request_headers: usize,
    /// Time from connection start (or the end of the previous response) to the end of the request head. Default `10s`.
    pub header_read_timeout: DurationSpec,
    /// Longest wait for the next piece of a request body: 408 and the connection is closed. Default `30s`.
    pub body_read_timeout: DurationSpec,
    /// Header names with `_`: `drop` (default), `reject` (400) or `allow`.
    pub headers_with_underscores: UnderscorePolicy,
    /// `//a///b` is matched and forwarded as `/a/b`. Default `true`.
    pub merge_slashes: bool,
    /// `%2F` / `%5C` in paths: `keep` (stay encoded, never split segments) or `reject` (400).
    pub escaped_slashes: EscapedSlashPolicy,
    /// A keep-alive connection with no request in flight is closed after this. Default `60s`.
    pub idle_timeout: DurationSpec,
    /// A connection whose writes to the client make no progress for this long is closed (a client that stops reading). Default `60s`.
    pub send_timeout: DurationSpec,
    /// Most concurrent downstream connections; further ones wait in the accept queue. Default `50000`.
    pub max_connections: usize,
    /// Most concurrent streams on one HTTP/2 connection. Default `100`.
    pub max_concurrent_streams: u32,
    /// Longest TLS handshake; slower sockets are closed. Default `10s`.
    pub tls_handshake_timeout: DurationSpec,
    /// An upgraded connection (WebSocket) with no data in either direction for this long is closed. The only timer of a tunnel, besides `send_timeout` for a client that stops reading. Default `1h`; a route's `timeouts.tunnel_idle` wins.
    pub tunnel_idle_timeout: DurationSpec,
}

impl Default for LimitsSpec {
    fn default() -> Self {
        use std::time::Duration;
        Self {
            max_request_header_bytes: ByteSize(64 << 10),
            max_request_body_bytes: ByteSize(10 << 20),
            max_request_headers: 100,
            header_read_timeout: DurationSpec(Duration::from_secs(10)),
            body_read_timeout: DurationSpec(Duration::from_secs(30)),
            headers_with_underscores: UnderscorePolicy::Drop,
            merge_slashes: true,
            escaped_slashes: EscapedSlashPolicy::Keep,
            idle_timeout: DurationSpec(Duration::from_secs(60)),
            send_timeout: DurationSpec(Duration::from_secs(60)),
            max_connections: 50_000,
            max_concurrent_streams: 100,
            tls_handshake_timeout: DurationSpec(Duration::from_secs(10)),
            tunnel_idle_timeout: DurationSpec(Duration::from_secs(3600)),
        }
    }
}

/// What to do with request header names that contain `_`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnderscorePolicy {
    /// Remove such headers before routing and forwarding.
    Drop,
    /// Answer 400.
    Reject,
    /// Keep them.
    Allow,
}

/// What to do with `%2F` and `%5C` in request paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlashPolicy {
    /// Keep them encoded; they never split path segments.
    Keep,
    /// Answer 400.
    Reject,
}

/// `server.access_log`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessLogSpec {
    /// One JSON line per request on stdout. Default `true`.
    pub enabled: bool,
}

impl Default for AccessLogSpec {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// `upstreams.NAME`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSpec {
    /// `http://host:port` URLs, or `{ url, weight }`.
    pub endpoints: Vec<EndpointSpec>,
    /// `round_robin` (smooth weighted, default), `least_request` (power of two choices), `random`, `consistent_hash`.
    #[serde(default)]
    pub balancer: BalancerSpec,
    /// For `consistent_hash`: `header:NAME`, `cookie:NAME`, `client_ip` or `path`.
    #[serde(default)]
    pub hash_on: Option<Str>,
    /// `http1` (default) or `h2c` (HTTP/2 over cleartext, prior knowledge).
    #[serde(default)]
    pub protocol: ProtocolSpec,
    /// Longest time to establish a TCP connection. Default `1s`.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: DurationSpec,
    /// Keep-alive pool settings.
    #[serde(default)]
    pub pool: PoolSpec,
    /// Circuit breaker per endpoint; absent: none.
    #[serde(default)]
    pub circuit_breaker: Option<BreakerSpec>,
    /// Active health checks; absent: none.
    #[serde(default)]
    pub health_check: Option<HealthCheckSpec>,
    /// Bulkhead: what one upstream may take of the gateway.
    #[serde(default)]
    pub limits: UpstreamLimitsSpec,
    /// TLS to `https://` endpoints.
    #[serde(default)]
    pub tls: Option<UpstreamTlsSpec>,
}

/// `upstreams.NAME.tls`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsSpec {
    /// CA certificates (PEM) to verify the upstream with; default: the webpki roots.
    #[serde(default)]
    pub ca_file: Option<Str>,
    /// Name sent as SNI and verified; default: the endpoint's host.
    #[serde(default)]
    pub server_name: Option<Str>,
    /// Client certificate for upstream mTLS: `{ cert, key }`.
    #[serde(default)]
    pub client_cert: Option<ClientCertSpec>,
    /// Skip certificate verification (a warning is logged at every load). Default `false`.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// `upstreams.NAME.tls.client_cert`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCertSpec {
    /// Certificate chain (PEM).
    pub cert: Str,
    /// Private key (PEM).
    pub key: Str,
}

/// `upstreams.NAME.limits`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamLimitsSpec {
    /// Most open HTTP/1.1 connections to the upstream (all endpoints). Default `1024`.
    pub max_connections: usize,
    /// Most requests in flight to the upstream; more get 503 `overloaded` at once. Default `1000`.
    pub max_inflight: usize,
}

impl Default for UpstreamLimitsSpec {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_inflight: 1000,
        }
    }
}

/// `upstreams.NAME.health_check`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckSpec {
    /// Path requested (GET). Default `/health`.
    pub path: Str,
    /// Time between checks. Default `5s`.
    pub interval: DurationSpec,
    /// Deadline of one check. Default `1s`.
    pub timeout: DurationSpec,
    /// Passing checks in a row to come back into rotation. Default `2`.
    pub healthy_threshold: u32,
    /// Failing checks in a row to go out of rotation. Default `3`.
    pub unhealthy_threshold: u32,
    /// Statuses that pass: `200-399`, `200`, `200,204`. Default `200-399`.
    pub expected_status: Str,
}

impl Default for HealthCheckSpec {
    fn default() -> Self {
        use std::time::Duration;
        Self {
            path: Str::from("/health"),
            interval: DurationSpec(Duration::from_secs(5)),
            timeout: DurationSpec(Duration::from_secs(1)),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            expected_status: Str::from("200-399"),
        }
    }
}

/// `upstreams.NAME.circuit_breaker`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerSpec {
    /// Open after this many failures in a row (0: off). Default `5`.
    pub consecutive_failures: u32,
    /// Open when this share of the window's requests failed, e.g. `50%` (absent: off).
    pub failure_rate: Option<Str>,
    /// The rate counts only with at least this many requests in the window. Default `20`.
    pub min_requests: u32,
    /// Failure-rate window. Default `10s`.
    pub window: DurationSpec,
    /// First open period; doubles on each re-trip. Default `30s`.
    pub open_for: DurationSpec,
    /// Longest open period. Default `5m`.
    pub max_open_for: DurationSpec,
    /// Probes let through in half-open; all must succeed to close. Default `3`.
    pub half_open_requests: u32,
    /// Outcomes that count as failures: `connect_error`, `timeout`, `reset`, `5xx`. Default all four.
    pub failure_on: Vec<FailureKindSpec>,
}

impl Default for BreakerSpec {
    fn default() -> Self {
        use std::time::Duration;
        Self {
            consecutive_failures: 5,
            failure_rate: None,
            min_requests: 20,
            window: DurationSpec(Duration::from_secs(10)),
            open_for: DurationSpec(Duration::from_secs(30)),
            max_open_for: DurationSpec(Duration::from_secs(300)),
            half_open_requests: 3,
            failure_on: vec![
                FailureKindSpec::ConnectError,
                FailureKindSpec::Timeout,
                FailureKindSpec::Reset,
                FailureKindSpec::Status5xx,
            ],
        }
    }
}

/// An upstream outcome a breaker counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum FailureKindSpec {
    /// No connection.
    #[serde(rename = "connect_error")]
    ConnectError,
    /// No response head in time.
    #[serde(rename = "timeout")]
    Timeout,
    /// Connection failed mid-exchange, or an invalid response.
    #[serde(rename = "reset")]
    Reset,
    /// A 5xx response.
    #[serde(rename = "5xx")]
    Status5xx,
}

fn default_connect_timeout() -> DurationSpec {
    DurationSpec(std::time::Duration::from_secs(1))
}

/// One endpoint: a URL string or `{ url, weight }`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndpointSpec {
    /// `http://host:port`.
    pub url: Str,
    /// Relative share of traffic, 1 to 1000. Default 1.
    pub weight: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointMap {
    url: Str,
    #[serde(default = "one")]
    weight: u32,
}

fn one() -> u32 {
    1
}

impl<'de> Deserialize<'de> for EndpointSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = EndpointSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a URL string or { url, weight }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<EndpointSpec, E> {
                let url = Str::deserialize(de::value::StrDeserializer::<E>::new(v))?;
                Ok(EndpointSpec { url, weight: 1 })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<EndpointSpec, A::Error> {
                let m = EndpointMap::deserialize(MapAccessDeserializer::new(map))?;
                Ok(EndpointSpec {
                    url: m.url,
                    weight: m.weight,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// Load-balancing algorithm.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BalancerSpec {
    /// Smooth weighted round robin (as NGINX).
    #[default]
    RoundRobin,
    /// Power of two random choices, fewer in-flight requests per weight wins.
    LeastRequest,
    /// Weighted random.
    Random,
    /// Ring hash over `hash_on`.
    ConsistentHash,
}

/// Upstream wire protocol.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProtocolSpec {
    /// HTTP/1.1 with a keep-alive pool.
    #[default]
    Http1,
    /// HTTP/2 cleartext with prior knowledge; one multiplexed connection per endpoint.
    H2c,
    /// HTTP/2 over TLS (ALPN h2; `https://` endpoints); one multiplexed connection per endpoint.
    H2,
}

/// `upstreams.NAME.pool`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolSpec {
    /// Most idle keep-alive connections kept per endpoint. Default `256`.
    pub max_idle_per_endpoint: usize,
    /// An idle connection is closed after this. Default `90s`.
    pub idle_timeout: DurationSpec,
}

impl Default for PoolSpec {
    fn default() -> Self {
        Self {
            max_idle_per_endpoint: 256,
            idle_timeout: DurationSpec(std::time::Duration::from_secs(90)),
        }
    }
}

/// `routes[i]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
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
}

/// `routes[i].retry`.
#[derive(Debug, Clone, Deserialize, Serialize)]
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
#[derive(Debug, Clone, Deserialize, Serialize)]
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
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
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

#[derive(Deserialize)]
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
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SplitSpec {
    /// Upstream name.
    pub upstream: String,
    /// Relative share, 0 to 10000.
    pub weight: u32,
}

/// `routes[i].respond`.
#[derive(Debug, Clone, Deserialize, Serialize)]
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
#[derive(Debug, Clone, Deserialize, Serialize)]
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
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RewritePrefixSpec {
    /// Prefix to replace (segment boundary).
    pub from: Str,
    /// Replacement.
    pub to: Str,
}

/// `request_headers` / `response_headers`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
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

/// `auth:`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSpec {
    /// Token issuers by name.
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderSpec>,
}

/// `auth.providers.NAME`: one token issuer, its keys and its rules.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSpec {
    /// Required exact value of `iss` (a single string). Required with `discovery`.
    #[serde(default)]
    pub issuer: Option<Str>,
    /// The token's `aud` (string or array) must contain one of these. Empty: tokens with an `aud` are refused.
    #[serde(default)]
    pub audiences: Vec<Str>,
    /// Accepted `alg` values (required): HS256/384/512, RS256/384/512, PS256/384/512, ES256/384, EdDSA.
    pub algorithms: Vec<String>,
    /// Remote JWKS URL (`https://`, or `http://` for a trusted network).
    #[serde(default)]
    pub jwks_uri: Option<Str>,
    /// Read `jwks_uri` from `{issuer}/.well-known/openid-configuration`.
    #[serde(default)]
    pub discovery: bool,
    /// Local JWKS file, read again with every config load.
    #[serde(default)]
    pub jwks_file: Option<Str>,
    /// HMAC shared secret (HS256/384/512); shown as `<redacted>` by `GET /config`.
    #[serde(default)]
    pub secret: Option<Secret>,
    /// One PEM public key (RSA, EC P-256/P-384 or Ed25519).
    #[serde(default)]
    pub public_key_file: Option<Str>,
    /// Extra CA certificates (PEM) trusted for the JWKS and discovery fetches, besides the webpki roots.
    #[serde(default)]
    pub ca_file: Option<Str>,
    /// Background refresh period of remote keys; a shorter `Cache-Control: max-age` wins. Default `10m`.
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh: DurationSpec,
    /// An unknown `kid` triggers a refresh at most this often. Default `30s`.
    #[serde(default = "default_jwks_min_refresh")]
    pub jwks_min_refresh_interval: DurationSpec,
    /// `/readyz` waits this long at most for the first key set. Default `10s`.
    #[serde(default = "default_jwks_ready_timeout")]
    pub jwks_ready_timeout: DurationSpec,
    /// Deadline of one JWKS or discovery fetch. Default `5s`.
    #[serde(default = "default_jwks_fetch_timeout")]
    pub jwks_fetch_timeout: DurationSpec,
    /// Clock skew allowed on `exp` and `nbf`. Default `30s`.
    #[serde(default = "default_leeway")]
    pub leeway: DurationSpec,
    /// Where the token is looked for: `header:NAME`, `cookie:NAME`, `query:NAME`. Default `["header:authorization"]`.
    #[serde(default = "default_token_from")]
    pub token_from: Vec<String>,
    /// Longer tokens are refused unread. Default `8KiB`.
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: ByteSize,
    /// Claim holding the tenant (dotted path allowed: `org.id`).
    #[serde(default)]
    pub tenant_claim: Option<String>,
    /// Claims set as request headers upstream: `{ claim: header }`. Client-sent copies are removed first.
    #[serde(default)]
    pub forward_claims: BTreeMap<String, String>,
    /// Keep the `Authorization` header upstream. Default `true`.
    #[serde(default = "yes")]
    pub forward_token: bool,
    /// Verified-token cache.
    #[serde(default)]
    pub cache: TokenCacheSpec,
}

fn default_jwks_refresh() -> DurationSpec {
    DurationSpec(std::time::Duration::from_secs(600))
}
fn default_jwks_min_refresh() -> DurationSpec {
    DurationSpec(std::time::Duration::from_secs(30))
}
fn default_jwks_ready_timeout() -> DurationSpec {
    DurationSpec(std::time::Duration::from_secs(10))
}
fn default_jwks_fetch_timeout() -> DurationSpec {
    DurationSpec(std::time::Duration::from_secs(5))
}
fn default_leeway() -> DurationSpec {
    DurationSpec(std::time::Duration::from_secs(30))
}
fn default_token_from() -> Vec<String> {
    vec!["header:authorization".to_owned()]
}
fn default_max_token_bytes() -> ByteSize {
    ByteSize(8 << 10)
}
fn yes() -> bool {
    true
}

/// `auth.providers.NAME.cache`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenCacheSpec {
    /// Most verified tokens kept (0 turns the cache off). Default `100000`.
    pub max_entries: u64,
    /// An entry lives until the token's `exp`, or this long at most. Default `5m`.
    pub max_ttl: DurationSpec,
}

impl Default for TokenCacheSpec {
    fn default() -> Self {
        Self {
            max_entries: 100_000,
            max_ttl: DurationSpec(std::time::Duration::from_secs(300)),
        }
    }
}

/// A secret string: read like `Str` (with `${ENV}`), never shown.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub Str);

impl Secret {
    /// The secret text.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

/// `routes[i].auth`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteAuthSpec {
    /// Provider name from `auth.providers`.
    pub provider: String,
    /// Validate a token when one is sent; let requests without one through anonymously.
    #[serde(default)]
    pub optional: bool,
    /// Claims that must hold every listed value (a space-separated string such as `scope`, or an array): 403 otherwise.
    #[serde(default)]
    pub require: BTreeMap<String, Vec<String>>,
}
