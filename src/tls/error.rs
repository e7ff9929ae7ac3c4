//! Why TLS settings are unusable.

/// Why an upstream's TLS settings are unusable.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct UpstreamTlsError {
    /// The field under `tls` at fault (`ca_file`, `client_cert`).
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

impl UpstreamTlsError {
    pub(super) fn new(field: &'static str, message: String) -> Self {
        Self { field, message }
    }
}
