//! Response compression (end of stage 7, before stage 8 stores): a
//! route's `compression` negotiates a content coding from the request's
//! `Accept-Encoding` (q-values first, then the route's order), and an
//! upstream response that qualifies is compressed as it streams
//! (`body.rs`, async-compression), never buffered whole.
//!
//! The request's `Accept-Encoding` is replaced by the negotiated coding
//! (or `identity`) before the cache lookup: the cache's `Vary` rules then
//! keep one variant per coding, stored compressed, so a hit is never
//! compressed again; and the upstream is asked for nothing else, so a
//! response it compressed itself is one the client accepts.
//!
//! Never compressed: a response that already has `Content-Encoding`, one
//! with `Cache-Control: no-transform` (or a request with it), 1xx, 204,
//! 206 and 304 responses, upgrades and gRPC, media types not listed, and
//! bodies whose `Content-Length` is below `min_size`. Request bodies are
//! never decompressed.

mod body;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::header::{
    ACCEPT_ENCODING, ACCEPT_RANGES, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE,
    ETAG, VARY,
};
use http::{HeaderMap, HeaderValue, StatusCode};
use prometheus::IntCounter;

pub(crate) use body::Encoded;

use crate::observability::metrics::metrics;

/// A content coding the gateway compresses with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Zstandard.
    Zstd,
    /// Brotli.
    Br,
    /// gzip.
    Gzip,
}

const ALGORITHMS: [Algorithm; 3] = [Algorithm::Zstd, Algorithm::Br, Algorithm::Gzip];

impl Algorithm {
    /// The `Content-Encoding` token.
    pub fn token(self) -> &'static str {
        match self {
            Algorithm::Zstd => "zstd",
            Algorithm::Br => "br",
            Algorithm::Gzip => "gzip",
        }
    }

    fn index(self) -> usize {
        match self {
            Algorithm::Zstd => 0,
            Algorithm::Br => 1,
            Algorithm::Gzip => 2,
        }
    }

    /// The level used when none is configured: what fits compressing on
    /// the fly (NGINX's and Envoy's gzip default, Cloudflare's brotli
    /// level for dynamic content, zstd's own default).
    pub fn default_level(self) -> i32 {
        match self {
            Algorithm::Zstd => 3,
            Algorithm::Br => 4,
            Algorithm::Gzip => 6,
        }
    }

    /// `level` within this coding's range.
    pub fn clamp(self, level: i32) -> i32 {
        match self {
            Algorithm::Zstd => level.clamp(1, 19),
            Algorithm::Br => level.clamp(0, 11),
            Algorithm::Gzip => level.clamp(1, 9),
        }
    }
}

/// The coding negotiated for one request: `None` is identity.
pub type Coding = Option<Algorithm>;

/// One `content_types` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypePattern {
    kind: String,
    sub: Sub,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Sub {
    Any,
    Suffix(String),
    Exact(String),
}

impl TypePattern {
    /// Parses `type/subtype`, `type/*` or `type/*+suffix`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim().to_ascii_lowercase();
        let bad = || format!("`{text}`: use type/subtype, type/* or type/*+suffix");
        let (kind, sub) = t.split_once('/').ok_or_else(bad)?;
        let token = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
        };
        if !token(kind) {
            return Err(bad());
        }
        let sub = match sub {
            "*" => Sub::Any,
            s if s.starts_with("*+") && token(&s[2..]) => Sub::Suffix(s[1..].to_owned()),
            s if token(s) => Sub::Exact(s.to_owned()),
            _ => return Err(bad()),
        };
        Ok(Self {
            kind: kind.to_owned(),
            sub,
        })
    }

    fn matches(&self, kind: &str, sub: &str) -> bool {
        self.kind == kind
            && match &self.sub {
                Sub::Any => true,
                Sub::Suffix(s) => sub.ends_with(s.as_str()),
                Sub::Exact(s) => s == sub,
            }
    }
}

/// The media types compressed when `content_types` is not given.
pub const DEFAULT_TYPES: [&str; 16] = [
    "text/html",
    "text/plain",
    "text/css",
    "text/javascript",
    "text/xml",
    "text/csv",
    "text/markdown",
    "application/json",
    "application/*+json",
    "application/x-ndjson",
    "application/javascript",
    "application/xml",
    "application/*+xml",
    "application/wasm",
    "image/svg+xml",
    "application/graphql-response+json",
];

