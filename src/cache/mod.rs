//! The response cache (issue 6, not built yet). What exists today is the
//! RFC 9111 policy, as pure functions with unit tests: `Cache-Control`
//! parsing, whether a response may be stored by a shared cache and for how
//! long, and what a request asks of the cache. Nothing in the request path
//! uses it yet, and no config key turns a cache on.

pub mod policy;
