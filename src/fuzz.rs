//! Entry points for the cargo-fuzz targets in `fuzz/` (feature `fuzzing`):
//! each takes arbitrary bytes and runs one parser or rule set of the
//! gateway on them. None may panic, hang or grow without bound; a crash
//! found here becomes a regression test next to the code it hit.

use std::sync::OnceLock;

use http::{HeaderMap, HeaderValue, Method, Request};

use crate::proxy::admit::{admit, host_for_routing};
use crate::routing::RequestView;
use crate::routing::normalize::normalize_path;
use crate::snapshot::Snapshot;

/// A config with routes of every matcher kind, to route fuzzed requests.
const ROUTES: &str = r#"
server: { listen: ["127.0.0.1:0"], admin_listen: "127.0.0.1:0" }
routes:
  - { name: exact, match: { path: /exact, methods: [GET, POST] }, respond: { body: a } }
  - { name: tpl, match: { path: "/users/{id}/orders/{order}" }, respond: { body: b } }
  - { name: prefix, match: { path_prefix: /api, headers: { x-v: "2", accept: { regex: 'json$' } }, query: { debug: "1" } }, respond: { body: c } }
  - { name: regex, match: { path_regex: "^/r/[a-z]+$" }, respond: { body: d } }
  - { name: host, match: { hosts: ["*.example.com", "api.test"], path_prefix: / }, respond: { body: e } }
  - { name: any, match: { path_prefix: / }, respond: { body: f } }
"#;

fn snapshot() -> Option<&'static Snapshot> {
    static S: OnceLock<Option<Snapshot>> = OnceLock::new();
    S.get_or_init(|| crate::config::build("fuzz.yaml", ROUTES, None).ok())
        .as_ref()
}

/// Config text to a compiled snapshot or located errors.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Compiling may start nothing, but some parts expect a runtime.
    static RT: OnceLock<Option<tokio::runtime::Runtime>> = OnceLock::new();
    let Some(rt) = RT
        .get_or_init(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()
        })
        .as_ref()
    else {
        return;
    };
    let _in = rt.enter();
    let _ = crate::config::build("fuzz.yaml", text, None);
}

/// An HTTP/1.1 request head through hyper's own parser rules (httparse),
/// then admission, path normalization and the router.
pub fn request_head(data: &[u8]) {
    let Some(snap) = snapshot() else {
        return;
    };
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = parsed.parse(data) else {
        return;
    };
    let (Some(method), Some(path)) = (parsed.method, parsed.path) else {
        return;
    };
    let mut b = Request::builder().method(method).uri(path);
    if parsed.version == Some(0) {
        b = b.version(http::Version::HTTP_10);
    }
    for h in parsed.headers.iter() {
        b = b.header(h.name, h.value);
    }
    let Ok(mut req) = b.body(()) else {
        return;
    };
    let Ok(host) = admit(&mut req, &snap.settings) else {
        return;
    };
    let Ok(normalized) = normalize_path(req.uri().path(), snap.settings.normalize) else {
        return;
    };
    let host_text = host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or("");
    let view = RequestView {
        method: req.method(),
        host: &host_for_routing(host_text),
        path: &normalized,
        query: req.uri().query(),
        headers: req.headers(),
    };
    let _ = snap.router.lookup(&view);
}

/// Bytes an upstream might send: the response head parser and the body
/// framing decoders, fed in pieces of every size.
pub fn upstream_response(data: &[u8]) {
    let split = data.first().map_or(1, |b| usize::from(*b % 64) + 1);
    crate::upstream::h1::decode_for_fuzzing(data.get(1..).unwrap_or_default(), split);
}

/// `Cache-Control` request and response directives, and the storage and
/// lookup rules over them.
pub fn cache_control(data: &[u8]) {
    let mut headers = HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        if let Ok(v) = HeaderValue::from_bytes(line) {
            headers.append(http::header::CACHE_CONTROL, v.clone());
            headers.append(http::header::PRAGMA, v);
        }
    }
    let cc = crate::cache::policy::CacheControl::parse(&headers);
    let _ = format!("{cc:?}");
    let _ = crate::cache::policy::lookup(&Method::GET, &headers);
    let _ = crate::cache::policy::storable(
        &Method::GET,
        &headers,
        http::StatusCode::OK,
        &headers,
        &crate::cache::policy::Allowances::default(),
    );
}

/// A bearer token's JOSE header, and token sources in headers.
pub fn jwt_header(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = crate::auth::token::jose_header(text);
    let _ = crate::auth::token::Source::parse(text);
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(text) {
        headers.append(http::header::AUTHORIZATION, v.clone());
        headers.append(http::header::COOKIE, v);
    }
    let sources = [
        crate::auth::token::Source::Header(http::header::AUTHORIZATION),
        crate::auth::token::Source::Cookie("access_token".into()),
        crate::auth::token::Source::Query("access_token".into()),
    ];
    let _ = crate::auth::token::extract(&sources, &headers, Some(text));
}

/// `Accept-Encoding` values (one per line) negotiated against every
/// coding, and the same lines as `content_types` patterns.
pub fn accept_encoding(data: &[u8]) {
    use crate::compression::{Algorithm, TypePattern, negotiate};
    let mut headers = HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        if let Ok(v) = HeaderValue::from_bytes(line) {
            headers.append(http::header::ACCEPT_ENCODING, v);
        }
        if let Ok(text) = std::str::from_utf8(line) {
            let _ = TypePattern::parse(text);
        }
    }
    let _ = negotiate(&[Algorithm::Zstd, Algorithm::Br, Algorithm::Gzip], &headers);
    let _ = negotiate(&[Algorithm::Gzip], &headers);
}

