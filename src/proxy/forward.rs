//! The request path: bind a request to a rule, apply filters, pick a backend by weight and an
//! endpoint by power of two choices, and forward under the rule's deadlines.
//!
//! The service future is moved several times by hyper before it runs, so its wrappers count:
//! [`handle`] wraps the response body for connection bookkeeping inside its one `map` instead
//! of a `map_ok` around it. Measured with callgrind (release build, one worker, 5,000
//! keep-alive GETs through the peer kit's 90/10 split): 21,777 to 21,472 instructions per
//! request (-1.4%, one fewer copy of the future per request).
//!
//! For the same reason the request's future is kept small: `serve` is a plain `fn` around an
//! `async move` block (an `async fn` keeps every argument twice), the pick of a rule without
//! retries is a plain `fn` (only the attempt is awaited), and `timeout::bounded` borrows the
//! upstream future instead of holding it twice; the response body stays within 256 bytes
//! (the bytes glibc's `memcpy` copies without a loop), which is why `Completion` boxes its
//! hyper connection. The future went from 3,392 to 1,864 bytes (`-Zprint-type-sizes`, debug
//! build), the attempt's from 1,152 to 624. Measured with callgrind (release build, one
//! worker, 16 keep-alive connections, the peer kit's 90/10 split, instructions of 12,000
//! requests minus those of 2,000, ÷ 10,000; jemalloc both times): 24,108 to 22,869 instructions
//! per request (-5.1%), together with the trusted `Host` of `route::authority_trusting`.
//!
//! The request's values are moved as little as possible: the pick edits the head in place
//! (`pick_once` takes `&mut Parts`), the single-attempt path responds with its `Launch` and
//! `Sent` as they are (the retry loop's `Forwarded` is only the two side by side), and
//! `RequestEffects` boxes its rare CORS map (48 bytes instead of 136: moved inline, not by a
//! `memcpy` call). `memcpy` calls from the request's future went from 17 to 7 per request, as
//! in f151fc4 (before the seam). The parent's metric handles are looked up once per request
//! for the rule's and the backend's, and only a POST is checked for gRPC's content type.
//! Measured as above, with the header-name fast path of `h1::codec`: 22,919 to 21,422
//! instructions per request (-6.5%; f151fc4: 21,680).

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Weak};

use futures::FutureExt;
use http::header::HOST;
use http::{HeaderValue, Method, Request, Response, Version};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::attempt::{Outgoing, Sent};
use super::body::RequestBody;
use super::conns::{Open, Tracked};
use super::error::ProxyError;
use super::filters::{self, RequestEffects};
use super::live::{Live, Proxy};
use super::pick::{accrual_now, fast_rand};
use super::respond::{
    error_response, error_response_for, grpc_error_response, Completion, ResponseBody,
};
use super::route;
use super::served::{AccessEntry, AccessStart, Served};
use super::timeout::{self, Deadline};
use super::upstream::{first_body, prepare_upstream, Failed, Launch};
use crate::metrics::ParentMetrics;
use crate::table::matching::RequestView;
use crate::table::{BackendTarget, Lookup, ParentPort, RequestMatch, Rule};
use http::request::Parts;

/// hyper service entry point: never fails; failures become responses. Binds the request to
/// its parent Service right away (through the connection's [`ParentCache`]) and returns the
/// future that serves it. The response body holds `open` until hyper drops it.
pub fn handle(
    proxy: &Arc<Proxy>,
    cache: &ParentCache,
    req: Request<Incoming>,
    open: Open,
) -> impl Future<Output = Result<Response<Tracked>, Infallible>> + Send + 'static {
    let received = Instant::now();
    let live = proxy.live();
    let mut req = req;
    let parent = match cache.local_port {
        None => route::authority_trusting(req.headers(), req.uri(), req.version(), |host| {
            cache.checked(host)
        })
        .and_then(|authority| {
            cache
                .parent(&live, authority)
                .ok_or(ProxyError::UnknownAuthority)
        }),
        Some(port) => cache.parent_by_port(&live, port, &mut req),
    };
    // `map` rather than an async block around `serve`, and one `map` rather than a wrapper per
    // concern: hyper moves this future around, and each wrapper adds a copy of it.
    let (parts, body) = req.into_parts();
    serve(proxy.clone(), live, parent, parts, body, received)
        .map(move |rsp| Ok(rsp.map(|body| Tracked { body, open })))
}

