//! The request path, in the order a request meets it: the listeners and
//! connections (`server`, with each connection's state and watchdog in
//! `conn`), request admission (`admit`), the stage list (`pipeline`), the
//! guard stage's IP lists, CORS preflights and limits (`guard`), the
//! per-request context and finish stage (`ctx`), the request's cache
//! object (`cache`), the upstream request and its response (`forward`),
//! forwarding header rules (`headers`), the response body that carries the
//! finish stage (`body`), and the error → response map (`error`).

pub(crate) mod admit;
pub(crate) mod body;
pub(crate) mod cache;
pub(crate) mod conn;
pub(crate) mod ctx;
pub(crate) mod error;
pub(crate) mod forward;
pub(crate) mod guard;
pub(crate) mod headers;
pub(crate) mod pipeline;
pub(crate) mod server;
