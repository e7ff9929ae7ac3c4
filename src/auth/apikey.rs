//! API keys (`type: api_key` providers): a key is looked up by its
//! SHA-256 in the set read from `keys_file`, which holds hashes only, never
//! keys.
//!
//! The lookup compares digests, not keys: what a client controls is the
//! key, and the bytes of its SHA-256 cannot be steered to match a stored
//! digest prefix by prefix, so the time a lookup takes tells an attacker
//! nothing about a valid key.

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use prometheus::IntGauge;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::token::Source;
use super::{Identity, claim_at};
use crate::observability::metrics::metrics;

/// One entry of a keys file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    /// Hex SHA-256 of the key.
    sha256: String,
    /// Who the key belongs to: the identity's `sub`.
    consumer: String,
    /// The tenant (rate-limit key `tenant`, access log `tenant`).
    #[serde(default)]
    tenant: Option<String>,
    /// More claims (for `require`, `forward_claims`, `claim:` limit keys).
    #[serde(default)]
    claims: Map<String, Value>,
}

/// The SHA-256 of a key.
pub(crate) fn digest(key: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The keys-file entry for `key` (what `tollgate hash-key` prints).
pub fn entry_line(key: &str, consumer: &str, tenant: Option<&str>) -> String {
    let hex: String = digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let quote = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
    match tenant {
        Some(t) => format!(
            "- {{ sha256: {hex}, consumer: {}, tenant: {} }}",
            quote(consumer),
            quote(t)
        ),
        None => format!("- {{ sha256: {hex}, consumer: {} }}", quote(consumer)),
    }
}

/// A new random key: 32 bytes from the system's generator, base64url,
/// with a `tg_` prefix so that secret scanners can recognize it.
pub fn generate() -> Result<String, String> {
    use aws_lc_rs::rand::SecureRandom;
    use base64::Engine;
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "the system's random generator failed".to_owned())?;
    Ok(format!(
        "tg_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

fn parse_hex(text: &str) -> Option<[u8; 32]> {
    let b = text.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        *o = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// Reads a keys file into identities by digest. Every error is listed,
/// each naming its entry.
pub(crate) fn parse_keys(
    provider: &str,
    bytes: &[u8],
    forward_claims: &[(Vec<String>, HeaderName)],
) -> Result<HashMap<[u8; 32], Arc<Identity>>, Vec<String>> {
    let text = std::str::from_utf8(bytes).map_err(|_| vec!["the file is not UTF-8".to_owned()])?;
    // What an editor leaves half-way through a save would revoke every
    // key: refused, as an empty config is.
    let no_keys = || {
        vec!["the file lists no keys (an empty or truncated file is refused, and the running keys keep serving)".to_owned()]
    };
    if text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        return Err(no_keys());
    }
    let entries: Vec<Entry> = serde_saphyr::from_str(text).map_err(|e| vec![e.to_string()])?;
    if entries.is_empty() {
        return Err(no_keys());
    }
    let mut out = HashMap::with_capacity(entries.len());
    let mut errors = Vec::new();
    let name: Arc<str> = provider.into();
    for (i, e) in entries.into_iter().enumerate() {
        let Some(d) = parse_hex(&e.sha256) else {
            errors.push(format!(
                "[{i}].sha256: give the key's SHA-256 as 64 hex digits (tollgate hash-key prints it)"
            ));
            continue;
        };
        if e.consumer.trim().is_empty() {
            errors.push(format!("[{i}].consumer: must not be empty"));
            continue;
        }
        let mut claims = e.claims;
        claims.insert("sub".to_owned(), Value::String(e.consumer.clone()));
        if let Some(t) = &e.tenant {
            claims
                .entry("tenant".to_owned())
                .or_insert_with(|| Value::String(t.clone()));
        }
        let forwarded = forward_claims
            .iter()
            .filter_map(|(path, header)| {
                let text = match claim_at(&claims, path)? {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    _ => return None,
                };
                HeaderValue::try_from(text)
                    .ok()
                    .map(|v| (header.clone(), v))
            })
            .collect();
        let identity = Identity {
            provider: Arc::clone(&name),
            sub: Some(e.consumer),
            tenant: e.tenant.filter(|t| !t.is_empty()),
            claims,
            forwarded,
            // Keys do not expire; removing one from the file revokes it.
            exp: u64::MAX,
        };
        if out.insert(d, Arc::new(identity)).is_some() {
            errors.push(format!("[{i}].sha256: the same key is listed twice"));
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// A compiled `type: api_key` provider.
pub struct ApiKeys {
    /// Name (metric label).
    pub name: Arc<str>,
    /// Digest of its definition and keys file.
    pub definition: crate::config::Definition,
    /// Where keys are looked for.
    pub sources: Vec<Source>,
    /// Keep the key upstream.
    pub forward_key: bool,
    /// Longest key read.
    pub max_key_bytes: usize,
    /// Headers set from the identity's claims (client copies removed).
    pub forward_claims: Vec<(Vec<String>, HeaderName)>,
    keys: HashMap<[u8; 32], Arc<Identity>>,
    _loaded: IntGauge,
}

/// Settings of `ApiKeys::new`.
pub struct ApiKeyOptions {
    /// Key sources.
    pub sources: Vec<Source>,
    /// Keep the key upstream.
    pub forward_key: bool,
    /// Longest key.
    pub max_key_bytes: usize,
    /// Claims forwarded as headers.
    pub forward_claims: Vec<(Vec<String>, HeaderName)>,
    /// Digest of the definition.
    pub definition: crate::config::Definition,
}

impl ApiKeys {
    /// A provider with these keys.
    pub fn new(name: &str, keys: HashMap<[u8; 32], Arc<Identity>>, o: ApiKeyOptions) -> Self {
        let loaded = metrics().auth_api_keys.with_label_values(&[name]);
        loaded.set(keys.len() as i64);
        Self {
            name: name.into(),
            definition: o.definition,
            sources: o.sources,
            forward_key: o.forward_key,
            max_key_bytes: o.max_key_bytes,
            forward_claims: o.forward_claims,
            keys,
            _loaded: loaded,
        }
    }

    /// The identity of `key`, if it is one of ours.
    /// (The caller refuses keys over `max_key_bytes` first.)
    pub fn lookup(&self, key: &str) -> Option<Arc<Identity>> {
        self.keys.get(&digest(key.as_bytes())).map(Arc::clone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_printed_entry_reads_back_as_the_key() {
        let key = generate().unwrap();
        assert!(key.starts_with("tg_") && key.len() == 46, "{key}");
        let line = entry_line(&key, "billing \"svc\"", Some("acme"));
        let h = HeaderName::from_static("x-consumer");
        let keys = parse_keys("k", line.as_bytes(), &[(vec!["sub".into()], h)]).unwrap();
        let id = keys.get(&digest(key.as_bytes())).unwrap();
        assert_eq!(id.sub.as_deref(), Some("billing \"svc\""));
        assert_eq!(id.tenant.as_deref(), Some("acme"));
        assert_eq!(id.forwarded.len(), 1);
        assert_eq!(id.forwarded[0].1, "billing \"svc\"");
    }

    #[test]
    fn a_bad_file_names_every_bad_entry() {
        let text = "- { sha256: abc, consumer: a }\n- { sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08, consumer: '' }\n";
        let errs = parse_keys("k", text.as_bytes(), &[]).unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].starts_with("[0].sha256"));
        assert!(errs[1].starts_with("[1].consumer"));
        let twice = "- { sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08, consumer: a }\n- { sha256: 9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08, consumer: b }\n";
        let errs = parse_keys("k", twice.as_bytes(), &[]).unwrap_err();
        assert!(errs[0].contains("twice"), "{errs:?}");
        assert!(parse_keys("k", b"{ not: a list }", &[]).is_err());
        for empty in [&b""[..], b"# nothing yet\n", b"[]"] {
            let errs = parse_keys("k", empty, &[]).unwrap_err();
            assert!(errs[0].contains("lists no keys"), "{errs:?}");
        }
    }
}
