//! Every request is accounted exactly once, whatever ends it: one access
//! log line (with the fields operators expect), one count, the in-flight
//! gauge back at 0. Each test runs the binary, whose metrics registry is
//! its own.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::tls::TestCa;
use crate::support::*;

/// The tests' server block with the access log on.
const LOGGED: &str = "server:\n  listen: [\"127.0.0.1:0\"]\n  admin_listen: \"127.0.0.1:0\"\n  access_log: { enabled: true, query: true }\n";

/// Waits for `n` access-log lines and returns them parsed.
async fn log_lines(gw: &Binary, n: usize) -> Vec<serde_json::Value> {
    eventually(&format!("{n} access-log lines"), async || {
        gw.stdout.lock().unwrap().len() >= n
    })
    .await;
    gw.stdout
        .lock()
        .unwrap()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn scrape(gw: &Binary) -> String {
    get(&client(), &format!("http://{}/metrics", gw.admin))
        .await
        .text()
}

/// Counted once on route `app` with `method` and `status`, and nothing
/// left in flight.
async fn accounted_once(gw: &Binary, method: &str, status: u16) {
    let series =
        format!(r#"tollgate_requests_total{{method="{method}",route="app",status="{status}"}}"#);
    assert_eq!(metric(&scrape(gw).await, &series), 1.0, "{series}");
    nothing_in_flight(gw).await;
}

/// `requests_inflight` back at 0 (the scrape itself is on the admin
/// listener, not counted).
async fn nothing_in_flight(gw: &Binary) {
    eventually("no request in flight", async || {
        scrape(gw)
            .await
            .lines()
            .any(|l| l == "tollgate_requests_inflight 0")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_the_client_abandons_is_499_client_closed_request() {
    let up = Upstream::start("app").await;
    let gw = Binary::start(&format!("{LOGGED}{}", proxy_all(&up.url())));
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    eventually("the upload reached the upstream", async || up.count() == 1).await;
    drop(s);
    let lines = log_lines(&gw, 1).await;
    let l = &lines[0];
    assert_eq!(l["status"], 499, "{l}");
    assert_eq!(l["reason"], "client_closed_request");
    assert_eq!(l["bytes_in"], 10);
    assert_eq!(l["attempts"], 1);
    let m = scrape(&gw).await;
    assert_eq!(
        metric(
            &m,
            r#"tollgate_requests_total{method="POST",route="app",status="499"}"#
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            r#"tollgate_requests_total{method="POST",route="app",status="400"}"#
        ),
        0.0
    );
    nothing_in_flight(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_is_accounted_when_its_tunnel_closes() {
    let up = Upstream::start("app").await;
    let gw = Binary::start(&format!("{LOGGED}{}", proxy_all(&up.url())));
    let mut s = websocket_open(gw.addr).await;
    for _ in 0..3 {
        websocket_ping(&mut s).await;
    }
    // Open tunnel: in flight, not logged yet.
    let m = scrape(&gw).await;
    assert_eq!(metric(&m, "tollgate_requests_inflight"), 1.0, "{m}");
    assert!(gw.stdout.lock().unwrap().is_empty());
    drop(s);
    let lines = log_lines(&gw, 1).await;
    let l = &lines[0];
    assert_eq!(l["status"], 101, "{l}");
    assert_eq!(l["bytes_in"], 48, "client to upstream, through the tunnel");
    assert_eq!(l["bytes_out"], 48, "upstream to client");
    assert_eq!(l["reason"], "");
    accounted_once(&gw, "GET", 101).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_the_client_resets_is_logged_with_its_bytes() {
    let up = Upstream::start("app").await;
    let gw = Binary::start(&format!("{LOGGED}{}", proxy_all(&up.url())));
    let mut s = websocket_open(gw.addr).await;
    for _ in 0..2 {
        websocket_ping(&mut s).await;
    }
    // A reset (RST), not a close: the tunnel's copy ends in an error.
    s.set_zero_linger().unwrap();
    drop(s);
    let lines = log_lines(&gw, 1).await;
    let l = &lines[0];
    assert_eq!(l["status"], 101, "{l}");
    assert_eq!(l["bytes_in"], 32, "what went through before the reset");
    assert_eq!(l["bytes_out"], 32);
    assert_eq!(l["reason"], "downstream_disconnect");
    accounted_once(&gw, "GET", 101).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_request_names_the_upstream_the_endpoint_and_the_attempts() {
    let dead = ClosedPort::new();
    let gw = Binary::start(&format!(
        "{LOGGED}upstreams:\n  gone: {{ endpoints: [\"http://{}\"] }}\nroutes:\n  - {{ name: gone, match: {{ path_prefix: / }}, upstream: gone, retry: {{ attempts: 2, on: [connect_error], backoff: {{ base: 1ms, max: 1ms }} }} }}\n",
        dead.addr
    ));
    assert_eq!(get(&client(), &gw.url("/x")).await.status, 502);
    let lines = log_lines(&gw, 1).await;
    let l = &lines[0];
    assert_eq!(l["status"], 502, "{l}");
    assert_eq!(l["reason"], "upstream_refused");
    assert_eq!(l["upstream"], "gone");
    assert_eq!(l["endpoint"], dead.addr.to_string());
    assert_eq!(l["attempts"], 3);
    assert_eq!(l["upstream_status"], serde_json::Value::Null);
    nothing_in_flight(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_carry_protocol_tls_user_agent_upstream_status_and_a_redacted_query() {
    let up = Upstream::start("app").await;
    let ca = TestCa::new("accounting CA");
    let dir = config_path().parent().unwrap().to_owned();
    let (cert, key) = ca.leaf(&["a.test"], false);
    std::fs::write(dir.join("a.pem"), cert).unwrap();
    std::fs::write(dir.join("a.key"), key).unwrap();
    let gw = Binary::start(&format!(
        "server:\n  listen: [\"127.0.0.1:0\"]\n  tls_listen: [\"127.0.0.1:0\"]\n  admin_listen: \"127.0.0.1:0\"\n  access_log: {{ enabled: true, query: true }}\n  tls:\n    certificates:\n      - {{ cert: {}, key: {} }}\n\
         auth:\n  providers:\n    hs: {{ algorithms: [HS256], secret: \"0123456789abcdef0123456789abcdef\", token_from: [\"query:access_token\"] }}\n{}",
        dir.join("a.pem").display(),
        dir.join("a.key").display(),
        proxy_all(&up.url())
    ));
    let c = client();
    let r = get_with(
        &c,
        &gw.url("/status/404?a=1&access_token=s3cret&b=2"),
        &[("user-agent", "curl/8.5")],
    )
    .await;
    assert_eq!(r.status, 404);
    let h2 = send(
        &h2c_client(),
        http::Request::get(gw.url("/x"))
            .body(Default::default())
            .unwrap(),
    )
    .await;
    assert_eq!(h2.status, 200);
    // TLS: the log names the version and the SNI name.
    let tls_addr = gw.tls_addr().unwrap();
    let tcp = tokio::net::TcpStream::connect(tls_addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(ca.client(&["http/1.1"]))
        .connect(
            rustls_pki_types::ServerName::try_from("a.test").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    tls.write_all(b"GET /tls HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(IO_WAIT, tls.read_to_end(&mut out)).await;
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));
    let lines = log_lines(&gw, 3).await;
    let plain = lines.iter().find(|l| l["path"] == "/status/404").unwrap();
    assert_eq!(plain["protocol"], "HTTP/1.1");
    assert_eq!(plain["user_agent"], "curl/8.5");
    assert_eq!(plain["query"], "a=1&access_token=<redacted>&b=2");
    assert_eq!(plain["upstream_status"], 404);
    assert_eq!(plain["attempts"], 1);
    assert!(plain.get("tls_version").is_none());
    let h2 = lines.iter().find(|l| l["path"] == "/x").unwrap();
    assert_eq!(h2["protocol"], "HTTP/2");
    assert_eq!(
        (plain["host"].as_str(), h2["host"].as_str()),
        (Some(&*gw.addr.to_string()), Some(&*gw.addr.to_string())),
        "the same host, port included, on HTTP/1.1 and h2"
    );
    let tls = lines.iter().find(|l| l["path"] == "/tls").unwrap();
    assert_eq!(tls["tls_version"], "1.3", "{tls}");
    assert_eq!(tls["sni"], "a.test");
    assert_eq!(tls["host"], "a.test");
    assert!(!lines.iter().any(|l| l.to_string().contains("s3cret")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h1_client_that_leaves_before_the_response_is_499() {
    let up = Upstream::start("app").await;
    let gw = Binary::start(&format!("{LOGGED}{}", proxy_all(&up.url())));
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /slow/3000 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    eventually("the request reached the upstream", async || up.count() == 1).await;
    let left = std::time::Instant::now();
    drop(s);
    let lines = log_lines(&gw, 1).await;
    let l = &lines[0];
    assert_eq!(l["status"], 499, "{l}");
    assert_eq!(l["reason"], "client_closed_request");
    assert!(
        left.elapsed() < std::time::Duration::from_millis(2500),
        "seen when the client left, not when the upstream answered"
    );
    accounted_once(&gw, "GET", 499).await;
}

/// An h2 stream the client resets while its request waits (a gRPC client
/// whose deadline passed sends the same RST_STREAM CANCEL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_stream_reset_before_the_response_is_499() {
    let up = Upstream::start("app").await;
    let gw = Binary::start(&format!("{LOGGED}{}", proxy_all(&up.url())));
    // :method GET, :scheme http, :path (literal "/slow/3000"), :authority "a";
    // content-type application/grpc, as a gRPC call is.
    let mut block = vec![0x82u8, 0x86, 0x04, 10];
    block.extend_from_slice(b"/slow/3000");
    block.extend_from_slice(&[0x01, 0x01, b'a', 0x00, 12]);
    block.extend_from_slice(b"content-type");
    block.push(16);
    block.extend_from_slice(b"application/grpc");
    let mut wire = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    wire.extend_from_slice(&h2_frame(0x4, 0, 0, &[]));
    // END_HEADERS | END_STREAM: no body.
    wire.extend_from_slice(&h2_frame(0x1, 0x5, 1, &block));
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(&wire).await.unwrap();
    eventually("the request reached the upstream", async || up.count() == 1).await;
    // RST_STREAM(CANCEL) on stream 1; the connection stays open.
    s.write_all(&h2_frame(0x3, 0, 1, &8u32.to_be_bytes()))
        .await
        .unwrap();
    let lines = log_lines(&gw, 1).await;
    let l = &lines[0];
    assert_eq!(l["status"], 499, "{l}");
    assert_eq!(l["reason"], "client_closed_request");
    assert_eq!(l["protocol"], "HTTP/2");
    accounted_once(&gw, "GET", 499).await;
    drop(s);
}
