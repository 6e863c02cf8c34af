//! What goes back to the client: the upstream body ([`UpstreamIncoming`], from either
//! HTTP/1.1 client or h2) wrapped with the exchange's deadline and its completion bookkeeping
//! (`Completion`: the metrics, the endpoint's in-flight guard and the pooled HTTP/1
//! connection, all settled the moment the stream ends), or a response the proxy makes up
//! itself: the one place a [`ProxyError`] becomes a status ([`error_response`]).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Response};
use hyper::body::{Body, Frame, SizeHint};

use super::body::{BoxError, StreamError};
use super::error::{ProxyError, ERROR_HEADER};
use super::pool::{PooledConn, UpstreamIncoming};
use super::served::AccessEntry;
use super::timeout::IdleTimer;
use super::timer::ReusedSleep;
use crate::metrics::{BackendMetrics, RouteMetrics};
use crate::table::InFlight;
use std::future::Future;

/// A body sent to the client.
#[derive(Debug)]
pub struct ResponseBody(Kind);

// Nearly every response is `Upstream`: boxing it would cost an allocation per request to save
// bytes only on the proxy's own small answers.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Kind {
    Full(Option<Bytes>),
    Upstream(UpstreamBody),
}

impl ResponseBody {
    pub fn full(bytes: Bytes) -> Self {
        ResponseBody(Kind::Full(Some(bytes)))
    }

    pub fn empty() -> Self {
        ResponseBody(Kind::Full(None))
    }

