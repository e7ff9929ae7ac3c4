//! JWT authentication over real sockets: every rejection rule, the token
//! sources, claims forwarded upstream, optional and scoped routes, remote
//! JWKS (rotation, refresh throttling, down at start), local keys.

use std::time::Duration;

use jsonwebtoken::{Algorithm, Header};
use serde_json::json;

use crate::support::jwt::{JwksServer, SigningKey, claims, jwks, now, sign_raw};
use crate::support::*;

const ISS: &str = "https://auth.example.com/";
const AUD: &str = "api.example.com";

/// A gateway with provider `main` (remote JWKS at `jwks_uri`) and routes:
/// `/api` required, `/open` optional, `/admin` requiring scope and role,
/// `/public` without auth.
fn config(up: &str, provider_extra: &str) -> String {
    format!(
        r#"upstreams:
  app: {{ endpoints: ["{up}"] }}
auth:
  providers:
    main:
      issuer: "{ISS}"
      audiences: ["{AUD}"]
      algorithms: [RS256]
      token_from: ["header:authorization", "cookie:access_token", "query:access_token"]
      tenant_claim: tenant
      forward_claims: {{ sub: x-user-id, tenant: x-tenant-id }}
{provider_extra}
routes:
  - {{ name: api, match: {{ path_prefix: /api }}, upstream: app, auth: {{ provider: main }} }}
  - {{ name: open, match: {{ path_prefix: /open }}, upstream: app, auth: {{ provider: main, optional: true }} }}
  - name: admin
    match: {{ path_prefix: /admin }}
    upstream: app
    auth: {{ provider: main, require: {{ scope: ["users:read"], roles: ["admin"] }} }}
  - {{ name: public, match: {{ path_prefix: /public }}, upstream: app }}
"#
    )
}

/// Upstream `app`, provider `name` (`{ ... }` inline) and one catch-all
/// route `name` that requires it.
fn one_provider(up: &str, name: &str, provider: &str) -> String {
    format!(
        "upstreams:\n  app: {{ endpoints: [\"{up}\"] }}\nauth:\n  providers:\n    {name}: {provider}\nroutes:\n  - {{ name: {name}, match: {{ path_prefix: / }}, upstream: app, auth: {{ provider: {name} }} }}\n"
    )
}

fn remote(jwks_url: &str) -> String {
    format!("      jwks_uri: \"{jwks_url}\"\n      jwks_min_refresh_interval: 30s\n")
}

struct Setup {
    up: Upstream,
    jwks: JwksServer,
    gw: TestGateway,
    key: SigningKey,
    c: TestClient,
}

async fn setup() -> Setup {
    let up = Upstream::start("app").await;
    let key = SigningKey::rsa("k1");
    let jwks = JwksServer::start(jwks(&[&key])).await;
    let gw = TestGateway::start(&config(&up.url(), &remote(&jwks.url()))).await;
    wait_ready(&gw).await;
    Setup {
        up,
        jwks,
        gw,
        key,
        c: client(),
    }
}

