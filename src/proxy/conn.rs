//! One downstream connection's state and socket: the watchdog that
//! enforces NGINX-style idle, head, send and tunnel timeouts (`ConnState`,
//! `Watch`), the guard a request holds while it is in flight
//! (`ActivityGuard`), its share of upstream slots, the h2 stall clock, and
//! the socket wrapper that replays sniffed bytes and runs the watchdog on
//! reads (`ConnIo` over a `Socket`). Stage 0 of the pipeline; the
//! accept loops that use it are in `server.rs`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;

use crate::snapshot::ServerSettings;
use crate::socket::Socket;

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
pub(crate) struct ConnState {
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
    fn new(s: &ServerSettings) -> Self {
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
pub(crate) struct ActivityGuard(Arc<ConnState>);

impl ActivityGuard {
    /// Counts one request in flight; its head is complete.
    pub(crate) fn new(state: &Arc<ConnState>) -> Self {
        state.inflight.fetch_add(1, Ordering::Relaxed);
        state.head.store(NONE, Ordering::Relaxed);
        ActivityGuard(Arc::clone(state))
    }

    /// The connection became an upgraded tunnel: from now on it is timed
    /// only by `idle` without data (and `send_timeout` for a client that
    /// stops reading), never by the head or keep-alive timers.
    pub(crate) fn enter_tunnel(&self, idle: Duration) {
        let s = &self.0;
        let ticks = (idle.as_nanos().div_ceil(s.period.as_nanos().max(1)) as u64).max(1);
        s.on_tunnel_data();
        s.head.store(NONE, Ordering::Relaxed);
        s.tunnel_ticks.store(ticks, Ordering::Relaxed);
    }
    /// The request has no body: what is read after its head belongs to
    /// the next one.
    pub(crate) fn bodiless(&self) {
        self.0.bodiless.store(true, Ordering::Relaxed);
    }
    /// A stall clock for an h2 response stream of this connection (`None`
    /// on HTTP/1, where a client that stops reading blocks the socket
    /// write, which `send_timeout` sees already).
    pub(crate) fn stall_clock(&self) -> Option<StallClock> {
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
    pub(crate) fn hold_upstream(&self, share: usize) -> Result<Option<ConnUpstream>, ShareFull> {
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
pub(crate) struct ShareFull;

/// An upstream request held by an h2 client connection; given back on drop.
pub(crate) struct ConnUpstream(Arc<ConnState>);

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
pub(crate) struct StallClock {
    state: Arc<ConnState>,
    since: Arc<AtomicU64>,
}

impl StallClock {
    /// A chunk went to hyper: the wait for the client starts.
    pub(crate) fn handed_over(&self) {
        self.since
            .store(self.state.tick.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// hyper asks for more: the last chunk is out.
    pub(crate) fn polled(&self) {
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

/// Wraps a client connection's stream in its watched socket: the sniffed
/// bytes `prefix` come first, and the watchdog (timed by `settings`) runs
/// on its reads. Returns the socket for hyper and the state its requests
/// report to.
pub(super) fn open(
    stream: Socket,
    prefix: Bytes,
    h1: bool,
    slot: OwnedSemaphorePermit,
    settings: &ServerSettings,
) -> (hyper_util::rt::TokioIo<ConnIo>, Arc<ConnState>) {
    let watch = Watch::new(settings);
    let state = ConnState::new(h1, slot, &watch);
    let io = ConnIo {
        prefix,
        inner: stream,
        state: Arc::clone(&state),
        tick: Box::pin(tokio::time::sleep(watch.period)),
        watch,
    };
    (hyper_util::rt::TokioIo::new(io), state)
}

/// The connection's socket: replays the sniffed bytes first and reports
/// reads to the watchdog.
///
/// It also runs the connection's watchdog: a read that would wait polls
/// the tick timer, and an expired connection's read fails with `TimedOut`,
/// which makes hyper close it. Hyper always has a read pending on an idle
/// or head-reading connection, so the timer is always polled when it
/// matters.
pub(super) struct ConnIo {
    prefix: Bytes,
    inner: Socket,
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
