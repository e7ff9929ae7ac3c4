//! Forwarding: headers, ids, trace context, rewrites, streaming, upgrades.

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

#[tokio::test]
async fn forwards_request_and_response_with_forwarding_headers() {
    let up = Upstream::start("app").await;
    let gw = TestGateway::start(&proxy_all(&up.url())).await;
    let c = client();
    let r = get_with(
        &c,
        &gw.url("/p/q?b=2&a=%2F1&&x"),
        &[
            ("x-forwarded-for", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
            ("x-forwarded-port", "1"),
            ("x-request-id", "client-id-1"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "app");
    assert_eq!(r.headers["x-request-id"], "client-id-1");
    assert_eq!(r.headers["x-upstream-header"], "yes");
    assert!(
        r.headers.get("x-hop").is_none(),
        "headers named in Connection are hop-by-hop"
    );
    let seen = up.last();
    assert_eq!(seen.uri, "/p/q?b=2&a=%2F1&&x", "query kept byte for byte");
    assert_eq!(
        seen.headers["x-forwarded-for"], "127.0.0.1",
        "untrusted peer: replaced"
    );
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-request-id"], "client-id-1");
    assert!(seen.headers.get("forwarded").is_none());
    assert!(seen.headers.get("x-forwarded-port").is_none());
    assert_eq!(seen.headers["host"], gw.addr.to_string());
}

#[tokio::test]
async fn trusted_peers_extend_forwarding_headers() {
    let up = Upstream::start("app").await;
    let gw = TestGateway::start(
        &(server_with("trusted_proxies: [\"127.0.0.0/8\"]") + &proxy_all(&up.url())),
    )
    .await;
    let c = client();
    get_with(
        &c,
        &gw.url("/"),
        &[
            ("x-forwarded-for", "1.2.3.4"),
            ("forwarded", "for=1.2.3.4"),
            ("x-forwarded-proto", "https"),
        ],
    )
    .await;
    let seen = up.last();
    assert_eq!(seen.headers["x-forwarded-for"], "1.2.3.4, 127.0.0.1");
    assert_eq!(seen.headers["forwarded"], "for=1.2.3.4, for=127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
}

#[tokio::test]
async fn invalid_request_ids_are_replaced_and_trace_context_continues() {
    let up = Upstream::start("app").await;
    let gw = TestGateway::start(&proxy_all(&up.url())).await;
    let c = client();
    let long = "x".repeat(129);
    let r = get_with(
        &c,
        &gw.url("/"),
        &[
            ("x-request-id", &long),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("tracestate", "k=v"),
        ],
    )
    .await;
    let id = r.headers["x-request-id"].to_str().unwrap();
    assert_eq!(id.len(), 32);
    let seen = up.last();
    assert_eq!(seen.headers["x-request-id"], id);
    let tp = seen.headers["traceparent"].to_str().unwrap();
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{tp}"
    );
    assert!(
        !tp.contains("00f067aa0ba902b7"),
        "the gateway is a new span"
    );
    assert_eq!(seen.headers["tracestate"], "k=v");
    get_with(
        &c,
        &gw.url("/"),
        &[("traceparent", "garbage"), ("tracestate", "k=v")],
    )
    .await;
    let seen = up.last();
    assert_ne!(seen.headers["traceparent"], "garbage");
    assert!(seen.headers.get("tracestate").is_none());
}

#[tokio::test]
async fn strip_prefix_rewrite_and_header_rules_apply() {
    let up = Upstream::start("app").await;
    let gw = TestGateway::start(&format!(
        r#"
upstreams:
  app: {{ endpoints: ["{}"] }}
routes:
  - name: strip
    match: {{ path_prefix: /api }}
    upstream: app
    strip_prefix: /api
    host_rewrite: users.internal
    request_headers: {{ set: {{ x-set: "1" }}, add: {{ x-add: "2" }}, remove: [x-drop] }}
    response_headers: {{ set: {{ x-resp: "3" }}, remove: [x-upstream-header] }}
  - name: rewrite
    match: {{ path_prefix: /v1/old }}
    upstream: app
    rewrite_prefix: {{ from: /v1/old, to: /v2/new }}
"#,
        up.url()
    ))
    .await;
    let c = client();
    let r = get_with(&c, &gw.url("/api/users/7?x=1"), &[("x-drop", "1")]).await;
    assert_eq!(r.headers["x-resp"], "3");
    assert!(r.headers.get("x-upstream-header").is_none());
    let seen = up.last();
    assert_eq!(seen.uri, "/users/7?x=1");
    assert_eq!(seen.headers["host"], "users.internal");
    assert_eq!(seen.headers["x-set"], "1");
    assert_eq!(seen.headers["x-add"], "2");
    assert!(seen.headers.get("x-drop").is_none());
    get(&c, &gw.url("/v1/old/a")).await;
    assert_eq!(up.last().uri, "/v2/new/a");
    get(&c, &gw.url("//api/./users/../x")).await;
    assert_eq!(
        up.last().uri,
        "/x",
        "the normalized path is what goes upstream"
    );
}

#[tokio::test]
async fn large_bodies_stream_both_ways_intact() {
    let up = Upstream::start("app").await;
    let gw = TestGateway::start(
        &(server_with("limits: { max_request_body_bytes: 64MiB }") + &proxy_all(&up.url())),
    )
    .await;
    let c = client();
    // Upload: 8 MiB of varied bytes, echoed back.
    let payload: Vec<u8> = (0..8u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let r = send(
        &c,
        http::Request::post(gw.url("/echo"))
            .body(http_body_util::Full::new(Bytes::from(payload.clone())))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.body == payload, "echoed body differs");
    // Download: 32 MiB streamed.
    assert_eq!(
        download_x(&c, &gw.url(&format!("/bytes/{}", 32 << 20))).await,
        32 << 20
    );
}

#[tokio::test]
async fn websocket_upgrade_passes_through_both_ways() {
    let up = Upstream::start("app").await;
    let gw = TestGateway::start(&proxy_all(&up.url())).await;
    websocket_echoes(gw.addr, &up).await;
}

#[tokio::test]
async fn h2c_prior_knowledge_and_http10_are_served_on_the_same_port() {
    let up = Upstream::start("app").await;
    let gw = TestGateway::start(&proxy_all(&up.url())).await;
    let h2 = h2c_client();
    let r = send(
        &h2,
        http::Request::get(gw.url("/x"))
            .body(Default::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "app");
    let resp = raw(gw.addr, b"GET /x HTTP/1.0\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.0 200"), "{resp}");
    assert!(resp.ends_with("app"), "{resp}");
}

#[tokio::test]
async fn head_and_204_and_304_have_no_body() {
    let up = Upstream::start("app").await;
    let gw = TestGateway::start(&proxy_all(&up.url())).await;
    let resp = raw(
        gw.addr,
        b"HEAD /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.ends_with("\r\n\r\n"), "HEAD has no body: {resp}");
    for code in [204, 304] {
        let resp = raw(
            gw.addr,
            format!("GET /status/{code} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        assert!(resp.starts_with(&format!("HTTP/1.1 {code}")), "{resp}");
        assert!(resp.ends_with("\r\n\r\n"), "{code} has no body: {resp}");
    }
}

#[tokio::test]
async fn expect_100_continue_gets_100_then_the_response() {
    let up = Upstream::start("app").await;
    let gw = TestGateway::start(&proxy_all(&up.url())).await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(IO_WAIT, s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100 Continue"));
    s.write_all(b"hello").await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(IO_WAIT, s.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&rest);
    assert!(text.contains("200 OK") && text.ends_with("hello"), "{text}");
}

#[tokio::test]
async fn h2c_upstreams_are_proxied_over_one_multiplexed_connection() {
    let up = Upstream::start("h2-app").await;
    let gw = TestGateway::start(&format!(
        "upstreams:\n  h2: {{ endpoints: [\"{}\"], protocol: h2c }}\nroutes:\n  - {{ name: h2, match: {{ path_prefix: / }}, upstream: h2, strip_prefix: /api }}\n",
        up.url()
    ))
    .await;
    let c = client();
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let (c, url) = (c.clone(), gw.url(&format!("/api/echo?n={i}")));
            tokio::spawn(async move { post(&c, &url, &format!("body-{i}")).await })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.unwrap();
        assert_eq!((r.status, r.text()), (200, format!("body-{i}")));
    }
    let seen = up.last();
    assert!(
        seen.uri.contains("/echo?n="),
        "prefix stripped: {}",
        seen.uri
    );
    assert!(seen.headers.get("x-forwarded-for").is_some());
    assert_eq!(
        up.conns.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "ten concurrent requests shared one h2 connection"
    );
}
