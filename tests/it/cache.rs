//! The response cache over real sockets: hits with Age and Cache-Status,
//! HEAD from GET, the storage rules (private, Set-Cookie, credentials,
//! error statuses, size), per-tenant keys, request directives, and a hit
//! still counting against rate limits.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpListener;

use crate::support::jwt::{SigningKey, now};
use crate::support::*;

const SECRET: &str = "cache-test-secret-of-at-least-32-bytes";

/// An origin that answers `/<anything>?cc=..&status=..&cookie=1&size=N`
/// with that Cache-Control, status, a Set-Cookie, and an N-byte body
/// (default: the hit number), counting hits.
async fn origin() -> (String, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicU64::new(0));
    let h = Arc::clone(&hits);
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let h = Arc::clone(&h);
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let n = h.fetch_add(1, Ordering::SeqCst) + 1;
                    async move {
                        let q = req.uri().query().unwrap_or("").to_owned();
                        let inm = req
                            .headers()
                            .get("if-none-match")
                            .map(|v| v.to_str().unwrap().to_owned());
                        let get = |k: &str| {
                            q.split('&')
                                .filter_map(|kv| kv.split_once('='))
                                .find(|(key, _)| *key == k)
                                .map(|(_, v)| v.replace("%3D", "=").replace("%2C", ","))
                        };
                        if let Some(ms) = get("delay").and_then(|d| d.parse::<u64>().ok()) {
                            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                        }
                        let body = match get("size").and_then(|s| s.parse::<usize>().ok()) {
                            Some(size) => Bytes::from(vec![b'x'; size]),
                            None => Bytes::from(format!("response {n}")),
                        };
                        let mut r = Response::new(Full::new(body));
                        if let Some(cc) = get("cc") {
                            r.headers_mut().insert("cache-control", cc.parse().unwrap());
                        }
                        if let Some(s) = get("status") {
                            *r.status_mut() =
                                http::StatusCode::from_u16(s.parse().unwrap()).unwrap();
                        }
                        // `validators`: a fixed ETag and Last-Modified;
                        // `etag=hit`: a new ETag on every hit. A matching
                        // If-None-Match gets 304 with no body.
                        let etag = if get("validators").is_some() {
                            r.headers_mut().insert(
                                "last-modified",
                                "Wed, 25 Nov 2026 10:00:00 GMT".parse().unwrap(),
                            );
                            Some("\"v1\"".to_owned())
                        } else {
                            get("etag").map(|_| format!("\"v{n}\""))
                        };
                        if let Some(t) = &etag {
                            r.headers_mut().insert("etag", t.parse().unwrap());
                            if inm.as_ref() == Some(t) {
                                *r.status_mut() = http::StatusCode::NOT_MODIFIED;
                                *r.body_mut() = Full::new(Bytes::new());
                            }
                        }
                        if let Some(v) = get("vary") {
                            r.headers_mut().insert("vary", v.parse().unwrap());
                        }
                        if get("cookie").is_some() {
                            r.headers_mut().insert("set-cookie", "s=1".parse().unwrap());
                        }
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (format!("http://{addr}"), hits)
}

fn config(up: &str, route_cache: &str) -> String {
    format!(
        "cache: {{ max_size: 1MiB, max_object_size: 1KiB }}\nupstreams:\n  app: {{ endpoints: [\"{up}\"] }}\nauth:\n  providers:\n    p: {{ algorithms: [HS256], secret: \"{SECRET}\", tenant_claim: tenant }}\nrate_limits:\n  two: {{ key: client_ip, rate: 1/min, burst: 2 }}\nroutes:\n  - {{ name: limited, match: {{ path_prefix: /limited }}, upstream: app, rate_limit: [two], cache: {{}} }}\n  - {{ name: tenants, match: {{ path_prefix: /tenants }}, upstream: app, auth: {{ provider: p }}, cache: {{ key: [tenant], cache_authorized: true }} }}\n  - {{ name: app, match: {{ path_prefix: / }}, upstream: app, cache: {route_cache} }}\n"
    )
}

/// One cached route `name` over the origin, with `route_cache` as its
/// `cache:` settings.
fn one_route(up: &str, name: &str, route_cache: &str) -> String {
    format!(
        "cache: {{}}\nupstreams:\n  app: {{ endpoints: [\"{up}\"] }}\nroutes:\n  - {{ name: {name}, match: {{ path_prefix: / }}, upstream: app, cache: {route_cache} }}\n"
    )
}

