//! The request path: accept (server), the pipeline stages (pipeline), the
//! per-request context (ctx), forwarding header rules (headers), the
//! response body with its finish stage (body), the cache stages (cache),
//! and the error → response map (error).

pub(crate) mod admit;
pub(crate) mod body;
pub(crate) mod cache;
pub(crate) mod conn;
pub(crate) mod ctx;
pub(crate) mod error;
pub(crate) mod forward;
pub(crate) mod headers;
pub(crate) mod pipeline;
pub(crate) mod server;
