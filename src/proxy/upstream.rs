//! The request on its way upstream, shared by the single-attempt path ([`forward`]) and the
//! retry loop ([`retry`]): the head an endpoint gets (`prepare_upstream`), the mirrored
//! copies (`send_mirrors`), and what an answered request hands back (`Forwarded`).
//!
//! [`forward`]: super::forward
//! [`retry`]: super::retry

use std::future::Future;
use std::sync::Arc;

use http::header::HOST;
use http::request::Parts;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri, Version};
use hyper::body::Body;
use tokio::time::Instant;

use super::attempt::{attempt, Outgoing, Sent};
use super::body::RequestBody;
use super::error::ProxyError;
use super::filters::RequestEffects;
use super::live::{pool_for, Live, Proxy};
use super::pick::{accrual_now, fast_rand};
use super::respond::ResponseBody;
use super::timeout::Deadline;
use super::wire::strip_hop_by_hop;
use crate::table::{Backend, Endpoint, Filter, ParentPort, Protocol, Rule, ServiceBackend};

/// What the retry loop hands back: the attempt that answered (backend, endpoint, the deadline
/// its body still runs under) and the response head. The single-attempt path responds with
/// its `Launch` and `Sent` as they are, without putting them together first.
pub(super) struct Forwarded<'t> {
    pub launch: Launch<'t>,
    pub sent: Sent<'t>,
}

/// One attempt about to be sent: where to, and what its answer is handed on with. Built by the
/// single-attempt path and the retry loop alike.
pub(super) struct Launch<'t> {
    pub backend: &'t Backend,
    pub svc: &'t Arc<ServiceBackend>,
    pub endpoint: &'t Endpoint,
    pub dispatched: Instant,
    pub deadline: Option<Deadline>,
    pub backend_metrics: Option<&'t Arc<crate::metrics::BackendMetrics>>,
    pub effects: RequestEffects,
}

impl<'t> Launch<'t> {
    /// Send `outgoing` as this attempt: to its endpoint, under its deadline ([`attempt`]).
    /// A plain `fn` returning `attempt`'s future, so it adds no layer to the request's future.
    #[inline]
    pub fn send<'a>(
        &'a mut self,
        proxy: &'a Proxy,
        live: &'a Live,
        outgoing: &'a mut Outgoing,
    ) -> impl Future<Output = Result<Sent<'t>, (ProxyError, &'t Endpoint)>> + 'a {
        attempt(
            proxy,
            live,
            self.svc,
            self.endpoint,
            outgoing,
            self.deadline.as_mut(),
        )
    }

    #[inline]
    pub fn answered(self, sent: Sent<'t>) -> Forwarded<'t> {
        Forwarded { launch: self, sent }
    }
}

/// How the retry loop ends without a response from an endpoint.
pub(super) enum Failed {
    /// A proxy error; the caller answers it ([`error_response`]).
    Error(ProxyError),
    /// A backend filter answered (RequestRedirect).
    Answered(Box<Response<ResponseBody>>),
}

impl From<ProxyError> for Failed {
    fn from(e: ProxyError) -> Failed {
        Failed::Error(e)
    }
}

pub(super) fn has_mirror(filters: &[Filter]) -> bool {
    filters
        .iter()
        .any(|f| matches!(f, Filter::RequestMirror(_)))
}

/// The client's body as the first attempt sends it: nothing for a body that has already ended,
/// copied to the mirrors of the rule and `backend` (each gets one copy), and cut off with 408
/// when the client stops sending for the client-body timeout.
pub(super) fn first_body(
    proxy: &Proxy,
    live: &Arc<Live>,
    parent: &ParentPort,
    rule: &Rule,
    backend: &Backend,
    parts: &Parts,
    incoming: hyper::body::Incoming,
) -> RequestBody {
    let mut body = if incoming.is_end_stream() {
        RequestBody::Empty
    } else {
        RequestBody::Incoming(incoming)
    };
    if has_mirror(&rule.filters) || has_mirror(&backend.filters) {
        send_mirrors(
            proxy,
            live,
            parent,
            rule.filters.iter().chain(&backend.filters),
            parts,
            &mut body,
            rule.timeouts.request,
        );
    }
    let client_body_timeout = proxy.config.client_body_timeout;
    if !client_body_timeout.is_zero() && !matches!(body, RequestBody::Empty) {
        body = RequestBody::Timed {
            inner: Box::new(body),
            idle: super::timeout::IdleTimer::new(client_body_timeout),
        };
    }
    body
}

