//! The response cache's hot path: a hit (key, variant lookup, moka get,
//! the per-second `Age` / `Cache-Status` memo), and the storage decision
//! a miss makes (`Cache-Control` parsing and the RFC 9111 rules).

#![expect(clippy::unwrap_used, reason = "bench setup")]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use tollgate::cache::key::RouteCache;
use tollgate::cache::policy::{Allowances, CacheControl, lookup, storable};
use tollgate::cache::store::{Store, StoredResponse};

fn response_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    h.insert("content-length", HeaderValue::from_static("1024"));
    h.insert(
        "cache-control",
        HeaderValue::from_static("public, max-age=600, stale-while-revalidate=30"),
    );
    h.insert("etag", HeaderValue::from_static("\"v1\""));
    h.insert(
        "date",
        HeaderValue::from_static("Wed, 25 Nov 2026 10:00:00 GMT"),
    );
    h
}

fn request_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("host", HeaderValue::from_static("api.example.com"));
    h.insert("accept", HeaderValue::from_static("*/*"));
    h.insert("user-agent", HeaderValue::from_static("bench/1.0"));
    h
}

fn hit(c: &mut Criterion) {
    let store = Arc::new(Store::new(64 << 20, 1 << 20));
    let rc = RouteCache::new(
        "catalog",
        Arc::clone(&store),
        vec![],
        Allowances::default(),
        (Duration::ZERO, Duration::ZERO),
    );
    let req = request_headers();
    let key = rc.key("api.example.com", "/catalog/items?page=2", &req, None);
    store.put(
        key,
        StoredResponse {
            status: StatusCode::OK,
            headers: response_headers(),
            body: Bytes::from(vec![b'x'; 1024]),
            stored: Instant::now(),
            initial_age: Duration::ZERO,
            ttl: Duration::from_secs(600),
            stale_if_error: Duration::ZERO,
            stale_while_revalidate: Duration::ZERO,
            hit_headers: Default::default(),
            url: Default::default(),
        },
    );
    c.bench_function("cache hit: key, lookup, get, hit headers", |b| {
        b.iter(|| {
            let key = rc.key(
                black_box("api.example.com"),
                black_box("/catalog/items?page=2"),
                &req,
                None,
            );
            let variant = store.lookup_key(&key, &req);
            let e = store.get(&variant).unwrap();
            let h = e.hit_headers(e.stored.elapsed());
            black_box((e.headers.clone(), e.body.clone(), h));
        });
    });
}

fn decide(c: &mut Criterion) {
    let req = request_headers();
    let resp = response_headers();
    let allow = Allowances {
        default_ttl: Some(Duration::from_secs(60)),
        ..Allowances::default()
    };
    c.bench_function("cache lookup wish (request Cache-Control)", |b| {
        b.iter(|| black_box(lookup(&Method::GET, black_box(&req))));
    });
    c.bench_function("Cache-Control parse (3 directives)", |b| {
        b.iter(|| black_box(CacheControl::parse(black_box(&resp))));
    });
    c.bench_function("storable decision", |b| {
        b.iter(|| {
            black_box(storable(
                &Method::GET,
                black_box(&req),
                StatusCode::OK,
                black_box(&resp),
                &allow,
            ))
        });
    });
}

fn entry() -> StoredResponse {
    StoredResponse {
        status: StatusCode::OK,
        headers: HeaderMap::new(),
        body: Bytes::from_static(b"x"),
        stored: Instant::now(),
        initial_age: Duration::ZERO,
        ttl: Duration::from_secs(600),
        stale_if_error: Duration::ZERO,
        stale_while_revalidate: Duration::ZERO,
        hit_headers: Default::default(),
        url: Default::default(),
    }
}

/// Voiding one URL after an unsafe request, with 150,000 entries stored,
/// against the scan over every key it replaced (119 ms per POST at this
/// size in the measurement).
fn invalidate(c: &mut Criterion) {
    const ENTRIES: usize = 150_000;
    let store = Store::new(1 << 30, 1 << 20);
    for i in 0..ENTRIES {
        store.put(
            format!("items\u{1f}api.example.com\u{1f}/items/{i}"),
            entry(),
        );
    }
    let mut n = 0usize;
    c.bench_function("invalidate_url, 150k entries (store one, void it)", |b| {
        b.iter(|| {
            n += 1;
            let path = format!("/new/{n}");
            store.put(format!("items\u{1f}api.example.com\u{1f}{path}"), entry());
            store.invalidate_url("items", "api.example.com", black_box(&path));
        });
    });
    let keys: Vec<String> = (0..ENTRIES)
        .map(|i| format!("items\u{1f}api.example.com\u{1f}/items/{i}"))
        .collect();
    c.bench_function("baseline: scan 150k keys for one URL", |b| {
        b.iter(|| {
            let prefix = black_box("items\u{1f}api.example.com\u{1f}/items/7");
            black_box(keys.iter().filter(|k| k.starts_with(prefix)).count())
        });
    });
}

criterion_group!(benches, hit, decide, invalidate);
criterion_main!(benches);
