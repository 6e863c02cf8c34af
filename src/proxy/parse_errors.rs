//! A `meshroute-error` on the responses hyper's HTTP/1.1 server writes by itself.
//!
//! When a request head cannot be parsed, hyper answers without calling the service — 400 for a
//! malformed head, 414 for a target too long, 431 for a head too large — and closes the
//! connection. Its API offers no way to add a header to those, so the client connection's I/O
//! does: it recognises such a head by where it is written, not only by what it says, since a
//! forwarded response may carry any status and any body.
//!
//! The service and the I/O of one connection share an [`Exchanges`]. Every service call holds
//! an [`Open`] guard ([`super::conns::Tracked`]) until hyper drops the response body, which
//! hyper does right after taking
//! the body's last frame (or at once for an empty body), with the last bytes still in its write
//! buffer; those bytes reach the socket by the next flush, which hyper completes only once its
//! buffer is empty. So a response head written while no response is open and after a flush
//! that completed with none open cannot belong to a response of the service: it is hyper's.
//! hyper only reads the next head once the previous response is written, so an HTTP/1.1
//! connection never has a service response and hyper's own in flight at once.
//!
//! What is left: when that flush did not complete (the client is not reading), hyper's head
//! goes out without the header; h2 protocol errors are stream resets, and the 431 the h2 crate
//! sends for a header list that is too large has no `meshroute-error` either.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;

use super::conns::{Activity, Open};
use crate::metrics::Metrics;

/// What one HTTP/1.1 client connection's service and I/O share.
#[derive(Debug)]
pub struct Exchanges {
    /// The connection's open service responses ([`Activity::open`]).
    activity: Arc<Activity>,
    /// Whether a flush completed while no response was open, since the last service call.
    flushed: AtomicBool,
    metrics: Arc<Metrics>,
}

impl Exchanges {
    pub fn new(metrics: Arc<Metrics>, activity: Arc<Activity>) -> Arc<Self> {
        Arc::new(Exchanges {
            activity,
            // Nothing was written yet.
            flushed: AtomicBool::new(true),
            metrics,
        })
    }

    /// Note a service call; the guard goes with its response body.
    pub fn open(&self) -> Open {
        // One task drives the connection's service and I/O: relaxed is enough.
        self.flushed.store(false, Ordering::Relaxed);
        Activity::open(&self.activity)
    }

    /// Note a flush of the connection that completed.
    pub fn flushed(&self) {
        if self.activity.open_streams() == 0 {
            self.flushed.store(true, Ordering::Relaxed);
        }
    }

    /// The `meshroute-error` reason for `buf`, when it starts a response head that hyper wrote
    /// by itself (see the module docs).
    fn hyper_error(&self, buf: &[u8]) -> Option<&'static str> {
        let reason = match buf.get(..13)? {
            b"HTTP/1.1 400 " => "client-protocol-error",
            b"HTTP/1.1 414 " => "uri-too-long",
            b"HTTP/1.1 431 " => "request-head-too-large",
            _ => return None,
        };
        let own = self.activity.open_streams() == 0 && self.flushed.load(Ordering::Relaxed);
        own.then_some(reason)
    }
}

/// A rewritten head being written in place of the bytes hyper handed over.
#[derive(Debug)]
pub struct Labelled {
    bytes: Vec<u8>,
    written: usize,
    /// The length of hyper's buffer, reported once all of `bytes` is written.
    replaces: usize,
}

impl Labelled {
    /// `buf` with a `meshroute-error` field after its status line, if it is a head hyper wrote
    /// by itself.
    pub fn of(exchanges: &Exchanges, buf: &[u8]) -> Option<Labelled> {
        let reason = exchanges.hyper_error(buf)?;
        let line_end = buf.windows(2).position(|w| w == b"\r\n")? + 2;
        let mut bytes = Vec::with_capacity(buf.len() + 40);
        bytes.extend_from_slice(&buf[..line_end]);
        bytes.extend_from_slice(b"meshroute-error: ");
        bytes.extend_from_slice(reason.as_bytes());
        bytes.extend_from_slice(b"\r\n");
        bytes.extend_from_slice(&buf[line_end..]);
        exchanges.metrics.count_unrouted(reason);
        tracing::debug!(reason, "malformed request head answered by hyper");
        Some(Labelled {
            bytes,
            written: 0,
            replaces: buf.len(),
        })
    }

    /// Write the rest with `write`; `Ready(Ok(n))` once done, `n` being what hyper handed over.
    pub fn poll_write_with(
        &mut self,
        mut write: impl FnMut(&[u8]) -> Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        while self.written < self.bytes.len() {
            match write(&self.bytes[self.written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.written += n,
                other => return other,
            }
        }
        Poll::Ready(Ok(self.replaces))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchanges() -> Arc<Exchanges> {
        Exchanges::new(Arc::new(Metrics::default()), Activity::unwatched())
    }

    const HEAD: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";

    #[test]
    fn a_head_written_with_no_response_open_is_labelled() {
        let ex = exchanges();
        let mut l = Labelled::of(&ex, HEAD).unwrap();
        let mut out = Vec::new();
        let r = l.poll_write_with(|b| {
            // A short write each time.
            let n = b.len().min(7);
            out.extend_from_slice(&b[..n]);
            Poll::Ready(Ok(n))
        });
        assert!(matches!(r, Poll::Ready(Ok(n)) if n == HEAD.len()));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 400 Bad Request\r\nmeshroute-error: client-protocol-error\r\n\
             content-length: 0\r\n\r\n"
        );
        for (status, reason) in [(414, "uri-too-long"), (431, "request-head-too-large")] {
            let head = format!("HTTP/1.1 {status} X\r\n\r\n");
            assert_eq!(ex.hyper_error(head.as_bytes()), Some(reason));
        }
        assert_eq!(ex.hyper_error(b"HTTP/1.1 404 Not Found\r\n\r\n"), None);
        assert_eq!(ex.hyper_error(b"HTTP/1.1 400"), None);
    }

    #[test]
    fn nothing_is_labelled_while_a_response_may_still_be_written() {
        let ex = exchanges();
        let open = ex.open();
        assert!(Labelled::of(&ex, HEAD).is_none(), "a response is open");
        drop(open);
        // Its last bytes may still be in hyper's buffer (a body that reads like a head).
        assert!(Labelled::of(&ex, HEAD).is_none(), "not flushed since");
        ex.flushed();
        assert!(Labelled::of(&ex, HEAD).is_some());

        // A flush while a response is open proves nothing about the bytes after it.
        let open = ex.open();
        ex.flushed();
        drop(open);
        assert!(Labelled::of(&ex, HEAD).is_none());
    }
}