async fn wait_ready(gw: &TestGateway) {
    let c = client();
    for _ in 0..200 {
        if get(&c, &gw.admin_url("/readyz")).await.status == 200 {
            return;
        }
        tokio::time::sleep(POLL).await;
    }
    panic!("gateway never became ready");
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

/// Asserts a 401 with `error="invalid_token"` and the description.
fn assert_invalid(g: &Got, description: &str) {
    assert_eq!(g.status, 401, "{}", g.text());
    assert_eq!(
        g.headers["www-authenticate"],
        format!(
            r#"Bearer realm="tollgate", error="invalid_token", error_description="{description}""#
        )
        .as_str()
    );
    let body = g.json();
    assert_eq!(body["error"], "invalid_token");
    assert_eq!(body["message"], description);
    assert_eq!(
        body["request_id"].as_str().unwrap(),
        g.headers["x-request-id"].to_str().unwrap()
    );
}

#[tokio::test]
async fn valid_token_passes_with_claims_forwarded_and_forged_copies_removed() {
    let s = setup().await;
    let t = s.key.sign(&claims(ISS, AUD));
    let g = get_with(
        &s.c,
        &s.gw.url("/api/users"),
        &[
            ("authorization", &bearer(&t)),
            ("x-user-id", "forged"),
            ("x-tenant-id", "forged"),
        ],
    )
    .await;
    assert_eq!(g.status, 200, "{}", g.text());
    assert_eq!(g.text(), "app");
    let seen = s.up.last();
    assert_eq!(seen.headers["x-user-id"], "user-1");
    assert_eq!(seen.headers["x-tenant-id"], "acme");
    assert_eq!(seen.headers.get_all("x-user-id").iter().count(), 1);
    assert_eq!(seen.headers["authorization"], bearer(&t).as_str());
    // Public routes are untouched by auth.
    let g = get(&s.c, &s.gw.url("/public")).await;
    assert_eq!(g.status, 200);
}

#[tokio::test]
async fn missing_token_gets_401_with_bearer_challenge() {
    let s = setup().await;
    let g = get(&s.c, &s.gw.url("/api/x")).await;
    assert_eq!(g.status, 401);
    assert_eq!(g.headers["www-authenticate"], r#"Bearer realm="tollgate""#);
    assert_eq!(g.json()["error"], "unauthorized");
    // Another scheme carries no bearer token: also missing.
    let g = get_with(
        &s.c,
        &s.gw.url("/api/x"),
        &[("authorization", "Basic dXNlcjpwdw==")],
    )
    .await;
    assert_eq!(g.status, 401);
    assert_eq!(g.headers["www-authenticate"], r#"Bearer realm="tollgate""#);
    assert_eq!(s.up.count(), 0);
}

#[tokio::test]
async fn every_invalid_token_rule_gets_401_and_never_reaches_the_upstream() {
    let s = setup().await;
    let other = SigningKey::rsa("k1"); // same kid, different key
    let hs = SigningKey::hmac(&s.key.public_pem);
    let mut c = claims(ISS, AUD);
    let url = s.gw.url("/api/x");
    let try_token = |t: String| {
        let (c, url) = (s.c.clone(), url.clone());
        async move { get_with(&c, &url, &[("authorization", &bearer(&t))]).await }
    };

    assert_invalid(
        &try_token("not-a-jwt".into()).await,
        "the token is malformed",
    );
    assert_invalid(
        &try_token(other.sign(&c)).await,
        "the token's signature is invalid",
    );
    // HS256 "signed" with the RSA public key as the secret.
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("k1".into());
    assert_invalid(
        &try_token(hs.sign_with(h, &c)).await,
        "the token's algorithm is not accepted",
    );
    // alg none.
    let none = format!(
        "{}.{}.",
        base64_url(&json!({"alg": "none", "kid": "k1"}).to_string()),
        base64_url(&c.to_string())
    );
    assert_invalid(&try_token(none).await, "the token is malformed");
    let none_sig = format!(
        "{}.{}.c2ln",
        base64_url(&json!({"alg": "none", "kid": "k1"}).to_string()),
        base64_url(&c.to_string())
    );
    assert_invalid(
        &try_token(none_sig).await,
        "the token's algorithm is not accepted",
    );
    // RS384 is not in the allowlist even with the right key.
    let mut h = Header::new(Algorithm::RS384);
    h.kid = Some("k1".into());
    assert_invalid(
        &try_token(s.key.sign_with(h, &c)).await,
        "the token's algorithm is not accepted",
    );
    // crit header.
    assert_invalid(
        &try_token(sign_raw(
            &s.key,
            &json!({"alg": "RS256", "kid": "k1", "crit": ["exp"]}),
            &c,
        ))
        .await,
        "the token has an unsupported critical header",
    );
    // An embedded jwk / jku / x5u is never followed: signed by another key.
    let evil = SigningKey::rsa("evil");
    assert_invalid(
        &try_token(sign_raw(
            &evil,
            &json!({"alg": "RS256", "jwk": evil.jwk, "jku": "http://127.0.0.1:1/jwks", "x5u": "http://127.0.0.1:1/c"}),
            &c,
        ))
        .await,
        "the token's signature is invalid",
    );
    // Expired beyond the leeway (default 30s); within it passes.
    c["exp"] = json!(now() - 120);
    let g = try_token(s.key.sign(&c)).await;
    assert_eq!(g.status, 401);
    assert_eq!(
        g.headers["www-authenticate"],
        r#"Bearer realm="tollgate", error="invalid_token", error_description="the token has expired""#
    );
    c["exp"] = json!(now() - 5);
    assert_eq!(try_token(s.key.sign(&c)).await.status, 200);
    // Not yet valid.
    c["exp"] = json!(now() + 3600);
    c["nbf"] = json!(now() + 600);
    assert_invalid(
        &try_token(s.key.sign(&c)).await,
        "the token is not valid yet",
    );
    c.as_object_mut().unwrap().remove("nbf");
    // Wrong issuer; issuer as an array; no issuer.
    c["iss"] = json!("https://evil.example.com/");
    assert_invalid(
        &try_token(s.key.sign(&c)).await,
        "the token's issuer is not accepted",
    );
    c["iss"] = json!([ISS, "https://evil.example.com/"]);
    assert_invalid(
        &try_token(s.key.sign(&c)).await,
        "the token's issuer is not accepted",
    );
    c.as_object_mut().unwrap().remove("iss");
    assert_invalid(&try_token(s.key.sign(&c)).await, "the token has no issuer");
    c["iss"] = json!(ISS);
    // Audience: wrong, missing; an array containing ours passes.
    c["aud"] = json!("other");
    assert_invalid(
        &try_token(s.key.sign(&c)).await,
        "the token's audience is not accepted",
    );
    c.as_object_mut().unwrap().remove("aud");
    assert_invalid(
        &try_token(s.key.sign(&c)).await,
        "the token has no audience",
    );
    c["aud"] = json!(["other", AUD]);
    assert_eq!(try_token(s.key.sign(&c)).await.status, 200);
    // exp missing, or not a number.
    c.as_object_mut().unwrap().remove("exp");
    assert_invalid(
        &try_token(s.key.sign(&c)).await,
        "the token has no valid expiry",
    );
    c["exp"] = json!((now() + 3600).to_string());
    assert_invalid(
        &try_token(s.key.sign(&c)).await,
        "the token has no valid expiry",
    );
    // A malformed nbf.
    c["exp"] = json!(now() + 3600);
    c["nbf"] = json!("soon");
    assert_invalid(
        &try_token(s.key.sign(&c)).await,
        "the token has a malformed claim",
    );
    c.as_object_mut().unwrap().remove("nbf");
    // Over max_token_bytes (8 KiB).
    c["exp"] = json!(now() + 3600);
    c["pad"] = json!("x".repeat(9000));
    assert_invalid(&try_token(s.key.sign(&c)).await, "the token is too large");
    assert_eq!(s.up.count(), 2, "only the two valid tokens went upstream");
}

fn base64_url(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

#[tokio::test]
async fn two_authorization_headers_or_disagreeing_tokens_are_refused() {
    let s = setup().await;
    let t = s.key.sign(&claims(ISS, AUD));
    let t2 = s
        .key
        .sign(&json!({"iss": ISS, "aud": AUD, "exp": now() + 60, "sub": "other"}));
    // Over a raw socket: two Authorization headers with the same valid token.
    let req = format!(
        "GET /api/x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {t}\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n"
    );
    let resp = raw(s.gw.addr, req.as_bytes()).await;
    assert_eq!(raw_status(&resp), 401, "{resp}");
    assert!(resp.contains("more than one Authorization header"));
    // Header and query disagree.
    let g = get_with(
        &s.c,
        &s.gw.url(&format!("/api/x?access_token={t2}")),
        &[("authorization", &bearer(&t))],
    )
    .await;
    assert_invalid(&g, "the request carries different credentials");
    // Cookie and query agree: accepted; cookie alone: accepted.
    let g = get_with(
        &s.c,
        &s.gw.url(&format!("/api/x?access_token={t}")),
        &[("cookie", &format!("a=b; access_token={t}"))],
    )
    .await;
    assert_eq!(g.status, 200);
    let g = get(&s.c, &s.gw.url(&format!("/api/x?access_token={t2}"))).await;
    assert_eq!(g.status, 200);
    assert_eq!(s.up.last().headers["x-user-id"], "other");
}

#[tokio::test]
async fn optional_routes_let_anonymous_requests_through_but_not_bad_tokens() {
    let s = setup().await;
    let g = get_with(&s.c, &s.gw.url("/open"), &[("x-user-id", "forged")]).await;
    assert_eq!(g.status, 200);
    assert!(s.up.last().headers.get("x-user-id").is_none());
    let g = get_with(&s.c, &s.gw.url("/open"), &[("authorization", "Bearer bad")]).await;
    assert_eq!(g.status, 401);
    let t = s.key.sign(&claims(ISS, AUD));
    let g = get_with(&s.c, &s.gw.url("/open"), &[("authorization", &bearer(&t))]).await;
    assert_eq!(g.status, 200);
    assert_eq!(s.up.last().headers["x-user-id"], "user-1");
}

#[tokio::test]
async fn scoped_routes_need_every_listed_value() {
    let s = setup().await;
    let mut c = claims(ISS, AUD);
    c["scope"] = json!("users:write users:read");
    c["roles"] = json!(["viewer", "admin"]);
    let t = s.key.sign(&c);
    let g = get_with(&s.c, &s.gw.url("/admin"), &[("authorization", &bearer(&t))]).await;
    assert_eq!(g.status, 200, "{}", g.text());
    c["roles"] = json!(["viewer"]);
    let t = s.key.sign(&c);
    let g = get_with(&s.c, &s.gw.url("/admin"), &[("authorization", &bearer(&t))]).await;
    assert_eq!(g.status, 403);
    assert_eq!(
        g.headers["www-authenticate"],
        r#"Bearer realm="tollgate", error="insufficient_scope", error_description="the token lacks a required claim value""#
    );
    assert_eq!(g.json()["error"], "insufficient_scope");
    // The same token is fine where no scope is required.
    let g = get_with(&s.c, &s.gw.url("/api"), &[("authorization", &bearer(&t))]).await;
    assert_eq!(g.status, 200);
}

#[tokio::test]
async fn rotation_unknown_kid_refreshes_and_removed_keys_stop_working() {
    let s = setup().await;
    assert_eq!(s.jwks.fetches(), 1);
    let old = s.key.sign(&claims(ISS, AUD));
    // Verified and cached before the rotation.
    let g = get_with(&s.c, &s.gw.url("/api"), &[("authorization", &bearer(&old))]).await;
    assert_eq!(g.status, 200);
    let new_key = SigningKey::rsa("k2");
    s.jwks.set(jwks(&[&new_key]));
    // A token signed by the new key: unknown kid, one refresh, accepted.
    let t = new_key.sign(&claims(ISS, AUD));
    let g = get_with(&s.c, &s.gw.url("/api"), &[("authorization", &bearer(&t))]).await;
    assert_eq!(g.status, 200, "{}", g.text());
    assert_eq!(s.jwks.fetches(), 2);
    // The old key left the set with that refresh (its cached success too).
    let g = get_with(&s.c, &s.gw.url("/api"), &[("authorization", &bearer(&old))]).await;
    assert_invalid(&g, "the token's key id is unknown");
}

#[tokio::test]
async fn a_flood_of_random_kids_fetches_the_jwks_at_most_twice() {
    let s = setup().await;
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some(format!("random-{i}"));
        let t = s.key.sign_with(h, &claims(ISS, AUD));
        let (c, url) = (s.c.clone(), s.gw.url("/api"));
        tasks.push(tokio::spawn(async move {
            get_with(&c, &url, &[("authorization", &format!("Bearer {t}"))])
                .await
                .status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 401);
    }
    assert!(s.jwks.fetches() <= 2, "fetches: {}", s.jwks.fetches());
}

#[tokio::test]
async fn jwks_down_at_start_answers_503_then_recovers() {
    let up = Upstream::start("app").await;
    let key = SigningKey::rsa("k1");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = port.local_addr().unwrap();
    drop(port);
    let gw = TestGateway::start(&config(
        &up.url(),
        &format!(
            "{}      jwks_ready_timeout: 30s\n",
            remote(&format!("http://{addr}/jwks"))
        ),
    ))
    .await;
    let c = client();
    assert_eq!(get(&c, &gw.admin_url("/readyz")).await.status, 503);
    let t = key.sign(&claims(ISS, AUD));
    let g = get_with(&c, &gw.url("/api"), &[("authorization", &bearer(&t))]).await;
    assert_eq!(g.status, 503);
    assert_eq!(g.headers["retry-after"], "5");
    assert_eq!(g.json()["error"], "auth_unavailable");
    let jwks_server = JwksServer::start_on(addr, jwks(&[&key])).await;
    wait_ready(&gw).await;
    let g = get_with(&c, &gw.url("/api"), &[("authorization", &bearer(&t))]).await;
    assert_eq!(g.status, 200);
    assert!(jwks_server.fetches() >= 1);
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_last_good_keys() {
    let s = setup().await;
    s.jwks.stop();
    // An unknown kid forces a refresh, which fails.
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("nope".into());
    let t = s.key.sign_with(h, &claims(ISS, AUD));
    let g = get_with(&s.c, &s.gw.url("/api"), &[("authorization", &bearer(&t))]).await;
    assert_eq!(g.status, 401);
    let t = s.key.sign(&claims(ISS, AUD));
    let g = get_with(&s.c, &s.gw.url("/api"), &[("authorization", &bearer(&t))]).await;
    assert_eq!(g.status, 200);
}

#[tokio::test]
async fn local_keys_es256_jwks_file_eddsa_pem_and_hs256_secret() {
    let up = Upstream::start("app").await;
    let ec = SigningKey::ec("ec1");
    let ed = SigningKey::ed("");
    let secret = "0123456789abcdef0123456789abcdef-secret";
    let hs = SigningKey::hmac(secret);
    let config = config_path();
    let dir = config.parent().unwrap();
    std::fs::write(dir.join("jwks.json"), jwks(&[&ec]).to_string()).unwrap();
    std::fs::write(dir.join("ed.pem"), &ed.public_pem).unwrap();
    let yaml = with_server(&format!(
        r#"upstreams:
  app: {{ endpoints: ["{}"] }}
auth:
  providers:
    ec: {{ algorithms: [ES256], jwks_file: jwks.json }}
    ed: {{ algorithms: [EdDSA], public_key_file: ed.pem }}
    hs: {{ algorithms: [HS256], secret: "{secret}" }}
routes:
  - {{ name: ec, match: {{ path_prefix: /ec }}, upstream: app, auth: {{ provider: ec }} }}
  - {{ name: ed, match: {{ path_prefix: /ed }}, upstream: app, auth: {{ provider: ed }} }}
  - {{ name: hs, match: {{ path_prefix: /hs }}, upstream: app, auth: {{ provider: hs }} }}
"#,
        up.url()
    ));
    std::fs::write(&config, yaml).unwrap();
    let gw = start_path(config.clone(), false).await;
    let c = client();
    let plain = json!({"sub": "s", "exp": now() + 600});
    for (path, key) in [("/ec", &ec), ("/ed", &ed), ("/hs", &hs)] {
        let url = format!("http://{}{path}", gw.listen[0]);
        let g = get_with(&c, &url, &[("authorization", &bearer(&key.sign(&plain)))]).await;
        assert_eq!(g.status, 200, "{path}: {}", g.text());
        // Each provider refuses the others' tokens.
        let other = if path == "/hs" { &ec } else { &hs };
        let g = get_with(&c, &url, &[("authorization", &bearer(&other.sign(&plain)))]).await;
        assert_eq!(g.status, 401, "{path}");
    }
    // The secret is never shown.
    let cfg = get(&c, &format!("http://{}/config", gw.admin)).await.text();
    assert!(!cfg.contains(secret));
    assert!(cfg.contains("<redacted>"));
}

#[tokio::test]
async fn discovery_reads_jwks_uri_from_the_issuer() {
    let up = Upstream::start("app").await;
    let key = SigningKey::rsa("k1");
    let server = JwksServer::start(jwks(&[&key])).await;
    let issuer = format!("http://{}", server.addr);
    let yaml = one_provider(
        &up.url(),
        "main",
        &format!("{{ issuer: \"{issuer}\", algorithms: [RS256], discovery: true }}"),
    );
    let gw = TestGateway::start(&yaml).await;
    wait_ready(&gw).await;
    let c = client();
    let t = key.sign(&json!({"iss": issuer, "exp": now() + 60}));
    let g = get_with(&c, &gw.url("/x"), &[("authorization", &bearer(&t))]).await;
    assert_eq!(g.status, 200, "{}", g.text());
    assert_eq!(server.fetches(), 1);
}

#[tokio::test]
async fn verified_tokens_are_cached_and_counted() {
    // Own provider and route names: the metrics registry is process-wide.
    let up = Upstream::start("app").await;
    let key = SigningKey::rsa("k1");
    let server = JwksServer::start(jwks(&[&key])).await;
    let yaml = one_provider(
        &up.url(),
        "metered",
        &format!("{{ algorithms: [RS256], jwks_uri: \"{}\" }}", server.url()),
    );
    let gw = TestGateway::start(&yaml).await;
    wait_ready(&gw).await;
    let c = client();
    let t = key.sign(&json!({"sub": "s", "exp": now() + 600}));
    for _ in 0..3 {
        let g = get_with(&c, &gw.url("/x"), &[("authorization", &bearer(&t))]).await;
        assert_eq!(g.status, 200);
    }
    let _ = get(&c, &gw.url("/x")).await;
    let m = get(&c, &gw.admin_url("/metrics")).await.text();
    let line = |needle: &str| {
        m.lines()
            .find(|l| l.starts_with(needle))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let auth = |result: &str| {
        line(&format!(
            r#"tollgate_auth_requests_total{{provider="metered",result="{result}",route="metered"}}"#
        ))
    };
    assert_eq!((auth("ok"), auth("missing"), auth("invalid")), (3, 1, 0));
    assert_eq!(line(r#"tollgate_jwks_keys{provider="metered"}"#), 1);
    assert_eq!(
        line(r#"tollgate_jwks_refresh_total{provider="metered",result="success"}"#),
        1
    );
    assert!(line("tollgate_jwt_cache_hits_total") >= 2);
    assert!(line("tollgate_jwt_cache_misses_total") >= 1);
}

#[tokio::test]
async fn invalid_auth_config_is_refused_with_paths() {
    let yaml = r#"
upstreams:
  app: { endpoints: ["http://127.0.0.1:9"] }
auth:
  providers:
    nokeys: { algorithms: [RS256] }
    mixed: { algorithms: [HS256], jwks_uri: "https://a.example/jwks" }
    asym: { algorithms: [RS256], secret: "0123456789abcdef0123456789abcdef" }
    badalg: { algorithms: [none], jwks_uri: "https://a.example/jwks" }
routes:
  - { name: r, match: { path_prefix: / }, upstream: app, auth: { provider: userz } }
"#;
    let err = tollgate::config::build("t.yaml", yaml, None).err().unwrap();
    let lines = err.lines().join("\n");
    for want in [
        "auth.providers.nokeys: give exactly one key source",
        "auth.providers.mixed.algorithms: HS256/HS384/HS512 need a `secret`",
        "auth.providers.asym.algorithms: a `secret` verifies HS256/HS384/HS512 only",
        "auth.providers.badalg.algorithms[0]: `none` is not an algorithm",
        "routes[0].auth.provider: unknown provider \"userz\"",
    ] {
        assert!(lines.contains(want), "missing `{want}` in:\n{lines}");
    }
    assert!(lines.contains("t.yaml:"), "{lines}");
}

#[tokio::test]
async fn reload_rereads_key_files_and_keeps_remote_keys_serving() {
    let up = Upstream::start("app").await;
    let key = SigningKey::rsa("k1");
    let server = JwksServer::start(jwks(&[&key])).await;
    let a = SigningKey::ec("a");
    let b = SigningKey::ec("b");
    let config = |extra: &str| {
        format!(
            r#"upstreams:
  app: {{ endpoints: ["{}"] }}
auth:
  providers:
    file: {{ algorithms: [ES256], jwks_file: keys.json }}
    remote: {{ algorithms: [RS256], jwks_uri: "{}" }}
routes:
  - {{ name: file, match: {{ path_prefix: /file }}, upstream: app, auth: {{ provider: file }} }}
  - {{ name: remote, match: {{ path_prefix: /remote }}, upstream: app, auth: {{ provider: remote }}{extra} }}
"#,
            up.url(),
            server.url()
        )
    };
    let path = config_path();
    let dir = path.parent().unwrap().to_owned();
    std::fs::write(dir.join("keys.json"), jwks(&[&a]).to_string()).unwrap();
    std::fs::write(&path, with_server(&config(""))).unwrap();
    let gw = start_path(path.clone(), false).await;
    let c = client();
    let url = |p: &str| format!("http://{}{p}", gw.listen[0]);
    let claims = json!({"sub": "s", "exp": now() + 600});
    let (ta, tb, tr) = (a.sign(&claims), b.sign(&claims), key.sign(&claims));
    for _ in 0..200 {
        if get_with(&c, &url("/remote"), &[("authorization", &bearer(&tr))])
            .await
            .status
            == 200
        {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let status = |u: String, t: String| {
        let c = c.clone();
        async move {
            get_with(&c, &u, &[("authorization", &bearer(&t))])
                .await
                .status
        }
    };
    assert_eq!(status(url("/file"), ta.clone()).await, 200);
    assert_eq!(status(url("/file"), tb.clone()).await, 401);
    // Same config text, new key file: the reload sees the change.
    std::fs::write(dir.join("keys.json"), jwks(&[&b]).to_string()).unwrap();
    let r = gw.reloader.reload_async("test").await.unwrap();
    assert!(
        matches!(r, tollgate::config::reload::ReloadOutcome::Applied { .. }),
        "{r:?}"
    );
    assert_eq!(status(url("/file"), tb.clone()).await, 200);
    assert_eq!(status(url("/file"), ta.clone()).await, 401);
    // A route change keeps the remote key store: no gap, tokens keep passing.
    std::fs::write(&path, with_server(&config(", timeout: 5s"))).unwrap();
    let r = gw.reloader.reload_async("test").await.unwrap();
    assert!(
        matches!(r, tollgate::config::reload::ReloadOutcome::Applied { .. }),
        "{r:?}"
    );
    assert_eq!(status(url("/remote"), tr.clone()).await, 200);
    // A broken key file is refused; the running config keeps serving.
    std::fs::write(dir.join("keys.json"), "{ not json").unwrap();
    let err = gw.reloader.reload_async("test").await.unwrap_err();
    assert!(
        err.lines()
            .join("\n")
            .contains("auth.providers.file.jwks_file"),
        "{:?}",
        err.lines()
    );
    assert_eq!(status(url("/file"), tb).await, 200);
}

#[tokio::test]
async fn https_jwks_is_verified_against_webpki_roots_plus_ca_file() {
    let up = Upstream::start("app").await;
    let key = SigningKey::rsa("k1");
    let pki = crate::support::tls::ca_and_leaf();
    let server =
        JwksServer::start_tls(jwks(&[&key]), crate::support::tls::server_config(&pki)).await;
    let path = config_path();
    let dir = path.parent().unwrap().to_owned();
    std::fs::write(dir.join("ca.pem"), &pki.ca_pem).unwrap();
    let yaml = format!(
        r#"upstreams:
  app: {{ endpoints: ["{}"] }}
auth:
  providers:
    trusted: {{ algorithms: [RS256], jwks_uri: "{url}", ca_file: ca.pem }}
    untrusted: {{ algorithms: [RS256], jwks_uri: "{url}", jwks_ready_timeout: 1ms }}
routes:
  - {{ name: trusted, match: {{ path_prefix: /trusted }}, upstream: app, auth: {{ provider: trusted }} }}
  - {{ name: untrusted, match: {{ path_prefix: /untrusted }}, upstream: app, auth: {{ provider: untrusted }} }}
"#,
        up.url(),
        url = server.https_url()
    );
    std::fs::write(&path, with_server(&yaml)).unwrap();
    let gw = start_path(path, false).await;
    let c = client();
    let t = key.sign(&json!({"sub": "s", "exp": now() + 600}));
    let url = |p: &str| format!("http://{}{p}", gw.listen[0]);
    let mut status = 0;
    for _ in 0..200 {
        status = get_with(&c, &url("/trusted"), &[("authorization", &bearer(&t))])
            .await
            .status;
        if status == 200 {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    assert_eq!(status, 200, "JWKS over TLS with the CA from ca_file");
    // /readyz stops waiting for the untrusted provider after its 1ms.
    assert_eq!(
        get(&c, &format!("http://{}/readyz", gw.admin)).await.status,
        200
    );
    // Without the CA the certificate is not trusted: no keys, nobody let in.
    let g = get_with(&c, &url("/untrusted"), &[("authorization", &bearer(&t))]).await;
    assert_eq!(g.status, 503);
    assert_eq!(g.json()["error"], "auth_unavailable");
    assert_eq!(
        server.fetches(),
        1,
        "only the trusted provider got the document"
    );
}

#[tokio::test]
async fn a_shorter_max_age_on_the_jwks_response_wins_over_jwks_refresh() {
    let up = Upstream::start("app").await;
    let key = SigningKey::rsa("k1");
    let server = JwksServer::start(jwks(&[&key])).await;
    *server.cache_control.lock().unwrap() = Some("public, max-age=1".into());
    let yaml = one_provider(
        &up.url(),
        "p",
        &format!(
            "{{ algorithms: [RS256], jwks_uri: \"{}\", jwks_refresh: 10m, jwks_min_refresh_interval: 1s }}",
            server.url()
        ),
    );
    let started = std::time::Instant::now();
    let _gw = TestGateway::start(&yaml).await;
    eventually("the keys were fetched three times", async || {
        server.fetches() >= 3
    })
    .await;
    // The first fetch at start, then one each time max-age=1 (floored at
    // jwks_min_refresh_interval: 1s) ran out: never sooner.
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "three fetches in {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn custom_header_source_and_forward_token_false() {
    let up = Upstream::start("app").await;
    let secret = "forward-token-test-secret-32-bytes-long";
    let key = SigningKey::hmac(secret);
    let yaml = one_provider(
        &up.url(),
        "p",
        &format!(
            "{{ algorithms: [HS256], secret: \"{secret}\", token_from: [\"header:x-token\", \"header:authorization\"], forward_token: false }}"
        ),
    );
    let gw = TestGateway::start(&yaml).await;
    let c = client();
    let t = key.sign(&json!({"sub": "s", "exp": now() + 60}));
    let g = get_with(&c, &gw.url("/x"), &[("x-token", &t)]).await;
    assert_eq!(g.status, 200, "{}", g.text());
    let g = get_with(&c, &gw.url("/x"), &[("authorization", &bearer(&t))]).await;
    assert_eq!(g.status, 200);
    assert!(
        up.last().headers.get("authorization").is_none(),
        "forward_token: false removes Authorization"
    );
    let other = key.sign(&json!({"sub": "other", "exp": now() + 60}));
    let g = get_with(
        &c,
        &gw.url("/x"),
        &[("x-token", &t), ("authorization", &bearer(&other))],
    )
    .await;
    assert_eq!(g.status, 401, "two different tokens");
}

#[tokio::test]
async fn forward_token_false_strips_the_token_from_every_source() {
    let up = Upstream::start("app").await;
    let secret = "strip-token-test-secret-of-32-bytes!!";
    let key = SigningKey::hmac(secret);
    let yaml = one_provider(
        &up.url(),
        "p",
        &format!(
            "{{ algorithms: [HS256], secret: \"{secret}\", token_from: [\"header:authorization\", \"cookie:access_token\", \"query:access_token\"], forward_token: false }}"
        ),
    );
    let gw = TestGateway::start(&yaml).await;
    let c = client();
    let t = key.sign(&json!({"sub": "s", "exp": now() + 60}));
    let g = get_with(
        &c,
        &gw.url(&format!("/x?a=1&access_token={t}&b=2")),
        &[
            ("authorization", &bearer(&t)),
            ("cookie", &format!("x=1; access_token={t}; y=2")),
        ],
    )
    .await;
    assert_eq!(g.status, 200, "{}", g.text());
    let seen = up.last();
    assert_eq!(seen.uri, "/x?a=1&b=2");
    assert_eq!(seen.headers["cookie"], "x=1; y=2");
    assert!(seen.headers.get("authorization").is_none());
}

/// A provider `mixed` accepting `algorithms`, keys from a JWKS server, and
/// claims `tenant` / `groups` forwarded.
async fn mixed_provider(
    algorithms: &str,
    keys: &[&SigningKey],
) -> (Upstream, JwksServer, TestGateway) {
    let up = Upstream::start("app").await;
    let jwks_server = JwksServer::start(jwks(keys)).await;
    let gw = TestGateway::start(&one_provider(
        &up.url(),
        "mixed",
        &format!(
            "{{ jwks_uri: \"{}\", algorithms: {algorithms}, forward_claims: {{ tenant: x-tenant-id, groups: x-groups, admin: x-admin, org: x-org, none: x-none }} }}",
            jwks_server.url()
        ),
    ))
    .await;
    wait_ready(&gw).await;
    (up, jwks_server, gw)
}

#[tokio::test]
async fn a_provider_with_two_key_families_accepts_both_and_refuses_the_rest() {
    let rsa = SigningKey::rsa("r1");
    let ec = SigningKey::ec("e1");
    let (up, _j, gw) = mixed_provider("[RS256, ES256]", &[&rsa, &ec]).await;
    let c = client();
    for key in [&rsa, &ec] {
        let t = key.sign(&claims(ISS, AUD));
        let g = get_with(&c, &gw.url("/x"), &[("authorization", &bearer(&t))]).await;
        assert_eq!(g.status, 200, "{:?}: {}", key.alg, g.text());
    }
    assert_eq!(up.count(), 2);
    // An algorithm outside the list, even with a key of an accepted family.
    let ps = SigningKey::rsa_with("r1", Algorithm::PS256);
    let ps = SigningKey {
        enc: rsa.enc.clone(),
        ..ps
    };
    let g = get_with(
        &c,
        &gw.url("/x"),
        &[("authorization", &bearer(&ps.sign(&claims(ISS, AUD))))],
    )
    .await;
    assert_invalid(&g, "the token's algorithm is not accepted");
    // A token whose header names ES256 but carries an RSA signature.
    let forged = sign_raw(
        &rsa,
        &json!({"alg": "ES256", "kid": "e1", "typ": "JWT"}),
        &claims(ISS, AUD),
    );
    let g = get_with(&c, &gw.url("/x"), &[("authorization", &bearer(&forged))]).await;
    assert_eq!(g.status, 401, "{}", g.text());
    // HS256 signed with the RSA public key (algorithm confusion).
    let hs = SigningKey::hmac(&rsa.public_pem);
    let g = get_with(
        &c,
        &gw.url("/x"),
        &[("authorization", &bearer(&hs.sign(&claims(ISS, AUD))))],
    )
    .await;
    assert_invalid(&g, "the token's algorithm is not accepted");
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn a_provider_with_ps256_and_eddsa_accepts_both() {
    let ps = SigningKey::rsa_with("p1", Algorithm::PS256);
    let ed = SigningKey::ed("d1");
    let (up, _j, gw) = mixed_provider("[PS256, EdDSA]", &[&ps, &ed]).await;
    let c = client();
    for key in [&ps, &ed] {
        let t = key.sign(&claims(ISS, AUD));
        let g = get_with(&c, &gw.url("/x"), &[("authorization", &bearer(&t))]).await;
        assert_eq!(g.status, 200, "{:?}: {}", key.alg, g.text());
    }
    // RS256 with the PS256 key's own RSA key is still refused.
    let rs = SigningKey {
        enc: ps.enc.clone(),
        ..SigningKey::rsa_with("p1", Algorithm::RS256)
    };
    let g = get_with(
        &c,
        &gw.url("/x"),
        &[("authorization", &bearer(&rs.sign(&claims(ISS, AUD))))],
    )
    .await;
    assert_invalid(&g, "the token's algorithm is not accepted");
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn only_string_and_number_claims_become_headers() {
    let key = SigningKey::rsa("r1");
    let (up, _j, gw) = mixed_provider("[RS256]", &[&key]).await;
    let mut c = claims(ISS, AUD);
    c["tenant"] = json!(["acme", "globex"]);
    c["groups"] = json!({"a": 1});
    c["admin"] = json!(true);
    c["none"] = json!(null);
    c["org"] = json!(42);
    let g = get_with(
        &client(),
        &gw.url("/x"),
        &[
            ("authorization", &bearer(&key.sign(&c))),
            ("x-tenant-id", "forged"),
            ("x-admin", "true"),
        ],
    )
    .await;
    assert_eq!(g.status, 200, "{}", g.text());
    let seen = up.last();
    for h in ["x-tenant-id", "x-groups", "x-admin", "x-none"] {
        assert!(
            !seen.headers.contains_key(h),
            "{h}: {:?}",
            seen.headers.get(h)
        );
    }
    assert_eq!(seen.headers["x-org"], "42");
    // A control character in a string claim: never forwarded either.
    let mut c = claims(ISS, AUD);
    c["tenant"] = json!("acme\r\nx-evil: 1");
    let g = get_with(
        &client(),
        &gw.url("/x"),
        &[("authorization", &bearer(&key.sign(&c)))],
    )
    .await;
    assert_eq!(g.status, 200);
    let seen = up.last();
    assert!(!seen.headers.contains_key("x-tenant-id"));
    assert!(!seen.headers.contains_key("x-evil"));
}
