//! A provider's token verification: jsonwebtoken with one `Validation`
//! per accepted algorithm, the checks jsonwebtoken leaves out, the claims
//! that become the caller's `Identity`, and the cache of verified tokens.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderName, HeaderValue};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use prometheus::IntCounter;
use serde_json::{Map, Value};

use super::jwks::{KeyStore, Refresh};
use super::keys::Found;
use super::token::{self, HeaderError, Source};
use super::{AuthFailure, Identity, claim_at};
use crate::observability::metrics::metrics;

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
    /// Digest of its definition, secret and key files included (a reload
    /// tells a changed provider from an unchanged one).
    pub definition: crate::config::Definition,
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
    /// Verified tokens (the connection memo is off when this is).
    pub(super) cache: Option<moka::sync::Cache<[u8; 32], Arc<Cached>>>,
    /// Verifications answered without a signature check.
    pub(super) hits: IntCounter,
    misses: IntCounter,
}

pub(super) struct Cached {
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

pub(super) fn unix_now() -> u64 {
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
    /// Digest of the provider's definition.
    pub definition: crate::config::Definition,
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
            definition: o.definition,
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
    pub async fn verify(&self, token: &str) -> Result<Arc<Identity>, AuthFailure> {
        if token.len() > self.max_token_bytes {
            return Err(AuthFailure::Invalid("the token is too large"));
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

    async fn verify_uncached(&self, token: &str) -> Result<Identity, AuthFailure> {
        let header = token::jose_header(token).map_err(|e| match e {
            HeaderError::Malformed => AuthFailure::Invalid("the token is malformed"),
            HeaderError::BadAlgorithm => {
                AuthFailure::Invalid("the token's algorithm is not accepted")
            }
            HeaderError::Critical => {
                AuthFailure::Invalid("the token has an unsupported critical header")
            }
        })?;
        // The token is verified with the one algorithm its header names,
        // after that algorithm is checked against the allowlist.
        let validation = self
            .rules
            .validation(header.alg)
            .ok_or(AuthFailure::Invalid(
                "the token's algorithm is not accepted",
            ))?;
        let mut set = self.keys.keys().ok_or(AuthFailure::Unavailable)?;
        let mut found = matches!(
            set.find(header.kid.as_deref(), header.alg),
            Found::UnknownKid
        );
        if found && self.keys.refresh_for_unknown_kid().await == Refresh::Done {
            set = self.keys.keys().ok_or(AuthFailure::Unavailable)?;
            found = false;
        }
        if found {
            return Err(AuthFailure::Invalid("the token's key id is unknown"));
        }
        let keys = match set.find(header.kid.as_deref(), header.alg) {
            Found::Keys(k) => k,
            Found::UnknownKid => return Err(AuthFailure::Invalid("the token's key id is unknown")),
            Found::NoKeyForAlgorithm => {
                return Err(AuthFailure::Invalid(
                    "the token's algorithm does not fit its key",
                ));
            }
        };
        let mut last = AuthFailure::Invalid("the token's signature is invalid");
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

    fn identity(&self, claims: Map<String, Value>) -> Result<Identity, AuthFailure> {
        if let Some(iss) = &self.rules.issuer
            && claims.get("iss").and_then(Value::as_str) != Some(iss.as_str())
        {
            return Err(AuthFailure::Invalid("the token's issuer is not accepted"));
        }
        let exp = claims
            .get("exp")
            .and_then(|v| v.as_u64().or_else(|| v.as_f64().map(|f| f as u64)))
            .ok_or(AuthFailure::Invalid("the token has no valid expiry"))?;
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

fn failure(kind: &ErrorKind) -> AuthFailure {
    match kind {
        ErrorKind::ExpiredSignature => AuthFailure::Expired,
        ErrorKind::ImmatureSignature => AuthFailure::Invalid("the token is not valid yet"),
        ErrorKind::InvalidIssuer => AuthFailure::Invalid("the token's issuer is not accepted"),
        ErrorKind::InvalidAudience => AuthFailure::Invalid("the token's audience is not accepted"),
        ErrorKind::MissingRequiredClaim(c) => match c.as_str() {
            "exp" => AuthFailure::Invalid("the token has no valid expiry"),
            "iss" => AuthFailure::Invalid("the token has no issuer"),
            "aud" => AuthFailure::Invalid("the token has no audience"),
            _ => AuthFailure::Invalid("the token lacks a required claim"),
        },
        ErrorKind::InvalidClaimFormat(_) => AuthFailure::Invalid("the token has a malformed claim"),
        ErrorKind::InvalidAlgorithm => {
            AuthFailure::Invalid("the token's algorithm is not accepted")
        }
        ErrorKind::InvalidSignature => AuthFailure::Invalid("the token's signature is invalid"),
        _ => AuthFailure::Invalid("the token is malformed"),
    }
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
