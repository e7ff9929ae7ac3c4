//! Stage 0, `accept`: downstream connections.
//!
//! Each connection: a permit from the connection limit; the HTTP/2 preface
//! is sniffed under `header_read_timeout` (hyper-util's auto detection
//! would wait forever for the first bytes); then hyper serves HTTP/1.1 (with
//! upgrades) or h2c with every limit set explicitly from the snapshot. An
//! idle watchdog closes keep-alive connections with no request in flight,
//! and a shutdown signal drains them gracefully.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use super::ctx::Requests;
use super::pipeline::{self, ConnInfo};
use crate::observability::metrics::metrics;
use crate::snapshot::{Settings, SharedSnapshot};

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

/// No head in progress.
const NONE: u64 = u64::MAX;

/// Activity of one connection, for its watchdog.
///
/// NGINX semantics, which hyper alone does not give (its header timer also
/// runs while a keep-alive connection waits for the next request): a
/// connection with no request in flight may idle for `idle_timeout`; once
/// the first byte of a request head arrives, the head must be complete
/// within `header_read_timeout`.
///
/// Time is kept in watchdog ticks (half the shorter timeout), not clock
/// reads: requests only store the current tick, and the one timer per
/// connection is never reset on the request path. A timeout therefore
/// fires up to one tick late, never early.
pub struct ConnState {
    inflight: AtomicUsize,
    /// Ticks elapsed since the connection started.
    tick: AtomicU64,
    /// Tick at which the last request finished.
    last: AtomicU64,
    /// Tick at which the current HTTP/1 head began arriving, or `NONE`.
    head: AtomicU64,
    /// Tick at which writes to the client started to block, or `NONE`.
    stall: AtomicU64,
    /// Once the connection is an upgraded tunnel: its idle limit in ticks
    /// (0 before). A tunnel is timed only by this (and `stall`): data in
    /// either direction moves `last`, and no byte is read as a head.
    tunnel_ticks: AtomicU64,
    /// The watchdog's tick length.
    period: Duration,
    /// The last four bytes read (HTTP/1): a request without a body whose
    /// bytes did not end with its head's `\r\n\r\n` had more behind it,
    /// the start of a pipelined head.
    tail: AtomicU32,
    /// The request in flight has no body (HTTP/1).
    bodiless: AtomicBool,
    /// h2: upstream requests this connection's streams hold now.
    upstream_held: AtomicUsize,
    /// h2: the response streams' stall clocks (tick since which each has
    /// handed a chunk to hyper that the client's flow control has not let
    /// out yet, or `NONE`).
    streams: std::sync::Mutex<Vec<std::sync::Weak<AtomicU64>>>,
    h1: bool,
    /// The connection's slot under `max_connections`. It lives as long as
    /// the state does; an upgraded tunnel's client stream is this
    /// connection's `ConnIo`, which holds the state, so a tunnel keeps
    /// counting as a connection and a drain waits for it.
    _slot: OwnedSemaphorePermit,
}

impl ConnState {
    fn new(h1: bool, slot: OwnedSemaphorePermit, watch: &Watch) -> Arc<Self> {
        Arc::new(Self {
            inflight: AtomicUsize::new(0),
            tick: AtomicU64::new(0),
            last: AtomicU64::new(0),
            // The first head is timed from the connection's start.
            head: AtomicU64::new(if h1 { 0 } else { NONE }),
            stall: AtomicU64::new(NONE),
            tunnel_ticks: AtomicU64::new(0),
            period: watch.period,
            tail: AtomicU32::new(0),
            bodiless: AtomicBool::new(false),
            streams: std::sync::Mutex::default(),
            upstream_held: AtomicUsize::new(0),
            h1,
            _slot: slot,
        })
    }

