//! An OTLP trace receiver on 127.0.0.1: OTLP/gRPC (`TraceService/Export`
//! over h2c, gRPC framing) and OTLP/HTTP (`POST /v1/traces`, protobuf) on
//! one port, decoding with the OTLP protobuf definitions
//! (opentelemetry-proto) and keeping every span it receives.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::net::TcpListener;

/// What one export carried.
#[derive(Clone, Debug)]
pub struct Export {
    /// `/v1/traces` or the gRPC method path.
    pub path: String,
    pub headers: HeaderMap,
    /// `service.name` of the resource.
    pub service: String,
    pub spans: Vec<Span>,
}

pub struct Collector {
    pub addr: SocketAddr,
    exports: Arc<Mutex<Vec<Export>>>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Collector {
    pub async fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let exports = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stop_rx) = tokio::sync::watch::channel(false);
        let seen = Arc::clone(&exports);
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                    _ = stop_rx.changed() => return,
                };
                let seen = Arc::clone(&seen);
                tokio::spawn(async move {
                    let svc = service_fn(move |req| receive(req, Arc::clone(&seen)));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Collector {
            addr,
            exports,
            stop,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn exports(&self) -> Vec<Export> {
        self.exports.lock().unwrap().clone()
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        self.exports().into_iter().flat_map(|e| e.spans).collect()
    }

    /// The spans of trace `trace_id` (32 hex digits).
    pub fn trace(&self, trace_id: &str) -> Vec<Span> {
        self.spans()
            .into_iter()
            .filter(|s| hex(&s.trace_id) == trace_id)
            .collect()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Lower-case hex of an id.
pub fn hex(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// A span's attribute as text (strings, ints and bools), or `None`.
pub fn attr(span: &Span, key: &str) -> Option<String> {
    let kv = span.attributes.iter().find(|kv| kv.key == key)?;
    match kv.value.as_ref()?.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        Value::BoolValue(b) => Some(b.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// The one span named `name` among `spans`.
pub fn named<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    let found: Vec<&Span> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one span named {name} in {spans:#?}");
    found[0]
}

type Reply = Response<GrpcBody>;

async fn receive(
    req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Export>>>,
) -> Result<Reply, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let grpc = parts
        .headers
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    // gRPC: a 1-byte compressed flag (0) and a 4-byte length before the message.
    let message = if grpc {
        assert_eq!(body[0], 0, "uncompressed gRPC message");
        let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        body.slice(5..5 + len)
    } else {
        body
    };
    let req = ExportTraceServiceRequest::decode(message).expect("an OTLP trace export");
    for rs in req.resource_spans {
        let service = rs
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
            .and_then(|kv| kv.value.as_ref()?.value.as_ref().cloned())
            .map(|v| match v {
                Value::StringValue(s) => s,
                other => format!("{other:?}"),
            })
            .unwrap_or_default();
        let spans = rs.scope_spans.into_iter().flat_map(|s| s.spans).collect();
        seen.lock().unwrap().push(Export {
            path: parts.uri.path().to_owned(),
            headers: parts.headers.clone(),
            service,
            spans,
        });
    }
    let reply = ExportTraceServiceResponse::default().encode_to_vec();
    if grpc {
        let mut framed = vec![0u8];
        framed.extend_from_slice(&(reply.len() as u32).to_be_bytes());
        framed.extend_from_slice(&reply);
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let mut r = Response::new(GrpcBody {
            data: Some(Bytes::from(framed)),
            trailers: Some(trailers),
        });
        r.headers_mut()
            .insert("content-type", HeaderValue::from_static("application/grpc"));
        Ok(r)
    } else {
        let mut r = Response::new(GrpcBody {
            data: Some(Bytes::from(reply)),
            trailers: None,
        });
        r.headers_mut().insert(
            "content-type",
            HeaderValue::from_static("application/x-protobuf"),
        );
        Ok(r)
    }
}

/// A body of one data frame and optional trailers (gRPC's status).
pub struct GrpcBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl hyper::body::Body for GrpcBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(d) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }
}
