//! Tollgate: an API gateway and reverse proxy.
//!
//! A request runs through the stages of [`proxy::pipeline`] against one
//! immutable [`snapshot::Snapshot`] compiled from the YAML config by
//! [`config`]; [`config::reload`] swaps in new snapshots without dropping
//! requests. [`app::Gateway`] wires listeners, the admin API and reload
//! triggers together; `tollgate run` and the integration tests both use it.

pub mod access;
pub(crate) mod admin;
pub mod app;
pub(crate) mod auth;
/// API keys for `type: api_key` providers (`tollgate hash-key`).
pub mod api_keys {
    pub use crate::auth::apikey::{entry_line, generate};
}
pub(crate) mod body;
pub mod cache;
pub mod compression;
pub mod config;
pub(crate) mod cookies;
pub(crate) mod fetch;
#[cfg(feature = "fuzzing")]
pub mod fuzz;
pub(crate) mod hash;
pub mod observability;
pub(crate) mod proxy;
pub mod ratelimit;
pub mod routing;
pub(crate) mod snapshot;
pub(crate) mod socket;
pub(crate) mod tls;
pub(crate) mod upstream;
