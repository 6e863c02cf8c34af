//! The listener: accept loop with a connection cap, HTTP/1.1 or h2c per connection (detected
//! from the h2 preface, under the header-read timeout so a silent client cannot hold a slot),
//! header limits, byte accounting and graceful shutdown (stop accepting, let in-flight requests
//! finish, give up after the drain timeout). With [`serve_with_parent_ports`], the same loop
//! also accepts on the per-parent-port listeners ([`super::ports`]); such a connection is
//! bound to its parent by its local port instead of by each request's authority.
//! At the cap, a new client is served by closing the connection idle the longest
//! ([`super::conns`]), so idle connections cannot lock out new clients.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::conns::{Activity, Drain, Ended};
use super::live::Proxy;
use super::parse_errors::{Exchanges, Labelled};
use super::ports::ParentListeners;
use super::timer::HyperTimer;
use super::{forward, pool};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serve `listener` until `shutdown` resolves, then drain.
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    serve_with_parent_ports(listener, None, proxy, shutdown).await
}

/// [`serve`], plus every per-parent-port listener of `parent_ports`.
pub async fn serve_with_parent_ports(
    listener: TcpListener,
    mut parent_ports: Option<ParentListeners>,
    proxy: Arc<Proxy>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let cfg = proxy.config.clone();
    let mut h1 = hyper::server::conn::http1::Builder::new();
    h1.timer(HyperTimer)
        .header_read_timeout(cfg.header_read_timeout)
        .max_headers(cfg.max_headers)
        .max_header_size(cfg.max_header_bytes)
        .max_buf_size(cfg.max_header_bytes.max(8192));
    let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    h2.timer(HyperTimer)
        .max_header_list_size(u32::try_from(cfg.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(1000)
        .keep_alive_interval(Some(cfg.h2_keep_alive_interval).filter(|d| !d.is_zero()))
        .keep_alive_timeout(cfg.h2_keep_alive_timeout);
    let builders = Arc::new((h1, h2));

    // Idle upstream sockets have no task of their own; this closes stale ones.
    let _stop_sweeping = AbortOnDrop({
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                pool::sweep(proxy.live().pools.values());
            }
        })
    });
    let slots = Arc::new(Semaphore::new(cfg.max_connections));
    let drain = Arc::new(Drain::default());
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            a = listener.accept() => a.map(|(s, _)| (s, None)),
            a = accept_parent(&mut parent_ports) => a.map(|(s, port)| (s, Some(port))),
        };
        let (stream, local_port) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            // At the cap with a client waiting: make room.
            Err(_) => match tokio::select! {
                biased;
                () = &mut shutdown => None,
                p = make_room(&slots, &drain) => p,
            } {
                Some(p) => p,
                None => break,
            },
        };
        let _ = stream.set_nodelay(true);
        let proxy = proxy.clone();
        let builders = builders.clone();
        let watch = Drain::watch(&drain).grace(cfg.drain_timeout);
        let read_timeout = cfg.header_read_timeout;
        let h2_idle_timeout = cfg.h2_idle_timeout;
        tokio::spawn(async move {
            let metrics = proxy.metrics.clone();
            metrics.open_connections.inc();
            metrics.connections_total.inc();
            let mut stream = stream;
            let (is_h2, sniffed) =
                match tokio::time::timeout(read_timeout, sniff_h2(&mut stream)).await {
                    Ok(Ok(v)) => v,
                    // Silent or broken client: close without a word.
                    Ok(Err(_)) | Err(_) => {
                        metrics.open_connections.dec();
                        drop(permit);
                        return;
                    }
                };
            metrics.bytes_in.inc_by(u64::from(sniffed.len));
            let activity = watch.activity().clone();
            // HTTP/1.1 only: hyper's h2 server answers malformed requests with stream resets.
            let exchanges = (!is_h2).then(|| Exchanges::new(metrics.clone(), activity.clone()));
            let io = TokioIo::new(CountingIo {
                inner: stream,
                sniffed,
                read: metrics.bytes_in.clone(),
                written: metrics.bytes_out.clone(),
                exchanges: exchanges.clone(),
                labelled: None,
            });
            let cache = match local_port {
                None => forward::ParentCache::default(),
                Some(port) => forward::ParentCache::for_local_port(port),
            };
            let (h1, h2) = &*builders;
            let ended = match exchanges {
                None => {
                    let svc = service_fn(move |req| {
                        forward::handle(&proxy, &cache, req, Activity::open(&activity))
                    });
                    let watch = watch.idle_timeout(h2_idle_timeout);
                    watch.run(h2.serve_connection(io, svc)).await
                }
                Some(exchanges) => {
                    // The header-read timeout bounds an idle HTTP/1.1 keep-alive connection.
                    let svc = service_fn(move |req| {
                        forward::handle(&proxy, &cache, req, exchanges.open())
                    });
                    watch.run(h1.serve_connection(io, svc)).await
                }
            };
            match ended {
                Ended::Done(Ok(())) => {}
                Ended::Done(Err(e)) => {
                    tracing::debug!(error = %e, "client connection ended with an error");
                }
                Ended::Dropped => {
                    tracing::debug!("client connection did not close in time; dropped");
                }
            }
            metrics.open_connections.dec();
            drop(permit);
        });
    }
    drop(listener);
    drop(parent_ports);
    tokio::select! {
        () = drain.start() => {}
        () = tokio::time::sleep(cfg.drain_timeout) => {
            tracing::warn!("drain timeout reached; closing remaining connections");
        }
    }
    Ok(())
}

