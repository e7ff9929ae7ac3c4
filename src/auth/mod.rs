//! JWT authentication (pipeline stage 4): a route's `auth` policy names a
//! provider; the provider finds the token, verifies it against its keys
//! and rules, and yields the caller's `Identity` (claims, `sub`, tenant) for
//! the stages after it.
//!
//! Verification is jsonwebtoken with one `Validation` per provider, built
//! when the config is compiled, and every rule set explicitly: `exp`
//! required, `nbf` checked, the configured leeway, `iss` / `aud` required
//! when configured. What jsonwebtoken does not check is checked here: `crit`
//! headers, `iss` as a single string, the algorithm against the key's type.
//! Successes are cached by a SHA-256 of the token until its `exp` (or
//! `cache.max_ttl`), and dropped when the provider's keys change.

pub mod jwks;
pub mod keys;
pub mod token;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName, HeaderValue};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use prometheus::IntCounter;
use serde_json::{Map, Value};

use self::jwks::{KeyStore, Refresh};
use self::keys::Found;
use self::token::{Conflict, HeaderError, Source};
use crate::observability::metrics::metrics;

/// Who the caller is, from a verified token.
#[derive(Debug)]
pub struct Identity {
    /// The provider that verified the token.
    pub provider: Arc<str>,
    /// `sub`, when it is a string.
    pub sub: Option<String>,
    /// The tenant claim's value.
    pub tenant: Option<String>,
    /// Every claim.
    pub claims: Map<String, Value>,
    /// Headers set upstream (`forward_claims`).
    pub forwarded: Vec<(HeaderName, HeaderValue)>,
    /// `exp` (seconds since the epoch).
    pub exp: u64,
}

/// Why a request was not let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No token where one is required.
    Missing,
    /// A token was given and is not acceptable; the text is safe to send
    /// back (it never contains the token).
    Invalid(&'static str),
    /// The token's `exp` (plus leeway) has passed.
    Expired,
    /// The token is valid but lacks a required claim value.
    Forbidden,
    /// The provider has no keys yet (remote JWKS never fetched).
    Unavailable,
}

impl Failure {
    /// The `result` label of `tollgate_auth_requests_total`.
    pub fn result(self) -> Outcome {
        match self {
            Failure::Missing => Outcome::Missing,
            Failure::Invalid(_) => Outcome::Invalid,
            Failure::Expired => Outcome::Expired,
            Failure::Forbidden => Outcome::Forbidden,
            Failure::Unavailable => Outcome::Unavailable,
        }
    }
}

/// The `result` label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Verified (and authorized).
    Ok,
    /// No token (also: optional routes let through anonymously).
    Missing,
    /// Refused token.
    Invalid,
    /// Expired token.
    Expired,
    /// Valid token without the required claims.
    Forbidden,
    /// No keys.
    Unavailable,
}

const OUTCOMES: [(Outcome, &str); 6] = [
    (Outcome::Ok, "ok"),
    (Outcome::Missing, "missing"),
    (Outcome::Invalid, "invalid"),
    (Outcome::Expired, "expired"),
    (Outcome::Forbidden, "forbidden"),
    (Outcome::Unavailable, "unavailable"),
];

/// Validation rules of a provider, compiled.
pub struct Rules {
    /// `iss` must equal this (a single string).
    pub issuer: Option<String>,
    /// Accepted algorithms.
    pub algorithms: Vec<Algorithm>,
    /// jsonwebtoken's validation for each accepted algorithm, every field
    /// set. One per algorithm: jsonwebtoken checks every algorithm of a
    /// `Validation` against the key's family, so a provider that accepts
    /// RS256 and ES256 would refuse both with one shared `Validation`.
    validations: Vec<(Algorithm, Validation)>,
}

impl Rules {
    /// Rules from the provider's settings.
    pub fn new(
        issuer: Option<String>,
        audiences: &[String],
        algorithms: Vec<Algorithm>,
        leeway: Duration,
    ) -> Self {
        let mut v = Validation::new(algorithms.first().copied().unwrap_or(Algorithm::RS256));
        v.leeway = leeway.as_secs();
        v.reject_tokens_expiring_in_less_than = 0;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.sub = None;
        let mut required = vec!["exp"];
        match &issuer {
            Some(i) => {
                v.set_issuer(&[i]);
                required.push("iss");
            }
            None => v.iss = None,
        }
        if audiences.is_empty() {
            // As Envoy: no audiences configured, `aud` is not checked.
            v.validate_aud = false;
            v.aud = None;
        } else {
            v.validate_aud = true;
            v.set_audience(audiences);
            required.push("aud");
        }
        v.set_required_spec_claims(&required);
        let validations = algorithms
            .iter()
            .map(|a| {
                let mut one = v.clone();
                one.algorithms = vec![*a];
                (*a, one)
            })
            .collect();
        Self {
            issuer,
            algorithms,
            validations,
        }
    }

