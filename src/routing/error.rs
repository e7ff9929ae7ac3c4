//! Why a request path was refused.

/// Why a path was refused (each is a 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// `..` segments climb above the root.
    #[error("path climbs above the root")]
    ClimbsAboveRoot,
    /// A `%` not followed by two hex digits.
    #[error("malformed percent-encoding in path")]
    BadEscape,
    /// `%2F` or `%5C` while `escaped_slashes: reject`.
    #[error("encoded slash in path")]
    EscapedSlash,
    /// The path does not start with `/`.
    #[error("path must start with /")]
    NotAbsolute,
}
