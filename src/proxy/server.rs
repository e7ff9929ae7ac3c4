//! Stage 0, `accept`: the listeners and their connections.
//!
//! Each connection: a permit from the connection limit; on a TLS listener
//! the handshake (under `tls_handshake_timeout`, certificate by SNI from the
//! live snapshot), on a plain one the HTTP/2 preface sniffed under
//! `header_read_timeout` (hyper-util's auto detection would wait forever
//! for the first bytes); then hyper serves HTTP/1.1 (with upgrades) or h2
//! with every limit set explicitly from the snapshot. The connection's
//! watchdog (`conn.rs`) closes idle and stalled connections, and a
//! shutdown signal drains them gracefully.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use super::conn::{self, ActivityGuard};
use super::ctx::{ConnFacts, Requests, TlsFacts};
use super::pipeline;
use crate::observability::metrics::metrics;
use crate::snapshot::{ServerSettings, SharedSnapshot};
use crate::socket::Socket;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// h2: most streams reset by the client before we answered, per connection
/// (the "rapid reset" guard, CVE-2023-44487).
const H2_MAX_PENDING_RESETS: usize = 20;
/// h2: most streams we reset for errors before the connection is closed.
const H2_MAX_LOCAL_RESETS: usize = 256;
/// h2: keep-alive pings for connections that went quiet.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(10);
/// h2: per-stream and per-connection receive windows.
const H2_STREAM_WINDOW: u32 = 256 << 10;
const H2_CONN_WINDOW: u32 = 1 << 20;
/// h2: largest frame we accept.
const H2_MAX_FRAME: u32 = 16 << 10;

/// What a listener hands to each of its connections.
struct Listener {
    live: SharedSnapshot,
    inflight: Arc<Requests>,
    shutdown: watch::Receiver<bool>,
    /// Connections start with a TLS handshake.
    tls: bool,
    /// The port TLS is served on (for `redirect_http` on a plain listener).
    https_port: u16,
}

/// Accepts plain connections on `listener` until `shutdown` turns true.
pub(crate) async fn serve(
    listener: TcpListener,
    live: SharedSnapshot,
    limit: Arc<Semaphore>,
    inflight: Arc<Requests>,
    https_port: u16,
    shutdown: watch::Receiver<bool>,
) {
    let l = Listener {
        live,
        inflight,
        shutdown,
        tls: false,
        https_port,
    };
    accept_loop(listener, limit, Arc::new(l)).await;
}

/// Accepts TLS connections on `listener` until `shutdown` turns true; each
/// handshake uses the live snapshot's certificates.
pub(crate) async fn serve_tls(
    listener: TcpListener,
    live: SharedSnapshot,
    limit: Arc<Semaphore>,
    inflight: Arc<Requests>,
    shutdown: watch::Receiver<bool>,
) {
    let l = Listener {
        live,
        inflight,
        shutdown,
        tls: true,
        https_port: 0,
    };
    accept_loop(listener, limit, Arc::new(l)).await;
}

/// Accepts connections under the connection limit until shutdown, each
/// served by its own task.
async fn accept_loop(listener: TcpListener, limit: Arc<Semaphore>, l: Arc<Listener>) {
    let mut shutdown = l.shutdown.clone();
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&limit).acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        tokio::spawn(connection(stream, peer, Arc::clone(&l), permit));
    }
}

/// A connection ready for HTTP.
struct Opened {
    socket: Socket,
    /// Bytes already read from it (the sniffed preface).
    prefix: Bytes,
    /// It speaks h2.
    h2: bool,
    /// The verified client certificate's subject (mTLS).
    client_subject: Option<http::HeaderValue>,
    /// What the TLS handshake settled.
    tls: Option<TlsFacts>,
}

/// One client connection, from accept to close: the TLS handshake (TLS
/// listeners) or the h2 preface sniff (plain ones), under their deadlines
/// and the drain, then HTTP.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    l: Arc<Listener>,
    permit: OwnedSemaphorePermit,
) {
    let gauge = &metrics().connections_active;
    gauge.inc();
    let _ = stream.set_nodelay(true);
    let snapshot = l.live.load_full();
    let settings = snapshot.settings.clone();
    let tls = if l.tls { snapshot.tls.clone() } else { None };
    drop(snapshot);
    // A connection that has not finished its handshake, or sent its first
    // bytes, when a drain starts is simply closed: it has no request in
    // flight.
    let mut drain = l.shutdown.clone();
    let opened = tokio::select! {
        o = open(stream, l.tls, tls, &settings) => o,
        _ = drain.wait_for(|draining| *draining) => None,
    };
    if let Some(Opened {
        socket,
        prefix,
        h2,
        client_subject,
        tls,
    }) = opened
    {
        let facts = ConnFacts {
            peer,
            peer_value: http::HeaderValue::try_from(peer.ip().to_string())
                .unwrap_or(http::HeaderValue::from_static("unknown")),
            auth_memo: crate::auth::ConnMemo::default(),
            inflight: Arc::clone(&l.inflight),
            https: l.tls,
            https_port: l.https_port,
            client_subject,
            tls,
        };
        serve_http(socket, prefix, h2, Arc::new(facts), permit, &l, &settings).await;
    }
    gauge.dec();
}

