//! Upstream connections, one pool per endpoint address.
//!
//! The proxy only ever connects to an address it took from a table [`Endpoint`]; there is no
//! code path from a request's authority to a socket. HTTP/1.1 connections are kept in small
//! per-endpoint idle stacks and reused: one of plain sockets for bodiless requests, which the
//! request's own task drives ([`h1`](super::h1)), and one of hyper client connections for
//! requests with a body. h2c endpoints share one multiplexed connection. Pools are keyed by
//! address and carried from one table generation to the next, so a table swap keeps every warm
//! connection.
//!
//! Idle plain sockets have no task of their own. One the endpoint closed is found out when it
//! is next taken (from the socket's readiness, or with a read for requests that must not be
//! sent twice), and [`sweep`] closes those that closed or idled longer than [`IDLE_SECS`] once
//! a second. A request that still meets a connection closed under it is sent once more, on a
//! new connection, when that is safe ([`wire::send_again`]).
//!
//! Connections per endpoint are capped ([`PoolLimits`], like Envoy's circuit breakers): past
//! the cap a request waits in a bounded queue for a connection to close (a connection that
//! finishes while requests wait closes instead of idling, handing its slot on), and past the
//! queue it is answered 503 `upstream-overflow` at once. A request whose client went away
//! drops its connect with it.
//!
//! [`Endpoint`]: crate::table::Endpoint

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;

use http::request::Parts;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::body::{
    has_source, BoxError, ClientBodyError, ClientBodyTimeout, Replayable, RequestBody,
    CLIENT_FAILED, CLIENT_OK, CLIENT_TIMED_OUT,
};
use super::error::ProxyError;
use super::h1;
use super::wire;
use crate::metrics::PtrHasher;
use crate::table::retry::MAX_REPLAY_BODY;
use crate::table::Protocol;

/// The bytes of an interim status line hyper's client does not show: `HTTP/1.1 1xx ` and the
/// CRLFs around the fields (its reason phrase is not counted).
const INTERIM_LINE: usize = 17;

/// Idle HTTP/1.1 connections kept per endpoint beyond which released ones are closed.
const MAX_IDLE_PER_ENDPOINT: usize = 512;

/// Seconds an idle plain socket is kept (plus up to one second of sweep granularity): below
/// the shortest keep-alive timeouts common servers use (Node.js: 5 s), so the proxy closes
/// idle connections before the endpoint does and rarely meets one closing under a request.
pub const IDLE_SECS: u32 = 3;

/// Whole seconds since the first sweep, advanced by [`sweep`]: a clock that costs the request
/// path one relaxed load instead of reading the time.
static IDLE_CLOCK: AtomicU32 = AtomicU32::new(0);
static CLOCK_START: OnceLock<std::time::Instant> = OnceLock::new();

/// Close the idle plain sockets of `pools` that the endpoint closed or that idled too long.
/// The proxy calls this once a second.
pub fn sweep<'a>(pools: impl IntoIterator<Item = &'a Arc<EndpointPool>>) {
    let start = CLOCK_START.get_or_init(std::time::Instant::now);
    let now = u32::try_from(start.elapsed().as_secs()).unwrap_or(u32::MAX);
    IDLE_CLOCK.store(now, Ordering::Relaxed);
    for pool in pools {
        pool.sweep_idle(now);
    }
}

/// Limits of one endpoint's connections (from [`super::ProxyConfig`]).
#[derive(Debug, Clone, Copy)]
pub struct PoolLimits {
    pub connect_timeout: Duration,
    /// Connections open at once, busy or idle (Envoy's `max_connections`); 0: no limit.
    pub max_connections: usize,
    /// Requests waiting for a connection when all are busy (Envoy's
    /// `max_pending_requests`); more are answered 503 `upstream-overflow` at once.
    pub max_pending: usize,
}

