//! Rate limiting over real sockets: buckets per key kind, 429 and the
//! RateLimit headers, overrides, missing and repeated keys, the order
//! around authentication, reload keeping state, eviction and shadow mode.
//! (The accuracy tests are in `tests/timing/`, a test binary of their own.)

use std::time::Duration;

use serde_json::json;

use crate::support::jwt::{SigningKey, now};
use crate::support::*;

const SECRET: &str = "rate-limit-test-secret-of-32-bytes!!";

fn config(up: &str, policies: &str, routes: &str) -> String {
    format!(
        "upstreams:\n  app: {{ endpoints: [\"{up}\"] }}\nauth:\n  providers:\n    p: {{ algorithms: [HS256], secret: \"{SECRET}\", tenant_claim: tenant }}\nrate_limits:\n{policies}routes:\n{routes}"
    )
}

fn token(tenant: &str) -> String {
    SigningKey::hmac(SECRET).sign(&json!({"sub": "u", "tenant": tenant, "exp": now() + 600}))
}

#[tokio::test]
async fn a_bucket_per_client_with_429_and_ratelimit_headers() {
    let up = Upstream::start("app").await;
    let gw = TestGateway::start(&config(
        &up.url(),
        "  per_ip: { key: client_ip, rate: 10/s, burst: 5 }\n",
        "  - { name: r, match: { path_prefix: / }, upstream: app, rate_limit: [per_ip] }\n",
    ))
    .await;
    let c = client();
    let first = get(&c, &gw.url("/x")).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.headers["ratelimit-policy"], r#""per_ip";q=10;w=1"#);
    assert_eq!(first.headers["ratelimit"], r#""per_ip";r=4;t=0"#);
    assert_eq!(first.headers["x-ratelimit-limit"], "5");
    assert_eq!(first.headers["x-ratelimit-remaining"], "4");
    for _ in 0..4 {
        assert_eq!(get(&c, &gw.url("/x")).await.status, 200);
    }
    let g = get(&c, &gw.url("/x")).await;
    assert_eq!(g.status, 429);
    assert_eq!(g.headers["retry-after"], "1");
    assert_eq!(g.headers["ratelimit"], r#""per_ip";r=0;t=1"#);
    assert_eq!(g.headers["x-ratelimit-remaining"], "0");
    let body = g.json();
    assert_eq!(body["error"], "rate_limited");
    assert_eq!(
        body["request_id"],
        g.headers["x-request-id"].to_str().unwrap()
    );
    assert_eq!(up.count(), 5);
    // Refills at 10/s: one request's worth in 100ms.
    const ONE_REFILL: Duration = Duration::from_millis(150);
    tokio::time::sleep(ONE_REFILL).await;
    assert_eq!(get(&c, &gw.url("/x")).await.status, 200);
    let m = get(&c, &gw.admin_url("/metrics")).await.text();
    assert_eq!(
        metric(
            &m,
            r#"tollgate_ratelimit_decisions_total{policy="per_ip",result="limited",route="r"}"#
        ),
        1.0
    );
}

#[tokio::test]
async fn header_keys_missing_and_repeated() {
    let up = Upstream::start("app").await;
    let gw = TestGateway::start(&config(
        &up.url(),
        "  reject: { key: \"header:x-api-key\", rate: 1/min, burst: 1 }\n  shared: { key: \"header:x-api-key\", rate: 1/min, burst: 1, missing_key: shared }\n  skip: { key: \"header:x-api-key\", rate: 1/min, burst: 1, missing_key: skip }\n",
        "  - { name: reject, match: { path_prefix: /reject }, upstream: app, rate_limit: [reject] }\n  - { name: shared, match: { path_prefix: /shared }, upstream: app, rate_limit: [shared] }\n  - { name: skip, match: { path_prefix: /skip }, upstream: app, rate_limit: [skip] }\n  - { name: authed, match: { path_prefix: /authed }, upstream: app, auth: { provider: p }, rate_limit: [reject] }\n",
    ))
    .await;
    let c = client();
    let key = |k: &'static str| [("x-api-key", k)];
    // One bucket per key value.
    assert_eq!(
        get_with(&c, &gw.url("/reject"), &key("a")).await.status,
        200
    );
    assert_eq!(
        get_with(&c, &gw.url("/reject"), &key("a")).await.status,
        429
    );
    assert_eq!(
        get_with(&c, &gw.url("/reject"), &key("b")).await.status,
        200
    );
    // No key: 429 without auth on the route, 401 with it.
    assert_eq!(get(&c, &gw.url("/reject")).await.status, 429);
    let g = get(&c, &gw.url("/authed")).await;
    assert_eq!(g.status, 401, "{}", g.text());
    // shared: keyless requests share one bucket; skip: not limited.
    assert_eq!(get(&c, &gw.url("/shared")).await.status, 200);
    assert_eq!(get(&c, &gw.url("/shared")).await.status, 429);
    for _ in 0..3 {
        assert_eq!(get(&c, &gw.url("/skip")).await.status, 200);
    }
    // The key header twice, over a raw socket: 400.
    let resp = raw(
        gw.addr,
        b"GET /skip HTTP/1.1\r\nHost: a\r\nX-Api-Key: one\r\nX-Api-Key: two\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&resp), 400, "{resp}");
}

#[tokio::test]
async fn tenants_get_their_plans_and_do_not_starve_each_other() {
    let up = Upstream::start("app").await;
    let gw = TestGateway::start(&config(
        &up.url(),
        "  per_tenant: { key: tenant, rate: 2/min, burst: 2, overrides: { acme: { rate: 100/s, burst: 20 } } }\n",
        "  - { name: api, match: { path_prefix: / }, upstream: app, auth: { provider: p }, rate_limit: [per_tenant] }\n",
    ))
    .await;
    let c = client();
    let (acme, free, other) = (token("acme"), token("free"), token("other"));
    let send = |t: &String| {
        let (c, url, auth) = (c.clone(), gw.url("/x"), format!("Bearer {t}"));
        async move { get_with(&c, &url, &[("authorization", &auth)]).await.status }
    };
    let mut acme_ok = 0;
    for _ in 0..20 {
        acme_ok += usize::from(send(&acme).await == 200);
    }
    assert_eq!(acme_ok, 20, "acme's plan: burst 20");
    assert_eq!(send(&free).await, 200);
    assert_eq!(send(&free).await, 200);
    // free at 10x its limit...
    for _ in 0..20 {
        assert_eq!(send(&free).await, 429);
    }
    // ...does not touch another tenant's bucket.
    assert_eq!(send(&other).await, 200);
}

#[tokio::test]
async fn identity_free_limits_run_before_authentication() {
    let up = Upstream::start("app").await;
    let gw = TestGateway::start(&config(
        &up.url(),
        "  per_ip: { key: client_ip, rate: 1/min, burst: 3 }\n  per_tenant: { key: tenant, rate: 1/min, burst: 1 }\n",
        "  - { name: api, match: { path_prefix: / }, upstream: app, auth: { provider: p }, rate_limit: [per_tenant, per_ip] }\n",
    ))
    .await;
    let c = client();
    let bad = [("authorization", "Bearer not.a.token")];
    // Bad tokens: 401 while the address has budget, then 429 before any
    // token is looked at.
    for _ in 0..3 {
        assert_eq!(get_with(&c, &gw.url("/x"), &bad).await.status, 401);
    }
    assert_eq!(get_with(&c, &gw.url("/x"), &bad).await.status, 429);
    let m = get(&c, &gw.admin_url("/metrics")).await.text();
    assert_eq!(
        metric(
            &m,
            r#"tollgate_auth_requests_total{provider="p",result="invalid",route="api"}"#
        ),
        3.0,
        "the fourth was never authenticated"
    );
}

#[tokio::test]
async fn reload_keeps_unchanged_policies_and_restarts_changed_ones() {
    let up = Upstream::start("app").await;
    let routes =
        "  - { name: r, match: { path_prefix: / }, upstream: app, rate_limit: [per_ip] }\n";
    let cfg = |rate: &str, extra: &str| {
        config(
            &up.url(),
            &format!("  per_ip: {{ key: client_ip, rate: {rate}, burst: 2 }}\n"),
            &format!("{routes}{extra}"),
        )
    };
    let gw = TestGateway::start(&cfg("1/min", "")).await;
    let c = client();
    for _ in 0..2 {
        assert_eq!(get(&c, &gw.url("/x")).await.status, 200);
    }
    assert_eq!(get(&c, &gw.url("/x")).await.status, 429);
    gw.write_config(&cfg(
        "1/min",
        "  - { name: extra, match: { path: /extra }, respond: { body: hi } }\n",
    ));
    assert_eq!(post(&c, &gw.admin_url("/reload"), "").await.status, 200);
    assert_eq!(get(&c, &gw.url("/extra")).await.text(), "hi");
    assert_eq!(
        get(&c, &gw.url("/x")).await.status,
        429,
        "no fresh burst on reload"
    );
    gw.write_config(&cfg("2/min", ""));
    assert_eq!(post(&c, &gw.admin_url("/reload"), "").await.status, 200);
    assert_eq!(
        get(&c, &gw.url("/x")).await.status,
        200,
        "a changed policy starts fresh"
    );
}

#[tokio::test]
async fn keys_are_capped_and_shadow_mode_rejects_nothing() {
    let up = Upstream::start("app").await;
    let gw = TestGateway::start(&config(
        &up.url(),
        "  capped: { key: \"header:x-k\", rate: 1/min, burst: 1, max_keys: 10 }\n  watch: { key: client_ip, rate: 1/min, burst: 1, mode: shadow }\n",
        "  - { name: capped, match: { path_prefix: /capped }, upstream: app, rate_limit: [capped] }\n  - { name: watched, match: { path_prefix: /watched }, upstream: app, rate_limit: [watch] }\n",
    ))
    .await;
    let c = client();
    for i in 0..100 {
        let k = format!("key-{i}");
        assert_eq!(
            get_with(&c, &gw.url("/capped"), &[("x-k", &k)])
                .await
                .status,
            200
        );
    }
    let mut keys = 0.0;
    for _ in 0..200 {
        tokio::time::sleep(POLL).await;
        let m = get(&c, &gw.admin_url("/metrics")).await.text();
        keys = metric(&m, r#"tollgate_ratelimit_keys{policy="capped"}"#);
        if keys > 0.0 && keys <= 10.0 {
            break;
        }
    }
    assert!(keys > 0.0 && keys <= 10.0, "keys: {keys}");
    for _ in 0..5 {
        let g = get(&c, &gw.url("/watched")).await;
        assert_eq!(g.status, 200);
        assert!(
            g.headers.get("ratelimit").is_none(),
            "shadow mode sends no headers"
        );
    }
    let m = get(&c, &gw.admin_url("/metrics")).await.text();
    assert_eq!(
        metric(
            &m,
            r#"tollgate_ratelimit_decisions_total{policy="watch",result="limited",route="watched"}"#
        ),
        4.0
    );
}

fn global_config(up: &str, redis: &str, on_error: &str, rate: &str, burst: u32) -> String {
    format!(
        "upstreams:\n  app: {{ endpoints: [\"{up}\"] }}\nredis: {{ url: \"{redis}\", timeout: 100ms, on_error: {on_error} }}\nrate_limits:\n  shared: {{ key: client_ip, rate: {rate}, burst: {burst}, scope: global }}\nroutes:\n  - {{ name: r, match: {{ path_prefix: / }}, upstream: app, rate_limit: [shared] }}\n"
    )
}

/// The connection to Redis is made in the background at start.
async fn wait_for_redis(gw: &TestGateway) {
    let running = gw.gw.as_ref().unwrap();
    eventually("the gateway is connected to Redis", async || {
        running
            .live
            .load()
            .redis
            .as_ref()
            .is_some_and(|r| r.is_connected())
    })
    .await;
}

#[tokio::test]
#[cfg_attr(
    not(tollgate_redis),
    ignore = "needs redis-server (apt-get install redis-server)"
)]
async fn global_limits_are_kept_in_redis() {
    let redis = RedisServer::start().await;
    let up = Upstream::start("app").await;
    let gw = TestGateway::start(&global_config(&up.url(), &redis.url(), "deny", "1/min", 3)).await;
    wait_for_redis(&gw).await;
    let c = client();
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let g = get(&c, &gw.url("/x")).await;
        assert_eq!(g.status, 200, "{}", g.text());
        remaining.push(
            g.headers["x-ratelimit-remaining"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(remaining, ["2", "1", "0"]);
    let g = get(&c, &gw.url("/x")).await;
    assert_eq!(g.status, 429);
    let wait: u64 = g.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(
        (55..=60).contains(&wait),
        "one request per minute refills: {wait}"
    );
    // A second gateway on the same Redis sees the same bucket.
    let gw2 = TestGateway::start(&global_config(&up.url(), &redis.url(), "deny", "1/min", 3)).await;
    wait_for_redis(&gw2).await;
    assert_eq!(get(&c, &gw2.url("/x")).await.status, 429);
    let m = get(&c, &gw.admin_url("/metrics")).await.text();
    assert!(m.contains("tollgate_ratelimit_redis_duration_seconds_count"));
}

#[tokio::test]
#[cfg_attr(
    not(tollgate_redis),
    ignore = "needs redis-server (apt-get install redis-server)"
)]
async fn when_redis_dies_on_error_decides_and_requests_never_wait_long() {
    let mut redis = RedisServer::start().await;
    let up = Upstream::start("app").await;
    let local =
        TestGateway::start(&global_config(&up.url(), &redis.url(), "local", "1/min", 2)).await;
    let deny = TestGateway::start(&global_config(
        &up.url(),
        &redis.url(),
        "deny",
        "1/min",
        100,
    ))
    .await;
    let allow =
        TestGateway::start(&global_config(&up.url(), &redis.url(), "allow", "1/min", 1)).await;
    for gw in [&local, &deny, &allow] {
        wait_for_redis(gw).await;
    }
    let c = client();
    assert_eq!(get(&c, &deny.url("/x")).await.status, 200, "Redis up");
    redis.kill();
    // local: this process's own bucket (burst 2).
    let t = std::time::Instant::now();
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(get(&c, &local.url("/x")).await.status);
        }
        v
    };
    assert_eq!(statuses, [200, 200, 429]);
    assert!(
        t.elapsed() < Duration::from_millis(3 * 100 + 600),
        "{:?}",
        t.elapsed()
    );
    let g = get(&c, &deny.url("/x")).await;
    assert_eq!(g.status, 503);
    assert_eq!(g.json()["error"], "rate_limit_unavailable");
    for _ in 0..3 {
        assert_eq!(get(&c, &allow.url("/x")).await.status, 200);
    }
    let m = get(&c, &local.admin_url("/metrics")).await.text();
    assert!(metric(&m, "tollgate_ratelimit_redis_errors_total") >= 3.0);
    assert!(
        metric(
            &m,
            r#"tollgate_ratelimit_decisions_total{policy="shared",result="error",route="r"}"#
        ) >= 3.0
    );
}

