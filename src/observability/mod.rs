//! Metrics and the access log (stage 10, `finish`), and the redaction of
//! secrets in what the gateway writes.

pub mod access_log;
pub mod metrics;
#[cfg(target_os = "linux")]
mod process;
pub mod redact;