/// An API keys file, then a lookup in it of the same bytes as a key.
pub fn api_keys(data: &[u8]) {
    let claims = [(
        vec!["sub".to_owned()],
        http::HeaderName::from_static("x-consumer"),
    )];
    let Ok(keys) = crate::auth::apikey::parse_keys("fuzz", data, &claims) else {
        return;
    };
    let key = String::from_utf8_lossy(data);
    let _ = keys.get(&crate::auth::apikey::digest(key.as_bytes()));
}

/// An access-log line whose text fields are the input's pieces (split at
/// the byte 0xFF, which UTF-8 never uses, so control characters, quotes
/// and backslashes reach the fields): it must be one JSON object that
/// reads back to the same strings and numbers.
pub fn access_log_line(data: &[u8]) {
    use crate::observability::access_log::LogLine;
    let mut pieces = data
        .split(|b| *b == 0xff)
        .map(String::from_utf8_lossy)
        .collect::<Vec<_>>();
    pieces.resize(14, std::borrow::Cow::Borrowed(""));
    let n = data
        .iter()
        .fold(0u64, |h, b| h.rotate_left(5) ^ u64::from(*b));
    // A request's duration, as `as_secs_f64` of a `Duration` makes it.
    let duration = std::time::Duration::from_nanos(n >> 10).as_secs_f64();
    let line = LogLine {
        time: std::time::UNIX_EPOCH + std::time::Duration::from_millis(n % (1 << 45)),
        request_id: &pieces[0],
        trace_id: &pieces[1],
        client: if n & 128 == 128 {
            std::net::IpAddr::from(std::net::Ipv4Addr::from(n as u32))
        } else {
            std::net::IpAddr::from(std::net::Ipv6Addr::from(
                (u128::from(n) << 64) | u128::from(n >> 7),
            ))
        },
        method: &pieces[2],
        host: &pieces[3],
        path: &pieces[4],
        query: (n & 1 == 1).then_some(&*pieces[5]),
        protocol: "HTTP/2",
        tls_version: None,
        sni: (n & 2 == 2).then_some(&*pieces[6]),
        user_agent: (n & 4 == 4).then_some(&*pieces[7]),
        upstream_status: (n & 8 == 8).then_some(n as u16),
        attempts: (n >> 16) as u32,
        grpc_status: (n & 16 == 16).then_some((n >> 8) as u16),
        status: (n >> 4) as u16,
        bytes_in: n,
        bytes_out: !n,
        duration,
        upstream_duration: (n & 32 == 32).then_some(duration / 3.0),
        route: &pieces[8],
        upstream: &pieces[9],
        endpoint: &pieces[10],
        reason: &pieces[11],
        tenant: (n & 64 == 64).then_some(&*pieces[12]),
        sub: Some(&*pieces[13]),
    };
    let mut out = Vec::new();
    line.write_json(&mut out);
    let parsed = serde_json::from_slice::<serde_json::Value>(&out);
    assert!(
        parsed.is_ok(),
        "not JSON ({parsed:?}): {}",
        String::from_utf8_lossy(&out)
    );
    let Ok(v) = parsed else { return };
    let text = |k: &str| v.get(k).and_then(serde_json::Value::as_str);
    assert_eq!(text("path"), Some(line.path));
    assert_eq!(text("request_id"), Some(line.request_id));
    assert_eq!(text("user_agent"), line.user_agent);
    assert_eq!(text("query"), line.query);
    assert_eq!(text("reason"), Some(line.reason));
    assert_eq!(text("sub"), line.sub);
    assert_eq!(text("client"), Some(line.client.to_string().as_str()));
    assert_eq!(
        v.get("bytes_in").and_then(serde_json::Value::as_u64),
        Some(n)
    );
    assert_eq!(
        v.get("bytes_out").and_then(serde_json::Value::as_u64),
        Some(!n)
    );
    // serde_json's reader (without its `float_roundtrip` feature) may
    // read the last bit differently from how the number was written.
    let read = v.get("duration").and_then(serde_json::Value::as_f64);
    assert!(
        read.is_some_and(|d| (d - duration).abs() <= duration * 4.0 * f64::EPSILON),
        "the duration {duration} reads back as {read:?}"
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn access_log_lines_read_back() {
        let inputs: [Vec<u8>; 5] = [
            Vec::new(),
            b"id\xfftrace\xffGET\xffhost\xff/p\"a\\th\n\x01\xffq=1\xff\xffua\x7f\xffr\xffu\xffe\xff\xfft\xffs"
                .to_vec(),
            ["\u{1}\u{1f}\"\\ünï ✓ 𝄞".as_bytes(), b"\xff\xff"].concat(),
            vec![0x80, 0xfe, 0xc3, 0x28, 0xff, 0x00, 0x08, 0x0c],
            // Found by the fuzzer with an arbitrary f64 for the duration:
            // serde_json reads some numbers back one bit off.
            vec![0xb9, 0xdb, 0xc3, 0xc3, 0xc3, 0xc3, 0xc3, 0xc3, 0xc3, 0xdb],
        ];
        for input in &inputs {
            super::access_log_line(input);
        }
    }

    #[test]
    fn the_routing_config_compiles() {
        assert!(
            super::snapshot().is_some(),
            "a fuzz target would test nothing"
        );
    }
}
