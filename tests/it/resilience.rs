//! Circuit breakers: transitions, skipping open endpoints, failing fast
//! when all are open, recovery through probes, state kept across reloads.

use std::time::Duration;

use crate::support::*;

fn breaker_config(endpoints: &[String], extra: &str) -> String {
    let list = endpoints
        .iter()
        .map(|e| format!("\"{e}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "upstreams:\n  app:\n    endpoints: [{list}]\n    circuit_breaker: {{ consecutive_failures: 3, open_for: 300ms, max_open_for: 1s, half_open_requests: 2{extra} }}\nroutes:\n  - {{ name: app, match: {{ path_prefix: / }}, upstream: app }}\n"
    )
}

/// Waits until the endpoint at `addr` shows `circuit: want` in
/// `GET /upstreams` (the breaker's phase is computed from the clock there,
/// so `half_open` shows once `open_for` has passed).
async fn wait_circuit(gw: &TestGateway, addr: std::net::SocketAddr, want: &str) {
    let c = client();
    eventually(&format!("the circuit of {addr} is {want}"), async || {
        let j = get(&c, &gw.admin_url("/upstreams")).await.json();
        j["upstreams"][0]["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["endpoint"] == addr.to_string() && e["circuit"] == want)
    })
    .await;
}

/// Past the first open period of `breaker_config` (300ms) and well inside
/// the doubled one (600ms) that a failed probe gives.
const INSIDE_THE_DOUBLED_OPEN_PERIOD: Duration = Duration::from_millis(350);

async fn metrics_text(gw: &TestGateway) -> String {
    get(&client(), &gw.admin_url("/metrics")).await.text()
}

#[tokio::test]
async fn breaker_opens_fails_fast_probes_and_closes() {
    let up = Upstream::start("flaky").await;
    let gw = TestGateway::start(&breaker_config(&[up.url()], "")).await;
    let c = client();
    let ep = up.addr.to_string();
    let state = format!(r#"tollgate_circuit_state{{endpoint="{ep}",upstream="app"}}"#);
    let to = |s: &str| {
        format!(r#"tollgate_circuit_transitions_total{{endpoint="{ep}",to="{s}",upstream="app"}}"#)
    };

    up.set_fail(503);
    for _ in 0..3 {
        assert_eq!(get(&c, &gw.url("/x")).await.status, 503);
    }
    assert_eq!(up.count(), 3);
    // Open: answered at once, nothing sent to the endpoint.
    let g = get(&c, &gw.url("/x")).await;
    assert_eq!(g.status, 503);
    assert_eq!(g.json()["error"], "upstream_unavailable");
    assert_eq!(g.headers["retry-after"], "1");
    assert_eq!(up.count(), 3);
    let m = metrics_text(&gw).await;
    assert_eq!(metric(&m, &state), 2.0);
    assert_eq!(metric(&m, &to("open")), 1.0);

    // After open_for: two probes, both succeed, closed again.
    up.set_fail(0);
    wait_circuit(&gw, up.addr, "half_open").await;
    assert_eq!(get(&c, &gw.url("/x")).await.status, 200);
    assert_eq!(metric(&metrics_text(&gw).await, &state), 1.0, "half-open");
    assert_eq!(get(&c, &gw.url("/x")).await.status, 200);
    let m = metrics_text(&gw).await;
    assert_eq!(metric(&m, &state), 0.0, "closed");
    assert_eq!(metric(&m, &to("half_open")), 1.0);
    assert_eq!(metric(&m, &to("closed")), 1.0);

    // Re-trip: open again; a failed probe doubles the open period (600ms).
    up.set_fail(500);
    for _ in 0..3 {
        assert_eq!(get(&c, &gw.url("/x")).await.status, 500);
    }
    wait_circuit(&gw, up.addr, "half_open").await;
    assert_eq!(get(&c, &gw.url("/x")).await.status, 500, "the probe fails");
    let hits = up.count();
    tokio::time::sleep(INSIDE_THE_DOUBLED_OPEN_PERIOD).await;
    let g = get(&c, &gw.url("/x")).await;
    assert_eq!(g.status, 503, "still open after 350ms of 600ms");
    assert_eq!(g.json()["error"], "upstream_unavailable");
    assert_eq!(up.count(), hits);
    up.set_fail(0);
    wait_circuit(&gw, up.addr, "half_open").await;
    assert_eq!(get(&c, &gw.url("/x")).await.status, 200);
    assert_eq!(metric(&metrics_text(&gw).await, &to("open")), 3.0);
}

#[tokio::test]
async fn an_open_endpoint_is_skipped_by_the_balancer() {
    let good = Upstream::start("good").await;
    let closed = ClosedPort::new();
    let dead = closed.addr;
    let gw = TestGateway::start(&breaker_config(
        &[good.url(), format!("http://{dead}")],
        ", failure_on: [connect_error]",
    ))
    .await;
    let c = client();
    for _ in 0..30 {
        let g = get(&c, &gw.url("/x")).await;
        assert_eq!(
            g.status, 200,
            "connect errors are retried on the other endpoint"
        );
    }
    let m = metrics_text(&gw).await;
    let errors = metric(
        &m,
        &format!(r#"tollgate_upstream_connect_errors_total{{endpoint="{dead}",upstream="app"}}"#),
    );
    assert_eq!(
        errors, 3.0,
        "after 3 failures the dead endpoint is not tried again"
    );
    assert_eq!(good.count(), 30);
}

#[tokio::test]
async fn breaker_state_survives_a_reload_that_keeps_the_upstream() {
    let up = Upstream::start("flaky").await;
    let config = breaker_config(&[up.url()], "");
    let gw = TestGateway::start(&config).await;
    let c = client();
    up.set_fail(502);
    for _ in 0..3 {
        get(&c, &gw.url("/x")).await;
    }
    assert_eq!(
        get(&c, &gw.url("/x")).await.json()["error"],
        "upstream_unavailable"
    );
    gw.write_config(
        &(config + "  - { name: extra, match: { path: /extra }, respond: { body: hi } }\n"),
    );
    let r = post(&c, &gw.admin_url("/reload"), "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get(&c, &gw.url("/extra")).await.text(), "hi");
    assert_eq!(
        get(&c, &gw.url("/x")).await.json()["error"],
        "upstream_unavailable",
        "still open after the reload"
    );
}

#[tokio::test]
async fn invalid_breaker_settings_are_refused() {
    let yaml = "upstreams:\n  a:\n    endpoints: [\"http://127.0.0.1:9\"]\n    circuit_breaker: { consecutive_failures: 0, failure_rate: 150%, half_open_requests: 0, failure_on: [] }\nroutes: []\n";
    let err = tollgate::config::build("t.yaml", yaml, None).err().unwrap();
    let lines = err.lines().join("\n");
    for want in [
        "upstreams.a.circuit_breaker.failure_rate: `150%` is not a percentage",
        "upstreams.a.circuit_breaker.half_open_requests: must be at least 1",
        "upstreams.a.circuit_breaker.failure_on: list at least one outcome",
        "upstreams.a.circuit_breaker: give consecutive_failures",
    ] {
        assert!(lines.contains(want), "missing `{want}` in:\n{lines}");
    }
}

fn non_health_hits(up: &Upstream) -> usize {
    up.seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.uri != "/health")
        .count()
}

fn health_hits(up: &Upstream) -> usize {
    up.seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.uri == "/health")
        .count()
}

async fn wait_healthy(gw: &TestGateway, ep: &Upstream, want: f64) {
    let series = format!(
        r#"tollgate_endpoint_healthy{{endpoint="{}",upstream="app"}}"#,
        ep.addr
    );
    eventually(&format!("{series} is {want}"), async || {
        metric(&metrics_text(gw).await, &series) == want
    })
    .await;
}

#[tokio::test]
async fn health_checks_take_endpoints_out_and_back_and_stop_with_their_upstream() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let config = format!(
        "upstreams:\n  app:\n    endpoints: [\"{}\", \"{}\"]\n    health_check: {{ path: /health, interval: 50ms, timeout: 500ms, healthy_threshold: 2, unhealthy_threshold: 2, expected_status: \"200-299\" }}\nroutes:\n  - {{ name: app, match: {{ path_prefix: / }}, upstream: app }}\n",
        a.url(),
        b.url()
    );
    let gw = TestGateway::start(&config).await;
    let c = client();
    wait_healthy(&gw, &b, 1.0).await;
    b.set_fail(503);
    wait_healthy(&gw, &b, 0.0).await;
    let before = non_health_hits(&b);
    for _ in 0..20 {
        let g = get(&c, &gw.url("/x")).await;
        assert_eq!((g.status, g.text()), (200, "a".to_owned()));
    }
    assert_eq!(
        non_health_hits(&b),
        before,
        "no traffic to the unhealthy endpoint"
    );
    // Both out: fail fast.
    a.set_fail(500);
    wait_healthy(&gw, &a, 0.0).await;
    let g = get(&c, &gw.url("/x")).await;
    assert_eq!(g.status, 503);
    assert_eq!(g.json()["error"], "upstream_unavailable");
    // Back in after two passing checks.
    a.set_fail(0);
    b.set_fail(0);
    wait_healthy(&gw, &b, 1.0).await;
    wait_healthy(&gw, &a, 1.0).await;
    let names: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..10 {
            v.push(get(&c, &gw.url("/x")).await.text());
        }
        v
    };
    assert!(
        names.contains(&"b".to_owned()) && names.contains(&"a".to_owned()),
        "{names:?}"
    );
    let m = metrics_text(&gw).await;
    assert!(
        metric(
            &m,
            &format!(
                r#"tollgate_health_checks_total{{endpoint="{}",result="failure",upstream="app"}}"#,
                b.addr
            )
        ) >= 2.0
    );
    // A reload that removes the upstream stops its checks.
    gw.write_config(
        "routes:\n  - { name: r, match: { path_prefix: / }, respond: { body: gone } }\n",
    );
    assert_eq!(post(&c, &gw.admin_url("/reload"), "").await.status, 200);
    // A check already under way may still land; after that, none. Six
    // intervals (50ms) would show three more checks had they not stopped.
    const LAST_CHECK_LANDS: Duration = Duration::from_millis(100);
    const SIX_INTERVALS: Duration = Duration::from_millis(300);
    tokio::time::sleep(LAST_CHECK_LANDS).await;
    let checks = health_hits(&b);
    tokio::time::sleep(SIX_INTERVALS).await;
    assert_eq!(health_hits(&b), checks, "checks stopped with the upstream");
}

#[tokio::test]
async fn bulkheads_and_load_shedding_answer_503_at_once() {
    let (slow, other) = (
        Upstream::start("slow").await,
        Upstream::start("other").await,
    );
    let config = format!(
        "{}upstreams:\n  slow: {{ endpoints: [\"{}\"], limits: {{ max_inflight: 2 }} }}\n  other: {{ endpoints: [\"{}\"] }}\nroutes:\n  - {{ name: slow, match: {{ path_prefix: /slow }}, upstream: slow }}\n  - {{ name: other, match: {{ path_prefix: / }}, upstream: other }}\n",
        server_with(""),
        slow.url(),
        other.url()
    );
    let gw = TestGateway::start(&config).await;
    let c = client();
    // Two requests fill the slow upstream's bulkhead.
    let held = spawn_gets(&c, &gw.url("/slow/600"), 2);
    eventually("both slow requests reached the upstream", async || {
        slow.count() == 2
    })
    .await;
    let t = std::time::Instant::now();
    let g = get(&c, &gw.url("/slow/1")).await;
    assert_eq!(g.status, 503);
    assert_eq!(g.json()["error"], "overloaded");
    assert_eq!(g.headers["retry-after"], "1");
    assert!(
        t.elapsed() < Duration::from_millis(300),
        "refused at once, not queued"
    );
    // The other upstream is not affected by the slow one's bulkhead.
    assert_eq!(get(&c, &gw.url("/fine")).await.status, 200);
    for h in held {
        assert_eq!(h.await.unwrap(), 200);
    }
    assert_eq!(get(&c, &gw.url("/slow/1")).await.status, 200, "free again");
    let m = metrics_text(&gw).await;
    assert!(metric(&m, r#"tollgate_overflow_total{scope="upstream"}"#) >= 1.0);
}

#[tokio::test]
async fn the_global_limit_sheds_requests_beyond_it() {
    let up = Upstream::start("app").await;
    let config = format!(
        "{}{}",
        server_with("max_inflight_requests: 2"),
        proxy_all(&up.url())
    );
    let gw = TestGateway::start(&config).await;
    let c = client();
    let held = spawn_gets(&c, &gw.url("/slow/600"), 2);
    eventually("both slow requests reached the upstream", async || {
        up.count() == 2
    })
    .await;
    let g = get(&c, &gw.url("/fast")).await;
    assert_eq!(g.status, 503);
    assert_eq!(g.json()["error"], "overloaded");
    for h in held {
        assert_eq!(h.await.unwrap(), 200);
    }
    assert_eq!(get(&c, &gw.url("/fast")).await.status, 200);
    let m = metrics_text(&gw).await;
    assert!(metric(&m, r#"tollgate_overflow_total{scope="global"}"#) >= 1.0);
}

#[tokio::test]
async fn max_connections_caps_the_upstream_pool() {
    let up = Upstream::start("app").await;
    let config = format!(
        "upstreams:\n  app: {{ endpoints: [\"{}\"], limits: {{ max_connections: 1 }} }}\nroutes:\n  - {{ name: app, match: {{ path_prefix: / }}, upstream: app }}\n",
        up.url()
    );
    let gw = TestGateway::start(&config).await;
    let c = client();
    let held = spawn_gets(&c, &gw.url("/slow/500"), 1);
    eventually("the slow request reached the upstream", async || {
        up.count() == 1
    })
    .await;
    let g = get(&c, &gw.url("/x")).await;
    assert_eq!(g.status, 503, "{}", g.text());
    assert_eq!(g.json()["error"], "overloaded");
    assert_eq!(held.into_iter().next().unwrap().await.unwrap(), 200);
    // The one connection went back to the pool: reused.
    assert_eq!(get(&c, &gw.url("/x")).await.status, 200);
    assert_eq!(up.conns.load(std::sync::atomic::Ordering::Relaxed), 1);
}

/// Upstream `app` over `endpoints`, one catch-all route with `retry`.
fn retry_config(endpoints: &[String], retry: &str) -> String {
    let list = endpoints
        .iter()
        .map(|e| format!("\"{e}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "upstreams:\n  app: {{ endpoints: [{list}] }}\nroutes:\n  - {{ name: app, match: {{ path_prefix: / }}, upstream: app, timeout: 5s, retry: {retry} }}\n"
    )
}

#[tokio::test]
async fn retries_go_to_another_endpoint_for_idempotent_requests_only() {
    let (bad, good) = (Upstream::start("bad").await, Upstream::start("good").await);
    bad.set_fail(503);
    let gw = TestGateway::start(&retry_config(
        &[bad.url(), good.url()],
        "{ attempts: 2, on: [503], backoff: { base: 1ms, max: 5ms } }",
    ))
    .await;
    let c = client();
    for _ in 0..20 {
        let g = get(&c, &gw.url("/x")).await;
        assert_eq!((g.status, g.text()), (200, "good".to_owned()));
    }
    assert!(
        bad.count() >= 5,
        "round robin sent first tries to the bad endpoint"
    );
    let m = metrics_text(&gw).await;
    assert_eq!(
        metric(&m, r#"tollgate_retries_total{reason="503",route="app"}"#),
        bad.count() as f64
    );
    // POST is not retried: the bad endpoint's 503 comes back.
    let before = bad.count() + good.count();
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(post(&c, &gw.url("/echo"), "body").await.status);
    }
    assert!(
        statuses.contains(&503) && statuses.contains(&200),
        "{statuses:?}"
    );
    assert_eq!(bad.count() + good.count(), before + 10, "one try each");
}

#[tokio::test]
async fn small_bodies_are_replayed_large_ones_are_not() {
    let (bad, good) = (Upstream::start("bad").await, Upstream::start("good").await);
    bad.set_fail(502);
    let gw = TestGateway::start(&retry_config(
        &[bad.url(), good.url()],
        "{ attempts: 1, on: [502], non_idempotent: true, backoff: { base: 1ms, max: 1ms } }",
    ))
    .await;
    let c = client();
    // Two requests: round robin sends one first try to each endpoint.
    for _ in 0..2 {
        let g = post(&c, &gw.url("/echo"), "hello, again").await;
        assert_eq!((g.status, g.text()), (200, "hello, again".to_owned()));
        assert_eq!(good.last().body, "hello, again");
    }
    assert!(bad.count() >= 1, "a first try went to the bad endpoint");
    // Over 64 KiB: not kept, so not retried.
    let big = "y".repeat(100 << 10);
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(post(&c, &gw.url("/echo"), &big).await.status);
    }
    assert!(got.contains(&502), "{got:?}");
}

#[tokio::test]
async fn per_try_timeout_moves_on_to_another_endpoint() {
    let (slow, fast) = (Upstream::start("slow").await, Upstream::start("fast").await);
    slow.set_fail(200);
    slow.fail_delay_ms
        .store(8000, std::sync::atomic::Ordering::Relaxed);
    let gw = TestGateway::start(&retry_config(
        &[slow.url(), fast.url()],
        "{ attempts: 1, on: [timeout], per_try_timeout: 1s, backoff: { base: 1ms, max: 1ms } }",
    ))
    .await;
    let c = client();
    // Two requests: round robin sends one first try to each endpoint.
    for _ in 0..2 {
        let t = std::time::Instant::now();
        let g = get(&c, &gw.url("/x")).await;
        assert_eq!((g.status, g.text()), (200, "fast".to_owned()));
        assert!(
            t.elapsed() < Duration::from_millis(6000),
            "{:?}",
            t.elapsed()
        );
    }
    let m = metrics_text(&gw).await;
    let retried = metric(
        &m,
        r#"tollgate_retries_total{reason="timeout",route="app"}"#,
    );
    assert_eq!(
        retried,
        slow.count() as f64,
        "every try on the slow endpoint was retried"
    );
    assert!(retried >= 1.0);
}

#[tokio::test]
async fn no_retry_once_the_response_has_started() {
    // An upstream that sends a head and part of the body, then closes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = listener.accept().await {
            h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
                .await;
        }
    });
    let gw = TestGateway::start(&retry_config(
        &[format!("http://{addr}")],
        "{ attempts: 2, on: [reset, 502, 503], backoff: { base: 1ms, max: 1ms } }",
    ))
    .await;
    let resp = raw(gw.addr, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n").await;
    // The 200 head was committed when the body failed: the client gets a
    // cut response (or just the close), never a retried or 502 answer.
    assert!(
        resp.is_empty() || resp.starts_with("HTTP/1.1 200"),
        "{resp}"
    );
    assert!(!resp.contains("502"), "{resp}");
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "not retried"
    );
}

#[tokio::test]
async fn the_budget_holds_when_every_endpoint_fails() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    for u in [&a, &b] {
        u.set_fail(503);
        u.fail_delay_ms
            .store(200, std::sync::atomic::Ordering::Relaxed);
    }
    let gw = TestGateway::start(&retry_config(
        &[a.url(), b.url()],
        "{ attempts: 2, on: [503], budget: 20%, min_concurrency: 3, backoff: { base: 1ms, max: 2ms } }",
    ))
    .await;
    let c = client();
    let all = spawn_gets(&c, &gw.url("/x"), 50);
    for h in all {
        assert_eq!(h.await.unwrap(), 503);
    }
    let total = a.count() + b.count();
    // 50 first tries; then at most 20% of 50 (10) retries at once, then at
    // most the floor of 3 for the second round.
    assert!(
        total <= 63,
        "{total} upstream requests for 50 client requests"
    );
    assert!(total > 50, "some retries were made");
    let m = metrics_text(&gw).await;
    assert!(metric(&m, r#"tollgate_retry_budget_exhausted_total{route="app"}"#) >= 30.0);
}

#[tokio::test]
async fn admin_upstreams_shows_health_breaker_inflight_latency_and_errors() {
    let (good, bad) = (Upstream::start("good").await, Upstream::start("bad").await);
    bad.set_fail(500);
    let gw = TestGateway::start(&breaker_config(&[good.url(), bad.url()], "")).await;
    let c = client();
    for _ in 0..12 {
        get(&c, &gw.url("/x")).await;
    }
    // The bad endpoint is open now: the slow request goes to the good one.
    let slow = spawn_gets(&c, &gw.url("/slow/400"), 1);
    let mut j = serde_json::Value::Null;
    eventually("the slow request is in flight", async || {
        j = get(&c, &gw.admin_url("/upstreams")).await.json();
        j["upstreams"][0]["inflight"] == 1
    })
    .await;
    let up = &j["upstreams"][0];
    assert_eq!(up["name"], "app");
    assert_eq!(up["inflight"], 1, "the slow request: {up}");
    assert_eq!(up["limits"]["max_inflight"], 1000);
    let ep = |addr: &std::net::SocketAddr| {
        up["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["endpoint"] == addr.to_string())
            .unwrap()
            .clone()
    };
    let (g, b) = (ep(&good.addr), ep(&bad.addr));
    assert_eq!(
        (g["circuit"].as_str(), b["circuit"].as_str()),
        (Some("closed"), Some("open"))
    );
    assert_eq!(
        (g["available"].as_bool(), b["available"].as_bool()),
        (Some(true), Some(false))
    );
    assert!(g["latency_ewma_ms"].as_f64().unwrap() > 0.0, "{g}");
    assert_eq!(g["error_rate_ewma"], 0.0);
    assert!(b["error_rate_ewma"].as_f64().unwrap() > 0.1, "{b}");
    assert_eq!(g["healthy"], true);
    for h in slow {
        assert_eq!(h.await.unwrap(), 200);
    }
}

#[tokio::test]
async fn the_route_timeout_holds_during_backoff() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    a.set_fail(503);
    b.set_fail(503);
    let config = format!(
        "upstreams:\n  app: {{ endpoints: [\"{}\", \"{}\"] }}\nroutes:\n  - {{ name: deadline_backoff, match: {{ path_prefix: / }}, upstream: app, timeout: 400ms, retry: {{ attempts: 3, on: [503], backoff: {{ base: 2s, max: 2s }} }} }}\n",
        a.url(),
        b.url()
    );
    let gw = TestGateway::start(&config).await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let t = std::time::Instant::now();
        let status = get(&client(), &gw.url("/x")).await.status;
        let took = t.elapsed();
        // A backoff is cut short at the deadline: 504 when the deadline
        // passed (never earlier), or the last 503 when the tries ran out.
        assert!(status == 504 || status == 503, "{status}");
        if status == 504 {
            assert!(took >= Duration::from_millis(400), "504 early: {took:?}");
        }
        assert!(
            took < Duration::from_millis(1900),
            "backoff not cut: {took:?}"
        );
        statuses.push(status);
    }
    assert!(statuses.contains(&504), "{statuses:?}");
}

#[tokio::test]
async fn a_per_try_timeout_is_retried_by_504_in_on() {
    let (slow, fast) = (Upstream::start("slow").await, Upstream::start("fast").await);
    slow.set_fail(200);
    slow.fail_delay_ms
        .store(8000, std::sync::atomic::Ordering::Relaxed);
    // A route name of its own: the retry counter is process-wide.
    let gw = TestGateway::start(
        &retry_config(
            &[slow.url(), fast.url()],
            "{ attempts: 1, on: [504], per_try_timeout: 1s, backoff: { base: 1ms, max: 1ms } }",
        )
        .replace("name: app,", "name: gateway_timeout,"),
    )
    .await;
    let c = client();
    for _ in 0..2 {
        let g = get(&c, &gw.url("/x")).await;
        assert_eq!((g.status, g.text()), (200, "fast".to_owned()));
    }
    assert!(slow.count() >= 1);
    let m = metrics_text(&gw).await;
    assert_eq!(
        metric(
            &m,
            r#"tollgate_retries_total{reason="timeout",route="gateway_timeout"}"#
        ),
        slow.count() as f64
    );
}

#[tokio::test]
async fn tries_go_on_until_the_route_deadline_and_504_comes_no_earlier() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    for u in [&a, &b] {
        u.set_fail(200);
        u.fail_delay_ms
            .store(5000, std::sync::atomic::Ordering::Relaxed);
    }
    let config = format!(
        "upstreams:\n  app: {{ endpoints: [\"{}\", \"{}\"] }}\nroutes:\n  - {{ name: deadline_tries, match: {{ path_prefix: / }}, upstream: app, timeout: 700ms, retry: {{ attempts: 10, on: [timeout], per_try_timeout: 300ms, backoff: {{ base: 1ms, max: 1ms }} }} }}\n",
        a.url(),
        b.url()
    );
    let gw = TestGateway::start(&config).await;
    let t = std::time::Instant::now();
    let g = get(&client(), &gw.url("/x")).await;
    let took = t.elapsed();
    assert_eq!(g.status, 504, "{}", g.text());
    assert_eq!(g.json()["error"], "upstream_timeout");
    assert!(
        took >= Duration::from_millis(700),
        "504 before the deadline: {took:?}"
    );
    assert!(took < Duration::from_millis(4000), "{took:?}");
    // Tries at about 0, 300 and 600 ms, the last with what remains as its
    // limit (two on a machine slow enough to pass 700 ms first); never more.
    let tries = a.count() + b.count();
    assert!((2..=3).contains(&tries), "tries made: {tries}");
}

#[tokio::test]
async fn health_state_survives_a_reload_that_keeps_the_upstream() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let config = format!(
        "upstreams:\n  app:\n    endpoints: [\"{}\", \"{}\"]\n    health_check: {{ path: /health, interval: 50ms, healthy_threshold: 50, unhealthy_threshold: 1 }}\nroutes:\n  - {{ name: app, match: {{ path_prefix: / }}, upstream: app }}\n",
        a.url(),
        b.url()
    );
    let gw = TestGateway::start(&config).await;
    let c = client();
    b.set_fail(503);
    wait_healthy(&gw, &b, 0.0).await;
    // Healthy again at the endpoint, but 50 passing checks are needed.
    b.set_fail(0);
    gw.write_config(
        &(config + "  - { name: extra, match: { path: /extra }, respond: { body: hi } }\n"),
    );
    assert_eq!(post(&c, &gw.admin_url("/reload"), "").await.status, 200);
    let before = non_health_hits(&b);
    for _ in 0..10 {
        assert_eq!(get(&c, &gw.url("/x")).await.text(), "a");
    }
    assert_eq!(
        non_health_hits(&b),
        before,
        "still out of rotation after the reload"
    );
}
