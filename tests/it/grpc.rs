//! gRPC over h2: calls pass through to an h2c upstream with their
//! trailers intact (unary and server-streaming), and errors the gateway
//! makes on gRPC calls come back in gRPC form.

use std::convert::Infallible;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

/// A gRPC-shaped h2c server: echoes the request message `n` times (the
/// `n` from the path `/echo.Echo/Repeat{n}`), then trailers with status 0.
async fn grpc_upstream() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let te_ok = req.headers().get("te").is_some_and(|v| v == "trailers");
                    let n: usize = req
                        .uri()
                        .path()
                        .rsplit("Repeat")
                        .next()
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(1);
                    let msg = req.into_body().collect().await.unwrap().to_bytes();
                    let mut frames: std::collections::VecDeque<Frame<Bytes>> =
                        (0..n).map(|_| Frame::data(msg.clone())).collect();
                    let mut trailers = HeaderMap::new();
                    trailers.insert(
                        "grpc-status",
                        if te_ok { "0" } else { "13" }.parse().unwrap(),
                    );
                    trailers.insert("grpc-message", "done".parse().unwrap());
                    frames.push_back(Frame::trailers(trailers));
                    let body = Frames(frames);
                    let mut r = Response::new(body);
                    r.headers_mut()
                        .insert("content-type", "application/grpc".parse().unwrap());
                    Ok::<_, Infallible>(r)
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

/// A body made of given frames (data, then trailers).
struct Frames(std::collections::VecDeque<Frame<Bytes>>);

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(self.0.pop_front().map(Ok))
    }
}

async fn call(gw: &TestGateway, path: &str) -> (u16, HeaderMap, Vec<Bytes>, Option<HeaderMap>) {
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let (mut tx, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let msg = Bytes::from_static(b"\x00\x00\x00\x00\x05hello");
    let req = Request::post(format!("http://grpc.test{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(msg))
        .unwrap();
    let resp = tx.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let mut body = resp.into_body();
    let (mut data, mut trailers) = (Vec::new(), None);
    while let Some(f) = body.frame().await {
        let f = f.unwrap();
        match f.into_data() {
            Ok(d) => data.push(d),
            Err(f) => trailers = f.into_trailers().ok(),
        }
    }
    (status, headers, data, trailers)
}

fn config(up: &str) -> String {
    format!(
        "upstreams:\n  grpc: {{ endpoints: [\"{up}\"], protocol: h2c }}\nroutes:\n  - {{ name: grpc, match: {{ path_prefix: /echo.Echo }}, upstream: grpc }}\n"
    )
}

#[tokio::test]
async fn unary_and_server_streaming_calls_keep_their_trailers() {
    let up = grpc_upstream().await;
    let gw = TestGateway::start(&config(&up)).await;
    let (status, headers, data, trailers) = call(&gw, "/echo.Echo/Repeat1").await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/grpc");
    assert_eq!(data.concat(), b"\x00\x00\x00\x00\x05hello");
    let t = trailers.expect("trailers");
    assert_eq!(t["grpc-status"], "0", "te: trailers reached the upstream");
    assert_eq!(t["grpc-message"], "done");
    let (status, _, data, trailers) = call(&gw, "/echo.Echo/Repeat3").await;
    assert_eq!(status, 200);
    assert_eq!(data.concat().len(), 3 * 10, "three streamed messages");
    assert_eq!(trailers.expect("trailers")["grpc-status"], "0");
}

#[tokio::test]
async fn gateway_errors_on_grpc_calls_answer_in_grpc_form() {
    let up = grpc_upstream().await;
    let gw = TestGateway::start(&config(&up)).await;
    // No route: UNIMPLEMENTED, as a Trailers-Only response.
    let (status, headers, data, _) = call(&gw, "/other.Svc/Method").await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/grpc");
    assert_eq!(headers["grpc-status"], "12");
    assert_eq!(headers["grpc-message"], "no route matches this request");
    assert!(data.concat().is_empty());
    // Upstream down: UNAVAILABLE.
    let closed = ClosedPort::new();
    let gw = TestGateway::start(&config(&format!("http://{}", closed.addr))).await;
    let (status, headers, _, _) = call(&gw, "/echo.Echo/Repeat1").await;
    assert_eq!(
        (status, headers["grpc-status"].to_str().unwrap()),
        (200, "14")
    );
}

/// `tollgate_grpc_responses_total{route,code}` counts calls by their
/// grpc-status: the upstream's (from the trailers) and the gateway's own.
#[tokio::test]
async fn grpc_statuses_are_counted_per_route() {
    let up = grpc_upstream().await;
    let down = ClosedPort::new();
    let gw = TestGateway::start(&format!(
        "upstreams:\n  grpc: {{ endpoints: [\"{up}\"], protocol: h2c }}\n  down: {{ endpoints: [\"http://{}\"], protocol: h2c }}\nroutes:\n  - {{ name: grpc_down, match: {{ path_prefix: /down.Down }}, upstream: down }}\n  - {{ name: grpc_counted, match: {{ path_prefix: /echo.Echo }}, upstream: grpc }}\n",
        down.addr
    ))
    .await;
    for _ in 0..2 {
        let (_, _, _, trailers) = call(&gw, "/echo.Echo/Repeat1").await;
        assert_eq!(trailers.expect("trailers")["grpc-status"], "0");
    }
    let (status, headers, _, _) = call(&gw, "/down.Down/Call").await;
    assert_eq!(
        (status, headers["grpc-status"].to_str().unwrap()),
        (200, "14")
    );
    let m = get(&client(), &gw.admin_url("/metrics")).await.text();
    assert_eq!(
        metric(
            &m,
            r#"tollgate_grpc_responses_total{code="0",route="grpc_counted"}"#
        ),
        2.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            r#"tollgate_grpc_responses_total{code="14",route="grpc_down"}"#
        ),
        1.0
    );
}

/// The access log line of a gRPC call carries its grpc-status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_carries_grpc_status() {
    let up = grpc_upstream().await;
    let gw = Binary::start(&format!(
        "server:\n  listen: [\"127.0.0.1:0\"]\n  admin_listen: \"127.0.0.1:0\"\n{}",
        config(&up)
    ));
    let c = h2c_client();
    let mut req = http::Request::post(gw.url("/echo.Echo/Repeat1"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(http_body_util::Full::new(Bytes::from_static(
            b"\x00\x00\x00\x00\x05hello",
        )))
        .unwrap();
    *req.version_mut() = http::Version::HTTP_2;
    assert_eq!(send(&c, req).await.status, 200);
    eventually("one access-log line", async || {
        !gw.stdout.lock().unwrap().is_empty()
    })
    .await;
    let line: serde_json::Value = serde_json::from_str(&gw.stdout.lock().unwrap()[0]).unwrap();
    assert_eq!(line["grpc_status"], 0, "{line}");
    assert_eq!(line["protocol"], "HTTP/2");
}
