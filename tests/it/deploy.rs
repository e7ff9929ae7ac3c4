//! What ships for operators matches the code: every metric the alert rules
//! and the dashboard use exists in a running gateway's `/metrics`, and the
//! counters whose labels the config decides exist at 0 from the first
//! scrape (so `rate()` and `absent()` work at once).
//!
//! Each test runs the binary (its own metrics registry), not the
//! in-process gateway whose registry the other tests share.

use std::collections::BTreeSet;

use crate::support::tls::TestCa;
use crate::support::*;

/// The `tollgate_*` metric names in `text`, histogram series folded into
/// their family (`_bucket`, `_sum`, `_count`).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("tollgate_") {
        let start = i + at;
        let end = start
            + bytes[start..]
                .iter()
                .take_while(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || **b == b'_')
                .count();
        let name = &text[start..end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| f.ends_with("_seconds") || f.ends_with("_bytes"))
            })
            .unwrap_or(name);
        out.insert(family.to_owned());
        i = end;
    }
    out
}

/// A config that gives every family a series: a TLS listener, an upstream
/// with health checks and a breaker, a retrying route, a remote JWKS
/// provider, a rate limit and a cached route.
fn full_config(dir: &std::path::Path, up: &str, jwks: &str) -> String {
    let ca = TestCa::new("deploy test CA");
    let (cert, key) = ca.leaf(&["a.test"], false);
    std::fs::write(dir.join("a.pem"), cert).unwrap();
    std::fs::write(dir.join("a.key"), key).unwrap();
    format!(
        "server:\n  listen: [\"127.0.0.1:0\"]\n  tls_listen: [\"127.0.0.1:0\"]\n  admin_listen: \"127.0.0.1:0\"\n  access_log: {{ enabled: false }}\n  tls:\n    certificates:\n      - {{ cert: {a_pem}, key: {a_key} }}\n\
         cache: {{}}\n\
         auth:\n  providers:\n    idp: {{ algorithms: [RS256], jwks_uri: \"{jwks}\", jwks_ready_timeout: 1s }}\n\
         rate_limits:\n  per_ip: {{ key: client_ip, rate: 1000/s }}\n\
         upstreams:\n  app:\n    endpoints: [\"{up}\"]\n    health_check: {{ path: /health, interval: 1s }}\n    circuit_breaker: {{ consecutive_failures: 5 }}\n\
         routes:\n  - {{ name: secure, match: {{ path_prefix: /secure }}, upstream: app, auth: {{ provider: idp, optional: true }} }}\n  - {{ name: app, match: {{ path_prefix: / }}, upstream: app, rate_limit: [per_ip], cache: {{}}, retry: {{ attempts: 1, on: [connect_error, 503] }} }}\n",
        a_pem = dir.join("a.pem").display(),
        a_key = dir.join("a.key").display(),
    )
}

