//! Upstreams: endpoints, balancer, hash key, pool settings; an upstream
//! whose definition did not change is carried over with its pools.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::HeaderName;

use super::{Errors, MAX_UPSTREAM_RESPONSE_HEADER_BYTES};
use crate::config::Definition;
use crate::config::spec::{
    BalancerSpec, BreakerSpec, FailureKindSpec, HealthCheckSpec, ProtocolSpec, Spec, UpstreamSpec,
};
use crate::snapshot::Snapshot;
use crate::upstream::{
    BalancerKind, ConnectTarget, Counter, Endpoint, EndpointParams, HashOn, Protocol, Upstream,
    UpstreamParams,
};
use crate::upstream::{breaker, health};

pub(super) fn upstreams(
    spec: &Spec,
    previous: Option<&Snapshot>,
    base: &std::path::Path,
    errs: &mut Errors,
) -> BTreeMap<String, Arc<Upstream>> {
    let mut out = BTreeMap::new();
    for (name, u) in &spec.upstreams {
        let p = format!("upstreams.{name}");
        let tls = u
            .tls
            .as_ref()
            .and_then(|t| tls_files(t, base, &format!("{p}.tls"), errs));
        let tls_hash = tls.as_ref().map_or(0, |f| f.hash);
        if let Some(prev) = previous.and_then(|s| s.upstreams.get(name))
            && prev.definition == Definition::of(u)
            && prev.tls_hash == tls_hash
        {
            out.insert(name.clone(), Arc::clone(prev));
            continue;
        }
        if let Some(mut up) = upstream(name, u, &p, tls.as_ref(), errs) {
            up.tls_hash = tls_hash;
            out.insert(name.clone(), Arc::new(up));
        }
    }
    out
}

/// The files of `upstreams.NAME.tls`, read.
struct TlsFiles {
    ca: Option<Vec<u8>>,
    client: Option<(Vec<u8>, Vec<u8>)>,
    hash: u64,
}

fn tls_files(
    t: &crate::config::spec::UpstreamTlsSpec,
    base: &std::path::Path,
    p: &str,
    errs: &mut Errors,
) -> Option<TlsFiles> {
    let mut hash = 1u64;
    let mut read = |file: &str, field: &str, errs: &mut Errors| match std::fs::read(base.join(file))
    {
        Ok(b) => {
            hash ^= crate::hash::hash64(&b).rotate_left(hash.count_ones());
            Some(b)
        }
        Err(e) => {
            errs.push(
                format!("{p}.{field}"),
                format!("cannot read {}: {e}", base.join(file).display()),
            );
            None
        }
    };
    let ca = match &t.ca_file {
        Some(f) => Some(read(f.as_str(), "ca_file", errs)?),
        None => None,
    };
    let client = match &t.client_cert {
        Some(c) => Some((
            read(c.cert.as_str(), "client_cert.cert", errs)?,
            read(c.key.as_str(), "client_cert.key", errs)?,
        )),
        None => None,
    };
    Some(TlsFiles { ca, client, hash })
}

