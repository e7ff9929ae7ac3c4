//! `server:` with its `tls`, `admin`, `limits` and `access_log`.

use std::fmt;

use schemars::JsonSchema;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

use super::{Secret, yes};
use crate::config::units::{ByteSize, DurationSpec, Str};

/// `server:`.
#[derive(Debug, Clone, Deserialize, JsonSchema, Serialize)]
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
    /// IP allow and deny lists for every route (checked before a route's own).
    #[serde(default)]
    pub ip: Option<IpRulesSpec>,
}

/// `server.ip` and `routes[i].ip`: allow and deny lists of CIDRs, matched
/// against the client address (after trusted proxies). Deny wins; with an
/// allow list, only its addresses pass. 403 `ip_denied` otherwise.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IpRulesSpec {
    /// Only these CIDRs (or addresses) pass. Empty and no `allow_file`: every address may.
    #[serde(default)]
    pub allow: Vec<Str>,
    /// These CIDRs (or addresses) never pass.
    #[serde(default)]
    pub deny: Vec<Str>,
    /// A file of allowed CIDRs, one per line (`#` comments), relative to the config; re-read on every reload.
    #[serde(default)]
    pub allow_file: Option<Str>,
    /// A file of denied CIDRs, one per line (`#` comments), relative to the config; re-read on every reload.
    #[serde(default)]
    pub deny_file: Option<Str>,
}

/// `server.tls`.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientAuthSpec {
    /// CA certificates (PEM) that client certificates must chain to.
    pub ca: Str,
    /// Refuse handshakes without a valid client certificate. Default `true`.
    #[serde(default = "yes")]
    pub required: bool,
}

/// `server.tls.hsts`.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema, Serialize)]
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
            ip: None,
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
#[derive(Debug, Clone, Deserialize, JsonSchema, Serialize)]
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

impl JsonSchema for WorkersSpec {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Workers".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "`auto` (one worker thread per core) or a number of threads from 1 to 1024.",
            "anyOf": [
                { "const": "auto" },
                { "type": "integer", "minimum": 1, "maximum": 1024 }
            ]
        })
    }
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

/// `server.limits`: every protection an edge proxy needs, set explicitly.
#[derive(Debug, Clone, Deserialize, JsonSchema, Serialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema, Serialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlashPolicy {
    /// Keep them encoded; they never split path segments.
    Keep,
    /// Answer 400.
    Reject,
}

/// `server.access_log`.
#[derive(Debug, Clone, Deserialize, JsonSchema, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessLogSpec {
    /// One JSON line per request on stdout. Default `true`.
    pub enabled: bool,
    /// Log the query string (`query`), with the values of token-carrying
    /// parameters (auth `token_from: query:NAME`) shown as `<redacted>`.
    /// Default `false`: query strings often carry personal data.
    pub query: bool,
}

impl Default for AccessLogSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            query: false,
        }
    }
}
