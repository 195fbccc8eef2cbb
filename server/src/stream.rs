//! The TCP stream under every HTTP connection the listener serves.
//!
//! While a connection speaks HTTP it counts the reads and writes that moved bytes, for the
//! listener's idle timeout. A WebSocket upgrade takes the bare [`TcpStream`] back out of it
//! ([`Counted::into_tcp`], through hyper's `Upgraded::downcast`): from then on the
//! connection reads and writes the socket directly, with no counter, no boxed I/O object and
//! no dynamic dispatch per system call.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A TCP stream that counts the reads and writes that moved bytes, for the idle timeout.
pub struct Counted {
    inner: TcpStream,
    activity: Arc<AtomicU64>,
}

impl Counted {
    /// `inner`, counting its activity in `activity`.
    pub fn new(inner: TcpStream, activity: Arc<AtomicU64>) -> Self {
        Counted { inner, activity }
    }

    /// The bare stream, no longer counted.
    pub fn into_tcp(self) -> TcpStream {
        self.inner
    }

    fn moved(&self) {
        self.activity.fetch_add(1, Ordering::Relaxed);
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.moved();
        }
        result
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.moved();
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.moved();
        }
        result
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
