//! `meshroute run --demo`: built-in echo backends and a live view of the split.
//!
//! Every loopback endpoint in the table gets an echo server that answers with the Service and
//! cluster it stands in for (`x-demo-service`, `x-demo-cluster`, and a one-line body), after a
//! few milliseconds of simulated work (`?delay=250` asks for 250 ms) so timeouts can be tried.
//! Endpoints that appear in later tables get a server too. A light load generator sends
//! `GET /` to every parent through the proxy, and the terminal shows, per parent, the
//! configured weights of the rule that `GET /` matches next to the split observed over the last
//! few seconds.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::proxy::Proxy;
use crate::table::matching::RequestView;
use crate::table::{BackendTarget, Filter, Lookup, RouteTable, ServiceBackend};

/// Window of the observed split.
const WINDOW: Duration = Duration::from_secs(5);
/// Each parent gets one request per tick.
const TICK: Duration = Duration::from_millis(50);

/// Who an echo backend stands in for.
#[derive(Debug, Clone)]
struct Identity {
    service: String,
    cluster: String,
}

fn identity(s: &ServiceBackend) -> Identity {
    Identity {
        service: format!("{}.{}", s.name, s.namespace),
        cluster: s.cluster.as_deref().unwrap_or("local").to_string(),
    }
}

/// Loopback endpoints of every backend and mirror target in the table.
fn loopback_endpoints(table: &RouteTable) -> BTreeMap<SocketAddr, Identity> {
    let mut out = BTreeMap::new();
    let mut add = |s: &ServiceBackend| {
        for e in &s.endpoints {
            if e.addr.ip().is_loopback() {
                out.entry(e.addr).or_insert_with(|| identity(s));
            }
        }
    };
    for svc in table.services() {
        for parent in &svc.ports {
            for (_, rule) in &parent.matches {
                for b in rule.backends.iter() {
                    if let BackendTarget::Service(s) = &b.target {
                        add(s);
                    }
                    for f in rule.filters.iter().chain(&b.filters) {
                        if let Filter::RequestMirror(m) = f {
                            add(&m.backend);
                        }
                    }
                }
            }
        }
    }
    out
}

/// Start echo servers for the loopback endpoints of the live table, and a supervisor that
/// starts more when new ones appear.
pub async fn start_backends(
    proxy: Arc<Proxy>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Vec<JoinHandle<()>> {
    let mut bound = HashSet::new();
    let mut handles = bind_new(&proxy.table(), &mut bound).await;
    handles.push(tokio::spawn(async move {
        tokio::pin!(shutdown);
        let mut tasks = Vec::new();
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            tasks.extend(bind_new(&proxy.table(), &mut bound).await);
        }
        for t in tasks {
            t.abort();
        }
    }));
    handles
}

async fn bind_new(table: &RouteTable, bound: &mut HashSet<SocketAddr>) -> Vec<JoinHandle<()>> {
    let mut handles = Vec::new();
    for (addr, id) in loopback_endpoints(table) {
        if !bound.insert(addr) {
            continue;
        }
        match TcpListener::bind(addr).await {
            Ok(l) => {
                tracing::info!(%addr, service = %id.service, cluster = %id.cluster, "demo backend");
                handles.push(tokio::spawn(echo(l, id)));
            }
            Err(e) => tracing::warn!(%addr, error = %e, "cannot start demo backend"),
        }
    }
    handles
}

async fn echo(listener: TcpListener, id: Identity) {
    let id = Arc::new(id);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let id = id.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let id = id.clone();
                async move { Ok::<_, Infallible>(answer(&id, &req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn answer(id: &Identity, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let asked = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("delay=")))
        .and_then(|v| v.parse::<u64>().ok());
    let delay = asked.unwrap_or_else(|| 2 + crate::proxy::fast_rand() % 18);
    tokio::time::sleep(Duration::from_millis(delay.min(60_000))).await;
    let body = format!("{} {}\n", id.service, id.cluster);
    let mut rsp = Response::new(Full::new(Bytes::from(body)));
    let h = rsp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&id.service) {
        h.insert("x-demo-service", v);
    }
    if let Ok(v) = HeaderValue::from_str(&id.cluster) {
        h.insert("x-demo-cluster", v);
    }
    rsp
}

/// One observed response: which parent, and who answered (or which error).
#[derive(Debug)]
struct Seen {
    at: Instant,
    parent: String,
    outcome: String,
}

/// Generate light traffic to every parent and redraw the split view every second.
pub async fn show(proxy: Arc<Proxy>, proxy_addr: SocketAddr, shutdown: impl Future<Output = ()>) {
    let seen: Arc<Mutex<VecDeque<Seen>>> = Arc::default();
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let tty = std::io::stdout().is_terminal();
    tokio::pin!(shutdown);
    let mut next_draw = Instant::now() + Duration::from_secs(1);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            () = tokio::time::sleep(TICK) => {}
        }
        let table = proxy.table();
        for svc in table.services() {
            for parent in &svc.ports {
                let authority = authority_of(&parent.name, &parent.namespace, parent.port);
                let key = format!("{}.{}:{}", parent.name, parent.namespace, parent.port);
                let uri = format!("http://{proxy_addr}/");
                let Ok(req) = Request::builder()
                    .uri(uri)
                    .header(http::header::HOST, authority)
                    .body(Empty::new())
                else {
                    continue;
                };
                let (client, seen) = (client.clone(), seen.clone());
                tokio::spawn(async move {
                    let outcome = match client.request(req).await {
                        Ok(rsp) => {
                            let o = outcome(rsp.status(), rsp.headers());
                            let _ = rsp.into_body().collect().await;
                            o
                        }
                        Err(e) => format!("client error: {e}"),
                    };
                    if let Ok(mut s) = seen.lock() {
                        s.push_back(Seen {
                            at: Instant::now(),
                            parent: key,
                            outcome,
                        });
                    }
                });
            }
        }
        if Instant::now() >= next_draw {
            next_draw += Duration::from_secs(if tty { 1 } else { 5 });
            let text = render(&table, &seen, proxy_addr);
            let text = if tty {
                format!("\x1b[2J\x1b[H{text}")
            } else {
                format!("{text}\n")
            };
            match crate::output::print(&text) {
                Ok(crate::output::Printed::All) => {}
                // `meshroute run --demo | head`: the proxy keeps serving, the view stops.
                Ok(crate::output::Printed::ReaderGone) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot print the demo view; it stops");
                    break;
                }
            }
        }
    }
}

