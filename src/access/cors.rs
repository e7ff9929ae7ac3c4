//! CORS (the Fetch standard's CORS protocol) for a route: preflights
//! answered by the gateway in the guard stage, before authentication and
//! rate limits (browsers send no credentials on a preflight), and the
//! `Access-Control-*` headers of actual responses set in the respond
//! stage. A disallowed origin gets no CORS headers at all, so the browser
//! blocks the response; never an error page.
//!
//! On a route with `cors`, the gateway is the CORS authority: the
//! upstream's own `Access-Control-*` response headers are replaced.

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use prometheus::IntCounter;
use regex::Regex;

/// One `allow_origins` entry.
#[derive(Debug)]
pub enum OriginRule {
    /// Any origin (`*`).
    Any,
    /// One origin, `scheme://host[:port]`, compared without regard to case.
    Exact(String),
    /// `[scheme://]*.suffix[:port]`: one or more labels before `suffix`.
    Wildcard {
        /// Required scheme, if the rule names one.
        scheme: Option<String>,
        /// `.example.com`.
        suffix: String,
        /// Required port, if the rule names one.
        port: Option<String>,
    },
    /// A regex over the whole origin (anchored).
    Regex(Regex),
}

impl OriginRule {
    /// Parses one entry (regexes come separately).
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        if t == "*" {
            return Ok(OriginRule::Any);
        }
        let (scheme, rest) = match t.split_once("://") {
            Some((s, r)) => (Some(s.to_ascii_lowercase()), r),
            None => (None, t),
        };
        if rest.contains('/') {
            return Err(format!("`{t}`: an origin has no path"));
        }
        if let Some(wild) = rest.strip_prefix("*.") {
            let (host, port) = match wild.rsplit_once(':') {
                Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => (h, Some(p.to_owned())),
                _ => (wild, None),
            };
            if host.is_empty() || host.contains('*') {
                return Err(format!("`{t}`: use `*.example.com`"));
            }
            return Ok(OriginRule::Wildcard {
                scheme,
                suffix: format!(".{}", host.to_ascii_lowercase()),
                port,
            });
        }
        if t.contains('*') {
            return Err(format!(
                "`{t}`: `*` is allowed alone or as the first label (`*.example.com`)"
            ));
        }
        if scheme.is_none() && t != "null" {
            return Err(format!(
                "`{t}`: an exact origin has a scheme (`https://{t}`)"
            ));
        }
        Ok(OriginRule::Exact(t.to_ascii_lowercase()))
    }

    fn matches(&self, origin: &str) -> bool {
        match self {
            OriginRule::Any => true,
            OriginRule::Exact(o) => origin.eq_ignore_ascii_case(o),
            OriginRule::Regex(r) => r.is_match(origin),
            OriginRule::Wildcard {
                scheme,
                suffix,
                port,
            } => {
                let Some((s, rest)) = origin.split_once("://") else {
                    return false;
                };
                let (host, p) = match rest.rsplit_once(':') {
                    Some((h, p)) if !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()) => {
                        (h, Some(p))
                    }
                    _ => (rest, None),
                };
                let host = host.to_ascii_lowercase();
                scheme.as_deref().is_none_or(|x| s.eq_ignore_ascii_case(x))
                    && port.as_deref().is_none_or(|x| p == Some(x))
                    && host.len() > suffix.len()
                    && host.ends_with(suffix.as_str())
            }
        }
    }
}

/// A route's compiled `cors`.
pub struct Cors {
    /// Allowed origins.
    pub origins: Vec<OriginRule>,
    /// Allowed methods (for the preflight's check).
    pub methods: Vec<Method>,
    /// `Access-Control-Allow-Methods`.
    pub methods_value: HeaderValue,
    /// Allowed request headers (lower case); empty with `any_header`.
    pub headers: Vec<HeaderName>,
    /// `allow_headers: ["*"]`: whatever the preflight asks for.
    pub any_header: bool,
    /// `Access-Control-Expose-Headers`.
    pub expose: Option<HeaderValue>,
    /// `Access-Control-Allow-Credentials: true`.
    pub credentials: bool,
    /// `Access-Control-Max-Age`.
    pub max_age: Option<HeaderValue>,
    /// `tollgate_cors_requests_total{route, kind, result}`: preflight
    /// allowed / refused, actual allowed / refused.
    pub counters: [IntCounter; 4],
}

static VARY_PREFLIGHT: HeaderValue = HeaderValue::from_static(
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
);

/// True for a CORS preflight: `OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`.
pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS
        && headers.contains_key(ORIGIN)
        && headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
}

/// The method a preflight asks about (for routing it), if valid.
pub fn requested_method(headers: &HeaderMap) -> Option<Method> {
    Method::from_bytes(headers.get(ACCESS_CONTROL_REQUEST_METHOD)?.as_bytes()).ok()
}

impl Cors {
    fn allowed(&self, origin: &HeaderValue) -> bool {
        origin
            .to_str()
            .is_ok_and(|o| self.origins.iter().any(|r| r.matches(o)))
    }