/// Why a response was sent as it is (the `result` label), or the coding
/// it was compressed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Compressed(Algorithm),
    NotAccepted,
    Encoded,
    NoTransform,
    Status,
    ContentType,
    TooSmall,
    Overloaded,
}

const RESULTS: [&str; 10] = [
    "zstd",
    "br",
    "gzip",
    "not_accepted",
    "encoded",
    "no_transform",
    "status",
    "content_type",
    "too_small",
    "overloaded",
];

impl Outcome {
    fn index(self) -> usize {
        match self {
            Outcome::Compressed(a) => a.index(),
            Outcome::NotAccepted => 3,
            Outcome::Encoded => 4,
            Outcome::NoTransform => 5,
            Outcome::Status => 6,
            Outcome::ContentType => 7,
            Outcome::TooSmall => 8,
            Outcome::Overloaded => 9,
        }
    }
}

/// Settings of `Compression::new`.
pub struct CompressionSettings {
    /// Codings in order of preference.
    pub algorithms: Vec<Algorithm>,
    /// Smallest declared body compressed.
    pub min_size: u64,
    /// Media types compressed.
    pub types: Vec<TypePattern>,
    /// One level for every coding (clamped), or each one's default.
    pub level: Option<i32>,
    /// Responses compressed at once at most.
    pub max_concurrent: usize,
}

/// A compiled `routes[i].compression`.
pub struct Compression {
    algorithms: Vec<Algorithm>,
    min_size: u64,
    types: Vec<TypePattern>,
    levels: [i32; 3],
    max_concurrent: usize,
    active: Arc<AtomicUsize>,
    results: [IntCounter; 10],
    /// Per algorithm: bytes in, bytes out.
    bytes: [(IntCounter, IntCounter); 3],
}

/// What compressing one response needs: its coding and level, its byte
/// counters, and its slot among the route's `max_concurrent`.
pub(crate) struct Compressor {
    algorithm: Algorithm,
    level: i32,
    bytes_in: IntCounter,
    bytes_out: IntCounter,
    _slot: Slot,
}