#[tokio::test]
async fn a_stored_response_is_served_with_age_and_head_from_get() {
    let (up, hits) = origin().await;
    let gw = TestGateway::start(&config(&up, "{}")).await;
    let c = client();
    let url = gw.url("/a?cc=max-age%3D60");
    let first = get(&c, &url).await;
    assert_eq!((first.status, first.text()), (200, "response 1".to_owned()));
    assert_eq!(first.headers["cache-status"], "tollgate; fwd=miss; stored");
    let second = get(&c, &url).await;
    assert_eq!(
        (second.status, second.text()),
        (200, "response 1".to_owned())
    );
    let status = second.headers["cache-status"].to_str().unwrap();
    assert!(
        ["tollgate; hit; ttl=60", "tollgate; hit; ttl=59"].contains(&status),
        "{status}"
    );
    assert_eq!(second.headers["age"], "0");
    assert_eq!(second.headers["cache-control"], "max-age=60");
    // HEAD from the stored GET.
    let head = send(
        &c,
        Request::head(&url).body(Full::new(Bytes::new())).unwrap(),
    )
    .await;
    assert_eq!((head.status, head.body.len()), (200, 0));
    assert!(
        head.headers["cache-status"]
            .to_str()
            .unwrap()
            .starts_with("tollgate; hit")
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    // Another query is another key.
    assert_eq!(
        get(&c, &gw.url("/a?cc=max-age%3D60&v=2")).await.text(),
        "response 2"
    );
    // Request no-cache goes to the origin (and stores the new answer).
    let g = get_with(&c, &url, &[("cache-control", "no-cache")]).await;
    assert_eq!(g.text(), "response 3");
    assert_eq!(get(&c, &url).await.text(), "response 3");
    let m = get(&c, &gw.admin_url("/metrics")).await.text();
    assert!(
        metric(
            &m,
            r#"tollgate_cache_requests_total{result="hit",route="app"}"#
        ) >= 3.0
    );
}

#[tokio::test]
async fn what_must_not_be_stored_is_not() {
    let (up, hits) = origin().await;
    let gw = TestGateway::start(&config(&up, "{ default_ttl: 60s }")).await;
    let c = client();
    let twice = |path: &'static str, headers: &'static [(&'static str, &'static str)]| {
        let (c, url) = (c.clone(), gw.url(path));
        async move {
            let a = get_with(&c, &url, headers).await.text();
            let b = get_with(&c, &url, headers).await.text();
            a != b
        }
    };
    assert!(
        twice("/p?cc=private%2C%20max-age%3D60", &[]).await,
        "private"
    );
    assert!(
        twice("/c?cc=max-age%3D60&cookie=1", &[]).await,
        "set-cookie"
    );
    assert!(twice("/n?cc=no-store", &[]).await, "no-store");
    assert!(
        twice("/e?status=404", &[]).await,
        "404 without explicit freshness"
    );
    assert!(
        !twice("/e2?status=404&cc=max-age%3D60", &[]).await,
        "404 with freshness is stored"
    );
    assert!(!twice("/d", &[]).await, "200 with default_ttl is stored");
    assert!(
        twice("/z?status=503&cc=max-age%3D60", &[]).await,
        "503 never"
    );
    assert!(
        twice("/auth?cc=max-age%3D60", &[("authorization", "Bearer x")]).await,
        "authorization"
    );
    assert!(
        !twice(
            "/pub?cc=public%2C%20max-age%3D60",
            &[("authorization", "Bearer x")]
        )
        .await,
        "public with authorization"
    );
    assert!(
        twice("/ck?cc=max-age%3D60", &[("cookie", "session=1")]).await,
        "cookie (web cache deception)"
    );
    let before = hits.load(Ordering::SeqCst);
    for _ in 0..2 {
        let g = get(&c, &gw.url("/big?cc=max-age%3D60&size=4000")).await;
        assert_eq!(g.body.len(), 4000);
        assert_eq!(g.headers["cache-status"], "tollgate; fwd=miss");
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        before + 2,
        "over max_object_size"
    );
    assert!(hits.load(Ordering::SeqCst) > 10);
    // only-if-cached on a miss: 504.
    let g = get_with(
        &c,
        &gw.url("/never?cc=max-age%3D60"),
        &[("cache-control", "only-if-cached")],
    )
    .await;
    assert_eq!(g.status, 504);
    assert_eq!(g.json()["error"], "not_cached");
}

#[tokio::test]
async fn tenants_get_their_own_entries_and_hits_still_count_against_limits() {
    let (up, hits) = origin().await;
    let gw = TestGateway::start(&config(&up, "{}")).await;
    let c = client();
    let token = |t: &str| {
        format!(
            "Bearer {}",
            SigningKey::hmac(SECRET).sign(&json!({"sub": "u", "tenant": t, "exp": now() + 600}))
        )
    };
    let (acme, other) = (token("acme"), token("other"));
    let url = gw.url("/tenants/x?cc=max-age%3D60");
    let a1 = get_with(&c, &url, &[("authorization", &acme)]).await.text();
    let a2 = get_with(&c, &url, &[("authorization", &acme)]).await.text();
    let o1 = get_with(&c, &url, &[("authorization", &other)])
        .await
        .text();
    assert_eq!(a1, a2, "acme's entry");
    assert_ne!(a1, o1, "never another tenant's");
    // A hit still takes from the bucket: the third request is 429.
    let url = gw.url("/limited?cc=max-age%3D60");
    assert_eq!(get(&c, &url).await.status, 200);
    let hit = get(&c, &url).await;
    assert!(
        hit.headers["cache-status"]
            .to_str()
            .unwrap()
            .starts_with("tollgate; hit")
    );
    let g = get(&c, &url).await;
    assert_eq!(g.status, 429);
    assert_eq!(
        g.headers["cache-status"],
        "tollgate; fwd=bypass; detail=rate_limited"
    );
    let before = hits.load(Ordering::SeqCst);
    assert_eq!(
        get(&c, &url).await.status,
        429,
        "a 429 is never stored or served as a hit"
    );
    assert_eq!(hits.load(Ordering::SeqCst), before);
}

#[tokio::test]
async fn concurrent_misses_for_one_key_reach_the_origin_once() {
    let (up, hits) = origin().await;
    let gw = TestGateway::start(&config(&up, "{}")).await;
    let c = client();
    let all = spawn_gets(&c, &gw.url("/slow?cc=max-age%3D60&delay=300"), 100);
    for h in all {
        assert_eq!(h.await.unwrap(), 200);
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "one origin request for 100 clients"
    );
    // Not storable: the waiters go to the origin themselves afterwards.
    let all = spawn_gets(&c, &gw.url("/private?cc=private&delay=100"), 5);
    for h in all {
        assert_eq!(h.await.unwrap(), 200);
    }
    assert_eq!(hits.load(Ordering::SeqCst), 6);
}

#[tokio::test]
async fn stale_entries_stand_in_when_the_upstream_fails() {
    let up = Upstream::start("app").await;
    let yaml = format!(
        "cache: {{}}\nupstreams:\n  app: {{ endpoints: [\"{}\"] }}\nroutes:\n  - {{ name: sie, match: {{ path_prefix: /sie }}, upstream: app, cache: {{ default_ttl: 1s, stale_if_error: 5m }} }}\n  - {{ name: plain, match: {{ path_prefix: / }}, upstream: app, cache: {{ default_ttl: 1s }} }}\n",
        up.url()
    );
    let gw = TestGateway::start(&yaml).await;
    let c = client();
    for path in ["/sie/a", "/plain/a"] {
        let g = get(&c, &gw.url(path)).await;
        assert_eq!(g.headers["cache-status"], "tollgate; fwd=miss; stored");
    }
    tokio::time::sleep(PAST_ONE_SECOND).await;
    up.set_fail(503);
    let g = get(&c, &gw.url("/sie/a")).await;
    assert_eq!((g.status, g.text()), (200, "app".to_owned()));
    assert_eq!(
        g.headers["cache-status"],
        "tollgate; fwd=stale; fwd-status=503"
    );
    assert!(g.headers["age"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    let g = get(&c, &gw.url("/plain/a")).await;
    assert_eq!(g.status, 503, "no stale-if-error on this route");
    // The upstream gone entirely: still covered.
    up.stop();
    let addr = up.addr;
    eventually("the upstream refuses connections", async || {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
    let g = get(&c, &gw.url("/sie/a")).await;
    assert_eq!((g.status, g.text()), (200, "app".to_owned()));
}

#[tokio::test]
async fn the_admin_purge_drops_entries_under_a_prefix() {
    let (up, _) = origin().await;
    let gw = TestGateway::start(&config(&up, "{}")).await;
    let c = client();
    for p in [
        "/catalog/a?cc=max-age%3D60",
        "/catalog/b?cc=max-age%3D60",
        "/other?cc=max-age%3D60",
    ] {
        get(&c, &gw.url(p)).await;
        let again = get(&c, &gw.url(p)).await;
        assert!(
            again.headers["cache-status"]
                .to_str()
                .unwrap()
                .starts_with("tollgate; hit")
        );
    }
    let r = post(
        &c,
        &gw.admin_url("/cache/purge"),
        r#"{"route": "app", "prefix": "/catalog"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["purged"], 2);
    let status = |p: &'static str| {
        let (c, url) = (c.clone(), gw.url(p));
        async move {
            get(&c, &url).await.headers["cache-status"]
                .to_str()
                .unwrap()
                .to_owned()
        }
    };
    assert_eq!(
        status("/catalog/a?cc=max-age%3D60").await,
        "tollgate; fwd=miss; stored"
    );
    assert!(
        status("/other?cc=max-age%3D60")
            .await
            .starts_with("tollgate; hit")
    );
    let stats = get(&c, &gw.admin_url("/cache/stats")).await.json();
    assert!(stats["entries"].as_u64().unwrap() >= 2, "{stats}");
    assert!(stats["bytes"].as_u64().unwrap() > 0);
    let r = post(&c, &gw.admin_url("/cache/purge"), r#"{"all": true}"#).await;
    assert!(r.json()["purged"].as_u64().unwrap() >= 2);
    assert_eq!(
        status("/other?cc=max-age%3D60").await,
        "tollgate; fwd=miss; stored"
    );
}

#[tokio::test]
async fn responses_that_vary_are_stored_per_variant() {
    let (up, hits) = origin().await;
    let gw = TestGateway::start(&config(&up, "{}")).await;
    let c = client();
    let url = gw.url("/v?cc=max-age%3D60&vary=accept-language");
    let lang = |l: &'static str| {
        let (c, url) = (c.clone(), url.clone());
        async move {
            let g = get_with(&c, &url, &[("accept-language", l)]).await;
            (
                g.text(),
                g.headers["cache-status"].to_str().unwrap().to_owned(),
            )
        }
    };
    let (en, first) = lang("en").await;
    assert_eq!(first, "tollgate; fwd=miss; stored");
    let (en2, status) = lang("en").await;
    assert_eq!(en2, en);
    assert!(status.starts_with("tollgate; hit"), "{status}");
    let (de, status) = lang("de").await;
    assert_ne!(de, en);
    assert_eq!(status, "tollgate; fwd=miss; stored");
    assert_eq!(lang("de").await.0, de);
    assert_eq!(lang("en").await.0, en, "both variants kept");
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn unsafe_requests_invalidate_and_unkeyed_headers_cannot_poison() {
    let (up, hits) = origin().await;
    let gw = TestGateway::start(&config(&up, "{}")).await;
    let c = client();
    let url = gw.url("/item?cc=max-age%3D60");
    let first = get(&c, &url).await.text();
    assert_eq!(get(&c, &url).await.text(), first, "stored");
    // A successful POST to the same URL drops it.
    assert_eq!(post(&c, &url, "update").await.status, 200);
    let after = get(&c, &url).await.text();
    assert_ne!(after, first, "invalidated by the POST");
    // Poisoning attempts: unkeyed headers cannot plant or change a body,
    // and URL/method override headers never reach the origin.
    let before = hits.load(Ordering::SeqCst);
    let g = get_with(
        &c,
        &url,
        &[
            ("x-forwarded-host", "evil.example"),
            ("x-original-url", "/admin"),
        ],
    )
    .await;
    assert_eq!(g.text(), after, "served from the stored entry, unchanged");
    assert_eq!(hits.load(Ordering::SeqCst), before);
    let fresh = gw.url("/other-item?cc=max-age%3D60");
    get_with(
        &c,
        &fresh,
        &[
            ("x-original-url", "/admin"),
            ("x-http-method-override", "DELETE"),
        ],
    )
    .await;
    let bad = gw.url("/with-override?cc=max-age%3D60");
    let _ = get_with(&c, &bad, &[("x-rewrite-url", "/admin")]).await;
    let m = get(&c, &gw.admin_url("/metrics")).await.text();
    assert!(metric(&m, r#"tollgate_cache_stores_total"#) >= 3.0);
}

#[tokio::test]
async fn conditional_requests_get_304_from_a_fresh_entry() {
    let (up, hits) = origin().await;
    let gw = TestGateway::start(&config(&up, "{}")).await;
    let c = client();
    let url = gw.url("/cond?cc=max-age%3D60&validators=1");
    assert_eq!(get(&c, &url).await.status, 200);
    let g = get_with(&c, &url, &[("if-none-match", "\"x\", W/\"v1\"")]).await;
    assert_eq!((g.status, g.body.len()), (304, 0));
    assert_eq!(g.headers["etag"], "\"v1\"");
    let g = get_with(&c, &url, &[("if-none-match", "\"other\"")]).await;
    assert_eq!(g.status, 200);
    let g = get_with(
        &c,
        &url,
        &[("if-modified-since", "Wed, 25 Nov 2026 11:00:00 GMT")],
    )
    .await;
    assert_eq!(g.status, 304);
    let g = get_with(
        &c,
        &url,
        &[("if-modified-since", "Wed, 25 Nov 2026 09:00:00 GMT")],
    )
    .await;
    assert_eq!(g.status, 200);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    tokio::time::sleep(PAST_ONE_SECOND).await;
    let m = get(&c, &gw.admin_url("/metrics")).await.text();
    assert!(metric(&m, "tollgate_cache_entries") >= 1.0);
    assert!(metric(&m, "tollgate_cache_bytes") > 0.0);
}

#[tokio::test]
async fn stale_while_revalidate_serves_stale_at_once_and_refreshes_once() {
    let (up, hits) = origin().await;
    let gw = TestGateway::start(&one_route(
        &up,
        "swr",
        "{ default_ttl: 1s, stale_while_revalidate: 30s }",
    ))
    .await;
    let c = client();
    let url = gw.url("/s?delay=200");
    assert_eq!(get(&c, &url).await.text(), "response 1");
    tokio::time::sleep(PAST_ONE_SECOND).await;
    // Stale: answered at once (the origin takes 200ms), one refresh starts.
    let t = std::time::Instant::now();
    let all = spawn_gets(&c, &url, 5);
    for h in all {
        assert_eq!(h.await.unwrap(), 200);
    }
    assert!(
        t.elapsed() < std::time::Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
    let g = get(&c, &url).await;
    assert_eq!(
        g.headers["cache-status"],
        "tollgate; fwd=stale; detail=revalidating"
    );
    let mut g = get(&c, &url).await;
    eventually("the background refresh is stored", async || {
        g = get(&c, &url).await;
        g.text() == "response 2"
    })
    .await;
    assert!(
        g.headers["cache-status"]
            .to_str()
            .unwrap()
            .starts_with("tollgate; hit")
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        2,
        "one refresh for six stale answers"
    );
}

#[tokio::test]
async fn stale_while_revalidate_from_the_response_is_honoured() {
    let (up, hits) = origin().await;
    let gw = TestGateway::start(&one_route(&up, "swr", "{}")).await;
    let c = client();
    let url = gw.url("/s?cc=max-age%3D1%2Cstale-while-revalidate%3D30");
    assert_eq!(get(&c, &url).await.text(), "response 1");
    tokio::time::sleep(PAST_ONE_SECOND).await;
    let g = get(&c, &url).await;
    assert_eq!(g.text(), "response 1");
    assert_eq!(
        g.headers["cache-status"],
        "tollgate; fwd=stale; detail=revalidating"
    );
    eventually("the background refresh is stored", async || {
        get(&c, &url).await.text() == "response 2"
    })
    .await;
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn stale_entries_are_revalidated_and_a_304_refreshes_them() {
    let (up, hits) = origin().await;
    let gw = TestGateway::start(&one_route(&up, "reval", "{}")).await;
    let c = client();
    let url = gw.url("/reval?cc=max-age%3D1&validators=1");
    let first = get(&c, &url).await;
    assert_eq!(first.text(), "response 1");
    tokio::time::sleep(PAST_ONE_SECOND).await;
    // Stale: the upstream is asked with If-None-Match and answers 304;
    // the stored body goes out with the refreshed headers.
    let g = get(&c, &url).await;
    assert_eq!(g.status, 200);
    assert_eq!(g.text(), "response 1");
    assert_eq!(
        g.headers["cache-status"],
        "tollgate; fwd=stale; fwd-status=304; stored"
    );
    assert_eq!(g.headers["etag"], "\"v1\"");
    assert_eq!(g.headers["content-length"], "10");
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    // Fresh again for max-age.
    let g = get(&c, &url).await;
    assert!(
        g.headers["cache-status"]
            .to_str()
            .unwrap()
            .starts_with("tollgate; hit"),
        "{:?}",
        g.headers
    );
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    // A request that asks for a check revalidates a fresh entry too.
    let g = get_with(&c, &url, &[("cache-control", "no-cache")]).await;
    assert_eq!(g.text(), "response 1");
    assert_eq!(
        g.headers["cache-status"],
        "tollgate; fwd=request; fwd-status=304; stored"
    );
    // The client's own conditional request is passed on as it is.
    let g = get_with(
        &c,
        &url,
        &[("cache-control", "no-cache"), ("if-none-match", "\"v0\"")],
    )
    .await;
    assert_eq!(g.status, 200);
    assert_eq!(g.text(), "response 4");
    let m = get(&c, &gw.admin_url("/metrics")).await.text();
    assert_eq!(
        metric(
            &m,
            r#"tollgate_cache_requests_total{result="revalidated",route="reval"}"#
        ),
        2.0
    );
}

#[tokio::test]
async fn a_changed_answer_to_revalidation_replaces_the_entry() {
    let (up, hits) = origin().await;
    let gw = TestGateway::start(&config(&up, "{}")).await;
    let c = client();
    let url = gw.url("/changes?cc=max-age%3D1&etag=hit");
    assert_eq!(get(&c, &url).await.text(), "response 1");
    tokio::time::sleep(PAST_ONE_SECOND).await;
    let g = get(&c, &url).await;
    assert_eq!(g.text(), "response 2");
    assert_eq!(g.headers["etag"], "\"v2\"");
    assert_eq!(
        g.headers["cache-status"],
        "tollgate; fwd=stale; fwd-status=200; stored"
    );
    let g = get(&c, &url).await;
    assert_eq!(g.text(), "response 2");
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn no_cache_responses_are_stored_and_revalidated_on_every_use() {
    let (up, hits) = origin().await;
    let gw = TestGateway::start(&config(&up, "{}")).await;
    let c = client();
    let url = gw.url("/nc?cc=no-cache&validators=1&delay=200");
    let g = get(&c, &url).await;
    assert_eq!(g.headers["cache-status"], "tollgate; fwd=miss; stored");
    for n in 2..=3 {
        let g = get(&c, &url).await;
        assert_eq!(g.text(), "response 1");
        assert_eq!(
            g.headers["cache-status"],
            "tollgate; fwd=stale; fwd-status=304; stored"
        );
        assert_eq!(hits.load(Ordering::SeqCst), n);
    }
    // Concurrent uses share one revalidation.
    let all = spawn_gets(&c, &url, 20);
    for h in all {
        assert_eq!(h.await.unwrap(), 200);
    }
    assert_eq!(hits.load(Ordering::SeqCst), 4);
    // Without validators there is nothing to revalidate: not stored.
    let g = get(&c, &gw.url("/nc2?cc=no-cache")).await;
    assert_eq!(g.headers["cache-status"], "tollgate; fwd=miss");
}

#[tokio::test]
async fn clients_that_leave_do_not_cost_the_others_their_coalesced_fetch() {
    use tokio::io::AsyncWriteExt;
    let (up, hits) = origin().await;
    let gw = TestGateway::start(&config(&up, "{}")).await;
    let c = client();
    let path = "/leave?cc=max-age%3D60&delay=300";
    // The leader's client leaves while its fetch runs: one waiter takes
    // the fetch over, the rest keep waiting for it.
    let mut leader = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    leader
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .await
        .unwrap();
    eventually("the leader's fetch reached the origin", async || {
        hits.load(Ordering::SeqCst) == 1
    })
    .await;
    let waiters = spawn_gets(&c, &gw.url(path), 10);
    // A waiter that leaves changes nothing for the rest.
    let quitter = spawn_gets(&c, &gw.url(path), 1);
    let running = gw.gw.as_ref().unwrap();
    eventually("the waiters and the quitter are in", async || {
        running.requests_in_progress() == 12
    })
    .await;
    quitter[0].abort();
    drop(leader);
    for h in waiters {
        assert_eq!(h.await.unwrap(), 200);
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        2,
        "the abandoned fetch and the one that took over"
    );
    let g = get(&c, &gw.url(path)).await;
    assert!(
        g.headers["cache-status"]
            .to_str()
            .unwrap()
            .starts_with("tollgate; hit")
    );
}

#[tokio::test]
async fn every_response_on_a_cached_route_carries_cache_status() {
    let (up, _) = origin().await;
    let yaml = format!(
        "cache: {{}}\nupstreams:\n  app: {{ endpoints: [\"{up}\"] }}\n  gone: {{ endpoints: [\"http://127.0.0.1:1\"] }}\nroutes:\n  - {{ name: down, match: {{ path_prefix: /down }}, upstream: gone, cache: {{}} }}\n  - {{ name: app, match: {{ path_prefix: / }}, upstream: app, cache: {{}} }}\n"
    );
    let gw = TestGateway::start(&yaml).await;
    let c = client();
    let status = |g: &Got| g.headers["cache-status"].to_str().unwrap().to_owned();
    let g = post(&c, &gw.url("/p?cc=max-age%3D60"), "x").await;
    assert_eq!(status(&g), "tollgate; fwd=bypass");
    let g = get_with(
        &c,
        &gw.url("/n?cc=max-age%3D60"),
        &[("cache-control", "no-store")],
    )
    .await;
    assert_eq!(status(&g), "tollgate; fwd=bypass");
    let head = send(
        &c,
        Request::head(gw.url("/h?cc=max-age%3D60"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(status(&head), "tollgate; fwd=miss");
    let g = get(&c, &gw.url("/down")).await;
    assert_eq!(g.status, 502);
    assert_eq!(status(&g), "tollgate; fwd=miss; detail=upstream_refused");
}

#[tokio::test]
async fn the_store_stays_within_max_size_by_evicting() {
    let (up, _) = origin().await;
    let yaml = format!(
        "cache: {{ max_size: 64KiB, max_object_size: 16KiB }}\nupstreams:\n  app: {{ endpoints: [\"{up}\"] }}\nroutes:\n  - {{ name: app, match: {{ path_prefix: / }}, upstream: app, cache: {{}} }}\n"
    );
    let gw = TestGateway::start(&yaml).await;
    let c = client();
    let m = get(&c, &gw.admin_url("/metrics")).await.text();
    let evictions_before = metric(&m, "tollgate_cache_evictions_total");
    // 32 objects of 8 KiB: four times what fits.
    for i in 0..32 {
        let g = get(&c, &gw.url(&format!("/e{i}?cc=max-age%3D600&size=8192"))).await;
        assert_eq!(g.body.len(), 8192);
        assert_eq!(g.headers["cache-status"], "tollgate; fwd=miss; stored");
    }
    let stats = get(&c, &gw.admin_url("/cache/stats")).await.json();
    assert!(stats["bytes"].as_u64().unwrap() <= 64 * 1024, "{stats}");
    assert!(stats["entries"].as_u64().unwrap() < 32, "{stats}");
    let m = get(&c, &gw.admin_url("/metrics")).await.text();
    assert!(metric(&m, "tollgate_cache_evictions_total") > evictions_before);
    // What stayed is served from the store (moka's TinyLFU admission
    // decides which objects those are).
    let mut hit = 0;
    for i in 0..32 {
        let g = get(&c, &gw.url(&format!("/e{i}?cc=max-age%3D600&size=8192"))).await;
        assert_eq!(g.body.len(), 8192);
        if g.headers["cache-status"]
            .to_str()
            .unwrap()
            .starts_with("tollgate; hit")
        {
            hit += 1;
        }
    }
    assert!(hit > 0);
}

/// The value of header `name` in a raw HTTP/1.1 response.
fn raw_header<'a>(resp: &'a str, name: &str) -> Option<&'a str> {
    resp.split("\r\n\r\n").next()?.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test]
async fn a_get_or_head_with_a_body_is_neither_served_from_nor_stored_in_the_cache() {
    let (up, hits) = origin().await;
    let gw = TestGateway::start(&one_route(&up, "fat", "{}")).await;
    let c = client();
    let path = "/fat?cc=max-age%3D60";
    // The Host the client below sends, so both share one cache key.
    let host = gw.addr;
    let fat = |method: &str, framing: &str| {
        format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{framing}")
    };
    let with_length = fat("GET", "Content-Length: 4\r\n\r\nbody");
    let chunked = fat(
        "GET",
        "Transfer-Encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\n\r\n",
    );
    // A fat GET on an empty cache: forwarded, not stored.
    let r = raw(gw.addr, with_length.as_bytes()).await;
    assert_eq!(raw_status(&r), 200, "{r}");
    assert_eq!(
        raw_header(&r, "cache-status"),
        Some("tollgate; fwd=bypass; detail=request-body")
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    let g = get(&c, &gw.url(path)).await;
    assert_eq!(g.headers["cache-status"], "tollgate; fwd=miss; stored");
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    assert_eq!(
        get(&c, &gw.url(path)).await.headers["cache-status"]
            .to_str()
            .unwrap()
            .split(';')
            .nth(1)
            .map(str::trim),
        Some("hit")
    );
    // With an entry stored: a fat GET (either framing) or HEAD still goes
    // to the origin, and its answer never replaces the entry.
    for (i, req) in [
        with_length.clone(),
        chunked,
        fat("HEAD", "Content-Length: 4\r\n\r\nbody"),
    ]
    .iter()
    .enumerate()
    {
        let r = raw(gw.addr, req.as_bytes()).await;
        assert_eq!(raw_status(&r), 200, "{r}");
        assert_eq!(
            raw_header(&r, "cache-status"),
            Some("tollgate; fwd=bypass; detail=request-body"),
            "{r}"
        );
        assert_eq!(hits.load(Ordering::SeqCst), 3 + i as u64);
    }
    let g = get(&c, &gw.url(path)).await;
    assert_eq!(g.text(), "response 2", "the entry is the plain GET's");
    assert_eq!(hits.load(Ordering::SeqCst), 5);
    // An empty body (Content-Length: 0) is no body.
    let r = raw(gw.addr, fat("GET", "Content-Length: 0\r\n\r\n").as_bytes()).await;
    assert!(
        raw_header(&r, "cache-status").unwrap().contains("hit"),
        "{r}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn the_vary_index_counts_against_max_size() {
    let (up, _) = origin().await;
    let gw = TestGateway::start(&format!(
        "cache: {{ max_size: 1MiB, max_object_size: 1KiB }}\nupstreams:\n  app: {{ endpoints: [\"{up}\"] }}\nroutes:\n  - {{ name: varied, match: {{ path_prefix: / }}, upstream: app, cache: {{}} }}\n"
    ))
    .await;
    let c = client();
    // 400 distinct URLs of 8 KiB whose responses vary: 3.2 MiB of index
    // keys if the index were not weighed.
    let long = "p".repeat(8 << 10);
    for batch in 0..4 {
        let tasks: Vec<_> = (0..100)
            .map(|i| {
                let url = gw.url(&format!(
                    "/v{batch}-{i}?cc=max-age%3D60&vary=accept&pad={long}"
                ));
                let c = c.clone();
                tokio::spawn(async move { get_with(&c, &url, &[("accept", "a")]).await.status })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), 200);
        }
    }
    let stats = get(&c, &gw.admin_url("/cache/stats")).await.json();
    let max = stats["max_bytes"].as_u64().unwrap();
    let index = stats["vary_index_bytes"].as_u64().unwrap();
    assert!(index > 0, "{stats}");
    assert!(index <= max / 16, "{stats}");
    assert!(
        stats["bytes"].as_u64().unwrap() + index + stats["coalescing_max_bytes"].as_u64().unwrap()
            <= max,
        "{stats}"
    );
}

#[tokio::test]
async fn an_unsafe_request_voids_every_variant_and_key_part_of_its_url() {
    let (up, hits) = origin().await;
    let gw = TestGateway::start(&format!(
        "cache: {{}}\nupstreams:\n  app: {{ endpoints: [\"{up}\"] }}\nroutes:\n  - {{ name: items, match: {{ path_prefix: / }}, upstream: app, cache: {{ key: [\"header:x-plan\"] }} }}\n"
    ))
    .await;
    let c = client();
    let url = gw.url("/item?cc=max-age%3D60&vary=accept");
    let variants = [("a", "free"), ("b", "free"), ("a", "pro")];
    let mut stored = Vec::new();
    for (accept, plan) in variants {
        let g = get_with(&c, &url, &[("accept", accept), ("x-plan", plan)]).await;
        stored.push(g.text());
    }
    for ((accept, plan), body) in variants.iter().zip(&stored) {
        let g = get_with(&c, &url, &[("accept", accept), ("x-plan", plan)]).await;
        assert_eq!(&g.text(), body, "stored: {accept} {plan}");
    }
    let before = hits.load(Ordering::SeqCst);
    // Another URL stays.
    let other = gw.url("/other?cc=max-age%3D60");
    let other_body = get(&c, &other).await.text();
    assert_eq!(post(&c, &url, "update").await.status, 200);
    for ((accept, plan), body) in variants.iter().zip(&stored) {
        let g = get_with(&c, &url, &[("accept", accept), ("x-plan", plan)]).await;
        assert_ne!(&g.text(), body, "voided: {accept} {plan}");
    }
    // The origin saw the other URL, the POST and the three refetches.
    assert_eq!(hits.load(Ordering::SeqCst), before + 5);
    assert_eq!(get(&c, &other).await.text(), other_body);
    assert_eq!(hits.load(Ordering::SeqCst), before + 5);
}
