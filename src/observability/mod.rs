//! Metrics and the access log (stage 10, `finish`).

pub mod access_log;
pub mod metrics;
