//! The immutable compiled config and its live handle.
//!
//! A request `load_full()`s the snapshot once and keeps that `Arc` to the
//! end, so a reload never changes the rules under a request in flight. Only
//! the reload task stores a new one.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use ipnet::IpNet;

use crate::auth::{AnyProvider, RouteAuth};
use crate::config::spec::UnderscorePolicy;
use crate::observability::metrics::RouteMetrics;
use crate::routing::Router;
use crate::routing::normalize::NormalizeOptions;
use crate::upstream::Upstream;

/// The live snapshot, swapped atomically on reload.
pub(crate) type SharedSnapshot = Arc<ArcSwap<Snapshot>>;

/// Everything compiled from one config file.
pub struct Snapshot {
    /// Hash of the file's bytes (16 hex digits).
    pub version: String,
    /// The file as parsed, for `GET /config` (secrets and values from
    /// the environment redacted).
    pub config: serde_json::Value,
    /// The settings read at start only.
    pub start_only: StartOnly,
    /// Route table; route ids index `routes`.
    pub router: Router,
    /// What each route does.
    pub routes: Vec<Arc<Route>>,
    /// Upstreams by name.
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
    /// JWT providers by name.
    pub auth: BTreeMap<String, AnyProvider>,
    /// Rate-limit policies by name.
    pub rate_limits: BTreeMap<String, Arc<crate::ratelimit::Policy>>,
    /// Redis for global rate limits.
    pub redis: Option<Arc<crate::ratelimit::global::Redis>>,
    /// TLS for `tls_listen` (certificates by SNI).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Each TLS certificate (by its `cert` file) and the digest of its
    /// files and hosts, for the reload plan.
    pub certificates: BTreeMap<String, crate::config::Definition>,
    /// Distributed tracing (`observability.tracing`).
    pub tracer: Option<Arc<crate::observability::trace::Tracer>>,
    /// `cache.broadcast_invalidation` (with `redis:`): unsafe requests'
    /// invalidations go to every replica.
    pub broadcast_invalidation: Option<Arc<crate::ratelimit::global::Redis>>,
    /// The response cache's store.
    pub cache: Option<Arc<crate::cache::store::Store>>,
    /// Request-path settings from `server`.
    pub settings: ServerSettings,
    /// Metric handles for requests that matched no route (route label "").
    pub unrouted_metrics: RouteMetrics,
    /// The admin API's bearer token (`server.admin.token`), if any.
    pub admin_token: Option<Arc<[u8]>>,
}

/// The settings read once, when the process starts: listeners, workers,
/// the connection limits and the shutdown grace. A reload that changes one
/// is told that a restart is needed (`restart_only_changes`).
#[derive(Debug, Clone, PartialEq)]
pub struct StartOnly {
    /// `server.listen` addresses.
    pub listen: Vec<String>,
    /// `server.tls_listen` addresses.
    pub tls_listen: Vec<String>,
    /// The admin listener's address.
    pub admin_listen: String,
    /// `server.admin.max_connections`.
    pub admin_max_connections: usize,
    /// `server.admin.header_read_timeout`.
    pub admin_header_read_timeout: Duration,
    /// Worker threads (`None`: one per core).
    pub workers: Option<usize>,
    /// `server.limits.max_connections`.
    pub max_connections: usize,
    /// `server.shutdown_grace`.
    pub shutdown_grace: Duration,
    /// The directories of the TLS certificate files and IP list files,
    /// watched for changes (beside the config file's own) from the start.
    pub certificate_dirs: Vec<std::path::PathBuf>,
}

impl Snapshot {
    /// Creates, at 0, every counter whose labels the config decides, so
    /// that `rate()` and `absent()` work from the first scrape and after a
    /// reload: reload results, overflow scopes, protocols, retries and the
    /// retry budget per route, health checks per endpoint, TLS handshakes.
    /// (Families created with their owners, such as auth and rate-limit
    /// decisions, circuit transitions and cache results, already are.)
    pub(crate) fn register_metrics(&self) {
        let m = crate::observability::metrics::metrics();
        for result in ["success", "failure"] {
            m.config_reloads.with_label_values(&[result]);
        }
        for scope in ["global", "upstream", "connections", "client_connection"] {
            m.overflow.with_label_values(&[scope]);
        }
        for protocol in ["http1", "h2"] {
            m.downstream_requests.with_label_values(&[protocol]);
        }
        if self.settings.ip.is_some() {
            m.ip_denied.with_label_values(&["", "server"]);
        }
        for route in self.routes.iter().filter(|r| r.ip.is_some()) {
            m.ip_denied
                .with_label_values(&[route.name.as_str(), "route"]);
        }
        for route in &self.routes {
            let Some(retry) = &route.retry else {
                continue;
            };
            m.retry_budget_exhausted.with_label_values(&[&route.name]);
            for reason in retry.reasons() {
                m.retries.with_label_values(&[route.name.as_str(), &reason]);
            }
        }
        for up in self.upstreams.values() {
            if up.health.is_none() {
                continue;
            }
            for ep in &up.endpoints {
                for result in ["success", "failure"] {
                    m.health_checks
                        .with_label_values(&[up.name.as_str(), ep.id.as_str(), result]);
                }
            }
        }
        if self.redis.is_some() && self.cache.is_some() {
            for event in ["purge", "invalidate"] {
                for direction in ["sent", "received"] {
                    m.cache_fleet_events.with_label_values(&[event, direction]);
                }
            }
        }
        for reason in ["queue_full", "export_failed"] {
            m.trace_spans_dropped.with_label_values(&[reason]);
        }
        if self.tls.is_some() {
            for (result, version) in [
                ("success", "1.3"),
                ("success", "1.2"),
                ("failure", "none"),
                ("timeout", "none"),
            ] {
                m.tls_handshakes.with_label_values(&[result, version]);
            }
        }
    }

