//! Tollgate: an API gateway and reverse proxy.
//!
//! A request runs through the stages of [`proxy::pipeline`] against one
//! immutable [`snapshot::Snapshot`] compiled from the YAML config by
//! [`config`]; [`config::reload`] swaps in new snapshots without dropping
//! requests. [`app::Gateway`] wires listeners, the admin API and reload
//! triggers together; `tollgate run` and the integration tests both use it.

pub mod admin;
pub mod app;
pub mod auth;
pub mod body;
pub mod cache;
pub mod config;
pub mod cookies;
pub mod fetch;
#[cfg(feature = "fuzzing")]
pub mod fuzz;
pub mod observability;
pub mod proxy;
pub mod ratelimit;
pub mod routing;
pub mod snapshot;
pub mod tls;
pub mod upstream;
