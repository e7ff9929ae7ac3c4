//! Route precedence, 404/405, split weights, balancers, explain.

use crate::support::*;

const PRECEDENCE: &str = r#"
routes:
  - { name: any-prefix, match: { path_prefix: /a }, respond: { body: any-prefix } }
  - { name: any-regex, match: { path_regex: "/a/[0-9]+/x" }, respond: { body: any-regex } }
  - { name: any-template, match: { path: "/a/{id}/x" }, respond: { body: any-template } }
  - { name: any-exact, match: { path: /a/1/x }, respond: { body: any-exact } }
  - { name: any-longer, match: { path_prefix: /a/b }, respond: { body: any-longer } }
  - { name: wild, match: { hosts: ["*.example.com"], path_prefix: / }, respond: { body: wild } }
  - { name: wild-deeper, match: { hosts: ["*.api.example.com"], path_prefix: / }, respond: { body: wild-deeper } }
  - { name: exact-host, match: { hosts: ["api.example.com"], path_prefix: /a }, respond: { body: exact-host } }
  - { name: v2, match: { path: /v, headers: { x-api-version: "2" } }, respond: { body: v2 } }
  - { name: beta, match: { path: /v, query: { beta: { present: true } } }, respond: { body: beta } }
  - { name: v-any, match: { path: /v }, respond: { body: v-any } }
  - { name: only-get, match: { path: /m, methods: [GET] }, respond: { body: m-get } }
  - { name: only-post, match: { path: /m, methods: [POST, PUT] }, respond: { body: m-post } }
"#;

/// Sends `n` GETs to `path` one after another and counts the bodies (each
/// test upstream answers with its name).
async fn answers(
    gw: &TestGateway,
    path: &str,
    n: usize,
) -> std::collections::HashMap<String, usize> {
    let c = client();
    let mut bodies = Vec::with_capacity(n);
    for _ in 0..n {
        bodies.push(get(&c, &gw.url(path)).await.text());
    }
    tally(bodies)
}

async fn body_for(c: &TestClient, gw: &TestGateway, host: &str, path: &str) -> String {
    get_with(c, &gw.url(path), &[("host", host)]).await.text()
}

#[tokio::test]
async fn precedence_is_exact_then_template_then_longest_prefix_then_regex() {
    let gw = TestGateway::start(PRECEDENCE).await;
    let c = client();
    assert_eq!(body_for(&c, &gw, "x.test", "/a/1/x").await, "any-exact");
    assert_eq!(body_for(&c, &gw, "x.test", "/a/2/x").await, "any-template");
    assert_eq!(body_for(&c, &gw, "x.test", "/a/b/c").await, "any-longer");
    assert_eq!(
        body_for(&c, &gw, "x.test", "/a/bc").await,
        "any-prefix",
        "prefixes match on segment boundaries"
    );
    assert_eq!(body_for(&c, &gw, "x.test", "/a").await, "any-prefix");
}

#[tokio::test]
async fn host_groups_rank_exact_then_longest_wildcard_then_any() {
    let gw = TestGateway::start(PRECEDENCE).await;
    let c = client();
    assert_eq!(
        body_for(&c, &gw, "api.example.com", "/a/1/x").await,
        "exact-host"
    );
    assert_eq!(
        body_for(&c, &gw, "API.Example.com:8080", "/a").await,
        "exact-host",
        "host is case-insensitive, port ignored"
    );
    assert_eq!(
        body_for(&c, &gw, "v1.api.example.com", "/a").await,
        "wild-deeper"
    );
    assert_eq!(body_for(&c, &gw, "www.example.com", "/a").await, "wild");
    // The exact host group has no route for /zzz: the wildcard group answers.
    assert_eq!(body_for(&c, &gw, "api.example.com", "/zzz").await, "wild");
    assert_eq!(
        body_for(&c, &gw, "example.com", "/a").await,
        "any-prefix",
        "a wildcard needs a label before the suffix"
    );
}

#[tokio::test]
async fn header_and_query_constraints_pick_among_equal_paths_in_declared_order() {
    let gw = TestGateway::start(PRECEDENCE).await;
    let c = client();
    assert_eq!(
        get_with(&c, &gw.url("/v"), &[("x-api-version", "2")])
            .await
            .text(),
        "v2"
    );
    assert_eq!(get(&c, &gw.url("/v?beta")).await.text(), "beta");
    assert_eq!(get(&c, &gw.url("/v")).await.text(), "v-any");
}

#[tokio::test]
async fn wrong_method_is_405_with_allow_and_no_route_is_404_json() {
    let gw = TestGateway::start(PRECEDENCE).await;
    let c = client();
    let r = send(
        &c,
        http::Request::delete(gw.url("/m"))
            .body(Default::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 405);
    assert_eq!(r.headers["allow"], "GET, POST, PUT");
    let id = r.headers["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(
        r.json(),
        serde_json::json!({"error": "method_not_allowed", "message": "the route does not allow this method", "request_id": id})
    );
    assert_eq!(post(&c, &gw.url("/m"), "").await.text(), "m-post");
    let r = get(&c, &gw.url("/nothing/here")).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "no_route");
    assert_eq!(r.headers["content-type"], "application/json");
}

