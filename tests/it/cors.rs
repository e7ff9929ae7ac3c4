//! CORS: preflights answered by the gateway before authentication and
//! rate limits; actual responses carry the headers for allowed origins
//! only; a refused origin gets no CORS headers, never an error; cached
//! responses are served with the headers of each request's own origin.

use serde_json::json;

use crate::support::jwt::{SigningKey, now};
use crate::support::*;

const SECRET: &str = "a-cors-test-secret-of-at-least-32-bytes!";

fn config(up: &str) -> String {
    format!(
        "cache: {{}}\nauth:\n  providers:\n    p: {{ algorithms: [HS256], secret: \"{SECRET}\" }}\nrate_limits:\n  one: {{ key: client_ip, rate: 1/min, burst: 1 }}\nupstreams:\n  app: {{ endpoints: [\"{up}\"] }}\nroutes:\n  - name: api\n    match: {{ path_prefix: /api, methods: [GET, PUT] }}\n    upstream: app\n    auth: {{ provider: p }}\n    cache: {{ default_ttl: 60s, cache_authorized: true, key: [\"claim:sub\"] }}\n    cors:\n      allow_origins: [\"https://app.example.com\", \"https://*.example.org\", {{ regex: \"https://pr-[0-9]+\\\\.preview\\\\.example\\\\.net\" }}]\n      allow_methods: [GET, PUT]\n      allow_headers: [content-type, authorization]\n      expose_headers: [x-upstream-header]\n      allow_credentials: true\n      max_age: 10m\n  - {{ name: limited, match: {{ path_prefix: /limited }}, upstream: app, rate_limit: [one], cors: {{ allow_origins: [\"*\"] }} }}\n"
    )
}

fn header<'a>(g: &'a Got, name: &str) -> Option<&'a str> {
    g.headers.get(name).map(|v| v.to_str().unwrap())
}

