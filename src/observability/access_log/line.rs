//! One access-log line as JSON, written by hand into a buffer.

use std::io::Write;
use std::net::IpAddr;
use std::time::SystemTime;

/// One request, as logged.
///
/// Written by `write_json`, by hand: the keys are literals, strings are
/// escaped in one pass and numbers written without `core::fmt`. The output
/// is byte for byte what `serde_json` made of this struct before (a test
/// holds the two side by side), in 40% of the time (`benches/access_log.rs`).
#[derive(Debug)]
#[cfg_attr(test, derive(serde::Serialize))]
pub struct LogLine<'a> {
    /// RFC 3339 UTC time the request arrived.
    #[cfg_attr(test, serde(serialize_with = "tests::rfc3339_field"))]
    pub time: SystemTime,
    /// Request id (sent upstream and returned).
    pub request_id: &'a str,
    /// W3C trace id.
    pub trace_id: &'a str,
    /// Client address.
    #[cfg_attr(test, serde(serialize_with = "tests::display_field"))]
    pub client: IpAddr,
    /// Method.
    pub method: &'a str,
    /// Host (as sent).
    pub host: &'a str,
    /// Path (as sent, without query).
    pub path: &'a str,
    /// Query string, only with `access_log.query: true` (token parameters
    /// redacted).
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    pub query: Option<&'a str>,
    /// `HTTP/1.0`, `HTTP/1.1` or `HTTP/2`.
    pub protocol: &'static str,
    /// TLS version (`1.2`, `1.3`) on TLS connections.
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    pub tls_version: Option<&'static str>,
    /// The SNI name the client sent, on TLS connections.
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    pub sni: Option<&'a str>,
    /// `User-Agent`, when sent.
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    pub user_agent: Option<&'a str>,
    /// The status the upstream answered with, when it answered.
    pub upstream_status: Option<u16>,
    /// Tries made upstream (0: not forwarded).
    pub attempts: u32,
    /// A gRPC call's status, the upstream's or the gateway's.
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    pub grpc_status: Option<u16>,
    /// Response status.
    pub status: u16,
    /// Request body bytes read (as streamed, also for chunked bodies).
    pub bytes_in: u64,
    /// Response body bytes written.
    pub bytes_out: u64,
    /// Total duration in seconds.
    pub duration: f64,
    /// Time to the upstream response head, when proxied.
    pub upstream_duration: Option<f64>,
    /// Route name.
    pub route: &'a str,
    /// Upstream name.
    pub upstream: &'a str,
    /// Endpoint `host:port`.
    pub endpoint: &'a str,
    /// Why the gateway answered itself (`no_route`, `upstream_timeout`, …).
    pub reason: &'a str,
    /// Tenant of the verified token.
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    pub tenant: Option<&'a str>,
    /// `sub` of the verified token.
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    pub sub: Option<&'a str>,
}

impl LogLine<'_> {
    /// Appends the line as one JSON object (no newline). Fields in the
    /// struct's order; `None` of a field marked "when" is left out, the
    /// upstream's status and duration are `null` when there was none.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"time\":\"");
        write_rfc3339(self.time, out);
        out.extend_from_slice(b"\",\"request_id\":");
        string(out, self.request_id);
        text(out, b",\"trace_id\":", self.trace_id);
        out.extend_from_slice(b",\"client\":\"");
        write_ip(self.client, out);
        out.extend_from_slice(b"\",\"method\":");
        string(out, self.method);
        text(out, b",\"host\":", self.host);
        text(out, b",\"path\":", self.path);
        optional_text(out, b",\"query\":", self.query);
        text(out, b",\"protocol\":", self.protocol);
        optional_text(out, b",\"tls_version\":", self.tls_version);
        optional_text(out, b",\"sni\":", self.sni);
        optional_text(out, b",\"user_agent\":", self.user_agent);
        out.extend_from_slice(b",\"upstream_status\":");
        match self.upstream_status {
            Some(v) => uint(out, u64::from(v)),
            None => out.extend_from_slice(b"null"),
        }
        number(out, b",\"attempts\":", u64::from(self.attempts));
        if let Some(v) = self.grpc_status {
            number(out, b",\"grpc_status\":", u64::from(v));
        }
        number(out, b",\"status\":", u64::from(self.status));
        number(out, b",\"bytes_in\":", self.bytes_in);
        number(out, b",\"bytes_out\":", self.bytes_out);
        out.extend_from_slice(b",\"duration\":");
        float(out, self.duration);
        out.extend_from_slice(b",\"upstream_duration\":");
        match self.upstream_duration {
            Some(v) => float(out, v),
            None => out.extend_from_slice(b"null"),
        }
        text(out, b",\"route\":", self.route);
        text(out, b",\"upstream\":", self.upstream);
        text(out, b",\"endpoint\":", self.endpoint);
        text(out, b",\"reason\":", self.reason);
        optional_text(out, b",\"tenant\":", self.tenant);
        optional_text(out, b",\"sub\":", self.sub);
        out.push(b'}');
    }
}

