//! The own client's connection: a plain socket lent to one bodiless exchange at a time, driven
//! by the request's task (head written with one `write`, response read straight off the socket
//! through [`codec`](super::codec)), handed back to its pool ([`Home`]) when the response
//! ended cleanly.

use std::io;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http::{Method, Response};
use hyper::body::{Frame, SizeHint};
use std::future::Future;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use super::codec::{
    decode, encode_head, parse_head, Error, Span, State, Step, MAX_CHUNK_EXTENSIONS,
};

/// Bytes made room for before each read.
const READ_CHUNK: usize = 8 * 1024;

/// One connection to an endpoint, idle in its pool or lent to one exchange. Always boxed, so
/// that request futures and bodies carry a pointer rather than the connection.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    /// The endpoint's connection slot, given back when the connection closes.
    _slot: OwnedSemaphorePermit,
    /// Received bytes not yet consumed; always empty while the connection is idle.
    buf: BytesMut,
    /// Scratch space for the request head, kept across exchanges.
    head: Vec<u8>,
    /// Scratch space for the response head's field positions.
    spans: Vec<Span>,
}

impl Conn {
    pub fn new(stream: TcpStream, slot: OwnedSemaphorePermit) -> Box<Self> {
        Box::new(Conn {
            stream,
            _slot: slot,
            buf: BytesMut::new(),
            head: Vec::new(),
            spans: Vec::new(),
        })
    }

    /// Whether an idle connection can carry a request: nothing (no data, no EOF) may have
    /// arrived on it since its last response.
    ///
    /// The quick check reads the socket's cached readiness and costs no system call unless
    /// something arrived, but it can miss a close the I/O driver has not processed yet (or
    /// answer `Pending` because the task's cooperative budget is spent). That is fine for a
    /// request that may be sent again ([`wire::send_again`](crate::proxy::wire::send_again)); for
    /// one that may not, `thorough` always asks the kernel.
    pub fn is_usable(&self, thorough: bool) -> bool {
        if !thorough {
            let mut cx = Context::from_waker(Waker::noop());
            match self.stream.poll_read_ready(&mut cx) {
                Poll::Pending => return true,
                Poll::Ready(Err(_)) => return false,
                // The readiness may be stale; a read tells for sure.
                Poll::Ready(Ok(())) => {}
            }
        }
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Drop buffers grown by an unusual exchange before the connection idles in its pool.
    pub fn trim(&mut self) {
        if self.buf.capacity() > 2 * READ_CHUNK {
            self.buf = BytesMut::new();
        }
        if self.head.capacity() > 4096 {
            self.head = Vec::new();
        }
    }

    /// Read more bytes into `buf`; 0 means the endpoint closed.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        // `read_buf` keeps no state between polls, so a fresh future per poll is fine; it
        // reads into the spare capacity without zeroing it.
        pin!(self.stream.read_buf(&mut self.buf)).poll(cx)
    }
}

/// Where a connection goes when its response ended cleanly: the endpoint's pool, which
/// decides whether to keep it.
pub trait Home: Send + Sync + std::fmt::Debug {
    fn put(&self, conn: Box<Conn>);
}

/// A failed exchange, with what [`wire::send_again`](crate::proxy::wire::send_again) needs to know
/// about it.
#[derive(Debug)]
pub struct Failure {
    pub error: Error,
    /// The whole request head was written.
    pub written: bool,
    /// The endpoint closed or reset the connection before a complete response head.
    pub closed: bool,
}

/// Send the head of a bodiless request on `conn` and read the response head. The request
/// must be in origin form with its `Host` header set (see `forward::upstream_request`).
pub async fn exchange(
    mut conn: Box<Conn>,
    req: &Parts,
    home: Arc<dyn Home>,
) -> Result<Response<InlineBody>, Failure> {
    encode_head(&mut conn.head, req);
    if let Err(e) = conn.stream.write_all(&conn.head).await {
        return Err(Failure {
            error: e.into(),
            written: false,
            closed: true,
        });
    }
    let head_request = req.method == Method::HEAD;
    let mut interim = 0;
    loop {
        // Usually nothing is buffered yet: read before trying to parse.
        let parsed = if conn.buf.is_empty() {
            Ok(None)
        } else {
            parse_head(&mut conn.buf, &mut conn.spans, &mut interim, head_request)
        };
        match parsed {
            Ok(Some((rsp, framing, keep_alive))) => {
                let body = InlineBody {
                    conn: Some(conn),
                    home,
                    state: State::from(framing),
                    keep_alive,
                    extension_budget: MAX_CHUNK_EXTENSIONS,
                };
                let mut rsp = rsp.map(|()| body);
                rsp.body_mut().release_if_done();
                return Ok(rsp);
            }
            Ok(None) => {}
            Err(error) => {
                return Err(Failure {
                    error,
                    written: true,
                    closed: false,
                })
            }
        }
        let read = std::future::poll_fn(|cx| conn.poll_fill(cx)).await;
        let error = match read {
            Ok(n) if n > 0 => continue,
            Ok(_) => Error::Closed,
            Err(e) => e.into(),
        };
        return Err(Failure {
            error,
            written: true,
            closed: true,
        });
    }
}

/// A response body read straight off its upstream connection, which goes back to the pool
/// the moment the body ends cleanly.
#[derive(Debug)]
pub struct InlineBody {
    conn: Option<Box<Conn>>,
    home: Arc<dyn Home>,
    state: State,
    keep_alive: bool,
    /// Chunk-extension bytes still accepted ([`decode`]).
    extension_budget: usize,
}

impl InlineBody {
    /// Hand the connection back if the body has ended and the connection can be reused.
    fn release_if_done(&mut self) {
        if self.state != State::Done {
            return;
        }
        if let Some(conn) = self.conn.take() {
            if self.keep_alive && conn.buf.is_empty() {
                self.home.put(conn);
            }
        }
    }
}

impl hyper::body::Body for InlineBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        // Unpin: the connection is boxed.
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                // Ended (and released), or failed before.
                return Poll::Ready(None);
            };
            match decode(&mut this.state, &mut conn.buf, &mut this.extension_budget) {
                Ok(Step::Frame(frame)) => {
                    this.release_if_done();
                    return Poll::Ready(Some(Ok(frame)));
                }
                Ok(Step::End) => {
                    this.release_if_done();
                    return Poll::Ready(None);
                }
                Ok(Step::NeedMore) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if this.state == State::UntilClose => {
                    this.state = State::Done;
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(Error::Truncated)));
                }
                Ok(_) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == State::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Done => SizeHint::with_exact(0),
            State::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}
