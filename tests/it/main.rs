//! Integration tests: the real gateway, in-process, over real sockets on
//! 127.0.0.1, against real HTTP upstreams.

#![expect(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed step is a failed test; the support kit is shared by the test modules"
)]

mod accounting;
mod admin;
mod apikeys;
mod auth;
mod binary;
mod cache;
mod cli;
mod compression;
mod cors;
mod deploy;
mod edge;
mod errors;
mod fleet;
mod grpc;
mod hostile;
mod ip;
mod mirror;
mod proxying;
mod ratelimit;
mod reload;
mod resilience;
mod routing;
mod support;
mod tls;
mod traces;
mod ui;
mod upstream_h1;
