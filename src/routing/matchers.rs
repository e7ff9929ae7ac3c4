//! Method, header and query constraints of a route, checked after the path
//! matched.

use std::borrow::Cow;

use http::{HeaderMap, HeaderName, Method};
use regex::Regex;

/// One header or query value constraint.
#[derive(Debug, Clone)]
pub enum ValueMatcher {
    /// Some value equals this.
    Exact(String),
    /// Some value matches this anchored regex.
    Regex(Regex),
    /// Present (true) or absent (false).
    Present(bool),
}

impl ValueMatcher {
    fn test<'a>(&self, mut values: impl Iterator<Item = &'a [u8]>) -> bool {
        match self {
            ValueMatcher::Present(want) => values.next().is_some() == *want,
            ValueMatcher::Exact(v) => values.any(|x| x == v.as_bytes()),
            ValueMatcher::Regex(r) => {
                values.any(|x| std::str::from_utf8(x).is_ok_and(|s| r.is_match(s)))
            }
        }
    }
}

/// Everything a route checks besides host and path.
#[derive(Debug, Clone, Default)]
pub struct Constraints {
    /// Allowed methods; empty allows any.
    pub methods: Vec<Method>,
    /// Header constraints.
    pub headers: Vec<(HeaderName, ValueMatcher)>,
    /// Query parameter constraints (names and values compared decoded).
    pub query: Vec<(String, ValueMatcher)>,
}

/// Why a route whose path matched was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The method is not in the route's list.
    Method,
    /// A header constraint failed.
    Header,
    /// A query constraint failed.
    Query,
}

impl Constraints {
    /// Checks method, then headers, then query.
    pub fn check(
        &self,
        method: &Method,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<(), Rejection> {
        if !self.methods.is_empty() && !self.methods.contains(method) {
            return Err(Rejection::Method);
        }
        for (name, m) in &self.headers {
            if !m.test(headers.get_all(name).iter().map(|v| v.as_bytes())) {
                return Err(Rejection::Header);
            }
        }
        for (name, m) in &self.query {
            let values = query_values(query.unwrap_or(""), name);
            if !m.test(values.iter().map(|v| v.as_bytes())) {
                return Err(Rejection::Query);
            }
        }
        Ok(())
    }
}

/// Decoded values of query parameter `name` (`+` is a space, as in forms).
fn query_values<'q>(query: &'q str, name: &str) -> Vec<Cow<'q, str>> {
    query
        .split('&')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k) == name).then(|| decode(v))
        })
        .collect()
}

/// Percent-decodes a query component; invalid escapes stay as written.
pub fn decode(s: &str) -> Cow<'_, str> {
    if !s.contains(['%', '+']) {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len()
                && b[i + 1].is_ascii_hexdigit()
                && b[i + 2].is_ascii_hexdigit() =>
            {
                let v = (hexval(b[i + 1]) << 4) | hexval(b[i + 2]);
                out.push(v);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

fn hexval(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => c.wrapping_sub(b'A').wrapping_add(10),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_decode() {
        assert_eq!(
            query_values("a=1&version=2&version=3", "version"),
            vec!["2", "3"]
        );
        assert_eq!(query_values("q=a+b%21", "q"), vec!["a b!"]);
        assert_eq!(query_values("flag", "flag"), vec![""]);
        assert_eq!(decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn constraints_check_in_order() {
        let c = Constraints {
            methods: vec![Method::GET],
            headers: vec![(
                HeaderName::from_static("x-v"),
                ValueMatcher::Exact("2".into()),
            )],
            query: vec![("beta".into(), ValueMatcher::Present(true))],
        };
        let mut h = HeaderMap::new();
        assert_eq!(c.check(&Method::POST, &h, None), Err(Rejection::Method));
        assert_eq!(c.check(&Method::GET, &h, None), Err(Rejection::Header));
        h.insert("x-v", "2".parse().unwrap());
        assert_eq!(
            c.check(&Method::GET, &h, Some("a=1")),
            Err(Rejection::Query)
        );
        assert_eq!(c.check(&Method::GET, &h, Some("beta=1")), Ok(()));
    }
}
