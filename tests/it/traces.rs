//! Distributed tracing over OTLP: spans reach a real OTLP receiver (gRPC
//! and HTTP/protobuf) with their parent/child links, attributes and the
//! trace ids the upstream saw; sampling follows the parent; a collector
//! that is down costs requests nothing and its spans are counted as
//! dropped.

use serde_json::json;

use crate::support::jwt::{SigningKey, now};
use crate::support::otlp::{Collector, attr, hex, named};
use crate::support::*;

const SECRET: &str = "tracing-test-secret-of-at-least-32-bytes";

/// The OTLP span kinds (opentelemetry-proto's `SpanKind`).
const INTERNAL: i32 = 1;
const SERVER: i32 = 2;
const CLIENT: i32 = 3;

/// Tracing to `collector` with `extra` settings, and one route `app`
/// to `up` with the route settings `route`.
fn traced(collector: &str, extra: &str, up: &str, route: &str) -> String {
    format!(
        "observability:\n  tracing: {{ endpoint: \"{collector}\", flush_interval: 20ms{extra} }}\nauth:\n  providers:\n    p: {{ algorithms: [HS256], secret: \"{SECRET}\" }}\nrate_limits:\n  per_ip: {{ key: client_ip, rate: 100/s, burst: 100 }}\ncache: {{}}\nupstreams:\n  app: {{ endpoints: [\"{up}\"] }}\nroutes:\n  - {{ name: app, match: {{ path_prefix: / }}, upstream: app{route} }}\n"
    )
}

