//! Stage 1, `admit`: what a request must satisfy before it is routed.
//!
//! hyper has already refused what its parser refuses (bad chunk sizes,
//! obs-fold, control characters, versions other than 1.0/1.1, conflicting
//! Content-Length, oversized heads). This stage refuses the rest of what
//! RFC 9110 and RFC 9112 say a proxy must not forward.

use http::header::{CONTENT_LENGTH, HOST, HeaderValue, TRANSFER_ENCODING};
use http::{HeaderMap, Method, Request, Version};

use super::error::ProxyError;
use crate::config::spec::UnderscorePolicy;
use crate::snapshot::ServerSettings;

/// Checks `req` and returns the host it is for: its Host header, or the
/// authority of an absolute-form target (`None` only for HTTP/1.0 without
/// either).
pub(crate) fn admit<B>(
    req: &mut Request<B>,
    settings: &ServerSettings,
) -> Result<Option<HeaderValue>, ProxyError> {
    head_size(req, settings)?;
    let (underscores, max_body) = (
        settings.headers_with_underscores,
        settings.max_request_body_bytes,
    );
    if req.method() == Method::CONNECT {
        return Err(ProxyError::BadRequest("CONNECT is not supported"));
    }
    if req.uri() == "*" && req.method() != Method::OPTIONS {
        return Err(ProxyError::BadRequest(
            "asterisk-form is only allowed with OPTIONS",
        ));
    }
    if req.version() <= Version::HTTP_11 {
        framing(req.headers())?;
    }
    // A raw backslash is no path character (RFC 3986 §3.3), and some
    // origins read it as `/`: the gateway and the origin would see two
    // different paths.
    if req
        .uri()
        .path_and_query()
        .is_some_and(|pq| pq.as_str().as_bytes().contains(&b'\\'))
    {
        return Err(ProxyError::BadRequest("a backslash in the request target"));
    }
    let host = host(req)?;
    if underscores != UnderscorePolicy::Allow
        && req.headers().keys().any(|k| k.as_str().contains('_'))
    {
        if underscores == UnderscorePolicy::Reject {
            return Err(ProxyError::BadRequest(
                "header names with underscores are not allowed",
            ));
        }
        let names: Vec<_> = req
            .headers()
            .keys()
            .filter(|k| k.as_str().contains('_'))
            .cloned()
            .collect();
        for n in names {
            req.headers_mut().remove(n);
        }
    }
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body) {
        return Err(ProxyError::PayloadTooLarge(max_body));
    }
    // Forwarded in canonical form: `010` goes upstream as `10`, so no hop
    // can read the digits another way. (hyper has already refused a value
    // that is not all digits, and collapsed repeated identical lines into
    // one, as RFC 9110 §8.6 permits.)
    if let Some(n) = declared
        && req
            .headers()
            .get(CONTENT_LENGTH)
            .is_some_and(|v| v.len() > 1 && v.as_bytes()[0] == b'0')
    {
        req.headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(n));
    }
    Ok(host)
}

/// The configured head limits, answered with a JSON 431. hyper's parser is
/// given twice these limits as a hard ceiling (it answers a bare 431 past
/// them), so an ordinary oversized head gets the gateway's error body.
fn head_size<B>(req: &Request<B>, s: &ServerSettings) -> Result<(), ProxyError> {
    let h = req.headers();
    if h.len() > s.max_request_headers {
        return Err(ProxyError::HeadersTooLarge);
    }
    // Request line + `name: value\r\n` per field, as sent on HTTP/1.1.
    let uri = req.uri();
    let target = uri.path_and_query().map_or(1, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len() + 8);
    let line = req.method().as_str().len() + target + 12;
    let fields: usize = h.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    if line + fields > s.max_request_header_bytes {
        return Err(ProxyError::HeadersTooLarge);
    }
    Ok(())
}