#[tokio::test]
async fn split_follows_weights_within_five_percent() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = TestGateway::start(&format!(
        r#"
upstreams:
  a: {{ endpoints: ["{}"] }}
  b: {{ endpoints: ["{}"] }}
routes:
  - name: canary
    match: {{ path_prefix: / }}
    split: [{{ upstream: a, weight: 90 }}, {{ upstream: b, weight: 10 }}]
"#,
        a.url(),
        b.url()
    ))
    .await;
    let t = answers(&gw, "/", 2000).await;
    let share_b = t.get("b").copied().unwrap_or(0) as f64 / 2000.0;
    assert!(
        (share_b - 0.10).abs() <= 0.05 * 0.10 + 0.02,
        "b share {share_b} (expected 0.10)"
    );
    assert_eq!(t.values().sum::<usize>(), 2000);
}

#[tokio::test]
async fn round_robin_is_even_and_weights_are_honoured() {
    let ups = [
        Upstream::start("u0").await,
        Upstream::start("u1").await,
        Upstream::start("u2").await,
    ];
    let gw = TestGateway::start(&format!(
        r#"
upstreams:
  even: {{ endpoints: ["{}", "{}"] }}
  weighted: {{ endpoints: ["{}", {{ url: "{}", weight: 3 }}] }}
routes:
  - {{ name: even, match: {{ path_prefix: /even }}, upstream: even }}
  - {{ name: weighted, match: {{ path_prefix: /weighted }}, upstream: weighted }}
"#,
        ups[0].url(),
        ups[1].url(),
        ups[0].url(),
        ups[2].url()
    ))
    .await;
    let t = answers(&gw, "/even", 400).await;
    for name in ["u0", "u1"] {
        let n = t[name] as f64;
        assert!((n - 200.0).abs() <= 20.0, "{name}: {n} of 400");
    }
    let t = answers(&gw, "/weighted", 400).await;
    assert_eq!(
        t["u0"], 100,
        "smooth weighted round robin is exact over full cycles"
    );
    assert_eq!(t["u2"], 300);
}

#[tokio::test]
async fn consistent_hash_sends_a_key_to_one_endpoint() {
    let ups = [
        Upstream::start("h0").await,
        Upstream::start("h1").await,
        Upstream::start("h2").await,
    ];
    let gw = TestGateway::start(&format!(
        r#"
upstreams:
  sticky: {{ endpoints: ["{}", "{}", "{}"], balancer: consistent_hash, hash_on: "header:x-user-id" }}
routes:
  - {{ name: sticky, match: {{ path_prefix: / }}, upstream: sticky }}
"#,
        ups[0].url(),
        ups[1].url(),
        ups[2].url()
    ))
    .await;
    let c = client();
    let mut owners = std::collections::HashSet::new();
    for user in 0..30 {
        let first = get_with(&c, &gw.url("/"), &[("x-user-id", &user.to_string())])
            .await
            .text();
        owners.insert(first.clone());
        for _ in 0..5 {
            assert_eq!(
                get_with(&c, &gw.url("/"), &[("x-user-id", &user.to_string())])
                    .await
                    .text(),
                first
            );
        }
    }
    assert!(owners.len() >= 2, "keys spread over endpoints: {owners:?}");
}

#[tokio::test]
async fn admin_explain_names_the_route_and_the_candidates() {
    let gw = TestGateway::start(PRECEDENCE).await;
    let c = client();
    let r = get(
        &c,
        &gw.admin_url("/routes/explain?method=GET&host=api.example.com&path=/a/1/x"),
    )
    .await;
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["matched"], "exact-host");
    assert_eq!(j["candidates"][0]["group"], "exact host");
    let r = get(
        &c,
        &gw.admin_url("/routes/explain?method=GET&host=x&path=/nope"),
    )
    .await
    .json();
    assert_eq!(r["status"], 404);
    assert!(!r["nearest"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn random_balancer_follows_weights_and_host_names_resolve() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    // Endpoints given by host name: resolved when connecting.
    let gw = TestGateway::start(&format!(
        "upstreams:\n  r: {{ balancer: random, endpoints: [{{ url: \"http://localhost:{}\", weight: 3 }}, \"http://localhost:{}\"] }}\nroutes:\n  - {{ name: r, match: {{ path_prefix: / }}, upstream: r }}\n",
        a.addr.port(),
        b.addr.port()
    ))
    .await;
    let t = answers(&gw, "/", 2000).await;
    let share_a = t.get("a").copied().unwrap_or(0) as f64 / 2000.0;
    assert!(
        (share_a - 0.75).abs() <= 0.05,
        "a share {share_a} (expected 0.75)"
    );
}
