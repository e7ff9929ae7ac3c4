//! Finding the bearer token in a request, and reading its JOSE header.
//!
//! The gateway must never verify one token and forward another: a request
//! with two `Authorization` headers, or with tokens in two places (or twice
//! in one place) that differ, is refused.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::header::{AUTHORIZATION, COOKIE};
use http::{HeaderMap, HeaderName};
use jsonwebtoken::Algorithm;

use crate::routing::matchers::decode;

/// Where a token may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A header; `Authorization` must say `Bearer <token>`, other headers
    /// carry the token alone (an optional `Bearer ` is stripped).
    Header(HeaderName),
    /// A cookie.
    Cookie(String),
    /// A query parameter.
    Query(String),
}

impl Source {
    /// Parses `header:NAME`, `cookie:NAME` or `query:NAME`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (kind, name) = text
            .split_once(':')
            .ok_or_else(|| format!("`{text}`: use header:NAME, cookie:NAME or query:NAME"))?;
        if name.is_empty() {
            return Err(format!("`{text}`: the name is empty"));
        }
        match kind {
            "header" => HeaderName::from_bytes(name.as_bytes())
                .map(Source::Header)
                .map_err(|_| format!("`{name}` is not a header name")),
            "cookie" => Ok(Source::Cookie(name.to_owned())),
            "query" => Ok(Source::Query(name.to_owned())),
            _ => Err(format!(
                "`{text}`: use header:NAME, cookie:NAME or query:NAME"
            )),
        }
    }
}

/// Why a request's token could not be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Conflict {
    /// More than one `Authorization` header.
    TwoAuthorizationHeaders,
    /// Tokens in two places (or twice in one) that differ.
    Disagree,
}

/// The token in `headers` / `query` from the first source that has one.
pub(crate) fn extract<'a>(
    sources: &[Source],
    headers: &'a HeaderMap,
    query: Option<&'a str>,
) -> Result<Option<std::borrow::Cow<'a, str>>, Conflict> {
    let mut auth = headers.get_all(AUTHORIZATION).iter();
    if auth.next().is_some() && auth.next().is_some() {
        return Err(Conflict::TwoAuthorizationHeaders);
    }
    let mut found: Option<std::borrow::Cow<'a, str>> = None;
    let mut offer = |t: std::borrow::Cow<'a, str>| -> Result<(), Conflict> {
        match &found {
            Some(f) if *f != t => Err(Conflict::Disagree),
            Some(_) => Ok(()),
            None => {
                found = Some(t);
                Ok(())
            }
        }
    };
    for source in sources {
        match source {
            Source::Header(name) => {
                for v in headers.get_all(name) {
                    let Ok(v) = v.to_str() else {
                        continue;
                    };
                    let bearer = strip_bearer(v);
                    let token = if *name == AUTHORIZATION {
                        // Another scheme (Basic, ...) carries no bearer token.
                        match bearer {
                            Some(t) => t,
                            None => continue,
                        }
                    } else {
                        bearer.unwrap_or(v.trim())
                    };
                    offer(token.into())?;
                }
            }
            Source::Cookie(name) => {
                for v in headers
                    .get_all(COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                {
                    for pair in v.split(';') {
                        if let Some((k, val)) = pair.trim().split_once('=')
                            && k == name
                        {
                            offer(val.trim_matches('"').into())?;
                        }
                    }
                }
            }
            Source::Query(name) => {
                for pair in query.unwrap_or("").split('&') {
                    if let Some((k, val)) = pair.split_once('=')
                        && decode(k) == name.as_str()
                    {
                        offer(decode(val))?;
                    }
                }
            }
        }
    }
    Ok(found)
}

/// The token after a case-insensitive `Bearer ` scheme.
fn strip_bearer(v: &str) -> Option<&str> {
    let v = v.trim();
    let (scheme, rest) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(rest.trim_start())
}

/// What the gateway reads from a token's JOSE header before verifying.
#[derive(Debug)]
pub(crate) struct JoseHeader {
    /// `alg`.
    pub alg: Algorithm,
    /// `kid`.
    pub kid: Option<String>,
}

