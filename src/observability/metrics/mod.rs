//! Every Prometheus metric Tollgate exports, by name, in one place.
//!
//! Label values come from config ids (route, upstream, endpoint) or closed
//! sets (method, status code, result), never from raw request data. Handles
//! are resolved when a snapshot is compiled; per-status counters are created
//! on first use and then read through a small map without touching the
//! registry.
//!
//! The families are here; `handles` holds the per-route and per-endpoint
//! handles resolved from them.

use std::sync::OnceLock;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Process-wide metric families.
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// `tollgate_requests_total{route,method,status}`.
    pub requests: IntCounterVec,
    /// `tollgate_request_duration_seconds{route}`.
    pub request_duration: HistogramVec,
    /// `tollgate_grpc_responses_total{route,code}`.
    pub grpc_responses: IntCounterVec,
    /// `tollgate_request_size_bytes{route}`.
    pub request_size: HistogramVec,
    /// `tollgate_response_size_bytes{route}`.
    pub response_size: HistogramVec,
    /// `tollgate_upstream_requests_total{upstream,endpoint,status}`.
    pub upstream_requests: IntCounterVec,
    /// `tollgate_upstream_duration_seconds{upstream}`.
    pub upstream_duration: HistogramVec,
    /// `tollgate_upstream_connect_errors_total{upstream,endpoint}`.
    pub upstream_connect_errors: IntCounterVec,
    /// `tollgate_connections_active`.
    pub connections_active: IntGauge,
    /// `tollgate_requests_inflight`.
    pub requests_inflight: IntGauge,
    /// `tollgate_config_reloads_total{result}`.
    pub config_reloads: IntCounterVec,
    /// `tollgate_config_last_reload_success_timestamp_seconds`.
    pub config_last_success: IntGauge,
    /// `tollgate_config_info{version}` (1 for the live version).
    pub config_info: IntGaugeVec,
    /// `tollgate_access_log_dropped_total`.
    pub access_log_dropped: IntCounter,
    /// `tollgate_cors_requests_total{route,kind,result}`.
    pub cors_requests: IntCounterVec,
    /// `tollgate_ip_denied_total{route,scope}`.
    pub ip_denied: IntCounterVec,
    /// `tollgate_cache_fleet_events_total{event,direction}`.
    pub cache_fleet_events: IntCounterVec,
    /// `tollgate_cache_fleet_subscribed`.
    pub cache_fleet_subscribed: IntGauge,
    /// `tollgate_trace_spans_exported_total`.
    pub trace_spans_exported: IntCounter,
    /// `tollgate_trace_spans_dropped_total{reason}`.
    pub trace_spans_dropped: IntCounterVec,
    /// `tollgate_auth_requests_total{route,provider,result}`.
    pub auth_requests: IntCounterVec,
    /// `tollgate_jwks_refresh_total{provider,result}`.
    pub jwks_refresh: IntCounterVec,
    /// `tollgate_jwks_keys{provider}`.
    pub jwks_keys: IntGaugeVec,
    /// `tollgate_compression_responses_total{route,result}`.
    pub compression_responses: IntCounterVec,
    /// `tollgate_compression_bytes_total{route,algorithm,direction}`.
    pub compression_bytes: IntCounterVec,
    /// `tollgate_mirror_requests_total{route,result}`.
    pub mirror_requests: IntCounterVec,
    /// `tollgate_auth_api_keys{provider}`.
    pub auth_api_keys: IntGaugeVec,
    /// `tollgate_jwt_cache_hits_total`.
    pub jwt_cache_hits: IntCounter,
    /// `tollgate_jwt_cache_misses_total`.
    pub jwt_cache_misses: IntCounter,
    /// `tollgate_circuit_state{upstream,endpoint}` (0 closed, 1 half-open, 2 open).
    pub circuit_state: IntGaugeVec,
    /// `tollgate_circuit_transitions_total{upstream,endpoint,to}`.
    pub circuit_transitions: IntCounterVec,
    /// `tollgate_endpoint_healthy{upstream,endpoint}`.
    pub endpoint_healthy: IntGaugeVec,
    /// `tollgate_health_checks_total{upstream,endpoint,result}`.
    pub health_checks: IntCounterVec,
    /// `tollgate_overflow_total{scope}`.
    pub overflow: IntCounterVec,
    /// `tollgate_retries_total{route,reason}`.
    pub retries: IntCounterVec,
    /// `tollgate_retry_budget_exhausted_total{route}`.
    pub retry_budget_exhausted: IntCounterVec,
    /// `tollgate_ratelimit_decisions_total{route,policy,result}`.
    pub ratelimit_decisions: IntCounterVec,
    /// `tollgate_ratelimit_keys{policy}`.
    pub ratelimit_keys: IntGaugeVec,
    /// `tollgate_ratelimit_redis_duration_seconds`.
    pub ratelimit_redis_duration: Histogram,
    /// `tollgate_ratelimit_redis_errors_total`.
    pub ratelimit_redis_errors: IntCounter,
    /// `tollgate_tls_handshakes_total{result,version}`.
    pub tls_handshakes: IntCounterVec,
    /// `tollgate_tls_certificate_expiry_timestamp_seconds{name}`.
    pub tls_certificate_expiry: IntGaugeVec,
    /// `tollgate_downstream_requests_total{protocol}`.
    pub downstream_requests: IntCounterVec,
    /// `tollgate_cache_requests_total{route,result}`.
    pub cache_requests: IntCounterVec,
    /// `tollgate_cache_stores_total`.
    pub cache_stores: IntCounter,
    /// `tollgate_cache_evictions_total`.
    pub cache_evictions: IntCounter,
    /// `tollgate_cache_entries`.
    pub cache_entries: IntGauge,
    /// `tollgate_cache_bytes`.
    pub cache_bytes: IntGauge,
}

