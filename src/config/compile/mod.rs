//! `Spec` + previous `Snapshot` → new `Snapshot`.
//!
//! Validation and compilation are one pass: each field is turned into its
//! runtime type (a parsed address, a compiled regex, a `HeaderName`), and
//! every failure is collected with its field path instead of stopping at the
//! first. Only a spec with no errors yields a snapshot.
//!
//! Stateful parts whose definition did not change are carried over from the
//! previous snapshot by `Arc` (today: upstreams with their pools).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;

mod access;
mod admin;
mod auth;
mod observability;
mod ratelimit;
mod route;
mod tls;
mod upstream;

use route::{match_key, matcher, route};
pub use upstream::parse_endpoint_url;
use upstream::upstreams;

use super::spec::{EscapedSlashPolicy, Spec, WorkersSpec};
use crate::observability::metrics::RouteMetrics;
use crate::routing::Router;
use crate::routing::normalize::NormalizeOptions;
use crate::snapshot::{ServerSettings, Snapshot, StartOnly};

/// Route timeout when none is configured.
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest upstream response head accepted.
pub const MAX_UPSTREAM_RESPONSE_HEADER_BYTES: usize = 64 << 10;

/// True for names of routes, upstreams and providers: letters, digits,
/// `-`, `_` and `.` (they become metric labels).
fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Errors as (field path, message), before locations are attached.
#[derive(Debug, Default)]
pub struct Errors(pub Vec<(String, String)>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, msg: impl Into<String>) {
        self.0.push((path.into(), msg.into()));
    }
}

/// Compiles `spec`, reusing unchanged state from `previous`. Files the
/// config names (keys) are read relative to `base`, and their contents
/// are part of the version.
pub fn compile(
    spec: Spec,
    version: String,
    previous: Option<&Snapshot>,
    base: &Path,
) -> Result<Snapshot, Errors> {
    let mut errs = Errors::default();
    let settings = settings(&spec, &mut errs);
    let upstreams = upstreams(&spec, previous, base, &mut errs);
    let (providers, mut files_hash) = auth::providers(&spec, previous, base, &mut errs);
    let admin_token = admin::token(&spec, base, &mut errs, &mut files_hash);
    let mut certificates = std::collections::BTreeMap::new();
    let tls = tls::tls(&spec, base, &mut errs, &mut files_hash, &mut certificates);
    let (redirect_https, hsts) = tls::https_policy(&spec, &mut errs);
    let settings = ServerSettings {
        redirect_https,
        hsts,
        ..settings
    };
    let tracer = observability::tracer(&spec, previous, base, &mut errs, &mut files_hash);
    let server_ip = spec
        .server
        .ip
        .as_ref()
        .map(|ip| access::ip_rules(ip, "server.ip", base, &mut errs, &mut files_hash));
    let settings = ServerSettings {
        ip: server_ip,
        ..settings
    };
    let redis = ratelimit::redis(&spec, previous, &mut errs);
    let cache_store = cache_store(&spec, previous, &mut errs);
    let rate_limits = ratelimit::policies(&spec, previous, redis.as_ref(), &mut errs);
    let broadcast = spec
        .cache
        .as_ref()
        .is_some_and(|c| c.broadcast_invalidation);
    if broadcast && spec.redis.is_none() {
        errs.push(
            "cache.broadcast_invalidation",
            "needs `redis:`: the replicas reach each other through it",
        );
    }
    let broadcast_invalidation = redis.clone().filter(|_| broadcast);
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut matchers = Vec::new();
    let mut routes = Vec::new();
    for (i, r) in spec.routes.iter().enumerate() {
        let p = format!("routes[{i}]");
        if !is_name(&r.name) {
            errs.push(
                format!("{p}.name"),
                "route names use letters, digits, `-`, `_` and `.`",
            );
        }
        if let Some(first) = names.insert(&r.name, i) {
            errs.push(
                format!("{p}.name"),
                format!("duplicate route name `{}` (also routes[{first}])", r.name),
            );
        }
        let m = matcher(
            &r.matcher,
            &format!("{p}.match"),
            settings.normalize,
            &mut errs,
        );
        if let Some(m) = m {
            let key = match_key(&r.matcher);
            if let Some(first) = seen.insert(key, i) {
                errs.push(
                    format!("{p}.match"),
                    format!(
                        "same match definition as routes[{first}] (`{}`), which would always win",
                        spec.routes[first].name
                    ),
                );
            }
            matchers.push(m);
        }
        let auth = r.auth.as_ref().and_then(|a| {
            auth::route_auth(
                &r.name,
                a,
                &format!("{p}.auth"),
                &providers,
                &spec,
                &mut errs,
            )
        });
        let limits = ratelimit::route_limits(
            &r.name,
            &r.rate_limit,
            &format!("{p}.rate_limit"),
            &rate_limits,
            &spec,
            &mut errs,
        );
        let cache = r.cache.as_ref().and_then(|c| {
            route_cache(
                &r.name,
                c,
                &format!("{p}.cache"),
                cache_store.as_ref(),
                &mut errs,
            )
        });
        let ip = r
            .ip
            .as_ref()
            .map(|ip| access::ip_rules(ip, &format!("{p}.ip"), base, &mut errs, &mut files_hash));
        let cors = r.cors.as_ref().and_then(|c| {
            access::cors(
                &r.name,
                c,
                &r.matcher.methods,
                &format!("{p}.cors"),
                &mut errs,
            )
        });
        if let Some(mut route) = route(r, &p, &upstreams, &mut errs) {
            route.ip = ip;
            route.cors = cors;
            route.auth = auth;
            route.limits = limits;
            route.cache = cache;
            routes.push(std::sync::Arc::new(route));
        }
    }
    // An empty file, a comments-only file, `{}`: what an editor leaves
    // half-way through a save. Serving it would answer 404 to everything.
    if spec.routes.is_empty() {
        errs.push(
            "routes",
            "no routes: a config must define at least one route (an empty or truncated file is refused, and a running gateway keeps its config)",
        );
    }
    if !errs.0.is_empty() {
        return Err(errs);
    }
    // Every file the config names (keys, certificates, IP lists) counts in
    // the version.
    let version = if files_hash == 0 {
        version
    } else {
        format!(
            "{:016x}",
            crate::hash::hash64(format!("{version}:{files_hash:x}").as_bytes())
        )
    };
    Ok(Snapshot {
        version,
        router: Router::new(matchers),
        routes,
        upstreams,
        auth: providers,
        rate_limits,
        redis,
        tls,
        tracer,
        certificates,
        broadcast_invalidation,
        cache: cache_store,
        settings,
        unrouted_metrics: RouteMetrics::new(""),
        admin_token,
        config: serde_json::to_value(&spec).unwrap_or_default(),
        start_only: StartOnly::of(&spec, base),
    })
}

