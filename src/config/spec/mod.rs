//! The config file, exactly as written: serde input types only.
//!
//! Every struct denies unknown keys. Nothing here is used on the request
//! path; `compile` turns a validated `Spec` into runtime types. The doc
//! comment on each field is its description in the JSON Schema and in the
//! configuration reference (docs/src/reference.md).
//! One file per concern, as in `compile/`.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

mod auth;
mod cache;
mod observability;
mod ratelimit;
mod route;
mod server;
mod upstream;

pub use auth::*;
pub use cache::*;
pub use observability::*;
pub use ratelimit::*;
pub use route::*;
pub use server::*;
pub use upstream::*;

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Listeners, limits and process settings.
    #[serde(default)]
    pub server: ServerSpec,
    /// Named groups of backend endpoints.
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamSpec>,
    /// Routes, in declared order (order breaks ties; see the Routing chapter).
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
    /// Distributed tracing.
    #[serde(default)]
    pub observability: ObservabilitySpec,
}

fn yes() -> bool {
    true
}