    /// Bytes arrived: on an idle HTTP/1 connection they start a head; on
    /// a tunnel they are activity.
    fn on_read(&self) {
        if self.tunnel_ticks.load(Ordering::Relaxed) != 0 {
            self.on_tunnel_data();
        } else if self.h1
            && self.inflight.load(Ordering::Relaxed) == 0
            && self.head.load(Ordering::Relaxed) == NONE
        {
            self.head
                .store(self.tick.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }

    /// True when a response stream has waited on the client's flow
    /// control for too long (`too_long` of the tick it started waiting);
    /// forgets the streams that ended.
    fn stream_stalled(&self, too_long: impl Fn(u64) -> bool) -> bool {
        let Ok(mut streams) = self.streams.lock() else {
            return false;
        };
        let mut stalled = false;
        streams.retain(|w| match w.upgrade() {
            Some(since) => {
                let s = since.load(Ordering::Relaxed);
                stalled |= s != NONE && too_long(s);
                true
            }
            None => false,
        });
        stalled
    }

    /// Keeps the last four bytes read (HTTP/1).
    fn keep_tail(&self, read: &[u8]) {
        if self.h1 {
            let mut tail = self.tail.load(Ordering::Relaxed);
            for b in &read[read.len().saturating_sub(4)..] {
                tail = (tail << 8) | u32::from(*b);
            }
            self.tail.store(tail, Ordering::Relaxed);
        }
    }

    /// Data passed through the tunnel, either way.
    fn on_tunnel_data(&self) {
        self.last
            .store(self.tick.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// A write to the client would block: the stall clock starts, if it
    /// is not running already.
    fn on_write_blocked(&self) {
        if self.stall.load(Ordering::Relaxed) == NONE {
            self.stall
                .store(self.tick.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }

    /// Advances one tick; true when the connection has been idle, reading
    /// a head, or unable to write, for longer than allowed.
    fn tick_expired(&self, w: &Watch) -> bool {
        let now = self.tick.fetch_add(1, Ordering::Relaxed) + 1;
        // Whole ticks surely elapsed since `since` (the tick it was stored
        // in was partly over already).
        let elapsed = |since: u64| now.saturating_sub(since).saturating_sub(1);
        let stall = self.stall.load(Ordering::Relaxed);
        if stall != NONE && elapsed(stall) >= w.send_ticks {
            return true;
        }
        let tunnel = self.tunnel_ticks.load(Ordering::Relaxed);
        if tunnel != 0 {
            return elapsed(self.last.load(Ordering::Relaxed)) >= tunnel;
        }
        if !self.h1 && self.stream_stalled(|since| elapsed(since) >= w.send_ticks) {
            return true;
        }
        if self.inflight.load(Ordering::Relaxed) > 0 {
            return false;
        }
        match self.head.load(Ordering::Relaxed) {
            NONE => elapsed(self.last.load(Ordering::Relaxed)) >= w.idle_ticks,
            head => elapsed(head) >= w.head_ticks,
        }
    }
}

/// Watchdog timing for one connection, in ticks.
#[derive(Clone, Copy)]
struct Watch {
    period: Duration,
    idle_ticks: u64,
    head_ticks: u64,
    send_ticks: u64,
}

impl Watch {
    fn new(s: &Settings) -> Self {
        let shortest = s
            .idle_timeout
            .min(s.header_read_timeout)
            .min(s.send_timeout);
        let period = (shortest / 2).max(Duration::from_millis(10));
        let ticks = |d: Duration| d.as_nanos().div_ceil(period.as_nanos()) as u64;
        Watch {
            period,
            idle_ticks: ticks(s.idle_timeout),
            head_ticks: ticks(s.header_read_timeout),
            send_ticks: ticks(s.send_timeout),
        }
    }
}

/// Marks a request in flight on its connection until dropped (it lives in
/// the finish stage, so a streaming response counts until it ends).
pub struct ActivityGuard(Arc<ConnState>);

impl ActivityGuard {
    /// Counts one request in flight; its head is complete.
    pub fn new(state: &Arc<ConnState>) -> Self {
        state.inflight.fetch_add(1, Ordering::Relaxed);
        state.head.store(NONE, Ordering::Relaxed);
        ActivityGuard(Arc::clone(state))
    }

    /// The connection became an upgraded tunnel: from now on it is timed
    /// only by `idle` without data (and `send_timeout` for a client that
    /// stops reading), never by the head or keep-alive timers.
    pub fn into_tunnel(&self, idle: Duration) {
        let s = &self.0;
        let ticks = (idle.as_nanos().div_ceil(s.period.as_nanos().max(1)) as u64).max(1);
        s.on_tunnel_data();
        s.head.store(NONE, Ordering::Relaxed);
        s.tunnel_ticks.store(ticks, Ordering::Relaxed);
    }
    /// The request has no body: what is read after its head belongs to
    /// the next one.
    pub fn bodiless(&self) {
        self.0.bodiless.store(true, Ordering::Relaxed);
    }
    /// A stall clock for an h2 response stream of this connection (`None`
    /// on HTTP/1, where a client that stops reading blocks the socket
    /// write, which `send_timeout` sees already).
    pub fn stall_clock(&self) -> Option<StallClock> {
        let s = &self.0;
        if s.h1 {
            return None;
        }
        let since = Arc::new(AtomicU64::new(NONE));
        if let Ok(mut streams) = s.streams.lock() {
            streams.push(Arc::downgrade(&since));
        }
        Some(StallClock {
            state: Arc::clone(s),
            since,
        })
    }
    /// One more upstream request for this h2 connection, if it holds fewer
    /// than `share` already. HTTP/1 connections carry one request at a
    /// time: nothing to count (`Ok(None)`).
    pub fn hold_upstream(&self, share: usize) -> Result<Option<ConnUpstream>, ShareFull> {
        let s = &self.0;
        if s.h1 {
            return Ok(None);
        }
        if s.upstream_held.fetch_add(1, Ordering::AcqRel) >= share {
            s.upstream_held.fetch_sub(1, Ordering::AcqRel);
            return Err(ShareFull);
        }
        Ok(Some(ConnUpstream(Arc::clone(s))))
    }
}

/// The connection holds its whole share of an upstream already.
#[derive(Debug)]
pub struct ShareFull;

/// An upstream request held by an h2 client connection; given back on drop.
pub struct ConnUpstream(Arc<ConnState>);

impl Drop for ConnUpstream {
    fn drop(&mut self) {
        self.0.upstream_held.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How long an h2 response stream has waited for the client's flow
/// control: hyper takes a chunk, then waits for window to send it, and
/// polls the body again only once it is out. A stream that waits longer
/// than `send_timeout` closes its connection (hyper has no way to reset
/// one stream from outside), releasing every upstream slot it held.
pub struct StallClock {
    state: Arc<ConnState>,
    since: Arc<AtomicU64>,
}

impl StallClock {
    /// A chunk went to hyper: the wait for the client starts.
    pub fn handed_over(&self) {
        self.since
            .store(self.state.tick.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// hyper asks for more: the last chunk is out.
    pub fn polled(&self) {
        self.since.store(NONE, Ordering::Relaxed);
    }
}

/// `\r\n\r\n` as the last four bytes read.
const HEAD_END: u32 = u32::from_be_bytes(*b"\r\n\r\n");

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        let s = &self.0;
        let now = s.tick.load(Ordering::Relaxed);
        s.last.store(now, Ordering::Relaxed);
        // Bytes read past a bodiless request's head are a pipelined head
        // that is not complete yet (a complete one would be in flight
        // already): it is timed from here by `header_read_timeout`, not
        // left to the idle timer.
        if s.h1
            && s.bodiless.swap(false, Ordering::Relaxed)
            && s.tail.load(Ordering::Relaxed) != HEAD_END
        {
            s.head.store(now, Ordering::Relaxed);
        }
        s.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepts connections on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    live: SharedSnapshot,
    limit: Arc<Semaphore>,
    inflight: Arc<Requests>,
    https_port: u16,
    shutdown: watch::Receiver<bool>,
) {
    let rx = shutdown.clone();
    accept_loop(listener, limit, shutdown, |stream, peer, permit| {
        tokio::spawn(connection(
            stream,
            peer,
            Arc::clone(&live),
            permit,
            (Arc::clone(&inflight), https_port),
            rx.clone(),
        ));
    })
    .await;
}

/// Accepts connections under the connection limit until `shutdown` turns
/// true, handing each to `spawn`.
async fn accept_loop(
    listener: TcpListener,
    limit: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
    spawn: impl Fn(TcpStream, SocketAddr, OwnedSemaphorePermit),
) {
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
        spawn(stream, peer, permit);
    }
}

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    live: SharedSnapshot,
    permit: OwnedSemaphorePermit,
    (inflight, https_port): (Arc<Requests>, u16),
    shutdown: watch::Receiver<bool>,
) {
    let gauge = &metrics().connections_active;
    gauge.inc();
    let settings = live.load().settings.clone();
    let _ = stream.set_nodelay(true);
    // A connection that has not sent its first bytes when a drain starts is
    // simply closed: it has no request in flight.
    let mut drain = shutdown.clone();
    let sniffed = tokio::select! {
        r = tokio::time::timeout(settings.header_read_timeout, sniff(&mut stream)) => r.ok().and_then(Result::ok),
        _ = drain.wait_for(|draining| *draining) => None,
    };
    if let Some((h2, prefix)) = sniffed {
        let conn = Conn {
            peer,
            live,
            permit,
            inflight,
            shutdown,
            settings,
            https: false,
            https_port,
            client_subject: None,
        };
        conn.serve(ClientStream::Tcp(stream), prefix, h2).await;
    }
    gauge.dec();
}

/// A connection ready to serve HTTP.
struct Conn {
    peer: SocketAddr,
    live: SharedSnapshot,
    permit: OwnedSemaphorePermit,
    inflight: Arc<Requests>,
    shutdown: watch::Receiver<bool>,
    settings: Settings,
    https: bool,
    /// The port TLS is served on (for `redirect_http`).
    https_port: u16,
    /// Subject of the verified client certificate (mTLS).
    client_subject: Option<http::HeaderValue>,
}

impl Conn {
    async fn serve(self, stream: ClientStream, prefix: Bytes, h2: bool) {
        let Conn {
            peer,
            live,
            permit,
            inflight,
            shutdown,
            settings,
            https,
            https_port,
            client_subject,
        } = self;
        let watch = Watch::new(&settings);
        let state = ConnState::new(!h2, permit, &watch);
        let io = TokioIo::new(ConnIo {
            prefix,
            inner: stream,
            state: Arc::clone(&state),
            tick: Box::pin(tokio::time::sleep(watch.period)),
            watch,
        });
        let svc_state = Arc::clone(&state);
        let peer_value = http::HeaderValue::try_from(peer.ip().to_string())
            .unwrap_or(http::HeaderValue::from_static("unknown"));
        let memo = Arc::new(crate::auth::ConnMemo::default());
        let requests = Arc::clone(&inflight);
        let svc = service_fn(move |req| {
            let live = Arc::clone(&live);
            let info = ConnInfo {
                peer,
                peer_value: peer_value.clone(),
                activity: Some(ActivityGuard::new(&svc_state)),
                auth_memo: Arc::clone(&memo),
                inflight: Arc::clone(&inflight),
                https,
                https_port,
                client_subject: client_subject.clone(),
            };
            async move { Ok::<_, Infallible>(pipeline::handle(req, info, &live).await) }
        });
        if h2 {
            let conn = h2_builder(&settings).serve_connection(io, svc);
            drive(conn, shutdown, &requests).await;
        } else {
            let conn = h1_builder(&settings)
                .serve_connection(io, svc)
                .with_upgrades();
            drive(conn, shutdown, &requests).await;
        }
    }
}

/// Accepts TLS connections on `listener` until `shutdown` turns true; each
/// handshake uses the live snapshot's certificates.
pub async fn serve_tls(
    listener: TcpListener,
    live: SharedSnapshot,
    limit: Arc<Semaphore>,
    inflight: Arc<Requests>,
    shutdown: watch::Receiver<bool>,
) {
    let rx = shutdown.clone();
    accept_loop(listener, limit, shutdown, |stream, peer, permit| {
        tokio::spawn(tls_connection(
            stream,
            peer,
            Arc::clone(&live),
            permit,
            Arc::clone(&inflight),
            rx.clone(),
        ));
    })
    .await;
}

async fn tls_connection(
    stream: TcpStream,
    peer: SocketAddr,
    live: SharedSnapshot,
    permit: OwnedSemaphorePermit,
    inflight: Arc<Requests>,
    shutdown: watch::Receiver<bool>,
) {
    let gauge = &metrics().connections_active;
    gauge.inc();
    let snapshot = live.load_full();
    let settings = snapshot.settings.clone();
    let _ = stream.set_nodelay(true);
    let handshakes = &metrics().tls_handshakes;
    let Some(config) = snapshot.tls.clone() else {
        gauge.dec();
        return;
    };
    drop(snapshot);
    let mut drain = shutdown.clone();
    let accept = tokio_rustls::TlsAcceptor::from(config).accept(stream);
    let tls = tokio::select! {
        r = tokio::time::timeout(settings.tls_handshake_timeout, accept) => r,
        _ = drain.wait_for(|draining| *draining) => {
            gauge.dec();
            return;
        }
    };
    match tls {
        Ok(Ok(tls)) => {
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
            let conn = Conn {
                peer,
                live,
                permit,
                inflight,
                shutdown,
                settings,
                https: true,
                https_port: 0,
                client_subject,
            };
            conn.serve(ClientStream::Tls(Box::new(tls)), Bytes::new(), h2)
                .await;
        }
        Ok(Err(_)) => handshakes.with_label_values(&["failure", "none"]).inc(),
        Err(_) => handshakes.with_label_values(&["timeout", "none"]).inc(),
    }
    gauge.dec();
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

fn h1_builder(s: &Settings) -> http1::Builder {
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

fn h2_builder(s: &Settings) -> http2::Builder<TokioExecutor> {
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

/// The connection's socket: replays the sniffed bytes first and reports
/// reads to the watchdog.
///
/// It also runs the connection's watchdog: a read that would wait polls
/// the tick timer, and an expired connection's read fails with `TimedOut`,
/// which makes hyper close it. Hyper always has a read pending on an idle
/// or head-reading connection, so the timer is always polled when it
/// matters.
/// A client connection: plain TCP, or TLS over it.
enum ClientStream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            ClientStream::Tcp(s) => s.is_write_vectored(),
            ClientStream::Tls(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

struct ConnIo {
    prefix: Bytes,
    inner: ClientStream,
    state: Arc<ConnState>,
    tick: Pin<Box<tokio::time::Sleep>>,
    watch: Watch,
}

impl AsyncRead for ConnIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.state.keep_tail(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = &buf.filled()[before..];
        if !read.is_empty() {
            self.state.keep_tail(read);
            self.state.on_read();
        }
        if r.is_pending()
            && let Poll::Ready(e) = self.poll_watchdog(cx)
        {
            return Poll::Ready(Err(e));
        }
        r
    }
}

impl ConnIo {
    /// Runs the watchdog's due ticks; `Ready` with an error when the
    /// connection has to close.
    fn poll_watchdog(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        while self.tick.as_mut().poll(cx).is_ready() {
            if self.state.tick_expired(&self.watch) {
                return Poll::Ready(io::ErrorKind::TimedOut.into());
            }
            let next = self.tick.deadline() + self.watch.period;
            self.tick.as_mut().reset(next);
        }
        Poll::Pending
    }

    /// Tracks write progress for `send_timeout`.
    fn after_write(
        &mut self,
        r: Poll<io::Result<usize>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        match &r {
            Poll::Ready(Ok(n)) if *n > 0 => {
                self.state.stall.store(NONE, Ordering::Relaxed);
                if self.state.tunnel_ticks.load(Ordering::Relaxed) != 0 {
                    self.state.on_tunnel_data();
                }
            }
            Poll::Pending => {
                self.state.on_write_blocked();
                if let Poll::Ready(e) = self.poll_watchdog(cx) {
                    return Poll::Ready(Err(e));
                }
            }
            _ => {}
        }
        r
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.after_write(r, cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.after_write(r, cx)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
