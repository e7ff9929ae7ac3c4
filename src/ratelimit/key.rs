//! Bucket keys: the parts a policy keys on, how a request fills them in,
//! and the bound on a key's size.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName};

use super::Policy;
use crate::auth::{Identity, claim_at};

/// One part of a bucket key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKeyPart {
    /// The verified token's tenant.
    Tenant,
    /// The client address (IPv6 grouped by /64).
    ClientIp,
    /// A request header's value.
    Header(HeaderName),
    /// A claim of the verified token (dotted path).
    Claim(Vec<String>),
    /// The route's name.
    Route,
}

impl LimitKeyPart {
    /// Parses `tenant`, `client_ip`, `header:NAME`, `claim:NAME` or `route`.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.split_once(':') {
            None if text == "tenant" => Ok(LimitKeyPart::Tenant),
            None if text == "client_ip" => Ok(LimitKeyPart::ClientIp),
            None if text == "route" => Ok(LimitKeyPart::Route),
            Some(("header", name)) => HeaderName::try_from(name.trim())
                .map(LimitKeyPart::Header)
                .map_err(|_| format!("`{name}` is not a header name")),
            Some(("claim", path)) if path.split('.').all(|p| !p.is_empty()) => Ok(
                LimitKeyPart::Claim(path.split('.').map(str::to_owned).collect()),
            ),
            _ => Err(format!(
                "`{text}`: use tenant, client_ip, header:NAME, claim:NAME or route"
            )),
        }
    }

    pub(super) fn needs_identity(&self) -> bool {
        matches!(self, LimitKeyPart::Tenant | LimitKeyPart::Claim(_))
    }
}

/// Longest rate-limit key kept as it is; longer ones are kept as a
/// 128-bit digest (33 bytes). With every key this short, `max_keys`
/// bounds a policy's memory: about 250 bytes a key (`store.rs`).
pub const MAX_KEY_BYTES: usize = 64;

/// What the request looks like to the key builder.
pub struct KeyInput<'a> {
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// Client address.
    pub client: IpAddr,
    /// Route name.
    pub route: &'a str,
    /// Verified identity, when authenticated.
    pub identity: Option<&'a Identity>,
}

/// Why a key could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    /// A part is absent or empty.
    Missing,
    /// A key header was sent more than once (400).
    Repeated,
}

impl Policy {
    /// The bucket key for a request.
    pub fn key(&self, input: &KeyInput<'_>) -> Result<String, KeyError> {
        let mut out = String::new();
        for (i, part) in self.key.iter().enumerate() {
            if i > 0 {
                out.push('\u{1f}');
            }
            match part {
                LimitKeyPart::Tenant => {
                    let t = input
                        .identity
                        .and_then(|id| id.tenant.as_deref())
                        .filter(|t| !t.is_empty())
                        .ok_or(KeyError::Missing)?;
                    out.push_str(t);
                }
                LimitKeyPart::ClientIp => push_ip(&mut out, input.client),
                LimitKeyPart::Header(name) => {
                    let mut values = input.headers.get_all(name).iter();
                    let v = values.next().ok_or(KeyError::Missing)?;
                    if values.next().is_some() {
                        return Err(KeyError::Repeated);
                    }
                    let v = v.to_str().map_err(|_| KeyError::Missing)?.trim();
                    if v.is_empty() {
                        return Err(KeyError::Missing);
                    }
                    out.push_str(v);
                }
                LimitKeyPart::Claim(path) => {
                    let v = input
                        .identity
                        .and_then(|id| claim_at(&id.claims, path))
                        .ok_or(KeyError::Missing)?;
                    match v {
                        serde_json::Value::String(s) if !s.is_empty() => out.push_str(s),
                        serde_json::Value::Number(n) => out.push_str(&n.to_string()),
                        serde_json::Value::Bool(b) => {
                            out.push_str(if *b { "true" } else { "false" })
                        }
                        _ => return Err(KeyError::Missing),
                    }
                }
                LimitKeyPart::Route => out.push_str(input.route),
            }
        }
        Ok(self.compact(out))
    }

    /// A key longer than `MAX_KEY_BYTES` is kept as a digest, so what a
    /// client sends (a 32 KiB header value) never decides how much memory
    /// a key takes, here or in Redis. A first part that names an override
    /// (a configured tenant plan) stays readable, as the override is
    /// chosen by it.
    fn compact(&self, key: String) -> String {
        if key.len() <= MAX_KEY_BYTES {
            return key;
        }
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key.as_bytes());
        let first = key.split('\u{1f}').next().unwrap_or("");
        let mut out = String::with_capacity(MAX_KEY_BYTES);
        if self.overrides.contains_key(first) {
            out.push_str(first);
            out.push('\u{1f}');
        }
        out.push('#');
        for b in &digest.as_ref()[..16] {
            out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789abcdef"[usize::from(b & 0xf)]));
        }
        out
    }
}

/// IPv4 as is; IPv6 by its /64 (one subscriber gets a whole /64).
fn push_ip(out: &mut String, ip: IpAddr) {
    use std::fmt::Write;
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            let _ = write!(out, "{v4}");
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let _ = write!(out, "{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Shape;
    use super::super::policy::{Missing, PolicyOptions};
    use super::*;
    use http::HeaderValue;
    use std::time::Duration;

    #[test]
    fn ipv6_clients_share_their_64() {
        let mut a = String::new();
        push_ip(&mut a, "2001:db8:1:2:aaaa::1".parse().unwrap());
        let mut b = String::new();
        push_ip(&mut b, "2001:db8:1:2:bbbb::9".parse().unwrap());
        assert_eq!(a, b);
        let mut c = String::new();
        push_ip(&mut c, "::ffff:10.0.0.1".parse().unwrap());
        assert_eq!(c, "10.0.0.1");
    }

    #[test]
    fn key_parts_and_repeated_headers() {
        let shape = Shape {
            count: 1,
            window: Duration::from_secs(1),
            burst: 1,
        };
        let p = Policy::new(
            "t",
            PolicyOptions::for_tests(),
            vec![
                LimitKeyPart::Header(HeaderName::from_static("x-api-key")),
                LimitKeyPart::Route,
            ],
            shape,
            vec![],
            Missing::Reject,
        )
        .unwrap();
        let mut h = HeaderMap::new();
        let input = |h: &HeaderMap| -> Result<String, KeyError> {
            p.key(&KeyInput {
                headers: h,
                client: "1.1.1.1".parse().unwrap(),
                route: "r",
                identity: None,
            })
        };
        assert_eq!(input(&h), Err(KeyError::Missing));
        h.insert("x-api-key", HeaderValue::from_static("k1"));
        assert_eq!(input(&h).unwrap(), "k1\u{1f}r");
        h.append("x-api-key", HeaderValue::from_static("k2"));
        assert_eq!(input(&h), Err(KeyError::Repeated));
        // Long values are kept as a fixed-size digest, distinct per value.
        let long = |c: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                "x-api-key",
                HeaderValue::from_str(&c.repeat(32 << 10)).unwrap(),
            );
            input(&h).unwrap()
        };
        let (a, b) = (long("a"), long("b"));
        assert_eq!(a.len(), 33);
        assert!(a.starts_with('#'));
        assert_ne!(a, b);
        assert_eq!(a, long("a"));
        let exact = "k".repeat(MAX_KEY_BYTES - 2);
        h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_str(&exact).unwrap());
        assert_eq!(
            input(&h).unwrap(),
            format!("{exact}\u{1f}r"),
            "up to the bound: as it is"
        );
    }
}
