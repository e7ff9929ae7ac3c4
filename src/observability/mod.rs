//! Metrics, the access log and traces (stage 10, `finish`), and the
//! redaction of secrets in what the gateway writes.

pub mod access_log;
pub mod metrics;
#[cfg(target_os = "linux")]
mod process;
pub mod redact;
pub mod trace;
