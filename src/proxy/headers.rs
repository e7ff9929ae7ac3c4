//! Header rules of a forwarding proxy: hop-by-hop removal (RFC 9110 §7.6.1),
//! X-Forwarded-* and Forwarded (RFC 7239) by trust, the client address,
//! request ids and W3C trace context.

use std::net::IpAddr;

use http::HeaderMap;
use http::header::{CONNECTION, HeaderName, HeaderValue, TE, TRANSFER_ENCODING, UPGRADE};

use crate::snapshot::ServerSettings;

/// `x-request-id`.
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
/// `x-real-ip`: the client address the gateway determined (NGINX's
/// `$remote_addr` convention, which Traefik follows too).
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
/// Other headers that name the client or the original request, removed when
/// the peer is not trusted: some origins read them as the client address
/// (`True-Client-IP`, `CF-Connecting-IP`, `X-Client-IP`) or the scheme.
static X_FORWARDED_OTHER: [HeaderName; 6] = [
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-scheme"),
    HeaderName::from_static("x-forwarded-prefix"),
    HeaderName::from_static("true-client-ip"),
    HeaderName::from_static("cf-connecting-ip"),
    HeaderName::from_static("x-client-ip"),
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

/// Index of a hop-by-hop field in `HOP_BY_HOP`, `CONNECTION` or `TE`.
fn hop_index(name: &HeaderName) -> Option<usize> {
    // A string match compiles to a length switch and one compare, far
    // cheaper than comparing against each name in turn.
    Some(match name.as_str() {
        "keep-alive" => 0,
        "proxy-connection" => 1,
        "trailer" => 2,
        "transfer-encoding" => 3,
        "proxy-authorization" => 4,
        "proxy-authenticate" => 5,
        "http2-settings" => 6,
        "upgrade" => 7,
        "connection" => 8,
        "te" => 9,
        _ => return None,
    })
}

/// `Connection` tokens that name no field to remove beyond the fixed list.
fn is_plain_connection_token(t: &str) -> bool {
    ["close", "keep-alive", "upgrade", "te", "http2-settings"]
        .iter()
        .any(|k| t.eq_ignore_ascii_case(k))
}

/// Removes hop-by-hop headers: every field named in `Connection` (but
/// `Host`, which is never hop-by-hop and which the gateway forwards), then
/// `Connection` itself and the fixed list. `TE: trailers` is kept (gRPC
/// needs it and it is meaningful end to end); other `TE` values go.
///
/// One pass over the names finds which are present; only those are
/// removed (most messages carry only `Connection: keep-alive`, if anything).
pub(crate) fn remove_hop_by_hop(h: &mut HeaderMap) {
    let mut present = 0u32;
    for k in h.keys() {
        if let Some(i) = hop_index(k) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    let connection_bit = 1 << HOP_BY_HOP.len();
    if present & connection_bit != 0 {
        let mut named: Vec<HeaderName> = Vec::new();
        for v in h.get_all(CONNECTION).iter().filter_map(|v| v.to_str().ok()) {
            for t in v.split(',').map(str::trim).filter(|t| {
                !t.is_empty() && !is_plain_connection_token(t) && !t.eq_ignore_ascii_case("host")
            }) {
                if let Ok(n) = HeaderName::from_bytes(t.as_bytes()) {
                    named.push(n);
                }
            }
        }
        for n in named {
            h.remove(n);
        }
        h.remove(CONNECTION);
    }
    for (i, n) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            h.remove(n);
        }
    }
    let te_bit = 1 << (HOP_BY_HOP.len() + 1);
    if present & te_bit != 0
        && h.get(TE)
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"trailers"))
    {
        h.remove(TE);
    }
}

/// Joins several `cookie` fields into one, separated by `; ` (RFC 9113
/// §8.2.3): an h2 client may split its cookies into many fields, which an
/// HTTP/1.1 origin must receive as a single `Cookie` header.
pub(crate) fn join_cookies(h: &mut HeaderMap) {
    let mut values = h.get_all(http::header::COOKIE).iter();
    if values.next().is_none() || values.next().is_none() {
        return;
    }
    let mut joined = Vec::new();
    for v in h.get_all(http::header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        h.insert(http::header::COOKIE, v);
    }
}

