//! Upstream faults and body limits become the right status with a JSON body.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

#[tokio::test]
async fn refused_upstream_is_502_and_timeout_is_504() {
    // A port held by a socket that never listens: connects are refused.
    let closed = ClosedPort::new();
    let dead = closed.addr;
    let slow = Upstream::start("slow").await;
    let gw = TestGateway::start(&format!(
        r#"
upstreams:
  dead: {{ endpoints: ["http://{dead}"] }}
  slow: {{ endpoints: ["{}"] }}
routes:
  - {{ name: dead, match: {{ path_prefix: /dead }}, upstream: dead }}
  - {{ name: slow, match: {{ path_prefix: /slow }}, upstream: slow, timeout: 200ms }}
"#,
        slow.url()
    ))
    .await;
    let c = client();
    let r = get(&c, &gw.url("/dead")).await;
    assert_eq!(r.status, 502);
    let j = r.json();
    assert_eq!(j["error"], "upstream_refused");
    assert_eq!(j["request_id"], r.headers["x-request-id"].to_str().unwrap());
    let started = std::time::Instant::now();
    let r = get(&c, &gw.url("/slow/3000")).await;
    assert_eq!(r.status, 504);
    assert_eq!(r.json()["error"], "upstream_timeout");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn connect_failure_is_retried_once_on_another_endpoint() {
    let closed = ClosedPort::new();
    let dead = closed.addr;
    let live = Upstream::start("live").await;
    let gw = TestGateway::start(&format!(
        r#"
upstreams:
  mixed: {{ endpoints: ["http://{dead}", "{}"] }}
routes:
  - {{ name: mixed, match: {{ path_prefix: / }}, upstream: mixed }}
"#,
        live.url()
    ))
    .await;
    let c = client();
    for _ in 0..10 {
        let r = get(&c, &gw.url("/")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "live");
    }
    let metrics = get(&c, &gw.admin_url("/metrics")).await.text();
    assert!(
        metrics.contains(&format!(
            "tollgate_upstream_connect_errors_total{{endpoint=\"{dead}\",upstream=\"mixed\"}}"
        )),
        "{metrics}"
    );
}

#[tokio::test]
async fn upstream_reset_is_502() {
    // An upstream that accepts and closes at once.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"garbage\r\n\r\n").await;
        }
    });
    let gw = TestGateway::start(&format!(
        "upstreams:\n  bad: {{ endpoints: [\"http://{addr}\"] }}\nroutes:\n  - {{ name: bad, match: {{ path_prefix: / }}, upstream: bad }}\n"
    ))
    .await;
    let r = get(&client(), &gw.url("/")).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"], "upstream_reset");
}

#[tokio::test]
async fn oversized_bodies_get_413_by_length_and_while_streaming() {
    let up = Upstream::start("app").await;
    let gw = TestGateway::start(
        &(server_with("limits: { max_request_body_bytes: 1KiB }") + &proxy_all(&up.url())),
    )
    .await;
    let resp = raw(
        gw.addr,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&resp), 413, "{resp}");
    assert!(resp.contains("\"payload_too_large\""));
    assert_eq!(up.count(), 0, "refused before anything went upstream");
    let chunk = format!("{:x}\r\n{}\r\n", 800, "a".repeat(800));
    let req = format!(
        "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}{chunk}0\r\n\r\n"
    );
    let resp = raw(gw.addr, req.as_bytes()).await;
    assert_eq!(raw_status(&resp), 413, "{resp}");
}

#[tokio::test]
async fn stalled_request_body_gets_408_and_close() {
    let up = Upstream::start("app").await;
    let gw = TestGateway::start(
        &(server_with("limits: { body_read_timeout: 300ms }") + &proxy_all(&up.url())),
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly-a-few")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(IO_WAIT, s.read_to_end(&mut out))
        .await
        .expect("closed in time")
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert_eq!(raw_status(&text), 408, "{text}");
    let _ = Bytes::new();
}

/// An endpoint whose accept queue is full drops SYNs: the connect times
/// out after `connect_timeout` and the answer is 502, quickly.
#[tokio::test]
async fn connect_timeout_is_enforced() {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    // Fill the accept queue (never accepted), so further SYNs are dropped.
    let mut fillers = Vec::new();
    for _ in 0..8 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            fillers.push(s);
        }
    }
    let gw = TestGateway::start(&format!(
        "upstreams:\n  stuck: {{ endpoints: [\"http://{addr}\"], connect_timeout: 300ms }}\nroutes:\n  - {{ name: stuck, match: {{ path_prefix: / }}, upstream: stuck }}\n"
    ))
    .await;
    let started = std::time::Instant::now();
    let r = get(&client(), &gw.url("/")).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["error"], "upstream_refused");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "took {took:?}"
    );
    drop(listener);
}

/// The pool never keeps more idle connections than configured, and closes
/// idle ones after `pool.idle_timeout`.
#[tokio::test]
async fn pool_caps_idle_connections_and_evicts_them_on_a_timer() {
    let up = Upstream::start("app").await;
    let gw = TestGateway::start(&format!(
        "upstreams:\n  app: {{ endpoints: [\"{}\"], pool: {{ max_idle_per_endpoint: 2, idle_timeout: 300ms }} }}\nroutes:\n  - {{ name: app, match: {{ path_prefix: / }}, upstream: app }}\n",
        up.url()
    ))
    .await;
    let c = client();
    let tasks = spawn_gets(&c, &gw.url("/slow/200"), 8);
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let pool = || {
        gw.gw.as_ref().unwrap().live.load().upstreams["app"].endpoints[0]
            .pool
            .clone()
    };
    // Connections become idle once their responses were read to the end.
    eventually("a connection is back in the pool", async || {
        pool().idle_count() >= 1
    })
    .await;
    let idle = pool().idle_count();
    assert!((1..=2).contains(&idle), "idle connections kept: {idle}");
    // The sweeper runs every second and ages idle connections in whole
    // sweeps, so a 300ms idle timeout closes them within about 2s.
    let mut left = idle;
    for _ in 0..200 {
        left = pool().idle_count();
        if left == 0 {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    assert_eq!(left, 0, "idle connections evicted");
}
