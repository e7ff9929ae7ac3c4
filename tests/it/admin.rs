//! The admin API as a control plane: a bearer token on everything but the
//! probes and the scrape, refusal of a public listener without one, and a
//! connection cap of its own.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

const TOKEN: &str = "admin-token-0123456789abcdef";

fn gateway_yaml(admin: &str) -> String {
    let listen = if admin.contains("listen:") {
        String::new()
    } else {
        "listen: \"127.0.0.1:0\", ".to_owned()
    };
    format!(
        "server:\n  listen: [\"127.0.0.1:0\"]\n  access_log: {{ enabled: false }}\n  admin: {{ {listen}{admin} }}\nroutes:\n  - {{ name: a, match: {{ path: /a }}, respond: {{ body: a }} }}\n"
    )
}

async fn admin_get(gw: &TestGateway, path: &str, auth: Option<&str>) -> Got {
    let mut headers = Vec::new();
    if let Some(a) = auth {
        headers.push(("authorization", a));
    }
    get_with(&client(), &gw.admin_url(path), &headers).await
}

#[tokio::test]
async fn with_a_token_every_admin_endpoint_but_probes_and_metrics_needs_it() {
    let gw = TestGateway::start(&gateway_yaml(&format!("token: \"{TOKEN}\""))).await;
    for open in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(admin_get(&gw, open, None).await.status, 200, "{open}");
    }
    let bearer = format!("Bearer {TOKEN}");
    let wrong = format!("Bearer {TOKEN}x");
    for path in [
        "/config",
        "/upstreams",
        "/routes/explain?path=/a",
        "/cache/stats",
    ] {
        for auth in [None, Some(wrong.as_str()), Some(TOKEN), Some("Basic YTpi")] {
            let g = admin_get(&gw, path, auth).await;
            assert_eq!(g.status, 401, "{path} {auth:?}");
            assert_eq!(
                g.headers["www-authenticate"],
                "Bearer realm=\"tollgate-admin\""
            );
            assert_eq!(g.json()["error"], "unauthorized");
        }
        let g = admin_get(&gw, path, Some(&bearer)).await;
        assert_ne!(g.status, 401, "{path}: {}", g.text());
    }
    // POST /reload too, and the token never shows in /config.
    let c = client();
    assert_eq!(post(&c, &gw.admin_url("/reload"), "").await.status, 401);
    let r = send(
        &c,
        http::Request::post(gw.admin_url("/reload"))
            .header("authorization", &bearer)
            .body(Default::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let cfg = admin_get(&gw, "/config", Some(&bearer)).await.text();
    assert!(!cfg.contains(TOKEN), "{cfg}");
    // Two Authorization headers are refused over a raw socket.
    let resp = raw(
        gw.admin,
        format!("GET /config HTTP/1.1\r\nHost: a\r\nAuthorization: {bearer}\r\nAuthorization: {bearer}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&resp), 401, "{resp}");
}

#[tokio::test]
async fn a_token_file_is_read_relative_to_the_config_and_again_on_reload() {
    let gw = start_with_token_file(&gateway_yaml("token_file: admin.token")).await;
    let file = gw.config.with_file_name("admin.token");
    let first = format!("Bearer {TOKEN}");
    assert_eq!(admin_get(&gw, "/config", Some(&first)).await.status, 200);
    std::fs::write(&file, "rotated-token-0123456789\n").unwrap();
    let r = send(
        &client(),
        http::Request::post(gw.admin_url("/reload"))
            .header("authorization", &first)
            .body(Default::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["changed"], true, "a new token file is a change");
    assert_eq!(admin_get(&gw, "/config", Some(&first)).await.status, 401);
    assert_eq!(
        admin_get(&gw, "/config", Some("Bearer rotated-token-0123456789"))
            .await
            .status,
        200
    );
}

/// Starts a gateway whose config names `admin.token` beside it, writing
/// the token file first.
async fn start_with_token_file(yaml: &str) -> TestGateway {
    let path = config_path();
    std::fs::write(path.with_file_name("admin.token"), format!("  {TOKEN}\n")).unwrap();
    std::fs::write(&path, yaml).unwrap();
    let gw = start_path(path.clone(), false).await;
    TestGateway {
        addr: gw.listen[0],
        admin: gw.admin,
        gw: Some(gw),
        config: path,
    }
}

#[test]
fn a_public_admin_listener_needs_a_token_or_an_explicit_waiver() {
    let check = |admin: &str| {
        let path = config_path();
        std::fs::write(&path, gateway_yaml(admin)).unwrap();
        let (code, _, err) = tollgate_cli(&["validate", "-c", path.to_str().unwrap()]);
        (code, err)
    };
    let (code, err) = check("listen: \"0.0.0.0:9901\"");
    assert_eq!(code, 1);
    assert!(
        err.contains("server.admin.token: the admin API listens on `0.0.0.0:9901`"),
        "{err}"
    );
    let (code, err) = check("listen: \"0.0.0.0:9901\", allow_public_without_token: true");
    assert_eq!(code, 0, "{err}");
    let (code, err) = check(&format!("listen: \"[::]:9901\", token: \"{TOKEN}\""));
    assert_eq!(code, 0, "{err}");
    let (code, err) = check("token: \"short\"");
    assert_eq!(code, 1);
    assert!(err.contains("at least 16 bytes"), "{err}");
    // The old `admin_listen` key still works, and is checked the same way.
    let path = config_path();
    std::fs::write(
        &path,
        "server:\n  admin_listen: \"0.0.0.0:9901\"\nroutes:\n  - { name: a, match: { path: /a }, respond: { body: a } }\n",
    )
    .unwrap();
    let (code, _, _) = tollgate_cli(&["validate", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 1);
}

#[tokio::test]
async fn admin_connections_have_their_own_cap() {
    let gw = TestGateway::start(&gateway_yaml("max_connections: 2")).await;
    // Two idle connections take both slots.
    let held: Vec<tokio::net::TcpStream> = vec![
        tokio::net::TcpStream::connect(gw.admin).await.unwrap(),
        tokio::net::TcpStream::connect(gw.admin).await.unwrap(),
    ];
    let mut third = tokio::net::TcpStream::connect(gw.admin).await.unwrap();
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    // Not served while the cap is taken (a bounded look, by its nature)...
    let early = tokio::time::timeout(Duration::from_millis(300), third.read_to_end(&mut buf)).await;
    assert!(
        early.is_err(),
        "served past the cap: {}",
        String::from_utf8_lossy(&buf)
    );
    // ...and served as soon as a slot frees.
    drop(held);
    tokio::time::timeout(IO_WAIT, third.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"));
    // The proxy listener is not affected by the admin cap.
    assert_eq!(get(&client(), &gw.url("/a")).await.text(), "a");
}
