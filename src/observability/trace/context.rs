//! W3C Trace Context (`traceparent`, `tracestate`): continued from the
//! request or started here, written on each request sent upstream.

use std::time::Instant;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::{Recording, Tracer};
use crate::hash::hex_into;

/// `traceparent`.
pub(crate) static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// A W3C trace context, continued or started here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TraceContext {
    /// 32 lower-case hex digits.
    pub(super) trace_id: [u8; 32],
    /// Our span id (16 hex digits), sent upstream as the parent id.
    pub(super) span_id: [u8; 16],
    /// The incoming parent id, for a continued trace.
    pub(super) parent: Option<[u8; 16]>,
    /// Trace flags, 2 hex digits.
    pub(super) flags: [u8; 2],
    /// Whether the incoming traceparent was valid (tracestate is kept then).
    pub continued: bool,
}

fn is_lower_hex(s: &[u8]) -> bool {
    s.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// True when trace flags (2 hex digits) have the sampled bit.
pub(crate) fn sampled_flag(flags: &[u8; 2]) -> bool {
    std::str::from_utf8(flags)
        .ok()
        .and_then(|f| u8::from_str_radix(f, 16).ok())
        .is_some_and(|f| f & 1 == 1)
}

impl TraceContext {
    /// Continues a valid `traceparent` or starts a new trace. With a
    /// tracer, a new trace's sampled flag is the tracer's decision; without
    /// one, it is set (the gateway records nothing, a later hop may).
    pub(crate) fn from_headers(h: &HeaderMap, tracer: Option<&Tracer>) -> Self {
        let mut span_id = [0u8; 16];
        hex_into(u128::from(fastrand::u64(1..)), &mut span_id);
        if let Some(tp) = h.get(&TRACEPARENT).map(HeaderValue::as_bytes)
            && let Some((trace, parent, flags)) = parse_traceparent(tp)
        {
            let mut t = TraceContext {
                trace_id: [0; 32],
                span_id,
                parent: Some([0; 16]),
                flags: [0; 2],
                continued: true,
            };
            t.trace_id.copy_from_slice(trace);
            if let Some(p) = &mut t.parent {
                p.copy_from_slice(parent);
            }
            t.flags.copy_from_slice(flags);
            return t;
        }
        let mut trace_id = [0u8; 32];
        hex_into(fastrand::u128(1..), &mut trace_id);
        let sampled = tracer.is_none_or(|t| t.samples(&trace_id));
        TraceContext {
            trace_id,
            span_id,
            parent: None,
            flags: if sampled { *b"01" } else { *b"00" },
            continued: false,
        }
    }

    /// The record of a request traced by `tracer` (parent-based: a
    /// continued trace is recorded when its parent was sampled), or
    /// `None`.
    pub(crate) fn recording(&self, h: &HeaderMap, start: Instant) -> Option<Box<Recording>> {
        if !sampled_flag(&self.flags) {
            return None;
        }
        let tracestate = self
            .continued
            .then(|| h.get(&TRACESTATE).cloned())
            .flatten();
        Some(Recording::new(self.clone(), tracestate, start))
    }

    /// The trace id as text.
    pub(crate) fn trace_id(&self) -> &str {
        std::str::from_utf8(&self.trace_id).unwrap_or("")
    }

    /// Our span id as text.
    #[cfg(test)]
    fn span_id(&self) -> &str {
        std::str::from_utf8(&self.span_id).unwrap_or("")
    }

    /// Writes `traceparent` (and drops `tracestate` for a new trace).
    pub(crate) fn apply(&self, h: &mut HeaderMap) {
        if let Some(v) = traceparent(&self.trace_id, &self.span_id, &self.flags) {
            h.insert(&TRACEPARENT, v);
        }
        if !self.continued {
            h.remove(&TRACESTATE);
        }
    }
}

/// A version-00 `traceparent` value naming `parent` (16 hex digits) in
/// trace `trace_id` (32) with `flags` (2).
pub(crate) fn traceparent(
    trace_id: &[u8; 32],
    parent: &[u8; 16],
    flags: &[u8; 2],
) -> Option<HeaderValue> {
    let mut buf = [0u8; 55];
    buf[..3].copy_from_slice(b"00-");
    buf[3..35].copy_from_slice(trace_id);
    buf[35] = b'-';
    buf[36..52].copy_from_slice(parent);
    buf[52] = b'-';
    buf[53..].copy_from_slice(flags);
    HeaderValue::from_bytes(&buf).ok()
}

/// A span id as 16 hex digits.
pub(crate) fn span_hex(id: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    hex_into(u128::from(id), &mut out);
    out
}

/// `version-traceid-parentid-flags` (W3C Trace Context §3.2): returns the
/// trace id, parent id and flags of a valid header.
fn parse_traceparent(tp: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    if tp.len() < 55 || tp[2] != b'-' || tp[35] != b'-' || tp[52] != b'-' {
        return None;
    }
    let (version, trace, parent, flags) = (&tp[..2], &tp[3..35], &tp[36..52], &tp[53..55]);
    // Version 00 has exactly these fields; later versions may append more.
    let rest_ok = if version == b"00" {
        tp.len() == 55
    } else {
        tp.len() == 55 || tp[55] == b'-'
    };
    let ok = is_lower_hex(version)
        && version != b"ff"
        && rest_ok
        && is_lower_hex(trace)
        && trace.iter().any(|b| *b != b'0')
        && is_lower_hex(parent)
        && parent.iter().any(|b| *b != b'0')
        && is_lower_hex(flags);
    ok.then_some((trace, parent, flags))
}

#[cfg(test)]
impl TraceContext {
    /// A context with the given hex ids, as a `traceparent` would give.
    pub(super) fn of(
        trace_id: [u8; 32],
        span_id: [u8; 16],
        parent: Option<[u8; 16]>,
        flags: [u8; 2],
    ) -> Self {
        Self {
            trace_id,
            span_id,
            parent,
            flags,
            continued: parent.is_some(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_context_continues_valid_and_restarts_invalid() {
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        let t = TraceContext::from_headers(&h, None);
        assert!(t.continued);
        assert_eq!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(t.span_id(), "00f067aa0ba902b7");
        assert_eq!(t.span_id().len(), 16);
        let mut out = HeaderMap::new();
        t.apply(&mut out);
        let tp = out["traceparent"].to_str().unwrap();
        assert!(
            tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && tp.ends_with("-01"),
            "{tp}"
        );
        h.insert(
            "traceparent",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        assert!(!TraceContext::from_headers(&h, None).continued);
        h.insert(
            "traceparent",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        assert!(!TraceContext::from_headers(&h, None).continued);
    }
}