fn authority_of(name: &str, namespace: &str, port: u16) -> String {
    format!("{name}.{namespace}.svc.cluster.local:{port}")
}

fn outcome(status: StatusCode, headers: &HeaderMap) -> String {
    let get = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    match (
        get("x-demo-service"),
        get("x-demo-cluster"),
        get("meshroute-error"),
    ) {
        (Some(s), Some(c), _) if status.is_success() => format!("{s} ({c})"),
        (_, _, Some(e)) => format!("HTTP {} {e}", status.as_u16()),
        _ => format!("HTTP {}", status.as_u16()),
    }
}

fn render(table: &RouteTable, seen: &Mutex<VecDeque<Seen>>, proxy_addr: SocketAddr) -> String {
    let now = Instant::now();
    let mut counts: BTreeMap<String, HashMap<String, u64>> = BTreeMap::new();
    if let Ok(mut s) = seen.lock() {
        while s.front().is_some_and(|x| now.duration_since(x.at) > WINDOW) {
            s.pop_front();
        }
        for x in s.iter() {
            *counts
                .entry(x.parent.clone())
                .or_default()
                .entry(x.outcome.clone())
                .or_default() += 1;
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "meshroute demo · table generation {} · proxy {proxy_addr} · split over the last {}s\n",
        table.generation,
        WINDOW.as_secs()
    );
    let mut parents: Vec<_> = table.services().flat_map(|s| s.ports.iter()).collect();
    parents.sort_by(|a, b| (&a.namespace, &a.name, a.port).cmp(&(&b.namespace, &b.name, b.port)));
    let headers = HeaderMap::new();
    for parent in parents {
        let key = format!("{}.{}:{}", parent.name, parent.namespace, parent.port);
        let observed = counts.remove(&key).unwrap_or_default();
        let total: u64 = observed.values().sum();
        let view = RequestView {
            method: &Method::GET,
            path: "/",
            query: None,
            headers: &headers,
        };
        match parent.lookup(&view) {
            Lookup::Matched { rule, .. } => {
                let route = match &rule.route {
                    Some(r) => format!("{} {}/{} rule {}", r.kind, r.namespace, r.name, rule.index),
                    None => "no route: passthrough".to_string(),
                };
                let _ = writeln!(out, "{key}  ({route})");
                let _ = writeln!(
                    out,
                    "    {:<40} {:>8} {:>11} {:>9}",
                    "backend", "weight", "configured", "observed"
                );
                let probs = rule.backends.probabilities();
                for (b, p) in rule.backends.iter().zip(probs) {
                    let (name, label) = match &b.target {
                        BackendTarget::Service(s) => {
                            let id = identity(s);
                            (
                                format!("{}:{} ({})", id.service, s.port, id.cluster),
                                format!("{} ({})", id.service, id.cluster),
                            )
                        }
                        BackendTarget::Invalid { reason } => {
                            (format!("invalid: {reason}"), String::new())
                        }
                    };
                    let got = observed.get(&label).copied().unwrap_or(0);
                    let share = if total == 0 {
                        0.0
                    } else {
                        got as f64 * 100.0 / total as f64
                    };
                    let _ = writeln!(
                        out,
                        "    {name:<40} {:>8} {:>10.1}% {share:>8.1}%",
                        b.weight,
                        p * 100.0
                    );
                }
            }
            Lookup::NoMatch(_) => {
                let _ = writeln!(out, "{key}  (GET / matches no rule)");
            }
            Lookup::UnknownAuthority => {}
        }
        let mut others: Vec<_> = observed
            .iter()
            .filter(|(k, _)| k.starts_with("HTTP") || k.starts_with("client"))
            .collect();
        others.sort();
        for (k, n) in others {
            let _ = writeln!(out, "    {k:<40} {n:>8} responses");
        }
        let _ = writeln!(out);
    }
    out
}
