//! The listener: accept loop with a connection cap, HTTP/1.1 or h2c per connection (detected
//! from the h2 preface, under the header-read timeout so a silent client cannot hold a slot),
//! header limits, byte accounting and graceful shutdown (stop accepting, let in-flight requests
//! finish, give up after the drain timeout).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::timer::HyperTimer;
use super::{forward, pool, Proxy};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serve `listener` until `shutdown` resolves, then drain.
pub async fn serve(
    listener: TcpListener,
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
        .keep_alive_interval(Duration::from_secs(30));
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
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            biased;
            () = &mut shutdown => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            a = listener.accept() => a,
        };
        let (stream, _peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let proxy = proxy.clone();
        let builders = builders.clone();
        let watcher = graceful.watcher();
        let read_timeout = cfg.header_read_timeout;
        tokio::spawn(async move {
            let metrics = proxy.metrics.clone();
            metrics.open_connections.inc();
            metrics.connections_total.inc();
            let is_h2 = match tokio::time::timeout(read_timeout, sniff_h2(&stream)).await {
                Ok(Ok(v)) => v,
                // Silent or broken client: close without a word.
                Ok(Err(_)) | Err(_) => {
                    metrics.open_connections.dec();
                    drop(permit);
                    return;
                }
            };
            let io = TokioIo::new(CountingIo {
                inner: stream,
                read: metrics.bytes_in.clone(),
                written: metrics.bytes_out.clone(),
            });
            let cache = forward::ParentCache::default();
            let svc = service_fn(move |req| forward::handle(&proxy, &cache, req));
            let (h1, h2) = &*builders;
            let result = if is_h2 {
                watcher.watch(h2.serve_connection(io, svc)).await
            } else {
                watcher.watch(h1.serve_connection(io, svc)).await
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "client connection ended with an error");
            }
            metrics.open_connections.dec();
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(cfg.drain_timeout) => {
            tracing::warn!("drain timeout reached; closing remaining connections");
        }
    }
    Ok(())
}

/// Aborts a task when dropped, whichever way the owner ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Whether the connection starts with the h2 prior-knowledge preface. Waits only as long as
/// the bytes seen so far could still be the preface.
async fn sniff_h2(stream: &TcpStream) -> io::Result<bool> {
    let mut buf = [0u8; H2_PREFACE.len()];
    loop {
        stream.readable().await?;
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if buf[..n] != H2_PREFACE[..n] {
            return Ok(false);
        }
        if n == H2_PREFACE.len() {
            return Ok(true);
        }
        // A prefix of the preface: more bytes are on their way.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Counts bytes read from and written to a client into process-wide counters.
struct CountingIo {
    inner: TcpStream,
    read: Counter,
    written: Counter,
}

impl AsyncRead for CountingIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
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
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