/// Connections of one endpoint.
#[derive(Debug)]
pub struct EndpointPool {
    addr: SocketAddr,
    connect_timeout: Duration,
    /// One permit per open connection ([`PoolLimits::max_connections`]); a connection gives
    /// its permit back when it closes.
    slots: Arc<Semaphore>,
    /// Requests waiting for a permit.
    waiting: AtomicUsize,
    max_pending: usize,
    /// Idle hyper connections, oldest first, each with the [`IDLE_CLOCK`] second it went idle.
    idle: Mutex<Vec<(H1Sender, u32)>>,
    /// Idle plain sockets, oldest first, each with the [`IDLE_CLOCK`] second it went idle.
    /// Boxed: a connection moves between this stack, request futures and response bodies,
    /// and a pointer is cheaper to move than the connection.
    idle_inline: Mutex<Vec<(Box<h1::Conn>, u32)>>,
    h2: Mutex<Option<http2::SendRequest<RequestBody>>>,
}

/// An HTTP/1.1 connection lent to one exchange; [`PooledConn::release`] hands it back once the
/// response has ended cleanly. Dropping it instead closes the connection (which is how an
/// abandoned exchange is cancelled upstream).
#[derive(Debug)]
pub struct PooledConn {
    pool: Arc<EndpointPool>,
    sender: H1Sender,
}

/// A hyper HTTP/1.1 connection: the handle requests are sent through, and its connection
/// task, which is aborted (closing the socket) when an endpoint sends interim heads past the
/// head limit ([`EndpointPool::send_h1`]).
#[derive(Debug)]
struct H1Sender {
    send: http1::SendRequest<RequestBody>,
    task: tokio::task::AbortHandle,
}