    /// The validation for tokens signed with `alg` (`None` when `alg` is
    /// not accepted).
    pub fn validation(&self, alg: Algorithm) -> Option<&Validation> {
        self.validations
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, v)| v)
    }
}

/// A compiled `auth.providers.NAME`.
pub struct Provider {
    /// Name (metric label).
    pub name: Arc<str>,
    /// Its keys (carried over across reloads while the key source is unchanged).
    pub keys: Arc<KeyStore>,
    /// Validation rules.
    pub rules: Rules,
    /// Where tokens are looked for.
    pub sources: Vec<Source>,
    /// Longest token read.
    pub max_token_bytes: usize,
    /// Dotted path of the tenant claim.
    pub tenant_claim: Option<Vec<String>>,
    /// (claim path, header) pairs set upstream.
    pub forward_claims: Vec<(Vec<String>, HeaderName)>,
    /// Keep `Authorization` upstream.
    pub forward_token: bool,
    cache: Option<moka::sync::Cache<[u8; 32], Arc<Cached>>>,
    hits: IntCounter,
    misses: IntCounter,
}

struct Cached {
    identity: Arc<Identity>,
    generation: u64,
}

struct UntilExp {
    max_ttl: Duration,
}

impl moka::Expiry<[u8; 32], Arc<Cached>> for UntilExp {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Arc<Cached>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        let left = value.identity.exp.saturating_sub(unix_now());
        Some(Duration::from_secs(left).min(self.max_ttl))
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Settings for `Provider::new` that are not rules or keys.
pub struct ProviderOptions {
    /// Token sources.
    pub sources: Vec<Source>,
    /// Longest token.
    pub max_token_bytes: usize,
    /// Tenant claim path.
    pub tenant_claim: Option<Vec<String>>,
    /// Claims forwarded as headers.
    pub forward_claims: Vec<(Vec<String>, HeaderName)>,
    /// Keep `Authorization`.
    pub forward_token: bool,
    /// Most cached verifications (0: no cache).
    pub cache_entries: u64,
    /// Longest cache entry life.
    pub cache_ttl: Duration,
}

impl Provider {
    /// A provider.
    pub fn new(name: &str, keys: Arc<KeyStore>, rules: Rules, o: ProviderOptions) -> Self {
        // Chosen explicitly: jsonwebtoken panics at the first verification
        // when it cannot tell which backend to use (both features on).
        let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
        let m = metrics();
        let cache = (o.cache_entries > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(o.cache_entries)
                .expire_after(UntilExp {
                    max_ttl: o.cache_ttl,
                })
                .build()
        });
        Self {
            name: name.into(),
            keys,
            rules,
            sources: o.sources,
            max_token_bytes: o.max_token_bytes,
            tenant_claim: o.tenant_claim,
            forward_claims: o.forward_claims,
            forward_token: o.forward_token,
            cache,
            hits: m.jwt_cache_hits.clone(),
            misses: m.jwt_cache_misses.clone(),
        }
    }

    /// Verifies `token`; a cached success is returned without verifying again.
    pub async fn verify(&self, token: &str) -> Result<Arc<Identity>, Failure> {
        if token.len() > self.max_token_bytes {
            return Err(Failure::Invalid("the token is too large"));
        }
        let digest = self.cache.as_ref().map(|_| {
            let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
            let mut key = [0u8; 32];
            key.copy_from_slice(d.as_ref());
            key
        });
        if let (Some(cache), Some(key)) = (&self.cache, &digest) {
            // An entry expires with its token (`UntilExp`): a hit is never
            // past `exp`, so only the key generation is checked here.
            if let Some(hit) = cache.get(key)
                && hit.generation == self.keys.generation()
            {
                self.hits.inc();
                return Ok(Arc::clone(&hit.identity));
            }
            self.misses.inc();
        }
        let generation = self.keys.generation();
        let identity = Arc::new(self.verify_uncached(token).await?);
        if let (Some(cache), Some(key)) = (&self.cache, digest) {
            cache.insert(
                key,
                Arc::new(Cached {
                    identity: Arc::clone(&identity),
                    generation,
                }),
            );
        }
        Ok(identity)
    }

