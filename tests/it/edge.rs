//! Edge correctness over real sockets: the order in which the gateway
//! removes the client's hop-by-hop fields and sets its own, h2 requests
//! reaching HTTP/1.1 upstreams (cookies, trailers), framing and request
//! targets an origin could read another way, and the client-address
//! headers.

use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::hostile::h2_answer;
use crate::support::jwt::{SigningKey, now};
use crate::support::*;

const SECRET: &str = "edge-test-secret-of-at-least-32-bytes!";

/// HPACK literal without indexing, new name, no Huffman coding.
fn literal(block: &mut Vec<u8>, name: &str, value: &str) {
    block.push(0x00);
    for s in [name, value] {
        block.push(s.len() as u8);
        block.extend_from_slice(s.as_bytes());
    }
}

/// The client preface, an empty SETTINGS and a POST /echo on stream 1
/// with `body` and a trailer block of `trailers` (END_STREAM).
fn h2_post_with_trailers(body: &[u8], trailers: &[(&str, &str)]) -> Vec<u8> {
    // :method POST (static 3), :scheme http (6), :path / (4), :authority
    let mut head = vec![0x83, 0x86];
    literal(&mut head, ":path", "/echo");
    literal(&mut head, ":authority", "a");
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(h2_frame(0x4, 0, 0, &[]));
    out.extend(h2_frame(0x1, 0x4, 1, &head)); // END_HEADERS
    out.extend(h2_frame(0x0, 0, 1, body));
    let mut block = Vec::new();
    for (n, v) in trailers {
        literal(&mut block, n, v);
    }
    out.extend(h2_frame(0x1, 0x5, 1, &block)); // END_STREAM | END_HEADERS
    out
}

#[tokio::test]
async fn h2_trailers_with_a_pseudo_header_reset_the_stream() {
    let up = Upstream::start("app").await;
    let gw = TestGateway::start(&proxy_all(&up.url())).await;
    // Well-formed trailers: the request is forwarded whole.
    let (kind, _) = h2_answer(gw.addr, &h2_post_with_trailers(b"abc", &[("x-t", "1")])).await;
    assert_eq!(kind, 0x1, "a response");
    assert_eq!(up.last().body.as_ref(), b"abc");
    let before = up.seen.lock().unwrap().len();
    // A pseudo-header in the trailers: RST_STREAM PROTOCOL_ERROR, and the
    // upstream never gets a complete request.
    for (pseudo, value) in [
        (":path", "/admin"),
        (":method", "GET"),
        (":status", "200"),
        (":authority", "b"),
    ] {
        let (kind, payload) = h2_answer(
            gw.addr,
            &h2_post_with_trailers(b"abc", &[(pseudo, value), ("x-t", "1")]),
        )
        .await;
        assert_eq!(kind, 0x3, "{pseudo}: RST_STREAM");
        assert_eq!(payload, [0, 0, 0, 1], "{pseudo}: PROTOCOL_ERROR");
    }
    let seen = up.seen.lock().unwrap().clone();
    assert!(
        seen[before..].iter().all(|s| s.body.as_ref() != b"abc"),
        "a malformed request reached the upstream whole"
    );
}