    /// `idle_limit`: longest wait for the endpoint's next frame (zero: none).
    pub(crate) fn upstream(
        inner: UpstreamIncoming,
        deadline: Option<(ReusedSleep, &'static str)>,
        idle_limit: std::time::Duration,
        completion: Completion,
    ) -> Self {
        let idle =
            (!idle_limit.is_zero() && !inner.is_end_stream()).then(|| IdleTimer::new(idle_limit));
        ResponseBody(Kind::Upstream(UpstreamBody {
            inner,
            deadline,
            idle,
            completion: Some(completion),
        }))
    }
}

/// Bookkeeping settled once when an upstream response ends, fails or is dropped.
#[derive(Debug)]
pub(crate) struct Completion {
    pub route: Option<Arc<RouteMetrics>>,
    pub backend: Option<Arc<BackendMetrics>>,
    pub status: u16,
    pub started: Instant,
    pub dispatched: Instant,
    pub in_flight: InFlight,
    pub conn: Option<Box<PooledConn>>,
    /// The access-log line, when `--access-log` is on.
    pub access: Option<Box<AccessEntry>>,
}

impl Completion {
    fn finish(self, error: Option<&'static str>) {
        let now = Instant::now();
        if let Some(r) = &self.route {
            r.record(
                self.status,
                error,
                now.saturating_duration_since(self.started),
            );
        }
        if let Some(b) = &self.backend {
            b.duration
                .observe(now.saturating_duration_since(self.dispatched));
        }
        if let Some(a) = &self.access {
            a.log(self.status, error);
        }
        // Only a connection whose response ended cleanly can carry another request.
        if error.is_none() {
            if let Some(conn) = self.conn {
                conn.release();
            }
        }
        drop(self.in_flight);
    }
}

#[derive(Debug)]
struct UpstreamBody {
    inner: UpstreamIncoming,
    deadline: Option<(ReusedSleep, &'static str)>,
    idle: Option<IdleTimer>,
    completion: Option<Completion>,
}

impl UpstreamBody {
    fn settle(&mut self, error: Option<&'static str>) {
        if let Some(c) = self.completion.take() {
            c.finish(error);
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // hyper does not poll a body that already reports its end (HEAD, 204, 304, or the
        // last frame of a sized body), so "ended" is decided here as well.
        let error = (!self.inner.is_end_stream()).then_some("cancel");
        self.settle(error);
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().0 {
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream(u) => {
                if let Some((sleep, which)) = &mut u.deadline {
                    if Pin::new(sleep).poll(cx).is_ready() {
                        let which = *which;
                        u.deadline = None;
                        u.settle(Some("response-stream-timeout"));
                        return Poll::Ready(Some(Err(StreamError::Timeout(which).into())));
                    }
                }
                let polled = Pin::new(&mut u.inner).poll_frame(cx);
                if let Some(idle) = &mut u.idle {
                    if polled.is_ready() {
                        idle.progressed();
                    } else if idle.expired(cx) {
                        let limit = idle.limit();
                        u.idle = None;
                        u.settle(Some("upstream-idle-timeout"));
                        return Poll::Ready(Some(Err(StreamError::UpstreamIdle(limit).into())));
                    }
                }
                match ready!(polled) {
                    Some(Ok(frame)) => {
                        // Trailers are always the last frame; hyper's body may only say so
                        // when polled again, which hyper's server never does after them.
                        if frame.is_trailers() || u.inner.is_end_stream() {
                            u.settle(None);
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Some(Err(e)) => {
                        u.settle(Some("upstream-stream-error"));
                        Poll::Ready(Some(Err(StreamError::Upstream(e).into())))
                    }
                    None => {
                        u.settle(None);
                        Poll::Ready(None)
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Full(b) => b.is_none(),
            Kind::Upstream(u) => u.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Upstream(u) => u.inner.size_hint(),
        }
    }
}

/// The response for a proxy-made failure. The only place statuses for errors are chosen.
pub fn error_response(err: &ProxyError) -> Response<ResponseBody> {
    let (status, reason) = err.classify();
    let mut rsp = Response::new(ResponseBody::full(Bytes::from_static(reason.as_bytes())));
    *rsp.status_mut() = status;
    let h = rsp.headers_mut();
    h.insert(ERROR_HEADER, HeaderValue::from_static(reason));
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    );
    if let ProxyError::ConnectNotSupported = err {
        // RFC 9110 §15.5.6: a 405 lists what is allowed. Every method but CONNECT is
        // forwarded; these are the registered ones.
        h.insert(
            http::header::ALLOW,
            HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, OPTIONS, TRACE, PATCH"),
        );
    }
    rsp
}

/// A proxy error as a gRPC client reads it: HTTP 200, trailers-only (`grpc-status` and
/// `grpc-message` in the head, no body), with `meshroute-error` as for every answer of ours.
pub fn grpc_error_response(err: &ProxyError) -> Response<ResponseBody> {
    let reason = err.reason();
    let mut rsp = Response::new(ResponseBody::empty());
    let h = rsp.headers_mut();
    h.insert(ERROR_HEADER, HeaderValue::from_static(reason));
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(
        "grpc-status",
        HeaderValue::from(u16::from(super::error::grpc_status(err))),
    );
    h.insert("grpc-message", HeaderValue::from_static(reason));
    rsp
}

/// The answer to `err` for this request: gRPC or HTTP.
pub fn error_response_for(
    err: &ProxyError,
    request: &http::request::Parts,
) -> Response<ResponseBody> {
    if super::error::is_grpc(request) {
        grpc_error_response(err)
    } else {
        error_response(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_the_documented_status() {
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], 1).into();
        let cases = [
            (ProxyError::MissingHost, 400),
            (ProxyError::DuplicateHost, 400),
            (ProxyError::InvalidAuthority, 400),
            (ProxyError::ConflictingHost, 400),
            (ProxyError::UnknownAuthority, 404),
            (ProxyError::NoRoute, 404),
            (ProxyError::ConnectNotSupported, 405),
            (ProxyError::InvalidBackend("x".into()), 500),
            (ProxyError::NoBackends, 500),
            (
                ProxyError::Connect {
                    addr,
                    source: std::io::ErrorKind::ConnectionRefused.into(),
                },
                502,
            ),
            (ProxyError::ClientBodyTimeout, 408),
            (ProxyError::NoReadyEndpoint("a".into()), 503),
            (ProxyError::UpstreamOverflow(addr), 503),
            (ProxyError::RequestTimeout, 504),
            (ProxyError::BackendRequestTimeout, 504),
        ];
        for (err, status) in cases {
            let rsp = error_response(&err);
            assert_eq!(rsp.status().as_u16(), status, "{err}");
            assert_eq!(
                rsp.headers()[ERROR_HEADER].to_str().ok(),
                Some(err.reason())
            );
        }
    }
}