/// The parent Service port of the last authority seen on one client connection. Clients send
/// the same `Host` on every request of a connection, so this skips parsing the authority and
/// the table's hash lookup for all but the first request after each table swap. Holds only weak
/// references: an idle connection never keeps an old table alive.
///
/// A connection to a per-parent-port listener ([`ParentCache::for_local_port`]) is bound by its
/// local port instead: the parent is looked up once per table, whatever the requests' `Host`.
#[derive(Debug, Default)]
pub struct ParentCache {
    last: RefCell<Option<CachedParent>>,
    local_port: Option<u16>,
}

#[derive(Debug)]
struct CachedParent {
    live: Weak<Live>,
    authority: Box<str>,
    parent: Weak<ParentPort>,
}

impl ParentCache {
    /// The cache of a connection accepted on the listener for `port`.
    pub fn for_local_port(port: u16) -> Self {
        ParentCache {
            last: RefCell::default(),
            local_port: Some(port),
        }
    }

    /// The parent of a connection to listener port `port`. The request needs no `Host`; one it
    /// carries must still be a single valid authority, since it is forwarded. A request without
    /// one gets the parent's `name.namespace[:port]`, so HTTP/1.1 endpoints see a `Host`.
    fn parent_by_port(
        &self,
        live: &Arc<Live>,
        port: u16,
        req: &mut Request<Incoming>,
    ) -> Result<Arc<ParentPort>, ProxyError> {
        let missing = match route::authority_of(req.headers(), req.uri(), req.version()) {
            Ok(_) => false,
            Err(ProxyError::MissingHost) => true,
            Err(e) => return Err(e),
        };
        let parent = {
            let mut slot = self.last.borrow_mut();
            match slot
                .as_ref()
                .filter(|c| std::ptr::eq(c.live.as_ptr(), Arc::as_ptr(live)))
            {
                Some(c) => c.parent.upgrade(),
                None => None,
            }
            .or_else(|| {
                let parent = live.table.parent_for_local_port(port)?.clone();
                *slot = Some(CachedParent {
                    live: Arc::downgrade(live),
                    authority: Box::default(),
                    parent: Arc::downgrade(&parent),
                });
                Some(parent)
            })
            .ok_or(ProxyError::UnknownAuthority)?
        };
        if missing && req.version() != Version::HTTP_2 {
            let host = if parent.port == 80 {
                format!("{}.{}", parent.name, parent.namespace)
            } else {
                format!("{}.{}:{}", parent.name, parent.namespace, parent.port)
            };
            if let Ok(v) = HeaderValue::from_str(&host) {
                req.headers_mut().insert(HOST, v);
            }
        }
        Ok(parent)
    }

    /// Whether `host` is the last authority this connection was bound by, which passed
    /// [`route::is_authority`] then (the per-port listeners keep no authority).
    fn checked(&self, host: &[u8]) -> bool {
        self.last
            .borrow()
            .as_ref()
            .is_some_and(|c| !c.authority.is_empty() && c.authority.as_bytes() == host)
    }

    fn parent(&self, live: &Arc<Live>, authority: &str) -> Option<Arc<ParentPort>> {
        let mut slot = self.last.borrow_mut();
        if let Some(c) = &*slot {
            // The weak reference keeps the allocation, so an equal address is the same table.
            if std::ptr::eq(c.live.as_ptr(), Arc::as_ptr(live)) && *c.authority == *authority {
                if let Some(p) = c.parent.upgrade() {
                    return Some(p);
                }
            }
        }
        let found = live.table.parent(authority)?;
        let parent = live
            .parents
            .get(&(found as *const ParentPort as usize))?
            .clone();
        *slot = Some(CachedParent {
            live: Arc::downgrade(live),
            authority: authority.into(),
            parent: Arc::downgrade(&parent),
        });
        Some(parent)
    }
}