impl PooledConn {
    pub fn release(self) {
        let PooledConn { pool, mut sender } = self;
        if sender.send.is_closed() {
            return;
        }
        if sender.send.is_ready() {
            pool.put(sender);
        } else {
            // The connection task has not yet noticed the exchange is over; wait for it off
            // the request path.
            tokio::spawn(async move {
                if sender.send.ready().await.is_ok() {
                    pool.put(sender);
                }
            });
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave the data inconsistent (push/pop only).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl EndpointPool {
    pub fn new(addr: SocketAddr, limits: PoolLimits) -> Self {
        let permits = match limits.max_connections {
            0 => Semaphore::MAX_PERMITS,
            n => n.min(Semaphore::MAX_PERMITS),
        };
        EndpointPool {
            addr,
            connect_timeout: limits.connect_timeout,
            slots: Arc::new(Semaphore::new(permits)),
            waiting: AtomicUsize::new(0),
            max_pending: limits.max_pending,
            idle: Mutex::new(Vec::new()),
            idle_inline: Mutex::new(Vec::new()),
            h2: Mutex::new(None),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether requests wait for a connection: then one that finishes is closed rather than
    /// idled, so that its permit goes to them.
    fn starved(&self) -> bool {
        self.waiting.load(Ordering::Relaxed) != 0
    }

    fn put(&self, sender: H1Sender) {
        if self.starved() {
            return;
        }
        let since = IDLE_CLOCK.load(Ordering::Relaxed);
        let mut idle = lock(&self.idle);
        if idle.len() < MAX_IDLE_PER_ENDPOINT {
            idle.push((sender, since));
        }
    }

    fn pop_ready(&self) -> Option<H1Sender> {
        let mut idle = lock(&self.idle);
        while let Some((s, _)) = idle.pop() {
            if s.send.is_ready() {
                return Some(s);
            }
        }
        None
    }

    pub(super) fn put_inline(&self, mut conn: Box<h1::Conn>) {
        if self.starved() {
            return;
        }
        conn.trim();
        let since = IDLE_CLOCK.load(Ordering::Relaxed);
        let mut idle = lock(&self.idle_inline);
        if idle.len() < MAX_IDLE_PER_ENDPOINT {
            idle.push((conn, since));
            return;
        }
        drop(idle);
        // Closed outside the lock.
        drop(conn);
    }

    /// The most recently idled usable socket (see [`h1::Conn::is_usable`] for `thorough`).
    /// Sockets found unusable are closed outside the lock.
    fn pop_inline(&self, thorough: bool) -> Option<Box<h1::Conn>> {
        loop {
            let (conn, _) = lock(&self.idle_inline).pop()?;
            if conn.is_usable(thorough) {
                return Some(conn);
            }
        }
    }

    fn sweep_idle(&self, now: u32) {
        let mut dead = Vec::new();
        {
            let mut idle = lock(&self.idle_inline);
            let mut i = 0;
            while i < idle.len() {
                let (conn, since) = &idle[i];
                if now.saturating_sub(*since) >= IDLE_SECS || !conn.is_usable(false) {
                    dead.push(idle.remove(i));
                } else {
                    i += 1;
                }
            }
        }
        let mut idle = lock(&self.idle);
        // Dropping the sender ends hyper's connection task, which closes the socket.
        idle.retain(|(s, since)| now.saturating_sub(*since) < IDLE_SECS && !s.send.is_closed());
        drop(idle);
        drop(dead);
    }

    /// Number of idle HTTP/1.1 connections (for tests and debugging).
    pub fn idle_count(&self) -> usize {
        lock(&self.idle).len() + lock(&self.idle_inline).len()
    }

    /// Send one request to this endpoint. `parts` must already be in the form `protocol`
    /// wants (see `forward::prepare_upstream`). A hyper HTTP/1.1 connection comes back with
    /// the response and must be released when the body ends; the others look after
    /// themselves.
    pub async fn send(
        self: &Arc<Self>,
        parts: Parts,
        body: RequestBody,
        protocol: Protocol,
    ) -> Result<(Response<UpstreamIncoming>, Option<PooledConn>), ProxyError> {
        if inline_eligible(&parts, &body, protocol) {
            let rsp = self.send_inline(&parts).await?;
            return Ok((rsp.map(UpstreamIncoming::Inline), None));
        }
        self.send_hyper(&mut Some(Request::from_parts(parts, body)), protocol)
            .await
    }

    /// [`send`](Self::send) through hyper's client, whatever the request. The request is
    /// taken out of `req` only once a connection is at hand: after a failure that leaves it
    /// there (a connect failure), nothing was sent and it may go to another endpoint.
    pub async fn send_hyper(
        self: &Arc<Self>,
        req: &mut Option<Request<RequestBody>>,
        protocol: Protocol,
    ) -> Result<(Response<UpstreamIncoming>, Option<PooledConn>), ProxyError> {
        let head_request = req
            .as_ref()
            .is_some_and(|r| r.method() == http::Method::HEAD);
        let (rsp, conn) = match protocol {
            // Boxed: hyper's futures are large, and these paths are the rarer ones.
            Protocol::Http1 => {
                let (rsp, conn) = Box::pin(self.send_h1(req)).await?;
                (rsp, Some(conn))
            }
            Protocol::H2c => {
                let rsp = Box::pin(self.send_h2(req)).await?;
                (rsp, None)
            }
        };
        // On refusal the response and the connection are dropped unreleased, which closes an
        // HTTP/1.1 connection (its framing cannot be trusted) and resets an h2 stream.
        let (mut head, body) = rsp.into_parts();
        wire::accept_response_head(head.version, head.status, &mut head.headers, head_request)
            .map_err(|e| ProxyError::Upstream {
                addr: self.addr,
                source: h1::Error::Invalid(e).into(),
            })?;
        let rsp = Response::from_parts(head, body);
        Ok((rsp.map(UpstreamIncoming::Hyper), conn))
    }

    /// A bodiless HTTP/1.1 exchange driven by the calling task, on a pooled socket when one
    /// is idle. A reused socket that turns out closed is retried on another when
    /// [`wire::send_again`] allows; a new one never is.
    pub async fn send_inline(
        self: &Arc<Self>,
        parts: &Parts,
    ) -> Result<Response<h1::InlineBody>, ProxyError> {
        let failed = |f: h1::Failure| ProxyError::Upstream {
            addr: self.addr,
            source: f.error.into(),
        };
        let idempotent = wire::is_idempotent(&parts.method);
        let pooled = self.pop_inline(!idempotent);
        let reused = pooled.is_some();
        let conn = match pooled {
            Some(c) => c,
            None => self.connect_inline().await?,
        };
        match h1::exchange(conn, parts, self.clone()).await {
            Ok(rsp) => Ok(rsp),
            // A pooled connection closed under the request: once more, on a new connection
            // (never again on another pooled one, and never a second time).
            Err(f)
                if wire::send_again(wire::Broken {
                    reused,
                    request_written: f.written,
                    closed: f.closed,
                    idempotent,
                    replayable: true,
                }) =>
            {
                tracing::debug!(addr = %self.addr, error = %f.error, "pooled connection was closed; sending once more");
                let conn = self.connect_inline().await?;
                h1::exchange(conn, parts, self.clone())
                    .await
                    .map_err(failed)
            }
            Err(f) => Err(failed(f)),
        }
    }

    /// A new plain connection. The connect runs in a task of its own: if the request gives up
    /// meanwhile (its client reset the stream), the connection is not wasted but idles in the
    /// pool for the next request, so clients that reset streams cannot make meshroute open
    /// connection after connection.
    async fn connect_inline(self: &Arc<Self>) -> Result<Box<h1::Conn>, ProxyError> {
        let slot = self.slot().await?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let pool = self.clone();
        tokio::spawn(async move {
            let conn = pool
                .open(slot)
                .await
                .map(|(stream, slot)| h1::Conn::new(stream, slot));
            if let Err(Ok(conn)) = tx.send(conn) {
                pool.put_inline(conn);
            }
        });
        rx.await
            .map_err(|_| ProxyError::ConnectTimeout(self.addr))?
    }

    async fn send_h1(
        self: &Arc<Self>,
        req: &mut Option<Request<RequestBody>>,
    ) -> Result<(Response<Incoming>, PooledConn), ProxyError> {
        let mut again = false;
        loop {
            // Sent again: on a new connection, never on another pooled one.
            let pooled = if again { None } else { self.pop_ready() };
            let (mut sender, reused) = match pooled {
                Some(s) => (s, true),
                // Boxed: the connect future is large and rare; inline it would bloat every
                // request's future, which hyper and tokio move around by value.
                None => (Box::pin(self.connect_h1()).await?, false),
            };
            let Some(mut taken) = req.take() else {
                return Err(self.already_sent());
            };
            let idempotent = wire::is_idempotent(taken.method());
            // hyper's client skips any number of interim heads; the own client refuses them
            // past MAX_HEAD_BYTES in all, and so must this path (counted from what hyper shows
            // of each head: its fields, not its reason phrase).
            let interim = Arc::new(AtomicUsize::new(0));
            let (seen, task) = (interim.clone(), sender.task.clone());
            hyper::ext::on_informational(&mut taken, move |head| {
                let bytes = INTERIM_LINE
                    + head
                        .headers()
                        .iter()
                        .map(|(n, v)| n.as_str().len() + v.len() + 4)
                        .sum::<usize>();
                if seen.fetch_add(bytes, Ordering::Relaxed) + bytes >= h1::MAX_HEAD_BYTES {
                    task.abort();
                }
            });
            // On a pooled connection an idempotent request may have to go once more
            // (`wire::send_again`): its body is recorded on the way, up to the retry limit.
            let mut replay = None;
            if reused && idempotent && !taken.body().is_end_stream() {
                let body = std::mem::replace(taken.body_mut(), RequestBody::Empty);
                let (first, tape) = Replayable::record(body, MAX_REPLAY_BODY);
                *taken.body_mut() = first;
                replay = Some(tape);
            }
            let kept = (reused && idempotent).then(|| {
                let (mut parts, ()) = Request::new(()).into_parts();
                parts.method = taken.method().clone();
                parts.uri = taken.uri().clone();
                parts.version = taken.version();
                parts.headers = taken.headers().clone();
                parts
            });
            match sender.send.try_send_request(taken).await {
                // The head may have come in the same read as the interim heads, before the
                // aborted connection task stopped.
                Ok(_) if interim.load(Ordering::Relaxed) >= h1::MAX_HEAD_BYTES => {
                    sender.task.abort();
                    return Err(ProxyError::Upstream {
                        addr: self.addr,
                        source: h1::Error::Invalid("response head too large").into(),
                    });
                }
                Ok(rsp) => {
                    let conn = PooledConn {
                        pool: self.clone(),
                        sender,
                    };
                    return Ok((rsp, conn));
                }
                Err(mut e) => {
                    if interim.load(Ordering::Relaxed) >= h1::MAX_HEAD_BYTES {
                        return Err(ProxyError::Upstream {
                            addr: self.addr,
                            source: h1::Error::Invalid("response head too large").into(),
                        });
                    }
                    let back = e.take_message();
                    let error = e.into_error();
                    let broken = wire::Broken {
                        reused,
                        request_written: back.is_none(),
                        closed: back.is_some() || closed_before_head(&error),
                        idempotent,
                        replayable: back.is_some()
                            || replay.as_ref().is_none_or(Replayable::replayable),
                    };
                    if again || !wire::send_again(broken) {
                        return Err(self.exchange_failed(error));
                    }
                    *req = match (back, kept) {
                        // The request never left: it goes as it is.
                        (Some(back), _) => Some(back),
                        (None, Some(parts)) => {
                            let body = match &replay {
                                Some(tape) => tape.for_retry(),
                                None => Some(RequestBody::Empty),
                            };
                            match body {
                                Some(b) => Some(Request::from_parts(parts, b)),
                                None => return Err(self.exchange_failed(error)),
                            }
                        }
                        (None, None) => return Err(self.exchange_failed(error)),
                    };
                    tracing::debug!(addr = %self.addr, %error, "pooled connection was closed; sending once more");
                    again = true;
                }
            }
        }
    }

    async fn send_h2(
        &self,
        req: &mut Option<Request<RequestBody>>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let existing = lock(&self.h2).as_ref().filter(|s| !s.is_closed()).cloned();
        let mut sender = match existing {
            Some(s) => s,
            None => {
                let s = Box::pin(self.connect_h2()).await?;
                *lock(&self.h2) = Some(s.clone());
                s
            }
        };
        let failed = |e| self.exchange_failed(e);
        sender.ready().await.map_err(failed)?;
        let Some(req) = req.take() else {
            return Err(self.already_sent());
        };
        let client_failed = Arc::new(AtomicU8::new(CLIENT_OK));
        let req = if req.body().is_end_stream() {
            req
        } else {
            req.map(|inner| RequestBody::Watched {
                inner: Box::new(inner),
                client_failed: client_failed.clone(),
            })
        };
        sender
            .send_request(req)
            .await
            .map_err(|e| match client_failed.load(Ordering::Acquire) {
                CLIENT_TIMED_OUT => ProxyError::ClientBodyTimeout,
                CLIENT_FAILED => ProxyError::ClientBody(e),
                _ => failed(e),
            })
    }

    /// Only a caller's bug sends an empty request slot.
    fn already_sent(&self) -> ProxyError {
        ProxyError::Upstream {
            addr: self.addr,
            source: "request was already sent".into(),
        }
    }

    /// The error for an exchange hyper's client gave up on: the client's, when reading its
    /// request body failed (hyper then closes the upstream connection, which carried half a
    /// request), otherwise the endpoint's.
    fn exchange_failed(&self, e: hyper::Error) -> ProxyError {
        if has_source::<ClientBodyTimeout>(&e) {
            return ProxyError::ClientBodyTimeout;
        }
        if ClientBodyError::find(&e) {
            return ProxyError::ClientBody(e);
        }
        ProxyError::Upstream {
            addr: self.addr,
            source: e.into(),
        }
    }

    /// A permit for one more connection: at once below the limit, otherwise after waiting in
    /// the bounded queue (bounded in time by the request's deadline).
    async fn slot(&self) -> Result<OwnedSemaphorePermit, ProxyError> {
        // Give the client's connection a turn first: hyper's h2 server only looks for a reset
        // of the stream while its request future is pending, and a stream reset right after
        // it was opened must not cost an endpoint a connection (on loopback the connect would
        // complete before anyone looked).
        tokio::task::yield_now().await;
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Ok(p);
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_pending {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(ProxyError::UpstreamOverflow(self.addr));
        }
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _waiting = Waiting(&self.waiting);
        // Idle connections close while anyone waits; close one now in case all are idle.
        drop(lock(&self.idle_inline).pop());
        drop(lock(&self.idle).pop());
        self.slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ProxyError::UpstreamOverflow(self.addr))
    }

    async fn connect(&self) -> Result<(TcpStream, OwnedSemaphorePermit), ProxyError> {
        let slot = self.slot().await?;
        self.open(slot).await
    }

    /// Open a connection in `slot`.
    async fn open(
        &self,
        slot: OwnedSemaphorePermit,
    ) -> Result<(TcpStream, OwnedSemaphorePermit), ProxyError> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(self.addr))
            .await
            .map_err(|_| ProxyError::ConnectTimeout(self.addr))?
            .map_err(|source| ProxyError::Connect {
                addr: self.addr,
                source,
            })?;
        // Small request/response exchanges: latency over batching.
        let _ = stream.set_nodelay(true);
        Ok((stream, slot))
    }

    async fn connect_h1(&self) -> Result<H1Sender, ProxyError> {
        let (stream, slot) = self.connect().await?;
        let io = TokioIo::new(stream);
        let (sender, conn) = http1::Builder::new()
            // The inline client's head limits, so that both paths refuse the same heads.
            .max_header_size(h1::MAX_HEAD_BYTES)
            .max_headers(h1::MAX_HEADERS)
            .handshake(io)
            .await
            .map_err(|source| ProxyError::Upstream {
                addr: self.addr,
                source: source.into(),
            })?;
        let addr = self.addr;
        let task = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "upstream connection ended");
            }
            drop(slot);
        });
        Ok(H1Sender {
            send: sender,
            task: task.abort_handle(),
        })
    }

    async fn connect_h2(&self) -> Result<http2::SendRequest<RequestBody>, ProxyError> {
        let (stream, slot) = self.connect().await?;
        let io = TokioIo::new(stream);
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await
            .map_err(|source| ProxyError::Upstream {
                addr: self.addr,
                source: source.into(),
            })?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "upstream h2 connection ended");
            }
            drop(slot);
        });
        Ok(sender)
    }
}