/// The TLS handshake or the h2 sniff, under its deadline. `None`: the
/// connection ends here (timed out, failed, or a TLS listener with no
/// certificates).
async fn open(
    mut stream: TcpStream,
    tls: bool,
    config: Option<Arc<rustls::ServerConfig>>,
    settings: &ServerSettings,
) -> Option<Opened> {
    if !tls {
        let sniffed = tokio::time::timeout(settings.header_read_timeout, sniff(&mut stream));
        let (h2, prefix) = sniffed.await.ok()?.ok()?;
        return Some(Opened {
            socket: Socket::Tcp(stream),
            prefix,
            h2,
            client_subject: None,
            tls: None,
        });
    }
    let handshakes = &metrics().tls_handshakes;
    let accept = tokio_rustls::TlsAcceptor::from(config?).accept(stream);
    let tls = match tokio::time::timeout(settings.tls_handshake_timeout, accept).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(_)) => {
            handshakes.with_label_values(&["failure", "none"]).inc();
            return None;
        }
        Err(_) => {
            handshakes.with_label_values(&["timeout", "none"]).inc();
            return None;
        }
    };
    let (_, session) = tls.get_ref();
    let version = match session.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "1.2",
        _ => "other",
    };
    let h2 = session.alpn_protocol() == Some(b"h2");
    let client_subject = session
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(crate::tls::subject)
        .and_then(|s| http::HeaderValue::try_from(s).ok());
    handshakes.with_label_values(&["success", version]).inc();
    let facts = TlsFacts {
        version,
        sni: session.server_name().map(Into::into),
    };
    Some(Opened {
        socket: Socket::server_tls(tls),
        prefix: Bytes::new(),
        h2,
        client_subject,
        tls: Some(facts),
    })
}

/// Serves HTTP/1.1 (with upgrades) or h2 on an opened connection until it
/// closes or the drain ends it.
async fn serve_http(
    stream: Socket,
    prefix: Bytes,
    h2: bool,
    facts: Arc<ConnFacts>,
    permit: OwnedSemaphorePermit,
    l: &Listener,
    settings: &ServerSettings,
) {
    let (io, state) = conn::open(stream, prefix, !h2, permit, settings);
    let live = Arc::clone(&l.live);
    let call = move |req| {
        let live = Arc::clone(&live);
        let facts = Arc::clone(&facts);
        let activity = Some(ActivityGuard::new(&state));
        async move { Ok::<_, Infallible>(pipeline::handle(req, facts, activity, &live).await) }
    };
    if h2 {
        // Each h2 stream runs in a task of its own. Spawned unboxed, the
        // pipeline's future (several KB) was copied nine times per stream by
        // tokio's spawn path, its task cell and hyper's stream state: 77k of
        // the 130k user-space instructions of an h2c request, 69k with the
        // box (loadtest/profile.py). HTTP/1.1 polls the future in place in
        // the connection's task, where a box would only add an allocation.
        let svc = service_fn(move |req| Box::pin(call(req)));
        let conn = h2_builder(settings).serve_connection(io, svc);
        drive(conn, l.shutdown.clone(), &l.inflight).await;
    } else {
        let svc = service_fn(call);
        let conn = h1_builder(settings)
            .serve_connection(io, svc)
            .with_upgrades();
        drive(conn, l.shutdown.clone(), &l.inflight).await;
    }
}

/// Reads until the bytes seen either diverge from the h2 preface (HTTP/1)
/// or complete it (h2). Returns the bytes read, to be replayed.
async fn sniff(stream: &mut TcpStream) -> io::Result<(bool, Bytes)> {
    let mut buf = BytesMut::with_capacity(64);
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let n = buf.len().min(H2_PREFACE.len());
        if buf[..n] != H2_PREFACE[..n] {
            return Ok((false, buf.freeze()));
        }
        if n == H2_PREFACE.len() {
            return Ok((true, buf.freeze()));
        }
    }
}

fn h1_builder(s: &ServerSettings) -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        // Head and idle timing is the connection watchdog's (see ConnState).
        .header_read_timeout(None)
        // Twice the configured limits: the configured ones are enforced in
        // `admit` with a JSON 431; these are the parser's hard ceiling.
        // (hyper's floor for its read buffer is 8 KiB.)
        .max_headers(s.max_request_headers * 2)
        .max_buf_size((s.max_request_header_bytes * 2).max(8192))
        .max_header_size(s.max_request_header_bytes * 2)
        .keep_alive(true)
        .half_close(false)
        .ignore_invalid_headers(false)
        .allow_multiple_spaces_in_request_line_delimiters(false);
    b
}

fn h2_builder(s: &ServerSettings) -> http2::Builder<TokioExecutor> {
    let mut b = http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .max_concurrent_streams(s.max_concurrent_streams)
        .max_header_list_size((s.max_request_header_bytes * 2) as u32)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_RESETS)
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONN_WINDOW)
        .max_frame_size(H2_MAX_FRAME)
        .max_send_buf_size(H2_STREAM_WINDOW as usize);
    b
}

/// A hyper connection that can stop taking new requests.
trait Graceful: Future<Output = Result<(), hyper::Error>> {
    fn begin_shutdown(self: Pin<&mut Self>);
}

impl<I, S, B> Graceful for http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn begin_shutdown(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, B> Graceful for http2::Connection<I, S, TokioExecutor>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    TokioExecutor: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn begin_shutdown(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Runs a connection to its end, draining it when shutdown is signalled.
/// (Idle and head timeouts are enforced by its socket, `ConnIo`.)
async fn drive<C: Graceful>(conn: C, mut shutdown: watch::Receiver<bool>, requests: &Requests) {
    let mut conn = std::pin::pin!(conn);
    if !*shutdown.borrow() {
        tokio::select! {
            _ = &mut conn => return,
            _ = shutdown.changed() => {}
        }
    }
    conn.as_mut().begin_shutdown();
    // Once the shutdown grace runs out the connection is dropped: its
    // requests and response bodies go with it, and their finish stage
    // logs and counts them as cut.
    tokio::select! {
        _ = &mut conn => {}
        _ = requests.cut_happened() => {}
    }
}
