//! The request path: accept (server), the pipeline stages (pipeline), the
//! per-request context (ctx), forwarding header rules (headers), the
//! response body with its finish stage (body), the cache stages (cache),
//! and the error → response map (error).

pub mod admit;
pub mod body;
pub mod cache;
pub mod conn;
pub mod ctx;
pub mod error;
pub mod forward;
pub mod headers;
pub mod pipeline;
pub mod server;
