//! The real binary: memory while streaming, drain on SIGTERM, access log.

use bytes::Bytes;
use http_body_util::BodyExt;

use crate::support::*;

/// 100 MiB up and 100 MiB down pass through with the gateway's peak RSS
/// under 64 MiB: bodies are streamed, never buffered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_mib_each_way_streams_in_bounded_memory() {
    const SIZE: usize = 100 << 20;
    let up = Upstream::start("app").await;
    let gw = Binary::start(
        &(server_with("limits: { max_request_body_bytes: 200MiB }") + &proxy_all(&up.url())),
    );
    let c = client();
    // Upload: streamed from a generator, checksummed by the upstream.
    let chunk = Bytes::from(
        (0..64u32 << 10)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    let mut expected = Vec::with_capacity(SIZE);
    for _ in 0..SIZE / chunk.len() {
        expected.extend_from_slice(&chunk);
    }
    let body = http_body_util::combinators::BoxBody::new(Bytestream { left: SIZE, chunk });
    let up_client: hyper_util::client::legacy::Client<
        _,
        http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>,
    > = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let resp = up_client
        .request(http::Request::post(gw.url("/sum")).body(body).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        String::from_utf8_lossy(&got),
        format!("{SIZE}:{:016x}", checksum(&expected))
    );
    drop(expected);
    // Download: counted and checked as it streams.
    assert_eq!(
        download_x(&c, &gw.url(&format!("/bytes/{SIZE}"))).await,
        SIZE
    );
    let rss = gw.peak_rss();
    eprintln!(
        "gateway peak RSS after 100 MiB each way: {:.1} MiB",
        rss as f64 / 1048576.0
    );
    assert!(rss < 64 << 20, "peak RSS {} MiB", rss >> 20);
}

