//! One-shot HTTP requests made by the gateway itself (JWKS and discovery
//! documents, active health checks, OTLP/HTTP trace exports): hyper's
//! client over a fresh TCP connection, with tokio-rustls for `https://`.
//! No pool and no second HTTP stack; the caller bounds the whole call with
//! a timeout.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri, header};
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

/// How to reach the server.
pub(crate) struct Target<'a> {
    /// `http://` or `https://` URL.
    pub uri: &'a Uri,
    /// TLS settings for `https://`.
    pub tls: Option<&'a Arc<ClientConfig>>,
    /// The name to send as SNI and verify, instead of the URL's host.
    pub server_name: Option<&'a ServerName<'static>>,
    /// Speak HTTP/2 with prior knowledge (h2c) instead of HTTP/1.1.
    pub h2: bool,
    /// Largest body read; more is an error.
    pub max_body: usize,
    /// `User-Agent`.
    pub agent: &'static str,
}

/// GETs `t.uri`; the response with its body collected.
pub(crate) async fn get(t: Target<'_>) -> Result<Response<Bytes>, String> {
    let mut req = Request::new(Empty::<Bytes>::new());
    req.headers_mut().insert(
        header::ACCEPT,
        HeaderValue::from_static("application/json, */*"),
    );
    send(t, req).await
}

/// POSTs `body` with `headers` to `t.uri`; the response with its body
/// collected.
pub(crate) async fn post(
    t: Target<'_>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response<Bytes>, String> {
    let mut req = Request::new(Full::new(body));
    *req.method_mut() = Method::POST;
    *req.headers_mut() = headers;
    send(t, req).await
}

/// Sends `req` (its method, headers and body) to `t.uri`.
async fn send<B>(t: Target<'_>, mut req: Request<B>) -> Result<Response<Bytes>, String>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let uri = t.uri;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(format!("{uri}: only http and https are supported")),
    };
    let host = uri.host().ok_or_else(|| format!("{uri}: no host"))?;
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = TcpStream::connect((bare, port))
        .await
        .map_err(|e| format!("{uri}: connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    *req.uri_mut() = if t.h2 {
        uri.clone()
    } else {
        Uri::try_from(path).map_err(|e| e.to_string())?
    };
    req.headers_mut()
        .insert(header::USER_AGENT, HeaderValue::from_static(t.agent));
    if !t.h2 {
        let host = HeaderValue::try_from(authority).map_err(|e| e.to_string())?;
        req.headers_mut().insert(header::HOST, host);
    }
    let resp = if https {
        let name = match t.server_name {
            Some(n) => n.clone(),
            None => ServerName::try_from(bare.to_owned())
                .map_err(|_| format!("{uri}: `{bare}` is not a TLS server name"))?,
        };
        let tls = t.tls.ok_or_else(|| format!("{uri}: no TLS settings"))?;
        let stream = tokio_rustls::TlsConnector::from(Arc::clone(tls))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("{uri}: TLS: {e}"))?;
        exchange(TokioIo::new(stream), req, t.h2).await
    } else {
        exchange(TokioIo::new(tcp), req, t.h2).await
    }
    .map_err(|e| format!("{uri}: {e}"))?;
    let (parts, body) = resp.into_parts();
    let body = Limited::new(body, t.max_body)
        .collect()
        .await
        .map_err(|e| format!("{uri}: body: {e}"))?
        .to_bytes();
    Ok(Response::from_parts(parts, body))
}

async fn exchange<I, B>(
    io: I,
    req: Request<B>,
    h2: bool,
) -> Result<Response<hyper::body::Incoming>, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if h2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        return sender.send_request(req).await.map_err(|e| e.to_string());
    }
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(256 << 10)
        .handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    sender.send_request(req).await.map_err(|e| e.to_string())
}
