//! IP allow and deny lists: matched against the client address the
//! gateway determined (trusted proxies honoured), IPv4 and IPv6, deny
//! winning, 403 `ip_denied` before authentication; lists from files,
//! re-read on reload.

use crate::support::*;

/// Tests come from 127.0.0.1, a trusted proxy here: the client address is
/// the one `X-Forwarded-For` names.
fn config(up: &str, list_dir: &std::path::Path) -> String {
    format!(
        "{}auth:\n  providers:\n    p: {{ algorithms: [HS256], secret: \"an-ip-test-secret-of-at-least-32-bytes\" }}\nupstreams:\n  app: {{ endpoints: [\"{up}\"] }}\nroutes:\n  - {{ name: office, match: {{ path_prefix: /office }}, upstream: app, auth: {{ provider: p }}, ip: {{ allow: [\"10.1.0.0/16\", \"2001:db8:1::/48\"], deny: [\"10.1.99.0/24\"] }} }}\n  - {{ name: public, match: {{ path_prefix: / }}, upstream: app, ip: {{ deny_file: {}/blocked.txt }} }}\n",
        server_with("trusted_proxies: [\"127.0.0.1/32\"]\nip: { deny: [\"192.0.2.0/24\"] }"),
        list_dir.display()
    )
}

async fn from(c: &TestClient, url: &str, client: &str) -> Got {
    get_with(c, url, &[("x-forwarded-for", client)]).await
}

#[tokio::test]
async fn allow_and_deny_lists_decide_by_the_resolved_client_address() {
    let up = Upstream::start("app").await;
    let dir = config_path().parent().unwrap().to_path_buf();
    std::fs::write(
        dir.join("blocked.txt"),
        "# abusers\n203.0.113.0/24\n2001:db8:bad::1\n",
    )
    .unwrap();
    let gw = TestGateway::start(&config(&up.url(), &dir)).await;
    let c = client();
    let office = gw.url("/office/x");
    // Allowed: answered by auth (401), so the IP check came first and let it through.
    assert_eq!(from(&c, &office, "10.1.2.3").await.status, 401);
    assert_eq!(
        from(&c, &office, "2001:db8:1::7").await.status,
        401,
        "IPv6 allowed"
    );
    // Denied before authentication: 403 ip_denied with the JSON body.
    for client in ["10.1.99.5", "10.2.0.1", "2001:db8:2::1"] {
        let g = from(&c, &office, client).await;
        assert_eq!(g.status, 403, "{client}");
        assert_eq!(g.json()["error"], "ip_denied");
        assert_eq!(
            g.json()["request_id"],
            g.headers["x-request-id"].to_str().unwrap()
        );
    }
    // The list file, and server.ip for every route.
    assert_eq!(from(&c, &gw.url("/p"), "198.51.100.1").await.status, 200);
    assert_eq!(from(&c, &gw.url("/p"), "203.0.113.9").await.status, 403);
    assert_eq!(from(&c, &gw.url("/p"), "2001:db8:bad::1").await.status, 403);
    assert_eq!(
        from(&c, &gw.url("/p"), "192.0.2.1").await.status,
        403,
        "server.ip"
    );
    assert_eq!(
        from(&c, &gw.url("/nope-no-route"), "192.0.2.1")
            .await
            .status,
        403,
        "server.ip comes before routing"
    );
    // Without a trusted proxy's header, the peer (127.0.0.1) is the client.
    assert_eq!(get(&c, &gw.url("/p")).await.status, 200);
    let m = get(&c, &gw.admin_url("/metrics")).await.text();
    assert_eq!(
        metric(
            &m,
            r#"tollgate_ip_denied_total{route="office",scope="route"}"#
        ),
        3.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, r#"tollgate_ip_denied_total{route="",scope="server"}"#),
        2.0
    );
    // A changed list file is a change on reload: unblocked now.
    std::fs::write(dir.join("blocked.txt"), "2001:db8:bad::1\n").unwrap();
    assert_eq!(
        post(&c, &gw.admin_url("/reload"), "").await.json()["changed"],
        true
    );
    assert_eq!(from(&c, &gw.url("/p"), "203.0.113.9").await.status, 200);
    // A bad line is refused with its place, and the old lists keep serving.
    std::fs::write(dir.join("blocked.txt"), "2001:db8:bad::1\nnot-a-cidr\n").unwrap();
    let r = post(&c, &gw.admin_url("/reload"), "").await;
    assert_eq!(r.status, 422);
    assert!(r.text().contains("routes[1].ip.deny_file"), "{}", r.text());
    assert!(r.text().contains("line 2: `not-a-cidr`"), "{}", r.text());
    assert_eq!(from(&c, &gw.url("/p"), "2001:db8:bad::1").await.status, 403);
}
