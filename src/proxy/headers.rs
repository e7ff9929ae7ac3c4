//! Header rules of a forwarding proxy: hop-by-hop removal (RFC 9110 §7.6.1),
//! X-Forwarded-* and Forwarded (RFC 7239) by trust, the client address,
//! request ids and W3C trace context.

use std::fmt::Write as _;
use std::net::IpAddr;

use http::HeaderMap;
use http::header::{CONNECTION, HeaderName, HeaderValue, TE, TRANSFER_ENCODING, UPGRADE};

use crate::snapshot::Settings;

/// `x-request-id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
/// `traceparent`.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// Other X-Forwarded-* headers, removed when the peer is not trusted.
static X_FORWARDED_OTHER: [HeaderName; 3] = [
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-scheme"),
    HeaderName::from_static("x-forwarded-prefix"),
];

/// Hop-by-hop fields that are removed in both directions (RFC 9110 §7.6.1,
/// plus the legacy Keep-Alive / Proxy-Connection).
static HOP_BY_HOP: [HeaderName; 8] = [
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("trailer"),
    TRANSFER_ENCODING,
    HeaderName::from_static("proxy-authorization"),
    HeaderName::from_static("proxy-authenticate"),
    HeaderName::from_static("http2-settings"),
    UPGRADE,
];

/// Removes hop-by-hop headers: every field named in `Connection`, then
/// `Connection` itself and the fixed list. `TE: trailers` is kept (gRPC
/// needs it and it is meaningful end to end); other `TE` values go.
pub fn remove_hop_by_hop(h: &mut HeaderMap) {
    if h.contains_key(CONNECTION) {
        let named: Vec<HeaderName> = h
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for n in named {
            h.remove(n);
        }
        h.remove(CONNECTION);
    }
    for n in &HOP_BY_HOP {
        h.remove(n);
    }
    if h.get(TE)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"trailers"))
    {
        h.remove(TE);
    }
}

/// The client address: the peer when untrusted; otherwise the right-most
/// X-Forwarded-For address that is not a trusted proxy (or the left-most
/// when all are trusted).
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, settings: &Settings) -> IpAddr {
    if !settings.is_trusted(peer) {
        return peer;
    }
    let mut last = None;
    let mut values: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    values.reverse();
    for v in values {
        for item in v.rsplit(',') {
            match parse_xff_item(item) {
                Some(ip) if settings.is_trusted(ip) => last = Some(ip),
                Some(ip) => return ip,
                None => return last.unwrap_or(peer),
            }
        }
    }
    last.unwrap_or(peer)
}

fn parse_xff_item(item: &str) -> Option<IpAddr> {
    let t = item.trim();
    t.parse().ok().or_else(|| {
        // `[v6]:port` or `v4:port`
        let host = t
            .strip_prefix('[')
            .and_then(|r| r.split(']').next())
            .unwrap_or_else(|| t.split(':').next().unwrap_or(t));
        host.parse().ok()
    })
}

/// Rewrites the forwarding headers for a request from `peer` for `host`.
pub fn set_forwarding(h: &mut HeaderMap, peer: IpAddr, host: &str, settings: &Settings) {
    let trusted = settings.is_trusted(peer);
    let mut peer_text = String::with_capacity(40);
    let _ = write!(peer_text, "{peer}");
    // X-Forwarded-For
    let xff = if trusted {
        let prior: Vec<&str> = h
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if prior.is_empty() {
            peer_text.clone()
        } else {
            format!("{}, {peer_text}", prior.join(", "))
        }
    } else {
        peer_text.clone()
    };
    if let Ok(v) = HeaderValue::try_from(xff) {
        h.insert(&X_FORWARDED_FOR, v);
    }
    // X-Forwarded-Proto / -Host: kept from trusted peers, set otherwise.
    if !trusted || !h.contains_key(&X_FORWARDED_PROTO) {
        h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if (!trusted || !h.contains_key(&X_FORWARDED_HOST))
        && let Ok(v) = HeaderValue::try_from(host)
    {
        h.insert(&X_FORWARDED_HOST, v);
    }
    if trusted {
        // Forwarded: appended to, never started.
        if let Some(prior) = h.get(&FORWARDED).and_then(|v| v.to_str().ok()) {
            let node = if peer.is_ipv6() {
                format!("\"[{peer}]\"")
            } else {
                peer_text
            };
            if let Ok(v) = HeaderValue::try_from(format!("{prior}, for={node}")) {
                h.insert(&FORWARDED, v);
            }
        }
    } else {
        h.remove(&FORWARDED);
        for n in &X_FORWARDED_OTHER {
            h.remove(n);
        }
    }
}

/// The client's request id when it is 1–128 visible ASCII characters.
pub fn valid_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    (1..=128).contains(&b.len()) && b.iter().all(|c| (0x21..=0x7e).contains(c))
}

/// A new random request id: 32 lower-case hex digits.
pub fn new_request_id() -> String {
    let mut s = String::with_capacity(32);
    let _ = write!(s, "{:032x}", fastrand::u128(..));
    s
}

