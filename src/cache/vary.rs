//! `Vary` (RFC 9111 §4.1): the request headers a stored response depends
//! on, and the variant key that tells its variants apart.

use http::{HeaderMap, HeaderName};

/// The variant key: the primary key and each varying header's normalized
/// value (whitespace around commas and at the ends removed, so
/// `gzip,br` and `gzip, br` are one variant).
pub fn variant_key(primary: &str, names: &[HeaderName], request: &HeaderMap) -> String {
    let mut k = String::from(primary);
    for n in names {
        k.push('\u{1e}');
        let values: Vec<String> = request
            .get_all(n)
            .iter()
            .map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .split(',')
                    .map(str::trim)
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect();
        k.push_str(&values.join(","));
    }
    k
}

/// The header names a `Vary` lists (lower case, sorted, unique); `None`
/// for `Vary: *`.
pub fn vary_names(response: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    for v in response.get_all(http::header::VARY) {
        for n in v
            .to_str()
            .ok()?
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
        {
            if n == "*" {
                return None;
            }
            names.push(HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes()).ok()?);
        }
    }
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    Some(names)
}
