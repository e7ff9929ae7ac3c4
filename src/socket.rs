//! A connected socket, plain TCP or TLS over it, on either side: client
//! connections (server-side TLS) and upstream connections (client-side
//! TLS). The HTTP/1.1 upstream codec reads and writes through this one
//! type, so plain and `https://` upstreams share one stack (pooling,
//! framing, early responses, the keep-alive race, 101 tunnels); the
//! downstream connection's watched socket wraps it too.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A connected socket.
pub(crate) enum Socket {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS (rustls) over TCP, as client or as server.
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
}

impl Socket {
    fn tcp(&self) -> &TcpStream {
        match self {
            Socket::Tcp(s) => s,
            Socket::Tls(s) => s.get_ref().0,
        }
    }

    /// A client-side TLS connection.
    pub(crate) fn client_tls(tls: tokio_rustls::client::TlsStream<TcpStream>) -> Self {
        Socket::Tls(Box::new(tokio_rustls::TlsStream::Client(tls)))
    }

    /// A server-side TLS connection.
    pub(crate) fn server_tls(tls: tokio_rustls::server::TlsStream<TcpStream>) -> Self {
        Socket::Tls(Box::new(tokio_rustls::TlsStream::Server(tls)))
    }

    /// True when nothing arrived on the idle connection: the peer neither
    /// closed it nor sent bytes no request asked for (for TLS, a close
    /// alert or a late record). Peeks, so nothing is consumed; uses the
    /// readiness the I/O driver already recorded, so a quiet connection
    /// costs no system call.
    pub(crate) fn is_quiet(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let mut probe = [0u8; 1];
        let mut buf = ReadBuf::new(&mut probe);
        self.tcp().poll_peek(&mut cx, &mut buf).is_pending()
    }

    /// Reads what is available into `buf` (growing it by up to `chunk`);
    /// `Ok(0)` at end of stream.
    pub(crate) fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        chunk: usize,
    ) -> Poll<io::Result<usize>> {
        match self {
            // Straight into the spare capacity, without initializing it.
            Socket::Tcp(s) => loop {
                ready!(s.poll_read_ready(cx))?;
                buf.reserve(chunk);
                match s.try_read_buf(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    r => return Poll::Ready(r),
                }
            },
            // rustls copies plaintext out of its own buffer, straight into
            // the spare capacity (tokio's `read_buf`, polled once: it is
            // cancel-safe, and nothing is zeroed first).
            Socket::Tls(s) => {
                buf.reserve(chunk);
                let read = tokio::io::AsyncReadExt::read_buf(&mut **s, buf);
                std::future::Future::poll(std::pin::pin!(read), cx)
            }
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_write(cx, data),
            Socket::Tls(s) => Pin::new(&mut **s).poll_write(cx, data),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Socket::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Socket::Tcp(s) => s.is_write_vectored(),
            Socket::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_flush(cx),
            Socket::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}
