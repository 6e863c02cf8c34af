//! The retry loop of rules with a [`RetryPolicy`]: pick → attempt → decide, until an answer
//! is final. Rules without one never come here (no buffering, no copies, no budget).
//!
//! Per attempt: a backend is picked by weight and an endpoint by P2C afresh (a retry may go
//! elsewhere), the backend's filters run on a fresh copy of the request head, and one
//! [`attempt`] is sent under `min(request deadline, dispatch + backendRequest)` (Linkerd's
//! `retry.linkerd.io/timeout` shortens `backendRequest`). An answer is retried when its status
//! is in the policy's codes, or when the attempt failed to connect, timed out on its
//! per-attempt deadline, broke before the response head, found no ready endpoint or an
//! overflowing one — and then only while retries are left, the body is replayable (at most
//! 64 KiB, recorded while the first attempt streamed it, and read to its end by then:
//! [`Replayable`]) and the backend's retry budget grants one. The `request` deadline is never
//! retried: it ends everything, backoff waits included. Once a response head is handed on,
//! its body streams to the client and nothing is retried any more.
//!
//! Cost for rules without a policy: one branch on `rule.retry` and a boxed future they never
//! create. Measured with the peer kit (no retry configured, plain release builds, 3
//! interleaved rounds of base 84e7eed and this code): proxy CPU 14.6 µs/req before, 14.7
//! after (medians; the kit's calibrated noise is 1-2%), split 90.0% either way.
//!
//! Budgets ([`RetryBudget`](crate::table::retry::RetryBudget)) are kept per backend Service
//! (namespace/name, all ports) in [`Budgets`](super::budget::Budgets), carried over from table to
//! table like connection pools, so a reload never refills one. Every first attempt of a rule that
//! retries deposits to the budget of the backend it went to; every retry withdraws from the budget
//! of the backend it goes to.

use std::net::SocketAddr;
use std::sync::Arc;

use http::request::Parts;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::attempt::Outgoing;
use super::body::{Replayable, RequestBody};
use super::error::ProxyError;
use super::filters::{self, RequestEffects};
use super::live::{Live, Proxy};
use super::pick::{accrual_now, fast_rand};
use super::served::Served;
use super::timeout::{self, Deadline};
use super::upstream::{first_body, prepare_upstream, Failed, Forwarded, Launch};
use crate::metrics::RetryMetrics;
use crate::table::retry::{Hedge, RetryPolicy, MAX_REPLAY_BODY};
use crate::table::{BackendTarget, ParentPort, RequestMatch, Rule, Timeouts};

/// What the caller of [`forward`] had of the request after the rule's own filters.
pub(super) struct Request<'t> {
    pub parts: Parts,
    pub body: Incoming,
    pub effects: RequestEffects,
    pub matched: &'t RequestMatch,
    pub received: Instant,
}

