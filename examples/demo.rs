//! The demo: three small upstreams on 127.0.0.1:9001-9003 and the gateway on
//! `config/demo.yaml`, in one command:
//!
//! ```sh
//! cargo run --release --example demo
//! curl -i localhost:8080/api/users/7
//! ```
//!
//! Each demo upstream answers with JSON naming itself and echoing what it
//! received, so the balancing, rewrites and forwarding headers are visible.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::PathBuf;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tollgate::app::{Gateway, StartOptions, wait_for_signal};

const UPSTREAMS: [(&str, u16); 3] = [("users-a", 9001), ("users-b", 9002), ("orders", 9003)];

async fn answer(
    name: &'static str,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let headers: BTreeMap<&str, &str> = req
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)))
        .collect();
    let body = serde_json::json!({
        "upstream": name,
        "method": req.method().as_str(),
        "uri": req.uri().to_string(),
        "headers": headers,
    });
    let mut resp = Response::new(Full::new(Bytes::from(
        serde_json::to_vec_pretty(&body).unwrap_or_default(),
    )));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

async fn demo_upstream(name: &'static str, port: u16) -> std::io::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(move |req| answer(name, req));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_writer(std::io::stderr)
        .init();
    for (name, port) in UPSTREAMS {
        if let Err(e) = demo_upstream(name, port).await {
            tracing::error!(port, error = %e, "cannot start a demo upstream (is the port free?)");
            return std::process::ExitCode::FAILURE;
        }
    }
    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/demo.yaml");
    let gw = match Gateway::start(
        config,
        StartOptions {
            watch_file: true,
            sighup: true,
        },
    )
    .await
    {
        Ok(gw) => gw,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the gateway");
            return std::process::ExitCode::FAILURE;
        }
    };
    tracing::info!(
        "demo ready. Try:\n  curl -i localhost:8080/ping\n  curl -i localhost:8080/api/users/7\n  curl -i localhost:8080/api/orders/42\n  curl -i -X DELETE localhost:8080/api/users/7\n  curl -s localhost:9901/metrics | grep tollgate_requests_total\n  curl -s 'localhost:9901/routes/explain?method=GET&path=/api/orders/1'"
    );
    wait_for_signal().await;
    gw.shutdown().await;
    std::process::ExitCode::SUCCESS
}
