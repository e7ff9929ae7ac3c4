//! Response compression over real sockets: the negotiation matrix
//! (q-values, the route's order, identity), what is never compressed, the
//! head of a compressed response (Vary, weak ETag, no Content-Length),
//! streaming (the first bytes arrive before the upstream has finished),
//! and the cache keeping one compressed variant per coding. Route names
//! are unique: the metrics registry is the test process's.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

use crate::support::*;

/// A JSON document of exactly `n` bytes.
fn json(n: usize) -> Vec<u8> {
    let mut out = b"{\"items\":[".to_vec();
    let mut i = 0;
    while out.len() + 40 < n {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(format!("{{\"id\":{i},\"name\":\"item {i}\"}}").as_bytes());
        i += 1;
    }
    out.extend_from_slice(b"],\"pad\":\"");
    while out.len() + 2 < n {
        out.push(b'x');
    }
    out.extend_from_slice(b"\"}");
    out
}

struct Origin {
    url: String,
    hits: Arc<AtomicU64>,
    /// The last request's Accept-Encoding.
    accept: Arc<Mutex<Option<String>>>,
    /// `/stream` waits for this before its second part.
    release: Arc<tokio::sync::Notify>,
}

/// An origin: `/json/N` (N bytes of JSON, strong ETag, cacheable),
/// `/small` (100 bytes), `/png`, `/encoded` (already gzip), `/no-transform`,
/// `/partial` (206), `/chunked/N` (no Content-Length), `/stream` (one
/// part, then the rest once released).
async fn origin() -> Origin {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let hits = Arc::new(AtomicU64::new(0));
    let accept = Arc::new(Mutex::new(None));
    let release = Arc::new(tokio::sync::Notify::new());
    let (h, a, r) = (hits.clone(), accept.clone(), release.clone());
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let (h, a, r) = (h.clone(), a.clone(), r.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    h.fetch_add(1, Ordering::SeqCst);
                    *a.lock().unwrap() = req
                        .headers()
                        .get("accept-encoding")
                        .map(|v| v.to_str().unwrap().to_owned());
                    let r = r.clone();
                    async move {
                        let path = req.uri().path().to_owned();
                        let full = |ct: &str, body: Vec<u8>| {
                            let mut resp: Response<BoxBody<Bytes, Infallible>> =
                                Response::new(Full::new(Bytes::from(body)).boxed());
                            resp.headers_mut()
                                .insert("content-type", ct.parse().unwrap());
                            resp
                        };
                        let resp = match path.as_str() {
                            p if p.starts_with("/json/") => {
                                let n = p[6..].parse().unwrap();
                                let mut resp = full("application/json", json(n));
                                let h = resp.headers_mut();
                                h.insert("etag", "\"v1\"".parse().unwrap());
                                h.insert("cache-control", "public, max-age=600".parse().unwrap());
                                h.insert("accept-ranges", "bytes".parse().unwrap());
                                resp
                            }
                            "/small" => full("application/json", json(100)),
                            "/png" => full("image/png", vec![7; 5000]),
                            "/encoded" => {
                                let mut resp = full("application/json", vec![1; 5000]);
                                resp.headers_mut()
                                    .insert("content-encoding", "gzip".parse().unwrap());
                                resp
                            }
                            "/no-transform" => {
                                let mut resp = full("application/json", json(5000));
                                resp.headers_mut()
                                    .insert("cache-control", "no-transform".parse().unwrap());
                                resp
                            }
                            "/partial" => {
                                let mut resp = full("application/json", json(5000));
                                *resp.status_mut() = http::StatusCode::PARTIAL_CONTENT;
                                resp.headers_mut()
                                    .insert("content-range", "bytes 0-4999/9000".parse().unwrap());
                                resp
                            }
                            p if p.starts_with("/chunked/") => {
                                let n: usize = p[9..].parse().unwrap();
                                let body = json(n);
                                let parts: Vec<Result<Frame<Bytes>, Infallible>> = body
                                    .chunks(1000)
                                    .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
                                    .collect();
                                let stream = futures_util::stream::iter(parts);
                                let mut resp = Response::new(StreamBody::new(stream).boxed());
                                resp.headers_mut()
                                    .insert("content-type", "text/plain".parse().unwrap());
                                resp
                            }
                            "/stream" => {
                                let (tx, rx) = tokio::sync::mpsc::channel::<
                                    Result<Frame<Bytes>, Infallible>,
                                >(2);
                                tokio::spawn(async move {
                                    let _ = tx
                                        .send(Ok(Frame::data(Bytes::from_static(
                                            b"{\"first\":\"part one\"}\n",
                                        ))))
                                        .await;
                                    r.notified().await;
                                    let _ = tx
                                        .send(Ok(Frame::data(Bytes::from_static(
                                            b"{\"second\":\"part two\"}\n",
                                        ))))
                                        .await;
                                });
                                let stream =
                                    futures_util::stream::unfold(rx, |mut rx| async move {
                                        rx.recv().await.map(|f| (f, rx))
                                    });
                                let mut resp = Response::new(StreamBody::new(stream).boxed());
                                resp.headers_mut().insert(
                                    "content-type",
                                    "application/x-ndjson".parse().unwrap(),
                                );
                                resp
                            }
                            _ => full("text/plain", b"?".to_vec()),
                        };
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Origin {
        url,
        hits,
        accept,
        release,
    }
}

/// Decodes `body` as `coding` says.
async fn decode(coding: Option<&str>, body: &[u8]) -> Vec<u8> {
    use async_compression::tokio::bufread::{BrotliDecoder, GzipDecoder, ZstdDecoder};
    let mut out = Vec::new();
    match coding {
        None => out.extend_from_slice(body),
        Some("gzip") => {
            GzipDecoder::new(body).read_to_end(&mut out).await.unwrap();
        }
        Some("br") => {
            BrotliDecoder::new(body)
                .read_to_end(&mut out)
                .await
                .unwrap();
        }
        Some("zstd") => {
            ZstdDecoder::new(body).read_to_end(&mut out).await.unwrap();
        }
        Some(other) => panic!("unexpected coding {other}"),
    }
    out
}

fn coding(g: &Got) -> Option<&str> {
    g.headers
        .get("content-encoding")
        .map(|v| v.to_str().unwrap())
}

async fn counter(gw: &TestGateway, series: &str) -> f64 {
    metric(
        &get(&client(), &gw.admin_url("/metrics")).await.text(),
        series,
    )
}

/// `tollgate_compression_responses_total` of `route` with `result`.
async fn responses(gw: &TestGateway, route: &str, result: &str) -> f64 {
    counter(
        gw,
        &format!(r#"tollgate_compression_responses_total{{result="{result}",route="{route}"}}"#),
    )
    .await
}

fn config(up: &str) -> String {
    format!(
        r#"cache: {{ max_size: 8MiB, max_object_size: 1MiB }}
upstreams:
  app: {{ endpoints: ["{up}"] }}
routes:
  - {{ name: z_cached, match: {{ path_prefix: /c }}, upstream: app, strip_prefix: /c, cache: {{}}, compression: {{}} }}
  - name: z_gzip_br
    match: {{ path_prefix: /gb }}
    upstream: app
    strip_prefix: /gb
    compression: {{ algorithms: [gzip, br], level: 1, min_size: 200, content_types: ["application/*", "text/plain"] }}
  - {{ name: z_all, match: {{ path_prefix: / }}, upstream: app, compression: {{}} }}
"#
    )
}

#[tokio::test]
async fn the_negotiation_matrix() {
    let o = origin().await;
    let gw = TestGateway::start(&config(&o.url)).await;
    let c = client();
    let doc = json(5000);
    for (route, accept, want) in [
        ("", Some("gzip, deflate, br, zstd"), Some("zstd")),
        ("", Some("gzip, deflate, br"), Some("br")),
        ("", Some("gzip"), Some("gzip")),
        ("", Some("br;q=0.5, gzip;q=0.8"), Some("gzip")),
        ("", Some("zstd;q=0.1, br;q=0.2, gzip;q=0.3"), Some("gzip")),
        ("", Some("*"), Some("zstd")),
        ("", Some("*, zstd;q=0"), Some("br")),
        ("", Some("gzip;q=0, br;q=0, zstd;q=0"), None),
        ("", Some("identity"), None),
        ("", Some("deflate"), None),
        ("", None, None),
        // The route's order breaks ties; what it does not offer is never used.
        ("/gb", Some("zstd, br, gzip"), Some("gzip")),
        ("/gb", Some("zstd, br"), Some("br")),
        ("/gb", Some("zstd"), None),
    ] {
        let mut headers = vec![];
        if let Some(a) = accept {
            headers.push(("accept-encoding", a));
        }
        let g = get_with(&c, &gw.url(&format!("{route}/json/5000")), &headers).await;
        assert_eq!(g.status, 200, "{route} {accept:?}");
        assert_eq!(coding(&g), want, "{route} {accept:?}");
        assert_eq!(decode(want, &g.body).await, doc, "{route} {accept:?}");
        // Asked upstream: the negotiated coding alone.
        assert_eq!(
            o.accept.lock().unwrap().as_deref(),
            Some(want.unwrap_or("identity")),
            "{route} {accept:?}"
        );
        // Every response that could be compressed varies on it.
        assert_eq!(g.headers["vary"], "Accept-Encoding", "{route} {accept:?}");
        if want.is_some() {
            assert_eq!(g.headers["etag"], "W/\"v1\"");
            assert!(
                g.headers.get("content-length").is_none()
                    || g.headers["content-length"] == g.body.len().to_string().as_str()
            );
            assert!(g.headers.get("accept-ranges").is_none());
            assert!(g.body.len() < doc.len() / 3, "{} bytes", g.body.len());
        } else {
            assert_eq!(g.headers["etag"], "\"v1\"");
            assert_eq!(g.headers["content-length"], "5000");
            assert_eq!(g.headers["accept-ranges"], "bytes");
        }
    }
    // A request with Cache-Control: no-transform is not compressed.
    let g = get_with(
        &c,
        &gw.url("/json/5000"),
        &[("accept-encoding", "br"), ("cache-control", "no-transform")],
    )
    .await;
    assert_eq!(coding(&g), None);
    // HEAD: the head a GET would have, no body.
    let g = send(
        &c,
        Request::head(gw.url("/json/5000"))
            .header("accept-encoding", "gzip")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(coding(&g), Some("gzip"));
    assert!(g.body.is_empty());
    assert_eq!(responses(&gw, "z_all", "zstd").await, 2.0);
    assert_eq!(responses(&gw, "z_all", "not_accepted").await, 5.0);
    let bytes_in = counter(
        &gw,
        r#"tollgate_compression_bytes_total{algorithm="zstd",direction="in",route="z_all"}"#,
    )
    .await;
    let bytes_out = counter(
        &gw,
        r#"tollgate_compression_bytes_total{algorithm="zstd",direction="out",route="z_all"}"#,
    )
    .await;
    assert_eq!(bytes_in, 10000.0);
    assert!(bytes_out > 0.0 && bytes_out < 4000.0, "{bytes_out}");
}

#[tokio::test]
async fn what_is_never_compressed() {
    let o = origin().await;
    let gw = TestGateway::start(&config(&o.url)).await;
    let c = client();
    let br = [("accept-encoding", "br, gzip")];
    for (path, result, vary) in [
        ("/small", "too_small", false),
        ("/png", "content_type", false),
        ("/encoded", "encoded", false),
        ("/no-transform", "no_transform", false),
        ("/partial", "status", false),
    ] {
        let g = get_with(&c, &gw.url(&format!("/gb{path}")), &br).await;
        let upstream_coding = (path == "/encoded").then_some("gzip");
        assert_eq!(coding(&g), upstream_coding, "{path}");
        assert_eq!(g.headers.get("vary").is_some(), vary, "{path}");
        assert_eq!(responses(&gw, "z_gzip_br", result).await, 1.0, "{path}");
    }
    // Without Content-Length the size is unknown: compressed as it streams.
    let g = get_with(&c, &gw.url("/gb/chunked/20000"), &br).await;
    assert_eq!(coding(&g), Some("gzip"), "the route's order breaks the tie");
    assert_eq!(decode(Some("gzip"), &g.body).await, json(20000));
    // A WebSocket upgrade passes untouched (the test upstream's /ws).
    let up = Upstream::start("ws").await;
    let ws = TestGateway::start(&format!(
        "upstreams:\n  app: {{ endpoints: [\"{}\"] }}\nroutes:\n  - {{ name: z_ws, match: {{ path_prefix: / }}, upstream: app, compression: {{}} }}\n",
        up.url()
    ))
    .await;
    websocket_echoes(ws.addr, &up).await;
    assert!(up.last().headers.get("accept-encoding").is_none());
}

#[tokio::test]
async fn a_compressed_stream_reaches_the_client_as_it_comes() {
    let o = origin().await;
    let gw = TestGateway::start(&config(&o.url)).await;
    let c = client();
    let resp = tokio::time::timeout(
        Duration::from_secs(30),
        c.request(
            Request::get(gw.url("/stream"))
                .header("accept-encoding", "gzip")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(resp.headers()["content-encoding"], "gzip");
    // The first part decodes while the upstream still holds the second.
    let mut body = resp.into_body();
    let mut got = Vec::new();
    let first = loop {
        let frame = body.frame().await.unwrap().unwrap();
        got.extend_from_slice(&frame.into_data().unwrap());
        let d = flate_prefix(&got).await;
        if d.ends_with(b"\n") {
            break d;
        }
    };
    assert_eq!(first, b"{\"first\":\"part one\"}\n");
    o.release.notify_one();
    while let Some(f) = body.frame().await {
        got.extend_from_slice(&f.unwrap().into_data().unwrap());
    }
    assert_eq!(
        decode(Some("gzip"), &got).await,
        b"{\"first\":\"part one\"}\n{\"second\":\"part two\"}\n"
    );
}

/// What a gzip stream cut short decodes to so far.
async fn flate_prefix(bytes: &[u8]) -> Vec<u8> {
    use async_compression::tokio::bufread::GzipDecoder;
    let mut d = GzipDecoder::new(bytes);
    let mut out = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        match d.read(&mut buf).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn the_cache_keeps_one_compressed_variant_per_coding() {
    let o = origin().await;
    let gw = TestGateway::start(&config(&o.url)).await;
    let c = client();
    let doc = json(8000);
    let fetch = |accept: Option<&'static str>| {
        let c = c.clone();
        let url = gw.url("/c/json/8000");
        async move {
            let headers: Vec<(&str, &str)> = accept
                .map(|a| vec![("accept-encoding", a)])
                .unwrap_or_default();
            get_with(&c, &url, &headers).await
        }
    };
    // (Accept-Encoding, coding served, upstream requests so far)
    let mut before = 0;
    for (accept, want, hits) in [
        (Some("br"), Some("br"), 1),
        (Some("gzip, br"), Some("br"), 1),
        (Some("br;q=1, gzip;q=0.5"), Some("br"), 1),
        (Some("gzip"), Some("gzip"), 2),
        (Some("x-gzip"), Some("gzip"), 2),
        (None, None, 3),
        (Some("identity"), None, 3),
        (Some("deflate"), None, 3),
        (Some("zstd"), Some("zstd"), 4),
        (Some("gzip, deflate, br, zstd"), Some("zstd"), 4),
    ] {
        let g = fetch(accept).await;
        assert_eq!(g.status, 200);
        assert_eq!(coding(&g), want, "{accept:?}");
        assert_eq!(decode(want, &g.body).await, doc, "{accept:?}");
        assert_eq!(o.hits.load(Ordering::SeqCst), hits, "{accept:?}");
        let status = g.headers["cache-status"].to_str().unwrap();
        assert_eq!(
            status.contains("hit"),
            hits == before,
            "{accept:?}: {status}"
        );
        before = hits;
    }
    // Each coding was compressed once: the hits were served as stored.
    for (coding, n) in [
        ("br", 1.0),
        ("gzip", 1.0),
        ("zstd", 1.0),
        ("not_accepted", 1.0),
    ] {
        assert_eq!(responses(&gw, "z_cached", coding).await, n, "{coding}");
    }
    // A revalidation keeps the stored validator weak: the cached body is
    // the compressed one. A conditional request with it is a 304.
    let g = get_with(
        &c,
        &gw.url("/c/json/8000"),
        &[("accept-encoding", "br"), ("if-none-match", "W/\"v1\"")],
    )
    .await;
    assert_eq!(g.status, 304);
    assert_eq!(g.headers["etag"], "W/\"v1\"");
}