/// Forward a request bound to `rule` (which retries per `policy`) until an answer is final.
/// `at` follows the attempt in flight (backend, then endpoint) for the caller's error path.
pub(super) async fn forward<'t>(
    proxy: &Proxy,
    live: &'t Arc<Live>,
    parent: &'t ParentPort,
    rule: &'t Rule,
    policy: &RetryPolicy,
    request: Request<'t>,
    at: &mut Served<'t>,
) -> Result<Forwarded<'t>, Failed> {
    let Request {
        parts: client_parts,
        body,
        effects: rule_effects,
        matched,
        received,
    } = request;
    let metrics = live
        .metrics
        .route(parent, rule)
        .and_then(|m| m.retry.as_ref());
    let mut timeouts = rule.timeouts;
    if let Some(t) = policy.attempt_timeout {
        timeouts.backend_request = Some(timeouts.backend_request.map_or(t, |b| b.min(t)));
    }
    let request_deadline = timeout::attempt_deadline(
        &crate::table::Timeouts {
            backend_request: None,
            ..rule.timeouts
        },
        proxy.config.default_request_timeout,
        received,
        received,
    )
    .map(|(at, _)| at);
    // Hedging is for idempotent requests only (and, below, only without a body).
    let hedge = policy
        .hedge
        .as_ref()
        .filter(|_| super::wire::is_idempotent(&client_parts.method));
    let mut body = Some(body);
    let mut replay: Option<Replayable> = None;
    // A body that no attempt has sent yet (the first, or one whose attempt never connected):
    // sent as it is, before falling back to the recorded copy.
    let mut pending: Option<RequestBody> = None;
    let mut retries = 0u32;
    loop {
        let first = retries == 0;
        let mut parts = copy_head(&client_parts);
        let mut effects = rule_effects.clone();
        // Failures before anything is sent are retryable too (another pick may do better),
        // except those of the configuration or the client.
        let outcome: Result<Forwarded<'t>, Failed> = async {
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
            at.endpoint = None;
            if !backend.filters.is_empty() {
                match filters::apply_request(
                    &backend.filters,
                    &mut parts,
                    matched,
                    parent.port,
                    &mut effects,
                ) {
                    Ok(None) => {}
                    Ok(Some(rsp)) => return Err(Failed::Answered(Box::new(rsp))),
                    Err(e) => return Err(e.into()),
                }
            }
            if replay.is_none() {
                {
                    // Only the first pass gets here, and it has the client's body.
                    let incoming = body.take().ok_or(ProxyError::NoBackends)?;
                    // Mirrors get one copy of the request, from the first attempt.
                    let b = first_body(proxy, live, parent, rule, backend, &parts, incoming);
                    let (first, r) = Replayable::record(b, MAX_REPLAY_BODY);
                    replay = Some(r);
                    pending = Some(first);
                }
            }
            let endpoint = svc
                .pick_endpoint(fast_rand(), fast_rand(), accrual_now)
                .ok_or_else(|| ProxyError::NoReadyEndpoint(svc.display_name()))?;
            let authority = effects.authority.take().or_else(|| svc.authority.clone());
            prepare_upstream(&mut parts, svc.protocol, authority)?;
            let backend_metrics = live.metrics.backend(parent, backend);
            if let Some(b) = backend_metrics {
                b.requests.inc();
            }
            if first {
                if let Some(budget) = live.budgets.get(&(svc.namespace.clone(), svc.name.clone())) {
                    budget.deposit(accrual_now());
                }
            }
            let dispatched = Instant::now();
            let deadline = timeout::attempt_deadline(
                &timeouts,
                proxy.config.default_request_timeout,
                received,
                dispatched,
            )
            .map(|(at, which)| Deadline::new(at, which));
            let body = match pending.take() {
                Some(b) => b,
                // The loop retries only when one of the two is there ([`Replayable`]).
                None => replay
                    .as_ref()
                    .and_then(Replayable::for_retry)
                    .ok_or(ProxyError::NoBackends)?,
            };
            let hedging = hedge.filter(|_| matches!(body, RequestBody::Empty));
            let mut outgoing = Outgoing::new(parts, body, svc);
            let mut launch = Launch {
                backend,
                svc,
                endpoint,
                dispatched,
                deadline,
                backend_metrics,
                effects,
            };
            if let Some(h) = hedging {
                let cx = HedgeCx {
                    proxy,
                    live,
                    parent,
                    rule,
                    client_parts: &client_parts,
                    rule_effects: &rule_effects,
                    matched,
                    timeouts: &timeouts,
                    received,
                };
                return race(&cx, launch, outgoing, h, metrics)
                    .await
                    .map_err(|(e, addr)| {
                        at.endpoint = Some(addr);
                        e.into()
                    });
            }
            let result = launch.send(proxy, live, &mut outgoing).await;
            if let Outgoing::Hyper(Some(unsent)) = outgoing {
                // Never connected: the body is untouched and goes to the next attempt.
                pending = Some(unsent.into_body());
            }
            match result {
                Ok(sent) => Ok(launch.answered(sent)),
                Err((e, endpoint)) => {
                    at.endpoint = Some(endpoint.addr);
                    Err(e.into())
                }
            }
        }
        .await;

        let retryable = match &outcome {
            Ok(fwd) => policy.codes.contains(fwd.sent.rsp.status().as_u16()),
            Err(Failed::Error(e)) => is_retryable(e),
            Err(Failed::Answered(_)) => false,
        };
        if !retryable {
            if retries > 0 {
                if let Some(m) = metrics {
                    m.successes.inc();
                }
            }
            return outcome;
        }
        if retries >= policy.limit {
            // A policy that only hedges has no limit to exceed.
            if let (Some(m), true) = (metrics, policy.limit > 0) {
                m.limit_exceeded.inc();
            }
            return outcome;
        }
        let replayable = pending.is_some() || replay.as_ref().is_some_and(Replayable::replayable);
        // The budget of the backend the retry would go to is not known before the pick;
        // the one just tried stands for it (the same Service unless the rule splits).
        let granted = replayable && at.backend.is_none_or(|svc| withdraw(live, svc));
        if !granted {
            if let Some(m) = metrics {
                m.overflow.inc();
            }
            return outcome;
        }
        // The answer is dropped: an HTTP/1.1 connection with an unread body closes, an h2
        // stream is reset.
        drop(outcome);
        retries += 1;
        if let Some(m) = metrics {
            m.requests.inc();
        }
        let wait = policy.backoff_before(retries, fast_rand());
        if !wait.is_zero() {
            let until = Instant::now() + wait;
            match request_deadline {
                Some(d) if d <= until => {
                    tokio::time::sleep_until(d).await;
                    return Err(Failed::Error(ProxyError::RequestTimeout));
                }
                _ => tokio::time::sleep_until(until).await,
            }
        }
        tracing::debug!(
            parent = %parent.name, namespace = %parent.namespace, retry = retries,
            "retrying request"
        );
    }
}

