//! `server.tls_listen` and `server.tls`: certificate files read (relative
//! to the config file) and checked, the SNI resolver and rustls config
//! built. The files' bytes are part of the config version, so replacing a
//! certificate is a change even when the YAML is not.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;

use super::Errors;
use crate::config::Definition;
use crate::config::spec::Spec;
use crate::tls::{self, SniResolver};

pub(super) fn tls(
    spec: &Spec,
    base: &Path,
    errs: &mut Errors,
    files_hash: &mut u64,
    certificates: &mut BTreeMap<String, Definition>,
) -> Option<Arc<ServerConfig>> {
    let s = &spec.server;
    for (i, a) in s.tls_listen.iter().enumerate() {
        if a.as_str().parse::<SocketAddr>().is_err() {
            errs.push(
                format!("server.tls_listen[{i}]"),
                format!("`{a}` is not an address such as 0.0.0.0:8443"),
            );
        }
    }
    let Some(t) = &s.tls else {
        if !s.tls_listen.is_empty() {
            errs.push(
                "server.tls",
                "tls_listen needs server.tls with certificates",
            );
        }
        return None;
    };
    if s.tls_listen.is_empty() {
        errs.push(
            "server.tls_listen",
            "server.tls is set but no tls_listen address uses it",
        );
    }
    if s.limits.tls_handshake_timeout.0.is_zero() {
        errs.push(
            "server.limits.tls_handshake_timeout",
            "must be more than zero",
        );
    }
    let before = errs.0.len();
    let min13 = match t.min_version.as_str() {
        "1.2" => false,
        "1.3" => true,
        v => {
            errs.push(
                "server.tls.min_version",
                format!("`{v}`: use \"1.2\" or \"1.3\""),
            );
            false
        }
    };
    for (i, p) in t.alpn.iter().enumerate() {
        if !matches!(p.as_str(), "h2" | "http/1.1") {
            errs.push(
                format!("server.tls.alpn[{i}]"),
                format!("`{p}`: use h2 or http/1.1"),
            );
        }
    }
    if t.certificates.is_empty() {
        errs.push("server.tls.certificates", "give at least one certificate");
    }
    let mut loaded = Vec::new();
    for (i, c) in t.certificates.iter().enumerate() {
        let p = format!("server.tls.certificates[{i}]");
        let read = |file: &str, field: &str, errs: &mut Errors| match std::fs::read(base.join(file))
        {
            Ok(b) => Some(b),
            Err(e) => {
                errs.push(
                    format!("{p}.{field}"),
                    format!("cannot read {}: {e}", base.join(file).display()),
                );
                None
            }
        };
        let (Some(cert), Some(key)) = (
            read(c.cert.as_str(), "cert", errs),
            read(c.key.as_str(), "key", errs),
        ) else {
            continue;
        };
        *files_hash ^=
            crate::hash::hash64(&cert).rotate_left(11) ^ crate::hash::hash64(&key).rotate_left(23);
        // A certificate is changed when its files' bytes or its hosts are.
        certificates.insert(
            c.cert.as_str().to_owned(),
            Definition::of(&(
                crate::hash::hash64(&cert),
                crate::hash::hash64(&key),
                &c.hosts,
            )),
        );
        let hosts: Vec<String> = c.hosts.iter().map(|h| h.as_str().to_owned()).collect();
        match tls::load(c.cert.as_str(), &cert, &key, &hosts) {
            Ok(l) if l.hosts.is_empty() => errs.push(
                &p,
                format!("{}: no DNS names in the certificate; list hosts:", c.cert),
            ),
            Ok(l) => loaded.push(l),
            Err(m) => errs.push(&p, format!("{}: {m}", c.cert)),
        }
    }
    let default = match &t.default_certificate {
        None => None,
        Some(name) => match loaded.iter().find(|l| l.name == name.as_str()) {
            Some(l) => Some(Arc::clone(&l.key)),
            None => {
                errs.push(
                    "server.tls.default_certificate",
                    format!("`{name}` is not the cert of a listed certificate"),
                );
                None
            }
        },
    };
    let client = match &t.client_auth {
        None => None,
        Some(ca) => match std::fs::read(base.join(ca.ca.as_str())) {
            Ok(pem) => {
                *files_hash ^= crate::hash::hash64(&pem).rotate_left(31);
                match tls::client_verifier(&pem, ca.required) {
                    Ok(v) => Some(v),
                    Err(m) => {
                        errs.push("server.tls.client_auth.ca", format!("{}: {m}", ca.ca));
                        None
                    }
                }
            }
            Err(e) => {
                errs.push(
                    "server.tls.client_auth.ca",
                    format!("cannot read {}: {e}", base.join(ca.ca.as_str()).display()),
                );
                None
            }
        },
    };
    if errs.0.len() > before {
        return None;
    }
    Some(tls::server_config(
        SniResolver::new(&loaded, default),
        min13,
        &t.alpn,
        client,
        t.session_resumption,
    ))
}

/// Whether plaintext requests are redirected, and the HSTS header value,
/// from `server.tls`.
pub(super) fn https_policy(spec: &Spec, errs: &mut Errors) -> (bool, Option<http::HeaderValue>) {
    let Some(t) = &spec.server.tls else {
        return (false, None);
    };
    let port = t.redirect_http;
    let hsts = t.hsts.as_ref().and_then(|h| {
        if h.max_age.0.is_zero() {
            errs.push("server.tls.hsts.max_age", "must be more than zero");
            return None;
        }
        let mut v = format!("max-age={}", h.max_age.0.as_secs());
        if h.include_subdomains {
            v.push_str("; includeSubDomains");
        }
        http::HeaderValue::try_from(v).ok()
    });
    (port, hsts)
}
