//! Why an HTTP/1.1 exchange failed.

use std::io;

use crate::body::BodyError;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    /// Reading the downstream request body failed (413, 408, 400).
    #[error("{0}")]
    Body(#[from] BodyError),
    /// The upstream sent something that is not a valid HTTP/1.x response.
    #[error("invalid response: {0}")]
    Invalid(&'static str),
    /// The connection failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}
