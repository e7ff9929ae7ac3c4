//! `Spec` + previous `Snapshot` → new `Snapshot`.
//!
//! Validation and compilation are one pass: each field is turned into its
//! runtime type (a parsed address, a compiled regex, a `HeaderName`), and
//! every failure is collected with its field path instead of stopping at the
//! first. Only a spec with no errors yields a snapshot.
//!
//! Stateful parts whose definition did not change are carried over from the
//! previous snapshot by `Arc` (today: upstreams with their pools).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use ipnet::IpNet;
use regex::Regex;

use super::spec::{
    BalancerSpec, EscapedSlashPolicy, HeaderRulesSpec, MatchSpec, RouteSpec, Spec, UpstreamSpec,
    ValueMatchSpec,
};
use crate::observability::metrics::RouteMetrics;
use crate::routing::normalize::{NormalizeOptions, normalize_path};
use crate::routing::tree::{MAX_SEGMENTS, is_param, segments};
use crate::routing::{Constraints, PathMatch, RouteMatcher, Router, ValueMatcher};
use crate::snapshot::{Action, HeaderRules, Rewrite, Route, Settings, Snapshot, Split};
use crate::upstream::{Endpoint, EndpointParams, HashOn, Target, Upstream};

/// Route timeout when none is configured.
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest upstream response head accepted.
pub const MAX_UPSTREAM_RESPONSE_HEADER_BYTES: usize = 64 << 10;

/// Errors as (field path, message), before locations are attached.
#[derive(Debug, Default)]
pub struct Errors(pub Vec<(String, String)>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, msg: impl Into<String>) {
        self.0.push((path.into(), msg.into()));
    }
}

/// Compiles `spec`, reusing unchanged state from `previous`.
pub fn compile(
    spec: Spec,
    version: String,
    previous: Option<&Snapshot>,
) -> Result<Snapshot, Errors> {
    let mut errs = Errors::default();
    let settings = settings(&spec, &mut errs);
    let upstreams = upstreams(&spec, previous, &mut errs);
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut matchers = Vec::new();
    let mut routes = Vec::new();
    for (i, r) in spec.routes.iter().enumerate() {
        let p = format!("routes[{i}]");
        if r.name.is_empty()
            || !r
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
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
        if let Some(route) = route(r, &p, &upstreams, &mut errs) {
            routes.push(route);
        }
    }
    if !errs.0.is_empty() {
        return Err(errs);
    }
    Ok(Snapshot {
        version,
        router: Router::new(matchers),
        routes,
        upstreams,
        settings,
        unrouted_metrics: RouteMetrics::new(""),
        spec,
    })
}

fn settings(spec: &Spec, errs: &mut Errors) -> Settings {
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
    ] {
        if d.is_zero() {
            errs.push(format!("{p}.{field}"), "must be more than zero");
        }
    }
    Settings {
        trusted_proxies: trusted,
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
        max_concurrent_streams: l.max_concurrent_streams,
        access_log: s.access_log.enabled,
    }
}

fn upstreams(
    spec: &Spec,
    previous: Option<&Snapshot>,
    errs: &mut Errors,
) -> BTreeMap<String, Arc<Upstream>> {
    let mut out = BTreeMap::new();
    for (name, u) in &spec.upstreams {
        let p = format!("upstreams.{name}");
        if let Some(prev) = previous.and_then(|s| s.upstreams.get(name))
            && prev.spec == *u
        {
            out.insert(name.clone(), Arc::clone(prev));
            continue;
        }
        if let Some(up) = upstream(name, u, &p, errs) {
            out.insert(name.clone(), Arc::new(up));
        }
    }
    out
}

