//! Verification keys: a JWKS document, one PEM public key or an HMAC
//! secret, turned into a set looked up by `kid`.
//!
//! `kid` is only a lookup key into this set. Keys are never taken from the
//! token itself (`jwk`, `jku`, `x5u` headers are ignored), and each key
//! verifies only algorithms of its own type, so an RSA public key can never
//! be used as an HMAC secret.

use std::collections::HashMap;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

/// What an RSA key verifies.
const RSA: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// One verification key.
pub struct Key {
    /// The JWK `kid`, when it has one.
    pub kid: Option<String>,
    /// The key, ready for jsonwebtoken.
    pub key: DecodingKey,
    /// Algorithms this key may verify (its type, curve and JWK `alg`).
    pub algorithms: Vec<Algorithm>,
}

impl Key {
    /// True when this key may verify `alg`.
    pub fn fits(&self, alg: Algorithm) -> bool {
        self.algorithms.contains(&alg)
    }
}

/// A provider's keys.
#[derive(Default)]
pub struct KeySet {
    keys: Vec<Key>,
    by_kid: HashMap<String, usize>,
}

/// What a lookup found.
pub enum Found<'a> {
    /// Keys to try (one when the token names a `kid`).
    Keys(Vec<&'a Key>),
    /// The token names a `kid` this set does not have.
    UnknownKid,
    /// No key in the set verifies the token's algorithm.
    NoKeyForAlgorithm,
}

impl KeySet {
    /// A set from keys (later duplicates of a `kid` are ignored).
    pub fn new(keys: Vec<Key>) -> Self {
        let mut by_kid = HashMap::new();
        for (i, k) in keys.iter().enumerate() {
            if let Some(kid) = &k.kid {
                by_kid.entry(kid.clone()).or_insert(i);
            }
        }
        Self { keys, by_kid }
    }

    /// Parses a JWKS document. Keys that are not for signatures, that are
    /// symmetric, or that jsonwebtoken cannot read are skipped (their count
    /// is returned); a document that is not a JWKS is an error.
    pub fn from_jwks(json: &[u8]) -> Result<(Self, usize), String> {
        #[derive(serde::Deserialize)]
        struct Doc {
            keys: Vec<serde_json::Value>,
        }
        let doc: Doc =
            serde_json::from_slice(json).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut keys = Vec::new();
        let mut skipped = 0;
        for v in doc.keys {
            match serde_json::from_value::<Jwk>(v)
                .ok()
                .and_then(|jwk| from_jwk(&jwk))
            {
                Some(k) => keys.push(k),
                None => skipped += 1,
            }
        }
        Ok((Self::new(keys), skipped))
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when there are no keys.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Algorithms at least one key verifies.
    pub fn algorithms(&self) -> impl Iterator<Item = Algorithm> + '_ {
        self.keys.iter().flat_map(|k| k.algorithms.iter().copied())
    }

    /// Keys for a token with `kid` and `alg`.
    pub fn find(&self, kid: Option<&str>, alg: Algorithm) -> Found<'_> {
        match kid {
            Some(kid) => match self.by_kid.get(kid).and_then(|i| self.keys.get(*i)) {
                Some(k) if k.fits(alg) => Found::Keys(vec![k]),
                Some(_) => Found::NoKeyForAlgorithm,
                None => Found::UnknownKid,
            },
            None => {
                let keys: Vec<&Key> = self.keys.iter().filter(|k| k.fits(alg)).collect();
                if keys.is_empty() {
                    Found::NoKeyForAlgorithm
                } else {
                    Found::Keys(keys)
                }
            }
        }
    }
}

/// A signature key from a JWK, or `None` for keys that must not or cannot
/// verify signatures.
fn from_jwk(jwk: &Jwk) -> Option<Key> {
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return None;
    }
    let by_type: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => RSA.to_vec(),
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            vec![Algorithm::EdDSA]
        }
        // Shared secrets do not belong in a key set; HMAC uses `secret`.
        AlgorithmParameters::OctetKeyPair(_) | AlgorithmParameters::OctetKey(_) => return None,
    };
    let algorithms = match jwk.common.key_algorithm {
        Some(a) => {
            let a: Algorithm = a.to_string().parse().ok()?;
            if !by_type.contains(&a) {
                return None;
            }
            vec![a]
        }
        None => by_type,
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(Key {
        kid: jwk.common.key_id.clone(),
        key,
        algorithms,
    })
}

/// The one key in a PEM file: an RSA, EC or Ed25519 public key (or a
/// certificate holding one).
pub(crate) fn from_pem(pem: &[u8]) -> Result<Key, String> {
    let text = std::str::from_utf8(pem).map_err(|_| "not a PEM file".to_owned())?;
    if text.contains("PRIVATE KEY") {
        return Err("holds a private key; give the public key".to_owned());
    }
    let rsa = || DecodingKey::from_rsa_pem(pem).map(|k| (k, RSA.to_vec()));
    let ec =
        || DecodingKey::from_ec_pem(pem).map(|k| (k, vec![Algorithm::ES256, Algorithm::ES384]));
    let ed = || DecodingKey::from_ed_pem(pem).map(|k| (k, vec![Algorithm::EdDSA]));
    let (key, algorithms) = rsa()
        .or_else(|_| ec())
        .or_else(|_| ed())
        .map_err(|_| "not an RSA, EC or Ed25519 public key in PEM".to_owned())?;
    Ok(Key {
        kid: None,
        key,
        algorithms,
    })
}

/// An HMAC secret.
pub(crate) fn from_secret(secret: &[u8]) -> Key {
    Key {
        kid: None,
        key: DecodingKey::from_secret(secret),
        algorithms: vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwks_skips_encryption_symmetric_and_unreadable_keys() {
        let doc = br#"{"keys":[
            {"kty":"EC","crv":"P-256","kid":"ec1","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty":"EC","crv":"P-256","kid":"enc","use":"enc","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty":"oct","kid":"hs","k":"c2VjcmV0"},
            {"kty":"XYZ","kid":"odd"}
        ]}"#;
        let (set, skipped) = KeySet::from_jwks(doc).unwrap();
        assert_eq!((set.len(), skipped), (1, 3));
        assert!(matches!(
            set.find(Some("ec1"), Algorithm::ES256),
            Found::Keys(k) if k.len() == 1
        ));
        assert!(matches!(
            set.find(Some("ec1"), Algorithm::RS256),
            Found::NoKeyForAlgorithm
        ));
        assert!(matches!(
            set.find(Some("hs"), Algorithm::HS256),
            Found::UnknownKid
        ));
        assert!(matches!(set.find(None, Algorithm::ES256), Found::Keys(_)));
        assert!(KeySet::from_jwks(b"{}").is_err());
    }

    #[test]
    fn secret_keys_only_verify_hmac() {
        let k = from_secret(b"s");
        assert!(k.fits(Algorithm::HS256));
        assert!(!k.fits(Algorithm::RS256));
    }
}