/// What a hedge needs to be prepared like the first attempt.
struct HedgeCx<'a, 't> {
    proxy: &'a Proxy,
    live: &'t Arc<Live>,
    parent: &'t ParentPort,
    rule: &'t Rule,
    client_parts: &'a Parts,
    rule_effects: &'a RequestEffects,
    matched: &'t RequestMatch,
    timeouts: &'a Timeouts,
    received: Instant,
}

/// Send `primary`, and each hedge delay without a response head another attempt (up to
/// `hedge.max`, while the budget grants them); the first response head wins and dropping the
/// others cancels them. An error ends the race only when nothing else is still running.
///
/// The time the first attempt took to its response head is recorded for `p95` delays: when a
/// hedge wins, the first attempt's time so far stands in (a lower bound), so slow answers
/// are never left out of the estimate because a hedge beat them. A `p95` rule with too few
/// answers recorded yet sends no hedges.
async fn race<'t>(
    cx: &HedgeCx<'_, 't>,
    primary: Launch<'t>,
    outgoing: Outgoing,
    hedge: &Hedge,
    metrics: Option<&RetryMetrics>,
) -> Result<Forwarded<'t>, (ProxyError, SocketAddr)> {
    use futures::stream::{FuturesUnordered, StreamExt};
    let mut tried = vec![primary.endpoint.addr];
    let started = primary.dispatched;
    let mut running = FuturesUnordered::new();
    running.push(run(cx.proxy, cx.live, primary, outgoing, 0));
    let mut hedges = 0u32;
    let delay = hedge.delay_at(accrual_now());
    let mut can_hedge = delay.is_some();
    let timer = tokio::time::sleep(delay.unwrap_or(std::time::Duration::from_secs(86_400)));
    tokio::pin!(timer);
    let mut last_err = None;
    loop {
        tokio::select! {
            next = running.next() => match next {
                Some((i, Ok(fwd))) => {
                    hedge.observed.record(accrual_now(), started.elapsed());
                    if let (Some(m), true) = (metrics, i > 0) {
                        m.hedge_wins.inc();
                    }
                    return Ok(fwd);
                }
                Some((_, Err(e))) => {
                    last_err = Some(e);
                    if running.is_empty() {
                        break;
                    }
                }
                None => break,
            },
            () = &mut timer, if can_hedge && hedges < hedge.max => {
                match launch_hedge(cx, &tried) {
                    Some((launch, outgoing)) => {
                        hedges += 1;
                        if let Some(m) = metrics {
                            m.hedges.inc();
                        }
                        tried.push(launch.endpoint.addr);
                        running.push(run(cx.proxy, cx.live, launch, outgoing, hedges));
                        match hedge.delay_at(accrual_now()) {
                            Some(d) => timer.as_mut().reset(Instant::now() + d),
                            None => can_hedge = false,
                        }
                    }
                    None => can_hedge = false,
                }
            }
        }
    }
    Err(last_err.unwrap_or((ProxyError::NoBackends, tried[0])))
}

