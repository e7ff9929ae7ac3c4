//! The export side: one task per tracer takes batches off the queue and
//! sends them with opentelemetry-otlp's exporter, over tonic (OTLP/gRPC)
//! or the gateway's own HTTP client (OTLP/HTTP), both through the
//! gateway's TLS stack.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Uri};
use opentelemetry::KeyValue;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanExporter as _};
use rustls::ClientConfig;

use super::{Shared, TracerSettings, dropped};
use crate::config::spec::OtlpProtocol;
use crate::observability::metrics::metrics;

/// The export task: every `flush_interval` (or when a batch is full),
/// batches off the queue go to the collector, one export at a time, each
/// within `timeout`. Ends once the tracer is gone, after sending what was
/// queued.
pub(super) async fn export_loop(
    shared: Arc<Shared>,
    s: TracerSettings,
    tls: Option<Arc<ClientConfig>>,
) {
    let exporter = match exporter(&s, tls) {
        Ok(e) => Some(e),
        Err(e) => {
            tracing::error!(endpoint = %s.endpoint, error = %e, "tracing: the OTLP exporter cannot be built; spans are dropped");
            None
        }
    };
    let mut failing = false;
    loop {
        let closed = shared.closed.load(Ordering::Acquire);
        if !closed {
            tokio::select! {
                () = tokio::time::sleep(s.flush_interval) => {}
                () = shared.wake.notified() => {}
            }
        }
        loop {
            let batch: Vec<SpanData> = {
                let Ok(mut q) = shared.queue.lock() else {
                    return;
                };
                let n = q.len().min(shared.max_batch);
                q.drain(..n).collect()
            };
            if batch.is_empty() {
                break;
            }
            let n = batch.len();
            let result = match &exporter {
                Some(e) => match tokio::time::timeout(s.timeout, e.export(batch)).await {
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(_) => Err(format!("no answer within {:?}", s.timeout)),
                },
                None => Err("no exporter".to_owned()),
            };
            match result {
                Ok(()) => {
                    metrics().trace_spans_exported.inc_by(n as u64);
                    if failing {
                        tracing::info!(endpoint = %s.endpoint, "tracing: exports succeed again");
                        failing = false;
                    }
                }
                Err(e) => {
                    dropped("export_failed", n);
                    if !failing && exporter.is_some() {
                        tracing::warn!(endpoint = %s.endpoint, error = %e, "tracing: export failed; spans are dropped until the collector answers");
                        failing = true;
                    }
                }
            }
            if n < shared.max_batch {
                break;
            }
        }
        if closed {
            return;
        }
    }
}

/// opentelemetry-otlp's exporter for `s`, with the resource set.
fn exporter(
    s: &TracerSettings,
    tls: Option<Arc<ClientConfig>>,
) -> Result<opentelemetry_otlp::SpanExporter, String> {
    use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig, WithTonicConfig};
    let mut exporter = match s.protocol {
        OtlpProtocol::Grpc => {
            let endpoint = tonic::transport::Endpoint::from_shared(s.endpoint.to_string())
                .map_err(|e| e.to_string())?
                .timeout(s.timeout);
            let channel = endpoint.connect_with_connector_lazy(Connector {
                tls,
                timeout: s.timeout,
            });
            let metadata = tonic::metadata::MetadataMap::from_headers(s.headers.clone());
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_channel(channel)
                .with_metadata(metadata)
                .with_timeout(s.timeout)
                .build()
        }
        OtlpProtocol::Http => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(s.endpoint.to_string())
            .with_protocol(Protocol::HttpBinary)
            .with_http_client(HttpClient {
                tls,
                timeout: s.timeout,
                headers: s.headers.clone(),
            })
            .with_timeout(s.timeout)
            .build(),
    }
    .map_err(|e| e.to_string())?;
    exporter.set_resource(
        &Resource::builder_empty()
            .with_attributes([
                KeyValue::new("service.name", s.service_name.clone()),
                KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
                KeyValue::new("telemetry.sdk.language", "rust"),
                KeyValue::new("telemetry.sdk.name", "opentelemetry"),
            ])
            .build(),
    );
    Ok(exporter)
}

/// Connects the gRPC exporter's channel: TCP (and TLS for `https://`)
/// within the export timeout, through the gateway's own TLS stack.
#[derive(Clone)]
struct Connector {
    tls: Option<Arc<ClientConfig>>,
    timeout: Duration,
}

impl tower_service::Service<Uri> for Connector {
    type Response = hyper_util::rt::TokioIo<crate::socket::Socket>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let io = |m: String| std::io::Error::other(m);
            let host = uri.host().ok_or_else(|| io(format!("{uri}: no host")))?;
            let bare = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let https = uri.scheme_str() == Some("https");
            let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
            let connect = async {
                let tcp = tokio::net::TcpStream::connect((bare.as_str(), port)).await?;
                let _ = tcp.set_nodelay(true);
                let Some(tls) = this.tls.filter(|_| https) else {
                    return Ok(crate::socket::Socket::Tcp(tcp));
                };
                let name = rustls_pki_types::ServerName::try_from(bare.clone())
                    .map_err(|_| io(format!("`{bare}` is not a TLS server name")))?;
                let stream = tokio_rustls::TlsConnector::from(tls)
                    .connect(name, tcp)
                    .await?;
                Ok(crate::socket::Socket::client_tls(stream))
            };
            match tokio::time::timeout(this.timeout, connect).await {
                Ok(r) => r.map(hyper_util::rt::TokioIo::new),
                Err(_) => Err(io(format!("{uri}: connect timed out"))),
            }
        })
    }
}

/// The OTLP/HTTP exporter's client: one POST per export over a fresh
/// connection (the gateway's own client, `fetch.rs`), within the export
/// timeout.
struct HttpClient {
    tls: Option<Arc<ClientConfig>>,
    timeout: Duration,
    /// The configured headers (secrets: the Debug form leaves them out).
    headers: HeaderMap,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpClient")
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for HttpClient {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        let (parts, body) = request.into_parts();
        let mut headers = parts.headers;
        for (k, v) in &self.headers {
            headers.insert(k, v.clone());
        }
        let target = crate::fetch::Target {
            uri: &parts.uri,
            tls: self.tls.as_ref(),
            server_name: None,
            h2: false,
            max_body: 64 << 10,
            agent: concat!("tollgate/", env!("CARGO_PKG_VERSION")),
        };
        match tokio::time::timeout(self.timeout, crate::fetch::post(target, headers, body)).await {
            Ok(r) => r.map_err(Into::into),
            Err(_) => Err(format!("no answer within {:?}", self.timeout).into()),
        }
    }
}
