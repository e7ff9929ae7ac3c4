//! Response compression (end of stage 7, before stage 8 stores): a
//! route's `compression` negotiates a content coding from the request's
//! `Accept-Encoding` (q-values first, then the route's order), and an
//! upstream response that qualifies is compressed as it streams
//! (`body.rs`, async-compression), never buffered whole. `negotiate.rs`
//! reads `Accept-Encoding`; `types.rs` holds the `content_types` patterns;
//! this file decides per response and rewrites its head.
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
mod negotiate;
mod types;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::header::{
    ACCEPT_ENCODING, ACCEPT_RANGES, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE,
    ETAG, VARY,
};
use http::{HeaderMap, HeaderValue, StatusCode};
use prometheus::IntCounter;

pub(crate) use body::Encoded;
pub use negotiate::{Algorithm, Coding, negotiate};
pub use types::{DEFAULT_TYPES, TypePattern};

use negotiate::ALGORITHMS;

use crate::observability::metrics::metrics;

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

#[cfg(test)]
mod tests {
    use super::*;

    fn compression() -> Compression {
        Compression::new(
            "unit",
            CompressionSettings {
                algorithms: ALGORITHMS.to_vec(),
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
        let ae = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(ACCEPT_ENCODING, HeaderValue::from_static(v));
            h
        };
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