    /// Starts what runs in the background for this snapshot (remote key
    /// refresh, health checks). Call once it is live; keys carried over from the previous
    /// snapshot are refreshed instead (as on any reload).
    pub fn start_background(&self) {
        for p in self.auth.values() {
            p.start();
        }
        for u in self.upstreams.values() {
            u.start_background();
        }
        if let Some(r) = &self.redis {
            r.start();
        }
        if let Some(t) = &self.tracer {
            t.start();
        }
    }

    /// True when every remote key store has its first keys (or stopped
    /// waiting for them).
    pub fn auth_ready(&self) -> bool {
        self.auth.values().all(AnyProvider::ready)
    }

    /// Which route `method host path` would take and why, as JSON (the
    /// admin `/routes/explain` and `tollgate explain` answer).
    pub fn explain(&self, method: &str, host: &str, path_and_query: &str) -> serde_json::Value {
        use serde_json::json;
        let Ok(method) = http::Method::from_bytes(method.as_bytes()) else {
            return json!({ "error": format!("`{method}` is not a method") });
        };
        let (path, query) = path_and_query
            .split_once('?')
            .map_or((path_and_query, None), |(p, q)| (p, Some(q)));
        let normalized =
            match crate::routing::normalize::normalize_path(path, self.settings.normalize) {
                Ok(p) => p.into_owned(),
                Err(e) => return json!({ "status": 400, "error": e.to_string() }),
            };
        let host = host
            .rsplit_once(':')
            .map_or(host, |(h, _)| h)
            .to_ascii_lowercase();
        let headers = HeaderMap::new();
        let view = crate::routing::RequestView {
            method: &method,
            host: &host,
            path: &normalized,
            query,
            headers: &headers,
        };
        let e = crate::routing::explain::explain(&self.router, &view);
        let name = |id: usize| self.routes.get(id).map_or("", |r| r.name.as_str());
        let describe = |id: usize| {
            let m = self.router.matcher(id);
            json!({
                "route": name(id),
                "index": id,
                "hosts": m.map(|m| m.hosts.clone()),
                "path_kind": m.map(|m| m.path.kind()),
                "pattern": m.map(|m| m.path.pattern().to_owned()),
            })
        };
        json!({
            "request": { "method": method.as_str(), "host": host, "path": normalized },
            "status": e.status,
            "matched": e.matched.map(name),
            "rule": "exact host > wildcard host (longest suffix) > any host; then exact path > template > longest prefix > regex; then declared order",
            "candidates": e.candidates.iter().map(|c| {
                let mut d = describe(c.id);
                d["group"] = json!(c.group);
                d["outcome"] = json!(c.outcome);
                d
            }).collect::<Vec<_>>(),
            "nearest": e.nearest.iter().map(|id| describe(*id)).collect::<Vec<_>>(),
            "note": "header and query constraints are checked against an empty request here",
        })
    }
}

/// Downstream limits and policies, read per connection or per request.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Networks whose forwarding headers are trusted.
    pub trusted_proxies: Vec<IpNet>,
    /// IP allow and deny lists for every route (`server.ip`).
    pub ip: Option<crate::access::ip::IpRules>,
    /// Largest request head in bytes.
    pub max_request_header_bytes: usize,
    /// Largest request body in bytes.
    pub max_request_body_bytes: u64,
    /// Most header fields.
    pub max_request_headers: usize,
    /// Request head deadline.
    pub header_read_timeout: Duration,
    /// Gap allowed between body pieces.
    pub body_read_timeout: Duration,
    /// `_` in header names.
    pub headers_with_underscores: UnderscorePolicy,
    /// Path normalization.
    pub normalize: NormalizeOptions,
    /// Keep-alive idle timeout.
    pub idle_timeout: Duration,
    /// Longest stall of writes to the client.
    pub send_timeout: Duration,
    /// Idle limit of an upgraded tunnel (data in either direction resets it).
    pub tunnel_idle_timeout: Duration,
    /// h2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Write access log lines.
    pub access_log: bool,
    /// Log query strings, with these parameters' values redacted (every
    /// provider's query token sources).
    pub access_log_query: Option<Arc<[String]>>,
    /// Requests in progress beyond this are shed (503).
    pub max_inflight_requests: usize,
    /// Longest TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// Plaintext requests get 308 to https (on the first TLS listener's port).
    pub redirect_https: bool,
    /// `Strict-Transport-Security` for TLS responses.
    pub hsts: Option<HeaderValue>,
}

