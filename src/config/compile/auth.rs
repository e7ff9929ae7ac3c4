//! `auth.providers` and each route's `auth`: key sources read and checked
//! against the algorithms, token sources parsed, rules built. A remote key
//! store whose source did not change is carried over with its keys.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use http::HeaderName;
use jsonwebtoken::Algorithm;

use super::Errors;
use crate::auth::apikey::{self, ApiKeyOptions, ApiKeys};
use crate::auth::jwks::{self, KeyStore, Remote, RemoteSettings};
use crate::auth::keys::{self, KeySet};
use crate::auth::token::Source;
use crate::auth::{AnyProvider, Provider, ProviderOptions, RouteAuth, Rules};
use crate::config::spec::{ProviderKind, ProviderSpec, RouteAuthSpec, Spec, default_token_from};
use crate::snapshot::Snapshot;

/// Compiled providers, plus a hash of every key file read (mixed into the
/// config version, so that a changed key file is a change).
pub(super) fn providers(
    spec: &Spec,
    previous: Option<&Snapshot>,
    base: &Path,
    errs: &mut Errors,
) -> (BTreeMap<String, AnyProvider>, u64) {
    let mut out = BTreeMap::new();
    let mut files_hash = 0u64;
    for (name, p) in &spec.auth.providers {
        let path = format!("auth.providers.{name}");
        let prev = previous.and_then(|s| s.auth.get(name));
        let compiled = match p.kind {
            ProviderKind::Jwt => {
                let prev = prev.and_then(AnyProvider::jwt);
                provider(name, p, &path, prev, base, errs, &mut files_hash).map(AnyProvider::Jwt)
            }
            ProviderKind::ApiKey => {
                api_key_provider(name, p, &path, prev, base, errs, &mut files_hash)
                    .map(AnyProvider::ApiKey)
            }
        };
        if let Some(c) = compiled {
            out.insert(name.clone(), c);
        }
    }
    (out, files_hash)
}

/// Fields of the other kind of provider, named in an error when given.
fn foreign_fields(p: &ProviderSpec) -> Vec<&'static str> {
    let jwt_only = [
        ("algorithms", !p.algorithms.is_empty()),
        ("issuer", p.issuer.is_some()),
        ("audiences", !p.audiences.is_empty()),
        ("jwks_uri", p.jwks_uri.is_some()),
        ("discovery", p.discovery),
        ("jwks_file", p.jwks_file.is_some()),
        ("secret", p.secret.is_some()),
        ("public_key_file", p.public_key_file.is_some()),
        ("ca_file", p.ca_file.is_some()),
        ("tenant_claim", p.tenant_claim.is_some()),
        ("token_from", p.token_from != default_token_from()),
    ];
    let key_only = [
        ("from", p.from.is_some()),
        ("keys_file", p.keys_file.is_some()),
        ("forward_key", p.forward_key),
    ];
    let foreign: &[(&'static str, bool)] = match p.kind {
        ProviderKind::Jwt => &key_only,
        ProviderKind::ApiKey => &jwt_only,
    };
    foreign
        .iter()
        .filter(|(_, on)| *on)
        .map(|(k, _)| *k)
        .collect()
}

/// The provider's name, and no field of the other kind of provider.
fn check_name_and_kind(name: &str, p: &ProviderSpec, path: &str, errs: &mut Errors) {
    if !super::is_name(name) {
        errs.push(path, "provider names use letters, digits, `-`, `_` and `.`");
    }
    let foreign = foreign_fields(p);
    if !foreign.is_empty() {
        let (this, other) = match p.kind {
            ProviderKind::Jwt => ("a JWT provider", "api_key"),
            ProviderKind::ApiKey => ("an api_key provider", "jwt"),
        };
        errs.push(
            path,
            format!(
                "{this} has no {} (those are for type: {other})",
                foreign.join(", ")
            ),
        );
    }
}

/// A claim path (`org.id`), `None` when a part is empty.
fn dotted(s: &str) -> Option<Vec<String>> {
    let parts: Vec<String> = s.split('.').map(str::to_owned).collect();
    parts.iter().all(|p| !p.is_empty()).then_some(parts)
}

fn forward_claims(
    p: &ProviderSpec,
    path: &str,
    errs: &mut Errors,
) -> Vec<(Vec<String>, HeaderName)> {
    let mut out = Vec::new();
    for (claim, header) in &p.forward_claims {
        let field = format!("{path}.forward_claims.{claim}");
        match (dotted(claim), HeaderName::try_from(header.as_str())) {
            (Some(c), Ok(h)) => out.push((c, h)),
            (None, _) => errs.push(field, format!("`{claim}` is not a claim path")),
            (_, Err(_)) => errs.push(field, format!("`{header}` is not a header name")),
        }
    }
    out
}

