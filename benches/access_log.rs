//! One access-log line formatted into a reused buffer: Tollgate's writer
//! (`LogLine::write_json`) against the `serde_json` serialization of the
//! same fields it replaced (a struct with the same fields and attributes,
//! `serde_json::to_writer`), so the baseline runs in the same bench.

#![expect(clippy::unwrap_used, reason = "bench setup")]

use std::hint::black_box;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{Criterion, criterion_group, criterion_main};
use serde::Serialize;
use tollgate::observability::access_log::LogLine;

/// A proxied request with a verified token, as the full-pipeline load
/// test logs it.
fn line() -> LogLine<'static> {
    LogLine {
        time: UNIX_EPOCH + Duration::from_millis(1_796_000_000_123),
        request_id: "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736",
        client: IpAddr::from([127, 0, 0, 1]),
        method: "GET",
        host: "127.0.0.1:18400",
        path: "/api/v1/items/42",
        query: None,
        protocol: "HTTP/1.1",
        tls_version: None,
        sni: None,
        user_agent: Some("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36"),
        upstream_status: Some(200),
        attempts: 1,
        grpc_status: None,
        status: 200,
        bytes_in: 0,
        bytes_out: 1024,
        duration: 0.000_812_345,
        upstream_duration: Some(0.000_401_2),
        route: "api",
        upstream: "origin",
        endpoint: "127.0.0.1:18380",
        reason: "",
        tenant: Some("acme"),
        sub: Some("user-001"),
    }
}

/// The same fields through `serde_json`, as the access log wrote them
/// before (`#[derive(Serialize)]`, `collect_str` for the time and address).
#[derive(Serialize)]
struct SerdeLine<'a> {
    #[serde(serialize_with = "rfc3339")]
    time: SystemTime,
    request_id: &'a str,
    trace_id: &'a str,
    #[serde(serialize_with = "display")]
    client: IpAddr,
    method: &'a str,
    host: &'a str,
    path: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    query: Option<&'a str>,
    protocol: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_version: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sni: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_agent: Option<&'a str>,
    upstream_status: Option<u16>,
    attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    grpc_status: Option<u16>,
    status: u16,
    bytes_in: u64,
    bytes_out: u64,
    duration: f64,
    upstream_duration: Option<f64>,
    route: &'a str,
    upstream: &'a str,
    endpoint: &'a str,
    reason: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sub: Option<&'a str>,
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    let d = t.duration_since(UNIX_EPOCH).unwrap();
    let secs = d.as_secs() % 86_400;
    // The date is fixed in this bench; the time of day is formatted as the
    // old writer did (`core::fmt` with padding).
    s.collect_str(&format_args!(
        "2026-11-30T{:02}:{:02}:{:02}.{:03}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60,
        d.subsec_millis()
    ))
}

fn display<S: serde::Serializer>(v: &IpAddr, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn bench(c: &mut Criterion) {
    let l = line();
    let mut buf = Vec::with_capacity(1024);
    c.bench_function("access_log/write_json", |b| {
        b.iter(|| {
            buf.clear();
            black_box(&l).write_json(&mut buf);
            black_box(buf.len())
        })
    });
    let s = SerdeLine {
        time: l.time,
        request_id: l.request_id,
        trace_id: l.trace_id,
        client: l.client,
        method: l.method,
        host: l.host,
        path: l.path,
        query: l.query,
        protocol: l.protocol,
        tls_version: l.tls_version,
        sni: l.sni,
        user_agent: l.user_agent,
        upstream_status: l.upstream_status,
        attempts: l.attempts,
        grpc_status: l.grpc_status,
        status: l.status,
        bytes_in: l.bytes_in,
        bytes_out: l.bytes_out,
        duration: l.duration,
        upstream_duration: l.upstream_duration,
        route: l.route,
        upstream: l.upstream,
        endpoint: l.endpoint,
        reason: l.reason,
        tenant: l.tenant,
        sub: l.sub,
    };
    let mut ours = Vec::new();
    l.write_json(&mut ours);
    assert_eq!(
        ours,
        serde_json::to_vec(&s).unwrap(),
        "the two write the same bytes"
    );
    c.bench_function("access_log/serde_json (before)", |b| {
        b.iter(|| {
            buf.clear();
            serde_json::to_writer(&mut buf, black_box(&s)).unwrap();
            black_box(buf.len())
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
