//! Timing-sensitive tests, in a test binary of their own.
//!
//! `cargo test` runs test binaries one after another, so nothing else of
//! the suite loads the machine while these measure; `SERIAL` runs them one
//! at a time within this binary too. Each compares what the gateway did
//! with bounds computed from the times the requests were really sent and
//! answered, not from the schedule they were meant to keep, so a slow
//! machine widens the window measured rather than failing the test.

#![expect(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed step is a failed test; the support kit is shared by the test modules"
)]

#[path = "../it/support/mod.rs"]
mod support;

mod ratelimit;

/// One timing test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
