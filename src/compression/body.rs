//! A response body compressed as it streams: the upstream body read as
//! bytes (`StreamReader`), an async-compression encoder over it, and its
//! output handed on in pieces (`ReaderStream`). The encoder flushes
//! whenever the upstream has nothing more for the moment, so a slow
//! stream reaches the client as it comes, not when the encoder's buffer
//! fills. Trailers are not passed on (a compressed response is never a
//! gRPC one).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use async_compression::Level;
use async_compression::tokio::bufread::{BrotliEncoder, GzipEncoder, ZstdEncoder};
use bytes::Bytes;
use futures_util::Stream;
use http_body::{Body, Frame};
use prometheus::IntCounter;
use tokio::io::AsyncRead;
use tokio_util::io::{ReaderStream, StreamReader};

use super::{Algorithm, Compressor};

/// Largest piece of compressed output handed on at once.
const OUT_CHUNK: usize = 16 << 10;
/// Brotli's window for on-the-fly compression (256 KiB; the library's
/// default of 4 MiB costs memory per response for little gain on API
/// bodies).
const BROTLI_WINDOW_LOG: i32 = 18;
/// Zstandard's window (1 MiB), well within the 8 MiB that browsers
/// accept for the `zstd` content coding (RFC 8878 §7.1).
const ZSTD_WINDOW_LOG: u32 = 20;

/// The input side: an upstream body as a stream of bytes, counted.
struct Input<B> {
    body: B,
    bytes_in: IntCounter,
}

impl<B> Stream for Input<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    // Trailers are dropped.
                    if let Ok(data) = frame.into_data()
                        && !data.is_empty()
                    {
                        self.bytes_in.inc_by(data.len() as u64);
                        return Poll::Ready(Some(Ok(data)));
                    }
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(io::Error::other(e)))),
                None => return Poll::Ready(None),
            }
        }
    }
}

/// A compressed response body.
pub(crate) struct Encoded {
    out: ReaderStream<Pin<Box<dyn AsyncRead + Send>>>,
    done: bool,
    bytes_out: IntCounter,
    // Held to the end: the route's compression slot.
    _z: Compressor,
}

impl Encoded {
    /// `body`, compressed as `z` says.
    pub(crate) fn new<B>(body: B, z: Compressor) -> Self
    where
        B: Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let input = StreamReader::new(Input {
            body,
            bytes_in: z.bytes_in.clone(),
        });
        let level = Level::Precise(z.level);
        let reader: Pin<Box<dyn AsyncRead + Send>> = match z.algorithm {
            Algorithm::Gzip => Box::pin(GzipEncoder::with_quality(input, level)),
            Algorithm::Br => Box::pin(BrotliEncoder::with_params(
                input,
                async_compression::brotli::EncoderParams::default()
                    .quality(level)
                    .window_size(BROTLI_WINDOW_LOG),
            )),
            Algorithm::Zstd => Box::pin(ZstdEncoder::with_quality_and_params(
                input,
                level,
                &[async_compression::zstd::CParameter::window_log(
                    ZSTD_WINDOW_LOG,
                )],
            )),
        };
        Self {
            out: ReaderStream::with_capacity(reader, OUT_CHUNK),
            done: false,
            bytes_out: z.bytes_out.clone(),
            _z: z,
        }
    }
}

impl Body for Encoded {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match ready!(Pin::new(&mut self.out).poll_next(cx)) {
            Some(Ok(b)) => {
                self.bytes_out.inc_by(b.len() as u64);
                Poll::Ready(Some(Ok(Frame::data(b))))
            }
            Some(Err(e)) => {
                self.done = true;
                Poll::Ready(Some(Err(Box::new(e))))
            }
            None => {
                self.done = true;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}
