//! Negotiation: the codings the gateway compresses with, and the one an
//! `Accept-Encoding` asks for (RFC 9110 §12.5.3).

use http::HeaderMap;
use http::header::ACCEPT_ENCODING;

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

pub(super) const ALGORITHMS: [Algorithm; 3] = [Algorithm::Zstd, Algorithm::Br, Algorithm::Gzip];

impl Algorithm {
    /// The `Content-Encoding` token.
    pub fn token(self) -> &'static str {
        match self {
            Algorithm::Zstd => "zstd",
            Algorithm::Br => "br",
            Algorithm::Gzip => "gzip",
        }
    }

    pub(super) fn index(self) -> usize {
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
    use http::HeaderValue;

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
}