impl StartOnly {
    /// The start-only settings of `spec`, whose files are relative to
    /// `base`.
    pub fn of(spec: &Spec, base: &Path) -> Self {
        let server = &spec.server;
        let strings = |v: &[crate::config::units::Str]| v.iter().map(|a| a.to_string()).collect();
        StartOnly {
            listen: strings(&server.listen),
            tls_listen: strings(&server.tls_listen),
            admin_listen: server.admin_address().to_string(),
            admin_max_connections: server.admin.max_connections,
            admin_header_read_timeout: server.admin.header_read_timeout.0,
            workers: match server.workers {
                WorkersSpec::Auto => None,
                WorkersSpec::Count(n) => Some(n),
            },
            max_connections: server.limits.max_connections,
            shutdown_grace: server.shutdown_grace.0,
            certificate_dirs: server
                .tls
                .iter()
                .flat_map(|t| t.certificates.iter())
                .flat_map(|c| [c.cert.as_str(), c.key.as_str()])
                // IP list files are watched like certificates.
                .chain(
                    server
                        .ip
                        .iter()
                        .chain(spec.routes.iter().filter_map(|r| r.ip.as_ref()))
                        .flat_map(|ip| [&ip.allow_file, &ip.deny_file])
                        .filter_map(|f| f.as_ref().map(|f| f.as_str())),
                )
                // So are API key files: removing a key revokes it.
                .chain(
                    spec.auth
                        .providers
                        .values()
                        .filter_map(|p| p.keys_file.as_ref().map(|f| f.as_str())),
                )
                .filter_map(|f| base.join(f).parent().map(Path::to_path_buf))
                .collect(),
        }
    }
}

/// `cache:`, carried over (with its entries) while unchanged.
fn cache_store(
    spec: &Spec,
    previous: Option<&Snapshot>,
    errs: &mut Errors,
) -> Option<std::sync::Arc<crate::cache::store::Store>> {
    let c = spec.cache.as_ref()?;
    if c.max_object_size.0 == 0 || c.max_object_size.0 > c.max_size.0 {
        errs.push(
            "cache.max_object_size",
            "must be more than 0 and at most max_size",
        );
        return None;
    }
    let settings = (c.max_size.0, c.max_object_size.0);
    if let Some(prev) = previous.and_then(|s| s.cache.as_ref())
        && prev.settings == settings
    {
        return Some(std::sync::Arc::clone(prev));
    }
    Some(std::sync::Arc::new(crate::cache::store::Store::new(
        c.max_size.0,
        c.max_object_size.0,
    )))
}