/// The `traceparent` the upstream saw last: (trace id, parent id, flags).
fn upstream_traceparent(up: &Upstream) -> (String, String, String) {
    let tp = up.last().headers["traceparent"]
        .to_str()
        .unwrap()
        .to_owned();
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

/// Waits until trace `trace_id` has `n` spans at the collector.
async fn spans_of(
    collector: &Collector,
    trace_id: &str,
    n: usize,
) -> Vec<opentelemetry_proto::tonic::trace::v1::Span> {
    eventually(&format!("{n} spans of trace {trace_id}"), async || {
        collector.trace(trace_id).len() >= n
    })
    .await;
    let spans = collector.trace(trace_id);
    assert_eq!(spans.len(), n, "{spans:#?}");
    spans
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continued_trace_reaches_an_otlp_grpc_collector_with_a_span_per_stage() {
    let collector = Collector::start().await;
    let up = Upstream::start("app").await;
    let gw = TestGateway::start(&traced(
        &collector.url(),
        ", service_name: edge-test",
        &up.url(),
        ", auth: { provider: p }, rate_limit: [per_ip], cache: {}",
    ))
    .await;
    let token = SigningKey::hmac(SECRET).sign(&json!({"sub": "u", "exp": now() + 600}));
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let g = get_with(
        &client(),
        &gw.url("/orders/7?q=1"),
        &[
            ("traceparent", &format!("00-{trace}-00f067aa0ba902b7-01")),
            ("tracestate", "vendor=abc"),
            ("authorization", &format!("Bearer {token}")),
            ("user-agent", "trace-test/1"),
        ],
    )
    .await;
    assert_eq!(g.status, 200);
    // The upstream's parent is the gateway's attempt span, in the same trace.
    let (up_trace, up_parent, flags) = upstream_traceparent(&up);
    assert_eq!((up_trace.as_str(), flags.as_str()), (trace, "01"));
    assert_eq!(up.last().headers["tracestate"], "vendor=abc");

    let spans = spans_of(&collector, trace, 5).await;
    let exports = collector.exports();
    assert!(
        exports.iter().all(|e| e.path
            == "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
            && e.service == "edge-test"),
        "{exports:#?}"
    );
    let server = named(&spans, "GET app");
    assert_eq!(server.kind, SERVER);
    assert_eq!(
        hex(&server.parent_span_id),
        "00f067aa0ba902b7",
        "the caller's span"
    );
    assert_eq!(server.trace_state, "vendor=abc");
    for (key, value) in [
        ("http.request.method", "GET"),
        ("http.response.status_code", "200"),
        ("url.path", "/orders/7"),
        ("url.scheme", "http"),
        ("network.protocol.version", "1.1"),
        ("client.address", "127.0.0.1"),
        ("server.address", "127.0.0.1"),
        ("user_agent.original", "trace-test/1"),
        ("tollgate.route", "app"),
        ("tollgate.upstream", "app"),
        ("tollgate.attempts", "1"),
    ] {
        assert_eq!(attr(server, key).as_deref(), Some(value), "{key}");
    }
    assert_eq!(
        attr(server, "tollgate.request_id").as_deref(),
        Some(g.headers["x-request-id"].to_str().unwrap())
    );
    assert_eq!(
        attr(server, "server.port"),
        Some(gw.addr.port().to_string())
    );
    assert!(
        attr(server, "url.query").is_none(),
        "the query is not recorded"
    );
    assert!(server.start_time_unix_nano <= server.end_time_unix_nano);

    let server_id = hex(&server.span_id);
    for s in spans.iter().filter(|s| s.span_id != server.span_id) {
        assert_eq!(
            hex(&s.parent_span_id),
            server_id,
            "{} is a child of the server span",
            s.name
        );
        assert!(
            s.start_time_unix_nano >= server.start_time_unix_nano,
            "{}",
            s.name
        );
        assert!(
            s.end_time_unix_nano <= server.end_time_unix_nano,
            "{}",
            s.name
        );
    }
    let auth = named(&spans, "auth");
    assert_eq!(auth.kind, INTERNAL);
    assert_eq!(attr(auth, "tollgate.auth.result").as_deref(), Some("ok"));
    let limit = named(&spans, "rate_limit");
    assert_eq!(
        attr(limit, "tollgate.rate_limit.result").as_deref(),
        Some("ok")
    );
    assert_eq!(
        attr(limit, "tollgate.rate_limit.phase").as_deref(),
        Some("before_auth")
    );
    let cache = named(&spans, "cache_lookup");
    assert_eq!(attr(cache, "tollgate.cache.hit").as_deref(), Some("false"));
    let attempt = named(&spans, "upstream app");
    assert_eq!(attempt.kind, CLIENT);
    assert_eq!(hex(&attempt.span_id), up_parent, "the upstream's parent");
    assert_eq!(attr(attempt, "tollgate.attempt").as_deref(), Some("1"));
    assert_eq!(attr(attempt, "server.address"), Some(up.addr.to_string()));
    assert_eq!(
        attr(attempt, "http.response.status_code").as_deref(),
        Some("200")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_trace_reaches_an_otlp_http_collector_with_the_configured_headers() {
    let collector = Collector::start().await;
    let up = Upstream::start("app").await;
    let gw = TestGateway::start(&traced(
        &collector.url(),
        ", protocol: http, headers: { authorization: \"Bearer otlp-secret-value\" }",
        &up.url(),
        ", cache: { default_ttl: 60s }",
    ))
    .await;
    let c = client();
    assert_eq!(get(&c, &gw.url("/a")).await.status, 200);
    // A new trace: the upstream names it, with the gateway's attempt span
    // as its parent, sampled.
    let (trace, parent, flags) = upstream_traceparent(&up);
    assert_eq!(flags, "01");
    let spans = spans_of(&collector, &trace, 3).await;
    let server = named(&spans, "GET app");
    assert!(server.parent_span_id.is_empty(), "a root span");
    assert_eq!(hex(&named(&spans, "upstream app").span_id), parent);
    let export = &collector.exports()[0];
    assert_eq!(
        export.path, "/v1/traces",
        "`/v1/traces` added to a bare endpoint"
    );
    assert_eq!(export.headers["authorization"], "Bearer otlp-secret-value");
    assert_eq!(export.headers["content-type"], "application/x-protobuf");
    assert_eq!(export.service, "tollgate");

    // A hit: the cache answers, no upstream attempt.
    let g = get_with(
        &c,
        &gw.url("/a"),
        &[(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )],
    )
    .await;
    assert_eq!(g.status, 200);
    let spans = spans_of(&collector, "0af7651916cd43dd8448eb211c80319c", 2).await;
    let cache = named(&spans, "cache_lookup");
    assert_eq!(attr(cache, "tollgate.cache.hit").as_deref(), Some("true"));
    assert_eq!(
        attr(cache, "tollgate.cache.status"),
        Some(g.headers["cache-status"].to_str().unwrap().to_owned())
    );

    // The export headers are secrets: `GET /config` does not show them.
    let config = get(&c, &gw.admin_url("/config")).await.text();
    assert!(!config.contains("otlp-secret-value"), "{config}");
    assert!(config.contains("<redacted>"), "{config}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_follows_the_parent_and_the_ratio() {
    let collector = Collector::start().await;
    let up = Upstream::start("app").await;
    let gw = TestGateway::start(&traced(
        &collector.url(),
        ", sample_ratio: 0",
        &up.url(),
        "",
    ))
    .await;
    let c = client();
    // A new trace at ratio 0: not recorded, and upstream told so.
    assert_eq!(get(&c, &gw.url("/new")).await.status, 200);
    let (new_trace, _, flags) = upstream_traceparent(&up);
    assert_eq!(flags, "00");
    // A parent that was not sampled: not recorded, the flag kept.
    let unsampled = "11111111111111111111111111111111";
    let g = get_with(
        &c,
        &gw.url("/u"),
        &[(
            "traceparent",
            &format!("00-{unsampled}-2222222222222222-00"),
        )],
    )
    .await;
    assert_eq!(g.status, 200);
    assert_eq!(upstream_traceparent(&up).2, "00");
    // A sampled parent is always recorded, whatever the ratio.
    let sampled = "33333333333333333333333333333333";
    let g = get_with(
        &c,
        &gw.url("/s"),
        &[("traceparent", &format!("00-{sampled}-4444444444444444-01"))],
    )
    .await;
    assert_eq!(g.status, 200);
    spans_of(&collector, sampled, 2).await;
    // Exports are in order: what the first two requests would have queued
    // would be there by now.
    assert!(collector.trace(&new_trace).is_empty());
    assert!(collector.trace(unsampled).is_empty());
    assert_eq!(collector.spans().len(), 2, "{:#?}", collector.spans());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_retry_is_an_attempt_span_and_the_upstream_sees_its_own_parent() {
    let collector = Collector::start().await;
    let up = Upstream::start("app").await;
    up.set_fail(503);
    let gw = TestGateway::start(&traced(
        &collector.url(),
        "",
        &up.url(),
        ", retry: { attempts: 1, on: [503], backoff: { base: 1ms, max: 1ms } }",
    ))
    .await;
    let trace = "55555555555555555555555555555555";
    let g = get_with(
        &client(),
        &gw.url("/r"),
        &[("traceparent", &format!("00-{trace}-6666666666666666-01"))],
    )
    .await;
    assert_eq!(g.status, 503);
    let spans = spans_of(&collector, trace, 3).await;
    let server = named(&spans, "GET app");
    assert_eq!(
        attr(server, "http.response.status_code").as_deref(),
        Some("503")
    );
    assert_eq!(attr(server, "tollgate.attempts").as_deref(), Some("2"));
    // Status code 2 is Error.
    assert_eq!(server.status.as_ref().map(|s| s.code), Some(2));
    let mut attempts: Vec<_> = spans.iter().filter(|s| s.kind == CLIENT).collect();
    attempts.sort_by_key(|s| attr(s, "tollgate.attempt"));
    assert_eq!(attempts.len(), 2);
    let seen: Vec<String> = up
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.headers["traceparent"].to_str().unwrap().to_owned())
        .collect();
    for (n, (span, tp)) in attempts.iter().zip(&seen).enumerate() {
        assert_eq!(attr(span, "tollgate.attempt"), Some((n + 1).to_string()));
        assert_eq!(
            attr(span, "http.response.status_code").as_deref(),
            Some("503")
        );
        assert_eq!(
            *tp,
            format!("00-{trace}-{}-01", hex(&span.span_id)),
            "try {}",
            n + 1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_costs_requests_nothing_and_its_spans_are_counted_dropped() {
    // A collector that takes connections and never answers: each export
    // waits out its timeout while the queue fills.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let up = Upstream::start("app").await;
    // The binary: its metrics registry is its own.
    let gw = Binary::start(&format!(
        "{}observability:\n  tracing: {{ endpoint: \"http://{}\", flush_interval: 20ms, timeout: 1s, max_queue_spans: 4, max_export_batch: 2 }}\n{}",
        server_with(""),
        silent.local_addr().unwrap(),
        proxy_all(&up.url())
    ));
    let c = client();
    for i in 0..20 {
        let g = get(&c, &gw.url(&format!("/{i}"))).await;
        assert_eq!((g.status, g.text()), (200, "app".to_owned()));
    }
    eventually("spans counted as dropped for both reasons", async || {
        let m = get(&c, &format!("http://{}/metrics", gw.admin))
            .await
            .text();
        metric(
            &m,
            r#"tollgate_trace_spans_dropped_total{reason="export_failed"}"#,
        ) > 0.0
            && metric(
                &m,
                r#"tollgate_trace_spans_dropped_total{reason="queue_full"}"#,
            ) > 0.0
    })
    .await;
    let m = get(&c, &format!("http://{}/metrics", gw.admin))
        .await
        .text();
    assert_eq!(metric(&m, "tollgate_trace_spans_exported_total"), 0.0);
    // 20 requests, 2 spans each: every one exported, dropped or queued.
    let dropped = metric(
        &m,
        r#"tollgate_trace_spans_dropped_total{reason="export_failed"}"#,
    ) + metric(
        &m,
        r#"tollgate_trace_spans_dropped_total{reason="queue_full"}"#,
    );
    assert!((36.0..=40.0).contains(&dropped), "{dropped}");
}

#[tokio::test]
async fn tracing_settings_are_checked_with_their_path() {
    for (tracing, path) in [
        (
            "{ endpoint: \"collector:4317\" }",
            "observability.tracing.endpoint",
        ),
        (
            "{ endpoint: \"http://c:4317/x\" }",
            "observability.tracing.endpoint",
        ),
        (
            "{ endpoint: \"http://c:4317\", sample_ratio: 1.5 }",
            "observability.tracing.sample_ratio",
        ),
        (
            "{ endpoint: \"http://c:4317\", max_queue_spans: 10, max_export_batch: 11 }",
            "observability.tracing.max_export_batch",
        ),
        (
            "{ endpoint: \"http://c:4317\", headers: { \"bad name\": x } }",
            "observability.tracing.headers.bad name",
        ),
        (
            "{ endpoint: \"http://c:4317\", timeout: 0s }",
            "observability.tracing.timeout",
        ),
    ] {
        let path_file = config_path();
        std::fs::write(
            &path_file,
            format!(
                "{}observability:\n  tracing: {tracing}\n{}",
                server_with(""),
                proxy_all("http://127.0.0.1:1")
            ),
        )
        .unwrap();
        let (code, _, err) = tollgate_cli(&["validate", "-c", path_file.to_str().unwrap()]);
        assert_ne!(code, 0, "{tracing}");
        assert!(err.contains(path), "{tracing}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_an_unchanged_tracer_and_replaces_a_changed_one() {
    let (a, b) = (Collector::start().await, Collector::start().await);
    let up = Upstream::start("app").await;
    let gw = TestGateway::start(&traced(&a.url(), "", &up.url(), "")).await;
    let c = client();
    let trace = |n: u32| format!("{n:032x}");
    let sampled = |n: u32| format!("00-{}-7777777777777777-01", trace(n));
    get_with(&c, &gw.url("/1"), &[("traceparent", &sampled(1))]).await;
    spans_of(&a, &trace(1), 2).await;
    // Another route timeout: the tracer is kept, spans still go to `a`.
    gw.write_config(&traced(&a.url(), "", &up.url(), ", timeout: 9s"));
    assert_eq!(post(&c, &gw.admin_url("/reload"), "").await.status, 200);
    get_with(&c, &gw.url("/2"), &[("traceparent", &sampled(2))]).await;
    spans_of(&a, &trace(2), 2).await;
    // Another endpoint: a new tracer sends to `b`.
    gw.write_config(&traced(&b.url(), "", &up.url(), ", timeout: 9s"));
    assert_eq!(post(&c, &gw.admin_url("/reload"), "").await.status, 200);
    get_with(&c, &gw.url("/3"), &[("traceparent", &sampled(3))]).await;
    spans_of(&b, &trace(3), 2).await;
    assert!(a.trace(&trace(3)).is_empty());
}