/// The client address: the peer when untrusted; otherwise the right-most
/// X-Forwarded-For address that is not a trusted proxy (or the left-most
/// when all are trusted).
pub(crate) fn client_ip(peer: IpAddr, headers: &HeaderMap, settings: &ServerSettings) -> IpAddr {
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

/// Rewrites the forwarding headers for a request from `peer` (`peer_value`
/// is its text, formatted once per connection) for `host`; `client` is
/// the client address determined from trusted hops (`X-Real-IP`).
pub(crate) fn set_forwarding(
    h: &mut HeaderMap,
    peer: IpAddr,
    peer_value: &HeaderValue,
    client: IpAddr,
    host: Option<&HeaderValue>,
    settings: &ServerSettings,
    https: bool,
) {
    let real_ip = if client == peer {
        Some(peer_value.clone())
    } else {
        HeaderValue::try_from(client.to_string()).ok()
    };
    if let Some(v) = real_ip {
        h.insert(&X_REAL_IP, v);
    }
    let trusted = !settings.trusted_proxies.is_empty() && settings.is_trusted(peer);
    let xff = if trusted && h.contains_key(&X_FORWARDED_FOR) {
        let prior: Vec<&str> = h
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        HeaderValue::try_from(format!(
            "{}, {}",
            prior.join(", "),
            String::from_utf8_lossy(peer_value.as_bytes())
        ))
        .ok()
    } else {
        Some(peer_value.clone())
    };
    if let Some(v) = xff {
        h.insert(&X_FORWARDED_FOR, v);
    }
    // X-Forwarded-Proto / -Host: kept from trusted peers, set otherwise.
    if !trusted || !h.contains_key(&X_FORWARDED_PROTO) {
        let proto = if https { "https" } else { "http" };
        h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if let Some(host) = host
        && (!trusted || !h.contains_key(&X_FORWARDED_HOST))
    {
        h.insert(&X_FORWARDED_HOST, host.clone());
    }
    if trusted {
        // Forwarded: appended to, never started.
        if let Some(prior) = h.get(&FORWARDED).and_then(|v| v.to_str().ok()) {
            let node = if peer.is_ipv6() {
                format!("\"[{peer}]\"")
            } else {
                peer.to_string()
            };
            if let Ok(v) = HeaderValue::try_from(format!("{prior}, for={node}")) {
                h.insert(&FORWARDED, v);
            }
        }
    } else if h
        .keys()
        .any(|k| k == FORWARDED || X_FORWARDED_OTHER.contains(k))
    {
        h.remove(&FORWARDED);
        for n in &X_FORWARDED_OTHER {
            h.remove(n);
        }
    }
}

/// The client's request id when it is 1–128 visible ASCII characters.
pub(crate) fn valid_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    (1..=128).contains(&b.len()) && b.iter().all(|c| (0x21..=0x7e).contains(c))
}

/// A new random request id: 32 lower-case hex digits.
pub(crate) fn new_request_id() -> HeaderValue {
    let mut buf = [0u8; 32];
    crate::hash::hex_into(fastrand::u128(..), &mut buf);
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::normalize::NormalizeOptions;

    fn settings(trusted: &[&str]) -> ServerSettings {
        ServerSettings {
            ip: None,
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
            send_timeout: Default::default(),
            max_concurrent_streams: 1,
            access_log: false,
            access_log_query: None,
            max_inflight_requests: 1000,
            tls_handshake_timeout: Default::default(),
            tunnel_idle_timeout: Default::default(),
            redirect_https: false,
            hsts: None,
        }
    }

    #[test]
    fn hop_indexes_follow_the_fixed_list() {
        for (i, n) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_index(n), Some(i), "{n}");
        }
        assert_eq!(hop_index(&CONNECTION), Some(HOP_BY_HOP.len()));
        assert_eq!(hop_index(&TE), Some(HOP_BY_HOP.len() + 1));
        assert_eq!(hop_index(&HeaderName::from_static("x-other")), None);
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
        // Host is never hop-by-hop, whatever Connection says.
        let mut h = HeaderMap::new();
        h.insert("connection", "Host".parse().unwrap());
        h.insert("host", "a".parse().unwrap());
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn several_cookie_fields_become_one() {
        let mut h = HeaderMap::new();
        h.append("cookie", "a=1".parse().unwrap());
        join_cookies(&mut h);
        assert_eq!(h["cookie"], "a=1");
        h.append("cookie", "b=2".parse().unwrap());
        h.append("cookie", "c=3".parse().unwrap());
        join_cookies(&mut h);
        assert_eq!(h.get_all("cookie").iter().count(), 1);
        assert_eq!(h["cookie"], "a=1; b=2; c=3");
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
        for n in [
            "x-real-ip",
            "true-client-ip",
            "cf-connecting-ip",
            "x-client-ip",
        ] {
            h.insert(n, "1.1.1.1".parse().unwrap());
        }
        let host = HeaderValue::from_static("example.com");
        set_forwarding(
            &mut h,
            "8.8.8.8".parse().unwrap(),
            &HeaderValue::from_static("8.8.8.8"),
            "8.8.8.8".parse().unwrap(),
            Some(&host),
            &s,
            false,
        );
        assert_eq!(h["x-forwarded-for"], "8.8.8.8");
        assert_eq!(h["x-forwarded-host"], "example.com");
        assert!(!h.contains_key("forwarded"));
        assert!(!h.contains_key("x-forwarded-port"));
        assert_eq!(h["x-real-ip"], "8.8.8.8");
        for n in ["true-client-ip", "cf-connecting-ip", "x-client-ip"] {
            assert!(!h.contains_key(n), "{n}");
        }
        let mut h2 = HeaderMap::new();
        h2.insert("x-forwarded-for", "1.1.1.1".parse().unwrap());
        h2.insert("forwarded", "for=1.1.1.1".parse().unwrap());
        h2.insert("true-client-ip", "1.1.1.1".parse().unwrap());
        set_forwarding(
            &mut h2,
            "10.1.1.1".parse().unwrap(),
            &HeaderValue::from_static("10.1.1.1"),
            "1.1.1.1".parse().unwrap(),
            Some(&host),
            &s,
            false,
        );
        assert_eq!(h2["x-forwarded-for"], "1.1.1.1, 10.1.1.1");
        assert_eq!(h2["forwarded"], "for=1.1.1.1, for=10.1.1.1");
        assert_eq!(h2["x-real-ip"], "1.1.1.1");
        assert_eq!(h2["true-client-ip"], "1.1.1.1");
    }

    #[test]
    fn request_ids_are_visible_ascii_up_to_128() {
        assert!(valid_request_id(&HeaderValue::from_static("abc-123")));
        assert!(!valid_request_id(&HeaderValue::from_static("")));
        assert!(!valid_request_id(&HeaderValue::from_static("has space")));
        assert!(!valid_request_id(
            &HeaderValue::try_from("x".repeat(129)).unwrap()
        ));
        let id = new_request_id();
        assert_eq!(id.len(), 32);
        assert!(valid_request_id(&id));
    }
}