/// SIGTERM: 20 slow in-flight requests all complete with 200, then exit 0.
#[tokio::test]
async fn sigterm_drains_twenty_slow_requests_then_exits_zero() {
    let up = Upstream::start("app").await;
    let mut gw = Binary::start(&proxy_all(&up.url()));
    let c = client();
    let tasks = spawn_gets(&c, &gw.url("/slow/1000"), 20);
    // Let all 20 reach the upstream before the signal.
    for _ in 0..250 {
        if up.count() >= 20 {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    assert_eq!(up.count(), 20);
    gw.signal("TERM");
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let status = tokio::task::spawn_blocking(move || {
        let s = gw.child.wait().unwrap();
        (s, gw)
    })
    .await
    .unwrap()
    .0;
    assert_eq!(status.code(), Some(0));
}

/// One JSON access log line per request on stdout, with the documented fields.
#[tokio::test]
async fn access_log_writes_one_json_line_per_request() {
    let up = Upstream::start("app").await;
    // The access log is on by default: a server block without the tests' switch-off.
    let server = "server:\n  listen: [\"127.0.0.1:0\"]\n  admin_listen: \"127.0.0.1:0\"\n";
    let gw = Binary::start(&(server.to_owned() + &proxy_all(&up.url())));
    let c = client();
    let r = get_with(
        &c,
        &gw.url("/some/path?q=1"),
        &[("x-request-id", "log-me-1")],
    )
    .await;
    assert_eq!(r.status, 200);
    let r = get(&c, &gw.url("/../escape")).await;
    assert_eq!(r.status, 400);
    let chunked = raw(gw.addr, b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n").await;
    assert!(chunked.ends_with("hello world"), "{chunked}");
    let mut lines = Vec::new();
    for _ in 0..250 {
        lines = gw.stdout.lock().unwrap().clone();
        if lines.len() >= 3 {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    assert_eq!(lines.len(), 3, "{lines:?}");
    let a: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(a["request_id"], "log-me-1");
    assert_eq!(a["method"], "GET");
    assert_eq!(a["path"], "/some/path");
    assert_eq!(a["status"], 200);
    assert_eq!(a["route"], "app");
    assert_eq!(a["upstream"], "app");
    assert_eq!(a["endpoint"], up.addr.to_string());
    assert_eq!(a["client"], "127.0.0.1");
    assert_eq!(a["bytes_out"], 3);
    assert_eq!(a["reason"], "");
    assert_eq!(a["trace_id"].as_str().unwrap().len(), 32);
    assert!(a["upstream_duration"].as_f64().unwrap() <= a["duration"].as_f64().unwrap());
    assert!(a["time"].as_str().unwrap().ends_with('Z'));
    let b: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(b["status"], 400);
    assert_eq!(b["reason"], "invalid_path");
    let c3: serde_json::Value = serde_json::from_str(&lines[2]).unwrap();
    assert_eq!(
        (
            c3["method"].as_str(),
            c3["bytes_in"].as_u64(),
            c3["bytes_out"].as_u64()
        ),
        (Some("POST"), Some(11), Some(11)),
        "chunked body counted as streamed"
    );
}

/// SIGHUP reloads the file; a broken file is refused and the old config serves.
#[tokio::test]
async fn sighup_reloads_and_refuses_broken_files() {
    let up = Upstream::start("app").await;
    let gw = Binary::start(&proxy_all(&up.url()));
    let c = client();
    assert_eq!(get(&c, &gw.url("/x")).await.status, 200);
    let config = gw_config(&gw);
    std::fs::write(
        &config,
        with_server(
            "routes:\n  - { name: hup, match: { path: /hup }, respond: { body: reloaded } }\n",
        ),
    )
    .unwrap();
    gw.signal("HUP");
    let mut body = String::new();
    for _ in 0..125 {
        body = get(&c, &gw.url("/hup")).await.text();
        if body == "reloaded" {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    assert_eq!(body, "reloaded");
    std::fs::write(&config, "routes: [ {").unwrap();
    gw.signal("HUP");
    eventually("the reload was refused", async || {
        let m = get(&c, &format!("http://{}/metrics", gw.admin))
            .await
            .text();
        metric(&m, r#"tollgate_config_reloads_total{result="failure"}"#) >= 1.0
    })
    .await;
    assert_eq!(
        get(&c, &gw.url("/hup")).await.text(),
        "reloaded",
        "the running config keeps serving"
    );
}

/// The config file a binary was started with (the `-c` argument).
fn gw_config(gw: &Binary) -> std::path::PathBuf {
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", gw.child.id())).unwrap();
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let i = args.iter().position(|a| a == "-c").unwrap();
    args[i + 1].clone().into()
}

/// Routes with auth log the token's tenant and sub, and never the token.
#[tokio::test]
async fn access_log_names_tenant_and_sub_never_the_token() {
    use crate::support::jwt::{SigningKey, now};
    let up = Upstream::start("app").await;
    let secret = "an-access-log-test-secret-of-32-bytes!";
    let server = "server:\n  listen: [\"127.0.0.1:0\"]\n  admin_listen: \"127.0.0.1:0\"\n";
    let yaml = format!(
        "{server}upstreams:\n  app: {{ endpoints: [\"{}\"] }}\nauth:\n  providers:\n    p: {{ algorithms: [HS256], secret: \"{secret}\", tenant_claim: org.id }}\nroutes:\n  - {{ name: r, match: {{ path_prefix: / }}, upstream: app, auth: {{ provider: p }} }}\n",
        up.url()
    );
    let gw = Binary::start(&yaml);
    let token = SigningKey::hmac(secret)
        .sign(&serde_json::json!({"sub": "user-9", "org": {"id": "acme"}, "exp": now() + 60}));
    let c = client();
    let auth = format!("Bearer {token}");
    assert_eq!(
        get_with(&c, &gw.url("/a"), &[("authorization", &auth)])
            .await
            .status,
        200
    );
    let bad = format!("Bearer {token}x");
    assert_eq!(
        get_with(&c, &gw.url("/b"), &[("authorization", &bad)])
            .await
            .status,
        401
    );
    let mut lines = Vec::new();
    for _ in 0..250 {
        lines = gw.stdout.lock().unwrap().clone();
        if lines.len() >= 2 {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    assert_eq!(lines.len(), 2, "{lines:?}");
    let ok: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(
        (ok["tenant"].as_str(), ok["sub"].as_str()),
        (Some("acme"), Some("user-9"))
    );
    let refused: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(refused["status"], 401);
    assert_eq!(refused["reason"], "invalid_token");
    assert!(refused.get("tenant").is_none());
    let sig = token.rsplit('.').next().unwrap();
    assert!(
        lines.iter().all(|l| !l.contains(sig)),
        "a log line holds the token"
    );
}

/// Requests still open when `shutdown_grace` runs out are cut, and each is
/// logged once (and counted) as `shutdown_grace_expired`: unanswered ones
/// with 503, a response cut mid-body with the status it had sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_cut_by_the_shutdown_grace_are_still_logged() {
    use tokio::io::AsyncWriteExt;
    let up = Upstream::start("app").await;
    let server = "server:\n  listen: [\"127.0.0.1:0\"]\n  admin_listen: \"127.0.0.1:0\"\n  shutdown_grace: 300ms\n";
    let mut gw = Binary::start(&format!(
        "{server}upstreams:\n  app: {{ endpoints: [\"{}\"] }}\nroutes:\n  - {{ name: app, match: {{ path_prefix: / }}, upstream: app, timeout: 120s }}\n",
        up.url()
    ));
    // h1, waiting for the upstream.
    let c = client();
    let h1 = tokio::spawn({
        let url = gw.url("/slow/60000");
        async move { c.get(url.parse().unwrap()).await.map(|r| r.status()) }
    });
    // h2, waiting for the upstream.
    let h2c = h2c_client();
    let h2 = tokio::spawn({
        let url = gw.url("/slow/60000?h2");
        async move { h2c.get(url.parse().unwrap()).await.map(|r| r.status()) }
    });
    // A large response the client never reads: cut mid-body.
    let mut reader = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    reader
        .write_all(b"GET /bytes/200000000 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut arrived = false;
    for _ in 0..500 {
        if up.count() >= 3 {
            arrived = true;
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    assert!(arrived, "the three requests reached the upstream");
    gw.signal("TERM");
    let mut exited = None;
    for _ in 0..500 {
        if let Some(status) = gw.child.try_wait().unwrap() {
            exited = Some(status);
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    assert!(exited.is_some(), "the gateway exited after its grace");
    // The clients saw their connections end, not an answer.
    assert!(h1.await.unwrap().is_err());
    assert!(h2.await.unwrap().is_err());
    drop(reader);
    // The reader thread has the last lines once stdout closed.
    let mut lines = Vec::new();
    for _ in 0..250 {
        lines = gw.stdout.lock().unwrap().clone();
        if lines.len() >= 3 {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let mut entries: Vec<(String, u64, String)> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|j| {
            (
                j["path"].as_str().unwrap_or("").to_owned(),
                j["status"].as_u64().unwrap_or(0),
                j["reason"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    entries.sort();
    let cut = "shutdown_grace_expired".to_owned();
    assert_eq!(
        entries,
        vec![
            ("/bytes/200000000".to_owned(), 200, cut.clone()),
            ("/slow/60000".to_owned(), 503, cut.clone()),
            ("/slow/60000".to_owned(), 503, cut),
        ],
        "{lines:?}"
    );
}

/// The `COPY` lines of the Dockerfile: (sources, destination), without
/// those from another stage.
fn dockerfile_copies() -> Vec<(Vec<String>, String)> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile")).unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("COPY "))
        .filter(|l| !l.starts_with("--from"))
        .map(|l| {
            let mut words: Vec<String> = l.split_whitespace().map(str::to_owned).collect();
            let dest = words.pop().unwrap();
            (words, dest)
        })
        .collect()
}

/// The image's default command works: the baked-in config and every file
/// it names are in the image. The files the Dockerfile copies to
/// /etc/tollgate are laid out the same way in a fresh directory, and the
/// gateway starts from there and answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_config_starts_from_the_files_the_image_holds() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let etc = config_path().parent().unwrap().join("etc-tollgate");
    std::fs::create_dir_all(&etc).unwrap();
    let mut copied = 0;
    for (sources, dest) in dockerfile_copies() {
        let Some(rest) = dest.strip_prefix("/etc/tollgate/") else {
            continue;
        };
        for src in &sources {
            let name = if rest.is_empty() {
                std::path::Path::new(src)
                    .file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
            } else {
                rest
            };
            std::fs::copy(root.join(src), etc.join(name)).unwrap();
            copied += 1;
        }
    }
    assert!(
        copied >= 1,
        "the Dockerfile copies a config to /etc/tollgate"
    );
    let config = etc.join("tollgate.yaml");
    // What `tollgate run -c /etc/tollgate/tollgate.yaml` reads first.
    let (code, _, err) = tollgate_cli(&["validate", "-c", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    // And it serves (ports moved to ephemeral ones, the rest as shipped).
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("\"0.0.0.0:8080\"", "\"127.0.0.1:0\"")
        .replace("\"127.0.0.1:9901\"", "\"127.0.0.1:0\"");
    std::fs::write(&config, text).unwrap();
    let gw = start_path(config, false).await;
    let admin = gw.admin;
    let g = get(&client(), &format!("http://{admin}/healthz")).await;
    assert_eq!(g.status, 200);
    // The image's health check is the binary's own (no curl in the image).
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    assert!(
        dockerfile.contains(r#"CMD ["/usr/local/bin/tollgate", "healthcheck""#),
        "HEALTHCHECK runs tollgate healthcheck"
    );
    let (code, _, err) = tollgate_cli(&["healthcheck", "--admin", &admin.to_string()]);
    assert_eq!(code, 0, "{err}");
    gw.shutdown().await;
}

/// Everything `cargo build` reads is copied into the build stage.
#[test]
fn the_image_build_stage_has_every_build_input() {
    let sources: Vec<String> = dockerfile_copies()
        .into_iter()
        .filter(|(_, dest)| !dest.starts_with("/etc/"))
        .flat_map(|(s, _)| s)
        .collect();
    for needed in [
        "Cargo.toml",
        "Cargo.lock",
        "build.rs",
        "src",
        "vendor",
        "benches",
        "examples",
    ] {
        assert!(
            sources.iter().any(|s| s == needed),
            "the Dockerfile does not copy {needed}: {sources:?}"
        );
    }
}

/// With stdout stalled (nobody reads it), the access-log queue stays
/// within its byte bound however long the lines: lines past it are dropped
/// and counted, and requests never wait for the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stdout_bounds_the_access_log_in_bytes() {
    let up = Upstream::start("app").await;
    let gw = Binary::start_with_stalled_stdout(&format!(
        "server:\n  listen: [\"127.0.0.1:0\"]\n  admin_listen: \"127.0.0.1:0\"\n  limits: {{ max_request_header_bytes: 64KiB }}\n{}",
        proxy_all(&up.url())
    ));
    let (addr, admin) = (gw.addr, gw.admin);
    // 6,000 requests with 32 KiB paths: 192 MiB of log lines offered
    // against a 16 MiB queue.
    let c = client();
    let path = format!("/{}", "p".repeat(32 << 10));
    let url = format!("http://{addr}{path}");
    for _ in 0..60 {
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let (c, url) = (c.clone(), url.clone());
                tokio::spawn(async move { get(&c, &url).await.status })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), 200, "requests never wait for the log");
        }
    }
    let m = get(&c, &format!("http://{admin}/metrics")).await.text();
    let dropped = metric(&m, "tollgate_access_log_dropped_total");
    assert!(
        dropped >= 5000.0,
        "lines past the byte bound are dropped: {dropped}"
    );
    let peak_kib = gw.peak_rss() >> 10;
    // About 75 MiB here with the bound; without it the queue alone would
    // hold 192 MiB.
    assert!(peak_kib < 128 << 10, "peak RSS {peak_kib} KiB");
}

/// Secrets stay out of logs and admin output: a Redis password is
/// redacted in the warnings about a Redis that is down, and a value that
/// came from an environment variable shows as `<redacted:NAME>` in
/// `GET /config` while the upstream still gets the real value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_logs_or_admin_output() {
    let up = Upstream::start("app").await;
    // A port nothing listens on: every Redis call fails and is logged.
    let refused = ClosedPort::new();
    let closed = refused.addr.port();
    let home = std::env::var("HOME").unwrap();
    let gw = Binary::start(&format!(
        "upstreams:\n  app: {{ endpoints: [\"{}\"] }}\nredis: {{ url: \"redis://:topsecret@127.0.0.1:{closed}/0\", timeout: 50ms, on_error: allow }}\nrate_limits:\n  g: {{ key: client_ip, rate: 10/s, burst: 10, scope: global }}\nroutes:\n  - {{ name: app, match: {{ path_prefix: / }}, upstream: app, rate_limit: [g], request_headers: {{ set: {{ x-api-key: \"${{HOME}}\" }} }} }}\n",
        up.url()
    ));
    let c = client();
    let g = get(&c, &gw.url("/x")).await;
    assert_eq!(g.status, 200);
    assert_eq!(up.last().headers["x-api-key"], home.as_str());
    let cfg = get(&c, &format!("http://{}/config", gw.admin)).await.text();
    assert!(cfg.contains("<redacted:HOME>"), "{cfg}");
    assert!(!cfg.contains(&format!("\"{home}\"")), "{cfg}");
    assert!(!cfg.contains("topsecret"), "{cfg}");
    // The binary's log goes to stderr: the warning about the failing
    // Redis names its URL without the password.
    let mut warned = None;
    for _ in 0..250 {
        let lines = gw.stderr.lock().unwrap().clone();
        if let Some(l) = lines
            .iter()
            .find(|l| l.contains("Redis for global rate limits failed"))
        {
            warned = Some((l.clone(), lines));
            break;
        }
        let _ = get(&c, &gw.url("/x")).await;
        tokio::time::sleep(POLL).await;
    }
    let (line, lines) = warned.expect("a warning about Redis");
    assert!(line.contains("redis://<redacted>@127.0.0.1"), "{line}");
    assert!(lines.iter().all(|l| !l.contains("topsecret")), "{lines:?}");
}

/// Rate-limit keys are bounded in bytes, not only in count: 5,000 keys
/// made of 32 KiB header values (160 MiB if kept as sent) leave the
/// gateway's memory where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_rate_limit_keys_are_kept_as_digests() {
    let up = Upstream::start("app").await;
    let gw = Binary::start(&format!(
        "upstreams:\n  app: {{ endpoints: [\"{}\"] }}\nrate_limits:\n  per_key: {{ key: \"header:x-api-key\", rate: 1/min, burst: 10, max_keys: 1000000 }}\nroutes:\n  - {{ name: app, match: {{ path_prefix: / }}, upstream: app, rate_limit: [per_key] }}\n",
        up.url()
    ));
    let c = client();
    let before = gw.peak_rss();
    for batch in 0..50 {
        let tasks: Vec<_> = (0..100)
            .map(|i| {
                let key = format!("{batch:03}{i:03}{}", "k".repeat(32 << 10));
                let (c, url) = (c.clone(), gw.url("/x"));
                tokio::spawn(async move { get_with(&c, &url, &[("x-api-key", &key)]).await.status })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), 200, "each key has its own bucket");
        }
    }
    // The key gauge is exported every second.
    let mut keys = 0.0;
    for _ in 0..250 {
        let m = get(&c, &format!("http://{}/metrics", gw.admin))
            .await
            .text();
        keys = metric(&m, r#"tollgate_ratelimit_keys{policy="per_key"}"#);
        if keys == 5000.0 {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    assert_eq!(keys, 5000.0, "every key is held");
    let grew = gw.peak_rss().saturating_sub(before);
    assert!(grew < 64 << 20, "peak RSS grew by {} MiB", grew >> 20);
}