/// One attempt of a race, numbered (0: the first).
async fn run<'t>(
    proxy: &Proxy,
    live: &'t Live,
    mut launch: Launch<'t>,
    mut outgoing: Outgoing,
    i: u32,
) -> (u32, Result<Forwarded<'t>, (ProxyError, SocketAddr)>) {
    let sent = launch.send(proxy, live, &mut outgoing).await;
    match sent {
        Ok(sent) => (i, Ok(launch.answered(sent))),
        Err((e, endpoint)) => (i, Err((e, endpoint.addr))),
    }
}

/// A hedge for a bodiless request: a backend by weight, an endpoint not yet tried when there
/// is one, the budget's consent. `None` when any of them is missing.
fn launch_hedge<'t>(cx: &HedgeCx<'_, 't>, tried: &[SocketAddr]) -> Option<(Launch<'t>, Outgoing)> {
    let backend = cx.rule.backends.pick(fast_rand())?;
    let BackendTarget::Service(svc) = &backend.target else {
        return None;
    };
    let mut parts = copy_head(cx.client_parts);
    let mut effects = cx.rule_effects.clone();
    if !backend.filters.is_empty() {
        let applied = filters::apply_request(
            &backend.filters,
            &mut parts,
            cx.matched,
            cx.parent.port,
            &mut effects,
        );
        if !matches!(applied, Ok(None)) {
            return None;
        }
    }
    let mut endpoint = svc.pick_endpoint(fast_rand(), fast_rand(), accrual_now)?;
    for _ in 0..3 {
        if !tried.contains(&endpoint.addr) {
            break;
        }
        if let Some(e) = svc.pick_endpoint(fast_rand(), fast_rand(), accrual_now) {
            endpoint = e;
        }
    }
    let authority = effects.authority.take().or_else(|| svc.authority.clone());
    prepare_upstream(&mut parts, svc.protocol, authority).ok()?;
    if !withdraw(cx.live, svc) {
        return None;
    }
    let backend_metrics = cx.live.metrics.backend(cx.parent, backend);
    if let Some(b) = backend_metrics {
        b.requests.inc();
    }
    let dispatched = Instant::now();
    let deadline = timeout::attempt_deadline(
        cx.timeouts,
        cx.proxy.config.default_request_timeout,
        cx.received,
        dispatched,
    )
    .map(|(at, which)| Deadline::new(at, which));
    let outgoing = Outgoing::new(parts, RequestBody::Empty, svc);
    Some((
        Launch {
            backend,
            svc,
            endpoint,
            dispatched,
            deadline,
            backend_metrics,
            effects,
        },
        outgoing,
    ))
}

fn withdraw(live: &Live, svc: &crate::table::ServiceBackend) -> bool {
    live.budgets
        .get(&(svc.namespace.clone(), svc.name.clone()))
        .is_none_or(|b| b.withdraw(accrual_now()))
}

/// Failures another attempt may fix. The `request` deadline, the client's own failures and
/// the configuration's are final.
fn is_retryable(e: &ProxyError) -> bool {
    matches!(
        e,
        ProxyError::Connect { .. }
            | ProxyError::ConnectTimeout(_)
            | ProxyError::Upstream { .. }
            | ProxyError::UpstreamOverflow(_)
            | ProxyError::NoReadyEndpoint(_)
            | ProxyError::BackendRequestTimeout
    )
}

/// A copy of the client's request head for one attempt (extensions are not copied: nothing
/// upstream reads them).
fn copy_head(parts: &Parts) -> Parts {
    let mut head = http::Request::new(());
    *head.method_mut() = parts.method.clone();
    *head.uri_mut() = parts.uri.clone();
    *head.version_mut() = parts.version;
    *head.headers_mut() = parts.headers.clone();
    head.into_parts().0
}