async fn accept_parent(listeners: &mut Option<ParentListeners>) -> io::Result<(TcpStream, u16)> {
    match listeners {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// A connection slot for a client accepted at the connection cap: asks the connection idle
/// the longest to close (one at a time) and waits for a slot. A waiting client is never
/// refused; while every connection has a stream open it waits as it would in the backlog,
/// looking again for one that became idle every `RECHECK`.
async fn make_room(slots: &Arc<Semaphore>, drain: &Drain) -> Option<OwnedSemaphorePermit> {
    const RECHECK: Duration = Duration::from_millis(50);
    loop {
        if drain.shedding() == 0 && drain.shed_oldest_idle() {
            tracing::debug!("connection cap reached; closing the oldest idle connection");
        }
        tokio::select! {
            p = slots.clone().acquire_owned() => return p.ok(),
            () = tokio::time::sleep(RECHECK) => {}
        }
    }
}

/// Aborts a task when dropped, whichever way the owner ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The first bytes of a connection, read while telling HTTP/1.1 from h2 and handed back to
/// the protocol's reader before anything else.
#[derive(Debug, Default)]
struct Sniffed {
    buf: [u8; H2_PREFACE.len()],
    pos: u8,
    len: u8,
}

impl Sniffed {
    fn remaining(&self) -> &[u8] {
        &self.buf[usize::from(self.pos)..usize::from(self.len)]
    }
}

/// Whether the connection starts with the h2 prior-knowledge preface, and the bytes read to
/// tell. Waits only as long as the bytes seen so far could still be the preface. The bytes are
/// read, not peeked: a peek leaves the socket readable, so waiting for more would wake at once
/// and spin until the rest arrives.
async fn sniff_h2(stream: &mut TcpStream) -> io::Result<(bool, Sniffed)> {
    let mut sniffed = Sniffed::default();
    loop {
        let have = usize::from(sniffed.len);
        let n = stream.read(&mut sniffed.buf[have..]).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let len = have + n;
        // `len` is at most the preface length (24).
        sniffed.len = len as u8;
        if sniffed.buf[..len] != H2_PREFACE[..len] {
            return Ok((false, sniffed));
        }
        if len == H2_PREFACE.len() {
            return Ok((true, sniffed));
        }
    }
}

/// Counts bytes read from and written to a client into process-wide counters, and labels the
/// error responses hyper's HTTP/1.1 server writes by itself ([`super::parse_errors`]).
struct CountingIo {
    inner: TcpStream,
    /// Bytes read before the protocol was known; served first (already counted).
    sniffed: Sniffed,
    read: Counter,
    written: Counter,
    exchanges: Option<Arc<Exchanges>>,
    /// A labelled head being written in place of hyper's.
    labelled: Option<Labelled>,
}

impl CountingIo {
    /// Start writing a labelled copy of `buf` if it is one of hyper's own error heads; then
    /// keep writing it until done.
    fn poll_labelled(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Option<Poll<io::Result<usize>>> {
        if self.labelled.is_none() {
            self.labelled = Labelled::of(self.exchanges.as_deref()?, buf);
        }
        let labelled = self.labelled.as_mut()?;
        let (inner, written) = (&mut self.inner, &self.written);
        let r = labelled.poll_write_with(|b| {
            let r = Pin::new(&mut *inner).poll_write(cx, b);
            if let Poll::Ready(Ok(n)) = r {
                written.inc_by(n as u64);
            }
            r
        });
        if r.is_ready() {
            self.labelled = None;
        }
        Some(r)
    }
}

impl AsyncRead for CountingIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.sniffed.pos < self.sniffed.len {
            let rest = self.sniffed.remaining();
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            // `n` is at most the preface length.
            self.sniffed.pos += n as u8;
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.read.inc_by(n as u64);
        }
        r
    }
}

impl AsyncWrite for CountingIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(r) = self.poll_labelled(cx, buf) {
            return r;
        }
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.written.inc_by(n as u64);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // A head is always the first buffer hyper hands over.
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            if let Some(r) = self.poll_labelled(cx, first) {
                return r;
            }
        }
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            self.written.inc_by(n as u64);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        if let (Poll::Ready(Ok(())), Some(e)) = (&r, &self.exchanges) {
            e.flushed();
        }
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
