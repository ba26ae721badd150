//! A read budget on every accepted socket, so an unauthenticated client cannot make the gateway
//! buffer a large frame.
//!
//! The WebSocket library's frame cap is the post-handshake one (25 MiB) and cannot be changed on
//! a live socket, while OpenClaw refuses anything over 64 KiB before `hello-ok`. Without a bound
//! below the library, a client could announce a 25 MiB frame on each of its 32 pre-auth sockets
//! and have the gateway buffer 800 MiB before the handshake checks a single byte. So every
//! socket counts the bytes it reads: an HTTP request is unbounded (hyper bounds its headers, and
//! bodies belong to authenticated routes), a WebSocket upgrade limits the rest of the handshake
//! to [`PREAUTH_READ_BUDGET`], and a successful handshake lifts the limit. Past the budget a
//! read fails and the connection closes with 1009, as an oversized pre-auth frame does.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Bytes a WebSocket may read between its upgrade and `hello-ok`: one maximal pre-auth frame,
/// its header, and a few control frames. A read may overshoot by one buffer (a few KiB).
pub(crate) const PREAUTH_READ_BUDGET: u64 =
    driftless_protocol::MAX_PREAUTH_PAYLOAD_BYTES as u64 + 16 * 1024;

const UNLIMITED: u64 = u64::MAX;

/// The bytes one socket may still read; shared by the socket and its connection task.
#[derive(Debug, Clone)]
pub(crate) struct ReadBudget(Arc<AtomicU64>);

impl ReadBudget {
    pub(crate) fn unlimited() -> ReadBudget {
        ReadBudget(Arc::new(AtomicU64::new(UNLIMITED)))
    }

    /// From now on, at most `bytes` more may be read.
    pub(crate) fn limit(&self, bytes: u64) {
        self.0.store(bytes, Ordering::Relaxed);
    }

    pub(crate) fn lift(&self) {
        self.0.store(UNLIMITED, Ordering::Relaxed);
    }

    pub(crate) fn exhausted(&self) -> bool {
        self.0.load(Ordering::Relaxed) == 0
    }

    fn spend(&self, n: u64) {
        // Only the socket's own reads decrease it; a concurrent `lift` wins.
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                (left != UNLIMITED).then(|| left.saturating_sub(n))
            });
    }
}

/// An accepted TCP stream that stops reading once its budget is spent.
pub(crate) struct BudgetedStream {
    inner: TcpStream,
    budget: ReadBudget,
}

impl BudgetedStream {
    pub(crate) fn new(inner: TcpStream, budget: ReadBudget) -> BudgetedStream {
        BudgetedStream { inner, budget }
    }
}

impl AsyncRead for BudgetedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.budget.exhausted() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "pre-auth read budget exhausted",
            )));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &polled {
            self.budget.spend((buf.filled().len() - before) as u64);
        }
        polled
    }
}

impl AsyncWrite for BudgetedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spending_stops_at_zero_and_lift_wins() {
        let b = ReadBudget::unlimited();
        b.spend(1 << 40);
        assert!(!b.exhausted(), "unlimited is never spent");
        b.limit(10);
        b.spend(4);
        assert!(!b.exhausted());
        b.spend(100);
        assert!(b.exhausted());
        b.lift();
        b.spend(100);
        assert!(!b.exhausted());
    }
}
