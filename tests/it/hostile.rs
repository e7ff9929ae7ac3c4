//! Hostile and malformed requests over raw sockets: each gets a 4xx (and a
//! closed connection where framing is in doubt), never a hang.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

async fn gateway() -> (TestGateway, Upstream) {
    let up = Upstream::start("app").await;
    let gw = TestGateway::start(&(server_with("limits: { header_read_timeout: 500ms, max_request_header_bytes: 8KiB, max_request_headers: 20, idle_timeout: 1s }") + &proxy_all(&up.url())))
    .await;
    (gw, up)
}

#[tokio::test]
async fn framing_attacks_are_refused_and_never_forwarded() {
    let (gw, up) = gateway().await;
    let cases: &[(&str, &[u8])] = &[
        ("missing host", b"GET / HTTP/1.1\r\n\r\n"),
        ("repeated host", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        ("host with userinfo", b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n"),
        ("absolute-form authority differs from host", b"GET http://a/ HTTP/1.1\r\nHost: b\r\n\r\n"),
        ("conflicting content-length", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"),
        ("non-final chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n"),
        ("bad chunk size", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"),
        ("obs-fold", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n"),
        ("control character in field", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x01c\r\n\r\n"),
        ("HTTP/1.2", b"GET / HTTP/1.2\r\nHost: a\r\n\r\n"),
        ("CONNECT", b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n"),
        ("asterisk-form with GET", b"GET * HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("path above root", b"GET /../etc/passwd HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("bare CR in field", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n"),
        ("space before colon", b"GET / HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n"),
        ("HTTP/1.0 with transfer-encoding", b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("encoded NUL climbing", b"GET /a/%2e%2e/%2e%2e/b HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("bad percent-encoding", b"GET /a%zz HTTP/1.1\r\nHost: a\r\n\r\n"),
    ];
    for (name, bytes) in cases {
        let resp = raw(gw.addr, bytes).await;
        let status = raw_status(&resp);
        assert!(
            (400..500).contains(&status),
            "{name}: got {status}: {resp:?}"
        );
    }
    assert_eq!(
        up.count(),
        0,
        "nothing malformed reached the upstream: {:?}",
        up.seen.lock().unwrap()
    );
}

/// hyper resolves Content-Length + Transfer-Encoding as RFC 9112 §6.3
/// allows: Transfer-Encoding wins, Content-Length is removed before anyone
/// sees the request, and the connection is closed after the response. The
/// upstream therefore never sees both (no smuggling), in either order.
#[tokio::test]
async fn content_length_with_transfer_encoding_is_never_forwarded_ambiguously() {
    let (gw, up) = gateway().await;
    for req in [
        &b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"[..],
        &b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n5\r\nhello\r\n0\r\n\r\n"[..],
    ] {
        let resp = raw(gw.addr, req).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert!(resp.to_lowercase().contains("connection: close"), "connection closed after: {resp}");
        assert!(resp.ends_with("hello"), "{resp}");
        let seen = up.last();
        assert!(seen.headers.get("content-length").is_none());
        assert_eq!(&seen.body[..], b"hello");
    }
}

/// The `http` crate's URI parser discards a fragment while hyper reads the
/// request line, so the gateway never sees it; what goes upstream is the
/// path without it.
#[tokio::test]
async fn fragments_are_never_forwarded() {
    let (gw, up) = gateway().await;
    let resp = raw(
        gw.addr,
        b"GET /a#frag HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(up.last().uri, "/a");
}

/// httparse accepts bare LF as a line end (RFC 9112 §2.2 allows it); the
/// request is parsed once and re-serialized with CRLF, so no hop after the
/// gateway can read it differently.
#[tokio::test]
async fn bare_lf_heads_are_reserialized_with_crlf() {
    let (gw, up) = gateway().await;
    let resp = raw(
        gw.addr,
        b"GET /lf HTTP/1.1\nHost: a\nX-A: b\nConnection: close\n\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(up.last().headers["x-a"], "b");
}

#[tokio::test]
async fn oversized_heads_get_431() {
    let (gw, up) = gateway().await;
    // Over the configured 8 KiB / 20 fields: the gateway's JSON 431.
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "a".repeat(10_000)
    );
    let resp = raw(gw.addr, big.as_bytes()).await;
    assert_eq!(raw_status(&resp), 431, "{resp}");
    assert!(resp.contains("\"error\":\"headers_too_large\""), "{resp}");
    let mut many = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
    for i in 0..30 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let resp = raw(gw.addr, many.as_bytes()).await;
    assert_eq!(raw_status(&resp), 431, "{resp}");
    assert!(resp.contains("\"error\":\"headers_too_large\""), "{resp}");
    // Past twice the limit, hyper's parser stops reading: a bare 431.
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "a".repeat(40_000)
    );
    assert_eq!(raw_status(&raw(gw.addr, huge.as_bytes()).await), 431);
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn slowloris_heads_are_cut_at_the_header_read_timeout() {
    let (gw, _up) = gateway().await;
    // Nothing at all: the first-bytes deadline.
    let started = Instant::now();
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(IO_WAIT, s.read_to_end(&mut buf))
        .await
        .expect("closed")
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "silent connection closed after ~500ms"
    );
    // A head that trickles in.
    let started = Instant::now();
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let closed = tokio::time::timeout(IO_WAIT, async {
        loop {
            // A header line every 100ms: always under the idle timeout,
            // never a whole head.
            tokio::time::sleep(Duration::from_millis(100)).await;
            if s.write_all(b"X-A: b\r\n").await.is_err() {
                return;
            }
            let mut b = [0u8; 512];
            match tokio::time::timeout(Duration::from_millis(1), s.read(&mut b)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(_)) => return,
                Err(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "trickling head was cut");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn idle_keepalive_connections_are_closed() {
    let (gw, _up) = gateway().await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let started = Instant::now();
    let rest = tokio::time::timeout(IO_WAIT, s.read(&mut buf))
        .await
        .expect("closed when idle")
        .unwrap();
    assert_eq!(rest, 0);
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "not before idle_timeout"
    );
}

#[tokio::test]
async fn header_names_with_underscores_are_dropped_and_h2c_upgrade_never_passes() {
    let (gw, up) = gateway().await;
    let resp = raw(gw.addr, b"GET / HTTP/1.1\r\nHost: a\r\nX_Forwarded_For: 1.1.1.1\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nConnection: Upgrade, HTTP2-Settings, close\r\n\r\n").await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
    let seen = up.last();
    assert!(seen.headers.keys().all(|k| !k.as_str().contains('_')));
    assert!(seen.headers.get("upgrade").is_none());
    assert!(seen.headers.get("http2-settings").is_none());
}

/// An h2 HEADERS frame (END_STREAM | END_HEADERS) on stream 1 carrying a
/// GET for `/` with `authority` and extra literal headers (HPACK literals
/// without indexing, no Huffman coding).
fn h2_request(authority: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    fn lit(out: &mut Vec<u8>, s: &str) {
        out.push(s.len() as u8);
        out.extend_from_slice(s.as_bytes());
    }
    // :method GET, :scheme http, :path / (static table 2, 6, 4)
    let mut block = vec![0x82, 0x86, 0x84];
    // :authority (static index 1), literal value
    block.push(0x01);
    lit(&mut block, authority);
    for (name, value) in extra {
        block.push(0x00);
        lit(&mut block, name);
        lit(&mut block, value);
    }
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]); // empty SETTINGS
    let len = block.len();
    out.extend_from_slice(&[
        (len >> 16) as u8,
        (len >> 8) as u8,
        len as u8,
        0x1,
        0x5,
        0,
        0,
        0,
        1,
    ]);
    out.extend_from_slice(&block);
    out
}

/// Reads h2 frames for stream 1 until a response HEADERS or RST_STREAM;
/// returns the frame type (0x1 HEADERS, 0x3 RST_STREAM, 0x7 GOAWAY) and payload.
pub(crate) async fn h2_answer(addr: std::net::SocketAddr, request: &[u8]) -> (u8, Vec<u8>) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    tokio::time::timeout(IO_WAIT, async {
        loop {
            let mut head = [0u8; 9];
            s.read_exact(&mut head).await.unwrap();
            let len =
                (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
            let mut payload = vec![0u8; len];
            s.read_exact(&mut payload).await.unwrap();
            let stream = u32::from_be_bytes([head[5] & 0x7f, head[6], head[7], head[8]]);
            if head[3] == 0x7 || (stream == 1 && (head[3] == 0x1 || head[3] == 0x3)) {
                return (head[3], payload);
            }
        }
    })
    .await
    .expect("an answer on stream 1")
}

#[tokio::test]
async fn h2_connection_specific_headers_are_refused() {
    let (gw, up) = gateway().await;
    for (name, value) in [
        ("connection", "keep-alive"),
        ("transfer-encoding", "chunked"),
        ("upgrade", "websocket"),
        ("te", "gzip"),
    ] {
        let (kind, _) = h2_answer(gw.addr, &h2_request("a", &[(name, value)])).await;
        assert_ne!(kind, 0x1, "{name} must not get a response");
    }
    // The same request without them is served: the frames above were right.
    let (kind, payload) = h2_answer(gw.addr, &h2_request("a", &[])).await;
    assert_eq!(kind, 0x1);
    assert_eq!(payload.first(), Some(&0x88), ":status 200 (static index 8)");
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn h2_authority_with_user_info_is_400() {
    let (gw, up) = gateway().await;
    let (kind, payload) = h2_answer(gw.addr, &h2_request("user@a", &[])).await;
    assert!(kind != 0x1 || payload.first() != Some(&0x88), "not a 200");
    if kind == 0x1 {
        // :status 400 is static index 12 (0x8c).
        assert_eq!(payload.first(), Some(&0x8c));
    }
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn upgrade_is_ignored_on_http10() {
    let (gw, up) = gateway().await;
    let resp = raw(
        gw.addr,
        b"GET /ws HTTP/1.0\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await;
    assert!(
        !resp.starts_with("HTTP/1.1 101") && !resp.starts_with("HTTP/1.0 101"),
        "{resp}"
    );
    assert!(up.last().headers.get("upgrade").is_none());
}

#[tokio::test]
async fn strict_settings_reject_underscores_and_encoded_slashes() {
    let up = Upstream::start("app").await;
    let gw = TestGateway::start(
        &(server_with("limits: { headers_with_underscores: reject, escaped_slashes: reject }")
            + &proxy_all(&up.url())),
    )
    .await;
    let resp = raw(
        gw.addr,
        b"GET / HTTP/1.1\r\nHost: a\r\nX_Real_IP: 1.2.3.4\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&resp), 400, "{resp}");
    let resp = raw(
        gw.addr,
        b"GET /a%2Fb HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&resp), 400, "{resp}");
    assert!(resp.contains("\"invalid_path\""));
    assert_eq!(up.count(), 0);
}

/// A client that requests a large body and stops reading is cut off after
/// `send_timeout` of no write progress, instead of pinning the connection.
#[tokio::test]
async fn clients_that_stop_reading_are_cut_off() {
    const SIZE: usize = 64 << 20;
    let up = Upstream::start("app").await;
    let gw = TestGateway::start(
        &(server_with("limits: { send_timeout: 300ms }") + &proxy_all(&up.url())),
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(format!("GET /bytes/{SIZE} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
        .await
        .unwrap();
    // Not reading: the socket buffers fill and the gateway's writes stall,
    // for five times the 300ms send_timeout.
    const STALLED_FOR: Duration = Duration::from_millis(1500);
    tokio::time::sleep(STALLED_FOR).await;
    // Now read what is there. Had the gateway waited, reading would let it
    // go on and all 64 MiB would arrive; cut off, the stream ends early.
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let end = tokio::time::timeout(IO_WAIT, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => total += n,
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the stream ended");
    assert!(total < SIZE, "cut off after {total} bytes");
}

/// HTTP/2 "rapid reset" (CVE-2023-44487): a client that opens streams and
/// cancels them at once, over and over, gets GOAWAY instead of unbounded
/// work.
#[tokio::test]
async fn h2_rapid_reset_gets_goaway() {
    let (gw, _up) = gateway().await;
    // :method GET, :scheme http, :path /, :authority "a" (literal, not indexed)
    let block = [0x82u8, 0x86, 0x84, 0x01, 0x01, b'a'];
    let mut wire = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    wire.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    for i in 0..500u32 {
        let id = (2 * i + 1).to_be_bytes();
        // HEADERS (END_HEADERS, stream stays open), then RST_STREAM(CANCEL).
        wire.extend_from_slice(&[
            0,
            0,
            block.len() as u8,
            0x1,
            0x4,
            id[0],
            id[1],
            id[2],
            id[3],
        ]);
        wire.extend_from_slice(&block);
        wire.extend_from_slice(&[0, 0, 4, 0x3, 0, id[0], id[1], id[2], id[3], 0, 0, 0, 0x8]);
    }
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let _ = s.write_all(&wire).await;
    let goaway = tokio::time::timeout(IO_WAIT, async {
        loop {
            let mut head = [0u8; 9];
            if s.read_exact(&mut head).await.is_err() {
                return None;
            }
            let len =
                (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
            let mut payload = vec![0u8; len];
            if s.read_exact(&mut payload).await.is_err() {
                return None;
            }
            if head[3] == 0x7 {
                return Some(u32::from_be_bytes([
                    payload[4], payload[5], payload[6], payload[7],
                ]));
            }
        }
    })
    .await
    .expect("an answer in time");
    // ENHANCE_YOUR_CALM (0xb) is what the h2 layer sends for this.
    assert_eq!(goaway, Some(0xb), "GOAWAY with ENHANCE_YOUR_CALM");
}

/// Opens a tunnel to the test upstream's echoing `/ws` through `addr`.
async fn open_tunnel(addr: std::net::SocketAddr, path: &str) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        tokio::time::timeout(IO_WAIT, s.read_exact(&mut b))
            .await
            .unwrap()
            .unwrap();
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

/// Reads until the peer closes (or fails); how long that took.
async fn time_to_close(s: &mut tokio::net::TcpStream) -> std::time::Duration {
    let t = std::time::Instant::now();
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(IO_WAIT, s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return t.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("the tunnel was not closed within {IO_WAIT:?}"),
        }
    }
}

#[tokio::test]
async fn a_busy_tunnel_outlives_every_request_timer_and_an_idle_one_closes_at_its_limit() {
    let up = Upstream::start("app").await;
    let gw = TestGateway::start(&(server_with(
        "limits: { header_read_timeout: 300ms, idle_timeout: 300ms, body_read_timeout: 300ms, tunnel_idle_timeout: 1s }",
    ) + &format!(
        "upstreams:\n  app: {{ endpoints: [\"{}\"] }}\nroutes:\n  - {{ name: short, match: {{ path_prefix: /ws-short }}, upstream: app, rewrite_prefix: {{ from: /ws-short, to: /ws }}, timeouts: {{ tunnel_idle: 400ms }} }}\n  - {{ name: app, match: {{ path_prefix: / }}, upstream: app }}\n",
        up.url()
    )))
    .await;
    let mut s = open_tunnel(gw.addr, "/ws").await;
    // A message every 150 ms for 3 s: ten times the head and idle timers.
    let start = std::time::Instant::now();
    let mut n = 0u32;
    while start.elapsed() < std::time::Duration::from_secs(3) {
        let msg = format!("message-{n:04}");
        s.write_all(msg.as_bytes()).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(IO_WAIT, s.read_exact(&mut back))
            .await
            .expect("echo in time")
            .expect("the tunnel stays open while data flows");
        assert_eq!(back, msg.as_bytes());
        const BETWEEN_MESSAGES: Duration = Duration::from_millis(150);
        tokio::time::sleep(BETWEEN_MESSAGES).await;
        n += 1;
    }
    // Silent: closed at the tunnel limit (1 s), not before.
    let idle = time_to_close(&mut s).await;
    assert!(idle >= std::time::Duration::from_millis(900), "{idle:?}");
    // A route's own limit wins.
    let mut s = open_tunnel(gw.addr, "/ws-short").await;
    s.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    s.read_exact(&mut back).await.unwrap();
    let idle = time_to_close(&mut s).await;
    assert!(idle >= std::time::Duration::from_millis(350), "{idle:?}");
    assert!(
        idle < std::time::Duration::from_millis(950),
        "the route's 400ms, not 1s: {idle:?}"
    );
}

/// Reads one response whose body is `app`.
async fn read_app_response(s: &mut tokio::net::TcpStream) {
    let mut got = Vec::new();
    while !got.ends_with(b"app") {
        let mut b = [0u8; 256];
        let n = tokio::time::timeout(IO_WAIT, s.read(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&b[..n]);
    }
}

#[tokio::test]
async fn a_partial_pipelined_head_is_timed_by_the_head_timer_not_the_idle_timer() {
    let up = Upstream::start("app").await;
    let gw = TestGateway::start(
        &(server_with("limits: { header_read_timeout: 400ms, idle_timeout: 30s }")
            + &proxy_all(&up.url())),
    )
    .await;
    // The partial second head in the same packet as the first request, and
    // sent while the first is in flight.
    for (first, later) in [
        (
            &b"GET /x HTTP/1.1\r\nHost: a\r\n\r\nGET /x HTTP/1.1\r\nHo"[..],
            &b""[..],
        ),
        (
            b"GET /slow/300 HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /x HTTP/1.1\r\nHo",
        ),
    ] {
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(first).await.unwrap();
        if !later.is_empty() {
            // The rest of the pipeline arrives later, while the first
            // response is being made.
            const LATER: Duration = Duration::from_millis(100);
            tokio::time::sleep(LATER).await;
            s.write_all(later).await.unwrap();
        }
        read_app_response(&mut s).await;
        let t = Instant::now();
        let mut b = [0u8; 64];
        let r = tokio::time::timeout(Duration::from_secs(10), s.read(&mut b)).await;
        assert!(
            matches!(r, Ok(Ok(0) | Err(_))),
            "closed by the head timer, not left to the 30s idle timer"
        );
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }
    // A complete request with nothing behind it is idle, not a head: it
    // outlives the head timer.
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    read_app_response(&mut s).await;
    let mut b = [0u8; 64];
    let r = tokio::time::timeout(Duration::from_millis(1500), s.read(&mut b)).await;
    assert!(
        r.is_err(),
        "an idle keep-alive connection stays open past the head timer"
    );
}

/// An h2 client that opens streams with a receive window of 0 and never
/// grants more: every response it asked for waits on its flow control.
/// Returns a task that ends when the gateway closes the connection.
async fn stalled_h2_client(
    addr: std::net::SocketAddr,
    streams: u32,
    path: &str,
) -> tokio::task::JoinHandle<()> {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // SETTINGS_INITIAL_WINDOW_SIZE (4) = 0.
    out.extend(h2_frame(0x4, 0, 0, &[0, 4, 0, 0, 0, 0]));
    for i in 0..streams {
        let mut block = vec![0x82, 0x86, 0x00];
        for text in [":path", path] {
            block.push(text.len() as u8);
            block.extend_from_slice(text.as_bytes());
        }
        block.extend_from_slice(&[0x01, 1, b'a']);
        out.extend(h2_frame(0x1, 0x5, 2 * i + 1, &block));
    }
    s.write_all(&out).await.unwrap();
    tokio::spawn(async move {
        // Reads everything (acknowledging SETTINGS), grants no window.
        loop {
            let mut head = [0u8; 9];
            if s.read_exact(&mut head).await.is_err() {
                return;
            }
            let len =
                (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
            let mut payload = vec![0u8; len];
            if s.read_exact(&mut payload).await.is_err() {
                return;
            }
            if head[3] == 0x4
                && head[4] & 0x1 == 0
                && s.write_all(&h2_frame(0x4, 0x1, 0, &[])).await.is_err()
            {
                return;
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_h2_streams_release_the_upstream_slots_they_hold() {
    let up = Upstream::start("app").await;
    let gw = TestGateway::start(&(server_with("limits: { send_timeout: 1s }") + &format!(
        "upstreams:\n  app: {{ endpoints: [\"{}\"], limits: {{ max_inflight: 20 }} }}\nroutes:\n  - {{ name: app, match: {{ path_prefix: / }}, upstream: app }}\n",
        up.url()
    )))
    .await;
    // 12 connections × 2 streams of a 1 MB body: 24 responses that can
    // never be sent, more than the upstream's 20 slots.
    let mut stalled = Vec::new();
    for _ in 0..12 {
        stalled.push(stalled_h2_client(gw.addr, 2, "/bytes/1000000").await);
    }
    let c = client();
    // Every stalled connection is closed once its streams have waited on
    // the client's flow control for send_timeout, and its slots go back.
    for t in stalled {
        tokio::time::timeout(IO_WAIT, t)
            .await
            .expect("the stalled connection is closed")
            .unwrap();
    }
    // A normal client is served from then on, every time.
    for _ in 0..20 {
        let g = get(&c, &gw.url("/x")).await;
        assert_eq!(g.status, 200, "{}", g.text());
    }
    let status = get(&c, &gw.admin_url("/upstreams")).await.json();
    assert_eq!(status["upstreams"][0]["inflight"], 0, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_h2_connection_holds_at_most_a_quarter_of_an_upstreams_slots() {
    let up = Upstream::start("app").await;
    let gw = TestGateway::start(&format!(
        "upstreams:\n  app: {{ endpoints: [\"{}\"], limits: {{ max_inflight: 8 }} }}\nroutes:\n  - {{ name: app, match: {{ path_prefix: / }}, upstream: app }}\n",
        up.url()
    ))
    .await;
    // Six slow requests at once on one h2 connection: two are let through.
    let h2 = h2c_client();
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let (h2, url) = (h2.clone(), gw.url("/slow/1500"));
            tokio::spawn(async move { get(&h2, &url).await })
        })
        .collect();
    // While they hold their slots, another client is still served.
    for _ in 0..200 {
        if up.count() >= 2 {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let other = get(&client(), &gw.url("/x")).await;
    assert_eq!(other.status, 200, "{}", other.text());
    let mut statuses = Vec::new();
    for t in tasks {
        let g = t.await.unwrap();
        if g.status == 503 {
            assert_eq!(g.json()["error"], "overloaded");
        }
        statuses.push(g.status);
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 503, 503, 503, 503]);
    let m = get(&client(), &gw.admin_url("/metrics")).await.text();
    assert!(metric(&m, r#"tollgate_overflow_total{scope="client_connection"}"#) >= 4.0);
}
