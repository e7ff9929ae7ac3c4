//! API keys over real sockets: keys from a header or the query, the
//! identity they carry (forwarded claims, tenant-keyed limits, access-log
//! fields), `any_of` with a JWT provider, a reload that revokes a key, and
//! the key never reaching the upstream, the logs or the admin API.

use serde_json::json;

use crate::support::jwt::{SigningKey, now};
use crate::support::*;

const SECRET: &str = "0123456789abcdef0123456789abcdef";
const ALICE: &str = "tg_alice-key-0000000000000000000000000000000000";
const CAROL: &str = "tg_carol-key-1111111111111111111111111111111111";
const BOB: &str = "tg_bob-key-22222222222222222222222222222222222222";

/// The keys-file entry `tollgate hash-key` prints for `key`.
fn entry(key: &str, consumer: &str, tenant: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["hash-key", "--consumer", consumer, "--tenant", tenant])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{key}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let line = String::from_utf8(out.stdout).unwrap();
    assert!(!line.contains(key), "the key is never printed: {line}");
    line
}

fn config(up: &str, keys_file: &str) -> String {
    format!(
        r#"server:
  listen: ["127.0.0.1:0"]
  admin_listen: "127.0.0.1:0"
  access_log: {{ enabled: true, query: true }}
upstreams:
  app: {{ endpoints: ["{up}"] }}
auth:
  providers:
    keys:
      type: api_key
      from: ["header:x-api-key", "query:api_key"]
      keys_file: "{keys_file}"
      forward_claims: {{ sub: x-consumer, tenant: x-tenant, plan: x-plan }}
    jwt: {{ algorithms: [HS256], secret: "{SECRET}", tenant_claim: tenant }}
rate_limits:
  per_tenant: {{ key: tenant, rate: 1/m, burst: 3 }}
routes:
  - {{ name: keys, match: {{ path_prefix: /keys }}, upstream: app, auth: {{ provider: keys }} }}
  - {{ name: either, match: {{ path_prefix: /either }}, upstream: app, auth: {{ any_of: [jwt, keys] }} }}
  - name: scoped
    match: {{ path_prefix: /scoped }}
    upstream: app
    auth: {{ provider: keys, require: {{ scope: ["orders:read"] }} }}
  - {{ name: limited, match: {{ path_prefix: /limited }}, upstream: app, auth: {{ provider: keys }}, rate_limit: [per_tenant] }}
"#
    )
}

