//! Request mirroring over real sockets: copies reach the shadow with the
//! live request's method, target, headers and body; bodies over
//! `max_body` and unfinished bodies are not copied; a shadow that never
//! answers holds only the mirror's own slots while the live route keeps
//! answering. Route names are unique: the metrics registry is the test
//! process's.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::support::*;

/// Generous bound for one live request: not a speed check, a hang guard
/// (a live request waiting on the shadow would wait for minutes).
const LIVE: Duration = Duration::from_secs(20);

/// A listener that accepts connections and never answers; returns its
/// URL and the number of connections it took.
async fn hanging_upstream() -> (String, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let n = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(s);
        }
    });
    (url, accepted)
}

async fn counter(gw: &TestGateway, route: &str, result: &str) -> f64 {
    let m = get(&client(), &gw.admin_url("/metrics")).await.text();
    metric(
        &m,
        &format!(r#"tollgate_mirror_requests_total{{result="{result}",route="{route}"}}"#),
    )
}

async fn counted(gw: &TestGateway, route: &str, result: &str, n: f64) {
    eventually(&format!("{route} {result} = {n}"), async || {
        counter(gw, route, result).await == n
    })
    .await;
}

#[tokio::test]
async fn copies_reach_the_shadow_and_its_answer_is_discarded() {
    let live = Upstream::start("live").await;
    let shadow = Upstream::start("shadow").await;
    let gw = TestGateway::start(&format!(
        r#"upstreams:
  live: {{ endpoints: ["{}"] }}
  shadow: {{ endpoints: ["{}"] }}
routes:
  - name: mirror_copies
    match: {{ path_prefix: /m }}
    upstream: live
    strip_prefix: /m
    request_headers: {{ set: {{ x-env: prod }} }}
    mirror: {{ upstream: shadow, max_body: 1KiB }}
  - {{ name: mirror_none, match: {{ path_prefix: /none }}, upstream: live, mirror: {{ upstream: shadow, percent: 0 }} }}
"#,
        live.url(),
        shadow.url()
    ))
    .await;
    let c = client();

    // A GET: the client gets the live answer, the shadow the same request.
    let g = get(&c, &gw.url("/m/a?x=1")).await;
    assert_eq!(g.status, 200);
    assert_eq!(g.text(), "live");
    eventually("the copy reached the shadow", async || shadow.count() == 1).await;
    let copy = shadow.last();
    let original = live.last();
    assert_eq!(copy.method, "GET");
    assert_eq!(copy.uri, "/a?x=1", "the target as sent upstream");
    assert_eq!(copy.headers["x-tollgate-mirror"], "1");
    assert_eq!(copy.headers["x-env"], "prod");
    assert_eq!(
        copy.headers["x-request-id"],
        original.headers["x-request-id"]
    );
    assert_eq!(copy.headers["x-request-id"], g.headers["x-request-id"]);
    assert!(original.headers.get("x-tollgate-mirror").is_none());

    // A POST: the shadow gets the body once it has ended.
    let g = post(&c, &gw.url("/m/echo"), "hello shadow").await;
    assert_eq!(g.status, 200);
    assert_eq!(g.text(), "hello shadow");
    eventually("the POST copy reached the shadow", async || {
        shadow.count() == 2
    })
    .await;
    let copy = shadow.last();
    assert_eq!(copy.method, "POST");
    assert_eq!(&copy.body[..], b"hello shadow");
    counted(&gw, "mirror_copies", "ok", 2.0).await;

    // A body over max_body is not copied: declared, or streamed chunked.
    let big = "x".repeat(2000);
    let g = post(&c, &gw.url("/m/echo"), &big).await;
    assert_eq!(g.status, 200);
    assert_eq!(g.text().len(), 2000);
    counted(&gw, "mirror_copies", "too_large", 1.0).await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let chunk = format!("{:x}\r\n{big}\r\n", big.len());
    s.write_all(
        format!("POST /m/echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{chunk}{chunk}0\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let resp = {
        use tokio::io::AsyncReadExt;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        String::from_utf8_lossy(&out).into_owned()
    };
    assert_eq!(raw_status(&resp), 200, "{resp}");
    counted(&gw, "mirror_copies", "too_large", 2.0).await;

    // A body the client abandons is never sent to the shadow.
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"POST /m/echo HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    eventually("the upload reached the live upstream", async || {
        live.count() == 5
    })
    .await;
    drop(s);
    counted(&gw, "mirror_copies", "incomplete", 1.0).await;

    // percent: 0 copies nothing.
    for _ in 0..5 {
        assert_eq!(get(&c, &gw.url("/none")).await.status, 200);
    }
    assert_eq!(shadow.count(), 2);
    for result in [
        "ok",
        "error",
        "timeout",
        "overloaded",
        "too_large",
        "incomplete",
    ] {
        assert_eq!(counter(&gw, "mirror_none", result).await, 0.0, "{result}");
    }
    // The shadow's 5xx changes nothing for the client.
    shadow.set_fail(503);
    let g = get(&c, &gw.url("/m/failing")).await;
    assert_eq!(g.status, 200);
    assert_eq!(g.text(), "live");
    counted(&gw, "mirror_copies", "error", 1.0).await;
    assert_eq!(counter(&gw, "mirror_copies", "ok").await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_shadow_never_slows_the_live_route() {
    let live = Upstream::start("live").await;
    let (hang, accepted) = hanging_upstream().await;
    let gw = TestGateway::start(&format!(
        r#"upstreams:
  live: {{ endpoints: ["{}"] }}
  hang: {{ endpoints: ["{hang}"] }}
routes:
  - name: mirror_hang
    match: {{ path_prefix: /h }}
    upstream: live
    mirror: {{ upstream: hang, max_concurrent: 4, timeout: 10m }}
  - name: mirror_short
    match: {{ path_prefix: /s }}
    upstream: live
    mirror: {{ upstream: hang, timeout: 50ms }}
"#,
        live.url()
    ))
    .await;
    let c = client();
    // Four copies take the mirror's four slots and hang for ten minutes;
    // every live request still answers, GETs and POSTs alike, and the
    // copies over the bulkhead are dropped, not queued.
    for i in 0..20 {
        let g = if i % 2 == 0 {
            tokio::time::timeout(LIVE, get(&c, &gw.url("/h/get"))).await
        } else {
            tokio::time::timeout(LIVE, post(&c, &gw.url("/h/echo"), "body")).await
        }
        .expect("the live route answers while the shadow hangs");
        assert_eq!(g.status, 200);
    }
    assert_eq!(live.count(), 20);
    assert_eq!(counter(&gw, "mirror_hang", "overloaded").await, 16.0);
    eventually("four copies were sent", async || {
        accepted.load(std::sync::atomic::Ordering::SeqCst) >= 4
    })
    .await;
    // The concurrent case: 16 live requests at once, all answered.
    let all = spawn_gets(&c, &gw.url("/h/x"), 16);
    for h in all {
        let status = tokio::time::timeout(LIVE, h).await.unwrap().unwrap();
        assert_eq!(status, 200);
    }
    assert_eq!(counter(&gw, "mirror_hang", "overloaded").await, 32.0);
    // A copy past its deadline counts as a timeout and frees its slot.
    assert_eq!(get(&c, &gw.url("/s")).await.status, 200);
    counted(&gw, "mirror_short", "timeout", 1.0).await;
    assert_eq!(get(&c, &gw.url("/s")).await.status, 200);
    counted(&gw, "mirror_short", "timeout", 2.0).await;
}

#[tokio::test]
async fn mirror_settings_are_checked_when_the_config_loads() {
    let cases = [
        (
            "{ name: r, match: { path: / }, respond: { body: x }, mirror: { upstream: a } }",
            "routes[0].mirror",
            "only a route that forwards",
        ),
        (
            "{ name: r, match: { path: / }, upstream: a, mirror: { upstream: nope } }",
            "routes[0].mirror.upstream",
            "unknown upstream \"nope\"",
        ),
        (
            "{ name: r, match: { path: / }, upstream: a, mirror: { upstream: a, percent: 150 } }",
            "routes[0].mirror.percent",
            "from 0 to 100",
        ),
        (
            "{ name: r, match: { path: / }, upstream: a, mirror: { upstream: a, max_concurrent: 0 } }",
            "routes[0].mirror.max_concurrent",
            "from 1 to 10000",
        ),
        (
            "{ name: r, match: { path: / }, upstream: a, mirror: { upstream: a, max_body: 1GiB } }",
            "routes[0].mirror.max_body",
            "at most 16MiB",
        ),
    ];
    for (route, field, message) in cases {
        let path = config_path();
        std::fs::write(
            &path,
            with_server(&format!(
                "upstreams:\n  a: {{ endpoints: [\"http://127.0.0.1:9\"] }}\nroutes:\n  - {route}\n"
            )),
        )
        .unwrap();
        let err = tollgate::config::load(&path, None).err().unwrap();
        let text = err.lines().join("\n");
        assert!(
            text.contains(field) && text.contains(message),
            "{route}: wanted {field}: {message}, got\n{text}"
        );
    }
}