/// Why a JOSE header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeaderError {
    /// Not three base64url parts, or the header is not a JSON object.
    Malformed,
    /// `alg` is missing, `none`, or unknown.
    BadAlgorithm,
    /// A `crit` header: this gateway implements no JWS extensions.
    Critical,
}

/// Reads the header of a compact JWS (`header.payload.signature`).
pub(crate) fn jose_header(token: &str) -> Result<JoseHeader, HeaderError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeaderError::Malformed);
    };
    if h.is_empty() || p.is_empty() || s.is_empty() {
        return Err(HeaderError::Malformed);
    }
    let raw = URL_SAFE_NO_PAD
        .decode(h)
        .map_err(|_| HeaderError::Malformed)?;
    #[derive(serde::Deserialize)]
    struct Raw {
        alg: Option<String>,
        kid: Option<serde_json::Value>,
        crit: Option<serde_json::Value>,
    }
    let raw: Raw = serde_json::from_slice(&raw).map_err(|_| HeaderError::Malformed)?;
    if raw.crit.is_some() {
        return Err(HeaderError::Critical);
    }
    let alg = raw
        .alg
        .as_deref()
        .and_then(|a| a.parse::<Algorithm>().ok())
        .ok_or(HeaderError::BadAlgorithm)?;
    let kid = match raw.kid {
        None => None,
        Some(serde_json::Value::String(k)) => Some(k),
        Some(_) => return Err(HeaderError::Malformed),
    };
    Ok(JoseHeader { alg, kid })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn sources() -> Vec<Source> {
        [
            "header:authorization",
            "cookie:access_token",
            "query:access_token",
        ]
        .iter()
        .map(|s| Source::parse(s).unwrap())
        .collect()
    }

    #[test]
    fn first_source_wins_and_agreeing_copies_pass() {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_static("bearer abc"));
        h.insert(COOKIE, HeaderValue::from_static("x=1; access_token=abc"));
        let t = extract(&sources(), &h, Some("access_token=abc")).unwrap();
        assert_eq!(t.as_deref(), Some("abc"));
        let empty = HeaderMap::new();
        assert_eq!(extract(&sources(), &empty, Some("a=b")).unwrap(), None);
    }

    #[test]
    fn disagreeing_or_doubled_tokens_are_refused() {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        assert_eq!(
            extract(&sources(), &h, Some("access_token=xyz")),
            Err(Conflict::Disagree)
        );
        h.append(AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        assert_eq!(
            extract(&sources(), &h, None),
            Err(Conflict::TwoAuthorizationHeaders)
        );
        assert_eq!(
            extract(
                &sources(),
                &HeaderMap::new(),
                Some("access_token=a&access_token=b")
            ),
            Err(Conflict::Disagree)
        );
    }

    #[test]
    fn other_schemes_carry_no_bearer_token() {
        let mut h = HeaderMap::new();
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_static("Basic dXNlcjpwdw=="),
        );
        assert_eq!(extract(&sources(), &h, None).unwrap(), None);
    }

    #[test]
    fn jose_header_rules() {
        let enc = |j: &str| URL_SAFE_NO_PAD.encode(j);
        let tok = |h: &str| format!("{}.e30.c2ln", enc(h));
        let h = jose_header(&tok(r#"{"alg":"RS256","kid":"k1"}"#)).unwrap();
        assert_eq!((h.alg, h.kid.as_deref()), (Algorithm::RS256, Some("k1")));
        assert_eq!(
            jose_header(&tok(r#"{"alg":"none"}"#)).unwrap_err(),
            HeaderError::BadAlgorithm
        );
        assert_eq!(
            jose_header(&tok(r#"{"alg":"RS256","crit":["exp"]}"#)).unwrap_err(),
            HeaderError::Critical
        );
        assert_eq!(jose_header("a.b").unwrap_err(), HeaderError::Malformed);
        assert_eq!(
            jose_header(&format!("{}.e30.c2ln.x.y", enc(r#"{"alg":"RS256"}"#))).unwrap_err(),
            HeaderError::Malformed
        );
    }
}