/// Frees a compression slot when the response ends or is dropped.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Compression {
    /// The compression of route `route`; its counters exist at 0 from here.
    pub fn new(route: &str, s: CompressionSettings) -> Self {
        let m = metrics();
        let results = RESULTS.map(|r| m.compression_responses.with_label_values(&[route, r]));
        let bytes = ALGORITHMS.map(|a| {
            (
                m.compression_bytes
                    .with_label_values(&[route, a.token(), "in"]),
                m.compression_bytes
                    .with_label_values(&[route, a.token(), "out"]),
            )
        });
        let levels = ALGORITHMS.map(|a| a.clamp(s.level.unwrap_or(a.default_level())));
        Self {
            algorithms: s.algorithms,
            min_size: s.min_size,
            types: s.types,
            levels,
            max_concurrent: s.max_concurrent,
            active: Arc::new(AtomicUsize::new(0)),
            results,
            bytes,
        }
    }

    fn count(&self, r: Outcome) {
        if let Some(c) = self.results.get(r.index()) {
            c.inc();
        }
    }

    /// The coding for a request, and its `Accept-Encoding` replaced by it
    /// (`identity` when none is acceptable): the cache keys its variants
    /// on that value, and the upstream is asked for it alone.
    pub fn negotiate(&self, headers: &mut HeaderMap) -> Coding {
        let coding = if no_transform(headers) {
            None
        } else {
            negotiate(&self.algorithms, headers)
        };
        headers.insert(
            ACCEPT_ENCODING,
            HeaderValue::from_static(coding.map_or("identity", Algorithm::token)),
        );
        coding
    }

    /// Decides for one response and rewrites its head: `Vary` for every
    /// response whose body would be compressed for some client, then for
    /// a compressed one `Content-Encoding`, no `Content-Length` or
    /// `Accept-Ranges`, and a weak `ETag`. `Some` when the body must be
    /// compressed.
    pub(crate) fn decide(
        &self,
        status: StatusCode,
        headers: &mut HeaderMap,
        coding: Coding,
    ) -> Option<Compressor> {
        let result = self.judge(status, headers, coding);
        self.count(result);
        let Outcome::Compressed(algorithm) = result else {
            return None;
        };
        headers.insert(
            CONTENT_ENCODING,
            HeaderValue::from_static(algorithm.token()),
        );
        headers.remove(CONTENT_LENGTH);
        headers.remove(ACCEPT_RANGES);
        weaken_etag(headers);
        let (bytes_in, bytes_out) = self.bytes[algorithm.index()].clone();
        Some(Compressor {
            algorithm,
            level: self.levels[algorithm.index()],
            bytes_in,
            bytes_out,
            _slot: Slot(Arc::clone(&self.active)),
        })
    }

    fn judge(&self, status: StatusCode, headers: &mut HeaderMap, coding: Coding) -> Outcome {
        if status == StatusCode::NOT_MODIFIED {
            // The client's copy was compressed (with this coding): its
            // validator stays the weak one it was given.
            if coding.is_some() {
                weaken_etag(headers);
            }
            return Outcome::Status;
        }
        if status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::PARTIAL_CONTENT
            || headers.contains_key(http::header::CONTENT_RANGE)
        {
            return Outcome::Status;
        }
        if headers.contains_key(CONTENT_ENCODING) {
            return Outcome::Encoded;
        }
        if !self.compressible(headers) {
            return Outcome::ContentType;
        }
        if no_transform(headers) {
            return Outcome::NoTransform;
        }
        let declared = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n < self.min_size) {
            return Outcome::TooSmall;
        }
        add_vary(headers);
        let Some(algorithm) = coding else {
            return Outcome::NotAccepted;
        };
        if self.active.fetch_add(1, Ordering::AcqRel) >= self.max_concurrent {
            self.active.fetch_sub(1, Ordering::AcqRel);
            return Outcome::Overloaded;
        }
        Outcome::Compressed(algorithm)
    }

    fn compressible(&self, headers: &HeaderMap) -> bool {
        let Some(ct) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let essence = ct.split(';').next().unwrap_or("").trim();
        let Some((kind, sub)) = essence.split_once('/') else {
            return false;
        };
        let (kind, sub) = (kind.to_ascii_lowercase(), sub.to_ascii_lowercase());
        self.types.iter().any(|t| t.matches(&kind, &sub))
    }
}

/// `Cache-Control: no-transform`.
fn no_transform(headers: &HeaderMap) -> bool {
    headers
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| d.trim().eq_ignore_ascii_case("no-transform"))
}

/// Adds `Accept-Encoding` to `Vary` unless it is there (or `Vary: *`).
fn add_vary(headers: &mut HeaderMap) {
    let listed = headers
        .get_all(VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|n| n == "*" || n.eq_ignore_ascii_case("accept-encoding"));
    if !listed {
        headers.append(VARY, HeaderValue::from_static("Accept-Encoding"));
    }
}

/// A strong `ETag` becomes weak: the compressed bytes are not the ones
/// the origin's validator names.
fn weaken_etag(headers: &mut HeaderMap) {
    let Some(v) = headers.get(ETAG) else {
        return;
    };
    let b = v.as_bytes();
    if b.starts_with(b"W/") || !b.starts_with(b"\"") {
        return;
    }
    let mut weak = Vec::with_capacity(b.len() + 2);
    weak.extend_from_slice(b"W/");
    weak.extend_from_slice(b);
    if let Ok(v) = HeaderValue::from_bytes(&weak) {
        headers.insert(ETAG, v);
    }
}

/// The q-value of an `Accept-Encoding` member's parameters; `None` when
/// malformed (the member is ignored).
fn qvalue(params: &str) -> Option<f32> {
    let mut q = 1.0;
    for p in params.split(';') {
        let p = p.trim();
        if p.is_empty() {
            continue;
        }
        let (k, v) = p.split_once('=')?;
        if k.trim().eq_ignore_ascii_case("q") {
            let v = v.trim();
            // RFC 9110 §12.4.2: 0 to 1 with at most three decimals.
            if v.len() > 5 {
                return None;
            }
            q = v.parse::<f32>().ok().filter(|q| (0.0..=1.0).contains(q))?;
        }
    }
    Some(q)
}

