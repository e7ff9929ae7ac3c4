//! Connections to one endpoint: a LIFO keep-alive pool for HTTP/1.1, one
//! shared multiplexed connection for h2c.
//!
//! Written over `hyper::client::conn` rather than hyper-util's client so
//! that (a) a connect failure hands the request back untouched, to be tried
//! on another endpoint, (b) the idle cap and idle timeout are exact, and
//! (c) a pooled connection that turns out to be dead is replaced without
//! the request being lost.

use std::io;
use std::sync::Mutex;
use std::time::Duration;

use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::body::RequestBody;

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TCP connect (or name resolution) failed.
    #[error("connect failed: {0}")]
    Io(#[from] io::Error),
    /// TCP connect took longer than `connect_timeout`.
    #[error("connect timed out")]
    Timeout,
    /// The HTTP handshake failed.
    #[error("handshake failed: {0}")]
    Handshake(#[from] hyper::Error),
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Target {
    /// Host name or IP literal (without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Most idle connections kept.
    pub max_idle: usize,
    /// Idle connections older than this are closed.
    pub idle_timeout: Duration,
    /// Largest upstream response head accepted.
    pub max_response_header_bytes: usize,
}

/// A connection ready for one request.
pub enum Conn {
    /// A HTTP/1.1 connection, owned until the response ends.
    Http1(http1::SendRequest<RequestBody>),
    /// A handle to the shared h2 connection.
    H2(http2::SendRequest<RequestBody>),
}

/// A pooled HTTP/1.1 connection. It is returned to the pool as soon as its
/// response head arrives and becomes usable again (`is_ready`) once hyper
/// has read that response to the end, so no task per request is needed to
/// hand it back.
struct Pooled {
    tx: http1::SendRequest<RequestBody>,
    /// When it was last handed out or returned.
    since: Instant,
}

/// The pool of one endpoint.
pub struct Pool {
    target: Target,
    h2: bool,
    /// Connections, busy or idle; at most `max_idle` are kept.
    idle: Mutex<Vec<Pooled>>,
    shared: Mutex<Option<http2::SendRequest<RequestBody>>>,
}

impl Pool {
    /// An empty pool.
    pub fn new(target: Target, h2: bool) -> Self {
        Self {
            target,
            h2,
            idle: Mutex::new(Vec::new()),
            shared: Mutex::new(None),
        }
    }

    /// A live idle connection, if one is pooled. The most recently used is
    /// taken first (its server side is the least likely to have timed out).
    pub fn checkout(&self) -> Option<Conn> {
        if self.h2 {
            let guard = self.shared.lock().ok()?;
            return guard
                .as_ref()
                .filter(|tx| !tx.is_closed())
                .map(|tx| Conn::H2(tx.clone()));
        }
        let mut conns = self.idle.lock().ok()?;
        let timeout = self.target.idle_timeout;
        let mut i = conns.len();
        while i > 0 {
            i -= 1;
            let c = &conns[i];
            if c.tx.is_closed() {
                conns.swap_remove(i);
            } else if c.tx.is_ready() {
                let c = conns.swap_remove(i);
                if c.since.elapsed() < timeout {
                    return Some(Conn::Http1(c.tx));
                }
            }
        }
        None
    }

    /// Opens a new connection.
    pub async fn connect(&self) -> Result<Conn, ConnectError> {
        let t = &self.target;
        let stream = tokio::time::timeout(
            t.connect_timeout,
            TcpStream::connect((t.host.as_str(), t.port)),
        )
        .await
        .map_err(|_| ConnectError::Timeout)??;
        stream.set_nodelay(true)?;
        let io = TokioIo::new(stream);
        if self.h2 {
            let (tx, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(Duration::from_secs(30))
                .keep_alive_timeout(Duration::from_secs(10))
                .max_header_list_size(t.max_response_header_bytes as u32)
                .handshake(io)
                .await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            if let Ok(mut shared) = self.shared.lock() {
                *shared = Some(tx.clone());
            }
            Ok(Conn::H2(tx))
        } else {
            let (tx, conn) = http1::Builder::new()
                .max_buf_size(t.max_response_header_bytes.max(8192))
                .handshake(io)
                .await?;
            tokio::spawn(async move {
                let _ = conn.with_upgrades().await;
            });
            Ok(Conn::Http1(tx))
        }
    }

    /// Returns a HTTP/1.1 connection whose response head has arrived. It
    /// is taken again only once `is_ready` (its response was read to the
    /// end); one that closes instead is dropped by the next checkout or
    /// sweep. When the pool is full the connection is dropped, and hyper
    /// closes it after the current response.
    pub fn release(&self, tx: http1::SendRequest<RequestBody>) {
        if let Ok(mut conns) = self.idle.lock()
            && conns.len() < self.target.max_idle
        {
            conns.push(Pooled {
                tx,
                since: Instant::now(),
            });
        }
    }

    /// Closes idle connections past the idle timeout, and forgets closed ones.
    pub fn evict_expired(&self) {
        if let Ok(mut conns) = self.idle.lock() {
            let timeout = self.target.idle_timeout;
            conns.retain(|c| {
                let expired = c.tx.is_ready() && c.since.elapsed() >= timeout;
                !(c.tx.is_closed() || expired)
            });
        }
    }

    /// Number of idle (ready) HTTP/1.1 connections.
    pub fn idle_count(&self) -> usize {
        self.idle
            .lock()
            .map_or(0, |c| c.iter().filter(|c| c.tx.is_ready()).count())
    }
}