/// One valid Host, agreeing with an absolute-form target's authority.
fn host<B>(req: &Request<B>) -> Result<Option<HeaderValue>, ProxyError> {
    let mut hosts = req.headers().get_all(HOST).iter();
    let header = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::BadRequest("repeated Host header"));
    }
    if let Some(h) = header {
        valid_authority(h.as_bytes())?;
    }
    match (req.uri().authority(), header) {
        (Some(a), Some(h)) if !a.as_str().as_bytes().eq_ignore_ascii_case(h.as_bytes()) => Err(
            ProxyError::BadRequest("request target authority differs from Host"),
        ),
        (Some(a), None) => {
            valid_authority(a.as_str().as_bytes())?;
            HeaderValue::from_str(a.as_str())
                .map(Some)
                .map_err(|_| ProxyError::BadRequest("invalid request target authority"))
        }
        (_, Some(h)) => Ok(Some(h.clone())),
        (None, None) if req.version() == Version::HTTP_10 => Ok(None),
        (None, None) => Err(ProxyError::BadRequest("missing Host header")),
    }
}

/// RFC 9112 §6.3: a request with both Transfer-Encoding and Content-Length,
/// or with a transfer coding other than a single final `chunked`, has
/// ambiguous framing; it is refused (and the connection closed) rather than
/// forwarded, since another hop might read it differently. (hyper already
/// removes Content-Length when both arrive; this is the second line.)
fn framing(h: &HeaderMap) -> Result<(), ProxyError> {
    let mut te = h.get_all(TRANSFER_ENCODING).iter();
    let Some(first) = te.next() else {
        return Ok(());
    };
    if h.contains_key(CONTENT_LENGTH) {
        return Err(ProxyError::BadRequest(
            "both Transfer-Encoding and Content-Length",
        ));
    }
    if te.next().is_some() || !first.as_bytes().eq_ignore_ascii_case(b"chunked") {
        return Err(ProxyError::BadRequest(
            "unsupported Transfer-Encoding (only a single chunked)",
        ));
    }
    Ok(())
}

/// host[:port] with no user info (RFC 9110 §7.2, §4.2.4; RFC 3986 §3.2.2):
/// a reg-name of unreserved, sub-delim and pct-encoded characters, or an
/// IP literal in brackets, then an optional all-digit port.
fn valid_authority(v: &[u8]) -> Result<(), ProxyError> {
    let bad = || ProxyError::BadRequest("invalid Host header");
    let (host, port) = if v.first() == Some(&b'[') {
        let end = v.iter().position(|b| *b == b']').ok_or_else(bad)?;
        let literal = &v[1..end];
        if literal.is_empty()
            || !literal
                .iter()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
        {
            return Err(bad());
        }
        (&v[..=end], &v[end + 1..])
    } else {
        match v.iter().position(|b| *b == b':') {
            Some(i) => (&v[..i], &v[i..]),
            None => (v, &v[v.len()..]),
        }
    };
    let reg_name_ok = host.first() == Some(&b'[')
        || (!host.is_empty()
            && host
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(b)));
    let port_ok = port.is_empty()
        || (port[0] == b':'
            && (2..=6).contains(&port.len())
            && port[1..].iter().all(u8::is_ascii_digit));
    if reg_name_ok && port_ok {
        Ok(())
    } else {
        Err(bad())
    }
}

/// Lower-case host without port, for routing (borrowed when already so).
pub(crate) fn host_for_routing(host: &str) -> std::borrow::Cow<'_, str> {
    let bare = if host.starts_with('[') {
        host.split_inclusive(']').next().unwrap_or(host)
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    if bare.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(bare.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(bare)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_host_drops_port_and_case() {
        assert_eq!(host_for_routing("API.example.com:8080"), "api.example.com");
        assert_eq!(host_for_routing("[::1]:8080"), "[::1]");
        assert!(matches!(
            host_for_routing("a.b"),
            std::borrow::Cow::Borrowed("a.b")
        ));
    }

    #[test]
    fn authorities_are_checked_without_a_parser() {
        for ok in [
            "a",
            "api.example.com",
            "a:8080",
            "[::1]",
            "[::1]:80",
            "10.0.0.1:1",
            "xn--bcher-kva.example",
        ] {
            assert!(valid_authority(ok.as_bytes()).is_ok(), "{ok}");
        }
        for bad in [
            "", "user@a", "a b", "a:80x", "a:", "[::1", "[zz]", "a/b", "a:123456", "a\\b",
        ] {
            assert!(valid_authority(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn framing_allows_only_a_single_chunked() {
        let mut h = HeaderMap::new();
        assert!(framing(&h).is_ok());
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        assert!(framing(&h).is_ok());
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("gzip, chunked"));
        assert!(framing(&h).is_err());
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("3"));
        assert!(framing(&h).is_err());
    }
}
