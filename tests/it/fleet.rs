//! A fleet purges together: gateway processes sharing a Redis exchange
//! cache purges (and, with `cache.broadcast_invalidation`, unsafe
//! requests' invalidations) through it. Two real gateway processes and a
//! real redis-server.

use crate::support::*;

fn replica_config(up: &str, redis: &str) -> String {
    format!(
        "{}redis: {{ url: \"{redis}\", timeout: 500ms }}\ncache: {{ broadcast_invalidation: true }}\nupstreams:\n  app: {{ endpoints: [\"{up}\"] }}\nroutes:\n  - {{ name: app, match: {{ path_prefix: / }}, upstream: app, cache: {{ default_ttl: 60s }} }}\n",
        server_with("")
    )
}

async fn scrape(gw: &Binary) -> String {
    get(&client(), &format!("http://{}/metrics", gw.admin))
        .await
        .text()
}

/// Serves `/x` through `gw` until the cache answers it (a hit).
async fn cached(gw: &Binary) {
    let c = client();
    eventually("a cache hit", async || {
        let g = get(&c, &gw.url("/x")).await;
        g.headers["cache-status"].to_str().unwrap().contains("hit")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(tollgate_redis),
    ignore = "needs redis-server (apt-get install redis-server)"
)]
async fn a_purge_and_an_invalidation_on_one_replica_reach_the_other() {
    let redis = RedisServer::start().await;
    let up = Upstream::start("app").await;
    let a = Binary::start(&replica_config(&up.url(), &redis.url()));
    let b = Binary::start(&replica_config(&up.url(), &redis.url()));
    for gw in [&a, &b] {
        eventually("subscribed to the fleet's cache events", async || {
            scrape(gw)
                .await
                .lines()
                .any(|l| l == "tollgate_cache_fleet_subscribed 1")
        })
        .await;
    }
    cached(&b).await;
    let c = client();
    // The purge on A reaches B, which says what it removed. (Until A's
    // own Redis connections are up the purge cannot be published: it
    // says so, and is made again.)
    let mut answer = serde_json::Value::Null;
    eventually("a purge published to the fleet", async || {
        let r = post(
            &c,
            &format!("http://{}/cache/purge", a.admin),
            r#"{"route": "app"}"#,
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        answer = r.json();
        answer["fleet"]["error"].is_null()
    })
    .await;
    assert_eq!(answer["fleet"]["receivers"], 1, "{answer}");
    let replicas = answer["fleet"]["replicas"].as_array().unwrap();
    assert_eq!(replicas.len(), 1, "{answer}");
    assert_ne!(replicas[0]["replica"], answer["replica"]);
    assert_eq!(replicas[0]["purged"], 1, "B held /x: {answer}");
    let g = get(&c, &b.url("/x")).await;
    assert!(
        g.headers["cache-status"]
            .to_str()
            .unwrap()
            .contains("fwd=miss"),
        "{:?}",
        g.headers["cache-status"]
    );
    let m = scrape(&b).await;
    assert_eq!(
        metric(
            &m,
            r#"tollgate_cache_fleet_events_total{direction="received",event="purge"}"#
        ),
        1.0,
        "{m}"
    );
    // An unsafe request through A voids /x on B too.
    cached(&b).await;
    assert_eq!(post(&c, &a.url("/x"), "change").await.status, 200);
    eventually("B's entry invalidated", async || {
        let g = get(&c, &b.url("/x")).await;
        g.headers["cache-status"]
            .to_str()
            .unwrap()
            .contains("fwd=miss")
    })
    .await;
    let m = scrape(&b).await;
    assert_eq!(
        metric(
            &m,
            r#"tollgate_cache_fleet_events_total{direction="received",event="invalidate"}"#
        ),
        1.0,
        "{m}"
    );
}
