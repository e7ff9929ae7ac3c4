//! `auth:` providers and `routes[i].auth`.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::yes;
use crate::config::units::{ByteSize, DurationSpec, Str};

/// `auth:`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSpec {
    /// Token issuers by name.
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderSpec>,
}

/// What kind of credential a provider checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// Signed JSON Web Tokens (the default).
    #[default]
    Jwt,
    /// Static API keys, looked up by their SHA-256 in `keys_file`.
    ApiKey,
}

/// `auth.providers.NAME`: one token issuer (`type: jwt`, its keys and its
/// rules) or one set of API keys (`type: api_key`).
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSpec {
    /// `jwt` (default) or `api_key`.
    #[serde(default, rename = "type")]
    pub kind: ProviderKind,
    /// `api_key`: where the key is looked for: `header:NAME`, `cookie:NAME`, `query:NAME`. Default `["header:x-api-key"]`.
    #[serde(default)]
    pub from: Option<Vec<String>>,
    /// `api_key`: the keys: a YAML list of `{ sha256, consumer, tenant?, claims? }` (`tollgate hash-key` prints an entry). Read again with every config load and watched like it.
    #[serde(default)]
    pub keys_file: Option<Str>,
    /// `api_key`: send the key upstream too. Default `false`: the header, cookie or query parameter it came in is removed.
    #[serde(default)]
    pub forward_key: bool,
    /// Required exact value of `iss` (a single string). Required with `discovery`.
    #[serde(default)]
    pub issuer: Option<Str>,
    /// The token's `aud` (string or array) must contain one of these. Empty: tokens with an `aud` are refused.
    #[serde(default)]
    pub audiences: Vec<Str>,
    /// Accepted `alg` values (required for `jwt`): HS256/384/512, RS256/384/512, PS256/384/512, ES256/384, EdDSA.
    #[serde(default)]
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
/// `token_from`'s default.
pub(crate) fn default_token_from() -> Vec<String> {
    vec!["header:authorization".to_owned()]
}
fn default_max_token_bytes() -> ByteSize {
    ByteSize(8 << 10)
}

/// `auth.providers.NAME.cache`.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema, Serialize)]
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
#[derive(Clone, PartialEq, Eq, Deserialize, JsonSchema)]
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
#[derive(Debug, Clone, Deserialize, JsonSchema, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteAuthSpec {
    /// Provider name from `auth.providers`. Give this or `any_of`.
    #[serde(default)]
    pub provider: Option<String>,
    /// Accept a credential from any of these providers (e.g. a JWT or an API key), tried in order: the first that verifies wins.
    #[serde(default)]
    pub any_of: Vec<String>,
    /// Validate a token when one is sent; let requests without one through anonymously.
    #[serde(default)]
    pub optional: bool,
    /// Claims that must hold every listed value (a space-separated string such as `scope`, or an array): 403 otherwise.
    #[serde(default)]
    pub require: BTreeMap<String, Vec<String>>,
}