fn upstream(name: &str, u: &UpstreamSpec, p: &str, errs: &mut Errors) -> Option<Upstream> {
    let before = errs.0.len();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        errs.push(p, "upstream names use letters, digits, `-`, `_` and `.`");
    }
    if u.endpoints.is_empty() {
        errs.push(format!("{p}.endpoints"), "give at least one endpoint");
    }
    let mut endpoints = Vec::new();
    for (i, e) in u.endpoints.iter().enumerate() {
        let ep = format!("{p}.endpoints[{i}]");
        if !(1..=1000).contains(&e.weight) {
            errs.push(
                format!("{ep}.weight"),
                format!("must be from 1 to 1000, got {}", e.weight),
            );
        }
        match parse_endpoint_url(e.url.as_str()) {
            Ok((host, port)) => {
                let target = Target {
                    host,
                    port,
                    connect_timeout: u.connect_timeout.0,
                    max_idle: u.pool.max_idle_per_endpoint,
                    idle_timeout: u.pool.idle_timeout.0,
                    max_response_header_bytes: MAX_UPSTREAM_RESPONSE_HEADER_BYTES,
                };
                let params = EndpointParams {
                    upstream: name,
                    target,
                    weight: e.weight.max(1),
                    h2: u.protocol == super::spec::ProtocolSpec::H2c,
                };
                match Endpoint::new(params) {
                    Ok(e) => endpoints.push(Arc::new(e)),
                    Err(m) => errs.push(&ep, m),
                }
            }
            Err(m) => errs.push(&ep, m),
        }
    }
    if u.connect_timeout.0.is_zero() {
        errs.push(format!("{p}.connect_timeout"), "must be more than zero");
    }
    if u.pool.idle_timeout.0.is_zero() {
        errs.push(format!("{p}.pool.idle_timeout"), "must be more than zero");
    }
    let hash_on = match (&u.hash_on, u.balancer) {
        (Some(h), BalancerSpec::ConsistentHash) => match parse_hash_on(h.as_str()) {
            Ok(h) => Some(h),
            Err(m) => {
                errs.push(format!("{p}.hash_on"), m);
                None
            }
        },
        (None, BalancerSpec::ConsistentHash) => {
            errs.push(
                format!("{p}.hash_on"),
                "consistent_hash needs hash_on (header:NAME, cookie:NAME, client_ip or path)",
            );
            None
        }
        (Some(_), _) => {
            errs.push(
                format!("{p}.hash_on"),
                "hash_on only applies to balancer: consistent_hash",
            );
            None
        }
        (None, _) => None,
    };
    (errs.0.len() == before).then(|| Upstream::new(name, u.clone(), endpoints, hash_on))
}

/// `http://host[:port][/]` → (host, port).
pub fn parse_endpoint_url(url: &str) -> Result<(String, u16), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        if url.starts_with("https://") {
            format!("`{url}`: https upstreams are not supported yet; use http://")
        } else {
            format!("`{url}` must start with http://")
        }
    })?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
        return Err(format!(
            "`{url}` must be http://host:port with no path, query or user info"
        ));
    }
    let uri: http::uri::Authority = authority
        .parse()
        .map_err(|_| format!("`{url}` has an invalid host or port"))?;
    let host = uri
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Ok((host, uri.port_u16().unwrap_or(80)))
}

fn parse_hash_on(text: &str) -> Result<HashOn, String> {
    match text.split_once(':') {
        Some(("header", name)) => HeaderName::try_from(name.trim())
            .map(HashOn::Header)
            .map_err(|_| format!("`{name}` is not a valid header name")),
        Some(("cookie", name)) if !name.trim().is_empty() => {
            Ok(HashOn::Cookie(name.trim().to_owned()))
        }
        None if text == "client_ip" => Ok(HashOn::ClientIp),
        None if text == "path" => Ok(HashOn::Path),
        _ => Err(format!(
            "`{text}`: use header:NAME, cookie:NAME, client_ip or path"
        )),
    }
}

