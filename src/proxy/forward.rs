//! The request path: bind a request to a rule, apply filters, pick a backend by weight and an
//! endpoint by power of two choices, and forward under the rule's deadlines.

use std::convert::Infallible;
use std::sync::Arc;

use http::header::{self, HeaderName, HOST};
use http::request::Parts;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue, Request, Response, Uri, Version};
use hyper::body::{Body, Incoming};
use tokio::time::Instant;

use super::body::{Completion, RequestBody, ResponseBody};
use super::error::{error_response, ProxyError};
use super::filters::{self, RequestEffects};
use super::pool::EndpointPool;
use super::timeout::{self, Deadline};
use super::{fast_rand, route, Live, Proxy};
use crate::table::matching::RequestView;
use crate::table::{BackendTarget, Filter, Lookup, ParentPort, Protocol};

/// hyper service entry point: never fails; failures become responses.
pub async fn handle(
    proxy: Arc<Proxy>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let received = Instant::now();
    let live = proxy.live();
    Ok(serve(&proxy, &live, req, received).await)
}

async fn serve(
    proxy: &Proxy,
    live: &Arc<Live>,
    req: Request<Incoming>,
    received: Instant,
) -> Response<ResponseBody> {
    let (mut parts, body) = req.into_parts();
    let looked_up = match route::authority(&parts) {
        Err(e) => Err(e),
        Ok(authority) => {
            let view = RequestView {
                method: &parts.method,
                path: parts.uri.path(),
                query: parts.uri.query(),
                headers: &parts.headers,
            };
            match live.table.lookup(authority, &view) {
                Lookup::UnknownAuthority => Err(ProxyError::UnknownAuthority),
                Lookup::NoMatch(_) => Err(ProxyError::NoRoute),
                Lookup::Matched {
                    parent,
                    matched,
                    rule,
                } => Ok((parent, matched, rule)),
            }
        }
    };
    let (parent, matched, rule) = match looked_up {
        Ok(found) => found,
        Err(e) => {
            proxy.metrics.count_unrouted(e.reason());
            tracing::debug!(error = %e, "request not routed");
            return error_response(&e);
        }
    };
    let route_metrics = live.metrics.route(parent, rule);
    let fail = |e: ProxyError| {
        tracing::debug!(
            parent = %parent.name, namespace = %parent.namespace, error = %e,
            "request failed"
        );
        let rsp = error_response(&e);
        if let Some(m) = route_metrics {
            m.record(rsp.status().as_u16(), Some(e.reason()), received.elapsed());
        }
        rsp
    };
    let answered = |rsp: Response<ResponseBody>| {
        if let Some(m) = route_metrics {
            m.record(rsp.status().as_u16(), None, received.elapsed());
        }
        rsp
    };

    let mut effects = RequestEffects::default();
    match filters::apply_request(
        &rule.filters,
        &mut parts,
        matched,
        parent.port,
        &mut effects,
    ) {
        Ok(None) => {}
        Ok(Some(rsp)) => return answered(rsp),
        Err(e) => return fail(e),
    }

    let Some(backend) = rule.backends.pick(fast_rand()) else {
        return fail(ProxyError::NoBackends);
    };
    let svc = match &backend.target {
        BackendTarget::Service(s) => s,
        BackendTarget::Invalid { reason } => {
            return fail(ProxyError::InvalidBackend(reason.clone()))
        }
    };
    if !backend.filters.is_empty() {
        match filters::apply_request(
            &backend.filters,
            &mut parts,
            matched,
            parent.port,
            &mut effects,
        ) {
            Ok(None) => {}
            Ok(Some(rsp)) => return answered(rsp),
            Err(e) => return fail(e),
        }
    }

    let mut body = if body.is_end_stream() {
        RequestBody::Empty
    } else {
        RequestBody::Incoming(body)
    };
    if has_mirror(&rule.filters) || has_mirror(&backend.filters) {
        send_mirrors(
            proxy,
            live,
            parent,
            rule.filters.iter().chain(&backend.filters),
            &parts,
            &mut body,
            rule.timeouts.request,
        );
    }

    let Some(endpoint) = svc.pick_endpoint(fast_rand(), fast_rand()) else {
        return fail(ProxyError::NoReadyEndpoint(svc.display_name()));
    };
    let pool = pool_for(proxy, live, endpoint.addr);
    let authority = effects.authority.take().or_else(|| svc.authority.clone());
    let upstream_req = match upstream_request(parts, body, svc.protocol, authority) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };

    let in_flight = endpoint.load.start();
    let backend_metrics = live.metrics.backend(parent, backend);
    if let Some(b) = backend_metrics {
        b.requests.inc();
    }
    let dispatched = Instant::now();
    let mut deadline = timeout::attempt_deadline(&rule.timeouts, received, dispatched)
        .map(|(at, which)| Deadline::new(at, which));
    let sent = timeout::bounded(pool.send(upstream_req, svc.protocol), deadline.as_mut()).await;
    let (rsp, conn) = match sent {
        Ok(r) => r,
        Err(e) => return fail(e),
    };

    let (mut head, upstream_body) = rsp.into_parts();
    strip_hop_by_hop(&mut head.headers);
    filters::apply_response(&rule.filters, &mut head.headers);
    filters::apply_response(&backend.filters, &mut head.headers);
    let completion = Completion {
        route: route_metrics.cloned(),
        backend: backend_metrics.cloned(),
        status: head.status.as_u16(),
        started: received.into_std(),
        dispatched: dispatched.into_std(),
        in_flight,
        conn,
    };
    let deadline = deadline.map(|d| (d.sleep, d.which.name()));
    Response::from_parts(
        head,
        ResponseBody::upstream(upstream_body, deadline, completion),
    )
}

