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

#[cfg(test)]
mod tests {
    #[test]
    fn the_routing_config_compiles() {
        assert!(
            super::snapshot().is_some(),
            "a fuzz target would test nothing"
        );
    }
}