async fn scrape(gw: &Binary) -> String {
    get(&client(), &format!("http://{}/metrics", gw.admin))
        .await
        .text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_identify_the_consumer_and_a_reload_revokes_one() {
    let up = Upstream::start("app").await;
    let dir = config_path().parent().unwrap().to_owned();
    let keys_file = dir.join("keys.yaml");
    let alice = entry(ALICE, "alice", "acme");
    let carol = entry(CAROL, "carol", "acme");
    let bob = entry(BOB, "bob", "globex");
    // Claims beyond the consumer and tenant are added by hand.
    let alice = alice.replace(
        " }",
        ", claims: { scope: \"orders:read orders:write\", plan: gold } }",
    );
    std::fs::write(&keys_file, format!("# api keys\n{alice}{carol}{bob}")).unwrap();
    let gw = Binary::start(&config(&up.url(), keys_file.to_str().unwrap()));
    let c = client();

    // No key, an unknown key, an empty key: 401 with the JSON body.
    let g = get(&c, &gw.url("/keys/a")).await;
    assert_eq!(g.status, 401, "{}", g.text());
    assert_eq!(g.json()["error"], "unauthorized");
    let g = get_with(&c, &gw.url("/keys/a"), &[("x-api-key", "tg_not-a-key")]).await;
    assert_eq!(g.status, 401);
    assert!(
        g.text().contains("the API key is not valid"),
        "{}",
        g.text()
    );
    let g = get_with(&c, &gw.url("/keys/a"), &[("x-api-key", "")]).await;
    assert_eq!(g.status, 401);
    // Two different keys in one request are refused, not picked from.
    let g = get_with(
        &c,
        &gw.url(&format!("/keys/a?api_key={BOB}")),
        &[("x-api-key", ALICE)],
    )
    .await;
    assert_eq!(g.status, 401);
    // A key longer than max_token_bytes (8 KiB) is refused unhashed.
    let long = "k".repeat(9000);
    let resp = raw(
        gw.addr,
        format!(
            "GET /keys/a HTTP/1.1\r\nHost: a\r\nx-api-key: {long}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&resp), 401, "{resp}");
    assert!(resp.contains("the API key is too large"), "{resp}");
    assert_eq!(up.count(), 0);

    // A key in the header: the identity goes upstream, the key does not,
    // and client-sent copies of the identity headers are replaced.
    let g = get_with(
        &c,
        &gw.url("/keys/a"),
        &[
            ("x-api-key", ALICE),
            ("x-consumer", "admin"),
            ("x-tenant", "evil"),
        ],
    )
    .await;
    assert_eq!(g.status, 200, "{}", g.text());
    let seen = up.last();
    assert_eq!(seen.headers["x-consumer"], "alice");
    assert_eq!(seen.headers["x-tenant"], "acme");
    assert_eq!(seen.headers["x-plan"], "gold");
    assert!(seen.headers.get("x-api-key").is_none());
    // In the query: removed before forwarding, other parameters kept.
    let g = get(&c, &gw.url(&format!("/keys/q?a=1&api_key={BOB}&b=2"))).await;
    assert_eq!(g.status, 200);
    let seen = up.last();
    assert_eq!(seen.uri, "/keys/q?a=1&b=2");
    assert_eq!(seen.headers["x-consumer"], "bob");
    assert_eq!(seen.headers["x-tenant"], "globex");
    assert!(
        seen.headers.get("x-plan").is_none(),
        "bob has no plan claim"
    );

    // Claims from the keys file are what `require` checks.
    let g = get_with(&c, &gw.url("/scoped"), &[("x-api-key", ALICE)]).await;
    assert_eq!(g.status, 200);
    let g = get_with(&c, &gw.url("/scoped"), &[("x-api-key", BOB)]).await;
    assert_eq!(g.status, 403);

    // `any_of`: a JWT or a key; a bad JWT with a good key still passes.
    let jwt = SigningKey::hmac(SECRET)
        .sign(&json!({"sub": "dave", "tenant": "initech", "exp": now() + 600}));
    let bearer = format!("Bearer {jwt}");
    let g = get_with(&c, &gw.url("/either"), &[("authorization", &bearer)]).await;
    assert_eq!(g.status, 200);
    assert!(up.last().headers.get("x-consumer").is_none());
    let g = get_with(&c, &gw.url("/either"), &[("x-api-key", BOB)]).await;
    assert_eq!(g.status, 200);
    assert_eq!(up.last().headers["x-consumer"], "bob");
    let g = get_with(
        &c,
        &gw.url("/either"),
        &[("authorization", "Bearer not.a.jwt"), ("x-api-key", BOB)],
    )
    .await;
    assert_eq!(g.status, 200);
    let g = get(&c, &gw.url("/either")).await;
    assert_eq!(g.status, 401);
    let g = get_with(
        &c,
        &gw.url("/either"),
        &[("authorization", "Bearer not.a.jwt")],
    )
    .await;
    assert_eq!(g.status, 401);

    // Tenant-keyed limits: alice and carol share acme's bucket of 3.
    for key in [ALICE, CAROL, ALICE] {
        let g = get_with(&c, &gw.url("/limited"), &[("x-api-key", key)]).await;
        assert_eq!(g.status, 200);
    }
    let g = get_with(&c, &gw.url("/limited"), &[("x-api-key", CAROL)]).await;
    assert_eq!(g.status, 429);
    let g = get_with(&c, &gw.url("/limited"), &[("x-api-key", BOB)]).await;
    assert_eq!(g.status, 200, "globex has a bucket of its own");

    let m = scrape(&gw).await;
    assert_eq!(
        metric(&m, r#"tollgate_auth_api_keys{provider="keys"}"#),
        3.0
    );
    for (route, provider, result, n) in [
        ("keys", "keys", "missing", 1.0),
        ("keys", "keys", "invalid", 4.0),
        ("keys", "keys", "ok", 2.0),
        ("scoped", "keys", "forbidden", 1.0),
        ("either", "jwt", "ok", 1.0),
        ("either", "keys", "ok", 2.0),
        ("either", "jwt", "missing", 1.0),
        ("either", "jwt", "invalid", 1.0),
    ] {
        let series = format!(
            r#"tollgate_auth_requests_total{{provider="{provider}",result="{result}",route="{route}"}}"#
        );
        assert_eq!(metric(&m, &series), n, "{series}\n{m}");
    }

    // A reload that removes bob's key revokes it; the others keep working.
    // (The file is replaced whole, as an operator's tooling should: the
    // watcher may read it at any moment.)
    let replace = |text: String| {
        let tmp = keys_file.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &keys_file).unwrap();
    };
    replace(format!("{alice}{carol}"));
    gw.signal("HUP");
    eventually("bob's key is revoked", async || {
        get_with(&c, &gw.url("/keys/a"), &[("x-api-key", BOB)])
            .await
            .status
            == 401
    })
    .await;
    let g = get_with(&c, &gw.url("/keys/a"), &[("x-api-key", ALICE)]).await;
    assert_eq!(g.status, 200);
    assert_eq!(
        metric(
            &scrape(&gw).await,
            r#"tollgate_auth_api_keys{provider="keys"}"#
        ),
        2.0
    );
    // A broken keys file is refused; the running keys keep serving.
    replace("- { sha256: nope, consumer: x }\n".to_owned());
    gw.signal("HUP");
    eventually("the bad keys file is refused", async || {
        gw.stderr
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("auth.providers.keys.keys_file") && l.contains("[0].sha256"))
    })
    .await;
    let g = get_with(&c, &gw.url("/keys/a"), &[("x-api-key", ALICE)]).await;
    assert_eq!(g.status, 200);
    // So is an empty one: it would revoke every key.
    replace("# emptied\n".to_owned());
    eventually("the empty keys file is refused", async || {
        gw.stderr
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("lists no keys"))
    })
    .await;
    let g = get_with(&c, &gw.url("/keys/a"), &[("x-api-key", ALICE)]).await;
    assert_eq!(g.status, 200);

    // The access log names the consumer and tenant; no key is in any log
    // line, nor in the admin API's view of the config.
    let admin_config = get(&c, &format!("http://{}/config", gw.admin)).await.text();
    eventually("every request logged", async || {
        gw.stdout.lock().unwrap().len() >= 23
    })
    .await;
    let lines = gw.stdout.lock().unwrap().clone();
    let logged: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let alice_line = logged
        .iter()
        .find(|l| l["route"] == "scoped" && l["status"] == 200)
        .unwrap();
    assert_eq!(alice_line["sub"], "alice");
    assert_eq!(alice_line["tenant"], "acme");
    let query_line = logged.iter().find(|l| l["path"] == "/keys/q").unwrap();
    assert_eq!(query_line["query"], "a=1&api_key=<redacted>&b=2");
    let stderr = gw.stderr.lock().unwrap().join("\n");
    for key in [ALICE, CAROL, BOB] {
        for (what, text) in [
            ("access log", lines.join("\n")),
            ("log", stderr.clone()),
            ("admin /config", admin_config.clone()),
        ] {
            assert!(!text.contains(key), "a key is in the {what}");
        }
    }
}

#[tokio::test]
async fn api_key_providers_are_checked_when_the_config_loads() {
    let dir = config_path().parent().unwrap().to_owned();
    std::fs::write(dir.join("one.yaml"), entry("tg_one", "one", "t")).unwrap();
    let cases = [
        (
            "k: { type: api_key }",
            "routes: []",
            "auth.providers.k.keys_file",
            "needs its keys_file",
        ),
        (
            "k: { type: api_key, keys_file: one.yaml, algorithms: [RS256], issuer: x }",
            "routes: []",
            "auth.providers.k",
            "no algorithms, issuer",
        ),
        (
            "k: { algorithms: [HS256], secret: \"0123456789abcdef0123456789abcdef\", keys_file: one.yaml }",
            "routes: []",
            "auth.providers.k",
            "a JWT provider has no keys_file",
        ),
        (
            "k: { type: api_key, keys_file: one.yaml, from: [\"body:x\"] }",
            "routes: []",
            "auth.providers.k.from[0]",
            "header:NAME",
        ),
        (
            "k: { type: api_key, keys_file: one.yaml }",
            "routes:\n  - { name: r, match: { path: / }, respond: { body: x }, auth: { provider: k, any_of: [k] } }",
            "routes[0].auth",
            "either `provider` or `any_of`",
        ),
        (
            "k: { type: api_key, keys_file: one.yaml }",
            "routes:\n  - { name: r, match: { path: / }, respond: { body: x }, auth: { any_of: [k, nope, k] } }",
            "routes[0].auth.any_of[1]",
            "unknown provider \"nope\"",
        ),
    ];
    for (provider, routes, field, message) in cases {
        let path = dir.join("bad.yaml");
        std::fs::write(
            &path,
            with_server(&format!("auth:\n  providers:\n    {provider}\n{routes}\n")),
        )
        .unwrap();
        let err = tollgate::config::load(&path, None).err().unwrap();
        let text = err.lines().join("\n");
        assert!(
            text.contains(field) && text.contains(message),
            "{provider} / {routes}: wanted {field}: {message}, got\n{text}"
        );
    }
}
