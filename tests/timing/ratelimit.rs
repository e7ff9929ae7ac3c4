//! Rate-limit accuracy: a client over its rate gets rate × time + burst,
//! locally and shared across two processes through Redis.

use std::time::{Duration, Instant};

use crate::SERIAL;
use crate::support::*;

/// When one request was sent and when its answer came back, and whether
/// it was let through.
struct Sent {
    at: Instant,
    answered: Instant,
    ok: bool,
}

/// Sends `n` GETs paced at `per_second` (spread over `urls` in turn).
async fn paced(urls: &[String], n: u32, per_second: f64) -> Vec<Sent> {
    let c = client();
    let start = Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::new();
    for i in 0..n {
        let due = start + Duration::from_secs_f64(f64::from(i) / per_second);
        let url = urls[i as usize % urls.len()].clone();
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(due.into()).await;
            let at = Instant::now();
            let ok = get(&c, &url).await.status == 200;
            Sent {
                at,
                answered: Instant::now(),
                ok,
            }
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// Asserts that the requests let through are within `tolerance` of
/// `rate` × the time decisions were made over, plus `burst`.
///
/// Every decision falls between its request's send and answer, so the
/// decisions span at least (last send − first answer) and at most (last
/// answer − first send). Over that span demand was above the rate all the
/// time (the load is a multiple of it), so the limiter let through its
/// burst plus the rate times the span.
fn assert_rate(sent: &[Sent], rate: f64, burst: f64, tolerance: f64) {
    let ok = sent.iter().filter(|s| s.ok).count() as f64;
    let first_sent = sent.iter().map(|s| s.at).min().unwrap();
    let last_sent = sent.iter().map(|s| s.at).max().unwrap();
    let first_answer = sent.iter().map(|s| s.answered).min().unwrap();
    let last_answer = sent.iter().map(|s| s.answered).max().unwrap();
    let shortest = last_sent
        .saturating_duration_since(first_answer)
        .as_secs_f64();
    let longest = (last_answer - first_sent).as_secs_f64();
    let (low, high) = (rate * shortest + burst, rate * longest + burst);
    assert!(
        ok >= low * (1.0 - tolerance) && ok <= high * (1.0 + tolerance),
        "allowed {ok}, expected {low:.0}..={high:.0} (decisions over {shortest:.3}..{longest:.3} s) within {:.0}%",
        tolerance * 100.0
    );
}

#[tokio::test]
async fn a_client_at_three_times_the_rate_gets_rate_times_time_plus_burst() {
    let _one_at_a_time = SERIAL.lock().await;
    let up = Upstream::start("app").await;
    let gw = TestGateway::start(&format!(
        "upstreams:\n  app: {{ endpoints: [\"{}\"] }}\nrate_limits:\n  per_ip: {{ key: client_ip, rate: 100/s, burst: 50 }}\nroutes:\n  - {{ name: r, match: {{ path_prefix: / }}, upstream: app, rate_limit: [per_ip] }}\n",
        up.url()
    ))
    .await;
    // 300 requests/s offered for 3 s.
    let sent = paced(&[gw.url("/x")], 900, 300.0).await;
    assert_rate(&sent, 100.0, 50.0, 0.02);
}

#[tokio::test]
#[cfg_attr(
    not(tollgate_redis),
    ignore = "needs redis-server (apt-get install redis-server)"
)]
async fn two_gateway_processes_share_one_rate() {
    let _one_at_a_time = SERIAL.lock().await;
    let redis = RedisServer::start().await;
    let up = Upstream::start("app").await;
    let yaml = format!(
        "upstreams:\n  app: {{ endpoints: [\"{}\"] }}\nredis: {{ url: \"{}\", timeout: 100ms, on_error: deny }}\nrate_limits:\n  shared: {{ key: client_ip, rate: 50/s, burst: 10, scope: global }}\nroutes:\n  - {{ name: r, match: {{ path_prefix: / }}, upstream: app, rate_limit: [shared] }}\n",
        up.url(),
        redis.url()
    );
    let (a, b) = (Binary::start(&yaml), Binary::start(&yaml));
    // Both processes reach Redis (connections are made in the background):
    // until then `on_error: deny` answers 503.
    let c = client();
    for gw in [&a, &b] {
        let mut up_now = false;
        for _ in 0..200 {
            if get(&c, &gw.url("/ready-check")).await.status != 503 {
                up_now = true;
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        assert!(up_now, "the gateway reached Redis");
    }
    // Let the bucket the readiness checks touched refill (10 at 50/s).
    const REFILLED: Duration = Duration::from_millis(400);
    tokio::time::sleep(REFILLED).await;
    // Each process gets 100 requests/s: 4× the shared rate in total.
    let sent = paced(&[a.url("/x"), b.url("/x")], 800, 200.0).await;
    assert_rate(&sent, 50.0, 10.0, 0.05);
}