fn matcher(
    m: &MatchSpec,
    p: &str,
    norm: NormalizeOptions,
    errs: &mut Errors,
) -> Option<RouteMatcher> {
    let before = errs.0.len();
    let mut hosts = Vec::new();
    for (i, h) in m.hosts.iter().enumerate() {
        let host = h.as_str().to_ascii_lowercase();
        let bare = host.strip_prefix("*.").unwrap_or(&host);
        let valid = !bare.is_empty()
            && bare
                .split('.')
                .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        if !valid {
            errs.push(
                format!("{p}.hosts[{i}]"),
                format!("`{h}` is not a host name (a `*.` wildcard may lead; no port)"),
            );
        }
        hosts.push(host);
    }
    let given = [
        m.path.is_some(),
        m.path_prefix.is_some(),
        m.path_regex.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if given != 1 {
        errs.push(p, "give exactly one of path, path_prefix, path_regex");
    }
    let mut check_path = |field: &str, text: &str| {
        match normalize_path(text, norm) {
            Ok(n) if n == text => {}
            Ok(n) => errs.push(
                format!("{p}.{field}"),
                format!("`{text}` is not normalized and could never match; write `{n}`"),
            ),
            Err(e) => errs.push(format!("{p}.{field}"), format!("`{text}`: {e}")),
        }
        if segments(text).count() > MAX_SEGMENTS {
            errs.push(
                format!("{p}.{field}"),
                format!("more than {MAX_SEGMENTS} segments"),
            );
        }
    };
    let path = if let Some(path) = &m.path {
        check_path("path", path.as_str());
        let text = path.as_str();
        if text.contains(['{', '}']) {
            for seg in segments(text) {
                if seg.contains(['{', '}']) && !is_param(seg) {
                    errs.push(
                        format!("{p}.path"),
                        format!(
                            "`{seg}`: a template parameter must be a whole segment such as {{id}}"
                        ),
                    );
                }
            }
            Some(PathMatch::Template(text.to_owned()))
        } else {
            Some(PathMatch::Exact(text.to_owned()))
        }
    } else if let Some(prefix) = &m.path_prefix {
        check_path("path_prefix", prefix.as_str());
        Some(PathMatch::Prefix(prefix.as_str().to_owned()))
    } else if let Some(re) = &m.path_regex {
        match Regex::new(&format!("^(?:{})$", re.as_str())) {
            Ok(r) => Some(PathMatch::Regex(r)),
            Err(e) => {
                errs.push(format!("{p}.path_regex"), format!("invalid regex: {e}"));
                None
            }
        }
    } else {
        None
    };
    let mut constraints = Constraints::default();
    for (i, method) in m.methods.iter().enumerate() {
        match Method::from_bytes(method.as_bytes()) {
            Ok(mm) if method.chars().all(|c| c.is_ascii_uppercase()) => {
                constraints.methods.push(mm)
            }
            _ => errs.push(
                format!("{p}.methods[{i}]"),
                format!("`{method}` is not an upper-case method name"),
            ),
        }
    }
    for (name, v) in &m.headers {
        let field = format!("{p}.headers.{name}");
        match HeaderName::try_from(name.as_str()) {
            Ok(h) => {
                if let Some(vm) = value_matcher(v, &field, errs) {
                    constraints.headers.push((h, vm));
                }
            }
            Err(_) => errs.push(field, format!("`{name}` is not a valid header name")),
        }
    }
    for (name, v) in &m.query {
        if let Some(vm) = value_matcher(v, &format!("{p}.query.{name}"), errs) {
            constraints.query.push((name.clone(), vm));
        }
    }
    match path {
        Some(path) if errs.0.len() == before => Some(RouteMatcher {
            hosts,
            path,
            constraints,
        }),
        _ => None,
    }
}

fn value_matcher(v: &ValueMatchSpec, p: &str, errs: &mut Errors) -> Option<ValueMatcher> {
    match v {
        ValueMatchSpec::Exact(s) => Some(ValueMatcher::Exact(s.0.clone())),
        ValueMatchSpec::Present(b) => Some(ValueMatcher::Present(*b)),
        ValueMatchSpec::Regex(r) => match Regex::new(&format!("^(?:{})$", r.as_str())) {
            Ok(re) => Some(ValueMatcher::Regex(re)),
            Err(e) => {
                errs.push(format!("{p}.regex"), format!("invalid regex: {e}"));
                None
            }
        },
    }
}

/// A canonical text for a match definition, to find duplicates.
fn match_key(m: &MatchSpec) -> String {
    let mut hosts: Vec<String> = m
        .hosts
        .iter()
        .map(|h| h.as_str().to_ascii_lowercase())
        .collect();
    hosts.sort();
    let mut methods = m.methods.clone();
    methods.sort();
    format!(
        "{hosts:?}|{:?}|{:?}|{:?}|{methods:?}|{:?}|{:?}",
        m.path, m.path_prefix, m.path_regex, m.headers, m.query
    )
}

fn route(
    r: &RouteSpec,
    p: &str,
    upstreams: &BTreeMap<String, Arc<Upstream>>,
    errs: &mut Errors,
) -> Option<Route> {
    let before = errs.0.len();
    let actions = [
        r.upstream.is_some(),
        r.split.is_some(),
        r.respond.is_some(),
        r.redirect.is_some(),
    ];
    if actions.iter().filter(|x| **x).count() != 1 {
        errs.push(p, "give exactly one of upstream, split, respond, redirect");
    }
    let lookup = |name: &str, field: String, errs: &mut Errors| -> Option<Arc<Upstream>> {
        let found = upstreams.get(name).cloned();
        if found.is_none() {
            let known: Vec<&str> = upstreams.keys().map(String::as_str).collect();
            errs.push(
                field,
                format!(
                    "unknown upstream \"{name}\" (defined: {})",
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                ),
            );
        }
        found
    };
    let action = if let Some(u) = &r.upstream {
        lookup(u, format!("{p}.upstream"), errs).map(Action::Forward)
    } else if let Some(split) = &r.split {
        let mut choices = Vec::new();
        let mut total = 0u64;
        for (i, s) in split.iter().enumerate() {
            if s.weight > 10_000 {
                errs.push(format!("{p}.split[{i}].weight"), "must be from 0 to 10000");
            }
            if let Some(u) = lookup(&s.upstream, format!("{p}.split[{i}].upstream"), errs) {
                total += u64::from(s.weight);
                if s.weight > 0 {
                    choices.push((total, u));
                }
            }
        }
        if total == 0 {
            errs.push(
                format!("{p}.split"),
                "weights must add up to more than zero",
            );
        }
        Some(Action::Split(Split { choices }))
    } else if let Some(resp) = &r.respond {
        let status = StatusCode::from_u16(resp.status)
            .ok()
            .filter(|s| s.as_u16() >= 200);
        if status.is_none() {
            errs.push(
                format!("{p}.respond.status"),
                format!("{} is not a status from 200 to 999", resp.status),
            );
        }
        let mut headers = HeaderMap::new();
        for (name, value) in &resp.headers {
            if let Some((n, v)) = header_pair(
                name,
                value.as_str(),
                &format!("{p}.respond.headers.{name}"),
                errs,
            ) {
                headers.append(n, v);
            }
        }
        status.map(|status| Action::Respond {
            status,
            body: Bytes::from(resp.body.0.clone()),
            headers,
        })
    } else if let Some(red) = &r.redirect {
        let status = match red.status {
            301 | 302 | 303 | 307 | 308 => StatusCode::from_u16(red.status).ok(),
            other => {
                errs.push(
                    format!("{p}.redirect.status"),
                    format!("{other} is not a redirect status (301, 302, 303, 307, 308)"),
                );
                None
            }
        };
        let location = HeaderValue::try_from(red.to.as_str()).ok();
        if location.is_none() {
            errs.push(format!("{p}.redirect.to"), "not a valid Location value");
        }
        status
            .zip(location)
            .map(|(status, location)| Action::Redirect { status, location })
    } else {
        None
    };
    let rewrite = match (&r.strip_prefix, &r.rewrite_prefix) {
        (Some(_), Some(_)) => {
            errs.push(p, "give at most one of strip_prefix, rewrite_prefix");
            Rewrite::None
        }
        (Some(s), None) => prefix_rewrite(s.as_str(), "/", &format!("{p}.strip_prefix"), errs),
        (None, Some(rw)) => prefix_rewrite(
            rw.from.as_str(),
            rw.to.as_str(),
            &format!("{p}.rewrite_prefix"),
            errs,
        ),
        (None, None) => Rewrite::None,
    };
    let host_rewrite = r.host_rewrite.as_ref().and_then(|h| {
        let v = HeaderValue::try_from(h.as_str())
            .ok()
            .filter(|_| h.as_str().parse::<http::uri::Authority>().is_ok());
        if v.is_none() {
            errs.push(
                format!("{p}.host_rewrite"),
                format!("`{h}` is not a host[:port]"),
            );
        }
        v
    });
    let timeout = r.timeout.map_or(DEFAULT_ROUTE_TIMEOUT, |t| t.0);
    if timeout.is_zero() {
        errs.push(format!("{p}.timeout"), "must be more than zero");
    }
    let request_headers = header_rules(&r.request_headers, &format!("{p}.request_headers"), errs);
    let response_headers =
        header_rules(&r.response_headers, &format!("{p}.response_headers"), errs);
    let action = action?;
    (errs.0.len() == before).then(|| Route {
        metrics: RouteMetrics::new(&r.name),
        name: r.name.clone(),
        action,
        rewrite,
        host_rewrite,
        timeout,
        request_headers,
        response_headers,
    })
}

fn prefix_rewrite(from: &str, to: &str, p: &str, errs: &mut Errors) -> Rewrite {
    if !from.starts_with('/') || !to.starts_with('/') {
        errs.push(p, "prefixes must start with /");
    }
    Rewrite::Prefix {
        from: from.to_owned(),
        to: to.to_owned(),
    }
}

fn header_pair(
    name: &str,
    value: &str,
    p: &str,
    errs: &mut Errors,
) -> Option<(HeaderName, HeaderValue)> {
    let n = HeaderName::try_from(name).ok();
    let v = HeaderValue::try_from(value).ok();
    if n.is_none() {
        errs.push(p, format!("`{name}` is not a valid header name"));
    } else if v.is_none() {
        errs.push(p, "not a valid header value");
    }
    n.zip(v)
}

fn header_rules(spec: &HeaderRulesSpec, p: &str, errs: &mut Errors) -> HeaderRules {
    let mut rules = HeaderRules::default();
    for (name, value) in &spec.set {
        if let Some(pair) = header_pair(name, value.as_str(), &format!("{p}.set.{name}"), errs) {
            rules.set.push(pair);
        }
    }
    for (name, value) in &spec.add {
        if let Some(pair) = header_pair(name, value.as_str(), &format!("{p}.add.{name}"), errs) {
            rules.add.push(pair);
        }
    }
    for (i, name) in spec.remove.iter().enumerate() {
        match HeaderName::try_from(name.as_str()) {
            Ok(n) => rules.remove.push(n),
            Err(_) => errs.push(
                format!("{p}.remove[{i}]"),
                format!("`{name}` is not a valid header name"),
            ),
        }
    }
    rules
}