impl ServerSettings {
    /// True when `ip` is a trusted proxy.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.trusted_proxies.iter().any(|n| n.contains(&ip))
    }
}

/// One compiled route.
pub struct Route {
    /// Config name (metric label).
    pub name: String,
    /// The definition's digest (the reload log names changed routes).
    pub definition: crate::config::Definition,
    /// What it does.
    pub action: Action,
    /// Path rewrite before forwarding.
    pub rewrite: Rewrite,
    /// Host header sent upstream instead of the client's.
    pub host_rewrite: Option<HeaderValue>,
    /// Deadline for the upstream response head.
    pub timeout: Duration,
    /// Idle limit of this route's upgraded tunnels (else the server's).
    pub tunnel_idle: Option<Duration>,
    /// Header rules on the way upstream.
    pub request_headers: HeaderRules,
    /// Header rules on the way back.
    pub response_headers: HeaderRules,
    /// JWT policy; `None`: public.
    pub auth: Option<RouteAuth>,
    /// Retry policy.
    pub retry: Option<crate::upstream::retry::RetryPolicy>,
    /// Rate-limit policies.
    pub limits: Option<crate::ratelimit::RouteLimits>,
    /// Response cache.
    pub cache: Option<crate::cache::key::RouteCache>,
    /// IP allow and deny lists (`routes[i].ip`).
    pub ip: Option<crate::access::ip::IpRules>,
    /// CORS (`routes[i].cors`).
    pub cors: Option<crate::access::cors::Cors>,
    /// Response compression (`compression`).
    pub compression: Option<crate::compression::Compression>,
    /// Shadow traffic (`mirror`).
    pub mirror: Option<Arc<crate::upstream::mirror::Mirror>>,
    /// Metric handles.
    pub metrics: RouteMetrics,
}

/// What a route does with a request.
pub enum Action {
    /// Proxy to one upstream.
    Forward(Arc<Upstream>),
    /// Proxy to one of several upstreams, by weight.
    Split(Split),
    /// Answer with a fixed response.
    Respond {
        /// Status.
        status: StatusCode,
        /// Body.
        body: Bytes,
        /// Headers.
        headers: HeaderMap,
    },
    /// Answer with a redirect.
    Redirect {
        /// 301, 302, 303, 307 or 308.
        status: StatusCode,
        /// Location header value.
        location: HeaderValue,
    },
}

/// Weighted upstream choice.
pub struct Split {
    /// (running sum of weights, upstream).
    pub choices: Vec<(u64, Arc<Upstream>)>,
}

impl Split {
    /// Picks an upstream by weight.
    pub fn pick(&self) -> Option<&Arc<Upstream>> {
        let total = self.choices.last()?.0;
        let r = fastrand::u64(0..total.max(1));
        self.choices.iter().find(|(c, _)| r < *c).map(|(_, u)| u)
    }
}

/// Path rewrite applied to the normalized path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rewrite {
    /// Forward the path as is.
    None,
    /// Replace the leading `from` (segment boundary) with `to`.
    Prefix {
        /// Prefix removed.
        from: String,
        /// Prefix put in its place.
        to: String,
    },
}

impl Rewrite {
    /// Applies the rewrite; `None` when nothing changes.
    pub fn apply(&self, path: &str) -> Option<String> {
        let Rewrite::Prefix { from, to } = self else {
            return None;
        };
        let from = from.trim_end_matches('/');
        let rest = path.strip_prefix(from)?;
        if !(rest.is_empty() || rest.starts_with('/')) {
            return None;
        }
        let to = to.trim_end_matches('/');
        let mut out = String::with_capacity(to.len() + rest.len() + 1);
        out.push_str(to);
        out.push_str(rest);
        if !out.starts_with('/') {
            out.insert(0, '/');
        }
        Some(out)
    }
}

/// set / add / remove header rules.
#[derive(Debug, Clone, Default)]
pub struct HeaderRules {
    /// Replace.
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Append.
    pub add: Vec<(HeaderName, HeaderValue)>,
    /// Remove.
    pub remove: Vec<HeaderName>,
}

impl HeaderRules {
    /// Applies remove, then set, then add.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (n, v) in &self.set {
            headers.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            headers.append(n.clone(), v.clone());
        }
    }

    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_rewrite_respects_segments() {
        let strip = Rewrite::Prefix {
            from: "/api".into(),
            to: "/".into(),
        };
        assert_eq!(strip.apply("/api/users"), Some("/users".into()));
        assert_eq!(strip.apply("/api"), Some("/".into()));
        assert_eq!(strip.apply("/apix"), None);
        let re = Rewrite::Prefix {
            from: "/api/v1".into(),
            to: "/v1".into(),
        };
        assert_eq!(re.apply("/api/v1/x?"), Some("/v1/x?".into()));
    }
}