    async fn verify_uncached(&self, token: &str) -> Result<Identity, Failure> {
        let header = token::jose_header(token).map_err(|e| match e {
            HeaderError::Malformed => Failure::Invalid("the token is malformed"),
            HeaderError::BadAlgorithm => Failure::Invalid("the token's algorithm is not accepted"),
            HeaderError::Critical => {
                Failure::Invalid("the token has an unsupported critical header")
            }
        })?;
        // The token is verified with the one algorithm its header names,
        // after that algorithm is checked against the allowlist.
        let validation = self
            .rules
            .validation(header.alg)
            .ok_or(Failure::Invalid("the token's algorithm is not accepted"))?;
        let mut set = self.keys.keys().ok_or(Failure::Unavailable)?;
        let mut found = matches!(
            set.find(header.kid.as_deref(), header.alg),
            Found::UnknownKid
        );
        if found && self.keys.refresh_for_unknown_kid().await == Refresh::Done {
            set = self.keys.keys().ok_or(Failure::Unavailable)?;
            found = false;
        }
        if found {
            return Err(Failure::Invalid("the token's key id is unknown"));
        }
        let keys = match set.find(header.kid.as_deref(), header.alg) {
            Found::Keys(k) => k,
            Found::UnknownKid => return Err(Failure::Invalid("the token's key id is unknown")),
            Found::NoKeyForAlgorithm => {
                return Err(Failure::Invalid(
                    "the token's algorithm does not fit its key",
                ));
            }
        };
        let mut last = Failure::Invalid("the token's signature is invalid");
        for key in keys {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation) {
                Ok(data) => return self.identity(data.claims),
                Err(e) => {
                    last = failure(e.kind());
                    if !matches!(e.kind(), ErrorKind::InvalidSignature) {
                        break;
                    }
                }
            }
        }
        Err(last)
    }

    fn identity(&self, claims: Map<String, Value>) -> Result<Identity, Failure> {
        if let Some(iss) = &self.rules.issuer
            && claims.get("iss").and_then(Value::as_str) != Some(iss.as_str())
        {
            return Err(Failure::Invalid("the token's issuer is not accepted"));
        }
        let exp = claims
            .get("exp")
            .and_then(|v| v.as_u64().or_else(|| v.as_f64().map(|f| f as u64)))
            .ok_or(Failure::Invalid("the token has no valid expiry"))?;
        let tenant = self
            .tenant_claim
            .as_ref()
            .and_then(|p| claim_at(&claims, p))
            .and_then(scalar_text);
        let forwarded = self
            .forward_claims
            .iter()
            .filter_map(|(path, header)| {
                let text = claim_text(claim_at(&claims, path)?)?;
                HeaderValue::try_from(text)
                    .ok()
                    .map(|v| (header.clone(), v))
            })
            .collect();
        Ok(Identity {
            provider: Arc::clone(&self.name),
            sub: claims.get("sub").and_then(Value::as_str).map(str::to_owned),
            tenant,
            forwarded,
            claims,
            exp,
        })
    }
}

fn failure(kind: &ErrorKind) -> Failure {
    match kind {
        ErrorKind::ExpiredSignature => Failure::Expired,
        ErrorKind::ImmatureSignature => Failure::Invalid("the token is not valid yet"),
        ErrorKind::InvalidIssuer => Failure::Invalid("the token's issuer is not accepted"),
        ErrorKind::InvalidAudience => Failure::Invalid("the token's audience is not accepted"),
        ErrorKind::MissingRequiredClaim(c) => match c.as_str() {
            "exp" => Failure::Invalid("the token has no valid expiry"),
            "iss" => Failure::Invalid("the token has no issuer"),
            "aud" => Failure::Invalid("the token has no audience"),
            _ => Failure::Invalid("the token lacks a required claim"),
        },
        ErrorKind::InvalidClaimFormat(_) => Failure::Invalid("the token has a malformed claim"),
        ErrorKind::InvalidAlgorithm => Failure::Invalid("the token's algorithm is not accepted"),
        ErrorKind::InvalidSignature => Failure::Invalid("the token's signature is invalid"),
        _ => Failure::Invalid("the token is malformed"),
    }
}

/// The claim at a dotted path.
pub fn claim_at<'a>(claims: &'a Map<String, Value>, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let mut v = claims.get(first)?;
    for p in rest {
        v = v.as_object()?.get(p)?;
    }
    Some(v)
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A claim as header text: a string as it is, a number printed. An
/// array, object, boolean or null is no header value (joining an array
/// would let `["a,b"]` and `["a","b"]` read the same upstream), so the
/// header is left out.
fn claim_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Array(_) | Value::Object(_) | Value::Bool(_) | Value::Null => None,
    }
}

