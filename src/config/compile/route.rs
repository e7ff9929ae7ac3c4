//! Routes: match definitions (hosts, path, constraints) and actions
//! (upstream, split, respond, redirect, rewrites, header rules).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use regex::Regex;

use super::{DEFAULT_ROUTE_TIMEOUT, Errors};
use crate::compression::{Algorithm, Compression, CompressionSettings, DEFAULT_TYPES, TypePattern};
use crate::config::spec::{
    AlgorithmSpec, CompressionSpec, HeaderRulesSpec, MatchSpec, MirrorSpec, RetrySpec, RouteSpec,
    ValueMatchSpec,
};
use crate::observability::metrics::RouteMetrics;
use crate::routing::normalize::{NormalizeOptions, normalize_path};
use crate::routing::tree::{MAX_SEGMENTS, is_param, segments};
use crate::routing::{Constraints, PathMatch, RouteMatcher, ValueMatcher};
use crate::snapshot::{Action, HeaderRules, Rewrite, Route, Split};
use crate::upstream::Upstream;
use crate::upstream::mirror::{Mirror, MirrorSettings};
use crate::upstream::retry::{RetryPolicy, RetrySettings};

pub(super) fn matcher(
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
pub(super) fn match_key(m: &MatchSpec) -> String {
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

pub(super) fn route(
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
    let tunnel_idle = r.timeouts.tunnel_idle.map(|d| d.0);
    if tunnel_idle.is_some_and(|d| d.is_zero()) {
        errs.push(
            format!("{p}.timeouts.tunnel_idle"),
            "must be more than zero",
        );
    }
    let request_headers = header_rules(&r.request_headers, &format!("{p}.request_headers"), errs);
    let response_headers =
        header_rules(&r.response_headers, &format!("{p}.response_headers"), errs);
    let retry = r
        .retry
        .as_ref()
        .and_then(|rs| retry_policy(&r.name, rs, &format!("{p}.retry"), errs));
    let mirror = r.mirror.as_ref().and_then(|m| {
        let field = format!("{p}.mirror");
        if r.upstream.is_none() && r.split.is_none() {
            errs.push(
                &field,
                "only a route that forwards (upstream or split) can mirror",
            );
        }
        let upstream = lookup(&m.upstream, format!("{field}.upstream"), errs);
        mirror(&r.name, m, timeout, upstream?, &field, errs)
    });
    let compression = r.compression.as_ref().and_then(|c| {
        let field = format!("{p}.compression");
        if r.upstream.is_none() && r.split.is_none() {
            errs.push(
                &field,
                "only a route that forwards (upstream or split) compresses",
            );
        }
        compression(&r.name, c, &field, errs)
    });
    let action = action?;
    (errs.0.len() == before).then(|| Route {
        metrics: RouteMetrics::new(&r.name),
        name: r.name.clone(),
        definition: crate::config::Definition::of(r),
        action,
        rewrite,
        host_rewrite,
        timeout,
        tunnel_idle,
        request_headers,
        response_headers,
        auth: None,
        limits: None,
        cache: None,
        ip: None,
        cors: None,
        retry,
        mirror,
        compression,
    })
}

/// `routes[i].compression`.
fn compression(
    route: &str,
    c: &CompressionSpec,
    p: &str,
    errs: &mut Errors,
) -> Option<Compression> {
    let before = errs.0.len();
    if c.algorithms.is_empty() {
        errs.push(
            format!("{p}.algorithms"),
            "list at least one of zstd, br, gzip",
        );
    }
    let mut algorithms = Vec::new();
    for (i, a) in c.algorithms.iter().enumerate() {
        let a = match a {
            AlgorithmSpec::Zstd => Algorithm::Zstd,
            AlgorithmSpec::Br => Algorithm::Br,
            AlgorithmSpec::Gzip => Algorithm::Gzip,
        };
        if algorithms.contains(&a) {
            errs.push(
                format!("{p}.algorithms[{i}]"),
                format!("{} is listed twice", a.token()),
            );
        }
        algorithms.push(a);
    }
    let types: Vec<TypePattern> = match &c.content_types {
        None => DEFAULT_TYPES
            .iter()
            .filter_map(|t| TypePattern::parse(t).ok())
            .collect(),
        Some(list) => {
            if list.is_empty() {
                errs.push(format!("{p}.content_types"), "list at least one media type");
            }
            list.iter()
                .enumerate()
                .filter_map(|(i, t)| {
                    TypePattern::parse(t)
                        .map_err(|e| errs.push(format!("{p}.content_types[{i}]"), e))
                        .ok()
                })
                .collect()
        }
    };
    if c.level.is_some_and(|l| l > 19) {
        errs.push(
            format!("{p}.level"),
            "at most 19 (gzip uses up to 9, br up to 11, zstd up to 19)",
        );
    }
    if c.max_concurrent == 0 {
        errs.push(format!("{p}.max_concurrent"), "must be at least 1");
    }
    (errs.0.len() == before).then(|| {
        Compression::new(
            route,
            CompressionSettings {
                algorithms,
                min_size: c.min_size.0,
                types,
                level: c.level.map(|l| l as i32),
                max_concurrent: c.max_concurrent as usize,
            },
        )
    })
}

/// `routes[i].mirror`, its upstream found.
fn mirror(
    route: &str,
    m: &MirrorSpec,
    route_timeout: Duration,
    upstream: Arc<Upstream>,
    p: &str,
    errs: &mut Errors,
) -> Option<Arc<Mirror>> {
    let before = errs.0.len();
    if !m.percent.is_finite() || !(0.0..=100.0).contains(&m.percent) {
        errs.push(format!("{p}.percent"), "must be from 0 to 100");
    }
    // Copies wait in memory for their body: at most max_concurrent of
    // them, each of at most max_body.
    if m.max_body.0 > 16 << 20 {
        errs.push(format!("{p}.max_body"), "at most 16MiB");
    }
    if m.max_concurrent == 0 || m.max_concurrent > 10_000 {
        errs.push(format!("{p}.max_concurrent"), "must be from 1 to 10000");
    }
    let timeout = m.timeout.map_or(route_timeout, |t| t.0);
    if timeout.is_zero() {
        errs.push(format!("{p}.timeout"), "must be more than zero");
    }
    (errs.0.len() == before).then(|| {
        Arc::new(Mirror::new(
            route,
            upstream,
            MirrorSettings {
                percent: m.percent,
                max_body: m.max_body.0,
                max_concurrent: m.max_concurrent as usize,
                timeout,
            },
        ))
    })
}

fn retry_policy(route: &str, r: &RetrySpec, p: &str, errs: &mut Errors) -> Option<RetryPolicy> {
    let before = errs.0.len();
    if r.attempts > 10 {
        errs.push(format!("{p}.attempts"), "at most 10 retries");
    }
    let mut s = RetrySettings {
        attempts: r.attempts,
        on_connect_error: false,
        on_reset: false,
        on_timeout: false,
        statuses: Vec::new(),
        per_try_timeout: r.per_try_timeout.map(|d| d.0),
        backoff: (r.backoff.base.0, r.backoff.max.0),
        budget: 0.0,
        min_concurrency: r.min_concurrency as usize,
        non_idempotent: r.non_idempotent,
    };
    for (i, on) in r.on.iter().enumerate() {
        match on.0.as_str() {
            "connect_error" => s.on_connect_error = true,
            "reset" => s.on_reset = true,
            "timeout" => s.on_timeout = true,
            "5xx" => s.statuses.push((500, 599)),
            code => match code.parse::<u16>() {
                Ok(c) if (500..=599).contains(&c) => s.statuses.push((c, c)),
                _ => errs.push(
                    format!("{p}.on[{i}]"),
                    format!("`{code}`: use connect_error, reset, timeout, 5xx or a 5xx status"),
                ),
            },
        }
    }
    if r.on.is_empty() {
        errs.push(format!("{p}.on"), "list at least one outcome");
    }
    if s.per_try_timeout.is_some_and(|d| d.is_zero()) {
        errs.push(format!("{p}.per_try_timeout"), "must be more than zero");
    }
    if r.backoff.max.0 < r.backoff.base.0 {
        errs.push(format!("{p}.backoff.max"), "must be at least base");
    }
    let budget = r.budget.as_str().trim();
    match budget
        .strip_suffix('%')
        .unwrap_or(budget)
        .trim()
        .parse::<f64>()
    {
        Ok(v) if (0.0..=100.0).contains(&v) => s.budget = v / 100.0,
        _ => errs.push(
            format!("{p}.budget"),
            format!("`{budget}` is not a percentage from 0% to 100%"),
        ),
    }
    (errs.0.len() == before).then(|| RetryPolicy::new(route, s))
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
