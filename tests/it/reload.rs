//! Hot reload: admin, file watch, refusal of bad configs, in-flight
//! requests, drain.

use std::time::Duration;

use crate::support::*;

fn config(up: &Upstream, extra_route: bool) -> String {
    let mut s = format!(
        "upstreams:\n  app: {{ endpoints: [\"{}\"] }}\nroutes:\n  - {{ name: app, match: {{ path_prefix: /app }}, upstream: app }}\n",
        up.url()
    );
    if extra_route {
        s.push_str("  - { name: extra, match: { path: /extra }, respond: { body: extra } }\n");
    }
    s
}

#[tokio::test]
async fn a_dry_run_reload_says_what_it_would_do_and_changes_nothing() {
    let up = Upstream::start("app").await;
    let gw = TestGateway::start(&config(&up, false)).await;
    let c = client();
    gw.write_config(&config(&up, true));
    let r = post(&c, &gw.admin_url("/reload?dry_run=true"), "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["dry_run"], true);
    assert_eq!(j["changed"], true);
    assert_eq!(j["plan"]["routes"]["added"], serde_json::json!(["extra"]));
    assert_eq!(j["plan"]["kept_warm"], serde_json::json!(["upstreams.app"]));
    // Nothing was applied: the route is not there yet.
    assert_eq!(get(&c, &gw.url("/extra")).await.status, 404);
    // A bad file: its errors, and still nothing applied.
    gw.write_config("routes:\n  - { name: x, match: { path: /x }, upstream: nope }\n");
    let r = post(&c, &gw.admin_url("/reload?dry_run=true"), "").await;
    assert_eq!(r.status, 422);
    assert!(r.text().contains("unknown upstream"), "{}", r.text());
    assert_eq!(get(&c, &gw.url("/app/x")).await.status, 200);
}

#[tokio::test]
async fn admin_reload_applies_good_configs_and_refuses_bad_ones() {
    let up = Upstream::start("app").await;
    let gw = TestGateway::start(&config(&up, false)).await;
    let c = client();
    assert_eq!(get(&c, &gw.url("/extra")).await.status, 404);
    gw.write_config(&config(&up, true));
    let r = post(&c, &gw.admin_url("/reload"), "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["changed"], true);
    let version = r.json()["version"].as_str().unwrap().to_owned();
    assert_eq!(get(&c, &gw.url("/extra")).await.text(), "extra");
    // Broken: unknown upstream. Refused with location; old config serves.
    let failures = |m: &str| -> u64 {
        m.lines()
            .find_map(|l| l.strip_prefix("tollgate_config_reloads_total{result=\"failure\"} "))
            .map_or(0, |v| v.parse().unwrap())
    };
    let before = failures(&get(&c, &gw.admin_url("/metrics")).await.text());
    gw.write_config("routes:\n  - { name: x, match: { path: /x }, upstream: nope }\n");
    let r = post(&c, &gw.admin_url("/reload"), "").await;
    assert_eq!(r.status, 422);
    let errors = r.json()["errors"].to_string();
    assert!(
        errors.contains("routes[0].upstream: unknown upstream \\\"nope\\\""),
        "{errors}"
    );
    assert!(errors.contains(":6:"), "line of the error: {errors}");
    assert_eq!(get(&c, &gw.url("/extra")).await.text(), "extra");
    assert_eq!(get(&c, &gw.url("/app")).await.text(), "app");
    let cfg = get(&c, &gw.admin_url("/config")).await.json();
    assert_eq!(cfg["version"], version.as_str());
    let m = get(&c, &gw.admin_url("/metrics")).await.text();
    // The registry is process-wide: other tests' refusals count too.
    assert!(failures(&m) > before, "{m}");
    assert!(m.contains(&format!("tollgate_config_info{{version=\"{version}\"}} 1")));
}

#[tokio::test]
async fn file_changes_are_picked_up_by_the_watcher() {
    let up = Upstream::start("app").await;
    let gw = TestGateway::start_with(&config(&up, false), true).await;
    let c = client();
    gw.write_config(&config(&up, true));
    // Wait for the debounced reload: poll, bounded.
    let mut ok = false;
    for _ in 0..250 {
        if get(&c, &gw.url("/extra")).await.status == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    assert!(ok, "watcher applied the new config");
}

#[tokio::test]
async fn in_flight_requests_finish_on_their_snapshot_and_pools_stay_warm() {
    let up = Upstream::start("app").await;
    let gw = TestGateway::start(&format!(
        "upstreams:\n  app: {{ endpoints: [\"{}\"] }}\nroutes:\n  - {{ name: app, match: {{ path_prefix: /app }}, upstream: app, rewrite_prefix: {{ from: /app, to: / }} }}\n",
        up.url()
    ))
    .await;
    let c = client();
    let slow = {
        let c = c.clone();
        let url = gw.url("/app/slow/500");
        tokio::spawn(async move { get(&c, &url).await })
    };
    eventually("the slow request reached the upstream", async || {
        up.count() == 1
    })
    .await;
    // Remove the route the slow request is using.
    gw.write_config(&format!("upstreams:\n  app: {{ endpoints: [\"{}\"] }}\nroutes:\n  - {{ name: other, match: {{ path: /other }}, upstream: app }}\n", up.url()));
    let before = gw.gw.as_ref().unwrap().live.load().upstreams["app"].clone();
    assert_eq!(post(&c, &gw.admin_url("/reload"), "").await.status, 200);
    let after = gw.gw.as_ref().unwrap().live.load().upstreams["app"].clone();
    assert!(
        std::sync::Arc::ptr_eq(&before, &after),
        "unchanged upstream kept (with its pool)"
    );
    let r = slow.await.unwrap();
    assert_eq!(
        (r.status, r.text()),
        (200, "app".to_owned()),
        "the request finishes on the snapshot it started on, whose route is gone now"
    );
    assert_eq!(
        get(&c, &gw.url("/app/x")).await.status,
        404,
        "gone for new requests"
    );
    let slow2 = {
        let c = c.clone();
        let url = gw.url("/other");
        tokio::spawn(async move { get(&c, &url).await })
    };
    assert_eq!(slow2.await.unwrap().status, 200);
}

#[tokio::test]
async fn drain_lets_twenty_slow_requests_finish() {
    let up = Upstream::start("app").await;
    let mut gw = TestGateway::start(&proxy_all(&up.url())).await;
    let c = client();
    let tasks = spawn_gets(&c, &gw.url("/slow/700"), 20);
    eventually("all twenty reached the upstream", async || up.count() == 20).await;
    let admin = gw.admin;
    let g = gw.gw.take().unwrap();
    let drain = tokio::spawn(g.shutdown());
    eventually("/readyz turns 503 once the drain begins", async || {
        let ready = raw(
            admin,
            b"GET /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .await;
        raw_status(&ready) == 503
    })
    .await;
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert!(drain.await.unwrap(), "drained within the grace period");
    assert!(
        tokio::net::TcpStream::connect(gw.addr).await.is_err()
            || raw(gw.addr, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
                .await
                .is_empty(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn metrics_expose_every_core_family() {
    let up = Upstream::start("app").await;
    let gw = TestGateway::start(&config(&up, false)).await;
    let c = client();
    assert_eq!(get(&c, &gw.url("/app/x")).await.status, 200);
    assert_eq!(get(&c, &gw.url("/nope")).await.status, 404);
    let m = get(&c, &gw.admin_url("/metrics")).await.text();
    for family in [
        "tollgate_requests_total{method=\"GET\",route=\"app\",status=\"200\"}",
        "tollgate_requests_total{method=\"GET\",route=\"\",status=\"404\"}",
        "tollgate_request_duration_seconds_bucket{route=\"app\"",
        &format!(
            "tollgate_upstream_requests_total{{endpoint=\"{}\",status=\"200\",upstream=\"app\"}}",
            up.addr
        ),
        "tollgate_upstream_duration_seconds_bucket{upstream=\"app\"",
        "tollgate_connections_active",
        "tollgate_requests_inflight",
        "tollgate_config_last_reload_success_timestamp_seconds",
        "tollgate_config_info{version=",
        "process_resident_memory_bytes",
    ] {
        assert!(m.contains(family), "missing {family}");
    }
}

/// A connection that never sent a byte does not hold up a drain.
#[tokio::test]
async fn drain_does_not_wait_for_silent_connections() {
    let up = Upstream::start("app").await;
    let mut gw = TestGateway::start(&proxy_all(&up.url())).await;
    let _silent = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    // Nothing shows that the gateway accepted it: give it the moment.
    const ACCEPTED: Duration = Duration::from_millis(50);
    tokio::time::sleep(ACCEPTED).await;
    let started = std::time::Instant::now();
    assert!(gw.gw.take().unwrap().shutdown().await, "drained");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}

/// An open WebSocket tunnel keeps working through a drain, and the drain
/// ends when the tunnel does.
#[tokio::test]
async fn drain_waits_for_open_tunnels() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start("app").await;
    let mut gw = TestGateway::start(&proxy_all(&up.url())).await;
    let mut s = websocket_open(gw.addr).await;
    let drain = tokio::spawn(gw.gw.take().unwrap().shutdown());
    // Long enough for a drain that ignored the tunnel to have finished.
    const DRAIN_WOULD_BE_DONE: Duration = Duration::from_millis(200);
    tokio::time::sleep(DRAIN_WOULD_BE_DONE).await;
    assert!(!drain.is_finished(), "the drain waits for the tunnel");
    s.write_all(b"still-open").await.unwrap();
    let mut got = [0u8; 10];
    tokio::time::timeout(IO_WAIT, s.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"still-open");
    drop(s);
    assert!(
        tokio::time::timeout(IO_WAIT, drain).await.unwrap().unwrap(),
        "drained once the tunnel closed"
    );
}

#[tokio::test]
async fn an_empty_or_truncated_file_never_wipes_the_routes() {
    let up = Upstream::start("app").await;
    let gw = TestGateway::start_with(&config(&up, false), true).await;
    let c = client();
    assert_eq!(get(&c, &gw.url("/app")).await.text(), "app");
    for text in [
        "",
        "\n",
        "# only a comment\n",
        "{}\n",
        "server: {}\n",
        "routes: []\n",
    ] {
        // Written as it is (no `server:` block added): what an editor
        // leaves half-way through a save.
        std::fs::write(&gw.config, text).unwrap();
        let r = post(&c, &gw.admin_url("/reload"), "").await;
        assert_eq!(r.status, 422, "{text:?}: {}", r.text());
        let errors = r.json()["errors"].to_string();
        assert!(errors.contains("no routes"), "{text:?}: {errors}");
        assert_eq!(get(&c, &gw.url("/app")).await.text(), "app", "{text:?}");
    }
    // The file watcher sees the same truncation and refuses it too (the
    // failure counter is process-wide, so it only bounds the wait).
    let failures = |m: &str| -> u64 {
        m.lines()
            .find_map(|l| l.strip_prefix("tollgate_config_reloads_total{result=\"failure\"} "))
            .map_or(0, |v| v.parse().unwrap())
    };
    let before = failures(&get(&c, &gw.admin_url("/metrics")).await.text());
    std::fs::write(&gw.config, "").unwrap();
    for _ in 0..250 {
        if failures(&get(&c, &gw.admin_url("/metrics")).await.text()) > before {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    assert_eq!(get(&c, &gw.url("/app")).await.text(), "app");
    gw.write_config(&config(&up, true));
    let mut ok = false;
    for _ in 0..250 {
        if get(&c, &gw.url("/extra")).await.status == 200 {
            ok = true;
            break;
        }
        assert_eq!(get(&c, &gw.url("/app")).await.text(), "app");
        tokio::time::sleep(POLL).await;
    }
    assert!(
        ok,
        "the watcher applied the good config after the empty one"
    );
}

#[tokio::test]
async fn hostile_config_files_are_refused_with_a_location_and_the_gateway_keeps_serving() {
    let up = Upstream::start("app").await;
    let gw = TestGateway::start(&config(&up, false)).await;
    let c = client();
    let hostile = [
        // Nesting deep enough to overflow a recursive reader's stack.
        (
            format!("routes: {}\n", "[".repeat(200_000)),
            "recursion limit",
        ),
        (format!("routes: {}\n", "{a: ".repeat(200_000)), ":1:"),
        // An unterminated quote at the end of a flow line.
        (
            "routes:\n  - { name: a, match: { path: /a }, respond: { body: \"x\n".to_owned(),
            "quote",
        ),
        ("routes:\n  - { name: \"a\n".to_owned(), "quote"),
        // Past the size limit.
        (format!("# {}\n", "x".repeat(5 << 20)), "larger than"),
        // Many aliases of a large anchor (billion laughs).
        (
            format!(
                "a: &a [{}]\nb: &b [{}]\nroutes: []\n",
                ["x"; 100].join(","),
                ["*a"; 1000].join(",")
            ),
            "",
        ),
    ];
    for (text, says) in hostile {
        std::fs::write(&gw.config, &text).unwrap();
        let r = post(&c, &gw.admin_url("/reload"), "").await;
        assert_eq!(r.status, 422, "{}", r.text());
        let errors = r.json()["errors"].to_string();
        assert!(errors.contains(says), "{says}: {errors}");
        assert_eq!(get(&c, &gw.url("/app")).await.text(), "app");
    }
}

/// A Kubernetes ConfigMap mounted as a directory: the file is a symlink
/// through `..data`, and an update writes a new timestamped directory and
/// swaps `..data` to it in one rename. The watcher sees the swap and the
/// gateway reloads, no restart.
#[tokio::test]
async fn a_configmap_style_symlink_swap_reloads_live() {
    use std::os::unix::fs::symlink;
    let up = Upstream::start("app").await;
    let dir = config_path().parent().unwrap().join("configmap");
    std::fs::create_dir_all(&dir).unwrap();
    let write_version = |name: &str, yaml: &str| {
        let v = dir.join(name);
        std::fs::create_dir_all(&v).unwrap();
        std::fs::write(v.join("tollgate.yaml"), with_server(yaml)).unwrap();
        // `..data_tmp` → the new directory, renamed over `..data`.
        let tmp = dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        symlink(name, &tmp).unwrap();
        std::fs::rename(&tmp, dir.join("..data")).unwrap();
    };
    write_version("..2026_12_06_09_00_00.1", &config(&up, false));
    symlink("..data/tollgate.yaml", dir.join("tollgate.yaml")).unwrap();
    let gw = start_path(dir.join("tollgate.yaml"), true).await;
    let c = client();
    let url = format!("http://{}/extra", gw.listen[0]);
    assert_eq!(get(&c, &url).await.status, 404);
    write_version("..2026_12_06_09_01_00.2", &config(&up, true));
    eventually("the swapped config is live", async || {
        get(&c, &url).await.status == 200
    })
    .await;
    assert_eq!(get(&c, &url).await.text(), "extra");
    gw.shutdown().await;
}