/// A route's `cache`.
fn route_cache(
    route: &str,
    c: &crate::config::spec::RouteCacheSpec,
    p: &str,
    store: Option<&std::sync::Arc<crate::cache::store::Store>>,
    errs: &mut Errors,
) -> Option<crate::cache::key::RouteCache> {
    use crate::cache::key::{CacheKeyPart, RouteCache};
    let Some(store) = store else {
        errs.push(p, "a route cache needs the top-level `cache:` section");
        return None;
    };
    let mut key = Vec::new();
    for (i, k) in c.key.iter().enumerate() {
        match CacheKeyPart::parse(k) {
            Ok(part) => key.push(part),
            Err(m) => errs.push(format!("{p}.key[{i}]"), m),
        }
    }
    let per_tenant = key
        .iter()
        .any(|k| matches!(k, CacheKeyPart::Tenant | CacheKeyPart::Claim(_)));
    if c.cache_authorized && !per_tenant {
        errs.push(
            format!("{p}.cache_authorized"),
            "needs tenant or a claim in key, so one user's response is never served to another",
        );
    }
    let allow = crate::cache::policy::Allowances {
        default_ttl: c.default_ttl.map(|d| d.0),
        authorized_per_tenant: c.cache_authorized && per_tenant,
        key_cookies: key
            .iter()
            .filter_map(|k| match k {
                CacheKeyPart::Cookie(n) => Some(n.clone()),
                _ => None,
            })
            .collect(),
    };
    Some(RouteCache::new(
        route,
        std::sync::Arc::clone(store),
        key,
        allow,
        (
            c.stale_if_error.map_or(std::time::Duration::ZERO, |d| d.0),
            c.stale_while_revalidate
                .map_or(std::time::Duration::ZERO, |d| d.0),
        ),
    ))
}

fn settings(spec: &Spec, errs: &mut Errors) -> ServerSettings {
    let s = &spec.server;
    if s.listen.is_empty() {
        errs.push("server.listen", "give at least one address");
    }
    for (i, a) in s.listen.iter().enumerate() {
        if a.as_str().parse::<SocketAddr>().is_err() {
            errs.push(
                format!("server.listen[{i}]"),
                format!("`{a}` is not an address such as 0.0.0.0:8080"),
            );
        }
    }
    if s.admin_listen.as_str().parse::<SocketAddr>().is_err() {
        errs.push(
            "server.admin_listen",
            format!(
                "`{}` is not an address such as 127.0.0.1:9901",
                s.admin_listen
            ),
        );
    }
    let mut trusted = Vec::new();
    for (i, t) in s.trusted_proxies.iter().enumerate() {
        match t
            .as_str()
            .parse::<IpNet>()
            .or_else(|_| t.as_str().parse::<IpAddr>().map(IpNet::from))
        {
            Ok(n) => trusted.push(n),
            Err(_) => errs.push(
                format!("server.trusted_proxies[{i}]"),
                format!("`{t}` is not a CIDR or address"),
            ),
        }
    }
    let l = &s.limits;
    let p = "server.limits";
    let range = |errs: &mut Errors, field: &str, v: u64, lo: u64, hi: u64| {
        if !(lo..=hi).contains(&v) {
            errs.push(
                format!("{p}.{field}"),
                format!("must be from {lo} to {hi}, got {v}"),
            );
        }
    };
    range(
        errs,
        "max_request_header_bytes",
        l.max_request_header_bytes.0,
        1024,
        1 << 20,
    );
    range(
        errs,
        "max_request_headers",
        l.max_request_headers as u64,
        1,
        1000,
    );
    range(
        errs,
        "max_concurrent_streams",
        u64::from(l.max_concurrent_streams),
        1,
        10_000,
    );
    if !(1..=10_000_000).contains(&s.max_inflight_requests) {
        errs.push(
            "server.max_inflight_requests",
            format!(
                "must be from 1 to 10000000, got {}",
                s.max_inflight_requests
            ),
        );
    }
    range(
        errs,
        "max_connections",
        l.max_connections as u64,
        1,
        10_000_000,
    );
    for (field, d) in [
        ("header_read_timeout", l.header_read_timeout.0),
        ("body_read_timeout", l.body_read_timeout.0),
        ("idle_timeout", l.idle_timeout.0),
        ("send_timeout", l.send_timeout.0),
        ("tunnel_idle_timeout", l.tunnel_idle_timeout.0),
    ] {
        if d.is_zero() {
            errs.push(format!("{p}.{field}"), "must be more than zero");
        }
    }
    ServerSettings {
        trusted_proxies: trusted,
        ip: None,
        max_request_header_bytes: l.max_request_header_bytes.0 as usize,
        max_request_body_bytes: l.max_request_body_bytes.0,
        max_request_headers: l.max_request_headers,
        header_read_timeout: l.header_read_timeout.0,
        body_read_timeout: l.body_read_timeout.0,
        headers_with_underscores: l.headers_with_underscores,
        normalize: NormalizeOptions {
            merge_slashes: l.merge_slashes,
            reject_escaped_slashes: l.escaped_slashes == EscapedSlashPolicy::Reject,
        },
        idle_timeout: l.idle_timeout.0,
        send_timeout: l.send_timeout.0,
        max_concurrent_streams: l.max_concurrent_streams,
        access_log: s.access_log.enabled,
        // Every provider's query token and key sources are redacted,
        // whichever route a request took.
        access_log_query: s.access_log.query.then(|| {
            spec.auth
                .providers
                .values()
                .flat_map(|p| p.token_from.iter().chain(p.from.iter().flatten()))
                .filter_map(|t| t.strip_prefix("query:"))
                .map(|n| n.trim().to_owned())
                .collect::<Vec<_>>()
                .into()
        }),
        max_inflight_requests: s.max_inflight_requests,
        tls_handshake_timeout: l.tls_handshake_timeout.0,
        tunnel_idle_timeout: l.tunnel_idle_timeout.0,
        redirect_https: false,
        hsts: None,
    }
}
