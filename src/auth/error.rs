//! Why authentication refused a request (or could not run).

use super::AuthOutcome;

/// Why a request was not let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No token where one is required.
    Missing,
    /// A token was given and is not acceptable; the text is safe to send
    /// back (it never contains the token).
    Invalid(&'static str),
    /// The token's `exp` (plus leeway) has passed.
    Expired,
    /// The token is valid but lacks a required claim value.
    Forbidden,
    /// The provider has no keys yet (remote JWKS never fetched).
    Unavailable,
}

impl Failure {
    /// The `result` label of `tollgate_auth_requests_total`.
    pub fn result(self) -> AuthOutcome {
        match self {
            Failure::Missing => AuthOutcome::Missing,
            Failure::Invalid(_) => AuthOutcome::Invalid,
            Failure::Expired => AuthOutcome::Expired,
            Failure::Forbidden => AuthOutcome::Forbidden,
            Failure::Unavailable => AuthOutcome::Unavailable,
        }
    }
}
