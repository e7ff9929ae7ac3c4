//! `server.ip` and `routes[i].ip`: the lists compiled into address sets.
//! List files are read relative to the config, and their bytes are part
//! of the config version, so an edited list is a change on reload.

use std::path::Path;

use super::Errors;
use crate::access::ip::{IpRules, IpSet, parse_list, parse_net};
use crate::config::spec::IpRulesSpec;
use crate::config::units::Str;

/// The rules of `spec` at field path `p`.
pub(super) fn ip_rules(
    spec: &IpRulesSpec,
    p: &str,
    base: &Path,
    errs: &mut Errors,
    files_hash: &mut u64,
) -> IpRules {
    let mut list = |entries: &[Str], file: &Option<Str>, field: &str| {
        let mut nets = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            match parse_net(e.as_str()) {
                Some(n) => nets.push(n),
                None => errs.push(
                    format!("{p}.{field}[{i}]"),
                    format!("`{e}` is not a CIDR or address"),
                ),
            }
        }
        let from_file = file.is_some();
        if let Some(f) = file {
            let path = format!("{p}.{field}_file");
            if let Some(bytes) = super::auth::read(base, f.as_str(), &path, errs, files_hash) {
                match parse_list(&String::from_utf8_lossy(&bytes)) {
                    Ok(more) => nets.extend(more),
                    Err(m) => errs.push(path, format!("{f}: {m}")),
                }
            }
        }
        (nets, from_file)
    };
    let (allow, allow_file) = list(&spec.allow, &spec.allow_file, "allow");
    let (deny, _) = list(&spec.deny, &spec.deny_file, "deny");
    IpRules {
        // An allow file that lists nothing still means "only these".
        allow: (!allow.is_empty() || allow_file).then(|| IpSet::new(allow)),
        deny: IpSet::new(deny),
    }
}

/// A route's `cors`, at field path `p`; `methods` are the route's
/// `match.methods`.
pub(super) fn cors(
    route: &str,
    spec: &crate::config::spec::CorsSpec,
    methods: &[String],
    p: &str,
    errs: &mut Errors,
) -> Option<crate::access::cors::Cors> {
    use crate::access::cors::{Cors, OriginRule};
    use crate::config::spec::OriginSpec;
    use http::{HeaderName, HeaderValue, Method};
    let before = errs.0.len();
    if spec.allow_origins.is_empty() {
        errs.push(format!("{p}.allow_origins"), "list at least one origin");
    }
    let mut origins = Vec::new();
    for (i, o) in spec.allow_origins.iter().enumerate() {
        let field = format!("{p}.allow_origins[{i}]");
        match o {
            OriginSpec::Text(t) => match OriginRule::parse(t.as_str()) {
                Ok(OriginRule::Any) if spec.allow_credentials => errs.push(
                    field,
                    "`*` together with allow_credentials: browsers refuse it; list the origins",
                ),
                Ok(r) => origins.push(r),
                Err(m) => errs.push(field, m),
            },
            OriginSpec::Regex(r) => match regex::Regex::new(&format!("^(?:{})$", r.regex.as_str()))
            {
                Ok(re) => origins.push(OriginRule::Regex(re)),
                Err(e) => errs.push(format!("{field}.regex"), e.to_string()),
            },
        }
    }
    let defaults = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];
    let names: Vec<&str> = if !spec.allow_methods.is_empty() {
        spec.allow_methods.iter().map(String::as_str).collect()
    } else if !methods.is_empty() {
        methods.iter().map(String::as_str).collect()
    } else {
        defaults.to_vec()
    };
    let mut allowed = Vec::new();
    for (i, m) in names.iter().enumerate() {
        match Method::from_bytes(m.as_bytes()) {
            Ok(method) if m.chars().all(|c| c.is_ascii_uppercase()) => allowed.push(method),
            _ => errs.push(
                format!("{p}.allow_methods[{i}]"),
                format!("`{m}` is not an upper-case method name"),
            ),
        }
    }
    let any_header = spec.allow_headers.iter().any(|h| h == "*");
    let mut headers = Vec::new();
    for (i, h) in spec
        .allow_headers
        .iter()
        .enumerate()
        .filter(|(_, h)| *h != "*")
    {
        match HeaderName::try_from(h.as_str()) {
            Ok(n) => headers.push(n),
            Err(_) => errs.push(
                format!("{p}.allow_headers[{i}]"),
                format!("`{h}` is not a header name"),
            ),
        }
    }
    for (i, h) in spec.expose_headers.iter().enumerate() {
        if HeaderName::try_from(h.as_str()).is_err() {
            errs.push(
                format!("{p}.expose_headers[{i}]"),
                format!("`{h}` is not a header name"),
            );
        }
    }
    if errs.0.len() > before {
        return None;
    }
    let join = |v: Vec<&str>| HeaderValue::try_from(v.join(", ")).ok();
    let family = &crate::observability::metrics::metrics().cors_requests;
    Some(Cors {
        origins,
        methods_value: join(allowed.iter().map(Method::as_str).collect())?,
        methods: allowed,
        headers,
        any_header,
        expose: (!spec.expose_headers.is_empty())
            .then(|| join(spec.expose_headers.iter().map(String::as_str).collect()))
            .flatten(),
        credentials: spec.allow_credentials,
        max_age: spec.max_age.map(|d| HeaderValue::from(d.0.as_secs())),
        counters: [
            ("preflight", "allowed"),
            ("preflight", "refused"),
            ("actual", "allowed"),
            ("actual", "refused"),
        ]
        .map(|(kind, result)| family.with_label_values(&[route, kind, result])),
    })
}