/// Whether a request goes through [`EndpointPool::send_inline`]: HTTP/1.1, no body, and not
/// CONNECT (whose 2xx answer starts a tunnel, not a body; `forward` refuses it before this).
pub fn inline_eligible(parts: &Parts, body: &RequestBody, protocol: Protocol) -> bool {
    protocol == Protocol::Http1 && body.is_end_stream() && parts.method != http::Method::CONNECT
}

impl h1::Home for EndpointPool {
    fn put(&self, conn: Box<h1::Conn>) {
        self.put_inline(conn);
    }
}

/// Whether hyper's client failed because the endpoint closed or reset the connection before
/// a complete response head, rather than for something it sent.
fn closed_before_head(e: &hyper::Error) -> bool {
    if ClientBodyError::find(e) || has_source::<ClientBodyTimeout>(e) {
        return false;
    }
    e.is_incomplete_message() || e.is_canceled() || has_source::<std::io::Error>(e)
}

/// A response body as it comes from an endpoint: read by the request's own task
/// ([`h1`]) or by a hyper client connection.
#[derive(Debug)]
pub enum UpstreamIncoming {
    Inline(h1::InlineBody),
    Hyper(Incoming),
}

impl Body for UpstreamIncoming {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamIncoming::Inline(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            UpstreamIncoming::Hyper(b) => {
                let frame = ready!(Pin::new(b).poll_frame(cx));
                Poll::Ready(frame.map(|f| {
                    f.map(|f| match f.into_trailers() {
                        Ok(mut trailers) => {
                            // The inline client filters its trailers while decoding.
                            wire::drop_forbidden_trailers(&mut trailers);
                            Frame::trailers(trailers)
                        }
                        Err(f) => f,
                    })
                    .map_err(Into::into)
                }))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamIncoming::Inline(b) => b.is_end_stream(),
            UpstreamIncoming::Hyper(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamIncoming::Inline(b) => b.size_hint(),
            UpstreamIncoming::Hyper(b) => b.size_hint(),
        }
    }
}

/// Pools by endpoint address, rebuilt (reusing surviving pools) with every table.
pub type Pools = HashMap<SocketAddr, Arc<EndpointPool>, BuildHasherDefault<PtrHasher>>;

/// Pools for `addrs`, reusing those in `prev`.
pub fn carry_over(
    prev: Option<&Pools>,
    addrs: impl IntoIterator<Item = SocketAddr>,
    limits: PoolLimits,
) -> Pools {
    let mut pools = Pools::default();
    for addr in addrs {
        pools.entry(addr).or_insert_with(|| {
            prev.and_then(|p| p.get(&addr).cloned())
                .unwrap_or_else(|| Arc::new(EndpointPool::new(addr, limits)))
        });
    }
    pools
}
