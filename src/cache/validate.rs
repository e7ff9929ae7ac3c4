//! Validation (RFC 9110 §13, RFC 9111 §4.3): conditional requests a stored
//! entry answers itself with 304, the header update a 304 from the origin
//! brings to a stored entry, and the URLs an unsafe request invalidates.
//! Pure functions over header maps; the request-path side is
//! `crate::proxy::cache`.

use std::time::Duration;

use http::{HeaderMap, HeaderName, StatusCode, Uri};

use super::store::StoredResponse;

/// Request headers that make a request conditional.
static CONDITIONAL_HEADERS: [HeaderName; 5] = [
    http::header::IF_NONE_MATCH,
    http::header::IF_MODIFIED_SINCE,
    http::header::IF_MATCH,
    http::header::IF_UNMODIFIED_SINCE,
    http::header::IF_RANGE,
];

/// Stored header fields a 304 does not replace (RFC 9111 §3.2): they
/// describe the stored body, not the response's metadata.
static KEPT_ON_UPDATE: [HeaderName; 4] = [
    http::header::CONTENT_LENGTH,
    http::header::CONTENT_ENCODING,
    http::header::CONTENT_RANGE,
    http::header::TRANSFER_ENCODING,
];

/// True when the request asks a conditional question of its own.
pub fn is_conditional(request: &HeaderMap) -> bool {
    CONDITIONAL_HEADERS.iter().any(|h| request.contains_key(h))
}

/// True when a conditional request is satisfied by the stored entry:
/// `If-None-Match` against its `ETag` (weak comparison), or, without
/// `If-None-Match`, `If-Modified-Since` not before its `Last-Modified`.
pub fn not_modified(request: &HeaderMap, e: &StoredResponse) -> bool {
    e.status == StatusCode::OK && satisfied(request, &e.headers)
}

fn satisfied(request: &HeaderMap, stored: &HeaderMap) -> bool {
    let weak = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    if let Some(inm) = request
        .get(http::header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    {
        let Some(etag) = stored.get(http::header::ETAG).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        return inm.trim() == "*" || inm.split(',').any(|t| weak(t) == weak(etag));
    }
    let date = |h: &HeaderMap, name| {
        h.get(name)
            .and_then(|v: &http::HeaderValue| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok())
    };
    let since = date(request, http::header::IF_MODIFIED_SINCE);
    let modified = date(stored, http::header::LAST_MODIFIED);
    matches!((since, modified), (Some(s), Some(m)) if m <= s)
}

/// The stored headers after a 304's (RFC 9111 §3.2): each field the 304
/// carries replaces the stored one, except those describing the stored
/// body and `Age`.
pub fn updated_headers(stored: &HeaderMap, update: &HeaderMap) -> HeaderMap {
    let mut headers = stored.clone();
    for name in update.keys() {
        if KEPT_ON_UPDATE.contains(name) || *name == http::header::AGE {
            continue;
        }
        headers.remove(name);
        for v in update.get_all(name) {
            headers.append(name.clone(), v.clone());
        }
    }
    headers
}

/// The `Age` a response arrived with.
pub fn age_of(h: &HeaderMap) -> Duration {
    h.get(http::header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_secs)
}

/// The path (and query) of `target` when it is on `host` (or relative):
/// a `Location` or `Content-Location` an unsafe request also invalidates
/// (RFC 9111 §4.4 allows only the same origin).
pub fn same_host_path(target: &str, host: &str) -> Option<String> {
    if target.starts_with('/') {
        return Some(target.to_owned());
    }
    let uri: Uri = target.parse().ok()?;
    let h = uri.host()?;
    h.eq_ignore_ascii_case(host)
        .then(|| uri.path_and_query().map_or("/", |p| p.as_str()).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn if_none_match_compares_weakly_and_wins_over_if_modified_since() {
        let stored = map(&[
            ("etag", "\"v1\""),
            ("last-modified", "Sun, 06 Dec 2026 10:00:00 GMT"),
        ]);
        assert!(satisfied(&map(&[("if-none-match", "W/\"v1\"")]), &stored));
        assert!(satisfied(
            &map(&[("if-none-match", "\"v0\", \"v1\"")]),
            &stored
        ));
        assert!(satisfied(&map(&[("if-none-match", "*")]), &stored));
        assert!(!satisfied(
            &map(&[
                ("if-none-match", "\"v2\""),
                ("if-modified-since", "Sun, 06 Dec 2026 11:00:00 GMT")
            ]),
            &stored
        ));
    }

    #[test]
    fn if_modified_since_holds_when_not_modified_after_it() {
        let stored = map(&[("last-modified", "Sun, 06 Dec 2026 10:00:00 GMT")]);
        let ims = |d: &str| map(&[("if-modified-since", d)]);
        assert!(satisfied(&ims("Sun, 06 Dec 2026 10:00:00 GMT"), &stored));
        assert!(!satisfied(&ims("Sun, 06 Dec 2026 09:59:59 GMT"), &stored));
        assert!(!satisfied(&ims("not a date"), &stored));
        assert!(!satisfied(&map(&[]), &stored));
    }

    #[test]
    fn a_304_replaces_metadata_but_not_what_describes_the_body() {
        let stored = map(&[
            ("content-length", "5"),
            ("cache-control", "max-age=1"),
            ("etag", "\"v1\""),
            ("x-kept", "a"),
        ]);
        let update = map(&[
            ("content-length", "0"),
            ("cache-control", "max-age=60"),
            ("age", "7"),
        ]);
        let h = updated_headers(&stored, &update);
        assert_eq!(h["content-length"], "5");
        assert_eq!(h["cache-control"], "max-age=60");
        assert_eq!(h["etag"], "\"v1\"");
        assert_eq!(h["x-kept"], "a");
        assert!(!h.contains_key("age"));
    }

    #[test]
    fn only_same_host_targets_are_invalidated() {
        assert_eq!(same_host_path("/a?b", "x.test").as_deref(), Some("/a?b"));
        assert_eq!(
            same_host_path("https://X.test/p", "x.test").as_deref(),
            Some("/p")
        );
        assert_eq!(same_host_path("https://other.test/p", "x.test"), None);
        assert_eq!(age_of(&map(&[("age", " 12 ")])), Duration::from_secs(12));
        assert_eq!(age_of(&map(&[("age", "-1")])), Duration::ZERO);
    }
}