/// The future that serves one request. A plain `fn` around an `async move` block rather than an
/// `async fn`: an `async fn` keeps each argument twice in its state (the argument and the
/// local it is moved into), and hyper moves this future around several times per request.
#[allow(clippy::manual_async_fn)]
fn serve(
    proxy: Arc<Proxy>,
    live: Arc<Live>,
    parent: Result<Arc<ParentPort>, ProxyError>,
    mut parts: Parts,
    body: Incoming,
    received: Instant,
) -> impl Future<Output = Response<ResponseBody>> + Send + 'static {
    async move {
        let (proxy, live) = (&*proxy, &live);
        let access = proxy
            .config
            .access_log
            .then(|| AccessStart::new(&parts.method, parts.uri.path(), received.into_std()));
        let access = access.as_ref();
        // How far the request got, for the debug header and the access log. One value updated in
        // place: it is kept across the awaits below, in the future hyper moves around.
        let mut at = Served::default();

        // 1. Bind: parent Service, rule, the rule's filters.
        if parts.method == Method::CONNECT {
            // A tunnel is not a request a route could match or an endpoint answer in origin form;
            // in h2 plain CONNECT has no :path, and extended CONNECT is never enabled.
            let e = ProxyError::ConnectNotSupported;
            return unrouted(proxy, &e, access, at, &parts);
        }
        let parent_port = match parent {
            Ok(p) => p,
            Err(e) => return unrouted(proxy, &e, access, at, &parts),
        };
        if let Err(e) = route::host_from_target(&mut parts) {
            return unrouted(proxy, &e, access, at, &parts);
        }
        let parent: &ParentPort = &parent_port;
        at.parent = Some(parent);
        let (matched, rule) = match rule_for(parent, &parts) {
            Ok(bound) => bound,
            Err(e) => return unrouted(proxy, &e, access, at, &parts),
        };
        at.rule = Some(rule);
        // The parent's metric handles, looked up once for the rule's and the backend's.
        let metrics = live.metrics.handles(parent);
        let ledger = Ledger {
            proxy,
            parent,
            metrics,
            route_metrics: metrics.and_then(|m| m.route(rule)),
            grpc: super::error::is_grpc(&parts),
            access,
            received,
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
            Ok(Some(rsp)) => return ledger.answered(rsp, at),
            Err(e) => return ledger.fail(e, at),
        }

        // 2, 3, 4. Pick a backend and an endpoint, send the attempt(s), and respond: the
        // endpoint's head through the response filters, its body under the deadline left.
        let Some(policy) = rule.retry.as_deref() else {
            // Without retries nothing is buffered or copied: one pick, one attempt. The pick is
            // not an `async fn` of its own: its future would sit inside this one with its
            // arguments twice over, and only the attempt waits. Its `Result` is matched in a
            // statement of its own, so that the future does not keep it next to the value.
            let picked = pick_once(
                &ledger,
                live,
                (rule, matched),
                &mut parts,
                body,
                effects,
                &mut at,
            );
            let (mut launch, body) = match picked {
                Ok(picked) => picked,
                Err(Failed::Error(e)) => return ledger.fail(e, at),
                Err(Failed::Answered(rsp)) => return ledger.answered(*rsp, at),
            };
            let mut outgoing = Outgoing::new(parts, body, launch.svc);
            let sent = launch.send(proxy, live, &mut outgoing).await;
            return match sent {
                Ok(sent) => respond(&ledger, &parent_port, rule, launch, sent, at),
                Err((e, endpoint)) => ledger.fail(e, at.at(endpoint.addr)),
            };
        };
        let request = super::retry::Request {
            parts,
            body,
            effects,
            matched,
            received,
        };
        // Boxed: the retry loop's future is large, and unboxed it would grow the future of
        // every request (hyper moves it around) whether it retries or not.
        let outcome = Box::pin(super::retry::forward(
            proxy, live, parent, rule, policy, request, &mut at,
        ))
        .await;
        match outcome {
            Ok(fwd) => respond(&ledger, &parent_port, rule, fwd.launch, fwd.sent, at),
            Err(Failed::Error(e)) => ledger.fail(e, at),
            Err(Failed::Answered(rsp)) => ledger.answered(*rsp, at),
        }
    }
}