/// The last token verified on one client connection: a keep-alive client
/// that sends the same token again is recognized by comparing the bytes,
/// without hashing the token or touching the shared cache. Per connection,
/// so nothing is shared between clients.
#[derive(Default)]
pub struct ConnMemo {
    slot: Mutex<Option<Memo>>,
}

struct Memo {
    // A `Weak` keeps the provider's allocation, so its address cannot be
    // reused by another provider while this memo names it.
    provider: Weak<Provider>,
    generation: u64,
    token: Box<str>,
    identity: Arc<Identity>,
}

impl ConnMemo {
    fn get(&self, provider: &Arc<Provider>, token: &str) -> Option<Arc<Identity>> {
        let slot = self.slot.lock().ok()?;
        let m = slot.as_ref()?;
        (std::ptr::eq(m.provider.as_ptr(), Arc::as_ptr(provider))
            && m.generation == provider.keys.generation()
            && *m.token == *token
            && m.identity.exp > unix_now())
        .then(|| Arc::clone(&m.identity))
    }

    fn put(
        &self,
        provider: &Arc<Provider>,
        generation: u64,
        token: &str,
        identity: &Arc<Identity>,
    ) {
        if let Ok(mut slot) = self.slot.lock() {
            *slot = Some(Memo {
                provider: Arc::downgrade(provider),
                generation,
                token: token.into(),
                identity: Arc::clone(identity),
            });
        }
    }
}

/// Removes every header and cookie a token may come from
/// (`forward_token: false`): `Authorization`, `header:` sources, and the
/// `cookie:` sources' cookies (other cookies are kept).
fn strip_token_headers(sources: &[Source], headers: &mut HeaderMap) {
    headers.remove(AUTHORIZATION);
    let mut cookies = Vec::new();
    for s in sources {
        match s {
            Source::Header(name) => {
                headers.remove(name);
            }
            Source::Cookie(name) => cookies.push(name.as_str()),
            Source::Query(_) => {}
        }
    }
    if cookies.is_empty() || !headers.contains_key(http::header::COOKIE) {
        return;
    }
    let kept: Vec<String> = headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|kv| {
            let name = kv.split_once('=').map_or(*kv, |(k, _)| k);
            !kv.is_empty() && !cookies.contains(&name)
        })
        .map(str::to_owned)
        .collect();
    headers.remove(http::header::COOKIE);
    if !kept.is_empty()
        && let Ok(v) = HeaderValue::try_from(kept.join("; "))
    {
        headers.insert(http::header::COOKIE, v);
    }
}

/// A route's `auth`: the provider, whether a token is optional, and the
/// claim values it requires.
pub struct RouteAuth {
    /// The provider.
    pub provider: Arc<Provider>,
    /// Let requests without a token through anonymously.
    pub optional: bool,
    /// (claim path, values that must all be present).
    pub require: Vec<(Vec<String>, Vec<String>)>,
    counters: [IntCounter; 6],
}

impl RouteAuth {
    /// The policy of route `route`.
    pub fn new(
        route: &str,
        provider: Arc<Provider>,
        optional: bool,
        require: Vec<(Vec<String>, Vec<String>)>,
    ) -> Self {
        let family = &metrics().auth_requests;
        let counters =
            OUTCOMES.map(|(_, label)| family.with_label_values(&[route, &provider.name, label]));
        Self {
            provider,
            optional,
            require,
            counters,
        }
    }

    fn count(&self, o: Outcome) {
        if let Some(i) = OUTCOMES.iter().position(|(x, _)| *x == o)
            && let Some(c) = self.counters.get(i)
        {
            c.inc();
        }
    }

    /// Authenticates a request: on success its headers are rewritten for
    /// upstream (client copies of forwarded claim headers removed, verified
    /// claims set, `Authorization` dropped unless `forward_token`) and the
    /// identity is returned (`None`: anonymous on an optional route).
    pub async fn check(
        &self,
        headers: &mut HeaderMap,
        query: Option<&str>,
        memo: &ConnMemo,
    ) -> Result<Option<Arc<Identity>>, Failure> {
        let r = self.check_inner(headers, query, memo).await;
        self.count(match &r {
            Ok(Some(_)) => Outcome::Ok,
            Ok(None) => Outcome::Missing,
            Err(f) => f.result(),
        });
        r
    }