/// A W3C trace context, continued or started here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 hex digits.
    pub trace_id: String,
    /// Our span id (16 hex digits), sent upstream as the parent id.
    pub span_id: String,
    /// Trace flags, 2 hex digits.
    pub flags: String,
    /// Whether the incoming traceparent was valid (tracestate is kept then).
    pub continued: bool,
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl TraceContext {
    /// Continues a valid `traceparent` or starts a new trace.
    pub fn from_headers(h: &HeaderMap) -> Self {
        let span_id = format!("{:016x}", fastrand::u64(1..));
        let parsed = h
            .get(&TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(|tp| {
                let parts: Vec<&str> = tp.split('-').collect();
                let [version, trace, parent, flags, rest @ ..] = parts.as_slice() else {
                    return None;
                };
                let ok = version.len() == 2
                    && is_lower_hex(version)
                    && *version != "ff"
                    && (*version != "00" || rest.is_empty())
                    && trace.len() == 32
                    && is_lower_hex(trace)
                    && trace.bytes().any(|b| b != b'0')
                    && parent.len() == 16
                    && is_lower_hex(parent)
                    && parent.bytes().any(|b| b != b'0')
                    && flags.len() == 2
                    && is_lower_hex(flags);
                ok.then(|| ((*trace).to_owned(), (*flags).to_owned()))
            });
        match parsed {
            Some((trace_id, flags)) => TraceContext {
                trace_id,
                span_id,
                flags,
                continued: true,
            },
            None => TraceContext {
                trace_id: format!("{:032x}", fastrand::u128(1..)),
                span_id,
                flags: "01".into(),
                continued: false,
            },
        }
    }

    /// Writes `traceparent` (and drops `tracestate` for a new trace).
    pub fn apply(&self, h: &mut HeaderMap) {
        if let Ok(v) = HeaderValue::try_from(format!(
            "00-{}-{}-{}",
            self.trace_id, self.span_id, self.flags
        )) {
            h.insert(&TRACEPARENT, v);
        }
        if !self.continued {
            h.remove(&TRACESTATE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::normalize::NormalizeOptions;

    fn settings(trusted: &[&str]) -> Settings {
        Settings {
            trusted_proxies: trusted.iter().map(|t| t.parse().unwrap()).collect(),
            max_request_header_bytes: 0,
            max_request_body_bytes: 0,
            max_request_headers: 0,
            header_read_timeout: Default::default(),
            body_read_timeout: Default::default(),
            headers_with_underscores: crate::config::spec::UnderscorePolicy::Drop,
            normalize: NormalizeOptions {
                merge_slashes: true,
                reject_escaped_slashes: false,
            },
            idle_timeout: Default::default(),
            max_concurrent_streams: 1,
            access_log: false,
        }
    }

    #[test]
    fn connection_named_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert("connection", "close, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "5".parse().unwrap());
        h.insert("te", "gzip".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn client_ip_skips_trusted_hops_from_the_right() {
        let s = settings(&["10.0.0.0/8"]);
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "1.1.1.1, 2.2.2.2, 10.0.0.5".parse().unwrap(),
        );
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(
            client_ip(peer, &h, &s),
            "2.2.2.2".parse::<IpAddr>().unwrap()
        );
        let untrusted: IpAddr = "8.8.8.8".parse().unwrap();
        assert_eq!(client_ip(untrusted, &h, &s), untrusted);
    }

    #[test]
    fn untrusted_peers_cannot_claim_addresses() {
        let s = settings(&["10.0.0.0/8"]);
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "1.1.1.1".parse().unwrap());
        h.insert("forwarded", "for=1.1.1.1".parse().unwrap());
        h.insert("x-forwarded-port", "1".parse().unwrap());
        set_forwarding(&mut h, "8.8.8.8".parse().unwrap(), "example.com", &s);
        assert_eq!(h["x-forwarded-for"], "8.8.8.8");
        assert_eq!(h["x-forwarded-host"], "example.com");
        assert!(!h.contains_key("forwarded"));
        assert!(!h.contains_key("x-forwarded-port"));
        let mut h2 = HeaderMap::new();
        h2.insert("x-forwarded-for", "1.1.1.1".parse().unwrap());
        h2.insert("forwarded", "for=1.1.1.1".parse().unwrap());
        set_forwarding(&mut h2, "10.1.1.1".parse().unwrap(), "example.com", &s);
        assert_eq!(h2["x-forwarded-for"], "1.1.1.1, 10.1.1.1");
        assert_eq!(h2["forwarded"], "for=1.1.1.1, for=10.1.1.1");
    }

    #[test]
    fn trace_context_continues_valid_and_restarts_invalid() {
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        let t = TraceContext::from_headers(&h);
        assert!(t.continued);
        assert_eq!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(t.span_id, "00f067aa0ba902b7");
        h.insert(
            "traceparent",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        assert!(!TraceContext::from_headers(&h).continued);
        h.insert(
            "traceparent",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        assert!(!TraceContext::from_headers(&h).continued);
    }

    #[test]
    fn request_ids_are_visible_ascii_up_to_128() {
        assert!(valid_request_id(&HeaderValue::from_static("abc-123")));
        assert!(!valid_request_id(&HeaderValue::from_static("")));
        assert!(!valid_request_id(&HeaderValue::from_static("has space")));
        assert!(!valid_request_id(
            &HeaderValue::try_from("x".repeat(129)).unwrap()
        ));
        assert_eq!(new_request_id().len(), 32);
    }
}