/// The rule of `parent` that matches the request, and the match.
fn rule_for<'t>(
    parent: &'t ParentPort,
    parts: &Parts,
) -> Result<(&'t RequestMatch, &'t Arc<Rule>), ProxyError> {
    let view = RequestView {
        method: &parts.method,
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers: &parts.headers,
    };
    match parent.lookup(&view) {
        Lookup::Matched { matched, rule, .. } => Ok((matched, rule)),
        Lookup::NoMatch(_) => Err(ProxyError::NoRoute),
        Lookup::UnknownAuthority => Err(ProxyError::UnknownAuthority),
    }
}

/// What a bound request's answer is recorded with: route metrics, the debug header, the
/// access log.
struct Ledger<'t> {
    proxy: &'t Proxy,
    parent: &'t ParentPort,
    metrics: Option<&'t ParentMetrics>,
    route_metrics: Option<&'t Arc<crate::metrics::RouteMetrics>>,
    grpc: bool,
    access: Option<&'t AccessStart>,
    received: Instant,
}

impl<'t> Ledger<'t> {
    /// The answer to a proxy-made failure of a bound request.
    fn fail(&self, e: ProxyError, at: Served<'_>) -> Response<ResponseBody> {
        tracing::debug!(
            parent = %self.parent.name, namespace = %self.parent.namespace, error = %e,
            "request failed"
        );
        let mut rsp = if self.grpc {
            grpc_error_response(&e)
        } else {
            error_response(&e)
        };
        let status = rsp.status().as_u16();
        if let Some(m) = self.route_metrics {
            m.record(status, Some(e.reason()), self.received.elapsed());
        }
        if self.proxy.config.debug_headers {
            at.stamp(rsp.headers_mut());
        }
        if let Some(a) = self.access {
            a.log(at, status, Some(e.reason()));
        }
        rsp
    }

    /// A response a filter made up (redirects).
    fn answered(&self, mut rsp: Response<ResponseBody>, at: Served<'_>) -> Response<ResponseBody> {
        let status = rsp.status().as_u16();
        if let Some(m) = self.route_metrics {
            m.record(status, None, self.received.elapsed());
        }
        if self.proxy.config.debug_headers {
            at.stamp(rsp.headers_mut());
        }
        if let Some(a) = self.access {
            a.log(at, status, None);
        }
        rsp
    }
}