/// Body sizes: 64 B to 64 MiB, by powers of four.
const SIZE_BUCKETS: &[f64] = &[
    64.0,
    256.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
];

/// Latency buckets in seconds, 0.5 ms to 30 s.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

impl Metrics {
    #[expect(
        clippy::expect_used,
        reason = "metric definitions are static and valid; a failure is a programming error caught by every test"
    )]
    fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
            registry
                .register(Box::new(c.clone()))
                .expect("unique counter");
            c
        };
        let histogram_in = |name: &str, help: &str, labels: &[&str], buckets: &[f64]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                labels,
            )
            .expect("valid histogram");
            registry
                .register(Box::new(h.clone()))
                .expect("unique histogram");
            h
        };
        let histogram =
            |name: &str, help: &str, labels: &[&str]| histogram_in(name, help, labels, BUCKETS);
        let plain_counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid counter");
            registry
                .register(Box::new(c.clone()))
                .expect("unique counter");
            c
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge");
            registry
                .register(Box::new(g.clone()))
                .expect("unique gauge");
            g
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid gauge");
            registry
                .register(Box::new(g.clone()))
                .expect("unique gauge");
            g
        };
        let m = Metrics {
            requests: counter(
                "tollgate_requests_total",
                "Downstream requests by route, method and status.",
                &["route", "method", "status"],
            ),
            request_duration: histogram(
                "tollgate_request_duration_seconds",
                "Time from request head to response end, by route.",
                &["route"],
            ),
            grpc_responses: counter(
                "tollgate_grpc_responses_total",
                "gRPC calls by route and grpc-status code (0-16; other codes as 17).",
                &["route", "code"],
            ),
            request_size: histogram_in(
                "tollgate_request_size_bytes",
                "Request body bytes read, by route.",
                &["route"],
                SIZE_BUCKETS,
            ),
            response_size: histogram_in(
                "tollgate_response_size_bytes",
                "Response body bytes sent, by route.",
                &["route"],
                SIZE_BUCKETS,
            ),
            upstream_requests: counter(
                "tollgate_upstream_requests_total",
                "Requests sent upstream, by upstream, endpoint and status.",
                &["upstream", "endpoint", "status"],
            ),
            upstream_duration: histogram(
                "tollgate_upstream_duration_seconds",
                "Time from sending upstream to the response head, by upstream.",
                &["upstream"],
            ),
            upstream_connect_errors: counter(
                "tollgate_upstream_connect_errors_total",
                "Failed upstream connection attempts.",
                &["upstream", "endpoint"],
            ),
            connections_active: gauge(
                "tollgate_connections_active",
                "Open downstream connections.",
            ),
            requests_inflight: gauge(
                "tollgate_requests_inflight",
                "Downstream requests in progress.",
            ),
            config_reloads: counter(
                "tollgate_config_reloads_total",
                "Config reload attempts by result (success, failure).",
                &["result"],
            ),
            config_last_success: gauge(
                "tollgate_config_last_reload_success_timestamp_seconds",
                "Unix time of the last successful config load.",
            ),
            config_info: gauge_vec(
                "tollgate_config_info",
                "The live config version (value 1).",
                &["version"],
            ),
            access_log_dropped: plain_counter(
                "tollgate_access_log_dropped_total",
                "Access log lines dropped because the writer fell behind.",
            ),
            cors_requests: counter(
                "tollgate_cors_requests_total",
                "CORS requests by route, kind (preflight, actual) and result (allowed, refused: no CORS headers sent).",
                &["route", "kind", "result"],
            ),
            ip_denied: counter(
                "tollgate_ip_denied_total",
                "Requests refused by an IP allow or deny list (403 ip_denied), by route (empty for server.ip, checked before routing) and scope (server, route).",
                &["route", "scope"],
            ),
            cache_fleet_events: counter(
                "tollgate_cache_fleet_events_total",
                "Cache events exchanged with the other replicas through Redis, by event (purge, invalidate) and direction (sent, received).",
                &["event", "direction"],
            ),
            cache_fleet_subscribed: gauge(
                "tollgate_cache_fleet_subscribed",
                "1 while this replica is subscribed to the fleet's cache events in Redis.",
            ),
            trace_spans_exported: plain_counter(
                "tollgate_trace_spans_exported_total",
                "Spans the collector accepted.",
            ),
            trace_spans_dropped: counter(
                "tollgate_trace_spans_dropped_total",
                "Spans dropped, by reason: queue_full (the export queue was full), export_failed (the collector refused them, failed or did not answer in time).",
                &["reason"],
            ),
            auth_requests: counter(
                "tollgate_auth_requests_total",
                "Authentication decisions by route, provider and result (ok, missing, invalid, expired, forbidden, unavailable).",
                &["route", "provider", "result"],
            ),
            jwks_refresh: counter(
                "tollgate_jwks_refresh_total",
                "Remote JWKS fetches by provider and result (success, failure).",
                &["provider", "result"],
            ),
            jwks_keys: gauge_vec(
                "tollgate_jwks_keys",
                "Signature keys a provider holds.",
                &["provider"],
            ),
            compression_responses: counter(
                "tollgate_compression_responses_total",
                "Upstream responses on routes with compression, by route and result: the coding used (zstd, br, gzip), or why the response went out as it was (not_accepted, encoded, no_transform, status, content_type, too_small, overloaded).",
                &["route", "result"],
            ),
            compression_bytes: counter(
                "tollgate_compression_bytes_total",
                "Bytes through the compressors by route, algorithm and direction (in: uncompressed, out: compressed).",
                &["route", "algorithm", "direction"],
            ),
            mirror_requests: counter(
                "tollgate_mirror_requests_total",
                "Mirrored (shadow) copies by route and result: ok (the shadow answered below 500), error (5xx or a failed exchange), timeout, overloaded (the mirror's bulkhead or the shadow's limit was full: not copied), too_large (body over max_body: not copied), incomplete (the live body did not end: not sent).",
                &["route", "result"],
            ),
            auth_api_keys: gauge_vec(
                "tollgate_auth_api_keys",
                "API keys an api_key provider holds (a reload that removes a key lowers it).",
                &["provider"],
            ),
            jwt_cache_hits: plain_counter(
                "tollgate_jwt_cache_hits_total",
                "Tokens accepted from the verified-token cache.",
            ),
            jwt_cache_misses: plain_counter(
                "tollgate_jwt_cache_misses_total",
                "Tokens not in the verified-token cache (verified in full).",
            ),
            circuit_state: gauge_vec(
                "tollgate_circuit_state",
                "Circuit breaker state per endpoint: 0 closed, 1 half-open, 2 open.",
                &["upstream", "endpoint"],
            ),
            circuit_transitions: counter(
                "tollgate_circuit_transitions_total",
                "Circuit breaker transitions per endpoint, by the state entered (closed, half_open, open).",
                &["upstream", "endpoint", "to"],
            ),
            endpoint_healthy: gauge_vec(
                "tollgate_endpoint_healthy",
                "1 while active health checks keep the endpoint in rotation, 0 while they hold it out.",
                &["upstream", "endpoint"],
            ),
            health_checks: counter(
                "tollgate_health_checks_total",
                "Active health checks by upstream, endpoint and result (success, failure).",
                &["upstream", "endpoint", "result"],
            ),
            overflow: counter(
                "tollgate_overflow_total",
                "Requests refused with 503 overloaded, by the limit that was full (global, upstream, connections, client_connection).",
                &["scope"],
            ),
            retries: counter(
                "tollgate_retries_total",
                "Retries made, by route and reason (connect_error, reset, timeout, or the status).",
                &["route", "reason"],
            ),
            ratelimit_decisions: counter(
                "tollgate_ratelimit_decisions_total",
                "Rate-limit decisions by route, policy and result (allowed, limited; shadow-mode policies count what they would limit).",
                &["route", "policy", "result"],
            ),
            ratelimit_keys: gauge_vec(
                "tollgate_ratelimit_keys",
                "Keys (buckets) a rate-limit policy tracks.",
                &["policy"],
            ),
            ratelimit_redis_duration: {
                let h = Histogram::with_opts(
                    HistogramOpts::new(
                        "tollgate_ratelimit_redis_duration_seconds",
                        "Round trips to Redis for global rate limits.",
                    )
                    .buckets(vec![
                        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    ]),
                )
                .expect("valid histogram");
                registry
                    .register(Box::new(h.clone()))
                    .expect("unique histogram");
                h
            },
            ratelimit_redis_errors: plain_counter(
                "tollgate_ratelimit_redis_errors_total",
                "Redis calls for global rate limits that failed or timed out (on_error decided).",
            ),
            tls_handshakes: counter(
                "tollgate_tls_handshakes_total",
                "TLS handshakes on tls_listen by result (success, failure, timeout) and version (1.2, 1.3, none).",
                &["result", "version"],
            ),
            tls_certificate_expiry: gauge_vec(
                "tollgate_tls_certificate_expiry_timestamp_seconds",
                "Unix time each loaded certificate expires (alert before it does).",
                &["name"],
            ),
            cache_requests: counter(
                "tollgate_cache_requests_total",
                "Requests on cached routes by result (hit, miss, bypass, stale, revalidated, coalesced).",
                &["route", "result"],
            ),
            cache_stores: plain_counter(
                "tollgate_cache_stores_total",
                "Responses stored in the response cache.",
            ),
            cache_evictions: plain_counter(
                "tollgate_cache_evictions_total",
                "Cached responses evicted to stay within max_size.",
            ),
            cache_entries: gauge(
                "tollgate_cache_entries",
                "Responses in the cache (refreshed every second).",
            ),
            cache_bytes: gauge(
                "tollgate_cache_bytes",
                "Weight of the cached responses in bytes (refreshed every second).",
            ),
            downstream_requests: counter(
                "tollgate_downstream_requests_total",
                "Downstream requests by protocol (http1, h2).",
                &["protocol"],
            ),
            retry_budget_exhausted: counter(
                "tollgate_retry_budget_exhausted_total",
                "Retries not made because the route's retry budget was used up.",
                &["route"],
            ),
            registry,
        };
        #[cfg(target_os = "linux")]
        {
            if let Some(pc) = super::process::ProcessCollector::new() {
                let _ = m.registry.register(Box::new(pc));
            }
        }
        m
    }

    /// Renders the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let encoder = prometheus::TextEncoder::new();
        if encoder
            .encode_utf8(&self.registry.gather(), &mut out)
            .is_err()
        {
            out.clear();
        }
        out
    }
}

mod handles;

pub use handles::{EndpointMetrics, RouteMetrics, StatusCounters, method_label};
