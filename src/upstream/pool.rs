//! Connections to one endpoint: a LIFO keep-alive pool for HTTP/1.1 (plain
//! or TLS, one codec), one shared multiplexed connection for h2 and h2c.
//!
//! Our own pool rather than hyper-util's client, so that (a) a connect
//! failure hands the request back untouched, to be tried on another
//! endpoint, (b) the idle cap and idle timeout are exact, (c) a pooled
//! connection that turns out to be dead is replaced without the request
//! being lost, and (d) HTTP/1.1 connections need no task of their own
//! (see `h1`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::net::TcpStream;

use super::ConnectError;
use super::counter::Counter;
use super::h1;
use crate::body::RequestBody;
use crate::socket::Socket;

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct ConnectTarget {
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
    /// Open HTTP/1.1 connections of the whole upstream, and their cap.
    pub connections: Counter,
    /// TLS to the endpoint: the client config and the name verified (SNI).
    pub tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls_pki_types::ServerName<'static>,
    )>,
}

/// A connection ready for one request.
pub enum Pooled {
    /// A HTTP/1.1 connection, owned by the request until its response ends.
    Http1(h1::Conn),
    /// A handle to the shared h2 connection.
    H2(http2::SendRequest<RequestBody>),
}

/// An idle HTTP/1.1 connection and the sweep it was returned in.
struct Idle {
    conn: h1::Conn,
    since: u64,
}

/// The pool of one endpoint.
pub struct Pool {
    target: ConnectTarget,
    h2: bool,
    /// Idle HTTP/1.1 connections, most recently returned last.
    idle: Mutex<Vec<Idle>>,
    /// Sweeps so far: idle age is counted in sweeps (one a second), so
    /// the request path reads no clock to pool a connection.
    sweeps: AtomicU64,
    shared: Mutex<Option<http2::SendRequest<RequestBody>>>,
    /// Held while an h2 connection is being established, so that requests
    /// arriving together share one connection instead of each opening one.
    /// Only the (rare) connecting path takes it; it is an async lock because
    /// it is held across the connect.
    connecting: tokio::sync::Mutex<()>,
}

impl Pool {
    /// An empty pool.
    pub fn new(target: ConnectTarget, h2: bool) -> Self {
        Self {
            target,
            h2,
            idle: Mutex::new(Vec::new()),
            sweeps: AtomicU64::new(0),
            shared: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    /// A live idle connection, if one is pooled. The most recently used is
    /// taken first (its server side is the least likely to have timed out);
    /// connections the peer closed while idle are dropped on the way.
    pub fn checkout(&self) -> Option<Pooled> {
        if self.h2 {
            let guard = self.shared.lock().ok()?;
            return guard
                .as_ref()
                .filter(|tx| !tx.is_closed())
                .map(|tx| Pooled::H2(tx.clone()));
        }
        let mut idle = self.idle.lock().ok()?;
        while let Some(c) = idle.pop() {
            if c.conn.is_reusable() {
                return Some(Pooled::Http1(c.conn));
            }
        }
        None
    }

    /// Opens a new connection (for h2c: unless another request just did).
    pub async fn connect(&self) -> Result<Pooled, ConnectError> {
        if self.h2 {
            let _one_at_a_time = self.connecting.lock().await;
            if let Some(c) = self.checkout() {
                return Ok(c);
            }
            return self.open().await;
        }
        self.open().await
    }

    async fn open(&self) -> Result<Pooled, ConnectError> {
        let t = &self.target;
        let held = if self.h2 {
            None
        } else {
            Some(t.connections.take().ok_or(ConnectError::Overflow)?)
        };
        let stream = tokio::time::timeout(
            t.connect_timeout,
            TcpStream::connect((t.host.as_str(), t.port)),
        )
        .await
        .map_err(|_| ConnectError::Timeout)??;
        stream.set_nodelay(true)?;
        if let Some((cfg, name)) = &t.tls {
            let tls = tokio::time::timeout(
                t.connect_timeout,
                tokio_rustls::TlsConnector::from(Arc::clone(cfg)).connect(name.clone(), stream),
            )
            .await
            .map_err(|_| ConnectError::Timeout)??;
            if !self.h2 {
                let tls = Socket::client_tls(tls);
                return Ok(Pooled::Http1(h1::Conn::new(tls, held)));
            }
            return self.h2_handshake(TokioIo::new(tls)).await;
        }
        if !self.h2 {
            return Ok(Pooled::Http1(h1::Conn::new(Socket::Tcp(stream), held)));
        }
        self.h2_handshake(TokioIo::new(stream)).await
    }

    async fn h2_handshake<I>(&self, io: I) -> Result<Pooled, ConnectError>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let t = &self.target;
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
        Ok(Pooled::H2(tx))
    }

    /// Takes back a HTTP/1.1 connection whose response was read to the end.
    /// When `max_idle` are already idle it is closed instead.
    fn release_h1(&self, conn: h1::Conn) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < self.target.max_idle
        {
            idle.push(Idle {
                conn,
                since: self.sweeps.load(Ordering::Relaxed),
            });
        }
    }

    /// TLS to the endpoint, when it is `https://`.
    pub fn tls(
        &self,
    ) -> Option<&(
        Arc<rustls::ClientConfig>,
        rustls_pki_types::ServerName<'static>,
    )> {
        self.target.tls.as_ref()
    }

    /// Largest upstream response head accepted.
    pub fn max_head(&self) -> usize {
        self.target.max_response_header_bytes
    }

    /// One sweep (called every `interval`): closes connections idle for
    /// longer than the idle timeout (so at most one interval late) and ones
    /// the peer closed.
    pub fn evict_expired(&self, interval: Duration) {
        let now = self.sweeps.fetch_add(1, Ordering::Relaxed) + 1;
        let limit = self
            .target
            .idle_timeout
            .as_nanos()
            .div_ceil(interval.as_nanos().max(1)) as u64;
        if let Ok(mut idle) = self.idle.lock() {
            // Whole sweeps surely passed since `since` (it was partly over).
            idle.retain(|c| {
                now.saturating_sub(c.since).saturating_sub(1) < limit && c.conn.is_reusable()
            });
        }
    }

    /// Number of idle HTTP/1.1 connections.
    pub fn idle_count(&self) -> usize {
        self.idle.lock().map_or(0, |c| c.len())
    }
}

impl h1::Recycle for Pool {
    fn recycle(&self, conn: h1::Conn) {
        self.release_h1(conn);
    }
}