/// A `type: api_key` provider: its keys file read and checked.
fn api_key_provider(
    name: &str,
    p: &ProviderSpec,
    path: &str,
    previous: Option<&AnyProvider>,
    base: &Path,
    errs: &mut Errors,
    files_hash: &mut u64,
) -> Option<Arc<ApiKeys>> {
    let before = errs.0.len();
    let files_before = *files_hash;
    check_name_and_kind(name, p, path, errs);
    let from = p
        .from
        .clone()
        .unwrap_or_else(|| vec!["header:x-api-key".to_owned()]);
    if from.is_empty() {
        errs.push(format!("{path}.from"), "give at least one source");
    }
    let mut sources = Vec::new();
    for (i, t) in from.iter().enumerate() {
        match Source::parse(t) {
            Ok(s) => sources.push(s),
            Err(e) => errs.push(format!("{path}.from[{i}]"), e),
        }
    }
    if p.max_token_bytes.0 < 16 || p.max_token_bytes.0 > 64 << 10 {
        errs.push(
            format!("{path}.max_token_bytes"),
            "must be from 16 bytes to 64KiB for API keys",
        );
    }
    let forward_claims = forward_claims(p, path, errs);
    let field = format!("{path}.keys_file");
    let keys = match &p.keys_file {
        None => {
            errs.push(&field, "an api_key provider needs its keys_file");
            None
        }
        Some(file) => read(base, file.as_str(), &field, errs, files_hash).and_then(|bytes| {
            match apikey::parse_keys(name, &bytes, &forward_claims) {
                Ok(k) => Some(k),
                Err(list) => {
                    for e in list {
                        errs.push(&field, format!("{}: {e}", file.as_str()));
                    }
                    None
                }
            }
        }),
    };
    if errs.0.len() > before {
        return None;
    }
    let keys = keys?;
    let definition = crate::config::Definition::of(&(p, *files_hash ^ files_before));
    if let Some(AnyProvider::ApiKey(prev)) = previous
        && prev.definition == definition
    {
        return Some(Arc::clone(prev));
    }
    Some(Arc::new(ApiKeys::new(
        name,
        keys,
        ApiKeyOptions {
            sources,
            forward_key: p.forward_key,
            max_key_bytes: p.max_token_bytes.0 as usize,
            forward_claims,
            definition,
        },
    )))
}

fn algorithm_list(p: &ProviderSpec, path: &str, errs: &mut Errors) -> Vec<Algorithm> {
    if p.algorithms.is_empty() {
        errs.push(
            format!("{path}.algorithms"),
            "list the accepted algorithms (e.g. [RS256])",
        );
    }
    let mut out = Vec::new();
    for (i, a) in p.algorithms.iter().enumerate() {
        match a.parse::<Algorithm>() {
            Ok(alg) => out.push(alg),
            Err(_) => errs.push(
                format!("{path}.algorithms[{i}]"),
                format!(
                    "`{a}` is not an algorithm (HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA)"
                ),
            ),
        }
    }
    out
}

pub(super) fn read(
    base: &Path,
    file: &str,
    field: &str,
    errs: &mut Errors,
    hash: &mut u64,
) -> Option<Vec<u8>> {
    let full = base.join(file);
    match std::fs::read(&full) {
        Ok(bytes) => {
            *hash ^= crate::hash::hash64(&bytes).rotate_left(7) ^ bytes.len() as u64;
            Some(bytes)
        }
        Err(e) => {
            errs.push(field, format!("cannot read {}: {e}", full.display()));
            None
        }
    }
}