/// `key` (`,"name":`, written as it is) and `v` as a JSON string.
fn text(out: &mut Vec<u8>, key: &[u8], v: &str) {
    out.extend_from_slice(key);
    string(out, v);
}

/// `text`, or nothing for `None`.
fn optional_text(out: &mut Vec<u8>, key: &[u8], v: Option<&str>) {
    if let Some(v) = v {
        text(out, key, v);
    }
}

/// `key` and `v` in decimal.
fn number(out: &mut Vec<u8>, key: &[u8], v: u64) {
    out.extend_from_slice(key);
    uint(out, v);
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `s` as a JSON string, escaped as `serde_json` escapes: `"`, `\\` and
/// the control characters below U+0020, nothing else. Runs without any of
/// those are copied whole.
fn string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    // Almost every value needs no escaping: a branch-free test over the
    // whole string, then one copy.
    let plain = bytes
        .iter()
        .fold(true, |ok, &b| ok & (b >= 0x20) & (b != b'"') & (b != b'\\'));
    if plain {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b >= 0x20 && b != b'"' && b != b'\\' {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            _ => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 15)],
            ]),
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// `v` in decimal.
fn uint(out: &mut Vec<u8>, v: u64) {
    padded(out, v, 1);
}

/// `v` zero-padded to `width` digits (wider when it needs more).
fn padded(out: &mut Vec<u8>, v: u64, width: usize) {
    let mut buf = [b'0'; 20];
    let mut at = buf.len();
    let mut rest = v;
    loop {
        at -= 1;
        buf[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[at.min(buf.len() - width)..]);
}

/// A number of seconds as `serde_json` writes an `f64` (the shortest form
/// that reads back the same; `null` if not finite). Its number writer is
/// already free of `core::fmt`, so it is used as it is.
fn float(out: &mut Vec<u8>, v: f64) {
    if serde_json::to_writer(&mut *out, &v).is_err() {
        out.extend_from_slice(b"null");
    }
}

/// An address as its `Display` shows it: IPv4 written here, IPv6 (with
/// its `::` and embedded-IPv4 rules) through `Display`.
fn write_ip(ip: IpAddr, out: &mut Vec<u8>) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                uint(out, u64::from(o));
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// `t` as an RFC 3339 UTC timestamp with milliseconds,
/// `2025-11-25T15:03:06.123Z`.
fn write_rfc3339(t: SystemTime, out: &mut Vec<u8>) {
    let (year, month, day, secs, millis) = civil(t);
    padded(out, year.max(0) as u64, 4);
    out.push(b'-');
    padded(out, month as u64, 2);
    out.push(b'-');
    padded(out, day as u64, 2);
    out.push(b'T');
    padded(out, (secs / 3600) as u64, 2);
    out.push(b':');
    padded(out, (secs % 3600 / 60) as u64, 2);
    out.push(b':');
    padded(out, (secs % 60) as u64, 2);
    out.push(b'.');
    padded(out, u64::from(millis), 3);
    out.push(b'Z');
}

/// (year, month, day, seconds into the day, milliseconds) of `t`, UTC.
fn civil(t: SystemTime) -> (i64, i64, i64, i64, u32) {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, rem, d.subsec_millis())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    /// `time` as RFC 3339, through `Display`: the reference form.
    pub(super) fn rfc3339_field<S: serde::Serializer>(
        t: &SystemTime,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let (year, month, day, secs, millis) = civil(*t);
        s.collect_str(&format_args!(
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
            secs / 3600,
            secs % 3600 / 60,
            secs % 60,
        ))
    }

    pub(super) fn display_field<S: serde::Serializer, T: std::fmt::Display>(
        v: &T,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    fn written(line: &LogLine<'_>) -> String {
        let mut out = Vec::new();
        line.write_json(&mut out);
        String::from_utf8(out).expect("the line is UTF-8")
    }

    fn line<'a>(strings: &'a [String], n: u64) -> LogLine<'a> {
        let s = |i: usize| strings[i % strings.len()].as_str();
        let some = |i: usize| (n >> i) & 1 == 1;
        LogLine {
            time: UNIX_EPOCH + Duration::from_millis(n.wrapping_mul(7_919_993_231) % (300 << 35)),
            request_id: s(0),
            trace_id: s(1),
            client: if some(0) {
                IpAddr::from([n as u8, (n >> 8) as u8, 0, 255])
            } else {
                IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, (n >> 3) as u16, n as u16])
            },
            method: s(2),
            host: s(3),
            path: s(4),
            query: some(1).then(|| s(5)),
            protocol: "HTTP/1.1",
            tls_version: some(2).then_some("1.3"),
            sni: some(3).then(|| s(6)),
            user_agent: some(4).then(|| s(7)),
            upstream_status: some(5).then_some((n % 600) as u16),
            attempts: (n % 4) as u32,
            grpc_status: some(6).then_some((n % 17) as u16),
            status: (n % 600) as u16,
            bytes_in: n.wrapping_mul(2_654_435_761),
            bytes_out: if some(7) { u64::MAX } else { n },
            duration: (n as f64) / 1e7,
            upstream_duration: some(8).then(|| (n as f64).sqrt() / 3e5),
            route: s(8),
            upstream: s(9),
            endpoint: s(10),
            reason: s(11),
            tenant: some(9).then(|| s(12)),
            sub: some(10).then(|| s(13)),
        }
    }

    #[test]
    fn lines_are_byte_for_byte_what_serde_json_wrote() {
        // Every byte below 0x80 alone, and strings mixing controls, quotes,
        // backslashes, non-ASCII and plain runs.
        let mut strings: Vec<String> = (0u8..0x80).map(|b| char::from(b).to_string()).collect();
        strings.extend(
            [
                "",
                "GET",
                "/api/v1/items?x=\"1\"",
                "a\\b\u{7f}c\u{1}\u{1f}",
                "ünïcödé ✓ 𝄞",
                "line\nbreak\r\ttab\u{8}\u{c}",
                "0123456789abcdef0123456789abcdef",
            ]
            .map(String::from),
        );
        let mut rng = fastrand::Rng::with_seed(18);
        for _ in 0..200 {
            let len = rng.usize(0..40);
            strings.push((0..len).map(|_| rng.char('\u{0}'..='\u{3ff}')).collect());
        }
        for n in 0..3000u64 {
            let rotated: Vec<String> = strings
                .iter()
                .cycle()
                .skip((n as usize * 13) % strings.len())
                .take(14)
                .cloned()
                .collect();
            let l = line(&rotated, n);
            let want = serde_json::to_string(&l).expect("serde_json writes it");
            assert_eq!(written(&l), want, "line {n}");
        }
    }

    #[test]
    fn formats_rfc3339() {
        let t = |ms| {
            let mut out = Vec::new();
            write_rfc3339(UNIX_EPOCH + Duration::from_millis(ms), &mut out);
            String::from_utf8(out).expect("ASCII")
        };
        assert_eq!(t(1_764_082_986_123), "2025-11-25T15:03:06.123Z");
        assert_eq!(t(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(t(253_402_300_799_999), "9999-12-31T23:59:59.999Z");
        assert_eq!(t(253_402_300_800_000), "10000-01-01T00:00:00.000Z");
    }
}