/// The binary on `full_config`, its upstream, and the refused JWKS port
/// (kept for the gateway's life).
async fn full_gateway() -> (Upstream, ClosedPort, Binary) {
    let up = Upstream::start("app").await;
    let jwks = ClosedPort::new();
    let dir = config_path().parent().unwrap().to_owned();
    let gw = Binary::start(&full_config(
        &dir,
        &up.url(),
        &format!("http://{}/jwks", jwks.addr),
    ));
    (up, jwks, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_in_the_alerts_and_the_dashboard_exists_in_a_running_gateway() {
    let (_up, _jwks, gw) = full_gateway().await;
    let c = client();
    // One request through the cached, limited, retrying route.
    assert_eq!(get(&c, &gw.url("/x")).await.status, 200);
    let scrape = get(&c, &format!("http://{}/metrics", gw.admin))
        .await
        .text();
    let exported = metric_names(&scrape);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in [
        "deploy/prometheus/alerts.yaml",
        "deploy/grafana/tollgate.json",
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let used = metric_names(&text);
        assert!(used.len() >= 10, "{file} names {used:?}");
        let missing: Vec<_> = used.difference(&exported).collect();
        assert!(
            missing.is_empty(),
            "{file} uses metrics /metrics lacks: {missing:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_with_config_labels_exist_at_zero_before_any_request() {
    let (up, _jwks, gw) = full_gateway().await;
    let c = client();
    let m = get(&c, &format!("http://{}/metrics", gw.admin))
        .await
        .text();
    let ep = up.addr.to_string();
    for series in [
        r#"tollgate_config_reloads_total{result="failure"}"#.to_owned(),
        r#"tollgate_overflow_total{scope="global"}"#.to_owned(),
        r#"tollgate_overflow_total{scope="client_connection"}"#.to_owned(),
        r#"tollgate_downstream_requests_total{protocol="h2"}"#.to_owned(),
        r#"tollgate_retries_total{reason="connect_error",route="app"}"#.to_owned(),
        r#"tollgate_retries_total{reason="503",route="app"}"#.to_owned(),
        r#"tollgate_retry_budget_exhausted_total{route="app"}"#.to_owned(),
        format!(
            r#"tollgate_circuit_transitions_total{{endpoint="{ep}",to="open",upstream="app"}}"#
        ),
        r#"tollgate_tls_handshakes_total{result="failure",version="none"}"#.to_owned(),
        r#"tollgate_ratelimit_decisions_total{policy="per_ip",result="limited",route="app"}"#
            .to_owned(),
        r#"tollgate_cache_requests_total{result="hit",route="app"}"#.to_owned(),
        r#"tollgate_auth_requests_total{provider="idp",result="invalid",route="secure"}"#
            .to_owned(),
    ] {
        let line = format!("{series} 0");
        assert!(m.lines().any(|l| l == line), "no `{line}` in:\n{m}");
    }
    // Health checks run at once: their series exist, whatever they found.
    let health = format!(
        r#"tollgate_health_checks_total{{endpoint="{ep}",result="failure",upstream="app"}}"#
    );
    assert!(m.contains(&health), "{health}");
}

/// A real Prometheus server, killed on drop.
struct Prometheus {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    _dir: std::path::PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Scrapes `target` (host:port, path /metrics) every second.
    fn start(target: std::net::SocketAddr) -> Prometheus {
        let dir = config_path().parent().unwrap().to_owned();
        std::fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\nscrape_configs:\n  - job_name: tollgate\n    static_configs: [{{ targets: [\"{target}\"] }}]\n"
            ),
        )
        .unwrap();
        // Prometheus takes no port 0 it would report: a port just free.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let child = std::process::Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("prometheus is installed (apt-get install prometheus)");
        Prometheus {
            child,
            addr,
            _dir: dir,
        }
    }

    /// The first value of an instant query, if any.
    async fn query(&self, c: &TestClient, q: &str) -> Option<f64> {
        // Not listening yet while it starts.
        tokio::net::TcpStream::connect(self.addr).await.ok()?;
        let url = format!(
            "http://{}/api/v1/query?query={}",
            self.addr,
            q.replace(' ', "%20")
                .replace('{', "%7B")
                .replace('}', "%7D")
                .replace('"', "%22")
                .replace('[', "%5B")
                .replace(']', "%5D")
        );
        let r = send(c, http::Request::get(url).body(Default::default()).unwrap()).await;
        if r.status != 200 {
            return None;
        }
        r.json()["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
    }
}

/// Prometheus scrapes the gateway (`up == 1`) and answers a `rate()` over
/// its request counter: the exposition is one a real server reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(tollgate_prometheus),
    ignore = "needs prometheus (apt-get install prometheus)"
)]
async fn a_real_prometheus_scrapes_the_gateway() {
    let up = Upstream::start("app").await;
    let gw = Binary::start(&proxy_all(&up.url()));
    let prom = Prometheus::start(gw.admin);
    let c = client();
    // Prometheus starts, scrapes every second, and needs two scrapes for a
    // rate: allow a minute on a busy machine.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut rate = None;
    while std::time::Instant::now() < deadline {
        assert_eq!(get(&c, &gw.url("/x")).await.status, 200);
        let up_now = prom.query(&c, r#"up{job="tollgate"}"#).await;
        rate = prom
            .query(
                &c,
                r#"sum(rate(tollgate_requests_total{route="app"}[10s]))"#,
            )
            .await;
        if up_now == Some(1.0) && rate.is_some_and(|r| r > 0.0) {
            return;
        }
        tokio::time::sleep(POLL * 10).await;
    }
    panic!("Prometheus never saw the gateway: rate {rate:?}");
}