/// The one pick: a backend by weight (its filters, mirrors), an endpoint by P2C, the head it
/// gets (`parts`, edited in place) and the rule's deadlines for the attempt, with the body the
/// attempt sends. Inlined into its one caller, so that what it returns is built in the
/// request's future rather than copied there.
#[inline(always)]
fn pick_once<'t>(
    ledger: &Ledger<'t>,
    live: &'t Arc<Live>,
    (rule, matched): (&'t Arc<Rule>, &'t RequestMatch),
    parts: &mut Parts,
    body: Incoming,
    mut effects: RequestEffects,
    at: &mut Served<'t>,
) -> Result<(Launch<'t>, RequestBody), Failed> {
    let Ledger {
        proxy,
        parent,
        metrics,
        received,
        ..
    } = *ledger;
    let backend = rule
        .backends
        .pick(fast_rand())
        .ok_or(ProxyError::NoBackends)?;
    let svc = match &backend.target {
        BackendTarget::Service(s) => s,
        BackendTarget::Invalid { reason } => {
            return Err(ProxyError::InvalidBackend(reason.clone()).into())
        }
    };
    at.backend = Some(svc);
    if !backend.filters.is_empty() {
        if let Some(rsp) =
            filters::apply_request(&backend.filters, parts, matched, parent.port, &mut effects)?
        {
            return Err(Failed::Answered(Box::new(rsp)));
        }
    }

    let body = first_body(proxy, live, parent, rule, backend, parts, body);

    let endpoint = svc
        .pick_endpoint(fast_rand(), fast_rand(), accrual_now)
        .ok_or_else(|| ProxyError::NoReadyEndpoint(svc.display_name()))?;
    let authority = effects.authority.take().or_else(|| svc.authority.clone());
    prepare_upstream(parts, svc.protocol, authority)?;

    let backend_metrics = metrics.and_then(|m| m.backend(backend));
    if let Some(b) = backend_metrics {
        b.requests.inc();
    }
    let dispatched = Instant::now();
    let deadline = timeout::attempt_deadline(
        &rule.timeouts,
        proxy.config.default_request_timeout,
        received,
        dispatched,
    )
    .map(|(at, which)| Deadline::new(at, which));
    let launch = Launch {
        backend,
        svc,
        endpoint,
        dispatched,
        deadline,
        backend_metrics,
        effects,
    };
    Ok((launch, body))
}

/// The endpoint's answer on its way to the client: the response filters on its head, its body
/// under the deadline that is left, settled ([`Completion`]) when the body ends.
fn respond<'t>(
    ledger: &Ledger<'t>,
    parent_port: &Arc<ParentPort>,
    rule: &'t Arc<Rule>,
    launch: Launch<'t>,
    sent: Sent<'t>,
    mut at: Served<'t>,
) -> Response<ResponseBody> {
    let Launch {
        backend,
        svc,
        endpoint: _,
        dispatched,
        deadline,
        backend_metrics,
        mut effects,
    } = launch;
    let Sent {
        rsp,
        conn,
        in_flight,
        endpoint,
    } = sent;
    // The backend that answered (a hedge may have won on another one).
    at.backend = Some(svc);

    // Both HTTP/1.1 clients leave the hop-by-hop fields out (`wire`).
    let (mut head, upstream_body) = rsp.into_parts();
    filters::apply_response(&rule.filters, &mut head.headers);
    filters::apply_response(&backend.filters, &mut head.headers);
    filters::apply_cors(&mut effects, &mut head.headers);
    let proxy = ledger.proxy;
    if proxy.config.debug_headers {
        at.at(endpoint.addr).stamp(&mut head.headers);
    }
    let completion = Completion {
        route: ledger.route_metrics.cloned(),
        backend: backend_metrics.cloned(),
        status: head.status.as_u16(),
        started: ledger.received.into_std(),
        dispatched: dispatched.into_std(),
        in_flight,
        // Boxed: only hyper's HTTP/1.1 path has one, and the box keeps the response body
        // (which hyper moves several times per response) within 256 bytes.
        conn: conn.map(Box::new),
        access: ledger.access.map(|a| {
            Box::new(AccessEntry {
                start: a.clone(),
                parent: parent_port.clone(),
                rule: rule.clone(),
                backend: svc.clone(),
                endpoint: endpoint.addr,
            })
        }),
    };
    let deadline = deadline.map(|d| (d.sleep, d.which.name()));
    Response::from_parts(
        head,
        ResponseBody::upstream(
            upstream_body,
            deadline,
            proxy.config.upstream_idle_timeout,
            completion,
        ),
    )
}

/// The answer to a request that was not bound to a rule.
fn unrouted(
    proxy: &Proxy,
    e: &ProxyError,
    access: Option<&AccessStart>,
    at: Served<'_>,
    request: &Parts,
) -> Response<ResponseBody> {
    proxy.metrics.count_unrouted(e.reason());
    tracing::debug!(error = %e, "request not routed");
    let rsp = error_response_for(e, request);
    if let Some(a) = access {
        a.log(at, rsp.status().as_u16(), Some(e.reason()));
    }
    rsp
}