/// The best of `offered` for this `Accept-Encoding`: the highest q-value
/// above 0, ties going to the earlier in `offered`; `*` stands for every
/// coding not named. No header, or nothing acceptable: identity.
pub fn negotiate(offered: &[Algorithm], headers: &HeaderMap) -> Coding {
    let mut named: [Option<f32>; 3] = [None; 3];
    let mut star = None;
    for v in headers.get_all(ACCEPT_ENCODING) {
        let Ok(v) = v.to_str() else {
            continue;
        };
        for member in v.split(',') {
            let (name, params) = member.split_once(';').unwrap_or((member, ""));
            let Some(q) = qvalue(params) else {
                continue;
            };
            let name = name.trim();
            let slot = if name.eq_ignore_ascii_case("zstd") {
                &mut named[0]
            } else if name.eq_ignore_ascii_case("br") {
                &mut named[1]
            } else if name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip") {
                &mut named[2]
            } else if name == "*" {
                &mut star
            } else {
                continue;
            };
            // Named twice: the higher counts.
            *slot = Some(slot.map_or(q, |old: f32| old.max(q)));
        }
    }
    let mut best: Option<(f32, Algorithm)> = None;
    for a in offered {
        let q = named[a.index()].or(star).unwrap_or(0.0);
        if q > 0.0 && best.is_none_or(|(bq, _)| q > bq) {
            best = Some((q, *a));
        }
    }
    best.map(|(_, a)| a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ae(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
        h
    }

    const ALL: [Algorithm; 3] = [Algorithm::Zstd, Algorithm::Br, Algorithm::Gzip];

    #[test]
    fn negotiation_follows_q_values_then_the_route_order() {
        use Algorithm::*;
        for (header, offered, want) in [
            ("gzip, deflate, br, zstd", &ALL[..], Some(Zstd)),
            ("gzip, deflate, br", &ALL[..], Some(Br)),
            ("gzip", &ALL[..], Some(Gzip)),
            ("x-gzip", &ALL[..], Some(Gzip)),
            ("GZIP, BR", &[Gzip, Br][..], Some(Gzip)),
            ("br;q=0.5, gzip;q=0.8", &ALL[..], Some(Gzip)),
            (
                "br;q=0.5, gzip;q=0.8, zstd;q=1.0",
                &[Br, Gzip][..],
                Some(Gzip),
            ),
            ("zstd;q=0, br;q=0, gzip;q=0", &ALL[..], None),
            ("*", &ALL[..], Some(Zstd)),
            ("*;q=0.1, br", &ALL[..], Some(Br)),
            ("*, zstd;q=0", &ALL[..], Some(Br)),
            ("identity", &ALL[..], None),
            ("deflate", &ALL[..], None),
            ("", &ALL[..], None),
            ("br;q=2, gzip", &ALL[..], Some(Gzip)),
            ("br;q=0.0001, gzip;q=0.1", &ALL[..], Some(Gzip)),
            ("br;q=abc, gzip;q=0.1", &ALL[..], Some(Gzip)),
            ("br ; q=0.9 , gzip ; q=0.95", &ALL[..], Some(Gzip)),
            ("gzip;q=0, gzip;q=1", &ALL[..], Some(Gzip)),
        ] {
            assert_eq!(negotiate(offered, &ae(header)), want, "{header}");
        }
        assert_eq!(negotiate(&ALL, &HeaderMap::new()), None);
    }

    #[test]
    fn type_patterns() {
        let p = |s: &str| TypePattern::parse(s).unwrap();
        assert!(p("text/*").matches("text", "csv"));
        assert!(p("application/*+json").matches("application", "problem+json"));
        assert!(!p("application/*+json").matches("application", "json"));
        assert!(p("Application/JSON").matches("application", "json"));
        for bad in ["json", "text/", "/x", "a b/c", "text/*+"] {
            assert!(TypePattern::parse(bad).is_err(), "{bad}");
        }
    }

    fn compression() -> Compression {
        Compression::new(
            "unit",
            CompressionSettings {
                algorithms: ALL.to_vec(),
                min_size: 100,
                types: DEFAULT_TYPES
                    .iter()
                    .map(|t| TypePattern::parse(t).unwrap())
                    .collect(),
                level: None,
                max_concurrent: 1,
            },
        )
    }

    fn head(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn which_responses_are_compressed_and_how_their_head_changes() {
        let c = compression();
        let ok = StatusCode::OK;
        let json = [("content-type", "application/json; charset=utf-8")];
        let mut h = head(&[
            json[0],
            ("content-length", "5000"),
            ("etag", "\"v1\""),
            ("accept-ranges", "bytes"),
            ("vary", "Origin"),
        ]);
        let z = c.decide(ok, &mut h, Some(Algorithm::Br));
        assert!(z.is_some());
        assert_eq!(h["content-encoding"], "br");
        assert_eq!(h["etag"], "W/\"v1\"");
        assert!(h.get("content-length").is_none() && h.get("accept-ranges").is_none());
        let vary: Vec<_> = h.get_all("vary").iter().collect();
        assert_eq!(vary, ["Origin", "Accept-Encoding"]);
        // One slot: a second response at once goes out as it is.
        let mut h2 = head(&json);
        assert!(c.decide(ok, &mut h2, Some(Algorithm::Gzip)).is_none());
        assert!(h2.get("content-encoding").is_none());
        assert_eq!(h2["vary"], "Accept-Encoding");
        drop(z);
        assert!(
            c.decide(ok, &mut head(&json), Some(Algorithm::Gzip))
                .is_some()
        );

        for (status, pairs, coding, why) in [
            (
                ok,
                vec![json[0], ("content-encoding", "gzip")],
                Some(Algorithm::Br),
                "encoded",
            ),
            (
                ok,
                vec![("content-type", "image/png")],
                Some(Algorithm::Br),
                "type",
            ),
            (ok, vec![], Some(Algorithm::Br), "no type"),
            (
                ok,
                vec![json[0], ("cache-control", "public, no-transform")],
                Some(Algorithm::Br),
                "no-transform",
            ),
            (
                ok,
                vec![json[0], ("content-length", "99")],
                Some(Algorithm::Br),
                "small",
            ),
            (
                StatusCode::PARTIAL_CONTENT,
                vec![json[0]],
                Some(Algorithm::Br),
                "206",
            ),
            (
                StatusCode::NO_CONTENT,
                vec![json[0]],
                Some(Algorithm::Br),
                "204",
            ),
            (
                ok,
                vec![json[0], ("content-range", "bytes 0-1/2")],
                Some(Algorithm::Br),
                "range",
            ),
            (ok, vec![json[0]], None, "identity"),
        ] {
            let mut h = head(&pairs);
            assert!(c.decide(status, &mut h, coding).is_none(), "{why}");
            assert_eq!(
                h.get("content-encoding").map(|v| v.to_str().unwrap()),
                pairs
                    .iter()
                    .find(|(k, _)| *k == "content-encoding")
                    .map(|(_, v)| *v),
                "{why}"
            );
        }
        // 304: never compressed; its validator matches the weak one sent.
        let mut h = head(&[("etag", "\"v1\"")]);
        assert!(
            c.decide(StatusCode::NOT_MODIFIED, &mut h, Some(Algorithm::Br))
                .is_none()
        );
        assert_eq!(h["etag"], "W/\"v1\"");
        let mut h = head(&[("etag", "\"v1\"")]);
        assert!(c.decide(StatusCode::NOT_MODIFIED, &mut h, None).is_none());
        assert_eq!(h["etag"], "\"v1\"");
    }

    #[test]
    fn a_request_with_no_transform_or_nothing_acceptable_asks_for_identity() {
        let c = compression();
        let mut h = ae("br");
        assert_eq!(c.negotiate(&mut h), Some(Algorithm::Br));
        assert_eq!(h["accept-encoding"], "br");
        let mut h = ae("gzip, br");
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-transform"));
        assert_eq!(c.negotiate(&mut h), None);
        assert_eq!(h["accept-encoding"], "identity");
        let mut h = HeaderMap::new();
        assert_eq!(c.negotiate(&mut h), None);
        assert_eq!(h["accept-encoding"], "identity");
    }
}