fn upstream(
    name: &str,
    u: &UpstreamSpec,
    p: &str,
    tls_files: Option<&TlsFiles>,
    errs: &mut Errors,
) -> Option<Upstream> {
    let before = errs.0.len();
    let https: Vec<bool> = u
        .endpoints
        .iter()
        .map(|e| e.url.as_str().starts_with("https://"))
        .collect();
    let tls_on = https.first().copied().unwrap_or(false);
    if https.iter().any(|h| *h != tls_on) {
        errs.push(
            format!("{p}.endpoints"),
            "mix of http:// and https:// endpoints; use one scheme per upstream",
        );
    }
    let h2 = matches!(
        u.protocol,
        crate::config::spec::ProtocolSpec::H2c | crate::config::spec::ProtocolSpec::H2
    );
    match u.protocol {
        crate::config::spec::ProtocolSpec::H2 if !tls_on => errs.push(
            format!("{p}.protocol"),
            "h2 is HTTP/2 over TLS: use https:// endpoints (or h2c for cleartext)",
        ),
        crate::config::spec::ProtocolSpec::H2c if tls_on => errs.push(
            format!("{p}.protocol"),
            "h2c is cleartext: use http:// endpoints (or h2 over TLS)",
        ),
        _ => {}
    }
    if u.tls.is_some() && !tls_on {
        errs.push(format!("{p}.tls"), "tls settings need https:// endpoints");
    }
    let tls_config = if tls_on {
        let spec = u
            .tls
            .clone()
            .unwrap_or(crate::config::spec::UpstreamTlsSpec {
                ca_file: None,
                server_name: None,
                client_cert: None,
                insecure_skip_verify: false,
            });
        let empty = TlsFiles {
            ca: None,
            client: None,
            hash: 0,
        };
        let files = tls_files.unwrap_or(&empty);
        if spec.insecure_skip_verify {
            tracing::warn!(
                upstream = name,
                "tls.insecure_skip_verify is on: the upstream's certificate is NOT verified"
            );
        }
        let files = crate::tls::UpstreamFiles {
            ca: files.ca.as_deref(),
            client: files
                .client
                .as_ref()
                .map(|(c, k)| (c.as_slice(), k.as_slice())),
        };
        match crate::tls::client_config(files, spec.insecure_skip_verify, h2) {
            Ok(c) => Some(c),
            Err(e) => {
                let at = match e.field {
                    "" => format!("{p}.tls"),
                    field => format!("{p}.tls.{field}"),
                };
                errs.push(at, e.message);
                None
            }
        }
    } else {
        None
    };
    let server_name = u
        .tls
        .as_ref()
        .and_then(|t| t.server_name.as_ref())
        .map(|n| n.as_str().to_owned());
    if !super::is_name(name) {
        errs.push(p, "upstream names use letters, digits, `-`, `_` and `.`");
    }
    if u.endpoints.is_empty() {
        errs.push(format!("{p}.endpoints"), "give at least one endpoint");
    }
    let breaker = u
        .circuit_breaker
        .as_ref()
        .and_then(|b| breaker(b, &format!("{p}.circuit_breaker"), errs));
    for (field, v) in [
        ("max_connections", u.limits.max_connections),
        ("max_inflight", u.limits.max_inflight),
    ] {
        if !(1..=10_000_000).contains(&v) {
            errs.push(
                format!("{p}.limits.{field}"),
                format!("must be from 1 to 10000000, got {v}"),
            );
        }
    }
    let connections = Counter::new(u.limits.max_connections);
    let mut endpoints = Vec::new();
    for (i, e) in u.endpoints.iter().enumerate() {
        let ep = format!("{p}.endpoints[{i}]");
        if !(1..=1000).contains(&e.weight) {
            errs.push(
                format!("{ep}.weight"),
                format!("must be from 1 to 1000, got {}", e.weight),
            );
        }
        match parse_endpoint(e.url.as_str()) {
            Ok((host, port)) => {
                let target_host = host.clone();
                let target = ConnectTarget {
                    host,
                    port,
                    connect_timeout: u.connect_timeout.0,
                    max_idle: u.pool.max_idle_per_endpoint,
                    idle_timeout: u.pool.idle_timeout.0,
                    max_response_header_bytes: MAX_UPSTREAM_RESPONSE_HEADER_BYTES,
                    connections: connections.clone(),
                    tls: match (
                        &tls_config,
                        rustls_pki_types::ServerName::try_from(
                            server_name.clone().unwrap_or_else(|| target_host.clone()),
                        ),
                    ) {
                        (Some(cfg), Ok(n)) => Some((Arc::clone(cfg), n.to_owned())),
                        (Some(_), Err(_)) => {
                            errs.push(format!("{ep}.url"), "not a valid TLS server name");
                            None
                        }
                        (None, _) => None,
                    },
                };
                let params = EndpointParams {
                    upstream: name,
                    target,
                    weight: e.weight.max(1),
                    h2,
                    breaker: breaker.clone(),
                    health_checked: u.health_check.is_some(),
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
    let health = u
        .health_check
        .as_ref()
        .and_then(|h| health_check(h, &format!("{p}.health_check"), errs));
    let counters = (Counter::new(u.limits.max_inflight), connections);
    let params = UpstreamParams {
        definition: Definition::of(u),
        balancer: match u.balancer {
            BalancerSpec::RoundRobin => BalancerKind::RoundRobin,
            BalancerSpec::LeastRequest => BalancerKind::LeastRequest,
            BalancerSpec::Random => BalancerKind::Random,
            BalancerSpec::ConsistentHash => BalancerKind::ConsistentHash,
        },
        protocol: match u.protocol {
            ProtocolSpec::Http1 => Protocol::Http1,
            ProtocolSpec::H2c => Protocol::H2c,
            ProtocolSpec::H2 => Protocol::H2,
        },
        hash_on,
        health,
        counters,
    };
    (errs.0.len() == before).then(|| Upstream::new(name, endpoints, params))
}

fn breaker(b: &BreakerSpec, p: &str, errs: &mut Errors) -> Option<breaker::BreakerSettings> {
    let before = errs.0.len();
    let failure_rate = match &b.failure_rate {
        None => None,
        Some(r) => match parse_percent(r.as_str()) {
            Ok(v) if v > 0.0 => Some(v),
            Ok(_) => {
                errs.push(format!("{p}.failure_rate"), "must be more than 0%");
                None
            }
            Err(m) => {
                errs.push(format!("{p}.failure_rate"), m);
                None
            }
        },
    };
    if b.consecutive_failures == 0 && failure_rate.is_none() {
        errs.push(
            p,
            "give consecutive_failures (more than 0) or failure_rate: a breaker that can never open does nothing",
        );
    }
    if b.half_open_requests == 0 {
        errs.push(format!("{p}.half_open_requests"), "must be at least 1");
    }
    for (field, d) in [
        ("window", b.window.0),
        ("open_for", b.open_for.0),
        ("max_open_for", b.max_open_for.0),
    ] {
        if d.is_zero() {
            errs.push(format!("{p}.{field}"), "must be more than zero");
        }
    }
    if b.max_open_for.0 < b.open_for.0 {
        errs.push(format!("{p}.max_open_for"), "must be at least open_for");
    }
    if b.failure_on.is_empty() {
        errs.push(format!("{p}.failure_on"), "list at least one outcome");
    }
    let kinds: Vec<breaker::FailureKind> = b
        .failure_on
        .iter()
        .map(|k| match k {
            FailureKindSpec::ConnectError => breaker::FailureKind::ConnectError,
            FailureKindSpec::Timeout => breaker::FailureKind::Timeout,
            FailureKindSpec::Reset => breaker::FailureKind::Reset,
            FailureKindSpec::Status5xx => breaker::FailureKind::Status5xx,
        })
        .collect();
    (errs.0.len() == before).then(|| breaker::BreakerSettings {
        consecutive_failures: b.consecutive_failures,
        failure_rate,
        min_requests: b.min_requests.max(1),
        window: b.window.0,
        open_for: b.open_for.0,
        max_open_for: b.max_open_for.0,
        half_open_requests: b.half_open_requests,
        failure_on: breaker::BreakerSettings::kinds(&kinds),
    })
}

fn health_check(h: &HealthCheckSpec, p: &str, errs: &mut Errors) -> Option<health::HealthCheck> {
    let before = errs.0.len();
    let path = h.path.as_str();
    if !path.starts_with('/') || path.parse::<http::uri::PathAndQuery>().is_err() {
        errs.push(
            format!("{p}.path"),
            format!("`{path}` is not a path such as /health"),
        );
    }
    if h.interval.0 < std::time::Duration::from_millis(10) {
        errs.push(format!("{p}.interval"), "must be at least 10ms");
    }
    if h.timeout.0.is_zero() {
        errs.push(format!("{p}.timeout"), "must be more than zero");
    }
    if h.healthy_threshold == 0 || h.unhealthy_threshold == 0 {
        errs.push(
            p,
            "healthy_threshold and unhealthy_threshold must be at least 1",
        );
    }
    let expected = match health::parse_expected(h.expected_status.as_str()) {
        Ok(e) => e,
        Err(m) => {
            errs.push(format!("{p}.expected_status"), m);
            Vec::new()
        }
    };
    (errs.0.len() == before).then(|| health::HealthCheck {
        path: path.to_owned(),
        interval: h.interval.0,
        timeout: h.timeout.0,
        healthy_threshold: h.healthy_threshold,
        unhealthy_threshold: h.unhealthy_threshold,
        expected,
    })
}

/// `50%` (or `50`) → 0.5.
fn parse_percent(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let num = t.strip_suffix('%').unwrap_or(t).trim();
    match num.parse::<f64>() {
        Ok(v) if (0.0..=100.0).contains(&v) => Ok(v / 100.0),
        _ => Err(format!("`{text}` is not a percentage from 0% to 100%")),
    }
}

/// `http://host[:port][/]` → (host, port).
pub fn parse_endpoint_url(url: &str) -> Result<(String, u16), String> {
    if url.starts_with("https://") {
        return Err(format!("`{url}` is https; see parse_endpoint"));
    }
    parse_endpoint(url)
}

/// `http://host[:port][/]` or `https://host[:port][/]` → (host, port).
fn parse_endpoint(url: &str) -> Result<(String, u16), String> {
    let (rest, default_port) = match url.strip_prefix("https://") {
        Some(r) => (r, 443),
        None => (
            url.strip_prefix("http://")
                .ok_or_else(|| format!("`{url}` must start with http:// or https://"))?,
            80,
        ),
    };
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
    // `port_u16` (and `port`) say `None` both without a port and for one
    // they cannot read (`:99999`): the text after the host decides, and
    // only a missing port falls back to the scheme's.
    let after_host = match authority.rfind(']') {
        Some(i) => &authority[i + 1..],
        None => authority.rfind(':').map_or("", |i| &authority[i..]),
    };
    let port = match after_host.strip_prefix(':') {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err(format!("`{url}`: port `{p}` is not in 1-65535")),
        },
    };
    Ok((host, port))
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

#[cfg(test)]
mod endpoint_tests {
    use super::parse_endpoint;

    #[test]
    fn ports_outside_1_to_65535_are_errors_not_a_fallback() {
        assert_eq!(parse_endpoint("http://a"), Ok(("a".into(), 80)));
        assert_eq!(parse_endpoint("https://a/"), Ok(("a".into(), 443)));
        assert_eq!(
            parse_endpoint("http://[::1]:65535"),
            Ok(("::1".into(), 65535))
        );
        for bad in [
            "http://a:99999",
            "http://a:0",
            "http://a:65536",
            "https://a:123456",
        ] {
            let e = parse_endpoint(bad).unwrap_err();
            assert!(e.contains("is not in 1-65535"), "{bad}: {e}");
        }
    }
}