fn has_mirror(filters: &[Filter]) -> bool {
    filters
        .iter()
        .any(|f| matches!(f, Filter::RequestMirror(_)))
}

/// The pool of an endpoint of the live table. An endpoint missing from the map (only possible
/// for a request still running on a table older than the map) gets an unshared pool.
fn pool_for(proxy: &Proxy, live: &Live, addr: std::net::SocketAddr) -> Arc<EndpointPool> {
    match live.pools.get(&addr) {
        Some(p) => p.clone(),
        None => Arc::new(EndpointPool::new(addr, proxy.config.connect_timeout)),
    }
}

/// Headers that describe one hop and are never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if let Some(conn) = headers.get(header::CONNECTION) {
        // Headers named by Connection are hop-by-hop too; rare, so the allocation is fine.
        let named: Vec<HeaderName> = conn
            .to_str()
            .unwrap_or("")
            .split(',')
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for n in named {
            headers.remove(n);
        }
    }
    for h in &HOP_BY_HOP {
        if headers.contains_key(h) {
            headers.remove(h);
        }
    }
    if let Some(te) = headers.get(header::TE) {
        if te.as_bytes() != b"trailers" {
            headers.remove(header::TE);
        }
    }
}

/// Turn the client's request into the request for an endpoint speaking `protocol`.
/// `authority` replaces the client's authority (URLRewrite hostname, gateway-mode mirrors).
fn upstream_request(
    mut parts: Parts,
    body: RequestBody,
    protocol: Protocol,
    authority: Option<HeaderValue>,
) -> Result<Request<RequestBody>, ProxyError> {
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
    Ok(Request::from_parts(parts, body))
}

/// Fire the RequestMirror filters that win their fraction: each sends a copy of the request
/// (teeing the body) to one ready endpoint of its backend and ignores the answer.
#[allow(clippy::too_many_arguments)]
fn send_mirrors<'a>(
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
        let Some(ep) = svc.pick_endpoint(fast_rand(), fast_rand()) else {
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
        let (copy_parts, ()) = head.into_parts();
        let Ok(req) = upstream_request(copy_parts, copy_body, svc.protocol, svc.authority.clone())
        else {
            continue;
        };
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
                let (rsp, conn) = pool.send(req, protocol).await?;
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
