//! The admin dashboard (`GET /ui`) in a real browser: headless Chromium
//! loads it from a running gateway, its script fills it from the admin
//! API, and the rendered page shows the routes, upstreams, cache and
//! reloads with no script error.

use base64::Engine;

use crate::support::*;

const TOKEN: &str = "an-admin-token-for-the-ui-test";

fn config(up: &str, token: Option<&str>) -> String {
    let admin = token.map_or(String::new(), |t| format!("admin: {{ token: \"{t}\" }}"));
    format!(
        "{}cache: {{}}\nrate_limits:\n  per_ip: {{ key: client_ip, rate: 100/s }}\nupstreams:\n  shop: {{ endpoints: [\"{up}\"] }}\nroutes:\n  - {{ name: catalog, match: {{ path_prefix: /catalog }}, upstream: shop, cache: {{ default_ttl: 30s }}, rate_limit: [per_ip] }}\n  - {{ name: ping, match: {{ path: /ping }}, respond: {{ body: pong }} }}\n",
        server_with(&admin)
    )
}

/// What Chromium renders of `url`, after its scripts ran for a while of
/// virtual time; and its stderr.
fn render(url: &str) -> (String, String) {
    let out = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--enable-logging=stderr",
            "--virtual-time-budget=5000",
            "--dump-dom",
            url,
        ])
        .output()
        .expect("chromium runs (apt-get install chromium)");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(tollgate_chromium),
    ignore = "needs chromium (apt-get install chromium)"
)]
async fn the_dashboard_renders_the_gateway_state_in_a_real_browser() {
    let up = Upstream::start("shop").await;
    let gw = TestGateway::start(&config(&up.url(), None)).await;
    let c = client();
    for _ in 0..3 {
        assert_eq!(get(&c, &gw.url("/catalog/1")).await.status, 200);
    }
    let version = get(&c, &gw.admin_url("/config")).await.json()["version"]
        .as_str()
        .unwrap()
        .to_owned();
    let url = gw.admin_url("/ui");
    let (dom, stderr) = tokio::task::spawn_blocking(move || render(&url))
        .await
        .unwrap();
    // Filled in by the page's script from /config, /upstreams,
    // /cache/stats, /reloads and /metrics.
    for expected in [
        version.as_str(),
        "<td>catalog</td>",
        "<td>ping</td>",
        "→ shop",
        "per_ip",
        "on (30s)",
        &up.addr.to_string(),
        "hit ratio",
        "<td>start</td>",
        "rate limit",
    ] {
        assert!(dom.contains(expected), "{expected} not rendered:\n{dom}");
    }
    assert!(
        dom.contains(r#"<pre id="problems"></pre>"#),
        "the page reported a problem:\n{dom}"
    );
    assert!(!stderr.contains("Uncaught"), "{stderr}");
}

#[tokio::test]
async fn the_dashboard_takes_the_admin_token_as_a_browser_sends_it() {
    let up = Upstream::start("shop").await;
    let gw = TestGateway::start(&config(&up.url(), Some(TOKEN))).await;
    let c = client();
    // Without credentials the browser is asked for them (Basic).
    let g = get(&c, &gw.admin_url("/ui")).await;
    assert_eq!(g.status, 401);
    assert!(
        g.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic realm=\"tollgate-admin\""),
        "{:?}",
        g.headers
    );
    // The token as the Basic password (any user name), for the page and
    // the requests its script makes.
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("admin:{TOKEN}"))
    );
    for path in ["/ui", "/config", "/reloads", "/upstreams"] {
        let g = get_with(&c, &gw.admin_url(path), &[("authorization", &basic)]).await;
        assert_eq!(g.status, 200, "{path}");
    }
    let page = get_with(&c, &gw.admin_url("/ui"), &[("authorization", &basic)]).await;
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    assert!(
        page.headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("connect-src 'self'")
    );
    // A wrong password is refused like a wrong bearer token.
    let wrong = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("admin:not-the-token")
    );
    let g = get_with(&c, &gw.admin_url("/config"), &[("authorization", &wrong)]).await;
    assert_eq!(g.status, 401);
}

#[tokio::test]
async fn reloads_are_listed_newest_first_with_what_they_changed_or_why_they_were_refused() {
    let up = Upstream::start("shop").await;
    let gw = TestGateway::start(&config(&up.url(), None)).await;
    let c = client();
    gw.write_config(&config(&up.url(), None).replace("default_ttl: 30s", "default_ttl: 60s"));
    assert_eq!(post(&c, &gw.admin_url("/reload"), "").await.status, 200);
    gw.write_config("routes:\n  - { name: x, match: { path: /x }, upstream: nope }\n");
    assert_eq!(post(&c, &gw.admin_url("/reload"), "").await.status, 422);
    let list = get(&c, &gw.admin_url("/reloads")).await.json();
    let list = list.as_array().unwrap();
    let results: Vec<&str> = list.iter().map(|r| r["result"].as_str().unwrap()).collect();
    assert_eq!(results, ["refused", "applied", "applied"], "{list:?}");
    assert_eq!(list[2]["trigger"], "start");
    assert!(
        list[0]["errors"][0]
            .as_str()
            .unwrap()
            .contains("unknown upstream")
    );
    assert_eq!(
        list[1]["changes"],
        serde_json::json!([
            "routes changed: catalog",
            "kept warm: upstreams.shop, rate_limits.per_ip, cache"
        ])
    );
}
