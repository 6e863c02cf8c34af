//! The one upstream seam: send one attempt of a request to one endpoint of a backend, under a
//! deadline, and get back a response head or a typed [`ProxyError`]. Everything above it (the
//! single-attempt path in [`forward`](super::forward), the retry loop in [`retry`](super::retry))
//! decides what to send and what to do with the answer; everything below it ([`pool`]) speaks
//! HTTP.
//!
//! An attempt owns failure accrual ([`crate::table::accrual`]) for what it sees: a response
//! returns the endpoint to health, a connect failure ejects it, a broken exchange counts
//! towards ejection, and a 429 or 503 with `Retry-After` penalises it in P2C for that long.
//! Connecting is the only thing it tries again on its own: a request whose connection failed was
//! never sent, so it goes to another ready endpoint of the same backend (at most
//! [`MAX_CONNECT_ATTEMPTS`] endpoints in all), whatever the rule says about retries.

use std::pin::pin;

use http::request::Parts;
use http::{Request, Response};

use super::body::RequestBody;
use super::error::ProxyError;
use super::live::{pool_for, Live, Proxy};
use super::pick::{accrual_now, fast_rand};
use super::pool::{PooledConn, UpstreamIncoming};
use super::timeout::{self, Deadline};
use crate::table::{Endpoint, InFlight, ServiceBackend};

/// A request on its way upstream: a bodiless HTTP/1.1 head for the inline client, or a whole
/// request for hyper's, which takes it out once it has a connection.
pub(super) enum Outgoing {
    Inline(Parts),
    Hyper(Option<Request<RequestBody>>),
}

impl Outgoing {
    /// The form `pool` sends `parts` and `body` in for an endpoint speaking `svc`'s protocol.
    #[inline]
    pub(super) fn new(parts: Parts, body: RequestBody, svc: &ServiceBackend) -> Outgoing {
        if super::pool::inline_eligible(&parts, &body, svc.protocol) {
            Outgoing::Inline(parts)
        } else {
            Outgoing::Hyper(Some(Request::from_parts(parts, body)))
        }
    }
}

/// Endpoints one attempt may try when connecting fails (each failure ejects its endpoint).
pub(super) const MAX_CONNECT_ATTEMPTS: u32 = 3;

/// A response head from an endpoint, with what must live as long as its body.
pub(super) struct Sent<'t> {
    pub rsp: Response<UpstreamIncoming>,
    /// The hyper connection to hand back when the body ends (HTTP/1.1 via hyper).
    pub conn: Option<PooledConn>,
    /// Counts the exchange in the endpoint's load until the body ends.
    pub in_flight: InFlight,
    pub endpoint: &'t Endpoint,
}

/// Send `outgoing` to `endpoint` of `svc` (or, when connecting fails, to other ready
/// endpoints of `svc`) until a response head arrives or `deadline` passes. The error names
/// the endpoint it happened at.
pub(super) async fn attempt<'t>(
    proxy: &Proxy,
    live: &Live,
    svc: &'t ServiceBackend,
    mut endpoint: &'t Endpoint,
    outgoing: &mut Outgoing,
    mut deadline: Option<&mut Deadline>,
) -> Result<Sent<'t>, (ProxyError, &'t Endpoint)> {
    let mut connects = 1;
    loop {
        let pool = pool_for(proxy, live, endpoint.addr);
        let in_flight = endpoint.load.start();
        let sent = match outgoing {
            Outgoing::Inline(parts) => {
                let send = pin!(pool.send_inline(parts));
                timeout::bounded(send, deadline.as_deref_mut())
                    .await
                    .map(|rsp| (rsp.map(UpstreamIncoming::Inline), None))
            }
            Outgoing::Hyper(req) => {
                // Boxed: hyper's futures are large, and this path is the rarer one.
                let mut send = Box::pin(pool.send_hyper(req, svc.protocol));
                timeout::bounded(send.as_mut(), deadline.as_deref_mut()).await
            }
        };
        let health = &endpoint.load.health;
        match sent {
            Ok((rsp, conn)) => {
                let status = rsp.status().as_u16();
                if svc.accrual.count_5xx && status >= 500 {
                    if health.exchange_failed_with(accrual_now(), &svc.accrual) {
                        proxy.metrics.endpoint_ejections.inc();
                        tracing::info!(addr = %endpoint.addr, status, "endpoint ejected");
                    }
                } else {
                    health.success();
                }
                if matches!(status, 429 | 503) {
                    if let Some(secs) = retry_after(rsp.headers()) {
                        health.penalize(accrual_now(), secs.saturating_mul(1000));
                    }
                }
                return Ok(Sent {
                    rsp,
                    conn,
                    in_flight,
                    endpoint,
                });
            }
            Err(e @ (ProxyError::Connect { .. } | ProxyError::ConnectTimeout(_))) => {
                if health.connect_failed_with(accrual_now(), &svc.accrual) {
                    proxy.metrics.endpoint_ejections.inc();
                    tracing::info!(addr = %endpoint.addr, error = %e, "endpoint ejected");
                }
                // Nothing was sent: another endpoint may take the request (the failed one is
                // out of rotation now, so the pick avoids it unless every endpoint is out).
                let unsent = !matches!(outgoing, Outgoing::Hyper(None));
                let next = svc
                    .pick_endpoint(fast_rand(), fast_rand(), accrual_now)
                    .filter(|next| next.addr != endpoint.addr);
                match next {
                    Some(next) if unsent && connects < MAX_CONNECT_ATTEMPTS => {
                        connects += 1;
                        endpoint = next;
                    }
                    _ => return Err((e, endpoint)),
                }
            }
            Err(e @ ProxyError::Upstream { .. }) => {
                if health.exchange_failed_with(accrual_now(), &svc.accrual) {
                    proxy.metrics.endpoint_ejections.inc();
                    tracing::info!(addr = %endpoint.addr, error = %e, "endpoint ejected");
                }
                return Err((e, endpoint));
            }
            Err(e) => return Err((e, endpoint)),
        }
    }
}

/// `Retry-After` as delta-seconds (RFC 9110 §10.2.3); an HTTP-date is not read.
fn retry_after(headers: &http::HeaderMap) -> Option<u64> {
    let v = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok()
}
