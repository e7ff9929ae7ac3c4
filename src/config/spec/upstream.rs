//! `upstreams:`: endpoints, balancer, protocol, TLS, pool, limits,
//! health checks and circuit breaker.

use std::fmt;

use schemars::JsonSchema;
use serde::de::{self, Deserializer, MapAccess, Visitor, value::MapAccessDeserializer};
use serde::{Deserialize, Serialize};

use crate::config::units::{DurationSpec, Str};

/// `upstreams.NAME`.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCertSpec {
    /// Certificate chain (PEM).
    pub cert: Str,
    /// Private key (PEM).
    pub key: Str,
}

/// `upstreams.NAME.limits`.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema, Serialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema, Serialize)]
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

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct EndpointMap {
    url: Str,
    #[serde(default = "one")]
    weight: u32,
}

fn one() -> u32 {
    1
}

impl JsonSchema for EndpointSpec {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Endpoint".into()
    }

    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let text = g.subschema_for::<Str>();
        schemars::json_schema!({
            "description": "An endpoint URL (`http://host:port`, `https://host:port`), or { url, weight }.",
            "anyOf": [
                text,
                {
                    "type": "object",
                    "properties": {
                        "url": text,
                        "weight": { "type": "integer", "minimum": 0, "default": 1 }
                    },
                    "required": ["url"],
                    "additionalProperties": false
                }
            ]
        })
    }
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema, Serialize)]
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema, Serialize)]
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