#[tokio::test]
async fn claim_and_route_key_parts_make_one_bucket_per_combination() {
    let up = Upstream::start("app").await;
    let gw = TestGateway::start(&config(
        &up.url(),
        "  per_plan_route: { key: [\"claim:org.plan\", route], rate: 1/min, burst: 1 }\n",
        "  - { name: a, match: { path_prefix: /a }, upstream: app, auth: { provider: p }, rate_limit: [per_plan_route] }\n  - { name: b, match: { path_prefix: /b }, upstream: app, auth: { provider: p }, rate_limit: [per_plan_route] }\n",
    ))
    .await;
    let c = client();
    let signed = |plan: Option<&str>| {
        let mut claims = json!({"sub": "u", "exp": now() + 600});
        if let Some(p) = plan {
            claims["org"] = json!({ "plan": p });
        }
        format!("Bearer {}", SigningKey::hmac(SECRET).sign(&claims))
    };
    let (gold, silver) = (signed(Some("gold")), signed(Some("silver")));
    let status = |path: &str, auth: &str| {
        let (c, url, auth) = (c.clone(), gw.url(path), auth.to_owned());
        async move { get_with(&c, &url, &[("authorization", &auth)]).await.status }
    };
    assert_eq!(status("/a", &gold).await, 200);
    assert_eq!(status("/a", &gold).await, 429);
    assert_eq!(
        status("/b", &gold).await,
        200,
        "another route, another bucket"
    );
    assert_eq!(
        status("/a", &silver).await,
        200,
        "another claim value, another bucket"
    );
    // A token without the claim: the key is missing; the route has auth, so 401.
    assert_eq!(status("/a", &signed(None)).await, 401);
}