/// Turn the client's request head into the head for an endpoint speaking `protocol`.
/// `authority` replaces the client's authority (URLRewrite hostname, gateway-mode mirrors).
pub(super) fn prepare_upstream(
    parts: &mut Parts,
    protocol: Protocol,
    authority: Option<HeaderValue>,
) -> Result<(), ProxyError> {
    strip_hop_by_hop(&mut parts.headers);
    match protocol {
        Protocol::Http1 => {
            parts.version = Version::HTTP_11;
            if let Some(a) = authority {
                parts.headers.insert(HOST, a);
            } else if !parts.headers.contains_key(HOST) {
                if let Some(a) = parts.uri.authority() {
                    let v = HeaderValue::from_str(a.as_str())
                        .map_err(|_| ProxyError::InvalidAuthority)?;
                    parts.headers.insert(HOST, v);
                }
            }
            if parts.uri.authority().is_some() || parts.uri.scheme().is_some() {
                let pq = parts
                    .uri
                    .path_and_query()
                    .cloned()
                    .unwrap_or_else(|| PathAndQuery::from_static("/"));
                parts.uri = Uri::from(pq);
            }
        }
        Protocol::H2c => {
            parts.version = Version::HTTP_2;
            let host = parts.headers.remove(HOST);
            let auth = match authority.or(host) {
                Some(v) => {
                    Authority::try_from(v.as_bytes()).map_err(|_| ProxyError::InvalidAuthority)?
                }
                None => parts
                    .uri
                    .authority()
                    .cloned()
                    .ok_or(ProxyError::MissingHost)?,
            };
            let pq = parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"));
            let mut up = http::uri::Parts::default();
            up.scheme = Some(Scheme::HTTP);
            up.authority = Some(auth);
            up.path_and_query = Some(pq);
            parts.uri = Uri::from_parts(up).map_err(|_| ProxyError::InvalidAuthority)?;
        }
    }
    Ok(())
}

/// Fire the RequestMirror filters that win their fraction: each sends a copy of the request
/// (teeing the body) to one ready endpoint of its backend and ignores the answer.
#[allow(clippy::too_many_arguments)]
pub(super) fn send_mirrors<'a>(
    proxy: &Proxy,
    live: &Arc<Live>,
    parent: &ParentPort,
    filters: impl Iterator<Item = &'a Filter>,
    parts: &Parts,
    body: &mut RequestBody,
    request_timeout: Option<std::time::Duration>,
) {
    for f in filters {
        let Filter::RequestMirror(m) = f else {
            continue;
        };
        if m.denominator == 0 || fast_rand() % u64::from(m.denominator) >= u64::from(m.numerator) {
            continue;
        }
        let svc = &m.backend;
        let Some(ep) = svc.pick_endpoint(fast_rand(), fast_rand(), accrual_now) else {
            continue;
        };
        let copy_body = match &*body {
            RequestBody::Empty => RequestBody::Empty,
            _ => body.tee(),
        };
        let mut head = Request::new(());
        *head.method_mut() = parts.method.clone();
        *head.uri_mut() = parts.uri.clone();
        *head.headers_mut() = parts.headers.clone();
        let (mut copy_parts, ()) = head.into_parts();
        if prepare_upstream(&mut copy_parts, svc.protocol, svc.authority.clone()).is_err() {
            continue;
        }
        let pool = pool_for(proxy, live, ep.addr);
        let metrics = live.metrics.mirror(parent, m).cloned();
        let in_flight = ep.load.start();
        let limit = request_timeout.unwrap_or(proxy.config.mirror_timeout);
        let protocol = svc.protocol;
        tokio::spawn(async move {
            let start = Instant::now();
            if let Some(m) = &metrics {
                m.requests.inc();
            }
            let exchange = async {
                let (rsp, conn) = pool.send(copy_parts, copy_body, protocol).await?;
                // Drain the answer so the connection can be reused.
                let mut body = rsp.into_body();
                while let Some(frame) =
                    std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
                {
                    if frame.is_err() {
                        return Ok::<_, ProxyError>(());
                    }
                }
                if let Some(c) = conn {
                    c.release();
                }
                Ok(())
            };
            if let Ok(Err(e)) = tokio::time::timeout(limit, exchange).await {
                tracing::debug!(error = %e, "mirror request failed");
            }
            if let Some(m) = &metrics {
                m.duration.observe(start.elapsed());
            }
            drop(in_flight);
        });
    }
}