#[tokio::test]
async fn h2_cookie_fields_reach_an_http1_upstream_as_one_header() {
    let up = Upstream::start("app").await;
    let gw = TestGateway::start(&proxy_all(&up.url())).await;
    let h2 = h2c_client();
    let r = send(
        &h2,
        http::Request::get(gw.url("/x"))
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .header("cookie", "c=3")
            .body(Default::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(seen.headers.get_all("cookie").iter().count(), 1);
    assert_eq!(seen.headers["cookie"], "a=1; b=2; c=3");
    // One cookie field passes as it is.
    let r = send(
        &h2,
        http::Request::get(gw.url("/x"))
            .header("cookie", "only=1")
            .body(Default::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().headers["cookie"], "only=1");
}

#[tokio::test]
async fn a_client_cannot_remove_or_override_the_headers_the_gateway_sets() {
    let up = Upstream::start("app").await;
    let gw = TestGateway::start(&format!(
        "upstreams:\n  app: {{ endpoints: [\"{}\"] }}\nauth:\n  providers:\n    p: {{ algorithms: [HS256], secret: \"{SECRET}\", tenant_claim: tenant, forward_claims: {{ sub: x-user-id, tenant: x-tenant-id }} }}\nroutes:\n  - {{ name: app, match: {{ path_prefix: / }}, upstream: app, auth: {{ provider: p }}, request_headers: {{ set: {{ x-route: set-by-gateway }} }} }}\n",
        up.url()
    ))
    .await;
    let token = SigningKey::hmac(SECRET)
        .sign(&json!({"sub": "user-1", "tenant": "acme", "exp": now() + 600}));
    let nominated = "x-user-id, x-tenant-id, host, x-request-id, x-forwarded-for, x-forwarded-proto, x-real-ip, x-route, traceparent";
    let req = format!(
        "GET /x HTTP/1.1\r\nHost: gw.example\r\nAuthorization: Bearer {token}\r\nConnection: {nominated}\r\nConnection: close\r\nX-User-Id: forged\r\nX-Tenant-Id: forged\r\nX-Request-Id: client-id\r\nX-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nX-Route: forged\r\nTraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n"
    );
    let resp = raw(gw.addr, req.as_bytes()).await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
    let seen = up.last();
    let one = |name: &str| {
        let all: Vec<_> = seen.headers.get_all(name).iter().collect();
        assert_eq!(all.len(), 1, "{name}: {all:?}");
        all[0].to_str().unwrap().to_owned()
    };
    assert_eq!(one("x-user-id"), "user-1");
    assert_eq!(one("x-tenant-id"), "acme");
    assert_eq!(one("host"), "gw.example");
    assert_eq!(one("x-forwarded-for"), "127.0.0.1");
    assert_eq!(one("x-forwarded-proto"), "http");
    assert_eq!(one("x-real-ip"), "127.0.0.1");
    assert_eq!(one("x-route"), "set-by-gateway");
    // The request id and trace context the client nominated were removed
    // before the gateway read them: new ones were made, not the client's.
    let id = one("x-request-id");
    assert_ne!(id, "client-id");
    assert!(
        resp.to_ascii_lowercase()
            .contains(&format!("x-request-id: {id}")),
        "{resp}"
    );
    assert!(!one("traceparent").contains("0af7651916cd43dd8448eb211c80319c"));
    assert!(!seen.headers.contains_key("connection"));
}

#[tokio::test]
async fn content_length_goes_upstream_in_canonical_form() {
    let up = Upstream::start("app").await;
    let gw = TestGateway::start(&proxy_all(&up.url())).await;
    let resp = raw(
        gw.addr,
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 0005\r\nConnection: close\r\n\r\nhello",
    )
    .await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
    let seen = up.last();
    assert_eq!(seen.headers["content-length"], "5");
    assert_eq!(seen.body.as_ref(), b"hello");
    // Repeated identical lines reach the upstream once; differing lines,
    // or a list in one field, are refused.
    let resp = raw(
        gw.addr,
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
    assert_eq!(
        up.last().headers.get_all("content-length").iter().count(),
        1
    );
    let count = up.count();
    for bad in [
        &b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"
            [..],
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello",
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello",
    ] {
        let resp = raw(gw.addr, bad).await;
        assert_eq!(raw_status(&resp), 400, "{resp}");
    }
    assert_eq!(up.count(), count);
}

#[tokio::test]
async fn a_backslash_in_the_target_is_refused() {
    let up = Upstream::start("app").await;
    let gw = TestGateway::start(&proxy_all(&up.url())).await;
    for target in ["/a\\b", "/\\\\evil.example/x", "/x?q=\\"] {
        let resp = raw(
            gw.addr,
            format!("GET {target} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(raw_status(&resp), 400, "{target}: {resp}");
    }
    assert_eq!(up.count(), 0);
    // %5C (an escaped backslash) is ordinary data and passes.
    let resp = raw(
        gw.addr,
        b"GET /a%5Cb HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
}

#[tokio::test]
async fn client_address_headers_from_untrusted_peers_are_replaced() {
    let up = Upstream::start("app").await;
    let gw = TestGateway::start(&proxy_all(&up.url())).await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\nX-Real-IP: 6.6.6.6\r\nTrue-Client-IP: 6.6.6.6\r\nCF-Connecting-IP: 6.6.6.6\r\nX-Client-IP: 6.6.6.6\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(
        IO_WAIT,
        tokio::io::AsyncReadExt::read_to_end(&mut s, &mut out),
    )
    .await;
    assert_eq!(raw_status(&String::from_utf8_lossy(&out)), 200);
    let seen = up.last();
    assert_eq!(seen.headers["x-real-ip"], "127.0.0.1");
    for h in ["true-client-ip", "cf-connecting-ip", "x-client-ip"] {
        assert!(!seen.headers.contains_key(h), "{h}");
    }
}

#[tokio::test]
async fn trusted_proxies_keep_their_client_address_headers() {
    let up = Upstream::start("app").await;
    let gw = TestGateway::start(&format!(
        "{}{}",
        server_with("trusted_proxies: [\"127.0.0.1/32\"]"),
        proxy_all(&up.url())
    ))
    .await;
    let g = get_with(
        &client(),
        &gw.url("/x"),
        &[
            ("x-forwarded-for", "203.0.113.9"),
            ("true-client-ip", "203.0.113.9"),
        ],
    )
    .await;
    assert_eq!(g.status, 200);
    let seen = up.last();
    assert_eq!(seen.headers["x-real-ip"], "203.0.113.9");
    assert_eq!(seen.headers["true-client-ip"], "203.0.113.9");
}