#[tokio::test]
async fn headers_describe_the_policy_closest_to_its_limit() {
    let up = Upstream::start("app").await;
    let gw = TestGateway::start(&config(
        &up.url(),
        "  wide: { key: client_ip, rate: 10/min, burst: 10 }\n  narrow: { key: route, rate: 3/min, burst: 3 }\n",
        "  - { name: r, match: { path_prefix: / }, upstream: app, rate_limit: [wide, narrow] }\n",
    ))
    .await;
    let c = client();
    let g = get(&c, &gw.url("/x")).await;
    assert_eq!(g.headers["ratelimit-policy"], r#""narrow";q=3;w=60"#);
    assert_eq!(g.headers["ratelimit"], r#""narrow";r=2;t=0"#);
}

#[tokio::test]
async fn a_tenant_claim_that_is_not_a_string_or_number_is_no_tenant() {
    let up = Upstream::start("app").await;
    let gw = TestGateway::start(&config(
        &up.url(),
        "  tenants: { key: tenant, rate: 1/min, burst: 1 }\n  shared: { key: tenant, rate: 1/min, burst: 1, missing_key: shared }\n",
        "  - { name: reject, match: { path_prefix: /reject }, upstream: app, auth: { provider: p }, rate_limit: [tenants] }\n  - { name: shared, match: { path_prefix: /shared }, upstream: app, auth: { provider: p }, rate_limit: [shared] }\n",
    ))
    .await;
    let c = client();
    let with_tenant = |tenant: serde_json::Value| {
        format!(
            "Bearer {}",
            SigningKey::hmac(SECRET)
                .sign(&json!({"sub": "u", "tenant": tenant, "exp": now() + 600}))
        )
    };
    // A number is a tenant (its own bucket).
    let n = with_tenant(json!(7));
    assert_eq!(
        get_with(&c, &gw.url("/reject"), &[("authorization", &n)])
            .await
            .status,
        200
    );
    assert_eq!(
        get_with(&c, &gw.url("/reject"), &[("authorization", &n)])
            .await
            .status,
        429
    );
    // Arrays, objects, booleans and null are no tenant: missing_key decides
    // (reject: 401 on an authenticated route; shared: one bucket for all).
    for t in [
        json!(["acme", "globex"]),
        json!({"id": "acme"}),
        json!(true),
        json!(null),
    ] {
        let g = get_with(
            &c,
            &gw.url("/reject"),
            &[("authorization", &with_tenant(t.clone()))],
        )
        .await;
        assert_eq!(g.status, 401, "{t}: {}", g.text());
    }
    let a = with_tenant(json!(["acme"]));
    let b = with_tenant(json!({"id": "globex"}));
    assert_eq!(
        get_with(&c, &gw.url("/shared"), &[("authorization", &a)])
            .await
            .status,
        200
    );
    assert_eq!(
        get_with(&c, &gw.url("/shared"), &[("authorization", &b)])
            .await
            .status,
        429
    );
}
