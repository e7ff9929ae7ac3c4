//! Path normalization (RFC 3986 §6.2.2): what routes match on and what goes
//! upstream.
//!
//! Percent-encoded unreserved characters are decoded, other escapes get
//! upper-case hex, `.` and `..` segments are resolved (§5.2.4), and runs of
//! slashes may be merged. A path that climbs above `/` is an error (400),
//! never silently clamped: a backend that resolves `..` itself would see a
//! different path than the one we routed.

use std::borrow::Cow;

pub use super::error::PathError;

/// How to normalize.
#[derive(Debug, Clone, Copy)]
pub struct NormalizeOptions {
    /// Collapse `//` into `/`.
    pub merge_slashes: bool,
    /// Refuse `%2F` and `%5C`.
    pub reject_escaped_slashes: bool,
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Normalizes an origin-form path (no query). Borrows when nothing changes.
pub fn normalize_path(raw: &str, opts: NormalizeOptions) -> Result<Cow<'_, str>, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let needs_work =
        raw.contains('%') || raw.contains("/.") || (opts.merge_slashes && raw.contains("//"));
    if !needs_work {
        return Ok(Cow::Borrowed(raw));
    }
    // Pass 1: escapes.
    let bytes = raw.as_bytes();
    let mut decoded = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(PathError::BadEscape);
            };
            let v = hi * 16 + lo;
            if is_unreserved(v) {
                decoded.push(v as char);
            } else {
                if opts.reject_escaped_slashes && (v == b'/' || v == b'\\') {
                    return Err(PathError::EscapedSlash);
                }
                decoded.push('%');
                decoded.push(char::from(b"0123456789ABCDEF"[usize::from(hi)]));
                decoded.push(char::from(b"0123456789ABCDEF"[usize::from(lo)]));
            }
            i += 3;
        } else {
            // The URI parser only lets ASCII through, so a byte is a char.
            decoded.push(b as char);
            i += 1;
        }
    }
    // Pass 2: segments.
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded[1..].split('/').collect();
    let last = segments.len() - 1;
    let mut trailing_slash = false;
    for (n, seg) in segments.iter().enumerate() {
        let is_last = n == last;
        match *seg {
            "." => trailing_slash = is_last,
            ".." => {
                if out.pop().is_none() {
                    return Err(PathError::ClimbsAboveRoot);
                }
                trailing_slash = is_last;
            }
            "" if opts.merge_slashes || is_last => trailing_slash = is_last,
            s => {
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut path = String::with_capacity(decoded.len());
    for seg in &out {
        path.push('/');
        path.push_str(seg);
    }
    if trailing_slash || path.is_empty() {
        path.push('/');
    }
    Ok(Cow::Owned(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTS: NormalizeOptions = NormalizeOptions {
        merge_slashes: true,
        reject_escaped_slashes: false,
    };

    fn n(p: &str) -> Result<String, PathError> {
        normalize_path(p, OPTS).map(Cow::into_owned)
    }

    #[test]
    fn plain_paths_are_borrowed_unchanged() {
        assert!(matches!(
            normalize_path("/api/users/7", OPTS),
            Ok(Cow::Borrowed("/api/users/7"))
        ));
        assert_eq!(n("/"), Ok("/".into()));
    }

    #[test]
    fn dot_segments_resolve() {
        assert_eq!(n("/a/./b/../c"), Ok("/a/c".into()));
        assert_eq!(n("/a/b/.."), Ok("/a/".into()));
        assert_eq!(n("/a/."), Ok("/a/".into()));
        assert_eq!(n("/.well-known/x"), Ok("/.well-known/x".into()));
    }

    #[test]
    fn climbing_above_root_is_refused() {
        assert_eq!(n("/.."), Err(PathError::ClimbsAboveRoot));
        assert_eq!(n("/a/../../etc/passwd"), Err(PathError::ClimbsAboveRoot));
        assert_eq!(n("/%2e%2e/etc"), Err(PathError::ClimbsAboveRoot));
    }

    #[test]
    fn unreserved_escapes_decode_and_others_uppercase() {
        assert_eq!(n("/%61pi/%7euser"), Ok("/api/~user".into()));
        assert_eq!(n("/a%2fb"), Ok("/a%2Fb".into()));
        assert_eq!(n("/a%20b"), Ok("/a%20b".into()));
        assert_eq!(n("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(n("/a%2"), Err(PathError::BadEscape));
    }

    #[test]
    fn slashes_merge_unless_disabled() {
        assert_eq!(n("//a///b/"), Ok("/a/b/".into()));
        let keep = NormalizeOptions {
            merge_slashes: false,
            ..OPTS
        };
        assert_eq!(
            normalize_path("/a//b", keep).map(Cow::into_owned),
            Ok("/a//b".into())
        );
    }

    #[test]
    fn escaped_slashes_can_be_rejected() {
        let strict = NormalizeOptions {
            reject_escaped_slashes: true,
            ..OPTS
        };
        assert_eq!(
            normalize_path("/a%2Fb", strict),
            Err(PathError::EscapedSlash)
        );
        assert_eq!(
            normalize_path("/a%5cb", strict),
            Err(PathError::EscapedSlash)
        );
    }

    #[test]
    fn relative_paths_are_refused() {
        assert_eq!(n("a/b"), Err(PathError::NotAbsolute));
    }
}