    async fn check_inner(
        &self,
        headers: &mut HeaderMap,
        query: Option<&str>,
        memo: &ConnMemo,
    ) -> Result<Option<Arc<Identity>>, Failure> {
        let p = &self.provider;
        let identity = {
            let token = token::extract(&p.sources, headers, query).map_err(|c| match c {
                Conflict::TwoAuthorizationHeaders => {
                    Failure::Invalid("more than one Authorization header")
                }
                Conflict::Disagree => Failure::Invalid("the request carries different tokens"),
            })?;
            match token {
                None if self.optional => None,
                None => return Err(Failure::Missing),
                Some(t) if t.is_empty() => return Err(Failure::Invalid("the token is empty")),
                Some(t) => {
                    // The memo is part of the cache: off when the cache is.
                    let memo = p.cache.as_ref().map(|_| memo);
                    let id = match memo.and_then(|m| m.get(p, &t)) {
                        Some(id) => {
                            p.hits.inc();
                            id
                        }
                        None => {
                            let generation = p.keys.generation();
                            let id = p.verify(&t).await?;
                            if let Some(m) = memo {
                                m.put(p, generation, &t, &id);
                            }
                            id
                        }
                    };
                    if !self.authorized(&id) {
                        return Err(Failure::Forbidden);
                    }
                    Some(id)
                }
            }
        };
        for (_, h) in &p.forward_claims {
            headers.remove(h);
        }
        if let Some(id) = &identity {
            for (h, v) in &id.forwarded {
                headers.insert(h.clone(), v.clone());
            }
        }
        if !p.forward_token {
            strip_token_headers(&p.sources, headers);
        }
        Ok(identity)
    }

    /// Query parameters that carry tokens and must not go upstream
    /// (`forward_token: false` with `query:` sources).
    pub fn query_to_strip(&self) -> impl Iterator<Item = &str> {
        let p = &self.provider;
        p.sources.iter().filter_map(move |s| match s {
            Source::Query(name) if !p.forward_token => Some(name.as_str()),
            _ => None,
        })
    }

    fn authorized(&self, id: &Identity) -> bool {
        self.require.iter().all(|(path, wanted)| {
            let have: HashSet<&str> = match claim_at(&id.claims, path) {
                Some(Value::String(s)) => s.split_whitespace().collect(),
                Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
                _ => HashSet::new(),
            };
            wanted.iter().all(|w| have.contains(w.as_str()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_paths_and_texts() {
        let claims: Map<String, Value> =
            serde_json::from_str(r#"{"org":{"id":42},"roles":["a","b"],"sub":"u"}"#).unwrap();
        let path = |p: &str| p.split('.').map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(
            claim_at(&claims, &path("org.id")).and_then(scalar_text),
            Some("42".into())
        );
        assert_eq!(
            claim_at(&claims, &path("roles")).and_then(claim_text),
            None,
            "an array is no header value"
        );
        assert!(claim_at(&claims, &path("org.name")).is_none());
    }

    #[test]
    fn rules_set_every_check_explicitly() {
        let r = Rules::new(
            Some("https://i/".into()),
            &["api".to_owned()],
            vec![Algorithm::RS256],
            Duration::from_secs(30),
        );
        let Some(v) = r.validation(Algorithm::RS256) else {
            unreachable!("RS256 is accepted")
        };
        assert!(r.validation(Algorithm::ES256).is_none());
        assert!(v.validate_exp && v.validate_nbf && v.validate_aud);
        assert_eq!(v.leeway, 30);
        for c in ["exp", "iss", "aud"] {
            assert!(v.required_spec_claims.contains(c), "{c}");
        }
        let open = Rules::new(None, &[], vec![Algorithm::ES256], Duration::ZERO);
        let Some(v) = open.validation(Algorithm::ES256) else {
            unreachable!("ES256 is accepted")
        };
        assert!(!v.validate_aud);
        assert!(v.required_spec_claims.contains("exp"));
        assert!(!v.required_spec_claims.contains("iss"));
    }

    #[test]
    fn each_accepted_algorithm_gets_a_validation_of_its_own() {
        let r = Rules::new(
            None,
            &[],
            vec![Algorithm::RS256, Algorithm::ES256],
            Duration::ZERO,
        );
        for a in [Algorithm::RS256, Algorithm::ES256] {
            let Some(v) = r.validation(a) else {
                unreachable!("{a:?} is accepted")
            };
            assert_eq!(v.algorithms, vec![a]);
        }
    }

    #[test]
    fn only_strings_and_numbers_are_header_values() {
        use serde_json::json;
        assert_eq!(claim_text(&json!("acme")).as_deref(), Some("acme"));
        assert_eq!(claim_text(&json!(42)).as_deref(), Some("42"));
        for v in [
            json!(["acme", "globex"]),
            json!({"a": 1}),
            json!(true),
            json!(null),
        ] {
            assert_eq!(claim_text(&v), None, "{v}");
        }
    }
}