    /// `Access-Control-Allow-Origin` for an allowed origin: `*` when any
    /// origin is allowed without credentials, else the origin itself.
    fn allow_origin(&self, origin: &HeaderValue) -> HeaderValue {
        let any = self.origins.iter().any(|r| matches!(r, OriginRule::Any));
        if any && !self.credentials {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        }
    }

    /// The answer to a preflight (204): the CORS headers when the origin,
    /// the method and every requested header are allowed; none otherwise.
    pub fn preflight(&self, headers: &HeaderMap) -> HeaderMap {
        let mut out = HeaderMap::new();
        out.insert(VARY, VARY_PREFLIGHT.clone());
        let Some(origin) = headers.get(ORIGIN) else {
            return out;
        };
        let method_ok = requested_method(headers).is_some_and(|m| self.methods.contains(&m));
        let asked = headers.get(ACCESS_CONTROL_REQUEST_HEADERS);
        let headers_ok = self.any_header
            || asked.and_then(|v| v.to_str().ok()).is_none_or(|list| {
                list.split(',')
                    .map(str::trim)
                    .filter(|h| !h.is_empty())
                    .all(|h| {
                        self.headers
                            .iter()
                            .any(|a| a.as_str().eq_ignore_ascii_case(h))
                    })
            });
        if !(self.allowed(origin) && method_ok && headers_ok) {
            self.counters[1].inc();
            return out;
        }
        self.counters[0].inc();
        out.insert(ACCESS_CONTROL_ALLOW_ORIGIN, self.allow_origin(origin));
        out.insert(ACCESS_CONTROL_ALLOW_METHODS, self.methods_value.clone());
        if self.any_header {
            if let Some(asked) = asked {
                out.insert(ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
            }
        } else if !self.headers.is_empty()
            && let Ok(v) = HeaderValue::try_from(
                self.headers
                    .iter()
                    .map(HeaderName::as_str)
                    .collect::<Vec<_>>()
                    .join(", "),
            )
        {
            out.insert(ACCESS_CONTROL_ALLOW_HEADERS, v);
        }
        if self.credentials {
            out.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(age) = &self.max_age {
            out.insert(ACCESS_CONTROL_MAX_AGE, age.clone());
        }
        out
    }

    /// Sets the CORS headers of an actual response: `Vary: Origin` always
    /// (the answer depends on it), the upstream's own `Access-Control-*`
    /// removed, and the gateway's for an allowed origin.
    pub fn respond(&self, origin: Option<&HeaderValue>, h: &mut HeaderMap) {
        for name in [
            ACCESS_CONTROL_ALLOW_ORIGIN,
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
            ACCESS_CONTROL_EXPOSE_HEADERS,
            ACCESS_CONTROL_ALLOW_METHODS,
            ACCESS_CONTROL_ALLOW_HEADERS,
            ACCESS_CONTROL_MAX_AGE,
        ] {
            h.remove(name);
        }
        let varies = h
            .get_all(VARY)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|v| v.trim().eq_ignore_ascii_case("origin") || v.trim() == "*");
        if !varies {
            h.append(VARY, HeaderValue::from_static("Origin"));
        }
        let Some(origin) = origin else {
            return;
        };
        if !self.allowed(origin) {
            self.counters[3].inc();
            return;
        }
        self.counters[2].inc();
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, self.allow_origin(origin));
        if self.credentials {
            h.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(e) = &self.expose {
            h.insert(ACCESS_CONTROL_EXPOSE_HEADERS, e.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(s: &str) -> OriginRule {
        OriginRule::parse(s).unwrap()
    }

    #[test]
    fn origins_match_exactly_by_wildcard_or_by_regex() {
        let exact = rule("https://App.example.com");
        assert!(exact.matches("https://app.example.com"));
        assert!(!exact.matches("http://app.example.com"));
        assert!(!exact.matches("https://app.example.com.evil.io"));
        let wild = rule("https://*.example.com");
        assert!(wild.matches("https://a.example.com"));
        assert!(wild.matches("https://a.b.example.com:8443"));
        assert!(!wild.matches("https://example.com"), "a label is needed");
        assert!(!wild.matches("https://evilexample.com"));
        assert!(!wild.matches("http://a.example.com"), "scheme named");
        let any_scheme = rule("*.example.com:8443");
        assert!(any_scheme.matches("http://a.example.com:8443"));
        assert!(!any_scheme.matches("http://a.example.com:9443"));
        let re =
            OriginRule::Regex(Regex::new("^https://pr-[0-9]+\\.preview\\.example\\.com$").unwrap());
        assert!(re.matches("https://pr-42.preview.example.com"));
        assert!(!re.matches("https://pr-x.preview.example.com"));
        assert!(rule("*").matches("https://anything.io"));
        assert!(rule("null").matches("null"));
        for bad in [
            "example.com",
            "https://a.*.com",
            "https://x.com/path",
            "*.*",
        ] {
            assert!(OriginRule::parse(bad).is_err(), "{bad}");
        }
    }
}