async fn preflight(c: &TestClient, url: &str, origin: &str, method: &str, headers: &str) -> Got {
    let mut req = http::Request::builder()
        .method("OPTIONS")
        .uri(url)
        .header("origin", origin)
        .header("access-control-request-method", method);
    if !headers.is_empty() {
        req = req.header("access-control-request-headers", headers);
    }
    send(
        c,
        req.body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn preflights_are_answered_before_auth_and_limits_for_allowed_origins_only() {
    let up = Upstream::start("app").await;
    let gw = TestGateway::start(&config(&up.url())).await;
    let c = client();
    let url = gw.url("/api/items");
    // Allowed: no token needed, nothing reaches the upstream.
    for origin in [
        "https://app.example.com",
        "https://shop.eu.example.org",
        "https://pr-17.preview.example.net",
    ] {
        let g = preflight(&c, &url, origin, "PUT", "Content-Type, Authorization").await;
        assert_eq!(g.status, 204, "{origin}");
        assert_eq!(header(&g, "access-control-allow-origin"), Some(origin));
        assert_eq!(header(&g, "access-control-allow-credentials"), Some("true"));
        assert_eq!(header(&g, "access-control-allow-methods"), Some("GET, PUT"));
        assert_eq!(
            header(&g, "access-control-allow-headers"),
            Some("content-type, authorization")
        );
        assert_eq!(header(&g, "access-control-max-age"), Some("600"));
        assert!(header(&g, "vary").unwrap().contains("Origin"));
    }
    assert_eq!(up.count(), 0, "preflights never reach the upstream");
    // Refused: an unknown origin, a method or a header not allowed. No
    // CORS headers, no error page.
    for (origin, method, headers) in [
        ("https://evil.example.com", "PUT", ""),
        ("https://example.org", "GET", ""),
        ("https://app.example.com", "DELETE", ""),
        ("https://app.example.com", "GET", "x-evil"),
    ] {
        let g = preflight(&c, &url, origin, method, headers).await;
        // A method no route takes on this path is 405 (with `Allow`), as
        // for any request; the rest are the route's answer.
        let status = if method == "DELETE" { 405 } else { 204 };
        assert_eq!(g.status, status, "{origin} {method} {headers}");
        assert_eq!(
            header(&g, "access-control-allow-origin"),
            None,
            "{origin} {method} {headers}"
        );
        if status == 204 {
            assert!(g.text().is_empty());
        }
    }
    // A preflight takes nothing from the rate limit (burst 1): the actual
    // request after two preflights still passes.
    let limited = gw.url("/limited/x");
    for _ in 0..2 {
        let g = preflight(&c, &limited, "https://any.io", "GET", "").await;
        assert_eq!(
            header(&g, "access-control-allow-origin"),
            Some("*"),
            "any origin, no credentials"
        );
    }
    let g = get_with(&c, &limited, &[("origin", "https://any.io")]).await;
    assert_eq!(g.status, 200);
    assert_eq!(header(&g, "access-control-allow-origin"), Some("*"));
    let m = get(&c, &gw.admin_url("/metrics")).await.text();
    assert_eq!(
        metric(
            &m,
            r#"tollgate_cors_requests_total{kind="preflight",result="allowed",route="api"}"#
        ),
        3.0
    );
    assert_eq!(
        metric(
            &m,
            r#"tollgate_cors_requests_total{kind="preflight",result="refused",route="api"}"#
        ),
        3.0,
        "the DELETE preflight matched no route"
    );
}

#[tokio::test]
async fn actual_responses_carry_the_headers_of_their_own_allowed_origin() {
    let up = Upstream::start("app").await;
    let gw = TestGateway::start(&config(&up.url())).await;
    let c = client();
    let url = gw.url("/api/items");
    let token = SigningKey::hmac(SECRET).sign(&json!({"sub": "u1", "exp": now() + 600}));
    let bearer = format!("Bearer {token}");
    // A miss from one origin, then a hit from another: each gets its own.
    let a = get_with(
        &c,
        &url,
        &[
            ("origin", "https://app.example.com"),
            ("authorization", &bearer),
        ],
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(
        header(&a, "access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(header(&a, "access-control-allow-credentials"), Some("true"));
    assert_eq!(
        header(&a, "access-control-expose-headers"),
        Some("x-upstream-header")
    );
    assert!(header(&a, "vary").unwrap().contains("Origin"));
    let b = get_with(
        &c,
        &url,
        &[
            ("origin", "https://b.example.org"),
            ("authorization", &bearer),
        ],
    )
    .await;
    assert!(
        header(&b, "cache-status").unwrap().contains("hit"),
        "{:?}",
        b.headers
    );
    assert_eq!(
        header(&b, "access-control-allow-origin"),
        Some("https://b.example.org")
    );
    // A refused origin: the response, without CORS headers (the browser blocks it).
    let r = get_with(
        &c,
        &url,
        &[("origin", "https://evil.io"), ("authorization", &bearer)],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(header(&r, "access-control-allow-origin"), None);
    assert!(header(&r, "vary").unwrap().contains("Origin"));
    // The gateway's own errors carry them too, so a page can read a 401.
    let e = get_with(&c, &url, &[("origin", "https://app.example.com")]).await;
    assert_eq!(e.status, 401);
    assert_eq!(
        header(&e, "access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(up.count(), 1, "one upstream request: the miss");
}

#[test]
fn any_origin_with_credentials_is_a_config_error() {
    let path = config_path();
    std::fs::write(
        &path,
        "upstreams:\n  app: { endpoints: [\"http://127.0.0.1:1\"] }\nroutes:\n  - { name: a, match: { path_prefix: / }, upstream: app, cors: { allow_origins: [\"*\"], allow_credentials: true } }\n",
    )
    .unwrap();
    let (code, _, err) = tollgate_cli(&["validate", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("routes[0].cors.allow_origins[0]: `*` together with allow_credentials"),
        "{err}"
    );
}