fn is_hmac(a: Algorithm) -> bool {
    matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

fn provider(
    name: &str,
    p: &ProviderSpec,
    path: &str,
    previous: Option<&Arc<Provider>>,
    base: &Path,
    errs: &mut Errors,
    files_hash: &mut u64,
) -> Option<Arc<Provider>> {
    let before = errs.0.len();
    let files_before = *files_hash;
    check_name_and_kind(name, p, path, errs);
    let algorithms = algorithm_list(p, path, errs);
    let given: Vec<&str> = [
        ("jwks_uri", p.jwks_uri.is_some()),
        ("discovery", p.discovery),
        ("jwks_file", p.jwks_file.is_some()),
        ("secret", p.secret.is_some()),
        ("public_key_file", p.public_key_file.is_some()),
    ]
    .iter()
    .filter(|(_, on)| *on)
    .map(|(k, _)| *k)
    .collect();
    if given.len() != 1 {
        errs.push(
            path,
            format!(
                "give exactly one key source: jwks_uri, discovery, jwks_file, secret or public_key_file (got {})",
                if given.is_empty() { "none".to_owned() } else { given.join(", ") }
            ),
        );
    }
    let hmac = algorithms.iter().copied().filter(|a| is_hmac(*a)).count();
    let alg_field = format!("{path}.algorithms");
    if p.secret.is_some() {
        if hmac != algorithms.len() {
            errs.push(
                &alg_field,
                "a `secret` verifies HS256/HS384/HS512 only; an asymmetric algorithm cannot use it",
            );
        }
    } else if hmac > 0 {
        errs.push(
            &alg_field,
            "HS256/HS384/HS512 need a `secret`; they are never verified with public keys",
        );
    }
    let check = |d: std::time::Duration, field: &str, errs: &mut Errors| {
        if d.is_zero() {
            errs.push(format!("{path}.{field}"), "must be more than zero");
        }
    };
    check(p.jwks_refresh.0, "jwks_refresh", errs);
    check(
        p.jwks_min_refresh_interval.0,
        "jwks_min_refresh_interval",
        errs,
    );
    check(p.jwks_fetch_timeout.0, "jwks_fetch_timeout", errs);
    if p.max_token_bytes.0 < 64 || p.max_token_bytes.0 > 1 << 20 {
        errs.push(
            format!("{path}.max_token_bytes"),
            "must be from 64 bytes to 1MiB",
        );
    }
    if p.audiences.iter().any(|a| a.as_str().is_empty()) {
        errs.push(format!("{path}.audiences"), "an audience is empty");
    }
    let mut sources = Vec::new();
    if p.token_from.is_empty() {
        errs.push(format!("{path}.token_from"), "give at least one source");
    }
    for (i, t) in p.token_from.iter().enumerate() {
        match Source::parse(t) {
            Ok(s) => sources.push(s),
            Err(e) => errs.push(format!("{path}.token_from[{i}]"), e),
        }
    }
    let tenant_claim = match &p.tenant_claim {
        None => None,
        Some(t) => {
            let d = dotted(t);
            if d.is_none() {
                errs.push(
                    format!("{path}.tenant_claim"),
                    format!("`{t}` is not a claim path"),
                );
            }
            d
        }
    };
    let forward_claims = forward_claims(p, path, errs);
    let issuer = p.issuer.as_ref().map(|i| i.as_str().to_owned());
    if p.discovery && issuer.is_none() {
        errs.push(
            format!("{path}.issuer"),
            "discovery needs the issuer (its OpenID configuration is read from it)",
        );
    }

    // Keys.
    let remote = if let Some(uri) = &p.jwks_uri {
        match uri.as_str().parse::<http::Uri>() {
            Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {
                if u.scheme_str() == Some("http") {
                    tracing::warn!(
                        provider = name,
                        "jwks_uri is plain http: keys can be altered in transit"
                    );
                }
                Some(Remote::Jwks(u))
            }
            _ => {
                errs.push(
                    format!("{path}.jwks_uri"),
                    format!("`{uri}` is not an http(s) URL"),
                );
                None
            }
        }
    } else if p.discovery {
        issuer.clone().map(Remote::Discovery)
    } else {
        None
    };
    let keys = if let Some(remote) = remote {
        let ca = match &p.ca_file {
            Some(f) => read(
                base,
                f.as_str(),
                &format!("{path}.ca_file"),
                errs,
                files_hash,
            ),
            None => None,
        };
        match jwks::tls_config(ca.as_deref()) {
            Ok(tls) => {
                let settings = RemoteSettings {
                    remote,
                    tls,
                    ca_hash: ca.as_deref().map_or(0, crate::hash::hash64),
                    refresh: p.jwks_refresh.0,
                    min_refresh: p.jwks_min_refresh_interval.0,
                    ready_timeout: p.jwks_ready_timeout.0,
                    fetch_timeout: p.jwks_fetch_timeout.0,
                };
                // Carried over when the key source is the same: no refetch
                // gap, no fresh burst of fetches.
                let kept = previous.map(|prev| &prev.keys).filter(|k| {
                    k.remote_settings()
                        .is_some_and(|s| s.same_source(&settings))
                });
                Some(match kept {
                    Some(k) => Arc::clone(k),
                    None => Arc::new(KeyStore::remote(name, settings)),
                })
            }
            Err(e) => {
                errs.push(format!("{path}.ca_file"), e);
                None
            }
        }
    } else if let Some(file) = &p.jwks_file {
        let field = format!("{path}.jwks_file");
        read(base, file.as_str(), &field, errs, files_hash).and_then(
            |bytes| match KeySet::from_jwks(&bytes) {
                Ok((set, _)) if set.is_empty() => {
                    errs.push(field, "no usable signature keys in the file");
                    None
                }
                Ok((set, _)) => {
                    for a in &algorithms {
                        if !set.algorithms().any(|x| x == *a) {
                            errs.push(
                                &alg_field,
                                format!("{a:?} fits no key in {}", file.as_str()),
                            );
                        }
                    }
                    Some(Arc::new(KeyStore::fixed(name, set)))
                }
                Err(e) => {
                    errs.push(field, e);
                    None
                }
            },
        )
    } else if let Some(file) = &p.public_key_file {
        let field = format!("{path}.public_key_file");
        read(base, file.as_str(), &field, errs, files_hash).and_then(|bytes| {
            match keys::from_pem(&bytes) {
                Ok(key) => {
                    for a in &algorithms {
                        if !key.fits(*a) {
                            errs.push(
                                &alg_field,
                                format!("{a:?} does not fit the key in {}", file.as_str()),
                            );
                        }
                    }
                    Some(Arc::new(KeyStore::fixed(name, KeySet::new(vec![key]))))
                }
                Err(e) => {
                    errs.push(field, format!("{}: {e}", file.as_str()));
                    None
                }
            }
        })
    } else if let Some(secret) = &p.secret {
        let s = secret.0.as_str();
        if s.len() < 32 {
            errs.push(
                format!("{path}.secret"),
                "use at least 32 bytes (256 bits) of secret",
            );
        }
        Some(Arc::new(KeyStore::fixed(
            name,
            KeySet::new(vec![keys::from_secret(s.as_bytes())]),
        )))
    } else {
        None
    };
    if errs.0.len() > before {
        return None;
    }
    let keys = keys?;
    // The spec shows the secret redacted: it goes in on its own, with what
    // the key files added to the files' hash.
    let definition = crate::config::Definition::of(&(
        p,
        p.secret.as_ref().map(|s| s.as_str()),
        *files_hash ^ files_before,
    ));
    // Unchanged: carried over whole, with its keys and its cache of
    // verified tokens.
    if let Some(prev) = previous.filter(|prev| prev.definition == definition) {
        return Some(Arc::clone(prev));
    }
    let audiences: Vec<String> = p.audiences.iter().map(|a| a.as_str().to_owned()).collect();
    let rules = Rules::new(issuer, &audiences, algorithms, p.leeway.0);
    Some(Arc::new(Provider::new(
        name,
        keys,
        rules,
        ProviderOptions {
            sources,
            max_token_bytes: p.max_token_bytes.0 as usize,
            tenant_claim,
            forward_claims,
            forward_token: p.forward_token,
            cache_entries: p.cache.max_entries,
            cache_ttl: p.cache.max_ttl.0,
            definition,
        },
    )))
}

/// A route's `auth` policy.
pub(super) fn route_auth(
    route: &str,
    a: &RouteAuthSpec,
    path: &str,
    providers: &BTreeMap<String, AnyProvider>,
    spec: &Spec,
    errs: &mut Errors,
) -> Option<RouteAuth> {
    let before = errs.0.len();
    let mut require = Vec::new();
    for (claim, values) in &a.require {
        let parts: Vec<String> = claim.split('.').map(str::to_owned).collect();
        if parts.iter().any(String::is_empty) || values.is_empty() {
            errs.push(
                format!("{path}.require.{claim}"),
                "give a claim path and at least one value",
            );
            continue;
        }
        require.push((parts, values.clone()));
    }
    let names: Vec<(String, &String)> = match (&a.provider, a.any_of.as_slice()) {
        (Some(p), []) => vec![(format!("{path}.provider"), p)],
        (None, list) if !list.is_empty() => list
            .iter()
            .enumerate()
            .map(|(i, n)| (format!("{path}.any_of[{i}]"), n))
            .collect(),
        _ => {
            errs.push(
                path,
                "give either `provider` or `any_of` (a list of providers)",
            );
            return None;
        }
    };
    let mut list = Vec::new();
    for (field, name) in names {
        if list
            .iter()
            .any(|p: &AnyProvider| p.name().as_ref() == name.as_str())
        {
            errs.push(field, format!("provider \"{name}\" is listed twice"));
            continue;
        }
        match providers.get(name) {
            Some(p) => list.push(p.clone()),
            // A provider with its own errors is reported there, not twice.
            None if spec.auth.providers.contains_key(name) => {}
            None => errs.push(field, format!("unknown provider \"{name}\"")),
        }
    }
    if errs.0.len() > before || list.len() != a.any_of.len().max(1) {
        return None;
    }
    Some(RouteAuth::new(route, list, a.optional, require))
}
