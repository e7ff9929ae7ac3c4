//! Reading request cookies (RFC 6265 `Cookie` headers): the name / value
//! pairs across every `Cookie` field, for the cache key, consistent
//! hashing and the cache's storage rules.

use http::HeaderMap;
use http::header::COOKIE;

/// Every `name=value` pair the request sends, in order, trimmed. Fields
/// that are not UTF-8 and pieces without `=` are skipped.
pub(crate) fn pairs(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('=').map(|(k, v)| (k.trim(), v.trim())))
}

/// The first value of cookie `name`.
pub(crate) fn get<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    pairs(headers).find(|(k, _)| *k == name).map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn pairs_span_fields_and_skip_junk() {
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("a=1; b = 2;junk; ;c="));
        h.append(COOKIE, HeaderValue::from_static("a=3"));
        let all: Vec<_> = pairs(&h).collect();
        assert_eq!(all, [("a", "1"), ("b", "2"), ("c", ""), ("a", "3")]);
        assert_eq!(get(&h, "a"), Some("1"));
        assert_eq!(get(&h, "b"), Some("2"));
        assert_eq!(get(&h, "d"), None);
    }
}
