//! Why authentication refused a request (or could not run).

use super::AuthOutcome;

/// Why a request was not let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
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

impl AuthFailure {
    /// The `result` label of `tollgate_auth_requests_total`.
    pub fn result(self) -> AuthOutcome {
        match self {
            AuthFailure::Missing => AuthOutcome::Missing,
            AuthFailure::Invalid(_) => AuthOutcome::Invalid,
            AuthFailure::Expired => AuthOutcome::Expired,
            AuthFailure::Forbidden => AuthOutcome::Forbidden,
            AuthFailure::Unavailable => AuthOutcome::Unavailable,
        }
    }
}
